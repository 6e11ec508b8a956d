#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The layer check (make check-layers; docs/layout.md): every reference
# between the files of src/ goes down the table src/LAYERS, and dmirror/
# and cli/ use only the public API.
#
#   scripts/check-layers.sh [BUILD]         check the objects in BUILD/obj/
#                                           (BUILD defaults to build)
#   scripts/check-layers.sh --selftest      prove the checker can fail
#   options: --table FILE (default src/LAYERS), --root DIR (the tree to
#            check; default the directory above this script's)
#   env:     NM (default nm); CC (default cc, the selftest's compiler)
#
# The table: one line per file of src/, "LAYER FILE" ("0 os.c",
# "1 rt.h"), "#" starts a comment. Layers do not decrease down the table,
# and the order of the lines is the allowed order of calls:
#
#   - src/A.c may reference (call, or use the data of) only the .c files
#     listed before it. The references are read from the compiled objects:
#     what `nm -u` of BUILD/obj/src/A.o lists and `nm -g --defined-only`
#     of another src/ object defines. A reference is named by the file
#     that makes it, whether its source line is in A.c or in an inline
#     function of a header.
#   - a header of src/ may include only headers of src/ listed before it;
#     a .c file only headers of src/ of its own layer or lower.
#   - every src/*.c is in the table; every file in the table exists; every
#     header of src/ that something includes is in the table.
#   - the .c and .h files of dmirror/ and cli/ include no header of src/
#     (what an #include finds there with the build's -Iinclude -Isrc),
#     and a dmirror object references no symbol of a src/ object but the
#     public API: a uhmm_* name (not uhmm__*) declared in
#     include/uhmm/*.h. (cli/ objects are not built by `make libs`; their
#     includes are checked.)
#
# Symbols defined outside src/ (libc, dmirror/) are not references. The
# objects must be built (make libs) and newer than their sources.
#
# Exit status 0 with one line, "check-layers: N files, M references, all
# down" (N: the files whose references were checked; M: the symbol
# references into src/ objects plus the #include lines naming a header of
# src/), or 1 with every violation listed, one a line. 2: usage error.

set -uo pipefail

prog=check-layers
self=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/$(basename "${BASH_SOURCE[0]}")
NM=${NM:-nm}

usage() {
	sed -n "3,13s/^# \{0,1\}//p" "$self" >&2
	exit 2
}

# --help: the whole comment at the top.
help() {
	sed -n "3,/^[^#]/{/^#/s/^# \{0,1\}//p}" "$self"
	exit 0
}

# ---------------------------------------------------------------- selftest

