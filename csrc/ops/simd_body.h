/* The bodies of simd.h's kernels. Included once per ISA level, after a target
 * pragma, with AVQ_SIMD_TABLE naming the table to define: every function here
 * is static, so each level gets its own copies. Loops are written for the
 * auto-vectoriser (omp simd, branch-free exp). */
#include <math.h>
#include <string.h>

#include "core/tensor.h"
#include "simd.h"
#include "vmath.h"

#if !defined(AVQ_SIMD_TABLE) || !defined(AVQ_SIMD_WIDTH)
#error "define AVQ_SIMD_TABLE and AVQ_SIMD_WIDTH (floats per vector) before including simd_body.h"
#endif

#define SIMD_ROW_CHUNK 1024

static inline float simd_silu(float x) { return x / (1.f + avq_vexpf(-x)); }
/* GELU(x) = 0.5 x (1 + erf(x / sqrt 2)) with erf by Abramowitz & Stegun 7.1.26
 * (|error| <= 1.5e-7, the form oneDNN's gelu_erf uses): 1 - erf(a) = P(t) exp(-a^2),
 * t = 1 / (1 + p a), a = |z|. For z < 0, 1 + erf(z) is P(t) exp(-a^2) itself, not
 * 1 - (1 - tiny): relative error < 5e-4 down to x = -4. */
#define GELU_P  0.3275911f
#define GELU_A1 0.254829592f
#define GELU_A2 -0.284496736f
#define GELU_A3 1.421413741f
#define GELU_A4 -1.453152027f
#define GELU_A5 1.061405429f

static inline float simd_gelu(float x) {
    float z = x * 0.70710678118654752f, a = fabsf(z);
    float t = 1.f / (1.f + GELU_P * a);
    float q = t * (GELU_A1 + t * (GELU_A2 + t * (GELU_A3 + t * (GELU_A4 + t * GELU_A5)))) * avq_vexpf(-a * a);
    return 0.5f * x * (z < 0.f ? q : 2.f - q);
}

/* avq_vexpf on AVQ_SIMD_WIDTH lanes with GCC vector extensions: GCC will not
 * if-convert the scalar form's clamps without AVX-512 masks (AVX2 and SSE2
 * loops stayed scalar), so the clamps here are explicit selects. NaN stays
 * NaN (it fails both compares). Same polynomial, so the same values. */
typedef float vf_t __attribute__((vector_size(4 * AVQ_SIMD_WIDTH)));
typedef int32_t vi_t __attribute__((vector_size(4 * AVQ_SIMD_WIDTH)));
#define VW AVQ_SIMD_WIDTH

