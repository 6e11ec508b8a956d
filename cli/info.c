/* SPDX-License-Identifier: MIT */
/*
 * uhmm info: what the running kernel and this process allow, and what that
 * means for uhmm, in plain sentences or as JSON. Uses the public API only.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <uhmm/uhmm.h>
#include <uhmm/dmirror.h>

#include "cli.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Bit numbers of UFFD_FEATURE_*, from the kernel's uapi (not our headers). */
static const char *const uffd_feature_names[] = {
	[0] = "PAGEFAULT_FLAG_WP",
	[1] = "EVENT_FORK",
	[2] = "EVENT_REMAP",
	[3] = "EVENT_REMOVE",
	[4] = "MISSING_HUGETLBFS",
	[5] = "MISSING_SHMEM",
	[6] = "EVENT_UNMAP",
	[7] = "SIGBUS",
	[8] = "THREAD_ID",
	[9] = "MINOR_HUGETLBFS",
	[10] = "MINOR_SHMEM",
	[11] = "EXACT_ADDRESS",
	[12] = "WP_HUGETLBFS_SHMEM",
	[13] = "WP_UNPOPULATED",
	[14] = "POISON",
	[15] = "WP_ASYNC",
	[16] = "MOVE",
};

/* Bit numbers of the ioctls mask: the _UFFDIO_* command numbers. */
static const char *const uffd_ioctl_names[64] = {
	[0] = "REGISTER",
	[1] = "UNREGISTER",
	[2] = "WAKE",
	[3] = "COPY",
	[4] = "ZEROPAGE",
	[5] = "MOVE",
	[6] = "WRITEPROTECT",
	[7] = "CONTINUE",
	[8] = "POISON",
	[63] = "API",
};

static const struct {
	uint32_t bit;
	const char *name;
	const char *json;
	const char *what;
} feat_flags[] = {
	{ UHMM_FEAT_PAGEMAP_SCAN, "PAGEMAP_SCAN", "pagemap_scan", "PAGEMAP_SCAN ioctl (kernel 6.7)" },
	{ UHMM_FEAT_PROCMAP_QUERY, "PROCMAP_QUERY", "procmap_query", "PROCMAP_QUERY ioctl (kernel 6.11)" },
	{ UHMM_FEAT_EVENTS, "EVENTS", "events", "munmap/mremap/madvise events tracked" },
	{ UHMM_FEAT_WP_SHMEM, "WP_SHMEM", "wp_shmem", "shmem/hugetlbfs ranges can be tracked" },
	{ UHMM_FEAT_MOVE, "MOVE", "move", "UFFDIO_MOVE (kernel 6.8)" },
	{ UHMM_FEAT_POPULATE, "POPULATE", "populate", "MADV_POPULATE_READ/WRITE (kernel 5.14)" },
	{ UHMM_FEAT_THP, "THP", "thp", "transparent huge pages enabled" },
	{ UHMM_FEAT_HUGETLB, "HUGETLB", "hugetlb", "hugetlbfs pages configured" },
};

/* ------------------------------------------------------------------ */
/* Facts about the system                                               */
/* ------------------------------------------------------------------ */

#define MAX_NOTES 16
#define NOTE_LEN 512

struct facts {
	/* uhmm */
	int feat_ret;
	struct uhmm_features f;
	/* system */
	char release[sizeof(((struct utsname *)0)->release)];
	uid_t euid;
	char user[64];
	long unpriv_uffd;	/* -1: unknown */
	bool dev_exists;
	char dev_mode[11];
	char dev_owner[64], dev_group[64];
	bool dev_access;	/* this process may open it read/write */
	char thp[32];		/* the selected THP mode, "" if unknown */
	long nr_hugepages;	/* -1: unknown */
	long max_map_count;	/* -1: unknown */
	long map_count;		/* this process's mappings; -1: unknown */
	bool have_caps;		/* cap_eff and seccomp below are known */
	uint64_t cap_eff;	/* effective capabilities */
	long seccomp;		/* 0 none, 1 strict, 2 filter; -1: unknown */
	long no_new_privs;	/* -1: unknown */
	char thp_defrag[32];	/* "" if unknown */
	char thp_shmem[32];	/* "" if unknown */
	long huge_total, huge_free, huge_kb;	/* /proc/meminfo; -1: unknown */
	bool hugetlbfs_mounted;
	/* conclusions */
	char works[MAX_NOTES][NOTE_LEN];
	int nworks;
	char degrades[MAX_NOTES][NOTE_LEN];
	int ndegrades;
};

