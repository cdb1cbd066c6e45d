/*
 * responder.c - turns query results and errors into JSON bodies.
 *
 * All JSON is written by yajl_gen straight into the caller's strbuf (a
 * print callback, no intermediate copy), with UTF-8 validation on. Column
 * values are typed by OID; json/jsonb values are re-parsed and replayed
 * token by token, so a value that is not JSON can never break the body.
 * The SQLSTATE table that maps PostgreSQL errors to lb_error lives here too.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <yajl/yajl_gen.h>
#include <yajl/yajl_parse.h>

#include "responder.h"
#include "textfmt.h"

/* Built-in type OIDs (pg_type.h is a server header). */
#define OID_BOOL	16
#define OID_INT8	20
#define OID_INT2	21
#define OID_INT4	23
#define OID_OID		26
#define OID_JSON	114
#define OID_FLOAT4	700
#define OID_FLOAT8	701
#define OID_NUMERIC	1700
#define OID_JSONB	3802

/*
 * Nesting allowed inside an embedded json value. yajl_gen stops at 128
 * levels in all; the body itself uses two (array of objects). Deeper values
 * are sent as strings.
 */
#define EMBED_MAX_DEPTH 100

enum column_kind { COL_STRING = 0, COL_NUMBER, COL_BOOL, COL_JSON };

static enum column_kind
column_kind(Oid type)
{
	switch (type) {
	case OID_INT8:
	case OID_INT2:
	case OID_INT4:
	case OID_OID:
	case OID_FLOAT4:
	case OID_FLOAT8:
	case OID_NUMERIC:
		return COL_NUMBER;
	case OID_BOOL:
		return COL_BOOL;
	case OID_JSON:
	case OID_JSONB:
		return COL_JSON;
	default:
		return COL_STRING;
	}
}

/*
 * yajl's memory for result sets holds rows. The buffer's used part is
 * wiped before it is freed (responder_result_json), and a block a growing
 * buffer moves away from is wiped whole: realloc would leave that copy in
 * freed memory.
 */
static void *
wiping_malloc(void *ctx, size_t size)
{
	(void)ctx;
	return malloc(size);
}

static void
plain_free(void *ctx, void *ptr)
{
	(void)ctx;
	free(ptr);
}

static void *
wiping_realloc(void *ctx, void *ptr, size_t size)
{
	void *moved;
	size_t old;

	(void)ctx;
	if (ptr == NULL)
		return malloc(size);
	old = malloc_usable_size(ptr);
	if (size <= old)
		return ptr;
	moved = malloc(size);
	if (moved == NULL)
		return NULL;
	memcpy(moved, ptr, old);
	OPENSSL_cleanse(ptr, old);
	free(ptr);
	return moved;
}

static yajl_alloc_funcs wiping_alloc = { wiping_malloc, wiping_realloc, plain_free, NULL };

/* A generator writing into out, checking that strings are UTF-8. */
static yajl_gen
gen_for(struct strbuf *out)
{
	yajl_gen g = yajl_gen_alloc(NULL);

	if (g == NULL)
		return NULL;
	yajl_gen_config(g, yajl_gen_print_callback, strbuf_append_cb, out);
	yajl_gen_config(g, yajl_gen_validate_utf8, 1);
	return g;
}

static bool
is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* The JSON number grammar; "NaN", "Infinity" and anything odd fail it. */
static bool
is_json_number(const char *s, size_t len)
{
	const char *end = s + len;

	if (s < end && *s == '-')
		s++;
	if (s == end || !is_digit(*s))
		return false;
	if (*s == '0') {
		s++;
	} else {
		while (s < end && is_digit(*s))
			s++;
	}
	if (s < end && *s == '.') {
		if (++s == end || !is_digit(*s))
			return false;
		while (s < end && is_digit(*s))
			s++;
	}
	if (s < end && (*s == 'e' || *s == 'E')) {
		s++;
		if (s < end && (*s == '+' || *s == '-'))
			s++;
		if (s == end || !is_digit(*s))
			return false;
		while (s < end && is_digit(*s))
			s++;
	}
	return s == end;
}

