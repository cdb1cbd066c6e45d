/*
 * params.h - turns request values into typed, validated SQL parameters.
 *
 * Values come from the matched path, the query string and a JSON object
 * body. Each is checked against its definition (type, required, default,
 * min, max, max_length) and converted to the text form PostgreSQL parses
 * for the parameter's type; the worker binds them as parameters of the
 * route's prepared statement, never by splicing them into SQL. A missing, ill-typed or repeated
 * (?id=1&id=2) parameter is LB_ERR_INVALID_PARAM with a message naming it.
 * Query parameters the route does not define are ignored.
 */
#ifndef LB_PARAMS_H
#define LB_PARAMS_H

#include <stddef.h>

#include "config.h"
#include "error.h"

struct bound_params {
	char **values;   /* values[i] is $i+1 as text; NULL means SQL NULL */
	size_t count;
};

/*
 * body may be NULL (no body). path_values is route_match.path_values.
 * The body, when the route has body parameters, must be a JSON object.
 */
int params_bind(const struct route *route, char *const *path_values, const char *query_string,
		const char *body, size_t body_len, struct bound_params *out, struct lb_error *err);
void bound_params_free(struct bound_params *bp);

/* Checks and normalises one value given as text (path or query). Exposed for
 * the unit tests. Returns a new string or NULL with err naming `def->name`. */
char *params_convert_text(const struct param_def *def, const char *text, struct lb_error *err);

/* Whether a route has any parameter with in=body. */
int route_has_body_params(const struct route *route);

#endif
