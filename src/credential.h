/*
 * credential.h - the credential layer: who logs in to PostgreSQL, and with
 * which short-lived Lakebase credential.
 *
 * An identity is the service principal, or a user named by email and proven
 * by a workspace token (keyed by the SHA-256 fingerprint of that token, so a
 * credential minted with one token never serves a request carrying another).
 *
 * credcache_acquire() returns a credential valid now, minting or refreshing
 * it when it is missing or within refresh_margin_ms of expiry. Concurrent
 * callers for one identity share one mint (single flight). When a refresh
 * fails but the current credential has not yet expired, the current one is
 * served (and the failure logged once).
 *
 * This per-process implementation is the seam for the shared-memory cache:
 * callers depend only on this header.
 */
#ifndef LB_CREDENTIAL_H
#define LB_CREDENTIAL_H

#include <stdbool.h>
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
};

struct credcache;

struct credcache *credcache_create(const struct lb_config *cfg, struct workspace_client *ws,
				   struct lb_error *err);
void credcache_destroy(struct credcache *cc);

int credcache_acquire(struct credcache *cc, const struct identity *id, struct credential *out,
		      struct lb_error *err);

/*
 * The login with `stale_token` failed authentication: drop it so the next
 * acquire mints anew (unless another thread already replaced it).
 */
void credcache_invalidate(struct credcache *cc, const struct identity *id, const char *stale_token);

void credential_clear(struct credential *cred);

#endif
