/*
 * workspace.c - the Databricks workspace API client (libcurl): the service
 * principal's OAuth M2M token (discovered endpoint, cached, single flight),
 * database credential minting and SCIM Me, each with timeouts and retries on
 * transient failures (retry.h).
 *
 * Secrets pass through here: the client secret, bearer tokens, and answers
 * that carry tokens. Every buffer that held one is wiped before it is freed,
 * and none is ever copied into an lb_error or a log line.
 */

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <yajl/yajl_gen.h>
#include <yajl/yajl_parse.h>
#include <yajl/yajl_tree.h>

#include "clock.h"
#include "log.h"
#include "textfmt.h"
#include "retry.h"
#include "strbuf.h"
#include "workspace.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "dev"   /* configure passes the real one in DEFS */
#endif

#define WS_USER_AGENT "lakebase-fcgi/" PACKAGE_VERSION
#define WS_MAX_ANSWER (1024 * 1024)	/* larger answers are refused */
#define WS_MAX_JSON_DEPTH 32		/* our answers are flat; deeper is hostile */
#define WS_EXCERPT_LEN 80		/* characters of an error message kept in a detail */
#define WS_MAX_TOKEN_LIFETIME_S 86400	/* cap on expires_in, keeps time arithmetic sane */

#define PATH_DISCOVERY "/oidc/.well-known/oauth-authorization-server"
#define PATH_TOKEN_FALLBACK "/oidc/v1/token"
#define PATH_CREDENTIALS "/api/2.0/postgres/credentials"
#define PATH_SCIM_ME "/api/2.0/preview/scim/v2/Me"

#define MSG_UNAVAILABLE "The workspace API is unavailable."
#define MSG_REJECTED_TOKEN "The workspace rejected the token."
#define MSG_DENIED "The workspace denied the credential request."
#define MSG_REFUSED "The workspace API refused the request."
#define MSG_BAD_ANSWER "The workspace API returned an unexpected answer."
#define MSG_UNREACHABLE "The workspace API could not be reached."
#define MSG_INTERNAL "Internal error."

/*
 * Easy handles are kept between calls so that a call reuses the previous
 * one's connection to the workspace (curl keeps it in the handle) instead
 * of opening one, with a TLS handshake, per call: with the system's CA
 * bundle a new HTTPS connection costs about 40 ms of CPU on the benchmark
 * machine, curl parsing the bundle each time, and a reused one under
 * 1 ms (BENCHMARKS.md). Up to WS_KEPT_HANDLES are kept: calls beyond that
 * many at once use a handle of their own, closed after.
 *
 * What a kept handle retains between calls: the connection (no secret),
 * the last answer in curl's and OpenSSL's receive buffers (a credential
 * the cache holds anyway, or the SP's token, which this client holds),
 * and for the M2M call the client id and secret (held here anyway). A
 * request's headers, a user's token among them, are in our header list,
 * wiped after each call, and in curl's request buffer, freed once sent:
 * a kept handle holds no user's token.
 */
#define WS_KEPT_HANDLES 4

struct workspace_client {
	char *host;			/* scheme://host[:port] */
	char *client_id;
	char *client_secret;		/* secret */
	char *static_token;		/* secret */
	char *endpoint;			/* Lakebase endpoint resource name */
	long connect_timeout_ms;
	long timeout_ms;
	char *oauth_form;		/* the client-credentials form body */

	pthread_mutex_t lock;		/* guards everything below */
	pthread_cond_t sp_cond;		/* CLOCK_MONOTONIC; signalled after each fetch */
	char *token_endpoint;		/* discovered (or fallback) once per process */
	char *sp_token;			/* secret; NULL until fetched */
	int64_t sp_refresh_at;		/* monotonic seconds */
	int64_t sp_expires_at;
	bool sp_fetching;
	unsigned long sp_generation;	/* bumped when a fetch ends */
	bool sp_last_failed;		/* the last fetch failed... */
	struct lb_error sp_last_err;	/* ...with this, for its waiters */

	pthread_mutex_t handles_lock;	/* guards the two below */
	CURL *handles[WS_KEPT_HANDLES];	/* idle easy handles (handle_take) */
	int nhandles;
};

/* One HTTP exchange, described for curl and for error details. */
struct http_request {
	const char *method;		/* "GET" or "POST" */
	const char *path;		/* names the call in details */
	const char *url;
	const char *bearer;		/* secret, or NULL */
	const char *basic_user;		/* with basic_password: HTTP Basic */
	const char *basic_password;	/* secret, or NULL */
	const char *content_type;	/* with body */
	const char *body;
	size_t body_len;
	bool caller_token;		/* 401/403 concern the caller's token, not our config */
};

