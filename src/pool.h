/*
 * pool.h - a pool of libpq connections logged in as one identity.
 *
 * The pool does not know whose connections it holds: it asks its credential
 * source for a credential each time it opens a physical connection, so the
 * same type serves the service principal and every user.
 *
 * Connections are opened on demand up to settings.max, with TLS settings,
 * application_name and connect timeout from the config. An idle connection
 * is checked before reuse (a peer-closed socket is discarded, not handed
 * out) and is never reused after the credential it logged in with has
 * expired. pool_reap() closes connections idle longer than idle_timeout_ms;
 * it is called from a maintenance thread, never on the request path.
 *
 * Thread-safe. pool_acquire blocks at most acquire_timeout_ms, then fails
 * with LB_ERR_UNAVAILABLE and retry_after_s set. Logins happen outside the
 * pool lock, so one slow login does not stall other threads.
 */
#ifndef LB_POOL_H
#define LB_POOL_H

#include <stdbool.h>
#include <libpq-fe.h>

#include "config.h"
#include "credential.h"
#include "error.h"

/* Fills `out` with a credential valid now for this pool's identity. */
typedef int (*pool_credential_fn)(void *ctx, struct credential *out, struct lb_error *err);
/* Called when a login was refused (SQLSTATE 28xxx) with `cred` (may be NULL). */
typedef void (*pool_auth_failed_fn)(void *ctx, const struct credential *cred);

struct pool_source {
	pool_credential_fn get_credential;
	pool_auth_failed_fn auth_failed;   /* optional */
	void *ctx;
};

struct pool;
struct pool_conn;

/*
 * A per-worker budget of physical connections shared by several pools (the
 * service principal's and every user's): max_connections. A pool that needs
 * a new connection takes a unit; when none is left it closes an idle
 * connection of the other pool that served the fewest requests lately (a
 * count that halves every 30 s), or waits for one to become idle or
 * closed, until its acquire deadline. Lock order: budget, then pool.
 */
struct conn_budget;

struct conn_budget *conn_budget_create(int max);
/* Destroy after every pool using it. */
void conn_budget_destroy(struct conn_budget *budget);
/* Physical connections currently counted (opening, open or closing). */
int conn_budget_used(struct conn_budget *budget);
/*
 * Run by a thread of its own: keeps one unit free for the next new
 * connection, so that a first request needs not close another pool's
 * connection on its path. Once a login takes the last unit (a renewal's
 * replacement aside: that unit comes back when the replaced connection
 * closes), it closes the idle connection of the coldest pool that served
 * a single request lately (never a regular one), and waits for its
 * backend to exit. While first requests close connections on their own
 * path (several at a time), it stands aside. Returns when
 * conn_budget_stop_keeper is called, or at once for a budget that keeps
 * no unit free. Not for the host-wide cap.
 */
void conn_budget_keep_unit_free(struct conn_budget *budget);
/* Budgets of 16 units or more keep one free; under 16 one unit is too
 * large a share of the warm connections (no thread needed). */
bool conn_budget_keeps_unit_free(const struct conn_budget *budget);
void conn_budget_stop_keeper(struct conn_budget *budget);

/*
 * A host-wide cap on top of the budget's own (max_host_connections: all
 * processes of the host together, counted in the shared segment; see
 * credential.h). Every unit the budget takes is also taken from the host:
 * take returns 0, or -1 when the host is at its cap; give returns n. At
 * the host's cap the budget first closes an idle connection of another
 * pool of this process, else waits (polling the host) until the acquire
 * deadline, then fails with 503 and Retry-After.
 */
struct conn_budget_host {
	int (*take)(void *ctx);
	void (*give)(void *ctx, int n);
	void *ctx;
};
/* Set before any pool uses the budget. */
void conn_budget_set_host(struct conn_budget *budget, const struct conn_budget_host *host);

struct pool_stats {
	int open;      /* physical connections */
	int idle;
	int busy;
	int waiting;   /* threads waiting in pool_acquire */
};

/* `label` names the pool in logs ("sp", or a user's hashed id); copied.
 * `budget` may be NULL (the pool's own max is then the only cap). */
