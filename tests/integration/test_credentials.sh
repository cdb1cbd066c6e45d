#!/usr/bin/env bash
# test_credentials.sh - the service principal's database credential against
# the real emulator: a short-lived credential replaced without a failed
# request, transient mint failures retried, a permanent one failing fast
# (once), the workspace API down and back, and credentials or tokens that
# the database or the workspace stopped accepting; a user's connections
# renewed before their credential expires, and refreshed off the request
# path.
#
# Needs the stack (scripts/stack.sh start). Restarts the emulator and the
# worker; puts both back as scripts/stack.sh started them at the end.
set -uo pipefail
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"

CREDENTIALS_PATH=/api/2.0/postgres/credentials
SP_ROLE=${LAKEBASE_SP_CLIENT_ID:-lakebase-sp}

# emulator_with CONFIG: the emulator (re)started with CONFIG, unless it
# already runs with it. Tests start from the normal one (the stack's config).
EMU_RUNNING_CONFIG=$STACK_EMU_CONFIG
emulator_with() {
	if [[ $EMU_RUNNING_CONFIG == "$1" ]] && pidfile_alive "$STACK_EMU_PID"; then
		return 0
	fi
	emulator_stop
	emulator_start "$1" && EMU_RUNNING_CONFIG=$1
}

restore_normal_stack() {
	emulator_with "$STACK_EMU_CONFIG" >/dev/null 2>&1 || echo "WARNING: could not restart the emulator" >&2
	worker_restart >/dev/null 2>&1 || echo "WARNING: could not restart the normal worker" >&2
	pg_admin_sql 'ALTER ROLE "alice@example.com" CONNECTION LIMIT -1' >/dev/null 2>&1 ||
		echo "WARNING: could not lift alice's connection limit" >&2
}
at_exit restore_normal_stack

# fresh_worker: the normal emulator with zeroed counters and no pending
# faults, and a new normal worker (empty credential cache, no connections).
fresh_worker() {
	emulator_with "$STACK_EMU_CONFIG" && worker_restart && emu_reset
}

now_s() {
	printf '%s\n' "$EPOCHREALTIME"
}

# short_lifetime_stack LIFETIME NAME FILTER: the emulator minting
# credentials that live LIFETIME seconds, and the worker restarted with
# the stack's config plus jq FILTER (as it-credentials-NAME.json).
short_lifetime_emu_cfg() {
	echo "$STACK_DIR/it-emulator-short-lifetime-$1.json"
}

short_lifetime_stack() {
	local emu_cfg cfg=$STACK_DIR/it-credentials-$2.json
	emu_cfg=$(short_lifetime_emu_cfg "$1")
	emulator_config "$emu_cfg" "$1" && worker_config_derive "$cfg" "$3" &&
		emulator_with "$emu_cfg" && worker_restart "$cfg"
}

# --- expiry -------------------------------------------------------------------------

# Credentials live 6 s and the worker refreshes 2 s before expiry; for 3
# lifetimes every request (paced, one at a time) must succeed while the
# emulator mints at least two replacements. In password mode a new mint
# invalidates the previous credential for new logins, so a worker that
# opened a connection with a stale one would fail a request here.
test_expiring_credential_is_replaced_without_a_failed_request() {
	local lifetime=6 deadline requests=0 failed=0 code mints0 mints1 statuses=''
	short_lifetime_stack "$lifetime" refresh-margin '.credentials.refresh_margin_ms = 2000' || return
	mints0=$(emu_mints "$SP_ROLE")
	deadline=$(awk -v n="$(now_s)" -v l="$lifetime" 'BEGIN { printf "%.3f", n + 3 * l }')
	while awk -v n="$(now_s)" -v d="$deadline" 'BEGIN { exit !(n < d) }'; do
		code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$LAKEBASE_URL/api/todos?limit=1")
		requests=$((requests + 1))
		if [[ $code != 200 ]]; then
			failed=$((failed + 1))
			statuses+=" #$requests:$code"
		fi
		sleep 0.05   # pacing, not synchronisation
	done
	mints1=$(emu_mints "$SP_ROLE")
	printf '       %d requests over %d s, %d credentials minted\n' "$requests" $((3 * lifetime)) $((mints1 - mints0))
	expect_eq "$failed" 0 "no failed request (failures:${statuses:- none})"
	(( mints1 - mints0 >= 2 ))
	expect_eq "$?" 0 "at least 2 mints for $SP_ROLE in 3 lifetimes (got $((mints1 - mints0)))"
	expect_eq "$(emu_counter .mint_failures)" 0 "no failed mint"
	emulator_with "$STACK_EMU_CONFIG"
}

