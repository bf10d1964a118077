/* DDIM (any eta) and PLMS as the original code runs them (SPEC §5.5, §6),
 * with classifier-free guidance and the hybrid (inpainting) input, the whole
 * loop in C.
 *
 * The model is a callback (avq_denoiser), so the samplers know nothing about
 * the UNet: the Python binding wires asymvq's C UNet (or, slowly, any Python
 * callable) into it, and tests use deterministic stand-ins.
 *
 *   avq_sampler *s;  avq_sampler_create(AVQ_SAMPLER_DDIM, 50, 1.0, &cfg, &s);
 *   avq_sample_inputs in = {.x_T = &xT, .cond = &c, .uncond = &uc, .scale = 7.5f,
 *                           .c_concat = &cc, .seed = 0, .use_seed = 1};
 *   avq_sampler_run(s, &model, &in, &x0);
 *
 * A sampler is immutable after creation; avq_sampler_run allocates its work
 * buffers once before the loop (none inside it) and may run concurrently on
 * different inputs if the denoiser allows it.
 *
 * Per step i = 0..n-1 the loop visits k = n-1-i (t = tau[k], descending):
 *   guided eps   e = e_u + scale * (e_c - e_u), one model call on the batch
 *                [uncond (B); cond (B)] in that order; unguided (uncond NULL or
 *                scale == 1): one call on B.
 *   model input  x_t alone, or x_t (C) ++ c_concat (mask, masked-image latent)
 *                along channels, in that order (SPEC §5.3).
 *   DDIM         x0 = (x - sqrt(1-a_k) e) / sqrt(a_k)
 *                x  = sqrt(aprev_k) x0 + sqrt(1 - aprev_k - sigma_k^2) e + sigma_k xi_i
 *   PLMS         SPEC §6.2: the first step averages e with a second model call at
 *                the next timestep; later steps use Adams-Bashforth 2/3/4 on the
 *                history of raw e; n + 1 model calls in all.
 * Float32 arithmetic in the reference's operation order.
 *
 * The sigma kinds follow diffusers (0.2x-0.4x) with SD 1.x's scheduler config
 * (scaled_linear betas, steps_offset 1, epsilon) and a chosen timestep spacing:
 * "linspace" (what X.from_config(SD 1.5's scheduler config) gives in diffusers
 * >= 0.19, which no longer carries PNDM's defaulted "leading" over), "leading"
 * or "trailing" (formulas in schedule.h's avq_spacing_timesteps):
 *   schedule     diffusers' own float32 one: betas = linspace_f32(sqrt(start),
 *                sqrt(end), T)^2, abar = cumprod(1 - betas); s(t) = sqrt((1-abar)/abar)
 *   timesteps    e.g. "leading": Euler/Euler a (n-1-i) * (T // n) + 1, DPM++ (n-i) * (T // (n+1)) + 1;
 *                DPM++ with karras: round(t(sigma)) of the Karras sigmas (rho 7)
 *   sigma_i      s(t_i) (linear interpolation for fractional t), sigma_n = 0
 *   x_T          standard normal noise: the loop starts from x_T * init_noise_sigma
 *                (Euler/Euler a: sigma_0, or sqrt(sigma_0^2 + 1) with "leading";
 *                DPM++: 1), as the
 *                diffusers pipelines scale their latents
 *   Euler        model input x / sqrt(sigma^2 + 1) (c_concat unscaled); x0 = x - sigma e;
 *                x += (x - x0) / sigma * (sigma_{i+1} - sigma)
 *   Euler a      as Euler towards sigma_down, then + sigma_up xi_i (one draw per step)
 *   DPM++ 2M     x0 = (x - s_t e) / a_t (a = 1/sqrt(sigma^2+1), s_t = sigma a);
 *                first order on the first and the last step, second order
 *                (midpoint) in between; n model calls.
 *
 * Noise xi_i (DDIM with eta > 0, and Euler a): noise[i] from the caller; or drawn by
 * the caller's generator (rng.h), one draw of [B, C, h, w] per step, as the
 * original's p_sample_ddim calls torch.randn(x.shape) once per step: the
 * generator advances and a later run continues its stream; or generated from
 * `seed` by NumPy's legacy generator: one stream for the whole run, so xi
 * equals float32(RandomState(seed).randn(n, B, C, h, w))[i]. */
#ifndef AVQ_SAMPLER_H
#define AVQ_SAMPLER_H

#include <stdint.h>

#include "core/tensor.h"
#include "sampling/rng.h"
#include "sampling/schedule.h"

typedef enum avq_sampler_kind {
    AVQ_SAMPLER_DDIM = 0,
    AVQ_SAMPLER_PLMS = 1,
    AVQ_SAMPLER_DPMPP_2M = 2, /* diffusers' DPMSolverMultistepScheduler, dpmsolver++, order 2 */
    AVQ_SAMPLER_EULER = 3,    /* diffusers' EulerDiscreteScheduler */
    AVQ_SAMPLER_EULER_A = 4,  /* diffusers' EulerAncestralDiscreteScheduler */
} avq_sampler_kind;

/* 1 for the kinds that follow diffusers' k-diffusion-style schedulers (sigma space). */
int avq_sampler_kind_is_sigma(avq_sampler_kind kind);

typedef struct avq_sampler avq_sampler;

/* The model: eps_out = eps(x, t, context) for one batch of N = x->dims[0].
 * All tensors f32, AVQ_PLAIN, contiguous, data set, owned by the sampler:
 *   x        [N, in_channels, h, w]
 *   t        [N]            integer DDPM timesteps as floats (981, 961, ...)
 *   context  [N, L, D]
 *   eps_out  [N, C, h, w]   to be written (C = the latent's channels)
 * A non-OK status stops the loop and is returned by avq_sampler_run. The
 * *_channels / context_dim fields let the sampler check the inputs against the
 * model before any call (0 = unknown, not checked). */
