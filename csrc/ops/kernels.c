/* OpenMP kernels for what oneDNN 3.2 lacks or does differently: group norm
 * (no primitive), PyTorch's nearest-resize index rule, mask blends, channel
 * concat, the timestep embedding, embeddings, and plain elementwise ops.
 * Statistics and arithmetic are fp32 whatever the storage dtype. Kernels do
 * nothing while a plan is being built (they own no primitives). */
#include <math.h>
#include <stdio.h>

#include "ops_internal.h"
#include "simd.h"
#include "vmath.h"

float avq_expf(float x) { return avq_vexpf(x); }

#define ROW_CHUNK 1024

static avq_status need_rows(const avq_tensor *t, const char *what, int64_t *rows, int64_t *cols) {
    char b[96];
    if (avq_tensor_numel(t) <= 0) return avq_error(AVQ_ERR_SHAPE, "%s is empty", what);
    if (t->ndim == 4 && t->layout != AVQ_NHWC && t->dims[1] != 1)
        return avq_error(AVQ_ERR_INTERNAL, "%s %s must be channels-last", what, avq_tensor_str(t, b, sizeof b));
    avq_tensor_rows_cols(t, rows, cols);
    return AVQ_OK;
}

static const float *wdata_f32(const avq_weight *w, float *tmp, int64_t n) {
    if (w->dtype == AVQ_F32) return (const float *)w->data;
    for (int64_t i = 0; i < n; i++) tmp[i] = avq_bf16_to_f32(((const uint16_t *)w->data)[i]);
    return tmp;
}

/* ---- group norm ------------------------------------------------------- */

/* Pixels per partial sum. Fixed (not per thread) so results do not depend on
 * the thread count. */
#define GN_BLOCK 128

/* Checks a GroupNorm's operands: x NHWC or [N, C], C split into `groups`,
 * gamma and beta [C]. Sets rows (pixels over the batch) and C. */
static avq_status gn_check(const avq_tensor *x, const avq_weight *gamma, const avq_weight *beta, int groups, float eps,
                           int64_t *rows, int64_t *C) {
    AVQ_TRY(need_rows(x, "group_norm input", rows, C));
    if (groups < 1 || *C % groups)
        return avq_error(AVQ_ERR_SHAPE, "group_norm: %lld channels cannot form %d groups", (long long)*C, groups);
    if (gamma->ndim != 1 || gamma->dims[0] != *C || beta->ndim != 1 || beta->dims[0] != *C)
        return avq_error(AVQ_ERR_SHAPE, "group_norm weight %s and bias %s must have shape [%lld]",
                         gamma->name ? gamma->name : "", beta->name ? beta->name : "", (long long)*C);
    if (!(eps > 0.f)) return avq_error(AVQ_ERR_ARG, "group_norm eps must be > 0");
    return AVQ_OK;
}

/* Per (n, c): the group mean M and the scale A = gamma / std of x (N samples
 * of HW pixels), from the per-block channel sums in part [N, nblk, C]. */
static void gn_stats(const avq_tensor *x, int64_t N, int64_t HW, int64_t C, int groups, float eps, const float *g,
                     float *part, float *M, float *A) {
    int64_t cg = C / groups, nblk = (HW + GN_BLOCK - 1) / GN_BLOCK;
    const void *xd = x->data;
    avq_dtype dt = x->dtype;
    double cnt = (double)(HW * cg);
    /* Two passes over the tensor in memory order (mean, then centred
     * squares: fp32 parity with PyTorch even for large means), each
     * parallel over pixel blocks and vectorised over channels; the block
     * sums are reduced per group in double, in a fixed order, serially
     * (N x nblk x C adds: small next to a pass, and one barrier fewer). */
    const avq_simd_kernels *k = avq_simd();
    for (int pass = 0; pass < 2; pass++) {
#pragma omp parallel for collapse(2) schedule(static)
        for (int64_t n = 0; n < N; n++) {
            for (int64_t b = 0; b < nblk; b++) {
                float *acc = part + (n * nblk + b) * C;
                int64_t r0 = b * GN_BLOCK, len = HW - r0 < GN_BLOCK ? HW - r0 : GN_BLOCK;
                for (int64_t c = 0; c < C; c++) acc[c] = 0.f;
                k->gn_accumulate(xd, dt, n * HW + r0, len, C, M + n * C, acc, pass);
            }
        }
        for (int64_t n = 0; n < N; n++) {
            for (int64_t gi = 0; gi < groups; gi++) {
                double sum = 0.0;
                for (int64_t b = 0; b < nblk; b++) {
                    const float *acc = part + (n * nblk + b) * C + gi * cg;
                    for (int64_t c = 0; c < cg; c++) sum += acc[c];
                }
                if (pass == 0) {
                    float mean = (float)(sum / cnt);
                    for (int64_t c = gi * cg; c < (gi + 1) * cg; c++) M[n * C + c] = mean;
                } else {
                    float rstd = (float)(1.0 / sqrt(sum / cnt + (double)eps));
                    for (int64_t c = gi * cg; c < (gi + 1) * cg; c++) A[n * C + c] = rstd * g[c];
                }
            }
        }
    }
}

