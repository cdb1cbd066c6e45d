#!/usr/bin/env bash
# test_sp_routes.sh - service-principal routes of tests/stack/worker.json
# through nginx: every result shape (rows, one, none; 201 on POST, 404,
# 409), the JSON typing of every parameter type, X-Request-Id handling, and
# a route that exists only in a config file.
#
# Needs the stack (scripts/stack.sh start); leaves the table and the worker
# as it found them.
set -uo pipefail
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"

ID1=00000000-0000-4000-8000-000000000001
ID3=00000000-0000-4000-8000-000000000003
UNKNOWN_ID=00000000-0000-4000-8000-0000000000ff
# Rows this file creates carry this id prefix or title prefix, so cleanup
# can find them whatever happened.
PUT_ID=7e570000-0000-4000-8000-000000000001
TITLE_PREFIX='it-sp-routes:'

SEEDED_ROWS='[
 {"id":"00000000-0000-4000-8000-000000000001","title":"alice: buy milk","done":false,"owner":"alice@example.com"},
 {"id":"00000000-0000-4000-8000-000000000002","title":"alice: call mum","done":true,"owner":"alice@example.com"},
 {"id":"00000000-0000-4000-8000-000000000003","title":"bob: fix bike","done":false,"owner":"bob@example.com"}]'

cleanup_rows() {
	pg_admin_sql "DELETE FROM app.todos WHERE title LIKE '$TITLE_PREFIX%' OR id = '$PUT_ID'" >/dev/null
}
at_exit cleanup_rows

table_count() {
	pg_admin_sql "SELECT count(*) FROM app.todos"
}

# --- result "rows" ----------------------------------------------------------------

# The seeded rows come first (oldest created_at) and the list has every
# row of the table (a stack used by hand may hold more than the seed).
test_list_returns_seeded_rows_in_order() {
	http GET /api/todos
	expect_status 200 || return
	expect_header Content-Type application/json
	expect_body_json '.[0:3]' "$SEEDED_ROWS"
	expect_body_json length "$(table_count)"
}

test_list_limit_query_parameter() {
	http GET '/api/todos?limit=1'
	expect_status 200 || return
	expect_body_json . "$(jq -c '.[0:1]' <<<"$SEEDED_ROWS")"
	http GET '/api/todos?limit=2'
	expect_status 200 || return
	expect_body_json 'map(.id)' '["00000000-0000-4000-8000-000000000001","00000000-0000-4000-8000-000000000002"]'
}

# limit defaults to 50 and may go up to its max, 500: 60 more rows make a
# table of 63.
test_list_limit_default_50_and_max_500() {
	local total
	pg_admin_sql "INSERT INTO app.todos (title, owner, created_at)
		SELECT '$TITLE_PREFIX bulk ' || g, 'lakebase-sp', '2030-01-01'::timestamptz + g * interval '1 second'
		FROM generate_series(1, 60) AS g" >/dev/null || return
	total=$(table_count)
	http GET /api/todos
	expect_status 200 || return
	expect_body_json length 50
	expect_body_json '.[0:3]' "$SEEDED_ROWS"
	http GET '/api/todos?limit=500'
	expect_status 200 || return
	expect_body_json length "$total"
	expect_body_json '.[-1].title' "\"$TITLE_PREFIX bulk 60\""
	cleanup_rows
}

# --- result "one" -----------------------------------------------------------------

test_one_returns_the_row_as_an_object() {
	http GET "/api/todos/$ID1"
	expect_status 200 || return
	expect_body '{"id":"00000000-0000-4000-8000-000000000001","title":"alice: buy milk","done":false}'
}

test_one_unknown_id_is_404_with_the_request_id() {
	http GET "/api/todos/$UNKNOWN_ID" -H 'X-Request-Id: it-sp-404-check'
	expect_error 404 not_found || return
	expect_header X-Request-Id it-sp-404-check
	expect_body_json .error.request_id '"it-sp-404-check"'
}

test_post_creates_and_returns_the_row_201() {
	local id
	http POST /api/todos -H 'Content-Type: application/json' \
		--data "{\"title\": \"$TITLE_PREFIX posted\"}"
	expect_status 201 || return
	expect_body_json 'keys' '["done","id","owner","title"]'
	expect_body_json '[.title, .done, .owner]' "[\"$TITLE_PREFIX posted\",false,\"lakebase-sp\"]"
	id=$(jq -r .id "$HTTP_BODY_FILE")
	expect_match "$id" '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' "id is a UUID"
	# It is really stored.
	http GET "/api/todos/$id"
	expect_status 200
	expect_body_json . "{\"id\":\"$id\",\"title\":\"$TITLE_PREFIX posted\",\"done\":false}"
}

