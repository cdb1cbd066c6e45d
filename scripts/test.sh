#!/usr/bin/env bash
# scripts/test.sh - the whole test suite: the README's second command, and
# what .ci/run runs. As root, on a fresh Debian 12 machine:
#
#   scripts/test.sh            everything: packages (scripts/deps.sh), build,
#                              unit tests, the local stack with every
#                              tests/integration/test_*.sh, then all of it
#                              again built with ASan+UBSan (any sanitizer
#                              report fails the suite), then make distcheck
#   scripts/test.sh --quick    normal build, unit and integration tests only
#   scripts/test.sh FILE...    only these integration test files, against the
#                              stack already running (scripts/stack.sh start);
#                              a file can also be run directly: bash FILE
#
# The last line is exactly "N passed, N failed", totalled over the unit
# tests (CUnit), the integration tests, the log checks (no secret in any
# log; with sanitizers, no report) and distcheck; the exit status is 1 when
# anything failed. The stack is stopped (by PID) on exit, whatever happens.
#
# Env: LAKEBASE_STACK_DIR and LAKEBASE_{PG,EMU,HTTP}_PORT (scripts/stack.sh),
# JOBS (make -j, default 2).
set -uo pipefail   # not -e: a failed phase is counted, the others still run

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

PASSED=0
FAILED=0
FAILURES=()
STACK_STARTED=
RUN_DIR=
PHASE_OUT=/dev/null

# usage [STATUS]: the header above, to stderr unless STATUS is 0.
usage() {
	if [[ ${1:-2} == 0 ]]; then
		sed -n '2,19s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
	else
		sed -n '2,19s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
	fi
	exit "${1:-2}"
}

section() {
	printf '\n=== %s ===\n' "$*"
}

# pass N / fail LABEL: add to the totals.
pass() {
	PASSED=$((PASSED + $1))
}

fail() {
	FAILED=$((FAILED + 1))
	FAILURES+=("$1")
	printf 'FAIL - %s\n' "$1"
}

# check LABEL CMD...: one counted check; CMD's own output explains a failure.
check() {
	local label=$1
	shift
	if "$@"; then
		pass 1
		printf 'ok   - %s\n' "$label"
	else
		fail "$label"
	fi
}

elapsed_since() {
	awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0fs", b - a }'
}

# Loaded again whenever LAKEBASE_BUILD_DIR changes: STACK_* follow it.
load_stack_lib() {
	# shellcheck source=tests/stack/lib.sh
	source "$REPO/tests/stack/lib.sh"
}

# --- the stack ------------------------------------------------------------------------------

# Output also goes to $PHASE_OUT, which the log checks read.
stack_start() {
	STACK_STARTED=1
	"$REPO/scripts/stack.sh" start 2>&1 | tee -a "$PHASE_OUT"
}

# Front to back, each part by its PID, waiting for each to exit (so a
# sanitized worker finishes its leak check before we read the reports).
stack_stop() {
	if [[ -n $STACK_STARTED ]]; then
		STACK_STARTED=
		"$REPO/scripts/stack.sh" stop 2>&1 | tee -a "$PHASE_OUT"
	fi
}

on_exit() {
	stack_stop
	[[ -n $RUN_DIR ]] && rm -rf "$RUN_DIR"
}

# --- unit tests -------------------------------------------------------------------------------

# unit_tests BUILD_DIR LABEL: make check, then the CUnit run summary that
# automake keeps in tests/unit/run_unit.log; counts CUnit's tests.
unit_tests() {
	local dir=$1 label=$2 log=$1/tests/unit/run_unit.log rc=0 row ran passed failed
	section "unit tests ($label)"
	rm -f "$log"
	make -C "$dir" -j"${JOBS:-2}" check || rc=$?
	if [[ ! -r $log ]]; then
		fail "unit tests ($label): no $log (build failed?)"
		return
	fi
	echo
	awk '/Run Summary/ { p = 1 } p { print } /Elapsed time/ { exit }' "$log"
	row=$(awk '$1 == "tests" && NF >= 5 { print $3, $4, $5; exit }' "$log")
	if [[ -z $row ]]; then
		fail "unit tests ($label): no CUnit run summary (crashed?); end of $log:"
		tail -n 30 "$log"
		return
	fi
	read -r ran passed failed <<<"$row"
	pass "$passed"
	if ((failed > 0)); then
		FAILED=$((FAILED + failed))
		FAILURES+=("unit tests ($label): $failed of $ran failed")
		echo "Failures, from $log:"
		grep -E -A3 '^Suite .*, Test .* had failures|^ +[0-9]+\. ' "$log" | head -n 60
	fi
	if [[ $rc != 0 && $failed == 0 ]]; then
		fail "unit tests ($label): make check exited $rc though CUnit counted no failure (a sanitizer report at exit?)"
		tail -n 30 "$log"
	fi
}

