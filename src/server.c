/*
 * server.c - one worker process serving FastCGI (see server.h), and CGI.
 *
 * Accepting without libfcgi's blocking accept: the listening socket is
 * non-blocking, one thread per process at a time waits for it in
 * epoll_wait() (with a wake-up pipe beside it), and FCGX_Accept_r then
 * takes the connection, or finds that another thread or process was
 * quicker (EAGAIN). Under a supervisor a new connection wakes one
 * process's waiting thread, not every worker's (watch_listener). Waiting
 * is what makes a graceful stop possible at all: a thread blocked in
 * accept() can only be woken by shutting the socket down, which
 * would also stop the other processes sharing it (a reload's new workers),
 * or by a signal, which libfcgi answers by failing whatever read or write
 * it interrupts, in-flight requests included.
 *
 * Signals are blocked in every thread and taken with sigwait() here:
 * libfcgi's own SIGTERM handler only sets a flag, so a threaded process
 * would otherwise ignore kill.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <fcgiapp.h>

#include "clock.h"
#include "log.h"
#include "process.h"
#include "responder.h"
#include "server.h"

extern char **environ;

/* How often the drain looks at its threads and its signals. */
#define DRAIN_TICK_MS 20
/* Threads with no request in flight leave as soon as the drain wakes them:
 * they get this long whatever the grace period (0 included), so that a
 * stop with nothing in flight is clean. Below the supervisor's margin
 * beyond the grace period (STOP_MARGIN_MS). */
#define DRAIN_IDLE_MS 1000
/* A failing accept (EMFILE, ...) is retried after this pause, not spun on. */
#define ACCEPT_ERROR_PAUSE_MS 100
/* The most a request's end waits for the web server's end-of-input record. */
#define INPUT_END_WAIT_MS 1000

struct server;

struct request_thread {
	struct server *srv;
	pthread_t tid;
	bool running;
	pthread_mutex_t lock;     /* guards kept_fd against the drain */
	int kept_fd;              /* >= 0: waiting for the next request on this kept connection */
};

struct server {
	const struct server_options *opt;
	struct worker *worker;
	pthread_t main_thread;
	int wake[2];              /* written once on stop; never drained */
	int epoll_fd;             /* the listening socket and wake[0] */
	bool listen_exclusive;    /* watched with EPOLLEXCLUSIVE */
	pthread_mutex_t accept_lock;  /* one thread per process waits in epoll_wait() */
	atomic_bool stopping;
	atomic_bool retiring;     /* max_requests reached */
	atomic_bool listener_broken; /* stopping because the socket failed */
	atomic_long served;
	atomic_int in_flight;
	struct request_thread *threads;
	int nthreads;
};

/* ---- the mount prefix, and the request path of every mode ---- */

bool
server_strip_mount_prefix(const char *prefix, char *path)
{
	size_t n = strlen(prefix);

	if (strncmp(path, prefix, n) != 0 || (path[n] != '\0' && path[n] != '/'))
		return false;
	if (path[n] == '\0' || (path[n] == '/' && path[n + 1] == '\0')) {
		path[0] = '/';
		path[1] = '\0';
	} else {
		memmove(path, path + n, strlen(path + n) + 1);
	}
	return true;
}

void
server_answer(struct worker *w, const struct lb_config *cfg, struct http_request *req,
	      struct http_response *resp)
{
	struct lb_error err;

	lb_error_clear(&err);
	if (cfg->mount_prefix != NULL && !server_strip_mount_prefix(cfg->mount_prefix, req->path)) {
		lb_error_set(&err, LB_ERR_NOT_FOUND, "No such resource.", "path outside mount_prefix %s",
			     cfg->mount_prefix);
		worker_reject(w, req, &err, resp);
		return;
	}
	worker_handle(w, req, resp);
}

/* ---- signals and logs ---- */

static void
ignore_signal(int sig)
{
	(void)sig;
}

