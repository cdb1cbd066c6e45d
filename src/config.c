/*
 * config.c - loads and validates the configuration (see config.h).
 *
 * The JSON file is walked against a fixed schema (tables of fields below),
 * then the environment overrides it, then settings that depend on each
 * other are checked. Routes are compiled on the way: the path template is
 * split into segments and the SQL's :name placeholders become $n. Every
 * problem is collected with the JSON path of its key; nothing stops at the
 * first one, so --check-config can show them all.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>

#include <openssl/crypto.h>
#include <yajl/yajl_gen.h>
#include <yajl/yajl_parse.h>
#include <yajl/yajl_tree.h>

#include "config.h"
#include "jsonscan.h"
#include "log.h"
#include "strbuf.h"
#include "textfmt.h"

#define ARRAY_LEN(a)		(sizeof(a) / sizeof((a)[0]))
#define MAX_CONFIG_BYTES	(16 * 1024 * 1024)
#define MAX_FIELDS		40	/* keys of the largest object in the schema */
#define UNIX_PATH_MAX_TEXT	"107"	/* sizeof(sun_path) - 1, for messages */
#define MAX_JSON_DEPTH		64	/* nesting of a json parameter's default */
/* The whole file: a json default's own levels plus the schema's around it
 * (root, routes, a route, params, a parameter). */
#define MAX_FILE_DEPTH		(MAX_JSON_DEPTH + 8)
#define MAX_FILE_DEPTH_TEXT	"72"	/* for messages */
_Static_assert(MAX_FILE_DEPTH == 72, "MAX_FILE_DEPTH_TEXT");

/* Settings the environment can override; PGPORT (an integer) is separate. */
enum setting {
	S_HOST, S_CLIENT_ID, S_CLIENT_SECRET, S_TOKEN, S_ENDPOINT,
	S_PGHOST, S_PGDATABASE, S_PGUSER, S_PGSSLMODE, S_PGSSLROOTCERT, S_PGAPPNAME,
	S_CACHE_PATH,
	S__COUNT
};

struct env_setting {
	const char *env;
	const char *path;	/* the same setting's JSON path */
	size_t offset;		/* of its char * in struct lb_config */
	bool secret;
};

static const struct env_setting env_settings[S__COUNT] = {
	[S_HOST] = { "DATABRICKS_HOST", "workspace.host",
		offsetof(struct lb_config, databricks_host), false },
	[S_CLIENT_ID] = { "DATABRICKS_CLIENT_ID", "workspace.client_id",
		offsetof(struct lb_config, client_id), false },
	[S_CLIENT_SECRET] = { "DATABRICKS_CLIENT_SECRET", "workspace.client_secret",
		offsetof(struct lb_config, client_secret), true },
	[S_TOKEN] = { "DATABRICKS_TOKEN", "workspace.token",
		offsetof(struct lb_config, static_token), true },
	[S_ENDPOINT] = { "LAKEBASE_ENDPOINT", "workspace.endpoint",
		offsetof(struct lb_config, lakebase_endpoint), false },
	[S_PGHOST] = { "PGHOST", "postgres.host",
		offsetof(struct lb_config, pg_host), false },
	[S_PGDATABASE] = { "PGDATABASE", "postgres.database",
		offsetof(struct lb_config, pg_database), false },
	[S_PGUSER] = { "PGUSER", "postgres.user",
		offsetof(struct lb_config, pg_user), false },
	[S_PGSSLMODE] = { "PGSSLMODE", "postgres.sslmode",
		offsetof(struct lb_config, pg_sslmode), false },
	[S_PGSSLROOTCERT] = { "PGSSLROOTCERT", "postgres.sslrootcert",
		offsetof(struct lb_config, pg_sslrootcert), false },
	[S_PGAPPNAME] = { "PGAPPNAME", "postgres.application_name",
		offsetof(struct lb_config, pg_appname), false },
	[S_CACHE_PATH] = { "LAKEBASE_CREDENTIAL_CACHE_PATH", "credential_cache.path",
		offsetof(struct lb_config, cache_path), false },
};

struct loader {
	struct config_problems *problems;
	config_getenv_fn getenv_fn;
	const struct config_overrides *overrides;	/* NULL: none */
	struct strbuf path;		/* JSON path of the node being read */
	bool out_of_memory;
	const char *origin[S__COUNT];	/* where each setting came from, for messages */
};

/* String settings a command-line flag can set; the flag names the key in
 * messages when it did. */
struct flag_setting {
	const char *key;
	const char *label;	/* "key (--flag)" */
	size_t offset;		/* of its char * in struct lb_config */
	size_t given;		/* of its const char * in struct config_overrides */
};

#define FLAG(key, flag) \
	{ #key, #key " (" flag ")", offsetof(struct lb_config, key), offsetof(struct config_overrides, key) }
static const struct flag_setting flag_settings[] = {
	FLAG(listen, "--listen"),
	FLAG(socket_owner, "--socket-owner"),
	FLAG(socket_group, "--socket-group"),
	FLAG(user, "--user"),
	FLAG(group, "--group"),
	FLAG(pidfile, "--pidfile"),
};
#undef FLAG

/* Name tables, in the order of their enums. */
static const char *const auth_names[] = { "service-principal", "on-behalf-of-user", NULL };
static const char *const source_names[] = { "path", "query", "body", NULL };
static const char *const type_names[] = {
	"text", "int", "bigint", "numeric", "bool", "uuid", "timestamptz", "json", NULL
};
static const char *const result_names[] = { "rows", "one", "none", NULL };
static const char *const method_names[] = { "GET", "POST", "PUT", "PATCH", "DELETE", NULL };
static const char *const log_levels[] = { "debug", "info", "warn", "error", NULL };
static const char *const sslmodes[] = {
	"disable", "allow", "prefer", "require", "verify-ca", "verify-full", NULL
};
static const char *const refresh_modes[] = { "eager", "lazy", NULL };
static const char *const metrics_allows[] = { "local", "any", NULL };
static const char *const log_formats[] = { "logfmt", "json", NULL };
static const char *const timestamp_words[] = {
	"now", "today", "tomorrow", "yesterday", "infinity", "-infinity", "epoch", NULL
};

/* ---- the schema ---- */

enum field_kind {
	FK_OTHER = 0, FK_STRING, FK_INT, FK_LONG, FK_BOOL, FK_CHOICE, FK_SECTION, FK_ROUTES,
	FK_WORKERS, FK_MODE
};

struct section;

struct field {
	const char *key;
	enum field_kind kind;
	size_t offset;			/* of the value in the section's target */
	long long min, max;		/* FK_INT, FK_LONG */
	bool secret;			/* FK_STRING: wipe when replaced */
	const char *const *choices;	/* FK_CHOICE, stored as a string */
	const struct section *section;	/* FK_SECTION */
};

struct section {
	const struct field *fields;
	size_t nfields;
	size_t target;			/* offset of the fields' struct in lb_config */
};

#define CFG(m)		offsetof(struct lb_config, m)
#define POOL(m)		offsetof(struct pool_settings, m)
#define F_STR(k, off)	{ .key = k, .kind = FK_STRING, .offset = off }
#define F_SECRET(k, off) { .key = k, .kind = FK_STRING, .offset = off, .secret = true }
#define F_INT(k, off, lo, hi) { .key = k, .kind = FK_INT, .offset = off, .min = lo, .max = hi }
#define F_LONG(k, off, lo, hi) { .key = k, .kind = FK_LONG, .offset = off, .min = lo, .max = hi }
#define F_BOOL(k, off)	{ .key = k, .kind = FK_BOOL, .offset = off }
#define F_CHOICE(k, off, c) { .key = k, .kind = FK_CHOICE, .offset = off, .choices = c }
#define F_SECTION(k, s)	{ .key = k, .kind = FK_SECTION, .section = &s }
#define F_WORKERS(k, off) { .key = k, .kind = FK_WORKERS, .offset = off }
#define F_MODE(k, off)	{ .key = k, .kind = FK_MODE, .offset = off }
#define SECTION(f, t)	{ f, ARRAY_LEN(f), t }

static const struct field health_fields[] = {
	F_STR("healthz_path", CFG(healthz_path)),
	F_STR("readyz_path", CFG(readyz_path)),
};
static const struct field metrics_fields[] = {
	F_BOOL("enabled", CFG(metrics_enabled)),
	F_STR("path", CFG(metrics_path)),
	F_CHOICE("allow", CFG(metrics_allow), metrics_allows),
	F_STR("status_path", CFG(status_path)),
};
static const struct field workspace_fields[] = {
	F_STR("host", CFG(databricks_host)),
	F_STR("client_id", CFG(client_id)),
	F_SECRET("client_secret", CFG(client_secret)),
	F_SECRET("token", CFG(static_token)),
	F_STR("endpoint", CFG(lakebase_endpoint)),
	F_INT("connect_timeout_ms", CFG(http_connect_timeout_ms), 1, 600000),
	F_INT("timeout_ms", CFG(http_timeout_ms), 1, 3600000),
};
static const struct field postgres_fields[] = {
	F_STR("host", CFG(pg_host)),
	F_INT("port", CFG(pg_port), 1, 65535),
	F_STR("database", CFG(pg_database)),
	F_STR("user", CFG(pg_user)),
	F_CHOICE("sslmode", CFG(pg_sslmode), sslmodes),
	F_STR("sslrootcert", CFG(pg_sslrootcert)),
	F_STR("application_name", CFG(pg_appname)),
};
static const struct field pool_fields[] = {
	F_INT("max", POOL(max), 1, 1000),
	F_INT("connect_timeout_ms", POOL(connect_timeout_ms), 1, 600000),
	F_INT("idle_timeout_ms", POOL(idle_timeout_ms), 1, 86400000),
	F_INT("acquire_timeout_ms", POOL(acquire_timeout_ms), 0, 600000),
};
static const struct field identity_fields[] = {
	F_STR("email_header", CFG(email_header)),
	F_STR("token_header", CFG(token_header)),
	F_BOOL("development_mode", CFG(development_mode)),
};
static const struct field credentials_fields[] = {
	F_INT("refresh_margin_ms", CFG(refresh_margin_ms), 0, 3600000),
};

static const struct section health_section = SECTION(health_fields, 0);
static const struct section metrics_section = SECTION(metrics_fields, 0);
static const struct section workspace_section = SECTION(workspace_fields, 0);
static const struct section postgres_section = SECTION(postgres_fields, 0);
static const struct section sp_pool_section = SECTION(pool_fields, CFG(sp_pool));
static const struct section user_pool_section = SECTION(pool_fields, CFG(user_pool));
static const struct section identity_section = SECTION(identity_fields, 0);
static const struct section credentials_section = SECTION(credentials_fields, 0);
static const struct field credential_cache_fields[] = {
	F_STR("path", CFG(cache_path)),
	F_INT("slots", CFG(cache_slots), 4, 262144),
	F_CHOICE("sp_refresh", CFG(cache_sp_refresh), refresh_modes),
	F_CHOICE("user_refresh", CFG(cache_user_refresh), refresh_modes),
};
static const struct section credential_cache_section = SECTION(credential_cache_fields, 0);

static const struct field top_fields[] = {
	F_STR("listen", CFG(listen)),
	F_INT("threads", CFG(threads), 1, 1024),
	F_WORKERS("workers", CFG(workers)),
	F_INT("shutdown_grace_ms", CFG(shutdown_grace_ms), 0, 3600000),
	F_LONG("max_requests", CFG(max_requests), 0, 1000000000),
	F_STR("user", CFG(user)),
	F_STR("group", CFG(group)),
	F_STR("pidfile", CFG(pidfile)),
	F_STR("log_file", CFG(log_file)),
	F_STR("socket_owner", CFG(socket_owner)),
	F_STR("socket_group", CFG(socket_group)),
	F_MODE("socket_mode", CFG(socket_mode)),
	F_STR("mount_prefix", CFG(mount_prefix)),
	F_CHOICE("log_level", CFG(log_level), log_levels),
	F_CHOICE("log_format", CFG(log_format), log_formats),
	F_BOOL("log_user", CFG(log_user)),
	F_BOOL("access_log", CFG(access_log)),
	F_LONG("max_body_bytes", CFG(max_body_bytes), 1, 1073741824),
	F_SECTION("health", health_section),
	F_SECTION("metrics", metrics_section),
	F_SECTION("workspace", workspace_section),
	F_SECTION("postgres", postgres_section),
	F_SECTION("pool", sp_pool_section),
	F_SECTION("user_pool", user_pool_section),
	F_INT("max_user_pools", CFG(max_user_pools), 1, 1000000),
	F_INT("max_connections", CFG(max_connections), 1, 100000),
	F_INT("user_pool_remove_after_ms", CFG(user_pool_remove_after_ms), 1, 86400000),
	F_SECTION("identity", identity_section),
	F_SECTION("credentials", credentials_section),
	F_SECTION("credential_cache", credential_cache_section),
	F_INT("max_host_connections", CFG(max_host_connections), 0, 1000000),
	{ .key = "routes", .kind = FK_ROUTES },
};
static const struct section top_section = SECTION(top_fields, 0);

/* Routes and parameters are read key by key (their values feed enums and
 * compilation), so their tables only name the keys. */
enum route_key {
	RK_METHOD, RK_PATH, RK_AUTH, RK_SQL, RK_PARAMS, RK_RESULT, RK_MAX_ROWS,
	RK_STATEMENT_TIMEOUT, RK_CACHE_CONTROL, RK__COUNT
};
static const struct field route_fields[RK__COUNT] = {
	[RK_METHOD] = { .key = "method" },
	[RK_PATH] = { .key = "path" },
	[RK_AUTH] = { .key = "auth" },
	[RK_SQL] = { .key = "sql" },
	[RK_PARAMS] = { .key = "params" },
	[RK_RESULT] = { .key = "result" },
	[RK_MAX_ROWS] = { .key = "max_rows" },
	[RK_STATEMENT_TIMEOUT] = { .key = "statement_timeout_ms" },
	[RK_CACHE_CONTROL] = { .key = "cache_control" },
};

enum param_key {
	PK_IN, PK_TYPE, PK_REQUIRED, PK_DEFAULT, PK_MIN, PK_MAX, PK_MAX_LENGTH, PK__COUNT
};
static const struct field param_fields[PK__COUNT] = {
	[PK_IN] = { .key = "in" },
	[PK_TYPE] = { .key = "type" },
	[PK_REQUIRED] = { .key = "required" },
	[PK_DEFAULT] = { .key = "default" },
	[PK_MIN] = { .key = "min" },
	[PK_MAX] = { .key = "max" },
	[PK_MAX_LENGTH] = { .key = "max_length" },
};

_Static_assert(ARRAY_LEN(top_fields) <= MAX_FIELDS, "MAX_FIELDS too small");
_Static_assert(RK__COUNT <= MAX_FIELDS, "MAX_FIELDS too small");
_Static_assert(sizeof(((struct sockaddr_un *)NULL)->sun_path) == 108, "UNIX_PATH_MAX_TEXT");

/* ---- problems and the current JSON path ---- */

static char *
vformat(const char *fmt, va_list ap)
{
	va_list copy;
	char *s;
	int n;

	va_copy(copy, ap);
	n = vsnprintf(NULL, 0, fmt, copy);
	va_end(copy);
	if (n < 0)
		return NULL;
	s = malloc((size_t)n + 1);
	if (s != NULL)
		vsnprintf(s, (size_t)n + 1, fmt, ap);
	return s;
}

static void
problem_add(struct loader *ld, const char *path, const char *fmt, va_list ap)
{
	struct config_problems *p = ld->problems;
	struct config_problem *items;
	char *message = vformat(fmt, ap);
	char *path_copy = strdup(path);

	if (message == NULL || path_copy == NULL)
		goto fail;
	items = realloc(p->items, (p->count + 1) * sizeof(*items));
	if (items == NULL)
		goto fail;
	p->items = items;
	items[p->count].path = path_copy;
	items[p->count].message = message;
	p->count++;
	return;
fail:
	free(message);
	free(path_copy);
	ld->out_of_memory = true;
}

static const char *
path_now(const struct loader *ld)
{
	return ld->path.data != NULL ? ld->path.data : "";
}

/* A problem with the node being read. */
static void __attribute__((format(printf, 2, 3)))
problem(struct loader *ld, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	problem_add(ld, path_now(ld), fmt, ap);
	va_end(ap);
}

/* A problem with a setting named outright (an environment variable, or a
 * key checked after the walk). */
static void __attribute__((format(printf, 3, 4)))
problem_at(struct loader *ld, const char *path, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	problem_add(ld, path, fmt, ap);
	va_end(ap);
}

/* Descends into `key`; returns the mark path_pop needs to come back. */
static size_t
path_push_key(struct loader *ld, const char *key)
{
	size_t mark = ld->path.len;

	if (mark > 0)
		strbuf_append(&ld->path, ".", 1);
	strbuf_append_str(&ld->path, key);
	return mark;
}

static size_t
path_push_index(struct loader *ld, size_t index)
{
	size_t mark = ld->path.len;

	strbuf_appendf(&ld->path, "[%zu]", index);
	return mark;
}

static void
path_pop(struct loader *ld, size_t mark)
{
	if (ld->path.data == NULL || mark > ld->path.len)
		return;
	ld->path.len = mark;
	ld->path.data[mark] = '\0';
}

/* ---- small helpers ---- */

static char *
dup_string(struct loader *ld, const char *s, size_t len)
{
	char *copy = strndup(s, len);

	if (copy == NULL)
		ld->out_of_memory = true;
	return copy;
}

static void
free_secret(char *s)
{
	if (s != NULL) {
		OPENSSL_cleanse(s, strlen(s));
		free(s);
	}
}

/* Replaces a string field with a copy of `value`; wipes a secret it replaces. */
static void
store_string(struct loader *ld, char **field, const char *value, bool secret)
{
	char *copy = dup_string(ld, value, strlen(value));

	if (copy == NULL)
		return;
	if (secret)
		free_secret(*field);
	else
		free(*field);
	*field = copy;
}

static char **
string_field(struct lb_config *cfg, size_t offset)
{
	return (char **)(void *)((char *)cfg + offset);
}

static bool
is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static bool
is_ident_start(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool
is_ident_char(char c)
{
	return is_ident_start(c) || is_digit(c);
}

static bool
is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static char
to_lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

static bool
valid_name(const char *s, size_t len)
{
	if (len == 0 || !is_ident_start(s[0]))
		return false;
	for (size_t i = 1; i < len; i++) {
		if (!is_ident_char(s[i]))
			return false;
	}
	return true;
}

/* Whether s holds a space or control character: such values would break
 * (or inject into) the HTTP headers and URLs they end up in. */
static bool
has_space_or_control(const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p <= ' ' || *p == 0x7f)
			return true;
	}
	return false;
}

