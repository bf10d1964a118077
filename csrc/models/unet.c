/* The SD v1 UNet (SPEC §2): timestep MLP, ResBlocks with the embedding
 * injected, spatial transformers, down/up sampling, skip concatenations.
 *
 * Blocks are functions named after the checkpoint modules; each replaces its
 * input activation by its output (releasing the input unless the caller keeps
 * it as a skip). Every activation is an NHWC arena tensor of the model dtype,
 * so a [B, C, h, w] activation is also the [B, h*w, C] token matrix the
 * transformer reads. Fusions: GroupNorm carries the SiLU; time_embed.2
 * carries the SiLU every ResBlock applies to the embedding; a ResBlock's
 * second conv adds the skip (identity or the 1x1 skip_connection's output);
 * to_out, ff.net.2 and proj_out add their block's residual; GEGLU is two
 * linears on the row halves of ff.net.0.proj, the gate one (GELU)
 * multiplying by the value. */
#include "unet.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "ops/ops.h"

#define GN_GROUPS      32
#define GN_EPS_RES     1e-5f /* ResBlocks and out.0 */
#define GN_EPS_ST      1e-6f /* SpatialTransformer.norm */
#define LN_EPS         1e-5f
#define MAX_PERIOD     10000.f
#define MAX_RES_BLOCKS 32
#define MAX_BLOCKS     (1 + AVQ_UNET_MAX_LEVELS * (MAX_RES_BLOCKS + 1)) /* input blocks (= skips) at most */

/* ---- config ------------------------------------------------------------- */

static int attention_at(const avq_unet_config *c, int64_t ds) {
    for (int i = 0; i < c->num_attention_resolutions; i++)
        if (c->attention_resolutions[i] == ds) return 1;
    return 0;
}

static avq_status heads_for(const avq_unet_config *c, int64_t width, int *heads) {
    int64_t h = c->num_head_channels == -1 ? c->num_heads : width / c->num_head_channels;
    int64_t d = c->num_head_channels == -1 ? width / c->num_heads : c->num_head_channels;
    if (h < 1 || d < 1 || h * d != width)
        return avq_error(AVQ_ERR_ARG,
                         "UNet config: a width of %lld channels does not split into heads (num_heads %d, "
                         "num_head_channels %d)",
                         (long long)width, c->num_heads, c->num_head_channels);
    *heads = (int)h;
    return AVQ_OK;
}

static avq_status check_config(const avq_unet_config *c) {
    if (c->in_channels < 1)
        return avq_error(AVQ_ERR_ARG, "UNet config: in_channels must be >= 1, got %d", c->in_channels);
    if (c->out_channels < 1)
        return avq_error(AVQ_ERR_ARG, "UNet config: out_channels must be >= 1, got %d", c->out_channels);
    if (c->model_channels < 1 || c->model_channels % GN_GROUPS)
        return avq_error(AVQ_ERR_ARG, "UNet config: model_channels must be a positive multiple of %d, got %d",
                         GN_GROUPS, c->model_channels);
    if (c->num_levels < 1 || c->num_levels > AVQ_UNET_MAX_LEVELS)
        return avq_error(AVQ_ERR_ARG, "UNet config: channel_mult must have 1 to %d entries, got %d",
                         AVQ_UNET_MAX_LEVELS, c->num_levels);
    if (c->num_res_blocks < 1 || c->num_res_blocks > MAX_RES_BLOCKS)
        return avq_error(AVQ_ERR_ARG, "UNet config: num_res_blocks must be between 1 and %d, got %d", MAX_RES_BLOCKS,
                         c->num_res_blocks);
    if (c->num_attention_resolutions < 0 || c->num_attention_resolutions > AVQ_UNET_MAX_LEVELS)
        return avq_error(AVQ_ERR_ARG, "UNet config: at most %d attention_resolutions, got %d", AVQ_UNET_MAX_LEVELS,
                         c->num_attention_resolutions);
    for (int i = 0; i < c->num_attention_resolutions; i++)
        if (c->attention_resolutions[i] < 1)
            return avq_error(AVQ_ERR_ARG, "UNet config: attention_resolutions must be >= 1, got %d",
                             c->attention_resolutions[i]);
    if (c->transformer_depth < 1)
        return avq_error(AVQ_ERR_ARG, "UNet config: transformer_depth must be >= 1, got %d", c->transformer_depth);
    if (c->context_dim < 1)
        return avq_error(AVQ_ERR_ARG, "UNet config: context_dim must be >= 1, got %d", c->context_dim);
    if (!(c->num_heads > 0 || (c->num_heads == -1 && c->num_head_channels > 0)) ||
        !(c->num_head_channels > 0 || c->num_head_channels == -1))
        return avq_error(AVQ_ERR_ARG,
                         "UNet config: need num_heads > 0 (num_head_channels -1) or num_head_channels > 0, "
                         "got %d and %d",
                         c->num_heads, c->num_head_channels);
    for (int l = 0; l < c->num_levels; l++) {
        int64_t w = (int64_t)c->model_channels * c->channel_mult[l];
        int heads;
        if (c->channel_mult[l] < 1 || w % GN_GROUPS)
            return avq_error(AVQ_ERR_ARG,
                             "UNet config: channel_mult[%d] = %d gives a width of %lld, not a positive "
                             "multiple of %d",
                             l, c->channel_mult[l], (long long)w, GN_GROUPS);
        AVQ_TRY(heads_for(c, w, &heads));
    }
    return AVQ_OK;
}