/*
 * Installs a handler of ours for the signals we take (before FCGX_Init:
 * libfcgi installs its flag-setting handler only where the disposition is
 * still the default; not SIG_IGN, or the signal would be discarded before
 * sigwait sees it) and blocks them; the threads started later inherit the
 * mask.
 */
static void
take_signals(sigset_t *set)
{
	static const int sigs[] = { SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1 };
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = ignore_signal;
	sigemptyset(&sa.sa_mask);
	sigemptyset(set);
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
		sigaddset(set, sigs[i]);
		sigaction(sigs[i], &sa, NULL);
	}
	pthread_sigmask(SIG_BLOCK, set, NULL);
	signal(SIGPIPE, SIG_IGN);
}

static void
reopen_log(const struct lb_config *cfg)
{
	struct lb_error err;

	if (cfg->log_file == NULL)
		return;
	if (proc_log_open(cfg->log_file, (uid_t)-1, (gid_t)-1, &err) != 0)
		log_warn("cannot reopen the log file", "detail", err.detail);
	else
		log_info("log file reopened");
}

/* ---- accepting ---- */

/*
 * The listening socket in the epoll set the accept threads wait on:
 * exclusive where the kernel knows EPOLLEXCLUSIVE (Linux 4.5), so that
 * processes sharing the socket are not all woken for each connection, all
 * but one then finding nothing to accept (two workers, one user: 5.5
 * context switches per request, 3.2-4.0 without). The kernel wakes the
 * first exclusive waiter in the socket's queue, which would always be the
 * same process while it has a thread waiting; so a process sharing the
 * socket puts itself back at the end of the queue when it is woken
 * (requeue_listener), and connections go round the processes, each of
 * which has its own pools.
 */
static int
watch_listener(struct server *srv)
{
	struct epoll_event ev = { .events = EPOLLIN | EPOLLEXCLUSIVE, .data.fd = srv->opt->listen_fd };

	srv->listen_exclusive = epoll_ctl(srv->epoll_fd, EPOLL_CTL_ADD, srv->opt->listen_fd, &ev) == 0;
	if (srv->listen_exclusive)
		return 0;
	if (errno != EINVAL)
		return -1;
	if (srv->opt->listener_shared)
		log_info("the kernel has no EPOLLEXCLUSIVE (Linux < 4.5): each connection wakes every process on the socket");
	ev.events = EPOLLIN;
	return epoll_ctl(srv->epoll_fd, EPOLL_CTL_ADD, srv->opt->listen_fd, &ev);
}

static int
requeue_listener(struct server *srv)
{
	if (epoll_ctl(srv->epoll_fd, EPOLL_CTL_DEL, srv->opt->listen_fd, NULL) != 0)
		return -1;
	return watch_listener(srv);
}

/* The epoll set of the listening socket and the wake-up pipe. */
static int
accept_epoll_create(struct server *srv)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = srv->wake[0] };

	srv->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	if (srv->epoll_fd < 0)
		return -1;
	if (watch_listener(srv) != 0 ||
	    epoll_ctl(srv->epoll_fd, EPOLL_CTL_ADD, srv->wake[0], &ev) != 0)
		return -1;   /* server_free closes epoll_fd */
	return 0;
}

/* The listening socket failed, or could not be watched again: nothing to
 * accept from any more, so the process stops (and a supervisor starts
 * another). */
static void
listener_failed(struct server *srv, const char *error)
{
	log_error("the listening socket failed: stopping", "error", error);
	atomic_store(&srv->listener_broken, true);
	atomic_store(&srv->stopping, true);
	pthread_kill(srv->main_thread, SIGTERM);
}

/* Waits until the listening socket has a connection (true) or the server
 * stops (false). */