static bool
has_control(const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p < ' ' || *p == 0x7f)
			return true;
	}
	return false;
}

static size_t
choice_index(const char *const *choices, const char *s, bool ignore_case)
{
	size_t i;

	for (i = 0; choices[i] != NULL; i++) {
		if ((ignore_case ? strcasecmp(choices[i], s) : strcmp(choices[i], s)) == 0)
			break;
	}
	return i;
}

/* Appends "a, b, c". */
static void
join_choices(struct strbuf *sb, const char *const *choices)
{
	for (size_t i = 0; choices[i] != NULL; i++) {
		if (i > 0)
			strbuf_append_str(sb, ", ");
		strbuf_append_str(sb, choices[i]);
	}
}

static void
problem_choices(struct loader *ld, const char *prefix, const char *const *choices,
		const char *suffix)
{
	struct strbuf sb;

	strbuf_init(&sb);
	join_choices(&sb, choices);
	if (strbuf_failed(&sb))
		ld->out_of_memory = true;
	else
		problem(ld, "%s%s%s", prefix, sb.data, suffix);
	strbuf_free(&sb, false);
}

/* ---- typed readers: each reports at the current path ---- */

static bool
read_string(struct loader *ld, yajl_val v, const char **out)
{
	if (!YAJL_IS_STRING(v)) {
		problem(ld, "must be a string");
		return false;
	}
	if (v->u.string[0] == '\0') {
		problem(ld, "must not be empty");
		return false;
	}
	*out = v->u.string;
	return true;
}

/* JSON integers only: 1.0 and 1e3 are numbers, not integers. */
static bool
read_integer(struct loader *ld, yajl_val v, long long min, long long max, long long *out)
{
	if (!YAJL_IS_NUMBER(v) || strpbrk(v->u.number.r, ".eE") != NULL) {
		problem(ld, "must be an integer");
		return false;
	}
	if (!YAJL_IS_INTEGER(v) || v->u.number.i < min || v->u.number.i > max) {
		problem(ld, "must be between %lld and %lld", min, max);
		return false;
	}
	*out = v->u.number.i;
	return true;
}

static bool
read_bool(struct loader *ld, yajl_val v, bool *out)
{
	if (!YAJL_IS_TRUE(v) && !YAJL_IS_FALSE(v)) {
		problem(ld, "must be true or false");
		return false;
	}
	*out = YAJL_IS_TRUE(v);
	return true;
}

static bool
read_choice(struct loader *ld, yajl_val v, const char *const *choices, bool ignore_case,
	    size_t *out)
{
	const char *s;
	size_t i;

	if (!read_string(ld, v, &s))
		return false;
	i = choice_index(choices, s, ignore_case);
	if (choices[i] == NULL) {
		problem_choices(ld, "must be one of: ", choices, "");
		return false;
	}
	*out = i;
	return true;
}

/* "workers": an integer (0: no supervisor) or "auto" (one per CPU). */
static void
read_workers(struct loader *ld, yajl_val v, int *out)
{
	long long n;

	if (YAJL_IS_STRING(v)) {
		if (strcmp(v->u.string, "auto") == 0)
			*out = CONFIG_WORKERS_AUTO;
		else
			problem(ld, "must be an integer or \"auto\"");
		return;
	}
	if (read_integer(ld, v, 0, CONFIG_WORKERS_MAX, &n))
		*out = (int)n;
}

/* A file mode as an octal string ("0660"): JSON has no octal numbers, and
 * a decimal 660 would silently mean something else. */
static void
read_mode(struct loader *ld, yajl_val v, int *out)
{
	const char *s;
	long mode = 0;

	if (!YAJL_IS_STRING(v)) {
		problem(ld, "must be an octal mode in a string, such as \"0660\"");
		return;
	}
	s = v->u.string;
	if (*s == '\0' || strlen(s) > 4)
		goto bad;
	for (; *s; s++) {
		if (*s < '0' || *s > '7')
			goto bad;
		mode = mode * 8 + (*s - '0');
	}
	if (mode > 0777)
		goto bad;
	*out = (int)mode;
	return;
bad:
	problem(ld, "must be an octal mode between \"0000\" and \"0777\"");
}

/* ---- objects against a table of fields ---- */

static size_t
field_index(const struct field *fields, size_t nfields, const char *key)
{
	size_t k;

	for (k = 0; k < nfields; k++) {
		if (strcmp(fields[k].key, key) == 0)
			break;
	}
	return k;
}

static bool
key_repeated(yajl_val obj, size_t i)
{
	for (size_t j = 0; j < i; j++) {
		if (strcmp(obj->u.object.keys[j], obj->u.object.keys[i]) == 0)
			return true;
	}
	return false;
}

/* Fills found[k] with the value of fields[k].key (or NULL); reports unknown
 * and repeated keys. obj must be an object. */
static void
object_fields(struct loader *ld, yajl_val obj, const struct field *fields, size_t nfields,
	      yajl_val *found)
{
	for (size_t k = 0; k < nfields; k++)
		found[k] = NULL;
	for (size_t i = 0; i < obj->u.object.len; i++) {
		const char *key = obj->u.object.keys[i];
		size_t k = field_index(fields, nfields, key);
		size_t mark = path_push_key(ld, key);

		if (key_repeated(obj, i))
			problem(ld, "duplicate key");
		else if (k == nfields)
			problem(ld, "unknown key");
		else
			found[k] = obj->u.object.values[i];
		path_pop(ld, mark);
	}
}

static void load_routes(struct loader *ld, yajl_val v, struct lb_config *cfg);
static void read_section(struct loader *ld, yajl_val obj, const struct section *section,
			 struct lb_config *cfg);

