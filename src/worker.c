/*
 * worker.c - the request path, and the per-process state it shares.
 *
 * worker_handle() reads top to bottom: health endpoints, route, identity,
 * parameters, a pooled connection, the SQL, the result, the response.
 * Every failure becomes an lb_error; respond_error() is the one place that
 * turns it into an HTTP answer, and log_request() the one place that logs
 * the outcome.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "clock.h"
#include "credential.h"
#include "identity.h"
#include "log.h"
#include "metrics.h"
#include "params.h"
#include "pool.h"
#include "responder.h"
#include "retry.h"
#include "router.h"
#include "statement.h"
#include "textfmt.h"
#include "userpools.h"
#include "worker.h"
#include "workspace.h"

#define MSG_NOT_READY_CREDENTIAL \
	"Not ready: the service principal's database credential is unavailable."
#define MSG_NOT_READY_DATABASE "Not ready: the database is unreachable."

/* How often the maintenance thread reaps idle connections and renews
 * due ones; while renewals are under way (a pool's next due connection
 * waits for its previous one's replacement to be placed), more often. */
#define MAINTENANCE_INTERVAL_MS 1000
#define RENEWAL_PASS_INTERVAL_MS 100

struct worker {
	const struct lb_config *cfg;
	struct workspace_client *ws;
	struct credcache *creds;
	struct conn_budget *budget;   /* max_connections, shared by every pool */
	struct pool *sp_pool;
	struct userpools *users;
	char *vary_user;              /* "Vary" of user routes: the identity headers */

	pthread_t maintenance;
	bool maintenance_started;
	pthread_t budget_keeper;      /* conn_budget_keep_unit_free */
	bool budget_keeper_started;
	bool metrics_attached;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	bool stopping;
};

/* What one request carries through the request path. */
struct request_ctx {
	struct worker *w;
	struct http_request *req;
	struct http_response *resp;
	const struct route *route;
	struct request_identity who;
	struct lb_error err;
	long long started_ms;
};

/* A connection checked out for one request: from the SP pool, or from the
 * requesting user's pool. */
struct checkout {
	struct worker *w;
	const struct identity *user;  /* NULL: the service principal */
	struct pool_conn *conn;
	struct user_lease lease;
};

/* ---- credential sources for the pools ---- */

static int
sp_credential(void *ctx, struct credential *out, struct lb_error *err)
{
	struct worker *w = ctx;
	struct identity id;

	identity_sp(&id);
	return credcache_acquire(w->creds, &id, out, err);
}

static void
sp_auth_failed(void *ctx, const struct credential *cred)
{
	struct worker *w = ctx;
	struct identity id;

	identity_sp(&id);
	credcache_invalidate(w->creds, &id, cred ? cred->token : NULL);
}

/* ---- metrics: this process's pool gauges, published to the segment ---- */

static void
publish_gauges(struct worker *w)
{
	struct metrics_gauges g;
	struct pool_stats sp, users;

	pool_get_stats(w->sp_pool, &sp);
	userpools_get_stats(w->users, &users);
	g.idle[0] = sp.idle;
	g.busy[0] = sp.busy;
	g.idle[1] = users.idle;
	g.busy[1] = users.busy;
	g.waiting = sp.waiting + users.waiting;
	g.user_pools = userpools_count(w->users);
	metrics_publish(&g);
}

/* ---- maintenance: idle reaping and connection renewal off the request path ---- */

static void *
maintenance_main(void *arg)
{
	struct worker *w = arg;
	struct timespec deadline;
	int interval_ms = MAINTENANCE_INTERVAL_MS, renewing;

	pthread_mutex_lock(&w->lock);
	while (!w->stopping) {
		clock_deadline_ms(&deadline, CLOCK_MONOTONIC, interval_ms);
		pthread_cond_timedwait(&w->wake, &w->lock, &deadline);
		if (w->stopping)
			break;
		pthread_mutex_unlock(&w->lock);
		pool_reap(w->sp_pool);
		renewing = pool_renew(w->sp_pool, NULL);
		renewing += userpools_reap(w->users);
		interval_ms = renewing > 0 ? RENEWAL_PASS_INTERVAL_MS : MAINTENANCE_INTERVAL_MS;
		publish_gauges(w);
		pthread_mutex_lock(&w->lock);
	}
	pthread_mutex_unlock(&w->lock);
	return NULL;
}

