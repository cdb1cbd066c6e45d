/*
 * test_params.c - parameter binding and typing: one test per rule, with the
 * exact public messages (they name the parameter and are part of the API).
 */
#include <stdlib.h>
#include <string.h>

#include "params.h"
#include "strbuf.h"
#include "unit.h"

static struct param_def
def(const char *name, enum param_source in, enum param_type type)
{
	struct param_def d = {
		.name = (char *)name, .in = in, .type = type, .max_length = -1,
	};

	return d;
}

/* Bounds as the config keeps them: the JSON number's text. */
static struct param_def
ranged(const char *name, enum param_type type, const char *min, const char *max)
{
	struct param_def d = def(name, PARAM_IN_QUERY, type);

	d.min = (char *)min;
	d.max = (char *)max;
	return d;
}

static struct route
route_of(struct param_def *params, size_t n)
{
	struct route r = { .method = "GET", .path = "/t", .params = params, .nparams = n };

	for (size_t i = 0; i < n; i++)
		params[i].position = (int)i + 1;
	return r;
}

/* params_convert_text must give exactly `want`. */
static void
expect_value(const struct param_def *d, const char *text, const char *want)
{
	struct lb_error err;
	char *v;

	lb_error_clear(&err);
	v = params_convert_text(d, text, &err);
	CU_ASSERT_PTR_NOT_NULL(v);
	if (v != NULL)
		CU_ASSERT_STRING_EQUAL(v, want);
	CU_ASSERT_EQUAL(err.code, LB_OK);
	free(v);
}

/* params_convert_text must refuse text with exactly `message`. */
static void
expect_refused(const struct param_def *d, const char *text, const char *message)
{
	struct lb_error err;
	char *v;

	lb_error_clear(&err);
	v = params_convert_text(d, text, &err);
	CU_ASSERT_PTR_NULL(v);
	free(v);
	CU_ASSERT_EQUAL(err.code, LB_ERR_INVALID_PARAM);
	CU_ASSERT_STRING_EQUAL(err.message, message);
}

/* Binds a route; returns 0/-1 like params_bind, keeps the values in bp. */
static int
bind(struct route *r, char *const *path_values, const char *qs, const char *body,
     struct bound_params *bp, struct lb_error *err)
{
	lb_error_clear(err);
	return params_bind(r, path_values, qs, body, body ? strlen(body) : 0, bp, err);
}

/* Binds a one-parameter route and checks the single value (NULL: SQL NULL). */
static void
expect_bound(struct param_def d, const char *qs, const char *body, const char *want)
{
	struct route r = route_of(&d, 1);
	struct bound_params bp;
	struct lb_error err;

	CU_ASSERT_EQUAL_FATAL(bind(&r, NULL, qs, body, &bp, &err), 0);
	CU_ASSERT_EQUAL(bp.count, 1);
	if (want == NULL) {
		CU_ASSERT_PTR_NULL(bp.values[0]);
	} else {
		CU_ASSERT_PTR_NOT_NULL(bp.values[0]);
		if (bp.values[0] != NULL)
			CU_ASSERT_STRING_EQUAL(bp.values[0], want);
	}
	bound_params_free(&bp);
}

/* Binding a one-parameter route must fail with code and message. */
static void
expect_bind_error(struct param_def d, const char *qs, const char *body, enum lb_errcode code,
		  const char *message)
{
	struct route r = route_of(&d, 1);
	struct bound_params bp;
	struct lb_error err;

	CU_ASSERT_EQUAL(bind(&r, NULL, qs, body, &bp, &err), -1);
	CU_ASSERT_PTR_NULL(bp.values);
	CU_ASSERT_EQUAL(bp.count, 0);
	CU_ASSERT_EQUAL(err.code, code);
	CU_ASSERT_STRING_EQUAL(err.message, message);
	bound_params_free(&bp);
}

/* ---- integers ------------------------------------------------------------ */

static void
test_int_strict_decimal(void)
{
	struct param_def d = def("limit", PARAM_IN_QUERY, PT_INT);
	const char *bad[] = { "", "abc", "1.5", "+1", " 1", "1 ", "01", "-", "1e3", "0x10", "--1" };

	expect_value(&d, "0", "0");
	expect_value(&d, "-17", "-17");
	expect_value(&d, "-0", "0");
	expect_value(&d, "2147483647", "2147483647");
	expect_value(&d, "-2147483648", "-2147483648");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_refused(&d, bad[i], "Parameter 'limit' must be an integer.");
}

static void
test_int_is_32_bit(void)
{
	struct param_def d = def("n", PARAM_IN_QUERY, PT_INT);

	expect_refused(&d, "2147483648", "Parameter 'n' must be at most 2147483647.");
	expect_refused(&d, "-2147483649", "Parameter 'n' must be at least -2147483648.");
	expect_refused(&d, "99999999999999999999", "Parameter 'n' must be at most 9223372036854775807.");
}