static void
read_field(struct loader *ld, const struct field *f, yajl_val v, char *target,
	   struct lb_config *cfg)
{
	const char *s;
	long long n;
	size_t choice;

	switch (f->kind) {
	case FK_STRING:
		if (read_string(ld, v, &s))
			store_string(ld, (char **)(void *)(target + f->offset), s, f->secret);
		break;
	case FK_INT:
		if (read_integer(ld, v, f->min, f->max, &n))
			*(int *)(void *)(target + f->offset) = (int)n;
		break;
	case FK_LONG:
		if (read_integer(ld, v, f->min, f->max, &n))
			*(long *)(void *)(target + f->offset) = (long)n;
		break;
	case FK_BOOL:
		read_bool(ld, v, (bool *)(void *)(target + f->offset));
		break;
	case FK_CHOICE:
		if (read_choice(ld, v, f->choices, false, &choice))
			store_string(ld, (char **)(void *)(target + f->offset),
				     f->choices[choice], false);
		break;
	case FK_SECTION:
		read_section(ld, v, f->section, cfg);
		break;
	case FK_ROUTES:
		load_routes(ld, v, cfg);
		break;
	case FK_WORKERS:
		read_workers(ld, v, (int *)(void *)(target + f->offset));
		break;
	case FK_MODE:
		read_mode(ld, v, (int *)(void *)(target + f->offset));
		break;
	case FK_OTHER:
		break;
	}
}

static void
read_section(struct loader *ld, yajl_val obj, const struct section *section,
	     struct lb_config *cfg)
{
	yajl_val found[MAX_FIELDS];
	char *target = (char *)cfg + section->target;

	if (!YAJL_IS_OBJECT(obj)) {
		problem(ld, "must be an object");
		return;
	}
	object_fields(ld, obj, section->fields, section->nfields, found);
	for (size_t k = 0; k < section->nfields; k++) {
		size_t mark;

		if (found[k] == NULL)
			continue;
		mark = path_push_key(ld, section->fields[k].key);
		read_field(ld, &section->fields[k], found[k], target, cfg);
		if (section->fields[k].kind != FK_SECTION && !strbuf_failed(&ld->path))
			config_note_source(cfg, ld->path.data, "file");
		path_pop(ld, mark);
	}
}

/* ---- parameter definitions ---- */

static struct param_def *
find_param(struct param_def *params, size_t nparams, const char *name, size_t len)
{
	for (size_t i = 0; i < nparams; i++) {
		if (params[i].name != NULL && strlen(params[i].name) == len &&
		    memcmp(params[i].name, name, len) == 0)
			return &params[i];
	}
	return NULL;
}

/* A parameter's name for messages (NULL only after running out of memory). */
static const char *
param_label(const struct param_def *def)
{
	return def->name != NULL ? def->name : "?";
}

static bool
is_number_type(enum param_type type)
{
	return type == PT_INT || type == PT_BIGINT || type == PT_NUMERIC;
}

static bool
read_number(struct loader *ld, yajl_val v, double *out)
{
	if (!YAJL_IS_NUMBER(v) || !(v->u.number.flags & YAJL_NUMBER_DOUBLE_VALID)) {
		problem(ld, "must be a number");
		return false;
	}
	*out = v->u.number.d;
	return true;
}

/* Reads a number valid for the parameter's type (int: 32 bits, bigint: 64). */
static bool
read_typed_number(struct loader *ld, enum param_type type, yajl_val v, double *out,
		  long long *integer)
{
	long long n;

	if (type == PT_NUMERIC)
		return read_number(ld, v, out);
	if (!read_integer(ld, v, type == PT_INT ? INT32_MIN : LLONG_MIN,
			  type == PT_INT ? INT32_MAX : LLONG_MAX, &n))
		return false;
	*out = (double)n;
	if (integer != NULL)
		*integer = n;
	return true;
}

/* A bound is kept as written: values are compared with it exactly
 * (decimal_compare), where a double would round (bigints past 2^53). */
static void
read_bound(struct loader *ld, struct param_def *def, bool have_type, yajl_val v,
	   const char *key, char **bound)
{
	size_t mark = path_push_key(ld, key);
	double ignored;

	if (have_type && !is_number_type(def->type))
		problem(ld, "only allowed for int, bigint and numeric parameters");
	else if (have_type && read_typed_number(ld, def->type, v, &ignored, NULL))
		*bound = dup_string(ld, v->u.number.r, strlen(v->u.number.r));
	path_pop(ld, mark);
}

static void
read_max_length(struct loader *ld, struct param_def *def, bool have_type, yajl_val v)
{
	size_t mark = path_push_key(ld, "max_length");
	long long n;

	if (have_type && def->type != PT_TEXT && def->type != PT_JSON)
		problem(ld, "only allowed for text and json parameters");
	else if (read_integer(ld, v, 1, 1073741824, &n))
		def->max_length = (long)n;
	path_pop(ld, mark);
}

/* "must be between 1 and 500", "must be at least 1", "must be at most 500" */
static bool
check_bounds(struct loader *ld, const struct param_def *def, const char *value)
{
	if ((def->min == NULL || decimal_compare(value, def->min) >= 0) &&
	    (def->max == NULL || decimal_compare(value, def->max) <= 0))
		return true;
	if (def->min != NULL && def->max != NULL)
		problem(ld, "must be between %s and %s", def->min, def->max);
	else if (def->min != NULL)
		problem(ld, "must be at least %s", def->min);
	else
		problem(ld, "must be at most %s", def->max);
	return false;
}

static size_t
utf8_length(const char *s)
{
	size_t n = 0;

	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if ((*p & 0xc0) != 0x80)
			n++;
	}
	return n;
}

/* Reads `n` digits at *p into *out, advancing *p. */
static bool
take_digits(const char **p, int n, int *out)
{
	int v = 0;

	for (int i = 0; i < n; i++) {
		if (!is_digit((*p)[i]))
			return false;
		v = v * 10 + ((*p)[i] - '0');
	}
	*p += n;
	*out = v;
	return true;
}

/* RFC 3339 style: YYYY-MM-DD, optionally [T ]HH:MM[:SS[.frac]] and Z or
 * +HH[:MM]; also PostgreSQL's special inputs ("now", "infinity", ...). */
static bool
is_timestamp(const char *s)
{
	const char *p = s;
	int year, mon, day, hour, min, sec;

	if (timestamp_words[choice_index(timestamp_words, s, true)] != NULL)
		return true;
	if (!take_digits(&p, 4, &year) || *p++ != '-' || !take_digits(&p, 2, &mon) ||
	    *p++ != '-' || !take_digits(&p, 2, &day) || mon < 1 || mon > 12 ||
	    day < 1 || day > 31)
		return false;
	if (*p == '\0')
		return true;
	if (*p != 'T' && *p != 't' && *p != ' ')
		return false;
	p++;
	if (!take_digits(&p, 2, &hour) || *p++ != ':' || !take_digits(&p, 2, &min) ||
	    hour > 23 || min > 59)
		return false;
	if (*p == ':') {
		p++;
		if (!take_digits(&p, 2, &sec) || sec > 60)
			return false;
		if (*p == '.') {
			if (!is_digit(*++p))
				return false;
			while (is_digit(*p))
				p++;
		}
	}
	if (*p == 'Z' || *p == 'z')
		return p[1] == '\0';
	if (*p == '+' || *p == '-') {
		p++;
		if (!take_digits(&p, 2, &hour) || hour > 23)
			return false;
		if (*p == ':')
			p++;
		if (*p != '\0' && (!take_digits(&p, 2, &min) || min > 59))
			return false;
	}
	return *p == '\0';
}

static bool
gen_json(yajl_gen g, yajl_val v, int depth)
{
	if (depth > MAX_JSON_DEPTH)
		return false;
	switch (v->type) {
	case yajl_t_string:
		return yajl_gen_string(g, (const unsigned char *)v->u.string,
				       strlen(v->u.string)) == yajl_gen_status_ok;
	case yajl_t_number:
		return yajl_gen_number(g, v->u.number.r, strlen(v->u.number.r)) ==
		       yajl_gen_status_ok;
	case yajl_t_true:
	case yajl_t_false:
		return yajl_gen_bool(g, v->type == yajl_t_true) == yajl_gen_status_ok;
	case yajl_t_null:
		return yajl_gen_null(g) == yajl_gen_status_ok;
	case yajl_t_object:
		if (yajl_gen_map_open(g) != yajl_gen_status_ok)
			return false;
		for (size_t i = 0; i < v->u.object.len; i++) {
			const char *key = v->u.object.keys[i];

			if (yajl_gen_string(g, (const unsigned char *)key, strlen(key)) !=
			    yajl_gen_status_ok || !gen_json(g, v->u.object.values[i], depth + 1))
				return false;
		}
		return yajl_gen_map_close(g) == yajl_gen_status_ok;
	case yajl_t_array:
		if (yajl_gen_array_open(g) != yajl_gen_status_ok)
			return false;
		for (size_t i = 0; i < v->u.array.len; i++) {
			if (!gen_json(g, v->u.array.values[i], depth + 1))
				return false;
		}
		return yajl_gen_array_close(g) == yajl_gen_status_ok;
	default:
		return false;
	}
}

/* A json parameter's default: the value serialised compactly by yajl. */
static char *
json_default(struct loader *ld, const struct param_def *def, yajl_val v)
{
	yajl_gen g = yajl_gen_alloc(NULL);
	const unsigned char *buf;
	size_t len;
	char *text = NULL;

	if (g == NULL) {
		ld->out_of_memory = true;
		return NULL;
	}
	yajl_gen_config(g, yajl_gen_validate_utf8, 1);
	if (!gen_json(g, v, 0) || yajl_gen_get_buf(g, &buf, &len) != yajl_gen_status_ok)
		problem(ld, "must be JSON of valid UTF-8, nested at most %d deep", MAX_JSON_DEPTH);
	else if (def->max_length >= 0 && len > (size_t)def->max_length)
		problem(ld, "longer than max_length (%ld bytes)", def->max_length);
	else
		text = dup_string(ld, (const char *)buf, len);
	yajl_gen_free(g);
	return text;
}

static char *
integer_default(struct loader *ld, const struct param_def *def, yajl_val v)
{
	char digits[32];
	long long n;
	double d;

	if (!read_typed_number(ld, def->type, v, &d, &n))
		return NULL;
	snprintf(digits, sizeof(digits), "%lld", n);
	if (!check_bounds(ld, def, digits))
		return NULL;
	return dup_string(ld, digits, strlen(digits));
}

static char *
string_default(struct loader *ld, const struct param_def *def, yajl_val v)
{
	const char *s;
	char *text;

	if (!YAJL_IS_STRING(v)) {
		problem(ld, "must be a string");
		return NULL;
	}
	s = v->u.string;
	if (def->type == PT_TEXT && def->max_length >= 0 &&
	    utf8_length(s) > (size_t)def->max_length) {
		problem(ld, "longer than max_length (%ld characters)", def->max_length);
		return NULL;
	}
	if (def->type == PT_UUID && !text_is_uuid(s)) {
		problem(ld, "must be a UUID (8-4-4-4-12 hexadecimal digits)");
		return NULL;
	}
	if (def->type == PT_TIMESTAMPTZ && !is_timestamp(s)) {
		problem(ld, "must be a timestamp (RFC 3339, e.g. \"2024-01-31T12:00:00Z\")");
		return NULL;
	}
	text = dup_string(ld, s, strlen(s));
	/* canonical case: uuids, and words such as "NOW" */
	if (text != NULL && (def->type == PT_UUID ||
			     (def->type == PT_TIMESTAMPTZ && !is_digit(text[0])))) {
		for (char *p = text; *p; p++)
			*p = to_lower(*p);
	}
	return text;
}

