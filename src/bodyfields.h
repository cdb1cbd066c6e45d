/*
 * bodyfields.h - the fields a route declares, read from a JSON object body.
 *
 * The body is parsed with yajl's event parser and only the top-level fields
 * the route declares (params with in=body) are kept: the rest of the body
 * is checked as JSON and dropped as it is read. A tree of the whole body
 * (yajl_tree) took up to 45 times its size (a 1 MiB array of small numbers:
 * 48 MB, per request, while it ran); this keeps about the size of the
 * declared fields' values.
 *
 * The caller scans the text first (jsonscan.h: depth, comments, NULs).
 */
#ifndef LB_BODYFIELDS_H
#define LB_BODYFIELDS_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

enum body_kind { BODY_ABSENT = 0, BODY_NULL, BODY_STRING, BODY_NUMBER, BODY_TRUE, BODY_FALSE,
		 BODY_CONTAINER };

/* One declared field's value, as the body first gave it. */
struct body_value {
	enum body_kind kind;
	bool repeated;	/* the body has the field more than once */
	char *text;	/* BODY_STRING: the string, decoded; BODY_NUMBER: as written (not for json) */
	char *json;	/* a json parameter's value (not null) written back compactly */
	size_t json_len;
};

enum body_verdict {
	BODY_OK = 0,
	BODY_INVALID,		/* not JSON */
	BODY_NOT_OBJECT,	/* JSON, but not an object */
	BODY_NO_MEMORY,
	BODY_REWRITE_FAILED	/* a json parameter's value could not be written back */
};

/*
 * Reads body[0..len) into values[i] for each route->params[i] with in=body
 * (the others stay BODY_ABSENT); values has route->nparams entries, zeroed.
 * On any verdict but BODY_OK the values are freed and zeroed again.
 */
enum body_verdict body_fields_read(const char *body, size_t len, const struct route *route,
				   struct body_value *values);
void body_values_free(struct body_value *values, size_t n);

#endif
