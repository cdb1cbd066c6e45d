/*
 * userpools.c - the per-user pool cache (see userpools.h).
 *
 * Entries live in a hash table keyed by (token fingerprint, email) and on
 * an LRU list. An entry is pinned (refs) while a request uses its pool, and
 * is freed only unpinned: a retired or evicted entry leaves the table at
 * once but its pool is destroyed by whoever drops the last pin. Pools are
 * destroyed outside the cache's lock, since that closes connections.
 */
#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "log.h"
#include "userpools.h"

#define MSG_TOO_MANY_USERS "Too many users are active right now; try again shortly."

/*
 * Pools renewed at once by the maintenance pass, each logging in one
 * connection at a time. Under load one thread's logins can take ~100 ms
 * each (TLS, or SCRAM where the server asks for it, on a busy host): too
 * slow for a burst of due connections (users whose credentials were minted
 * together), which would reach their expiry and be logged in again on the
 * request path, all at once.
 */
#define RENEW_POOLS_AT_ONCE 4

struct user_entry {
	char *email;
	unsigned char fp[TOKEN_FP_LEN];
	struct pool *pool;
	int refs;
	bool proven;              /* a login with this token succeeded */
	bool in_table;            /* false once retired or evicted */
	int64_t last_used_ms;
	struct user_entry *hnext;
	struct user_entry *lru_prev, *lru_next; /* lru_head is the most recent */
};

struct userpools {
	pthread_mutex_t lock;
	pthread_cond_t unpinned;  /* an entry's last pin was dropped */
	int waiting;
	const struct lb_config *cfg;
	struct credcache *creds;
	struct conn_budget *budget;
	struct user_entry **buckets;
	size_t nbuckets;          /* a power of two */
	int count;
	struct user_entry *lru_head, *lru_tail;
};

/* The credential source of one request: its identity, for new connections. */
struct user_source {
	struct credcache *creds;
	const struct identity *id;
};

static int
user_credential(void *ctx, struct credential *out, struct lb_error *err)
{
	struct user_source *src = ctx;

	return credcache_acquire(src->creds, src->id, out, err);
}

static void
user_auth_failed(void *ctx, const struct credential *cred)
{
	struct user_source *src = ctx;

	credcache_invalidate(src->creds, src->id, cred ? cred->token : NULL);
}

/* For renewals: the credential a request minted (renewals have no token
 * to mint with). */
static int
cached_user_credential(void *ctx, struct credential *out, struct lb_error *err)
{
	struct user_source *src = ctx;

	(void)err;
	return credcache_peek(src->creds, src->id, out);
}

/* Renews a proven entry's connections (pinned, lock not held); pool_renew's
 * result. A credential the renewal login finds refused is dropped, so the
 * entry's next request mints a new one. */
static int
renew_entry(struct userpools *up, struct user_entry *e)
{
	struct identity id = { .kind = IDENTITY_USER, .email = e->email };
	struct user_source src = { up->creds, &id };
	struct pool_source source = { cached_user_credential, user_auth_failed, &src };

	memcpy(id.token_fp, e->fp, TOKEN_FP_LEN);
	return pool_renew(e->pool, &source);
}

static bool
is_proven(struct userpools *up, struct user_entry *e)
{
	bool proven;

	pthread_mutex_lock(&up->lock);
	proven = e->proven;
	pthread_mutex_unlock(&up->lock);
	return proven;
}

/* The entries to renew, shared by the threads of one maintenance pass. */
struct renewal_pass {
	struct userpools *up;
	struct user_entry **entries;
	int n;
	atomic_int next;
	atomic_int progress;      /* the sum of pool_renew's results */
};

static void *
renewal_pass_run(void *arg)
{
	struct renewal_pass *pass = arg;
	int i;

	while ((i = atomic_fetch_add(&pass->next, 1)) < pass->n)
		atomic_fetch_add(&pass->progress, renew_entry(pass->up, pass->entries[i]));
	return NULL;
}

/*
 * Renews the pools of the pinned entries (each with connections due), up
 * to RENEW_POOLS_AT_ONCE at a time: this thread and helpers for this
 * pass. Returns the sum of pool_renew's results.
 */
static int
renew_entries(struct userpools *up, struct user_entry **pinned, int n)
{
	struct renewal_pass pass = { .up = up, .entries = pinned, .n = n };
	pthread_t helpers[RENEW_POOLS_AT_ONCE - 1];
	int nhelpers = 0;

	atomic_init(&pass.next, 0);
	atomic_init(&pass.progress, 0);
	while (nhelpers < RENEW_POOLS_AT_ONCE - 1 && nhelpers < pass.n - 1 &&
	       pthread_create(&helpers[nhelpers], NULL, renewal_pass_run, &pass) == 0)
		nhelpers++;
	renewal_pass_run(&pass);
	for (int i = 0; i < nhelpers; i++)
		pthread_join(helpers[i], NULL);
	return atomic_load(&pass.progress);
}

