#!/usr/bin/env bash
# bench/run.sh - the benchmarks of lakebase-fcgi in one command (issue 7).
#
# Builds the worker out of tree and optimised (build-bench/, -O2 -g) and
# the helpers in bench/, starts its own local stack (scripts/stack.sh:
# PostgreSQL with TLS, the workspace emulator, lakebase-fcgi, nginx) on its
# own ports and state dir, creates the bench users, runs every scenario
# with wrk (-t2 -c32 by default, bounded, loopback only) and prints one
# table. Every claim is a ratio within this one run: the machine is shared,
# so the floor is measured again beside the product's scenarios.
# BENCHMARKS.md explains the scenarios, the references and the columns.
#
#   bench/run.sh [--duration S] [--connections N] [--wrk-threads N]
#                [--threads N] [--only NAME,...] [--no-build] [--profile]
#                [--keep-stack]
#
#   --duration S        measured seconds per scenario (default 10)
#   --connections N     wrk -c (default 32); --wrk-threads N: wrk -t (2)
#   --threads N         worker, floor and ceiling threads (default 16)
#   --only LIST         run only these scenarios (comma separated names)
#   --no-build          use the existing build in $BENCH_BUILD_DIR
#   --profile           also profile: perf (cpu-clock samples, whole host
#                       and per function) during extra, unmeasured runs of
#                       floor, user-1 and user-1000, and callgrind
#                       instructions per request of floor and user-1 (GET),
#                       floor-post and post (the INSERT)
#   --keep-stack        leave the stack running at the end
#
# Results: the table on stdout, raw files in /tmp/lb-bench/bench/
# (results.tsv, results.md, profile/). Environment: BENCH_BUILD_DIR
# (default <repo>/build-bench), BENCH_SRC_DIR (the tree to build, default
# the repo), RTT_US and RTT_USERS (cold-rtt's round trip, default 10000
# µs, and its number of new users, default 100).
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
BENCH_SRC_DIR=${BENCH_SRC_DIR:-$REPO}
BENCH_BUILD_DIR=${BENCH_BUILD_DIR:-$BENCH_SRC_DIR/build-bench}

DURATION=10
BENCH_CONNECTIONS=32
BENCH_WRK_THREADS=2
THREADS=16
ONLY=
BUILD=1
PROFILE=
KEEP_STACK=

usage() {
	sed -n '2,/^set -E/p' "${BASH_SOURCE[0]}" | sed -e '/^set -E/d' -e 's/^# \{0,1\}//' >&2
	exit 2
}

while [[ $# -gt 0 ]]; do
	case $1 in
	--duration) DURATION=$2; shift 2 ;;
	--connections) BENCH_CONNECTIONS=$2; shift 2 ;;
	--wrk-threads) BENCH_WRK_THREADS=$2; shift 2 ;;
	--threads) THREADS=$2; shift 2 ;;
	--only) ONLY=,$2,; shift 2 ;;
	--no-build) BUILD=; shift ;;
	--profile) PROFILE=1; shift ;;
	--keep-stack) KEEP_STACK=1; shift ;;
	*) usage ;;
	esac
done
for n in "$DURATION" "$BENCH_CONNECTIONS" "$BENCH_WRK_THREADS" "$THREADS"; do
	[[ $n =~ ^[0-9]+$ && $n -ge 1 ]] || usage
done

# The bench stack: its own state dir and ports, so it never meets the
# developer's stack (or another engineer's) on this machine.
export LAKEBASE_STACK_DIR=/tmp/lb-bench
export LAKEBASE_PG_PORT=54379
export LAKEBASE_EMU_PORT=18139
export LAKEBASE_HTTP_PORT=18130
export LAKEBASE_BUILD_DIR=$BENCH_BUILD_DIR
export LAKEBASE_WORKER_THREADS=$THREADS
# floor-1000 and user-1000-b1100 hold ~1000 connections at once.
export LAKEBASE_PG_MAX_CONNECTIONS=1300
REF_PORT=18131        # nginx -> ceiling or floor (keep_conn off, as shipped)
KC_PORT=18132         # nginx -> the worker, keep_conn on
KC_REF_PORT=18133     # nginx -> ceiling, keep_conn on
KEEPALIVE=8           # upstream keepalive per nginx worker with keep_conn on
NGINX_WORKERS=2       # tests/stack/nginx.conf.in

# shellcheck source=tests/stack/lib.sh
source "$REPO/tests/stack/lib.sh"
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"

BIN=$BENCH_BUILD_DIR/bench
RESULTS=$BENCH_STATE/results.tsv
PROFILE_DIR=$BENCH_STATE/profile
USER_PATH='/api/my/todos?limit=3'
POST_PATH=/api/my/todos
POST_BODY='{"title":"bench-post"}'
SP_PATH='/bench/todos?limit=3'
SAMPLER_ID=0
STARTED_STACK=
LOAD_BEFORE=
LOAD_AFTER=
SRC_REV=

want() {
	[[ -z $ONLY || $ONLY == *",$1,"* ]]
}

# --- build --------------------------------------------------------------------------

build() {
	bench_log "building $BENCH_SRC_DIR into $BENCH_BUILD_DIR (-O2 -g)"
	[[ -x $BENCH_SRC_DIR/configure ]] || (cd "$BENCH_SRC_DIR" && ./autogen.sh >/dev/null 2>&1) ||
		bench_die "autogen.sh failed in $BENCH_SRC_DIR"
	mkdir -p "$BENCH_BUILD_DIR"
	if [[ ! -f $BENCH_BUILD_DIR/Makefile ]]; then
		(cd "$BENCH_BUILD_DIR" && ../configure CFLAGS='-O2 -g' >configure.log 2>&1) ||
			bench_die "configure failed: $BENCH_BUILD_DIR/configure.log"
	fi
	if ! make -C "$BENCH_BUILD_DIR" -j2 >"$BENCH_BUILD_DIR/make.log" 2>&1; then
		grep -E 'error|Error' "$BENCH_BUILD_DIR/make.log" | head -n 10 >&2 || true
		bench_die "the product does not build (full log: $BENCH_BUILD_DIR/make.log)"
	fi
	mkdir -p "$BIN"
	make -C "$BENCH_DIR" OUT="$BIN" >"$BIN/make.log" 2>&1 ||
		{ cat "$BIN/make.log" >&2; bench_die "bench helpers do not build"; }
}

