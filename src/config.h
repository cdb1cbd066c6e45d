/*
 * config.h - the worker's configuration: one JSON file (comments allowed)
 * plus environment variables, validated up front.
 *
 * Precedence, highest first: command-line flags (struct config_overrides),
 * the environment variables below, the JSON file, built-in defaults.
 *
 *   DATABRICKS_HOST          workspace.host   ("https://" added if no scheme;
 *                                              "http://" only for loopback)
 *   DATABRICKS_CLIENT_ID     workspace.client_id
 *   DATABRICKS_CLIENT_SECRET workspace.client_secret
 *   DATABRICKS_TOKEN         workspace.token  (static token instead of M2M)
 *   LAKEBASE_ENDPOINT        workspace.endpoint
 *   PGHOST PGPORT PGDATABASE PGUSER PGSSLMODE PGSSLROOTCERT PGAPPNAME
 *                            postgres.{host,port,database,user,sslmode,
 *                                      sslrootcert,application_name}
 *   LAKEBASE_CREDENTIAL_CACHE_PATH credential_cache.path
 *
 * Every problem is reported with the JSON path of the offending key
 * ("routes[2].params.id.type") and a message; loading collects all problems
 * rather than stopping at the first, so --check-config shows them all.
 *
 * Route definitions are compiled here: the path template is split into
 * segments and the SQL's :name placeholders are rewritten to $n, so the
 * router and the params module work on ready structures.
 */
#ifndef LB_CONFIG_H
#define LB_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "strbuf.h"

enum auth_mode { AUTH_SERVICE_PRINCIPAL = 0, AUTH_ON_BEHALF_OF_USER };

/* "workers": "auto" — one worker process per online CPU. */
#define CONFIG_WORKERS_AUTO	(-1)
#define CONFIG_WORKERS_MAX	1024
#define CONFIG_SOCKET_MODE_UNSET (-1)

enum param_source { PARAM_IN_PATH = 0, PARAM_IN_QUERY, PARAM_IN_BODY };

enum param_type {
	PT_TEXT = 0, PT_INT, PT_BIGINT, PT_NUMERIC, PT_BOOL, PT_UUID,
	PT_TIMESTAMPTZ, PT_JSON
};

enum result_shape { RESULT_ROWS = 0, RESULT_ONE, RESULT_NONE };

struct param_def {
	char *name;
	enum param_source in;
	enum param_type type;
	bool required;
	char *default_text;    /* default, already in the text form sent to PG; NULL if none */
	char *min, *max;       /* int, bigint, numeric: the bound as written (a JSON number); NULL if none */
	long max_length;       /* text and json: max characters (bytes for json); -1 = none */
	int position;          /* 1-based $n in the compiled SQL */
};

/* A path template segment: a literal ("api") or a parameter ("{id}"). */
struct path_segment {
	char *literal;         /* NULL for a parameter segment */
	int param;             /* index into route.params, or -1 for a literal */
};

struct route {
	char *method;          /* upper case: GET, POST, PUT, PATCH, DELETE */
	char *path;            /* the template as written */
	struct path_segment *segments;
	size_t nsegments;
	enum auth_mode auth;
	char *sql;             /* compiled: :name replaced by $n */
	struct param_def *params;
	size_t nparams;        /* params are ordered by position: params[i].position == i+1 */
	enum result_shape result;
	long max_rows;         /* rows: at most this many rows returned (default 10000) */
	int statement_timeout_ms; /* 0 = server default */
	char *cache_control;   /* SP routes only: optional Cache-Control value */
};

struct pool_settings {
	int max;                 /* connections */
	int connect_timeout_ms;
	int idle_timeout_ms;     /* idle connection closed after */
	int acquire_timeout_ms;  /* wait for a free connection before 503 */
};

struct lb_config {
	/* where settings came from, for --check-config: "path=source\n" lines
	 * (source "file", "env NAME" or "command line"); absent: default */
	struct strbuf sources;

	/* server */
	char *listen;            /* "127.0.0.1:9000" or "unix:/path"; NULL = fd 0 */
	int threads;
	char *log_level;
	char *log_format;        /* "logfmt" (default) or "json" */
	bool log_user;           /* the user's email may appear in logs (false) */
	bool access_log;         /* a line per request (true); false: only 5xx */
	long max_body_bytes;
	char *healthz_path;
	char *readyz_path;

	/* observability (README "Observability") */
	bool metrics_enabled;    /* metrics.enabled (true) */
	char *metrics_path;      /* metrics.path ("/metrics") */
	char *metrics_allow;     /* metrics.allow: "local" (loopback/unix clients, default) or "any" */
	char *status_path;       /* metrics.status_path ("/status"), same switch and clients */

