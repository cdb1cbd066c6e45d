/*
 * test_config.c - configuration loading: defaults, environment precedence,
 * the workspace host rules, schema errors with their JSON paths, and route
 * compilation (path segments, :name -> $n, parameter defaults).
 *
 * Test JSON is written with ` in place of " to stay readable; load()
 * turns it back. Problems are compared as exact "path: message" lines.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <yajl/yajl_gen.h>

/* By path: the build root holds autoconf's own config.h, which a plain
 * "config.h" from this directory would find first. */
#include "../../src/config.h"
#include "strbuf.h"
#include "unit.h"

static const char *const *current_env;

static const char *
fake_getenv(const char *name)
{
	size_t n = strlen(name);

	for (const char *const *e = current_env; e != NULL && *e != NULL; e++) {
		if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
			return *e + n + 1;
	}
	return NULL;
}

/* The connection settings every valid config needs, from the environment. */
static const char *const env_ok[] = {
	"DATABRICKS_HOST=https://ws.example.com",
	"DATABRICKS_TOKEN=dapi-test",
	"LAKEBASE_ENDPOINT=projects/p/branches/b/endpoints/e",
	"PGHOST=pg.example.com",
	NULL
};

static struct lb_config *
load(const char *src, const char *const *env, struct config_problems *p)
{
	struct lb_config *cfg;
	char *text = NULL;

	if (src != NULL) {
		text = strdup(src);
		for (char *c = text; *c; c++) {
			if (*c == '`')
				*c = '"';
		}
	}
	current_env = env;
	cfg = config_load_string(text, fake_getenv, NULL, p);
	free(text);
	return cfg;
}

static void
format_problem(const struct config_problem *pr, char *buf, size_t len)
{
	if (pr->path[0] != '\0')
		snprintf(buf, len, "%s: %s", pr->path, pr->message);
	else
		snprintf(buf, len, "%s", pr->message);
}

static void
print_problems(const struct config_problems *p)
{
	for (size_t i = 0; i < p->count; i++) {
		char line[1024];

		format_problem(&p->items[i], line, sizeof(line));
		fprintf(stderr, "\n  unexpected problem: %s", line);
	}
}

/* Loads src, which must be valid; the caller frees the config. */
static struct lb_config *
load_ok(const char *src, const char *const *env)
{
	struct config_problems p;
	struct lb_config *cfg = load(src, env, &p);

	CU_ASSERT_PTR_NOT_NULL(cfg);
	CU_ASSERT_EQUAL(p.count, 0);
	print_problems(&p);
	config_problems_free(&p);
	return cfg;
}

/* Asserts exactly these problems, in this order. */
static void
expect_problems(const char *src, const char *const *env, const char *const *expected)
{
	struct config_problems p;
	struct lb_config *cfg = load(src, env, &p);
	size_t n = 0;

	while (expected[n] != NULL)
		n++;
	CU_ASSERT_PTR_NULL(cfg);
	CU_ASSERT_EQUAL(p.count, n);
	for (size_t i = 0; i < p.count || i < n; i++) {
		char line[1024] = "(none)";

		if (i < p.count)
			format_problem(&p.items[i], line, sizeof(line));
		if (i >= n || strcmp(line, expected[i]) != 0) {
			fprintf(stderr, "\n  problem %zu: got \"%s\", want \"%s\"", i, line,
				i < n ? expected[i] : "(none)");
			CU_FAIL("problem differs");
		}
	}
	config_free(cfg);
	config_problems_free(&p);
}

#define EXPECT(src, env, ...) \
	expect_problems(src, env, (const char *const[]){ __VA_ARGS__, NULL })

/* A one-route config around `sql` (escaped by yajl_gen) and `params`. */
static char *
sql_config(const char *method, const char *sql, const char *params)
{
	yajl_gen g = yajl_gen_alloc(NULL);
	const unsigned char *buf;
	struct strbuf sb;
	size_t len;

	yajl_gen_string(g, (const unsigned char *)sql, strlen(sql));
	yajl_gen_get_buf(g, &buf, &len);
	strbuf_init(&sb);
	strbuf_appendf(&sb, "{`routes`: [{`method`: `%s`, `path`: `/x`, "
		       "`auth`: `service-principal`, `sql`: %.*s, `params`: %s}]}",
		       method, (int)len, (const char *)buf, params);
	yajl_gen_free(g);
	return strbuf_detach(&sb, NULL);
}

static void
expect_sql(const char *sql, const char *params, const char *compiled)
{
	char *src = sql_config("GET", sql, params);
	struct lb_config *cfg = load_ok(src, env_ok);

	if (cfg != NULL) {
		CU_ASSERT_STRING_EQUAL(cfg->routes[0].sql, compiled);
		if (strcmp(cfg->routes[0].sql, compiled) != 0)
			fprintf(stderr, "\n  sql: got \"%s\", want \"%s\"", cfg->routes[0].sql,
				compiled);
	}
	config_free(cfg);
	free(src);
}

#define EXPECT_SQL_PROBLEMS(sql, params, ...) do { \
	char *src_ = sql_config("GET", sql, params); \
	EXPECT(src_, env_ok, __VA_ARGS__); \
	free(src_); \
} while (0)

/* The default text of the only parameter of a one-route config. */
static void
expect_default(const char *param, const char *text)
{
	char *src = sql_config("POST", "SELECT :p", param);
	struct lb_config *cfg = load_ok(src, env_ok);

	if (cfg != NULL && cfg->routes[0].nparams == 1) {
		const char *got = cfg->routes[0].params[0].default_text;
		bool same = got == NULL || text == NULL ? got == text : strcmp(got, text) == 0;

		CU_ASSERT_TRUE(same);
		if (!same)
			fprintf(stderr, "\n  default: got \"%s\", want \"%s\"",
				got ? got : "(null)", text ? text : "(null)");
	}
	config_free(cfg);
	free(src);
}

#define EXPECT_DEFAULT_PROBLEM(param, problem) do { \
	char *src_ = sql_config("POST", "SELECT :p", param); \
	EXPECT(src_, env_ok, problem); \
	free(src_); \
} while (0)

/* ---- defaults and the environment ---- */

static void
test_defaults(void)
{
	struct lb_config *cfg = load_ok("{}", env_ok);

	if (cfg == NULL)
		return;
	CU_ASSERT_PTR_NULL(cfg->listen);
	CU_ASSERT_EQUAL(cfg->threads, 16);
	CU_ASSERT_STRING_EQUAL(cfg->log_level, "info");
	CU_ASSERT_EQUAL(cfg->max_body_bytes, 1048576);
	CU_ASSERT_STRING_EQUAL(cfg->healthz_path, "/healthz");
	CU_ASSERT_STRING_EQUAL(cfg->readyz_path, "/readyz");
	CU_ASSERT_STRING_EQUAL(cfg->databricks_host, "https://ws.example.com");
	CU_ASSERT_PTR_NULL(cfg->client_id);
	CU_ASSERT_PTR_NULL(cfg->client_secret);
	CU_ASSERT_STRING_EQUAL(cfg->static_token, "dapi-test");
	CU_ASSERT_STRING_EQUAL(cfg->lakebase_endpoint, "projects/p/branches/b/endpoints/e");
	CU_ASSERT_EQUAL(cfg->http_connect_timeout_ms, 5000);
	CU_ASSERT_EQUAL(cfg->http_timeout_ms, 30000);
	CU_ASSERT_STRING_EQUAL(cfg->pg_host, "pg.example.com");
	CU_ASSERT_EQUAL(cfg->pg_port, 5432);
	CU_ASSERT_STRING_EQUAL(cfg->pg_database, "databricks_postgres");
	CU_ASSERT_PTR_NULL(cfg->pg_user);
	CU_ASSERT_STRING_EQUAL(cfg->pg_sslmode, "verify-full");
	CU_ASSERT_PTR_NULL(cfg->pg_sslrootcert);
	CU_ASSERT_STRING_EQUAL(cfg->pg_appname, "lakebase-fcgi");
	CU_ASSERT_EQUAL(cfg->sp_pool.max, 10);
	CU_ASSERT_EQUAL(cfg->sp_pool.connect_timeout_ms, 10000);
	CU_ASSERT_EQUAL(cfg->sp_pool.idle_timeout_ms, 30000);
	CU_ASSERT_EQUAL(cfg->sp_pool.acquire_timeout_ms, 5000);
	CU_ASSERT_EQUAL(cfg->user_pool.max, 3);
	CU_ASSERT_EQUAL(cfg->user_pool.connect_timeout_ms, 10000);
	CU_ASSERT_EQUAL(cfg->user_pool.idle_timeout_ms, 30000);
	CU_ASSERT_EQUAL(cfg->user_pool.acquire_timeout_ms, 5000);
	CU_ASSERT_EQUAL(cfg->max_user_pools, 1000);
	CU_ASSERT_EQUAL(cfg->max_connections, 64);
	CU_ASSERT_EQUAL(cfg->user_pool_remove_after_ms, 300000);
	CU_ASSERT_STRING_EQUAL(cfg->email_header, "X-Forwarded-Email");
	CU_ASSERT_STRING_EQUAL(cfg->token_header, "X-Forwarded-Access-Token");
	CU_ASSERT_FALSE(cfg->development_mode);
	CU_ASSERT_EQUAL(cfg->refresh_margin_ms, 120000);
	CU_ASSERT_EQUAL(cfg->nroutes, 0);
	CU_ASSERT_PTR_NULL(cfg->routes);
	config_free(cfg);

	/* no file at all: environment and defaults */
	cfg = load_ok(NULL, env_ok);
	if (cfg != NULL)
		CU_ASSERT_EQUAL(cfg->threads, 16);
	config_free(cfg);
}

