/*
 * router.c - matches method + request path against the configured routes.
 *
 * The request path is split and percent-decoded once, into one buffer, before
 * any route is looked at; comparing a route is then a walk over segment
 * lengths and bytes, with no allocation unless the route wins. A linear scan
 * over cfg->routes is enough for the route counts a config holds.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "router.h"
#include "textfmt.h"

/* One decoded segment of the request path. */
struct decoded_segment {
	const char *text;      /* NUL-terminated, inside the decoded buffer */
	size_t len;
};

/* Room on the stack for the usual path; longer ones are allocated. */
#define INLINE_PATH_BYTES 256
#define INLINE_SEGMENTS 16

/* The request path, decoded: segments point into `buf`, and `buf` and
 * `segs` into the inline arrays when the path fits them. */
struct decoded_path {
	char *buf;
	struct decoded_segment *segs;
	size_t nsegs;
	char inline_buf[INLINE_PATH_BYTES];
	struct decoded_segment inline_segs[INLINE_SEGMENTS];
};

static void
decoded_path_free(struct decoded_path *dp)
{
	if (dp->buf != dp->inline_buf)
		free(dp->buf);
	if (dp->segs != dp->inline_segs)
		free(dp->segs);
	dp->buf = NULL;
	dp->segs = NULL;
	dp->nsegs = 0;
}

static bool
is_dot_segment(const struct decoded_segment *s)
{
	return (s->len == 1 && s->text[0] == '.') ||
	    (s->len == 2 && s->text[0] == '.' && s->text[1] == '.');
}

/*
 * Splits an absolute request path into decoded segments. "/" has none. One
 * trailing '/' is dropped; any other empty segment, a dot segment (also when
 * encoded, "%2e%2e") or a bad escape makes the path unroutable (-1).
 */
static int
decode_path(const char *path, struct decoded_path *dp)
{
	size_t len, n, start, i, off = 0;

	dp->buf = NULL;
	dp->segs = NULL;
	dp->nsegs = 0;
	if (path == NULL || path[0] != '/')
		return -1;
	path++;
	len = strlen(path);
	if (len > 1 && path[len - 1] == '/')
		len--;      /* "/a/" is "/a"; "//" stays an empty segment */
	if (len == 0)
		return 0;

	n = 1;
	for (i = 0; i < len; i++)
		if (path[i] == '/')
			n++;
	dp->segs = n <= INLINE_SEGMENTS ? dp->inline_segs : calloc(n, sizeof(*dp->segs));
	/* Each segment decodes to at most its own length plus a NUL. */
	dp->buf = len < INLINE_PATH_BYTES ? dp->inline_buf : malloc(len + 1);
	if (dp->segs == NULL || dp->buf == NULL)
		goto fail;

	start = 0;
	for (i = 0; i <= len; i++) {
		struct decoded_segment *s;
		long dlen;

		if (i < len && path[i] != '/')
			continue;
		if (i == start)
			goto fail;      /* empty segment: "//" */
		dlen = url_decode_into(dp->buf + off, path + start, i - start, 0);
		if (dlen < 0)
			goto fail;
		s = &dp->segs[dp->nsegs++];
		s->text = dp->buf + off;
		s->len = (size_t)dlen;
		if (is_dot_segment(s))
			goto fail;
		off += (size_t)dlen + 1;
		start = i + 1;
	}
	return 0;

fail:
	decoded_path_free(dp);
	return -1;
}

static bool
route_matches_path(const struct route *r, const struct decoded_path *dp)
{
	if (r->nsegments != dp->nsegs)
		return false;
	for (size_t i = 0; i < dp->nsegs; i++) {
		const struct path_segment *ps = &r->segments[i];
		const struct decoded_segment *s = &dp->segs[i];

		if (ps->literal != NULL) {
			/* s->text holds no NUL, so this is an exact comparison. */
			if (strncmp(ps->literal, s->text, s->len) != 0 ||
			    ps->literal[s->len] != '\0')
				return false;
		} else if (ps->param < 0 || (size_t)ps->param >= r->nparams) {
			return false;   /* a broken route never matches */
		}
	}
	return true;
}

/* Copies the captured path parameters of the winning route. */
static int
capture_values(const struct route *r, const struct decoded_path *dp, struct route_match *out)
{
	char **values;

	values = calloc(r->nparams ? r->nparams : 1, sizeof(*values));
	if (values == NULL)
		return -1;
	for (size_t i = 0; i < dp->nsegs; i++) {
		const struct path_segment *ps = &r->segments[i];

		if (ps->literal != NULL)
			continue;
		free(values[ps->param]);
		values[ps->param] = strdup(dp->segs[i].text);
		if (values[ps->param] == NULL) {
			for (size_t j = 0; j < r->nparams; j++)
				free(values[j]);
			free(values);
			return -1;
		}
	}
	out->route = r;
	out->path_values = values;
	return 0;
}

/* "GET, POST": the distinct methods of the routes whose path matches. */
static void
list_allowed(const struct lb_config *cfg, const struct decoded_path *dp, struct strbuf *allow)
{
	bool first = true;

	strbuf_reset(allow);
	for (size_t i = 0; i < cfg->nroutes; i++) {
		const struct route *r = &cfg->routes[i];
		bool seen = false;

		if (!route_matches_path(r, dp))
			continue;
		for (size_t j = 0; j < i && !seen; j++)
			seen = strcmp(cfg->routes[j].method, r->method) == 0 &&
			    route_matches_path(&cfg->routes[j], dp);
		if (seen)
			continue;
		if (!first)
			strbuf_append_str(allow, ", ");
		strbuf_append_str(allow, r->method);
		first = false;
	}
}

/*
 * The first route, in config order, whose path and method both match wins.
 * An allocation failure while capturing parameters reports ROUTER_NOT_FOUND
 * (the enum has no error status); it cannot leave `out` half filled.
 */
enum router_status
router_match(const struct lb_config *cfg, const char *method, const char *path,
	     struct route_match *out, struct strbuf *allow)
{
	struct decoded_path dp;
	enum router_status status = ROUTER_NOT_FOUND;
	bool path_matched = false;

	out->route = NULL;
	out->path_values = NULL;
	if (cfg == NULL || method == NULL || decode_path(path, &dp) < 0)
		return ROUTER_NOT_FOUND;

	for (size_t i = 0; i < cfg->nroutes; i++) {
		const struct route *r = &cfg->routes[i];

		if (!route_matches_path(r, &dp))
			continue;
		if (strcmp(r->method, method) == 0) {
			status = capture_values(r, &dp, out) == 0 ?
			    ROUTER_MATCH : ROUTER_NOT_FOUND;
			path_matched = false;
			break;
		}
		path_matched = true;
	}
	if (path_matched) {
		status = ROUTER_METHOD_NOT_ALLOWED;
		if (allow != NULL)
			list_allowed(cfg, &dp, allow);
	}
	decoded_path_free(&dp);
	return status;
}

void
route_match_free(struct route_match *m)
{
	if (m == NULL)
		return;
	if (m->path_values != NULL && m->route != NULL) {
		for (size_t i = 0; i < m->route->nparams; i++)
			free(m->path_values[i]);
	}
	free(m->path_values);
	m->path_values = NULL;
	m->route = NULL;
}
