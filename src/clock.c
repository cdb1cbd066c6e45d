/*
 * clock.c - monotonic milliseconds, and deadlines for timed waits (see
 * clock.h).
 */
#include <errno.h>

#include "clock.h"

int64_t
clock_monotonic_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void
clock_deadline_ms(struct timespec *ts, clockid_t clock, long ms)
{
	clock_gettime(clock, ts);
	if (ms <= 0)
		return;
	ts->tv_sec += (time_t)(ms / 1000);
	ts->tv_nsec += (ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

void
clock_sleep_ms(long ms)
{
	struct timespec left;

	if (ms <= 0)
		return;
	left.tv_sec = (time_t)(ms / 1000);
	left.tv_nsec = (ms % 1000) * 1000000L;
	while (nanosleep(&left, &left) == -1 && errno == EINTR)
		;
}
