#!/usr/bin/env bash
# test_process_model.sh - the ways lakebase-fcgi runs, through the stack's
# nginx: the supervisor (workers replaced after a kill -9, crash-loop
# backoff, SIGHUP reloads under load, a refused reload, SIGTERM under load
# with nothing left in PostgreSQL, the grace period, SIGQUIT, SIGUSR1 log
# reopening, max_requests recycling, --daemon and --pidfile, dropping
# privileges, socket owner/mode), the mount prefix, spawn-fcgi (managed
# mode) and CGI mode. Needs the running stack (scripts/stack.sh start);
# puts the normal worker back at the end.
set -uo pipefail
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/user_lib.sh
source "$(dirname "$0")/user_lib.sh"
# shellcheck source=tests/integration/process_lib.sh
source "$(dirname "$0")/process_lib.sh"

at_exit 'pm_restore >/dev/null 2>&1'
ALICE=alice@example.com
THREADS=4
CFG=$STACK_DIR/it-pm.json
pm_config "$CFG"

# --- the supervisor ---------------------------------------------------------------------

test_supervisor_starts_workers() {
	local mark n
	mark=$(log_mark "$STACK_WORKER_LOG")
	sup_start "$CFG" --workers 2 --threads "$THREADS" || return 1
	expect_eq "$(sup_count_workers)" 2 "two worker processes (children of the supervisor)"
	http GET '/api/todos?limit=1'
	expect_status 200
	as_user GET /api/my/todos "$ALICE" alice-token-1
	expect_status 200
	expect_body "$SEED_ALICE_JSON"
	n=$(log_lines_since "$mark" "msg=serving threads=$THREADS role=worker" | grep -c .)
	expect_eq "$n" 2 "each worker logged that it serves with $THREADS threads"
	log_lines_since "$mark" 'msg="supervisor ready: every worker serves" workers=2' >/dev/null
	expect_eq "$?" 0 "the supervisor logged that every worker serves"
}
run_test "supervisor: --workers 2 pre-forks two workers sharing the socket, served through nginx" \
	test_supervisor_starts_workers

# One thread per worker, so every race for a connection is between the
# processes: a connection must wake one worker, not both (the other then
# finding nothing to accept), and connections must go round the workers.
test_connection_wakes_one_worker() {
	local cfg=$STACK_DIR/it-pm-accept.json mark i pid served lost
	pm_config "$cfg" '.log_level = "debug" | .access_log = true'
	sup_start "$cfg" --workers 2 --threads 1 || return 1
	mark=$(log_mark "$STACK_WORKER_LOG")
	for ((i = 0; i < 20; i++)); do
		http GET '/api/todos?limit=1'
		expect_status 200 || return 1
	done
	wait_for "(( \$(log_lines_since $mark 'msg=request ' | grep -c .) >= 20 ))" 5
	lost=$(log_lines_since "$mark" 'msg="nothing to accept' | grep -c .)
	expect_eq "$lost" 0 "no worker was woken for a connection another one took"
	for pid in $(sup_workers); do
		served=$(log_lines_since "$mark" "pid=$pid msg=request " | grep -c .)
		expect_ge "$served" 5 "worker $pid served its share of 20 sequential requests"
	done
}
run_test "supervisor: a connection wakes one worker, and connections go round the workers" \
	test_connection_wakes_one_worker

# A kernel before Linux 4.5 refuses EPOLLEXCLUSIVE (EINVAL), here through a
# preloaded stand-in for epoll_ctl: each worker falls back to a plain
# watch, says so once, and every request is served.
test_accept_without_exclusive_wake() {
	local cfg=$STACK_DIR/it-pm-accept.json shim=$IT_TMP/no_epollexclusive.so wrapper=$IT_TMP/worker-no-excl.sh
	local mark i failed=0
	pm_config "$cfg" '.log_level = "debug" | .access_log = true'
	cc -shared -fPIC -o "$shim" "$(dirname "$0")/no_epollexclusive.c" -ldl
	expect_eq "$?" 0 "the epoll_ctl stand-in built" || return 1
	# (a sanitizer build must be told that its runtime is not loaded first)
	# shellcheck disable=SC2016 # expanded by the wrapper, at its run
	printf '#!/bin/sh\nLD_PRELOAD=%s ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0" exec %s "$@"\n' \
		"$shim" "$PM_BIN" >"$wrapper"
	chmod +x "$wrapper"
	mark=$(log_mark "$STACK_WORKER_LOG")
	PM_BIN=$wrapper sup_start "$cfg" --workers 2 --threads 1 || return 1
	for ((i = 0; i < 20; i++)); do
		http GET '/api/todos?limit=1'
		[[ $HTTP_STATUS == 200 ]] || failed=$((failed + 1))
	done
	expect_eq "$failed" 0 "20 requests, all 200"
	expect_eq "$(log_lines_since "$mark" 'msg="the kernel has no EPOLLEXCLUSIVE' | grep -c .)" 2 \
		"each of the 2 workers said it falls back"
	# The next tests go on with the supervisor as the test before left it.
	sup_start "$cfg" --workers 2 --threads 1
}
run_test "supervisor: without EPOLLEXCLUSIVE (Linux < 4.5) the workers fall back and serve" \
	test_accept_without_exclusive_wake

