/*
 * test_metrics.c - the metrics area of the shared segment: counters and
 * histograms rendered in the Prometheus text format with exact lines,
 * per-process gauges summed across processes (a forked child's entry
 * counted while it lives, reclaimed and counted as a restart once it dies
 * without detaching), the status and bucket mapping, the client check,
 * and the metrics.* configuration keys.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* By path: the build root holds autoconf's own config.h. */
#include "../../src/config.h"
#include "log.h"
#include "metrics.h"
#include "shm.h"
#include "unit.h"

static const char *const env_base[] = {
	"DATABRICKS_HOST=https://ws.example.com", "DATABRICKS_TOKEN=dapi-test",
	"LAKEBASE_ENDPOINT=projects/p/branches/b/endpoints/e", "PGHOST=pg.example.com", NULL
};

static const char *
test_getenv(const char *name)
{
	size_t n = strlen(name);

	for (const char *const *e = env_base; *e != NULL; e++) {
		if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
			return *e + n + 1;
	}
	return NULL;
}

static const char routes_json[] =
	"{\"routes\": ["
	"{\"method\": \"GET\", \"path\": \"/api/todos/{id}\", \"auth\": \"service-principal\","
	" \"sql\": \"SELECT :id::int AS id\", \"params\": {\"id\": {\"in\": \"path\", \"type\": \"int\"}},"
	" \"result\": \"one\"},"
	"{\"method\": \"GET\", \"path\": \"/api/me\", \"auth\": \"on-behalf-of-user\","
	" \"sql\": \"SELECT current_user\", \"result\": \"one\"}"
	"]}";

static char dir[64];
static char path[128];

static struct shm *
fresh_segment(void)
{
	struct lb_error err;
	struct shm *s;

	snprintf(dir, sizeof(dir), "/tmp/lb-metrics-XXXXXX");
	if (mkdtemp(dir) == NULL)
		return NULL;
	snprintf(path, sizeof(path), "%s/seg.shm", dir);
	s = shm_attach(path, 8, true, NULL, "credential_cache.path", &err);
	return s;
}

static void
drop_segment(struct shm *s)
{
	shm_detach(s);
	unlink(path);
	rmdir(dir);
}

static struct lb_config *
load(const char *json)
{
	struct config_problems p;
	struct lb_config *cfg = config_load_string(json, test_getenv, NULL, &p);

	config_problems_free(&p);
	return cfg;
}

/* The rendered text contains exactly this line. */
static int
has_line(const struct strbuf *text, const char *line)
{
	size_t n = strlen(line);

	for (const char *p = text->data; p != NULL && *p != '\0';) {
		const char *nl = strchr(p, '\n');
		size_t len = nl ? (size_t)(nl - p) : strlen(p);

		if (len == n && strncmp(p, line, n) == 0)
			return 1;
		p = nl ? nl + 1 : NULL;
	}
	return 0;
}

/* Has text the lakebase_requests_total line of (route, method, auth,
 * status) with count n? */
static int
has_requests(const struct strbuf *text, const char *route, const char *method, const char *auth,
	     const char *status, unsigned n)
{
	char line[512];

	snprintf(line, sizeof(line),
		 "lakebase_requests_total{route=\"%s\",method=\"%s\",auth=\"%s\",status=\"%s\"} %u",
		 route, method, auth, status, n);
	return has_line(text, line);
}

