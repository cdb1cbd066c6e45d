#!/usr/bin/env bash
# test_apache.sh - the same end-to-end checks through nginx, through Apache
# with mod_fcgid (Apache starts the worker processes: managed mode), and
# through Apache with mod_proxy_fcgi in front of the supervisor, each with
# the shipped configuration: the SP route, a user route with RLS, 401
# without identity, spoofing attempts (underscored header names, repeated
# headers, mixed case, someone else's token); the same answers to the same
# URLs (routing on the request path, dot segments refused); an
# authentication module's identity winning over client headers; mod_fcgid
# with several processes sharing one credential per identity, stopped
# cleanly with Apache. Needs the running stack; puts it back at the end.
set -uo pipefail
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/user_lib.sh
source "$(dirname "$0")/user_lib.sh"
# shellcheck source=tests/integration/process_lib.sh
source "$(dirname "$0")/process_lib.sh"
# shellcheck source=tests/integration/apache_lib.sh
source "$(dirname "$0")/apache_lib.sh"

at_exit 'apache_stop >/dev/null 2>&1; pm_restore >/dev/null 2>&1'

# user_lib.sh's, with either spacing of the Vary list: Apache rewrites the
# worker's "Vary: a, b" as "a,b" (the same list).
expect_private() {
	local vary
	expect_header Cache-Control "private, no-store"
	vary=$(header_value Vary | tr -d ' ')
	expect_eq "$vary" "X-Forwarded-Email,X-Forwarded-Access-Token" "header Vary: the identity headers"
}
NGINX_URL=$LAKEBASE_URL
ALICE=alice@example.com
BOB=bob@example.com
CFG=$STACK_DIR/it-apache.json
pm_config "$CFG"
clear_test_rows

# --- the end-to-end checks, run against $LAKEBASE_URL ----------------------------------------

t_sp_route() {
	http GET '/api/todos?limit=500'
	expect_status 200 || return
	expect_body_json '[.[] | select(.id | startswith("00000000-0000-4000-8000-00000000000"))]' \
		"$(jq -c -n --argjson a "$SEED_ALICE_JSON" --argjson b "$SEED_BOB_JSON" '$a + $b')"
}

t_rls() {
	as_user GET /api/my/todos "$ALICE" alice-token-1
	expect_status 200 || return
	expect_body "$SEED_ALICE_JSON"
	expect_private
	as_user GET /api/my/todos "$BOB" bob-token-1
	expect_status 200 || return
	expect_body "$SEED_BOB_JSON"
	as_user GET /api/whoami "$BOB" bob-token-1
	expect_body '{"user":"bob@example.com"}'
}

t_no_identity() {
	http GET /api/my/todos
	expect_user_error 401 unauthenticated
	http GET /api/my/todos -H "X-Forwarded-Email: $ALICE"
	expect_user_error 401 unauthenticated
	expect_no_rows_of "$ALICE"
	http GET /api/my/todos -H 'X-Forwarded-Access-Token: alice-token-1'
	expect_user_error 401 unauthenticated
}

t_underscore() {
	http GET /api/my/todos -H "X_Forwarded_Email: $ALICE" -H 'X-Forwarded-Access-Token: alice-token-1'
	expect_user_error 401 unauthenticated
	expect_no_rows_of "$ALICE"
	http GET /api/my/todos -H "X-Forwarded-Email: $ALICE" -H 'X_Forwarded_Access_Token: alice-token-1'
	expect_user_error 401 unauthenticated
	as_user GET /api/my/todos "$BOB" bob-token-1 -H "X_Forwarded_Email: $ALICE"
	expect_status 200
	expect_body "$SEED_BOB_JSON"
}

# refused_identity: a repeated identity header never gets through. nginx
# passes both copies (the worker answers 400: repeated); Apache joins them
# with ", " into a value that is no email or token (401).
refused_identity() {
	if [[ $HTTP_STATUS == 400 ]]; then
		expect_user_error 400 bad_request
	else
		expect_user_error 401 unauthenticated
	fi
	expect_no_rows_of "$ALICE"
}