preflight() {
	local tool
	[[ $(id -u) == 0 ]] || bench_die "run as root (the stack runs postgres and nginx as their users)"
	for tool in wrk pgbench jq curl gcc make nginx openssl perl; do
		command -v "$tool" >/dev/null || bench_die "$tool is missing"
	done
	if [[ -n $PROFILE ]]; then
		command -v perf >/dev/null || bench_die "--profile needs perf"
		command -v valgrind >/dev/null || bench_die "--profile needs valgrind"
	fi
	for port in $REF_PORT $KC_PORT $KC_REF_PORT $RTT_PROXY_PORT; do
		port_in_use "$port" && bench_die "127.0.0.1:$port is in use"
	done
	# ~1000 PostgreSQL connections in one process need more than 1024 fds.
	local hard
	hard=$(ulimit -Hn)
	[[ $hard == unlimited || $hard -ge 4096 ]] || bench_die "open files hard limit $hard < 4096"
	ulimit -n "$hard"
}

# --- cleanup: everything we started, by PID -----------------------------------------

cleanup() {
	local rc=$? name
	trap - EXIT INT TERM
	for name in ceiling floor nginx-ref nginx-kc nginx-kcref delayproxy; do
		[[ -e $BENCH_STATE/$name.pid ]] && stop_pid "$BENCH_STATE/$name.pid" 10
	done
	if [[ -n $STARTED_STACK && -z $KEEP_STACK ]]; then
		"$REPO/scripts/stack.sh" stop >/dev/null 2>&1 || bench_log "stack stop failed"
	fi
	exit "$rc"
}

# --- results ------------------------------------------------------------------------

RESULT_COLUMNS="scenario vs requests seconds rps p50_us p90_us p99_us errors mints peak_pg logins logins_per_s cpu_us_per_req pg_us_per_req rss_kb conns_end host_busy_pct pg_pss_mb load1"

