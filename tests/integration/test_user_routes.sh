#!/usr/bin/env bash
# test_user_routes.sh - on-behalf-of-user routes through nginx: RLS per user,
# private cache headers, strict identity (missing, blank, spoofed, repeated
# and underscored headers), token rotation, a user without a role, and
# development mode. Needs the running stack (scripts/stack.sh start); puts
# the normal worker back at the end. Caps, idle close and credential
# expiry: test_user_caps.sh.
set -uo pipefail
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/user_lib.sh
source "$(dirname "$0")/user_lib.sh"

ALICE=alice@example.com
BOB=bob@example.com
CAROL=carol@example.com

clear_test_rows

# --- RLS: each user sees their own rows -------------------------------------------------

test_alice_sees_own_rows() {
	as_user GET /api/my/todos "$ALICE" alice-token-1
	expect_status 200 || return
	expect_body "$SEED_ALICE_JSON"
	expect_private
}
run_test "alice sees exactly her seeded rows" test_alice_sees_own_rows

test_bob_sees_own_rows() {
	as_user GET /api/my/todos "$BOB" bob-token-1
	expect_status 200 || return
	expect_body "$SEED_BOB_JSON"
	expect_private
}
run_test "bob sees exactly his seeded row" test_bob_sees_own_rows

test_sp_sees_all() {
	http GET '/api/todos?limit=500'
	expect_status 200 || return
	expect_body_json '[.[] | select(.id | startswith("00000000-0000-4000-8000-00000000000"))]' \
		"$(jq -c -n --argjson a "$SEED_ALICE_JSON" --argjson b "$SEED_BOB_JSON" '$a + $b')"
	# An SP route is not a user's answer: no "private".
	local cc
	cc=$(header_value Cache-Control) || cc=
	if [[ $cc == *private* ]]; then
		_assert_result 1 "SP response not private" "Cache-Control: $cc"
	else
		_assert_result 0 "SP response not private"
	fi
}
run_test "the SP route sees every seeded row and is not private" test_sp_sees_all

test_whoami() {
	as_user GET /api/whoami "$ALICE" alice-token-1
	expect_status 200 || return
	expect_body '{"user":"alice@example.com"}'
	expect_private
	as_user GET /api/whoami "$BOB" bob-token-1
	expect_status 200 || return
	expect_body '{"user":"bob@example.com"}'
}
run_test "whoami is the user's Postgres role" test_whoami

POSTED_ID=
test_alice_insert() {
	as_user POST /api/my/todos "$ALICE" alice-token-1 \
		-H 'Content-Type: application/json' --data "{\"title\":\"$USERS_TITLE_PREFIX alice posted\"}"
	expect_status 201 || return
	expect_private
	expect_body_json '[.title, .done, .owner]' "[\"$USERS_TITLE_PREFIX alice posted\",false,\"$ALICE\"]"
	POSTED_ID=$(jq -r .id <"$HTTP_BODY_FILE")
	expect_eq "$(pg_admin_sql "SELECT owner FROM app.todos WHERE id = '$POSTED_ID'")" "$ALICE" \
		"stored owner (current_user default)"
	# Alice now sees it too; Bob does not; the SP does.
	as_user GET /api/my/todos "$ALICE" alice-token-1
	expect_status 200
	expect_body_json 'map(.title)' "[\"alice: buy milk\",\"alice: call mum\",\"$USERS_TITLE_PREFIX alice posted\"]"
	as_user GET /api/my/todos "$BOB" bob-token-1
	expect_status 200
	expect_body "$SEED_BOB_JSON"
	http GET '/api/todos?limit=500'
	expect_status 200
	expect_body_json "map(select(.id == \"$POSTED_ID\") | .owner)" "[\"$ALICE\"]"
	clear_test_rows
}
run_test "POST by alice: 201, owner = alice (current_user), bob does not see it" test_alice_insert

test_user_errors_private() {
	as_user GET '/api/my/todos?limit=0' "$ALICE" alice-token-1
	expect_status 400
	expect_private
	as_user POST /api/my/todos "$ALICE" alice-token-1 -H 'Content-Type: text/plain' --data 'x'
	expect_status 415
	expect_private
	as_user POST /api/my/todos "$ALICE" alice-token-1 -H 'Content-Type: application/json' --data '{}'
	expect_status 400
	expect_private
}
run_test "user-route errors (400, 415) carry the private headers too" test_user_errors_private

