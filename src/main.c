/*
 * main.c - the lakebase-fcgi command line: options, the configuration
 * (file, environment, flags), and which of the four ways to run this is:
 *
 *   supervisor   --workers N (or "workers" in the config), with --listen
 *                or a socket from systemd: pre-forked workers share the
 *                socket (supervisor.c)
 *   single       --listen without --workers: one process, T threads
 *   managed      no --listen and a listening socket on fd 0 (mod_fcgid,
 *                spawn-fcgi): one process, one request at a time unless
 *                --threads says otherwise; it never stops on its own
 *   CGI          GATEWAY_INTERFACE set and fd 0 not a listening socket:
 *                one request from the environment and stdin, then exit
 *
 * The last three run server.c's loop in this process.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "credential.h"
#include "listener.h"
#include "log.h"
#include "pool.h"
#include "process.h"
#include "server.h"
#include "supervisor.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "dev"
#endif

/* The configuration file when -c is not given (CGI and mod_fcgid setups
 * often cannot pass arguments). */
#define CONFIG_ENV "LAKEBASE_FCGI_CONFIG"

struct options {
	char *config_file;        /* absolute (a daemon re-reads it from "/") */
	struct config_overrides keys;  /* flags that set configuration keys */
	bool daemon;
	bool check_config;
	bool cache_status;        /* issue 4: print the shared credential cache */
};

static void
usage(FILE *out)
{
	fprintf(out,
		"Usage: lakebase-fcgi [OPTIONS]\n"
		"FastCGI worker giving per-user Lakebase (PostgreSQL) connections with RLS.\n"
		"\n"
		"  -c, --config FILE      JSON configuration (comments allowed); default: $" CONFIG_ENV "\n"
		"      --listen ADDR      127.0.0.1:9000, [::1]:9000, :9000 or unix:/path (default: config\n"
		"                         \"listen\", else a socket from systemd or on fd 0, as given by\n"
		"                         mod_fcgid or spawn-fcgi)\n"
		"      --workers N|auto   run a supervisor with N worker processes sharing the socket\n"
		"                         (auto: one per CPU); without it, one process serves alone\n"
		"      --threads N        request threads per process (default: config \"threads\", 16;\n"
		"                         1 under mod_fcgid/spawn-fcgi)\n"
		"      --socket-mode MODE permissions of a unix socket (octal, default 0660)\n"
		"      --socket-owner USER, --socket-group GROUP  owner and group of a unix socket\n"
		"      --user USER, --group GROUP  drop privileges to these after opening the socket\n"
		"      --pidfile FILE     write the (supervisor's) pid to FILE\n"
		"      --foreground       stay in the foreground (the default; for systemd)\n"
		"      --daemon           detach; exits 0 once serving, 1 if starting failed\n"
		"      --check-config     validate the configuration, print each problem, exit\n"
		"      --cache-status     print the host's shared credential cache (no secrets), exit\n"
		"      --version          print the version and exit\n"
		"  -h, --help             this text\n"
		"\n"
		"Signals: TERM/INT drain and exit 0, QUIT exits at once, HUP reloads the\n"
		"configuration (supervisor), USR1 reopens the log file.\n"
		"\n"
		"Environment: DATABRICKS_HOST DATABRICKS_CLIENT_ID DATABRICKS_CLIENT_SECRET\n"
		"DATABRICKS_TOKEN LAKEBASE_ENDPOINT PGHOST PGPORT PGDATABASE PGUSER PGSSLMODE\n"
		"PGSSLROOTCERT PGAPPNAME (they override the file; flags override both).\n");
}

static int
parse_int_arg(const char *name, const char *text, long lo, long hi, long *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(text, &end, 10);
	if (errno != 0 || end == text || *end != '\0' || v < lo || v > hi) {
		fprintf(stderr, "lakebase-fcgi: %s must be an integer between %ld and %ld\n", name, lo, hi);
		return -1;
	}
	*out = v;
	return 0;
}

static int
parse_mode_arg(const char *text, int *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(text, &end, 8);
	if (errno != 0 || end == text || *end != '\0' || v < 0 || v > 0777) {
		fprintf(stderr, "lakebase-fcgi: --socket-mode must be an octal mode such as 0660\n");
		return -1;
	}
	*out = (int)v;
	return 0;
}

static int
parse_workers_arg(const char *text, struct options *opt)
{
	long v;

	opt->keys.workers_set = true;
	if (strcmp(text, "auto") == 0) {
		opt->keys.workers = CONFIG_WORKERS_AUTO;
		return 0;
	}
	if (parse_int_arg("--workers", text, 0, CONFIG_WORKERS_MAX, &v) != 0) {
		fprintf(stderr, "lakebase-fcgi: (or --workers auto)\n");
		return -1;
	}
	opt->keys.workers = (int)v;
	return 0;
}