# record NAME VS KEY=VALUE...: one row of results.tsv, columns as above
# (missing ones are "-").
record() {
	local name=$1 vs=$2 col line
	local -A v=()
	shift 2
	for kv in "$@"; do v[${kv%%=*}]=${kv#*=}; done
	line="$name	$vs"
	for col in $RESULT_COLUMNS; do
		[[ $col == scenario || $col == vs ]] && continue
		line+="	${v[$col]:--}"
	done
	echo "$line" >>"$RESULTS"
}

# quotient A B FORMAT: A / B printed with FORMAT, "-" when B is not positive.
quotient() {
	awk -v a="$1" -v b="$2" -v f="$3" 'BEGIN { if (b + 0 > 0) printf(f, a / b); else printf("-") }'
}

# wrk_field KEY FIELDS: a value of run_wrk's output.
wrk_field() {
	sed -n "s/^$1=//p" <<<"$2" | head -n 1
}

# kind_of [BENCH_*=...]: the BENCH_KIND among the settings (default u).
kind_of() {
	local kv kind=u
	for kv in "$@"; do
		[[ $kv == BENCH_KIND=* ]] && kind=${kv#BENCH_KIND=}
	done
	echo "$kind"
}

# measure NAME VS ROOT_PID APP PORT WARMUP_S [BENCH_*=...]: warms up, then
# one measured wrk run with the samplers around it; records the row.
measure() {
	local name=$1 vs=$2 root=$3 app=$4 port=$5 warm=$6
	shift 6
	local out mints0 mints1 mark ticks0 ticks1 pgticks0 pgticks1 hb0 ht0 hb1 ht1 peak requests dur errors rss conns logins pss=-
	if [[ $warm == prime* ]]; then
		# One request per user (in parallel), so every user has its
		# credential and a connection before the measured run. "prime":
		# twice, since on a busy host the first pass can outlast the idle
		# timeout (30 s) and the second reopens what the reaper closed;
		# "prime1": once (a budget below 1000 keeps no connection anyway).
		local pass t0 passes=2
		[[ $warm == prime1 ]] && passes=1
		bench_log "$name: priming 1000 users ($passes pass(es)), warm-up 3s, then ${DURATION}s"
		for ((pass = 1; pass <= passes; pass++)); do
			t0=$SECONDS
			"$BIN/seqload" http --url "http://127.0.0.1:$port$USER_PATH" --kind "$(kind_of "$@")" \
				--count 1000 --parallel "$BENCH_CONNECTIONS" >"$BENCH_STATE/prime.out"
			bench_log "prime pass $pass: $((SECONDS - t0)) s, $(grep '^errors=' "$BENCH_STATE/prime.out")"
		done
		warm=3
	else
		bench_log "$name: warm-up ${warm}s, then ${DURATION}s"
	fi
	if [[ $warm -gt 0 ]]; then
		run_wrk "$port" "$warm" "$@" >/dev/null
	fi
	SAMPLER_ID=$((SAMPLER_ID + 1))
	sampler_start "$app" "$SAMPLER_ID"
	sleep 0.3    # the sampler's own login, before the run
	mints0=$(emu_mints_total)
	mark=$(file_size "$STACK_PG_LOG")
	ticks0=$(proc_tree_ticks "$root")
	pgticks0=$(proc_tree_ticks "$(pg_root_pid)")
	read -r hb0 ht0 < <(host_busy_ticks)
	out=$(run_wrk "$port" "$DURATION" "$@")
	read -r hb1 ht1 < <(host_busy_ticks)
	ticks1=$(proc_tree_ticks "$root")
	pgticks1=$(proc_tree_ticks "$(pg_root_pid)")
	peak=$(sampler_stop "$SAMPLER_ID")
	mints1=$(emu_mints_total)
	requests=$(wrk_field requests "$out")
	dur=$(wrk_field duration_us "$out")
	errors=$(( $(wrk_field connect "$out") + $(wrk_field read "$out") + $(wrk_field write "$out") +
		$(wrk_field status "$out") + $(wrk_field timeout "$out") ))
	rss=$(proc_tree_rss_kb "$root")
	conns=$(pg_conns_of "$app")
	if [[ $name == *1000* ]]; then
		pss=$(pg_pss_mb)
	fi
	logins=$(pg_logins_since "$app" "$mark")
	record "$name" "$vs" requests="$requests" seconds="$(quotient "$dur" 1000000 '%.2f')" \
		rps="$(quotient $((requests * 1000000)) "$dur" '%.0f')" \
		p50_us="$(wrk_field p50 "$out")" p90_us="$(wrk_field p90 "$out")" p99_us="$(wrk_field p99 "$out")" \
		errors="$errors" mints=$((mints1 - mints0)) peak_pg="${peak:-?}" logins="$logins" \
		logins_per_s="$(quotient $((logins * 1000000)) "$dur" '%.1f')" \
		cpu_us_per_req="$(quotient $(((ticks1 - ticks0) * 1000000 / CLK_TCK)) "$requests" '%.0f')" \
		pg_us_per_req="$(quotient $(((pgticks1 - pgticks0) * 1000000 / CLK_TCK)) "$requests" '%.0f')" \
		rss_kb="$rss" conns_end="$conns" \
		host_busy_pct="$(quotient $(((hb1 - hb0) * 100)) $((ht1 - ht0)) '%.0f')" \
		pg_pss_mb="$pss" load1="$(cut -d ' ' -f 1 /proc/loadavg)"
}

# --- the product ------------------------------------------------------------------------

# product_start CONFIG [THREADS]: a fresh worker (empty pools, empty
# per-process caches) with CONFIG, its SP credential and connection warm.
product_start() {
	local config=$1 threads=${2:-$THREADS}
	worker_stop
	LAKEBASE_WORKER_THREADS=$threads worker_start "$config" 2>/dev/null ||
		bench_die "the worker did not start with $config; see $STACK_WORKER_LOG"
	curl -sf --max-time 10 -o /dev/null "$STACK_URL/readyz" || bench_log "warning: /readyz is not 200"
}

worker_pid() {
	read_pid "$STACK_WORKER_PID"
}

# product_scenario NAME VS CONFIG PORT WARMUP_S [BENCH_*=...]; the worker's
# threads are PRODUCT_THREADS if set (per process, under the supervisor).
product_scenario() {
	local name=$1 vs=$2 config=$3 port=$4 warm=$5
	shift 5
	want "$name" || return 0
	product_start "$config" "${PRODUCT_THREADS:-$THREADS}"
	measure "$name" "$vs" "$(worker_pid)" "$BENCH_APP" "$port" "$warm" "$@"
}

# --- references -----------------------------------------------------------------------------

ref_sock() {
	echo "$BENCH_STATE/ref.sock"
}

ceiling_start() {
	local threads=${1:-$THREADS}
	bench_stop ceiling
	bench_start ceiling "$BENCH_STATE/ceiling.log" "$BIN/ceiling_fcgi" \
		--listen "unix:$(ref_sock)" --threads "$threads"
	wait_for "[[ -S '$(ref_sock)' ]]" 5 || bench_die "ceiling_fcgi did not start"
}

floor_conninfo() {
	printf 'host=localhost port=%s dbname=%s sslmode=verify-full sslrootcert=%s' \
		"$STACK_PG_PORT" "$STACK_DATABASE" "$STACK_CA"
}

# floor_start [WRAPPER]: (re)starts the floor, under WRAPPER if given.
floor_start() {
	local -a cmd=("$BIN/floor")
	[[ -n ${1:-} ]] && cmd=("$1" "$BIN/floor")
	bench_stop floor
	# The password reaches the floor through its environment only.
	FLOOR_PASSWORD=$FLOOR_PASSWORD bench_start floor "$BENCH_STATE/floor.log" "${cmd[@]}" \
		--listen "unix:$(ref_sock)" --threads "$THREADS" --conninfo "$(floor_conninfo)"
	wait_for "[[ -S '$(ref_sock)' ]]" 30 || bench_die "floor did not start"
}

scenario_ceiling_http() {
	want ceiling-http || return 0
	ceiling_start
	measure ceiling-http - "$(bench_pid ceiling)" none "$REF_PORT" 2 BENCH_USERS=1 BENCH_PATH="$USER_PATH"
	bench_stop ceiling
}

# pgbench -S (one indexed SELECT by primary key) over TLS, verify-full,
# as the admin role, at the worker's thread count, extended protocol (as
# PQexecParams). Latency percentiles from pgbench's per-transaction log.
scenario_ceiling_db() {
	want ceiling-db || return 0
	local out tps lat n failed peak mark
	local -a pgb_env=(PGHOST=localhost PGPORT="$STACK_PG_PORT" PGDATABASE=pgbench PGUSER="$STACK_ADMIN_ROLE"
		PGPASSWORD="$(secret_get admin.password)" PGSSLMODE=verify-full PGSSLROOTCERT="$STACK_CA"
		PGAPPNAME=lakebase-pgbench)
	bench_log "ceiling-db: pgbench -i, then -S for ${DURATION}s"
	env "${pgb_env[@]}" pgbench -i -s 1 -q >"$BENCH_STATE/pgbench-init.log" 2>&1 ||
		{ cat "$BENCH_STATE/pgbench-init.log" >&2; bench_die "pgbench -i failed"; }
	rm -f "$BENCH_STATE"/pgb.*
	SAMPLER_ID=$((SAMPLER_ID + 1))
	sampler_start lakebase-pgbench "$SAMPLER_ID"
	sleep 0.3
	out=$(env "${pgb_env[@]}" timeout $((DURATION + 60)) pgbench -S -M extended -c "$THREADS" \
		-j "$BENCH_WRK_THREADS" -T "$DURATION" -n -l --log-prefix="$BENCH_STATE/pgb" 2>&1) ||
		bench_log "pgbench: ${out:0:300}"
	peak=$(sampler_stop "$SAMPLER_ID")
	tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' <<<"$out")
	failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out")
	n=$(cat "$BENCH_STATE"/pgb.* | wc -l)
	lat=$(cat "$BENCH_STATE"/pgb.* | awk '{ print $3 }' | sort -n | awk -v n="$n" '
		{ v[NR] = $1 } END { r50 = int(n * .5 + .999999); r90 = int(n * .9 + .999999); r99 = int(n * .99 + .999999);
			print v[r50], v[r90], v[r99] }')
	read -r p50 p90 p99 <<<"$lat"
	record ceiling-db - requests="$n" seconds="$DURATION" rps="$(printf '%.0f' "${tps:-0}")" \
		load1="$(cut -d ' ' -f 1 /proc/loadavg)" \
		p50_us="$p50" p90_us="$p90" p99_us="$p99" errors="${failed:-0}" peak_pg="$peak"
	rm -f "$BENCH_STATE"/pgb.*
}

# The parts of a first request, measured directly: a mint at the emulator,
# a TLS login with the credential and the user route's statement on the
# new session, in one round trip (100 users of their own). Measured just
# before and just after cold-1000 (before|after), as the floor is beside
# the product: the host's load at the end of a run is not what it was at
# the start.
scenario_mint_login() {
	want cold-1000 || return 0
	bench_log "mint + login + first statement reference (100 users, $1 cold-1000)"
	"$BIN/seqload" mintlogin --emu "$STACK_EMU_URL" --endpoint "$STACK_ENDPOINT" \
		--conninfo "$(floor_conninfo)" --kind m --count 100 --sql "$(user_route_sql)" \
		>"$BENCH_STATE/mintlogin-$1.out"
}

# The statement USER_PATH runs, its :limit bound as in USER_PATH.
user_route_sql() {
	jq -r '.routes[] | select(.path == "/api/my/todos" and .method == "GET") | .sql' \
		"$BENCH_STATE/worker.json" | sed 's/:limit/3/'
}

# The floor is measured again beside the product's scenarios: each
# product row is compared with the mean of the floor rows of its kind just
# before and just after it, so both saw the same machine (shared, noisy).
FLOOR_RUNNING=

floor_ensure() {
	if [[ $FLOOR_RUNNING != few ]]; then
		floor_start
		FLOOR_RUNNING=few
		run_wrk "$REF_PORT" 2 BENCH_USERS=1 BENCH_KIND=f BENCH_PATH="$USER_PATH" >/dev/null
	fi
}

# measure_floor floor|floor-1000|floor-post
measure_floor() {
	want "$1" || return 0
	# The last product worker goes: its connections and its background
	# refreshes (mints) must not count against the floor.
	worker_stop
	case $1 in
	floor)
		floor_ensure
		measure floor - "$(bench_pid floor)" "$FLOOR_APP" "$REF_PORT" 0 \
			BENCH_USERS=1 BENCH_KIND=f BENCH_PATH="$USER_PATH"
		;;
	floor-1000)
		# A fresh floor (its ~1000 connections go again afterwards).
		floor_start
		measure floor-1000 - "$(bench_pid floor)" "$FLOOR_APP" "$REF_PORT" prime \
			BENCH_USERS=1000 BENCH_KIND=f BENCH_PATH="$USER_PATH"
		bench_stop floor
		FLOOR_RUNNING=
		;;
	floor-post)
		floor_ensure
		measure floor-post - "$(bench_pid floor)" "$FLOOR_APP" "$REF_PORT" 0 BENCH_USERS=1 BENCH_KIND=f \
			BENCH_PATH="$POST_PATH" BENCH_METHOD=POST BENCH_BODY="$POST_BODY"
		clear_posts
		;;
	esac
}

