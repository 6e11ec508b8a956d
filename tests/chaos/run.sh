#!/bin/bash
# SPDX-License-Identifier: MIT
# The chaos runner: real programs from Debian, run twice, plainly and with
# libuhmm-chaos.so preloaded (their memory moving to the dmirror devices
# and back all the time), their stdout and exit status (and stderr where
# it is deterministic) compared byte for byte. A run that does not end
# within the limit is a hang: the kernel stacks of every thread of its
# process tree are printed before it is killed. MODE=off (the preload
# loaded, nothing moving) and MODE=read (device reads only) are the
# controls: a failure there is the runner's or the preload's, not uhmm's.
#
# usage: tests/chaos/run.sh [--seeds N] [--first-seed K] [--timeout S]
#            [--budget S] [--mode migrate|read|off] [--lib PATH] [--keep DIR]
#            [--no-gdb] [--no-preload-uhmm] [--list] [PROGRAM-NAMES...]
# env:   UHMM_CHAOS_RATE, UHMM_CHAOS_OPS, UHMM_CHAOS_MAPS, UHMM_CHAOS_FORK
#        and UHMM_CHAOS_CLOSE are passed to the preload (tests/chaos/chaos.c).
#
# libuhmm.so.0 (beside the preload) is preloaded first, so that it comes
# before the C library in the symbol lookup order and its sigaction() and
# signal() interpose, as in a program linked with -luhmm (signal chaining,
# docs/semantics.md row 17). --no-preload-uhmm preloads only the chaos
# library, which then loads libuhmm.so after the C library.
#
# One line per run: PASS, FAIL or HANG, the program, the seed and why;
# then exactly one line "N passed, N failed, N skipped". Exit status 0
# only if nothing failed (a hang is a failure; the runs of a program that
# is not installed are skipped: scripts/deps.sh --chaos installs them).
# --budget S: no run starts after S seconds (those left are skipped, and
# said so), which bounds a CI step whatever hangs.

set -u

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
seeds=3
first=1
limit=60
budget=0
mode=migrate
lib=$root/build/libuhmm-chaos.so
keep=""
list=0
use_gdb=1
preload_uhmm=1

usage() {
	sed -n 's/^# \{0,1\}//; /^usage:/,/^$/p' "$0" | sed '/^$/d' >&2
	exit 2
}

while [ $# -gt 0 ]; do
	case $1 in
	--seeds) seeds=${2:?}; shift 2 ;;
	--seeds=*) seeds=${1#*=}; shift ;;
	--first-seed) first=${2:?}; shift 2 ;;
	--first-seed=*) first=${1#*=}; shift ;;
	--timeout) limit=${2:?}; shift 2 ;;
	--timeout=*) limit=${1#*=}; shift ;;
	--budget) budget=${2:?}; shift 2 ;;
	--budget=*) budget=${1#*=}; shift ;;
	--mode) mode=${2:?}; shift 2 ;;
	--mode=*) mode=${1#*=}; shift ;;
	--lib) lib=${2:?}; shift 2 ;;
	--lib=*) lib=${1#*=}; shift ;;
	--keep) keep=${2:?}; shift 2 ;;
	--keep=*) keep=${1#*=}; shift ;;
	--no-gdb) use_gdb=0; shift ;;
	--no-preload-uhmm) preload_uhmm=0; shift ;;
	--list) list=1; shift ;;
	-h|--help) usage ;;
	--) shift; break ;;
	-*) echo "run.sh: unknown option $1" >&2; usage ;;
	*) break ;;
	esac
