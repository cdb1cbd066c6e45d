/*
 * shm.c - the credential cache's shared-memory segment (see shm.h):
 * attaching safely (permissions, atomic initialisation, incompatible
 * layouts), the robust lock and its recovery, the slot table (hash index,
 * LRU eviction, secret wiping), futex waits, and the per-process
 * connection counts of the host-wide budget.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "clock.h"
#include "log.h"
#include "shm.h"

#define MSG_INTERNAL		"Internal error."
#define ATTACH_TIMEOUT_MS	10000	/* waiting for another process's initialisation */
#define ATTACH_POLL_MS		10
#define IN_USE_CHECKS		3	/* unusable and in use this many times: refuse */
#define INIT_MAGIC		"LBFCGIC"	/* 7 bytes: a segment being initialised */

struct shm {
	char *path;
	int fd;
	void *base;
	size_t size;
	struct shm_header *h;
	int proc_index;		/* this process's budget entry, or -1 */
	pid_t proc_pid;		/* the pid it belongs to (a forked child has its own) */
};

/* Where things are in a segment of n slots. */
struct layout {
	uint32_t nslots;
	uint32_t nbuckets;
	uint64_t index_offset;
	uint64_t slots_offset;
	uint64_t secrets_offset;
	uint64_t total;
};

/* SEG_OTHER_OWNER: a sound segment holding another deployment's credentials. */
enum seg_state { SEG_EMPTY, SEG_OK, SEG_INCOMPATIBLE, SEG_OTHER_OWNER, SEG_FOREIGN };

static const char *const counter_names[SHM_COUNTER__COUNT] = {
	[SHM_MINTS_OK_SP] = "mints_ok_sp",
	[SHM_MINTS_OK_USER] = "mints_ok_user",
	[SHM_MINTS_FAILED_SP] = "mints_failed_sp",
	[SHM_MINTS_FAILED_USER] = "mints_failed_user",
	[SHM_OAUTH_OK] = "oauth_tokens_ok",
	[SHM_OAUTH_FAILED] = "oauth_tokens_failed",
	[SHM_REFRESHES] = "refreshes",
	[SHM_WAITS] = "waits",
	[SHM_LOCK_RECOVERIES] = "lock_recoveries",
	[SHM_CLAIM_TAKEOVERS] = "claim_takeovers",
	[SHM_REFRESHER_TAKEOVERS] = "refresher_takeovers",
	[SHM_EVICTIONS] = "evictions",
};

const char *
shm_counter_name(enum shm_counter c)
{
	return c < SHM_COUNTER__COUNT ? counter_names[c] : "?";
}

static uint64_t
align_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) / a * a;
}

static void
layout_for(uint32_t nslots, struct layout *l)
{
	uint32_t nbuckets = 16;

	while (nbuckets < nslots)
		nbuckets *= 2;
	l->nslots = nslots;
	l->nbuckets = nbuckets;
	l->index_offset = align_up(sizeof(struct shm_header), 64);
	l->slots_offset = align_up(l->index_offset + (uint64_t)nbuckets * sizeof(int32_t), 64);
	l->secrets_offset = align_up(l->slots_offset + (uint64_t)nslots * sizeof(struct shm_slot), 4096);
	l->total = align_up(l->secrets_offset + (uint64_t)nslots * sizeof(struct shm_secret), 4096);
}

/* Fills err: "<key>: <path>: <why>". Returns -1. */
static int __attribute__((format(printf, 4, 5)))
attach_fail(struct lb_error *err, const char *key, const char *path, const char *fmt, ...)
{
	char why[384];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	lb_error_set(err, LB_ERR_INTERNAL, MSG_INTERNAL, "%s: %s: %s", key, path, why);
	return -1;
}

/* ------------------------------------------------------------------ */
/* processes */

/* State character and start time (field 22) from /proc/PID/stat. */
static int
proc_stat(pid_t pid, char *state, uint64_t *start)
{
	char path[64], buf[1024];
	const char *p;
	unsigned long long ticks;
	ssize_t n;
	int fd, field;

	snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	p = strrchr(buf, ')');	/* the command name may contain anything */
	if (p == NULL || p[1] != ' ')
		return -1;
	p += 2;
	*state = *p;
	/* After ") ": field 3 is the state; starttime is field 22. */
	for (field = 3; field < 22 && p != NULL; field++) {
		p = strchr(p, ' ');
		if (p != NULL)
			p++;
	}
	if (p == NULL || sscanf(p, "%llu", &ticks) != 1)
		return -1;
	*start = (uint64_t)ticks;
	return 0;
}

uint64_t
shm_proc_start(pid_t pid)
{
	uint64_t start;
	char state;

	return proc_stat(pid, &state, &start) == 0 ? start : 0;
}

bool
shm_proc_alive(pid_t pid, uint64_t start)
{
	uint64_t now_start;
	char state;

	if (pid <= 0)
		return false;
	if (kill(pid, 0) != 0 && errno == ESRCH)
		return false;
	if (proc_stat(pid, &state, &now_start) == 0) {
		if (state == 'Z' || state == 'X')
			return false;
		if (start != 0 && now_start != start)
			return false;	/* the pid now names another process */
	}
	return true;
}

