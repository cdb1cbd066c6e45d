/*
 * listener.c - opening, inheriting and closing the FastCGI listening
 * socket (see listener.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "listener.h"
#include "process.h"

static const char MSG_LISTEN[] = "Cannot listen.";

/* Set when we bound a unix socket: only that very file is removed later. */
static dev_t unix_dev;
static ino_t unix_ino;

void
listener_init(struct listener *l)
{
	l->fd = -1;
	l->origin = LISTENER_NONE;
	l->unix_path = NULL;
	l->addr = NULL;
}

bool
fd_is_listening_socket(int fd)
{
	int listening = 0;
	socklen_t len = sizeof(listening);

	return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0 && listening != 0;
}

/* Whether something accepts connections on the unix socket at path. */
static bool
unix_socket_in_use(const struct sockaddr_un *sa)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	bool in_use;

	if (fd < 0)
		return false;
	in_use = connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0;
	close(fd);
	return in_use;
}

/* Clears the way for bind(): nothing, or a stale socket of a dead process. */
static int
unix_path_free(const char *path, const struct sockaddr_un *sa, struct lb_error *err)
{
	struct stat st;

	if (lstat(path, &st) != 0)
		return errno == ENOENT ? 0 :
		    lb_error_set(err, LB_ERR_INTERNAL, MSG_LISTEN, "%s: %s", path, strerror(errno));
	if (!S_ISSOCK(st.st_mode))
		return lb_error_set(err, LB_ERR_INTERNAL, MSG_LISTEN, "%s exists and is not a socket; refusing to replace it",
				    path);
	if (unix_socket_in_use(sa))
		return lb_error_set(err, LB_ERR_INTERNAL, MSG_LISTEN,
				    "%s: another process is listening on it (another instance?)", path);
	if (unlink(path) != 0 && errno != ENOENT)
		return lb_error_set(err, LB_ERR_INTERNAL, MSG_LISTEN, "cannot remove the stale socket %s: %s", path,
				    strerror(errno));
	return 0;
}

/* Owner and group of the socket file; lchown never follows a symlink
 * someone might have swapped in. */
static int
unix_socket_owner(const char *path, const struct socket_options *so, struct lb_error *err)
{
	uid_t uid = (uid_t)-1, ignored_gid;
	gid_t gid = (gid_t)-1;

	if (so->owner == NULL && so->group == NULL)
		return 0;
	if (so->owner != NULL && proc_resolve_user(so->owner, &uid, &ignored_gid, err) != 0)
		return -1;
	if (so->group != NULL && proc_resolve_group(so->group, &gid, err) != 0)
		return -1;
	if (lchown(path, uid, gid) != 0)
		return lb_error_set(err, LB_ERR_INTERNAL, MSG_LISTEN, "cannot set the owner/group of %s: %s", path,
				    strerror(errno));
	return 0;
}

static int
open_unix(struct listener *l, const char *path, const struct socket_options *so, struct lb_error *err)
{
	struct sockaddr_un sa;
	struct stat st;
	mode_t old_mask;
	int fd, rc;

	if (path[0] != '/')
		return lb_error_set(err, LB_ERR_INTERNAL, MSG_LISTEN, "unix: needs an absolute path");
	if (strlen(path) >= sizeof(sa.sun_path))
		return lb_error_set(err, LB_ERR_INTERNAL, MSG_LISTEN, "unix socket path longer than %zu bytes: %s",
				    sizeof(sa.sun_path) - 1, path);
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	memcpy(sa.sun_path, path, strlen(path));
	if (unix_path_free(path, &sa, err) != 0)
		return -1;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return lb_error_set(err, LB_ERR_INTERNAL, MSG_LISTEN, "socket: %s", strerror(errno));
	/* bind() creates the file with 0777 & ~umask: the final mode from the
	 * start (single-threaded here, so the umask is ours alone). */
	old_mask = umask((mode_t)(~so->mode & 0777));
	rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	umask(old_mask);
	if (rc != 0 || listen(fd, LISTEN_BACKLOG) != 0) {
		lb_error_set(err, LB_ERR_INTERNAL, MSG_LISTEN, "cannot listen on unix:%s: %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	l->fd = fd;
	l->unix_path = strdup(path);
	if (l->unix_path == NULL)
		return lb_error_set(err, LB_ERR_INTERNAL, MSG_LISTEN, "out of memory");
	if (lstat(path, &st) == 0) {
		unix_dev = st.st_dev;
		unix_ino = st.st_ino;
	}
	return unix_socket_owner(path, so, err);
}

/* Splits "host:port", "[v6]:port" or ":port" into host (NULL: every
 * address) and port, in buf. */
static int
split_host_port(const char *addr, char *buf, size_t buflen, const char **host, const char **port)
{
	char *colon;

	if (strlen(addr) >= buflen)
		return -1;
	memcpy(buf, addr, strlen(addr) + 1);
	colon = strrchr(buf, ':');
	if (colon == NULL || colon[1] == '\0')
		return -1;
	*colon = '\0';
	*port = colon + 1;
	*host = buf;
	if (buf[0] == '[') {
		size_t n = strlen(buf);

		if (n < 3 || buf[n - 1] != ']')
			return -1;
		buf[n - 1] = '\0';
		*host = buf + 1;
	}
	if (**host == '\0')
		*host = NULL;
	return 0;
}

static int
bind_first(const struct addrinfo *list, struct lb_error *err, const char *addr)
{
	int fd, one = 1, saved = 0;

	for (const struct addrinfo *ai = list; ai != NULL; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0) {
			saved = errno;
			continue;
		}
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, LISTEN_BACKLOG) == 0)
			return fd;
		saved = errno;
		close(fd);
	}
	return lb_error_set(err, LB_ERR_INTERNAL, MSG_LISTEN, "cannot listen on %s: %s", addr,
			    strerror(saved ? saved : EADDRNOTAVAIL));
}

