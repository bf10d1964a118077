/* Ops: the layers every model is made of, forward only, fp32 and bf16.
 *
 * Each op is called inside a plan pass (core/plan.h): while building it creates
 * and records its oneDNN primitive (or nothing, for the OpenMP kernels); while
 * running it executes. Outputs are tensors the caller allocated, so the caller
 * decides lifetimes. Activations are NHWC 4-D or plain [rows, features] tensors;
 * logical shapes follow PyTorch ([N, C, H, W], [B, tokens, features]). */
#ifndef AVQ_OPS_H
#define AVQ_OPS_H

#include "../core/plan.h"
#include "../core/weight.h"

typedef enum avq_act {
    AVQ_ACT_NONE = 0,
    AVQ_ACT_RELU,
    AVQ_ACT_SILU,      /* x * sigmoid(x) */
    AVQ_ACT_GELU,      /* exact erf form */
    AVQ_ACT_QUICK_GELU /* x * sigmoid(1.702 x) */
} avq_act;

/* Step kinds (a run replays the build's sequence). */
enum {
    AVQ_STEP_CONV = 1,
    AVQ_STEP_MATMUL,
    AVQ_STEP_REORDER,
    AVQ_STEP_SOFTMAX,
    AVQ_STEP_ATTN_QK,
    AVQ_STEP_ATTN_PV,
    AVQ_STEP_WINOGRAD
};

/* How a conv is computed. AUTO takes Winograd F(2x2, 3x3) for the 3x3
 * stride-1 pad-1 NHWC convs of 128+ channels with enough 2x2 tiles (from 8
 * at 1280 channels to 2048 at 128: winograd.c), in f32 (2.25x fewer
 * multiplies than direct convolution, rounding differs at the 1e-6 relative
 * level) and in bf16 on AVX512-BF16 without AMX (rounding within the bf16
 * conv bound). The choice is made once per weight, at its first such conv,
 * and holds for all its shapes: a model's Winograd weight keeps U alone (its
 * source is freed), and plans built earlier replay as built. oneDNN's direct
 * convolution everywhere else. WINOGRAD forces it for any 3x3 stride-1
 * pad-1 NHWC f32 or bf16 conv. */
typedef enum avq_conv_algo { AVQ_CONV_AUTO = 0, AVQ_CONV_DIRECT, AVQ_CONV_WINOGRAD } avq_conv_algo;

typedef struct avq_conv_params {
    int stride_h, stride_w;
    int pad_t, pad_l, pad_b, pad_r; /* the VAE downsampler uses (0, 0, 1, 1) */
    avq_act act;
    const avq_tensor *add; /* optional, added after act: dst's shape, or [N, C, 1, 1] */
    avq_conv_algo algo;
} avq_conv_params;

/* Symmetric padding p, stride s, no activation, no add. */
avq_conv_params avq_conv_simple(int stride, int pad);
avq_status avq_conv2d_out_size(const avq_tensor *x, const avq_weight *w, const avq_conv_params *prm, int64_t *oh,
                               int64_t *ow);
/* y = act(conv(x, w) + b) + add. x, y NHWC; w [O, I, kh, kw]; b [O] or NULL. */
avq_status avq_conv2d(avq_plan *p, avq_weight *w, avq_weight *b, const avq_tensor *x, avq_tensor *y,
                      const avq_conv_params *prm);

/* 1 where avq_conv2d with AVQ_CONV_AUTO takes the Winograd path for these operands. */
int avq_conv2d_auto_winograd(const avq_weight *w, const avq_tensor *x, const avq_conv_params *prm);

/* y = act(x W^T + b) * mul + add over rows: x [rows, K], w [N, K], y [rows, N];
 * mul/add optional, y's shape. 4-D NHWC tensors count as [N*H*W, C]. */
avq_status avq_linear(avq_plan *p, avq_weight *w, avq_weight *b, const avq_tensor *x, avq_tensor *y, avq_act act,
                      const avq_tensor *mul, const avq_tensor *add);
/* GEGLU as one linear: y [rows, F] = value * GELU(gate), [value | gate] =
 * x W^T + b with w [2F, in] (ff.net.0.proj as stored: value rows, then gate
 * rows) and b [2F]. One matmul per chunk of rows into a scratch [chunk, 2F]
 * that the SIMD epilogue reads back from cache. Measured against the UNet's
 * two linears (value; gate with gelu_erf and mul post-ops) on a 2-core
 * AVX-512 machine it was not faster in bf16 (its epilogue costs what oneDNN's
 * post-ops cost), so the UNet keeps those; kept for the benchmark and for
 * machines where the balance differs. */
avq_status avq_linear_geglu(avq_plan *p, avq_weight *w, avq_weight *b, const avq_tensor *x, avq_tensor *y);

/* Batched c = alpha * a @ b (b transposed if trans_b): a [B, M, K], b [B, K, N]
 * or [B, N, K], c [B, M, N]; plain tensors. */
avq_status avq_matmul(avq_plan *p, const avq_tensor *a, const avq_tensor *b, avq_tensor *c, int trans_b, float alpha);

/* Softmax over the last dim (oneDNN primitive). */
avq_status avq_softmax(avq_plan *p, const avq_tensor *x, avq_tensor *y);

