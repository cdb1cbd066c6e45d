/*
 * credential.h - the credential layer: who logs in to PostgreSQL, and with
 * which short-lived Lakebase credential.
 *
 * An identity is the service principal, or a user named by email and proven
 * by a workspace token (keyed by the SHA-256 fingerprint of that token, so a
 * credential minted with one token never serves a request carrying another).
 *
 * credcache_acquire() returns a credential valid now, minting or refreshing
 * it when it is missing or within refresh_margin_ms of expiry. The cache is
 * shared by every process of the host's deployment (a file-backed
 * shared-memory segment, credential_cache.path, keyed to the deployment;
 * see shm.h): concurrent callers for one identity,
 * in any process, share one mint (single flight), so each identity is
 * minted once per lifetime per host. When a refresh fails but the current
 * credential has not yet expired, the current one is served (and the
 * failure logged once).
 *
 * Eager identities (credential_cache.sp_refresh / user_refresh) are
 * refreshed by one background thread per host before requests would have
 * to; lazy ones by the first request inside the refresh window, which
 * hands the mint to a thread of its process and is served the current
 * credential meanwhile (the user's token is kept for that mint only).
 * Callers wait for a mint only when no valid credential exists. Create the
 * cache in the process that uses it (after any fork): its background
 * threads do not survive a fork.
 */
#ifndef LB_CREDENTIAL_H
#define LB_CREDENTIAL_H

#include <stdbool.h>
#include <stdio.h>
#include <time.h>

#include "config.h"
#include "error.h"
#include "workspace.h"

#define TOKEN_FP_LEN 32

enum identity_kind { IDENTITY_SP = 0, IDENTITY_USER };

struct identity {
	enum identity_kind kind;
	const char *email;            /* user: the Postgres role (borrowed) */
	const char *workspace_token;  /* user: their token, a secret (borrowed) */
	unsigned char token_fp[TOKEN_FP_LEN]; /* user: SHA-256(workspace_token) */
};

/* Fills id for a user; computes the fingerprint. */
void identity_user(struct identity *id, const char *email, const char *workspace_token);
void identity_sp(struct identity *id);

/* A credential handed to a caller: owned copies. Release with credential_clear. */
struct credential {
	char *token;      /* the Postgres password (secret) */
	char *role;       /* the Postgres user name */
	time_t expires_at;
	time_t refresh_at; /* from then on the cache refreshes it (connections renew) */
};

/*
 * When a credential minted at minted_at and expiring at expires_at is due:
 * margin_s before expiry (at most half its lifetime), less up to a quarter
 * of that chosen by `random` (any 32-bit value; callers use RAND_bytes), so
 * identities minted together do not all refresh in the same second.
 */
time_t credential_refresh_time(long margin_s, time_t minted_at, time_t expires_at, unsigned int random);

struct credcache;

struct credcache *credcache_create(const struct lb_config *cfg, struct workspace_client *ws,
				   struct lb_error *err);
void credcache_destroy(struct credcache *cc);

int credcache_acquire(struct credcache *cc, const struct identity *id, struct credential *out,
		      struct lb_error *err);

/*
 * The identity's cached credential when one is valid now: 0, or -1 when
 * there is none (or no memory). Never mints, waits or marks the identity
 * used: for replacing connections in the background (a user's token is
 * not kept, so only a credential a request already minted can be used).
 */
int credcache_peek(struct credcache *cc, const struct identity *id, struct credential *out);

/*
 * The login with `stale_token` failed authentication: drop it so the next
 * acquire mints anew (unless another thread already replaced it).
 */
void credcache_invalidate(struct credcache *cc, const struct identity *id, const char *stale_token);

void credential_clear(struct credential *cred);

/*
 * The host-wide connection budget kept in the same segment
 * (max_host_connections; 0: off). Shaped for pool.h's conn_budget_host:
 * take returns 0, or -1 when the host is at its cap; give returns n.
 */
int credcache_max_host_connections(const struct credcache *cc);

/* The shared segment (metrics live in it too; metrics.h). */
struct shm;
struct shm *credcache_shm(struct credcache *cc);
int credcache_host_conn_take(void *credcache);
void credcache_host_conn_give(void *credcache, int n);

/*
 * --cache-status: prints the segment at cfg's credential_cache.path (slots:
 * identity, role, expiry, last use, refresh state, mint count; the
 * counters) to `out`, never a secret. Does not create the segment. Returns
 * the exit status (0, or 1 with a message on stderr).
 */
int credcache_print_status(const struct lb_config *cfg, FILE *out);

#endif
