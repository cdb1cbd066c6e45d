/*
 * emulator.c - lakebase-emulator: a local stand-in for the Databricks
 * workspace API that lakebase-fcgi talks to (OIDC discovery and M2M token,
 * Lakebase database credentials, SCIM Me), plus a test-control API for
 * fault injection and counters. Used by the local stack and the integration
 * tests; never deployed.
 *
 * Credentials really work against PostgreSQL ("password mode"): minting a
 * credential for a role runs ALTER ROLE ... PASSWORD <MD5 verifier of the
 * credential> VALID UNTIL <expiry> on the configured cluster, so Postgres
 * itself accepts and expires it. Logins send the credential as a password
 * over TLS, as with Lakebase (md5_verifier says why MD5).
 * What this implies, unlike real Lakebase:
 *   - only the NEWEST credential of a role is valid for new logins: minting
 *     again replaces the password, and earlier credentials stop working even
 *     before their expire_time;
 *   - sessions already logged in survive the expiry (VALID UNTIL only checks
 *     at authentication), as with PostgreSQL and Lakebase;
 *   - the admin role in "postgres" needs CREATEROLE (or superuser).
 * A mint for a role that does not exist in PostgreSQL still answers 200
 * (as Lakebase does: the login then fails) and is counted.
 */
#include "httpd.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <yajl/yajl_gen.h>
#include <yajl/yajl_tree.h>

#define PATH_WELL_KNOWN  "/oidc/.well-known/oauth-authorization-server"
#define PATH_TOKEN       "/oidc/v1/token"
#define PATH_CREDENTIALS "/api/2.0/postgres/credentials"
#define PATH_SCIM_ME     "/api/2.0/preview/scim/v2/Me"
#define ADMIN_PREFIX     "/_emulator/"

#define LIFETIME_MAX_S     (7 * 24 * 3600)
#define DELAY_MAX_MS       600000
#define FAULTS_MAX         1000
#define FAULT_COUNT_MAX    1000000
/* Issued OAuth tokens kept at most; beyond, the oldest is forgotten. */
#define OAUTH_TOKENS_MAX   100000
#define CONFIG_FILE_MAX    (1024 * 1024)
/* Random padding claim in the credential: makes the whole token ~1.5 KB,
 * the size of real Lakebase credentials, so clients' buffers are exercised. */
#define CREDENTIAL_PAD_BYTES 512
#define CREDENTIAL_MIN_LEN   1200
/* The client id or email is the PostgreSQL role name: NAMEDATALEN - 1 bytes,
 * longer names would be silently truncated by the server. */
#define ROLE_NAME_MAX 63

/* ---- growable buffer (wiped on free: it holds tokens and SQL) --------- */

struct sbuf {
	char *p;
	size_t len;
	size_t cap;
	int failed;
};

#define SBUF_MAX (8u * 1024u * 1024u)