static void
test_bigint_is_64_bit(void)
{
	struct param_def d = def("big", PARAM_IN_QUERY, PT_BIGINT);

	expect_value(&d, "9223372036854775807", "9223372036854775807");
	expect_value(&d, "-9223372036854775808", "-9223372036854775808");
	expect_refused(&d, "9223372036854775808", "Parameter 'big' must be at most 9223372036854775807.");
	expect_refused(&d, "-9223372036854775809",
		       "Parameter 'big' must be at least -9223372036854775808.");
	expect_refused(&d, "1.0", "Parameter 'big' must be an integer.");
}

static void
test_int_min_max(void)
{
	struct param_def d = ranged("limit", PT_INT, "1", "500");

	expect_value(&d, "1", "1");
	expect_value(&d, "500", "500");
	expect_refused(&d, "0", "Parameter 'limit' must be at least 1.");
	expect_refused(&d, "-3", "Parameter 'limit' must be at least 1.");
	expect_refused(&d, "501", "Parameter 'limit' must be at most 500.");
}

/* Bounds hold exactly, where a double would round: a bigint just past
 * 2^53, a numeric a hair above its max, in any notation. */
static void
test_bounds_are_exact(void)
{
	struct param_def b = ranged("b", PT_BIGINT, "-9007199254740992", "9007199254740992");
	struct param_def n = ranged("n", PT_NUMERIC, "-5E-1", "500");

	expect_value(&b, "9007199254740992", "9007199254740992");
	expect_refused(&b, "9007199254740993", "Parameter 'b' must be at most 9007199254740992.");
	expect_refused(&b, "-9007199254740993", "Parameter 'b' must be at least -9007199254740992.");
	expect_value(&n, "500.000", "500.000");
	expect_value(&n, "5e2", "5e2");
	expect_value(&n, "-0.5", "-0.5");
	expect_value(&n, "0", "0");
	expect_refused(&n, "500.0000000000000000001", "Parameter 'n' must be at most 500.");
	expect_refused(&n, "5.000000000000000001e2", "Parameter 'n' must be at most 500.");
	expect_refused(&n, "-0.50000000000000000001", "Parameter 'n' must be at least -5E-1.");
	expect_refused(&n, "1e999999999999999999999", "Parameter 'n' must be at most 500.");
	expect_value(&n, "1e-999999999999999999999", "1e-999999999999999999999");
}

/* ---- numeric, bool, uuid, timestamptz ------------------------------------ */

static void
test_numeric(void)
{
	struct param_def d = def("n", PARAM_IN_QUERY, PT_NUMERIC);
	struct param_def r = ranged("price", PT_NUMERIC, "0.5", "99.75");
	const char *bad[] = { "", "1.", ".5", "+1", "1e", "1e+", "NaN", "Infinity", "1,5", "0x1", " 1" };

	expect_value(&d, "12", "12");
	expect_value(&d, "-0.25", "-0.25");
	expect_value(&d, "1.50", "1.50");           /* passed through as written */
	expect_value(&d, "6.02E+23", "6.02E+23");
	expect_value(&d, "1e-3", "1e-3");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_refused(&d, bad[i], "Parameter 'n' must be a number.");
	expect_value(&r, "0.5", "0.5");
	expect_refused(&r, "0.49", "Parameter 'price' must be at least 0.5.");
	expect_refused(&r, "99.76", "Parameter 'price' must be at most 99.75.");
	expect_refused(&r, "1e400", "Parameter 'price' must be at most 99.75.");
}

static void
test_bool(void)
{
	struct param_def d = def("done", PARAM_IN_QUERY, PT_BOOL);
	const char *bad[] = { "", "1", "0", "yes", "t", "truee", " true" };

	expect_value(&d, "true", "true");
	expect_value(&d, "TRUE", "true");
	expect_value(&d, "False", "false");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_refused(&d, bad[i], "Parameter 'done' must be true or false.");
}

static void
test_uuid(void)
{
	struct param_def d = def("id", PARAM_IN_PATH, PT_UUID);
	const char *bad[] = {
		"", "123", "0e6a8ef4-3d3b-4d46-9b7f-26f33e3e3f1",     /* one short */
		"0e6a8ef4-3d3b-4d46-9b7f-26f33e3e3f1aa",              /* one long */
		"0e6a8ef43d3b4d469b7f26f33e3e3f1a",                   /* no dashes */
		"{0e6a8ef4-3d3b-4d46-9b7f-26f33e3e3f1a}",
		"0e6a8ef4-3d3b-4d46-9b7f_26f33e3e3f1a",
		"0e6a8ef4-3d3b-4d46-9b7f-26f33e3e3f1g",
		"0e6a8ef4x3d3b-4d46-9b7f-26f33e3e3f1a",
	};

	expect_value(&d, "0e6a8ef4-3d3b-4d46-9b7f-26f33e3e3f1a", "0e6a8ef4-3d3b-4d46-9b7f-26f33e3e3f1a");
	expect_value(&d, "0E6A8EF4-3D3B-4D46-9B7F-26F33E3E3F1A", "0e6a8ef4-3d3b-4d46-9b7f-26f33e3e3f1a");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_refused(&d, bad[i], "Parameter 'id' must be a UUID.");
}

