/*
 * floor.c - the "floor" of the benchmarks: the smallest program doing the
 * work of lakebase-fcgi's user route, and nothing else. It is driven the
 * way the product is (nginx, the same FastCGI socket type and thread
 * count), so the difference between the two is the product's own cost.
 *
 * Per request: the user is the X-Forwarded-Email header (the token is not
 * checked); a persistent libpq connection logged in as that user (TLS
 * verify-full + password, the same connection keywords as the product) is
 * taken from a per-user stack of idle ones, or opened; one PQexecParams;
 * the rows as JSON with yajl_gen, typed by OID; the connection goes back.
 * GET runs SELECT_SQL with the query's limit, POST runs INSERT_SQL with
 * the body's title (parsed with yajl_tree). No caps, no credential
 * cache: every bench role has the same static password (FLOOR_PASSWORD,
 * set by bench/run.sh), so connections never need a new login.
 *
 *   FLOOR_PASSWORD=... floor --listen unix:/path --threads N \
 *       --conninfo "host=... port=... dbname=... sslmode=verify-full sslrootcert=..."
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fcgiapp.h>
#include <libpq-fe.h>
#include <yajl/yajl_gen.h>
#include <yajl/yajl_tree.h>

#include "fcgx_finish.h"

/* The SQL of the stack's /api/my/todos routes, placeholders already $n. */
#define SELECT_SQL "SELECT id, title, done, owner FROM app.todos ORDER BY title LIMIT $1"
#define INSERT_SQL "INSERT INTO app.todos (title) VALUES ($1) RETURNING id, title, done, owner"

#define NBUCKETS 4096
#define MAX_BODY 65536

/* Built-in type OIDs (pg_type.h is server-side only). */
#define OID_BOOL 16
#define OID_INT8 20
#define OID_INT2 21
#define OID_INT4 23
#define OID_FLOAT4 700
#define OID_FLOAT8 701
#define OID_NUMERIC 1700

struct user_conns {
	char *email;
	PGconn **idle;
	int nidle, cap;
	struct user_conns *next;
};

static struct {
	int listen_fd;
	const char *conninfo;
	const char *password;
	pthread_mutex_t lock;
	struct user_conns *buckets[NBUCKETS];
} floor_state = { .lock = PTHREAD_MUTEX_INITIALIZER };

static unsigned
hash_email(const char *s)
{
	uint32_t h = 2166136261u;

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h % NBUCKETS;
}

/* With the lock held: the user's entry, created on first use. */
static struct user_conns *
user_locked(const char *email)
{
	unsigned b = hash_email(email);
	struct user_conns *u;

	for (u = floor_state.buckets[b]; u != NULL; u = u->next) {
		if (strcmp(u->email, email) == 0)
			return u;
	}
	u = calloc(1, sizeof(*u));
	if (u == NULL || (u->email = strdup(email)) == NULL) {
		free(u);
		return NULL;
	}
	u->next = floor_state.buckets[b];
	floor_state.buckets[b] = u;
	return u;
}

static PGconn *
connect_as(const char *email)
{
	const char *keys[] = { "dbname", "user", "password", "application_name", "gssencmode",
			       "client_encoding", NULL };
	const char *values[] = { floor_state.conninfo, email, floor_state.password, "lakebase-floor",
				 "disable", "UTF8", NULL };
	PGconn *pg = PQconnectdbParams(keys, values, 1);

	if (pg != NULL && PQstatus(pg) != CONNECTION_OK) {
		fprintf(stderr, "floor: login as %s failed: %s", email, PQerrorMessage(pg));
		PQfinish(pg);
		return NULL;
	}
	return pg;
}

static PGconn *
conn_get(const char *email)
{
	struct user_conns *u;
	PGconn *pg = NULL;

	pthread_mutex_lock(&floor_state.lock);
	u = user_locked(email);
	if (u != NULL && u->nidle > 0)
		pg = u->idle[--u->nidle];
	pthread_mutex_unlock(&floor_state.lock);
	return pg != NULL ? pg : connect_as(email);
}

