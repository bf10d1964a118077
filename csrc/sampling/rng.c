/* MT19937 + polar Gaussians, as NumPy's legacy RandomState (see rng.h). */
#include "sampling/rng.h"

#include <math.h>

#define MT_M        397
#define MT_MATRIX_A 0x9908b0dfu
#define MT_UPPER    0x80000000u
#define MT_LOWER    0x7fffffffu

void avq_rng_seed(avq_rng *r, uint32_t seed) {
    r->mt[0] = seed;
    for (int i = 1; i < AVQ_MT_N; i++) {
        uint32_t prev = r->mt[i - 1];
        /* unsigned 32-bit arithmetic wraps: this is the "mod 2^32" */
        r->mt[i] = 1812433253u * (prev ^ (prev >> 30)) + (uint32_t)i;
    }
    r->pos = AVQ_MT_N;
    r->has_gauss = 0;
    r->gauss = 0.0;
}

/* Regenerates all 624 words: each new word mixes the top bit of word i with
 * the low 31 bits of word i+1 and word i+397 (indices modulo 624). */
static void twist(avq_rng *r) {
    uint32_t *mt = r->mt;
    for (int i = 0; i < AVQ_MT_N; i++) {
        uint32_t y = (mt[i] & MT_UPPER) | (mt[(i + 1) % AVQ_MT_N] & MT_LOWER);
        uint32_t v = mt[(i + MT_M) % AVQ_MT_N] ^ (y >> 1);
        if (y & 1u) v ^= MT_MATRIX_A;
        mt[i] = v;
    }
    r->pos = 0;
}

