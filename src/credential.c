/*
 * credential.c - the per-process credential cache (see credential.h).
 *
 * One entry per identity: the service principal (a fixed entry), or a user
 * keyed by (email, SHA-256 of their workspace token) in a hash table with
 * an LRU list that bounds how many users are remembered. Each entry refreshes
 * single-flight: one thread mints with the cache unlocked, the others serve
 * the current credential while it is valid, or wait on the entry's condition
 * variable (bounded) when there is none.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "credential.h"
#include "log.h"
#include "retry.h"

#define MSG_UNAVAILABLE "The workspace API is unavailable."
#define MSG_INTERNAL "Internal error."
#define FAILED_REFRESH_BACKOFF_S 30	/* next try after a failed refresh, +/-20 % */
#define DEFAULT_MAX_USER_POOLS 1000

struct cred_entry {
	struct cred_entry *chain;	/* next in the hash bucket */
	struct cred_entry *lru_prev;	/* users: towards the most recently used */
	struct cred_entry *lru_next;
	uint64_t hash;
	enum identity_kind kind;
	char *email;			/* users: the key and the Postgres role */
	unsigned char token_fp[TOKEN_FP_LEN];

	char *token;			/* the credential (secret); NULL: none */
	time_t minted_at;
	time_t expires_at;
	time_t next_attempt_at;		/* after a failed refresh, while still valid */

	bool refreshing;
	int refs;			/* threads holding the entry across an unlock */
	unsigned long generation;	/* bumped when a refresh ends */
	bool last_failed;
	bool failure_logged;
	struct lb_error last_err;	/* the failed refresh's error, for its waiters */
	pthread_cond_t cond;		/* CLOCK_MONOTONIC */
};

struct credcache {
	struct workspace_client *ws;
	long margin_s;			/* refresh this long before expiry */
	long wait_ms;			/* longest wait for another thread's refresh */

	pthread_mutex_t lock;		/* guards everything below */
	struct cred_entry sp;
	char *sp_role;			/* resolved once */
	struct cred_entry **buckets;
	size_t nbuckets;		/* a power of two */
	struct cred_entry *lru_head;	/* most recently used user */
	struct cred_entry *lru_tail;
	size_t nusers;
	size_t max_users;
	unsigned char seed[16];		/* keeps bucket choice unpredictable to clients */
};

/* What a failed refresh leaves to log once the lock is released. */
struct refresh_report {
	bool log;
	enum identity_kind kind;
	char id[9];
	struct lb_error err;
};

/* ------------------------------------------------------------------ */
/* identities */

void
identity_user(struct identity *id, const char *email, const char *workspace_token)
{
	memset(id, 0, sizeof(*id));
	id->kind = IDENTITY_USER;
	id->email = email;
	id->workspace_token = workspace_token;
	if (workspace_token != NULL)
		SHA256((const unsigned char *)workspace_token, strlen(workspace_token), id->token_fp);
}

void
identity_sp(struct identity *id)
{
	memset(id, 0, sizeof(*id));
	id->kind = IDENTITY_SP;
}

void
credential_clear(struct credential *cred)
{
	if (cred == NULL)
		return;
	secret_free(cred->token);
	free(cred->role);
	cred->token = NULL;
	cred->role = NULL;
	cred->expires_at = 0;
}

/* ------------------------------------------------------------------ */
/* entries */

static int
fail(struct lb_error *err, enum lb_errcode code, enum lb_transience transience,
     const char *message, const char *detail)
{
	if (err == NULL)
		return -1;
	lb_error_clear(err);
	lb_error_set(err, code, message, "%s", detail);
	err->transience = transience;
	if (code == LB_ERR_UNAVAILABLE)
		err->retry_after_s = 5;
	return -1;
}

static int
oom(struct lb_error *err)
{
	return fail(err, LB_ERR_INTERNAL, LB_PERMANENT, MSG_INTERNAL, "out of memory");
}

static void
entry_init_cond(struct cred_entry *e)
{
	pthread_condattr_t attr;

	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&e->cond, &attr);
	pthread_condattr_destroy(&attr);
}