/* Length of the longest prefix of s that is whole, strict UTF-8. */
static size_t
utf8_valid_prefix(const unsigned char *s, size_t len)
{
	size_t i = 0, n;

	while (i < len && (n = utf8_sequence_len(s + i, len - i)) != 0)
		i += n;
	return i;
}

/* ---- json/jsonb embedding: yajl parser callbacks -> yajl_gen ------------- */

/* g == NULL is the checking pass: only depth is tracked. */
struct replay {
	yajl_gen g;
	int depth;
};

static int
gen_ok(yajl_gen_status st)
{
	return st == yajl_gen_status_ok;
}

static int
replay_null(void *ctx)
{
	struct replay *r = ctx;

	return r->g == NULL || gen_ok(yajl_gen_null(r->g));
}

static int
replay_bool(void *ctx, int v)
{
	struct replay *r = ctx;

	return r->g == NULL || gen_ok(yajl_gen_bool(r->g, v));
}

static int
replay_number(void *ctx, const char *s, size_t len)
{
	struct replay *r = ctx;

	return r->g == NULL || gen_ok(yajl_gen_number(r->g, s, len));
}

static int
replay_string(void *ctx, const unsigned char *s, size_t len)
{
	struct replay *r = ctx;

	return r->g == NULL || gen_ok(yajl_gen_string(r->g, s, len));
}

static int
replay_open(struct replay *r, yajl_gen_status (*open)(yajl_gen))
{
	if (++r->depth > EMBED_MAX_DEPTH)
		return 0;
	return r->g == NULL || gen_ok(open(r->g));
}

static int
replay_close(struct replay *r, yajl_gen_status (*close)(yajl_gen))
{
	r->depth--;
	return r->g == NULL || gen_ok(close(r->g));
}

static int
replay_start_map(void *ctx)
{
	return replay_open(ctx, yajl_gen_map_open);
}

static int
replay_end_map(void *ctx)
{
	return replay_close(ctx, yajl_gen_map_close);
}

static int
replay_start_array(void *ctx)
{
	return replay_open(ctx, yajl_gen_array_open);
}

static int
replay_end_array(void *ctx)
{
	return replay_close(ctx, yajl_gen_array_close);
}

static const yajl_callbacks replay_callbacks = {
	.yajl_null = replay_null,
	.yajl_boolean = replay_bool,
	.yajl_number = replay_number,
	.yajl_string = replay_string,
	.yajl_start_map = replay_start_map,
	.yajl_map_key = replay_string,
	.yajl_end_map = replay_end_map,
	.yajl_start_array = replay_start_array,
	.yajl_end_array = replay_end_array,
};

/* Parses text (strict JSON) feeding g; g == NULL only checks it. */
static bool
replay_json(yajl_gen g, const char *text, size_t len)
{
	struct replay r = { .g = g, .depth = 0 };
	yajl_handle h;
	yajl_status st;

	h = yajl_alloc(&replay_callbacks, NULL, &r);
	if (h == NULL)
		return false;
	st = yajl_parse(h, (const unsigned char *)text, len);
	if (st == yajl_status_ok)
		st = yajl_complete_parse(h);
	yajl_free(h);
	return st == yajl_status_ok;
}

/*
 * A json/jsonb value, embedded. It is checked first, without writing, so a
 * bad value falls back to a string instead of leaving half a value behind.
 */
static yajl_gen_status
gen_embedded_json(yajl_gen g, const char *text, size_t len)
{
	if (!replay_json(NULL, text, len))
		return yajl_gen_string(g, (const unsigned char *)text, len);
	/* Cannot fail after the check but for memory; any non-ok status will do. */
	return replay_json(g, text, len) ? yajl_gen_status_ok : yajl_gen_invalid_string;
}

/* ---- result sets --------------------------------------------------------- */