# A user's connection is replaced before its credential expires: the first
# request past the renewal point (3 s before expiry here) mints once, the
# worker's maintenance thread logs in again with the new credential, and
# no connection ever reaches its expiry. Credentials live 8 s; one user
# request every 0.2 s for 20 s.
test_user_connections_renewed_before_expiry() {
	local alice=alice@example.com deadline requests=0 failed=0 statuses='' out renewed expired mints
	short_lifetime_stack 8 renew '.credentials.refresh_margin_ms = 3000' || return
	deadline=$(awk -v n="$(now_s)" 'BEGIN { printf "%.3f", n + 20 }')
	while awk -v n="$(now_s)" -v d="$deadline" 'BEGIN { exit !(n < d) }'; do
		out=$(curl -s -w ' %{http_code}' --max-time 10 -H "X-Forwarded-Email: $alice" \
			-H 'X-Forwarded-Access-Token: alice-token-1' "$LAKEBASE_URL/api/my/todos")
		requests=$((requests + 1))
		if [[ $out != *'"owner":"alice@example.com"}] 200' ]]; then
			failed=$((failed + 1))
			statuses+=" #$requests:${out##* }"
		fi
		sleep 0.2   # pacing, not synchronisation
	done
	renewed=$(closed_total renewed)
	expired=$(closed_total expired_credential)
	mints=$(emu_mints "$alice")
	printf '       %d requests in 20 s; %s mints for alice; connections renewed %s, expired %s\n' \
		"$requests" "$mints" "$renewed" "$expired"
	expect_eq "$failed" 0 "every request 200 with alice's rows (failures:${statuses:- none})"
	expect_ge "$mints" 3 "alice's credential refreshed at least twice (3 mints)"
	expect_ge "$renewed" 2 "connections replaced before expiry at least twice"
	expect_eq "$expired" 0 "no connection reached its credential's expiry"
	emulator_with "$STACK_EMU_CONFIG"
}

# On a pool so busy that its connection is never idle, renewal logs the
# replacement in first, off the request path, and swaps it in when the due
# connection is returned: no request logs in again. Alice's pool holds one
# connection (user_pool.max 1) and two clients keep it busy with 0.2 s
# statements, each waiting while the other's runs. Credentials live 12 s
# and are due 5-6 s before expiry; 15 s of load spans one renewal.
# alice_get_until DEADLINE PATH [PAUSE]: alice's GETs of PATH one after
# the other, PAUSE seconds apart, until DEADLINE; prints each status.
alice_get_until() {
	while awk -v n="$(now_s)" -v d="$1" 'BEGIN { exit !(n < d) }'; do
		curl -s -o /dev/null -w '%{http_code}\n' --max-time 10 -H 'X-Forwarded-Email: alice@example.com' \
			-H 'X-Forwarded-Access-Token: alice-token-1' "$LAKEBASE_URL$2"
		[[ -z ${3:-} ]] || sleep "$3"   # pacing, not synchronisation
	done
}

# two_clients SECONDS OUT PATH1 PATH2 [PAUSE]: alice_get_until on PATH1 and
# on PATH2 at once for SECONDS (statuses in OUT.1 and OUT.2); prints the
# number of requests and of those not answered 200.
two_clients() {
	local deadline pid
	deadline=$(awk -v n="$(now_s)" -v s="$1" 'BEGIN { printf "%.3f", n + s }')
	alice_get_until "$deadline" "$3" "${5:-}" >"$2.1" &
	pid=$!
	alice_get_until "$deadline" "$4" "${5:-}" >"$2.2"
	wait "$pid"
	echo "$(cat "$2.1" "$2.2" | wc -l) $(cat "$2.1" "$2.2" | grep -cv '^200$')"
}