static const char full_config[] =
	"{ `listen`: `unix:/run/lb.sock`, `threads`: 8, `log_level`: `debug`,"
	"  `max_body_bytes`: 2048,"
	"  `health`: { `healthz_path`: `/hz`, `readyz_path`: `/rz` },"
	"  `workspace`: { `host`: `file.example.com`, `client_id`: `cid`,"
	"    `client_secret`: `csecret`, `endpoint`: `projects/f`,"
	"    `connect_timeout_ms`: 1000, `timeout_ms`: 2000 },"
	"  `postgres`: { `host`: `pgfile`, `port`: 6543, `database`: `db`, `user`: `u`,"
	"    `sslmode`: `require`, `sslrootcert`: `/ca.pem`, `application_name`: `app` },"
	"  `pool`: { `max`: 5, `connect_timeout_ms`: 11, `idle_timeout_ms`: 12,"
	"    `acquire_timeout_ms`: 13 },"
	"  `user_pool`: { `max`: 2, `connect_timeout_ms`: 21, `idle_timeout_ms`: 22,"
	"    `acquire_timeout_ms`: 0 },"
	"  `max_user_pools`: 7, `max_connections`: 9, `user_pool_remove_after_ms`: 1000,"
	"  `identity`: { `email_header`: `X-Email`, `token_header`: `X-Token`,"
	"    `development_mode`: true },"
	"  `credentials`: { `refresh_margin_ms`: 0 },"
	"  `routes`: [] }";

static void
test_file_values(void)
{
	static const char *const no_env[] = { NULL };
	struct lb_config *cfg = load_ok(full_config, no_env);

	if (cfg == NULL)
		return;
	CU_ASSERT_STRING_EQUAL(cfg->listen, "unix:/run/lb.sock");
	CU_ASSERT_EQUAL(cfg->threads, 8);
	CU_ASSERT_STRING_EQUAL(cfg->log_level, "debug");
	CU_ASSERT_EQUAL(cfg->max_body_bytes, 2048);
	CU_ASSERT_STRING_EQUAL(cfg->healthz_path, "/hz");
	CU_ASSERT_STRING_EQUAL(cfg->readyz_path, "/rz");
	CU_ASSERT_STRING_EQUAL(cfg->databricks_host, "https://file.example.com");
	CU_ASSERT_STRING_EQUAL(cfg->client_id, "cid");
	CU_ASSERT_STRING_EQUAL(cfg->client_secret, "csecret");
	CU_ASSERT_PTR_NULL(cfg->static_token);
	CU_ASSERT_STRING_EQUAL(cfg->lakebase_endpoint, "projects/f");
	CU_ASSERT_EQUAL(cfg->http_connect_timeout_ms, 1000);
	CU_ASSERT_EQUAL(cfg->http_timeout_ms, 2000);
	CU_ASSERT_STRING_EQUAL(cfg->pg_host, "pgfile");
	CU_ASSERT_EQUAL(cfg->pg_port, 6543);
	CU_ASSERT_STRING_EQUAL(cfg->pg_database, "db");
	CU_ASSERT_STRING_EQUAL(cfg->pg_user, "u");
	CU_ASSERT_STRING_EQUAL(cfg->pg_sslmode, "require");
	CU_ASSERT_STRING_EQUAL(cfg->pg_sslrootcert, "/ca.pem");
	CU_ASSERT_STRING_EQUAL(cfg->pg_appname, "app");
	CU_ASSERT_EQUAL(cfg->sp_pool.max, 5);
	CU_ASSERT_EQUAL(cfg->sp_pool.connect_timeout_ms, 11);
	CU_ASSERT_EQUAL(cfg->sp_pool.idle_timeout_ms, 12);
	CU_ASSERT_EQUAL(cfg->sp_pool.acquire_timeout_ms, 13);
	CU_ASSERT_EQUAL(cfg->user_pool.max, 2);
	CU_ASSERT_EQUAL(cfg->user_pool.connect_timeout_ms, 21);
	CU_ASSERT_EQUAL(cfg->user_pool.idle_timeout_ms, 22);
	CU_ASSERT_EQUAL(cfg->user_pool.acquire_timeout_ms, 0);
	CU_ASSERT_EQUAL(cfg->max_user_pools, 7);
	CU_ASSERT_EQUAL(cfg->max_connections, 9);
	CU_ASSERT_EQUAL(cfg->user_pool_remove_after_ms, 1000);
	CU_ASSERT_STRING_EQUAL(cfg->email_header, "X-Email");
	CU_ASSERT_STRING_EQUAL(cfg->token_header, "X-Token");
	CU_ASSERT_TRUE(cfg->development_mode);
	CU_ASSERT_EQUAL(cfg->refresh_margin_ms, 0);
	CU_ASSERT_EQUAL(cfg->nroutes, 0);
	config_free(cfg);
}

static void
test_env_overrides_file(void)
{
	static const char *const env[] = {
		"DATABRICKS_HOST=env.example.com", "DATABRICKS_CLIENT_ID=env-id",
		"DATABRICKS_CLIENT_SECRET=env-secret", "LAKEBASE_ENDPOINT=projects/env",
		"PGHOST=pgenv", "PGPORT=7777", "PGDATABASE=dbenv", "PGUSER=uenv",
		"PGSSLMODE=verify-ca", "PGSSLROOTCERT=/env.pem", "PGAPPNAME=appenv",
		NULL
	};
	struct lb_config *cfg = load_ok(full_config, env);

	if (cfg == NULL)
		return;
	CU_ASSERT_STRING_EQUAL(cfg->databricks_host, "https://env.example.com");
	CU_ASSERT_STRING_EQUAL(cfg->client_id, "env-id");
	CU_ASSERT_STRING_EQUAL(cfg->client_secret, "env-secret");
	CU_ASSERT_STRING_EQUAL(cfg->lakebase_endpoint, "projects/env");
	CU_ASSERT_STRING_EQUAL(cfg->pg_host, "pgenv");
	CU_ASSERT_EQUAL(cfg->pg_port, 7777);
	CU_ASSERT_STRING_EQUAL(cfg->pg_database, "dbenv");
	CU_ASSERT_STRING_EQUAL(cfg->pg_user, "uenv");
	CU_ASSERT_STRING_EQUAL(cfg->pg_sslmode, "verify-ca");
	CU_ASSERT_STRING_EQUAL(cfg->pg_sslrootcert, "/env.pem");
	CU_ASSERT_STRING_EQUAL(cfg->pg_appname, "appenv");
	/* settings without a variable keep the file's value */
	CU_ASSERT_EQUAL(cfg->threads, 8);
	CU_ASSERT_EQUAL(cfg->http_timeout_ms, 2000);
	config_free(cfg);
}

static void
test_empty_env_counts_as_unset(void)
{
	static const char *const env[] = {
		"DATABRICKS_HOST=", "DATABRICKS_CLIENT_ID=", "DATABRICKS_CLIENT_SECRET=",
		"LAKEBASE_ENDPOINT=", "PGHOST=", "PGPORT=", "PGSSLMODE=", NULL
	};
	struct lb_config *cfg = load_ok(full_config, env);

	if (cfg == NULL)
		return;
	CU_ASSERT_STRING_EQUAL(cfg->databricks_host, "https://file.example.com");
	CU_ASSERT_STRING_EQUAL(cfg->client_id, "cid");
	CU_ASSERT_STRING_EQUAL(cfg->pg_host, "pgfile");
	CU_ASSERT_EQUAL(cfg->pg_port, 6543);
	CU_ASSERT_STRING_EQUAL(cfg->pg_sslmode, "require");
	config_free(cfg);
}

