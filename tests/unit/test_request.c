/*
 * test_request.c - the request adapter's pure parts: header lookup over the
 * CGI-style parameters (first value, repeat count, letter case of the HTTP
 * name) and request ids (format, uniqueness within a thread, across
 * threads, and in a forked child).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "request.h"
#include "unit.h"

/* One header by its HTTP name: value and count after one lookup. */
static const char *
header(const struct http_request *req, const char *name, int *count)
{
	struct header_lookup h = { .name = name };

	request_headers(req, &h, 1);
	*count = h.count;
	return h.value;
}

static void
test_header_first_value_and_count(void)
{
	const char *env[] = { "HTTP_X_FORWARDED_EMAIL=a@example.com", "HTTP_X_FORWARDED_EMAILX=no",
			      "REMOTE_ADDR=127.0.0.1", "HTTP_X_FORWARDED_EMAIL=b@example.com", NULL };
	struct http_request req = { .params = (char **)env };
	int count = -1;

	CU_ASSERT_STRING_EQUAL(header(&req, "x-forwarded-email", &count), "a@example.com");
	CU_ASSERT_EQUAL(count, 2);
	CU_ASSERT_STRING_EQUAL(header(&req, "X-Forwarded-Emailx", &count), "no");
	CU_ASSERT_EQUAL(count, 1);
	CU_ASSERT_PTR_NULL(header(&req, "X-Forwarded-Access-Token", &count));
	CU_ASSERT_EQUAL(count, 0);
	CU_ASSERT_STRING_EQUAL(request_param(&req, "REMOTE_ADDR"), "127.0.0.1");
	CU_ASSERT_PTR_NULL(request_param(&req, "REMOTE"));
	req.params = NULL;
	CU_ASSERT_PTR_NULL(header(&req, "X-Forwarded-Email", &count));
	CU_ASSERT_EQUAL(count, 0);
}

/* Several headers in one pass: each its own first value and count; a
 * parameter counts for the first name it is. */
static void
test_headers_in_one_pass(void)
{
	const char *env[] = { "HTTP_HOST=h", "HTTP_X_FORWARDED_ACCESS_TOKEN=t1", "HTTPS=on",
			      "HTTP_X_FORWARDED_EMAIL=a@example.com", "HTTP_=x", "HTTP",
			      "HTTP_X_FORWARDED_ACCESS_TOKEN=t2", NULL };
	struct http_request req = { .params = (char **)env };
	struct header_lookup h[3] = { { .name = "X-Forwarded-Email" }, { .name = "x-forwarded-access-token" },
				      { .name = "X-Missing" } };

	request_headers(&req, h, 3);
	CU_ASSERT_STRING_EQUAL(h[0].value, "a@example.com");
	CU_ASSERT_EQUAL(h[0].count, 1);
	CU_ASSERT_STRING_EQUAL(h[1].value, "t1");
	CU_ASSERT_EQUAL(h[1].count, 2);
	CU_ASSERT_PTR_NULL(h[2].value);
	CU_ASSERT_EQUAL(h[2].count, 0);
	/* An empty name matches nothing, not "HTTP_=". */
	h[0].name = "";
	request_headers(&req, h, 1);
	CU_ASSERT_PTR_NULL(h[0].value);
	CU_ASSERT_EQUAL(h[0].count, 0);
}

static bool
is_request_id(const char *id)
{
	return strlen(id) == 32 && strspn(id, "0123456789abcdef") == 32;
}

/* request_from_cgi over a fake environment and body. */
static int
fill(const char *const *env, const char *body, struct http_request *req, struct lb_error *err)
{
	FILE *in = fmemopen((void *)body, strlen(body) + 1, "r");   /* +1: fmemopen wants a size > 0 */
	int rc;

	lb_error_clear(err);
	rc = request_from_cgi((char **)env, in, 100, req, err);
	if (in != NULL)
		fclose(in);
	return rc;
}

