/* DDIM, PLMS, DPM++ 2M, Euler and Euler a loops (see sampler.h). */
#include "sampling/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sampling/rng.h"

struct avq_sampler {
    avq_sampler_kind kind;
    double eta;
    int n;         /* timesteps visited */
    int T;         /* schedule length */
    int *tau;      /* owned, [n] ascending */
    float *a;      /* owned, [n] abar[tau_k] */
    float *aprev;  /* owned, [n] */
    float *sigma;  /* owned, [n] */
    float *abar;   /* owned, [T] */
    /* sigma kinds only */
    int karras;
    avq_spacing spacing;
    float *lev;   /* owned, [n + 1] noise levels in loop order, lev[n] = 0 */
    float *tstep; /* owned, [n] the model's timestep at loop step i */
    float init_sigma;
};

int avq_sampler_kind_is_sigma(avq_sampler_kind kind) {
    return kind == AVQ_SAMPLER_DPMPP_2M || kind == AVQ_SAMPLER_EULER || kind == AVQ_SAMPLER_EULER_A;
}

/* The tables of the sigma kinds: diffusers' schedule, timesteps, noise levels. */
static avq_status sigma_tables(avq_sampler *s, int steps, const avq_schedule_config *cfg) {
    const int T = cfg->timesteps, n = steps;
    AVQ_TRY(avq_schedule_alphas_cumprod_f32(cfg, s->abar));
    float *sig = malloc(sizeof(float) * (size_t)T);
    double *ks = malloc(sizeof(double) * (size_t)n);
    int *t = malloc(sizeof(int) * (size_t)n);
    avq_status st = AVQ_OK;
    if (!sig || !ks || !t) st = avq_error(AVQ_ERR_MEMORY, "out of memory creating a sampler");
    if (st == AVQ_OK) {
        for (int k = 0; k < T; k++) sig[k] = sqrtf((1.0f - s->abar[k]) / s->abar[k]);
        if (s->karras) {
            /* diffusers ignores the spacing with Karras sigmas */
            avq_karras_sigmas(sig, T, n, ks, t);
            for (int i = 0; i < n; i++) s->lev[i] = (float)ks[i], s->tstep[i] = (float)t[i];
        } else {
            st = avq_spacing_timesteps(s->spacing, n, T, s->kind == AVQ_SAMPLER_DPMPP_2M, s->tstep);
            if (st == AVQ_OK)
                for (int i = 0; i < n; i++) s->lev[i] = (float)avq_interp_sigma(sig, T, (double)s->tstep[i]);
        }
    }
    if (st == AVQ_OK) {
        s->lev[n] = 0.0f;
        for (int i = 0; i < n; i++) {
            /* ascending tables like DDIM's (timesteps truncated to int for the
             * int table; the loop uses tstep); sigma (DDIM's eta term) stays 0 */
            const int k = n - 1 - i, ti = (int)s->tstep[i];
            s->tau[k] = ti;
            s->a[k] = s->abar[ti];
            s->sigma[k] = 0.0f;
        }
        for (int k = 0; k < n; k++) s->aprev[k] = k == 0 ? s->abar[0] : s->a[k - 1];
        const float smax = s->lev[0];
        /* diffusers' init_noise_sigma: max sigma for "linspace"/"trailing",
         * (max_sigma**2 + 1) ** 0.5 for "leading" (Euler kinds); DPM++ 1 */
        if (s->kind == AVQ_SAMPLER_DPMPP_2M)
            s->init_sigma = 1.0f;
        else
            s->init_sigma = s->spacing == AVQ_SPACING_LEADING ? sqrtf(smax * smax + 1.0f) : smax;
    }
    free(sig);
    free(ks);
    free(t);
    return st;
}

avq_status avq_sampler_create(avq_sampler_kind kind, int steps, double eta, const avq_schedule_config *cfg,
                              avq_sampler **out) {
    return avq_sampler_create_ex(kind, steps, eta, 0, AVQ_SPACING_LINSPACE, cfg, out);
}

