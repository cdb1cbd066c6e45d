/*
 * shm.h - the shared-memory segment behind the credential cache: one
 * file-backed mapping per host that every worker process attaches to
 * (credential.c decides what goes in it; this module keeps it sound).
 *
 * Layout: a header (magic, layout version, sizes, the lock, counters, the
 * host's background refresher, per-process connection counts), a hash
 * index, the slots' metadata, then the slots' secrets. Slot 0 is the
 * service principal's database credential, slot 1 its OAuth M2M token;
 * users take the others, keyed by email and token fingerprint.
 *
 * Attaching: the file is opened without following symlinks and refused
 * unless it is a regular file owned by this uid with no group or other
 * permission bits (it holds credentials). The first process creates it
 * (O_EXCL, 0600) and initialises it holding flock(LOCK_EX); every process
 * holds LOCK_SH while attached, so nobody ever sees a half-initialised
 * segment. A segment of another layout is recreated when no process holds
 * it, and refused while one does; a file that is not a segment at all is
 * always refused (it may be someone else's data). The same holds for a
 * segment of another deployment (another owner key, see shm_attach): its
 * credentials are not this deployment's, so it is recreated empty when
 * unused and refused while in use.
 *
 * Locking: one process-shared robust mutex guards everything except the
 * wake word. When a process dies holding it, the next locker recovers: the
 * slot the dead process was writing (recorded in the header before every
 * write) is wiped and the index rebuilt, so nothing half-written is read.
 * Nobody may make a network call with the lock held.
 *
 * Waiting: not a process-shared condition variable. With glibc 2.36 a
 * waiter SIGKILLed inside pthread_cond_wait leaves the condvar so that the
 * next broadcast blocks forever (measured on Debian 12), which would wedge
 * the host. Waiters sleep on a futex word instead (shm_wait: short, timed,
 * the caller re-checks), which a dead waiter cannot wedge.
 */
#ifndef LB_SHM_H
#define LB_SHM_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "error.h"

#define SHM_MAGIC		"LBFCGIC\x01"	/* 8 bytes, no NUL needed */
#define SHM_LAYOUT_VERSION	5	/* 2: metrics; 3: close reason "renewed"; 4: owner; 5: route keys */
#define SHM_EMAIL_MAX		63	/* a Postgres role name: NAMEDATALEN - 1 */
#define SHM_ROLE_MAX		63
#define SHM_FP_LEN		32	/* SHA-256 of the workspace token */
#define SHM_OWNER_LEN		32	/* the deployment key (see shm_attach) */
#define SHM_SECRET_CAP		4096	/* bytes of one credential or token */
#define SHM_MAX_PROCS		1024	/* processes counted by the host budget */
#define SHM_SLOT_SP		0
#define SHM_SLOT_SP_OAUTH	1
#define SHM_FIRST_USER_SLOT	2
#define SHM_MIN_SLOTS		4
#define SHM_MAX_SLOTS		262144

enum shm_kind {
	SHM_KIND_FREE = 0,
	SHM_KIND_SP,		/* the service principal's database credential */
	SHM_KIND_SP_OAUTH,	/* the service principal's workspace (M2M) token */
	SHM_KIND_USER
};

enum shm_counter {
	SHM_MINTS_OK_SP, SHM_MINTS_OK_USER, SHM_MINTS_FAILED_SP, SHM_MINTS_FAILED_USER,
	SHM_OAUTH_OK, SHM_OAUTH_FAILED, SHM_REFRESHES, SHM_WAITS, SHM_LOCK_RECOVERIES,
	SHM_CLAIM_TAKEOVERS, SHM_REFRESHER_TAKEOVERS, SHM_EVICTIONS,
	SHM_COUNTER__COUNT
};

/* The metadata of one slot. Scans (index, LRU) touch the first fields only. */
struct shm_slot {
	uint32_t kind;			/* enum shm_kind */
	int32_t next;			/* hash chain; -1 ends it */
	uint64_t hash;
	uint64_t lru_tick;		/* larger: used more recently */
	int32_t claim_pid;		/* refresh claimed by this process; 0: none */
	uint32_t generation;		/* bumped whenever a refresh ends */
	uint64_t claim_start;		/* the claimer's start time (guards pid reuse) */
	int64_t claim_deadline_ms;	/* CLOCK_MONOTONIC: taken over after this */
	uint64_t claim_id;		/* unique per claim: the publisher's proof */

	char email[SHM_EMAIL_MAX + 1];	/* users */
	unsigned char fp[SHM_FP_LEN];	/* users */
	char role[SHM_ROLE_MAX + 1];	/* the SP's role once resolved */