uint64_t
shm_self_start(void)
{
	static pid_t cached_pid;
	static uint64_t cached_start;
	pid_t pid = getpid();
	uint64_t start;

	if (__atomic_load_n(&cached_pid, __ATOMIC_ACQUIRE) == pid)
		return __atomic_load_n(&cached_start, __ATOMIC_RELAXED);
	start = shm_proc_start(pid);
	__atomic_store_n(&cached_start, start, __ATOMIC_RELAXED);
	__atomic_store_n(&cached_pid, pid, __ATOMIC_RELEASE);
	return start;
}

/* ------------------------------------------------------------------ */
/* accessors */

struct shm_header *
shm_header(struct shm *s)
{
	return s->h;
}

uint32_t
shm_nslots(const struct shm *s)
{
	return s->h->nslots;
}

const char *
shm_path(const struct shm *s)
{
	return s->path;
}

struct shm_slot *
shm_slot(struct shm *s, uint32_t index)
{
	return (struct shm_slot *)((char *)s->base + s->h->slots_offset) + index;
}

struct shm_secret *
shm_secret(struct shm *s, uint32_t index)
{
	return (struct shm_secret *)((char *)s->base + s->h->secrets_offset) + index;
}

static int32_t *
buckets(struct shm *s)
{
	return (int32_t *)(void *)((char *)s->base + s->h->index_offset);
}

void
shm_count(struct shm *s, enum shm_counter c)
{
	if (c < SHM_COUNTER__COUNT)
		s->h->counters[c]++;
}

/* ------------------------------------------------------------------ */
/* the index */

/* FNV-1a over the segment's seed, the email and the fingerprint. */
static uint64_t
key_hash(const struct shm_header *h, const char *email, const unsigned char *fp)
{
	uint64_t v = 14695981039346656037ULL;

	for (size_t i = 0; i < sizeof(h->seed); i++)
		v = (v ^ h->seed[i]) * 1099511628211ULL;
	for (const unsigned char *p = (const unsigned char *)email; *p != '\0'; p++)
		v = (v ^ *p) * 1099511628211ULL;
	v = (v ^ 0xff) * 1099511628211ULL;	/* separates the email from the fingerprint */
	for (size_t i = 0; i < SHM_FP_LEN; i++)
		v = (v ^ fp[i]) * 1099511628211ULL;
	return v;
}

static uint32_t
bucket_of(const struct shm_header *h, uint64_t hash)
{
	return (uint32_t)(hash & (h->nbuckets - 1));
}

static bool
valid_index(const struct shm *s, int32_t i)
{
	return i >= SHM_FIRST_USER_SLOT && (uint32_t)i < s->h->nslots;
}

static void
index_unlink(struct shm *s, uint32_t index)
{
	struct shm_slot *sl = shm_slot(s, index);
	int32_t *link = &buckets(s)[bucket_of(s->h, sl->hash)];
	uint32_t steps = 0;

	while (valid_index(s, *link) && steps++ < s->h->nslots) {
		if ((uint32_t)*link == index) {
			*link = sl->next;
			sl->next = -1;
			return;
		}
		link = &shm_slot(s, (uint32_t)*link)->next;
	}
}

/* Rebuilds the index from the slots (after a recovery: chains may be torn). */
static void
index_rebuild(struct shm *s)
{
	struct shm_header *h = s->h;
	int32_t *b = buckets(s);
	uint32_t used = SHM_FIRST_USER_SLOT;

	for (uint32_t i = 0; i < h->nbuckets; i++)
		b[i] = -1;
	for (uint32_t i = SHM_FIRST_USER_SLOT; i < h->nslots; i++) {
		struct shm_slot *sl = shm_slot(s, i);

		sl->next = -1;
		if (sl->kind != SHM_KIND_USER) {
			sl->kind = SHM_KIND_FREE;
			continue;
		}
		sl->email[SHM_EMAIL_MAX] = '\0';
		sl->hash = key_hash(h, sl->email, sl->fp);
		sl->next = b[bucket_of(h, sl->hash)];
		b[bucket_of(h, sl->hash)] = (int32_t)i;
		used++;
	}
	h->used_slots = used;
}

int
shm_find(struct shm *s, const char *email, const unsigned char fp[SHM_FP_LEN])
{
	uint64_t hash = key_hash(s->h, email, fp);
	int32_t i = buckets(s)[bucket_of(s->h, hash)];
	uint32_t steps = 0;

	while (valid_index(s, i) && steps++ < s->h->nslots) {
		struct shm_slot *sl = shm_slot(s, (uint32_t)i);

		if (sl->kind == SHM_KIND_USER && sl->hash == hash &&
		    strcmp(sl->email, email) == 0 && CRYPTO_memcmp(sl->fp, fp, SHM_FP_LEN) == 0)
			return i;
		i = sl->next;
	}
	return -1;
}

