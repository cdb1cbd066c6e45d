# shellcheck shell=bash disable=SC2034 # variables are for the scripts that source this
# bench/lib.sh - building blocks of bench/run.sh: the bench stack's users
# and configs, extra nginx instances, the reference programs, and the
# measurements (wrk, pg_stat_activity sampling, /proc CPU and RSS).
#
# Sourced after tests/stack/lib.sh (with the bench's LAKEBASE_* overrides
# exported), so STACK_* point at the bench stack. Every process started
# here is stopped by its PID (pidfile under $BENCH_STATE).

BENCH_STATE=$STACK_DIR/bench             # configs, pidfiles, raw outputs
BENCH_DOMAIN=bench.example
BENCH_APP=lakebase-fcgi                  # the worker's PGAPPNAME
FLOOR_APP=lakebase-floor
CLK_TCK=$(getconf CLK_TCK)

bench_log() { printf '[bench] %s\n' "$*" >&2; }
bench_die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# --- users ---------------------------------------------------------------------

# Users are <kind><NNNN>@bench.example with workspace token tok-<kind><NNNN>
# (bench/wrk/load.lua and bench/seqload.c build the same names):
#   u0001..u1000  the product's warm scenarios (3 rows each, like all)
#   f0001..f1000  the floor's users: a static password, never minted, so
#                 the floor can run between the product's scenarios
#   c0001..c1000  cold-1000: never seen before that scenario
#   r0001..r0010  refresh: minted with the short lifetime only
#   m0001..m0100  the mint + login reference of cold-1000 (no worker use)
BENCH_KINDS=(u:1000 f:1000 c:1000 r:10 m:100)

