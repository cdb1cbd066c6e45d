# shellcheck shell=bash disable=SC2034 # variables are for the scripts that source this
# tests/integration/user_lib.sh - helpers shared by the on-behalf-of-user
# tests (test_user_routes.sh, test_user_caps.sh). Source it after lib.sh.
#
# These tests restart parts of the stack (the worker with another config,
# the emulator with more users); users_restore puts the stack's normal
# worker and emulator back, and runs at exit as a safety net.

# tests/stack/lib.sh derived its STACK_* paths from the caller's environment
# before lib.sh sourced the stack's env.sh; the build and configs the stack
# was started with are the ones to restart with.
STACK_BUILD=${LAKEBASE_BUILD_DIR:-$STACK_BUILD}
STACK_WORKER_BIN=$STACK_BUILD/src/lakebase-fcgi
STACK_EMU_BIN=$STACK_BUILD/tests/emulator/lakebase-emulator
USERS_NORMAL_WORKER_CONFIG=${LAKEBASE_WORKER_CONFIG:-$STACK_WORKER_CONFIG}
USERS_NORMAL_EMU_CONFIG=${LAKEBASE_EMU_CONFIG:-$STACK_EMU_CONFIG}
USERS_PG_LOG=${LAKEBASE_PG_LOG:-$STACK_PG_LOG}
USERS_WORKER_LOG=${LAKEBASE_WORKER_LOG:-$STACK_WORKER_LOG}
USERS_APP=${PGAPPNAME:-lakebase-fcgi}

# The seeded rows (sql/seed.sql) as the user route returns them, byte for byte.
SEED_ALICE_JSON='[{"id":"00000000-0000-4000-8000-000000000001","title":"alice: buy milk","done":false,"owner":"alice@example.com"},{"id":"00000000-0000-4000-8000-000000000002","title":"alice: call mum","done":true,"owner":"alice@example.com"}]'
SEED_BOB_JSON='[{"id":"00000000-0000-4000-8000-000000000003","title":"bob: fix bike","done":false,"owner":"bob@example.com"}]'
# Rows these tests create carry this title prefix, so a rerun can clear them.
USERS_TITLE_PREFIX='it-users:'

_USERS_WORKER_CHANGED=
_USERS_EMU_CHANGED=

# --- requests ------------------------------------------------------------------------

# new_rid NAME: sets RID, a request id this test can find in the worker log.
new_rid() {
	RID="it-users-$1-$RANDOM$RANDOM"
}

# as_user METHOD PATH EMAIL TOKEN [curl args...]: http() with both identity
# headers and a fresh request id in RID.
as_user() {
	local method=$1 path=$2 email=$3 token=$4
	shift 4
	new_rid "${email%%@*}"
	http "$method" "$path" -H "X-Request-Id: $RID" \
		-H "X-Forwarded-Email: $email" -H "X-Forwarded-Access-Token: $token" "$@"
}

# raw_http REQUEST-TEXT: sends REQUEST-TEXT (printf %b escapes, so \r\n)
# verbatim to nginx, for what curl will not send (whitespace-only header
# values). Sets HTTP_STATUS, HTTP_HEADERS, HTTP_BODY and their files like
# http(). The request must say "Connection: close".
raw_http() {
	local raw=$IT_TMP/raw.response
	: >"$raw"
	# shellcheck disable=SC2016 # $1 and $2 belong to the inner bash
	timeout 15 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1; printf "%b" "$2" >&3; cat <&3' \
		raw_http "$STACK_HTTP_PORT" "$1" >"$raw" 2>"$IT_TMP/curl.err" || true
	HTTP_STATUS=$(head -n 1 "$raw" | awk '{ print $2 }')
	HTTP_STATUS=${HTTP_STATUS:-000}
	tr -d '\r' <"$raw" | awk '/^$/ { exit } { print }' >"$HTTP_HEADERS_FILE"
	tr -d '\r' <"$raw" | awk 'body { print } /^$/ { body = 1 }' >"$HTTP_BODY_FILE"
	HTTP_HEADERS=$(<"$HTTP_HEADERS_FILE")
	HTTP_BODY=$(<"$HTTP_BODY_FILE")
}

# raw_get PATH HEADER-LINES: a GET through nginx with exactly these header
# lines ("Name: value\r\n" each) after Host and Connection.
raw_get() {
	raw_http "GET $1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n$2\r\n"
}

# --- assertions ----------------------------------------------------------------------

# expect_private: the headers every on-behalf-of-user response carries.
expect_private() {
	expect_header Cache-Control "private, no-store"
	expect_header Vary "X-Forwarded-Email, X-Forwarded-Access-Token"
}