avq_status avq_group_norm(avq_plan *p, const avq_tensor *x, avq_tensor *y, const avq_weight *gamma,
                          const avq_weight *beta, int groups, float eps, int silu_after) {
    int64_t rows, C;
    char bx[96], by[96];
    AVQ_TRY(need_rows(x, "group_norm input", &rows, &C));
    if (!avq_tensor_same_shape(x, y))
        return avq_error(AVQ_ERR_SHAPE, "group_norm output %s must match input %s", avq_tensor_str(y, by, sizeof by),
                         avq_tensor_str(x, bx, sizeof bx));
    AVQ_TRY(gn_check(x, gamma, beta, groups, eps, &rows, &C));
    int64_t N = x->dims[0], HW = rows / N, nblk = (HW + GN_BLOCK - 1) / GN_BLOCK;
    /* scratch: per-block channel sums [N, nblk, C], then per (n, c): the group
     * mean M and the scale A; gamma and beta as f32 */
    avq_tensor ws;
    int64_t wsd[1] = {N * nblk * C + 2 * N * C + 2 * C};
    AVQ_TRY(avq_plan_tensor(p, &ws, AVQ_F32, AVQ_PLAIN, 1, wsd));
    if (!avq_plan_building(p)) {
        float *part = (float *)ws.data, *M = part + N * nblk * C, *A = M + N * C, *gtmp = A + N * C, *btmp = gtmp + C;
        const float *g = wdata_f32(gamma, gtmp, C), *bt = wdata_f32(beta, btmp, C);
        const void *xd = x->data;
        avq_dtype dt = x->dtype;
        const avq_simd_kernels *k = avq_simd();
        gn_stats(x, N, HW, C, groups, eps, g, part, M, A);
        void *yd = y->data;
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            float buf[ROW_CHUNK];
            int64_t n = r / HW;
            for (int64_t c0 = 0; c0 < C; c0 += ROW_CHUNK) {
                int64_t m = C - c0 < ROW_CHUNK ? C - c0 : ROW_CHUNK;
                avq_load_row(xd, dt, r * C + c0, buf, m);
                k->gn_apply(buf, M + n * C + c0, A + n * C + c0, bt + c0, m, silu_after);
                avq_store_row(yd, y->dtype, r * C + c0, buf, m);
            }
        }
    }
    avq_plan_release(p, &ws);
    return AVQ_OK;
}

/* ---- row ranges (banded decoding) -------------------------------------- */

avq_status avq_group_norm_stats(avq_plan *p, const avq_tensor *x, avq_tensor *stats, const avq_weight *gamma,
                                const avq_weight *beta, int groups, float eps) {
    int64_t rows, C;
    char bx[96], bs[96];
    if (x->ndim != 4) return avq_error(AVQ_ERR_SHAPE, "group_norm_stats: the input must be 4-D NHWC");
    AVQ_TRY(gn_check(x, gamma, beta, groups, eps, &rows, &C));
    int64_t N = x->dims[0], HW = rows / N, nblk = (HW + GN_BLOCK - 1) / GN_BLOCK;
    if (stats->ndim != 3 || stats->dtype != AVQ_F32 || stats->layout != AVQ_PLAIN || stats->dims[0] != N ||
        stats->dims[1] != 3 || stats->dims[2] != C)
        return avq_error(
            AVQ_ERR_SHAPE, "group_norm_stats: statistics %s must be f32 plain [%lld, 3, %lld] for input %s",
            avq_tensor_str(stats, bs, sizeof bs), (long long)N, (long long)C, avq_tensor_str(x, bx, sizeof bx));
    /* scratch: the per-block channel sums [N, nblk, C] and M, A as gn_stats makes them */
    avq_tensor ws;
    int64_t wsd[1] = {N * nblk * C + 2 * N * C + C};
    AVQ_TRY(avq_plan_tensor(p, &ws, AVQ_F32, AVQ_PLAIN, 1, wsd));
    if (!avq_plan_building(p)) {
        float *part = (float *)ws.data, *M = part + N * nblk * C, *A = M + N * C, *tmp = A + N * C;
        float *out = (float *)stats->data;
        gn_stats(x, N, HW, C, groups, eps, wdata_f32(gamma, tmp, C), part, M, A);
        const float *bt = wdata_f32(beta, tmp, C);
        for (int64_t n = 0; n < N; n++) {
            memcpy(out + (n * 3 + 0) * C, M + n * C, (size_t)C * sizeof(float));
            memcpy(out + (n * 3 + 1) * C, A + n * C, (size_t)C * sizeof(float));
            memcpy(out + (n * 3 + 2) * C, bt, (size_t)C * sizeof(float));
        }
    }
    avq_plan_release(p, &ws);
    return AVQ_OK;
}