t_repeated() {
	http GET /api/my/todos -H "X-Forwarded-Email: $BOB" -H "X-Forwarded-Email: $ALICE" \
		-H 'X-Forwarded-Access-Token: bob-token-1'
	refused_identity
	http GET /api/my/todos -H "X-Forwarded-Email: $ALICE" -H "X-Forwarded-Email: $ALICE" \
		-H 'X-Forwarded-Access-Token: alice-token-1'
	refused_identity
	http GET /api/my/todos -H "X-Forwarded-Email: $ALICE" -H 'X-Forwarded-Access-Token: bob-token-1' \
		-H 'X-Forwarded-Access-Token: alice-token-1'
	refused_identity
}

t_mixed_case() {
	http GET /api/my/todos -H "x-forwarded-email: $ALICE" -H "X-Forwarded-Email: $BOB" \
		-H 'X-Forwarded-Access-Token: bob-token-1'
	refused_identity
	http GET /api/my/todos -H "X-FORWARDED-EMAIL: $ALICE" -H "X-Forwarded-Email: $BOB" \
		-H 'x-FORWARDED-access-TOKEN: bob-token-1'
	refused_identity
}

t_someone_elses_token() {
	as_user GET /api/my/todos "$ALICE" bob-token-1
	[[ $HTTP_STATUS == 401 || $HTTP_STATUS == 403 ]]
	expect_eq "$?" 0 "refused with 401 or 403 (got $HTTP_STATUS)"
	expect_no_rows_of "$ALICE"
	as_user GET /api/my/todos "$ALICE" "forged-$RANDOM$RANDOM"
	expect_user_error 401 unauthenticated
	expect_no_rows_of "$ALICE"
	# Bob is still served afterwards (his credential was re-minted).
	as_user GET /api/my/todos "$BOB" bob-token-1
	expect_status 200
	expect_body "$SEED_BOB_JSON"
}

# e2e_checks LABEL URL: the whole set against one server.
e2e_checks() {
	local label=$1
	LAKEBASE_URL=$2
	run_test "$label: the SP route sees every seeded row" t_sp_route
	run_test "$label: alice and bob each see only their rows (RLS)" t_rls
	run_test "$label: missing identity: 401, nothing run" t_no_identity
	run_test "$label: underscored header names never reach the worker" t_underscore
	run_test "$label: a repeated identity header is refused" t_repeated
	run_test "$label: mixed-case duplicates are refused" t_mixed_case
	run_test "$label: alice's email with bob's or a forged token: none of alice's data" t_someone_elses_token
	LAKEBASE_URL=$NGINX_URL
}

# --- routing: the same URL, the same answer ----------------------------------------------------

ROUTING_CASES=(
	"GET /api/todos?limit=1"
	"GET /api/todos/00000000-0000-4000-8000-000000000003"
	"GET /api/todos/not-a-uuid"
	"GET /api/t%6Fdos?limit=1"
	"GET /api/todos?limit=1&limit=2"
	"GET /api/todos/%2e%2e"
	"GET /api/todos/%2E%2E/00000000-0000-4000-8000-000000000003"
	"GET /api/./todos"
	"GET /api//todos"
	"GET /API/todos"
	"GET /api/todos%3Flimit=1"
	"GET /nope"
	"GET /healthz"
	"PATCH /api/todos"
)

# routing_answers URL: "METHOD PATH -> STATUS BODY" per case, request ids
# dropped (every answer has its own).
routing_answers() {
	local c
	for c in "${ROUTING_CASES[@]}"; do
		http "${c%% *}" "$1${c#* }" --path-as-is
		printf '%s -> %s %s allow=%s\n' "$c" "$HTTP_STATUS" \
			"$(jq -c 'if type == "object" and has("error") then del(.error.request_id) else . end' \
				<"$HTTP_BODY_FILE" 2>/dev/null || echo not-json)" "$(header_value Allow || true)"
	done
}

