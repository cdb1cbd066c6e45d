#!/usr/bin/env bash
# scripts/stack.sh start|stop|status|restart - the local stack, all on
# loopback: PostgreSQL 15 with TLS (a throwaway test CA) and password
# logins over it (as Lakebase takes its OAuth tokens), the workspace
# emulator, lakebase-fcgi, and nginx in front of it.
#
# State (data, certs, secrets, logs, pidfiles, sockets) lives in
# ${LAKEBASE_STACK_DIR:-/tmp/lakebase-fcgi-stack}; `start` recreates it from
# scratch, `stop` keeps it for reading the logs. Binaries come from
# ${LAKEBASE_BUILD_DIR:-<repo>/build} (scripts/build.sh). Ports:
# LAKEBASE_PG_PORT (54329), LAKEBASE_EMU_PORT (18089), LAKEBASE_HTTP_PORT
# (18080). Worker: LAKEBASE_WORKER_CONFIG, LAKEBASE_WORKER_THREADS,
# WORKER_EXTRA_ARGS. Emulator: LAKEBASE_CREDENTIAL_LIFETIME_S,
# LAKEBASE_OAUTH_TOKEN_LIFETIME_S (3600). PostgreSQL:
# LAKEBASE_PG_MAX_CONNECTIONS (200). Tests source $STATE/env.sh afterwards.
#
# Needs root: postgres runs as the postgres OS user and nginx as www-data.
set -Eeuo pipefail
# Say where it stopped: set -e alone exits silently.
trap 'stack_warn "failed (exit $?) at line $LINENO: $BASH_COMMAND; whatever started is still running: scripts/stack.sh stop"' ERR

# shellcheck source=tests/stack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../tests/stack/lib.sh"

usage() {
	echo "usage: $0 start|stop|status|restart" >&2
	exit 2
}

# --- state directory ------------------------------------------------------------