static void
test_counters_and_histograms(void)
{
	struct lb_config *cfg = load(routes_json);
	struct shm *s = fresh_segment();
	struct strbuf out;

	CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	metrics_attach(s, cfg);
	metrics_request(cfg, &cfg->routes[0], 200, 3000);
	metrics_request(cfg, &cfg->routes[0], 200, 30000);
	metrics_request(cfg, &cfg->routes[1], 403, 2000000);
	metrics_request(cfg, NULL, 404, 100);
	metrics_request(cfg, &cfg->routes[0], 418, 100);
	metrics_conn_opened();
	metrics_conn_opened();
	metrics_conn_closed("idle");
	metrics_conn_closed("no such reason");
	metrics_acquire_timeout();
	metrics_pool_error("42501");
	metrics_pool_error("42P01");
	metrics_pool_error("x");
	metrics_refresh_duration(40000);

	strbuf_init(&out);
	CU_ASSERT_EQUAL(metrics_render(cfg, &out), 0);
	CU_ASSERT(has_requests(&out, "/api/todos/{id}", "GET", "service-principal", "200", 2));
	CU_ASSERT(has_requests(&out, "/api/todos/{id}", "GET", "service-principal", "other", 1));
	CU_ASSERT(has_requests(&out, "/api/me", "GET", "on-behalf-of-user", "403", 1));
	CU_ASSERT(has_requests(&out, "(none)", "", "", "404", 1));
	CU_ASSERT(has_line(&out, "lakebase_query_duration_seconds_bucket{route=\"/api/todos/{id}\",method=\"GET\","
			   "auth=\"service-principal\",status=\"2xx\",le=\"0.005\"} 1"));
	CU_ASSERT(has_line(&out, "lakebase_query_duration_seconds_bucket{route=\"/api/todos/{id}\",method=\"GET\","
			   "auth=\"service-principal\",status=\"2xx\",le=\"0.05\"} 2"));
	CU_ASSERT(has_line(&out, "lakebase_query_duration_seconds_sum{route=\"/api/todos/{id}\",method=\"GET\","
			   "auth=\"service-principal\",status=\"2xx\"} 0.033000"));
	CU_ASSERT(has_line(&out, "lakebase_query_duration_seconds_bucket{route=\"/api/me\",method=\"GET\","
			   "auth=\"on-behalf-of-user\",status=\"4xx\",le=\"2.5\"} 1"));
	CU_ASSERT(has_line(&out, "lakebase_query_duration_seconds_bucket{route=\"/api/me\",method=\"GET\","
			   "auth=\"on-behalf-of-user\",status=\"4xx\",le=\"1\"} 0"));
	CU_ASSERT(has_line(&out, "lakebase_connections_opened_total 2"));
	CU_ASSERT(has_line(&out, "lakebase_connections_closed_total{reason=\"idle\"} 1"));
	CU_ASSERT(has_line(&out, "lakebase_connections_closed_total{reason=\"other\"} 1"));
	CU_ASSERT(has_line(&out, "lakebase_pool_acquire_timeouts_total 1"));
	CU_ASSERT(has_line(&out, "lakebase_pool_errors_total{class=\"42\"} 2"));
	CU_ASSERT(has_line(&out, "lakebase_credential_refresh_duration_seconds_bucket{le=\"0.05\"} 1"));
	CU_ASSERT(has_line(&out, "lakebase_credential_refresh_duration_seconds_count 1"));
	CU_ASSERT(has_line(&out, "lakebase_credential_mints_total{kind=\"sp\",result=\"ok\"} 0"));
	CU_ASSERT(has_line(&out, "lakebase_credential_cache_slots{state=\"free\"} 6"));
	CU_ASSERT(has_line(&out, "lakebase_credential_cache_slots{state=\"empty\"} 2"));
	CU_ASSERT(has_line(&out, "lakebase_workers 1"));
	strbuf_free(&out, false);
	metrics_detach();
	drop_segment(s);
	config_free(cfg);
}

/* The routes of routes_json the other way round, and a third. */
static const char routes_reordered_json[] =
	"{\"routes\": ["
	"{\"method\": \"POST\", \"path\": \"/api/new\", \"auth\": \"service-principal\","
	" \"sql\": \"SELECT 1 AS one\", \"result\": \"one\"},"
	"{\"method\": \"GET\", \"path\": \"/api/me\", \"auth\": \"on-behalf-of-user\","
	" \"sql\": \"SELECT current_user\", \"result\": \"one\"},"
	"{\"method\": \"GET\", \"path\": \"/api/todos/{id}\", \"auth\": \"service-principal\","
	" \"sql\": \"SELECT :id::int AS id\", \"params\": {\"id\": {\"in\": \"path\", \"type\": \"int\"}},"
	" \"result\": \"one\"}"
	"]}";

/* A reload that reorders and adds routes (a new process attaching with
 * the new config): each route's counts stay under its own labels, the new
 * route starts at none, and both configs count into the same series. */
