/* The C port of NumPy's legacy RandomState (csrc/sampling/rng.c) against
 * known values: SPEC §8.5's test vectors, bit for bit, and MT19937's
 * published outputs. Plain C, no Python:
 *
 *   gcc -std=c11 -O2 -Wall -Wextra -Werror -Icsrc tests/c/test_rng.c csrc/sampling/rng.c -lm -o test_rng && ./test_rng
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "sampling/rng.h"

#include "check.h"

/* MT19937 reference: init_genrand(5489) gives 3499211612 first and
 * 4123659995 as its 10000th output (the C++ standard's std::mt19937 check). */
static void test_mt19937_reference_outputs(void) {
    avq_rng r;
    avq_rng_seed(&r, 5489u);
    uint32_t first = avq_rng_next32(&r);
    CHECK(first == 3499211612u, "first output of seed 5489: %u", first);
    uint32_t v = first;
    for (int i = 1; i < 10000; i++) v = avq_rng_next32(&r);
    CHECK(v == 4123659995u, "10000th output of seed 5489: %u", v);
}

/* SPEC §8.5: RandomState(seed).randn(n), compared as doubles with ==. */
static void check_randn(uint32_t seed, const double *expected, int n) {
    avq_rng r;
    avq_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) {
        double g = avq_rng_gauss(&r);
        CHECK(g == expected[i], "seed %u value %d: got %.17g, expected %.17g", seed, i, g, expected[i]);
    }
}

static void test_spec_vectors(void) {
    const double seed0[] = {1.764052345967664, 0.4001572083672233, 0.9787379841057392,
                            2.240893199201458, 1.8675579901499675, -0.977277879876411};
    const double seed42[] = {0.4967141530112327, -0.13826430117118466, 0.6476885381006925};
    check_randn(0u, seed0, 6);
    check_randn(42u, seed42, 3);
}

/* float32 output is the double rounded to nearest: SPEC §10.3's start code. */
static void test_float32_is_rounded_double(void) {
    avq_rng r;
    avq_rng_seed(&r, 0u);
    float f[3];
    avq_rng_randn_f32(&r, f, 3);
    CHECK(f[0] == (float)1.764052345967664 && f[1] == (float)0.4001572083672233 && f[2] == (float)0.9787379841057392,
          "float32 start code: %.9g %.9g %.9g", f[0], f[1], f[2]);
    CHECK(f[0] == 1.7640524f, "first float32 value %.9g != 1.7640524", f[0]);
}

/* Drawing 3 then 3 continues through the cached second Gaussian exactly as
 * one draw of 6 does (odd counts leave a value in the cache). */
static void test_split_draws_continue_the_stream(void) {
    avq_rng a, b;
    avq_rng_seed(&a, 7u);
    avq_rng_seed(&b, 7u);
    double whole[7], part[7];
    avq_rng_randn_f64(&a, whole, 7);
    avq_rng_randn_f64(&b, part, 3);
    CHECK(b.has_gauss == 1, "after an odd count the second polar value must be cached");
    avq_rng_randn_f64(&b, part + 3, 1);
    avq_rng_randn_f64(&b, part + 4, 3);
    CHECK(memcmp(whole, part, sizeof whole) == 0, "split draws differ from one draw");
}

/* Reseeding forgets a cached Gaussian, as RandomState.seed() does. */
static void test_reseed_clears_cache(void) {
    avq_rng r, fresh;
    avq_rng_seed(&r, 1u);
    (void)avq_rng_gauss(&r);
    avq_rng_seed(&r, 42u);
    avq_rng_seed(&fresh, 42u);
    CHECK(avq_rng_gauss(&r) == avq_rng_gauss(&fresh), "reseeding kept a cached value");
}

/* Uniform doubles stay in [0, 1) over many draws (crosses several twists). */
static void test_doubles_in_unit_interval(void) {
    avq_rng r;
    avq_rng_seed(&r, 123u);
    for (int i = 0; i < 5000; i++) {
        double u = avq_rng_double(&r);
        if (!(u >= 0.0 && u < 1.0)) {
            CHECK(0, "draw %d = %.17g outside [0, 1)", i, u);
            break;
        }
    }
}

