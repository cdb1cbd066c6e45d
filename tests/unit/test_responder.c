/*
 * test_responder.c - JSON bodies and the SQLSTATE mapping. Results are built
 * client-side with PQmakeEmptyPGresult / PQsetResultAttrs / PQsetvalue, so
 * typed columns, NULLs and odd values need no server.
 */
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "responder.h"
#include "unit.h"

#define OID_BOOL	16
#define OID_INT8	20
#define OID_INT2	21
#define OID_INT4	23
#define OID_TEXT	25
#define OID_OID		26
#define OID_JSON	114
#define OID_FLOAT4	700
#define OID_FLOAT8	701
#define OID_VARCHAR	1043
#define OID_TIMESTAMPTZ	1184
#define OID_NUMERIC	1700
#define OID_UUID	2950
#define OID_JSONB	3802

/* A TUPLES_OK result: cells[row * ncols + col], NULL for SQL NULL. */
static PGresult *
make_result(int ncols, const char *const *names, const Oid *types, int nrows,
	    const char *const *cells)
{
	PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
	PGresAttDesc attrs[16];

	CU_ASSERT_FATAL(res != NULL && ncols <= 16);
	memset(attrs, 0, sizeof(attrs));
	for (int c = 0; c < ncols; c++) {
		attrs[c].name = (char *)names[c];
		attrs[c].typid = types[c];
		attrs[c].typlen = -1;
		attrs[c].atttypmod = -1;
	}
	CU_ASSERT_FATAL(PQsetResultAttrs(res, ncols, attrs));
	for (int r = 0; r < nrows; r++) {
		for (int c = 0; c < ncols; c++) {
			const char *v = cells[r * ncols + c];

			CU_ASSERT_FATAL(PQsetvalue(res, r, c, (char *)v, v ? (int)strlen(v) : -1));
		}
	}
	return res;
}

/* One column, one row per value. */
static PGresult *
column_result(const char *name, Oid type, int nrows, const char *const *values)
{
	return make_result(1, &name, &type, nrows, values);
}

static struct route
route_with(enum result_shape shape, long max_rows)
{
	struct route r = { .method = "GET", .path = "/t", .result = shape, .max_rows = max_rows };

	return r;
}

/* The body written for res under `shape`; NULL (and err set) on failure. */
static char *
result_body_checked(const PGresult *res, enum result_shape shape, long max_rows, bool check_utf8,
		    struct lb_error *err)
{
	struct route r = route_with(shape, max_rows);
	struct strbuf out;
	char *body = NULL;

	strbuf_init(&out);
	lb_error_clear(err);
	if (responder_result_json(res, &r, check_utf8, &out, err) == 0)
		body = strbuf_detach(&out, NULL);
	else
		CU_ASSERT_EQUAL(out.len, 0);      /* nothing left behind */
	strbuf_free(&out, false);
	return body;
}

static char *
result_body(const PGresult *res, enum result_shape shape, long max_rows, struct lb_error *err)
{
	return result_body_checked(res, shape, max_rows, true, err);
}

static void
expect_rows(const PGresult *res, const char *want)
{
	struct lb_error err;

	/* Checked as UTF-8 or trusted (a UTF8 server), the same body. */
	for (int check = 0; check <= 1; check++) {
		char *body = result_body_checked(res, RESULT_ROWS, 10000, check, &err);

		CU_ASSERT_PTR_NOT_NULL(body);
		if (body != NULL)
			CU_ASSERT_STRING_EQUAL(body, want);
		free(body);
	}
}

/* ---- result sets --------------------------------------------------------- */