clear_posts() {
	pg_admin_psql -q -c "DELETE FROM app.todos WHERE title = 'bench-post'" >/dev/null
	pg_admin_psql -q -c "VACUUM ANALYZE app.todos" >/dev/null
}

# --- cold-1000: the first request of 1000 new users, one at a time -------------------------

# first_requests NAME KIND COUNT: the first request of each of COUNT users
# of KIND, one at a time, on the running worker; one row of the table.
first_requests() {
	local name=$1 kind=$2 count=$3
	local out mints0 mints1 mark ticks0 ticks1 peak root t0 t1 secs logins
	root=$(worker_pid)
	bench_log "$name: $count first requests, sequential"
	SAMPLER_ID=$((SAMPLER_ID + 1))
	sampler_start "$BENCH_APP" "$SAMPLER_ID"
	sleep 0.3
	mints0=$(emu_mints_total)
	mark=$(file_size "$STACK_PG_LOG")
	ticks0=$(proc_tree_ticks "$root")
	t0=$EPOCHREALTIME
	out=$("$BIN/seqload" http --url "$STACK_URL$USER_PATH" --kind "$kind" --count "$count")
	t1=$EPOCHREALTIME
	ticks1=$(proc_tree_ticks "$root")
	peak=$(sampler_stop "$SAMPLER_ID")
	mints1=$(emu_mints_total)
	secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf("%.2f", b - a) }')
	logins=$(pg_logins_since "$BENCH_APP" "$mark")
	record "$name" - requests="$(sed -n 's/^requests=//p' <<<"$out")" seconds="$secs" \
		rps="$(quotient "$count" "$secs" '%.0f')" \
		p50_us="$(sed -n 's/^p50_us=//p' <<<"$out")" p90_us="$(sed -n 's/^p90_us=//p' <<<"$out")" \
		p99_us="$(sed -n 's/^p99_us=//p' <<<"$out")" errors="$(sed -n 's/^errors=//p' <<<"$out")" \
		load1="$(cut -d ' ' -f 1 /proc/loadavg)" \
		mints=$((mints1 - mints0)) peak_pg="${peak:-?}" logins="$logins" \
		logins_per_s="$(quotient "$logins" "$secs" '%.1f')" \
		cpu_us_per_req="$(quotient $(((ticks1 - ticks0) * 1000000 / CLK_TCK)) "$count" '%.0f')" \
		rss_kb="$(proc_tree_rss_kb "$root")" conns_end="$(pg_conns_of "$BENCH_APP")"
}

scenario_cold() {
	want cold-1000 || return 0
	product_start "$BENCH_STATE/worker.json"
	first_requests cold-1000 c 1000
}

# --- cold-rtt: first requests with the database a round trip away ------------------------------

# PostgreSQL here answers in microseconds; Lakebase is a network hop away.
# bench/delayproxy delays every byte between the worker and PostgreSQL by
# half of RTT_US each way, so round trips show as time: a first request's
# login and first statement, and the same parts measured by a bare client
# through the same proxy (seqload mintlogin). The TCP handshake is local.
RTT_US=${RTT_US:-10000}
RTT_PROXY_PORT=18134
RTT_USERS=${RTT_USERS:-100}

scenario_cold_rtt() {
	want cold-rtt || return 0
	bench_start delayproxy "$BENCH_STATE/delayproxy.log" "$BIN/delayproxy" --listen "$RTT_PROXY_PORT" \
		--to "$STACK_PG_PORT" --delay-us $((RTT_US / 2))
	wait_for "port_in_use $RTT_PROXY_PORT" 5 || bench_die "delayproxy did not start"
	PGPORT=$RTT_PROXY_PORT product_start "$BENCH_STATE/worker.json"
	first_requests cold-rtt c "$RTT_USERS"
	bench_log "cold-rtt parts: mint + login + first statement through the proxy (100 users)"
	"$BIN/seqload" mintlogin --emu "$STACK_EMU_URL" --endpoint "$STACK_ENDPOINT" \
		--conninfo "$(floor_conninfo | sed "s/port=$STACK_PG_PORT/port=$RTT_PROXY_PORT/")" \
		--kind m --count 100 --sql "$(user_route_sql)" >"$BENCH_STATE/mintlogin-rtt.out"
	alternating_timeouts >"$BENCH_STATE/alternate-rtt.out"
	product_start "$BENCH_STATE/worker.json"
	bench_stop delayproxy
}

