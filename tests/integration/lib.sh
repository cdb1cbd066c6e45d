# shellcheck shell=bash disable=SC2034 # variables are for the scripts that source this
# tests/integration/lib.sh - helpers for curl-based end-to-end tests
# against the running local stack (scripts/stack.sh start).
#
# A test file:
#
#   #!/usr/bin/env bash
#   set -uo pipefail            # not -e: a failed assertion must not end the file
#   source "$(dirname "$0")/lib.sh"
#
#   test_sp_list() {
#       http GET /api/todos
#       expect_status 200
#       expect_body_json 'map(.title)' '["alice: buy milk","alice: call mum","bob: fix bike"]'
#   }
#   run_test "SP list shows every seeded row" test_sp_list
#   summary                     # last line: "N passed, N failed"; non-zero if any failed
#
# Assertions inside run_test make that one test fail (each failure is
# printed); assertions outside run_test count as tests of their own.
# Every assertion returns non-zero when it fails, so `expect_status 200 ||
# return` skips the rest of a test whose premise failed.

# shellcheck source=tests/stack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../stack/lib.sh"
if [[ -r $STACK_DIR/env.sh ]]; then
	# shellcheck source=/dev/null
	source "$STACK_DIR/env.sh"
	# Again, so STACK_* follow the running stack's env.sh (its build dir,
	# e.g. build-asan): a restarted worker must be the same binary.
	# shellcheck source=tests/stack/lib.sh
	source "$(dirname "${BASH_SOURCE[0]}")/../stack/lib.sh"
fi
LAKEBASE_URL=${LAKEBASE_URL:-$STACK_URL}
EMU_URL=${EMU_URL:-$STACK_EMU_URL}

# Each response is kept in files (bodies may be binary or large) and, for
# convenience, in variables.
IT_TMP=$(mktemp -d "${TMPDIR:-/tmp}/lakebase-it.XXXXXX")
_IT_EXIT_HOOKS=()
# at_exit CMD: runs CMD (eval'ed) when the file exits, last registered
# first, e.g. to put back the normal worker after a test restarted it with
# another config. Use this instead of `trap ... EXIT`, which would replace
# the cleanup below.
at_exit() {
	_IT_EXIT_HOOKS=("$1" "${_IT_EXIT_HOOKS[@]}")
}
_it_exit() {
	local hook
	for hook in "${_IT_EXIT_HOOKS[@]}"; do eval "$hook" || true; done
	rm -rf "$IT_TMP"
}
trap _it_exit EXIT
HTTP_BODY_FILE=$IT_TMP/body
HTTP_HEADERS_FILE=$IT_TMP/headers
HTTP_STATUS=
HTTP_BODY=
HTTP_HEADERS=
HTTP_TIME=

IT_PASSED=0
IT_FAILED=0
IT_SKIPPED=0
IT_FAILED_NAMES=()
_IT_IN_TEST=
_IT_TEST_FAILED=

# --- requests ---------------------------------------------------------------------

