/* The CLIP text transformer of Stable Diffusion 1.x (HF CLIPTextModel,
 * openai/clip-vit-large-patch14's text tower; SPEC §1.2-1.4).
 *
 *   x = token_embedding[ids] + position_embedding[0..L-1]        [B, L, D]
 *   12 x (pre-LN):  x += out_proj(causal_attention(LN1(x)))      q scaled by 1/sqrt(D/heads)
 *                   x += fc2(quick_gelu(fc1(LN2(x))))
 *   out = final_layer_norm(x)                                    [B, L, D] f32
 *
 * Weights are read by their checkpoint names under
 * "cond_stage_model.transformer.text_model." (position_ids is not used).
 * Activations run in the model precision (f32 or bf16); the output is f32.
 *
 * Usage:
 *   avq_text_encoder *m;       avq_text_encoder_create(&cfg, &src, AVQ_F32, &m);
 *   avq_text_encoder_plan *p;  avq_text_encoder_plan_create(m, batch, 77, &p);
 *   avq_text_encoder_run(m, p, ids, out);      (as often as needed)
 *   avq_text_encoder_plan_destroy(p);  avq_text_encoder_destroy(m);
 */
#ifndef AVQ_TEXT_ENCODER_H
#define AVQ_TEXT_ENCODER_H

#include <stdint.h>

#include "core/plan.h"
#include "core/status.h"
#include "core/tensor.h"
#include "models/loader.h"

#define AVQ_TEXT_PREFIX "cond_stage_model.transformer.text_model."

/* Hyper-parameters (ViT-L/14: 49408, 768, 12, 12, 3072, 77, 1e-5). */
typedef struct avq_text_encoder_config {
    int vocab_size;    /* rows of the token embedding */
    int width;         /* D, the residual width */
    int layers;        /* encoder layers */
    int heads;         /* attention heads; width % heads == 0 */
    int mlp;           /* hidden width of fc1 */
    int max_positions; /* rows of the position embedding: the longest sequence */
    float eps;         /* LayerNorm epsilon */
} avq_text_encoder_config;

typedef struct avq_text_encoder avq_text_encoder;           /* weights + config, immutable */
typedef struct avq_text_encoder_plan avq_text_encoder_plan; /* one (batch, length) shape */

/* Checks the config, then looks up every weight in `src` (borrowed: the data
 * must outlive the model) and reports all missing or mis-shaped tensors in one
 * AVQ_ERR_IO message. `precision` is the activation dtype (AVQ_F32 or AVQ_BF16). */
avq_status avq_text_encoder_create(const avq_text_encoder_config *cfg, const avq_weight_source *src,
                                   avq_dtype precision, avq_text_encoder **out);
void avq_text_encoder_destroy(avq_text_encoder *m);

const avq_text_encoder_config *avq_text_encoder_get_config(const avq_text_encoder *m);
avq_dtype avq_text_encoder_precision(const avq_text_encoder *m);
int64_t avq_text_encoder_num_params(const avq_text_encoder *m);

/* A plan for `batch` sequences of `seq_len` tokens (1 <= seq_len <= max_positions).
 * Built on its first run; owned by the caller; usable with `m` only. */
avq_status avq_text_encoder_plan_create(const avq_text_encoder *m, int64_t batch, int64_t seq_len,
                                        avq_text_encoder_plan **out);
void avq_text_encoder_plan_destroy(avq_text_encoder_plan *p);
/* Activation arena + scratchpad bytes (0 until the first run). */
size_t avq_text_encoder_plan_bytes(const avq_text_encoder_plan *p);
/* The underlying plan, for its statistics (borrowed). */
const avq_plan *avq_text_encoder_plan_core(const avq_text_encoder_plan *p);

/* ids: int32 [batch, seq_len], each in [0, vocab_size); out: f32 [batch, seq_len, width],
 * the final-layer-normed last hidden state. Not re-entrant on one plan. */
avq_status avq_text_encoder_run(avq_text_encoder *m, avq_text_encoder_plan *p, const int32_t *ids, float *out);

#endif
