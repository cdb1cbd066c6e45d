/*
 * listener.h - the FastCGI listening socket: opened by us (--listen,
 * TCP or unix), or inherited from whoever started us: systemd socket
 * activation (LISTEN_FDS, fd 3) or a FastCGI process manager (mod_fcgid,
 * spawn-fcgi: fd 0).
 */
#ifndef LB_LISTENER_H
#define LB_LISTENER_H

#include <stdbool.h>

#include "error.h"

#define LISTEN_BACKLOG 1024
#define SOCKET_MODE_DEFAULT 0660

enum listener_origin {
	LISTENER_NONE = 0,
	LISTENER_OPENED,     /* --listen / "listen": we bound it */
	LISTENER_SYSTEMD,    /* socket activation */
	LISTENER_FD0         /* a process manager's socket on fd 0 */
};

struct listener {
	int fd;                  /* -1: none */
	enum listener_origin origin;
	char *unix_path;         /* a unix socket we created: removed on close */
	char *addr;              /* for logs: "unix:/run/x.sock", "127.0.0.1:9000", "fd 0" */
};

struct socket_options {
	int mode;                /* a unix socket's permission bits */
	const char *owner;       /* NULL: the process's own */
	const char *group;
};

void listener_init(struct listener *l);

/*
 * Binds and listens on "HOST:PORT", "[V6]:PORT", ":PORT" (every address)
 * or "unix:/PATH". A unix socket is created with no access for anyone,
 * then given its owner, group and mode, so there is no moment where others
 * can connect. A path where another process still listens is refused; a
 * stale socket file left by a dead one is replaced; anything else at the
 * path is refused.
 */
int listener_open(struct listener *l, const char *addr, const struct socket_options *so,
		  struct lb_error *err);

/* Takes a socket passed by systemd (LISTEN_PID/LISTEN_FDS) or a listening
 * socket on fd 0. Returns false when there is none. */
bool listener_inherit(struct listener *l);

/*
 * With --listen ADDR and socket activation both: takes systemd's socket
 * when it is ADDR (the same unix path, or the same TCP port), so one unit
 * file serves with or without its .socket unit. False otherwise.
 */
bool listener_inherit_systemd(struct listener *l, const char *addr);

/* Whether fd is a socket in the listening state. */
bool fd_is_listening_socket(int fd);

/* Accepts never block (several processes and threads wait on one socket,
 * and only one of them gets each connection). Connections accepted from
 * it stay blocking: Linux does not pass O_NONBLOCK on through accept. */
int listener_set_nonblocking(const struct listener *l, struct lb_error *err);

/* Closes the socket; remove_path also unlinks a unix socket we created. */
void listener_close(struct listener *l, bool remove_path);

#endif