static void sb_append(struct sbuf *b, const void *data, size_t n)
{
	if (b->failed)
		return;
	if (n > SBUF_MAX || b->len > SBUF_MAX - n) {
		b->failed = 1;
		return;
	}
	if (b->len + n + 1 > b->cap) {
		size_t ncap = b->cap ? b->cap : 256;
		while (ncap < b->len + n + 1)
			ncap *= 2;
		char *np = malloc(ncap);
		if (!np) {
			b->failed = 1;
			return;
		}
		/* Copy and wipe instead of realloc: no stray copy of a secret. */
		if (b->p) {
			memcpy(np, b->p, b->len);
			OPENSSL_cleanse(b->p, b->cap);
			free(b->p);
		}
		b->p = np;
		b->cap = ncap;
	}
	if (n)
		memcpy(b->p + b->len, data, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void sb_str(struct sbuf *b, const char *s)
{
	sb_append(b, s, strlen(s));
}

static void sb_free(struct sbuf *b)
{
	if (b->p) {
		OPENSSL_cleanse(b->p, b->cap);
		free(b->p);
	}
	memset(b, 0, sizeof *b);
}

static void free_secret(char *s)
{
	if (s) {
		OPENSSL_cleanse(s, strlen(s));
		free(s);
	}
}

static char *xstrdup(const char *s)
{
	size_t n = strlen(s);
	char *d = malloc(n + 1);
	if (d)
		memcpy(d, s, n + 1);
	return d;
}

/* ---- logging ------------------------------------------------------------ */

static void log_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* One line to stderr with a UTC timestamp. Callers never pass a secret. */
static void log_msg(const char *fmt, ...)
{
	char ts[32];
	struct timespec now;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	if (!strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm))
		ts[0] = '\0';
	va_list ap;
	va_start(ap, fmt);
	flockfile(stderr);
	fprintf(stderr, "%s.%03ldZ lakebase-emulator: ", ts, now.tv_nsec / 1000000L);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	funlockfile(stderr);
	va_end(ap);
}

/* ---- JSON output (yajl_gen into an sbuf, so it can be wiped) ------------ */

struct jw {
	yajl_gen g;
	struct sbuf out;
	int err;
};

static void jw_print(void *ctx, const char *str, size_t len)
{
	sb_append(ctx, str, len);
}

static int jw_init(struct jw *w)
{
	memset(w, 0, sizeof *w);
	w->g = yajl_gen_alloc(NULL);
	if (!w->g)
		return -1;
	yajl_gen_config(w->g, yajl_gen_validate_utf8, 1);
	yajl_gen_config(w->g, yajl_gen_print_callback, jw_print, &w->out);
	return 0;
}

static void jw_check(struct jw *w, yajl_gen_status st)
{
	if (st != yajl_gen_status_ok)
		w->err = 1;
}

static void jw_str(struct jw *w, const char *s)
{
	jw_check(w, yajl_gen_string(w->g, (const unsigned char *)s, strlen(s)));
}

static void jw_kstr(struct jw *w, const char *k, const char *v)
{
	jw_str(w, k);
	jw_str(w, v);
}

static void jw_kint(struct jw *w, const char *k, long long v)
{
	jw_str(w, k);
	jw_check(w, yajl_gen_integer(w->g, v));
}

static void jw_open(struct jw *w)  { jw_check(w, yajl_gen_map_open(w->g)); }
static void jw_close(struct jw *w) { jw_check(w, yajl_gen_map_close(w->g)); }

static void jw_free(struct jw *w)
{
	if (w->g)
		yajl_gen_free(w->g);
	sb_free(&w->out);
}

/* Takes the finished document (caller frees with free_secret), or NULL. */
static char *jw_take(struct jw *w)
{
	if (w->err || w->out.failed || !w->out.p)
		return NULL;
	char *s = w->out.p;
	memset(&w->out, 0, sizeof w->out);
	return s;
}

/* Sends the document as the answer, then frees the writer. */
static void jw_send(struct jw *w, struct httpd_response *resp, int status)
{
	if (w->err || w->out.failed || !w->out.p) {
		static const char fail[] = "{\"error_code\":\"INTERNAL_ERROR\",\"message\":\"Cannot build the answer.\"}";
		httpd_response_status(resp, 500);
		httpd_response_body(resp, "application/json", fail, sizeof fail - 1);
	} else {
		httpd_response_status(resp, status);
		httpd_response_body(resp, "application/json", w->out.p, w->out.len);
	}
	jw_free(w);
}

/* Databricks REST error: {"error_code":"...","message":"..."} */
static void send_error(struct httpd_response *resp, int status, const char *code, const char *message)
{
	struct jw w;
	if (jw_init(&w)) {
		httpd_response_status(resp, 500);
		return;
	}
	jw_open(&w);
	jw_kstr(&w, "error_code", code);
	jw_kstr(&w, "message", message);
	jw_close(&w);
	jw_send(&w, resp, status);
}

/* OAuth 2.0 error (RFC 6749 section 5.2): {"error":"...","error_description":"..."} */
static void send_oauth_error(struct httpd_response *resp, int status, const char *error,
                             const char *description)
{
	struct jw w;
	if (jw_init(&w)) {
		httpd_response_status(resp, 500);
		return;
	}
	jw_open(&w);
	jw_kstr(&w, "error", error);
	jw_kstr(&w, "error_description", description);
	jw_close(&w);
	httpd_response_header(resp, "Cache-Control", "no-store");
	jw_send(&w, resp, status);
}

/* ---- configuration ------------------------------------------------------ */

/* The string of a JSON string value, or NULL for anything else. */
static const char *json_string(yajl_val v)
{
	return v && YAJL_IS_STRING(v) ? v->u.string : NULL;
}

struct sp_conf {
	char *client_id;
	char *client_secret;
};

struct user_conf {
	char *email;
	char **tokens;
	size_t ntokens;
};

struct config {
	char *listen;
	char *postgres;
	long long credential_lifetime_s;
	long long oauth_token_lifetime_s;
	char *endpoint;
	struct sp_conf *sps;
	size_t nsps;
	struct user_conf *users;
	size_t nusers;
};

static void config_free(struct config *c)
{
	free(c->listen);
	free_secret(c->postgres);
	free(c->endpoint);
	for (size_t i = 0; i < c->nsps; i++) {
		free(c->sps[i].client_id);
		free_secret(c->sps[i].client_secret);
	}
	free(c->sps);
	for (size_t i = 0; i < c->nusers; i++) {
		free(c->users[i].email);
		for (size_t j = 0; j < c->users[i].ntokens; j++)
			free_secret(c->users[i].tokens[j]);
		free(c->users[i].tokens);
	}
	free(c->users);
	memset(c, 0, sizeof *c);
}

/* Config errors name the file and the JSON path of the offending value. */
static int cfg_err(const char *file, const char *path, const char *what)
{
	fprintf(stderr, "lakebase-emulator: %s: %s: %s\n", file, path, what);
	return -1;
}

static int cfg_string(const char *file, const char *path, yajl_val v, char **out)
{
	const char *s = json_string(v);
	if (!s || !s[0])
		return cfg_err(file, path, "expected a non-empty string");
	free(*out);
	*out = xstrdup(s);
	return *out ? 0 : cfg_err(file, path, "out of memory");
}

static int cfg_lifetime(const char *file, const char *path, yajl_val v, long long *out)
{
	if (!YAJL_IS_INTEGER(v) || YAJL_GET_INTEGER(v) < 1 || YAJL_GET_INTEGER(v) > LIFETIME_MAX_S)
		return cfg_err(file, path, "expected an integer number of seconds from 1 to 604800");
	*out = YAJL_GET_INTEGER(v);
	return 0;
}

/* True when a token or client id is already used somewhere in the config:
 * each bearer token must name exactly one identity. */
static int token_taken(const struct config *c, const char *tok)
{
	for (size_t i = 0; i < c->nusers; i++)
		for (size_t j = 0; j < c->users[i].ntokens; j++)
			if (strcmp(c->users[i].tokens[j], tok) == 0)
				return 1;
	return 0;
}

static int cfg_sps(const char *file, yajl_val v, struct config *c)
{
	char path[256];
	if (!YAJL_IS_ARRAY(v))
		return cfg_err(file, "service_principals", "expected an array");
	size_t n = v->u.array.len;
	c->sps = calloc(n ? n : 1, sizeof *c->sps);
	if (!c->sps)
		return cfg_err(file, "service_principals", "out of memory");
	for (size_t i = 0; i < n; i++) {
		yajl_val o = v->u.array.values[i];
		struct sp_conf *sp = &c->sps[c->nsps++];
		snprintf(path, sizeof path, "service_principals[%zu]", i);
		if (!YAJL_IS_OBJECT(o))
			return cfg_err(file, path, "expected an object");
		for (size_t k = 0; k < o->u.object.len; k++) {
			const char *key = o->u.object.keys[k];
			yajl_val val = o->u.object.values[k];
			snprintf(path, sizeof path, "service_principals[%zu].%s", i, key);
			if (strcmp(key, "client_id") == 0) {
				if (cfg_string(file, path, val, &sp->client_id))
					return -1;
			} else if (strcmp(key, "client_secret") == 0) {
				if (cfg_string(file, path, val, &sp->client_secret))
					return -1;
			} else {
				return cfg_err(file, path, "unknown key");
			}
		}
		snprintf(path, sizeof path, "service_principals[%zu]", i);
		if (!sp->client_id || !sp->client_secret)
			return cfg_err(file, path, "needs \"client_id\" and \"client_secret\"");
		if (strlen(sp->client_id) > ROLE_NAME_MAX)
			return cfg_err(file, path, "client_id is longer than a PostgreSQL role name (63 bytes)");
		for (size_t j = 0; j + 1 < c->nsps; j++)
			if (strcmp(c->sps[j].client_id, sp->client_id) == 0)
				return cfg_err(file, path, "duplicate client_id");
	}
	return 0;
}

static int cfg_users(const char *file, yajl_val v, struct config *c)
{
	char path[256];
	if (!YAJL_IS_ARRAY(v))
		return cfg_err(file, "users", "expected an array");
	size_t n = v->u.array.len;
	c->users = calloc(n ? n : 1, sizeof *c->users);
	if (!c->users)
		return cfg_err(file, "users", "out of memory");
	for (size_t i = 0; i < n; i++) {
		yajl_val o = v->u.array.values[i];
		struct user_conf *u = &c->users[c->nusers++];
		snprintf(path, sizeof path, "users[%zu]", i);
		if (!YAJL_IS_OBJECT(o))
			return cfg_err(file, path, "expected an object");
		for (size_t k = 0; k < o->u.object.len; k++) {
			const char *key = o->u.object.keys[k];
			yajl_val val = o->u.object.values[k];
			snprintf(path, sizeof path, "users[%zu].%s", i, key);
			if (strcmp(key, "email") == 0) {
				if (cfg_string(file, path, val, &u->email))
					return -1;
			} else if (strcmp(key, "tokens") == 0) {
				if (!YAJL_IS_ARRAY(val) || val->u.array.len == 0)
					return cfg_err(file, path, "expected a non-empty array of strings");
				if (u->tokens)
					return cfg_err(file, path, "given twice");
				u->tokens = calloc(val->u.array.len, sizeof *u->tokens);
				if (!u->tokens)
					return cfg_err(file, path, "out of memory");
				for (size_t t = 0; t < val->u.array.len; t++) {
					snprintf(path, sizeof path, "users[%zu].tokens[%zu]", i, t);
					char *tok = NULL;
					if (cfg_string(file, path, val->u.array.values[t], &tok))
						return -1;
					if (token_taken(c, tok)) {
						free_secret(tok);
						return cfg_err(file, path, "token already given to a user");
					}
					u->tokens[u->ntokens++] = tok;
				}
			} else {
				return cfg_err(file, path, "unknown key");
			}
		}
		snprintf(path, sizeof path, "users[%zu]", i);
		if (!u->email || !u->tokens)
			return cfg_err(file, path, "needs \"email\" and \"tokens\"");
		if (strlen(u->email) > ROLE_NAME_MAX)
			return cfg_err(file, path, "email is longer than a PostgreSQL role name (63 bytes)");
		for (size_t j = 0; j + 1 < c->nusers; j++)
			if (strcmp(c->users[j].email, u->email) == 0)
				return cfg_err(file, path, "duplicate email");
	}
	return 0;
}

static int config_load(const char *file, struct config *c)
{
	memset(c, 0, sizeof *c);
	c->credential_lifetime_s = 3600;
	c->oauth_token_lifetime_s = 3600;

	FILE *f = fopen(file, "r");
	if (!f) {
		fprintf(stderr, "lakebase-emulator: %s: %s\n", file, strerror(errno));
		return -1;
	}
	struct sbuf text = {0};
	char chunk[4096];
	size_t n;
	while ((n = fread(chunk, 1, sizeof chunk, f)) > 0 && text.len <= CONFIG_FILE_MAX)
		sb_append(&text, chunk, n);
	int rerr = ferror(f);
	fclose(f);
	if (rerr || text.failed || text.len > CONFIG_FILE_MAX || !text.p) {
		sb_free(&text);
		fprintf(stderr, "lakebase-emulator: %s: unreadable, empty or larger than 1 MiB\n", file);
		return -1;
	}
	if (strlen(text.p) != text.len) {
		sb_free(&text);
		return cfg_err(file, "(file)", "contains a NUL byte");
	}
	char perr[512];
	yajl_val root = yajl_tree_parse(text.p, perr, sizeof perr);   /* comments allowed */
	sb_free(&text);
	if (!root) {
		/* yajl's message spans lines; keep the first. */
		perr[strcspn(perr, "\n")] = '\0';
		fprintf(stderr, "lakebase-emulator: %s: invalid JSON: %s\n", file, perr);
		return -1;
	}
	int rc = 0;
	if (!YAJL_IS_OBJECT(root)) {
		rc = cfg_err(file, "(top level)", "expected an object");
		goto out;
	}
	for (size_t i = 0; i < root->u.object.len && rc == 0; i++) {
		const char *key = root->u.object.keys[i];
		yajl_val v = root->u.object.values[i];
		if (strcmp(key, "listen") == 0)
			rc = cfg_string(file, key, v, &c->listen);
		else if (strcmp(key, "postgres") == 0)
			rc = cfg_string(file, key, v, &c->postgres);
		else if (strcmp(key, "endpoint") == 0)
			rc = cfg_string(file, key, v, &c->endpoint);
		else if (strcmp(key, "credential_lifetime_s") == 0)
			rc = cfg_lifetime(file, key, v, &c->credential_lifetime_s);
		else if (strcmp(key, "oauth_token_lifetime_s") == 0)
			rc = cfg_lifetime(file, key, v, &c->oauth_token_lifetime_s);
		else if (strcmp(key, "service_principals") == 0)
			rc = c->sps ? cfg_err(file, key, "given twice") : cfg_sps(file, v, c);
		else if (strcmp(key, "users") == 0)
			rc = c->users ? cfg_err(file, key, "given twice") : cfg_users(file, v, c);
		else
			rc = cfg_err(file, key, "unknown key");
	}
	if (rc == 0 && !c->listen && !(c->listen = xstrdup("127.0.0.1:18089")))
		rc = cfg_err(file, "listen", "out of memory");
	if (rc == 0 && !c->postgres)
		rc = cfg_err(file, "postgres", "required (a libpq connection string)");
	if (rc == 0 && !c->endpoint)
		rc = cfg_err(file, "endpoint", "required (projects/.../branches/.../endpoints/...)");
	/* An SP's client id is also a role name; a user token equal to it
	 * would not be ambiguous (different token spaces), so no check. */
out:
	yajl_tree_free(root);
	if (rc)
		config_free(c);
	return rc;
}

/* ---- shared state ------------------------------------------------------- */

struct issued {                 /* an OAuth access token handed to an SP */
	struct issued *next;
	char *token;
	size_t sp;              /* index into cfg.sps */
	long long expires_ms;    /* wall clock, ms: exact even for 1 s lifetimes */
};

struct fault {
	struct fault *next;
	char *prefix;           /* NULL: every non-admin path */
	long long count;        /* requests it still applies to */
	int status;             /* 0: none */
	long long delay_ms;
	int drop;
	int supersede;          /* a mint's credential replaced at once (stale) */
};

struct role_count {
	char *role;
	long long n;
};

struct db {
	pthread_mutex_t mu;     /* one connection, one statement at a time */
	PGconn *conn;
	const char *conninfo;
};

struct emulator {
	struct config cfg;      /* read-only after load, except the lifetimes */
	struct db db;

	pthread_mutex_t mu;     /* guards everything below */
	pthread_cond_t wake;    /* fault delays wait on it; broadcast at stop */
	int stopping;
	char address[128];      /* the bound listen address */
	long long credential_lifetime_s;
	long long oauth_token_lifetime_s;
	struct issued *tokens;  /* newest first */
	size_t ntokens;
	struct fault *faults, *faults_tail;
	size_t nfaults;
	struct role_count *mints;
	size_t nmints, capmints;
	long long mints_total, mint_failures, mints_role_missing;
	long long oauth_tokens, scim_calls, requests, faults_injected;
	long long connections;   /* that carried an API request first (keep-alive reuse shows here) */
};

static void issued_free(struct issued *t)
{
	free_secret(t->token);
	free(t);
}

static void fault_free(struct fault *f)
{
	free(f->prefix);
	free(f);
}

/* Under em->mu. */
static void counters_clear(struct emulator *em)
{
	for (size_t i = 0; i < em->nmints; i++)
		free(em->mints[i].role);
	em->nmints = 0;
	em->mints_total = em->mint_failures = em->mints_role_missing = 0;
	em->oauth_tokens = em->scim_calls = em->requests = em->faults_injected = 0;
	em->connections = 0;
}

/* Under em->mu. */
static void faults_clear(struct emulator *em)
{
	while (em->faults) {
		struct fault *f = em->faults;
		em->faults = f->next;
		fault_free(f);
	}
	em->faults_tail = NULL;
	em->nfaults = 0;
}

/* Under em->mu. Roles are bounded by the config, so this stays small. */
static void count_mint(struct emulator *em, const char *role)
{
	em->mints_total++;
	for (size_t i = 0; i < em->nmints; i++)
		if (strcmp(em->mints[i].role, role) == 0) {
			em->mints[i].n++;
			return;
		}
	if (em->nmints == em->capmints) {
		size_t ncap = em->capmints ? em->capmints * 2 : 8;
		struct role_count *nm = realloc(em->mints, ncap * sizeof *nm);
		if (!nm)
			return;
		em->mints = nm;
		em->capmints = ncap;
	}
	char *r = xstrdup(role);
	if (!r)
		return;
	em->mints[em->nmints].role = r;
	em->mints[em->nmints].n = 1;
	em->nmints++;
}

/* ---- helpers ------------------------------------------------------------ */

/* base64url without padding; NULL on allocation failure. */
static char *b64url(const unsigned char *in, size_t n)
{
	size_t outlen = 4 * ((n + 2) / 3) + 1;
	char *out = malloc(outlen);
	if (!out)
		return NULL;
	int len = EVP_EncodeBlock((unsigned char *)out, in, (int)n);
	if (len < 0) {
		free(out);
		return NULL;
	}
	while (len > 0 && out[len - 1] == '=')
		len--;
	out[len] = '\0';
	for (int i = 0; i < len; i++) {
		if (out[i] == '+')
			out[i] = '-';
		else if (out[i] == '/')
			out[i] = '_';
	}
	return out;
}

/* A random URL-safe string from nbytes of entropy; NULL on failure. */
static char *random_b64url(size_t nbytes)
{
	unsigned char raw[1024];
	if (nbytes > sizeof raw || RAND_bytes(raw, (int)nbytes) != 1)
		return NULL;
	char *s = b64url(raw, nbytes);
	OPENSSL_cleanse(raw, sizeof raw);
	return s;
}

static int format_rfc3339(time_t t, char *out, size_t outlen)
{
	struct tm tm;
	if (!gmtime_r(&t, &tm) || !strftime(out, outlen, "%Y-%m-%dT%H:%M:%SZ", &tm))
		return -1;
	return 0;
}

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int secret_eq(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	return la == lb && CRYPTO_memcmp(a, b, la) == 0;
}

static int starts_with(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* A stable numeric SCIM id derived from the name (Databricks ids are
 * 16-digit numbers). */
static void scim_id(const char *name, char *out, size_t outlen)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	unsigned long long v = 0;
	if (EVP_Digest(name, strlen(name), md, &mdlen, EVP_sha256(), NULL) == 1)
		for (int i = 0; i < 8; i++)
			v = (v << 8) | md[i];
	snprintf(out, outlen, "%016llu", v % 10000000000000000ULL);
}

/* Waits ms milliseconds, or less if the emulator is stopping. */
static void interruptible_sleep(struct emulator *em, long long ms)
{
	struct timespec deadline;
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += (time_t)(ms / 1000);
	deadline.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (deadline.tv_nsec >= 1000000000L) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&em->mu);
	while (!em->stopping)
		if (pthread_cond_timedwait(&em->wake, &em->mu, &deadline) == ETIMEDOUT)
			break;
	pthread_mutex_unlock(&em->mu);
}

