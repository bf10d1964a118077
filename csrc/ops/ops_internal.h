/* Helpers shared by the op files; not part of the ops API. */
#ifndef AVQ_OPS_INTERNAL_H
#define AVQ_OPS_INTERNAL_H

#include "ops.h"

#define AVQ_DNNL(call, what)                                                  \
    do {                                                                      \
        dnnl_status_t avq_dnnl_s_ = (call);                                   \
        if (avq_dnnl_s_ != dnnl_success) {                                    \
            st = avq_error(AVQ_ERR_DNNL, "oneDNN: %s failed (status %d)", what, (int)avq_dnnl_s_); \
            goto done;                                                        \
        }                                                                     \
    } while (0)

/* Appends act to post-ops (no-op for AVQ_ACT_NONE). */
avq_status avq_post_act(dnnl_post_ops_t po, avq_act act);
const char *avq_act_name(avq_act act);
/* A plain md describing a weight's source buffer with dims permuted/strided. */
avq_status avq_weight_src_md(const avq_weight *w, int ndim, const int64_t *dims, const int64_t *strides,
                             dnnl_memory_desc_t *md);
/* 1-D bias packed to f32. */
avq_status avq_bias_mem(avq_weight *b, int64_t n, dnnl_memory_t *mem, dnnl_memory_desc_t *md_out);
avq_status avq_check_act_tensor(const avq_tensor *t, const char *what);
/* act over a row of floats in place (AVQ_ACT_NONE: nothing). */
void avq_act_row(float *v, int64_t m, avq_act act);

/* The Winograd path of avq_conv2d (3x3, stride 1, padding 1, f32). */
int avq_conv2d_winograd_fits(const avq_weight *w, const avq_tensor *x, const avq_conv_params *prm);
avq_status avq_conv2d_winograd(avq_plan *p, avq_weight *w, avq_weight *b, const avq_tensor *x, avq_tensor *y,
                               const avq_conv_params *prm);

#endif
