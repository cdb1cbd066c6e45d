/*
 * pool.c - a pool of libpq connections logged in as one identity (see pool.h).
 *
 * Idle connections form a stack: the most recently used one is handed out
 * first, so surplus connections sink to the bottom, stay unused and are
 * closed by pool_reap() once idle_timeout_ms passes. Slow work (logins, the
 * liveness check, PQfinish) happens outside the lock; a thread that is about
 * to open a connection first reserves its slot (counted in `open`), so the
 * cap holds while the lock is dropped.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "metrics.h"
#include "pool.h"

/* libpq 15 has no sslrootcert=system: name Debian's bundle ourselves. */
#define SYSTEM_CA_BUNDLE "/etc/ssl/certs/ca-certificates.crt"

#define MSG_UNAVAILABLE "The database is not available; try again shortly."
#define MSG_POOL_EXHAUSTED "No database connection is available; try again shortly."
#define HOST_POLL_MS 50   /* capacity freed by other processes wakes nobody here: poll */
/* A renewal's parked connection that no due connection took this long
 * (the one due is held by a long statement, or was closed) is closed. */
#define SPARE_PARK_MAX_MS 5000
/*
 * A renewal login that fails (the role's CONNECTION LIMIT or the server's
 * max_connections refuses a second connection, the server is down, the
 * credential is refused) pauses the pool's renewals, from RENEW_PAUSE_MIN_MS
 * doubling to RENEW_PAUSE_MAX_MS, so a lasting refusal costs one login and
 * one log line per pause, not one per maintenance pass. A second
 * connection refused for another reason than its credential also makes the
 * pool renew in place (close, then log in again: no extra connection) for
 * SECOND_LOGIN_PAUSE_MS. A refused credential is reported to the source
 * (auth_failed), as on the request path, so the next try has a new one.
 */
#define RENEW_PAUSE_MIN_MS 1000
#define RENEW_PAUSE_MAX_MS 30000
#define SECOND_LOGIN_PAUSE_MS (10 * 60 * 1000)
/*
 * A pool's heat: the requests it served, each counting less by half every
 * HEAT_HALF_LIFE_MS. When the budget is spent, the idle connection of the
 * coldest pool is closed. Least recently used alone closes a popular
 * user's connection as soon as a few occasional users have come by since
 * its last request, and the popular user then logs in again; a decayed
 * count keeps it (simulated with Zipf-distributed users: 60 % of requests
 * found a connection with LRU, 70 % with this, 72 % with a perfect cache),
 * and the decay still lets go of a user who stopped. The half-life spans
 * enough requests of a busy host to tell the users apart, and is about
 * the idle timeout (30 s), after which an unused connection closes anyway.
 */
#define HEAT_HALF_LIFE_MS 30000.0
/*
 * Keeping a unit free (conn_budget_keep_unit_free). A first request that
 * finds the budget spent closes another pool's idle connection before its
 * login and waits for that backend to exit. Where a budget serves many
 * occasional users, a thread of its own closes one ahead instead, once
 * the last unit is taken, so the next first request finds a unit free.
 * It only closes a connection of a pool whose heat is below
 * KEEPER_MAX_HEAT, one that served a single request lately: a set of
 * regular users that just fits the budget is never thinned (each would
 * log in again), and a pool it closed is exempt until its heat decays
 * again (about a half-life, when idle_timeout_ms would close it anyway).
 * Below KEEPER_MIN_BUDGET units a free unit is too large a share of the
 * warm connections: small budgets close on the request path only. When
 * first requests come several at a time, each closing a connection on its
 * path anyway, the keeper stands aside for KEEPER_POLL_MS: closing one
 * more beside them only adds to the backends exiting at once (1000 users
 * round-robin, 32 at a time: 103-123 req/s with a keeper that did not
 * stand aside, 113-142 with none, 115-177 with this).
 */
#define KEEPER_MAX_HEAT 1.0
#define KEEPER_MIN_BUDGET 16
#define KEEPER_POLL_MS 1000   /* spent, nothing cold enough: look again (heat decays unseen) */

struct pool_conn {
	PGconn *pg;
	time_t cred_expires_at;   /* wall clock: expiry of the credential it logged in with */
	time_t renew_at;          /* from then on, replaced when a newer credential exists */
	time_t ask_after;         /* a request past renew_at asks for one, not before this */
	bool newer_credential;    /* a request past renew_at found one (ask_renewal): replace this */
	int64_t last_used_ms;     /* monotonic */
	bool fresh;
	bool server_error;        /* the server sent an error outside a query */
	int statement_timeout_ms; /* as last set by the worker; -1 = server default */
	unsigned char *prepared;  /* bitmap of the worker's prepared statements, by number */
	size_t prepared_bytes;
	const char *close_reason; /* while detached for closing */
	struct pool_conn *next;   /* while detached for closing */
};

/*
 * A thread waiting for a connection. Waiters are served in arrival order:
 * a released connection or a freed slot goes to the first one directly,
 * so a thread arriving later cannot take it first (under a hot user's
 * pool, that is what bounds the tail latency).
 */
struct pool_waiter {
	pthread_cond_t wake;
	struct pool_conn *conn;   /* handed over (counted busy) */
	bool slot;                /* or a slot reserved for it (counted open) */
	struct pool_waiter *next;
};

struct pool {
	pthread_mutex_t lock;
	struct pool_conn **idle;  /* stack of settings.max; idle[nidle - 1] is the newest */
	int nidle;
	int open;                 /* physical connections, counting ones being opened or closed */
	int busy;                 /* handed out, or being checked before hand-out */
	int waiting;
	struct pool_waiter *first_waiter, *last_waiter;  /* FIFO; empty while idle > 0 */
	const struct lb_config *cfg; /* borrowed: outlives the pool */
	struct pool_settings settings;
	struct pool_source source;
	char *label;
	bool retired;             /* closes connections instead of keeping them */
	struct conn_budget *budget;  /* NULL: no shared cap */
	struct pool *budget_prev, *budget_next; /* the budget's pools, under its lock */
	/*
	 * Renewal logs in first and replaces after (pool_renew): a new
	 * connection that found no idle due connection to replace waits here
	 * for a busy due one to be returned. It holds a budget unit but is not
	 * counted in `open`.
	 */
	struct pool_conn *spare;
	atomic_int asked;         /* connections with newer_credential set: due, and a newer credential exists */
	/* Failed renewal logins (under the lock; see RENEW_PAUSE_MIN_MS). */
	int renew_failures;       /* in a row */
	int64_t renew_paused_until_ms;   /* monotonic: no renewal login before */
	int64_t in_place_until_ms;       /* monotonic: no second connection before */
	double heat;              /* requests served, decayed: see HEAT_HALF_LIFE_MS */
	int64_t heat_ms;          /* monotonic: when `heat` was last updated */
};

struct conn_budget {
	pthread_mutex_t lock;
	pthread_cond_t changed;   /* a unit was given back or a connection went idle */
	pthread_cond_t spent;     /* for the keeper: the last unit was taken, or stop */
	int max;
	int used;
	int waiting;
	bool keeper_stop;
	bool keeper_awaits_spent; /* the keeper sleeps until the last unit is taken */
	int64_t evicted_on_path_ms;  /* monotonic: a take last closed a connection itself */
	struct pool *pools;       /* every pool sharing the budget */
	struct conn_budget_host host; /* host.take NULL: no host-wide cap */
};

/* Marks err (already set to LB_ERR_UNAVAILABLE) as worth retrying soon. */
static void
mark_transient(struct lb_error *err, const char *sqlstate)
{
	if (err == NULL)
		return;
	err->transience = LB_TRANSIENT;
	err->retry_after_s = 1;
	snprintf(err->sqlstate, sizeof(err->sqlstate), "%s", sqlstate ? sqlstate : "");
}

/*
 * Notices are dropped: libpq's default receiver writes them to stderr,
 * which would break the log format. An error arriving outside a query (the
 * FATAL a server sends before closing an idle session, as after
 * pg_terminate_backend) marks the pool connection broken.
 */