static void
test_rows_typed_by_oid(void)
{
	static const char *const names[] = {
		"i4", "i8", "i2", "oid", "f8", "num", "b", "t", "ts", "u"
	};
	static const Oid types[] = {
		OID_INT4, OID_INT8, OID_INT2, OID_OID, OID_FLOAT8, OID_NUMERIC, OID_BOOL, OID_TEXT,
		OID_TIMESTAMPTZ, OID_UUID
	};
	static const char *const cells[] = {
		"42", "-9007199254740993", "7", "16384", "1.5", "123.4500", "t", "plain",
		"2024-05-01 10:00:00+00", "0e6a8ef4-3d3b-4d46-9b7f-26f33e3e3f1a",
		"0", "9223372036854775807", "-32768", "0", "-2.5e-10", "-0.001", "f", "",
		NULL, NULL,
	};
	PGresult *res = make_result(10, names, types, 2, cells);

	expect_rows(res,
		    "[{\"i4\":42,\"i8\":-9007199254740993,\"i2\":7,\"oid\":16384,\"f8\":1.5,"
		    "\"num\":123.4500,\"b\":true,\"t\":\"plain\","
		    "\"ts\":\"2024-05-01 10:00:00+00\",\"u\":\"0e6a8ef4-3d3b-4d46-9b7f-26f33e3e3f1a\"},"
		    "{\"i4\":0,\"i8\":9223372036854775807,\"i2\":-32768,\"oid\":0,\"f8\":-2.5e-10,"
		    "\"num\":-0.001,\"b\":false,\"t\":\"\",\"ts\":null,\"u\":null}]");
	PQclear(res);
}

static void
test_non_finite_numbers_are_strings(void)
{
	static const char *const floats[] = { "NaN", "Infinity", "-Infinity", "1e+100" };
	static const char *const nums[] = { "NaN", "Infinity", "-Infinity", "0" };
	PGresult *res;

	res = column_result("f", OID_FLOAT4, 4, floats);
	expect_rows(res, "[{\"f\":\"NaN\"},{\"f\":\"Infinity\"},{\"f\":\"-Infinity\"},{\"f\":1e+100}]");
	PQclear(res);
	res = column_result("n", OID_NUMERIC, 4, nums);
	expect_rows(res, "[{\"n\":\"NaN\"},{\"n\":\"Infinity\"},{\"n\":\"-Infinity\"},{\"n\":0}]");
	PQclear(res);
}

static void
test_nulls_of_every_kind(void)
{
	static const char *const names[] = { "i", "b", "j", "t" };
	static const Oid types[] = { OID_INT4, OID_BOOL, OID_JSONB, OID_TEXT };
	static const char *const cells[] = { NULL, NULL, NULL, NULL };
	PGresult *res = make_result(4, names, types, 1, cells);

	expect_rows(res, "[{\"i\":null,\"b\":null,\"j\":null,\"t\":null}]");
	PQclear(res);
}

static void
test_strings_escaped_and_utf8(void)
{
	static const char *const values[] = {
		"say \"hi\"\\ now",
		"line1\nline2\ttab\x01",
		"Z\xc3\xbcrich \xe2\x9c\x93 \xf0\x9f\x98\x80",
		"</script>",
	};
	PGresult *res = column_result("t", OID_VARCHAR, 4, values);

	expect_rows(res,
		    "[{\"t\":\"say \\\"hi\\\"\\\\ now\"},"
		    "{\"t\":\"line1\\nline2\\ttab\\u0001\"},"
		    "{\"t\":\"Z\xc3\xbcrich \xe2\x9c\x93 \xf0\x9f\x98\x80\"},"
		    "{\"t\":\"</script>\"}]");
	PQclear(res);
}

static void
test_column_names_escaped(void)
{
	static const char *const names[] = { "we\"ird", "caf\xc3\xa9" };
	static const Oid types[] = { OID_INT4, OID_INT4 };
	static const char *const cells[] = { "1", "2" };
	PGresult *res = make_result(2, names, types, 1, cells);

	expect_rows(res, "[{\"we\\\"ird\":1,\"caf\xc3\xa9\":2}]");
	PQclear(res);
}

static void
test_json_embedded(void)
{
	static const char *const values[] = {
		"{\"a\": [1, 2.50, \"x\\u00e9\", null, true], \"b\": {}}",
		"[]",
		"\"just a string\"",
		"-1.5e3",
	};
	PGresult *res = column_result("j", OID_JSONB, 4, values);

	/* Replayed token by token: compact, strings re-escaped, numbers as written. */
	expect_rows(res,
		    "[{\"j\":{\"a\":[1,2.50,\"x\xc3\xa9\",null,true],\"b\":{}}},"
		    "{\"j\":[]},{\"j\":\"just a string\"},{\"j\":-1.5e3}]");
	PQclear(res);
}

