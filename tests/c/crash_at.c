/*
 * crash_at.c: an LD_PRELOAD library that kills its own process with SIGKILL at
 * an exact point of p11audit's writer, so that tests/faults.rs can reproduce
 * the crashes that `kill -9` at a random moment only hits by luck.
 *
 *   CRASH_AT_LOG=<audit log path>   the log; its state file is <log>.state
 *   CRASH_AT=before:N  SIGKILL on entry to the Nth write to the log (nothing of
 *                      that append is in the log; a new chain's first state is)
 *   CRASH_AT=after:N   SIGKILL right after the Nth write to the log returns (the
 *                      records of that append are in the log, the state update in
 *                      the mapped state file is not: the window of INTERNALS.md §1.3's
 *                      roll-forward). Both die holding the state file's mutex.
 *   CRASH_AT=link:N    SIGKILL on entry to the Nth link()/linkat() (a rotation:
 *                      the rotate record is in the old file, which has not been
 *                      renamed yet)
 *   CRASH_AT=rename:N  SIGKILL on entry to the Nth rename() (a rotation: the old
 *                      file has its new name, the new file is not at the path yet)
 *   CRASH_AT=renamed:N SIGKILL right after the Nth rename() (the new file is at the
 *                      path, the state still names the old file)
 *   CRASH_AT=torn:N    on the Nth write to the log: write the first half of the
 *                      buffer, then SIGKILL (a torn last line, as a kill during
 *                      a large write leaves one)
 *
 * Files are recognised by what /proc/self/fd/FD links to, so every other write
 * of the process (stdout, SoftHSM's files) passes through untouched.
 *
 * Build: cc -shared -fPIC tests/c/crash_at.c -o crash_at.so -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

enum mode { OFF, BEFORE, AFTER, LINK, RENAME, RENAMED, TORN };

static enum mode mode = OFF;
static long target;
static long seen;
static char log_path[PATH_MAX];

typedef ssize_t (*write_fn)(int, const void *, size_t);

/* The canonical path of `path`, which may not exist yet (a chain not started): then the
 * canonical directory plus the last component. */
static int canonical(const char *path, char *out)
{
    char dir[PATH_MAX], real_dir[PATH_MAX];
    const char *slash;
    if (realpath(path, out) != NULL)
        return 1;
    slash = strrchr(path, '/');
    if (slash == NULL || (size_t)(slash - path) >= sizeof dir)
        return 0;
    memcpy(dir, path, (size_t)(slash - path));
    dir[slash - path] = 0;
    if (realpath(slash == path ? "/" : dir, real_dir) == NULL)
        return 0;
    return snprintf(out, PATH_MAX, "%s%s", real_dir, slash) < PATH_MAX;
}

__attribute__((constructor)) static void crash_at_init(void)
{
    const char *spec = getenv("CRASH_AT");
    const char *log = getenv("CRASH_AT_LOG");
    if (spec == NULL || log == NULL || !canonical(log, log_path))
        return;
    if (strncmp(spec, "before:", 7) == 0) {
        mode = BEFORE;
        target = atol(spec + 7);
    } else if (strncmp(spec, "after:", 6) == 0) {
        mode = AFTER;
        target = atol(spec + 6);
    } else if (strncmp(spec, "rename:", 7) == 0) {
        mode = RENAME;
        target = atol(spec + 7);
    } else if (strncmp(spec, "renamed:", 8) == 0) {
        mode = RENAMED;
        target = atol(spec + 8);
    } else if (strncmp(spec, "link:", 5) == 0) {
        mode = LINK;
        target = atol(spec + 5);
    } else if (strncmp(spec, "torn:", 5) == 0) {
        mode = TORN;
        target = atol(spec + 5);
    }
}

static int fd_is(int fd, const char *want)
{
    char link[64], got[PATH_MAX];
    ssize_t n;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    n = readlink(link, got, sizeof got - 1);
    if (n < 0)
        return 0;
    got[n] = 0;
    return strcmp(got, want) == 0;
}

static void die_now(void)
{
    kill(getpid(), SIGKILL);
    for (;;)
        pause();
}

typedef int (*linkat_fn)(int, const char *, int, const char *, int);

int linkat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, int flags)
{
    linkat_fn real = (linkat_fn)dlsym(RTLD_NEXT, "linkat");
    if (mode == LINK && __atomic_add_fetch(&seen, 1, __ATOMIC_SEQ_CST) == target)
        die_now();
    return real(olddirfd, oldpath, newdirfd, newpath, flags);
}

typedef int (*rename_fn)(const char *, const char *);

int rename(const char *oldpath, const char *newpath)
{
    rename_fn real = (rename_fn)dlsym(RTLD_NEXT, "rename");
    int rc;
    if ((mode != RENAME && mode != RENAMED)
        || __atomic_add_fetch(&seen, 1, __ATOMIC_SEQ_CST) != target)
        return real(oldpath, newpath);
    if (mode == RENAME)
        die_now();
    rc = real(oldpath, newpath);
    die_now();
    return rc;
}

int link(const char *oldpath, const char *newpath)
{
    return linkat(AT_FDCWD, oldpath, AT_FDCWD, newpath, 0);
}

ssize_t write(int fd, const void *buf, size_t n)
{
    write_fn real = (write_fn)dlsym(RTLD_NEXT, "write");
    ssize_t done;
    size_t half;
    /* Only the modes that act on a log write count writes. */
    if ((mode != BEFORE && mode != AFTER && mode != TORN) || !fd_is(fd, log_path)
        || __atomic_add_fetch(&seen, 1, __ATOMIC_SEQ_CST) != target)
        return real(fd, buf, n);
    if (mode == BEFORE)
        die_now();
    if (mode == AFTER) {
        done = real(fd, buf, n);
        if (done == (ssize_t)n)
            die_now();
        return done;
    }
    /* TORN. Never stop right after a newline: the last line must be incomplete. */
    half = n / 2;
    if (half > 0 && ((const char *)buf)[half - 1] == '\n')
        half++;
    if (half > 0 && half < n)
        real(fd, buf, half);
    die_now();
    return -1; /* not reached */
}
