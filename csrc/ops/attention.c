/* Multi-head attention, flash-style: tiles of queries, all in cache.
 *
 * Work is split into tasks (batch, head, block of T queries) spread over the
 * OpenMP threads. Per task: S = scale * Q_blk K^T (oneDNN sgemm, reading the
 * head straight out of the [B, N, C] token matrix through its leading
 * dimension), a row softmax in place (with the causal mask when asked), then
 * O_blk = P V written back through the leading dimension. Only
 * threads x T x M scores exist at once (T = 128: 2 MiB per thread for 4096
 * keys), so nothing of size B x heads x N x M is ever made. bf16 runs the
 * same tasks on AMX tiles where the CPU has them (attention_amx.c), else on
 * AVX512-BF16 register blocks (attention_avx512.c, which also takes fp32 with
 * heads up to 96 on any AVX-512 CPU); elsewhere (AVX2, or AVX-512 without
 * BF16) bf16 operands are widened per task into f32 buffers for sgemm. */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>

#include "core/engine.h"
#include "ops_internal.h"
#include "simd.h"

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

/* The per-thread workspace of both tile loops: `per` floats per thread in the
 * plan arena, for the threads fixed at build. */
static avq_status thread_workspace(avq_plan *p, int64_t per, avq_tensor *ws) {
    int64_t wd[1] = {per * avq_get_num_threads()};
    return avq_plan_tensor(p, ws, AVQ_F32, AVQ_PLAIN, 1, wd);
}

static int run_threads(void) {
    int nthr = avq_get_num_threads();
    return omp_get_max_threads() < nthr ? omp_get_max_threads() : nthr;
}

/* Task t of B x heads x ceil(N / T): one head's block of up to T query rows. */
typedef struct attn_task {
    int64_t bh, b, h, q0, rows;
} attn_task;

static attn_task task_at(int64_t t, int64_t nblk, int heads, int64_t T, int64_t N) {
    attn_task a;
    a.bh = t / nblk;
    a.b = a.bh / heads;
    a.h = a.bh % heads;
    a.q0 = t % nblk * T;
    a.rows = N - a.q0 < T ? N - a.q0 : T;
    return a;
}

#if AVQ_HAVE_AMX_KERNELS
/* The tile loop below for bf16 on AMX (attention_amx.c): same tasks, both
 * products on the tile unit, 64 query rows per task. */
#define ATTN_AMX_T 64

static avq_status attention_amx(avq_plan *p, const avq_tensor *q, const avq_tensor *k, const avq_tensor *v,
                                avq_tensor *o, int64_t B, int64_t N, int64_t M, int64_t C, int heads, float scale,
                                int causal) {
    const int64_t d = C / heads, T = N < ATTN_AMX_T ? (N + 31) / 32 * 32 : ATTN_AMX_T;
    avq_amx_dims g;
    avq_attention_amx_dims(M, d, &g);
    /* Per thread, in bytes: scores, probabilities, packed K and V, query rows, output rows, 1/sums. */
    const int64_t sb = T * g.Mpad * 4, pb = T * g.Mpad * 2, kb = g.Mpad * g.dk * 2, vb = g.Mpad * g.dn * 2,
                  qb = T * g.dk * 2, ob = T * g.dn * 4, ib = T * 4;
    const int64_t per = (sb + pb + kb + vb + qb + ob + ib + 63) / 64 * 16; /* floats, 64-byte multiple */
    avq_tensor ws;
    AVQ_TRY(thread_workspace(p, per, &ws));
    if (avq_plan_building(p)) {
        avq_plan_release(p, &ws);
        return AVQ_OK;
    }
    const int64_t nblk = (N + T - 1) / T, ntask = B * heads * nblk;
#pragma omp parallel num_threads(run_threads())
    {
        char *base = (char *)((float *)ws.data + per * omp_get_thread_num());
        float *S = (float *)base;
        uint16_t *P = (uint16_t *)(base + sb), *kp = (uint16_t *)(base + sb + pb);
        uint16_t *vp = (uint16_t *)(base + sb + pb + kb), *qp = (uint16_t *)(base + sb + pb + kb + vb);
        float *O = (float *)(base + sb + pb + kb + vb + qb), *inv = (float *)(base + sb + pb + kb + vb + qb + ob);
        int64_t cur = -1;
        avq_attention_amx_begin();
#pragma omp for schedule(static)
        for (int64_t task = 0; task < ntask; task++) {
            const attn_task a = task_at(task, nblk, heads, T, N);
            const int64_t bh = a.bh, b = a.b, h = a.h, q0 = a.q0, rows = a.rows;
            const uint16_t *qsrc = (const uint16_t *)q->data + (b * N + q0) * C + h * d;
            uint16_t *op = (uint16_t *)o->data + (b * N + q0) * C + h * d;
            if (cur != bh) {
                avq_attention_amx_pack_k((const uint16_t *)k->data + b * M * C + h * d, C, M, d, &g, kp);
                avq_attention_amx_pack_v((const uint16_t *)v->data + b * M * C + h * d, C, M, d, &g, vp);
                cur = bh;
            }
            memset(qp, 0, (size_t)qb);
            for (int64_t r = 0; r < rows; r++) memcpy(qp + r * g.dk, qsrc + r * C, (size_t)d * 2);
            for (int64_t r0 = 0; r0 < T; r0 += 32) avq_attention_amx_qk32(qp + r0 * g.dk, kp, &g, S + r0 * g.Mpad);
            for (int64_t r = 0; r < T; r++) {
                if (r >= rows) {
                    memset(P + r * g.Mpad, 0, (size_t)g.Mpad * 2);
                    continue;
                }
                int64_t limit = causal ? q0 + r + 1 : M;
                limit = limit < M ? limit : M;
                inv[r] = 1.f / avq_attention_amx_softmax(S + r * g.Mpad, limit, g.Mpad, scale, P + r * g.Mpad);
            }
            for (int64_t r0 = 0; r0 < T; r0 += 32) avq_attention_amx_pv32(P + r0 * g.Mpad, vp, &g, O + r0 * g.dn);
            for (int64_t r = 0; r < rows; r++) {
                float *orow = O + r * g.dn;
                for (int64_t j = 0; j < d; j++) orow[j] *= inv[r];
                avq_store_row(op, AVQ_BF16, r * C, orow, d);
            }
        }
        avq_attention_amx_end();
    }
    avq_plan_release(p, &ws);
    return AVQ_OK;
}
#endif

