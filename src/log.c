/*
 * log.c - logfmt or JSON lines on stderr, one write(2) per line so lines
 * from concurrent threads and processes never interleave. JSON is written
 * with yajl_gen, like every other JSON of the project.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <yajl/yajl_gen.h>

#include "forkcount.h"
#include "log.h"
#include "strbuf.h"

static atomic_int current_level = LOG_LVL_INFO;
static atomic_int current_format = LOG_FMT_LOGFMT;
static atomic_bool redact_emails = true;

/* Room for a request line at once, instead of growing 64, 128, 256... */
#define LOG_LINE_TYPICAL 384
#define LOG_LINE_KEEP 4096	/* a thread keeps its line buffer up to this size */

static const char *const level_names[] = { "debug", "info", "warn", "error" };

void
log_set_level(enum log_level level)
{
	atomic_store(&current_level, (int)level);
}

void
log_set_format(enum log_format format)
{
	atomic_store(&current_format, (int)format);
}

void
log_set_redact_emails(bool redact)
{
	atomic_store(&redact_emails, redact);
}

/* Characters that end an email-like word. */
static bool
is_word_break(unsigned char c)
{
	return c <= ' ' || c >= 0x7f || strchr("\"'<>()[],;:=/\\", c) != NULL;
}

void
log_redact_emails(const char *text, struct strbuf *out)
{
	size_t n = strlen(text), start = 0, i = 0;

	while (i < n) {
		size_t left, right;

		if (text[i] != '@') {
			i++;
			continue;
		}
		left = i;
		while (left > start && !is_word_break((unsigned char)text[left - 1]))
			left--;
		right = i + 1;
		while (right < n && !is_word_break((unsigned char)text[right]))
			right++;
		if (left == i || right == i + 1) {	/* a lone '@' is not an address */
			i++;
			continue;
		}
		strbuf_append(out, text + start, left - start);
		strbuf_append_str(out, "[email]");
		start = i = right;
	}
	strbuf_append(out, text + start, n - start);
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

/* Bytes a logfmt value may hold without quotes. */
static bool
is_bare(unsigned char c)
{
	return c > ' ' && c < 0x7f && c != '"' && c != '=' && c != '\\';
}

static bool
needs_quotes(const char *v)
{
	if (*v == '\0')
		return true;
	for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
		if (!is_bare(*p))
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

/*
 * "2026-11-21T12:00:00.123Z". Every request logs a line: the calendar part
 * is formatted once per second per thread, the milliseconds by hand.
 */
static void
format_timestamp(char *buf, size_t size)
{
	static _Thread_local time_t cached_sec = (time_t)-1;
	static _Thread_local char cached[24];
	struct timespec now;
	struct tm tm;
	size_t n;
	int ms;

	clock_gettime(CLOCK_REALTIME, &now);
	if (now.tv_sec != cached_sec) {
		gmtime_r(&now.tv_sec, &tm);
		if (strftime(cached, sizeof(cached), "%Y-%m-%dT%H:%M:%S", &tm) == 0)
			cached[0] = '\0';
		cached_sec = now.tv_sec;
	}
	ms = (int)(now.tv_nsec / 1000000) % 1000;
	n = strlen(cached);
	if (n + sizeof(".123Z") > size) {
		buf[0] = '\0';
		return;
	}
	memcpy(buf, cached, n);
	buf[n++] = '.';
	buf[n++] = (char)('0' + ms / 100);
	buf[n++] = (char)('0' + ms / 10 % 10);
	buf[n++] = (char)('0' + ms % 10);
	buf[n++] = 'Z';
	buf[n] = '\0';
}

/*
 * The pid, as text: getpid() is a system call, so it is asked once per
 * thread and again only after a fork.
 */
static const char *
pid_text(void)
{
	static _Thread_local bool known;
	static _Thread_local unsigned known_forks;
	static _Thread_local char text[24];
	unsigned forks = forkcount_get();

	if (!known || forks != known_forks) {
		snprintf(text, sizeof(text), "%ld", (long)getpid());
		known = true;
		known_forks = forks;
	}
	return text;
}

/* A value as logged: masked when emails are redacted. `scratch` holds it. */
static const char *
shown(const char *value, struct strbuf *scratch)
{
	if (!atomic_load(&redact_emails) || strchr(value, '@') == NULL)
		return value;
	strbuf_reset(scratch);
	log_redact_emails(value, scratch);
	return strbuf_failed(scratch) ? "[email]" : scratch->data;
}

/* A value of the line: the usual bare one (no '@' either) copied after a
 * single pass, any other masked (emails) and quoted. `scratch` holds a
 * masked copy. */
static void
append_field(struct strbuf *sb, const char *v, struct strbuf *scratch)
{
	const unsigned char *p = (const unsigned char *)v;

	while (is_bare(*p) && *p != '@')	/* NUL is not bare */
		p++;
	if (*p == '\0' && p != (const unsigned char *)v)
		strbuf_append(sb, v, (size_t)(p - (const unsigned char *)v));
	else
		append_value(sb, shown(v, scratch));
}

static void
logfmt_line(struct strbuf *sb, const char *ts, const char *level, const char *msg, va_list ap)
{
	struct strbuf scratch;
	const char *key, *value;

	strbuf_init(&scratch);
	strbuf_append(sb, "ts=", 3);
	strbuf_append_str(sb, ts);
	strbuf_append(sb, " level=", 7);
	strbuf_append_str(sb, level);
	strbuf_append(sb, " pid=", 5);
	strbuf_append_str(sb, pid_text());
	strbuf_append(sb, " msg=", 5);
	append_field(sb, msg, &scratch);
	while ((key = va_arg(ap, const char *)) != NULL) {
		value = va_arg(ap, const char *);
		if (value == NULL)
			continue;
		strbuf_append(sb, " ", 1);
		strbuf_append_str(sb, key);
		strbuf_append(sb, "=", 1);
		append_field(sb, value, &scratch);
	}
	strbuf_free(&scratch, false);
	strbuf_append(sb, "\n", 1);
}

static void
json_string(yajl_gen g, const char *s)
{
	yajl_gen_string(g, (const unsigned char *)s, strlen(s));
}

/* Numbers stay numbers for these keys (a log pipeline can sum them). */
static bool
is_numeric_field(const char *key, const char *value)
{
	size_t n = strspn(value, "0123456789");

	return (strcmp(key, "status") == 0 || strcmp(key, "duration_ms") == 0) && n > 0 && n <= 15 &&
	       value[n] == '\0';
}

static void
json_line(struct strbuf *sb, const char *ts, const char *level, const char *msg, va_list ap)
{
	struct strbuf scratch;
	const char *key, *value;
	yajl_gen g = yajl_gen_alloc(NULL);

	if (g == NULL) {
		strbuf_append_str(sb, "{\"msg\":\"out of memory\"}\n");
		return;
	}
	strbuf_init(&scratch);
	yajl_gen_config(g, yajl_gen_print_callback, strbuf_append_cb, sb);
	yajl_gen_map_open(g);
	json_string(g, "ts");
	json_string(g, ts);
	json_string(g, "level");
	json_string(g, level);
	json_string(g, "pid");
	yajl_gen_number(g, pid_text(), strlen(pid_text()));
	json_string(g, "msg");
	json_string(g, shown(msg, &scratch));
	while ((key = va_arg(ap, const char *)) != NULL) {
		value = va_arg(ap, const char *);
		if (value == NULL)
			continue;
		json_string(g, key);
		if (is_numeric_field(key, value))
			yajl_gen_integer(g, strtoll(value, NULL, 10));
		else
			json_string(g, shown(value, &scratch));
	}
	yajl_gen_map_close(g);
	yajl_gen_free(g);
	strbuf_free(&scratch, false);
	strbuf_append(sb, "\n", 1);
}

/*
 * Each thread formats its lines in a buffer of its own, kept between lines
 * (a line holds no secret) and freed when the thread ends: one line per
 * request should not cost an allocation.
 */
static pthread_key_t line_key;
static bool line_key_ready;
static pthread_once_t line_key_once = PTHREAD_ONCE_INIT;

static void
free_thread_line(void *sb)
{
	strbuf_free(sb, false);
	free(sb);
}

static void
make_line_key(void)
{
	line_key_ready = pthread_key_create(&line_key, free_thread_line) == 0;
}

/* The calling thread's line buffer, or NULL (then the caller uses its own). */
static struct strbuf *
thread_line(void)
{
	struct strbuf *sb;

	pthread_once(&line_key_once, make_line_key);
	if (!line_key_ready)
		return NULL;
	if ((sb = pthread_getspecific(line_key)) != NULL)
		return sb;
	if ((sb = malloc(sizeof(*sb))) == NULL)
		return NULL;
	strbuf_init(sb);
	if (pthread_setspecific(line_key, sb) != 0) {
		free(sb);
		return NULL;
	}
	return sb;
}

/* Done with a line: a thread's buffer is kept (emptied) unless it grew large. */
static void
line_done(struct strbuf *sb, bool owned)
{
	if (owned || sb->cap > LOG_LINE_KEEP || sb->failed) {
		strbuf_free(sb, false);
		return;
	}
	strbuf_reset(sb);
}

void
log_event(enum log_level level, const char *msg, ...)
{
	struct strbuf local, *sb;
	va_list ap;
	char ts[48];
	ssize_t off = 0;

	if ((int)level < atomic_load(&current_level))
		return;
	if ((sb = thread_line()) == NULL) {
		strbuf_init(&local);
		sb = &local;
	}
	strbuf_grow(sb, LOG_LINE_TYPICAL);
	format_timestamp(ts, sizeof(ts));
	va_start(ap, msg);
	if (atomic_load(&current_format) == LOG_FMT_JSON)
		json_line(sb, ts, level_names[level], msg, ap);
	else
		logfmt_line(sb, ts, level_names[level], msg, ap);
	va_end(ap);
	if (!strbuf_failed(sb)) {
		while ((size_t)off < sb->len) {
			ssize_t n = write(STDERR_FILENO, sb->data + off, sb->len - (size_t)off);
			if (n <= 0)
				break;
			off += n;
		}
	}
	line_done(sb, sb == &local);
}
