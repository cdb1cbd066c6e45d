/*
 * log.c - logfmt lines on stderr, one write(2) per line so lines from
 * concurrent threads and processes never interleave.
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "strbuf.h"

static atomic_int current_level = LOG_LVL_INFO;

static const char *const level_names[] = { "debug", "info", "warn", "error" };

void
log_set_level(enum log_level level)
{
	atomic_store(&current_level, (int)level);
}

int
log_parse_level(const char *name, enum log_level *out)
{
	for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
		if (strcasecmp(name, level_names[i]) == 0) {
			*out = (enum log_level)i;
			return 0;
		}
	}
	return -1;
}

static bool
needs_quotes(const char *v)
{
	if (*v == '\0')
		return true;
	for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
		if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' || *p >= 0x7f)
			return true;
	}
	return false;
}

/* Quotes and escapes a value: control characters become \xNN, so input
 * taken from a request cannot start a new log line. */
static void
append_value(struct strbuf *sb, const char *v)
{
	if (!needs_quotes(v)) {
		strbuf_append_str(sb, v);
		return;
	}
	strbuf_append(sb, "\"", 1);
	for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
		if (*p == '"' || *p == '\\') {
			strbuf_append(sb, "\\", 1);
			strbuf_append(sb, p, 1);
		} else if (*p < ' ' || *p == 0x7f) {
			strbuf_appendf(sb, "\\x%02x", *p);
		} else {
			strbuf_append(sb, p, 1);
		}
	}
	strbuf_append(sb, "\"", 1);
}

static void
append_timestamp(struct strbuf *sb)
{
	struct timeval tv;
	struct tm tm;
	char buf[32];

	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
	strbuf_appendf(sb, "ts=%s.%03ldZ", buf, (long)(tv.tv_usec / 1000));
}

void
log_event(enum log_level level, const char *msg, ...)
{
	struct strbuf sb;
	va_list ap;
	const char *key, *value;
	ssize_t off = 0;

	if ((int)level < atomic_load(&current_level))
		return;
	strbuf_init(&sb);
	append_timestamp(&sb);
	strbuf_appendf(&sb, " level=%s pid=%ld msg=", level_names[level], (long)getpid());
	append_value(&sb, msg);
	va_start(ap, msg);
	while ((key = va_arg(ap, const char *)) != NULL) {
		value = va_arg(ap, const char *);
		if (value == NULL)
			continue;
		strbuf_appendf(&sb, " %s=", key);
		append_value(&sb, value);
	}
	va_end(ap);
	strbuf_append(&sb, "\n", 1);
	if (!strbuf_failed(&sb)) {
		while ((size_t)off < sb.len) {
			ssize_t n = write(STDERR_FILENO, sb.data + off, sb.len - (size_t)off);
			if (n <= 0)
				break;
			off += n;
		}
	}
	strbuf_free(&sb, false);
}