NGINX_ROUTING=$IT_TMP/routing.nginx
test_routing_baseline() {
	routing_answers "$NGINX_URL" >"$NGINX_ROUTING"
	grep -q '^GET /api/todos/%2e%2e -> 404 ' "$NGINX_ROUTING"
	expect_eq "$?" 0 "an encoded dot-dot segment is 404 through nginx"
	grep -q '^GET /api/t%6Fdos?limit=1 -> 200 ' "$NGINX_ROUTING"
	expect_eq "$?" 0 "an escaped letter is decoded once: 200"
	grep -q '^PATCH /api/todos -> 405 .*allow=GET, POST$' "$NGINX_ROUTING"
	expect_eq "$?" 0 "405 with Allow"
}

test_routing_same_as_nginx() {
	local out=$IT_TMP/routing.other diff
	routing_answers "$APACHE_URL" >"$out"
	diff=$(diff "$NGINX_ROUTING" "$out")
	expect_eq "$diff" "" "every case answers as through nginx (${#ROUTING_CASES[@]} cases)"
}

# --- deployment B: an authentication module sets the identity -----------------------------------

t_auth_module() {
	http GET /api/whoami -H 'Host: auth.test'
	expect_status 401
	http GET /api/whoami -H 'Host: auth.test' -u alice:alice-password
	expect_status 200
	expect_body '{"user":"alice@example.com"}'
	# Whatever the client adds, in any spelling, the module's identity wins.
	http GET /api/my/todos -H 'Host: auth.test' -u alice:alice-password \
		-H "X-Forwarded-Email: $BOB" -H 'X-Forwarded-Access-Token: bob-token-1' \
		-H "x-forwarded-email: $BOB" -H "X_Forwarded_Email: $BOB"
	expect_status 200
	expect_body "$SEED_ALICE_JSON"
	http GET /api/my/todos -H 'Host: auth.test' -u bob:bob-password -H "X-Forwarded-Email: $ALICE"
	expect_status 200
	expect_body "$SEED_BOB_JSON"
}

# --- mod_fcgid: several processes, one credential per identity ---------------------------------