# Builds tiny trees in a temporary directory, runs this script on them and
# checks what it says: each violation it must find, and a clean tree.
selftest() {
	local cc=${CC:-cc} t n=0 bad=0
	t=$(mktemp -d "${TMPDIR:-/tmp}/check-layers.XXXXXX") || exit 2
	trap 'rm -rf "$t"' EXIT
	mkdir -p "$t/src" "$t/dmirror" "$t/cli" "$t/include/uhmm" \
		"$t/build/obj/src" "$t/build/obj/dmirror"
	cat >"$t/src/b.c" <<-'EOF'
		int b_func(void);
		int b_func(void) { return 1; }
	EOF
	cat >"$t/src/a.c" <<-'EOF'
		int b_func(void);
		int a_func(void);
		int a_func(void) { return b_func() + 1; }
	EOF
	# The include case: a layer-0 header and a layer-0 .c file, each
	# including the layer-1 header.
	printf '#include "h1.h"\n' >"$t/src/h0.h"
	printf 'int h1;\n' >"$t/src/h1.h"
	printf '#include "h1.h"\nint b_func(void);\nint a_func(void);\nint a_func(void) { return b_func() + 1; }\n' \
		>"$t/src/a_inc.c"
	# The dmirror case: one public call, one internal call, one src/
	# header.
	printf 'int uhmm_pub(void);\n' >"$t/include/uhmm/uhmm.h"
	printf 'int uhmm_pub(void);\nint uhmm_pub(void) { return 2; }\n' \
		>"$t/src/p.c"
	cat >"$t/dmirror/d.c" <<-'EOF'
		#include "h0.h"
		int uhmm_pub(void);
		int a_func(void);
		int d_func(void);
		int d_func(void) { return uhmm_pub() + a_func(); }
	EOF
	local f
	for f in a b p a_inc; do
		$cc -I"$t/include" -I"$t/src" -c -o "$t/build/obj/src/$f.o" "$t/src/$f.c" ||
			{ echo "$prog: selftest: $cc cannot build src/$f.c" >&2; exit 1; }
	done
	$cc -I"$t/include" -I"$t/src" -c -o "$t/build/obj/dmirror/d.o" "$t/dmirror/d.c" ||
		{ echo "$prog: selftest: $cc cannot build dmirror/d.c" >&2; exit 1; }
	mv "$t/src/a_inc.c" "$t/a_inc.c"
	mv "$t/build/obj/src/a_inc.o" "$t/a_inc.o"
	mv "$t/dmirror/d.c" "$t/d.c"
	printf '#include "h1.h"\n' >"$t/d.h"

	# case NAME WANT_RC WANT_LINE... : runs the check with the table in
	# $t/LAYERS, wants the exit status and each line in its output.
	case_() {
		local name=$1 want=$2 out rc line miss=
		shift 2
		n=$((n + 1))
		out=$(bash "$self" --root "$t" --table "$t/LAYERS" "$t/build" 2>&1)
		rc=$?
		for line in "$@"; do
			printf '%s\n' "$out" | grep -qxF -- "$line" || miss="$miss
    missing: $line"
		done
		if [ "$rc" = "$want" ] && [ -z "$miss" ]; then
			echo "$prog: selftest $n: $name: exit $rc, as it should"
		else
			echo "$prog: selftest $n: $name: FAILED: exit $rc, want $want$miss"
			bad=$((bad + 1))
		fi
		printf '%s\n' "$out" | sed 's/^/    | /'
	}

	printf '0 a.c\n0 b.c\n0 p.c\n' >"$t/LAYERS"
	case_ "a.c calls b.c, listed after it" 1 \
		"$prog: src/a.c (layer 0) references b_func of src/b.c (layer 0): a call up or across the order"

	printf '0 b.c\n0 a.c\n0 p.c\n' >"$t/LAYERS"
	case_ "the order swapped" 0 \
		"$prog: 3 files, 1 references, all down"

	printf '1 b.c\n0 a.c\n0 p.c\n' >"$t/LAYERS"
	case_ "a layer that decreases" 1 \
		"$prog: LAYERS:2: a.c has layer 0, below layer 1 of b.c above it: layers must not decrease down the table"

	mv "$t/a_inc.c" "$t/src/a.c"
	mv "$t/a_inc.o" "$t/build/obj/src/a.o"
	touch "$t/build/obj/src/a.o"
	printf '0 b.c\n0 h0.h\n0 a.c\n0 p.c\n1 h1.h\n' >"$t/LAYERS"
	case_ "includes from above" 1 \
		"$prog: src/h0.h:1 (layer 0) includes src/h1.h (layer 1), listed after it: an include from above" \
		"$prog: src/a.c:1 (layer 0) includes src/h1.h (layer 1): an include from above"

	printf '0 b.c\n0 h0.h\n0 a.c\n' >"$t/LAYERS"
	case_ "a file and a header not in the table" 1 \
		"$prog: src/p.c is not in LAYERS" \
		"$prog: src/h0.h:1 includes src/h1.h, which is not in LAYERS" \
		"$prog: src/a.c:1 includes src/h1.h, which is not in LAYERS"
	printf '0 b.c\n0 a.c\n0 p.c\n0 h1.h\n0 h0.h\n0 gone.c\n' >"$t/LAYERS"
	case_ "a file of the table missing" 1 \
		"$prog: LAYERS:6: src/gone.c does not exist"

	mv "$t/d.c" "$t/dmirror/d.c"
	mv "$t/d.h" "$t/dmirror/d.h"
	touch "$t/build/obj/dmirror/d.o"
	printf '0 b.c\n0 a.c\n0 p.c\n0 h1.h\n0 h0.h\n' >"$t/LAYERS"
	case_ "dmirror uses an internal symbol and headers of src/" 1 \
		"$prog: dmirror/d.c references a_func of src/a.c, which is not public API (a uhmm_* name declared in include/uhmm/)" \
		"$prog: dmirror/d.c:1 includes src/h0.h: dmirror/ and cli/ use only the public API" \
		"$prog: dmirror/d.h:1 includes src/h1.h: dmirror/ and cli/ use only the public API"

	if [ "$bad" -ne 0 ]; then
		echo "$prog: selftest: $bad of $n cases failed"
		exit 1
	fi
	echo "$prog: selftest: $n cases, each as it should be"
	exit 0
}