VICTIM=
test_kill9_worker_under_load() {
	local mark before n
	sup_alive || { _assert_result 1 "supervisor running" "not running"; return 1; }
	mark=$(log_mark "$STACK_WORKER_LOG")
	before=$(sup_workers | paste -sd ' ')
	VICTIM=$(sup_workers | head -n 1)
	load_start 8 8 "$LAKEBASE_URL/api/todos?limit=2"
	load_wait_for 40 15
	kill -KILL "$VICTIM"
	# shellcheck disable=SC2317 # called through wait_for
	replaced() { [[ $(sup_count_workers) == 2 ]] && ! sup_workers | grep -x "$VICTIM" >/dev/null; }
	wait_for replaced 5
	expect_eq "$?" 0 "the killed worker $VICTIM was replaced (workers before: $before, now: $(sup_workers | paste -sd ' '))"
	# Once every client has had time to see its answer, the rest must all succeed.
	n=$(load_count)
	wait_for "(( \$(load_count) >= $n + 8 ))" 10
	load_mark
	load_wait
	load_since_mark
	expect_le "$LOAD_FAILED" "$THREADS" "failed requests at most the $THREADS in flight on the killed worker (of $LOAD_TOTAL; failures: ${LOAD_CODES:-none})"
	[[ -z $LOAD_CODES || $LOAD_CODES =~ ^502:[0-9]+$ ]]
	expect_eq "$?" 0 "every failure is nginx's 502 for a connection the worker dropped (${LOAD_CODES:-none})"
	expect_ge "$LOAD_AFTER" 8 "the service continued after the replacement ($LOAD_AFTER requests)"
	expect_eq "$LOAD_AFTER_FAILED" 0 "and every one of them succeeded"
	log_lines_since "$mark" "msg=\"worker died: restarting it\" pid=$VICTIM signal=KILL" >/dev/null
	expect_eq "$?" 0 "the supervisor logged the death (pid=$VICTIM signal=KILL)"
	http GET '/api/todos?limit=1'
	expect_status 200
}
run_test "supervisor: a worker killed (-9) under load is replaced; only its in-flight requests fail" \
	test_kill9_worker_under_load

# Workers killed right after they start, again and again: each restart
# waits longer, and the supervisor says it is a crash loop.
test_crash_loop_backoff() {
	local mark known i w delays starts
	sup_alive || return 1
	mark=$(log_mark "$STACK_WORKER_LOG")
	known=" $(sup_workers | paste -sd ' ') "
	# One long-lived worker first, then each replacement as soon as it exists.
	w=$(sup_workers | tail -n 1)
	kill -KILL "$w"
	# shellcheck disable=SC2317 # called through wait_for
	fresh_worker() {
		local p
		for p in $(sup_workers); do
			[[ $known == *" $p "* ]] && continue
			w=$p
			return 0
		done
		return 1
	}
	for ((i = 0; i < 4; i++)); do
		wait_for fresh_worker 15 || { _assert_result 1 "replacement $i appeared" "none after 15 s"; return 1; }
		kill -KILL "$w"
		known+="$w "
	done
	wait_for "(( \$(log_lines_since $mark 'msg=\"crash loop' | grep -c .) >= 3 ))" 10
	delays=$(log_lines_since "$mark" 'msg="crash loop' | sed -n 's/.*restart_in_ms=\([0-9]*\).*/\1/p' | paste -sd ' ')
	expect_match "$delays" '^[0-9]+( [0-9]+){2,}$' "crash loop logged for the quick deaths (delays: $delays)"
	awk -v d="$delays" 'BEGIN { n = split(d, a, " "); for (i = 2; i <= n; i++) if (a[i] + 0 <= a[i - 1] + 0) exit 1; exit !(a[n] >= 400) }'
	expect_eq "$?" 0 "each restart waits longer than the one before, up to >= 400 ms ($delays)"
	wait_for "[[ \$(sup_count_workers) == 2 ]] && [[ \$(stack_healthz) == 200 ]]" 15
	expect_eq "$?" 0 "after the backoff, two workers serve again"
	starts=$(log_lines_since "$mark" 'msg=serving threads=[0-9]+ role=worker' | grep -c .)
	expect_le "$starts" 6 "not spun: $starts worker starts for 5 kills"
}
run_test "supervisor: workers that keep dying are restarted with a growing delay (crash loop logged)" \
	test_crash_loop_backoff

# A configuration that can never work: the supervisor gives up, exit 1.
test_supervisor_gives_up_at_startup() {
	local sock=$STACK_DIR/it-giveup.sock log=$STACK_DIR/it-giveup.log rc t0 n
	t0=$EPOCHREALTIME
	( worker_env_defaults
	  exec timeout 30 "$PM_BIN" -c "$CFG" --listen "unix:$sock" --workers 2 --user no-such-user-lb-it ) \
		>"$log" 2>&1 </dev/null
	rc=$?
	expect_eq "$rc" 1 "exit status 1"
	expect_match "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { print (b - a < 10) ? "fast" : "slow" }')" fast \
		"gave up within 10 s"
	grep -q 'msg="workers cannot start: giving up' "$log"
	expect_eq "$?" 0 "logged that it gives up"
	# Five quick deaths end it; the other worker may have died once more
	# meanwhile.
	n=$(grep -c 'msg="worker cannot start" detail="no such user: no-such-user-lb-it"' "$log")
	[[ $n == 5 || $n == 6 ]]
	expect_eq "$?" 0 "five (or six) attempts, each logged with the reason ($n)"
	[[ ! -e $sock ]]
	expect_eq "$?" 0 "its socket removed"
}
run_test "supervisor: workers that can never start (no such user): gives up, exit 1, socket removed" \
	test_supervisor_gives_up_at_startup

# The supervisor killed without a chance to stop its workers: they stop
# on their own (parent-death signal), finishing what they were doing.
test_workers_follow_a_killed_supervisor() {
	local workers w
	sup_start "$CFG" --workers 2 --threads 2 || return 1
	workers=$(sup_workers | paste -sd ' ')
	expect_match "$workers" '^[0-9]+ [0-9]+$' "two workers ($workers)"
	kill -KILL "$SUP_PID"
	for w in $workers; do
		wait_for "! pid_alive $w" 10
		expect_eq "$?" 0 "worker $w exited after its supervisor was killed"
	done
	wait_for "[[ -s '$SUP_RCFILE' ]]" 5
	SUP_PID=
}
run_test "workers exit when their supervisor is killed (-9)" test_workers_follow_a_killed_supervisor

