/* The C core and ops without Python: status messages, tensors and bf16
 * rounding, the engine, plans (build once, replay, arena reuse and peak,
 * divergence and leak detection), and ops against naive C loops -- conv2d
 * (strides, asymmetric padding, fused SiLU and residuals), group norm, linear,
 * attention, nearest resize -- in f32 and bf16, plus the messages for bad
 * shapes. Built and run by tests/c/build.sh (also under ASan + UBSan).
 *
 *   tests/c/test_core            run every test
 *   tests/c/test_core NAME...    run the tests whose names contain NAME
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/engine.h"
#include "core/plan.h"
#include "core/status.h"
#include "core/tensor.h"
#include "core/weight.h"
#include "models/loader.h"
#include "models/unet.h"
#include "ops/ops.h"

#include "check.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

/* Uniform in [-1, 1): xorshift64*, deterministic across runs. */
static float frand(void) { return check_frand(&rng_state); }

static float *random_buffer(int64_t n) {
    float *p = malloc((size_t)n * sizeof *p);
    for (int64_t i = 0; i < n; i++) p[i] = frand();
    return p;
}

/* max|a - b| / max|b| */
static double rel_err(const float *a, const double *b, int64_t n) {
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > num || d != d) num = d != d ? INFINITY : d;
        if (fabs(b[i]) > den) den = fabs(b[i]);
    }
    return den > 0.0 ? num / den : num;
}

/* An f32 NCHW (or plain) tensor owned by the caller, as the bindings pass them. */
static avq_tensor ext_tensor(int ndim, const int64_t *dims, float *data) {
    avq_tensor t = avq_tensor_make(AVQ_F32, AVQ_PLAIN, ndim, dims);
    t.data = data;
    return t;
}

static avq_layout layout_for(const avq_tensor *t) { return t->ndim == 4 ? AVQ_NHWC : AVQ_PLAIN; }

/* ext (f32 plain) -> a new arena tensor of dtype dt in the internal layout. */
static avq_status import(avq_plan *p, const avq_tensor *ext, avq_dtype dt, avq_tensor *out) {
    AVQ_TRY(avq_plan_tensor(p, out, dt, layout_for(ext), ext->ndim, ext->dims));
    return avq_reorder(p, ext, out);
}

static double silu_d(double v) { return v / (1.0 + exp(-v)); }

/* ---- status, tensors, engine --------------------------------------------- */

static void test_status_message_is_per_call_and_named(void) {
    avq_status s = avq_error(AVQ_ERR_SHAPE, "tensor %s has %d dims", "x", 3);
    CHECK(s == AVQ_ERR_SHAPE, "avq_error returns its code");
    CHECK(strcmp(avq_last_error(), "tensor x has 3 dims") == 0, "message: %s", avq_last_error());
    CHECK(strcmp(avq_status_name(AVQ_ERR_DNNL), "AVQ_ERR_DNNL") == 0, "status name");
    CHECK(strcmp(avq_status_name((avq_status)999), "AVQ_ERR_UNKNOWN") == 0, "unknown status name");
    avq_clear_error();
    CHECK(avq_last_error()[0] == '\0', "cleared message");
}

static void test_tensor_shape_bytes_and_description(void) {
    avq_tensor t = avq_tensor_4d(AVQ_BF16, AVQ_NHWC, 2, 320, 64, 64);
    char buf[96];
    CHECK(avq_tensor_numel(&t) == 2 * 320 * 64 * 64, "numel");
    CHECK(avq_tensor_bytes(&t) == (size_t)2 * 320 * 64 * 64 * 2, "bytes");
    CHECK(strcmp(avq_tensor_str(&t, buf, sizeof buf), "[2, 320, 64, 64] bf16 nhwc") == 0, "str: %s", buf);
    int64_t rows, cols;
    CHECK(avq_tensor_rows_cols(&t, &rows, &cols) && rows == 2 * 64 * 64 && cols == 320, "nhwc as tokens");
    avq_tensor u = avq_tensor_make(AVQ_F32, AVQ_PLAIN, 3, DIMS(2, 77, 768));
    CHECK(avq_tensor_rows_cols(&u, &rows, &cols) && rows == 154 && cols == 768, "plain rows x cols");
    CHECK(u.arena_off == -1 && u.data == NULL, "fresh tensors have no storage");
    /* a tiny buffer still gets a terminated, truncated description */
    char small[8];
    avq_tensor_str(&t, small, sizeof small);
    CHECK(strlen(small) == 7, "truncated description: %s", small);
}

static void test_nhwc_memory_descriptor_has_channels_last_strides(void) {
    avq_tensor t = avq_tensor_4d(AVQ_F32, AVQ_NHWC, 2, 3, 4, 5);
    dnnl_memory_desc_t md;
    CHECK_OK(avq_tensor_md(&t, &md));
    const dnnl_dims_t *strides = NULL;
    dnnl_memory_desc_query(md, dnnl_query_strides, &strides);
    CHECK(strides && (*strides)[0] == 60 && (*strides)[1] == 1 && (*strides)[2] == 15 && (*strides)[3] == 3,
          "nhwc strides");
    CHECK(dnnl_memory_desc_get_size(md) == 2 * 3 * 4 * 5 * 4, "md size");
    dnnl_memory_desc_destroy(md);
    avq_tensor bad = avq_tensor_make(AVQ_F32, AVQ_NHWC, 3, DIMS(2, 3, 4));
    CHECK(avq_tensor_md(&bad, &md) == AVQ_ERR_INTERNAL, "3-D nhwc is refused");
}

static void test_bf16_rounds_to_nearest_even_and_keeps_nan(void) {
    CHECK(avq_f32_to_bf16(1.0f) == 0x3F80, "1.0");
    CHECK(avq_bf16_to_f32(avq_f32_to_bf16(1.0f + 1.0f / 256)) == 1.0f, "tie rounds to even (down)");
    CHECK(avq_bf16_to_f32(avq_f32_to_bf16(1.0f + 3.0f / 256)) == 1.0f + 4.0f / 256, "tie rounds to even (up)");
    CHECK(avq_bf16_to_f32(avq_f32_to_bf16(1.0f + 1.5f / 256)) == 1.0f + 2.0f / 256, "above the tie rounds up");
    CHECK(avq_bf16_to_f32(avq_f32_to_bf16(-2.5f)) == -2.5f, "exact values stay");
    float nan = NAN;
    CHECK(isnan(avq_bf16_to_f32(avq_f32_to_bf16(nan))), "NaN stays NaN");
    CHECK(isinf(avq_bf16_to_f32(avq_f32_to_bf16(INFINITY))), "inf stays inf");
    float big = 3.4e38f;
    CHECK(isinf(avq_bf16_to_f32(avq_f32_to_bf16(big))), "beyond bf16's max rounds to inf");
}

/* The row conversions (vectorised, one clone per ISA) give the scalar
 * conversion's bits for every kind of value, at every length and offset. */
static void test_row_conversions_equal_the_scalar_ones_bit_for_bit(void) {
    enum { N = 4099 };
    static float src[N], back[N];
    static uint16_t dst[N + 8];
    uint64_t st = 7;
    const uint32_t special[] = {0x00000000u, 0x80000000u, 0x00000001u, 0x007fffffu, 0x7f7fffffu, 0x7f800000u,
                                0xff800000u, 0x7fc00000u, 0x7f800001u, 0xffbfffffu, 0x3f808000u, 0x3f818000u,
                                0x3f808001u, 0x3f80ffffu, 0x7f7f8000u, 0x0000ffffu};
    for (int i = 0; i < N; i++) {
        uint32_t u = (uint32_t)(check_frand(&st) * 2147483647.0f) * 2u + (uint32_t)i;
        if (i < (int)(sizeof special / sizeof special[0])) u = special[i];
        memcpy(&src[i], &u, 4);
    }
    const int64_t lens[] = {0, 1, 15, 16, 17, 63, 64, 65, N - 3};
    for (size_t l = 0; l < sizeof lens / sizeof lens[0]; l++)
        for (int64_t off = 0; off < 3; off++) {
            memset(dst, 0xAB, sizeof dst);
            avq_store_row(dst, AVQ_BF16, off, src, lens[l]);
            int bad = 0;
            for (int64_t i = 0; i < lens[l]; i++) bad += dst[off + i] != avq_f32_to_bf16(src[i]);
            for (int64_t i = 0; i < off; i++) bad += dst[i] != 0xABAB;
            bad += dst[off + lens[l]] != 0xABAB;
            CHECK(bad == 0, "store_row length %lld offset %lld: %d elements differ from avq_f32_to_bf16",
                  (long long)lens[l], (long long)off, bad);
            avq_load_row(dst, AVQ_BF16, off, back, lens[l]);
            bad = 0;
            for (int64_t i = 0; i < lens[l]; i++) {
                const float want = avq_bf16_to_f32(dst[off + i]);
                bad += memcmp(&back[i], &want, 4) != 0;
            }
            CHECK(bad == 0, "load_row length %lld offset %lld: %d elements differ from avq_bf16_to_f32",
                  (long long)lens[l], (long long)off, bad);
        }
}