# Warm SP requests, one at a time, alternating between a route with a
# statement timeout (/api/todos, 5 s) and one without (the server's
# default): each needs the session's timeout changed. Prints the median
# of 60 (curl's time_total, in ms).
alternating_timeouts() {
	local id=00000000-0000-4000-8000-000000000001 i
	bench_log "cold-rtt: 60 warm SP requests alternating between statement timeouts"
	for ((i = 0; i < 33; i++)); do
		curl -s -o /dev/null -w '%{time_total}\n' --max-time 10 "$STACK_URL/api/todos?limit=1"
		curl -s -o /dev/null -w '%{time_total}\n' --max-time 10 "$STACK_URL/api/todos/$id"
	done | tail -n 60 | sort -n | awk '{ t[NR] = $1 } END { printf "alt_p50_ms=%.2f\nalt_n=%d\n", t[int((NR + 1) / 2)] * 1000, NR }'
}

# --- refresh: credentials that expire every few seconds during the run ------------------------

REFRESH_LIFETIME_S=6

scenario_refresh() {
	want refresh || return 0
	emu_set_lifetime "$REFRESH_LIFETIME_S"
	# r-users were never minted for: every credential of theirs is short.
	product_scenario refresh floor "$BENCH_STATE/worker.json" "$STACK_HTTP_PORT" 2 \
		BENCH_USERS=10 BENCH_KIND=r BENCH_PATH="$USER_PATH"
	# How the worker's connections ended (its counters since it started:
	# warm-up and run): renewed, or closed at their credential's expiry.
	curl -sf --max-time 5 "$STACK_URL/metrics" |
		sed -n 's/^lakebase_connections_closed_total{reason="\([a-z_]*\)"} \([0-9]*\)$/\1=\2/p' \
			>"$BENCH_STATE/refresh-closes.out" || true
	emu_set_lifetime 3600
}

# --- keep_conn: off (shipped) against on, threads sized for it --------------------------------

# With fastcgi_keep_conn on, libfcgi pins a thread to every upstream
# connection nginx keeps: threads must cover nginx workers x keepalive plus
# the requests in flight. Measured: the ceiling and user-1 with keep_conn
# on and threads sized so; user-1 with keep_conn off at that thread count
# (the thread count alone); keep_conn on with the default threads (stalls).
keep_conn_scenarios() {
	local sized=$((NGINX_WORKERS * KEEPALIVE + BENCH_CONNECTIONS))
	# The ceiling takes the floor's socket.
	bench_stop floor
	FLOOR_RUNNING=
	scenario_ceiling_http
	if want ceiling-http-kc; then
		bench_nginx_start kcref "$KC_REF_PORT" "$(ref_sock)" on "$KEEPALIVE"
		ceiling_start "$sized"
		measure "ceiling-http-kc" - "$(bench_pid ceiling)" none "$KC_REF_PORT" 2 \
			BENCH_USERS=1 BENCH_PATH="$USER_PATH"
		bench_stop ceiling
		bench_stop nginx-kcref
	fi
	bench_nginx_start kc "$KC_PORT" "$STACK_FCGI_SOCK" on "$KEEPALIVE"
	if want "user-1-t$sized"; then
		product_start "$BENCH_STATE/worker.json" "$sized"
		measure "user-1-t$sized" floor "$(worker_pid)" "$BENCH_APP" "$STACK_HTTP_PORT" 2 \
			BENCH_USERS=1 BENCH_PATH="$USER_PATH"
	fi
	if want "user-1-kc-t$sized"; then
		product_start "$BENCH_STATE/worker.json" "$sized"
		measure "user-1-kc-t$sized" floor "$(worker_pid)" "$BENCH_APP" "$KC_PORT" 2 \
			BENCH_USERS=1 BENCH_PATH="$USER_PATH"
	fi
	if want "user-1-kc-t$THREADS"; then
		product_start "$BENCH_STATE/worker.json" "$THREADS"
		measure "user-1-kc-t$THREADS" floor "$(worker_pid)" "$BENCH_APP" "$KC_PORT" 0 \
			BENCH_USERS=1 BENCH_PATH="$USER_PATH"
	fi
	bench_stop nginx-kc
}

# --- profiles (--profile) -------------------------------------------------------------------

# perf_report OUT LINES [perf report args...]: the first LINES lines of
# the report, without comments, in $PROFILE_DIR/OUT.
perf_report() {
	local out=$PROFILE_DIR/$1 lines=$2
	shift 2
	perf report --stdio "$@" >"$out.full" 2>/dev/null || true
	grep -v -e '^#' -e '^$' "$out.full" | head -n "$lines" >"$out" || true
	rm -f "$out.full"
}

# profile_perf NAME PID PORT [BENCH_*=...]: an extra run of the scenario
# (not a measured one) under perf, cpu-clock sampling (this VM has no
# hardware counters): the whole host by process, and the target process
# with DWARF call graphs for its functions, self and inclusive.
profile_perf() {
	local name=$1 pid=$2 port=$3 host_pid proc_pid
	shift 3
	mkdir -p "$PROFILE_DIR"
	bench_log "profile: perf during another ${DURATION}s of $name"
	perf record -q -e cpu-clock -F 499 -a -o "$PROFILE_DIR/$name.host.data" -- sleep "$((DURATION + 1))" \
		>/dev/null 2>&1 &
	host_pid=$!
	perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$pid" -o "$PROFILE_DIR/$name.proc.data" \
		-- sleep "$((DURATION + 1))" >/dev/null 2>&1 &
	proc_pid=$!
	sleep 0.5
	run_wrk "$port" "$DURATION" "$@" >"$PROFILE_DIR/$name.perf.wrk"
	wait "$host_pid" "$proc_pid" || true
	# Whole reports to files first: head closing a pipe would be a
	# SIGPIPE failure under pipefail.
	perf_report "$name.by-process.txt" 12 -i "$PROFILE_DIR/$name.host.data" --no-children --sort comm
	perf_report "$name.self.txt" 50 -i "$PROFILE_DIR/$name.proc.data" --no-children --sort dso,sym \
		-g none --percent-limit 0.5
	perf_report "$name.inclusive.txt" 80 -i "$PROFILE_DIR/$name.proc.data" --children --sort sym \
		-g none --percent-limit 2
	rm -f "$PROFILE_DIR/$name.proc.data"   # large (stacks); the reports stay
}

