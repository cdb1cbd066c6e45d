/*
 * supervisor.h - the pre-fork supervisor (the php-fpm model: nginx does not
 * spawn FastCGI applications). It holds the listening socket and N worker
 * processes that share it, each running server_run().
 *
 *   worker exits         retired (max_requests, exit 4): replaced at once;
 *                        any other exit not asked for is a death: restarted,
 *                        after quick deaths in a row with a growing delay
 *                        (a crash loop is logged, not spun); gives up only
 *                        while no worker has ever served
 *   SIGTERM, SIGINT      workers stop accepting and finish their requests
 *                        (shutdown_grace_ms), then the supervisor returns 0
 *   SIGQUIT              workers exit at once; returns 1
 *   SIGHUP               the configuration is re-read and validated; if
 *                        valid, a new generation of workers starts (with
 *                        the running listen, user, group, pidfile,
 *                        log_file and socket_*: they need a restart), and
 *                        only once all of them serve are the old ones
 *                        drained; if not, nothing changes and the problems
 *                        are logged
 *   SIGUSR1              the log file is reopened, by every process
 *
 * The supervisor itself never opens a database connection and keeps its
 * privileges (like nginx's master): each worker drops to `user`/`group`
 * right after fork, before it touches anything else.
 */
#ifndef LB_SUPERVISOR_H
#define LB_SUPERVISOR_H

#include "config.h"

/* Loads the configuration again (file, environment, command line). NULL
 * when it is invalid; the problems are logged. */
typedef struct lb_config *(*supervisor_load_fn)(void *ctx);

struct supervisor_options {
	struct lb_config *cfg;      /* taken over: the supervisor frees it */
	supervisor_load_fn reload;
	void *reload_ctx;
	int listen_fd;              /* shared by every worker; non-blocking */
	int daemon_ready_fd;        /* proc_daemonize's, or -1 */
};

/* Runs until stopped; returns the exit status. */
int supervisor_run(struct supervisor_options *opt);

/* The number of workers a configuration asks for ("auto": CPUs). */
int supervisor_workers(const struct lb_config *cfg);

#endif