static void
test_series_follow_the_route_across_configs(void)
{
	struct lb_config *before = load(routes_json), *after = load(routes_reordered_json);
	struct shm *s = fresh_segment();
	struct strbuf out;

	CU_ASSERT_PTR_NOT_NULL_FATAL(before);
	CU_ASSERT_PTR_NOT_NULL_FATAL(after);
	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	metrics_attach(s, before);
	metrics_request(before, &before->routes[0], 200, 1000);
	metrics_request(before, &before->routes[0], 200, 1000);
	metrics_request(before, &before->routes[1], 403, 1000);
	metrics_detach();
	metrics_attach(s, after);
	metrics_request(after, &after->routes[2], 200, 1000);	/* /api/todos/{id} */
	metrics_request(after, &after->routes[0], 201, 1000);	/* /api/new */

	strbuf_init(&out);
	CU_ASSERT_EQUAL(metrics_render(after, &out), 0);
	CU_ASSERT(has_requests(&out, "/api/todos/{id}", "GET", "service-principal", "200", 3));
	CU_ASSERT(has_requests(&out, "/api/me", "GET", "on-behalf-of-user", "403", 1));
	CU_ASSERT(has_requests(&out, "/api/new", "POST", "service-principal", "201", 1));
	CU_ASSERT_PTR_NULL(strstr(out.data, "route=\"/api/me\",method=\"GET\",auth=\"on-behalf-of-user\",status=\"200\""));
	CU_ASSERT_PTR_NULL(strstr(out.data, "/api/new\",method=\"POST\",auth=\"service-principal\",status=\"200\""));
	strbuf_free(&out, false);
	metrics_detach();
	drop_segment(s);
	config_free(before);
	config_free(after);
}

/* 130 routes: the first 127 have series of their own, the last three
 * count together under "(more)". */
static void
test_routes_beyond_the_series_share_more(void)
{
	struct lb_config *cfg;
	struct shm *s = fresh_segment();
	struct strbuf json, out;

	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	strbuf_init(&json);
	strbuf_append_str(&json, "{\"routes\": [");
	for (int i = 0; i < 130; i++)
		strbuf_appendf(&json, "%s{\"method\": \"GET\", \"path\": \"/r%d\", \"auth\": \"service-principal\","
			       " \"sql\": \"SELECT 1 AS one\", \"result\": \"one\"}", i ? "," : "", i);
	strbuf_append_str(&json, "]}");
	CU_ASSERT_FATAL(!strbuf_failed(&json));
	cfg = load(json.data);
	CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
	metrics_attach(s, cfg);
	metrics_request(cfg, &cfg->routes[126], 200, 1000);
	metrics_request(cfg, &cfg->routes[127], 200, 1000);
	metrics_request(cfg, &cfg->routes[129], 200, 1000);
	strbuf_init(&out);
	CU_ASSERT_EQUAL(metrics_render(cfg, &out), 0);
	CU_ASSERT(has_requests(&out, "/r126", "GET", "service-principal", "200", 1));
	CU_ASSERT(has_requests(&out, "(more)", "", "", "200", 2));
	CU_ASSERT_PTR_NULL(strstr(out.data, "route=\"/r127\""));
	strbuf_free(&out, false);
	strbuf_free(&json, false);
	metrics_detach();
	drop_segment(s);
	config_free(cfg);
}

