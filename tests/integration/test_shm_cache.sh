#!/usr/bin/env bash
# test_shm_cache.sh - the host's shared credential cache, with several
# worker processes behind the stack's nginx: spawn-fcgi -F 4 starts them on
# one socket (managed mode: the socket is fd 0), so they share the segment.
#
#   * 4 processes x 50 users in parallel: one mint per identity (and one for
#     the SP) in a lifetime; with a short lifetime, one refresh per identity
#     per lifetime across all processes;
#   * a process killed (-9) while holding the segment's lock (test hook):
#     the others go on within a bound, no deadlock, no torn credential;
#   * a claimer killed mid-refresh, or stopped past its deadline: taken over;
#   * the workspace failing for longer than the refresh window but shorter
#     than the lifetime: no failed request; past expiry: 503 with a clear
#     message; once it recovers: served again by the same processes;
#   * eager refresh of users, and of the SP after its refresher was killed;
#   * the host-wide connection budget, watched in pg_stat_activity;
#   * --cache-status (no secret in it), and segment files refused at startup.
#
# Needs the running stack (scripts/stack.sh start) and spawn-fcgi. Adds 50
# roles and rows, restarts the emulator; stops the stack's worker while it
# runs and puts everything back at the end.
set -uo pipefail
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/user_lib.sh
source "$(dirname "$0")/user_lib.sh"

NPROCS=4
NUSERS=50
CREDENTIALS_PATH=/api/2.0/postgres/credentials
SP_ROLE=${LAKEBASE_SP_CLIENT_ID:-lakebase-sp}
CACHE_FILE=${LAKEBASE_CREDENTIAL_CACHE_PATH:-$STACK_DIR/credentials.shm}
SPAWN_PIDFILE=$STACK_DIR/shm-workers.pid
SPAWN_LOG=$STACK_DIR/shm-workers.log
# Workspace calls that fail fast: one call through its retries takes at most
# 4 x (0.5 + 1) s + 6.7 s of retry sleeps = 12.7 s (a claim's deadline).
FAST_WORKSPACE='.workspace = ((.workspace // {}) + {connect_timeout_ms: 500, timeout_ms: 1000})'
CLAIM_DEADLINE_S=12.7

mapfile -t NUMS < <(seq -f '%02g' 1 "$NUSERS")
BULK_KIND=shm
BULK_ROW_PREFIX=00000000-0000-4000-8000-0000000020

now_s() { printf '%s\n' "$EPOCHREALTIME"; }
# elapsed T0: seconds since T0 (fractions).
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }
# before T0 SECONDS: true while less than SECONDS have passed since T0.
before() { awk -v a="$1" -v s="$2" -v b="$EPOCHREALTIME" 'BEGIN { exit !(b - a < s) }'; }
# sleep_until T0 SECONDS: sleeps until SECONDS after T0 (a schedule, not a sync).
sleep_until() {
	local left
	left=$(awk -v a="$1" -v s="$2" -v b="$EPOCHREALTIME" 'BEGIN { d = a + s - b; printf "%.3f", (d > 0 ? d : 0) }')
	sleep "$left"
}

# --- worker processes (spawn-fcgi) ------------------------------------------------------

spawned_pids() {
	[[ -r $SPAWN_PIDFILE ]] && cat "$SPAWN_PIDFILE"
}

alive_spawned() {
	local p n=0
	for p in $(spawned_pids); do
		pid_alive "$p" && n=$((n + 1))
	done
	echo "$n"
}

# stop_workers: the spawned processes, by the PIDs spawn-fcgi recorded
# (SIGTERM, a stopped one continued first), each waited for.
stop_workers() {
	local p
	[[ -r $SPAWN_PIDFILE ]] || return 0
	for p in $(spawned_pids); do
		if pid_alive "$p" && pid_started_by "$p" "$SPAWN_PIDFILE"; then
			kill -CONT "$p" 2>/dev/null
			kill -TERM "$p" 2>/dev/null
		fi
	done
	for p in $(spawned_pids); do
		if ! wait_for "! pid_alive $p" "${LAKEBASE_WORKER_STOP_TIMEOUT:-15}"; then
			echo "WARNING: worker pid $p still running: SIGKILL" >&2
			kill -KILL "$p" 2>/dev/null
		fi
	done
	rm -f "$SPAWN_PIDFILE" "$STACK_FCGI_SOCK"
}

