/* The SD v1 UNet (SPEC §2): timestep MLP, ResBlocks with the embedding
 * injected, spatial transformers, down/up sampling, skip concatenations.
 *
 * Blocks are functions named after the checkpoint modules. Every activation
 * is an NHWC arena tensor of the model dtype, so a [B, C, h, w] activation is
 * also the [B, h*w, C] token matrix the transformer reads. Fusions: GroupNorm
 * carries the SiLU; time_embed.2 carries the SiLU every ResBlock applies to
 * the embedding; a ResBlock's second conv adds the skip (identity or the 1x1
 * skip_connection's output); to_out, ff.net.2 and proj_out add their block's
 * residual; GEGLU is two linears on the row halves of ff.net.0.proj, the gate
 * one (GELU) multiplying by the value. */
#include "unet.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "ops/ops.h"

#define GN_GROUPS 32
#define GN_EPS_RES 1e-5f /* ResBlocks and out.0 */
#define GN_EPS_ST 1e-6f  /* SpatialTransformer.norm */
#define LN_EPS 1e-5f
#define MAX_PERIOD 10000.f
#define MAX_RES_BLOCKS 32
#define MAX_BLOCKS (1 + AVQ_UNET_MAX_LEVELS * (MAX_RES_BLOCKS + 1)) /* input blocks (= skips) at most */

/* ---- weights ------------------------------------------------------------ */

typedef struct resblock_w {
    int64_t cin, cout;
    avq_weight *in_norm_w, *in_norm_b, *in_conv_w, *in_conv_b; /* in_layers.0 / .2 */
    avq_weight *emb_w, *emb_b;                                 /* emb_layers.1 */
    avq_weight *out_norm_w, *out_norm_b, *out_conv_w, *out_conv_b; /* out_layers.0 / .3 */
    avq_weight *skip_w, *skip_b;                               /* skip_connection; NULL if cin == cout */
} resblock_w;

typedef struct attn_w {
    avq_weight *q, *k, *v, *out_w, *out_b; /* to_q, to_k, to_v (no bias), to_out.0 */
} attn_w;

typedef struct tblock_w {
    avq_weight *norm1_w, *norm1_b, *norm2_w, *norm2_b, *norm3_w, *norm3_b;
    attn_w attn1, attn2;
    avq_weight *ff0_w, *ff0_b; /* ff.net.0.proj [8C, C], borrowed from the set */
    /* Row views of ff.net.0.proj: value = rows [0, 4C), gate = rows [4C, 8C).
     * Owned: each holds its own packed copy. Valid once `views` is set. */
    avq_weight value_w, value_b, gate_w, gate_b;
    int views;
    avq_weight *ff2_w, *ff2_b; /* ff.net.2 [C, 4C] */
} tblock_w;

typedef struct st_w {
    int64_t c;
    int heads;
    avq_weight *norm_w, *norm_b, *proj_in_w, *proj_in_b, *proj_out_w, *proj_out_b;
    int depth;
    tblock_w *blocks; /* owned, `depth` entries */
} st_w;

enum { CONV_NONE = 0, CONV_IN, CONV_DOWN, CONV_UP };

/* One input_blocks.i / output_blocks.i: [resblock] [spatial transformer] [conv]. */
typedef struct block_w {
    int has_res, has_st, conv_kind;
    resblock_w res;
    st_w st;
    avq_weight *conv_w, *conv_b; /* input_blocks.0.0, ...0.op or ...N.conv */
    int64_t cout;
} block_w;

struct avq_unet {
    avq_unet_config cfg;
    avq_dtype dt;
    int64_t emb_dim; /* 4 * model_channels */
    avq_weight_set ws;
    avq_weight *te0_w, *te0_b, *te2_w, *te2_b; /* time_embed.0 / .2 */
    int n_in, n_out;
    block_w *in;  /* owned, n_in: in[0] is the input conv */
    block_w *out; /* owned, n_out */
    resblock_w mid0, mid2;
    st_w mid1;
    avq_weight *out_norm_w, *out_norm_b, *out_conv_w, *out_conv_b; /* out.0 / out.2 */
    int64_t multiple; /* latent sizes must be multiples of 2^(levels - 1) */
    int oom;          /* a weight lookup ran out of memory */
};

/* A plan knows its model and shape: one built for another shape would replay
 * primitives over the wrong buffers. */
struct avq_unet_plan {
    const avq_unet *model; /* borrowed: the plan is valid for this model only */
    int64_t batch, height, width, context_length;
    avq_plan *plan; /* owned */
};

#define W1(n) AVQ_DIMS(n)
/* Every lookup goes through GET so that an allocation failure is noticed. */
#define GET(ndim, dims, ...) got(u, avq_weight_get(&u->ws, ndim, dims, __VA_ARGS__))