/* y [1, C, rows, Wy] NHWC takes rows from sample n of x [N, C, H, Wx] NHWC
 * (Wy = Wx, or 2 Wx for up2), same dtype. */
static avq_status rows_pair(const avq_tensor *x, const avq_tensor *y, int64_t n, int up2, const char *op) {
    char bx[96], by[96];
    int64_t wy = up2 ? 2 * x->dims[3] : x->dims[3];
    if (x->ndim != 4 || y->ndim != 4 || x->layout != AVQ_NHWC || y->layout != AVQ_NHWC || x->dtype != y->dtype ||
        y->dims[0] != 1 || y->dims[1] != x->dims[1] || y->dims[3] != wy)
        return avq_error(AVQ_ERR_SHAPE, "%s: output %s must be NHWC [1, %lld, rows, %lld] of the input %s's dtype", op,
                         avq_tensor_str(y, by, sizeof by), (long long)x->dims[1], (long long)wy,
                         avq_tensor_str(x, bx, sizeof bx));
    if (avq_tensor_numel(x) <= 0 || avq_tensor_numel(y) <= 0) return avq_error(AVQ_ERR_SHAPE, "%s: empty tensor", op);
    if (n < 0 || n >= x->dims[0])
        return avq_error(AVQ_ERR_ARG, "%s: sample %lld outside the batch of %lld", op, (long long)n,
                         (long long)x->dims[0]);
    return AVQ_OK;
}

avq_status avq_group_norm_rows(avq_plan *p, const avq_tensor *x, const avq_tensor *stats, avq_tensor *y, int64_t n,
                               int64_t r0, int silu_after) {
    char bs[96];
    AVQ_TRY(rows_pair(x, y, n, 0, "group_norm_rows"));
    const int64_t C = x->dims[1], H = x->dims[2], W = x->dims[3], rows = y->dims[2];
    if (stats->ndim != 3 || stats->dtype != AVQ_F32 || stats->layout != AVQ_PLAIN || stats->dims[0] != x->dims[0] ||
        stats->dims[1] != 3 || stats->dims[2] != C)
        return avq_error(AVQ_ERR_SHAPE, "group_norm_rows: statistics %s must be f32 plain [%lld, 3, %lld]",
                         avq_tensor_str(stats, bs, sizeof bs), (long long)x->dims[0], (long long)C);
    if (avq_plan_building(p)) return AVQ_OK;
    const float *st = (const float *)stats->data + n * 3 * C, *M = st, *A = st + C, *bt = st + 2 * C;
    const avq_simd_kernels *k = avq_simd();
    const size_t es = avq_dtype_size(x->dtype);
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t j = 0; j < rows; j++) {
        for (int64_t px = 0; px < W; px++) {
            int64_t r = r0 + j, o = (j * W + px) * C;
            if (r < 0 || r >= H) { /* outside the image: the conv's zero padding */
                memset((char *)y->data + (size_t)o * es, 0, (size_t)C * es);
                continue;
            }
            int64_t i = ((n * H + r) * W + px) * C;
            float buf[ROW_CHUNK];
            for (int64_t c0 = 0; c0 < C; c0 += ROW_CHUNK) {
                int64_t m = C - c0 < ROW_CHUNK ? C - c0 : ROW_CHUNK;
                avq_load_row(x->data, x->dtype, i + c0, buf, m);
                k->gn_apply(buf, M + c0, A + c0, bt + c0, m, silu_after);
                avq_store_row(y->data, y->dtype, o + c0, buf, m);
            }
        }
    }
    return AVQ_OK;
}