/* The default in the text form sent to PostgreSQL. */
static char *
convert_default(struct loader *ld, const struct param_def *def, yajl_val v)
{
	double d;

	switch (def->type) {
	case PT_INT:
	case PT_BIGINT:
		return integer_default(ld, def, v);
	case PT_NUMERIC:
		if (!read_number(ld, v, &d) || !check_bounds(ld, def, v->u.number.r))
			return NULL;
		return dup_string(ld, v->u.number.r, strlen(v->u.number.r));
	case PT_BOOL:
		if (!YAJL_IS_TRUE(v) && !YAJL_IS_FALSE(v)) {
			problem(ld, "must be true or false");
			return NULL;
		}
		return dup_string(ld, YAJL_IS_TRUE(v) ? "true" : "false", YAJL_IS_TRUE(v) ? 4 : 5);
	case PT_JSON:
		return json_default(ld, def, v);
	case PT_TEXT:
	case PT_UUID:
	case PT_TIMESTAMPTZ:
		return string_default(ld, def, v);
	}
	return NULL;
}

static void
read_default(struct loader *ld, struct param_def *def, bool have_type, yajl_val v)
{
	size_t mark = path_push_key(ld, "default");

	/* null: no default, the same as leaving it out (absent -> SQL NULL) */
	if (YAJL_IS_NULL(v))
		;
	else if (def->in == PARAM_IN_PATH)
		problem(ld, "not allowed on a path parameter "
			"(path parameters are always required)");
	else if (def->required)
		problem(ld, "not allowed on a required parameter");
	else if (have_type)
		def->default_text = convert_default(ld, def, v);
	path_pop(ld, mark);
}

static bool
read_param_enum(struct loader *ld, yajl_val v, const char *key, const char *const *choices,
		size_t *out)
{
	size_t mark = path_push_key(ld, key);
	bool ok = false;

	if (v == NULL)
		problem_choices(ld, "required (one of: ", choices, ")");
	else
		ok = read_choice(ld, v, choices, false, out);
	path_pop(ld, mark);
	return ok;
}

static void
read_required(struct loader *ld, struct param_def *def, yajl_val v)
{
	size_t mark = path_push_key(ld, "required");

	if (read_bool(ld, v, &def->required) && def->in == PARAM_IN_PATH && !def->required)
		problem(ld, "path parameters are always required");
	path_pop(ld, mark);
}

static void
load_param(struct loader *ld, const char *name, yajl_val v, struct param_def *def)
{
	yajl_val found[PK__COUNT];
	size_t in, type;
	bool have_type;
	size_t mark;

	def->name = dup_string(ld, name, strlen(name));
	def->in = PARAM_IN_QUERY;	/* until known: no path-only rules apply */
	def->max_length = -1;
	if (!valid_name(name, strlen(name)))
		problem(ld, "parameter names are letters, digits and '_', "
			"not starting with a digit");
	if (!YAJL_IS_OBJECT(v)) {
		problem(ld, "must be an object");
		return;
	}
	object_fields(ld, v, param_fields, PK__COUNT, found);
	if (read_param_enum(ld, found[PK_IN], "in", source_names, &in))
		def->in = (enum param_source)in;
	have_type = read_param_enum(ld, found[PK_TYPE], "type", type_names, &type);
	if (have_type)
		def->type = (enum param_type)type;
	if (found[PK_REQUIRED] != NULL)
		read_required(ld, def, found[PK_REQUIRED]);
	if (def->in == PARAM_IN_PATH)
		def->required = true;
	if (found[PK_MIN] != NULL)
		read_bound(ld, def, have_type, found[PK_MIN], "min", &def->min);
	if (found[PK_MAX] != NULL)
		read_bound(ld, def, have_type, found[PK_MAX], "max", &def->max);
	if (def->min != NULL && def->max != NULL && decimal_compare(def->min, def->max) > 0) {
		mark = path_push_key(ld, "min");
		problem(ld, "must not be greater than max");
		path_pop(ld, mark);
	}
	if (found[PK_MAX_LENGTH] != NULL)
		read_max_length(ld, def, have_type, found[PK_MAX_LENGTH]);
	if (found[PK_DEFAULT] != NULL)
		read_default(ld, def, have_type, found[PK_DEFAULT]);
}

static void
load_params(struct loader *ld, yajl_val v, struct route *route)
{
	size_t n;

	if (!YAJL_IS_OBJECT(v)) {
		problem(ld, "must be an object");
		return;
	}
	n = v->u.object.len;
	if (n == 0)
		return;
	route->params = calloc(n, sizeof(*route->params));
	if (route->params == NULL) {
		ld->out_of_memory = true;
		return;
	}
	for (size_t i = 0; i < n; i++) {
		size_t mark = path_push_key(ld, v->u.object.keys[i]);

		if (key_repeated(v, i))
			problem(ld, "duplicate key");
		else
			load_param(ld, v->u.object.keys[i], v->u.object.values[i],
				   &route->params[route->nparams++]);
		path_pop(ld, mark);
	}
}

/* ---- SQL: :name -> $n ---- */

struct sql_compiler {
	struct loader *ld;
	const char *sql;
	struct param_def *params;
	size_t nparams;
	int npositions;
	struct strbuf out;
	struct strbuf reported;		/* undefined names already reported, NUL-separated */
	bool broken;			/* the SQL cannot be compiled at all */
};

/* A byte that can continue a PostgreSQL word (identifiers may hold '$'
 * and non-ASCII letters): "$" or "E'" right after one is not special. */
static bool
is_sql_word_char(char c)
{
	return is_ident_char(c) || c == '$' || (unsigned char)c >= 0x80;
}

static bool
follows_word(const char *s, size_t i)
{
	return i > 0 && is_sql_word_char(s[i - 1]);
}

/* Index just past the quote closing the one at i; 0 if unterminated. A
 * doubled quote is an escaped quote; `backslash`: E'' string escapes. */
static size_t
skip_quoted(const char *s, size_t i, char quote, bool backslash)
{
	for (size_t j = i + 1; s[j] != '\0'; j++) {
		if (backslash && s[j] == '\\') {
			if (s[j + 1] == '\0')
				return 0;
			j++;
		} else if (s[j] == quote) {
			if (s[j + 1] != quote)
				return j + 1;
			j++;
		}
	}
	return 0;
}

static size_t
skip_line_comment(const char *s, size_t i)
{
	const char *nl = strchr(s + i, '\n');

	return nl != NULL ? (size_t)(nl - s) : strlen(s);
}

/* Block comments nest in PostgreSQL. 0 if unterminated. */
static size_t
skip_block_comment(const char *s, size_t i)
{
	size_t depth = 0, j = i;

	while (s[j] != '\0') {
		if (s[j] == '/' && s[j + 1] == '*') {
			depth++;
			j += 2;
		} else if (s[j] == '*' && s[j + 1] == '/') {
			j += 2;
			if (--depth == 0)
				return j;
		} else {
			j++;
		}
	}
	return 0;
}

/* Length of a dollar-quote opening tag ($$ or $tag$) at i, else 0. */
static size_t
dollar_tag_length(const char *s, size_t i)
{
	size_t j = i + 1;

	if (s[j] == '$')
		return 2;
	if (!is_ident_start(s[j]))
		return 0;
	while (is_ident_char(s[j]))
		j++;
	return s[j] == '$' ? j - i + 1 : 0;
}

static size_t
skip_dollar_quoted(const char *s, size_t i, size_t taglen)
{
	const char *body = s + i + taglen;
	const char *end = memmem(body, strlen(body), s + i, taglen);

	return end != NULL ? (size_t)(end - s) + taglen : 0;
}

static void
sql_copy(struct sql_compiler *c, size_t from, size_t to)
{
	strbuf_append(&c->out, c->sql + from, to - from);
}

static void __attribute__((format(printf, 2, 3)))
sql_broken(struct sql_compiler *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	problem_add(c->ld, path_now(c->ld), fmt, ap);
	va_end(ap);
	c->broken = true;
}

static bool
already_reported(struct sql_compiler *c, const char *name, size_t len)
{
	const char *p = c->reported.data;
	const char *end = p + c->reported.len;

	while (p != NULL && p < end) {
		size_t n = strlen(p);

		if (n == len && memcmp(p, name, len) == 0)
			return true;
		p += n + 1;
	}
	strbuf_append(&c->reported, name, len);
	strbuf_append(&c->reported, "", 1);
	return false;
}

/* :name at i: the same name always gets the same $n. Returns the index
 * after the name. */
static size_t
sql_placeholder(struct sql_compiler *c, size_t i)
{
	const char *name = c->sql + i + 1;
	size_t len = 0;
	struct param_def *def;

	while (is_ident_char(name[len]))
		len++;
	def = find_param(c->params, c->nparams, name, len);
	if (def == NULL) {
		if (!already_reported(c, name, len))
			problem(c->ld, ":%.*s has no parameter definition", (int)len, name);
		sql_copy(c, i, i + 1 + len);
	} else {
		if (def->position == 0)
			def->position = ++c->npositions;
		strbuf_appendf(&c->out, "$%d", def->position);
	}
	return i + 1 + len;
}

/* Strings, quoted identifiers and dollar quotes are copied untouched; 0 if
 * the one at i does not end. */
static size_t
sql_skip_literal(struct sql_compiler *c, size_t i)
{
	const char *s = c->sql;
	size_t end = 0, taglen;

	if (s[i] == '\'') {
		/* E'...' (also e'') has backslash escapes; the E must start a word */
		bool escapes = i > 0 && (s[i - 1] == 'E' || s[i - 1] == 'e') &&
			       !follows_word(s, i - 1);

		end = skip_quoted(s, i, '\'', escapes);
		if (end == 0)
			sql_broken(c, "unterminated quoted string");
	} else if (s[i] == '"') {
		end = skip_quoted(s, i, '"', false);
		if (end == 0)
			sql_broken(c, "unterminated quoted identifier");
	} else if ((taglen = dollar_tag_length(s, i)) > 0) {
		end = skip_dollar_quoted(s, i, taglen);
		if (end == 0)
			sql_broken(c, "unterminated dollar-quoted string");
	}
	return end;
}

/* One token that is not whitespace or a comment; returns the next index. */
static size_t
sql_token(struct sql_compiler *c, size_t i)
{
	const char *s = c->sql;
	size_t end, n;

	if (s[i] == '\'' || s[i] == '"' || (s[i] == '$' && !follows_word(s, i) &&
					    dollar_tag_length(s, i) > 0)) {
		end = sql_skip_literal(c, i);
		if (end != 0)
			sql_copy(c, i, end);
		return end != 0 ? end : strlen(s);
	}
	if (s[i] == '$' && is_digit(s[i + 1]) && !follows_word(s, i)) {
		for (n = 1; is_digit(s[i + n]); n++)
			;
		sql_broken(c, "%.*s: use :name placeholders, not positional parameters",
			   (int)(n > 12 ? 12 : n), s + i);
		return strlen(s);
	}
	if (s[i] == ':' && s[i + 1] == ':') {	/* a cast: :id::uuid */
		sql_copy(c, i, i + 2);
		return i + 2;
	}
	/* Not after a word: arr[1:n] and arr[lo:hi] are array slices (the
	 * rule SQLAlchemy's text() uses; a bound after a word is arr[1: :n]). */
	if (s[i] == ':' && is_ident_start(s[i + 1]) && !follows_word(s, i))
		return sql_placeholder(c, i);
	sql_copy(c, i, i + 1);
	return i + 1;
}

static void
compile_sql(struct sql_compiler *c)
{
	const char *s = c->sql;
	bool after_semicolon = false, has_statement = false;
	size_t i = 0, end;

	while (s[i] != '\0' && !c->broken) {
		if (is_space(s[i])) {
			sql_copy(c, i, i + 1);
			i++;
			continue;
		}
		if (s[i] == '-' && s[i + 1] == '-') {
			end = skip_line_comment(s, i);
			sql_copy(c, i, end);
			i = end;
			continue;
		}
		if (s[i] == '/' && s[i + 1] == '*') {
			end = skip_block_comment(s, i);
			if (end == 0) {
				sql_broken(c, "unterminated /* comment");
				break;
			}
			sql_copy(c, i, end);
			i = end;
			continue;
		}
		if (after_semicolon) {
			sql_broken(c, "only one SQL statement is allowed");
			break;
		}
		if (s[i] == ';')
			after_semicolon = true;
		else
			has_statement = true;
		i = sql_token(c, i);
	}
	if (!c->broken && !has_statement)
		sql_broken(c, "must not be empty");
}

/* Compiles route->sql in place and orders route->params by position.
 * The current path is the route. */