static void
test_env_values_checked(void)
{
	static const char *const bad_port[] = {
		"DATABRICKS_HOST=ws", "DATABRICKS_TOKEN=t", "LAKEBASE_ENDPOINT=e", "PGHOST=h",
		"PGPORT=54x", NULL
	};
	static const char *const zero_port[] = {
		"DATABRICKS_HOST=ws", "DATABRICKS_TOKEN=t", "LAKEBASE_ENDPOINT=e", "PGHOST=h",
		"PGPORT=0", NULL
	};
	static const char *const big_port[] = {
		"DATABRICKS_HOST=ws", "DATABRICKS_TOKEN=t", "LAKEBASE_ENDPOINT=e", "PGHOST=h",
		"PGPORT=65536", NULL
	};
	static const char *const bad_sslmode[] = {
		"DATABRICKS_HOST=ws", "DATABRICKS_TOKEN=t", "LAKEBASE_ENDPOINT=e", "PGHOST=h",
		"PGSSLMODE=verify_full", NULL
	};
	static const char *const env_no_token[] = {
		"DATABRICKS_HOST=ws", "LAKEBASE_ENDPOINT=e", "PGHOST=h", NULL
	};
	static const char *const token_newline[] = {
		"DATABRICKS_HOST=ws", "DATABRICKS_TOKEN=abc\r\nX-Evil: 1", "LAKEBASE_ENDPOINT=e",
		"PGHOST=h", NULL
	};

	EXPECT("{}", bad_port, "PGPORT: must be a port number between 1 and 65535");
	EXPECT("{}", zero_port, "PGPORT: must be a port number between 1 and 65535");
	EXPECT("{}", big_port, "PGPORT: must be a port number between 1 and 65535");
	EXPECT("{}", bad_sslmode, "PGSSLMODE: must be one of: disable, allow, prefer, "
	       "require, verify-ca, verify-full");
	/* the message never repeats a secret's value */
	EXPECT("{}", token_newline,
	       "DATABRICKS_TOKEN: must not contain spaces or control characters");
	EXPECT("{`workspace`: {`token`: `a b`}}", env_no_token,
	       "workspace.token: must not contain spaces or control characters");
	EXPECT("{`workspace`: {`client_id`: `a b`, `client_secret`: `s`}}", env_ok,
	       "workspace.client_id: must not contain spaces or control characters");
}

static void
test_required_connection_settings(void)
{
	static const char *const none[] = { NULL };
	static const char *const id_only[] = {
		"DATABRICKS_HOST=ws", "DATABRICKS_CLIENT_ID=id", "LAKEBASE_ENDPOINT=e",
		"PGHOST=h", NULL
	};
	static const char *const secret_only[] = {
		"DATABRICKS_HOST=ws", "DATABRICKS_CLIENT_SECRET=s", "LAKEBASE_ENDPOINT=e",
		"PGHOST=h", NULL
	};

	EXPECT("{}", none,
	       "workspace.host: required (set DATABRICKS_HOST)",
	       "workspace: set DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET (OAuth M2M) "
	       "or DATABRICKS_TOKEN",
	       "workspace.endpoint: required (set LAKEBASE_ENDPOINT)",
	       "postgres.host: required (set PGHOST)");
	EXPECT("{}", id_only,
	       "workspace: set DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET (OAuth M2M) "
	       "or DATABRICKS_TOKEN");
	EXPECT("{}", secret_only,
	       "workspace.client_id: required with a client secret (set DATABRICKS_CLIENT_ID)");
}

static void
test_m2m_wins_over_token(void)
{
	static const char *const both[] = {
		"DATABRICKS_HOST=ws", "DATABRICKS_CLIENT_ID=id", "DATABRICKS_CLIENT_SECRET=s",
		"DATABRICKS_TOKEN=t", "LAKEBASE_ENDPOINT=e", "PGHOST=h", NULL
	};
	static const char *const id_and_token[] = {
		"DATABRICKS_HOST=ws", "DATABRICKS_CLIENT_ID=id", "DATABRICKS_TOKEN=t",
		"LAKEBASE_ENDPOINT=e", "PGHOST=h", NULL
	};
	struct lb_config *cfg = load_ok("{}", both);

	if (cfg != NULL) {
		CU_ASSERT_STRING_EQUAL(cfg->client_id, "id");
		CU_ASSERT_STRING_EQUAL(cfg->client_secret, "s");
		CU_ASSERT_PTR_NULL(cfg->static_token);
	}
	config_free(cfg);
	/* a client id beside a token only names the SP's role */
	cfg = load_ok("{}", id_and_token);
	if (cfg != NULL) {
		CU_ASSERT_STRING_EQUAL(cfg->client_id, "id");
		CU_ASSERT_STRING_EQUAL(cfg->static_token, "t");
	}
	config_free(cfg);
}

/* ---- the workspace host ---- */

static void
expect_host(const char *value, const char *normalised)
{
	const char *env[] = {
		NULL, "DATABRICKS_TOKEN=t", "LAKEBASE_ENDPOINT=e", "PGHOST=h", NULL
	};
	char var[256];
	struct lb_config *cfg;

	snprintf(var, sizeof(var), "DATABRICKS_HOST=%s", value);
	env[0] = var;
	cfg = load_ok("{}", env);
	if (cfg != NULL) {
		CU_ASSERT_STRING_EQUAL(cfg->databricks_host, normalised);
		if (strcmp(cfg->databricks_host, normalised) != 0)
			fprintf(stderr, "\n  host %s: got %s, want %s", value,
				cfg->databricks_host, normalised);
	}
	config_free(cfg);
}

static void
expect_host_problem(const char *value, const char *problem)
{
	const char *env[] = {
		NULL, "DATABRICKS_TOKEN=t", "LAKEBASE_ENDPOINT=e", "PGHOST=h", NULL
	};
	char var[256];

	snprintf(var, sizeof(var), "DATABRICKS_HOST=%s", value);
	env[0] = var;
	EXPECT("{}", env, problem);
}

static void
test_host_normalisation(void)
{
	expect_host("ws.example.com", "https://ws.example.com");
	expect_host("https://ws.example.com/", "https://ws.example.com");
	expect_host("HTTPS://WS.Example.COM//", "https://ws.example.com");
	expect_host("ws.example.com:8443", "https://ws.example.com:8443");
	expect_host("http://localhost:8080/", "http://localhost:8080");
	expect_host("http://LOCALHOST", "http://localhost");
	expect_host("http://127.0.0.1:9999", "http://127.0.0.1:9999");
	expect_host("http://127.45.6.7", "http://127.45.6.7");
	expect_host("http://[::1]:8080", "http://[::1]:8080");
	expect_host("http://::1", "http://[::1]");
	expect_host("https://[2001:db8::1]:443", "https://[2001:db8::1]:443");
}

static void
test_host_refused(void)
{
	const char *http = "DATABRICKS_HOST: plain http:// is only allowed for a loopback host";

	expect_host_problem("http://ws.example.com", http);
	expect_host_problem("http://10.0.0.1:8080", http);
	expect_host_problem("http://localhost.evil.example", http);
	expect_host_problem("http://127.0.0.1.evil.example", http);
	expect_host_problem("http://[2001:db8::1]", http);
	expect_host_problem("ftp://ws.example.com",
			    "DATABRICKS_HOST: unsupported scheme \"ftp\" (use https://)");
	expect_host_problem("https://ws.example.com/api",
			    "DATABRICKS_HOST: must not have a path, query or fragment "
			    "(use scheme://host[:port])");
	expect_host_problem("https://ws.example.com?x=1",
			    "DATABRICKS_HOST: must not have a path, query or fragment "
			    "(use scheme://host[:port])");
	expect_host_problem("https://ws.example.com#top",
			    "DATABRICKS_HOST: must not have a path, query or fragment "
			    "(use scheme://host[:port])");
	expect_host_problem("https://user:pw@ws.example.com",
			    "DATABRICKS_HOST: must not contain user information (user@)");
	expect_host_problem("https://", "DATABRICKS_HOST: empty host");
	expect_host_problem("https:///", "DATABRICKS_HOST: empty host");
	expect_host_problem("https://:443", "DATABRICKS_HOST: empty host");
	expect_host_problem("ws.example.com:0", "DATABRICKS_HOST: invalid port (must be 1-65535)");
	expect_host_problem("ws.example.com:65536",
			    "DATABRICKS_HOST: invalid port (must be 1-65535)");
	expect_host_problem("ws.example.com:https",
			    "DATABRICKS_HOST: invalid port (must be 1-65535)");
	expect_host_problem("https://ws example.com",
			    "DATABRICKS_HOST: must not contain spaces or control characters");
	/* from the file, the message names the key */
	EXPECT("{`workspace`: {`host`: `http://ws.example.com`, `token`: `t`,"
	       " `endpoint`: `e`}, `postgres`: {`host`: `h`}}", NULL,
	       "workspace.host: plain http:// is only allowed for a loopback host");
}

/* ---- schema errors ---- */

static void
test_unknown_keys(void)
{
	EXPECT("{`thread`: 4}", env_ok, "thread: unknown key");
	EXPECT("{`pool`: {`maxx`: 4}}", env_ok, "pool.maxx: unknown key");
	EXPECT("{`routes`: ["
	       " {`method`: `GET`, `path`: `/a`, `auth`: `service-principal`, `sql`: `SELECT 1`},"
	       " {`method`: `GET`, `path`: `/b/{id}`, `auth`: `service-principal`,"
	       "  `sql`: `SELECT :id`,"
	       "  `params`: {`id`: {`in`: `path`, `type`: `int`, `typo`: true}}}]}", env_ok,
	       "routes[1].params.id.typo: unknown key");
	EXPECT("{`routes`: [{`method`: `GET`, `path`: `/a`, `auth`: `service-principal`,"
	       " `sql`: `SELECT 1`, `colour`: `red`}]}", env_ok,
	       "routes[0].colour: unknown key");
	EXPECT("{`threads`: 4, `threads`: 5}", env_ok, "threads: duplicate key");
}