/* The base URL for discovery: the Host header when it looks like a host
 * (so clients that reach us by another loopback name get consistent URLs),
 * else the listen address. */
static void base_url(struct emulator *em, const struct httpd_request *req, char *out, size_t outlen)
{
	const char *host = httpd_header_get(req, "Host");
	int ok = host && *host && strlen(host) < 256 && httpd_header_count(req, "Host") == 1;
	for (const char *c = host; ok && *c; c++)
		ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
		     strchr(".-:[]", *c) != NULL;
	if (ok) {
		snprintf(out, outlen, "http://%s", host);
		return;
	}
	pthread_mutex_lock(&em->mu);
	snprintf(out, outlen, "http://%s", em->address);
	pthread_mutex_unlock(&em->mu);
}

/* Parses a JSON request body into a tree; NULL when it is not a JSON object. */
static yajl_val parse_json_object(const struct httpd_request *req)
{
	if (req->body_len == 0 || strlen(req->body) != req->body_len)
		return NULL;
	yajl_val v = yajl_tree_parse(req->body, NULL, 0);
	if (v && !YAJL_IS_OBJECT(v)) {
		yajl_tree_free(v);
		return NULL;
	}
	return v;
}

/* ---- identity ----------------------------------------------------------- */

struct call {                   /* one request in flight */
	struct emulator *em;
	const struct httpd_request *req;
	struct httpd_response *resp;
	char identity[320];     /* for the log line; never a secret */
	const char *note;       /* e.g. "fault=503", for the log line */
	int supersede;          /* the "supersede" fault applies to this call */
};

/*
 * Resolves "Authorization: Bearer <token>" to a role: an SP's unexpired
 * OAuth token (role = client id) or a configured user token (role = email).
 * Returns 0 and fills role/is_sp, or -1.
 */
