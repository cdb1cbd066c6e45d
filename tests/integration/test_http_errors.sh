#!/usr/bin/env bash
# test_http_errors.sh - every HTTP error the worker (and the shipped nginx
# config in front of it) answers, with the exact status and the JSON error
# shape {"error":{"code","message","request_id"}}: 404, 405 + Allow, 413,
# 415, 400 naming the parameter, SQLSTATE mapping through real queries
# (57014 → 504, 42501 → 403, 22xxx/23502 → 400), the health endpoints, and
# how the worker ends a FastCGI connection (a raw client, fcgi_close.pl).
#
# Needs the stack (scripts/stack.sh start). One test restarts the worker
# with a smaller body limit and puts the normal one back.
set -uo pipefail
# shellcheck source=tests/integration/lib.sh
source "$(dirname "$0")/lib.sh"

ID1=00000000-0000-4000-8000-000000000001
JSON=(-H 'Content-Type: application/json')

# expect_param_error NAME [WHAT]: 400 invalid_parameter whose message names
# parameter NAME ("Parameter 'NAME' ..."), and WHAT when given.
expect_param_error() {
	expect_error 400 invalid_parameter || return
	expect_match "$(jq -r .error.message "$HTTP_BODY_FILE")" "^Parameter '$1' ${2:-}" \
		"message names parameter $1${2:+ ($2)}"
}

# body_of_size N: writes a JSON object body of exactly N bytes to a file
# and prints its name: {"title":"aaa…"}.
body_of_size() {
	local f=$IT_TMP/body-$1
	{ printf '{"title":"'; head -c "$(($1 - 12))" /dev/zero | tr '\0' a; printf '"}'; } >"$f"
	printf '%s\n' "$f"
}

# --- routing ---------------------------------------------------------------------------

test_unknown_path_is_404() {
	local path
	for path in /nope /api /api/todos/$ID1/extra /API/todos /api/todo; do
		http GET "$path"
		expect_error 404 not_found
		expect_header Cache-Control no-store
	done
}

test_wrong_method_is_405_with_allow() {
	http DELETE /api/todos
	expect_error 405 method_not_allowed
	expect_header Allow 'GET, POST'
	http POST "/api/todos/$ID1" "${JSON[@]}" --data '{"title":"x"}'
	expect_error 405 method_not_allowed
	expect_header Allow 'GET, PUT, PATCH, DELETE'
	http PUT /api/types
	expect_error 405 method_not_allowed
	expect_header Allow 'GET'
}

# --- request bodies --------------------------------------------------------------------

# nginx refuses a body over client_max_body_size (1m, the worker's default
# limit) itself, with the worker's JSON error shape (error_page in
# nginx/lakebase-fcgi.conf), not an HTML page.
test_body_over_1mib_is_413_json_from_nginx() {
	http POST /api/todos "${JSON[@]}" -H 'X-Request-Id: it-413-nginx' --data-binary "@$(body_of_size 1048577)"
	expect_error 413 payload_too_large || return
	expect_body_json .error.request_id '"it-413-nginx"'
	expect_header X-Request-Id it-413-nginx
}

# A body of exactly the limit gets through to the worker, which then judges
# the parameter (title has max_length 500).
test_body_of_exactly_1mib_reaches_the_worker() {
	http POST /api/todos "${JSON[@]}" --data-binary "@$(body_of_size 1048576)"
	expect_param_error title 'is longer than 500'
}

test_wrong_content_type_is_415() {
	local ct
	for ct in text/plain application/x-www-form-urlencoded application/jsonx 'text/json'; do
		http POST /api/todos -H "Content-Type: $ct" --data '{"title":"x"}'
		expect_error 415 unsupported_media_type
	done
	# No Content-Type at all.
	http POST /api/todos -H 'Content-Type:' --data '{"title":"x"}'
	expect_error 415 unsupported_media_type
}