static void test_engine_info_and_threads(void) {
    avq_info info;
    CHECK_OK(avq_get_info(&info));
    CHECK(info.dnnl_major == 3, "oneDNN major %d", info.dnnl_major);
    CHECK(strcmp(info.version, AVQ_VERSION) == 0, "version");
    CHECK(info.isa && info.isa[0], "isa");
    /* one ISA decision: what info reports is what the kernels use; bf16 exactly from AVX-512 up */
    const avq_isa *isa = avq_isa_get();
    CHECK(isa == avq_isa_get(), "decided once");
    CHECK(strcmp(info.kernel_isa, avq_isa_level_name(isa->level)) == 0, "kernel isa %s", info.kernel_isa);
    CHECK(info.cpu_isa && info.cpu_isa[0], "cpu isa");
    CHECK(!isa->bf16_native || isa->level == AVQ_ISA_AVX512, "native bf16 implies AVX-512");
    CHECK(!isa->amx_bf16 || isa->bf16_native, "AMX implies native bf16");
    CHECK((avq_check_bf16() == AVQ_OK) == (isa->level == AVQ_ISA_AVX512), "bf16 allowed exactly at AVX-512");
    if (isa->level != AVQ_ISA_AVX512)
        CHECK(strstr(avq_last_error(), "fp32") != NULL, "says fp32: %s", avq_last_error());
    int n = avq_get_num_threads();
    CHECK(n >= 1, "threads %d", n);
    CHECK(avq_set_num_threads(0) == AVQ_ERR_ARG, "0 threads refused");
    CHECK(strstr(avq_last_error(), ">= 1") != NULL, "message: %s", avq_last_error());
    CHECK_OK(avq_set_num_threads(1));
    CHECK(avq_get_num_threads() == 1, "set to 1");
    CHECK_OK(avq_set_num_threads(n));
}

static void test_parked_openmp_team_starts_once_and_pushes_the_threads_past_the_cpus(void) {
    int first = 0, again = 0;
    CHECK_OK(avq_throttle_openmp_spinning(&first));
    CHECK_OK(avq_throttle_openmp_spinning(&again));
    CHECK(first >= 2 && again == first, "team %d, then %d", first, again);
    /* libgomp spins briefly while it manages more threads than CPUs: ours plus the team's minus its master */
    CHECK(avq_get_num_threads() + first - 1 > omp_get_num_procs(), "%d threads + team %d vs %d CPUs",
          avq_get_num_threads(), first, omp_get_num_procs());
}

/* ---- plans: build once, replay, arena ------------------------------------- */

typedef struct arena_ctx {
    int pass;
    int diverge; /* 1: the second run allocates differently */
    int leak;    /* 1: the build forgets to release a tensor */
    int fail;    /* 1: the build reports an error half-way */
    int64_t off[2][4];
    void *ptr[2][4];
} arena_ctx;

static avq_status arena_forward(avq_plan *p, void *vctx) {
    arena_ctx *c = vctx;
    int k = c->pass < 2 ? c->pass : 1;
    avq_tensor a, b, t3, d;
    AVQ_TRY(avq_plan_tensor(p, &a, AVQ_F32, AVQ_PLAIN, 1, DIMS(250))); /* 1000 B -> 1024 */
    AVQ_TRY(avq_plan_tensor(p, &b, AVQ_F32, AVQ_PLAIN, 1, DIMS(500))); /* 2000 B -> 2048 */
    c->off[k][0] = a.arena_off, c->ptr[k][0] = a.data;
    c->off[k][1] = b.arena_off, c->ptr[k][1] = b.data;
    if (!avq_plan_building(p)) {
        memset(a.data, 1, 1000); /* ASan checks these stay inside the arena */
        memset(b.data, 2, 2000);
    }
    if (c->fail && avq_plan_building(p)) return avq_error(AVQ_ERR_ARG, "requested failure");
    avq_plan_release(p, &a);
    int64_t n3 = (c->diverge && c->pass == 2) ? 300 : 100; /* 400 B -> 448, fits where a was */
    AVQ_TRY(avq_plan_tensor(p, &t3, AVQ_F32, AVQ_PLAIN, 1, DIMS(n3)));
    AVQ_TRY(avq_plan_tensor(p, &d, AVQ_F32, AVQ_PLAIN, 1, DIMS(200))); /* 800 B -> 832: after b */
    c->off[k][2] = t3.arena_off, c->ptr[k][2] = t3.data;
    c->off[k][3] = d.arena_off, c->ptr[k][3] = d.data;
    if (!avq_plan_building(p)) {
        memset(t3.data, 3, 400);
        memset(d.data, 4, 800);
    }
    avq_plan_release(p, &d);
    if (!c->leak) avq_plan_release(p, &t3);
    avq_plan_release(p, &b);
    c->pass++;
    return AVQ_OK;
}

static void test_plan_arena_is_first_fit_with_measured_peak(void) {
    avq_plan *p;
    arena_ctx c = {0};
    CHECK_OK(avq_plan_create(&p));
    CHECK(!avq_plan_built(p) && avq_plan_arena_bytes(p) == 0, "a new plan is empty");
    CHECK_OK(avq_plan_run(p, arena_forward, &c)); /* build + first run */
    CHECK(avq_plan_built(p), "built");
    CHECK(c.off[0][0] == 0 && c.off[0][1] == 1024, "a at 0, b after it: %lld %lld", (long long)c.off[0][0],
          (long long)c.off[0][1]);
    CHECK(c.off[0][2] == 0, "the third tensor reuses a's released block: %lld", (long long)c.off[0][2]);
    CHECK(c.off[0][3] == 3072, "the fourth does not fit the gap and goes after b: %lld", (long long)c.off[0][3]);
    CHECK(avq_plan_arena_bytes(p) == 3072 + 832, "peak %zu", avq_plan_arena_bytes(p));
    CHECK(c.ptr[0][0] == NULL, "no data while building");
    for (int i = 0; i < 4; i++) CHECK(c.off[1][i] == c.off[0][i], "run offset %d equals the build's", i);
    CHECK(c.ptr[1][0] != NULL && c.ptr[1][2] == c.ptr[1][0], "reuse is the same memory when running");
    CHECK((char *)c.ptr[1][3] - (char *)c.ptr[1][0] == 3072, "data = arena + offset");
    CHECK(avq_plan_num_steps(p) == 0, "kernels alone record no steps");
    CHECK_OK(avq_plan_run(p, arena_forward, &c)); /* pure replay */
    CHECK(c.pass == 3, "build + two runs");
    avq_plan_destroy(p);
}

static void test_plan_replay_that_diverges_from_the_build_fails(void) {
    avq_plan *p;
    arena_ctx c = {0};
    c.diverge = 1;
    CHECK_OK(avq_plan_create(&p));
    CHECK_OK(avq_plan_run(p, arena_forward, &c));
    avq_status s = avq_plan_run(p, arena_forward, &c);
    CHECK(s == AVQ_ERR_INTERNAL && strstr(avq_last_error(), "diverged"), "%s: %s", avq_status_name(s),
          avq_last_error());
    avq_plan_destroy(p);
}

static void test_plan_build_that_leaks_a_tensor_fails(void) {
    avq_plan *p;
    arena_ctx c = {0};
    c.leak = 1;
    CHECK_OK(avq_plan_create(&p));
    avq_status s = avq_plan_run(p, arena_forward, &c);
    CHECK(s == AVQ_ERR_INTERNAL && strstr(avq_last_error(), "leaked 1 arena tensors"), "%s: %s", avq_status_name(s),
          avq_last_error());
    CHECK(!avq_plan_built(p), "a failed build leaves the plan empty");
    avq_plan_destroy(p);
}

static void test_plan_failed_build_can_be_retried(void) {
    avq_plan *p;
    arena_ctx c = {0};
    c.fail = 1;
    CHECK_OK(avq_plan_create(&p));
    avq_status s = avq_plan_run(p, arena_forward, &c);
    CHECK(s == AVQ_ERR_ARG && strcmp(avq_last_error(), "requested failure") == 0, "error passes through");
    CHECK(!avq_plan_built(p) && avq_plan_arena_bytes(p) == 0, "empty after the failure");
    c.fail = 0;
    c.pass = 0;
    CHECK_OK(avq_plan_run(p, arena_forward, &c));
    CHECK(avq_plan_arena_bytes(p) == 3072 + 832, "built normally afterwards");
    avq_plan_destroy(p);
}

static void test_plan_arena_allocation_outside_a_pass_fails(void) {
    avq_plan *p;
    avq_tensor t;
    CHECK_OK(avq_plan_create(&p));
    CHECK(avq_plan_tensor(p, &t, AVQ_F32, AVQ_PLAIN, 1, DIMS(4)) == AVQ_ERR_INTERNAL, "outside a pass");
    avq_step *s;
    CHECK(avq_plan_step(p, AVQ_STEP_CONV, &s) == AVQ_ERR_INTERNAL, "step outside a pass");
    avq_plan_destroy(p);
    avq_plan_destroy(NULL);
}

/* ---- conv2d against naive loops ------------------------------------------- */

typedef struct conv_case {
    int64_t n, ci, co, h, w, k;
    avq_conv_params prm;
    int residual; /* 0 none, 1 full, 2 per [N, C, 1, 1] */
} conv_case;

typedef struct conv_ctx {
    avq_tensor x, y, add; /* external f32 NCHW */
    avq_weight *w, *b;
    avq_conv_params prm;
    int has_add;
    avq_dtype dt;
} conv_ctx;