struct pool *pool_create(const struct lb_config *cfg, const struct pool_settings *settings,
			 const struct pool_source *source, const char *label,
			 struct conn_budget *budget);
/* Closes every connection (waits for none: call when no thread uses it). */
void pool_destroy(struct pool *pool);
/* Logs a warning for connection settings that make every login costly
 * (the caller logs it once per start or reload, not per worker process). */
void pool_warn_costly_settings(const struct lb_config *cfg);

int pool_acquire(struct pool *pool, struct pool_conn **out, struct lb_error *err);
/* The same, but a new physical connection takes its credential from `source`
 * (per request: a user's pool logs in with the requesting token's credential). */
int pool_acquire_as(struct pool *pool, const struct pool_source *source, struct pool_conn **out,
		    struct lb_error *err);
/*
 * Replaces connections due for renewal (their credential is being
 * refreshed: within the refresh margin of its expiry) by new logins with
 * `source`'s credential when that credential is newer, one login at a time.
 * Called by the maintenance thread, so that logins happen off the request
 * path and a pool's connections do not all expire together.
 *
 * The new connection is logged in first, while the due ones go on serving,
 * and then takes the place of an idle due connection; if none is idle (a
 * busy pool), it waits, parked, for the next due connection to be returned
 * (pool_release) and takes its place then. That second connection takes a
 * unit of the budget (and the host's) only if one is free; otherwise an
 * idle due connection is closed first and logged in again in its slot.
 * A parked connection not taken within a few seconds is closed. A failed
 * login pauses the pool's renewals (1 s, doubling up to 30 s), and a
 * failed second connection makes it renew in place for 10 minutes.
 * source NULL: the pool's own. Returns 0 when there is nothing to do until
 * a newer credential or a due connection appears, else (connections logged
 * in or placed, plus one while a connection is parked) the caller should
 * call again soon: the pool's next due connection waits for that.
 */
int pool_renew(struct pool *pool, const struct pool_source *source);
/* Whether pool_renew has work now (a due connection, or a parked one). */
bool pool_renewal_pending(struct pool *pool);
/* Returns a connection; broken=true closes it instead of keeping it idle. */
void pool_release(struct pool *pool, struct pool_conn *conn, bool broken);

PGconn *pool_conn_pg(struct pool_conn *conn);
/* True if the connection was opened for this acquire (not reused idle). */
bool pool_conn_is_fresh(const struct pool_conn *conn);

/*
 * The statement_timeout (ms) the worker last set on this session; -1 when
 * never set (server default). Lets the worker skip a round trip when the
 * session already has the route's timeout. A new connection starts at -1.
 */
int pool_conn_statement_timeout(const struct pool_conn *conn);
void pool_conn_set_statement_timeout(struct pool_conn *conn, int timeout_ms);

/*
 * Which of the worker's prepared statements (by number: the route's index)
 * this session has. A new connection, or a renewed one, has none. mark
 * returns -1 when out of memory (not remembered: the caller's next prepare
 * of that name finds it exists, 42P05). forget: after DEALLOCATE ALL.
 */
bool pool_conn_is_prepared(const struct pool_conn *conn, size_t n);
int pool_conn_mark_prepared(struct pool_conn *conn, size_t n);
void pool_conn_forget_prepared(struct pool_conn *conn);

/* Closes idle connections past idle_timeout_ms or past their credential's
 * expiry. Returns the number of connections still open. */
int pool_reap(struct pool *pool);
/* Closes all idle connections now (used at shutdown and by tests). */
void pool_close_idle(struct pool *pool);
/* No connection of this pool is handed out again: idle ones close now,
 * busy ones when returned (a user's token was replaced by a newer one). */
void pool_retire(struct pool *pool);

void pool_get_stats(struct pool *pool, struct pool_stats *stats);

/*
 * Opens one physical connection with `cred` (exposed so the readiness check
 * and tests share the code). Returns NULL with err set; a refused login maps
 * to LB_ERR_ROLE_MISSING with the SQLSTATE.
 */
PGconn *pool_connect(const struct lb_config *cfg, int connect_timeout_ms,
		     const struct credential *cred, struct lb_error *err);

#endif