/* An answer body that may hold a token: grown without leaving copies behind. */
struct http_answer {
	long status;
	char *data;
	size_t len;
	size_t cap;
	bool too_large;
	bool out_of_memory;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result = CURLE_FAILED_INIT;

/* ------------------------------------------------------------------ */
/* small helpers */

static void
curl_global_init_once(void)
{
	curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* Prefixes err->detail with `what` (the call), keeping the rest. */
static void
detail_prefix(struct lb_error *err, const char *what)
{
	struct strbuf sb;
	size_t n;

	if (err == NULL)
		return;
	strbuf_init(&sb);
	strbuf_appendf(&sb, "%s: %s", what, err->detail);
	if (!strbuf_failed(&sb)) {
		n = sb.len < sizeof(err->detail) - 1 ? sb.len : sizeof(err->detail) - 1;
		memcpy(err->detail, sb.data, n);
		err->detail[n] = '\0';
	}
	strbuf_free(&sb, false);
}

static int
oom(struct lb_error *err)
{
	return lb_error_fail(err, LB_ERR_INTERNAL, LB_PERMANENT, MSG_INTERNAL, "out of memory");
}

static int64_t
mono_now_s(void)
{
	return clock_monotonic_ms() / 1000;
}

static unsigned int
random_u32(void)
{
	unsigned int r;

	if (RAND_bytes((unsigned char *)&r, (int)sizeof(r)) != 1)
		r = UINT32_MAX / 2;	/* no jitter beats no retry */
	return r;
}

static char *
dup_or_null(const char *s)
{
	return s != NULL ? strdup(s) : NULL;
}

/* A copy of a secret in memory of exactly the right size (no realloc
 * leftovers), prefixed with `prefix`. */
static char *
secret_concat(const char *prefix, const char *secret)
{
	size_t plen = strlen(prefix), slen = strlen(secret);
	char *s;

	if (slen > SIZE_MAX - plen - 1)
		return NULL;
	s = malloc(plen + slen + 1);
	if (s == NULL)
		return NULL;
	memcpy(s, prefix, plen);
	memcpy(s + plen, secret, slen + 1);
	return s;
}

/* The path of a URL, for details: "https://h:1/a/b" -> "/a/b". */
static const char *
url_path(const char *url)
{
	const char *p = strstr(url, "://");
	const char *slash;

	if (p == NULL)
		return url;
	slash = strchr(p + 3, '/');
	return slash != NULL ? slash : "/";
}

void
secret_free(char *secret)
{
	if (secret == NULL)
		return;
	OPENSSL_cleanse(secret, strlen(secret));
	free(secret);
}

void
db_credential_clear(struct db_credential *cred)
{
	if (cred == NULL)
		return;
	secret_free(cred->token);
	cred->token = NULL;
	cred->expires_at = 0;
}

/* ------------------------------------------------------------------ */
/* JSON answers */

struct depth_check {
	int depth;
};

static int
depth_open(void *ctx)
{
	struct depth_check *dc = ctx;

	return ++dc->depth <= WS_MAX_JSON_DEPTH;
}

static int
depth_close(void *ctx)
{
	struct depth_check *dc = ctx;

	dc->depth--;
	return 1;
}

static int
depth_open_map(void *ctx)
{
	return depth_open(ctx);
}

static int
depth_open_array(void *ctx)
{
	return depth_open(ctx);
}

/* Validates the text and bounds its nesting: yajl_tree_free recurses, so an
 * answer of a million '[' must never reach yajl_tree_parse. */
static bool
json_is_acceptable(const char *body, size_t len)
{
	static const yajl_callbacks callbacks = {
		.yajl_start_map = depth_open_map,
		.yajl_end_map = depth_close,
		.yajl_start_array = depth_open_array,
		.yajl_end_array = depth_close,
	};
	struct depth_check dc = { 0 };
	yajl_handle h;
	bool ok;

	h = yajl_alloc(&callbacks, NULL, &dc);
	if (h == NULL)
		return false;
	ok = yajl_parse(h, (const unsigned char *)body, len) == yajl_status_ok &&
	     yajl_complete_parse(h) == yajl_status_ok;
	yajl_free(h);
	return ok;
}

/* Wipes every string of a tree (answers carry tokens), then frees it.
 * Depth is bounded by json_is_acceptable. */
static void
tree_wipe(yajl_val v)
{
	size_t i;

	if (v == NULL)
		return;
	if (YAJL_IS_STRING(v)) {
		OPENSSL_cleanse(v->u.string, strlen(v->u.string));
	} else if (YAJL_IS_NUMBER(v)) {
		OPENSSL_cleanse(v->u.number.r, strlen(v->u.number.r));
	} else if (YAJL_IS_OBJECT(v)) {
		for (i = 0; i < v->u.object.len; i++) {
			OPENSSL_cleanse((char *)v->u.object.keys[i], strlen(v->u.object.keys[i]));
			tree_wipe(v->u.object.values[i]);
		}
	} else if (YAJL_IS_ARRAY(v)) {
		for (i = 0; i < v->u.array.len; i++)
			tree_wipe(v->u.array.values[i]);
	}
}

static void
tree_free_wiped(yajl_val v)
{
	tree_wipe(v);
	yajl_tree_free(v);
}

/*
 * Parses an answer that must be a JSON object. No yajl error text is kept:
 * it quotes the input, which may be a token.
 */
static yajl_val
parse_object(const char *body, size_t len, struct lb_error *err)
{
	yajl_val v;
	char *text;

	if (body == NULL || len == 0 || memchr(body, '\0', len) != NULL ||
	    !json_is_acceptable(body, len)) {
		lb_error_fail(err, LB_ERR_UPSTREAM, LB_PERMANENT, MSG_BAD_ANSWER, "answer is not JSON");
		return NULL;
	}
	text = malloc(len + 1);
	if (text == NULL) {
		oom(err);
		return NULL;
	}
	memcpy(text, body, len);
	text[len] = '\0';
	v = yajl_tree_parse(text, NULL, 0);
	OPENSSL_cleanse(text, len);
	free(text);
	if (v == NULL) {
		lb_error_fail(err, LB_ERR_UPSTREAM, LB_PERMANENT, MSG_BAD_ANSWER, "answer is not JSON");
		return NULL;
	}
	if (!YAJL_IS_OBJECT(v)) {
		tree_free_wiped(v);
		lb_error_fail(err, LB_ERR_UPSTREAM, LB_PERMANENT, MSG_BAD_ANSWER,
			"answer is not a JSON object");
		return NULL;
	}
	return v;
}

static yajl_val
field(yajl_val obj, const char *name)
{
	const char *path[] = { name, NULL };

	return yajl_tree_get(obj, path, yajl_t_any);
}

/* The field's string if it is a non-empty string, else NULL. */
static const char *
field_string(yajl_val obj, const char *name)
{
	yajl_val v = field(obj, name);

	if (v == NULL || !YAJL_IS_STRING(v) || v->u.string[0] == '\0')
		return NULL;
	return v->u.string;
}

static int
bad_answer(struct lb_error *err, const char *what)
{
	return lb_error_fail(err, LB_ERR_UPSTREAM, LB_PERMANENT, MSG_BAD_ANSWER, what);
}

/* ------------------------------------------------------------------ */
/* the pure parsers */

int
workspace_parse_credential(const char *body, size_t len, struct db_credential *out,
			   struct lb_error *err)
{
	yajl_val root, expire;
	const char *token;
	time_t expires_at;
	int rc = -1;

	out->token = NULL;
	out->expires_at = 0;
	root = parse_object(body, len, err);
	if (root == NULL)
		return -1;
	token = field_string(root, "token");
	expire = field(root, "expire_time");
	if (token == NULL)
		bad_answer(err, "token missing or not a string");
	else if (expire == NULL || YAJL_IS_NULL(expire))
		bad_answer(err, "expire_time missing");
	else if (!YAJL_IS_STRING(expire) || parse_rfc3339(expire->u.string, &expires_at) != 0)
		bad_answer(err, "expire_time is not RFC 3339");
	else if ((out->token = strdup(token)) == NULL)
		oom(err);
	else {
		out->expires_at = expires_at;
		rc = 0;
	}
	tree_free_wiped(root);
	return rc;
}

int
workspace_parse_oauth_token(const char *body, size_t len, char **access_token,
			    long *expires_in, struct lb_error *err)
{
	yajl_val root, lifetime, type;
	const char *token;
	int rc = -1;

	*access_token = NULL;
	*expires_in = 0;
	root = parse_object(body, len, err);
	if (root == NULL)
		return -1;
	token = field_string(root, "access_token");
	lifetime = field(root, "expires_in");
	type = field(root, "token_type");
	if (token == NULL)
		bad_answer(err, "access_token missing or not a string");
	else if (lifetime == NULL || !YAJL_IS_INTEGER(lifetime) ||
		 YAJL_GET_INTEGER(lifetime) <= 0 || YAJL_GET_INTEGER(lifetime) > INT32_MAX)
		bad_answer(err, "expires_in missing or not a positive integer");
	else if (type != NULL && !(YAJL_IS_STRING(type) && strcasecmp(type->u.string, "bearer") == 0))
		bad_answer(err, "token_type is not Bearer");
	else if ((*access_token = strdup(token)) == NULL)
		oom(err);
	else {
		*expires_in = (long)YAJL_GET_INTEGER(lifetime);
		rc = 0;
	}
	tree_free_wiped(root);
	return rc;
}

int
workspace_parse_discovery(const char *body, size_t len, char **token_endpoint,
			  struct lb_error *err)
{
	yajl_val root;
	const char *url;
	int rc = -1;

	*token_endpoint = NULL;
	root = parse_object(body, len, err);
	if (root == NULL)
		return -1;
	url = field_string(root, "token_endpoint");
	if (url == NULL)
		bad_answer(err, "token_endpoint missing or not a string");
	else if (strncasecmp(url, "https://", 8) != 0 && strncasecmp(url, "http://", 7) != 0)
		bad_answer(err, "token_endpoint is not an http(s) URL");
	else if ((*token_endpoint = strdup(url)) == NULL)
		oom(err);
	else
		rc = 0;
	tree_free_wiped(root);
	return rc;
}

/* SCIM Me: the identity's userName. */
static int
parse_scim_me(const char *body, size_t len, char **user_name, struct lb_error *err)
{
	yajl_val root;
	const char *name;
	int rc = -1;

	*user_name = NULL;
	root = parse_object(body, len, err);
	if (root == NULL)
		return -1;
	name = field_string(root, "userName");
	if (name == NULL)
		bad_answer(err, "userName missing or not a string");
	else if ((*user_name = strdup(name)) == NULL)
		oom(err);
	else
		rc = 0;
	tree_free_wiped(root);
	return rc;
}

/* ------------------------------------------------------------------ */
/* HTTP */

static void
answer_reset(struct http_answer *a)
{
	if (a->data != NULL) {
		OPENSSL_cleanse(a->data, a->cap);
		a->data[0] = '\0';
	}
	a->len = 0;
	a->status = 0;
	a->too_large = false;
	a->out_of_memory = false;
}

static void
answer_free(struct http_answer *a)
{
	if (a->data != NULL)
		OPENSSL_cleanse(a->data, a->cap);
	free(a->data);
	memset(a, 0, sizeof(*a));
}

/* Grows by copy-wipe-free rather than realloc, so no stray token copy is
 * left in freed memory. */
static bool
answer_reserve(struct http_answer *a, size_t need)
{
	size_t cap = a->cap ? a->cap : 4096;
	char *p;

	if (need <= a->cap)
		return true;
	while (cap < need)
		cap *= 2;
	p = malloc(cap);
	if (p == NULL)
		return false;
	if (a->data != NULL) {
		memcpy(p, a->data, a->len + 1);
		OPENSSL_cleanse(a->data, a->cap);
		free(a->data);
	}
	a->data = p;
	a->cap = cap;
	return true;
}

static size_t
answer_write(char *data, size_t size, size_t nmemb, void *userdata)
{
	struct http_answer *a = userdata;
	size_t n = size * nmemb;

	if (n > WS_MAX_ANSWER - a->len) {
		a->too_large = true;
		return 0;	/* aborts the transfer */
	}
	if (!answer_reserve(a, a->len + n + 1)) {
		a->out_of_memory = true;
		return 0;
	}
	memcpy(a->data + a->len, data, n);
	a->len += n;
	a->data[a->len] = '\0';
	return n;
}

static void
slist_free_wiped(struct curl_slist *list)
{
	for (struct curl_slist *item = list; item != NULL; item = item->next)
		OPENSSL_cleanse(item->data, strlen(item->data));
	curl_slist_free_all(list);
}

static bool
slist_add(struct curl_slist **list, const char *header)
{
	struct curl_slist *l = curl_slist_append(*list, header);

	if (l == NULL)
		return false;
	*list = l;
	return true;
}

/* The request headers; NULL when out of memory. The Authorization line is
 * built in an exact-size buffer that is wiped at once (curl keeps a copy,
 * wiped by slist_free_wiped). */
static struct curl_slist *
build_headers(const struct http_request *req)
{
	struct curl_slist *list = NULL;
	char *auth;
	bool ok;

	ok = slist_add(&list, "Accept: application/json") && slist_add(&list, "Expect:");
	if (ok && req->content_type != NULL) {
		char ct[128];

		snprintf(ct, sizeof(ct), "Content-Type: %s", req->content_type);
		ok = slist_add(&list, ct);
	}
	if (ok && req->bearer != NULL) {
		auth = secret_concat("Authorization: Bearer ", req->bearer);
		ok = auth != NULL && slist_add(&list, auth);
		secret_free(auth);
	}
	if (!ok) {
		slist_free_wiped(list);
		return NULL;
	}
	return list;
}

#define SETOPT(rc, curl, opt, val) \
	do { if ((rc) == CURLE_OK) (rc) = curl_easy_setopt((curl), (opt), (val)); } while (0)

/* An easy handle for one call: a kept one (with its connection), or new. */
static CURL *
handle_take(struct workspace_client *ws)
{
	CURL *curl = NULL;

	pthread_mutex_lock(&ws->handles_lock);
	if (ws->nhandles > 0)
		curl = ws->handles[--ws->nhandles];
	pthread_mutex_unlock(&ws->handles_lock);
	return curl != NULL ? curl : curl_easy_init();
}

/* A call is done with `curl`: its options go (our header list, the client
 * secret), its connection stays, and it is kept if there is room. */
static void
handle_give(struct workspace_client *ws, CURL *curl)
{
	curl_easy_reset(curl);
	pthread_mutex_lock(&ws->handles_lock);
	if (ws->nhandles < WS_KEPT_HANDLES) {
		ws->handles[ws->nhandles++] = curl;
		curl = NULL;
	}
	pthread_mutex_unlock(&ws->handles_lock);
	if (curl != NULL)
		curl_easy_cleanup(curl);
}

/* One try, on a handle used by this thread alone until it is given back. */
static CURLcode
http_perform_once(struct workspace_client *ws, const struct http_request *req,
		  struct http_answer *answer, char *errbuf)
{
	struct curl_slist *headers;
	CURLcode rc = CURLE_OK;
	CURL *curl;

	errbuf[0] = '\0';
	answer_reset(answer);
	headers = build_headers(req);
	if (headers == NULL)
		return CURLE_OUT_OF_MEMORY;
	curl = handle_take(ws);
	if (curl == NULL) {
		slist_free_wiped(headers);
		return CURLE_OUT_OF_MEMORY;
	}
	SETOPT(rc, curl, CURLOPT_ERRORBUFFER, errbuf);
	SETOPT(rc, curl, CURLOPT_URL, req->url);
	SETOPT(rc, curl, CURLOPT_PROTOCOLS_STR, "http,https");
	SETOPT(rc, curl, CURLOPT_FOLLOWLOCATION, 0L);
	SETOPT(rc, curl, CURLOPT_NOSIGNAL, 1L);
	SETOPT(rc, curl, CURLOPT_CONNECTTIMEOUT_MS, ws->connect_timeout_ms);
	SETOPT(rc, curl, CURLOPT_TIMEOUT_MS, ws->timeout_ms);
	SETOPT(rc, curl, CURLOPT_USERAGENT, WS_USER_AGENT);
	SETOPT(rc, curl, CURLOPT_HTTPHEADER, headers);
	SETOPT(rc, curl, CURLOPT_WRITEFUNCTION, answer_write);
	SETOPT(rc, curl, CURLOPT_WRITEDATA, answer);
	if (req->basic_user != NULL && req->basic_password != NULL) {
		SETOPT(rc, curl, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
		SETOPT(rc, curl, CURLOPT_USERNAME, req->basic_user);
		SETOPT(rc, curl, CURLOPT_PASSWORD, req->basic_password);
	}
	if (strcmp(req->method, "POST") == 0) {
		SETOPT(rc, curl, CURLOPT_POSTFIELDSIZE, (long)req->body_len);
		SETOPT(rc, curl, CURLOPT_POSTFIELDS, req->body != NULL ? req->body : "");
	}
	if (rc == CURLE_OK)
		rc = curl_easy_perform(curl);
	if (rc == CURLE_OK)
		curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &answer->status);
	handle_give(ws, curl);
	slist_free_wiped(headers);
	return rc;
}

/* Keeps letters, digits and _.- of an error code, at most `size`-1 of them. */
static void
sanitize_code(char *dst, size_t size, const char *src)
{
	size_t n = 0;

	for (; *src != '\0' && n + 1 < size; src++) {
		char c = *src;

		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
		    (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-')
			dst[n++] = c;
	}
	dst[n] = '\0';
}

/* True if `text` contains the start of `secret` (a server echoing it back). */
static bool
mentions_secret(const char *text, const char *secret)
{
	size_t slen;

	if (secret == NULL)
		return false;
	slen = strlen(secret);
	if (slen < 8)
		return slen > 0 && strstr(text, secret) != NULL;
	return memmem(text, strlen(text), secret, slen < 16 ? slen : 16) != NULL;
}

/* A short, printable excerpt of a server message; withheld if it echoes a
 * secret of the request. */
static void
excerpt(char *dst, size_t size, const char *src, const struct http_request *req)
{
	size_t n = 0;

	if (mentions_secret(src, req->bearer) || mentions_secret(src, req->basic_password)) {
		snprintf(dst, size, "(withheld: echoes a credential)");
		return;
	}
	for (; *src != '\0' && n + 1 < size && n < WS_EXCERPT_LEN; src++) {
		unsigned char c = (unsigned char)*src;

		dst[n++] = c < 0x20 || c > 0x7e || c == '"' ? '?' : (char)c;
	}
	if (*src != '\0' && n >= 3)
		memcpy(dst + n - 3, "...", 3);
	dst[n] = '\0';
}

/* Appends the Databricks (error_code, message) or OAuth (error,
 * error_description) of an error body, if it has them. */
static void
describe_error_body(struct strbuf *sb, const struct http_answer *a, const struct http_request *req)
{
	const char *code, *message;
	char code_buf[65], text_buf[WS_EXCERPT_LEN + 1];
	yajl_val root;

	root = a->len > 0 ? parse_object(a->data, a->len, NULL) : NULL;
	if (root == NULL)
		return;
	code = field_string(root, "error_code");
	if (code == NULL)
		code = field_string(root, "error");
	message = field_string(root, "message");
	if (message == NULL)
		message = field_string(root, "error_description");
	if (code != NULL) {
		sanitize_code(code_buf, sizeof(code_buf), code);
		strbuf_appendf(sb, " error_code=%s", code_buf);
	}
	if (message != NULL) {
		excerpt(text_buf, sizeof(text_buf), message, req);
		strbuf_appendf(sb, " message=\"%s\"", text_buf);
	}
	tree_free_wiped(root);
}

/* What went wrong with the last try, for err->detail. */
static void
describe_failure(struct strbuf *sb, const struct http_request *req, CURLcode cc,
		 const char *errbuf, const struct http_answer *a)
{
	strbuf_appendf(sb, "%s %s: ", req->method, req->path);
	if (cc == CURLE_OK) {
		strbuf_appendf(sb, "HTTP %ld", a->status);
		describe_error_body(sb, a, req);
	} else if (a->too_large) {
		strbuf_appendf(sb, "answer larger than %d bytes", WS_MAX_ANSWER);
	} else {
		strbuf_appendf(sb, "%s", curl_easy_strerror(cc));
		if (errbuf[0] != '\0')
			strbuf_appendf(sb, " (%.200s)", errbuf);
	}
}

static int
http_failure(const struct http_request *req, CURLcode cc, const char *errbuf,
	     const struct http_answer *a, enum lb_transience transience, int attempts,
	     struct lb_error *err)
{
	struct strbuf sb;
	enum lb_errcode code = LB_ERR_UPSTREAM;
	const char *message = MSG_REFUSED;

	strbuf_init(&sb);
	describe_failure(&sb, req, cc, errbuf, a);
	if (transience == LB_TRANSIENT) {
		strbuf_appendf(&sb, " (%d attempt%s)", attempts, attempts == 1 ? "" : "s");
		code = LB_ERR_UNAVAILABLE;
		message = MSG_UNAVAILABLE;
	} else if (cc == CURLE_OUT_OF_MEMORY || a->out_of_memory) {
		code = LB_ERR_INTERNAL;
		message = MSG_INTERNAL;
	} else if (a->too_large) {
		message = MSG_BAD_ANSWER;
	} else if (cc != CURLE_OK) {
		message = MSG_UNREACHABLE;	/* e.g. a certificate that fails verification */
	} else if (req->caller_token && a->status == 401) {
		code = LB_ERR_UNAUTHENTICATED;
		message = MSG_REJECTED_TOKEN;
	} else if (req->caller_token && a->status == 403) {
		code = LB_ERR_FORBIDDEN;
		message = MSG_DENIED;
	}
	lb_error_fail(err, code, transience, message,
		strbuf_failed(&sb) ? "workspace call failed" : sb.data);
	strbuf_free(&sb, false);
	return -1;
}

/*
 * Performs the request, retrying transient failures on the schedule of
 * retry.h. On success the answer holds a 2xx body; on failure err says what
 * happened on the last try.
 */
static int
http_call(struct workspace_client *ws, const struct http_request *req,
	  struct http_answer *answer, struct lb_error *err)
{
	char errbuf[CURL_ERROR_SIZE];
	enum lb_transience transience;
	CURLcode cc;
	long delay;

	for (int attempt = 0;; attempt++) {
		cc = http_perform_once(ws, req, answer, errbuf);
		if (cc == CURLE_OK && answer->status >= 200 && answer->status <= 299)
			return 0;
		if (cc == CURLE_OK)
			transience = retry_classify_http(answer->status);
		else if (answer->too_large || answer->out_of_memory)
			transience = LB_PERMANENT;
		else
			transience = retry_classify_curl((int)cc);
		delay = transience == LB_TRANSIENT ? retry_delay_ms(attempt, random_u32()) : -1;
		if (delay < 0)
			return http_failure(req, cc, errbuf, answer, transience, attempt + 1, err);
		clock_sleep_ms(delay);
	}
}

/* ------------------------------------------------------------------ */
/* the client */

static char *
build_oauth_form(void)
{
	static const char *const fields[][2] = {
		{ "grant_type", "client_credentials" },
		{ "scope", "all-apis" },
	};
	struct strbuf sb;
	CURL *curl;
	char *value;

	curl = curl_easy_init();
	if (curl == NULL)
		return NULL;
	strbuf_init(&sb);
	for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
		value = curl_easy_escape(curl, fields[i][1], 0);
		if (value == NULL) {
			strbuf_free(&sb, false);
			curl_easy_cleanup(curl);
			return NULL;
		}
		strbuf_appendf(&sb, "%s%s=%s", i > 0 ? "&" : "", fields[i][0], value);
		curl_free(value);
	}
	curl_easy_cleanup(curl);
	if (strbuf_failed(&sb)) {
		strbuf_free(&sb, false);
		return NULL;
	}
	return strbuf_detach(&sb, NULL);
}

static bool
has_client_credentials(const struct workspace_client *ws)
{
	return ws->client_id != NULL && ws->client_id[0] != '\0' &&
	       ws->client_secret != NULL && ws->client_secret[0] != '\0';
}

struct workspace_client *
workspace_create(const struct lb_config *cfg, struct lb_error *err)
{
	struct workspace_client *ws;
	pthread_condattr_t attr;

	if (cfg == NULL || cfg->databricks_host == NULL || cfg->databricks_host[0] == '\0') {
		lb_error_fail(err, LB_ERR_INTERNAL, LB_PERMANENT, MSG_INTERNAL,
			"workspace host is not configured (DATABRICKS_HOST)");
		return NULL;
	}
	pthread_once(&curl_once, curl_global_init_once);
	if (curl_init_result != CURLE_OK) {
		lb_error_fail(err, LB_ERR_INTERNAL, LB_PERMANENT, MSG_INTERNAL, "curl_global_init failed");
		return NULL;
	}
	ws = calloc(1, sizeof(*ws));
	if (ws == NULL) {
		oom(err);
		return NULL;
	}
	pthread_mutex_init(&ws->lock, NULL);
	pthread_mutex_init(&ws->handles_lock, NULL);
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&ws->sp_cond, &attr);
	pthread_condattr_destroy(&attr);
	ws->host = strdup(cfg->databricks_host);
	ws->client_id = dup_or_null(cfg->client_id);
	ws->client_secret = dup_or_null(cfg->client_secret);
	ws->static_token = dup_or_null(cfg->static_token);
	ws->endpoint = dup_or_null(cfg->lakebase_endpoint);
	ws->oauth_form = build_oauth_form();
	ws->connect_timeout_ms = cfg->http_connect_timeout_ms > 0 ? cfg->http_connect_timeout_ms : 10000;
	ws->timeout_ms = cfg->http_timeout_ms > 0 ? cfg->http_timeout_ms : 30000;
	if (ws->host == NULL || ws->oauth_form == NULL ||
	    (cfg->client_id != NULL && ws->client_id == NULL) ||
	    (cfg->client_secret != NULL && ws->client_secret == NULL) ||
	    (cfg->static_token != NULL && ws->static_token == NULL) ||
	    (cfg->lakebase_endpoint != NULL && ws->endpoint == NULL)) {
		workspace_destroy(ws);
		oom(err);
		return NULL;
	}
	/* Host normalised without a trailing slash by config; be lenient anyway. */
	for (size_t n = strlen(ws->host); n > 0 && ws->host[n - 1] == '/'; n--)
		ws->host[n - 1] = '\0';
	return ws;
}

void
workspace_destroy(struct workspace_client *ws)
{
	if (ws == NULL)
		return;
	while (ws->nhandles > 0)
		curl_easy_cleanup(ws->handles[--ws->nhandles]);
	pthread_mutex_destroy(&ws->handles_lock);
	pthread_mutex_destroy(&ws->lock);
	pthread_cond_destroy(&ws->sp_cond);
	free(ws->host);
	free(ws->client_id);
	secret_free(ws->client_secret);
	secret_free(ws->static_token);
	free(ws->endpoint);
	free(ws->oauth_form);
	free(ws->token_endpoint);
	secret_free(ws->sp_token);
	free(ws);
}

static char *
host_url(const struct workspace_client *ws, const char *path)
{
	struct strbuf sb;

	strbuf_init(&sb);
	strbuf_append_str(&sb, ws->host);
	strbuf_append_str(&sb, path);
	if (strbuf_failed(&sb)) {
		strbuf_free(&sb, false);
		return NULL;
	}
	return strbuf_detach(&sb, NULL);
}

/* A discovered endpoint must not downgrade to clear text: http:// only when
 * the configured host is itself http:// (a loopback emulator). */
static bool
token_endpoint_allowed(const struct workspace_client *ws, const char *url)
{
	if (strncasecmp(url, "https://", 8) == 0)
		return true;
	return strncasecmp(ws->host, "http://", 7) == 0;
}

/*
 * One discovery try, no retries: on any failure the well-known fallback is
 * used at once, so an outage does not cost the retry schedule twice. Returns
 * 0 with *url, or -1 with *permanent telling whether to stop trying.
 */
static int
discover_token_endpoint(struct workspace_client *ws, char **url, bool *permanent,
			struct lb_error *err)
{
	struct http_request req = { .method = "GET", .path = PATH_DISCOVERY };
	struct http_answer answer = { 0 };
	char errbuf[CURL_ERROR_SIZE];
	char *discovery_url;
	CURLcode cc;
	int rc = -1;