static int
start_maintenance(struct worker *w, struct lb_error *err)
{
	pthread_condattr_t attr;

	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&w->wake, &attr);
	pthread_condattr_destroy(&attr);
	pthread_mutex_init(&w->lock, NULL);
	if (pthread_create(&w->maintenance, NULL, maintenance_main, w) != 0)
		return lb_error_set(err, LB_ERR_INTERNAL, "Internal error.", "cannot start the maintenance thread");
	w->maintenance_started = true;
	return 0;
}

static void *
budget_keeper_main(void *arg)
{
	conn_budget_keep_unit_free(arg);
	return NULL;
}

/* Only for a budget that keeps a unit free (as the credential cache
 * starts its refresher only when something refreshes eagerly). */
static int
start_budget_keeper(struct worker *w, struct lb_error *err)
{
	if (!conn_budget_keeps_unit_free(w->budget))
		return 0;
	if (pthread_create(&w->budget_keeper, NULL, budget_keeper_main, w->budget) != 0)
		return lb_error_set(err, LB_ERR_INTERNAL, "Internal error.",
				    "cannot start the connection budget's keeper thread");
	w->budget_keeper_started = true;
	return 0;
}

/* The identity headers, as user routes' answers vary on them. */
static char *
vary_value(const struct lb_config *cfg)
{
	struct strbuf sb;

	strbuf_init(&sb);
	strbuf_append_str(&sb, cfg->email_header);
	strbuf_append(&sb, ", ", 2);
	strbuf_append_str(&sb, cfg->token_header);
	if (strbuf_failed(&sb)) {
		strbuf_free(&sb, false);
		return NULL;
	}
	return strbuf_detach(&sb, NULL);
}

struct worker *
worker_create(const struct lb_config *cfg, struct lb_error *err)
{
	struct worker *w = calloc(1, sizeof(*w));
	struct pool_source sp_source;

	if (w == NULL) {
		lb_error_set(err, LB_ERR_INTERNAL, "Out of memory.", "worker allocation");
		return NULL;
	}
	w->cfg = cfg;
	w->vary_user = vary_value(cfg);
	if (w->vary_user == NULL) {
		lb_error_set(err, LB_ERR_INTERNAL, "Out of memory.", "worker allocation");
		goto fail;
	}
	w->ws = workspace_create(cfg, err);
	if (w->ws == NULL)
		goto fail;
	w->creds = credcache_create(cfg, w->ws, err);
	if (w->creds == NULL)
		goto fail;
	metrics_attach(credcache_shm(w->creds), cfg);
	w->metrics_attached = true;
	sp_source.get_credential = sp_credential;
	sp_source.auth_failed = sp_auth_failed;
	sp_source.ctx = w;
	w->budget = conn_budget_create(cfg->max_connections);
	if (w->budget != NULL && credcache_max_host_connections(w->creds) > 0) {
		/* max_host_connections: every process of the host together. */
		struct conn_budget_host host = {
			credcache_host_conn_take, credcache_host_conn_give, w->creds
		};

		conn_budget_set_host(w->budget, &host);
	}
	w->sp_pool = w->budget ? pool_create(cfg, &cfg->sp_pool, &sp_source, "sp", w->budget) : NULL;
	w->users = w->sp_pool ? userpools_create(cfg, w->creds, w->budget) : NULL;
	if (w->users == NULL) {
		lb_error_set(err, LB_ERR_INTERNAL, "Out of memory.", "connection pools");
		goto fail;
	}
	if (start_maintenance(w, err) != 0 || start_budget_keeper(w, err) != 0)
		goto fail;
	return w;
fail:
	worker_destroy(w);
	return NULL;
}

