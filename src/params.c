/*
 * params.c - binds a route's parameters from the path, the query string and
 * a JSON object body, and converts each to the text PostgreSQL parses for
 * its type.
 *
 * Every value is validated here, strictly, so the database sees only
 * well-formed input and the client gets a 400 naming the parameter instead
 * of a database error. Values reach SQL only as bound parameters.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>

#include <yajl/yajl_parse.h>

#include "bodyfields.h"
#include "jsonscan.h"
#include "params.h"
#include "textfmt.h"

/*
 * Deepest nesting accepted in a request body: below yajl_gen's own limit
 * (128), which writes a json parameter's value back.
 */
#define BODY_MAX_DEPTH 64

static int
out_of_memory(struct lb_error *err)
{
	return lb_error_set(err, LB_ERR_INTERNAL, "Out of memory.", "params: allocation failed");
}

/* "Parameter 'name' <what>": the one shape of every parameter message. */
static int
invalid_param(struct lb_error *err, const struct param_def *def, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int
invalid_param(struct lb_error *err, const struct param_def *def, const char *fmt, ...)
{
	char what[200], message[sizeof(err->message)];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	snprintf(message, sizeof(message), "Parameter '%s' %s", def->name, what);
	return lb_error_set(err, LB_ERR_INVALID_PARAM, message, "invalid parameter %s", def->name);
}

static const char *
type_expectation(enum param_type type)
{
	switch (type) {
	case PT_TEXT:
		return "must be a string.";
	case PT_INT:
	case PT_BIGINT:
		return "must be an integer.";
	case PT_NUMERIC:
		return "must be a number.";
	case PT_BOOL:
		return "must be true or false.";
	case PT_UUID:
		return "must be a UUID.";
	case PT_TIMESTAMPTZ:
		return "must be an RFC 3339 timestamp.";
	case PT_JSON:
		return "must be valid JSON.";
	}
	return "has an unsupported type.";
}

static int
wrong_type(struct lb_error *err, const struct param_def *def)
{
	return invalid_param(err, def, "%s", type_expectation(def->type));
}

/* Limits are compared as written in the config, exactly (textfmt.h). */
static int
check_min_max(const char *value, const struct param_def *def, struct lb_error *err)
{
	if (def->min != NULL && decimal_compare(value, def->min) < 0)
		return invalid_param(err, def, "must be at least %s.", def->min);
	if (def->max != NULL && decimal_compare(value, def->max) > 0)
		return invalid_param(err, def, "must be at most %s.", def->max);
	return 0;
}

/* ---- text conversions ---------------------------------------------------- */

static bool
is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* -?(0|[1-9][0-9]*): no '+', no spaces, no leading zeros. */
static bool
is_strict_integer(const char *s)
{
	if (*s == '-')
		s++;
	if (*s == '0')
		return s[1] == '\0';
	if (*s < '1' || *s > '9')
		return false;
	while (is_digit(*s))
		s++;
	return *s == '\0';
}

/* -?digits[.digits]([eE][+-]?digits)? */
static bool
is_numeric_text(const char *s)
{
	if (*s == '-')
		s++;
	if (!is_digit(*s))
		return false;
	while (is_digit(*s))
		s++;
	if (*s == '.') {
		s++;
		if (!is_digit(*s))
			return false;
		while (is_digit(*s))
			s++;
	}
	if (*s == 'e' || *s == 'E') {
		s++;
		if (*s == '+' || *s == '-')
			s++;
		if (!is_digit(*s))
			return false;
		while (is_digit(*s))
			s++;
	}
	return *s == '\0';
}

static char *
convert_integer(const struct param_def *def, const char *text, struct lb_error *err)
{
	long long v;
	char buf[1 + TEXT_UINT_MAX];	/* a sign and the digits */
	char *out;

	if (!is_strict_integer(text)) {
		wrong_type(err, def);
		return NULL;
	}
	errno = 0;
	v = strtoll(text, NULL, 10);
	if (errno == ERANGE) {
		if (text[0] == '-')
			invalid_param(err, def, "must be at least %lld.", LLONG_MIN);
		else
			invalid_param(err, def, "must be at most %lld.", LLONG_MAX);
		return NULL;
	}
	if (def->type == PT_INT && v < INT32_MIN) {
		invalid_param(err, def, "must be at least %ld.", (long)INT32_MIN);
		return NULL;
	}
	if (def->type == PT_INT && v > INT32_MAX) {
		invalid_param(err, def, "must be at most %ld.", (long)INT32_MAX);
		return NULL;
	}
	/* Canonical digits (no '+', no leading zeros), without a printf. */
	buf[0] = '-';
	text_uint(buf + (v < 0), v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v);
	if (check_min_max(buf, def, err) < 0)
		return NULL;
	out = strdup(buf);
	if (out == NULL)
		out_of_memory(err);
	return out;
}

static char *
convert_numeric(const struct param_def *def, const char *text, struct lb_error *err)
{
	char *out;

	if (!is_numeric_text(text)) {
		wrong_type(err, def);
		return NULL;
	}
	if (check_min_max(text, def, err) < 0)
		return NULL;
	out = strdup(text);
	if (out == NULL)
		out_of_memory(err);
	return out;
}

static char *
convert_bool(const struct param_def *def, const char *text, struct lb_error *err)
{
	const char *canonical;
	char *out;

	if (strcasecmp(text, "true") == 0)
		canonical = "true";
	else if (strcasecmp(text, "false") == 0)
		canonical = "false";
	else {
		wrong_type(err, def);
		return NULL;
	}
	out = strdup(canonical);
	if (out == NULL)
		out_of_memory(err);
	return out;
}

/* 8-4-4-4-12 hex digits, returned in lower case. */
static char *
convert_uuid(const struct param_def *def, const char *text, struct lb_error *err)
{
	char *out;

	if (!text_is_uuid(text)) {
		wrong_type(err, def);
		return NULL;
	}
	out = strdup(text);
	if (out == NULL) {
		out_of_memory(err);
		return NULL;
	}
	for (int i = 0; i < 36; i++)
		if (out[i] >= 'A' && out[i] <= 'F')
			out[i] = (char)(out[i] - 'A' + 'a');
	return out;
}

/* Longer timestamps are refused: PostgreSQL refuses fractions of more
 * than 128 digits, and microseconds are all it keeps. */
#define TIMESTAMPTZ_MAX_LEN 64
/* PostgreSQL's largest zone offset: 15:59 (hours above are 22009). */
#define TIMESTAMPTZ_MAX_OFFSET_HOURS 15

/* RFC 3339, as PostgreSQL's timestamptz input accepts it unambiguously. */
static bool
is_rfc3339(const char *s)
{
	size_t len = strlen(s);
	time_t t;

	if (len > TIMESTAMPTZ_MAX_LEN || parse_rfc3339(s, &t) != 0)
		return false;
	/* It ends in 'Z' or an offset "+HH:MM". */
	return s[len - 1] == 'Z' || s[len - 1] == 'z' ||
	       (s[len - 5] - '0') * 10 + (s[len - 4] - '0') <= TIMESTAMPTZ_MAX_OFFSET_HOURS;
}

static char *
convert_timestamptz(const struct param_def *def, const char *text, struct lb_error *err)
{
	char *out;

	if (!is_rfc3339(text)) {
		wrong_type(err, def);
		return NULL;
	}
	out = strdup(text);
	if (out == NULL)
		out_of_memory(err);
	return out;
}

/* Code points in strict UTF-8 without NUL, or -1 if it is not that. */
static long
utf8_count(const unsigned char *s, size_t len)
{
	size_t i = 0, n;
	long count = 0;

	while (i < len) {
		if (s[i] == 0 || (n = utf8_sequence_len(s + i, len - i)) == 0)
			return -1;
		i += n;
		count++;
	}
	return count;
}

static char *
convert_plain_text(const struct param_def *def, const char *text, struct lb_error *err)
{
	long chars = utf8_count((const unsigned char *)text, strlen(text));
	char *out;

	if (chars < 0) {
		invalid_param(err, def, "must be valid UTF-8 text.");
		return NULL;
	}
	if (def->max_length >= 0 && chars > def->max_length) {
		invalid_param(err, def, "is longer than %ld characters.", def->max_length);
		return NULL;
	}
	out = strdup(text);
	if (out == NULL)
		out_of_memory(err);
	return out;
}

/* ---- JSON validation (yajl's parser, no tree) ---------------------------- */

enum json_verdict { JSON_OK = 0, JSON_INVALID, JSON_NO_MEMORY };

/* Strict JSON (no comments, one value, nothing after it). */
static enum json_verdict
json_check(const char *text, size_t len)
{
	yajl_handle h;
	yajl_status st;

	h = yajl_alloc(NULL, NULL, NULL);
	if (h == NULL)
		return JSON_NO_MEMORY;
	yajl_config(h, yajl_allow_comments, 0);
	st = yajl_parse(h, (const unsigned char *)text, len);
	if (st == yajl_status_ok)
		st = yajl_complete_parse(h);
	yajl_free(h);
	return st == yajl_status_ok ? JSON_OK : JSON_INVALID;
}

static char *
convert_json_text(const struct param_def *def, const char *text, struct lb_error *err)
{
	size_t len = strlen(text);
	char *out;

	/* A "\u0000" is valid JSON here: it stays text, PostgreSQL decides. */
	switch (json_check(text, len)) {
	case JSON_OK:
		break;
	case JSON_NO_MEMORY:
		out_of_memory(err);
		return NULL;
	case JSON_INVALID:
		wrong_type(err, def);
		return NULL;
	}
	if (def->max_length >= 0 && len > (size_t)def->max_length) {
		invalid_param(err, def, "is longer than %ld bytes.", def->max_length);
		return NULL;
	}
	out = strdup(text);
	if (out == NULL)
		out_of_memory(err);
	return out;
}

char *
params_convert_text(const struct param_def *def, const char *text, struct lb_error *err)
{
	switch (def->type) {
	case PT_TEXT:
		return convert_plain_text(def, text, err);
	case PT_INT:
	case PT_BIGINT:
		return convert_integer(def, text, err);
	case PT_NUMERIC:
		return convert_numeric(def, text, err);
	case PT_BOOL:
		return convert_bool(def, text, err);
	case PT_UUID:
		return convert_uuid(def, text, err);
	case PT_TIMESTAMPTZ:
		return convert_timestamptz(def, text, err);
	case PT_JSON:
		return convert_json_text(def, text, err);
	}
	wrong_type(err, def);
	return NULL;
}

int
route_has_body_params(const struct route *route)
{
	for (size_t i = 0; i < route->nparams; i++)
		if (route->params[i].in == PARAM_IN_BODY)
			return 1;
	return 0;
}

/* ---- sources ------------------------------------------------------------- */

/* A parameter with no value: its default, else an error if required, else NULL. */
static int
bind_missing(const struct param_def *def, char **slot, struct lb_error *err)
{
	*slot = NULL;
	if (def->default_text != NULL) {
		*slot = strdup(def->default_text);
		return *slot != NULL ? 0 : out_of_memory(err);
	}
	if (def->required)
		return invalid_param(err, def, "is required.");
	return 0;
}

static int
bind_text(const struct param_def *def, const char *text, char **slot, struct lb_error *err)
{
	if (text == NULL)
		return bind_missing(def, slot, err);
	*slot = params_convert_text(def, text, err);
	return *slot != NULL ? 0 : -1;
}

static ssize_t
find_param(const struct route *route, enum param_source in, const char *name, size_t len)
{
	for (size_t i = 0; i < route->nparams; i++) {
		const struct param_def *def = &route->params[i];

		if (def->in == in && strncmp(def->name, name, len) == 0 && def->name[len] == '\0')
			return (ssize_t)i;
	}
	return -1;
}

/* The query parameter a raw key names, or -1. Most keys need no decoding. */
static ssize_t
find_query_param(const struct route *route, const char *key, size_t len)
{
	char *decoded;
	ssize_t idx;

	if (memchr(key, '%', len) == NULL && memchr(key, '+', len) == NULL)
		return find_param(route, PARAM_IN_QUERY, key, len);
	decoded = url_decode(key, len, 1);
	if (decoded == NULL)
		return -1;      /* cannot name a parameter */
	idx = find_param(route, PARAM_IN_QUERY, decoded, strlen(decoded));
	free(decoded);
	return idx;
}

/*
 * Splits the query string on '&' and key/value on the first '='; a key
 * without '=' has the empty value. values[i] receives the decoded value of
 * route->params[i]. Keys the route does not define are ignored.
 */
static int
collect_query(const struct route *route, const char *qs, char **values, struct lb_error *err)
{
	const char *p = qs;

	while (p != NULL && *p != '\0') {
		const char *amp = strchr(p, '&');
		size_t plen = amp ? (size_t)(amp - p) : strlen(p);
		const char *eq = memchr(p, '=', plen);
		size_t klen = eq ? (size_t)(eq - p) : plen;
		const struct param_def *def;
		ssize_t idx;

		idx = plen > 0 ? find_query_param(route, p, klen) : -1;
		if (idx >= 0) {
			def = &route->params[idx];
			if (values[idx] != NULL)
				return invalid_param(err, def, "is repeated.");
			values[idx] = eq ? url_decode(eq + 1, plen - klen - 1, 1) : strdup("");
			if (values[idx] == NULL)
				return invalid_param(err, def, "is not correctly percent-encoded.");
		}
		p = amp ? amp + 1 : NULL;
	}
	return 0;
}

static int
invalid_body(struct lb_error *err)
{
	return lb_error_set(err, LB_ERR_BAD_REQUEST, "The request body is not valid JSON.",
			    "body is not valid JSON");
}

static int
parse_body(const char *body, size_t len, const struct route *route, struct body_value *values,
	   struct lb_error *err)
{
	if (body == NULL || len == 0)
		return lb_error_set(err, LB_ERR_BAD_REQUEST, "The request body must be a JSON object.",
				    "empty body");
	/* Strict: no comments, no NUL in any form (field names are C strings). */
	switch (jsonscan(body, len, BODY_MAX_DEPTH, 0, NULL)) {
	case JSONSCAN_OK:
		break;
	case JSONSCAN_TOO_DEEP:
		return lb_error_set(err, LB_ERR_BAD_REQUEST, "The request body is nested too deeply.",
				    "body deeper than %d levels", BODY_MAX_DEPTH);
	case JSONSCAN_NUL_ESCAPE:
		return lb_error_set(err, LB_ERR_BAD_REQUEST,
				    "The request body must not contain NUL characters.",
				    "\\u0000 in body");
	case JSONSCAN_LONE_SURROGATE:
		return lb_error_set(err, LB_ERR_BAD_REQUEST,
				    "The request body must be valid Unicode: a \\u escape is half a surrogate pair.",
				    "lone surrogate escape in body");
	case JSONSCAN_COMMENT:
	case JSONSCAN_RAW_NUL:
		return invalid_body(err);
	}
	switch (body_fields_read(body, len, route, values)) {
	case BODY_OK:
		return 0;
	case BODY_INVALID:
		return invalid_body(err);
	case BODY_NOT_OBJECT:
		return lb_error_set(err, LB_ERR_BAD_REQUEST, "The request body must be a JSON object.",
				    "body is JSON but not an object");
	case BODY_NO_MEMORY:
		return out_of_memory(err);
	case BODY_REWRITE_FAILED:
		break;
	}
	return lb_error_set(err, LB_ERR_INTERNAL, "The request could not be processed.",
			    "re-serialising a json body parameter failed");
}

/* A json parameter's value, as the body's reader wrote it back. */
static int
bind_body_json(const struct param_def *def, struct body_value *v, char **slot, struct lb_error *err)
{
	if (def->max_length >= 0 && v->json_len > (size_t)def->max_length)
		return invalid_param(err, def, "is longer than %ld bytes.", def->max_length);
	*slot = v->json;	/* the value's text moves to the slot */
	v->json = NULL;
	return 0;
}

static int
bind_body(const struct param_def *def, struct body_value *v, char **slot, struct lb_error *err)
{
	*slot = NULL;
	if (v->repeated)
		return invalid_param(err, def, "is repeated.");
	if (v->kind == BODY_ABSENT)
		return bind_missing(def, slot, err);
	if (v->kind == BODY_NULL)
		return def->required ? invalid_param(err, def, "is required.") : 0;

	switch (def->type) {
	case PT_TEXT:
	case PT_UUID:
	case PT_TIMESTAMPTZ:
		if (v->kind != BODY_STRING)
			return wrong_type(err, def);
		return bind_text(def, v->text, slot, err);
	case PT_INT:
	case PT_BIGINT:
		/* The number's own text: range errors then name the limit. */
		if (v->kind != BODY_NUMBER || !is_strict_integer(v->text))
			return wrong_type(err, def);
		return bind_text(def, v->text, slot, err);
	case PT_NUMERIC:
		if (v->kind != BODY_NUMBER && v->kind != BODY_STRING)
			return wrong_type(err, def);
		return bind_text(def, v->text, slot, err);
	case PT_BOOL:
		if (v->kind != BODY_TRUE && v->kind != BODY_FALSE)
			return wrong_type(err, def);
		*slot = strdup(v->kind == BODY_TRUE ? "true" : "false");
		return *slot != NULL ? 0 : out_of_memory(err);
	case PT_JSON:
		return bind_body_json(def, v, slot, err);
	}
	return wrong_type(err, def);
}

/* Frees each of count values, and the array unless it is `inline_array`. */
static void
free_values(char **values, size_t count, char **inline_array)
{
	if (values == NULL)
		return;
	for (size_t i = 0; i < count; i++)
		free(values[i]);
	if (values != inline_array)
		free(values);
}

/* A route's query values are collected on the stack when they fit. */
#define INLINE_QUERY_VALUES 16

/*
 * Errors are reported in a fixed order: the query string (repeats, bad
 * escapes), the body as a whole, then each parameter in $n order.
 */
int
params_bind(const struct route *route, char *const *path_values, const char *query_string,
	    const char *body, size_t body_len, struct bound_params *out, struct lb_error *err)
{
	size_t n = route->nparams;
	char *query_inline[INLINE_QUERY_VALUES] = { NULL };
	char **query = n <= INLINE_QUERY_VALUES ? query_inline : calloc(n, sizeof(*query));
	bool has_body = route_has_body_params(route);
	struct body_value *body_values = has_body ? calloc(n, sizeof(*body_values)) : NULL;
	int rc = -1;

	out->count = 0;
	out->values = calloc(n ? n : 1, sizeof(*out->values));
	if (out->values == NULL || query == NULL || (has_body && body_values == NULL)) {
		out_of_memory(err);
		goto done;
	}
	out->count = n;
	if (collect_query(route, query_string, query, err) < 0)
		goto done;
	if (has_body && parse_body(body, body_len, route, body_values, err) < 0)
		goto done;

	for (size_t i = 0; i < n; i++) {
		const struct param_def *def = &route->params[i];

		switch (def->in) {
		case PARAM_IN_PATH:
			rc = bind_text(def, path_values ? path_values[i] : NULL, &out->values[i], err);
			break;
		case PARAM_IN_QUERY:
			rc = bind_text(def, query[i], &out->values[i], err);
			break;
		case PARAM_IN_BODY:
			rc = bind_body(def, &body_values[i], &out->values[i], err);
			break;
		}
		if (rc < 0)
			goto done;
	}
	rc = 0;
done:
	free_values(query, n, query_inline);
	body_values_free(body_values, has_body ? n : 0);
	free(body_values);
	if (rc < 0)
		bound_params_free(out);
	return rc < 0 ? -1 : 0;
}

void
bound_params_free(struct bound_params *bp)
{
	if (bp == NULL)
		return;
	free_values(bp->values, bp->count, NULL);
	bp->values = NULL;
	bp->count = 0;
}