# --- reloads ----------------------------------------------------------------------------

HUP_CFG=$STACK_DIR/it-hup.json
VERSION_ROUTE='{ "method": "GET", "path": "/api/it-version", "auth": "service-principal",
  "sql": "SELECT :v::text AS version", "params": { "v": { "in": "query", "type": "text", "default": "v2" } },
  "result": "one" }'

test_sighup_new_route_under_load() {
	local mark old new p slow
	pm_config "$HUP_CFG"
	sup_start "$HUP_CFG" --workers 2 --threads 8 || return 1
	old=$(sup_workers | paste -sd ' ')
	http GET /api/it-version
	expect_status 404
	mark=$(log_mark "$STACK_WORKER_LOG")
	load_start 6 8 "$LAKEBASE_URL/api/todos?limit=2"
	# 4 s each: long enough to overlap on a slow (sanitizer, loaded) machine.
	slow_start hup 3 4
	wait_for "(( \$(pg_sleeping) >= 3 ))" 10
	expect_eq "$?" 0 "three slow requests in flight before the reload"
	pm_config "$HUP_CFG" ".routes += [$VERSION_ROUTE]"
	kill -HUP "$SUP_PID"
	wait_for "log_lines_since $mark 'msg=\"reload complete' >/dev/null" 15
	expect_eq "$?" 0 "the supervisor logged the reload complete"
	http GET /api/it-version
	expect_status 200
	expect_body '{"version":"v2"}'
	slow_wait hup
	slow=$SLOW_RESULT
	expect_eq "$slow" "200 200 200" "the slow requests on the old workers finished (drained, not cut)"
	load_wait
	expect_eq "$LOAD_FAILED" 0 "no failed request during the reload (of $LOAD_TOTAL; failures: ${LOAD_CODES:-none})"
	new=$(sup_workers | paste -sd ' ')
	expect_eq "$(sup_count_workers)" 2 "two workers after the reload"
	for p in $old; do
		[[ " $new " != *" $p "* ]] || _assert_result 1 "old worker $p replaced" "still there"
		log_lines_since "$mark" "msg=\"worker exited\" pid=$p exit_status=0" >/dev/null ||
			_assert_result 1 "old worker $p exited 0 after draining" "no such log line"
	done
}
run_test "SIGHUP under load: a new route is served afterwards, zero failed requests, old workers drain" \
	test_sighup_new_route_under_load

test_sighup_broken_config() {
	local mark before
	sup_alive || return 1
	before=$(sup_workers | paste -sd ' ')
	mark=$(log_mark "$STACK_WORKER_LOG")
	json_strip_comments "$HUP_CFG" | jq '.bogus_key = 1 | .threads = "many"' >"$HUP_CFG.tmp" && mv "$HUP_CFG.tmp" "$HUP_CFG"
	load_start 3 4 "$LAKEBASE_URL/api/todos?limit=2"
	load_wait_for 20 10
	kill -HUP "$SUP_PID"
	wait_for "log_lines_since $mark 'configuration reload refused' >/dev/null" 10
	expect_eq "$?" 0 "the refusal is logged"
	log_lines_since "$mark" 'msg="configuration problem" .*key=bogus_key problem="unknown key"' >/dev/null
	expect_eq "$?" 0 "the unknown key is logged with its path"
	log_lines_since "$mark" 'msg="configuration problem" .*key=threads problem="must be an integer"' >/dev/null
	expect_eq "$?" 0 "the wrong type is logged with its path"
	load_wait
	expect_eq "$LOAD_FAILED" 0 "still serving: no failed request (of $LOAD_TOTAL; failures: ${LOAD_CODES:-none})"
	expect_eq "$(sup_workers | paste -sd ' ')" "$before" "the same workers serve on"
	http GET /api/it-version
	expect_status 200
	sup_alive
	expect_eq "$?" 0 "the supervisor still runs"
}
run_test "SIGHUP with a broken config: still serving, the problems logged, nothing replaced" \
	test_sighup_broken_config

# --- stopping ---------------------------------------------------------------------------

test_sigterm_under_load() {
	local cfg=$STACK_DIR/it-term.json t0 rc elapsed slow conns
	pm_config "$cfg" '.shutdown_grace_ms = 10000'
	sup_start "$cfg" --workers 2 --threads "$THREADS" --pidfile "$STACK_DIR/it-term.pid" || return 1
	expect_eq "$(read_pid "$STACK_DIR/it-term.pid")" "$SUP_PID" "--pidfile holds the supervisor's pid"
	as_user GET /api/my/todos "$ALICE" alice-token-1
	expect_status 200
	load_start 4 4 "$LAKEBASE_URL/api/todos?limit=2"
	slow_start term 4 2
	wait_for "(( \$(pg_sleeping) >= 4 ))" 10
	expect_eq "$?" 0 "four slow requests in flight"
	t0=$EPOCHREALTIME
	kill -TERM "$SUP_PID"
	rc=$(sup_wait_exit 20)
	elapsed=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
	expect_eq "$rc" 0 "exit status 0"
	expect_match "$elapsed" '^[0-9]\.' "exited within the 10 s grace period (after ${elapsed} s)"
	slow_wait term
	slow=$SLOW_RESULT
	expect_eq "$slow" "200 200 200 200" "the in-flight requests completed"
	load_wait
	# shellcheck disable=SC2317 # called through wait_for
	no_conns() { [[ $(pg_count_worker_conns) == 0 ]]; }
	wait_for no_conns 5
	conns=$(pg_count_worker_conns)
	expect_eq "$conns" 0 "no connection of lakebase-fcgi left in pg_stat_activity"
	[[ ! -e $STACK_FCGI_SOCK && ! -e $STACK_DIR/it-term.pid ]]
	expect_eq "$?" 0 "socket and pidfile removed"
	expect_eq "$(tail -n 1 "$STACK_WORKER_LOG" | grep -c 'msg=stopped')" 1 "the last log line says stopped"
}
run_test "SIGTERM under load: in-flight requests complete, exit 0 within the grace period, no connection left" \
	test_sigterm_under_load