static avq_status conv_forward(avq_plan *p, void *vctx) {
    conv_ctx *c = vctx;
    avq_tensor x, y, a;
    avq_conv_params prm = c->prm;
    AVQ_TRY(import(p, &c->x, c->dt, &x));
    if (c->has_add) AVQ_TRY(import(p, &c->add, c->dt, &a));
    prm.add = c->has_add ? &a : NULL;
    AVQ_TRY(avq_plan_tensor(p, &y, c->dt, AVQ_NHWC, 4, c->y.dims));
    AVQ_TRY(avq_conv2d(p, c->w, c->b, &x, &y, &prm));
    AVQ_TRY(avq_reorder(p, &y, &c->y));
    avq_plan_release(p, &y);
    if (c->has_add) avq_plan_release(p, &a);
    avq_plan_release(p, &x);
    return AVQ_OK;
}

static void naive_conv(const conv_case *cc, int64_t oh, int64_t ow, const float *x, const float *w, const float *b,
                       const float *add, double *out) {
    const avq_conv_params *q = &cc->prm;
    for (int64_t n = 0; n < cc->n; n++)
        for (int64_t o = 0; o < cc->co; o++)
            for (int64_t oy = 0; oy < oh; oy++)
                for (int64_t ox = 0; ox < ow; ox++) {
                    double s = b[o];
                    for (int64_t i = 0; i < cc->ci; i++)
                        for (int64_t ky = 0; ky < cc->k; ky++)
                            for (int64_t kx = 0; kx < cc->k; kx++) {
                                int64_t iy = oy * q->stride_h - q->pad_t + ky, ix = ox * q->stride_w - q->pad_l + kx;
                                if (iy < 0 || iy >= cc->h || ix < 0 || ix >= cc->w) continue;
                                s += (double)x[((n * cc->ci + i) * cc->h + iy) * cc->w + ix] *
                                     w[((o * cc->ci + i) * cc->k + ky) * cc->k + kx];
                            }
                    if (q->act == AVQ_ACT_SILU) s = silu_d(s);
                    if (q->act == AVQ_ACT_RELU) s = s > 0 ? s : 0;
                    if (cc->residual == 1) s += add[((n * cc->co + o) * oh + oy) * ow + ox];
                    if (cc->residual == 2) s += add[n * cc->co + o];
                    out[((n * cc->co + o) * oh + oy) * ow + ox] = s;
                }
}

static void check_conv_case(const char *name, const conv_case *cc, avq_dtype dt, double bound) {
    int64_t oh = (cc->h + cc->prm.pad_t + cc->prm.pad_b - cc->k) / cc->prm.stride_h + 1;
    int64_t ow = (cc->w + cc->prm.pad_l + cc->prm.pad_r - cc->k) / cc->prm.stride_w + 1;
    int64_t nx = cc->n * cc->ci * cc->h * cc->w, nw = cc->co * cc->ci * cc->k * cc->k, ny = cc->n * cc->co * oh * ow;
    int64_t na = cc->residual == 1 ? ny : cc->n * cc->co;
    float *x = random_buffer(nx), *wd = random_buffer(nw), *bd = random_buffer(cc->co), *ad = random_buffer(na);
    float *y = calloc((size_t)ny, sizeof *y);
    double *ref = malloc((size_t)ny * sizeof *ref);
    avq_weight w, b;
    avq_weight_init(&w, "test.weight", AVQ_F32, 4, DIMS(cc->co, cc->ci, cc->k, cc->k), wd);
    avq_weight_init(&b, "test.bias", AVQ_F32, 1, DIMS(cc->co), bd);
    conv_ctx c = {.w = &w, .b = &b, .prm = cc->prm, .has_add = cc->residual != 0, .dt = dt};
    c.x = ext_tensor(4, DIMS(cc->n, cc->ci, cc->h, cc->w), x);
    c.y = ext_tensor(4, DIMS(cc->n, cc->co, oh, ow), y);
    c.add = cc->residual == 1 ? ext_tensor(4, DIMS(cc->n, cc->co, oh, ow), ad)
                              : ext_tensor(4, DIMS(cc->n, cc->co, 1, 1), ad);
    avq_plan *p;
    CHECK_OK(avq_plan_create(&p));
    CHECK_OK(avq_plan_run(p, conv_forward, &c));
    naive_conv(cc, oh, ow, x, wd, bd, ad, ref);
    double e = rel_err(y, ref, ny);
    CHECK(e <= bound, "%s %s: error %.3g > %.3g", name, avq_dtype_name(dt), e, bound);
    /* replay with new input values: the plan binds the new data, nothing is rebuilt */
    size_t steps = avq_plan_num_steps(p);
    for (int64_t i = 0; i < nx; i++) x[i] = frand();
    CHECK_OK(avq_plan_run(p, conv_forward, &c));
    naive_conv(cc, oh, ow, x, wd, bd, ad, ref);
    e = rel_err(y, ref, ny);
    CHECK(e <= bound, "%s %s replayed: error %.3g > %.3g", name, avq_dtype_name(dt), e, bound);
    CHECK(avq_plan_num_steps(p) == steps, "replay adds no steps");
    avq_plan_destroy(p);
    avq_weight_release(&w);
    avq_weight_release(&b);
    free(x), free(wd), free(bd), free(ad), free(y), free(ref);
}

static void test_conv2d_matches_naive_loops(void) {
    conv_case cases[] = {
        {2, 5, 4, 7, 6, 3, {1, 1, 1, 1, 1, 1, AVQ_ACT_NONE, NULL, AVQ_CONV_AUTO}, 0}, /* 3x3 pad 1, odd channels */
        {2, 5, 4, 8, 6, 3, {2, 2, 0, 0, 1, 1, AVQ_ACT_NONE, NULL, AVQ_CONV_AUTO}, 0}, /* VAE downsample (0, 0, 1, 1) */
        {3, 6, 10, 9, 11, 4, {2, 2, 1, 1, 1, 1, AVQ_ACT_RELU, NULL, AVQ_CONV_AUTO}, 0}, /* cond encoder 4x4 s2 p1 */
        {2, 16, 16, 5, 5, 3, {1, 1, 1, 1, 1, 1, AVQ_ACT_SILU, NULL, AVQ_CONV_AUTO}, 1}, /* SiLU then residual */
        {2,
         16,
         32,
         6,
         4,
         3,
         {1, 1, 1, 1, 1, 1, AVQ_ACT_NONE, NULL, AVQ_CONV_AUTO},
         2}, /* time-embedding add [N, C, 1, 1] */
        {3, 8, 8, 4, 4, 1, {1, 1, 0, 0, 0, 0, AVQ_ACT_SILU, NULL, AVQ_CONV_AUTO}, 2}, /* 1x1, batch 3, per-sample add */
        {1, 3, 2, 1, 1, 3, {1, 1, 1, 1, 1, 1, AVQ_ACT_NONE, NULL, AVQ_CONV_AUTO}, 0}, /* 1x1 spatial input */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "conv case %zu", i);
        check_conv_case(name, &cases[i], AVQ_F32, 1e-5);
        if (avq_check_bf16() == AVQ_OK) check_conv_case(name, &cases[i], AVQ_BF16, 2e-2); /* bf16 from AVX-512 up */
    }
}

/* Winograd F(2x2, 3x3), forced on small shapes: edges, odd sizes, several tile chunks, fused post-ops. */
static void test_winograd_conv2d_matches_naive_loops(void) {
    const avq_conv_algo W = AVQ_CONV_WINOGRAD;
    conv_case cases[] = {
        {2, 5, 4, 7, 6, 3, {1, 1, 1, 1, 1, 1, AVQ_ACT_NONE, NULL, W}, 0},   /* odd height, odd channels */
        {1, 8, 8, 20, 21, 3, {1, 1, 1, 1, 1, 1, AVQ_ACT_NONE, NULL, W}, 0}, /* 110 tiles: 2 chunks, last padded */
        {2, 16, 16, 5, 5, 3, {1, 1, 1, 1, 1, 1, AVQ_ACT_SILU, NULL, W}, 1}, /* SiLU then residual */
        {2, 16, 32, 6, 4, 3, {1, 1, 1, 1, 1, 1, AVQ_ACT_NONE, NULL, W}, 2}, /* time-embedding add [N, C, 1, 1] */
        {1, 3, 2, 1, 1, 3, {1, 1, 1, 1, 1, 1, AVQ_ACT_NONE, NULL, W}, 0},   /* 1x1 spatial input */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "winograd case %zu", i);
        check_conv_case(name, &cases[i], AVQ_F32, 1e-5);
    }
}

