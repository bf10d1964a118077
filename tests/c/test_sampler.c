/* The C samplers without Python (csrc/sampling): SPEC §5.1/§6.1 numbers, the
 * loop's contract with its denoiser (batch order, hybrid channels, call
 * counts), noise from a seed, abort and NaN handling. The model is a C
 * stand-in. Build (oneDNN only for tensor.c's descriptor helpers):
 *
 *   gcc -std=c11 -O2 -Wall -Wextra -Werror -D_GNU_SOURCE -Icsrc -I<venv>/include \
 *       tests/c/test_sampler.c csrc/sampling/sampler.c csrc/sampling/schedule.c csrc/sampling/rng.c \
 *       csrc/core/status.c csrc/core/tensor.c -L<venv>/lib -ldnnl -Wl,-rpath,<venv>/lib -lm -o test_sampler
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sampling/rng.h"
#include "sampling/sampler.h"

#include "check.h"

static int close_rel(double got, double want, double rel) { return fabs(got - want) <= rel * fabs(want); }

/* ---- schedule ------------------------------------------------------------------------- */

static void test_alphas_cumprod_reference_values(void) {
    float abar[1000];
    avq_schedule_config cfg = AVQ_SCHEDULE_SD1;
    CHECK(avq_schedule_alphas_cumprod(&cfg, abar) == AVQ_OK, "schedule failed: %s", avq_last_error());
    CHECK(close_rel(abar[0], 0.99914998, 1e-7), "abar[0] = %.9g", abar[0]);
    CHECK(close_rel(abar[1], 0.99829602, 1e-7), "abar[1] = %.9g", abar[1]);
    CHECK(close_rel(abar[999], 0.0046600983, 1e-7), "abar[999] = %.9g", abar[999]);
}

static void test_ddim_table_of_spec_6_1(void) {
    avq_sampler *s;
    avq_schedule_config cfg = AVQ_SCHEDULE_SD1;
    CHECK(avq_sampler_create(AVQ_SAMPLER_DDIM, 50, 1.0, &cfg, &s) == AVQ_OK, "%s", avq_last_error());
    const struct {
        int k, tau;
        double a, aprev, sigma;
    } rows[] = {
        {49, 981, 0.00577550009, 0.00728172716, 0.454463282},
        {48, 961, 0.00728172716, 0.00911730994, 0.448282454},
        {2, 41, 0.960872769, 0.980380774, 0.0998873317},
        {0, 1, 0.998296022, 0.999149978, 0.0206483543},
    };
    CHECK(avq_sampler_num_steps(s) == 50, "50 steps -> %d timesteps", avq_sampler_num_steps(s));
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        const int k = rows[i].k;
        CHECK(avq_sampler_timesteps(s)[k] == rows[i].tau, "tau[%d] = %d", k, avq_sampler_timesteps(s)[k]);
        CHECK(close_rel(avq_sampler_alphas(s)[k], rows[i].a, 1e-7), "a[%d]", k);
        CHECK(close_rel(avq_sampler_alphas_prev(s)[k], rows[i].aprev, 1e-7), "aprev[%d]", k);
        CHECK(close_rel(avq_sampler_sigmas(s)[k], rows[i].sigma, 1e-7), "sigma[%d] = %.9g", k,
              avq_sampler_sigmas(s)[k]);
    }
    avq_sampler_destroy(s);
}

static void test_step_counts(void) {
    int n = 0;
    CHECK(avq_ddim_count(6, 1000, &n) == AVQ_OK && n == 7, "6 steps -> %d timesteps, expected 7", n);
    CHECK(avq_ddim_count(1000, 1000, &n) == AVQ_ERR_ARG && strstr(avq_last_error(), "past the schedule"),
          "1000 steps must be refused: %s", avq_last_error());
    CHECK(avq_ddim_count(0, 1000, &n) == AVQ_ERR_ARG, "0 steps must be refused");
    avq_sampler *s = NULL;
    avq_schedule_config cfg = AVQ_SCHEDULE_SD1;
    CHECK(avq_sampler_create(AVQ_SAMPLER_PLMS, 50, 0.5, &cfg, &s) == AVQ_ERR_ARG && !s, "PLMS with eta 0.5 accepted");
    CHECK(avq_sampler_create(AVQ_SAMPLER_DDIM, 50, -1.0, &cfg, &s) == AVQ_ERR_ARG && !s, "eta -1 accepted");
}

/* ---- the loop ------------------------------------------------------------------------------ */

enum { B = 2, C = 4, HH = 8, WW = 16, HW = HH * WW, LL = 3, DD = 5, CC = 5 };

