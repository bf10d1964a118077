/* What the C tests share: check counters and macros, dims literals and a
 * deterministic uniform generator. Include once per test file (it defines
 * file-level statics). */
#ifndef AVQ_TEST_CHECK_H
#define AVQ_TEST_CHECK_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/status.h"

/* A dims array literal: DIMS(2, 320, 64, 64). */
#define DIMS(...) ((const int64_t[]){__VA_ARGS__})

static int failures = 0;
static int checks = 0;

#define CHECK(cond, ...)                                         \
    do {                                                         \
        checks++;                                                \
        if (!(cond)) {                                           \
            failures++;                                          \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                        \
            fprintf(stderr, "\n");                               \
        }                                                        \
    } while (0)

#define CHECK_OK(expr)                                                                                       \
    do {                                                                                                     \
        avq_status check_ok_s_ = (expr);                                                                     \
        CHECK(check_ok_s_ == AVQ_OK, "%s -> %s: %s", #expr, avq_status_name(check_ok_s_), avq_last_error()); \
    } while (0)

/* Uniform in [-1, 1): xorshift64* on *state, deterministic across runs. */
static inline float check_frand(uint64_t *state) {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    uint64_t r = *state * 0x2545F4914F6CDD1Dull;
    return (float)((double)(r >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
}

/* A test table entry: TEST(test_name) inside a `static const check_test tests[]`. */
typedef struct check_test {
    const char *name;
    void (*fn)(void);
} check_test;
#define TEST(f) {#f, f}

/* Runs the tests whose names contain any argument (all without arguments),
 * prints one line per test and a summary; the exit status for main: 0 all
 * passed, 1 a check failed, 2 no test matched. */
static inline int check_run(const check_test *tests, size_t n, int argc, char **argv) {
    int ran = 0;
    for (size_t i = 0; i < n; i++) {
        int selected = argc < 2;
        for (int a = 1; a < argc; a++) selected |= strstr(tests[i].name, argv[a]) != NULL;
        if (!selected) continue;
        int before = failures;
        tests[i].fn();
        printf("%s %s\n", failures == before ? "ok  " : "FAIL", tests[i].name);
        ran++;
    }
    if (ran == 0) {
        fprintf(stderr, "no test matches the given names\n");
        return 2;
    }
    printf("%d tests, %d checks, %d failed\n", ran, checks, failures);
    return failures ? 1 : 0;
}

#define CHECK_MAIN(tests) \
    int main(int argc, char **argv) { return check_run(tests, sizeof tests / sizeof tests[0], argc, argv); }

#endif