uint32_t avq_rng_next32(avq_rng *r) {
    if (r->pos >= AVQ_MT_N) twist(r);
    uint32_t y = r->mt[r->pos++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

double avq_rng_double(avq_rng *r) {
    uint32_t a = avq_rng_next32(r) >> 5; /* 27 bits */
    uint32_t b = avq_rng_next32(r) >> 6; /* 26 bits */
    return ((double)a * 67108864.0 + (double)b) / 9007199254740992.0;
}

double avq_rng_gauss(avq_rng *r) {
    if (r->has_gauss) {
        double g = r->gauss;
        r->has_gauss = 0;
        r->gauss = 0.0;
        return g;
    }
    double x1, x2, r2;
    do {
        x1 = 2.0 * avq_rng_double(r) - 1.0;
        x2 = 2.0 * avq_rng_double(r) - 1.0;
        r2 = x1 * x1 + x2 * x2;
    } while (r2 >= 1.0 || r2 == 0.0);
    double f = sqrt(-2.0 * log(r2) / r2);
    /* the pair's first value is kept for the next call, the second returned */
    r->gauss = f * x1;
    r->has_gauss = 1;
    return f * x2;
}

void avq_rng_randn_f32(avq_rng *r, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = (float)avq_rng_gauss(r);
}

void avq_rng_randn_f64(avq_rng *r, double *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = avq_rng_gauss(r);
}

/* ---- torch's CPU generator (see rng.h) ------------------------------------------- */

int avq_rng_kind_supported(int kind) {
    return kind == AVQ_RNG_NUMPY || kind == AVQ_RNG_TORCH_CPU || kind == AVQ_RNG_TORCH_CUDA;
}

void avq_generator_seed(avq_generator *g, avq_rng_kind kind, uint64_t seed) {
    g->kind = kind;
    g->seed = seed;
    /* torch's mt19937 keeps the low 32 bits of a 64-bit seed */
    avq_rng_seed(&g->mt, (uint32_t)(seed & 0xffffffffu));
    g->has_normal = 0;
    g->next_normal = 0.0;
    g->offset = 0;
    g->cuda_max_blocks = 0;
}

/* uniform_real_distribution<float>(0, 1): the low 24 bits of one word, exact. */
static float torch_uniform_f32(avq_rng *r) { return (float)(avq_rng_next32(r) & 0xffffffu) * (1.0f / 16777216.0f); }

/* uniform_real_distribution<double>(0, 1) on random64() = first word << 32 | second. */
static double torch_uniform_f64(avq_rng *r) {
    const uint64_t hi = avq_rng_next32(r);
    const uint64_t lo = avq_rng_next32(r);
    return (double)(((hi << 32) | lo) & ((UINT64_C(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
}

/* normal_distribution<double>: Box-Muller with a cached sine value. */
static double torch_normal_f64(avq_generator *g) {
    if (g->has_normal) {
        g->has_normal = 0;
        return g->next_normal;
    }
    const double u1 = torch_uniform_f64(&g->mt);
    const double u2 = torch_uniform_f64(&g->mt);
    const double r = sqrt(-2.0 * log1p(-u2));
    const double theta = 2.0 * 3.14159265358979323846 * u1;
    g->next_normal = r * sin(theta);
    g->has_normal = 1;
    return r * cos(theta);
}

/* The Cephes float polynomials of avx_mathfun.h, as torch's x86 wheels run
 * them: GCC compiled its separate _mm256_mul_ps / _mm256_add_ps into fused
 * multiply-adds (-ffp-contract=fast with FMA enabled), so each product feeding
 * an add is unrounded here too (fmaf). Which operand pairs were fused was fixed
 * by comparing all plausible contractions with torch: this set matches every
 * one of 1.28 M values bit for bit (tests/test_rng_torch.py checks it).
 *
 * Log for x in (0, 1] (u1 = 1 - uniform): exponent split, mantissa in
 * [sqrt(1/2), sqrt 2), a degree-8 polynomial, and log 2 in two parts. */
static float cephes_logf(float x) {
    union {
        float f;
        uint32_t u;
    } v = {.f = x};
    if (v.u < 0x00800000u) v.u = 0x00800000u; /* the max with the smallest normal */
    float e = (float)((int32_t)(v.u >> 23) - 0x7f);
    e = e + 1.0f;
    v.u = (v.u & ~0x7f800000u) | 0x3f000000u; /* mantissa in [0.5, 1) */
    float m = v.f;
    const float tmp = m < 0.707106781186547524f ? m : 0.0f;
    m = m - 1.0f;
    e = e - (tmp != 0.0f ? 1.0f : 0.0f);
    m = m + tmp;
    const float z = m * m;
    float y = 7.0376836292E-2f;
    y = fmaf(y, m, -1.1514610310E-1f);
    y = fmaf(y, m, 1.1676998740E-1f);
    y = fmaf(y, m, -1.2420140846E-1f);
    y = fmaf(y, m, 1.4249322787E-1f);
    y = fmaf(y, m, -1.6668057665E-1f);
    y = fmaf(y, m, 2.0000714765E-1f);
    y = fmaf(y, m, -2.4999993993E-1f);
    y = fmaf(y, m, 3.3333331174E-1f);
    y = y * m;
    y = fmaf(y, z, e * -2.12194440e-4f);
    y = fmaf(-z, 0.5f, y);
    m = m + y;
    return fmaf(e, 0.693359375f, m);
}

/* Cephes sine and cosine as sincos256_ps evaluates them: octant from 4/pi x,
 * three-part reduction by pi/4, the two polynomials, selection and signs. */
static void cephes_sincosf(float x, float *s, float *c) {
    union {
        float f;
        uint32_t u;
    } ax = {.f = x};
    uint32_t sign_sin = ax.u & 0x80000000u;
    ax.u &= 0x7fffffffu;
    float a = ax.f;
    int32_t j = (int32_t)(a * 1.27323954473516f); /* truncation, as cvttps */
    j = (j + 1) & ~1;
    const float y = (float)j;
    const uint32_t swap_sin = (uint32_t)(j & 4) << 29;
    const int poly_sin = (j & 2) == 0; /* 1: the sine comes from the sine polynomial */
    a = fmaf(y, -0.78515625f, a);
    a = fmaf(y, -2.4187564849853515625e-4f, a);
    a = fmaf(y, -3.77489497744594108e-8f, a);
    const uint32_t sign_cos = (uint32_t)(~(j - 2) & 4) << 29;
    sign_sin ^= swap_sin;
    const float z = a * a;
    float yc = 2.443315711809948E-005f;
    yc = fmaf(yc, z, -1.388731625493765E-003f);
    yc = fmaf(yc, z, 4.166664568298827E-002f);
    yc = yc * z;
    yc = fmaf(yc, z, -(z * 0.5f));
    yc = yc + 1.0f;
    float ys = -1.9515295891E-4f;
    ys = fmaf(ys, z, 8.3321608736E-3f);
    ys = fmaf(ys, z, -1.6666654611E-1f);
    ys = ys * z;
    ys = fmaf(ys, a, a);
    /* the vector code selects with masks and adds: keep its zeros' signs */
    const float sin2 = poly_sin ? ys : 0.0f, sin1 = poly_sin ? 0.0f : yc;
    const float cos2 = ys - sin2, cos1 = yc - sin1;
    union {
        float f;
        uint32_t u;
    } rs = {.f = sin1 + sin2}, rc = {.f = cos1 + cos2};
    rs.u ^= sign_sin;
    rc.u ^= sign_cos;
    *s = rs.f;
    *c = rc.f;
}

/* normal_fill_16 of torch's AVX2/AVX512 build: data holds 16 uniforms. */
static void torch_normal_fill_16(float *data) {
    const float two_pi = (float)(2.0 * 3.14159265358979323846);
    for (int j = 0; j < 8; j++) {
        const float u1 = 1.0f - data[j];
        const float u2 = data[j + 8];
        const float radius = sqrtf(-2.0f * cephes_logf(u1));
        float s, c;
        cephes_sincosf(two_pi * u2, &s, &c);
        /* fmadd(n, std = 1, mean = 0): exact, and a -0 product becomes +0 */
        data[j] = radius * c + 0.0f;
        data[j + 8] = radius * s + 0.0f;
    }
}

static void torch_cpu_randn(avq_generator *g, float *out, int64_t n) {
    if (n < 16) {
        for (int64_t i = 0; i < n; i++) out[i] = (float)torch_normal_f64(g);
        return;
    }
    for (int64_t i = 0; i < n; i++) out[i] = torch_uniform_f32(&g->mt);
    for (int64_t i = 0; i + 16 <= n; i += 16) torch_normal_fill_16(out + i);
    if (n % 16) {
        float *tail = out + n - 16;
        for (int i = 0; i < 16; i++) tail[i] = torch_uniform_f32(&g->mt);
        torch_normal_fill_16(tail);
    }
}

/* ---- torch's CUDA generator (see rng.h) ------------------------------------------ */

/* Philox4x32-10: ten rounds of two 32x32->64 multiplies, the key bumped by the
 * Weyl constants between rounds. */
static void philox4x32_10(uint32_t ctr[4], uint32_t k0, uint32_t k1) {
    for (int r = 0; r < 10; r++) {
        const uint64_t p0 = (uint64_t)0xD2511F53u * ctr[0];
        const uint64_t p1 = (uint64_t)0xCD9E8D57u * ctr[2];
        const uint32_t c1 = ctr[1], c3 = ctr[3];
        ctr[0] = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        ctr[1] = (uint32_t)p1;
        ctr[2] = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        ctr[3] = (uint32_t)p0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
}

/* curand's Box-Muller on two words: u in (0, 1], v in (0, 2 pi]. */
static void curand_box_muller(uint32_t x, uint32_t y, float *a, float *b) {
    const float inv = 2.3283064e-10f, inv_2pi = 2.3283064e-10f * 6.2831855f;
    const float u = (float)x * inv + inv / 2.0f;
    const float v = (float)y * inv_2pi + inv_2pi / 2.0f;
    const float s = sqrtf(-2.0f * logf(u));
    *a = sinf(v) * s;
    *b = cosf(v) * s;
}

static void torch_cuda_randn(avq_generator *g, float *out, int64_t n) {
    if (n <= 0) return;
    const uint64_t threads_per_block = 256, unroll = 4;
    uint64_t blocks = ((uint64_t)n + threads_per_block - 1) / threads_per_block;
    if (g->cuda_max_blocks && blocks > g->cuda_max_blocks) blocks = g->cuda_max_blocks;
    const uint64_t T = threads_per_block * blocks; /* threads in the launch */
    const uint64_t rounds = ((uint64_t)n - 1) / (T * unroll) + 1;
    const uint32_t k0 = (uint32_t)g->seed, k1 = (uint32_t)(g->seed >> 32);
    for (uint64_t j = 0; j < rounds; j++) {
        const uint64_t c = g->offset / 4 + j; /* 64-bit counter low half */
        for (uint64_t i = 0; i < T; i++) {
            const uint64_t base = j * T * unroll + i;
            if (base >= (uint64_t)n) break;
            uint32_t ctr[4] = {(uint32_t)c, (uint32_t)(c >> 32), (uint32_t)i, (uint32_t)(i >> 32)};
            philox4x32_10(ctr, k0, k1);
            float v[4];
            curand_box_muller(ctr[0], ctr[1], &v[0], &v[1]);
            curand_box_muller(ctr[2], ctr[3], &v[2], &v[3]);
            for (uint64_t k = 0; k < unroll; k++) {
                const uint64_t li = base + k * T;
                if (li < (uint64_t)n) out[li] = v[k];
            }
        }
    }
    g->offset += rounds * unroll;
}

void avq_generator_randn(avq_generator *g, float *out, int64_t n) {
    if (g->kind == AVQ_RNG_TORCH_CPU)
        torch_cpu_randn(g, out, n);
    else if (g->kind == AVQ_RNG_TORCH_CUDA)
        torch_cuda_randn(g, out, n);
    else
        avq_rng_randn_f32(&g->mt, out, n);
}