static int bearer_identity(struct call *c, char *role, size_t rolelen, int *is_sp)
{
	struct emulator *em = c->em;
	if (httpd_header_count(c->req, "Authorization") != 1)
		return -1;
	const char *auth = httpd_header_get(c->req, "Authorization");
	if (strncasecmp(auth, "Bearer ", 7) != 0)
		return -1;
	const char *tok = auth + 7;
	while (*tok == ' ')
		tok++;
	if (!*tok)
		return -1;

	const char *found = NULL;
	int sp = 0;
	long long now = now_ms();
	pthread_mutex_lock(&em->mu);
	for (struct issued **pp = &em->tokens; *pp && !found;) {
		struct issued *t = *pp;
		if (t->expires_ms <= now) {          /* forget expired tokens as we go */
			*pp = t->next;
			em->ntokens--;
			issued_free(t);
			continue;
		}
		if (secret_eq(t->token, tok)) {
			found = em->cfg.sps[t->sp].client_id;
			sp = 1;
		}
		pp = &t->next;
	}
	pthread_mutex_unlock(&em->mu);
	for (size_t i = 0; i < em->cfg.nusers && !found; i++)
		for (size_t j = 0; j < em->cfg.users[i].ntokens; j++)
			if (secret_eq(em->cfg.users[i].tokens[j], tok)) {
				found = em->cfg.users[i].email;
				break;
			}
	if (!found || strlen(found) >= rolelen)
		return -1;
	memcpy(role, found, strlen(found) + 1);
	*is_sp = sp;
	snprintf(c->identity, sizeof c->identity, "%s", found);
	return 0;
}

static void send_unauthenticated(struct httpd_response *resp)
{
	send_error(resp, 401, "UNAUTHENTICATED", "Invalid access token.");
}

/* ---- OIDC --------------------------------------------------------------- */

static void h_well_known(struct call *c)
{
	char base[300], url[400];
	base_url(c->em, c->req, base, sizeof base);
	struct jw w;
	if (jw_init(&w)) {
		httpd_response_status(c->resp, 500);
		return;
	}
	jw_open(&w);
	snprintf(url, sizeof url, "%s/oidc", base);
	jw_kstr(&w, "issuer", url);
	snprintf(url, sizeof url, "%s/oidc/v1/authorize", base);
	jw_kstr(&w, "authorization_endpoint", url);
	snprintf(url, sizeof url, "%s/oidc/v1/token", base);
	jw_kstr(&w, "token_endpoint", url);
	snprintf(url, sizeof url, "%s/oidc/jwks.json", base);
	jw_kstr(&w, "jwks_uri", url);
	jw_str(&w, "grant_types_supported");
	jw_check(&w, yajl_gen_array_open(w.g));
	jw_str(&w, "client_credentials");
	jw_check(&w, yajl_gen_array_close(w.g));
	jw_str(&w, "token_endpoint_auth_methods_supported");
	jw_check(&w, yajl_gen_array_open(w.g));
	jw_str(&w, "client_secret_basic");
	jw_str(&w, "client_secret_post");
	jw_check(&w, yajl_gen_array_close(w.g));
	jw_str(&w, "scopes_supported");
	jw_check(&w, yajl_gen_array_open(w.g));
	jw_str(&w, "all-apis");
	jw_check(&w, yajl_gen_array_close(w.g));
	jw_str(&w, "response_types_supported");
	jw_check(&w, yajl_gen_array_open(w.g));
	jw_str(&w, "code");
	jw_check(&w, yajl_gen_array_close(w.g));
	jw_close(&w);
	jw_send(&w, c->resp, 200);
}

static int hexval(char ch)
{
	if (ch >= '0' && ch <= '9') return ch - '0';
	if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
	return -1;
}

/* Decodes application/x-www-form-urlencoded text; NULL when malformed or
 * when it would contain a NUL. */
static char *form_decode(const char *s, size_t n)
{
	char *out = malloc(n + 1);
	size_t o = 0;
	if (!out)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '+') {
			out[o++] = ' ';
		} else if (s[i] == '%') {
			int hi = i + 2 < n ? hexval(s[i + 1]) : -1;
			int lo = i + 2 < n ? hexval(s[i + 2]) : -1;
			if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
				OPENSSL_cleanse(out, n + 1);
				free(out);
				return NULL;
			}
			out[o++] = (char)(hi * 16 + lo);
			i += 2;
		} else {
			out[o++] = s[i];
		}
	}
	out[o] = '\0';
	return out;
}

/*
 * Looks up a form field. Returns 1 and sets *out (caller frees with
 * free_secret) when present once, 0 when absent, -1 when malformed or given
 * more than once (RFC 6749 3.2: parameters must not repeat).
 */
static int form_get(const struct httpd_request *req, const char *name, char **out)
{
	const char *p = req->body, *end = req->body + req->body_len;
	int found = 0;
	*out = NULL;
	while (p < end) {
		const char *amp = memchr(p, '&', (size_t)(end - p));
		const char *fe = amp ? amp : end;
		const char *eq = memchr(p, '=', (size_t)(fe - p));
		const char *ke = eq ? eq : fe;
		char *key = form_decode(p, (size_t)(ke - p));
		if (!key)
			goto bad;
		int match = strcmp(key, name) == 0;
		free(key);
		if (match) {
			if (found)
				goto bad;
			found = 1;
			*out = eq ? form_decode(eq + 1, (size_t)(fe - eq - 1)) : xstrdup("");
			if (!*out)
				goto bad;
		}
		p = fe + (amp ? 1 : 0);
	}
	return found;
bad:
	free_secret(*out);
	*out = NULL;
	return -1;
}

/* Decodes "Authorization: Basic base64(id:secret)". Returns 0 with both set
 * (free_secret each), 1 when there is no Basic header, -1 when malformed. */
static int basic_auth(const struct httpd_request *req, char **id, char **secret)
{
	*id = *secret = NULL;
	const char *auth = httpd_header_get(req, "Authorization");
	if (!auth || strncasecmp(auth, "Basic ", 6) != 0)
		return 1;
	if (httpd_header_count(req, "Authorization") != 1)
		return -1;
	const char *b64 = auth + 6;
	while (*b64 == ' ')
		b64++;
	size_t inl = strlen(b64);
	if (inl == 0 || inl > 8192)
		return -1;
	unsigned char *out = malloc(inl + 64);
	if (!out)
		return -1;
	EVP_ENCODE_CTX *ctx = EVP_ENCODE_CTX_new();
	int outl = 0, finl = 0, ok = 0;
	if (ctx) {
		EVP_DecodeInit(ctx);
		ok = EVP_DecodeUpdate(ctx, out, &outl, (const unsigned char *)b64, (int)inl) >= 0 &&
		     EVP_DecodeFinal(ctx, out + outl, &finl) == 1;
		EVP_ENCODE_CTX_free(ctx);
	}
	size_t len = ok ? (size_t)outl + (size_t)finl : 0;
	char *colon = ok ? memchr(out, ':', len) : NULL;
	int rc = -1;
	if (colon && !memchr(out, '\0', len)) {
		size_t il = (size_t)(colon - (char *)out), sl = len - il - 1;
		*id = malloc(il + 1);
		*secret = malloc(sl + 1);
		if (*id && *secret) {
			memcpy(*id, out, il);
			(*id)[il] = '\0';
			memcpy(*secret, colon + 1, sl);
			(*secret)[sl] = '\0';
			rc = 0;
		} else {
			free_secret(*id);
			free_secret(*secret);
			*id = *secret = NULL;
		}
	}
	OPENSSL_cleanse(out, inl + 64);
	free(out);
	return rc;
}