/* The fingerprint is a SHA-256: its first bytes are already uniform. */
static size_t
bucket_of(const struct userpools *up, const unsigned char *fp)
{
	uint64_t h;

	memcpy(&h, fp, sizeof(h));
	return (size_t)(h & (up->nbuckets - 1));
}

/* ---- table and LRU list, all with the lock held ---- */

static void
lru_unlink(struct userpools *up, struct user_entry *e)
{
	if (e->lru_prev != NULL)
		e->lru_prev->lru_next = e->lru_next;
	else
		up->lru_head = e->lru_next;
	if (e->lru_next != NULL)
		e->lru_next->lru_prev = e->lru_prev;
	else
		up->lru_tail = e->lru_prev;
	e->lru_prev = e->lru_next = NULL;
}

static void
lru_push_front(struct userpools *up, struct user_entry *e)
{
	e->lru_prev = NULL;
	e->lru_next = up->lru_head;
	if (up->lru_head != NULL)
		up->lru_head->lru_prev = e;
	up->lru_head = e;
	if (up->lru_tail == NULL)
		up->lru_tail = e;
}

static struct user_entry *
table_find(struct userpools *up, const struct identity *id)
{
	struct user_entry *e = up->buckets[bucket_of(up, id->token_fp)];

	for (; e != NULL; e = e->hnext) {
		if (memcmp(e->fp, id->token_fp, TOKEN_FP_LEN) == 0 && strcmp(e->email, id->email) == 0)
			return e;
	}
	return NULL;
}

/* Takes an entry out of the table and the LRU list; it stays allocated. */
static void
table_remove(struct userpools *up, struct user_entry *e)
{
	struct user_entry **pp = &up->buckets[bucket_of(up, e->fp)];

	while (*pp != NULL && *pp != e)
		pp = &(*pp)->hnext;
	if (*pp == e)
		*pp = e->hnext;
	e->hnext = NULL;
	lru_unlink(up, e);
	e->in_table = false;
	up->count--;
}

static void
entry_free(struct user_entry *e)
{
	if (e == NULL)
		return;
	pool_destroy(e->pool);
	free(e->email);
	free(e);
}

static struct user_entry *
entry_create(struct userpools *up, const struct identity *id)
{
	struct user_entry *e = calloc(1, sizeof(*e));
	struct pool_source none = { NULL, NULL, NULL };
	char label[32];

	if (e == NULL)
		return NULL;
	e->email = strdup(id->email);
	memcpy(e->fp, id->token_fp, TOKEN_FP_LEN);
	/* The label names the pool in logs without the email (personal data). */
	snprintf(label, sizeof(label), "user:%02x%02x%02x%02x", e->fp[0], e->fp[1], e->fp[2], e->fp[3]);
	none.get_credential = user_credential; /* never used: every acquire passes its source */
	e->pool = e->email ? pool_create(up->cfg, &up->cfg->user_pool, &none, label, up->budget) : NULL;
	if (e->pool == NULL) {
		free(e->email);
		free(e);
		return NULL;
	}
	return e;
}

/* Makes room for one more entry: drops the least recently used unpinned
 * one. Returns it (to free outside the lock), or NULL if all are in use. */
static struct user_entry *
evict_lru_locked(struct userpools *up)
{
	for (struct user_entry *e = up->lru_tail; e != NULL; e = e->lru_prev) {
		if (e->refs == 0) {
			table_remove(up, e);
			return e;
		}
	}
	return NULL;
}

/*
 * At max_user_pools: drops the least recently used unpinned entry into
 * *victim, waiting until `deadline` for one to be unpinned. Returns false
 * on timeout. The identity's own entry may appear while we wait.
 */
static bool
make_room_locked(struct userpools *up, const struct identity *id, const struct timespec *deadline,
		 struct user_entry **victim)
{
	bool timed_out = false;

	while (up->count >= up->cfg->max_user_pools && table_find(up, id) == NULL) {
		*victim = evict_lru_locked(up);
		if (*victim != NULL)
			return true;
		if (timed_out)
			return false;
		up->waiting++;
		timed_out = pthread_cond_timedwait(&up->unpinned, &up->lock, deadline) != 0;
		up->waiting--;
	}
	return true;
}

/* Finds or creates the entry and pins it. *victim receives an entry to
 * free outside the lock. */
static struct user_entry *
pin_entry_locked(struct userpools *up, const struct identity *id, struct user_entry **victim,
		 struct lb_error *err)
{
	struct user_entry *e;
	struct timespec deadline;
	size_t b;

