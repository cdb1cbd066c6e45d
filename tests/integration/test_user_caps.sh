#!/usr/bin/env bash
# test_user_caps.sh - the per-user pool cache under its bounds, watched from
# pg_stat_activity: 20 users in parallel against max_connections 4, idle
# close at the configured time, and credentials expiring mid-traffic.
# Needs the running stack (scripts/stack.sh start). Adds 20 roles and rows
# and restarts the emulator and the worker; removes and restores all of it
# at the end.
set -uo pipefail
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/user_lib.sh
source "$(dirname "$0")/user_lib.sh"

ALICE=alice@example.com
NUSERS=20
ROUNDS=5
CAP=4

mapfile -t NUMS < <(seq -f '%02g' 1 "$NUSERS")
BULK_KIND=user
BULK_ROW_PREFIX=00000000-0000-4000-8000-0000000010

# pg_log_max_sessions MARK: the most worker sessions open at once, replaying
# the PostgreSQL log after MARK (logins and disconnections, per backend pid).
pg_log_max_sessions() {
	log_since "$USERS_PG_LOG" "$1" | awk -v app="$USERS_APP" '
		function pid() { match($0, /\[[0-9]+\]/); return substr($0, RSTART + 1, RLENGTH - 2) }
		index($0, "connection authorized: ") && index($0, "application_name=" app " ") {
			open[pid()] = 1; if (++n > max) max = n; next }
		index($0, "/" app " LOG:  disconnection: ") { p = pid(); if (p in open) { delete open[p]; n-- } }
		END { print max + 0 }'
}

# --- setup: 20 users with a role, a token and one row each ---------------------------

test_setup() {
	bulk_users_setup "$IT_TMP/emulator-users.json"
}
run_test "setup: $NUSERS users (roles, tokens, one row each)" test_setup

# --- caps ------------------------------------------------------------------------------

