/*
 * test_retry.c - which workspace failures are retried, the jittered
 * schedule (50 ms, 500 ms, 5 s, each +/-20 %), and the jittered credential
 * refresh time.
 */
#include <limits.h>
#include <time.h>

#include <curl/curl.h>

#include "credential.h"
#include "retry.h"
#include "unit.h"

static void
test_http_transient(void)
{
	CU_ASSERT_EQUAL(retry_classify_http(0), LB_TRANSIENT);	/* no answer */
	CU_ASSERT_EQUAL(retry_classify_http(429), LB_TRANSIENT);
	CU_ASSERT_EQUAL(retry_classify_http(500), LB_TRANSIENT);
	CU_ASSERT_EQUAL(retry_classify_http(502), LB_TRANSIENT);
	CU_ASSERT_EQUAL(retry_classify_http(503), LB_TRANSIENT);
	CU_ASSERT_EQUAL(retry_classify_http(504), LB_TRANSIENT);
	CU_ASSERT_EQUAL(retry_classify_http(599), LB_TRANSIENT);
}

static void
test_http_permanent(void)
{
	CU_ASSERT_EQUAL(retry_classify_http(400), LB_PERMANENT);
	CU_ASSERT_EQUAL(retry_classify_http(401), LB_PERMANENT);
	CU_ASSERT_EQUAL(retry_classify_http(403), LB_PERMANENT);
	CU_ASSERT_EQUAL(retry_classify_http(404), LB_PERMANENT);
	CU_ASSERT_EQUAL(retry_classify_http(409), LB_PERMANENT);
	CU_ASSERT_EQUAL(retry_classify_http(428), LB_PERMANENT);
	CU_ASSERT_EQUAL(retry_classify_http(499), LB_PERMANENT);
	CU_ASSERT_EQUAL(retry_classify_http(302), LB_PERMANENT);	/* redirects are not followed */
	CU_ASSERT_EQUAL(retry_classify_http(600), LB_PERMANENT);
}

static void
test_curl_transient(void)
{
	CU_ASSERT_EQUAL(retry_classify_curl(CURLE_COULDNT_CONNECT), LB_TRANSIENT);
	CU_ASSERT_EQUAL(retry_classify_curl(CURLE_OPERATION_TIMEDOUT), LB_TRANSIENT);
	CU_ASSERT_EQUAL(retry_classify_curl(CURLE_COULDNT_RESOLVE_HOST), LB_TRANSIENT);
	CU_ASSERT_EQUAL(retry_classify_curl(CURLE_SEND_ERROR), LB_TRANSIENT);
	CU_ASSERT_EQUAL(retry_classify_curl(CURLE_RECV_ERROR), LB_TRANSIENT);
	CU_ASSERT_EQUAL(retry_classify_curl(CURLE_GOT_NOTHING), LB_TRANSIENT);
	CU_ASSERT_EQUAL(retry_classify_curl(CURLE_PARTIAL_FILE), LB_TRANSIENT);
	CU_ASSERT_EQUAL(retry_classify_curl(CURLE_SSL_CONNECT_ERROR), LB_TRANSIENT);
}

static void
test_curl_permanent(void)
{
	CU_ASSERT_EQUAL(retry_classify_curl(CURLE_URL_MALFORMAT), LB_PERMANENT);
	CU_ASSERT_EQUAL(retry_classify_curl(CURLE_UNSUPPORTED_PROTOCOL), LB_PERMANENT);
	CU_ASSERT_EQUAL(retry_classify_curl(CURLE_PEER_FAILED_VERIFICATION), LB_PERMANENT);
	CU_ASSERT_EQUAL(retry_classify_curl(CURLE_SSL_CACERT_BADFILE), LB_PERMANENT);
	CU_ASSERT_EQUAL(retry_classify_curl(CURLE_SSL_CERTPROBLEM), LB_PERMANENT);
	CU_ASSERT_EQUAL(retry_classify_curl(CURLE_WRITE_ERROR), LB_PERMANENT);	/* answer over the cap */
	CU_ASSERT_EQUAL(retry_classify_curl(CURLE_OUT_OF_MEMORY), LB_PERMANENT);
}

static void
test_delay_bounds(void)
{
	/* random 0 gives base - 20 %, UINT_MAX gives base + 20 %. */
	CU_ASSERT_EQUAL(retry_delay_ms(0, 0), 40);
	CU_ASSERT_EQUAL(retry_delay_ms(0, UINT_MAX), 60);
	CU_ASSERT_EQUAL(retry_delay_ms(1, 0), 400);
	CU_ASSERT_EQUAL(retry_delay_ms(1, UINT_MAX), 600);
	CU_ASSERT_EQUAL(retry_delay_ms(2, 0), 4000);
	CU_ASSERT_EQUAL(retry_delay_ms(2, UINT_MAX), 6000);
	CU_ASSERT_EQUAL(retry_delay_ms(1, UINT_MAX / 2), 499);
}

