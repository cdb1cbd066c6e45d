/*
 * httpd.c - the emulator's minimal HTTP/1.1 server (see httpd.h).
 *
 * One accept thread polls the listening socket and a wake-up pipe; each
 * accepted connection gets a detached thread that reads a request, calls
 * the handler and writes the answer, then waits for the connection's next
 * request (keep-alive) or closes. Connections are registered so
 * that httpd_stop can wake threads blocked in recv() and wait for them.
 */
#include "httpd.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

/* A client that stalls longer than this mid-request is dropped. */
#define IO_TIMEOUT_S 30
/* After answering, how long to drain what the client still sends, so that
 * closing with unread data does not reset the connection before the client
 * has read our answer (e.g. a 413 sent before the body arrived). */
#define LINGER_MS 1000
#define LINGER_MAX_BYTES (2u * 1024u * 1024u)

/* ---- growable buffer with a cap ---------------------------------------- */

struct buf {
	char *p;
	size_t len;
	size_t cap;
};

/* Appends n bytes keeping a NUL after them; -1 when past max or out of memory. */
static int buf_append(struct buf *b, const void *data, size_t n, size_t max)
{
	if (n > max || b->len > max - n)
		return -1;
	if (b->len + n + 1 > b->cap) {
		size_t ncap = b->cap ? b->cap : 256;
		while (ncap < b->len + n + 1)
			ncap *= 2;
		char *np = malloc(ncap);
		if (!np)
			return -1;
		/* Grow by copy-and-wipe rather than realloc, so no copy of a
		 * secret is left behind in freed memory. */
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
	return 0;
}

static int buf_append_str(struct buf *b, const char *s, size_t max)
{
	return buf_append(b, s, strlen(s), max);
}

static void buf_free(struct buf *b)
{
	if (b->p) {
		OPENSSL_cleanse(b->p, b->cap);
		free(b->p);
	}
	b->p = NULL;
	b->len = b->cap = 0;
}

/* ---- response ----------------------------------------------------------- */

struct httpd_response {
	int status;
	int drop;
	int failed;              /* a setter failed: answer 500 instead */
	struct buf headers;      /* "Name: value\r\n"... */
	struct buf body;
	char content_type[128];
};

#define RESP_HEADERS_MAX (16u * 1024u)

void httpd_response_status(struct httpd_response *resp, int status)
{
	if (status >= 100 && status <= 599)
		resp->status = status;
}

int httpd_response_get_status(const struct httpd_response *resp)
{
	return resp->status;
}

static int has_ctl(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return 1;
	return 0;
}

int httpd_response_header(struct httpd_response *resp, const char *name, const char *value)
{
	if (!*name || has_ctl(name) || strchr(name, ':') || has_ctl(value))
		return -1;
	if (buf_append_str(&resp->headers, name, RESP_HEADERS_MAX) ||
	    buf_append_str(&resp->headers, ": ", RESP_HEADERS_MAX) ||
	    buf_append_str(&resp->headers, value, RESP_HEADERS_MAX) ||
	    buf_append_str(&resp->headers, "\r\n", RESP_HEADERS_MAX)) {
		resp->failed = 1;
		return -1;
	}
	return 0;
}

int httpd_response_body(struct httpd_response *resp, const char *content_type,
                        const void *body, size_t len)
{
	size_t ctlen = strlen(content_type);
	if (ctlen >= sizeof resp->content_type || has_ctl(content_type))
		return -1;
	memcpy(resp->content_type, content_type, ctlen + 1);
	resp->body.len = 0;
	if (buf_append(&resp->body, body, len, SIZE_MAX / 2)) {
		resp->failed = 1;
		return -1;
	}
	return 0;
}

void httpd_response_drop(struct httpd_response *resp)
{
	resp->drop = 1;
}

int httpd_response_dropped(const struct httpd_response *resp)
{
	return resp->drop;
}

/* ---- request ------------------------------------------------------------ */

const char *httpd_header_get(const struct httpd_request *req, const char *name)
{
	for (size_t i = 0; i < req->nheaders; i++)
		if (strcasecmp(req->headers[i].name, name) == 0)
			return req->headers[i].value;
	return NULL;
}

size_t httpd_header_count(const struct httpd_request *req, const char *name)
{
	size_t n = 0;
	for (size_t i = 0; i < req->nheaders; i++)
		if (strcasecmp(req->headers[i].name, name) == 0)
			n++;
	return n;
}

/* ---- server ------------------------------------------------------------- */

struct httpd_server {
	int listen_fd;
	int wake[2];             /* pipe: a byte on it stops the accept loop */
	pthread_t accept_thread;
	httpd_handler handler;
	void *ctx;
	char address[INET6_ADDRSTRLEN + 16];

	pthread_mutex_t mu;      /* guards the fields below */
	pthread_cond_t idle;     /* signalled when active drops */
	int stopping;
	size_t active;
	int fds[HTTPD_MAX_CONNECTIONS]; /* open connections; -1 = free */
};

struct conn {
	struct httpd_server *srv;
	int fd;
	size_t slot;
	char peer[INET6_ADDRSTRLEN + 16];
};

static const char *reason_phrase(int status)
{
	switch (status) {
	case 100: return "Continue";
	case 200: return "OK";
	case 201: return "Created";
	case 204: return "No Content";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 409: return "Conflict";
	case 411: return "Length Required";
	case 413: return "Content Too Large";
	case 415: return "Unsupported Media Type";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	case 505: return "HTTP Version Not Supported";
	default:  return status < 500 ? "Client Error" : "Server Error";
	}
}

static int send_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static void write_response(int fd, struct httpd_response *resp, int last)
{
	if (resp->failed) {
		resp->status = 500;
		resp->headers.len = 0;
		resp->body.len = 0;
		resp->content_type[0] = '\0';
	}
	char line[128];
	struct buf head = {0};
	int n = snprintf(line, sizeof line, "HTTP/1.1 %d %s\r\n", resp->status,
	                 reason_phrase(resp->status));
	int bad = n < 0 || (size_t)n >= sizeof line || buf_append_str(&head, line, SIZE_MAX / 2);
	if (!bad && resp->content_type[0])
		bad = buf_append_str(&head, "Content-Type: ", SIZE_MAX / 2) ||
		      buf_append_str(&head, resp->content_type, SIZE_MAX / 2) ||
		      buf_append_str(&head, "\r\n", SIZE_MAX / 2);
	n = snprintf(line, sizeof line, "Content-Length: %zu\r\n%s", resp->body.len,
	             last ? "Connection: close\r\n" : "");
	if (!bad)
		bad = n < 0 || (size_t)n >= sizeof line || buf_append_str(&head, line, SIZE_MAX / 2);
	if (!bad && resp->headers.len)
		bad = buf_append(&head, resp->headers.p, resp->headers.len, SIZE_MAX / 2);
	if (!bad)
		bad = buf_append_str(&head, "\r\n", SIZE_MAX / 2);
	if (!bad && send_all(fd, head.p, head.len) == 0 && resp->body.len)
		(void)send_all(fd, resp->body.p, resp->body.len);
	buf_free(&head);
}

/* Answers an error the server itself detects (before any handler runs). */
static void write_simple(int fd, int status, const char *message)
{
	struct httpd_response resp = {.status = status};
	(void)httpd_response_body(&resp, "text/plain; charset=utf-8", message, strlen(message));
	write_response(fd, &resp, 1);
	buf_free(&resp.body);
	buf_free(&resp.headers);
}

static int is_tchar(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* Parses a Content-Length value: digits only, at most HTTPD_MAX_BODY + 1
 * (anything larger is reported as too large, not as an overflow). */
static int parse_length(const char *s, size_t *out)
{
	size_t v = 0;
	if (!*s)
		return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		if (v <= HTTPD_MAX_BODY)
			v = v * 10 + (size_t)(*s - '0');
	}
	*out = v > HTTPD_MAX_BODY ? HTTPD_MAX_BODY + 1 : v;
	return 0;
}

static char *trim_ows(char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	size_t n = strlen(s);
	while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
		s[--n] = '\0';
	return s;
}

/* Reads what the client still sends (bounded in time and size) so the close
 * that follows is a clean FIN rather than a reset. */
static void linger_close(int fd)
{
	char sink[4096];
	size_t total = 0;
	struct timeval tv = {.tv_sec = 0, .tv_usec = LINGER_MS * 1000};
	(void)shutdown(fd, SHUT_WR);
	(void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	while (total < LINGER_MAX_BYTES) {
		ssize_t r = recv(fd, sink, sizeof sink, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		total += (size_t)r;
	}
}

/*
 * Reads and parses one request into the out-parameters. Returns 0 on success,
 * an HTTP status to answer with on a client error, or -1 when the connection
 * should just be closed (EOF or timeout before a full head).
 */
static int read_request(int fd, struct buf *head, struct buf *body,
                        struct httpd_header **headers_out, struct httpd_request *req)
{
	size_t head_end = 0;     /* offset just past the blank line */
	char chunk[8192];

	while (!head_end) {
		ssize_t r = recv(fd, chunk, sizeof chunk, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)     /* EOF or timeout: a partial head gets an answer */
			return head->len ? (r == 0 ? 400 : 408) : -1;
		size_t old = head->len;
		if (buf_append(head, chunk, (size_t)r, HTTPD_MAX_HEAD + sizeof chunk))
			return 431;
		/* Search from slightly before the new bytes: the terminator may
		 * straddle two reads. */
		size_t from = old > 3 ? old - 3 : 0;
		char *end = memmem(head->p + from, head->len - from, "\r\n\r\n", 4);
		if (end)
			head_end = (size_t)(end - head->p) + 4;
		else if (head->len > HTTPD_MAX_HEAD)
			return 431;
	}
	if (head_end > HTTPD_MAX_HEAD)
		return 431;
	if (memchr(head->p, '\0', head_end))
		return 400;

	/* Body bytes that came with the head: keep them aside before the head
	 * is cut into NUL-terminated strings. */
	size_t extra = head->len - head_end;
	head->p[head_end - 2] = '\0';   /* ends the last header line */

	/* Request line: METHOD SP target SP HTTP/1.x */
	char *line = head->p;
	char *eol = strstr(line, "\r\n");
	if (!eol)
		return 400;
	*eol = '\0';
	char *sp1 = strchr(line, ' ');
	char *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
	if (!sp1 || !sp2 || strchr(sp2 + 1, ' '))
		return 400;
	*sp1 = *sp2 = '\0';
	char *method = line, *target = sp1 + 1, *version = sp2 + 1;
	if (!*method || strlen(method) > 16)
		return 400;
	for (char *c = method; *c; c++)
		if (!is_tchar((unsigned char)*c))
			return 400;
	if (target[0] != '/')
		return 400;
	for (char *c = target; *c; c++)
		if ((unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7f)
			return 400;
	if (strcmp(version, "HTTP/1.1") != 0 && strcmp(version, "HTTP/1.0") != 0)
		return strncmp(version, "HTTP/", 5) == 0 ? 505 : 400;

	/* Header fields. */
	struct httpd_header *hs = calloc(HTTPD_MAX_HEADERS, sizeof *hs);
	if (!hs)
		return 500;
	*headers_out = hs;
	size_t nh = 0;
	char *p = eol + 2;
	while (*p) {
		char *e = strstr(p, "\r\n");
		if (e)
			*e = '\0';
		if (*p == ' ' || *p == '\t')
			return 400;             /* obsolete line folding */
		char *colon = strchr(p, ':');
		if (!colon || colon == p)
			return 400;
		*colon = '\0';
		for (char *c = p; *c; c++)
			if (!is_tchar((unsigned char)*c))
				return 400;
		char *value = trim_ows(colon + 1);
		if (has_ctl(value))
			return 400;
		if (nh == HTTPD_MAX_HEADERS)
			return 431;
		hs[nh].name = p;
		hs[nh].value = value;
		nh++;
		if (!e)
			break;
		p = e + 2;
	}

	req->method = method;
	req->target = target;
	req->headers = hs;
	req->nheaders = nh;
	const char *connection = httpd_header_get(req, "Connection");
	req->last = strcmp(version, "HTTP/1.1") != 0 ||
	            (connection != NULL && strcasestr(connection, "close") != NULL);

	/* Body: Content-Length only. */
	if (httpd_header_get(req, "Transfer-Encoding"))
		return 411;
	size_t clen = 0;
	int have_len = 0;
	for (size_t i = 0; i < nh; i++) {
		if (strcasecmp(hs[i].name, "Content-Length") != 0)
			continue;
		size_t v;
		if (parse_length(hs[i].value, &v))
			return 400;
		if (have_len && v != clen)
			return 400;
		clen = v;
		have_len = 1;
	}
	if (clen > HTTPD_MAX_BODY)
		return 413;

	if (buf_append(body, head->p + head_end, extra < clen ? extra : clen, HTTPD_MAX_BODY))
		return 500;
	if (body->len < clen) {
		const char *expect = httpd_header_get(req, "Expect");
		if (expect && strcasecmp(expect, "100-continue") == 0) {
			static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
			if (send_all(fd, cont, sizeof cont - 1))
				return -1;
		}
	}
	while (body->len < clen) {
		size_t want = clen - body->len;
		ssize_t r = recv(fd, chunk, want < sizeof chunk ? want : sizeof chunk, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r == 0 ? 400 : 408;
		if (buf_append(body, chunk, (size_t)r, HTTPD_MAX_BODY))
			return 500;
	}
	if (!body->p && buf_append(body, "", 0, HTTPD_MAX_BODY))
		return 500;
	req->body = body->p;
	req->body_len = body->len;

	char *q = strchr(target, '?');
	req->path = target;
	req->query = "";
	if (q) {
		/* The path is a copy so target keeps its query. */
		size_t plen = (size_t)(q - target);
		char *path = malloc(plen + 1);
		if (!path)
			return 500;
		memcpy(path, target, plen);
		path[plen] = '\0';
		req->path = path;
		req->query = q + 1;
	}
	return 0;
}

static void unregister_conn(struct conn *c)
{
	struct httpd_server *srv = c->srv;
	pthread_mutex_lock(&srv->mu);
	srv->fds[c->slot] = -1;
	srv->active--;
	close(c->fd);
	pthread_cond_broadcast(&srv->idle);
	pthread_mutex_unlock(&srv->mu);
}

/*
 * Serves one request of the connection. Returns 1 when the connection may
 * carry another, 0 when it was answered for the last time (or dropped).
 */
static int serve_one(struct conn *c, unsigned nth)
{
	struct buf head = {0}, body = {0};
	struct httpd_header *headers = NULL;
	struct httpd_request req;
	int again = 0;
	memset(&req, 0, sizeof req);
	req.peer = c->peer;
	req.nth = nth;

	int rc = read_request(c->fd, &head, &body, &headers, &req);
	if (rc == 0) {
		struct httpd_response resp;
		memset(&resp, 0, sizeof resp);
		resp.status = 500;
		c->srv->handler(&req, &resp, c->srv->ctx);
		if (!resp.drop) {
			write_response(c->fd, &resp, req.last);
			if (req.last)
				linger_close(c->fd);
			else
				again = 1;
		}
		buf_free(&resp.headers);
		buf_free(&resp.body);
	} else if (rc > 0) {
		write_simple(c->fd, rc, reason_phrase(rc));
		linger_close(c->fd);
	}
	if (req.path && req.path != req.target)
		free((char *)req.path);
	free(headers);
	buf_free(&head);
	buf_free(&body);
	return again;
}

static void *conn_main(void *arg)
{
	struct conn *c = arg;
	struct timeval idle = {.tv_sec = HTTPD_KEEPALIVE_S};
	unsigned nth = 1;

	while (serve_one(c, nth) && nth < UINT_MAX) {
		/* The next request: waited for HTTPD_KEEPALIVE_S, then closed. */
		(void)setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &idle, sizeof idle);
		nth++;
	}
	unregister_conn(c);
	free(c);
	return NULL;
}

static void accept_one(struct httpd_server *srv)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	int fd = accept4(srv->listen_fd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC);
	if (fd < 0)
		return;     /* EAGAIN, ECONNABORTED, EMFILE...: poll again */

	struct timeval tv = {.tv_sec = IO_TIMEOUT_S};
	(void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	/* An answer is written as head, then body: on a kept connection Nagle
	 * would hold the body until the client's delayed ACK, 40 ms later. */
	int one = 1;
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

	struct conn *c = calloc(1, sizeof *c);
	if (!c) {
		close(fd);
		return;
	}
	c->srv = srv;
	c->fd = fd;
	char host[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;
	if (ss.ss_family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
		inet_ntop(AF_INET, &sin->sin_addr, host, sizeof host);
		port = ntohs(sin->sin_port);
	} else if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
		inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof host);
		port = ntohs(sin6->sin6_port);
	}
	snprintf(c->peer, sizeof c->peer, "%s:%u", host, port);

	pthread_mutex_lock(&srv->mu);
	size_t slot = HTTPD_MAX_CONNECTIONS;
	if (!srv->stopping)
		for (size_t i = 0; i < HTTPD_MAX_CONNECTIONS; i++)
			if (srv->fds[i] < 0) {
				slot = i;
				break;
			}
	if (slot == HTTPD_MAX_CONNECTIONS) {
		pthread_mutex_unlock(&srv->mu);
		write_simple(fd, 503, "too many connections");
		close(fd);
		free(c);
		return;
	}
	srv->fds[slot] = fd;
	srv->active++;
	c->slot = slot;
	pthread_mutex_unlock(&srv->mu);

	pthread_attr_t attr;
	pthread_t tid;
	int ok = pthread_attr_init(&attr) == 0;
	if (ok) {
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		ok = pthread_create(&tid, &attr, conn_main, c) == 0;
		pthread_attr_destroy(&attr);
	}
	if (!ok) {
		write_simple(fd, 503, "cannot start a thread");
		unregister_conn(c);
		free(c);
	}
}

static void *accept_main(void *arg)
{
	struct httpd_server *srv = arg;
	for (;;) {
		struct pollfd pfd[2] = {
			{.fd = srv->listen_fd, .events = POLLIN},
			{.fd = srv->wake[0], .events = POLLIN},
		};
		int n = poll(pfd, 2, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pfd[1].revents)
			break;
		if (pfd[0].revents & POLLIN)
			accept_one(srv);
	}
	return NULL;
}

static int is_loopback(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
		return (ntohl(sin->sin_addr.s_addr) >> 24) == 127;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
		return IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr);
	}
	return 0;
}

/* Splits "host:port" or "[v6]:port" into its parts (in copies). */
static int split_hostport(const char *addr, char *host, size_t hostlen, char *port, size_t portlen)
{
	const char *colon, *h = addr;
	size_t hl;
	if (addr[0] == '[') {
		const char *rb = strchr(addr, ']');
		if (!rb || rb[1] != ':')
			return -1;
		h = addr + 1;
		hl = (size_t)(rb - h);
		colon = rb + 1;
	} else {
		colon = strrchr(addr, ':');
		if (!colon || strchr(addr, ':') != colon)
			return -1;
		hl = (size_t)(colon - addr);
	}
	size_t pl = strlen(colon + 1);
	if (hl == 0 || hl >= hostlen || pl == 0 || pl >= portlen)
		return -1;
	for (const char *c = colon + 1; *c; c++)
		if (*c < '0' || *c > '9')
			return -1;
	memcpy(host, h, hl);
	host[hl] = '\0';
	memcpy(port, colon + 1, pl + 1);
	return atoi(port) <= 65535 ? 0 : -1;
}

struct httpd_server *httpd_start(const char *listen_addr, httpd_handler handler,
                                 void *ctx, char *err, size_t errlen)
{
	char host[256], port[8];
	if (split_hostport(listen_addr, host, sizeof host, port, sizeof port)) {
		snprintf(err, errlen, "listen address \"%s\" is not host:port", listen_addr);
		return NULL;
	}
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
	struct addrinfo *res = NULL;
	int gai = getaddrinfo(host, port, &hints, &res);
	if (gai) {
		snprintf(err, errlen, "listen address \"%s\": %s", listen_addr, gai_strerror(gai));
		return NULL;
	}
	/* Every address the name resolves to must be loopback: the emulator
	 * hands out credentials to anyone who asks with a configured token. */
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
		if (!is_loopback(ai->ai_addr)) {
			snprintf(err, errlen, "listen address \"%s\" is not a loopback address; refusing",
			         listen_addr);
			freeaddrinfo(res);
			return NULL;
		}

	int fd = -1;
	for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0)
			continue;
		int one = 1;
		(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 128) != 0) {
			int e = errno;
			close(fd);
			fd = -1;
			errno = e;
		}
	}
	freeaddrinfo(res);
	if (fd < 0) {
		snprintf(err, errlen, "cannot listen on %s: %s", listen_addr, strerror(errno));
		return NULL;
	}
	/* Non-blocking, so a connection reset between poll and accept cannot
	 * block the accept thread. */
	(void)fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);

	struct httpd_server *srv = calloc(1, sizeof *srv);
	if (!srv) {
		close(fd);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	srv->listen_fd = fd;
	srv->handler = handler;
	srv->ctx = ctx;
	for (size_t i = 0; i < HTTPD_MAX_CONNECTIONS; i++)
		srv->fds[i] = -1;

	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	char h[INET6_ADDRSTRLEN] = "127.0.0.1";
	unsigned p = 0;
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET6) {
			inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, h, sizeof h);
			p = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
		} else {
			inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, h, sizeof h);
			p = ntohs(((struct sockaddr_in *)&ss)->sin_port);
		}
	}
	snprintf(srv->address, sizeof srv->address, ss.ss_family == AF_INET6 ? "[%s]:%u" : "%s:%u",
	         h, p);

	if (pipe2(srv->wake, O_CLOEXEC) != 0) {
		snprintf(err, errlen, "pipe: %s", strerror(errno));
		close(fd);
		free(srv);
		return NULL;
	}
	pthread_mutex_init(&srv->mu, NULL);
	pthread_cond_init(&srv->idle, NULL);
	if (pthread_create(&srv->accept_thread, NULL, accept_main, srv) != 0) {
		snprintf(err, errlen, "cannot start the accept thread");
		close(fd);
		close(srv->wake[0]);
		close(srv->wake[1]);
		pthread_mutex_destroy(&srv->mu);
		pthread_cond_destroy(&srv->idle);
		free(srv);
		return NULL;
	}
	return srv;
}

