/*
 * test_log.c - log lines as written to stderr (captured through a temporary
 * file): logfmt and JSON (parsed back with yajl_tree), email masking on by
 * default and off with log_user, and the masking function's edges.
 */
#include <regex.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <yajl/yajl_tree.h>

#include "log.h"
#include "strbuf.h"
#include "unit.h"

/* Runs one log_event with stderr redirected; returns the line (malloc'd). */
static char *
capture(enum log_format format, bool redact, const char *detail)
{
	FILE *tmp = tmpfile();
	int saved = dup(STDERR_FILENO);
	char *line = calloc(1, 4096);

	if (tmp == NULL || saved < 0 || line == NULL) {
		free(line);
		return NULL;
	}
	log_set_format(format);
	log_set_redact_emails(redact);
	dup2(fileno(tmp), STDERR_FILENO);
	log_event(LOG_LVL_WARN, "request", "request_id", "r-1", "status", "403", "duration_ms", "12",
		  "detail", detail, "skipped", (const char *)NULL, (const char *)NULL);
	dup2(saved, STDERR_FILENO);
	close(saved);
	log_set_format(LOG_FMT_LOGFMT);
	log_set_redact_emails(true);
	rewind(tmp);
	if (fgets(line, 4096, tmp) == NULL)
		line[0] = '\0';
	fclose(tmp);
	return line;
}

static const char DETAIL[] =
	"FATAL:  password authentication failed for user \"alice@example.com\"";

static void
test_logfmt_masks_emails_by_default(void)
{
	char *line = capture(LOG_FMT_LOGFMT, true, DETAIL);

	CU_ASSERT_PTR_NOT_NULL_FATAL(line);
	CU_ASSERT_PTR_NULL(strstr(line, "alice"));
	CU_ASSERT_PTR_NOT_NULL(strstr(line, " level=warn pid="));
	CU_ASSERT_PTR_NOT_NULL(strstr(line, " msg=request request_id=r-1 status=403 duration_ms=12 "
					 "detail=\"FATAL:  password authentication failed for user \\\"[email]\\\"\"\n"));
	CU_ASSERT_PTR_NULL(strstr(line, "skipped"));
	free(line);
}

static void
test_log_user_keeps_emails(void)
{
	char *line = capture(LOG_FMT_LOGFMT, false, DETAIL);

	CU_ASSERT_PTR_NOT_NULL_FATAL(line);
	CU_ASSERT_PTR_NOT_NULL(strstr(line, "alice@example.com"));
	free(line);
}

/* The forms of a logfmt value: bare, masked, quoted, escaped. */
static void
expect_detail(bool redact, const char *detail, const char *shown)
{
	char *line = capture(LOG_FMT_LOGFMT, redact, detail);
	char want[256];

	CU_ASSERT_PTR_NOT_NULL_FATAL(line);
	snprintf(want, sizeof(want), " detail=%s\n", shown);
	CU_ASSERT_PTR_NOT_NULL(strstr(line, want));
	if (strstr(line, want) == NULL)
		fprintf(stderr, "\nexpected '%s' in: %s", want, line);
	free(line);
}

static void
test_logfmt_value_forms(void)
{
	expect_detail(true, "plain-value_1.2:3/4", "plain-value_1.2:3/4");
	expect_detail(true, "bob@example.com", "[email]");
	expect_detail(false, "bob@example.com", "bob@example.com");
	expect_detail(true, "a@", "a@");
	expect_detail(true, "", "\"\"");
	expect_detail(true, "two words", "\"two words\"");
	expect_detail(true, "k=v", "\"k=v\"");
	expect_detail(true, "say \"hi\" \\o/", "\"say \\\"hi\\\" \\\\o/\"");
	expect_detail(true, "line\nbreak\x7f", "\"line\\x0abreak\\x7f\"");
	expect_detail(true, "caf\xc3\xa9", "\"caf\xc3\xa9\"");
}

