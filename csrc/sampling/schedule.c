/* Noise schedule and DDIM tables (see schedule.h). */
#include "sampling/schedule.h"

#include <math.h>
#include <stdio.h>

avq_status avq_schedule_check(const avq_schedule_config *cfg) {
    if (!(cfg->linear_start > 0.0 && cfg->linear_start < 1.0))
        return avq_error(AVQ_ERR_ARG, "linear_start must be in (0, 1), got %g", cfg->linear_start);
    if (!(cfg->linear_end > cfg->linear_start && cfg->linear_end < 1.0))
        return avq_error(AVQ_ERR_ARG, "linear_end must be in (linear_start, 1) = (%g, 1), got %g", cfg->linear_start,
                         cfg->linear_end);
    if (cfg->timesteps < 2 || cfg->timesteps > 100000)
        return avq_error(AVQ_ERR_ARG, "timesteps must be between 2 and 100000, got %d", cfg->timesteps);
    return AVQ_OK;
}

avq_status avq_schedule_alphas_cumprod(const avq_schedule_config *cfg, float *out) {
    AVQ_TRY(avq_schedule_check(cfg));
    const int T = cfg->timesteps;
    const double lo = sqrt(cfg->linear_start), hi = sqrt(cfg->linear_end);
    const double step = (hi - lo) / (double)(T - 1);
    double prod = 1.0;
    for (int i = 0; i < T; i++) {
        /* The reference's float64 linspace walks up from the start for the
         * first half and down from the end for the second (invisible after
         * the float32 cast, but free to match). */
        double root = i < T / 2 ? lo + step * (double)i : hi - step * (double)(T - 1 - i);
        double beta = root * root;
        prod *= 1.0 - beta;
        out[i] = (float)prod;
    }
    return AVQ_OK;
}

/* Entries of range(0, T, T // steps) + 1; 0 when the last reaches T. */
static int ddim_len(int steps, int timesteps) {
    const int c = timesteps / steps;
    const int n = (timesteps + c - 1) / c;
    return (n - 1) * c + 1 < timesteps ? n : 0;
}

avq_status avq_ddim_count(int steps, int timesteps, int *count) {
    if (steps < 1 || steps > timesteps)
        return avq_error(AVQ_ERR_ARG, "steps must be between 1 and %d (the schedule's timesteps), got %d", timesteps,
                         steps);
    const int n = ddim_len(steps, timesteps);
    if (n == 0) {
        int below = steps - 1, above = steps + 1;
        while (below >= 1 && !ddim_len(below, timesteps)) below--;
        while (above <= timesteps && !ddim_len(above, timesteps)) above++;
        char hint[64];
        if (above <= timesteps)
            snprintf(hint, sizeof hint, "%d or %d", below, above);
        else
            snprintf(hint, sizeof hint, "at most %d", below);
        const int c = timesteps / steps;
        return avq_error(AVQ_ERR_ARG,
                         "steps=%d: the original's uniform DDIM discretisation (stride %d, +1 offset) puts the last "
                         "timestep at %d, past the schedule's last index %d, so the original fails for this step "
                         "count too; use %s steps",
                         steps, c, ((timesteps + c - 1) / c - 1) * c + 1, timesteps - 1, hint);
    }
    *count = n;
    return AVQ_OK;
}

avq_status avq_ddim_params(int steps, int timesteps, const float *abar, double eta, int *tau, float *a, float *aprev,
                           float *sigma) {
    int n;
    AVQ_TRY(avq_ddim_count(steps, timesteps, &n));
    if (!(eta >= 0.0) || !isfinite(eta)) return avq_error(AVQ_ERR_ARG, "eta must be a finite number >= 0, got %g", eta);
    const int c = timesteps / steps;
    for (int k = 0; k < n; k++) {
        tau[k] = k * c + 1;
        a[k] = abar[tau[k]];
        aprev[k] = k == 0 ? abar[0] : abar[tau[k - 1]];
        const double ak = a[k], ap = aprev[k];
        sigma[k] = (float)(eta * sqrt((1.0 - ap) / (1.0 - ak) * (1.0 - ak / ap)));
    }
    return AVQ_OK;
}

/* ---- diffusers' schedulers ---------------------------------------------------------- */

avq_status avq_schedule_alphas_cumprod_f32(const avq_schedule_config *cfg, float *out) {
    AVQ_TRY(avq_schedule_check(cfg));
    const int T = cfg->timesteps;
    /* torch.linspace in float32: the first half walks up from the start, the
     * second half down from the end, with a float32 step and fused
     * multiply-adds (torch's vectorised CPU kernel; a plain multiply and add
     * differ in the last bit for ~15% of the entries) */
    const float lo = (float)sqrt(cfg->linear_start), hi = (float)sqrt(cfg->linear_end);
    const float step = (hi - lo) / (float)(T - 1);
    double prod = 1.0;
    for (int i = 0; i < T; i++) {
        const float root = i < T / 2 ? fmaf(step, (float)i, lo) : fmaf(-step, (float)(T - 1 - i), hi);
        const float beta = root * root;
        prod *= (double)(1.0f - beta);
        out[i] = (float)prod;
    }
    return AVQ_OK;
}