void
worker_destroy(struct worker *w)
{
	if (w == NULL)
		return;
	if (w->maintenance_started) {
		pthread_mutex_lock(&w->lock);
		w->stopping = true;
		pthread_cond_signal(&w->wake);
		pthread_mutex_unlock(&w->lock);
		pthread_join(w->maintenance, NULL);
		pthread_cond_destroy(&w->wake);
		pthread_mutex_destroy(&w->lock);
	}
	if (w->budget_keeper_started) {
		conn_budget_stop_keeper(w->budget);
		pthread_join(w->budget_keeper, NULL);
	}
	userpools_destroy(w->users);
	if (w->sp_pool != NULL)
		pool_destroy(w->sp_pool);
	conn_budget_destroy(w->budget);
	if (w->metrics_attached)
		metrics_detach();
	if (w->creds != NULL)
		credcache_destroy(w->creds);
	if (w->ws != NULL)
		workspace_destroy(w->ws);
	free(w->vary_user);
	free(w);
}

/* ---- responses ---- */

static void
respond_json(struct request_ctx *rc, int status)
{
	rc->resp->status = status;
}

static void
respond_error(struct request_ctx *rc)
{
	struct http_response *resp = rc->resp;
	char retry[16];

	if (rc->err.code == LB_OK)
		lb_error_set(&rc->err, LB_ERR_INTERNAL, "Internal error.", "error without a code");
	resp->status = lb_errcode_http_status(rc->err.code);
	strbuf_reset(&resp->body);
	responder_error_json(&rc->err, rc->req->request_id, &resp->body);
	if (rc->err.retry_after_s > 0) {
		snprintf(retry, sizeof(retry), "%d", rc->err.retry_after_s);
		response_add_header(resp, "Retry-After", retry);
	}
}

static void
log_request(struct request_ctx *rc)
{
	char status[TEXT_UINT_MAX], duration[TEXT_UINT_MAX];
	bool failed = rc->resp->status >= 400;
	long long elapsed_ms = clock_monotonic_ms() - rc->started_ms;

	text_uint(status, (unsigned)rc->resp->status);
	text_uint(duration, (unsigned long long)(elapsed_ms > 0 ? elapsed_ms : 0));
	metrics_request(rc->w->cfg, rc->route, rc->resp->status, elapsed_ms * 1000);
	if (failed && rc->err.sqlstate[0])
		metrics_pool_error(rc->err.sqlstate);
	if (!rc->w->cfg->access_log && rc->resp->status < 500)
		return;
	/* The email only when log_user; log.c masks any other occurrence. */
	log_event(rc->resp->status >= 500 ? LOG_LVL_WARN : LOG_LVL_INFO, "request",
		  "request_id", rc->req->request_id,
		  "method", rc->req->method,
		  "route", rc->route ? rc->route->path : NULL,
		  "auth", rc->route ? auth_mode_name(rc->route->auth) : NULL,
		  "user", rc->w->cfg->log_user && rc->who.id.kind == IDENTITY_USER ? rc->who.id.email : NULL,
		  "status", status,
		  "duration_ms", duration,
		  "error", failed ? lb_errcode_name(rc->err.code) : NULL,
		  "sqlstate", failed && rc->err.sqlstate[0] ? rc->err.sqlstate : NULL,
		  "detail", failed && rc->err.detail[0] ? rc->err.detail : NULL,
		  (const char *)NULL);
}

/* ---- health ---- */

static bool
is_get(const struct http_request *req)
{
	return strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0;
}

/* Not ready: 503 whatever the cause, the public message naming which
 * dependency failed (the detail, for the log, says how). */
static int
not_ready(struct request_ctx *rc, const char *message)
{
	rc->err.code = LB_ERR_UNAVAILABLE;
	snprintf(rc->err.message, sizeof(rc->err.message), "%s", message);
	return -1;
}