/* The file, made absolute. NULL with no file at all (environment only). */
static int
resolve_config_file(const char *given, struct options *opt)
{
	const char *file = given ? given : getenv(CONFIG_ENV);

	if (file == NULL || *file == '\0')
		return 0;
	opt->config_file = realpath(file, NULL);
	if (opt->config_file == NULL)
		opt->config_file = strdup(file);   /* config_load names the missing file */
	return opt->config_file == NULL ? -1 : 0;
}

enum {
	OPT_LISTEN = 256, OPT_THREADS, OPT_WORKERS, OPT_SOCKET_MODE, OPT_SOCKET_OWNER, OPT_SOCKET_GROUP,
	OPT_USER, OPT_GROUP, OPT_PIDFILE, OPT_FOREGROUND, OPT_DAEMON, OPT_CHECK, OPT_CACHE_STATUS,
	OPT_VERSION
};

static const struct option longopts[] = {
	{ "config", required_argument, NULL, 'c' },
	{ "listen", required_argument, NULL, OPT_LISTEN },
	{ "threads", required_argument, NULL, OPT_THREADS },
	{ "workers", required_argument, NULL, OPT_WORKERS },
	{ "socket-mode", required_argument, NULL, OPT_SOCKET_MODE },
	{ "socket-owner", required_argument, NULL, OPT_SOCKET_OWNER },
	{ "socket-group", required_argument, NULL, OPT_SOCKET_GROUP },
	{ "user", required_argument, NULL, OPT_USER },
	{ "group", required_argument, NULL, OPT_GROUP },
	{ "pidfile", required_argument, NULL, OPT_PIDFILE },
	{ "foreground", no_argument, NULL, OPT_FOREGROUND },
	{ "daemon", no_argument, NULL, OPT_DAEMON },
	{ "check-config", no_argument, NULL, OPT_CHECK },
	{ "cache-status", no_argument, NULL, OPT_CACHE_STATUS },
	{ "version", no_argument, NULL, OPT_VERSION },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 }
};

/* One option with a value; -1 on a bad value. */
static int
take_option(int c, const char *arg, struct options *opt, const char **config_file)
{
	long v;

	switch (c) {
	case 'c':
		*config_file = arg;
		break;
	case OPT_LISTEN:
		opt->keys.listen = arg;
		break;
	case OPT_THREADS:
		if (parse_int_arg("--threads", arg, 1, 1024, &v) != 0)
			return -1;
		opt->keys.threads = (int)v;
		break;
	case OPT_WORKERS:
		return parse_workers_arg(arg, opt);
	case OPT_SOCKET_MODE:
		return parse_mode_arg(arg, &opt->keys.socket_mode);
	case OPT_SOCKET_OWNER:
		opt->keys.socket_owner = arg;
		break;
	case OPT_SOCKET_GROUP:
		opt->keys.socket_group = arg;
		break;
	case OPT_USER:
		opt->keys.user = arg;
		break;
	case OPT_GROUP:
		opt->keys.group = arg;
		break;
	case OPT_PIDFILE:
		opt->keys.pidfile = arg;
		break;
	case OPT_FOREGROUND:
		opt->daemon = false;
		break;
	case OPT_DAEMON:
		opt->daemon = true;
		break;
	case OPT_CHECK:
		opt->check_config = true;
		break;
	case OPT_CACHE_STATUS:
		opt->cache_status = true;
		break;
	default:
		return -1;
	}
	return 0;
}

/* Returns 0 to run, 1 to exit successfully (help, version), -1 on error. */
static int
parse_options(int argc, char **argv, struct options *opt)
{
	const char *config_file = NULL;
	int c;

	memset(opt, 0, sizeof(*opt));
	opt->keys.socket_mode = CONFIG_SOCKET_MODE_UNSET;
	while ((c = getopt_long(argc, argv, "c:h", longopts, NULL)) != -1) {
		if (c == OPT_VERSION) {
			printf("lakebase-fcgi %s\n", PACKAGE_VERSION);
			return 1;
		}
		if (c == 'h') {
			usage(stdout);
			return 1;
		}
		if (c == '?') {
			usage(stderr);
			return -1;
		}
		if (take_option(c, optarg, opt, &config_file) != 0)
			return -1;
	}
	if (optind < argc) {
		fprintf(stderr, "lakebase-fcgi: unexpected argument '%s'\n", argv[optind]);
		return -1;
	}
	if (resolve_config_file(config_file, opt) != 0) {
		fprintf(stderr, "lakebase-fcgi: out of memory\n");
		return -1;
	}
	return 0;
}

/* ---- the configuration ---- */