static void
compile_route_sql(struct loader *ld, struct route *route)
{
	struct sql_compiler c = { .ld = ld, .sql = route->sql, .params = route->params,
				  .nparams = route->nparams };
	struct param_def *ordered;
	size_t mark = path_push_key(ld, "sql");
	bool all_used = true;

	strbuf_init(&c.out);
	strbuf_init(&c.reported);
	compile_sql(&c);
	path_pop(ld, mark);
	if (strbuf_failed(&c.out) || strbuf_failed(&c.reported))
		ld->out_of_memory = true;
	for (size_t i = 0; i < route->nparams && !c.broken; i++) {
		if (route->params[i].position == 0) {
			mark = path_push_key(ld, "params");
			path_push_key(ld, param_label(&route->params[i]));
			problem(ld, "not used in sql");
			path_pop(ld, mark);
			all_used = false;
		}
	}
	strbuf_free(&c.reported, false);
	if (c.broken || strbuf_failed(&c.out)) {
		strbuf_free(&c.out, false);
		return;
	}
	free(route->sql);
	route->sql = strbuf_detach(&c.out, NULL);
	if (!all_used || route->nparams == 0)
		return;
	ordered = calloc(route->nparams, sizeof(*ordered));
	if (ordered == NULL) {
		ld->out_of_memory = true;
		return;
	}
	for (size_t i = 0; i < route->nparams; i++)
		ordered[route->params[i].position - 1] = route->params[i];
	free(route->params);
	route->params = ordered;
}

/* ---- route paths ---- */

static bool
literal_char_ok(unsigned char c)
{
	return c > ' ' && c != 0x7f && c != '?' && c != '#' && c != '%' && c != '{' && c != '}';
}

/* One segment of the template; `seen` counts each parameter's uses. */
static bool
compile_segment(struct loader *ld, struct route *route, const char *seg, size_t len,
		struct path_segment *out, unsigned char *seen)
{
	struct param_def *def;

	out->param = -1;
	if (len == 0) {
		problem(ld, "must not contain an empty segment (\"//\")");
		return false;
	}
	if ((len == 1 && seg[0] == '.') || (len == 2 && memcmp(seg, "..", 2) == 0)) {
		problem(ld, "must not contain \".\" or \"..\" segments");
		return false;
	}
	if (seg[0] != '{' || seg[len - 1] != '}' || len < 2) {
		for (size_t i = 0; i < len; i++) {
			if (seg[i] == '{' || seg[i] == '}') {
				problem(ld, "a {parameter} must be a whole segment");
				return false;
			}
			if (!literal_char_ok((unsigned char)seg[i])) {
				problem(ld, "must not contain spaces, control characters, "
					"'?', '#' or '%%'");
				return false;
			}
		}
		out->literal = dup_string(ld, seg, len);
		return out->literal != NULL;
	}
	def = find_param(route->params, route->nparams, seg + 1, len - 2);
	if (!valid_name(seg + 1, len - 2)) {
		problem(ld, "%.*s is not a valid parameter name", (int)len, seg);
		return false;
	}
	if (def == NULL) {
		problem(ld, "%.*s has no parameter definition", (int)len, seg);
		return false;
	}
	if (def->in != PARAM_IN_PATH) {
		problem(ld, "%.*s is in the path but its parameter is not \"in\": \"path\"",
			(int)len, seg);
		return false;
	}
	out->param = (int)(def - route->params);
	if (seen[out->param]++ > 0) {
		problem(ld, "%.*s appears more than once", (int)len, seg);
		return false;
	}
	return true;
}

static bool
split_path(struct loader *ld, struct route *route, unsigned char *seen)
{
	const char *p = route->path;
	size_t len = strlen(p), n = 0, start;
	bool ok = true;

	if (len > 1 && p[len - 1] == '/')	/* a trailing '/' is not significant */
		len--;
	for (size_t i = 1; i < len; i++)
		n += p[i] == '/';
	n = len > 1 ? n + 1 : 0;
	if (n == 0)
		return true;
	route->segments = calloc(n, sizeof(*route->segments));
	if (route->segments == NULL) {
		ld->out_of_memory = true;
		return false;
	}
	route->nsegments = n;
	start = 1;
	for (size_t k = 0; k < n; k++) {
		const char *slash = memchr(p + start, '/', len - start);
		size_t end = slash != NULL ? (size_t)(slash - p) : len;

		if (!compile_segment(ld, route, p + start, end - start, &route->segments[k], seen))
			ok = false;
		start = end + 1;
	}
	return ok;
}

/* Splits the template into segments; every in=path parameter must appear
 * exactly once. The current path is the route. Returns whether the path
 * is usable (for the duplicate check). */
static bool
compile_path(struct loader *ld, struct route *route)
{
	unsigned char *seen;
	size_t mark = path_push_key(ld, "path");
	bool ok;

	if (route->path[0] != '/') {
		problem(ld, "must start with '/'");
		path_pop(ld, mark);
		return false;
	}
	seen = calloc(route->nparams + 1, 1);
	if (seen == NULL) {
		ld->out_of_memory = true;
		path_pop(ld, mark);
		return false;
	}
	ok = split_path(ld, route, seen);
	path_pop(ld, mark);
	for (size_t i = 0; i < route->nparams; i++) {
		if (route->params[i].in == PARAM_IN_PATH && seen[i] == 0) {
			mark = path_push_key(ld, "params");
			path_push_key(ld, param_label(&route->params[i]));
			problem(ld, "\"in\": \"path\" but {%s} is not in the path",
				param_label(&route->params[i]));
			path_pop(ld, mark);
		}
	}
	free(seen);
	return ok;
}

/* ---- routes ---- */

static void
read_route_string(struct loader *ld, yajl_val v, const char *key, char **out)
{
	size_t mark = path_push_key(ld, key);
	const char *s;

	if (v == NULL)
		problem(ld, "required");
	else if (read_string(ld, v, &s))
		store_string(ld, out, s, false);
	path_pop(ld, mark);
}

static void
read_route_int(struct loader *ld, yajl_val v, const char *key, long long min, long long max,
	       long long *out)
{
	size_t mark = path_push_key(ld, key);

	read_integer(ld, v, min, max, out);
	path_pop(ld, mark);
}

static void
read_method(struct loader *ld, yajl_val v, struct route *route)
{
	size_t mark = path_push_key(ld, "method");
	size_t i;

	if (v == NULL)
		problem(ld, "required");
	else if (read_choice(ld, v, method_names, true, &i))
		store_string(ld, &route->method, method_names[i], false);
	path_pop(ld, mark);
}

static bool
read_auth(struct loader *ld, yajl_val v, struct route *route)
{
	size_t mark = path_push_key(ld, "auth");
	size_t i;
	bool ok = false;

	/* No default: which identity runs the SQL is a security boundary. */
	if (v == NULL) {
		problem(ld, "required (\"service-principal\" or \"on-behalf-of-user\")");
	} else if (read_choice(ld, v, auth_names, false, &i)) {
		route->auth = (enum auth_mode)i;
		ok = true;
	}
	path_pop(ld, mark);
	return ok;
}

static void
read_result(struct loader *ld, yajl_val v, struct route *route)
{
	size_t mark = path_push_key(ld, "result");
	size_t i;

	if (read_choice(ld, v, result_names, false, &i))
		route->result = (enum result_shape)i;
	path_pop(ld, mark);
}

/* Cache-Control becomes a response header: no CR/LF injection; and user
 * data is always private, so only service-principal routes may set it. */
static void
read_cache_control(struct loader *ld, yajl_val v, struct route *route, bool auth_known)
{
	size_t mark = path_push_key(ld, "cache_control");
	const char *s;

	if (auth_known && route->auth != AUTH_SERVICE_PRINCIPAL)
		problem(ld, "only allowed on service-principal routes "
			"(on-behalf-of-user responses are always private, no-store)");
	else if (!read_string(ld, v, &s))
		;
	else if (has_control(s))
		problem(ld, "must not contain control characters");
	else
		store_string(ld, &route->cache_control, s, false);
	path_pop(ld, mark);
}

static void
check_get_body_params(struct loader *ld, const struct route *route)
{
	if (route->method == NULL || strcmp(route->method, "GET") != 0)
		return;
	for (size_t i = 0; i < route->nparams; i++) {
		if (route->params[i].in == PARAM_IN_BODY) {
			size_t mark = path_push_key(ld, "params");

			path_push_key(ld, param_label(&route->params[i]));
			path_push_key(ld, "in");
			problem(ld, "body parameters are not allowed on GET routes");
			path_pop(ld, mark);
		}
	}
}

/* Loads and compiles one route; returns whether its method and path are
 * usable for the duplicate check. The current path is the route. */
static bool
load_route(struct loader *ld, yajl_val v, struct route *route)
{
	yajl_val f[RK__COUNT];
	long long n;
	bool auth_known, path_ok = false;

	route->result = RESULT_ROWS;
	route->max_rows = 10000;
	if (!YAJL_IS_OBJECT(v)) {
		problem(ld, "must be an object");
		return false;
	}
	object_fields(ld, v, route_fields, RK__COUNT, f);
	read_method(ld, f[RK_METHOD], route);
	read_route_string(ld, f[RK_PATH], "path", &route->path);
	auth_known = read_auth(ld, f[RK_AUTH], route);
	read_route_string(ld, f[RK_SQL], "sql", &route->sql);
	if (f[RK_PARAMS] != NULL) {
		size_t mark = path_push_key(ld, "params");

		load_params(ld, f[RK_PARAMS], route);
		path_pop(ld, mark);
	}
	if (f[RK_RESULT] != NULL)
		read_result(ld, f[RK_RESULT], route);
	n = route->max_rows;
	if (f[RK_MAX_ROWS] != NULL)
		read_route_int(ld, f[RK_MAX_ROWS], "max_rows", 1, 100000000, &n);
	route->max_rows = (long)n;
	n = 0;
	if (f[RK_STATEMENT_TIMEOUT] != NULL)
		read_route_int(ld, f[RK_STATEMENT_TIMEOUT], "statement_timeout_ms", 0, 86400000,
			       &n);
	route->statement_timeout_ms = (int)n;
	if (f[RK_CACHE_CONTROL] != NULL)
		read_cache_control(ld, f[RK_CACHE_CONTROL], route, auth_known);
	if (route->sql != NULL)
		compile_route_sql(ld, route);
	if (route->path != NULL)
		path_ok = compile_path(ld, route);
	check_get_body_params(ld, route);
	return path_ok && route->method != NULL;
}

/* Same method, and the same literals with parameters in the same places. */
static bool
same_route_shape(const struct route *a, const struct route *b)
{
	if (strcmp(a->method, b->method) != 0 || a->nsegments != b->nsegments)
		return false;
	for (size_t k = 0; k < a->nsegments; k++) {
		const char *la = a->segments[k].literal, *lb = b->segments[k].literal;

		if ((la == NULL) != (lb == NULL) || (la != NULL && strcmp(la, lb) != 0))
			return false;
	}
	return true;
}

static void
check_duplicate_routes(struct loader *ld, const struct lb_config *cfg, const bool *usable)
{
	for (size_t j = 1; j < cfg->nroutes; j++) {
		for (size_t i = 0; i < j && usable[j]; i++) {
			if (usable[i] && same_route_shape(&cfg->routes[i], &cfg->routes[j])) {
				size_t mark = path_push_index(ld, j);

				path_push_key(ld, "path");
				problem(ld, "same method and path as routes[%zu] (%s %s)", i,
					cfg->routes[i].method, cfg->routes[i].path);
				path_pop(ld, mark);
				break;
			}
		}
	}
}

static void
load_routes(struct loader *ld, yajl_val v, struct lb_config *cfg)
{
	bool *usable;
	size_t n;

	if (!YAJL_IS_ARRAY(v)) {
		problem(ld, "must be an array");
		return;
	}
	n = v->u.array.len;
	if (n == 0)
		return;
	cfg->routes = calloc(n, sizeof(*cfg->routes));
	usable = calloc(n, sizeof(*usable));
	if (cfg->routes == NULL || usable == NULL) {
		free(usable);
		ld->out_of_memory = true;
		return;
	}
	cfg->nroutes = n;
	for (size_t i = 0; i < n; i++) {
		size_t mark = path_push_index(ld, i);

		usable[i] = load_route(ld, v->u.array.values[i], &cfg->routes[i]);
		path_pop(ld, mark);
	}
	check_duplicate_routes(ld, cfg, usable);
	free(usable);
}

