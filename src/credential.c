/*
 * credential.c - the host's credential cache (see credential.h), kept in the
 * shared-memory segment of shm.h so that all worker processes of a host
 * mint each identity's credential once per lifetime.
 *
 * Each identity has a slot: the service principal (slot 0, with its OAuth
 * M2M token in slot 1) or a user (email + token fingerprint). A credential
 * that is missing or due (inside its refresh window) is refreshed by one
 * claimer across processes: it claims the slot (pid + deadline), calls the
 * workspace with the lock released, and publishes. The others serve the
 * current credential while it is valid, or wait (short futex waits,
 * re-checked, bounded) when there is none. A claimer that died or overran
 * its deadline is taken over.
 *
 * Eager identities (the SP by default) are refreshed by one background
 * refresher per host - a thread in every process; the one whose process
 * holds the segment's refresher claim (pid + heartbeat) works - as soon as
 * the window opens, so requests do not wait for a mint; lazy ones (users
 * by default) by the first request that finds them due, which claims the
 * refresh and hands the mint to a thread of its process while it goes on
 * with the current credential (a request waits for a mint only when there
 * is no valid credential to serve). A failed refresh
 * keeps serving the current credential until it really expires; the next
 * try comes after 30 s +/- 20 % (transient failures) or only once the
 * credential is gone (permanent ones: a 4xx is not retried in a loop).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "clock.h"
#include "credential.h"
#include "log.h"
#include "metrics.h"
#include "retry.h"
#include "shm.h"

#define MSG_UNAVAILABLE "The workspace API is unavailable."
#define MSG_BAD_ANSWER "The workspace API returned an unexpected answer."
#define MSG_INTERNAL "Internal error."
#define CACHE_KEY "credential_cache.path"
#define FAILED_REFRESH_BACKOFF_S 30	/* next try after a failed refresh, +/-20 % */
#define WAIT_SLICE_MS 100		/* one futex wait; the state is re-checked after it */
#define WAIT_SLACK_MS 1000		/* a waiter gives a claim its bound and this */
#define REFRESHER_TICK_MS 500		/* how often the background refresher looks */
#define REFRESHER_STALE_MS 5000		/* a refresher silent this long is replaced */
#define REFRESHER_BATCH 64		/* refreshes per tick at most */
#define OAUTH_MAX_LIFETIME_S 86400
#define STATUS_LOCK_TIMEOUT_MS 2000

struct credcache {
	struct workspace_client *ws;
	struct shm *shm;
	long margin_s;			/* refresh this long before expiry (at most half the lifetime) */
	int64_t call_bound_ms;		/* one workspace call through its whole retry schedule */
	bool sp_eager;
	bool user_eager;
	bool m2m;			/* the SP authenticates by OAuth M2M */
	char *sp_role;			/* configured (PGUSER, else the client id); NULL: SCIM Me */
	int max_host_connections;

	pthread_t refresher;
	bool refresher_started;
	pthread_mutex_t stop_lock;	/* also guards the hand-off queue */
	pthread_cond_t stop_cond;	/* CLOCK_MONOTONIC */
	bool stopping;

	/* Refreshes requests claimed and handed off (see hand_off_refresh). */
	pthread_t handoff_thread;
	bool handoff_started;
	pthread_cond_t handoff_cond;
	struct handoff *handoffs;	/* first in, first out */
	struct handoff **handoffs_tail;
	int nhandoffs;
};

/* What a refresh is for. */
struct target {
	uint32_t kind;			/* enum shm_kind */
	const char *email;		/* users */
	const unsigned char *fp;	/* users */
	const char *bearer;		/* users: the workspace token to mint with (secret) */
	int index;			/* the slot, once located */
};

/* What a workspace call produced. */
struct minted {
	char *token;			/* secret */
	time_t expires_at;
	time_t refresh_at;
	char *role;			/* the SP's role from SCIM Me, or NULL */
};

/* A failed refresh to log once the lock is released. */
struct refresh_report {
	bool log;
	uint32_t kind;
	char id[9];
	struct lb_error err;
};

/* ------------------------------------------------------------------ */
/* identities */

/*
 * SHA-256 of a workspace token, once per request. OpenSSL 3's one-shot
 * SHA256() looks the digest up (a global lock and a hash lookup) and
 * allocates a context on every call: the digest is fetched once, and each
 * thread keeps its context (freed when the thread ends).
 */
static EVP_MD *sha256_md;
static pthread_key_t sha256_ctx_key;
static bool sha256_ready;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void
free_sha256_ctx(void *ctx)
{
	EVP_MD_CTX_free(ctx);
}

static void
fetch_sha256(void)
{
	sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
	sha256_ready = sha256_md != NULL && pthread_key_create(&sha256_ctx_key, free_sha256_ctx) == 0;
}

static EVP_MD_CTX *
thread_sha256_ctx(void)
{
	EVP_MD_CTX *ctx = pthread_getspecific(sha256_ctx_key);

	if (ctx == NULL && (ctx = EVP_MD_CTX_new()) != NULL && pthread_setspecific(sha256_ctx_key, ctx) != 0) {
		EVP_MD_CTX_free(ctx);
		ctx = NULL;
	}
	return ctx;
}

static void
token_fingerprint(const char *token, unsigned char fp[TOKEN_FP_LEN])
{
	size_t len = strlen(token);
	EVP_MD_CTX *ctx;

	pthread_once(&sha256_once, fetch_sha256);
	ctx = sha256_ready ? thread_sha256_ctx() : NULL;
	if (ctx == NULL || EVP_DigestInit_ex2(ctx, sha256_md, NULL) != 1 || EVP_DigestUpdate(ctx, token, len) != 1 ||
	    EVP_DigestFinal_ex(ctx, fp, NULL) != 1)
		SHA256((const unsigned char *)token, len, fp);
}

void
identity_user(struct identity *id, const char *email, const char *workspace_token)
{
	memset(id, 0, sizeof(*id));
	id->kind = IDENTITY_USER;
	id->email = email;
	id->workspace_token = workspace_token;
	if (workspace_token != NULL)
		token_fingerprint(workspace_token, id->token_fp);
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
	cred->refresh_at = 0;
}

/* ------------------------------------------------------------------ */
/* small helpers */

static int
oom(struct lb_error *err)
{
	return lb_error_fail(err, LB_ERR_INTERNAL, LB_PERMANENT, MSG_INTERNAL, "out of memory");
}

static bool
is_valid(const struct shm_slot *sl, time_t now)
{
	return sl->cred_len > 0 && (int64_t)now < sl->expires_at;
}

static const char *
kind_label(uint32_t kind)
{
	switch (kind) {
	case SHM_KIND_SP:
		return "sp";
	case SHM_KIND_SP_OAUTH:
		return "sp-oauth";
	case SHM_KIND_USER:
		return "user";
	default:
		return "free";
	}
}

/* A short, non-reversible name for a user in logs: the fingerprint's start. */
static void
fp_prefix(const unsigned char *fp, char out[9])
{
	for (int i = 0; i < 4; i++)
		snprintf(out + 2 * i, 3, "%02x", fp[i]);
}