avq_status avq_sampler_create_ex(avq_sampler_kind kind, int steps, double eta, int karras, avq_spacing spacing,
                                 const avq_schedule_config *cfg, avq_sampler **out) {
    *out = NULL;
    const int sigma_kind = avq_sampler_kind_is_sigma(kind);
    if (kind != AVQ_SAMPLER_DDIM && kind != AVQ_SAMPLER_PLMS && !sigma_kind)
        return avq_error(AVQ_ERR_ARG, "unknown sampler kind %d (expected DDIM, PLMS, DPM++ 2M, Euler or Euler a)",
                         (int)kind);
    if (!(eta >= 0.0) || !isfinite(eta)) return avq_error(AVQ_ERR_ARG, "eta must be a finite number >= 0, got %g", eta);
    if (kind == AVQ_SAMPLER_PLMS && eta != 0.0)
        return avq_error(AVQ_ERR_ARG, "PLMS is deterministic: eta must be 0, got %g", eta);
    if (sigma_kind && eta != 0.0)
        return avq_error(AVQ_ERR_ARG, "eta applies to DDIM only: it must be 0 for this sampler, got %g", eta);
    if (karras && kind != AVQ_SAMPLER_DPMPP_2M)
        return avq_error(AVQ_ERR_ARG, "karras sigmas are offered with DPM++ 2M only");
    AVQ_TRY(avq_schedule_check(cfg));
    int n = steps;
    if (!sigma_kind) {
        AVQ_TRY(avq_ddim_count(steps, cfg->timesteps, &n));
    } else if (steps < 1 || steps > cfg->timesteps - 1) {
        return avq_error(AVQ_ERR_ARG, "steps must be between 1 and %d for this sampler, got %d", cfg->timesteps - 1,
                         steps);
    }
    avq_sampler *s = calloc(1, sizeof *s);
    if (!s) return avq_error(AVQ_ERR_MEMORY, "out of memory creating a sampler");
    s->kind = kind;
    s->eta = eta;
    s->n = n;
    s->T = cfg->timesteps;
    s->karras = karras != 0;
    s->spacing = spacing;
    s->init_sigma = 1.0f;
    s->tau = malloc(sizeof(int) * (size_t)n);
    s->a = malloc(sizeof(float) * (size_t)n);
    s->aprev = malloc(sizeof(float) * (size_t)n);
    s->sigma = malloc(sizeof(float) * (size_t)n);
    s->abar = malloc(sizeof(float) * (size_t)s->T);
    if (sigma_kind) {
        s->lev = malloc(sizeof(float) * (size_t)(n + 1));
        s->tstep = malloc(sizeof(float) * (size_t)n);
    }
    avq_status st = AVQ_OK;
    if (!s->tau || !s->a || !s->aprev || !s->sigma || !s->abar || (sigma_kind && (!s->lev || !s->tstep)))
        st = avq_error(AVQ_ERR_MEMORY, "out of memory creating a sampler");
    if (st == AVQ_OK && sigma_kind) {
        st = sigma_tables(s, steps, cfg);
    } else if (st == AVQ_OK) {
        st = avq_schedule_alphas_cumprod(cfg, s->abar);
        if (st == AVQ_OK) st = avq_ddim_params(steps, s->T, s->abar, eta, s->tau, s->a, s->aprev, s->sigma);
    }
    if (st != AVQ_OK) {
        avq_sampler_destroy(s);
        return st;
    }
    *out = s;
    return AVQ_OK;
}

void avq_sampler_destroy(avq_sampler *s) {
    if (!s) return;
    free(s->tau);
    free(s->a);
    free(s->aprev);
    free(s->sigma);
    free(s->abar);
    free(s->lev);
    free(s->tstep);
    free(s);
}

avq_sampler_kind avq_sampler_get_kind(const avq_sampler *s) { return s->kind; }
double avq_sampler_eta(const avq_sampler *s) { return s->eta; }
int avq_sampler_num_steps(const avq_sampler *s) { return s->n; }
int avq_sampler_num_model_calls(const avq_sampler *s) { return s->n + (s->kind == AVQ_SAMPLER_PLMS); }
int avq_sampler_needs_noise(const avq_sampler *s) {
    return (s->kind == AVQ_SAMPLER_DDIM && s->eta > 0.0) || s->kind == AVQ_SAMPLER_EULER_A;
}
const float *avq_sampler_noise_levels(const avq_sampler *s) { return s->lev; }
float avq_sampler_init_noise_sigma(const avq_sampler *s) { return s->init_sigma; }
int avq_sampler_karras(const avq_sampler *s) { return s->karras; }
avq_spacing avq_sampler_spacing(const avq_sampler *s) { return s->spacing; }
const float *avq_sampler_model_timesteps(const avq_sampler *s) { return s->tstep; }
const int *avq_sampler_timesteps(const avq_sampler *s) { return s->tau; }
const float *avq_sampler_alphas(const avq_sampler *s) { return s->a; }
const float *avq_sampler_alphas_prev(const avq_sampler *s) { return s->aprev; }
const float *avq_sampler_sigmas(const avq_sampler *s) { return s->sigma; }
const float *avq_sampler_alphas_cumprod(const avq_sampler *s, int *timesteps) {
    if (timesteps) *timesteps = s->T;
    return s->abar;
}