static void
test_wrong_types(void)
{
	EXPECT("{`threads`: `16`}", env_ok, "threads: must be an integer");
	EXPECT("{`threads`: 1.5}", env_ok, "threads: must be an integer");
	EXPECT("{`threads`: 1e2}", env_ok, "threads: must be an integer");
	EXPECT("{`threads`: null}", env_ok, "threads: must be an integer");
	EXPECT("{`listen`: 9000}", env_ok, "listen: must be a string");
	EXPECT("{`log_level`: 3}", env_ok, "log_level: must be a string");
	EXPECT("{`identity`: {`development_mode`: `yes`}}", env_ok,
	       "identity.development_mode: must be true or false");
	EXPECT("{`pool`: []}", env_ok, "pool: must be an object");
	EXPECT("{`routes`: {}}", env_ok, "routes: must be an array");
	EXPECT("{`routes`: [1]}", env_ok, "routes[0]: must be an object");
	EXPECT("{`health`: {`healthz_path`: ``}}", env_ok, "health.healthz_path: must not be empty");
	EXPECT("[]", env_ok, "the configuration must be a JSON object");
}

static void
test_ranges(void)
{
	EXPECT("{`pool`: {`max`: 0}}", env_ok, "pool.max: must be between 1 and 1000");
	EXPECT("{`pool`: {`max`: 1001}}", env_ok, "pool.max: must be between 1 and 1000");
	EXPECT("{`user_pool`: {`max`: -1}}", env_ok, "user_pool.max: must be between 1 and 1000");
	EXPECT("{`threads`: 1025}", env_ok, "threads: must be between 1 and 1024");
	EXPECT("{`threads`: 99999999999999999999}", env_ok, "threads: must be between 1 and 1024");
	EXPECT("{`postgres`: {`port`: 65536}}", env_ok,
	       "postgres.port: must be between 1 and 65535");
	EXPECT("{`max_body_bytes`: 0}", env_ok, "max_body_bytes: must be between 1 and 1073741824");
	EXPECT("{`credentials`: {`refresh_margin_ms`: -1}}", env_ok,
	       "credentials.refresh_margin_ms: must be between 0 and 3600000");
	EXPECT("{`log_level`: `verbose`}", env_ok,
	       "log_level: must be one of: debug, info, warn, error");
	EXPECT("{`postgres`: {`sslmode`: `on`}}", env_ok, "postgres.sslmode: must be one of: "
	       "disable, allow, prefer, require, verify-ca, verify-full");
	EXPECT("{`pool`: {`max`: 100}}", env_ok, "pool.max: must not exceed max_connections (64)");
	EXPECT("{`max_connections`: 2}", env_ok,
	       "pool.max: must not exceed max_connections (2)",
	       "user_pool.max: must not exceed max_connections (2)");
}

static void
test_server_settings(void)
{
	EXPECT("{`health`: {`healthz_path`: `healthz`}}", env_ok,
	       "health.healthz_path: must start with '/' (no spaces, '?' or '#')");
	EXPECT("{`health`: {`readyz_path`: `/r?x`}}", env_ok,
	       "health.readyz_path: must start with '/' (no spaces, '?' or '#')");
	EXPECT("{`health`: {`readyz_path`: `/healthz`}}", env_ok,
	       "health.readyz_path: must differ from health.healthz_path");
	EXPECT("{`identity`: {`email_header`: `X Email`}}", env_ok,
	       "identity.email_header: must be an HTTP header name");
	EXPECT("{`identity`: {`token_header`: `x-forwarded-email`}}", env_ok,
	       "identity.token_header: must differ from identity.email_header");
	EXPECT("{`listen`: `localhost`}", env_ok, "listen: must be \"HOST:PORT\" or \"unix:/PATH\"");
	EXPECT("{`listen`: `unix:rel.sock`}", env_ok,
	       "listen: must be \"HOST:PORT\" or \"unix:/PATH\"");
	EXPECT("{`listen`: `unix:/run/a\\nb.sock`}", env_ok,
	       "listen: the unix socket path must not contain control characters");
	EXPECT("{`listen`: `unix:/run/lakebase-fcgi/0123456789012345678901234567890123456789"
	       "01234567890123456789012345678901234567890123.sock`}", env_ok,
	       "listen: the unix socket path must be at most 107 bytes");
	/* 107 bytes fit (sun_path keeps one for the NUL). */
	config_free(load_ok("{`listen`: `unix:/run/lakebase-fcgi/0123456789012345678901234567890123456789"
			    "0123456789012345678901234567890123456789012.sock`}", env_ok));
	config_free(load_ok("{`listen`: `unix:/run/with space.sock`}", env_ok));
	config_free(load_ok("{`listen`: `127.0.0.1:9000`}", env_ok));
	config_free(load_ok("{`listen`: `[::1]:9000`}", env_ok));
}

/* Command-line flags win over the file and are checked by the same rules,
 * the problem naming the key and the flag. */
static void
test_flag_overrides(void)
{
	struct config_overrides ov = { .socket_mode = CONFIG_SOCKET_MODE_UNSET };
	struct config_problems p;
	struct lb_config *cfg;

	ov.pidfile = "rel.pid";
	ov.listen = "garbage";
	ov.user = "a b";
	current_env = env_ok;
	cfg = config_load_string("{\"pidfile\": \"/run/x.pid\"}", fake_getenv, &ov, &p);
	CU_ASSERT_PTR_NULL(cfg);
	CU_ASSERT_EQUAL_FATAL(p.count, 3);
	CU_ASSERT_STRING_EQUAL(p.items[0].path, "listen (--listen)");
	CU_ASSERT_STRING_EQUAL(p.items[0].message, "must be \"HOST:PORT\" or \"unix:/PATH\"");
	CU_ASSERT_STRING_EQUAL(p.items[1].path, "pidfile (--pidfile)");
	CU_ASSERT_STRING_EQUAL(p.items[1].message, "must be an absolute path");
	CU_ASSERT_STRING_EQUAL(p.items[2].path, "user (--user)");
	config_problems_free(&p);

	/* A flag replaces the file's value, a wrong one included. */
	memset(&ov, 0, sizeof(ov));
	ov.socket_mode = 0600;
	ov.listen = "unix:/run/lakebase-fcgi/x.sock";
	ov.pidfile = "/run/x.pid";
	ov.threads = 3;
	ov.workers_set = true;
	ov.workers = CONFIG_WORKERS_AUTO;
	cfg = config_load_string("{\"listen\": \"127.0.0.1:9000\", \"pidfile\": \"rel.pid\", \"threads\": 8}",
				 fake_getenv, &ov, &p);
	CU_ASSERT_EQUAL(p.count, 0);
	print_problems(&p);
	config_problems_free(&p);
	CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
	CU_ASSERT_STRING_EQUAL(cfg->listen, "unix:/run/lakebase-fcgi/x.sock");
	CU_ASSERT_STRING_EQUAL(cfg->pidfile, "/run/x.pid");
	CU_ASSERT_EQUAL(cfg->threads, 3);
	CU_ASSERT_EQUAL(cfg->workers, CONFIG_WORKERS_AUTO);
	CU_ASSERT_EQUAL(cfg->socket_mode, 0600);
	config_free(cfg);
}

static void
test_comments_allowed(void)
{
	struct lb_config *cfg = load_ok(
		"/* a block comment */\n"
		"{\n"
		"  // a line comment\n"
		"  `threads`: 4, /* inline */ `log_level`: `warn`\n"
		"}\n", env_ok);

	if (cfg != NULL) {
		CU_ASSERT_EQUAL(cfg->threads, 4);
		CU_ASSERT_STRING_EQUAL(cfg->log_level, "warn");
	}
	config_free(cfg);
}

static void
test_syntax_error(void)
{
	EXPECT("{`threads`: 4,\n  b: 5}", env_ok,
	       "line 2, column 3: lexical error: invalid char in json text.");
	EXPECT("{`threads`: 4", env_ok, "line 1, column 14: parse error: premature EOF");
	/* yajl_tree would cut the string at the NUL: refused, not shortened. */
	EXPECT("{`mount_prefix`: `/a\\u0000b`}", env_ok,
	       "line 1, column 21: \\u0000 in a string (a NUL would cut it short)");
}

/* A deep file is refused before yajl_tree, which frees recursively (a
 * SIGHUP with 400000 nested arrays crashed the supervisor). */
static void
test_nesting_limit(void)
{
	size_t n = 400000;
	char *deep = malloc(2 * n + 16), *quiet = malloc(512), *json_default;

	CU_ASSERT_PTR_NOT_NULL_FATAL(deep);
	CU_ASSERT_PTR_NOT_NULL_FATAL(quiet);
	memcpy(deep, "{`x`:", 5);
	memset(deep + 5, '[', n);
	memset(deep + 5 + n, ']', n);
	strcpy(deep + 5 + 2 * n, "}");
	/* the 73rd level is the 72nd array, at column 5 + 72 */
	EXPECT(deep, env_ok, "line 1, column 77: nested deeper than 72 levels");
	/* Brackets in comments and strings are not nesting. */
	snprintf(quiet, 512, "// %.100s\n{ /* %.100s */ `mount_prefix`: `/a` }", deep + 5, deep + 5);
	config_free(load_ok(quiet, env_ok));
	/* A json parameter's default keeps its own limit inside the file's. */
	snprintf(quiet, 512, "{`p`: {`in`: `body`, `type`: `json`, `default`: %.64s%.64s}}",
		 deep + 5, deep + 5 + n);
	json_default = malloc(129);
	CU_ASSERT_PTR_NOT_NULL_FATAL(json_default);
	snprintf(json_default, 129, "%.64s%.64s", deep + 5, deep + 5 + n);
	expect_default(quiet, json_default);
	free(json_default);
	free(quiet);
	free(deep);
}