/* torch-cpu: g = torch.Generator().manual_seed(42); randn(3), randn(16), randn(1)
 * (bit patterns printed by torch 2.13, x86 AVX512 kernels). Covers the scalar
 * path, its cached value surviving a block draw, and the block transform. */
static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static void test_torch_cpu_reference_bits(void) {
    avq_generator g;
    avq_generator_seed(&g, AVQ_RNG_TORCH_CPU, 42u);
    float a[3], b[16], c[1];
    avq_generator_randn(&g, a, 3);
    avq_generator_randn(&g, b, 16);
    avq_generator_randn(&g, c, 1);
    const uint32_t ea[3] = {1051484846u, 1040443037u, 1047533287u};
    const uint32_t eb[5] = {1071961672u, 3203711577u, 3195580399u, 3211732305u, 3211542147u}; /* b[0..3], b[15] */
    for (int i = 0; i < 3; i++) CHECK(bits(a[i]) == ea[i], "randn(3)[%d] bits %u != %u", i, bits(a[i]), ea[i]);
    for (int i = 0; i < 4; i++) CHECK(bits(b[i]) == eb[i], "randn(16)[%d] bits %u != %u", i, bits(b[i]), eb[i]);
    CHECK(bits(b[15]) == eb[4], "randn(16)[15] bits %u != %u", bits(b[15]), eb[4]);
    CHECK(bits(c[0]) == 1047256172u, "randn(1) after the block: bits %u != 1047256172 (the cached value)", bits(c[0]));
}

/* torch seeds mt19937 with the low 32 bits of its 64-bit seed. */
static void test_torch_cpu_seed_low_32_bits(void) {
    avq_generator a, b;
    avq_generator_seed(&a, AVQ_RNG_TORCH_CPU, (UINT64_C(1) << 32) + 9u);
    avq_generator_seed(&b, AVQ_RNG_TORCH_CPU, 9u);
    float x[20], y[20];
    avq_generator_randn(&a, x, 20);
    avq_generator_randn(&b, y, 20);
    CHECK(memcmp(x, y, sizeof x) == 0, "seeds equal modulo 2**32 gave different streams");
}

/* The NUMPY kind is the RandomState stream. */
static void test_numpy_kind_is_randomstate(void) {
    avq_generator g;
    avq_generator_seed(&g, AVQ_RNG_NUMPY, 0u);
    float f[2];
    avq_generator_randn(&g, f, 2);
    CHECK(f[0] == (float)1.764052345967664 && f[1] == (float)0.4001572083672233, "numpy kind: %.9g %.9g", f[0], f[1]);
}

/* torch-cuda: torch.manual_seed(10); torch.randn(3, device="cuda") printed
 * [-0.1029, 1.6810, -0.2708] on a GPU (github.com/pytorch/pytorch/issues/79496).
 * The next draw starts one Philox block later (offset 4). */
static void test_torch_cuda_published_values(void) {
    avq_generator g;
    avq_generator_seed(&g, AVQ_RNG_TORCH_CUDA, 10u);
    float f[3];
    avq_generator_randn(&g, f, 3);
    const float want[3] = {-0.1029f, 1.6810f, -0.2708f};
    for (int i = 0; i < 3; i++)
        CHECK(fabsf(f[i] - want[i]) <= 6e-5f, "seed 10 value %d: %.6f, published %.4f", i, f[i], want[i]);
    CHECK(g.offset == 4, "offset after one small draw: %llu, expected 4", (unsigned long long)g.offset);
}

static const check_test tests[] = {
    TEST(test_torch_cuda_published_values), TEST(test_torch_cpu_reference_bits),
    TEST(test_torch_cpu_seed_low_32_bits),  TEST(test_numpy_kind_is_randomstate),
    TEST(test_mt19937_reference_outputs),   TEST(test_spec_vectors),
    TEST(test_float32_is_rounded_double),   TEST(test_split_draws_continue_the_stream),
    TEST(test_reseed_clears_cache),         TEST(test_doubles_in_unit_interval),
};

CHECK_MAIN(tests)