typedef struct standin {
    int calls;
    int nan_at_call; /* 0: never */
    int last_t;
    float first_x[2 * B][C + CC]; /* x[n, c, 0, 0] of the first call */
    float first_ctx[2 * B];       /* context[n, 0, 0] of the first call */
    int64_t first_n;
} standin;

/* eps[n, o] = tanh(0.1 * x[n, o] + 0.01 * x[n, (o + 1) % Cin] + t / 1000 + ctx[n, 0, 0]) */
static avq_status standin_eps(void *ud, const avq_tensor *x, const avq_tensor *t, const avq_tensor *ctx,
                              avq_tensor *eps) {
    standin *m = ud;
    const int64_t N = x->dims[0], Cin = x->dims[1], hw = x->dims[2] * x->dims[3];
    const float *xd = x->data, *td = t->data, *cd = ctx->data;
    float *e = eps->data;
    if (m->calls == 0) {
        m->first_n = N;
        for (int64_t n = 0; n < N && n < 2 * B; n++) {
            for (int64_t c = 0; c < Cin && c < C + CC; c++) m->first_x[n][c] = xd[(n * Cin + c) * hw];
            m->first_ctx[n] = cd[n * ctx->dims[1] * ctx->dims[2]];
        }
    }
    m->calls++;
    m->last_t = (int)td[0];
    for (int64_t n = 0; n < N; n++)
        for (int64_t o = 0; o < C; o++)
            for (int64_t i = 0; i < hw; i++) {
                const float a = xd[(n * Cin + o) * hw + i], b = xd[(n * Cin + (o + 1) % Cin) * hw + i];
                e[(n * C + o) * hw + i] =
                    tanhf(0.1f * a + 0.01f * b + td[n] / 1000.0f + cd[n * ctx->dims[1] * ctx->dims[2]]);
            }
    if (m->nan_at_call && m->calls == m->nan_at_call) e[0] = NAN;
    return AVQ_OK;
}

typedef struct case_data {
    float x_T[B * C * HW], out[B * C * HW], cond[B * LL * DD], uncond[LL * DD], cc[B * CC * HW];
    avq_tensor tx, tout, tc, tu, tcc;
} case_data;

static void make_case(case_data *d) {
    avq_rng r;
    avq_rng_seed(&r, 11u);
    avq_rng_randn_f32(&r, d->x_T, B * C * HW);
    avq_rng_randn_f32(&r, d->cond, B * LL * DD);
    avq_rng_randn_f32(&r, d->uncond, LL * DD);
    avq_rng_randn_f32(&r, d->cc, B * CC * HW);
    d->tx = avq_tensor_4d(AVQ_F32, AVQ_PLAIN, B, C, HH, WW);
    d->tx.data = d->x_T;
    d->tout = d->tx;
    d->tout.data = d->out;
    d->tc = avq_tensor_make(AVQ_F32, AVQ_PLAIN, 3, (const int64_t[]){B, LL, DD});
    d->tc.data = d->cond;
    d->tu = avq_tensor_make(AVQ_F32, AVQ_PLAIN, 3, (const int64_t[]){1, LL, DD});
    d->tu.data = d->uncond;
    d->tcc = avq_tensor_4d(AVQ_F32, AVQ_PLAIN, B, CC, HH, WW);
    d->tcc.data = d->cc;
}

static avq_status run(avq_sampler_kind kind, int steps, double eta, standin *m, case_data *d, avq_sample_inputs *in) {
    avq_sampler *s;
    avq_schedule_config cfg = AVQ_SCHEDULE_SD1;
    avq_status st = avq_sampler_create(kind, steps, eta, &cfg, &s);
    if (st != AVQ_OK) return st;
    avq_denoiser model = {standin_eps, m, in->c_concat ? C + CC : C, C, DD};
    st = avq_sampler_run(s, &model, in, &d->tout);
    avq_sampler_destroy(s);
    return st;
}

static avq_sample_inputs guided_inputs(case_data *d) {
    avq_sample_inputs in;
    memset(&in, 0, sizeof in);
    in.x_T = &d->tx;
    in.cond = &d->tc;
    in.uncond = &d->tu;
    in.scale = 7.5f;
    return in;
}