static void
test_gauges_summed_across_processes(void)
{
	struct lb_config *cfg = load(routes_json);
	struct shm *s = fresh_segment();
	struct metrics_gauges mine = { { 1, 2 }, { 3, 4 }, 5, 6 };
	struct strbuf out;
	int to_child[2], from_child[2];
	char byte = 0;
	pid_t pid;

	CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	CU_ASSERT_FATAL(pipe(to_child) == 0 && pipe(from_child) == 0);
	pid = fork();
	if (pid == 0) {
		struct lb_error err;
		struct shm *cs = shm_attach(path, 8, false, NULL, "credential_cache.path", &err);
		struct metrics_gauges g = { { 10, 20 }, { 30, 40 }, 50, 60 };

		if (cs == NULL)
			_exit(1);
		metrics_attach(cs, cfg);
		metrics_publish(&g);
		(void)!write(from_child[1], "x", 1);
		(void)!read(to_child[0], &byte, 1);
		_exit(0);	/* dies without detaching: a crash, as far as metrics know */
	}
	CU_ASSERT_FATAL(pid > 0);
	CU_ASSERT_EQUAL(read(from_child[0], &byte, 1), 1);
	metrics_attach(s, cfg);
	metrics_publish(&mine);

	strbuf_init(&out);
	CU_ASSERT_EQUAL(metrics_render(cfg, &out), 0);
	CU_ASSERT(has_line(&out, "lakebase_pool_connections{state=\"idle\",auth=\"service-principal\"} 11"));
	CU_ASSERT(has_line(&out, "lakebase_pool_connections{state=\"busy\",auth=\"on-behalf-of-user\"} 44"));
	CU_ASSERT(has_line(&out, "lakebase_pool_waiting 55"));
	CU_ASSERT(has_line(&out, "lakebase_user_pools 66"));
	CU_ASSERT(has_line(&out, "lakebase_workers 2"));
	CU_ASSERT(has_line(&out, "lakebase_worker_restarts_total 0"));

	(void)!write(to_child[1], "x", 1);
	waitpid(pid, NULL, 0);
	strbuf_reset(&out);
	CU_ASSERT_EQUAL(metrics_render(cfg, &out), 0);
	CU_ASSERT(has_line(&out, "lakebase_pool_connections{state=\"idle\",auth=\"service-principal\"} 1"));
	CU_ASSERT(has_line(&out, "lakebase_workers 1"));
	CU_ASSERT(has_line(&out, "lakebase_worker_restarts_total 1"));
	strbuf_free(&out, false);
	close(to_child[0]);
	close(to_child[1]);
	close(from_child[0]);
	close(from_child[1]);
	metrics_detach();
	drop_segment(s);
	config_free(cfg);
}

static void
test_mappings(void)
{
	CU_ASSERT_EQUAL(metrics_status_index(200), 0);
	CU_ASSERT_EQUAL(metrics_status_index(504), SHM_METRIC_STATUSES - 2);
	CU_ASSERT_EQUAL(metrics_status_index(299), SHM_METRIC_STATUSES - 1);
	CU_ASSERT_EQUAL(metrics_bucket(0), 0);
	CU_ASSERT_EQUAL(metrics_bucket(5000), 0);
	CU_ASSERT_EQUAL(metrics_bucket(5001), 1);
	CU_ASSERT_EQUAL(metrics_bucket(10000000), SHM_METRIC_BUCKETS - 2);
	CU_ASSERT_EQUAL(metrics_bucket(10000001), SHM_METRIC_BUCKETS - 1);
}

static void
test_client_allowed(void)
{
	CU_ASSERT_TRUE(metrics_client_allowed("local", NULL));
	CU_ASSERT_TRUE(metrics_client_allowed("local", ""));
	CU_ASSERT_TRUE(metrics_client_allowed("local", "127.0.0.1"));
	CU_ASSERT_TRUE(metrics_client_allowed("local", "::1"));
	CU_ASSERT_TRUE(metrics_client_allowed("local", "::ffff:127.0.0.1"));
	CU_ASSERT_FALSE(metrics_client_allowed("local", "10.0.0.7"));
	CU_ASSERT_FALSE(metrics_client_allowed("local", "128.0.0.1"));
	CU_ASSERT_TRUE(metrics_client_allowed("any", "10.0.0.7"));
}

static void
test_not_attached_is_inert(void)
{
	struct lb_config *cfg = load("{}");
	struct strbuf out;

	CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
	metrics_conn_opened();
	metrics_request(cfg, NULL, 200, 1);
	strbuf_init(&out);
	CU_ASSERT_EQUAL(metrics_render(cfg, &out), -1);
	strbuf_free(&out, false);
	config_free(cfg);
}

