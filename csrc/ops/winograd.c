/* 3x3 stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3).
 *
 * Each 2x2 output tile is A^T [ (G g G^T) . (B^T d B) ] A over its 4x4 input
 * patch d: 16 multiplies per (tile, input channel, output channel) where the
 * direct form needs 36. The 16 elementwise products summed over input
 * channels are 16 GEMMs, [tiles, Cin] x [Cin, Cout], run as one batched oneDNN
 * matmul whose weights U = G g G^T are made and packed once, and then are
 * the weight's only copy (its owned source is freed). The transforms
 * only add and subtract (plus the 1/2 of G), so rounding stays at the level
 * of a direct convolution's.
 *
 * Tiles go in chunks so the transformed input V [16, chunk, Cin] and the
 * products M [16, chunk, Cout] stay a few MiB: for each chunk, the input
 * transform (OpenMP, vectorised over channels: activations are NHWC), the
 * matmul, then the output transform with bias, activation and residual add
 * fused (a per-sample [N, C, 1, 1] add included, which oneDNN's direct
 * convolution cannot fuse). Zero padding of 1 is read from a zero row.
 *
 * bf16 activations: the transforms run in f32 on the bf16 values (exact: they
 * only add and subtract), V is stored as bf16 and the matmul is bf16 x bf16
 * -> f32, so M and the output transform stay f32; the output is rounded to
 * bf16 once, after bias, activation and residual add, as the direct bf16
 * conv rounds its post-ops. U = G g G^T is made in f32 from the weight's own
 * values (f32 or bf16) and rounded to bf16 once, when it is packed. */
#include <omp.h>
#include <stdio.h>

#include "core/engine.h"
#include "ops_internal.h"
#include "simd.h"

/* V + M per chunk: a quarter of the input and output's own size, at most
 * 16 MiB, so the workspace grows slower than the activations (tiled decodes
 * rely on it) and stays in cache; but at least 64 tiles, below which the
 * GEMMs get too short to run at speed. */
#define WINO_CHUNK_MAX_BYTES (16 << 20)
#define WINO_CHUNK_MIN_TILES 64

/* Auto-selection: the GEMMs must be big enough to beat oneDNN's direct conv,
 * the smaller the channel counts the more tiles they need (min_tiles). bf16
 * only on AVX512-BF16 without AMX (oneDNN avx512_core_bf16), where it was
 * measured. With AMX, oneDNN's direct bf16 conv runs on tiles at several
 * times the AVX512-BF16 rate, so the transforms (memory-bound, as fast as
 * before) would weigh far more: it stays direct there, unmeasured (no AMX
 * machine was at hand). Below AVX512-BF16 (oneDNN's bf16 emulation on plain
 * AVX-512) it stays direct too, as it was.
 *
 * Measured (ops.timeit best of 5, EPYC AVX512-BF16, 2 threads, load 0.4-1.3),
 * ms direct -> Winograd, fp32 | bf16, by the smaller channel count:
 *   1280 (and 2560->1280):  4 tiles (4x4 b1) 3.4 -> 3.8 | 1.3 -> 1.9 (2560: 7.1 -> 9.4 | 3.9 -> 3.3);
 *        8 (4x4 b2) 6.0 -> 4.3 | 2.1 -> 1.9 (2560: 11.6 -> 8.4 | 9.3 -> 5.0);
 *        32 (8x8 b2) 29 -> 17 | 7.4 -> 4.6 (2560: 31 -> 19 | 16 -> 9.3); 512 259 -> 136 | 127 -> 67
 *   320..640:  8 tiles 0.2-0.8 -> 0.25-0.9 | 0.13-0.4 -> 0.18-0.36;
 *        16 (8x8 b1) 320 0.56 -> 0.52 | 0.32 -> 0.40, 640 1.86 -> 1.89 | 1.08 -> 0.92;
 *        32 (8x8 b2) 320 0.98 -> 0.94 | 0.55 -> 0.43, 512 2.5 -> 1.8 | 1.3 -> 1.1,
 *        640 3.8 -> 2.6 | 1.8 -> 1.2; 128 640 15.6 -> 9.0 | 7.6 -> 4.3
 *   256:  32 tiles 0.59 -> 0.62 | 0.36 -> 0.40; 64 1.2 -> 0.7 | 0.66 -> 0.47;
 *        512 10.0 -> 6.1 | 5.1 -> 3.6
 *   128:  512 tiles 2.7 -> 2.7 | 1.4 -> 2.0; 1024 5.1 -> 5.3 | 2.6 -> 3.7;
 *        2048 10.6 -> 8.3 | 5.2 -> 6.1; 4096 22 -> 14 | 10.6 -> 10.3
 *   64:   1024 tiles 1.4 -> 3.0 | 0.7 -> 2.2; 4096 5.3 -> 6.1 | 2.7 -> 5.7
 * Below 128 channels the GEMMs are too thin for the transforms to pay at any
 * size. The decision is made once per weight, for every shape it fits
 * (avq_conv2d_winograd_fits): a Winograd weight's source is freed once U is
 * made, so direct convolution could not run without a second copy. */