int avq_sample_guided(const avq_sample_inputs *in) { return in->uncond != NULL && in->scale != 1.0f; }

/* ---- input checks ---------------------------------------------------------------- */

static int is_f32_plain(const avq_tensor *t, int ndim) {
    return t && t->dtype == AVQ_F32 && t->layout == AVQ_PLAIN && t->ndim == ndim && t->data != NULL;
}

static avq_status check_tensor(const avq_tensor *t, int ndim, const char *name, const char *want) {
    char buf[96];
    if (!is_f32_plain(t, ndim))
        return avq_error(AVQ_ERR_SHAPE, "%s must be %s float32 (plain, with data), got %s", name, want,
                         t ? avq_tensor_str(t, buf, sizeof buf) : "nothing");
    for (int i = 0; i < ndim; i++)
        if (t->dims[i] < 1) return avq_error(AVQ_ERR_SHAPE, "%s %s is empty", name, avq_tensor_str(t, buf, sizeof buf));
    return AVQ_OK;
}

static avq_status check_context(const avq_tensor *t, const char *name, int64_t B, const avq_denoiser *m) {
    char buf[96];
    AVQ_TRY(check_tensor(t, 3, name, "[B, L, D]"));
    if (t->dims[0] != B && t->dims[0] != 1)
        return avq_error(AVQ_ERR_SHAPE, "%s has batch %lld, expected %lld (the batch of x_T) or 1; got %s", name,
                         (long long)t->dims[0], (long long)B, avq_tensor_str(t, buf, sizeof buf));
    if (m->context_dim > 0 && t->dims[2] != m->context_dim)
        return avq_error(AVQ_ERR_SHAPE, "%s must be [B, L, %d] (the UNet's context_dim), got %s", name, m->context_dim,
                         avq_tensor_str(t, buf, sizeof buf));
    return AVQ_OK;
}