	uint32_t cred_len;		/* 0: no credential */
	uint32_t bearer_len;		/* eager users: their workspace token */
	int64_t minted_at;		/* wall clock, seconds */
	int64_t expires_at;
	int64_t refresh_at;		/* the refresh window opens */
	int64_t last_used_at;
	int64_t next_attempt_at;	/* after a failed refresh: not before */
	uint32_t mint_count;
	uint8_t last_failed;
	uint8_t failure_logged;
	uint8_t pad[2];
	struct lb_error last_err;	/* the last failure, shared with waiters */
};

/* The secrets of one slot, kept apart from the metadata scans walk. */
struct shm_secret {
	char cred[SHM_SECRET_CAP];
	char bearer[SHM_SECRET_CAP];
};

/* One process's share of the host-wide connection budget. */
struct shm_proc {
	int32_t pid;			/* 0: free */
	int32_t conns;
	uint64_t start;
};

/*
 * The metrics area (metrics.c owns its meaning): counters and histograms
 * every process adds to with relaxed atomics, no lock, and per-process
 * gauges summed at scrape time. A route's series are the slot its identity
 * (method, path, auth) claimed in route_keys, so they stay the route's
 * across reloads and restarts whatever the order of the config; never
 * anything a request carries.
 */
#define SHM_METRIC_ROUTES	128	/* series of routes, the last shared by routes beyond; +1: none */
#define SHM_METRIC_STATUSES	16	/* see metrics.c: a fixed list of codes */
#define SHM_METRIC_CLASSES	5	/* status class 1xx..5xx */
#define SHM_METRIC_BUCKETS	12	/* histogram buckets, the last is +Inf */
#define SHM_METRIC_SQLSTATE	(36 * 36)	/* SQLSTATE classes [0-9A-Z]{2} */
#define SHM_METRIC_CLOSE	7	/* close reasons, the last is "other" */

struct shm_histogram {
	uint64_t buckets[SHM_METRIC_BUCKETS];	/* not cumulative */
	uint64_t sum_us;
	uint64_t count;
};

/* One process's gauges; pid 0: free. Reclaimed when the pid is dead. */
struct shm_proc_gauges {
	int32_t pid;
	int32_t pad;
	uint64_t start;
	int32_t idle[2];		/* by auth: 0 SP, 1 user */
	int32_t busy[2];
	int32_t waiting;
	int32_t user_pools;
};

struct shm_metrics {
	uint64_t route_keys[SHM_METRIC_ROUTES - 1];	/* a route's identity; 0: free */
	uint64_t requests[SHM_METRIC_ROUTES + 1][SHM_METRIC_STATUSES];
	struct shm_histogram query[SHM_METRIC_ROUTES + 1][SHM_METRIC_CLASSES];
	struct shm_histogram refresh;
	uint64_t acquire_timeouts;
	uint64_t pool_errors[SHM_METRIC_SQLSTATE];
	uint64_t conns_opened;
	uint64_t conns_closed[SHM_METRIC_CLOSE];
	uint64_t worker_restarts;
	int64_t started_at;		/* wall clock: the first worker of a run attached */
	struct shm_proc_gauges procs[SHM_MAX_PROCS];
};

struct shm_header {
	char magic[8];			/* written last by the initialiser */
	uint32_t layout_version;
	uint32_t header_size;
	uint32_t slot_size;
	uint32_t secret_size;
	uint32_t nslots;
	uint32_t nbuckets;
	uint64_t total_size;
	uint64_t index_offset;
	uint64_t slots_offset;
	uint64_t secrets_offset;
	int64_t created_at;
	unsigned char seed[16];		/* keys the index hash */
	unsigned char owner[SHM_OWNER_LEN];	/* the deployment the contents belong to */

	pthread_mutex_t lock;		/* robust, process-shared */
	uint32_t wake_seq;		/* futex word, bumped by shm_wake_all */
	uint32_t waiters;
	int32_t writing_slot;		/* -1, or the slot being written */
	uint32_t used_slots;
	uint64_t lru_clock;
	uint64_t claim_clock;
	uint64_t counters[SHM_COUNTER__COUNT];

	int32_t refresher_pid;		/* the host's background refresher; 0: none */
	int32_t pad;
	uint64_t refresher_start;
	int64_t refresher_deadline_ms;	/* CLOCK_MONOTONIC: stale after this */

	struct shm_proc procs[SHM_MAX_PROCS];

	struct shm_metrics metrics;	/* layout 2 */
};

