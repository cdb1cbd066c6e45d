/*
 * statement.h - a route's SQL on a pooled session.
 *
 * Each route's statement is prepared once per connection, named by the
 * route's number, and executed by name after that, so PostgreSQL parses,
 * rewrites (RLS) and plans it once per connection rather than once per
 * request. The session's statement_timeout follows the route's. What a
 * request needs beyond the execution (the prepare, the timeout) goes in
 * the same round trip; a plan made stale by a schema change is dropped
 * and prepared again, once.
 */
#ifndef LB_STATEMENT_H
#define LB_STATEMENT_H

#include <libpq-fe.h>

#include <stddef.h>

#include "config.h"
#include "params.h"
#include "pool.h"

/*
 * Runs route number index's statement with bp's values on conn's session,
 * under the route's statement_timeout_ms. Returns the execution's result,
 * or the error that kept it from running (a failed prepare, a lost
 * connection); NULL only when libpq could not make one (out of memory, or
 * the connection lost before any answer). The caller clears it. The
 * session is left idle, or its connection unusable (PQstatus, or still in
 * pipeline mode: pool_release closes such a connection).
 */
PGresult *statement_run(struct pool_conn *conn, const struct route *route, size_t index,
			const struct bound_params *bp);

#endif
