/*
 * error.h - the one error type every module returns.
 *
 * Modules never print or send errors themselves: they fill a struct lb_error
 * and return -1. The responder (responder.h) is the single place that turns
 * an lb_error into an HTTP status and a JSON body; the worker logs `detail`.
 *
 * `message` is public (goes to the client) and must be generic; `detail` is
 * for the log only and must never contain a token, secret or credential.
 */
#ifndef LB_ERROR_H
#define LB_ERROR_H

#include <stdarg.h>

enum lb_errcode {
	LB_OK = 0,
	LB_ERR_BAD_REQUEST,         /* 400 bad_request: malformed input */
	LB_ERR_INVALID_PARAM,       /* 400 invalid_parameter: names the parameter */
	LB_ERR_UNAUTHENTICATED,     /* 401 unauthenticated: identity missing/unproven */
	LB_ERR_FORBIDDEN,           /* 403 forbidden: RLS/grants refused (42501) */
	LB_ERR_ROLE_MISSING,        /* 403 role_missing: login refused (28xxx) */
	LB_ERR_NOT_FOUND,           /* 404 not_found: no route, or no row for result=one */
	LB_ERR_METHOD_NOT_ALLOWED,  /* 405 method_not_allowed (responder adds Allow) */
	LB_ERR_CONFLICT,            /* 409 conflict: unique violation (23505) */
	LB_ERR_PAYLOAD_TOO_LARGE,   /* 413 payload_too_large */
	LB_ERR_UNSUPPORTED_MEDIA,   /* 415 unsupported_media_type */
	LB_ERR_INTERNAL,            /* 500 internal_error */
	LB_ERR_NOT_IMPLEMENTED,     /* 501 not_implemented */
	LB_ERR_UPSTREAM,            /* 502 upstream_error: workspace API refused us permanently */
	LB_ERR_UNAVAILABLE,         /* 503 unavailable: DB/workspace unreachable, pool exhausted */
	LB_ERR_TIMEOUT,             /* 504 timeout: statement timeout (57014) */
	LB_ERR__COUNT
};

/* The public message of LB_ERR_ROLE_MISSING, shared by every module that
 * can detect a refused login; it points to the README section on roles. */
#define LB_MSG_ROLE_MISSING \
	"The database refused the login: the user needs a Postgres role in " \
	"Lakebase (see README, \"Creating Lakebase roles\")."

/* Whether a failure may succeed if tried again (drives retries). */
enum lb_transience {
	LB_PERMANENT = 0,
	LB_TRANSIENT = 1
};

struct lb_error {
	enum lb_errcode code;
	enum lb_transience transience;
	int retry_after_s;          /* >0: send Retry-After on 503 */
	char sqlstate[6];           /* "" when not from PostgreSQL */
	char message[256];          /* public, generic */
	char detail[512];           /* log only; never a secret */
};

/* Sets code, a public message and a log-only detail (printf-style). Returns -1
 * so callers can write `return lb_error_set(err, ...);`. err may be NULL. */
int lb_error_set(struct lb_error *err, enum lb_errcode code, const char *message,
		 const char *detail_fmt, ...) __attribute__((format(printf, 4, 5)));
void lb_error_clear(struct lb_error *err);
/* Clears err and fills every field (a fixed detail, transience, and for
 * LB_ERR_UNAVAILABLE a 5 s Retry-After), so nothing stale leaks through.
 * Returns -1. */
int lb_error_fail(struct lb_error *err, enum lb_errcode code, enum lb_transience transience,
		  const char *message, const char *detail);

/* Stable code string for the JSON body ("invalid_parameter", ...). */
const char *lb_errcode_name(enum lb_errcode code);
/* HTTP status for an error code. */
int lb_errcode_http_status(enum lb_errcode code);

#endif
