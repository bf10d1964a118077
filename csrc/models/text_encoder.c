/* CLIP text transformer: see text_encoder.h. One forward function, built once
 * per (batch, length) plan and replayed; the residual stream x is a plain
 * [B, L, D] token matrix, so linear, attention and layer norm read it as is. */
#include "text_encoder.h"

#include <math.h>
#include <stdlib.h>

#include "ops/ops.h"

typedef struct clip_layer {
    avq_weight *ln1_w, *ln1_b;
    avq_weight *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *out_w, *out_b;
    avq_weight *ln2_w, *ln2_b;
    avq_weight *fc1_w, *fc1_b, *fc2_w, *fc2_b;
} clip_layer;

struct avq_text_encoder {
    avq_text_encoder_config cfg;
    avq_dtype dtype;
    avq_weight_set ws;            /* owns every weight below (data borrowed from the source) */
    avq_weight *token, *position; /* [vocab, D], [max_positions, D] */
    avq_weight *final_w, *final_b;
    clip_layer *layer; /* owned, cfg.layers entries */
};

struct avq_text_encoder_plan {
    const avq_text_encoder *model; /* borrowed: the plan is valid for this model only */
    int64_t batch, seq_len;
    avq_plan *plan; /* owned */
};

/* What one run reads: the ids and where the output goes (both borrowed). */
typedef struct run_ctx {
    avq_text_encoder *m;
    int64_t batch, seq_len;
    const int32_t *ids;
    float *out;
} run_ctx;

static avq_status check_config(const avq_text_encoder_config *c) {
    if (c->vocab_size < 1 || c->width < 1 || c->layers < 1 || c->heads < 1 || c->mlp < 1 || c->max_positions < 1)
        return avq_error(AVQ_ERR_ARG,
                         "text encoder config: vocab_size %d, width %d, layers %d, heads %d, mlp %d, max_positions %d "
                         "must all be >= 1",
                         c->vocab_size, c->width, c->layers, c->heads, c->mlp, c->max_positions);
    if (c->width % c->heads)
        return avq_error(AVQ_ERR_ARG, "text encoder config: width %d does not split into %d heads", c->width, c->heads);
    if (!(c->eps > 0.f) || !isfinite(c->eps))
        return avq_error(AVQ_ERR_ARG, "text encoder config: eps must be a finite number > 0, got %g", (double)c->eps);
    return AVQ_OK;
}

static void get_layer(avq_weight_set *ws, clip_layer *l, int i, int64_t D, int64_t F) {
#define W2(dst, rows, cols, suffix) dst = avq_weight_get(ws, 2, AVQ_DIMS(rows, cols), "encoder.layers.%d." suffix, i)
#define W1(dst, n, suffix)          dst = avq_weight_get(ws, 1, AVQ_DIMS(n), "encoder.layers.%d." suffix, i)
    W2(l->k_w, D, D, "self_attn.k_proj.weight");
    W1(l->k_b, D, "self_attn.k_proj.bias");
    W2(l->v_w, D, D, "self_attn.v_proj.weight");
    W1(l->v_b, D, "self_attn.v_proj.bias");
    W2(l->q_w, D, D, "self_attn.q_proj.weight");
    W1(l->q_b, D, "self_attn.q_proj.bias");
    W2(l->out_w, D, D, "self_attn.out_proj.weight");
    W1(l->out_b, D, "self_attn.out_proj.bias");
    W1(l->ln1_w, D, "layer_norm1.weight");
    W1(l->ln1_b, D, "layer_norm1.bias");
    W2(l->fc1_w, F, D, "mlp.fc1.weight");
    W1(l->fc1_b, F, "mlp.fc1.bias");
    W2(l->fc2_w, D, F, "mlp.fc2.weight");
    W1(l->fc2_b, D, "mlp.fc2.bias");
    W1(l->ln2_w, D, "layer_norm2.weight");
    W1(l->ln2_b, D, "layer_norm2.bias");
#undef W1
#undef W2
}