static void
minted_clear(struct minted *m)
{
	secret_free(m->token);
	free(m->role);
	memset(m, 0, sizeof(*m));
}

/* A copy of a secret of known length, in memory of exactly that size. */
static char *
secret_dup(const char *value, size_t len)
{
	char *s = malloc(len + 1);

	if (s == NULL)
		return NULL;
	memcpy(s, value, len);
	s[len] = '\0';
	return s;
}

/*
 * How long one claim may take before it is taken over: its refresh's worst
 * case, each workspace call through all its retries (call_bound_ms), so a
 * live claimer is never taken over (a second mint). The SP's with a static
 * token: SCIM Me and the mint. With M2M (mint_sp): a try gets the M2M token
 * (waiting for another claimer up to a call and the slack, then maybe a
 * call of its own), SCIM Me and the mint, and a 401 makes a second try that
 * skips SCIM Me only if the first got the role: 7 calls and twice the slack.
 */
static int64_t
claim_bound_ms(const struct credcache *cc, uint32_t kind)
{
	if (kind != SHM_KIND_SP)
		return cc->call_bound_ms;
	if (!cc->m2m)
		return 2 * cc->call_bound_ms;
	return 7 * cc->call_bound_ms + 2 * WAIT_SLACK_MS;
}

/* ------------------------------------------------------------------ */
/* slots (the segment's lock held) */

/* Finds (or makes) the target's slot and marks it used. */
static int
locate(struct credcache *cc, struct target *t, bool create, struct lb_error *err)
{
	int i;

	if (t->kind == SHM_KIND_SP) {
		i = SHM_SLOT_SP;
	} else if (t->kind == SHM_KIND_SP_OAUTH) {
		i = SHM_SLOT_SP_OAUTH;
	} else {
		i = shm_find(cc->shm, t->email, t->fp);
		if (i < 0 && !create)
			return -1;
		if (i < 0 && (i = shm_insert(cc->shm, t->email, t->fp, err)) < 0)
			return -1;
	}
	t->index = i;
	shm_touch(cc->shm, (uint32_t)i);
	return 0;
}

static const char *
slot_role(const struct credcache *cc, const struct shm_slot *sl)
{
	if (sl->kind == SHM_KIND_USER)
		return sl->email;
	if (sl->kind == SHM_KIND_SP)
		return cc->sp_role != NULL ? cc->sp_role : (sl->role[0] != '\0' ? sl->role : NULL);
	return "";
}

/* Copies the slot's credential for the caller. */
static int
copy_out(struct credcache *cc, uint32_t index, struct credential *out, struct lb_error *err)
{
	struct shm_slot *sl = shm_slot(cc->shm, index);
	const char *role = slot_role(cc, sl);

	if (role == NULL)
		return lb_error_fail(err, LB_ERR_INTERNAL, LB_PERMANENT, MSG_INTERNAL,
				     "the service principal's role is not known yet");
	out->token = secret_dup(shm_secret(cc->shm, index)->cred, sl->cred_len);
	out->role = strdup(role);
	out->expires_at = (time_t)sl->expires_at;
	out->refresh_at = (time_t)sl->refresh_at;
	if (out->token == NULL || out->role == NULL) {
		credential_clear(out);
		return oom(err);
	}
	return 0;
}

/* Whether the host's background refresher is alive (and so will refresh
 * eager slots without help from requests). */
static bool
refresher_alive(struct credcache *cc)
{
	struct shm_header *h = shm_header(cc->shm);

	return h->refresher_pid != 0 && clock_monotonic_ms() <= h->refresher_deadline_ms &&
	       shm_proc_alive(h->refresher_pid, h->refresher_start);
}

static bool
is_eager(const struct credcache *cc, const struct shm_slot *sl)
{
	if (sl->kind == SHM_KIND_SP)
		return cc->sp_eager;
	return sl->kind == SHM_KIND_USER && cc->user_eager && sl->bearer_len > 0;
}

/* May a request take the current (valid) credential as it is? */
static bool
serve_current(struct credcache *cc, const struct shm_slot *sl, time_t now, bool claimed)
{
	if ((int64_t)now < sl->refresh_at || claimed || (int64_t)now < sl->next_attempt_at)
		return true;
	/* Due: an eager slot is the background refresher's job while it lives. */
	return is_eager(cc, sl) && refresher_alive(cc);
}

/* When to try again after a failed refresh while the credential is still
 * valid: 30 s +/- 20 %, but well before it expires. */
static int64_t
next_attempt_after_failure(const struct shm_slot *sl, time_t now)
{
	unsigned int r = 0;
	int64_t backoff, quarter;

	if (RAND_bytes((unsigned char *)&r, (int)sizeof(r)) != 1)
		r = 0;
	backoff = FAILED_REFRESH_BACKOFF_S * 4 / 5 + (int64_t)(r % (FAILED_REFRESH_BACKOFF_S * 2 / 5 + 1));
	quarter = (sl->expires_at - (int64_t)now) / 4;
	if (quarter < 1)
		quarter = 1;
	return (int64_t)now + (backoff < quarter ? backoff : quarter);
}

/* Does the slot still hold the target's identity? */
static bool
slot_is_target(const struct shm_slot *sl, const struct target *t)
{
	if (sl->kind != t->kind)
		return false;
	if (t->kind != SHM_KIND_USER)
		return true;
	return strcmp(sl->email, t->email) == 0 && CRYPTO_memcmp(sl->fp, t->fp, SHM_FP_LEN) == 0;
}

static void
count_outcome(struct credcache *cc, uint32_t kind, bool ok)
{
	if (kind == SHM_KIND_SP_OAUTH)
		shm_count(cc->shm, ok ? SHM_OAUTH_OK : SHM_OAUTH_FAILED);
	else if (kind == SHM_KIND_SP)
		shm_count(cc->shm, ok ? SHM_MINTS_OK_SP : SHM_MINTS_FAILED_SP);
	else
		shm_count(cc->shm, ok ? SHM_MINTS_OK_USER : SHM_MINTS_FAILED_USER);
}

/* Writes a fresh credential into the slot (write bracket held). */
static int
store_minted(struct credcache *cc, const struct target *t, struct minted *m,
	     struct lb_error *err)
{
	struct shm_slot *sl = shm_slot(cc->shm, (uint32_t)t->index);
	size_t len = strlen(m->token);
	time_t now = time(NULL);

	if (shm_store_secret(cc->shm, (uint32_t)t->index, SHM_CRED, m->token, len, err) != 0)
		return -1;
	sl->minted_at = (int64_t)now;
	sl->expires_at = (int64_t)m->expires_at;
	sl->refresh_at = (int64_t)m->refresh_at;
	if (m->role != NULL)
		snprintf(sl->role, sizeof(sl->role), "%s", m->role);
	if (t->kind == SHM_KIND_USER) {
		/* Eager users: the background refresher mints with their token. */
		if (!cc->user_eager || t->bearer == NULL ||
		    shm_store_secret(cc->shm, (uint32_t)t->index, SHM_BEARER, t->bearer,
				     strlen(t->bearer), NULL) != 0)
			shm_wipe_secret(cc->shm, (uint32_t)t->index, SHM_BEARER);
	}
	sl->mint_count++;
	sl->last_failed = 0;
	sl->failure_logged = 0;
	sl->next_attempt_at = 0;
	return 0;
}