#define WINO_MIN_CHANNELS 128

static int64_t min_tiles(int64_t ci, int64_t co, int bf16) {
    const int64_t c = ci < co ? ci : co;
    if (c >= 1280) return 8;
    if (c >= 320) return 32;
    if (c >= 256) return 64;
    return bf16 ? 4096 : 2048;
}

static int bf16_isa(void) {
    const avq_isa *isa = avq_isa_get();
    return isa->level >= AVQ_ISA_AVX512 && isa->bf16_native && !isa->amx_bf16;
}

typedef struct wino_shape {
    int64_t n, h, w, ci, co; /* input [n, ci, h, w]; output [n, co, h, w] */
    int64_t th, tw, tiles;   /* tiles per column and row, in all */
    int64_t chunk, nchunks;  /* tiles per chunk (the last one padded with zero rows) */
} wino_shape;

static int fits_shape(const avq_weight *w, const avq_tensor *x, const avq_conv_params *prm) {
    return w->ndim == 4 && w->dims[2] == 3 && w->dims[3] == 3 && x->ndim == 4 && x->dims[1] == w->dims[1] &&
           prm->stride_h == 1 && prm->stride_w == 1 && prm->pad_t == 1 && prm->pad_l == 1 && prm->pad_b == 1 &&
           prm->pad_r == 1 && (x->dtype == AVQ_F32 || x->dtype == AVQ_BF16) && x->layout == AVQ_NHWC;
}

/* Records AUTO's decision for w unless one was made; returns the decision.
 * The weight is never a const object: the decision is a memo, written under
 * the pack lock. */
static int decide(const avq_weight *w, int wino) {
    avq_weight *m = (avq_weight *)w;
    avq_pack_lock();
    if (!m->wino_auto) m->wino_auto = wino ? 1 : -1;
    const int d = m->wino_auto;
    avq_pack_unlock();
    return d > 0;
}

/* Decided once per weight, at its first conv where Winograd applies (or when
 * it is forced and U made): the plans built before a later, larger shape
 * replay as they were built, and a weight holds U or its direct copy, not
 * both (a model's Winograd weights drop their source). */
int avq_conv2d_winograd_fits(const avq_weight *w, const avq_tensor *x, const avq_conv_params *prm) {
    if (!fits_shape(w, x, prm) || (prm->add && prm->add->dtype != x->dtype)) return 0;
    const int64_t tiles = x->dims[0] * ((x->dims[2] + 1) / 2) * ((x->dims[3] + 1) / 2);
    const int bf = x->dtype == AVQ_BF16;
    return decide(w, (!bf || bf16_isa()) && w->dims[0] >= WINO_MIN_CHANNELS && w->dims[1] >= WINO_MIN_CHANNELS &&
                         tiles >= min_tiles(w->dims[1], w->dims[0], bf));
}

static wino_shape shape_of(const avq_weight *w, const avq_tensor *x) {
    const int64_t esz = (int64_t)avq_dtype_size(x->dtype); /* of x, y and V; M is f32 */
    wino_shape s;
    s.n = x->dims[0];
    s.ci = x->dims[1];
    s.h = x->dims[2];
    s.w = x->dims[3];
    s.co = w->dims[0];
    s.th = (s.h + 1) / 2;
    s.tw = (s.w + 1) / 2;
    s.tiles = s.n * s.th * s.tw;
    int64_t per_tile = 16 * (s.ci * esz + s.co * (int64_t)sizeof(float));
    int64_t budget = s.n * s.h * s.w * (s.ci + s.co) * esz / 4;
    if (budget > WINO_CHUNK_MAX_BYTES) budget = WINO_CHUNK_MAX_BYTES;
    int64_t most = budget / per_tile;
    if (most < WINO_CHUNK_MIN_TILES) most = WINO_CHUNK_MIN_TILES;
    s.nchunks = (s.tiles + most - 1) / most;
    s.chunk = (s.tiles + s.nchunks - 1) / s.nchunks;
    return s;
}

