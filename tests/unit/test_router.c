/*
 * test_router.c - route matching and percent-decoding, on routes built by
 * hand (no config parsing involved).
 */
#include <stdlib.h>
#include <string.h>

#include "router.h"
#include "strbuf.h"
#include "textfmt.h"
#include "unit.h"

/* Templates, as config.c compiles them: one path_segment per segment. */
static struct path_segment seg_todos[] = { { "api", -1 }, { "todos", -1 } };
static struct path_segment seg_todo_id[] = { { "api", -1 }, { "todos", -1 }, { NULL, 0 } };
static struct path_segment seg_kind_id[] = { { "api", -1 }, { NULL, 0 }, { NULL, 1 } };
/* /api/users/{uid}/todos/{tid}: params are in $n order, not path order. */
static struct path_segment seg_user_todo[] = {
	{ "api", -1 }, { "users", -1 }, { NULL, 2 }, { "todos", -1 }, { NULL, 1 }
};

static struct param_def params_id[] = { { .name = "id", .in = PARAM_IN_PATH, .max_length = -1 } };
static struct param_def params_kind_id[] = {
	{ .name = "kind", .in = PARAM_IN_PATH, .max_length = -1 },
	{ .name = "id", .in = PARAM_IN_PATH, .max_length = -1 },
};
static struct param_def params_user_todo[] = {
	{ .name = "q", .in = PARAM_IN_QUERY, .max_length = -1 },
	{ .name = "tid", .in = PARAM_IN_PATH, .max_length = -1 },
	{ .name = "uid", .in = PARAM_IN_PATH, .max_length = -1 },
};

#define ROUTE(m, p, segs, prm, np) \
	{ .method = m, .path = p, .segments = segs, .nsegments = sizeof(segs) / sizeof(segs[0]), \
	  .params = prm, .nparams = np }

static struct route routes[] = {
	ROUTE("GET", "/api/todos", seg_todos, NULL, 0),                        /* 0 */
	ROUTE("POST", "/api/todos", seg_todos, NULL, 0),                       /* 1 */
	ROUTE("GET", "/api/todos/{id}", seg_todo_id, params_id, 1),            /* 2 */
	ROUTE("DELETE", "/api/todos/{id}", seg_todo_id, params_id, 1),         /* 3 */
	{ .method = "GET", .path = "/", .segments = NULL, .nsegments = 0 },    /* 4 */
	ROUTE("GET", "/api/users/{uid}/todos/{tid}", seg_user_todo, params_user_todo, 3), /* 5 */
	ROUTE("GET", "/api/{kind}/{id}", seg_kind_id, params_kind_id, 2),      /* 6 */
};

static struct lb_config cfg = { .routes = routes, .nroutes = sizeof(routes) / sizeof(routes[0]) };

/* Matches and returns the index of the winning route, or -1. */
static int
match_index(const char *method, const char *path)
{
	struct route_match m;
	int idx = -1;

	if (router_match(&cfg, method, path, &m, NULL) == ROUTER_MATCH)
		idx = (int)(m.route - routes);
	else
		CU_ASSERT_PTR_NULL(m.route);
	route_match_free(&m);
	return idx;
}

/* The value captured for parameter `param` when path matches with GET. */
static char *
captured(const char *path, size_t param)
{
	struct route_match m;
	char *v = NULL;

	if (router_match(&cfg, "GET", path, &m, NULL) == ROUTER_MATCH &&
	    param < m.route->nparams && m.path_values[param] != NULL)
		v = strdup(m.path_values[param]);
	route_match_free(&m);
	return v;
}

static enum router_status
status_of(const char *method, const char *path)
{
	struct route_match m;
	enum router_status st = router_match(&cfg, method, path, &m, NULL);

	route_match_free(&m);
	return st;
}

