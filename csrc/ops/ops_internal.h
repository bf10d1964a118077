/* Helpers shared by the op files; not part of the ops API. */
#ifndef AVQ_OPS_INTERNAL_H
#define AVQ_OPS_INTERNAL_H

#include "ops.h"

#define AVQ_DNNL(call, what)                        \
    do {                                            \
        dnnl_status_t avq_dnnl_s_ = (call);         \
        if (avq_dnnl_s_ != dnnl_success) {          \
            st = avq_dnnl_error(avq_dnnl_s_, what); \
            goto done;                              \
        }                                           \
    } while (0)

/* The message of a failed oneDNN call; "unimplemented" also names the ISA
 * oneDNN runs at, the usual reason (bf16 below AVX-512, say). */
avq_status avq_dnnl_error(dnnl_status_t s, const char *what);

/* New primitive attributes with the scratchpad in user mode (every plan step
 * runs on the plan's own scratchpad). Caller destroys *attr. */
avq_status avq_primitive_attr(dnnl_primitive_attr_t *attr);
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

/* bf16 attention tiles on AMX (attention_amx.c), where GCC can target it. */
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define AVQ_HAVE_AMX_KERNELS 1
#else
#define AVQ_HAVE_AMX_KERNELS 0
#endif
typedef struct avq_amx_dims {
    int64_t Mpad; /* keys, padded to 32 */
    int64_t dk;   /* head dim padded to 32 (reduction of Q K^T) */
    int64_t dn;   /* head dim padded to 16 (columns of P V) */
} avq_amx_dims;
int avq_attention_amx_supported(void); /* AMX-BF16 present and granted by the kernel */
void avq_attention_amx_dims(int64_t M, int64_t d, avq_amx_dims *g);
void avq_attention_amx_begin(void); /* per thread: configure the tiles */
void avq_attention_amx_end(void);
void avq_attention_amx_pack_k(const uint16_t *k, int64_t ld, int64_t M, int64_t d, const avq_amx_dims *g, uint16_t *kp);
void avq_attention_amx_pack_v(const uint16_t *v, int64_t ld, int64_t M, int64_t d, const avq_amx_dims *g, uint16_t *vp);
void avq_attention_amx_qk32(const uint16_t *q, const uint16_t *kp, const avq_amx_dims *g, float *S);
void avq_attention_amx_pv32(const uint16_t *P, const uint16_t *vp, const avq_amx_dims *g, float *O);
float avq_attention_amx_softmax(const float *s, int64_t limit, int64_t Mpad, float scale, uint16_t *p);

/* fp32 and bf16 attention tiles on AVX-512 register blocks (attention_avx512.c);
 * bf16 needs AVX512-BF16. Tasks of up to ATTN_AVX512_T query rows, the queries
 * across the vector lanes (transposed products: S^T = K Q^T, O^T += V^T P^T). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define AVQ_HAVE_AVX512_ATTENTION 1
#else
#define AVQ_HAVE_AVX512_ATTENTION 0
#endif
#define ATTN_AVX512_T 96
typedef struct avq_avx512_dims {
    int bf16;     /* operands bf16 (else f32) */
    int64_t d;    /* head dim */
    int64_t Mpad; /* keys, padded to 8 */
    int64_t dk;   /* head dim as the reduction of K Q^T: padded to 2 for bf16 */
    int64_t dv;   /* head dim as the rows of V^T P^T, padded to 8 */
} avq_avx512_dims;
void avq_attention_avx512_dims(int64_t M, int64_t d, avq_dtype dt, avq_avx512_dims *g);
/* Packed K and V of one head: Mpad x dk and dv x Mpad elements of the operand
 * dtype; negate: K packed as -K (a negative scale becomes a positive one). */
void avq_attention_avx512_pack_k(const void *k, int64_t ld, int64_t M, const avq_avx512_dims *g, int negate, void *kp);
void avq_attention_avx512_pack_v(const void *v, int64_t ld, int64_t M, const avq_avx512_dims *g, void *vp);
/* Bytes of workspace avq_attention_avx512_task needs. */
int64_t avq_attention_avx512_task_workspace(const avq_avx512_dims *g);
/* Attention of up to ATTN_AVX512_T query rows (q0: the first one's index, for
 * the causal mask) against a packed head, written to out (row stride ldo):
 * key blocks with an online softmax, so the block's K and V stay in cache
 * while every query of the task passes. scale: |scale| (the sign is in kp). */
void avq_attention_avx512_task(const avq_avx512_dims *g, const void *q, int64_t ldq, int64_t rows, int64_t q0,
                               int64_t M, int causal, float scale, const void *kp, const void *vp, void *ws, void *out,
                               int64_t ldo);

/* The Winograd path of avq_conv2d (3x3, stride 1, padding 1, f32 or bf16 NHWC). */
int avq_conv2d_winograd_fits(const avq_weight *w, const avq_tensor *x, const avq_conv_params *prm);
avq_status avq_conv2d_winograd(avq_plan *p, avq_weight *w, avq_weight *b, const avq_tensor *x, avq_tensor *y,
                               const avq_conv_params *prm);

#endif