CALLGRIND_REQUESTS=2000

# callgrind_measure NAME PID URL KIND [seqload options]: zeroes the counters
# after a warm-up, runs CALLGRIND_REQUESTS sequential requests, dumps;
# instructions per request.
callgrind_measure() {
	local name=$1 pid=$2 url=$3 kind=$4 out=$PROFILE_DIR/$1.callgrind
	shift 4
	"$BIN/seqload" http --url "$url" --kind "$kind" --count 1 --requests 200 "$@" >/dev/null
	callgrind_control -z "$pid" >/dev/null 2>&1
	"$BIN/seqload" http --url "$url" --kind "$kind" --count 1 --requests "$CALLGRIND_REQUESTS" "$@" \
		>"$PROFILE_DIR/$name.callgrind.load"
	callgrind_control -d "$pid" >/dev/null 2>&1
	sleep 1
	local dump
	dump=$(ls -t "$out".* 2>/dev/null | head -n 1)
	[[ -n $dump ]] || { bench_log "no callgrind dump for $name"; return; }
	callgrind_annotate --inclusive=no "$dump" >"$PROFILE_DIR/$name.callgrind.self.full" 2>/dev/null || true
	callgrind_annotate --inclusive=yes "$dump" >"$PROFILE_DIR/$name.callgrind.incl.full" 2>/dev/null || true
	head -n 45 "$PROFILE_DIR/$name.callgrind.self.full" >"$PROFILE_DIR/$name.callgrind.self.txt" || true
	head -n 70 "$PROFILE_DIR/$name.callgrind.incl.full" >"$PROFILE_DIR/$name.callgrind.incl.txt" || true
	awk -v n="$CALLGRIND_REQUESTS" '/PROGRAM TOTALS/ { gsub(/,/, "", $1); printf "%s instructions per request: %.0f\n", name, $1 / n }' \
		name="$name" "$PROFILE_DIR/$name.callgrind.self.txt" >>"$PROFILE_DIR/instructions.txt"
}

# profile_callgrind floor|user-1|floor-post|post: callgrind on the floor or
# the worker for CALLGRIND_REQUESTS requests of the user route (GET, or
# the INSERT for the -post names).
profile_callgrind() {
	local name=$1 wrapper=$BENCH_STATE/callgrind-$1.sh
	local post=() path=$USER_PATH
	[[ $name == *post ]] && post=(--post "$POST_BODY") path=$POST_PATH
	mkdir -p "$PROFILE_DIR"
	printf '#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file=%s "$@"\n' \
		"$PROFILE_DIR/$name.callgrind.%p" >"$wrapper"
	chmod 0755 "$wrapper"
	bench_log "profile: callgrind, $CALLGRIND_REQUESTS requests of $name"
	if [[ $name == floor* ]]; then
		floor_start "$wrapper"
		FLOOR_RUNNING=
		callgrind_measure "$name" "$(bench_pid floor)" "http://127.0.0.1:$REF_PORT$path" f "${post[@]}"
		bench_stop floor
	else
		local real=$STACK_WORKER_BIN
		STACK_WORKER_BIN=$wrapper
		printf '#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file=%s %s "$@"\n' \
			"$PROFILE_DIR/$name.callgrind.%p" "$real" >"$wrapper"
		product_start "$BENCH_STATE/worker.json"
		callgrind_measure "$name" "$(worker_pid)" "$STACK_URL$path" u "${post[@]}"
		worker_stop
		STACK_WORKER_BIN=$real
	fi
}

# --- the table ---------------------------------------------------------------------------------

# print_table text|md: the results; each product row's ratios are to the
# mean of the nearest rows of its floor before and after it.
print_table() {
	local fmt=$1
	awk -F '\t' -v fmt="$fmt" '
		function num(x) { return (x == "-" || x == "?" || x == "") ? "" : x + 0 }
		function ms(us) { return (us == "-" || us == "") ? "-" : sprintf("%.2f", us / 1000) }
		function cell(i, name) { return f[i, col[name]] }
		# mean of metric m over the nearest rows named r before and after row i
		function ref(i, r, m,   j, sum, n) {
			sum = 0; n = 0
			for (j = i - 1; j >= 1; j--) if (cell(j, "scenario") == r) { if (num(cell(j, m)) != "") { sum += cell(j, m); n++ }; break }
			for (j = i + 1; j <= rows; j++) if (cell(j, "scenario") == r) { if (num(cell(j, m)) != "") { sum += cell(j, m); n++ }; break }
			return n ? sum / n : ""
		}
		function ratio(a, b) { return (a == "" || b == "" || b == 0) ? "-" : sprintf("%.2f", a / b) }
		function out(line) { if (fmt == "md") { gsub(/\|/, " | ", line); print "| " line " |" } else print line }
		NR == FNR { for (i = 1; i <= NF; i++) col[$i] = i; next }
		{ rows++; for (i = 1; i <= NF; i++) f[rows, i] = $i }
		END {
			hdr = "scenario|req/s|p50 ms|p90 ms|p99 ms|errors|mints|peak pg|logins/s|cpu us/req|pg us/req|rss MB|KB/conn|host cpu%|load|vs|x rps|x p50|x p99|x cpu"
			out(hdr)
			if (fmt == "md") { sep = "|"; m = split(hdr, h, "|"); for (i = 1; i <= m; i++) sep = sep "---|"; print sep }
			for (i = 1; i <= rows; i++) {
				sc = cell(i, "scenario"); vs = cell(i, "vs"); r = vs
				if (vs == "floor" && sc ~ /1000/) r = "floor-1000"
				if (vs == "floor" && sc ~ /^post/) r = "floor-post"
				if (vs == "-") r = ""
				rss = cell(i, "rss_kb"); conns = cell(i, "conns_end")
				kb = (conns + 0 > 0 && rss != "-") ? sprintf("%.0f", rss / conns) : "-"
				line = sc "|" cell(i, "rps") "|" ms(cell(i, "p50_us")) "|" ms(cell(i, "p90_us")) "|" ms(cell(i, "p99_us")) "|" \
					cell(i, "errors") "|" cell(i, "mints") "|" cell(i, "peak_pg") "|" cell(i, "logins_per_s") "|" \
					cell(i, "cpu_us_per_req") "|" cell(i, "pg_us_per_req") "|" (rss == "-" ? "-" : sprintf("%.1f", rss / 1024)) "|" kb "|" \
					cell(i, "host_busy_pct") "|" cell(i, "load1") "|" (r == "" ? "-" : r)
				if (r == "")
					line = line "|-|-|-|-"
				else
					line = line "|" ratio(num(cell(i, "rps")), ref(i, r, "rps")) "|" ratio(num(cell(i, "p50_us")), ref(i, r, "p50_us")) \
						"|" ratio(num(cell(i, "p99_us")), ref(i, r, "p99_us")) "|" ratio(num(cell(i, "cpu_us_per_req")), ref(i, r, "cpu_us_per_req"))
				out(line)
			}
		}
	' <(tr ' ' '\t' <<<"$RESULT_COLUMNS") "$RESULTS" |
		if [[ $fmt == md ]]; then cat; else column -t -s '|'; fi
}

