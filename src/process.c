/*
 * process.c - users and groups, privileges, pidfile, log file, daemon and
 * systemd notification (see process.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "process.h"

/* getpw*_r / getgr*_r want a caller's buffer; this covers any sane entry. */
#define NSS_BUFFER_SIZE 16384

static const char MSG_STARTUP[] = "Cannot start.";

/* A decimal id ("33"); false for names. */
static bool
parse_id(const char *text, unsigned long *out)
{
	char *end;

	if (*text < '0' || *text > '9')
		return false;
	errno = 0;
	*out = strtoul(text, &end, 10);
	return errno == 0 && *end == '\0' && *out < (unsigned long)(uid_t)-1;
}

/* Looks a user up; name_out and home_out (optional, freed by the caller)
 * get the user's name, which initgroups needs, and home directory. */
static int
lookup_user(const char *name, uid_t *uid, gid_t *gid, char **name_out, char **home_out,
	    struct lb_error *err)
{
	struct passwd pw, *found = NULL;
	char *buf = malloc(NSS_BUFFER_SIZE);
	unsigned long id;
	int rc;

	if (buf == NULL)
		return lb_error_set(err, LB_ERR_INTERNAL, MSG_STARTUP, "out of memory looking up user %s", name);
	if (parse_id(name, &id))
		rc = getpwuid_r((uid_t)id, &pw, buf, NSS_BUFFER_SIZE, &found);
	else
		rc = getpwnam_r(name, &pw, buf, NSS_BUFFER_SIZE, &found);
	if (found == NULL) {
		free(buf);
		if (rc != 0)
			return lb_error_set(err, LB_ERR_INTERNAL, MSG_STARTUP, "cannot look up user %s: %s", name,
					    strerror(rc));
		return lb_error_set(err, LB_ERR_INTERNAL, MSG_STARTUP, "no such user: %s", name);
	}
	*uid = pw.pw_uid;
	*gid = pw.pw_gid;
	if ((name_out != NULL && (*name_out = strdup(pw.pw_name)) == NULL) ||
	    (home_out != NULL && (*home_out = strdup(pw.pw_dir)) == NULL)) {
		free(buf);
		return lb_error_set(err, LB_ERR_INTERNAL, MSG_STARTUP, "out of memory looking up user %s", name);
	}
	free(buf);
	return 0;
}

int
proc_resolve_user(const char *name, uid_t *uid, gid_t *gid, struct lb_error *err)
{
	return lookup_user(name, uid, gid, NULL, NULL, err);
}

int
proc_resolve_group(const char *name, gid_t *gid, struct lb_error *err)
{
	struct group gr, *found = NULL;
	char *buf = malloc(NSS_BUFFER_SIZE);
	unsigned long id;
	int rc;

	if (buf == NULL)
		return lb_error_set(err, LB_ERR_INTERNAL, MSG_STARTUP, "out of memory looking up group %s", name);
	if (parse_id(name, &id))
		rc = getgrgid_r((gid_t)id, &gr, buf, NSS_BUFFER_SIZE, &found);
	else
		rc = getgrnam_r(name, &gr, buf, NSS_BUFFER_SIZE, &found);
	if (found == NULL) {
		free(buf);
		if (rc != 0)
			return lb_error_set(err, LB_ERR_INTERNAL, MSG_STARTUP, "cannot look up group %s: %s", name,
					    strerror(rc));
		return lb_error_set(err, LB_ERR_INTERNAL, MSG_STARTUP, "no such group: %s", name);
	}
	*gid = gr.gr_gid;
	free(buf);
	return 0;
}

/* setgroups, setgid, setuid, in that order: after setuid we could no
 * longer change groups. */
static int
switch_ids(const char *user_name, uid_t uid, gid_t gid, struct lb_error *err)
{
	int rc;

	rc = user_name != NULL ? initgroups(user_name, gid) : setgroups(1, &gid);
	if (rc != 0)
		return lb_error_set(err, LB_ERR_INTERNAL, MSG_STARTUP, "cannot set supplementary groups: %s",
				    strerror(errno));
	if (setgid(gid) != 0)
		return lb_error_set(err, LB_ERR_INTERNAL, MSG_STARTUP, "cannot set group id %lu: %s",
				    (unsigned long)gid, strerror(errno));
	if (setuid(uid) != 0)
		return lb_error_set(err, LB_ERR_INTERNAL, MSG_STARTUP, "cannot set user id %lu: %s",
				    (unsigned long)uid, strerror(errno));
	if (uid != 0 && (setuid(0) == 0 || seteuid(0) == 0))
		return lb_error_set(err, LB_ERR_INTERNAL, MSG_STARTUP, "privileges were not dropped: root regained");
#ifdef LB_SANITIZER_BUILD
	/* Changing ids makes the process non-dumpable, and LeakSanitizer then
	 * cannot inspect it at exit. Sanitizer (test) builds only: a production
	 * worker holds credentials and must stay non-dumpable. */
	prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
#endif
	return 0;
}