/* Rows r0.. of sample n of x, or of its nearest x2 upsampling (up2); zeros
 * outside the image. */
static avq_status gather_rows(avq_plan *p, const avq_tensor *x, avq_tensor *y, int64_t n, int64_t r0, int up2,
                              const char *op) {
    AVQ_TRY(rows_pair(x, y, n, up2, op));
    if (avq_plan_building(p)) return AVQ_OK;
    const int64_t C = x->dims[1], H = x->dims[2], W = x->dims[3], rows = y->dims[2], Hy = up2 ? 2 * H : H;
    const int64_t Wy = y->dims[3];
    const size_t es = avq_dtype_size(x->dtype), px = (size_t)C * es;
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < rows; j++) {
        int64_t r = r0 + j;
        char *dst = (char *)y->data + (size_t)(j * Wy) * px;
        if (r < 0 || r >= Hy) {
            memset(dst, 0, (size_t)Wy * px);
            continue;
        }
        const char *src = (const char *)x->data + (size_t)((n * H + (up2 ? r >> 1 : r)) * W) * px;
        if (!up2) {
            memcpy(dst, src, (size_t)W * px);
            continue;
        }
        for (int64_t i = 0; i < W; i++) {
            memcpy(dst + (size_t)(2 * i) * px, src + (size_t)i * px, px);
            memcpy(dst + (size_t)(2 * i + 1) * px, src + (size_t)i * px, px);
        }
    }
    return AVQ_OK;
}

avq_status avq_gather_rows(avq_plan *p, const avq_tensor *x, avq_tensor *y, int64_t n, int64_t r0) {
    return gather_rows(p, x, y, n, r0, 0, "gather_rows");
}

int avq_conv2d_auto_winograd(const avq_weight *w, const avq_tensor *x, const avq_conv_params *prm) {
    return prm->algo == AVQ_CONV_AUTO && avq_conv2d_winograd_fits(w, x, prm);
}

avq_status avq_upsample2x_rows(avq_plan *p, const avq_tensor *x, avq_tensor *y, int64_t n, int64_t r0) {
    return gather_rows(p, x, y, n, r0, 1, "upsample2x_rows");
}

/* ---- layer norm ------------------------------------------------------- */

avq_status avq_layer_norm(avq_plan *p, const avq_tensor *x, avq_tensor *y, const avq_weight *gamma,
                          const avq_weight *beta, float eps) {
    int64_t rows, C;
    char bx[96], by[96];
    AVQ_TRY(need_rows(x, "layer_norm input", &rows, &C));
    if (!avq_tensor_same_shape(x, y))
        return avq_error(AVQ_ERR_SHAPE, "layer_norm output %s must match input %s", avq_tensor_str(y, by, sizeof by),
                         avq_tensor_str(x, bx, sizeof bx));
    if (gamma->ndim != 1 || gamma->dims[0] != C || beta->ndim != 1 || beta->dims[0] != C)
        return avq_error(AVQ_ERR_SHAPE, "layer_norm weight %s and bias %s must have shape [%lld]",
                         gamma->name ? gamma->name : "", beta->name ? beta->name : "", (long long)C);
    if (!(eps > 0.f)) return avq_error(AVQ_ERR_ARG, "layer_norm eps must be > 0");
    avq_tensor tmp;
    int64_t td[1] = {2 * C};
    AVQ_TRY(avq_plan_tensor(p, &tmp, AVQ_F32, AVQ_PLAIN, 1, td));
    if (!avq_plan_building(p)) {
        const float *g = wdata_f32(gamma, (float *)tmp.data, C), *bt = wdata_f32(beta, (float *)tmp.data + C, C);
#pragma omp parallel
        {
            float *buf = NULL;
            float stackbuf[4096];
            buf = C <= 4096 ? stackbuf : NULL;
#pragma omp for schedule(static)
            for (int64_t r = 0; r < rows; r++) {
                if (buf) {
                    avq_load_row(x->data, x->dtype, r * C, buf, C);
                    float s = 0.f;
#pragma omp simd reduction(+ : s)
                    for (int64_t i = 0; i < C; i++) s += buf[i];
                    float mean = s / (float)C, v = 0.f, dsum = 0.f;
                    /* corrected two-pass: the residual sum fixes the mean's rounding */
#pragma omp simd reduction(+ : v, dsum)
                    for (int64_t i = 0; i < C; i++) {
                        v += (buf[i] - mean) * (buf[i] - mean);
                        dsum += buf[i] - mean;
                    }
                    float dm = dsum / (float)C;
                    mean += dm;
                    float var = v / (float)C - dm * dm;
                    float rstd = 1.f / sqrtf((var > 0.f ? var : 0.f) + eps);
#pragma omp simd
                    for (int64_t i = 0; i < C; i++) buf[i] = (buf[i] - mean) * rstd * g[i] + bt[i];
                    avq_store_row(y->data, y->dtype, r * C, buf, C);
                } else {
                    double s = 0.0, v = 0.0;
                    for (int64_t i = 0; i < C; i++) s += avq_load(x->data, x->dtype, r * C + i);
                    float mean = (float)(s / (double)C);
                    for (int64_t i = 0; i < C; i++) {
                        float d = avq_load(x->data, x->dtype, r * C + i) - mean;
                        v += d * d;
                    }
                    float rstd = 1.f / sqrtf((float)(v / (double)C) + eps);
                    for (int64_t i = 0; i < C; i++)
                        avq_store(y->data, y->dtype, r * C + i,
                                  (avq_load(x->data, x->dtype, r * C + i) - mean) * rstd * g[i] + bt[i]);
                }
            }
        }
    }
    avq_plan_release(p, &tmp);
    return AVQ_OK;
}