print_notes() {
	local -a parts=()
	local f
	for f in "$BENCH_STATE"/mintlogin-{before,after}.out; do
		[[ -s $f ]] && parts+=("$f")
	done
	if ((${#parts[@]} > 0)); then
		echo
		# The mean of the measurements before and after cold-1000.
		awk -F= '{ v[$1] += $2; n[$1]++ } END {
			for (k in v) v[k] /= n[k]
			printf "first-request parts (100 users, sequential, mean of %d runs beside cold-1000): mint p50 %.2f ms p99 %.2f ms; TLS login p50 %.2f ms p99 %.2f ms; first statement on the new session p50 %.2f ms p99 %.2f ms\n",
				n["mint_p50_us"], v["mint_p50_us"] / 1000, v["mint_p99_us"] / 1000, v["login_p50_us"] / 1000, v["login_p99_us"] / 1000,
				v["stmt_p50_us"] / 1000, v["stmt_p99_us"] / 1000
			printf "cold-1000 p99 target (mint + login + 2 ms): %.2f ms with medians, %.2f ms with p99s\n",
				(v["mint_p50_us"] + v["login_p50_us"]) / 1000 + 2, (v["mint_p99_us"] + v["login_p99_us"]) / 1000 + 2
			printf "cold-1000 parts with the first statement (mint + login + statement): %.2f ms with medians, %.2f ms with p99s\n",
				(v["mint_p50_us"] + v["login_p50_us"] + v["stmt_p50_us"]) / 1000,
				(v["mint_p99_us"] + v["login_p99_us"] + v["stmt_p99_us"]) / 1000
		}' "${parts[@]}"
	fi
	if [[ -s $BENCH_STATE/mintlogin-rtt.out ]]; then
		awk -F= -v rtt="$RTT_US" -v row="$(awk -F '\t' '$1 == "cold-rtt" { print $6 " " $8 }' "$RESULTS")" '
			{ v[$1] = $2 } END {
			split(row, r, " ")
			printf "cold-rtt (PostgreSQL %.1f ms away): parts through the same proxy (100 users): mint p50 %.2f ms, TLS login p50 %.2f ms, first statement p50 %.2f ms; their sum %.2f ms; cold-rtt p50 %.2f ms, p99 %.2f ms\n",
				rtt / 1000, v["mint_p50_us"] / 1000, v["login_p50_us"] / 1000, v["stmt_p50_us"] / 1000,
				(v["mint_p50_us"] + v["login_p50_us"] + v["stmt_p50_us"]) / 1000, r[1] / 1000, r[2] / 1000
		}' "$BENCH_STATE/mintlogin-rtt.out"
	fi
	if [[ -s $BENCH_STATE/alternate-rtt.out ]]; then
		awk -F= -v rtt="$RTT_US" '{ v[$1] = $2 } END {
			printf "cold-rtt: warm SP requests alternating between statement timeouts: p50 %.2f ms of %d (one round trip: %.1f ms)\n",
				v["alt_p50_ms"], v["alt_n"], rtt / 1000
		}' "$BENCH_STATE/alternate-rtt.out"
	fi
	if [[ -s $BENCH_STATE/refresh-closes.out ]]; then
		awk -F= '{ v[$1] = $2 } END {
			printf "refresh: worker connections renewed %d, closed at their credential'"'"'s expiry %d, unused replacements closed %d (warm-up and run)\n",
				v["renewed"], v["expired_credential"], v["idle"]
		}' "$BENCH_STATE/refresh-closes.out"
	fi
	if [[ -s $PROFILE_DIR/instructions.txt ]]; then
		echo
		cat "$PROFILE_DIR/instructions.txt"
	fi
	echo
	echo "wrk -t$BENCH_WRK_THREADS -c$BENCH_CONNECTIONS, ${DURATION}s per scenario; worker/floor/ceiling threads $THREADS;" \
		"x rps/p50/p99/cpu: ratio to the mean of the nearest '<vs>' rows before and after (p50/p99/cpu: lower is better);" \
		"load: the host's 1-minute load average at the end of the row (2 cores; the machine is shared)"
	awk -F '\t' '$19 != "-" && $19 != "" { printf "%s: PostgreSQL PSS %s MB, worker RSS %.1f MB, %s connections open\n", $1, $19, $16 / 1024, $17 }' \
		"$RESULTS"
	echo "source: $SRC_REV; host load average (1, 5, 15 min) before: $LOAD_BEFORE, after: $LOAD_AFTER"
	echo "raw results: $RESULTS; profiles: $PROFILE_DIR"
}

# --- main ---------------------------------------------------------------------------------------