test_grace_period_runs_out() {
	local cfg=$STACK_DIR/it-grace.json t0 rc elapsed slow mark
	pm_config "$cfg" '.shutdown_grace_ms = 1000'
	sup_start "$cfg" --workers 1 --threads 2 || return 1
	mark=$(log_mark "$STACK_WORKER_LOG")
	slow_start grace 1 6
	wait_for "(( \$(pg_sleeping) >= 1 ))" 10
	t0=$EPOCHREALTIME
	kill -TERM "$SUP_PID"
	rc=$(sup_wait_exit 15)
	elapsed=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
	expect_eq "$rc" 1 "exit status 1: a request was abandoned"
	expect_match "$elapsed" '^[0-3]\.' "exited soon after the 1 s grace period (after ${elapsed} s)"
	slow_wait grace
	slow=$SLOW_RESULT
	expect_eq "$slow" 502 "the abandoned request failed (502)"
	log_lines_since "$mark" 'msg="shutdown grace period over: abandoning the requests still running" in_flight=1' >/dev/null
	expect_eq "$?" 0 "the worker logged what it abandoned"
	# shellcheck disable=SC2317 # called through wait_for
	no_conns() { [[ $(pg_count_worker_conns) == 0 ]]; }
	wait_for no_conns 10
	expect_eq "$?" 0 "its connections closed (the backend cancelled when the client vanished)"
}
run_test "SIGTERM with a request longer than shutdown_grace_ms: exit 1 at the deadline, logged" \
	test_grace_period_runs_out

test_sigquit_is_immediate() {
	local t0 rc elapsed slow
	sup_start "$CFG" --workers 2 --threads 2 || return 1
	slow_start quit 1 5
	wait_for "(( \$(pg_sleeping) >= 1 ))" 10
	t0=$EPOCHREALTIME
	kill -QUIT "$SUP_PID"
	rc=$(sup_wait_exit 10)
	elapsed=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
	expect_eq "$rc" 1 "exit status 1"
	expect_match "$elapsed" '^[0-2]\.' "exited at once (after ${elapsed} s), not after the request"
	slow_wait quit
	slow=$SLOW_RESULT
	expect_eq "$slow" 502 "the request in flight was cut"
	[[ -z $(sup_workers) ]]
	expect_eq "$?" 0 "no worker left"
}
run_test "SIGQUIT: supervisor and workers exit immediately (status 1)" test_sigquit_is_immediate

# --- logs, recycling, daemon --------------------------------------------------------------

test_sigusr1_reopens_logs() {
	local cfg=$STACK_DIR/it-logfile.json log=$STACK_DIR/it-logfile.log rid
	rm -f "$log" "$log.1"
	pm_config "$cfg" ".log_file = \"$log\""
	sup_start "$cfg" --workers 2 --threads 2 || return 1
	http GET '/api/todos?limit=1'
	expect_status 200
	grep -q 'msg="supervisor ready' "$log"
	expect_eq "$?" 0 "the supervisor logs to log_file"
	mv "$log" "$log.1"
	kill -USR1 "$SUP_PID"
	wait_for "(( \$(grep -c 'msg=\"log file reopened\"' '$log' 2>/dev/null) >= 3 ))" 10
	expect_eq "$?" 0 "supervisor and both workers reopened $log"
	rid=it-pm-usr1-$RANDOM$RANDOM
	http GET '/api/todos?limit=1' -H "X-Request-Id: $rid"
	expect_status 200
	wait_for "grep -q 'request_id=$rid ' '$log'" 5
	expect_eq "$?" 0 "a worker's request line went to the new file"
	grep -q "request_id=$rid " "$log.1"
	expect_eq "$?" 1 "nothing more in the rotated file"
	rm -f "$log.1"
}
run_test "SIGUSR1: the supervisor and every worker reopen log_file" test_sigusr1_reopens_logs

test_max_requests_recycles() {
	local cfg=$STACK_DIR/it-maxreq.json mark i failed=0 retired pids
	pm_config "$cfg" '.max_requests = 10'
	sup_start "$cfg" --workers 1 --threads 2 || return 1
	mark=$(log_mark "$STACK_WORKER_LOG")
	for ((i = 0; i < 35; i++)); do
		http GET '/api/todos?limit=1'
		[[ $HTTP_STATUS == 200 ]] || failed=$((failed + 1))
	done
	expect_eq "$failed" 0 "35 requests, none failed"
	retired=$(log_lines_since "$mark" 'msg="worker retired \(max_requests\)' | grep -c .)
	expect_ge "$retired" 3 "the worker was recycled after every 10 requests ($retired times)"
	pids=$(log_lines_since "$mark" 'msg=request ' | sed -n 's/.* pid=\([0-9]*\) .*/\1/p' | sort -u | grep -c .)
	expect_ge "$pids" 4 "by $pids different worker processes"
}
run_test "max_requests: a worker retires after N requests and is replaced, no request fails" \
	test_max_requests_recycles