# JSON escapes and non-ASCII text survive the round trip byte for byte.
test_post_text_with_quotes_and_unicode_round_trips() {
	local title="$TITLE_PREFIX \"quoted\" back\\slash tab	é ✓"
	http POST /api/todos -H 'Content-Type: application/json; charset=utf-8' \
		--data "$(jq -cn --arg t "$title" '{title: $t}')"
	expect_status 201 || return
	expect_body_json .title "$(jq -cn --arg t "$title" '$t')"
}

test_put_creates_then_conflicts_409() {
	http PUT "/api/todos/$PUT_ID" -H 'Content-Type: application/json' \
		--data "{\"title\": \"$TITLE_PREFIX put\"}"
	expect_status 200 || return
	expect_body_json . "{\"id\":\"$PUT_ID\",\"title\":\"$TITLE_PREFIX put\",\"done\":false,\"owner\":\"lakebase-sp\"}"
	http PUT "/api/todos/$PUT_ID" -H 'Content-Type: application/json' \
		--data "{\"title\": \"$TITLE_PREFIX put again\"}"
	expect_error 409 conflict
	# The conflicting write changed nothing.
	expect_eq "$(pg_admin_sql "SELECT title FROM app.todos WHERE id = '$PUT_ID'")" "$TITLE_PREFIX put" \
		"the first row is unchanged"
}

test_patch_updates_and_returns_the_row() {
	http PATCH "/api/todos/$ID3" -H 'Content-Type: application/json' --data '{"done": true}'
	expect_status 200 || return
	expect_body '{"id":"00000000-0000-4000-8000-000000000003","title":"bob: fix bike","done":true}'
	http PATCH "/api/todos/$ID3" -H 'Content-Type: application/json' --data '{"done": false}'
	expect_status 200
	expect_body_json .done false
	http PATCH "/api/todos/$UNKNOWN_ID" -H 'Content-Type: application/json' --data '{"done": true}'
	expect_error 404 not_found
}

# --- result "none" ----------------------------------------------------------------

test_delete_reports_rows_affected_then_404() {
	local id
	http POST /api/todos -H 'Content-Type: application/json' --data "{\"title\": \"$TITLE_PREFIX doomed\"}"
	expect_status 201 || return
	id=$(jq -r .id "$HTTP_BODY_FILE")
	http DELETE "/api/todos/$id"
	expect_status 200 || return
	expect_body '{"rows_affected":1}'
	http GET "/api/todos/$id"
	expect_error 404 not_found
	http DELETE "/api/todos/$id"
	expect_status 200
	expect_body '{"rows_affected":0}'
}

# --- every parameter type, through /api/types ------------------------------------

# types_get ARGS...: GET /api/types with each NAME=VALUE url-encoded.
types_get() {
	local -a args=()
	local kv
	for kv in "$@"; do args+=(--data-urlencode "$kv"); done
	http GET /api/types --get "${args[@]}"
}

test_types_all_absent_are_null() {
	types_get
	expect_status 200 || return
	expect_body '{"t":null,"i":null,"b":null,"n":null,"f":null,"u":null,"ts":null,"j":null}'
}

# The exact bytes: numbers stay numbers as PostgreSQL wrote them (1.50
# keeps its scale, a bigint beyond 2^53 keeps every digit), bool is a JSON
# bool, json is embedded, the rest are strings.
test_types_all_set_exact_body() {
	types_get t=x i=3 b=9007199254740993 n=1.50 f=true u=$ID1 ts=2024-01-01T12:34:56Z 'j={"a":[1,"x",null,true]}'
	expect_status 200 || return
	expect_body '{"t":"x","i":3,"b":9007199254740993,"n":1.50,"f":true,"u":"00000000-0000-4000-8000-000000000001","ts":"2024-01-01 12:34:56+00","j":{"a":[1,"x",null,true]}}'
}

test_types_text() {
	types_get 't=héllo "quoted" \ & ? # ✓'
	expect_status 200 || return
	expect_body_json .t '"héllo \"quoted\" \\ & ? # ✓"'
	types_get 't='
	expect_status 200
	expect_body_json .t '""'
}