main() {
	preflight
	[[ -n $BUILD ]] && build
	[[ -x $BIN/floor && -x $BENCH_BUILD_DIR/src/lakebase-fcgi ]] || bench_die "nothing built in $BENCH_BUILD_DIR"
	LOAD_BEFORE=$(uptime | sed 's/.*load average: //')
	SRC_REV=$(git -C "$BENCH_SRC_DIR" rev-parse --short HEAD 2>/dev/null || echo "not a git tree")
	if [[ $SRC_REV != "not a git tree" && -n $(git -C "$BENCH_SRC_DIR" status --porcelain -- src 2>/dev/null) ]]; then
		SRC_REV+=" + uncommitted changes in src/"
	fi
	bench_log "source: $BENCH_SRC_DIR at $SRC_REV"
	bench_log "host before the run: $(uptime)"
	ps -eo pcpu,comm --sort=-pcpu | sed -n '2,6p' | tr -s ' ' | paste -sd ';' |
		sed 's/^/[bench] busiest processes (cpu%, since start): /' >&2

	trap cleanup EXIT
	trap 'exit 130' INT TERM
	STARTED_STACK=1
	if ! "$REPO/scripts/stack.sh" start 2>&1 | sed 's/^/    /' >&2; then
		bench_die "the stack did not start"
	fi
	# shellcheck source=/dev/null
	source "$STACK_DIR/env.sh"
	mkdir -p "$BENCH_STATE"
	: >"$RESULTS"
	# The notes are this run's only: no figure left from an earlier one.
	rm -f "$BENCH_STATE"/mintlogin*.out "$BENCH_STATE/alternate-rtt.out" "$BENCH_STATE/refresh-closes.out" "$PROFILE_DIR/instructions.txt"
	{ uptime; nproc; } >"$BENCH_STATE/host.txt"

	bench_log "bench users, rows, emulator config"
	bench_setup_db
	bench_emulator_config "$BENCH_STATE/emulator.json"
	emulator_stop
	emulator_start "$BENCH_STATE/emulator.json" 2>/dev/null || bench_die "emulator did not restart"
	bench_worker_config "$BENCH_STATE/worker.json"
	bench_worker_config "$BENCH_STATE/worker-b1100.json" '.max_connections = 1100'
	bench_worker_config "$BENCH_STATE/worker-userpool.json" ".user_pool.max = $THREADS"
	bench_worker_config "$BENCH_STATE/worker-w2.json" '.workers = 2'
	product_start "$BENCH_STATE/worker.json"

	bench_nginx_start ref "$REF_PORT" "$(ref_sock)" off
	bench_floor_password
	scenario_ceiling_http
	scenario_ceiling_db

	# One user: every product row between two floor rows.
	local U=BENCH_PATH=$USER_PATH W=$BENCH_STATE/worker.json P=$STACK_HTTP_PORT
	measure_floor floor
	if [[ -n $PROFILE ]] && want floor; then
		profile_perf floor "$(bench_pid floor)" "$REF_PORT" BENCH_USERS=1 BENCH_KIND=f "$U"
	fi
	product_scenario sp floor "$W" "$P" 1 BENCH_USERS=0 BENCH_PATH="$SP_PATH"
	measure_floor floor
	product_scenario user-1 floor "$W" "$P" 1 BENCH_USERS=1 "$U"
	if [[ -n $PROFILE ]] && want user-1; then
		profile_perf user-1 "$(worker_pid)" "$P" BENCH_USERS=1 "$U"
	fi
	measure_floor floor
	# Diagnostic: one user may use as many connections as there are threads
	# (user_pool.max, default 3), to separate the per-user cap from the rest.
	product_scenario "user-1-max$THREADS" floor "$BENCH_STATE/worker-userpool.json" "$P" 1 BENCH_USERS=1 "$U"
	measure_floor floor
	product_scenario user-10 floor "$W" "$P" 1 BENCH_USERS=10 "$U"
	measure_floor floor
	# As README's `--workers auto` deploys it on this 2-core host: a
	# supervisor and 2 worker processes sharing the socket and the
	# credential cache, each with its own pools, with half the threads each
	# (the same 16 in all as the other rows). One user has up to 3
	# connections in each worker.
	PRODUCT_THREADS=$((THREADS / 2)) product_scenario sp-w2 floor "$BENCH_STATE/worker-w2.json" "$P" 1 \
		BENCH_USERS=0 BENCH_PATH="$SP_PATH"
	PRODUCT_THREADS=$((THREADS / 2)) product_scenario user-1-w2 floor "$BENCH_STATE/worker-w2.json" "$P" 1 \
		BENCH_USERS=1 "$U"
	PRODUCT_THREADS=$((THREADS / 2)) product_scenario user-10-w2 floor "$BENCH_STATE/worker-w2.json" "$P" 1 \
		BENCH_USERS=10 "$U"
	measure_floor floor
	scenario_refresh
	measure_floor floor-post
	product_scenario post floor "$W" "$P" 1 BENCH_USERS=1 BENCH_PATH="$POST_PATH" BENCH_METHOD=POST \
		BENCH_BODY="$POST_BODY"
	measure_floor floor-post
	# Diagnostic, as user-1-max16: the INSERT without the per-user cap.
	product_scenario "post-max$THREADS" floor "$BENCH_STATE/worker-userpool.json" "$P" 1 BENCH_USERS=1 \
		BENCH_PATH="$POST_PATH" BENCH_METHOD=POST BENCH_BODY="$POST_BODY"
	if want post || want "post-max$THREADS"; then
		clear_posts
	fi
	measure_floor floor-post
	keep_conn_scenarios
	measure_floor floor
	bench_stop floor
	FLOOR_RUNNING=

	# 1000 users.
	measure_floor floor-1000
	product_scenario user-1000-b1100 floor "$BENCH_STATE/worker-b1100.json" "$P" prime BENCH_USERS=1000 "$U"
	measure_floor floor-1000
	product_scenario user-1000 floor "$W" "$P" prime1 BENCH_USERS=1000 "$U"
	# The same worker: its credentials for the 1000 users are cached.
	if want zipf-1000; then
		want user-1000 || product_start "$W"
		measure zipf-1000 floor "$(worker_pid)" "$BENCH_APP" "$P" "$(want user-1000 && echo 3 || echo prime1)" \
			BENCH_USERS=1000 BENCH_DIST=zipf BENCH_ZIPF_S=1.1 "$U"
	fi
	if [[ -n $PROFILE ]] && want user-1000; then
		profile_perf user-1000 "$(worker_pid)" "$P" BENCH_USERS=1000 "$U"
	fi
	scenario_mint_login before
	scenario_cold
	scenario_mint_login after
	scenario_cold_rtt

	if [[ -n $PROFILE ]] && want floor; then
		profile_callgrind floor
	fi
	if [[ -n $PROFILE ]] && want user-1; then
		profile_callgrind user-1
	fi
	if [[ -n $PROFILE ]] && want post; then
		profile_callgrind floor-post
		profile_callgrind post
		clear_posts
	fi

	LOAD_AFTER=$(uptime | sed 's/.*load average: //')
	echo
	print_table text
	print_table md >"$BENCH_STATE/results.md"
	print_notes
}

main "$@"
