/*
 * statement.c - a route's SQL on a pooled session: prepared on first use,
 * executed by name after that, under the route's statement_timeout.
 *
 * Whatever a request needs before its execution goes in the same round
 * trip, in libpq's pipeline mode: where PQprepare, a SET and
 * PQexecPrepared took up to three round trips, one. Against a remote
 * Lakebase each is a network RTT: on every new connection's first
 * request, on the first use of every route after, and whenever requests
 * alternate between routes with different timeouts.
 *
 * The pipeline is [SET statement_timeout, Sync,] [Parse,] Bind/Execute,
 * Sync. The timeout's own Sync commits it whatever the statement does: in
 * the statement's transaction, a failed statement would undo it, and the
 * session's timeout would no longer be the one the pool records. Parse
 * and Execute share a Sync, as PQexecParams's do: a failed prepare skips
 * the execution (PGRES_PIPELINE_ABORTED), so nothing ran.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "statement.h"
#include "textfmt.h"

/* A command's results: its answer, at most an error after it (a lost
 * connection); anything past this is not libpq's protocol. */
#define COMMAND_MAX_RESULTS 4

enum command { CMD_TIMEOUT, CMD_PREPARE, CMD_EXECUTE, CMD_COUNT };

struct call {
	PGconn *pg;
	const struct route *route;
	char name[8 + TEXT_UINT_MAX];	/* "lb_route<index>" */
	const struct bound_params *bp;
};

struct pipeline {
	bool sent[CMD_COUNT];	/* the optional commands: the execution always goes */
	PGresult *res[CMD_COUNT];
};

static bool
has_sqlstate(const PGresult *res, const char *sqlstate)
{
	const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

	return state != NULL && strcmp(state, sqlstate) == 0;
}

static bool
succeeded(const PGresult *res)
{
	return PQresultStatus(res) == PGRES_COMMAND_OK || PQresultStatus(res) == PGRES_TUPLES_OK;
}

/* Is res the error of a prepared statement whose plan the server can no
 * longer use ("cached plan must not change result type", after a schema
 * change)? Then it is prepared again, once. */
static bool
stale_prepared(const PGresult *res)
{
	return PQresultStatus(res) == PGRES_FATAL_ERROR && has_sqlstate(res, "0A000");
}

/* Does the session's statement_timeout differ from the route's? A route
 * without one (0) wants the server's default. */
static bool
timeout_differs(const struct pool_conn *conn, const struct route *route)
{
	int want = route->statement_timeout_ms, have = pool_conn_statement_timeout(conn);

	return have != want && !(have < 0 && want == 0);
}

static int
send_timeout(const struct call *c)
{
	char value[TEXT_UINT_MAX];
	const char *values[1] = { value };

	if (c->route->statement_timeout_ms == 0)
		return PQsendQueryParams(c->pg, "SET statement_timeout TO DEFAULT", 0, NULL, NULL, NULL,
					 NULL, 0);
	text_uint(value, (unsigned)c->route->statement_timeout_ms);
	return PQsendQueryParams(c->pg,
				 "SELECT pg_catalog.set_config('statement_timeout', $1, false)", 1, NULL,
				 values, NULL, NULL, 0);
}

static PGresult *
execute_named(const struct call *c)
{
	return PQexecPrepared(c->pg, c->name, (int)c->bp->count, (const char *const *)c->bp->values,
			      NULL, NULL, 0);
}

static bool
pipeline_send(const struct call *c, const struct pipeline *p)
{
	int n = (int)c->bp->count;

	if (PQenterPipelineMode(c->pg) != 1)
		return false;
	if (p->sent[CMD_TIMEOUT] && (send_timeout(c) != 1 || PQpipelineSync(c->pg) != 1))
		return false;
	if (p->sent[CMD_PREPARE] && PQsendPrepare(c->pg, c->name, c->route->sql, n, NULL) != 1)
		return false;
	return PQsendQueryPrepared(c->pg, c->name, n, (const char *const *)c->bp->values, NULL, NULL,
				   0) == 1 &&
	       PQpipelineSync(c->pg) == 1;
}

/* Reads one command's results up to the NULL that ends them, keeping the
 * first. False when the connection is lost (libpq then ends them early). */
static bool
read_command(PGconn *pg, PGresult **keep)
{
	PGresult *res;
	int n = 0;

	while ((res = PQgetResult(pg)) != NULL) {
		if (*keep == NULL)
			*keep = res;
		else
			PQclear(res);
		if (++n > COMMAND_MAX_RESULTS)
			return false;
	}
	return PQstatus(pg) != CONNECTION_BAD;
}

/* A failure that ended a command after its own result: it replaces that
 * result if it was a success, else the command's own error stays. */
static void
keep_failure(PGresult **answer, PGresult *failure)
{
	if (*answer == NULL || succeeded(*answer)) {
		PQclear(*answer);
		*answer = failure;
	} else {
		PQclear(failure);
	}
}

/*
 * Reads a Sync's results into the answer of the command before it. The
 * Sync commits that command's implicit transaction, and a commit can fail
 * (a deferred constraint, a serialization failure): libpq then gives the
 * error, a NULL, and the Sync. That error is the answer: the command's
 * own success was rolled back. Returns whether the Sync was reached; if
 * not (the connection lost), a success is no answer either, since nobody
 * knows whether it was committed.
 */
