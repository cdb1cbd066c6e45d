/*
 * retry.c - transient versus permanent failures of workspace calls, and the
 * jittered retry schedule, and which failed statements may run again (see
 * retry.h).
 */
#include <limits.h>
#include <stdint.h>
#include <string.h>

#include <curl/curl.h>

#include "retry.h"

/* Base delays before retry 0, 1, 2 (the lakebase-auth schedule). */
static const long retry_base_ms[] = { 50, 500, 5000 };

#define RETRY_SCHEDULE_LEN ((int)(sizeof(retry_base_ms) / sizeof(retry_base_ms[0])))

enum lb_transience
retry_classify_http(long status)
{
	/* 0: the request got no answer at all (dropped connection). */
	if (status == 0 || status == 429)
		return LB_TRANSIENT;
	if (status >= 500 && status <= 599)
		return LB_TRANSIENT;
	return LB_PERMANENT;
}

enum lb_transience
retry_classify_curl(int curl_code)
{
	switch ((CURLcode)curl_code) {
	case CURLE_COULDNT_RESOLVE_PROXY:
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_CONNECT:
	case CURLE_PARTIAL_FILE:
	case CURLE_OPERATION_TIMEDOUT:
	case CURLE_SSL_CONNECT_ERROR:	/* handshake cut short, not a bad certificate */
	case CURLE_GOT_NOTHING:
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_AGAIN:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
	case CURLE_HTTP3:
		return LB_TRANSIENT;
	default:
		/* Malformed URL, unsupported protocol, certificate verification,
		 * an answer over the size cap...: trying again cannot help. */
		return LB_PERMANENT;
	}
}

long
retry_delay_ms(int retry, unsigned int random)
{
	long base, span;

	if (retry < 0 || retry >= RETRY_SCHEDULE_LEN)
		return -1;
	base = retry_base_ms[retry];
	/* base - 20 % + random share of 40 %: 0 gives the low end, UINT_MAX the high. */
	span = base * 2 / 5;
	return base - base / 5 + (long)((uint64_t)random * (uint64_t)span / UINT_MAX);
}

bool
retry_statement(const char *sqlstate, bool read_only)
{
	if (sqlstate != NULL && strcmp(sqlstate, "57P01") == 0)
		return true;
	/* No answer, or a connection exception (class 08) or a crash
	 * (57P02, sent at any point, even after the commit): unknown. */
	return read_only && (sqlstate == NULL || strncmp(sqlstate, "08", 2) == 0 ||
			     strcmp(sqlstate, "57P02") == 0);
}