# SQL VALUES list of every bench email, for one statement.
bench_emails_sql() {
	local k n
	for k in "${BENCH_KINDS[@]}"; do
		n=${k#*:}
		printf "SELECT format('%s%%s@%s', lpad(i::text, 4, '0')) AS email FROM generate_series(1, %d) i UNION ALL\n" \
			"${k%%:*}" "$BENCH_DOMAIN" "$n"
	done
	echo "SELECT NULL WHERE false"
}

# Roles, three rows per user, the indexes that make the SP and the RLS
# query equally cheap, the sampler's stop table, and a pgbench database.
bench_setup_db() {
	pg_admin_psql -q <<-EOF >/dev/null
	SET client_min_messages = warning;
	CREATE TEMP TABLE bench_emails AS $(bench_emails_sql);
	SELECT format('CREATE ROLE %I LOGIN', email) FROM bench_emails \gexec
	INSERT INTO app.todos (title, done, owner)
	  SELECT format('%s: row %s', split_part(email, '@', 1), j), j = 2, email
	    FROM bench_emails, generate_series(1, 3) j;
	-- ORDER BY title LIMIT n: an index walk for the SP (no filter); for a
	-- user, an index the RLS policy can use. The policy's owner =
	-- current_user compares text with name, whose collation is "C": the
	-- schema once indexed owner in the database collation, unusable for it;
	-- and every user query would scan the whole table.
	CREATE INDEX IF NOT EXISTS bench_todos_title ON app.todos (title);
	CREATE INDEX IF NOT EXISTS bench_todos_owner_c ON app.todos (owner COLLATE "C", title);
	ANALYZE app.todos;
	CREATE SCHEMA IF NOT EXISTS bench;
	CREATE TABLE IF NOT EXISTS bench.sampler_stop (id int PRIMARY KEY);
	EOF
	pg_admin_psql -q -c "CREATE DATABASE pgbench" >/dev/null
}

# The floor logs in as the f-users with one static password, stored and
# checked as the emulator's credentials are (an MD5 verifier, a plaintext
# password over TLS; scripts/stack.sh says why) and as long as one (~1.6 KB).
bench_floor_password() {
	FLOOR_PASSWORD=$(openssl rand -hex 800)
	pg_admin_psql -q -v pw="$FLOOR_PASSWORD" <<-'EOF' >/dev/null
	SET password_encryption = 'md5';
	SELECT format('ALTER ROLE %I PASSWORD %L VALID UNTIL %L',
	              format('f%s@bench.example', lpad(i::text, 4, '0')), :'pw', 'infinity')
	  FROM generate_series(1, 1000) i \gexec
	EOF
}

# The stack's emulator config plus every bench user and its token.
bench_emulator_config() {
	local out=$1 k
	for k in "${BENCH_KINDS[@]}"; do
		seq -f "${k%%:*}%04g" 1 "${k#*:}"
	done | jq -R --arg d "$BENCH_DOMAIN" '{email: (. + "@" + $d), tokens: ["tok-" + .]}' \
		>"$BENCH_STATE/emulator-users.json"
	(umask 077 && jq --slurpfile u "$BENCH_STATE/emulator-users.json" '.users += $u' \
		"$STACK_EMU_CONFIG" >"$out")
}

# The stack's worker config (comments stripped, as tests/integration/lib.sh
# does) with an SP route running the user route's exact SQL, plus jq FILTER.
bench_worker_config() {
	local out=$1 filter=${2:-.}
	perl -0777 -pe 's{("(?:\\.|[^"\\])*")|/\*.*?\*/|//[^\n]*}{defined $1 ? $1 : ""}gse' \
		"$STACK_REPO/tests/stack/worker.json" |
		jq '(.routes[] | select(.path == "/api/my/todos" and .method == "GET")) as $u
		    | .routes += [$u + {path: "/bench/todos", auth: "service-principal"}]' |
		jq "$filter" >"$out"
}

# --- processes -----------------------------------------------------------------

# bench_start NAME LOG CMD...: a reference program in the background,
# detached, its PID in $BENCH_STATE/NAME.pid (tests/stack/lib.sh start_bg).
bench_start() {
	local name=$1 log=$2
	shift 2
	start_bg "$name" "$BENCH_STATE/$name.pid" "$log" "$@" 2>/dev/null
}

bench_stop() {
	stop_pid "$BENCH_STATE/$1.pid" 10
}

bench_pid() {
	read_pid "$BENCH_STATE/$1.pid"
}

# bench_nginx_start NAME PORT SOCKET on|off [KEEPALIVE]: an nginx with the
# stack's nginx.conf and the shipped site, pointed at SOCKET on PORT; with
# "on", fastcgi_keep_conn on and `keepalive KEEPALIVE` (8) in the upstream.
bench_nginx_start() {
	local name=$1 port=$2 sock=$3 keep=$4 keepalive=${5:-8}
	local dir=$BENCH_STATE/nginx-$name site
	install -d -m 0755 "$dir"
	site=$dir/lakebase-fcgi.conf
	sed -e "s|@STATE@|$STACK_DIR|g" -e "s|@NGINX_DIR@|$dir|g" \
		-e "s|@ERROR_LOG@|$dir/error.log|g" -e "s|@ACCESS_LOG@|$dir/access.log|g" \
		"$STACK_REPO/tests/stack/nginx.conf.in" >"$dir/nginx.conf"
	sed -e "s|unix:/run/lakebase-fcgi/lakebase-fcgi.sock|unix:$sock|" \
		-e "s|listen 127.0.0.1:8080;|listen 127.0.0.1:$port;|" \
		-e "s|/etc/nginx/fastcgi_lakebase_params|$STACK_REPO/nginx/fastcgi_lakebase_params|" \
		"$STACK_REPO/nginx/lakebase-fcgi.conf" >"$site"
	if [[ $keep == on ]]; then
		sed -i -e 's|fastcgi_keep_conn off;|fastcgi_keep_conn on;|' \
			-e "s|# keepalive 8;|keepalive $keepalive;|" "$site"
		if ! grep -q 'fastcgi_keep_conn on;' "$site" || ! grep -q "^ *keepalive $keepalive;" "$site"; then
			bench_die "nginx/lakebase-fcgi.conf changed shape: cannot make the keep_conn variant"
		fi
	fi
	grep -q "unix:$sock" "$site" || bench_die "nginx/lakebase-fcgi.conf changed shape (socket line)"
	port_in_use "$port" && bench_die "127.0.0.1:$port is in use"
	/usr/sbin/nginx -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" \
		-g "pid $BENCH_STATE/nginx-$name.pid;" -q
	wait_for "pidfile_alive '$BENCH_STATE/nginx-$name.pid' && port_in_use $port" 10 ||
		bench_die "nginx $name did not start; see $dir/error.log"
}

# --- measurements --------------------------------------------------------------

# proc_tree_pids ROOT: ROOT and its descendants (a supervisor's workers).
# ps, not a scan of /proc/*/stat: processes come and go meanwhile.
proc_tree_pids() {
	ps -e -o pid=,ppid= | awk -v root="$1" '
		{ parent[$1] = $2 }
		END {
			if (!(root in parent)) exit
			keep[root] = 1; changed = 1
			while (changed) { changed = 0
				for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 } }
			for (p in keep) print p
		}'
}

# proc_tree_ticks ROOT: CPU clock ticks (user + system, reaped children
# included) of ROOT and its descendants.
proc_tree_ticks() {
	local pid total=0 s rest
	local -a f
	for pid in $(proc_tree_pids "$1"); do
		{ s=$(<"/proc/$pid/stat"); } 2>/dev/null || continue   # gone meanwhile
		rest=${s##*) }
		read -r -a f <<<"$rest"
		total=$((total + f[11] + f[12] + f[13] + f[14]))
	done
	echo "$total"
}

# proc_tree_rss_kb ROOT: summed VmRSS of ROOT and its descendants.
proc_tree_rss_kb() {
	local pid total=0 kb
	for pid in $(proc_tree_pids "$1"); do
		kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null) || continue
		total=$((total + ${kb:-0}))
	done
	echo "$total"
}