static int
open_tcp(struct listener *l, const char *addr, struct lb_error *err)
{
	struct addrinfo hints, *list = NULL;
	char buf[512];
	const char *host, *port;
	int rc;

	if (split_host_port(addr, buf, sizeof(buf), &host, &port) != 0)
		return lb_error_set(err, LB_ERR_INTERNAL, MSG_LISTEN,
				    "--listen must be HOST:PORT, [IPV6]:PORT, :PORT or unix:/PATH (got %s)", addr);
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	rc = getaddrinfo(host, port, &hints, &list);
	if (rc != 0)
		return lb_error_set(err, LB_ERR_INTERNAL, MSG_LISTEN, "cannot resolve %s: %s", addr, gai_strerror(rc));
	l->fd = bind_first(list, err, addr);
	freeaddrinfo(list);
	return l->fd < 0 ? -1 : 0;
}

int
listener_open(struct listener *l, const char *addr, const struct socket_options *so, struct lb_error *err)
{
	int rc;

	listener_init(l);
	if (strncmp(addr, "unix:", 5) == 0)
		rc = open_unix(l, addr + 5, so, err);
	else
		rc = open_tcp(l, addr, err);
	if (rc != 0) {
		listener_close(l, true);
		return -1;
	}
	l->origin = LISTENER_OPENED;
	l->addr = strdup(addr);
	return 0;
}

/* Whether the listening socket fd is bound to addr ("unix:/path": that
 * path; otherwise the port of "host:port"). */
static bool
socket_is_addr(int fd, const char *addr)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	const char *colon;
	char port[8];

	memset(&ss, 0, sizeof(ss));
	if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
		return false;
	if (strncmp(addr, "unix:", 5) == 0)
		return ss.ss_family == AF_UNIX &&
		       strncmp(((struct sockaddr_un *)&ss)->sun_path, addr + 5,
			       sizeof(((struct sockaddr_un *)&ss)->sun_path)) == 0;
	colon = strrchr(addr, ':');
	if (colon == NULL || (ss.ss_family != AF_INET && ss.ss_family != AF_INET6))
		return false;
	snprintf(port, sizeof(port), "%u", ntohs(ss.ss_family == AF_INET ?
						 ((struct sockaddr_in *)&ss)->sin_port :
						 ((struct sockaddr_in6 *)&ss)->sin6_port));
	return strcmp(colon + 1, port) == 0;
}

/* addr NULL: any socket systemd passed; else only that address. */
static bool
take_systemd_socket(struct listener *l, const char *addr)
{
	const char *pid_text = getenv("LISTEN_PID");
	const char *fds_text = getenv("LISTEN_FDS");
	bool ours;

	if (pid_text == NULL || fds_text == NULL)
		return false;
	ours = strtol(pid_text, NULL, 10) == (long)getpid() && strtol(fds_text, NULL, 10) >= 1;
	/* Not for our children (or anything they might start). */
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
	if (!ours || !fd_is_listening_socket(3))   /* SD_LISTEN_FDS_START */
		return false;
	if (addr != NULL && !socket_is_addr(3, addr))
		return false;
	fcntl(3, F_SETFD, FD_CLOEXEC);
	l->fd = 3;
	l->origin = LISTENER_SYSTEMD;
	l->addr = strdup(addr != NULL ? addr : "systemd socket (fd 3)");
	return true;
}

bool
listener_inherit_systemd(struct listener *l, const char *addr)
{
	listener_init(l);
	return take_systemd_socket(l, addr);
}

bool
listener_inherit(struct listener *l)
{
	listener_init(l);
	if (take_systemd_socket(l, NULL))
		return true;
	if (!fd_is_listening_socket(0))
		return false;
	l->fd = 0;
	l->origin = LISTENER_FD0;
	l->addr = strdup("fd 0");
	return true;
}

int
listener_set_nonblocking(const struct listener *l, struct lb_error *err)
{
	int flags = fcntl(l->fd, F_GETFL);

	if (flags < 0 || fcntl(l->fd, F_SETFL, flags | O_NONBLOCK) != 0)
		return lb_error_set(err, LB_ERR_INTERNAL, MSG_LISTEN, "cannot make the listening socket non-blocking: %s",
				    strerror(errno));
	return 0;
}

void
listener_close(struct listener *l, bool remove_path)
{
	struct stat st;

	if (l->fd >= 0)
		close(l->fd);
	/* Only the file we created: a successor may already have its own there. */
	if (remove_path && l->unix_path != NULL && lstat(l->unix_path, &st) == 0 && S_ISSOCK(st.st_mode) &&
	    st.st_dev == unix_dev && st.st_ino == unix_ino)
		unlink(l->unix_path);
	free(l->unix_path);
	free(l->addr);
	listener_init(l);
}
