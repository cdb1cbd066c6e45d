/*
 * test_process.c - the process model's pure parts: the mount prefix, the
 * process keys of the configuration (workers, socket_mode, mount_prefix,
 * paths), and the listening socket helpers on a private directory (unix
 * sockets only: no network).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* By path: the build root holds autoconf's own config.h. */
#include "../../src/config.h"
#include "listener.h"
#include "server.h"
#include "unit.h"

/* ---- mount prefix ---- */

/* Strips prefix from a copy of path; "OUTSIDE" when it is not under it. */
static void
expect_strip(const char *prefix, const char *path, const char *expected)
{
	char buf[256];

	snprintf(buf, sizeof(buf), "%s", path);
	if (!server_strip_mount_prefix(prefix, buf))
		snprintf(buf, sizeof(buf), "OUTSIDE");
	if (strcmp(buf, expected) != 0)
		fprintf(stderr, "\n  strip(%s, %s): got %s, expected %s", prefix, path, buf, expected);
	CU_ASSERT_STRING_EQUAL(buf, expected);
}

static void
test_mount_prefix(void)
{
	expect_strip("/api", "/api/todos", "/todos");
	expect_strip("/api", "/api/todos/x/y", "/todos/x/y");
	expect_strip("/api", "/api", "/");
	expect_strip("/api", "/api/", "/");
	expect_strip("/api", "/api//todos", "//todos");    /* left for the router to refuse */
	expect_strip("/api", "/apix", "OUTSIDE");
	expect_strip("/api", "/apix/todos", "OUTSIDE");
	expect_strip("/api", "/todos", "OUTSIDE");
	expect_strip("/api", "/", "OUTSIDE");
	expect_strip("/api", "", "OUTSIDE");
	/* Compared raw: an escaped prefix is not the prefix. */
	expect_strip("/api", "/%61pi/todos", "OUTSIDE");
	expect_strip("/api", "/API/todos", "OUTSIDE");
	expect_strip("/a/b", "/a/b/c", "/c");
	expect_strip("/a/b", "/a/bc", "OUTSIDE");
	expect_strip("/a/b", "/a", "OUTSIDE");
}

/* ---- configuration keys ---- */

static const char *
no_env(const char *name)
{
	(void)name;
	return NULL;
}

static const char ENV_JSON[] =
	"\"workspace\": {\"host\": \"https://ws.example.com\", \"token\": \"t\", "
	"\"endpoint\": \"projects/p/branches/b/endpoints/e\"}, \"postgres\": {\"host\": \"pg\"}";

/* Loads {ENV_JSON, extra}; returns the config (NULL on problems) and the
 * problems as "path: message" lines joined with '\n' in out. */
static struct lb_config *
load_with(const char *extra, char *out, size_t outlen)
{
	struct config_problems p = { NULL, 0 };
	struct lb_config *cfg;
	char json[2048];
	size_t used = 0;

	snprintf(json, sizeof(json), "{%s%s%s}", ENV_JSON, extra[0] ? ", " : "", extra);
	cfg = config_load_string(json, no_env, NULL, &p);
	out[0] = '\0';
	for (size_t i = 0; i < p.count && used < outlen; i++) {
		int n = snprintf(out + used, outlen - used, "%s%s: %s", i ? "\n" : "", p.items[i].path,
				 p.items[i].message);

		used += n > 0 ? (size_t)n : 0;
	}
	config_problems_free(&p);
	return cfg;
}

static void
expect_problem(const char *extra, const char *expected)
{
	char problems[1024];
	struct lb_config *cfg = load_with(extra, problems, sizeof(problems));

	CU_ASSERT_PTR_NULL(cfg);
	if (strcmp(problems, expected) != 0)
		fprintf(stderr, "\n  %s: got [%s], expected [%s]", extra, problems, expected);
	CU_ASSERT_STRING_EQUAL(problems, expected);
	config_free(cfg);
}

static void
test_process_defaults(void)
{
	char problems[1024];
	struct lb_config *cfg = load_with("", problems, sizeof(problems));

	CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
	CU_ASSERT_STRING_EQUAL(problems, "");
	CU_ASSERT_EQUAL(cfg->workers, 0);
	CU_ASSERT_EQUAL(cfg->shutdown_grace_ms, 30000);
	CU_ASSERT_EQUAL(cfg->max_requests, 0);
	CU_ASSERT_EQUAL(cfg->socket_mode, CONFIG_SOCKET_MODE_UNSET);
	CU_ASSERT_PTR_NULL(cfg->user);
	CU_ASSERT_PTR_NULL(cfg->group);
	CU_ASSERT_PTR_NULL(cfg->pidfile);
	CU_ASSERT_PTR_NULL(cfg->log_file);
	CU_ASSERT_PTR_NULL(cfg->mount_prefix);
	config_free(cfg);
}