/* Ready: the SP has a valid credential and a connection runs SELECT 1. */
static int
check_ready(struct request_ctx *rc)
{
	struct credential cred = { 0 };
	struct pool_conn *conn;
	PGresult *res;
	int rc_ok;

	if (sp_credential(rc->w, &cred, &rc->err) != 0)
		return not_ready(rc, MSG_NOT_READY_CREDENTIAL);
	credential_clear(&cred);
	if (pool_acquire(rc->w->sp_pool, &conn, &rc->err) != 0)
		return not_ready(rc, MSG_NOT_READY_DATABASE);
	res = PQexec(pool_conn_pg(conn), "SELECT 1");
	rc_ok = PQresultStatus(res) == PGRES_TUPLES_OK;
	if (!rc_ok)
		responder_pg_error(res, pool_conn_pg(conn), &rc->err);
	PQclear(res);
	pool_release(rc->w->sp_pool, conn, !rc_ok);
	return rc_ok ? 0 : not_ready(rc, MSG_NOT_READY_DATABASE);
}

/* The operator endpoints answer loopback and unix-socket clients only,
 * unless metrics.allow is "any". */
static bool
operator_allowed(struct request_ctx *rc)
{
	const char *addr = request_param(rc->req, "REMOTE_ADDR");

	if (metrics_client_allowed(rc->w->cfg->metrics_allow, addr))
		return true;
	lb_error_set(&rc->err, LB_ERR_FORBIDDEN, "Forbidden.", "operator endpoint refused to a non-local client");
	respond_error(rc);
	return false;
}

static void
handle_metrics(struct request_ctx *rc)
{
	if (!operator_allowed(rc))
		return;
	publish_gauges(rc->w);
	strbuf_reset(&rc->resp->body);
	if (metrics_render(rc->w->cfg, &rc->resp->body) != 0) {
		lb_error_set(&rc->err, LB_ERR_INTERNAL, "Internal error.", "metrics unavailable");
		respond_error(rc);
		return;
	}
	rc->resp->content_type = "text/plain; version=0.0.4; charset=utf-8";
	respond_json(rc, 200);
}

static void
handle_status(struct request_ctx *rc)
{
	if (!operator_allowed(rc))
		return;
	publish_gauges(rc->w);
	strbuf_reset(&rc->resp->body);
	if (metrics_status_json(&rc->resp->body) != 0) {
		lb_error_set(&rc->err, LB_ERR_INTERNAL, "Internal error.", "status unavailable");
		respond_error(rc);
		return;
	}
	respond_json(rc, 200);
}

/* Answers the health endpoints; returns true if the request was one. */
static bool
handle_health(struct request_ctx *rc)
{
	const struct lb_config *cfg = rc->w->cfg;

	if (!is_get(rc->req))
		return false;
	if (strcmp(rc->req->path, cfg->healthz_path) == 0) {
		responder_object_json(&rc->resp->body, "status", "ok", (const char *)NULL);
		respond_json(rc, 200);
		return true;
	}
	if (cfg->metrics_enabled && strcmp(rc->req->path, cfg->metrics_path) == 0) {
		handle_metrics(rc);
		return true;
	}
	if (cfg->metrics_enabled && strcmp(rc->req->path, cfg->status_path) == 0) {
		handle_status(rc);
		return true;
	}
	if (strcmp(rc->req->path, cfg->readyz_path) == 0) {
		if (check_ready(rc) == 0) {
			responder_object_json(&rc->resp->body, "status", "ready", (const char *)NULL);
			respond_json(rc, 200);
		} else {
			respond_error(rc);
		}
		return true;
	}
	return false;
}

/* ---- the request path ---- */