static void
notice_receiver(void *arg, const PGresult *res)
{
	struct pool_conn *conn = arg;
	const char *severity;

	if (conn == NULL)
		return;
	severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
	if (severity != NULL && (strcmp(severity, "ERROR") == 0 ||
	    strcmp(severity, "FATAL") == 0 || strcmp(severity, "PANIC") == 0))
		conn->server_error = true;
}

/* ---- one physical connection ---- */

struct conn_params {
	const char *keys[16];
	const char *values[16];
	int n;
};

/* Adds a keyword unless its value is NULL (libpq then uses its default). */
static void
param_add(struct conn_params *p, const char *key, const char *value)
{
	if (value == NULL)
		return;
	assert(p->n < (int)(sizeof(p->keys) / sizeof(p->keys[0])) - 1);
	p->keys[p->n] = key;
	p->values[p->n] = value;
	p->n++;
	p->keys[p->n] = NULL;
	p->values[p->n] = NULL;
}

static bool
sslmode_verifies(const char *sslmode)
{
	return sslmode != NULL &&
	    (strcmp(sslmode, "verify-ca") == 0 || strcmp(sslmode, "verify-full") == 0);
}

/*
 * libpq 15 builds a TLS context for every connection and reads its root
 * certificate file again each time (OpenSSL 3 decodes every certificate):
 * with the system bundle, ~140 certificates, a login costs about 50 ms of
 * CPU on a small machine, against about 4 ms in all when the file holds
 * just the root the server's chain needs (BENCHMARKS.md, profile 2).
 */
void
pool_warn_costly_settings(const struct lb_config *cfg)
{
	if (cfg->pg_sslrootcert == NULL && sslmode_verifies(cfg->pg_sslmode))
		log_warn("postgres.sslrootcert is not set: every login reads the whole system CA bundle, "
			 "tens of ms of CPU each; set it to the root CA of the server's certificate (README, TLS)",
			 "bundle", SYSTEM_CA_BUNDLE);
}

static bool
is_sqlstate_char(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z');
}

/*
 * Finds the SQLSTATE in a connection error rendered with PQERRORS_VERBOSE
 * ("...failed: FATAL:  28P01: password authentication failed ...").
 * Copies it to `sqlstate` and returns the start of its line, or NULL.
 */
static const char *
find_sqlstate(const char *msg, char sqlstate[6])
{
	const char *p, *code, *line;

	for (p = strstr(msg, ":  "); p != NULL; p = strstr(p + 3, ":  ")) {
		code = p + 3;
		if (!is_sqlstate_char(code[0]) || !is_sqlstate_char(code[1]) ||
		    !is_sqlstate_char(code[2]) || !is_sqlstate_char(code[3]) ||
		    !is_sqlstate_char(code[4]) || code[5] != ':' || code[6] != ' ')
			continue;
		memcpy(sqlstate, code, 5);
		sqlstate[5] = '\0';
		for (line = p; line > msg && line[-1] != '\n'; line--)
			;
		return line;
	}
	return NULL;
}

/*
 * Classifies a failed login into err. libpq has no call returning the
 * SQLSTATE of a failed connection attempt: the server's ErrorResponse is
 * only rendered into PQerrorMessage (its PGresult is internal). With
 * PQERRORS_VERBOSE set before the attempt the rendering carries the code,
 * so we read the code rather than the English text, which lc_messages
 * translates and which a proxy in front of Postgres may word differently.
 * Class 28 (invalid authorization: wrong or expired password, no such
 * role, no pg_hba entry) is a refused login; anything else (refused,
 * timeout, TLS, server starting up or full) is worth retrying.
 * The message never contains the password: libpq does not echo it.
 */
static void
set_connect_error(PGconn *pg, struct lb_error *err)
{
	const char *msg = pg ? PQerrorMessage(pg) : NULL;
	const char *line;
	char sqlstate[6] = "";
	int len;

	if (msg == NULL || *msg == '\0')
		msg = "connection failed";
	line = find_sqlstate(msg, sqlstate);
	if (line == NULL)
		line = msg;
	len = (int)strcspn(line, "\n");
	if (strncmp(sqlstate, "28", 2) == 0) {
		lb_error_set(err, LB_ERR_ROLE_MISSING, LB_MSG_ROLE_MISSING, "%.*s", len, line);
		if (err != NULL)
			memcpy(err->sqlstate, sqlstate, sizeof(err->sqlstate));
		return;
	}
	lb_error_set(err, LB_ERR_UNAVAILABLE, MSG_UNAVAILABLE, "%.*s", len, line);
	mark_transient(err, sqlstate);
}

/*
 * Drives PQconnectPoll to completion or until deadline_ms (monotonic;
 * <= 0: none). Returns 0 when connected, -1 on failure, -2 on timeout.
 */
static int
connect_poll(PGconn *pg, int64_t deadline_ms)
{
	PostgresPollingStatusType st = PGRES_POLLING_WRITING;
	struct pollfd pfd;
	int64_t left;
	int n;

	for (;;) {
		if (st == PGRES_POLLING_OK)
			return 0;
		if (st == PGRES_POLLING_FAILED)
			return -1;
		pfd.fd = PQsocket(pg);
		if (pfd.fd < 0)
			return -1;
		pfd.events = st == PGRES_POLLING_READING ? POLLIN : POLLOUT;
		pfd.revents = 0;
		left = -1;
		if (deadline_ms > 0) {
			left = deadline_ms - clock_monotonic_ms();
			if (left <= 0)
				return -2;
		}
		n = poll(&pfd, 1, left > INT32_MAX ? INT32_MAX : (int)left);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		if (n == 0)
			return -2;
		st = PQconnectPoll(pg);
	}
}

PGconn *
pool_connect(const struct lb_config *cfg, int connect_timeout_ms,
	     const struct credential *cred, struct lb_error *err)
{
	struct conn_params p;
	char port[16];
	const char *rootcert;
	int64_t deadline_ms = 0;
	PGconn *pg;
	int rc;

	lb_error_clear(err);
	if (connect_timeout_ms > 0)
		deadline_ms = clock_monotonic_ms() + connect_timeout_ms;
	memset(&p, 0, sizeof(p));
	snprintf(port, sizeof(port), "%d", cfg->pg_port);
	rootcert = cfg->pg_sslrootcert;
	if (rootcert == NULL && sslmode_verifies(cfg->pg_sslmode))
		rootcert = SYSTEM_CA_BUNDLE;

	param_add(&p, "host", cfg->pg_host);
	param_add(&p, "port", cfg->pg_port > 0 ? port : NULL);
	param_add(&p, "dbname", cfg->pg_database);
	param_add(&p, "user", cred->role);
	param_add(&p, "password", cred->token);   /* borrowed: no copy of the secret */
	param_add(&p, "sslmode", cfg->pg_sslmode);
	param_add(&p, "sslrootcert", rootcert);
	param_add(&p, "application_name", cfg->pg_appname);
	/* Lakebase logins are password (OAuth credential) logins: skip the
	 * Kerberos/GSSAPI probe libpq would otherwise make on every connect. */
	param_add(&p, "gssencmode", "disable");
	/* Results are written as JSON, which must be UTF-8. */
	param_add(&p, "client_encoding", "UTF8");
	/* No connect_timeout keyword: libpq ignores it under PQconnectPoll;
	 * connect_poll() enforces connect_timeout_ms (total, in ms). */

	pg = PQconnectStartParams(p.keys, p.values, 0);
	if (pg == NULL) {
		lb_error_set(err, LB_ERR_INTERNAL, "Internal error.", "out of memory opening a connection");
		return NULL;
	}
	/* Verbose errors carry the SQLSTATE of a refused login (see set_connect_error). */
	PQsetErrorVerbosity(pg, PQERRORS_VERBOSE);
	PQsetNoticeReceiver(pg, notice_receiver, NULL);

	rc = PQstatus(pg) == CONNECTION_BAD ? -1 : connect_poll(pg, deadline_ms);
	if (rc == -2) {
		lb_error_set(err, LB_ERR_UNAVAILABLE, MSG_UNAVAILABLE,
			     "connecting to %s port %d: timed out after %d ms",
			     cfg->pg_host ? cfg->pg_host : "(default host)", cfg->pg_port,
			     connect_timeout_ms);
		mark_transient(err, NULL);
		PQfinish(pg);
		return NULL;
	}
	if (rc != 0 || PQstatus(pg) != CONNECTION_OK) {
		set_connect_error(pg, err);
		PQfinish(pg);
		return NULL;
	}
	PQsetErrorVerbosity(pg, PQERRORS_DEFAULT);
	return pg;
}

