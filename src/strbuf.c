/*
 * strbuf.c - growable byte buffer (see strbuf.h).
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "strbuf.h"
#include "textfmt.h"

void
strbuf_init(struct strbuf *sb)
{
	sb->data = NULL;
	sb->len = 0;
	sb->cap = 0;
	sb->failed = false;
}

bool
strbuf_grow(struct strbuf *sb, size_t extra)
{
	size_t need, cap;
	char *p;

	if (sb->failed)
		return false;
	if (extra > SIZE_MAX - sb->len - 1) {
		sb->failed = true;
		return false;
	}
	need = sb->len + extra + 1;
	if (need <= sb->cap)
		return true;
	cap = sb->cap ? sb->cap : 64;
	while (cap < need)
		cap = cap > SIZE_MAX / 2 ? need : cap * 2;
	p = realloc(sb->data, cap);
	if (p == NULL) {
		sb->failed = true;
		return false;
	}
	sb->data = p;
	sb->cap = cap;
	return true;
}

void
strbuf_append_slow(struct strbuf *sb, const void *data, size_t len)
{
	if (!strbuf_grow(sb, len))
		return;
	if (len > 0)
		memcpy(sb->data + sb->len, data, len);
	sb->len += len;
	sb->data[sb->len] = '\0';
}

void
strbuf_append_str(struct strbuf *sb, const char *s)
{
	strbuf_append(sb, s, strlen(s));
}

void
strbuf_appendf(struct strbuf *sb, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0) {
		sb->failed = true;
		return;
	}
	if (!strbuf_grow(sb, (size_t)n))
		return;
	va_start(ap, fmt);
	vsnprintf(sb->data + sb->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	sb->len += (size_t)n;
}

void
strbuf_append_uint(struct strbuf *sb, unsigned long long v)
{
	char digits[TEXT_UINT_MAX];

	strbuf_append(sb, digits, text_uint(digits, v));
}

bool
strbuf_failed(const struct strbuf *sb)
{
	return sb->failed;
}

void
strbuf_reset(struct strbuf *sb)
{
	sb->len = 0;
	sb->failed = false;	/* what failed is gone: e.g. an error body replaces a result too big */
	if (sb->data != NULL)
		sb->data[0] = '\0';
}

void
strbuf_truncate(struct strbuf *sb, size_t len)
{
	if (sb->data != NULL && len <= sb->len) {
		sb->len = len;
		sb->data[len] = '\0';
	}
}

void
strbuf_append_cb(void *sb, const char *text, size_t len)
{
	strbuf_append(sb, text, len);
}

char *
strbuf_detach(struct strbuf *sb, size_t *len)
{
	char *p = sb->data;

	if (p == NULL) {
		p = calloc(1, 1);
		if (len != NULL)
			*len = 0;
	} else if (len != NULL) {
		*len = sb->len;
	}
	strbuf_init(sb);
	return p;
}

void
strbuf_free(struct strbuf *sb, bool wipe)
{
	if (sb->data != NULL && wipe)
		OPENSSL_cleanse(sb->data, sb->cap);
	free(sb->data);
	strbuf_init(sb);
}
