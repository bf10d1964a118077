/* The KL autoencoder family: see autoencoder.h. Blocks are small functions
 * named after the checkpoint modules; one forward per task (encode, decode),
 * built once per plan and replayed. Activations are NHWC in the model
 * precision; every block consumes its input tensor and releases it as soon as
 * it is dead, so the arena holds only what is still needed. */
#include "autoencoder.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "ops/ops.h"

#define GN_GROUPS   32
#define GN_EPS      1e-6f
#define LOGVAR_MIN  -30.f
#define LOGVAR_MAX  20.f
#define COND_LAYERS 5

typedef struct conv_w {
    avq_weight *w, *b;
} conv_w;

typedef struct norm_w {
    avq_weight *g, *b;
} norm_w;

typedef struct resnet_w {
    norm_w norm1, norm2;
    conv_w conv1, conv2;
    conv_w nin; /* nin_shortcut; w == NULL when in and out widths agree */
} resnet_w;

typedef struct attn_w {
    norm_w norm;
    conv_w q, k, v, proj_out;
} attn_w;

typedef struct mid_w {
    resnet_w block_1, block_2;
    attn_w attn_1;
} mid_w;

typedef struct encoder_w {
    conv_w conv_in;
    resnet_w *block; /* owned: [level * num_res_blocks + b] */
    conv_w downsample[AVQ_AE_MAX_LEVELS];
    mid_w mid;
    norm_w norm_out;
    conv_w conv_out;
    conv_w quant_conv;
    /* quant_conv split into its mean and log-variance rows (views sharing the
     * source, with their own packed copies): moments never exist whole. */
    avq_weight mean_w, mean_b, logvar_w, logvar_b;
} encoder_w;

typedef struct decoder_w {
    conv_w post_quant_conv, conv_in;
    mid_w mid;
    resnet_w *block; /* owned: [level * blocks_per_level + b] */
    conv_w upsample[AVQ_AE_MAX_LEVELS];
    conv_w cond[COND_LAYERS]; /* decoder.encoder.layers.0..4 (conditional only) */
    norm_w norm_out;
    conv_w conv_out;
} decoder_w;

struct avq_autoencoder {
    avq_autoencoder_config cfg;
    avq_dtype dtype;
    avq_weight_set ws; /* owns every weight pointer below (data borrowed from the source) */
    encoder_w enc;
    decoder_w dec;
};

struct avq_autoencoder_plan {
    const avq_autoencoder *model; /* borrowed: the plan is valid for this model only */
    avq_ae_task task;
    int64_t batch, height, width; /* of the image */
    int banded;                   /* decode in row bands (exact: whole-image GroupNorm statistics) */
    int64_t band_rows;            /* banded: rows per band at every level; 0 = from the memory budget */
    float *masked;                /* owned, AVQ_AE_DECODE_COND only: (1 - mask) * image */
    avq_plan *plan;               /* owned */
};

/* What one run reads and writes (all borrowed, f32 NCHW). */
typedef struct run_ctx {
    avq_autoencoder *m;
    const avq_autoencoder_plan *ap;
    const float *image, *latent, *mask, *masked;
    float *mean, *logvar, *out;
} run_ctx;

/* ---- config ------------------------------------------------------------ */

static int enc_width(const avq_ae_encoder_config *e, int level) { return e->ch * e->ch_mult[level]; }

static avq_status check_groups(const char *what, int width) {
    if (width < GN_GROUPS || width % GN_GROUPS)
        return avq_error(AVQ_ERR_ARG,
                         "autoencoder config: %s width %d is not a positive multiple of %d (GroupNorm groups)", what,
                         width, GN_GROUPS);
    return AVQ_OK;
}

static avq_status check_encoder(const avq_ae_encoder_config *e) {
    if (e->in_channels < 1 || e->ch < 1 || e->num_res_blocks < 1 || e->z_channels < 1 || e->embed_dim < 1)
        return avq_error(AVQ_ERR_ARG,
                         "encoder config: in_channels %d, ch %d, num_res_blocks %d, z_channels %d, embed_dim %d must "
                         "all be >= 1",
                         e->in_channels, e->ch, e->num_res_blocks, e->z_channels, e->embed_dim);
    if (e->num_levels < 1 || e->num_levels > AVQ_AE_MAX_LEVELS)
        return avq_error(AVQ_ERR_ARG, "encoder config: %d levels, expected 1 to %d", e->num_levels, AVQ_AE_MAX_LEVELS);
    AVQ_TRY(check_groups("encoder conv_in", e->ch));
    for (int L = 0; L < e->num_levels; L++) {
        if (e->ch_mult[L] < 1) return avq_error(AVQ_ERR_ARG, "encoder config: ch_mult[%d] must be >= 1", L);
        AVQ_TRY(check_groups("encoder level", enc_width(e, L)));
    }
    if (memchr(e->prefix, 0, sizeof e->prefix) == NULL)
        return avq_error(AVQ_ERR_ARG, "encoder config: prefix too long");
    return AVQ_OK;
}

static avq_status check_decoder(const avq_ae_decoder_config *d) {
    if (d->embed_dim < 1 || d->z_channels < 1 || d->blocks_per_level < 1 || d->out_channels < 1)
        return avq_error(AVQ_ERR_ARG,
                         "decoder config: embed_dim %d, z_channels %d, blocks_per_level %d, out_channels %d must all "
                         "be >= 1",
                         d->embed_dim, d->z_channels, d->blocks_per_level, d->out_channels);
    if (d->num_levels < 1 || d->num_levels > AVQ_AE_MAX_LEVELS)
        return avq_error(AVQ_ERR_ARG, "decoder config: %d levels, expected 1 to %d", d->num_levels, AVQ_AE_MAX_LEVELS);
    for (int L = 0; L < d->num_levels; L++) AVQ_TRY(check_groups("decoder level", d->widths[L]));
    if (d->conditional) {
        const int *w = d->widths, *c = d->cond_channels;
        /* F4..F2 merge at H/8..H/2 into widths W3, W3 (level 3's upsample) and W2; F1 into W1; F0 into W0. */
        if (d->num_levels != 4)
            return avq_error(AVQ_ERR_ARG, "decoder config: the conditional decoder needs 4 levels, got %d",
                             d->num_levels);
        if (c[0] != w[0] || c[1] != w[1] || c[2] != w[2])
            return avq_error(AVQ_ERR_ARG,
                             "decoder config: condition widths (%d, %d, %d) must equal the level widths (W0, W1, W2) = "
                             "(%d, %d, %d)",
                             c[0], c[1], c[2], w[0], w[1], w[2]);
        if (w[2] != w[3])
            return avq_error(AVQ_ERR_ARG,
                             "decoder config: the condition features F2..F4 (width W2 = %d) merge into level 3 "
                             "(width W3 = %d); the conditional decoder needs W2 == W3",
                             w[2], w[3]);
    }
    if (memchr(d->prefix, 0, sizeof d->prefix) == NULL)
        return avq_error(AVQ_ERR_ARG, "decoder config: prefix too long");
    return AVQ_OK;
}

/* ---- weights ------------------------------------------------------------ */

/* Looks weights up by "<prefix><module>.<param>" (an allocation failure is
 * reported by avq_weight_set_finish). */
typedef struct loader {
    avq_weight_set *ws;
    const char *prefix;
} loader;

static avq_weight *get(loader *l, int ndim, const int64_t *dims, const char *module, const char *param) {
    return avq_weight_get(l->ws, ndim, dims, "%s%s.%s", l->prefix, module, param);
}

static conv_w get_conv(loader *l, const char *module, int64_t cout, int64_t cin, int64_t k) {
    conv_w c;
    c.w = get(l, 4, AVQ_DIMS(cout, cin, k, k), module, "weight");
    c.b = get(l, 1, AVQ_DIMS(cout), module, "bias");
    return c;
}