# Refuse anything that is not plainly ours before deleting it: a symlink, a
# directory owned by someone else, or a non-empty one without our marker.
state_reset() {
	# Unix socket paths (fcgi.sock, pgsock/.s.PGSQL.N) must fit in 107 bytes.
	[[ ${#STACK_DIR} -le 80 ]] || stack_die "LAKEBASE_STACK_DIR is too long for unix socket paths (max 80 chars)"
	if [[ -L $STACK_DIR ]]; then stack_die "$STACK_DIR is a symlink; refusing"; fi
	if [[ -d $STACK_DIR ]]; then
		[[ $(stat -c %u "$STACK_DIR") == 0 ]] || stack_die "$STACK_DIR is not owned by root; refusing"
		if [[ -n $(ls -A "$STACK_DIR") && ! -e $STACK_DIR/$STACK_MARKER ]]; then
			stack_die "$STACK_DIR exists and is not a lakebase-fcgi stack dir; refusing to wipe it"
		fi
		rm -rf "$STACK_DIR"
	fi
	# 0755: postgres must reach its data, certs and socket dir; nginx's
	# www-data workers must reach the FastCGI socket.
	install -d -m 0755 "$STACK_DIR"
	touch "$STACK_DIR/$STACK_MARKER"
	as_postgres test -r "$STACK_DIR/$STACK_MARKER" ||
		stack_die "user postgres cannot reach $STACK_DIR (a parent directory is not searchable by others)"
}

# Something else on our ports would make the stack talk to a stranger.
ports_free() {
	local port
	for port in "$STACK_PG_PORT" "$STACK_EMU_PORT" "$STACK_HTTP_PORT"; do
		if port_in_use "$port"; then
			stack_die "127.0.0.1:$port is already in use by another process (set LAKEBASE_*_PORT)"
		fi
	done
}

# --- TLS: a test CA and a server certificate for localhost ------------------------

tls_make() {
	local d=$STACK_TLS
	{
		# P-256 keys: quick to make, and cheap handshakes for the benchmarks.
		openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
			-nodes -keyout "$d/ca.key" -out "$d/ca.crt" -days 30 \
			-subj "/CN=lakebase-fcgi test CA" \
			-addext "basicConstraints=critical,CA:TRUE" \
			-addext "keyUsage=critical,keyCertSign,cRLSign"
		openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
			-nodes -keyout "$d/server.key" -out "$d/server.csr" -subj "/CN=localhost"
		# verify-full checks the name: localhost and 127.0.0.1 both match.
		openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" \
			-set_serial "0x$(openssl rand -hex 8)" -out "$d/server.crt" -days 30 \
			-extfile <(printf '%s\n' \
				"subjectAltName=DNS:localhost,IP:127.0.0.1" \
				"basicConstraints=critical,CA:FALSE" \
				"keyUsage=critical,digitalSignature" \
				"extendedKeyUsage=serverAuth")
	} 2>>"$STACK_DIR/tls.log" || { cat "$STACK_DIR/tls.log" >&2; stack_die "openssl failed"; }
	rm -f "$d/server.csr"
	# Postgres refuses a key readable by others; the CA key stays root's.
	chmod 0600 "$d/ca.key" "$d/server.key"
	chown postgres: "$d/server.key"
	chmod 0644 "$d/ca.crt" "$d/server.crt"
}

# --- PostgreSQL cluster -------------------------------------------------------------

pg_init() {
	install -d -m 0700 -o postgres -g postgres "$STACK_PGDATA"
	install -d -m 0700 -o postgres -g postgres "$STACK_PGSOCK"
	as_postgres "$STACK_PG_BIN/initdb" -D "$STACK_PGDATA" -U postgres \
		--auth-local=peer --auth-host=password -E UTF8 --locale=C.UTF-8 \
		--no-instructions >"$STACK_DIR/initdb.log" 2>&1 ||
		{ cat "$STACK_DIR/initdb.log" >&2; stack_die "initdb failed"; }
	pg_write_conf
	pg_write_hba
}

pg_write_conf() {
	cat >>"$STACK_PGDATA/postgresql.conf" <<-EOF

	# --- lakebase-fcgi local stack (scripts/stack.sh) ---
	# TCP on loopback only; the unix socket is for bootstrap as postgres.
	listen_addresses = '127.0.0.1'
	port = $STACK_PG_PORT
	unix_socket_directories = '$STACK_PGSOCK'
	unix_socket_permissions = 0700
	max_connections = ${LAKEBASE_PG_MAX_CONNECTIONS:-200}
	ssl = on
	ssl_cert_file = '$STACK_TLS/server.crt'
	ssl_key_file = '$STACK_TLS/server.key'
	ssl_min_protocol_version = 'TLSv1.2'
	password_encryption = 'scram-sha-256'
	# Tests read the log: logins (and refused logins) per role.
	log_connections = on
	log_disconnections = on
	log_line_prefix = '%m [%p] %q%u@%d/%a '
	timezone = 'UTC'
	log_timezone = 'UTC'
	# A throwaway cluster: durability costs time and buys nothing here.
	fsync = off
	synchronous_commit = off
	full_page_writes = off
	EOF
}

# Only TLS + a password over TCP, plus peer for the postgres OS user on the
# private socket to bootstrap roles. "password", not "scram-sha-256": Lakebase
# takes an OAuth token as a plaintext password, over TLS only, and checks it
# itself, so a client never does SCRAM's work on a token. With SCRAM, a
# login here cost the worker ~18 ms of CPU on the ~1.6 KB credential, a cost
# it never pays against Lakebase. The emulator stores each credential's MD5
# verifier (cheap to check, like a token's signature); native roles (the
# admin) keep SCRAM-stored passwords, which "password" checks as well.
pg_write_hba() {
	cat >"$STACK_PGDATA/pg_hba.conf" <<-'EOF'
	# lakebase-fcgi local stack: nothing but these two lines.
	local    all  postgres                 peer
	hostssl  all  all       127.0.0.1/32   password
	EOF
}

# Roles: the admin the emulator uses to set passwords, the service
# principal, two users. carol@example.com deliberately has no role (the
# "role missing" case). The admin password goes over stdin, not argv.
pg_roles() {
	pg_bootstrap_psql -d postgres <<-EOF
	CREATE ROLE $STACK_ADMIN_ROLE SUPERUSER LOGIN PASSWORD '$(secret_get admin.password)';
	CREATE ROLE "$STACK_SP_CLIENT_ID" LOGIN;
	CREATE DATABASE $STACK_DATABASE;
	-- The SP creates (and so owns) schema app: it needs CREATE on the database.
	GRANT CONNECT, CREATE ON DATABASE $STACK_DATABASE TO "$STACK_SP_CLIENT_ID";
	EOF
	local email
	for email in alice@example.com bob@example.com; do
		pg_bootstrap_psql -d "$STACK_DATABASE" -v email="$email" -v local=1 \
			-f "$STACK_REPO/sql/create_user_role.sql"
	done
}

# schema.sql and seed.sql run as the service principal (SET ROLE), so it
# owns everything, as in Lakebase where the app's SP creates its tables.
pg_schema() {
	local f
	for f in schema.sql seed.sql; do
		pg_bootstrap_psql -d "$STACK_DATABASE" \
			-c "SET ROLE \"$STACK_SP_CLIENT_ID\"" -f "$STACK_REPO/sql/$f"
	done
}

# The proof the brief asks for: the admin logs in over TLS, verify-full.
pg_check_tls_login() {
	local ssl
	ssl=$(pg_admin_psql -Atc "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
	[[ $ssl == t ]] || stack_die "admin login did not use TLS"
	stack_log "postgres: TLS (verify-full) + password login as $STACK_ADMIN_ROLE works"
}

# --- env.sh for tests ------------------------------------------------------------------

write_env() {
	local f=$STACK_DIR/env.sh
	(umask 077 && cat >"$f") <<-EOF
	# Generated by scripts/stack.sh start; source it in tests. Secrets inside.
	export LAKEBASE_REPO='$STACK_REPO'
	export LAKEBASE_STACK_DIR='$STACK_DIR'
	export LAKEBASE_BUILD_DIR='$STACK_BUILD'
	export LAKEBASE_PG_PORT='$STACK_PG_PORT'
	export LAKEBASE_EMU_PORT='$STACK_EMU_PORT'
	export LAKEBASE_HTTP_PORT='$STACK_HTTP_PORT'
	export LAKEBASE_URL='$STACK_URL'
	export EMU_URL='$STACK_EMU_URL'
	export LAKEBASE_FCGI_SOCKET='$STACK_FCGI_SOCK'
	export LAKEBASE_CA_CERT='$STACK_CA'
	# Admin (superuser) over TLS: PGPASSWORD="\$PG_ADMIN_PASSWORD" psql "\$PG_ADMIN_CONNINFO"
	export PG_ADMIN_CONNINFO='$(pg_admin_conninfo)'
	export PG_ADMIN_PASSWORD='$(secret_get admin.password)'
	export PG_ADMIN_PASSWORD_VAR=PG_ADMIN_PASSWORD
	# The service principal, as registered in the emulator.
	export LAKEBASE_SP_CLIENT_ID='$STACK_SP_CLIENT_ID'
	export LAKEBASE_SP_SECRET='$(secret_get sp.secret)'
	# The worker's environment, as scripts/stack.sh starts it.
	export DATABRICKS_HOST='$STACK_EMU_URL'
	export DATABRICKS_CLIENT_ID='$STACK_SP_CLIENT_ID'
	export DATABRICKS_CLIENT_SECRET='$(secret_get sp.secret)'
	export LAKEBASE_ENDPOINT='$STACK_ENDPOINT'
	export PGHOST=localhost
	export PGPORT='$STACK_PG_PORT'
	export PGDATABASE='$STACK_DATABASE'
	export PGSSLMODE=verify-full
	export PGSSLROOTCERT='$STACK_CA'
	export PGAPPNAME=lakebase-fcgi
	export LAKEBASE_CREDENTIAL_CACHE_PATH='$STACK_CACHE_FILE'
	# Files.
	export LAKEBASE_WORKER_CONFIG='$STACK_WORKER_CONFIG'
	export LAKEBASE_WORKER_PIDFILE='$STACK_WORKER_PID'
	export LAKEBASE_WORKER_LOG='$STACK_WORKER_LOG'
	export LAKEBASE_EMU_CONFIG='$STACK_EMU_CONFIG'
	export LAKEBASE_EMU_LOG='$STACK_EMU_LOG'
	export LAKEBASE_PG_LOG='$STACK_PG_LOG'
	export LAKEBASE_NGINX_ERROR_LOG='$STACK_NGINX_ERROR_LOG'
	export LAKEBASE_NGINX_ACCESS_LOG='$STACK_NGINX_ACCESS_LOG'
	EOF
}

# --- commands --------------------------------------------------------------------------

# The variables the worker reads: a stray value in the caller's shell must
# not reach the stack's worker (worker_env_defaults only fills unset ones).
clear_worker_env() {
	unset DATABRICKS_HOST DATABRICKS_CLIENT_ID DATABRICKS_CLIENT_SECRET \
		DATABRICKS_TOKEN LAKEBASE_ENDPOINT PGHOST PGPORT PGDATABASE PGUSER \
		PGSSLMODE PGSSLROOTCERT PGAPPNAME PGPASSWORD PGPASSFILE PGSERVICE \
		LAKEBASE_CREDENTIAL_CACHE_PATH
}

any_running() {
	pidfile_alive "$STACK_NGINX_PID" || pidfile_alive "$STACK_WORKER_PID" ||
		pidfile_alive "$STACK_EMU_PID" || pidfile_alive "$STACK_PGDATA/postmaster.pid"
}

# Missing binaries (not built yet) are warnings, so the rest of the stack
# can still be brought up and inspected; `status` shows what is down.
cmd_start() {
	[[ $(id -u) == 0 ]] || stack_die "run as root (postgres runs as user postgres, nginx as www-data)"
	clear_worker_env
	if any_running; then
		stack_log "stack already running: stopping it first"
		cmd_stop
	fi
	ports_free
	state_reset
	secret_new admin.password
	secret_new sp.secret
	write_env
	tls_make
	pg_init
	pg_start
	pg_roles
	pg_schema
	pg_check_tls_login
	emulator_config "$STACK_EMU_CONFIG"
	emulator_start "$STACK_EMU_CONFIG" || [[ $? == 2 ]]
	worker_start "$STACK_WORKER_CONFIG" || [[ $? == 2 ]]
	nginx_config
	nginx_start
	if pidfile_alive "$STACK_WORKER_PID"; then
		stack_wait_healthy 30
		stack_log "ready: $STACK_URL (GET /healthz is 200)"
	else
		stack_warn "no worker running: nginx answers 502 until one is started"
	fi
	stack_log "env for tests: source $STACK_DIR/env.sh"
}

# Front to back, so no request reaches a part that is already gone.
cmd_stop() {
	nginx_stop
	# What the process-model tests start in the worker's place, should one
	# have been interrupted (tests/integration/process_lib.sh, apache_lib.sh).
	stop_pid "$STACK_DIR/apache.pid" 20
	stop_pid "$STACK_DIR/it-supervisor.pid" 30
	worker_stop
	emulator_stop
	pg_stop
	rm -f "$STACK_FCGI_SOCK"
	stack_log "stopped"
}

status_line() {
	local name=$1 pidfile=$2 pid
	if pidfile_alive "$pidfile"; then
		pid=$(read_pid "$pidfile")
		printf '%-10s up (pid %s)\n' "$name" "$pid"
	else
		printf '%-10s down\n' "$name"
		return 1
	fi
}

# Exit 0 only when every part is up.
cmd_status() {
	local rc=0
	status_line postgres "$STACK_PGDATA/postmaster.pid" || rc=1
	status_line emulator "$STACK_EMU_PID" || rc=1
	status_line worker "$STACK_WORKER_PID" || rc=1
	status_line nginx "$STACK_NGINX_PID" || rc=1
	if [[ $rc == 0 ]]; then
		printf '%-10s GET %s/healthz -> %s\n' http "$STACK_URL" "$(stack_healthz)"
	fi
	return "$rc"
}

main() {
	[[ $# == 1 ]] || usage
	case $1 in
	start) cmd_start ;;
	stop) cmd_stop ;;
	status) cmd_status || exit $? ;;
	restart) cmd_stop; cmd_start ;;
	*) usage ;;
	esac
}

main "$@"