test_malformed_json_body_is_400() {
	local body
	for body in '{"title":' '{"title": "x",}' "{'title': 'x'}" '{"title": "x"} trailing' 'nul'; do
		http POST /api/todos "${JSON[@]}" --data "$body"
		expect_error 400 bad_request
	done
}

test_body_not_an_object_is_400() {
	local body
	for body in '[{"title":"x"}]' '"title"' 42 null true; do
		http POST /api/todos "${JSON[@]}" --data "$body"
		expect_error 400 bad_request
	done
	# Empty body on a route that reads the body.
	http POST /api/todos "${JSON[@]}"
	expect_error 400 bad_request
}

# --- parameters ------------------------------------------------------------------------

test_missing_required_parameter_is_400_naming_it() {
	http POST /api/todos "${JSON[@]}" --data '{}'
	expect_param_error title 'is required'
	http POST /api/todos "${JSON[@]}" --data '{"other": "x"}'
	expect_param_error title 'is required'
	http GET /api/divide
	expect_param_error d 'is required'
	http PATCH "/api/todos/$ID1" "${JSON[@]}" --data '{"done": null}'
	expect_param_error 'done'
}

test_ill_typed_query_and_path_parameters_are_400_naming_them() {
	http GET '/api/todos?limit=abc'
	expect_param_error limit 'must be an integer'
	http GET '/api/todos?limit=1.5'
	expect_param_error limit 'must be an integer'
	http GET '/api/todos?limit='
	expect_param_error limit
	http GET /api/todos/not-a-uuid
	expect_param_error id 'must be a UUID'
	http GET /api/todos/00000000-0000-4000-8000-00000000000g
	expect_param_error id 'must be a UUID'
	http GET '/api/todos?limit=%zz'
	expect_param_error limit
}

test_ill_typed_values_of_each_type_are_400_naming_them() {
	local kv
	for kv in i=1.5 i=2147483648 i=x b=9223372036854775808 b=1e3 n=abc n=NaN f=maybe f=2 \
		u=1234 u=00000000-0000-4000-8000-00000000000 ts=yesterday ts=2024-13-01T00:00:00Z \
		ts=now 'j={"a":' 'j=[1,2'; do
		http GET /api/types --get --data-urlencode "$kv"
		expect_param_error "${kv%%=*}"
	done
}

test_ill_typed_body_values_are_400_naming_them() {
	http POST /api/todos "${JSON[@]}" --data '{"title": 5}'
	expect_param_error title 'must be a string'
	http POST /api/todos "${JSON[@]}" --data '{"title": ["x"]}'
	expect_param_error title
	http PATCH "/api/todos/$ID1" "${JSON[@]}" --data '{"done": "yes"}'
	expect_param_error 'done' 'must be true or false'
}

test_out_of_range_is_400_naming_the_parameter() {
	http GET '/api/todos?limit=0'
	expect_param_error limit 'must be at least 1'
	http GET '/api/todos?limit=501'
	expect_param_error limit 'must be at most 500'
	http GET '/api/todos?limit=-1'
	expect_param_error limit 'must be at least 1'
	http POST /api/todos "${JSON[@]}" --data "{\"title\": \"$(printf 'x%.0s' {1..501})\"}"
	expect_param_error title 'is longer than 500'
}

test_repeated_parameter_is_400_naming_it() {
	http GET '/api/todos?limit=1&limit=2'
	expect_param_error limit 'is repeated'
	http GET '/api/todos?limit=1&limit=1'
	expect_param_error limit 'is repeated'
	http POST /api/todos "${JSON[@]}" --data '{"title": "a", "title": "b"}'
	expect_param_error title 'is repeated'
}

test_nothing_is_written_by_a_refused_request() {
	local before
	before=$(pg_admin_sql "SELECT count(*) FROM app.todos")
	http POST /api/todos "${JSON[@]}" --data '{"title": "a", "title": "b"}'
	expect_status 400
	http POST /api/todos -H 'Content-Type: text/plain' --data '{"title": "a"}'
	expect_status 415
	expect_eq "$(pg_admin_sql "SELECT count(*) FROM app.todos")" "$before" "no row added"
}