const char *httpd_address(const struct httpd_server *srv)
{
	return srv->address;
}

int httpd_stop(struct httpd_server *srv, unsigned wait_ms)
{
	char b = 1;
	while (write(srv->wake[1], &b, 1) < 0 && errno == EINTR)
		;
	pthread_join(srv->accept_thread, NULL);
	close(srv->listen_fd);

	struct timespec deadline;
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += wait_ms / 1000;
	deadline.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
	if (deadline.tv_nsec >= 1000000000L) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000L;
	}

	pthread_mutex_lock(&srv->mu);
	srv->stopping = 1;
	/* Wake threads blocked reading a request; threads inside a handler
	 * finish it and find their reads at EOF. */
	for (size_t i = 0; i < HTTPD_MAX_CONNECTIONS; i++)
		if (srv->fds[i] >= 0)
			(void)shutdown(srv->fds[i], SHUT_RD);
	while (srv->active > 0)
		if (pthread_cond_timedwait(&srv->idle, &srv->mu, &deadline) == ETIMEDOUT)
			break;
	size_t left = srv->active;
	pthread_mutex_unlock(&srv->mu);
	if (left > 0)
		return -1;

	close(srv->wake[0]);
	close(srv->wake[1]);
	pthread_mutex_destroy(&srv->mu);
	pthread_cond_destroy(&srv->idle);
	free(srv);
	return 0;
}