# user_loop USER TOKEN EXPECTED SECONDS OUT: requests until SECONDS pass,
# one "ok" or "bad <status>" line per answer.
user_loop() {
	local email=$1 token=$2 expected=$3 secs=$4 out=$5 end body
	end=$((SECONDS + secs))
	while ((SECONDS < end)); do
		body=$(curl -s --max-time 20 -H "X-Forwarded-Email: $email" -H "X-Forwarded-Access-Token: $token" \
			-w '\n%{http_code}' "$APACHE_URL/api/my/todos")
		if [[ ${body##*$'\n'} == 200 && ${body%$'\n'*} == "$expected" ]]; then
			echo ok
		else
			echo "bad ${body##*$'\n'}"
		fi
	done >"$out"
}

test_fcgid_processes_share_credentials() {
	local mark pids=() i procs bad total mints_a mints_b mints_sp
	# A fresh Apache: its processes' credential cache starts empty.
	apache_start fcgid >/dev/null 2>&1 || { _assert_result 1 "Apache restarted" "failed"; return 1; }
	mark=$(log_mark "$APACHE_ERROR_LOG")
	emu_reset
	for ((i = 0; i < 3; i++)); do
		user_loop "$ALICE" alice-token-1 "$SEED_ALICE_JSON" 8 "$IT_TMP/fcgid-alice.$i" &
		pids+=($!)
		user_loop "$BOB" bob-token-1 "$SEED_BOB_JSON" 8 "$IT_TMP/fcgid-bob.$i" &
		pids+=($!)
	done
	# Slow SP requests keep processes busy, so mod_fcgid starts more.
	load_start 8 4 "$APACHE_URL/api/slow?s=0.3"
	for i in "${pids[@]}"; do wait "$i"; done
	load_wait
	total=$(cat "$IT_TMP"/fcgid-*.* | grep -c .)
	bad=$(cat "$IT_TMP"/fcgid-*.* | grep -c '^bad')
	# mod_fcgid hands each process one request at a time and starts more
	# only gradually: a modest number of answers, each checked.
	expect_ge "$total" 12 "user requests made ($total)"
	expect_eq "$bad" 0 "every user answer was 200 with exactly that user's rows ($(cat "$IT_TMP"/fcgid-*.* | grep '^bad' | sort | uniq -c | paste -sd ' '))"
	expect_eq "$LOAD_FAILED" 0 "every SP request succeeded (of $LOAD_TOTAL; failures: ${LOAD_CODES:-none})"
	procs=$(log_since "$APACHE_ERROR_LOG" "$mark" | grep 'msg=request ' | sed -n 's/.* pid=\([0-9]*\) .*/\1/p' | sort -u | grep -c .)
	expect_ge "$procs" 2 "served by several mod_fcgid processes ($procs)"
	expect_ge "$(log_since "$APACHE_ERROR_LOG" "$mark" | grep -c 'msg=serving threads=1 role=managed')" 2 \
		"each a managed process with one request thread"
	mints_a=$(emu_mints "$ALICE")
	mints_b=$(emu_mints "$BOB")
	mints_sp=$(emu_mints "$STACK_SP_CLIENT_ID")
	expect_eq "$mints_a $mints_b $mints_sp" "1 1 1" \
		"one credential minted per identity (alice, bob, the SP) for all $procs processes: the shared cache"
}

test_fcgid_stops_cleanly() {
	local serving stopped
	serving=$(grep -c 'msg=serving threads=1 role=managed' "$APACHE_ERROR_LOG")
	apache_stop
	# shellcheck disable=SC2317 # called through wait_for
	no_conns() { [[ $(pg_count_worker_conns_of "$APACHE_APPNAME") == 0 ]]; }
	wait_for no_conns 10
	expect_eq "$?" 0 "no connection of the mod_fcgid processes left in pg_stat_activity"
	stopped=$(grep -c 'msg=stopped' "$APACHE_ERROR_LOG")
	expect_eq "$stopped" "$serving" "every process ($serving) stopped cleanly on mod_fcgid's SIGTERM"
}

pg_count_worker_conns_of() {
	pg_admin_sql "SELECT count(*) FROM pg_stat_activity WHERE application_name = '$1'"
}

# --- nginx ----------------------------------------------------------------------------------------

e2e_checks "nginx" "$NGINX_URL"
run_test "nginx: routing answers recorded (dot segments 404, one decoding, 405 with Allow)" test_routing_baseline

# --- Apache with mod_fcgid ------------------------------------------------------------------------

if apache_start fcgid >/dev/null 2>&1; then
	e2e_checks "Apache mod_fcgid" "$APACHE_URL"
	run_test "Apache mod_fcgid: the same answers to the same URLs as nginx" test_routing_same_as_nginx
	LAKEBASE_URL=$APACHE_URL run_test "Apache mod_fcgid: an auth module's identity wins over client headers" t_auth_module
	run_test "Apache mod_fcgid: several processes, RLS right, one mint per identity across them" \
		test_fcgid_processes_share_credentials
	run_test "Apache mod_fcgid: stopping Apache stops every process cleanly, no connection left" \
		test_fcgid_stops_cleanly
else
	fail "Apache with mod_fcgid started" "see $APACHE_ERROR_LOG"
fi

# --- Apache with mod_proxy_fcgi, in front of the supervisor ----------------------------------------

if sup_start "$CFG" --workers 2 --threads 8 >/dev/null && apache_start proxy >/dev/null 2>&1; then
	e2e_checks "Apache mod_proxy_fcgi + supervisor" "$APACHE_URL"
	run_test "Apache mod_proxy_fcgi: the same answers to the same URLs as nginx" test_routing_same_as_nginx
	LAKEBASE_URL=$APACHE_URL run_test "Apache mod_proxy_fcgi: an auth module's identity wins over client headers" \
		t_auth_module
else
	fail "Apache with mod_proxy_fcgi and the supervisor started" "see $APACHE_ERROR_LOG and $STACK_WORKER_LOG"
fi
apache_stop
pm_restore >/dev/null
expect_eq "$(stack_healthz)" 200 "the normal stack worker is back"
clear_test_rows
summary