test_busy_connection_renewed_without_a_login_on_the_request_path() {
	local out=$STACK_DIR/it-busy-renew.out mark logins renewed expired requests failed
	short_lifetime_stack 12 busy-renew '.credentials.refresh_margin_ms = 6000 | .user_pool.max = 1 | .log_level = "debug"
		| .routes += [{ "method": "GET", "path": "/api/my/slow", "auth": "on-behalf-of-user",
				"sql": "SELECT true AS slept FROM pg_catalog.pg_sleep(0.2)", "params": {}, "result": "one" }]' || return
	mark=$(log_mark "$STACK_WORKER_LOG")
	read -r requests failed < <(two_clients 15 "$out" /api/my/slow /api/my/slow)
	log_since "$STACK_WORKER_LOG" "$mark" >"$out.log"
	logins=$(grep -c 'msg="pool connection opened" pool=user:' "$out.log")
	renewed=$(grep -c 'msg="pool connection closed" pool=user:[0-9a-f]* reason=renewed' "$out.log")
	expired=$(closed_total expired_credential)
	printf '       %d requests; logins on the request path %s, connections renewed %s, expired %s\n' \
		"$requests" "$logins" "$renewed" "$expired"
	expect_eq "$failed" 0 "every request 200"
	expect_ge "$requests" 40 "the two clients kept the connection busy (>= 40 requests of 0.2 s)"
	expect_eq "$logins" 1 "one login on the request path: alice's first request"
	expect_ge "$renewed" 1 "alice's connection was renewed"
	expect_eq "$expired" 0 "no connection reached its credential's expiry"
	emulator_with "$STACK_EMU_CONFIG"
}

