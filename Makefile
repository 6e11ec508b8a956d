# SPDX-License-Identifier: MIT
# uhmm: plain GNU make build. Everything is written under $(BUILD)/, never
# into the source tree.
#
#   make [-j2]                          libs, CLI, tests, benchmarks, examples
#   make check                          build, then run tests/run.sh
#   make run                            build, then run the main job (uhmm demo)
#   make bench                          build, then run every benchmark (uhmm bench)
#   make tools                          the isolation probes, build/tools/probe_*
#                                       (docs/isolation-probes.md)
#   make plot-deps                      install gnuplot for uhmm bench --plot
#   make check SANITIZE=address,undefined   (BUILD defaults to build-asan)
#   make check SANITIZE=thread              (BUILD defaults to build-tsan)
#   make check-valgrind                 the suite under valgrind memcheck
#   make check-layers                   calls and includes of src/ go down
#                                       src/LAYERS, dmirror/ and cli/ use the API
#   make chaos SEEDS=3 MODE=migrate     real programs with and without their
#                                       memory moving (tests/chaos/run.sh;
#                                       a short run is in make check)
#   make install PREFIX=/usr/local DESTDIR=/staging
#   make uninstall / make clean
#
# Knobs: CC (gcc or clang), CFLAGS (default -O2 -g), CPPFLAGS, LDFLAGS,
# LDLIBS, WERROR=1 (adds -Werror), BUILD, SANITIZE, PREFIX, LIBDIR,
# INCLUDEDIR, BINDIR, DESTDIR.

comma := ,
SANITIZE ?=
ifneq ($(SANITIZE),)
  ifneq ($(filter thread,$(subst $(comma), ,$(SANITIZE))),)
    BUILD ?= build-tsan
  else
    BUILD ?= build-asan
  endif
endif
BUILD ?= build

# The version comes from the public header, the single source of truth.
VERSION_MAJOR := $(shell sed -n 's/^\#define UHMM_VERSION_MAJOR[[:space:]]*\([0-9]*\).*/\1/p' include/uhmm/uhmm.h)
VERSION_MINOR := $(shell sed -n 's/^\#define UHMM_VERSION_MINOR[[:space:]]*\([0-9]*\).*/\1/p' include/uhmm/uhmm.h)
VERSION_PATCH := $(shell sed -n 's/^\#define UHMM_VERSION_PATCH[[:space:]]*\([0-9]*\).*/\1/p' include/uhmm/uhmm.h)
VERSION := $(VERSION_MAJOR).$(VERSION_MINOR).$(VERSION_PATCH)

CC ?= cc
AR ?= ar
CFLAGS ?= -O2 -g
WARNINGS := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes
ifeq ($(WERROR),1)
  WARNINGS += -Werror
endif

# UBSan only prints by default; make every report end the test (a failure).
SAN_FLAGS :=
ifneq ($(SANITIZE),)
  SAN_FLAGS := -fsanitize=$(SANITIZE) -fno-omit-frame-pointer
  ifneq ($(filter undefined,$(subst $(comma), ,$(SANITIZE))),)
    SAN_FLAGS += -fno-sanitize-recover=undefined
  endif
endif

# Flags every object gets; CFLAGS from the command line only replaces the
# optimisation/debug part.
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE $(CFLAGS) $(WARNINGS) -fPIC -pthread \
	$(SAN_FLAGS) -Iinclude -Isrc $(CPPFLAGS) -MMD -MP
# Initial-exec TLS: uhmm's thread-locals are reached from the thread
# pointer, never through the DTV, which glibc allocates in the
# application's heap (memory a migration may take while a monitor thread
# needs it: docs/design.md, "Memory uhmm's threads touch").
LIB_CFLAGS = $(ALL_CFLAGS) -fvisibility=hidden -ftls-model=initial-exec
ALL_LDFLAGS = $(LDFLAGS) $(SAN_FLAGS) -pthread
ALL_LDLIBS = $(LDLIBS) -pthread

# -z defs cannot hold for a sanitized shared library built by clang, whose
# sanitizer runtime is only linked into executables.
SO_ZDEFS := -Wl,-z,defs
ifneq ($(SANITIZE),)
  SO_ZDEFS :=
endif

