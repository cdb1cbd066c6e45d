/*
 * delayproxy.c - a TCP proxy on loopback that delays every byte by a fixed
 * time each way, so a database on this host answers as one a network away
 * would (round trip = twice the delay). For bench/run.sh's cold-rtt
 * scenario: what a first request costs in round trips, not in CPU.
 *
 *   delayproxy --listen PORT --to PORT --delay-us N
 *
 * Data is never reordered or throttled: each chunk read is written on no
 * earlier than N µs after it arrived. One thread, ppoll with a nanosecond
 * timeout; a bench helper, not part of the product.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_PAIRS 512
#define CHUNK_MAX 65536

struct chunk {
	struct chunk *next;
	int64_t release_ns;
	size_t len, off;
	char data[];
};

/* Bytes from one socket on their way to the other. */
struct direction {
	int from, to;
	bool eof;
	struct chunk *head, *tail;
};

struct pair {
	bool used;
	struct direction d[2];	/* client -> server, server -> client */
};

static struct pair pairs[MAX_PAIRS];
static int64_t delay_ns;

static int64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void
die(const char *what)
{
	perror(what);
	exit(1);
}

/* Every socket here: no Nagle delay of its own, never blocking the loop. */
static void
socket_tune(int fd)
{
	int one = 1;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static int
loopback_socket(int port, bool listening)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0)
		return -1;
	if (listening) {
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, 128) != 0)
			die("listen");
	} else if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		close(fd);
		return -1;
	}
	socket_tune(fd);
	return fd;
}

static void
pair_close(struct pair *p)
{
	for (int i = 0; i < 2; i++) {
		struct chunk *c = p->d[i].head, *next;

		for (; c != NULL; c = next) {
			next = c->next;
			free(c);
		}
	}
	close(p->d[0].from);
	close(p->d[0].to);
	memset(p, 0, sizeof(*p));
}

static void
accept_one(int listener, int to_port)
{
	int client = accept(listener, NULL, NULL), server, i;

	if (client < 0)
		return;
	for (i = 0; i < MAX_PAIRS && pairs[i].used; i++)
		;
	server = i < MAX_PAIRS ? loopback_socket(to_port, false) : -1;
	if (server < 0) {
		close(client);
		return;
	}
	socket_tune(client);
	pairs[i] = (struct pair){ .used = true,
				  .d = { { .from = client, .to = server }, { .from = server, .to = client } } };
}

/* Reads what is there into a new chunk released delay_ns from now. */
static void
direction_read(struct direction *d)
{
	struct chunk *c = malloc(sizeof(*c) + CHUNK_MAX);
	ssize_t n;

	if (c == NULL)
		die("malloc");
	n = read(d->from, c->data, CHUNK_MAX);
	if (n <= 0) {
		free(c);
		if (n == 0 || (errno != EAGAIN && errno != EINTR))
			d->eof = true;
		return;
	}
	*c = (struct chunk){ .release_ns = now_ns() + delay_ns, .len = (size_t)n };
	if (d->tail != NULL)
		d->tail->next = c;
	else
		d->head = c;
	d->tail = c;
}

/* Writes the chunks whose time has come; false when the peer is gone. */
static bool
direction_write(struct direction *d, int64_t now)
{
	struct chunk *c;

	while ((c = d->head) != NULL && c->release_ns <= now) {
		ssize_t n = write(d->to, c->data + c->off, c->len - c->off);

		if (n < 0)
			return errno == EAGAIN || errno == EINTR;
		c->off += (size_t)n;
		if (c->off < c->len)
			return true;
		d->head = c->next;
		if (d->head == NULL)
			d->tail = NULL;
		free(c);
	}
	return true;
}

/* Delivers what is due both ways; closes the pair once a side has ended
 * and what it sent is delivered, or a peer is gone. */
static void
pair_flush(struct pair *p, int64_t now)
{
	for (int k = 0; p->used && k < 2; k++) {
		struct direction *d = &p->d[k];

		if (!direction_write(d, now) || (d->eof && d->head == NULL))
			pair_close(p);
	}
}

static void
usage(void)
{
	fprintf(stderr, "usage: delayproxy --listen PORT --to PORT --delay-us N\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	static struct pollfd fds[1 + 2 * MAX_PAIRS];
	static struct direction *owner[1 + 2 * MAX_PAIRS];
	int listen_port = 0, to_port = 0, listener, i;

	for (i = 1; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--listen") == 0)
			listen_port = atoi(argv[i + 1]);
		else if (strcmp(argv[i], "--to") == 0)
			to_port = atoi(argv[i + 1]);
		else if (strcmp(argv[i], "--delay-us") == 0)
			delay_ns = (int64_t)atol(argv[i + 1]) * 1000;
		else
			usage();
	}
	if (i != argc || listen_port <= 0 || listen_port > 65535 || to_port <= 0 || to_port > 65535 ||
	    delay_ns < 0)
		usage();
	signal(SIGPIPE, SIG_IGN);
	listener = loopback_socket(listen_port, true);
	for (;;) {
		int64_t now = now_ns(), wake = INT64_MAX;
		nfds_t n = 1;
		struct timespec timeout, *tp = NULL;

		for (i = 0; i < MAX_PAIRS; i++)
			pair_flush(&pairs[i], now);
		fds[0] = (struct pollfd){ .fd = listener, .events = POLLIN };
		for (i = 0; i < MAX_PAIRS; i++) {
			for (int k = 0; pairs[i].used && k < 2; k++) {
				struct direction *d = &pairs[i].d[k];
				bool blocked = d->head != NULL && d->head->release_ns <= now;

				if (d->head != NULL && !blocked && d->head->release_ns < wake)
					wake = d->head->release_ns;
				/* An ended side is polled no more (POLLHUP would spin). */
				fds[n] = (struct pollfd){ .fd = d->eof ? -1 : d->from, .events = POLLIN };
				owner[n++] = d;
				if (blocked) {
					fds[n] = (struct pollfd){ .fd = d->to, .events = POLLOUT };
					owner[n++] = NULL;
				}
			}
		}
		if (wake != INT64_MAX) {
			timeout = (struct timespec){ .tv_sec = (wake - now) / 1000000000,
						     .tv_nsec = (wake - now) % 1000000000 };
			tp = &timeout;
		}
		if (ppoll(fds, n, tp, NULL) < 0 && errno != EINTR)
			die("ppoll");
		if (fds[0].revents & POLLIN)
			accept_one(listener, to_port);
		for (nfds_t j = 1; j < n; j++) {
			if (owner[j] != NULL && (fds[j].revents & (POLLIN | POLLHUP | POLLERR)))
				direction_read(owner[j]);
		}
	}
}