static norm_w get_norm(loader *l, const char *module, int64_t c) {
    norm_w n;
    n.g = get(l, 1, AVQ_DIMS(c), module, "weight");
    n.b = get(l, 1, AVQ_DIMS(c), module, "bias");
    return n;
}

#define NAME_MAX_LEN   160
#define NAME(buf, ...) snprintf(buf, sizeof buf, __VA_ARGS__)

static resnet_w get_resnet(loader *l, const char *module, int64_t cin, int64_t cout) {
    char n[NAME_MAX_LEN];
    resnet_w r;
    memset(&r, 0, sizeof r);
    NAME(n, "%s.norm1", module);
    r.norm1 = get_norm(l, n, cin);
    NAME(n, "%s.conv1", module);
    r.conv1 = get_conv(l, n, cout, cin, 3);
    NAME(n, "%s.norm2", module);
    r.norm2 = get_norm(l, n, cout);
    NAME(n, "%s.conv2", module);
    r.conv2 = get_conv(l, n, cout, cout, 3);
    if (cin != cout) {
        NAME(n, "%s.nin_shortcut", module);
        r.nin = get_conv(l, n, cout, cin, 1);
    }
    return r;
}

static mid_w get_mid(loader *l, const char *module, int64_t c) {
    char n[NAME_MAX_LEN];
    mid_w m;
    NAME(n, "%s.block_1", module);
    m.block_1 = get_resnet(l, n, c, c);
    NAME(n, "%s.attn_1.norm", module);
    m.attn_1.norm = get_norm(l, n, c);
    NAME(n, "%s.attn_1.q", module);
    m.attn_1.q = get_conv(l, n, c, c, 1);
    NAME(n, "%s.attn_1.k", module);
    m.attn_1.k = get_conv(l, n, c, c, 1);
    NAME(n, "%s.attn_1.v", module);
    m.attn_1.v = get_conv(l, n, c, c, 1);
    NAME(n, "%s.attn_1.proj_out", module);
    m.attn_1.proj_out = get_conv(l, n, c, c, 1);
    NAME(n, "%s.block_2", module);
    m.block_2 = get_resnet(l, n, c, c);
    return m;
}

/* SPEC §3.5. */
static avq_status load_encoder(avq_autoencoder *m, loader *l) {
    const avq_ae_encoder_config *e = &m->cfg.encoder;
    encoder_w *w = &m->enc;
    char n[NAME_MAX_LEN];
    w->block = calloc((size_t)(e->num_levels * e->num_res_blocks), sizeof *w->block);
    if (!w->block) return avq_error(AVQ_ERR_MEMORY, "out of memory creating the encoder");
    l->prefix = e->prefix;
    w->conv_in = get_conv(l, "encoder.conv_in", e->ch, e->in_channels, 3);
    int cin = e->ch;
    for (int L = 0; L < e->num_levels; L++) {
        const int width = enc_width(e, L);
        for (int b = 0; b < e->num_res_blocks; b++) {
            NAME(n, "encoder.down.%d.block.%d", L, b);
            w->block[L * e->num_res_blocks + b] = get_resnet(l, n, cin, width);
            cin = width;
        }
        if (L != e->num_levels - 1) {
            NAME(n, "encoder.down.%d.downsample.conv", L);
            w->downsample[L] = get_conv(l, n, cin, cin, 3);
        }
    }
    w->mid = get_mid(l, "encoder.mid", cin);
    w->norm_out = get_norm(l, "encoder.norm_out", cin);
    w->conv_out = get_conv(l, "encoder.conv_out", 2 * e->z_channels, cin, 3);
    w->quant_conv = get_conv(l, "quant_conv", 2 * e->embed_dim, 2 * e->z_channels, 1);
    return AVQ_OK;
}

/* SPEC §4.8; the condition encoder only for the conditional decoder. */
static avq_status load_decoder(avq_autoencoder *m, loader *l) {
    const avq_ae_decoder_config *d = &m->cfg.decoder;
    decoder_w *w = &m->dec;
    char n[NAME_MAX_LEN];
    const int top = d->widths[d->num_levels - 1];
    w->block = calloc((size_t)(d->num_levels * d->blocks_per_level), sizeof *w->block);
    if (!w->block) return avq_error(AVQ_ERR_MEMORY, "out of memory creating the decoder");
    l->prefix = d->prefix;
    w->post_quant_conv = get_conv(l, "post_quant_conv", d->z_channels, d->embed_dim, 1);
    w->conv_in = get_conv(l, "decoder.conv_in", top, d->z_channels, 3);
    w->mid = get_mid(l, "decoder.mid", top);
    if (d->conditional) {
        const int *c = d->cond_channels;
        const int cout[COND_LAYERS] = {c[0], c[1], c[2], c[2], c[2]};
        const int cin[COND_LAYERS] = {d->out_channels, c[0], c[1], c[2], c[2]};
        for (int i = 0; i < COND_LAYERS; i++) {
            NAME(n, "decoder.encoder.layers.%d", i);
            w->cond[i] = get_conv(l, n, cout[i], cin[i], i < 2 ? 3 : 4);
        }
    }
    for (int L = 0; L < d->num_levels; L++) {
        int cin = L + 1 < d->num_levels ? d->widths[L + 1] : top;
        for (int b = 0; b < d->blocks_per_level; b++) {
            NAME(n, "decoder.up.%d.block.%d", L, b);
            w->block[L * d->blocks_per_level + b] = get_resnet(l, n, cin, d->widths[L]);
            cin = d->widths[L];
        }
        if (L != 0) {
            NAME(n, "decoder.up.%d.upsample.conv", L);
            w->upsample[L] = get_conv(l, n, d->widths[L], d->widths[L], 3);
        }
    }
    w->norm_out = get_norm(l, "decoder.norm_out", d->widths[0]);
    w->conv_out = get_conv(l, "decoder.conv_out", d->out_channels, d->widths[0], 3);
    return AVQ_OK;
}

avq_status avq_autoencoder_create(const avq_autoencoder_config *cfg, const avq_weight_source *src, avq_dtype precision,
                                  avq_autoencoder **out) {
    *out = NULL;
    if (!cfg || !src) return avq_error(AVQ_ERR_ARG, "autoencoder: config and weight source are required");
    if (!cfg->has_encoder && !cfg->has_decoder)
        return avq_error(AVQ_ERR_ARG, "autoencoder config: neither an encoder nor a decoder was asked for");
    if (cfg->has_encoder) AVQ_TRY(check_encoder(&cfg->encoder));
    if (cfg->has_decoder) AVQ_TRY(check_decoder(&cfg->decoder));
    if (precision != AVQ_F32 && precision != AVQ_BF16)
        return avq_error(AVQ_ERR_DTYPE, "autoencoder: precision must be f32 or bf16");
    avq_autoencoder *m = calloc(1, sizeof *m);
    if (!m) return avq_error(AVQ_ERR_MEMORY, "out of memory creating the autoencoder");
    m->cfg = *cfg;
    m->dtype = precision;
    avq_weight_set_init(&m->ws, src, "");
    m->ws.store = precision; /* every conv runs in the model's precision */
    loader l = {&m->ws, ""};
    avq_status st = AVQ_OK;
    if (cfg->has_encoder) st = load_encoder(m, &l);
    if (st == AVQ_OK && cfg->has_decoder) st = load_decoder(m, &l);
    if (st == AVQ_OK)
        st = avq_weight_set_finish(&m->ws, cfg->has_encoder && cfg->has_decoder ? "autoencoder"
                                           : cfg->has_encoder                   ? "VAE encoder"
                                                                                : "VAE decoder");
    if (st == AVQ_OK && cfg->has_encoder) {
        const int64_t e = cfg->encoder.embed_dim;
        encoder_w *w = &m->enc;
        w->mean_w = avq_weight_rows(w->quant_conv.w, 0, e);
        w->mean_b = avq_weight_rows(w->quant_conv.b, 0, e);
        w->logvar_w = avq_weight_rows(w->quant_conv.w, e, e);
        w->logvar_b = avq_weight_rows(w->quant_conv.b, e, e);
    }
    if (st != AVQ_OK) {
        avq_autoencoder_destroy(m);
        return st;
    }
    *out = m;
    return AVQ_OK;
}