static void h_token(struct call *c)
{
	struct emulator *em = c->em;
	char *id = NULL, *secret = NULL, *grant = NULL, *scope = NULL, *fid = NULL, *fsecret = NULL;

	int b = basic_auth(c->req, &id, &secret);
	if (b < 0) {
		send_oauth_error(c->resp, 401, "invalid_client", "Malformed Basic authorization header.");
		goto out;
	}
	int g = form_get(c->req, "grant_type", &grant);
	int s = form_get(c->req, "scope", &scope);
	int fi = form_get(c->req, "client_id", &fid);
	int fs = form_get(c->req, "client_secret", &fsecret);
	if (g < 0 || s < 0 || fi < 0 || fs < 0) {
		send_oauth_error(c->resp, 400, "invalid_request",
		                 "Malformed form body or repeated parameter.");
		goto out;
	}
	if (b == 1) {           /* client_secret_post */
		id = fid;
		secret = fsecret;
		fid = fsecret = NULL;
	}
	ssize_t sp = -1;
	if (id && secret)
		for (size_t i = 0; i < em->cfg.nsps; i++)
			if (strcmp(em->cfg.sps[i].client_id, id) == 0) {
				if (secret_eq(em->cfg.sps[i].client_secret, secret))
					sp = (ssize_t)i;
				break;
			}
	if (sp < 0) {
		httpd_response_header(c->resp, "WWW-Authenticate", "Basic realm=\"oidc\"");
		send_oauth_error(c->resp, 401, "invalid_client", "Client authentication failed.");
		goto out;
	}
	snprintf(c->identity, sizeof c->identity, "%s", em->cfg.sps[sp].client_id);
	if (!grant) {
		send_oauth_error(c->resp, 400, "invalid_request", "Missing grant_type.");
		goto out;
	}
	if (strcmp(grant, "client_credentials") != 0) {
		send_oauth_error(c->resp, 400, "unsupported_grant_type",
		                 "Only the client_credentials grant is supported.");
		goto out;
	}

	struct issued *t = calloc(1, sizeof *t);
	char *tokstr = random_b64url(48);
	if (!t || !tokstr) {
		free(t);
		free_secret(tokstr);
		send_oauth_error(c->resp, 500, "server_error", "Cannot issue a token.");
		goto out;
	}
	t->token = tokstr;
	t->sp = (size_t)sp;
	pthread_mutex_lock(&em->mu);
	long long lifetime = em->oauth_token_lifetime_s;
	t->expires_ms = now_ms() + lifetime * 1000;
	t->next = em->tokens;
	em->tokens = t;
	em->ntokens++;
	em->oauth_tokens++;
	if (em->ntokens > OAUTH_TOKENS_MAX) {   /* drop the oldest (the tail) */
		struct issued **pp = &em->tokens;
		while ((*pp)->next)
			pp = &(*pp)->next;
		issued_free(*pp);
		*pp = NULL;
		em->ntokens--;
	}
	/* Copy the token while still under the lock: once unlocked, an
	 * expiry sweep may free the entry. */
	char *answer_tok = xstrdup(tokstr);
	pthread_mutex_unlock(&em->mu);
	if (!answer_tok) {
		send_oauth_error(c->resp, 500, "server_error", "Cannot issue a token.");
		goto out;
	}

	struct jw w;
	if (jw_init(&w)) {
		free_secret(answer_tok);
		httpd_response_status(c->resp, 500);
		goto out;
	}
	jw_open(&w);
	jw_kstr(&w, "access_token", answer_tok);
	jw_kstr(&w, "token_type", "Bearer");
	jw_kint(&w, "expires_in", lifetime);
	jw_kstr(&w, "scope", scope && *scope ? scope : "all-apis");
	jw_close(&w);
	free_secret(answer_tok);
	httpd_response_header(c->resp, "Cache-Control", "no-store");
	jw_send(&w, c->resp, 200);
out:
	free_secret(id);
	free_secret(secret);
	free_secret(grant);
	free(scope);
	free_secret(fid);
	free_secret(fsecret);
}

/* ---- PostgreSQL: make the credential the role's password ---------------- */

enum setpw_rc { SETPW_OK, SETPW_NO_ROLE, SETPW_UNAVAILABLE, SETPW_ERROR };

/* One line of a libpq message, for the log (libpq messages hold no password). */
static const char *pq_line(const char *msg, char *out, size_t outlen)
{
	snprintf(out, outlen, "%s", msg ? msg : "");
	out[strcspn(out, "\n")] = '\0';
	return out;
}

/* Under db->mu: a working connection, or NULL. */
static PGconn *db_conn(struct db *db)
{
	if (db->conn && PQstatus(db->conn) == CONNECTION_OK)
		return db->conn;
	if (db->conn)
		PQfinish(db->conn);
	/* Defaults first: the configured string (expanded from "dbname")
	 * comes last and overrides them. */
	const char *const keys[] = {"connect_timeout", "application_name", "dbname", NULL};
	const char *const vals[] = {"10", "lakebase-emulator", db->conninfo, NULL};
	db->conn = PQconnectdbParams(keys, vals, 1);
	if (!db->conn || PQstatus(db->conn) != CONNECTION_OK) {
		char line[512];
		log_msg("postgres: cannot connect: %s",
		        pq_line(db->conn ? PQerrorMessage(db->conn) : "out of memory", line, sizeof line));
		if (db->conn)
			PQfinish(db->conn);
		db->conn = NULL;
	}
	return db->conn;
}

/*
 * The verifier PostgreSQL stores for a credential: "md5" followed by the hex
 * MD5 of the credential and the role name, the format ALTER ROLE ...
 * PASSWORD takes as is. Logins send the credential itself over TLS (the
 * stack's pg_hba.conf uses "password", as Lakebase requires for tokens), and
 * the server checks it with one MD5, standing in for Lakebase's signature
 * check of the token: cheap, like that check, and unlike a SCRAM verifier,
 * which PostgreSQL would check by hashing the ~1.6 KB credential 4096
 * times per login. NULL on failure; the caller wipes it.
 */
static char *md5_verifier(const char *credential, const char *role)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	char *out = NULL;
	int ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_md5(), NULL) == 1 &&
	         EVP_DigestUpdate(ctx, credential, strlen(credential)) == 1 &&
	         EVP_DigestUpdate(ctx, role, strlen(role)) == 1 &&
	         EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen == 16;

	EVP_MD_CTX_free(ctx);
	if (ok && (out = malloc(sizeof "md5" + 2 * 16)) != NULL) {
		memcpy(out, "md5", 3);
		for (unsigned int i = 0; i < mdlen; i++) {
			out[3 + 2 * i] = hex[md[i] >> 4];
			out[4 + 2 * i] = hex[md[i] & 0x0f];
		}
		out[3 + 2 * mdlen] = '\0';
	}
	OPENSSL_cleanse(md, sizeof md);
	return out;
}

/*
 * ALTER ROLE <role> PASSWORD <md5 verifier of credential> VALID UNTIL <expiry>.
 * The statement is assembled from escaped pieces in a growable buffer.
 */
static enum setpw_rc db_set_password(struct db *db, const char *role, const char *credential,
                                     const char *expiry)
{
	enum setpw_rc rc = SETPW_UNAVAILABLE;
	char line[512];
	pthread_mutex_lock(&db->mu);
	for (int attempt = 0; attempt < 2; attempt++) {
		PGconn *conn = db_conn(db);
		if (!conn) {
			rc = SETPW_UNAVAILABLE;
			break;
		}
		char *verifier = md5_verifier(credential, role);
		char *ident = PQescapeIdentifier(conn, role, strlen(role));
		char *vlit = verifier ? PQescapeLiteral(conn, verifier, strlen(verifier)) : NULL;
		char *elit = PQescapeLiteral(conn, expiry, strlen(expiry));
		struct sbuf sql = {0};
		sb_str(&sql, "ALTER ROLE ");
		sb_str(&sql, ident ? ident : "");
		sb_str(&sql, " PASSWORD ");
		sb_str(&sql, vlit ? vlit : "");
		sb_str(&sql, " VALID UNTIL ");
		sb_str(&sql, elit ? elit : "");
		int built = verifier && ident && vlit && elit && !sql.failed;
		int have_verifier = verifier != NULL;
		if (verifier) {
			OPENSSL_cleanse(verifier, strlen(verifier));
			free(verifier);
		}
		if (vlit) {
			OPENSSL_cleanse(vlit, strlen(vlit));
			PQfreemem(vlit);
		}
		PQfreemem(ident);
		PQfreemem(elit);
		if (!built) {
			log_msg("postgres: cannot build the password statement: %s",
			        have_verifier ? pq_line(PQerrorMessage(conn), line, sizeof line) :
			                        "computing the verifier failed (OpenSSL)");
			sb_free(&sql);
			rc = SETPW_ERROR;
			break;
		}
		PGresult *res = PQexec(conn, sql.p);
		sb_free(&sql);
		ExecStatusType st = PQresultStatus(res);
		const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		if (st == PGRES_COMMAND_OK) {
			rc = SETPW_OK;
		} else if (state && strcmp(state, "42704") == 0) {
			rc = SETPW_NO_ROLE;     /* undefined_object: no such role */
		} else {
			/* Never log the statement: it holds the verifier. */
			log_msg("postgres: setting the password of \"%s\" failed: [%s] %s", role,
			        state ? state : "no SQLSTATE",
			        pq_line(PQresultErrorMessage(res), line, sizeof line));
			rc = PQstatus(conn) == CONNECTION_OK ? SETPW_ERROR : SETPW_UNAVAILABLE;
		}
		PQclear(res);
		/* A connection found broken is retried once on a fresh one: the
		 * statement is idempotent. */
		if (rc != SETPW_UNAVAILABLE)
			break;
	}
	pthread_mutex_unlock(&db->mu);
	return rc;
}

/* ---- credentials -------------------------------------------------------- */

/*
 * A JWT-shaped credential: base64url(header).base64url(payload).base64url(sig).
 * The signature is random bytes (nothing verifies it); the payload carries a
 * random "pad" claim so the token is as long as real ones (> 1200 bytes).
 */