static yajl_gen_status
gen_cell(yajl_gen g, const PGresult *res, int row, int col)
{
	const char *v;
	size_t len;

	if (PQgetisnull(res, row, col))
		return yajl_gen_null(g);
	v = PQgetvalue(res, row, col);
	len = (size_t)PQgetlength(res, row, col);
	switch (column_kind(PQftype(res, col))) {
	case COL_NUMBER:
		if (is_json_number(v, len))
			return yajl_gen_number(g, v, len);
		break;      /* NaN, Infinity, -Infinity */
	case COL_BOOL:
		if (len == 1 && (v[0] == 't' || v[0] == 'f'))
			return yajl_gen_bool(g, v[0] == 't');
		break;
	case COL_JSON:
		return gen_embedded_json(g, v, len);
	case COL_STRING:
		break;
	}
	return yajl_gen_string(g, (const unsigned char *)v, len);
}

static yajl_gen_status
gen_row(yajl_gen g, const PGresult *res, int row)
{
	int ncols = PQnfields(res);
	yajl_gen_status st;

	if ((st = yajl_gen_map_open(g)) != yajl_gen_status_ok)
		return st;
	for (int col = 0; col < ncols; col++) {
		const char *name = PQfname(res, col);

		if ((st = yajl_gen_string(g, (const unsigned char *)name, strlen(name))) !=
		    yajl_gen_status_ok)
			return st;
		if ((st = gen_cell(g, res, row, col)) != yajl_gen_status_ok)
			return st;
	}
	return yajl_gen_map_close(g);
}

static yajl_gen_status
gen_rows(yajl_gen g, const PGresult *res, long max_rows)
{
	int nrows = PQntuples(res);
	yajl_gen_status st;

	if (max_rows > 0 && nrows > max_rows)
		nrows = (int)max_rows;
	if ((st = yajl_gen_array_open(g)) != yajl_gen_status_ok)
		return st;
	for (int row = 0; row < nrows; row++)
		if ((st = gen_row(g, res, row)) != yajl_gen_status_ok)
			return st;
	return yajl_gen_array_close(g);
}

static yajl_gen_status
gen_rows_affected(yajl_gen g, const PGresult *res)
{
	/* PQcmdTuples takes a non-const result but only reads it. */
	const char *n = PQcmdTuples((PGresult *)res);
	size_t len = strlen(n);
	yajl_gen_status st;

	if (len == 0 || !is_json_number(n, len)) {
		n = "0";
		len = 1;
	}
	if ((st = yajl_gen_map_open(g)) != yajl_gen_status_ok ||
	    (st = yajl_gen_string(g, (const unsigned char *)"rows_affected", 13)) !=
	    yajl_gen_status_ok ||
	    (st = yajl_gen_number(g, n, len)) != yajl_gen_status_ok)
		return st;
	return yajl_gen_map_close(g);
}

bool
responder_needs_utf8_check(const PGconn *pg)
{
	const char *encoding = PQparameterStatus(pg, "server_encoding");

	return encoding == NULL || strcmp(encoding, "SQL_ASCII") == 0;
}

int
responder_result_json(const PGresult *res, const struct route *route, bool check_utf8,
		      struct strbuf *out, struct lb_error *err)
{
	ExecStatusType status = PQresultStatus(res);
	size_t start = out->len, len = 0;
	const unsigned char *json = NULL;
	yajl_gen_status st;
	yajl_gen g;

