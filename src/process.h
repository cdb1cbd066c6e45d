/*
 * process.h - process-level plumbing shared by the supervisor and the
 * single-process modes: user and group lookup, dropping privileges, the
 * pidfile, the log file (reopened on SIGUSR1), running as a daemon, and
 * telling systemd (Type=notify) how we are doing. Nothing here knows
 * FastCGI or the request path.
 */
#ifndef LB_PROCESS_H
#define LB_PROCESS_H

#include <stdbool.h>
#include <sys/types.h>

#include "error.h"

/* A user or group, by name or number. */
int proc_resolve_user(const char *name, uid_t *uid, gid_t *gid, struct lb_error *err);
int proc_resolve_group(const char *name, gid_t *gid, struct lb_error *err);

/*
 * Becomes `user` (and `group`, else the user's primary group), with the
 * user's supplementary groups. Both NULL: nothing to do. Without root, only
 * "becoming" who we already are succeeds. Afterwards regaining root must
 * fail, and that is checked.
 */
int proc_drop_privileges(const char *user, const char *group, struct lb_error *err);

/*
 * Writes our pid to `path`. Refuses when the file names a live process
 * other than us (another instance). proc_pidfile_remove only removes a file
 * that still holds our pid.
 */
int proc_pidfile_write(const char *path, struct lb_error *err);
void proc_pidfile_remove(const char *path);

/*
 * Points stderr (where log.c writes) at `path`, opened for appending and
 * created 0640. With owner >= 0 a new file is given to that user and group
 * (the supervisor runs as root, its workers as `user`, and both reopen it).
 * Called again on SIGUSR1 after the file was rotated away.
 */
int proc_log_open(const char *path, uid_t owner, gid_t group, struct lb_error *err);

/*
 * Detaches from the terminal: fork, setsid, chdir("/"), stdin and stdout to
 * /dev/null (stderr too unless a log file holds it). The original process
 * waits and exits 0 once proc_daemon_ready(*ready_fd) is called, 1 if the
 * daemon dies first, so the command's exit status says whether it started.
 */
int proc_daemonize(bool keep_stderr, int *ready_fd, struct lb_error *err);
void proc_daemon_ready(int *ready_fd);

/* sd_notify(3) without libsystemd: "READY=1", "RELOADING=1", "STOPPING=1".
 * Nothing happens when NOTIFY_SOCKET is unset. */
void proc_notify(const char *state);

/* Online CPUs, at least 1. */
int proc_cpu_count(void);

#endif