static void test_guided_hybrid_batch_layout(void) {
    static case_data d;
    make_case(&d);
    avq_sample_inputs in = guided_inputs(&d);
    in.c_concat = &d.tcc;
    standin m = {0};
    CHECK(run(AVQ_SAMPLER_DDIM, 10, 0.0, &m, &d, &in) == AVQ_OK, "%s", avq_last_error());
    CHECK(m.calls == 10, "DDIM 10 steps made %d model calls", m.calls);
    CHECK(m.first_n == 2 * B, "guided batch %lld, expected %d", (long long)m.first_n, 2 * B);
    for (int n = 0; n < 2 * B; n++) {
        const int b = n % B;
        CHECK(m.first_x[n][0] == d.x_T[b * C * HW], "sample %d channel 0 is not x_T[%d]", n, b);
        CHECK(m.first_x[n][C] == d.cc[b * CC * HW], "sample %d channel %d is not c_concat[%d] channel 0", n, C, b);
        CHECK(m.first_x[n][C + 1] == d.cc[(b * CC + 1) * HW], "sample %d channel %d", n, C + 1);
        const float want_ctx = n < B ? d.uncond[0] : d.cond[b * LL * DD]; /* [uncond; cond] */
        CHECK(m.first_ctx[n] == want_ctx, "context of sample %d", n);
    }
    CHECK(m.last_t == 1, "the last step must denoise from t=1, got %d", m.last_t);
}

static void test_plms_makes_one_extra_call(void) {
    static case_data d;
    make_case(&d);
    avq_sample_inputs in = guided_inputs(&d);
    standin m = {0};
    CHECK(run(AVQ_SAMPLER_PLMS, 10, 0.0, &m, &d, &in) == AVQ_OK, "%s", avq_last_error());
    CHECK(m.calls == 11, "PLMS 10 steps made %d model calls", m.calls);
}

/* One unguided DDIM step, eta = 0, computed by hand from the SPEC formula. */
static void test_one_ddim_step_by_hand(void) {
    static case_data d;
    make_case(&d);
    avq_sample_inputs in = guided_inputs(&d);
    in.uncond = NULL;
    standin m = {0};
    CHECK(run(AVQ_SAMPLER_DDIM, 1, 0.0, &m, &d, &in) == AVQ_OK, "%s", avq_last_error());
    /* 1 step: tau = [1], a = abar[1], aprev = abar[0] */
    float abar[1000];
    avq_schedule_config cfg = AVQ_SCHEDULE_SD1;
    avq_schedule_alphas_cumprod(&cfg, abar);
    const double a = abar[1], ap = abar[0];
    int bad = 0;
    for (int n = 0; n < B; n++)
        for (int o = 0; o < C; o++)
            for (int i = 0; i < HW; i++) {
                const double x = d.x_T[(n * C + o) * HW + i], x1 = d.x_T[(n * C + (o + 1) % C) * HW + i];
                const double e = tanh(0.1 * x + 0.01 * x1 + 1 / 1000.0 + d.cond[n * LL * DD]);
                const double want = sqrt(ap) * (x - sqrt(1 - a) * e) / sqrt(a) + sqrt(1 - ap) * e;
                bad += !close_rel(d.out[(n * C + o) * HW + i], want, 1e-5) && fabs(want) > 1e-6;
            }
    CHECK(bad == 0, "%d values differ from the hand-computed DDIM step", bad);
}

static void test_seeded_noise_equals_injected_randn(void) {
    static case_data d;
    static float noise[10 * B * C * HW], first[B * C * HW];
    make_case(&d);
    avq_sample_inputs in = guided_inputs(&d);
    in.use_seed = 1;
    in.seed = 77u;
    standin m = {0};
    CHECK(run(AVQ_SAMPLER_DDIM, 10, 1.0, &m, &d, &in) == AVQ_OK, "%s", avq_last_error());
    memcpy(first, d.out, sizeof first);
    avq_rng r;
    avq_rng_seed(&r, 77u);
    avq_rng_randn_f32(&r, noise, 10 * B * C * HW);
    avq_tensor tn = avq_tensor_make(AVQ_F32, AVQ_PLAIN, 5, (const int64_t[]){10, B, C, HH, WW});
    tn.data = noise;
    in.use_seed = 0;
    in.noise = &tn;
    standin m2 = {0};
    CHECK(run(AVQ_SAMPLER_DDIM, 10, 1.0, &m2, &d, &in) == AVQ_OK, "%s", avq_last_error());
    CHECK(memcmp(first, d.out, sizeof first) == 0, "seeded noise differs from randn(seed, [10, B, C, h, w])");
    in.noise = NULL;
    CHECK(run(AVQ_SAMPLER_DDIM, 10, 1.0, &m2, &d, &in) == AVQ_ERR_ARG, "eta > 0 without noise or seed accepted");
}

typedef struct abort_hook {
    volatile int flag;
    int raise_at;
} abort_hook;

static avq_status raise_flag(void *ud, int step, int t, avq_tensor *x, int *modified) {
    (void)t, (void)x, (void)modified;
    abort_hook *h = ud;
    if (step == h->raise_at) h->flag = 1;
    return AVQ_OK;
}