static void
test_many_problems_together(void)
{
	static const char *const none[] = { NULL };

	EXPECT("{`threads`: 0, `pool`: {`max`: `ten`}, `bogus`: 1,"
	       " `routes`: [{`method`: `GET`, `path`: `/a`, `sql`: `SELECT :x`}]}", none,
	       "bogus: unknown key",
	       "threads: must be between 1 and 1024",
	       "pool.max: must be an integer",
	       "routes[0].auth: required (\"service-principal\" or \"on-behalf-of-user\")",
	       "routes[0].sql: :x has no parameter definition",
	       "workspace.host: required (set DATABRICKS_HOST)",
	       "workspace: set DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET (OAuth M2M) "
	       "or DATABRICKS_TOKEN",
	       "workspace.endpoint: required (set LAKEBASE_ENDPOINT)",
	       "postgres.host: required (set PGHOST)");
}

/* ---- routes ---- */

static const char todos_routes[] =
	"{ `routes`: [\n"
	"  { `method`: `get`, `path`: `/api/todos/{id}`, `auth`: `service-principal`,\n"
	"    `sql`: `SELECT id, title, done FROM app.todos WHERE id = :id`,\n"
	"    `params`: { `id`: { `in`: `path`, `type`: `uuid` } },\n"
	"    `result`: `one` },\n"
	"  { `method`: `GET`, `path`: `/api/todos`, `auth`: `service-principal`,\n"
	"    `sql`: `SELECT id, title, done FROM app.todos ORDER BY created_at DESC LIMIT :limit`,\n"
	"    `params`: { `limit`: { `in`: `query`, `type`: `int`, `default`: 50, `min`: 1, `max`: 500 } },\n"
	"    `result`: `rows`, `max_rows`: 10000, `statement_timeout_ms`: 5000 },\n"
	"  { `method`: `POST`, `path`: `/api/todos`, `auth`: `on-behalf-of-user`,\n"
	"    `sql`: `INSERT INTO app.todos (title) VALUES (:title) RETURNING id, title, done`,\n"
	"    `params`: { `title`: { `in`: `body`, `type`: `text`, `required`: true, `max_length`: 500 } },\n"
	"    `result`: `one` }\n"
	"] }";

static void
test_minimal_routes_only_config(void)
{
	struct lb_config *cfg = load_ok(todos_routes, env_ok);
	const struct route *r;

	if (cfg == NULL)
		return;
	CU_ASSERT_EQUAL_FATAL(cfg->nroutes, 3);
	r = &cfg->routes[0];
	CU_ASSERT_STRING_EQUAL(r->method, "GET");
	CU_ASSERT_STRING_EQUAL(r->path, "/api/todos/{id}");
	CU_ASSERT_EQUAL(r->auth, AUTH_SERVICE_PRINCIPAL);
	CU_ASSERT_STRING_EQUAL(r->sql, "SELECT id, title, done FROM app.todos WHERE id = $1");
	CU_ASSERT_EQUAL(r->result, RESULT_ONE);
	CU_ASSERT_EQUAL(r->max_rows, 10000);
	CU_ASSERT_EQUAL(r->statement_timeout_ms, 0);
	CU_ASSERT_PTR_NULL(r->cache_control);
	CU_ASSERT_EQUAL_FATAL(r->nsegments, 3);
	CU_ASSERT_STRING_EQUAL(r->segments[0].literal, "api");
	CU_ASSERT_EQUAL(r->segments[0].param, -1);
	CU_ASSERT_STRING_EQUAL(r->segments[1].literal, "todos");
	CU_ASSERT_PTR_NULL(r->segments[2].literal);
	CU_ASSERT_EQUAL(r->segments[2].param, 0);
	CU_ASSERT_EQUAL_FATAL(r->nparams, 1);
	CU_ASSERT_STRING_EQUAL(r->params[0].name, "id");
	CU_ASSERT_EQUAL(r->params[0].in, PARAM_IN_PATH);
	CU_ASSERT_EQUAL(r->params[0].type, PT_UUID);
	CU_ASSERT_TRUE(r->params[0].required);
	CU_ASSERT_EQUAL(r->params[0].position, 1);
	CU_ASSERT_EQUAL(r->params[0].max_length, -1);

	r = &cfg->routes[1];
	CU_ASSERT_EQUAL(r->result, RESULT_ROWS);
	CU_ASSERT_EQUAL(r->statement_timeout_ms, 5000);
	CU_ASSERT_EQUAL(r->nsegments, 2);
	CU_ASSERT_EQUAL_FATAL(r->nparams, 1);
	CU_ASSERT_EQUAL(r->params[0].in, PARAM_IN_QUERY);
	CU_ASSERT_EQUAL(r->params[0].type, PT_INT);
	CU_ASSERT_FALSE(r->params[0].required);
	CU_ASSERT_STRING_EQUAL(r->params[0].default_text, "50");
	CU_ASSERT_STRING_EQUAL(r->params[0].min, "1");
	CU_ASSERT_STRING_EQUAL(r->params[0].max, "500");

	r = &cfg->routes[2];
	CU_ASSERT_STRING_EQUAL(r->method, "POST");
	CU_ASSERT_EQUAL(r->auth, AUTH_ON_BEHALF_OF_USER);
	CU_ASSERT_EQUAL_FATAL(r->nparams, 1);
	CU_ASSERT_EQUAL(r->params[0].in, PARAM_IN_BODY);
	CU_ASSERT_TRUE(r->params[0].required);
	CU_ASSERT_EQUAL(r->params[0].max_length, 500);
	CU_ASSERT_PTR_NULL(r->params[0].default_text);
	config_free(cfg);
}

static void
test_route_fields(void)
{
	char *src;

	EXPECT("{`routes`: [{}]}", env_ok,
	       "routes[0].method: required", "routes[0].path: required",
	       "routes[0].auth: required (\"service-principal\" or \"on-behalf-of-user\")",
	       "routes[0].sql: required");
	EXPECT("{`routes`: [{`method`: `FETCH`, `path`: `/a`, `auth`: `service-principal`,"
	       " `sql`: `SELECT 1`}]}", env_ok,
	       "routes[0].method: must be one of: GET, POST, PUT, PATCH, DELETE");
	EXPECT("{`routes`: [{`method`: `GET`, `path`: `/a`, `auth`: `user`,"
	       " `sql`: `SELECT 1`, `result`: `many`, `max_rows`: 0,"
	       " `statement_timeout_ms`: -1}]}", env_ok,
	       "routes[0].auth: must be one of: service-principal, on-behalf-of-user",
	       "routes[0].result: must be one of: rows, one, none",
	       "routes[0].max_rows: must be between 1 and 100000000",
	       "routes[0].statement_timeout_ms: must be between 0 and 86400000");
	EXPECT("{`routes`: [{`method`: `GET`, `path`: `/a`, `auth`: `on-behalf-of-user`,"
	       " `sql`: `SELECT 1`, `cache_control`: `max-age=60`}]}", env_ok,
	       "routes[0].cache_control: only allowed on service-principal routes "
	       "(on-behalf-of-user responses are always private, no-store)");
	EXPECT("{`routes`: [{`method`: `GET`, `path`: `/a`, `auth`: `service-principal`,"
	       " `sql`: `SELECT 1`, `cache_control`: `max-age=60\\r\\nSet-Cookie: a=b`}]}", env_ok,
	       "routes[0].cache_control: must not contain control characters");

	src = sql_config("GET", "SELECT :p", "{`p`: {`in`: `body`, `type`: `int`}}");
	EXPECT(src, env_ok, "routes[0].params.p.in: body parameters are not allowed on GET routes");
	free(src);
	src = sql_config("POST", "SELECT :p", "{`p`: {`type`: `int`}}");
	EXPECT(src, env_ok, "routes[0].params.p.in: required (one of: path, query, body)");
	free(src);
	src = sql_config("POST", "SELECT :p", "{`p`: {`in`: `query`}}");
	EXPECT(src, env_ok, "routes[0].params.p.type: required (one of: text, int, bigint, "
	       "numeric, bool, uuid, timestamptz, json)");
	free(src);
	src = sql_config("POST", "SELECT :p", "{`p`: {`in`: `header`, `type`: `integer`}}");
	EXPECT(src, env_ok, "routes[0].params.p.in: must be one of: path, query, body",
	       "routes[0].params.p.type: must be one of: text, int, bigint, numeric, bool, "
	       "uuid, timestamptz, json");
	free(src);
	src = sql_config("POST", "SELECT 1", "{`1p`: {`in`: `query`, `type`: `int`}}");
	EXPECT(src, env_ok, "routes[0].params.1p: parameter names are letters, digits and '_', "
	       "not starting with a digit", "routes[0].params.1p: not used in sql");
	free(src);
	src = sql_config("POST", "SELECT :p", "{`p`: 1}");
	EXPECT(src, env_ok, "routes[0].params.p: must be an object");
	free(src);

	/* cache_control kept on a service-principal route */
	{
		struct lb_config *cfg = load_ok(
			"{`routes`: [{`method`: `delete`, `path`: `/a`, `auth`: `service-principal`,"
			" `sql`: `DELETE FROM t`, `result`: `none`, `cache_control`: `no-cache`}]}",
			env_ok);

		if (cfg != NULL) {
			CU_ASSERT_STRING_EQUAL(cfg->routes[0].method, "DELETE");
			CU_ASSERT_STRING_EQUAL(cfg->routes[0].cache_control, "no-cache");
			CU_ASSERT_EQUAL(cfg->routes[0].result, RESULT_NONE);
			CU_ASSERT_EQUAL(cfg->routes[0].nparams, 0);
			CU_ASSERT_PTR_NULL(cfg->routes[0].params);
		}
		config_free(cfg);
	}
}

