/*
 * identity.c - extracts and checks the requesting user's identity headers
 * (see identity.h).
 */
#include <ctype.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "identity.h"
#include "log.h"

/* PostgreSQL truncates longer role names (NAMEDATALEN - 1), which could
 * make two emails one role: refuse them instead. */
#define ROLE_NAME_MAX 63
#define TOKEN_MAX 16384

#define MSG_UNAUTHENTICATED "Authentication required: this resource needs the user's identity."

/*
 * A header value without surrounding blanks: the value itself when it has
 * none (as nginx and Apache pass them), else a trimmed copy in *copy.
 * NULL if absent or blank, or if the copy cannot be made.
 */
static const char *
trimmed(const char *value, char **copy)
{
	const char *end;

	*copy = NULL;
	if (value == NULL)
		return NULL;
	while (*value == ' ' || *value == '\t')
		value++;
	end = value + strlen(value);
	while (end > value && (end[-1] == ' ' || end[-1] == '\t'))
		end--;
	if (end == value)
		return NULL;
	if (*end == '\0')
		return value;
	*copy = strndup(value, (size_t)(end - value));
	return *copy;
}

static bool
is_printable_ascii(const char *s)
{
	for (; *s; s++) {
		if ((unsigned char)*s < 0x21 || (unsigned char)*s > 0x7e)
			return false;
	}
	return true;
}

/* Takes one identity header: present once, not blank. */
static int
take_header(const struct header_lookup *h, const char **out, char **copy, struct lb_error *err)
{
	*out = NULL;
	*copy = NULL;
	if (h->count > 1)
		return lb_error_set(err, LB_ERR_BAD_REQUEST, "An identity header was sent more than once.",
				    "header %s repeated %d times", h->name, h->count);
	*out = trimmed(h->value, copy);
	if (*out == NULL)
		return lb_error_set(err, LB_ERR_UNAUTHENTICATED, MSG_UNAUTHENTICATED, "header %s missing or blank",
				    h->name);
	return 0;
}

static int
check_values(const struct request_identity *ri, struct lb_error *err)
{
	size_t elen = strlen(ri->email);

	if (elen > ROLE_NAME_MAX || !is_printable_ascii(ri->email) || strchr(ri->email, '@') == NULL)
		return lb_error_set(err, LB_ERR_UNAUTHENTICATED, MSG_UNAUTHENTICATED,
				    "email header is not a usable role name (%zu bytes)", elen);
	if (strlen(ri->token) > TOKEN_MAX || !is_printable_ascii(ri->token))
		return lb_error_set(err, LB_ERR_UNAUTHENTICATED, MSG_UNAUTHENTICATED,
				    "access token header malformed");
	return 0;
}

/* Development mode without user headers: serve as the SP, warn once. */
static void
warn_development_fallback(void)
{
	static atomic_bool warned = false;

	if (!atomic_exchange(&warned, true))
		log_warn("development mode: on-behalf-of-user request without identity headers served as the "
			 "service principal; never enable identity.development_mode in production");
}

int
identity_from_request(const struct lb_config *cfg, const struct http_request *req, enum auth_mode mode,
		      struct request_identity *out, struct lb_error *err)
{
	struct header_lookup h[2] = { { .name = cfg->email_header }, { .name = cfg->token_header } };

	memset(out, 0, sizeof(*out));
	if (mode == AUTH_SERVICE_PRINCIPAL) {
		identity_sp(&out->id);
		return 0;
	}
	request_headers(req, h, 2);
	if (cfg->development_mode && h[0].count == 0 && h[1].count == 0) {
		warn_development_fallback();
		identity_sp(&out->id);
		out->development_fallback = true;
		return 0;
	}
	if (take_header(&h[0], &out->email, &out->email_copy, err) != 0 ||
	    take_header(&h[1], &out->token, &out->token_copy, err) != 0 || check_values(out, err) != 0) {
		request_identity_free(out);
		return -1;
	}
	identity_user(&out->id, out->email, out->token);
	return 0;
}

void
request_identity_free(struct request_identity *ri)
{
	free(ri->email_copy);
	if (ri->token_copy != NULL) {
		OPENSSL_cleanse(ri->token_copy, strlen(ri->token_copy));
		free(ri->token_copy);
	}
	memset(ri, 0, sizeof(*ri));
}