	if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK &&
	    status != PGRES_SINGLE_TUPLE)
		return lb_error_set(err, LB_ERR_INTERNAL, "The query failed.",
				    "unexpected result status %s", PQresStatus(status));
	if (route->result == RESULT_ONE && PQntuples(res) == 0)
		return lb_error_set(err, LB_ERR_NOT_FOUND, "No matching row.", NULL);
	if (route->result == RESULT_ONE && PQntuples(res) > 1)
		return lb_error_set(err, LB_ERR_INTERNAL, "The query returned an unexpected result.",
				    "result=one but the query returned %d rows", PQntuples(res));

	/* Rows go to yajl's own buffer, copied to out once: a print callback
	 * per token costs more than the rest of the encoding. */
	g = yajl_gen_alloc(&wiping_alloc);
	if (g == NULL)
		return lb_error_set(err, LB_ERR_INTERNAL, "Out of memory.", "yajl_gen_alloc failed");
	yajl_gen_config(g, yajl_gen_validate_utf8, check_utf8 ? 1 : 0);
	switch (route->result) {
	case RESULT_ROWS:
		st = gen_rows(g, res, route->max_rows);
		break;
	case RESULT_ONE:
		st = gen_row(g, res, 0);
		break;
	case RESULT_NONE:
	default:
		st = gen_rows_affected(g, res);
		break;
	}
	if (st == yajl_gen_status_ok && yajl_gen_get_buf(g, &json, &len) == yajl_gen_status_ok) {
		strbuf_append(out, json, len);
		OPENSSL_cleanse((void *)json, len);   /* yajl hands it out read-only; it is our copy */
	} else {
		json = NULL;
	}
	yajl_gen_free(g);
	if (json == NULL || strbuf_failed(out)) {
		strbuf_truncate(out, start);
		return lb_error_set(err, LB_ERR_INTERNAL, "The result could not be encoded.",
				    "writing the result as JSON failed (yajl_gen status %d%s)",
				    (int)st, strbuf_failed(out) ? ", out of memory" : "");
	}
	return 0;
}

/* ---- small bodies -------------------------------------------------------- */

/* A string key or value; bytes past the last whole UTF-8 character are cut. */
static yajl_gen_status
gen_text(yajl_gen g, const char *s)
{
	size_t len = strlen(s);

	return yajl_gen_string(g, (const unsigned char *)s,
			       utf8_valid_prefix((const unsigned char *)s, len));
}

int
responder_error_json(const struct lb_error *err, const char *request_id, struct strbuf *out)
{
	size_t start = out->len;
	yajl_gen g = gen_for(out);
	bool ok;

	if (g == NULL)
		return -1;
	ok = gen_ok(yajl_gen_map_open(g)) &&
	    gen_ok(gen_text(g, "error")) &&
	    gen_ok(yajl_gen_map_open(g)) &&
	    gen_ok(gen_text(g, "code")) &&
	    gen_ok(gen_text(g, lb_errcode_name(err->code))) &&
	    gen_ok(gen_text(g, "message")) &&
	    gen_ok(gen_text(g, err->message));
	if (ok && request_id != NULL)
		ok = gen_ok(gen_text(g, "request_id")) && gen_ok(gen_text(g, request_id));
	ok = ok && gen_ok(yajl_gen_map_close(g)) && gen_ok(yajl_gen_map_close(g));
	yajl_gen_free(g);
	if (!ok || strbuf_failed(out)) {
		strbuf_truncate(out, start);
		return -1;
	}
	return 0;
}

int
responder_object_json(struct strbuf *out, ...)
{
	size_t start = out->len;
	yajl_gen g = gen_for(out);
	const char *key, *value;
	va_list ap;
	bool ok;

	if (g == NULL)
		return -1;
	ok = gen_ok(yajl_gen_map_open(g));
	va_start(ap, out);
	while (ok && (key = va_arg(ap, const char *)) != NULL) {
		value = va_arg(ap, const char *);
		ok = gen_ok(gen_text(g, key)) &&
		    gen_ok(value != NULL ? gen_text(g, value) : yajl_gen_null(g));
	}
	va_end(ap);
	ok = ok && gen_ok(yajl_gen_map_close(g));
	yajl_gen_free(g);
	if (!ok || strbuf_failed(out)) {
		strbuf_truncate(out, start);
		return -1;
	}
	return 0;
}

/* ---- PostgreSQL errors --------------------------------------------------- */

static bool
sqlstate_is(const char *sqlstate, const char *prefix)
{
	return strncmp(sqlstate, prefix, strlen(prefix)) == 0;
}