/* ------------------------------------------------------------------ */
/* slots */

void
shm_begin_write(struct shm *s, uint32_t index)
{
	__atomic_store_n(&s->h->writing_slot, (int32_t)index, __ATOMIC_SEQ_CST);
}

void
shm_end_write(struct shm *s)
{
	__atomic_store_n(&s->h->writing_slot, -1, __ATOMIC_SEQ_CST);
}

/* Wipes a slot, secrets and identity; a reserved slot keeps its kind. The
 * generation moves on, so a waiter notices the slot changed. */
static void
slot_wipe(struct shm *s, uint32_t index)
{
	struct shm_slot *sl = shm_slot(s, index);
	uint32_t generation = sl->generation;
	uint32_t kind = SHM_KIND_FREE;

	if (index == SHM_SLOT_SP)
		kind = SHM_KIND_SP;
	else if (index == SHM_SLOT_SP_OAUTH)
		kind = SHM_KIND_SP_OAUTH;
	OPENSSL_cleanse(shm_secret(s, index), sizeof(struct shm_secret));
	OPENSSL_cleanse(sl, sizeof(*sl));
	sl->kind = kind;
	sl->next = -1;
	sl->generation = generation + 1;
}

void
shm_remove(struct shm *s, uint32_t index)
{
	if (index >= s->h->nslots)
		return;
	shm_begin_write(s, index);
	if (index >= SHM_FIRST_USER_SLOT && shm_slot(s, index)->kind == SHM_KIND_USER) {
		index_unlink(s, index);
		if (s->h->used_slots > SHM_FIRST_USER_SLOT)
			s->h->used_slots--;
	}
	slot_wipe(s, index);
	shm_end_write(s);
}

void
shm_touch(struct shm *s, uint32_t index)
{
	struct shm_slot *sl = shm_slot(s, index);

	sl->lru_tick = ++s->h->lru_clock;
	sl->last_used_at = (int64_t)time(NULL);
}

bool
shm_claim_active(struct shm *s, uint32_t index)
{
	struct shm_slot *sl = shm_slot(s, index);
	bool dead;
	char pid[16];

	if (sl->claim_pid == 0)
		return false;
	dead = !shm_proc_alive(sl->claim_pid, sl->claim_start);
	if (!dead && clock_monotonic_ms() <= sl->claim_deadline_ms)
		return true;
	snprintf(pid, sizeof(pid), "%ld", (long)sl->claim_pid);
	log_warn("credential cache: taking over a stale refresh claim",
		 "claimer_pid", pid, "reason", dead ? "claimer died" : "claimer overran its deadline");
	sl->claim_pid = 0;
	sl->claim_id = 0;
	shm_count(s, SHM_CLAIM_TAKEOVERS);
	return false;
}

uint64_t
shm_claim(struct shm *s, uint32_t index, int64_t deadline_ms)
{
	struct shm_slot *sl = shm_slot(s, index);

	/* The pid goes last: it is what makes the claim active. */
	sl->claim_id = ++s->h->claim_clock;
	sl->claim_start = shm_self_start();
	sl->claim_deadline_ms = deadline_ms;
	__atomic_store_n(&sl->claim_pid, (int32_t)getpid(), __ATOMIC_SEQ_CST);
	return sl->claim_id;
}

bool
shm_claim_is(struct shm *s, uint32_t index, uint64_t claim_id)
{
	struct shm_slot *sl = shm_slot(s, index);

	return claim_id != 0 && sl->claim_id == claim_id && sl->claim_pid == (int32_t)getpid();
}

bool
shm_claim_extend(struct shm *s, uint32_t index, uint64_t claim_id, int64_t deadline_ms)
{
	if (!shm_claim_is(s, index, claim_id))
		return false;
	shm_slot(s, index)->claim_deadline_ms = deadline_ms;
	return true;
}

void
shm_claim_release(struct shm *s, uint32_t index)
{
	struct shm_slot *sl = shm_slot(s, index);

	__atomic_store_n(&sl->claim_pid, 0, __ATOMIC_SEQ_CST);
	sl->claim_id = 0;
	sl->claim_deadline_ms = 0;
}

static int
first_free_slot(struct shm *s)
{
	if (s->h->used_slots >= s->h->nslots)
		return -1;
	for (uint32_t i = SHM_FIRST_USER_SLOT; i < s->h->nslots; i++) {
		if (shm_slot(s, i)->kind == SHM_KIND_FREE)
			return (int)i;
	}
	return -1;
}

/* The user slot to evict: not being refreshed; one without a valid
 * credential (failed or forged identities) before one with; then the least
 * recently used. -1 when every slot is being refreshed. */