# expect_user_error STATUS CODE: an error answer with CODE (lib.sh's
# expect_error checks the whole shape, when this lib.sh has it), and the
# private headers.
expect_user_error() {
	if declare -F expect_error >/dev/null; then
		expect_error "$1" "$2"
	else
		expect_status "$1"
		expect_body_json '.error.code' "\"$2\""
	fi
	expect_private
}

# expect_no_rows_of EMAIL: the body holds nothing of EMAIL's (by owner
# name, seeded ids or titles).
expect_no_rows_of() {
	local who=${1%%@*}
	if grep -qiF -e "$1" -e "\"$who:" <<<"$HTTP_BODY"; then
		_assert_result 1 "no data of $1 in the body" "body: ${HTTP_BODY:0:300}"
	else
		_assert_result 0 "no data of $1 in the body"
	fi
}

# --- logs ------------------------------------------------------------------------------

# worker_log_line RID: the worker's log line for that request (bounded wait:
# the line is written after the response).
worker_log_line() {
	wait_for "grep -qF 'request_id=$1 ' '$USERS_WORKER_LOG'" 5
	grep -F "request_id=$1 " "$USERS_WORKER_LOG" | tail -n 1
}

# expect_worker_logged RID PATTERN: the worker's line for RID matches the ERE.
expect_worker_logged() {
	local line
	line=$(worker_log_line "$1")
	if [[ $line =~ $2 ]]; then
		_assert_result 0 "worker log for $1 matches /$2/"
	else
		_assert_result 1 "worker log for $1 matches /$2/" "line: ${line:-(none)}"
	fi
}

# pg_logins_since MARK: the PostgreSQL log's connection attempts after MARK
# (every client: a caller that knows nobody else connects can count them).
pg_logins_since() {
	log_since "$USERS_PG_LOG" "$1" | grep -c 'LOG:  connection received:' || true
}

# pg_failed_logins_since MARK ROLE
pg_failed_logins_since() {
	log_since "$USERS_PG_LOG" "$1" | grep -cF "FATAL:  password authentication failed for user \"$2\"" || true
}

# pg_authorized_since MARK ROLE
pg_authorized_since() {
	log_since "$USERS_PG_LOG" "$1" | grep -cF "connection authorized: user=$2 " || true
}

# --- PostgreSQL ------------------------------------------------------------------------------

# pg_worker_pids ROLE: the worker's backends logged in as ROLE, pids sorted,
# space separated.
pg_worker_pids() {
	pg_admin_psql -At -v role="$1" -v app="$USERS_APP" <<-'EOF' | paste -sd ' '
	SELECT pid FROM pg_stat_activity
	 WHERE usename = :'role' AND application_name = :'app' ORDER BY pid;
	EOF
}

# clear_test_rows: rows the user tests inserted (by title prefix).
clear_test_rows() {
	pg_admin_sql "DELETE FROM app.todos WHERE title LIKE '$USERS_TITLE_PREFIX%'" >/dev/null
}

# --- restarting parts of the stack -------------------------------------------------------

# worker_config_with JQ OUT: the stack's normal worker config (comments
# stripped) with the jq program JQ applied, written to OUT.
worker_config_with() {
	if declare -F json_strip_comments >/dev/null; then
		json_strip_comments "$USERS_NORMAL_WORKER_CONFIG"
	else
		perl -0pe 's{/\*.*?\*/}{}gs' "$USERS_NORMAL_WORKER_CONFIG"
	fi | jq "$1" >"$2"
}

# users_worker_restart CONFIG: the worker, restarted with CONFIG; its log
# offset at the restart goes to WORKER_LOG_MARK.
users_worker_restart() {
	[[ $1 != "$USERS_NORMAL_WORKER_CONFIG" ]] && _USERS_WORKER_CHANGED=1
	worker_stop
	WORKER_LOG_MARK=$(log_mark "$USERS_WORKER_LOG")
	worker_start "$1" 2>&1 | sed 's/^/       /' >&2
	[[ ${PIPESTATUS[0]} == 0 ]]
}

# users_emulator_restart CONFIG
users_emulator_restart() {
	[[ $1 != "$USERS_NORMAL_EMU_CONFIG" ]] && _USERS_EMU_CHANGED=1
	emulator_stop
	emulator_start "$1" 2>&1 | sed 's/^/       /' >&2
	[[ ${PIPESTATUS[0]} == 0 ]]
}

# users_restore: the normal emulator (config, lifetimes, counters) and the
# normal worker, if a test changed them. The worker restarts after the
# emulator: a new emulator does not know the worker's OAuth token.
users_restore() {
	local rc=0
	if [[ -n $_USERS_EMU_CHANGED ]]; then
		users_emulator_restart "$USERS_NORMAL_EMU_CONFIG" || rc=1
		_USERS_EMU_CHANGED=
		_USERS_WORKER_CHANGED=1
	fi
	if [[ -n $_USERS_WORKER_CHANGED ]]; then
		users_worker_restart "$USERS_NORMAL_WORKER_CONFIG" || rc=1
		_USERS_WORKER_CHANGED=
	fi
	return "$rc"
}

