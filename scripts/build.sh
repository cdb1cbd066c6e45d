#!/usr/bin/env bash
# scripts/build.sh [--sanitizers] - build lakebase-fcgi out of tree.
#
#   build/       the normal (development, -Werror) build
#   build-asan/  with --sanitizers: AddressSanitizer + UBSan (--enable-sanitizers)
#
# Both are test builds: configured with --enable-test-hooks (inert unless a
# test sets their environment variables, e.g. LAKEBASE_TEST_HOLD_LOCK_MS).
# Release builds run ./configure without it (README, "Building").
#
# Out of tree so both builds coexist and the source tree stays clean (an
# in-tree configure would also make every out-of-tree configure refuse).
# Env: JOBS (make -j, default 2), CONFIGURE_ARGS (extra ./configure args).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[build] %s\n' "$*" >&2; }
die() { printf '[build] ERROR: %s\n' "$*" >&2; exit 1; }

# autogen.sh when configure is missing or older than its inputs.
need_autogen() {
	local f
	[[ -x $REPO/configure ]] || return 0
	for f in configure.ac Makefile.am; do
		[[ $REPO/$f -nt $REPO/configure ]] && return 0
	done
	return 1
}

# configure again when there is no Makefile yet or configure changed since
# (automake's own rebuild rules cover Makefile.am edits after that).
need_configure() {
	local dir=$1
	[[ -f $dir/Makefile && -f $dir/config.status ]] || return 0
	grep -q -e '--enable-test-hooks' "$dir/config.status" || return 0
	[[ $REPO/configure -nt $dir/config.status ]]
}

main() {
	local sanitizers=no dir
	case ${1:-} in
	"") ;;
	--sanitizers) sanitizers=yes ;;
	*) echo "usage: $0 [--sanitizers]" >&2; exit 2 ;;
	esac
	[[ ! -f $REPO/config.status ]] ||
		die "the source tree was configured in place; run 'make distclean' in $REPO first"
	if need_autogen; then
		log "running autogen.sh"
		"$REPO/autogen.sh"
	fi
	local -a args
	read -r -a args <<<"${CONFIGURE_ARGS:-}"
	args+=(--enable-test-hooks)
	if [[ $sanitizers == yes ]]; then
		dir=$REPO/build-asan
		args+=(--enable-sanitizers)
	else
		dir=$REPO/build
	fi
	mkdir -p "$dir"
	if need_configure "$dir"; then
		log "configuring in $dir"
		(cd "$dir" && "$REPO/configure" "${args[@]}")
	fi
	log "make -j${JOBS:-2} in $dir"
	make -C "$dir" -j"${JOBS:-2}"
}

main "$@"