# A busy connection due for renewal gets one replacement, parked until it
# is returned, even when its pool has room for more: one client keeps
# alice's one connection busy (0.2 s statements, one after another) in a
# pool of up to 3. Before, each maintenance pass added the replacement
# beside the busy connection and logged in again for it, up to the pool's
# max: alice ended with 3 connections. Now 1, renewed, none expired.
test_busy_connection_gets_one_replacement() {
	local out=$STACK_DIR/it-one-replacement.out deadline mark renewed logged_in expired requests failed conns
	short_lifetime_stack 12 one-replacement '.credentials.refresh_margin_ms = 6000 | .user_pool.max = 3 | .log_level = "debug"
		| .routes += [{ "method": "GET", "path": "/api/my/slow", "auth": "on-behalf-of-user",
				"sql": "SELECT true AS slept FROM pg_catalog.pg_sleep(0.2)", "params": {}, "result": "one" }]' || return
	mark=$(log_mark "$STACK_WORKER_LOG")
	deadline=$(awk -v n="$(now_s)" 'BEGIN { printf "%.3f", n + 15 }')
	alice_get_until "$deadline" /api/my/slow >"$out"
	requests=$(wc -l <"$out")
	failed=$(grep -cv '^200$' "$out")
	log_since "$STACK_WORKER_LOG" "$mark" >"$out.log"
	logged_in=$(grep -c 'msg="pool connection renewal logged in" pool=user:' "$out.log")
	renewed=$(grep -c 'msg="pool connection closed" pool=user:[0-9a-f]* reason=renewed' "$out.log")
	expired=$(closed_total expired_credential)
	conns=$(pg_admin_sql "SELECT count(*) FROM pg_stat_activity WHERE usename = 'alice@example.com'
		AND application_name = '${PGAPPNAME:-lakebase-fcgi}'")
	printf '       %d requests; renewal logins %s, connections renewed %s, expired %s; alice has %s\n' \
		"$requests" "$logged_in" "$renewed" "$expired" "$conns"
	expect_eq "$failed" 0 "every request 200"
	expect_ge "$requests" 40 "the client kept the connection busy (>= 40 requests of 0.2 s)"
	expect_ge "$renewed" 1 "alice's connection was renewed"
	expect_eq "$logged_in" "$renewed" "renewal logins: one per connection renewed"
	expect_eq "$conns" 1 "alice's connections at the end"
	expect_eq "$expired" 0 "no connection reached its credential's expiry"
	emulator_with "$STACK_EMU_CONFIG"
}

# A role whose CONNECTION LIMIT refuses the renewal's second connection:
# the failed login pauses the pool's renewals and makes it renew in place
# (close, then log in again), so the refusal costs one login and one log
# line, not one per maintenance pass until the connection expires. Alice's
# pool holds one connection (user_pool.max 1), her role allows one; one
# request every 0.2 s for 15 s; credentials live 12 s, due 5-6 s before.
test_refused_second_connection_renews_in_place() {
	local out=$STACK_DIR/it-conn-limit.out deadline mark refused renewed expired requests failed
	short_lifetime_stack 12 conn-limit '.credentials.refresh_margin_ms = 6000 | .user_pool.max = 1' || return
	pg_admin_sql 'ALTER ROLE "alice@example.com" CONNECTION LIMIT 1' >/dev/null || return
	mark=$(log_mark "$STACK_WORKER_LOG")
	deadline=$(awk -v n="$(now_s)" 'BEGIN { printf "%.3f", n + 15 }')
	alice_get_until "$deadline" /api/my/todos 0.2 >"$out"
	pg_admin_sql 'ALTER ROLE "alice@example.com" CONNECTION LIMIT -1' >/dev/null
	requests=$(wc -l <"$out")
	failed=$(grep -cv '^200$' "$out")
	refused=$(log_since "$STACK_WORKER_LOG" "$mark" |
		grep -c 'msg="pool connection renewal failed[^"]*" pool=user:')
	renewed=$(closed_total renewed)
	expired=$(closed_total expired_credential)
	printf '       %d requests; renewal logins refused %s, connections renewed %s, expired %s\n' \
		"$requests" "$refused" "$renewed" "$expired"
	expect_eq "$failed" 0 "every request 200"
	expect_ge "$refused" 1 "the role's connection limit refused the second connection"
	expect_le "$refused" 2 "no login retried every pass (refused renewal logins)"
	expect_ge "$renewed" 1 "alice's connection was renewed in place"
	expect_eq "$expired" 0 "no connection reached its credential's expiry"
	emulator_with "$STACK_EMU_CONFIG"
}

# A renewal login refused because its credential went stale (the emulator's
# "supersede" fault: the role's password replaced right after the mint, as
# when another host mints for it) drops that credential, as a refused login
# on the request path does, so the next renewal has a new one: one refused
# login, not one per retry until the connections expire or are closed.
# Alice's pool (max 1) and the SP's are both busy, one request each every
# 0.2 s for 16 s; whichever pool's refresh takes the fault must recover.
# Credentials live 12 s and are due 5-6 s before expiry.
test_refused_renewal_credential_is_replaced() {
	local out=$STACK_DIR/it-superseded.out mark refused logins renewed expired requests failed
	short_lifetime_stack 12 superseded \
		'.credentials.refresh_margin_ms = 6000 | .user_pool.max = 1 | .log_level = "debug"' || return
	mark=$(log_mark "$STACK_WORKER_LOG")
	# Each pool logs in with its first credential before the fault is queued.
	expect_eq "$(user_todos alice | cut -d' ' -f1)" 200 "alice's first request" || return
	expect_eq "$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$LAKEBASE_URL/api/todos?limit=1")" 200 \
		"the SP's first request" || return
	emu_fault '{"supersede": true, "path": "/api/2.0/postgres/credentials"}'
	read -r requests failed < <(two_clients 16 "$out" '/api/todos?limit=1' /api/my/todos 0.2)
	log_since "$STACK_WORKER_LOG" "$mark" >"$out.log"
	refused=$(grep -c 'msg="pool connection renewal failed' "$out.log")
	logins=$(grep -c 'msg="pool connection opened"' "$out.log")
	renewed=$(closed_total renewed)
	expired=$(closed_total expired_credential)
	printf '       %d requests; renewal logins refused %s, logins on the request path %s, renewed %s, expired %s\n' \
		"$requests" "$refused" "$logins" "$renewed" "$expired"
	expect_eq "$failed" 0 "every request 200"
	expect_eq "$(emu_counter .faults_injected)" 1 "a refresh's credential was superseded"
	expect_eq "$refused" 1 "one renewal login refused: the stale credential was dropped after it"
	expect_le "$logins" 2 "no login on the request path but each pool's first"
	expect_ge "$renewed" 2 "both pools' connections renewed"
	expect_eq "$expired" 0 "no connection reached its credential's expiry"
	emulator_with "$STACK_EMU_CONFIG"
}