/* Checks what a workspace call returned before it replaces anything. */
static int
check_minted(const struct minted *m, struct lb_error *err)
{
	size_t len = strlen(m->token);
	char detail[160];

	if (len == 0 || len > SHM_SECRET_CAP) {
		snprintf(detail, sizeof(detail), "a credential of %zu bytes (the cache holds 1 to %d)",
			 len, SHM_SECRET_CAP);
		return lb_error_fail(err, LB_ERR_UPSTREAM, LB_PERMANENT, MSG_BAD_ANSWER, detail);
	}
	if (m->role != NULL && strlen(m->role) > SHM_ROLE_MAX)
		return lb_error_fail(err, LB_ERR_UPSTREAM, LB_PERMANENT, MSG_BAD_ANSWER,
				     "the service principal's role name is longer than 63 bytes");
	return 0;
}

/*
 * Publishes the outcome of a refresh (lock held) and wakes the waiters.
 * Nothing is published when the claim was taken over meanwhile. Returns
 * rc, or -1 (mint_err set) when the slot could not take the credential.
 */
static int
publish(struct credcache *cc, const struct target *t, uint64_t claim_id, int rc,
	struct minted *m, struct lb_error *mint_err, struct refresh_report *report)
{
	uint32_t index = (uint32_t)t->index;
	struct shm_slot *sl = shm_slot(cc->shm, index);
	time_t now = time(NULL);
	bool had_one;

	if (!shm_claim_is(cc->shm, index, claim_id)) {
		log_warn("credential cache: a refresh ended after its claim was taken over; "
			 "its result is dropped", "identity", kind_label(t->kind));
		return rc;
	}
	had_one = sl->mint_count > 0;	/* not this slot's first credential: a refresh */
	shm_begin_write(cc->shm, index);
	shm_claim_release(cc->shm, index);
	sl->generation++;
	if (rc == 0 && store_minted(cc, t, m, mint_err) != 0)
		rc = -1;	/* not reached: check_minted ran before */
	if (rc == 0) {
		count_outcome(cc, t->kind, true);
		if (had_one)
			shm_count(cc->shm, SHM_REFRESHES);
	} else {
		count_outcome(cc, t->kind, false);
		sl->last_failed = 1;
		sl->last_err = *mint_err;
		if (is_valid(sl, now)) {
			sl->next_attempt_at = mint_err->transience == LB_TRANSIENT ?
					      next_attempt_after_failure(sl, now) : sl->expires_at;
			if (!sl->failure_logged) {
				sl->failure_logged = 1;
				report->log = true;
				report->kind = t->kind;
				if (t->kind == SHM_KIND_USER)
					fp_prefix(sl->fp, report->id);
				report->err = *mint_err;
			}
		}
	}
	shm_end_write(cc->shm);
	shm_wake_all(cc->shm);
	return rc;
}

static void
log_report(const struct refresh_report *report)
{
	if (!report->log)
		return;
	log_warn("credential refresh failed; serving the current credential until it expires",
		 "identity", kind_label(report->kind),
		 "id", report->kind == SHM_KIND_USER ? report->id : NULL,
		 "error", lb_errcode_name(report->err.code),
		 "transience", report->err.transience == LB_TRANSIENT ? "transient" : "permanent",
		 "detail", report->err.detail);
}

/* ------------------------------------------------------------------ */
/* workspace calls (the lock NOT held) */

static int acquire_locked(struct credcache *cc, struct target *t, struct credential *out,
			  struct lb_error *err, struct refresh_report *report);

time_t
credential_refresh_time(long margin_s, time_t minted_at, time_t expires_at, unsigned int random)
{
	time_t half_life = (expires_at - minted_at) / 2;
	time_t margin = (time_t)margin_s < half_life ? (time_t)margin_s : half_life;

	if (margin >= 4)
		margin -= (time_t)(random % (unsigned int)(margin / 4 + 1));
	return expires_at - margin;
}

static time_t
refresh_time(const struct credcache *cc, time_t minted_at, time_t expires_at)
{
	unsigned int r = 0;

	if (RAND_bytes((unsigned char *)&r, (int)sizeof(r)) != 1)
		r = 0;
	return credential_refresh_time(cc->margin_s, minted_at, expires_at, r);
}

/* The SP's workspace token: the static one, or the shared M2M token. */
static int
sp_bearer(struct credcache *cc, char **bearer, struct lb_error *err)
{
	struct refresh_report report = { 0 };
	struct target t = { .kind = SHM_KIND_SP_OAUTH };
	struct credential c = { 0 };
	int rc;

	*bearer = NULL;
	if (!cc->m2m)
		return workspace_sp_token(cc->ws, bearer, err);
	shm_lock(cc->shm);
	rc = acquire_locked(cc, &t, &c, err, &report);
	shm_unlock(cc->shm);
	log_report(&report);
	if (rc == 0) {
		*bearer = c.token;
		c.token = NULL;
	}
	credential_clear(&c);
	return rc;
}

/* The workspace refused the M2M token `bearer`: drop it (unless replaced). */
static void
forget_bearer(struct credcache *cc, const char *bearer)
{
	struct shm_slot *sl;
	size_t len = strlen(bearer);

	shm_lock(cc->shm);
	sl = shm_slot(cc->shm, SHM_SLOT_SP_OAUTH);
	if (sl->cred_len == len &&
	    CRYPTO_memcmp(shm_secret(cc->shm, SHM_SLOT_SP_OAUTH)->cred, bearer, len) == 0) {
		shm_begin_write(cc->shm, SHM_SLOT_SP_OAUTH);
		shm_wipe_secret(cc->shm, SHM_SLOT_SP_OAUTH, SHM_CRED);
		sl->expires_at = 0;
		sl->refresh_at = 0;
		sl->next_attempt_at = 0;
		shm_end_write(cc->shm);
	}
	shm_unlock(cc->shm);
}

/* One try of the SP's mint with a workspace token: its role when it must
 * be resolved, then the credential. */
static int
mint_sp_with(struct credcache *cc, const char *bearer, bool need_role, struct minted *m,
	     struct lb_error *err)
{
	struct db_credential cred = { 0 };

	if (need_role && m->role == NULL &&
	    workspace_current_user(cc->ws, bearer, &m->role, err) != 0)
		return -1;
	if (workspace_mint_credential(cc->ws, bearer, &cred, err) != 0)
		return -1;
	m->token = cred.token;
	m->expires_at = cred.expires_at;
	return 0;
}

