/* The Stable Diffusion v1 UNet (ldm openaimodel.UNetModel with a spatial
 * transformer at the attention resolutions): eps = UNet(x_t, t, context).
 * SPEC §2. Weights are looked up under "model.diffusion_model." with the
 * checkpoint's own names; shapes follow from the config, so tiny variants
 * (every width a multiple of 32) work as well as the full 860 M model.
 *
 * Model vs plan, as for every model (autoencoder.h, text_encoder.h): an
 * avq_unet holds the config and the weights (immutable after creation, packed
 * lazily into the layouts the primitives choose). An avq_unet_plan belongs to
 * one model and one (batch, h, w, context length): the first avq_unet_run with
 * it builds it; every later run creates and allocates nothing. Running it on
 * another model (AVQ_ERR_ARG) or shape (AVQ_ERR_SHAPE) is refused.
 *
 * Usage:
 *   avq_unet *u;        avq_unet_create(&cfg, AVQ_F32, &src, &u);
 *   avq_unet_plan *p;   avq_unet_plan_create(u, B, h, w, 77, &p);
 *   avq_unet_run(u, p, &x, &t, &context, &eps);   (as often as needed)
 *   avq_unet_plan_destroy(p);  avq_unet_destroy(u); */
#ifndef AVQ_UNET_H
#define AVQ_UNET_H

#include <stddef.h>
#include <stdint.h>

#include "core/plan.h"
#include "core/tensor.h"
#include "models/loader.h"

#define AVQ_UNET_MAX_LEVELS 8

typedef struct avq_unet_config {
    int in_channels;                       /* 4 (txt2img) or 9 (inpainting: [x_t, mask, masked-image latent]) */
    int out_channels;                      /* 4 */
    int model_channels;                    /* 320 */
    int num_levels;                        /* entries used in channel_mult (4) */
    int channel_mult[AVQ_UNET_MAX_LEVELS]; /* {1, 2, 4, 4} */
    int num_res_blocks;                    /* 2 */
    int num_attention_resolutions;         /* entries used in attention_resolutions (3) */
    int attention_resolutions[AVQ_UNET_MAX_LEVELS]; /* downsample factors with attention: {4, 2, 1} */
    int num_heads;                                  /* 8, or -1 when num_head_channels fixes the head dim */
    int num_head_channels;                          /* -1 (SD 1.x: head dim = width / num_heads), or the head dim */
    int transformer_depth;                          /* 1 */
    int context_dim;                                /* 768 */
} avq_unet_config;

typedef struct avq_unet avq_unet;           /* weights + config, immutable */
typedef struct avq_unet_plan avq_unet_plan; /* one (batch, h, w, context length) */

/* Validates the config (AVQ_ERR_ARG naming the field) and loads every weight
 * from `src` (AVQ_ERR_IO listing all missing or mis-shaped tensors at once).
 * `precision` is the dtype of all internal activations (AVQ_F32 or AVQ_BF16;
 * bf16 packs the weights to bf16). The weight data `src` hands out is
 * borrowed and must outlive the unet. */
avq_status avq_unet_create(const avq_unet_config *cfg, avq_dtype precision, const avq_weight_source *src,
                           avq_unet **out);
void avq_unet_destroy(avq_unet *u);

int avq_unet_in_channels(const avq_unet *u);
int avq_unet_out_channels(const avq_unet *u);
/* AVQ_OK when a latent of dims [B, C, h, w] fits this UNet (channels, h and w
 * positive multiples of the size multiple), else AVQ_ERR_SHAPE naming what is
 * wrong: the one place the latent's contract is checked (avq_unet_run calls it). */
avq_status avq_unet_check_latent(const avq_unet *u, const int64_t dims[4]);
int avq_unet_context_dim(const avq_unet *u);
avq_dtype avq_unet_precision(const avq_unet *u);
const avq_unet_config *avq_unet_get_config(const avq_unet *u);
int64_t avq_unet_num_params(const avq_unet *u);
/* Latent height and width must be multiples of this (8 for SD: 2^(levels - 1)). */
int avq_unet_size_multiple(const avq_unet *u);

/* A plan for `batch` latents of height x width (multiples of the size
 * multiple) and contexts of `context_length` tokens. Built on its first run;
 * owned by the caller; usable with `u` only. */
avq_status avq_unet_plan_create(const avq_unet *u, int64_t batch, int64_t height, int64_t width, int64_t context_length,
                                avq_unet_plan **out);
void avq_unet_plan_destroy(avq_unet_plan *p);
/* Activation arena + scratchpad bytes (0 until the first run). */
size_t avq_unet_plan_bytes(const avq_unet_plan *p);
/* The underlying plan, for its statistics (borrowed). */
const avq_plan *avq_unet_plan_core(const avq_unet_plan *p);

/* One forward. All four tensors are caller-owned, f32, AVQ_PLAIN, data set,
 * arena_off = -1:
 *   x       [B, in_channels, h, w]   (h, w multiples of 8 when there are 4 levels:
 *                                     multiples of 2^(num_levels - 1) in general)
 *   t       [B]                      timesteps as floats (the DDPM index, e.g. 981)
 *   context [B, L, context_dim]      (L = 77 for CLIP; any L >= 1 works)
 *   eps_out [B, out_channels, h, w]  written
 * Shape problems -> AVQ_ERR_SHAPE / AVQ_ERR_ARG with a message. The plan is
 * built on the first call (see above); reuse it for every step of a loop.
 * Not reentrant on one plan; different plans may run concurrently. */
avq_status avq_unet_run(avq_unet *u, avq_unet_plan *plan, const avq_tensor *x, const avq_tensor *t,
                        const avq_tensor *context, avq_tensor *eps_out);

#endif