static void
test_timestamptz(void)
{
	struct param_def d = def("ts", PARAM_IN_QUERY, PT_TIMESTAMPTZ);
	const char *good[] = {
		"2024-02-29T12:30:00Z",
		"2024-01-01t00:00:00.123456+05:30",
		"1999-12-31T23:59:59-08:00",
		"2016-12-31T23:59:60Z",
		"0001-01-01T00:00:00z",
		"2023-04-30T00:00:00.5+00:00",
		"2024-01-01T00:00:00+15:59",    /* PostgreSQL's largest offsets */
		"2024-01-01T00:00:00-15:59",
		"2024-01-01T00:00:00.1234567890123456789012345678901234567890123Z",   /* 64 */
	};
	const char *bad[] = {
		"",
		"2023-02-29T00:00:00Z",         /* not a leap year */
		"1900-02-29T00:00:00Z",
		"2024-04-31T00:00:00Z",
		"2024-13-01T00:00:00Z",
		"2024-00-10T00:00:00Z",
		"2024-01-00T00:00:00Z",
		"0000-01-01T00:00:00Z",         /* PostgreSQL has no year 0 */
		"2024-01-01 00:00:00Z",         /* space, not T */
		"2024-01-01T24:00:00Z",
		"2024-01-01T00:60:00Z",
		"2024-01-01T00:00:61Z",
		"2024-01-01T00:00:00",          /* no offset */
		"2024-01-01T00:00:00+0530",
		"2024-01-01T00:00:00+24:00",
		"2024-01-01T00:00:00.Z",
		"2024-01-01T00:00Z",
		"2024-1-01T00:00:00Z",
		"2024-01-01T00:00:00Zjunk",
		"20240101T000000Z",
		"2024-01-01T00:00:00+16:00",    /* PostgreSQL refuses (22009) */
		"2024-01-01T00:00:00-23:59",
		"2024-01-01T00:00:00.12345678901234567890123456789012345678901234Z",  /* 65 */
	};

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		expect_value(&d, good[i], good[i]);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_refused(&d, bad[i], "Parameter 'ts' must be an RFC 3339 timestamp.");
}

/* ---- text and json ------------------------------------------------------- */

static void
test_text_utf8_and_max_length(void)
{
	struct param_def d = def("title", PARAM_IN_QUERY, PT_TEXT);
	const char *bad[] = {
		"\xc3\x28",              /* bad continuation */
		"a\x80",                 /* lone continuation byte */
		"\xc0\xaf",              /* overlong '/' */
		"\xe0\x80\xaf",          /* overlong */
		"\xed\xa0\x80",          /* surrogate U+D800 */
		"\xf4\x90\x80\x80",      /* above U+10FFFF */
		"\xe2\x82",              /* truncated */
		"\xff",
	};

	d.max_length = 3;
	expect_value(&d, "", "");
	expect_value(&d, "abc", "abc");
	/* Three code points, five bytes: counted as characters. */
	expect_value(&d, "h\xc3\xa9\xc3\xa9", "h\xc3\xa9\xc3\xa9");
	expect_value(&d, "\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80");
	expect_refused(&d, "abcd", "Parameter 'title' is longer than 3 characters.");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_refused(&d, bad[i], "Parameter 'title' must be valid UTF-8 text.");

	d.max_length = 500;
	{
		char s[502];

		memset(s, 'x', 501);
		s[501] = '\0';
		expect_refused(&d, s, "Parameter 'title' is longer than 500 characters.");
		s[500] = '\0';
		expect_value(&d, s, s);
	}
}

static void
test_json_text(void)
{
	struct param_def d = def("j", PARAM_IN_QUERY, PT_JSON);
	const char *bad[] = { "", "{a:1}", "{\"a\":1", "/*c*/1", "[1] [2]", "nul", "'x'",
			      "[\"\\u0000\", oops" };

	expect_value(&d, "{\"a\": [1, 2]}", "{\"a\": [1, 2]}");      /* passed through */
	expect_value(&d, "42", "42");
	expect_value(&d, "\"s\"", "\"s\"");
	expect_value(&d, "[\"a\\u0000\"]", "[\"a\\u0000\"]");    /* PostgreSQL decides */
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_refused(&d, bad[i], "Parameter 'j' must be valid JSON.");
	d.max_length = 4;            /* bytes, for json */
	expect_value(&d, "[12]", "[12]");
	expect_refused(&d, "[123]", "Parameter 'j' is longer than 4 bytes.");
}