static void
test_config_keys(void)
{
	struct lb_config *cfg = load("{}");
	struct config_problems p;

	CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
	CU_ASSERT_TRUE(cfg->metrics_enabled);
	CU_ASSERT_STRING_EQUAL(cfg->metrics_path, "/metrics");
	CU_ASSERT_STRING_EQUAL(cfg->metrics_allow, "local");
	config_free(cfg);

	cfg = load("{\"metrics\": {\"enabled\": false, \"path\": \"/_m\", \"allow\": \"any\"}}");
	CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
	CU_ASSERT_FALSE(cfg->metrics_enabled);
	CU_ASSERT_STRING_EQUAL(cfg->metrics_path, "/_m");
	CU_ASSERT_STRING_EQUAL(cfg->metrics_allow, "any");
	config_free(cfg);

	cfg = config_load_string("{\"metrics\": {\"path\": \"/healthz\"}}", test_getenv, NULL, &p);
	CU_ASSERT_PTR_NULL(cfg);
	CU_ASSERT_EQUAL(p.count, 1);
	if (p.count == 1) {
		CU_ASSERT_STRING_EQUAL(p.items[0].path, "metrics.path");
		CU_ASSERT_STRING_EQUAL(p.items[0].message, "must differ from the health paths");
	}
	config_problems_free(&p);
	config_free(cfg);
}

/* The --check-config line of `path`, without the padding. */
static void
expect_effective(const char *text, const char *key, const char *value_and_source)
{
	char want[256];
	const char *p = strstr(text, key);
	size_t n;

	snprintf(want, sizeof(want), "%s", value_and_source);
	while (p != NULL && (p[-1] != ' ' || p[strlen(key)] != ' '))
		p = strstr(p + 1, path);
	CU_ASSERT_PTR_NOT_NULL_FATAL(p);
	p += strlen(key);
	p += strspn(p, " ");
	n = strcspn(p, "\n");
	CU_ASSERT_EQUAL(n, strlen(want));
	CU_ASSERT_NSTRING_EQUAL(p, want, n);
}

static void
test_effective_settings(void)
{
	struct lb_config *cfg = load("{\"threads\": 4, \"workspace\": {\"client_id\": \"cid\", \"client_secret\": \"s3cr3t-value\"},"
				     " \"metrics\": {\"allow\": \"any\"}}");
	char *text = NULL;
	size_t len = 0;
	FILE *out;

	CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
	config_note_source(cfg, "listen", "command line");
	out = open_memstream(&text, &len);
	CU_ASSERT_PTR_NOT_NULL_FATAL(out);
	config_print_effective(cfg, out);
	fclose(out);
	expect_effective(text, "threads", "4  (file)");
	expect_effective(text, "metrics.allow", "\"any\"  (file)");
	expect_effective(text, "metrics.path", "\"/metrics\"  (default)");
	expect_effective(text, "workspace.host", "\"https://ws.example.com\"  (env DATABRICKS_HOST)");
	expect_effective(text, "workspace.client_secret", "********  (file)");
	expect_effective(text, "workspace.client_id", "\"cid\"  (file)");
	expect_effective(text, "listen", "(unset)  (command line)");
	expect_effective(text, "log_user", "false  (default)");
	CU_ASSERT_PTR_NULL(strstr(text, "s3cr3t"));
	CU_ASSERT_PTR_NULL(strstr(text, "dapi-test"));
	free(text);
	config_free(cfg);
}

void
register_metrics_tests(void)
{
	CU_pSuite s = CU_add_suite("metrics", NULL, NULL);

	CU_add_test(s, "counters and histograms, exact lines", test_counters_and_histograms);
	CU_add_test(s, "series follow the route across configs (reorder, add)", test_series_follow_the_route_across_configs);
	CU_add_test(s, "routes beyond 127 share the (more) series", test_routes_beyond_the_series_share_more);
	CU_add_test(s, "gauges summed across processes, dead ones reclaimed", test_gauges_summed_across_processes);
	CU_add_test(s, "status and bucket mapping", test_mappings);
	CU_add_test(s, "loopback and unix clients only by default", test_client_allowed);
	CU_add_test(s, "not attached: inert", test_not_attached_is_inert);
	CU_add_test(s, "metrics.* configuration keys", test_config_keys);
	CU_add_test(s, "--check-config: effective values and sources, secrets masked", test_effective_settings);
}
