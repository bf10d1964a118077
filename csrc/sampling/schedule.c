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
