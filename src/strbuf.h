/*
 * strbuf.h - a growable byte buffer: the only way the project assembles
 * variable-length text (bodies, conninfo strings, URLs). Every append checks
 * its length; on allocation failure the buffer is marked failed and further
 * appends are no-ops, so callers check once at the end with strbuf_failed().
 */
#ifndef LB_STRBUF_H
#define LB_STRBUF_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

struct strbuf {
	char *data;     /* always NUL-terminated when len > 0 or after init */
	size_t len;
	size_t cap;
	bool failed;
};

void strbuf_init(struct strbuf *sb);
/* Makes room for `extra` more bytes (plus the NUL) at once; false when
 * the buffer has failed. Appends grow it anyway: this only saves reallocs. */
bool strbuf_grow(struct strbuf *sb, size_t extra);
void strbuf_append_slow(struct strbuf *sb, const void *data, size_t len);
/* Appends len bytes. Inline: the hot paths append a few bytes at a time
 * into room reserved beforehand; anything else goes the checked way. */
static inline void
strbuf_append(struct strbuf *sb, const void *data, size_t len)
{
	if (sb->data != NULL && !sb->failed && len < sb->cap - sb->len) {
		memcpy(sb->data + sb->len, data, len);
		sb->len += len;
		sb->data[sb->len] = '\0';
		return;
	}
	strbuf_append_slow(sb, data, len);
}
void strbuf_append_str(struct strbuf *sb, const char *s);
/* Decimal digits of v: what the hot paths use instead of a printf. */
void strbuf_append_uint(struct strbuf *sb, unsigned long long v);
void strbuf_appendf(struct strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool strbuf_failed(const struct strbuf *sb);
void strbuf_reset(struct strbuf *sb);        /* len = 0, not failed, keeps memory */
/* Drops everything after the first `len` bytes (no-op if shorter). */
void strbuf_truncate(struct strbuf *sb, size_t len);
/* Appends to the strbuf `sb`: usable as a yajl_print_t, so a yajl_gen
 * writes straight into a buffer (yajl_gen_print_callback). */
void strbuf_append_cb(void *sb, const char *text, size_t len);
/* Takes ownership of the data (caller frees); the buffer is re-initialised. */
char *strbuf_detach(struct strbuf *sb, size_t *len);
/* Frees; wipe=true cleanses the bytes first (for buffers that held secrets). */
void strbuf_free(struct strbuf *sb, bool wipe);

#endif