pg_root_pid() {
	read_pid "$STACK_PGDATA/postmaster.pid"
}

# pg_pss_mb: PostgreSQL's memory (proportional set size, so the shared
# buffers count once) over the postmaster and every backend.
pg_pss_mb() {
	local root pid total=0 kb
	root=$(read_pid "$STACK_PGDATA/postmaster.pid") || { echo 0; return; }
	for pid in $(proc_tree_pids "$root"); do
		kb=$(awk '/^Pss:/ { print $2 }' "/proc/$pid/smaps_rollup" 2>/dev/null) || continue
		total=$((total + ${kb:-0}))
	done
	echo $((total / 1024))
}

# host_busy_ticks: "busy total" jiffies of the whole host, from /proc/stat.
host_busy_ticks() {
	awk '/^cpu / { idle = $5 + $6; t = 0; for (i = 2; i <= 9; i++) t += $i; print t - idle, t; exit }' /proc/stat
}

emu_mints_total() {
	curl -sSf --max-time 5 "$STACK_EMU_URL/_emulator/counters" | jq -r '.mints_total'
}

emu_set_lifetime() {
	curl -sSf --max-time 5 -X POST -H 'Content-Type: application/json' \
		--data "{\"credential_lifetime_s\": $1}" "$STACK_EMU_URL/_emulator/config" >/dev/null
}

pg_conns_of() {
	pg_admin_psql -Atc "SELECT count(*) FROM pg_stat_activity WHERE application_name = '$1'"
}

# Logins of APP in the PostgreSQL log after byte offset MARK.
pg_logins_since() {
	tail -c +"$(($2 + 1))" "$STACK_PG_LOG" 2>/dev/null |
		grep -c "connection authorized: .*application_name=$1 " || true
}

file_size() {
	stat -c %s "$1" 2>/dev/null || echo 0
}

# sampler_start APP ID: one admin session samples the number of APP's
# connections in pg_stat_activity every 100 ms (its own transaction each,
# so each sample is fresh) until sampler_stop ID, at most 15 minutes.
# The peak lands in $BENCH_STATE/sampler-ID.out as "peak=N".
sampler_start() {
	local app=$1 id=$2
	( pg_admin_psql -q -v app="$app" -v id="$id" <<-'EOF' >"$BENCH_STATE/sampler-$id.out" 2>&1 &
	SET client_min_messages = notice;
	SELECT set_config('bench.app', :'app', false) AS app_set, set_config('bench.id', :'id', false) AS id_set \gset
	DO $$
	DECLARE
		peak int := 0;
		c int;
		app text := current_setting('bench.app');
		me int := current_setting('bench.id')::int;
	BEGIN
		FOR i IN 1..9000 LOOP
			SELECT count(*) INTO c FROM pg_stat_activity WHERE application_name = app;
			peak := greatest(peak, c);
			EXIT WHEN EXISTS (SELECT 1 FROM bench.sampler_stop WHERE id = me);
			COMMIT;
			PERFORM pg_sleep(0.1);
		END LOOP;
		RAISE NOTICE 'peak=%', peak;
	END $$;
	EOF
	echo $! >"$BENCH_STATE/sampler-$id.pid" )
}

# sampler_stop ID: stops the sampler, prints its peak.
sampler_stop() {
	local id=$1 pid
	pg_admin_psql -q -c "INSERT INTO bench.sampler_stop VALUES ($id)" >/dev/null
	pid=$(read_pid "$BENCH_STATE/sampler-$id.pid") || true
	[[ -n $pid ]] && wait_for "! kill -0 $pid" 10
	sed -n 's/.*peak=\([0-9]*\).*/\1/p' "$BENCH_STATE/sampler-$id.out" | tail -n 1
}

# --- wrk ---------------------------------------------------------------------------

# run_wrk PORT DURATION_S [KEY=VALUE...]: wrk with bench/wrk/load.lua and
# the given BENCH_* settings; prints the BENCHRESULT fields, one per line.
run_wrk() {
	local port=$1 dur=$2 out
	shift 2
	out=$(env BENCH_THREADS="$BENCH_WRK_THREADS" "$@" \
		timeout $((dur + 30)) wrk -t "$BENCH_WRK_THREADS" -c "$BENCH_CONNECTIONS" -d "${dur}s" \
		--timeout 10s -s "$BENCH_DIR/wrk/load.lua" "http://127.0.0.1:$port/" 2>&1) || true
	if ! grep -q '^BENCHRESULT ' <<<"$out"; then
		bench_log "wrk gave no result: ${out:0:400}"
		echo "requests=0"
		return
	fi
	grep '^BENCHRESULT ' <<<"$out" | tail -n 1 | tr ' ' '\n' | grep '='
}