/* ---- weights ------------------------------------------------------------ */

/* A module's weight and bias (conv, linear) or gain and bias (norm). */
typedef struct wb {
    avq_weight *w, *b;
} wb;

typedef struct resblock_w {
    wb in_norm, in_conv;   /* in_layers.0 / .2 */
    wb emb;                /* emb_layers.1 */
    wb out_norm, out_conv; /* out_layers.0 / .3 */
    wb skip;               /* skip_connection; .w NULL when cin == cout */
} resblock_w;

typedef struct attn_w {
    avq_weight *q, *k, *v; /* to_q, to_k, to_v: no bias */
    wb out;                /* to_out.0 */
} attn_w;

typedef struct tblock_w {
    attn_w attn1, attn2;
    wb ff0; /* ff.net.0.proj [8C, C]: GEGLU value rows [0, 4C), gate rows [4C, 8C) */
    wb ff2; /* ff.net.2 [C, 4C] */
    wb norm1, norm2, norm3;
    avq_weight rows[4]; /* owned row views of ff0 (value w, b, gate w, b), each with its own packed copy */
    wb value, gate;     /* point into rows; valid once `views` is set */
    int views;
} tblock_w;

typedef struct st_w {
    int heads, depth;
    wb norm, proj_in, proj_out;
    tblock_w *blocks; /* owned, `depth` entries */
} st_w;

enum { CONV_NONE = 0, CONV_IN, CONV_DOWN, CONV_UP };

/* One input_blocks.i / output_blocks.i: [resblock] [spatial transformer] [conv]. */
typedef struct block_w {
    int has_st, conv_kind;
    resblock_w res;
    st_w st;
    wb conv; /* input_blocks.0.0, ...0.op or ...N.conv */
} block_w;

struct avq_unet {
    avq_unet_config cfg;
    avq_dtype dt;
    int64_t emb_dim; /* 4 * model_channels */
    avq_weight_set ws;
    wb te0, te2; /* time_embed.0 / .2 */
    int n_in, n_out;
    block_w *in;  /* owned, n_in: in[0] is the input conv */
    block_w *out; /* owned, n_out */
    resblock_w mid0, mid2;
    st_w mid1;
    wb out_norm, out_conv; /* out.0 / out.2 */
    int64_t multiple;      /* latent sizes must be multiples of 2^(levels - 1) */
};

/* A plan knows its model and shape: one built for another shape would replay
 * primitives over the wrong buffers. */
struct avq_unet_plan {
    const avq_unet *model; /* borrowed: the plan is valid for this model only */
    int64_t batch, height, width, context_length;
    avq_plan *plan; /* owned */
};

/* Module names are built in each function's own buffer `n`. */
#define NAME_LEN  160
#define NAME(...) (snprintf(n, sizeof n, __VA_ARGS__), n)

static avq_weight *get(avq_unet *u, int ndim, const int64_t *dims, const char *module, const char *param) {
    return avq_weight_get(&u->ws, ndim, dims, "%s.%s", module, param); /* NULL (no memory): finish says so */
}

/* "<module>.weight" of `dims` and "<module>.bias" of [dims[0]], in that order. */
static wb get_wb(avq_unet *u, int ndim, const int64_t *dims, const char *module) {
    wb m;
    m.w = get(u, ndim, dims, module, "weight");
    m.b = get(u, 1, dims, module, "bias");
    return m;
}

static wb get_conv(avq_unet *u, const char *m, int64_t co, int64_t ci, int64_t k) {
    return get_wb(u, 4, AVQ_DIMS(co, ci, k, k), m);
}
static wb get_linear(avq_unet *u, const char *m, int64_t co, int64_t ci) { return get_wb(u, 2, AVQ_DIMS(co, ci), m); }
static wb get_norm(avq_unet *u, const char *m, int64_t c) { return get_wb(u, 1, AVQ_DIMS(c), m); }

static void load_resblock(avq_unet *u, resblock_w *r, const char *m, int64_t ci, int64_t co) {
    char n[NAME_LEN];
    r->in_norm = get_norm(u, NAME("%s.in_layers.0", m), ci);
    r->in_conv = get_conv(u, NAME("%s.in_layers.2", m), co, ci, 3);
    r->emb = get_linear(u, NAME("%s.emb_layers.1", m), co, u->emb_dim);
    r->out_norm = get_norm(u, NAME("%s.out_layers.0", m), co);
    r->out_conv = get_conv(u, NAME("%s.out_layers.3", m), co, co, 3);
    if (ci != co) r->skip = get_conv(u, NAME("%s.skip_connection", m), co, ci, 1);
}

static void load_attn(avq_unet *u, attn_w *a, const char *m, int64_t c, int64_t kv) {
    char n[NAME_LEN];
    a->q = get(u, 2, AVQ_DIMS(c, c), NAME("%s.to_q", m), "weight");
    a->k = get(u, 2, AVQ_DIMS(c, kv), NAME("%s.to_k", m), "weight");
    a->v = get(u, 2, AVQ_DIMS(c, kv), NAME("%s.to_v", m), "weight");
    a->out = get_linear(u, NAME("%s.to_out.0", m), c, c);
}

