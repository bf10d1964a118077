/* asymvq's hot float loops, compiled once per ISA level (simd_body.h included
 * by simd_avx512.c, simd_avx2.c, simd_baseline.c) and picked at run time by
 * the one ISA decision of core/engine.h, so they honour the same
 * ONEDNN_MAX_CPU_ISA cap as oneDNN does (compiler multiversioning would
 * follow CPUID alone). */
#ifndef AVQ_SIMD_H
#define AVQ_SIMD_H

#include "ops.h"

typedef struct avq_simd_kernels {
    const char *name; /* "avx512", "avx2", "baseline" */
    /* group norm, rows [r0, r0 + n) of an NHWC activation C wide: acc[c] += x[r, c]
     * (sq = 0) or acc[c] += (x[r, c] - mean[c])^2 (sq = 1). */
    void (*gn_accumulate)(const void *xd, avq_dtype dt, int64_t r0, int64_t n, int64_t C, const float *mean, float *acc,
                          int sq);
    /* v = (v - mu) * a + b, then SiLU if asked. */
    void (*gn_apply)(float *v, const float *mu, const float *a, const float *b, int64_t m, int silu_after);
    /* An activation over a row, in place. */
    void (*act_row)(float *v, int64_t m, avq_act act);
    /* exp(scale * row - max) in place over [0, limit), zeros up to M; returns the sum. */
    float (*softmax_row_unnormalised)(float *row, int64_t limit, int64_t M, float scale);
    /* Winograd F(2x2, 3x3) input transform of one tile: 16 input rows d -> 16 rows v, C wide. */
    void (*wino_input_tile)(const float *const *d, float *const *v, int64_t C);
    /* Output transform of one tile plus bias and add: 16 rows m -> 4 rows y, C wide. */
    void (*wino_output_tile)(const float *const *m, float *const *y, const float *bias, const float *const *a,
                             int64_t C);
    /* wino_input_tile for bf16 rows (computed in f32, stored rounded to bf16). */
    void (*wino_input_tile_bf16)(const uint16_t *const *d, uint16_t *const *v, int64_t C);
    /* y = bf16(v + add) over C values (add bf16, or NULL for none), rounding to nearest even. */
    void (*add_store_bf16)(const float *v, const uint16_t *add, uint16_t *y, int64_t C);
    /* y = value * GELU(gate) (erf form, |erf error| <= 1.5e-7) over m values of dtype dt
     * (f32 or bf16, computed in f32); y may alias either. */
    void (*geglu_row)(const void *value, const void *gate, void *y, int64_t m, avq_dtype dt);
} avq_simd_kernels;

/* The kernels for this process's ISA level (decided once); never NULL. */
const avq_simd_kernels *avq_simd(void);

/* One table per level; a level the compiler cannot target aliases baseline. */
extern const avq_simd_kernels avq_simd_avx512, avq_simd_avx2, avq_simd_baseline;

#endif