static bool
wait_for_connection(struct server *srv)
{
	struct epoll_event ev[2];
	bool ready = false, woken = false;
	uint32_t listen_events = 0;
	int n;

	pthread_mutex_lock(&srv->accept_lock);
	while (!atomic_load(&srv->stopping)) {
		n = epoll_wait(srv->epoll_fd, ev, 2, -1);
		if (n < 0 && errno == EINTR)
			continue;
		for (int i = 0; i < n; i++) {
			if (ev[i].data.fd == srv->wake[0])
				woken = true;
			else
				listen_events = ev[i].events;
		}
		if (woken)
			break;
		if (listen_events != EPOLLIN) {
			listener_failed(srv, n < 0 ? strerror(errno) : "error or hang-up on the socket");
			break;
		}
		if (srv->listen_exclusive && srv->opt->listener_shared && requeue_listener(srv) != 0) {
			listener_failed(srv, strerror(errno));
			break;
		}
		ready = true;
		break;
	}
	pthread_mutex_unlock(&srv->accept_lock);
	return ready;
}

/* With nginx's fastcgi_keep_conn on, libfcgi keeps the connection after a
 * request (FCGX_Request.ipcFd) and the next FCGX_Accept_r reads the next
 * request from it. The drain shuts such an idle connection's read side so
 * the thread is not held until nginx closes it. */
static int
accept_on_kept_connection(struct request_thread *rt, FCGX_Request *fcgx)
{
	int rc;

	pthread_mutex_lock(&rt->lock);
	if (atomic_load(&rt->srv->stopping)) {
		pthread_mutex_unlock(&rt->lock);
		return -EINTR;
	}
	rt->kept_fd = fcgx->ipcFd;
	pthread_mutex_unlock(&rt->lock);
	rc = FCGX_Accept_r(fcgx);
	pthread_mutex_lock(&rt->lock);
	rt->kept_fd = -1;
	pthread_mutex_unlock(&rt->lock);
	return rc;
}

/* FCGX_Accept_r answers -errno. EAGAIN: another thread or process took
 * the connection first. */
static void
accept_failed(int rc)
{
	static atomic_llong last_logged_ms;
	long long now;

	if (rc == -EAGAIN || rc == -EWOULDBLOCK) {
		log_debug("nothing to accept: another thread or process took the connection");
		return;
	}
	if (rc == -EINTR || rc == -ECONNABORTED)
		return;
	now = clock_monotonic_ms();
	if (now - atomic_load(&last_logged_ms) >= 10000) {
		atomic_store(&last_logged_ms, now);
		log_warn("accepting a FastCGI connection failed", "error", rc < 0 && rc > -4096 ? strerror(-rc) : "libfcgi");
	}
	clock_sleep_ms(ACCEPT_ERROR_PAUSE_MS);
}

/* The next request for this thread; false once the server stops. */
static bool
next_request(struct request_thread *rt, FCGX_Request *fcgx)
{
	struct server *srv = rt->srv;
	int rc;

	for (;;) {
		if (atomic_load(&srv->stopping))
			return false;
		if (fcgx->ipcFd >= 0) {
			rc = accept_on_kept_connection(rt, fcgx);
		} else {
			if (!wait_for_connection(srv))
				return false;
			rc = FCGX_Accept_r(fcgx);
		}
		if (rc >= 0)
			return true;
		accept_failed(rc);
	}
}

/* ---- serving ---- */

/* Serves one request; true if its body was read whole. */
static bool
serve_fcgx(struct server *srv, FCGX_Request *fcgx)
{
	const struct lb_config *cfg = srv->opt->cfg;
	struct http_request req;
	struct http_response resp;
	struct lb_error err;
	bool read_whole;

	lb_error_clear(&err);
	response_init(&resp);
	read_whole = request_from_fcgx(fcgx, cfg->max_body_bytes, &req, &err) == 0;
	if (read_whole)
		server_answer(srv->worker, cfg, &req, &resp);
	else
		worker_reject(srv->worker, &req, &err, &resp);  /* not even readable */
	response_send_fcgx(fcgx, &resp);
	response_free(&resp);
	request_free(&req);
	return read_whole;
}