typedef struct avq_denoiser {
    avq_status (*eps)(void *user_data, const avq_tensor *x, const avq_tensor *t, const avq_tensor *context,
                      avq_tensor *eps_out);
    void *user_data; /* borrowed */
    int in_channels;
    int out_channels;
    int context_dim;
} avq_denoiser;

/* Called after every step with the new latent x [B, C, h, w] (step = 0-based
 * loop index, timestep = the t that step denoised from). The hook may write x;
 * it then sets *modified = 1 and the sampler checks x again. A non-OK status
 * stops the loop and is returned as is. */
typedef avq_status (*avq_sampler_step_fn)(void *user_data, int step, int timestep, avq_tensor *x, int *modified);

typedef struct avq_sample_inputs {
    const avq_tensor *x_T;      /* [B, C, h, w], h and w multiples of 8 */
    const avq_tensor *cond;     /* [B or 1, L, D] (batch 1 is repeated) */
    const avq_tensor *uncond;   /* [B or 1, L, D], or NULL: no guidance */
    float scale;                /* guidance scale; 1 means one unguided call */
    const avq_tensor *c_concat; /* [B or 1, Cc, h, w] or NULL; in_channels = C + Cc */
    const avq_tensor *noise;    /* [n, B, C, h, w] or NULL (n = avq_sampler_num_steps) */
    int use_seed;               /* DDIM with eta > 0 or Euler a, noise NULL: generate xi from seed */
    uint32_t seed;
    avq_generator *generator;   /* as use_seed: draw xi from it (borrowed, advanced;
                                   takes precedence over use_seed; nothing else may use it meanwhile) */
    avq_sampler_step_fn on_step; /* optional */
    void *on_step_data;
    const volatile int *abort_flag; /* optional: nonzero stops before the next step */
} avq_sample_inputs;

/* AVQ_ERR_ARG naming the problem: steps outside 1..T or a step count the
 * original discretisation cannot run (schedule.h), eta < 0, any kind but DDIM
 * with eta != 0, a bad schedule config. */
avq_status avq_sampler_create(avq_sampler_kind kind, int steps, double eta, const avq_schedule_config *cfg,
                              avq_sampler **out);
/* As avq_sampler_create, plus, for the sigma kinds: karras != 0 uses Karras
 * et al.'s sigmas (DPM++ 2M only; AVQ_ERR_ARG for the other kinds), and
 * diffusers' timestep spacing (ignored by DDIM/PLMS and with karras). */
avq_status avq_sampler_create_ex(avq_sampler_kind kind, int steps, double eta, int karras, avq_spacing spacing,
                                 const avq_schedule_config *cfg, avq_sampler **out);
void avq_sampler_destroy(avq_sampler *s);

avq_sampler_kind avq_sampler_get_kind(const avq_sampler *s);
double avq_sampler_eta(const avq_sampler *s);
/* n: the number of timesteps the loop visits (can exceed the requested steps). */
int avq_sampler_num_steps(const avq_sampler *s);
/* 1 when a run adds fresh noise every step (DDIM with eta > 0, Euler a). */
int avq_sampler_needs_noise(const avq_sampler *s);
/* Number of model calls of one run (n, or n + 1 for PLMS); each on 2B with guidance. */
int avq_sampler_num_model_calls(const avq_sampler *s);
/* Tables indexed by k (ascending timesteps, length n): tau, a, aprev, sigma. */
const int *avq_sampler_timesteps(const avq_sampler *s);
const float *avq_sampler_alphas(const avq_sampler *s);
const float *avq_sampler_alphas_prev(const avq_sampler *s);
const float *avq_sampler_sigmas(const avq_sampler *s);
/* The float32 schedule, length *timesteps (for the sigma kinds: diffusers' float32 one). */
const float *avq_sampler_alphas_cumprod(const avq_sampler *s, int *timesteps);
/* Sigma kinds: the noise levels in loop order, length n + 1 (the last is 0),
 * and the factor x_T is multiplied by first; NULL and 1 for DDIM/PLMS. */
const float *avq_sampler_noise_levels(const avq_sampler *s);
float avq_sampler_init_noise_sigma(const avq_sampler *s);
int avq_sampler_karras(const avq_sampler *s);
avq_spacing avq_sampler_spacing(const avq_sampler *s);
/* Sigma kinds: the timestep the model sees at loop step i (float: "linspace"
 * Euler timesteps are fractional), length n; NULL for DDIM/PLMS. */
const float *avq_sampler_model_timesteps(const avq_sampler *s);

/* 1 when the inputs ask for classifier-free guidance (uncond set, scale != 1):
 * the model then sees batches of 2B, otherwise B. */
int avq_sample_guided(const avq_sample_inputs *in);

/* Checks every input against the others, the sampler and the model (what the
 * model declares): AVQ_ERR_SHAPE / AVQ_ERR_ARG naming the problem. */
avq_status avq_sampler_check(const avq_sampler *s, const avq_denoiser *model, const avq_sample_inputs *in,
                             const avq_tensor *x_out);

/* Runs the loop from x_T into x_out [B, C, h, w] (may alias x_T). Errors:
 * those of avq_sampler_check; AVQ_ERR_NUMERIC when the latent holds NaN/Inf
 * after a step or after the hook changed it; AVQ_ERR_ABORTED when the abort
 * flag was raised; whatever the model or the hook returned. On error x_out
 * holds the last latent reached. */
avq_status avq_sampler_run(const avq_sampler *s, const avq_denoiser *model, const avq_sample_inputs *in,
                           avq_tensor *x_out);

#endif