# --- missing identity: 401 and nothing runs --------------------------------------------

# unauth_case NAME REQUEST-FN ARGS...: REQUEST-FN makes the request; the
# answer must be 401 unauthenticated with the private headers, and neither
# the emulator nor PostgreSQL may have been called.
unauth_case() {
	local emu_before pg_mark
	shift
	emu_before=$(emu_counter '.requests') || return
	pg_mark=$(log_mark "$USERS_PG_LOG")
	new_rid unauth
	"$@"
	expect_user_error 401 unauthenticated
	expect_body_json '.error.request_id' "\"$RID\""
	expect_eq "$(emu_counter '.requests')" "$emu_before" "no call to the workspace (emulator requests unchanged)"
	expect_eq "$(pg_logins_since "$pg_mark")" 0 "no PostgreSQL connection attempt"
	expect_worker_logged "$RID" 'status=401 .*error=unauthenticated'
}

req_none() { http GET /api/my/todos -H "X-Request-Id: $RID"; }
req_whoami_none() { http GET /api/whoami -H "X-Request-Id: $RID"; }
req_email_only() {
	http GET /api/my/todos -H "X-Request-Id: $RID" -H "X-Forwarded-Email: $ALICE"
}
req_token_only() {
	http GET /api/my/todos -H "X-Request-Id: $RID" -H 'X-Forwarded-Access-Token: alice-token-1'
}
req_email_empty() {
	# "Name;" makes curl send the header with an empty value.
	http GET /api/my/todos -H "X-Request-Id: $RID" -H 'X-Forwarded-Email;' \
		-H 'X-Forwarded-Access-Token: alice-token-1'
}
req_token_empty() {
	http GET /api/my/todos -H "X-Request-Id: $RID" -H "X-Forwarded-Email: $ALICE" \
		-H 'X-Forwarded-Access-Token;'
}
# curl drops a header whose value is blank, so these go raw.
req_email_blank() {
	raw_get /api/my/todos "X-Request-Id: $RID\r\nX-Forwarded-Email:  \t  \r\nX-Forwarded-Access-Token: alice-token-1\r\n"
}
req_token_blank() {
	raw_get /api/my/todos "X-Request-Id: $RID\r\nX-Forwarded-Email: $ALICE\r\nX-Forwarded-Access-Token: \t \r\n"
}
req_both_blank() {
	raw_get /api/whoami "X-Request-Id: $RID\r\nX-Forwarded-Email:   \r\nX-Forwarded-Access-Token:   \r\n"
}

run_test "no identity headers: 401, nothing run" unauth_case - req_none
run_test "no identity headers on whoami: 401, no fallback to the SP" unauth_case - req_whoami_none
run_test "email without token: 401, nothing run" unauth_case - req_email_only
run_test "token without email: 401, nothing run" unauth_case - req_token_only
run_test "empty email: 401, nothing run" unauth_case - req_email_empty
run_test "empty token: 401, nothing run" unauth_case - req_token_empty
run_test "whitespace-only email: 401, nothing run" unauth_case - req_email_blank
run_test "whitespace-only token: 401, nothing run" unauth_case - req_token_blank
run_test "whitespace-only email and token: 401, nothing run" unauth_case - req_both_blank

# --- spoofing --------------------------------------------------------------------------

test_alice_email_bob_token() {
	local alice_mints bob_mints pg_mark
	alice_mints=$(emu_counter ".mints[\"$ALICE\"] // 0")
	bob_mints=$(emu_counter ".mints[\"$BOB\"] // 0")
	pg_mark=$(log_mark "$USERS_PG_LOG")
	as_user GET /api/my/todos "$ALICE" bob-token-1
	if [[ $HTTP_STATUS == 401 || $HTTP_STATUS == 403 ]]; then
		_assert_result 0 "status 401 or 403"
	else
		_assert_result 1 "status 401 or 403" "got $HTTP_STATUS, body: ${HTTP_BODY:0:300}"
	fi
	expect_private
	expect_no_rows_of "$ALICE"
	expect_body_json '.error | has("code")' true
	# Bob's token minted a credential for Bob, never one for Alice; the
	# login as Alice with it failed.
	expect_eq "$(emu_counter ".mints[\"$ALICE\"] // 0")" "$alice_mints" "no credential minted for alice"
	expect_ge "$(emu_counter ".mints[\"$BOB\"] // 0")" $((bob_mints + 1)) "the mint used bob's token (bob's mints grew)"
	expect_ge "$(pg_failed_logins_since "$pg_mark" "$ALICE")" 1 "PostgreSQL refused the login as alice"
	expect_eq "$(pg_authorized_since "$pg_mark" "$ALICE")" 0 "no login as alice succeeded"
	# The same spoof on whoami.
	as_user GET /api/whoami "$ALICE" bob-token-1
	expect_no_rows_of "$ALICE"
	[[ $HTTP_STATUS == 401 || $HTTP_STATUS == 403 ]] || _assert_result 1 "whoami spoof refused" "got $HTTP_STATUS"
}
run_test "alice's email with bob's token: refused, none of alice's data" test_alice_email_bob_token