test_daemon_and_pidfile() {
	local cfg=$STACK_DIR/it-daemon.json pidfile=$STACK_DIR/it-daemon.pid rc pid
	pm_config "$cfg" ".log_file = \"$STACK_DIR/it-daemon.log\""
	sup_stop
	worker_stop
	rm -f "$STACK_FCGI_SOCK" "$pidfile"
	_PM_STACK_CHANGED=1
	( worker_env_defaults
	  exec timeout 30 "$PM_BIN" -c "$cfg" --listen "unix:$STACK_FCGI_SOCK" --socket-mode 0666 --workers 2 \
		--daemon --pidfile "$pidfile" ) </dev/null >"$IT_TMP/daemon.out" 2>&1
	rc=$?
	expect_eq "$rc" 0 "--daemon returned 0 once serving"
	pid=$(read_pid "$pidfile")
	pid_alive "$pid"
	expect_eq "$?" 0 "the pidfile names a live process ($pid)"
	expect_eq "$(awk '{ print $6 }' "/proc/$pid/stat" 2>/dev/null)" "$pid" "it leads its own session (detached)"
	expect_eq "$(pgrep -c -P "$pid")" 2 "with its two workers (its children)"
	expect_eq "$(stack_healthz)" 200 "serving through nginx"
	kill -TERM "$pid"
	wait_for "! pid_alive $pid" 15
	expect_eq "$?" 0 "SIGTERM (by its pidfile) stopped it"
	[[ ! -e $pidfile ]]
	expect_eq "$?" 0 "the pidfile was removed"
}
run_test "--daemon: detaches, returns 0 once serving; --pidfile names it; SIGTERM stops it" \
	test_daemon_and_pidfile

# --- privileges and the socket ------------------------------------------------------------

test_drop_privileges_and_socket_owner() {
	local cache_dir=$STACK_DIR/it-www w uid other_rc
	install -d -m 0700 -o www-data -g www-data "$cache_dir"
	rm -f "$cache_dir/credentials.shm"
	LAKEBASE_CREDENTIAL_CACHE_PATH=$cache_dir/credentials.shm \
		sup_start "$CFG" --workers 2 --threads 2 --user www-data --group www-data \
		--socket-owner www-data --socket-group www-data --socket-mode 0600 || return 1
	expect_eq "$(stat -c '%U:%G %a' "$STACK_FCGI_SOCK")" "www-data:www-data 600" "socket owner, group and mode"
	expect_eq "$(stat -c %U "/proc/$SUP_PID")" root "the supervisor keeps root (to reopen logs, remove the socket)"
	for w in $(sup_workers); do
		uid=$(awk '/^Uid:/ { print $2 "/" $3 "/" $4 "/" $5 }' "/proc/$w/status")
		expect_eq "$uid" "33/33/33/33" "worker $w runs as www-data (real/effective/saved/fs uid)"
		expect_eq "$(awk '/^Groups:/ { $1 = ""; print }' "/proc/$w/status" | tr -d ' ')" 33 \
			"worker $w has www-data's groups only"
	done
	as_user GET /api/my/todos "$ALICE" alice-token-1
	expect_status 200
	expect_body "$SEED_ALICE_JSON"
	# A second instance on the same socket is refused, the first serves on.
	( worker_env_defaults
	  exec timeout 10 "$PM_BIN" -c "$CFG" --listen "unix:$STACK_FCGI_SOCK" ) >"$IT_TMP/second.out" 2>&1 </dev/null
	other_rc=$?
	expect_eq "$other_rc" 1 "a second instance on the same socket: exit 1"
	grep -q 'another process is listening on it' "$IT_TMP/second.out"
	expect_eq "$?" 0 "with the reason"
	expect_eq "$(stack_healthz)" 200 "the first still serves"
}
run_test "--user/--group: workers run as www-data; socket owner/group/mode; a second instance refused" \
	test_drop_privileges_and_socket_owner

test_no_socket_is_an_error() {
	local rc
	( worker_env_defaults
	  unset GATEWAY_INTERFACE
	  exec timeout 10 "$PM_BIN" -c "$CFG" ) </dev/null >"$IT_TMP/nosock.out" 2>&1
	rc=$?
	expect_eq "$rc" 1 "exit status 1"
	grep -q 'no socket to serve: give --listen ADDR' "$IT_TMP/nosock.out"
	expect_eq "$?" 0 "says what to do: $(tail -n 1 "$IT_TMP/nosock.out")"
}
run_test "no --listen, no socket on fd 0, no CGI: a clear error" test_no_socket_is_an_error

# --- systemd: Type=notify and socket activation -----------------------------------------

# What systemd does, by its documented protocols: a datagram socket in
# NOTIFY_SOCKET collects the service's notifications; the listening socket
# comes on fd 3 with LISTEN_FDS=1 and LISTEN_PID=<the service's pid>.
# shellcheck disable=SC2016 # perl, not shell
NOTIFY_RECEIVER='use Socket; my ($path, $out) = @ARGV; alarm 120; unlink $path;
	socket(my $s, PF_UNIX, SOCK_DGRAM, 0) or die "socket: $!"; bind($s, pack_sockaddr_un($path)) or die "bind: $!";
	open(my $fh, ">>", $out) or die; $fh->autoflush(1);
	while (defined(recv($s, my $buf, 4096, 0))) { print $fh "$buf\n"; }'
# shellcheck disable=SC2016 # perl, not shell
SOCKET_ACTIVATOR='use Socket; use POSIX (); $^F = 3; my $path = shift; unlink $path;
	socket(my $s, PF_UNIX, SOCK_STREAM, 0) or die "socket: $!"; bind($s, pack_sockaddr_un($path)) or die "bind: $!";
	listen($s, 128) or die "listen: $!"; chmod 0666, $path; POSIX::dup2(fileno($s), 3) or die "dup2: $!";
	$ENV{LISTEN_FDS} = 1; $ENV{LISTEN_PID} = $$; exec @ARGV or die "exec: $!";'

