/*
 * seqload.c - a sequential request driver for what wrk does not measure:
 * the latency of each single request, one at a time.
 *
 *   seqload http --url URL --kind K --first F --count N [--requests R] [--parallel P]
 *                [--post BODY]
 *       GET URL (POST BODY as JSON with --post) R times (default N) as the bench users K<F>..K<F+N-1>
 *       (email "<K><NNNN>@bench.example", token "tok-<K><NNNN>"), round
 *       robin, on P keep-alive connections (default 1: one at a time).
 *       cold-1000 uses it for the first request of each of 1000 new
 *       users; run.sh also to prime 1000 users before a measured run,
 *       and for a fixed request count under callgrind.
 *   seqload mintlogin --emu URL --endpoint EP --conninfo STR --kind K --count N [--sql SQL]
 *       For N users: mint a credential at the emulator with the user's
 *       token, then log in with it (TLS + password), then (with --sql) run
 *       SQL once on the new session: the parts a first request consists
 *       of, timed separately. SQL runs as one PQexecParams, a single round
 *       trip, the least a first statement can cost.
 *
 * Prints key=value lines (microseconds) for bench/run.sh.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <libpq-fe.h>
#include <yajl/yajl_gen.h>
#include <yajl/yajl_tree.h>

struct args {
	const char *mode, *url, *kind, *emu, *endpoint, *conninfo, *post, *sql;
	int first, count, requests, parallel;
};

struct sink {
	char *data;
	size_t len;
};

static long
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000L + ts.tv_nsec / 1000;
}

static int
cmp_long(const void *a, const void *b)
{
	long x = *(const long *)a, y = *(const long *)b;

	return (x > y) - (x < y);
}

/* Nearest-rank percentile of a sorted array. */
static long
percentile(const long *sorted, int n, double p)
{
	int rank = (int)(p / 100.0 * n + 0.999999);

	if (n == 0)
		return 0;
	if (rank < 1)
		rank = 1;
	return sorted[(rank > n ? n : rank) - 1];
}

static void
print_stats(const char *prefix, long *v, int n)
{
	long sum = 0;

	qsort(v, (size_t)n, sizeof(*v), cmp_long);
	for (int i = 0; i < n; i++)
		sum += v[i];
	printf("%sn=%d\n%sp50_us=%ld\n%sp90_us=%ld\n%sp99_us=%ld\n%smax_us=%ld\n%smean_us=%ld\n",
	       prefix, n, prefix, percentile(v, n, 50), prefix, percentile(v, n, 90), prefix,
	       percentile(v, n, 99), prefix, n ? v[n - 1] : 0, prefix, n ? sum / n : 0);
}

static size_t
sink_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	struct sink *s = userdata;
	size_t n = size * nmemb;
	char *grown;

	if (s == NULL)
		return n;
	grown = realloc(s->data, s->len + n + 1);
	if (grown == NULL)
		return 0;
	s->data = grown;
	memcpy(s->data + s->len, ptr, n);
	s->len += n;
	s->data[s->len] = '\0';
	return n;
}

static void
user_names(const struct args *a, int i, char *email, size_t esize, char *token, size_t tsize)
{
	snprintf(email, esize, "%s%04d@bench.example", a->kind, i);
	snprintf(token, tsize, "tok-%s%04d", a->kind, i);
}

struct http_worker {
	const struct args *a;
	int index, stride, requests;
	long *lat;
	int errors;
};