static void test_abort_flag_stops_before_the_next_step(void) {
    static case_data d;
    make_case(&d);
    avq_sample_inputs in = guided_inputs(&d);
    abort_hook h = {0, 3};
    in.on_step = raise_flag;
    in.on_step_data = &h;
    in.abort_flag = &h.flag;
    standin m = {0};
    CHECK(run(AVQ_SAMPLER_DDIM, 50, 0.0, &m, &d, &in) == AVQ_ERR_ABORTED, "abort flag ignored");
    CHECK(m.calls == 4, "%d model calls after an abort raised at step 3", m.calls);
}

static void test_nan_is_a_numeric_error(void) {
    static case_data d;
    make_case(&d);
    avq_sample_inputs in = guided_inputs(&d);
    standin m = {0};
    m.nan_at_call = 5;
    CHECK(run(AVQ_SAMPLER_DDIM, 50, 0.0, &m, &d, &in) == AVQ_ERR_NUMERIC && strstr(avq_last_error(), "step 4"),
          "NaN not reported at step 4: %s", avq_last_error());
    CHECK(m.calls == 5, "the loop went on after NaN (%d calls)", m.calls);
}

static void test_bad_inputs_are_named(void) {
    static case_data d;
    make_case(&d);
    avq_sample_inputs in = guided_inputs(&d);
    standin m = {0};
    in.c_concat = &d.tcc; /* given to a 4-channel model */
    avq_sampler *s;
    avq_schedule_config cfg = AVQ_SCHEDULE_SD1;
    avq_sampler_create(AVQ_SAMPLER_DDIM, 10, 0.0, &cfg, &s);
    avq_denoiser four = {standin_eps, &m, C, C, DD};
    CHECK(avq_sampler_run(s, &four, &in, &d.tout) == AVQ_ERR_ARG && strstr(avq_last_error(), "c_concat"),
          "c_concat to a 4-channel UNet: %s", avq_last_error());
    in.c_concat = NULL;
    avq_denoiser nine = {standin_eps, &m, C + CC, C, DD};
    CHECK(avq_sampler_run(s, &nine, &in, &d.tout) == AVQ_ERR_ARG && strstr(avq_last_error(), "pass c_concat"),
          "9-channel UNet without c_concat: %s", avq_last_error());
    avq_denoiser wide = {standin_eps, &m, C, C, DD + 1};
    CHECK(avq_sampler_run(s, &wide, &in, &d.tout) == AVQ_ERR_SHAPE && strstr(avq_last_error(), "cond"),
          "context width mismatch: %s", avq_last_error());
    avq_tensor odd = avq_tensor_4d(AVQ_F32, AVQ_PLAIN, B, C, HH, 12);
    odd.data = d.x_T;
    in.x_T = &odd;
    CHECK(avq_sampler_run(s, &four, &in, &d.tout) == AVQ_ERR_SHAPE && strstr(avq_last_error(), "multiples of 8"),
          "latent 8x12: %s", avq_last_error());
    CHECK(m.calls == 0, "the model ran on bad inputs");
    avq_sampler_destroy(s);
}

/* ---- DPM++ 2M, Euler, Euler a ----------------------------------------------------------------- */

static void test_sigma_kinds_arguments_and_tables(void) {
    avq_schedule_config cfg = AVQ_SCHEDULE_SD1;
    avq_sampler *s = NULL;
    const avq_sampler_kind kinds[] = {AVQ_SAMPLER_DPMPP_2M, AVQ_SAMPLER_EULER, AVQ_SAMPLER_EULER_A};
    for (int i = 0; i < 3; i++) {
        CHECK(avq_sampler_create(kinds[i], 20, 0.5, &cfg, &s) == AVQ_ERR_ARG && !s &&
                  strstr(avq_last_error(), "eta applies to DDIM only"),
              "kind %d with eta 0.5 accepted", (int)kinds[i]);
        CHECK(avq_sampler_create(kinds[i], 20, 0.0, &cfg, &s) == AVQ_OK, "%s", avq_last_error());
        const float *lev = avq_sampler_noise_levels(s);
        CHECK(avq_sampler_num_steps(s) == 20 && lev[20] == 0.0f, "20 steps, final level 0");
        for (int k = 0; k < 20; k++) CHECK(lev[k] > lev[k + 1], "noise levels must descend at %d", k);
        CHECK(avq_sampler_needs_noise(s) == (kinds[i] == AVQ_SAMPLER_EULER_A), "needs_noise of kind %d", (int)kinds[i]);
        avq_sampler_destroy(s);
        s = NULL;
    }
    CHECK(avq_sampler_create_ex(AVQ_SAMPLER_EULER, 20, 0.0, 1, AVQ_SPACING_LINSPACE, &cfg, &s) == AVQ_ERR_ARG && !s,
          "Euler with karras accepted");
    CHECK(avq_sampler_create_ex(AVQ_SAMPLER_DPMPP_2M, 999, 0.0, 0, AVQ_SPACING_LEADING, &cfg, &s) == AVQ_ERR_ARG &&
              strstr(avq_last_error(), "outside the schedule"),
          "a leading timestep at T accepted");
    CHECK(avq_sampler_create_ex(AVQ_SAMPLER_DPMPP_2M, 20, 0.0, 1, AVQ_SPACING_LINSPACE, &cfg, &s) == AVQ_OK, "%s",
          avq_last_error());
    CHECK(avq_sampler_model_timesteps(s)[0] == 999.0f && avq_sampler_init_noise_sigma(s) == 1.0f,
          "karras starts at t 999 with x_T unscaled, got t %g", (double)avq_sampler_model_timesteps(s)[0]);
    avq_sampler_destroy(s);
}