/* ---- the pool ---- */

struct pool *
pool_create(const struct lb_config *cfg, const struct pool_settings *settings,
	    const struct pool_source *source, const char *label, struct conn_budget *budget)
{
	struct pool *pool;

	if (settings->max < 1 || source->get_credential == NULL)
		return NULL;
	pool = calloc(1, sizeof(*pool));
	if (pool == NULL)
		return NULL;
	pool->idle = calloc((size_t)settings->max, sizeof(*pool->idle));
	pool->label = strdup(label ? label : "");
	if (pool->idle == NULL || pool->label == NULL)
		goto fail;
	pool->cfg = cfg;
	pool->settings = *settings;
	pool->source = *source;
	if (pthread_mutex_init(&pool->lock, NULL) != 0)
		goto fail;
	pool->budget = budget;
	if (budget != NULL) {
		pthread_mutex_lock(&budget->lock);
		pool->budget_next = budget->pools;
		if (budget->pools != NULL)
			budget->pools->budget_prev = pool;
		budget->pools = pool;
		pthread_mutex_unlock(&budget->lock);
	}
	return pool;
fail:
	free(pool->idle);
	free(pool->label);
	free(pool);
	return NULL;
}

/*
 * May this pool reserve a slot for one more physical connection? Called
 * with the lock held; only the pool's own max. The shared budget is taken
 * after the lock is dropped (budget_take), keeping the lock order budget,
 * then pool.
 */
static bool
may_open_connection(const struct pool *pool)
{
	return pool->open < pool->settings.max;
}

/*
 * With the lock held and room for one more connection: the parked renewal
 * connection, now counted open and busy (its budget unit goes with it), so
 * that the room is filled without a login; NULL if none is parked.
 */
static struct pool_conn *
adopt_spare_locked(struct pool *pool)
{
	struct pool_conn *conn = pool->spare;

	if (conn != NULL) {
		pool->spare = NULL;
		pool->open++;
		pool->busy++;
	}
	return conn;
}

/*
 * With the lock held: hands idle connections and free slots to the
 * waiters, first come first served. Called wherever either appears.
 */
static void
serve_waiters_locked(struct pool *pool)
{
	struct pool_waiter *w;

	while ((w = pool->first_waiter) != NULL) {
		if (pool->nidle > 0) {
			w->conn = pool->idle[--pool->nidle];
			pool->busy++;
		} else if (may_open_connection(pool)) {
			w->conn = adopt_spare_locked(pool);
			if (w->conn == NULL) {
				w->slot = true;
				pool->open++;
			}
		} else {
			return;
		}
		pool->first_waiter = w->next;
		if (pool->first_waiter == NULL)
			pool->last_waiter = NULL;
		pthread_cond_signal(&w->wake);
	}
}

/* With the lock held: a waiter that timed out leaves the queue. */
static void
unqueue_waiter_locked(struct pool *pool, struct pool_waiter *w)
{
	struct pool_waiter **link = &pool->first_waiter, *prev = NULL;

	while (*link != NULL && *link != w) {
		prev = *link;
		link = &(*link)->next;
	}
	if (*link == NULL)
		return;
	*link = w->next;
	if (pool->last_waiter == w)
		pool->last_waiter = prev;
}

static void
conn_free(struct pool_conn *conn)
{
	if (conn != NULL)
		free(conn->prepared);
	free(conn);
}

/* The connection no longer waits for renewal as a busy one (pool->asked). */
static void
conn_forget_asked(struct pool *pool, struct pool_conn *conn)
{
	if (conn->newer_credential) {
		conn->newer_credential = false;
		atomic_fetch_sub_explicit(&pool->asked, 1, memory_order_relaxed);
	}
}

/* Counts a connection closed that no longer belongs to the pool; the
 * connection itself is closed with conn_finish. */
static void
conn_detach(struct pool *pool, struct pool_conn *conn, const char *reason)
{
	conn_forget_asked(pool, conn);
	log_debug("pool connection closed", "pool", pool->label, "reason", reason);
	metrics_conn_closed(reason);
}

/*
 * A closed session still counts in PostgreSQL (pg_stat_activity, its
 * max_connections) until its backend has exited, a moment after PQfinish;
 * the budget unit it held may go to another login only then, or
 * PostgreSQL would see one connection more than the budget meanwhile. A
 * backend keeps its socket open until it exits so that a client can wait
 * for that ("synchronous close", PostgreSQL's socket_close): we keep a
 * duplicate of the socket across PQfinish and read it to its end, for at
 * most SESSION_EXIT_WAIT_MS.
 */
#define SESSION_EXIT_WAIT_MS 500
#define SESSION_CLOSE_BATCH 64   /* sessions closed before waiting for them together */

/* PQfinish; returns a duplicate of the session's socket to wait on, or -1. */
static int
session_finish(PGconn *pg)
{
	int fd = pg != NULL ? PQsocket(pg) : -1;
	int kept = fd >= 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;

	PQfinish(pg);
	return kept;
}

/* Waits until the server has closed its end of `kept` or deadline_ms has
 * passed, then closes it. What arrives meanwhile is the server's TLS
 * close_notify. */
static void
session_await_exit(int kept, int64_t deadline_ms)
{
	struct pollfd pfd = { .fd = kept, .events = POLLIN };
	char discard[512];
	ssize_t n;
	int left;

	if (kept < 0)
		return;
	while ((left = (int)(deadline_ms - clock_monotonic_ms())) > 0) {
		if (poll(&pfd, 1, left) < 0 && errno != EINTR)
			break;
		n = recv(kept, discard, sizeof(discard), MSG_DONTWAIT);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
			break;
	}
	close(kept);
}

/* Closes a session and waits for its backend to exit. */
static void
session_close(PGconn *pg)
{
	session_await_exit(session_finish(pg), clock_monotonic_ms() + SESSION_EXIT_WAIT_MS);
}

static void
conn_finish(struct pool_conn *conn)
{
	session_close(conn->pg);
	conn_free(conn);
}

/* Closes a connection no longer counted as idle or busy; lock not held. */
static void
close_conn(struct pool *pool, struct pool_conn *conn, const char *reason)
{
	conn_detach(pool, conn, reason);
	conn_finish(conn);
}

/* ---- the shared connection budget ---- */

struct conn_budget *
conn_budget_create(int max)
{
	struct conn_budget *b = calloc(1, sizeof(*b));
	pthread_condattr_t attr;

	if (b == NULL)
		return NULL;
	b->max = max;
	pthread_mutex_init(&b->lock, NULL);
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&b->changed, &attr);
	pthread_cond_init(&b->spent, &attr);
	pthread_condattr_destroy(&attr);
	return b;
}

void
conn_budget_destroy(struct conn_budget *b)
{
	if (b == NULL)
		return;
	assert(b->pools == NULL && b->used == 0);
	pthread_cond_destroy(&b->spent);
	pthread_cond_destroy(&b->changed);
	pthread_mutex_destroy(&b->lock);
	free(b);
}

void
conn_budget_set_host(struct conn_budget *b, const struct conn_budget_host *host)
{
	pthread_mutex_lock(&b->lock);
	b->host = *host;
	pthread_mutex_unlock(&b->lock);
}

/* The host-wide share of n units, given back (budget lock held). */
static void
host_give(struct conn_budget *b, int n)
{
	if (b->host.give != NULL && n > 0)
		b->host.give(b->host.ctx, n);
}

int
conn_budget_used(struct conn_budget *b)
{
	int used;

	pthread_mutex_lock(&b->lock);
	used = b->used;
	pthread_mutex_unlock(&b->lock);
	return used;
}

static void
budget_give_locked(struct conn_budget *b, int n)
{
	b->used -= n;
	host_give(b, n);
	if (b->waiting > 0)
		pthread_cond_broadcast(&b->changed);
}

/* n connections are gone. Never called with a pool lock held. */
static void
budget_give(struct conn_budget *b, int n)
{
	if (b == NULL || n <= 0)
		return;
	pthread_mutex_lock(&b->lock);
	budget_give_locked(b, n);
	pthread_mutex_unlock(&b->lock);
}

