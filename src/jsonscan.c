/*
 * jsonscan.c - the nesting and character scan before yajl_tree (see
 * jsonscan.h).
 */
#include <stdbool.h>
#include <string.h>

#include "jsonscan.h"
#include "textfmt.h"

enum scan_state { IN_VALUE, IN_STRING, IN_LINE_COMMENT, IN_BLOCK_COMMENT };

static bool
nul_escape_at(const char *text, size_t len, size_t i)
{
	return len - i >= 6 && memcmp(text + i + 1, "u0000", 5) == 0;
}

/* The code unit of the \uXXXX escape at text[i] (the backslash), or -1. */
static long
u_escape_at(const char *text, size_t len, size_t i)
{
	long unit = 0;
	int d;

	if (i + 6 > len || text[i] != '\\' || text[i + 1] != 'u')
		return -1;
	for (size_t k = i + 2; k < i + 6; k++) {
		if ((d = hex_digit_value((unsigned char)text[k])) < 0)
			return -1;
		unit = unit * 16 + d;
	}
	return unit;
}

/*
 * At the escape text[i]: the index of its last character, past the low
 * half too when it is the high half of a pair; 0 if it is half of a pair
 * without the other. Any other escape is two characters (the parser
 * judges it).
 */
static size_t
escape_end(const char *text, size_t len, size_t i)
{
	long unit = u_escape_at(text, len, i), low;

	if (unit < 0)
		return i + 1;
	if (unit >= 0xDC00 && unit <= 0xDFFF)
		return 0;	/* a low half first */
	if (unit < 0xD800 || unit > 0xDBFF)
		return i + 5;
	low = u_escape_at(text, len, i + 6);
	return low >= 0xDC00 && low <= 0xDFFF ? i + 11 : 0;
}

/* A '/' outside strings: a comment starts (yajl allows // and block ones)
 * or, without a '/' or '*' next, the parser will refuse the text there. */
static enum scan_state
comment_start(const char *text, size_t len, size_t *i)
{
	if (*i + 1 < len && text[*i + 1] == '/') {
		(*i)++;
		return IN_LINE_COMMENT;
	}
	if (*i + 1 < len && text[*i + 1] == '*') {
		(*i)++;
		return IN_BLOCK_COMMENT;
	}
	return IN_VALUE;
}

enum jsonscan_verdict
jsonscan(const char *text, size_t len, size_t max_depth, unsigned flags, size_t *where)
{
	enum jsonscan_verdict verdict = JSONSCAN_OK;
	enum scan_state state = IN_VALUE;
	size_t depth = 0, i;

	for (i = 0; i < len; i++) {
		char c = text[i];

		if (c == '\0') {
			verdict = JSONSCAN_RAW_NUL;
			break;
		}
		switch (state) {
		case IN_STRING:
			if (c == '"') {
				state = IN_VALUE;
			} else if (c == '\\') {
				size_t end = escape_end(text, len, i);

				if (!(flags & JSONSCAN_NUL_ESCAPES) && nul_escape_at(text, len, i))
					verdict = JSONSCAN_NUL_ESCAPE;
				else if (end == 0)
					verdict = JSONSCAN_LONE_SURROGATE;
				else
					i = end;
			}
			break;
		case IN_LINE_COMMENT:
			if (c == '\n')
				state = IN_VALUE;
			break;
		case IN_BLOCK_COMMENT:
			if (c == '*' && i + 1 < len && text[i + 1] == '/') {
				i++;
				state = IN_VALUE;
			}
			break;
		case IN_VALUE:
			if (c == '"')
				state = IN_STRING;
			else if ((c == '[' || c == '{') && ++depth > max_depth)
				verdict = JSONSCAN_TOO_DEEP;
			else if ((c == ']' || c == '}') && depth > 0)
				depth--;
			else if (c == '/' && !(flags & JSONSCAN_COMMENTS))
				verdict = JSONSCAN_COMMENT;
			else if (c == '/')
				state = comment_start(text, len, &i);
			break;
		}
		if (verdict != JSONSCAN_OK)
			break;
	}
	if (where != NULL)
		*where = verdict == JSONSCAN_OK ? len : i;
	return verdict;
}
