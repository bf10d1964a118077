/* The row-range kernels of the banded (exact tiled) decode against the whole
 * tensor ops they stand in for: avq_group_norm_stats + avq_group_norm_rows
 * against avq_group_norm, avq_upsample2x_rows against avq_upsample2x and
 * avq_gather_rows against the input itself, for bands inside the image and
 * bands whose halo runs past its top or bottom (zero rows there), in f32 and
 * bf16, on the second sample of a batch; plus the messages for bad operands.
 * Built and run by tests/c/build.sh (also under ASan + UBSan).
 *
 *   tests/c/test_banded            run every test
 *   tests/c/test_banded NAME...    run the tests whose names contain NAME
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/plan.h"
#include "core/status.h"
#include "core/tensor.h"
#include "core/weight.h"
#include "ops/ops.h"

#include "check.h"

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;

/* Uniform in [-1, 1), this file's own deterministic sequence. */
static float frand(void) { return check_frand(&rng_state); }

static float *random_buffer(int64_t n, float offset) {
    float *p = malloc((size_t)n * sizeof *p);
    for (int64_t i = 0; i < n; i++) p[i] = frand() + offset;
    return p;
}

static avq_tensor ext4(int64_t n, int64_t c, int64_t h, int64_t w, float *data) {
    avq_tensor t = avq_tensor_4d(AVQ_F32, AVQ_PLAIN, n, c, h, w);
    t.data = data;
    return t;
}

/* ext (f32 NCHW) -> a new NHWC arena tensor of dtype dt. */
static avq_status import(avq_plan *p, const avq_tensor *ext, avq_dtype dt, avq_tensor *out) {
    AVQ_TRY(avq_plan_tensor(p, out, dt, AVQ_NHWC, 4, ext->dims));
    return avq_reorder(p, ext, out);
}

/* t (NHWC, arena) -> ext (f32 NCHW); releases t. */
static avq_status export(avq_plan *p, avq_tensor *t, avq_tensor *ext) {
    AVQ_TRY(avq_reorder(p, t, ext));
    avq_plan_release(p, t);
    return AVQ_OK;
}

enum { K_NORM, K_UP2, K_GATHER };

/* One whole op and one band of its row-range form on the same input. */
typedef struct band_ctx {
    int kind;
    avq_dtype dt;
    avq_tensor x, whole, band; /* f32 NCHW, caller's */
    avq_weight *g, *b;
    int64_t n, r0;
} band_ctx;

static avq_status band_forward(avq_plan *p, void *vctx) {
    band_ctx *c = vctx;
    avq_tensor x, whole, band, st;
    AVQ_TRY(import(p, &c->x, c->dt, &x));
    AVQ_TRY(avq_plan_tensor(p, &whole, c->dt, AVQ_NHWC, 4, c->whole.dims));
    AVQ_TRY(avq_plan_tensor(p, &band, c->dt, AVQ_NHWC, 4, c->band.dims));
    if (c->kind == K_NORM) {
        AVQ_TRY(avq_group_norm(p, &x, &whole, c->g, c->b, 8, 1e-6f, 1));
        AVQ_TRY(avq_plan_tensor(p, &st, AVQ_F32, AVQ_PLAIN, 3, DIMS(x.dims[0], 3, x.dims[1])));
        AVQ_TRY(avq_group_norm_stats(p, &x, &st, c->g, c->b, 8, 1e-6f));
        AVQ_TRY(avq_group_norm_rows(p, &x, &st, &band, c->n, c->r0, 1));
        avq_plan_release(p, &st);
    } else if (c->kind == K_UP2) {
        AVQ_TRY(avq_upsample2x(p, &x, &whole));
        AVQ_TRY(avq_upsample2x_rows(p, &x, &band, c->n, c->r0));
    } else {
        AVQ_TRY(avq_copy(p, &x, &whole));
        AVQ_TRY(avq_gather_rows(p, &x, &band, c->n, c->r0));
    }
    AVQ_TRY(export(p, &band, &c->band));
    AVQ_TRY(export(p, &whole, &c->whole));
    avq_plan_release(p, &x);
    return AVQ_OK;
}