/* Requests index, index + stride, ... on one keep-alive connection. */
static void *
http_worker_main(void *arg)
{
	struct http_worker *w = arg;
	const struct args *a = w->a;
	char email[96], token[96], h_email[160], h_token[160];
	CURL *curl = curl_easy_init();
	long status, t0;

	if (curl == NULL) {
		w->errors = w->requests;
		return NULL;
	}
	curl_easy_setopt(curl, CURLOPT_URL, a->url);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, sink_write);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, NULL);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT, 30L);
	if (a->post != NULL)
		curl_easy_setopt(curl, CURLOPT_POSTFIELDS, a->post);
	for (int i = w->index; i < w->requests; i += w->stride) {
		struct curl_slist *h = NULL;

		user_names(a, a->first + i % a->count, email, sizeof(email), token, sizeof(token));
		snprintf(h_email, sizeof(h_email), "X-Forwarded-Email: %s", email);
		snprintf(h_token, sizeof(h_token), "X-Forwarded-Access-Token: %s", token);
		h = curl_slist_append(h, h_email);
		h = curl_slist_append(h, h_token);
		if (a->post != NULL)
			h = curl_slist_append(h, "Content-Type: application/json");
		curl_easy_setopt(curl, CURLOPT_HTTPHEADER, h);
		t0 = now_us();
		status = 0;
		if (curl_easy_perform(curl) != CURLE_OK ||
		    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK ||
		    status < 200 || status > 299)
			w->errors++;
		w->lat[i] = now_us() - t0;
		curl_slist_free_all(h);
	}
	curl_easy_cleanup(curl);
	return NULL;
}

static int
run_http(const struct args *a)
{
	int requests = a->requests > 0 ? a->requests : a->count, errors = 0;
	int parallel = a->parallel > 0 ? a->parallel : 1;
	long *lat = calloc((size_t)requests, sizeof(*lat));
	struct http_worker *w = calloc((size_t)parallel, sizeof(*w));
	pthread_t *tids = calloc((size_t)parallel, sizeof(*tids));

	if (lat == NULL || w == NULL || tids == NULL)
		return 1;
	for (int t = 0; t < parallel; t++) {
		w[t] = (struct http_worker){ .a = a, .index = t, .stride = parallel, .requests = requests, .lat = lat };
		if (pthread_create(&tids[t], NULL, http_worker_main, &w[t]) != 0)
			return 1;
	}
	for (int t = 0; t < parallel; t++) {
		pthread_join(tids[t], NULL);
		errors += w[t].errors;
	}
	printf("requests=%d\nerrors=%d\n", requests, errors);
	print_stats("", lat, requests);
	free(lat);
	free(w);
	free(tids);
	return 0;
}

/* POSTs {"endpoint": ...} with the user's token; the credential in *cred. */
static int
mint(CURL *curl, const struct args *a, const char *token, char **cred)
{
	static const char *path[] = { "token", NULL };
	char url[512], auth[160];
	struct curl_slist *h = NULL;
	struct sink s = { NULL, 0 };
	const unsigned char *body;
	size_t body_len;
	yajl_gen g = yajl_gen_alloc(NULL);
	yajl_val tree, v;
	long status = 0;
	int rc = -1;

	yajl_gen_map_open(g);
	yajl_gen_string(g, (const unsigned char *)"endpoint", 8);
	yajl_gen_string(g, (const unsigned char *)a->endpoint, strlen(a->endpoint));
	yajl_gen_map_close(g);
	yajl_gen_get_buf(g, &body, &body_len);
	snprintf(url, sizeof(url), "%s/api/2.0/postgres/credentials", a->emu);
	snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
	h = curl_slist_append(h, auth);
	h = curl_slist_append(h, "Content-Type: application/json");
	curl_easy_setopt(curl, CURLOPT_URL, url);
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(curl, CURLOPT_POSTFIELDS, (const char *)body);
	curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long)body_len);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, sink_write);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, &s);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT, 30L);
	if (curl_easy_perform(curl) == CURLE_OK &&
	    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK && status == 200 &&
	    s.data != NULL) {
		tree = yajl_tree_parse(s.data, NULL, 0);
		v = tree ? yajl_tree_get(tree, path, yajl_t_string) : NULL;
		if (v != NULL && v->u.string != NULL && (*cred = strdup(v->u.string)) != NULL)
			rc = 0;
		yajl_tree_free(tree);
	}
	curl_slist_free_all(h);
	free(s.data);
	yajl_gen_free(g);
	return rc;
}

/* The statement's time on the new session, or -1 if it failed. */
static long
first_statement(PGconn *pg, const char *sql)
{
	long t0 = now_us();
	PGresult *res = PQexecParams(pg, sql, 0, NULL, NULL, NULL, NULL, 0);
	long us = now_us() - t0;
	int ok = PQresultStatus(res) == PGRES_TUPLES_OK || PQresultStatus(res) == PGRES_COMMAND_OK;

	PQclear(res);
	return ok ? us : -1;
}