static void test_conv2d_packs_weights_once_across_plans(void) {
    conv_case cc = {1, 4, 4, 5, 5, 3, {1, 1, 1, 1, 1, 1, AVQ_ACT_NONE, NULL, AVQ_CONV_AUTO}, 0};
    float *x = random_buffer(100), *wd = random_buffer(144), *bd = random_buffer(4), *y = calloc(100, sizeof *y);
    avq_weight w, b;
    avq_weight_init(&w, "w", AVQ_F32, 4, DIMS(4, 4, 3, 3), wd);
    avq_weight_init(&b, "b", AVQ_F32, 1, DIMS(4), bd);
    conv_ctx c = {.w = &w, .b = &b, .prm = cc.prm, .dt = AVQ_F32};
    c.x = ext_tensor(4, DIMS(1, 4, 5, 5), x);
    c.y = ext_tensor(4, DIMS(1, 4, 5, 5), y);
    avq_plan *p1, *p2;
    CHECK_OK(avq_plan_create(&p1));
    CHECK_OK(avq_plan_create(&p2));
    CHECK_OK(avq_plan_run(p1, conv_forward, &c));
    avq_packed *first = w.packed;
    CHECK_OK(avq_plan_run(p2, conv_forward, &c));
    CHECK(first != NULL && w.packed == first && first->next == NULL, "the second plan reuses the packed copy");
    avq_plan_destroy(p1);
    avq_plan_destroy(p2);
    avq_weight_release(&w);
    avq_weight_release(&b);
    CHECK(w.packed == NULL, "release frees the packed copies");
    free(x), free(wd), free(bd), free(y);
}

/* ---- a Winograd weight's source ---------------------------------------------- */

/* The last error names the weight and says its source was dropped. */
static int error_names(const char *weight) {
    const char *m = avq_last_error();
    return m && strstr(m, weight) && strstr(m, "no longer has its source");
}

/* One fresh plan of conv(x [n, ci, h, wd]) with w and prm into y (f32, NCHW). */
static avq_status run_conv_plan(avq_weight *w, avq_weight *b, avq_conv_params prm, int64_t n, int64_t h, int64_t wd,
                                float *x, float *y) {
    int64_t oh = h + prm.pad_t + prm.pad_b - 2, ow = wd + prm.pad_l + prm.pad_r - 2;
    conv_ctx c = {.w = w, .b = b, .prm = prm, .dt = AVQ_F32};
    c.x = ext_tensor(4, DIMS(n, w->dims[1], h, wd), x);
    c.y = ext_tensor(4, DIMS(n, w->dims[0], oh, ow), y);
    avq_plan *p;
    AVQ_TRY(avq_plan_create(&p));
    avq_status st = avq_plan_run(p, conv_forward, &c);
    avq_plan_destroy(p);
    return st;
}

static size_t packed_bytes(const avq_weight *w) {
    size_t n = 0;
    for (const avq_packed *p = w->packed; p; p = p->next) n += dnnl_memory_desc_get_size(p->md);
    return n;
}

static avq_conv_params pad1_algo(avq_conv_algo algo) {
    avq_conv_params prm = avq_conv_simple(1, 1);
    prm.algo = algo;
    return prm;
}

static void test_a_winograd_weight_keeps_only_u_and_gives_the_same_results_on_later_plans_and_shapes(void) {
    const int64_t co = 12, ci = 10; /* few channels: AUTO alone would take direct convolution */
    float *wd = random_buffer(co * ci * 9), *bd = random_buffer(co), *x = random_buffer(2 * ci * 9 * 11);
    float *y1 = calloc(2 * co * 9 * 11, 4), *y2 = calloc(2 * co * 9 * 11, 4);
    float *y3 = calloc(co * 5 * 4, 4), *yr = calloc(co * 5 * 4, 4);
    avq_weight w, ref, b;
    avq_weight_init(&w, "wino.w", AVQ_F32, 4, DIMS(co, ci, 3, 3), wd);
    avq_weight_init(&ref, "ref.w", AVQ_F32, 4, DIMS(co, ci, 3, 3), wd); /* borrowed: keeps its source */
    avq_weight_init(&b, "wino.b", AVQ_F32, 1, DIMS(co), bd);
    int64_t bad;
    CHECK_OK(avq_weight_take_copy(&w, AVQ_F32, &bad)); /* as a model's weights */
    const size_t own = (size_t)(co * ci * 9) * sizeof(float), live0 = avq_weight_live_bytes();
    CHECK_OK(run_conv_plan(&w, &b, pad1_algo(AVQ_CONV_WINOGRAD), 2, 9, 11, x, y1));
    CHECK(w.own == NULL && w.data == NULL && w.source_dropped, "the source is freed once U is made");
    CHECK(w.packed && !w.packed->next, "U is the only copy");
    const size_t u = dnnl_memory_desc_get_size(w.packed->md);
    CHECK(u > own && avq_weight_live_bytes() == live0 - own + u + packed_bytes(&b),
          "live bytes: U (%zu) replaces the source (%zu)", u, own);
    CHECK_OK(run_conv_plan(&w, &b, pad1_algo(AVQ_CONV_AUTO), 2, 9, 11, x, y2));
    CHECK(memcmp(y1, y2, (size_t)(2 * co * 9 * 11) * 4) == 0, "a second plan (AUTO) gives the same bits");
    CHECK_OK(run_conv_plan(&w, &b, pad1_algo(AVQ_CONV_AUTO), 1, 5, 4, x, y3));
    CHECK_OK(run_conv_plan(&ref, &b, pad1_algo(AVQ_CONV_WINOGRAD), 1, 5, 4, x, yr));
    CHECK(memcmp(y3, yr, (size_t)(co * 5 * 4) * 4) == 0,
          "another shape takes Winograd too and gives the bits of a weight that kept its source");
    CHECK(avq_weight_live_bytes() == live0 - own + packed_bytes(&w) + packed_bytes(&ref) + packed_bytes(&b),
          "the source stays freed: live bytes are the packed copies alone");
    avq_weight_release(&w);
    avq_weight_release(&ref);
    avq_weight_release(&b);
    free(wd), free(bd), free(x), free(y1), free(y2), free(y3), free(yr);
}

static void test_auto_decides_once_per_weight_so_earlier_plans_replay_as_built(void) {
    const int64_t co = 128, ci = 128; /* direct below 2048 tiles, Winograd from there (min_tiles) */
    float *wd = random_buffer(co * ci * 9), *x = random_buffer(2 * ci * 64 * 64), *y = calloc(2 * co * 64 * 64, 4);
    float *small = calloc(co * 4 * 4, 4), *again = calloc(co * 4 * 4, 4);
    avq_weight w;
    avq_weight_init(&w, "once.w", AVQ_F32, 4, DIMS(co, ci, 3, 3), wd);
    int64_t bad;
    CHECK_OK(avq_weight_take_copy(&w, AVQ_F32, &bad));
    conv_ctx c = {.w = &w, .b = NULL, .prm = pad1_algo(AVQ_CONV_AUTO), .dt = AVQ_F32};
    c.x = ext_tensor(4, DIMS(1, ci, 4, 4), x);
    c.y = ext_tensor(4, DIMS(1, co, 4, 4), small);
    avq_plan *p;
    CHECK_OK(avq_plan_create(&p));
    CHECK_OK(avq_plan_run(p, conv_forward, &c)); /* 4 tiles: direct */
    CHECK(w.wino_auto == -1 && w.origin != NULL, "the first shape decides: direct");
    /* 2048 tiles would take Winograd on a fresh weight; this one stays direct */
    CHECK_OK(run_conv_plan(&w, NULL, pad1_algo(AVQ_CONV_AUTO), 2, 64, 64, x, y));
    CHECK(w.wino_auto == -1 && w.packed && !w.packed->next, "still one direct copy");
    /* forced Winograd derives U from the direct copy and keeps both (a plan holds that copy) */
    CHECK_OK(run_conv_plan(&w, NULL, pad1_algo(AVQ_CONV_WINOGRAD), 2, 64, 64, x, y));
    CHECK(w.origin != NULL && w.packed->next != NULL, "U beside the direct copy");
    c.y.data = again;
    CHECK_OK(avq_plan_run(p, conv_forward, &c));
    CHECK(memcmp(small, again, (size_t)(co * 4 * 4) * 4) == 0, "the first plan replays as built");
    avq_plan_destroy(p);
    avq_weight_release(&w);
    free(wd), free(x), free(y), free(small), free(again);
}

static void test_a_conv_that_needs_the_dropped_source_of_a_winograd_weight_fails_naming_it(void) {
    const int64_t co = 6, ci = 5;
    float *wd = random_buffer(co * ci * 9), *x = random_buffer(ci * 7 * 7), *y = calloc(co * 7 * 7, 4);
    avq_weight w;
    avq_weight_init(&w, "dropped.w", AVQ_F32, 4, DIMS(co, ci, 3, 3), wd);
    int64_t bad;
    CHECK_OK(avq_weight_take_copy(&w, AVQ_F32, &bad));
    CHECK_OK(run_conv_plan(&w, NULL, pad1_algo(AVQ_CONV_WINOGRAD), 1, 7, 7, x, y));
    /* Only a C caller can get here: models pass AUTO and pad 1 to their 3x3 stride-1 convs (or ask
     * avq_conv2d_auto_winograd first), and the ops binding's weights are borrowed. */
    CHECK(run_conv_plan(&w, NULL, pad1_algo(AVQ_CONV_DIRECT), 1, 7, 7, x, y) == AVQ_ERR_ARG && error_names("dropped.w"),
          "explicit direct: %s", avq_last_error());
    avq_conv_params pad0 = avq_conv_simple(1, 0); /* AUTO, but Winograd does not apply */
    CHECK(run_conv_plan(&w, NULL, pad0, 1, 7, 7, x, y) == AVQ_ERR_ARG && error_names("dropped.w"), "no padding: %s",
          avq_last_error());
    CHECK(run_conv_plan(&w, NULL, pad1_algo(AVQ_CONV_AUTO), 1, 7, 7, x, y) == AVQ_OK, "Winograd still runs");
    avq_weight_release(&w);
    free(wd), free(x), free(y);
}

