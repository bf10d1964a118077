/* The DDPM noise schedule and the DDIM discretisation of the original code
 * (SPEC §5.1, §6.1).
 *
 *   beta_i   = (sqrt(linear_start) + i * (sqrt(linear_end) - sqrt(linear_start)) / (T - 1))^2
 *   abar_i   = prod_{j <= i} (1 - beta_j)          float64, then stored as float32
 *   tau_k    = k * (T / S) + 1  for k*(T/S) in range(0, T)   ("uniform" + the +1 offset)
 *   a_k      = abar[tau_k],  aprev_k = abar[tau_{k-1}] (aprev_0 = abar[0])
 *   sigma_k  = eta * sqrt((1 - aprev_k) / (1 - a_k) * (1 - a_k / aprev_k))   float64 -> float32
 */
#ifndef AVQ_SCHEDULE_H
#define AVQ_SCHEDULE_H

#include "core/status.h"

typedef struct avq_schedule_config {
    double linear_start; /* 0.00085 */
    double linear_end;   /* 0.012 */
    int timesteps;       /* T = 1000 */
} avq_schedule_config;

/* SD v1's values. */
#define AVQ_SCHEDULE_SD1 ((avq_schedule_config){0.00085, 0.012, 1000})

/* AVQ_ERR_ARG naming the field unless 0 < linear_start < linear_end < 1 and
 * 2 <= timesteps <= 100000. */
avq_status avq_schedule_check(const avq_schedule_config *cfg);

/* out[0..T) = float32(abar_i). */
avq_status avq_schedule_alphas_cumprod(const avq_schedule_config *cfg, float *out);

/* Number of DDIM timesteps for `steps` requested: len(range(0, T, T // steps)),
 * which can exceed `steps` when steps does not divide T (the reference uses
 * that whole list). AVQ_ERR_ARG unless 1 <= steps <= T, and when the list's
 * last entry + 1 reaches T (T // steps divides T - 1: e.g. 1000 steps of a
 * 1000-step schedule), because tau would index past the schedule - the
 * original fails on those step counts too. */
avq_status avq_ddim_count(int steps, int timesteps, int *count);

/* tau[0..count) ascending (tau[0] = 1), a[k], aprev[k], sigma[k] for eta.
 * `abar` is the float32 table of avq_schedule_alphas_cumprod. */
avq_status avq_ddim_params(int steps, int timesteps, const float *abar, double eta, int *tau, float *a,
                           float *aprev, float *sigma);

/* ---- diffusers' schedulers (DPM++ 2M, Euler, Euler a; see sampler.h) ---- */

/* out[0..T) = diffusers' scaled_linear alphas_cumprod: float32 betas from
 * torch.linspace(sqrt(start), sqrt(end), T) squared, their float32 1 - beta
 * multiplied up in float64 (torch.cumprod's CPU accumulator) and stored as float32. */
avq_status avq_schedule_alphas_cumprod_f32(const avq_schedule_config *cfg, float *out);

/* diffusers' timestep_spacing (steps_offset 1 for "leading", SD 1.x's value). */
typedef enum avq_spacing { AVQ_SPACING_LINSPACE = 0, AVQ_SPACING_LEADING = 1, AVQ_SPACING_TRAILING = 2 } avq_spacing;

/* t[0..n) descending, as diffusers' set_timesteps computes them. dpm != 0:
 * DPMSolverMultistepScheduler's integer variants (n + 1 points, the last dropped);
 * otherwise the Euler schedulers' float32 ones (linspace may be fractional).
 * AVQ_ERR_ARG unless 1 <= n and every t lies in [0, T - 1]. */
avq_status avq_spacing_timesteps(avq_spacing spacing, int steps, int timesteps, int dpm, float *t);

/* numpy.interp(t, arange(T), sig) in float64 for t in [0, T - 1]. */
double avq_interp_sigma(const float *sig, int timesteps, double t);

/* Karras et al.'s sigmas (rho 7) between s(0) and s(T-1) of `sig` (length T,
 * ascending): out[0..n) descending, float64 like numpy, and their timesteps
 * round(t(sigma)) by diffusers' log-sigma interpolation. */
void avq_karras_sigmas(const float *sig, int timesteps, int steps, double *out, int *t);

#endif