static avq_weight *got(avq_unet *u, avq_weight *w) {
    if (!w) u->oom = 1;
    return w;
}

static void load_resblock(avq_unet *u, resblock_w *r, const char *name, int64_t cin, int64_t cout,
                          int64_t emb) {
    r->cin = cin;
    r->cout = cout;
    r->in_norm_w = GET(1, W1(cin), "%s.in_layers.0.weight", name);
    r->in_norm_b = GET(1, W1(cin), "%s.in_layers.0.bias", name);
    r->in_conv_w = GET(4, AVQ_DIMS(cout, cin, 3, 3), "%s.in_layers.2.weight", name);
    r->in_conv_b = GET(1, W1(cout), "%s.in_layers.2.bias", name);
    r->emb_w = GET(2, AVQ_DIMS(cout, emb), "%s.emb_layers.1.weight", name);
    r->emb_b = GET(1, W1(cout), "%s.emb_layers.1.bias", name);
    r->out_norm_w = GET(1, W1(cout), "%s.out_layers.0.weight", name);
    r->out_norm_b = GET(1, W1(cout), "%s.out_layers.0.bias", name);
    r->out_conv_w = GET(4, AVQ_DIMS(cout, cout, 3, 3), "%s.out_layers.3.weight", name);
    r->out_conv_b = GET(1, W1(cout), "%s.out_layers.3.bias", name);
    r->skip_w = r->skip_b = NULL;
    if (cin != cout) {
        r->skip_w = GET(4, AVQ_DIMS(cout, cin, 1, 1), "%s.skip_connection.weight", name);
        r->skip_b = GET(1, W1(cout), "%s.skip_connection.bias", name);
    }
}

static void load_attn(avq_unet *u, attn_w *a, const char *blk, const char *which, int64_t c, int64_t kv) {
    a->q = GET(2, AVQ_DIMS(c, c), "%s.%s.to_q.weight", blk, which);
    a->k = GET(2, AVQ_DIMS(c, kv), "%s.%s.to_k.weight", blk, which);
    a->v = GET(2, AVQ_DIMS(c, kv), "%s.%s.to_v.weight", blk, which);
    a->out_w = GET(2, AVQ_DIMS(c, c), "%s.%s.to_out.0.weight", blk, which);
    a->out_b = GET(1, W1(c), "%s.%s.to_out.0.bias", blk, which);
}

static avq_status load_st(avq_unet *u, st_w *s, const char *name, int64_t c, int heads, int depth,
                          int64_t ctx_dim) {
    s->c = c;
    s->heads = heads;
    s->depth = depth;
    s->blocks = calloc((size_t)depth, sizeof *s->blocks);
    if (!s->blocks) return avq_error(AVQ_ERR_MEMORY, "out of memory creating the UNet");
    s->norm_w = GET(1, W1(c), "%s.norm.weight", name);
    s->norm_b = GET(1, W1(c), "%s.norm.bias", name);
    s->proj_in_w = GET(4, AVQ_DIMS(c, c, 1, 1), "%s.proj_in.weight", name);
    s->proj_in_b = GET(1, W1(c), "%s.proj_in.bias", name);
    for (int d = 0; d < depth; d++) {
        tblock_w *t = &s->blocks[d];
        char blk[160];
        snprintf(blk, sizeof blk, "%s.transformer_blocks.%d", name, d);
        load_attn(u, &t->attn1, blk, "attn1", c, c);
        t->ff0_w = GET(2, AVQ_DIMS(8 * c, c), "%s.ff.net.0.proj.weight", blk);
        t->ff0_b = GET(1, W1(8 * c), "%s.ff.net.0.proj.bias", blk);
        t->ff2_w = GET(2, AVQ_DIMS(c, 4 * c), "%s.ff.net.2.weight", blk);
        t->ff2_b = GET(1, W1(c), "%s.ff.net.2.bias", blk);
        load_attn(u, &t->attn2, blk, "attn2", c, ctx_dim);
        t->norm1_w = GET(1, W1(c), "%s.norm1.weight", blk);
        t->norm1_b = GET(1, W1(c), "%s.norm1.bias", blk);
        t->norm2_w = GET(1, W1(c), "%s.norm2.weight", blk);
        t->norm2_b = GET(1, W1(c), "%s.norm2.bias", blk);
        t->norm3_w = GET(1, W1(c), "%s.norm3.weight", blk);
        t->norm3_b = GET(1, W1(c), "%s.norm3.bias", blk);
    }
    s->proj_out_w = GET(4, AVQ_DIMS(c, c, 1, 1), "%s.proj_out.weight", name);
    s->proj_out_b = GET(1, W1(c), "%s.proj_out.bias", name);
    return AVQ_OK;
}