static void
test_json_invalid_becomes_string(void)
{
	static const char *const values[] = { "{not json", "[1] [2]", "/*c*/1", "" };
	PGresult *res = column_result("j", OID_JSON, 4, values);

	expect_rows(res, "[{\"j\":\"{not json\"},{\"j\":\"[1] [2]\"},{\"j\":\"/*c*/1\"},{\"j\":\"\"}]");
	PQclear(res);
}

/* `levels` nested arrays: "[[...]]". buf holds 2 * levels + 1 bytes. */
static void
nested_arrays(char *buf, int levels)
{
	for (int i = 0; i < levels; i++) {
		buf[i] = '[';
		buf[levels + i] = ']';
	}
	buf[2 * levels] = '\0';
}

static void
test_json_too_deep_becomes_string(void)
{
	char deep[2 * 101 + 1];
	const char *values[1] = { deep };
	struct lb_error err;
	PGresult *res;
	char *body;

	/* 101 levels: sent as a string, {"j":"[[[...]]]"}. */
	nested_arrays(deep, 101);
	res = column_result("j", OID_JSON, 1, values);
	body = result_body(res, RESULT_ONE, 0, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(body);
	CU_ASSERT_EQUAL(body[5], '"');
	CU_ASSERT_EQUAL(strlen(body), 6 + 202 + 2);
	free(body);
	PQclear(res);

	/* 100 levels are embedded, {"j":[[[...]]]}. */
	nested_arrays(deep, 100);
	res = column_result("j", OID_JSON, 1, values);
	body = result_body(res, RESULT_ONE, 0, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(body);
	CU_ASSERT_EQUAL(body[5], '[');
	CU_ASSERT_EQUAL(strlen(body), 5 + 200 + 1);
	free(body);
	PQclear(res);
}

static void
test_bool_odd_value_is_string(void)
{
	static const char *const values[] = { "t", "f", "x" };
	PGresult *res = column_result("b", OID_BOOL, 3, values);

	expect_rows(res, "[{\"b\":true},{\"b\":false},{\"b\":\"x\"}]");
	PQclear(res);
}

static void
test_rows_empty_and_max_rows(void)
{
	static const char *const values[] = { "1", "2", "3" };
	struct lb_error err;
	PGresult *res;
	char *body;

	res = column_result("n", OID_INT4, 0, values);
	expect_rows(res, "[]");
	PQclear(res);

	res = column_result("n", OID_INT4, 3, values);
	body = result_body(res, RESULT_ROWS, 2, &err);
	CU_ASSERT_STRING_EQUAL(body, "[{\"n\":1},{\"n\":2}]");
	free(body);
	body = result_body(res, RESULT_ROWS, 3, &err);
	CU_ASSERT_STRING_EQUAL(body, "[{\"n\":1},{\"n\":2},{\"n\":3}]");
	free(body);
	PQclear(res);
}

static void
test_one(void)
{
	static const char *const values[] = { "1", "2" };
	struct lb_error err;
	PGresult *res;
	char *body;

	res = column_result("n", OID_INT4, 1, values);
	body = result_body(res, RESULT_ONE, 0, &err);
	CU_ASSERT_STRING_EQUAL(body, "{\"n\":1}");
	free(body);
	PQclear(res);

	res = column_result("n", OID_INT4, 0, values);
	CU_ASSERT_PTR_NULL(result_body(res, RESULT_ONE, 0, &err));
	CU_ASSERT_EQUAL(err.code, LB_ERR_NOT_FOUND);
	CU_ASSERT_STRING_EQUAL(err.message, "No matching row.");
	PQclear(res);

	res = column_result("n", OID_INT4, 2, values);
	CU_ASSERT_PTR_NULL(result_body(res, RESULT_ONE, 0, &err));
	CU_ASSERT_EQUAL(err.code, LB_ERR_INTERNAL);
	CU_ASSERT_STRING_EQUAL(err.detail, "result=one but the query returned 2 rows");
	PQclear(res);
}

static void
test_none_rows_affected(void)
{
	PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_COMMAND_OK);
	struct lb_error err;
	char *body;

	/* A client-built result has no command tag: 0 rows. */
	body = result_body(res, RESULT_NONE, 0, &err);
	CU_ASSERT_STRING_EQUAL(body, "{\"rows_affected\":0}");
	free(body);
	PQclear(res);
}

static void
test_failed_result_refused(void)
{
	PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_FATAL_ERROR);
	struct lb_error err;

	CU_ASSERT_PTR_NULL(result_body(res, RESULT_ROWS, 0, &err));
	CU_ASSERT_EQUAL(err.code, LB_ERR_INTERNAL);
	PQclear(res);
}