# ------------------------------------------------------------------ options

root=
table=
build=
while [ $# -gt 0 ]; do
	case $1 in
	--selftest) selftest ;;
	--root) [ $# -ge 2 ] || usage; root=$2; shift 2 ;;
	--table) [ $# -ge 2 ] || usage; table=$2; shift 2 ;;
	-h|--help) help ;;
	-*) usage ;;
	*) [ -z "$build" ] || usage; build=$1; shift ;;
	esac
done
[ -n "$root" ] || root=$(dirname "$(dirname "$self")")
build=${build:-build}
case $build in /*) ;; *) build=$PWD/$build ;; esac
if [ -d "$build" ]; then build=$(cd "$build" && pwd -P); fi
if [ -n "$table" ]; then
	case $table in /*) ;; *) table=$PWD/$table ;; esac
	# Without symbolic links, to compare it with the root below.
	d=$(cd "$(dirname "$table")" 2>/dev/null && pwd -P) &&
		table=${d%/}/$(basename "$table")
fi
cd "$root" || exit 2
root=$(pwd -P)
[ -n "$table" ] || table=$root/src/LAYERS
# How messages name the build directory: the same way.
case $build in "$root"/*) bname=${build#"$root"/} ;; *) bname=$build ;; esac
# How messages name the table: relative to the tree when inside it.
case $table in "$root"/*) tname=${table#"$root"/} ;; *) tname=$table ;; esac

command -v "$NM" >/dev/null 2>&1 || { echo "$prog: $NM not found (binutils)" >&2; exit 2; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/check-layers.XXXXXX") || exit 2
: >"$tmp/up"
trap 'rm -rf "$tmp"' EXIT
: >"$tmp/errors"
err() { printf '%s: %s\n' "$prog" "$*" >>"$tmp/errors"; }
nfiles=0
nrefs=0

# -------------------------------------------------------------------- table

declare -A layer pos tline
order=()
if [ ! -f "$table" ]; then
	echo "$prog: no table $tname" >&2
	exit 1
fi
lineno=0
prev_layer=-1
prev_file=
while IFS= read -r line || [ -n "$line" ]; do
	lineno=$((lineno + 1))
	line=${line%%#*}
	read -r l f extra <<<"$line"
	[ -n "${l:-}" ] || continue
	if [ "$l" = up ]; then
		# "up FILE SYMBOL": the one declared upward reference (the
		# hooks table rt_create stores); anything else up still fails.
		if [ -z "${f:-}" ] || [ -z "${extra:-}" ] || [[ $extra == *" "* ]]; then
			err "$tname:$lineno: cannot read \"$line\": want up FILE SYMBOL"
		else
			printf '%s %s\n' "$f" "$extra" >>"$tmp/up"
		fi
		continue
	fi
	if [ -n "${extra:-}" ] || [ -z "${f:-}" ] || ! [[ $l =~ ^[0-9]+$ ]] ||
	   ! [[ $f =~ ^[A-Za-z0-9_.+-]+\.[ch]$ ]]; then
		err "$tname:$lineno: cannot read \"$line\": want LAYER FILE, as 0 os.c"
		continue
	fi
	l=$((10#$l))
	if [ -n "${pos[$f]:-}" ]; then
		err "$tname:$lineno: $f is listed twice (first on line ${tline[$f]})"
		continue
	fi
	if [ "$l" -lt "$prev_layer" ]; then
		err "$tname:$lineno: $f has layer $l, below layer $prev_layer of $prev_file above it: layers must not decrease down the table"
	fi
	[ -e "src/$f" ] || err "$tname:$lineno: src/$f does not exist"
	layer[$f]=$l
	pos[$f]=${#order[@]}
	tline[$f]=$lineno
	order+=("$f")
	if [ "$l" -ge "$prev_layer" ]; then
		prev_layer=$l
		prev_file=$f
	fi
done <"$table"

# Every .c file of src/ is in the table.
for p in src/*.c; do
	[ -e "$p" ] || continue
	f=${p#src/}
	[ -n "${pos[$f]:-}" ] || err "src/$f is not in $tname"
done

# ------------------------------------------------------------------ objects

# obj DIR FILE.c: prints the object of DIR/FILE.c, or records why not.
obj() {
	local o=$build/obj/$1/${2%.c}.o on=$bname/obj/$1/${2%.c}.o
	if [ ! -f "$o" ]; then
		err "$on is missing: build the library first (make libs)"
		return 1
	fi
	if [ "$1/$2" -nt "$o" ]; then
		err "$on is older than $1/$2: build the library first (make libs)"
		return 1
	fi
	printf '%s\n' "$o"
}

# What the src/ objects define: "SYMBOL FILE.c", one a line. The objects of
# files missing from the table count too, so that a reference to one is
# named.
: >"$tmp/defs"
: >"$tmp/srcrefs"
for p in src/*.c; do
	[ -e "$p" ] || continue
	f=${p#src/}
	o=$(obj src "$f") || continue
	"$NM" -g --defined-only "$o" >"$tmp/nm" 2>"$tmp/nmerr" ||
		{ err "$NM cannot read $o: $(head -n 1 "$tmp/nmerr")"; continue; }
	awk -v f="$f" 'NF >= 2 && $NF !~ /^_\.stapsdt\./ { print $NF, f }' \
		"$tmp/nm" >>"$tmp/defs"
	[ -n "${pos[$f]:-}" ] || continue
	"$NM" -u "$o" | awk -v f="$f" 'NF >= 2 { print f, $NF }' >>"$tmp/srcrefs"
done

# The table for awk: "FILE POSITION LAYER".
: >"$tmp/table"
for f in "${order[@]}"; do
	printf '%s %s %s\n' "$f" "${pos[$f]}" "${layer[$f]}" >>"$tmp/table"
done

# src/ to src/: each reference to a file not listed before the one making it.
awk -v prog="$prog" '
	FILENAME == ARGV[1] { p[$1] = $2; l[$1] = $3; next }
	FILENAME == ARGV[2] { up[$1 " " $2] = 1; next }
	FILENAME == ARGV[3] { def[$1] = def[$1] " " $2; next }
	{
		if (!($2 in def) || ($1 " " $2) in up)
			next
		n = split(def[$2], d, " ")
		for (i = 1; i <= n; i++) {
			refs++
			if (!(d[i] in p) || p[d[i]] >= p[$1])
				printf "%s: src/%s (layer %s) references %s of src/%s (layer %s): a call up or across the order\n",
					prog, $1, l[$1], $2, d[i], (d[i] in l) ? l[d[i]] : "none: not in the table"
		}
	}
	END { print refs + 0 > "/dev/stderr" }
' "$tmp/table" "$tmp/up" "$tmp/defs" "$tmp/srcrefs" >>"$tmp/errors" 2>"$tmp/count"
nrefs=$((nrefs + $(cat "$tmp/count")))
nfiles=$((nfiles + ${#order[@]}))

# dmirror/ to src/: only the public API. The public names are the uhmm_*
# (not uhmm__*) names that include/uhmm/*.h declares.
cat include/uhmm/*.h 2>/dev/null |
	grep -oE '\<uhmm_[A-Za-z0-9][A-Za-z0-9_]*' | sort -u >"$tmp/public"
: >"$tmp/dmrefs"
for p in dmirror/*.c; do
	[ -e "$p" ] || continue
	f=${p#dmirror/}
	nfiles=$((nfiles + 1))
	o=$(obj dmirror "$f") || continue
	"$NM" -u "$o" | awk -v f="$f" 'NF >= 2 { print f, $NF }' >>"$tmp/dmrefs"
done
awk -v prog="$prog" '
	FILENAME == ARGV[1] { pub[$1] = 1; next }
	FILENAME == ARGV[2] { def[$1] = $2; next }
	{
		if (!($2 in def))
			next
		refs++
		if (!($2 in pub) || $2 ~ /^uhmm__/)
			printf "%s: dmirror/%s references %s of src/%s, which is not public API (a uhmm_* name declared in include/uhmm/)\n",
				prog, $1, $2, def[$2]
	}
	END { print refs + 0 > "/dev/stderr" }
' "$tmp/public" "$tmp/defs" "$tmp/dmrefs" >>"$tmp/errors" 2>"$tmp/count"
nrefs=$((nrefs + $(cat "$tmp/count")))

# ----------------------------------------------------------------- includes

srcreal=$(cd src && pwd -P)

# src_header DIR FORM NAME: the name in src/ of the file that
# "#include FORM NAME" in DIR/ finds with -Iinclude -Isrc, when it is in
# src/; nothing otherwise.
src_header() {
	local c d
	local -a cand
	if [ "$2" = '"' ]; then
		cand=("$1/$3" "include/$3" "src/$3")
	else
		cand=("include/$3" "src/$3")
	fi
	for c in "${cand[@]}"; do
		[ -f "$c" ] || continue
		d=$(cd "$(dirname "$c")" && pwd -P)
		[ "$d" = "$srcreal" ] && printf '%s\n' "${c##*/}"
		return
	done
}