/* ---- the query string ---------------------------------------------------- */

static void
test_query_decoding(void)
{
	struct param_def q = def("q", PARAM_IN_QUERY, PT_TEXT);

	expect_bound(q, "q=a+b%20c", NULL, "a b c");
	expect_bound(q, "q=x%3Dy%26z", NULL, "x=y&z");
	expect_bound(q, "q=a=b", NULL, "a=b");         /* split on the first '=' */
	expect_bound(q, "q", NULL, "");                /* no '=': empty value */
	expect_bound(q, "q=", NULL, "");
	expect_bound(q, "%71=encoded-key", NULL, "encoded-key");
	expect_bound(q, "other=1&&q=2&", NULL, "2");
}

static void
test_query_undefined_ignored(void)
{
	struct param_def q = def("q", PARAM_IN_QUERY, PT_TEXT);

	expect_bound(q, "foo=1&bar&baz=%zz&%zz=1&q=ok&Q=x", NULL, "ok");
	expect_bound(q, "", NULL, NULL);
	expect_bound(q, NULL, NULL, NULL);
}

static void
test_query_repeated(void)
{
	struct param_def id = def("id", PARAM_IN_QUERY, PT_INT);

	expect_bind_error(id, "id=1&id=2", NULL, LB_ERR_INVALID_PARAM, "Parameter 'id' is repeated.");
	expect_bind_error(id, "id=1&x=0&id=1", NULL, LB_ERR_INVALID_PARAM,
			  "Parameter 'id' is repeated.");
	expect_bind_error(id, "id=1&%69d=2", NULL, LB_ERR_INVALID_PARAM,
			  "Parameter 'id' is repeated.");
}

static void
test_query_malformed_escape(void)
{
	struct param_def q = def("q", PARAM_IN_QUERY, PT_TEXT);

	expect_bind_error(q, "q=%zz", NULL, LB_ERR_INVALID_PARAM,
			  "Parameter 'q' is not correctly percent-encoded.");
	expect_bind_error(q, "q=a%2", NULL, LB_ERR_INVALID_PARAM,
			  "Parameter 'q' is not correctly percent-encoded.");
	expect_bind_error(q, "q=a%00b", NULL, LB_ERR_INVALID_PARAM,
			  "Parameter 'q' is not correctly percent-encoded.");
}

static void
test_missing_default_required(void)
{
	struct param_def limit = ranged("limit", PT_INT, "1", "500");
	struct param_def title = def("title", PARAM_IN_QUERY, PT_TEXT);
	struct param_def opt = def("opt", PARAM_IN_QUERY, PT_TEXT);

	limit.default_text = "50";
	expect_bound(limit, "", NULL, "50");
	expect_bound(limit, "limit=7", NULL, "7");
	title.required = true;
	expect_bind_error(title, "x=1", NULL, LB_ERR_INVALID_PARAM, "Parameter 'title' is required.");
	expect_bound(title, "title=", NULL, "");      /* present, even if empty */
	expect_bound(opt, "", NULL, NULL);
	/* A value that is present is checked, default or not. */
	expect_bind_error(limit, "limit=0", NULL, LB_ERR_INVALID_PARAM,
			  "Parameter 'limit' must be at least 1.");
}

static void
test_values_in_position_order(void)
{
	struct param_def p[3] = {
		def("id", PARAM_IN_PATH, PT_UUID),
		def("limit", PARAM_IN_QUERY, PT_INT),
		def("title", PARAM_IN_BODY, PT_TEXT),
	};
	struct route r = route_of(p, 3);
	char *path_values[3] = { "0E6A8EF4-3D3B-4D46-9B7F-26F33E3E3F1A", NULL, NULL };
	struct bound_params bp;
	struct lb_error err;

	CU_ASSERT_EQUAL_FATAL(bind(&r, path_values, "limit=5", "{\"title\":\"t\"}", &bp, &err), 0);
	CU_ASSERT_EQUAL(bp.count, 3);
	CU_ASSERT_STRING_EQUAL(bp.values[0], "0e6a8ef4-3d3b-4d46-9b7f-26f33e3e3f1a");
	CU_ASSERT_STRING_EQUAL(bp.values[1], "5");
	CU_ASSERT_STRING_EQUAL(bp.values[2], "t");
	bound_params_free(&bp);
	CU_ASSERT_PTR_NULL(bp.values);

	path_values[0] = "nope";
	CU_ASSERT_EQUAL(bind(&r, path_values, "limit=5", "{\"title\":\"t\"}", &bp, &err), -1);
	CU_ASSERT_STRING_EQUAL(err.message, "Parameter 'id' must be a UUID.");
	bound_params_free(&bp);
}

