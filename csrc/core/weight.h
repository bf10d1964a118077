/* Weights: a row-major source plus the copies reordered into the layouts
 * oneDNN chose for them. Packing happens once, while a plan is built; every
 * later step reuses the copy.
 *
 * A model's weights own their source (avq_weight_take_copy, called while the
 * model is built): the checkpoint's array, typically a view into a memory-
 * mapped file, is copied tensor by tensor, so the file may be truncated,
 * rewritten or deleted once the model exists. Weights made directly with
 * avq_weight_init (the ops binding) and row views borrow theirs. */
#ifndef AVQ_WEIGHT_H
#define AVQ_WEIGHT_H

#include "tensor.h"

struct avq_weight;
/* Fills `dst` (f32, laid out as the `src` md of avq_weight_packed_derived) with a transform of w. */
typedef avq_status (*avq_weight_derive_fn)(const struct avq_weight *w, float *dst, void *ctx);

typedef struct avq_packed {
    dnnl_memory_desc_t md; /* owned */
    dnnl_memory_t mem;     /* owned; buffer allocated by oneDNN */
    struct avq_packed *next;
    avq_weight_derive_fn derive; /* the transform this copy holds (avq_weight_packed_derived); NULL: the source */
} avq_packed;

typedef struct avq_weight {
    const char *name; /* borrowed; for messages */
    avq_dtype dtype;  /* source dtype */
    int ndim;
    int64_t dims[4];
    const void *data;   /* row-major: `own`, or borrowed (must outlive the weight); NULL once
                           the source lives on as `origin`, or was dropped */
    void *own;          /* owned source buffer, or NULL when `data` is borrowed */
    avq_packed *packed; /* owned cache of reordered copies */
    /* After the first lossless pack of an owned multi-dimensional source, that
     * copy is the only one kept: `origin` (one of `packed`) and the md that
     * reads it back as the row-major source. Later packs and derives
     * reconstruct the source from it for the time they need it. */
    avq_packed *origin;
    dnnl_memory_desc_t origin_src_md; /* owned */
    int has_views;                    /* row views borrow `data`: keep it */
    /* The owned source was freed by avq_weight_drop_source: only copies of
     * the derived transforms already packed can still be made (from them). */
    int source_dropped;
    /* Winograd's AUTO decision for this 3x3 weight, made once for every shape
     * (winograd.c): 0 not yet, 1 Winograd, -1 direct. Guarded by avq_pack_lock. */
    int wino_auto;
} avq_weight;

void avq_weight_init(avq_weight *w, const char *name, avq_dtype dt, int ndim, const int64_t *dims, const void *data);
/* A view of rows [r0, r0 + n) of a 2-D weight or 1-D bias (borrows w's source:
 * w must outlive the view, and keeps its source from then on). Make views
 * before any plan is built. */
avq_weight avq_weight_rows(avq_weight *w, int64_t r0, int64_t n);
int64_t avq_weight_numel(const avq_weight *w);
/* Frees the packed copies and the owned source. */
void avq_weight_release(avq_weight *w);
/* Bytes held by all weights of the process: owned sources and packed copies
 * (Winograd's derived ones included); borrowed sources are not counted. */
size_t avq_weight_live_bytes(void);

/* Replaces the borrowed source by an owned copy stored as `store` (AVQ_BF16
 * narrows an f32 source with the rounding oneDNN's reorders use, so packing
 * the copy to bf16 later gives the same bits; AVQ_F32 keeps the source dtype).
 * Counts the source's NaN/Inf values into *nonfinite (the copy is made anyway;
 * the caller decides). */
avq_status avq_weight_take_copy(avq_weight *w, avq_dtype store, int64_t *nonfinite);

/* The copy of `w` laid out as `want`, where `src` describes how the source
 * buffer is read (e.g. the transpose of a [N, K] linear weight). Reorders on
 * first use (thread-safe), returns the cached memory afterwards. The first
 * such copy of an owned weight with 2+ dims in the source's own dtype replaces
 * the source (see `origin`): do not read `data` of a packed weight. */
avq_status avq_weight_packed(avq_weight *w, const_dnnl_memory_desc_t src, const_dnnl_memory_desc_t want,
                             dnnl_memory_t *out);

/* As avq_weight_packed, for a copy of a transform of w (e.g. Winograd's
 * G g G^T): derive runs only on a cache miss, into a temporary f32 buffer
 * that `src` describes. Copies are looked up by md and transform: a transform
 * is known by its function (`ctx` must not change what it computes). */
avq_status avq_weight_packed_derived(avq_weight *w, const_dnnl_memory_desc_t src, avq_weight_derive_fn derive,
                                     void *ctx, const_dnnl_memory_desc_t want, dnnl_memory_t *out);

/* Whether w holds a packed copy of the transform `derive`. */
int avq_weight_has_derived(const avq_weight *w, avq_weight_derive_fn derive);

/* Frees w's owned source once w holds a derived copy (e.g. Winograd's U), so
 * that the transform is the only copy kept, not the source beside it. Only an
 * owned source with no row views, not yet replaced by `origin` (plans use
 * that copy), is freed; otherwise this does nothing. Returns 1 when it freed
 * the source. Afterwards a copy of a transform already packed is reordered
 * from that copy (same dims; from an f32 copy, or into its own dtype: the bits
 * a fresh derive would give), and any other request -- a plain copy, another
 * transform, a wider dtype -- fails with AVQ_ERR_ARG naming the weight. */
int avq_weight_drop_source(avq_weight *w);

#endif
