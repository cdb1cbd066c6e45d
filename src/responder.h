/*
 * responder.h - everything that becomes a response body: query results
 * written as JSON with yajl_gen (typed by column OID), error bodies, and
 * the mapping from PostgreSQL errors to lb_error.
 *
 *   result rows  -> [ {col: value, ...}, ... ]   (at most route->max_rows)
 *   result one   -> {col: value, ...}            (no row: LB_ERR_NOT_FOUND)
 *   result none  -> {"rows_affected": n}
 *
 * Column types: int2/4/8, oid -> JSON integer; float4/8, numeric -> JSON
 * number (NaN/Infinity as strings); bool -> true/false; json/jsonb embedded
 * as JSON; NULL -> null; everything else -> string.
 *
 * Errors: {"error":{"code":"...","message":"...","request_id":"..."}}.
 */
#ifndef LB_RESPONDER_H
#define LB_RESPONDER_H

#include <libpq-fe.h>

#include <stdbool.h>

#include "config.h"
#include "error.h"
#include "strbuf.h"

/* Writes a successful result. Fails (err set) for result=one with no row, or
 * with more than one row. For result=rows, rows past route->max_rows (when
 * > 0) are silently not written: the SQL (LIMIT) or the caller should keep
 * results that large from being fetched at all. On failure nothing is left
 * appended to `out`. check_utf8: refuse text that is not UTF-8 (a failure)
 * rather than trusting the server's encoding conversion. */
int responder_result_json(const PGresult *res, const struct route *route, bool check_utf8,
			  struct strbuf *out, struct lb_error *err);
/* Whether text from this connection needs checking as UTF-8 before it goes
 * into JSON: PostgreSQL converts to client_encoding UTF8 from any server
 * encoding but SQL_ASCII, which passes bytes through unchecked. */
bool responder_needs_utf8_check(const PGconn *pg);

/* Writes the error body. */
int responder_error_json(const struct lb_error *err, const char *request_id, struct strbuf *out);

/* Writes a small JSON object of string pairs: {"k1":"v1",...}; NULL-terminated. */
int responder_object_json(struct strbuf *out, ...) __attribute__((sentinel));

/*
 * Maps a failed PGresult (or, with res == NULL, the connection's error) to
 * an lb_error by SQLSTATE class: 28xxx -> ROLE_MISSING, 42501 -> FORBIDDEN,
 * 23505 -> CONFLICT, 22xxx and 23502 -> BAD_REQUEST, 57014 -> TIMEOUT,
 * 08xxx, 57P0x and connection failures -> UNAVAILABLE, the rest -> INTERNAL.
 * The server's message goes to err->detail only.
 */
void responder_pg_error(const PGresult *res, PGconn *conn, struct lb_error *err);
/* The mapping alone, for unit tests. */
enum lb_errcode sqlstate_to_errcode(const char *sqlstate);
/* responder_pg_error's core, given a SQLSTATE (NULL: none) and the server's
 * message (log-only, to err->detail): code, public message, sqlstate,
 * transience and Retry-After. Also for callers that learn a SQLSTATE some
 * other way (a failed login). */
void responder_sqlstate_error(const char *sqlstate, const char *server_message,
			      struct lb_error *err);

#endif