/* Bodies past yajl's first buffer (2 KB) grow it: still whole. */
static void
test_large_body(void)
{
	enum { ROWS = 400 };
	const char *values[ROWS];
	struct strbuf want;

	strbuf_init(&want);
	strbuf_append_str(&want, "[");
	for (int i = 0; i < ROWS; i++) {
		values[i] = "0123456789abcdef";
		strbuf_append_str(&want, i ? ",{\"t\":\"0123456789abcdef\"}" : "{\"t\":\"0123456789abcdef\"}");
	}
	strbuf_append_str(&want, "]");
	{
		PGresult *res = column_result("t", OID_TEXT, ROWS, values);

		expect_rows(res, want.data);
		PQclear(res);
	}
	strbuf_free(&want, false);
}

static void
test_invalid_utf8_fails_cleanly(void)
{
	static const char *const values[] = { "ok", "bad\xc3(" };
	struct route r = route_with(RESULT_ROWS, 0);
	struct lb_error err;
	struct strbuf out;
	PGresult *res = column_result("t", OID_TEXT, 2, values);

	strbuf_init(&out);
	strbuf_append_str(&out, "keep");
	lb_error_clear(&err);
	CU_ASSERT_EQUAL(responder_result_json(res, &r, true, &out, &err), -1);
	CU_ASSERT_EQUAL(err.code, LB_ERR_INTERNAL);
	CU_ASSERT_STRING_EQUAL(out.data, "keep");    /* the partial body is dropped */
	strbuf_free(&out, false);
	PQclear(res);
}

/* ---- error and object bodies --------------------------------------------- */

static void
test_error_body(void)
{
	struct lb_error err;
	struct strbuf out;

	lb_error_clear(&err);
	lb_error_set(&err, LB_ERR_INVALID_PARAM, "Parameter 'limit' must be an integer.",
		     "secret detail");
	strbuf_init(&out);
	CU_ASSERT_EQUAL(responder_error_json(&err, "abc123", &out), 0);
	CU_ASSERT_STRING_EQUAL(out.data,
			       "{\"error\":{\"code\":\"invalid_parameter\","
			       "\"message\":\"Parameter 'limit' must be an integer.\","
			       "\"request_id\":\"abc123\"}}");
	strbuf_reset(&out);

	lb_error_set(&err, LB_ERR_NOT_FOUND, "No \"route\"\n", NULL);
	CU_ASSERT_EQUAL(responder_error_json(&err, NULL, &out), 0);
	CU_ASSERT_STRING_EQUAL(out.data,
			       "{\"error\":{\"code\":\"not_found\",\"message\":\"No \\\"route\\\"\\n\"}}");
	strbuf_free(&out, false);
}

static void
test_error_body_cuts_invalid_utf8(void)
{
	struct lb_error err;
	struct strbuf out;

	lb_error_clear(&err);
	/* A message cut mid-character, and a hostile request id. */
	lb_error_set(&err, LB_ERR_BAD_REQUEST, "caf\xc3", NULL);
	strbuf_init(&out);
	CU_ASSERT_EQUAL(responder_error_json(&err, "id\xff\x01zz", &out), 0);
	CU_ASSERT_STRING_EQUAL(out.data,
			       "{\"error\":{\"code\":\"bad_request\",\"message\":\"caf\","
			       "\"request_id\":\"id\"}}");
	strbuf_free(&out, false);
}