# --- headers ---------------------------------------------------------------------------

test_cache_control_on_every_answer() {
	http GET /api/todos
	expect_status 200
	expect_header Cache-Control no-store
	http GET '/api/todos?limit=0'
	expect_status 400
	expect_header Cache-Control no-store
	http GET /nope
	expect_status 404
	expect_header Cache-Control no-store
	http GET /healthz
	expect_status 200
	expect_header Cache-Control no-store
}

# --- SQLSTATE mapping, through real queries ----------------------------------------------

test_statement_timeout_57014_is_504() {
	http GET '/api/slow?s=0.01'
	expect_status 200 || return
	expect_body '{"slept":true}'
	http GET '/api/slow?s=5'
	expect_error 504 timeout || return
	# The route's 500 ms statement_timeout ended it, not the 5 s sleep.
	awk -v t="$HTTP_TIME" 'BEGIN { exit !(t < 4) }'
	expect_eq "$?" 0 "answered in ${HTTP_TIME}s, well before the sleep would end"
	# The connection is still good afterwards.
	http GET '/api/slow?s=0'
	expect_status 200
}

test_permission_denied_42501_is_403_without_details() {
	# The id is this run's own: the worker log is kept across runs.
	local rid=it-42501-$$
	http GET /api/forbidden -H "X-Request-Id: $rid"
	expect_error 403 forbidden || return
	[[ $HTTP_BODY != *pg_authid* && $HTTP_BODY != *permission* ]]
	expect_eq "$?" 0 "the database's message stays out of the body"
	wait_for "grep -F 'request_id=$rid ' '$STACK_WORKER_LOG' | grep -F 'sqlstate=42501'" 5
	expect_eq "$?" 0 "the log has the SQLSTATE"
}

test_data_exception_22xxx_is_400() {
	http GET '/api/divide?d=4'
	expect_status 200 || return
	expect_body '{"q":25}'
	http GET '/api/divide?d=0'
	expect_error 400 bad_request || return
	[[ $HTTP_BODY != *division* ]]
	expect_eq "$?" 0 "the database's message stays out of the body"
}

test_not_null_violation_23502_is_400_and_writes_nothing() {
	local before
	before=$(pg_admin_sql "SELECT count(*) FROM app.todos")
	http POST /api/untitled "${JSON[@]}" --data '{}'
	expect_error 400 bad_request
	http POST /api/untitled "${JSON[@]}" --data '{"title": null}'
	expect_error 400 bad_request
	expect_eq "$(pg_admin_sql "SELECT count(*) FROM app.todos")" "$before" "no row added"
}

# --- the FastCGI connection -------------------------------------------------------------

# Without keep-conn, the worker closes the connection as soon as the
# response is written when it has read the whole input (the empty STDIN
# record), instead of waiting for the web server to close first (a sleep
# and a wake-up per request). A body refused unread keeps the waiting
# close: closing on unread input can turn into a reset that loses the
# response. fcgi_close.pl reads the response to EOF, then writes a byte:
# "closed" if the worker had closed, "open" if it still waits.
fcgi_close() {
	perl "$(dirname "$0")/fcgi_close.pl" "$STACK_FCGI_SOCK" "$@" 2>&1 | tr '\n' ' '
}

test_fastcgi_connection_closed_once_the_input_is_read() {
	expect_eq "$(fcgi_close GET /healthz)" "Status: 200 OK closed " "GET: closed right after the response"
	expect_eq "$(fcgi_close POST /healthz 2 '{}')" "Status: 404 Not Found closed " \
		"a body read whole: closed right after the response"
	expect_eq "$(fcgi_close POST /healthz 2000000 '{')" "Status: 413 Payload Too Large open " \
		"a body refused unread (413): the worker waits for the web server to close first"
	# A peer that sends the whole body but withholds the end record holds
	# the thread a second at most (then the worker closes), not until the
	# peer gives up.
	local t0=$SECONDS
	expect_eq "$(fcgi_close POST /healthz 2 '{}' no-end)" "Status: 404 Not Found closed " \
		"the end record withheld: closed once the worker stops waiting for it"
	expect_le $((SECONDS - t0)) 3 "within the worker's 1 s wait for the end record"
}