/* In the original's registration order: attn1, ff, attn2, norm1..3. */
static avq_status load_st(avq_unet *u, st_w *s, const char *m, int64_t c) {
    char n[NAME_LEN], blk[NAME_LEN - 32];
    AVQ_TRY(heads_for(&u->cfg, c, &s->heads));
    s->depth = u->cfg.transformer_depth;
    if (!(s->blocks = calloc((size_t)s->depth, sizeof *s->blocks)))
        return avq_error(AVQ_ERR_MEMORY, "out of memory creating the UNet");
    s->norm = get_norm(u, NAME("%s.norm", m), c);
    s->proj_in = get_conv(u, NAME("%s.proj_in", m), c, c, 1);
    for (int d = 0; d < s->depth; d++) {
        tblock_w *t = &s->blocks[d];
        snprintf(blk, sizeof blk, "%s.transformer_blocks.%d", m, d);
        load_attn(u, &t->attn1, NAME("%s.attn1", blk), c, c);
        t->ff0 = get_linear(u, NAME("%s.ff.net.0.proj", blk), 8 * c, c);
        t->ff2 = get_linear(u, NAME("%s.ff.net.2", blk), c, 4 * c);
        load_attn(u, &t->attn2, NAME("%s.attn2", blk), c, u->cfg.context_dim);
        t->norm1 = get_norm(u, NAME("%s.norm1", blk), c);
        t->norm2 = get_norm(u, NAME("%s.norm2", blk), c);
        t->norm3 = get_norm(u, NAME("%s.norm3", blk), c);
    }
    s->proj_out = get_conv(u, NAME("%s.proj_out", m), c, c, 1);
    return AVQ_OK;
}

/* <side>.<i>.0: a ResBlock ci -> co; <side>.<i>.1: a transformer where the
 * downsampling factor ds has attention. */
static avq_status load_block(avq_unet *u, block_w *b, const char *side, int i, int64_t ci, int64_t co, int64_t ds) {
    char n[NAME_LEN];
    load_resblock(u, &b->res, NAME("%s.%d.0", side, i), ci, co);
    b->has_st = attention_at(&u->cfg, ds);
    return b->has_st ? load_st(u, &b->st, NAME("%s.%d.1", side, i), co) : AVQ_OK;
}

/* After every lookup succeeded: the GEGLU halves as views of ff.net.0.proj. */
static void make_views(st_w *s) {
    for (int d = 0; d < s->depth; d++) {
        tblock_w *t = &s->blocks[d];
        const int64_t f = t->ff2.w->dims[1]; /* 4C */
        t->rows[0] = avq_weight_rows(t->ff0.w, 0, f);
        t->rows[1] = avq_weight_rows(t->ff0.b, 0, f);
        t->rows[2] = avq_weight_rows(t->ff0.w, f, f);
        t->rows[3] = avq_weight_rows(t->ff0.b, f, f);
        t->value = (wb){&t->rows[0], &t->rows[1]};
        t->gate = (wb){&t->rows[2], &t->rows[3]};
        t->views = 1;
    }
}

static void free_st(st_w *s) {
    for (int d = 0; s->blocks && d < s->depth; d++)
        for (int k = 0; s->blocks[d].views && k < 4; k++) avq_weight_release(&s->blocks[d].rows[k]);
    free(s->blocks);
    s->blocks = NULL;
}

/* fn on every spatial transformer. */
static void each_st(avq_unet *u, void (*fn)(st_w *)) {
    for (int i = 0; u->in && i < u->n_in; i++)
        if (u->in[i].has_st) fn(&u->in[i].st);
    for (int i = 0; u->out && i < u->n_out; i++)
        if (u->out[i].has_st) fn(&u->out[i].st);
    fn(&u->mid1);
}

/* ---- creation ----------------------------------------------------------- */

/* In the original's order: time_embed, input_blocks, middle_block, output_blocks, out. */
static avq_status load_all(avq_unet *u) {
    const avq_unet_config *c = &u->cfg;
    const int64_t mc = c->model_channels;
    char n[NAME_LEN];
    u->te0 = get_linear(u, "time_embed.0", u->emb_dim, mc);
    u->te2 = get_linear(u, "time_embed.2", u->emb_dim, u->emb_dim);

    /* input_blocks: the input conv; per level, ResBlocks [+ transformers] and
     * (but the last) a stride-2 conv. The skip widths as the original records them. */
    int64_t skips[MAX_BLOCKS], ch = mc, ds = 1;
    int nskips = 0, i;
    u->in[0].conv_kind = CONV_IN;
    u->in[0].conv = get_conv(u, "input_blocks.0.0", mc, c->in_channels, 3);
    skips[nskips++] = ch;
    i = 1;
    for (int level = 0; level < c->num_levels; level++) {
        const int64_t width = mc * c->channel_mult[level];
        for (int r = 0; r < c->num_res_blocks; r++, i++) {
            AVQ_TRY(load_block(u, &u->in[i], "input_blocks", i, ch, width, ds));
            skips[nskips++] = ch = width;
        }
        if (level != c->num_levels - 1) {
            u->in[i].conv_kind = CONV_DOWN;
            u->in[i].conv = get_conv(u, NAME("input_blocks.%d.0.op", i), ch, ch, 3);
            skips[nskips++] = ch;
            ds *= 2;
            i++;
        }
    }

    load_resblock(u, &u->mid0, "middle_block.0", ch, ch);
    AVQ_TRY(load_st(u, &u->mid1, "middle_block.1", ch));
    load_resblock(u, &u->mid2, "middle_block.2", ch, ch);

    /* output_blocks: ResBlocks over [h, skip] [+ transformers], a level's last one upsampling. */
    i = 0;
    for (int level = c->num_levels - 1; level >= 0; level--) {
        const int64_t width = mc * c->channel_mult[level];
        for (int r = 0; r <= c->num_res_blocks; r++, i++) {
            block_w *b = &u->out[i];
            AVQ_TRY(load_block(u, b, "output_blocks", i, ch + skips[--nskips], width, ds));
            ch = width;
            if (level && r == c->num_res_blocks) {
                b->conv_kind = CONV_UP;
                b->conv = get_conv(u, NAME("output_blocks.%d.%d.conv", i, b->has_st ? 2 : 1), ch, ch, 3);
                ds /= 2;
            }
        }
    }
    u->out_norm = get_norm(u, "out.0", ch);
    u->out_conv = get_conv(u, "out.2", c->out_channels, ch, 3);
    return AVQ_OK;
}

