/*
 * supervisor.c - the pre-fork supervisor (see supervisor.h).
 *
 * One thread, one loop: poll() on a signalfd (every signal we handle is
 * blocked and read from it, SIGCHLD included) and on a pipe where each new
 * worker writes its pid once it serves, with a timeout for the next timer
 * (a delayed restart, a reload's or a stop's deadline).
 *
 * Workers are grouped in generations: a reload starts generation g+1 with
 * the new configuration and stops generation g only when all of g+1
 * serve, so the socket always has workers accepting on it and no request
 * is refused during a reload.
 */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "process.h"
#include "server.h"
#include "supervisor.h"

/* A worker that dies sooner than this after starting counts as a quick
 * death; quick deaths in a row delay the next start. A worker that serves
 * and has run this long, started since the last death, ends the row. */
#define QUICK_DEATH_MS		5000
#define BACKOFF_FIRST_MS	100
#define BACKOFF_MAX_MS		30000
/* While no worker has ever served, this many deaths in a row end the
 * supervisor: the configuration cannot work (bad user, ...). */
#define STARTUP_GIVE_UP		5
/* A reload's workers must all serve within this, or the reload is undone. */
#define RELOAD_START_MS		30000
/* Beyond the grace period, before workers that ignore SIGTERM are killed. */
#define STOP_MARGIN_MS		2000
/* SIGQUIT: how long workers get to exit before they are killed. */
#define QUIT_WAIT_MS		2000

struct child {
	pid_t pid;
	unsigned generation;
	bool ready;               /* has reported that it serves */
	bool stop_sent;           /* we asked it to stop: its exit is expected */
	long long started_ms;
};

struct supervisor {
	struct supervisor_options *opt;
	pid_t pid;
	int sigfd;
	int ready_pipe[2];
	struct child *children;
	size_t nchildren, cap;

	unsigned generation;      /* the one serving, with opt->cfg */
	struct lb_config *next_cfg;   /* a reload's, until its workers serve */
	long long reload_deadline_ms;
	bool reload_again;        /* SIGHUP during a reload */

	bool ever_served;         /* some worker has served: never give up */
	bool all_ready_told;      /* "every worker serves" logged and notified */
	int quick_deaths;         /* deaths in a row (see QUICK_DEATH_MS) */
	long long last_death_ms;
	int pending_starts;       /* replacements waiting for restart_at_ms */
	long long restart_at_ms;

	bool stopping;
	long long stop_deadline_ms;
	int exit_status;
};

int
supervisor_workers(const struct lb_config *cfg)
{
	return cfg->workers == CONFIG_WORKERS_AUTO ? proc_cpu_count() : cfg->workers;
}

/* ---- children ---- */

static struct child *
find_child(struct supervisor *sv, pid_t pid)
{
	for (size_t i = 0; i < sv->nchildren; i++) {
		if (sv->children[i].pid == pid)
			return &sv->children[i];
	}
	return NULL;
}

static int
add_child(struct supervisor *sv, pid_t pid, unsigned generation)
{
	struct child *grown;

	if (sv->nchildren == sv->cap) {
		size_t cap = sv->cap ? sv->cap * 2 : 16;

		grown = realloc(sv->children, cap * sizeof(*grown));
		if (grown == NULL)
			return -1;
		sv->children = grown;
		sv->cap = cap;
	}
	sv->children[sv->nchildren++] = (struct child){
		.pid = pid, .generation = generation, .started_ms = clock_monotonic_ms(),
	};
	return 0;
}

static size_t
count_children(const struct supervisor *sv, unsigned generation, bool ready_only)
{
	size_t n = 0;

	for (size_t i = 0; i < sv->nchildren; i++) {
		const struct child *c = &sv->children[i];

		if (c->generation == generation && !c->stop_sent && (c->ready || !ready_only))
			n++;
	}
	return n;
}

static void
signal_generation(struct supervisor *sv, unsigned generation, bool all, int sig)
{
	for (size_t i = 0; i < sv->nchildren; i++) {
		struct child *c = &sv->children[i];

		if (all || c->generation == generation) {
			kill(c->pid, sig);
			if (sig == SIGTERM || sig == SIGQUIT || sig == SIGKILL)
				c->stop_sent = true;
		}
	}
}