/* First line of a small file, trailing newline removed; false if none. */
static bool read_line(const char *path, char *buf, size_t size)
{
	FILE *fp = fopen(path, "re");
	bool ok;

	if (!fp)
		return false;
	ok = fgets(buf, (int)size, fp) != NULL;
	fclose(fp);
	if (ok)
		buf[strcspn(buf, "\n")] = '\0';
	return ok;
}

static long read_long(const char *path)
{
	char buf[64], *end;
	long v;

	if (!read_line(path, buf, sizeof(buf)))
		return -1;
	errno = 0;
	v = strtol(buf, &end, 10);
	if (errno || end == buf)
		return -1;
	return v;
}

static void mode_string(mode_t m, char out[11])
{
	out[0] = S_ISCHR(m) ? 'c' : S_ISDIR(m) ? 'd' : S_ISREG(m) ? '-' : '?';
	out[1] = m & S_IRUSR ? 'r' : '-';
	out[2] = m & S_IWUSR ? 'w' : '-';
	out[3] = m & S_IXUSR ? 'x' : '-';
	out[4] = m & S_IRGRP ? 'r' : '-';
	out[5] = m & S_IWGRP ? 'w' : '-';
	out[6] = m & S_IXGRP ? 'x' : '-';
	out[7] = m & S_IROTH ? 'r' : '-';
	out[8] = m & S_IWOTH ? 'w' : '-';
	out[9] = m & S_IXOTH ? 'x' : '-';
	out[10] = '\0';
}

__attribute__((format(printf, 3, 4)))
static void note(char (*list)[NOTE_LEN], int *n, const char *fmt, ...)
{
	va_list ap;

	if (*n >= MAX_NOTES)
		return;
	va_start(ap, fmt);
	vsnprintf(list[*n], NOTE_LEN, fmt, ap);
	va_end(ap);
	(*n)++;
}

#define WORKS(...) note(fx->works, &fx->nworks, __VA_ARGS__)
#define DEGRADES(...) note(fx->degrades, &fx->ndegrades, __VA_ARGS__)

static const char *uffd_path_name(uint32_t path)
{
	switch (path) {
	case UHMM_UFFD_NONE: return "none";
	case UHMM_UFFD_DEV: return "dev";
	case UHMM_UFFD_SYSCALL: return "syscall";
	case UHMM_UFFD_SYSCALL_USER_ONLY: return "syscall-user-only";
	default: return "unknown";
	}
}

static const char *uffd_path_words(uint32_t path)
{
	switch (path) {
	case UHMM_UFFD_NONE: return "none";
	case UHMM_UFFD_DEV: return "/dev/userfaultfd (USERFAULTFD_IOC_NEW)";
	case UHMM_UFFD_SYSCALL: return "userfaultfd(2) system call";
	case UHMM_UFFD_SYSCALL_USER_ONLY:
		return "userfaultfd(2) with UFFD_USER_MODE_ONLY (user-mode faults only)";
	default: return "unknown";
	}
}

/* The [selected] word of a sysfs mode file such as THP's "enabled". */
static void read_bracketed(const char *path, char *out, size_t size)
{
	char buf[256], *l, *r;

	out[0] = '\0';
	if (read_line(path, buf, sizeof(buf)) && (l = strchr(buf, '[')) &&
	    (r = strchr(l, ']'))) {
		*r = '\0';
		snprintf(out, size, "%s", l + 1);
	}
}

