/* simd_body.h for the compiler's default target (SSE2 on x86-64), and the
 * run-time choice between the three. */
#include "simd.h"

#include <pthread.h>

#include "core/engine.h"

#define AVQ_SIMD_TABLE avq_simd_baseline
#define AVQ_SIMD_NAME  "baseline"
#define AVQ_SIMD_WIDTH 4
#include "simd_body.h"

static const avq_simd_kernels *g_kernels;
static avq_once_flag g_kernels_once = AVQ_ONCE_INIT;

static void pick(void) {
    const avq_isa_level level = avq_isa_get()->level;
    g_kernels = &avq_simd_baseline;
    if (level >= AVQ_ISA_AVX512 && avq_simd_avx512.name)
        g_kernels = &avq_simd_avx512;
    else if (level >= AVQ_ISA_AVX2 && avq_simd_avx2.name)
        g_kernels = &avq_simd_avx2;
}

const avq_simd_kernels *avq_simd(void) {
    avq_run_once(&g_kernels_once, pick);
    return g_kernels;
}