/*
 * Reads the input's end (the empty FCGI_STDIN record, which the web server
 * sends right after the body): true once it is read, or once a peer that
 * withholds it was waited for INPUT_END_WAIT_MS (the socket is closed
 * next either way, so its receive timeout need not be restored).
 */
static bool
read_input_end(FCGX_Request *fcgx)
{
	struct timeval wait = { INPUT_END_WAIT_MS / 1000, (INPUT_END_WAIT_MS % 1000) * 1000 };

	if (FCGX_HasSeenEOF(fcgx->in) == EOF)
		return true;
	(void)setsockopt(fcgx->ipcFd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof(wait));
	return FCGX_GetChar(fcgx->in) == EOF;
}

/*
 * Ends the request, and the connection unless the web server keeps it
 * (fastcgi_keep_conn). libfcgi's close shuts the write side and then waits
 * for the web server to close first, reading whatever it still sends, so
 * that unread input cannot turn the close into a reset that loses the
 * response; that costs every request a sleep and a wake-up while the web
 * server reads the response. When the body was read whole and the input's
 * end follows, nothing more comes on the connection: it is closed at once
 * (libfcgi's "detached" close). A body refused unread keeps the waiting
 * close.
 */
static void
finish_fcgx(FCGX_Request *fcgx, bool body_read_whole)
{
	if (!fcgx->keepConnection && body_read_whole && read_input_end(fcgx))
		FCGX_Detach(fcgx);   /* libfcgi clears it when it closes */
	FCGX_Finish_r(fcgx);
}

/* max_requests: the request that reaches it starts the same drain as
 * SIGTERM; the supervisor then starts a fresh worker. */
static void
count_request(struct server *srv)
{
	long n = atomic_fetch_add(&srv->served, 1) + 1;

	if (srv->opt->max_requests > 0 && n == srv->opt->max_requests) {
		atomic_store(&srv->retiring, true);
		pthread_kill(srv->main_thread, SIGTERM);
	}
}

static void *
request_thread_main(void *arg)
{
	struct request_thread *rt = arg;
	struct server *srv = rt->srv;
	FCGX_Request fcgx;

	if (FCGX_InitRequest(&fcgx, srv->opt->listen_fd, 0) != 0)
		return NULL;
	while (next_request(rt, &fcgx)) {
		atomic_fetch_add(&srv->in_flight, 1);
		finish_fcgx(&fcgx, serve_fcgx(srv, &fcgx));
		atomic_fetch_sub(&srv->in_flight, 1);
		count_request(srv);
	}
	FCGX_Free(&fcgx, 1);
	return NULL;
}

static int
start_threads(struct server *srv)
{
	int n = srv->opt->threads;

	srv->threads = calloc((size_t)n, sizeof(*srv->threads));
	if (srv->threads == NULL)
		return -1;
	for (int i = 0; i < n; i++) {
		struct request_thread *rt = &srv->threads[i];

		rt->srv = srv;
		rt->kept_fd = -1;
		pthread_mutex_init(&rt->lock, NULL);
		srv->nthreads++;
		if (pthread_create(&rt->tid, NULL, request_thread_main, rt) != 0)
			break;
		rt->running = true;
	}
	return srv->threads[0].running ? 0 : -1;
}

static void
begin_stop(struct server *srv)
{
	ssize_t n;

	atomic_store(&srv->stopping, true);
	do {
		n = write(srv->wake[1], "x", 1);
	} while (n < 0 && errno == EINTR);
	for (int i = 0; i < srv->nthreads; i++) {
		struct request_thread *rt = &srv->threads[i];

		pthread_mutex_lock(&rt->lock);
		if (rt->kept_fd >= 0)
			shutdown(rt->kept_fd, SHUT_RD);
		pthread_mutex_unlock(&rt->lock);
	}
}

