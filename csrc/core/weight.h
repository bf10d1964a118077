/* Weights: a borrowed row-major source (the checkpoint's array, memory-mapped)
 * plus the copies reordered into the layouts oneDNN chose for them. Packing
 * happens once, while a plan is built; every later step reuses the copy. */
#ifndef AVQ_WEIGHT_H
#define AVQ_WEIGHT_H

#include "tensor.h"

typedef struct avq_packed {
    dnnl_memory_desc_t md; /* owned */
    dnnl_memory_t mem;     /* owned; buffer allocated by oneDNN */
    struct avq_packed *next;
} avq_packed;

typedef struct avq_weight {
    const char *name; /* borrowed; for messages */
    avq_dtype dtype;  /* source dtype */
    int ndim;
    int64_t dims[4];
    const void *data;   /* borrowed, row-major; must outlive the weight */
    avq_packed *packed; /* owned cache of reordered copies */
} avq_weight;

void avq_weight_init(avq_weight *w, const char *name, avq_dtype dt, int ndim, const int64_t *dims, const void *data);
/* A view of rows [r0, r0 + n) of a 2-D weight or 1-D bias (shares the source). */
avq_weight avq_weight_rows(const avq_weight *w, int64_t r0, int64_t n);
int64_t avq_weight_numel(const avq_weight *w);
void avq_weight_release(avq_weight *w);

/* The copy of `w` laid out as `want`, where `src` describes how the source
 * buffer is read (e.g. the transpose of a [N, K] linear weight). Reorders on
 * first use (thread-safe), returns the cached memory afterwards. */
avq_status avq_weight_packed(avq_weight *w, const_dnnl_memory_desc_t src, const_dnnl_memory_desc_t want,
                             dnnl_memory_t *out);

/* Fills `dst` (f32, laid out as the `src` md below) with a transform of w. */
typedef avq_status (*avq_weight_derive_fn)(const avq_weight *w, float *dst, void *ctx);
/* As avq_weight_packed, for a copy of a transform of w (e.g. Winograd's
 * G g G^T): derive runs only on a cache miss, into a temporary f32 buffer
 * that `src` describes. `want` must differ from every md of w's plain copies. */
avq_status avq_weight_packed_derived(avq_weight *w, const_dnnl_memory_desc_t src, avq_weight_derive_fn derive,
                                     void *ctx, const_dnnl_memory_desc_t want, dnnl_memory_t *out);

/* Checks dims, naming the weight and both shapes on mismatch. */
avq_status avq_weight_expect(const avq_weight *w, int ndim, const int64_t *dims);

#endif
