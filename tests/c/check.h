/* What the C tests share: check counters and macros, dims literals and a
 * deterministic uniform generator. Include once per test file (it defines
 * file-level statics). */
#ifndef AVQ_TEST_CHECK_H
#define AVQ_TEST_CHECK_H

#include <stdint.h>
#include <stdio.h>

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

#endif