static void
test_fill_from_params(void)
{
	const char *env[] = { "HTTP_HOST=x", "REQUEST_METHOD=POST", "QUERY_STRING=a=1&b=2",
			      "REQUEST_URI=/api/todos?a=1&b=2", "CONTENT_TYPE=application/json",
			      "CONTENT_LENGTH=2", "HTTP_X_REQUEST_ID=rid-1", "REQUEST_METHOD=GET",
			      "HTTP_X_REQUEST_IDS=no", NULL };
	struct http_request req;
	struct lb_error err;

	CU_ASSERT_EQUAL_FATAL(fill(env, "{}", &req, &err), 0);
	CU_ASSERT_STRING_EQUAL(req.method, "POST");          /* the first occurrence wins */
	CU_ASSERT_STRING_EQUAL(req.query, "a=1&b=2");
	CU_ASSERT_STRING_EQUAL(req.path, "/api/todos");
	CU_ASSERT_STRING_EQUAL(req.content_type, "application/json");
	CU_ASSERT_EQUAL(req.content_length, 2);
	CU_ASSERT_EQUAL(req.body_len, 2);
	CU_ASSERT_STRING_EQUAL(req.request_id, "rid-1");
	request_free(&req);
}

static void
test_fill_defaults_and_fallbacks(void)
{
	const char *env[] = { "SCRIPT_NAME=/api", "PATH_INFO=/todos", "CONTENT_TYPE=",
			      "HTTP_X_REQUEST_ID=has space", NULL };
	const char *bad[] = { "REQUEST_URI=/x", "CONTENT_LENGTH=12a", NULL };
	const char *big[] = { "REQUEST_URI=/x", "CONTENT_LENGTH=101", NULL };
	struct http_request req;
	struct lb_error err;

	CU_ASSERT_EQUAL_FATAL(fill(env, "", &req, &err), 0);
	CU_ASSERT_STRING_EQUAL(req.method, "GET");
	CU_ASSERT_STRING_EQUAL(req.query, "");
	CU_ASSERT_STRING_EQUAL(req.path, "/api/todos");      /* SCRIPT_NAME + PATH_INFO */
	CU_ASSERT_PTR_NULL(req.content_type);                 /* empty counts as absent */
	CU_ASSERT_EQUAL(req.content_length, -1);
	CU_ASSERT_TRUE(is_request_id(req.request_id));  /* not sane: generated */
	request_free(&req);
	CU_ASSERT_EQUAL(fill(bad, "", &req, &err), -1);
	CU_ASSERT_EQUAL(err.code, LB_ERR_BAD_REQUEST);
	request_free(&req);
	CU_ASSERT_EQUAL(fill(big, "", &req, &err), -1);
	CU_ASSERT_EQUAL(err.code, LB_ERR_PAYLOAD_TOO_LARGE);
	request_free(&req);
}

/* request_from_cgi over a body of n bytes 'x' without a Content-Length. */
static int
fill_unsized(size_t n, long max_body, struct http_request *req, struct lb_error *err)
{
	const char *env[] = { "REQUEST_METHOD=POST", "REQUEST_URI=/x", "CONTENT_LENGTH=", NULL };
	char *body = malloc(n);
	FILE *in;
	int rc = -1;

	CU_ASSERT_PTR_NOT_NULL_FATAL(body);
	memset(body, 'x', n);
	in = fmemopen(body, n, "r");
	CU_ASSERT_PTR_NOT_NULL_FATAL(in);
	lb_error_clear(err);
	rc = request_from_cgi((char **)env, in, max_body, req, err);
	fclose(in);
	free(body);
	return rc;
}

/* Without a length the body grows as it arrives (from 4 KiB), up to the
 * limit inclusive; one byte more is 413. */
