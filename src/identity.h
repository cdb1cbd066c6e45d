/*
 * identity.h - who a request is.
 *
 * On an on-behalf-of-user route the user is named by the email header and
 * proven by the access-token header (names from the config). Both are
 * required: values are trimmed, empty counts as missing, and a header sent
 * twice is refused, since a proxy that appends instead of replacing would
 * otherwise let the client's copy win. There is no silent fallback to the
 * service principal (a privilege confusion, CWE-639) except in the
 * explicitly enabled development mode, which logs a warning once.
 */
#ifndef LB_IDENTITY_H
#define LB_IDENTITY_H

#include <stdbool.h>

#include "config.h"
#include "credential.h"
#include "error.h"
#include "request.h"

/*
 * The values point into the request's parameters, which outlive the
 * identity (it is freed before the request), or into the copies made when
 * a value had to be trimmed. The token is a secret: its copy is wiped on
 * free; the parameters are libfcgi's.
 */
struct request_identity {
	struct identity id;       /* email and token point at `email`/`token` */
	const char *email;
	const char *token;
	char *email_copy;         /* owned; NULL unless the email was trimmed */
	char *token_copy;         /* owned; NULL unless the token was trimmed */
	bool development_fallback; /* no user headers: served as the SP (dev mode) */
};

/*
 * Fills `out` for a route with `mode`. For on-behalf-of-user: a missing or
 * repeated header is LB_ERR_UNAUTHENTICATED (401) / LB_ERR_BAD_REQUEST.
 */
int identity_from_request(const struct lb_config *cfg, const struct http_request *req,
			  enum auth_mode mode, struct request_identity *out, struct lb_error *err);
void request_identity_free(struct request_identity *ri);

#endif