static void
test_object_json(void)
{
	struct strbuf out;

	strbuf_init(&out);
	CU_ASSERT_EQUAL(responder_object_json(&out, "status", "ok", "db", "up", (char *)NULL), 0);
	CU_ASSERT_STRING_EQUAL(out.data, "{\"status\":\"ok\",\"db\":\"up\"}");
	strbuf_reset(&out);
	CU_ASSERT_EQUAL(responder_object_json(&out, (char *)NULL), 0);
	CU_ASSERT_STRING_EQUAL(out.data, "{}");
	strbuf_reset(&out);
	CU_ASSERT_EQUAL(responder_object_json(&out, "q\"k", "a\\b", "n", (char *)NULL, (char *)NULL), 0);
	CU_ASSERT_STRING_EQUAL(out.data, "{\"q\\\"k\":\"a\\\\b\",\"n\":null}");
	strbuf_free(&out, false);
}

/* ---- SQLSTATE ------------------------------------------------------------ */

static void
test_sqlstate_mapping(void)
{
	static const struct {
		const char *sqlstate;
		enum lb_errcode code;
	} table[] = {
		{ "28000", LB_ERR_ROLE_MISSING }, { "28P01", LB_ERR_ROLE_MISSING },
		{ "42501", LB_ERR_FORBIDDEN }, { "23505", LB_ERR_CONFLICT },
		{ "22P02", LB_ERR_BAD_REQUEST }, { "22003", LB_ERR_BAD_REQUEST },
		{ "23502", LB_ERR_BAD_REQUEST }, { "23503", LB_ERR_BAD_REQUEST },
		{ "23514", LB_ERR_BAD_REQUEST }, { "57014", LB_ERR_TIMEOUT },
		{ "08006", LB_ERR_UNAVAILABLE }, { "08001", LB_ERR_UNAVAILABLE },
		{ "57P01", LB_ERR_UNAVAILABLE }, { "57P02", LB_ERR_UNAVAILABLE },
		{ "57P03", LB_ERR_UNAVAILABLE }, { "53300", LB_ERR_UNAVAILABLE },
		{ "42P01", LB_ERR_INTERNAL }, { "42601", LB_ERR_INTERNAL },
		{ "40001", LB_ERR_INTERNAL }, { "57P04", LB_ERR_INTERNAL },
		{ "53200", LB_ERR_INTERNAL }, { "XX000", LB_ERR_INTERNAL },
		{ "", LB_ERR_INTERNAL }, { "2800", LB_ERR_INTERNAL }, { "280000", LB_ERR_INTERNAL },
		{ NULL, LB_ERR_INTERNAL },
	};

	for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
		CU_ASSERT_EQUAL(sqlstate_to_errcode(table[i].sqlstate), table[i].code);
}

static void
test_sqlstate_messages(void)
{
	static const struct {
		const char *sqlstate;
		const char *message;
	} table[] = {
		{ "28P01", "The database refused the login: the user needs a Postgres role in "
			   "Lakebase (see README, \"Creating Lakebase roles\")." },
		{ "42501", "Permission denied by the database." },
		{ "23505", "The row conflicts with an existing one." },
		{ "22P02", "A value is out of range or malformed for the database." },
		{ "23502", "A required value is missing." },
		{ "23503", "The request violates a data constraint." },
		{ "57014", "The query took too long." },
		{ "53300", "The database is unavailable; try again shortly." },
		{ "42P01", "The query failed." },
	};
	struct lb_error err;

	for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
		responder_sqlstate_error(table[i].sqlstate, "server says\n", &err);
		CU_ASSERT_STRING_EQUAL(err.message, table[i].message);
		CU_ASSERT_STRING_EQUAL(err.sqlstate, table[i].sqlstate);
		CU_ASSERT_STRING_EQUAL(err.detail, "server says");
	}
}

static void
test_unavailable_is_transient(void)
{
	struct lb_error err;

	responder_sqlstate_error("57P01", "terminating connection", &err);
	CU_ASSERT_EQUAL(err.code, LB_ERR_UNAVAILABLE);
	CU_ASSERT_EQUAL(err.transience, LB_TRANSIENT);
	CU_ASSERT_EQUAL(err.retry_after_s, 1);
	responder_sqlstate_error("23505", "duplicate key", &err);
	CU_ASSERT_EQUAL(err.transience, LB_PERMANENT);
	CU_ASSERT_EQUAL(err.retry_after_s, 0);
	responder_sqlstate_error(NULL, NULL, &err);
	CU_ASSERT_EQUAL(err.code, LB_ERR_INTERNAL);
	CU_ASSERT_STRING_EQUAL(err.sqlstate, "");
	CU_ASSERT_STRING_EQUAL(err.message, "The query failed.");
}

