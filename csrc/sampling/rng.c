/* MT19937 + polar Gaussians, as NumPy's legacy RandomState (see rng.h). */
#include "sampling/rng.h"

#include <math.h>

#define MT_M 397
#define MT_MATRIX_A 0x9908b0dfu
#define MT_UPPER 0x80000000u
#define MT_LOWER 0x7fffffffu

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