int
proc_drop_privileges(const char *user, const char *group, struct lb_error *err)
{
	uid_t uid = geteuid();
	gid_t gid = getegid();
	char *user_name = NULL, *home = NULL;
	int rc;

	if (user == NULL && group == NULL)
		return 0;
	if (user != NULL && lookup_user(user, &uid, &gid, &user_name, &home, err) != 0)
		return -1;
	if (group != NULL && proc_resolve_group(group, &gid, err) != 0) {
		rc = -1;
		goto done;
	}
	if (geteuid() != 0) {
		rc = 0;
		if (uid != geteuid() || gid != getegid())
			rc = lb_error_set(err, LB_ERR_INTERNAL, MSG_STARTUP,
					  "user/group need root: running as uid %lu, asked for %s%s%s",
					  (unsigned long)geteuid(), user ? user : "", user && group ? ":" : "",
					  group ? group : "");
		goto done;
	}
	rc = switch_ids(user_name, uid, gid, err);
	/* libpq looks for client certificates under $HOME/.postgresql: root's
	 * home is out of reach now, and an unreadable file there is an error. */
	if (rc == 0 && home != NULL && (setenv("HOME", home, 1) != 0 || setenv("USER", user_name, 1) != 0 ||
					setenv("LOGNAME", user_name, 1) != 0))
		rc = lb_error_set(err, LB_ERR_INTERNAL, MSG_STARTUP, "out of memory setting HOME");
done:
	free(user_name);
	free(home);
	return rc;
}

/* ---- pidfile ---- */

static long
read_pidfile(const char *path)
{
	char buf[32];
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	long pid;
	char *end;

	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	pid = strtol(buf, &end, 10);
	if (end == buf || (*end != '\n' && *end != '\0') || pid <= 0)
		return -1;
	return pid;
}

int
proc_pidfile_write(const char *path, struct lb_error *err)
{
	long other = read_pidfile(path);
	char line[32];
	int fd, n;
	bool ok;

	if (other > 0 && other != (long)getpid() && (kill((pid_t)other, 0) == 0 || errno == EPERM))
		return lb_error_set(err, LB_ERR_INTERNAL, MSG_STARTUP,
				    "%s names a running process (pid %ld): another instance?", path, other);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0)
		return lb_error_set(err, LB_ERR_INTERNAL, MSG_STARTUP, "cannot write the pidfile %s: %s", path,
				    strerror(errno));
	n = snprintf(line, sizeof(line), "%ld\n", (long)getpid());
	ok = write(fd, line, (size_t)n) == n;
	if (close(fd) != 0)
		ok = false;
	if (!ok)
		return lb_error_set(err, LB_ERR_INTERNAL, MSG_STARTUP, "cannot write the pidfile %s", path);
	return 0;
}

void
proc_pidfile_remove(const char *path)
{
	if (path != NULL && read_pidfile(path) == (long)getpid())
		unlink(path);
}

/* ---- log file ---- */

int
proc_log_open(const char *path, uid_t owner, gid_t group, struct lb_error *err)
{
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0640);

	if (fd < 0)
		return lb_error_set(err, LB_ERR_INTERNAL, MSG_STARTUP, "cannot open the log file %s: %s", path,
				    strerror(errno));
	if (owner != (uid_t)-1 && geteuid() == 0 && fchown(fd, owner, group) != 0) {
		lb_error_set(err, LB_ERR_INTERNAL, MSG_STARTUP, "cannot give the log file %s to uid %lu: %s", path,
			     (unsigned long)owner, strerror(errno));
		close(fd);
		return -1;
	}
	if (dup2(fd, STDERR_FILENO) < 0) {
		lb_error_set(err, LB_ERR_INTERNAL, MSG_STARTUP, "cannot log to %s: %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

/* ---- daemon ---- */

int
proc_daemonize(bool keep_stderr, int *ready_fd, struct lb_error *err)
{
	int pipefd[2], devnull;
	pid_t pid;
	ssize_t n;
	char c;

	if (pipe2(pipefd, O_CLOEXEC) != 0)
		return lb_error_set(err, LB_ERR_INTERNAL, MSG_STARTUP, "pipe: %s", strerror(errno));
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0) {
		close(pipefd[0]);
		close(pipefd[1]);
		return lb_error_set(err, LB_ERR_INTERNAL, MSG_STARTUP, "fork: %s", strerror(errno));
	}
	if (pid > 0) {
		/* The launcher: succeed only once the daemon says it serves. */
		close(pipefd[1]);
		do {
			n = read(pipefd[0], &c, 1);
		} while (n < 0 && errno == EINTR);
		_exit(n == 1 ? 0 : 1);
	}
	close(pipefd[0]);
	if (setsid() < 0 || chdir("/") != 0) {
		close(pipefd[1]);
		return lb_error_set(err, LB_ERR_INTERNAL, MSG_STARTUP, "setsid/chdir: %s", strerror(errno));
	}
	devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (devnull < 0) {
		close(pipefd[1]);
		return lb_error_set(err, LB_ERR_INTERNAL, MSG_STARTUP, "/dev/null: %s", strerror(errno));
	}
	dup2(devnull, STDIN_FILENO);
	dup2(devnull, STDOUT_FILENO);
	if (!keep_stderr)
		dup2(devnull, STDERR_FILENO);
	close(devnull);
	*ready_fd = pipefd[1];
	return 0;
}

void
proc_daemon_ready(int *ready_fd)
{
	ssize_t n;

	if (*ready_fd < 0)
		return;
	do {
		n = write(*ready_fd, "R", 1);
	} while (n < 0 && errno == EINTR);
	close(*ready_fd);
	*ready_fd = -1;
}

/* ---- systemd ---- */

void
proc_notify(const char *state)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sa;
	size_t n;
	int fd;

	if (path == NULL || (path[0] != '/' && path[0] != '@'))
		return;
	n = strlen(path);
	if (n >= sizeof(sa.sun_path))
		return;
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	memcpy(sa.sun_path, path, n);
	if (sa.sun_path[0] == '@')
		sa.sun_path[0] = '\0';  /* the abstract namespace */
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	(void)sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa,
		     (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n));
	close(fd);
}

int
proc_cpu_count(void)
{
	cpu_set_t set;
	long n;

	/* The CPUs we may run on (a container or taskset may allow fewer). */
	if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
		return CPU_COUNT(&set);
	n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 ? (int)n : 1;
}

