/*
 * main.c - the lakebase-fcgi command line: load and check the
 * configuration, open the FastCGI socket, run N threads that accept and
 * serve requests, and shut down cleanly on SIGTERM/SIGINT.
 *
 * Signals are blocked in every thread and taken synchronously with
 * sigwait() in the main thread: libfcgi installs its own SIGTERM handler
 * that only sets a flag, so a threaded worker would otherwise ignore kill.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fcgiapp.h>

#include "config.h"
#include "log.h"
#include "request.h"
#include "worker.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "dev"
#endif

#define LISTEN_BACKLOG 1024

struct options {
	const char *config_file;
	const char *listen;
	int threads;              /* 0: from the config */
	mode_t socket_mode;
	bool check_config;
};

struct server {
	const struct lb_config *cfg;
	struct worker *worker;
	int listen_fd;
	char *unix_path;          /* set when we created a unix socket */
};

static void
usage(FILE *out)
{
	fprintf(out,
		"Usage: lakebase-fcgi [OPTIONS]\n"
		"FastCGI worker giving per-user Lakebase (PostgreSQL) connections with RLS.\n"
		"\n"
		"  -c, --config FILE      JSON configuration (comments allowed)\n"
		"      --listen ADDR      127.0.0.1:9000 or unix:/path (default: config \"listen\",\n"
		"                         else the socket on fd 0, as given by a process manager)\n"
		"      --threads N        request threads (default: config \"threads\", 16)\n"
		"      --socket-mode MODE permissions of a unix socket (octal, default 0660)\n"
		"      --check-config     validate the configuration, print each problem, exit\n"
		"      --version          print the version and exit\n"
		"  -h, --help             this text\n"
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

/* Returns 0 to run, 1 to exit successfully (help, version), -1 on error. */
static int
parse_options(int argc, char **argv, struct options *opt)
{
	enum { OPT_LISTEN = 256, OPT_THREADS, OPT_SOCKET_MODE, OPT_CHECK, OPT_VERSION };
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "listen", required_argument, NULL, OPT_LISTEN },
		{ "threads", required_argument, NULL, OPT_THREADS },
		{ "socket-mode", required_argument, NULL, OPT_SOCKET_MODE },
		{ "check-config", no_argument, NULL, OPT_CHECK },
		{ "version", no_argument, NULL, OPT_VERSION },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	char *end;
	long v;
	int c;

	memset(opt, 0, sizeof(*opt));
	opt->socket_mode = 0660;
	while ((c = getopt_long(argc, argv, "c:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'c':
			opt->config_file = optarg;
			break;
		case OPT_LISTEN:
			opt->listen = optarg;
			break;
		case OPT_THREADS:
			if (parse_int_arg("--threads", optarg, 1, 1024, &v) != 0)
				return -1;
			opt->threads = (int)v;
			break;
		case OPT_SOCKET_MODE:
			errno = 0;
			v = strtol(optarg, &end, 8);
			if (errno != 0 || end == optarg || *end != '\0' || v < 0 || v > 0777) {
				fprintf(stderr, "lakebase-fcgi: --socket-mode must be an octal mode such as 0660\n");
				return -1;
			}
			opt->socket_mode = (mode_t)v;
			break;
		case OPT_CHECK:
			opt->check_config = true;
			break;
		case OPT_VERSION:
			printf("lakebase-fcgi %s\n", PACKAGE_VERSION);
			return 1;
		case 'h':
			usage(stdout);
			return 1;
		default:
			usage(stderr);
			return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "lakebase-fcgi: unexpected argument '%s'\n", argv[optind]);
		return -1;
	}
	return 0;
}

static struct lb_config *
load_config(const struct options *opt)
{
	struct config_problems problems = { NULL, 0 };
	struct lb_config *cfg = config_load(opt->config_file, NULL, &problems);

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

/* Opens the listening socket; NULL listen means fd 0 from a process manager. */
static int
open_listener(struct server *srv, const char *listen, const struct options *opt)
{
	const char *addr = listen;

	if (listen == NULL)
		return 0;   /* FCGI_LISTENSOCK_FILENO */
	if (strncmp(listen, "unix:", 5) == 0) {
		addr = listen + 5;
		if (*addr != '/') {
			fprintf(stderr, "lakebase-fcgi: --listen unix: needs an absolute path\n");
			return -1;
		}
		srv->unix_path = strdup(addr);
		if (srv->unix_path == NULL)
			return -1;
	} else if (strchr(listen, ':') == NULL) {
		fprintf(stderr, "lakebase-fcgi: --listen must be HOST:PORT or unix:/path\n");
		return -1;
	}
	srv->listen_fd = FCGX_OpenSocket(addr, LISTEN_BACKLOG);
	if (srv->listen_fd < 0) {
		fprintf(stderr, "lakebase-fcgi: cannot listen on %s: %s\n", listen, strerror(errno));
		return -1;
	}
	if (srv->unix_path != NULL && chmod(srv->unix_path, opt->socket_mode) != 0) {
		fprintf(stderr, "lakebase-fcgi: cannot chmod %s: %s\n", srv->unix_path, strerror(errno));
		return -1;
	}
	return 0;
}

static void *
request_thread(void *arg)
{
	struct server *srv = arg;
	FCGX_Request fcgx;
	struct http_request req;
	struct http_response resp;
	struct lb_error err;

	if (FCGX_InitRequest(&fcgx, srv->listen_fd, 0) != 0)
		return NULL;
	while (FCGX_Accept_r(&fcgx) >= 0) {
		lb_error_clear(&err);
		response_init(&resp);
		if (request_from_fcgx(&fcgx, srv->cfg->max_body_bytes, &req, &err) == 0) {
			worker_handle(srv->worker, &req, &resp);
		} else {
			/* The request could not even be read: answer it here. */
			worker_reject(srv->worker, &req, &err, &resp);
		}
		response_send_fcgx(&fcgx, &resp);
		response_free(&resp);
		request_free(&req);
		FCGX_Finish_r(&fcgx);
	}
	FCGX_Free(&fcgx, 1);
	return NULL;
}

static void
block_signals(sigset_t *set)
{
	sigemptyset(set);
	sigaddset(set, SIGTERM);
	sigaddset(set, SIGINT);
	sigaddset(set, SIGQUIT);
	sigaddset(set, SIGHUP);
	sigaddset(set, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, set, NULL);
	signal(SIGPIPE, SIG_IGN);
}

/* Waits for a stop signal; returns it. */
static int
wait_for_stop(const sigset_t *set)
{
	int sig;

	for (;;) {
		if (sigwait(set, &sig) != 0)
			continue;
		if (sig == SIGTERM || sig == SIGINT || sig == SIGQUIT)
			return sig;
		log_info("signal ignored", "signal", sig == SIGHUP ? "HUP" : "USR1");
	}
}

static int
serve(struct server *srv, int nthreads)
{
	sigset_t set;
	pthread_t *threads;
	int started = 0, sig;
	char count[16];

	threads = calloc((size_t)nthreads, sizeof(*threads));
	if (threads == NULL)
		return -1;
	block_signals(&set);
	for (int i = 0; i < nthreads; i++) {
		if (pthread_create(&threads[i], NULL, request_thread, srv) != 0)
			break;
		started++;
	}
	if (started == 0) {
		free(threads);
		return -1;
	}
	snprintf(count, sizeof(count), "%d", started);
	log_info("serving", "threads", count);
	sig = wait_for_stop(&set);
	if (sig == SIGQUIT) {
		log_warn("SIGQUIT: exiting immediately");
		_exit(1);
	}
	log_info("shutting down: finishing in-flight requests");
	/* Wakes every thread blocked in accept(): libfcgi returns -1 once
	 * shutdown is pending and accept fails. */
	FCGX_ShutdownPending();
	shutdown(srv->listen_fd, SHUT_RDWR);
	for (int i = 0; i < started; i++)
		pthread_join(threads[i], NULL);
	free(threads);
	return 0;
}

int
main(int argc, char **argv)
{
	struct options opt;
	struct lb_config *cfg;
	struct server srv = { NULL, NULL, 0, NULL };
	struct lb_error err;
	enum log_level level;
	int rc, nthreads;

	rc = parse_options(argc, argv, &opt);
	if (rc != 0)
		return rc > 0 ? 0 : 2;
	cfg = load_config(&opt);
	if (cfg == NULL)
		return opt.check_config ? 1 : 2;
	if (opt.check_config) {
		printf("configuration OK: %zu route%s\n", cfg->nroutes, cfg->nroutes == 1 ? "" : "s");
		config_free(cfg);
		return 0;
	}
	if (log_parse_level(cfg->log_level, &level) == 0)
		log_set_level(level);
	nthreads = opt.threads > 0 ? opt.threads : cfg->threads;
	srv.cfg = cfg;

	if (FCGX_Init() != 0 || open_listener(&srv, opt.listen ? opt.listen : cfg->listen, &opt) != 0) {
		config_free(cfg);
		free(srv.unix_path);
		return 1;
	}
	lb_error_clear(&err);
	srv.worker = worker_create(cfg, &err);
	if (srv.worker == NULL) {
		fprintf(stderr, "lakebase-fcgi: cannot start: %s\n", err.detail);
		rc = 1;
	} else {
		rc = serve(&srv, nthreads) == 0 ? 0 : 1;
		worker_destroy(srv.worker);
	}
	if (srv.unix_path != NULL) {
		unlink(srv.unix_path);
		free(srv.unix_path);
	}
	config_free(cfg);
	log_info("stopped");
	return rc;
}
