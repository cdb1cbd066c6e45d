/*
 * jsonscan.h - one pass over JSON text before yajl parses it (a tree for
 * the config file, events for request bodies), for what yajl does not
 * refuse by itself: nesting without bound (a tree is freed recursively,
 * so deep text overflows the stack; yajl_gen, which writes a json
 * parameter back, stops at 128 levels) and, where
 * the caller wants, comments and \u0000 escapes (its strings are C
 * strings, which a NUL would cut). Raw NUL bytes are always refused, and
 * so is a \u escape of half a surrogate pair without its other half, which
 * yajl would quietly turn into '?'.
 *
 * Whether the text is JSON is the parser's to judge; the scan only needs
 * to be exact on JSON. Where the text stops being JSON the parser stops
 * too, and up to there the scan has counted the same nesting, so the
 * parser never goes deeper than max_depth.
 */
#ifndef LB_JSONSCAN_H
#define LB_JSONSCAN_H

#include <stddef.h>

enum jsonscan_flags {
	JSONSCAN_COMMENTS = 1 << 0,	/* skip // and block comments (yajl's default) */
	JSONSCAN_NUL_ESCAPES = 1 << 1,	/* let \u0000 in strings pass */
};

enum jsonscan_verdict {
	JSONSCAN_OK = 0,
	JSONSCAN_TOO_DEEP,	/* an array or object opened below max_depth levels */
	JSONSCAN_COMMENT,	/* a '/' outside strings, without JSONSCAN_COMMENTS */
	JSONSCAN_RAW_NUL,	/* a NUL byte */
	JSONSCAN_NUL_ESCAPE,	/* \u0000 in a string, without JSONSCAN_NUL_ESCAPES */
	JSONSCAN_LONE_SURROGATE,	/* \uD800-\uDFFF not in a high-low pair */
};

/* The first problem in text[0..len); its byte offset in *where (may be NULL). */
enum jsonscan_verdict jsonscan(const char *text, size_t len, size_t max_depth, unsigned flags,
			       size_t *where);

#endif
