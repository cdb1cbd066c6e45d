/*
 * metrics.c - the host's Prometheus metrics, kept in the shared segment
 * (see metrics.h for the model). The hot path is a few relaxed atomic adds;
 * only a scrape walks the per-process gauges and the slots.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <yajl/yajl_gen.h>

#include "metrics.h"

#define AUTH_SP		0
#define AUTH_USER	1

#define SERIES_MORE	(SHM_METRIC_ROUTES - 1)	/* routes beyond the claimable series */
#define SERIES_NONE	SHM_METRIC_ROUTES	/* requests that matched no route */

static struct shm *metrics_shm;
static int metrics_proc = -1;		/* this process's gauge entry */
static pid_t metrics_pid;
static unsigned char *route_series;	/* by route index: its series (SERIES_MORE: none of its own) */
static size_t route_series_len;

static const int status_codes[SHM_METRIC_STATUSES - 1] = {
	200, 201, 400, 401, 403, 404, 405, 409, 413, 415, 429, 500, 502, 503, 504
};

/* Upper bounds in microseconds; the last bucket is +Inf. */
static const long long bucket_us[SHM_METRIC_BUCKETS - 1] = {
	5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000
};
static const char *const bucket_le[SHM_METRIC_BUCKETS] = {
	"0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"
};

static const char *const close_reasons[SHM_METRIC_CLOSE] = {
	"idle", "evicted", "expired_credential", "renewed", "broken", "shutdown", "other"
};

static struct shm_metrics *
area(void)
{
	return metrics_shm ? &shm_header(metrics_shm)->metrics : NULL;
}

static void
add(uint64_t *counter, uint64_t n)
{
	__atomic_fetch_add(counter, n, __ATOMIC_RELAXED);
}

static uint64_t
load(const uint64_t *counter)
{
	return __atomic_load_n(counter, __ATOMIC_RELAXED);
}

int
metrics_status_index(int status)
{
	for (int i = 0; i < SHM_METRIC_STATUSES - 1; i++) {
		if (status_codes[i] == status)
			return i;
	}
	return SHM_METRIC_STATUSES - 1;
}

int
metrics_bucket(long long duration_us)
{
	int i;

	for (i = 0; i < SHM_METRIC_BUCKETS - 1; i++) {
		if (duration_us <= bucket_us[i])
			break;
	}
	return i;
}

static void
observe(struct shm_histogram *h, long long duration_us)
{
	if (duration_us < 0)
		duration_us = 0;
	add(&h->buckets[metrics_bucket(duration_us)], 1);
	add(&h->sum_us, (uint64_t)duration_us);
	add(&h->count, 1);
}

/* The series of a route of the config the process attached with;
 * SERIES_NONE for no route. */
static size_t
route_index(const struct lb_config *cfg, const struct route *route)
{
	size_t i;

	if (route == NULL || route < cfg->routes || route >= cfg->routes + cfg->nroutes)
		return SERIES_NONE;
	i = (size_t)(route - cfg->routes);
	return i < route_series_len ? route_series[i] : SERIES_MORE;
}

/* A route's identity: the first 8 bytes of SHA-256 of its method, path
 * and auth; 0 only when that cannot be computed (out of memory). */
static uint64_t
route_key(const struct route *route)
{
	const char *parts[3] = { route->method, route->path, auth_mode_name(route->auth) };
	unsigned char md[EVP_MAX_MD_SIZE];
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	bool ok = ctx != NULL && EVP_DigestInit_ex2(ctx, EVP_sha256(), NULL) == 1;
	uint64_t key = 0;

	for (int i = 0; i < 3 && ok; i++)
		ok = EVP_DigestUpdate(ctx, parts[i], strlen(parts[i]) + 1) == 1;
	ok = ok && EVP_DigestFinal_ex(ctx, md, NULL) == 1;
	EVP_MD_CTX_free(ctx);
	if (ok)
		memcpy(&key, md, sizeof(key));
	return ok && key == 0 ? 1 : key;
}

/* With the segment's lock held: the series whose key is `key`, claimed if
 * none is; SERIES_MORE once every series is claimed (by routes of this or
 * earlier configs: the segment outlives them). */