/* ---- group norm -------------------------------------------------------------- */

typedef struct gn_ctx {
    avq_tensor x, y;
    avq_weight *g, *b;
    int groups, silu;
    float eps;
    avq_dtype dt;
} gn_ctx;

static avq_status gn_forward(avq_plan *p, void *vctx) {
    gn_ctx *c = vctx;
    avq_tensor x, y;
    AVQ_TRY(import(p, &c->x, c->dt, &x));
    AVQ_TRY(avq_plan_tensor(p, &y, c->dt, layout_for(&c->y), c->y.ndim, c->y.dims));
    AVQ_TRY(avq_group_norm(p, &x, &y, c->g, c->b, c->groups, c->eps, c->silu));
    AVQ_TRY(avq_reorder(p, &y, &c->y));
    avq_plan_release(p, &y);
    avq_plan_release(p, &x);
    return AVQ_OK;
}

static void check_group_norm(int64_t n, int64_t ch, int64_t h, int64_t w, int groups, float eps, int silu, float shift,
                             avq_dtype dt, double bound) {
    int64_t hw = h * w, total = n * ch * hw, cg = ch / groups;
    float *x = random_buffer(total), *gd = random_buffer(ch), *bd = random_buffer(ch), *y = calloc((size_t)total, 4);
    double *ref = malloc((size_t)total * sizeof *ref);
    for (int64_t i = 0; i < total; i++) x[i] = x[i] * 2 + shift;
    for (int64_t g = 0; g < n * groups; g++) {
        double s = 0, q = 0;
        int64_t base = g * cg * hw; /* NCHW: a group is cg consecutive channel planes */
        for (int64_t i = 0; i < cg * hw; i++) s += x[base + i];
        double mean = s / (double)(cg * hw);
        for (int64_t i = 0; i < cg * hw; i++) q += (x[base + i] - mean) * (x[base + i] - mean);
        double rstd = 1.0 / sqrt(q / (double)(cg * hw) + eps);
        for (int64_t i = 0; i < cg * hw; i++) {
            int64_t c = (g % groups) * cg + i / hw;
            double v = (x[base + i] - mean) * rstd * gd[c] + bd[c];
            ref[base + i] = silu ? silu_d(v) : v;
        }
    }
    avq_weight g, b;
    avq_weight_init(&g, "norm.weight", AVQ_F32, 1, DIMS(ch), gd);
    avq_weight_init(&b, "norm.bias", AVQ_F32, 1, DIMS(ch), bd);
    gn_ctx c = {.g = &g, .b = &b, .groups = groups, .silu = silu, .eps = eps, .dt = dt};
    int64_t dims[4] = {n, ch, h, w};
    c.x = ext_tensor(4, dims, x);
    c.y = ext_tensor(4, dims, y);
    avq_plan *p;
    CHECK_OK(avq_plan_create(&p));
    CHECK_OK(avq_plan_run(p, gn_forward, &c));
    double e = rel_err(y, ref, total);
    CHECK(e <= bound, "group norm [%lld, %lld, %lld, %lld] / %d %s: error %.3g > %.3g", (long long)n, (long long)ch,
          (long long)h, (long long)w, groups, avq_dtype_name(dt), e, bound);
    avq_plan_destroy(p);
    free(x), free(gd), free(bd), free(y), free(ref);
}

static void test_group_norm_matches_naive_loops(void) {
    check_group_norm(2, 64, 5, 3, 32, 1e-5f, 0, 0.f, AVQ_F32, 1e-5);
    check_group_norm(2, 64, 5, 3, 32, 1e-6f, 1, 0.f, AVQ_F32, 1e-5);
    check_group_norm(3, 96, 1, 1, 32, 1e-5f, 1, 0.f, AVQ_F32, 1e-5); /* 1x1 spatial, 3 channels/group */
    check_group_norm(1, 40, 4, 4, 8, 1e-6f, 0, 20.f, AVQ_F32, 1e-5); /* large mean: two-pass statistics */
    check_group_norm(2, 64, 5, 3, 32, 1e-5f, 1, 0.f, AVQ_BF16, 1e-2);
}

/* ---- linear and attention ------------------------------------------------------ */

typedef struct lin_ctx {
    avq_tensor x, y;
    avq_weight *w, *b;
    avq_act act;
    avq_dtype dt;
} lin_ctx;

static avq_status lin_forward(avq_plan *p, void *vctx) {
    lin_ctx *c = vctx;
    avq_tensor x, y;
    AVQ_TRY(import(p, &c->x, c->dt, &x));
    AVQ_TRY(avq_plan_tensor(p, &y, c->dt, AVQ_PLAIN, c->y.ndim, c->y.dims));
    AVQ_TRY(avq_linear(p, c->w, c->b, &x, &y, c->act, NULL, NULL));
    AVQ_TRY(avq_reorder(p, &y, &c->y));
    avq_plan_release(p, &y);
    avq_plan_release(p, &x);
    return AVQ_OK;
}

static void test_linear_matches_naive_loops(void) {
    const int64_t rows = 7, k = 13, n = 21;
    float *x = random_buffer(rows * k), *wd = random_buffer(n * k), *bd = random_buffer(n);
    float *y = calloc((size_t)(rows * n), 4);
    double ref[7 * 21];
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < n; j++) {
            double s = bd[j];
            for (int64_t i = 0; i < k; i++) s += (double)x[r * k + i] * wd[j * k + i];
            ref[r * n + j] = 0.5 * s * (1.0 + erf(s / sqrt(2.0)));
        }
    avq_weight w, b;
    avq_weight_init(&w, "fc.weight", AVQ_F32, 2, DIMS(n, k), wd);
    avq_weight_init(&b, "fc.bias", AVQ_F32, 1, DIMS(n), bd);
    for (int d = 0; d < (avq_check_bf16() == AVQ_OK ? 2 : 1); d++) { /* bf16 from AVX-512 up */
        lin_ctx c = {.w = &w, .b = &b, .act = AVQ_ACT_GELU, .dt = d ? AVQ_BF16 : AVQ_F32};
        c.x = ext_tensor(2, DIMS(rows, k), x);
        c.y = ext_tensor(2, DIMS(rows, n), y);
        avq_plan *p;
        CHECK_OK(avq_plan_create(&p));
        CHECK_OK(avq_plan_run(p, lin_forward, &c));
        double e = rel_err(y, ref, rows * n), bound = d ? 1e-2 : 1e-5;
        CHECK(e <= bound, "linear %s: error %.3g", avq_dtype_name(c.dt), e);
        avq_plan_destroy(p);
    }
    avq_weight_release(&w);
    avq_weight_release(&b);
    free(x), free(wd), free(bd), free(y);
}

static void test_an_owned_weight_copy_does_not_depend_on_its_source(void) {
    float src[6] = {1.0f, -2.0f, 3.5f, 0.25f, 1e-3f, 7.0f};
    avq_weight w;
    avq_weight_init(&w, "w", AVQ_F32, 2, DIMS(2, 3), src);
    int64_t bad = -1;
    CHECK_OK(avq_weight_take_copy(&w, AVQ_F32, &bad));
    CHECK(bad == 0, "no NaN/Inf counted: %lld", (long long)bad);
    CHECK(w.own && w.data == w.own && w.data != (const void *)src, "the weight reads its own buffer");
    for (int i = 0; i < 6; i++) src[i] = -99.0f;
    CHECK(((const float *)w.data)[2] == 3.5f && w.dtype == AVQ_F32, "the copy keeps the old values in f32");
    avq_weight view = avq_weight_rows(&w, 1, 1);
    CHECK(view.own == NULL && ((const float *)view.data)[0] == 0.25f, "a row view borrows the copy");
    avq_weight_release(&view);
    avq_weight_release(&w);
    CHECK(w.own == NULL && w.data == NULL, "release frees the copy");
}

static avq_status double_it(const avq_weight *w, float *dst, void *ctx) {
    (void)ctx;
    for (int64_t i = 0; i < avq_weight_numel(w); i++) dst[i] = 2.0f * ((const float *)w->data)[i];
    return AVQ_OK;
}