/* The workspace refusing the SP's own token (401, 403) is not the client's
 * doing: the worker's configuration is wrong, a 502. */
static int
sp_refused(struct lb_error *err)
{
	if (err != NULL && (err->code == LB_ERR_UNAUTHENTICATED || err->code == LB_ERR_FORBIDDEN)) {
		err->code = LB_ERR_UPSTREAM;
		snprintf(err->message, sizeof(err->message), "%s",
			 "The workspace API refused the request.");
	}
	return -1;
}

/* The SP's credential. A 401 with the shared M2M token means the workspace
 * no longer accepts that token (revoked, or the workspace forgot it): get a
 * new one and try once more. */
static int
mint_sp(struct credcache *cc, bool need_role, struct minted *m, struct lb_error *err)
{
	char *bearer = NULL;
	int rc;

	for (int attempt = 0; attempt < 2; attempt++) {
		if (sp_bearer(cc, &bearer, err) != 0)
			return -1;
		rc = mint_sp_with(cc, bearer, need_role, m, err);
		if (rc == 0 || !cc->m2m || err == NULL || err->code != LB_ERR_UNAUTHENTICATED ||
		    attempt > 0) {
			secret_free(bearer);
			return rc == 0 ? 0 : sp_refused(err);
		}
		forget_bearer(cc, bearer);
		secret_free(bearer);
		bearer = NULL;
	}
	return -1;
}

static int
mint(struct credcache *cc, const struct target *t, bool need_role, struct minted *m,
     struct lb_error *err)
{
	struct db_credential cred = { 0 };
	time_t started = time(NULL);
	long expires_in = 0;
	int rc;

	memset(m, 0, sizeof(*m));
	if (t->kind == SHM_KIND_SP_OAUTH) {
		rc = workspace_fetch_sp_token(cc->ws, &m->token, &expires_in, err);
		if (rc != 0)
			return -1;
		if (expires_in > OAUTH_MAX_LIFETIME_S)
			expires_in = OAUTH_MAX_LIFETIME_S;
		/* Counted from before the request: never later than the server's clock. */
		m->expires_at = started + (time_t)expires_in;
		m->refresh_at = m->expires_at - (expires_in / 10 < 60 ? expires_in / 10 : 60);
		return 0;
	}
	if (t->kind == SHM_KIND_SP)
		rc = mint_sp(cc, need_role, m, err);
	else if ((rc = workspace_mint_credential(cc->ws, t->bearer, &cred, err)) == 0) {
		m->token = cred.token;
		m->expires_at = cred.expires_at;
	}
	if (rc == 0)
		m->refresh_at = refresh_time(cc, time(NULL), m->expires_at);
	return rc;
}

/* ------------------------------------------------------------------ */
/* acquiring (the lock held, except around the workspace calls) */

/*
 * The claimer's work, the lock held on entry and on return but released
 * around the workspace calls: mints and publishes the outcome. A value the
 * cache refuses (check_minted) fails the claimer as it fails the waiters:
 * it is never handed out, published or not.
 */
static int
mint_claimed(struct credcache *cc, const struct target *t, uint64_t claim_id, struct minted *m,
	     struct lb_error *mint_err, struct refresh_report *report)
{
	struct shm_slot *sl = shm_slot(cc->shm, (uint32_t)t->index);
	bool need_role = t->kind == SHM_KIND_SP && cc->sp_role == NULL && sl->role[0] == '\0';
	int64_t started_ms;
	int rc;

	shm_unlock(cc->shm);
	lb_error_clear(mint_err);
	started_ms = clock_monotonic_ms();
	rc = mint(cc, t, need_role, m, mint_err);
	if (rc == 0)
		rc = check_minted(m, mint_err);
	metrics_refresh_duration((long long)(clock_monotonic_ms() - started_ms) * 1000);
	shm_lock(cc->shm);
	return publish(cc, t, claim_id, rc, m, mint_err, report);
}

/*
 * Refreshes as the claimer: claims the slot, mints with the lock released,
 * publishes. Returns the slot's credential (or, when the claim was taken
 * over meanwhile, the one just minted).
 */
static int
refresh(struct credcache *cc, struct target *t, struct credential *out, struct lb_error *err,
	struct refresh_report *report)
{
	struct shm_slot *sl;
	struct lb_error mint_err;
	struct minted m = { 0 };
	const char *role;
	uint64_t claim_id;
	int rc;

	claim_id = shm_claim(cc->shm, (uint32_t)t->index,
			     clock_monotonic_ms() + claim_bound_ms(cc, t->kind));
	rc = mint_claimed(cc, t, claim_id, &m, &mint_err, report);

	sl = shm_slot(cc->shm, (uint32_t)t->index);
	role = t->kind == SHM_KIND_USER ? t->email : slot_role(cc, sl);
	if (role == NULL)
		role = m.role;
	if (slot_is_target(sl, t) && is_valid(sl, time(NULL))) {
		rc = copy_out(cc, (uint32_t)t->index, out, err);
	} else if (rc == 0 && m.token != NULL && m.expires_at > time(NULL) && role != NULL) {
		/* Not published (taken over): still a credential the workspace gave us. */
		out->token = m.token;
		out->role = strdup(role);
		out->expires_at = m.expires_at;
		out->refresh_at = m.refresh_at;
		m.token = NULL;
		if (out->role == NULL) {
			credential_clear(out);
			rc = oom(err);
		}
	} else if (rc == 0) {
		rc = lb_error_fail(err, LB_ERR_UPSTREAM, LB_PERMANENT, MSG_BAD_ANSWER,
				   "minted credential expired on arrival");
	} else if (err != NULL) {
		*err = mint_err;
	}
	minted_clear(&m);
	return rc;
}

/* ------------------------------------------------------------------ */
/* refreshes handed off by requests */

/*
 * A request that finds its identity due while the current credential is
 * still valid claims the refresh (one claimer per host, as ever) and hands
 * the mint to its process's hand-off thread, then goes on with the current
 * credential: no request waits for a mint that is not needed yet, and no
 * worker thread is tied up while the workspace answers. A user's token is
 * copied for the length of that mint only, then wiped. When the queue is
 * full (or the thread is gone), the request refreshes itself as before.
 */
#define HANDOFF_MAX 256

/*
 * A target that owns what it points to, so that it outlives the request or
 * the slot it was read from: a queued hand-off, or the refresher's due
 * slot read under the lock.
 */
struct owned_target {
	struct target t;		/* email, fp and bearer point into this struct */
	char email[SHM_EMAIL_MAX + 1];
	unsigned char fp[SHM_FP_LEN];
	char *bearer;			/* secret */
};

/* Copies a target (a user's bearer: `bearer_len` bytes); -1 when out of
 * memory or the email is too long. */