/* Joins every thread that has finished; returns how many still run. */
static int
reap_threads(struct server *srv)
{
	int running = 0;

	for (int i = 0; i < srv->nthreads; i++) {
		struct request_thread *rt = &srv->threads[i];

		if (rt->running && pthread_tryjoin_np(rt->tid, NULL) == 0)
			rt->running = false;
		running += rt->running;
	}
	return running;
}

/* The grace period is over and a request is still running (or idle
 * threads have not left in DRAIN_IDLE_MS). */
static bool
drain_over(const struct server *srv, long long started_ms, long long now)
{
	if (now - started_ms < srv->opt->cfg->shutdown_grace_ms)
		return false;
	return atomic_load(&srv->in_flight) > 0 || now - started_ms >= DRAIN_IDLE_MS;
}

/*
 * Stops accepting and waits for the requests in flight, at most the grace
 * period, still answering SIGQUIT (exit now) and SIGUSR1. Returns 0 when
 * every thread has finished.
 */
static int
drain(struct server *srv, const sigset_t *set)
{
	const struct lb_config *cfg = srv->opt->cfg;
	long long started_ms = clock_monotonic_ms();
	struct timespec tick = { 0, DRAIN_TICK_MS * 1000000L };
	char count[16], grace[16];
	int sig;

	snprintf(count, sizeof(count), "%d", atomic_load(&srv->in_flight));
	snprintf(grace, sizeof(grace), "%d", cfg->shutdown_grace_ms);
	log_info("shutting down: finishing in-flight requests", "in_flight", count, "grace_ms", grace,
		 "reason", atomic_load(&srv->retiring) ? "max_requests reached" : NULL);
	begin_stop(srv);
	while (reap_threads(srv) > 0) {
		if (drain_over(srv, started_ms, clock_monotonic_ms())) {
			snprintf(count, sizeof(count), "%d", atomic_load(&srv->in_flight));
			log_error("shutdown grace period over: abandoning the requests still running",
				  "in_flight", count, "grace_ms", grace);
			return -1;
		}
		sig = sigtimedwait(set, NULL, &tick);
		if (sig == SIGQUIT) {
			log_warn("SIGQUIT: exiting immediately");
			_exit(SERVER_EXIT_ABANDONED);
		}
		if (sig == SIGUSR1)
			reopen_log(cfg);
	}
	return 0;
}

/* Waits for the signal that stops us, answering the others. */
static void
wait_for_stop(struct server *srv, const sigset_t *set)
{
	int sig;

	for (;;) {
		if (sigwait(set, &sig) != 0)
			continue;
		switch (sig) {
		case SIGTERM:
		case SIGINT:
			return;
		case SIGQUIT:
			log_warn("SIGQUIT: exiting immediately");
			_exit(SERVER_EXIT_ABANDONED);
		case SIGUSR1:
			reopen_log(srv->opt->cfg);
			break;
		default:
			log_info("signal ignored", "signal", "HUP",
				 "hint", strcmp(srv->opt->role, "worker") == 0 ? NULL :
				 "configuration reloads need the supervisor (--workers)");
			break;
		}
	}
}

static void
notify_ready(int *fd)
{
	pid_t pid = getpid();
	ssize_t n;

	if (*fd < 0)
		return;
	do {
		n = write(*fd, &pid, sizeof(pid));
	} while (n < 0 && errno == EINTR);
	close(*fd);
	*fd = -1;
}

static void
server_free(struct server *srv)
{
	for (int i = 0; i < srv->nthreads; i++)
		pthread_mutex_destroy(&srv->threads[i].lock);
	free(srv->threads);
	pthread_mutex_destroy(&srv->accept_lock);
	if (srv->epoll_fd >= 0)
		close(srv->epoll_fd);
	if (srv->wake[0] >= 0) {
		close(srv->wake[0]);
		close(srv->wake[1]);
	}
}

