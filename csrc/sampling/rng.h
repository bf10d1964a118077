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

/* ---- Generators of a chosen kind ---------------------------------------------
 *
 * avq_generator draws float32 standard normals in the order and with the
 * arithmetic of one of three sources, keeping its state between draws as the
 * source's own generator object does:
 *
 *   AVQ_RNG_NUMPY      numpy.random.RandomState(seed).randn (above); seed < 2**32.
 *   AVQ_RNG_TORCH_CPU  g = torch.Generator().manual_seed(seed), then successive
 *                      torch.randn(shape, generator=g) (float32, contiguous).
 *                      torch's mt19937 takes the low 32 bits of the seed and is
 *                      seeded exactly as NumPy's. A draw of n elements:
 *                      n < 16: per element one double normal by Box-Muller on
 *                        two 53-bit uniforms (random64 = hi << 32 | lo), r =
 *                        sqrt(-2 log1p(-u2)), theta = 2 pi u1; r cos(theta) is
 *                        returned and r sin(theta) cached for the next scalar
 *                        draw (the cache survives draws of >= 16 elements, and
 *                        is cleared only by reseeding);
 *                      n >= 16: n 24-bit float uniforms (the low 24 bits of one
 *                        word each), then Box-Muller in blocks of 16, pairing
 *                        element j with j + 8 (u1 = 1 - d[j], u2 = d[j + 8]);
 *                        when 16 does not divide n the last 16 elements get 16
 *                        fresh uniforms and are transformed again.
 *                      The block transform reproduces torch's x86 build
 *                      (CPU capability AVX2 or AVX512), whose log/sin/cos are
 *                      the Cephes polynomials of avx_mathfun.h evaluated in
 *                      float32 with fused multiply-adds; that arithmetic is
 *                      repeated here scalar (fmaf), so the result is bit-exact.
 *                      (torch's DEFAULT capability, e.g. ATEN_CPU_CAPABILITY=
 *                      default, uses libm instead and differs from both.)
 *   AVQ_RNG_TORCH_CUDA torch.manual_seed(seed) then successive
 *                      torch.randn(shape, device="cuda") (float32): Philox4x32-10
 *                      keyed by the seed, as torch's CUDA normal kernel runs it.
 *                      A launch of n elements has T = 256 * blocks threads,
 *                      blocks = ceil(n / 256), capped by the GPU at SMs *
 *                      (max threads per SM / 256) (cuda_max_blocks; 0 = no cap,
 *                      which every GPU matches while n <= 256 * its cap, e.g.
 *                      SD's [1, 4, 64, 64]). Thread i draws curand_normal4 from
 *                      counter (offset / 4 + j, 0, i, 0) for its j-th round of 4T
 *                      elements and writes element i + (4T) j + T k with the k-th
 *                      value (Box-Muller on two 32-bit words: sqrt(-2 log u)
 *                      times sin, then cos, of v). After the launch the offset
 *                      grows by 4 * ceil(n / (4T)). The GPU's sincos is the
 *                      __sincosf intrinsic, so values agree to a few 1e-6, not
 *                      bit for bit. */

typedef enum avq_rng_kind { AVQ_RNG_NUMPY = 0, AVQ_RNG_TORCH_CPU = 1, AVQ_RNG_TORCH_CUDA = 2 } avq_rng_kind;

typedef struct avq_generator {
    avq_rng_kind kind;
    uint64_t seed;  /* as given */
    avq_rng mt;     /* NUMPY (with its cached polar value) and TORCH_CPU */
    int has_normal; /* TORCH_CPU: a cached double normal of the scalar path */
    double next_normal;
    uint64_t offset;          /* TORCH_CUDA: the Philox offset (a multiple of 4) */
    uint32_t cuda_max_blocks; /* TORCH_CUDA: the GPU's grid cap; 0 = none */
} avq_generator;

/* 1 when draws of this kind can be made (0 for unknown kinds). */
int avq_rng_kind_supported(int kind);

/* Seeds g (offset 0, no grid cap). The caller checks the range: NUMPY seeds
 * must be < 2**32 (NumPy refuses larger ones); the torch kinds accept any
 * 64-bit seed, as manual_seed does. */
void avq_generator_seed(avq_generator *g, avq_rng_kind kind, uint64_t seed);

/* The next n float32 standard normals: one draw of n elements (for TORCH_CPU
 * the split into draws matters, see above; NUMPY draws concatenate). */
void avq_generator_randn(avq_generator *g, float *out, int64_t n);

#endif