	clock_deadline_ms(&deadline, CLOCK_MONOTONIC, up->cfg->user_pool.acquire_timeout_ms);
	if (!make_room_locked(up, id, &deadline, victim)) {
		lb_error_set(err, LB_ERR_UNAVAILABLE, MSG_TOO_MANY_USERS,
			     "all %d user pools stayed in use for %d ms", up->cfg->max_user_pools,
			     up->cfg->user_pool.acquire_timeout_ms);
		err->transience = LB_TRANSIENT;
		err->retry_after_s = 1;
		return NULL;
	}
	e = table_find(up, id);
	if (e == NULL) {
		e = entry_create(up, id);
		if (e == NULL) {
			lb_error_set(err, LB_ERR_INTERNAL, "Internal error.", "out of memory for a user pool");
			return NULL;
		}
		b = bucket_of(up, e->fp);
		e->hnext = up->buckets[b];
		up->buckets[b] = e;
		e->in_table = true;
		up->count++;
	} else {
		lru_unlink(up, e);
	}
	lru_push_front(up, e);
	e->refs++;
	e->last_used_ms = clock_monotonic_ms();
	return e;
}

/* Drops a pin; returns the entry if it must now be freed (outside the lock). */
static struct user_entry *
unpin_locked(struct userpools *up, struct user_entry *e)
{
	assert(e->refs > 0);
	e->refs--;
	if (e->refs > 0)
		return NULL;
	if (up->waiting > 0)
		pthread_cond_broadcast(&up->unpinned);
	if (e->in_table && !e->proven)
		table_remove(up, e);   /* never logged in (a bad token): do not keep it */
	return e->in_table ? NULL : e;
}

/* Frees a list of entries chained through hnext (outside the lock). */
static void
free_list(struct user_entry *list)
{
	struct user_entry *next;

	for (; list != NULL; list = next) {
		next = list->hnext;
		entry_free(list);
	}
}

/* Drops the pins of `n` entries; frees those that are gone from the table. */
static void
unpin_all(struct userpools *up, struct user_entry **entries, int n)
{
	struct user_entry *dead = NULL, *e;

	pthread_mutex_lock(&up->lock);
	for (int i = 0; i < n; i++) {
		e = unpin_locked(up, entries[i]);
		if (e != NULL) {
			e->hnext = dead;
			dead = e;
		}
	}
	pthread_mutex_unlock(&up->lock);
	free_list(dead);
}

#define MAX_RETIRE_AT_ONCE 16

/*
 * The token of `e` is proven: retire the email's pools for other tokens but
 * the most recently used proven one. Rotation leaves the old token's pool to the
 * next rotation (or to the idle reaping), while a user with two live tokens
 * (two devices) keeps both pools: retiring the other one would make each
 * switch between them a login and close the other's connections.
 * The retired leave the table at once; their idle connections close now
 * (pinned here, so they cannot be freed meanwhile) and busy ones when
 * returned.
 */
static void
mark_proven(struct userpools *up, struct user_entry *e)
{
	struct user_entry *retire[MAX_RETIRE_AT_ONCE], *o, *next;
	bool kept_one = false;
	int n = 0;

	pthread_mutex_lock(&up->lock);
	if (e->proven || !e->in_table) {
		pthread_mutex_unlock(&up->lock);
		return;
	}
	e->proven = true;
	for (o = up->lru_head; o != NULL && n < MAX_RETIRE_AT_ONCE; o = next) {
		next = o->lru_next;
		if (o == e || strcmp(o->email, e->email) != 0)
			continue;
		if (!kept_one && o->proven) {	/* the list runs from the most recently used */
			kept_one = true;
			continue;
		}
		table_remove(up, o);
		o->refs++;
		retire[n++] = o;
	}
	pthread_mutex_unlock(&up->lock);
	for (int i = 0; i < n; i++)
		pool_retire(retire[i]->pool);
	unpin_all(up, retire, n);
}

int
userpools_acquire(struct userpools *up, const struct identity *id, struct user_lease *lease,
		  struct lb_error *err)
{
	struct user_source src = { up->creds, id };
	struct pool_source source = { user_credential, user_auth_failed, &src };
	struct user_entry *e, *victim = NULL, *dead;

	lease->entry = NULL;
	lease->conn = NULL;
	pthread_mutex_lock(&up->lock);
	e = pin_entry_locked(up, id, &victim, err);
	pthread_mutex_unlock(&up->lock);
	entry_free(victim);
	if (e == NULL)
		return -1;
	if (pool_acquire_as(e->pool, &source, &lease->conn, err) != 0) {
		pthread_mutex_lock(&up->lock);
		dead = unpin_locked(up, e);
		pthread_mutex_unlock(&up->lock);
		entry_free(dead);
		return -1;
	}
	lease->entry = e;
	if (!e->proven)
		mark_proven(up, e);
	return 0;
}