static void
test_json_lines_parse(void)
{
	char *line = capture(LOG_FMT_JSON, true, DETAIL);
	char errbuf[128];
	yajl_val v;
	const char *ts[] = { "ts", NULL }, *level[] = { "level", NULL }, *pid[] = { "pid", NULL };
	const char *status[] = { "status", NULL }, *detail[] = { "detail", NULL }, *rid[] = { "request_id", NULL };

	CU_ASSERT_PTR_NOT_NULL_FATAL(line);
	CU_ASSERT_EQUAL(line[strlen(line) - 1], '\n');
	v = yajl_tree_parse(line, errbuf, sizeof(errbuf));
	CU_ASSERT_PTR_NOT_NULL_FATAL(v);
	CU_ASSERT(YAJL_IS_STRING(yajl_tree_get(v, ts, yajl_t_string)));
	CU_ASSERT_STRING_EQUAL(YAJL_GET_STRING(yajl_tree_get(v, level, yajl_t_string)), "warn");
	CU_ASSERT_EQUAL(YAJL_GET_INTEGER(yajl_tree_get(v, pid, yajl_t_number)), (long long)getpid());
	CU_ASSERT_EQUAL(YAJL_GET_INTEGER(yajl_tree_get(v, status, yajl_t_number)), 403);
	CU_ASSERT_STRING_EQUAL(YAJL_GET_STRING(yajl_tree_get(v, rid, yajl_t_string)), "r-1");
	CU_ASSERT_STRING_EQUAL(YAJL_GET_STRING(yajl_tree_get(v, detail, yajl_t_string)),
			       "FATAL:  password authentication failed for user \"[email]\"");
	yajl_tree_free(v);
	free(line);
}

/* The line starts "ts=YYYY-MM-DDTHH:MM:SS.mmmZ level=warn pid=<pid> ". */
static bool
line_head_ok(const char *line, long pid)
{
	char expected[64];
	regex_t re;
	bool ok;

	if (regcomp(&re, "^ts=[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z ",
		    REG_EXTENDED | REG_NOSUB) != 0)
		return false;
	ok = regexec(&re, line, 0, NULL, 0) == 0;
	regfree(&re);
	snprintf(expected, sizeof(expected), "Z level=warn pid=%ld msg=", pid);
	return ok && strstr(line, expected) == line + strlen("ts=2026-11-21T12:00:00.123");
}

/* The timestamp and pid are cached (per second, per process): a forked
 * child logs its own pid, not its parent's. */
static void
test_timestamp_and_pid_after_fork(void)
{
	char *line = capture(LOG_FMT_LOGFMT, true, "x");
	int fds[2], status;
	char child_line[4096];
	ssize_t n;
	pid_t child;

	CU_ASSERT_PTR_NOT_NULL_FATAL(line);
	CU_ASSERT(line_head_ok(line, (long)getpid()));
	free(line);
	CU_ASSERT_FATAL(pipe(fds) == 0);
	child = fork();
	CU_ASSERT_FATAL(child >= 0);
	if (child == 0) {
		char *l = capture(LOG_FMT_LOGFMT, true, "x");
		bool ok = l != NULL && write(fds[1], l, strlen(l)) == (ssize_t)strlen(l);

		_exit(ok ? 0 : 1);
	}
	close(fds[1]);
	n = read(fds[0], child_line, sizeof(child_line) - 1);
	close(fds[0]);
	CU_ASSERT_EQUAL(waitpid(child, &status, 0), child);
	CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	child_line[n > 0 ? n : 0] = '\0';
	CU_ASSERT(line_head_ok(child_line, (long)child));
}

static void
expect_redacted(const char *in, const char *out)
{
	struct strbuf sb;

	strbuf_init(&sb);
	log_redact_emails(in, &sb);
	CU_ASSERT_STRING_EQUAL(sb.data ? sb.data : "", out);
	strbuf_free(&sb, false);
}

static void
test_redaction_edges(void)
{
	expect_redacted("no address here", "no address here");
	expect_redacted("a@b", "[email]");
	expect_redacted("role \"x.y+z@corp.example\" and bob@example.com.",
			"role \"[email]\" and [email]");
	expect_redacted("lone @ sign, trailing@ and @leading", "lone @ sign, trailing@ and @leading");
	expect_redacted("", "");
}

void
register_log_tests(void)
{
	CU_pSuite s = CU_add_suite("log", NULL, NULL);

	CU_add_test(s, "logfmt: emails masked by default", test_logfmt_masks_emails_by_default);
	CU_add_test(s, "log_user: emails kept", test_log_user_keeps_emails);
	CU_add_test(s, "logfmt: bare, masked, quoted and escaped values", test_logfmt_value_forms);
	CU_add_test(s, "json: one object per line, numbers for status", test_json_lines_parse);
	CU_add_test(s, "masking edges", test_redaction_edges);
	CU_add_test(s, "timestamp format; a forked child logs its own pid", test_timestamp_and_pid_after_fork);
}
