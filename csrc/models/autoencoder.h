/* The KL autoencoder family of Stable Diffusion 1.x and Asymmetric VQGAN
 * (SPEC §3, §4): one model holds an encoder, a decoder, or both.
 *
 * Encoder (SD's KL encoder, `encoder.*` + `quant_conv.*`):
 *   h = conv_in(x); per level L: num_res_blocks resnet_block, downsample (pad
 *   right/bottom, stride 2) except at the last level; mid (block_1, attn_1,
 *   block_2); conv_out(SiLU(GN(h))) -> 2 z; quant_conv -> moments [B, 2 e, ...]
 *   mean = moments[:, :e], logvar = clamp(moments[:, e:], -30, 20),
 *   sample = mean + exp(logvar / 2) * noise (noise from the caller).
 *
 * Decoder (`post_quant_conv.*` + `decoder.*`): SD's vanilla decoder, the
 * asymmetric decoders base / 1.5x / 2x, with or without the mask condition:
 *   h = conv_in(post_quant_conv(z)); mid; for L = n-1 .. 0:
 *       [conditional] merge: h = h * m_L + F * (1 - m_L)   (m_L = nearest(mask))
 *       blocks_per_level resnet_block; upsample (nearest x2 + conv) if L != 0
 *   [conditional] final merge with the full-resolution mask and F0
 *   out = conv_out(SiLU(GN(h)))
 * where F0..F4 are the pre-ReLU outputs of the condition encoder
 * (`decoder.encoder.layers.0..4`) run on (1 - mask) * image (SPEC §4.4).
 * `decoder.up_layers.*` and `loss.*` are never looked up.
 *
 * Activations run in the model precision (AVQ_F32 or AVQ_BF16); inputs and
 * outputs are f32 NCHW. GroupNorm: 32 groups, eps 1e-6 everywhere.
 *
 * Usage:
 *   avq_autoencoder *m;        avq_autoencoder_create(&cfg, &src, AVQ_F32, &m);
 *   avq_autoencoder_plan *p;   avq_autoencoder_plan_create(m, AVQ_AE_DECODE_COND, B, H, W, &p);
 *   avq_autoencoder_decode(m, p, latent, image, mask, out);   (as often as needed)
 *   avq_autoencoder_plan_destroy(p);  avq_autoencoder_destroy(m);
 */
#ifndef AVQ_AUTOENCODER_H
#define AVQ_AUTOENCODER_H

#include <stddef.h>
#include <stdint.h>

#include "core/plan.h"
#include "core/status.h"
#include "core/tensor.h"
#include "models/loader.h"

#define AVQ_AE_MAX_LEVELS 8
#define AVQ_AE_PREFIX_MAX 64

/* SD's KL encoder (SPEC §3.1: 3, 128, [1, 2, 4, 4], 2, 4, embed 4). */
typedef struct avq_ae_encoder_config {
    int in_channels;                /* image channels (3) */
    int ch;                         /* conv_in width */
    int num_levels;                 /* len(ch_mult), 1..AVQ_AE_MAX_LEVELS */
    int ch_mult[AVQ_AE_MAX_LEVELS]; /* level L has width ch * ch_mult[L] */
    int num_res_blocks;             /* ResnetBlocks per level */
    int z_channels;                 /* conv_out makes 2 * z_channels (double_z) */
    int embed_dim;                  /* quant_conv: [2 e, 2 z, 1, 1]; latent channels e */
    char prefix[AVQ_AE_PREFIX_MAX]; /* checkpoint prefix, "" or "first_stage_model." */
} avq_ae_encoder_config;

/* A decoder: SD's (conditional = 0) or an asymmetric one. */
typedef struct avq_ae_decoder_config {
    int embed_dim;                 /* latent channels; post_quant_conv [z, e, 1, 1] */
    int z_channels;                /* conv_in input */
    int num_levels;                /* 1..AVQ_AE_MAX_LEVELS; the conditional decoder needs 4 */
    int widths[AVQ_AE_MAX_LEVELS]; /* W_L, level 0 = full resolution (base: 128, 256, 512, 512) */
    int blocks_per_level;          /* ResnetBlocks per up level (base 3, 1.5x 4, 2x 6) */
    int out_channels;              /* 3 */
    int conditional;               /* 1: merge the condition encoder's features */
    int cond_channels[3];          /* (c0, c1, c2) = (W0, W1, W2), with W2 == W3 */
    char prefix[AVQ_AE_PREFIX_MAX];
} avq_ae_decoder_config;

typedef struct avq_autoencoder_config {
    int has_encoder, has_decoder; /* at least one */
    avq_ae_encoder_config encoder;
    avq_ae_decoder_config decoder;
} avq_autoencoder_config;

typedef enum avq_ae_task {
    AVQ_AE_ENCODE = 0,     /* image -> mean, logvar (and a sample) */
    AVQ_AE_DECODE = 1,     /* latent -> image, no condition (vanilla / _wocondition) */
    AVQ_AE_DECODE_COND = 2 /* latent, image, mask -> image (conditional decoder only) */
} avq_ae_task;