static char *make_credential(const char *issuer, const char *role, const char *endpoint,
                             time_t iat, time_t exp)
{
	char *header_json = NULL, *payload_json = NULL, *h64 = NULL, *p64 = NULL, *s64 = NULL;
	char *jti = random_b64url(18), *pad = random_b64url(CREDENTIAL_PAD_BYTES);
	char *result = NULL;
	struct jw w;

	if (!jti || !pad || jw_init(&w))
		goto out;
	jw_open(&w);
	jw_kstr(&w, "alg", "RS256");
	jw_kstr(&w, "kid", "lakebase-emulator");
	jw_kstr(&w, "typ", "JWT");
	jw_close(&w);
	header_json = jw_take(&w);
	jw_free(&w);

	if (jw_init(&w))
		goto out;
	jw_open(&w);
	jw_kstr(&w, "iss", issuer);
	jw_kstr(&w, "sub", role);
	jw_kstr(&w, "aud", endpoint);
	jw_kint(&w, "iat", (long long)iat);
	jw_kint(&w, "nbf", (long long)iat);
	jw_kint(&w, "exp", (long long)exp);
	jw_kstr(&w, "jti", jti);
	jw_kstr(&w, "scope", "postgres");
	jw_kstr(&w, "pad", pad);
	jw_close(&w);
	payload_json = jw_take(&w);
	jw_free(&w);
	if (!header_json || !payload_json)
		goto out;

	h64 = b64url((const unsigned char *)header_json, strlen(header_json));
	p64 = b64url((const unsigned char *)payload_json, strlen(payload_json));
	s64 = random_b64url(256);       /* the size of an RS256 signature */
	if (!h64 || !p64 || !s64)
		goto out;
	struct sbuf tok = {0};
	sb_str(&tok, h64);
	sb_str(&tok, ".");
	sb_str(&tok, p64);
	sb_str(&tok, ".");
	sb_str(&tok, s64);
	if (tok.failed || tok.len <= CREDENTIAL_MIN_LEN) {
		sb_free(&tok);
		goto out;
	}
	result = tok.p;
out:
	free_secret(header_json);
	free_secret(payload_json);
	free_secret(h64);
	free_secret(p64);
	free_secret(s64);
	free_secret(jti);
	free_secret(pad);
	return result;
}

/*
 * The "supersede" fault: the role's password is set at once to another
 * credential, never answered, so the one just minted is refused at login,
 * as when another host mints for the role right after (password mode).
 */
static void supersede_credential(struct emulator *em, const char *role, const char *issuer,
                                 time_t now, time_t exp, const char *expiry)
{
	char *other = make_credential(issuer, role, em->cfg.endpoint, now, exp);
	if (!other || db_set_password(&em->db, role, other, expiry) != SETPW_OK)
		log_msg("supersede fault: could not replace the credential of \"%s\"", role);
	if (other)
		free_secret(other);
}

static void h_credentials(struct call *c)
{
	struct emulator *em = c->em;
	char role[256];
	int is_sp = 0;
	if (bearer_identity(c, role, sizeof role, &is_sp)) {
		send_unauthenticated(c->resp);
		return;
	}
	yajl_val body = parse_json_object(c->req);
	const char *ep_path[] = {"endpoint", NULL};
	const char *ep = json_string(body ? yajl_tree_get(body, ep_path, yajl_t_string) : NULL);
	if (!ep || !ep[0]) {
		yajl_tree_free(body);
		send_error(c->resp, 400, "INVALID_PARAMETER_VALUE",
		           "The request body must be a JSON object with a non-empty \"endpoint\" string.");
		return;
	}
	if (strcmp(ep, em->cfg.endpoint) != 0) {
		char msg[600];
		snprintf(msg, sizeof msg, "Endpoint '%.500s' does not exist.", ep);
		yajl_tree_free(body);
		send_error(c->resp, 404, "NOT_FOUND", msg);
		return;
	}
	yajl_tree_free(body);

	pthread_mutex_lock(&em->mu);
	long long lifetime = em->credential_lifetime_s;
	pthread_mutex_unlock(&em->mu);
	time_t now = time(NULL), exp = now + (time_t)lifetime;
	char expiry[32], base[300], issuer[320];
	base_url(em, c->req, base, sizeof base);
	snprintf(issuer, sizeof issuer, "%s/oidc", base);
	char *cred = format_rfc3339(exp, expiry, sizeof expiry) ? NULL
	             : make_credential(issuer, role, em->cfg.endpoint, now, exp);
	if (!cred) {
		send_error(c->resp, 500, "INTERNAL_ERROR", "Cannot generate a credential.");
		return;
	}

	enum setpw_rc rc = db_set_password(&em->db, role, cred, expiry);
	if (rc == SETPW_UNAVAILABLE || rc == SETPW_ERROR) {
		free_secret(cred);
		if (rc == SETPW_UNAVAILABLE)
			send_error(c->resp, 503, "TEMPORARILY_UNAVAILABLE",
			           "The database is not reachable; try again.");
		else
			send_error(c->resp, 500, "INTERNAL_ERROR", "Cannot set the database credential.");
		return;
	}
	if (rc == SETPW_NO_ROLE) {
		c->note = "role-missing";
		log_msg("postgres: role \"%s\" does not exist; its credential will not log in", role);
	}
	if (rc == SETPW_OK && c->supersede)
		supersede_credential(em, role, issuer, now, exp, expiry);

	struct jw w;
	if (jw_init(&w)) {
		free_secret(cred);
		httpd_response_status(c->resp, 500);
		return;
	}
	jw_open(&w);
	jw_kstr(&w, "token", cred);
	jw_kstr(&w, "expire_time", expiry);
	jw_close(&w);
	free_secret(cred);
	httpd_response_header(c->resp, "Cache-Control", "no-store");
	jw_send(&w, c->resp, 200);

	pthread_mutex_lock(&em->mu);
	count_mint(em, role);
	if (rc == SETPW_NO_ROLE)
		em->mints_role_missing++;
	pthread_mutex_unlock(&em->mu);
}

/* ---- SCIM --------------------------------------------------------------- */

static void h_scim_me(struct call *c)
{
	struct emulator *em = c->em;
	char role[256], id[32];
	int is_sp = 0;
	if (bearer_identity(c, role, sizeof role, &is_sp)) {
		send_unauthenticated(c->resp);
		return;
	}
	pthread_mutex_lock(&em->mu);
	em->scim_calls++;
	pthread_mutex_unlock(&em->mu);
	scim_id(role, id, sizeof id);

	struct jw w;
	if (jw_init(&w)) {
		httpd_response_status(c->resp, 500);
		return;
	}
	jw_open(&w);
	jw_str(&w, "schemas");
	jw_check(&w, yajl_gen_array_open(w.g));
	jw_str(&w, "urn:ietf:params:scim:schemas:core:2.0:User");
	jw_check(&w, yajl_gen_array_close(w.g));
	jw_kstr(&w, "id", id);
	jw_kstr(&w, "userName", role);
	jw_kstr(&w, "displayName", role);
	/* An SP has no e-mail address: an empty list keeps the shape. */
	jw_str(&w, "emails");
	jw_check(&w, yajl_gen_array_open(w.g));
	if (!is_sp) {
		jw_open(&w);
		jw_kstr(&w, "value", role);
		jw_kstr(&w, "type", "work");
		jw_str(&w, "primary");
		jw_check(&w, yajl_gen_bool(w.g, 1));
		jw_close(&w);
	}
	jw_check(&w, yajl_gen_array_close(w.g));
	jw_str(&w, "active");
	jw_check(&w, yajl_gen_bool(w.g, 1));
	jw_close(&w);
	jw_send(&w, c->resp, 200);
}

/* ---- admin (test control) ----------------------------------------------- */

static void h_counters(struct call *c)
{
	struct emulator *em = c->em;
	struct jw w;
	if (jw_init(&w)) {
		httpd_response_status(c->resp, 500);
		return;
	}
	pthread_mutex_lock(&em->mu);
	jw_open(&w);
	jw_str(&w, "mints");
	jw_open(&w);
	for (size_t i = 0; i < em->nmints; i++)
		jw_kint(&w, em->mints[i].role, em->mints[i].n);
	jw_close(&w);
	jw_kint(&w, "mints_total", em->mints_total);
	jw_kint(&w, "mint_failures", em->mint_failures);
	jw_kint(&w, "mints_role_missing", em->mints_role_missing);
	jw_kint(&w, "oauth_tokens", em->oauth_tokens);
	jw_kint(&w, "scim_calls", em->scim_calls);
	jw_kint(&w, "requests", em->requests);
	jw_kint(&w, "connections", em->connections);
	jw_kint(&w, "faults_injected", em->faults_injected);
	jw_kint(&w, "faults_pending", (long long)em->nfaults);
	jw_close(&w);
	pthread_mutex_unlock(&em->mu);
	jw_send(&w, c->resp, 200);
}

