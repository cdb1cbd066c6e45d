/*
 * httpd.h - a minimal threaded HTTP/1.1 server for the workspace emulator.
 *
 * Test infrastructure, not product code: one detached thread per connection,
 * which serves its requests one after another (HTTP/1.1 keep-alive, as a
 * workspace does, until the client closes or asks to, an error, or
 * HTTPD_KEEPALIVE_S idle; no pipelining),
 * Content-Length bodies only (no chunked encoding), loopback addresses only.
 * Every input length is checked against a cap, so a hostile or broken client
 * gets a 4xx, never an overflow. Request and response buffers are wiped when
 * freed, because they carry bearer tokens, client secrets and credentials.
 */
#ifndef LAKEBASE_EMULATOR_HTTPD_H
#define LAKEBASE_EMULATOR_HTTPD_H

#include <stddef.h>

/* Caps on what a client may send. */
#define HTTPD_MAX_BODY        (1024u * 1024u)  /* Content-Length above: 413 */
#define HTTPD_MAX_HEAD        (64u * 1024u)    /* request line + headers: 431 */
#define HTTPD_MAX_HEADERS     100u             /* header fields: 431 */
#define HTTPD_MAX_CONNECTIONS 256u             /* concurrent: 503 beyond */
#define HTTPD_KEEPALIVE_S     5                /* idle between requests: closed after */

struct httpd_header {
	const char *name;
	const char *value;   /* optional whitespace around it already trimmed */
};

struct httpd_request {
	const char *method;  /* "GET", "POST", ... */
	const char *target;  /* as sent: path and query */
	const char *path;    /* target up to '?' */
	const char *query;   /* after '?', "" when none */
	const struct httpd_header *headers;
	size_t nheaders;
	const char *body;    /* NUL-terminated; body_len bytes (may hold NULs) */
	size_t body_len;
	const char *peer;    /* client address, "127.0.0.1:54321" */
	unsigned nth;        /* 1 for the first request on its connection, 2 for the next... */
	int last;            /* the connection closes after this answer (HTTP/1.0, "Connection: close") */
};

/* Case-insensitive header lookup; the first field of that name, or NULL. */
const char *httpd_header_get(const struct httpd_request *req, const char *name);
/* How many fields of that name the request carries. */
size_t httpd_header_count(const struct httpd_request *req, const char *name);

/*
 * The response is opaque: handlers fill it with the setters below. Unless
 * set, it is a 500 with an empty body. The server always adds Content-Length
 * and Connection: close.
 */
struct httpd_response;

void httpd_response_status(struct httpd_response *resp, int status);
int httpd_response_get_status(const struct httpd_response *resp);
/* Adds a header; refuses (returns -1) names or values containing CR, LF or
 * NUL, so a handler echoing input cannot split the response. */
int httpd_response_header(struct httpd_response *resp, const char *name, const char *value);
/* Copies the body; returns -1 on allocation failure (the answer becomes 500). */
int httpd_response_body(struct httpd_response *resp, const char *content_type,
                        const void *body, size_t len);
/* Closes the connection without answering (fault injection). */
void httpd_response_drop(struct httpd_response *resp);
int httpd_response_dropped(const struct httpd_response *resp);

typedef void (*httpd_handler)(const struct httpd_request *req,
                              struct httpd_response *resp, void *ctx);

struct httpd_server;

/*
 * Binds listen_addr ("127.0.0.1:18089", "localhost:0", "[::1]:8080") and
 * starts the accept thread. A non-loopback address is refused. On failure
 * returns NULL with a message in err. Signals: the caller should block the
 * ones it handles before calling, so server threads inherit the mask.
 */
struct httpd_server *httpd_start(const char *listen_addr, httpd_handler handler,
                                 void *ctx, char *err, size_t errlen);

/* The bound address as "host:port" (the real port when 0 was asked for). */
const char *httpd_address(const struct httpd_server *srv);

/*
 * Stops accepting, wakes connections blocked reading, and waits up to
 * wait_ms for running handlers to finish. Returns 0 and frees the server
 * when all finished; -1 when some are still running (the server is then
 * left allocated for them, and the caller must not free its ctx either).
 */
int httpd_stop(struct httpd_server *srv, unsigned wait_ms);

#endif