/* U[a][i][o] = (G g G^T)[a] for g = w[o, i] (3x3), G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1].
 * o innermost so that U is written in order (o outermost stored one float per
 * cache line visited, a slow build for the large convs). */
static avq_status transform_weights(const avq_weight *w, float *u, void *ctx) {
    (void)ctx;
    const int64_t co = w->dims[0], ci = w->dims[1];
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < ci; i++) {
        for (int64_t o = 0; o < co; o++) {
            float g[9], t[4][3];
            avq_load_row(w->data, w->dtype, (o * ci + i) * 9, g, 9);
            for (int c = 0; c < 3; c++) { /* t = G g */
                t[0][c] = g[c];
                t[1][c] = 0.5f * (g[c] + g[3 + c] + g[6 + c]);
                t[2][c] = 0.5f * (g[c] - g[3 + c] + g[6 + c]);
                t[3][c] = g[6 + c];
            }
            for (int r = 0; r < 4; r++) { /* (G g) G^T */
                float v[4] = {t[r][0], 0.5f * (t[r][0] + t[r][1] + t[r][2]), 0.5f * (t[r][0] - t[r][1] + t[r][2]),
                              t[r][2]};
                for (int c = 0; c < 4; c++) u[((int64_t)(r * 4 + c) * ci + i) * co + o] = v[c];
            }
        }
    }
    return AVQ_OK;
}

/* V rows of tiles [t0, t0 + chunk) from x (dtype dt; zeros: a zero row at least ci wide). */
static void input_chunk(const wino_shape *s, avq_dtype dt, const void *x, int64_t t0, const float *zeros, void *V) {
    const int64_t per_img = s->th * s->tw, nt = s->tiles - t0 < s->chunk ? s->tiles - t0 : s->chunk;
    const size_t esz = avq_dtype_size(dt);
    const avq_simd_kernels *k = avq_simd();
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < s->chunk; r++) {
        void *v[16];
        for (int a = 0; a < 16; a++) v[a] = (char *)V + ((a * s->chunk + r) * s->ci) * esz;
        if (r >= nt) { /* padding rows of the last chunk */
            for (int a = 0; a < 16; a++) memset(v[a], 0, (size_t)s->ci * esz);
            continue;
        }
        int64_t t = t0 + r, n = t / per_img, ty = t % per_img / s->tw, tx = t % s->tw;
        const void *d[16];
        for (int i = 0; i < 4; i++) {
            int64_t yy = 2 * ty - 1 + i;
            for (int j = 0; j < 4; j++) {
                int64_t xx = 2 * tx - 1 + j;
                int in = yy >= 0 && yy < s->h && xx >= 0 && xx < s->w;
                d[i * 4 + j] =
                    in ? (const char *)x + (((n * s->h + yy) * s->w + xx) * s->ci) * esz : (const void *)zeros;
            }
        }
        if (dt == AVQ_BF16)
            k->wino_input_tile_bf16((const uint16_t *const *)d, (uint16_t *const *)v, s->ci);
        else
            k->wino_input_tile((const float *const *)d, (float *const *)v, s->ci);
    }
}

typedef struct out_args {
    const float *bias; /* [co] or zeros */
    const float *add;  /* NULL, the output's shape, or [n, co] */
    int add_per_channel;
    avq_act act;
    float *spill; /* threads x co (bf16: threads x 4 x co): where the outputs past the edge go */
} out_args;

static void output_chunk(const wino_shape *s, const float *M, int64_t t0, const float *zeros, const out_args *o,
                         float *y) {
    const int64_t per_img = s->th * s->tw, nt = s->tiles - t0 < s->chunk ? s->tiles - t0 : s->chunk;
    const avq_simd_kernels *k = avq_simd();
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < nt; r++) {
        float *spill = o->spill + omp_get_thread_num() * s->co;
        const float *m[16];
        for (int a = 0; a < 16; a++) m[a] = M + (a * s->chunk + r) * s->co;
        int64_t t = t0 + r, n = t / per_img, ty = t % per_img / s->tw, tx = t % s->tw;
        float *out[4];
        const float *add[4];
        int valid[4];
        for (int k = 0; k < 4; k++) {
            int64_t yy = 2 * ty + k / 2, xx = 2 * tx + k % 2;
            int64_t off = ((n * s->h + yy) * s->w + xx) * s->co;
            valid[k] = yy < s->h && xx < s->w;
            out[k] = valid[k] ? y + off : spill;
            add[k] = !o->add || o->act != AVQ_ACT_NONE ? zeros
                     : o->add_per_channel              ? o->add + n * s->co
                     : valid[k]                        ? o->add + off
                                                       : zeros;
        }
        k->wino_output_tile(m, out, o->bias, add, s->co);
        if (o->act == AVQ_ACT_NONE) continue;
        for (int k = 0; k < 4; k++) { /* act first, then the add: the fused order of the direct path */
            if (!valid[k]) continue;
            avq_act_row(out[k], s->co, o->act);
            if (!o->add) continue;
            const float *ak =
                o->add +
                (o->add_per_channel ? n * s->co : ((n * s->h + 2 * ty + k / 2) * s->w + 2 * tx + k % 2) * s->co);
            for (int64_t c = 0; c < s->co; c++) out[k][c] += ak[c];
        }
    }
}