static int
owned_target_set(struct owned_target *o, uint32_t kind, int index, const char *email,
		 const unsigned char *fp, const char *bearer, size_t bearer_len)
{
	size_t email_len;

	memset(o, 0, sizeof(*o));
	o->t.kind = kind;
	o->t.index = index;
	if (kind != SHM_KIND_USER)
		return 0;
	email_len = strnlen(email, SHM_EMAIL_MAX + 1);
	if (email_len > SHM_EMAIL_MAX || (o->bearer = secret_dup(bearer, bearer_len)) == NULL)
		return -1;
	memcpy(o->email, email, email_len);
	memcpy(o->fp, fp, sizeof(o->fp));
	o->t.email = o->email;
	o->t.fp = o->fp;
	o->t.bearer = o->bearer;
	return 0;
}

static void
owned_target_clear(struct owned_target *o)
{
	secret_free(o->bearer);
	OPENSSL_cleanse(o, sizeof(*o));
}

struct handoff {
	struct handoff *next;
	struct owned_target target;
	uint64_t claim_id;
};

static void
handoff_free(struct handoff *h)
{
	owned_target_clear(&h->target);
	free(h);
}

/* A copy of the target that outlives the request (the lock held). */
static struct handoff *
handoff_new(const struct target *t)
{
	struct handoff *h = calloc(1, sizeof(*h));

	if (h == NULL)
		return NULL;
	if (owned_target_set(&h->target, t->kind, t->index, t->email, t->fp, t->bearer,
			     t->kind == SHM_KIND_USER ? strlen(t->bearer) : 0) != 0) {
		free(h);
		return NULL;
	}
	return h;
}

/* Claims the target's refresh and queues it (the lock held); false when
 * it could not be queued: the caller refreshes itself. */
static bool
hand_off_refresh(struct credcache *cc, const struct target *t)
{
	struct handoff *h;
	bool queued = false;

	if (!cc->handoff_started || (h = handoff_new(t)) == NULL)
		return false;
	pthread_mutex_lock(&cc->stop_lock);
	if (!cc->stopping && cc->nhandoffs < HANDOFF_MAX) {
		h->claim_id = shm_claim(cc->shm, (uint32_t)t->index,
					clock_monotonic_ms() + claim_bound_ms(cc, t->kind));
		*cc->handoffs_tail = h;
		cc->handoffs_tail = &h->next;
		cc->nhandoffs++;
		pthread_cond_signal(&cc->handoff_cond);
		queued = true;
	}
	pthread_mutex_unlock(&cc->stop_lock);
	if (!queued)
		handoff_free(h);
	return queued;
}

/* The next queued refresh, or NULL once stopping with none left; waits. */
static struct handoff *
next_handoff(struct credcache *cc, bool *stop)
{
	struct handoff *h;

	pthread_mutex_lock(&cc->stop_lock);
	while (!cc->stopping && cc->handoffs == NULL)
		pthread_cond_wait(&cc->handoff_cond, &cc->stop_lock);
	h = cc->handoffs;
	if (h != NULL) {
		cc->handoffs = h->next;
		if (cc->handoffs == NULL)
			cc->handoffs_tail = &cc->handoffs;
		cc->nhandoffs--;
	}
	*stop = cc->stopping;
	pthread_mutex_unlock(&cc->stop_lock);
	return h;
}

/*
 * Whether a queued refresh still holds its claim (the lock held). Claimed
 * when queued, so that the requests behind it do not queue it again; a
 * slow workspace can keep it queued past its deadline, and then another
 * request has taken over and refreshes: this one must not mint too. Still
 * ours: the claim's deadline counts from now, when the mint starts.
 */
static bool
handoff_still_ours(struct credcache *cc, const struct handoff *h)
{
	const struct target *t = &h->target.t;

	return shm_claim_extend(cc->shm, (uint32_t)t->index, h->claim_id,
				clock_monotonic_ms() + claim_bound_ms(cc, t->kind));
}

static void *
handoff_main(void *arg)
{
	struct credcache *cc = arg;
	struct refresh_report report;
	struct lb_error mint_err;
	struct minted m;
	struct handoff *h;
	bool stop;

	while ((h = next_handoff(cc, &stop)) != NULL) {
		memset(&report, 0, sizeof(report));
		memset(&m, 0, sizeof(m));
		shm_lock(cc->shm);
		if (!stop) {
			if (handoff_still_ours(cc, h))
				mint_claimed(cc, &h->target.t, h->claim_id, &m, &mint_err, &report);
		} else if (shm_claim_is(cc->shm, (uint32_t)h->target.t.index, h->claim_id)) {
			/* Stopping: let another process's request take it at once. */
			shm_claim_release(cc->shm, (uint32_t)h->target.t.index);
			shm_wake_all(cc->shm);
		}
		shm_unlock(cc->shm);
		minted_clear(&m);
		log_report(&report);
		handoff_free(h);
	}
	return NULL;
}

/* Another process's refresh failed: its error, for this waiter. */
static int
share_failure(const struct shm_slot *sl, struct lb_error *err)
{
	if (err != NULL) {
		*err = sl->last_err;
		err->message[sizeof(err->message) - 1] = '\0';
		err->detail[sizeof(err->detail) - 1] = '\0';
	}
	return -1;
}

/* The acquire loop: serve, refresh, or wait for the claimer. */
static int
acquire_locked(struct credcache *cc, struct target *t, struct credential *out,
	       struct lb_error *err, struct refresh_report *report)
{
	int64_t wait_until = clock_monotonic_ms() + claim_bound_ms(cc, t->kind) + WAIT_SLACK_MS;
	struct shm_slot *sl;
	bool claimed, waited = false;
	uint32_t generation = 0;
	int waited_index = -1;
	time_t now;

	for (;;) {
		if (locate(cc, t, true, err) != 0)
			return -1;
		sl = shm_slot(cc->shm, (uint32_t)t->index);
		now = time(NULL);
		claimed = shm_claim_active(cc->shm, (uint32_t)t->index);
		if (is_valid(sl, now) && (serve_current(cc, sl, now, claimed) || hand_off_refresh(cc, t)))
			return copy_out(cc, (uint32_t)t->index, out, err);
		if (!claimed)
			return refresh(cc, t, out, err, report);
		/* Another refresh is under way and there is nothing valid to serve. */
		if (waited && waited_index == t->index && sl->generation != generation &&
		    sl->last_failed)
			return share_failure(sl, err);	/* rather than queue another retry cycle */
		if (clock_monotonic_ms() >= wait_until)
			return lb_error_fail(err, LB_ERR_UNAVAILABLE, LB_TRANSIENT, MSG_UNAVAILABLE,
					     "timed out waiting for another process's credential refresh");
		if (!waited)
			shm_count(cc->shm, SHM_WAITS);
		waited = true;
		waited_index = t->index;
		generation = sl->generation;
		shm_wait(cc->shm, WAIT_SLICE_MS);
	}
}

int
credcache_acquire(struct credcache *cc, const struct identity *id, struct credential *out,
		  struct lb_error *err)
{
	struct refresh_report report = { 0 };
	struct target t = { .kind = SHM_KIND_SP };
	int rc;