void avq_autoencoder_destroy(avq_autoencoder *m) {
    if (!m) return;
    avq_weight_release(&m->enc.mean_w);
    avq_weight_release(&m->enc.mean_b);
    avq_weight_release(&m->enc.logvar_w);
    avq_weight_release(&m->enc.logvar_b);
    avq_weight_set_free(&m->ws);
    free(m->enc.block);
    free(m->dec.block);
    free(m);
}

const avq_autoencoder_config *avq_autoencoder_get_config(const avq_autoencoder *m) { return &m->cfg; }
avq_dtype avq_autoencoder_precision(const avq_autoencoder *m) { return m->dtype; }
int64_t avq_autoencoder_num_params(const avq_autoencoder *m) { return avq_weight_set_numel(&m->ws); }

int avq_autoencoder_factor(const avq_autoencoder *m, int enc) {
    int levels = enc ? m->cfg.encoder.num_levels : m->cfg.decoder.num_levels;
    return 1 << (levels - 1);
}

/* ---- blocks ------------------------------------------------------------- */

/* A new NHWC activation [n, c, h, w] in the model precision. */
static avq_status act(avq_plan *p, avq_dtype dt, avq_tensor *t, int64_t n, int64_t c, int64_t h, int64_t w) {
    return avq_plan_tensor(p, t, dt, AVQ_NHWC, 4, AVQ_DIMS(n, c, h, w));
}

/* y = conv(x) into a new activation of the output size. */
static avq_status conv(avq_plan *p, avq_dtype dt, const conv_w *cw, const avq_tensor *x, avq_tensor *y,
                       const avq_conv_params *prm) {
    int64_t oh, ow;
    AVQ_TRY(avq_conv2d_out_size(x, cw->w, prm, &oh, &ow));
    AVQ_TRY(act(p, dt, y, x->dims[0], cw->w->dims[0], oh, ow));
    return avq_conv2d(p, cw->w, cw->b, x, y, prm);
}

static avq_conv_params same3(void) { return avq_conv_simple(1, 1); }

/* SPEC §3.2: x = shortcut(x) + conv2(SiLU(GN(conv1(SiLU(GN(x)))))); *x is replaced. */
static avq_status resnet_block(avq_plan *p, avq_dtype dt, const resnet_w *r, avq_tensor *x) {
    avq_tensor n1, h, sc, y;
    avq_conv_params prm = same3();
    AVQ_TRY(act(p, dt, &n1, x->dims[0], x->dims[1], x->dims[2], x->dims[3]));
    AVQ_TRY(avq_group_norm(p, x, &n1, r->norm1.g, r->norm1.b, GN_GROUPS, GN_EPS, 1));
    AVQ_TRY(conv(p, dt, &r->conv1, &n1, &h, &prm));
    avq_plan_release(p, &n1);
    if (r->nin.w) {
        avq_conv_params one = avq_conv_simple(1, 0);
        AVQ_TRY(conv(p, dt, &r->nin, x, &sc, &one));
        avq_plan_release(p, x);
    } else {
        sc = *x;
    }
    AVQ_TRY(avq_group_norm(p, &h, &h, r->norm2.g, r->norm2.b, GN_GROUPS, GN_EPS, 1)); /* in place */
    prm.add = &sc; /* the residual add is a post-op of conv2; y cannot alias sc */
    AVQ_TRY(conv(p, dt, &r->conv2, &h, &y, &prm));
    avq_plan_release(p, &h);
    avq_plan_release(p, &sc);
    *x = y;
    return AVQ_OK;
}

/* SPEC §3.2: single-head attention over the H*W tokens with scale 1/sqrt(C);
 * q, k, v, proj_out are 1x1 convs on the NHWC tensor, which is the token matrix. */
static avq_status attn_block(avq_plan *p, avq_dtype dt, const attn_w *a, avq_tensor *x) {
    const int64_t *d = x->dims;
    avq_tensor n, q, k, v, o, y;
    avq_conv_params one = avq_conv_simple(1, 0);
    AVQ_TRY(act(p, dt, &n, d[0], d[1], d[2], d[3]));
    AVQ_TRY(avq_group_norm(p, x, &n, a->norm.g, a->norm.b, GN_GROUPS, GN_EPS, 0));
    AVQ_TRY(conv(p, dt, &a->q, &n, &q, &one));
    AVQ_TRY(conv(p, dt, &a->k, &n, &k, &one));
    AVQ_TRY(conv(p, dt, &a->v, &n, &v, &one));
    avq_plan_release(p, &n);
    AVQ_TRY(act(p, dt, &o, d[0], d[1], d[2], d[3]));
    AVQ_TRY(avq_attention(p, &q, &k, &v, &o, 1, 1.f / sqrtf((float)d[1]), 0));
    avq_plan_release(p, &v);
    avq_plan_release(p, &k);
    avq_plan_release(p, &q);
    one.add = x;
    AVQ_TRY(conv(p, dt, &a->proj_out, &o, &y, &one));
    avq_plan_release(p, &o);
    avq_plan_release(p, x);
    *x = y;
    return AVQ_OK;
}

static avq_status mid(avq_plan *p, avq_dtype dt, const mid_w *w, avq_tensor *x) {
    AVQ_TRY(resnet_block(p, dt, &w->block_1, x));
    AVQ_TRY(attn_block(p, dt, &w->attn_1, x));
    return resnet_block(p, dt, &w->block_2, x);
}

/* Encoder: zero-pad one column right and one row bottom, conv 3x3 stride 2 (SPEC §3.2). */
static avq_status downsample(avq_plan *p, avq_dtype dt, const conv_w *cw, avq_tensor *x) {
    avq_conv_params prm = {2, 2, 0, 0, 1, 1, AVQ_ACT_NONE, NULL, AVQ_CONV_AUTO};
    avq_tensor y;
    AVQ_TRY(conv(p, dt, cw, x, &y, &prm));
    avq_plan_release(p, x);
    *x = y;
    return AVQ_OK;
}

/* Decoder: nearest x2, conv 3x3 pad 1. */
static avq_status upsample(avq_plan *p, avq_dtype dt, const conv_w *cw, avq_tensor *x) {
    avq_tensor u, y;
    avq_conv_params prm = same3();
    AVQ_TRY(act(p, dt, &u, x->dims[0], x->dims[1], 2 * x->dims[2], 2 * x->dims[3]));
    AVQ_TRY(avq_upsample2x(p, x, &u));
    avq_plan_release(p, x);
    AVQ_TRY(conv(p, dt, cw, &u, &y, &prm));
    avq_plan_release(p, &u);
    *x = y;
    return AVQ_OK;
}

/* relu(x) into a new activation. */
static avq_status relu_copy(avq_plan *p, avq_dtype dt, const avq_tensor *x, avq_tensor *y) {
    AVQ_TRY(act(p, dt, y, x->dims[0], x->dims[1], x->dims[2], x->dims[3]));
    return avq_activation(p, x, y, AVQ_ACT_RELU);
}

/* The caller's f32 NCHW image as an activation. */
static avq_status load_image(avq_plan *p, avq_dtype dt, const float *data, int64_t n, int64_t c, int64_t h, int64_t w,
                             avq_tensor *x) {
    avq_tensor ext = avq_tensor_4d(AVQ_F32, AVQ_PLAIN, n, c, h, w);
    ext.data = (void *)data;
    ext.arena_off = -1;
    AVQ_TRY(act(p, dt, x, n, c, h, w));
    return avq_reorder(p, &ext, x);
}