# http METHOD PATH [curl args...]
# PATH is relative to $LAKEBASE_URL (nginx) unless it is a full URL. Sets
# HTTP_STATUS ("000" when no answer), HTTP_BODY, HTTP_HEADERS (the final
# response's header block, CRs removed) and the files HTTP_BODY_FILE,
# HTTP_HEADERS_FILE, and HTTP_TIME (seconds the exchange took, e.g.
# 0.012). Bounded by --max-time (IT_HTTP_TIMEOUT, 30 s).
http() {
	local method=$1 path=$2 url raw=$IT_TMP/headers.raw out
	shift 2
	[[ $path == http://* || $path == https://* ]] && url=$path || url=$LAKEBASE_URL$path
	: >"$HTTP_BODY_FILE"
	: >"$raw"
	out=$(curl -sS -X "$method" -o "$HTTP_BODY_FILE" -D "$raw" \
		-w '%{http_code} %{time_total}' --max-time "${IT_HTTP_TIMEOUT:-30}" "$@" "$url" 2>"$IT_TMP/curl.err") || true
	read -r HTTP_STATUS HTTP_TIME <<<"$out"
	HTTP_STATUS=${HTTP_STATUS:-000}
	HTTP_TIME=${HTTP_TIME:-0}
	# Keep only the last header block (a 100 Continue comes first).
	tr -d '\r' <"$raw" | awk '/^HTTP\//{ n = 0; delete h } { h[n++] = $0 } END { for (i = 0; i < n; i++) print h[i] }' \
		>"$HTTP_HEADERS_FILE"
	HTTP_HEADERS=$(<"$HTTP_HEADERS_FILE")
	HTTP_BODY=$(<"$HTTP_BODY_FILE")
}

# header_value NAME: the first value of header NAME (any case) in the last
# response; fails when absent.
header_value() {
	awk -v name="$1" 'BEGIN { name = tolower(name) }
		NR > 1 { i = index($0, ":"); if (i && tolower(substr($0, 1, i - 1)) == name) {
			v = substr($0, i + 1); sub(/^[ \t]+/, "", v); sub(/[ \t]+$/, "", v); print v; found = 1; exit } }
		END { exit !found }' "$HTTP_HEADERS_FILE"
}

# --- results ---------------------------------------------------------------------------

pass() {
	IT_PASSED=$((IT_PASSED + 1))
	printf 'ok   - %s\n' "$1"
}

fail() {
	IT_FAILED=$((IT_FAILED + 1))
	IT_FAILED_NAMES+=("$1")
	printf 'FAIL - %s%s\n' "$1" "${2:+: $2}"
}

skip() {
	IT_SKIPPED=$((IT_SKIPPED + 1))
	printf 'skip - %s%s\n' "$1" "${2:+: $2}"
}

# _assert_result OK LABEL [DETAIL]: inside run_test, marks the current test
# failed (and prints why); outside, counts as a test of its own.
_assert_result() {
	local ok=$1 label=$2 detail=${3:-}
	if [[ -n $_IT_IN_TEST ]]; then
		if [[ $ok != 0 ]]; then
			_IT_TEST_FAILED=1
			printf '       %s: %s\n' "$label" "$detail"
		fi
	elif [[ $ok == 0 ]]; then
		pass "$label"
	else
		fail "$label" "$detail"
	fi
	return "$ok"
}

# A typo'd or missing helper must fail the test it is in, not pass
# unnoticed. bash runs this handler in a subshell: it leaves a mark.
command_not_found_handle() {
	printf '       %s: command not found\n' "$1" >&2
	: >"$IT_TMP/command-not-found"
	return 127
}

# run_test NAME FUNCTION [ARGS...]: one test; it fails when any assertion
# in it fails, a command in it is not found, or FUNCTION returns non-zero.
# With IT_ONLY set, only tests whose NAME contains it run (while working
# on one test: IT_ONLY='off the request' bash tests/integration/test_x.sh).
run_test() {
	local name=$1 rc=0
	shift
	[[ -n ${IT_ONLY:-} && $name != *"$IT_ONLY"* ]] && return 0
	_IT_IN_TEST=1
	_IT_TEST_FAILED=
	rm -f "$IT_TMP/command-not-found"
	"$@" || rc=$?
	[[ -e $IT_TMP/command-not-found ]] && _IT_TEST_FAILED=1
	_IT_IN_TEST=
	if [[ -z $_IT_TEST_FAILED && $rc == 0 ]]; then
		pass "$name"
	else
		fail "$name" "$([[ $rc != 0 ]] && echo "returned $rc")"
		[[ -s $IT_TMP/curl.err ]] && sed 's/^/       curl: /' "$IT_TMP/curl.err"
	fi
	return 0
}

# summary: prints the failed tests, then exactly "N passed, N failed"
# (", N skipped" when some were) as the last line. Returns 1 when any test
# failed or none ran. With IT_TALLY_FILE set, also appends
# "passed failed skipped" to it, for a runner that totals several files.
summary() {
	local name line
	if [[ ${#IT_FAILED_NAMES[@]} -gt 0 ]]; then
		echo "failed:"
		for name in "${IT_FAILED_NAMES[@]}"; do echo "  $name"; done
	fi
	if [[ -n ${IT_TALLY_FILE:-} ]]; then
		echo "$IT_PASSED $IT_FAILED $IT_SKIPPED" >>"$IT_TALLY_FILE"
	fi
	line="$IT_PASSED passed, $IT_FAILED failed"
	[[ $IT_SKIPPED -gt 0 ]] && line+=", $IT_SKIPPED skipped"
	echo "$line"
	[[ $IT_FAILED == 0 && $((IT_PASSED + IT_SKIPPED)) -gt 0 ]]
}

# tally_summary FILE: the same line for the totals a runner collected in
# FILE (one "passed failed skipped" line per test file).
tally_summary() {
	awk '{ p += $1; f += $2; s += $3 }
		END { line = p " passed, " f " failed"; if (s) line = line ", " s " skipped"; print line; exit (f > 0 || p + s == 0) }' "$1"
}

# --- assertions --------------------------------------------------------------------------

# expect_eq ACTUAL EXPECTED LABEL
expect_eq() {
	if [[ $1 == "$2" ]]; then
		_assert_result 0 "$3"
	else
		_assert_result 1 "$3" "expected [$2], got [$1]"
	fi
}

# expect_ge ACTUAL MIN LABEL / expect_le ACTUAL MAX LABEL (integers)
expect_ge() {
	if [[ $1 =~ ^-?[0-9]+$ ]] && (($1 >= $2)); then
		_assert_result 0 "$3"
	else
		_assert_result 1 "$3" "expected >= $2, got [$1]"
	fi
}
expect_le() {
	if [[ $1 =~ ^-?[0-9]+$ ]] && (($1 <= $2)); then
		_assert_result 0 "$3"
	else
		_assert_result 1 "$3" "expected <= $2, got [$1]"
	fi
}

# expect_status N: the last response's HTTP status.
expect_status() {
	if [[ $HTTP_STATUS == "$1" ]]; then
		_assert_result 0 "status $1"
	else
		_assert_result 1 "status $1" "got $HTTP_STATUS, body: ${HTTP_BODY:0:300}"
	fi
}

# expect_body_json JQ-EXPR EXPECTED: `jq -c JQ-EXPR` of the body must equal
# EXPECTED exactly (EXPECTED is first compacted by jq when it is JSON, so
# spacing does not matter; key order does). Beware: jq 1.6 (Debian 12) reads numbers
# as doubles, so a bigint beyond 2^53 compares rounded: check those with
# expect_body or grep on HTTP_BODY.
expect_body_json() {
	local expr=$1 expected=$2 actual norm
	if norm=$(jq -c . <<<"$expected" 2>/dev/null) && [[ -n $norm ]]; then
		expected=$norm
	fi
	if ! actual=$(jq -c "$expr" <"$HTTP_BODY_FILE" 2>&1); then
		_assert_result 1 "body $expr" "not JSON or jq failed ($actual), body: ${HTTP_BODY:0:300}"
		return
	fi
	if [[ $actual == "$expected" ]]; then
		_assert_result 0 "body $expr == $expected"
	else
		_assert_result 1 "body $expr == $expected" "got $actual"
	fi
}

# expect_body TEXT: the body, exactly.
expect_body() {
	expect_eq "$HTTP_BODY" "$1" "body"
}

# expect_header NAME VALUE: header NAME (any case) has exactly VALUE.
expect_header() {
	local actual
	if ! actual=$(header_value "$1"); then
		_assert_result 1 "header $1: $2" "header absent"
		return
	fi
	expect_eq "$actual" "$2" "header $1: $2"
}

# expect_header_absent NAME
expect_header_absent() {
	if header_value "$1" >/dev/null; then
		_assert_result 1 "no header $1" "present: $(header_value "$1")"
	else
		_assert_result 0 "no header $1"
	fi
}

# expect_match ACTUAL REGEX LABEL: ACTUAL matches the extended regex REGEX.
expect_match() {
	if [[ $1 =~ $2 ]]; then
		_assert_result 0 "$3"
	else
		_assert_result 1 "$3" "[$1] does not match /$2/"
	fi
}

# expect_error STATUS CODE [MESSAGE]: an error answer of the documented
# shape, exactly {"error":{"code","message","request_id"}}, with CODE (and
# MESSAGE, when given; else any non-empty message), a JSON content type,
# and a request_id equal to the X-Request-Id response header (nginx's own
# error pages send none: then any non-empty request_id).
expect_error() {
	local status=$1 code=$2 message=${3-} rid verdict
	expect_status "$status" || return
	expect_header Content-Type application/json
	rid=$(header_value X-Request-Id) || rid=
	# One jq run for the whole shape: these assertions run hundreds of times.
	verdict=$(jq -r --arg code "$code" --arg msg "$message" --arg rid "$rid" '
		if type != "object" or keys != ["error"] or (.error | type) != "object"
			or (.error | keys) != ["code", "message", "request_id"]
			then "not of the shape {\"error\":{\"code\",\"message\",\"request_id\"}}"
		elif .error.code != $code then "code is \(.error.code | tojson)"
		elif (.error.message | type) != "string" or .error.message == "" then "message is not a non-empty string"
		elif $msg != "" and .error.message != $msg then "message is \(.error.message | tojson), expected \($msg | tojson)"
		elif (.error.request_id | type) != "string" or .error.request_id == "" then "request_id is not a non-empty string"
		elif $rid != "" and .error.request_id != $rid then "request_id \(.error.request_id | tojson) is not the X-Request-Id header \($rid | tojson)"
		else "ok" end' "$HTTP_BODY_FILE" 2>&1)
	if [[ $verdict == ok ]]; then
		_assert_result 0 "error $status $code"
	else
		_assert_result 1 "error $status $code" "${verdict:-not JSON}; body: ${HTTP_BODY:0:300}"
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

# --- the emulator --------------------------------------------------------------------------

# emu_counter JQ: prints `jq -r JQ` of the emulator's counters, e.g.
#   emu_counter '.mints["alice@example.com"] // 0'
#   emu_counter '.mints_total'
emu_counter() {
	curl -sSf --max-time 5 "$EMU_URL/_emulator/counters" | jq -r "$1"
}

# emu_fault JSON: queues a fault for the next calls, e.g.
#   emu_fault '{"status": 503, "count": 2, "path": "/api/2.0/postgres/credentials"}'
#   emu_fault '{"delay_ms": 2000}'   emu_fault '{"drop": true}'
emu_fault() {
	curl -sSf --max-time 5 -X POST -H 'Content-Type: application/json' \
		--data "$1" "$EMU_URL/_emulator/faults" >/dev/null
}

# emu_set_config JSON: changes lifetimes at run time, e.g.
#   emu_set_config '{"credential_lifetime_s": 5}'
emu_set_config() {
	curl -sSf --max-time 5 -X POST -H 'Content-Type: application/json' \
		--data "$1" "$EMU_URL/_emulator/config" >/dev/null
}

# emu_reset: counters and pending faults back to zero.
emu_reset() {
	curl -sSf --max-time 5 -X POST "$EMU_URL/_emulator/reset" >/dev/null
}

# emu_credential_calls: calls to POST /api/2.0/postgres/credentials so far
# (answered with a credential or not).
emu_credential_calls() {
	emu_counter '.mints_total + .mint_failures'
}

# emu_mints ROLE: credentials minted for ROLE (lakebase-sp, an email).
emu_mints() {
	emu_counter ".mints[\"$1\"] // 0"
}

# --- the worker ------------------------------------------------------------------------------

# closed_total REASON: the worker's lakebase_connections_closed_total for
# REASON (renewed, evicted, expired, ...), 0 before the first.
closed_total() {
	curl -s --max-time 5 "$LAKEBASE_URL/metrics" |
		awk -v r="$1" '$1 == "lakebase_connections_closed_total{reason=\"" r "\"}" { print $2; found = 1 }
			END { if (!found) print 0 }'
}

# json_strip_comments FILE: FILE without the /* */ and // comments the
# worker's config allows, so jq can read it. Strings are left alone.
json_strip_comments() {
	perl -0777 -pe 's{("(?:\\.|[^"\\])*")|/\*.*?\*/|//[^\n]*}{defined $1 ? $1 : ""}gse' "$1"
}

# worker_config_derive OUT JQ-FILTER [JQ ARGS...]: writes OUT, the stack's
# worker config with JQ-FILTER applied, e.g.
#   worker_config_derive "$STACK_DIR/idle.json" '.pool.idle_timeout_ms = 1500'
worker_config_derive() {
	local out=$1 filter=$2
	shift 2
	json_strip_comments "$STACK_WORKER_CONFIG" | jq "$@" "$filter" >"$out.tmp" &&
		mv "$out.tmp" "$out"
}

# worker_restart [CONFIG]: stops the stack's worker (SIGTERM, by PID) and
# starts a new one (default: the stack's config), so its credential cache
# and pools start empty. Fails when the new worker does not become healthy.
worker_restart() {
	worker_stop && worker_start "$@"
}

# --- PostgreSQL --------------------------------------------------------------------------------

# pg_count_worker_conns: the worker's connections now open, as PostgreSQL
# sees them (application_name is the worker's PGAPPNAME).
pg_count_worker_conns() {
	pg_admin_psql -Atc "SELECT count(*) FROM pg_stat_activity WHERE application_name = '${PGAPPNAME:-lakebase-fcgi}'"
}

# pg_admin_sql SQL: one value (first column of the first row), unaligned.
pg_admin_sql() {
	pg_admin_psql -Atc "$1"
}

# pg_terminate_worker_conns: ends every backend of the worker (as an admin
# would, or a failover); prints how many were signalled.
pg_terminate_worker_conns() {
	pg_admin_sql "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '${PGAPPNAME:-lakebase-fcgi}'"
}