/* Privileges from /proc/self/status, and the number of mappings. */
static void gather_status(struct facts *fx)
{
	char line[256];
	FILE *fp;

	fx->seccomp = -1;
	fx->no_new_privs = -1;
	fx->map_count = -1;
	fp = fopen("/proc/self/status", "re");
	if (fp) {
		while (fgets(line, sizeof(line), fp)) {
			unsigned long long v;
			long n;

			if (sscanf(line, "CapEff: %llx", &v) == 1) {
				fx->cap_eff = v;
				fx->have_caps = true;
			} else if (sscanf(line, "Seccomp: %ld", &n) == 1) {
				fx->seccomp = n;
			} else if (sscanf(line, "NoNewPrivs: %ld", &n) == 1) {
				fx->no_new_privs = n;
			}
		}
		fclose(fp);
	}
	fp = fopen("/proc/self/maps", "re");
	if (fp) {
		int c, prev = '\n';

		fx->map_count = 0;
		while ((c = getc(fp)) != EOF) {
			if (c == '\n')
				fx->map_count++;
			prev = c;
		}
		if (prev != '\n')
			fx->map_count++;
		fclose(fp);
	}
}

/* hugetlbfs: pages from /proc/meminfo, and whether it is mounted. */
static void gather_hugetlb(struct facts *fx)
{
	char line[512];
	FILE *fp;

	fx->huge_total = fx->huge_free = fx->huge_kb = -1;
	fp = fopen("/proc/meminfo", "re");
	if (fp) {
		while (fgets(line, sizeof(line), fp)) {
			long n;

			if (sscanf(line, "HugePages_Total: %ld", &n) == 1)
				fx->huge_total = n;
			else if (sscanf(line, "HugePages_Free: %ld", &n) == 1)
				fx->huge_free = n;
			else if (sscanf(line, "Hugepagesize: %ld", &n) == 1)
				fx->huge_kb = n;
		}
		fclose(fp);
	}
	fp = fopen("/proc/mounts", "re");
	if (fp) {
		while (fgets(line, sizeof(line), fp)) {
			char dev[128], dir[256], type[64];

			if (sscanf(line, "%127s %255s %63s", dev, dir, type) == 3 &&
			    !strcmp(type, "hugetlbfs"))
				fx->hugetlbfs_mounted = true;
		}
		fclose(fp);
	}
}

#define CAP_SYS_PTRACE_BIT 19
#define CAP_SYS_ADMIN_BIT 21

static bool has_cap(const struct facts *fx, unsigned int bit)
{
	return fx->have_caps && (fx->cap_eff >> bit) & 1;
}

static void gather(struct facts *fx)
{
	struct utsname u;
	struct stat st;
	struct passwd *pw;
	char buf[256], *l, *r;

	memset(fx, 0, sizeof(*fx));
	fx->f.size = sizeof(fx->f);
	fx->feat_ret = uhmm_features(&fx->f);

	if (uname(&u) == 0)
		snprintf(fx->release, sizeof(fx->release), "%s", u.release);
	fx->euid = geteuid();
	pw = getpwuid(fx->euid);
	snprintf(fx->user, sizeof(fx->user), "%s", pw ? pw->pw_name : "?");
	fx->unpriv_uffd = read_long("/proc/sys/vm/unprivileged_userfaultfd");

	if (stat("/dev/userfaultfd", &st) == 0) {
		struct group *gr;

		fx->dev_exists = true;
		mode_string(st.st_mode, fx->dev_mode);
		pw = getpwuid(st.st_uid);
		gr = getgrgid(st.st_gid);
		if (pw)
			snprintf(fx->dev_owner, sizeof(fx->dev_owner), "%s", pw->pw_name);
		else
			snprintf(fx->dev_owner, sizeof(fx->dev_owner), "%u", (unsigned)st.st_uid);
		if (gr)
			snprintf(fx->dev_group, sizeof(fx->dev_group), "%s", gr->gr_name);
		else
			snprintf(fx->dev_group, sizeof(fx->dev_group), "%u", (unsigned)st.st_gid);
		fx->dev_access = access("/dev/userfaultfd", R_OK | W_OK) == 0;
	}

	if (read_line("/sys/kernel/mm/transparent_hugepage/enabled", buf, sizeof(buf)) &&
	    (l = strchr(buf, '[')) && (r = strchr(l, ']'))) {
		*r = '\0';
		snprintf(fx->thp, sizeof(fx->thp), "%s", l + 1);
	}
	fx->nr_hugepages = read_long("/proc/sys/vm/nr_hugepages");
	fx->max_map_count = read_long("/proc/sys/vm/max_map_count");
	read_bracketed("/sys/kernel/mm/transparent_hugepage/defrag",
		       fx->thp_defrag, sizeof(fx->thp_defrag));
	read_bracketed("/sys/kernel/mm/transparent_hugepage/shmem_enabled",
		       fx->thp_shmem, sizeof(fx->thp_shmem));
	gather_status(fx);
	gather_hugetlb(fx);
}

