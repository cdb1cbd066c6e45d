#!/usr/bin/env bash
# test_observability.sh - what operators see: GET /metrics (Prometheus text,
# parsed into name{labels} -> value, summed across the supervisor's worker
# processes) after a scripted workload through nginx, checked against the
# requests made, the emulator's mint counters and pg_stat_activity; the
# metrics endpoint refused to a non-local FastCGI client (cgi-fcgi setting
# REMOTE_ADDR) and served to a unix one. Needs the running stack
# (scripts/stack.sh start); puts the normal worker back at the end.
set -uo pipefail
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/user_lib.sh
source "$(dirname "$0")/user_lib.sh"
# shellcheck source=tests/integration/process_lib.sh
source "$(dirname "$0")/process_lib.sh"

at_exit 'pm_restore >/dev/null 2>&1'
ALICE=alice@example.com
BOB=bob@example.com
CFG=$STACK_DIR/it-obs.json
pm_config "$CFG"
METRICS=$IT_TMP/metrics.parsed

# --- parsing the exposition format ---------------------------------------------------

# scrape [URL]: GET /metrics; checks every line against the text format
# (0.0.4) and writes METRICS: one "name{labels} value" line per sample.
# Fails on a line that does not parse or a sample without a # TYPE.
scrape() {
	http GET "${1:-/metrics}"
	expect_status 200 || return 1
	expect_header Content-Type "text/plain; version=0.0.4; charset=utf-8" || return 1
	awk '
		/^# TYPE / { typed[$3] = 1; next }
		/^# HELP / { next }
		/^$/ { next }
		{
			if ($0 !~ /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? [-+0-9.eEInf]+$/) {
				print "unparsable: " $0 > "/dev/stderr"; bad = 1; next
			}
			name = $0; sub(/[{ ].*/, "", name)
			base = name; sub(/_(bucket|sum|count)$/, "", base)
			if (!(name in typed) && !(base in typed)) {
				print "no TYPE: " $0 > "/dev/stderr"; bad = 1; next
			}
			key = $0; sub(/ [^ ]*$/, "", key)
			print key, $NF
		}
		END { exit bad }' "$HTTP_BODY_FILE" >"$METRICS" 2>"$IT_TMP/scrape.err"
	expect_eq "$?" 0 "the exposition text parses ($(head -c 300 "$IT_TMP/scrape.err"))"
}

# metric KEY: the value of the sample "name{labels}" exactly; 0 if absent.
metric() {
	awk -v k="$1" '{ v = $NF; sub(/ [^ ]*$/, "") } $0 == k { print v; found = 1 } END { if (!found) print 0 }' "$METRICS"
}

# metric_sum NAME [LABEL-ERE]: the sum of NAME's samples whose labels match.
metric_sum() {
	awk -v n="$1" -v re="${2:-.}" '{
		v = $NF; k = $0; sub(/ [^ ]*$/, "", k)
		name = k; sub(/\{.*/, "", name)
		if (name == n && k ~ re) s += v
	} END { printf "%d\n", s }' "$METRICS"
}

TODOS='route="/api/todos",method="GET",auth="service-principal"'
MY_TODOS='route="/api/my/todos",method="GET",auth="on-behalf-of-user"'

# --- metrics -----------------------------------------------------------------------------

test_metrics_after_workload() {
	local i sp=0 users=0 missing=0 conns
	emu_reset
	sup_start "$CFG" --workers 2 --threads 4 || return 1
	expect_eq "$(sup_count_workers)" 2 "two worker processes" || return 1
	for ((i = 0; i < 24; i++)); do
		http GET '/api/todos?limit=1'
		[[ $HTTP_STATUS == 200 ]] && sp=$((sp + 1))
	done
	for ((i = 0; i < 6; i++)); do
		as_user GET /api/my/todos "$ALICE" alice-token-1
		[[ $HTTP_STATUS == 200 ]] && users=$((users + 1))
		as_user GET /api/my/todos "$BOB" bob-token-1
		[[ $HTTP_STATUS == 200 ]] && users=$((users + 1))
	done
	for ((i = 0; i < 5; i++)); do
		http GET "/api/it-no-such-route-$i"
		[[ $HTTP_STATUS == 404 ]] && missing=$((missing + 1))
	done
	expect_eq "$sp $users $missing" "24 12 5" "the workload's answers" || return 1
	sleep 2	# every worker publishes its pool gauges each second
	scrape || return 1
	expect_eq "$(metric "lakebase_requests_total{$TODOS,status=\"200\"}")" 24 "SP route requests counted across workers"
	expect_eq "$(metric "lakebase_requests_total{$MY_TODOS,status=\"200\"}")" 12 "user route requests counted"
	expect_eq "$(metric 'lakebase_requests_total{route="(none)",method="",auth="",status="404"}')" 5 \
		"unrouted 404s counted under route (none)"
	expect_eq "$(metric "lakebase_query_duration_seconds_count{$TODOS,status=\"2xx\"}")" 24 "histogram count"
	expect_eq "$(metric "lakebase_query_duration_seconds_bucket{$TODOS,status=\"2xx\",le=\"+Inf\"}")" 24 \
		"the +Inf bucket holds every observation"
	expect_eq "$(metric 'lakebase_workers')" 2 "both workers publish into the segment"
	expect_eq "$(metric 'lakebase_credential_mints_total{kind="sp",result="ok"}')" "$(emu_mints lakebase-sp)" \
		"SP mints equal the emulator's"
	expect_eq "$(metric 'lakebase_credential_mints_total{kind="user",result="ok"}')" \
		"$(($(emu_mints "$ALICE") + $(emu_mints "$BOB")))" "user mints equal the emulator's"
	expect_eq "$(metric 'lakebase_credential_mints_total{kind="sp_oauth",result="ok"}')" \
		"$(emu_counter '.oauth_tokens')" "M2M tokens equal the emulator's"
	expect_eq "$(metric 'lakebase_credential_refresh_duration_seconds_count')" \
		"$(($(emu_counter '.mints_total') + $(emu_counter '.oauth_tokens')))" \
		"one refresh duration per mint or token"
	expect_eq "$(metric 'lakebase_credential_cache_slots{state="valid"}')" 4 \
		"valid slots: the SP's credential and M2M token, alice, bob"
	conns=$(pg_count_worker_conns)
	expect_eq "$(metric_sum lakebase_pool_connections)" "$conns" "pool connections match pg_stat_activity"
	expect_ge "$(metric_sum lakebase_pool_connections 'auth="on-behalf-of-user"')" 2 "user connections counted"
	expect_ge "$(metric 'lakebase_user_pools')" 2 "alice's and bob's pools (in one or both workers)"
	expect_eq "$(metric 'lakebase_connections_opened_total')" \
		"$(($(metric_sum lakebase_connections_closed_total) + conns))" "opened = closed + open"
	if grep -v '^#' "$HTTP_BODY_FILE" | grep -E 'alice|bob|@|-token-' >/dev/null; then
		_assert_result 1 "no email or token in the metrics" "$(grep -v '^#' "$HTTP_BODY_FILE" | grep -E 'alice|bob|@|-token-' | head -3)"
	fi
}
run_test "metrics: a workload through nginx with --workers 2, parsed and checked against the emulator and PostgreSQL" \
	test_metrics_after_workload

test_metrics_pool_errors() {
	local before
	sup_alive || return 1
	scrape || return 1
	before=$(metric 'lakebase_pool_errors_total{class="28"}')
	as_user GET /api/my/todos carol@example.com carol-token-1	# no Postgres role
	expect_status 403 || return 1
	scrape || return 1
	expect_eq "$(metric 'lakebase_pool_errors_total{class="28"}')" "$((before + 1))" \
		"a refused login counts under SQLSTATE class 28"
	expect_eq "$(metric "lakebase_requests_total{$MY_TODOS,status=\"403\"}")" 1 "the 403 counted for its route"
}
run_test "metrics: database errors by SQLSTATE class" test_metrics_pool_errors

# fcgi_get PATH [VAR=VALUE...]: a direct FastCGI GET on the stack's socket
# (no nginx), with exactly these parameters; prints the response.
fcgi_get() {
	local path=$1
	shift
	env -i REQUEST_METHOD=GET REQUEST_URI="$path" SCRIPT_NAME="$path" QUERY_STRING= \
		SERVER_PROTOCOL=HTTP/1.1 GATEWAY_INTERFACE=CGI/1.1 "$@" \
		timeout 15 cgi-fcgi -bind -connect "$STACK_FCGI_SOCK" 2>&1 | tr -d '\r'
}

test_metrics_refused_to_remote_clients() {
	local out
	sup_alive || return 1
	command -v cgi-fcgi >/dev/null || { skip "cgi-fcgi (libfcgi-bin) not installed"; return 0; }
	out=$(fcgi_get /metrics REMOTE_ADDR=10.1.2.3)
	expect_eq "$(head -n 1 <<<"$out")" "Status: 403 Forbidden" "a non-local client gets 403"
	expect_eq "$(sed '1,/^$/d' <<<"$out" | jq -r '.error.code')" forbidden "with a JSON error body"
	out=$(fcgi_get /metrics)
	expect_eq "$(head -n 1 <<<"$out")" "Status: 200 OK" "a unix-socket client (no REMOTE_ADDR) is served"
	out=$(fcgi_get /metrics REMOTE_ADDR=::1)
	expect_eq "$(head -n 1 <<<"$out")" "Status: 200 OK" "a loopback client is served"
}
run_test "metrics: loopback and unix clients only (metrics.allow local)" test_metrics_refused_to_remote_clients

test_metrics_config() {
	local cfg=$STACK_DIR/it-obs-any.json out
	command -v cgi-fcgi >/dev/null || { skip "cgi-fcgi (libfcgi-bin) not installed"; return 0; }
	worker_config_derive "$cfg" '.metrics = {"path": "/_prom", "allow": "any"}'
	sup_start "$cfg" --workers 2 --threads 2 || return 1
	out=$(fcgi_get /_prom REMOTE_ADDR=10.1.2.3)
	expect_eq "$(head -n 1 <<<"$out")" "Status: 200 OK" "allow any: a remote client is served on metrics.path"
	http GET /metrics
	expect_status 404
	worker_config_derive "$cfg" '.metrics = {"enabled": false}'
	sup_start "$cfg" --workers 2 --threads 2 || return 1
	http GET /metrics
	expect_status 404
}
run_test "metrics: metrics.path, metrics.allow any, metrics.enabled false" test_metrics_config

# --- status and readiness ------------------------------------------------------------------

test_status_json() {
	sup_start "$CFG" --workers 2 --threads 4 || return 1
	as_user GET /api/my/todos "$ALICE" alice-token-1
	expect_status 200 || return 1
	http GET '/api/todos?limit=1'
	expect_status 200 || return 1
	sleep 1.5	# every worker publishes its pool gauges each second
	http GET /status
	expect_status 200 || return 1
	expect_body_json '.workers' 2
	expect_body_json '[.uptime_s >= 0, .requests >= 2, (.started_at | test("^[0-9-]+T[0-9:]+Z$"))]' '[true,true,true]'
	expect_body_json '.connections | keys' '["on-behalf-of-user","service-principal"]'
	expect_body_json '[.connections[][]] | add >= 2' true
	expect_body_json '.user_pools >= 1' true
	expect_body_json '.credential_cache.states.valid' 3	# the SP's credential and M2M token, alice
	expect_body_json '[.credential_cache.next_expiry_in_s > 0, (.credential_cache.next_expiry | type)]' '[true,"string"]'
	expect_body_json '.last_refresh_errors' '{}'
	if grep -qE 'alice|@' "$HTTP_BODY_FILE"; then
		_assert_result 1 "no email in /status" "$HTTP_BODY"
	fi
	command -v cgi-fcgi >/dev/null || return 0
	expect_eq "$(fcgi_get /status REMOTE_ADDR=192.0.2.1 | head -n 1)" "Status: 403 Forbidden" \
		"/status refused to a non-local client"
}
run_test "status: JSON summary across workers, loopback/unix only" test_status_json

restore_emulator() {
	pidfile_alive "$STACK_EMU_PID" || emulator_start "$STACK_EMU_CONFIG" >/dev/null 2>&1
}
restore_postgres() {
	pidfile_alive "$STACK_PGDATA/postmaster.pid" || pg_start >/dev/null 2>&1
}
at_exit restore_emulator
at_exit restore_postgres

test_readyz_emulator_down() {
	emulator_stop >/dev/null 2>&1
	sup_start "$CFG" --workers 2 --threads 2 || { restore_emulator; return 1; }
	http GET /readyz
	expect_status 503
	expect_body_json '.error.message' "\"Not ready: the service principal's database credential is unavailable.\""
	http GET /status
	expect_status 200
	expect_body_json '.credential_cache.states.valid' 0
	expect_body_json '.last_refresh_errors | length >= 1' true
	restore_emulator
	wait_for "curl -s --max-time 20 -o /dev/null -w '%{http_code}' '$LAKEBASE_URL/readyz' | grep -qx 200" 60
	expect_eq "$?" 0 "ready again once the emulator is back"
}
run_test "readyz and status with the workspace (emulator) down" test_readyz_emulator_down

test_readyz_postgres_down() {
	sup_alive || return 1
	http GET /readyz
	expect_status 200 || return 1
	pg_stop >/dev/null 2>&1 || return 1
	http GET /readyz
	expect_status 503
	expect_body_json '.error.message' '"Not ready: the database is unreachable."'
	http GET /status
	expect_status 200
	expect_body_json '.credential_cache.states.valid >= 2' true
	restore_postgres
	wait_for "curl -s --max-time 20 -o /dev/null -w '%{http_code}' '$LAKEBASE_URL/readyz' | grep -qx 200" 60
	expect_eq "$?" 0 "ready again once PostgreSQL is back"
}
run_test "readyz and status with PostgreSQL down" test_readyz_postgres_down

# --- logs ----------------------------------------------------------------------------------

# json_log_line RID LOGTEXT-FILE: the JSON request line of that request id.
json_log_line() {
	jq -c --arg rid "$1" 'select(.msg == "request" and .request_id == $rid)' "$2" 2>/dev/null | tail -n 1
}

test_json_logs_without_emails() {
	local cfg=$STACK_DIR/it-obs-json.json mark since=$IT_TMP/log.since ok_rid line
	pm_config "$cfg" '.log_format = "json"'
	sup_stop	# its last lines are logfmt
	mark=$(log_mark "$STACK_WORKER_LOG")
	sup_start "$cfg" --workers 2 --threads 2 || return 1
	as_user GET /api/my/todos "$ALICE" alice-token-1
	expect_status 200 || return 1
	ok_rid=$RID
	as_user GET /api/my/todos carol@example.com carol-token-1	# no Postgres role: a login error
	expect_status 403 || return 1
	sleep 0.5	# the line is written after the response
	log_since "$STACK_WORKER_LOG" "$mark" >"$since"
	jq -e . "$since" >/dev/null 2>"$IT_TMP/jq.err"
	expect_eq "$?" 0 "every line since the start is a JSON object ($(head -c 200 "$IT_TMP/jq.err"))"
	expect_eq "$(jq -r 'select(type != "object" or (.ts | type) != "string" or (.pid | type) != "number") | 1' "$since" | grep -c .)" 0 \
		"every line has ts and a numeric pid"
	line=$(json_log_line "$ok_rid" "$since")
	expect_eq "$(jq -c '[.level, .route, .auth, .status, (.duration_ms | type)]' <<<"$line")" \
		'["info","/api/my/todos","on-behalf-of-user",200,"number"]' "the request line's fields"
	expect_eq "$(jq -r 'has("user")' <<<"$line")" false "no user field without log_user"
	line=$(json_log_line "$RID" "$since")
	expect_eq "$(jq -c '[.status, .error, (.sqlstate | .[0:2])]' <<<"$line")" '[403,"role_missing","28"]' \
		"the error line has the SQLSTATE"
	if grep -qE 'alice@|carol@|@example\.com' "$since"; then
		_assert_result 1 "no email in the worker log (log_user false)" "$(grep -E '@example' "$since" | head -2)"
	fi
}
run_test "logs: log_format json parsed by jq; no email with log_user false" test_json_logs_without_emails

test_log_user_and_access_log() {
	local cfg=$STACK_DIR/it-obs-user.json mark since=$IT_TMP/log.since ok_rid
	pm_config "$cfg" '.log_user = true | .access_log = false'
	sup_stop
	mark=$(log_mark "$STACK_WORKER_LOG")
	sup_start "$cfg" --workers 2 --threads 2 || return 1
	as_user GET /api/my/todos "$ALICE" alice-token-1
	expect_status 200 || return 1
	ok_rid=$RID
	http GET /api/it-sleep?s=x	# a 400: not logged either
	expect_status 400
	emu_fault '{"status": 500, "count": 20, "path": "/api/2.0/postgres/credentials"}'
	as_user GET /api/my/todos "$BOB" bob-token-2	# a new token: the mint fails (5xx: logged)
	local bob_rid=$RID
	sleep 0.5
	emu_reset
	log_since "$STACK_WORKER_LOG" "$mark" >"$since"
	expect_eq "$(grep -cF "request_id=$ok_rid " "$since")" 0 "access_log false: no line for a 200"
	if [[ $HTTP_STATUS == 5* ]]; then
		expect_eq "$(grep -F "request_id=$bob_rid " "$since" | grep -c "user=$BOB")" 1 \
			"a 5xx is still logged, with the user (log_user true)"
	else
		_assert_result 1 "bob's request failed with a 5xx" "got $HTTP_STATUS"
	fi
}
run_test "logs: log_user true names the user; access_log false logs only 5xx" test_log_user_and_access_log

# --- --check-config ----------------------------------------------------------------------

test_check_config_sources() {
	local out secret
	out=$( (worker_env_defaults; "$PM_BIN" -c "$CFG" --workers 3 --check-config) 2>&1)
	expect_eq "$?" 0 "--check-config accepts the stack's config" || return 1
	expect_match "$(grep -E '^  workers ' <<<"$out")" '^  workers +3  \(command line\)$' "workers from the command line"
	expect_match "$(grep -E '^  workspace.host ' <<<"$out")" '\(env DATABRICKS_HOST\)$' "the host from the environment"
	expect_match "$(grep -E '^  metrics.path ' <<<"$out")" '"/metrics"  \(default\)$' "metrics.path by default"
	expect_match "$(grep -E '^  routes ' <<<"$out")" '\(file\)$' "routes from the file"
	expect_match "$(grep -E '^  workspace.client_secret ' <<<"$out")" '\*\*\*\*\*\*\*\*  \(env DATABRICKS_CLIENT_SECRET\)$' \
		"the client secret masked"
	secret=$(secret_get sp.secret)
	if [[ -n $secret && $out == *"$secret"* ]]; then
		_assert_result 1 "the client secret is masked" "it appears in the output"
	fi
}
run_test "--check-config: effective values and their sources, secrets masked" test_check_config_sources

pm_restore
summary