/* More query parameters than params_bind collects on the stack (16). */
static void
test_many_query_params(void)
{
	static char names[20][8];
	struct param_def p[20];
	struct route r;
	struct bound_params bp;
	struct lb_error err;
	struct strbuf qs;

	strbuf_init(&qs);
	for (int i = 0; i < 20; i++) {
		snprintf(names[i], sizeof(names[i]), "q%d", i);
		p[i] = def(names[i], PARAM_IN_QUERY, PT_INT);
		if (i % 2 == 0)
			strbuf_appendf(&qs, "%sq%d=%d", qs.len ? "&" : "", i, i * 10);
	}
	r = route_of(p, 20);
	CU_ASSERT_EQUAL_FATAL(bind(&r, NULL, qs.data, NULL, &bp, &err), 0);
	CU_ASSERT_EQUAL(bp.count, 20);
	CU_ASSERT_STRING_EQUAL(bp.values[18], "180");
	CU_ASSERT_PTR_NULL(bp.values[19]);
	bound_params_free(&bp);
	/* A repeated one, past the stack's room, is still refused. */
	strbuf_append_str(&qs, "&q18=1");
	CU_ASSERT_EQUAL(bind(&r, NULL, qs.data, NULL, &bp, &err), -1);
	bound_params_free(&bp);
	strbuf_free(&qs, false);
}

/* ---- the body ------------------------------------------------------------ */

static void
test_body_must_be_object(void)
{
	struct param_def t = def("title", PARAM_IN_BODY, PT_TEXT);
	const char *not_object[] = { "[1]", "\"s\"", "1", "null" };
	const char *not_json[] = { "{", "{\"title\":}", "{} x", "{}{}", "{\"a\":1,}", "/*c*/{}",
				   "{'title':1}", "   " };

	for (size_t i = 0; i < sizeof(not_object) / sizeof(not_object[0]); i++)
		expect_bind_error(t, "", not_object[i], LB_ERR_BAD_REQUEST,
				  "The request body must be a JSON object.");
	for (size_t i = 0; i < sizeof(not_json) / sizeof(not_json[0]); i++)
		expect_bind_error(t, "", not_json[i], LB_ERR_BAD_REQUEST,
				  "The request body is not valid JSON.");
	expect_bind_error(t, "", NULL, LB_ERR_BAD_REQUEST, "The request body must be a JSON object.");
	expect_bind_error(t, "", "", LB_ERR_BAD_REQUEST, "The request body must be a JSON object.");
}

static void
test_body_ignored_without_body_params(void)
{
	struct param_def q = def("q", PARAM_IN_QUERY, PT_TEXT);

	expect_bound(q, "q=1", "this is not JSON", "1");
}

static void
test_body_uses_body_len(void)
{
	struct param_def t = def("title", PARAM_IN_BODY, PT_TEXT);
	struct route r = route_of(&t, 1);
	const char *buf = "{\"title\":\"x\"}GARBAGE";
	const char nul_inside[] = "{\"title\":\"x\"}\0";
	struct bound_params bp;
	struct lb_error err;

	lb_error_clear(&err);
	CU_ASSERT_EQUAL_FATAL(params_bind(&r, NULL, "", buf, 13, &bp, &err), 0);
	CU_ASSERT_STRING_EQUAL(bp.values[0], "x");
	bound_params_free(&bp);
	/* A raw NUL within body_len is not JSON. */
	CU_ASSERT_EQUAL(params_bind(&r, NULL, "", nul_inside, sizeof(nul_inside), &bp, &err), -1);
	CU_ASSERT_EQUAL(err.code, LB_ERR_BAD_REQUEST);
	CU_ASSERT_STRING_EQUAL(err.message, "The request body is not valid JSON.");
}

/* {"x":[[...]]} with `arrays` nested arrays: depth 1 + arrays. Caller frees. */
static char *
nested_body(int arrays)
{
	char *s = malloc(8 + 2 * (size_t)arrays);
	size_t n = 0;

	memcpy(s, "{\"x\":", 5);
	n = 5;
	for (int i = 0; i < arrays; i++)
		s[n++] = '[';
	for (int i = 0; i < arrays; i++)
		s[n++] = ']';
	s[n++] = '}';
	s[n] = '\0';
	return s;
}