static void
test_process_values(void)
{
	char problems[1024];
	struct lb_config *cfg = load_with(
		"\"workers\": 4, \"shutdown_grace_ms\": 1500, \"max_requests\": 1000, \"user\": \"www-data\", "
		"\"group\": \"www-data\", \"pidfile\": \"/run/x.pid\", \"log_file\": \"/var/log/x.log\", "
		"\"socket_owner\": \"lb\", \"socket_group\": \"www-data\", \"socket_mode\": \"0640\", "
		"\"mount_prefix\": \"/api/v1\"", problems, sizeof(problems));

	CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
	CU_ASSERT_STRING_EQUAL(problems, "");
	CU_ASSERT_EQUAL(cfg->workers, 4);
	CU_ASSERT_EQUAL(cfg->shutdown_grace_ms, 1500);
	CU_ASSERT_EQUAL(cfg->max_requests, 1000);
	CU_ASSERT_STRING_EQUAL(cfg->user, "www-data");
	CU_ASSERT_STRING_EQUAL(cfg->group, "www-data");
	CU_ASSERT_STRING_EQUAL(cfg->pidfile, "/run/x.pid");
	CU_ASSERT_STRING_EQUAL(cfg->log_file, "/var/log/x.log");
	CU_ASSERT_STRING_EQUAL(cfg->socket_owner, "lb");
	CU_ASSERT_STRING_EQUAL(cfg->socket_group, "www-data");
	CU_ASSERT_EQUAL(cfg->socket_mode, 0640);
	CU_ASSERT_STRING_EQUAL(cfg->mount_prefix, "/api/v1");
	config_free(cfg);

	cfg = load_with("\"workers\": \"auto\"", problems, sizeof(problems));
	CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
	CU_ASSERT_EQUAL(cfg->workers, CONFIG_WORKERS_AUTO);
	config_free(cfg);
}

static void
test_process_problems(void)
{
	expect_problem("\"workers\": \"many\"", "workers: must be an integer or \"auto\"");
	expect_problem("\"workers\": 1025", "workers: must be between 0 and 1024");
	expect_problem("\"workers\": -1", "workers: must be between 0 and 1024");
	expect_problem("\"workers\": 1.5", "workers: must be an integer");
	expect_problem("\"shutdown_grace_ms\": -1", "shutdown_grace_ms: must be between 0 and 3600000");
	expect_problem("\"max_requests\": \"10\"", "max_requests: must be an integer");
	expect_problem("\"socket_mode\": 660", "socket_mode: must be an octal mode in a string, such as \"0660\"");
	expect_problem("\"socket_mode\": \"0999\"", "socket_mode: must be an octal mode between \"0000\" and \"0777\"");
	expect_problem("\"socket_mode\": \"1777\"", "socket_mode: must be an octal mode between \"0000\" and \"0777\"");
	expect_problem("\"socket_mode\": \"\"", "socket_mode: must be an octal mode between \"0000\" and \"0777\"");
	expect_problem("\"pidfile\": \"run/x.pid\"", "pidfile: must be an absolute path");
	expect_problem("\"log_file\": \"x.log\"", "log_file: must be an absolute path");
	expect_problem("\"user\": \"www data\"", "user: must be a user name or number");
	expect_problem("\"socket_group\": \"a\\tb\"", "socket_group: must be a group name or number");
}

static void
test_mount_prefix_values(void)
{
	static const char *const bad[] = {
		"api", "/", "/api/", "//api", "/api//v1", "/./api", "/api/..", "/%61pi", "/api?x", "/a b", "/api#x",
		NULL
	};
	static const char msg[] = "mount_prefix: must be a path such as \"/api\": segments of letters, digits "
		"and -._~, no trailing '/', no '.' or '..', no %-escapes";
	char extra[128];

	for (const char *const *b = bad; *b != NULL; b++) {
		snprintf(extra, sizeof(extra), "\"mount_prefix\": \"%s\"", *b);
		expect_problem(extra, msg);
	}
}