/* After every lookup succeeded: the GEGLU halves as views of ff.net.0.proj. */
static void make_views(st_w *s) {
    for (int d = 0; d < s->depth; d++) {
        tblock_w *t = &s->blocks[d];
        int64_t f = 4 * s->c;
        t->value_w = avq_weight_rows(t->ff0_w, 0, f);
        t->value_b = avq_weight_rows(t->ff0_b, 0, f);
        t->gate_w = avq_weight_rows(t->ff0_w, f, f);
        t->gate_b = avq_weight_rows(t->ff0_b, f, f);
        t->views = 1;
    }
}

static void free_st(st_w *s) {
    if (!s->blocks) return;
    for (int d = 0; d < s->depth; d++) {
        tblock_w *t = &s->blocks[d];
        if (!t->views) continue;
        avq_weight_release(&t->value_w);
        avq_weight_release(&t->value_b);
        avq_weight_release(&t->gate_w);
        avq_weight_release(&t->gate_b);
    }
    free(s->blocks);
    s->blocks = NULL;
}

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
        return avq_error(AVQ_ERR_ARG, "UNet config: a width of %lld channels does not split into heads (num_heads %d, "
                         "num_head_channels %d)", (long long)width, c->num_heads, c->num_head_channels);
    *heads = (int)h;
    return AVQ_OK;
}

static avq_status check_config(const avq_unet_config *c) {
    if (c->in_channels < 1) return avq_error(AVQ_ERR_ARG, "UNet config: in_channels must be >= 1, got %d", c->in_channels);
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
    if (c->context_dim < 1) return avq_error(AVQ_ERR_ARG, "UNet config: context_dim must be >= 1, got %d", c->context_dim);
    if (!(c->num_heads > 0 || (c->num_heads == -1 && c->num_head_channels > 0)) ||
        !(c->num_head_channels > 0 || c->num_head_channels == -1))
        return avq_error(AVQ_ERR_ARG, "UNet config: need num_heads > 0 (num_head_channels -1) or num_head_channels > 0, "
                         "got %d and %d", c->num_heads, c->num_head_channels);
    for (int l = 0; l < c->num_levels; l++) {
        int64_t w = (int64_t)c->model_channels * c->channel_mult[l];
        int heads;
        if (c->channel_mult[l] < 1 || w % GN_GROUPS)
            return avq_error(AVQ_ERR_ARG, "UNet config: channel_mult[%d] = %d gives a width of %lld, not a positive "
                             "multiple of %d", l, c->channel_mult[l], (long long)w, GN_GROUPS);
        AVQ_TRY(heads_for(c, w, &heads));
    }
    return AVQ_OK;
}

/* ---- creation ----------------------------------------------------------- */