static void h_faults_list(struct call *c)
{
	struct emulator *em = c->em;
	struct jw w;
	if (jw_init(&w)) {
		httpd_response_status(c->resp, 500);
		return;
	}
	pthread_mutex_lock(&em->mu);
	jw_open(&w);
	jw_str(&w, "faults");
	jw_check(&w, yajl_gen_array_open(w.g));
	for (struct fault *f = em->faults; f; f = f->next) {
		jw_open(&w);
		jw_kint(&w, "count", f->count);
		if (f->status)
			jw_kint(&w, "status", f->status);
		if (f->delay_ms)
			jw_kint(&w, "delay_ms", f->delay_ms);
		if (f->drop) {
			jw_str(&w, "drop");
			jw_check(&w, yajl_gen_bool(w.g, 1));
		}
		if (f->supersede) {
			jw_str(&w, "supersede");
			jw_check(&w, yajl_gen_bool(w.g, 1));
		}
		if (f->prefix)
			jw_kstr(&w, "path", f->prefix);
		jw_close(&w);
	}
	jw_check(&w, yajl_gen_array_close(w.g));
	jw_close(&w);
	pthread_mutex_unlock(&em->mu);
	jw_send(&w, c->resp, 200);
}

static int json_int_in(yajl_val v, long long lo, long long hi, long long *out)
{
	if (!YAJL_IS_INTEGER(v) || YAJL_GET_INTEGER(v) < lo || YAJL_GET_INTEGER(v) > hi)
		return -1;
	*out = YAJL_GET_INTEGER(v);
	return 0;
}

static void h_faults_add(struct call *c)
{
	struct emulator *em = c->em;
	char msg[300];
	yajl_val body = parse_json_object(c->req);
	if (!body) {
		send_error(c->resp, 400, "INVALID_PARAMETER_VALUE", "The body must be a JSON object.");
		return;
	}
	struct fault f = {.count = 1};
	long long v;
	const char *bad = NULL;
	for (size_t i = 0; i < body->u.object.len && !bad; i++) {
		const char *key = body->u.object.keys[i];
		yajl_val val = body->u.object.values[i];
		if (strcmp(key, "count") == 0) {
			if (json_int_in(val, 1, FAULT_COUNT_MAX, &f.count))
				bad = "\"count\" must be an integer from 1 to 1000000";
		} else if (strcmp(key, "status") == 0) {
			if (json_int_in(val, 400, 599, &v))
				bad = "\"status\" must be an integer from 400 to 599";
			else
				f.status = (int)v;
		} else if (strcmp(key, "delay_ms") == 0) {
			if (json_int_in(val, 0, DELAY_MAX_MS, &f.delay_ms))
				bad = "\"delay_ms\" must be an integer from 0 to 600000";
		} else if (strcmp(key, "drop") == 0) {
			if (!YAJL_IS_TRUE(val) && !YAJL_IS_FALSE(val))
				bad = "\"drop\" must be true or false";
			else
				f.drop = YAJL_IS_TRUE(val);
		} else if (strcmp(key, "supersede") == 0) {
			if (!YAJL_IS_TRUE(val) && !YAJL_IS_FALSE(val))
				bad = "\"supersede\" must be true or false";
			else
				f.supersede = YAJL_IS_TRUE(val);
		} else if (strcmp(key, "path") == 0) {
			const char *ps = json_string(val);
			if (!ps || ps[0] != '/' || strlen(ps) > 1024)
				bad = "\"path\" must be a path prefix starting with '/'";
			else if (!(f.prefix = xstrdup(ps)))
				bad = "out of memory";
		} else {
			snprintf(msg, sizeof msg, "Unknown key \"%.200s\".", key);
			bad = msg;
		}
	}
	yajl_tree_free(body);
	if (!bad && !f.status && !f.delay_ms && !f.drop && !f.supersede)
		bad = "A fault needs \"status\", \"delay_ms\", \"drop\" or \"supersede\".";
	if (!bad && (!!f.status + f.drop + f.supersede) > 1)
		bad = "\"status\", \"drop\" and \"supersede\" exclude each other.";
	if (bad) {
		free(f.prefix);
		send_error(c->resp, 400, "INVALID_PARAMETER_VALUE", bad);
		return;
	}
	struct fault *nf = malloc(sizeof *nf);
	if (!nf) {
		free(f.prefix);
		send_error(c->resp, 500, "INTERNAL_ERROR", "Out of memory.");
		return;
	}
	*nf = f;
	nf->next = NULL;
	pthread_mutex_lock(&em->mu);
	int full = em->nfaults >= FAULTS_MAX;
	if (!full) {
		if (em->faults_tail)
			em->faults_tail->next = nf;
		else
			em->faults = nf;
		em->faults_tail = nf;
		em->nfaults++;
	}
	long long queued = (long long)em->nfaults;
	pthread_mutex_unlock(&em->mu);
	if (full) {
		fault_free(nf);
		send_error(c->resp, 400, "RESOURCE_EXHAUSTED", "The fault queue is full.");
		return;
	}
	struct jw w;
	if (jw_init(&w)) {
		httpd_response_status(c->resp, 500);
		return;
	}
	jw_open(&w);
	jw_kint(&w, "queued", queued);
	jw_close(&w);
	jw_send(&w, c->resp, 200);
}

static void send_config(struct call *c)
{
	struct emulator *em = c->em;
	struct jw w;
	if (jw_init(&w)) {
		httpd_response_status(c->resp, 500);
		return;
	}
	pthread_mutex_lock(&em->mu);
	jw_open(&w);
	jw_kint(&w, "credential_lifetime_s", em->credential_lifetime_s);
	jw_kint(&w, "oauth_token_lifetime_s", em->oauth_token_lifetime_s);
	jw_close(&w);
	pthread_mutex_unlock(&em->mu);
	jw_send(&w, c->resp, 200);
}

static void h_config_get(struct call *c)
{
	send_config(c);
}

static void h_config_set(struct call *c)
{
	struct emulator *em = c->em;
	char msg[300];
	yajl_val body = parse_json_object(c->req);
	if (!body || body->u.object.len == 0) {
		yajl_tree_free(body);
		send_error(c->resp, 400, "INVALID_PARAMETER_VALUE",
		           "The body must be a JSON object with \"credential_lifetime_s\" and/or "
		           "\"oauth_token_lifetime_s\".");
		return;
	}
	long long cred = -1, oauth = -1;
	const char *bad = NULL;
	for (size_t i = 0; i < body->u.object.len && !bad; i++) {
		const char *key = body->u.object.keys[i];
		yajl_val val = body->u.object.values[i];
		long long *dst = strcmp(key, "credential_lifetime_s") == 0 ? &cred
		               : strcmp(key, "oauth_token_lifetime_s") == 0 ? &oauth : NULL;
		if (!dst) {
			snprintf(msg, sizeof msg, "Unknown key \"%.200s\".", key);
			bad = msg;
		} else if (json_int_in(val, 1, LIFETIME_MAX_S, dst)) {
			snprintf(msg, sizeof msg, "\"%s\" must be an integer from 1 to 604800.", key);
			bad = msg;
		}
	}
	yajl_tree_free(body);
	if (bad) {
		send_error(c->resp, 400, "INVALID_PARAMETER_VALUE", bad);
		return;
	}
	pthread_mutex_lock(&em->mu);
	if (cred > 0)
		em->credential_lifetime_s = cred;
	if (oauth > 0)
		em->oauth_token_lifetime_s = oauth;
	pthread_mutex_unlock(&em->mu);
	log_msg("config: credential_lifetime_s=%lld oauth_token_lifetime_s=%lld (-1: unchanged)",
	        cred, oauth);
	send_config(c);
}

static void h_reset(struct call *c)
{
	struct emulator *em = c->em;
	pthread_mutex_lock(&em->mu);
	counters_clear(em);
	faults_clear(em);
	pthread_mutex_unlock(&em->mu);
	struct jw w;
	if (jw_init(&w)) {
		httpd_response_status(c->resp, 500);
		return;
	}
	jw_open(&w);
	jw_str(&w, "reset");
	jw_check(&w, yajl_gen_bool(w.g, 1));
	jw_close(&w);
	jw_send(&w, c->resp, 200);
}

/* ---- dispatch ----------------------------------------------------------- */

struct route {
	const char *method;
	const char *path;
	void (*fn)(struct call *);
};

static const struct route routes[] = {
	{"GET",  PATH_WELL_KNOWN,          h_well_known},
	{"POST", PATH_TOKEN,               h_token},
	{"POST", PATH_CREDENTIALS,         h_credentials},
	{"GET",  PATH_SCIM_ME,             h_scim_me},
	{"GET",  "/_emulator/counters",    h_counters},
	{"GET",  "/_emulator/faults",      h_faults_list},
	{"POST", "/_emulator/faults",      h_faults_add},
	{"GET",  "/_emulator/config",      h_config_get},
	{"POST", "/_emulator/config",      h_config_set},
	{"POST", "/_emulator/reset",       h_reset},
};

