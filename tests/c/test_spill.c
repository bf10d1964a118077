/* The plan's spilled arena (avq_plan_set_spill, avq_plan_drop): an arena over
 * the budget is an unlinked file mapping whose dropped pages leave the
 * process (RssFile falls) and come back with their content; one within the
 * budget stays anonymous and a drop leaves it alone; the file is gone with
 * the buffers; a missing, in-memory or too small place is an AVQ_ERR_IO that
 * names the directory and the size. Built and run by tests/c/build.sh (also
 * under ASan + UBSan, which checks that nothing leaks).
 *
 *   tests/c/test_spill            run every test
 *   tests/c/test_spill NAME...    run the tests whose names contain NAME
 */
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "core/plan.h"
#include "core/status.h"
#include "core/tensor.h"

#include "check.h"

#define ARENA_FLOATS ((int64_t)16 << 20) /* 64 MiB */

/* A line of /proc/self/status in kB (-1 if absent). */
static long status_kb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t n = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, key, n) == 0 && line[n] == ':') v = strtol(line + n + 1, NULL, 10);
    if (f) fclose(f);
    return v;
}

/* 1 if a mapping of a spill file is in /proc/self/maps. */
static int spill_mapped(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[1024];
    int found = 0;
    while (f && fgets(line, sizeof line, f)) found |= strstr(line, "asymvq-arena-") != NULL;
    if (f) fclose(f);
    return found;
}

/* Number of entries in dir besides . and .. */
static int dir_entries(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    if (d) closedir(d);
    return n;
}

/* What one run of `fill_drop_read` saw. */
typedef struct run_ctx {
    long rss_before, rss_written, rss_dropped; /* RssFile, kB */
    int64_t mismatches;                        /* values that changed across the drop */
    int behind;                                /* write under a drop-behind thread (avq_plan_drop_behind_*) */
    int behind_started;                        /* begin gave a thread */
} run_ctx;

/* Allocates one arena tensor, writes a pattern, drops it, reads it back. */
static avq_status fill_drop_read(avq_plan *p, void *vctx) {
    run_ctx *c = vctx;
    avq_tensor t;
    AVQ_TRY(avq_plan_tensor(p, &t, AVQ_F32, AVQ_PLAIN, 1, DIMS(ARENA_FLOATS)));
    if (!avq_plan_building(p)) {
        float *x = t.data;
        c->rss_before = status_kb("RssFile");
        avq_drop_behind *d = NULL;
        if (c->behind) avq_plan_drop_behind_begin(p, x, (size_t)ARENA_FLOATS * sizeof(float), &d);
        c->behind_started = d != NULL;
        for (int64_t i = 0; i < ARENA_FLOATS; i++) x[i] = (float)(i % 1000003) * 0.5f;
        avq_plan_drop_behind_end(d);
        c->rss_written = status_kb("RssFile");
        avq_plan_drop(p, x, (size_t)ARENA_FLOATS * sizeof(float));
        c->rss_dropped = status_kb("RssFile");
        c->mismatches = 0;
        for (int64_t i = 0; i < ARENA_FLOATS; i++) c->mismatches += x[i] != (float)(i % 1000003) * 0.5f;
    }
    avq_plan_release(p, &t);
    return AVQ_OK;
}

/* A fresh directory on a disk (/var/tmp conventionally is one; /tmp may be tmpfs); the caller rmdirs it. */
static char dir_buf[64];
static const char *new_dir(void) {
    strcpy(dir_buf, "/var/tmp/avq-spill-test-XXXXXX");
    if (!mkdtemp(dir_buf)) {
        strcpy(dir_buf, "tests/c/bin/avq-spill-test-XXXXXX");
        if (!mkdtemp(dir_buf)) return NULL;
    }
    return dir_buf;
}

/* A new plan spilling into dir above budget (the caller destroys it); NULL after a failed check. */
static avq_plan *spilled_plan(const char *dir, size_t budget, int optional) {
    avq_plan *p = NULL;
    CHECK_OK(avq_plan_create(&p));
    if (!p) return NULL;
    avq_status st = avq_plan_set_spill(p, dir, budget, optional);
    CHECK(st == AVQ_OK, "avq_plan_set_spill(%s, %zu, %d): %s", dir, budget, optional, avq_last_error());
    if (st != AVQ_OK) {
        avq_plan_destroy(p);
        return NULL;
    }
    return p;
}