static int
eviction_victim(struct shm *s)
{
	int64_t now = (int64_t)time(NULL);
	int victim = -1;
	bool victim_valid = true;
	uint64_t victim_tick = UINT64_MAX;

	for (uint32_t i = SHM_FIRST_USER_SLOT; i < s->h->nslots; i++) {
		struct shm_slot *sl = shm_slot(s, i);
		bool valid;

		if (sl->kind != SHM_KIND_USER || shm_claim_active(s, i))
			continue;
		valid = sl->cred_len > 0 && now < sl->expires_at;
		if (victim < 0 || (victim_valid && !valid) ||
		    (valid == victim_valid && sl->lru_tick < victim_tick)) {
			victim = (int)i;
			victim_valid = valid;
			victim_tick = sl->lru_tick;
		}
	}
	return victim;
}

int
shm_insert(struct shm *s, const char *email, const unsigned char fp[SHM_FP_LEN],
	   struct lb_error *err)
{
	struct shm_header *h = s->h;
	struct shm_slot *sl;
	size_t len = strlen(email);
	uint32_t b;
	int i;

	if (len == 0 || len > SHM_EMAIL_MAX) {
		lb_error_set(err, LB_ERR_INTERNAL, MSG_INTERNAL,
			     "credential cache: an email of %zu bytes has no slot (1 to %d)",
			     len, SHM_EMAIL_MAX);
		return -1;
	}
	i = first_free_slot(s);
	if (i < 0) {
		i = eviction_victim(s);
		if (i < 0) {
			lb_error_set(err, LB_ERR_UNAVAILABLE, "The service is busy; try again shortly.",
				     "credential cache full: all %u slots are being refreshed "
				     "(raise credential_cache.slots)", h->nslots);
			if (err != NULL) {
				err->transience = LB_TRANSIENT;
				err->retry_after_s = 1;
			}
			return -1;
		}
		shm_remove(s, (uint32_t)i);
		shm_count(s, SHM_EVICTIONS);
	}
	shm_begin_write(s, (uint32_t)i);
	sl = shm_slot(s, (uint32_t)i);
	memcpy(sl->email, email, len + 1);
	memcpy(sl->fp, fp, SHM_FP_LEN);
	sl->hash = key_hash(h, email, fp);
	b = bucket_of(h, sl->hash);
	sl->next = buckets(s)[b];
	buckets(s)[b] = i;
	sl->kind = SHM_KIND_USER;
	h->used_slots++;
	shm_touch(s, (uint32_t)i);
	shm_end_write(s);
	return i;
}

#ifdef LB_TEST_HOOKS
/*
 * Test hook (./configure --enable-test-hooks only): with
 * LAKEBASE_TEST_HOLD_LOCK_MS=N, a write of a credential (of the slot of
 * LAKEBASE_TEST_HOLD_LOCK_EMAIL, when that is set) stops half way for N ms
 * holding the lock, so a test can kill the process there. Once per host:
 * the process that creates "<segment>.hold-lock-fired" is the one.
 */