#if AVQ_HAVE_AVX512_ATTENTION
/* The tile loop for AVX-512 register blocks (attention_avx512.c): same tasks,
 * K and V of a head packed once per thread and (batch, head). */
static avq_status attention_avx512(avq_plan *p, const avq_tensor *q, const avq_tensor *k, const avq_tensor *v,
                                   avq_tensor *o, int64_t B, int64_t N, int64_t M, int64_t C, int heads, float scale,
                                   int causal) {
    const int64_t d = C / heads, T = N < ATTN_AVX512_T ? N : ATTN_AVX512_T;
    avq_avx512_dims g;
    avq_attention_avx512_dims(M, d, q->dtype, &g);
    const size_t es = avq_dtype_size(q->dtype);
    /* Per thread, in bytes: packed K, packed V, the row group's workspace. */
    const int64_t kb = (g.Mpad * g.dk * (int64_t)es + 63) / 64 * 64, vb = (g.dv * g.Mpad * (int64_t)es + 63) / 64 * 64;
    const int64_t per = (kb + vb + avq_attention_avx512_task_workspace(&g) + 63) / 64 * 16; /* floats */
    avq_tensor ws;
    AVQ_TRY(thread_workspace(p, per, &ws));
    if (avq_plan_building(p)) {
        avq_plan_release(p, &ws);
        return AVQ_OK;
    }
    const int64_t nblk = (N + T - 1) / T, ntask = B * heads * nblk;
#pragma omp parallel num_threads(run_threads())
    {
        char *base = (char *)((float *)ws.data + per * omp_get_thread_num());
        void *kp = base, *vp = base + kb, *rw = base + kb + vb;
        int64_t cur = -1;
#pragma omp for schedule(static)
        for (int64_t task = 0; task < ntask; task++) {
            const attn_task a = task_at(task, nblk, heads, T, N);
            if (cur != a.bh) {
                avq_attention_avx512_pack_k((const char *)k->data + (size_t)(a.b * M * C + a.h * d) * es, C, M, &g,
                                            scale < 0, kp);
                avq_attention_avx512_pack_v((const char *)v->data + (size_t)(a.b * M * C + a.h * d) * es, C, M, &g, vp);
                cur = a.bh;
            }
            const size_t off = (size_t)((a.b * N + a.q0) * C + a.h * d) * es;
            avq_attention_avx512_task(&g, (const char *)q->data + off, C, a.rows, a.q0, M, causal, fabsf(scale), kp, vp,
                                      rw, (char *)o->data + off, C);
        }
    }
    avq_plan_release(p, &ws);
    return AVQ_OK;
}

