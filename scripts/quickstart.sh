#!/usr/bin/env bash
# scripts/quickstart.sh - from a fresh Debian 12 machine (as root) to a
# running local stack: install packages, build, start PostgreSQL (TLS),
# the workspace emulator, lakebase-fcgi and nginx, then show and run curl
# examples against nginx. Stop it all with: scripts/stack.sh stop
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# quote_arg ARG: ARG as it could be pasted into a shell (single-quoted
# unless it is plainly safe).
quote_arg() {
	local q="'"
	if [[ $1 =~ ^[A-Za-z0-9_./:@=,+-]+$ ]]; then
		printf %s "$1"
	else
		printf "'%s'" "${1//$q/$q\\$q$q}"
	fi
}

# example DESCRIPTION CMD...: prints what it shows and the command, then
# runs it. A non-2xx answer is shown, not fatal: these are examples, not
# tests (curl -w prints the HTTP status).
example() {
	local arg line="$"
	printf "\n-- %s\n" "$1"
	shift
	for arg in "$@"; do line+=" $(quote_arg "$arg")"; done
	printf "%s\n" "$line"
	"$@"
}

examples() {
	local url=$1
	echo
	echo "== Examples (nginx on $url) =="
	example "The service principal's route: every row (the SP owns the table)" \
		curl -sS -w '\n(HTTP %{http_code})\n' "$url/api/todos"
	example "The same table on a user route: Row-Level Security shows alice only her rows" \
		curl -sS -w '\n(HTTP %{http_code})\n' "$url/api/my/todos" \
		-H 'X-Forwarded-Email: alice@example.com' -H 'X-Forwarded-Access-Token: alice-token-1'
	example "... and bob only his" \
		curl -sS -w '\n(HTTP %{http_code})\n' "$url/api/my/todos" \
		-H 'X-Forwarded-Email: bob@example.com' -H 'X-Forwarded-Access-Token: bob-token-1'
	example "An INSERT as alice: owner is set by the database from current_user" \
		curl -sS -w '\n(HTTP %{http_code})\n' -X POST "$url/api/my/todos" \
		-H 'X-Forwarded-Email: alice@example.com' -H 'X-Forwarded-Access-Token: alice-token-1' \
		-H 'Content-Type: application/json' -d '{"title": "alice: water plants"}'
	example "alice's list now includes the new row" \
		curl -sS -w '\n(HTTP %{http_code})\n' "$url/api/my/todos" \
		-H 'X-Forwarded-Email: alice@example.com' -H 'X-Forwarded-Access-Token: alice-token-1'
	example "A user route without identity headers is refused (401), never served as the SP" \
		curl -sS -w '\n(HTTP %{http_code})\n' "$url/api/my/todos"
}

main() {
	"$REPO/scripts/deps.sh"
	"$REPO/scripts/build.sh"
	"$REPO/scripts/stack.sh" start
	# shellcheck source=/dev/null
	source "${LAKEBASE_STACK_DIR:-/tmp/lakebase-fcgi-stack}/env.sh"
	examples "$LAKEBASE_URL"
	echo
	echo "The stack is running (logs and env.sh in $LAKEBASE_STACK_DIR)."
	echo "Run the tests with the README's second command; stop everything with:"
	echo "  scripts/stack.sh stop"
}

main "$@"