/* ---- a worker process, after fork ---- */

static int
worker_main(struct supervisor *sv, const struct lb_config *cfg)
{
	struct server_options so;
	struct lb_error err;

	close(sv->sigfd);
	close(sv->ready_pipe[0]);
	if (sv->opt->daemon_ready_fd >= 0)
		close(sv->opt->daemon_ready_fd);
	if (proc_drop_privileges(cfg->user, cfg->group, &err) != 0) {
		log_error("worker cannot start", "detail", err.detail);
		return SERVER_EXIT_STARTUP;
	}
	/* After the privilege change, which clears it: a worker must not
	 * outlive a supervisor killed without a chance to stop it. */
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	if (getppid() != sv->pid)
		return SERVER_EXIT_OK;
	/* A reload's workers start before the supervisor adopts their config. */
	config_apply_logging(cfg);
	memset(&so, 0, sizeof(so));
	so.cfg = cfg;
	so.listen_fd = sv->opt->listen_fd;
	so.threads = cfg->threads;
	so.max_requests = cfg->max_requests;
	so.ready_fd = sv->ready_pipe[1];
	so.role = "worker";
	so.listener_shared = true;
	return server_run(&so);
}

static int
spawn_worker(struct supervisor *sv, const struct lb_config *cfg, unsigned generation)
{
	pid_t pid;

	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0) {
		log_error("cannot start a worker: fork failed", "error", strerror(errno));
		return -1;
	}
	if (pid == 0)
		exit(worker_main(sv, cfg));
	if (add_child(sv, pid, generation) != 0) {
		log_error("out of memory: stopping an untracked worker");
		kill(pid, SIGKILL);
		return -1;
	}
	return 0;
}

/* ---- restarts ---- */

static long long
backoff_ms(int quick_deaths)
{
	long long ms;

	if (quick_deaths <= 1)
		return 0;
	ms = (long long)BACKOFF_FIRST_MS << (quick_deaths - 2 > 10 ? 10 : quick_deaths - 2);
	return ms > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : ms;
}