# --- integration tests --------------------------------------------------------------------------

# integration_tests LABEL FILE...: runs each file (its own output, its own
# "N passed, N failed"), totals them with tally_summary (lib.sh). A file
# that dies before its summary, or exits non-zero with none failed,
# counts one failure. Everything printed is also kept in $PHASE_OUT.
integration_tests() {
	local label=$1 f rc lines tally=$RUN_DIR/tally-$1 out=$RUN_DIR/file-output line p fl
	shift
	: >"$tally"
	for f in "$@"; do
		printf '\n--- %s\n' "${f#"$REPO"/}"
		lines=$(wc -l <"$tally")
		IT_TALLY_FILE=$tally bash "$f" 2>&1 | tee "$out"
		rc=${PIPESTATUS[0]}
		cat "$out" >>"$PHASE_OUT"
		while IFS= read -r line; do
			FAILURES+=("${f##*/} ($label): ${line#FAIL - }")
		done < <(grep '^FAIL - ' "$out")
		if [[ $(wc -l <"$tally") == "$lines" ]]; then
			echo "0 0 0" >>"$tally"
			fail "${f##*/} ended without its summary (exit status $rc)"
		elif [[ $rc != 0 ]]; then
			read -r p fl _ < <(tail -n 1 "$tally")
			[[ $fl == 0 ]] && fail "${f##*/} exited $rc with no failed test"
		fi
	done
	# shellcheck disable=SC2016 # $1 and $2 belong to the inner bash
	line=$(bash -c 'source "$1" && tally_summary "$2"' tally "$REPO/tests/integration/lib.sh" "$tally" 2>/dev/null)
	printf '\nintegration tests (%s): %s\n' "$label" "$line"
	read -r p fl < <(awk '{ p += $1; f += $2 } END { print p + 0, f + 0 }' "$tally")
	PASSED=$((PASSED + p))
	FAILED=$((FAILED + fl))
}

integration_files() {
	ls "$REPO"/tests/integration/test_*.sh 2>/dev/null
}

# --- log checks -----------------------------------------------------------------------------------