/* How to give this user a full userfaultfd, in one clause. */
static void uffd_remedy(struct facts *fx, bool user_only, char *out, size_t size)
{
	if (fx->seccomp == 2 && !user_only) {
		snprintf(out, size, "this process runs under a seccomp filter (Seccomp: 2 in /proc/self/status), which may block userfaultfd: in a container, allow it (Docker: `--security-opt seccomp=unconfined` or a profile that allows userfaultfd)%s",
			 fx->euid == 0 ? "" : ", and give this user access to /dev/userfaultfd or run `sysctl vm.unprivileged_userfaultfd=1` (as root)");
		return;
	}
	if (fx->euid == 0 && !user_only) {
		snprintf(out, size, "check for a seccomp filter blocking userfaultfd (containers: Docker's default profile does) and that the kernel has CONFIG_USERFAULTFD");
		return;
	}
	if (fx->dev_exists)
		snprintf(out, size,
			 "give this user access with `chmod 0666 /dev/userfaultfd` or `setfacl -m u:%s:rw /dev/userfaultfd`, or run `sysctl vm.unprivileged_userfaultfd=1` (as root), or give the program CAP_SYS_PTRACE (`setcap cap_sys_ptrace+ep PROGRAM`)",
			 fx->user);
	else
		snprintf(out, size,
			 "run `sysctl vm.unprivileged_userfaultfd=1` (as root) or give the program CAP_SYS_PTRACE (`setcap cap_sys_ptrace+ep PROGRAM`); /dev/userfaultfd does not exist here (it needs kernel 6.1)");
}

