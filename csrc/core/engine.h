/* The one global: the oneDNN CPU engine, the thread count shared by oneDNN and
 * our OpenMP kernels, and a lock for packing weights into oneDNN layouts. */
#ifndef AVQ_ENGINE_H
#define AVQ_ENGINE_H

#include <oneapi/dnnl/dnnl.h>

#include "status.h"

#define AVQ_VERSION "0.1.0"

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

typedef struct avq_info {
    const char *version;
    int dnnl_major, dnnl_minor, dnnl_patch;
    const char *dnnl_hash;
    const char *isa; /* what oneDNN dispatches to on this CPU */
    int num_threads;
    int bf16_native; /* AVX512-BF16 or AMX available */
} avq_info;

avq_status avq_get_info(avq_info *info);

#endif