# A safety net when a file ends early; the files call users_restore
# themselves at the end.
if declare -F at_exit >/dev/null; then
	at_exit 'users_restore >/dev/null 2>&1'
else
	trap 'users_restore >/dev/null 2>&1; rm -rf "$IT_TMP"' EXIT
fi

# --- bulk users (test_user_caps.sh, test_shm_cache.sh) ---------------------------------
# The script sets BULK_KIND (emails are <kind>NN@example.com, tokens
# <kind>NN-token-1), BULK_ROW_PREFIX (row ids are <prefix>NN) and NUMS
# (the NN, two digits each); each user gets a role and one row.

user_email() { echo "$BULK_KIND$1@example.com"; }
user_token() { echo "$BULK_KIND$1-token-1"; }
user_row_id() { echo "$BULK_ROW_PREFIX$1"; }
# user_json NN: the user route's answer for that user, byte for byte.
user_json() {
	printf '[{"id":"%s","title":"%s %s%s","done":false,"owner":"%s"}]' \
		"$(user_row_id "$1")" "$USERS_TITLE_PREFIX" "$BULK_KIND" "$1" "$(user_email "$1")"
}

# count_user_roles: how many of the bulk users' roles exist.
count_user_roles() {
	local list n
	list=$(for n in "${NUMS[@]}"; do printf "'%s'," "$(user_email "$n")"; done)
	pg_admin_sql "SELECT count(*) FROM pg_roles WHERE rolname IN (${list%,})"
}

# drop_users: the bulk users' roles and rows (idempotent).
drop_users() {
	local n
	{
		echo "DELETE FROM app.todos WHERE title LIKE '$USERS_TITLE_PREFIX $BULK_KIND%';"
		for n in "${NUMS[@]}"; do
			printf 'SELECT format(%s, r, r) FROM (VALUES (%s)) v(r) WHERE EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r)\n\\gexec\n' \
				"'DROP OWNED BY %I; DROP ROLE %I'" "'$(user_email "$n")'"
		done
	} | pg_admin_psql -q >/dev/null
}

# bulk_users_setup EMU_CONFIG: the roles (one psql session), one row each,
# and the emulator restarted with the normal config plus their tokens
# (written to EMU_CONFIG). An assertion checks the roles exist.
bulk_users_setup() {
	local emu_cfg=$1 n users_json
	drop_users
	{
		for n in "${NUMS[@]}"; do
			printf '\\set email %s\n\\i %s\n' "$(user_email "$n")" "$STACK_REPO/sql/create_user_role.sql"
		done
	} | pg_admin_psql -q -v local=1 >/dev/null || return
	{
		echo 'INSERT INTO app.todos (id, title, owner) VALUES'
		for n in "${NUMS[@]}"; do
			printf "  ('%s', '%s %s%s', '%s')%s\n" "$(user_row_id "$n")" "$USERS_TITLE_PREFIX" "$BULK_KIND" "$n" \
				"$(user_email "$n")" "$([[ $n == "${NUMS[-1]}" ]] && echo ';' || echo ',')"
		done
	} | pg_admin_psql -q >/dev/null || return
	expect_eq "$(count_user_roles)" "${#NUMS[@]}" "${#NUMS[@]} roles"
	users_json=$(for n in "${NUMS[@]}"; do
		jq -n --arg e "$(user_email "$n")" --arg t "$(user_token "$n")" '{email: $e, tokens: [$t]}'
	done | jq -s .)
	emulator_config "$IT_TMP/emulator-base.json"
	jq --argjson u "$users_json" '.users += $u' "$IT_TMP/emulator-base.json" >"$emu_cfg" || return
	users_emulator_restart "$emu_cfg"
}

# sampler_start OUT: one count of the worker's connections per line in OUT,
# every ~50 ms, on one admin session, until sampler_stop OUT (at most 60 s).
sampler_start() {
	local out=$1
	rm -f "$out.stop"
	(
		for ((i = 0; i < 1200; i++)); do
			[[ -e $out.stop ]] && break
			echo "SELECT count(*) FROM pg_stat_activity WHERE application_name = '$USERS_APP';"
			sleep 0.05
		done | pg_admin_psql -At >"$out" 2>"$out.err"
	) &
	SAMPLER_PID=$!
	wait_for "[[ -s '$out' ]]" 10
}

sampler_stop() {
	touch "$1.stop"
	wait_for "! kill -0 $SAMPLER_PID" 10
	wait "$SAMPLER_PID" 2>/dev/null
}
