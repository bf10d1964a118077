#include "weight.h"

#include <stdatomic.h>
#include <stdlib.h>

#include "engine.h"
#include "plan.h"

static atomic_size_t live_bytes; /* see avq_weight_live_bytes */

size_t avq_weight_live_bytes(void) { return atomic_load(&live_bytes); }

static size_t own_bytes(const avq_weight *w) { return (size_t)avq_weight_numel(w) * avq_dtype_size(w->dtype); }

static void free_packed(avq_packed *p) {
    atomic_fetch_sub(&live_bytes, dnnl_memory_desc_get_size(p->md));
    dnnl_memory_destroy(p->mem);
    dnnl_memory_desc_destroy(p->md);
    free(p);
}

/* Packing frees each source once its packed copy exists, while the next
 * copies are allocated: the freed sources become heap holes the larger
 * packed layouts do not fit (a 2x decoder's build left 0.5 GB of them), so
 * every TRIM_EVERY bytes freed go back to the system. */
#define TRIM_EVERY ((size_t)64 << 20)
static atomic_size_t freed_since_trim;

static void free_own(avq_weight *w) {
    if (!w->own) return;
    const size_t bytes = own_bytes(w);
    atomic_fetch_sub(&live_bytes, bytes);
    free(w->own);
    w->own = NULL;
    if (atomic_fetch_add(&freed_since_trim, bytes) + bytes >= TRIM_EVERY) {
        atomic_store(&freed_since_trim, 0);
        avq_memory_trim();
    }
}

void avq_weight_init(avq_weight *w, const char *name, avq_dtype dt, int ndim, const int64_t *dims, const void *data) {
    memset(w, 0, sizeof *w);
    w->name = name;
    w->dtype = dt;
    w->ndim = ndim;
    for (int i = 0; i < ndim && i < 4; i++) w->dims[i] = dims[i];
    w->data = data;
}

avq_weight avq_weight_rows(avq_weight *w, int64_t r0, int64_t n) {
    w->has_views = 1;
    avq_weight v = *w;
    int64_t row = 1;
    for (int i = 1; i < w->ndim; i++) row *= w->dims[i];
    v.dims[0] = n;
    /* A recorded weight has no data (loader.h): its views have none either. */
    v.data = w->data ? (const char *)w->data + (size_t)(r0 * row) * avq_dtype_size(w->dtype) : NULL;
    v.packed = NULL;
    v.own = NULL;
    v.origin = NULL;
    v.origin_src_md = NULL;
    v.has_views = 0;
    v.wino_auto = 0;
    return v;
}

int64_t avq_weight_numel(const avq_weight *w) {
    int64_t n = 1;
    for (int i = 0; i < w->ndim; i++) n *= w->dims[i];
    return n;
}

void avq_weight_release(avq_weight *w) {
    avq_packed *p = w->packed;
    while (p) {
        avq_packed *next = p->next;
        free_packed(p);
        p = next;
    }
    w->packed = NULL;
    w->origin = NULL;
    if (w->origin_src_md) dnnl_memory_desc_destroy(w->origin_src_md);
    w->origin_src_md = NULL;
    free_own(w);
    w->data = NULL;
    w->source_dropped = 0;
}