avq_status avq_spacing_timesteps(avq_spacing spacing, int steps, int timesteps, int dpm, float *t) {
    const int T = timesteps, n = steps;
    if (n < 1 || n > T - 1)
        return avq_error(AVQ_ERR_ARG,
                         "steps must be between 1 and %d for this sampler (the schedule has %d timesteps), got %d",
                         T - 1, T, n);
    if (spacing == AVQ_SPACING_LINSPACE) {
        /* numpy.linspace in float64: k * (stop / (num - 1)), the last exactly stop */
        const int num = n + (dpm ? 1 : 0);
        const double stop = (double)(T - 1), step = num > 1 ? stop / (double)(num - 1) : 0.0;
        for (int i = 0; i < n; i++) {
            const int k = num - 1 - i; /* descending */
            const double v = (num > 1 && k == num - 1) ? stop : (double)k * step;
            t[i] = dpm ? (float)rint(v) : (float)v;
        }
    } else if (spacing == AVQ_SPACING_LEADING) {
        const int num = n + (dpm ? 1 : 0), ratio = T / num;
        for (int i = 0; i < n; i++) t[i] = (float)((num - 1 - i) * ratio + 1);
    } else if (spacing == AVQ_SPACING_TRAILING) {
        /* numpy.arange(T, 0, -T / n).round() - 1 */
        const double ratio = (double)T / (double)n;
        const double len = ceil((0.0 - (double)T) / -ratio); /* numpy.arange's length */
        if (len != (double)n)
            return avq_error(AVQ_ERR_ARG,
                             "steps=%d: the \"trailing\" spacing's float stride T/steps yields %.0f timesteps in "
                             "diffusers, not %d; use another step count or spacing",
                             n, len, n);
        for (int i = 0; i < n; i++) t[i] = (float)(rint((double)T + (double)i * -ratio) - 1.0);
    } else {
        return avq_error(AVQ_ERR_ARG, "unknown timestep spacing %d", (int)spacing);
    }
    for (int i = 0; i < n; i++)
        if (!(t[i] >= 0.0f && t[i] <= (float)(T - 1)))
            return avq_error(AVQ_ERR_ARG,
                             "steps=%d: this timestep spacing puts a timestep at %g, outside the schedule's 0..%d; use "
                             "fewer steps",
                             n, (double)t[i], T - 1);
    return AVQ_OK;
}

double avq_interp_sigma(const float *sig, int timesteps, double t) {
    if (t <= 0.0) return sig[0];
    if (t >= (double)(timesteps - 1)) return sig[timesteps - 1];
    const int j = (int)t;
    if ((double)j == t) return sig[j];
    const double slope = (double)sig[j + 1] - (double)sig[j];
    return slope * (t - (double)j) + (double)sig[j];
}

void avq_karras_sigmas(const float *sig, int timesteps, int steps, double *out, int *t) {
    const double rho = 7.0;
    const double smin = sig[0], smax = sig[timesteps - 1];
    const double min_inv = pow(smin, 1.0 / rho), max_inv = pow(smax, 1.0 / rho);
    /* numpy.linspace(0, 1, n): j * (1 / (n - 1)), the last exactly 1 */
    const double dstep = steps > 1 ? 1.0 / (double)(steps - 1) : 0.0;
    for (int j = 0; j < steps; j++) {
        const double ramp = (steps > 1 && j == steps - 1) ? 1.0 : (double)j * dstep;
        out[j] = pow(max_inv + ramp * (min_inv - max_inv), rho);
        /* diffusers' _sigma_to_t: the last index whose float32 log sigma is
         * <= log(sigma) (0 if none, at most T - 2), then linear in log sigma */
        const double ls = log(out[j] > 1e-10 ? out[j] : 1e-10);
        int low = 0;
        for (int k = 0; k < timesteps; k++)
            if (ls - (double)logf(sig[k]) >= 0.0) low = k;
        if (low > timesteps - 2) low = timesteps - 2;
        const double l0 = (double)logf(sig[low]), l1 = (double)logf(sig[low + 1]);
        double w = (l0 - ls) / (l0 - l1);
        w = w < 0.0 ? 0.0 : (w > 1.0 ? 1.0 : w);
        t[j] = (int)rint((1.0 - w) * (double)low + w * (double)(low + 1));
    }
}