void avq_unet_destroy(avq_unet *u) {
    if (!u) return;
    each_st(u, free_st);
    free(u->in);
    free(u->out);
    avq_weight_set_free(&u->ws);
    free(u);
}

avq_status avq_unet_create(const avq_unet_config *cfg, avq_dtype precision, const avq_weight_source *src,
                           avq_unet **out) {
    *out = NULL;
    if (!cfg || !src) return avq_error(AVQ_ERR_ARG, "avq_unet_create: config and weight source are required");
    if (precision != AVQ_F32 && precision != AVQ_BF16)
        return avq_error(AVQ_ERR_DTYPE, "UNet precision must be f32 or bf16");
    AVQ_TRY(check_config(cfg));
    avq_unet *u = calloc(1, sizeof *u);
    if (!u) return avq_error(AVQ_ERR_MEMORY, "out of memory creating the UNet");
    u->cfg = *cfg;
    u->dt = precision;
    u->emb_dim = 4 * (int64_t)cfg->model_channels;
    u->multiple = (int64_t)1 << (cfg->num_levels - 1);
    u->n_in = 1 + cfg->num_levels * cfg->num_res_blocks + (cfg->num_levels - 1);
    u->n_out = cfg->num_levels * (cfg->num_res_blocks + 1);
    u->in = calloc((size_t)u->n_in, sizeof *u->in);
    u->out = calloc((size_t)u->n_out, sizeof *u->out);
    avq_status st = AVQ_OK;
    if (!u->in || !u->out) st = avq_error(AVQ_ERR_MEMORY, "out of memory creating the UNet");
    if (st == AVQ_OK) {
        avq_weight_set_init(&u->ws, src, "model.diffusion_model.");
        u->ws.store = precision; /* every UNet conv / linear runs in the model's precision */
        st = load_all(u);
        avq_status fin = avq_weight_set_finish(&u->ws, "UNet");
        if (st == AVQ_OK) st = fin;
    }
    if (st != AVQ_OK) {
        avq_unet_destroy(u);
        return st;
    }
    each_st(u, make_views);
    *out = u;
    return AVQ_OK;
}

int avq_unet_in_channels(const avq_unet *u) { return u->cfg.in_channels; }
int avq_unet_out_channels(const avq_unet *u) { return u->cfg.out_channels; }
int avq_unet_context_dim(const avq_unet *u) { return u->cfg.context_dim; }
avq_dtype avq_unet_precision(const avq_unet *u) { return u->dt; }
const avq_unet_config *avq_unet_get_config(const avq_unet *u) { return &u->cfg; }
int64_t avq_unet_num_params(const avq_unet *u) { return avq_weight_set_numel(&u->ws); }
int avq_unet_size_multiple(const avq_unet *u) { return (int)u->multiple; }

/* ---- forward ------------------------------------------------------------ */

typedef struct fwd_ctx {
    avq_unet *u;
    const avq_tensor *x, *t, *context;
    avq_tensor *eps;
} fwd_ctx;

/* A new NHWC activation [n, c, h, w] in the model dtype. */
static avq_status act(avq_plan *p, const avq_unet *u, avq_tensor *t, int64_t n, int64_t c, int64_t h, int64_t w) {
    return avq_plan_tensor(p, t, u->dt, AVQ_NHWC, 4, AVQ_DIMS(n, c, h, w));
}

/* One like x, with c channels. */
static avq_status act_like(avq_plan *p, const avq_unet *u, avq_tensor *t, const avq_tensor *x, int64_t c) {
    return act(p, u, t, x->dims[0], c, x->dims[2], x->dims[3]);
}

/* y = conv(x) into a new activation of the output size; x is kept. */
static avq_status conv(avq_plan *p, const avq_unet *u, const wb *cw, const avq_tensor *x, avq_tensor *y,
                       const avq_conv_params *prm) {
    int64_t oh, ow;
    AVQ_TRY(avq_conv2d_out_size(x, cw->w, prm, &oh, &ow));
    AVQ_TRY(act(p, u, y, x->dims[0], cw->w->dims[0], oh, ow));
    return avq_conv2d(p, cw->w, cw->b, x, y, prm);
}

/* *x = *y: a block's output replaces its input, released unless kept (a skip). */
static avq_status replace(avq_plan *p, avq_tensor *x, const avq_tensor *y, int keep) {
    if (!keep) avq_plan_release(p, x);
    *x = *y;
    return AVQ_OK;
}