avq_status avq_weight_take_copy(avq_weight *w, avq_dtype store, int64_t *nonfinite) {
    const int64_t n = avq_weight_numel(w);
    *nonfinite = 0;
    if (!w->data || w->own) return AVQ_OK;
    const int narrow = store == AVQ_BF16 && w->dtype == AVQ_F32;
    const avq_dtype dt = narrow ? AVQ_BF16 : w->dtype;
    const size_t bytes = (size_t)n * avq_dtype_size(dt);
    /* 64-byte aligned like oneDNN's own buffers; aligned_alloc wants a multiple. */
    void *buf = aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
    if (!buf)
        return avq_error(AVQ_ERR_MEMORY, "out of memory copying weight %s (%zu bytes)", w->name ? w->name : "?", bytes);
    int64_t bad = 0;
    if (w->dtype == AVQ_F32) {
        const uint32_t *src = w->data;
        /* Inf/NaN: all exponent bits set. */
        for (int64_t i = 0; i < n; i++) bad += (src[i] & 0x7f800000u) == 0x7f800000u;
        if (narrow) {
            const float *f = w->data;
            uint16_t *dst = buf;
            for (int64_t i = 0; i < n; i++) dst[i] = avq_f32_to_bf16(f[i]);
        } else {
            memcpy(buf, w->data, bytes);
        }
    } else {
        const uint16_t *src = w->data;
        for (int64_t i = 0; i < n; i++) bad += (src[i] & 0x7f80u) == 0x7f80u;
        memcpy(buf, w->data, bytes);
    }
    w->own = buf;
    w->data = buf;
    w->dtype = dt;
    atomic_fetch_add(&live_bytes, own_bytes(w));
    *nonfinite = bad;
    return AVQ_OK;
}

static avq_status reorder(dnnl_engine_t eng, const_dnnl_memory_desc_t src_md, const void *src, dnnl_memory_t dst) {
    dnnl_memory_t src_mem = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t prim = NULL;
    dnnl_stream_t stream = NULL;
    const_dnnl_memory_desc_t dst_md;
    avq_status st = AVQ_OK;
    dnnl_memory_get_memory_desc(dst, &dst_md);
    if ((st = avq_memory_headroom("reorder a weight")) != AVQ_OK) goto done;
    if (dnnl_memory_create(&src_mem, src_md, eng, (void *)src) != dnnl_success ||
        dnnl_reorder_primitive_desc_create(&pd, src_md, eng, dst_md, eng, NULL) != dnnl_success) {
        st = avq_memory_headroom("reorder a weight");
        if (st == AVQ_OK) st = avq_error(AVQ_ERR_DNNL, "cannot create a weight reorder");
        goto done;
    }
    if ((st = avq_primitive_create(&prim, pd, "a weight reorder")) != AVQ_OK) goto done;
    if (dnnl_stream_create(&stream, eng, dnnl_stream_default_flags) != dnnl_success) {
        st = avq_error(AVQ_ERR_MEMORY, "cannot create a oneDNN stream for a weight reorder");
        goto done;
    }
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, src_mem}, {DNNL_ARG_TO, dst}};
    if (dnnl_primitive_execute(prim, stream, 2, args) != dnnl_success || dnnl_stream_wait(stream) != dnnl_success)
        st = avq_error(AVQ_ERR_DNNL, "weight reorder failed");
done:
    if (stream) dnnl_stream_destroy(stream);
    if (prim) dnnl_primitive_destroy(prim);
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (src_mem) dnnl_memory_destroy(src_mem);
    return st;
}

/* dst (described by dst_md) = the contents of a packed copy. */
static avq_status reorder_from(dnnl_engine_t eng, dnnl_memory_t src, const_dnnl_memory_desc_t dst_md, void *dst) {
    dnnl_memory_t dst_mem = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t prim = NULL;
    dnnl_stream_t stream = NULL;
    const_dnnl_memory_desc_t src_md;
    avq_status st = AVQ_OK;
    dnnl_memory_get_memory_desc(src, &src_md);
    if (dnnl_memory_create(&dst_mem, dst_md, eng, dst) != dnnl_success ||
        dnnl_reorder_primitive_desc_create(&pd, src_md, eng, dst_md, eng, NULL) != dnnl_success) {
        st = avq_memory_headroom("unpack a weight");
        if (st == AVQ_OK) st = avq_error(AVQ_ERR_DNNL, "cannot create a weight unpacking reorder");
        goto done;
    }
    if ((st = avq_primitive_create(&prim, pd, "a weight unpacking reorder")) != AVQ_OK) goto done;
    if (dnnl_stream_create(&stream, eng, dnnl_stream_default_flags) != dnnl_success) {
        st = avq_error(AVQ_ERR_MEMORY, "cannot create a oneDNN stream to unpack a weight");
        goto done;
    }
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, dst_mem}};
    if (dnnl_primitive_execute(prim, stream, 2, args) != dnnl_success || dnnl_stream_wait(stream) != dnnl_success)
        st = avq_error(AVQ_ERR_DNNL, "weight unpacking reorder failed");