static void
test_hold_lock(struct shm *s, uint32_t index)
{
	const char *ms = getenv("LAKEBASE_TEST_HOLD_LOCK_MS");
	const char *email = getenv("LAKEBASE_TEST_HOLD_LOCK_EMAIL");
	char marker[PATH_MAX], slot[16];
	int fd;

	if (ms == NULL || atol(ms) <= 0)
		return;
	if (email != NULL && strcmp(email, shm_slot(s, index)->email) != 0)
		return;
	snprintf(marker, sizeof(marker), "%s.hold-lock-fired", s->path);
	fd = open(marker, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return;
	close(fd);
	snprintf(slot, sizeof(slot), "%u", index);
	log_warn("test hook: holding the credential cache lock mid-write", "ms", ms, "slot", slot);
	clock_sleep_ms(atol(ms));
}
#endif

/* One secret field of a slot: its bytes, and in *lenp its length. */
static char *
secret_field(struct shm *s, uint32_t index, enum shm_secret_field field, uint32_t **lenp)
{
	struct shm_slot *sl = shm_slot(s, index);
	struct shm_secret *sec = shm_secret(s, index);

	*lenp = field == SHM_CRED ? &sl->cred_len : &sl->bearer_len;
	return field == SHM_CRED ? sec->cred : sec->bearer;
}

int
shm_store_secret(struct shm *s, uint32_t index, enum shm_secret_field field,
		 const char *value, size_t len, struct lb_error *err)
{
	uint32_t *lenp;
	char *buf = secret_field(s, index, field, &lenp);
	size_t half;

	if (len > SHM_SECRET_CAP) {
		lb_error_set(err, LB_ERR_UPSTREAM, "The workspace API returned an unexpected answer.",
			     "%s of %zu bytes exceeds the credential cache's capacity of %d bytes",
			     field == SHM_CRED ? "a credential" : "a workspace token", len, SHM_SECRET_CAP);
		return -1;
	}
	*lenp = 0;	/* first: a torn write leaves no length to trust */
	OPENSSL_cleanse(buf, SHM_SECRET_CAP);
	half = len / 2;
	memcpy(buf, value, half);
#ifdef LB_TEST_HOOKS
	test_hold_lock(s, index);
#endif
	memcpy(buf + half, value + half, len - half);
	*lenp = (uint32_t)len;
	return 0;
}

void
shm_wipe_secret(struct shm *s, uint32_t index, enum shm_secret_field field)
{
	uint32_t *lenp;
	char *buf = secret_field(s, index, field, &lenp);
	size_t len = *lenp < SHM_SECRET_CAP ? *lenp : SHM_SECRET_CAP;

	/* The bytes past the length are zero already (a store clears the whole
	 * field first; a torn one is wiped whole by recovery): wiping only the
	 * secret leaves a never-used field's page untouched, which is 4 KB of
	 * shared memory per lazy user. */
	*lenp = 0;
	OPENSSL_cleanse(buf, len);
}

/* ------------------------------------------------------------------ */
/* the lock */

/* The previous owner died holding the lock: wipe what it was writing. */
static void
recover(struct shm *s)
{
	struct shm_header *h = s->h;
	int32_t w = h->writing_slot;
	char slot[16] = "none";

	shm_count(s, SHM_LOCK_RECOVERIES);
	if (w >= 0 && (uint32_t)w < h->nslots) {
		slot_wipe(s, (uint32_t)w);
		snprintf(slot, sizeof(slot), "%d", (int)w);
	}
	shm_end_write(s);
	index_rebuild(s);
	log_warn("credential cache: a process died holding the lock; recovered",
		 "slot_wiped", slot);
	shm_wake_all(s);
}

static void
lock_result(struct shm *s, int rc)
{
	if (rc == EOWNERDEAD) {
		recover(s);
		pthread_mutex_consistent(&s->h->lock);
		return;
	}
	if (rc != 0) {
		/* Cannot happen: the lock is always made consistent before unlock. */
		log_error("credential cache: cannot lock the segment", "error", strerror(rc));
		abort();
	}
}

void
shm_lock(struct shm *s)
{
	lock_result(s, pthread_mutex_lock(&s->h->lock));
}

int
shm_lock_timed(struct shm *s, int timeout_ms)
{
	struct timespec ts;
	int rc;

	/* pthread_mutex_timedlock waits on the realtime clock. */
	clock_deadline_ms(&ts, CLOCK_REALTIME, timeout_ms);
	rc = pthread_mutex_timedlock(&s->h->lock, &ts);
	if (rc == ETIMEDOUT)
		return -1;
	lock_result(s, rc);
	return 0;
}

void
shm_unlock(struct shm *s)
{
	pthread_mutex_unlock(&s->h->lock);
}

void
shm_wait(struct shm *s, int timeout_ms)
{
	struct shm_header *h = s->h;
	struct timespec ts = { timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000L };
	uint32_t seq = __atomic_load_n(&h->wake_seq, __ATOMIC_SEQ_CST);

	h->waiters++;
	shm_unlock(s);
	/* Returns at once if a wake came after we read seq (the word moved). */
	syscall(SYS_futex, &h->wake_seq, FUTEX_WAIT, seq, &ts, NULL, 0);
	shm_lock(s);
	if (h->waiters > 0)
		h->waiters--;
}

void
shm_wake_all(struct shm *s)
{
	struct shm_header *h = s->h;

	__atomic_add_fetch(&h->wake_seq, 1, __ATOMIC_SEQ_CST);
	if (h->waiters > 0)
		syscall(SYS_futex, &h->wake_seq, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* ------------------------------------------------------------------ */
/* the host-wide connection budget */

static struct shm_proc *
proc_entry(struct shm *s, bool create)
{
	struct shm_proc *procs = s->h->procs;
	pid_t pid = getpid();
	uint64_t start = shm_self_start();
	int free_entry = -1;

	if (s->proc_index >= 0 && s->proc_pid == pid && procs[s->proc_index].pid == pid &&
	    procs[s->proc_index].start == start)
		return &procs[s->proc_index];
	for (int i = 0; i < SHM_MAX_PROCS; i++) {
		if (procs[i].pid == pid && procs[i].start == start) {
			s->proc_index = i;
			s->proc_pid = pid;
			return &procs[i];
		}
		if (free_entry < 0 && (procs[i].pid == 0 || procs[i].pid == pid))
			free_entry = i;	/* free, or a dead process that had our pid */
	}
	if (!create)
		return NULL;
	for (int i = 0; free_entry < 0 && i < SHM_MAX_PROCS; i++) {
		if (!shm_proc_alive(procs[i].pid, procs[i].start))
			free_entry = i;
	}
	if (free_entry < 0)
		return NULL;
	procs[free_entry].conns = 0;
	procs[free_entry].start = start;
	procs[free_entry].pid = pid;
	s->proc_index = free_entry;
	s->proc_pid = pid;
	return &procs[free_entry];
}

static long
host_total(struct shm *s)
{
	long total = 0;

	for (int i = 0; i < SHM_MAX_PROCS; i++) {
		if (s->h->procs[i].pid != 0 && s->h->procs[i].conns > 0)
			total += s->h->procs[i].conns;
	}
	return total;
}

/* Dead processes' connections are gone: their counts with them. */
static void
reclaim_dead(struct shm *s)
{
	for (int i = 0; i < SHM_MAX_PROCS; i++) {
		struct shm_proc *p = &s->h->procs[i];

		if (p->pid != 0 && !shm_proc_alive(p->pid, p->start)) {
			p->pid = 0;
			p->conns = 0;
			p->start = 0;
		}
	}
}

int
shm_conn_take(struct shm *s, int max)
{
	struct shm_proc *me;
	bool ok;

	shm_lock(s);
	me = proc_entry(s, true);
	if (me != NULL && host_total(s) >= max)
		reclaim_dead(s);
	ok = me != NULL && host_total(s) < max;
	if (ok)
		me->conns++;
	shm_unlock(s);
	return ok ? 0 : -1;
}

void
shm_conn_give(struct shm *s, int n)
{
	struct shm_proc *me;

	shm_lock(s);
	me = proc_entry(s, false);
	if (me != NULL)
		me->conns = me->conns > n ? me->conns - n : 0;
	shm_unlock(s);
}

/* ------------------------------------------------------------------ */
/* attaching */

static bool
all_zero(const void *p, size_t n)
{
	const unsigned char *b = p;

	for (size_t i = 0; i < n; i++) {
		if (b[i] != 0)
			return false;
	}
	return true;
}

/* What the file holds, for `owner` (NULL: any). `why` explains
 * SEG_INCOMPATIBLE. */
static enum seg_state
classify(int fd, const unsigned char *owner, char *why, size_t whylen)
{
	struct shm_header h;
	struct layout l;
	struct stat st;
	ssize_t n;

	if (fstat(fd, &st) != 0 || st.st_size == 0)
		return SEG_EMPTY;
	memset(&h, 0, sizeof(h));
	n = pread(fd, &h, sizeof(h), 0);
	if (n < 0)
		return SEG_FOREIGN;
	if (memcmp(h.magic, SHM_MAGIC, sizeof(h.magic)) != 0) {
		/* Zeros, or our own half-done initialisation: nothing to keep. */
		if (all_zero(&h, (size_t)n) ||
		    (memcmp(h.magic, INIT_MAGIC, 7) == 0 && h.magic[7] == '\0'))
			return SEG_EMPTY;
		return SEG_FOREIGN;
	}
	if (h.layout_version != SHM_LAYOUT_VERSION) {
		snprintf(why, whylen, "layout version %u (this program uses %u)",
			 h.layout_version, SHM_LAYOUT_VERSION);
		return SEG_INCOMPATIBLE;
	}
	if (h.header_size != sizeof(struct shm_header) || h.slot_size != sizeof(struct shm_slot) ||
	    h.secret_size != sizeof(struct shm_secret)) {
		snprintf(why, whylen, "a different build's layout (header %u, slot %u, secret %u bytes)",
			 h.header_size, h.slot_size, h.secret_size);
		return SEG_INCOMPATIBLE;
	}
	if (h.nslots < SHM_MIN_SLOTS || h.nslots > SHM_MAX_SLOTS) {
		snprintf(why, whylen, "an impossible slot count (%u)", h.nslots);
		return SEG_INCOMPATIBLE;
	}
	layout_for(h.nslots, &l);
	if (h.nbuckets != l.nbuckets || h.index_offset != l.index_offset ||
	    h.slots_offset != l.slots_offset || h.secrets_offset != l.secrets_offset ||
	    h.total_size != l.total || (uint64_t)st.st_size != l.total) {
		snprintf(why, whylen, "a size that does not match its header (%lld bytes)",
			 (long long)st.st_size);
		return SEG_INCOMPATIBLE;
	}
	if (owner != NULL && CRYPTO_memcmp(h.owner, owner, SHM_OWNER_LEN) != 0)
		return SEG_OTHER_OWNER;
	return SEG_OK;
}

/* Wipes what an old segment may hold (credentials) before it is reused. */
static void
wipe_file(int fd)
{
	struct stat st;
	void *p;

	if (fstat(fd, &st) != 0 || st.st_size <= 0)
		return;
	p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		return;
	OPENSSL_cleanse(p, (size_t)st.st_size);
	munmap(p, (size_t)st.st_size);
}

/* Initialises the file (LOCK_EX held) as an empty segment of n slots. */
static int
initialise(int fd, uint32_t nslots, const unsigned char *owner, const char *key, const char *path,
	   struct lb_error *err)
{
	pthread_mutexattr_t attr;
	struct shm_header *h;
	struct layout l;
	void *base;
	int rc;

	layout_for(nslots, &l);
	wipe_file(fd);
	if (ftruncate(fd, 0) != 0 || ftruncate(fd, (off_t)l.total) != 0)
		return attach_fail(err, key, path, "cannot size the segment to %" PRIu64 " bytes: %s",
				   l.total, strerror(errno));
	base = mmap(NULL, (size_t)l.total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (base == MAP_FAILED)
		return attach_fail(err, key, path, "cannot map the segment: %s", strerror(errno));
	h = base;
	memcpy(h->magic, INIT_MAGIC, 7);	/* "being initialised" until the last byte */
	h->layout_version = SHM_LAYOUT_VERSION;
	h->header_size = sizeof(struct shm_header);
	h->slot_size = sizeof(struct shm_slot);
	h->secret_size = sizeof(struct shm_secret);
	h->nslots = nslots;
	h->nbuckets = l.nbuckets;
	h->total_size = l.total;
	h->index_offset = l.index_offset;
	h->slots_offset = l.slots_offset;
	h->secrets_offset = l.secrets_offset;
	h->created_at = (int64_t)time(NULL);
	h->writing_slot = -1;
	if (owner != NULL)
		memcpy(h->owner, owner, SHM_OWNER_LEN);
	if (RAND_bytes(h->seed, (int)sizeof(h->seed)) != 1) {
		munmap(base, (size_t)l.total);
		return attach_fail(err, key, path, "no randomness for the index seed");
	}
	pthread_mutexattr_init(&attr);
	pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
	pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
	rc = pthread_mutex_init(&h->lock, &attr);
	pthread_mutexattr_destroy(&attr);
	if (rc != 0) {
		munmap(base, (size_t)l.total);
		return attach_fail(err, key, path, "cannot initialise the lock: %s", strerror(rc));
	}
	memset((char *)base + l.index_offset, 0xff, (size_t)l.nbuckets * sizeof(int32_t));
	for (uint32_t i = 0; i < nslots; i++) {
		struct shm_slot *sl = (struct shm_slot *)((char *)base + l.slots_offset) + i;

		sl->next = -1;
		sl->kind = i == SHM_SLOT_SP ? SHM_KIND_SP :
			   i == SHM_SLOT_SP_OAUTH ? SHM_KIND_SP_OAUTH : SHM_KIND_FREE;
	}
	h->used_slots = SHM_FIRST_USER_SLOT;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	h->magic[7] = SHM_MAGIC[7];	/* complete: usable from now on */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	munmap(base, (size_t)l.total);
	return 0;
}

/* Opens (or creates, 0600, never following a symlink) the file. */
static int
open_segment(const char *path, bool create, const char *key, struct lb_error *err)
{
	char dir[PATH_MAX];
	const char *slash;
	int fd;

	for (int attempt = 0; attempt < 10; attempt++) {
		fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
		if (fd >= 0)
			return fd;
		if (errno == ENOENT && create) {
			fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
			if (fd >= 0) {
				if (fchmod(fd, 0600) != 0) {	/* whatever the umask did */
					close(fd);
					return attach_fail(err, key, path, "cannot chmod: %s", strerror(errno));
				}
				return fd;
			}
			if (errno == EEXIST)
				continue;	/* created meanwhile: open it */
		}
		break;
	}
	if (errno == ELOOP)
		return attach_fail(err, key, path, "is a symbolic link; refusing to follow it");
	if (errno == ENOENT && !create)
		return attach_fail(err, key, path, "no credential cache here (no worker has created it)");
	if (errno == ENOENT) {
		slash = strrchr(path, '/');
		snprintf(dir, sizeof(dir), "%.*s", slash != NULL && slash != path ? (int)(slash - path) : 1,
			 slash != NULL ? path : ".");
		return attach_fail(err, key, path, "directory %s does not exist (create it, owned by "
				   "the worker's user, e.g. systemd RuntimeDirectory=lakebase-fcgi)", dir);
	}
	return attach_fail(err, key, path, "cannot open: %s", strerror(errno));
}

/* It holds credentials: ours alone, and a plain file. */
static int
check_file(int fd, const char *key, const char *path, struct lb_error *err)
{
	struct stat st;

	if (fstat(fd, &st) != 0)
		return attach_fail(err, key, path, "cannot stat: %s", strerror(errno));
	if (!S_ISREG(st.st_mode))
		return attach_fail(err, key, path, "is not a regular file; refusing to use it");
	if (st.st_uid != geteuid())
		return attach_fail(err, key, path, "is owned by uid %lu, not by this process's uid %lu; "
				   "refusing to use it", (unsigned long)st.st_uid, (unsigned long)geteuid());
	if ((st.st_mode & 077) != 0)
		return attach_fail(err, key, path, "has mode %04o: group and others must have no access "
				   "(it holds credentials); refusing to use it (remove it or chmod 600)",
				   (unsigned)(st.st_mode & 07777));
	return 0;
}

static int
refuse_state(enum seg_state state, const char *why, bool in_use, const char *key,
	     const char *path, struct lb_error *err)
{
	if (state == SEG_FOREIGN)
		return attach_fail(err, key, path, "is not a lakebase-fcgi credential cache "
				   "(unknown content); refusing to overwrite it (remove it, or set %s "
				   "to another file)", key);
	if (state == SEG_EMPTY)
		return attach_fail(err, key, path, "is not initialised (no worker has created it)");
	if (state == SEG_OTHER_OWNER)
		return attach_fail(err, key, path, "holds the credentials of another deployment "
				   "(another workspace host, Lakebase endpoint, database or service "
				   "principal) whose processes are running; give each deployment its "
				   "own %s", key);
	return attach_fail(err, key, path, "is a credential cache with %s%s; stop the processes "
			   "using it (or set %s to another file)", why,
			   in_use ? " and is in use by other processes" : "", key);
}

/*
 * Leaves the file holding LOCK_SH, initialised and compatible. The first
 * process in (LOCK_EX won) initialises or recreates; the others wait for it.
 */
static int
lock_and_prepare(int fd, uint32_t nslots, bool create, const unsigned char *owner, const char *key,
		 const char *path, struct lb_error *err)
{
	int64_t deadline = clock_monotonic_ms() + ATTACH_TIMEOUT_MS;
	enum seg_state state;
	char why[160] = "";
	int seen_in_use = 0;

	for (;;) {
		if (create && flock(fd, LOCK_EX | LOCK_NB) == 0) {
			state = classify(fd, owner, why, sizeof(why));
			if (state == SEG_FOREIGN) {
				flock(fd, LOCK_UN);
				return refuse_state(state, why, false, key, path, err);
			}
			if (state == SEG_INCOMPATIBLE)
				log_warn("credential cache: recreating a segment of another layout "
					 "(no process uses it)", "path", path, "was", why);
			if (state == SEG_OTHER_OWNER)
				log_warn("credential cache: recreating a segment of another deployment "
					 "(no process uses it)", "path", path);
			if (state != SEG_OK && initialise(fd, nslots, owner, key, path, err) != 0) {
				flock(fd, LOCK_UN);
				return -1;
			}
			flock(fd, LOCK_SH);	/* a downgrade; another process may slip in: harmless */
			if (classify(fd, owner, why, sizeof(why)) == SEG_OK)
				return 0;
			flock(fd, LOCK_UN);
		} else if (flock(fd, LOCK_SH | LOCK_NB) == 0) {
			state = classify(fd, owner, why, sizeof(why));
			if (state == SEG_OK)
				return 0;
			flock(fd, LOCK_UN);
			/* Unusable, and held: maybe only for a moment by another
			 * process's attach, so look a few times before refusing. */
			if (state == SEG_FOREIGN || !create ||
			    ((state == SEG_INCOMPATIBLE || state == SEG_OTHER_OWNER) &&
			     ++seen_in_use >= IN_USE_CHECKS))
				return refuse_state(state, why, create, key, path, err);
		}
		/* Someone initialises (LOCK_EX), or holds it incompatible: look again. */
		if (clock_monotonic_ms() > deadline)
			return attach_fail(err, key, path, "timed out after %d ms waiting for another "
					   "process to initialise it", ATTACH_TIMEOUT_MS);
		clock_sleep_ms(ATTACH_POLL_MS + (long)(clock_monotonic_ms() % 7));
	}
}

struct shm *
shm_attach(const char *path, uint32_t nslots, bool create, const unsigned char *owner,
	   const char *key, struct lb_error *err)
{
	struct shm *s;
	struct stat st;
	void *base;
	int fd;

	if (path == NULL || path[0] != '/') {
		attach_fail(err, key, path ? path : "(none)", "must be an absolute path");
		return NULL;
	}
	if (nslots < SHM_MIN_SLOTS || nslots > SHM_MAX_SLOTS) {
		attach_fail(err, key, path, "slot count %u out of range", nslots);
		return NULL;
	}
	fd = open_segment(path, create, key, err);
	if (fd < 0)
		return NULL;
	if (check_file(fd, key, path, err) != 0 ||
	    lock_and_prepare(fd, nslots, create, owner, key, path, err) != 0) {
		close(fd);
		return NULL;
	}
	if (fstat(fd, &st) != 0 ||
	    (base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) == MAP_FAILED) {
		attach_fail(err, key, path, "cannot map the segment: %s", strerror(errno));
		close(fd);
		return NULL;
	}
	s = calloc(1, sizeof(*s));
	if (s == NULL || (s->path = strdup(path)) == NULL) {
		free(s);
		munmap(base, (size_t)st.st_size);
		close(fd);
		lb_error_set(err, LB_ERR_INTERNAL, MSG_INTERNAL, "out of memory");
		return NULL;
	}
	s->fd = fd;
	s->base = base;
	s->size = (size_t)st.st_size;
	s->h = base;
	s->proc_index = -1;
	return s;
}

void
shm_detach(struct shm *s)
{
	struct shm_proc *me;

	if (s == NULL)
		return;
	if (s->proc_index >= 0) {	/* only then did this attachment register */
		shm_lock(s);
		me = proc_entry(s, false);
		if (me != NULL) {
			me->pid = 0;
			me->conns = 0;
			me->start = 0;
		}
		shm_unlock(s);
	}
	munmap(s->base, s->size);
	close(s->fd);	/* drops our LOCK_SH (unless a forked process shares the fd) */
	free(s->path);
	free(s);
}