/* Multi-head scaled dot-product attention. q [B, N, C], k and v [B, M, C],
 * o [B, N, C] (plain, or NHWC 4-D viewed as tokens); heads split C into
 * consecutive groups. Scores are made tile by tile over queries, so the
 * B x heads x N x M tensor never exists at once. causal: key j > query i masked. */
avq_status avq_attention(avq_plan *p, const avq_tensor *q, const avq_tensor *k, const avq_tensor *v, avq_tensor *o,
                         int heads, float scale, int causal);
/* 1 where bf16 attention runs on AMX tiles (else on AVX512-BF16 tiles, or widened to f32). */
int avq_attention_uses_amx(void);

/* GroupNorm over NHWC or [N, C] tensors, fp32 statistics, optional fused SiLU. */
avq_status avq_group_norm(avq_plan *p, const avq_tensor *x, avq_tensor *y, const avq_weight *gamma,
                          const avq_weight *beta, int groups, float eps, int silu);
/* Row ranges of a whole image, for banded (exact tiled) decoding: a 3x3 conv
 * over rows [r0, r1) reads rows r0 - 1 .. r1 of its input, which these make
 * in a small NHWC scratch y [1, C, rows, W'] from sample n of x [N, C, H, W]
 * NHWC; rows outside [0, H) (or [0, 2H)) are zeros, the conv's padding.
 * stats: f32 plain [N, 3, C] = per (n, c) the group mean, gamma / std, beta,
 * over the whole x (fp32 statistics, bit-identical to avq_group_norm's). */
avq_status avq_group_norm_stats(avq_plan *p, const avq_tensor *x, avq_tensor *stats, const avq_weight *gamma,
                                const avq_weight *beta, int groups, float eps);
/* y rows j = GN(x)[n, :, r0 + j, :] with x's statistics, optional fused SiLU. */
avq_status avq_group_norm_rows(avq_plan *p, const avq_tensor *x, const avq_tensor *stats, avq_tensor *y, int64_t n,
                               int64_t r0, int silu);
/* y rows j = x[n, :, r0 + j, :] (W' = W). */
avq_status avq_gather_rows(avq_plan *p, const avq_tensor *x, avq_tensor *y, int64_t n, int64_t r0);
/* y rows j = upsample2x(x)[n, :, r0 + j, :] (nearest; W' = 2W, rows in [0, 2H)). */
avq_status avq_upsample2x_rows(avq_plan *p, const avq_tensor *x, avq_tensor *y, int64_t n, int64_t r0);
/* LayerNorm over the last dim (features), biased variance, affine. */
avq_status avq_layer_norm(avq_plan *p, const avq_tensor *x, avq_tensor *y, const avq_weight *gamma,
                          const avq_weight *beta, float eps);

avq_status avq_activation(avq_plan *p, const avq_tensor *x, avq_tensor *y, avq_act act);
/* x [rows, 2F] -> y [rows, F] = x[:, :F] * gelu(x[:, F:]). */
avq_status avq_geglu(avq_plan *p, const avq_tensor *x, avq_tensor *y);

/* y = a + b and y = a * b; b is a's shape, [N, C, 1, 1] (per channel) or
 * [N, 1, H, W] (per pixel) for 4-D a. */
avq_status avq_add(avq_plan *p, const avq_tensor *a, const avq_tensor *b, avq_tensor *y);
avq_status avq_mul(avq_plan *p, const avq_tensor *a, const avq_tensor *b, avq_tensor *y);
/* y = h * m + f * (1 - m), m [N, 1, H, W] broadcast over channels. */
avq_status avq_blend(avq_plan *p, const avq_tensor *h, const avq_tensor *f, const avq_tensor *m, avq_tensor *y);
/* y = concat(a, b) along channels. */
avq_status avq_concat_channels(avq_plan *p, const avq_tensor *a, const avq_tensor *b, avq_tensor *y);
avq_status avq_upsample2x(avq_plan *p, const avq_tensor *x, avq_tensor *y);
/* PyTorch F.interpolate(mode="nearest") to y's size: src = min(floor(dst * (in/out)), in - 1). */
avq_status avq_resize_nearest(avq_plan *p, const avq_tensor *x, avq_tensor *y);
/* Sinusoidal embedding, cos first: t [B] f32 -> y [B, dim]. */
avq_status avq_timestep_embedding(avq_plan *p, const avq_tensor *t, avq_tensor *y, int dim, float max_period);
/* y[b, i, :] = table[ids[b, i], :] + pos[i, :] (pos optional): ids int32 [B, L]. */
avq_status avq_embedding(avq_plan *p, const int32_t *ids, const avq_weight *table, const avq_weight *pos,
                         avq_tensor *y);
/* Layout and dtype conversion (oneDNN reorder). */
avq_status avq_reorder(avq_plan *p, const avq_tensor *x, avq_tensor *y);
/* y = x (same layout & dtype) */
avq_status avq_copy(avq_plan *p, const avq_tensor *x, avq_tensor *y);

/* Vectorisable float kernels shared by ops and samplers. */
float avq_expf(float x);

#endif
