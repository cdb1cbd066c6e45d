/*
 * test_shm.c - the credential cache's shared-memory segment: creation and
 * attaching, the files it refuses (permissions, owner, symlink, not a
 * regular file, foreign content), incompatible layouts and other
 * deployments' segments (recreated when unused, refused in use), recovery of the robust lock from a process
 * SIGKILLed while holding it, futex waits that a killed waiter cannot
 * wedge, LRU eviction that skips slots being refreshed, wiping, stale
 * claims, and the host-wide connection counts.
 *
 * Every wait on another process is bounded (poll, timed lock, alarm), so a
 * regression fails the suite instead of hanging it. A second suite checks
 * the cache's configuration keys.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* By path: the build root holds autoconf's own config.h. */
#include "../../src/config.h"
#include "clock.h"
#include "log.h"
#include "shm.h"
#include "unit.h"

#define KEY "credential_cache.path"

static char test_dir[64];
static char test_path[128];

static const unsigned char FP_A[SHM_FP_LEN] = { 0xaa, 1 };
static const unsigned char FP_B[SHM_FP_LEN] = { 0xbb, 2 };
static const unsigned char FP_C[SHM_FP_LEN] = { 0xcc, 3 };
static const unsigned char FP_D[SHM_FP_LEN] = { 0xdd, 4 };
static const unsigned char FP_E[SHM_FP_LEN] = { 0xee, 5 };

static int
suite_init(void)
{
	log_set_level(LOG_LVL_ERROR);	/* recoveries and takeovers warn: expected here */
	return 0;
}

static int
suite_cleanup(void)
{
	log_set_level(LOG_LVL_INFO);
	return 0;
}

/* A fresh directory and segment path for one test. */
static void
fresh_path(void)
{
	snprintf(test_dir, sizeof(test_dir), "/tmp/lb-shm-test.XXXXXX");
	CU_ASSERT_FATAL(mkdtemp(test_dir) != NULL);
	snprintf(test_path, sizeof(test_path), "%s/credentials.shm", test_dir);
}

static void
remove_path(void)
{
	unlink(test_path);
	rmdir(test_dir);
}

static struct shm *
attach(uint32_t nslots, struct lb_error *err)
{
	lb_error_clear(err);
	return shm_attach(test_path, nslots, true, NULL, KEY, err);
}

static bool
contains(const char *text, const char *part)
{
	return strstr(text, part) != NULL;
}

/* Gives slot i a credential valid for an hour. */
static void
give_credential(struct shm *s, int i, const char *value)
{
	struct shm_slot *sl = shm_slot(s, (uint32_t)i);

	CU_ASSERT_EQUAL(shm_store_secret(s, (uint32_t)i, SHM_CRED, value, strlen(value), NULL), 0);
	sl->expires_at = (int64_t)time(NULL) + 3600;
	sl->refresh_at = sl->expires_at - 120;
}

static bool
bytes_all_zero(const void *p, size_t n)
{
	const unsigned char *b = p;

	for (size_t i = 0; i < n; i++) {
		if (b[i] != 0)
			return false;
	}
	return true;
}

/* Waits (bounded) for one byte from a child. */
static bool
read_byte(int fd, int timeout_ms)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	char c;

	return poll(&pfd, 1, timeout_ms) == 1 && read(fd, &c, 1) == 1;
}

/* ---- creating and attaching ---- */

