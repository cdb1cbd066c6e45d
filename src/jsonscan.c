/*
 * jsonscan.c - the nesting and character scan before yajl_tree (see
 * jsonscan.h).
 */
#include <stdbool.h>
#include <string.h>

#include "jsonscan.h"

enum scan_state { IN_VALUE, IN_STRING, IN_LINE_COMMENT, IN_BLOCK_COMMENT };

static bool
nul_escape_at(const char *text, size_t len, size_t i)
{
	return len - i >= 6 && memcmp(text + i + 1, "u0000", 5) == 0;
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
				if (!(flags & JSONSCAN_NUL_ESCAPES) && nul_escape_at(text, len, i))
					verdict = JSONSCAN_NUL_ESCAPE;
				else
					i++;	/* the escaped character */
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