static void test_the_first_packed_copy_replaces_the_source_and_later_copies_are_made_from_it(void) {
    float src[12];
    for (int i = 0; i < 12; i++) src[i] = (float)i - 5.5f;
    avq_weight w;
    avq_weight_init(&w, "w", AVQ_F32, 2, DIMS(3, 4), src);
    int64_t bad;
    CHECK_OK(avq_weight_take_copy(&w, AVQ_F32, &bad));
    dnnl_memory_desc_t ab, ba;
    dnnl_dims_t d = {3, 4};
    CHECK(dnnl_memory_desc_create_with_tag(&ab, 2, d, dnnl_f32, dnnl_ab) == dnnl_success, "md ab");
    CHECK(dnnl_memory_desc_create_with_tag(&ba, 2, d, dnnl_f32, dnnl_ba) == dnnl_success, "md ba");
    dnnl_memory_t m1, m2, m3;
    CHECK_OK(avq_weight_packed(&w, ab, ab, &m1));
    CHECK(w.data == NULL && w.own == NULL && w.origin != NULL, "the packed copy is now the only one");
    CHECK_OK(avq_weight_packed(&w, ab, ba, &m2));
    float *t = NULL;
    dnnl_memory_get_data_handle(m2, (void **)&t);
    int ok = 1;
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++) ok = ok && t[c * 3 + r] == src[r * 4 + c];
    CHECK(ok, "a second layout is reordered from the first copy");
    dnnl_memory_desc_t ab16;
    CHECK(dnnl_memory_desc_create_with_tag(&ab16, 2, d, dnnl_bf16, dnnl_ab) == dnnl_success, "md ab bf16");
    CHECK_OK(avq_weight_packed_derived(&w, ab, double_it, NULL, ab16, &m3));
    uint16_t *h = NULL;
    dnnl_memory_get_data_handle(m3, (void **)&h);
    ok = 1;
    for (int i = 0; i < 12; i++) ok = ok && avq_bf16_to_f32(h[i]) == 2.0f * src[i];
    CHECK(ok, "a derived copy reads the source back");
    CHECK(w.data == NULL, "and the source is dropped again");
    dnnl_memory_desc_destroy(ab);
    dnnl_memory_desc_destroy(ba);
    dnnl_memory_desc_destroy(ab16);
    avq_weight_release(&w);
}

static avq_status negate_it(const avq_weight *w, float *dst, void *ctx) {
    (void)ctx;
    for (int64_t i = 0; i < avq_weight_numel(w); i++) dst[i] = -((const float *)w->data)[i];
    return AVQ_OK;
}

static void test_a_dropped_source_leaves_copies_of_the_kept_transform_only(void) {
    float src[12];
    for (int i = 0; i < 12; i++) src[i] = (float)i * 0.37f - 2.1f;
    avq_weight w;
    avq_weight_init(&w, "kept.w", AVQ_F32, 2, DIMS(3, 4), src);
    int64_t bad;
    CHECK_OK(avq_weight_take_copy(&w, AVQ_F32, &bad));
    dnnl_memory_desc_t ab, ba, ab16;
    dnnl_dims_t d = {3, 4};
    CHECK(dnnl_memory_desc_create_with_tag(&ab, 2, d, dnnl_f32, dnnl_ab) == dnnl_success, "md ab");
    CHECK(dnnl_memory_desc_create_with_tag(&ba, 2, d, dnnl_f32, dnnl_ba) == dnnl_success, "md ba");
    CHECK(dnnl_memory_desc_create_with_tag(&ab16, 2, d, dnnl_bf16, dnnl_ab) == dnnl_success, "md ab bf16");
    dnnl_memory_t m;
    CHECK(avq_weight_drop_source(&w) == 0 && w.own != NULL, "nothing derived yet: the source stays");
    CHECK_OK(avq_weight_packed_derived(&w, ab, double_it, NULL, ab, &m));
    const size_t before = avq_weight_live_bytes();
    CHECK(avq_weight_drop_source(&w) == 1, "the source is dropped");
    CHECK(w.own == NULL && w.data == NULL && w.source_dropped, "no source is left");
    CHECK(avq_weight_live_bytes() == before - sizeof src, "live bytes drop by the source's %zu", sizeof src);
    CHECK(avq_weight_has_derived(&w, double_it) && !avq_weight_has_derived(&w, negate_it), "the kept transform");
    /* double_it would read the NULL source: these copies come from the kept one */
    CHECK_OK(avq_weight_packed_derived(&w, ab, double_it, NULL, ba, &m));
    float *t = NULL;
    dnnl_memory_get_data_handle(m, (void **)&t);
    int ok = 1;
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++) ok = ok && t[c * 3 + r] == 2.0f * src[r * 4 + c];
    CHECK(ok, "another layout of the transform is reordered from the kept copy");
    CHECK_OK(avq_weight_packed_derived(&w, ab, double_it, NULL, ab16, &m));
    uint16_t *h = NULL;
    dnnl_memory_get_data_handle(m, (void **)&h);
    ok = 1;
    for (int i = 0; i < 12; i++) ok = ok && h[i] == avq_f32_to_bf16(2.0f * src[i]);
    CHECK(ok, "a bf16 copy rounds the f32 one once, as a fresh derive does");
    CHECK(avq_weight_packed(&w, ab, ab, &m) == AVQ_ERR_ARG && error_names("kept.w"), "a plain copy: %s",
          avq_last_error());
    CHECK(avq_weight_packed_derived(&w, ab, negate_it, NULL, ab, &m) == AVQ_ERR_ARG && error_names("kept.w"),
          "another transform: %s", avq_last_error());
    avq_weight_release(&w);

    /* a bf16 transform cannot give back the f32 one */
    avq_weight v;
    avq_weight_init(&v, "narrow.w", AVQ_F32, 2, DIMS(3, 4), src);
    CHECK_OK(avq_weight_take_copy(&v, AVQ_F32, &bad));
    CHECK_OK(avq_weight_packed_derived(&v, ab, double_it, NULL, ab16, &m));
    CHECK(avq_weight_drop_source(&v) == 1, "dropped");
    CHECK(avq_weight_packed_derived(&v, ab, double_it, NULL, ba, &m) == AVQ_ERR_ARG && error_names("narrow.w"),
          "f32 from bf16: %s", avq_last_error());
    avq_weight_release(&v);
    dnnl_memory_desc_destroy(ab);
    dnnl_memory_desc_destroy(ba);
    dnnl_memory_desc_destroy(ab16);
}

static void test_only_an_owned_unviewed_source_not_yet_replaced_is_dropped(void) {
    float src[12] = {0};
    dnnl_memory_desc_t ab, ba;
    dnnl_dims_t d = {3, 4};
    CHECK(dnnl_memory_desc_create_with_tag(&ab, 2, d, dnnl_f32, dnnl_ab) == dnnl_success, "md ab");
    CHECK(dnnl_memory_desc_create_with_tag(&ba, 2, d, dnnl_f32, dnnl_ba) == dnnl_success, "md ba");
    dnnl_memory_t m;
    int64_t bad;
    avq_weight borrowed, viewed, packed;
    avq_weight_init(&borrowed, "borrowed", AVQ_F32, 2, DIMS(3, 4), src); /* the ops binding's weights */
    CHECK_OK(avq_weight_packed_derived(&borrowed, ab, double_it, NULL, ba, &m));
    CHECK(avq_weight_drop_source(&borrowed) == 0 && borrowed.data == src, "a borrowed source stays");
    avq_weight_init(&viewed, "viewed", AVQ_F32, 2, DIMS(3, 4), src);
    CHECK_OK(avq_weight_take_copy(&viewed, AVQ_F32, &bad));
    avq_weight row = avq_weight_rows(&viewed, 1, 1);
    CHECK_OK(avq_weight_packed_derived(&viewed, ab, double_it, NULL, ba, &m));
    CHECK(avq_weight_drop_source(&viewed) == 0 && viewed.own && row.data == (const float *)viewed.data + 4,
          "a source its row views read stays");
    avq_weight_init(&packed, "packed", AVQ_F32, 2, DIMS(3, 4), src);
    CHECK_OK(avq_weight_take_copy(&packed, AVQ_F32, &bad));
    CHECK_OK(avq_weight_packed(&packed, ab, ab, &m)); /* becomes `origin`, which plans hold */
    CHECK_OK(avq_weight_packed_derived(&packed, ab, double_it, NULL, ba, &m));
    CHECK(avq_weight_drop_source(&packed) == 0 && packed.origin != NULL, "a source replaced by `origin` stays");
    CHECK_OK(avq_weight_packed(&packed, ab, ab, &m));
    avq_weight_release(&row);
    avq_weight_release(&borrowed);
    avq_weight_release(&viewed);
    avq_weight_release(&packed);
    dnnl_memory_desc_destroy(ab);
    dnnl_memory_desc_destroy(ba);
}

static void test_a_bf16_store_narrows_f32_weights_like_a_reorder(void) {
    float src[4] = {1.0f + 1.0f / 256, 1.0f + 3.0f / 256, -2.5f, 3.0e-3f};
    avq_weight w;
    avq_weight_init(&w, "w", AVQ_F32, 2, DIMS(2, 2), src);
    int64_t bad = -1;
    CHECK_OK(avq_weight_take_copy(&w, AVQ_BF16, &bad));
    CHECK(w.dtype == AVQ_BF16, "stored as bf16");
    for (int i = 0; i < 4; i++)
        CHECK(((const uint16_t *)w.data)[i] == avq_f32_to_bf16(src[i]), "element %d rounded to nearest even", i);
    avq_weight_release(&w);
}

static void test_taking_a_copy_counts_nan_and_inf_values(void) {
    float f[5] = {0.0f, NAN, INFINITY, -INFINITY, 1.0f};
    uint16_t h[3] = {0x3F80, 0x7FC0, 0xFF80}; /* 1, NaN, -inf */
    avq_weight a, b;
    avq_weight_init(&a, "a", AVQ_F32, 1, DIMS(5), f);
    avq_weight_init(&b, "b", AVQ_BF16, 1, DIMS(3), h);
    int64_t na = 0, nb = 0;
    CHECK_OK(avq_weight_take_copy(&a, AVQ_F32, &na));
    CHECK_OK(avq_weight_take_copy(&b, AVQ_F32, &nb));
    CHECK(na == 3, "f32: %lld non-finite", (long long)na);
    CHECK(nb == 2, "bf16: %lld non-finite", (long long)nb);
    avq_weight_release(&a);
    avq_weight_release(&b);
}