static avq_status load_all(avq_unet *u) {
    const avq_unet_config *c = &u->cfg;
    int64_t mc = c->model_channels, emb = u->emb_dim, ctx = c->context_dim;
    char name[64];
    int heads = 0;

    u->te0_w = GET(2, AVQ_DIMS(emb, mc), "time_embed.0.weight");
    u->te0_b = GET(1, W1(emb), "time_embed.0.bias");
    u->te2_w = GET(2, AVQ_DIMS(emb, emb), "time_embed.2.weight");
    u->te2_b = GET(1, W1(emb), "time_embed.2.bias");

    /* Input side: record the skip widths as the original does. */
    int64_t skips[MAX_BLOCKS];
    int nskips = 0;
    block_w *b = &u->in[0];
    b->conv_kind = CONV_IN;
    b->cout = mc;
    b->conv_w = GET(4, AVQ_DIMS(mc, c->in_channels, 3, 3), "input_blocks.0.0.weight");
    b->conv_b = GET(1, W1(mc), "input_blocks.0.0.bias");
    skips[nskips++] = mc;
    int64_t ch = mc, ds = 1;
    int i = 1;
    for (int level = 0; level < c->num_levels; level++) {
        int64_t width = mc * c->channel_mult[level];
        for (int r = 0; r < c->num_res_blocks; r++, i++) {
            b = &u->in[i];
            snprintf(name, sizeof name, "input_blocks.%d.0", i);
            b->has_res = 1;
            load_resblock(u, &b->res, name, ch, width, emb);
            ch = width;
            if (attention_at(c, ds)) {
                snprintf(name, sizeof name, "input_blocks.%d.1", i);
                AVQ_TRY(heads_for(c, ch, &heads));
                b->has_st = 1;
                AVQ_TRY(load_st(u, &b->st, name, ch, heads, c->transformer_depth, ctx));
            }
            b->cout = ch;
            skips[nskips++] = ch;
        }
        if (level != c->num_levels - 1) {
            b = &u->in[i];
            b->conv_kind = CONV_DOWN;
            b->cout = ch;
            b->conv_w = GET(4, AVQ_DIMS(ch, ch, 3, 3), "input_blocks.%d.0.op.weight", i);
            b->conv_b = GET(1, W1(ch), "input_blocks.%d.0.op.bias", i);
            skips[nskips++] = ch;
            ds *= 2;
            i++;
        }
    }

    load_resblock(u, &u->mid0, "middle_block.0", ch, ch, emb);
    AVQ_TRY(heads_for(c, ch, &heads));
    AVQ_TRY(load_st(u, &u->mid1, "middle_block.1", ch, heads, c->transformer_depth, ctx));
    load_resblock(u, &u->mid2, "middle_block.2", ch, ch, emb);

    i = 0;
    for (int level = c->num_levels - 1; level >= 0; level--) {
        int64_t width = mc * c->channel_mult[level];
        for (int r = 0; r <= c->num_res_blocks; r++, i++) {
            b = &u->out[i];
            int sub = 1;
            snprintf(name, sizeof name, "output_blocks.%d.0", i);
            b->has_res = 1;
            load_resblock(u, &b->res, name, ch + skips[--nskips], width, emb);
            ch = width;
            if (attention_at(c, ds)) {
                snprintf(name, sizeof name, "output_blocks.%d.1", i);
                AVQ_TRY(heads_for(c, ch, &heads));
                b->has_st = 1;
                AVQ_TRY(load_st(u, &b->st, name, ch, heads, c->transformer_depth, ctx));
                sub = 2;
            }
            if (level && r == c->num_res_blocks) {
                b->conv_kind = CONV_UP;
                b->conv_w = GET(4, AVQ_DIMS(ch, ch, 3, 3), "output_blocks.%d.%d.conv.weight", i, sub);
                b->conv_b = GET(1, W1(ch), "output_blocks.%d.%d.conv.bias", i, sub);
                ds /= 2;
            }
            b->cout = ch;
        }
    }
    u->out_norm_w = GET(1, W1(ch), "out.0.weight");
    u->out_norm_b = GET(1, W1(ch), "out.0.bias");
    u->out_conv_w = GET(4, AVQ_DIMS(c->out_channels, ch, 3, 3), "out.2.weight");
    u->out_conv_b = GET(1, W1(c->out_channels), "out.2.bias");
    return u->oom ? avq_error(AVQ_ERR_MEMORY, "out of memory loading the UNet weights") : AVQ_OK;
}