/* ---- elementwise ------------------------------------------------------ */

static avq_status same(const avq_tensor *a, const avq_tensor *y, const char *op) {
    char ba[96], by[96];
    if (!avq_tensor_same_shape(a, y) || (a->layout != y->layout && a->ndim == 4 && a->dims[1] != 1))
        return avq_error(AVQ_ERR_SHAPE, "%s: output %s must match input %s", op, avq_tensor_str(y, by, sizeof by),
                         avq_tensor_str(a, ba, sizeof ba));
    if (avq_tensor_numel(a) <= 0) return avq_error(AVQ_ERR_SHAPE, "%s: input is empty", op);
    return AVQ_OK;
}

/* One activation over a row, by the kernels of this process's ISA level. */
void avq_act_row(float *v, int64_t m, avq_act act) { avq_simd()->act_row(v, m, act); }

avq_status avq_activation(avq_plan *p, const avq_tensor *x, avq_tensor *y, avq_act act) {
    AVQ_TRY(same(x, y, "activation"));
    if (act < AVQ_ACT_NONE || act > AVQ_ACT_QUICK_GELU)
        return avq_error(AVQ_ERR_ARG, "unknown activation %d", (int)act);
    if (avq_plan_building(p)) return AVQ_OK;
    int64_t n = avq_tensor_numel(x);
#pragma omp parallel for schedule(static)
    for (int64_t k = 0; k < n; k += ROW_CHUNK) {
        float buf[ROW_CHUNK];
        int64_t m = n - k < ROW_CHUNK ? n - k : ROW_CHUNK;
        avq_load_row(x->data, x->dtype, k, buf, m);
        avq_act_row(buf, m, act);
        avq_store_row(y->data, y->dtype, k, buf, m);
    }
    return AVQ_OK;
}

avq_status avq_geglu(avq_plan *p, const avq_tensor *x, avq_tensor *y) {
    int64_t rx, cx, ry, cy;
    char bx[96], by[96];
    AVQ_TRY(need_rows(x, "geglu input", &rx, &cx));
    AVQ_TRY(need_rows(y, "geglu output", &ry, &cy));
    if (rx != ry || cx != 2 * cy)
        return avq_error(AVQ_ERR_SHAPE, "geglu: output %s must be the input %s with half the features",
                         avq_tensor_str(y, by, sizeof by), avq_tensor_str(x, bx, sizeof bx));
    if (avq_plan_building(p)) return AVQ_OK;
    const size_t es = avq_dtype_size(x->dtype);
    const avq_simd_kernels *k = avq_simd();
    if (x->dtype == y->dtype) {
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < rx; r++) {
            const char *row = (const char *)x->data + (size_t)(r * cx) * es;
            k->geglu_row(row, row + (size_t)cy * es, (char *)y->data + (size_t)(r * cy) * es, cy, x->dtype);
        }
        return AVQ_OK;
    }
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rx; r++) {
        for (int64_t c = 0; c < cy; c += ROW_CHUNK) {
            float a[ROW_CHUNK], g[ROW_CHUNK];
            int64_t m = cy - c < ROW_CHUNK ? cy - c : ROW_CHUNK;
            avq_load_row(x->data, x->dtype, r * cx + c, a, m);
            avq_load_row(x->data, x->dtype, r * cx + cy + c, g, m);
            k->geglu_row(a, g, a, m, AVQ_F32);
            avq_store_row(y->data, y->dtype, r * cy + c, a, m);
        }
    }
    return AVQ_OK;
}

