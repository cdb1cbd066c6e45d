/*
 * userpools.h - the per-user pool cache of one worker process.
 *
 * One pool per proven identity: a user's email AND the fingerprint of the
 * token that proved it. A token never gets a connection opened with another
 * token's credential: a new token for a known email gets its own pool, whose
 * first connection is minted with that token and logged in with it. Once
 * that login succeeds, the email's pools for other tokens are retired but
 * the most recently used one (two live tokens, two devices, keep theirs):
 * their idle connections close at once, busy ones when returned.
 *
 * Bounds: cfg->max_user_pools pools (the least recently used unused pool is
 * dropped to make room), cfg->user_pool.max connections per pool, and the
 * worker's connection budget (pool.h) across all pools. A maintenance
 * thread calls userpools_reap(): idle connections close after
 * user_pool.idle_timeout_ms, and a pool left without connections is removed
 * after user_pool_remove_after_ms without use (at once if it never
 * logged in); due connections are renewed (pool_renew), several pools at
 * once. Thread-safe; no network I/O under the cache's lock.
 */
#ifndef LB_USERPOOLS_H
#define LB_USERPOOLS_H

#include <stdbool.h>

#include "config.h"
#include "credential.h"
#include "error.h"
#include "pool.h"

struct userpools;
struct user_entry;

/* A connection checked out for one request of one user. */
struct user_lease {
	struct user_entry *entry;
	struct pool_conn *conn;
};

struct userpools *userpools_create(const struct lb_config *cfg, struct credcache *creds,
				   struct conn_budget *budget);
/* Closes every pool; no lease may be outstanding. */
void userpools_destroy(struct userpools *up);

/* A connection logged in as id->email with a credential minted with
 * id->workspace_token. Login refused: LB_ERR_ROLE_MISSING. */
int userpools_acquire(struct userpools *up, const struct identity *id, struct user_lease *lease,
		      struct lb_error *err);
void userpools_release(struct userpools *up, struct user_lease *lease, bool broken);

/* Returns the sum of the pools' pool_renew results: > 0 while renewals
 * are under way (call again soon). */
int userpools_reap(struct userpools *up);
/* Number of user pools in the cache. */
int userpools_count(struct userpools *up);
/* The sums of every user pool's stats (pool.h), for metrics and status. */
void userpools_get_stats(struct userpools *up, struct pool_stats *total);

#endif
