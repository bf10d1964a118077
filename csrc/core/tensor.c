#include "tensor.h"

#include <stdio.h>

size_t avq_dtype_size(avq_dtype t) { return t == AVQ_F32 ? 4 : 2; }

const char *avq_dtype_name(avq_dtype t) { return t == AVQ_F32 ? "f32" : "bf16"; }

dnnl_data_type_t avq_dnnl_dt(avq_dtype t) { return t == AVQ_F32 ? dnnl_f32 : dnnl_bf16; }

int64_t avq_tensor_numel(const avq_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->dims[i];
    return n;
}

size_t avq_tensor_bytes(const avq_tensor *t) { return (size_t)avq_tensor_numel(t) * avq_dtype_size(t->dtype); }

avq_tensor avq_tensor_make(avq_dtype dt, avq_layout layout, int ndim, const int64_t *dims) {
    avq_tensor t;
    memset(&t, 0, sizeof t);
    t.dtype = dt;
    t.layout = layout;
    t.ndim = ndim;
    for (int i = 0; i < ndim && i < AVQ_MAX_DIMS; i++) t.dims[i] = dims[i];
    t.arena_off = -1;
    return t;
}

avq_tensor avq_tensor_4d(avq_dtype dt, avq_layout layout, int64_t n, int64_t c, int64_t h, int64_t w) {
    int64_t d[4] = {n, c, h, w};
    return avq_tensor_make(dt, layout, 4, d);
}

int avq_tensor_same_shape(const avq_tensor *a, const avq_tensor *b) {
    if (a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->dims[i] != b->dims[i]) return 0;
    return 1;
}

const char *avq_tensor_str(const avq_tensor *t, char *buf, size_t n) {
    size_t k = 0;
    k += (size_t)snprintf(buf + k, n - k, "[");
    for (int i = 0; i < t->ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)t->dims[i]);
    if (k < n) snprintf(buf + k, n - k, "] %s%s", avq_dtype_name(t->dtype), t->layout == AVQ_NHWC ? " nhwc" : "");
    return buf;
}

avq_status avq_tensor_md(const avq_tensor *t, dnnl_memory_desc_t *md) {
    dnnl_dims_t dims, strides;
    if (t->ndim < 1 || t->ndim > AVQ_MAX_DIMS)
        return avq_error(AVQ_ERR_INTERNAL, "tensor rank %d unsupported", t->ndim);
    for (int i = 0; i < t->ndim; i++) dims[i] = t->dims[i];
    if (t->layout == AVQ_NHWC) {
        if (t->ndim != 4) return avq_error(AVQ_ERR_INTERNAL, "nhwc tensor must be 4-D");
        int64_t C = t->dims[1], H = t->dims[2], W = t->dims[3];
        strides[0] = H * W * C;
        strides[1] = 1;
        strides[2] = W * C;
        strides[3] = C;
    } else {
        int64_t s = 1;
        for (int i = t->ndim - 1; i >= 0; i--) {
            strides[i] = s;
            s *= t->dims[i];
        }
    }
    if (dnnl_memory_desc_create_with_strides(md, t->ndim, dims, avq_dnnl_dt(t->dtype), strides) != dnnl_success)
        return avq_error(AVQ_ERR_DNNL, "cannot describe a tensor to oneDNN");
    return AVQ_OK;
}

int avq_tensor_rows_cols(const avq_tensor *t, int64_t *rows, int64_t *cols) {
    if (t->layout == AVQ_NHWC) {
        *cols = t->dims[1];
        *rows = t->dims[0] * t->dims[2] * t->dims[3];
        return 1;
    }
    if (t->ndim < 1) return 0;
    *cols = t->dims[t->ndim - 1];
    *rows = *cols ? avq_tensor_numel(t) / *cols : 0;
    return 1;
}

/* The row conversions run in every bf16 elementwise kernel. Built for the
 * baseline x86-64 they vectorise with SSE2, whose missing 32 -> 16-bit packs
 * cost more shuffles than the arithmetic: GCC builds AVX-512 and AVX2 clones
 * as well and the loader picks one by CPUID (same integer arithmetic, so the
 * same bits on every CPU). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define AVQ_ROW_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define AVQ_ROW_CLONES
#endif

AVQ_ROW_CLONES void avq_load_row(const void *p, avq_dtype dt, int64_t off, float *dst, int64_t n) {
    if (dt == AVQ_F32) {
        memcpy(dst, (const float *)p + off, (size_t)n * 4);
    } else {
        const uint16_t *s = (const uint16_t *)p + off;
        for (int64_t i = 0; i < n; i++) {
            const uint32_t u = (uint32_t)s[i] << 16;
            memcpy(dst + i, &u, 4);
        }
    }
}

/* avq_f32_to_bf16 with the NaN case as a select, which the vectoriser takes. */
AVQ_ROW_CLONES void avq_store_row(void *p, avq_dtype dt, int64_t off, const float *src, int64_t n) {
    if (dt == AVQ_F32) {
        memcpy((float *)p + off, src, (size_t)n * 4);
    } else {
        uint16_t *d = (uint16_t *)p + off;
        for (int64_t i = 0; i < n; i++) {
            uint32_t u;
            memcpy(&u, src + i, 4);
            const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
            d[i] = (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : r);
        }
    }
}