static void conclude(struct facts *fx)
{
	const struct uhmm_features *f = &fx->f;
	char remedy[NOTE_LEN];

	if (fx->feat_ret < 0) {
		if (fx->feat_ret == -ENOSYS)
			DEGRADES("uhmm cannot run on this kernel (%s): it needs the PAGEMAP_SCAN and PROCMAP_QUERY ioctls, so kernel >= 6.11",
				 fx->release);
		else
			DEGRADES("uhmm cannot start: uhmm_features() failed: %s",
				 strerror(-fx->feat_ret));
		return;
	}

	if ((f->flags & UHMM_FEAT_PAGEMAP_SCAN) && (f->flags & UHMM_FEAT_PROCMAP_QUERY))
		WORKS("Mirroring works: interval notifiers and uhmm_range_fault() (PAGEMAP_SCAN and PROCMAP_QUERY are available).");
	else
		DEGRADES("uhmm cannot run: PAGEMAP_SCAN and PROCMAP_QUERY are needed, kernel >= 6.11.");

	if (f->flags & UHMM_FEAT_EVENTS) {
		WORKS("munmap, mremap, MAP_FIXED and MADV_DONTNEED/FREE/REMOVE of mirrored memory raise invalidations (run by uhmm right after the call; uhmm_range_revalidate() waits for them); userfaultfd comes from %s.",
		      uffd_path_words(f->uffd_path));
	} else {
		uffd_remedy(fx, false, remedy, sizeof(remedy));
		if (f->uffd_error == -EOPNOTSUPP)
			DEGRADES("This kernel's userfaultfd lacks EVENT_UNMAP/REMOVE/REMAP: munmap, mremap and madvise of mirrored ranges are only noticed by uhmm_range_revalidate() (dmirror calls it at every command).");
		else
			DEGRADES("No userfaultfd (%s): munmap, mremap and madvise of mirrored ranges are only noticed by uhmm_range_revalidate() (dmirror calls it at every command); to fix, %s.",
				 f->uffd_error ? strerror(-f->uffd_error) : "not available",
				 remedy);
	}
	if (f->uffd_path == UHMM_UFFD_SYSCALL_USER_ONLY) {
		uffd_remedy(fx, true, remedy, sizeof(remedy));
		DEGRADES("userfaultfd is limited to user-mode faults (UFFD_USER_MODE_ONLY): a system call touching memory that lives on a device (read(2) into it, O_DIRECT) may fail with EFAULT instead of bringing it back; for full behaviour, %s.",
			 remedy);
	}

	if (f->flags & UHMM_FEAT_EVENTS) {
		if (f->flags & UHMM_FEAT_WP_SHMEM)
			WORKS("Shared memory (shmem, memfd, hugetlbfs) ranges are tracked like anonymous memory.");
		else
			DEGRADES("Shared memory (shmem, hugetlbfs) ranges cannot be tracked: the kernel lacks UFFD_FEATURE_WP_HUGETLBFS_SHMEM (5.19).");
		if (f->flags & UHMM_FEAT_MOVE)
			WORKS("Device memory and migration work: pages move with UFFDIO_MOVE, batched, without a CPU copy (a 2 MiB-aligned THP moves whole with SELECT_COMPOUND; partly covered or unaligned ones are split).");
		else
			DEGRADES("No UFFDIO_MOVE (kernel 6.8): system pages cannot be taken out of the address space, so they do not migrate to devices (uhmm_migrate_setup collects none).");
	}

	if (!(f->flags & UHMM_FEAT_POPULATE))
		DEGRADES("No MADV_POPULATE_READ/WRITE (kernel 5.14): uhmm_range_fault() cannot fault pages in.");

	if ((f->flags & UHMM_FEAT_THP) && !strcmp(fx->thp, "madvise"))
		WORKS("Transparent huge pages are on for ranges advised with MADV_HUGEPAGE (mode madvise): uhmm_range_fault() reports huge mappings with their order.");
	else if (f->flags & UHMM_FEAT_THP)
		WORKS("Transparent huge pages are on (mode %s): uhmm_range_fault() reports huge mappings with their order.",
		      fx->thp[0] ? fx->thp : "?");
	else
		DEGRADES("Transparent huge pages are off: every mapping is reported at order 0; to enable, `echo madvise > /sys/kernel/mm/transparent_hugepage/enabled`.");

	if ((f->flags & UHMM_FEAT_HUGETLB) && fx->huge_free == 0)
		DEGRADES("%ld hugetlbfs pages are configured but none is free: MAP_HUGETLB mappings will fail; add pages with `echo %ld > /proc/sys/vm/nr_hugepages`.",
			 fx->nr_hugepages, fx->nr_hugepages + 16);
	else if (f->flags & UHMM_FEAT_HUGETLB)
		WORKS("%ld hugetlbfs pages are configured (%ld free%s): MAP_HUGETLB memory can be mirrored (it does not migrate: migration takes base pages of private anonymous memory).",
		      fx->nr_hugepages, fx->huge_free,
		      fx->hugetlbfs_mounted ? ", hugetlbfs mounted" : "");
	else
		DEGRADES("No hugetlbfs pages are configured: MAP_HUGETLB memory is unavailable (its tests skip); to enable, `echo 16 > /proc/sys/vm/nr_hugepages`.");

	if (fx->max_map_count >= 0 && fx->max_map_count < 65530)
		DEGRADES("vm.max_map_count is %ld: uhmm splits mappings when it tracks them, so large programs may run out of mappings; raise it with `sysctl vm.max_map_count=262144`.",
			 fx->max_map_count);
	else if (fx->max_map_count > 0 && fx->map_count >= 0)
		WORKS("vm.max_map_count is %ld (this process has %ld mappings): tracked ranges no longer merge with their neighbours, so a program mirroring many separate ranges uses more of it; raise it with `sysctl vm.max_map_count=262144` if mmap starts failing with ENOMEM.",
		      fx->max_map_count, fx->map_count);
}

