#!/bin/sh
# SPDX-License-Identifier: MIT
# Runs every test binary in a directory (sorted), streams its output and
# ends with exactly one line "N passed, N failed, N skipped" (the totals).
# A binary that crashes, times out or prints no summary line counts as one
# failure. Exit status 0 only if nothing failed.
#
# usage: tests/run.sh BUILD_TESTS_DIR
# env:   UHMM_TEST_BINARY_TIMEOUT  seconds per binary (default 900)
#        UHMM_TEST_WRAPPER         command prefix, e.g. "valgrind -q"
#        UHMM_TEST_TIMEOUT_SCALE   passed through to the harness

set -u

if [ $# -ne 1 ] || [ ! -d "$1" ]; then
	echo "usage: $0 BUILD_TESTS_DIR" >&2
	exit 2
fi
dir=$1
limit=${UHMM_TEST_BINARY_TIMEOUT:-900}
wrapper=${UHMM_TEST_WRAPPER:-}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/uhmm-run.XXXXXX") || exit 2
pid=""
tpid=""
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null
	[ -n "$tpid" ] && kill "$tpid" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

passed=0
failed=0
skipped=0
nbin=0

for bin in $(find "$dir" -maxdepth 1 -type f -name 'test_*' -perm -u+x | LC_ALL=C sort); do
	name=$(basename "$bin")
	nbin=$((nbin + 1))
	echo "# ---- $name"
	# Output goes to a file (kept for parsing) and is streamed from there,
	# so a stray grandchild holding the output open cannot stall us the
	# way it would stall a pipe. -k: SIGKILL 10 s after SIGTERM.
	: >"$tmp/out"
	# shellcheck disable=SC2086 # $wrapper is a command prefix, split on purpose
	timeout -k 10 "$limit" $wrapper "$bin" >"$tmp/out" 2>&1 </dev/null &
	pid=$!
	tail -n +1 -s 0.1 -f --pid="$pid" "$tmp/out" &
	tpid=$!
	wait "$pid"
	rc=$?
	wait "$tpid"

	summary=$(grep -E "^# [^ ]+: [0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$" "$tmp/out" | tail -n 1)
	if [ -n "$summary" ]; then
		# shellcheck disable=SC2046 # three numbers, split on purpose
		set -- $(echo "$summary" | sed -E 's/^# [^ ]+: ([0-9]+) passed, ([0-9]+) failed, ([0-9]+) skipped$/\1 \2 \3/')
		p=$1 f=$2 s=$3
	else
		# No summary: count what it reported, plus one failure for it.
		p=$(grep -cE "^ok [0-9]+ " "$tmp/out" | head -n 1)
		s=$(grep -cE "^ok [0-9]+ .*# SKIP" "$tmp/out" | head -n 1)
		p=$((p - s))
		f=$(grep -cE "^not ok [0-9]+ " "$tmp/out" | head -n 1)
		f=$((f + 1))
	fi
	grep -E "^not ok [0-9]+ " "$tmp/out" | while IFS= read -r line; do
		printf '%s: %s\n' "$name" "$line"
	done >>"$tmp/failures"

	case $rc in
	0) why="" ;;
	124|137) why="timed out after ${limit} s" ;;
	*) if [ "$rc" -gt 128 ]; then
		why="killed by signal $((rc - 128))"
	   else
		why="exit status $rc"
	   fi ;;
	esac
	if [ -z "$summary" ]; then
		echo "# $name: no summary line (${why:-exit status 0}): counted as a failure"
		echo "$name: no summary line (${why:-exit status 0})" >>"$tmp/failures"
	elif [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		# It reported no failure but did not exit cleanly.
		f=1
		echo "# $name: $why after its summary: counted as a failure"
		echo "$name: $why after its summary" >>"$tmp/failures"
	fi
	pid=""
	tpid=""
	passed=$((passed + p))
	failed=$((failed + f))
	skipped=$((skipped + s))
done

if [ "$nbin" -eq 0 ]; then
	echo "# no test binaries in $dir" >&2
fi
if [ -s "$tmp/failures" ]; then
	echo "# failures:"
	sed 's/^/#   /' "$tmp/failures"
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