static void
describe_status(int status, char *what, size_t len, char *value, size_t vlen)
{
	if (WIFSIGNALED(status)) {
		const char *name = sigabbrev_np(WTERMSIG(status));

		snprintf(what, len, "signal");
		if (name != NULL)
			snprintf(value, vlen, "%s", name);
		else
			snprintf(value, vlen, "%d", WTERMSIG(status));
	} else {
		snprintf(what, len, "exit_status");
		snprintf(value, vlen, "%d", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	}
}

static bool
exited_with(int status, int code)
{
	return WIFEXITED(status) && WEXITSTATUS(status) == code;
}

/* Served and lived past the quick-death window. */
static bool
has_held(const struct child *c, long long now)
{
	return c->ready && now - c->started_ms >= QUICK_DEATH_MS;
}

/*
 * The row of quick deaths is over once a worker started since the last
 * death has held: the crash loop ended, and a later death starts a new row
 * without backoff. Workers older than the last death do not count, or a
 * healthy one would hide a slot that keeps dying. Called before exited
 * children are forgotten, so a worker that held and then retired counts.
 */
static void
end_row_if_held(struct supervisor *sv)
{
	long long now = clock_monotonic_ms();

	for (size_t i = 0; i < sv->nchildren; i++) {
		const struct child *c = &sv->children[i];

		if (c->started_ms >= sv->last_death_ms && has_held(c, now))
			sv->quick_deaths = 0;
	}
}

static void begin_stop(struct supervisor *sv, const char *why, int exit_status);

/*
 * A worker of the serving generation ended without being asked to: a
 * retirement (max_requests) is replaced at once; any other exit, a clean
 * one included (its listening socket failed, ...), is a death.
 */
static void
replace_worker(struct supervisor *sv, const struct child *c, int status)
{
	long long now = clock_monotonic_ms(), up = now - c->started_ms, delay;
	char pid[16], uptime[24], what[16], value[16], in[24], deaths[16];

	snprintf(pid, sizeof(pid), "%ld", (long)c->pid);
	snprintf(uptime, sizeof(uptime), "%lld", up);
	describe_status(status, what, sizeof(what), value, sizeof(value));
	if (exited_with(status, SERVER_EXIT_RETIRED)) {
		log_info("worker retired (max_requests): starting a new one", "pid", pid, "uptime_ms", uptime);
		sv->pending_starts++;
		return;
	}
	if (has_held(c, now))
		sv->quick_deaths = 0;	/* a death after a long life starts a new row */
	sv->quick_deaths++;
	sv->last_death_ms = now;
	if (!sv->ever_served && sv->quick_deaths >= STARTUP_GIVE_UP) {
		log_error("workers cannot start: giving up (see the errors above)", "pid", pid, what, value);
		begin_stop(sv, "workers cannot start", 1);
		return;
	}
	delay = backoff_ms(sv->quick_deaths);
	snprintf(in, sizeof(in), "%lld", delay);
	snprintf(deaths, sizeof(deaths), "%d", sv->quick_deaths);
	if (sv->quick_deaths >= 2)
		log_error("crash loop: workers keep dying soon after starting; restarting with a delay",
			  "pid", pid, what, value, "uptime_ms", uptime, "quick_deaths", deaths, "restart_in_ms", in);
	else
		log_error("worker died: restarting it", "pid", pid, what, value, "uptime_ms", uptime);
	sv->pending_starts++;
	if (clock_monotonic_ms() + delay > sv->restart_at_ms)
		sv->restart_at_ms = clock_monotonic_ms() + delay;
}

static void
start_pending(struct supervisor *sv)
{
	while (sv->pending_starts > 0 && !sv->stopping && clock_monotonic_ms() >= sv->restart_at_ms) {
		if (spawn_worker(sv, sv->opt->cfg, sv->generation) != 0) {
			sv->restart_at_ms = clock_monotonic_ms() + 1000;
			return;
		}
		sv->pending_starts--;
	}
}

/* ---- reload ---- */

static bool
same_text(const char *a, const char *b)
{
	return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/*
 * Settings that only a restart applies: the socket and the files the
 * supervisor opened at start, and the user the workers run as (they share
 * the socket, the log file and the credential cache made for it).
 */
static const struct {
	const char *key;
	size_t offset;            /* of its char * in struct lb_config */
} restart_only[] = {
	{ "listen", offsetof(struct lb_config, listen) },
	{ "user", offsetof(struct lb_config, user) },
	{ "group", offsetof(struct lb_config, group) },
	{ "pidfile", offsetof(struct lb_config, pidfile) },
	{ "log_file", offsetof(struct lb_config, log_file) },
	{ "socket_owner", offsetof(struct lb_config, socket_owner) },
	{ "socket_group", offsetof(struct lb_config, socket_group) },
};

static void
warn_restart_only(const char *key)
{
	log_warn("setting changed: it takes effect at the next restart; the running value stays",
		 "key", key);
}

/* A reload keeps the running value of each restart-only setting, and says
 * so when the file changed it. -1: out of memory. */
static int
keep_restart_only(const struct lb_config *running, struct lb_config *next)
{
	for (size_t i = 0; i < sizeof(restart_only) / sizeof(restart_only[0]); i++) {
		const char *kept = *(char *const *)(const void *)((const char *)running + restart_only[i].offset);
		char **field = (char **)(void *)((char *)next + restart_only[i].offset);
		char *copy = NULL;

		if (same_text(kept, *field))
			continue;
		warn_restart_only(restart_only[i].key);
		if (kept != NULL && (copy = strdup(kept)) == NULL)
			return -1;
		free(*field);
		*field = copy;
	}
	if (running->socket_mode != next->socket_mode) {
		warn_restart_only("socket_mode");
		next->socket_mode = running->socket_mode;
	}
	if (next->workers == 0) {
		log_warn("workers 0 (no supervisor) needs a restart: keeping the current number");
		next->workers = running->workers;
	}
	return 0;
}

/* The credential cache belongs to one deployment (credential.c): new
 * workers of another refuse it while the old ones run, which undoes the
 * reload. Says so before trying. */
static void
warn_other_deployment(const struct lb_config *old, const struct lb_config *new)
{
	if (!same_text(old->databricks_host, new->databricks_host) ||
	    !same_text(old->lakebase_endpoint, new->lakebase_endpoint) ||
	    !same_text(old->pg_database, new->pg_database) ||
	    !same_text(old->client_id, new->client_id) ||
	    !same_text(old->static_token, new->static_token))
		log_warn("workspace host, Lakebase endpoint, database or service principal changed: "
			 "the new workers cannot share the running workers' credential cache, so "
			 "this reload fails", "hint", "restart the service to apply it");
}

static void
abort_reload(struct supervisor *sv, const char *why)
{
	log_error("reload failed: the running workers stay", "reason", why);
	signal_generation(sv, sv->generation + 1, false, SIGTERM);
	config_free(sv->next_cfg);
	sv->next_cfg = NULL;
	sv->reload_deadline_ms = 0;
	sv->reload_again = false;
	proc_notify("READY=1");
}

static void
begin_reload(struct supervisor *sv)
{
	struct lb_config *cfg;
	int n;

	if (sv->stopping)
		return;
	if (sv->next_cfg != NULL) {
		log_info("SIGHUP during a reload: another reload follows it");
		sv->reload_again = true;
		return;
	}
	log_info("SIGHUP: reloading the configuration");
	proc_notify("RELOADING=1");
	cfg = sv->opt->reload(sv->opt->reload_ctx);
	if (cfg == NULL) {
		log_error("configuration reload refused: the running configuration stays");
		proc_notify("READY=1");
		return;
	}
	warn_other_deployment(sv->opt->cfg, cfg);
	if (keep_restart_only(sv->opt->cfg, cfg) != 0) {
		log_error("configuration reload: out of memory; the running configuration stays");
		config_free(cfg);
		proc_notify("READY=1");
		return;
	}
	sv->next_cfg = cfg;
	sv->reload_deadline_ms = clock_monotonic_ms() + RELOAD_START_MS;
	n = supervisor_workers(cfg);
	for (int i = 0; i < n; i++) {
		if (spawn_worker(sv, cfg, sv->generation + 1) != 0) {
			abort_reload(sv, "cannot start the new workers");
			return;
		}
	}
}

/* All of the new generation serve: the old one drains. */
static void
finish_reload(struct supervisor *sv)
{
	char gen[16], n[16];

	signal_generation(sv, sv->generation, false, SIGTERM);
	config_free(sv->opt->cfg);
	sv->opt->cfg = sv->next_cfg;
	sv->next_cfg = NULL;
	sv->generation++;
	sv->reload_deadline_ms = 0;
	sv->pending_starts = 0;
	sv->quick_deaths = 0;
	config_apply_logging(sv->opt->cfg);
	snprintf(gen, sizeof(gen), "%u", sv->generation);
	snprintf(n, sizeof(n), "%d", supervisor_workers(sv->opt->cfg));
	log_info("reload complete: new workers serve, the old ones finish their requests",
		 "generation", gen, "workers", n);
	proc_notify("READY=1");
	if (sv->reload_again) {
		sv->reload_again = false;
		begin_reload(sv);
	}
}

/* ---- events ---- */

static void
child_exited(struct supervisor *sv, const struct child *c, int status)
{
	char pid[16], what[16], value[16];

	snprintf(pid, sizeof(pid), "%ld", (long)c->pid);
	describe_status(status, what, sizeof(what), value, sizeof(value));
	if (c->stop_sent || sv->stopping) {
		log_info("worker exited", "pid", pid, what, value);
		/* A worker that had to abandon requests makes the stop unclean. */
		if (sv->stopping && !exited_with(status, SERVER_EXIT_OK) &&
		    !exited_with(status, SERVER_EXIT_RETIRED))
			sv->exit_status = 1;
		return;
	}
	if (sv->next_cfg != NULL && c->generation == sv->generation + 1) {
		log_error("a new worker exited during the reload", "pid", pid, what, value);
		abort_reload(sv, "a new worker exited (see above)");
		return;
	}
	if (c->generation == sv->generation)
		replace_worker(sv, c, status);
}

static void
reap_children(struct supervisor *sv)
{
	struct child gone;
	pid_t pid;
	int status;

	end_row_if_held(sv);
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		struct child *c = find_child(sv, pid);

		if (c == NULL)
			continue;
		gone = *c;
		*c = sv->children[--sv->nchildren];
		child_exited(sv, &gone, status);
	}
}

static void
read_ready(struct supervisor *sv)
{
	pid_t pids[64];
	ssize_t n = read(sv->ready_pipe[0], pids, sizeof(pids));

	for (ssize_t i = 0; n > 0 && i < n / (ssize_t)sizeof(pid_t); i++) {
		struct child *c = find_child(sv, pids[i]);

		if (c != NULL) {
			c->ready = true;
			sv->ever_served = true;
		}
	}
	if (!sv->all_ready_told &&
	    count_children(sv, sv->generation, true) == (size_t)supervisor_workers(sv->opt->cfg)) {
		char n_workers[16];

		sv->all_ready_told = true;
		snprintf(n_workers, sizeof(n_workers), "%d", supervisor_workers(sv->opt->cfg));
		log_info("supervisor ready: every worker serves", "workers", n_workers);
		proc_daemon_ready(&sv->opt->daemon_ready_fd);
		proc_notify("READY=1");
	}
	if (sv->next_cfg != NULL &&
	    count_children(sv, sv->generation + 1, true) == (size_t)supervisor_workers(sv->next_cfg))
		finish_reload(sv);
}

static void
begin_stop(struct supervisor *sv, const char *why, int exit_status)
{
	const struct lb_config *cfg = sv->opt->cfg;
	int grace = cfg->shutdown_grace_ms;
	char grace_text[16];

	if (sv->stopping)
		return;
	sv->stopping = true;
	sv->exit_status = exit_status;
	if (sv->next_cfg != NULL && sv->next_cfg->shutdown_grace_ms > grace)
		grace = sv->next_cfg->shutdown_grace_ms;
	proc_notify("STOPPING=1");
	snprintf(grace_text, sizeof(grace_text), "%d", grace);
	log_info("stopping: workers finish their in-flight requests", "reason", why, "grace_ms", grace_text);
	signal_generation(sv, 0, true, SIGTERM);
	sv->stop_deadline_ms = clock_monotonic_ms() + grace + STOP_MARGIN_MS;
	sv->pending_starts = 0;
}

static void
quit_now(struct supervisor *sv)
{
	long long deadline = clock_monotonic_ms() + QUIT_WAIT_MS;

	log_warn("SIGQUIT: stopping every worker immediately");
	sv->stopping = true;
	sv->exit_status = 1;
	signal_generation(sv, 0, true, SIGQUIT);
	while (sv->nchildren > 0 && clock_monotonic_ms() < deadline) {
		struct timespec tick = { 0, 20 * 1000000L };

		nanosleep(&tick, NULL);
		reap_children(sv);
	}
	sv->stop_deadline_ms = clock_monotonic_ms();
}

static void
reopen_logs(struct supervisor *sv)
{
	const struct lb_config *cfg = sv->opt->cfg;
	uid_t uid = (uid_t)-1;
	gid_t gid = (gid_t)-1;
	struct lb_error err;

	if (cfg->log_file == NULL)
		return;
	if (cfg->user != NULL && proc_resolve_user(cfg->user, &uid, &gid, &err) != 0)
		uid = (uid_t)-1;
	if (cfg->group != NULL && proc_resolve_group(cfg->group, &gid, &err) != 0)
		gid = (gid_t)-1;
	if (proc_log_open(cfg->log_file, uid, gid, &err) != 0) {
		log_warn("cannot reopen the log file", "detail", err.detail);
		return;
	}
	log_info("log file reopened");
	signal_generation(sv, 0, true, SIGUSR1);
}

static void
handle_signals(struct supervisor *sv)
{
	struct signalfd_siginfo si;

	while (read(sv->sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		switch (si.ssi_signo) {
		case SIGCHLD:
			reap_children(sv);
			break;
		case SIGTERM:
			begin_stop(sv, "SIGTERM", 0);
			break;
		case SIGINT:
			begin_stop(sv, "SIGINT", 0);
			break;
		case SIGQUIT:
			quit_now(sv);
			break;
		case SIGHUP:
			begin_reload(sv);
			break;
		case SIGUSR1:
			reopen_logs(sv);
			break;
		default:
			break;
		}
	}
}

/* Milliseconds until the next timer, -1 for none. */
static int
next_timeout(const struct supervisor *sv)
{
	long long now = clock_monotonic_ms(), next = -1;

	if (sv->pending_starts > 0 && !sv->stopping)
		next = sv->restart_at_ms;
	if (sv->reload_deadline_ms > 0 && (next < 0 || sv->reload_deadline_ms < next))
		next = sv->reload_deadline_ms;
	if (sv->stopping && (next < 0 || sv->stop_deadline_ms < next))
		next = sv->stop_deadline_ms;
	if (next < 0)
		return -1;
	return next <= now ? 0 : (int)(next - now > 60000 ? 60000 : next - now);
}

static void
handle_timers(struct supervisor *sv)
{
	long long now = clock_monotonic_ms();

	start_pending(sv);
	if (sv->reload_deadline_ms > 0 && now >= sv->reload_deadline_ms)
		abort_reload(sv, "the new workers did not all start in time");
	if (sv->stopping && sv->nchildren > 0 && now >= sv->stop_deadline_ms) {
		log_error("workers still running after the grace period: killing them");
		signal_generation(sv, 0, true, SIGKILL);
		sv->exit_status = 1;
		/* Reaped as their exits arrive. */
		sv->stop_deadline_ms = now + 60000;
	}
}

static int
setup(struct supervisor *sv, struct supervisor_options *opt)
{
	sigset_t set;

	memset(sv, 0, sizeof(*sv));
	sv->opt = opt;
	sv->pid = getpid();
	sv->generation = 1;
	sv->ready_pipe[0] = sv->ready_pipe[1] = -1;
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGQUIT);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGUSR1);
	/* Blocked: read from the signalfd. The workers inherit the mask, so a
	 * signal that arrives before they take theirs waits for them. */
	sigprocmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	sv->sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (sv->sigfd < 0 || pipe2(sv->ready_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
		log_error("cannot start the supervisor", "error", strerror(errno));
		return -1;
	}
	return 0;
}

int
supervisor_run(struct supervisor_options *opt)
{
	struct supervisor sv;
	struct pollfd pfd[2];
	char n[16];

	if (setup(&sv, opt) != 0)
		return 1;
	snprintf(n, sizeof(n), "%d", supervisor_workers(opt->cfg));
	log_info("supervisor starting workers", "workers", n);
	for (int i = 0; i < supervisor_workers(opt->cfg); i++) {
		if (spawn_worker(&sv, opt->cfg, sv.generation) != 0) {
			sv.pending_starts++;
			sv.restart_at_ms = clock_monotonic_ms() + 1000;
		}
	}
	while (!(sv.stopping && sv.nchildren == 0)) {
		pfd[0].fd = sv.sigfd;
		pfd[0].events = POLLIN;
		pfd[1].fd = sv.ready_pipe[0];
		pfd[1].events = POLLIN;
		if (poll(pfd, 2, next_timeout(&sv)) < 0 && errno != EINTR) {
			log_error("supervisor poll failed", "error", strerror(errno));
			break;
		}
		if (pfd[0].revents & POLLIN)
			handle_signals(&sv);
		if (pfd[1].revents & POLLIN)
			read_ready(&sv);
		handle_timers(&sv);
	}
	config_free(sv.next_cfg);
	free(sv.children);
	close(sv.sigfd);
	close(sv.ready_pipe[0]);
	close(sv.ready_pipe[1]);
	return sv.exit_status;
}