/* ------------------------------------------------------------------ */
/* Output                                                               */
/* ------------------------------------------------------------------ */

static void print_bits(uint64_t mask, const char *const *names, size_t nnames)
{
	bool any = false;

	printf("0x%jx", (uintmax_t)mask);
	for (unsigned int i = 0; i < 64; i++) {
		if (!(mask & (1ULL << i)))
			continue;
		if (i < nnames && names[i])
			printf(" %s", names[i]);
		else
			printf(" bit%u", i);
		any = true;
	}
	if (!any)
		printf(" (none)");
	printf("\n");
}

static void print_plain(const struct facts *fx)
{
	const struct uhmm_features *f = &fx->f;
	const bool ok = fx->feat_ret == 0;

	printf("uhmm %s\n", uhmm_version());
	printf("kernel:                      %s\n", fx->release);
	if (ok) {
		printf("page size:                   %u\n", f->page_size);
		printf("userfaultfd:                 %s\n", uffd_path_words(f->uffd_path));
		if (f->uffd_path == UHMM_UFFD_NONE)
			printf("  why none:                  %s\n",
			       f->uffd_error ? strerror(-f->uffd_error) : "unknown");
		printf("  features:                  ");
		print_bits(f->uffd_features, uffd_feature_names, ARRAY_SIZE(uffd_feature_names));
		printf("  ioctls:                    ");
		print_bits(f->uffd_ioctls, uffd_ioctl_names, ARRAY_SIZE(uffd_ioctl_names));
		printf("uhmm features:\n");
		for (size_t i = 0; i < ARRAY_SIZE(feat_flags); i++)
			printf("  %-14s %-3s  %s\n", feat_flags[i].name,
			       f->flags & feat_flags[i].bit ? "yes" : "no",
			       feat_flags[i].what);
	} else {
		printf("uhmm_features():             failed: %s\n", strerror(-fx->feat_ret));
	}
	printf("running as:                  %s (euid %u), %s\n", fx->user,
	       (unsigned)fx->euid, fx->euid == 0 ? "privileged" : "not root");
	if (fx->have_caps)
		printf("capabilities:                CapEff 0x%llx (CAP_SYS_PTRACE %s, CAP_SYS_ADMIN %s)\n",
		       (unsigned long long)fx->cap_eff,
		       has_cap(fx, CAP_SYS_PTRACE_BIT) ? "yes" : "no",
		       has_cap(fx, CAP_SYS_ADMIN_BIT) ? "yes" : "no");
	if (fx->seccomp >= 0)
		printf("seccomp:                     %s%s\n",
		       fx->seccomp == 0 ? "none" : fx->seccomp == 1 ? "strict" : "filter",
		       fx->no_new_privs == 1 ? " (no_new_privs)" : "");
	if (fx->unpriv_uffd >= 0)
		printf("vm.unprivileged_userfaultfd: %ld\n", fx->unpriv_uffd);
	else
		printf("vm.unprivileged_userfaultfd: unknown\n");
	if (fx->dev_exists)
		printf("/dev/userfaultfd:            %s %s:%s (%s for this process)\n",
		       fx->dev_mode, fx->dev_owner, fx->dev_group,
		       fx->dev_access ? "read/write" : "no access");
	else
		printf("/dev/userfaultfd:            does not exist\n");
	printf("transparent hugepages:       %s (defrag %s, shmem %s)\n",
	       fx->thp[0] ? fx->thp : "unknown",
	       fx->thp_defrag[0] ? fx->thp_defrag : "unknown",
	       fx->thp_shmem[0] ? fx->thp_shmem : "unknown");
	if (fx->nr_hugepages >= 0)
		printf("nr_hugepages:                %ld (%ld free, %ld kB each, hugetlbfs %s)\n",
		       fx->nr_hugepages, fx->huge_free, fx->huge_kb,
		       fx->hugetlbfs_mounted ? "mounted" : "not mounted");
	else
		printf("nr_hugepages:                unknown\n");
	if (fx->max_map_count >= 0)
		printf("vm.max_map_count:            %ld (this process: %ld mappings)\n",
		       fx->max_map_count, fx->map_count);
	else
		printf("vm.max_map_count:            unknown\n");

	if (fx->nworks) {
		printf("\nWhat works:\n");
		for (int i = 0; i < fx->nworks; i++)
			printf("  - %s\n", fx->works[i]);
	}
	if (fx->ndegrades) {
		printf("\nWhat degrades:\n");
		for (int i = 0; i < fx->ndegrades; i++)
			printf("  - %s\n", fx->degrades[i]);
	} else {
		printf("\nNothing degrades: every feature uhmm uses is available.\n");
	}
}

