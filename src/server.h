/*
 * server.h - one worker process: threads that accept FastCGI requests on a
 * listening socket and answer them through the worker (worker.h), until a
 * stop signal, then a graceful drain. The same process runs alone (--listen
 * without --workers), under the supervisor, or under a FastCGI process
 * manager (mod_fcgid, spawn-fcgi). Also the one-request CGI mode.
 *
 * Signals, in every mode: SIGTERM/SIGINT stop accepting, let the requests
 * in flight finish (at most cfg->shutdown_grace_ms), close every pool and
 * return 0. SIGQUIT exits at once (status 1). SIGUSR1 reopens the log file.
 * SIGHUP is ignored: reloading is the supervisor's job.
 */
#ifndef LB_SERVER_H
#define LB_SERVER_H

#include <stdbool.h>

#include "config.h"
#include "request.h"
#include "worker.h"

/* Exit statuses of a worker process (the supervisor reads them: only a
 * retirement is an expected exit it did not ask for). */
#define SERVER_EXIT_OK		0	/* stopped by a signal */
#define SERVER_EXIT_ABANDONED	1	/* SIGQUIT, or the grace period ran out */
#define SERVER_EXIT_STARTUP	3	/* could not start serving */
#define SERVER_EXIT_RETIRED	4	/* served max_requests and drained */
#define SERVER_EXIT_LISTENER	5	/* the listening socket failed; drained */

struct server_options {
	const struct lb_config *cfg;
	int listen_fd;
	int threads;
	long max_requests;       /* stop on our own after this many requests; 0: never */
	int ready_fd;            /* >= 0: our pid is written here once we serve, then it is closed */
	const char *role;        /* for the logs: "server", "worker", "managed" */
	bool listener_shared;    /* other processes accept on listen_fd too */
	bool notify_systemd;     /* tell systemd (Type=notify) when we serve and stop */
};

/*
 * Serves until stopped; returns the process exit status. Call it before
 * any other thread exists: it blocks the signals it takes with sigwait in
 * the calling thread, and every thread it starts inherits that.
 */
int server_run(const struct server_options *opt);

/* CGI: answers the one request in the environment and on stdin, on stdout.
 * Returns 0 once a response was written. */
int server_run_cgi(const struct lb_config *cfg);

/* CGI: answers with this error (no worker needed). 0 once written. */
int server_cgi_fail(const struct lb_error *err);

/*
 * Applies a mount prefix ("/api") to a raw request path, in place:
 * "/api/todos" becomes "/todos", "/api" and "/api/" become "/". Returns
 * false when the path is outside the prefix ("/apix", "/other").
 */
bool server_strip_mount_prefix(const char *prefix, char *path);

/* The request path shared by every mode: mount prefix, then the worker. */
void server_answer(struct worker *w, const struct lb_config *cfg, struct http_request *req,
		   struct http_response *resp);

#endif