	memset(out, 0, sizeof(*out));
	if (id->kind == IDENTITY_USER) {
		if (id->email == NULL || id->email[0] == '\0' ||
		    id->workspace_token == NULL || id->workspace_token[0] == '\0')
			return lb_error_fail(err, LB_ERR_UNAUTHENTICATED, LB_PERMANENT,
					     "The request does not carry a user identity.",
					     "credential for a user without email or workspace token");
		if (strlen(id->email) > SHM_EMAIL_MAX)
			return lb_error_fail(err, LB_ERR_ROLE_MISSING, LB_PERMANENT, LB_MSG_ROLE_MISSING,
					     "the email is longer than 63 bytes, so it cannot be a Postgres role");
		t.kind = SHM_KIND_USER;
		t.email = id->email;
		t.fp = id->token_fp;
		t.bearer = id->workspace_token;
	}
	shm_lock(cc->shm);
	rc = acquire_locked(cc, &t, out, err, &report);
	shm_unlock(cc->shm);
	log_report(&report);
	return rc;
}

int
credcache_peek(struct credcache *cc, const struct identity *id, struct credential *out)
{
	struct lb_error err;
	int index, rc = -1;

	memset(out, 0, sizeof(*out));
	if (id->kind == IDENTITY_USER && id->email == NULL)
		return -1;
	shm_lock(cc->shm);
	index = id->kind == IDENTITY_USER ? shm_find(cc->shm, id->email, id->token_fp) : SHM_SLOT_SP;
	if (index >= 0 && is_valid(shm_slot(cc->shm, (uint32_t)index), time(NULL)))
		rc = copy_out(cc, (uint32_t)index, out, &err);
	shm_unlock(cc->shm);
	return rc;
}

void
credcache_invalidate(struct credcache *cc, const struct identity *id, const char *stale_token)
{
	struct target t = { .kind = SHM_KIND_SP };
	struct shm_slot *sl;
	size_t len;

	if (stale_token == NULL)
		return;
	if (id->kind == IDENTITY_USER) {
		if (id->email == NULL)
			return;
		t.kind = SHM_KIND_USER;
		t.email = id->email;
		t.fp = id->token_fp;
	}
	len = strlen(stale_token);
	shm_lock(cc->shm);
	if (locate(cc, &t, false, NULL) == 0) {
		sl = shm_slot(cc->shm, (uint32_t)t.index);
		if (sl->cred_len == len &&
		    CRYPTO_memcmp(shm_secret(cc->shm, (uint32_t)t.index)->cred, stale_token, len) == 0) {
			shm_begin_write(cc->shm, (uint32_t)t.index);
			shm_wipe_secret(cc->shm, (uint32_t)t.index, SHM_CRED);
			sl->expires_at = 0;
			sl->refresh_at = 0;
			sl->next_attempt_at = 0;
			shm_end_write(cc->shm);
		}
	}
	shm_unlock(cc->shm);
}

/* ------------------------------------------------------------------ */
/* the background refresher */

/* Does this process hold (or may it take) the host's refresher role? */
static bool
refresher_role(struct credcache *cc)
{
	struct shm_header *h = shm_header(cc->shm);
	int64_t now_ms = clock_monotonic_ms();
	uint64_t start = shm_self_start();
	pid_t me = getpid();
	char previous[16];

	if (h->refresher_pid == (int32_t)me && h->refresher_start == start) {
		if (h->refresher_deadline_ms < now_ms + REFRESHER_STALE_MS)
			h->refresher_deadline_ms = now_ms + REFRESHER_STALE_MS;
		return true;
	}
	if (refresher_alive(cc))
		return false;
	if (h->refresher_pid != 0) {
		snprintf(previous, sizeof(previous), "%ld", (long)h->refresher_pid);
		shm_count(cc->shm, SHM_REFRESHER_TAKEOVERS);
		log_info("credential cache: this process takes over as the host's background refresher",
			 "previous_pid", previous);
	} else {
		log_info("credential cache: this process is the host's background refresher");
	}
	h->refresher_start = start;
	h->refresher_deadline_ms = now_ms + REFRESHER_STALE_MS;
	h->refresher_pid = (int32_t)me;
	return true;
}

static bool
slot_due(struct credcache *cc, uint32_t index, time_t now)
{
	struct shm_slot *sl = shm_slot(cc->shm, index);

	return is_eager(cc, sl) && is_valid(sl, now) && (int64_t)now >= sl->refresh_at &&
	       (int64_t)now >= sl->next_attempt_at && !shm_claim_active(cc->shm, index);
}

/* An eager slot whose window has opened, or -1. */
static int
due_slot(struct credcache *cc)
{
	time_t now = time(NULL);

	if (cc->sp_eager && slot_due(cc, SHM_SLOT_SP, now))
		return SHM_SLOT_SP;
	if (!cc->user_eager)
		return -1;
	for (uint32_t i = SHM_FIRST_USER_SLOT; i < shm_nslots(cc->shm); i++) {
		if (shm_slot(cc->shm, i)->kind == SHM_KIND_USER && slot_due(cc, i, now))
			return (int)i;
	}
	return -1;
}

static bool
stopping(struct credcache *cc)
{
	bool stop;

	pthread_mutex_lock(&cc->stop_lock);
	stop = cc->stopping;
	pthread_mutex_unlock(&cc->stop_lock);
	return stop;
}

/* One eager refresh if one is due; false when there was nothing to do. */
static bool
refresh_one_due(struct credcache *cc)
{
	struct refresh_report report = { 0 };
	struct credential out = { 0 };
	struct lb_error err;
	struct owned_target t;
	struct shm_slot *sl;
	int index;

	shm_lock(cc->shm);
	if (!refresher_role(cc) || (index = due_slot(cc)) < 0) {
		shm_unlock(cc->shm);
		return false;
	}
	sl = shm_slot(cc->shm, (uint32_t)index);
	if (owned_target_set(&t, sl->kind, index, sl->email, sl->fp,
			     shm_secret(cc->shm, (uint32_t)index)->bearer, sl->bearer_len) != 0) {
		shm_unlock(cc->shm);
		owned_target_clear(&t);
		return false;
	}
	/* Our heartbeat stops while we mint: say how long that may take. */
	shm_header(cc->shm)->refresher_deadline_ms = clock_monotonic_ms() +
		claim_bound_ms(cc, t.t.kind) + REFRESHER_STALE_MS;
	lb_error_clear(&err);
	refresh(cc, &t.t, &out, &err, &report);
	refresher_role(cc);
	shm_unlock(cc->shm);
	credential_clear(&out);
	owned_target_clear(&t);
	log_report(&report);
	return true;
}

static void *
refresher_main(void *arg)
{
	struct credcache *cc = arg;
	struct timespec deadline;

	for (;;) {
		pthread_mutex_lock(&cc->stop_lock);
		clock_deadline_ms(&deadline, CLOCK_MONOTONIC, REFRESHER_TICK_MS);
		while (!cc->stopping &&
		       pthread_cond_timedwait(&cc->stop_cond, &cc->stop_lock, &deadline) != ETIMEDOUT)
			;
		if (cc->stopping) {
			pthread_mutex_unlock(&cc->stop_lock);
			return NULL;
		}
		pthread_mutex_unlock(&cc->stop_lock);
		for (int n = 0; n < REFRESHER_BATCH && !stopping(cc) && refresh_one_due(cc); n++)
			;
	}
}