avq_status avq_sampler_check(const avq_sampler *s, const avq_denoiser *m, const avq_sample_inputs *in,
                             const avq_tensor *x_out) {
    char buf[96], buf2[96];
    if (!m || !m->eps) return avq_error(AVQ_ERR_ARG, "no model given");
    AVQ_TRY(check_tensor(in->x_T, 4, "x_T", "[B, C, h, w]"));
    const avq_tensor *x = in->x_T;
    const int64_t B = x->dims[0], C = x->dims[1], h = x->dims[2], w = x->dims[3];
    if (h % 8 || w % 8)
        return avq_error(AVQ_ERR_SHAPE,
                         "latent size %lldx%lld: height and width must be multiples of 8 (images multiples of 64), "
                         "x_T is %s",
                         (long long)h, (long long)w, avq_tensor_str(x, buf, sizeof buf));
    if (m->out_channels > 0 && C != m->out_channels)
        return avq_error(AVQ_ERR_SHAPE, "x_T has %lld channels but the UNet predicts %d: expected %s", (long long)C,
                         m->out_channels, "[B, out_channels, h, w]");
    /* the hybrid input: in_channels = latent channels + c_concat channels */
    const int64_t cc = in->c_concat ? in->c_concat->dims[1] : 0;
    if (m->in_channels > 0) {
        if (m->in_channels == C && in->c_concat)
            return avq_error(AVQ_ERR_ARG,
                             "c_concat given, but this UNet takes in_channels=%d (the latent alone, txt2img): "
                             "inpainting inputs need a UNet with in_channels=%lld",
                             m->in_channels, (long long)(C + cc));
        if (m->in_channels > C && !in->c_concat)
            return avq_error(AVQ_ERR_ARG,
                             "this UNet takes in_channels=%d (inpainting): pass c_concat [B, %lld, h, w] "
                             "(mask, masked-image latent)",
                             m->in_channels, (long long)(m->in_channels - C));
        if (m->in_channels < C)
            return avq_error(AVQ_ERR_SHAPE, "x_T has %lld channels, more than the UNet's in_channels=%d", (long long)C,
                             m->in_channels);
    }
    if (in->c_concat) {
        const avq_tensor *c = in->c_concat;
        AVQ_TRY(check_tensor(c, 4, "c_concat", "[B, Cc, h, w]"));
        if ((c->dims[0] != B && c->dims[0] != 1) || c->dims[2] != h || c->dims[3] != w ||
            (m->in_channels > 0 && c->dims[1] != m->in_channels - C))
            return avq_error(AVQ_ERR_SHAPE, "c_concat must be [%lld or 1, %lld, %lld, %lld] to go with x_T %s, got %s",
                             (long long)B, m->in_channels > 0 ? (long long)(m->in_channels - C) : (long long)c->dims[1],
                             (long long)h, (long long)w, avq_tensor_str(x, buf, sizeof buf),
                             avq_tensor_str(c, buf2, sizeof buf2));
    }
    AVQ_TRY(check_context(in->cond, "cond", B, m));
    if (in->uncond) {
        AVQ_TRY(check_context(in->uncond, "uncond", B, m));
        if (in->uncond->dims[1] != in->cond->dims[1] || in->uncond->dims[2] != in->cond->dims[2])
            return avq_error(AVQ_ERR_SHAPE, "uncond %s and cond %s must have the same length and width",
                             avq_tensor_str(in->uncond, buf, sizeof buf), avq_tensor_str(in->cond, buf2, sizeof buf2));
    }
    if (!isfinite(in->scale)) return avq_error(AVQ_ERR_ARG, "scale must be finite, got %g", (double)in->scale);
    if (in->noise) {
        const avq_tensor *z = in->noise;
        AVQ_TRY(check_tensor(z, 5, "noise", "[steps, B, C, h, w]"));
        if (z->dims[0] != s->n || z->dims[1] != B || z->dims[2] != C || z->dims[3] != h || z->dims[4] != w)
            return avq_error(AVQ_ERR_SHAPE, "noise must be [%d, %lld, %lld, %lld, %lld] (one x_T-shaped draw per step), got %s",
                             s->n, (long long)B, (long long)C, (long long)h, (long long)w,
                             avq_tensor_str(z, buf, sizeof buf));
    }
    if (in->generator && !avq_rng_kind_supported(in->generator->kind))
        return avq_error(AVQ_ERR_ARG, "the generator's kind %d cannot draw noise", (int)in->generator->kind);
    if (s->kind == AVQ_SAMPLER_DDIM && s->eta > 0.0 && !in->noise && !in->use_seed && !in->generator)
        return avq_error(AVQ_ERR_ARG,
                         "DDIM with eta=%g adds fresh noise every step: pass noise [%d, B, C, h, w], a generator or a seed",
                         s->eta, s->n);
    if (s->kind == AVQ_SAMPLER_EULER_A && !in->noise && !in->use_seed && !in->generator)
        return avq_error(AVQ_ERR_ARG,
                         "Euler ancestral adds fresh noise every step: pass noise [%d, B, C, h, w], a generator or a seed",
                         s->n);
    if (!is_f32_plain(x_out, 4) || !avq_tensor_same_shape(x_out, x))
        return avq_error(AVQ_ERR_SHAPE, "the output must be %s f32 like x_T", avq_tensor_str(x, buf, sizeof buf));
    return AVQ_OK;
}

/* ---- the loop --------------------------------------------------------------------- */

/* Everything one run needs, allocated once before the loop. */
typedef struct work {
    int64_t B, N, C, Cin, hw, L, D; /* N: model batch (2B with guidance) */
    int guided;
    float scale;
    avq_tensor x_in;  /* [N, Cin, h, w]: per sample x (C) then c_concat (Cin - C) */
    avq_tensor t_in;  /* [N] */
    avq_tensor ctx;   /* [N, L, D]: [uncond; cond] */
    avq_tensor raw;   /* [N, C, h, w]: model output */
    float *e;         /* [B*C*hw] guided eps */
    float *x1, *e2;   /* PLMS bootstrap */
    float *hist[3];   /* PLMS history, newest first */
    float *xi;        /* generated noise for one step */
    float *m[2];      /* DPM++: the data predictions of this and the previous step */
    float *block;     /* owned: all of the above */
} work;