static inline vf_t vf_load(const float *p) {
    vf_t v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void vf_store(float *p, vf_t v) { memcpy(p, &v, sizeof v); }
static inline vf_t vf_select(vi_t mask, vf_t a, vf_t b) { return (vf_t)(((vi_t)a & mask) | ((vi_t)b & ~mask)); }

static inline vf_t vexp(vf_t x) {
    const vf_t zero = {0};
    x = vf_select(x < -87.f, zero - 87.f, x);
    x = vf_select(x > 88.f, zero + 88.f, x);
    vf_t t = x * 1.44269504088896341f;
    vf_t n = (t + 12582912.f) - 12582912.f; /* round to nearest */
    vf_t r = x - n * 0.693145751953125f;
    r = r - n * 1.42860682030941723e-06f;
    vf_t p = zero + 1.f / 720.f;
    p = p * r + 1.f / 120.f;
    p = p * r + 1.f / 24.f;
    p = p * r + 1.f / 6.f;
    p = p * r + 0.5f;
    p = p * r + 1.f;
    p = p * r + 1.f;
    vi_t bits = (__builtin_convertvector(n, vi_t) + 127) << 23;
    return p * (vf_t)bits;
}

static inline vf_t vsilu(vf_t x) { return x / (1.f + vexp(-x)); }

/* simd_gelu on AVQ_SIMD_WIDTH lanes (same polynomial, so the same values). */
static inline vf_t vgelu(vf_t x) {
    const vf_t zero = {0};
    vf_t z = x * 0.70710678118654752f;
    vf_t a = vf_select(z < zero, zero - z, z);
    vf_t t = 1.f / (1.f + GELU_P * a);
    vf_t q = t * (GELU_A1 + t * (GELU_A2 + t * (GELU_A3 + t * (GELU_A4 + t * GELU_A5)))) * vexp(zero - a * a);
    return 0.5f * x * vf_select(z < zero, q, 2.f - q);
}

static void gn_accumulate(const void *xd, avq_dtype dt, int64_t r0, int64_t n, int64_t C, const float *mean, float *acc,
                          int sq) {
    float buf[SIMD_ROW_CHUNK];
    for (int64_t r = r0; r < r0 + n; r++) {
        for (int64_t k = 0; k < C; k += SIMD_ROW_CHUNK) {
            int64_t m = C - k < SIMD_ROW_CHUNK ? C - k : SIMD_ROW_CHUNK;
            const float *v = buf;
            if (dt == AVQ_F32)
                v = (const float *)xd + r * C + k;
            else
                avq_load_row(xd, dt, r * C + k, buf, m);
            float *a = acc + k;
            if (sq) {
                const float *mu = mean + k;
#pragma omp simd
                for (int64_t i = 0; i < m; i++) a[i] += (v[i] - mu[i]) * (v[i] - mu[i]);
            } else {
#pragma omp simd
                for (int64_t i = 0; i < m; i++) a[i] += v[i];
            }
        }
    }
}

static void gn_apply(float *v, const float *mu, const float *a, const float *b, int64_t m, int silu_after) {
    if (silu_after) {
        int64_t i = 0;
        for (; i + VW <= m; i += VW)
            vf_store(v + i, vsilu((vf_load(v + i) - vf_load(mu + i)) * vf_load(a + i) + vf_load(b + i)));
        for (; i < m; i++) v[i] = simd_silu((v[i] - mu[i]) * a[i] + b[i]);
    } else {
#pragma omp simd
        for (int64_t i = 0; i < m; i++) v[i] = (v[i] - mu[i]) * a[i] + b[i];
    }
}

/* The switch outside the loops so they vectorise. */
static void act_row(float *v, int64_t m, avq_act act) {
    switch (act) {
    case AVQ_ACT_RELU:
#pragma omp simd
        for (int64_t i = 0; i < m; i++) v[i] = v[i] > 0.f ? v[i] : 0.f;
        break;
    case AVQ_ACT_SILU: {
        int64_t i = 0;
        for (; i + VW <= m; i += VW) vf_store(v + i, vsilu(vf_load(v + i)));
        for (; i < m; i++) v[i] = simd_silu(v[i]);
        break;
    }
    case AVQ_ACT_QUICK_GELU: {
        int64_t i = 0;
        for (; i + VW <= m; i += VW) {
            vf_t x = vf_load(v + i);
            vf_store(v + i, x / (1.f + vexp(x * -1.702f)));
        }
        for (; i < m; i++) v[i] = v[i] / (1.f + avq_vexpf(-1.702f * v[i]));
        break;
    }
    case AVQ_ACT_GELU: {
        int64_t i = 0;
        for (; i + VW <= m; i += VW) vf_store(v + i, vgelu(vf_load(v + i)));
        for (; i < m; i++) v[i] = simd_gelu(v[i]);
        break;
    }
    default: break;
    }
}

/* The 1/sum normalisation is left to the caller (it goes onto the T x d
 * output, not an extra pass over the T x M scores). */
static float softmax_row_unnormalised(float *row, int64_t limit, int64_t M, float scale) {
    float mx = -3.40282347e38f;
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < limit; j++) mx = scale * row[j] > mx ? scale * row[j] : mx;
    vf_t vsum = {0};
    int64_t j = 0;
    for (; j + VW <= limit; j += VW) {
        vf_t e = vexp(vf_load(row + j) * scale - mx);
        vf_store(row + j, e);
        vsum += e;
    }
    float sum = 0.f;
    for (int l = 0; l < VW; l++) sum += vsum[l];
    for (; j < limit; j++) {
        float e = avq_vexpf(scale * row[j] - mx);
        row[j] = e;
        sum += e;
    }
    for (int64_t j = limit; j < M; j++) row[j] = 0.f;
    return sum;
}

/* v[a][c] = (B^T d B)[a], B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]. */
static void wino_input_tile(const float *const *d, float *const *v, int64_t C) {
#pragma omp simd
    for (int64_t c = 0; c < C; c++) {
        float t[4][4];
        for (int j = 0; j < 4; j++) {
            t[0][j] = d[j][c] - d[8 + j][c];
            t[1][j] = d[4 + j][c] + d[8 + j][c];
            t[2][j] = d[8 + j][c] - d[4 + j][c];
            t[3][j] = d[4 + j][c] - d[12 + j][c];
        }
        for (int i = 0; i < 4; i++) {
            v[i * 4 + 0][c] = t[i][0] - t[i][2];
            v[i * 4 + 1][c] = t[i][1] + t[i][2];
            v[i * 4 + 2][c] = t[i][2] - t[i][1];
            v[i * 4 + 3][c] = t[i][1] - t[i][3];
        }
    }
}