static void
test_path_params(void)
{
	static const char route_fmt[] =
		"{`routes`: [{`method`: `GET`, `path`: `%s`, `auth`: `service-principal`,"
		" `sql`: `SELECT %s`, `params`: %s}]}";
	char src[1024];
	struct lb_config *cfg;

#define PATH_CASE(path, sql, params) snprintf(src, sizeof(src), route_fmt, path, sql, params)
	PATH_CASE("/a/{x}", ":x", "{`y`: {`in`: `path`, `type`: `int`}}");
	EXPECT(src, env_ok, "routes[0].sql: :x has no parameter definition",
	       "routes[0].params.y: not used in sql",
	       "routes[0].path: {x} has no parameter definition",
	       "routes[0].params.y: \"in\": \"path\" but {y} is not in the path");
	PATH_CASE("/a/{x}", ":x", "{`x`: {`in`: `query`, `type`: `int`}}");
	EXPECT(src, env_ok,
	       "routes[0].path: {x} is in the path but its parameter is not \"in\": \"path\"");
	PATH_CASE("/a", ":x", "{`x`: {`in`: `path`, `type`: `int`}}");
	EXPECT(src, env_ok, "routes[0].params.x: \"in\": \"path\" but {x} is not in the path");
	PATH_CASE("/a/{x}/b/{x}", ":x", "{`x`: {`in`: `path`, `type`: `int`}}");
	EXPECT(src, env_ok, "routes[0].path: {x} appears more than once");
	PATH_CASE("/a/x{x}", ":x", "{`x`: {`in`: `path`, `type`: `int`}}");
	EXPECT(src, env_ok, "routes[0].path: a {parameter} must be a whole segment",
	       "routes[0].params.x: \"in\": \"path\" but {x} is not in the path");
	PATH_CASE("/a//{x}", ":x", "{`x`: {`in`: `path`, `type`: `int`}}");
	EXPECT(src, env_ok, "routes[0].path: must not contain an empty segment (\"//\")");
	PATH_CASE("/a/../{x}", ":x", "{`x`: {`in`: `path`, `type`: `int`}}");
	EXPECT(src, env_ok, "routes[0].path: must not contain \".\" or \"..\" segments");
	PATH_CASE("/a b/{x}", ":x", "{`x`: {`in`: `path`, `type`: `int`}}");
	EXPECT(src, env_ok, "routes[0].path: must not contain spaces, control characters, "
	       "'?', '#' or '%'");
	PATH_CASE("a/{x}", ":x", "{`x`: {`in`: `path`, `type`: `int`}}");
	EXPECT(src, env_ok, "routes[0].path: must start with '/'");
	PATH_CASE("/a/{}", "1", "{}");
	EXPECT(src, env_ok, "routes[0].path: {} is not a valid parameter name");
	PATH_CASE("/a/{x}", ":x", "{`x`: {`in`: `path`, `type`: `int`, `required`: false}}");
	EXPECT(src, env_ok, "routes[0].params.x.required: path parameters are always required");
	PATH_CASE("/a/{x}", ":x", "{`x`: {`in`: `path`, `type`: `int`, `default`: 1}}");
	EXPECT(src, env_ok, "routes[0].params.x.default: not allowed on a path parameter "
	       "(path parameters are always required)");

	/* params are ordered by SQL position; segments index the ordered array */
	PATH_CASE("/o/{b}/i/{a}/", ":a, :b",
		  "{`b`: {`in`: `path`, `type`: `int`}, `a`: {`in`: `path`, `type`: `text`}}");
	cfg = load_ok(src, env_ok);
	if (cfg != NULL) {
		const struct route *r = &cfg->routes[0];

		CU_ASSERT_STRING_EQUAL(r->sql, "SELECT $1, $2");
		CU_ASSERT_STRING_EQUAL(r->params[0].name, "a");
		CU_ASSERT_STRING_EQUAL(r->params[1].name, "b");
		CU_ASSERT_EQUAL_FATAL(r->nsegments, 4);	/* trailing '/' ignored */
		CU_ASSERT_EQUAL(r->segments[1].param, 1);
		CU_ASSERT_EQUAL(r->segments[3].param, 0);
	}
	config_free(cfg);
	PATH_CASE("/", "1", "{}");
	cfg = load_ok(src, env_ok);
	if (cfg != NULL)
		CU_ASSERT_EQUAL(cfg->routes[0].nsegments, 0);
	config_free(cfg);
#undef PATH_CASE
}

static void
test_duplicate_routes(void)
{
	static const char fmt[] =
		"{`routes`: ["
		"{`method`: `%s`, `path`: `%s`, `auth`: `service-principal`, `sql`: `SELECT 1`},"
		"{`method`: `%s`, `path`: `%s`, `auth`: `service-principal`, `sql`: `SELECT 1`}]}";
	static const char fmt_params[] =
		"{`routes`: ["
		"{`method`: `GET`, `path`: `/a/{id}`, `auth`: `service-principal`,"
		" `sql`: `SELECT :id`, `params`: {`id`: {`in`: `path`, `type`: `int`}}},"
		"{`method`: `%s`, `path`: `/a/{%s}`, `auth`: `on-behalf-of-user`,"
		" `sql`: `SELECT :%s`, `params`: {`%s`: {`in`: `path`, `type`: `text`}}}]}";
	char src[1024];

	snprintf(src, sizeof(src), fmt_params, "GET", "key", "key", "key");
	EXPECT(src, env_ok, "routes[1].path: same method and path as routes[0] (GET /a/{id})");
	snprintf(src, sizeof(src), fmt, "GET", "/a/b", "get", "/a/b/");
	EXPECT(src, env_ok, "routes[1].path: same method and path as routes[0] (GET /a/b)");
	snprintf(src, sizeof(src), fmt_params, "POST", "id", "id", "id");
	config_free(load_ok(src, env_ok));
	snprintf(src, sizeof(src), fmt, "GET", "/a/new", "GET", "/a/b");
	config_free(load_ok(src, env_ok));
	snprintf(src, sizeof(src), fmt, "GET", "/healthz", "GET", "/b");
	EXPECT(src, env_ok, "routes[0].path: conflicts with health.healthz_path (\"/healthz\")");
}

/* ---- SQL compilation ---- */

static const char P_A[] = "{`a`: {`in`: `query`, `type`: `int`}}";
static const char P_AB[] =
	"{`b`: {`in`: `query`, `type`: `int`}, `a`: {`in`: `query`, `type`: `text`}}";

static void
test_sql_rewriting(void)
{
	struct lb_config *cfg;
	char *src;

	expect_sql("SELECT :a", P_A, "SELECT $1");
	expect_sql("SELECT :a + :a", P_A, "SELECT $1 + $1");
	expect_sql("SELECT :a, :b, :a", P_AB, "SELECT $1, $2, $1");
	expect_sql("SELECT :b, :a", P_AB, "SELECT $1, $2");
	expect_sql("SELECT ':x', :a", P_A, "SELECT ':x', $1");
	expect_sql("SELECT 'it''s :x', :a", P_A, "SELECT 'it''s :x', $1");
	expect_sql("SELECT E'it\\'s :x', :a", P_A, "SELECT E'it\\'s :x', $1");
	expect_sql("SELECT e'\\\\', :a", P_A, "SELECT e'\\\\', $1");
	expect_sql("SELECT \"col:x\", \"a\"\":x\" FROM t WHERE c = :a", P_A,
		   "SELECT \"col:x\", \"a\"\":x\" FROM t WHERE c = $1");
	expect_sql("SELECT 1 -- :x\n + :a", P_A, "SELECT 1 -- :x\n + $1");
	expect_sql("SELECT /* :x /* nested :y */ still :z */ :a", P_A,
		   "SELECT /* :x /* nested :y */ still :z */ $1");
	expect_sql("SELECT $$ :x ' $$, :a", P_A, "SELECT $$ :x ' $$, $1");
	expect_sql("SELECT $fn$ :x $$ :y $fn$, :a", P_A, "SELECT $fn$ :x $$ :y $fn$, $1");
	expect_sql("SELECT :a::uuid, now()::date", P_A, "SELECT $1::uuid, now()::date");
	expect_sql("SELECT :a;", P_A, "SELECT $1;");
	expect_sql("SELECT :a; -- done\n", P_A, "SELECT $1; -- done\n");
	expect_sql("SELECT ';', :a", P_A, "SELECT ';', $1");
	expect_sql("SELECT a$1 FROM t WHERE x = :a", P_A, "SELECT a$1 FROM t WHERE x = $1");
	/* array slices: a colon right after a word is not a placeholder */
	expect_sql("SELECT arr[1:n], arr[lo:hi], arr[2:3], arr[1: :a] FROM t", P_A,
		   "SELECT arr[1:n], arr[lo:hi], arr[2:3], arr[1: $1] FROM t");
	expect_sql("SELECT arr[:a]", P_A, "SELECT arr[$1]");
	/* params end up ordered by position */
	src = sql_config("GET", "SELECT :a, :b", P_AB);
	cfg = load_ok(src, env_ok);
	if (cfg != NULL) {
		CU_ASSERT_EQUAL_FATAL(cfg->routes[0].nparams, 2);
		CU_ASSERT_STRING_EQUAL(cfg->routes[0].params[0].name, "a");
		CU_ASSERT_EQUAL(cfg->routes[0].params[0].position, 1);
		CU_ASSERT_EQUAL(cfg->routes[0].params[0].type, PT_TEXT);
		CU_ASSERT_STRING_EQUAL(cfg->routes[0].params[1].name, "b");
		CU_ASSERT_EQUAL(cfg->routes[0].params[1].position, 2);
		CU_ASSERT_EQUAL(cfg->routes[0].params[1].type, PT_INT);
	}
	config_free(cfg);
	free(src);
}