# spawn_workers CONFIG [VAR=VALUE...]: NPROCS workers on the stack's socket
# (in place of its single worker), a fresh segment, extra environment for
# all of them; ready when all run and /healthz answers through nginx.
spawn_workers() {
	local config
	config=$(realpath -- "$1")
	shift
	stop_workers
	worker_stop
	_USERS_WORKER_CHANGED=1
	rm -f "$STACK_FCGI_SOCK" "$CACHE_FILE" "$CACHE_FILE.hold-lock-fired"
	# shellcheck disable=SC2016 # $0, $@ and SPAWN_LOG_FILE belong to the inner bash
	( worker_env_defaults
	  export LAKEBASE_CREDENTIAL_CACHE_PATH=$CACHE_FILE SPAWN_LOG_FILE=$SPAWN_LOG
	  [[ $# -gt 0 ]] && export "$@"
	  spawn-fcgi -s "$STACK_FCGI_SOCK" -M 0666 -F "$NPROCS" -P "$SPAWN_PIDFILE" -- \
		/bin/bash -c 'exec "$0" "$@" 2>>"$SPAWN_LOG_FILE"' "$STACK_WORKER_BIN" -c "$config" \
		>/dev/null 2>&1 ) || { echo "       spawn-fcgi failed" >&2; return 1; }
	if ! wait_for "[[ \$(alive_spawned) == $NPROCS && \$(stack_healthz) == 200 ]]" 20; then
		echo "       $(alive_spawned) of $NPROCS workers up; log tail:" >&2
		tail -n 15 "$SPAWN_LOG" | sed 's/^/       /' >&2
		return 1
	fi
}

# cache_status [CONFIG]: lakebase-fcgi --cache-status for the test's segment.
cache_status() {
	( worker_env_defaults
	  export LAKEBASE_CREDENTIAL_CACHE_PATH=$CACHE_FILE
	  timeout 10 "$STACK_WORKER_BIN" -c "${1:-$STACK_WORKER_CONFIG}" --cache-status )
}

# cache_counter NAME: a counter from --cache-status.
cache_counter() {
	cache_status | grep -o " $1=[0-9]*" | cut -d= -f2
}

# claimer_of EMAIL: the pid refreshing EMAIL's slot now, per --cache-status.
claimer_of() {
	cache_status | awk -v e="$1" '$3 == e && /refreshing \(pid/ {
		match($0, /refreshing \(pid [0-9]+/); print substr($0, RSTART + 16, RLENGTH - 16); exit }'
}

# --- requests --------------------------------------------------------------------------

# burst DIR [PARALLEL]: reads "N TAG" lines (N a user number, or "sp") and
# sends them in parallel; appends "N TAG STATUS SECONDS" to DIR/statuses and
# keeps each body in DIR/N.TAG.
burst() {
	local dir=$1 par=${2:-50}
	mkdir -p "$dir"
	# shellcheck disable=SC2016 # the inner script's $0..$2 are xargs' arguments
	BURST_URL=$LAKEBASE_URL timeout 150 xargs -P "$par" -L 1 sh -c '
		if [ "$1" = sp ]; then
			curl -sS --max-time 45 -o "$0/sp.$2" -w "sp $2 %{http_code} %{time_total}\n" "$BURST_URL/api/todos?limit=1"
		else
			curl -sS --max-time 45 -o "$0/$1.$2" -w "$1 $2 %{http_code} %{time_total}\n" \
				-H "X-Forwarded-Email: shm$1@example.com" -H "X-Forwarded-Access-Token: shm$1-token-1" \
				"$BURST_URL/api/my/todos"
		fi' "$dir" >>"$dir/statuses" 2>>"$dir/errors"
}

# non_200 DIR: the answers that were not 200, in one line.
non_200() {
	awk '$3 != 200 { printf "%s/%s:%s ", $1, $2, $3 }' "$1/statuses"
}

# wrong_bodies DIR: user answers (200) whose body is not exactly the user's row.
wrong_bodies() {
	local n tag code t bad=0
	while read -r n tag code t; do
		[[ $n == sp || $code != 200 ]] && continue
		if [[ $(cat "$1/$n.$tag") != "$(user_json "$n")" ]]; then
			bad=$((bad + 1))
			printf '       shm%s %s: %s\n' "$n" "$tag" "$(head -c 200 "$1/$n.$tag")" >&2
		fi
	done <"$1/statuses"
	echo "$bad"
}

as_shm_user() {
	as_user GET /api/my/todos "$(user_email "$1")" "$(user_token "$1")"
}

# mints_summary: "USERS users, min MIN, max MAX" over the shm users' mints.
mints_summary() {
	emu_counter '[.mints | to_entries[] | select(.key | test("^shm[0-9]+@")) | .value]
		| "\(length) users, min \(min // 0), max \(max // 0)"'
}

restore_all() {
	stop_workers
	users_restore
	pidfile_alive "$STACK_WORKER_PID" || worker_start >/dev/null 2>&1
	drop_users
}
at_exit 'restore_all >/dev/null 2>&1'

# --- setup --------------------------------------------------------------------------------

test_setup() {
	command -v spawn-fcgi >/dev/null || { _assert_result 1 "spawn-fcgi installed" "not found"; return 1; }
	bulk_users_setup "$IT_TMP/emulator-shm.json"
}
run_test "setup: $NUSERS users (roles, tokens, one row each)" test_setup

# --- one mint per identity --------------------------------------------------------------

test_one_mint_per_identity() {
	local cfg=$IT_TMP/shm-mint.json dir=$IT_TMP/mint status pids n r
	# 4 x 12 connections stay well under PostgreSQL's 200.
	worker_config_with '.max_connections = 12 | .user_pool = ((.user_pool // {}) + {max: 1, acquire_timeout_ms: 20000})' "$cfg" || return
	spawn_workers "$cfg" || return
	emu_reset
	local mark
	mark=$(log_mark "$SPAWN_LOG")
	for ((r = 1; r <= 3; r++)); do
		for n in "${NUMS[@]}"; do echo "$n r$r"; done
		echo "sp r$r"; echo "sp r$r-b"
	done | burst "$dir" 50
	expect_eq "$(wc -l <"$dir/statuses")" $(((NUSERS + 2) * 3)) "every request answered"
	expect_eq "$(non_200 "$dir")" "" "every request 200"
	expect_eq "$(wrong_bodies "$dir")" 0 "each user saw exactly their own row"
	pids=$(log_since "$SPAWN_LOG" "$mark" | grep 'msg=request ' | grep -o ' pid=[0-9]*' | sort -u | wc -l)
	printf '       %s requests served by %s of the %s processes\n' "$(wc -l <"$dir/statuses")" "$pids" "$NPROCS"
	expect_ge "$pids" 2 "several processes served the burst"
	expect_eq "$(mints_summary)" "$NUSERS users, min 1, max 1" "exactly one mint per user, host-wide"
	expect_eq "$(emu_mints "$SP_ROLE")" 1 "exactly one mint for the service principal"
	expect_eq "$(emu_counter .oauth_tokens)" 1 "one OAuth M2M token for the host"
	expect_eq "$(emu_counter .mint_failures)" 0 "no failed mint"

	# --cache-status: every identity, the counters, and never a secret.
	status=$(cache_status)
	printf '%s\n' "$status" | sed -n '1,4p' | sed 's/^/       /'
	expect_match "$status" "mints_ok_user=$NUSERS " "status counts $NUSERS user mints"
	expect_match "$status" "mints_ok_sp=1 " "status counts one SP mint"
	expect_match "$status" "oauth_tokens_ok=1 " "status counts one OAuth token"
	expect_eq "$(grep -c ' user .*shm[0-9][0-9]@example.com #' <<<"$status")" "$NUSERS" "status lists every user"
	expect_match "$(grep ' shm07@example.com #' <<<"$status")" "shm07@example.com +[0-9T:Z-]+ +[0-9T:Z-]+ +idle +1$" \
		"a user's line: role, expiry, last use, refresh state, mint count"
	if grep -qE 'shm[0-9]+-token|[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}\.' <<<"$status"; then
		_assert_result 1 "no token or credential in --cache-status" "found one"
	fi
}
run_test "$NPROCS processes x $NUSERS users in parallel: one mint per identity, host-wide" \
	test_one_mint_per_identity

# --- one refresh per lifetime ------------------------------------------------------------

# Lifetime 20 s, refresh window from 4 s before expiry; idle connections
# close within a second, so each request's new login asks the cache. Round
# 1 mints; round 2 (every user twice, in parallel, so mostly in different
# processes) comes once every window is open; round 3 follows at once.
# Each user is refreshed exactly once, by one process, with no failed
# request (a second mint anywhere would also fail a login: the emulator
# keeps only the newest credential of a role).
test_one_refresh_per_lifetime() {
	local cfg=$IT_TMP/shm-refresh.json dir=$IT_TMP/refresh t0 t1 n
	local users sp failures counters
	worker_config_with '.max_connections = 12
		| .user_pool = ((.user_pool // {}) + {max: 1, idle_timeout_ms: 300, acquire_timeout_ms: 20000})
		| .credentials = ((.credentials // {}) + {refresh_margin_ms: 4000})' "$cfg" || return
	emu_set_config '{"credential_lifetime_s": 20}' || return
	_USERS_EMU_CHANGED=1
	spawn_workers "$cfg" || return
	emu_reset
	t0=$(now_s)
	{ for n in "${NUMS[@]}"; do echo "$n r1"; done; echo "sp r1"; } | burst "$dir" 51
	t1=$(elapsed "$t0")
	expect_eq "$(mints_summary)" "$NUSERS users, min 1, max 1" "round 1 (${t1}s): one mint per user" || return
	# Every window opens at most 16 s (+1 s: whole-second expiry) after round 1.
	sleep_until "$t0" "$(awk -v t="$t1" 'BEGIN { print t + 17 }')"
	{ for n in "${NUMS[@]}"; do echo "$n r2"; echo "$n r2b"; done; echo "sp r2"; } | burst "$dir" 50
	{ for n in "${NUMS[@]}"; do echo "$n r3"; done; echo "sp r3"; } | burst "$dir" 50
	# Counted at once: the SP's eager refresher goes on refreshing.
	users=$(mints_summary)
	sp=$(emu_mints "$SP_ROLE")
	failures=$(emu_counter .mint_failures)
	counters=$(cache_status)
	counters=$(for c in mints_ok_user refreshes; do grep -o " $c=[0-9]*" <<<"$counters"; done | tr -d '\n')
	printf '       %s requests in %ss (round 1: %ss); SP minted %s times\n' "$(wc -l <"$dir/statuses")" \
		"$(elapsed "$t0")" "$t1" "$sp"
	expect_eq "$(non_200 "$dir")" "" "every request 200"
	expect_eq "$(wrong_bodies "$dir")" 0 "each user saw exactly their own row"
	expect_eq "$users" "$NUSERS users, min 2, max 2" "each user minted exactly twice: once, then one refresh"
	expect_eq "$failures" 0 "no failed mint"
	# The SP: its eager refresh every 16 s; a slow run may see a second one.
	expect_ge "$sp" 2 "the SP's eager refresh happened"
	expect_le "$sp" 3 "the SP refreshed once per 16 s at most"
	expect_eq "$counters" " mints_ok_user=$((NUSERS * 2)) refreshes=$((NUSERS + sp - 1))" \
		"the segment's counters agree with the emulator's"
	emu_set_config '{"credential_lifetime_s": 3600}'
}
run_test "lifetime 20 s: exactly one refresh per identity per lifetime, no failed request" \
	test_one_refresh_per_lifetime

# --- a process killed while holding the lock --------------------------------------------

test_killed_while_holding_the_lock() {
	local cfg=$IT_TMP/shm-lock.json dir=$IT_TMP/lock mark line victim t_kill n late
	if ! grep -q LAKEBASE_TEST_HOLD_LOCK_MS "$STACK_WORKER_BIN"; then
		skip "killed while holding the lock" "the worker was built without --enable-test-hooks"
		return 0
	fi
	worker_config_with '.max_connections = 12 | .user_pool = ((.user_pool // {}) + {max: 1})' "$cfg" || return
	spawn_workers "$cfg" LAKEBASE_TEST_HOLD_LOCK_MS=60000 LAKEBASE_TEST_HOLD_LOCK_EMAIL="$(user_email 01)" || return
	emu_reset
	for n in 02 03 04 05 06; do
		as_shm_user "$n"
		expect_status 200 || return
	done
	mark=$(log_mark "$SPAWN_LOG")
	mkdir -p "$dir"
	echo "01 first" | burst "$dir" 1 &
	local first=$!
	wait_for "log_since '$SPAWN_LOG' $mark | grep 'test hook: holding the credential cache lock'" 15
	expect_eq "$?" 0 "a process stopped mid-write holding the lock" || return
	line=$(log_since "$SPAWN_LOG" "$mark" | grep 'test hook: holding' | head -n 1)
	victim=$(grep -o ' pid=[0-9]*' <<<"$line" | cut -d= -f2)
	# Cached users and new ones (which need the lock to mint), in parallel.
	{ for n in 02 03 04 05 06; do echo "$n during"; echo "$n during-b"; done
	  for n in 07 08 09 10 11 12 13 14 15 16; do echo "$n during"; done; } | burst "$dir" 20 &
	local others=$!
	sleep 1
	kill -9 "$victim"
	t_kill=$(now_s)
	wait "$others" "$first"
	printf '       killed pid %s mid-write; answers: %s\n' "$victim" \
		"$(awk '{ print $3 }' "$dir/statuses" | sort | uniq -c | tr -s ' \n' ' ')"
	printf '       all answered %ss after the kill\n' "$(elapsed "$t_kill")"
	late=$(awk '$4 > 20 { n++ } END { print n + 0 }' "$dir/statuses")
	expect_eq "$late" 0 "nobody waited more than 20 s (no deadlock)"
	# Only requests the killed process had in hand may fail (nginx 502).
	expect_eq "$(awk '$3 != 200 && $3 != 502' "$dir/statuses" | wc -l)" 0 "every answer 200, or 502 from the killed process"
	expect_eq "$(wrong_bodies "$dir")" 0 "no answer carried another user's rows"
	# Everything works again, shm01 included: its half-written credential
	# was discarded and a whole one minted (a torn one would fail the login).
	for n in 01 02 07 16; do
		as_shm_user "$n"
		expect_status 200
		expect_body "$(user_json "$n")"
	done
	expect_eq "$(alive_spawned)" $((NPROCS - 1)) "the other processes still run"
	expect_eq "$(cache_counter lock_recoveries)" 1 "the lock was recovered once"
	expect_ge "$(emu_mints "$(user_email 01)")" 1 "shm01 was minted again"
}
run_test "a process killed (-9) holding the lock: the others go on, nothing torn" \
	test_killed_while_holding_the_lock

# --- a claimer killed or stuck mid-refresh ------------------------------------------------

# claim_then DIR USER ACTION: a first request for USER claims its mint, which
# the emulator holds for 20 s (then answers 503); ACTION (kill or stop) is
# done to the claimer; 8 more requests for USER run meanwhile. Sets
# CLAIMER and T_ACTION.
claim_then() {
	local dir=$1 n=$2 action=$3 i
	emu_reset
	emu_fault "{\"count\": 1, \"delay_ms\": 20000, \"status\": 503, \"path\": \"$CREDENTIALS_PATH\"}" || return
	mkdir -p "$dir"
	echo "$n claimer" | burst "$dir" 1 &
	CLAIM_BG=$!
	CLAIMER=
	wait_for "[[ -n \$(claimer_of '$(user_email "$n")') ]]" 10
	CLAIMER=$(claimer_of "$(user_email "$n")")
	[[ -n $CLAIMER ]] || { _assert_result 1 "a process claimed shm$n's mint" "none seen"; return 1; }
	for ((i = 1; i <= 8; i++)); do echo "$n waiter$i"; done | burst "$dir" 8 &
	WAITERS_BG=$!
	sleep 0.5
	if [[ $action == kill ]]; then
		kill -9 "$CLAIMER"
	else
		kill -STOP "$CLAIMER"
	fi
	T_ACTION=$(now_s)
}

test_claimer_killed_is_taken_over() {
	local cfg=$IT_TMP/shm-claim.json dir=$IT_TMP/claim-kill ok slowest
	worker_config_with '.max_connections = 12' "$cfg" || return
	spawn_workers "$cfg" || return
	claim_then "$dir" 20 kill || return
	wait "$WAITERS_BG" "$CLAIM_BG"
	printf '       claimer pid %s killed; answers: %s\n' "$CLAIMER" \
		"$(awk '{ print $3 }' "$dir/statuses" | sort | uniq -c | tr -s ' \n' ' ')"
	ok=$(awk '$2 ~ /^waiter/ && $3 == 200' "$dir/statuses" | wc -l)
	expect_ge "$ok" 1 "waiters in the other processes got their answer"
	expect_eq "$(awk '$2 ~ /^waiter/ && $3 != 200 && $3 != 502' "$dir/statuses" | wc -l)" 0 \
		"waiters: 200, or 502 when they were in the killed process"
	slowest=$(awk '$2 ~ /^waiter/ && $3 == 200 { if ($4 > m) m = $4 } END { print m + 0 }' "$dir/statuses")
	awk -v s="$slowest" 'BEGIN { exit !(s < 8) }'
	expect_eq "$?" 0 "taken over at once, not after the claim's deadline (slowest waiter ${slowest}s)"
	expect_eq "$(emu_mints "$(user_email 20)")" 1 "one credential minted for shm20"
	expect_ge "$(cache_counter claim_takeovers)" 1 "the segment counted the takeover"
	as_shm_user 20
	expect_status 200
}
run_test "a claimer killed (-9) mid-refresh: another process takes over at once" \
	test_claimer_killed_is_taken_over

test_stuck_claimer_is_taken_over_after_its_deadline() {
	local cfg=$IT_TMP/shm-claim-stop.json dir=$IT_TMP/claim-stop ok fastest
	worker_config_with ".max_connections = 12 | $FAST_WORKSPACE" "$cfg" || return
	spawn_workers "$cfg" || return
	claim_then "$dir" 21 stop || return
	# The waiters outside the stopped process take over after the deadline.
	wait "$WAITERS_BG"
	kill -9 "$CLAIMER"
	wait "$CLAIM_BG"
	printf '       claimer pid %s stopped; answers: %s\n' "$CLAIMER" \
		"$(awk '{ print $3 " " $4 "s" }' "$dir/statuses" | sort | tr '\n' ' ')"
	ok=$(awk '$2 ~ /^waiter/ && $3 == 200' "$dir/statuses" | wc -l)
	expect_ge "$ok" 1 "waiters in the other processes got their answer"
	fastest=$(awk '$2 ~ /^waiter/ && $3 == 200 { if (m == "" || $4 < m) m = $4 } END { print m + 0 }' "$dir/statuses")
	awk -v s="$fastest" -v d="$CLAIM_DEADLINE_S" 'BEGIN { exit !(s >= d - 2) }'
	expect_eq "$?" 0 "not before the claim's deadline (~${CLAIM_DEADLINE_S}s; first waiter ${fastest}s)"
	expect_eq "$(emu_mints "$(user_email 21)")" 1 "one credential minted for shm21"
	as_shm_user 21
	expect_status 200
}
run_test "a claimer stuck (stopped) mid-refresh: taken over after its deadline" \
	test_stuck_claimer_is_taken_over_after_its_deadline

# --- the workspace down ----------------------------------------------------------------

# Lifetime 20 s, window from 10 s before expiry. The workspace fails every
# call from 2 s to 15 s (longer than the window, shorter than the
# lifetime); traffic until 18.5 s, with idle connections closed quickly so
# new logins keep asking for the credential: not one failed request, and
# the credentials refreshed once the workspace is back.
test_outage_shorter_than_the_lifetime() {
	local cfg=$IT_TMP/shm-outage.json dir=$IT_TMP/outage t0 r=0 n timer failed_calls
	worker_config_with ".max_connections = 12 | $FAST_WORKSPACE
		| .pool = ((.pool // {}) + {idle_timeout_ms: 200})
		| .user_pool = ((.user_pool // {}) + {idle_timeout_ms: 200})
		| .credentials = ((.credentials // {}) + {refresh_margin_ms: 10000})" "$cfg" || return
	emu_set_config '{"credential_lifetime_s": 20}' || return
	_USERS_EMU_CHANGED=1
	spawn_workers "$cfg" || return
	emu_reset
	t0=$(now_s)
	# The outage runs on its own clock; requests may block in retries.
	( sleep_until "$t0" 2
	  emu_fault '{"count": 100000, "status": 503}'
	  sleep_until "$t0" 15
	  emu_counter .mint_failures >"$IT_TMP/outage-failed-calls"
	  emu_reset ) &
	timer=$!
	while before "$t0" 18.5; do
		r=$((r + 1))
		{ for n in 30 31 32 33 34; do echo "$n r$r"; done; echo "sp r$r"; } | burst "$dir" 6
		sleep 0.3   # pacing
	done
	wait "$timer"
	failed_calls=$(cat "$IT_TMP/outage-failed-calls")
	local users sp
	users=$(emu_counter '[.mints | to_entries[] | select(.key | test("^shm3[0-4]@")) | .value] | add // 0')
	sp=$(emu_mints "$SP_ROLE")
	printf '       %s requests over %ss; %s credential calls failed in the outage; after it: %s user and %s SP mints\n' \
		"$(wc -l <"$dir/statuses")" "$(elapsed "$t0")" "$failed_calls" "$users" "$sp"
	expect_eq "$(non_200 "$dir")" "" "not one failed request"
	expect_eq "$(wrong_bodies "$dir")" 0 "each user saw exactly their own row"
	expect_ge "$failed_calls" 1 "refreshes were tried (and failed) inside the window"
	expect_ge "$sp" 1 "the SP's credential was refreshed once the workspace was back"
	expect_ge "$users" 1 "users' credentials were refreshed once the workspace was back"
}
run_test "workspace down longer than the refresh window, shorter than the lifetime: no failed request" \
	test_outage_shorter_than_the_lifetime

# Lifetime 8 s; the workspace fails from 1 s on. Past expiry: 503 with a
# clear message; once it is back: 200 from the same processes.
test_outage_past_expiry_then_recovery() {
	local cfg=$IT_TMP/shm-expiry.json t0 pids
	worker_config_with ".max_connections = 12 | $FAST_WORKSPACE
		| .credentials = ((.credentials // {}) + {refresh_margin_ms: 3000})" "$cfg" || return
	emu_set_config '{"credential_lifetime_s": 8}' || return
	_USERS_EMU_CHANGED=1
	spawn_workers "$cfg" || return
	emu_reset
	t0=$(now_s)
	as_shm_user 40
	expect_status 200 || return
	http GET /api/todos?limit=1
	expect_status 200 || return
	pids=$(spawned_pids | tr '\n' ' ')
	emu_fault '{"count": 100000, "status": 503}' || return
	sleep_until "$t0" 9.5
	# New logins need a credential now; the pools' connections expired with theirs.
	as_shm_user 40
	expect_error 503 unavailable "The workspace API is unavailable."
	expect_match "$(header_value Retry-After)" '^[0-9]+$' "a 503 with Retry-After"
	http GET /api/todos?limit=1
	expect_error 503 unavailable "The workspace API is unavailable."
	emu_reset
	as_shm_user 40
	expect_status 200
	expect_body "$(user_json 40)"
	http GET /api/todos?limit=1
	expect_status 200
	expect_eq "$(spawned_pids | tr '\n' ' ')" "$pids" "the same processes"
	expect_eq "$(alive_spawned)" "$NPROCS" "all of them running"
	emu_set_config '{"credential_lifetime_s": 3600}'
}
run_test "workspace down past expiry: 503 with a clear message; back: 200, no restart" \
	test_outage_past_expiry_then_recovery

# --- eager refresh ------------------------------------------------------------------------

# user_refresh eager: a user's credential is refreshed in the background,
# without any request, before the window would make one wait.
test_eager_user_refresh() {
	local cfg=$IT_TMP/shm-eager.json status
	worker_config_with '.max_connections = 12
		| .credential_cache = ((.credential_cache // {}) + {user_refresh: "eager"})
		| .credentials = ((.credentials // {}) + {refresh_margin_ms: 3000})' "$cfg" || return
	emu_set_config '{"credential_lifetime_s": 8}' || return
	_USERS_EMU_CHANGED=1
	spawn_workers "$cfg" || return
	emu_reset
	as_shm_user 41
	expect_status 200 || return
	expect_eq "$(emu_mints "$(user_email 41)")" 1 "minted on first use"
	wait_for "[[ \$(emu_mints '$(user_email 41)') == 2 ]]" 10
	expect_eq "$?" 0 "refreshed in the background, with no request (window at 5 s)"
	as_shm_user 41
	expect_status 200
	expect_eq "$(emu_mints "$(user_email 41)")" 2 "the request did not mint"
	status=$(cache_status)
	if grep -qF "$(user_token 41)" <<<"$status"; then
		_assert_result 1 "the stored workspace token is not in --cache-status" "it is"
	fi
	emu_set_config '{"credential_lifetime_s": 3600}'
}
run_test "user_refresh eager: refreshed in the background, no request waits" test_eager_user_refresh

# The host's background refresher killed: another process's takes over and
# refreshes the SP's credential on time, with no request.
test_refresher_killed_is_replaced() {
	local cfg=$IT_TMP/shm-refresher.json refresher now_refresher
	worker_config_with '.max_connections = 12
		| .credentials = ((.credentials // {}) + {refresh_margin_ms: 4000})' "$cfg" || return
	emu_set_config '{"credential_lifetime_s": 10}' || return
	_USERS_EMU_CHANGED=1
	spawn_workers "$cfg" || return
	emu_reset
	http GET /api/todos?limit=1
	expect_status 200 || return
	wait_for "cache_status | grep 'background refresher: pid [0-9]'" 5
	refresher=$(cache_status | sed -n 's/^background refresher: pid \([0-9]*\).*/\1/p')
	[[ -n $refresher ]] || { _assert_result 1 "a refresher" "none"; return 1; }
	kill -9 "$refresher"
	wait_for "[[ \$(emu_mints '$SP_ROLE') == 2 ]]" 12
	expect_eq "$?" 0 "the SP's credential refreshed without a request (window at 6 s)"
	now_refresher=$(cache_status | sed -n 's/^background refresher: pid \([0-9]*\).*/\1/p')
	printf '       refresher pid %s killed; now pid %s\n' "$refresher" "$now_refresher"
	expect_match "$now_refresher" '^[0-9]+$' "a new refresher"
	[[ $now_refresher != "$refresher" ]]
	expect_eq "$?" 0 "another process"
	expect_eq "$(cache_counter refresher_takeovers)" 1 "the segment counted the takeover"
	http GET /api/todos?limit=1
	expect_status 200
	emu_set_config '{"credential_lifetime_s": 3600}'
}
run_test "the background refresher killed (-9): another process's takes over" \
	test_refresher_killed_is_replaced

# --- the host-wide connection budget ---------------------------------------------------------

# 4 processes may each open 8 connections, the host only 10: 20 users in
# parallel all get answers, and PostgreSQL never sees more than 10.
test_host_connection_budget() {
	local cfg=$IT_TMP/shm-budget.json dir=$IT_TMP/budget samples=$IT_TMP/budget-samples max r n
	worker_config_with '.max_connections = 8 | .max_host_connections = 10
		| .pool = ((.pool // {}) + {max: 2})
		| .user_pool = ((.user_pool // {}) + {max: 1, idle_timeout_ms: 500, acquire_timeout_ms: 20000})' "$cfg" || return
	spawn_workers "$cfg" || return
	sampler_start "$samples" || { _assert_result 1 "sampler running" "$(cat "$samples.err")"; return 1; }
	for ((r = 1; r <= 3; r++)); do
		for n in "${NUMS[@]:0:20}"; do echo "$n r$r"; done
	done | burst "$dir" 20
	sampler_stop "$samples"
	max=$(sort -n "$samples" | tail -n 1)
	printf '       %s samples, at most %s worker connections; slowest answer %ss\n' "$(wc -l <"$samples")" \
		"$max" "$(awk '{ if ($4 > m) m = $4 } END { print m + 0 }' "$dir/statuses")"
	expect_eq "$(non_200 "$dir")" "" "every request 200"
	expect_eq "$(wrong_bodies "$dir")" 0 "each user saw exactly their own row"
	expect_ge "${max:-0}" 1 "the sampler saw the workers' connections"
	expect_le "${max:-999}" 10 "PostgreSQL never showed more than max_host_connections (10)"
	expect_match "$(cache_status "$cfg" | grep '^host connections')" '^host connections \(max_host_connections 10\): (pid [0-9]+=[0-9]+ )+total=[0-9]+$' \
		"--cache-status shows each process's connections"
}
run_test "max_host_connections 10 across 4 processes: never more in pg_stat_activity" \
	test_host_connection_budget

# --- segment files refused ------------------------------------------------------------------

# start_refused PATH [NAME=VALUE...]: runs a worker with the segment at
# PATH (and that environment); sets RC and ERR (its stderr).
start_refused() {
	local seg=$1
	shift
	# shellcheck disable=SC2163 # the arguments are NAME=VALUE words
	( worker_env_defaults
	  export LAKEBASE_CREDENTIAL_CACHE_PATH=$seg
	  (($#)) && export "$@"
	  timeout 20 "$STACK_WORKER_BIN" -c "$STACK_WORKER_CONFIG" --listen "unix:$IT_TMP/refused.sock" \
		--threads 1 ) >"$IT_TMP/refused.out" 2>"$IT_TMP/refused.err"
	RC=$?
	ERR=$(cat "$IT_TMP/refused.err")
}

# expect_refused LABEL DETAIL: exit status 1 and DETAIL (exact text) said.
expect_refused() {
	expect_eq "$RC" 1 "$1: exit status"
	if grep -qF -- "$2" <<<"$ERR"; then
		_assert_result 0 "$1: message"
	else
		_assert_result 1 "$1: message" "[$2] not in: $ERR"
	fi
}

test_segment_files_refused() {
	local d=$IT_TMP/segments seg
	mkdir -p -m 0700 "$d"
	seg=$d/credentials.shm

	install -m 0644 /dev/null "$seg"
	start_refused "$seg"
	expect_refused "group/world-readable segment" \
		"credential_cache.path: $seg: has mode 0644: group and others must have no access (it holds credentials); refusing to use it (remove it or chmod 600)"

	rm -f "$seg"
	install -m 0600 -o nobody /dev/null "$seg"
	start_refused "$seg"
	expect_refused "segment of another user" \
		"credential_cache.path: $seg: is owned by uid $(id -u nobody), not by this process's uid 0; refusing to use it"

	rm -f "$seg"
	(umask 077 && printf 'PNG? no: somebody else'"'"'s file\n' >"$seg")
	start_refused "$seg"
	expect_refused "foreign file" \
		"credential_cache.path: $seg: is not a lakebase-fcgi credential cache (unknown content); refusing to overwrite it (remove it, or set credential_cache.path to another file)"
	expect_eq "$(cat "$seg")" "PNG? no: somebody else's file" "the foreign file is left alone"

	rm -f "$seg"
	ln -s "$d/elsewhere.shm" "$seg"
	start_refused "$seg"
	expect_refused "symlink" "credential_cache.path: $seg: is a symbolic link; refusing to follow it"
	expect_eq "$(ls "$d")" "credentials.shm" "nothing created behind the symlink"

	start_refused "$d/missing/credentials.shm"
	expect_refused "missing directory" \
		"credential_cache.path: $d/missing/credentials.shm: directory $d/missing does not exist"

	( worker_env_defaults
	  export LAKEBASE_CREDENTIAL_CACHE_PATH=relative/credentials.shm
	  "$STACK_WORKER_BIN" -c "$STACK_WORKER_CONFIG" --check-config ) >"$IT_TMP/check.out" 2>&1
	expect_eq "$?" 1 "--check-config refuses a relative path"
	expect_match "$(cat "$IT_TMP/check.out")" "LAKEBASE_CREDENTIAL_CACHE_PATH: must be an absolute path" \
		"the problem names the variable"
}
run_test "segment with wrong permissions, owner, a foreign file, a symlink, no directory: refused" \
	test_segment_files_refused

# deployment_start NAME SEGMENT [NAME=VALUE...]: a worker of the stack's
# config on its own socket with the segment at SEGMENT (and that
# environment), in the background; ready when it serves. Its pidfile and
# log are $IT_TMP/NAME.pid and .log.
deployment_start() {
	local name=$1 seg=$2
	shift 2
	# shellcheck disable=SC2163 # the arguments are NAME=VALUE words
	( worker_env_defaults
	  export LAKEBASE_CREDENTIAL_CACHE_PATH=$seg
	  (($#)) && export "$@"
	  start_bg "$name" "$IT_TMP/$name.pid" "$IT_TMP/$name.log" "$STACK_WORKER_BIN" \
		-c "$STACK_WORKER_CONFIG" --listen "unix:$IT_TMP/$name.sock" --threads 1 ) >/dev/null 2>&1 &&
		wait_for "grep -q 'msg=serving' '$IT_TMP/$name.log'" 15
}

# The segment belongs to one deployment (workspace host, endpoint, database,
# service principal): another one, here another database, is refused while
# the first one's process holds the segment, and once it is gone finds the
# segment recreated empty rather than the first one's SP credential and
# role. The same deployment restarting keeps it.
test_segment_of_another_deployment() {
	local d=$IT_TMP/deployments seg
	mkdir -p -m 0700 "$d"
	seg=$d/credentials.shm
	at_exit "stop_pid '$IT_TMP/deploy-a.pid'; stop_pid '$IT_TMP/deploy-b.pid'"
	deployment_start deploy-a "$seg" || { _assert_result 1 "deployment A serves" "$(tail -n 5 "$IT_TMP/deploy-a.log")"; return 1; }
	start_refused "$seg" PGDATABASE=another_database
	expect_refused "another deployment while A runs" \
		"credential_cache.path: $seg: holds the credentials of another deployment (another workspace host, Lakebase endpoint, database or service principal) whose processes are running; give each deployment its own credential_cache.path"
	stop_pid "$IT_TMP/deploy-a.pid"
	deployment_start deploy-a "$seg" || return
	expect_eq "$(grep -c 'recreating a segment' "$IT_TMP/deploy-a.log")" 0 "A again: its own segment, kept"
	stop_pid "$IT_TMP/deploy-a.pid"
	deployment_start deploy-b "$seg" PGDATABASE=another_database || { _assert_result 1 "deployment B serves" "$(tail -n 5 "$IT_TMP/deploy-b.log")"; return 1; }
	expect_eq "$(grep -c 'msg="credential cache: recreating a segment of another deployment (no process uses it)"' "$IT_TMP/deploy-b.log")" 1 \
		"B, alone: the segment recreated"
	stop_pid "$IT_TMP/deploy-b.pid"
}
run_test "a segment of another deployment: refused while in use, recreated when not; the same one keeps it" \
	test_segment_of_another_deployment

# --- back to normal ---------------------------------------------------------------------------

test_restore() {
	stop_workers
	users_restore || return
	pidfile_alive "$STACK_WORKER_PID" || worker_start >/dev/null 2>&1
	drop_users
	expect_eq "$(count_user_roles)" 0 "test roles dropped"
	as_user GET /api/my/todos alice@example.com alice-token-1
	expect_status 200
	expect_body "$SEED_ALICE_JSON"
}
run_test "normal emulator and worker restored, test users removed" test_restore

summary