static void
conn_put(const char *email, PGconn *pg)
{
	struct user_conns *u;
	PGconn **grown;

	if (PQstatus(pg) != CONNECTION_OK) {
		PQfinish(pg);
		return;
	}
	pthread_mutex_lock(&floor_state.lock);
	u = user_locked(email);
	if (u != NULL && u->nidle == u->cap) {
		grown = realloc(u->idle, (size_t)(u->cap ? u->cap * 2 : 4) * sizeof(*grown));
		if (grown != NULL) {
			u->idle = grown;
			u->cap = u->cap ? u->cap * 2 : 4;
		}
	}
	if (u != NULL && u->nidle < u->cap) {
		u->idle[u->nidle++] = pg;
		pg = NULL;
	}
	pthread_mutex_unlock(&floor_state.lock);
	if (pg != NULL)
		PQfinish(pg);
}

/* One row as a JSON object, values typed by column OID. */
static void
gen_row(yajl_gen g, const PGresult *res, int row)
{
	int ncols = PQnfields(res);

	yajl_gen_map_open(g);
	for (int c = 0; c < ncols; c++) {
		const char *name = PQfname(res, c);
		const char *v = PQgetvalue(res, row, c);

		yajl_gen_string(g, (const unsigned char *)name, strlen(name));
		if (PQgetisnull(res, row, c)) {
			yajl_gen_null(g);
			continue;
		}
		switch (PQftype(res, c)) {
		case OID_BOOL:
			yajl_gen_bool(g, v[0] == 't');
			break;
		case OID_INT2: case OID_INT4: case OID_INT8:
		case OID_FLOAT4: case OID_FLOAT8: case OID_NUMERIC:
			yajl_gen_number(g, v, (size_t)PQgetlength(res, row, c));
			break;
		default:
			yajl_gen_string(g, (const unsigned char *)v, (size_t)PQgetlength(res, row, c));
			break;
		}
	}
	yajl_gen_map_close(g);
}

static void
respond(FCGX_Request *req, int status, const char *reason, const unsigned char *body, size_t len)
{
	char head[256];
	int n;

	/* snprintf, not FCGX_FPrintF: libfcgi's own formatter knows no %zu. */
	n = snprintf(head, sizeof(head),
		     "Status: %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
		     "Cache-Control: private, no-store\r\n\r\n", status, reason, len);
	FCGX_PutStr(head, n, req->out);
	FCGX_PutStr((const char *)body, (int)len, req->out);
}

static void
respond_text(FCGX_Request *req, int status, const char *reason)
{
	static const char err[] = "{\"error\":\"floor\"}";

	respond(req, status, reason, (const unsigned char *)err, sizeof(err) - 1);
}

/* The limit query parameter (default 50), as text for $1. */
static void
query_limit(const char *query, char *out, size_t size)
{
	const char *p = query ? strstr(query, "limit=") : NULL;
	long v = p ? strtol(p + 6, NULL, 10) : 50;

	snprintf(out, size, "%ld", v >= 1 && v <= 500 ? v : 50);
}

/* The "title" of a JSON body; NULL if there is none. Caller frees. */
static char *
body_title(FCGX_Request *req)
{
	const char *cl = FCGX_GetParam("CONTENT_LENGTH", req->envp);
	long len = cl ? strtol(cl, NULL, 10) : 0;
	static const char *path[] = { "title", NULL };
	char *buf, *title = NULL;
	yajl_val tree, v;

	if (len <= 0 || len > MAX_BODY || (buf = malloc((size_t)len + 1)) == NULL)
		return NULL;
	if (FCGX_GetStr(buf, (int)len, req->in) != (int)len) {
		free(buf);
		return NULL;
	}
	buf[len] = '\0';
	tree = yajl_tree_parse(buf, NULL, 0);
	v = tree ? yajl_tree_get(tree, path, yajl_t_string) : NULL;
	if (v != NULL && v->u.string != NULL)
		title = strdup(v->u.string);
	yajl_tree_free(tree);
	free(buf);
	return title;
}