static void
test_fill_body_without_a_length(void)
{
	struct http_request req;
	struct lb_error err;

	CU_ASSERT_EQUAL_FATAL(fill_unsized(70000, 70000, &req, &err), 0);
	CU_ASSERT_EQUAL(req.content_length, -1);
	CU_ASSERT_EQUAL(req.body_len, 70000);
	CU_ASSERT_EQUAL(req.body[0], 'x');
	CU_ASSERT_EQUAL(req.body[69999], 'x');
	CU_ASSERT_EQUAL(req.body[70000], '\0');
	request_free(&req);
	CU_ASSERT_EQUAL(fill_unsized(70001, 70000, &req, &err), -1);
	CU_ASSERT_EQUAL(err.code, LB_ERR_PAYLOAD_TOO_LARGE);
	request_free(&req);
	CU_ASSERT_EQUAL_FATAL(fill_unsized(4096, 1 << 30, &req, &err), 0);
	CU_ASSERT_EQUAL(req.body_len, 4096);
	request_free(&req);
}

static int
compare_ids(const void *a, const void *b)
{
	return strcmp(a, b);
}

#define IDS 20000
#define ALL_IDS (3 * IDS + 2)   /* three threads, then a child's and ours after the fork */
typedef char request_id_t[REQUEST_ID_MAX + 1];

static void *
generate_ids(void *arg)
{
	request_id_t *ids = arg;

	for (int i = 0; i < IDS; i++)
		request_generate_id(ids[i]);
	return NULL;
}

static void
test_request_ids_unique(void)
{
	request_id_t *ids = calloc(ALL_IDS, sizeof(request_id_t));
	pthread_t t1, t2;
	int fds[2], status, dup = 0, bad = 0;
	pid_t child;

	CU_ASSERT_PTR_NOT_NULL_FATAL(ids);
	generate_ids(ids);
	CU_ASSERT_FATAL(pthread_create(&t1, NULL, generate_ids, ids + IDS) == 0);
	CU_ASSERT_FATAL(pthread_create(&t2, NULL, generate_ids, ids + 2 * IDS) == 0);
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	/* Slot 3 * IDS: what a forked child generates first (this thread's
	 * state is copied into it: it must draw a new prefix). */
	CU_ASSERT_FATAL(pipe(fds) == 0);
	child = fork();
	CU_ASSERT_FATAL(child >= 0);
	if (child == 0) {
		request_id_t id;

		request_generate_id(id);
		_exit(write(fds[1], id, sizeof(id)) == (ssize_t)sizeof(id) ? 0 : 1);
	}
	close(fds[1]);
	CU_ASSERT_EQUAL(read(fds[0], ids[3 * IDS], sizeof(request_id_t)), (ssize_t)sizeof(request_id_t));
	close(fds[0]);
	CU_ASSERT_EQUAL(waitpid(child, &status, 0), child);
	ids[3 * IDS][REQUEST_ID_MAX] = '\0';
	/* ...and this thread's next id is the one the child would have made. */
	request_generate_id(ids[3 * IDS + 1]);
	for (int i = 0; i < ALL_IDS; i++)
		bad += !is_request_id(ids[i]);
	CU_ASSERT_EQUAL(bad, 0);
	qsort(ids, ALL_IDS, sizeof(request_id_t), compare_ids);
	for (int i = 1; i < ALL_IDS; i++)
		dup += strcmp(ids[i - 1], ids[i]) == 0;
	CU_ASSERT_EQUAL(dup, 0);
	free(ids);
}

void
register_request_tests(void)
{
	CU_pSuite s = CU_add_suite("request", NULL, NULL);

	CU_add_test(s, "headers: first value, repeat count, case of the name", test_header_first_value_and_count);
	CU_add_test(s, "headers: several in one pass", test_headers_in_one_pass);
	CU_add_test(s, "fill: every parameter, the first occurrence wins", test_fill_from_params);
	CU_add_test(s, "fill: defaults, SCRIPT_NAME + PATH_INFO, bad lengths", test_fill_defaults_and_fallbacks);
	CU_add_test(s, "fill: a body without a length, up to the limit inclusive", test_fill_body_without_a_length);
	CU_add_test(s, "request ids: 32 hex, unique per thread, across threads, after fork",
		    test_request_ids_unique);
}