# user_todos NAME: NAME@example.com's GET /api/my/todos (token
# NAME-token-1); prints the status and the time taken.
user_todos() {
	curl -s -o /dev/null -w '%{http_code} %{time_total}' --max-time 10 \
		-H "X-Forwarded-Email: $1@example.com" -H "X-Forwarded-Access-Token: $1-token-1" \
		"$LAKEBASE_URL/api/my/todos"
}

# A lazy user's due credential is refreshed off the request path: with the
# next mint delayed 2 s, the request that finds alice's credential due is
# answered at once with the current credential, and the new one arrives
# from the background before the old one expires. Credentials live 16 s
# and are due 5-6 s before expiry (margin 6 s, jitter up to a quarter).

test_due_user_credential_refreshed_off_the_request_path() {
	local alice=alice@example.com
	local t0 out mints deadline
	short_lifetime_stack 16 handoff '.credentials.refresh_margin_ms = 6000' || return
	emu_reset || return
	t0=$(now_s)
	out=$(user_todos alice)
	expect_eq "${out% *}" 200 "alice's first request"
	expect_eq "$(emu_mints "$alice")" 1 "one mint for alice's first request"
	emu_fault '{"count": 1, "delay_ms": 2000, "path": "/api/2.0/postgres/credentials"}' || return
	# Past the refresh point (t0 + 10..11 s, plus a second of rounding),
	# well before the expiry (t0 + 16 s): waiting for the clock, not an event.
	sleep "$(awk -v n="$(now_s)" -v t="$t0" 'BEGIN { d = t + 12.2 - n; printf "%.3f", (d > 0 ? d : 0) }')"
	out=$(user_todos alice)
	printf '       the request that found the credential due: %s s\n' "${out#* }"
	expect_eq "${out% *}" 200 "the request that finds the credential due"
	awk -v s="${out#* }" 'BEGIN { exit !(s < 1.0) }'
	expect_eq "$?" 0 "it is answered before the 2 s mint ends (${out#* } s)"
	deadline=$((SECONDS + 10))
	while mints=$(emu_mints "$alice") && [[ $mints -lt 2 ]] && ((SECONDS < deadline)); do
		sleep 0.1
	done
	expect_eq "$mints" 2 "the new credential was minted in the background"
	out=$(user_todos alice)
	expect_eq "${out% *}" 200 "alice's next request"
	expect_eq "$(emu_mints "$alice")" 2 "no further mint"
	emulator_with "$STACK_EMU_CONFIG"
}

# --- transient failures ---------------------------------------------------------------

test_two_503_then_success_is_one_200() {
	fresh_worker || return
	emu_fault "{\"status\": 503, \"count\": 2, \"path\": \"$CREDENTIALS_PATH\"}" || return
	http GET /api/todos
	expect_status 200
	expect_eq "$(emu_counter .mint_failures)" 2 "two mint calls failed (503)"
	expect_eq "$(emu_mints "$SP_ROLE")" 1 "then one credential minted"
	expect_eq "$(emu_counter .faults_pending)" 0 "both faults were used"
}

test_429_and_a_dropped_connection_are_retried() {
	fresh_worker || return
	emu_fault "{\"status\": 429, \"count\": 1, \"path\": \"$CREDENTIALS_PATH\"}" || return
	emu_fault "{\"drop\": true, \"count\": 1, \"path\": \"$CREDENTIALS_PATH\"}" || return
	http GET /api/todos
	expect_status 200
	expect_eq "$(emu_counter .mint_failures)" 2 "a 429 and a dropped connection"
	expect_eq "$(emu_mints "$SP_ROLE")" 1 "then one credential minted"
}

# --- one connection to the workspace --------------------------------------------------

# The worker keeps its connection to the workspace between calls (a new
# HTTPS connection costs a TLS handshake and, with the system's CA bundle,
# ~40 ms of CPU): three mints one after another use one connection.
test_workspace_calls_share_a_connection() {
	fresh_worker || return
	http GET /api/todos
	expect_status 200 || return
	expect_eq "$(user_todos alice | cut -d' ' -f1) $(user_todos bob | cut -d' ' -f1)" "200 200" "alice and bob served"
	expect_eq "$(emu_counter .mints_total)" 3 "the SP's, alice's and bob's credentials minted"
	expect_eq "$(emu_counter .connections)" 1 "over one connection"
}