# The spoof above re-minted Bob's credential (the emulator keeps only the
# newest per role): Bob must still be served, his stale credential refreshed.
test_bob_after_spoof() {
	as_user GET /api/my/todos "$BOB" bob-token-1
	expect_status 200 || return
	expect_body "$SEED_BOB_JSON"
}
run_test "bob is still served after the spoof attempt" test_bob_after_spoof

test_forged_token() {
	local failures alice_mints pg_mark
	failures=$(emu_counter '.mint_failures')
	alice_mints=$(emu_counter ".mints[\"$ALICE\"] // 0")
	pg_mark=$(log_mark "$USERS_PG_LOG")
	as_user GET /api/my/todos "$ALICE" "forged-$RANDOM$RANDOM"
	expect_user_error 401 unauthenticated
	expect_no_rows_of "$ALICE"
	expect_ge "$(emu_counter '.mint_failures')" $((failures + 1)) "the emulator refused the mint (mint_failures grew)"
	expect_eq "$(emu_counter ".mints[\"$ALICE\"] // 0")" "$alice_mints" "no credential minted for alice"
	expect_eq "$(pg_authorized_since "$pg_mark" "$ALICE")" 0 "no login as alice"
}
run_test "alice's email with a forged token: 401, mint refused" test_forged_token

# nginx (underscores_in_headers off) drops a header spelled with
# underscores, which would otherwise also become HTTP_X_FORWARDED_EMAIL.
test_underscore_email() {
	new_rid underscore
	http GET /api/my/todos -H "X-Request-Id: $RID" -H "X_Forwarded_Email: $ALICE" \
		-H 'X-Forwarded-Access-Token: alice-token-1'
	expect_user_error 401 unauthenticated
	expect_no_rows_of "$ALICE"
	expect_worker_logged "$RID" 'X-Forwarded-Email missing'
	new_rid underscore
	http GET /api/my/todos -H "X-Request-Id: $RID" -H "X-Forwarded-Email: $ALICE" \
		-H 'X_Forwarded_Access_Token: alice-token-1'
	expect_user_error 401 unauthenticated
	expect_no_rows_of "$ALICE"
	expect_worker_logged "$RID" 'X-Forwarded-Access-Token missing'
}
run_test "underscored identity header names are dropped: 401" test_underscore_email

test_underscore_alias() {
	# Bob's genuine headers plus an underscored Alice: nginx drops the
	# latter, so this is plainly Bob.
	as_user GET /api/my/todos "$BOB" bob-token-1 -H "X_Forwarded_Email: $ALICE"
	expect_status 200 || return
	expect_body "$SEED_BOB_JSON"
	expect_no_rows_of "$ALICE"
}
run_test "an underscored alias next to real headers is ignored (bob stays bob)" test_underscore_alias

# dup_case NAME EXTRA-CURL-ARGS...: 400 bad_request, none of Alice's rows.
dup_case() {
	shift
	new_rid dup
	http GET /api/my/todos -H "X-Request-Id: $RID" "$@"
	expect_user_error 400 bad_request
	expect_no_rows_of "$ALICE"
	expect_worker_logged "$RID" 'status=400 .*repeated'
}
run_test "X-Forwarded-Email twice (same value): 400" dup_case - \
	-H "X-Forwarded-Email: $ALICE" -H "X-Forwarded-Email: $ALICE" -H 'X-Forwarded-Access-Token: alice-token-1'