/* ---- listening sockets ---- */

static char test_dir[] = "/tmp/lb-unit-listener.XXXXXX";

static int
listener_suite_init(void)
{
	return mkdtemp(test_dir) == NULL ? -1 : 0;
}

static int
listener_suite_clean(void)
{
	return rmdir(test_dir);
}

static void
test_listening_socket_detection(void)
{
	int pair[2];

	CU_ASSERT_EQUAL_FATAL(socketpair(AF_UNIX, SOCK_STREAM, 0, pair), 0);
	CU_ASSERT_FALSE(fd_is_listening_socket(pair[0]));
	CU_ASSERT_FALSE(fd_is_listening_socket(-1));
	close(pair[0]);
	close(pair[1]);
}

static void
test_unix_listener(void)
{
	struct socket_options so = { 0640, NULL, NULL };
	struct listener l, second;
	struct lb_error err;
	char addr[300], path[256];
	struct stat st;

	snprintf(path, sizeof(path), "%s/a.sock", test_dir);
	snprintf(addr, sizeof(addr), "unix:%s", path);
	CU_ASSERT_EQUAL_FATAL(listener_open(&l, addr, &so, &err), 0);
	CU_ASSERT_TRUE(fd_is_listening_socket(l.fd));
	CU_ASSERT_EQUAL(l.origin, LISTENER_OPENED);
	CU_ASSERT_EQUAL(stat(path, &st), 0);
	CU_ASSERT_TRUE(S_ISSOCK(st.st_mode));
	CU_ASSERT_EQUAL(st.st_mode & 0777, 0640);

	/* Somebody listens there: refused, and the socket stays. */
	CU_ASSERT_EQUAL(listener_open(&second, addr, &so, &err), -1);
	CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "another process is listening on it"));
	CU_ASSERT_EQUAL(stat(path, &st), 0);

	CU_ASSERT_EQUAL(listener_set_nonblocking(&l, &err), 0);
	listener_close(&l, true);
	CU_ASSERT_EQUAL(stat(path, &st), -1);
	CU_ASSERT_EQUAL(l.fd, -1);
}

static void
test_unix_listener_stale_and_foreign(void)
{
	struct socket_options so = { 0660, NULL, NULL };
	struct listener l;
	struct lb_error err;
	char addr[300], path[256];
	FILE *f;

	snprintf(path, sizeof(path), "%s/b.sock", test_dir);
	snprintf(addr, sizeof(addr), "unix:%s", path);
	/* A stale socket (closed, its file left behind, as by a process
	 * killed with -9): replaced. */
	CU_ASSERT_EQUAL_FATAL(listener_open(&l, addr, &so, &err), 0);
	listener_close(&l, false);
	CU_ASSERT_EQUAL(access(path, F_OK), 0);
	CU_ASSERT_EQUAL(listener_open(&l, addr, &so, &err), 0);
	listener_close(&l, true);

	/* Anything else at the path: refused, left alone. */
	f = fopen(path, "w");
	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	fclose(f);
	CU_ASSERT_EQUAL(listener_open(&l, addr, &so, &err), -1);
	CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "exists and is not a socket"));
	CU_ASSERT_EQUAL(unlink(path), 0);

	CU_ASSERT_EQUAL(listener_open(&l, "unix:relative.sock", &so, &err), -1);
	CU_ASSERT_EQUAL(listener_open(&l, "no-port-here", &so, &err), -1);
	CU_ASSERT_PTR_NOT_NULL(strstr(err.detail, "HOST:PORT"));
}

void
register_process_tests(void)
{
	CU_pSuite s = CU_add_suite("process model", NULL, NULL);

	CU_add_test(s, "mount prefix", test_mount_prefix);
	CU_add_test(s, "process keys: defaults", test_process_defaults);
	CU_add_test(s, "process keys: values", test_process_values);
	CU_add_test(s, "process keys: problems", test_process_problems);
	CU_add_test(s, "mount_prefix values refused", test_mount_prefix_values);
	s = CU_add_suite("listening sockets", listener_suite_init, listener_suite_clean);
	CU_add_test(s, "listening socket detection", test_listening_socket_detection);
	CU_add_test(s, "unix socket: mode, in use, removal", test_unix_listener);
	CU_add_test(s, "unix socket: stale replaced, foreign refused", test_unix_listener_stale_and_foreign);
}