/* FNV-1a over the seed, the email and the fingerprint. */
static uint64_t
identity_hash(const struct credcache *cc, const struct identity *id)
{
	uint64_t h = 14695981039346656037ULL;
	const unsigned char *p;

	for (size_t i = 0; i < sizeof(cc->seed); i++)
		h = (h ^ cc->seed[i]) * 1099511628211ULL;
	for (p = (const unsigned char *)id->email; *p != '\0'; p++)
		h = (h ^ *p) * 1099511628211ULL;
	h = (h ^ 0xff) * 1099511628211ULL;	/* separates email from fingerprint */
	for (size_t i = 0; i < TOKEN_FP_LEN; i++)
		h = (h ^ id->token_fp[i]) * 1099511628211ULL;
	return h;
}

static void
lru_unlink(struct credcache *cc, struct cred_entry *e)
{
	if (e->lru_prev != NULL)
		e->lru_prev->lru_next = e->lru_next;
	else
		cc->lru_head = e->lru_next;
	if (e->lru_next != NULL)
		e->lru_next->lru_prev = e->lru_prev;
	else
		cc->lru_tail = e->lru_prev;
	e->lru_prev = e->lru_next = NULL;
}

static void
lru_push_head(struct credcache *cc, struct cred_entry *e)
{
	e->lru_prev = NULL;
	e->lru_next = cc->lru_head;
	if (cc->lru_head != NULL)
		cc->lru_head->lru_prev = e;
	cc->lru_head = e;
	if (cc->lru_tail == NULL)
		cc->lru_tail = e;
}

static void
entry_forget_token(struct cred_entry *e)
{
	secret_free(e->token);
	e->token = NULL;
	e->minted_at = 0;
	e->expires_at = 0;
	e->next_attempt_at = 0;
}

/* Unlinks a user entry and frees it, wiping its credential. */
static void
entry_destroy(struct credcache *cc, struct cred_entry *e)
{
	struct cred_entry **link = &cc->buckets[e->hash & (cc->nbuckets - 1)];

	while (*link != NULL && *link != e)
		link = &(*link)->chain;
	if (*link == e)
		*link = e->chain;
	lru_unlink(cc, e);
	cc->nusers--;
	entry_forget_token(e);
	free(e->email);
	OPENSSL_cleanse(e->token_fp, sizeof(e->token_fp));
	pthread_cond_destroy(&e->cond);
	free(e);
}

static struct cred_entry *
entry_find(struct credcache *cc, const struct identity *id, uint64_t hash)
{
	struct cred_entry *e;

	for (e = cc->buckets[hash & (cc->nbuckets - 1)]; e != NULL; e = e->chain) {
		if (e->hash == hash && strcmp(e->email, id->email) == 0 &&
		    CRYPTO_memcmp(e->token_fp, id->token_fp, TOKEN_FP_LEN) == 0)
			return e;
	}
	return NULL;
}

/* The entry of an identity (lock held), created when `create`; NULL when
 * absent or out of memory. A user entry becomes the most recently used. */
static struct cred_entry *
entry_get(struct credcache *cc, const struct identity *id, bool create)
{
	struct cred_entry *e;
	uint64_t hash;

	if (id->kind == IDENTITY_SP)
		return &cc->sp;
	hash = identity_hash(cc, id);
	e = entry_find(cc, id, hash);
	if (e != NULL) {
		lru_unlink(cc, e);
		lru_push_head(cc, e);
		return e;
	}
	if (!create)
		return NULL;
	e = calloc(1, sizeof(*e));
	if (e == NULL)
		return NULL;
	e->email = strdup(id->email);
	if (e->email == NULL) {
		free(e);
		return NULL;
	}
	e->kind = IDENTITY_USER;
	e->hash = hash;
	memcpy(e->token_fp, id->token_fp, TOKEN_FP_LEN);
	entry_init_cond(e);
	e->chain = cc->buckets[hash & (cc->nbuckets - 1)];
	cc->buckets[hash & (cc->nbuckets - 1)] = e;
	lru_push_head(cc, e);
	cc->nusers++;
	return e;
}

/* Drops a hold on an entry (lock held). A user entry left without a
 * credential is removed, so failed identities (forged tokens) do not pile up. */
static void
entry_put(struct credcache *cc, struct cred_entry *e)
{
	e->refs--;
	if (e->kind == IDENTITY_USER && e->refs == 0 && !e->refreshing && e->token == NULL)
		entry_destroy(cc, e);
}