/* y[k][c] = (A^T m A)[k] + bias[c] + a[k][c], A^T = [1 1 1 0; 0 1 -1 -1]. */
static void wino_output_tile(const float *const *m, float *const *y, const float *bias, const float *const *a,
                             int64_t C) {
#pragma omp simd
    for (int64_t c = 0; c < C; c++) {
        float t[2][4];
        for (int j = 0; j < 4; j++) {
            t[0][j] = m[j][c] + m[4 + j][c] + m[8 + j][c];
            t[1][j] = m[4 + j][c] - m[8 + j][c] - m[12 + j][c];
        }
        for (int i = 0; i < 2; i++) {
            y[i * 2 + 0][c] = t[i][0] + t[i][1] + t[i][2] + bias[c] + a[i * 2 + 0][c];
            y[i * 2 + 1][c] = t[i][1] - t[i][2] - t[i][3] + bias[c] + a[i * 2 + 1][c];
        }
    }
}

/* bf16 <-> f32 as core/tensor.h's avq_bf16_to_f32 / avq_f32_to_bf16 (round to
 * nearest even, NaN kept quiet), written with shifts and a select so that
 * the loops below vectorise. */
static inline float bf16_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint16_t f32_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : r);
}

/* wino_input_tile on bf16 rows: the transform in f32 (exact: B^T d B only adds
 * and subtracts), each of the 16 results rounded to bf16 once. */
static void wino_input_tile_bf16(const uint16_t *const *d, uint16_t *const *v, int64_t C) {
#pragma omp simd
    for (int64_t c = 0; c < C; c++) {
        float x[16], t[4][4];
        for (int a = 0; a < 16; a++) x[a] = bf16_f32(d[a][c]);
        for (int j = 0; j < 4; j++) {
            t[0][j] = x[j] - x[8 + j];
            t[1][j] = x[4 + j] + x[8 + j];
            t[2][j] = x[8 + j] - x[4 + j];
            t[3][j] = x[4 + j] - x[12 + j];
        }
        for (int i = 0; i < 4; i++) {
            v[i * 4 + 0][c] = f32_bf16(t[i][0] - t[i][2]);
            v[i * 4 + 1][c] = f32_bf16(t[i][1] + t[i][2]);
            v[i * 4 + 2][c] = f32_bf16(t[i][2] - t[i][1]);
            v[i * 4 + 3][c] = f32_bf16(t[i][1] - t[i][3]);
        }
    }
}

/* y = bf16(v + add) over a row, add bf16 or NULL: the one rounding of a bf16 output. */
static void add_store_bf16(const float *v, const uint16_t *add, uint16_t *y, int64_t C) {
    if (add) {
#pragma omp simd
        for (int64_t c = 0; c < C; c++) y[c] = f32_bf16(v[c] + bf16_f32(add[c]));
    } else {
#pragma omp simd
        for (int64_t c = 0; c < C; c++) y[c] = f32_bf16(v[c]);
    }
}

/* y = value * gelu(gate) over m values of dtype dt (y may alias either). The
 * scalar form under omp simd: AVX-512 if-converts it with masks; the vector
 * form is for levels that do not. bf16 is read and written here directly. */
static void geglu_row(const void *value, const void *gate, void *y, int64_t m, avq_dtype dt) {
    if (dt == AVQ_BF16) {
        const uint16_t *v = value, *g = gate;
        uint16_t *o = y;
#if AVQ_SIMD_WIDTH >= 16
#pragma omp simd
        for (int64_t i = 0; i < m; i++) o[i] = f32_bf16(bf16_f32(v[i]) * simd_gelu(bf16_f32(g[i])));
#else
        float a[VW], b[VW];
        int64_t i = 0;
        for (; i + VW <= m; i += VW) {
            for (int j = 0; j < VW; j++) {
                a[j] = bf16_f32(v[i + j]);
                b[j] = bf16_f32(g[i + j]);
            }
            vf_store(a, vf_load(a) * vgelu(vf_load(b)));
            for (int j = 0; j < VW; j++) o[i + j] = f32_bf16(a[j]);
        }
        for (; i < m; i++) o[i] = f32_bf16(bf16_f32(v[i]) * simd_gelu(bf16_f32(g[i])));
#endif
        return;
    }
    const float *v = value, *g = gate;
    float *o = y;
#if AVQ_SIMD_WIDTH >= 16
#pragma omp simd
    for (int64_t i = 0; i < m; i++) o[i] = v[i] * simd_gelu(g[i]);
#else
    int64_t i = 0;
    for (; i + VW <= m; i += VW) vf_store(o + i, vf_load(v + i) * vgelu(vf_load(g + i)));
    for (; i < m; i++) o[i] = v[i] * simd_gelu(g[i]);
#endif
}

const avq_simd_kernels AVQ_SIMD_TABLE = {
    AVQ_SIMD_NAME,    gn_accumulate,        gn_apply,       act_row,   softmax_row_unnormalised, wino_input_tile,
    wino_output_tile, wino_input_tile_bf16, add_store_bf16, geglu_row,
};