/* [B] timesteps -> silu(emb) [B, 4mc]: the embedding is only ever used
 * through SiLU (each ResBlock's emb_layers.0), so time_embed.2 carries it. */
static avq_status time_embed(avq_plan *p, const avq_unet *u, const avq_tensor *t, avq_tensor *silu_emb) {
    const int64_t B = t->dims[0], mc = u->cfg.model_channels;
    avq_tensor sin_emb, h;
    AVQ_TRY(avq_plan_tensor(p, &sin_emb, u->dt, AVQ_PLAIN, 2, AVQ_DIMS(B, mc)));
    AVQ_TRY(avq_timestep_embedding(p, t, &sin_emb, (int)mc, MAX_PERIOD));
    AVQ_TRY(avq_plan_tensor(p, &h, u->dt, AVQ_PLAIN, 2, AVQ_DIMS(B, u->emb_dim)));
    AVQ_TRY(avq_linear(p, u->te0.w, u->te0.b, &sin_emb, &h, AVQ_ACT_SILU, NULL, NULL));
    avq_plan_release(p, &sin_emb);
    AVQ_TRY(avq_plan_tensor(p, silu_emb, u->dt, AVQ_PLAIN, 2, AVQ_DIMS(B, u->emb_dim)));
    AVQ_TRY(avq_linear(p, u->te2.w, u->te2.b, &h, silu_emb, AVQ_ACT_SILU, NULL, NULL));
    avq_plan_release(p, &h);
    return AVQ_OK;
}

/* ResBlock [B, Ci, H, W] -> [B, Co, H, W]:
 * x = skip(x) + out_conv(silu(gn(in_conv(silu(gn(x))) + emb_layers(silu_emb)))). */
static avq_status resblock(avq_plan *p, const avq_unet *u, const resblock_w *r, avq_tensor *x,
                           const avq_tensor *silu_emb, int keep) {
    const int64_t co = r->out_conv.w->dims[0];
    avq_conv_params k3 = avq_conv_simple(1, 1), k1 = avq_conv_simple(1, 0);
    avq_tensor g, e, h, sk = *x, y;
    AVQ_TRY(act_like(p, u, &g, x, x->dims[1]));
    AVQ_TRY(avq_group_norm(p, x, &g, r->in_norm.w, r->in_norm.b, GN_GROUPS, GN_EPS_RES, 1));
    AVQ_TRY(act(p, u, &e, x->dims[0], co, 1, 1)); /* [B, Co, 1, 1] */
    AVQ_TRY(avq_linear(p, r->emb.w, r->emb.b, silu_emb, &e, AVQ_ACT_NONE, NULL, NULL));
    /* oneDNN 3.2 has no optimized convolution for a per-(sample, channel)
     * binary post-op ([N, C, 1, 1] with N > 1 falls back to the reference
     * kernel, ~10x slower), so the embedding is added in place afterwards. */
    AVQ_TRY(conv(p, u, &r->in_conv, &g, &h, &k3));
    AVQ_TRY(avq_add(p, &h, &e, &h));
    avq_plan_release(p, &e);
    avq_plan_release(p, &g);
    AVQ_TRY(act_like(p, u, &g, &h, co));
    AVQ_TRY(avq_group_norm(p, &h, &g, r->out_norm.w, r->out_norm.b, GN_GROUPS, GN_EPS_RES, 1));
    avq_plan_release(p, &h);
    if (r->skip.w) AVQ_TRY(conv(p, u, &r->skip, x, &sk, &k1));
    k3.add = &sk;
    AVQ_TRY(conv(p, u, &r->out_conv, &g, &y, &k3));
    if (r->skip.w) avq_plan_release(p, &sk);
    avq_plan_release(p, &g);
    return replace(p, x, &y, keep);
}

/* Tokens [B, C, H, W]: x = x + to_out(attention(to_q(n), to_k(kv), to_v(kv))),
 * n = LayerNorm(x), kv = n (self-attention) or the context [B, L, D]. */
static avq_status attention(avq_plan *p, const avq_unet *u, const wb *norm, const attn_w *a, int heads, avq_tensor *x,
                            const avq_tensor *context) {
    const int64_t B = x->dims[0], C = x->dims[1];
    avq_tensor n, q, k, v, o, y;
    AVQ_TRY(act_like(p, u, &n, x, C));
    AVQ_TRY(avq_layer_norm(p, x, &n, norm->w, norm->b, LN_EPS));
    const avq_tensor *kv = context ? context : &n;
    const int64_t M = kv->layout == AVQ_NHWC ? kv->dims[2] * kv->dims[3] : kv->dims[1];
    AVQ_TRY(act_like(p, u, &q, x, C));
    AVQ_TRY(avq_linear(p, a->q, NULL, &n, &q, AVQ_ACT_NONE, NULL, NULL));
    AVQ_TRY(avq_plan_tensor(p, &k, u->dt, AVQ_PLAIN, 3, AVQ_DIMS(B, M, C)));
    AVQ_TRY(avq_linear(p, a->k, NULL, kv, &k, AVQ_ACT_NONE, NULL, NULL));
    AVQ_TRY(avq_plan_tensor(p, &v, u->dt, AVQ_PLAIN, 3, AVQ_DIMS(B, M, C)));
    AVQ_TRY(avq_linear(p, a->v, NULL, kv, &v, AVQ_ACT_NONE, NULL, NULL));
    AVQ_TRY(act_like(p, u, &o, x, C));
    AVQ_TRY(avq_attention(p, &q, &k, &v, &o, heads, 1.f / sqrtf((float)(C / heads)), 0));
    avq_plan_release(p, &v);
    avq_plan_release(p, &k);
    avq_plan_release(p, &q);
    AVQ_TRY(act_like(p, u, &y, x, C));
    AVQ_TRY(avq_linear(p, a->out.w, a->out.b, &o, &y, AVQ_ACT_NONE, NULL, x));
    avq_plan_release(p, &o);
    avq_plan_release(p, &n);
    return replace(p, x, &y, 0);
}

