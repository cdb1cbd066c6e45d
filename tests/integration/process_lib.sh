# shellcheck shell=bash disable=SC2034 # variables are for the scripts that source this
# tests/integration/process_lib.sh - helpers for the process-model tests
# (test_process_model.sh, test_apache.sh): the supervisor in place of the
# stack's worker on the stack's socket (so nginx reaches it), bounded load
# loops, and putting the normal stack back. Source it after lib.sh and
# user_lib.sh.

PM_BIN=$STACK_WORKER_BIN
SUP_PIDFILE=$STACK_DIR/it-supervisor.pid
SUP_RCFILE=$STACK_DIR/it-supervisor.rc
SUP_PID=
PM_CACHE_FILE=${LAKEBASE_CREDENTIAL_CACHE_PATH:-${STACK_CACHE_FILE:-$STACK_DIR/credentials.shm}}
_PM_STACK_CHANGED=

# --- the supervisor ---------------------------------------------------------------------

# sup_launch ARGS...: runs lakebase-fcgi ARGS with the stack's worker
# environment, detached, its log appended to the stack's worker log. A
# small launcher waits for it, so its exit status lands in SUP_RCFILE and
# its pid in SUP_PIDFILE (it is the launcher's child, not ours).
sup_launch() {
	sup_launch_cmd "$PM_BIN" "$@"
}

# sup_launch_cmd CMD...: the same for any command that becomes (execs)
# lakebase-fcgi, e.g. a socket-activation stand-in.
sup_launch_cmd() {
	rm -f "$SUP_RCFILE" "$SUP_PIDFILE"
	# shellcheck disable=SC2016 # $1.. belong to the launcher's bash
	( worker_env_defaults
	  setsid bash -c 'pidf=$1 rcf=$2; shift 2; "$@" & echo $! >"$pidf"; wait $!; echo $? >"$rcf"' \
		launcher "$SUP_PIDFILE" "$SUP_RCFILE" "$@" >>"$STACK_WORKER_LOG" 2>&1 </dev/null & )
	wait_for "[[ -s '$SUP_PIDFILE' ]]" 5 || return 1
	SUP_PID=$(read_pid "$SUP_PIDFILE")
}

# sup_start CONFIG [ARGS...]: the stack's worker replaced by a supervisor
# (--listen on the stack's socket, plus ARGS); returns once /healthz
# answers 200 through nginx. The credential cache starts empty.
sup_start() {
	local config=$1
	shift
	_PM_STACK_CHANGED=1
	worker_stop
	sup_stop
	rm -f "$STACK_FCGI_SOCK" "$PM_CACHE_FILE"
	sup_launch -c "$config" --listen "unix:$STACK_FCGI_SOCK" --socket-mode 0666 "$@" || return 1
	if ! wait_for "[[ -S '$STACK_FCGI_SOCK' ]] || [[ -s '$SUP_RCFILE' ]]" 15 || [[ -s $SUP_RCFILE ]]; then
		echo "       supervisor did not start (exit status $(cat "$SUP_RCFILE" 2>/dev/null)); log tail:"
		tail -n 5 "$STACK_WORKER_LOG" | sed 's/^/       /'
		return 1
	fi
	stack_wait_healthy 15
}

# sup_alive: the supervisor still runs.
sup_alive() {
	[[ -n $SUP_PID ]] && pid_alive "$SUP_PID" && [[ ! -s $SUP_RCFILE ]]
}

# sup_wait_exit SECONDS: waits for the supervisor's exit; prints its status.
sup_wait_exit() {
	wait_for "[[ -s '$SUP_RCFILE' ]]" "$1" || return 1
	cat "$SUP_RCFILE"
}

# sup_stop: SIGTERM by pid, bounded wait (then a kill, reported by stop_pid).
sup_stop() {
	if [[ -s $SUP_PIDFILE ]] && [[ ! -s $SUP_RCFILE ]]; then
		stop_pid "$SUP_PIDFILE" 30
		wait_for "[[ -s '$SUP_RCFILE' ]]" 5
	fi
	SUP_PID=
}

# sup_workers: the supervisor's worker pids (its children), sorted.
sup_workers() {
	[[ -n $SUP_PID ]] || return 0
	pgrep -P "$SUP_PID" 2>/dev/null | sort -n
}

# sup_count_workers: how many.
sup_count_workers() {
	sup_workers | grep -c .
}

# pm_restore: the stack's normal worker back in place (after sup_start or
# anything else that replaced it).
pm_restore() {
	sup_stop
	if [[ -n $_PM_STACK_CHANGED ]]; then
		_PM_STACK_CHANGED=
		worker_stop
		worker_start 2>&1 | sed 's/^/       /'
	fi
}

# --- load ---------------------------------------------------------------------------------

LOAD_PIDS=()
LOAD_DIR=