static void
test_literal_routes(void)
{
	CU_ASSERT_EQUAL(match_index("GET", "/api/todos"), 0);
	CU_ASSERT_EQUAL(match_index("POST", "/api/todos"), 1);
	CU_ASSERT_EQUAL(match_index("GET", "/"), 4);
	CU_ASSERT_EQUAL(status_of("GET", "/api"), ROUTER_NOT_FOUND);
	CU_ASSERT_EQUAL(status_of("GET", "/api/todos/1/x"), ROUTER_NOT_FOUND);
	CU_ASSERT_EQUAL(status_of("GET", "/nope"), ROUTER_NOT_FOUND);
}

static void
test_literals_are_byte_exact(void)
{
	CU_ASSERT_EQUAL(status_of("GET", "/API/todos"), ROUTER_NOT_FOUND);
	CU_ASSERT_EQUAL(status_of("GET", "/api/todo"), ROUTER_NOT_FOUND);
	CU_ASSERT_EQUAL(status_of("GET", "/api/todosx"), ROUTER_NOT_FOUND);
	/* The literal is compared to the decoded segment. */
	CU_ASSERT_EQUAL(match_index("GET", "/api/t%6Fdos"), 0);
	CU_ASSERT_EQUAL(match_index("GET", "/%61pi/todos"), 0);
}

static void
test_trailing_slash_ignored(void)
{
	CU_ASSERT_EQUAL(match_index("GET", "/api/todos/"), 0);
	CU_ASSERT_EQUAL(match_index("GET", "/api/todos/7/"), 2);
	CU_ASSERT_EQUAL(status_of("GET", "/api/todos//"), ROUTER_NOT_FOUND);
}

static void
test_empty_segments_refused(void)
{
	CU_ASSERT_EQUAL(status_of("GET", "/api//todos"), ROUTER_NOT_FOUND);
	CU_ASSERT_EQUAL(status_of("GET", "//api/todos"), ROUTER_NOT_FOUND);
	CU_ASSERT_EQUAL(status_of("GET", "//"), ROUTER_NOT_FOUND);
}

static void
test_dot_segments_refused(void)
{
	CU_ASSERT_EQUAL(status_of("GET", "/api/./todos"), ROUTER_NOT_FOUND);
	CU_ASSERT_EQUAL(status_of("GET", "/api/x/../todos"), ROUTER_NOT_FOUND);
	/* A dot segment is never captured as a parameter value ... */
	CU_ASSERT_EQUAL(status_of("GET", "/api/todos/.."), ROUTER_NOT_FOUND);
	CU_ASSERT_EQUAL(status_of("GET", "/api/todos/."), ROUTER_NOT_FOUND);
	/* ... encoded or not. */
	CU_ASSERT_EQUAL(status_of("GET", "/api/todos/%2e%2e"), ROUTER_NOT_FOUND);
	CU_ASSERT_EQUAL(status_of("GET", "/api/todos/%2E"), ROUTER_NOT_FOUND);
	CU_ASSERT_EQUAL(status_of("GET", "/api/.%2e/todos"), ROUTER_NOT_FOUND);
	/* Dots inside a segment are ordinary. */
	CU_ASSERT_EQUAL(match_index("GET", "/api/todos/..."), 2);
	CU_ASSERT_EQUAL(match_index("GET", "/api/todos/a.b"), 2);
}

static void
test_malformed_paths_refused(void)
{
	CU_ASSERT_EQUAL(status_of("GET", "/api/todos/%zz"), ROUTER_NOT_FOUND);
	CU_ASSERT_EQUAL(status_of("GET", "/api/todos/%4"), ROUTER_NOT_FOUND);
	CU_ASSERT_EQUAL(status_of("GET", "/api/todos/%"), ROUTER_NOT_FOUND);
	CU_ASSERT_EQUAL(status_of("GET", "/api/todos/a%00b"), ROUTER_NOT_FOUND);
	CU_ASSERT_EQUAL(status_of("GET", ""), ROUTER_NOT_FOUND);
	CU_ASSERT_EQUAL(status_of("GET", "api/todos"), ROUTER_NOT_FOUND);
	CU_ASSERT_EQUAL(status_of("GET", NULL), ROUTER_NOT_FOUND);
}