/* Tokens [B, C, H, W]: x = x + ff.net.2(value * gelu(gate)), value and gate
 * the halves of ff.net.0.proj(LayerNorm(x)) [B, 4C, H, W]. */
static avq_status geglu_ff(avq_plan *p, const avq_unet *u, const tblock_w *t, avq_tensor *x) {
    const int64_t C = x->dims[1];
    avq_tensor n, value, gated, y;
    AVQ_TRY(act_like(p, u, &n, x, C));
    AVQ_TRY(avq_layer_norm(p, x, &n, t->norm3.w, t->norm3.b, LN_EPS));
    AVQ_TRY(act_like(p, u, &value, x, 4 * C));
    AVQ_TRY(avq_linear(p, t->value.w, t->value.b, &n, &value, AVQ_ACT_NONE, NULL, NULL));
    AVQ_TRY(act_like(p, u, &gated, x, 4 * C));
    AVQ_TRY(avq_linear(p, t->gate.w, t->gate.b, &n, &gated, AVQ_ACT_GELU, &value, NULL));
    avq_plan_release(p, &value);
    avq_plan_release(p, &n);
    AVQ_TRY(act_like(p, u, &y, x, C));
    AVQ_TRY(avq_linear(p, t->ff2.w, t->ff2.b, &gated, &y, AVQ_ACT_NONE, NULL, x));
    avq_plan_release(p, &gated);
    return replace(p, x, &y, 0);
}

/* SpatialTransformer [B, C, H, W]: x = x + proj_out(blocks(proj_in(gn(x)))),
 * each BasicTransformerBlock self-attention, cross-attention, GEGLU FF. */
static avq_status spatial_transformer(avq_plan *p, const avq_unet *u, const st_w *s, avq_tensor *x,
                                      const avq_tensor *context) {
    avq_conv_params k1 = avq_conv_simple(1, 0);
    avq_tensor g, h, y;
    AVQ_TRY(act_like(p, u, &g, x, x->dims[1]));
    AVQ_TRY(avq_group_norm(p, x, &g, s->norm.w, s->norm.b, GN_GROUPS, GN_EPS_ST, 0));
    AVQ_TRY(conv(p, u, &s->proj_in, &g, &h, &k1));
    avq_plan_release(p, &g);
    for (int d = 0; d < s->depth; d++) {
        const tblock_w *t = &s->blocks[d];
        AVQ_TRY(attention(p, u, &t->norm1, &t->attn1, s->heads, &h, NULL));
        AVQ_TRY(attention(p, u, &t->norm2, &t->attn2, s->heads, &h, context));
        AVQ_TRY(geglu_ff(p, u, t, &h));
    }
    k1.add = x;
    AVQ_TRY(conv(p, u, &s->proj_out, &h, &y, &k1));
    avq_plan_release(p, &h);
    return replace(p, x, &y, 0);
}

/* [B, C, H, W] -> [B, C, H/2, W/2]: conv 3x3, stride 2, padding 1 (`op`). */
static avq_status downsample(avq_plan *p, const avq_unet *u, const wb *cw, avq_tensor *x, int keep) {
    avq_conv_params prm = avq_conv_simple(2, 1);
    avq_tensor y;
    AVQ_TRY(conv(p, u, cw, x, &y, &prm));
    return replace(p, x, &y, keep);
}

/* [B, C, H, W] -> [B, C, 2H, 2W]: nearest 2x, then conv 3x3 padding 1 (`conv`). */
static avq_status upsample(avq_plan *p, const avq_unet *u, const wb *cw, avq_tensor *x) {
    avq_conv_params prm = avq_conv_simple(1, 1);
    avq_tensor up, y;
    AVQ_TRY(act(p, u, &up, x->dims[0], x->dims[1], 2 * x->dims[2], 2 * x->dims[3]));
    AVQ_TRY(avq_upsample2x(p, x, &up));
    avq_plan_release(p, x);
    AVQ_TRY(conv(p, u, cw, &up, &y, &prm));
    avq_plan_release(p, &up);
    return replace(p, x, &y, 1); /* x was released above */
}

/* input_blocks.i: the downsampling conv, or ResBlock [+ transformer]. Its input is kept (a skip). */
static avq_status input_block(avq_plan *p, const avq_unet *u, const block_w *b, avq_tensor *x,
                              const avq_tensor *silu_emb, const avq_tensor *context) {
    if (b->conv_kind == CONV_DOWN) return downsample(p, u, &b->conv, x, 1);
    AVQ_TRY(resblock(p, u, &b->res, x, silu_emb, 1));
    return b->has_st ? spatial_transformer(p, u, &b->st, x, context) : AVQ_OK;
}