# load_start SECONDS PARALLEL URL [curl args...]: PARALLEL loops of
# sequential requests for SECONDS (each bounded by --max-time 20); every
# status goes to a file per loop. One load at a time.
load_start() {
	local secs=$1 n=$2 url=$3 i
	shift 3
	LOAD_DIR=$(mktemp -d "$IT_TMP/load.XXXXXX")
	LOAD_PIDS=()
	for ((i = 0; i < n; i++)); do
		( end=$((SECONDS + secs))
		  while ((SECONDS < end)); do
			curl -s -o /dev/null -w '%{http_code}\n' --max-time 20 "$@" "$url" || true
		  done >"$LOAD_DIR/$i" ) &
		LOAD_PIDS+=($!)
	done
}

# load_count: statuses recorded so far.
load_count() {
	cat "$LOAD_DIR"/[0-9] "$LOAD_DIR"/[0-9][0-9] 2>/dev/null | grep -c .
}

# load_wait_for N SECONDS: until the load has made N requests.
load_wait_for() {
	wait_for "(( \$(load_count) >= $1 ))" "$2"
}

# load_wait: waits for the loops; sets LOAD_TOTAL, LOAD_FAILED (anything
# but 200) and LOAD_CODES ("502:3 ..." for the failures).
load_wait() {
	local pid
	for pid in "${LOAD_PIDS[@]}"; do wait "$pid"; done
	LOAD_PIDS=()
	LOAD_TOTAL=$(load_count)
	LOAD_FAILED=$(cat "$LOAD_DIR"/[0-9] "$LOAD_DIR"/[0-9][0-9] 2>/dev/null | grep -vc '^200$')
	LOAD_CODES=$(cat "$LOAD_DIR"/[0-9] "$LOAD_DIR"/[0-9][0-9] 2>/dev/null | grep -v '^200$' | sort | uniq -c |
		awk '{ printf "%s%s:%s", sep, $2, $1; sep = " " }')
}

# load_mark: remembers how many requests each loop has made so far.
load_mark() {
	local f
	for f in "$LOAD_DIR"/[0-9]*; do
		grep -c . "$f" >"$f.mark"
	done
}

# load_since_mark: sets LOAD_AFTER and LOAD_AFTER_FAILED, the requests
# made after load_mark and the ones of them that did not get 200.
load_since_mark() {
	local f n
	LOAD_AFTER=0
	LOAD_AFTER_FAILED=0
	for f in "$LOAD_DIR"/[0-9]*; do
		[[ $f == *.mark ]] && continue
		n=$(cat "$f.mark" 2>/dev/null || echo 0)
		LOAD_AFTER=$((LOAD_AFTER + $(tail -n +"$((n + 1))" "$f" | grep -c .)))
		LOAD_AFTER_FAILED=$((LOAD_AFTER_FAILED + $(tail -n +"$((n + 1))" "$f" | grep -vc '^200$')))
	done
}

# --- slow requests ------------------------------------------------------------------------

SLOW_ROUTE='{ "method": "GET", "path": "/api/it-sleep", "auth": "service-principal",
  "sql": "SELECT true AS slept FROM pg_catalog.pg_sleep(:s)",
  "params": { "s": { "in": "query", "type": "numeric", "required": true, "min": 0, "max": 30 } },
  "result": "one", "statement_timeout_ms": 30000 }'

# pm_config OUT [JQ]: the stack's worker config plus /api/it-sleep, with
# the jq program JQ applied.
pm_config() {
	worker_config_derive "$1" ".routes += [$SLOW_ROUTE] | ${2:-.}"
}

# slow_start NAME COUNT SECONDS: COUNT requests to /api/it-sleep in the
# background, each status written to $IT_TMP/slow-NAME.<i>.
SLOW_PIDS=()
slow_start() {
	local name=$1 n=$2 s=$3 i
	SLOW_PIDS=()
	for ((i = 0; i < n; i++)); do
		curl -s -o /dev/null -w '%{http_code}\n' --max-time 40 "$LAKEBASE_URL/api/it-sleep?s=$s" \
			>"$IT_TMP/slow-$name.$i" &
		SLOW_PIDS+=($!)
	done
}

# slow_wait NAME: waits (not in a $(...) subshell: the requests are this
# shell's children); SLOW_RESULT gets the statuses, sorted, space-separated.
slow_wait() {
	local pid
	for pid in "${SLOW_PIDS[@]}"; do wait "$pid"; done
	SLOW_PIDS=()
	SLOW_RESULT=$(cat "$IT_TMP/slow-$1".* | sort | paste -sd ' ')
}

# pg_sleeping [APP]: queries of the worker now sleeping in pg_sleep.
pg_sleeping() {
	pg_admin_sql "SELECT count(*) FROM pg_stat_activity WHERE application_name = '${1:-${PGAPPNAME:-lakebase-fcgi}}'
		AND state = 'active' AND query LIKE '%pg_sleep%'"
}

# log_lines_since MARK PATTERN [FILE]: lines of the worker log (or FILE)
# written after MARK that match the ERE.
log_lines_since() {
	log_since "${3:-$STACK_WORKER_LOG}" "$1" | grep -E -- "$2"
}
