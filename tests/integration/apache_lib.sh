# shellcheck shell=bash disable=SC2034 # variables are for the scripts that source this
# tests/integration/apache_lib.sh - the test stack's own Apache (Debian's
# apache2, mpm_event) in front of the worker, with one of the shipped
# sites in apache/: mod_fcgid (Apache starts the worker processes) or
# mod_proxy_fcgi (in front of the stack's socket). Source it after lib.sh.
#
# Like the rest of the stack: everything in the state dir, loopback only
# (LAKEBASE_APACHE_PORT, 18081), started in the background and stopped by
# the PID in its pidfile, never by name (the machine's own Apache, if any,
# is never touched). The environment is built from nothing (env -i), so
# the worker processes get exactly what the shipped site's FcgidInitialEnv
# lines give them.

APACHE_PORT=${LAKEBASE_APACHE_PORT:-18081}
APACHE_DIR=$STACK_DIR/apache
APACHE_CONF=$APACHE_DIR/httpd.conf
APACHE_PID=$STACK_DIR/apache.pid
APACHE_ERROR_LOG=$APACHE_DIR/error.log
APACHE_URL=http://127.0.0.1:$APACHE_PORT
# mod_fcgid's processes run as www-data: their config (it holds the
# service principal's secret) and credential cache are theirs.
APACHE_WORKER_CONFIG=$APACHE_DIR/worker.json
APACHE_CACHE_DIR=$APACHE_DIR/cache
APACHE_CACHE_FILE=$APACHE_CACHE_DIR/credentials.shm
APACHE_BIN=${LAKEBASE_APACHE_BIN:-/usr/sbin/apache2}
# mod_fcgid's processes tell PostgreSQL apart from the stack's worker.
APACHE_APPNAME=lakebase-fcgi-apache
APACHE_MODULES=/usr/lib/apache2/modules

# _apache_check_site FILE PATTERN...: each pattern must be in FILE, or the
# shipped site changed shape and the test would exercise something else.
_apache_check_site() {
	local file=$1 p
	shift
	for p in "$@"; do
		grep -qF -- "$p" "$file" || stack_die "$file: expected line not found after substitution: $p"
	done
}

# apache_site_fcgid OUT: apache/lakebase-fcgi-fcgid.conf with the test's
# address, binary and environment.
apache_site_fcgid() {
	local out=$1
	sed -e "s|<VirtualHost 127.0.0.1:8081>|<VirtualHost 127.0.0.1:$APACHE_PORT>|" \
		-e "s|FcgidWrapper /usr/sbin/lakebase-fcgi virtual|FcgidWrapper $STACK_WORKER_BIN virtual|" \
		-e "s|^FcgidInitialEnv LAKEBASE_FCGI_CONFIG .*|FcgidInitialEnv LAKEBASE_FCGI_CONFIG $APACHE_WORKER_CONFIG|" \
		-e "s|^FcgidInitialEnv DATABRICKS_HOST .*|FcgidInitialEnv DATABRICKS_HOST $STACK_EMU_URL|" \
		-e "s|^FcgidInitialEnv LAKEBASE_ENDPOINT .*|FcgidInitialEnv LAKEBASE_ENDPOINT $STACK_ENDPOINT|" \
		-e "s|^FcgidInitialEnv PGHOST .*|FcgidInitialEnv PGHOST localhost|" \
		-e "s|^FcgidInitialEnv PGPORT .*|FcgidInitialEnv PGPORT $STACK_PG_PORT|" \
		-e "s|^FcgidInitialEnv PGDATABASE .*|FcgidInitialEnv PGDATABASE $STACK_DATABASE|" \
		-e "s|^FcgidInitialEnv PGSSLROOTCERT .*|FcgidInitialEnv PGSSLROOTCERT $STACK_CA|" \
		-e "s|^FcgidInitialEnv LAKEBASE_CREDENTIAL_CACHE_PATH .*|FcgidInitialEnv LAKEBASE_CREDENTIAL_CACHE_PATH $APACHE_CACHE_FILE|" \
		-e "s|^FcgidInitialEnv PGAPPNAME .*|FcgidInitialEnv PGAPPNAME $APACHE_APPNAME|" \
		"$STACK_REPO/apache/lakebase-fcgi-fcgid.conf" >"$out"
	_apache_check_site "$out" "<VirtualHost 127.0.0.1:$APACHE_PORT>" "FcgidWrapper $STACK_WORKER_BIN virtual" \
		"FcgidInitialEnv LAKEBASE_FCGI_CONFIG $APACHE_WORKER_CONFIG" "FcgidInitialEnv DATABRICKS_HOST $STACK_EMU_URL" \
		"FcgidInitialEnv PGPORT $STACK_PG_PORT" "FcgidInitialEnv PGSSLROOTCERT $STACK_CA" \
		"FcgidInitialEnv LAKEBASE_CREDENTIAL_CACHE_PATH $APACHE_CACHE_FILE" \
		"FcgidInitialEnv PGAPPNAME $APACHE_APPNAME"
}

