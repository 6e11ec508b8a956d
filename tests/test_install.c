/* SPDX-License-Identifier: MIT */
/*
 * Packaging: `make install DESTDIR=... PREFIX=/usr` of this build into a
 * temporary directory, then outside programs (C, shared and static, and
 * C++) built against the installed headers and library through
 * pkg-config, and run. Also: every public header compiles on its own as
 * C11 and as C++ with -Wall -Wextra -Werror, the shared library has its
 * soname and exports only uhmm_*, and `make uninstall` removes every file.
 */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

struct stage {
	char src[PATH_MAX];	/* the source tree (has the Makefile) */
	char build[PATH_MAX];	/* this build directory */
	char tmp[PATH_MAX];	/* scratch directory */
	char root[PATH_MAX + 16];	/* DESTDIR */
	char pc[PATH_MAX + 64];	/* PKG_CONFIG_PATH=... */
};

static bool is_file(const char *dir, const char *name)
{
	char p[PATH_MAX + 64];
	struct stat st;

	snprintf(p, sizeof(p), "%s/%s", dir, name);
	return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* Run a shell command; its output goes to <tmp>/log. Returns the exit
 * status, or -1 if it did not exit. The log is printed when it fails. */
__attribute__((format(printf, 2, 3)))
static int sh(const struct stage *s, const char *fmt, ...)
{
	char cmd[8192], full[8192 + PATH_MAX + 64];
	va_list ap;
	int st;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	snprintf(full, sizeof(full), "cd '%s' && { %s ; } >log 2>&1", s->tmp, cmd);
	st = system(full);
	if (!WIFEXITED(st))
		return -1;
	if (WEXITSTATUS(st)) {
		char show[PATH_MAX + 32];

		TH_LOG("command failed (exit %d): %s", WEXITSTATUS(st), cmd);
		snprintf(show, sizeof(show), "sed 's/^/# | /' '%s/log' >&2", s->tmp);
		if (system(show) != 0)
			TH_LOG("(no log)");
	}
	return WEXITSTATUS(st);
}

static bool have(const char *tool)
{
	char cmd[256];

	snprintf(cmd, sizeof(cmd), "command -v %s >/dev/null 2>&1", tool);
	return system(cmd) == 0;
}

/* Find the trees, make a scratch directory, install into <tmp>/root. */
static void stage_install(struct stage *s)
{
	char self[PATH_MAX], *slash;
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

	memset(s, 0, sizeof(*s));
	ASSERT_GT(n, 0);
	self[n] = '\0';
	for (int i = 0; i < 2; i++) {
		slash = strrchr(self, '/');
		ASSERT_NOT_NULL(slash);
		*slash = '\0';
	}
	snprintf(s->build, sizeof(s->build), "%s", self);
	/* The build directory is usually inside the source tree. */
	slash = strrchr(self, '/');
	ASSERT_NOT_NULL(slash);
	*slash = '\0';
	snprintf(s->src, sizeof(s->src), "%s", self);
	if (!is_file(s->src, "Makefile") || !is_file(s->src, "include/uhmm/uhmm.h")) {
		ASSERT_NOT_NULL(getcwd(s->src, sizeof(s->src)));
		if (!is_file(s->src, "Makefile") ||
		    !is_file(s->src, "include/uhmm/uhmm.h"))
			SKIP("source tree not found (run from it)");
	}
	if (!have("make") || !have("pkg-config") || !have("cc"))
		SKIP("needs make, pkg-config and cc");

	snprintf(s->tmp, sizeof(s->tmp), "%s/uhmm-install.XXXXXX",
		 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	ASSERT_NOT_NULL(mkdtemp(s->tmp));
	snprintf(s->root, sizeof(s->root), "%s/root", s->tmp);
	snprintf(s->pc, sizeof(s->pc), "PKG_CONFIG_PATH='%s/usr/lib/pkgconfig'",
		 s->root);
	/*
	 * MAKEFLAGS from an enclosing make (check) would pass its -j and
	 * variables down; this is a make of its own. It must install what
	 * was built, not rebuild: skip when the build is older than the
	 * sources (someone is editing them).
	 */
	if (sh(s, "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -q -C '%s' "
	       "BUILD='%s' \"$(ls '%s'/libuhmm.so.*.*.*)\" '%s/libuhmm.a' '%s/uhmm'",
	       s->src, s->build, s->build, s->build, s->build) != 0)
		SKIP("%s is not up to date with the sources: run make first", s->build);
	ASSERT_EQ(sh(s, "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s -C '%s' "
		     "BUILD='%s' DESTDIR='%s' PREFIX=/usr install",
		     s->src, s->build, s->root), 0);
}

static void stage_remove(struct stage *s)
{
	char cmd[PATH_MAX + 32];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", s->tmp);
	if (system(cmd) != 0)
		TH_LOG("could not remove %s", s->tmp);
}

/* An outside program: every public header, a few calls, checks. */
static const char prog_c[] =
	"#include <stdio.h>\n"
	"#include <string.h>\n"
	"#include <uhmm/uhmm.h>\n"
	"#include <uhmm/migrate.h>\n"
	"#include <uhmm/dma.h>\n"
	"#include <uhmm/dmirror.h>\n"
	"#include <uhmm/stats.h>\n"
	"#define S_(x) #x\n"
	"#define S(x) S_(x)\n"
	"int main(void)\n"
	"{\n"
	"	struct uhmm_stats st;\n"
	"	const char *v = uhmm_version();\n"
	"	if (strcmp(v, S(UHMM_VERSION_MAJOR) \".\" S(UHMM_VERSION_MINOR) \".\" S(UHMM_VERSION_PATCH)))\n"
	"		return 3;\n"
	"	if (uhmm_stats_get(&st, sizeof(st)) || st.version != UHMM_STATS_VERSION)\n"
	"		return 4;\n"
	"	printf(\"uhmm %s\\n\", v);\n"
	"	return 0;\n"
	"}\n";

static void write_file(const struct stage *s, const char *name, const char *text)
{
	char p[PATH_MAX + 64];
	FILE *f;

	snprintf(p, sizeof(p), "%s/%s", s->tmp, name);
	f = fopen(p, "w");
	ASSERT_NOT_NULL(f);
	ASSERT_EQ(fputs(text, f) >= 0, 1);
	ASSERT_EQ(fclose(f), 0);
}

TEST_TIMEOUT(installed_files_and_symbols, 120)
{
	struct stage s;

	stage_install(&s);
	ASSERT_TRUE(is_file(s.root, "usr/include/uhmm/uhmm.h"));
	ASSERT_TRUE(is_file(s.root, "usr/include/uhmm/stats.h"));
	ASSERT_TRUE(is_file(s.root, "usr/lib/libuhmm.a"));
	ASSERT_TRUE(is_file(s.root, "usr/lib/libuhmm.so.0"));
	ASSERT_TRUE(is_file(s.root, "usr/lib/pkgconfig/uhmm.pc"));
	ASSERT_TRUE(is_file(s.root, "usr/bin/uhmm"));
	ASSERT_TRUE(is_file(s.root, "usr/share/man/man1/uhmm.1"));
	ASSERT_TRUE(is_file(s.root, "usr/share/man/man3/uhmm_range_fault.3"));
	ASSERT_TRUE(is_file(s.root, "usr/share/man/man7/uhmm.7"));
	/* soname and the version node. */
	ASSERT_EQ(sh(&s, "readelf -d '%s/usr/lib/libuhmm.so' | grep -q 'SONAME.*\\[libuhmm\\.so\\.0\\]'",
		     s.root), 0);
	ASSERT_EQ(sh(&s, "readelf --dyn-syms -W '%s/usr/lib/libuhmm.so' | grep -q ' uhmm_range_fault@@UHMM_0\\.1$'",
		     s.root), 0);
	/* Only uhmm_* is exported (and the version node itself), the two
	 * definitions of signal chaining (src/guard.c, semantics.md 17) and
	 * the exec family (src/runtime.c, semantics.md M16). */
	ASSERT_EQ(sh(&s, "nm -D --defined-only '%s/usr/lib/libuhmm.so' | "
		     "awk '{print $3}' | grep -v -e '^uhmm_' -e '^UHMM_0\\.1$' "
		     "-e '^sigaction$' -e '^signal$' "
		     "-e '^exec[lv]p\\{0,1\\}e\\{0,1\\}$' -e '^execvpe$' "
		     "-e '^fexecve$' -e '^execveat$' -e '^__sysv_signal$' "
		     "-e '^sysv_signal$' -e '^bsd_signal$' -e '^sigset$' | { ! grep .; }",
		     s.root), 0);
	ASSERT_EQ(sh(&s, "%s pkg-config --modversion uhmm | grep -qx \"$(%s pkg-config --modversion uhmm)\" && "
		     "%s pkg-config --exists 'uhmm >= 0.1'", s.pc, s.pc, s.pc), 0);
	stage_remove(&s);
}

TEST_TIMEOUT(outside_program_shared, 120)
{
	struct stage s;

	if (SANITIZED)
		SKIP("the installed library of a sanitized build needs the sanitizer runtime");
	stage_install(&s);
	write_file(&s, "prog.c", prog_c);
	ASSERT_EQ(sh(&s, "cc -std=c11 -Wall -Wextra -Werror -o prog prog.c "
		     "$(%s pkg-config --cflags --libs uhmm)", s.pc), 0);
	/* Linked against the staged libuhmm.so.0, not against an archive. */
	ASSERT_EQ(sh(&s, "readelf -d prog | grep -q 'NEEDED.*libuhmm\\.so\\.0'"), 0);
	ASSERT_EQ(sh(&s, "LD_LIBRARY_PATH='%s/usr/lib' ./prog | grep -q '^uhmm '",
		     s.root), 0);
	stage_remove(&s);
}

TEST_TIMEOUT(outside_program_static, 120)
{
	struct stage s;

	if (SANITIZED)
		SKIP("the installed library of a sanitized build needs the sanitizer runtime");
	stage_install(&s);
	write_file(&s, "prog.c", prog_c);
	/* As the README says: the archive explicitly, plus the static
	 * dependencies pkg-config lists. */
	ASSERT_EQ(sh(&s, "cc -std=c11 -Wall -Wextra -Werror -o prog_static prog.c "
		     "$(%s pkg-config --cflags uhmm) "
		     "\"$(%s pkg-config --variable=libdir uhmm)/libuhmm.a\" "
		     "$(%s pkg-config --static --libs-only-other uhmm)",
		     s.pc, s.pc, s.pc), 0);
	ASSERT_EQ(sh(&s, "! readelf -d prog_static | grep -q 'NEEDED.*libuhmm'"), 0);
	/* No library path: it must not need the shared one. */
	ASSERT_EQ(sh(&s, "./prog_static | grep -q '^uhmm '"), 0);
	stage_remove(&s);
}

TEST_TIMEOUT(outside_program_cxx, 120)
{
	struct stage s;

	if (SANITIZED)
		SKIP("the installed library of a sanitized build needs the sanitizer runtime");
	if (!have("c++"))
		SKIP("no c++ compiler");
	stage_install(&s);
	write_file(&s, "prog.cc", prog_c);
	ASSERT_EQ(sh(&s, "c++ -std=c++17 -Wall -Wextra -Werror -o prog_cxx prog.cc "
		     "$(%s pkg-config --cflags --libs uhmm)", s.pc), 0);
	ASSERT_EQ(sh(&s, "LD_LIBRARY_PATH='%s/usr/lib' ./prog_cxx | grep -q '^uhmm '",
		     s.root), 0);
	stage_remove(&s);
}

/* Each installed header on its own, first in the translation unit. */
TEST_TIMEOUT(headers_standalone_c11_and_cxx, 120)
{
	struct stage s;

	stage_install(&s);
	ASSERT_EQ(sh(&s, "for h in '%s'/usr/include/uhmm/*.h; do "
		     "cc -std=c11 -Wall -Wextra -Wpedantic -Werror -fsyntax-only "
		     "-I'%s/usr/include' -include \"$h\" -x c /dev/null || exit 1; done",
		     s.root, s.root), 0);
	if (have("c++"))
		ASSERT_EQ(sh(&s, "for h in '%s'/usr/include/uhmm/*.h; do "
			     "c++ -std=c++11 -Wall -Wextra -Werror -fsyntax-only "
			     "-I'%s/usr/include' -include \"$h\" -x c++ /dev/null || exit 1; done",
			     s.root, s.root), 0);
	stage_remove(&s);
}

TEST_TIMEOUT(uninstall_removes_everything, 120)
{
	struct stage s;

	stage_install(&s);
	ASSERT_EQ(sh(&s, "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s -C '%s' "
		     "BUILD='%s' DESTDIR='%s' PREFIX=/usr uninstall",
		     s.src, s.build, s.root), 0);
	ASSERT_EQ(sh(&s, "test -z \"$(find '%s' -type f -o -type l)\"", s.root), 0);
	stage_remove(&s);
}

/* The installed man pages render without a groff or man warning. */
TEST_TIMEOUT(man_pages_render_without_warnings, 120)
{
	struct stage s;

	if (!have("man") || !have("groff"))
		SKIP("needs man and groff");
	stage_install(&s);
	ASSERT_EQ(sh(&s, "n=0; for f in '%s'/usr/share/man/man[137]/*; do "
		     "n=$((n + 1)); "
		     "w=$(MANWIDTH=80 man --warnings -l \"$f\" 2>&1 >/dev/null); "
		     "[ -z \"$w\" ] || { echo \"$f: $w\"; exit 1; }; done; "
		     "[ \"$n\" -ge 7 ]", s.root), 0);
	stage_remove(&s);
}
