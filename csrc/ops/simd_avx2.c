/* simd_body.h for AVX2 + FMA, 256-bit vectors. */
#include "simd.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx2,fma")
#define AVQ_SIMD_TABLE avq_simd_avx2
#define AVQ_SIMD_NAME  "avx2"
#define AVQ_SIMD_WIDTH 8
#include "simd_body.h"
#else
const avq_simd_kernels avq_simd_avx2 = {0};
#endif