test_systemd_protocols() {
	local nsock=$STACK_DIR/it-notify.sock nout=$STACK_DIR/it-notify.out receiver mark rc
	sup_stop
	worker_stop
	_PM_STACK_CHANGED=1
	rm -f "$nout" "$STACK_FCGI_SOCK" "$PM_CACHE_FILE"
	perl -e "$NOTIFY_RECEIVER" "$nsock" "$nout" &
	receiver=$!
	wait_for "[[ -S '$nsock' ]]" 5
	mark=$(log_mark "$STACK_WORKER_LOG")
	NOTIFY_SOCKET=$nsock sup_launch_cmd perl -e "$SOCKET_ACTIVATOR" "$STACK_FCGI_SOCK" \
		"$PM_BIN" -c "$CFG" --listen "unix:$STACK_FCGI_SOCK" --workers 2 --threads 2 || return 1
	stack_wait_healthy 15
	expect_eq "$(stack_healthz)" 200 "serving through nginx on the socket systemd passed"
	log_lines_since "$mark" "msg=listening on=unix:$STACK_FCGI_SOCK socket=\"from systemd\"" >/dev/null
	expect_eq "$?" 0 "took systemd's socket (the same path as --listen) instead of its own"
	wait_for "grep -qx READY=1 '$nout'" 5
	expect_eq "$(paste -sd ' ' "$nout")" "READY=1" "READY=1 once every worker serves"
	kill -HUP "$SUP_PID"
	wait_for "[[ \$(grep -c . '$nout') -ge 3 ]]" 10
	expect_eq "$(paste -sd ' ' "$nout")" "READY=1 RELOADING=1 READY=1" "a reload: RELOADING=1, then READY=1"
	kill -TERM "$SUP_PID"
	rc=$(sup_wait_exit 15)
	expect_eq "$rc" 0 "SIGTERM: exit status 0"
	expect_eq "$(paste -sd ' ' "$nout")" "READY=1 RELOADING=1 READY=1 STOPPING=1" "then STOPPING=1"
	[[ -S $STACK_FCGI_SOCK ]]
	expect_eq "$?" 0 "systemd's socket file is left in place (it is not ours to remove)"
	kill "$receiver" 2>/dev/null
	wait "$receiver" 2>/dev/null
	rm -f "$nsock" "$STACK_FCGI_SOCK"
}
run_test "systemd: Type=notify (READY, RELOADING, STOPPING) and socket activation (LISTEN_FDS)" \
	test_systemd_protocols

# The shipped unit: systemd-analyze accepts it and rates its exposure, and
# its sandbox fits what the processes really do (strace): every system call
# is in its SystemCallFilter (@system-service), and nothing is written
# outside the runtime directory (ProtectSystem=strict) but /dev/null.
SYSCALLS_ALLOWED=$IT_TMP/syscalls.allowed
syscall_set() {
	systemd-analyze syscall-filter "$1" 2>/dev/null | awk 'NR > 1' | sed 's/#.*//' | tr -s ' \t' '\n' |
		grep -v '^$' | while read -r name; do
			if [[ $name == @* ]]; then syscall_set "$name"; else echo "$name"; fi
		done
}

test_systemd_unit() {
	local dir=$IT_TMP/units out rc exposure
	mkdir -p "$dir"
	sed "s|/usr/sbin/lakebase-fcgi|$PM_BIN|g" "$STACK_REPO/systemd/lakebase-fcgi.service" >"$dir/lakebase-fcgi.service"
	cp "$STACK_REPO/systemd/lakebase-fcgi.socket" "$dir/"
	out=$(systemd-analyze verify "$dir/lakebase-fcgi.service" "$dir/lakebase-fcgi.socket" 2>&1)
	rc=$?
	expect_eq "$rc:$out" "0:" "systemd-analyze verify: no complaint"
	exposure=$(systemd-analyze security --offline=yes "$dir/lakebase-fcgi.service" 2>/dev/null |
		sed -n 's/.*Overall exposure level for lakebase-fcgi.service: \([0-9.]*\).*/\1/p')
	awk -v e="$exposure" 'BEGIN { exit !(e != "" && e + 0 <= 2.0) }'
	expect_eq "$?" 0 "systemd-analyze security: exposure ${exposure:-?} <= 2.0"
}

test_systemd_sandbox() {
	local trace=$STACK_DIR/it-strace.out pidfile=$STACK_DIR/it-strace.pid pid unexpected writes mark start rc
	syscall_set @system-service | sort -u >"$SYSCALLS_ALLOWED"
	sup_stop
	worker_stop
	_PM_STACK_CHANGED=1
	rm -f "$STACK_FCGI_SOCK" "$PM_CACHE_FILE" "$trace" "$pidfile"
	start=$(log_mark "$STACK_WORKER_LOG")
	sup_launch_cmd strace -f -q -o "$trace" "$PM_BIN" -c "$CFG" --listen "unix:$STACK_FCGI_SOCK" \
		--socket-mode 0666 --workers 2 --threads 2 --pidfile "$pidfile" || return 1
	stack_wait_healthy 30 || return 1
	pid=$(read_pid "$pidfile")
	as_user GET /api/my/todos "$ALICE" alice-token-1
	expect_status 200
	http GET /readyz
	expect_status 200
	mark=$(log_mark "$STACK_WORKER_LOG")
	kill -HUP "$pid"
	wait_for "log_lines_since $mark 'msg=\"reload complete' >/dev/null" 20
	expect_eq "$?" 0 "reloaded under strace"
	kill -USR1 "$pid"
	http GET '/api/todos?limit=1'
	expect_status 200
	kill -TERM "$pid"
	rc=$(sup_wait_exit 30)
	expect_eq "$rc" 0 "the traced supervisor stopped with status 0"
	if [[ $rc != 0 ]]; then
		# Why: what the supervisor logged, and how each traced process ended.
		log_lines_since "$start" 'level=(warn|error)|exited|died|killing' | tail -n 20 | sed 's/^/       log: /'
		grep -E '\+\+\+ (exited with [1-9]|killed by)' "$trace" | sed 's/^/       strace: /'
	fi
	unexpected=$(awk '{ sub(/^[0-9]+ +/, ""); if (match($0, /^[a-z_0-9]+\(/)) print substr($0, 1, RLENGTH - 1) }' "$trace" |
		sort -u | grep -vx execve | comm -23 - "$SYSCALLS_ALLOWED" | paste -sd ' ')
	expect_eq "$unexpected" "" "every system call made is in SystemCallFilter=@system-service"
	writes=$(grep -E 'open(at)?\(.*O_(WRONLY|RDWR|CREAT)' "$trace" | grep -v ' = -1 ' |
		sed -E 's/.*open(at)?\((AT_FDCWD, )?"([^"]*)".*/\3/' | sort -u |
		grep -v -e "^$STACK_DIR/" -e '^/dev/null$' | paste -sd ' ')
	expect_eq "$writes" "" "files written only in the runtime directory (here the state dir)"
	rm -f "$trace"
}
if command -v systemd-analyze >/dev/null; then
	run_test "systemd unit: systemd-analyze verifies it, exposure <= 2.0" test_systemd_unit
	# Not with a sanitizer build: its runtime makes calls of its own, and
	# LeakSanitizer cannot run under ptrace.
	if [[ $(ldd "$PM_BIN") == *libasan* ]]; then
		skip "systemd unit: the sandbox fits every syscall and write" "sanitizer build"
	elif ! strace -f -qq -o /dev/null true 2>/dev/null; then
		skip "systemd unit: the sandbox fits every syscall and write" "no working strace"
	else
		run_test "systemd unit: the sandbox fits every syscall and write (strace)" test_systemd_sandbox
	fi