/* ---- the workspace host ---- */

static bool
is_loopback(const char *host, bool ipv6)
{
	struct in6_addr a6;
	struct in_addr a4;

	if (ipv6)
		return inet_pton(AF_INET6, host, &a6) == 1 &&
		       (IN6_IS_ADDR_LOOPBACK(&a6) ||
			(IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127));
	if (strcasecmp(host, "localhost") == 0)
		return true;
	return inet_pton(AF_INET, host, &a4) == 1 && (ntohl(a4.s_addr) >> 24) == 127;
}

static bool
valid_port_text(const char *s, size_t len)
{
	long port = 0;

	if (len == 0 || len > 5)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (!is_digit(s[i]))
			return false;
		port = port * 10 + (s[i] - '0');
	}
	return port >= 1 && port <= 65535;
}

static bool
valid_host_name(const char *s)
{
	for (; *s; s++) {
		if (!is_ident_char(*s) && *s != '-' && *s != '.')
			return false;
	}
	return true;
}

struct host_parts {
	char *host;		/* without brackets */
	bool ipv6;
	const char *port;	/* into the value; NULL if none */
	size_t port_len;
};

/* Splits host[:port], [v6]:port or a bare v6 address. Returns a static
 * message on error. */
static const char *
split_authority(const char *a, size_t len, struct host_parts *out)
{
	const char *colon = memchr(a, ':', len);
	const char *close;

	if (a[0] == '[') {
		close = memchr(a, ']', len);
		if (close == NULL)
			return "'[' without ']'";
		out->ipv6 = true;
		out->host = strndup(a + 1, (size_t)(close - a - 1));
		if ((size_t)(close - a) + 1 < len) {
			if (close[1] != ':')
				return "invalid host";
			out->port = close + 2;
			out->port_len = len - (size_t)(close - a) - 2;
		}
	} else if (colon != NULL && memchr(colon + 1, ':', len - (size_t)(colon - a) - 1)) {
		out->ipv6 = true;	/* bare "::1": no port possible */
		out->host = strndup(a, len);
	} else {
		out->host = strndup(a, colon != NULL ? (size_t)(colon - a) : len);
		if (colon != NULL) {
			out->port = colon + 1;
			out->port_len = len - (size_t)(colon - a) - 1;
		}
	}
	return out->host == NULL ? "out of memory" : NULL;
}

static const char *
check_host_parts(struct host_parts *hp, bool plain_http)
{
	struct in6_addr a6;

	if (hp->host[0] == '\0')
		return "empty host";
	if (hp->port != NULL && !valid_port_text(hp->port, hp->port_len))
		return "invalid port (must be 1-65535)";
	if (hp->ipv6 && inet_pton(AF_INET6, hp->host, &a6) != 1)
		return "invalid IPv6 address";
	if (!hp->ipv6 && !valid_host_name(hp->host))
		return "invalid host name";
	for (char *p = hp->host; *p; p++)
		*p = to_lower(*p);
	if (plain_http && !is_loopback(hp->host, hp->ipv6))
		return "plain http:// is only allowed for a loopback host";
	return NULL;
}

/*
 * Normalises a workspace URL to scheme://host[:port]: "https://" when no
 * scheme is given, trailing '/' removed. Plain http only reaches loopback,
 * so a workspace token never crosses a network in clear text. On error
 * returns NULL and a message in `why`.
 */
static char *
normalise_host(const char *value, char *why, size_t whylen)
{
	const char *sep = strstr(value, "://"), *a = value;
	struct host_parts hp = { 0 };
	const char *err = NULL;
	bool plain_http = false;
	struct strbuf sb;
	size_t len, slen;

	if (has_space_or_control(value)) {
		snprintf(why, whylen, "must not contain spaces or control characters");
		return NULL;
	}
	if (sep != NULL) {
		slen = (size_t)(sep - value);
		plain_http = slen == 4 && strncasecmp(value, "http", 4) == 0;
		if (!plain_http && !(slen == 5 && strncasecmp(value, "https", 5) == 0)) {
			snprintf(why, whylen, "unsupported scheme \"%.*s\" (use https://)",
				 (int)(slen > 20 ? 20 : slen), value);
			return NULL;
		}
		a = sep + 3;
	}
	len = strlen(a);
	while (len > 0 && a[len - 1] == '/')
		len--;
	if (len == 0)
		err = "empty host";
	else if (memchr(a, '/', len) || memchr(a, '?', len) || memchr(a, '#', len))
		err = "must not have a path, query or fragment (use scheme://host[:port])";
	else if (memchr(a, '@', len))
		err = "must not contain user information (user@)";
	else if ((err = split_authority(a, len, &hp)) == NULL)
		err = check_host_parts(&hp, plain_http);
	if (err != NULL) {
		snprintf(why, whylen, "%s", err);
		free(hp.host);
		return NULL;
	}
	strbuf_init(&sb);
	strbuf_appendf(&sb, "%s://%s%s%s", plain_http ? "http" : "https", hp.ipv6 ? "[" : "",
		       hp.host, hp.ipv6 ? "]" : "");
	if (hp.port != NULL)
		strbuf_appendf(&sb, ":%.*s", (int)hp.port_len, hp.port);
	free(hp.host);
	if (strbuf_failed(&sb)) {
		strbuf_free(&sb, false);
		snprintf(why, whylen, "out of memory");
		return NULL;
	}
	return strbuf_detach(&sb, NULL);
}

/* ---- environment and the checks after merging ---- */

static const char *
env_value(struct loader *ld, const char *name)
{
	const char *v = ld->getenv_fn(name);

	return v != NULL && v[0] != '\0' ? v : NULL;	/* empty counts as unset */
}

static void
note_env(struct lb_config *cfg, const char *path, const char *env)
{
	char source[64];

	snprintf(source, sizeof(source), "env %s", env);
	config_note_source(cfg, path, source);
}

/* The flag's value for a flag_settings entry; NULL when not given. */
static const char *
flag_value(const struct loader *ld, const struct flag_setting *fs)
{
	if (ld->overrides == NULL)
		return NULL;
	return *(const char *const *)(const void *)((const char *)ld->overrides + fs->given);
}

/* How messages name `key`: "pidfile (--pidfile)" when a flag set it. */
static const char *
key_name(const struct loader *ld, const char *key)
{
	for (size_t i = 0; i < ARRAY_LEN(flag_settings); i++) {
		if (strcmp(flag_settings[i].key, key) == 0 && flag_value(ld, &flag_settings[i]) != NULL)
			return flag_settings[i].label;
	}
	return key;
}

/* After the environment, before any check: a flag's value is checked as
 * the key's would be. */
static void
apply_flags(struct loader *ld, struct lb_config *cfg)
{
	static const char source[] = "command line";
	const struct config_overrides *ov = ld->overrides;
	const char *v;

	if (ov == NULL)
		return;
	for (size_t i = 0; i < ARRAY_LEN(flag_settings); i++) {
		if ((v = flag_value(ld, &flag_settings[i])) != NULL) {
			store_string(ld, string_field(cfg, flag_settings[i].offset), v, false);
			config_note_source(cfg, flag_settings[i].key, source);
		}
	}
	/* main parsed these within the keys' ranges */
	if (ov->threads > 0) {
		cfg->threads = ov->threads;
		config_note_source(cfg, "threads", source);
	}
	if (ov->workers_set) {
		cfg->workers = ov->workers;
		config_note_source(cfg, "workers", source);
	}
	if (ov->socket_mode != CONFIG_SOCKET_MODE_UNSET) {
		cfg->socket_mode = ov->socket_mode;
		config_note_source(cfg, "socket_mode", source);
	}
}

static void
apply_environment(struct loader *ld, struct lb_config *cfg)
{
	const char *v;

	for (size_t s = 0; s < S__COUNT; s++) {
		const struct env_setting *e = &env_settings[s];

		ld->origin[s] = e->path;
		if ((v = env_value(ld, e->env)) != NULL) {
			store_string(ld, string_field(cfg, e->offset), v, e->secret);
			ld->origin[s] = e->env;
			note_env(cfg, e->path, e->env);
		}
	}
	if ((v = env_value(ld, "PGPORT")) != NULL) {
		note_env(cfg, "postgres.port", "PGPORT");
		if (valid_port_text(v, strlen(v)))
			cfg->pg_port = atoi(v);
		else
			problem_at(ld, "PGPORT", "must be a port number between 1 and 65535");
	}
	if (cfg->pg_sslmode != NULL &&
	    sslmodes[choice_index(sslmodes, cfg->pg_sslmode, false)] == NULL) {
		struct strbuf sb;

		strbuf_init(&sb);
		join_choices(&sb, sslmodes);
		problem_at(ld, ld->origin[S_PGSSLMODE], "must be one of: %s",
			   sb.data != NULL ? sb.data : "");
		strbuf_free(&sb, false);
	}
}

static void
check_host(struct loader *ld, struct lb_config *cfg)
{
	char why[160];
	char *host;

	if (cfg->databricks_host == NULL) {
		problem_at(ld, "workspace.host", "required (set DATABRICKS_HOST)");
		return;
	}
	host = normalise_host(cfg->databricks_host, why, sizeof(why));
	if (host == NULL) {
		problem_at(ld, ld->origin[S_HOST], "%s", why);
		return;
	}
	free(cfg->databricks_host);
	cfg->databricks_host = host;
}

/*
 * Workspace authentication: OAuth M2M (client id + secret) or a static
 * token. When both are configured, M2M wins and the static token is wiped
 * and dropped, so the rest of the program sees one unambiguous choice.
 * A client id alone next to a token is fine: it only names the SP's role.
 */
static void
check_workspace_auth(struct loader *ld, struct lb_config *cfg)
{
	static const enum setting header_values[] = { S_CLIENT_ID, S_CLIENT_SECRET, S_TOKEN };

	for (size_t i = 0; i < ARRAY_LEN(header_values); i++) {
		const char *v = *string_field(cfg, env_settings[header_values[i]].offset);

		if (v != NULL && has_space_or_control(v))
			problem_at(ld, ld->origin[header_values[i]],
				   "must not contain spaces or control characters");
	}
	if (cfg->client_secret != NULL && cfg->client_id == NULL) {
		problem_at(ld, "workspace.client_id",
			   "required with a client secret (set DATABRICKS_CLIENT_ID)");
	} else if (cfg->client_id != NULL && cfg->client_secret != NULL) {
		free_secret(cfg->static_token);
		cfg->static_token = NULL;
	} else if (cfg->static_token == NULL) {
		problem_at(ld, "workspace", "set DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET "
			   "(OAuth M2M) or DATABRICKS_TOKEN");
	}
}

static void
check_connection(struct loader *ld, struct lb_config *cfg)
{
	check_host(ld, cfg);
	check_workspace_auth(ld, cfg);
	if (cfg->lakebase_endpoint == NULL)
		problem_at(ld, "workspace.endpoint", "required (set LAKEBASE_ENDPOINT)");
	else if (has_space_or_control(cfg->lakebase_endpoint))
		problem_at(ld, ld->origin[S_ENDPOINT],
			   "must not contain spaces or control characters");
	if (cfg->pg_host == NULL)
		problem_at(ld, "postgres.host", "required (set PGHOST)");
	if (cfg->pg_appname != NULL && has_control(cfg->pg_appname))
		problem_at(ld, ld->origin[S_PGAPPNAME], "must not contain control characters");
}

/* RFC 9110 token characters. */
static bool
valid_header_name(const char *s)
{
	if (*s == '\0')
		return false;
	for (; *s; s++) {
		if (!is_ident_char(*s) && strchr("!#$%&'*+-.^`|~", *s) == NULL)
			return false;
	}
	return true;
}

static bool
valid_url_path(const char *s)
{
	if (s[0] != '/')
		return false;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p <= ' ' || *p == 0x7f || *p == '?' || *p == '#')
			return false;
	}
	return true;
}

/* "host:port", "[v6]:port", ":port" or "unix:/absolute/path": NULL, or
 * what is wrong. A unix path must fit sockaddr_un (the socket could not
 * be opened) and has no control characters (a newline would forge log
 * lines and is no name anyone means). */