# includes FILE: "LINE FORM NAME" for each #include of FILE.
includes() {
	grep -nE '^[[:space:]]*#[[:space:]]*include[[:space:]]*["<][^">]+[">]' "$1" |
		sed -E 's/^([0-9]+):[[:space:]]*#[[:space:]]*include[[:space:]]*(["<])([^">]+)[">].*/\1 \2 \3/'
}

for p in src/*.c src/*.h dmirror/*.c dmirror/*.h cli/*.c cli/*.h; do
	[ -e "$p" ] || continue
	dir=${p%%/*}
	f=${p#*/}
	if [ "$dir" = src ]; then
		[ -n "${pos[$f]:-}" ] || continue # not in the table: said above
	elif [ "$dir" = cli ] || [ "${f%.h}" != "$f" ]; then
		# (the .c files of dmirror/ are counted with their objects)
		nfiles=$((nfiles + 1))
	fi
	while read -r n form name; do
		h=$(src_header "$dir" "$form" "$name")
		[ -n "$h" ] || continue
		nrefs=$((nrefs + 1))
		if [ "$dir" != src ]; then
			err "$p:$n includes src/$h: dmirror/ and cli/ use only the public API"
		elif [ -z "${pos[$h]:-}" ]; then
			err "$p:$n includes src/$h, which is not in $tname"
		elif [ "${f%.h}" != "$f" ]; then
			[ "${pos[$h]}" -lt "${pos[$f]}" ] ||
				err "$p:$n (layer ${layer[$f]}) includes src/$h (layer ${layer[$h]}), listed after it: an include from above"
		else
			[ "${layer[$h]}" -le "${layer[$f]}" ] ||
				err "$p:$n (layer ${layer[$f]}) includes src/$h (layer ${layer[$h]}): an include from above"
		fi
	done < <(includes "$p")
done

# ------------------------------------------------------------------- result

if [ -s "$tmp/errors" ]; then
	cat "$tmp/errors"
	echo "$prog: $(($(wc -l <"$tmp/errors"))) violations in $nfiles files, $nrefs references; the table is $tname"
	exit 1
fi
echo "$prog: $nfiles files, $nrefs references, all down"
exit 0