# --- health ----------------------------------------------------------------------------

test_healthz_and_readyz() {
	http GET /healthz
	expect_status 200
	expect_body '{"status":"ok"}'
	http GET /readyz
	expect_status 200
	expect_body '{"status":"ready"}'
}

# --- the worker's own body limit (max_body_bytes) ----------------------------------------

restore_worker() {
	worker_restart >/dev/null 2>&1 || echo "WARNING: could not restart the normal worker" >&2
}

# Below nginx's limit, the worker's max_body_bytes applies: 413 from the
# worker itself (with X-Request-Id), the limit inclusive.
test_worker_body_limit_is_413() {
	local cfg=$STACK_DIR/it-http-errors-small-body.json
	worker_config_derive "$cfg" '.max_body_bytes = 1024' || return
	at_exit restore_worker
	worker_restart "$cfg" || return
	http POST /api/todos "${JSON[@]}" -H 'X-Request-Id: it-413-worker' --data-binary "@$(body_of_size 1025)"
	expect_error 413 payload_too_large || return
	expect_header X-Request-Id it-413-worker
	http POST /api/todos "${JSON[@]}" --data-binary "@$(body_of_size 1024)"
	expect_param_error title 'is longer than 500'
}

run_test "unknown paths are 404 not_found" test_unknown_path_is_404
run_test "wrong method is 405 with the exact Allow header" test_wrong_method_is_405_with_allow
run_test "body over 1 MiB: 413 payload_too_large, JSON (nginx)" test_body_over_1mib_is_413_json_from_nginx
run_test "body of exactly 1 MiB reaches the worker (400 on title)" test_body_of_exactly_1mib_reaches_the_worker
run_test "wrong or missing content type is 415" test_wrong_content_type_is_415
run_test "malformed JSON body is 400 bad_request" test_malformed_json_body_is_400
run_test "body that is not a JSON object (or empty) is 400 bad_request" test_body_not_an_object_is_400
run_test "missing required parameter is 400 naming it" test_missing_required_parameter_is_400_naming_it
run_test "ill-typed query and path parameters are 400 naming them" test_ill_typed_query_and_path_parameters_are_400_naming_them
run_test "ill-typed value of every type is 400 naming it" test_ill_typed_values_of_each_type_are_400_naming_them
run_test "ill-typed body fields are 400 naming them" test_ill_typed_body_values_are_400_naming_them
run_test "out-of-range values are 400 naming the parameter" test_out_of_range_is_400_naming_the_parameter
run_test "repeated parameter (query or body) is 400 naming it" test_repeated_parameter_is_400_naming_it
run_test "a refused request writes nothing" test_nothing_is_written_by_a_refused_request
run_test "Cache-Control: no-store on 200, 400, 404 and health answers" test_cache_control_on_every_answer
run_test "SQLSTATE 57014 (statement timeout) is 504 timeout" test_statement_timeout_57014_is_504
run_test "SQLSTATE 42501 is 403 forbidden, details only in the log" test_permission_denied_42501_is_403_without_details
run_test "SQLSTATE 22012 (class 22) is 400 bad_request" test_data_exception_22xxx_is_400
run_test "SQLSTATE 23502 is 400 bad_request and writes nothing" test_not_null_violation_23502_is_400_and_writes_nothing
run_test "FastCGI: the connection is closed once the response is written, unless input was left unread" \
	test_fastcgi_connection_closed_once_the_input_is_read
run_test "/healthz is {status:ok}, /readyz is {status:ready}" test_healthz_and_readyz
run_test "worker's own max_body_bytes: 413 from the worker, limit inclusive" test_worker_body_limit_is_413
summary