/* Runs kind on x [2, C, H, W] and checks the band of `rows` rows from r0 of
 * sample 1: the whole op's rows, bit for bit, and zeros outside the image. */
static void check_band(int kind, avq_dtype dt, int64_t C, int64_t H, int64_t W, int64_t r0, int64_t rows) {
    const int64_t N = 2, up = kind == K_UP2 ? 2 : 1, Ho = up * H, Wo = up * W, n = 1;
    float *x = random_buffer(N * C * H * W, 3.f); /* a mean far from 0: the statistics must be two-pass */
    float *whole = calloc((size_t)(N * C * Ho * Wo), sizeof(float));
    float *band = malloc((size_t)(C * rows * Wo) * sizeof(float));
    for (int64_t i = 0; i < C * rows * Wo; i++) band[i] = NAN; /* every element must be written */
    float *gd = random_buffer(C, 0.f), *bd = random_buffer(C, 0.f);
    avq_weight g, b;
    avq_weight_init(&g, "norm.weight", AVQ_F32, 1, DIMS(C), gd);
    avq_weight_init(&b, "norm.bias", AVQ_F32, 1, DIMS(C), bd);
    band_ctx c = {kind, dt, ext4(N, C, H, W, x), ext4(N, C, Ho, Wo, whole), ext4(1, C, rows, Wo, band), &g, &b, n, r0};
    avq_plan *p;
    CHECK_OK(avq_plan_create(&p));
    CHECK_OK(avq_plan_run(p, band_forward, &c));
    int64_t wrong = 0, outside = 0;
    for (int64_t ch = 0; ch < C; ch++)
        for (int64_t j = 0; j < rows; j++)
            for (int64_t i = 0; i < Wo; i++) {
                float got = band[(ch * rows + j) * Wo + i];
                int64_t r = r0 + j;
                if (r < 0 || r >= Ho) {
                    outside++;
                    wrong += got != 0.f;
                } else {
                    float want = whole[((n * C + ch) * Ho + r) * Wo + i];
                    wrong += memcmp(&got, &want, sizeof got) != 0;
                }
            }
    static const char *names[] = {"group_norm_rows", "upsample2x_rows", "gather_rows"};
    CHECK(wrong == 0, "%s %s [%lld, %lld, %lld] rows %lld..%lld: %lld of %lld elements differ from the whole op's",
          names[kind], avq_dtype_name(dt), (long long)C, (long long)H, (long long)W, (long long)r0,
          (long long)(r0 + rows - 1), (long long)wrong, (long long)(C * rows * Wo));
    CHECK(outside == C * Wo * ((r0 < 0 ? -r0 : 0) + (r0 + rows > Ho ? r0 + rows - Ho : 0)), "outside count");
    avq_plan_destroy(p);
    avq_weight_release(&g);
    avq_weight_release(&b);
    free(x), free(whole), free(band), free(gd), free(bd);
}

/* Bands: the first (halo above the image), one inside, the last (halo
 * below), one taller than the image (both), and a single row. */
static void check_bands(int kind, avq_dtype dt) {
    const int64_t C = 40, H = 9, W = 7, Ho = kind == K_UP2 ? 2 * H : H;
    check_band(kind, dt, C, H, W, -1, 5);
    check_band(kind, dt, C, H, W, 3, 4);
    check_band(kind, dt, C, H, W, Ho - 3, 4);
    check_band(kind, dt, C, H, W, -1, Ho + 2);
    check_band(kind, dt, C, H, W, 2, 1);
}

static void test_group_norm_rows_equal_the_whole_group_norm_and_are_zero_past_the_edges(void) {
    check_bands(K_NORM, AVQ_F32);
    check_bands(K_NORM, AVQ_BF16);
    /* more channels than one chunk of the apply loop, odd width */
    check_band(K_NORM, AVQ_F32, 1056, 3, 5, -1, 5);
}

static void test_upsample2x_rows_equal_the_whole_upsample_and_are_zero_past_the_edges(void) {
    check_bands(K_UP2, AVQ_F32);
    check_bands(K_UP2, AVQ_BF16);
}