	*url = NULL;
	*permanent = false;
	discovery_url = host_url(ws, PATH_DISCOVERY);
	if (discovery_url == NULL)
		return oom(err);
	req.url = discovery_url;
	cc = http_perform_once(ws, &req, &answer, errbuf);
	if (cc != CURLE_OK || answer.status < 200 || answer.status > 299) {
		enum lb_transience t = cc == CURLE_OK ? retry_classify_http(answer.status)
						      : retry_classify_curl((int)cc);

		*permanent = t == LB_PERMANENT;
		http_failure(&req, cc, errbuf, &answer, t, 1, err);
	} else if (workspace_parse_discovery(answer.data, answer.len, url, err) != 0) {
		*permanent = true;
		detail_prefix(err, "GET " PATH_DISCOVERY);
	} else if (!token_endpoint_allowed(ws, *url)) {
		free(*url);
		*url = NULL;
		*permanent = true;
		bad_answer(err, "GET " PATH_DISCOVERY ": token_endpoint is http:// for an https:// host");
	} else {
		rc = 0;
	}
	answer_free(&answer);
	free(discovery_url);
	return rc;
}

/*
 * The token endpoint URL (caller frees), discovered on first use. A
 * discovered endpoint, or the fallback after a permanent discovery failure,
 * is kept for the process; after a transient one the fallback serves this
 * call and discovery is tried again next time.
 */
static char *
token_endpoint(struct workspace_client *ws)
{
	struct lb_error err;
	bool permanent;
	char *url = NULL, *found;

	pthread_mutex_lock(&ws->lock);
	if (ws->token_endpoint != NULL)
		url = strdup(ws->token_endpoint);
	pthread_mutex_unlock(&ws->lock);
	if (url != NULL)
		return url;

	lb_error_clear(&err);
	if (discover_token_endpoint(ws, &found, &permanent, &err) != 0) {
		log_warn("OIDC discovery failed; using the default token endpoint",
			 "path", PATH_TOKEN_FALLBACK, "error", lb_errcode_name(err.code),
			 "detail", err.detail);
		found = host_url(ws, PATH_TOKEN_FALLBACK);
		if (!permanent || found == NULL)
			return found;
	}
	pthread_mutex_lock(&ws->lock);
	if (ws->token_endpoint == NULL) {
		ws->token_endpoint = found;
		found = NULL;
	}
	url = strdup(ws->token_endpoint);
	pthread_mutex_unlock(&ws->lock);
	free(found);
	return url;
}

/* Fetches a fresh SP token (no caching here). */
static int
fetch_sp_token(struct workspace_client *ws, char **token, long *expires_in, struct lb_error *err)
{
	struct http_request req = {
		.method = "POST",
		.basic_user = ws->client_id,
		.basic_password = ws->client_secret,
		.content_type = "application/x-www-form-urlencoded",
		.body = ws->oauth_form,
		.body_len = strlen(ws->oauth_form),
	};
	struct http_answer answer = { 0 };
	char what[128];
	char *url;
	int rc;

	url = token_endpoint(ws);
	if (url == NULL)
		return oom(err);
	req.url = url;
	req.path = url_path(url);
	rc = http_call(ws, &req, &answer, err);
	if (rc == 0) {
		rc = workspace_parse_oauth_token(answer.data, answer.len, token, expires_in, err);
		if (rc != 0) {
			snprintf(what, sizeof(what), "POST %s", req.path);
			detail_prefix(err, what);
		}
	}
	answer_free(&answer);
	free(url);
	return rc;
}

static int
copy_token(const char *token, char **out, struct lb_error *err)
{
	*out = strdup(token);
	return *out != NULL ? 0 : oom(err);
}

/* Waits (lock held) for the fetch in progress to end. -1: timed out. */
static int
wait_for_sp_fetch(struct workspace_client *ws)
{
	unsigned long generation = ws->sp_generation;
	struct timespec deadline;
	long bound_ms = RETRY_MAX_ATTEMPTS * (ws->timeout_ms + ws->connect_timeout_ms) + 7000;

	clock_deadline_ms(&deadline, CLOCK_MONOTONIC, bound_ms + 1000);
	while (ws->sp_fetching && ws->sp_generation == generation) {
		if (pthread_cond_timedwait(&ws->sp_cond, &ws->lock, &deadline) == ETIMEDOUT)
			return -1;
	}
	return 0;
}

/* Records the outcome of a fetch (lock held) and wakes the waiters. */
static void
publish_sp_fetch(struct workspace_client *ws, int rc, char *fresh, long expires_in,
		 int64_t started, const struct lb_error *fetch_err)
{
	long margin;

	ws->sp_fetching = false;
	ws->sp_generation++;
	ws->sp_last_failed = rc != 0;
	if (rc == 0) {
		if (expires_in > WS_MAX_TOKEN_LIFETIME_S)
			expires_in = WS_MAX_TOKEN_LIFETIME_S;
		margin = expires_in / 10 < 60 ? expires_in / 10 : 60;
		secret_free(ws->sp_token);
		ws->sp_token = fresh;
		/* Counted from before the request: never later than the server's clock. */
		ws->sp_expires_at = started + expires_in;
		ws->sp_refresh_at = ws->sp_expires_at - margin;
	} else {
		ws->sp_last_err = *fetch_err;
	}
	pthread_cond_broadcast(&ws->sp_cond);
}

/* Copies the cached token if it is still valid (lock held): 1 copied,
 * 0 none valid, -1 out of memory. */
static int
copy_valid_sp_token(struct workspace_client *ws, int64_t until, char **token,
		    struct lb_error *err)
{
	if (ws->sp_token == NULL || mono_now_s() >= until)
		return 0;
	return copy_token(ws->sp_token, token, err) == 0 ? 1 : -1;
}

/* Fetches as the single flight's owner; the lock is not held. */
static int
fetch_and_publish(struct workspace_client *ws, char **token, struct lb_error *err)
{
	struct lb_error fetch_err;
	char *fresh = NULL;
	long expires_in = 0;
	int64_t started = mono_now_s();
	int rc, copied;

	lb_error_clear(&fetch_err);
	rc = fetch_sp_token(ws, &fresh, &expires_in, &fetch_err);
	pthread_mutex_lock(&ws->lock);
	publish_sp_fetch(ws, rc, fresh, expires_in, started, &fetch_err);
	copied = copy_valid_sp_token(ws, ws->sp_expires_at, token, err);
	pthread_mutex_unlock(&ws->lock);
	if (copied == 1 && rc != 0)
		log_warn("service principal token refresh failed; using the current token until it expires",
			 "error", lb_errcode_name(fetch_err.code), "detail", fetch_err.detail);
	if (copied == 0 && err != NULL)
		*err = fetch_err;
	return copied == 1 ? 0 : -1;
}

int
workspace_sp_token(struct workspace_client *ws, char **token, struct lb_error *err)
{
	int copied;

	*token = NULL;
	if (!has_client_credentials(ws)) {
		if (ws->static_token != NULL && ws->static_token[0] != '\0')
			return copy_token(ws->static_token, token, err);
		return lb_error_fail(err, LB_ERR_INTERNAL, LB_PERMANENT, MSG_INTERNAL,
			       "no service principal credentials configured "
			       "(DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET, or DATABRICKS_TOKEN)");
	}
	pthread_mutex_lock(&ws->lock);
	for (;;) {
		copied = copy_valid_sp_token(ws, ws->sp_refresh_at, token, err);
		if (copied != 0)
			break;
		if (!ws->sp_fetching) {
			ws->sp_fetching = true;
			pthread_mutex_unlock(&ws->lock);
			return fetch_and_publish(ws, token, err);
		}
		/* Someone is refreshing: a token that has not expired need not wait. */
		copied = copy_valid_sp_token(ws, ws->sp_expires_at, token, err);
		if (copied != 0)
			break;
		if (wait_for_sp_fetch(ws) != 0) {
			pthread_mutex_unlock(&ws->lock);
			return lb_error_fail(err, LB_ERR_UNAVAILABLE, LB_TRANSIENT, MSG_UNAVAILABLE,
				       "timed out waiting for the service principal token fetch");
		}
		copied = copy_valid_sp_token(ws, ws->sp_expires_at, token, err);
		if (copied != 0)
			break;
		if (ws->sp_last_failed) {
			/* Share the failure rather than queue another full retry cycle. */
			if (err != NULL)
				*err = ws->sp_last_err;
			copied = -1;
			break;
		}
	}
	pthread_mutex_unlock(&ws->lock);
	return copied == 1 ? 0 : -1;
}

bool
workspace_sp_uses_m2m(const struct workspace_client *ws)
{
	return has_client_credentials(ws);
}

int
workspace_fetch_sp_token(struct workspace_client *ws, char **token, long *expires_in,
			 struct lb_error *err)
{
	*token = NULL;
	*expires_in = 0;
	if (!has_client_credentials(ws))
		return lb_error_fail(err, LB_ERR_INTERNAL, LB_PERMANENT, MSG_INTERNAL,
				     "no OAuth M2M client credentials configured "
				     "(DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET)");
	return fetch_sp_token(ws, token, expires_in, err);
}

/* The workspace said 401 to `bearer`: if it is the cached SP token, drop it
 * so the next call fetches a new one instead of reusing a revoked token. */
static void
forget_sp_token(struct workspace_client *ws, const char *bearer)
{
	size_t len = strlen(bearer);

	pthread_mutex_lock(&ws->lock);
	if (ws->sp_token != NULL && strlen(ws->sp_token) == len &&
	    CRYPTO_memcmp(ws->sp_token, bearer, len) == 0) {
		secret_free(ws->sp_token);
		ws->sp_token = NULL;
	}
	pthread_mutex_unlock(&ws->lock);
}

/* {"endpoint": "..."} through yajl_gen. */
static char *
credential_request_body(const char *endpoint, size_t *len)
{
	const unsigned char *buf;
	size_t buf_len;
	yajl_gen gen;
	char *body = NULL;

	gen = yajl_gen_alloc(NULL);
	if (gen == NULL)
		return NULL;
	yajl_gen_config(gen, yajl_gen_validate_utf8, 1);
	if (yajl_gen_map_open(gen) == yajl_gen_status_ok &&
	    yajl_gen_string(gen, (const unsigned char *)"endpoint", 8) == yajl_gen_status_ok &&
	    yajl_gen_string(gen, (const unsigned char *)endpoint, strlen(endpoint)) == yajl_gen_status_ok &&
	    yajl_gen_map_close(gen) == yajl_gen_status_ok &&
	    yajl_gen_get_buf(gen, &buf, &buf_len) == yajl_gen_status_ok &&
	    (body = malloc(buf_len + 1)) != NULL) {
		memcpy(body, buf, buf_len);
		body[buf_len] = '\0';
		*len = buf_len;
	}
	yajl_gen_free(gen);
	return body;
}

static int
check_bearer(const char *bearer, struct lb_error *err)
{
	if (bearer == NULL || bearer[0] == '\0')
		return lb_error_fail(err, LB_ERR_UNAUTHENTICATED, LB_PERMANENT, MSG_REJECTED_TOKEN,
			       "no workspace token to call the workspace with");
	return 0;
}

int
workspace_mint_credential(struct workspace_client *ws, const char *bearer_token,
			  struct db_credential *out, struct lb_error *err)
{
	struct http_request req = {
		.method = "POST", .path = PATH_CREDENTIALS, .bearer = bearer_token,
		.content_type = "application/json", .caller_token = true,
	};
	struct http_answer answer = { 0 };
	char *url, *body;
	int rc;