enum { BC_FULL, BC_CHANNEL, BC_PIXEL };

static avq_status broadcast_kind(const avq_tensor *a, const avq_tensor *b, const char *op, int *kind) {
    char ba[96], bb[96];
    if (avq_tensor_same_shape(a, b) && (a->layout == b->layout || a->ndim != 4)) {
        *kind = BC_FULL;
        return AVQ_OK;
    }
    if (a->ndim == 4 && b->ndim == 4 && b->dims[0] == a->dims[0]) {
        if (b->dims[1] == a->dims[1] && b->dims[2] == 1 && b->dims[3] == 1) {
            *kind = BC_CHANNEL;
            return AVQ_OK;
        }
        if (b->dims[1] == 1 && b->dims[2] == a->dims[2] && b->dims[3] == a->dims[3]) {
            *kind = BC_PIXEL;
            return AVQ_OK;
        }
    }
    return avq_error(AVQ_ERR_SHAPE, "%s: cannot broadcast %s to %s (same shape, [N, C, 1, 1] or [N, 1, H, W])", op,
                     avq_tensor_str(b, bb, sizeof bb), avq_tensor_str(a, ba, sizeof ba));
}

static avq_status binary(avq_plan *p, const avq_tensor *a, const avq_tensor *b, avq_tensor *y, int is_mul) {
    const char *op = is_mul ? "mul" : "add";
    int kind;
    int64_t rows, C;
    AVQ_TRY(same(a, y, op));
    AVQ_TRY(need_rows(a, op, &rows, &C));
    AVQ_TRY(broadcast_kind(a, b, op, &kind));
    if (kind != BC_FULL && a->layout != AVQ_NHWC) return avq_error(AVQ_ERR_INTERNAL, "%s: broadcasting needs NHWC", op);
    if (avq_plan_building(p)) return AVQ_OK;
    int64_t HW = a->ndim == 4 ? a->dims[2] * a->dims[3] : 1;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        float va[ROW_CHUNK], vb[ROW_CHUNK];
        for (int64_t k = 0; k < C; k += ROW_CHUNK) {
            int64_t m = C - k < ROW_CHUNK ? C - k : ROW_CHUNK;
            avq_load_row(a->data, a->dtype, r * C + k, va, m);
            if (kind == BC_FULL) {
                avq_load_row(b->data, b->dtype, r * C + k, vb, m);
            } else if (kind == BC_CHANNEL) {
                avq_load_row(b->data, b->dtype, (r / HW) * C + k, vb, m);
            } else {
                float s = avq_load(b->data, b->dtype, r);
                for (int64_t i = 0; i < m; i++) vb[i] = s;
            }
            if (is_mul)
                for (int64_t i = 0; i < m; i++) va[i] *= vb[i];
            else
                for (int64_t i = 0; i < m; i++) va[i] += vb[i];
            avq_store_row(y->data, y->dtype, r * C + k, va, m);
        }
    }
    return AVQ_OK;
}

avq_status avq_add(avq_plan *p, const avq_tensor *a, const avq_tensor *b, avq_tensor *y) {
    return binary(p, a, b, y, 0);
}
avq_status avq_mul(avq_plan *p, const avq_tensor *a, const avq_tensor *b, avq_tensor *y) {
    return binary(p, a, b, y, 1);
}