static void test_gather_rows_copy_the_input_rows_and_are_zero_past_the_edges(void) {
    check_bands(K_GATHER, AVQ_F32);
    check_bands(K_GATHER, AVQ_BF16);
}

/* ---- bad operands --------------------------------------------------------- */

typedef struct bad_ctx {
    int which;
    avq_weight *g, *b;
} bad_ctx;

static avq_status bad_forward(avq_plan *p, void *vctx) {
    bad_ctx *c = vctx;
    avq_tensor x = avq_tensor_4d(AVQ_F32, AVQ_NHWC, 2, 32, 4, 4);
    avq_tensor y = avq_tensor_4d(AVQ_F32, AVQ_NHWC, 1, 32, 3, 4);
    avq_tensor st = avq_tensor_make(AVQ_F32, AVQ_PLAIN, 3, DIMS(2, 3, 32));
    avq_tensor bad_st = avq_tensor_make(AVQ_F32, AVQ_PLAIN, 3, DIMS(2, 2, 32));
    avq_tensor wide = avq_tensor_4d(AVQ_F32, AVQ_NHWC, 1, 32, 3, 5);
    avq_tensor half = avq_tensor_4d(AVQ_BF16, AVQ_NHWC, 1, 32, 3, 4);
    switch (c->which) {
    case 0: return avq_group_norm_stats(p, &x, &bad_st, c->g, c->b, 8, 1e-6f);
    case 1: return avq_group_norm_rows(p, &x, &bad_st, &y, 0, 0, 1);
    case 2: return avq_group_norm_rows(p, &x, &st, &wide, 0, 0, 1);
    case 3: return avq_gather_rows(p, &x, &y, 2, 0);
    case 4: return avq_upsample2x_rows(p, &x, &y, 0, 0);
    default: return avq_gather_rows(p, &x, &half, 0, 0);
    }
}

static void test_bad_row_range_operands_are_reported(void) {
    static const struct {
        avq_status status;
        const char *text;
    } want[] = {
        {AVQ_ERR_SHAPE, "must be f32 plain [2, 3, 32]"},
        {AVQ_ERR_SHAPE, "must be f32 plain [2, 3, 32]"},
        {AVQ_ERR_SHAPE, "[1, 32, rows, 4]"},
        {AVQ_ERR_ARG, "sample 2 outside the batch of 2"},
        {AVQ_ERR_SHAPE, "[1, 32, rows, 8]"},
        {AVQ_ERR_SHAPE, "dtype"},
    };
    float gd[32], bd[32];
    for (int i = 0; i < 32; i++) gd[i] = 1.f, bd[i] = 0.f;
    avq_weight g, b;
    avq_weight_init(&g, "norm.weight", AVQ_F32, 1, DIMS(32), gd);
    avq_weight_init(&b, "norm.bias", AVQ_F32, 1, DIMS(32), bd);
    for (int i = 0; i < (int)(sizeof want / sizeof want[0]); i++) {
        bad_ctx c = {i, &g, &b};
        avq_plan *p;
        CHECK_OK(avq_plan_create(&p));
        avq_status st = avq_plan_run(p, bad_forward, &c);
        CHECK(st == want[i].status && strstr(avq_last_error(), want[i].text),
              "case %d: %s \"%s\", expected %s with \"%s\"", i, avq_status_name(st), avq_last_error(),
              avq_status_name(want[i].status), want[i].text);
        avq_plan_destroy(p);
    }
    avq_weight_release(&g);
    avq_weight_release(&b);
}

static const check_test tests[] = {
    TEST(test_group_norm_rows_equal_the_whole_group_norm_and_are_zero_past_the_edges),
    TEST(test_upsample2x_rows_equal_the_whole_upsample_and_are_zero_past_the_edges),
    TEST(test_gather_rows_copy_the_input_rows_and_are_zero_past_the_edges),
    TEST(test_bad_row_range_operands_are_reported),
};

CHECK_MAIN(tests)