done:
    if (stream) dnnl_stream_destroy(stream);
    if (prim) dnnl_primitive_destroy(prim);
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (dst_mem) dnnl_memory_destroy(dst_mem);
    return st;
}

static dnnl_data_type_t md_dtype(const_dnnl_memory_desc_t md) {
    dnnl_data_type_t dt = dnnl_data_type_undef;
    dnnl_memory_desc_query(md, dnnl_query_data_type, &dt);
    return dt;
}

static int same_dims(const_dnnl_memory_desc_t a, const_dnnl_memory_desc_t b) {
    int na = 0, nb = 0;
    const dnnl_dims_t *da = NULL, *db = NULL;
    dnnl_memory_desc_query(a, dnnl_query_ndims_s32, &na);
    dnnl_memory_desc_query(b, dnnl_query_ndims_s32, &nb);
    dnnl_memory_desc_query(a, dnnl_query_dims, &da);
    dnnl_memory_desc_query(b, dnnl_query_dims, &db);
    if (na != nb || !da || !db) return 0;
    for (int i = 0; i < na; i++)
        if ((*da)[i] != (*db)[i]) return 0;
    return 1;
}

/* With w's source dropped: a packed copy of `derive` that `want` can be
 * reordered from and get the bits a fresh derive would give (the derive is
 * made in f32 and rounded once, by the reorder into `want`), or NULL. */
static const avq_packed *kept_transform(const avq_weight *w, avq_weight_derive_fn derive,
                                        const_dnnl_memory_desc_t want) {
    if (!w->source_dropped || !derive) return NULL;
    for (const avq_packed *q = w->packed; q; q = q->next) {
        const dnnl_data_type_t dt = md_dtype(q->md);
        if (q->derive == derive && same_dims(q->md, want) && (dt == dnnl_f32 || dt == md_dtype(want))) return q;
    }
    return NULL;
}

/* Looks up `want` in w's cache; on a miss reorders the source (or, with
 * derive, the f32 buffer derive fills from it) into a new cached copy. */