/* output_blocks.i: ResBlock over concat[x, skip] [+ transformer] [+ upsample]; consumes the skip. */
static avq_status output_block(avq_plan *p, const avq_unet *u, const block_w *b, avq_tensor *x, avq_tensor *skip,
                               const avq_tensor *silu_emb, const avq_tensor *context) {
    avq_tensor cat;
    AVQ_TRY(act_like(p, u, &cat, x, x->dims[1] + skip->dims[1]));
    AVQ_TRY(avq_concat_channels(p, x, skip, &cat));
    avq_plan_release(p, skip);
    AVQ_TRY(replace(p, x, &cat, 0));
    AVQ_TRY(resblock(p, u, &b->res, x, silu_emb, 0));
    if (b->has_st) AVQ_TRY(spatial_transformer(p, u, &b->st, x, context));
    return b->conv_kind == CONV_UP ? upsample(p, u, &b->conv, x) : AVQ_OK;
}

static avq_status forward(avq_plan *p, void *vctx) {
    const fwd_ctx *f = vctx;
    const avq_unet *u = f->u;
    const avq_unet_config *c = &u->cfg;
    const int64_t B = f->x->dims[0], H = f->x->dims[2], W = f->x->dims[3], L = f->context->dims[1];
    avq_conv_params k3 = avq_conv_simple(1, 1);
    avq_tensor skips[MAX_BLOCKS], silu_emb, ctx_m, h, y;
    int nskips = 0;

    /* context [B, L, D] in the model dtype (the k/v linears read it) */
    const avq_tensor *context = f->context;
    if (u->dt != AVQ_F32) {
        AVQ_TRY(avq_plan_tensor(p, &ctx_m, u->dt, AVQ_PLAIN, 3, AVQ_DIMS(B, L, c->context_dim)));
        AVQ_TRY(avq_reorder(p, f->context, &ctx_m));
        context = &ctx_m;
    }
    /* t [B] -> silu(emb) [B, 4mc] */
    AVQ_TRY(time_embed(p, u, f->t, &silu_emb));

    /* x [B, in, H, W] (plain f32 NCHW -> NHWC model dtype) -> input_blocks.0 -> [B, mc, H, W] */
    AVQ_TRY(act(p, u, &h, B, c->in_channels, H, W));
    AVQ_TRY(avq_reorder(p, f->x, &h));
    AVQ_TRY(conv(p, u, &u->in[0].conv, &h, &y, &k3));
    AVQ_TRY(replace(p, &h, &y, 0));
    skips[nskips++] = h;

    /* input_blocks -> [B, mc * mult, H / ds, W / ds], down to ds = 2^(levels - 1); each output is a skip */
    for (int i = 1; i < u->n_in; i++) {
        AVQ_TRY(input_block(p, u, &u->in[i], &h, &silu_emb, context));
        skips[nskips++] = h;
    }

    /* middle_block: ResBlock, transformer, ResBlock at the lowest resolution (its input is the last skip) */
    AVQ_TRY(resblock(p, u, &u->mid0, &h, &silu_emb, 1));
    AVQ_TRY(spatial_transformer(p, u, &u->mid1, &h, context));
    AVQ_TRY(resblock(p, u, &u->mid2, &h, &silu_emb, 0));

    /* output_blocks: h = block(concat[h, skip]), back up to [B, mc, H, W] */
    for (int i = 0; i < u->n_out; i++)
        AVQ_TRY(output_block(p, u, &u->out[i], &h, &skips[--nskips], &silu_emb, context));
    avq_plan_release(p, &silu_emb);
    if (context == &ctx_m) avq_plan_release(p, &ctx_m);

    /* out: GN + SiLU, conv 3x3 -> eps [B, out, H, W] (NHWC model dtype -> plain f32 NCHW) */
    AVQ_TRY(act_like(p, u, &y, &h, h.dims[1]));
    AVQ_TRY(avq_group_norm(p, &h, &y, u->out_norm.w, u->out_norm.b, GN_GROUPS, GN_EPS_RES, 1));
    AVQ_TRY(replace(p, &h, &y, 0));
    AVQ_TRY(conv(p, u, &u->out_conv, &h, &y, &k3));
    AVQ_TRY(replace(p, &h, &y, 0));
    AVQ_TRY(avq_reorder(p, &h, f->eps));
    avq_plan_release(p, &h);
    return AVQ_OK;
}

static int is_input(const avq_tensor *t, int ndim) {
    return t && t->ndim == ndim && t->dtype == AVQ_F32 && t->layout == AVQ_PLAIN && t->data && t->arena_off < 0;
}

avq_status avq_unet_check_latent(const avq_unet *u, const int64_t dims[4]) {
    const avq_unet_config *c = &u->cfg;
    if (dims[1] != c->in_channels) {
        if (c->in_channels == 9)
            return avq_error(AVQ_ERR_SHAPE,
                             "x has %lld channels, expected 9: an inpainting UNet takes [x_t (4), mask "
                             "(1), masked-image latent (4)]",
                             (long long)dims[1]);
        return avq_error(AVQ_ERR_SHAPE, "x has %lld channels, expected %d: this is a %d-channel (txt2img) UNet",
                         (long long)dims[1], c->in_channels, c->in_channels);
    }
    if (dims[0] < 1 || dims[2] < 1 || dims[3] < 1 || dims[2] % u->multiple || dims[3] % u->multiple)
        return avq_error(AVQ_ERR_SHAPE,
                         "latent height and width must be positive multiples of %lld (image sizes "
                         "multiples of %lld), got %lldx%lld (batch %lld)",
                         (long long)u->multiple, (long long)(8 * u->multiple), (long long)dims[2], (long long)dims[3],
                         (long long)dims[0]);
    return AVQ_OK;
}