static void
test_params_captured_decoded_once(void)
{
	char *v;

	v = captured("/api/todos/42", 0);
	CU_ASSERT_STRING_EQUAL(v, "42");
	free(v);
	v = captured("/api/todos/a%20b", 0);
	CU_ASSERT_STRING_EQUAL(v, "a b");
	free(v);
	/* '+' means '+' in a path; %2541 decodes once, to "%41". */
	v = captured("/api/todos/a+b", 0);
	CU_ASSERT_STRING_EQUAL(v, "a+b");
	free(v);
	v = captured("/api/todos/%2541", 0);
	CU_ASSERT_STRING_EQUAL(v, "%41");
	free(v);
	/* An encoded slash stays inside its segment. */
	v = captured("/api/todos/a%2Fb", 0);
	CU_ASSERT_STRING_EQUAL(v, "a/b");
	free(v);
	v = captured("/api/todos/%C3%A9t%C3%A9", 0);
	CU_ASSERT_STRING_EQUAL(v, "\xc3\xa9t\xc3\xa9");
	free(v);
}

/* Paths past the router's inline room (256 bytes, 16 segments) match and
 * capture the same. */
static void
test_long_paths(void)
{
	char path[1200], *v;
	struct strbuf many;

	memcpy(path, "/api/todos/", 11);
	memset(path + 11, 'x', 1000);
	path[1011] = '\0';
	v = captured(path, 0);
	CU_ASSERT_PTR_NOT_NULL_FATAL(v);
	CU_ASSERT_EQUAL(strlen(v), 1000);
	CU_ASSERT_EQUAL(strspn(v, "x"), 1000);
	free(v);
	strbuf_init(&many);
	strbuf_append_str(&many, "/api/todos");
	for (int i = 0; i < 20; i++)
		strbuf_append_str(&many, "/s");
	CU_ASSERT_EQUAL(status_of("GET", many.data), ROUTER_NOT_FOUND);
	strbuf_free(&many, false);
	CU_ASSERT_EQUAL(status_of("GET", "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t/u/%zz"), ROUTER_NOT_FOUND);
}

static void
test_params_land_at_their_index(void)
{
	struct route_match m;

	CU_ASSERT_EQUAL_FATAL(router_match(&cfg, "GET", "/api/users/u1/todos/t2", &m, NULL),
			      ROUTER_MATCH);
	CU_ASSERT_PTR_EQUAL(m.route, &routes[5]);
	CU_ASSERT_PTR_NULL(m.path_values[0]);        /* q is a query parameter */
	CU_ASSERT_STRING_EQUAL(m.path_values[1], "t2");
	CU_ASSERT_STRING_EQUAL(m.path_values[2], "u1");
	route_match_free(&m);
	CU_ASSERT_PTR_NULL(m.path_values);
	CU_ASSERT_PTR_NULL(m.route);
}

static void
test_first_route_in_config_order_wins(void)
{
	char *kind, *id;

	/* /api/todos/5 fits both {id} (route 2) and {kind}/{id} (route 6). */
	CU_ASSERT_EQUAL(match_index("GET", "/api/todos/5"), 2);
	CU_ASSERT_EQUAL(match_index("GET", "/api/things/5"), 6);
	kind = captured("/api/things/5", 0);
	id = captured("/api/things/5", 1);
	CU_ASSERT_STRING_EQUAL(kind, "things");
	CU_ASSERT_STRING_EQUAL(id, "5");
	free(kind);
	free(id);
}