test_types_int_and_bigint_are_json_numbers() {
	types_get i=-2147483648 b=-9223372036854775808
	expect_status 200 || return
	expect_body_json '[.i, (.i | type), (.b | type)]' '[-2147483648,"number","number"]'
	expect_match "$HTTP_BODY" '"b":-9223372036854775808,' "bigint minimum, every digit"
	types_get i=2147483647 b=9223372036854775807
	expect_status 200
	expect_match "$HTTP_BODY" '"i":2147483647,"b":9223372036854775807,' "int and bigint maximum"
}

test_types_numeric_is_a_json_number() {
	types_get n=-0.001
	expect_status 200 || return
	expect_match "$HTTP_BODY" '"n":-0.001,' "numeric -0.001 as a number"
	types_get n=12345678901234567890.123456789
	expect_status 200
	expect_match "$HTTP_BODY" '"n":12345678901234567890.123456789,' "numeric keeps every digit"
}

test_types_bool() {
	types_get f=true
	expect_body_json .f true
	types_get f=false
	expect_status 200
	expect_body_json '[.f, (.f | type)]' '[false,"boolean"]'
}

test_types_uuid_and_timestamptz_are_strings() {
	types_get u=$ID3 ts=2024-02-29T23:59:59.5+02:00
	expect_status 200 || return
	expect_body_json '[.u, .ts]' "[\"$ID3\",\"2024-02-29 21:59:59.5+00\"]"
}

test_types_json_is_embedded_not_quoted() {
	types_get 'j=[1,2.5,"s",{"k":null}]'
	expect_status 200 || return
	expect_body_json .j '[1,2.5,"s",{"k":null}]'
	types_get 'j="just a string"'
	expect_body_json .j '"just a string"'
	# JSON null is a value (not SQL NULL) and is embedded as null.
	types_get 'j=null'
	expect_status 200
	expect_body_json '[.j, (.j | type)]' '[null,"null"]'
}

# --- X-Request-Id -------------------------------------------------------------------

test_request_id_from_the_client_is_echoed_and_logged() {
	local rid
	rid=it-rid-$RANDOM$RANDOM.a_b
	http GET "/api/todos/$ID1" -H "X-Request-Id: $rid"
	expect_status 200 || return
	expect_header X-Request-Id "$rid"
	wait_for "grep -qF 'request_id=$rid ' '$STACK_WORKER_LOG'" 5
	expect_eq "$?" 0 "the worker logged request_id=$rid"
}

test_request_id_64_chars_is_kept() {
	local rid
	rid=$(printf 'r%.0s' {1..64})
	http GET /healthz -H "X-Request-Id: $rid"
	expect_status 200
	expect_header X-Request-Id "$rid"
}

# Missing, too long (65), or with characters that could break a log line
# or a header: a fresh 32-hex id instead, different every time.
test_request_id_generated_when_missing_or_not_sane() {
	local rid first bad
	http GET "/api/todos/$UNKNOWN_ID"
	expect_status 404 || return
	first=$(header_value X-Request-Id)
	expect_match "$first" '^[0-9a-f]{32}$' "generated id is 32 hex"
	expect_body_json .error.request_id "\"$first\""
	wait_for "grep -qF 'request_id=$first ' '$STACK_WORKER_LOG'" 5
	expect_eq "$?" 0 "the worker logged the request under the same id"
	http GET "/api/todos/$UNKNOWN_ID"
	rid=$(header_value X-Request-Id)
	expect_match "$rid" '^[0-9a-f]{32}$' "second generated id is 32 hex"
	[[ $rid != "$first" ]]
	expect_eq "$?" 0 "a second request gets another id"
	for bad in "$(printf 'r%.0s' {1..65})" 'has space' 'quote"inside' 'semi;colon' 'ünïcode' 'a=b'; do
		http GET "/api/todos/$UNKNOWN_ID" -H "X-Request-Id: $bad"
		expect_status 404
		rid=$(header_value X-Request-Id)
		expect_match "$rid" '^[0-9a-f]{32}$' "id [$bad] replaced by 32 hex"
		expect_body_json .error.request_id "\"$rid\""
	done
}

# --- a route that only exists in a config file ---------------------------------------

restore_worker() {
	worker_restart >/dev/null 2>&1 || echo "WARNING: could not restart the normal worker" >&2
}