/* Keeps at most max_users users, dropping the least recently used idle ones. */
static void
evict_over_limit(struct credcache *cc)
{
	struct cred_entry *e = cc->lru_tail, *prev;

	while (cc->nusers > cc->max_users && e != NULL) {
		prev = e->lru_prev;
		if (e->refs == 0 && !e->refreshing)
			entry_destroy(cc, e);
		e = prev;
	}
}

/* ------------------------------------------------------------------ */
/* the cache */

/* PGUSER, else the client id; NULL: ask SCIM Me with the SP's token. */
static const char *
configured_sp_role(const struct lb_config *cfg)
{
	if (cfg->pg_user != NULL && cfg->pg_user[0] != '\0')
		return cfg->pg_user;
	if (cfg->client_id != NULL && cfg->client_id[0] != '\0')
		return cfg->client_id;
	return NULL;
}

static size_t
bucket_count(size_t max_users)
{
	size_t n = 64;

	while (n < max_users && n < ((size_t)1 << 18))
		n *= 2;
	return n;
}

struct credcache *
credcache_create(const struct lb_config *cfg, struct workspace_client *ws, struct lb_error *err)
{
	struct credcache *cc;
	const char *role;
	int max_pools;

	if (cfg == NULL || ws == NULL) {
		fail(err, LB_ERR_INTERNAL, LB_PERMANENT, MSG_INTERNAL,
		     "credential cache needs a config and a workspace client");
		return NULL;
	}
	cc = calloc(1, sizeof(*cc));
	if (cc == NULL) {
		oom(err);
		return NULL;
	}
	max_pools = cfg->max_user_pools > 0 ? cfg->max_user_pools : DEFAULT_MAX_USER_POOLS;
	cc->ws = ws;
	cc->max_users = 4 * (size_t)max_pools;
	cc->nbuckets = bucket_count(cc->max_users);
	cc->buckets = calloc(cc->nbuckets, sizeof(*cc->buckets));
	cc->margin_s = cfg->refresh_margin_ms > 0 ? cfg->refresh_margin_ms / 1000 : 0;
	/* Room for one call through its whole retry schedule (about 6.6 s of
	 * sleeps); a waiter past that gets a 503 rather than hanging. */
	cc->wait_ms = RETRY_MAX_ATTEMPTS * (long)(cfg->http_timeout_ms > 0 ? cfg->http_timeout_ms : 30000) + 7000;
	role = configured_sp_role(cfg);
	if (role != NULL)
		cc->sp_role = strdup(role);
	if (cc->buckets == NULL || (role != NULL && cc->sp_role == NULL) ||
	    RAND_bytes(cc->seed, (int)sizeof(cc->seed)) != 1) {
		free(cc->buckets);
		free(cc->sp_role);
		free(cc);
		fail(err, LB_ERR_INTERNAL, LB_PERMANENT, MSG_INTERNAL,
		     "credential cache: out of memory or no randomness");
		return NULL;
	}
	pthread_mutex_init(&cc->lock, NULL);
	cc->sp.kind = IDENTITY_SP;
	entry_init_cond(&cc->sp);
	return cc;
}

void
credcache_destroy(struct credcache *cc)
{
	if (cc == NULL)
		return;
	while (cc->lru_head != NULL)
		entry_destroy(cc, cc->lru_head);
	entry_forget_token(&cc->sp);
	pthread_cond_destroy(&cc->sp.cond);
	pthread_mutex_destroy(&cc->lock);
	free(cc->buckets);
	free(cc->sp_role);
	free(cc);
}

/* Refresh this long before expiry: the configured margin, but at most half
 * the credential's lifetime, so short-lived credentials are not re-minted on
 * every request. */
static time_t
refresh_at(const struct credcache *cc, const struct cred_entry *e)
{
	time_t half_life = (e->expires_at - e->minted_at) / 2;
	time_t margin = (time_t)cc->margin_s < half_life ? (time_t)cc->margin_s : half_life;

	return e->expires_at - margin;
}

static bool
still_valid(const struct cred_entry *e, time_t now)
{
	return e->token != NULL && now < e->expires_at;
}

/* Copies the entry's credential for the caller (lock held). */
static int
copy_out(const struct credcache *cc, const struct cred_entry *e, struct credential *out,
	 struct lb_error *err)
{
	const char *role = e->kind == IDENTITY_SP ? cc->sp_role : e->email;