static avq_status work_init(work *wk, const avq_sampler *s, const avq_sample_inputs *in) {
    memset(wk, 0, sizeof *wk);
    const avq_tensor *x = in->x_T;
    wk->B = x->dims[0];
    wk->C = x->dims[1];
    wk->hw = x->dims[2] * x->dims[3];
    wk->guided = avq_sample_guided(in);
    wk->scale = in->scale;
    wk->N = wk->guided ? 2 * wk->B : wk->B;
    wk->Cin = wk->C + (in->c_concat ? in->c_concat->dims[1] : 0);
    wk->L = in->cond->dims[1];
    wk->D = in->cond->dims[2];
    const int64_t lat = wk->B * wk->C * wk->hw;
    const int plms = s->kind == AVQ_SAMPLER_PLMS;
    const int dpm = s->kind == AVQ_SAMPLER_DPMPP_2M;
    const int gen_noise = avq_sampler_needs_noise(s) && !in->noise;
    const int64_t sizes[] = {
        wk->N * wk->Cin * wk->hw, wk->N, wk->N * wk->L * wk->D, wk->N * wk->C * wk->hw,
        lat,                      plms ? lat : 0, plms ? lat : 0, plms ? 3 * lat : 0,
        gen_noise ? lat : 0,      dpm ? 2 * lat : 0,
    };
    int64_t total = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) total += sizes[i];
    wk->block = malloc(sizeof(float) * (size_t)total);
    if (!wk->block) return avq_error(AVQ_ERR_MEMORY, "out of memory: %lld floats of sampler buffers", (long long)total);
    float *p = wk->block;
    wk->x_in = avq_tensor_4d(AVQ_F32, AVQ_PLAIN, wk->N, wk->Cin, x->dims[2], x->dims[3]);
    wk->x_in.data = p, p += sizes[0];
    wk->t_in = avq_tensor_make(AVQ_F32, AVQ_PLAIN, 1, (const int64_t[]){wk->N});
    wk->t_in.data = p, p += sizes[1];
    wk->ctx = avq_tensor_make(AVQ_F32, AVQ_PLAIN, 3, (const int64_t[]){wk->N, wk->L, wk->D});
    wk->ctx.data = p, p += sizes[2];
    wk->raw = avq_tensor_4d(AVQ_F32, AVQ_PLAIN, wk->N, wk->C, x->dims[2], x->dims[3]);
    wk->raw.data = p, p += sizes[3];
    wk->e = p, p += sizes[4];
    if (plms) {
        wk->x1 = p, p += lat;
        wk->e2 = p, p += lat;
        for (int i = 0; i < 3; i++) wk->hist[i] = p, p += lat;
    }
    if (gen_noise) wk->xi = p, p += lat;
    if (dpm) wk->m[0] = p, wk->m[1] = p + lat;
    wk->x_in.arena_off = wk->t_in.arena_off = wk->ctx.arena_off = wk->raw.arena_off = -1;

    /* The constant parts of the model input, written once: the context
     * [uncond; cond] (batch 1 repeated) and the c_concat channels. */
    const int64_t per_ctx = wk->L * wk->D;
    for (int64_t n = 0; n < wk->N; n++) {
        const avq_tensor *src = (wk->guided && n < wk->B) ? in->uncond : in->cond;
        const int64_t b = src->dims[0] == 1 ? 0 : n % wk->B;
        memcpy((float *)wk->ctx.data + n * per_ctx, (const float *)src->data + b * per_ctx, sizeof(float) * (size_t)per_ctx);
    }
    if (in->c_concat) {
        const int64_t cc = (wk->Cin - wk->C) * wk->hw;
        for (int64_t n = 0; n < wk->N; n++) {
            const int64_t b = in->c_concat->dims[0] == 1 ? 0 : n % wk->B;
            memcpy((float *)wk->x_in.data + n * wk->Cin * wk->hw + wk->C * wk->hw,
                   (const float *)in->c_concat->data + b * cc, sizeof(float) * (size_t)cc);
        }
    }
    return AVQ_OK;
}

/* e = guided eps(x / in_div, t): one model call on the (doubled) batch.
 * in_div = 1 (DDIM, PLMS, DPM++) copies x as is. */