# A new route (and a per-route Cache-Control) in a config written now:
# no rebuild, only a restart of the worker.
test_route_defined_only_in_config() {
	local cfg=$STACK_DIR/it-sp-routes-extra.json
	worker_config_derive "$cfg" '.routes += [{
		method: "GET", path: "/api/todo-count", auth: "service-principal",
		sql: "SELECT count(*) AS n, min(title) AS first FROM app.todos WHERE title <> :not",
		params: { not: { in: "query", type: "text", default: "-" } },
		result: "one", cache_control: "public, max-age=60" }]' || return
	at_exit restore_worker
	worker_restart "$cfg" || return
	http GET /api/todo-count
	expect_status 200 || return
	expect_body "{\"n\":$(table_count),\"first\":\"alice: buy milk\"}"
	expect_header Cache-Control 'public, max-age=60'
	http GET '/api/todo-count?not=alice:%20buy%20milk'
	expect_body_json .first '"alice: call mum"'
	# Errors are never cacheable.
	http GET '/api/todo-count?not=a&not=b'
	expect_error 400 invalid_parameter
	expect_header Cache-Control no-store
}

# start_worker_with_probe_routes [NAME=VALUE...]: a worker, with that
# environment, and five more SP routes: the session's backend PID, a
# table the tests create late, a division, a sleep without a statement
# timeout (the session's default), and an INSERT into a table whose key
# is checked at commit.
start_worker_with_probe_routes() {
	local cfg=$STACK_DIR/it-sp-routes-probes.json
	worker_config_derive "$cfg" '.routes += [
		{ method: "GET", path: "/api/it-pid", auth: "service-principal",
		  sql: "SELECT pg_backend_pid() AS pid", result: "one" },
		{ method: "GET", path: "/api/it-later", auth: "service-principal",
		  sql: "SELECT n FROM app.it_prepare_later", result: "rows" },
		{ method: "GET", path: "/api/it-divide", auth: "service-principal",
		  sql: "SELECT 12 / :d AS q", params: { d: { in: "query", type: "int", required: true } },
		  result: "one" },
		{ method: "GET", path: "/api/it-sleep-untimed", auth: "service-principal",
		  sql: "SELECT true AS slept FROM pg_catalog.pg_sleep(:s)",
		  params: { s: { in: "query", type: "numeric", required: true, min: 0, max: 10 } },
		  result: "one" },
		{ method: "POST", path: "/api/it-deferred", auth: "service-principal",
		  sql: "INSERT INTO app.it_deferred (k) VALUES (:k) RETURNING k",
		  params: { k: { in: "query", type: "int", required: true } }, result: "one" }]' || return
	at_exit restore_worker
	# shellcheck disable=SC2163 # the arguments are NAME=VALUE words
	( (($#)) && export "$@"; worker_restart "$cfg" )
}

# note_session: the SP session that sequential requests use (they take
# the most recently returned connection), and the worker's count of
# connections closed as broken, for expect_same_session.
note_session() {
	SESSION_BROKEN=$(closed_total broken)
	http GET /api/it-pid
	expect_status 200 || return
	SESSION_PID=$(jq -r .pid "$HTTP_BODY_FILE")
}

# expect_same_session: the session noted answers still, and the worker
# closed no connection as broken since.
expect_same_session() {
	http GET /api/it-pid
	expect_body "{\"pid\":$SESSION_PID}"
	expect_eq "$(closed_total broken)" "$SESSION_BROKEN" "connections closed as broken"
}

# A route's first use on a connection sends its prepare and its execution
# together (one round trip). A prepare the server refuses (a table that does
# not exist) skips the execution: 500, and the statement is not remembered as
# prepared, so once the table exists the route works. An execution the
# server refuses after a good prepare (division by zero) is the request's
# 400, and the statement is prepared: the next request executes it by name.
# Neither loses the connection: the one session (pg_backend_pid, sequential
# requests take the most recently returned connection) answers throughout,
# and the worker closes none.
test_first_use_errors_keep_the_connection() {
	drop_prepare_later || return
	at_exit drop_prepare_later
	start_worker_with_probe_routes || return
	note_session || return
	http GET /api/it-later
	expect_error 500 internal_error "The query failed."
	http GET /api/it-later
	expect_error 500 internal_error "The query failed."
	http GET /api/it-divide?d=0
	expect_error 400 bad_request "A value is out of range or malformed for the database."
	http GET /api/it-divide?d=4
	expect_status 200 || return
	expect_body '{"q":3}'
	pg_admin_sql "CREATE TABLE app.it_prepare_later (n int); INSERT INTO app.it_prepare_later VALUES (7);
		GRANT SELECT ON app.it_prepare_later TO PUBLIC" >/dev/null || return
	http GET /api/it-later
	expect_status 200 || return
	expect_body '[{"n":7}]'
	expect_same_session
}

# A statement the session has but its connection failed to record (out
# of memory; the test hook LAKEBASE_TEST_FORGET_PREPARED=1 makes every such
# record fail) is prepared again on the route's next use, and PostgreSQL
# refuses that prepare (42P05, "already exists"): the worker takes the
# statement as prepared and executes it by name. Each request is 200 with
# its row, PostgreSQL logs the refusals (so the path ran), and the one
# session answers throughout.
test_statement_the_connection_forgot_is_executed_by_name() {
	local mark
	if ! grep -q LAKEBASE_TEST_FORGET_PREPARED "$STACK_WORKER_BIN"; then
		skip "a forgotten prepared statement" "the worker was built without --enable-test-hooks"
		return 0
	fi
	start_worker_with_probe_routes LAKEBASE_TEST_FORGET_PREPARED=1 || return
	note_session || return
	mark=$(log_mark "$STACK_PG_LOG")
	for _ in 1 2 3; do
		http GET "/api/todos/$ID1"
		expect_status 200 || return
		expect_body '{"id":"00000000-0000-4000-8000-000000000001","title":"alice: buy milk","done":false}'
	done
	# The first use prepared it; the two after met 42P05.
	wait_for "(( \$(log_since '$STACK_PG_LOG' $mark | grep -c 'prepared statement \"lb_route[0-9]*\" already exists') >= 2 ))" 5
	expect_eq "$(log_since "$STACK_PG_LOG" "$mark" | grep -c 'prepared statement "lb_route[0-9]*" already exists')" 2 \
		"42P05 refusals in PostgreSQL's log"
	expect_same_session
}

# A write whose commit fails is that failure, not a success. The key of
# app.it_deferred is checked at commit (DEFERRABLE INITIALLY DEFERRED), so
# the INSERT itself succeeds and PostgreSQL refuses the duplicate when the
# implicit transaction commits, after the statement's result: on the
# route's first use (prepare and execution in one round trip, the commit's
# error at its Sync) and again by name. Both are 409, the duplicate is not
# in the table, a new key is 201, and the session answers throughout.
test_write_refused_at_commit_is_409() {
	drop_deferred || return
	at_exit drop_deferred
	pg_admin_sql "CREATE TABLE app.it_deferred (k int UNIQUE DEFERRABLE INITIALLY DEFERRED);
		INSERT INTO app.it_deferred VALUES (1); GRANT SELECT, INSERT ON app.it_deferred TO PUBLIC" \
		>/dev/null || return
	start_worker_with_probe_routes || return
	note_session || return
	http POST '/api/it-deferred?k=1'
	expect_error 409 conflict
	http POST '/api/it-deferred?k=1'
	expect_error 409 conflict
	http POST '/api/it-deferred?k=2'
	expect_status 201 || return
	expect_body '{"k":2}'
	expect_eq "$(pg_admin_sql "SELECT string_agg(k::text, ',' ORDER BY k) FROM app.it_deferred")" "1,2" \
		"the table's keys"
	expect_same_session
}

drop_deferred() {
	pg_admin_sql "DROP TABLE IF EXISTS app.it_deferred" >/dev/null 2>&1
}

drop_prepare_later() {
	pg_admin_sql "DROP TABLE IF EXISTS app.it_prepare_later" >/dev/null 2>&1
}

# The session's statement_timeout follows each route's, sent in the same
# round trip as the statement: /api/slow's 500 ms, /api/todos's 5 s, the
# server's default for a route without one. A 0.8 s sleep ends at 500 ms
# after every switch back, and runs to its end under the default. The
# timeout is committed on its own: the statement that failed right after
# setting it does not undo it, so the next one, sent without a SET, ends
# at 500 ms too. One session throughout.
test_statement_timeout_follows_the_route() {
	start_worker_with_probe_routes || return
	note_session || return
	http GET '/api/slow?s=0.8'
	expect_error 504 timeout
	http GET '/api/todos?limit=1'
	expect_status 200
	http GET '/api/slow?s=0.8'
	expect_error 504 timeout
	http GET '/api/slow?s=0.8'
	expect_error 504 timeout
	http GET '/api/it-sleep-untimed?s=0.8'
	expect_status 200
	expect_body '{"slept":true}'
	http GET '/api/slow?s=0.8'
	expect_error 504 timeout
	http GET '/api/slow?s=0.1'
	expect_status 200
	expect_same_session
}

# Route statements are prepared once per connection. A schema change that
# changes a route's result type makes PostgreSQL refuse the prepared
# statement ("cached plan must not change result type", 0A000): the worker
# prepares it again and the request succeeds. Sequential requests reuse
# the same (most recently returned) connection.
test_result_type_change_is_prepared_again() {
	local changed
	http GET '/api/todos?limit=1'
	expect_status 200 || return
	pg_admin_sql "ALTER TABLE app.todos ALTER COLUMN title TYPE varchar(200)" >/dev/null || return
	http GET '/api/todos?limit=1'
	changed=$HTTP_STATUS
	pg_admin_sql "ALTER TABLE app.todos ALTER COLUMN title TYPE text" >/dev/null
	expect_eq "$changed" 200 "the request after the type change"
	http GET '/api/todos?limit=1'
	expect_status 200 || return
	expect_body_json . "$(jq -c '.[0:1]' <<<"$SEEDED_ROWS")"
}

run_test "rows: GET /api/todos lists the seeded rows, exactly, in order" test_list_returns_seeded_rows_in_order
run_test "a result type changed by ALTER TABLE: the statement is prepared again, 200" \
	test_result_type_change_is_prepared_again
run_test "first use: a refused prepare is 500 and not remembered, a refused execution 400; one connection throughout" \
	test_first_use_errors_keep_the_connection
run_test "a prepared statement the connection forgot: 42P05 is taken as prepared, 200 by name; one connection" \
	test_statement_the_connection_forgot_is_executed_by_name
run_test "a write refused at commit (a deferred key) is 409 on first use and by name, and not stored" \
	test_write_refused_at_commit_is_409
run_test "statement_timeout follows the route: 500 ms, 5 s, the default, 500 ms again; one connection" \
	test_statement_timeout_follows_the_route
run_test "rows: ?limit=1 and ?limit=2 cut the list" test_list_limit_query_parameter
run_test "rows: limit defaults to 50, ?limit=500 returns all 63" test_list_limit_default_50_and_max_500
run_test "one: GET /api/todos/{id} is the row as an object" test_one_returns_the_row_as_an_object
run_test "one: unknown id is 404 not_found echoing X-Request-Id" test_one_unknown_id_is_404_with_the_request_id
run_test "one: POST /api/todos is 201 with the created row" test_post_creates_and_returns_the_row_201
run_test "one: POST text with quotes, backslash, tab, unicode round-trips" test_post_text_with_quotes_and_unicode_round_trips
run_test "one: PUT with a client id is 200, the same again 409 conflict" test_put_creates_then_conflicts_409
run_test "one: PATCH returns the updated row; unknown id 404" test_patch_updates_and_returns_the_row
run_test "none: DELETE is {rows_affected:1}, then 404 and {rows_affected:0}" test_delete_reports_rows_affected_then_404
run_test "types: all parameters absent give null for every type" test_types_all_absent_are_null
run_test "types: every type set, exact body" test_types_all_set_exact_body
run_test "types: text with quotes, backslash, reserved URL characters, unicode" test_types_text
run_test "types: int and bigint limits are JSON numbers with every digit" test_types_int_and_bigint_are_json_numbers
run_test "types: numeric keeps sign, scale and digits as a JSON number" test_types_numeric_is_a_json_number
run_test "types: bool is a JSON boolean" test_types_bool
run_test "types: uuid and timestamptz are strings (UTC)" test_types_uuid_and_timestamptz_are_strings
run_test "types: json is embedded (array, string, null)" test_types_json_is_embedded_not_quoted
run_test "X-Request-Id from the client is echoed and logged" test_request_id_from_the_client_is_echoed_and_logged
run_test "X-Request-Id of 64 characters is kept" test_request_id_64_chars_is_kept
run_test "X-Request-Id missing or not sane: a new 32-hex id each time" test_request_id_generated_when_missing_or_not_sane
run_test "a route added only in a config file works after a restart" test_route_defined_only_in_config
summary