	out->token = NULL;
	out->expires_at = 0;
	if (check_bearer(bearer_token, err) != 0)
		return -1;
	if (ws->endpoint == NULL || ws->endpoint[0] == '\0')
		return lb_error_fail(err, LB_ERR_INTERNAL, LB_PERMANENT, MSG_INTERNAL,
			       "no Lakebase endpoint configured (LAKEBASE_ENDPOINT)");
	body = credential_request_body(ws->endpoint, &req.body_len);
	url = host_url(ws, PATH_CREDENTIALS);
	if (body == NULL || url == NULL) {
		free(body);
		free(url);
		return oom(err);
	}
	req.body = body;
	req.url = url;
	rc = http_call(ws, &req, &answer, err);
	if (rc != 0 && err != NULL && err->code == LB_ERR_UNAUTHENTICATED)
		forget_sp_token(ws, bearer_token);
	if (rc == 0) {
		rc = workspace_parse_credential(answer.data, answer.len, out, err);
		if (rc == 0 && out->expires_at <= time(NULL)) {
			db_credential_clear(out);
			rc = bad_answer(err, "expire_time is in the past");
		}
		if (rc != 0)
			detail_prefix(err, "POST " PATH_CREDENTIALS);
	}
	answer_free(&answer);
	free(body);
	free(url);
	return rc;
}

int
workspace_current_user(struct workspace_client *ws, const char *bearer_token,
		       char **user_name, struct lb_error *err)
{
	struct http_request req = {
		.method = "GET", .path = PATH_SCIM_ME, .bearer = bearer_token,
		.caller_token = true,
	};
	struct http_answer answer = { 0 };
	char *url;
	int rc;

	*user_name = NULL;
	if (check_bearer(bearer_token, err) != 0)
		return -1;
	url = host_url(ws, PATH_SCIM_ME);
	if (url == NULL)
		return oom(err);
	req.url = url;
	rc = http_call(ws, &req, &answer, err);
	if (rc != 0 && err != NULL && err->code == LB_ERR_UNAUTHENTICATED)
		forget_sp_token(ws, bearer_token);
	if (rc == 0 && (rc = parse_scim_me(answer.data, answer.len, user_name, err)) != 0)
		detail_prefix(err, "GET " PATH_SCIM_ME);
	answer_free(&answer);
	free(url);
	return rc;
}
