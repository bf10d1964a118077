/* Multi-head attention, flash-style: tiles of queries, all in cache.
 *
 * Work is split into tasks (batch, head, block of T queries) spread over the
 * OpenMP threads. Per task: S = scale * Q_blk K^T (oneDNN sgemm, reading the
 * head straight out of the [B, N, C] token matrix through its leading
 * dimension), a row softmax in place (with the causal mask when asked), then
 * O_blk = P V written back through the leading dimension. Only
 * threads x T x M scores exist at once (T = 64: 1 MiB per thread for 4096
 * keys), so nothing of size B x heads x N x M is ever made. bf16 operands are
 * widened per task into f32 buffers (fp32 accumulation). */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>

#include "core/engine.h"
#include "ops_internal.h"
#include "vmath.h"

#define ATTN_T 128

static int tokens_view(const avq_tensor *t, int64_t *B, int64_t *N, int64_t *C) {
    if (t->layout == AVQ_NHWC) {
        *B = t->dims[0];
        *C = t->dims[1];
        *N = t->dims[2] * t->dims[3];
        return 1;
    }
    if (t->ndim != 3) return 0;
    *B = t->dims[0];
    *N = t->dims[1];
    *C = t->dims[2];
    return 1;
}

/* Copies a [rows, d] head slice (leading dim ld) into a dense f32 buffer. */
static void widen(const void *src, avq_dtype dt, int64_t ld, int64_t rows, int64_t d, float *dst) {
    for (int64_t r = 0; r < rows; r++) avq_load_row(src, dt, r * ld, dst + r * d, d);
}

/* exp(row - max) in place over [0, limit), zeros after; returns the sum.
 * The 1/sum normalisation is applied to the T x d output instead of the
 * T x M probabilities: one pass over the scores fewer. */
AVQ_MULTIVERSION static float softmax_row_unnormalised(float *row, int64_t limit, int64_t M) {
    float mx = -FLT_MAX;
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < limit; j++) mx = row[j] > mx ? row[j] : mx;
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < limit; j++) {
        float e = avq_vexpf(row[j] - mx);
        row[j] = e;
        sum += e;
    }
    for (int64_t j = limit; j < M; j++) row[j] = 0.f;
    return sum;
}

avq_status avq_attention(avq_plan *p, const avq_tensor *q, const avq_tensor *k, const avq_tensor *v, avq_tensor *o,
                         int heads, float scale, int causal) {
    int64_t B, N, C, Bk, M, Ck, Bv, Mv, Cv, Bo, No, Co;
    char b1[96], b2[96], b3[96], b4[96];
    if (!tokens_view(q, &B, &N, &C) || !tokens_view(k, &Bk, &M, &Ck) || !tokens_view(v, &Bv, &Mv, &Cv) ||
        !tokens_view(o, &Bo, &No, &Co) || Bk != B || Bv != B || Bo != B || Ck != C || Cv != C || Co != C ||
        Mv != M || No != N)
        return avq_error(AVQ_ERR_SHAPE, "attention shapes do not fit: q %s, k %s, v %s, out %s (want [B, N, C], [B, M, C])",
                         avq_tensor_str(q, b1, sizeof b1), avq_tensor_str(k, b2, sizeof b2),
                         avq_tensor_str(v, b3, sizeof b3), avq_tensor_str(o, b4, sizeof b4));
    if (heads < 1 || C % heads)
        return avq_error(AVQ_ERR_ARG, "attention: %lld features cannot be split into %d heads", (long long)C, heads);
    if (q->dtype != k->dtype || q->dtype != v->dtype || q->dtype != o->dtype)
        return avq_error(AVQ_ERR_DTYPE, "attention operands must share one dtype");
    if (causal && M != N) return avq_error(AVQ_ERR_ARG, "causal attention needs as many keys as queries");
    if (B < 1 || N < 1 || M < 1) return avq_error(AVQ_ERR_SHAPE, "attention on empty tensors");

    const int64_t d = C / heads, T = N < ATTN_T ? N : ATTN_T;
    const int wide = q->dtype != AVQ_F32;
    /* Per-thread workspace: scores T x M, and for bf16 the widened q tile,
     * k and v of one head, and the output tile. Threads fixed at build. */
    int nthr = avq_get_num_threads();
    const int64_t per = T * M + T + (wide ? T * d + 2 * M * d + T * d : 0);
    avq_tensor ws;
    int64_t wd[1] = {per * nthr};
    AVQ_TRY(avq_plan_tensor(p, &ws, AVQ_F32, AVQ_PLAIN, 1, wd));
    if (avq_plan_building(p)) {
        avq_plan_release(p, &ws);
        return AVQ_OK;
    }

    const int64_t nblk = (N + T - 1) / T, ntask = B * heads * nblk;
    const avq_dtype dt = q->dtype;
    const size_t es = avq_dtype_size(dt);
    int failed = 0;
    int run_thr = omp_get_max_threads() < nthr ? omp_get_max_threads() : nthr;
#pragma omp parallel num_threads(run_thr)
    {
        float *S = (float *)ws.data + per * omp_get_thread_num();
        float *inv = S + T * M, *qt = inv + T, *kh = qt + T * d, *vh = kh + M * d, *ot = vh + M * d;
        int64_t cur = -1; /* (b, head) whose k/v are widened in kh/vh */
#pragma omp for schedule(static)
        for (int64_t task = 0; task < ntask; task++) {
            int64_t bh = task / nblk, blk = task % nblk, b = bh / heads, h = bh % heads;
            int64_t q0 = blk * T, rows = N - q0 < T ? N - q0 : T;
            const char *qp = (const char *)q->data + (size_t)((b * N + q0) * C + h * d) * es;
            const char *kp = (const char *)k->data + (size_t)(b * M * C + h * d) * es;
            const char *vp = (const char *)v->data + (size_t)(b * M * C + h * d) * es;
            char *op = (char *)o->data + (size_t)((b * N + q0) * C + h * d) * es;
            const float *A, *K, *V;
            int64_t lda, ldk;
            if (wide) {
                if (cur != bh) {
                    widen(kp, dt, C, M, d, kh);
                    widen(vp, dt, C, M, d, vh);
                    cur = bh;
                }
                widen(qp, dt, C, rows, d, qt);
                A = qt;
                K = kh;
                V = vh;
                lda = ldk = d;
            } else {
                A = (const float *)qp;
                K = (const float *)kp;
                V = (const float *)vp;
                lda = ldk = C;
            }
            if (dnnl_sgemm('N', 'T', rows, M, d, scale, A, lda, K, ldk, 0.f, S, M) != dnnl_success) failed = 1;
            for (int64_t r = 0; r < rows; r++) {
                int64_t limit = causal ? q0 + r + 1 : M;
                inv[r] = 1.f / softmax_row_unnormalised(S + r * M, limit < M ? limit : M, M);
            }
            float *out = wide ? ot : (float *)op;
            int64_t ldo = wide ? d : C;
            if (dnnl_sgemm('N', 'N', rows, d, M, 1.f, S, M, V, ldk, 0.f, out, ldo) != dnnl_success) failed = 1;
            for (int64_t r = 0; r < rows; r++) {
                float *orow = out + r * ldo;
                for (int64_t j = 0; j < d; j++) orow[j] *= inv[r];
                if (wide) avq_store_row(op, dt, r * C, orow, d);
            }
        }
    }
    avq_plan_release(p, &ws);
    if (failed) return avq_error(AVQ_ERR_DNNL, "oneDNN sgemm failed inside attention");
    return AVQ_OK;
}
