/*
 * error.c - lb_error construction and the code -> HTTP status table.
 */
#include <stdio.h>
#include <string.h>

#include "error.h"

static const struct {
	const char *name;
	int status;
} errcode_table[LB_ERR__COUNT] = {
	[LB_OK] = { "ok", 200 },
	[LB_ERR_BAD_REQUEST] = { "bad_request", 400 },
	[LB_ERR_INVALID_PARAM] = { "invalid_parameter", 400 },
	[LB_ERR_UNAUTHENTICATED] = { "unauthenticated", 401 },
	[LB_ERR_FORBIDDEN] = { "forbidden", 403 },
	[LB_ERR_ROLE_MISSING] = { "role_missing", 403 },
	[LB_ERR_NOT_FOUND] = { "not_found", 404 },
	[LB_ERR_METHOD_NOT_ALLOWED] = { "method_not_allowed", 405 },
	[LB_ERR_CONFLICT] = { "conflict", 409 },
	[LB_ERR_PAYLOAD_TOO_LARGE] = { "payload_too_large", 413 },
	[LB_ERR_UNSUPPORTED_MEDIA] = { "unsupported_media_type", 415 },
	[LB_ERR_INTERNAL] = { "internal_error", 500 },
	[LB_ERR_NOT_IMPLEMENTED] = { "not_implemented", 501 },
	[LB_ERR_UPSTREAM] = { "upstream_error", 502 },
	[LB_ERR_UNAVAILABLE] = { "unavailable", 503 },
	[LB_ERR_TIMEOUT] = { "timeout", 504 },
};

int
lb_error_set(struct lb_error *err, enum lb_errcode code, const char *message,
	     const char *detail_fmt, ...)
{
	va_list ap;

	if (err == NULL)
		return -1;
	err->code = code;
	snprintf(err->message, sizeof(err->message), "%s", message ? message : "");
	if (detail_fmt != NULL) {
		va_start(ap, detail_fmt);
		vsnprintf(err->detail, sizeof(err->detail), detail_fmt, ap);
		va_end(ap);
	} else {
		err->detail[0] = '\0';
	}
	return -1;
}

void
lb_error_clear(struct lb_error *err)
{
	if (err != NULL)
		memset(err, 0, sizeof(*err));
}

int
lb_error_fail(struct lb_error *err, enum lb_errcode code, enum lb_transience transience,
	      const char *message, const char *detail)
{
	if (err == NULL)
		return -1;
	lb_error_clear(err);
	lb_error_set(err, code, message, "%s", detail);
	err->transience = transience;
	if (code == LB_ERR_UNAVAILABLE)
		err->retry_after_s = 5;
	return -1;
}

const char *
lb_errcode_name(enum lb_errcode code)
{
	if ((int)code < 0 || code >= LB_ERR__COUNT)
		return "internal_error";
	return errcode_table[code].name;
}

int
lb_errcode_http_status(enum lb_errcode code)
{
	if ((int)code < 0 || code >= LB_ERR__COUNT)
		return 500;
	return errcode_table[code].status;
}