else
	skip "systemd unit checks" "systemd-analyze not installed"
fi

# --- the mount prefix -------------------------------------------------------------------

test_mount_prefix() {
	local cfg=$STACK_DIR/it-mount.json expected path
	pm_restore >/dev/null
	http GET '/api/todos?limit=2'
	expected=$HTTP_BODY
	worker_config_derive "$cfg" '.mount_prefix = "/api" | .routes |= map(.path |= sub("^/api"; ""))'
	_PM_STACK_CHANGED=1
	# (worker_restart's own readiness check asks for /healthz: outside /api now.)
	worker_restart "$cfg" >/dev/null 2>&1
	wait_for "[[ \$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 '$LAKEBASE_URL/api/healthz') == 200 ]]" 15
	expect_eq "$?" 0 "the worker with mount_prefix serves /api/healthz" || return 1
	http GET '/api/todos?limit=2'
	expect_status 200
	expect_body "$expected"
	as_user GET /api/whoami "$ALICE" alice-token-1
	expect_status 200
	expect_body '{"user":"alice@example.com"}'
	http GET /api/healthz
	expect_status 200
	for path in /todos /healthz /apix/todos /ap /api/todos/%2e%2e /api/%2E%2E/api/todos /api/./todos /api//todos \
		'/api%2ftodos'; do
		http GET "$path" --path-as-is
		expect_error 404 not_found "No such resource."
	done
	http GET '/api/../api/todos' --path-as-is
	expect_error 404 not_found "No such resource."
}
run_test "mount_prefix /api: routes and health under it; outside it and dot tricks: 404" test_mount_prefix

# --- spawn-fcgi (managed mode) ------------------------------------------------------------

test_spawn_fcgi() {
	local cfg=$STACK_DIR/it-spawn.json pidfile=$STACK_DIR/it-spawn.pid log=$STACK_DIR/it-spawn.log pids p i failed=0
	# spawn-fcgi points the children's stderr at /dev/null: log to a file.
	pm_config "$cfg" ".log_file = \"$log\" | .max_requests = 3 | .log_level = \"debug\" | .access_log = true"
	rm -f "$log"
	sup_stop
	worker_stop
	_PM_STACK_CHANGED=1
	rm -f "$STACK_FCGI_SOCK" "$pidfile" "$PM_CACHE_FILE"
	# As the README shows: spawn-fcgi opens the socket; two processes share it.
	( worker_env_defaults
	  spawn-fcgi -s "$STACK_FCGI_SOCK" -M 0666 -F 2 -P "$pidfile" -- "$PM_BIN" -c "$cfg" ) >"$IT_TMP/spawn.out" 2>&1
	expect_eq "$?" 0 "spawn-fcgi started them"
	pids=$(grep -E '^[0-9]+$' "$pidfile" | paste -sd ' ')
	expect_match "$pids" '^[0-9]+ [0-9]+$' "two pids in the pidfile ($pids)"
	stack_wait_healthy 15
	wait_for "[[ \$(grep -c 'msg=serving threads=1 role=managed' '$log') == 2 ]]" 10
	expect_eq "$(grep -c 'msg=serving threads=1 role=managed' "$log")" 2 "each runs managed: one request thread"
	grep -q 'max_requests is ignored without the supervisor' "$log"
	expect_eq "$?" 0 "max_requests is ignored (logged)"
	for ((i = 0; i < 12; i++)); do
		as_user GET /api/my/todos "$ALICE" alice-token-1
		[[ $HTTP_STATUS == 200 && $HTTP_BODY == "$SEED_ALICE_JSON" ]] || failed=$((failed + 1))
	done
	expect_eq "$failed" 0 "12 user requests through nginx, all alice's rows"
	# One socket, two processes of one thread: each connection wakes one
	# of them, and they take turns.
	wait_for "(( \$(grep -c 'msg=request ' '$log') >= 12 ))" 5
	expect_eq "$(grep -c 'msg="nothing to accept' "$log")" 0 "no process was woken for a connection the other took"
	for p in $pids; do
		expect_ge "$(grep -c "pid=$p msg=request " "$log")" 3 "process $p served its share of 12 sequential requests"
	done
	for p in $pids; do
		pid_alive "$p"
		expect_eq "$?" 0 "process $p still runs after more than max_requests (never exits on its own)"
	done
	for p in $pids; do kill -TERM "$p"; done
	for p in $pids; do
		wait_for "! pid_alive $p" 10
		expect_eq "$?" 0 "process $p stopped on SIGTERM"
	done
	expect_eq "$(grep -c 'msg=stopped' "$log")" 2 "both logged a clean stop"
}
run_test "spawn-fcgi -F 2: managed processes serve through nginx, never exit on their own, stop on SIGTERM" \
	test_spawn_fcgi

