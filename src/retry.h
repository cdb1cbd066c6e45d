/*
 * retry.h - which failures are worth retrying, and when.
 *
 * Transient: network errors, timeouts, HTTP 429 and 5xx. Permanent: every
 * other 4xx (400, 401, 403, 404...) fails at once. The schedule is 50 ms,
 * 500 ms, 5 s, each with +/-20 % jitter so that processes that failed
 * together do not retry together.
 *
 * A request whose pooled connection failed under it is run again, once, on
 * a new connection only when that cannot apply its statement twice
 * (retry_statement).
 */
#ifndef LB_RETRY_H
#define LB_RETRY_H

#include <stdbool.h>

#include "error.h"

#define RETRY_MAX_ATTEMPTS 4   /* the first try plus three retries */

/* HTTP status of a workspace answer (0 = no answer). */
enum lb_transience retry_classify_http(long status);
/* A libcurl CURLcode (as int, so this header needs no curl.h). */
enum lb_transience retry_classify_curl(int curl_code);

/*
 * Delay before retry number `retry` (0, 1, 2), jittered with `random`
 * (any 32-bit value; callers use RAND_bytes). Returns -1 when the schedule
 * is exhausted.
 */
long retry_delay_ms(int retry, unsigned int random);

/*
 * May a request be run again on a new connection after its reused one
 * failed under it (closed, or ended by the server)? sqlstate is the
 * failure's, NULL when the server sent no answer at all. 57P01 (ended by
 * an administrator) comes in place of a statement's answer only when the
 * statement did not commit, so any route may run again. A connection
 * that died without an answer, or with another error, may have committed
 * it before the answer was lost: only a read-only route (GET) runs again.
 */
bool retry_statement(const char *sqlstate, bool read_only);

#endif