static void test_a_raised_thread_abort_flag_stops_a_run_at_the_next_step_and_the_plan_stays_usable(void) {
    const int64_t rows = 3, k = 4, n = 5;
    float *x = random_buffer(rows * k), *wd = random_buffer(n * k), *y = calloc((size_t)(rows * n), 4);
    float *first = calloc((size_t)(rows * n), 4);
    avq_weight w;
    avq_weight_init(&w, "fc.weight", AVQ_F32, 2, DIMS(n, k), wd);
    lin_ctx c = {.w = &w, .b = NULL, .act = AVQ_ACT_NONE, .dt = AVQ_F32};
    c.x = ext_tensor(2, DIMS(rows, k), x);
    c.y = ext_tensor(2, DIMS(rows, n), y);
    avq_plan *p;
    CHECK_OK(avq_plan_create(&p));
    CHECK_OK(avq_plan_run(p, lin_forward, &c));
    memcpy(first, y, (size_t)(rows * n) * 4);
    volatile int flag = 1;
    avq_plan_set_thread_abort_flag(&flag);
    memset(y, 0, (size_t)(rows * n) * 4);
    CHECK(avq_plan_run(p, lin_forward, &c) == AVQ_ERR_ABORTED, "an aborted run says so: %s", avq_last_error());
    flag = 0;
    CHECK_OK(avq_plan_run(p, lin_forward, &c));
    CHECK(memcmp(first, y, (size_t)(rows * n) * 4) == 0, "the next run gives the same result");
    avq_plan_set_thread_abort_flag(NULL);
    avq_plan_destroy(p);
    avq_weight_release(&w);
    free(x), free(wd), free(y), free(first);
}

typedef struct attn_ctx {
    avq_tensor q, k, v, o;
    int heads, causal;
    float scale;
    avq_dtype dt;
} attn_ctx;

static avq_status attn_forward(avq_plan *p, void *vctx) {
    attn_ctx *c = vctx;
    avq_tensor q, k, v, o;
    AVQ_TRY(import(p, &c->q, c->dt, &q));
    AVQ_TRY(import(p, &c->k, c->dt, &k));
    AVQ_TRY(import(p, &c->v, c->dt, &v));
    AVQ_TRY(avq_plan_tensor(p, &o, c->dt, AVQ_PLAIN, 3, c->o.dims));
    AVQ_TRY(avq_attention(p, &q, &k, &v, &o, c->heads, c->scale, c->causal));
    AVQ_TRY(avq_reorder(p, &o, &c->o));
    avq_plan_release(p, &o);
    avq_plan_release(p, &v);
    avq_plan_release(p, &k);
    avq_plan_release(p, &q);
    return AVQ_OK;
}

static void check_attention(int64_t B, int64_t N, int64_t M, int64_t C, int heads, int causal, avq_dtype dt,
                            double bound) {
    int64_t d = C / heads;
    float *q = random_buffer(B * N * C), *k = random_buffer(B * M * C), *v = random_buffer(B * M * C);
    float *o = calloc((size_t)(B * N * C), 4);
    double *ref = malloc((size_t)(B * N * C) * sizeof *ref), *s = malloc((size_t)M * sizeof *s);
    float scale = 1.f / sqrtf((float)d);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < heads; h++)
            for (int64_t i = 0; i < N; i++) {
                double mx = -INFINITY, sum = 0;
                int64_t lim = causal ? i + 1 : M;
                for (int64_t j = 0; j < lim; j++) {
                    double dot = 0;
                    for (int64_t t = 0; t < d; t++)
                        dot += (double)q[(b * N + i) * C + h * d + t] * k[(b * M + j) * C + h * d + t];
                    s[j] = dot * scale;
                    if (s[j] > mx) mx = s[j];
                }
                for (int64_t j = 0; j < lim; j++) sum += (s[j] = exp(s[j] - mx));
                for (int64_t t = 0; t < d; t++) {
                    double acc = 0;
                    for (int64_t j = 0; j < lim; j++) acc += s[j] / sum * v[(b * M + j) * C + h * d + t];
                    ref[(b * N + i) * C + h * d + t] = acc;
                }
            }
    attn_ctx c = {.heads = heads, .causal = causal, .scale = scale, .dt = dt};
    c.q = ext_tensor(3, DIMS(B, N, C), q);
    c.k = ext_tensor(3, DIMS(B, M, C), k);
    c.v = ext_tensor(3, DIMS(B, M, C), v);
    c.o = ext_tensor(3, DIMS(B, N, C), o);
    avq_plan *p;
    CHECK_OK(avq_plan_create(&p));
    CHECK_OK(avq_plan_run(p, attn_forward, &c));
    CHECK_OK(avq_plan_run(p, attn_forward, &c));
    double e = rel_err(o, ref, B * N * C);
    CHECK(e <= bound, "attention B%lld N%lld M%lld C%lld h%d%s %s: error %.3g > %.3g", (long long)B, (long long)N,
          (long long)M, (long long)C, heads, causal ? " causal" : "", avq_dtype_name(dt), e, bound);
    avq_plan_destroy(p);
    free(q), free(k), free(v), free(o), free(ref), free(s);
}

static void test_attention_matches_naive_loops(void) {
    check_attention(2, 5, 7, 12, 3, 0, AVQ_F32, 1e-5);
    check_attention(2, 77, 77, 24, 2, 1, AVQ_F32, 1e-5); /* causal, text-encoder-like */
    check_attention(1, 130, 9, 16, 1, 0, AVQ_F32, 1e-5); /* more queries than one tile */
    check_attention(2, 5, 7, 12, 3, 0, AVQ_BF16, 2e-2);
}

/* ---- nearest resize -------------------------------------------------------------- */

typedef struct rs_ctx {
    avq_tensor x, y;
} rs_ctx;

static avq_status rs_forward(avq_plan *p, void *vctx) {
    rs_ctx *c = vctx;
    avq_tensor x, y;
    AVQ_TRY(import(p, &c->x, AVQ_F32, &x));
    AVQ_TRY(avq_plan_tensor(p, &y, AVQ_F32, AVQ_NHWC, 4, c->y.dims));
    AVQ_TRY(avq_resize_nearest(p, &x, &y));
    AVQ_TRY(avq_reorder(p, &y, &c->y));
    avq_plan_release(p, &y);
    avq_plan_release(p, &x);
    return AVQ_OK;
}

static void test_resize_nearest_uses_floor_of_dst_times_in_over_out(void) {
    const int64_t sizes[][4] = {{64, 64, 13, 13}, {7, 7, 64, 64}, {100, 37, 37, 100}, {5, 9, 12, 4}};
    for (size_t t = 0; t < 4; t++) {
        int64_t ih = sizes[t][0], iw = sizes[t][1], oh = sizes[t][2], ow = sizes[t][3];
        float *x = random_buffer(2 * 3 * ih * iw), *y = calloc((size_t)(2 * 3 * oh * ow), 4);
        rs_ctx c = {ext_tensor(4, DIMS(2, 3, ih, iw), x), ext_tensor(4, DIMS(2, 3, oh, ow), y)};
        avq_plan *p;
        CHECK_OK(avq_plan_create(&p));
        CHECK_OK(avq_plan_run(p, rs_forward, &c));
        int bad = 0;
        for (int64_t nc = 0; nc < 6; nc++)
            for (int64_t oy = 0; oy < oh; oy++)
                for (int64_t ox = 0; ox < ow; ox++) {
                    /* PyTorch: scale = (float)in / out, src = min(floor(dst * scale), in - 1) */
                    int64_t iy = (int64_t)floorf((float)oy * ((float)ih / (float)oh));
                    int64_t ix = (int64_t)floorf((float)ox * ((float)iw / (float)ow));
                    iy = iy < ih - 1 ? iy : ih - 1;
                    ix = ix < iw - 1 ? ix : iw - 1;
                    bad += y[(nc * oh + oy) * ow + ox] != x[(nc * ih + iy) * iw + ix];
                }
        CHECK(bad == 0, "resize %lldx%lld -> %lldx%lld: %d wrong pixels", (long long)ih, (long long)iw, (long long)oh,
              (long long)ow, bad);
        avq_plan_destroy(p);
        free(x), free(y);
    }
}

/* ---- messages for bad shapes ---------------------------------------------------------- */

typedef struct bad_ctx {
    int which;
} bad_ctx;