# --- permanent failure ------------------------------------------------------------------

# The workspace refuses the SP (403): not the client's fault, so a 5xx, and
# not retried. The lead decides between 502 and 503; the test prints which.
test_403_from_the_workspace_fails_fast_with_one_call() {
	local code
	fresh_worker || return
	emu_fault "{\"status\": 403, \"count\": 1, \"path\": \"$CREDENTIALS_PATH\"}" || return
	http GET /api/todos
	code=$(jq -r '.error.code? // empty' "$HTTP_BODY_FILE" 2>/dev/null)
	printf '       a 403 on the credential call answers HTTP %s, code %s, in %ss\n' "$HTTP_STATUS" "${code:-?}" "$HTTP_TIME"
	expect_match "$HTTP_STATUS" '^50[23]$' "status is 502 or 503"
	expect_error "$HTTP_STATUS" "${code:-?}"
	expect_eq "$(emu_credential_calls)" 1 "exactly one credential call (no retry)"
	awk -v t="$HTTP_TIME" 'BEGIN { exit !(t < 2) }'
	expect_eq "$?" 0 "answered fast (${HTTP_TIME}s)"
	# The failure is not remembered: with the fault gone, the next works.
	http GET /api/todos
	expect_status 200
	expect_eq "$(emu_credential_calls)" 2 "the next request minted once"
}

# --- the workspace API unreachable ---------------------------------------------------------

test_emulator_down_is_503_then_recovers_without_worker_restart() {
	local pid
	fresh_worker || return
	emulator_stop
	pid=$(read_pid "$STACK_WORKER_PID")
	http GET /api/todos
	expect_error 503 unavailable
	printf '       answered 503 after %ss of retries\n' "$HTTP_TIME"
	emulator_start "$STACK_EMU_CONFIG" || return
	http GET /api/todos
	expect_status 200
	expect_eq "$(read_pid "$STACK_WORKER_PID")" "$pid" "the same worker process"
}

# A worker that holds a valid credential keeps opening connections with it
# while the workspace API is down.
test_cached_credential_serves_new_connections_while_emulator_down() {
	local gone
	fresh_worker || return
	http GET /api/todos
	expect_status 200 || return
	emulator_stop
	gone=$(pg_terminate_worker_conns)
	wait_for "[[ \$(pg_count_worker_conns) == 0 ]]" 5
	expect_eq "$?" 0 "the worker's $gone connection(s) are gone"
	http GET /api/todos
	expect_status 200
	http GET /readyz
	expect_status 200
	expect_body '{"status":"ready"}'
	emulator_start "$STACK_EMU_CONFIG"
}

# --- credentials the workspace or the database stopped accepting --------------------------

# mint_sp_credential_elsewhere: what a second worker host of the same
# service principal does: its own OAuth token, its own mint. In password
# mode that makes the credential the worker holds stale for new logins
# (as a rotation or revocation would in Lakebase). The secret reaches curl
# on stdin, never argv.
mint_sp_credential_elsewhere() {
	local oauth
	oauth=$(printf 'user = "%s:%s"\n' "$SP_ROLE" "$(secret_get sp.secret)" |
		curl -sf --max-time 10 -K - --data 'grant_type=client_credentials&scope=all-apis' \
			"$EMU_URL/oidc/v1/token" | jq -r .access_token) || return
	curl -sf -o /dev/null --max-time 10 -X POST -H "Authorization: Bearer $oauth" \
		-H 'Content-Type: application/json' --data "{\"endpoint\": \"$STACK_ENDPOINT\"}" \
		"$EMU_URL$CREDENTIALS_PATH"
}

