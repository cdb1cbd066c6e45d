/*
 * request.c - fills struct http_request from a FastCGI request (or, in CGI
 * mode, from the environment and stdin) and sends struct http_response
 * back. The only file of the request path that knows libfcgi. Both kinds
 * of request are a CGI-style environment plus a body stream, so everything
 * but reading and writing bytes is shared.
 */
#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "forkcount.h"
#include "request.h"
#include "textfmt.h"

/* Room for the usual extra headers at once, instead of growing 64, 128... */
#define RESPONSE_HEADERS_TYPICAL 256

/* Takes `param` as the value of NAME if it is "NAME=..." (first one wins). */
static bool
take_param(const char *param, const char *name, size_t len, const char **field)
{
	if (*field != NULL || strncmp(param, name, len) != 0 || param[len] != '=')
		return false;
	*field = param + len + 1;
	return true;
}

const char *
request_param(const struct http_request *req, const char *name)
{
	const char *value = NULL;
	size_t len = strlen(name);

	for (char **e = req->params; e != NULL && *e != NULL && value == NULL; e++)
		(void)take_param(*e, name, len, &value);
	return value;
}

/*
 * The value of header `name` ("X-Forwarded-Email") if `param` is its CGI
 * parameter ("HTTP_X_FORWARDED_EMAIL=value"), else NULL. Compared in place,
 * uppercased and '-' read as '_', so a lookup builds no key.
 */
static const char *
header_param_value(const char *param, const char *name)
{
	const char *p = param + 5;	/* past "HTTP_", checked by the caller */

	for (; *name != '\0'; p++, name++) {
		unsigned char c = (unsigned char)*name;
		char want = c == '-' ? '_' : (char)(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);

		if (*p != want)
			return NULL;
	}
	return *p == '=' ? p + 1 : NULL;
}

static bool
is_header_param(const char *param)
{
	return param[0] == 'H' && param[1] == 'T' && param[2] == 'T' && param[3] == 'P' && param[4] == '_';
}

void
request_headers(const struct http_request *req, struct header_lookup *h, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		h[i].value = NULL;
		h[i].count = 0;
	}
	for (char **e = req->params; e != NULL && *e != NULL; e++) {
		if (!is_header_param(*e))
			continue;
		for (size_t i = 0; i < n; i++) {
			const char *value = *h[i].name != '\0' ? header_param_value(*e, h[i].name) : NULL;

			if (value != NULL) {
				if (h[i].count++ == 0)
					h[i].value = value;
				break;
			}
		}
	}
}

/*
 * Request ids: a random 64-bit prefix per thread (drawn again after a fork,
 * so two processes never share one) and a per-thread counter, scrambled by
 * a bijection so ids do not look sequential. Unique without RAND_bytes per
 * request, which costs more than the rest of the id handling together.
 */
/* splitmix64's finaliser: a bijection on 64-bit values. */
static uint64_t
scramble(uint64_t x)
{
	x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
	return x ^ (x >> 31);
}

static void
put_hex64(char *buf, uint64_t v)
{
	static const char hex[] = "0123456789abcdef";

	for (int i = 15; i >= 0; i--, v >>= 4)
		buf[i] = hex[v & 15];
}

void
request_generate_id(char *buf)
{
	static _Thread_local bool seeded;
	static _Thread_local unsigned seeded_forks;
	static _Thread_local uint64_t prefix, counter;
	unsigned forks = forkcount_get();

	if (!seeded || seeded_forks != forks) {
		if (RAND_bytes((unsigned char *)&prefix, sizeof(prefix)) != 1)
			prefix = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
		counter = 0;
		seeded = true;
		seeded_forks = forks;
	}
	put_hex64(buf, prefix);
	put_hex64(buf + 16, scramble(++counter));
	buf[32] = '\0';
}

/* A client-supplied request id is echoed and logged, so only a short,
 * plain token is accepted; anything else is replaced. */
static bool
request_id_is_sane(const char *id)
{
	size_t n = 0;

	for (const char *p = id; *p; p++, n++) {
		if (n >= REQUEST_ID_MAX)
			return false;
		if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_' && *p != '.')
			return false;
	}
	return n > 0;
}

/* Parses CONTENT_LENGTH strictly: digits only. -1 if absent, -2 if bad. */
static long
parse_content_length(const char *text)
{
	char *end;
	long v;

	if (text == NULL || *text == '\0')
		return -1;
	if (!isdigit((unsigned char)*text))
		return -2;
	errno = 0;
	v = strtol(text, &end, 10);
	if (errno != 0 || *end != '\0' || v < 0)
		return -2;
	return v;
}

/* The CGI parameters request_fill reads, found in one pass over them. */
struct cgi_params {
	const char *request_uri, *script_name, *path_info, *request_id;
	const char *method, *query, *content_type, *content_length;
};

#define TAKE(param, name, field) take_param((param), (name), sizeof(name) - 1, &(field))

/*
 * One pass instead of a lookup each (every lookup is a scan of all the
 * parameters, ~25 under nginx), dispatched on the first letter so most
 * parameters cost one comparison. The first occurrence wins, as with
 * FCGX_GetParam.
 */
