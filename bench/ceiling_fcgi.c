/*
 * ceiling_fcgi.c - the HTTP ceiling of the benchmarks: a libfcgi responder
 * that does nothing but answer every request with a fixed JSON body of the
 * size a user route returns, with the same headers. Behind the same nginx
 * configuration, socket type and thread count as lakebase-fcgi, its
 * throughput bounds what any FastCGI worker can reach on this machine.
 *
 *   ceiling_fcgi --listen unix:/path/sock --threads N
 *
 * Stops on SIGTERM or SIGINT (signals are taken with sigwait, as libfcgi's
 * own SIGTERM handler only sets a flag).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fcgiapp.h>

#include "fcgx_finish.h"

/* Three rows shaped like app.todos, as /api/my/todos?limit=3 returns them. */
static const char BODY[] =
	"[{\"id\":\"9d4c7f7e-3a51-4c4e-9a7e-2f1d0c5b6a01\",\"title\":\"bench: row 1\","
	"\"done\":false,\"owner\":\"u0001@bench.example\"},"
	"{\"id\":\"9d4c7f7e-3a51-4c4e-9a7e-2f1d0c5b6a02\",\"title\":\"bench: row 2\","
	"\"done\":true,\"owner\":\"u0001@bench.example\"},"
	"{\"id\":\"9d4c7f7e-3a51-4c4e-9a7e-2f1d0c5b6a03\",\"title\":\"bench: row 3\","
	"\"done\":false,\"owner\":\"u0001@bench.example\"}]";

struct responder {
	int listen_fd;
	char head[512];
	int head_len;
};

static void *
serve_thread(void *arg)
{
	struct responder *r = arg;
	FCGX_Request req;

	if (FCGX_InitRequest(&req, r->listen_fd, 0) != 0)
		return NULL;
	while (FCGX_Accept_r(&req) >= 0) {
		/* Read what a real worker reads first: the method and the path. */
		(void)FCGX_GetParam("REQUEST_METHOD", req.envp);
		(void)FCGX_GetParam("DOCUMENT_URI", req.envp);
		FCGX_PutStr(r->head, r->head_len, req.out);
		FCGX_PutStr(BODY, (int)sizeof(BODY) - 1, req.out);
		bench_fcgx_finish(&req);
	}
	return NULL;
}

static int
parse_args(int argc, char **argv, const char **listen, int *threads)
{
	for (int i = 1; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--listen") == 0)
			*listen = argv[i + 1];
		else if (strcmp(argv[i], "--threads") == 0)
			*threads = atoi(argv[i + 1]);
		else
			return -1;
	}
	if (*listen == NULL || strncmp(*listen, "unix:", 5) != 0 || *threads < 1 || *threads > 1024)
		return -1;
	return 0;
}

int
main(int argc, char **argv)
{
	static struct responder r;
	const char *listen = NULL;
	int threads = 16, sig;
	pthread_t tid;
	sigset_t set;

	if ((argc - 1) % 2 != 0 || parse_args(argc, argv, &listen, &threads) != 0) {
		fprintf(stderr, "usage: ceiling_fcgi --listen unix:/path --threads N\n");
		return 2;
	}
	r.head_len = snprintf(r.head, sizeof(r.head),
			      "Status: 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
			      "X-Request-Id: 0123456789abcdef0123456789abcdef\r\n"
			      "Cache-Control: private, no-store\r\n"
			      "Vary: X-Forwarded-Email, X-Forwarded-Access-Token\r\n\r\n",
			      sizeof(BODY) - 1);
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (FCGX_Init() != 0)
		return 1;
	unlink(listen + 5);
	r.listen_fd = FCGX_OpenSocket(listen + 5, 1024);
	if (r.listen_fd < 0 || chmod(listen + 5, 0666) != 0) {
		fprintf(stderr, "ceiling_fcgi: cannot listen on %s: %s\n", listen, strerror(errno));
		return 1;
	}
	for (int i = 0; i < threads; i++) {
		if (pthread_create(&tid, NULL, serve_thread, &r) != 0)
			return 1;
		pthread_detach(tid);
	}
	sigwait(&set, &sig);
	unlink(listen + 5);
	_exit(0);
}
