/*
 * forkcount.h - notices forks, for per-process caches (the pid in log
 * lines, the request-id prefix) that a child must not inherit as they are.
 * A cache remembers forkcount_get() when it is filled and refills when the
 * value has changed: the process is then a child of the one that filled it.
 */
#ifndef LB_FORKCOUNT_H
#define LB_FORKCOUNT_H

/* How many forks this process descends from since the first call (a
 * pthread_atfork child handler counts them). Async-signal-unsafe: call it
 * from ordinary code. */
unsigned forkcount_get(void);

#endif