/* An activation into the caller's f32 NCHW buffer; releases it. */
static avq_status store(avq_plan *p, avq_tensor *x, float *data) {
    avq_tensor ext = avq_tensor_4d(AVQ_F32, AVQ_PLAIN, x->dims[0], x->dims[1], x->dims[2], x->dims[3]);
    ext.data = data;
    ext.arena_off = -1;
    AVQ_TRY(avq_reorder(p, x, &ext));
    avq_plan_release(p, x);
    return AVQ_OK;
}

/* SPEC §4.4: the condition encoder on the masked image. F[1..4] receive the
 * pre-ReLU outputs of layers 1..4 (kept for the merges); layer 0's output F0
 * is needed only by the final merge, so it is recomputed there (a 3-channel
 * conv, ~0.01 % of the work) instead of being held through the whole decode. */
static avq_status cond_encoder(avq_plan *p, avq_dtype dt, const decoder_w *w, const run_ctx *c, avq_tensor F[5]) {
    const avq_autoencoder_plan *ap = c->ap;
    avq_tensor mi, r;
    avq_conv_params k3 = same3(), k4 = avq_conv_simple(2, 1);
    AVQ_TRY(load_image(p, dt, c->masked, ap->batch, c->m->cfg.decoder.out_channels, ap->height, ap->width, &mi));
    k3.act = AVQ_ACT_RELU;
    AVQ_TRY(conv(p, dt, &w->cond[0], &mi, &r, &k3)); /* relu(F0) */
    avq_plan_release(p, &mi);
    k3.act = AVQ_ACT_NONE;
    AVQ_TRY(conv(p, dt, &w->cond[1], &r, &F[1], &k3));
    avq_plan_release(p, &r);
    for (int i = 2; i < COND_LAYERS; i++) {
        AVQ_TRY(relu_copy(p, dt, &F[i - 1], &r));
        AVQ_TRY(conv(p, dt, &w->cond[i], &r, &F[i], &k4));
        avq_plan_release(p, &r);
    }
    return AVQ_OK;
}

/* from the banded section below */
static avq_tensor rows_view(const avq_tensor *t, int64_t n, int64_t r0, int64_t rows);
static void drop_rows(avq_plan *p, const avq_tensor *t, int64_t n, int64_t r0, int64_t rows);
static int64_t band_height(const avq_autoencoder_plan *ap, avq_dtype dt, int64_t cin, int64_t cout, int64_t H,
                           int64_t W);

/* SPEC §4.5: h = h * m + F * (1 - m), m = nearest(mask) at h's size (the
 * caller's full-resolution mask as is when sizes agree); releases F. */
static avq_status merge(avq_plan *p, const run_ctx *c, avq_tensor *h, avq_tensor *F) {
    const avq_autoencoder_plan *ap = c->ap;
    avq_tensor full = avq_tensor_4d(AVQ_F32, AVQ_PLAIN, ap->batch, 1, ap->height, ap->width), ms;
    full.data = (void *)c->mask;
    full.arena_off = -1;
    const avq_tensor *m = &full;
    if (h->dims[2] != ap->height || h->dims[3] != ap->width) {
        AVQ_TRY(avq_plan_tensor(p, &ms, AVQ_F32, AVQ_PLAIN, 4, AVQ_DIMS(ap->batch, 1, h->dims[2], h->dims[3])));
        AVQ_TRY(avq_resize_nearest(p, &full, &ms));
        m = &ms;
    }
    if (!ap->banded) {
        AVQ_TRY(avq_blend(p, h, F, m, h));
    } else {
        /* elementwise, so the same values band by band; a spilled arena holds a few bands of h and F */
        const int64_t H = h->dims[2], rows = band_height(ap, h->dtype, 2 * h->dims[1], 0, H, h->dims[3]);
        for (int64_t n = 0; n < h->dims[0]; n++) {
            for (int64_t r0 = 0; r0 < H; r0 += rows) {
                const int64_t k = H - r0 < rows ? H - r0 : rows;
                avq_tensor hv = rows_view(h, n, r0, k), fv = rows_view(F, n, r0, k), mv = rows_view(m, n, r0, k);
                AVQ_TRY(avq_blend(p, &hv, &fv, &mv, &hv));
                drop_rows(p, h, n, r0, k);
                drop_rows(p, F, n, r0, k);
            }
        }
    }
    if (m == &ms) avq_plan_release(p, &ms);
    avq_plan_release(p, F);
    return AVQ_OK;
}

/* ---- banded decoding ---------------------------------------------------- */

/* The decoder layer by layer, each 3x3 conv over row bands of its output: a
 * band of rows [r0, r0 + rows) reads input rows r0 - 1 .. r0 + rows, which
 * are gathered (normalised, or upsampled) into a small scratch with zero rows
 * past the image's edges. GroupNorm statistics are those of the whole tensor
 * (one pass before the bands), so the result is the whole decode's: only
 * each resnet block's input and conv1's output exist whole (the shortcut
 * and the block's output overwrite its input), never the normalised or the
 * upsampled tensors. The latent-resolution part (conv_in, mid block with
 * its attention) runs as usual, the condition encoder too from F2 on. */

/* Rows [r0, r0 + rows) of sample n of a whole NHWC activation (or a [N, 1, H, W]
 * mask): a contiguous view, borrowed (never released). */
static avq_tensor rows_view(const avq_tensor *t, int64_t n, int64_t r0, int64_t rows) {
    avq_tensor v = *t;
    v.dims[0] = 1;
    v.dims[2] = rows;
    v.arena_off = -1;
    if (t->data)
        v.data = (char *)t->data + (size_t)((n * t->dims[2] + r0) * t->dims[3] * t->dims[1]) * avq_dtype_size(t->dtype);
    return v;
}

/* Spilling (avq_autoencoder_plan_set_spill): the arena is a file mapping,
 * and every loop below drops from the process the rows of whole tensors that
 * it is done with -- output rows once written, input rows once no later band
 * of the loop reads them -- the merges run band by band too, and the passes
 * that read a whole tensor (GroupNorm statistics, the condition's F3 from
 * F2) run under a drop-behind thread (avq_plan_drop_behind_begin), so only a few
 * bands' pages are resident at a time; the content stays in the file. The
 * drops are no-ops for an anonymous arena, so the computation is the same
 * either way (bitwise). */

/* Drops rows [r0, r0 + rows) of sample n of a whole NHWC activation (clipped to the image). */
static void drop_rows(avq_plan *p, const avq_tensor *t, int64_t n, int64_t r0, int64_t rows) {
    if (r0 < 0) {
        rows += r0;
        r0 = 0;
    }
    if (r0 + rows > t->dims[2]) rows = t->dims[2] - r0;
    if (rows <= 0 || !t->data) return;
    const avq_tensor v = rows_view(t, n, r0, rows);
    avq_plan_drop(p, v.data, (size_t)(rows * t->dims[3] * t->dims[1]) * avq_dtype_size(t->dtype));
}

static void drop_all(avq_plan *p, const avq_tensor *t) {
    if (t->data) avq_plan_drop(p, t->data, avq_tensor_bytes(t));
}

/* Where a band conv's input rows come from. */
typedef struct band_src {
    const avq_tensor *x;     /* the whole input (half the output's size if up2) */
    const avq_tensor *stats; /* non-NULL: SiLU(GN(x)) with these whole-tensor statistics */
    int up2;                 /* nearest x2 of x (the upsampler) */
} band_src;

/* What becomes of a band conv's output rows: written, added to, or blended. */
typedef struct band_dst {
    avq_tensor *y;          /* the whole output */
    int residual;           /* y += conv (y holds the shortcut) */
    const avq_tensor *mask; /* f32 [N, 1, H, W]: y = y * m + conv * (1 - m) */
} band_dst;

/* Rows per band: the fixed band height, or what the budget allows for the
 * scratch input and output of one band (at least AVQ_AE_BAND_MIN_ROWS),
 * evened out over the bands the height then needs. */