static void
test_body_nul_and_depth(void)
{
	struct param_def t = def("title", PARAM_IN_BODY, PT_TEXT);
	char *body;

	expect_bind_error(t, "", "{\"title\":\"a\\u0000b\"}", LB_ERR_BAD_REQUEST,
			  "The request body must not contain NUL characters.");
	expect_bind_error(t, "", "{\"ti\\u0000tle\":\"a\"}", LB_ERR_BAD_REQUEST,
			  "The request body must not contain NUL characters.");
	/* An escaped backslash before u0000 is ordinary text. */
	expect_bound(t, "", "{\"title\":\"a\\\\u0000b\"}", "a\\u0000b");

	/* 64 levels fit (the object and 63 arrays); 65 do not. */
	body = nested_body(63);
	expect_bound(t, "", body, NULL);
	free(body);
	body = nested_body(64);
	expect_bind_error(t, "", body, LB_ERR_BAD_REQUEST, "The request body is nested too deeply.");
	free(body);
}

/* The one pass before the parse tells strings from structure: slashes,
 * brackets and escapes inside strings are text; a comment outside is not
 * JSON; the depth counts only structure. */
static void
test_body_strings_and_structure(void)
{
	struct param_def t = def("title", PARAM_IN_BODY, PT_TEXT);
	char *body;

	expect_bound(t, "", "{\"title\":\"http://x/*y*/\"}", "http://x/*y*/");
	expect_bound(t, "", "{\"title\":\"a\\\"//[[{\"}", "a\"//[[{");
	expect_bound(t, "", "{\"title\":\"\\\\\"}", "\\");
	expect_bound(t, "", "{\"title\":\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"}",
		     "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[");
	expect_bind_error(t, "", "{\"title\":\"x\"}//c", LB_ERR_BAD_REQUEST, "The request body is not valid JSON.");
	expect_bind_error(t, "", "{\"title\":/*c*/\"x\"}", LB_ERR_BAD_REQUEST,
			  "The request body is not valid JSON.");
	/* yajl quotes the input near the error: "cancel" there is not the
	 * callbacks' cancellation (out of memory, 500). */
	expect_bind_error(t, "", "{\"title\":\"cancelled\",}", LB_ERR_BAD_REQUEST,
			  "The request body is not valid JSON.");
	expect_bind_error(t, "", "{\"title\": cancel}", LB_ERR_BAD_REQUEST,
			  "The request body is not valid JSON.");
	/* Brackets in strings do not count toward the depth: a string of
	 * 40 '{' beside 63 nested arrays fits (64 levels). */
	body = malloc(256);
	CU_ASSERT_PTR_NOT_NULL_FATAL(body);
	snprintf(body, 256, "{\"title\":\"%.40s\",\"x\":%.63s%.63s}",
		 "{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{",
		 "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
		 "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]");
	expect_bound(t, "", body, "{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{");
	free(body);
}

static void
test_body_repeated_field(void)
{
	struct param_def t = def("title", PARAM_IN_BODY, PT_TEXT);
	struct param_def j = def("j", PARAM_IN_BODY, PT_JSON);

	expect_bind_error(t, "", "{\"title\":\"a\",\"title\":\"b\"}", LB_ERR_INVALID_PARAM,
			  "Parameter 'title' is repeated.");
	expect_bind_error(t, "", "{\"title\":[1],\"title\":\"b\"}", LB_ERR_INVALID_PARAM,
			  "Parameter 'title' is repeated.");
	expect_bind_error(j, "", "{\"j\":{\"a\":1},\"x\":2,\"j\":[2]}", LB_ERR_INVALID_PARAM,
			  "Parameter 'j' is repeated.");
}

/* Only the top object's fields are the route's: the same names deeper
 * down, in fields the route does not declare, are not. */
static void
test_body_fields_only_at_the_top(void)
{
	struct param_def t = def("title", PARAM_IN_BODY, PT_TEXT);
	struct param_def j = def("j", PARAM_IN_BODY, PT_JSON);

	expect_bound(t, "", "{\"x\":{\"title\":\"inner\",\"y\":[{\"title\":1}]},\"title\":\"outer\"}",
		     "outer");
	expect_bound(t, "", "{\"x\":{\"title\":\"inner\"}}", NULL);
	expect_bound(j, "", "{\"j\":{\"j\":{\"j\":[[],{}]}},\"k\":{\"j\":1}}",
		     "{\"j\":{\"j\":[[],{}]}}");
	expect_bind_error(t, "", "{\"title\":{\"a\":\"b\"}}", LB_ERR_INVALID_PARAM,
			  "Parameter 'title' must be a string.");
	/* Half a surrogate pair would have become '?'. */
	expect_bind_error(t, "", "{\"title\":\"a\\ud800\"}", LB_ERR_BAD_REQUEST,
			  "The request body must be valid Unicode: a \\u escape is half a surrogate pair.");
	expect_bound(t, "", "{\"title\":\"\\ud83d\\ude00\"}", "\xf0\x9f\x98\x80");
}