static int
match_route(struct request_ctx *rc, struct route_match *m)
{
	struct strbuf allow;
	enum router_status st;

	strbuf_init(&allow);
	st = router_match(rc->w->cfg, rc->req->method, rc->req->path, m, &allow);
	if (st == ROUTER_NOT_FOUND) {
		strbuf_free(&allow, false);
		return lb_error_set(&rc->err, LB_ERR_NOT_FOUND, "No such resource.", "no route for the path");
	}
	if (st == ROUTER_METHOD_NOT_ALLOWED) {
		if (allow.len > 0 && !strbuf_failed(&allow))
			response_add_header(rc->resp, "Allow", allow.data);
		strbuf_free(&allow, false);
		return lb_error_set(&rc->err, LB_ERR_METHOD_NOT_ALLOWED, "Method not allowed.",
				    "method %s", rc->req->method);
	}
	strbuf_free(&allow, false);
	rc->route = m->route;
	return 0;
}

/* application/json, optionally with parameters ("; charset=utf-8"). */
static bool
is_json_content_type(const char *ct)
{
	size_t n = strlen("application/json");

	if (ct == NULL || strncasecmp(ct, "application/json", n) != 0)
		return false;
	return ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ';
}

static int
check_body(struct request_ctx *rc)
{
	if (!route_has_body_params(rc->route))
		return 0;
	if (rc->req->body == NULL || rc->req->body_len == 0)
		return lb_error_set(&rc->err, LB_ERR_BAD_REQUEST, "The request body must be a JSON object.",
				    "empty body");
	if (!is_json_content_type(rc->req->content_type))
		return lb_error_set(&rc->err, LB_ERR_UNSUPPORTED_MEDIA,
				    "The request body must be application/json.", "content type %s",
				    rc->req->content_type ? rc->req->content_type : "(none)");
	return 0;
}

/* A reused connection that failed under the statement: run it again, once,
 * on a fresh connection, where that cannot apply it twice (retry.h). */
static bool
retry_on_fresh_connection(const PGresult *res, PGconn *pg, const struct pool_conn *conn,
			  const struct route *route)
{
	if (pool_conn_is_fresh(conn) || PQstatus(pg) != CONNECTION_BAD ||
	    (res != NULL && PQresultStatus(res) != PGRES_FATAL_ERROR))
		return false;
	return retry_statement(res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL,
			       strcmp(route->method, "GET") == 0);
}

/* One checkout attempt, from the SP pool or the user's pool. */
static int
checkout_once(struct checkout *co, struct lb_error *err)
{
	if (co->user == NULL)
		return pool_acquire(co->w->sp_pool, &co->conn, err);
	if (userpools_acquire(co->w->users, co->user, &co->lease, err) != 0)
		return -1;
	co->conn = co->lease.conn;
	return 0;
}

/*
 * Checks out a connection. A refused login gets one retry: the refused
 * credential was dropped (auth_failed), so the retry mints a new one. A
 * stale credential (replaced by another host's mint, or revoked) looks the
 * same as a missing role; only a second refusal means the role is missing.
 */
static int
checkout_acquire(struct checkout *co, struct lb_error *err)
{
	if (checkout_once(co, err) == 0)
		return 0;
	if (err->code != LB_ERR_ROLE_MISSING)
		return -1;
	lb_error_clear(err);
	return checkout_once(co, err);
}

static void
checkout_release(struct checkout *co, bool broken)
{
	if (co->user == NULL)
		pool_release(co->w->sp_pool, co->conn, broken);
	else
		userpools_release(co->w->users, &co->lease, broken);
	co->conn = NULL;
}

/* Runs the route's SQL on a checked-out connection; fills the response body
 * on success. */