static avq_status check_inputs(const avq_unet *u, const avq_tensor *x, const avq_tensor *t, const avq_tensor *ctx,
                               const avq_tensor *eps) {
    const avq_unet_config *c = &u->cfg;
    char b1[96], b2[96];
    if (!is_input(x, 4) || !is_input(t, 1) || !is_input(ctx, 3) || !is_input(eps, 4))
        return avq_error(AVQ_ERR_ARG, "UNet inputs must be plain f32 tensors with data: x [B, C, h, w], t [B], "
                                      "context [B, L, D], eps [B, C, h, w]");
    AVQ_TRY(avq_unet_check_latent(u, x->dims));
    int64_t B = x->dims[0], H = x->dims[2], W = x->dims[3];
    if (t->dims[0] != B)
        return avq_error(AVQ_ERR_SHAPE, "UNet timesteps %s must have one entry per batch element (%lld)",
                         avq_tensor_str(t, b1, sizeof b1), (long long)B);
    if (ctx->dims[0] != B || ctx->dims[1] < 1 || ctx->dims[2] != c->context_dim)
        return avq_error(AVQ_ERR_SHAPE, "UNet context %s must be [%lld, L, %d]", avq_tensor_str(ctx, b1, sizeof b1),
                         (long long)B, c->context_dim);
    if (eps->dims[0] != B || eps->dims[1] != c->out_channels || eps->dims[2] != H || eps->dims[3] != W)
        return avq_error(AVQ_ERR_SHAPE, "UNet output %s must be [%lld, %d, %lld, %lld] for input %s",
                         avq_tensor_str(eps, b1, sizeof b1), (long long)B, c->out_channels, (long long)H, (long long)W,
                         avq_tensor_str(x, b2, sizeof b2));
    return AVQ_OK;
}

avq_status avq_unet_plan_create(const avq_unet *u, int64_t batch, int64_t height, int64_t width, int64_t context_length,
                                avq_unet_plan **out) {
    *out = NULL;
    if (!u) return avq_error(AVQ_ERR_ARG, "avq_unet_plan_create: unet is required");
    if (batch < 1 || height < 1 || width < 1 || context_length < 1)
        return avq_error(AVQ_ERR_SHAPE,
                         "UNet plan: batch, height, width and context length must be >= 1, got %lld, "
                         "%lld, %lld, %lld",
                         (long long)batch, (long long)height, (long long)width, (long long)context_length);
    if (height % u->multiple || width % u->multiple)
        return avq_error(AVQ_ERR_SHAPE,
                         "UNet latent height and width must be multiples of %lld (image size a multiple "
                         "of %lld), got %lldx%lld",
                         (long long)u->multiple, (long long)(8 * u->multiple), (long long)height, (long long)width);
    avq_unet_plan *up = calloc(1, sizeof *up);
    if (!up) return avq_error(AVQ_ERR_MEMORY, "out of memory creating a UNet plan");
    avq_status st = avq_plan_create(&up->plan);
    if (st != AVQ_OK) {
        free(up);
        return st;
    }
    up->model = u;
    up->batch = batch;
    up->height = height;
    up->width = width;
    up->context_length = context_length;
    *out = up;
    return AVQ_OK;
}

void avq_unet_plan_destroy(avq_unet_plan *p) {
    if (!p) return;
    avq_plan_destroy(p->plan);
    free(p);
}

const avq_plan *avq_unet_plan_core(const avq_unet_plan *p) { return p->plan; }

size_t avq_unet_plan_bytes(const avq_unet_plan *p) {
    return avq_plan_arena_bytes(p->plan) + avq_plan_scratch_bytes(p->plan);
}

avq_status avq_unet_run(avq_unet *u, avq_unet_plan *plan, const avq_tensor *x, const avq_tensor *t,
                        const avq_tensor *context, avq_tensor *eps_out) {
    if (!u || !plan) return avq_error(AVQ_ERR_ARG, "avq_unet_run: unet and plan are required");
    if (plan->model != u)
        return avq_error(AVQ_ERR_ARG, "this plan was made for another model; use one plan per UNet and input shape");
    AVQ_TRY(check_inputs(u, x, t, context, eps_out));
    const int64_t b = x->dims[0], h = x->dims[2], w = x->dims[3], l = context->dims[1];
    if (plan->batch != b || plan->height != h || plan->width != w || plan->context_length != l)
        return avq_error(AVQ_ERR_SHAPE,
                         "this UNet plan was made for batch %lld, latent %lldx%lld, context length "
                         "%lld; got batch %lld, latent %lldx%lld, context length %lld (use one plan per shape)",
                         (long long)plan->batch, (long long)plan->height, (long long)plan->width,
                         (long long)plan->context_length, (long long)b, (long long)h, (long long)w, (long long)l);
    fwd_ctx f = {u, x, t, context, eps_out};
    return avq_plan_run(plan->plan, forward, &f);
}