static void
test_body_missing_null_required(void)
{
	struct param_def t = def("title", PARAM_IN_BODY, PT_TEXT);
	struct param_def d = def("done", PARAM_IN_BODY, PT_BOOL);

	expect_bound(t, "", "{}", NULL);
	expect_bound(t, "", "{\"title\":null}", NULL);
	expect_bound(t, "", "{\"other\":1}", NULL);
	d.default_text = "false";
	expect_bound(d, "", "{}", "false");
	expect_bound(d, "", "{\"done\":null}", NULL);        /* explicit null is not missing */
	t.required = true;
	expect_bind_error(t, "", "{}", LB_ERR_INVALID_PARAM, "Parameter 'title' is required.");
	expect_bind_error(t, "", "{\"title\":null}", LB_ERR_INVALID_PARAM,
			  "Parameter 'title' is required.");
}

static void
test_body_text(void)
{
	struct param_def t = def("title", PARAM_IN_BODY, PT_TEXT);

	t.max_length = 5;
	expect_bound(t, "", "{\"title\":\"caf\\u00e9!\"}", "caf\xc3\xa9!");
	expect_bound(t, "", "{\"title\":\"a\\\"b\\n\"}", "a\"b\n");
	expect_bind_error(t, "", "{\"title\":\"abcdef\"}", LB_ERR_INVALID_PARAM,
			  "Parameter 'title' is longer than 5 characters.");
	expect_bind_error(t, "", "{\"title\":5}", LB_ERR_INVALID_PARAM,
			  "Parameter 'title' must be a string.");
	expect_bind_error(t, "", "{\"title\":[\"a\"]}", LB_ERR_INVALID_PARAM,
			  "Parameter 'title' must be a string.");
	expect_bind_error(t, "", "{\"title\":true}", LB_ERR_INVALID_PARAM,
			  "Parameter 'title' must be a string.");
}

static void
test_body_integers(void)
{
	struct param_def n = def("n", PARAM_IN_BODY, PT_INT);
	struct param_def b = def("b", PARAM_IN_BODY, PT_BIGINT);
	const char *not_int[] = { "{\"n\":\"5\"}", "{\"n\":5.0}", "{\"n\":1e2}", "{\"n\":true}",
				  "{\"n\":[5]}" };

	expect_bound(n, "", "{\"n\":5}", "5");
	expect_bound(n, "", "{\"n\":-2147483648}", "-2147483648");
	for (size_t i = 0; i < sizeof(not_int) / sizeof(not_int[0]); i++)
		expect_bind_error(n, "", not_int[i], LB_ERR_INVALID_PARAM,
				  "Parameter 'n' must be an integer.");
	expect_bind_error(n, "", "{\"n\":3000000000}", LB_ERR_INVALID_PARAM,
			  "Parameter 'n' must be at most 2147483647.");
	expect_bound(b, "", "{\"b\":3000000000}", "3000000000");
	expect_bind_error(b, "", "{\"b\":9223372036854775808}", LB_ERR_INVALID_PARAM,
			  "Parameter 'b' must be at most 9223372036854775807.");
	n.max = "10";
	expect_bind_error(n, "", "{\"n\":11}", LB_ERR_INVALID_PARAM,
			  "Parameter 'n' must be at most 10.");
}

static void
test_body_numeric(void)
{
	struct param_def x = def("x", PARAM_IN_BODY, PT_NUMERIC);

	/* The number's original text, not a double's rendering of it. */
	expect_bound(x, "", "{\"x\":1.50}", "1.50");
	expect_bound(x, "", "{\"x\":12345678901234567890.123456789}", "12345678901234567890.123456789");
	expect_bound(x, "", "{\"x\":-1E+2}", "-1E+2");
	expect_bound(x, "", "{\"x\":\"2.5\"}", "2.5");
	expect_bind_error(x, "", "{\"x\":\"2,5\"}", LB_ERR_INVALID_PARAM,
			  "Parameter 'x' must be a number.");
	expect_bind_error(x, "", "{\"x\":true}", LB_ERR_INVALID_PARAM,
			  "Parameter 'x' must be a number.");
	x.min = "0";
	expect_bind_error(x, "", "{\"x\":-0.01}", LB_ERR_INVALID_PARAM,
			  "Parameter 'x' must be at least 0.");
}

static void
test_body_bool(void)
{
	struct param_def d = def("done", PARAM_IN_BODY, PT_BOOL);

	expect_bound(d, "", "{\"done\":true}", "true");
	expect_bound(d, "", "{\"done\":false}", "false");
	expect_bind_error(d, "", "{\"done\":\"true\"}", LB_ERR_INVALID_PARAM,
			  "Parameter 'done' must be true or false.");
	expect_bind_error(d, "", "{\"done\":1}", LB_ERR_INVALID_PARAM,
			  "Parameter 'done' must be true or false.");
}

