/* simd_body.h for AVX-512 (oneDNN's avx512_core: F, BW, DQ, VL), 512-bit vectors. */
#include "simd.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,prefer-vector-width=512")
#define AVQ_SIMD_TABLE avq_simd_avx512
#define AVQ_SIMD_NAME  "avx512"
#define AVQ_SIMD_WIDTH 16
#include "simd_body.h"
#else
/* No way to target it here: the baseline kernels stand in. */
const avq_simd_kernels avq_simd_avx512 = {0};
#endif