static avq_status packed(avq_weight *w, const_dnnl_memory_desc_t src, avq_weight_derive_fn derive, void *ctx,
                         const_dnnl_memory_desc_t want, dnnl_memory_t *out) {
    dnnl_engine_t eng;
    AVQ_TRY(avq_engine_get(&eng));
    if (!w->data && !w->origin && !w->source_dropped)
        return avq_error(AVQ_ERR_INTERNAL, "weight %s has no data", w->name ? w->name : "?");
    avq_status st = AVQ_OK;
    void *tmp = NULL, *source = NULL;
    avq_pack_lock();
    for (avq_packed *p = w->packed; p; p = p->next) {
        if (p->derive == derive && dnnl_memory_desc_equal(p->md, want)) {
            *out = p->mem;
            goto done;
        }
    }
    const avq_packed *kept = NULL; /* with the source dropped: the copy to make this one from */
    if (!w->data && !w->origin && !(kept = kept_transform(w, derive, want))) {
        st = avq_error(AVQ_ERR_ARG,
                       "weight %s no longer has its source: it was freed once its Winograd copy was packed, which "
                       "holds it in one dtype and form only; build this model's plans in one precision and let the "
                       "convolution algorithm be chosen automatically",
                       w->name ? w->name : "?");
        goto done;
    }
    avq_packed *p = calloc(1, sizeof *p);
    if (!p) {
        st = avq_error(AVQ_ERR_MEMORY, "out of memory packing %s", w->name);
        goto done;
    }
    if (dnnl_memory_desc_clone(&p->md, want) != dnnl_success ||
        dnnl_memory_create(&p->mem, p->md, eng, DNNL_MEMORY_ALLOCATE) != dnnl_success) {
        if (p->md) dnnl_memory_desc_destroy(p->md);
        free(p);
        st = avq_error(AVQ_ERR_MEMORY, "cannot allocate the packed copy of %s", w->name);
        goto done;
    }
    p->derive = derive;
    if (kept) { /* the source was dropped: the same transform, in another layout (or narrowed) */
        void *h = NULL;
        st = dnnl_memory_get_data_handle(kept->mem, &h) == dnnl_success
                 ? reorder(eng, kept->md, h, p->mem)
                 : avq_error(AVQ_ERR_DNNL, "cannot read the packed copy of %s", w->name);
        goto made;
    }
    if (!w->data) { /* the source lives on as `origin`: read it back for now */
        source = malloc(dnnl_memory_desc_get_size(w->origin_src_md));
        st = source ? reorder_from(eng, w->origin->mem, w->origin_src_md, source)
                    : avq_error(AVQ_ERR_MEMORY, "out of memory unpacking %s", w->name);
        w->data = source; /* only while the lock is held */
    }
    const void *from = w->data;
    if (st == AVQ_OK && derive) {
        tmp = malloc(dnnl_memory_desc_get_size(src));
        st = tmp ? derive(w, (float *)tmp, ctx) : avq_error(AVQ_ERR_MEMORY, "out of memory transforming %s", w->name);
        from = tmp;
    }
    if (st == AVQ_OK) st = reorder(eng, src, from, p->mem);
    if (source) w->data = NULL;
made:
    if (st != AVQ_OK) {
        dnnl_memory_destroy(p->mem);
        dnnl_memory_desc_destroy(p->md);
        free(p);
        goto done;
    }
    atomic_fetch_add(&live_bytes, dnnl_memory_desc_get_size(p->md));
    p->next = w->packed;
    w->packed = p;
    *out = p->mem;
    /* Keep one copy, not two: a lossless copy of an owned conv / linear
     * weight replaces its source (1-D weights are small and read directly). */
    const_dnnl_memory_desc_t pmd = p->md;
    dnnl_data_type_t pdt = dnnl_data_type_undef;
    dnnl_memory_desc_query(pmd, dnnl_query_data_type, &pdt);
    if (!derive && w->own && !w->has_views && !w->origin && w->ndim >= 2 && pdt == avq_dnnl_dt(w->dtype) &&
        dnnl_memory_desc_clone(&w->origin_src_md, src) == dnnl_success) {
        w->origin = p;
        free_own(w);
        w->data = NULL;
    }
done:
    avq_pack_unlock();
    free(tmp);
    free(source);
    return st;
}

avq_status avq_weight_packed(avq_weight *w, const_dnnl_memory_desc_t src, const_dnnl_memory_desc_t want,
                             dnnl_memory_t *out) {
    return packed(w, src, NULL, NULL, want, out);
}

avq_status avq_weight_packed_derived(avq_weight *w, const_dnnl_memory_desc_t src, avq_weight_derive_fn derive,
                                     void *ctx, const_dnnl_memory_desc_t want, dnnl_memory_t *out) {
    return packed(w, src, derive, ctx, want, out);
}

int avq_weight_has_derived(const avq_weight *w, avq_weight_derive_fn derive) {
    int found = 0;
    avq_pack_lock();
    for (const avq_packed *q = w->packed; q && !found; q = q->next) found = derive && q->derive == derive;
    avq_pack_unlock();
    return found;
}

int avq_weight_drop_source(avq_weight *w) {
    int dropped = 0;
    avq_pack_lock();
    int derived = 0;
    for (const avq_packed *q = w->packed; q; q = q->next) derived |= q->derive != NULL;
    if (derived && w->own && !w->has_views && !w->origin) {
        free_own(w);
        w->data = NULL;
        w->source_dropped = 1;
        dropped = 1;
    }
    avq_pack_unlock();
    return dropped;
}
