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

# log_mark FILE: its current size, for log_since.
log_mark() {
	stat -c %s "$1" 2>/dev/null || echo 0
}

# log_since FILE MARK: what FILE gained after MARK.
log_since() {
	tail -c +"$(($2 + 1))" "$1" 2>/dev/null
}

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