static void
test_body_uuid_and_timestamp(void)
{
	struct param_def id = def("id", PARAM_IN_BODY, PT_UUID);
	struct param_def ts = def("ts", PARAM_IN_BODY, PT_TIMESTAMPTZ);

	expect_bound(id, "", "{\"id\":\"0E6A8EF4-3D3B-4D46-9B7F-26F33E3E3F1A\"}",
		     "0e6a8ef4-3d3b-4d46-9b7f-26f33e3e3f1a");
	expect_bind_error(id, "", "{\"id\":12}", LB_ERR_INVALID_PARAM, "Parameter 'id' must be a UUID.");
	expect_bind_error(id, "", "{\"id\":\"x\"}", LB_ERR_INVALID_PARAM,
			  "Parameter 'id' must be a UUID.");
	expect_bound(ts, "", "{\"ts\":\"2024-05-01T10:00:00+02:00\"}", "2024-05-01T10:00:00+02:00");
	expect_bind_error(ts, "", "{\"ts\":1714550400}", LB_ERR_INVALID_PARAM,
			  "Parameter 'ts' must be an RFC 3339 timestamp.");
	expect_bind_error(ts, "", "{\"ts\":\"2024-05-01\"}", LB_ERR_INVALID_PARAM,
			  "Parameter 'ts' must be an RFC 3339 timestamp.");
}

static void
test_body_json(void)
{
	struct param_def j = def("j", PARAM_IN_BODY, PT_JSON);

	/* Any JSON value, re-serialised compactly; numbers keep their text. */
	expect_bound(j, "", "{\"j\": {\"a\" : [1, \"x\", null, true, 2.50], \"b\": {}}}",
		     "{\"a\":[1,\"x\",null,true,2.50],\"b\":{}}");
	expect_bound(j, "", "{\"j\":\"s\\u00e9\"}", "\"s\xc3\xa9\"");
	expect_bound(j, "", "{\"j\":false}", "false");
	expect_bound(j, "", "{\"j\":[]}", "[]");
	expect_bound(j, "", "{\"j\":null}", NULL);
	/* max_length counts the bytes sent to the database, after re-serialising. */
	j.max_length = 7;
	expect_bound(j, "", "{\"j\":[1, 2, 3]}", "[1,2,3]");
	expect_bind_error(j, "", "{\"j\":[1,2,3,4]}", LB_ERR_INVALID_PARAM,
			  "Parameter 'j' is longer than 7 bytes.");
}

void
register_params_tests(void)
{
	CU_pSuite s = CU_add_suite("params", NULL, NULL);

	CU_add_test(s, "int: strict decimal", test_int_strict_decimal);
	CU_add_test(s, "int: 32-bit range", test_int_is_32_bit);
	CU_add_test(s, "bigint: 64-bit range", test_bigint_is_64_bit);
	CU_add_test(s, "bounds: exact, past a double's precision", test_bounds_are_exact);
	CU_add_test(s, "int: min and max", test_int_min_max);
	CU_add_test(s, "numeric", test_numeric);
	CU_add_test(s, "bool", test_bool);
	CU_add_test(s, "uuid", test_uuid);
	CU_add_test(s, "timestamptz: RFC 3339", test_timestamptz);
	CU_add_test(s, "text: UTF-8 and max_length", test_text_utf8_and_max_length);
	CU_add_test(s, "json from text", test_json_text);
	CU_add_test(s, "query: decoding", test_query_decoding);
	CU_add_test(s, "query: undefined keys ignored", test_query_undefined_ignored);
	CU_add_test(s, "query: repeated parameter", test_query_repeated);
	CU_add_test(s, "query: malformed escape", test_query_malformed_escape);
	CU_add_test(s, "missing: default, required, NULL", test_missing_default_required);
	CU_add_test(s, "values in $n order", test_values_in_position_order);
	CU_add_test(s, "query: more parameters than the stack holds", test_many_query_params);
	CU_add_test(s, "body: must be a JSON object", test_body_must_be_object);
	CU_add_test(s, "body: only the top object's fields, nested names ignored", test_body_fields_only_at_the_top);
	CU_add_test(s, "body: ignored without body params", test_body_ignored_without_body_params);
	CU_add_test(s, "body: body_len is honoured", test_body_uses_body_len);
	CU_add_test(s, "body: NUL and depth", test_body_nul_and_depth);
	CU_add_test(s, "body: strings and structure", test_body_strings_and_structure);
	CU_add_test(s, "body: repeated field", test_body_repeated_field);
	CU_add_test(s, "body: missing, null, required", test_body_missing_null_required);
	CU_add_test(s, "body: text", test_body_text);
	CU_add_test(s, "body: int and bigint", test_body_integers);
	CU_add_test(s, "body: numeric", test_body_numeric);
	CU_add_test(s, "body: bool", test_body_bool);
	CU_add_test(s, "body: uuid and timestamptz", test_body_uuid_and_timestamp);
	CU_add_test(s, "body: json", test_body_json);
}