static void test_spilled_arena_drops_pages_and_keeps_content(void) {
    const char *dir = new_dir();
    CHECK(dir != NULL, "cannot make a directory for the spill file");
    if (!dir) return;
    avq_plan *p = spilled_plan(dir, 0, 0);
    if (!p) return;
    run_ctx c = {0};
    CHECK_OK(avq_plan_run(p, fill_drop_read, &c));
    const long mib64 = 64 << 10; /* kB */
    CHECK(avq_plan_spilled(p), "the arena over the budget is not a spill file");
    CHECK(c.mismatches == 0, "%lld values changed across the drop", (long long)c.mismatches);
    CHECK(c.rss_written - c.rss_before > mib64 * 9 / 10, "writing 64 MiB of the file raised RssFile by %ld kB only",
          c.rss_written - c.rss_before);
    CHECK(c.rss_written - c.rss_dropped > mib64 * 9 / 10, "the drop lowered RssFile by %ld kB of 64 MiB",
          c.rss_written - c.rss_dropped);
    CHECK(spill_mapped(), "no spill mapping in /proc/self/maps while the buffers are held");
    CHECK(dir_entries(dir) == 0, "the spill file has a name in %s (it must be unlinked at once)", dir);
    /* a second run replays into the same mapping */
    CHECK_OK(avq_plan_run(p, fill_drop_read, &c));
    CHECK(c.mismatches == 0, "second run: %lld values changed across the drop", (long long)c.mismatches);
    avq_plan_release_buffers(p);
    CHECK(!avq_plan_spilled(p) && !spill_mapped(), "the spill file is still mapped after avq_plan_release_buffers");
    CHECK_OK(avq_plan_run(p, fill_drop_read, &c)); /* released buffers come back as a file again */
    CHECK(avq_plan_spilled(p), "the arena is not a spill file after release and a new run");
    avq_plan_destroy(p);
    CHECK(!spill_mapped(), "the spill file is still mapped after avq_plan_destroy");
    CHECK(rmdir(dir) == 0, "the spill directory %s is not empty after destroy", dir);
}

static void test_drop_behind_thread_keeps_content_and_leaves_no_pages(void) {
    const char *dir = new_dir();
    CHECK(dir != NULL, "cannot make a directory for the spill file");
    if (!dir) return;
    avq_plan *p = spilled_plan(dir, 0, 0);
    if (!p) return;
    run_ctx c = {0};
    c.behind = 1;
    CHECK_OK(avq_plan_run(p, fill_drop_read, &c));
    CHECK(c.behind_started, "no drop-behind thread over a spilled arena");
    CHECK(c.mismatches == 0, "%lld values written under the drop-behind thread changed", (long long)c.mismatches);
    CHECK(c.rss_written - c.rss_before < 1024, "64 MiB written under the drop-behind thread left %ld kB resident",
          c.rss_written - c.rss_before);
    avq_plan_set_spill(p, NULL, 0, 0);
    CHECK_OK(avq_plan_run(p, fill_drop_read, &c));
    CHECK(!c.behind_started && c.mismatches == 0, "a drop-behind thread ran over an anonymous arena");
    avq_plan_destroy(p);
    rmdir(dir);
}

static void test_arena_within_budget_stays_anonymous(void) {
    const char *dir = new_dir();
    CHECK(dir != NULL, "cannot make a directory for the spill file");
    if (!dir) return;
    avq_plan *p = spilled_plan(dir, (size_t)1 << 30, 0);
    if (!p) return;
    run_ctx c = {0};
    CHECK_OK(avq_plan_run(p, fill_drop_read, &c));
    CHECK(!avq_plan_spilled(p) && !spill_mapped(), "a 64 MiB arena under a 1 GiB budget spilled");
    /* MADV_DONTNEED on anonymous memory would zero it: the drop must not happen */
    CHECK(c.mismatches == 0, "a drop on an anonymous arena changed %lld values", (long long)c.mismatches);
    /* a budget below the arena spills from the next run on */
    CHECK_OK(avq_plan_set_spill(p, dir, 1, 0));
    CHECK_OK(avq_plan_run(p, fill_drop_read, &c));
    CHECK(avq_plan_spilled(p), "lowering the budget under the arena did not spill it");
    CHECK_OK(avq_plan_set_spill(p, NULL, 0, 0));
    CHECK(!spill_mapped(), "turning spilling off left the file mapped");
    CHECK_OK(avq_plan_run(p, fill_drop_read, &c));
    CHECK(!avq_plan_spilled(p) && c.mismatches == 0, "turning spilling off did not bring an anonymous arena back");
    avq_plan_destroy(p);
    rmdir(dir);
}