static avq_status eval_eps(work *wk, const avq_denoiser *m, const float *x, float t, float in_div, float *e) {
    const int64_t lat1 = wk->C * wk->hw, lat = wk->B * lat1;
    float *xin = wk->x_in.data, *tin = wk->t_in.data;
    for (int64_t n = 0; n < wk->N; n++) {
        float *dst = xin + n * wk->Cin * wk->hw;
        const float *src = x + (n % wk->B) * lat1;
        if (in_div == 1.0f)
            memcpy(dst, src, sizeof(float) * (size_t)lat1);
        else
            for (int64_t j = 0; j < lat1; j++) dst[j] = src[j] / in_div;
        tin[n] = t;
    }
    AVQ_TRY(m->eps(m->user_data, &wk->x_in, &wk->t_in, &wk->ctx, &wk->raw));
    const float *raw = wk->raw.data;
    if (wk->guided) {
        const float s = wk->scale;
        const float *u = raw, *c = raw + lat;
        for (int64_t i = 0; i < lat; i++) e[i] = u[i] + s * (c[i] - u[i]);
    } else {
        memcpy(e, raw, sizeof(float) * (size_t)lat);
    }
    return AVQ_OK;
}

/* out = sqrt(aprev) x0 + sqrt(1 - aprev - sigma^2) e (+ sigma xi), x0 = (x - sqrt(1 - a) e) / sqrt(a).
 * float32, in the reference's order; out may alias x. */
static void ddim_update(const avq_sampler *s, int k, const float *x, const float *e, const float *xi, float *out,
                        int64_t n) {
    const float a = s->a[k], ap = s->aprev[k], sg = s->sigma[k];
    const float sqrt_a = sqrtf(a), sqrt_1ma = sqrtf(1.0f - a), sqrt_ap = sqrtf(ap);
    const float dir = sqrtf(1.0f - ap - sg * sg);
    if (xi && sg != 0.0f) {
        for (int64_t i = 0; i < n; i++) {
            const float x0 = (x[i] - sqrt_1ma * e[i]) / sqrt_a;
            out[i] = sqrt_ap * x0 + dir * e[i] + sg * xi[i];
        }
    } else {
        for (int64_t i = 0; i < n; i++) {
            const float x0 = (x[i] - sqrt_1ma * e[i]) / sqrt_a;
            out[i] = sqrt_ap * x0 + dir * e[i];
        }
    }
}

/* 1 when every value is finite (v - v is 0 for finite v, NaN otherwise). */
static int all_finite(const float *x, int64_t n) {
    float acc = 0.0f;
    for (int64_t i = 0; i < n; i++) acc += x[i] - x[i];
    return acc == 0.0f;
}

/* e' of PLMS from the raw eps e and the history (newest first), SPEC §6.2. */
static void plms_combine(const float *e, float *const *h, int nh, float *out, int64_t n) {
    if (nh == 1)
        for (int64_t i = 0; i < n; i++) out[i] = (3.0f * e[i] - h[0][i]) / 2.0f;
    else if (nh == 2)
        for (int64_t i = 0; i < n; i++) out[i] = (23.0f * e[i] - 16.0f * h[0][i] + 5.0f * h[1][i]) / 12.0f;
    else
        for (int64_t i = 0; i < n; i++)
            out[i] = (55.0f * e[i] - 59.0f * h[0][i] + 37.0f * h[1][i] - 9.0f * h[2][i]) / 24.0f;
}

