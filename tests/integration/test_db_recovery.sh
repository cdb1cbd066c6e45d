#!/usr/bin/env bash
# test_db_recovery.sh - the service principal's pool against a real
# PostgreSQL: connections terminated by the server are replaced without a
# failed request, a connection cut under a statement retries a read but
# not a write, one ended by an administrator retries a write too, the
# pool never opens more than its max under a burst, idle connections are
# closed after the idle timeout, and PostgreSQL down is a 503 that heals
# by itself.
#
# Needs the stack (scripts/stack.sh start). Restarts the worker (and once
# PostgreSQL); leaves the normal worker running.
set -uo pipefail
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"

POOL_MAX=10   # the SP pool's default "max"; tests/stack/worker.json keeps it

restore_worker() {
	pidfile_alive "$STACK_PGDATA/postmaster.pid" || pg_start >/dev/null 2>&1
	worker_restart >/dev/null 2>&1 || echo "WARNING: could not restart the normal worker" >&2
}
at_exit restore_worker

# parallel_get N PATH: N concurrent GETs of PATH through nginx; prints one
# status per line. Bounded by curl's --max-time.
parallel_get() {
	local n=$1 path=$2 i
	for ((i = 0; i < n; i++)); do
		curl -s -o /dev/null -w '%{http_code}\n' --max-time 30 "$LAKEBASE_URL$path" &
	done
	wait
}

# expect_all_200 STATUSES LABEL: every line of STATUSES is 200.
expect_all_200() {
	local others
	others=$(grep -vc '^200$' <<<"$1")
	expect_eq "$others" 0 "$2: all 200 (got: $(sort <<<"$1" | uniq -c | tr -s ' \n' ' '))"
}

# --- connections ended by the server ----------------------------------------------------

# Several connections held at once (a slow query in parallel), then every
# one of them terminated by an administrator: the next requests, one at a
# time and then in parallel, all succeed on new connections.
test_terminated_connections_are_replaced_without_a_failed_request() {
	local warm gone statuses i
	worker_restart || return
	expect_all_200 "$(parallel_get 6 '/api/slow?s=0.2')" "warm-up" || return
	warm=$(pg_count_worker_conns)
	(( warm >= 2 ))
	expect_eq "$?" 0 "several pooled connections before ($warm)" || return
	gone=$(pg_terminate_worker_conns)
	expect_eq "$gone" "$warm" "terminated every worker connection"
	wait_for "[[ \$(pg_count_worker_conns) == 0 ]]" 5
	expect_eq "$?" 0 "PostgreSQL shows none of them left"
	statuses=$(for ((i = 0; i < warm + 2; i++)); do
		curl -s -o /dev/null -w '%{http_code}\n' --max-time 30 "$LAKEBASE_URL/api/todos?limit=1"
	done)
	expect_all_200 "$statuses" "$((warm + 2)) requests one at a time"
	pg_terminate_worker_conns >/dev/null
	expect_all_200 "$(parallel_get 10 '/api/slow?s=0.05')" "10 parallel requests after a second termination"
	(( $(pg_count_worker_conns) >= 1 ))
	expect_eq "$?" 0 "new connections are open"
}

# --- the pool's bound -------------------------------------------------------------------

# 50 requests at once, each holding a connection for 0.2 s, against 16
# worker threads: PostgreSQL, sampled all along, never sees more than the
# pool's max of the worker's connections, and every request succeeds.
test_burst_of_50_never_exceeds_pool_max() {
	local samples=$IT_TMP/conn-samples stop=$IT_TMP/stop-sampling sampler statuses max
	worker_restart || return
	: >"$samples"
	# One admin session sampling every ~10 ms until told to stop.
	( while [[ ! -e $stop ]]; do
		echo "SELECT count(*) FROM pg_stat_activity WHERE application_name = '${PGAPPNAME:-lakebase-fcgi}';"
		sleep 0.01
	  done | pg_admin_psql -At >>"$samples" ) &
	sampler=$!
	statuses=$(parallel_get 50 '/api/slow?s=0.2')
	touch "$stop"
	wait "$sampler"
	max=$(sort -n "$samples" | tail -n 1)
	printf '       %d samples of pg_stat_activity, at most %s worker connections\n' "$(wc -l <"$samples")" "$max"
	expect_all_200 "$statuses" "50 parallel requests"
	(( max <= POOL_MAX ))
	expect_eq "$?" 0 "at most $POOL_MAX connections (saw $max)"
	(( max >= 2 ))
	expect_eq "$?" 0 "the burst really ran in parallel (saw $max connections)"
	(( $(pg_count_worker_conns) <= POOL_MAX ))
	expect_eq "$?" 0 "at most $POOL_MAX connections after the burst"
}

# --- idle close -------------------------------------------------------------------------