static int64_t band_height(const avq_autoencoder_plan *ap, avq_dtype dt, int64_t cin, int64_t cout, int64_t H,
                           int64_t W) {
    int64_t rows = ap->band_rows;
    if (rows > 0) return rows < H ? rows : H;
    int64_t per_row = (cin + cout) * W * (int64_t)avq_dtype_size(dt);
    rows = (int64_t)AVQ_AE_BAND_BUDGET_BYTES / per_row - 2;
    if (rows < AVQ_AE_BAND_MIN_ROWS) rows = AVQ_AE_BAND_MIN_ROWS;
    if (rows >= H) return H;
    int64_t bands = (H + rows - 1) / rows;
    return (H + bands - 1) / bands; /* even bands: no short last one */
}

/* A 3x3 stride-1 conv over a gathered band g [1, C, rows + 2, W] (one halo
 * row each side), act fused: its `rows` output rows are *ov, a borrowed view
 * of the new scratch *o (the caller releases *o). */
static avq_status conv_rows(avq_plan *p, avq_dtype dt, const conv_w *cw, const avq_tensor *g, int64_t rows, avq_act a,
                            avq_tensor *o, avq_tensor *ov) {
    avq_conv_params pad1 = same3(), halo = {1, 1, 0, 1, 0, 1, a, NULL, AVQ_CONV_AUTO};
    pad1.act = a;
    if (avq_conv2d_auto_winograd(cw->w, g, &pad1)) {
        /* Winograd (the f32 path of the whole decode) pads all round: two
         * rows more are computed and dropped, cheaper than direct convolution. */
        AVQ_TRY(conv(p, dt, cw, g, o, &pad1));
        *ov = rows_view(o, 0, 1, rows);
    } else {
        AVQ_TRY(conv(p, dt, cw, g, o, &halo));
        *ov = rows_view(o, 0, 0, rows);
    }
    return AVQ_OK;
}

/* One band of a 3x3 stride-1 pad-1 conv: output rows [r0, r0 + rows) of sample n. */
static avq_status band_conv(avq_plan *p, avq_dtype dt, const conv_w *cw, const band_src *s, const band_dst *d,
                            int64_t n, int64_t r0, int64_t rows) {
    const int64_t cin = s->x->dims[1], W = d->y->dims[3];
    avq_tensor g, o, ov;
    AVQ_TRY(act(p, dt, &g, 1, cin, rows + 2, W));
    if (s->stats)
        AVQ_TRY(avq_group_norm_rows(p, s->x, s->stats, &g, n, r0 - 1, 1));
    else if (s->up2)
        AVQ_TRY(avq_upsample2x_rows(p, s->x, &g, n, r0 - 1));
    else
        AVQ_TRY(avq_gather_rows(p, s->x, &g, n, r0 - 1));
    avq_tensor dv = rows_view(d->y, n, r0, rows);
    avq_conv_params pad1 = same3(), halo = {1, 1, 0, 1, 0, 1, AVQ_ACT_NONE, NULL, AVQ_CONV_AUTO};
    if (!d->mask && !avq_conv2d_auto_winograd(cw->w, &g, &pad1)) {
        if (!d->residual) {
            AVQ_TRY(avq_conv2d(p, cw->w, cw->b, &g, &dv, &halo)); /* straight into the output */
        } else {
            /* the shortcut as the conv's fused add (one rounding, like the whole
             * decode's conv2) into a scratch, copied over the shortcut's rows */
            halo.add = &dv;
            AVQ_TRY(conv(p, dt, cw, &g, &o, &halo));
            AVQ_TRY(avq_copy(p, &o, &dv));
            avq_plan_release(p, &o);
        }
        avq_plan_release(p, &g);
        return AVQ_OK;
    }
    AVQ_TRY(conv_rows(p, dt, cw, &g, rows, AVQ_ACT_NONE, &o, &ov));
    avq_plan_release(p, &g);
    if (d->mask) {
        avq_tensor mv = rows_view(d->mask, n, r0, rows);
        AVQ_TRY(avq_blend(p, &dv, &ov, &mv, &dv));
    } else if (d->residual) {
        AVQ_TRY(avq_add(p, &ov, &dv, &dv)); /* conv + shortcut, the whole decode's order */
    } else {
        AVQ_TRY(avq_copy(p, &ov, &dv));
    }
    avq_plan_release(p, &o);
    return AVQ_OK;
}

static avq_status banded_conv(avq_plan *p, avq_dtype dt, const avq_autoencoder_plan *ap, const conv_w *cw,
                              const band_src *s, const band_dst *d) {
    const int64_t H = d->y->dims[2];
    const int64_t rows = band_height(ap, dt, s->x->dims[1], cw->w->dims[0], H, d->y->dims[3]);
    for (int64_t n = 0; n < d->y->dims[0]; n++) {
        int64_t kept = 0; /* input rows [0, kept) of sample n are dropped */
        for (int64_t r0 = 0; r0 < H; r0 += rows) {
            const int64_t m = H - r0 < rows ? H - r0 : rows, r1 = r0 + m;
            AVQ_TRY(band_conv(p, dt, cw, s, d, n, r0, m));
            drop_rows(p, d->y, n, r0, m);
            /* the next band reads output rows r1 - 1 .. of the (upsampled) input */
            const int64_t next = r1 >= H ? s->x->dims[2] : s->up2 ? (r1 - 1) / 2 : r1 - 1;
            drop_rows(p, s->x, n, kept, next - kept);
            kept = next;
        }
    }
    return AVQ_OK;
}

/* Whole-tensor GroupNorm statistics of x, into a new f32 [N, 3, C]. */
static avq_status norm_stats(avq_plan *p, const norm_w *nw, const avq_tensor *x, avq_tensor *st) {
    AVQ_TRY(avq_plan_tensor(p, st, AVQ_F32, AVQ_PLAIN, 3, AVQ_DIMS(x->dims[0], 3, x->dims[1])));
    /* the pass reads all of x (twice); spilled, its pages are dropped behind it */
    avq_drop_behind *d;
    avq_plan_drop_behind_begin(p, x->data, x->data ? avq_tensor_bytes(x) : 0, &d);
    avq_status s = avq_group_norm_stats(p, x, st, nw->g, nw->b, GN_GROUPS, GN_EPS);
    avq_plan_drop_behind_end(d);
    return s;
}

/* The nin shortcut y = nin(x) written over x's own memory (y is no wider
 * than x, so *y takes over x's arena block): band by band in memory order,
 * each band of x read into a scratch before its y rows are written, which
 * end before the first byte of x's next band. x is consumed. */
static avq_status nin_over_input(avq_plan *p, avq_dtype dt, const avq_autoencoder_plan *ap, const conv_w *nin,
                                 avq_tensor *x, avq_tensor *y) {
    const int64_t cout = nin->w->dims[0], H = x->dims[2];
    const int64_t rows = band_height(ap, dt, x->dims[1], cout, H, x->dims[3]);
    avq_conv_params one = avq_conv_simple(1, 0);
    *y = *x;
    y->dims[1] = cout;
    for (int64_t n = 0; n < x->dims[0]; n++) {
        for (int64_t r0 = 0; r0 < H; r0 += rows) {
            const int64_t m = H - r0 < rows ? H - r0 : rows;
            avq_tensor xv = rows_view(x, n, r0, m), yv = rows_view(y, n, r0, m), o;
            AVQ_TRY(conv(p, dt, nin, &xv, &o, &one));
            AVQ_TRY(avq_copy(p, &o, &yv));
            avq_plan_release(p, &o);
            drop_rows(p, x, n, r0, m);
            drop_rows(p, y, n, r0, m);
        }
    }
    return AVQ_OK;
}