static void
handle(FCGX_Request *req)
{
	const char *email = FCGX_GetParam("HTTP_X_FORWARDED_EMAIL", req->envp);
	const char *method = FCGX_GetParam("REQUEST_METHOD", req->envp);
	int is_post = method != NULL && strcmp(method, "POST") == 0;
	char limit[16], *title = NULL;
	const char *values[1];
	const unsigned char *out;
	size_t out_len;
	PGresult *res;
	PGconn *pg;
	yajl_gen g;

	if (email == NULL || *email == '\0') {
		respond_text(req, 401, "Unauthorized");
		return;
	}
	if (is_post) {
		if ((title = body_title(req)) == NULL) {
			respond_text(req, 400, "Bad Request");
			return;
		}
		values[0] = title;
	} else {
		query_limit(FCGX_GetParam("QUERY_STRING", req->envp), limit, sizeof(limit));
		values[0] = limit;
	}
	if ((pg = conn_get(email)) == NULL) {
		free(title);
		respond_text(req, 503, "Service Unavailable");
		return;
	}
	res = PQexecParams(pg, is_post ? INSERT_SQL : SELECT_SQL, 1, NULL, values, NULL, NULL, 0);
	free(title);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		PQclear(res);
		conn_put(email, pg);
		respond_text(req, 500, "Internal Server Error");
		return;
	}
	g = yajl_gen_alloc(NULL);
	if (is_post) {
		gen_row(g, res, 0);
	} else {
		yajl_gen_array_open(g);
		for (int r = 0; r < PQntuples(res); r++)
			gen_row(g, res, r);
		yajl_gen_array_close(g);
	}
	PQclear(res);
	conn_put(email, pg);
	yajl_gen_get_buf(g, &out, &out_len);
	respond(req, is_post ? 201 : 200, is_post ? "Created" : "OK", out, out_len);
	yajl_gen_free(g);
}

static void *
serve_thread(void *arg)
{
	FCGX_Request req;

	(void)arg;
	if (FCGX_InitRequest(&req, floor_state.listen_fd, 0) != 0)
		return NULL;
	while (FCGX_Accept_r(&req) >= 0) {
		handle(&req);
		bench_fcgx_finish(&req);
	}
	return NULL;
}

int
main(int argc, char **argv)
{
	const char *listen = NULL;
	int threads = 16, sig;
	pthread_t tid;
	sigset_t set;

	for (int i = 1; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--listen") == 0)
			listen = argv[i + 1];
		else if (strcmp(argv[i], "--threads") == 0)
			threads = atoi(argv[i + 1]);
		else if (strcmp(argv[i], "--conninfo") == 0)
			floor_state.conninfo = argv[i + 1];
	}
	floor_state.password = getenv("FLOOR_PASSWORD");
	if (listen == NULL || strncmp(listen, "unix:", 5) != 0 || threads < 1 || threads > 1024 ||
	    floor_state.conninfo == NULL || floor_state.password == NULL) {
		fprintf(stderr, "usage: FLOOR_PASSWORD=... floor --listen unix:/path --threads N --conninfo STR\n");
		return 2;
	}
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (FCGX_Init() != 0)
		return 1;
	unlink(listen + 5);
	floor_state.listen_fd = FCGX_OpenSocket(listen + 5, 1024);
	if (floor_state.listen_fd < 0 || chmod(listen + 5, 0666) != 0) {
		fprintf(stderr, "floor: cannot listen on %s: %s\n", listen, strerror(errno));
		return 1;
	}
	for (int i = 0; i < threads; i++) {
		if (pthread_create(&tid, NULL, serve_thread, NULL) != 0)
			return 1;
		pthread_detach(tid);
	}
	sigwait(&set, &sig);
	unlink(listen + 5);
	/* Exiting closes every connection; the server sees them go. */
	_exit(0);
}