	/* process model (supervisor, managed, CGI: README "Deployment") */
	int workers;             /* 0: one process, no supervisor; CONFIG_WORKERS_AUTO: one per CPU */
	int shutdown_grace_ms;   /* in-flight requests may finish this long after SIGTERM */
	long max_requests;       /* a supervised worker is replaced after this many; 0: never */
	char *user;              /* drop privileges to this user (and group) after binding */
	char *group;
	char *pidfile;           /* absolute path; NULL: none */
	char *log_file;          /* absolute path, reopened on SIGUSR1; NULL: stderr */
	char *socket_owner;      /* a unix socket's owner, group and mode */
	char *socket_group;
	int socket_mode;         /* CONFIG_SOCKET_MODE_UNSET: the default, 0660 */
	char *mount_prefix;      /* "/api": stripped before routing; NULL: none */

	/* workspace (secrets: client_secret, token) */
	char *databricks_host;   /* normalised: scheme://host[:port], no trailing slash */
	char *client_id;
	char *client_secret;
	char *static_token;      /* NULL when client_id and client_secret are both
				    set: OAuth M2M then wins and the token is dropped */
	char *lakebase_endpoint;
	int http_connect_timeout_ms;
	int http_timeout_ms;

	/* postgres */
	char *pg_host;
	int pg_port;
	char *pg_database;
	char *pg_user;           /* SP role; NULL: client id, else SCIM Me userName */
	char *pg_sslmode;        /* default verify-full */
	char *pg_sslrootcert;    /* NULL: system CA bundle */
	char *pg_appname;

	/* pools */
	struct pool_settings sp_pool;
	struct pool_settings user_pool;
	int max_user_pools;
	int max_connections;
	int user_pool_remove_after_ms; /* empty user pool removed after this long unused */

	/* identity */
	char *email_header;      /* HTTP header name, e.g. X-Forwarded-Email */
	char *token_header;
	bool development_mode;

	/* credentials */
	int refresh_margin_ms;   /* refresh this long before expire_time (default 120000) */

	/* the host's shared credential cache (credential.h, shm.h) */
	char *cache_path;        /* credential_cache.path, LAKEBASE_CREDENTIAL_CACHE_PATH */
	int cache_slots;         /* credential_cache.slots: identities remembered (4096) */
	char *cache_sp_refresh;  /* "eager" (default) or "lazy" */
	char *cache_user_refresh; /* "lazy" (default) or "eager" */
	int max_host_connections; /* all processes of the host together; 0: off */

	struct route *routes;
	size_t nroutes;
};

struct config_problem {
	char *path;              /* JSON path, e.g. "routes[0].params.id.type"; "" for the file itself */
	char *message;
};

struct config_problems {
	struct config_problem *items;
	size_t count;
};

/*
 * Command-line flags: they win over the environment and the file, and are
 * checked by the same rules as the keys they set (a problem names both:
 * "pidfile (--pidfile)"). NULL, 0, false or CONFIG_SOCKET_MODE_UNSET: not
 * given.
 */
struct config_overrides {
	const char *listen;
	const char *socket_owner;
	const char *socket_group;
	const char *user;
	const char *group;
	const char *pidfile;
	int threads;
	bool workers_set;
	int workers;
	int socket_mode;
};

/*
 * Loads `file` (may be NULL: environment and defaults only), the process
 * environment through `getenv_fn` (pass NULL for getenv; tests pass their
 * own) and `overrides` (may be NULL). Returns a config, or NULL with
 * `problems` filled. On success problems may still be empty. The caller
 * frees both.
 */
typedef const char *(*config_getenv_fn)(const char *name);
struct lb_config *config_load(const char *file, config_getenv_fn getenv_fn,
			      const struct config_overrides *overrides,
			      struct config_problems *problems);
/* The same from a string (unit tests); NULL: environment and defaults only. */
struct lb_config *config_load_string(const char *json, config_getenv_fn getenv_fn,
				     const struct config_overrides *overrides,
				     struct config_problems *problems);
void config_free(struct lb_config *cfg);     /* wipes secrets */
void config_problems_free(struct config_problems *problems);
/* One line per problem: "<path>: <message>", or the message when path is "". */
void config_print_problems(FILE *out, const struct config_problems *problems);

/* Names used in config and messages. */
const char *auth_mode_name(enum auth_mode mode);
/* Records that `path` ("listen") was set by `source` ("command line"). */
void config_note_source(struct lb_config *cfg, const char *path, const char *source);
/*
 * --check-config: every setting's effective value and where it came from
 * (file, env NAME, command line, default), one per line; secrets masked.
 */
void config_print_effective(const struct lb_config *cfg, FILE *out);

/* Sets the log level, format and email masking from cfg (log.h). */
void config_apply_logging(const struct lb_config *cfg);
const char *param_type_name(enum param_type type);

#endif