static avq_status bad_forward(avq_plan *p, void *vctx) {
    bad_ctx *c = vctx;
    static float wbuf[4 * 5 * 3 * 3], gbuf[30];
    avq_weight w, g;
    avq_tensor x, y, k;
    avq_status st = AVQ_OK;
    avq_weight_init(&w, "down.conv.weight", AVQ_F32, 4, DIMS(4, 5, 3, 3), wbuf);
    avq_weight_init(&g, "norm.weight", AVQ_F32, 1, DIMS(30), gbuf);
    avq_conv_params prm = avq_conv_simple(1, 1);
    AVQ_TRY(avq_plan_tensor(p, &x, AVQ_F32, AVQ_NHWC, 4, DIMS(2, 3, 8, 8)));
    AVQ_TRY(avq_plan_tensor(p, &y, AVQ_F32, AVQ_NHWC, 4, DIMS(2, 4, 8, 8)));
    AVQ_TRY(avq_plan_tensor(p, &k, AVQ_F32, AVQ_PLAIN, 3, DIMS(2, 7, 30)));
    switch (c->which) {
    case 0: st = avq_conv2d(p, &w, NULL, &x, &y, &prm); break; /* 3 channels into a 5-channel conv */
    case 1: {
        avq_tensor x5 = avq_tensor_4d(AVQ_F32, AVQ_NHWC, 2, 5, 8, 8);
        st = avq_conv2d(p, &w, NULL, &x5, &y, &(avq_conv_params){2, 2, 1, 1, 1, 1, AVQ_ACT_NONE, NULL, AVQ_CONV_AUTO});
        break; /* stride 2 gives 4x4, y is 8x8 */
    }
    case 2: st = avq_group_norm(p, &k, &k, &g, &g, 32, 1e-5f, 0); break; /* 30 channels, 32 groups */
    case 3: st = avq_attention(p, &k, &k, &k, &k, 4, 1.f, 0); break;     /* 30 features, 4 heads */
    default: {
        avq_weight fc;
        avq_weight_init(&fc, "fc.weight", AVQ_F32, 2, DIMS(8, 31), wbuf);
        st = avq_linear(p, &fc, NULL, &k, &k, AVQ_ACT_NONE, NULL, NULL);
        break;
    }
    }
    avq_plan_release(p, &k);
    avq_plan_release(p, &y);
    avq_plan_release(p, &x);
    return st;
}

static void test_bad_shapes_are_reported_with_names_and_shapes(void) {
    struct {
        avq_status code;
        const char *text;
    } want[] = {
        {AVQ_ERR_SHAPE, "conv2d down.conv.weight expects 5 input channels, input is [2, 3, 8, 8] f32 nhwc"},
        {AVQ_ERR_SHAPE, "conv2d output is [2, 4, 8, 8] f32 nhwc, expected [2, 4, 4, 4]"},
        {AVQ_ERR_SHAPE, "group_norm: 30 channels cannot form 32 groups"},
        {AVQ_ERR_ARG, "attention: 30 features cannot be split into 4 heads"},
        {AVQ_ERR_SHAPE, "linear fc.weight [8, 31]: input [2, 7, 30] f32 and output [2, 7, 30] f32 do not fit"},
    };
    for (int i = 0; i < (int)(sizeof want / sizeof want[0]); i++) {
        avq_plan *p;
        bad_ctx c = {i};
        CHECK_OK(avq_plan_create(&p));
        avq_status s = avq_plan_run(p, bad_forward, &c);
        CHECK(s == want[i].code, "case %d: %s, want %s", i, avq_status_name(s), avq_status_name(want[i].code));
        CHECK(strstr(avq_last_error(), want[i].text) != NULL, "case %d message: %s", i, avq_last_error());
        CHECK(!avq_plan_built(p), "case %d: nothing built", i);
        avq_plan_destroy(p);
    }
}

/* ---- step arguments are bound by oneDNN id ----------------------------------------- */

typedef struct bind_ctx {
    avq_tensor x, y;
    int missing; /* run: leave the destination without a buffer */
} bind_ctx;

/* Build: one reorder step. Run: the step executed directly, its buffers given
 * destination first (the order must not matter), or without the destination. */
static avq_status bind_forward(avq_plan *p, void *vctx) {
    bind_ctx *c = vctx;
    if (avq_plan_building(p)) return avq_reorder(p, &c->x, &c->y);
    avq_step *s;
    AVQ_TRY(avq_plan_step(p, AVQ_STEP_REORDER, &s));
    avq_arg_data d[] = {{DNNL_ARG_TO, c->y.data}, {DNNL_ARG_FROM, c->x.data}};
    return c->missing ? avq_step_exec(p, s, &d[1], 1) : avq_step_exec(p, s, d, 2);
}

static void test_step_buffers_are_bound_by_argument_id_and_a_missing_one_is_an_error(void) {
    float x[6] = {1, 2, 3, 4, 5, 6}, y[6] = {0};
    bind_ctx c = {.x = ext_tensor(2, DIMS(2, 3), x), .y = ext_tensor(2, DIMS(2, 3), y), .missing = 0};
    avq_plan *p;
    CHECK_OK(avq_plan_create(&p));
    CHECK_OK(avq_plan_run(p, bind_forward, &c));
    CHECK(memcmp(x, y, sizeof x) == 0, "FROM and TO bound by id, whatever their order");
    c.missing = 1;
    CHECK(avq_plan_run(p, bind_forward, &c) == AVQ_ERR_INTERNAL && strstr(avq_last_error(), "has no buffer"),
          "a per-run argument without a buffer: %s", avq_last_error());
    avq_plan_destroy(p);
}

/* ---- recorded tensor lists ------------------------------------------------------------ */

static void test_a_unet_built_against_the_recorder_lists_its_tensors_in_lookup_order_without_data(void) {
    const avq_unet_config c = {.in_channels = 9,
                               .out_channels = 4,
                               .model_channels = 32,
                               .num_levels = 2,
                               .channel_mult = {1, 2},
                               .num_res_blocks = 1,
                               .num_attention_resolutions = 1,
                               .attention_resolutions = {2},
                               .num_heads = 2,
                               .num_head_channels = -1,
                               .transformer_depth = 1,
                               .context_dim = 16};
    avq_weight_recorder r;
    avq_weight_recorder_init(&r);
    avq_unet *u = NULL;
    CHECK_OK(avq_unet_create(&c, AVQ_BF16, &r.src, &u));
    CHECK(u && !r.oom && r.n > 0, "a model with no weight memory");
    int64_t numel = 0;
    for (size_t i = 0; i < r.n; i++) {
        int64_t e = 1;
        for (int d = 0; d < r.all[i].ndim; d++) e *= r.all[i].dims[d];
        numel += e;
    }
    CHECK(u && avq_unet_num_params(u) == numel, "the list holds every parameter of the model");
    CHECK(strcmp(r.all[0].name, "model.diffusion_model.time_embed.0.weight") == 0, "first: %s", r.all[0].name);
    CHECK(r.all[0].ndim == 2 && r.all[0].dims[0] == 128 && r.all[0].dims[1] == 32, "time_embed.0 is [4mc, mc]");
    CHECK(strcmp(r.all[r.n - 1].name, "model.diffusion_model.out.2.bias") == 0, "last: %s", r.all[r.n - 1].name);
    avq_unet_destroy(u);
    avq_weight_recorder_free(&r);
}

/* ---- runner ------------------------------------------------------------------------ */

static const check_test tests[] = {
    TEST(test_status_message_is_per_call_and_named),
    TEST(test_tensor_shape_bytes_and_description),
    TEST(test_nhwc_memory_descriptor_has_channels_last_strides),
    TEST(test_bf16_rounds_to_nearest_even_and_keeps_nan),
    TEST(test_row_conversions_equal_the_scalar_ones_bit_for_bit),
    TEST(test_engine_info_and_threads),
    TEST(test_parked_openmp_team_starts_once_and_pushes_the_threads_past_the_cpus),
    TEST(test_plan_arena_is_first_fit_with_measured_peak),
    TEST(test_plan_replay_that_diverges_from_the_build_fails),
    TEST(test_plan_build_that_leaks_a_tensor_fails),
    TEST(test_plan_failed_build_can_be_retried),
    TEST(test_plan_arena_allocation_outside_a_pass_fails),
    TEST(test_conv2d_matches_naive_loops),
    TEST(test_winograd_conv2d_matches_naive_loops),
    TEST(test_conv2d_packs_weights_once_across_plans),
    TEST(test_a_winograd_weight_keeps_only_u_and_gives_the_same_results_on_later_plans_and_shapes),
    TEST(test_a_conv_that_needs_the_dropped_source_of_a_winograd_weight_fails_naming_it),
    TEST(test_auto_decides_once_per_weight_so_earlier_plans_replay_as_built),
    TEST(test_group_norm_matches_naive_loops),
    TEST(test_linear_matches_naive_loops),
    TEST(test_an_owned_weight_copy_does_not_depend_on_its_source),
    TEST(test_a_bf16_store_narrows_f32_weights_like_a_reorder),
    TEST(test_the_first_packed_copy_replaces_the_source_and_later_copies_are_made_from_it),
    TEST(test_a_dropped_source_leaves_copies_of_the_kept_transform_only),
    TEST(test_only_an_owned_unviewed_source_not_yet_replaced_is_dropped),
    TEST(test_taking_a_copy_counts_nan_and_inf_values),
    TEST(test_a_raised_thread_abort_flag_stops_a_run_at_the_next_step_and_the_plan_stays_usable),
    TEST(test_attention_matches_naive_loops),
    TEST(test_resize_nearest_uses_floor_of_dst_times_in_over_out),
    TEST(test_bad_shapes_are_reported_with_names_and_shapes),
    TEST(test_step_buffers_are_bound_by_argument_id_and_a_missing_one_is_an_error),
    TEST(test_a_unet_built_against_the_recorder_lists_its_tensors_in_lookup_order_without_data),
};

CHECK_MAIN(tests)
