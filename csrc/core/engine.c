#include "engine.h"

#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>

static dnnl_engine_t g_engine;
static dnnl_status_t g_engine_status = dnnl_runtime_error;
static atomic_int g_engine_ready;
static pthread_mutex_t g_engine_mutex = PTHREAD_MUTEX_INITIALIZER;
static atomic_int g_threads;
static pthread_mutex_t g_pack_mutex = PTHREAD_MUTEX_INITIALIZER;

static void engine_init(void) {
    g_engine_status = dnnl_engine_create(&g_engine, dnnl_cpu, 0);
    int n = omp_get_max_threads();
    atomic_store(&g_threads, n > 0 ? n : 1);
}

/* Not pthread_once: that symbol moved into libc in glibc 2.34 and would tie the
 * binary wheel to glibc >= 2.34 (manylinux_2_34) instead of manylinux2014. */
static void engine_once(void) {
    if (atomic_load_explicit(&g_engine_ready, memory_order_acquire)) return;
    pthread_mutex_lock(&g_engine_mutex);
    if (!atomic_load_explicit(&g_engine_ready, memory_order_relaxed)) {
        engine_init();
        atomic_store_explicit(&g_engine_ready, 1, memory_order_release);
    }
    pthread_mutex_unlock(&g_engine_mutex);
}

avq_status avq_engine_get(dnnl_engine_t *engine) {
    engine_once();
    if (g_engine_status != dnnl_success)
        return avq_error(AVQ_ERR_DNNL, "cannot create the oneDNN CPU engine (status %d)", (int)g_engine_status);
    *engine = g_engine;
    return AVQ_OK;
}

avq_status avq_set_num_threads(int n) {
    engine_once();
    if (n < 1) return avq_error(AVQ_ERR_ARG, "number of threads must be >= 1, got %d", n);
    atomic_store(&g_threads, n);
    omp_set_num_threads(n);
    return AVQ_OK;
}

int avq_get_num_threads(void) {
    engine_once();
    return atomic_load(&g_threads);
}

void avq_threads_enter(void) {
    int n = avq_get_num_threads();
    if (omp_get_max_threads() != n) omp_set_num_threads(n);
}

void avq_pack_lock(void) { pthread_mutex_lock(&g_pack_mutex); }
void avq_pack_unlock(void) { pthread_mutex_unlock(&g_pack_mutex); }

static const char *isa_name(dnnl_cpu_isa_t isa) {
    switch (isa) {
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx2_vnni_2: return "avx2_vnni_2";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_fp16: return "avx512_core_fp16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    case dnnl_cpu_isa_avx512_core_amx_fp16: return "avx512_core_amx_fp16";
    default: return "other";
    }
}

avq_status avq_get_info(avq_info *info) {
    dnnl_engine_t e;
    AVQ_TRY(avq_engine_get(&e));
    const dnnl_version_t *v = dnnl_version();
    dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    info->version = AVQ_VERSION;
    info->dnnl_major = v->major;
    info->dnnl_minor = v->minor;
    info->dnnl_patch = v->patch;
    info->dnnl_hash = v->hash;
    info->isa = isa_name(isa);
    info->num_threads = avq_get_num_threads();
    info->bf16_native = (isa == dnnl_cpu_isa_avx512_core_bf16 || isa == dnnl_cpu_isa_avx512_core_fp16 ||
                         isa == dnnl_cpu_isa_avx512_core_amx || isa == dnnl_cpu_isa_avx512_core_amx_fp16);
    return AVQ_OK;
}