avq_status avq_text_encoder_create(const avq_text_encoder_config *cfg, const avq_weight_source *src,
                                   avq_dtype precision, avq_text_encoder **out) {
    *out = NULL;
    if (!cfg || !src) return avq_error(AVQ_ERR_ARG, "text encoder: config and weight source are required");
    AVQ_TRY(check_config(cfg));
    if (precision != AVQ_F32 && precision != AVQ_BF16)
        return avq_error(AVQ_ERR_DTYPE, "text encoder: precision must be f32 or bf16");
    avq_text_encoder *m = calloc(1, sizeof *m);
    if (!m) return avq_error(AVQ_ERR_MEMORY, "out of memory creating the text encoder");
    m->cfg = *cfg;
    m->dtype = precision;
    m->layer = calloc((size_t)cfg->layers, sizeof *m->layer);
    if (!m->layer) {
        free(m);
        return avq_error(AVQ_ERR_MEMORY, "out of memory creating the text encoder");
    }
    const int64_t D = cfg->width, F = cfg->mlp;
    avq_weight_set *ws = &m->ws;
    avq_weight_set_init(ws, src, AVQ_TEXT_PREFIX);
    m->token = avq_weight_get(ws, 2, AVQ_DIMS(cfg->vocab_size, D), "embeddings.token_embedding.weight");
    m->position = avq_weight_get(ws, 2, AVQ_DIMS(cfg->max_positions, D), "embeddings.position_embedding.weight");
    /* The embeddings above are read in f32 and summed before rounding; the
     * layers' linear weights are packed to the model's precision. */
    ws->store = precision;
    for (int i = 0; i < cfg->layers; i++) get_layer(ws, &m->layer[i], i, D, F);
    m->final_w = avq_weight_get(ws, 1, AVQ_DIMS(D), "final_layer_norm.weight");
    m->final_b = avq_weight_get(ws, 1, AVQ_DIMS(D), "final_layer_norm.bias");
    avq_status st = avq_weight_set_finish(ws, "CLIP text encoder"); /* also reports running out of memory */
    if (st != AVQ_OK) {
        avq_text_encoder_destroy(m);
        return st;
    }
    *out = m;
    return AVQ_OK;
}

void avq_text_encoder_destroy(avq_text_encoder *m) {
    if (!m) return;
    avq_weight_set_free(&m->ws);
    free(m->layer);
    free(m);
}

const avq_text_encoder_config *avq_text_encoder_get_config(const avq_text_encoder *m) { return &m->cfg; }
avq_dtype avq_text_encoder_precision(const avq_text_encoder *m) { return m->dtype; }
int64_t avq_text_encoder_num_params(const avq_text_encoder *m) { return avq_weight_set_numel(&m->ws); }

/* ---- forward ---------------------------------------------------------- */

/* x += out_proj(causal self-attention(LN1(x))); *x is replaced by the new stream. */
static avq_status self_attention(avq_plan *p, const avq_text_encoder *m, clip_layer *l, avq_tensor *x) {
    const avq_text_encoder_config *c = &m->cfg;
    const int64_t *dims = x->dims; /* [B, L, D] */
    avq_tensor a, q, k, v, o, y;
    AVQ_TRY(avq_plan_tensor(p, &a, m->dtype, AVQ_PLAIN, 3, dims));
    AVQ_TRY(avq_layer_norm(p, x, &a, l->ln1_w, l->ln1_b, c->eps));
    AVQ_TRY(avq_plan_tensor(p, &q, m->dtype, AVQ_PLAIN, 3, dims));
    AVQ_TRY(avq_linear(p, l->q_w, l->q_b, &a, &q, AVQ_ACT_NONE, NULL, NULL));
    AVQ_TRY(avq_plan_tensor(p, &k, m->dtype, AVQ_PLAIN, 3, dims));
    AVQ_TRY(avq_linear(p, l->k_w, l->k_b, &a, &k, AVQ_ACT_NONE, NULL, NULL));
    AVQ_TRY(avq_plan_tensor(p, &v, m->dtype, AVQ_PLAIN, 3, dims));
    AVQ_TRY(avq_linear(p, l->v_w, l->v_b, &a, &v, AVQ_ACT_NONE, NULL, NULL));
    avq_plan_release(p, &a);
    /* q * (1/sqrt(head_dim)) before q k^T equals scaling the logits (SPEC §1.4). */
    const float scale = 1.f / sqrtf((float)(c->width / c->heads));
    AVQ_TRY(avq_plan_tensor(p, &o, m->dtype, AVQ_PLAIN, 3, dims));
    AVQ_TRY(avq_attention(p, &q, &k, &v, &o, c->heads, scale, 1));
    avq_plan_release(p, &v);
    avq_plan_release(p, &k);
    avq_plan_release(p, &q);
    /* A separate output: the residual add reads x while the matmul writes y. */
    AVQ_TRY(avq_plan_tensor(p, &y, m->dtype, AVQ_PLAIN, 3, dims));
    AVQ_TRY(avq_linear(p, l->out_w, l->out_b, &o, &y, AVQ_ACT_NONE, NULL, x));
    avq_plan_release(p, &o);
    avq_plan_release(p, x);
    *x = y;
    return AVQ_OK;
}