/* resnet_block in bands; conv2 adds into the shortcut in place. */
static avq_status resnet_banded(avq_plan *p, avq_dtype dt, const avq_autoencoder_plan *ap, const resnet_w *r,
                                avq_tensor *x) {
    avq_tensor st, h, y;
    AVQ_TRY(norm_stats(p, &r->norm1, x, &st));
    AVQ_TRY(act(p, dt, &h, x->dims[0], r->conv1.w->dims[0], x->dims[2], x->dims[3]));
    band_src s1 = {x, &st, 0};
    band_dst d1 = {&h, 0, NULL};
    AVQ_TRY(banded_conv(p, dt, ap, &r->conv1, &s1, &d1));
    avq_plan_release(p, &st);
    if (r->nin.w && r->nin.w->dims[0] <= x->dims[1]) {
        AVQ_TRY(nin_over_input(p, dt, ap, &r->nin, x, &y));
    } else if (r->nin.w) {
        avq_conv_params one = avq_conv_simple(1, 0);
        AVQ_TRY(conv(p, dt, &r->nin, x, &y, &one));
        avq_plan_release(p, x);
        drop_all(p, &y);
    } else {
        y = *x;
    }
    AVQ_TRY(norm_stats(p, &r->norm2, &h, &st));
    band_src s2 = {&h, &st, 0};
    band_dst d2 = {&y, 1, NULL};
    AVQ_TRY(banded_conv(p, dt, ap, &r->conv2, &s2, &d2));
    avq_plan_release(p, &st);
    avq_plan_release(p, &h);
    *x = y;
    return AVQ_OK;
}

static avq_status upsample_banded(avq_plan *p, avq_dtype dt, const avq_autoencoder_plan *ap, const conv_w *cw,
                                  avq_tensor *x) {
    avq_tensor y;
    AVQ_TRY(act(p, dt, &y, x->dims[0], cw->w->dims[0], 2 * x->dims[2], 2 * x->dims[3]));
    band_src s = {x, NULL, 1};
    band_dst d = {&y, 0, NULL};
    AVQ_TRY(banded_conv(p, dt, ap, cw, &s, &d));
    avq_plan_release(p, x);
    *x = y;
    return AVQ_OK;
}

/* F1 = cond[1](relu(cond[0](masked))) at full resolution is as large as the
 * biggest activations (W1 channels), so the banded decode never holds it:
 * its rows are made where they are used, for F2 and again for the level-0
 * merge (one more pass of cond[1], a few % of the decode). */

/* Rows [r0, r0 + rows) (inside the image) of F1 of sample n: *ov, a view of
 * the new scratch *o (the caller releases *o). mi: the masked image. */
static avq_status f1_rows(avq_plan *p, avq_dtype dt, const decoder_w *w, const avq_tensor *mi, int64_t n, int64_t r0,
                          int64_t rows, avq_tensor *o, avq_tensor *ov) {
    const int64_t H = mi->dims[2], W = mi->dims[3];
    /* the relu(F0) rows F1's halo reads, clipped to the image (zero rows outside) */
    const int64_t a = r0 > 0 ? r0 - 1 : 0, b = r0 + rows + 1 < H ? r0 + rows + 1 : H;
    avq_tensor gm, f0, f0v, g;
    AVQ_TRY(act(p, dt, &gm, 1, mi->dims[1], b - a + 2, W));
    AVQ_TRY(avq_gather_rows(p, mi, &gm, n, a - 1));
    AVQ_TRY(conv_rows(p, dt, &w->cond[0], &gm, b - a, AVQ_ACT_RELU, &f0, &f0v));
    avq_plan_release(p, &gm);
    AVQ_TRY(act(p, dt, &g, 1, f0v.dims[1], rows + 2, W));
    AVQ_TRY(avq_gather_rows(p, &f0v, &g, 0, r0 - 1 - a));
    avq_plan_release(p, &f0);
    AVQ_TRY(conv_rows(p, dt, &w->cond[1], &g, rows, AVQ_ACT_NONE, o, ov));
    avq_plan_release(p, &g);
    return AVQ_OK;
}

/* cond_encoder without F1: F2 = cond[2](relu(F1)) (4x4, stride 2, pad 1) band
 * by band from F1's rows, then F3, F4 as usual. F[1] is left unset. */
static avq_status cond_encoder_banded(avq_plan *p, avq_dtype dt, const decoder_w *w, const run_ctx *c,
                                      avq_tensor F[5]) {
    const avq_autoencoder_plan *ap = c->ap;
    const int64_t H = ap->height, c1 = w->cond[1].w->dims[0], c2 = w->cond[2].w->dims[0];
    avq_tensor mi, r;
    avq_conv_params k4 = avq_conv_simple(2, 1), k4halo = {2, 2, 0, 1, 0, 1, AVQ_ACT_NONE, NULL, AVQ_CONV_AUTO};
    AVQ_TRY(load_image(p, dt, c->masked, ap->batch, c->m->cfg.decoder.out_channels, H, ap->width, &mi));
    AVQ_TRY(act(p, dt, &F[2], ap->batch, c2, H / 2, ap->width / 2));
    /* per F2 row: two full-resolution rows of relu(F0), F1 and its gathered copy */
    const int64_t rows = band_height(ap, dt, 4 * (w->cond[0].w->dims[0] + 2 * c1), c2, H / 2, ap->width / 2);
    for (int64_t n = 0; n < ap->batch; n++) {
        for (int64_t i0 = 0; i0 < H / 2; i0 += rows) {
            const int64_t m = H / 2 - i0 < rows ? H / 2 - i0 : rows;
            const int64_t q0 = 2 * i0 - 1, q1 = 2 * (i0 + m) + 1; /* F1 rows the band reads */
            const int64_t a = q0 > 0 ? q0 : 0, b = q1 < H ? q1 : H;
            avq_tensor o, f1, g, fv = rows_view(&F[2], n, i0, m);
            AVQ_TRY(f1_rows(p, dt, w, &mi, n, a, b - a, &o, &f1));
            AVQ_TRY(avq_activation(p, &f1, &f1, AVQ_ACT_RELU));
            AVQ_TRY(act(p, dt, &g, 1, c1, q1 - q0, ap->width));
            AVQ_TRY(avq_gather_rows(p, &f1, &g, 0, q0 - a));
            avq_plan_release(p, &o);
            AVQ_TRY(avq_conv2d(p, w->cond[2].w, w->cond[2].b, &g, &fv, &k4halo));
            avq_plan_release(p, &g);
            drop_rows(p, &F[2], n, i0, m);
        }
    }
    avq_plan_release(p, &mi);
    for (int i = 3; i < COND_LAYERS; i++) {
        /* whole-tensor passes (relu(F2) is as large as F2): spilled, their pages are dropped behind them */
        const avq_tensor *x = &F[i - 1];
        avq_drop_behind *d[2];
        int64_t oh, ow;
        AVQ_TRY(act(p, dt, &r, x->dims[0], x->dims[1], x->dims[2], x->dims[3]));
        avq_plan_drop_behind_begin(p, x->data, x->data ? avq_tensor_bytes(x) : 0, &d[0]);
        avq_plan_drop_behind_begin(p, r.data, r.data ? avq_tensor_bytes(&r) : 0, &d[1]);
        avq_status s = avq_activation(p, x, &r, AVQ_ACT_RELU);
        avq_plan_drop_behind_end(d[0]);
        if (s == AVQ_OK) s = avq_conv2d_out_size(&r, w->cond[i].w, &k4, &oh, &ow);
        if (s == AVQ_OK) s = act(p, dt, &F[i], x->dims[0], w->cond[i].w->dims[0], oh, ow);
        if (s == AVQ_OK) s = avq_conv2d(p, w->cond[i].w, w->cond[i].b, &r, &F[i], &k4);
        avq_plan_drop_behind_end(d[1]);
        AVQ_TRY(s);
        avq_plan_release(p, &r);
        drop_all(p, &F[i]);
    }
    return AVQ_OK;
}