static int
start_threads(struct credcache *cc, struct lb_error *err)
{
	pthread_condattr_t attr;

	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&cc->stop_cond, &attr);
	pthread_condattr_destroy(&attr);
	pthread_mutex_init(&cc->stop_lock, NULL);
	pthread_cond_init(&cc->handoff_cond, NULL);
	cc->handoffs_tail = &cc->handoffs;
	if (pthread_create(&cc->handoff_thread, NULL, handoff_main, cc) != 0)
		return lb_error_fail(err, LB_ERR_INTERNAL, LB_PERMANENT, MSG_INTERNAL,
				     "cannot start the credential hand-off thread");
	cc->handoff_started = true;
	if (!cc->sp_eager && !cc->user_eager)
		return 0;
	if (pthread_create(&cc->refresher, NULL, refresher_main, cc) != 0)
		return lb_error_fail(err, LB_ERR_INTERNAL, LB_PERMANENT, MSG_INTERNAL,
				     "cannot start the credential refresher thread");
	cc->refresher_started = true;
	return 0;
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

/*
 * What the segment's contents belong to: SHA-256 over the workspace host,
 * the Lakebase endpoint, the database and the SP's identity (its client id,
 * or the fingerprint of its static token: never a secret itself). Another
 * deployment sharing the file must not take this one's credentials (slot 0,
 * the M2M token, the SP's SCIM role) as its own. 0, or -1 (err set).
 */
static int
deployment_key(const struct lb_config *cfg, unsigned char key[SHM_OWNER_LEN],
	       struct lb_error *err)
{
	const char *fields[] = { "lakebase-fcgi deployment 1", cfg->databricks_host,
				 cfg->lakebase_endpoint, cfg->pg_database,
				 cfg->static_token != NULL ? "token" : "client",
				 cfg->static_token != NULL ? NULL : cfg->client_id };
	unsigned char token_fp[TOKEN_FP_LEN];
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	bool ok = ctx != NULL && EVP_DigestInit_ex2(ctx, EVP_sha256(), NULL) == 1;

	/* Each field with its NUL: ("ab", "c") and ("a", "bc") differ. */
	for (size_t i = 0; ok && i < sizeof(fields) / sizeof(fields[0]); i++) {
		const char *f = fields[i] != NULL ? fields[i] : "";

		ok = EVP_DigestUpdate(ctx, f, strlen(f) + 1) == 1;
	}
	if (ok && cfg->static_token != NULL) {
		token_fingerprint(cfg->static_token, token_fp);
		ok = EVP_DigestUpdate(ctx, token_fp, sizeof(token_fp)) == 1;
	}
	ok = ok && EVP_DigestFinal_ex(ctx, key, NULL) == 1;
	EVP_MD_CTX_free(ctx);
	OPENSSL_cleanse(token_fp, sizeof(token_fp));
	if (!ok)
		return lb_error_fail(err, LB_ERR_INTERNAL, LB_PERMANENT, MSG_INTERNAL,
				     "cannot compute the credential cache's deployment key");
	return 0;
}

static bool
is_eager_setting(const char *value, bool fallback)
{
	if (value == NULL)
		return fallback;
	return strcmp(value, "eager") == 0;
}

struct credcache *
credcache_create(const struct lb_config *cfg, struct workspace_client *ws, struct lb_error *err)
{
	unsigned char owner[SHM_OWNER_LEN];
	struct credcache *cc;
	const char *role;
	long connect_ms, total_ms;
	char slots[16], configured[16];

	if (cfg == NULL || ws == NULL) {
		lb_error_fail(err, LB_ERR_INTERNAL, LB_PERMANENT, MSG_INTERNAL,
			      "credential cache needs a config and a workspace client");
		return NULL;
	}
	cc = calloc(1, sizeof(*cc));
	if (cc == NULL) {
		oom(err);
		return NULL;
	}
	cc->ws = ws;
	cc->margin_s = cfg->refresh_margin_ms > 0 ? cfg->refresh_margin_ms / 1000 : 0;
	connect_ms = cfg->http_connect_timeout_ms > 0 ? cfg->http_connect_timeout_ms : 10000;
	total_ms = cfg->http_timeout_ms > 0 ? cfg->http_timeout_ms : 30000;
	/* Every try may take its whole timeout; the retry sleeps add up to
	 * 50 + 500 + 5000 ms, +20 % jitter. */
	cc->call_bound_ms = RETRY_MAX_ATTEMPTS * (connect_ms + total_ms) + 6700;
	cc->sp_eager = is_eager_setting(cfg->cache_sp_refresh, true);
	cc->user_eager = is_eager_setting(cfg->cache_user_refresh, false);
	cc->m2m = workspace_sp_uses_m2m(ws);
	cc->max_host_connections = cfg->max_host_connections;
	role = configured_sp_role(cfg);
	if (role != NULL && (cc->sp_role = strdup(role)) == NULL) {
		free(cc);
		oom(err);
		return NULL;
	}
	if (deployment_key(cfg, owner, err) == 0)
		cc->shm = shm_attach(cfg->cache_path,
				     cfg->cache_slots > 0 ? (uint32_t)cfg->cache_slots : 4096,
				     true, owner, CACHE_KEY, err);
	if (cc->shm == NULL) {
		free(cc->sp_role);
		free(cc);
		return NULL;
	}
	if (cfg->cache_slots > 0 && shm_nslots(cc->shm) != (uint32_t)cfg->cache_slots) {
		snprintf(slots, sizeof(slots), "%u", shm_nslots(cc->shm));
		snprintf(configured, sizeof(configured), "%d", cfg->cache_slots);
		log_warn("credential cache: the segment in use has another slot count; "
			 "credential_cache.slots takes effect once no process uses it",
			 "slots", slots, "configured", configured);
	}
	if (start_threads(cc, err) != 0) {
		credcache_destroy(cc);
		return NULL;
	}
	return cc;
}

void
credcache_destroy(struct credcache *cc)
{
	struct shm_header *h;

	if (cc == NULL)
		return;
	pthread_mutex_lock(&cc->stop_lock);
	cc->stopping = true;
	pthread_cond_signal(&cc->stop_cond);
	pthread_cond_signal(&cc->handoff_cond);
	pthread_mutex_unlock(&cc->stop_lock);
	if (cc->refresher_started)
		pthread_join(cc->refresher, NULL);
	if (cc->handoff_started)
		pthread_join(cc->handoff_thread, NULL);
	pthread_cond_destroy(&cc->handoff_cond);
	pthread_cond_destroy(&cc->stop_cond);
	pthread_mutex_destroy(&cc->stop_lock);
	shm_lock(cc->shm);
	h = shm_header(cc->shm);
	if (h->refresher_pid == (int32_t)getpid() && h->refresher_start == shm_self_start())
		h->refresher_pid = 0;	/* another process's thread takes over at once */
	shm_unlock(cc->shm);
	shm_detach(cc->shm);
	free(cc->sp_role);
	free(cc);
}

