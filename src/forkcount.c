/*
 * forkcount.c - a fork counter (see forkcount.h).
 */
#include <pthread.h>
#include <stdatomic.h>

#include "forkcount.h"

static atomic_uint forks;
static pthread_once_t handler_once = PTHREAD_ONCE_INIT;

static void
count_fork(void)
{
	atomic_fetch_add(&forks, 1);
}

static void
register_handler(void)
{
	pthread_atfork(NULL, NULL, count_fork);
}

unsigned
forkcount_get(void)
{
	pthread_once(&handler_once, register_handler);
	return atomic_load(&forks);
}