typedef struct avq_autoencoder avq_autoencoder;           /* weights + config, immutable */
typedef struct avq_autoencoder_plan avq_autoencoder_plan; /* one task and (batch, height, width) */

/* Checks the config, then looks up every weight the configured parts need in
 * `src` (borrowed: the data must outlive the model) and reports all missing or
 * mis-shaped tensors in one AVQ_ERR_IO message. */
avq_status avq_autoencoder_create(const avq_autoencoder_config *cfg, const avq_weight_source *src, avq_dtype precision,
                                  avq_autoencoder **out);
void avq_autoencoder_destroy(avq_autoencoder *m);

const avq_autoencoder_config *avq_autoencoder_get_config(const avq_autoencoder *m);
avq_dtype avq_autoencoder_precision(const avq_autoencoder *m);
int64_t avq_autoencoder_num_params(const avq_autoencoder *m);
/* Image size / latent size of the encoder (enc = 1) or decoder: 2^(levels - 1). */
int avq_autoencoder_factor(const avq_autoencoder *m, int enc);

/* A plan for `task` on images of [batch, C, height, width] (height and width
 * multiples of the factor). Built on its first run; owned by the caller. */
avq_status avq_autoencoder_plan_create(const avq_autoencoder *m, avq_ae_task task, int64_t batch, int64_t height,
                                       int64_t width, avq_autoencoder_plan **out);
/* A decode plan (AVQ_AE_DECODE or AVQ_AE_DECODE_COND) that decodes in row
 * bands, with the same result as the whole decode up to rounding (GroupNorm
 * statistics over the whole image, computed before the bands): only each
 * resnet block's input and first conv's output exist at full size; the
 * normalised and upsampled tensors and the condition's full-resolution
 * features F0 and F1 only one band at a time (F1 is made twice: for F2 and
 * for its merge). The plan is validated like avq_autoencoder_plan_create's;
 * an encode task or band_rows < 0 is AVQ_ERR_ARG. band_rows:
 * rows per band at every resolution (>= 1), or 0 for as many as
 * AVQ_AE_BAND_BUDGET_BYTES of band scratch (input + output of one band conv)
 * allow, at least AVQ_AE_BAND_MIN_ROWS. Band convs that fit Winograd compute
 * two rows more than they keep. */
#define AVQ_AE_BAND_BUDGET_BYTES ((size_t)128 << 20)
#define AVQ_AE_BAND_MIN_ROWS     16
avq_status avq_autoencoder_plan_create_banded(const avq_autoencoder *m, avq_ae_task task, int64_t batch, int64_t height,
                                              int64_t width, int64_t band_rows, avq_autoencoder_plan **out);
/* Spilling for a banded plan (see avq_plan_set_spill): from its next run, an
 * activation arena above `budget` bytes is an unlinked file in `dir`, and the
 * band loops drop from the process the rows they are done with, so that a
 * few bands of each whole tensor are resident at a time (whole-tensor
 * passes run under a drop-behind thread: avq_plan_drop_behind_begin); the result is
 * bitwise the unspilled one. dir NULL: no spilling (the default). A whole
 * (unbanded) plan reads every activation at once: dir there is AVQ_ERR_ARG.
 * optional: see avq_plan_set_spill. */
avq_status avq_autoencoder_plan_set_spill(avq_autoencoder_plan *p, const char *dir, size_t budget, int optional);
/* 1 for a banded plan. */
int avq_autoencoder_plan_banded(const avq_autoencoder_plan *p);
void avq_autoencoder_plan_destroy(avq_autoencoder_plan *p);
/* Activation arena + scratchpad bytes (0 until the first run). */
size_t avq_autoencoder_plan_bytes(const avq_autoencoder_plan *p);
/* The underlying plan, for its statistics (borrowed). */
const avq_plan *avq_autoencoder_plan_core(const avq_autoencoder_plan *p);

/* image f32 [B, in, H, W] -> mean, logvar f32 [B, e, H/f, W/f] (logvar clamped
 * to [-30, 20]); with noise (mean's shape) also sample = mean + exp(logvar/2) * noise
 * (noise and sample both given or both NULL). Not re-entrant on one plan. */
avq_status avq_autoencoder_encode(avq_autoencoder *m, avq_autoencoder_plan *p, const float *image, const float *noise,
                                  float *mean, float *logvar, float *sample);

/* latent f32 [B, e, H/f, W/f] -> out f32 [B, out, H, W]. With an AVQ_AE_DECODE_COND
 * plan, image f32 [B, 3, H, W] and mask f32 [B, 1, H, W] (1 = hole) are required;
 * otherwise both must be NULL. Not re-entrant on one plan. */
avq_status avq_autoencoder_decode(avq_autoencoder *m, avq_autoencoder_plan *p, const float *latent, const float *image,
                                  const float *mask, float *out);

#endif