static void
test_pg_error_without_result(void)
{
	struct lb_error err;
	PGconn *conn;
	PGresult *res;

	/* No result and no connection: a connection failure. */
	responder_pg_error(NULL, NULL, &err);
	CU_ASSERT_EQUAL(err.code, LB_ERR_UNAVAILABLE);
	CU_ASSERT_STRING_EQUAL(err.sqlstate, "08006");
	CU_ASSERT_STRING_EQUAL(err.message, "The database is unavailable; try again shortly.");
	CU_ASSERT_EQUAL(err.retry_after_s, 1);
	CU_ASSERT_EQUAL(err.transience, LB_TRANSIENT);

	/* A connection that failed (no server on a socket that cannot exist). */
	conn = PQconnectdb("host=/nonexistent-lakebase-test-dir port=1 connect_timeout=1");
	CU_ASSERT_EQUAL_FATAL(PQstatus(conn), CONNECTION_BAD);
	responder_pg_error(NULL, conn, &err);
	CU_ASSERT_EQUAL(err.code, LB_ERR_UNAVAILABLE);
	CU_ASSERT_STRING_EQUAL(err.sqlstate, "08006");
	CU_ASSERT(strlen(err.detail) > 0);
	CU_ASSERT(err.detail[strlen(err.detail) - 1] != '\n');

	/* A result without SQLSTATE on a broken connection: also unavailable. */
	res = PQmakeEmptyPGresult(NULL, PGRES_FATAL_ERROR);
	responder_pg_error(res, conn, &err);
	CU_ASSERT_EQUAL(err.code, LB_ERR_UNAVAILABLE);
	/* ... and without a connection to judge by: internal. */
	responder_pg_error(res, NULL, &err);
	CU_ASSERT_EQUAL(err.code, LB_ERR_INTERNAL);
	CU_ASSERT_STRING_EQUAL(err.message, "The query failed.");
	PQclear(res);
	PQfinish(conn);
}

void
register_responder_tests(void)
{
	CU_pSuite s = CU_add_suite("responder", NULL, NULL);

	CU_add_test(s, "rows typed by OID", test_rows_typed_by_oid);
	CU_add_test(s, "NaN and Infinity are strings", test_non_finite_numbers_are_strings);
	CU_add_test(s, "NULL of every kind", test_nulls_of_every_kind);
	CU_add_test(s, "strings escaped, UTF-8 kept", test_strings_escaped_and_utf8);
	CU_add_test(s, "column names escaped", test_column_names_escaped);
	CU_add_test(s, "json/jsonb embedded", test_json_embedded);
	CU_add_test(s, "invalid json becomes a string", test_json_invalid_becomes_string);
	CU_add_test(s, "too deep json becomes a string", test_json_too_deep_becomes_string);
	CU_add_test(s, "odd bool value is a string", test_bool_odd_value_is_string);
	CU_add_test(s, "rows: empty and max_rows", test_rows_empty_and_max_rows);
	CU_add_test(s, "one: object, 404, more than one row", test_one);
	CU_add_test(s, "none: rows_affected", test_none_rows_affected);
	CU_add_test(s, "failed result refused", test_failed_result_refused);
	CU_add_test(s, "invalid UTF-8 fails cleanly", test_invalid_utf8_fails_cleanly);
	CU_add_test(s, "a body larger than yajl's first buffer", test_large_body);
	CU_add_test(s, "error body", test_error_body);
	CU_add_test(s, "error body cuts invalid UTF-8", test_error_body_cuts_invalid_utf8);
	CU_add_test(s, "object body", test_object_json);
	CU_add_test(s, "SQLSTATE mapping", test_sqlstate_mapping);
	CU_add_test(s, "SQLSTATE public messages", test_sqlstate_messages);
	CU_add_test(s, "unavailable is transient", test_unavailable_is_transient);
	CU_add_test(s, "connection failures", test_pg_error_without_result);
}