static avq_status run_loop(const avq_sampler *s, const avq_denoiser *m, const avq_sample_inputs *in, work *wk, float *x) {
    const int64_t lat = wk->B * wk->C * wk->hw;
    const int n = s->n;
    const int plms = s->kind == AVQ_SAMPLER_PLMS;
    const int noisy = s->kind == AVQ_SAMPLER_DDIM && s->eta > 0.0;
    int nh = 0; /* PLMS history length */
    avq_generator own; /* the seeded NumPy stream when no generator is given */
    avq_generator *gen = in->generator;
    if (wk->xi && !gen) {
        avq_generator_seed(&own, AVQ_RNG_NUMPY, in->seed);
        gen = &own;
    }
    avq_tensor xt = avq_tensor_4d(AVQ_F32, AVQ_PLAIN, wk->B, wk->C, in->x_T->dims[2], in->x_T->dims[3]);
    xt.data = x;
    xt.arena_off = -1;

    for (int i = 0; i < n; i++) {
        const int k = n - 1 - i, t = s->tau[k];
        if (in->abort_flag && *in->abort_flag)
            return avq_error(AVQ_ERR_ABORTED, "sampling interrupted before step %d of %d (t=%d)", i, n, t);
        const float *xi = NULL;
        if (noisy) {
            if (in->noise) {
                xi = (const float *)in->noise->data + (int64_t)i * lat;
            } else {
                avq_generator_randn(gen, wk->xi, lat);
                xi = wk->xi;
            }
        }
        float *e = wk->e;
        AVQ_TRY(eval_eps(wk, m, x, (float)t, 1.0f, e));
        if (!plms) {
            ddim_update(s, k, x, e, xi, x, lat);
        } else {
            /* e' goes into x1's buffer once the bootstrap no longer needs it */
            float *ep = wk->x1;
            if (nh == 0) {
                const int t_next = s->tau[k > 0 ? k - 1 : 0];
                ddim_update(s, k, x, e, NULL, wk->x1, lat);
                AVQ_TRY(eval_eps(wk, m, wk->x1, (float)t_next, 1.0f, wk->e2));
                for (int64_t j = 0; j < lat; j++) ep[j] = (e[j] + wk->e2[j]) / 2.0f;
            } else {
                plms_combine(e, wk->hist, nh, ep, lat);
            }
            ddim_update(s, k, x, ep, NULL, x, lat);
            /* push the raw e (not e'): the oldest buffer takes its copy */
            float *oldest = wk->hist[2];
            wk->hist[2] = wk->hist[1];
            wk->hist[1] = wk->hist[0];
            wk->hist[0] = oldest;
            memcpy(oldest, e, sizeof(float) * (size_t)lat);
            if (nh < 3) nh++;
        }
        if (!all_finite(x, lat))
            return avq_error(AVQ_ERR_NUMERIC,
                             "the latent holds NaN or Inf after step %d of %d (t=%d): the model output or the inputs "
                             "are not finite",
                             i, n, t);
        if (in->on_step) {
            int modified = 0;
            AVQ_TRY(in->on_step(in->on_step_data, i, t, &xt, &modified));
            if (modified && !all_finite(x, lat))
                return avq_error(AVQ_ERR_NUMERIC, "the latent holds NaN or Inf after the callback of step %d (t=%d)", i,
                                 t);
        }
    }
    return AVQ_OK;
}

/* ---- the sigma kinds (diffusers' schedulers) ------------------------------------------- */

/* a = 1 / sqrt(sigma^2 + 1), s_t = sigma a, lambda = log a - log s_t: diffusers'
 * _sigma_to_alpha_sigma_t on float32 scalars (sigma 0 gives lambda = +inf). */
typedef struct dpm_point {
    float alpha, sigma_t, lambda;
} dpm_point;

static dpm_point dpm_at(float sigma) {
    dpm_point p;
    p.alpha = 1.0f / sqrtf(sigma * sigma + 1.0f);
    p.sigma_t = sigma * p.alpha;
    p.lambda = logf(p.alpha) - logf(p.sigma_t);
    return p;
}

/* One DPM-Solver++ step from loop step i (2M: second order but on the first
 * and the last step). m0 = this step's data prediction, m1 the previous one. */
static void dpm_update(const avq_sampler *s, int i, float *x, const float *m0, const float *m1, int64_t n) {
    const dpm_point pt = dpm_at(s->lev[i + 1]), p0 = dpm_at(s->lev[i]);
    const float h = pt.lambda - p0.lambda;
    const float ratio = pt.sigma_t / p0.sigma_t;
    const float c0 = pt.alpha * (expf(-h) - 1.0f);
    if (i == 0 || i == s->n - 1) {
        for (int64_t j = 0; j < n; j++) x[j] = ratio * x[j] - c0 * m0[j];
        return;
    }
    const dpm_point p1 = dpm_at(s->lev[i - 1]);
    const float h0 = p0.lambda - p1.lambda;
    const float r0 = h0 / h;
    const float inv_r0 = 1.0f / r0, c1 = 0.5f * c0;
    for (int64_t j = 0; j < n; j++) {
        const float d1 = inv_r0 * (m0[j] - m1[j]);
        x[j] = ratio * x[j] - c0 * m0[j] - c1 * d1;
    }
}