static void
test_sql_problems(void)
{
	EXPECT_SQL_PROBLEMS("SELECT :nme, :nme", P_A,
			    "routes[0].sql: :nme has no parameter definition",
			    "routes[0].params.a: not used in sql");
	EXPECT_SQL_PROBLEMS("SELECT :a, :x, :y", P_A,
			    "routes[0].sql: :x has no parameter definition",
			    "routes[0].sql: :y has no parameter definition");
	EXPECT_SQL_PROBLEMS("SELECT :a, $1", P_A,
			    "routes[0].sql: $1: use :name placeholders, not positional parameters");
	EXPECT_SQL_PROBLEMS("   -- nothing\n", "{}", "routes[0].sql: must not be empty");
	EXPECT_SQL_PROBLEMS(" ; ", "{}", "routes[0].sql: must not be empty");
	EXPECT_SQL_PROBLEMS("", "{}", "routes[0].sql: must not be empty");
	EXPECT_SQL_PROBLEMS("SELECT :a; DROP TABLE t", P_A,
			    "routes[0].sql: only one SQL statement is allowed");
	EXPECT_SQL_PROBLEMS("SELECT :a;;", P_A, "routes[0].sql: only one SQL statement is allowed");
	EXPECT_SQL_PROBLEMS("SELECT 'x, :a", P_A, "routes[0].sql: unterminated quoted string");
	EXPECT_SQL_PROBLEMS("SELECT E'x\\', :a", P_A, "routes[0].sql: unterminated quoted string");
	EXPECT_SQL_PROBLEMS("SELECT \"x, :a", P_A,
			    "routes[0].sql: unterminated quoted identifier");
	EXPECT_SQL_PROBLEMS("SELECT /* /* */ :a", P_A, "routes[0].sql: unterminated /* comment");
	EXPECT_SQL_PROBLEMS("SELECT $q$ :a $$", P_A,
			    "routes[0].sql: unterminated dollar-quoted string");
}

/* ---- parameter defaults and bounds ---- */

static void
test_defaults_by_type(void)
{
	expect_default("{`p`: {`in`: `query`, `type`: `int`, `default`: -7}}", "-7");
	expect_default("{`p`: {`in`: `query`, `type`: `int`, `default`: 5, `min`: 5, `max`: 5}}",
		       "5");
	expect_default("{`p`: {`in`: `query`, `type`: `bigint`, `default`: 9007199254740993}}",
		       "9007199254740993");
	expect_default("{`p`: {`in`: `query`, `type`: `numeric`, `default`: 1.25}}", "1.25");
	expect_default("{`p`: {`in`: `query`, `type`: `numeric`, `default`: -2e3, `min`: -2000}}",
		       "-2e3");
	expect_default("{`p`: {`in`: `query`, `type`: `bool`, `default`: true}}", "true");
	expect_default("{`p`: {`in`: `query`, `type`: `bool`, `default`: false}}", "false");
	expect_default("{`p`: {`in`: `query`, `type`: `text`, `default`: `hi there`}}",
		       "hi there");
	expect_default("{`p`: {`in`: `query`, `type`: `text`, `default`: `h\u00e9\u00e9`,"
		       " `max_length`: 3}}", "h\u00e9\u00e9");
	expect_default("{`p`: {`in`: `query`, `type`: `uuid`,"
		       " `default`: `0E984725-C51C-4BF4-9960-E1C80E27ABA0`}}",
		       "0e984725-c51c-4bf4-9960-e1c80e27aba0");
	expect_default("{`p`: {`in`: `query`, `type`: `timestamptz`,"
		       " `default`: `2024-01-31T12:00:00.5+01:00`}}", "2024-01-31T12:00:00.5+01:00");
	expect_default("{`p`: {`in`: `query`, `type`: `timestamptz`, `default`: `2024-01-31`}}",
		       "2024-01-31");
	expect_default("{`p`: {`in`: `query`, `type`: `timestamptz`, `default`: `NOW`}}", "now");
	expect_default("{`p`: {`in`: `body`, `type`: `json`,"
		       " `default`: {`a`: [1, 2.5, true, null, `x\\\"y`], `b`: {}}}}",
		       "{\"a\":[1,2.5,true,null,\"x\\\"y\"],\"b\":{}}");
	expect_default("{`p`: {`in`: `body`, `type`: `json`, `default`: `s`, `max_length`: 3}}",
		       "\"s\"");
	/* null: no default */
	expect_default("{`p`: {`in`: `query`, `type`: `int`, `default`: null}}", NULL);
	expect_default("{`p`: {`in`: `query`, `type`: `int`}}", NULL);
}

static void
test_default_problems(void)
{
	EXPECT_DEFAULT_PROBLEM("{`p`: {`in`: `query`, `type`: `int`, `default`: 501, `min`: 1,"
			       " `max`: 500}}",
			       "routes[0].params.p.default: must be between 1 and 500");
	EXPECT_DEFAULT_PROBLEM("{`p`: {`in`: `query`, `type`: `int`, `default`: 0, `min`: 1}}",
			       "routes[0].params.p.default: must be at least 1");
	EXPECT_DEFAULT_PROBLEM("{`p`: {`in`: `query`, `type`: `numeric`, `default`: 2.5,"
			       " `max`: 2.25}}",
			       "routes[0].params.p.default: must be at most 2.25");
	/* Exact, past a double's precision. */
	EXPECT_DEFAULT_PROBLEM("{`p`: {`in`: `query`, `type`: `bigint`, `default`: 9007199254740993,"
			       " `max`: 9007199254740992}}",
			       "routes[0].params.p.default: must be at most 9007199254740992");
	EXPECT_DEFAULT_PROBLEM("{`p`: {`in`: `query`, `type`: `numeric`, `min`: 0.30000000000000001,"
			       " `max`: 0.3}}",
			       "routes[0].params.p.min: must not be greater than max");
	EXPECT_DEFAULT_PROBLEM("{`p`: {`in`: `query`, `type`: `int`, `default`: 1.5}}",
			       "routes[0].params.p.default: must be an integer");
	EXPECT_DEFAULT_PROBLEM("{`p`: {`in`: `query`, `type`: `int`, `default`: `5`}}",
			       "routes[0].params.p.default: must be an integer");
	EXPECT_DEFAULT_PROBLEM("{`p`: {`in`: `query`, `type`: `int`, `default`: 2147483648}}",
			       "routes[0].params.p.default: must be between -2147483648 and "
			       "2147483647");
	EXPECT_DEFAULT_PROBLEM("{`p`: {`in`: `query`, `type`: `numeric`, `default`: `1`}}",
			       "routes[0].params.p.default: must be a number");
	EXPECT_DEFAULT_PROBLEM("{`p`: {`in`: `query`, `type`: `bool`, `default`: 1}}",
			       "routes[0].params.p.default: must be true or false");
	EXPECT_DEFAULT_PROBLEM("{`p`: {`in`: `query`, `type`: `text`, `default`: 1}}",
			       "routes[0].params.p.default: must be a string");
	EXPECT_DEFAULT_PROBLEM("{`p`: {`in`: `query`, `type`: `text`, `default`: `abcd`,"
			       " `max_length`: 3}}",
			       "routes[0].params.p.default: longer than max_length (3 characters)");
	EXPECT_DEFAULT_PROBLEM("{`p`: {`in`: `query`, `type`: `uuid`, `default`: `not-a-uuid`}}",
			       "routes[0].params.p.default: must be a UUID "
			       "(8-4-4-4-12 hexadecimal digits)");
	EXPECT_DEFAULT_PROBLEM("{`p`: {`in`: `query`, `type`: `timestamptz`,"
			       " `default`: `2024-13-01`}}",
			       "routes[0].params.p.default: must be a timestamp "
			       "(RFC 3339, e.g. \"2024-01-31T12:00:00Z\")");
	EXPECT_DEFAULT_PROBLEM("{`p`: {`in`: `body`, `type`: `json`, `default`: [1, 2],"
			       " `max_length`: 4}}",
			       "routes[0].params.p.default: longer than max_length (4 bytes)");
	EXPECT_DEFAULT_PROBLEM("{`p`: {`in`: `query`, `type`: `int`, `required`: true,"
			       " `default`: 1}}",
			       "routes[0].params.p.default: not allowed on a required parameter");
	EXPECT_DEFAULT_PROBLEM("{`p`: {`in`: `query`, `type`: `text`, `min`: 1}}",
			       "routes[0].params.p.min: only allowed for int, bigint and numeric "
			       "parameters");
	EXPECT_DEFAULT_PROBLEM("{`p`: {`in`: `query`, `type`: `int`, `max_length`: 2}}",
			       "routes[0].params.p.max_length: only allowed for text and json "
			       "parameters");
	EXPECT_DEFAULT_PROBLEM("{`p`: {`in`: `query`, `type`: `text`, `max_length`: 0}}",
			       "routes[0].params.p.max_length: must be between 1 and 1073741824");
	EXPECT_DEFAULT_PROBLEM("{`p`: {`in`: `query`, `type`: `int`, `min`: 5, `max`: 1}}",
			       "routes[0].params.p.min: must not be greater than max");
	EXPECT_DEFAULT_PROBLEM("{`p`: {`in`: `query`, `type`: `int`, `min`: 0.5}}",
			       "routes[0].params.p.min: must be an integer");
	EXPECT_DEFAULT_PROBLEM("{`p`: {`in`: `query`, `type`: `numeric`, `max`: `9`}}",
			       "routes[0].params.p.max: must be a number");
	EXPECT_DEFAULT_PROBLEM("{`p`: {`in`: `query`, `type`: `int`, `required`: 1}}",
			       "routes[0].params.p.required: must be true or false");
}

