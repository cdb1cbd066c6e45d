# shellcheck shell=bash disable=SC2034 # variables are for the scripts that source this
# tests/stack/lib.sh - the local stack's building blocks, sourced by
# scripts/stack.sh and by the integration tests (which restart single parts,
# e.g. the worker with another config or the emulator with a short lifetime).
#
# Rules this file keeps:
#   * everything listens on 127.0.0.1 (or a unix socket in the state dir);
#   * every long-running process is started in the background with its PID
#     in a pidfile under the state dir, and stopped by that PID: never by
#     name, so a developer's own nginx or postgres is never touched;
#   * every wait is a bounded poll on a condition, never a blind sleep.
#
# Sourcing it defines variables (STACK_*) and functions; it runs nothing.

# --- where things are -------------------------------------------------------

STACK_REPO=${LAKEBASE_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
STACK_DIR=${LAKEBASE_STACK_DIR:-/tmp/lakebase-fcgi-stack}
STACK_BUILD=${LAKEBASE_BUILD_DIR:-$STACK_REPO/build}
STACK_PG_PORT=${LAKEBASE_PG_PORT:-54329}
STACK_EMU_PORT=${LAKEBASE_EMU_PORT:-18089}
STACK_HTTP_PORT=${LAKEBASE_HTTP_PORT:-18080}

STACK_PG_BIN=${LAKEBASE_PG_BIN:-/usr/lib/postgresql/15/bin}
STACK_PGDATA=$STACK_DIR/pgdata
STACK_PGSOCK=$STACK_DIR/pgsock           # bootstrap (peer) socket only
STACK_PG_LOG=$STACK_DIR/postgresql.log
STACK_TLS=$STACK_DIR                  # ca.crt ca.key server.crt server.key
STACK_CA=$STACK_TLS/ca.crt
STACK_SECRETS=$STACK_DIR/secrets         # 0700; each file 0600

STACK_EMU_BIN=$STACK_BUILD/tests/emulator/lakebase-emulator
STACK_EMU_CONFIG=$STACK_DIR/emulator.json
STACK_EMU_PID=$STACK_DIR/emulator.pid
STACK_EMU_LOG=$STACK_DIR/emulator.log
STACK_EMU_URL=http://127.0.0.1:$STACK_EMU_PORT

STACK_WORKER_BIN=$STACK_BUILD/src/lakebase-fcgi
STACK_WORKER_CONFIG=${LAKEBASE_WORKER_CONFIG:-$STACK_REPO/tests/stack/worker.json}
STACK_WORKER_PID=$STACK_DIR/worker.pid
STACK_WORKER_LOG=$STACK_DIR/worker.log
STACK_FCGI_SOCK=$STACK_DIR/fcgi.sock
# The host's shared credential cache (credential_cache.path), in the state
# dir rather than /run/lakebase-fcgi: LAKEBASE_CREDENTIAL_CACHE_PATH.
STACK_CACHE_FILE=$STACK_DIR/credentials.shm

STACK_NGINX_DIR=$STACK_DIR/nginx         # nginx prefix: conf, temp dirs
STACK_NGINX_CONF=$STACK_NGINX_DIR/nginx.conf
STACK_NGINX_PID=$STACK_DIR/nginx.pid
STACK_NGINX_ERROR_LOG=$STACK_DIR/nginx-error.log
STACK_NGINX_ACCESS_LOG=$STACK_DIR/nginx-access.log
STACK_URL=http://127.0.0.1:$STACK_HTTP_PORT

# Identifiers shared by the emulator config, the SQL and the worker env.
STACK_SP_CLIENT_ID=lakebase-sp
STACK_ENDPOINT=projects/demo/branches/main/endpoints/primary
STACK_DATABASE=lakebase
STACK_ADMIN_ROLE=emulator_admin
# The marker that proves a directory is ours before `start` wipes it.
STACK_MARKER=.lakebase-fcgi-stack

# --- messages ---------------------------------------------------------------

stack_log()  { printf '[stack] %s\n' "$*" >&2; }
stack_warn() { printf '[stack] WARNING: %s\n' "$*" >&2; }
stack_die()  { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }

# --- generic process control ------------------------------------------------

# wait_for COND-CMD TIMEOUT_SECONDS
# Polls COND-CMD (a string, eval'ed) every 0.1 s until it succeeds or the
# timeout (fractions allowed) passes. Returns 0 on success, 1 on timeout.
wait_for() {
	local cond=$1 timeout=${2:-10}
	local deadline
	deadline=$(awk -v now="$EPOCHREALTIME" -v t="$timeout" 'BEGIN { printf "%.3f", now + t }')
	while :; do
		if eval "$cond" >/dev/null 2>&1; then return 0; fi
		if awk -v now="$EPOCHREALTIME" -v d="$deadline" 'BEGIN { exit !(now >= d) }'; then
			return 1
		fi
		sleep 0.1
	done
}

# read_pid PIDFILE: prints the PID on the file's first line (postmaster.pid
# has more lines); fails when the file is missing or holds no number.
read_pid() {
	local pid
	[[ -r $1 ]] || return 1
	read -r pid <"$1" || [[ -n ${pid:-} ]] || return 1
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	printf '%s\n' "$pid"
}

# pid_alive PID: true while the process exists and is not a zombie (a zombie
# answers kill -0 but has already exited).
pid_alive() {
	local state
	kill -0 "$1" 2>/dev/null || return 1
	state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
	[[ $state != Z ]]
}

# pid_started_by PID PIDFILE: true when process PID started no later than
# PIDFILE was last written (+2 s). A PID from a stale pidfile that the
# kernel has since given to an unrelated, newer process fails this, so we
# never signal a stranger.
pid_started_by() {
	local pid=$1 pidfile=$2 stat rest ticks btime hz mtime
	local -a fields
	stat=$(<"/proc/$pid/stat") 2>/dev/null || return 1
	rest=${stat##*) }                     # fields after "pid (comm) "
	read -r -a fields <<<"$rest"
	ticks=${fields[19]}                   # field 22: starttime, in clock ticks
	btime=$(awk '$1 == "btime" { print $2 }' /proc/stat)
	hz=$(getconf CLK_TCK)
	mtime=$(stat -c %Y "$pidfile") || return 1
	(( btime + ticks / hz <= mtime + 2 ))
}

# pidfile_alive PIDFILE: true when the PID in the file is a live process
# that the file describes.
pidfile_alive() {
	local pid
	pid=$(read_pid "$1") || return 1
	pid_alive "$pid" && pid_started_by "$pid" "$1"
}

# start_bg NAME PIDFILE LOGFILE CMD [ARGS...]
# Starts CMD detached (own session, reparented to init, so it outlives the
# calling shell and never becomes this shell's zombie), stdout+stderr
# appended to LOGFILE, stdin from /dev/null. The launcher writes its own PID
# and then execs CMD, so the pidfile holds CMD's PID even if setsid forks.
# Environment is inherited: set variables in a subshell around the call.
start_bg() {
	local name=$1 pidfile=$2 logfile=$3
	shift 3
	rm -f "$pidfile"
	# shellcheck disable=SC2016 # $$ and $1 belong to the inner bash
	( setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' start_bg "$pidfile" "$@" \
		>>"$logfile" 2>&1 </dev/null & )
	if ! wait_for "[[ -s '$pidfile' ]]" 5; then
		stack_warn "$name: no pidfile after 5 s ($pidfile)"
		return 1
	fi
	stack_log "$name started (pid $(read_pid "$pidfile")), log: $logfile"
}

# stop_pid PIDFILE [TIMEOUT_SECONDS] [SIGNAL]
# Sends SIGNAL (default TERM) to the PID in PIDFILE, waits up to TIMEOUT
# (default 10 s) for it to exit, then SIGKILLs it. Missing pidfile or dead
# process: nothing to do (so `stop` is safe to repeat).
stop_pid() {
	local pidfile=$1 timeout=${2:-10} sig=${3:-TERM} pid
	pid=$(read_pid "$pidfile") || return 0
	if pid_alive "$pid" && pid_started_by "$pid" "$pidfile"; then
		kill "-$sig" "$pid" 2>/dev/null || true
		if ! wait_for "! pid_alive $pid" "$timeout"; then
			stack_warn "pid $pid ($pidfile) still running after ${timeout}s: SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
			wait_for "! pid_alive $pid" 5 || stack_warn "pid $pid survived SIGKILL"
		fi
	fi
	rm -f "$pidfile"
}

# port_in_use PORT: true when something accepts TCP connections on
# 127.0.0.1:PORT (bash's /dev/tcp; no extra tool needed).
port_in_use() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# --- secrets ------------------------------------------------------------------

# secret_new NAME: creates a random secret file (0600) and prints nothing.
# Hex keeps it safe in JSON, conninfo strings and shell without quoting.
secret_new() {
	install -d -m 0700 "$STACK_SECRETS"
	(umask 077 && openssl rand -hex 24 >"$STACK_SECRETS/$1")
}

# secret_get NAME: prints the secret.
secret_get() {
	cat "$STACK_SECRETS/$1"
}

# --- PostgreSQL -------------------------------------------------------------

# as_postgres CMD...: runs CMD as the postgres OS user (postgres refuses to
# run as root). cd / first: runuser keeps the cwd, which postgres may not be
# allowed to read.
as_postgres() {
	(cd / && runuser -u postgres -- "$@")
}

pg_start() {
	touch "$STACK_PG_LOG"
	chown postgres: "$STACK_PG_LOG"
	# pg_ctl starts the postmaster in its own session; -w waits (bounded by
	# -t) until it accepts connections. Its PID is postmaster.pid's 1st line.
	as_postgres "$STACK_PG_BIN/pg_ctl" -D "$STACK_PGDATA" -l "$STACK_PG_LOG" \
		-w -t 60 -s start
	stack_log "postgres started (pid $(read_pid "$STACK_PGDATA/postmaster.pid")), log: $STACK_PG_LOG"
}

# SIGINT is PostgreSQL's "fast" shutdown: roll back sessions, checkpoint, exit.
pg_stop() {
	stop_pid "$STACK_PGDATA/postmaster.pid" 30 INT
}

# pg_bootstrap_psql [psql args...]: superuser psql over the unix socket with
# peer auth, for bootstrap (roles, schema) before any password exists.
pg_bootstrap_psql() {
	as_postgres psql -X -q -v ON_ERROR_STOP=1 -h "$STACK_PGSOCK" \
		-p "$STACK_PG_PORT" -U postgres "$@"
}

# The admin role's conninfo: TLS with full verification against the test CA,
# like every client of the stack. application_name is explicit so admin
# sessions never count as the worker's (PGAPPNAME may be lakebase-fcgi).
pg_admin_conninfo() {
	printf 'host=localhost port=%s dbname=%s user=%s sslmode=verify-full sslrootcert=%s application_name=lakebase-stack-admin' \
		"$STACK_PG_PORT" "$STACK_DATABASE" "$STACK_ADMIN_ROLE" "$STACK_CA"
}

# pg_admin_psql [psql args...]: psql as emulator_admin (superuser) over TLS.
pg_admin_psql() {
	PGPASSWORD=$(secret_get admin.password) \
		psql -X -v ON_ERROR_STOP=1 "$(pg_admin_conninfo)" "$@"
}

# --- the workspace emulator ---------------------------------------------------

# emulator_config OUT [CREDENTIAL_LIFETIME_S] [OAUTH_TOKEN_LIFETIME_S]
# Writes an emulator config from the template (tests shorten lifetimes).
emulator_config() {
	local out=$1
	local cred=${2:-${LAKEBASE_CREDENTIAL_LIFETIME_S:-3600}}
	local oauth=${3:-${LAKEBASE_OAUTH_TOKEN_LIFETIME_S:-3600}}
	(umask 077 && sed \
		-e "s|@EMU_PORT@|$STACK_EMU_PORT|g" \
		-e "s|@PG_PORT@|$STACK_PG_PORT|g" \
		-e "s|@PG_DATABASE@|$STACK_DATABASE|g" \
		-e "s|@PG_ADMIN_ROLE@|$STACK_ADMIN_ROLE|g" \
		-e "s|@CA_CERT@|$STACK_CA|g" \
		-e "s|@CREDENTIAL_LIFETIME_S@|$cred|g" \
		-e "s|@OAUTH_TOKEN_LIFETIME_S@|$oauth|g" \
		-e "s|@ENDPOINT@|$STACK_ENDPOINT|g" \
		-e "s|@SP_CLIENT_ID@|$STACK_SP_CLIENT_ID|g" \
		-e "s|@SP_SECRET@|$(secret_get sp.secret)|g" \
		"$STACK_REPO/tests/stack/emulator.json.in" >"$out")
}

# emulator_start [CONFIG]: starts the emulator (default config: the stack's)
# and waits until its counters endpoint answers. Returns 2 when the binary
# has not been built.
emulator_start() {
	local config=${1:-$STACK_EMU_CONFIG}
	if [[ ! -x $STACK_EMU_BIN ]]; then
		stack_warn "emulator binary missing: $STACK_EMU_BIN (run scripts/build.sh)"
		return 2
	fi
	# The admin password reaches the emulator through the environment only,
	# never its command line (visible to every user in ps).
	( export PGPASSWORD
	  PGPASSWORD=$(secret_get admin.password)
	  start_bg emulator "$STACK_EMU_PID" "$STACK_EMU_LOG" \
		"$STACK_EMU_BIN" -c "$config" --pidfile "$STACK_EMU_PID" )
	if ! wait_for "curl -sf --max-time 1 '$STACK_EMU_URL/_emulator/counters'" 15; then
		stack_warn "emulator not answering on $STACK_EMU_URL; last log lines:"
		tail -n 20 "$STACK_EMU_LOG" >&2 || true
		return 1
	fi
}

emulator_stop() {
	stop_pid "$STACK_EMU_PID" 10
}

# --- the lakebase-fcgi worker -------------------------------------------------

# worker_env_defaults: the worker's environment for the stack. Values
# already in the environment win, so a test can run e.g.
#   DATABRICKS_TOKEN=... worker_start cfg.json
# scripts/stack.sh clears them first so a stray shell variable cannot leak in.
worker_env_defaults() {
	export DATABRICKS_HOST=${DATABRICKS_HOST:-$STACK_EMU_URL}
	export DATABRICKS_CLIENT_ID=${DATABRICKS_CLIENT_ID:-$STACK_SP_CLIENT_ID}
	export DATABRICKS_CLIENT_SECRET=${DATABRICKS_CLIENT_SECRET:-$(secret_get sp.secret)}
	export LAKEBASE_ENDPOINT=${LAKEBASE_ENDPOINT:-$STACK_ENDPOINT}
	export PGHOST=${PGHOST:-localhost}
	export PGPORT=${PGPORT:-$STACK_PG_PORT}
	export PGDATABASE=${PGDATABASE:-$STACK_DATABASE}
	export PGSSLMODE=${PGSSLMODE:-verify-full}
	export PGSSLROOTCERT=${PGSSLROOTCERT:-$STACK_CA}
	export PGAPPNAME=${PGAPPNAME:-lakebase-fcgi}
	export LAKEBASE_CREDENTIAL_CACHE_PATH=${LAKEBASE_CREDENTIAL_CACHE_PATH:-$STACK_CACHE_FILE}
	# A password from the caller's shell must never stand in for a credential.
	unset PGPASSWORD PGPASSFILE
}

# worker_start [CONFIG] [EXTRA ARGS...]
# Starts lakebase-fcgi on the stack's unix socket; ready when the socket
# exists (and, when nginx runs, /healthz through nginx answers 200).
# Env: LAKEBASE_WORKER_THREADS (16), WORKER_EXTRA_ARGS (word-split).
# Returns 2 when the binary has not been built.
worker_start() {
	local config=${1:-$STACK_WORKER_CONFIG}
	[[ $# -gt 0 ]] && shift
	# Absolute: the worker may re-read it (SIGHUP) from another directory.
	config=$(realpath -- "$config")
	local -a extra
	read -r -a extra <<<"${WORKER_EXTRA_ARGS:-}"
	if [[ ! -x $STACK_WORKER_BIN ]]; then
		stack_warn "worker binary missing: $STACK_WORKER_BIN (run scripts/build.sh)"
		return 2
	fi
	# A SIGKILLed worker leaves its socket file behind; nobody else owns it.
	pidfile_alive "$STACK_WORKER_PID" && stack_die "worker already running"
	rm -f "$STACK_FCGI_SOCK"
	# A new worker starts with an empty credential cache, as tests expect
	# (the segment outlives processes by design; no other process uses it).
	rm -f "${LAKEBASE_CREDENTIAL_CACHE_PATH:-$STACK_CACHE_FILE}"
	( worker_env_defaults
	  start_bg worker "$STACK_WORKER_PID" "$STACK_WORKER_LOG" \
		"$STACK_WORKER_BIN" -c "$config" --listen "unix:$STACK_FCGI_SOCK" \
		--threads "${LAKEBASE_WORKER_THREADS:-16}" --socket-mode 0666 \
		"${extra[@]}" "$@" )
	worker_wait_ready
}

worker_wait_ready() {
	if ! wait_for "[[ -S '$STACK_FCGI_SOCK' ]] || ! pidfile_alive '$STACK_WORKER_PID'" 15 ||
		! pidfile_alive "$STACK_WORKER_PID"; then
		stack_warn "worker did not come up; last log lines:"
		tail -n 20 "$STACK_WORKER_LOG" >&2 || true
		return 1
	fi
	if pidfile_alive "$STACK_NGINX_PID"; then
		stack_wait_healthy 15 || return 1
	fi
}

# Generous: a sanitizer build starts slowly.
worker_stop() {
	stop_pid "$STACK_WORKER_PID" "${LAKEBASE_WORKER_STOP_TIMEOUT:-15}"
}

# --- nginx --------------------------------------------------------------------

# nginx_config: the full nginx.conf for the stack. The server block is the
# shipped nginx/lakebase-fcgi.conf with its socket, listen address and
# params path replaced, so the tests exercise the configuration we ship.
nginx_config() {
	local site=$STACK_NGINX_DIR/lakebase-fcgi.conf
	install -d -m 0755 "$STACK_NGINX_DIR"
	sed -e "s|@STATE@|$STACK_DIR|g" -e "s|@NGINX_DIR@|$STACK_NGINX_DIR|g" \
		-e "s|@ERROR_LOG@|$STACK_NGINX_ERROR_LOG|g" \
		-e "s|@ACCESS_LOG@|$STACK_NGINX_ACCESS_LOG|g" \
		"$STACK_REPO/tests/stack/nginx.conf.in" >"$STACK_NGINX_CONF"
	sed -e "s|unix:/run/lakebase-fcgi/lakebase-fcgi.sock|unix:$STACK_FCGI_SOCK|" \
		-e "s|listen 127.0.0.1:8080;|listen 127.0.0.1:$STACK_HTTP_PORT;|" \
		-e "s|/etc/nginx/fastcgi_lakebase_params|$STACK_REPO/nginx/fastcgi_lakebase_params|" \
		"$STACK_REPO/nginx/lakebase-fcgi.conf" >"$site"
	# If the shipped file changes shape, fail loudly rather than test a
	# config that points somewhere else.
	if ! grep -q "unix:$STACK_FCGI_SOCK" "$site" ||
		! grep -q "listen 127.0.0.1:$STACK_HTTP_PORT;" "$site" ||
		! grep -q "$STACK_REPO/nginx/fastcgi_lakebase_params" "$site"; then
		stack_die "nginx/lakebase-fcgi.conf no longer has the expected socket/listen/include lines"
	fi
}

# nginx -e: the early error log (before the config is read) goes to our
# file, not /var/log/nginx. The pid directive comes from -g so the config
# stays free of state paths other than its own.
_nginx() {
	/usr/sbin/nginx -p "$STACK_NGINX_DIR/" -c "$STACK_NGINX_CONF" \
		-e "$STACK_NGINX_ERROR_LOG" -g "pid $STACK_NGINX_PID;" "$@"
}

# nginx daemonizes itself (master in its own session); we stop it by the
# master's PID from its pidfile.
nginx_start() {
	_nginx -t -q || stack_die "nginx config test failed (see above)"
	_nginx
	wait_for "pidfile_alive '$STACK_NGINX_PID' && port_in_use $STACK_HTTP_PORT" 10 ||
		stack_die "nginx did not start; see $STACK_NGINX_ERROR_LOG"
	stack_log "nginx started (pid $(read_pid "$STACK_NGINX_PID")) on $STACK_URL"
}

# SIGTERM: nginx's fast shutdown.
nginx_stop() {
	stop_pid "$STACK_NGINX_PID" 10
}

# stack_healthz: the HTTP status of GET /healthz through nginx.
stack_healthz() {
	curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$STACK_URL/healthz" || true
}

stack_wait_healthy() {
	if ! wait_for "[[ \$(stack_healthz) == 200 ]]" "${1:-15}"; then
		stack_warn "GET $STACK_URL/healthz is not 200 (got $(stack_healthz)); worker log tail:"
		tail -n 20 "$STACK_WORKER_LOG" >&2 || true
		return 1
	fi
}