static struct lb_config *
load_config(const struct options *opt)
{
	struct config_problems problems = { NULL, 0 };
	struct lb_config *cfg = config_load(opt->config_file, NULL, &opt->keys, &problems);

	if (cfg == NULL || problems.count > 0) {
		fprintf(stderr, "lakebase-fcgi: configuration %s has %zu problem%s:\n",
			opt->config_file ? opt->config_file : "(environment)", problems.count,
			problems.count == 1 ? "" : "s");
		config_print_problems(stderr, &problems);
		config_problems_free(&problems);
		config_free(cfg);
		return NULL;
	}
	config_problems_free(&problems);
	return cfg;
}

/* SIGHUP in the supervisor: the same, with the problems in the log. */
static struct lb_config *
reload_config(void *ctx)
{
	const struct options *opt = ctx;
	struct config_problems problems = { NULL, 0 };
	struct lb_config *cfg = config_load(opt->config_file, NULL, &opt->keys, &problems);

	if (cfg == NULL || problems.count > 0) {
		for (size_t i = 0; i < problems.count; i++) {
			const struct config_problem *p = &problems.items[i];

			log_error("configuration problem", "file", opt->config_file,
				  "key", p->path[0] != '\0' ? p->path : NULL, "problem", p->message);
		}
		config_problems_free(&problems);
		config_free(cfg);
		return NULL;
	}
	config_problems_free(&problems);
	pool_warn_costly_settings(cfg);
	return cfg;
}

/* ---- CGI ---- */

static bool
cgi_requested(const struct options *opt)
{
	return opt->keys.listen == NULL && getenv("GATEWAY_INTERFACE") != NULL && !fd_is_listening_socket(0);
}

/*
 * A CGI query string without '=' reaches the program as command-line
 * arguments (the old ISINDEX convention, which Apache's mod_cgi still
 * follows): "?--listen+0.0.0.0:9000" would become options. Such a request
 * is refused before any argument is parsed.
 */
static bool
cgi_query_as_arguments(int argc)
{
	const char *query = getenv("QUERY_STRING");

	return argc > 1 && getenv("GATEWAY_INTERFACE") != NULL && !fd_is_listening_socket(0) &&
	       query != NULL && *query != '\0' && strchr(query, '=') == NULL;
}

static int
cgi_refuse(enum lb_errcode code, const char *message, const char *detail)
{
	struct lb_error err;

	lb_error_clear(&err);
	lb_error_set(&err, code, message, "%s", detail);
	return server_cgi_fail(&err) == 0 ? 0 : 1;
}

/* ---- serving ---- */

static int
open_socket(const struct lb_config *cfg, struct listener *l, struct lb_error *err)
{
	struct socket_options so;

	if (cfg->listen != NULL) {
		/* Socket activation of the same address: systemd's socket (its
		 * .socket unit sets owner and mode). */
		if (listener_inherit_systemd(l, cfg->listen))
			return 0;
		so.mode = cfg->socket_mode != CONFIG_SOCKET_MODE_UNSET ? cfg->socket_mode : SOCKET_MODE_DEFAULT;
		so.owner = cfg->socket_owner;
		so.group = cfg->socket_group;
		return listener_open(l, cfg->listen, &so, err);
	}
	if (listener_inherit(l))
		return 0;
	return lb_error_set(err, LB_ERR_INTERNAL, "Cannot listen.",
			    "no socket to serve: give --listen ADDR, or start under mod_fcgid, spawn-fcgi "
			    "or systemd socket activation");
}

/* The log file, the daemon, the pidfile: in this order, so that the
 * daemon's pid is the one written and errors before it reach the terminal. */
static int
prepare_process(const struct lb_config *cfg, const struct options *opt, const struct listener *l,
		int *daemon_fd, struct lb_error *err)
{
	uid_t uid = (uid_t)-1;
	gid_t gid = (gid_t)-1;

	if (cfg->log_file != NULL) {
		/* Workers running as `user` reopen it on SIGUSR1: it is theirs. */
		if (cfg->user != NULL && proc_resolve_user(cfg->user, &uid, &gid, err) != 0)
			return -1;
		if (cfg->group != NULL && proc_resolve_group(cfg->group, &gid, err) != 0)
			return -1;
		if (proc_log_open(cfg->log_file, uid, gid, err) != 0)
			return -1;
	}
	if (opt->daemon) {
		if (l->origin == LISTENER_FD0)
			return lb_error_set(err, LB_ERR_INTERNAL, "Cannot start.",
					    "--daemon needs a socket of our own (--listen)");
		if (proc_daemonize(cfg->log_file != NULL, daemon_fd, err) != 0)
			return -1;
	}
	if (cfg->pidfile != NULL && proc_pidfile_write(cfg->pidfile, err) != 0)
		return -1;
	return listener_set_nonblocking(l, err);
}

