#!/usr/bin/env bash
# bench/https.sh - what an HTTPS call to the workspace costs the worker's
# libcurl: a new connection per call (a fresh easy handle) against a kept
# connection (one handle, reset between calls: what src/workspace.c does),
# each with the CA file a default deployment uses (the system bundle, which
# holds the workspace's public CA) and with one CA certificate.
#
#   bench/https.sh [--count N]      (default 50 calls per way)
#
# The bench stack's emulator speaks plain HTTP on loopback, so bench/run.sh
# cannot show this. Here nginx answers over TLS (a throwaway CA and an RSA
# 2048 certificate for localhost, as public sites use) with a body the size
# of a credential answer, on 127.0.0.1 only; it is stopped by its PID at the
# end. Prints one line per case; BENCHMARKS.md has the figures.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PORT=${BENCH_HTTPS_PORT:-18136}
COUNT=50
SYSTEM_BUNDLE=/etc/ssl/certs/ca-certificates.crt

while (($#)); do
	case $1 in
	--count) COUNT=$2; shift 2 ;;
	*) echo "usage: bench/https.sh [--count N]" >&2; exit 2 ;;
	esac
done

STATE=$(mktemp -d /tmp/lb-https.XXXXXX)
NGINX_PID=
cleanup() {
	[[ -n $NGINX_PID ]] && kill "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null
	rm -rf "$STATE"
}
trap cleanup EXIT

make -s -C "$REPO/bench" OUT="$STATE" "$STATE/httpscost" >/dev/null

openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=bench https CA" \
	-keyout "$STATE/ca.key" -out "$STATE/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
	-keyout "$STATE/server.key" -out "$STATE/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost\n' >"$STATE/san.ext"
openssl x509 -req -in "$STATE/server.csr" -CA "$STATE/ca.crt" -CAkey "$STATE/ca.key" \
	-CAcreateserial -days 1 -extfile "$STATE/san.ext" -out "$STATE/server.crt" 2>/dev/null
cat "$SYSTEM_BUNDLE" "$STATE/ca.crt" >"$STATE/bundle.crt"

# A credential answer's size: a ~1.6 KB token and its expiry.
TOKEN=$(head -c 1200 /dev/urandom | base64 -w 0)
mkdir -p "$STATE/logs"
cat >"$STATE/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $STATE/nginx.pid;
error_log $STATE/logs/error.log;
events { worker_connections 64; }
http {
	access_log off;
	server {
		listen 127.0.0.1:$PORT ssl;
		ssl_certificate $STATE/server.crt;
		ssl_certificate_key $STATE/server.key;
		keepalive_requests 100000;
		location / { return 200 '{"token": "$TOKEN", "expire_time": "2099-01-01T00:00:00Z"}'; }
	}
}
EOF
nginx -p "$STATE" -c "$STATE/nginx.conf" &
NGINX_PID=$!

URL=https://localhost:$PORT/api/2.0/postgres/credentials
for _ in $(seq 50); do
	curl -sf -o /dev/null --cacert "$STATE/ca.crt" -X POST "$URL" && break
	sleep 0.1 # nginx starting: polled, 5 s at most
done
curl -sf -o /dev/null --cacert "$STATE/ca.crt" -X POST "$URL" || { echo "nginx did not start" >&2; exit 1; }

echo "$(date -u '+%F %T') UTC, $(nproc) cores, $COUNT calls per way; $(curl --version | head -n 1 | cut -d ' ' -f 1-2,5)"
echo "CA file: the system bundle ($(grep -c 'BEGIN CERTIFICATE' "$STATE/bundle.crt") certificates)"
"$STATE/httpscost" --url "$URL" --cafile "$STATE/bundle.crt" --count "$COUNT"
echo "CA file: one certificate"
"$STATE/httpscost" --url "$URL" --cafile "$STATE/ca.crt" --count "$COUNT"