static void
read_cgi_params(char **envp, struct cgi_params *p)
{
	memset(p, 0, sizeof(*p));
	for (char **e = envp; e != NULL && *e != NULL; e++) {
		const char *s = *e;

		switch (s[0]) {
		case 'C':
			(void)(TAKE(s, "CONTENT_TYPE", p->content_type) ||
			       TAKE(s, "CONTENT_LENGTH", p->content_length));
			break;
		case 'H':
			(void)TAKE(s, "HTTP_X_REQUEST_ID", p->request_id);
			break;
		case 'P':
			(void)TAKE(s, "PATH_INFO", p->path_info);
			break;
		case 'Q':
			(void)TAKE(s, "QUERY_STRING", p->query);
			break;
		case 'R':
			(void)(TAKE(s, "REQUEST_URI", p->request_uri) ||
			       TAKE(s, "REQUEST_METHOD", p->method));
			break;
		case 'S':
			(void)TAKE(s, "SCRIPT_NAME", p->script_name);
			break;
		default:
			break;
		}
	}
}
#undef TAKE

/* The request path: REQUEST_URI up to '?' (nginx, Apache), else
 * SCRIPT_NAME + PATH_INFO (servers that omit REQUEST_URI). */
static char *
request_path(const struct cgi_params *p)
{
	struct strbuf sb;

	strbuf_init(&sb);
	if (p->request_uri != NULL && *p->request_uri != '\0') {
		strbuf_append(&sb, p->request_uri, strcspn(p->request_uri, "?#"));
	} else {
		strbuf_append_str(&sb, p->script_name ? p->script_name : "");
		strbuf_append_str(&sb, p->path_info ? p->path_info : "");
	}
	if (sb.len == 0)
		strbuf_append_str(&sb, "/");
	if (strbuf_failed(&sb)) {
		strbuf_free(&sb, false);
		return NULL;
	}
	return strbuf_detach(&sb, NULL);
}

/* Reads up to n bytes of the body; 0 at its end, -1 on an error. */
typedef int (*body_read_fn)(void *ctx, char *buf, int n);

static int
fcgx_read(void *ctx, char *buf, int n)
{
	return FCGX_GetStr(buf, n, ctx);
}

static int
stdio_read(void *ctx, char *buf, int n)
{
	size_t got = fread(buf, 1, (size_t)n, ctx);

	return got > 0 ? (int)got : (ferror((FILE *)ctx) ? -1 : 0);
}

/* Makes room in req->body for more of a body of at most limit bytes:
 * all of it when its length is known, else doubling from 4 KiB. */
static int
body_make_room(struct http_request *req, size_t *cap, size_t limit, bool known,
	       struct lb_error *err)
{
	size_t want = known ? limit : (*cap == 0 ? 4096 : *cap * 2);
	char *p;

	if (want > limit)
		want = limit;
	p = realloc(req->body, want + 1);
	if (p == NULL)
		return lb_error_set(err, LB_ERR_INTERNAL, "Out of memory.", "body allocation of %zu bytes", want);
	req->body = p;
	*cap = want;
	return 0;
}

/*
 * Reads the body: Content-Length bytes, or without a length up to the
 * limit plus one byte (to detect excess). A body without a length grows
 * as it arrives, so a GET, which has none, costs 4 KiB and not the limit.
 */
static int
read_body(body_read_fn read_fn, void *in, long max_body, struct http_request *req, struct lb_error *err)
{
	long want = req->content_length;
	size_t limit = (size_t)(want > 0 ? want : max_body + 1), cap = 0;
	int n;

	if (want == 0)
		return 0;
	do {
		if (req->body_len == cap && body_make_room(req, &cap, limit, want > 0, err) != 0)
			return -1;
		n = read_fn(in, req->body + req->body_len,
			    (int)(cap - req->body_len > 65536 ? 65536 : cap - req->body_len));
		if (n > 0)
			req->body_len += (size_t)n;
	} while (n > 0 && req->body_len < limit);
	req->body[req->body_len] = '\0';
	if (want > 0 && req->body_len != (size_t)want)
		return lb_error_set(err, LB_ERR_BAD_REQUEST, "The request body is incomplete.",
				    "read %zu of %ld body bytes", req->body_len, want);
	if (req->body_len > (size_t)max_body)
		return lb_error_set(err, LB_ERR_PAYLOAD_TOO_LARGE, "The request body is too large.",
				    "body over %ld bytes", max_body);
	return 0;
}

static int
request_fill(char **envp, body_read_fn read_fn, void *in, long max_body, struct http_request *req,
	     struct lb_error *err)
{
	struct cgi_params p;

	memset(req, 0, sizeof(*req));
	req->params = envp;
	read_cgi_params(envp, &p);
	if (p.request_id != NULL && request_id_is_sane(p.request_id))   /* so at most REQUEST_ID_MAX */
		memcpy(req->request_id, p.request_id, strlen(p.request_id) + 1);
	else
		request_generate_id(req->request_id);