static int
run_supervisor(struct options *opt, struct lb_config **cfg, int listen_fd, int daemon_fd)
{
	struct supervisor_options so;
	int rc;

	memset(&so, 0, sizeof(so));
	so.cfg = *cfg;
	so.reload = reload_config;
	so.reload_ctx = opt;
	so.listen_fd = listen_fd;
	so.daemon_ready_fd = daemon_fd;
	rc = supervisor_run(&so);
	*cfg = so.cfg;   /* a reload may have replaced it */
	return rc;
}

/* Alone, or as a process manager's worker (managed: fd 0). */
static int
run_single(const struct options *opt, const struct lb_config *cfg, const struct listener *l, int daemon_fd)
{
	struct server_options so;
	struct lb_error err;
	bool managed = l->origin == LISTENER_FD0;

	if (cfg->max_requests > 0)
		log_warn("max_requests is ignored without the supervisor (--workers); under mod_fcgid use "
			 "FcgidMaxRequestsPerProcess");
	if (proc_drop_privileges(cfg->user, cfg->group, &err) != 0) {
		log_error("cannot start", "detail", err.detail);
		return 1;
	}
	memset(&so, 0, sizeof(so));
	so.cfg = cfg;
	so.listen_fd = l->fd;
	/* A process manager sends one request at a time per process. */
	so.threads = managed && opt->keys.threads == 0 ? 1 : cfg->threads;
	so.max_requests = 0;   /* recycling is the process manager's job */
	so.ready_fd = daemon_fd;
	so.role = managed ? "managed" : "server";
	so.listener_shared = managed;   /* a manager may start several on one socket */
	so.notify_systemd = true;
	return server_run(&so) == SERVER_EXIT_OK ? 0 : 1;
}

static int
run_server(struct options *opt, struct lb_config *cfg)
{
	struct listener l;
	struct lb_error err;
	char *pidfile = NULL;
	int daemon_fd = -1, rc;

	lb_error_clear(&err);
	if (open_socket(cfg, &l, &err) != 0) {
		fprintf(stderr, "lakebase-fcgi: %s\n", err.detail);
		config_free(cfg);
		return 1;
	}
	if (prepare_process(cfg, opt, &l, &daemon_fd, &err) != 0) {
		log_error("cannot start", "detail", err.detail);
		listener_close(&l, true);
		config_free(cfg);
		return 1;
	}
	if (cfg->pidfile != NULL && (pidfile = strdup(cfg->pidfile)) == NULL)
		log_warn("out of memory: the pidfile will stay behind");
	log_info("listening", "on", l.addr, "socket",
		 l.origin == LISTENER_SYSTEMD ? "from systemd" :
		 l.origin == LISTENER_FD0 ? "from the process manager" : "ours");
	pool_warn_costly_settings(cfg);   /* once per start (and reload), not per worker */
	if (cfg->workers != 0)
		rc = run_supervisor(opt, &cfg, l.fd, daemon_fd);
	else
		rc = run_single(opt, cfg, &l, daemon_fd);
	proc_pidfile_remove(pidfile);
	free(pidfile);
	listener_close(&l, l.origin == LISTENER_OPENED);
	config_free(cfg);
	log_info("stopped");
	return rc;
}

int
main(int argc, char **argv)
{
	struct options opt;
	struct lb_config *cfg;
	bool cgi;
	int rc;

	if (cgi_query_as_arguments(argc))
		return cgi_refuse(LB_ERR_BAD_REQUEST, "The query string must be name=value pairs.",
				  "CGI query without '=' passed as command-line arguments: refused");
	rc = parse_options(argc, argv, &opt);
	if (rc != 0)
		return rc > 0 ? 0 : 2;
	cgi = cgi_requested(&opt) && !opt.check_config && !opt.cache_status;
	cfg = load_config(&opt);
	if (cfg == NULL) {
		free(opt.config_file);
		if (cgi)
			return cgi_refuse(LB_ERR_INTERNAL, "Internal error.", "the configuration is invalid");
		return opt.check_config ? 1 : 2;
	}
	/* Issue 4's offline view of the shared credential cache. */
	if (opt.cache_status) {
		rc = credcache_print_status(cfg, stdout);
		config_free(cfg);
		free(opt.config_file);
		return rc;
	}
	if (opt.check_config) {
		printf("configuration OK: %zu route%s\n", cfg->nroutes, cfg->nroutes == 1 ? "" : "s");
		config_print_effective(cfg, stdout);
		config_free(cfg);
		free(opt.config_file);
		return 0;
	}
	config_apply_logging(cfg);
	if (cgi) {
		rc = server_run_cgi(cfg);
		config_free(cfg);
	} else {
		rc = run_server(&opt, cfg);
	}
	free(opt.config_file);
	return rc;
}