/* bf16 where AVX512-BF16 is allowed (the ISA decision's bf16_native at the
 * AVX-512 level: AMX CPUs have it as well); fp32 on AVX-512 for heads of up to
 * 96 (SD's 40 and 80, CLIP's 64): with wider heads sgemm's K = d is long
 * enough for it to win (measured at 160 and 512, Zen 4, 2 threads). */
static int avx512_fits(avq_dtype dt, int64_t d) {
    const avq_isa *isa = avq_isa_get();
    if (isa->level < AVQ_ISA_AVX512) return 0;
    return (dt == AVQ_F32 && d <= 96) || (dt == AVQ_BF16 && isa->bf16_native);
}
#endif

int avq_attention_uses_amx(void) { return AVQ_HAVE_AMX_KERNELS && avq_attention_amx_supported(); }

avq_status avq_attention(avq_plan *p, const avq_tensor *q, const avq_tensor *k, const avq_tensor *v, avq_tensor *o,
                         int heads, float scale, int causal) {
    int64_t B, N, C, Bk, M, Ck, Bv, Mv, Cv, Bo, No, Co;
    char b1[96], b2[96], b3[96], b4[96];
    if (!tokens_view(q, &B, &N, &C) || !tokens_view(k, &Bk, &M, &Ck) || !tokens_view(v, &Bv, &Mv, &Cv) ||
        !tokens_view(o, &Bo, &No, &Co) || Bk != B || Bv != B || Bo != B || Ck != C || Cv != C || Co != C || Mv != M ||
        No != N)
        return avq_error(AVQ_ERR_SHAPE,
                         "attention shapes do not fit: q %s, k %s, v %s, out %s (want [B, N, C], [B, M, C])",
                         avq_tensor_str(q, b1, sizeof b1), avq_tensor_str(k, b2, sizeof b2),
                         avq_tensor_str(v, b3, sizeof b3), avq_tensor_str(o, b4, sizeof b4));
    if (heads < 1 || C % heads)
        return avq_error(AVQ_ERR_ARG, "attention: %lld features cannot be split into %d heads", (long long)C, heads);
    if (q->dtype != k->dtype || q->dtype != v->dtype || q->dtype != o->dtype)
        return avq_error(AVQ_ERR_DTYPE, "attention operands must share one dtype");
    if (causal && M != N) return avq_error(AVQ_ERR_ARG, "causal attention needs as many keys as queries");
    if (B < 1 || N < 1 || M < 1) return avq_error(AVQ_ERR_SHAPE, "attention on empty tensors");

#if AVQ_HAVE_AMX_KERNELS
    if (q->dtype == AVQ_BF16 && avq_attention_amx_supported())
        return attention_amx(p, q, k, v, o, B, N, M, C, heads, scale, causal);
#endif
#if AVQ_HAVE_AVX512_ATTENTION
    if (avx512_fits(q->dtype, C / heads)) return attention_avx512(p, q, k, v, o, B, N, M, C, heads, scale, causal);
#endif
    const int64_t d = C / heads, T = N < ATTN_T ? N : ATTN_T;
    const int wide = q->dtype != AVQ_F32;
    /* Per-thread workspace: scores T x M, and for bf16 the widened q tile,
     * k and v of one head, and the output tile. Threads fixed at build. */
    const int64_t per = T * M + T + (wide ? T * d + 2 * M * d + T * d : 0);
    avq_tensor ws;
    AVQ_TRY(thread_workspace(p, per, &ws));
    if (avq_plan_building(p)) {
        avq_plan_release(p, &ws);
        return AVQ_OK;
    }

    const int64_t nblk = (N + T - 1) / T, ntask = B * heads * nblk;
    const avq_dtype dt = q->dtype;
    const size_t es = avq_dtype_size(dt);
    int failed = 0;
    float (*softmax_row)(float *, int64_t, int64_t, float) = avq_simd()->softmax_row_unnormalised;
#pragma omp parallel num_threads(run_threads())
    {
        float *S = (float *)ws.data + per * omp_get_thread_num();
        float *inv = S + T * M, *qt = inv + T, *kh = qt + T * d, *vh = kh + M * d, *ot = vh + M * d;
        int64_t cur = -1; /* (b, head) whose k/v are widened in kh/vh */
#pragma omp for schedule(static)
        for (int64_t task = 0; task < ntask; task++) {
            const attn_task a = task_at(task, nblk, heads, T, N);
            const int64_t bh = a.bh, b = a.b, h = a.h, q0 = a.q0, rows = a.rows;
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
                inv[r] = 1.f / softmax_row(S + r * M, limit < M ? limit : M, M, 1.f);
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