	req->method = p.method != NULL ? p.method : "GET";
	req->query = p.query != NULL ? p.query : "";
	req->content_type = p.content_type != NULL && *p.content_type != '\0' ? p.content_type : NULL;
	req->path = request_path(&p);
	if (req->path == NULL)
		return lb_error_set(err, LB_ERR_INTERNAL, "Out of memory.", "request path");

	req->content_length = parse_content_length(p.content_length);
	if (req->content_length == -2)
		return lb_error_set(err, LB_ERR_BAD_REQUEST, "Invalid Content-Length.", "bad CONTENT_LENGTH");
	if (req->content_length > max_body)
		return lb_error_set(err, LB_ERR_PAYLOAD_TOO_LARGE, "The request body is too large.",
				    "Content-Length %ld over the limit of %ld", req->content_length, max_body);
	return read_body(read_fn, in, max_body, req, err);
}

int
request_from_fcgx(FCGX_Request *fcgx, long max_body, struct http_request *req, struct lb_error *err)
{
	return request_fill(fcgx->envp, fcgx_read, fcgx->in, max_body, req, err);
}

int
request_from_cgi(char **envp, FILE *in, long max_body, struct http_request *req, struct lb_error *err)
{
	return request_fill(envp, stdio_read, in, max_body, req, err);
}

void
request_free(struct http_request *req)
{
	free(req->path);
	if (req->body != NULL) {
		/* Bodies can carry personal data: do not leave them in freed memory. */
		OPENSSL_cleanse(req->body, req->body_len);
		free(req->body);
	}
	req->path = NULL;
	req->body = NULL;
}

void
response_init(struct http_response *resp)
{
	resp->status = 200;
	resp->content_type = NULL;
	strbuf_init(&resp->headers);
	strbuf_init(&resp->body);
}

void
response_add_header(struct http_response *resp, const char *name, const char *value)
{
	if (resp->headers.cap == 0)
		strbuf_grow(&resp->headers, RESPONSE_HEADERS_TYPICAL);
	strbuf_append_str(&resp->headers, name);
	strbuf_append(&resp->headers, ": ", 2);
	strbuf_append_str(&resp->headers, value);
	strbuf_append(&resp->headers, "\r\n", 2);
}

static const char *
status_reason(int status)
{
	switch (status) {
	case 200: return "OK";
	case 201: return "Created";
	case 204: return "No Content";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 409: return "Conflict";
	case 413: return "Payload Too Large";
	case 415: return "Unsupported Media Type";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	default: return "Unknown";
	}
}

/* Writes n bytes; -1 on an error. */
typedef int (*body_write_fn)(void *ctx, const char *buf, size_t n);

static int
fcgx_write(void *ctx, const char *buf, size_t n)
{
	return FCGX_PutStr(buf, (int)n, ctx) < 0 ? -1 : 0;
}

static int
stdio_write(void *ctx, const char *buf, size_t n)
{
	return fwrite(buf, 1, n, ctx) == n ? 0 : -1;
}

/* The status line, Content-Type and Content-Length, then the other headers
 * and the body: written in pieces, the stream buffers them. */
static int
response_send(body_write_fn write_fn, void *out, const struct http_response *resp)
{
	const char *type = resp->content_type ? resp->content_type : "application/json";
	const char *reason = status_reason(resp->status);
	char digits[TEXT_UINT_MAX];

	if (strbuf_failed(&resp->headers) || strbuf_failed(&resp->body))
		return -1;
	if (write_fn(out, "Status: ", 8) != 0 ||
	    write_fn(out, digits, text_uint(digits, (unsigned)resp->status)) != 0 ||
	    write_fn(out, " ", 1) != 0 || write_fn(out, reason, strlen(reason)) != 0 ||
	    write_fn(out, "\r\nContent-Type: ", 16) != 0 || write_fn(out, type, strlen(type)) != 0 ||
	    write_fn(out, "\r\nContent-Length: ", 18) != 0 ||
	    write_fn(out, digits, text_uint(digits, resp->body.len)) != 0 ||
	    write_fn(out, "\r\n", 2) != 0)
		return -1;
	if (resp->headers.len > 0 && write_fn(out, resp->headers.data, resp->headers.len) != 0)
		return -1;
	if (write_fn(out, "\r\n", 2) != 0)
		return -1;
	if (resp->body.len > 0 && write_fn(out, resp->body.data, resp->body.len) != 0)
		return -1;
	return 0;
}

int
response_send_fcgx(FCGX_Request *fcgx, const struct http_response *resp)
{
	return response_send(fcgx_write, fcgx->out, resp);
}

int
response_send_cgi(FILE *out, const struct http_response *resp)
{
	if (response_send(stdio_write, out, resp) != 0)
		return -1;
	return fflush(out) == 0 ? 0 : -1;
}

void
response_free(struct http_response *resp)
{
	/* Response bodies hold query results: wipe them. */
	strbuf_free(&resp->body, true);
	strbuf_free(&resp->headers, false);
}