# secret_probes FILE: while the stack runs, passes each user's token
# through nginx and the worker, then writes "LABEL<TAB>VALUE" lines for
# every secret a log must never show: the service principal's client
# secret, the admin password, every user token, an OAuth access token and
# a database credential freshly minted from the emulator.
secret_probes() {
	local out=$1 email n token cred oauth
	(umask 077 && : >"$out")
	# Every user token of every emulator config in the state dir (tests
	# may start the emulator with more users).
	while IFS=$'\t' read -r email n token; do
		curl -s -o /dev/null --max-time 10 "$STACK_URL/api/my/todos" \
			-H "X-Forwarded-Email: $email" -H "X-Forwarded-Access-Token: $token"
		printf 'workspace token %s of %s\t%s\n' "$n" "$email" "$token" >>"$out"
	done < <(find "$STACK_DIR" -maxdepth 1 -name '*.json' -exec jq -r 'select(type == "object" and (.users | type) == "array")
		| .users[] | .email as $e | .tokens | to_entries[] | [$e, .key + 1, .value] | @tsv' {} + 2>/dev/null | sort -u)
	printf 'service principal client secret\t%s\n' "$(secret_get sp.secret)" >>"$out"
	printf 'PostgreSQL admin password\t%s\n' "$(secret_get admin.password)" >>"$out"
	# A credential minted with a user's token (the emulator must not log it).
	read -r email token < <(jq -r '.users[0] | [.email, .tokens[0]] | @tsv' "$STACK_EMU_CONFIG")
	cred=$(curl -s --max-time 10 -X POST -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
		--data "{\"endpoint\": \"$STACK_ENDPOINT\"}" "$STACK_EMU_URL/api/2.0/postgres/credentials" | jq -r '.token // empty')
	[[ -n $cred ]] && printf 'database credential of %s\t%s\n' "$email" "$cred" >>"$out"
	# An OAuth M2M access token (the secret goes to curl on stdin, not argv).
	oauth=$(printf 'user = "%s:%s"\n' "$STACK_SP_CLIENT_ID" "$(secret_get sp.secret)" |
		curl -s --max-time 10 -K - --data 'grant_type=client_credentials&scope=all-apis' \
			"$STACK_EMU_URL/oidc/v1/token" | jq -r '.access_token // empty')
	[[ -n $oauth ]] && printf 'OAuth access token\t%s\n' "$oauth" >>"$out"
	if [[ -z $cred || -z $oauth ]]; then
		echo "WARNING: could not mint a credential or an OAuth token to look for" >&2
	fi
}

state_logs() {
	find "$STACK_DIR" -maxdepth 2 -type f \( -name '*.log' -o -name 'sanitizer.*' \) | sort
}

# no_secret_in_logs LABEL VALUE: VALUE (never printed) is in no log file.
no_secret_in_logs() {
	local label=$1 value=$2 found
	found=$(state_logs | xargs -r grep -lF -- "$value")
	if [[ -n $found ]]; then
		echo "  the $label appears in: $(tr '\n' ' ' <<<"$found")"
		return 1
	fi
}

# JWT-shaped strings (the credentials' shape) in no log: catches any
# credential, including the ones only the worker ever saw.
no_jwt_in_logs() {
	local found
	found=$(state_logs | xargs -r grep -lE '[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}')
	if [[ -n $found ]]; then
		echo "  a credential-shaped (JWT) string appears in: $(tr '\n' ' ' <<<"$found")"
		return 1
	fi
}

secret_checks() {
	local probes=$1 label value
	echo "secret hygiene: $(state_logs | wc -l) log files in $STACK_DIR"
	while IFS=$'\t' read -r label value; do
		[[ -n $value ]] && check "no $label in any log" no_secret_in_logs "$label" "$value"
	done <"$probes"
	check "no credential-shaped (JWT) string in any log" no_jwt_in_logs
}

# Processes are stopped with SIGTERM (SIGINT for PostgreSQL) and waited
# for; a SIGKILL means one hung, and a sanitized one skipped its checks.
no_sigkill_needed() {
	if grep -q 'SIGKILL' "$PHASE_OUT"; then
		grep 'SIGKILL' "$PHASE_OUT" | sed 's/^/  /'
		return 1
	fi
}

# The stack's worker really is the sanitized build (libasan mapped).
worker_is_sanitized() {
	local pid
	pid=$(read_pid "$STACK_WORKER_PID") && grep -q libasan "/proc/$pid/maps"
}

# The first three reports are shown (one per process; usually the same).
no_sanitizer_report_files() {
	local f n=0
	for f in "$STACK_DIR"/sanitizer.* "$RUN_DIR"/unit-sanitizer.*; do
		[[ -e $f ]] || continue
		n=$((n + 1))
		((n > 3)) && continue
		echo "  sanitizer report $f:"
		head -n 40 "$f" | sed 's/^/    /'
	done
	((n > 3)) && echo "  ... $n report files in all"
	((n == 0))
}

no_sanitizer_output_in_logs() {
	local found
	found=$(state_logs | grep -v '/sanitizer\.' |
		xargs -r grep -lE 'runtime error|AddressSanitizer|LeakSanitizer')
	if [[ -n $found ]]; then
		echo "  sanitizer output in: $(tr '\n' ' ' <<<"$found")"
		xargs grep -hE -m 5 'runtime error|AddressSanitizer|LeakSanitizer' <<<"$found" | sed 's/^/    /'
		return 1
	fi
}

# --- one build, tested ----------------------------------------------------------------------------

# phase LABEL BUILD_DIR [--sanitizers]: build, unit tests, the stack with
# every integration test, then the log checks once the stack is stopped.
phase() {
	local label=$1 dir=$2 san=${3:-} t0=$EPOCHREALTIME probes='' files
	export LAKEBASE_BUILD_DIR=$dir
	load_stack_lib
	PHASE_OUT=$RUN_DIR/output-$label
	: >"$PHASE_OUT"
	section "build ($label)"
	if ! "$REPO/scripts/build.sh" ${san:+"$san"}; then
		fail "build ($label)"
		return
	fi
	if [[ -n $san ]]; then
		# Reports go to files: the unit tests' here, the stack's into its
		# state dir (which `stack.sh start` recreates first).
		export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:log_path=$RUN_DIR/unit-sanitizer"
		export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$RUN_DIR/unit-sanitizer"
	fi
	unit_tests "$dir" "$label"
	if [[ -n $san ]]; then
		export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:log_path=$STACK_DIR/sanitizer"
		export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$STACK_DIR/sanitizer"
		export LAKEBASE_WORKER_STOP_TIMEOUT=30
	fi
	section "integration tests ($label), through nginx"
	if stack_start; then
		[[ -n $san ]] && check "the stack runs the sanitized worker ($dir)" worker_is_sanitized
		mapfile -t files < <(integration_files)
		integration_tests "$label" "${files[@]}"
		probes=$RUN_DIR/probes-$label
		secret_probes "$probes"
	else
		fail "stack start ($label)"
	fi
	section "logs ($label)"
	stack_stop
	[[ -n $probes ]] && secret_checks "$probes"
	check "every process stopped without SIGKILL ($label)" no_sigkill_needed
	if [[ -n $san ]]; then
		check "no sanitizer report file (unit tests, worker, emulator)" no_sanitizer_report_files
		check "no sanitizer output in any log (worker, emulator, ...)" no_sanitizer_output_in_logs
		unset ASAN_OPTIONS UBSAN_OPTIONS LAKEBASE_WORKER_STOP_TIMEOUT
	fi
	echo "phase $label: $(elapsed_since "$t0")"
}

distcheck() {
	local log=$RUN_DIR/distcheck.log t0=$EPOCHREALTIME
	section "make distcheck"
	if make -C "$REPO/build" distcheck >"$log" 2>&1; then
		grep -A3 -B1 'archives ready for distribution' "$log"
		pass 1
		printf 'ok   - make distcheck (%s)\n' "$(elapsed_since "$t0")"
	else
		tail -n 40 "$log"
		fail "make distcheck"
	fi
}

# --- entry points ---------------------------------------------------------------------------------

totals() {
	local f
	section "summary"
	if [[ ${#FAILURES[@]} -gt 0 ]]; then
		echo "failed:"
		for f in "${FAILURES[@]}"; do echo "  $f"; done
	fi
	echo "$PASSED passed, $FAILED failed"
	[[ $FAILED == 0 && $PASSED -gt 0 ]]
}

# FILE...: against the stack that already runs; nothing started or stopped.
run_files() {
	local f files
	load_stack_lib
	if [[ ! -r $STACK_DIR/env.sh || $(stack_healthz) != 200 ]]; then
		echo "no healthy stack at $STACK_URL: run scripts/stack.sh start first" >&2
		exit 2
	fi
	for f in "$@"; do
		[[ -r $f ]] || { echo "no such test file: $f" >&2; exit 2; }
	done
	PHASE_OUT=$RUN_DIR/output-files
	mapfile -t files < <(realpath -- "$@")
	integration_tests files "${files[@]}"
	totals
}

main() {
	local quick='' t0=$EPOCHREALTIME
	case ${1:-} in
	-h | --help) usage 0 ;;
	--quick) quick=1; shift; [[ $# == 0 ]] || usage ;;
	-*) usage ;;
	esac
	[[ $(id -u) == 0 ]] || { echo "run as root (the stack runs postgres and nginx as their users)" >&2; exit 2; }
	RUN_DIR=$(mktemp -d /tmp/lakebase-fcgi-test.XXXXXX) || exit 1
	trap on_exit EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	if [[ -z $quick && $# -gt 0 ]]; then
		run_files "$@"
		return
	fi
	if [[ -z $quick ]]; then
		section "packages"
		"$REPO/scripts/deps.sh" || { fail "scripts/deps.sh"; totals; return; }
	fi
	phase normal "$REPO/build"
	if [[ -z $quick ]]; then
		phase sanitizers "$REPO/build-asan" --sanitizers
		distcheck
	fi
	echo
	echo "total time: $(elapsed_since "$t0")"
	totals
}

main "$@"