static void
test_delay_jitter_spread(void)
{
	unsigned int r = 12345;
	long lo = 100000, hi = 0, d;

	/* a simple LCG walks the whole random range */
	for (int i = 0; i < 10000; i++) {
		r = r * 1103515245u + 12345u;
		d = retry_delay_ms(2, r);
		lo = d < lo ? d : lo;
		hi = d > hi ? d : hi;
	}
	CU_ASSERT(lo >= 4000 && lo < 4100);
	CU_ASSERT(hi <= 6000 && hi > 5900);
}

static void
test_schedule_exhausted(void)
{
	CU_ASSERT_EQUAL(retry_delay_ms(3, 0), -1);
	CU_ASSERT_EQUAL(retry_delay_ms(-1, 0), -1);
	CU_ASSERT_EQUAL(RETRY_MAX_ATTEMPTS, 4);
}

/* Credential refresh times: the margin (at most half the lifetime), less
 * up to a quarter of it at random; none for margins under 4 s. */
static void
test_refresh_time_jitter(void)
{
	time_t t0 = 1000000, earliest = t0 + 3600, latest = 0, at;

	/* One hour, 120 s margin: between 120 and 90 s before expiry. */
	for (unsigned int r = 0; r < 200; r++) {
		at = credential_refresh_time(120, t0, t0 + 3600, r * 7919u);
		if (at < earliest)
			earliest = at;
		if (at > latest)
			latest = at;
	}
	CU_ASSERT_EQUAL(earliest, t0 + 3600 - 120);
	CU_ASSERT_EQUAL(latest, t0 + 3600 - 90);
	CU_ASSERT_EQUAL(credential_refresh_time(120, t0, t0 + 3600, UINT_MAX), t0 + 3600 - 120 + (UINT_MAX % 31));
	/* Half the lifetime caps the margin; a 3 s margin is not jittered. */
	CU_ASSERT_EQUAL(credential_refresh_time(120, t0, t0 + 6, 0), t0 + 3);
	CU_ASSERT_EQUAL(credential_refresh_time(120, t0, t0 + 6, 12345), t0 + 3);
	CU_ASSERT_EQUAL(credential_refresh_time(0, t0, t0 + 3600, 12345), t0 + 3600);
}

/* A statement whose connection failed runs again only where it cannot
 * have committed, or where running it twice changes nothing (GET). */
static void
test_statement_retry(void)
{
	/* Ended by an administrator instead of answering: nothing committed. */
	CU_ASSERT_TRUE(retry_statement("57P01", true));
	CU_ASSERT_TRUE(retry_statement("57P01", false));
	/* No answer, a connection exception, a crash: maybe committed. */
	CU_ASSERT_TRUE(retry_statement(NULL, true));
	CU_ASSERT_FALSE(retry_statement(NULL, false));
	CU_ASSERT_TRUE(retry_statement("08006", true));
	CU_ASSERT_FALSE(retry_statement("08006", false));
	CU_ASSERT_TRUE(retry_statement("57P02", true));
	CU_ASSERT_FALSE(retry_statement("57P02", false));
	/* The statement's own error is its answer, whatever the method. */
	CU_ASSERT_FALSE(retry_statement("23505", false));
	CU_ASSERT_FALSE(retry_statement("42P01", true));
	CU_ASSERT_FALSE(retry_statement("57014", true));
	CU_ASSERT_FALSE(retry_statement("57P0", true));
	CU_ASSERT_FALSE(retry_statement("", true));
}

void
register_retry_tests(void)
{
	CU_pSuite s = CU_add_suite("retry", NULL, NULL);

	CU_add_test(s, "HTTP 0, 429 and 5xx are transient", test_http_transient);
	CU_add_test(s, "other HTTP statuses are permanent", test_http_permanent);
	CU_add_test(s, "network curl errors are transient", test_curl_transient);
	CU_add_test(s, "configuration and TLS curl errors are permanent", test_curl_permanent);
	CU_add_test(s, "delay bounds: 50/500/5000 ms +/-20 %", test_delay_bounds);
	CU_add_test(s, "jitter spreads over the whole range", test_delay_jitter_spread);
	CU_add_test(s, "schedule ends after three retries", test_schedule_exhausted);
	CU_add_test(s, "credential refresh: margin, half-life cap, jitter", test_refresh_time_jitter);
	CU_add_test(s, "a failed statement runs again only where it cannot apply twice",
		    test_statement_retry);
}
