#!/bin/sh
# SPDX-License-Identifier: MIT
# Installs the Debian packages the build uses, if they are missing. Run by
# make once per build directory (a stamp file); safe to run by hand.
#
#   required: make, a C compiler, pkg-config (the install test)
#   optional: systemtap-sdt-dev (<sys/sdt.h>: USDT probes; without it the
#             probes compile to nothing)
#   --chaos:  the programs tests/chaos/run.sh runs (make chaos), and gdb
#             for the backtraces of a run that hangs
#
# As root on Debian/Ubuntu it runs apt-get install -y for what is missing;
# otherwise it prints the command. It never fails the build: a package it
# cannot install only costs the feature that needs it.
# usage: scripts/deps.sh [--chaos]
# env: UHMM_NO_DEPS=1 skips it.

set -u

[ "${UHMM_NO_DEPS:-0}" = 1 ] && exit 0
command -v dpkg >/dev/null 2>&1 || exit 0

pkgs="pkg-config systemtap-sdt-dev"
if [ "${1:-}" = --chaos ]; then
	pkgs="bash bc bzip2 coreutils diffutils gawk gdb git gzip jq make perl
	      python3 sqlite3 xz-utils zstd"
fi
missing=""
for p in $pkgs; do
	dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
	echo "deps.sh: missing Debian packages:$missing" >&2
	echo "deps.sh: install them with: sudo apt-get install -y$missing" >&2
	exit 0
fi

echo "deps.sh: installing$missing" >&2
# shellcheck disable=SC2086 # a list of package names, split on purpose
if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >/dev/null 2>&1; then
	# A fresh image may have no package lists yet.
	DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1
	# shellcheck disable=SC2086
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >/dev/null 2>&1 ||
		echo "deps.sh: could not install$missing (building without them)" >&2
fi
exit 0
