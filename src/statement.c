/*
 * statement.c - a route's SQL on a pooled session: prepared on first use,
 * executed by name after that.
 *
 * The first use sends Parse, Bind, Execute and one Sync in libpq's pipeline
 * mode: one round trip where PQprepare then PQexecPrepared took two. Against
 * a remote Lakebase that round trip is a network RTT on every new
 * connection's first request, and on the first use of every route after.
 * Within one Sync the server runs them as PQexecParams would its unnamed
 * statement: one implicit transaction, and a failed prepare skips the
 * execution (its result is PGRES_PIPELINE_ABORTED), so nothing ran.
 */
#include <stdbool.h>
#include <string.h>

#include "statement.h"
#include "textfmt.h"

/* A pipeline here holds two commands; their results, a NULL after each,
 * and the Sync's result: anything past this is not libpq's protocol. */
#define PIPELINE_MAX_RESULTS 8

static bool
has_sqlstate(const PGresult *res, const char *sqlstate)
{
	const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

	return state != NULL && strcmp(state, sqlstate) == 0;
}

/* Is res the error of a prepared statement whose plan the server can no
 * longer use ("cached plan must not change result type", after a schema
 * change)? Then it is prepared again, once. */
static bool
stale_prepared(const PGresult *res)
{
	return PQresultStatus(res) == PGRES_FATAL_ERROR && has_sqlstate(res, "0A000");
}

static PGresult *
execute_named(PGconn *pg, const char *name, const struct bound_params *bp)
{
	return PQexecPrepared(pg, name, (int)bp->count, (const char *const *)bp->values, NULL, NULL, 0);
}

/*
 * Reads a two-command pipeline's results up to its Sync into results[0]
 * (the prepare) and results[1] (the execution), then leaves pipeline mode.
 * A NULL from libpq ends each command's results; a lost connection ends
 * them early. Returns whether the session is out of pipeline mode again.
 */
static bool
pipeline_collect(PGconn *pg, PGresult *results[2])
{
	size_t command = 0;
	int n;

	for (n = 0; n < PIPELINE_MAX_RESULTS; n++) {
		PGresult *res = PQgetResult(pg);

		if (res == NULL) {
			if (PQstatus(pg) == CONNECTION_BAD)
				return false;
			command++;
			continue;
		}
		if (PQresultStatus(res) == PGRES_PIPELINE_SYNC) {
			PQclear(res);
			return PQexitPipelineMode(pg) == 1;
		}
		if (command < 2 && results[command] == NULL)
			results[command] = res;	/* the first; a lost connection may add more */
		else
			PQclear(res);
	}
	return false;
}

/*
 * Prepares and executes in one round trip (see the top of the file). A
 * statement the session already has (42P05: one this connection failed to
 * remember, out of memory) is as good as prepared: its execution, skipped
 * with the failed prepare, runs now on its own.
 */
static PGresult *
prepare_and_execute(PGconn *pg, struct pool_conn *conn, const char *sql, size_t index,
		    const char *name, const struct bound_params *bp)
{
	PGresult *results[2] = { NULL, NULL };
	bool sent, idle;

	if (PQenterPipelineMode(pg) != 1)
		return NULL;
	sent = PQsendPrepare(pg, name, sql, (int)bp->count, NULL) == 1 &&
	       PQsendQueryPrepared(pg, name, (int)bp->count, (const char *const *)bp->values, NULL,
				   NULL, 0) == 1 &&
	       PQpipelineSync(pg) == 1;
	idle = sent && pipeline_collect(pg, results);
	if (PQresultStatus(results[0]) == PGRES_COMMAND_OK) {
		(void)pool_conn_mark_prepared(conn, index);	/* else 42P05 next time */
		PQclear(results[0]);
		return results[1];
	}
	PQclear(results[1]);
	if (idle && results[0] != NULL && has_sqlstate(results[0], "42P05")) {
		PQclear(results[0]);
		(void)pool_conn_mark_prepared(conn, index);
		return execute_named(pg, name, bp);
	}
	return results[0];
}

static PGresult *
execute(struct pool_conn *conn, const char *sql, size_t index, const char *name,
	const struct bound_params *bp)
{
	PGconn *pg = pool_conn_pg(conn);

	if (pool_conn_is_prepared(conn, index))
		return execute_named(pg, name, bp);
	return prepare_and_execute(pg, conn, sql, index, name, bp);
}

PGresult *
statement_run(struct pool_conn *conn, const char *sql, size_t index, const struct bound_params *bp)
{
	char name[8 + TEXT_UINT_MAX] = "lb_route";
	PGresult *res;

	text_uint(name + 8, index);
	res = execute(conn, sql, index, name, bp);
	if (!stale_prepared(res))
		return res;
	PQclear(res);
	PQclear(PQexec(pool_conn_pg(conn), "DEALLOCATE ALL"));
	pool_conn_forget_prepared(conn);
	return execute(conn, sql, index, name, bp);
}