test_idle_connections_closed_after_idle_timeout() {
	local cfg=$STACK_DIR/it-db-recovery-idle.json n t0 waited
	worker_config_derive "$cfg" '.pool.idle_timeout_ms = 1500' || return
	worker_restart "$cfg" || return
	expect_all_200 "$(parallel_get 4 '/api/slow?s=0.2')" "4 parallel requests" || return
	t0=$EPOCHREALTIME
	n=$(pg_count_worker_conns)
	(( n >= 1 ))
	expect_eq "$?" 0 "connections open right after the requests ($n)" || return
	wait_for "[[ \$(pg_count_worker_conns) == 0 ]]" 10
	expect_eq "$?" 0 "all closed within 10 s (still open: $(pg_count_worker_conns))" || return
	waited=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
	printf '       %d idle connection(s) closed after %ss\n' "$n" "$waited"
	# Closed because idle, not at once: the timeout is 1.5 s.
	awk -v w="$waited" 'BEGIN { exit !(w >= 1.0) }'
	expect_eq "$?" 0 "not closed before the idle timeout (${waited}s)"
	# And the pool opens a new one when needed.
	http GET /api/todos
	expect_status 200
}

# --- a connection lost under its statement ---------------------------------------------------

RELAY_PID=$STACK_DIR/it-relay.pid
SLOW_TITLE='it-db-recovery: interrupted write'
# The worker's backends running one of the 1 s routes below.
SLEEPING="application_name = '${PGAPPNAME:-lakebase-fcgi}' AND state = 'active'
	AND query LIKE '%pg_sleep(1)%'"

stop_relay() {
	stop_pid "$RELAY_PID" 5 KILL
}

slow_rows() {
	pg_admin_sql "SELECT count(*) FROM app.todos WHERE title = '$SLOW_TITLE'"
}

delete_slow_rows() {
	pg_admin_sql "DELETE FROM app.todos WHERE title = '$SLOW_TITLE'" >/dev/null
}

sleeping_backends() {
	pg_admin_sql "SELECT count(*) FROM pg_stat_activity WHERE $SLEEPING"
}

terminate_sleeping_backends() {
	pg_admin_sql "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE $SLEEPING" >/dev/null
}

# slow_routes_config CONFIG: the worker's config with a 1 s INSERT
# (POST /api/it-slow-insert, title in the body) and a 1 s read (GET
# /api/it-slow-read); no row of SLOW_TITLE left from before.
slow_routes_config() {
	at_exit delete_slow_rows
	delete_slow_rows
	worker_config_derive "$1" '.routes += [
		{ method: "POST", path: "/api/it-slow-insert", auth: "service-principal",
		  sql: "INSERT INTO app.todos (title) SELECT :title FROM pg_catalog.pg_sleep(1) RETURNING id",
		  params: { title: { in: "body", type: "text", required: true } }, result: "one" },
		{ method: "GET", path: "/api/it-slow-read", auth: "service-principal",
		  sql: "SELECT true AS slept FROM pg_catalog.pg_sleep(1)", result: "one" }]'
}

# relay_port: a free loopback port for tcp_relay.pl, below the kernel's
# ephemeral range (32768 and up here), where an outgoing connection of the
# worker's or PostgreSQL's may hold a port that nothing listens on.
relay_port() {
	local port
	for ((port = 18090; port < 18100; port++)); do
		port_in_use "$port" || { echo "$port"; return 0; }
	done
	return 1
}

# interrupt_statement INTERRUPT METHOD PATH REQUEST_ID [BODY]: on the
# running worker, one request leaves a connection idle in the pool; then
# METHOD PATH (a 1 s statement) runs on it, and INTERRUPT (a command) runs
# while the statement does. Sets STATUS to the request's HTTP status.
interrupt_statement() {
	local interrupt=$1 method=$2 path=$3 rid=$4 body=${5:-} out=$IT_TMP/interrupted.status curl_pid
	local -a data=()
	[[ -n $body ]] && data=(-H 'Content-Type: application/json' --data "$body")
	STATUS=
	http GET '/api/todos?limit=1'
	expect_status 200 || return
	curl -s -o /dev/null -w '%{http_code}' --max-time 30 -X "$method" -H "X-Request-Id: $rid" \
		"${data[@]}" "$LAKEBASE_URL$path" >"$out" &
	curl_pid=$!
	wait_for "[[ \$(sleeping_backends) == 1 ]]" 5
	expect_eq "$?" 0 "the statement is running" || { wait "$curl_pid"; return 1; }
	$interrupt
	wait "$curl_pid"
	STATUS=$(cat "$out")
	# A backend whose client is gone notices only when it answers: the
	# next tests count the worker's connections.
	wait_for "[[ \$(sleeping_backends) == 0 ]]" 5
	expect_eq "$?" 0 "the interrupted statement's backend has ended"
}