	out->token = strdup(e->token);
	out->role = role != NULL ? strdup(role) : NULL;
	out->expires_at = e->expires_at;
	if (out->token == NULL || out->role == NULL) {
		credential_clear(out);
		return oom(err);
	}
	return 0;
}

/* Waits (lock held) for the refresh in progress to end. -1: timed out. */
static int
wait_for_refresh(struct credcache *cc, struct cred_entry *e)
{
	unsigned long generation = e->generation;
	struct timespec deadline;

	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += cc->wait_ms / 1000;
	deadline.tv_nsec += (cc->wait_ms % 1000) * 1000000L;
	if (deadline.tv_nsec >= 1000000000L) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000L;
	}
	while (e->refreshing && e->generation == generation) {
		if (pthread_cond_timedwait(&e->cond, &cc->lock, &deadline) == ETIMEDOUT)
			return -1;
	}
	return 0;
}

/* Mints for the SP (cache unlocked): its workspace token, its role once,
 * then the credential. *role is set only when it had to be resolved. */
static int
mint_sp(struct credcache *cc, struct db_credential *cred, char **role, struct lb_error *err)
{
	char *ws_token = NULL;
	bool need_role;
	int rc;

	*role = NULL;
	if (workspace_sp_token(cc->ws, &ws_token, err) != 0)
		return -1;
	pthread_mutex_lock(&cc->lock);
	need_role = cc->sp_role == NULL;
	pthread_mutex_unlock(&cc->lock);
	rc = need_role ? workspace_current_user(cc->ws, ws_token, role, err) : 0;
	if (rc == 0)
		rc = workspace_mint_credential(cc->ws, ws_token, cred, err);
	if (rc != 0) {
		free(*role);
		*role = NULL;
	}
	secret_free(ws_token);
	return rc;
}

static int
mint(struct credcache *cc, const struct identity *id, struct db_credential *cred, char **role,
     struct lb_error *err)
{
	*role = NULL;
	if (id->kind == IDENTITY_SP)
		return mint_sp(cc, cred, role, err);
	return workspace_mint_credential(cc->ws, id->workspace_token, cred, err);
}

/* When to try again after a failed refresh while the credential is still
 * valid: 30 s +/- 20 %, but well before it expires. */
static time_t
next_attempt_after_failure(const struct cred_entry *e, time_t now)
{
	unsigned int r = 0;
	time_t backoff, quarter;

	RAND_bytes((unsigned char *)&r, (int)sizeof(r));
	backoff = FAILED_REFRESH_BACKOFF_S * 4 / 5 + (time_t)(r % (FAILED_REFRESH_BACKOFF_S * 2 / 5 + 1));
	quarter = (e->expires_at - now) / 4;
	if (quarter < 1)
		quarter = 1;
	return now + (backoff < quarter ? backoff : quarter);
}

/* Stores the outcome of a refresh (lock held) and wakes the waiters. */
static void
publish_refresh(struct credcache *cc, struct cred_entry *e, int rc, struct db_credential *cred,
		char *role, const struct lb_error *mint_err, struct refresh_report *report)
{
	time_t now = time(NULL);

	e->refreshing = false;
	e->generation++;
	e->last_failed = rc != 0;
	if (rc == 0) {
		entry_forget_token(e);
		e->token = cred->token;		/* ownership moves to the entry */
		cred->token = NULL;
		e->minted_at = now;
		e->expires_at = cred->expires_at;
		e->failure_logged = false;
		if (role != NULL && cc->sp_role == NULL)
			cc->sp_role = role;
		else
			free(role);
	} else {
		e->last_err = *mint_err;
		if (still_valid(e, now)) {
			e->next_attempt_at = next_attempt_after_failure(e, now);
			if (!e->failure_logged) {
				e->failure_logged = true;
				report->log = true;
				report->kind = e->kind;
				for (int i = 0; i < 4; i++)
					snprintf(report->id + 2 * i, 3, "%02x", e->token_fp[i]);
				report->err = *mint_err;
			}
		}
	}
	pthread_cond_broadcast(&e->cond);
}

/* Refreshes as the single flight's owner: called and returns with the lock
 * held, released around the network calls. */
