/*
 * bodyfields.c - a JSON object body's declared fields, read with yajl's
 * event parser (see bodyfields.h). The reader follows the nesting: the top
 * object's keys name the field whose value comes next; a declared field's
 * scalar is kept, its container only noted, or for a json parameter
 * written back through a yajl_gen as it is read; everything else passes.
 */
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_gen.h>
#include <yajl/yajl_parse.h>

#include "bodyfields.h"

#define KEEP_GOING 1
#define STOP 0		/* yajl then ends the parse: r->failure says why */

struct reader {
	const struct route *route;
	struct body_value *values;
	size_t depth;		/* containers open; the top object's fields are at 1 */
	bool not_object;	/* the top value is not an object: the rest is only parsed */
	long field;		/* the declared field whose value comes next, or -1 */
	long capturing;		/* the json field being written back, or -1 */
	yajl_gen gen;		/* while capturing */
	enum body_verdict failure;
};

static long
declared_field(const struct route *route, const unsigned char *key, size_t len)
{
	for (size_t i = 0; i < route->nparams; i++) {
		const struct param_def *def = &route->params[i];

		if (def->in == PARAM_IN_BODY && strlen(def->name) == len && memcmp(def->name, key, len) == 0)
			return (long)i;
	}
	return -1;
}

static int
fail(struct reader *r, enum body_verdict why)
{
	r->failure = why;
	return STOP;
}

static int
gen_ok(struct reader *r, yajl_gen_status st)
{
	return st == yajl_gen_status_ok ? KEEP_GOING : fail(r, BODY_REWRITE_FAILED);
}

/* A json field's value starts: it is written back as it is read. */
static int
capture_begin(struct reader *r, long field)
{
	r->gen = yajl_gen_alloc(NULL);
	if (r->gen == NULL)
		return fail(r, BODY_NO_MEMORY);
	r->capturing = field;
	return KEEP_GOING;
}

/* The json field's value has ended: its text is the field's. */
static int
capture_end(struct reader *r)
{
	struct body_value *v = &r->values[r->capturing];
	const unsigned char *buf;
	size_t len;

	if (yajl_gen_get_buf(r->gen, &buf, &len) != yajl_gen_status_ok)
		return fail(r, BODY_REWRITE_FAILED);
	v->json = malloc(len + 1);
	if (v->json == NULL)
		return fail(r, BODY_NO_MEMORY);
	memcpy(v->json, buf, len);
	v->json[len] = '\0';
	v->json_len = len;
	yajl_gen_free(r->gen);
	r->gen = NULL;
	r->capturing = -1;
	return KEEP_GOING;
}

static int
gen_scalar(struct reader *r, enum body_kind kind, const char *text, size_t len)
{
	switch (kind) {
	case BODY_NULL:
		return gen_ok(r, yajl_gen_null(r->gen));
	case BODY_TRUE:
	case BODY_FALSE:
		return gen_ok(r, yajl_gen_bool(r->gen, kind == BODY_TRUE));
	case BODY_NUMBER:
		return gen_ok(r, yajl_gen_number(r->gen, text, len));
	default:
		return gen_ok(r, yajl_gen_string(r->gen, (const unsigned char *)text, len));
	}
}

/* The value of the field r->field names starts, of this kind: false if
 * the field had one already (repeated: the first stays). */
static bool
take_field(struct reader *r, long field, enum body_kind kind)
{
	struct body_value *v = &r->values[field];

	r->field = -1;
	if (v->kind != BODY_ABSENT) {
		v->repeated = true;
		return false;
	}
	v->kind = kind;
	return true;
}

/* Is the field a json parameter with a value to write back (not null)? */
static bool
wants_json(const struct reader *r, long field, enum body_kind kind)
{
	return r->route->params[field].type == PT_JSON && kind != BODY_NULL;
}

static int
scalar(struct reader *r, enum body_kind kind, const char *text, size_t len)
{
	long field = r->field;

	if (r->not_object)
		return KEEP_GOING;
	if (r->depth == 0) {
		r->not_object = true;
		return KEEP_GOING;
	}
	if (r->capturing >= 0)
		return gen_scalar(r, kind, text, len);
	if (r->depth != 1 || field < 0 || !take_field(r, field, kind))
		return KEEP_GOING;
	if (wants_json(r, field, kind)) {
		if (capture_begin(r, field) == STOP || gen_scalar(r, kind, text, len) == STOP)
			return STOP;
		return capture_end(r);
	}
	if ((kind == BODY_STRING || kind == BODY_NUMBER) &&
	    (r->values[field].text = strndup(text, len)) == NULL)
		return fail(r, BODY_NO_MEMORY);
	return KEEP_GOING;
}

