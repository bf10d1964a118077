/* The one global: the oneDNN CPU engine, the thread count shared by oneDNN and
 * our OpenMP kernels, and a lock for packing weights into oneDNN layouts. */
#ifndef AVQ_ENGINE_H
#define AVQ_ENGINE_H

#include <oneapi/dnnl/dnnl.h>

#include "status.h"

#include <pthread.h>
#include <stdatomic.h>

/* setup.py defines it from pyproject.toml's version; builds without it say so. */
#ifndef AVQ_VERSION
#define AVQ_VERSION "0+unknown"
#endif

/* One-time initialisation, as pthread_once. Not pthread_once itself: that symbol moved
 * into libc in glibc 2.34 and would tie the binary wheel to glibc >= 2.34 instead of
 * manylinux2014. */
typedef struct avq_once_flag {
    atomic_int done;
    pthread_mutex_t mutex;
} avq_once_flag;
#define AVQ_ONCE_INIT {0, PTHREAD_MUTEX_INITIALIZER}
void avq_run_once(avq_once_flag *o, void (*fn)(void));

avq_status avq_engine_get(dnnl_engine_t *engine);

/* Threads used by every later compute call, from any thread (n >= 1). */
avq_status avq_set_num_threads(int n);
int avq_get_num_threads(void);
/* Applies the thread count to the calling thread; every compute entry point
 * calls it, because OpenMP's thread count is a per-thread setting. */
void avq_threads_enter(void);

/* Makes idle OpenMP threads of a runtime that spins (loaded with the default wait policy
 * before asymvq could make it passive) spin 1,000 times instead of 300,000, by parking a team
 * of sleeping threads (started once, never ended; *team: its size). engine.c says how. */
avq_status avq_throttle_openmp_spinning(int *team);

void avq_pack_lock(void);
void avq_pack_unlock(void);

/* The instruction set asymvq's own kernels use. One decision per process,
 * taken on first use from the CPU (CPUID, OS register support) and oneDNN's
 * effective ISA, which already honours the ONEDNN_MAX_CPU_ISA cap: so with
 * the cap at AVX2 nothing of asymvq executes AVX-512 or AMX, as nothing of
 * oneDNN does. */
typedef enum avq_isa_level {
    AVQ_ISA_BASELINE = 0, /* x86-64 SSE2 (or a non-x86 CPU) */
    AVQ_ISA_AVX2,         /* AVX2 + FMA */
    AVQ_ISA_AVX512        /* AVX-512 F, BW, DQ, VL (oneDNN's avx512_core) */
} avq_isa_level;

typedef struct avq_isa {
    avq_isa_level level;
    int bf16_native; /* AVX512-BF16 or AMX-BF16 on the CPU and allowed by the cap */
    int amx_bf16;    /* AMX-BF16 on the CPU and allowed by the cap (the OS grant is probed apart) */
    dnnl_cpu_isa_t dnnl_isa;
    const char *cpu_isa; /* the CPU's best ISA in oneDNN's names, from CPUID alone (no cap) */
} avq_isa;

/* Decided once; never NULL. */
const avq_isa *avq_isa_get(void);
const char *avq_isa_level_name(avq_isa_level level);
/* oneDNN's name of its effective ISA ("avx2", "avx512_core_bf16", ...). */
const char *avq_isa_dnnl_name(void);

/* AVQ_OK where bf16 models can run: natively (AVX512-BF16, AMX) or as
 * oneDNN's AVX-512 emulation. Elsewhere (oneDNN at AVX2 or below, by the CPU
 * or the ONEDNN_MAX_CPU_ISA cap) oneDNN 3.2 has no bf16 matmul or convolution:
 * AVQ_ERR_DNNL with a message that says so and suggests fp32. */
avq_status avq_check_bf16(void);

typedef struct avq_info {
    const char *version;
    int dnnl_major, dnnl_minor, dnnl_patch;
    const char *dnnl_hash;
    const char *isa;        /* what oneDNN dispatches to (cap applied) */
    const char *cpu_isa;    /* what the CPU has (cap not applied) */
    const char *kernel_isa; /* asymvq's own kernels: "avx512", "avx2" or "baseline" */
    int num_threads;
    int bf16_native; /* AVX512-BF16 or AMX allowed */
} avq_info;

avq_status avq_get_info(avq_info *info);

#endif