/* One unguided Euler step (linspace: t = 0, sigma s(0), then 0), computed by hand in double. */
static void test_one_euler_step_by_hand(void) {
    static case_data d;
    make_case(&d);
    avq_sample_inputs in = guided_inputs(&d);
    in.uncond = NULL;
    standin m = {0};
    CHECK(run(AVQ_SAMPLER_EULER, 1, 0.0, &m, &d, &in) == AVQ_OK, "%s", avq_last_error());
    CHECK(m.calls == 1 && m.last_t == 0, "one call at t 0, got %d calls, t %d", m.calls, m.last_t);
    float abar[1000];
    avq_schedule_config cfg = AVQ_SCHEDULE_SD1;
    avq_schedule_alphas_cumprod_f32(&cfg, abar);
    const double sg = sqrt((1.0 - abar[0]) / abar[0]), div = sqrt(sg * sg + 1.0);
    int bad = 0;
    for (int n = 0; n < B; n++)
        for (int o = 0; o < C; o++)
            for (int i = 0; i < HW; i++) {
                const double x = d.x_T[(n * C + o) * HW + i] * sg, x1 = d.x_T[(n * C + (o + 1) % C) * HW + i] * sg;
                const double e = tanh((0.1 * x + 0.01 * x1) / div + d.cond[n * LL * DD]);
                const double want = x - sg * e; /* x + (x - x0) / sigma * (0 - sigma) */
                /* float32 rounding relative to the terms: they nearly cancel for some values */
                bad += fabs(d.out[(n * C + o) * HW + i] - want) > 1e-6 * (fabs(x) + fabs(sg * e));
            }
    CHECK(bad == 0, "%d values differ from the hand-computed Euler step", bad);
}

static void test_dpmpp_calls_once_per_step_and_euler_a_needs_noise(void) {
    static case_data d;
    make_case(&d);
    avq_sample_inputs in = guided_inputs(&d);
    standin m = {0};
    CHECK(run(AVQ_SAMPLER_DPMPP_2M, 12, 0.0, &m, &d, &in) == AVQ_OK, "%s", avq_last_error());
    CHECK(m.calls == 12, "DPM++ 12 steps made %d model calls", m.calls);
    standin m2 = {0};
    CHECK(run(AVQ_SAMPLER_EULER_A, 5, 0.0, &m2, &d, &in) == AVQ_ERR_ARG && strstr(avq_last_error(), "Euler ancestral"),
          "Euler a without noise accepted");
    in.use_seed = 1;
    CHECK(run(AVQ_SAMPLER_EULER_A, 5, 0.0, &m2, &d, &in) == AVQ_OK && m2.calls == 5, "%s", avq_last_error());
}

static const check_test tests[] = {
    TEST(test_alphas_cumprod_reference_values),
    TEST(test_ddim_table_of_spec_6_1),
    TEST(test_step_counts),
    TEST(test_guided_hybrid_batch_layout),
    TEST(test_plms_makes_one_extra_call),
    TEST(test_one_ddim_step_by_hand),
    TEST(test_seeded_noise_equals_injected_randn),
    TEST(test_abort_flag_stops_before_the_next_step),
    TEST(test_nan_is_a_numeric_error),
    TEST(test_bad_inputs_are_named),
    TEST(test_sigma_kinds_arguments_and_tables),
    TEST(test_one_euler_step_by_hand),
    TEST(test_dpmpp_calls_once_per_step_and_euler_a_needs_noise),
};

CHECK_MAIN(tests)