enum shm_secret_field { SHM_CRED, SHM_BEARER };

struct shm;

/*
 * Attaches to the segment at `path`, creating it (with `nslots` slots) when
 * `create` and it does not exist; an existing segment keeps its own slot
 * count. `owner` (SHM_OWNER_LEN bytes: a key of the deployment whose
 * credentials the segment holds; NULL: whichever, for readers such as
 * --cache-status) is recorded in a new segment and must match an existing
 * one. `key` names the setting in messages ("credential_cache.path").
 * NULL with err set (LB_ERR_INTERNAL; the detail says what and why).
 */
struct shm *shm_attach(const char *path, uint32_t nslots, bool create,
		       const unsigned char *owner, const char *key, struct lb_error *err);
/* Releases this process's budget entry (if pid matches) and detaches. */
void shm_detach(struct shm *s);

struct shm_header *shm_header(struct shm *s);
uint32_t shm_nslots(const struct shm *s);
const char *shm_path(const struct shm *s);
struct shm_slot *shm_slot(struct shm *s, uint32_t index);
struct shm_secret *shm_secret(struct shm *s, uint32_t index);

/* The robust lock; recovers from a dead owner (see above). */
void shm_lock(struct shm *s);
/* 0 locked, -1 not within timeout_ms (a status view that must not hang). */
int shm_lock_timed(struct shm *s, int timeout_ms);
void shm_unlock(struct shm *s);

/* --- with the lock held --- */

void shm_count(struct shm *s, enum shm_counter c);
/* Brackets a write to a slot: a process dying in between leaves it marked. */
void shm_begin_write(struct shm *s, uint32_t index);
void shm_end_write(struct shm *s);

/* The user slot of (email, fp), or -1. */
int shm_find(struct shm *s, const char *email, const unsigned char fp[SHM_FP_LEN]);
/*
 * A new user slot for (email, fp), most recently used. When the table is
 * full, evicts the least recently used user slot that is not being
 * refreshed, preferring slots without a valid credential (wiped). -1 with
 * err set when every slot is being refreshed.
 */
int shm_insert(struct shm *s, const char *email, const unsigned char fp[SHM_FP_LEN],
	       struct lb_error *err);
/* Frees a user slot (wiped); resets a reserved one to empty. */
void shm_remove(struct shm *s, uint32_t index);
/* Marks a slot used now. */
void shm_touch(struct shm *s, uint32_t index);

/* True when someone holds a live claim on the slot; a stale one (claimer
 * dead, or past its deadline) is cleared and counted as a takeover. */
bool shm_claim_active(struct shm *s, uint32_t index);
/* Claims the slot's refresh for this process; returns the claim id. */
uint64_t shm_claim(struct shm *s, uint32_t index, int64_t deadline_ms);
/* True if the claim is still this one (not taken over meanwhile). */
bool shm_claim_is(struct shm *s, uint32_t index, uint64_t claim_id);
/* Moves the deadline of the claim if it is still this one; false if not. */
bool shm_claim_extend(struct shm *s, uint32_t index, uint64_t claim_id, int64_t deadline_ms);
void shm_claim_release(struct shm *s, uint32_t index);

/*
 * Replaces a secret of the slot (the old bytes wiped first). A value longer
 * than SHM_SECRET_CAP is refused (never truncated): -1 with err set.
 * Callers bracket it with shm_begin_write/shm_end_write.
 */
int shm_store_secret(struct shm *s, uint32_t index, enum shm_secret_field field,
		     const char *value, size_t len, struct lb_error *err);
void shm_wipe_secret(struct shm *s, uint32_t index, enum shm_secret_field field);

/* Releases the lock, sleeps until shm_wake_all or timeout_ms, relocks. */
void shm_wait(struct shm *s, int timeout_ms);
void shm_wake_all(struct shm *s);

/* --- the host-wide connection budget (takes the lock itself) --- */

/* One more connection for this process if the host total stays <= max:
 * 0, or -1 (at the cap). Dead processes' counts are reclaimed first. */
int shm_conn_take(struct shm *s, int max);
void shm_conn_give(struct shm *s, int n);

/* --- processes --- */

/* A process's start time (clock ticks since boot), 0 when unknown. */
uint64_t shm_proc_start(pid_t pid);
/* Alive, not a zombie, and (start != 0) the same process that recorded it. */
bool shm_proc_alive(pid_t pid, uint64_t start);
/* This process's start time (cached per pid). */
uint64_t shm_self_start(void);

const char *shm_counter_name(enum shm_counter c);

#endif