/* After a clean drain: why we stopped, for whoever started us. */
static int
exit_status(const struct server *srv)
{
	if (atomic_load(&srv->listener_broken))
		return SERVER_EXIT_LISTENER;
	if (atomic_load(&srv->retiring))
		return SERVER_EXIT_RETIRED;
	return SERVER_EXIT_OK;
}

int
server_run(const struct server_options *opt)
{
	struct server srv;
	struct lb_error err;
	sigset_t set;
	char threads[16];
	int ready_fd = opt->ready_fd, rc;

	memset(&srv, 0, sizeof(srv));
	srv.opt = opt;
	srv.main_thread = pthread_self();
	srv.wake[0] = srv.wake[1] = -1;
	srv.epoll_fd = -1;
	pthread_mutex_init(&srv.accept_lock, NULL);
	take_signals(&set);
	if (FCGX_Init() != 0 || pipe2(srv.wake, O_CLOEXEC) != 0 || accept_epoll_create(&srv) != 0) {
		log_error("cannot start: libfcgi, pipe or epoll initialisation failed");
		server_free(&srv);
		return SERVER_EXIT_STARTUP;
	}
	lb_error_clear(&err);
	srv.worker = worker_create(opt->cfg, &err);
	if (srv.worker == NULL) {
		log_error("cannot start", "detail", err.detail);
		server_free(&srv);
		return SERVER_EXIT_STARTUP;
	}
	if (start_threads(&srv) != 0) {
		log_error("cannot start: no request thread");
		worker_destroy(srv.worker);
		server_free(&srv);
		return SERVER_EXIT_STARTUP;
	}
	snprintf(threads, sizeof(threads), "%d", srv.nthreads);
	log_info("serving", "threads", threads, "role", opt->role);
	notify_ready(&ready_fd);
	if (opt->notify_systemd)
		proc_notify("READY=1");

	wait_for_stop(&srv, &set);
	if (opt->notify_systemd)
		proc_notify("STOPPING=1");
	if (drain(&srv, &set) != 0)
		_exit(SERVER_EXIT_ABANDONED);   /* threads still use the worker: the kernel closes everything */
	rc = exit_status(&srv);
	worker_destroy(srv.worker);
	server_free(&srv);
	return rc;
}

/* ---- CGI ---- */

/* Answers with an error when there is no worker to do it. */
static void
cgi_error_response(const struct lb_error *err, struct http_response *resp)
{
	char rid[REQUEST_ID_MAX + 1];

	request_generate_id(rid);
	resp->status = lb_errcode_http_status(err->code);
	response_add_header(resp, "X-Request-Id", rid);
	response_add_header(resp, "Cache-Control", "no-store");
	responder_error_json(err, rid, &resp->body);
	log_error("cannot serve the CGI request", "request_id", rid, "detail", err->detail);
}

int
server_run_cgi(const struct lb_config *cfg)
{
	struct worker *w;
	struct http_request req;
	struct http_response resp;
	struct lb_error err;
	int rc;

	signal(SIGPIPE, SIG_IGN);
	lb_error_clear(&err);
	response_init(&resp);
	w = worker_create(cfg, &err);
	if (w == NULL) {
		cgi_error_response(&err, &resp);
	} else {
		if (request_from_cgi(environ, stdin, cfg->max_body_bytes, &req, &err) == 0)
			server_answer(w, cfg, &req, &resp);
		else
			worker_reject(w, &req, &err, &resp);
	}
	rc = response_send_cgi(stdout, &resp) == 0 ? 0 : 1;
	response_free(&resp);
	if (w != NULL) {
		request_free(&req);
		worker_destroy(w);
	}
	return rc;
}

int
server_cgi_fail(const struct lb_error *err)
{
	struct http_response resp;
	int rc;

	response_init(&resp);
	cgi_error_response(err, &resp);
	rc = response_send_cgi(stdout, &resp);
	response_free(&resp);
	return rc;
}