/* One run in `dir` that must fail with AVQ_ERR_IO whose message holds every `want` string. */
static void expect_io_error(const char *dir, const char *want1, const char *want2) {
    avq_plan *p = spilled_plan(dir, 0, 0);
    if (!p) return;
    run_ctx c = {0};
    avq_status st = avq_plan_run(p, fill_drop_read, &c);
    const char *msg = avq_last_error();
    CHECK(st == AVQ_ERR_IO, "spilling into %s: %s (%s), expected AVQ_ERR_IO", dir, avq_status_name(st), msg);
    CHECK(strstr(msg, dir) && strstr(msg, want1) && strstr(msg, want2),
          "the message \"%s\" does not name %s, \"%s\" and \"%s\"", msg, dir, want1, want2);
    CHECK(!spill_mapped(), "a failed spill left a mapping");
    avq_plan_destroy(p);
}

static void test_missing_directory_is_an_io_error(void) {
    expect_io_error("/nonexistent-avq-spill-dir", "67108864 bytes", "No such file or directory");
}

static void test_full_disk_fails_when_the_arena_is_made(void) {
    /* A file size limit below the arena stands in for a full disk: posix_fallocate
     * fails (EFBIG) at allocation instead of a SIGBUS at the first write. */
    const char *dir = new_dir();
    CHECK(dir != NULL, "cannot make a directory for the spill file");
    if (!dir) return;
    struct rlimit old, small = {(rlim_t)1 << 20, (rlim_t)1 << 20};
    getrlimit(RLIMIT_FSIZE, &old);
    small.rlim_max = old.rlim_max;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    CHECK(setrlimit(RLIMIT_FSIZE, &small) == 0, "cannot lower RLIMIT_FSIZE");
    expect_io_error(dir, "cannot reserve 67108864 bytes", "File too large");
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, prev);
    CHECK(dir_entries(dir) == 0, "a failed spill left a file in %s", dir);
    rmdir(dir);
}

static void test_optional_spill_without_a_file_keeps_the_arena_in_memory(void) {
    avq_plan *p = spilled_plan("/nonexistent-avq-spill-dir", 0, 1);
    if (!p) return;
    run_ctx c = {0};
    CHECK_OK(avq_plan_run(p, fill_drop_read, &c));
    CHECK(!avq_plan_spilled(p) && !spill_mapped(), "an optional spill without a directory mapped something");
    CHECK(c.mismatches == 0, "%lld values changed in the in-memory arena", (long long)c.mismatches);
    avq_plan_destroy(p);
}

static void test_in_memory_directory_is_refused(void) {
    struct statfs fs;
    if (statfs("/dev/shm", &fs) != 0 || (unsigned long)fs.f_type != 0x01021994 || access("/dev/shm", W_OK) != 0) {
        printf("     (no writable tmpfs at /dev/shm: nothing to check)\n");
        return;
    }
    expect_io_error("/dev/shm", "in memory", "67108864 bytes");
}

static const check_test tests[] = {
    TEST(test_spilled_arena_drops_pages_and_keeps_content),
    TEST(test_drop_behind_thread_keeps_content_and_leaves_no_pages),
    TEST(test_arena_within_budget_stays_anonymous),
    TEST(test_missing_directory_is_an_io_error),
    TEST(test_full_disk_fails_when_the_arena_is_made),
    TEST(test_in_memory_directory_is_refused),
    TEST(test_optional_spill_without_a_file_keeps_the_arena_in_memory),
};

CHECK_MAIN(tests)