static unsigned char
claim_series_locked(struct shm_metrics *m, uint64_t key)
{
	int free_series = -1;

	if (key == 0)
		return SERIES_MORE;
	for (int i = 0; i < SERIES_MORE; i++) {
		if (m->route_keys[i] == key)
			return (unsigned char)i;
		if (m->route_keys[i] == 0 && free_series < 0)
			free_series = i;
	}
	if (free_series < 0)
		return SERIES_MORE;
	m->route_keys[free_series] = key;
	return (unsigned char)free_series;
}

/* With the segment's lock held: each route's series. */
static void
claim_route_series_locked(struct shm_metrics *m, const struct lb_config *cfg)
{
	free(route_series);
	route_series_len = 0;
	route_series = cfg != NULL && cfg->nroutes > 0 ? malloc(cfg->nroutes) : NULL;
	if (route_series == NULL)
		return;		/* out of memory: every route counts as SERIES_MORE */
	route_series_len = cfg->nroutes;
	for (size_t i = 0; i < cfg->nroutes; i++)
		route_series[i] = claim_series_locked(m, route_key(&cfg->routes[i]));
}

/* ---- recording ---- */

void
metrics_request(const struct lb_config *cfg, const struct route *route, int status,
		long long duration_us)
{
	struct shm_metrics *m = area();
	size_t r;
	int cls = status / 100 - 1;

	if (m == NULL)
		return;
	r = route_index(cfg, route);
	add(&m->requests[r][metrics_status_index(status)], 1);
	if (route != NULL && cls >= 0 && cls < SHM_METRIC_CLASSES)
		observe(&m->query[r][cls], duration_us);
}

void
metrics_conn_opened(void)
{
	if (area() != NULL)
		add(&area()->conns_opened, 1);
}

void
metrics_conn_closed(const char *reason)
{
	int i;

	if (area() == NULL)
		return;
	for (i = 0; i < SHM_METRIC_CLOSE - 1; i++) {
		if (reason != NULL && strcmp(reason, close_reasons[i]) == 0)
			break;
	}
	add(&area()->conns_closed[i], 1);
}

void
metrics_acquire_timeout(void)
{
	if (area() != NULL)
		add(&area()->acquire_timeouts, 1);
}

static int
sqlstate_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'Z')
		return c - 'A' + 10;
	return -1;
}

void
metrics_pool_error(const char *sqlstate)
{
	int a, b;

	if (area() == NULL || sqlstate == NULL || strlen(sqlstate) < 2)
		return;
	a = sqlstate_digit(sqlstate[0]);
	b = sqlstate_digit(sqlstate[1]);
	if (a >= 0 && b >= 0)
		add(&area()->pool_errors[a * 36 + b], 1);
}

void
metrics_refresh_duration(long long duration_us)
{
	if (area() != NULL)
		observe(&area()->refresh, duration_us);
}

/* ---- per-process gauges ---- */

/* Frees the entries of dead processes; counts them as restarts (a worker
 * that exits cleanly frees its own). With the lock held. */
static void
reclaim_dead(struct shm_metrics *m)
{
	for (int i = 0; i < SHM_MAX_PROCS; i++) {
		struct shm_proc_gauges *p = &m->procs[i];

		if (p->pid != 0 && !shm_proc_alive(p->pid, p->start)) {
			memset(p, 0, sizeof(*p));
			add(&m->worker_restarts, 1);
		}
	}
}

static bool
any_live(const struct shm_metrics *m)
{
	for (int i = 0; i < SHM_MAX_PROCS; i++) {
		if (m->procs[i].pid != 0)
			return true;
	}
	return false;
}

void
metrics_attach(struct shm *s, const struct lb_config *cfg)
{
	struct shm_metrics *m;
	pid_t pid = getpid();

	metrics_shm = s;
	metrics_proc = -1;
	metrics_pid = pid;
	if (s == NULL)
		return;
	m = area();
	shm_lock(s);
	reclaim_dead(m);
	if (!any_live(m))
		m->started_at = (int64_t)time(NULL);	/* a new run of the service */
	for (int i = 0; i < SHM_MAX_PROCS; i++) {
		if (m->procs[i].pid == 0 || m->procs[i].pid == pid) {
			memset(&m->procs[i], 0, sizeof(m->procs[i]));
			m->procs[i].start = shm_self_start();
			m->procs[i].pid = pid;
			metrics_proc = i;
			break;
		}
	}
	claim_route_series_locked(m, cfg);
	shm_unlock(s);
}