/* The level-0 merge h = h * m + F1 * (1 - m), F1 made band by band. */
static avq_status merge_f1_banded(avq_plan *p, avq_dtype dt, const run_ctx *c, avq_tensor *h) {
    const avq_autoencoder_plan *ap = c->ap;
    const decoder_w *w = &c->m->dec;
    avq_tensor mi, mask = avq_tensor_4d(AVQ_F32, AVQ_PLAIN, ap->batch, 1, ap->height, ap->width);
    mask.data = (void *)c->mask;
    mask.arena_off = -1;
    AVQ_TRY(load_image(p, dt, c->masked, ap->batch, c->m->cfg.decoder.out_channels, ap->height, ap->width, &mi));
    const int64_t H = ap->height, c0 = w->cond[0].w->dims[0], c1 = w->cond[1].w->dims[0];
    const int64_t rows = band_height(ap, dt, c0 + c1, c1, H, ap->width);
    for (int64_t n = 0; n < ap->batch; n++) {
        for (int64_t r0 = 0; r0 < H; r0 += rows) {
            const int64_t m = H - r0 < rows ? H - r0 : rows;
            avq_tensor o, f1, hv = rows_view(h, n, r0, m), mv = rows_view(&mask, n, r0, m);
            AVQ_TRY(f1_rows(p, dt, w, &mi, n, r0, m, &o, &f1));
            AVQ_TRY(avq_blend(p, &hv, &f1, &mv, &hv));
            avq_plan_release(p, &o);
            drop_rows(p, h, n, r0, m);
        }
    }
    avq_plan_release(p, &mi);
    return AVQ_OK;
}

/* The final merge with F0 = cond[0](masked), made band by band (F0 never whole). */
static avq_status merge_f0_banded(avq_plan *p, avq_dtype dt, const run_ctx *c, avq_tensor *h) {
    const avq_autoencoder_plan *ap = c->ap;
    avq_tensor mi, mask = avq_tensor_4d(AVQ_F32, AVQ_PLAIN, ap->batch, 1, ap->height, ap->width);
    mask.data = (void *)c->mask;
    mask.arena_off = -1;
    AVQ_TRY(load_image(p, dt, c->masked, ap->batch, c->m->cfg.decoder.out_channels, ap->height, ap->width, &mi));
    band_src s = {&mi, NULL, 0};
    band_dst d = {h, 0, &mask};
    AVQ_TRY(banded_conv(p, dt, ap, &c->m->dec.cond[0], &s, &d));
    avq_plan_release(p, &mi);
    return AVQ_OK;
}

/* ---- forwards ----------------------------------------------------------- */

static avq_status encoder_forward(avq_plan *p, void *vctx) {
    const run_ctx *c = vctx;
    const avq_autoencoder *m = c->m;
    const avq_ae_encoder_config *e = &m->cfg.encoder;
    const encoder_w *w = &m->enc;
    const avq_dtype dt = m->dtype;
    const avq_autoencoder_plan *ap = c->ap;
    avq_tensor x, h, mo, mean, logvar;
    avq_conv_params prm = same3(), one = avq_conv_simple(1, 0);
    AVQ_TRY(load_image(p, dt, c->image, ap->batch, e->in_channels, ap->height, ap->width, &x));
    AVQ_TRY(conv(p, dt, &w->conv_in, &x, &h, &prm));
    avq_plan_release(p, &x);
    for (int L = 0; L < e->num_levels; L++) {
        for (int b = 0; b < e->num_res_blocks; b++)
            AVQ_TRY(resnet_block(p, dt, &w->block[L * e->num_res_blocks + b], &h));
        if (L != e->num_levels - 1) AVQ_TRY(downsample(p, dt, &w->downsample[L], &h));
    }
    AVQ_TRY(mid(p, dt, &w->mid, &h));
    AVQ_TRY(avq_group_norm(p, &h, &h, w->norm_out.g, w->norm_out.b, GN_GROUPS, GN_EPS, 1));
    AVQ_TRY(conv(p, dt, &w->conv_out, &h, &mo, &prm)); /* [B, 2 z, h, w] */
    avq_plan_release(p, &h);
    /* quant_conv, one half at a time (the weights are const-cast views owned by the model) */
    conv_w qm = {(avq_weight *)&w->mean_w, (avq_weight *)&w->mean_b};
    conv_w ql = {(avq_weight *)&w->logvar_w, (avq_weight *)&w->logvar_b};
    AVQ_TRY(conv(p, dt, &qm, &mo, &mean, &one));
    AVQ_TRY(conv(p, dt, &ql, &mo, &logvar, &one));
    avq_plan_release(p, &mo);
    AVQ_TRY(store(p, &logvar, c->logvar));
    return store(p, &mean, c->mean);
}

static avq_status decoder_forward(avq_plan *p, void *vctx) {
    const run_ctx *c = vctx;
    const avq_autoencoder *m = c->m;
    const avq_ae_decoder_config *d = &m->cfg.decoder;
    const decoder_w *w = &m->dec;
    const avq_dtype dt = m->dtype;
    const avq_autoencoder_plan *ap = c->ap;
    const int cond = ap->task == AVQ_AE_DECODE_COND, f = avq_autoencoder_factor(m, 0);
    avq_tensor z, q, h, F[COND_LAYERS], out;
    avq_conv_params prm = same3(), one = avq_conv_simple(1, 0);
    AVQ_TRY(load_image(p, dt, c->latent, ap->batch, d->embed_dim, ap->height / f, ap->width / f, &z));
    AVQ_TRY(conv(p, dt, &w->post_quant_conv, &z, &q, &one));
    avq_plan_release(p, &z);
    AVQ_TRY(conv(p, dt, &w->conv_in, &q, &h, &prm));
    avq_plan_release(p, &q);
    AVQ_TRY(mid(p, dt, &w->mid, &h));
    if (cond) AVQ_TRY(ap->banded ? cond_encoder_banded(p, dt, w, c, F) : cond_encoder(p, dt, w, c, F));
    for (int L = d->num_levels - 1; L >= 0; L--) {
        if (cond && ap->banded && L == 0)
            AVQ_TRY(merge_f1_banded(p, dt, c, &h));
        else if (cond)
            AVQ_TRY(merge(p, c, &h, &F[L + 1]));
        for (int b = 0; b < d->blocks_per_level; b++) {
            const resnet_w *r = &w->block[L * d->blocks_per_level + b];
            AVQ_TRY(ap->banded ? resnet_banded(p, dt, ap, r, &h) : resnet_block(p, dt, r, &h));
        }
        if (L != 0)
            AVQ_TRY(ap->banded ? upsample_banded(p, dt, ap, &w->upsample[L], &h)
                               : upsample(p, dt, &w->upsample[L], &h));
    }
    if (ap->banded) {
        avq_tensor st;
        if (cond) AVQ_TRY(merge_f0_banded(p, dt, c, &h));
        AVQ_TRY(norm_stats(p, &w->norm_out, &h, &st));
        AVQ_TRY(act(p, dt, &out, ap->batch, d->out_channels, ap->height, ap->width));
        band_src s = {&h, &st, 0};
        band_dst dd = {&out, 0, NULL};
        AVQ_TRY(banded_conv(p, dt, ap, &w->conv_out, &s, &dd));
        avq_plan_release(p, &st);
        avq_plan_release(p, &h);
        return store(p, &out, c->out);
    }
    if (cond) {
        avq_tensor mi;
        AVQ_TRY(load_image(p, dt, c->masked, ap->batch, d->out_channels, ap->height, ap->width, &mi));
        AVQ_TRY(conv(p, dt, &w->cond[0], &mi, &F[0], &prm));
        avq_plan_release(p, &mi);
        AVQ_TRY(merge(p, c, &h, &F[0]));
    }
    AVQ_TRY(avq_group_norm(p, &h, &h, w->norm_out.g, w->norm_out.b, GN_GROUPS, GN_EPS, 1));
    AVQ_TRY(conv(p, dt, &w->conv_out, &h, &out, &prm));
    avq_plan_release(p, &h);
    return store(p, &out, c->out);
}