# The database refuses the worker's cached credential (28P01) when it opens
# a new connection: the worker must mint a fresh one and log in again,
# not answer the client 403 "role missing" (the SP's role exists).
test_stale_sp_credential_is_replaced_without_a_failed_request() {
	local mints0 i
	fresh_worker || return
	http GET /api/todos
	expect_status 200 || return
	mint_sp_credential_elsewhere || return
	mints0=$(emu_mints "$SP_ROLE")
	pg_terminate_worker_conns >/dev/null
	wait_for "[[ \$(pg_count_worker_conns) == 0 ]]" 5 || return
	for i in 1 2 3; do
		http GET /api/todos
		expect_eq "$HTTP_STATUS" 200 "request $i after the credential went stale: 200 (body: ${HTTP_BODY:0:160})"
	done
	expect_eq "$(emu_mints "$SP_ROLE")" $((mints0 + 1)) "the worker minted once more"
}

# The workspace no longer accepts the worker's cached OAuth (M2M) access
# token (revoked; here: the emulator restarted and forgot it). When the
# credential is due, the mint answers 401: the worker must get a new
# access token and mint again, with no failed request.
test_rejected_m2m_token_is_replaced_without_a_failed_request() {
	local lifetime=5 deadline requests=0 failed=0 code statuses=''
	short_lifetime_stack "$lifetime" refresh-margin '.credentials.refresh_margin_ms = 2000' || return
	http GET /api/todos
	expect_status 200 || return
	emulator_stop
	emulator_start "$(short_lifetime_emu_cfg "$lifetime")" || return
	deadline=$(awk -v n="$(now_s)" -v l="$lifetime" 'BEGIN { printf "%.3f", n + 3 * l }')
	while awk -v n="$(now_s)" -v d="$deadline" 'BEGIN { exit !(n < d) }'; do
		code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$LAKEBASE_URL/api/todos?limit=1")
		requests=$((requests + 1))
		if [[ $code != 200 ]]; then
			failed=$((failed + 1))
			statuses+=" #$requests:$code"
		fi
		sleep 0.05   # pacing, not synchronisation
	done
	printf '       %d requests over %d s; the new emulator issued %s access token(s), minted %s\n' \
		"$requests" $((3 * lifetime)) "$(emu_counter .oauth_tokens)" "$(emu_mints "$SP_ROLE")"
	expect_eq "$failed" 0 "no failed request (failures:${statuses:- none})"
	(( $(emu_mints "$SP_ROLE") >= 1 ))
	expect_eq "$?" 0 "credentials minted with a new access token"
	emulator_with "$STACK_EMU_CONFIG"
}

run_test "a 6 s credential is replaced (>= 2 mints) with no failed request in 18 s" \
	test_expiring_credential_is_replaced_without_a_failed_request
run_test "a user's connections are renewed before their 8 s credential expires: none expires, none fails" \
	test_user_connections_renewed_before_expiry
run_test "a busy user connection is renewed with no login on the request path (max 1, never idle)" \
	test_busy_connection_renewed_without_a_login_on_the_request_path
run_test "a busy connection due for renewal in a pool with room gets one replacement, not one per pass" \
	test_busy_connection_gets_one_replacement
run_test "a role's connection limit refusing the renewal's second connection: renewed in place, no retry storm" \
	test_refused_second_connection_renews_in_place
run_test "a renewal login refused as stale drops the credential: one refusal, renewed, none expired" \
	test_refused_renewal_credential_is_replaced
run_test "a due user credential is refreshed off the request path: a 2 s mint delays no request" \
	test_due_user_credential_refreshed_off_the_request_path
run_test "two 503s on the mint are retried: one request, 200" test_two_503_then_success_is_one_200
run_test "a 429 and a dropped connection on the mint are retried: 200" test_429_and_a_dropped_connection_are_retried
run_test "three mints one after another share one connection to the workspace" \
	test_workspace_calls_share_a_connection
run_test "a 403 on the mint fails fast with a 5xx JSON error after one call" \
	test_403_from_the_workspace_fails_fast_with_one_call
run_test "workspace API down: 503; back: 200 from the same worker" \
	test_emulator_down_is_503_then_recovers_without_worker_restart
run_test "workspace API down: a cached credential still opens connections" \
	test_cached_credential_serves_new_connections_while_emulator_down
run_test "a credential the database refuses (stale) is re-minted: no failed request" \
	test_stale_sp_credential_is_replaced_without_a_failed_request
run_test "an OAuth token the workspace refuses (401) is replaced: no failed request" \
	test_rejected_m2m_token_is_replaced_without_a_failed_request
summary