avq_status avq_blend(avq_plan *p, const avq_tensor *h, const avq_tensor *f, const avq_tensor *m, avq_tensor *y) {
    int kind;
    int64_t rows, C;
    char bh[96], bf[96];
    AVQ_TRY(same(h, y, "blend"));
    AVQ_TRY(need_rows(h, "blend", &rows, &C));
    if (!avq_tensor_same_shape(h, f) || f->layout != h->layout)
        return avq_error(AVQ_ERR_SHAPE, "blend: features %s must match %s", avq_tensor_str(f, bf, sizeof bf),
                         avq_tensor_str(h, bh, sizeof bh));
    AVQ_TRY(broadcast_kind(h, m, "blend mask", &kind));
    if (kind != BC_PIXEL) return avq_error(AVQ_ERR_SHAPE, "blend: the mask must be [N, 1, H, W]");
    if (avq_plan_building(p)) return AVQ_OK;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        float vh[ROW_CHUNK], vf[ROW_CHUNK];
        float s = avq_load(m->data, m->dtype, r);
        for (int64_t k = 0; k < C; k += ROW_CHUNK) {
            int64_t n = C - k < ROW_CHUNK ? C - k : ROW_CHUNK;
            avq_load_row(h->data, h->dtype, r * C + k, vh, n);
            avq_load_row(f->data, f->dtype, r * C + k, vf, n);
            for (int64_t i = 0; i < n; i++) vh[i] = vh[i] * s + vf[i] * (1.f - s);
            avq_store_row(y->data, y->dtype, r * C + k, vh, n);
        }
    }
    return AVQ_OK;
}

avq_status avq_concat_channels(avq_plan *p, const avq_tensor *a, const avq_tensor *b, avq_tensor *y) {
    char ba[96], bb[96], by[96];
    int64_t ra, ca, rb, cb, ry, cy;
    AVQ_TRY(need_rows(a, "concat input a", &ra, &ca));
    AVQ_TRY(need_rows(b, "concat input b", &rb, &cb));
    AVQ_TRY(need_rows(y, "concat output", &ry, &cy));
    int ok = a->ndim == b->ndim && a->ndim == y->ndim && ra == rb && ra == ry && cy == ca + cb &&
             a->dtype == y->dtype && b->dtype == y->dtype;
    for (int i = 0; ok && i < a->ndim; i++)
        if (i != (a->ndim == 4 ? 1 : a->ndim - 1)) ok = a->dims[i] == b->dims[i] && a->dims[i] == y->dims[i];
    if (!ok)
        return avq_error(AVQ_ERR_SHAPE, "concat: %s and %s do not concatenate into %s",
                         avq_tensor_str(a, ba, sizeof ba), avq_tensor_str(b, bb, sizeof bb),
                         avq_tensor_str(y, by, sizeof by));
    if (avq_plan_building(p)) return AVQ_OK;
    size_t es = avq_dtype_size(y->dtype);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < ra; r++) {
        char *dst = (char *)y->data + (size_t)(r * cy) * es;
        memcpy(dst, (const char *)a->data + (size_t)(r * ca) * es, (size_t)ca * es);
        memcpy(dst + (size_t)ca * es, (const char *)b->data + (size_t)(r * cb) * es, (size_t)cb * es);
    }
    return AVQ_OK;
}

static avq_status spatial_pair(const avq_tensor *x, const avq_tensor *y, const char *op) {
    char bx[96], by[96];
    if (x->ndim != 4 || y->ndim != 4 || x->dims[0] != y->dims[0] || x->dims[1] != y->dims[1] || x->dtype != y->dtype ||
        (x->layout != AVQ_NHWC && x->dims[1] != 1) || (y->layout != AVQ_NHWC && y->dims[1] != 1))
        return avq_error(AVQ_ERR_SHAPE, "%s: input %s and output %s must be NHWC [N, C, H, W] with equal N, C", op,
                         avq_tensor_str(x, bx, sizeof bx), avq_tensor_str(y, by, sizeof by));
    if (avq_tensor_numel(x) <= 0 || avq_tensor_numel(y) <= 0) return avq_error(AVQ_ERR_SHAPE, "%s: empty tensor", op);
    return AVQ_OK;
}

static avq_status nearest(avq_plan *p, const avq_tensor *x, avq_tensor *y) {
    if (avq_plan_building(p)) return AVQ_OK;
    int64_t N = x->dims[0], C = x->dims[1], ih = x->dims[2], iw = x->dims[3], oh = y->dims[2], ow = y->dims[3];
    float sh = (float)ih / (float)oh, sw = (float)iw / (float)ow;
    size_t es = avq_dtype_size(x->dtype), row = (size_t)C * es;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        for (int64_t oy = 0; oy < oh; oy++) {
            /* PyTorch's rule, including its float32 scale */
            int64_t iy = oh == ih ? oy : (oh == 2 * ih ? oy >> 1 : (int64_t)floorf((float)oy * sh));
            if (iy > ih - 1) iy = ih - 1;
            for (int64_t ox = 0; ox < ow; ox++) {
                int64_t ix = ow == iw ? ox : (ow == 2 * iw ? ox >> 1 : (int64_t)floorf((float)ox * sw));
                if (ix > iw - 1) ix = iw - 1;
                memcpy((char *)y->data + (size_t)((n * oh + oy) * ow + ox) * row,
                       (const char *)x->data + (size_t)((n * ih + iy) * iw + ix) * row, row);
            }
        }
    }
    return AVQ_OK;
}

