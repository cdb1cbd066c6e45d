/*
 * workspace.h - the Databricks workspace API client (libcurl).
 *
 *   service-principal token  OAuth M2M: discover the token endpoint from
 *                            GET {host}/oidc/.well-known/oauth-authorization-server
 *                            (fallback {host}/oidc/v1/token), then POST
 *                            grant_type=client_credentials&scope=all-apis with
 *                            HTTP Basic client_id:client_secret. Cached until
 *                            expires_in minus a margin. DATABRICKS_TOKEN is the
 *                            static alternative.
 *   database credential      POST {host}/api/2.0/postgres/credentials
 *                            {"endpoint": "..."} -> {"token","expire_time"}
 *   current user             GET {host}/api/2.0/preview/scim/v2/Me -> userName
 *
 * Every call has a connect and a total timeout and is retried on transient
 * failures (retry.h). Connections to the workspace are kept between calls
 * (a few per client). Thread-safe. Tokens never reach a log line or an
 * lb_error (details name the endpoint, the HTTP status and the Databricks
 * error_code, never a token).
 */
#ifndef LB_WORKSPACE_H
#define LB_WORKSPACE_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include "config.h"
#include "error.h"
#include "textfmt.h"

struct workspace_client;

/* A minted Lakebase database credential. `token` is a secret: release with
 * db_credential_clear, which wipes it. */
struct db_credential {
	char *token;
	time_t expires_at;
};

struct workspace_client *workspace_create(const struct lb_config *cfg, struct lb_error *err);
void workspace_destroy(struct workspace_client *ws);

/*
 * The service principal's workspace bearer token (M2M, cached and shared by
 * all threads; concurrent callers wait for one fetch). The copy returned in
 * *token is the caller's: free with secret_free().
 */
int workspace_sp_token(struct workspace_client *ws, char **token, struct lb_error *err);

/* Whether the SP authenticates by OAuth M2M (client id and secret) rather
 * than a static DATABRICKS_TOKEN. */
bool workspace_sp_uses_m2m(const struct workspace_client *ws);

/*
 * Fetches a new M2M token, bypassing this client's per-process cache: for a
 * cache shared by processes (credential.c keeps it in shared memory).
 * *expires_in is the token's lifetime in seconds. Free *token with
 * secret_free().
 */
int workspace_fetch_sp_token(struct workspace_client *ws, char **token, long *expires_in,
			     struct lb_error *err);

/* Mints a database credential with the given workspace bearer token. */
int workspace_mint_credential(struct workspace_client *ws, const char *bearer_token,
			      struct db_credential *out, struct lb_error *err);

/* userName of the identity the bearer token belongs to (SCIM Me). */
int workspace_current_user(struct workspace_client *ws, const char *bearer_token,
			   char **user_name, struct lb_error *err);

void db_credential_clear(struct db_credential *cred);
/* Wipes (OPENSSL_cleanse) and frees a NUL-terminated secret. NULL is fine. */
void secret_free(char *secret);

/* --- pure parsers, exposed for the unit tests --- */

/* Parses a credentials answer. Errors say what was wrong ("expire_time is not
 * RFC 3339", "token missing") without quoting the token. */
int workspace_parse_credential(const char *body, size_t len, struct db_credential *out,
			       struct lb_error *err);
/* Parses an OAuth token answer: access_token and expires_in (seconds). */
int workspace_parse_oauth_token(const char *body, size_t len, char **access_token,
				long *expires_in, struct lb_error *err);
/* Parses the token_endpoint out of an OIDC discovery document. */
int workspace_parse_discovery(const char *body, size_t len, char **token_endpoint,
			      struct lb_error *err);
/* RFC 3339 timestamp (Z or +hh:mm offset, optional fraction) to time_t. */
/* parse_rfc3339() is in textfmt.h. */

#endif