static void
test_create_and_attach(void)
{
	struct lb_error err;
	struct shm *a, *b;
	struct stat st;

	fresh_path();
	a = attach(8, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(a);
	CU_ASSERT_EQUAL(stat(test_path, &st), 0);
	CU_ASSERT_TRUE(S_ISREG(st.st_mode));
	CU_ASSERT_EQUAL(st.st_mode & 07777, 0600);
	CU_ASSERT_EQUAL(memcmp(shm_header(a)->magic, SHM_MAGIC, 8), 0);
	CU_ASSERT_EQUAL(shm_header(a)->layout_version, SHM_LAYOUT_VERSION);
	CU_ASSERT_EQUAL(shm_nslots(a), 8);
	CU_ASSERT_EQUAL(shm_slot(a, SHM_SLOT_SP)->kind, SHM_KIND_SP);
	CU_ASSERT_EQUAL(shm_slot(a, SHM_SLOT_SP_OAUTH)->kind, SHM_KIND_SP_OAUTH);
	CU_ASSERT_EQUAL(shm_header(a)->writing_slot, -1);
	CU_ASSERT_EQUAL((uint64_t)st.st_size, shm_header(a)->total_size);

	/* A second attachment (its own open file description, like another
	 * process) shares the memory and keeps the segment's slot count. */
	b = attach(64, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(b);
	CU_ASSERT_EQUAL(shm_nslots(b), 8);
	shm_lock(a);
	CU_ASSERT_TRUE(shm_insert(a, "alice@example.com", FP_A, &err) >= SHM_FIRST_USER_SLOT);
	shm_unlock(a);
	shm_lock(b);
	CU_ASSERT_EQUAL(shm_find(b, "alice@example.com", FP_A), shm_find(a, "alice@example.com", FP_A));
	CU_ASSERT_EQUAL(shm_find(b, "alice@example.com", FP_B), -1);	/* another token */
	CU_ASSERT_EQUAL(shm_find(b, "bob@example.com", FP_A), -1);
	shm_unlock(b);
	shm_detach(b);
	shm_detach(a);

	/* The segment outlives its processes: a new attachment finds alice. */
	a = attach(8, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(a);
	shm_lock(a);
	CU_ASSERT_TRUE(shm_find(a, "alice@example.com", FP_A) >= SHM_FIRST_USER_SLOT);
	shm_unlock(a);
	shm_detach(a);
	remove_path();
}

static void
test_empty_file_is_initialised(void)
{
	struct lb_error err;
	struct shm *s;
	int fd;

	fresh_path();
	fd = open(test_path, O_CREAT | O_EXCL | O_WRONLY, 0600);
	CU_ASSERT_FATAL(fd >= 0);
	close(fd);
	s = attach(8, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	CU_ASSERT_EQUAL(memcmp(shm_header(s)->magic, SHM_MAGIC, 8), 0);
	shm_detach(s);
	remove_path();
}

static void
test_missing_directory_names_the_key(void)
{
	struct lb_error err;
	struct shm *s;

	lb_error_clear(&err);
	s = shm_attach("/tmp/lb-shm-test-no-such-dir/sub/credentials.shm", 8, true, NULL, KEY, &err);
	CU_ASSERT_PTR_NULL(s);
	CU_ASSERT_TRUE(contains(err.detail, "credential_cache.path: /tmp/lb-shm-test-no-such-dir/sub/credentials.shm: "
				"directory /tmp/lb-shm-test-no-such-dir/sub does not exist"));
	/* Without create (--cache-status), a missing file is said plainly. */
	fresh_path();
	s = shm_attach(test_path, 8, false, NULL, KEY, &err);
	CU_ASSERT_PTR_NULL(s);
	CU_ASSERT_TRUE(contains(err.detail, "no credential cache here"));
	CU_ASSERT_EQUAL(access(test_path, F_OK), -1);	/* and nothing was created */
	remove_path();
	s = shm_attach("relative/credentials.shm", 8, true, NULL, KEY, &err);
	CU_ASSERT_PTR_NULL(s);
	CU_ASSERT_TRUE(contains(err.detail, "must be an absolute path"));
}

/* ---- files refused ---- */

static void
test_refuses_group_or_other_access(void)
{
	static const mode_t modes[] = { 0640, 0604, 0660, 0606 };
	struct lb_error err;
	struct shm *s;
	char expected[64];

	fresh_path();
	s = attach(8, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	shm_detach(s);
	for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
		CU_ASSERT_EQUAL(chmod(test_path, modes[i]), 0);
		s = attach(8, &err);
		CU_ASSERT_PTR_NULL(s);
		snprintf(expected, sizeof(expected), "has mode %04o: group and others", (unsigned)modes[i]);
		CU_ASSERT_TRUE(contains(err.detail, expected));
		CU_ASSERT_TRUE(contains(err.detail, "credential_cache.path"));
		CU_ASSERT_TRUE(contains(err.detail, "refusing"));
		shm_detach(s);
	}
	remove_path();
}

static void
test_refuses_file_of_another_user(void)
{
	struct lb_error err;
	struct shm *s;

	if (geteuid() != 0) {
		CU_PASS("needs root to chown");
		return;
	}
	fresh_path();
	s = attach(8, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	shm_detach(s);
	CU_ASSERT_EQUAL(chown(test_path, 65534, 65534), 0);
	s = attach(8, &err);
	CU_ASSERT_PTR_NULL(s);
	CU_ASSERT_TRUE(contains(err.detail, "is owned by uid 65534, not by this process's uid 0"));
	remove_path();
}

static void
test_refuses_symlink_and_non_regular_file(void)
{
	char target[160];
	struct lb_error err;
	struct shm *s;

	fresh_path();
	snprintf(target, sizeof(target), "%s/real.shm", test_dir);
	s = shm_attach(target, 8, true, NULL, KEY, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	shm_detach(s);
	CU_ASSERT_EQUAL(symlink(target, test_path), 0);
	s = attach(8, &err);
	CU_ASSERT_PTR_NULL(s);
	CU_ASSERT_TRUE(contains(err.detail, "is a symbolic link; refusing to follow it"));
	unlink(test_path);
	unlink(target);

	CU_ASSERT_EQUAL(mkfifo(test_path, 0600), 0);
	s = attach(8, &err);
	CU_ASSERT_PTR_NULL(s);
	CU_ASSERT_TRUE(contains(err.detail, "is not a regular file"));
	remove_path();
}

static void
test_refuses_foreign_file(void)
{
	static const char content[] = "someone's data, not a credential cache\n";
	char back[sizeof(content)];
	struct lb_error err;
	struct shm *s;
	int fd;

	fresh_path();
	fd = open(test_path, O_CREAT | O_EXCL | O_WRONLY, 0600);
	CU_ASSERT_FATAL(fd >= 0);
	CU_ASSERT_EQUAL(write(fd, content, sizeof(content) - 1), (ssize_t)sizeof(content) - 1);
	close(fd);
	s = attach(8, &err);
	CU_ASSERT_PTR_NULL(s);
	CU_ASSERT_TRUE(contains(err.detail, "is not a lakebase-fcgi credential cache"));
	/* Left exactly as it was. */
	fd = open(test_path, O_RDONLY);
	CU_ASSERT_EQUAL(read(fd, back, sizeof(back)), (ssize_t)sizeof(content) - 1);
	close(fd);
	CU_ASSERT_EQUAL(memcmp(back, content, sizeof(content) - 1), 0);
	remove_path();
}

/* Overwrites the layout version in the file, as another build would have. */
static void
write_layout_version(uint32_t version)
{
	int fd = open(test_path, O_WRONLY);

	CU_ASSERT_FATAL(fd >= 0);
	CU_ASSERT_EQUAL(pwrite(fd, &version, sizeof(version), offsetof(struct shm_header, layout_version)),
			(ssize_t)sizeof(version));
	close(fd);
}

static void
test_incompatible_layout_recreated_when_unused(void)
{
	struct lb_error err;
	struct shm *s;
	int i;

	fresh_path();
	s = attach(8, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	shm_lock(s);
	i = shm_insert(s, "alice@example.com", FP_A, &err);
	give_credential(s, i, "old-secret-of-the-old-layout");
	shm_unlock(s);
	shm_detach(s);
	write_layout_version(SHM_LAYOUT_VERSION + 41);
	s = attach(8, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	CU_ASSERT_EQUAL(shm_header(s)->layout_version, SHM_LAYOUT_VERSION);
	shm_lock(s);
	CU_ASSERT_EQUAL(shm_find(s, "alice@example.com", FP_A), -1);	/* a new, empty segment */
	CU_ASSERT_TRUE(bytes_all_zero(shm_secret(s, (uint32_t)i), sizeof(struct shm_secret)));
	shm_unlock(s);
	shm_detach(s);
	remove_path();
}

static void
test_incompatible_layout_refused_in_use(void)
{
	struct lb_error err;
	struct shm *user, *s;
	char expected[80];

	fresh_path();
	user = attach(8, &err);	/* holds the segment like a running worker */
	CU_ASSERT_PTR_NOT_NULL_FATAL(user);
	write_layout_version(SHM_LAYOUT_VERSION + 41);
	s = attach(8, &err);
	CU_ASSERT_PTR_NULL(s);
	snprintf(expected, sizeof(expected), "layout version %u (this program uses %u)", SHM_LAYOUT_VERSION + 41,
		 SHM_LAYOUT_VERSION);
	CU_ASSERT_TRUE(contains(err.detail, expected));
	CU_ASSERT_TRUE(contains(err.detail, "in use by other processes"));
	write_layout_version(SHM_LAYOUT_VERSION);
	shm_detach(user);
	remove_path();
}

/* ---- deployments ---- */

static const unsigned char OWNER_A[SHM_OWNER_LEN] = { 'A', 1 };
static const unsigned char OWNER_B[SHM_OWNER_LEN] = { 'B', 2 };

static struct shm *
attach_owned(const unsigned char *owner, struct lb_error *err)
{
	lb_error_clear(err);
	return shm_attach(test_path, 8, true, owner, KEY, err);
}

/* Deployment A's SP credential, M2M token and SCIM role, and a user. */
static void
fill_as_deployment(struct shm *s)
{
	struct lb_error err;
	int i;

	shm_lock(s);
	give_credential(s, SHM_SLOT_SP, "password-of-sp-a");
	snprintf(shm_slot(s, SHM_SLOT_SP)->role, SHM_ROLE_MAX + 1, "role-of-sp-a");
	give_credential(s, SHM_SLOT_SP_OAUTH, "m2m-token-of-sp-a");
	i = shm_insert(s, "alice@example.com", FP_A, &err);
	CU_ASSERT_TRUE(i >= SHM_FIRST_USER_SLOT);
	give_credential(s, i, "password-of-alice-on-a");
	shm_unlock(s);
}

static void
test_same_deployment_keeps_contents(void)
{
	struct lb_error err;
	struct shm *a, *again;

	fresh_path();
	a = attach_owned(OWNER_A, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(a);
	CU_ASSERT_EQUAL(memcmp(shm_header(a)->owner, OWNER_A, SHM_OWNER_LEN), 0);
	fill_as_deployment(a);
	again = attach_owned(OWNER_A, &err);	/* another process of A, A still running */
	CU_ASSERT_PTR_NOT_NULL_FATAL(again);
	shm_detach(a);
	shm_detach(again);
	a = attach_owned(OWNER_A, &err);	/* A restarted */
	CU_ASSERT_PTR_NOT_NULL_FATAL(a);
	CU_ASSERT_EQUAL(shm_slot(a, SHM_SLOT_SP)->cred_len, strlen("password-of-sp-a"));
	CU_ASSERT_STRING_EQUAL(shm_slot(a, SHM_SLOT_SP)->role, "role-of-sp-a");
	shm_detach(a);
	remove_path();
}

static void
test_other_deployment_recreated_when_unused(void)
{
	struct lb_error err;
	struct shm *s;

	fresh_path();
	s = attach_owned(OWNER_A, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	fill_as_deployment(s);
	shm_detach(s);
	/* B (or A with another SP, endpoint...) starts once A is gone: nothing of A's. */
	s = attach_owned(OWNER_B, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	CU_ASSERT_EQUAL(memcmp(shm_header(s)->owner, OWNER_B, SHM_OWNER_LEN), 0);
	shm_lock(s);
	CU_ASSERT_EQUAL(shm_slot(s, SHM_SLOT_SP)->cred_len, 0);
	CU_ASSERT_EQUAL(shm_slot(s, SHM_SLOT_SP)->role[0], '\0');
	CU_ASSERT_EQUAL(shm_slot(s, SHM_SLOT_SP_OAUTH)->cred_len, 0);
	CU_ASSERT_TRUE(bytes_all_zero(shm_secret(s, SHM_SLOT_SP), sizeof(struct shm_secret)));
	CU_ASSERT_TRUE(bytes_all_zero(shm_secret(s, SHM_SLOT_SP_OAUTH), sizeof(struct shm_secret)));
	CU_ASSERT_EQUAL(shm_find(s, "alice@example.com", FP_A), -1);
	shm_unlock(s);
	shm_detach(s);
	remove_path();
}

static void
test_other_deployment_refused_in_use(void)
{
	struct lb_error err;
	struct shm *a, *b, *reader;

	fresh_path();
	a = attach_owned(OWNER_A, &err);	/* holds the segment like a running worker of A */
	CU_ASSERT_PTR_NOT_NULL_FATAL(a);
	fill_as_deployment(a);
	b = attach_owned(OWNER_B, &err);
	CU_ASSERT_PTR_NULL(b);
	CU_ASSERT_TRUE(contains(err.detail, KEY));
	CU_ASSERT_TRUE(contains(err.detail, test_path));
	CU_ASSERT_TRUE(contains(err.detail, "another deployment"));
	CU_ASSERT_TRUE(contains(err.detail, "give each deployment its own " KEY));
	CU_ASSERT_FALSE(contains(err.detail, "password-of"));
	/* A's contents are untouched, and a reader (--cache-status) still attaches. */
	CU_ASSERT_EQUAL(memcmp(shm_header(a)->owner, OWNER_A, SHM_OWNER_LEN), 0);
	CU_ASSERT_STRING_EQUAL(shm_slot(a, SHM_SLOT_SP)->role, "role-of-sp-a");
	CU_ASSERT_EQUAL(shm_slot(a, SHM_SLOT_SP)->cred_len, strlen("password-of-sp-a"));
	lb_error_clear(&err);
	reader = shm_attach(test_path, 8, false, NULL, KEY, &err);
	CU_ASSERT_PTR_NOT_NULL(reader);
	shm_detach(reader);
	shm_detach(a);
	remove_path();
}

/* ---- the robust lock ---- */

/*
 * A child locks the segment, starts writing a credential into `victim`
 * (half of it written), tells the parent, and waits to be killed. The
 * parent SIGKILLs it and locks: the lock is recovered, the half-written
 * slot is gone, the others are intact.
 */
static void
kill_child_mid_write(struct shm *s, uint32_t victim)
{
	int pipefd[2];
	pid_t pid;

	CU_ASSERT_FATAL(pipe(pipefd) == 0);
	pid = fork();
	CU_ASSERT_FATAL(pid >= 0);
	if (pid == 0) {
		struct shm_secret *sec = shm_secret(s, victim);

		shm_lock(s);
		shm_begin_write(s, victim);
		shm_slot(s, victim)->cred_len = 0;
		memset(sec->cred, 'T', 100);	/* half a credential: torn */
		if (write(pipefd[1], "x", 1) != 1)
			_exit(1);
		for (;;)
			pause();
	}
	close(pipefd[1]);
	CU_ASSERT_TRUE(read_byte(pipefd[0], 5000));
	close(pipefd[0]);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
}

static void
test_lock_recovered_after_owner_killed(void)
{
	struct lb_error err;
	struct shm *s;
	int a, b;

	fresh_path();
	s = attach(8, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	shm_lock(s);
	a = shm_insert(s, "alice@example.com", FP_A, &err);
	b = shm_insert(s, "bob@example.com", FP_B, &err);
	give_credential(s, a, "alice-credential");
	give_credential(s, b, "bob-credential");
	give_credential(s, SHM_SLOT_SP, "sp-credential");
	shm_unlock(s);

	kill_child_mid_write(s, (uint32_t)a);
	CU_ASSERT_EQUAL_FATAL(shm_lock_timed(s, 5000), 0);	/* no deadlock */
	CU_ASSERT_EQUAL(shm_header(s)->counters[SHM_LOCK_RECOVERIES], 1);
	CU_ASSERT_EQUAL(shm_header(s)->writing_slot, -1);
	CU_ASSERT_EQUAL(shm_find(s, "alice@example.com", FP_A), -1);	/* the torn slot: gone */
	CU_ASSERT_EQUAL(shm_slot(s, (uint32_t)a)->kind, SHM_KIND_FREE);
	CU_ASSERT_TRUE(bytes_all_zero(shm_secret(s, (uint32_t)a), sizeof(struct shm_secret)));
	CU_ASSERT_EQUAL(shm_find(s, "bob@example.com", FP_B), b);	/* the others: intact */
	CU_ASSERT_EQUAL(shm_slot(s, (uint32_t)b)->cred_len, strlen("bob-credential"));
	CU_ASSERT_EQUAL(memcmp(shm_secret(s, (uint32_t)b)->cred, "bob-credential", 14), 0);
	shm_unlock(s);

	/* The SP's slot torn: emptied, still the SP's. */
	kill_child_mid_write(s, SHM_SLOT_SP);
	CU_ASSERT_EQUAL_FATAL(shm_lock_timed(s, 5000), 0);
	CU_ASSERT_EQUAL(shm_header(s)->counters[SHM_LOCK_RECOVERIES], 2);
	CU_ASSERT_EQUAL(shm_slot(s, SHM_SLOT_SP)->kind, SHM_KIND_SP);
	CU_ASSERT_EQUAL(shm_slot(s, SHM_SLOT_SP)->cred_len, 0);
	CU_ASSERT_TRUE(bytes_all_zero(shm_secret(s, SHM_SLOT_SP), sizeof(struct shm_secret)));
	CU_ASSERT_EQUAL(shm_find(s, "bob@example.com", FP_B), b);
	shm_unlock(s);
	/* And the lock works normally afterwards. */
	shm_lock(s);
	shm_unlock(s);
	shm_detach(s);
	remove_path();
}

/* ---- waiting ---- */

struct waiter {
	struct shm *s;
	int64_t waited_ms;
};

static void *
wait_thread(void *arg)
{
	struct waiter *w = arg;
	int64_t t0 = clock_monotonic_ms();

	shm_lock(w->s);
	shm_wait(w->s, 5000);
	shm_unlock(w->s);
	w->waited_ms = clock_monotonic_ms() - t0;
	return NULL;
}

/*
 * shm_wait returns on a wake, and a waiter SIGKILLed inside it does not
 * stop the next wake (glibc 2.36's process-shared condvar would hang).
 */
static void
test_wait_wake_survives_killed_waiter(void)
{
	struct waiter w = { 0 };
	struct lb_error err;
	pthread_t thread;
	int64_t t0, t1;
	pid_t pid;

	fresh_path();
	w.s = attach(8, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(w.s);
	pid = fork();
	CU_ASSERT_FATAL(pid >= 0);
	if (pid == 0) {
		shm_lock(w.s);
		shm_wait(w.s, 60000);
		_exit(0);
	}
	/* Until the child waits (the waiter count says so), then kill it there. */
	t0 = clock_monotonic_ms();
	while (__atomic_load_n(&shm_header(w.s)->waiters, __ATOMIC_SEQ_CST) == 0 &&
	       clock_monotonic_ms() - t0 < 5000)
		usleep(1000);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);

	alarm(20);	/* a hang here kills the runner: a failure, never a stuck CI */
	CU_ASSERT_EQUAL_FATAL(pthread_create(&thread, NULL, wait_thread, &w), 0);
	usleep(100000);
	t1 = clock_monotonic_ms();
	shm_lock(w.s);
	shm_wake_all(w.s);
	shm_unlock(w.s);
	CU_ASSERT_TRUE(clock_monotonic_ms() - t1 < 1000);
	pthread_join(thread, NULL);
	alarm(0);
	CU_ASSERT_TRUE(w.waited_ms < 2000);	/* woken, not timed out at 5 s */

	/* Without a wake, a wait ends at its timeout. */
	shm_lock(w.s);
	t0 = clock_monotonic_ms();
	shm_wait(w.s, 50);
	t1 = clock_monotonic_ms();
	shm_unlock(w.s);
	CU_ASSERT_TRUE(t1 - t0 >= 40 && t1 - t0 < 2000);
	shm_detach(w.s);
	remove_path();
}

/* ---- slots ---- */

static void
test_eviction_lru_skips_refreshing_slots(void)
{
	struct lb_error err;
	struct shm *s;
	int a, b, c, d, e;

	fresh_path();
	s = attach(5, &err);	/* two reserved slots, three for users */
	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	shm_lock(s);
	a = shm_insert(s, "a@example.com", FP_A, &err);
	b = shm_insert(s, "b@example.com", FP_B, &err);
	c = shm_insert(s, "c@example.com", FP_C, &err);
	CU_ASSERT_TRUE(a >= 0 && b >= 0 && c >= 0 && a != b && b != c && a != c);
	give_credential(s, a, "credential-a");
	give_credential(s, b, "credential-b");
	give_credential(s, c, "credential-c");
	shm_touch(s, (uint32_t)a);	/* LRU order now: b, c, a */
	shm_claim(s, (uint32_t)b, clock_monotonic_ms() + 60000);	/* b is being refreshed */
	CU_ASSERT_TRUE(shm_claim_active(s, (uint32_t)b));

	d = shm_insert(s, "d@example.com", FP_D, &err);
	CU_ASSERT_EQUAL(d, c);	/* c: the least recently used not being refreshed */
	CU_ASSERT_EQUAL(shm_find(s, "c@example.com", FP_C), -1);
	CU_ASSERT_EQUAL(shm_find(s, "b@example.com", FP_B), b);
	CU_ASSERT_EQUAL(shm_find(s, "a@example.com", FP_A), a);
	CU_ASSERT_EQUAL(shm_header(s)->counters[SHM_EVICTIONS], 1);

	/* A slot without a valid credential goes before valid ones, even one
	 * used more recently. */
	give_credential(s, d, "credential-d");
	shm_touch(s, (uint32_t)a);
	shm_slot(s, (uint32_t)a)->expires_at = (int64_t)time(NULL) - 1;
	e = shm_insert(s, "e@example.com", FP_E, &err);
	CU_ASSERT_EQUAL(e, a);
	CU_ASSERT_EQUAL(shm_find(s, "d@example.com", FP_D), d);

	/* Every user slot being refreshed: refused, nothing evicted. */
	shm_claim(s, (uint32_t)d, clock_monotonic_ms() + 60000);
	shm_claim(s, (uint32_t)e, clock_monotonic_ms() + 60000);
	CU_ASSERT_EQUAL(shm_insert(s, "f@example.com", FP_A, &err), -1);
	CU_ASSERT_EQUAL(err.code, LB_ERR_UNAVAILABLE);
	CU_ASSERT_TRUE(contains(err.detail, "credential cache full"));
	shm_unlock(s);
	shm_detach(s);
	remove_path();
}

/* The bytes of a secret are nowhere in the segment's secrets once evicted. */
static void
test_eviction_wipes_secrets(void)
{
	static const char secret[] = "eyJTHIS-IS-A-CREDENTIAL-THAT-MUST-BE-WIPED-0123456789";
	static const char bearer[] = "USER-WORKSPACE-TOKEN-THAT-MUST-BE-WIPED";
	struct lb_error err;
	struct shm *s;
	const char *secrets;
	size_t region;
	int a, b;

	fresh_path();
	s = attach(4, &err);	/* two user slots */
	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	shm_lock(s);
	a = shm_insert(s, "a@example.com", FP_A, &err);
	give_credential(s, a, secret);
	CU_ASSERT_EQUAL(shm_store_secret(s, (uint32_t)a, SHM_BEARER, bearer, strlen(bearer), NULL), 0);
	b = shm_insert(s, "b@example.com", FP_B, &err);
	give_credential(s, b, "credential-b");
	shm_touch(s, (uint32_t)b);
	CU_ASSERT_EQUAL(shm_insert(s, "c@example.com", FP_C, &err), a);	/* evicts a */
	secrets = (const char *)shm_secret(s, 0);
	region = (size_t)shm_nslots(s) * sizeof(struct shm_secret);
	CU_ASSERT_PTR_NULL(memmem(secrets, region, secret, strlen(secret)));
	CU_ASSERT_PTR_NULL(memmem(secrets, region, bearer, strlen(bearer)));
	CU_ASSERT_EQUAL(shm_slot(s, (uint32_t)a)->cred_len, 0);
	CU_ASSERT_EQUAL(shm_slot(s, (uint32_t)a)->bearer_len, 0);
	CU_ASSERT_STRING_EQUAL(shm_slot(s, (uint32_t)a)->email, "c@example.com");

	/* Overwriting wipes the old bytes too, and removal wipes everything. */
	give_credential(s, b, "short");
	CU_ASSERT_PTR_NULL(memmem(secrets, region, "credential-b", 12));
	shm_remove(s, (uint32_t)b);
	CU_ASSERT_TRUE(bytes_all_zero(shm_secret(s, (uint32_t)b), sizeof(struct shm_secret)));
	CU_ASSERT_TRUE(bytes_all_zero(shm_slot(s, (uint32_t)b)->email, sizeof(shm_slot(s, 0)->email)));
	shm_unlock(s);
	shm_detach(s);
	remove_path();
}

/* A wipe leaves the whole field zero, though it clears only the secret's
 * bytes: a store clears the field first, so nothing lies past the length. */
static void
test_wipe_leaves_the_field_zero(void)
{
	static const char long_secret[] = "A-LONG-CREDENTIAL-0123456789-0123456789-0123456789-0123456789";
	struct lb_error err;
	struct shm *s;
	int a;

	fresh_path();
	s = attach(4, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	shm_lock(s);
	a = shm_insert(s, "a@example.com", FP_A, &err);
	CU_ASSERT_FATAL(a >= 0);
	give_credential(s, a, long_secret);
	give_credential(s, a, "short");
	shm_wipe_secret(s, (uint32_t)a, SHM_CRED);
	CU_ASSERT_EQUAL(shm_slot(s, (uint32_t)a)->cred_len, 0);
	CU_ASSERT_TRUE(bytes_all_zero(shm_secret(s, (uint32_t)a)->cred, SHM_SECRET_CAP));
	/* Wiping a field never stored leaves it zero. */
	shm_wipe_secret(s, (uint32_t)a, SHM_BEARER);
	CU_ASSERT_EQUAL(shm_slot(s, (uint32_t)a)->bearer_len, 0);
	CU_ASSERT_TRUE(bytes_all_zero(shm_secret(s, (uint32_t)a)->bearer, SHM_SECRET_CAP));
	shm_unlock(s);
	shm_detach(s);
	remove_path();
}

static void
test_secret_over_capacity_is_refused(void)
{
	struct lb_error err;
	struct shm *s;
	char *big;
	int a;

	fresh_path();
	s = attach(4, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	big = malloc(SHM_SECRET_CAP + 2);
	CU_ASSERT_PTR_NOT_NULL_FATAL(big);
	memset(big, 'x', SHM_SECRET_CAP + 1);
	big[SHM_SECRET_CAP + 1] = '\0';
	shm_lock(s);
	a = shm_insert(s, "a@example.com", FP_A, &err);
	give_credential(s, a, "the-current-credential");
	lb_error_clear(&err);
	CU_ASSERT_EQUAL(shm_store_secret(s, (uint32_t)a, SHM_CRED, big, SHM_SECRET_CAP + 1, &err), -1);
	CU_ASSERT_TRUE(contains(err.detail, "a credential of 4097 bytes exceeds the credential cache's "
				"capacity of 4096 bytes"));
	/* Never truncated, and the current credential is untouched. */
	CU_ASSERT_EQUAL(shm_slot(s, (uint32_t)a)->cred_len, strlen("the-current-credential"));
	CU_ASSERT_EQUAL(memcmp(shm_secret(s, (uint32_t)a)->cred, "the-current-credential", 22), 0);
	/* Exactly the capacity fits. */
	CU_ASSERT_EQUAL(shm_store_secret(s, (uint32_t)a, SHM_CRED, big, SHM_SECRET_CAP, &err), 0);
	CU_ASSERT_EQUAL(shm_slot(s, (uint32_t)a)->cred_len, SHM_SECRET_CAP);
	shm_unlock(s);
	free(big);
	shm_detach(s);
	remove_path();
}

/* ---- claims and processes ---- */

static void
test_stale_claims_are_taken_over(void)
{
	struct lb_error err;
	struct shm *s;
	int pipefd[2];
	pid_t pid;
	int a;

	fresh_path();
	s = attach(4, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	shm_lock(s);
	a = shm_insert(s, "a@example.com", FP_A, &err);
	/* Past its deadline, though alive (us): taken over. */
	shm_claim(s, (uint32_t)a, clock_monotonic_ms() - 1);
	CU_ASSERT_FALSE(shm_claim_active(s, (uint32_t)a));
	CU_ASSERT_EQUAL(shm_slot(s, (uint32_t)a)->claim_pid, 0);
	CU_ASSERT_EQUAL(shm_header(s)->counters[SHM_CLAIM_TAKEOVERS], 1);
	shm_unlock(s);

	/* Claimed by a process that died: taken over before its deadline. */
	CU_ASSERT_FATAL(pipe(pipefd) == 0);
	pid = fork();
	CU_ASSERT_FATAL(pid >= 0);
	if (pid == 0) {
		shm_lock(s);
		shm_claim(s, (uint32_t)a, clock_monotonic_ms() + 600000);
		shm_unlock(s);
		if (write(pipefd[1], "x", 1) != 1)
			_exit(1);
		for (;;)
			pause();
	}
	close(pipefd[1]);
	CU_ASSERT_TRUE(read_byte(pipefd[0], 5000));
	close(pipefd[0]);
	shm_lock(s);
	CU_ASSERT_TRUE(shm_claim_active(s, (uint32_t)a));	/* alive: respected */
	shm_unlock(s);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	shm_lock(s);
	CU_ASSERT_FALSE(shm_claim_active(s, (uint32_t)a));
	CU_ASSERT_EQUAL(shm_header(s)->counters[SHM_CLAIM_TAKEOVERS], 2);
	shm_unlock(s);
	CU_ASSERT_FALSE(shm_proc_alive(pid, 0));
	CU_ASSERT_TRUE(shm_proc_alive(getpid(), shm_self_start()));
	CU_ASSERT_FALSE(shm_proc_alive(getpid(), shm_self_start() + 1));	/* a reused pid */
	shm_detach(s);
	remove_path();
}

/*
 * A claim queued for a while (a hand-off) is extended when its mint starts,
 * unless it was taken over meanwhile: then it is someone else's, and the
 * old holder must not mint.
 */
static void
test_claim_extended_only_while_held(void)
{
	struct lb_error err;
	struct shm *s;
	uint64_t queued, takeover;
	int64_t later;
	int a;

	fresh_path();
	s = attach(4, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	shm_lock(s);
	a = shm_insert(s, "a@example.com", FP_A, &err);
	queued = shm_claim(s, (uint32_t)a, clock_monotonic_ms() + 1000);
	later = clock_monotonic_ms() + 600000;
	CU_ASSERT_TRUE(shm_claim_extend(s, (uint32_t)a, queued, later));
	CU_ASSERT_EQUAL(shm_slot(s, (uint32_t)a)->claim_deadline_ms, later);
	CU_ASSERT_TRUE(shm_claim_active(s, (uint32_t)a));

	/* Overdue while queued: taken over, and claimed anew by another request. */
	shm_slot(s, (uint32_t)a)->claim_deadline_ms = clock_monotonic_ms() - 1;
	CU_ASSERT_FALSE(shm_claim_active(s, (uint32_t)a));
	CU_ASSERT_FALSE(shm_claim_extend(s, (uint32_t)a, queued, later));	/* taken over */
	takeover = shm_claim(s, (uint32_t)a, clock_monotonic_ms() + 1000);
	CU_ASSERT_FALSE(shm_claim_extend(s, (uint32_t)a, queued, later));	/* not the old one's */
	CU_ASSERT_NOT_EQUAL(shm_slot(s, (uint32_t)a)->claim_deadline_ms, later);
	CU_ASSERT_TRUE(shm_claim_is(s, (uint32_t)a, takeover));
	shm_claim_release(s, (uint32_t)a);
	CU_ASSERT_FALSE(shm_claim_extend(s, (uint32_t)a, takeover, later));	/* released */
	shm_unlock(s);
	shm_detach(s);
	remove_path();
}

static void
test_host_connection_budget(void)
{
	struct lb_error err;
	struct shm *s;
	int pipefd[2];
	pid_t pid;

	fresh_path();
	s = attach(4, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	CU_ASSERT_EQUAL(shm_conn_take(s, 3), 0);
	CU_ASSERT_EQUAL(shm_conn_take(s, 3), 0);
	/* Another process holds the third and dies holding it. */
	CU_ASSERT_FATAL(pipe(pipefd) == 0);
	pid = fork();
	CU_ASSERT_FATAL(pid >= 0);
	if (pid == 0) {
		char r = shm_conn_take(s, 3) == 0 && shm_conn_take(s, 3) == -1 ? 'y' : 'n';

		if (write(pipefd[1], &r, 1) != 1)
			_exit(1);
		for (;;)
			pause();
	}
	close(pipefd[1]);
	{
		struct pollfd pfd = { .fd = pipefd[0], .events = POLLIN };
		char r = 0;

		CU_ASSERT_EQUAL(poll(&pfd, 1, 5000), 1);
		CU_ASSERT_EQUAL(read(pipefd[0], &r, 1), 1);
		CU_ASSERT_EQUAL(r, 'y');	/* the child got one, then hit the cap */
	}
	close(pipefd[0]);
	CU_ASSERT_EQUAL(shm_conn_take(s, 3), -1);	/* 2 + 1 of 3: at the cap */
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	CU_ASSERT_EQUAL(shm_conn_take(s, 3), 0);	/* the dead child's share reclaimed */
	CU_ASSERT_EQUAL(shm_conn_take(s, 3), -1);
	shm_conn_give(s, 2);
	CU_ASSERT_EQUAL(shm_conn_take(s, 3), 0);
	CU_ASSERT_EQUAL(shm_conn_take(s, 3), 0);
	CU_ASSERT_EQUAL(shm_conn_take(s, 3), -1);
	shm_detach(s);	/* gives this process's entry back */
	s = attach(4, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	CU_ASSERT_EQUAL(shm_conn_take(s, 1), 0);
	shm_detach(s);
	remove_path();
}

/* ---- configuration ---- */

static const char *const *cache_env;

static const char *
cache_getenv(const char *name)
{
	size_t n = strlen(name);

	for (const char *const *e = cache_env; e != NULL && *e != NULL; e++) {
		if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
			return *e + n + 1;
	}
	return NULL;
}

static const char *const env_base[] = {
	"DATABRICKS_HOST=https://ws.example.com", "DATABRICKS_TOKEN=dapi-test",
	"LAKEBASE_ENDPOINT=projects/p/branches/b/endpoints/e", "PGHOST=pg.example.com", NULL
};

static const char *const env_path[] = {
	"DATABRICKS_HOST=https://ws.example.com", "DATABRICKS_TOKEN=dapi-test",
	"LAKEBASE_ENDPOINT=projects/p/branches/b/endpoints/e", "PGHOST=pg.example.com",
	"LAKEBASE_CREDENTIAL_CACHE_PATH=/srv/cache/creds.shm", NULL
};

static const char *const env_relative[] = {
	"DATABRICKS_HOST=https://ws.example.com", "DATABRICKS_TOKEN=dapi-test",
	"LAKEBASE_ENDPOINT=projects/p/branches/b/endpoints/e", "PGHOST=pg.example.com",
	"LAKEBASE_CREDENTIAL_CACHE_PATH=cache/creds.shm", NULL
};

static struct lb_config *
load_cache_config(const char *json, const char *const *env, struct config_problems *p)
{
	cache_env = env;
	return config_load_string(json, cache_getenv, NULL, p);
}

/* The config is refused with exactly one problem, `expected`. */
static void
expect_one_problem(const char *json, const char *const *env, const char *expected)
{
	struct config_problems p;
	struct lb_config *cfg = load_cache_config(json, env, &p);
	char got[256] = "";

	CU_ASSERT_PTR_NULL(cfg);
	CU_ASSERT_EQUAL(p.count, 1);
	if (p.count >= 1)
		snprintf(got, sizeof(got), "%s: %s", p.items[0].path, p.items[0].message);
	CU_ASSERT_STRING_EQUAL(got, expected);
	config_free(cfg);
	config_problems_free(&p);
}

static void
test_cache_config_defaults(void)
{
	struct config_problems p;
	struct lb_config *cfg = load_cache_config("{}", env_base, &p);

	CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
	CU_ASSERT_STRING_EQUAL(cfg->cache_path, "/run/lakebase-fcgi/credentials.shm");
	CU_ASSERT_EQUAL(cfg->cache_slots, 4096);
	CU_ASSERT_STRING_EQUAL(cfg->cache_sp_refresh, "eager");
	CU_ASSERT_STRING_EQUAL(cfg->cache_user_refresh, "lazy");
	CU_ASSERT_EQUAL(cfg->max_host_connections, 0);
	config_free(cfg);
	config_problems_free(&p);
}

static void
test_cache_config_keys_and_environment(void)
{
	static const char json[] =
		"{ \"credential_cache\": { \"path\": \"/var/lib/lb/c.shm\", \"slots\": 64,"
		"  \"sp_refresh\": \"lazy\", \"user_refresh\": \"eager\" },"
		"  \"max_host_connections\": 40 }";
	struct config_problems p;
	struct lb_config *cfg = load_cache_config(json, env_base, &p);

	CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
	CU_ASSERT_STRING_EQUAL(cfg->cache_path, "/var/lib/lb/c.shm");
	CU_ASSERT_EQUAL(cfg->cache_slots, 64);
	CU_ASSERT_STRING_EQUAL(cfg->cache_sp_refresh, "lazy");
	CU_ASSERT_STRING_EQUAL(cfg->cache_user_refresh, "eager");
	CU_ASSERT_EQUAL(cfg->max_host_connections, 40);
	config_free(cfg);
	config_problems_free(&p);
	/* The environment wins over the file. */
	cfg = load_cache_config(json, env_path, &p);
	CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
	CU_ASSERT_STRING_EQUAL(cfg->cache_path, "/srv/cache/creds.shm");
	config_free(cfg);
	config_problems_free(&p);
}

static void
test_cache_config_errors_name_the_key(void)
{
	expect_one_problem("{ \"credential_cache\": { \"slots\": 2 } }", env_base,
			   "credential_cache.slots: must be between 4 and 262144");
	expect_one_problem("{ \"credential_cache\": { \"sp_refresh\": \"sometimes\" } }", env_base,
			   "credential_cache.sp_refresh: must be one of: eager, lazy");
	expect_one_problem("{ \"credential_cache\": { \"user_refresh\": 1 } }", env_base,
			   "credential_cache.user_refresh: must be a string");
	expect_one_problem("{ \"credential_cache\": { \"path\": \"creds.shm\" } }", env_base,
			   "credential_cache.path: must be an absolute path");
	expect_one_problem("{}", env_relative, "LAKEBASE_CREDENTIAL_CACHE_PATH: must be an absolute path");
	expect_one_problem("{ \"credential_cache\": { \"size\": 1 } }", env_base,
			   "credential_cache.size: unknown key");
	expect_one_problem("{ \"max_host_connections\": -1 }", env_base,
			   "max_host_connections: must be between 0 and 1000000");
}

void
register_shm_tests(void)
{
	CU_pSuite s = CU_add_suite("shm", suite_init, suite_cleanup);

	CU_add_test(s, "create 0600, attach, share, outlive processes", test_create_and_attach);
	CU_add_test(s, "an empty file is initialised", test_empty_file_is_initialised);
	CU_add_test(s, "missing directory: error names the key", test_missing_directory_names_the_key);
	CU_add_test(s, "group/other permission bits refused", test_refuses_group_or_other_access);
	CU_add_test(s, "a file owned by another uid refused", test_refuses_file_of_another_user);
	CU_add_test(s, "symlink and non-regular file refused", test_refuses_symlink_and_non_regular_file);
	CU_add_test(s, "a foreign file refused and left alone", test_refuses_foreign_file);
	CU_add_test(s, "incompatible layout recreated when unused", test_incompatible_layout_recreated_when_unused);
	CU_add_test(s, "incompatible layout refused while in use", test_incompatible_layout_refused_in_use);
	CU_add_test(s, "the same deployment keeps its contents", test_same_deployment_keeps_contents);
	CU_add_test(s, "another deployment's segment recreated when unused",
		    test_other_deployment_recreated_when_unused);
	CU_add_test(s, "another deployment's segment refused while in use",
		    test_other_deployment_refused_in_use);
	CU_add_test(s, "robust lock recovered after SIGKILL mid-write", test_lock_recovered_after_owner_killed);
	CU_add_test(s, "futex wait/wake survives a killed waiter", test_wait_wake_survives_killed_waiter);
	CU_add_test(s, "LRU eviction skips slots being refreshed", test_eviction_lru_skips_refreshing_slots);
	CU_add_test(s, "eviction and overwrite wipe secrets", test_eviction_wipes_secrets);
	CU_add_test(s, "a wipe leaves the whole field zero", test_wipe_leaves_the_field_zero);
	CU_add_test(s, "a secret over capacity is refused, never truncated", test_secret_over_capacity_is_refused);
	CU_add_test(s, "stale claims (dead or overdue) taken over", test_stale_claims_are_taken_over);
	CU_add_test(s, "a claim is extended only while still held", test_claim_extended_only_while_held);
	CU_add_test(s, "host connection budget, dead process reclaimed", test_host_connection_budget);

	s = CU_add_suite("credential cache config", NULL, NULL);
	CU_add_test(s, "defaults", test_cache_config_defaults);
	CU_add_test(s, "keys, and the environment over the file", test_cache_config_keys_and_environment);
	CU_add_test(s, "errors name the key", test_cache_config_errors_name_the_key);
}