static void route(struct call *c)
{
	char allow[64] = "";
	for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
		if (strcmp(routes[i].path, c->req->path) != 0)
			continue;
		if (strcmp(routes[i].method, c->req->method) == 0) {
			routes[i].fn(c);
			return;
		}
		size_t l = strlen(allow);
		snprintf(allow + l, sizeof allow - l, "%s%s", l ? ", " : "", routes[i].method);
	}
	if (allow[0]) {
		httpd_response_header(c->resp, "Allow", allow);
		send_error(c->resp, 405, "BAD_REQUEST", "Method not allowed for this path.");
		return;
	}
	send_error(c->resp, 404, "ENDPOINT_NOT_FOUND", "No API found for this path.");
}

/* Databricks error code for an injected status. */
static const char *fault_code(int status)
{
	switch (status) {
	case 400: return "INVALID_PARAMETER_VALUE";
	case 401: return "UNAUTHENTICATED";
	case 403: return "PERMISSION_DENIED";
	case 404: return "NOT_FOUND";
	case 409: return "RESOURCE_CONFLICT";
	case 429: return "REQUEST_LIMIT_EXCEEDED";
	case 501: return "NOT_IMPLEMENTED";
	case 503: return "TEMPORARILY_UNAVAILABLE";
	case 504: return "DEADLINE_EXCEEDED";
	default:  return status < 500 ? "BAD_REQUEST" : "INTERNAL_ERROR";
	}
}

/* Under em->mu: takes one application of the first queued fault that
 * matches the path. Returns 1 and fills *out when one applies. */
static int take_fault(struct emulator *em, const char *path, struct fault *out)
{
	struct fault *prev = NULL;
	for (struct fault *f = em->faults; f; prev = f, f = f->next) {
		if (f->prefix && !starts_with(path, f->prefix))
			continue;
		*out = *f;
		out->prefix = NULL;
		out->next = NULL;
		em->faults_injected++;
		if (--f->count == 0) {
			if (prev)
				prev->next = f->next;
			else
				em->faults = f->next;
			if (em->faults_tail == f)
				em->faults_tail = prev;
			em->nfaults--;
			fault_free(f);
		}
		return 1;
	}
	return 0;
}

static void handle(const struct httpd_request *req, struct httpd_response *resp, void *ctx)
{
	struct emulator *em = ctx;
	struct call c = {.em = em, .req = req, .resp = resp, .identity = "-", .note = ""};
	struct timespec t0, t1;
	char note[64] = "";
	clock_gettime(CLOCK_MONOTONIC, &t0);

	/* Admin paths are never subject to faults, so tests can always clean up. */
	int admin = starts_with(req->path, ADMIN_PREFIX);
	struct fault f = {0};
	int faulted = 0;
	if (!admin) {
		pthread_mutex_lock(&em->mu);
		em->requests++;
		if (req->nth == 1)
			em->connections++;
		faulted = take_fault(em, req->path, &f);
		pthread_mutex_unlock(&em->mu);
	}
	if (faulted && f.delay_ms > 0)
		interruptible_sleep(em, f.delay_ms);
	if (faulted && f.drop) {
		httpd_response_drop(resp);
		snprintf(note, sizeof note, "fault=drop");
	} else if (faulted && f.status) {
		char msg[96];
		snprintf(msg, sizeof msg, "Injected fault: HTTP %d.", f.status);
		send_error(resp, f.status, fault_code(f.status), msg);
		snprintf(note, sizeof note, "fault=%d", f.status);
	} else {
		if (faulted && f.supersede)
			snprintf(note, sizeof note, "fault=supersede");
		else if (faulted)
			snprintf(note, sizeof note, "fault=delay:%lldms", f.delay_ms);
		c.supersede = faulted && f.supersede;
		route(&c);
	}

	int status = httpd_response_get_status(resp);
	int dropped = httpd_response_dropped(resp);
	if (strcmp(req->path, PATH_CREDENTIALS) == 0 && (dropped || status != 200)) {
		pthread_mutex_lock(&em->mu);
		em->mint_failures++;
		pthread_mutex_unlock(&em->mu);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	long ms = (long)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
	/* The path only: a query string could carry a secret. */
	char st[8];
	snprintf(st, sizeof st, "%d", status);
	log_msg("%s %s %s %s %ldms%s%s%s%s", req->method, req->path, dropped ? "dropped" : st,
	        c.identity, ms, note[0] ? " " : "", note, c.note[0] ? " " : "", c.note);
}

/* ---- main --------------------------------------------------------------- */

static void usage(FILE *out)
{
	fputs("usage: lakebase-emulator -c emulator.json [--pidfile FILE]\n"
	      "A local Databricks workspace emulator for lakebase-fcgi tests.\n"
	      "The PostgreSQL password of the admin connection comes from PGPASSWORD.\n",
	      out);
}

static int write_pidfile(const char *path)
{
	struct sbuf tmp = {0};
	sb_str(&tmp, path);
	sb_str(&tmp, ".tmp");
	if (tmp.failed)
		return -1;
	int fd = open(tmp.p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		sb_free(&tmp);
		return -1;
	}
	char line[32];
	int n = snprintf(line, sizeof line, "%ld\n", (long)getpid());
	int ok = n > 0 && write(fd, line, (size_t)n) == n;
	ok = (close(fd) == 0) && ok;
	/* rename: whoever polls for the file never reads it half-written. */
	ok = ok && rename(tmp.p, path) == 0;
	if (!ok)
		unlink(tmp.p);
	sb_free(&tmp);
	return ok ? 0 : -1;
}

static void emulator_free(struct emulator *em)
{
	while (em->tokens) {
		struct issued *t = em->tokens;
		em->tokens = t->next;
		issued_free(t);
	}
	faults_clear(em);
	counters_clear(em);
	free(em->mints);
	if (em->db.conn)
		PQfinish(em->db.conn);
	pthread_mutex_destroy(&em->db.mu);
	pthread_mutex_destroy(&em->mu);
	pthread_cond_destroy(&em->wake);
	config_free(&em->cfg);
}

int main(int argc, char **argv)
{
	const char *config_file = NULL, *pidfile = NULL;
	for (int i = 1; i < argc; i++) {
		if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) && i + 1 < argc) {
			config_file = argv[++i];
		} else if (strcmp(argv[i], "--pidfile") == 0 && i + 1 < argc) {
			pidfile = argv[++i];
		} else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			usage(stdout);
			return 0;
		} else {
			fprintf(stderr, "lakebase-emulator: unexpected argument \"%s\"\n", argv[i]);
			usage(stderr);
			return 2;
		}
	}
	if (!config_file) {
		usage(stderr);
		return 2;
	}

	static struct emulator em;
	if (config_load(config_file, &em.cfg))
		return 2;
	em.credential_lifetime_s = em.cfg.credential_lifetime_s;
	em.oauth_token_lifetime_s = em.cfg.oauth_token_lifetime_s;
	em.db.conninfo = em.cfg.postgres;
	pthread_mutex_init(&em.mu, NULL);
	pthread_mutex_init(&em.db.mu, NULL);
	pthread_cond_init(&em.wake, NULL);

	/* Signals are taken synchronously by this thread (sigwait): block them
	 * before any thread starts so every thread inherits the mask. */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	char err[512];
	struct httpd_server *srv = httpd_start(em.cfg.listen, handle, &em, err, sizeof err);
	if (!srv) {
		fprintf(stderr, "lakebase-emulator: %s\n", err);
		emulator_free(&em);
		return 1;
	}
	pthread_mutex_lock(&em.mu);
	snprintf(em.address, sizeof em.address, "%s", httpd_address(srv));
	pthread_mutex_unlock(&em.mu);
	if (pidfile && write_pidfile(pidfile)) {
		fprintf(stderr, "lakebase-emulator: cannot write pidfile %s: %s\n", pidfile, strerror(errno));
		pthread_mutex_lock(&em.mu);
		em.stopping = 1;
		pthread_cond_broadcast(&em.wake);
		pthread_mutex_unlock(&em.mu);
		if (httpd_stop(srv, 5000) == 0)
			emulator_free(&em);
		return 1;
	}
	log_msg("listening on http://%s (%zu service principals, %zu users, endpoint %s)",
	        httpd_address(srv), em.cfg.nsps, em.cfg.nusers, em.cfg.endpoint);

	/* Connect now so a wrong connection string shows at start; a failure
	 * is not fatal (the stack may start PostgreSQL later): mints retry. */
	pthread_mutex_lock(&em.db.mu);
	if (db_conn(&em.db))
		log_msg("postgres: connected");
	pthread_mutex_unlock(&em.db.mu);

	int sig = 0;
	while (sigwait(&sigs, &sig) != 0 || (sig != SIGTERM && sig != SIGINT))
		;
	log_msg("signal %d: stopping", sig);

	pthread_mutex_lock(&em.mu);
	em.stopping = 1;
	pthread_cond_broadcast(&em.wake);      /* cut fault delays short */
	pthread_mutex_unlock(&em.mu);
	if (httpd_stop(srv, 10000) == 0)
		emulator_free(&em);
	else
		log_msg("some requests were still running at exit");
	if (pidfile)
		unlink(pidfile);
	return 0;
}