static void
test_method_not_allowed_lists_methods(void)
{
	struct route_match m;
	struct strbuf allow;

	strbuf_init(&allow);
	CU_ASSERT_EQUAL(router_match(&cfg, "PATCH", "/api/todos", &m, &allow),
			ROUTER_METHOD_NOT_ALLOWED);
	CU_ASSERT_PTR_NULL(m.route);
	CU_ASSERT_PTR_NULL(m.path_values);
	CU_ASSERT_STRING_EQUAL(allow.data, "GET, POST");
	route_match_free(&m);

	/* Distinct methods in config order: route 6 repeats GET. */
	CU_ASSERT_EQUAL(router_match(&cfg, "PUT", "/api/todos/5/", &m, &allow),
			ROUTER_METHOD_NOT_ALLOWED);
	CU_ASSERT_STRING_EQUAL(allow.data, "GET, DELETE");
	route_match_free(&m);

	/* HEAD is not special, and methods are case-sensitive. */
	CU_ASSERT_EQUAL(router_match(&cfg, "HEAD", "/api/todos", &m, &allow),
			ROUTER_METHOD_NOT_ALLOWED);
	CU_ASSERT_STRING_EQUAL(allow.data, "GET, POST");
	CU_ASSERT_EQUAL(status_of("get", "/api/todos"), ROUTER_METHOD_NOT_ALLOWED);

	/* allow may be NULL. */
	CU_ASSERT_EQUAL(status_of("PATCH", "/api/todos"), ROUTER_METHOD_NOT_ALLOWED);
	strbuf_free(&allow, false);
}

static void
test_url_decode(void)
{
	char *s;

	s = url_decode("a+b%20c", 7, 1);
	CU_ASSERT_STRING_EQUAL(s, "a b c");
	free(s);
	s = url_decode("a+b%20c", 7, 0);
	CU_ASSERT_STRING_EQUAL(s, "a+b c");
	free(s);
	s = url_decode("%41%4a%4A%7e", 12, 0);
	CU_ASSERT_STRING_EQUAL(s, "AJJ~");
	free(s);
	s = url_decode("abc", 2, 0);            /* only len bytes are read */
	CU_ASSERT_STRING_EQUAL(s, "ab");
	free(s);
	s = url_decode("", 0, 0);
	CU_ASSERT_STRING_EQUAL(s, "");
	free(s);

	CU_ASSERT_PTR_NULL(url_decode("%", 1, 0));
	CU_ASSERT_PTR_NULL(url_decode("%4", 2, 0));
	CU_ASSERT_PTR_NULL(url_decode("%41%", 4, 0));
	CU_ASSERT_PTR_NULL(url_decode("%41", 2, 0));      /* escape cut by len */
	CU_ASSERT_PTR_NULL(url_decode("%g1", 3, 0));
	CU_ASSERT_PTR_NULL(url_decode("%1g", 3, 0));
	CU_ASSERT_PTR_NULL(url_decode("a%00b", 5, 0));
	CU_ASSERT_PTR_NULL(url_decode("a\0b", 3, 0));
}

void
register_router_tests(void)
{
	CU_pSuite s = CU_add_suite("router", NULL, NULL);

	CU_add_test(s, "literal routes", test_literal_routes);
	CU_add_test(s, "literals are byte-exact after decoding", test_literals_are_byte_exact);
	CU_add_test(s, "trailing slash ignored", test_trailing_slash_ignored);
	CU_add_test(s, "empty segments refused", test_empty_segments_refused);
	CU_add_test(s, "dot segments refused", test_dot_segments_refused);
	CU_add_test(s, "malformed paths refused", test_malformed_paths_refused);
	CU_add_test(s, "params captured, decoded once", test_params_captured_decoded_once);
	CU_add_test(s, "params land at their index", test_params_land_at_their_index);
	CU_add_test(s, "long paths: past the inline room", test_long_paths);
	CU_add_test(s, "first route in config order wins", test_first_route_in_config_order_wins);
	CU_add_test(s, "405 lists the allowed methods", test_method_not_allowed_lists_methods);
	CU_add_test(s, "url_decode", test_url_decode);
}
