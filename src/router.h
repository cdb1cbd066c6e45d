/*
 * router.h - matches a request's method and path to a configured route.
 *
 * The path is the request path as received (percent-encoded, no query
 * string). It is split on '/', and each segment is percent-decoded exactly
 * once before comparison; "." and ".." segments, empty segments inside the
 * path, and encoded NUL bytes never match. A trailing '/' is not significant.
 */
#ifndef LB_ROUTER_H
#define LB_ROUTER_H

#include <stddef.h>

#include "config.h"
#include "strbuf.h"

enum router_status { ROUTER_MATCH = 0, ROUTER_NOT_FOUND, ROUTER_METHOD_NOT_ALLOWED };

struct route_match {
	const struct route *route;
	/* path_values[i]: decoded value for route->params[i] if it is a path
	 * parameter, else NULL. Owned; freed by route_match_free. */
	char **path_values;
};

/*
 * On ROUTER_METHOD_NOT_ALLOWED, `allow` (may be NULL) receives the methods
 * that the path does accept, comma-separated ("GET, POST").
 */
enum router_status router_match(const struct lb_config *cfg, const char *method,
				const char *path, struct route_match *out, struct strbuf *allow);
void route_match_free(struct route_match *m);

/* url_decode() is in textfmt.h. */

#endif