# --- CGI ----------------------------------------------------------------------------------

# cgi_run METHOD URI [BODY] [VAR=VALUE...]: the binary run as a CGI program
# would be (environment plus body on stdin), its configuration from
# LAKEBASE_FCGI_CONFIG; output in CGI_OUT, status line in CGI_STATUS, body
# in CGI_BODY, exit status in CGI_RC.
cgi_run() {
	local method=$1 uri=$2 body=${3-} query=
	shift 3
	[[ $uri == *\?* ]] && query=${uri#*\?}
	CGI_RC=0
	( worker_env_defaults
	  printf '%s' "$body" | exec env GATEWAY_INTERFACE=CGI/1.1 SERVER_PROTOCOL=HTTP/1.1 \
		REQUEST_METHOD="$method" REQUEST_URI="$uri" QUERY_STRING="$query" \
		CONTENT_LENGTH="${#body}" LAKEBASE_FCGI_CONFIG="$CFG" "$@" timeout 20 "$PM_BIN" ) \
		>"$IT_TMP/cgi.out" 2>>"$STACK_DIR/it-cgi.log" || CGI_RC=$?
	CGI_OUT=$(tr -d '\r' <"$IT_TMP/cgi.out")
	CGI_STATUS=$(head -n 1 <<<"$CGI_OUT")
	CGI_BODY=$(awk 'body { print } /^$/ { body = 1 }' <<<"$CGI_OUT")
}

test_cgi_mode() {
	local sp_body id
	pm_restore
	http GET '/api/todos?limit=3'
	sp_body=$HTTP_BODY
	cgi_run GET '/api/todos?limit=3' ''
	expect_eq "$CGI_RC" 0 "SP route: exit status 0"
	expect_eq "$CGI_STATUS" "Status: 200 OK" "SP route: status"
	expect_eq "$CGI_BODY" "$sp_body" "SP route: the same body as through nginx"
	cgi_run POST /api/my/todos "{\"title\":\"$USERS_TITLE_PREFIX cgi\"}" CONTENT_TYPE=application/json \
		HTTP_X_FORWARDED_EMAIL="$ALICE" HTTP_X_FORWARDED_ACCESS_TOKEN=alice-token-1
	expect_eq "$CGI_RC" 0 "user POST: exit status 0"
	expect_eq "$CGI_STATUS" "Status: 201 Created" "user POST: status"
	expect_eq "$(jq -c '[.title, .owner]' <<<"$CGI_BODY")" "[\"$USERS_TITLE_PREFIX cgi\",\"$ALICE\"]" \
		"user POST: the body on stdin was stored as alice's"
	id=$(jq -r .id <<<"$CGI_BODY")
	expect_eq "$(pg_admin_sql "SELECT owner FROM app.todos WHERE id = '$id'")" "$ALICE" "the row is alice's"
	cgi_run GET /api/my/todos ''
	expect_eq "$CGI_STATUS" "Status: 401 Unauthorized" "no identity: 401"
	# One process per request, but the credential cache is the host's:
	# once bob's credential is in it, another CGI request mints nothing.
	local mints_after_first
	cgi_run GET /api/my/todos '' HTTP_X_FORWARDED_EMAIL=bob@example.com \
		HTTP_X_FORWARDED_ACCESS_TOKEN=bob-token-1
	expect_eq "$CGI_STATUS" "Status: 200 OK" "bob through CGI: 200"
	mints_after_first=$(emu_mints bob@example.com)
	cgi_run GET /api/my/todos '' HTTP_X_FORWARDED_EMAIL=bob@example.com \
		HTTP_X_FORWARDED_ACCESS_TOKEN=bob-token-1
	expect_eq "$CGI_STATUS" "Status: 200 OK" "bob through CGI again: 200"
	expect_eq "$(jq -r '.[].owner' <<<"$CGI_BODY" | sort -u)" "bob@example.com" "bob sees only his rows"
	expect_eq "$(emu_mints bob@example.com)" "$mints_after_first" \
		"the second CGI request minted nothing (shared credential cache)"
	expect_eq "$CGI_RC" 0 "no identity: still exit status 0 (answered)"
	# The ISINDEX convention: a query without '=' becomes arguments.
	( worker_env_defaults
	  exec env GATEWAY_INTERFACE=CGI/1.1 REQUEST_METHOD=GET REQUEST_URI='/api/todos?--listen+127.0.0.1:1' \
		QUERY_STRING='--listen+127.0.0.1:1' LAKEBASE_FCGI_CONFIG="$CFG" timeout 10 "$PM_BIN" --listen 127.0.0.1:1 ) \
		</dev/null >"$IT_TMP/cgi.out" 2>>"$STACK_DIR/it-cgi.log"
	expect_eq "$?" 0 "query passed as arguments: exit status 0"
	expect_eq "$(head -n 1 "$IT_TMP/cgi.out" | tr -d '\r')" "Status: 400 Bad Request" \
		"query passed as arguments: refused with 400, nothing parsed"
	clear_test_rows
}
run_test "CGI mode: one request per run from the environment and stdin, exit status 0" test_cgi_mode

pm_restore
expect_eq "$(stack_healthz)" 200 "the normal stack worker is back"
summary
