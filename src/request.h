/*
 * request.h - the HTTP request and response as the worker sees them,
 * independent of FastCGI, so the request path is testable and the process
 * model (threads, CGI) only has to fill and send these.
 */
#ifndef LB_REQUEST_H
#define LB_REQUEST_H

#include <stddef.h>
#include <stdio.h>
#include <fcgiapp.h>

#include "error.h"
#include "strbuf.h"

#define REQUEST_ID_MAX 64

struct http_request {
	const char *method;
	char *path;               /* raw request path, no query string (owned) */
	const char *query;        /* raw query string, "" if none */
	const char *content_type; /* NULL if absent */
	long content_length;      /* -1 if absent */
	char *body;               /* NUL-terminated copy of the body, NULL if none (owned) */
	size_t body_len;
	char request_id[REQUEST_ID_MAX + 1];
	/* The CGI-style "NAME=value" parameters, NULL-terminated (FastCGI
	 * params or environ); not owned. NULL: none. */
	char **params;
};

struct http_response {
	int status;
	struct strbuf headers;    /* extra "Name: value\r\n" lines */
	struct strbuf body;       /* JSON, unless content_type says otherwise */
	const char *content_type; /* static text; NULL: application/json */
};

/* A CGI-style parameter ("REMOTE_ADDR"): its first value, NULL if absent. */
const char *request_param(const struct http_request *req, const char *name);
/*
 * Request headers by their HTTP names ("X-Forwarded-Email"), found in one
 * pass over the parameters: each one's first value, NULL if absent, and
 * how many times it reached us (a header sent twice, in any letter case,
 * is two parameters).
 */
struct header_lookup {
	const char *name;	/* in: the HTTP name */
	const char *value;	/* out: the first value, NULL if absent */
	int count;		/* out: how many times it reached us */
};
void request_headers(const struct http_request *req, struct header_lookup *h, size_t n);

/*
 * Fills req from a FastCGI request: path from REQUEST_URI (or SCRIPT_NAME +
 * PATH_INFO), reads a body of at most max_body bytes (LB_ERR_PAYLOAD_TOO_LARGE
 * beyond it, judged on CONTENT_LENGTH before reading), takes X-Request-Id if
 * it is sane or generates one.
 */
int request_from_fcgx(FCGX_Request *fcgx, long max_body, struct http_request *req,
		      struct lb_error *err);
/* The same for CGI: the parameters are envp (environ), the body is read
 * from `in` (stdin). */
int request_from_cgi(char **envp, FILE *in, long max_body, struct http_request *req,
		     struct lb_error *err);
void request_free(struct http_request *req);

void response_init(struct http_response *resp);
void response_add_header(struct http_response *resp, const char *name, const char *value);
int response_send_fcgx(FCGX_Request *fcgx, const struct http_response *resp);
/* Writes the response as CGI output ("Status: ..." and headers, a blank
 * line, the body) and flushes `out`. */
int response_send_cgi(FILE *out, const struct http_response *resp);
void response_free(struct http_response *resp);

/* A fresh request id, unique across the processes and threads of a host
 * (32 hex chars, not a secret). buf has REQUEST_ID_MAX+1 bytes. */
void request_generate_id(char *buf);

#endif