enum lb_errcode
sqlstate_to_errcode(const char *sqlstate)
{
	if (sqlstate == NULL || strlen(sqlstate) != 5)
		return LB_ERR_INTERNAL;
	if (sqlstate_is(sqlstate, "28"))
		return LB_ERR_ROLE_MISSING;
	if (strcmp(sqlstate, "42501") == 0)
		return LB_ERR_FORBIDDEN;
	if (strcmp(sqlstate, "23505") == 0)
		return LB_ERR_CONFLICT;
	if (sqlstate_is(sqlstate, "22") || sqlstate_is(sqlstate, "23"))
		return LB_ERR_BAD_REQUEST;
	if (strcmp(sqlstate, "57014") == 0)
		return LB_ERR_TIMEOUT;
	if (sqlstate_is(sqlstate, "08") || strcmp(sqlstate, "57P01") == 0 ||
	    strcmp(sqlstate, "57P02") == 0 || strcmp(sqlstate, "57P03") == 0 ||
	    strcmp(sqlstate, "53300") == 0)
		return LB_ERR_UNAVAILABLE;
	return LB_ERR_INTERNAL;
}

/* The public message: generic, fixed per code; the server's text is log-only. */
static const char *
sqlstate_message(enum lb_errcode code, const char *sqlstate)
{
	switch (code) {
	case LB_ERR_ROLE_MISSING:
		return LB_MSG_ROLE_MISSING;
	case LB_ERR_FORBIDDEN:
		return "Permission denied by the database.";
	case LB_ERR_CONFLICT:
		return "The row conflicts with an existing one.";
	case LB_ERR_BAD_REQUEST:
		if (sqlstate_is(sqlstate, "22"))
			return "A value is out of range or malformed for the database.";
		if (strcmp(sqlstate, "23502") == 0)
			return "A required value is missing.";
		return "The request violates a data constraint.";
	case LB_ERR_TIMEOUT:
		return "The query took too long.";
	case LB_ERR_UNAVAILABLE:
		return "The database is unavailable; try again shortly.";
	default:
		return "The query failed.";
	}
}

/* Trailing newlines and spaces, as libpq leaves them, do not belong in a log value. */
static void
trim_right(char *s)
{
	size_t len = strlen(s);

	while (len > 0 && (s[len - 1] == '\n' || s[len - 1] == '\r' || s[len - 1] == ' '))
		s[--len] = '\0';
}

void
responder_sqlstate_error(const char *sqlstate, const char *server_message, struct lb_error *err)
{
	enum lb_errcode code = sqlstate_to_errcode(sqlstate);

	lb_error_clear(err);
	lb_error_set(err, code, sqlstate_message(code, code == LB_ERR_INTERNAL ? "" : sqlstate),
		     "%s", server_message != NULL ? server_message : "");
	trim_right(err->detail);
	if (sqlstate != NULL && strlen(sqlstate) == 5)
		memcpy(err->sqlstate, sqlstate, 6);
	if (code == LB_ERR_UNAVAILABLE) {
		err->transience = LB_TRANSIENT;
		err->retry_after_s = 1;
	}
}

/*
 * With a SQLSTATE, the table decides. Without one (no result, or libpq's
 * own error such as a lost connection), a missing result or a broken
 * connection is 08006 (connection failure); anything else is internal.
 */
void
responder_pg_error(const PGresult *res, PGconn *conn, struct lb_error *err)
{
	const char *sqlstate = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

	if (sqlstate != NULL && sqlstate[0] != '\0') {
		responder_sqlstate_error(sqlstate, PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY),
					 err);
		return;
	}
	if (res == NULL || (conn != NULL && PQstatus(conn) == CONNECTION_BAD)) {
		responder_sqlstate_error("08006", conn != NULL ? PQerrorMessage(conn) :
					 "no connection", err);
		return;
	}
	responder_sqlstate_error(NULL, PQresultErrorMessage(res), err);
}