static int
run_mintlogin(const struct args *a)
{
	long *mint_us = calloc((size_t)a->count, sizeof(long));
	long *login_us = calloc((size_t)a->count, sizeof(long));
	long *stmt_us = calloc((size_t)a->count, sizeof(long));
	char email[96], token[96];
	CURL *curl = curl_easy_init();
	int n = 0, errors = 0;
	long t0;

	if (mint_us == NULL || login_us == NULL || stmt_us == NULL || curl == NULL)
		return 1;
	for (int i = 0; i < a->count; i++) {
		const char *keys[] = { "dbname", "user", "password", "application_name", "gssencmode",
				       "client_encoding", NULL };
		const char *values[7] = { a->conninfo, email, NULL, "lakebase-bench-ref", "disable", "UTF8",
					  NULL };
		char *cred = NULL;
		PGconn *pg;

		user_names(a, a->first + i, email, sizeof(email), token, sizeof(token));
		t0 = now_us();
		if (mint(curl, a, token, &cred) != 0) {
			errors++;
			continue;
		}
		mint_us[n] = now_us() - t0;
		values[2] = cred;
		t0 = now_us();
		pg = PQconnectdbParams(keys, values, 1);
		login_us[n] = now_us() - t0;
		if (PQstatus(pg) != CONNECTION_OK ||
		    (a->sql != NULL && (stmt_us[n] = first_statement(pg, a->sql)) < 0))
			errors++;
		else
			n++;
		PQfinish(pg);
		free(cred);
	}
	printf("errors=%d\n", errors);
	print_stats("mint_", mint_us, n);
	print_stats("login_", login_us, n);
	if (a->sql != NULL)
		print_stats("stmt_", stmt_us, n);
	curl_easy_cleanup(curl);
	free(mint_us);
	free(login_us);
	free(stmt_us);
	return 0;
}

static int
parse_args(int argc, char **argv, struct args *a)
{
	memset(a, 0, sizeof(*a));
	a->first = 1;
	if (argc < 2)
		return -1;
	a->mode = argv[1];
	for (int i = 2; i + 1 < argc; i += 2) {
		const char *k = argv[i], *v = argv[i + 1];

		if (strcmp(k, "--url") == 0) a->url = v;
		else if (strcmp(k, "--kind") == 0) a->kind = v;
		else if (strcmp(k, "--emu") == 0) a->emu = v;
		else if (strcmp(k, "--endpoint") == 0) a->endpoint = v;
		else if (strcmp(k, "--conninfo") == 0) a->conninfo = v;
		else if (strcmp(k, "--first") == 0) a->first = atoi(v);
		else if (strcmp(k, "--count") == 0) a->count = atoi(v);
		else if (strcmp(k, "--requests") == 0) a->requests = atoi(v);
		else if (strcmp(k, "--parallel") == 0) a->parallel = atoi(v);
		else if (strcmp(k, "--post") == 0) a->post = v;
		else if (strcmp(k, "--sql") == 0) a->sql = v;
		else return -1;
	}
	if (a->kind == NULL || strlen(a->kind) > 8 || a->count < 1 || a->count > 100000 || a->requests < 0 ||
	    a->parallel < 0 || a->parallel > 256)
		return -1;
	if (strcmp(a->mode, "http") == 0)
		return a->url != NULL ? 0 : -1;
	if (strcmp(a->mode, "mintlogin") == 0)
		return a->emu != NULL && a->endpoint != NULL && a->conninfo != NULL ? 0 : -1;
	return -1;
}

int
main(int argc, char **argv)
{
	struct args a;
	int rc;

	if (parse_args(argc, argv, &a) != 0) {
		fprintf(stderr, "usage: seqload http --url URL --kind K [--first F] --count N [--requests R] [--parallel P] [--post BODY]\n"
				"       seqload mintlogin --emu URL --endpoint EP --conninfo STR --kind K --count N [--sql SQL]\n");
		return 2;
	}
	curl_global_init(CURL_GLOBAL_DEFAULT);
	rc = strcmp(a.mode, "http") == 0 ? run_http(&a) : run_mintlogin(&a);
	curl_global_cleanup();
	return rc;
}