/* ---- plans and runs ----------------------------------------------------- */

static const char *task_name(avq_ae_task t) {
    return t == AVQ_AE_ENCODE ? "encode" : t == AVQ_AE_DECODE ? "decode" : "conditional decode";
}

avq_status avq_autoencoder_plan_create(const avq_autoencoder *m, avq_ae_task task, int64_t batch, int64_t height,
                                       int64_t width, avq_autoencoder_plan **out) {
    *out = NULL;
    if (task != AVQ_AE_ENCODE && task != AVQ_AE_DECODE && task != AVQ_AE_DECODE_COND)
        return avq_error(AVQ_ERR_ARG, "autoencoder: unknown task %d", (int)task);
    if (task == AVQ_AE_ENCODE && !m->cfg.has_encoder)
        return avq_error(AVQ_ERR_ARG, "autoencoder: this model has no encoder (its weights were not loaded)");
    if (task != AVQ_AE_ENCODE && !m->cfg.has_decoder)
        return avq_error(AVQ_ERR_ARG, "autoencoder: this model has no decoder (its weights were not loaded)");
    if (task == AVQ_AE_DECODE_COND && !m->cfg.decoder.conditional)
        return avq_error(AVQ_ERR_ARG,
                         "autoencoder: this decoder has no condition encoder; decode without image and mask");
    const int f = avq_autoencoder_factor(m, task == AVQ_AE_ENCODE);
    if (batch < 1)
        return avq_error(AVQ_ERR_SHAPE, "autoencoder %s: batch must be >= 1, got %lld", task_name(task),
                         (long long)batch);
    if (height < f || width < f || height % f || width % f)
        return avq_error(AVQ_ERR_SHAPE,
                         "autoencoder %s: image height and width must be positive multiples of %d, got %lld x %lld",
                         task_name(task), f, (long long)height, (long long)width);
    avq_autoencoder_plan *ap = calloc(1, sizeof *ap);
    if (!ap) return avq_error(AVQ_ERR_MEMORY, "out of memory creating an autoencoder plan");
    avq_status st = avq_plan_create(&ap->plan);
    if (st != AVQ_OK) {
        free(ap);
        return st;
    }
    ap->model = m;
    ap->task = task;
    ap->batch = batch;
    ap->height = height;
    ap->width = width;
    *out = ap;
    return AVQ_OK;
}

avq_status avq_autoencoder_plan_create_banded(const avq_autoencoder *m, avq_ae_task task, int64_t batch, int64_t height,
                                              int64_t width, int64_t band_rows, avq_autoencoder_plan **out) {
    *out = NULL;
    if (task == AVQ_AE_ENCODE)
        return avq_error(AVQ_ERR_ARG, "autoencoder: banded plans decode; the encoder has no banded form");
    if (band_rows < 0)
        return avq_error(AVQ_ERR_ARG,
                         "autoencoder banded decode: band_rows must be >= 1 (or 0: from the %d MiB "
                         "budget), got %lld",
                         (int)(AVQ_AE_BAND_BUDGET_BYTES >> 20), (long long)band_rows);
    AVQ_TRY(avq_autoencoder_plan_create(m, task, batch, height, width, out));
    (*out)->banded = 1;
    (*out)->band_rows = band_rows;
    return AVQ_OK;
}

int avq_autoencoder_plan_banded(const avq_autoencoder_plan *p) { return p->banded; }

avq_status avq_autoencoder_plan_set_spill(avq_autoencoder_plan *p, const char *dir, size_t budget, int optional) {
    if (dir && !p->banded)
        return avq_error(AVQ_ERR_ARG,
                         "autoencoder: spilling needs a banded decode plan (the whole %s reads every activation at "
                         "once)",
                         task_name(p->task));
    return avq_plan_set_spill(p->plan, dir, budget, optional);
}

void avq_autoencoder_plan_destroy(avq_autoencoder_plan *p) {
    if (!p) return;
    avq_plan_destroy(p->plan);
    free(p->masked);
    free(p);
}

const avq_plan *avq_autoencoder_plan_core(const avq_autoencoder_plan *p) { return p->plan; }

size_t avq_autoencoder_plan_bytes(const avq_autoencoder_plan *p) {
    return avq_plan_arena_bytes(p->plan) + avq_plan_scratch_bytes(p->plan);
}

static avq_status check_run(const avq_autoencoder *m, const avq_autoencoder_plan *p, avq_ae_task want) {
    if (p->model != m) return avq_error(AVQ_ERR_ARG, "autoencoder: the plan was made for another model");
    if ((want == AVQ_AE_ENCODE) != (p->task == AVQ_AE_ENCODE))
        return avq_error(AVQ_ERR_ARG, "autoencoder: a %s plan cannot %s", task_name(p->task), task_name(want));
    return AVQ_OK;
}

avq_status avq_autoencoder_encode(avq_autoencoder *m, avq_autoencoder_plan *p, const float *image, const float *noise,
                                  float *mean, float *logvar, float *sample) {
    if (!m || !p || !image || !mean || !logvar) return avq_error(AVQ_ERR_ARG, "autoencoder encode: null argument");
    if ((noise == NULL) != (sample == NULL))
        return avq_error(AVQ_ERR_ARG, "autoencoder encode: noise and sample go together");
    AVQ_TRY(check_run(m, p, AVQ_AE_ENCODE));
    run_ctx ctx = {m, p, image, NULL, NULL, NULL, mean, logvar, NULL};
    AVQ_TRY(avq_plan_run(p->plan, encoder_forward, &ctx));
    /* The posterior (SPEC §3.4), in f32 like the reference. */
    const int f = avq_autoencoder_factor(m, 1);
    const int64_t n = p->batch * m->cfg.encoder.embed_dim * (p->height / f) * (p->width / f);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float lv = logvar[i];
        lv = lv < LOGVAR_MIN ? LOGVAR_MIN : (lv > LOGVAR_MAX ? LOGVAR_MAX : lv);
        logvar[i] = lv;
        if (sample) sample[i] = mean[i] + expf(0.5f * lv) * noise[i];
    }
    return AVQ_OK;
}

avq_status avq_autoencoder_decode(avq_autoencoder *m, avq_autoencoder_plan *p, const float *latent, const float *image,
                                  const float *mask, float *out) {
    if (!m || !p || !latent || !out) return avq_error(AVQ_ERR_ARG, "autoencoder decode: null argument");
    AVQ_TRY(check_run(m, p, AVQ_AE_DECODE));
    const int cond = p->task == AVQ_AE_DECODE_COND;
    if (cond && (!image || !mask))
        return avq_error(AVQ_ERR_ARG, "autoencoder decode: the conditional plan needs both image and mask");
    if (!cond && (image || mask))
        return avq_error(AVQ_ERR_ARG, "autoencoder decode: image and mask need a conditional plan");
    if (cond) {
        /* The decoder masks the full image itself (SPEC §4.4): (1 - mask) * image. */
        const int64_t C = m->cfg.decoder.out_channels, HW = p->height * p->width;
        if (!p->masked) {
            p->masked = malloc((size_t)(p->batch * C * HW) * sizeof(float));
            if (!p->masked) return avq_error(AVQ_ERR_MEMORY, "out of memory for the masked image");
        }
        float *mi = p->masked;
#pragma omp parallel for collapse(2) schedule(static)
        for (int64_t b = 0; b < p->batch; b++)
            for (int64_t ch = 0; ch < C; ch++) {
                const float *img = image + (b * C + ch) * HW, *msk = mask + b * HW;
                float *dst = mi + (b * C + ch) * HW;
                for (int64_t i = 0; i < HW; i++) dst[i] = (1.f - msk[i]) * img[i];
            }
    }
    run_ctx ctx = {m, p, image, latent, mask, p->masked, NULL, NULL, out};
    return avq_plan_run(p->plan, decoder_forward, &ctx);
}