static int
refresh(struct credcache *cc, struct cred_entry *e, const struct identity *id,
	struct credential *out, struct lb_error *err, struct refresh_report *report)
{
	struct db_credential cred = { 0 };
	struct lb_error mint_err;
	char *role = NULL;
	int rc;

	e->refreshing = true;
	pthread_mutex_unlock(&cc->lock);
	lb_error_clear(&mint_err);
	rc = mint(cc, id, &cred, &role, &mint_err);
	pthread_mutex_lock(&cc->lock);
	publish_refresh(cc, e, rc, &cred, role, &mint_err, report);
	db_credential_clear(&cred);
	if (still_valid(e, time(NULL)))
		return copy_out(cc, e, out, err);
	if (rc == 0)	/* minted an already expired credential: workspace clock skew */
		return fail(err, LB_ERR_UPSTREAM, LB_PERMANENT, "The workspace API returned an unexpected answer.",
			    "minted credential expired on arrival");
	if (err != NULL)
		*err = mint_err;
	return -1;
}

/* The acquire loop (lock held throughout, except inside refresh). */
static int
acquire_locked(struct credcache *cc, struct cred_entry *e, const struct identity *id,
	       struct credential *out, struct lb_error *err, struct refresh_report *report)
{
	time_t now;

	for (;;) {
		now = time(NULL);
		if (still_valid(e, now) && now < refresh_at(cc, e))
			return copy_out(cc, e, out, err);
		if (!e->refreshing) {
			/* Inside the window after a failed refresh: back off, serve the current one. */
			if (still_valid(e, now) && now < e->next_attempt_at)
				return copy_out(cc, e, out, err);
			return refresh(cc, e, id, out, err, report);
		}
		/* Someone else refreshes: a credential that has not expired need not wait. */
		if (still_valid(e, now))
			return copy_out(cc, e, out, err);
		if (wait_for_refresh(cc, e) != 0)
			return fail(err, LB_ERR_UNAVAILABLE, LB_TRANSIENT, MSG_UNAVAILABLE,
				    "timed out waiting for another thread's credential refresh");
		if (still_valid(e, time(NULL)))
			return copy_out(cc, e, out, err);
		if (e->last_failed) {
			/* Share the failure rather than queue another full retry cycle. */
			if (err != NULL)
				*err = e->last_err;
			return -1;
		}
	}
}

int
credcache_acquire(struct credcache *cc, const struct identity *id, struct credential *out,
		  struct lb_error *err)
{
	struct refresh_report report = { 0 };
	struct cred_entry *e;
	int rc;

	memset(out, 0, sizeof(*out));
	if (id->kind == IDENTITY_USER &&
	    (id->email == NULL || id->email[0] == '\0' ||
	     id->workspace_token == NULL || id->workspace_token[0] == '\0'))
		return fail(err, LB_ERR_UNAUTHENTICATED, LB_PERMANENT,
			    "The request does not carry a user identity.",
			    "credential for a user without email or workspace token");
	pthread_mutex_lock(&cc->lock);
	e = entry_get(cc, id, true);
	if (e == NULL) {
		pthread_mutex_unlock(&cc->lock);
		return oom(err);
	}
	e->refs++;
	rc = acquire_locked(cc, e, id, out, err, &report);
	entry_put(cc, e);
	evict_over_limit(cc);
	pthread_mutex_unlock(&cc->lock);
	if (report.log)
		log_warn("credential refresh failed; serving the current credential until it expires",
			 "identity", report.kind == IDENTITY_SP ? "sp" : "user",
			 "id", report.kind == IDENTITY_SP ? NULL : report.id,
			 "error", lb_errcode_name(report.err.code),
			 "transience", report.err.transience == LB_TRANSIENT ? "transient" : "permanent",
			 "detail", report.err.detail);
	return rc;
}

void
credcache_invalidate(struct credcache *cc, const struct identity *id, const char *stale_token)
{
	struct cred_entry *e;
	size_t len;

	if (stale_token == NULL)
		return;
	if (id->kind == IDENTITY_USER && id->email == NULL)
		return;
	len = strlen(stale_token);
	pthread_mutex_lock(&cc->lock);
	e = entry_get(cc, id, false);
	if (e != NULL && e->token != NULL && strlen(e->token) == len &&
	    CRYPTO_memcmp(e->token, stale_token, len) == 0)
		entry_forget_token(e);
	pthread_mutex_unlock(&cc->lock);
}
