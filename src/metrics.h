/*
 * metrics.h - Prometheus metrics summed across every process of the host.
 *
 * The numbers live in the shared segment's metrics area (shm.h), so a
 * scrape answered by any worker reports the whole host. Counters and
 * histograms are bumped with relaxed atomics, never under a lock; gauges
 * that only one process can know (its pools) are published by that process
 * into its own entry and summed at scrape time, dead processes' entries
 * reclaimed. A route's series are found by its method, path and auth, so
 * they stay its own when a reload reorders, adds or removes routes, and no
 * label carries anything a request sent (an email, a token).
 *
 * One segment per process: metrics_attach() sets it for the process; every
 * other call is a no-op until then (the CLI tools, unit tests of pools).
 */
#ifndef LB_METRICS_H
#define LB_METRICS_H

#include <stdbool.h>

#include "config.h"
#include "shm.h"
#include "strbuf.h"

/* The process's pool gauges (worker.c gathers them). */
struct metrics_gauges {
	int idle[2];      /* by auth: 0 service principal, 1 users */
	int busy[2];
	int waiting;
	int user_pools;
};

/* Sets the segment, takes this process's gauge entry and the series of
 * cfg's routes (takes the lock). cfg is the one later calls pass. */
void metrics_attach(struct shm *s, const struct lb_config *cfg);
/* Frees this process's gauge entry; call before the segment is detached. */
void metrics_detach(void);

/* A finished request: route NULL for one that matched no route. */
void metrics_request(const struct lb_config *cfg, const struct route *route, int status,
		     long long duration_us);
void metrics_conn_opened(void);
/* reason: idle, evicted, expired_credential, broken, shutdown (else other). */
void metrics_conn_closed(const char *reason);
void metrics_acquire_timeout(void);
/* A database error with this SQLSTATE (its class, the first two chars, counts). */
void metrics_pool_error(const char *sqlstate);
/* One credential or token mint took this long (success or failure). */
void metrics_refresh_duration(long long duration_us);
void metrics_publish(const struct metrics_gauges *g);

/* Index of an HTTP status in the requests series (unit tests). */
int metrics_status_index(int status);
/* Histogram bucket of a duration (unit tests). */
int metrics_bucket(long long duration_us);

/*
 * The exposition text (Prometheus 0.0.4). Returns -1 when the segment is
 * not attached or out of memory. The lock is taken only briefly, with a
 * timeout, for the slot states; a busy segment leaves them out.
 */
int metrics_render(const struct lb_config *cfg, struct strbuf *out);

/*
 * GET /status: a JSON object (uptime, workers, requests, connections by
 * auth, user pools, the credential cache's states, next expiry, last
 * refresh errors by class). -1 when not attached or out of memory.
 */
int metrics_status_json(struct strbuf *out);

/* Whether a client (REMOTE_ADDR; NULL or "": a unix socket) may read the
 * operator endpoints under `allow` ("local" or "any"). */
bool metrics_client_allowed(const char *allow, const char *remote_addr);

#endif