done
case $mode in migrate|read|off) ;; *) echo "run.sh: bad --mode $mode" >&2; exit 2 ;; esac
case $seeds$first$limit$budget in *[!0-9]*) echo "run.sh: --seeds, --first-seed, --timeout and --budget take numbers" >&2; exit 2 ;; esac
case $lib in /*) ;; *) lib=$PWD/$lib ;; esac
command -v gdb >/dev/null 2>&1 || use_gdb=0

# ------------------------------------------------------------ workloads
# name | commands it needs | compare stderr (1) or not (0) | command line
# The command runs under bash -c in an empty directory ($PWD, the same
# path for both runs), with the inputs in $IN (read-only by convention).
workloads() {
	cat <<'EOF'
awk-report|gawk|1|gawk -F, 'NR > 1 { n[$2]++; s[$2] += $3; if ($3 > m[$2]) m[$2] = $3 } END { PROCINFO["sorted_in"] = "@ind_str_asc"; for (k in n) printf "%s %d %d %.3f %d\n", k, n[k], s[k], s[k] / n[k], m[k] }' "$IN/data.csv"
bash-fork|bash seq expr paste bc|1|bash "$IN/forks.sh"
bc-pi|bc|1|echo 'scale=500; 4*a(1)' | bc -l
bzip2|bzip2 sha256sum|1|bzip2 -9 -c "$IN/text.txt" >t.bz2 && sha256sum <t.bz2 && bzip2 -dc t.bz2 | sha256sum && bzip2 -c "$IN/big.txt" | bzip2 -dc | sha256sum
gzip|gzip sha256sum|1|gzip -9 -n -c "$IN/text.txt" >t.gz && sha256sum <t.gz && gzip -dc t.gz | sha256sum && gzip -1 -n -c "$IN/big.txt" | gzip -dc | sha256sum
coreutils|sort uniq tr wc cut head tail|1|cut -d, -f2 "$IN/data.csv" | sort | uniq -c | sort -k1,1n -k2,2; tr 'a-z' 'A-Z' <"$IN/text.txt" | tr -s ' ' '\n' | sort | uniq -c | sort -k1,1nr -k2,2 | head -20; wc "$IN/text.txt" "$IN/data.csv"; sort -n "$IN/nums.txt" | head -5; sort -rn "$IN/nums.txt" | tail -5; cut -c3-9 "$IN/text.txt" | sort -u | wc -l
git|git sha256sum|1|git init -q -b main repo && cd repo && cp -r "$IN/src/." . && git add -A && git commit -q -m first && for i in 1 2 3 4 5; do sed -i "s/$i/x$i/g" f0$i.c && git commit -q -am "change $i"; done && git log --format='%H %an %ad %s' && git diff HEAD~3 --stat && git diff HEAD~5 | sha256sum && git gc -q && git count-objects -v | grep -v size && git fsck --full 2>&1 && git log -p | sha256sum
jq|jq|1|jq -c '[.[] | select(.v % 3 == 0) | {k: .k, w: (.v * 2)}] | length, (map(.w) | add), .[0:3]' "$IN/data.json" && jq -S 'group_by(.g) | map({g: .[0].g, n: length, s: (map(.v) | add), t: (map(.k) | join("") | length)})' "$IN/data.json"
make|make awk seq sort head paste|1|make -s -j2 -f "$IN/Makefile" && cat all.txt
perl|perl|1|perl "$IN/prog.pl" "$IN/text.txt"
python3|python3|1|python3 "$IN/single.py" "$IN/text.txt"
python3-threads|python3|1|python3 "$IN/threads.py"
sort|sort sha256sum|1|sort -S 64M --parallel=2 "$IN/big.txt" | sha256sum && sort -S 2M -T . -t, -k2,2n -k1,1 "$IN/big.txt" | sha256sum && ls
sqlite3|sqlite3|1|sqlite3 :memory: <"$IN/q.sql"
xz|xz sha256sum|1|xz -T2 -1 --block-size=1MiB -c "$IN/big.txt" >b.xz && sha256sum <b.xz && xz -T2 -dc b.xz | sha256sum && xz -4 -c "$IN/text.txt" | xz -dc | sha256sum
zstd|zstd sha256sum|1|zstd -q -T2 -9 -c "$IN/big.txt" >b.zst && sha256sum <b.zst && zstd -q -T2 -dc b.zst | sha256sum && zstd -q --long=24 -T2 -c "$IN/text.txt" | zstd -q --long=24 -dc | sha256sum
diff|diff|1|diff -u --label a --label b "$IN/a.txt" "$IN/b.txt"; echo "diff: $?"; diff -q "$IN/a.txt" "$IN/a.txt" && diff -y -W 80 --suppress-common-lines "$IN/a.txt" "$IN/b.txt" | head -50
EOF
}

# The inputs, the same bytes on every run: a Park-Miller generator in awk
# (products below 2^53, so any awk computes them exactly).
make_inputs() {
	local in=$1
	mkdir -p "$in/src"
	awk -v out="$in" '
	function r(n) { x = (x * 16807) % 2147483647; return x % n }
	function word(   w, k) { w = ""; for (k = 0; k <= r(3); k++) w = w syl[r(24)]; return w }
	BEGIN {
		x = 12345
		split("ka lo mi ne su ta ri po an el ou ve zi ba co du fa ge hi ja mo nu pe qu", syl, " ")
		for (i = 0; i < 24; i++) syl[i] = syl[i + 1]
		f = out "/text.txt"
		for (l = 0; l < 40000; l++) {
			line = word()
			for (j = 0; j < 9; j++) line = line " " word()
			print line > f
		}
		f = out "/data.csv"
		print "id,key,val" > f
		for (l = 0; l < 100000; l++) printf "%d,%s,%d\n", l, syl[r(24)] syl[r(24)], r(100000) > f
		f = out "/nums.txt"
		for (l = 0; l < 100000; l++) print r(2000000) - 1000000 > f
		f = out "/big.txt"
		for (l = 0; l < 400000; l++) printf "%s %s,%d\n", word(), word(), r(1000000) > f
		f = out "/data.json"
		printf "[" > f
		for (l = 0; l < 20000; l++) printf "%s{\"k\":\"%s\",\"v\":%d,\"g\":%d}", (l ? "," : ""), word(), r(100000), r(17) > f
		print "]" > f
		fa = out "/a.txt"; fb = out "/b.txt"
		for (l = 0; l < 30000; l++) {
			line = word() " " l " " word()
			print line > fa
			if (l % 997 == 5) print "changed " line > fb
			else if (l % 1499 != 7) print line > fb
			if (l % 2003 == 11) print "added " word() > fb
		}
		for (n = 0; n < 20; n++) {
			f = sprintf("%s/src/f%02d.c", out, n)
			for (l = 0; l < 200; l++) printf "int f%d_%d(int a) { return a * %d + %d; }\n", n, l, r(100), r(10) > f
		}
	}'
	cat >"$in/forks.sh" <<'EOF'
t=0
for i in $(seq 1 200); do
	v=$( echo $((i * i % 97)) )
	t=$((t + v))
done
for i in $(seq 1 100); do
	( echo $((i * 7 % 13)) >"out.$i" ) &
done
wait
for i in $(seq 1 100); do
	read -r v <"out.$i"
	t=$((t + v))
done
s=$(seq 1 50 | while read -r x; do expr "$x" \* 2; done | paste -sd+ | bc)
echo "$t $s"
EOF
	# shellcheck disable=SC2016 # make's variables, not the shell's
	{
		printf 'N := 01 02 03 04 05 06 07 08 09 10 11 12 13 14 15 16 17 18 19 20\n'
		printf 'all.txt: $(N:%%=t%%.txt)\n\tcat $^ >$@\n'
		printf 't%%.txt:\n\tseq $* 7 60000 | awk '"'"'{ s += $$1 %% 1000 } END { print "$*", NR, s }'"'"' >$@.tmp\n'
		printf '\tseq 1 $*000 | sort -rn | head -3 | paste -sd, >>$@.tmp\n\tmv $@.tmp $@\n'
	} >"$in/Makefile"
	cat >"$in/prog.pl" <<'EOF'
use strict; use warnings;
my $n = 300000; my @p = (1) x $n; @p[0, 1] = (0, 0);
for (my $i = 2; $i * $i < $n; $i++) { next unless $p[$i]; for (my $j = $i * $i; $j < $n; $j += $i) { $p[$j] = 0 } }
my ($c, $s) = (0, 0); for my $i (0 .. $n - 1) { if ($p[$i]) { $c++; $s += $i } }
print "primes $c $s\n";
my %h; open(my $f, '<', $ARGV[0]) or die; while (<$f>) { for my $w (split) { $h{$w}++; $h{"len" . length $w}++ if $w =~ /^[aeiou]/ } } close $f;
my @top = (sort { $h{$b} <=> $h{$a} || $a cmp $b } keys %h)[0 .. 9];
print join(",", map { "$_=$h{$_}" } @top), "\n";
my $str = join("", map { chr(97 + ($_ * 7) % 26) } 1 .. 200000); (my $t = $str) =~ s/([aeiou])(.)/$2$1/g;
print length($t), " ", substr($t, 1000, 40), " ", scalar(() = $t =~ /ab/g), "\n";
EOF
	cat >"$in/single.py" <<'EOF'
import collections, hashlib, json, sys
words = open(sys.argv[1]).read().split()
c = collections.Counter(words)
print(c.most_common(10))
d = {i: (i * 7919) % 10007 for i in range(300000)}
print(sum(d.values()), len(d))
big = [str(i * i) for i in range(200000)]
print(hashlib.sha256(",".join(big).encode()).hexdigest())
print(json.dumps(sorted(c.items())[:20]))
srt = sorted(big, key=lambda s: (len(s), s[::-1]))
print(srt[:5], srt[-5:])
objs = [{"a": i, "b": [i] * (i % 7), "c": str(i) * 3} for i in range(50000)]
print(hashlib.sha256(json.dumps(objs, sort_keys=True).encode()).hexdigest())
EOF
	cat >"$in/threads.py" <<'EOF'
import hashlib, queue, threading
lock = threading.Lock()
total = [0]
results = {}
q = queue.Queue()
def work(k):
    local = []
    for i in range(60000):
        with lock:
            total[0] += i % 7
        if i % 500 == 0:
            local.append((i * k) % 1009)
            q.put(i + k)
    h = hashlib.sha256(repr(local).encode()).hexdigest()
    with lock:
        results[k] = h
ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
for t in ts: t.start()
for t in ts: t.join()
s = 0
while not q.empty(): s += q.get()
print(total[0], s)
for k in sorted(results): print(k, results[k])
EOF
	cat >"$in/q.sql" <<'EOF'
CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, v INTEGER);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000)
INSERT INTO t SELECT x, 'k' || (x * 7919 % 1000), x * 31 % 10007 FROM c;
CREATE INDEX tk ON t(k);
SELECT count(*), sum(v) FROM t;
SELECT k, count(*), sum(v), round(avg(v), 3) FROM t GROUP BY k ORDER BY sum(v) DESC, k LIMIT 10;
CREATE TABLE u AS SELECT k, max(v) AS m FROM t GROUP BY k;
SELECT count(*) FROM t JOIN u ON t.k = u.k AND t.v = u.m;
UPDATE t SET v = v + 1 WHERE id % 3 = 0;
DELETE FROM t WHERE id % 5 = 0;
SELECT count(*), sum(v), total(length(k)) FROM t;
SELECT group_concat(id) FROM (SELECT id FROM t ORDER BY v DESC, id LIMIT 20);
SELECT k, sum(v) OVER (PARTITION BY k ORDER BY id) FROM t WHERE id < 40 ORDER BY id;
EOF
}

# ------------------------------------------------------------- running

tmp=$(mktemp -d "${TMPDIR:-/tmp}/uhmm-chaos.XXXXXX") || exit 2
IN=$tmp/in
RUN=$tmp/run
pid=""
cleanup() {
	[ -n "$pid" ] && kill -KILL -- "-$pid" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The process tree of session $1: its members and their descendants.
tree_pids() {
	local sid=$1 p st rest
	local -A in_tree=()
	local changed=1
	for p in /proc/[0-9]*; do
		read -r st 2>/dev/null <"$p/stat" || continue
		rest=${st##*) }
		# shellcheck disable=SC2086 # the fields, split on purpose
		set -- $rest
		# $1 state, $2 ppid, $3 pgrp, $4 session
		if [ "$4" = "$sid" ] || [ "${p#/proc/}" = "$sid" ]; then
			in_tree[${p#/proc/}]=1
		fi
	done
	while [ $changed = 1 ]; do
		changed=0
		for p in /proc/[0-9]*; do
			[ -n "${in_tree[${p#/proc/}]:-}" ] && continue
			read -r st 2>/dev/null <"$p/stat" || continue
			rest=${st##*) }
			# shellcheck disable=SC2086
			set -- $rest
			if [ -n "${in_tree[$2]:-}" ]; then
				in_tree[${p#/proc/}]=1
				changed=1
			fi
		done
	done
	printf '%s\n' "${!in_tree[@]}" | sort -n
}

# The mapping of address $2 in process $1: FILE+OFFSET (the offset in
# the file, what addr2line and objdump take), or [KIND]+OFFSET.
where() {
	awk -v a="$2" '
	function hex(s,   i, c, v) {
		v = 0; s = tolower(s); sub(/^0x/, "", s)
		for (i = 1; i <= length(s); i++) { c = index("0123456789abcdef", substr(s, i, 1)); if (!c) return -1; v = v * 16 + c - 1 }
		return v
	}
	BEGIN { x = hex(a); if (x < 0) exit }
	{ split($1, r, "-"); lo = hex(r[1]); hi = hex(r[2])
	  if (x >= lo && x < hi) { n = ($6 == "") ? "[anon]" : $6; printf "%s+0x%x", n, x - lo + hex($3); found = 1; exit } }
	END { if (x >= 0 && !found) printf "unmapped" }' "/proc/$1/maps" 2>/dev/null
}

# Every thread of every process of the tree: state, wchan, the kernel
# stack and the user pc and stack pointer (/proc/PID/task/TID/syscall:
# number or -1 in a fault, then the stack pointer and pc last, each
# placed in its mapping); then gdb's backtraces of the processes that
# loaded the preload, if gdb is there. Their maps go to the file $2.
dump_tree() {
	local sid=$1 p t st sc n
	local -a f
	for p in $(tree_pids "$sid"); do
		[ -d "/proc/$p" ] || continue
		echo "process $p: $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-200)"
		if [ -n "${2:-}" ] && grep -q libuhmm "/proc/$p/maps" 2>/dev/null; then
			{ echo "== process $p"; cat "/proc/$p/maps"; } >>"$2" 2>/dev/null
		fi
		for t in "/proc/$p"/task/*; do
			read -r st 2>/dev/null <"$t/stat" || continue
			st=${st##*) }
			sc=$(cat "$t/syscall" 2>/dev/null)
			echo "  thread ${t##*/} ($(cat "$t/comm" 2>/dev/null)) state ${st%% *} wchan $(cat "$t/wchan" 2>/dev/null) syscall: $sc"
			read -ra f <<<"$sc"
			n=${#f[@]}
			[ "$n" -ge 3 ] &&
				echo "    pc $(where "$p" "${f[n - 1]}") sp $(where "$p" "${f[n - 2]}")"
			sed 's/^/    /' "$t/stack" 2>/dev/null
		done
	done
	[ $use_gdb = 1 ] || return 0
	local n=0
	for p in $(tree_pids "$sid"); do
		grep -q libuhmm-chaos "/proc/$p/maps" 2>/dev/null || continue
		n=$((n + 1))
		[ $n -le 3 ] || { echo "(gdb: only the first 3 processes)"; break; }
		echo "gdb backtraces of $p ($(cat "/proc/$p/comm" 2>/dev/null)):"
		# KILL: gdb stops every thread, uhmm's readers too, and then
		# waits for ever for a thread in an uninterruptible fault.
		timeout -s KILL 20 gdb -p "$p" -batch -nx -ex 'set pagination off' \
			-ex 'thread apply all bt 25' 2>&1 |
			grep -E '^(Thread|#)' | sed 's/^/    /'
	done
}

