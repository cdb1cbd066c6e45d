/*
 * fcgx_finish.h - how the references (floor, ceiling_fcgi) end a request:
 * as the worker does (src/server.c, finish_fcgx), so that the comparison
 * stays like for like. Without keep-conn, once the input's end (the empty
 * FCGI_STDIN record) has been read, the connection is closed at once
 * instead of libfcgi's shut-down-and-wait-for-the-web-server close.
 */
#ifndef BENCH_FCGX_FINISH_H
#define BENCH_FCGX_FINISH_H

#include <fcgiapp.h>

static inline void
bench_fcgx_finish(FCGX_Request *req)
{
	if (!req->keepConnection && (FCGX_HasSeenEOF(req->in) == EOF || FCGX_GetChar(req->in) == EOF))
		FCGX_Detach(req);
	FCGX_Finish_r(req);
}

#endif