void avq_unet_destroy(avq_unet *u) {
    if (!u) return;
    for (int i = 0; u->in && i < u->n_in; i++) free_st(&u->in[i].st);
    for (int i = 0; u->out && i < u->n_out; i++) free_st(&u->out[i].st);
    free_st(&u->mid1);
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
    for (int i = 0; i < u->n_in; i++)
        if (u->in[i].has_st) make_views(&u->in[i].st);
    for (int i = 0; i < u->n_out; i++)
        if (u->out[i].has_st) make_views(&u->out[i].st);
    make_views(&u->mid1);
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

static avq_status act4(avq_plan *p, avq_tensor *t, avq_dtype dt, int64_t n, int64_t c, int64_t h, int64_t w) {
    return avq_plan_tensor(p, t, dt, AVQ_NHWC, 4, AVQ_DIMS(n, c, h, w));
}

/* silu(emb) [B, 4mc]: the embedding is only ever used through SiLU (each
 * ResBlock's emb_layers.0), so time_embed.2 carries it as its activation. */
static avq_status time_embed(avq_plan *p, avq_unet *u, const avq_tensor *t, avq_tensor *silu_emb) {
    int64_t B = t->dims[0], mc = u->cfg.model_channels;
    avq_tensor sin_emb, h;
    AVQ_TRY(avq_plan_tensor(p, &sin_emb, u->dt, AVQ_PLAIN, 2, AVQ_DIMS(B, mc)));         /* [B, mc] */
    AVQ_TRY(avq_timestep_embedding(p, t, &sin_emb, (int)mc, MAX_PERIOD));
    AVQ_TRY(avq_plan_tensor(p, &h, u->dt, AVQ_PLAIN, 2, AVQ_DIMS(B, u->emb_dim)));       /* [B, 4mc] */
    AVQ_TRY(avq_linear(p, u->te0_w, u->te0_b, &sin_emb, &h, AVQ_ACT_SILU, NULL, NULL));
    avq_plan_release(p, &sin_emb);
    AVQ_TRY(avq_plan_tensor(p, silu_emb, u->dt, AVQ_PLAIN, 2, AVQ_DIMS(B, u->emb_dim))); /* [B, 4mc] */
    AVQ_TRY(avq_linear(p, u->te2_w, u->te2_b, &h, silu_emb, AVQ_ACT_SILU, NULL, NULL));
    avq_plan_release(p, &h);
    return AVQ_OK;
}

/* y = skip(x) + conv(silu(gn(conv(silu(gn(x))) + emb_proj))); x is kept. */
static avq_status resblock(avq_plan *p, avq_unet *u, resblock_w *r, const avq_tensor *x, const avq_tensor *silu_emb,
                           avq_tensor *y) {
    int64_t B = x->dims[0], H = x->dims[2], W = x->dims[3];
    avq_conv_params prm = avq_conv_simple(1, 1);
    avq_tensor g, e, h;
    AVQ_TRY(act4(p, &g, u->dt, B, r->cin, H, W));
    AVQ_TRY(avq_group_norm(p, x, &g, r->in_norm_w, r->in_norm_b, GN_GROUPS, GN_EPS_RES, 1));
    AVQ_TRY(act4(p, &e, u->dt, B, r->cout, 1, 1)); /* [B, Co, 1, 1] */
    AVQ_TRY(avq_linear(p, r->emb_w, r->emb_b, silu_emb, &e, AVQ_ACT_NONE, NULL, NULL));
    AVQ_TRY(act4(p, &h, u->dt, B, r->cout, H, W));
    /* oneDNN 3.2 has no optimized convolution for a per-(sample, channel)
     * binary post-op ([N, C, 1, 1] with N > 1 falls back to the reference
     * kernel, ~10x slower), so the embedding is added in place afterwards. */
    AVQ_TRY(avq_conv2d(p, r->in_conv_w, r->in_conv_b, &g, &h, &prm));
    AVQ_TRY(avq_add(p, &h, &e, &h));
    avq_plan_release(p, &e);
    avq_plan_release(p, &g);
    AVQ_TRY(act4(p, &g, u->dt, B, r->cout, H, W));
    AVQ_TRY(avq_group_norm(p, &h, &g, r->out_norm_w, r->out_norm_b, GN_GROUPS, GN_EPS_RES, 1));
    avq_plan_release(p, &h);
    avq_tensor sk;
    const avq_tensor *skip = x;
    if (r->skip_w) {
        avq_conv_params one = avq_conv_simple(1, 0);
        AVQ_TRY(act4(p, &sk, u->dt, B, r->cout, H, W));
        AVQ_TRY(avq_conv2d(p, r->skip_w, r->skip_b, x, &sk, &one));
        skip = &sk;
    }
    AVQ_TRY(act4(p, y, u->dt, B, r->cout, H, W));
    prm.add = skip;
    AVQ_TRY(avq_conv2d(p, r->out_conv_w, r->out_conv_b, &g, y, &prm));
    if (r->skip_w) avq_plan_release(p, &sk);
    avq_plan_release(p, &g);
    return AVQ_OK;
}

/* y = x + to_out(attention(to_q(n), to_k(kv), to_v(kv))); kv = n for self-attention. */
static avq_status attention(avq_plan *p, avq_unet *u, const attn_w *a, int heads, const avq_tensor *n,
                            const avq_tensor *kv, const avq_tensor *x, avq_tensor *y) {
    int64_t B = x->dims[0], C = x->dims[1], H = x->dims[2], W = x->dims[3];
    int64_t M = kv->layout == AVQ_NHWC ? kv->dims[2] * kv->dims[3] : kv->dims[1];
    avq_tensor q, k, v, o;
    AVQ_TRY(act4(p, &q, u->dt, B, C, H, W));
    AVQ_TRY(avq_linear(p, a->q, NULL, n, &q, AVQ_ACT_NONE, NULL, NULL));
    AVQ_TRY(avq_plan_tensor(p, &k, u->dt, AVQ_PLAIN, 3, AVQ_DIMS(B, M, C))); /* [B, M, C] */
    AVQ_TRY(avq_linear(p, a->k, NULL, kv, &k, AVQ_ACT_NONE, NULL, NULL));
    AVQ_TRY(avq_plan_tensor(p, &v, u->dt, AVQ_PLAIN, 3, AVQ_DIMS(B, M, C)));
    AVQ_TRY(avq_linear(p, a->v, NULL, kv, &v, AVQ_ACT_NONE, NULL, NULL));
    AVQ_TRY(act4(p, &o, u->dt, B, C, H, W));
    AVQ_TRY(avq_attention(p, &q, &k, &v, &o, heads, 1.f / sqrtf((float)(C / heads)), 0));
    avq_plan_release(p, &v);
    avq_plan_release(p, &k);
    avq_plan_release(p, &q);
    AVQ_TRY(act4(p, y, u->dt, B, C, H, W));
    AVQ_TRY(avq_linear(p, a->out_w, a->out_b, &o, y, AVQ_ACT_NONE, NULL, x));
    avq_plan_release(p, &o);
    return AVQ_OK;
}

/* x [B, C, H, W] tokens -> x + attn1 -> + attn2(context) -> + GEGLU FF. */
static avq_status basic_transformer_block(avq_plan *p, avq_unet *u, tblock_w *t, int heads, const avq_tensor *x,
                                          const avq_tensor *context, avq_tensor *y) {
    int64_t B = x->dims[0], C = x->dims[1], H = x->dims[2], W = x->dims[3];
    avq_tensor n, h1, h2, value, gated;
    AVQ_TRY(act4(p, &n, u->dt, B, C, H, W));
    AVQ_TRY(avq_layer_norm(p, x, &n, t->norm1_w, t->norm1_b, LN_EPS));
    AVQ_TRY(attention(p, u, &t->attn1, heads, &n, &n, x, &h1));
    avq_plan_release(p, &n);

    AVQ_TRY(act4(p, &n, u->dt, B, C, H, W));
    AVQ_TRY(avq_layer_norm(p, &h1, &n, t->norm2_w, t->norm2_b, LN_EPS));
    AVQ_TRY(attention(p, u, &t->attn2, heads, &n, context, &h1, &h2));
    avq_plan_release(p, &n);
    avq_plan_release(p, &h1);

    AVQ_TRY(act4(p, &n, u->dt, B, C, H, W));
    AVQ_TRY(avq_layer_norm(p, &h2, &n, t->norm3_w, t->norm3_b, LN_EPS));
    AVQ_TRY(act4(p, &value, u->dt, B, 4 * C, H, W));
    AVQ_TRY(avq_linear(p, &t->value_w, &t->value_b, &n, &value, AVQ_ACT_NONE, NULL, NULL));
    AVQ_TRY(act4(p, &gated, u->dt, B, 4 * C, H, W));
    AVQ_TRY(avq_linear(p, &t->gate_w, &t->gate_b, &n, &gated, AVQ_ACT_GELU, &value, NULL));
    avq_plan_release(p, &value);
    avq_plan_release(p, &n);
    AVQ_TRY(act4(p, y, u->dt, B, C, H, W));
    AVQ_TRY(avq_linear(p, t->ff2_w, t->ff2_b, &gated, y, AVQ_ACT_NONE, NULL, &h2));
    avq_plan_release(p, &gated);
    avq_plan_release(p, &h2);
    return AVQ_OK;
}

/* y = x + proj_out(blocks(proj_in(gn(x)))); x is kept. */
static avq_status spatial_transformer(avq_plan *p, avq_unet *u, st_w *s, const avq_tensor *x,
                                      const avq_tensor *context, avq_tensor *y) {
    int64_t B = x->dims[0], C = s->c, H = x->dims[2], W = x->dims[3];
    avq_conv_params one = avq_conv_simple(1, 0);
    avq_tensor g, h, nh;
    AVQ_TRY(act4(p, &g, u->dt, B, C, H, W));
    AVQ_TRY(avq_group_norm(p, x, &g, s->norm_w, s->norm_b, GN_GROUPS, GN_EPS_ST, 0));
    AVQ_TRY(act4(p, &h, u->dt, B, C, H, W));
    AVQ_TRY(avq_conv2d(p, s->proj_in_w, s->proj_in_b, &g, &h, &one));
    avq_plan_release(p, &g);
    for (int d = 0; d < s->depth; d++) {
        AVQ_TRY(basic_transformer_block(p, u, &s->blocks[d], s->heads, &h, context, &nh));
        avq_plan_release(p, &h);
        h = nh;
    }
    AVQ_TRY(act4(p, y, u->dt, B, C, H, W));
    one.add = x;
    AVQ_TRY(avq_conv2d(p, s->proj_out_w, s->proj_out_b, &h, y, &one));
    avq_plan_release(p, &h);
    return AVQ_OK;
}

/* Downsample: conv 3x3, stride 2, symmetric padding 1 (`op`). */
static avq_status downsample(avq_plan *p, avq_unet *u, block_w *b, const avq_tensor *x, avq_tensor *y) {
    avq_conv_params prm = avq_conv_simple(2, 1);
    int64_t oh, ow;
    AVQ_TRY(avq_conv2d_out_size(x, b->conv_w, &prm, &oh, &ow));
    AVQ_TRY(act4(p, y, u->dt, x->dims[0], b->cout, oh, ow));
    return avq_conv2d(p, b->conv_w, b->conv_b, x, y, &prm);
}

/* Upsample: nearest 2x, then conv 3x3 padding 1 (`conv`). Consumes x. */
static avq_status upsample(avq_plan *p, avq_unet *u, block_w *b, avq_tensor *x, avq_tensor *y) {
    int64_t B = x->dims[0], C = x->dims[1], H = 2 * x->dims[2], W = 2 * x->dims[3];
    avq_conv_params prm = avq_conv_simple(1, 1);
    avq_tensor up;
    AVQ_TRY(act4(p, &up, u->dt, B, C, H, W));
    AVQ_TRY(avq_upsample2x(p, x, &up));
    avq_plan_release(p, x);
    AVQ_TRY(act4(p, y, u->dt, B, b->cout, H, W));
    AVQ_TRY(avq_conv2d(p, b->conv_w, b->conv_b, &up, y, &prm));
    avq_plan_release(p, &up);
    return AVQ_OK;
}

/* Resblock then transformer of one block; x is kept (it is a skip). */
static avq_status res_st(avq_plan *p, avq_unet *u, block_w *b, const avq_tensor *x, const avq_tensor *silu_emb,
                         const avq_tensor *context, avq_tensor *y) {
    if (!b->has_st) return resblock(p, u, &b->res, x, silu_emb, y);
    avq_tensor h;
    AVQ_TRY(resblock(p, u, &b->res, x, silu_emb, &h));
    AVQ_TRY(spatial_transformer(p, u, &b->st, &h, context, y));
    avq_plan_release(p, &h);
    return AVQ_OK;
}

static avq_status forward(avq_plan *p, void *vctx) {
    fwd_ctx *f = vctx;
    avq_unet *u = f->u;
    const avq_unet_config *c = &u->cfg;
    int64_t B = f->x->dims[0], H = f->x->dims[2], W = f->x->dims[3];
    int64_t L = f->context->dims[1];
    avq_tensor stack[MAX_BLOCKS];
    int nstack = 0;
    avq_tensor silu_emb, ctx_m, xin, h, nh;
    const avq_tensor *context = f->context;

    /* Context in the model dtype (k/v linears read it). */
    if (u->dt != AVQ_F32) {
        AVQ_TRY(avq_plan_tensor(p, &ctx_m, u->dt, AVQ_PLAIN, 3, AVQ_DIMS(B, L, c->context_dim)));
        AVQ_TRY(avq_reorder(p, f->context, &ctx_m));
        context = &ctx_m;
    }
    AVQ_TRY(time_embed(p, u, f->t, &silu_emb));

    AVQ_TRY(act4(p, &xin, u->dt, B, c->in_channels, H, W));
    AVQ_TRY(avq_reorder(p, f->x, &xin)); /* plain f32 NCHW -> NHWC model dtype */
    block_w *b = &u->in[0];
    avq_conv_params prm = avq_conv_simple(1, 1);
    AVQ_TRY(act4(p, &stack[nstack], u->dt, B, b->cout, H, W));
    AVQ_TRY(avq_conv2d(p, b->conv_w, b->conv_b, &xin, &stack[nstack], &prm));
    nstack++;
    avq_plan_release(p, &xin);

    /* input_blocks: every output stays alive as a skip */
    for (int i = 1; i < u->n_in; i++) {
        b = &u->in[i];
        const avq_tensor *top = &stack[nstack - 1];
        if (b->conv_kind == CONV_DOWN)
            AVQ_TRY(downsample(p, u, b, top, &stack[nstack]));
        else
            AVQ_TRY(res_st(p, u, b, top, &silu_emb, context, &stack[nstack]));
        nstack++;
    }

    /* middle_block */
    AVQ_TRY(resblock(p, u, &u->mid0, &stack[nstack - 1], &silu_emb, &h));
    AVQ_TRY(spatial_transformer(p, u, &u->mid1, &h, context, &nh));
    avq_plan_release(p, &h);
    AVQ_TRY(resblock(p, u, &u->mid2, &nh, &silu_emb, &h));
    avq_plan_release(p, &nh);

    /* output_blocks: h = block(concat[h, skip]) */
    for (int i = 0; i < u->n_out; i++) {
        b = &u->out[i];
        avq_tensor *skip = &stack[--nstack], cat;
        AVQ_TRY(act4(p, &cat, u->dt, B, h.dims[1] + skip->dims[1], h.dims[2], h.dims[3]));
        AVQ_TRY(avq_concat_channels(p, &h, skip, &cat));
        avq_plan_release(p, &h);
        avq_plan_release(p, skip);
        AVQ_TRY(res_st(p, u, b, &cat, &silu_emb, context, &nh));
        avq_plan_release(p, &cat);
        h = nh;
        if (b->conv_kind == CONV_UP) {
            AVQ_TRY(upsample(p, u, b, &h, &nh));
            h = nh;
        }
    }
    avq_plan_release(p, &silu_emb);
    if (context == &ctx_m) avq_plan_release(p, &ctx_m);

    /* out: GN + SiLU, conv 3x3 */
    avq_tensor g, e;
    AVQ_TRY(act4(p, &g, u->dt, B, h.dims[1], H, W));
    AVQ_TRY(avq_group_norm(p, &h, &g, u->out_norm_w, u->out_norm_b, GN_GROUPS, GN_EPS_RES, 1));
    avq_plan_release(p, &h);
    AVQ_TRY(act4(p, &e, u->dt, B, c->out_channels, H, W));
    AVQ_TRY(avq_conv2d(p, u->out_conv_w, u->out_conv_b, &g, &e, &prm));
    avq_plan_release(p, &g);
    AVQ_TRY(avq_reorder(p, &e, f->eps)); /* NHWC model dtype -> plain f32 NCHW */
    avq_plan_release(p, &e);
    return AVQ_OK;
}

static int is_input(const avq_tensor *t, int ndim) {
    return t && t->ndim == ndim && t->dtype == AVQ_F32 && t->layout == AVQ_PLAIN && t->data && t->arena_off < 0;
}

static avq_status check_inputs(const avq_unet *u, const avq_tensor *x, const avq_tensor *t, const avq_tensor *ctx,
                               const avq_tensor *eps) {
    const avq_unet_config *c = &u->cfg;
    char b1[96], b2[96];
    if (!is_input(x, 4) || !is_input(t, 1) || !is_input(ctx, 3) || !is_input(eps, 4))
        return avq_error(AVQ_ERR_ARG, "UNet inputs must be plain f32 tensors with data: x [B, C, h, w], t [B], "
                         "context [B, L, D], eps [B, C, h, w]");
    int64_t B = x->dims[0], H = x->dims[2], W = x->dims[3];
    if (B < 1 || H < 1 || W < 1)
        return avq_error(AVQ_ERR_SHAPE, "UNet input x %s is empty", avq_tensor_str(x, b1, sizeof b1));
    if (x->dims[1] != c->in_channels)
        return avq_error(AVQ_ERR_SHAPE, "UNet input x has %lld channels, this UNet takes %d%s", (long long)x->dims[1],
                         c->in_channels, c->in_channels == 9 ? " ([x_t (4), mask (1), masked-image latent (4)])" : "");
    if (H % u->multiple || W % u->multiple)
        return avq_error(AVQ_ERR_SHAPE, "UNet latent height and width must be multiples of %lld (image size a multiple "
                         "of %lld), got %lldx%lld", (long long)u->multiple, (long long)(8 * u->multiple),
                         (long long)H, (long long)W);
    if (t->dims[0] != B)
        return avq_error(AVQ_ERR_SHAPE, "UNet timesteps %s must have one entry per batch element (%lld)",
                         avq_tensor_str(t, b1, sizeof b1), (long long)B);
    if (ctx->dims[0] != B || ctx->dims[1] < 1 || ctx->dims[2] != c->context_dim)
        return avq_error(AVQ_ERR_SHAPE, "UNet context %s must be [%lld, L, %d]", avq_tensor_str(ctx, b1, sizeof b1),
                         (long long)B, c->context_dim);
    if (eps->dims[0] != B || eps->dims[1] != c->out_channels || eps->dims[2] != H || eps->dims[3] != W)
        return avq_error(AVQ_ERR_SHAPE, "UNet output %s must be [%lld, %d, %lld, %lld] for input %s",
                         avq_tensor_str(eps, b1, sizeof b1), (long long)B, c->out_channels, (long long)H,
                         (long long)W, avq_tensor_str(x, b2, sizeof b2));
    return AVQ_OK;
}

avq_status avq_unet_plan_create(const avq_unet *u, int64_t batch, int64_t height, int64_t width,
                                int64_t context_length, avq_unet_plan **out) {
    *out = NULL;
    if (!u) return avq_error(AVQ_ERR_ARG, "avq_unet_plan_create: unet is required");
    if (batch < 1 || height < 1 || width < 1 || context_length < 1)
        return avq_error(AVQ_ERR_SHAPE, "UNet plan: batch, height, width and context length must be >= 1, got %lld, "
                         "%lld, %lld, %lld", (long long)batch, (long long)height, (long long)width,
                         (long long)context_length);
    if (height % u->multiple || width % u->multiple)
        return avq_error(AVQ_ERR_SHAPE, "UNet latent height and width must be multiples of %lld (image size a multiple "
                         "of %lld), got %lldx%lld", (long long)u->multiple, (long long)(8 * u->multiple),
                         (long long)height, (long long)width);
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
        return avq_error(AVQ_ERR_SHAPE, "this UNet plan was made for batch %lld, latent %lldx%lld, context length "
                         "%lld; got batch %lld, latent %lldx%lld, context length %lld (use one plan per shape)",
                         (long long)plan->batch, (long long)plan->height, (long long)plan->width,
                         (long long)plan->context_length, (long long)b, (long long)h, (long long)w, (long long)l);
    fwd_ctx f = {u, x, t, context, eps_out};
    return avq_plan_run(plan->plan, forward, &f);
}