static bool
read_sync(PGconn *pg, PGresult **answer)
{
	PGresult *res = PQgetResult(pg), *more = NULL;
	bool reached;

	if (res != NULL && PQresultStatus(res) != PGRES_PIPELINE_SYNC) {
		keep_failure(answer, res);
		res = read_command(pg, &more) && more == NULL ? PQgetResult(pg) : NULL;
		PQclear(more);
	}
	reached = PQresultStatus(res) == PGRES_PIPELINE_SYNC;
	PQclear(res);
	if (!reached && *answer != NULL && succeeded(*answer)) {
		PQclear(*answer);
		*answer = NULL;
	}
	return reached;
}

/* Reads every result the pipeline sent asked for, in order, and leaves
 * pipeline mode. Returns whether the session is idle again. */
static bool
pipeline_read(PGconn *pg, struct pipeline *p)
{
	if (p->sent[CMD_TIMEOUT] &&
	    (!read_command(pg, &p->res[CMD_TIMEOUT]) || !read_sync(pg, &p->res[CMD_TIMEOUT])))
		return false;
	if (p->sent[CMD_PREPARE] && !read_command(pg, &p->res[CMD_PREPARE]))
		return false;
	if (!read_command(pg, &p->res[CMD_EXECUTE]) || !read_sync(pg, &p->res[CMD_EXECUTE]))
		return false;
	return PQexitPipelineMode(pg) == 1;
}

/* The request's answer: the execution's result if it ran, else the error
 * that kept it from running: the prepare's (which aborts the execution),
 * or the timeout's (the connection lost there). Clears the others. */
static PGresult *
pipeline_answer(struct pipeline *p)
{
	PGresult *answer = p->res[CMD_EXECUTE];
	int i;

	if (answer == NULL || PQresultStatus(answer) == PGRES_PIPELINE_ABORTED) {
		answer = NULL;
		for (i = CMD_PREPARE; i >= CMD_TIMEOUT && answer == NULL; i--) {
			if (p->res[i] != NULL && !succeeded(p->res[i]))
				answer = p->res[i];
		}
	}
	for (i = 0; i < CMD_COUNT; i++) {
		if (p->res[i] != answer)
			PQclear(p->res[i]);
	}
	return answer;
}

/* Records that conn's session has route number index's statement; a
 * failure (out of memory) leaves it to be prepared again, and met as
 * 42P05, next time. */
static void
remember_prepared(struct pool_conn *conn, size_t index)
{
#ifdef LB_TEST_HOOKS
	/* LAKEBASE_TEST_FORGET_PREPARED=1 (test builds): every such record
	 * fails, so that each use of a route on a connection meets 42P05. */
	const char *forget = getenv("LAKEBASE_TEST_FORGET_PREPARED");

	if (forget != NULL && strcmp(forget, "1") == 0)
		return;
#endif
	(void)pool_conn_mark_prepared(conn, index);
}

/*
 * Sends what the session lacks with the execution, in one round trip. A
 * statement the session already has (42P05: one this connection failed to
 * remember, out of memory) is as good as prepared: its execution, skipped
 * with the failed prepare, runs now on its own.
 */
static PGresult *
execute_pipelined(struct pool_conn *conn, const struct call *c, size_t index, bool prepare)
{
	struct pipeline p = { .sent = { [CMD_TIMEOUT] = timeout_differs(conn, c->route),
					 [CMD_PREPARE] = prepare } };
	bool idle = pipeline_send(c, &p) && pipeline_read(c->pg, &p);
	bool already = p.res[CMD_PREPARE] != NULL && has_sqlstate(p.res[CMD_PREPARE], "42P05");
	int timeout = c->route->statement_timeout_ms;

	if (succeeded(p.res[CMD_TIMEOUT]))
		pool_conn_set_statement_timeout(conn, timeout == 0 ? -1 : timeout);
	if (succeeded(p.res[CMD_PREPARE]) || already)
		remember_prepared(conn, index);
	if (!(idle && already))
		return pipeline_answer(&p);
	PQclear(pipeline_answer(&p));
	return execute_named(c);
}

static PGresult *
execute(struct pool_conn *conn, const struct call *c, size_t index)
{
	bool prepare = !pool_conn_is_prepared(conn, index);

	if (!prepare && !timeout_differs(conn, c->route))
		return execute_named(c);
	return execute_pipelined(conn, c, index, prepare);
}

PGresult *
statement_run(struct pool_conn *conn, const struct route *route, size_t index,
	      const struct bound_params *bp)
{
	struct call c = { .pg = pool_conn_pg(conn), .route = route, .name = "lb_route", .bp = bp };
	PGresult *res;

	text_uint(c.name + 8, index);
	res = execute(conn, &c, index);
	if (!stale_prepared(res))
		return res;
	PQclear(res);
	PQclear(PQexec(c.pg, "DEALLOCATE ALL"));
	pool_conn_forget_prepared(conn);
	return execute(conn, &c, index);
}