run_test "X-Forwarded-Email twice (bob then alice) with bob's token: 400" dup_case - \
	-H "X-Forwarded-Email: $BOB" -H "X-Forwarded-Email: $ALICE" -H 'X-Forwarded-Access-Token: bob-token-1'
run_test "x-forwarded-email + X-Forwarded-Email (mixed case): 400" dup_case - \
	-H "x-forwarded-email: $ALICE" -H "X-Forwarded-Email: $BOB" -H 'X-Forwarded-Access-Token: bob-token-1'
run_test "X-FORWARDED-EMAIL + X-Forwarded-Email: 400" dup_case - \
	-H "X-Forwarded-Email: $BOB" -H "X-FORWARDED-EMAIL: $ALICE" -H 'X-Forwarded-Access-Token: bob-token-1'
run_test "X-Forwarded-Access-Token twice: 400" dup_case - \
	-H "X-Forwarded-Email: $ALICE" -H 'X-Forwarded-Access-Token: bob-token-1' \
	-H 'X-Forwarded-Access-Token: alice-token-1'

# --- token rotation --------------------------------------------------------------------

# pids_not_in A B: the PIDs of list A that are not in list B.
pids_not_in() {
	local p out=()
	for p in $1; do [[ " $2 " == *" $p "* ]] || out+=("$p"); done
	echo "${out[*]}"
}

# Token 2 for alice proves itself with its own mint and login; token 1's
# pool stays (the most recently used other token: a user's two devices).
# The two alternate on their own connections, no login, no mint. Token 3
# then retires token 1's pool, the oldest: its connections drain while
# token 2's and 3's remain.
test_token_rotation() {
	local pids1 pids2 pids12 pids123 alice_mints token
	# A new worker: alice's pools of earlier runs would hold other tokens.
	users_worker_restart "$USERS_NORMAL_WORKER_CONFIG" || return
	as_user GET /api/my/todos "$ALICE" alice-token-1
	expect_status 200 || return
	pids1=$(pg_worker_pids "$ALICE")
	[[ -n $pids1 ]] || { _assert_result 1 "token 1 has a connection" "none in pg_stat_activity"; return 1; }
	alice_mints=$(emu_counter ".mints[\"$ALICE\"] // 0")

	as_user GET /api/my/todos "$ALICE" alice-token-2
	expect_status 200 || return
	expect_body "$SEED_ALICE_JSON"
	expect_private
	expect_eq "$(emu_counter ".mints[\"$ALICE\"] // 0")" $((alice_mints + 1)) "token 2 was proven by its own mint"
	pids12=$(pg_worker_pids "$ALICE")
	pids2=$(pids_not_in "$pids12" "$pids1")
	expect_eq "$(pids_not_in "$pids1" "$pids12")" "" "token 1's connections stay"
	[[ -n $pids2 ]] || { _assert_result 1 "token 2 has a connection of its own" "alice: $pids12"; return 1; }

	for token in alice-token-1 alice-token-2 alice-token-1 alice-token-2; do
		as_user GET /api/my/todos "$ALICE" "$token"
		expect_status 200
		expect_body "$SEED_ALICE_JSON"
	done
	expect_eq "$(pg_worker_pids "$ALICE")" "$pids12" "two live tokens alternate on their own connections"
	expect_eq "$(emu_counter ".mints[\"$ALICE\"] // 0")" $((alice_mints + 1)) "and mint nothing"

	as_user GET /api/my/todos "$ALICE" alice-token-3
	expect_status 200 || return
	expect_body "$SEED_ALICE_JSON"
	# shellcheck disable=SC2317 # called through wait_for
	token1_gone() {
		local now p
		now=$(pg_worker_pids "$ALICE")
		for p in $pids1; do [[ " $now " == *" $p "* ]] && return 1; done
		return 0
	}
	wait_for token1_gone 5
	expect_eq "$?" 0 "token 1's connections ($pids1) drained once token 3 proved"
	pids123=$(pg_worker_pids "$ALICE")
	expect_eq "$(pids_not_in "$pids2" "$pids123")" "" "token 2's connections stay"
	as_user GET /api/my/todos "$ALICE" alice-token-2
	expect_status 200
	expect_eq "$(pg_worker_pids "$ALICE")" "$pids123" "token 2 reuses its own pool"
}
run_test "token rotation: two live tokens keep their pools; a third retires the oldest" test_token_rotation

# --- a user without a role ---------------------------------------------------------------