/* A connection went idle somewhere: a waiter may now evict it. */
static void
budget_notify(struct conn_budget *b)
{
	if (b == NULL)
		return;
	pthread_mutex_lock(&b->lock);
	if (b->waiting > 0)
		pthread_cond_broadcast(&b->changed);
	pthread_mutex_unlock(&b->lock);
}

/* With the pool's lock held: its heat at now_ms. */
static double
heat_at_locked(const struct pool *pool, int64_t now_ms)
{
	return pool->heat * exp2((double)(pool->heat_ms - now_ms) / HEAT_HALF_LIFE_MS);
}

/*
 * With the budget lock held: takes the least recently used idle connection
 * of the coldest pool other than `requester` (HEAT_HALF_LIFE_MS), if that
 * pool's heat is below max_heat, out of its pool and hands it, with its
 * unit (here and on the host), to the caller in *evicted. The caller
 * closes it (conn_finish) once the lock is dropped and before the unit is
 * used again: closing waits for the server's end to exit, 0.3-1.5 ms
 * here, too long to hold the lock every pool's login needs. The
 * pool it came from is touched only under the lock, so it cannot be
 * destroyed meanwhile. Returns true if one was taken (*evicted set), or
 * went busy meanwhile (look again).
 */
static bool
budget_evict_locked(struct conn_budget *b, const struct pool *requester, double max_heat,
		    struct pool_conn **evicted)
{
	struct pool *victim = NULL, *p;
	struct pool_conn *conn = NULL;
	int64_t now_ms = clock_monotonic_ms(), oldest = 0;
	double coldest = 0, heat;

	for (p = b->pools; p != NULL; p = p->budget_next) {
		if (p == requester)
			continue;
		pthread_mutex_lock(&p->lock);
		/* idle[0] is the pool's least recently used connection. */
		if (p->nidle > 0 && (heat = heat_at_locked(p, now_ms)) < max_heat) {
			if (victim == NULL || heat < coldest ||
			    (heat == coldest && p->idle[0]->last_used_ms < oldest)) {
				coldest = heat;
				oldest = p->idle[0]->last_used_ms;
				victim = p;
			}
		}
		pthread_mutex_unlock(&p->lock);
	}
	if (victim == NULL)
		return false;
	pthread_mutex_lock(&victim->lock);
	if (victim->nidle > 0) {
		conn = victim->idle[0];
		memmove(victim->idle, victim->idle + 1, (size_t)(victim->nidle - 1) * sizeof(*victim->idle));
		victim->nidle--;
		victim->open--;
		serve_waiters_locked(victim);
	}
	pthread_mutex_unlock(&victim->lock);
	if (conn == NULL)
		return true;   /* it went busy meanwhile: look again */
	conn_detach(victim, conn, "evicted");
	*evicted = conn;
	return true;
}

enum budget_take { BUDGET_TAKEN, BUDGET_RECHECK, BUDGET_TIMEOUT, BUDGET_HOST_TIMEOUT };

/* With the budget lock held, after a unit was taken: the last one? */
static void
keeper_wake_if_spent(struct conn_budget *b)
{
	if (b->keeper_awaits_spent && b->used >= b->max) {
		b->keeper_awaits_spent = false;
		pthread_cond_signal(&b->spent);
	}
}