static void json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c == '\n')
			printf("\\n");
		else if (c == '\t')
			printf("\\t");
		else if (c < 0x20)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

static void json_bits(uint64_t mask, const char *const *names, size_t nnames)
{
	bool first = true;

	putchar('[');
	for (unsigned int i = 0; i < 64; i++) {
		char other[16];

		if (!(mask & (1ULL << i)))
			continue;
		if (!first)
			printf(", ");
		first = false;
		if (i < nnames && names[i]) {
			json_str(names[i]);
		} else {
			snprintf(other, sizeof(other), "bit%u", i);
			json_str(other);
		}
	}
	putchar(']');
}

static void json_long_or_null(long v)
{
	if (v >= 0)
		printf("%ld", v);
	else
		printf("null");
}

static void json_notes(const char (*list)[NOTE_LEN], int n)
{
	putchar('[');
	for (int i = 0; i < n; i++) {
		if (i)
			printf(", ");
		json_str(list[i]);
	}
	putchar(']');
}

static void print_json(const struct facts *fx)
{
	const struct uhmm_features *f = &fx->f;

	printf("{\"version\": ");
	json_str(uhmm_version());
	printf(", \"kernel\": ");
	json_str(fx->release);
	if (fx->feat_ret == 0) {
		printf(", \"error\": null");
		printf(", \"page_size\": %u", f->page_size);
		printf(", \"uffd\": {\"path\": ");
		json_str(uffd_path_name(f->uffd_path));
		printf(", \"error\": ");
		if (f->uffd_error)
			json_str(strerror(-f->uffd_error));
		else
			printf("null");
		printf(", \"errno\": %d", -f->uffd_error);
		printf(", \"features\": %ju, \"features_hex\": \"0x%jx\", \"feature_names\": ",
		       (uintmax_t)f->uffd_features, (uintmax_t)f->uffd_features);
		json_bits(f->uffd_features, uffd_feature_names, ARRAY_SIZE(uffd_feature_names));
		printf(", \"ioctls\": %ju, \"ioctls_hex\": \"0x%jx\", \"ioctl_names\": ",
		       (uintmax_t)f->uffd_ioctls, (uintmax_t)f->uffd_ioctls);
		json_bits(f->uffd_ioctls, uffd_ioctl_names, ARRAY_SIZE(uffd_ioctl_names));
		printf("}, \"flags\": {");
		for (size_t i = 0; i < ARRAY_SIZE(feat_flags); i++)
			printf("%s\"%s\": %s", i ? ", " : "", feat_flags[i].json,
			       f->flags & feat_flags[i].bit ? "true" : "false");
		printf("}");
	} else {
		printf(", \"error\": ");
		json_str(strerror(-fx->feat_ret));
		printf(", \"errno\": %d", -fx->feat_ret);
	}
	printf(", \"root\": %s, \"euid\": %u, \"user\": ",
	       fx->euid == 0 ? "true" : "false", (unsigned)fx->euid);
	json_str(fx->user);
	printf(", \"unprivileged_userfaultfd\": ");
	json_long_or_null(fx->unpriv_uffd);
	printf(", \"dev_userfaultfd\": ");
	if (fx->dev_exists) {
		printf("{\"mode\": ");
		json_str(fx->dev_mode);
		printf(", \"owner\": ");
		json_str(fx->dev_owner);
		printf(", \"group\": ");
		json_str(fx->dev_group);
		printf(", \"accessible\": %s}", fx->dev_access ? "true" : "false");
	} else {
		printf("null");
	}
	printf(", \"thp\": ");
	if (fx->thp[0])
		json_str(fx->thp);
	else
		printf("null");
	printf(", \"nr_hugepages\": ");
	json_long_or_null(fx->nr_hugepages);
	printf(", \"max_map_count\": ");
	json_long_or_null(fx->max_map_count);
	printf(", \"map_count\": ");
	json_long_or_null(fx->map_count);
	if (fx->have_caps)
		printf(", \"capabilities\": {\"cap_eff\": \"0x%llx\", \"sys_ptrace\": %s, \"sys_admin\": %s}",
		       (unsigned long long)fx->cap_eff,
		       has_cap(fx, CAP_SYS_PTRACE_BIT) ? "true" : "false",
		       has_cap(fx, CAP_SYS_ADMIN_BIT) ? "true" : "false");
	else
		printf(", \"capabilities\": null");
	printf(", \"seccomp\": ");
	json_long_or_null(fx->seccomp);
	printf(", \"no_new_privs\": ");
	json_long_or_null(fx->no_new_privs);
	printf(", \"thp_defrag\": ");
	if (fx->thp_defrag[0])
		json_str(fx->thp_defrag);
	else
		printf("null");
	printf(", \"thp_shmem\": ");
	if (fx->thp_shmem[0])
		json_str(fx->thp_shmem);
	else
		printf("null");
	printf(", \"hugetlb\": {\"total\": ");
	json_long_or_null(fx->huge_total);
	printf(", \"free\": ");
	json_long_or_null(fx->huge_free);
	printf(", \"page_kb\": ");
	json_long_or_null(fx->huge_kb);
	printf(", \"mounted\": %s}", fx->hugetlbfs_mounted ? "true" : "false");
	printf(", \"works\": ");
	json_notes((const char (*)[NOTE_LEN])fx->works, fx->nworks);
	printf(", \"degrades\": ");
	json_notes((const char (*)[NOTE_LEN])fx->degrades, fx->ndegrades);
	printf("}\n");
}

/* ------------------------------------------------------------------ */
/* Subcommands                                                          */
/* ------------------------------------------------------------------ */

int cmd_info(int argc, char **argv)
{
	static struct facts fx;
	bool json = false;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json")) {
			json = true;
		} else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			printf("usage: uhmm info [--json]\n");
			return 0;
		} else {
			fprintf(stderr, "uhmm info: unknown option '%s'\n", argv[i]);
			fprintf(stderr, "usage: uhmm info [--json]\n");
			return 2;
		}
	}
	gather(&fx);
	conclude(&fx);
	if (json)
		print_json(&fx);
	else
		print_plain(&fx);
	if (fx.feat_ret < 0) {
		fprintf(stderr, "uhmm: uhmm_features: %s\n", strerror(-fx.feat_ret));
		return 1;
	}
	return 0;
}