void
metrics_detach(void)
{
	struct shm_metrics *m = area();

	if (m != NULL && metrics_proc >= 0 && metrics_pid == getpid()) {
		shm_lock(metrics_shm);
		if (m->procs[metrics_proc].pid == metrics_pid)
			memset(&m->procs[metrics_proc], 0, sizeof(m->procs[metrics_proc]));
		shm_unlock(metrics_shm);
	}
	metrics_shm = NULL;
	metrics_proc = -1;
	free(route_series);
	route_series = NULL;
	route_series_len = 0;
}

static void
store32(int32_t *gauge, int value)
{
	__atomic_store_n(gauge, (int32_t)value, __ATOMIC_RELAXED);
}

void
metrics_publish(const struct metrics_gauges *g)
{
	struct shm_metrics *m = area();
	struct shm_proc_gauges *p;

	if (m == NULL || metrics_proc < 0 || metrics_pid != getpid())
		return;
	p = &m->procs[metrics_proc];
	for (int a = 0; a < 2; a++) {
		store32(&p->idle[a], g->idle[a]);
		store32(&p->busy[a], g->busy[a]);
	}
	store32(&p->waiting, g->waiting);
	store32(&p->user_pools, g->user_pools);
}

/* ---- access ---- */

bool
metrics_client_allowed(const char *allow, const char *remote_addr)
{
	if (allow != NULL && strcmp(allow, "any") == 0)
		return true;
	if (remote_addr == NULL || remote_addr[0] == '\0')
		return true;	/* a unix socket: the peer is on this host */
	return strncmp(remote_addr, "127.", 4) == 0 || strcmp(remote_addr, "::1") == 0 ||
	       strncmp(remote_addr, "::ffff:127.", 11) == 0;
}

/* ---- the exposition text ---- */

/* A label value: backslash, double quote and newline escaped. */
static void
append_label(struct strbuf *out, const char *value)
{
	for (const char *p = value; *p != '\0'; p++) {
		if (*p == '\\' || *p == '"')
			strbuf_appendf(out, "\\%c", *p);
		else if (*p == '\n')
			strbuf_append_str(out, "\\n");
		else
			strbuf_append(out, p, 1);
	}
}

