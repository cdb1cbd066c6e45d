#!/usr/bin/env bash
# scripts/deps.sh - install the Debian 12 packages lakebase-fcgi needs to
# build, test and benchmark. Idempotent: when every package is already
# installed it touches nothing (no apt-get update). Run as root.
set -euo pipefail

PACKAGES=(
	# build
	build-essential autoconf automake libtool pkg-config
	libfcgi-dev libpq-dev libcurl4-openssl-dev libyajl-dev libssl-dev
	# unit tests; sanitizer runtime for clang-built ASan/UBSan runs
	libcunit1-dev libclang-rt-14-dev valgrind
	# the local stack: PostgreSQL 15 (initdb, pg_ctl, psql), nginx, TLS
	postgresql postgresql-contrib nginx-light openssl ca-certificates
	# integration tests: HTTP, JSON, a raw FastCGI client
	curl jq libfcgi-bin
	# Apache (mod_fcgid), spawn-fcgi and load generation (later issues)
	apache2 libapache2-mod-fcgid spawn-fcgi wrk
	# checking the systemd unit's sandbox against what the processes do
	systemd strace
)

missing_packages() {
	local p
	for p in "${PACKAGES[@]}"; do
		if [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) != installed ]]; then
			printf '%s\n' "$p"
		fi
	done
}

# Debian's postinst scripts start nginx, Apache and a PostgreSQL cluster on
# their public default ports. The stack runs its own private instances, so
# forbid service starts during our install (the standard policy-rc.d "exit
# 101"), unless the machine already has a policy of its own.
POLICY=/usr/sbin/policy-rc.d
block_service_starts() {
	[[ -e $POLICY ]] && return 0
	printf '#!/bin/sh\n# temporary, from lakebase-fcgi scripts/deps.sh\nexit 101\n' >"$POLICY"
	chmod 0755 "$POLICY"
	trap 'rm -f "$POLICY"' EXIT
}

main() {
	local -a missing
	mapfile -t missing < <(missing_packages)
	if [[ ${#missing[@]} == 0 ]]; then
		echo "[deps] all ${#PACKAGES[@]} packages already installed"
		return 0
	fi
	[[ $(id -u) == 0 ]] || { echo "[deps] run as root to install: ${missing[*]}" >&2; exit 1; }
	echo "[deps] installing: ${missing[*]}"
	block_service_starts
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends "${missing[@]}"
}

main "$@"