# apache_site_proxy OUT: apache/lakebase-fcgi-proxy.conf pointed at the
# stack's socket.
apache_site_proxy() {
	local out=$1
	sed -e "s|<VirtualHost 127.0.0.1:8081>|<VirtualHost 127.0.0.1:$APACHE_PORT>|" \
		-e "s|unix:/run/lakebase-fcgi/lakebase-fcgi.sock|unix:$STACK_FCGI_SOCK|" \
		"$STACK_REPO/apache/lakebase-fcgi-proxy.conf" >"$out"
	_apache_check_site "$out" "<VirtualHost 127.0.0.1:$APACHE_PORT>" "unix:$STACK_FCGI_SOCK|fcgi://"
}

# apache_worker_config: the stack's routes plus the service principal's
# id and secret, readable by www-data only (as the shipped site advises:
# secrets in the 0640 config file, not in Apache's configuration). The
# secret goes to jq from its file, never on a command line.
apache_worker_config() {
	(umask 027 && json_strip_comments "$STACK_WORKER_CONFIG" |
		jq --arg id "$STACK_SP_CLIENT_ID" --rawfile secret "$STACK_SECRETS/sp.secret" \
			'.workspace = { client_id: $id, client_secret: ($secret | rtrimstr("\n")) }' \
			>"$APACHE_WORKER_CONFIG.tmp") &&
		chgrp www-data "$APACHE_WORKER_CONFIG.tmp" && mv "$APACHE_WORKER_CONFIG.tmp" "$APACHE_WORKER_CONFIG"
}

# apache_config fcgid|proxy: the whole ServerRoot for one variant.
apache_config() {
	local variant=$1 site modules handler
	rm -rf "$APACHE_DIR"
	install -d -m 0755 "$APACHE_DIR" "$APACHE_DIR/run"
	install -d -m 0700 -o www-data -g www-data "$APACHE_DIR/fcgid" "$APACHE_CACHE_DIR"
	site=$APACHE_DIR/site.conf
	case $variant in
	fcgid)
		apache_site_fcgid "$site"
		modules="LoadModule fcgid_module $APACHE_MODULES/mod_fcgid.so"
		handler='SetHandler fcgid-script\n        Options +ExecCGI\n        FcgidWrapper '"$STACK_WORKER_BIN"' virtual'
		apache_worker_config
		;;
	proxy)
		apache_site_proxy "$site"
		modules="LoadModule proxy_module $APACHE_MODULES/mod_proxy.so\nLoadModule proxy_fcgi_module $APACHE_MODULES/mod_proxy_fcgi.so"
		handler='SetHandler "proxy:unix:'"$STACK_FCGI_SOCK"'|fcgi://lakebase-fcgi/"'
		;;
	*) stack_die "apache_config: unknown variant $variant" ;;
	esac
	# The "auth module" stand-in's users (apr1 hashes, as htpasswd writes).
	{
		printf 'alice:%s\n' "$(openssl passwd -apr1 alice-password)"
		printf 'bob:%s\n' "$(openssl passwd -apr1 bob-password)"
	} >"$APACHE_DIR/htpasswd"
	chmod 0644 "$APACHE_DIR/htpasswd"
	sed -e "s|@APACHE_DIR@|$APACHE_DIR|g" -e "s|@APACHE_PID@|$APACHE_PID|g" \
		-e "s|@APACHE_PORT@|$APACHE_PORT|g" -e "s|@SITE@|$site|g" \
		-e "s#@MODULES@#$modules#" -e "s#@HANDLER@#$handler#" \
		"$STACK_REPO/tests/stack/apache.conf.in" >"$APACHE_CONF"
}

# _apache ARGS...: apache2 with an environment of our own making. Debian's
# binary is normally run through apache2ctl, which sources
# /etc/apache2/envvars; these are the same variables, pointed at the
# state dir.
_apache() {
	env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C \
		APACHE_RUN_USER=www-data APACHE_RUN_GROUP=www-data \
		APACHE_PID_FILE="$APACHE_PID" APACHE_RUN_DIR="$APACHE_DIR/run" \
		APACHE_LOCK_DIR="$APACHE_DIR/run" APACHE_LOG_DIR="$APACHE_DIR" \
		"$APACHE_BIN" -d "$APACHE_DIR" -f "$APACHE_CONF" "$@"
}

# apache_start fcgid|proxy: a fresh Apache with that site; ready when
# /healthz answers 200 through it.
apache_start() {
	apache_stop
	port_in_use "$APACHE_PORT" && stack_die "127.0.0.1:$APACHE_PORT is in use (set LAKEBASE_APACHE_PORT)"
	apache_config "$1"
	_apache -t >"$APACHE_DIR/configtest.out" 2>&1 ||
		{ cat "$APACHE_DIR/configtest.out" >&2; stack_warn "apache2 -t failed"; return 1; }
	_apache -k start || { stack_warn "apache2 -k start failed"; return 1; }
	if ! wait_for "pidfile_alive '$APACHE_PID' && [[ \$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 '$APACHE_URL/healthz') == 200 ]]" 30; then
		stack_warn "Apache ($1) not serving /healthz; error log tail:"
		tail -n 20 "$APACHE_ERROR_LOG" >&2
		return 1
	fi
	stack_log "apache ($1) started (pid $(read_pid "$APACHE_PID")) on $APACHE_URL"
}

# apache_stop: by the PID in its pidfile (SIGTERM: Apache stops its
# children, and mod_fcgid its worker processes).
apache_stop() {
	stop_pid "$APACHE_PID" 20
}