# CPU time used so far by every thread of the tree, and the processes,
# but for the threads named uhmm-chaos (the preload's and uhmm's own, which
# inherit its name): in a parent still waiting (bash, make) those keep
# moving its memory, and a program that is stuck for good would look busy.
tree_ticks() {
	local p t st
	for p in $(tree_pids "$1"); do
		for t in "/proc/$p"/task/*; do
			[ "$(cat "$t/comm" 2>/dev/null)" = uhmm-chaos ] && continue
			read -r st 2>/dev/null <"$t/stat" || continue
			st=${st##*) }
			# shellcheck disable=SC2086
			set -- $st
			# $12 utime, $13 stime
			echo "${t#/proc/} $(( ${12} + ${13} ))"
		done
	done
}

# run_one NAME OUTDIR PRELOAD COMMAND: runs it, sets rc, secs and hung
# (0; 1: stuck, no thread of the program used CPU for 3 s; 2: still busy
# at the limit).
run_one() {
	local dir=$2 preload=$3 cmd=$4 t0 t1 st now deadline
	local -a envs=(PATH=/usr/bin:/bin:/usr/sbin:/sbin
		HOME="$RUN" LC_ALL=C TZ=UTC IN="$IN" PYTHONHASHSEED=0
		PYTHONDONTWRITEBYTECODE=1 GIT_CONFIG_NOSYSTEM=1
		GIT_AUTHOR_NAME=chaos GIT_AUTHOR_EMAIL=chaos@example.org
		GIT_AUTHOR_DATE=2024-01-01T00:00:00Z GIT_COMMITTER_NAME=chaos
		GIT_COMMITTER_EMAIL=chaos@example.org
		GIT_COMMITTER_DATE=2024-01-01T00:00:00Z)
	if [ -n "$preload" ]; then
		envs+=(LD_PRELOAD="$preload" UHMM_CHAOS_MODE="$mode"
			UHMM_CHAOS_SEED="$seed" UHMM_CHAOS_LOG="$dir/chaos.log")
		for v in UHMM_CHAOS_RATE UHMM_CHAOS_OPS UHMM_CHAOS_MAPS \
			UHMM_CHAOS_FORK UHMM_CHAOS_CLOSE UHMM_CHAOS_DEVICES UHMM_CHAOS_TRACE; do
			[ -n "${!v:-}" ] && envs+=("$v=${!v}")
		done
	fi
	rm -rf "$RUN"
	mkdir -p "$RUN" "$dir"
	: >"$dir/chaos.log"
	t0=$(date +%s%N)
	# setsid: the run is a session of its own, so that the whole tree can
	# be found and killed; timeout is the backstop if this shell's own
	# watch below should fail.
	(cd "$RUN" && exec setsid timeout -k 10 $((limit + 60)) \
		env -i "${envs[@]}" bash -c "$cmd") \
		>"$dir/out" 2>"$dir/err" </dev/null &
	pid=$!
	hung=0
	deadline=$((t0 + limit * 1000000000))
	while :; do
		read -r st 2>/dev/null <"/proc/$pid/stat" || break
		st=${st##*) }
		[ "${st%% *}" = Z ] && break
		now=$(date +%s%N)
		if [ "$now" -ge "$deadline" ]; then
			local before after
			before=$(tree_ticks "$pid")
			sleep 3
			# It ended in those 3 s: late, not hung.
			read -r st 2>/dev/null <"/proc/$pid/stat" || break
			st=${st##*) }
			[ "${st%% *}" = Z ] && break
			after=$(tree_ticks "$pid")
			hung=1
			[ "$before" = "$after" ] || hung=2
			dump_tree "$pid" "$dir/maps" >"$dir/stacks" 2>&1
			kill -KILL -- "-$pid" 2>/dev/null
			for p in $(tree_pids "$pid"); do kill -KILL "$p" 2>/dev/null; done
			break
		fi
		sleep 0.05
	done
	# (2>/dev/null: the shell's own "Segmentation fault" note; the
	# status says it)
	wait "$pid" 2>/dev/null
	rc=$?
	pid=""
	t1=$(date +%s%N)
	secs=$(( (t1 - t0) / 10000000 ))
	secs="$((secs / 100)).$(printf %02d $((secs % 100)))"
}

# What the chaos log says: processes that reported, commands run, and
# processes that started and never reported (killed or crashed: their
# start lines name them).
log_stats() {
	awk '$1 == "uhmm-chaos-start" { started[$2] = 1; next }
		$1 == "uhmm-chaos" { n++; done[$2] = 1
			for (i = 1; i <= NF; i++) if ($i ~ /^ops=/) { sub(/^ops=/, "", $i); ops += $i } }
		END { for (p in started) if (!(p in done)) lost++
			printf "procs=%d ops=%d", n, ops
			if (lost) printf " unreported=%d", lost }' "$1"
}

# Show the first lines of a difference, indented.
show_diff() {
	if cmp -s "$1" "$2"; then
		return
	fi
	if grep -qI . "$1" 2>/dev/null && grep -qI . "$2" 2>/dev/null || [ ! -s "$1" ] || [ ! -s "$2" ]; then
		diff -a -u --label "plain $3" --label "chaos $3" "$1" "$2" | head -40 | sed 's/^/#   /'
	else
		echo "#   $(cmp "$1" "$2" 2>&1)"
	fi
}

declare -a names=() needs=() errcmp=() cmds=()
while IFS='|' read -r n d e c; do
	[ -n "$n" ] || continue
	names+=("$n"); needs+=("$d"); errcmp+=("$e"); cmds+=("$c")
done < <(workloads)

missing_of() {
	local m="" x
	for x in $1; do
		command -v "$x" >/dev/null 2>&1 || m="$m $x"
	done
	echo "${m# }"
}

if [ $list = 1 ]; then
	for i in "${!names[@]}"; do
		m=$(missing_of "${needs[$i]}")
		printf '%-16s %s\n' "${names[$i]}" "${m:+(not installed: $m)}"
	done
	exit 0
fi

# Which workloads: all, or those named.
declare -a pick=()
if [ $# -gt 0 ]; then
	for want in "$@"; do
		found=0
		for i in "${!names[@]}"; do
			[ "${names[$i]}" = "$want" ] && { pick+=("$i"); found=1; }
		done
		[ $found = 1 ] || { echo "run.sh: no workload '$want' (--list)" >&2; exit 2; }
	done
else
	pick=("${!names[@]}")
fi

if [ ! -f "$lib" ]; then
	echo "run.sh: $lib not found (make $lib)" >&2
	exit 2
fi
preload=$lib
if [ $preload_uhmm = 1 ]; then
	preload="$(dirname "$lib")/libuhmm.so.0:$lib"
	[ -f "$(dirname "$lib")/libuhmm.so.0" ] ||
		{ echo "run.sh: no libuhmm.so.0 beside $lib" >&2; exit 2; }
fi
# Python, perl, etc. from Debian, not whatever the caller's PATH has first.
export PATH=/usr/bin:/bin:/usr/sbin:/sbin

make_inputs "$IN"
# Failed runs' files stay in $results (all runs' with --keep).
if [ -n "$keep" ]; then
	results=$keep
	mkdir -p "$results" || exit 2
else
	results=$(mktemp -d "${TMPDIR:-/tmp}/uhmm-chaos-results.XXXXXX") || exit 2
fi
passed=0
failed=0
skipped=0
over=0
t_start=$(date +%s)
echo "# chaos: mode $mode, seeds $first..$((first + seeds - 1)), limit ${limit} s a run$([ "$budget" = 0 ] || echo ", no run started after $budget s"), LD_PRELOAD=$preload"

for i in "${pick[@]}"; do
	name=${names[$i]}
	m=$(missing_of "${needs[$i]}")
	if [ -n "$m" ]; then
		echo "SKIP $name: not installed: $m (scripts/deps.sh --chaos)"
		skipped=$((skipped + seeds))
		continue
	fi
	for seed in $(seq "$first" $((first + seeds - 1))); do
		if [ "$budget" != 0 ] && [ $(( $(date +%s) - t_start )) -ge "$budget" ]; then
			over=$((over + 1))
			continue
		fi
		d=$results/$name.$seed
		run_one "$name" "$d/plain" "" "${cmds[$i]}"
		prc=$rc phung=$hung psecs=$secs
		run_one "$name" "$d/chaos" "$preload" "${cmds[$i]}"
		crc=$rc chung=$hung csecs=$secs
		stats=$(log_stats "$d/chaos/chaos.log")
		tag="$name seed=$seed mode=$mode plain=${psecs}s chaos=${csecs}s $stats"
		why=""
		if [ $phung != 0 ]; then
			why="the plain run did not end in $limit s (the runner's fault)"
		elif [ $chung = 1 ]; then
			why="no exit after $limit s, no thread of the program used CPU for 3 s"
		elif [ $chung = 2 ]; then
			why="still running after $limit s (busy: slow, or a livelock)"
		elif [ "$prc" != "$crc" ]; then
			why="exit status $prc plain, $crc under chaos"
		elif ! cmp -s "$d/plain/out" "$d/chaos/out"; then
			why="stdout differs"
		elif [ "${errcmp[$i]}" = 1 ] && ! cmp -s "$d/plain/err" "$d/chaos/err"; then
			why="stderr differs"
		fi
		if [ -z "$why" ]; then
			echo "PASS $tag"
			passed=$((passed + 1))
			[ -n "$keep" ] || rm -rf "$d"
			continue
		fi
		failed=$((failed + 1))
		if [ $phung != 0 ] || [ $chung != 0 ]; then
			echo "HANG $tag: $why"
			sed 's/^/#   /' "$d/$([ $phung != 0 ] && echo plain || echo chaos)/stacks"
		else
			echo "FAIL $tag: $why"
			show_diff "$d/plain/out" "$d/chaos/out" stdout
			[ "${errcmp[$i]}" = 1 ] || [ "$prc" != "$crc" ] &&
				show_diff "$d/plain/err" "$d/chaos/err" stderr
		fi
		echo "#   files: $d"
	done
done

[ $over = 0 ] || echo "SKIP $over runs: not started, the budget of $budget s was spent"
skipped=$((skipped + over))
echo "# $(( $(date +%s) - t_start )) s"
[ -z "$keep" ] && [ $failed = 0 ] && rm -rf "$results"
echo "$passed passed, $failed failed, $skipped skipped"
[ $failed = 0 ]