# cut_under_statement CONFIG PORT METHOD PATH REQUEST_ID [BODY]: as
# interrupt_statement, with the worker reaching PostgreSQL through
# tcp_relay.pl on PORT, and the relay killed under the statement.
cut_under_statement() {
	local cfg=$1 port=$2
	shift 2
	start_bg relay "$RELAY_PID" "$STACK_DIR/it-relay.log" \
		perl "$(dirname "${BASH_SOURCE[0]}")/tcp_relay.pl" "$port" "$STACK_PG_PORT" >/dev/null
	wait_for "port_in_use $port" 5
	expect_eq "$?" 0 "the relay listens on $port" || return
	PGPORT=$port worker_restart "$cfg" >/dev/null
	expect_eq "$?" 0 "the worker starts, through the relay" || return
	interrupt_statement stop_relay "$@"
}

# retry_logged REQUEST_ID: the worker logged a retry for that request. The
# log outlives test runs: request ids here end in this run's PID.
retry_logged() {
	grep -F 'retrying on a fresh connection' "$STACK_WORKER_LOG" | grep -qE "request_id=$1( |\$)"
}

# The worker's connection to PostgreSQL cut while a statement runs: no
# answer, no SQLSTATE, as when a network fails. PostgreSQL commits what it
# was given (the client's loss shows only when it sends the answer), so a
# write is not run again: 503, no retry logged, and its row exists once.
# A read is run again on a fresh connection (logged; with the relay gone
# that connection fails too).
test_lost_connection_retries_reads_not_writes() {
	local cfg=$STACK_DIR/it-db-recovery-slow.json port
	port=$(relay_port) || { expect_eq no-port port "a free port for the relay"; return; }
	at_exit stop_relay
	slow_routes_config "$cfg" || return
	cut_under_statement "$cfg" "$port" POST /api/it-slow-insert it-cut-post-$$ "{\"title\":\"$SLOW_TITLE\"}" ||
		return
	expect_eq "$STATUS" 503 "the write whose connection was cut"
	wait_for "grep -F 'request_id=it-cut-post-$$ ' '$STACK_WORKER_LOG' | grep -q 'status=503'" 5
	retry_logged it-cut-post-$$
	expect_eq "$?" 1 "no retry logged for the write"
	wait_for "[[ \$(slow_rows) == 1 ]]" 5
	expect_eq "$?" 0 "its row committed once (rows: $(slow_rows))"
	cut_under_statement "$cfg" "$port" GET /api/it-slow-read it-cut-get-$$ || return
	wait_for "retry_logged it-cut-get-$$" 5
	expect_eq "$?" 0 "the read is retried on a fresh connection (answered $STATUS)"
}

# An administrator ends the session while a write runs (pg_terminate_backend):
# PostgreSQL answers 57P01 in place of the statement's answer and rolls it
# back, so the write runs again on a fresh connection: 201, a retry
# logged, and its row exists once.
test_terminated_write_runs_again() {
	local cfg=$STACK_DIR/it-db-recovery-slow.json
	slow_routes_config "$cfg" || return
	worker_restart "$cfg" >/dev/null
	expect_eq "$?" 0 "the worker starts" || return
	interrupt_statement terminate_sleeping_backends POST /api/it-slow-insert it-term-post-$$ \
		"{\"title\":\"$SLOW_TITLE\"}" || return
	expect_eq "$STATUS" 201 "the write, run again"
	retry_logged it-term-post-$$
	expect_eq "$?" 0 "a retry logged for it"
	expect_eq "$(slow_rows)" 1 "its row exists once"
}

# --- PostgreSQL down ----------------------------------------------------------------------

test_postgres_down_is_503_then_recovers_without_worker_restart() {
	local pid
	worker_restart || return
	http GET /api/todos
	expect_status 200 || return
	pid=$(read_pid "$STACK_WORKER_PID")
	pg_stop || return
	http GET /api/todos
	expect_error 503 unavailable
	http GET /readyz
	expect_error 503 unavailable
	pg_start >/dev/null || return
	http GET /api/todos
	expect_status 200
	http GET /readyz
	expect_status 200
	expect_eq "$(read_pid "$STACK_WORKER_PID")" "$pid" "the same worker process"
}

run_test "connections terminated by the server: next requests all 200" \
	test_terminated_connections_are_replaced_without_a_failed_request
run_test "connection cut under a statement: the write is 503 and not run again, the read is retried" \
	test_lost_connection_retries_reads_not_writes
run_test "session ended by an administrator under a write (57P01): run again, 201, one row" \
	test_terminated_write_runs_again
run_test "50 parallel requests: all 200, never more than $POOL_MAX connections" \
	test_burst_of_50_never_exceeds_pool_max
run_test "idle connections closed after pool.idle_timeout_ms (1.5 s)" \
	test_idle_connections_closed_after_idle_timeout
run_test "PostgreSQL down: 503 unavailable; back: 200 from the same worker" \
	test_postgres_down_is_503_then_recovers_without_worker_restart
summary