avq_status avq_upsample2x(avq_plan *p, const avq_tensor *x, avq_tensor *y) {
    AVQ_TRY(spatial_pair(x, y, "upsample2x"));
    if (y->dims[2] != 2 * x->dims[2] || y->dims[3] != 2 * x->dims[3])
        return avq_error(AVQ_ERR_SHAPE, "upsample2x: output must be twice the input's height and width");
    return nearest(p, x, y);
}

avq_status avq_resize_nearest(avq_plan *p, const avq_tensor *x, avq_tensor *y) {
    AVQ_TRY(spatial_pair(x, y, "resize_nearest"));
    return nearest(p, x, y);
}

avq_status avq_timestep_embedding(avq_plan *p, const avq_tensor *t, avq_tensor *y, int dim, float max_period) {
    char bt[96], by[96];
    if (t->ndim != 1 || t->dtype != AVQ_F32 || y->ndim != 2 || y->dims[0] != t->dims[0] || y->dims[1] != dim ||
        dim < 2 || dim % 2)
        return avq_error(AVQ_ERR_SHAPE, "timestep_embedding: t %s (f32 [B]) and output %s ([B, %d], even) do not fit",
                         avq_tensor_str(t, bt, sizeof bt), avq_tensor_str(y, by, sizeof by), dim);
    if (!(max_period > 0.f) || isinf(max_period))
        return avq_error(AVQ_ERR_ARG, "timestep_embedding: max_period must be a positive finite number, got %g",
                         (double)max_period);
    if (avq_plan_building(p)) return AVQ_OK;
    int half = dim / 2;
    float c = (float)(-log((double)max_period));
    for (int64_t b = 0; b < t->dims[0]; b++) {
        float tv = ((const float *)t->data)[b];
        for (int k = 0; k < half; k++) {
            float e = (c * (float)k) / (float)half; /* float32 like the reference */
            float arg = tv * expf(e);
            avq_store(y->data, y->dtype, b * dim + k, cosf(arg));
            avq_store(y->data, y->dtype, b * dim + half + k, sinf(arg));
        }
    }
    return AVQ_OK;
}

avq_status avq_embedding(avq_plan *p, const int32_t *ids, const avq_weight *table, const avq_weight *pos,
                         avq_tensor *y) {
    char by[96];
    if (y->ndim != 3 || table->ndim != 2 || y->dims[2] != table->dims[1] ||
        (pos && (pos->ndim != 2 || pos->dims[1] != table->dims[1] || pos->dims[0] < y->dims[1])))
        return avq_error(AVQ_ERR_SHAPE, "embedding: output %s does not fit table %s", avq_tensor_str(y, by, sizeof by),
                         table->name ? table->name : "");
    if (avq_plan_building(p)) return AVQ_OK;
    int64_t B = y->dims[0], L = y->dims[1], D = y->dims[2], V = table->dims[0];
    for (int64_t i = 0; i < B * L; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return avq_error(AVQ_ERR_ARG, "token id %d at position %lld is outside the vocabulary [0, %lld)",
                             (int)ids[i], (long long)i, (long long)V);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < B * L; i++) {
        for (int64_t k = 0; k < D; k++) {
            float v = avq_load(table->data, table->dtype, (int64_t)ids[i] * D + k);
            if (pos) v += avq_load(pos->data, pos->dtype, (i % L) * D + k);
            avq_store(y->data, y->dtype, i * D + k, v);
        }
    }
    return AVQ_OK;
}

avq_status avq_copy(avq_plan *p, const avq_tensor *x, avq_tensor *y) {
    AVQ_TRY(same(x, y, "copy"));
    if (x->dtype != y->dtype || x->layout != y->layout) return avq_error(AVQ_ERR_DTYPE, "copy: use reorder to convert");
    if (avq_plan_building(p)) return AVQ_OK;
    memcpy(y->data, x->data, avq_tensor_bytes(x));
    return AVQ_OK;
}