/* output_chunk for bf16 y and add: each tile in f32 into the thread's 4 scratch
 * rows, then act, add and the one rounding per valid output row. */
static void output_chunk_bf16(const wino_shape *s, const float *M, int64_t t0, const float *zeros, const out_args *o,
                              const uint16_t *add, uint16_t *y) {
    const int64_t per_img = s->th * s->tw, nt = s->tiles - t0 < s->chunk ? s->tiles - t0 : s->chunk;
    const avq_simd_kernels *k = avq_simd();
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < nt; r++) {
        float *tmp = o->spill + omp_get_thread_num() * 4 * s->co;
        const float *m[16];
        for (int a = 0; a < 16; a++) m[a] = M + (a * s->chunk + r) * s->co;
        int64_t t = t0 + r, n = t / per_img, ty = t % per_img / s->tw, tx = t % s->tw;
        float *out[4] = {tmp, tmp + s->co, tmp + 2 * s->co, tmp + 3 * s->co};
        const float *none[4] = {zeros, zeros, zeros, zeros};
        k->wino_output_tile(m, out, o->bias, none, s->co);
        for (int q = 0; q < 4; q++) {
            int64_t yy = 2 * ty + q / 2, xx = 2 * tx + q % 2;
            if (yy >= s->h || xx >= s->w) continue;
            int64_t off = ((n * s->h + yy) * s->w + xx) * s->co;
            if (o->act != AVQ_ACT_NONE) k->act_row(out[q], s->co, o->act); /* act first, then the add */
            const uint16_t *a = !add ? NULL : o->add_per_channel ? add + n * s->co : add + off;
            k->add_store_bf16(out[q], a, y + off, s->co);
        }
    }
}

static avq_status build_matmul(avq_plan *p, avq_step *s, avq_weight *w, const wino_shape *ws, avq_dtype dt) {
    avq_status st = AVQ_OK;
    dnnl_memory_desc_t src_md = NULL, wany_md = NULL, dst_md = NULL, usrc_md = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_memory_t umem;
    dnnl_dims_t sd = {16, ws->chunk, ws->ci}, wd = {16, ws->ci, ws->co}, dd = {16, ws->chunk, ws->co};
    const dnnl_data_type_t vdt = avq_dnnl_dt(dt); /* V and U; M is f32 */
    AVQ_DNNL(dnnl_memory_desc_create_with_tag(&src_md, 3, sd, vdt, dnnl_abc), "winograd input md");
    AVQ_DNNL(dnnl_memory_desc_create_with_tag(&wany_md, 3, wd, vdt, dnnl_format_tag_any), "winograd weights md");
    AVQ_DNNL(dnnl_memory_desc_create_with_tag(&usrc_md, 3, wd, dnnl_f32, dnnl_abc), "winograd weights source md");
    AVQ_DNNL(dnnl_memory_desc_create_with_tag(&dst_md, 3, dd, dnnl_f32, dnnl_abc), "winograd output md");
    if ((st = avq_primitive_attr(&attr)) != AVQ_OK) goto done;
    AVQ_DNNL(dnnl_matmul_primitive_desc_create(&pd, avq_plan_engine(p), src_md, wany_md, NULL, dst_md, attr),
             "winograd matmul descriptor");
    if ((st = avq_weight_packed_derived(w, usrc_md, transform_weights, NULL,
                                        dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0), &umem)) != AVQ_OK)
        goto done;
    /* U is now the weight's only copy (a model's weights; the ops binding's are
     * borrowed and kept), and AUTO takes Winograd for it from now on. */
    decide(w, 1);
    avq_weight_drop_source(w);
    if ((st = avq_step_arg(s, DNNL_ARG_SRC, src_md)) != AVQ_OK) goto done;
    if ((st = avq_step_arg(s, DNNL_ARG_DST, dst_md)) != AVQ_OK) goto done;
    if ((st = avq_step_arg_fixed(s, DNNL_ARG_WEIGHTS, umem)) != AVQ_OK) goto done;
    st = avq_step_set_primitive(p, s, pd);
    pd = NULL;
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (src_md) dnnl_memory_desc_destroy(src_md);
    if (wany_md) dnnl_memory_desc_destroy(wany_md);
    if (usrc_md) dnnl_memory_desc_destroy(usrc_md);
    if (dst_md) dnnl_memory_desc_destroy(dst_md);
    return st;
}