/* ---- files and output ---- */

static char *
write_temp(const char *content, size_t len)
{
	char *name = strdup("/tmp/lb-config-test-XXXXXX");
	int fd = mkstemp(name);

	CU_ASSERT_FATAL(fd >= 0);
	CU_ASSERT_FATAL(write(fd, content, len) == (ssize_t)len);
	close(fd);
	return name;
}

static void
test_files(void)
{
	static const char valid[] = "// from a file\n{ \"threads\": 3 }\n";
	struct config_problems p;
	struct lb_config *cfg;
	char *name;

	current_env = env_ok;
	cfg = config_load("/nonexistent/lakebase.json", fake_getenv, NULL, &p);
	CU_ASSERT_PTR_NULL(cfg);
	CU_ASSERT_EQUAL_FATAL(p.count, 1);
	CU_ASSERT_STRING_EQUAL(p.items[0].path, "");
	CU_ASSERT_STRING_EQUAL(p.items[0].message,
			       "cannot read /nonexistent/lakebase.json: No such file or directory");
	config_problems_free(&p);

	name = write_temp(valid, sizeof(valid) - 1);
	cfg = config_load(name, fake_getenv, NULL, &p);
	CU_ASSERT_PTR_NOT_NULL(cfg);
	CU_ASSERT_EQUAL(p.count, 0);
	if (cfg != NULL)
		CU_ASSERT_EQUAL(cfg->threads, 3);
	config_free(cfg);
	config_problems_free(&p);
	unlink(name);
	free(name);

	name = write_temp("{}\0", 3);
	cfg = config_load(name, fake_getenv, NULL, &p);
	CU_ASSERT_PTR_NULL(cfg);
	CU_ASSERT_EQUAL_FATAL(p.count, 1);
	CU_ASSERT_TRUE(strstr(p.items[0].message, ": contains a NUL byte") != NULL);
	config_problems_free(&p);
	unlink(name);
	free(name);

	name = write_temp("{\n\"threads\": }", 14);
	cfg = config_load(name, fake_getenv, NULL, &p);
	CU_ASSERT_PTR_NULL(cfg);
	CU_ASSERT_EQUAL_FATAL(p.count, 1);
	{
		char want[256];

		snprintf(want, sizeof(want), "%s: line 2, column 12: parse error: "
			 "unallowed token at this point in JSON text", name);
		CU_ASSERT_STRING_EQUAL(p.items[0].message, want);
	}
	config_problems_free(&p);
	unlink(name);
	free(name);
}

/* The shipped sample must stay valid (automake's harness exports srcdir). */
static void
test_sample_config(void)
{
	const char *srcdir = getenv("srcdir");
	struct config_problems p;
	struct lb_config *cfg;
	char path[4096];

	snprintf(path, sizeof(path), "%s/etc/lakebase-fcgi.json", srcdir ? srcdir : ".");
	current_env = env_ok;
	cfg = config_load(path, fake_getenv, NULL, &p);
	CU_ASSERT_PTR_NOT_NULL(cfg);
	print_problems(&p);
	if (cfg != NULL) {
		CU_ASSERT_EQUAL(cfg->nroutes, 3);
		CU_ASSERT_STRING_EQUAL(cfg->routes[1].sql, "SELECT id, title, done FROM app.todos "
				       "ORDER BY created_at DESC LIMIT $1");
	}
	config_free(cfg);
	config_problems_free(&p);
}

static void
test_print_problems(void)
{
	struct config_problems p;
	char *out = NULL;
	size_t len = 0;
	FILE *fp;

	load("{`threads`: 0, `pool`: {`max`: 0}}", NULL, &p);
	fp = open_memstream(&out, &len);
	CU_ASSERT_PTR_NOT_NULL_FATAL(fp);
	config_print_problems(fp, &p);
	fclose(fp);
	CU_ASSERT_STRING_EQUAL(out,
		"threads: must be between 1 and 1024\n"
		"pool.max: must be between 1 and 1000\n"
		"workspace.host: required (set DATABRICKS_HOST)\n"
		"workspace: set DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET (OAuth M2M) "
		"or DATABRICKS_TOKEN\n"
		"workspace.endpoint: required (set LAKEBASE_ENDPOINT)\n"
		"postgres.host: required (set PGHOST)\n");
	free(out);
	config_problems_free(&p);

	load("[", env_ok, &p);
	out = NULL;
	fp = open_memstream(&out, &len);
	CU_ASSERT_PTR_NOT_NULL_FATAL(fp);
	config_print_problems(fp, &p);
	fclose(fp);
	CU_ASSERT_STRING_EQUAL(out, "line 1, column 2: parse error: premature EOF\n");
	free(out);
	config_problems_free(&p);
}

static void
test_names(void)
{
	CU_ASSERT_STRING_EQUAL(auth_mode_name(AUTH_SERVICE_PRINCIPAL), "service-principal");
	CU_ASSERT_STRING_EQUAL(auth_mode_name(AUTH_ON_BEHALF_OF_USER), "on-behalf-of-user");
	CU_ASSERT_STRING_EQUAL(param_type_name(PT_TEXT), "text");
	CU_ASSERT_STRING_EQUAL(param_type_name(PT_TIMESTAMPTZ), "timestamptz");
	CU_ASSERT_STRING_EQUAL(param_type_name(PT_JSON), "json");
}

void
register_config_tests(void)
{
	CU_pSuite s = CU_add_suite("config", NULL, NULL);

	CU_add_test(s, "defaults", test_defaults);
	CU_add_test(s, "every key read from the file", test_file_values);
	CU_add_test(s, "environment overrides the file", test_env_overrides_file);
	CU_add_test(s, "empty environment variable counts as unset", test_empty_env_counts_as_unset);
	CU_add_test(s, "environment values checked", test_env_values_checked);
	CU_add_test(s, "required connection settings", test_required_connection_settings);
	CU_add_test(s, "M2M wins over a static token", test_m2m_wins_over_token);
	CU_add_test(s, "host normalisation", test_host_normalisation);
	CU_add_test(s, "hosts refused", test_host_refused);
	CU_add_test(s, "unknown and duplicate keys", test_unknown_keys);
	CU_add_test(s, "wrong types", test_wrong_types);
	CU_add_test(s, "ranges", test_ranges);
	CU_add_test(s, "server settings", test_server_settings);
	CU_add_test(s, "command-line flags", test_flag_overrides);
	CU_add_test(s, "comments allowed", test_comments_allowed);
	CU_add_test(s, "JSON syntax error", test_syntax_error);
	CU_add_test(s, "nesting limit", test_nesting_limit);
	CU_add_test(s, "many problems reported together", test_many_problems_together);
	CU_add_test(s, "routes only plus environment", test_minimal_routes_only_config);
	CU_add_test(s, "route fields", test_route_fields);
	CU_add_test(s, "path parameters", test_path_params);
	CU_add_test(s, "duplicate routes", test_duplicate_routes);
	CU_add_test(s, "SQL :name rewriting", test_sql_rewriting);
	CU_add_test(s, "SQL problems", test_sql_problems);
	CU_add_test(s, "parameter defaults by type", test_defaults_by_type);
	CU_add_test(s, "parameter default and bound problems", test_default_problems);
	CU_add_test(s, "files", test_files);
	CU_add_test(s, "shipped sample config", test_sample_config);
	CU_add_test(s, "printing problems", test_print_problems);
	CU_add_test(s, "names", test_names);
}