void
userpools_release(struct userpools *up, struct user_lease *lease, bool broken)
{
	struct user_entry *e = lease->entry, *dead;

	if (e == NULL)
		return;
	pool_release(e->pool, lease->conn, broken);
	pthread_mutex_lock(&up->lock);
	e->last_used_ms = clock_monotonic_ms();
	dead = unpin_locked(up, e);
	pthread_mutex_unlock(&up->lock);
	entry_free(dead);
	lease->entry = NULL;
	lease->conn = NULL;
}

/* Whether an unpinned entry without connections should leave the cache. */
static bool
is_expendable(const struct userpools *up, const struct user_entry *e, int64_t now_ms)
{
	struct pool_stats st;

	if (e->refs > 0)
		return false;
	pool_get_stats(e->pool, &st);
	if (st.open > 0)
		return false;
	return !e->proven || now_ms - e->last_used_ms >= up->cfg->user_pool_remove_after_ms;
}

int
userpools_reap(struct userpools *up)
{
	struct user_entry **pinned, *e, *next, *dead = NULL;
	int n = 0, due = 0, cap, progress;
	int64_t now_ms;

	/* Reap connections outside the lock, on pinned entries. */
	pthread_mutex_lock(&up->lock);
	cap = up->count;
	pinned = cap > 0 ? calloc((size_t)cap, sizeof(*pinned)) : NULL;
	for (e = up->lru_head; e != NULL && pinned != NULL && n < cap; e = e->lru_next) {
		e->refs++;
		pinned[n++] = e;
	}
	pthread_mutex_unlock(&up->lock);
	/* Each entry is unpinned once reaped unless it has renewals to do: a
	 * pinned pool cannot make room for a new user (make_room_locked). */
	for (int i = 0; i < n; i++) {
		pool_reap(pinned[i]->pool);
		if (is_proven(up, pinned[i]) && pool_renewal_pending(pinned[i]->pool))
			pinned[due++] = pinned[i];
		else
			unpin_all(up, &pinned[i], 1);
	}
	progress = renew_entries(up, pinned, due);
	unpin_all(up, pinned, due);
	free(pinned);

	pthread_mutex_lock(&up->lock);
	now_ms = clock_monotonic_ms();
	for (e = up->lru_head; e != NULL; e = next) {
		next = e->lru_next;
		if (is_expendable(up, e, now_ms)) {
			table_remove(up, e);
			e->hnext = dead;
			dead = e;
		}
	}
	pthread_mutex_unlock(&up->lock);
	free_list(dead);
	return progress;
}

int
userpools_count(struct userpools *up)
{
	int n;

	pthread_mutex_lock(&up->lock);
	n = up->count;
	pthread_mutex_unlock(&up->lock);
	return n;
}

void
userpools_get_stats(struct userpools *up, struct pool_stats *total)
{
	struct pool_stats st;

	memset(total, 0, sizeof(*total));
	pthread_mutex_lock(&up->lock);
	for (struct user_entry *e = up->lru_head; e != NULL; e = e->lru_next) {
		pool_get_stats(e->pool, &st);
		total->open += st.open;
		total->idle += st.idle;
		total->busy += st.busy;
		total->waiting += st.waiting;
	}
	total->waiting += up->waiting;
	pthread_mutex_unlock(&up->lock);
}

struct userpools *
userpools_create(const struct lb_config *cfg, struct credcache *creds, struct conn_budget *budget)
{
	struct userpools *up = calloc(1, sizeof(*up));

	if (up == NULL)
		return NULL;
	up->cfg = cfg;
	up->creds = creds;
	up->budget = budget;
	up->nbuckets = 64;
	while (up->nbuckets < (size_t)cfg->max_user_pools * 2)
		up->nbuckets *= 2;
	up->buckets = calloc(up->nbuckets, sizeof(*up->buckets));
	if (up->buckets == NULL) {
		free(up);
		return NULL;
	}
	pthread_mutex_init(&up->lock, NULL);
	{
		pthread_condattr_t attr;

		pthread_condattr_init(&attr);
		pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
		pthread_cond_init(&up->unpinned, &attr);
		pthread_condattr_destroy(&attr);
	}
	return up;
}

void
userpools_destroy(struct userpools *up)
{
	struct user_entry *e, *next;

	if (up == NULL)
		return;
	for (e = up->lru_head; e != NULL; e = next) {
		next = e->lru_next;
		assert(e->refs == 0);
		entry_free(e);
	}
	pthread_cond_destroy(&up->unpinned);
	pthread_mutex_destroy(&up->lock);
	free(up->buckets);
	free(up);
}