avq_status avq_conv2d_winograd(avq_plan *p, avq_weight *w, avq_weight *b, const avq_tensor *x, avq_tensor *y,
                               const avq_conv_params *prm) {
    if (!fits_shape(w, x, prm))
        return avq_error(AVQ_ERR_ARG,
                         "Winograd convolution needs a 3x3 kernel, stride 1, padding 1 and f32 or bf16 "
                         "channels-last tensors (conv %s)",
                         w->name ? w->name : "");
    if (prm->add && prm->add->dtype != x->dtype)
        return avq_error(AVQ_ERR_DTYPE, "Winograd convolution %s needs its residual in the input's dtype",
                         w->name ? w->name : "");
    const wino_shape ws = shape_of(w, x);
    const int building = avq_plan_building(p);
    avq_step *s;
    AVQ_TRY(avq_plan_step(p, AVQ_STEP_WINOGRAD, &s));
    if (building) AVQ_TRY(build_matmul(p, s, w, &ws, x->dtype));

    /* Bias as f32; its cached copy is found again (no allocation) on every run. */
    const float *bias = NULL;
    if (b) {
        dnnl_memory_t bmem;
        void *h = NULL;
        AVQ_TRY(avq_bias_mem(b, ws.co, &bmem, NULL));
        if (dnnl_memory_get_data_handle(bmem, &h) != dnnl_success || !h)
            return avq_error(AVQ_ERR_DNNL, "cannot read the bias of %s", w->name ? w->name : "");
        bias = (const float *)h;
    }

    const int64_t zn = ws.ci > ws.co ? ws.ci : ws.co;
    const int nthr = avq_get_num_threads();
    avq_tensor V, M, Z, S;
    const int bf = x->dtype == AVQ_BF16;
    int64_t vd[1] = {16 * ws.chunk * ws.ci}, md[1] = {16 * ws.chunk * ws.co}, zd[1] = {zn},
            sd[1] = {nthr * (bf ? 4 : 1) * ws.co};
    AVQ_TRY(avq_plan_tensor(p, &V, x->dtype, AVQ_PLAIN, 1, vd));
    AVQ_TRY(avq_plan_tensor(p, &M, AVQ_F32, AVQ_PLAIN, 1, md));
    AVQ_TRY(avq_plan_tensor(p, &Z, AVQ_F32, AVQ_PLAIN, 1, zd));
    AVQ_TRY(avq_plan_tensor(p, &S, AVQ_F32, AVQ_PLAIN, 1, sd));
    avq_status st = AVQ_OK;
    if (!building) {
        float *zeros = (float *)Z.data;
        memset(zeros, 0, (size_t)zn * sizeof(float));
        out_args o = {bias ? bias : zeros, prm->add && !bf ? (const float *)prm->add->data : NULL,
                      prm->add && prm->add->dims[2] == 1 && prm->add->dims[3] == 1 && (ws.h != 1 || ws.w != 1),
                      prm->act, (float *)S.data};
        for (int64_t k = 0; k < ws.nchunks && st == AVQ_OK; k++) {
            int64_t t0 = k * ws.chunk;
            input_chunk(&ws, x->dtype, x->data, t0, zeros, V.data);
            avq_arg_data d[] = {{DNNL_ARG_SRC, V.data}, {DNNL_ARG_DST, M.data}};
            st = avq_step_exec(p, s, d, 2);
            if (st != AVQ_OK) break;
            if (bf)
                output_chunk_bf16(&ws, (const float *)M.data, t0, zeros, &o,
                                  prm->add ? (const uint16_t *)prm->add->data : NULL, (uint16_t *)y->data);
            else
                output_chunk(&ws, (const float *)M.data, t0, zeros, &o, (float *)y->data);
        }
    }
    avq_plan_release(p, &S);
    avq_plan_release(p, &Z);
    avq_plan_release(p, &M);
    avq_plan_release(p, &V);
    return st;
}
