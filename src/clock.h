/*
 * clock.h - monotonic milliseconds, and deadlines for timed waits.
 *
 * One place for the timespec arithmetic that every timed wait needs
 * (pthread_cond_timedwait on a CLOCK_MONOTONIC condition variable,
 * pthread_mutex_timedlock on CLOCK_REALTIME), and for sleeping.
 */
#ifndef LB_CLOCK_H
#define LB_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Milliseconds on CLOCK_MONOTONIC: for intervals, never for dates. */
int64_t clock_monotonic_ms(void);

/* *ts = now on `clock` plus `ms` (ms <= 0: now), normalised (tv_nsec below
 * one second), as the absolute deadline of a timed wait on that clock. */
void clock_deadline_ms(struct timespec *ts, clockid_t clock, long ms);

/* Sleeps `ms` milliseconds, restarted on EINTR (ms <= 0: returns at once). */
void clock_sleep_ms(long ms);

#endif