static const char *
listen_problem(const char *s)
{
	const char *colon;

	if (strncmp(s, "unix:", 5) == 0) {
		if (s[5] != '/')
			return "must be \"HOST:PORT\" or \"unix:/PATH\"";
		if (has_control(s + 5))
			return "the unix socket path must not contain control characters";
		if (strlen(s + 5) >= sizeof(((struct sockaddr_un *)NULL)->sun_path))
			return "the unix socket path must be at most " UNIX_PATH_MAX_TEXT " bytes";
		return NULL;
	}
	colon = strrchr(s, ':');
	if (colon != NULL && valid_port_text(colon + 1, strlen(colon + 1)) && !has_space_or_control(s))
		return NULL;
	return "must be \"HOST:PORT\" or \"unix:/PATH\"";
}

static void
check_server(struct loader *ld, const struct lb_config *cfg)
{
	static const char bad_path[] = "must start with '/' (no spaces, '?' or '#')";
	const char *wrong;

	if (cfg->listen != NULL && (wrong = listen_problem(cfg->listen)) != NULL)
		problem_at(ld, key_name(ld, "listen"), "%s", wrong);
	if (!valid_url_path(cfg->healthz_path))
		problem_at(ld, "health.healthz_path", "%s", bad_path);
	if (!valid_url_path(cfg->readyz_path))
		problem_at(ld, "health.readyz_path", "%s", bad_path);
	else if (strcmp(cfg->healthz_path, cfg->readyz_path) == 0)
		problem_at(ld, "health.readyz_path", "must differ from health.healthz_path");
	if (!valid_url_path(cfg->metrics_path))
		problem_at(ld, "metrics.path", "%s", bad_path);
	else if (strcmp(cfg->metrics_path, cfg->healthz_path) == 0 ||
		 strcmp(cfg->metrics_path, cfg->readyz_path) == 0)
		problem_at(ld, "metrics.path", "must differ from the health paths");
	if (!valid_url_path(cfg->status_path))
		problem_at(ld, "metrics.status_path", "%s", bad_path);
	else if (strcmp(cfg->status_path, cfg->healthz_path) == 0 ||
		 strcmp(cfg->status_path, cfg->readyz_path) == 0 ||
		 strcmp(cfg->status_path, cfg->metrics_path) == 0)
		problem_at(ld, "metrics.status_path", "must differ from metrics.path and the health paths");
	if (!valid_header_name(cfg->email_header))
		problem_at(ld, "identity.email_header", "must be an HTTP header name");
	if (!valid_header_name(cfg->token_header))
		problem_at(ld, "identity.token_header", "must be an HTTP header name");
	else if (strcasecmp(cfg->email_header, cfg->token_header) == 0)
		problem_at(ld, "identity.token_header", "must differ from identity.email_header");
	if (cfg->sp_pool.max > cfg->max_connections)
		problem_at(ld, "pool.max", "must not exceed max_connections (%d)",
			   cfg->max_connections);
	if (cfg->user_pool.max > cfg->max_connections)
		problem_at(ld, "user_pool.max", "must not exceed max_connections (%d)",
			   cfg->max_connections);
}

/* A mount prefix: "/seg[/seg...]", no trailing '/', no empty, dot or
 * escaped segments. It is compared with the raw request path, so anything
 * that decodes differently is refused here rather than never matching. */
static bool
valid_mount_prefix(const char *s)
{
	const char *seg;
	size_t n;

	if (s[0] != '/' || s[1] == '\0')
		return false;
	for (seg = s + 1; ; seg += n + 1) {
		n = strcspn(seg, "/");
		if (n == 0 || (n == 1 && seg[0] == '.') || (n == 2 && seg[0] == '.' && seg[1] == '.'))
			return false;
		for (size_t i = 0; i < n; i++) {
			if (!is_ident_char(seg[i]) && strchr("-.~", seg[i]) == NULL)
				return false;
		}
		if (seg[n] == '\0')
			return true;
	}
}

static void
check_absolute(struct loader *ld, const char *key, const char *path)
{
	if (path != NULL && (path[0] != '/' || has_control(path)))
		problem_at(ld, key, "must be an absolute path");
}

static void
check_process(struct loader *ld, const struct lb_config *cfg)
{
	if (cfg->mount_prefix != NULL && !valid_mount_prefix(cfg->mount_prefix))
		problem_at(ld, "mount_prefix",
			   "must be a path such as \"/api\": segments of letters, digits and -._~, "
			   "no trailing '/', no '.' or '..', no %%-escapes");
	check_absolute(ld, key_name(ld, "pidfile"), cfg->pidfile);
	check_absolute(ld, "log_file", cfg->log_file);
	if (cfg->user != NULL && has_space_or_control(cfg->user))
		problem_at(ld, key_name(ld, "user"), "must be a user name or number");
	if (cfg->group != NULL && has_space_or_control(cfg->group))
		problem_at(ld, key_name(ld, "group"), "must be a group name or number");
	if (cfg->socket_owner != NULL && has_space_or_control(cfg->socket_owner))
		problem_at(ld, key_name(ld, "socket_owner"), "must be a user name or number");
	if (cfg->socket_group != NULL && has_space_or_control(cfg->socket_group))
		problem_at(ld, key_name(ld, "socket_group"), "must be a group name or number");
}

/* Whether a route with only literal segments has exactly this path. */
static bool
route_is_path(const struct route *route, const char *path)
{
	const char *p = path + 1;

	if (route->segments == NULL && route->nsegments > 0)
		return false;
	for (size_t k = 0; k < route->nsegments; k++) {
		const char *lit = route->segments[k].literal;
		size_t n = strcspn(p, "/");

		if (lit == NULL || strlen(lit) != n || memcmp(lit, p, n) != 0)
			return false;
		p += n;
		if (*p == '/')
			p++;
	}
	return *p == '\0';
}

static void
check_health_conflicts(struct loader *ld, const struct lb_config *cfg)
{
	const char *paths[] = { cfg->healthz_path, cfg->readyz_path, cfg->metrics_path, cfg->status_path };
	const char *keys[] = {
		"health.healthz_path", "health.readyz_path", "metrics.path", "metrics.status_path"
	};
	size_t mark;

	for (size_t i = 0; i < cfg->nroutes; i++) {
		for (size_t h = 0; h < ARRAY_LEN(paths); h++) {
			if (cfg->routes[i].path == NULL || cfg->routes[i].path[0] != '/' ||
			    paths[h][0] != '/' || !route_is_path(&cfg->routes[i], paths[h]))
				continue;
			mark = path_push_key(ld, "routes");
			path_push_index(ld, i);
			path_push_key(ld, "path");
			problem(ld, "conflicts with %s (\"%s\")", keys[h], paths[h]);
			path_pop(ld, mark);
		}
	}
}

/* ---- loading ---- */

static struct lb_config *
config_new(void)
{
	struct lb_config *cfg = calloc(1, sizeof(*cfg));
	const struct pool_settings sp = { 10, 10000, 30000, 5000 };
	const struct pool_settings user = { 3, 10000, 30000, 5000 };

	if (cfg == NULL)
		return NULL;
	strbuf_init(&cfg->sources);
	cfg->threads = 16;
	cfg->workers = 0;
	cfg->shutdown_grace_ms = 30000;
	cfg->max_requests = 0;
	cfg->socket_mode = CONFIG_SOCKET_MODE_UNSET;
	cfg->max_body_bytes = 1048576;
	cfg->http_connect_timeout_ms = 5000;
	cfg->http_timeout_ms = 30000;
	cfg->pg_port = 5432;
	cfg->sp_pool = sp;
	cfg->user_pool = user;
	cfg->max_user_pools = 1000;
	cfg->max_connections = 64;
	cfg->user_pool_remove_after_ms = 300000;
	cfg->development_mode = false;
	cfg->refresh_margin_ms = 120000;
	cfg->cache_slots = 4096;
	cfg->max_host_connections = 0;
	cfg->cache_path = strdup("/run/lakebase-fcgi/credentials.shm");
	cfg->cache_sp_refresh = strdup("eager");
	cfg->cache_user_refresh = strdup("lazy");
	cfg->log_level = strdup("info");
	cfg->log_format = strdup("logfmt");
	cfg->log_user = false;
	cfg->access_log = true;
	cfg->healthz_path = strdup("/healthz");
	cfg->readyz_path = strdup("/readyz");
	cfg->metrics_enabled = true;
	cfg->metrics_path = strdup("/metrics");
	cfg->metrics_allow = strdup("local");
	cfg->status_path = strdup("/status");
	cfg->pg_database = strdup("databricks_postgres");
	cfg->pg_sslmode = strdup("verify-full");
	cfg->pg_appname = strdup("lakebase-fcgi");
	cfg->email_header = strdup("X-Forwarded-Email");
	cfg->token_header = strdup("X-Forwarded-Access-Token");
	if (!cfg->log_level || !cfg->log_format || !cfg->healthz_path || !cfg->readyz_path ||
	    !cfg->metrics_path || !cfg->metrics_allow || !cfg->status_path || !cfg->pg_database ||
	    !cfg->pg_sslmode || !cfg->pg_appname || !cfg->email_header || !cfg->token_header ||
	    !cfg->cache_path || !cfg->cache_sp_refresh || !cfg->cache_user_refresh) {
		config_free(cfg);
		return NULL;
	}
	return cfg;
}

/* Line and column (from 1) of text[offset]. */
static void
text_position(const char *text, size_t offset, unsigned *line, unsigned *column)
{
	*line = 1;
	*column = 1;
	for (size_t i = 0; i < offset && text[i] != '\0'; i++) {
		if (text[i] == '\n') {
			(*line)++;
			*column = 1;
		} else {
			(*column)++;
		}
	}
}

/* yajl_tree_parse reports no position; a second, callback-less parse finds
 * the byte where the text stops being JSON. */
static size_t
json_error_offset(const char *text)
{
	yajl_handle h = yajl_alloc(NULL, NULL, NULL);
	size_t len = strlen(text), offset = len;

	if (h != NULL) {
		yajl_config(h, yajl_allow_comments, 1);
		/* the count includes the offending byte */
		if (yajl_parse(h, (const unsigned char *)text, len) != yajl_status_ok &&
		    (offset = yajl_get_bytes_consumed(h)) > 0)
			offset--;
		yajl_free(h);
	}
	return offset;
}

/* "file: line L, column C: " before a problem with the file's text. */
static void
problem_in_text(struct loader *ld, const char *text, const char *file, size_t offset, const char *what)
{
	unsigned line, column;

	text_position(text, offset, &line, &column);
	problem_at(ld, "", "%s%sline %u, column %u: %s", file != NULL ? file : "",
		   file != NULL ? ": " : "", line, column, what);
}

/* yajl_tree has no depth limit and frees recursively: deep nesting would
 * overflow the stack (a SIGHUP with such a file would end the supervisor).
 * Refused before parsing, as is \u0000 in a string: yajl_tree's strings
 * are C strings, so the value would silently end there. Comments stay
 * allowed. */
static bool
json_text_acceptable(struct loader *ld, const char *text, const char *file)
{
	const char *what;
	size_t where;

	switch (jsonscan(text, strlen(text), MAX_FILE_DEPTH, JSONSCAN_COMMENTS, &where)) {
	case JSONSCAN_OK:
		return true;
	case JSONSCAN_NUL_ESCAPE:
		what = "\\u0000 in a string (a NUL would cut it short)";
		break;
	case JSONSCAN_LONE_SURROGATE:
		what = "a \\u escape of half a surrogate pair";
		break;
	default:	/* read_file refused NUL bytes: the depth */
		what = "nested deeper than " MAX_FILE_DEPTH_TEXT " levels";
		break;
	}
	problem_in_text(ld, text, file, where, what);
	return false;
}

static yajl_val
parse_json(struct loader *ld, const char *text, const char *file)
{
	char errbuf[1024];
	yajl_val root;

	if (!json_text_acceptable(ld, text, file))
		return NULL;
	errbuf[0] = '\0';
	root = yajl_tree_parse(text, errbuf, sizeof(errbuf));	/* allows comments */
	if (root == NULL) {
		errbuf[strcspn(errbuf, "\n")] = '\0';	/* yajl adds a context picture */
		problem_in_text(ld, text, file, json_error_offset(text),
				errbuf[0] != '\0' ? errbuf : "invalid JSON");
		return NULL;
	}
	if (!YAJL_IS_OBJECT(root)) {
		problem_at(ld, "", "the configuration must be a JSON object");
		yajl_tree_free(root);
		return NULL;
	}
	return root;
}