static bool
timespec_before(const struct timespec *a, const struct timespec *b)
{
	return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

/*
 * Waits for the budget to change until `deadline`; at the host's cap, at
 * most HOST_POLL_MS (other processes free capacity without waking us).
 * Returns true once the deadline has passed.
 */
static bool
budget_wait(struct conn_budget *b, const struct timespec *deadline, bool host_full)
{
	struct timespec until = *deadline, poll, now;

	if (host_full) {
		clock_deadline_ms(&poll, CLOCK_MONOTONIC, HOST_POLL_MS);
		if (timespec_before(&poll, &until))
			until = poll;
	}
	b->waiting++;
	pthread_cond_timedwait(&b->changed, &b->lock, &until);
	b->waiting--;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return !timespec_before(&now, deadline);
}

/*
 * Takes one unit for `pool` (and one from the host, when the budget has a
 * host-wide cap), evicting another pool's idle connection when either is
 * spent. Gives up at `deadline`, or returns BUDGET_RECHECK when the pool
 * itself got an idle connection meanwhile (use that instead).
 */
static enum budget_take
budget_take(struct conn_budget *b, struct pool *pool, const struct timespec *deadline)
{
	enum budget_take result;
	struct pool_conn *evicted = NULL;
	bool timed_out = false, host_full;
	int own_idle;

	pthread_mutex_lock(&b->lock);
	for (;;) {
		host_full = false;
		if (b->used < b->max) {
			if (b->host.take == NULL || b->host.take(b->host.ctx) == 0) {
				b->used++;
				result = BUDGET_TAKEN;
				break;
			}
			host_full = true;
		}
		if (budget_evict_locked(b, pool, INFINITY, &evicted)) {
			if (evicted == NULL)
				continue;
			b->evicted_on_path_ms = clock_monotonic_ms();
			result = BUDGET_TAKEN;	/* the evicted connection's unit */
			break;
		}
		pthread_mutex_lock(&pool->lock);
		own_idle = pool->nidle;
		pthread_mutex_unlock(&pool->lock);
		if (own_idle > 0) {
			result = BUDGET_RECHECK;
			break;
		}
		if (timed_out) {
			result = host_full ? BUDGET_HOST_TIMEOUT : BUDGET_TIMEOUT;
			break;
		}
		timed_out = budget_wait(b, deadline, host_full);
	}
	if (result == BUDGET_TAKEN)
		keeper_wake_if_spent(b);
	pthread_mutex_unlock(&b->lock);
	if (evicted != NULL)
		conn_finish(evicted);
	return result;
}

/* With the budget lock held: the keeper looks again in a while, not at
 * each take (a scan of every pool under the lock). The lock may have
 * been dropped since the loop's test: a stop must not wait a pause. */
static void
keeper_pause_locked(struct conn_budget *b)
{
	struct timespec until;

	if (b->keeper_stop)
		return;
	clock_deadline_ms(&until, CLOCK_MONOTONIC, KEEPER_POLL_MS);
	pthread_cond_timedwait(&b->spent, &b->lock, &until);
}

bool
conn_budget_keeps_unit_free(const struct conn_budget *b)
{
	return b->max >= KEEPER_MIN_BUDGET;
}

void
conn_budget_keep_unit_free(struct conn_budget *b)
{
	struct pool_conn *evicted;

	if (!conn_budget_keeps_unit_free(b))
		return;
	pthread_mutex_lock(&b->lock);
	while (!b->keeper_stop) {
		evicted = NULL;
		if (b->used < b->max) {
			b->keeper_awaits_spent = true;
			pthread_cond_wait(&b->spent, &b->lock);
		} else if (clock_monotonic_ms() - b->evicted_on_path_ms < KEEPER_POLL_MS) {
			keeper_pause_locked(b);	/* first requests come faster than one unit serves */
		} else if (!budget_evict_locked(b, NULL, KEEPER_MAX_HEAT, &evicted)) {
			pthread_mutex_unlock(&b->lock);
			log_debug("connection budget spent: no idle connection of an occasional user to close");
			pthread_mutex_lock(&b->lock);
			keeper_pause_locked(b);
		} else if (evicted != NULL) {
			/* Closed and its backend gone before the unit is free. */
			pthread_mutex_unlock(&b->lock);
			conn_finish(evicted);
			pthread_mutex_lock(&b->lock);
			budget_give_locked(b, 1);
		}
	}
	pthread_mutex_unlock(&b->lock);
}

void
conn_budget_stop_keeper(struct conn_budget *b)
{
	pthread_mutex_lock(&b->lock);
	b->keeper_stop = true;
	pthread_cond_signal(&b->spent);
	pthread_mutex_unlock(&b->lock);
}

/*
 * Takes one unit for a renewal's second connection, only if one is free
 * here and on the host: never evicts, never waits (the renewal then
 * happens in place instead). No budget: nothing to take. It does not wake
 * the keeper when it takes the last unit: the unit comes back when the
 * replaced connection closes, seconds later, and a connection the keeper
 * closed meanwhile would be lost for nothing. (Where the new connection
 * is kept beside instead, the next take wakes the keeper; that first
 * request closes one on its path, as without a keeper.)
 */
static bool
budget_try_take(struct conn_budget *b)
{
	bool taken;

	if (b == NULL)
		return true;
	pthread_mutex_lock(&b->lock);
	taken = b->used < b->max && (b->host.take == NULL || b->host.take(b->host.ctx) == 0);
	if (taken)
		b->used++;
	pthread_mutex_unlock(&b->lock);
	return taken;
}

static void
budget_unregister(struct pool *pool)
{
	struct conn_budget *b = pool->budget;

	if (b == NULL)
		return;
	pthread_mutex_lock(&b->lock);
	if (pool->budget_prev != NULL)
		pool->budget_prev->budget_next = pool->budget_next;
	else
		b->pools = pool->budget_next;
	if (pool->budget_next != NULL)
		pool->budget_next->budget_prev = pool->budget_prev;
	pool->budget_prev = pool->budget_next = NULL;
	pthread_mutex_unlock(&b->lock);
}

/* n physical connections are gone: update the count and wake waiters. */
static int
slots_freed(struct pool *pool, int n)
{
	int open;

	pthread_mutex_lock(&pool->lock);
	pool->open -= n;
	open = pool->open;
	serve_waiters_locked(pool);
	pthread_mutex_unlock(&pool->lock);
	budget_give(pool->budget, n);
	return open;
}

/* A connection counted busy is gone (closed, or never reopened). */
static void
busy_slot_freed(struct pool *pool)
{
	pthread_mutex_lock(&pool->lock);
	pool->busy--;
	pool->open--;
	serve_waiters_locked(pool);
	pthread_mutex_unlock(&pool->lock);
	budget_give(pool->budget, 1);
}

/* Closes a connection that was counted busy. */
static void
close_busy(struct pool *pool, struct pool_conn *conn, const char *reason)
{
	close_conn(pool, conn, reason);
	busy_slot_freed(pool);
}

/* Closes a list of detached connections, each with its reason; their
 * backends exit together, so they are waited for in batches. */
static int
close_detached(struct pool *pool, struct pool_conn *list)
{
	struct pool_conn *next;
	int kept[SESSION_CLOSE_BATCH], nkept = 0, n = 0;
	int64_t deadline_ms;

	for (; list != NULL; list = next) {
		next = list->next;
		conn_detach(pool, list, list->close_reason);
		kept[nkept++] = session_finish(list->pg);
		conn_free(list);
		n++;
		if (nkept == SESSION_CLOSE_BATCH || next == NULL) {
			deadline_ms = clock_monotonic_ms() + SESSION_EXIT_WAIT_MS;
			for (int i = 0; i < nkept; i++)
				session_await_exit(kept[i], deadline_ms);
			nkept = 0;
		}
	}
	return slots_freed(pool, n);
}

/*
 * Why an idle connection must not be handed out, or NULL if it may be.
 * A readable socket on an idle connection means the server closed it or
 * sent an error (FATAL after pg_terminate_backend or idle_session_timeout).
 */
static const char *
idle_conn_problem(struct pool_conn *conn)
{
	struct pollfd pfd;
	int n;

	if (time(NULL) >= conn->cred_expires_at)
		return "expired_credential";
	if (PQstatus(conn->pg) != CONNECTION_OK)
		return "broken";
	pfd.fd = PQsocket(conn->pg);
	pfd.events = POLLIN;
	pfd.revents = 0;
	do {
		n = poll(&pfd, 1, 0);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return "broken";
	if (n == 0)
		return NULL;
	if (!PQconsumeInput(conn->pg) || PQstatus(conn->pg) != CONNECTION_OK)
		return "broken";
	(void)PQisBusy(conn->pg);   /* parses it: an error reaches notice_receiver */
	if (conn->server_error)
		return "broken";
	return NULL;
}

enum take { TAKE_IDLE, TAKE_SLOT, TAKE_TIMEOUT };

/* A waiter's condition variable, on the monotonic clock: a wall-clock
 * step must neither cut nor stretch acquire_timeout_ms. */
static int
waiter_init(struct pool_waiter *w)
{
	pthread_condattr_t attr;
	int rc;

	memset(w, 0, sizeof(*w));
	if (pthread_condattr_init(&attr) != 0)
		return -1;
	rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) == 0 && pthread_cond_init(&w->wake, &attr) == 0;
	pthread_condattr_destroy(&attr);
	return rc ? 0 : -1;
}

/*
 * With the lock held: pops the newest idle connection (counted busy), or
 * reserves a slot for a new one (counted open), or queues behind the
 * threads already waiting until one of those is handed over or `deadline`
 * passes. A hand-over that races with the timeout still counts: whether
 * one arrived is read under the lock.
 */
static enum take
take_locked(struct pool *pool, const struct timespec *deadline, struct pool_conn **conn)
{
	struct pool_waiter w;
	int rc = 0;

	if (pool->first_waiter == NULL) {
		if (pool->nidle > 0) {
			*conn = pool->idle[--pool->nidle];
			pool->busy++;
			return TAKE_IDLE;
		}
		if (may_open_connection(pool)) {
			if ((*conn = adopt_spare_locked(pool)) != NULL)
				return TAKE_IDLE;
			pool->open++;
			return TAKE_SLOT;
		}
	}
	if (waiter_init(&w) != 0)
		return TAKE_TIMEOUT;
	if (pool->last_waiter != NULL)
		pool->last_waiter->next = &w;
	else
		pool->first_waiter = &w;
	pool->last_waiter = &w;
	pool->waiting++;
	while (w.conn == NULL && !w.slot && rc == 0)
		rc = pthread_cond_timedwait(&w.wake, &pool->lock, deadline);
	pool->waiting--;
	if (w.conn == NULL && !w.slot)
		unqueue_waiter_locked(pool, &w);
	pthread_cond_destroy(&w.wake);
	if (w.conn != NULL) {
		*conn = w.conn;
		return TAKE_IDLE;
	}
	return w.slot ? TAKE_SLOT : TAKE_TIMEOUT;
}

/*
 * Logs `conn` (new, or one whose session was closed: newer_credential is
 * false) in with `cred`, and sets it up as a new session. It is due for
 * renewal when the cache refreshes the credential (which is also jittered
 * there). Returns -1 with `err` set when the login fails.
 */
static int
conn_log_in(struct pool *pool, struct pool_conn *conn, const struct credential *cred, struct lb_error *err)
{
	PGconn *pg;

	assert(!conn->newer_credential);
	pg = pool_connect(pool->cfg, pool->settings.connect_timeout_ms, cred, err);
	if (pg == NULL)
		return -1;
	metrics_conn_opened();
	conn->pg = pg;
	conn->cred_expires_at = cred->expires_at;
	conn->renew_at = cred->refresh_at > 0 && cred->refresh_at < cred->expires_at ? cred->refresh_at :
										      cred->expires_at;
	conn->ask_after = 0;
	conn->server_error = false;
	conn->statement_timeout_ms = -1;
	pool_conn_forget_prepared(conn);	/* a new session has none */
	PQsetNoticeReceiver(pg, notice_receiver, conn);
	return 0;
}

/* A login refused the credential (stale: another host minted since, or it
 * was revoked): lets the credential layer drop it, so the next login, on
 * the request path or a renewal's, gets a new one. */
static void
report_refused_login(const struct pool_source *source, const struct credential *cred,
		     const struct lb_error *err)
{
	if (err->code == LB_ERR_ROLE_MISSING && source->auth_failed != NULL)
		source->auth_failed(source->ctx, cred);
}

/* Opens a connection into a reserved slot (and budget unit). */
static int
open_into_slot(struct pool *pool, const struct pool_source *source, struct pool_conn **out,
	       struct lb_error *err)
{
	struct credential cred;
	struct pool_conn *conn;

	memset(&cred, 0, sizeof(cred));
	conn = calloc(1, sizeof(*conn));
	if (conn == NULL) {
		lb_error_set(err, LB_ERR_INTERNAL, "Internal error.", "out of memory");
		goto fail;
	}
	if (source->get_credential(source->ctx, &cred, err) != 0)
		goto fail;
	if (conn_log_in(pool, conn, &cred, err) != 0) {
		report_refused_login(source, &cred, err);
		goto fail;
	}
	conn->fresh = true;
	credential_clear(&cred);
	log_debug("pool connection opened", "pool", pool->label);

	pthread_mutex_lock(&pool->lock);
	pool->busy++;
	pthread_mutex_unlock(&pool->lock);
	*out = conn;
	return 0;
fail:
	credential_clear(&cred);
	conn_free(conn);
	slots_freed(pool, 1);
	return -1;
}

/* Gives back a reserved slot that never got a budget unit. */
static void
slot_unreserved(struct pool *pool)
{
	pthread_mutex_lock(&pool->lock);
	pool->open--;
	serve_waiters_locked(pool);
	pthread_mutex_unlock(&pool->lock);
}

static int
acquire_timed_out(struct pool *pool, bool host_full, struct lb_error *err)
{
	lb_error_set(err, LB_ERR_UNAVAILABLE, MSG_POOL_EXHAUSTED,
		     "pool %s: no connection within %d ms (max %d)%s",
		     pool->label, pool->settings.acquire_timeout_ms, pool->settings.max,
		     host_full ? "; the host's connection budget (max_host_connections) is spent" : "");
	mark_transient(err, NULL);
	metrics_acquire_timeout();
	return -1;
}

/*
 * A connection past renew_at, taken by a request: the request has what it
 * takes to mint (a user's token is never kept), so it asks its source once,
 * which refreshes the identity's credential if that is due (one mint per
 * identity, single-flight across processes). Once a newer credential
 * exists the connection is counted in pool->asked, and pool_renew logs in
 * its replacement off the request path, which takes its place when it is
 * returned (or, failing that, it is closed on return for a waiter to log
 * in again: close_for_renewal).
 */
static void
ask_renewal(struct pool *pool, struct pool_conn *conn, const struct pool_source *source)
{
	struct credential cred;
	struct lb_error err;

	memset(&cred, 0, sizeof(cred));
	lb_error_clear(&err);
	if (source->get_credential(source->ctx, &cred, &err) == 0 && cred.expires_at > conn->cred_expires_at) {
		conn->newer_credential = true;
		atomic_fetch_add_explicit(&pool->asked, 1, memory_order_relaxed);
	} else {
		/* Not due yet (the cache jitters its refresh), or the mint failed:
		 * the next request asks again, a second later at the soonest. */
		conn->ask_after = time(NULL) + 1;
	}
	credential_clear(&cred);
}

/* Past renew_at, and past the second a previous ask put off asking again. */
static bool
renewal_to_ask(const struct pool_conn *conn)
{
	time_t now = time(NULL);

	return now >= conn->renew_at && now >= conn->ask_after;
}

int
pool_acquire(struct pool *pool, struct pool_conn **out, struct lb_error *err)
{
	return pool_acquire_as(pool, NULL, out, err);
}

int
pool_acquire_as(struct pool *pool, const struct pool_source *source, struct pool_conn **out,
		struct lb_error *err)
{
	struct lb_error local;
	struct timespec deadline;
	struct pool_conn *conn = NULL;
	const char *problem;
	enum budget_take budget;
	enum take took;

	if (err == NULL)
		err = &local;
	if (source == NULL)
		source = &pool->source;
	lb_error_clear(err);
	*out = NULL;
	clock_deadline_ms(&deadline, CLOCK_MONOTONIC, pool->settings.acquire_timeout_ms);
	for (;;) {
		pthread_mutex_lock(&pool->lock);
		took = take_locked(pool, &deadline, &conn);
		pthread_mutex_unlock(&pool->lock);

		if (took == TAKE_TIMEOUT)
			return acquire_timed_out(pool, false, err);
		if (took == TAKE_SLOT) {
			budget = pool->budget ? budget_take(pool->budget, pool, &deadline) : BUDGET_TAKEN;
			if (budget == BUDGET_TAKEN)
				return open_into_slot(pool, source, out, err);
			slot_unreserved(pool);
			if (budget == BUDGET_RECHECK)
				continue;
			return acquire_timed_out(pool, budget == BUDGET_HOST_TIMEOUT, err);
		}
		problem = idle_conn_problem(conn);
		if (problem == NULL) {
			conn->fresh = false;
			if (!conn->newer_credential && renewal_to_ask(conn))
				ask_renewal(pool, conn, source);
			*out = conn;
			return 0;
		}
		close_busy(pool, conn, problem);
	}
}

/*
 * A returned connection due for renewal on a pool so busy that it is never
 * idle, when pool_renew has not replaced it by the last quarter of its
 * renewal window (no budget unit was free for its replacement, or the
 * maintenance is behind): closed, so that the first waiter logs in with
 * the new credential, rather than all at expiry. Only while no other login
 * is under way in the pool: it loses one connection at a time to renewal.
 */
static bool
close_for_renewal(struct pool *pool, const struct pool_conn *conn)
{
	bool now_is_the_time;

	if (!conn->newer_credential ||
	    time(NULL) < conn->renew_at + (conn->cred_expires_at - conn->renew_at) * 3 / 4)
		return false;
	pthread_mutex_lock(&pool->lock);
	/* Slots counted open but neither idle nor busy are being logged into. */
	now_is_the_time = pool->spare == NULL && pool->first_waiter != NULL &&
			  pool->open - pool->nidle - pool->busy == 0;
	pthread_mutex_unlock(&pool->lock);
	return now_is_the_time;
}

/* Why a returned connection must be closed rather than kept, or NULL. */
static const char *
release_problem(struct pool_conn *conn, bool broken, time_t now)
{
	if (broken || conn->server_error || PQstatus(conn->pg) != CONNECTION_OK ||
	    PQtransactionStatus(conn->pg) != PQTRANS_IDLE ||
	    PQpipelineStatus(conn->pg) != PQ_PIPELINE_OFF)
		return "broken";
	if (now >= conn->cred_expires_at)
		return "expired_credential";
	return NULL;
}

/* Would a renewal's new connection `fresh` replace `conn`: is conn due,
 * and is fresh's credential newer? */
static bool
replaces(const struct pool_conn *fresh, const struct pool_conn *conn, time_t now)
{
	return now >= conn->renew_at && fresh->cred_expires_at > conn->cred_expires_at;
}

/* With the lock held: the parked renewal connection, if it replaces `conn`
 * (a connection being returned), taken out of its parking place. */
static struct pool_conn *
spare_for_locked(struct pool *pool, const struct pool_conn *conn, time_t now)
{
	struct pool_conn *spare = pool->spare;

	if (spare == NULL || pool->retired || !replaces(spare, conn, now))
		return NULL;
	pool->spare = NULL;
	return spare;
}

/* Closes a replaced connection (its budget unit went to its replacement). */
static void
close_replaced(struct pool *pool, struct pool_conn *conn, const char *reason)
{
	close_conn(pool, conn, reason);
	budget_give(pool->budget, 1);
}

void
pool_release(struct pool *pool, struct pool_conn *conn, bool broken)
{
	struct pool_conn *replaced = NULL, *spare;
	const char *problem;
	time_t now = time(NULL);
	int64_t now_ms;
	bool handed_over;

	if (conn == NULL)
		return;
	problem = release_problem(conn, broken, now);
	if (problem == NULL && close_for_renewal(pool, conn))
		problem = "renewed";
	now_ms = clock_monotonic_ms();
	pthread_mutex_lock(&pool->lock);
	if (problem == NULL && pool->retired)	/* under the lock: pool_retire may run now */
		problem = "evicted";
	pool->heat = heat_at_locked(pool, now_ms) + 1;
	pool->heat_ms = now_ms;
	spare = spare_for_locked(pool, conn, now);
	if (spare == NULL && problem != NULL) {
		pthread_mutex_unlock(&pool->lock);
		close_busy(pool, conn, problem);
		return;
	}
	if (spare != NULL) {
		/* A renewal's connection takes this one's place. */
		replaced = conn;
		conn = spare;
	}
	conn->last_used_ms = now_ms;
	assert(pool->nidle < pool->settings.max);
	pool->idle[pool->nidle++] = conn;
	pool->busy--;
	serve_waiters_locked(pool);
	handed_over = pool->nidle == 0;
	pthread_mutex_unlock(&pool->lock);
	if (replaced != NULL)
		close_replaced(pool, replaced, problem != NULL ? problem : "renewed");
	if (!handed_over)
		budget_notify(pool->budget);
}

PGconn *
pool_conn_pg(struct pool_conn *conn)
{
	return conn->pg;
}

bool
pool_conn_is_fresh(const struct pool_conn *conn)
{
	return conn->fresh;
}

int
pool_conn_statement_timeout(const struct pool_conn *conn)
{
	return conn->statement_timeout_ms;
}

void
pool_conn_set_statement_timeout(struct pool_conn *conn, int timeout_ms)
{
	conn->statement_timeout_ms = timeout_ms;
}

bool
pool_conn_is_prepared(const struct pool_conn *conn, size_t n)
{
	return n / 8 < conn->prepared_bytes && (conn->prepared[n / 8] & (1u << (n % 8))) != 0;
}

int
pool_conn_mark_prepared(struct pool_conn *conn, size_t n)
{
	size_t need = n / 8 + 1;
	unsigned char *p;

	if (need > conn->prepared_bytes) {
		if ((p = realloc(conn->prepared, need)) == NULL)
			return -1;
		memset(p + conn->prepared_bytes, 0, need - conn->prepared_bytes);
		conn->prepared = p;
		conn->prepared_bytes = need;
	}
	conn->prepared[n / 8] |= (unsigned char)(1u << (n % 8));
	return 0;
}

void
pool_conn_forget_prepared(struct pool_conn *conn)
{
	if (conn->prepared != NULL)
		memset(conn->prepared, 0, conn->prepared_bytes);
}

static const char *
reap_reason(const struct pool *pool, const struct pool_conn *conn, time_t now, int64_t now_ms)
{
	if (now >= conn->cred_expires_at)
		return "expired_credential";
	if (now_ms - conn->last_used_ms >= pool->settings.idle_timeout_ms)
		return "idle";
	return NULL;
}

/*
 * Detaches the idle connections to close (all of them at shutdown), keeping
 * the others in order. Called with the lock held.
 */
static struct pool_conn *
detach_idle_locked(struct pool *pool, bool shutdown)
{
	struct pool_conn *list = NULL, *conn;
	time_t now = time(NULL);
	int64_t now_ms = clock_monotonic_ms();
	const char *reason;
	int kept = 0;

	for (int i = 0; i < pool->nidle; i++) {
		conn = pool->idle[i];
		reason = shutdown ? "shutdown" : reap_reason(pool, conn, now, now_ms);
		if (reason == NULL) {
			pool->idle[kept++] = conn;
			continue;
		}
		conn->close_reason = reason;
		conn->next = list;
		list = conn;
	}
	pool->nidle = kept;
	return list;
}

int
pool_reap(struct pool *pool)
{
	struct pool_conn *list;

	pthread_mutex_lock(&pool->lock);
	list = detach_idle_locked(pool, false);
	pthread_mutex_unlock(&pool->lock);
	return close_detached(pool, list);
}

/*
 * With the lock held: the index of the idle connection due for renewal
 * (past renew_at, not yet expired) whose credential expires first, among
 * those whose credential expires before `newer` (0: any), or -1.
 */
static int
due_idle_locked(const struct pool *pool, time_t now, time_t newer)
{
	const struct pool_conn *conn;
	int best = -1;

	for (int i = 0; i < pool->nidle; i++) {
		conn = pool->idle[i];
		if (now >= conn->renew_at && now < conn->cred_expires_at &&
		    (newer == 0 || conn->cred_expires_at < newer) &&
		    (best < 0 || conn->cred_expires_at < pool->idle[best]->cred_expires_at))
			best = i;
	}
	return best;
}

/* With the lock held: would a login with a credential that expires at
 * `newer` (0: whichever) renew a connection, and may it be tried now? */
static bool
renewal_wanted_locked(const struct pool *pool, time_t now, time_t newer)
{
	if (pool->retired || pool->spare != NULL)
		return false;
	if (pool->renew_failures > 0 && clock_monotonic_ms() < pool->renew_paused_until_ms)
		return false;
	return atomic_load_explicit(&pool->asked, memory_order_relaxed) > 0 ||
	       due_idle_locked(pool, now, newer) >= 0;
}

enum placed { PLACED_NOWHERE, PLACED_REPLACING, PLACED_ADDED, PLACED_PARKED };

/*
 * With the lock held: a renewal's new connection takes the place of the
 * idle due connection whose credential expires first (*replaced, to close),
 * else parks for a busy due connection to be returned (pool_release). Only
 * when no busy connection waits for a replacement (pool->asked: its own
 * went away meanwhile) does it take a free slot of the pool: else each
 * pass would add one more beside the busy one, up to the pool's max, each
 * a login and a budget unit. A retired pool takes nothing.
 */
static enum placed
place_fresh_locked(struct pool *pool, struct pool_conn *fresh, time_t now, struct pool_conn **replaced)
{
	int i;

	*replaced = NULL;
	if (pool->retired)
		return PLACED_NOWHERE;
	i = due_idle_locked(pool, now, fresh->cred_expires_at);
	if (i >= 0) {
		*replaced = pool->idle[i];
		fresh->last_used_ms = (*replaced)->last_used_ms;
		pool->idle[i] = fresh;
		return PLACED_REPLACING;
	}
	if (atomic_load_explicit(&pool->asked, memory_order_relaxed) == 0 && may_open_connection(pool)) {
		pool->open++;
		pool->idle[pool->nidle++] = fresh;
		serve_waiters_locked(pool);
		return PLACED_ADDED;
	}
	pool->spare = fresh;
	return PLACED_PARKED;
}

/*
 * The parked connection, at the next maintenance pass: placed if a place
 * appeared (a due connection went idle, a slot was freed), kept while a
 * busy due connection may still be returned, closed once past its own
 * renewal or parked SPARE_PARK_MAX_MS. Returns 1 if it replaced one.
 */
static int
settle_spare(struct pool *pool)
{
	struct pool_conn *spare, *replaced = NULL;
	enum placed placed = PLACED_NOWHERE;
	time_t now = time(NULL);

	pthread_mutex_lock(&pool->lock);
	spare = pool->spare;
	pool->spare = NULL;
	if (spare != NULL && now < spare->renew_at && clock_monotonic_ms() - spare->last_used_ms < SPARE_PARK_MAX_MS)
		placed = place_fresh_locked(pool, spare, now, &replaced);
	pthread_mutex_unlock(&pool->lock);
	if (spare != NULL && placed == PLACED_NOWHERE)
		close_replaced(pool, spare, pool->retired ? "evicted" : "idle");
	if (placed == PLACED_ADDED)
		budget_notify(pool->budget);
	if (replaced != NULL)
		close_replaced(pool, replaced, "renewed");
	return placed == PLACED_REPLACING;
}

/*
 * A renewal login failed: reports a refused credential to the source,
 * pauses the pool's renewals (see RENEW_PAUSE_MIN_MS) and, if it was a
 * second connection's refused for another reason, its second connections.
 * Logs why, with the pause.
 */
static void
renewal_failed(struct pool *pool, const struct pool_source *source, const struct credential *cred,
	       bool second_connection, const struct lb_error *err)
{
	int64_t now_ms = clock_monotonic_ms(), pause_ms = RENEW_PAUSE_MIN_MS;
	char pause[24];

	pthread_mutex_lock(&pool->lock);
	for (int i = 0; i < pool->renew_failures && pause_ms < RENEW_PAUSE_MAX_MS; i++)
		pause_ms *= 2;
	if (pause_ms > RENEW_PAUSE_MAX_MS)
		pause_ms = RENEW_PAUSE_MAX_MS;
	pool->renew_failures++;
	pool->renew_paused_until_ms = now_ms + pause_ms;
	if (second_connection && err->code != LB_ERR_ROLE_MISSING)
		pool->in_place_until_ms = now_ms + SECOND_LOGIN_PAUSE_MS;
	pthread_mutex_unlock(&pool->lock);
	report_refused_login(source, cred, err);
	snprintf(pause, sizeof(pause), "%lld", (long long)pause_ms);
	log_info(second_connection ? "pool connection renewal failed" : "pool connection renewal failed: closed",
		 "pool", pool->label, "detail", err->detail, "next_try_ms", pause);
}

static void
renewal_succeeded(struct pool *pool)
{
	pthread_mutex_lock(&pool->lock);
	pool->renew_failures = 0;
	pthread_mutex_unlock(&pool->lock);
}

/* May a renewal log in a second connection now (rather than in place)? */
static bool
second_connection_allowed(struct pool *pool)
{
	bool allowed;

	pthread_mutex_lock(&pool->lock);
	allowed = clock_monotonic_ms() >= pool->in_place_until_ms;
	pthread_mutex_unlock(&pool->lock);
	return allowed;
}

/*
 * Logs in a due connection's replacement with `cred` while the due ones go
 * on serving (its budget unit is taken), then places it. PLACED_NOWHERE:
 * the login failed, or the pool was retired meanwhile.
 */
static enum placed
renew_login_first(struct pool *pool, const struct pool_source *source, const struct credential *cred)
{
	struct pool_conn *fresh, *replaced = NULL;
	struct lb_error err;
	enum placed placed;

	lb_error_clear(&err);
	fresh = calloc(1, sizeof(*fresh));
	if (fresh == NULL)
		lb_error_set(&err, LB_ERR_INTERNAL, "Internal error.", "out of memory");
	if (fresh == NULL || conn_log_in(pool, fresh, cred, &err) != 0) {
		renewal_failed(pool, source, cred, true, &err);
		conn_free(fresh);
		budget_give(pool->budget, 1);
		return PLACED_NOWHERE;
	}
	renewal_succeeded(pool);
	fresh->last_used_ms = clock_monotonic_ms();   /* parked since, if parked */
	pthread_mutex_lock(&pool->lock);
	placed = place_fresh_locked(pool, fresh, time(NULL), &replaced);
	pthread_mutex_unlock(&pool->lock);
	if (placed == PLACED_NOWHERE)
		close_replaced(pool, fresh, "evicted");
	else
		log_debug("pool connection renewal logged in", "pool", pool->label);
	if (placed == PLACED_ADDED)
		budget_notify(pool->budget);
	if (replaced != NULL)
		close_replaced(pool, replaced, "renewed");
	return placed;
}

/* Puts a connection back idle in its place by last use (idle[0] is the
 * least recently used), as if the maintenance never took it; a request
 * waiting for a budget unit meanwhile is woken to take it instead. */
static void
put_back_idle(struct pool *pool, struct pool_conn *conn)
{
	int i;

	pthread_mutex_lock(&pool->lock);
	for (i = pool->nidle; i > 0 && pool->idle[i - 1]->last_used_ms > conn->last_used_ms; i--)
		pool->idle[i] = pool->idle[i - 1];
	pool->idle[i] = conn;
	pool->nidle++;
	pool->busy--;
	serve_waiters_locked(pool);
	pthread_mutex_unlock(&pool->lock);
	budget_notify(pool->budget);
}

/*
 * No budget unit is free for a second connection: closes the idle due
 * connection that expires first and logs in again in its slot, so the
 * budget is never exceeded (the pool is one short for the length of a
 * login). Returns true if it was renewed.
 */
static bool
renew_in_place(struct pool *pool, const struct pool_source *source, const struct credential *cred)
{
	struct pool_conn *conn = NULL;
	struct lb_error err;
	int i;

	pthread_mutex_lock(&pool->lock);
	i = pool->retired ? -1 : due_idle_locked(pool, time(NULL), cred->expires_at);
	if (i >= 0) {
		conn = pool->idle[i];
		memmove(pool->idle + i, pool->idle + i + 1, (size_t)(pool->nidle - i - 1) * sizeof(*pool->idle));
		pool->nidle--;
		pool->busy++;
	}
	pthread_mutex_unlock(&pool->lock);
	if (conn == NULL)
		return false;
	session_close(conn->pg);   /* its unit is logged in again at once */
	conn_forget_asked(pool, conn);
	metrics_conn_closed("renewed");
	lb_error_clear(&err);
	if (conn_log_in(pool, conn, cred, &err) != 0) {
		renewal_failed(pool, source, cred, false, &err);
		conn_free(conn);
		busy_slot_freed(pool);
		return false;
	}
	renewal_succeeded(pool);
	log_debug("pool connection renewed in place", "pool", pool->label);
	put_back_idle(pool, conn);
	return true;
}

int
pool_renew(struct pool *pool, const struct pool_source *source)
{
	struct credential cred;
	struct lb_error err;
	enum placed placed;
	int progress;
	bool wanted;

	if (source == NULL)
		source = &pool->source;
	progress = settle_spare(pool);
	for (;;) {
		pthread_mutex_lock(&pool->lock);
		wanted = renewal_wanted_locked(pool, time(NULL), 0);
		pthread_mutex_unlock(&pool->lock);
		if (!wanted)
			break;
		lb_error_clear(&err);
		memset(&cred, 0, sizeof(cred));
		if (source->get_credential(source->ctx, &cred, &err) == 0) {
			pthread_mutex_lock(&pool->lock);
			wanted = renewal_wanted_locked(pool, time(NULL), cred.expires_at);
			pthread_mutex_unlock(&pool->lock);
		} else {
			wanted = false;
		}
		if (!wanted) {
			/* Nothing newer yet (a user's is minted by a request): later. */
			credential_clear(&cred);
			break;
		}
		if (second_connection_allowed(pool) && budget_try_take(pool->budget))
			placed = renew_login_first(pool, source, &cred);
		else
			placed = renew_in_place(pool, source, &cred) ? PLACED_REPLACING : PLACED_NOWHERE;
		credential_clear(&cred);
		if (placed == PLACED_NOWHERE)
			break;
		progress++;
		/* One parked connection at a time: it waits for a busy one. */
		if (placed == PLACED_PARKED)
			break;
	}
	pthread_mutex_lock(&pool->lock);
	progress += pool->spare != NULL;
	pthread_mutex_unlock(&pool->lock);
	return progress;
}

bool
pool_renewal_pending(struct pool *pool)
{
	bool pending;

	pthread_mutex_lock(&pool->lock);
	pending = pool->spare != NULL || renewal_wanted_locked(pool, time(NULL), 0);
	pthread_mutex_unlock(&pool->lock);
	return pending;
}

/* Closes the parked connection, if any. */
static void
drop_spare(struct pool *pool, const char *reason)
{
	struct pool_conn *spare;

	pthread_mutex_lock(&pool->lock);
	spare = pool->spare;
	pool->spare = NULL;
	pthread_mutex_unlock(&pool->lock);
	if (spare != NULL)
		close_replaced(pool, spare, reason);
}

void
pool_close_idle(struct pool *pool)
{
	struct pool_conn *list;

	pthread_mutex_lock(&pool->lock);
	list = detach_idle_locked(pool, true);
	pthread_mutex_unlock(&pool->lock);
	close_detached(pool, list);
	drop_spare(pool, "shutdown");
}

void
pool_retire(struct pool *pool)
{
	struct pool_conn *list;

	pthread_mutex_lock(&pool->lock);
	pool->retired = true;
	list = detach_idle_locked(pool, true);
	pthread_mutex_unlock(&pool->lock);
	for (struct pool_conn *c = list; c != NULL; c = c->next)
		c->close_reason = "evicted";
	close_detached(pool, list);
	drop_spare(pool, "evicted");
}

void
pool_destroy(struct pool *pool)
{
	if (pool == NULL)
		return;
	budget_unregister(pool);
	pool_close_idle(pool);
	assert(pool->busy == 0 && pool->open == 0 && pool->waiting == 0 && pool->spare == NULL);
	pthread_mutex_destroy(&pool->lock);
	free(pool->idle);
	free(pool->label);
	free(pool);
}

void
pool_get_stats(struct pool *pool, struct pool_stats *stats)
{
	pthread_mutex_lock(&pool->lock);
	stats->open = pool->open;
	stats->idle = pool->nidle;
	stats->busy = pool->busy;
	stats->waiting = pool->waiting;
	pthread_mutex_unlock(&pool->lock);
}
