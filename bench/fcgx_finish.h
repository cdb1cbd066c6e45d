/*
 * fcgx_finish.h - how the references (floor, ceiling_fcgi) end a request:
 * as the worker does (src/server.c, finish_fcgx), so that the comparison
 * stays like for like. Without keep-conn, once the input's end (the empty
 * FCGI_STDIN record) has been read, the connection is closed at once
 * instead of libfcgi's shut-down-and-wait-for-the-web-server close; the
 * end record is waited for a second at most.
 */
#ifndef BENCH_FCGX_FINISH_H
#define BENCH_FCGX_FINISH_H

#include <sys/socket.h>
#include <sys/time.h>

#include <fcgiapp.h>

static inline int
bench_fcgx_input_end(FCGX_Request *req)
{
	struct timeval wait = { 1, 0 };

	if (FCGX_HasSeenEOF(req->in) == EOF)
		return 1;
	(void)setsockopt(req->ipcFd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof(wait));
	return FCGX_GetChar(req->in) == EOF;
}

static inline void
bench_fcgx_finish(FCGX_Request *req)
{
	if (!req->keepConnection && bench_fcgx_input_end(req))
		FCGX_Detach(req);
	FCGX_Finish_r(req);
}

#endif
