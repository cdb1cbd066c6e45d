/*
 * no_epollexclusive.c - preloaded by test_process_model.sh into the worker:
 * epoll_ctl as on a kernel before Linux 4.5, which refuses EPOLLEXCLUSIVE
 * with EINVAL. Built by the test itself (cc -shared -fPIC).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>
#include <sys/epoll.h>

typedef int (*epoll_ctl_fn)(int, int, int, struct epoll_event *);

static epoll_ctl_fn real_epoll_ctl;

__attribute__((constructor)) static void
find_real_epoll_ctl(void)
{
	real_epoll_ctl = (epoll_ctl_fn)dlsym(RTLD_NEXT, "epoll_ctl");
}

int
epoll_ctl(int epfd, int op, int fd, struct epoll_event *event)
{
	if (event != NULL && (event->events & EPOLLEXCLUSIVE)) {
		errno = EINVAL;
		return -1;
	}
	return real_epoll_ctl(epfd, op, fd, event);
}