static int
container_start(struct reader *r, bool is_map)
{
	long field = r->field;

	if (r->not_object)
		return KEEP_GOING;
	if (r->depth == 0 && !is_map) {
		r->not_object = true;
		return KEEP_GOING;
	}
	if (r->capturing < 0 && r->depth == 1 && field >= 0 && take_field(r, field, BODY_CONTAINER) &&
	    wants_json(r, field, BODY_CONTAINER)) {
		if (capture_begin(r, field) == STOP)
			return STOP;
	}
	r->depth++;
	if (r->capturing < 0)
		return KEEP_GOING;
	return gen_ok(r, is_map ? yajl_gen_map_open(r->gen) : yajl_gen_array_open(r->gen));
}

static int
container_end(struct reader *r, bool is_map)
{
	if (r->not_object)
		return KEEP_GOING;
	r->depth--;
	if (r->capturing < 0)
		return KEEP_GOING;
	if (gen_ok(r, is_map ? yajl_gen_map_close(r->gen) : yajl_gen_array_close(r->gen)) == STOP)
		return STOP;
	return r->depth == 1 ? capture_end(r) : KEEP_GOING;
}

/* ---- yajl's callbacks ---- */

static int
on_null(void *ctx)
{
	return scalar(ctx, BODY_NULL, NULL, 0);
}

static int
on_boolean(void *ctx, int value)
{
	return scalar(ctx, value ? BODY_TRUE : BODY_FALSE, NULL, 0);
}

static int
on_number(void *ctx, const char *text, size_t len)
{
	return scalar(ctx, BODY_NUMBER, text, len);
}

static int
on_string(void *ctx, const unsigned char *text, size_t len)
{
	return scalar(ctx, BODY_STRING, (const char *)text, len);
}

static int
on_map_key(void *ctx, const unsigned char *key, size_t len)
{
	struct reader *r = ctx;

	if (r->not_object)
		return KEEP_GOING;
	if (r->capturing >= 0)
		return gen_ok(r, yajl_gen_string(r->gen, key, len));
	if (r->depth == 1)
		r->field = declared_field(r->route, key, len);
	return KEEP_GOING;
}

static int
on_start_map(void *ctx)
{
	return container_start(ctx, true);
}

static int
on_end_map(void *ctx)
{
	return container_end(ctx, true);
}

static int
on_start_array(void *ctx)
{
	return container_start(ctx, false);
}

static int
on_end_array(void *ctx)
{
	return container_end(ctx, false);
}

static const yajl_callbacks callbacks = {
	.yajl_null = on_null,
	.yajl_boolean = on_boolean,
	.yajl_number = on_number,	/* numbers as written: no integer/double callbacks */
	.yajl_string = on_string,
	.yajl_start_map = on_start_map,
	.yajl_map_key = on_map_key,
	.yajl_end_map = on_end_map,
	.yajl_start_array = on_start_array,
	.yajl_end_array = on_end_array,
};

enum body_verdict
body_fields_read(const char *body, size_t len, const struct route *route, struct body_value *values)
{
	struct reader r = { .route = route, .values = values, .field = -1, .capturing = -1 };
	enum body_verdict verdict = BODY_OK;
	yajl_handle h = yajl_alloc(&callbacks, NULL, &r);
	yajl_status st;

	if (h == NULL)
		return BODY_NO_MEMORY;
	yajl_config(h, yajl_allow_comments, 0);
	st = yajl_parse(h, (const unsigned char *)body, len);
	if (st == yajl_status_ok)
		st = yajl_complete_parse(h);
	if (st == yajl_status_client_canceled)
		verdict = r.failure;
	else if (st != yajl_status_ok)
		verdict = BODY_INVALID;
	else if (r.not_object)
		verdict = BODY_NOT_OBJECT;
	yajl_free(h);
	if (r.gen != NULL)
		yajl_gen_free(r.gen);
	if (verdict != BODY_OK)
		body_values_free(values, route->nparams);
	return verdict;
}

void
body_values_free(struct body_value *values, size_t n)
{
	if (values == NULL)
		return;
	for (size_t i = 0; i < n; i++) {
		free(values[i].text);
		free(values[i].json);
	}
	memset(values, 0, n * sizeof(*values));
}
