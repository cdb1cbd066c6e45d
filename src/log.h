/*
 * log.h - structured logging to stderr, logfmt (the default) or JSON.
 *
 * One line per event: ts=... level=... pid=... msg="..." key=value..., or
 * {"ts": ..., "level": ..., "pid": ..., "msg": ..., "key": "value", ...}.
 * Callers pass key/value pairs; values are quoted and escaped here, so a
 * hostile header cannot forge log lines. Never pass a secret.
 *
 * Unless told otherwise (log_user), anything in a value that looks like an
 * email address (a Postgres role name in a login error, say) is replaced
 * by "[email]": the user's email is personal data, and logs travel.
 */
#ifndef LB_LOG_H
#define LB_LOG_H

#include <stdbool.h>

enum log_level { LOG_LVL_DEBUG = 0, LOG_LVL_INFO, LOG_LVL_WARN, LOG_LVL_ERROR };
enum log_format { LOG_FMT_LOGFMT = 0, LOG_FMT_JSON };

void log_set_level(enum log_level level);
int log_parse_level(const char *name, enum log_level *out);   /* 0 ok, -1 unknown */
void log_set_format(enum log_format format);
/* true (the default): email addresses in values are masked. */
void log_set_redact_emails(bool redact);
/* Masks email addresses in `text` into `out` (exposed for tests). */
struct strbuf;
void log_redact_emails(const char *text, struct strbuf *out);

/*
 * log_event(LOG_LVL_INFO, "request done", "request_id", id, "status", "200", NULL);
 * Pairs of key and value (const char *), terminated by NULL. A NULL value is
 * skipped.
 */
void log_event(enum log_level level, const char *msg, ...) __attribute__((sentinel));

#define log_info(...)  log_event(LOG_LVL_INFO, __VA_ARGS__, (const char *)NULL)
#define log_warn(...)  log_event(LOG_LVL_WARN, __VA_ARGS__, (const char *)NULL)
#define log_error(...) log_event(LOG_LVL_ERROR, __VA_ARGS__, (const char *)NULL)
#define log_debug(...) log_event(LOG_LVL_DEBUG, __VA_ARGS__, (const char *)NULL)

#endif
