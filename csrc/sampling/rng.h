/* NumPy's legacy RandomState generator, reproduced exactly: MT19937 seeded
 * with init_genrand, 53-bit doubles from two 32-bit draws, and Gaussians by
 * Marsaglia's polar method that keep the second value of each pair for the
 * next call (SPEC §8.5).
 *
 *   avq_rng r;  avq_rng_seed(&r, seed);  avq_rng_randn_f32(&r, out, n);
 *
 * fills out[0..n) with float32(RandomState(seed).randn(n)), bit for bit; a
 * later call continues the same stream, exactly as further randn calls on the
 * same RandomState would (the cached Gaussian included). Bit-exactness needs
 * IEEE double arithmetic without fused multiply-adds (the build is ISO C11,
 * where GCC does not contract) and the platform's libm log(), as NumPy uses.
 *
 * This file depends on nothing but libc and libm, so it can be compiled on its
 * own (tests/c/test_rng.c). */
#ifndef AVQ_RNG_H
#define AVQ_RNG_H

#include <stdint.h>

#define AVQ_MT_N 624

typedef struct avq_rng {
    uint32_t mt[AVQ_MT_N]; /* the MT19937 state vector */
    int pos;               /* next word of mt to temper; AVQ_MT_N forces a twist */
    int has_gauss;         /* 1: `gauss` holds the cached second polar value */
    double gauss;
} avq_rng;

/* RandomState(seed): mt[0] = seed, mt[i] = 1812433253 * (mt[i-1] ^ (mt[i-1] >> 30)) + i. */
void avq_rng_seed(avq_rng *r, uint32_t seed);

/* The next tempered 32-bit word. */
uint32_t avq_rng_next32(avq_rng *r);

/* Uniform double in [0, 1) with 53 random bits: RandomState.random_sample(). */
double avq_rng_double(avq_rng *r);

/* One standard normal value: RandomState.standard_normal() / randn(). */
double avq_rng_gauss(avq_rng *r);

/* n standard normal values rounded to float32 (randn(...).astype(float32)). */
void avq_rng_randn_f32(avq_rng *r, float *out, int64_t n);

/* n standard normal values in double precision. */
void avq_rng_randn_f64(avq_rng *r, double *out, int64_t n);

#endif
