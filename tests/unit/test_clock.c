/*
 * test_clock.c - deadlines for timed waits: normalised, at least `ms` from
 * now on the requested clock, "now" for ms <= 0.
 */
#include <time.h>

#include "clock.h"
#include "unit.h"

static int64_t
ts_ms(const struct timespec *ts)
{
	return (int64_t)ts->tv_sec * 1000 + ts->tv_nsec / 1000000;
}

static void
check_deadline(clockid_t clock, long ms)
{
	struct timespec before, deadline, after;

	clock_gettime(clock, &before);
	clock_deadline_ms(&deadline, clock, ms);
	clock_gettime(clock, &after);
	CU_ASSERT_TRUE(deadline.tv_nsec >= 0 && deadline.tv_nsec < 1000000000L);
	CU_ASSERT_TRUE(ts_ms(&deadline) >= ts_ms(&before) + (ms > 0 ? ms : 0));
	CU_ASSERT_TRUE(ts_ms(&deadline) <= ts_ms(&after) + (ms > 0 ? ms : 0));
}

static void
test_deadline_normalised(void)
{
	/* 999 and 1999 ms carry into tv_sec for most start times; 0 and
	 * negative mean now. */
	for (int i = 0; i < 50; i++) {
		check_deadline(CLOCK_MONOTONIC, 999);
		check_deadline(CLOCK_MONOTONIC, 1999);
		check_deadline(CLOCK_REALTIME, 1500);
		check_deadline(CLOCK_MONOTONIC, 0);
		check_deadline(CLOCK_MONOTONIC, -5);
	}
}

static void
test_monotonic_ms_matches_clock(void)
{
	struct timespec ts;
	int64_t a, b;

	a = clock_monotonic_ms();
	clock_gettime(CLOCK_MONOTONIC, &ts);
	b = clock_monotonic_ms();
	CU_ASSERT_TRUE(a <= ts_ms(&ts) && ts_ms(&ts) <= b);
}

static void
test_sleep(void)
{
	int64_t a = clock_monotonic_ms();

	clock_sleep_ms(30);
	CU_ASSERT(clock_monotonic_ms() - a >= 30);
	a = clock_monotonic_ms();
	clock_sleep_ms(0);
	clock_sleep_ms(-5);	/* return at once */
	CU_ASSERT(clock_monotonic_ms() - a < 1000);	/* not a sleep, nor an unsigned wrap */
}

void
register_clock_tests(void)
{
	CU_pSuite s = CU_add_suite("clock", NULL, NULL);

	CU_add_test(s, "deadlines: normalised, now + ms on the given clock, now for ms <= 0",
		    test_deadline_normalised);
	CU_add_test(s, "monotonic milliseconds follow CLOCK_MONOTONIC", test_monotonic_ms_matches_clock);
	CU_add_test(s, "sleep lasts at least the delay; none for ms <= 0", test_sleep);
}