/* ------------------------------------------------------------------ */
/* the host-wide connection budget */

struct shm *
credcache_shm(struct credcache *cc)
{
	return cc->shm;
}

int
credcache_max_host_connections(const struct credcache *cc)
{
	return cc->max_host_connections;
}

int
credcache_host_conn_take(void *credcache)
{
	struct credcache *cc = credcache;

	if (cc->max_host_connections <= 0)
		return 0;
	return shm_conn_take(cc->shm, cc->max_host_connections);
}

void
credcache_host_conn_give(void *credcache, int n)
{
	struct credcache *cc = credcache;

	if (cc->max_host_connections > 0 && n > 0)
		shm_conn_give(cc->shm, n);
}

/* ------------------------------------------------------------------ */
/* --cache-status */

static void
format_time(char *buf, size_t size, int64_t t)
{
	struct tm tm;
	time_t tt = (time_t)t;

	if (t <= 0) {
		snprintf(buf, size, "-");
		return;
	}
	gmtime_r(&tt, &tm);
	strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void
format_refresh_state(char *buf, size_t size, const struct shm_slot *sl, time_t now)
{
	int64_t now_ms = clock_monotonic_ms();

	if (sl->claim_pid != 0)
		snprintf(buf, size, "refreshing (pid %ld, deadline in %llds)", (long)sl->claim_pid,
			 (long long)((sl->claim_deadline_ms - now_ms) / 1000));
	else if (sl->last_failed && (int64_t)now < sl->next_attempt_at)
		snprintf(buf, size, "failed (%s), retry in %llds", lb_errcode_name(sl->last_err.code),
			 (long long)(sl->next_attempt_at - (int64_t)now));
	else if (sl->last_failed)
		snprintf(buf, size, "failed (%s)", lb_errcode_name(sl->last_err.code));
	else if (sl->cred_len > 0 && (int64_t)now >= sl->refresh_at)
		snprintf(buf, size, "due");
	else
		snprintf(buf, size, "idle");
}

static void
print_slot(FILE *out, uint32_t index, const struct shm_slot *sl, const char *sp_role, time_t now)
{
	char who[SHM_EMAIL_MAX + 16], expires[32], used[32], state[96], fp[9];
	const char *role = sl->kind == SHM_KIND_USER ? sl->email :
			   sp_role != NULL ? sp_role : sl->role[0] != '\0' ? sl->role : "-";

	if (sl->kind == SHM_KIND_USER) {
		fp_prefix(sl->fp, fp);
		snprintf(who, sizeof(who), "%s #%s", sl->email, fp);
	} else {
		snprintf(who, sizeof(who), "%s", sl->kind == SHM_KIND_SP ? "service principal" :
			 "service principal (M2M token)");
	}
	if (sl->kind == SHM_KIND_SP_OAUTH)
		role = "-";
	format_time(expires, sizeof(expires), sl->cred_len > 0 ? sl->expires_at : 0);
	format_time(used, sizeof(used), sl->last_used_at);
	format_refresh_state(state, sizeof(state), sl, now);
	fprintf(out, "%5u  %-8s  %-44s  %-28s  %-20s  %-20s  %-34s  %u\n", index, kind_label(sl->kind),
		who, role, expires, used, state, sl->mint_count);
}

static void
print_header(FILE *out, const char *path, const struct shm_header *h, int max_host, bool locked)
{
	char created[32];
	long total = 0;

	format_time(created, sizeof(created), h->created_at);
	fprintf(out, "credential cache %s: layout %u, %u slots (%u in use), created %s%s\n",
		path, h->layout_version, h->nslots, h->used_slots, created,
		locked ? "" : " (read without the lock: it is busy)");
	if (h->refresher_pid != 0)
		fprintf(out, "background refresher: pid %ld%s\n", (long)h->refresher_pid,
			shm_proc_alive(h->refresher_pid, h->refresher_start) ? "" : " (gone)");
	else
		fprintf(out, "background refresher: none\n");
	fprintf(out, "counters:");
	for (int c = 0; c < SHM_COUNTER__COUNT; c++)
		fprintf(out, " %s=%" PRIu64, shm_counter_name((enum shm_counter)c), h->counters[c]);
	fprintf(out, "\nhost connections (max_host_connections %d%s):", max_host,
		max_host > 0 ? "" : ", off");
	for (int i = 0; i < SHM_MAX_PROCS; i++) {
		if (h->procs[i].pid != 0) {
			fprintf(out, " pid %ld=%d", (long)h->procs[i].pid, h->procs[i].conns);
			total += h->procs[i].conns;
		}
	}
	fprintf(out, " total=%ld\n", total);
}

int
credcache_print_status(const struct lb_config *cfg, FILE *out)
{
	struct shm_header header;
	struct shm_slot *slots;
	struct lb_error err;
	struct shm *s;
	uint32_t n;
	bool locked;
	time_t now = time(NULL);

	lb_error_clear(&err);
	s = shm_attach(cfg->cache_path, cfg->cache_slots > 0 ? (uint32_t)cfg->cache_slots : 4096,
		       false, NULL, CACHE_KEY, &err);
	if (s == NULL) {
		fprintf(stderr, "lakebase-fcgi: %s\n", err.detail);
		return 1;
	}
	n = shm_nslots(s);
	slots = calloc(n, sizeof(*slots));
	if (slots == NULL) {
		shm_detach(s);
		fprintf(stderr, "lakebase-fcgi: out of memory\n");
		return 1;
	}
	/* A snapshot of the metadata only: secrets are never read here. */
	locked = shm_lock_timed(s, STATUS_LOCK_TIMEOUT_MS) == 0;
	memcpy(&header, shm_header(s), sizeof(header));
	for (uint32_t i = 0; i < n; i++)
		memcpy(&slots[i], shm_slot(s, i), sizeof(slots[i]));
	if (locked)
		shm_unlock(s);
	print_header(out, cfg->cache_path, &header, cfg->max_host_connections, locked);
	fprintf(out, "%5s  %-8s  %-44s  %-28s  %-20s  %-20s  %-34s  %s\n", "SLOT", "KIND", "IDENTITY",
		"ROLE", "EXPIRES", "LAST USE", "REFRESH", "MINTS");
	for (uint32_t i = 0; i < n; i++) {
		if (slots[i].kind == SHM_KIND_FREE)
			continue;
		slots[i].email[SHM_EMAIL_MAX] = '\0';
		slots[i].role[SHM_ROLE_MAX] = '\0';
		print_slot(out, i, &slots[i], configured_sp_role(cfg), now);
	}
	OPENSSL_cleanse(slots, (size_t)n * sizeof(*slots));
	free(slots);
	shm_detach(s);
	return 0;
}