test_role_missing() {
	local pg_mark
	pg_mark=$(log_mark "$USERS_PG_LOG")
	as_user GET /api/my/todos "$CAROL" carol-token-1
	expect_user_error 403 role_missing
	local msg
	msg=$(jq -r .error.message <"$HTTP_BODY_FILE")
	if [[ $msg == *"Creating Lakebase roles"* ]]; then
		_assert_result 0 "message points to README \"Creating Lakebase roles\""
	else
		_assert_result 1 "message points to README \"Creating Lakebase roles\"" "message: $msg"
	fi
	# One login, a refreshed credential, one retry: then 403.
	expect_eq "$(pg_failed_logins_since "$pg_mark" "$CAROL")" 2 "login tried twice (retry after a refresh)"
	expect_worker_logged "$RID" 'status=403 .*error=role_missing .*sqlstate=28'
}
run_test "carol (no Postgres role): 403 role_missing" test_role_missing

# --- one slow mint does not hold up other users ---------------------------------------

test_slow_mint_isolated() {
	local slow_pid slow_out=$IT_TMP/slow.out t0 ms
	emu_fault '{"count": 1, "delay_ms": 3000, "path": "/api/2.0/postgres/credentials"}' || return
	# This request's mint (a forged token: never cached) takes the delay.
	curl -sS --max-time 20 -o /dev/null -w '%{http_code}' -H "X-Forwarded-Email: $ALICE" \
		-H "X-Forwarded-Access-Token: forged-slow-$RANDOM" "$LAKEBASE_URL/api/my/todos" >"$slow_out" 2>&1 &
	slow_pid=$!
	if ! wait_for "[[ \$(emu_counter .faults_pending) == 0 ]]" 5; then
		_assert_result 1 "the slow mint started" "fault still pending"
		wait "$slow_pid"
		return 1
	fi
	# Meanwhile: a warm user, the SP, and a cold identity that mints.
	t0=$EPOCHREALTIME
	as_user GET /api/my/todos "$BOB" bob-token-1
	expect_status 200
	expect_body "$SEED_BOB_JSON"
	http GET /api/todos/00000000-0000-4000-8000-000000000003
	expect_status 200
	as_user GET /api/my/todos "$CAROL" carol-token-1
	expect_user_error 403 role_missing
	ms=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%d", (b - a) * 1000 }')
	expect_le "$ms" 1500 "other users answered while one mint was slow (${ms} ms)"
	wait "$slow_pid"
	expect_eq "$(<"$slow_out")" 401 "the slow forged request ends in 401"
}
run_test "a slow mint for one identity does not block other users" test_slow_mint_isolated

# --- development mode ------------------------------------------------------------------

test_development_mode() {
	local cfg=$IT_TMP/worker-dev.json warnings
	worker_config_with '.identity = ((.identity // {}) + {"development_mode": true})' "$cfg" || return
	users_worker_restart "$cfg" || return
	for _ in 1 2 3 4; do
		new_rid dev
		http GET /api/whoami -H "X-Request-Id: $RID"
		expect_status 200
		expect_body '{"user":"lakebase-sp"}'
		expect_private
	done
	# Identity headers present: still the user.
	as_user GET /api/whoami "$ALICE" alice-token-1
	expect_status 200
	expect_body '{"user":"alice@example.com"}'
	as_user GET /api/my/todos "$BOB" bob-token-1
	expect_status 200
	expect_body "$SEED_BOB_JSON"
	# Only one of the two headers: no fallback.
	new_rid dev
	http GET /api/my/todos -H "X-Request-Id: $RID" -H "X-Forwarded-Email: $ALICE"
	expect_user_error 401 unauthenticated
	warnings=$(log_since "$USERS_WORKER_LOG" "$WORKER_LOG_MARK" | grep -c 'development mode' || true)
	expect_eq "$warnings" 1 "exactly one development-mode warning in the worker log"
}
run_test "development mode: no headers → SP (warned once), headers → user" test_development_mode

# --- back to normal --------------------------------------------------------------------------

test_restore() {
	users_restore || return
	clear_test_rows
	http GET /api/whoami
	expect_user_error 401 unauthenticated
	as_user GET /api/my/todos "$ALICE" alice-token-1
	expect_status 200
	expect_body "$SEED_ALICE_JSON"
}
run_test "normal worker restored (development mode off)" test_restore

summary