static avq_status run_sigma_loop(const avq_sampler *s, const avq_denoiser *m, const avq_sample_inputs *in, work *wk,
                                 float *x) {
    const int64_t lat = wk->B * wk->C * wk->hw;
    const int n = s->n;
    avq_generator own; /* the seeded NumPy stream when no generator is given */
    avq_generator *gen = in->generator;
    if (wk->xi && !gen) {
        avq_generator_seed(&own, AVQ_RNG_NUMPY, in->seed);
        gen = &own;
    }
    avq_tensor xt = avq_tensor_4d(AVQ_F32, AVQ_PLAIN, wk->B, wk->C, in->x_T->dims[2], in->x_T->dims[3]);
    xt.data = x;
    xt.arena_off = -1;
    /* x_T is standard normal noise; diffusers starts from randn * init_noise_sigma */
    if (s->init_sigma != 1.0f)
        for (int64_t j = 0; j < lat; j++) x[j] = x[j] * s->init_sigma;

    for (int i = 0; i < n; i++) {
        const float t = s->tstep[i];
        const float sigma = s->lev[i], next = s->lev[i + 1];
        if (in->abort_flag && *in->abort_flag)
            return avq_error(AVQ_ERR_ABORTED, "sampling interrupted before step %d of %d (t=%d)", i, n, (int)t);
        float *e = wk->e;
        if (s->kind == AVQ_SAMPLER_DPMPP_2M) {
            AVQ_TRY(eval_eps(wk, m, x, t, 1.0f, e));
            /* the data prediction of this step goes into the older buffer */
            float *m0 = wk->m[1], *m1 = wk->m[0];
            const dpm_point p = dpm_at(sigma);
            for (int64_t j = 0; j < lat; j++) m0[j] = (x[j] - p.sigma_t * e[j]) / p.alpha;
            dpm_update(s, i, x, m0, m1, lat);
            wk->m[0] = m0;
            wk->m[1] = m1;
        } else {
            AVQ_TRY(eval_eps(wk, m, x, t, sqrtf(sigma * sigma + 1.0f), e));
            float dt = next - sigma, up = 0.0f;
            const float *xi = NULL;
            if (s->kind == AVQ_SAMPLER_EULER_A) {
                up = sqrtf(next * next * (sigma * sigma - next * next) / (sigma * sigma));
                const float down = sqrtf(next * next - up * up);
                dt = down - sigma;
                if (in->noise) {
                    xi = (const float *)in->noise->data + (int64_t)i * lat;
                } else {
                    avq_generator_randn(gen, wk->xi, lat);
                    xi = wk->xi;
                }
            }
            for (int64_t j = 0; j < lat; j++) {
                const float x0 = x[j] - sigma * e[j];
                const float d = (x[j] - x0) / sigma;
                x[j] = x[j] + d * dt;
            }
            if (xi)
                for (int64_t j = 0; j < lat; j++) x[j] = x[j] + xi[j] * up;
        }
        if (!all_finite(x, lat))
            return avq_error(AVQ_ERR_NUMERIC,
                             "the latent holds NaN or Inf after step %d of %d (t=%d): the model output or the inputs "
                             "are not finite",
                             i, n, (int)t);
        if (in->on_step) {
            int modified = 0;
            AVQ_TRY(in->on_step(in->on_step_data, i, (int)t, &xt, &modified));
            if (modified && !all_finite(x, lat))
                return avq_error(AVQ_ERR_NUMERIC, "the latent holds NaN or Inf after the callback of step %d (t=%d)", i,
                                 (int)t);
        }
    }
    return AVQ_OK;
}

avq_status avq_sampler_run(const avq_sampler *s, const avq_denoiser *m, const avq_sample_inputs *in,
                           avq_tensor *x_out) {
    AVQ_TRY(avq_sampler_check(s, m, in, x_out));
    work wk;
    AVQ_TRY(work_init(&wk, s, in));
    float *x = x_out->data;
    const int64_t lat = wk.B * wk.C * wk.hw;
    if (x != in->x_T->data) memmove(x, in->x_T->data, sizeof(float) * (size_t)lat);
    avq_status st = avq_sampler_kind_is_sigma(s->kind) ? run_sigma_loop(s, m, in, &wk, x) : run_loop(s, m, in, &wk, x);
    free(wk.block);
    return st;
}