LIB_SRCS   := $(sort $(wildcard src/*.c dmirror/*.c))
CLI_SRCS   := $(wildcard cli/*.c)
TEST_SRCS  := $(sort $(wildcard tests/test_*.c))
BENCH_SRCS := $(sort $(wildcard bench/*.c))
EX_SRCS    := $(sort $(wildcard examples/*.c))
TOOL_SRCS  := $(sort $(wildcard tools/*.c))

LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)
CLI_OBJS := $(CLI_SRCS:%.c=$(BUILD)/obj/%.o)

SONAME   := libuhmm.so.$(VERSION_MAJOR)
SOREAL   := libuhmm.so.$(VERSION)
STATIC   := $(BUILD)/libuhmm.a
SHARED   := $(BUILD)/$(SOREAL)
SHARED_LINKS := $(BUILD)/$(SONAME) $(BUILD)/libuhmm.so
CLI      := $(BUILD)/uhmm
TESTS    := $(TEST_SRCS:tests/%.c=$(BUILD)/tests/%)
SHARED_TEST := $(BUILD)/tests/test_shared_heap
CHAOS_LIB := $(BUILD)/libuhmm-chaos.so
CHAOS_TEST := $(BUILD)/tests/test_chaos
BENCHES  := $(BENCH_SRCS:bench/%.c=$(BUILD)/bench/%)
EXAMPLES := $(EX_SRCS:examples/%.c=$(BUILD)/examples/%)
TOOLS    := $(TOOL_SRCS:tools/%.c=$(BUILD)/tools/%)

# A shared library needs at least one object; while src/ is still empty
# only the (empty) static archive is built.
ifneq ($(LIB_OBJS),)
  LIBS := $(STATIC) $(SHARED) $(SHARED_LINKS)
else
  LIBS := $(STATIC)
endif

PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
BINDIR ?= $(PREFIX)/bin
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
MANDIR ?= $(PREFIX)/share/man
HEADERS := $(wildcard include/uhmm/*.h)
MAN1 := $(wildcard man/*.1)
MAN3 := $(wildcard man/*.3)
MAN7 := $(wildcard man/*.7)

# With the standard layout the .pc file locates itself (${pcfiledir}), so
# it works both at its final place and in a DESTDIR staging tree.
ifeq ($(LIBDIR)|$(INCLUDEDIR),$(PREFIX)/lib|$(PREFIX)/include)
  PC_PREFIX := $${pcfiledir}/../..
  PC_LIBDIR := $${prefix}/lib
  PC_INCLUDEDIR := $${prefix}/include
else
  PC_PREFIX := $(PREFIX)
  PC_LIBDIR := $(LIBDIR)
  PC_INCLUDEDIR := $(INCLUDEDIR)
endif

TEST_TIMEOUT_SCALE_DEFAULT := 1
ifneq ($(SANITIZE),)
  TEST_TIMEOUT_SCALE_DEFAULT := 3
endif

.PHONY: all libs cli tests benches examples tools check run bench install \
	uninstall clean
.DEFAULT_GOAL := all

all: libs cli tests benches examples tools
libs: $(LIBS)
cli: $(CLI)
tests: $(TESTS) $(SHARED_TEST) $(CHAOS_LIB) $(CHAOS_TEST)
benches: $(BENCHES)
examples: $(EXAMPLES)
tools: $(TOOLS)

# ---------------------------------------------------------------- objects

$(BUILD)/obj/src/%.o: src/%.c
	@mkdir -p $(@D)
	$(CC) $(LIB_CFLAGS) -c -o $@ $<

$(BUILD)/obj/dmirror/%.o: dmirror/%.c
	@mkdir -p $(@D)
	$(CC) $(LIB_CFLAGS) -c -o $@ $<

$(BUILD)/obj/cli/%.o: cli/%.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(BUILD)/obj/tests/%.o: tests/%.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -Itests -c -o $@ $<

$(BUILD)/obj/bench/%.o: bench/%.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -Ibench -c -o $@ $<

$(BUILD)/obj/examples/%.o: examples/%.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(BUILD)/obj/tools/%.o: tools/%.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -Itools -c -o $@ $<

# -------------------------------------------------------------- libraries

# The archive is rebuilt from scratch so objects of deleted sources vanish.
$(STATIC): $(LIB_OBJS)
	@mkdir -p $(@D)
	@rm -f $@
	$(AR) rcs $@ $(LIB_OBJS)

$(SHARED): $(LIB_OBJS) src/uhmm.map
	@mkdir -p $(@D)
	$(CC) -shared -o $@ $(LIB_OBJS) -Wl,-soname,$(SONAME) -Wl,-z,now \
		-Wl,--version-script=src/uhmm.map $(SO_ZDEFS) $(ALL_LDFLAGS) \
		$(ALL_LDLIBS)

$(BUILD)/$(SONAME) $(BUILD)/libuhmm.so: $(SHARED)
	ln -sf $(SOREAL) $@

# ------------------------------------------------------------ executables
# Everything links the static library, so it runs from the build
# directory without LD_LIBRARY_PATH and tests may use internal symbols.

# `uhmm bench` runs the scenarios of bench/bench_mirror.c and
# bench/bench_migrate.c: built a second time, main() renamed.
CLI_BENCH_OBJS := $(BUILD)/obj/cli-bench/bench_mirror.o \
	$(BUILD)/obj/cli-bench/bench_migrate.o

$(BUILD)/obj/cli-bench/bench_%.o: bench/bench_%.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -Ibench -DBENCH_ENTRY=bench_$*_main -c -o $@ $<

-include $(CLI_BENCH_OBJS:.o=.d)

$(CLI): $(CLI_OBJS) $(CLI_BENCH_OBJS) $(STATIC)
	$(CC) $(ALL_LDFLAGS) -o $@ $(CLI_OBJS) $(CLI_BENCH_OBJS) $(STATIC) \
		$(ALL_LDLIBS)

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(STATIC)
	@mkdir -p $(@D)
	$(CC) $(ALL_LDFLAGS) -o $@ $< $(STATIC) $(ALL_LDLIBS)

# The one test linked against libuhmm.so (tests/shared_heap.c): a shared
# library's thread-locals, unlike the archive's, are the DTV's.
$(SHARED_TEST): $(BUILD)/obj/tests/shared_heap.o $(SHARED) $(SHARED_LINKS)
	@mkdir -p $(@D)
	$(CC) $(ALL_LDFLAGS) -o $@ $< -L$(BUILD) -luhmm \
		-Wl,-rpath,'$$ORIGIN/..' $(ALL_LDLIBS)

# The chaos runner's LD_PRELOAD library (tests/chaos/chaos.c), linked
# against libuhmm.so, which it finds beside itself. It exports mmap()
# (it notes what libuhmm.so maps for itself) and nothing else that a
# program would see.
$(CHAOS_LIB): $(BUILD)/obj/tests/chaos/chaos.o $(SHARED) $(SHARED_LINKS)
	$(CC) -shared -o $@ $< -L$(BUILD) -luhmm -Wl,-rpath,'$$ORIGIN' \
		-Wl,-z,now $(ALL_LDFLAGS) $(ALL_LDLIBS)

# make check's short chaos run (tests/chaos/test_chaos.c runs
# tests/chaos/run.sh with $(CHAOS_LIB) on a few programs).
$(CHAOS_TEST): $(BUILD)/obj/tests/chaos/test_chaos.o $(STATIC)
	@mkdir -p $(@D)
	$(CC) $(ALL_LDFLAGS) -o $@ $< $(STATIC) $(ALL_LDLIBS)

$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o $(STATIC)
	@mkdir -p $(@D)
	$(CC) $(ALL_LDFLAGS) -o $@ $< $(STATIC) $(ALL_LDLIBS)

$(BUILD)/examples/%: $(BUILD)/obj/examples/%.o $(STATIC)
	@mkdir -p $(@D)
	$(CC) $(ALL_LDFLAGS) -o $@ $< $(STATIC) $(ALL_LDLIBS)

# The probes of tools/ (docs/isolation-probes.md) use no uhmm code.
$(BUILD)/tools/%: $(BUILD)/obj/tools/%.o
	@mkdir -p $(@D)
	$(CC) $(ALL_LDFLAGS) -o $@ $< $(ALL_LDLIBS)

# ---------------------------------------------------------------- actions

# Device copies race with CPU threads by design (like DMA): see tests/tsan.supp.
check: all
	UHMM_TEST_TIMEOUT_SCALE=$${UHMM_TEST_TIMEOUT_SCALE:-$(TEST_TIMEOUT_SCALE_DEFAULT)} \
	TSAN_OPTIONS="suppressions=$(CURDIR)/tests/tsan.supp die_after_fork=0 $${TSAN_OPTIONS:-}" \
		sh tests/run.sh $(BUILD)/tests

# The suite under valgrind memcheck. uhmm opens no userfaultfd under
# valgrind (it would deadlock: docs/semantics.md), so tests that need one
# skip with a reason. Leak checking is left to ASan.
VALGRIND ?= valgrind
VALGRIND_FLAGS ?= -q --error-exitcode=99 --leak-check=no
.PHONY: check-valgrind
check-valgrind: all
	@command -v $(VALGRIND) >/dev/null || { echo "check-valgrind: $(VALGRIND) not installed (apt-get install -y valgrind)" >&2; exit 1; }
	UHMM_TEST_TIMEOUT_SCALE=$${UHMM_TEST_TIMEOUT_SCALE:-10} \
	UHMM_TEST_WRAPPER="$(VALGRIND) $(VALGRIND_FLAGS)" \
		sh tests/run.sh $(BUILD)/tests

# The layer check (scripts/check-layers.sh, the table src/LAYERS,
# docs/layout.md): the checker's self-test, then the library objects:
# every reference between files of src/ goes down the table, and dmirror/
# and cli/ use only the public API.
.PHONY: check-layers
check-layers: libs
	CC="$(CC)" scripts/check-layers.sh --selftest
	scripts/check-layers.sh $(BUILD)

run: all
	$(CLI) demo

# Real programs from Debian run twice, plainly and under libuhmm-chaos.so,
# their outputs compared byte for byte (tests/chaos/run.sh, which prints
# the kernel stacks of a run that hangs). MODE=off and MODE=read are the
# controls. scripts/deps.sh --chaos installs the programs. `make check`
# runs a short version (test_chaos: 6 programs, the MODE=off control and
# one seed); .ci/run the controls and 10 seeds over every program.
# CHAOS_BUDGET: no run starts after that many seconds (0: no limit).
SEEDS ?= 3
FIRST_SEED ?= 1
MODE ?= migrate
CHAOS_TIMEOUT ?= 120
CHAOS_BUDGET ?= 0
CHAOS_PROGRAMS ?=
.PHONY: chaos
chaos: $(CHAOS_LIB)
	@sh scripts/deps.sh --chaos
	bash tests/chaos/run.sh --lib $(CHAOS_LIB) --seeds $(SEEDS) \
		--first-seed $(FIRST_SEED) --mode $(MODE) \
		--timeout $(CHAOS_TIMEOUT) --budget $(CHAOS_BUDGET) \
		$(CHAOS_PROGRAMS)

# The soak test alone for DURATION seconds (tests/soak.c; a short run of
# it is tests/test_soak.c in `make check`).
DURATION ?= 60
SOAK := $(BUILD)/soak
.PHONY: soak
soak: $(SOAK)
	$(SOAK) $(DURATION)

$(SOAK): $(BUILD)/obj/tests/soak.o $(STATIC)
	$(CC) $(ALL_LDFLAGS) -o $@ $< $(STATIC) $(ALL_LDLIBS)

# The libFuzzer target (fuzz/fuzz_api.c) for DURATION seconds: clang,
# ASan+UBSan, the library built with coverage into $(FUZZ_BUILD). New
# inputs go to $(FUZZ_BUILD)/corpus, crashes to $(FUZZ_BUILD)/artifacts;
# inputs worth keeping go to fuzz/corpus/, which `make check` replays
# (tests/test_fuzz_corpus.c).
FUZZ_CC ?= clang
FUZZ_BUILD ?= build-fuzz
FUZZ_FLAGS ?= -timeout=60 -rss_limit_mb=4096
.PHONY: fuzz fuzz-build
fuzz-build:
	$(MAKE) CC=$(FUZZ_CC) SANITIZE=address,undefined,fuzzer-no-link \
		BUILD=$(FUZZ_BUILD) $(FUZZ_BUILD)/libuhmm.a
	$(FUZZ_CC) -std=c11 -D_GNU_SOURCE -O1 -g $(WARNINGS) -Iinclude \
		-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
		-pthread -o $(FUZZ_BUILD)/fuzz_api fuzz/fuzz_api.c \
		$(FUZZ_BUILD)/libuhmm.a
fuzz: fuzz-build
	@mkdir -p $(FUZZ_BUILD)/corpus $(FUZZ_BUILD)/artifacts
	$(FUZZ_BUILD)/fuzz_api -max_total_time=$(DURATION) $(FUZZ_FLAGS) \
		-artifact_prefix=$(FUZZ_BUILD)/artifacts/ $(FUZZ_BUILD)/corpus fuzz/corpus

# The inputs of open fuzz findings (fuzz/findings/NAME/), each bug's files
# in order, 50 times, through the suite's build of the target: whether
# each still reproduces. Not part of `make check`: these bugs are open.
.PHONY: findings
findings: tests
	@for d in fuzz/findings/*/; do \
		[ -d "$$d" ] || { echo "no open fuzz finding"; break; }; \
		files=$$(ls "$$d" | sed "s|^|$$d|" | tr '\n' ':'); \
		list=; for i in $$(seq 50); do list="$$list$$files"; done; \
		if UHMM_FUZZ_REPLAY="$$list" $(BUILD)/tests/test_fuzz_corpus \
			replay_corpus >/dev/null 2>&1; then \
			echo "$$d: does not reproduce"; \
		else \
			echo "$$d: reproduces"; \
		fi; \
	done

# Every scenario of bench/bench_mirror.c and bench/bench_migrate.c; the
# programs in $(BUILD)/bench/ still run on their own.
bench: all
	$(CLI) bench

# gnuplot, for `uhmm bench --plot FILE`: installed only when asked for.
.PHONY: plot-deps
plot-deps:
	@if command -v gnuplot >/dev/null 2>&1; then \
		echo "gnuplot is installed: $$(command -v gnuplot)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q gnuplot-nox || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive \
		  apt-get install -y -q gnuplot-nox; }; \
	else \
		echo "install gnuplot with: sudo apt-get install -y gnuplot-nox"; \
		exit 1; \
	fi

# uhmm.pc is generated at install time: its paths depend on PREFIX.
install: libs cli
	install -d $(DESTDIR)$(INCLUDEDIR)/uhmm $(DESTDIR)$(LIBDIR) \
		$(DESTDIR)$(PKGCONFIGDIR) $(DESTDIR)$(BINDIR)
	install -m 644 $(HEADERS) $(DESTDIR)$(INCLUDEDIR)/uhmm/
	install -m 644 $(STATIC) $(DESTDIR)$(LIBDIR)/
ifneq ($(LIB_OBJS),)
	install -m 755 $(SHARED) $(DESTDIR)$(LIBDIR)/
	ln -sf $(SOREAL) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SOREAL) $(DESTDIR)$(LIBDIR)/libuhmm.so
endif
	sed -e 's|@PREFIX@|$(PC_PREFIX)|g' -e 's|@LIBDIR@|$(PC_LIBDIR)|g' \
		-e 's|@INCLUDEDIR@|$(PC_INCLUDEDIR)|g' \
		-e 's|@VERSION@|$(VERSION)|g' uhmm.pc.in \
		> $(DESTDIR)$(PKGCONFIGDIR)/uhmm.pc
	chmod 644 $(DESTDIR)$(PKGCONFIGDIR)/uhmm.pc
	install -m 755 $(CLI) $(DESTDIR)$(BINDIR)/uhmm
	install -d $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man3 \
		$(DESTDIR)$(MANDIR)/man7
	$(if $(MAN1),install -m 644 $(MAN1) $(DESTDIR)$(MANDIR)/man1/)
	$(if $(MAN3),install -m 644 $(MAN3) $(DESTDIR)$(MANDIR)/man3/)
	$(if $(MAN7),install -m 644 $(MAN7) $(DESTDIR)$(MANDIR)/man7/)

uninstall:
	rm -f $(addprefix $(DESTDIR)$(INCLUDEDIR)/uhmm/,$(notdir $(HEADERS)))
	rmdir $(DESTDIR)$(INCLUDEDIR)/uhmm 2>/dev/null || true
	rm -f $(DESTDIR)$(LIBDIR)/libuhmm.a $(DESTDIR)$(LIBDIR)/libuhmm.so \
		$(DESTDIR)$(LIBDIR)/$(SONAME) $(DESTDIR)$(LIBDIR)/$(SOREAL)
	rm -f $(DESTDIR)$(PKGCONFIGDIR)/uhmm.pc $(DESTDIR)$(BINDIR)/uhmm
	rm -f $(addprefix $(DESTDIR)$(MANDIR)/man1/,$(notdir $(MAN1))) \
		$(addprefix $(DESTDIR)$(MANDIR)/man3/,$(notdir $(MAN3))) \
		$(addprefix $(DESTDIR)$(MANDIR)/man7/,$(notdir $(MAN7)))

clean:
	rm -rf $(BUILD)

# Keep objects of executables (no implicit-chain deletion).
.SECONDARY:

ALL_OBJS := $(LIB_OBJS) $(CLI_OBJS) \
	$(TEST_SRCS:%.c=$(BUILD)/obj/%.o) $(BENCH_SRCS:%.c=$(BUILD)/obj/%.o) \
	$(EX_SRCS:%.c=$(BUILD)/obj/%.o) $(TOOL_SRCS:%.c=$(BUILD)/obj/%.o) \
	$(BUILD)/obj/tests/soak.o \
	$(BUILD)/obj/tests/chaos/chaos.o

# The Debian packages the build uses (scripts/deps.sh: installs them as
# root, else says what to install; never fails), once per build directory.
$(BUILD)/.deps: scripts/deps.sh
	@mkdir -p $(@D)
	@sh scripts/deps.sh
	@touch $@
$(ALL_OBJS): | $(BUILD)/.deps
# <sys/sdt.h> is a system header (not in the .d files): probes appear
# once deps.sh has installed it.
$(BUILD)/obj/src/stats.o: $(BUILD)/.deps

-include $(ALL_OBJS:.o=.d)