/* x += fc2(quick_gelu(fc1(LN2(x)))); *x is replaced by the new stream. */
static avq_status mlp(avq_plan *p, const avq_text_encoder *m, clip_layer *l, avq_tensor *x) {
    const avq_text_encoder_config *c = &m->cfg;
    avq_tensor a, h, y;
    int64_t hd[3] = {x->dims[0], x->dims[1], c->mlp};
    AVQ_TRY(avq_plan_tensor(p, &a, m->dtype, AVQ_PLAIN, 3, x->dims));
    AVQ_TRY(avq_layer_norm(p, x, &a, l->ln2_w, l->ln2_b, c->eps));
    AVQ_TRY(avq_plan_tensor(p, &h, m->dtype, AVQ_PLAIN, 3, hd)); /* [B, L, mlp] */
    AVQ_TRY(avq_linear(p, l->fc1_w, l->fc1_b, &a, &h, AVQ_ACT_QUICK_GELU, NULL, NULL));
    avq_plan_release(p, &a);
    AVQ_TRY(avq_plan_tensor(p, &y, m->dtype, AVQ_PLAIN, 3, x->dims));
    AVQ_TRY(avq_linear(p, l->fc2_w, l->fc2_b, &h, &y, AVQ_ACT_NONE, NULL, x));
    avq_plan_release(p, &h);
    avq_plan_release(p, x);
    *x = y;
    return AVQ_OK;
}

static avq_status forward(avq_plan *p, void *vctx) {
    run_ctx *ctx = vctx;
    avq_text_encoder *m = ctx->m;
    const int64_t dims[3] = {ctx->batch, ctx->seq_len, m->cfg.width};
    avq_tensor x;
    AVQ_TRY(avq_plan_tensor(p, &x, m->dtype, AVQ_PLAIN, 3, dims)); /* [B, L, D] */
    AVQ_TRY(avq_embedding(p, ctx->ids, m->token, m->position, &x));
    for (int i = 0; i < m->cfg.layers; i++) {
        AVQ_TRY(self_attention(p, m, &m->layer[i], &x));
        AVQ_TRY(mlp(p, m, &m->layer[i], &x));
    }
    /* The final norm writes the caller's f32 array directly (reading bf16 if so). */
    avq_tensor out = avq_tensor_make(AVQ_F32, AVQ_PLAIN, 3, dims);
    out.data = ctx->out;
    AVQ_TRY(avq_layer_norm(p, &x, &out, m->final_w, m->final_b, m->cfg.eps));
    avq_plan_release(p, &x);
    return AVQ_OK;
}

/* ---- plans and runs ----------------------------------------------------- */

avq_status avq_text_encoder_plan_create(const avq_text_encoder *m, int64_t batch, int64_t seq_len,
                                        avq_text_encoder_plan **out) {
    *out = NULL;
    if (batch < 1) return avq_error(AVQ_ERR_SHAPE, "text encoder: batch must be >= 1, got %lld", (long long)batch);
    if (seq_len < 1 || seq_len > m->cfg.max_positions)
        return avq_error(AVQ_ERR_SHAPE, "text encoder: sequences must have 1 to %d tokens, got %lld",
                         m->cfg.max_positions, (long long)seq_len);
    avq_text_encoder_plan *tp = calloc(1, sizeof *tp);
    if (!tp) return avq_error(AVQ_ERR_MEMORY, "out of memory creating a text encoder plan");
    avq_status st = avq_plan_create(&tp->plan);
    if (st != AVQ_OK) {
        free(tp);
        return st;
    }
    tp->model = m;
    tp->batch = batch;
    tp->seq_len = seq_len;
    *out = tp;
    return AVQ_OK;
}

void avq_text_encoder_plan_destroy(avq_text_encoder_plan *p) {
    if (!p) return;
    avq_plan_destroy(p->plan);
    free(p);
}

const avq_plan *avq_text_encoder_plan_core(const avq_text_encoder_plan *p) { return p->plan; }

size_t avq_text_encoder_plan_bytes(const avq_text_encoder_plan *p) {
    return avq_plan_arena_bytes(p->plan) + avq_plan_scratch_bytes(p->plan);
}

avq_status avq_text_encoder_run(avq_text_encoder *m, avq_text_encoder_plan *p, const int32_t *ids, float *out) {
    if (!m || !p || !ids || !out) return avq_error(AVQ_ERR_ARG, "text encoder run: null argument");
    if (p->model != m) return avq_error(AVQ_ERR_ARG, "text encoder run: the plan was made for another model");
    const int64_t n = p->batch * p->seq_len, V = m->cfg.vocab_size;
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return avq_error(AVQ_ERR_ARG, "token id %d at [%lld, %lld] is outside the vocabulary [0, %lld)",
                             (int)ids[i], (long long)(i / p->seq_len), (long long)(i % p->seq_len), (long long)V);
    run_ctx ctx = {m, p->batch, p->seq_len, ids, out};
    return avq_plan_run(p->plan, forward, &ctx);
}