static void
header(struct strbuf *out, const char *name, const char *type, const char *help)
{
	strbuf_appendf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* route="…",method="…",auth="…" of a route. */
static void
route_labels(struct strbuf *out, const struct route *route)
{
	strbuf_append_str(out, "route=\"");
	append_label(out, route->path);
	strbuf_append_str(out, "\",method=\"");
	append_label(out, route->method);
	strbuf_appendf(out, "\",auth=\"%s\"", auth_mode_name(route->auth));
}

/* Renders one series: r its index, labels its route's. */
typedef void (*series_render_fn)(struct strbuf *out, const struct shm_metrics *m, size_t r,
				 const char *labels);

/*
 * Calls fn for each series the config has, in its order: each route's own,
 * then "(more)" if a route has none of its own, then "(none)" (requests
 * that matched no route) if with_none. Series of routes no longer in the
 * config stay in the segment, unrendered.
 */
static void
for_each_series(struct strbuf *out, const struct lb_config *cfg, const struct shm_metrics *m,
		bool with_none, series_render_fn fn)
{
	struct strbuf labels;
	bool more = false;
	size_t r;

	strbuf_init(&labels);
	for (size_t i = 0; i < cfg->nroutes; i++) {
		r = route_index(cfg, &cfg->routes[i]);
		more = more || r == SERIES_MORE;
		if (r == SERIES_MORE)
			continue;
		strbuf_reset(&labels);
		route_labels(&labels, &cfg->routes[i]);
		if (!strbuf_failed(&labels))
			fn(out, m, r, labels.data);
	}
	for (int k = 0; k < 2; k++) {
		if (k == 0 ? !more : !with_none)
			continue;
		strbuf_reset(&labels);
		strbuf_appendf(&labels, "route=\"%s\",method=\"\",auth=\"\"", k == 0 ? "(more)" : "(none)");
		if (!strbuf_failed(&labels))
			fn(out, m, k == 0 ? SERIES_MORE : SERIES_NONE, labels.data);
	}
	strbuf_free(&labels, false);
}

static void
render_request_series(struct strbuf *out, const struct shm_metrics *m, size_t r, const char *labels)
{
	for (int s = 0; s < SHM_METRIC_STATUSES; s++) {
		uint64_t n = load(&m->requests[r][s]);

		if (n == 0)
			continue;
		if (s < SHM_METRIC_STATUSES - 1)
			strbuf_appendf(out, "lakebase_requests_total{%s,status=\"%d\"} %llu\n", labels,
				       status_codes[s], (unsigned long long)n);
		else
			strbuf_appendf(out, "lakebase_requests_total{%s,status=\"other\"} %llu\n", labels,
				       (unsigned long long)n);
	}
}

static void
render_requests(struct strbuf *out, const struct lb_config *cfg, const struct shm_metrics *m)
{
	header(out, "lakebase_requests_total", "counter", "HTTP requests answered, by route and status.");
	for_each_series(out, cfg, m, true, render_request_series);
}

/* One histogram's series; `labels` ends without a comma ("" for none). */
static void
render_histogram(struct strbuf *out, const char *name, const char *labels, const struct shm_histogram *h)
{
	uint64_t cumulative = 0;
	const char *sep = labels[0] ? "," : "";

	for (int b = 0; b < SHM_METRIC_BUCKETS; b++) {
		cumulative += load(&h->buckets[b]);
		strbuf_appendf(out, "%s_bucket{%s%sle=\"%s\"} %llu\n", name, labels, sep, bucket_le[b],
			       (unsigned long long)cumulative);
	}
	strbuf_appendf(out, "%s_sum%s%s%s %.6f\n", name, labels[0] ? "{" : "", labels, labels[0] ? "}" : "",
		       (double)load(&h->sum_us) / 1e6);
	strbuf_appendf(out, "%s_count%s%s%s %llu\n", name, labels[0] ? "{" : "", labels, labels[0] ? "}" : "",
		       (unsigned long long)load(&h->count));
}

static void
render_query_series(struct strbuf *out, const struct shm_metrics *m, size_t r, const char *labels)
{
	struct strbuf with_class;

	strbuf_init(&with_class);
	for (int c = 0; c < SHM_METRIC_CLASSES; c++) {
		if (load(&m->query[r][c].count) == 0)
			continue;
		strbuf_reset(&with_class);
		strbuf_appendf(&with_class, "%s,status=\"%dxx\"", labels, c + 1);
		if (!strbuf_failed(&with_class))
			render_histogram(out, "lakebase_query_duration_seconds", with_class.data,
					 &m->query[r][c]);
	}
	strbuf_free(&with_class, false);
}

static void
render_query_durations(struct strbuf *out, const struct lb_config *cfg, const struct shm_metrics *m)
{
	header(out, "lakebase_query_duration_seconds", "histogram",
	       "Time to answer a request of a route (connection, SQL, result), by status class.");
	for_each_series(out, cfg, m, false, render_query_series);
}

/* The per-process gauges summed over live entries. */
struct gauge_totals {
	long idle[2], busy[2], waiting, user_pools, workers;
};

static void
sum_gauges(const struct shm_metrics *m, struct gauge_totals *t)
{
	memset(t, 0, sizeof(*t));
	for (int i = 0; i < SHM_MAX_PROCS; i++) {
		const struct shm_proc_gauges *p = &m->procs[i];

		if (__atomic_load_n(&p->pid, __ATOMIC_RELAXED) == 0)
			continue;
		t->workers++;
		for (int a = 0; a < 2; a++) {
			t->idle[a] += __atomic_load_n(&p->idle[a], __ATOMIC_RELAXED);
			t->busy[a] += __atomic_load_n(&p->busy[a], __ATOMIC_RELAXED);
		}
		t->waiting += __atomic_load_n(&p->waiting, __ATOMIC_RELAXED);
		t->user_pools += __atomic_load_n(&p->user_pools, __ATOMIC_RELAXED);
	}
}

static const char *const auth_names[2] = { "service-principal", "on-behalf-of-user" };

static void
render_pool_gauges(struct strbuf *out, const struct shm_metrics *m)
{
	struct gauge_totals t;

	sum_gauges(m, &t);
	header(out, "lakebase_pool_connections", "gauge", "Open database connections, by state and auth.");
	for (int a = 0; a < 2; a++) {
		strbuf_appendf(out, "lakebase_pool_connections{state=\"idle\",auth=\"%s\"} %ld\n", auth_names[a],
			       t.idle[a]);
		strbuf_appendf(out, "lakebase_pool_connections{state=\"busy\",auth=\"%s\"} %ld\n", auth_names[a],
			       t.busy[a]);
	}
	header(out, "lakebase_pool_waiting", "gauge", "Requests waiting for a connection.");
	strbuf_appendf(out, "lakebase_pool_waiting %ld\n", t.waiting);
	header(out, "lakebase_user_pools", "gauge", "Per-user connection pools held by the workers.");
	strbuf_appendf(out, "lakebase_user_pools %ld\n", t.user_pools);
	header(out, "lakebase_workers", "gauge", "Worker processes attached to the shared segment.");
	strbuf_appendf(out, "lakebase_workers %ld\n", t.workers);
}

static void
render_counter(struct strbuf *out, const char *name, const char *help, uint64_t value)
{
	header(out, name, "counter", help);
	strbuf_appendf(out, "%s %llu\n", name, (unsigned long long)value);
}

static void
render_pool_counters(struct strbuf *out, const struct shm_metrics *m)
{
	static const char digits[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

	render_counter(out, "lakebase_pool_acquire_timeouts_total",
		       "Requests that got no connection within acquire_timeout_ms.", load(&m->acquire_timeouts));
	header(out, "lakebase_pool_errors_total", "counter", "Database errors, by SQLSTATE class.");
	for (int i = 0; i < SHM_METRIC_SQLSTATE; i++) {
		uint64_t n = load(&m->pool_errors[i]);

		if (n != 0)
			strbuf_appendf(out, "lakebase_pool_errors_total{class=\"%c%c\"} %llu\n", digits[i / 36],
				       digits[i % 36], (unsigned long long)n);
	}
	render_counter(out, "lakebase_connections_opened_total", "Database connections opened.",
		       load(&m->conns_opened));
	header(out, "lakebase_connections_closed_total", "counter", "Database connections closed, by reason.");
	for (int i = 0; i < SHM_METRIC_CLOSE; i++)
		strbuf_appendf(out, "lakebase_connections_closed_total{reason=\"%s\"} %llu\n", close_reasons[i],
			       (unsigned long long)load(&m->conns_closed[i]));
}

static void
render_credentials(struct strbuf *out, struct shm *s)
{
	const uint64_t *c = shm_header(s)->counters;
	struct {
		const char *kind, *result;
		enum shm_counter counter;
	} mints[] = {
		{ "sp", "ok", SHM_MINTS_OK_SP }, { "sp", "failed", SHM_MINTS_FAILED_SP },
		{ "user", "ok", SHM_MINTS_OK_USER }, { "user", "failed", SHM_MINTS_FAILED_USER },
		{ "sp_oauth", "ok", SHM_OAUTH_OK }, { "sp_oauth", "failed", SHM_OAUTH_FAILED },
	};

	header(out, "lakebase_credential_mints_total", "counter",
	       "Database credentials (sp, user) and M2M tokens (sp_oauth) minted, by result.");
	for (size_t i = 0; i < sizeof(mints) / sizeof(mints[0]); i++)
		strbuf_appendf(out, "lakebase_credential_mints_total{kind=\"%s\",result=\"%s\"} %llu\n",
			       mints[i].kind, mints[i].result, (unsigned long long)load(&c[mints[i].counter]));
	header(out, "lakebase_credential_refresh_duration_seconds", "histogram",
	       "Time of one credential or token mint (workspace round trips, retries included).");
	render_histogram(out, "lakebase_credential_refresh_duration_seconds", "",
			 &shm_header(s)->metrics.refresh);
	render_counter(out, "lakebase_shm_lock_recoveries_total",
		       "Times the segment's lock was recovered from a dead owner.",
		       load(&c[SHM_LOCK_RECOVERIES]));
}

#define NSTATES 6
static const char *const slot_states[NSTATES] = {
	"free", "empty", "valid", "refreshing", "expired", "failed"
};

/* What a scan of the slots found. */
struct slot_scan {
	long counts[NSTATES];
	int64_t next_expiry;		/* earliest valid credential's expiry; 0: none */
	long errors[LB_ERR__COUNT];	/* slots whose last refresh failed, by error */
	uint32_t nslots;
};

static int
slot_state(const struct shm_slot *sl, time_t now)
{
	if (sl->kind == SHM_KIND_FREE)
		return 0;
	if (sl->claim_pid != 0)
		return 3;
	if (sl->cred_len > 0 && sl->expires_at > (int64_t)now)
		return 2;
	if (sl->last_failed)
		return 5;
	return sl->cred_len > 0 ? 4 : 1;
}

/* Scans the slots (lock taken with a timeout: -1 when busy); reclaims dead
 * processes' gauge entries on the way. */
static int
scan_slots(struct shm *s, struct slot_scan *scan)
{
	time_t now = time(NULL);

	memset(scan, 0, sizeof(*scan));
	if (shm_lock_timed(s, 200) != 0)
		return -1;
	scan->nslots = shm_nslots(s);
	for (uint32_t i = 0; i < scan->nslots; i++) {
		const struct shm_slot *sl = shm_slot(s, i);
		int st = slot_state(sl, now);

		scan->counts[st]++;
		if (st == 2 && sl->kind != SHM_KIND_SP_OAUTH &&
		    (scan->next_expiry == 0 || sl->expires_at < scan->next_expiry))
			scan->next_expiry = sl->expires_at;
		if (sl->kind != SHM_KIND_FREE && sl->last_failed && sl->last_err.code > LB_OK &&
		    sl->last_err.code < LB_ERR__COUNT)
			scan->errors[sl->last_err.code]++;
	}
	reclaim_dead(&shm_header(s)->metrics);
	shm_unlock(s);
	return 0;
}

static void
render_slots(struct strbuf *out, struct shm *s)
{
	struct slot_scan scan;

	if (scan_slots(s, &scan) != 0)
		return;
	header(out, "lakebase_credential_cache_slots", "gauge", "Slots of the shared credential cache, by state.");
	for (int k = 0; k < NSTATES; k++)
		strbuf_appendf(out, "lakebase_credential_cache_slots{state=\"%s\"} %ld\n", slot_states[k],
			       scan.counts[k]);
}

int
metrics_render(const struct lb_config *cfg, struct strbuf *out)
{
	struct shm_metrics *m = area();

	if (m == NULL)
		return -1;
	render_slots(out, metrics_shm);
	render_requests(out, cfg, m);
	render_query_durations(out, cfg, m);
	render_pool_gauges(out, m);
	render_pool_counters(out, m);
	render_credentials(out, metrics_shm);
	render_counter(out, "lakebase_worker_restarts_total",
		       "Worker processes that died without detaching (the supervisor replaces them).",
		       load(&m->worker_restarts));
	return strbuf_failed(out) ? -1 : 0;
}

/* ---- /status ---- */

static void
gen_key(yajl_gen g, const char *key)
{
	yajl_gen_string(g, (const unsigned char *)key, strlen(key));
}

static void
gen_int(yajl_gen g, const char *key, long long value)
{
	gen_key(g, key);
	yajl_gen_integer(g, value);
}

/* RFC 3339 UTC, or null for 0. */
static void
gen_time(yajl_gen g, const char *key, int64_t t)
{
	char text[32];
	struct tm tm;
	time_t tt = (time_t)t;

	gen_key(g, key);
	if (t <= 0 || gmtime_r(&tt, &tm) == NULL ||
	    strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) {
		yajl_gen_null(g);
		return;
	}
	yajl_gen_string(g, (const unsigned char *)text, strlen(text));
}

static uint64_t
total_requests(const struct shm_metrics *m)
{
	uint64_t n = 0;

	for (size_t r = 0; r <= SHM_METRIC_ROUTES; r++) {
		for (int st = 0; st < SHM_METRIC_STATUSES; st++)
			n += load(&m->requests[r][st]);
	}
	return n;
}

static void
gen_connections(yajl_gen g, const struct gauge_totals *t)
{
	gen_key(g, "connections");
	yajl_gen_map_open(g);
	for (int a = 0; a < 2; a++) {
		gen_key(g, auth_names[a]);
		yajl_gen_map_open(g);
		gen_int(g, "active", t->busy[a]);
		gen_int(g, "idle", t->idle[a]);
		yajl_gen_map_close(g);
	}
	yajl_gen_map_close(g);
	gen_int(g, "waiting", t->waiting);
	gen_int(g, "user_pools", t->user_pools);
}

static void
gen_cache(yajl_gen g, struct shm *s, const struct slot_scan *scan, bool scanned)
{
	const uint64_t *c = shm_header(s)->counters;
	time_t now = time(NULL);

	gen_key(g, "credential_cache");
	yajl_gen_map_open(g);
	gen_int(g, "slots", (long long)shm_nslots(s));
	gen_key(g, "states");
	if (!scanned) {
		yajl_gen_null(g);	/* the segment was busy: not waited for */
	} else {
		yajl_gen_map_open(g);
		for (int k = 0; k < NSTATES; k++)
			gen_int(g, slot_states[k], scan->counts[k]);
		yajl_gen_map_close(g);
	}
	gen_time(g, "next_expiry", scanned ? scan->next_expiry : 0);
	gen_key(g, "next_expiry_in_s");
	if (scanned && scan->next_expiry > 0)
		yajl_gen_integer(g, scan->next_expiry - (int64_t)now);
	else
		yajl_gen_null(g);
	gen_int(g, "mints_sp", (long long)load(&c[SHM_MINTS_OK_SP]));
	gen_int(g, "mints_user", (long long)load(&c[SHM_MINTS_OK_USER]));
	gen_int(g, "mint_failures",
		(long long)(load(&c[SHM_MINTS_FAILED_SP]) + load(&c[SHM_MINTS_FAILED_USER]) + load(&c[SHM_OAUTH_FAILED])));
	yajl_gen_map_close(g);

	/* Slots whose last refresh failed, by error class: never the detail
	 * (it can name a user). */
	gen_key(g, "last_refresh_errors");
	yajl_gen_map_open(g);
	for (int e = 1; scanned && e < LB_ERR__COUNT; e++) {
		if (scan->errors[e] > 0)
			gen_int(g, lb_errcode_name((enum lb_errcode)e), scan->errors[e]);
	}
	yajl_gen_map_close(g);
}

int
metrics_status_json(struct strbuf *out)
{
	struct shm_metrics *m = area();
	struct gauge_totals t;
	struct slot_scan scan;
	bool scanned;
	yajl_gen g;
	int64_t now = (int64_t)time(NULL);

	if (m == NULL || (g = yajl_gen_alloc(NULL)) == NULL)
		return -1;
	yajl_gen_config(g, yajl_gen_print_callback, strbuf_append_cb, out);
	scanned = scan_slots(metrics_shm, &scan) == 0;
	sum_gauges(m, &t);
	yajl_gen_map_open(g);
	gen_time(g, "started_at", m->started_at);
	gen_int(g, "uptime_s", m->started_at > 0 ? now - m->started_at : 0);
	gen_int(g, "pid", (long long)getpid());
	gen_int(g, "workers", t.workers);
	gen_int(g, "worker_restarts", (long long)load(&m->worker_restarts));
	gen_int(g, "requests", (long long)total_requests(m));
	gen_connections(g, &t);
	gen_int(g, "connections_opened", (long long)load(&m->conns_opened));
	gen_int(g, "acquire_timeouts", (long long)load(&m->acquire_timeouts));
	gen_cache(g, metrics_shm, &scan, scanned);
	yajl_gen_map_close(g);
	yajl_gen_free(g);
	return strbuf_failed(out) ? -1 : 0;
}