/* The tree's copies of secrets are wiped before yajl frees them. */
static void
wipe_tree_secrets(yajl_val root)
{
	for (size_t i = 0; root != NULL && i < root->u.object.len; i++) {
		yajl_val ws = root->u.object.values[i];

		if (strcmp(root->u.object.keys[i], "workspace") != 0 || !YAJL_IS_OBJECT(ws))
			continue;
		for (size_t j = 0; j < ws->u.object.len; j++) {
			yajl_val v = ws->u.object.values[j];
			const char *key = ws->u.object.keys[j];

			if (YAJL_IS_STRING(v) && (strcmp(key, "client_secret") == 0 ||
						  strcmp(key, "token") == 0))
				OPENSSL_cleanse(v->u.string, strlen(v->u.string));
		}
	}
}

/* A bigger copy of buf[0..len); the old one is wiped (it may hold secrets,
 * which realloc could leave behind in freed memory). */
static char *
grow_wiped(char *buf, size_t len, size_t cap)
{
	char *bigger = malloc(cap);

	if (bigger == NULL)
		return NULL;
	if (len > 0)
		memcpy(bigger, buf, len);
	if (buf != NULL) {
		OPENSSL_cleanse(buf, len);
		free(buf);
	}
	return bigger;
}

/* Reads the whole file; NULL with a problem naming the file on failure.
 * The caller wipes and frees the text. */
static char *
read_file(struct loader *ld, const char *file)
{
	size_t len = 0, cap = 0, n;
	char *buf = NULL, *bigger;
	bool failed = false;
	FILE *fp;

	fp = fopen(file, "re");
	if (fp == NULL) {
		problem_at(ld, "", "cannot read %s: %s", file, strerror(errno));
		return NULL;
	}
	do {
		if (cap - len < 2) {
			bigger = grow_wiped(buf, len, cap == 0 ? 8192 : cap * 2);
			if (bigger == NULL) {
				ld->out_of_memory = failed = true;
				break;
			}
			buf = bigger;
			cap = cap == 0 ? 8192 : cap * 2;
		}
		n = fread(buf + len, 1, cap - len - 1, fp);
		len += n;
		if (len > MAX_CONFIG_BYTES) {
			problem_at(ld, "", "%s: larger than %d bytes", file, MAX_CONFIG_BYTES);
			failed = true;
			break;
		}
	} while (n > 0);
	if (!failed && ferror(fp)) {
		problem_at(ld, "", "cannot read %s: %s", file, strerror(errno));
		failed = true;
	} else if (!failed && memchr(buf, '\0', len) != NULL) {
		problem_at(ld, "", "%s: contains a NUL byte", file);
		failed = true;
	}
	fclose(fp);
	if (failed) {
		if (buf != NULL)
			OPENSSL_cleanse(buf, len);
		free(buf);
		return NULL;
	}
	buf[len] = '\0';
	return buf;
}

static const char *
process_getenv(const char *name)
{
	return getenv(name);
}

static void
loader_init(struct loader *ld, struct config_problems *problems, config_getenv_fn getenv_fn,
	    const struct config_overrides *overrides)
{
	memset(ld, 0, sizeof(*ld));
	problems->items = NULL;
	problems->count = 0;
	ld->problems = problems;
	ld->getenv_fn = getenv_fn != NULL ? getenv_fn : process_getenv;
	ld->overrides = overrides;
	strbuf_init(&ld->path);
}

/* Returns the config, or NULL when there is any problem. */
static struct lb_config *
loader_finish(struct loader *ld, struct lb_config *cfg)
{
	if (strbuf_failed(&ld->path))
		ld->out_of_memory = true;
	strbuf_free(&ld->path, false);
	if (ld->out_of_memory)
		problem_at(ld, "", "out of memory");
	if (ld->problems->count > 0 || ld->out_of_memory) {
		config_free(cfg);
		return NULL;
	}
	return cfg;
}

/* text NULL: environment and defaults only. `file` names text in messages. */
static struct lb_config *
load(struct loader *ld, const char *text, const char *file)
{
	struct lb_config *cfg = config_new();
	yajl_val root = NULL;

	if (cfg == NULL) {
		ld->out_of_memory = true;
		return loader_finish(ld, NULL);
	}
	if (text != NULL) {
		root = parse_json(ld, text, file);
		if (root == NULL)	/* nothing after a syntax error would be meaningful */
			return loader_finish(ld, cfg);
		read_section(ld, root, &top_section, cfg);
		wipe_tree_secrets(root);
		yajl_tree_free(root);
	}
	apply_environment(ld, cfg);
	apply_flags(ld, cfg);
	check_connection(ld, cfg);
	check_server(ld, cfg);
	check_process(ld, cfg);
	check_absolute(ld, ld->origin[S_CACHE_PATH], cfg->cache_path);
	check_health_conflicts(ld, cfg);
	return loader_finish(ld, cfg);
}

struct lb_config *
config_load(const char *file, config_getenv_fn getenv_fn, const struct config_overrides *overrides,
	    struct config_problems *problems)
{
	struct lb_config *cfg;
	struct loader ld;
	char *text = NULL;

	loader_init(&ld, problems, getenv_fn, overrides);
	if (file != NULL) {
		text = read_file(&ld, file);
		if (text == NULL)
			return loader_finish(&ld, NULL);
	}
	cfg = load(&ld, text, file);
	if (text != NULL) {
		OPENSSL_cleanse(text, strlen(text));
		free(text);
	}
	return cfg;
}

struct lb_config *
config_load_string(const char *json, config_getenv_fn getenv_fn,
		   const struct config_overrides *overrides, struct config_problems *problems)
{
	struct loader ld;

	loader_init(&ld, problems, getenv_fn, overrides);
	return load(&ld, json, NULL);
}

static void
route_free(struct route *route)
{
	free(route->method);
	free(route->path);
	for (size_t k = 0; route->segments != NULL && k < route->nsegments; k++)
		free(route->segments[k].literal);
	free(route->segments);
	free(route->sql);
	for (size_t i = 0; route->params != NULL && i < route->nparams; i++) {
		free(route->params[i].name);
		free(route->params[i].default_text);
		free(route->params[i].min);
		free(route->params[i].max);
	}
	free(route->params);
	free(route->cache_control);
}

void
config_free(struct lb_config *cfg)
{
	if (cfg == NULL)
		return;
	free_secret(cfg->client_secret);
	free_secret(cfg->static_token);
	free(cfg->listen);
	free(cfg->user);
	free(cfg->group);
	free(cfg->pidfile);
	free(cfg->log_file);
	free(cfg->socket_owner);
	free(cfg->socket_group);
	free(cfg->mount_prefix);
	free(cfg->log_level);
	strbuf_free(&cfg->sources, false);
	free(cfg->healthz_path);
	free(cfg->metrics_path);
	free(cfg->log_format);
	free(cfg->metrics_allow);
	free(cfg->status_path);
	free(cfg->readyz_path);
	free(cfg->databricks_host);
	free(cfg->client_id);
	free(cfg->lakebase_endpoint);
	free(cfg->pg_host);
	free(cfg->pg_database);
	free(cfg->pg_user);
	free(cfg->pg_sslmode);
	free(cfg->pg_sslrootcert);
	free(cfg->pg_appname);
	free(cfg->email_header);
	free(cfg->token_header);
	free(cfg->cache_path);
	free(cfg->cache_sp_refresh);
	free(cfg->cache_user_refresh);
	for (size_t i = 0; cfg->routes != NULL && i < cfg->nroutes; i++)
		route_free(&cfg->routes[i]);
	free(cfg->routes);
	OPENSSL_cleanse(cfg, sizeof(*cfg));
	free(cfg);
}

void
config_problems_free(struct config_problems *problems)
{
	if (problems == NULL)
		return;
	for (size_t i = 0; i < problems->count; i++) {
		free(problems->items[i].path);
		free(problems->items[i].message);
	}
	free(problems->items);
	problems->items = NULL;
	problems->count = 0;
}

void
config_print_problems(FILE *out, const struct config_problems *problems)
{
	for (size_t i = 0; i < problems->count; i++) {
		const struct config_problem *p = &problems->items[i];

		if (p->path[0] != '\0')
			fprintf(out, "%s: %s\n", p->path, p->message);
		else
			fprintf(out, "%s\n", p->message);
	}
}

const char *
auth_mode_name(enum auth_mode mode)
{
	return (unsigned)mode < ARRAY_LEN(auth_names) - 1 ? auth_names[mode] : "unknown";
}

const char *
param_type_name(enum param_type type)
{
	return (unsigned)type < ARRAY_LEN(type_names) - 1 ? type_names[type] : "unknown";
}

void
config_apply_logging(const struct lb_config *cfg)
{
	enum log_level level;

	if (log_parse_level(cfg->log_level, &level) == 0)
		log_set_level(level);
	log_set_format(strcmp(cfg->log_format, "json") == 0 ? LOG_FMT_JSON : LOG_FMT_LOGFMT);
	log_set_redact_emails(!cfg->log_user);
}

void
config_note_source(struct lb_config *cfg, const char *path, const char *source)
{
	strbuf_appendf(&cfg->sources, "%s=%s\n", path, source);
}

/* The last source recorded for `path`, or "default". */
static const char *
source_of(const struct lb_config *cfg, const char *path, char *buf, size_t size)
{
	const char *p = cfg->sources.data, *found = NULL;
	size_t n = strlen(path);

	for (; p != NULL && *p != '\0'; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
		if (strncmp(p, path, n) == 0 && p[n] == '=')
			found = p + n + 1;
	}
	if (found == NULL)
		return "default";
	snprintf(buf, size, "%.*s", (int)strcspn(found, "\n"), found);
	return buf;
}

static void
print_value(const struct field *f, const char *target, FILE *out)
{
	const void *at = target + f->offset;

	switch (f->kind) {
	case FK_STRING:
	case FK_CHOICE: {
		const char *v = *(char *const *)at;

		if (v == NULL)
			fputs("(unset)", out);
		else if (f->secret)
			fputs("********", out);	/* set: never the value */
		else
			fprintf(out, "\"%s\"", v);
		break;
	}
	case FK_INT:
		fprintf(out, "%d", *(const int *)at);
		break;
	case FK_WORKERS:
		if (*(const int *)at == CONFIG_WORKERS_AUTO)
			fputs("auto", out);
		else
			fprintf(out, "%d", *(const int *)at);
		break;
	case FK_MODE:
		if (*(const int *)at == CONFIG_SOCKET_MODE_UNSET)
			fputs("0660", out);
		else
			fprintf(out, "0%o", (unsigned)*(const int *)at);
		break;
	case FK_LONG:
		fprintf(out, "%ld", *(const long *)at);
		break;
	case FK_BOOL:
		fputs(*(const bool *)at ? "true" : "false", out);
		break;
	default:
		fputs("?", out);
		break;
	}
}

static void
print_section(const struct lb_config *cfg, const struct section *section, const char *prefix, FILE *out)
{
	const char *target = (const char *)cfg + section->target;
	char path[128], source[96];

	for (size_t k = 0; k < section->nfields; k++) {
		const struct field *f = &section->fields[k];

		snprintf(path, sizeof(path), "%s%s%s", prefix, prefix[0] ? "." : "", f->key);
		if (f->kind == FK_SECTION) {
			print_section(cfg, f->section, path, out);
			continue;
		}
		if (f->kind == FK_ROUTES) {
			fprintf(out, "  %-40s %zu  (%s)\n", path, cfg->nroutes,
				cfg->nroutes > 0 ? "file" : "default");
			continue;
		}
		fprintf(out, "  %-40s ", path);
		print_value(f, target, out);
		fprintf(out, "  (%s)\n", source_of(cfg, path, source, sizeof(source)));
	}
}

void
config_print_effective(const struct lb_config *cfg, FILE *out)
{
	fputs("effective settings (value, source):\n", out);
	print_section(cfg, &top_section, "", out);
}
