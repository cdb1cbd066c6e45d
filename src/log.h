/*
 * log.h - structured logging (logfmt) to stderr.
 *
 * One line per event: ts=... level=... pid=... msg="..." key=value...
 * Callers pass key/value pairs; values are quoted and escaped here, so a
 * hostile header cannot forge log lines. Never pass a secret.
 */
#ifndef LB_LOG_H
#define LB_LOG_H

enum log_level { LOG_LVL_DEBUG = 0, LOG_LVL_INFO, LOG_LVL_WARN, LOG_LVL_ERROR };

void log_set_level(enum log_level level);
int log_parse_level(const char *name, enum log_level *out);   /* 0 ok, -1 unknown */

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