test_caps() {
	local cfg=$IT_TMP/worker-caps.json dir=$IT_TMP/burst samples=$IT_TMP/samples
	local n r bad=0 max nsamples expected got pg_mark logmax
	worker_config_with ".max_connections = $CAP
		| .pool = ((.pool // {}) + {max: 2, acquire_timeout_ms: 10000})
		| .user_pool = ((.user_pool // {}) + {max: 1, acquire_timeout_ms: 10000})" "$cfg" || return
	users_worker_restart "$cfg" || return
	pg_mark=$(log_mark "$USERS_PG_LOG")
	mkdir -p "$dir"
	sampler_start "$samples" || { _assert_result 1 "sampler running" "$(cat "$samples.err")"; return 1; }
	# Round-major, so 20 different users are in flight at once; a few SP
	# requests share the budget. Each curl is bounded; so is the whole.
	# shellcheck disable=SC2016 # the inner script's $0..$2 are xargs' arguments
	for ((r = 1; r <= ROUNDS; r++)); do
		for n in "${NUMS[@]}"; do echo "$n $r"; done
		echo "sp $r"
	done | BURST_URL=$LAKEBASE_URL timeout 120 xargs -P "$NUSERS" -L 1 sh -c '
		if [ "$1" = sp ]; then
			curl -sS --max-time 30 -o "$0/sp.$2" -w "sp $2 %{http_code}\n" "$BURST_URL/api/todos?limit=500"
		else
			curl -sS --max-time 30 -o "$0/$1.$2" -w "$1 $2 %{http_code}\n" \
				-H "X-Forwarded-Email: user$1@example.com" -H "X-Forwarded-Access-Token: user$1-token-1" \
				"$BURST_URL/api/my/todos"
		fi' "$dir" >"$dir/statuses" 2>"$dir/errors"
	sampler_stop "$samples"

	expect_eq "$(wc -l <"$dir/statuses")" $(((NUSERS + 1) * ROUNDS)) "every request answered"
	expect_eq "$(awk '$3 != 200' "$dir/statuses" | wc -l)" 0 "every request 200 (non-200: $(awk '$3 != 200 { printf "%s ", $0 }' "$dir/statuses"))"
	for n in "${NUMS[@]}"; do
		expected=$(user_json "$n")
		for ((r = 1; r <= ROUNDS; r++)); do
			got=$(cat "$dir/$n.$r" 2>/dev/null)
			if [[ $got != "$expected" ]]; then
				bad=$((bad + 1))
				printf '       user%s round %s: %s\n' "$n" "$r" "${got:0:200}"
			fi
		done
	done
	expect_eq "$bad" 0 "each user saw exactly their own row"
	max=$(sort -n "$samples" | tail -n 1)
	nsamples=$(wc -l <"$samples")
	printf '       %s samples of pg_stat_activity, max %s worker connections\n' "$nsamples" "$max"
	expect_ge "$nsamples" 5 "the sampler ran during the burst"
	expect_ge "${max:-0}" 1 "the sampler saw the worker's connections"
	expect_le "${max:-999}" "$CAP" "pg_stat_activity never showed more than $CAP of the worker's connections"
	logmax=$(pg_log_max_sessions "$pg_mark")
	printf '       PostgreSQL log: at most %s worker sessions at once, %s logins\n' "$logmax" \
		"$(log_since "$USERS_PG_LOG" "$pg_mark" | grep -c "connection authorized: .*application_name=$USERS_APP ")"
	expect_le "$logmax" "$CAP" "the PostgreSQL log never had more than $CAP worker sessions open at once"
	# The connections' credentials stay cached: one mint per user.
	expect_eq "$(emu_counter "[.mints | to_entries[] | select(.key | test(\"^user[0-9]+@\")) | .value] | (length|tostring) + \" users, max \" + (max|tostring)")" \
		"$NUSERS users, max 1" "one mint per user"
	expect_le "$(pg_count_worker_conns)" "$CAP" "at most $CAP connections after the burst"
}
run_test "caps: $NUSERS users in parallel, max_connections $CAP, never more in pg_stat_activity" test_caps

# --- idle close ------------------------------------------------------------------------

test_idle_close() {
	local cfg=$IT_TMP/worker-idle.json t0 gone_ms pids
	worker_config_with '.user_pool = ((.user_pool // {}) + {idle_timeout_ms: 1500}) | .user_pool_remove_after_ms = 3000' "$cfg" || return
	users_worker_restart "$cfg" || return
	as_user GET /api/my/todos "$ALICE" alice-token-1
	t0=$EPOCHREALTIME
	expect_status 200 || return
	expect_body "$SEED_ALICE_JSON"
	pids=$(pg_worker_pids "$ALICE")
	[[ -n $pids ]] || { _assert_result 1 "alice's connection open right after the request" "none"; return 1; }
	if wait_for "[[ -z \$(pg_worker_pids '$ALICE') ]]" 6; then
		gone_ms=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%d", (b - a) * 1000 }')
		printf '       alice connection %s closed after %s ms (idle_timeout_ms 1500, reaper every 1 s)\n' "$pids" "$gone_ms"
		expect_ge "$gone_ms" 1300 "not closed before the idle timeout"
		expect_le "$gone_ms" 4000 "closed within idle timeout + reaper slack"
	else
		_assert_result 1 "alice's idle connection closed within 6 s" "still open: $(pg_worker_pids "$ALICE")"
	fi
	# After the pool's removal time (not visible from outside), alice is
	# served again on a new login with her cached credential: no mint.
	local mints
	mints=$(emu_counter ".mints[\"$ALICE\"] // 0")
	sleep 2 # past user_pool_remove_after_ms (3 s) since the last use; nothing to poll for
	as_user GET /api/my/todos "$ALICE" alice-token-1
	expect_status 200
	expect_body "$SEED_ALICE_JSON"
	expect_eq "$(emu_counter ".mints[\"$ALICE\"] // 0")" "$mints" "no new mint after the pool was removed"
	expect_eq "$(pg_worker_pids "$ALICE" | wc -w)" 1 "one new connection for alice"
}
run_test "idle close: alice's connection closes ~idle_timeout_ms after use" test_idle_close

# --- credential expiry mid-traffic ---------------------------------------------------------------

test_expiry_mid_traffic() {
	local cfg=$IT_TMP/worker-expiry.json mints0 mints1 total=0 failed=0 end
	emu_set_config '{"credential_lifetime_s": 6}' || return
	_USERS_EMU_CHANGED=1
	worker_config_with '.credentials = ((.credentials // {}) + {refresh_margin_ms: 2000})' "$cfg" || return
	users_worker_restart "$cfg" || return
	mints0=$(emu_counter ".mints[\"$ALICE\"] // 0")
	end=$((SECONDS + 15))
	while ((SECONDS < end && total < 2000)); do
		as_user GET /api/my/todos "$ALICE" alice-token-1
		total=$((total + 1))
		if [[ $HTTP_STATUS != 200 || $HTTP_BODY != "$SEED_ALICE_JSON" ]]; then
			failed=$((failed + 1))
			printf '       request %s: %s %s\n' "$RID" "$HTTP_STATUS" "${HTTP_BODY:0:200}"
		fi
		sleep 0.1 # pacing: traffic spread over several credential lifetimes
	done
	mints1=$(emu_counter ".mints[\"$ALICE\"] // 0")
	printf '       %s requests over 15 s, %s alice mints (lifetime 6 s)\n' "$total" "$((mints1 - mints0))"
	expect_eq "$failed" 0 "no failed request"
	expect_ge "$((mints1 - mints0))" 3 "alice's credential was refreshed (>= 2 refreshes after the first mint)"
	emu_set_config '{"credential_lifetime_s": 3600}'
}
run_test "credential expiry mid-traffic (lifetime 6 s): no failed request" test_expiry_mid_traffic

# --- which connection goes when the budget is spent ------------------------------------

# as_bulk_user NUM: one request of userNUM, which must see exactly their row.
as_bulk_user() {
	as_user GET /api/my/todos "$(user_email "$1")" "$(user_token "$1")"
	expect_status 200 && expect_body "$(user_json "$1")"
}

test_evicts_coldest() {
	local cfg=$IT_TMP/worker-evict.json hot_pid i
	worker_config_with '.max_connections = 2 | .pool = ((.pool // {}) + {max: 1}) | .user_pool = ((.user_pool // {}) + {max: 1})' "$cfg" || return
	users_worker_restart "$cfg" || return
	# user01 is the busy one, then user02 comes by once: the budget is spent.
	for i in 1 2 3 4 5; do as_bulk_user 01 || return; done
	as_bulk_user 02 || return
	hot_pid=$(pg_worker_pids "$(user_email 01)")
	expect_eq "$(pg_count_worker_conns)" 2 "user01 and user02 hold the 2 connections" || return
	# user03 needs one: user02's goes (1 request), although user01's has
	# been idle longer (least recently used would close it).
	as_bulk_user 03 || return
	# (its backend exits just after the close: poll, bounded)
	wait_for "[[ -z \$(pg_worker_pids '$(user_email 02)') ]]" 5
	expect_eq "$(pg_worker_pids "$(user_email 02)")" "" "user02's connection was closed for user03"
	expect_eq "$(pg_worker_pids "$(user_email 01)")" "$hot_pid" "user01 kept its connection"
	as_bulk_user 01
	expect_eq "$(pg_worker_pids "$(user_email 01)")" "$hot_pid" "user01 served on the same connection"
}
run_test "eviction: the budget closes the connection of the user with the fewest recent requests" test_evicts_coldest

# A session with many temporary tables takes a while to exit (PostgreSQL
# drops them first). The budget unit of an evicted connection must not go
# to the next login before its backend is gone, or PostgreSQL sees one
# connection more than max_connections meanwhile.
SLOW_EXIT_ROUTE='{ "method": "GET", "path": "/api/it-temp-tables", "auth": "on-behalf-of-user",
  "sql": "SELECT app.it_make_temp_tables(:n) AS n",
  "params": { "n": { "in": "query", "type": "int", "required": true, "min": 1, "max": 2000 } },
  "result": "one", "statement_timeout_ms": 30000 }'

test_eviction_waits_for_backend_exit() {
	local cfg=$IT_TMP/worker-slow-exit.json pg_mark i
	pg_admin_sql "CREATE OR REPLACE FUNCTION app.it_make_temp_tables(n int) RETURNS int
		LANGUAGE plpgsql AS \$\$ BEGIN
			FOR i IN 1..n LOOP EXECUTE format('CREATE TEMP TABLE it_temp_%s (x int)', i); END LOOP;
			RETURN n; END \$\$" >/dev/null || return
	worker_config_with ".max_connections = 2 | .pool = ((.pool // {}) + {max: 1})
		| .user_pool = ((.user_pool // {}) + {max: 1}) | .routes += [$SLOW_EXIT_ROUTE]" "$cfg" || return
	users_worker_restart "$cfg" || return
	pg_mark=$(log_mark "$USERS_PG_LOG")
	# user01's session gets 300 temporary tables, then user02 is the busier one.
	as_user GET '/api/it-temp-tables?n=300' "$(user_email 01)" "$(user_token 01)"
	expect_status 200 || return
	for i in 1 2 3; do as_bulk_user 02 || return; done
	# user03 needs a connection: user01's goes, and its backend takes a while.
	as_bulk_user 03 || return
	wait_for "[[ -z \$(pg_worker_pids '$(user_email 01)') ]]" 10
	expect_eq "$(pg_worker_pids "$(user_email 01)")" "" "user01's connection was closed for user03"
	expect_le "$(pg_log_max_sessions "$pg_mark")" 2 \
		"the PostgreSQL log never had more than 2 worker sessions open at once (user03 logged in after user01's backend exited)"
}
run_test "eviction: the next login waits until the evicted connection's backend has exited" \
	test_eviction_waits_for_backend_exit

# A budget of 16 or more keeps one unit free: once a login takes the last
# one, a connection of a user who came by once is closed off the request
# path, so the next new user logs in without closing one first. A user
# with several requests keeps theirs, although least recently used.
KEEPER_BUDGET=16

# expect_unit_free MESSAGE: once the keeper is done (bounded wait), one of
# the $KEEPER_BUDGET units is free: $((KEEPER_BUDGET - 1)) connections.
expect_unit_free() {
	wait_for "[[ \$(pg_count_worker_conns) -eq $((KEEPER_BUDGET - 1)) ]]" 5
	expect_eq "$(pg_count_worker_conns)" $((KEEPER_BUDGET - 1)) "$1"
}

test_budget_keeps_unit_free() {
	local cfg=$IT_TMP/worker-keeper.json hot_pid last_pid i
	worker_config_with ".max_connections = $KEEPER_BUDGET | .pool = ((.pool // {}) + {max: 1})
		| .user_pool = ((.user_pool // {}) + {max: 1})" "$cfg" || return
	users_worker_restart "$cfg" || return
	for i in 1 2 3; do as_bulk_user 01 || return; done
	hot_pid=$(pg_worker_pids "$(user_email 01)")
	# One request each of users 02..16: with user01's, 16 user connections
	# (and the service principal's, if open) want the 16 units.
	for i in $(seq -f '%02g' 2 "$KEEPER_BUDGET"); do as_bulk_user "$i" || return; done
	last_pid=$(pg_worker_pids "$(user_email "$KEEPER_BUDGET")")
	expect_unit_free "one unit of $KEEPER_BUDGET free with no request under way" || return
	expect_eq "$(pg_worker_pids "$(user_email 01)")" "$hot_pid" "user01 (3 requests) kept its connection"
	expect_eq "$(pg_worker_pids "$(user_email "$KEEPER_BUDGET")")" "$last_pid" "the newest user kept theirs"
	# The next new user takes the free unit; another is freed after it.
	as_bulk_user 17 || return
	expect_unit_free "one unit free again after user17's login"
	expect_match "$(pg_worker_pids "$(user_email 17)")" "^[0-9]+$" "user17 holds one connection"
	expect_eq "$(pg_worker_pids "$(user_email 01)")" "$hot_pid" "user01 still has its connection"
}
run_test "eviction: a budget of $KEEPER_BUDGET keeps one unit free, closing a one-request user's connection" \
	test_budget_keeps_unit_free

# Under 16 units one free unit is too large a share of the warm
# connections: a budget of 4 held by 4 one-request users keeps all 4. The
# keeper above closes within milliseconds; a second of watching is ample.
test_small_budget_keeps_no_unit_free() {
	local cfg=$IT_TMP/worker-small-budget.json i
	worker_config_with '.max_connections = 4 | .pool = ((.pool // {}) + {max: 1}) | .user_pool = ((.user_pool // {}) + {max: 1})' "$cfg" || return
	users_worker_restart "$cfg" || return
	for i in 01 02 03 04; do as_bulk_user "$i" || return; done
	wait_for "(( \$(closed_total evicted) > 0 ))" 1
	expect_eq "$(closed_total evicted)" 0 "no connection closed to keep a unit free"
	expect_eq "$(pg_count_worker_conns)" 4 "4 one-request users hold the 4 units"
}
run_test "eviction: a budget under $KEEPER_BUDGET keeps no unit free" test_small_budget_keeps_no_unit_free

# Regular users that just fit the budget are never thinned to keep a unit
# free: each would only log in again.
KEEPER_FOUND_NONE='connection budget spent: no idle connection of an occasional user to close'

# fill_budget_with_regulars: a worker with the keeper and debug logging
# whose $KEEPER_BUDGET units are held by users 01..16, 2 requests each.
fill_budget_with_regulars() {
	local cfg=$IT_TMP/worker-keeper-debug.json i
	worker_config_with ".max_connections = $KEEPER_BUDGET | .log_level = \"debug\"
		| .pool = ((.pool // {}) + {max: 1}) | .user_pool = ((.user_pool // {}) + {max: 1})" "$cfg" || return
	users_worker_restart "$cfg" || return
	for i in $(seq -f '%02g' 1 "$KEEPER_BUDGET"); do
		as_bulk_user "$i" && as_bulk_user "$i" || return
	done
	expect_eq "$(pg_count_worker_conns)" "$KEEPER_BUDGET" "$KEEPER_BUDGET users of 2 requests hold the $KEEPER_BUDGET units"
}

test_budget_keeper_spares_regulars() {
	local first_pid mark
	fill_budget_with_regulars || return
	first_pid=$(pg_worker_pids "$(user_email 01)")
	# The keeper looks once a second while the budget is spent: after two
	# looks that found nothing to close, every connection is still open.
	mark=$(log_mark "$USERS_WORKER_LOG")
	wait_for "(( \$(log_since '$USERS_WORKER_LOG' $mark | grep -cF '$KEEPER_FOUND_NONE') >= 2 ))" 5
	expect_ge "$(log_since "$USERS_WORKER_LOG" "$mark" | grep -cF "$KEEPER_FOUND_NONE")" 2 \
		"the keeper looked twice and found no occasional user's connection"
	expect_eq "$(pg_count_worker_conns)" "$KEEPER_BUDGET" "no connection closed to free a unit"
	expect_eq "$(pg_worker_pids "$(user_email 01)")" "$first_pid" "user01 (least recently used) kept its connection"
}
run_test "eviction: the kept unit is never freed by closing a regular user's connection" \
	test_budget_keeper_spares_regulars

# A first request that finds the budget spent closes a connection on its
# own path; the keeper then stands aside for a second (first requests are
# coming faster than it frees units) before it closes one more. Here the
# only pool cold enough for it is user17's, so it closes that one, at
# least a second after user17's request closed user01's. The log's
# timestamps tell: without standing aside it closes within the second.
EVICTED_LINE='msg="pool connection closed" pool=user:[0-9a-f]* reason=evicted'

# log_ts_seconds: the ts= of each log line on stdin, as seconds since the epoch.
log_ts_seconds() {
	sed -n 's/^ts=\([^ ]*\) .*/\1/p' | while read -r ts; do date -d "$ts" +%s.%3N; done
}

test_budget_keeper_stands_aside() {
	local mark times
	fill_budget_with_regulars || return
	mark=$(log_mark "$USERS_WORKER_LOG")
	as_bulk_user 17 || return
	wait_for "(( \$(log_since '$USERS_WORKER_LOG' $mark | grep -c '$EVICTED_LINE') >= 2 ))" 5
	times=$(log_since "$USERS_WORKER_LOG" "$mark" | grep "$EVICTED_LINE" | head -n 2 | log_ts_seconds | paste -sd ' ')
	expect_match "$times" '^[0-9.]+ [0-9.]+$' "two connections closed: user01's by the request, then one by the keeper" || return
	printf '       closed at %s\n' "$times"
	expect_eq "$(awk -v t="$times" 'BEGIN { split(t, a, " "); print (a[2] - a[1] >= 0.99) ? "yes" : "no" }')" yes \
		"the keeper closed its connection at least 1 s after the request's own"
	expect_unit_free "one unit free again"
	expect_eq "$(pg_worker_pids "$(user_email 17)")" "" "it closed user17's connection (one request: the only cold pool)"
}
run_test "eviction: after a first request closed a connection on its path, the keeper stands aside for a second" \
	test_budget_keeper_stands_aside

# users_pids FIRST LAST: the PIDs of the connections of users FIRST..LAST, on one line.
users_pids() {
	local i
	for i in $(seq -f '%02g' "$1" "$2"); do pg_worker_pids "$(user_email "$i")"; done | paste -sd ' '
}

# A renewal logs the replacement in first and may take the free unit for
# it; the unit comes back when the replaced connection closes, so the
# keeper must not close an occasional user's connection meanwhile.
# user01's credential lives 8 s (renewal due 4 s before expiry), the other
# users' an hour (a restarted worker starts with an empty cache: every
# user mints).
test_budget_keeper_ignores_renewal() {
	local cfg=$IT_TMP/worker-keeper-renew.json cold_pids evicted0 renewed end i
	worker_config_with ".max_connections = $KEEPER_BUDGET | .credentials = ((.credentials // {}) + {refresh_margin_ms: 4000})
		| .pool = ((.pool // {}) + {max: 1}) | .user_pool = ((.user_pool // {}) + {max: 1})" "$cfg" || return
	users_worker_restart "$cfg" || return
	_USERS_EMU_CHANGED=1
	emu_set_config '{"credential_lifetime_s": 8}' || return
	as_bulk_user 01 && as_bulk_user 01 || return
	emu_set_config '{"credential_lifetime_s": 3600}' || return
	for i in $(seq -f '%02g' 2 "$KEEPER_BUDGET"); do as_bulk_user "$i" || return; done
	expect_unit_free "one unit of $KEEPER_BUDGET free before the renewal" || return
	cold_pids=$(users_pids 2 "$KEEPER_BUDGET")
	evicted0=$(closed_total evicted)
	# user01's requests past the renewal point ask for a new credential;
	# the maintenance thread then logs the replacement in on the free unit.
	end=$((SECONDS + 15))
	while (($(closed_total renewed) < 1 && SECONDS < end)); do
		as_bulk_user 01 || return
		sleep 0.3 # pacing: one request per maintenance pass or so
	done
	renewed=$(closed_total renewed)
	expect_ge "$renewed" 1 "user01's connection was renewed" || return
	expect_unit_free "one unit free again after the renewal"
	expect_eq "$(closed_total evicted)" "$evicted0" "no connection closed to make room during the renewal"
	expect_eq "$(users_pids 2 "$KEEPER_BUDGET")" "$cold_pids" "every occasional user kept their connection"
}
run_test "eviction: a renewal's replacement on the free unit does not make the keeper close a connection" \
	test_budget_keeper_ignores_renewal

# --- back to normal --------------------------------------------------------------------------

test_restore() {
	pg_admin_sql "DROP FUNCTION IF EXISTS app.it_make_temp_tables(int)" >/dev/null
	users_restore || return
	drop_users
	expect_eq "$(count_user_roles)" 0 "test roles dropped"
	expect_eq "$(emu_counter '.mints | has("user01@example.com")')" false "normal emulator config"
	as_user GET /api/my/todos "$ALICE" alice-token-1
	expect_status 200
	expect_body "$SEED_ALICE_JSON"
}
run_test "normal emulator and worker restored, test users removed" test_restore

summary
