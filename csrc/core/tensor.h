/* Tensors: a logical shape in PyTorch order, a dtype, a physical layout and a
 * borrowed data pointer. Activations inside a plan are channels-last (NHWC):
 * oneDNN's fastest CPU convolutions use it, group norm reads it with unit stride,
 * and a [B, C, H, W] activation is already the [B, H*W, C] token matrix the
 * transformer blocks need, so no transposes are ever made. */
#ifndef AVQ_TENSOR_H
#define AVQ_TENSOR_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <oneapi/dnnl/dnnl.h>

#include "status.h"

#define AVQ_MAX_DIMS 5

typedef enum avq_dtype { AVQ_F32 = 0, AVQ_BF16 = 1 } avq_dtype;

typedef enum avq_layout {
    AVQ_PLAIN = 0, /* row-major in the logical order */
    AVQ_NHWC = 1   /* 4-D only: logical [N, C, H, W] stored as [N, H, W, C] */
} avq_layout;

typedef struct avq_tensor {
    avq_dtype dtype;
    avq_layout layout;
    int ndim;
    int64_t dims[AVQ_MAX_DIMS];
    void *data;        /* borrowed; NULL while a plan is being built */
    int64_t arena_off; /* offset in the plan arena, -1 if not from an arena */
} avq_tensor;

size_t avq_dtype_size(avq_dtype t);
const char *avq_dtype_name(avq_dtype t);
int64_t avq_tensor_numel(const avq_tensor *t);
size_t avq_tensor_bytes(const avq_tensor *t);

/* A tensor descriptor without data. */
avq_tensor avq_tensor_make(avq_dtype dt, avq_layout layout, int ndim, const int64_t *dims);
avq_tensor avq_tensor_4d(avq_dtype dt, avq_layout layout, int64_t n, int64_t c, int64_t h, int64_t w);

int avq_tensor_same_shape(const avq_tensor *a, const avq_tensor *b);
/* "[2, 320, 64, 64] f32 nhwc" into buf. */
const char *avq_tensor_str(const avq_tensor *t, char *buf, size_t n);

/* The oneDNN memory descriptor of a tensor (caller destroys it). */
avq_status avq_tensor_md(const avq_tensor *t, dnnl_memory_desc_t *md);
dnnl_data_type_t avq_dnnl_dt(avq_dtype t);

/* Rows x channels view of an activation: NHWC 4-D or plain tensors whose last
 * dim is the channel/feature dim. Returns 0 when the tensor cannot be viewed so. */
int avq_tensor_rows_cols(const avq_tensor *t, int64_t *rows, int64_t *cols);

/* bf16 <-> f32: round to nearest even, NaN kept quiet. */
static inline uint16_t avq_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float avq_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Element i of a contiguous buffer of dtype dt, as float; and the reverse. */
static inline float avq_load(const void *p, avq_dtype dt, int64_t i) {
    return dt == AVQ_F32 ? ((const float *)p)[i] : avq_bf16_to_f32(((const uint16_t *)p)[i]);
}
static inline void avq_store(void *p, avq_dtype dt, int64_t i, float v) {
    if (dt == AVQ_F32)
        ((float *)p)[i] = v;
    else
        ((uint16_t *)p)[i] = avq_f32_to_bf16(v);
}

/* Bulk conversions used by the elementwise kernels (n elements). */
void avq_load_row(const void *p, avq_dtype dt, int64_t off, float *dst, int64_t n);
void avq_store_row(void *p, avq_dtype dt, int64_t off, const float *src, int64_t n);

#endif