static int
execute_route(struct request_ctx *rc, struct checkout *co, const struct bound_params *bp)
{
	size_t route_index = (size_t)(rc->route - rc->w->cfg->routes);
	PGresult *res = NULL;
	PGconn *pg = NULL;
	int attempt, rcode = -1;
	bool broken, check_utf8;

	for (attempt = 0; attempt < 2; attempt++) {
		if (checkout_acquire(co, &rc->err) != 0)
			return -1;
		pg = pool_conn_pg(co->conn);
		res = statement_run(co->conn, rc->route, route_index, bp);
		if (attempt == 0 && retry_on_fresh_connection(res, pg, co->conn, rc->route)) {
			PQclear(res);
			res = NULL;
			checkout_release(co, true);
			log_info("retrying on a fresh connection", "request_id", rc->req->request_id);
			continue;
		}
		break;
	}
	broken = PQstatus(pg) != CONNECTION_OK;
	switch (PQresultStatus(res)) {
	case PGRES_TUPLES_OK:
	case PGRES_COMMAND_OK:
		/* The result no longer needs the connection: give it back before
		 * the JSON is written, so a busy pool's next request need not wait
		 * for that (a fifth of a request's CPU). */
		check_utf8 = responder_needs_utf8_check(pg);
		checkout_release(co, broken);
		rcode = responder_result_json(res, rc->route, check_utf8, &rc->resp->body, &rc->err);
		break;
	default:
		responder_pg_error(res, pg, &rc->err);
		checkout_release(co, broken);
		break;
	}
	PQclear(res);
	return rcode;
}

static int
run_route(struct request_ctx *rc, const struct route_match *m)
{
	struct bound_params bp = { NULL, 0 };
	struct checkout co = { .w = rc->w };
	int rcode;

	if (identity_from_request(rc->w->cfg, rc->req, rc->route->auth, &rc->who, &rc->err) != 0)
		return -1;
	if (rc->who.id.kind == IDENTITY_USER)
		co.user = &rc->who.id;
	if (check_body(rc) != 0)
		return -1;
	if (params_bind(rc->route, m->path_values, rc->req->query, rc->req->body, rc->req->body_len, &bp,
			&rc->err) != 0)
		return -1;
	rcode = execute_route(rc, &co, &bp);
	bound_params_free(&bp);
	return rcode;
}

/*
 * A user's rows must never be stored by a shared cache (nginx
 * fastcgi_cache, a CDN, a corporate proxy): every answer of an
 * on-behalf-of-user route, errors included, is private and varies on the
 * identity headers. SP routes may opt into caching.
 */
static void
add_cache_headers(struct request_ctx *rc)
{
	const struct route *route = rc->route;

	if (route != NULL && route->auth == AUTH_ON_BEHALF_OF_USER) {
		response_add_header(rc->resp, "Cache-Control", "private, no-store");
		response_add_header(rc->resp, "Vary", rc->w->vary_user);
	} else if (route != NULL && route->cache_control != NULL && rc->resp->status < 300) {
		response_add_header(rc->resp, "Cache-Control", route->cache_control);
	} else {
		response_add_header(rc->resp, "Cache-Control", "no-store");
	}
}

void
worker_handle(struct worker *w, struct http_request *req, struct http_response *resp)
{
	struct request_ctx rc = { .w = w, .req = req, .resp = resp, .started_ms = clock_monotonic_ms() };
	struct route_match m = { NULL, NULL };

	response_add_header(resp, "X-Request-Id", req->request_id);
	if (handle_health(&rc))
		goto done;
	if (match_route(&rc, &m) != 0 || run_route(&rc, &m) != 0) {
		respond_error(&rc);
		goto done;
	}
	respond_json(&rc, rc.route->result == RESULT_ONE && strcmp(req->method, "POST") == 0 ? 201 : 200);
done:
	add_cache_headers(&rc);
	log_request(&rc);
	request_identity_free(&rc.who);
	route_match_free(&m);
}

void
worker_reject(struct worker *w, struct http_request *req, const struct lb_error *err,
	      struct http_response *resp)
{
	struct request_ctx rc = { .w = w, .req = req, .resp = resp, .started_ms = clock_monotonic_ms() };

	rc.err = *err;
	response_add_header(resp, "X-Request-Id", req->request_id);
	respond_error(&rc);
	add_cache_headers(&rc);
	log_request(&rc);
}
