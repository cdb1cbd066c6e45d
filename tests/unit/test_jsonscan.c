/*
 * test_jsonscan.c - the scan before yajl_tree: depth counted on structure
 * only (not in strings or comments), comments and \u0000 refused or
 * passed as the flags say, raw NULs always refused, and the offset of the
 * first problem.
 */
#include <stdlib.h>
#include <string.h>

#include "jsonscan.h"
#include "unit.h"

#define BOTH (JSONSCAN_COMMENTS | JSONSCAN_NUL_ESCAPES)

static enum jsonscan_verdict
scan(const char *text, size_t max_depth, unsigned flags, size_t *where)
{
	return jsonscan(text, strlen(text), max_depth, flags, where);
}

/* `n` arrays nested, closed. Caller frees. */
static char *
nested(size_t n)
{
	char *s = malloc(2 * n + 1);

	memset(s, '[', n);
	memset(s + n, ']', n);
	s[2 * n] = '\0';
	return s;
}

/* Half a surrogate pair is refused wherever it is; a pair, escaped in
 * either case, and other escapes pass. */
static void
test_surrogates(void)
{
	size_t where = 0;

	CU_ASSERT_EQUAL(scan("[\"\\ud83d\\ude00\"]", 1, 0, NULL), JSONSCAN_OK);
	CU_ASSERT_EQUAL(scan("[\"\\uD83D\\uDE00 \\u00e9 \\n \\\\u\"]", 1, 0, NULL), JSONSCAN_OK);
	CU_ASSERT_EQUAL(scan("[\"ab\\ud800\"]", 1, 0, &where), JSONSCAN_LONE_SURROGATE);
	CU_ASSERT_EQUAL(where, 4);
	CU_ASSERT_EQUAL(scan("[\"\\udc00\"]", 1, 0, NULL), JSONSCAN_LONE_SURROGATE);
	CU_ASSERT_EQUAL(scan("[\"\\ud800\\u0041\"]", 1, 0, NULL), JSONSCAN_LONE_SURROGATE);
	CU_ASSERT_EQUAL(scan("[\"\\ud800x\\udc00\"]", 1, 0, NULL), JSONSCAN_LONE_SURROGATE);
	CU_ASSERT_EQUAL(scan("[\"\\ud800", 1, 0, NULL), JSONSCAN_LONE_SURROGATE);	/* cut short */
	CU_ASSERT_EQUAL(scan("[\"\\ud8", 1, 0, NULL), JSONSCAN_OK);	/* the parser refuses it */
}

static void
test_depth(void)
{
	char *deep = nested(400000);
	size_t where = 0;

	CU_ASSERT_PTR_NOT_NULL_FATAL(deep);
	CU_ASSERT_EQUAL(scan("[[{}]]", 3, 0, NULL), JSONSCAN_OK);
	CU_ASSERT_EQUAL(scan("[[{}]]", 2, 0, &where), JSONSCAN_TOO_DEEP);
	CU_ASSERT_EQUAL(where, 2);	/* the bracket that went too deep */
	CU_ASSERT_EQUAL(scan("[[]] [[]] [[]]", 2, 0, NULL), JSONSCAN_OK);	/* depth, not count */
	CU_ASSERT_EQUAL(scan(deep, 64, BOTH, &where), JSONSCAN_TOO_DEEP);
	CU_ASSERT_EQUAL(where, 64);
	/* Closers beyond the openers never make room for more. */
	CU_ASSERT_EQUAL(scan("]]]]][[[", 2, 0, NULL), JSONSCAN_TOO_DEEP);
	free(deep);
}

static void
test_strings(void)
{
	size_t where = 0;

	CU_ASSERT_EQUAL(scan("[\"[[[[{{{{//\"]", 1, 0, NULL), JSONSCAN_OK);
	CU_ASSERT_EQUAL(scan("[\"a\\\"[[[\"]", 1, 0, NULL), JSONSCAN_OK);	/* escaped quote */
	CU_ASSERT_EQUAL(scan("[\"\\\\\",[[", 2, 0, NULL), JSONSCAN_TOO_DEEP);	/* escaped backslash ends */
	CU_ASSERT_EQUAL(scan("[\"a\\u0000\"]", 1, 0, &where), JSONSCAN_NUL_ESCAPE);
	CU_ASSERT_EQUAL(where, 3);
	CU_ASSERT_EQUAL(scan("[\"a\\u0000\"]", 1, JSONSCAN_NUL_ESCAPES, NULL), JSONSCAN_OK);
	CU_ASSERT_EQUAL(scan("[\"a\\\\u0000\"]", 1, 0, NULL), JSONSCAN_OK);
	CU_ASSERT_EQUAL(scan("[\"a\\u0001\"]", 1, 0, NULL), JSONSCAN_OK);
}

static void
test_comments(void)
{
	size_t where = 0;

	CU_ASSERT_EQUAL(scan("[1] // c", 1, 0, &where), JSONSCAN_COMMENT);
	CU_ASSERT_EQUAL(where, 4);
	CU_ASSERT_EQUAL(scan("[/* c */1]", 1, 0, NULL), JSONSCAN_COMMENT);
	/* Brackets and quotes inside comments are not structure. */
	CU_ASSERT_EQUAL(scan("// [[[ \"\n[1]", 1, JSONSCAN_COMMENTS, NULL), JSONSCAN_OK);
	CU_ASSERT_EQUAL(scan("/* [[[ \" */[1]", 1, JSONSCAN_COMMENTS, NULL), JSONSCAN_OK);
	CU_ASSERT_EQUAL(scan("/*/ [[ */[1]", 1, JSONSCAN_COMMENTS, NULL), JSONSCAN_OK);
	CU_ASSERT_EQUAL(scan("/* a ** b **/[[", 1, JSONSCAN_COMMENTS, NULL), JSONSCAN_TOO_DEEP);
	/* A line comment ends at the newline: what follows counts. */
	CU_ASSERT_EQUAL(scan("// x\n[[", 1, JSONSCAN_COMMENTS, NULL), JSONSCAN_TOO_DEEP);
	/* A quote in a comment does not start a string that hides brackets. */
	CU_ASSERT_EQUAL(scan("/* \" */ [[ \"\"", 1, JSONSCAN_COMMENTS, NULL), JSONSCAN_TOO_DEEP);
	/* A lone '/' is the parser's to refuse; the scan goes on counting. */
	CU_ASSERT_EQUAL(scan("[/[", 1, JSONSCAN_COMMENTS, NULL), JSONSCAN_TOO_DEEP);
}

static void
test_raw_nul(void)
{
	static const char with_nul[] = "[1]\0[";
	size_t where = 0;

	CU_ASSERT_EQUAL(jsonscan(with_nul, sizeof(with_nul) - 1, 8, BOTH, &where), JSONSCAN_RAW_NUL);
	CU_ASSERT_EQUAL(where, 3);
	CU_ASSERT_EQUAL(jsonscan(with_nul, 3, 8, BOTH, &where), JSONSCAN_OK);
	CU_ASSERT_EQUAL(where, 3);
}

void
register_jsonscan_tests(void)
{
	CU_pSuite s = CU_add_suite("jsonscan", NULL, NULL);

	CU_add_test(s, "depth", test_depth);
	CU_add_test(s, "strings", test_strings);
	CU_add_test(s, "half a surrogate pair", test_surrogates);
	CU_add_test(s, "comments", test_comments);
	CU_add_test(s, "raw NUL", test_raw_nul);
}
