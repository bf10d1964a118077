/* Attention tiles on AVX-512 register blocks, fp32 and (with AVX512-BF16) bf16.
 *
 * The same tasks as attention.c's tile loop (batch, head, block of up to
 * ATTN_AVX512_T query rows), computed transposed: the task's queries lie
 * across the 16 vector lanes, so S^T = K Q^T and O^T += V^T P^T, and the
 * online softmax of a query is a column: its running max, sum and rescale
 * factor are vertical vector operations over key rows (no horizontal
 * reductions, no scalar exp), and the head dim is a row count (blocks of 8:
 * heads of 40, 64, 80, 160 and 512 need no padding to a vector).
 *
 * Loops: key blocks of 64 to 1024 (key_block: the block's packed K and V stay
 * in L2 while every chunk of the task passes); inside, chunks of up to 3
 * vectors (48 queries) and sub-blocks of KS keys, whose scores (KS x 48) stay
 * in L1. Per chunk and sub-block: S^T by 8 keys x NC vectors (24
 * accumulators), the sub-block's column max, exp and P^T, then O^T rescaled
 * and accumulated by 8 head-dim rows x NC vectors. Packed layouts, one
 * contiguous line or 32-bit word per load:
 *   Q (per task): a row per head-dim element (bf16: pair), a column per query;
 *   K (per head): key blocks of 8, inside one 8 words per head-dim element
 *      (bf16: pair), one word per key, broadcast into the lanes;
 *   V (per head): head-dim blocks of 8, inside one 8 words per key (bf16: key
 *      pair, the two keys' elements interleaved as vdpbf16ps wants them).
 * Keys are padded to 8 and the head dim to 8 (V) / 2 (bf16 K) with zeros.
 *
 * exp is 2^x' with x' = s * scale * log2(e) - max * scale * log2(e) (one FMA
 * per score); the running max is kept in those units, so the rescale factor
 * 2^(old - new) uses the very values the exponents subtracted. 2^x' is
 * 2^round(x') times a polynomial of the fraction: degree 6 for fp32, 3 for
 * bf16 (relative 8e-5, far below the bf16 rounding of P right after). bf16
 * multiplies bf16 pairs into f32 (vdpbf16ps), rounds the probabilities to
 * bf16 for P V as the AMX path does and applies 1/sum to the f32 output. The
 * file targets AVX512-BF16, but only the bf16 branches use its instructions:
 * attention.c calls the fp32 ones on any AVX-512 CPU. */
#include <float.h>
#include <stdint.h>
#include <string.h>

#include "ops_internal.h"

#if AVQ_HAVE_AVX512_ATTENTION
#include <immintrin.h>

#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma")

#define KS         64 /* keys per sub-block of the online softmax */
#define NCMAX      3  /* query vectors per chunk: 8 x 3 = 24 accumulators of 32 registers */
#define LDS        (16 * NCMAX)
#define AVQ_INLINE static inline __attribute__((always_inline))

static int64_t up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

void avq_attention_avx512_dims(int64_t M, int64_t d, avq_dtype dt, avq_avx512_dims *g) {
    g->bf16 = dt == AVQ_BF16;
    g->d = d;
    g->Mpad = up(M, 8);
    g->dk = g->bf16 ? up(d, 2) : d;
    g->dv = up(d, 8);
}

/* bf16: block kb, pair p, key i = the word (k[8 kb + i][2p], k[8 kb + i][2p + 1]);
 * f32: block kb, element j, key i = k[8 kb + i][j]. Zeros past M and d.
 * A transpose of 32-bit words: whole blocks by gathers, the tails word by word. */
void avq_attention_avx512_pack_k(const void *k, int64_t ld, int64_t M, const avq_avx512_dims *g, int negate, void *kp) {
    const int64_t es = g->bf16 ? 2 : 4, words = g->bf16 ? g->dk / 2 : g->d, full = g->bf16 ? g->d / 2 : g->d;
    const uint32_t flip = negate ? (g->bf16 ? 0x80008000u : 0x80000000u) : 0;
    const __m256i rows =
        _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32((int)(ld * es)));
    uint32_t *t = kp;
    for (int64_t kb = 0; kb < g->Mpad / 8; kb++) {
        const char *src = (const char *)k + kb * 8 * ld * es;
        const int whole = kb * 8 + 8 <= M && ld * es * 8 < INT32_MAX;
        for (int64_t w = 0; w < words; w++, t += 8) {
            if (whole && w < full) {
                const __m256i x = _mm256_i32gather_epi32((const int *)(src + w * 4), rows, 1);
                _mm256_storeu_si256((__m256i *)t, _mm256_xor_si256(x, _mm256_set1_epi32((int)flip)));
                continue;
            }
            for (int i = 0; i < 8; i++) {
                const int64_t m = kb * 8 + i;
                uint32_t x = 0;
                if (m < M && g->bf16) {
                    const uint16_t *r = (const uint16_t *)k + m * ld;
                    x = r[2 * w] | (uint32_t)(2 * w + 1 < g->d ? r[2 * w + 1] : 0) << 16;
                } else if (m < M) {
                    memcpy(&x, (const float *)k + m * ld + w, 4);
                }
                t[i] = x ^ flip;
            }
        }
    }
}

/* bf16: block jb, key pair mp, element i = the word (v[2 mp][8 jb + i], v[2 mp + 1][8 jb + i]);
 * f32: block jb, key m, element i = v[m][8 jb + i]. Zeros past M and d. */
void avq_attention_avx512_pack_v(const void *v, int64_t ld, int64_t M, const avq_avx512_dims *g, void *vp) {
    for (int64_t jb = 0; jb < g->dv / 8; jb++) {
        const int64_t nj = g->d - jb * 8 < 8 ? g->d - jb * 8 : 8;
        const __mmask8 cols = (__mmask8)((1u << nj) - 1);
        if (g->bf16) {
            const uint16_t *s = (const uint16_t *)v + jb * 8;
            uint32_t *t = (uint32_t *)vp + jb * 8 * (g->Mpad / 2);
            for (int64_t m = 0; m < g->Mpad; m += 2, t += 8) {
                const __m256i a =
                    m < M ? _mm256_cvtepu16_epi32(_mm_maskz_loadu_epi16(cols, s + m * ld)) : _mm256_setzero_si256();
                const __m256i b = m + 1 < M ? _mm256_cvtepu16_epi32(_mm_maskz_loadu_epi16(cols, s + (m + 1) * ld))
                                            : _mm256_setzero_si256();
                _mm256_storeu_si256((__m256i *)t, _mm256_or_si256(a, _mm256_slli_epi32(b, 16)));
            }
        } else {
            const float *s = (const float *)v + jb * 8;
            float *t = (float *)vp + jb * 8 * g->Mpad;
            for (int64_t m = 0; m < g->Mpad; m++, t += 8)
                _mm256_storeu_ps(t, m < M ? _mm256_maskz_loadu_ps(cols, s + m * ld) : _mm256_setzero_ps());
        }
    }
}

/* 2^x for 16 lanes, x <= about 0 (clamped below at -127: the result is then
 * negligible next to a column's max term, 1): 2^round(x) by vscalefps times a
 * polynomial of the fraction, |f| <= 1/2, fitted for relative error. */
AVQ_INLINE __m512 vexp2(__m512 x, const int bf16) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-127.f));
    const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(x, n);
    __m512 p;
    if (bf16) { /* 8e-5 */
        p = _mm512_fmadd_ps(_mm512_set1_ps(0.05519810691475868f), f, _mm512_set1_ps(0.24267712235450745f));
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6932618021965027f));
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.9999227523803711f));
    } else { /* 2e-8 before float rounding */
        p = _mm512_fmadd_ps(_mm512_set1_ps(1.534819748485461e-4f), f, _mm512_set1_ps(1.3400872703641653e-3f));
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618488140404224e-3f));
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550326034426689e-2f));
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.24022646248340607f));
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6931471824645996f));
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
    }
    return _mm512_scalef_ps(p, n);
}

/* Lanes of query vector qv (first query index qi) that may see key m: m < M
 * and, causal, m <= the query. */
AVQ_INLINE __mmask16 seen(int64_t m, int64_t M, int causal, __m512i qv) {
    if (m >= M) return 0;
    return causal ? _mm512_cmp_epi32_mask(qv, _mm512_set1_epi32((int)m), _MM_CMPINT_NLT) : (__mmask16)0xffff;
}

/* S^T rows m0..m0+7 (S row stride LDS) of the chunk's NC query vectors: the
 * sum over the head dim of K (one packed block of 8 keys) times Q (row stride
 * ldq); the rows' max per lane into vmax, over the seen lanes only where edge. */
AVQ_INLINE void qk_block(const avq_avx512_dims *g, const void *kb, const void *qc, int64_t ldq, float *S, __m512 *vmax,
                         int64_t m0, int64_t M, int causal, const __m512i *qv, const int edge, const int NC) {
    __m512 acc[8][NCMAX];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
#pragma GCC unroll 3
        for (int c = 0; c < NC; c++) acc[i][c] = _mm512_setzero_ps();
    if (g->bf16) {
        const int32_t *kw = kb;
        const int32_t *qw = qc;
        for (int64_t p = 0; p < g->dk / 2; p++, kw += 8, qw += ldq) {
            __m512bh b[NCMAX];
#pragma GCC unroll 3
            for (int c = 0; c < NC; c++) b[c] = (__m512bh)_mm512_loadu_si512(qw + 16 * c);
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) {
                const __m512bh a = (__m512bh)_mm512_set1_epi32(kw[i]);
#pragma GCC unroll 3
                for (int c = 0; c < NC; c++) acc[i][c] = _mm512_dpbf16_ps(acc[i][c], a, b[c]);
            }
        }
    } else {
        const float *kw = kb;
        const float *qw = qc;
        for (int64_t j = 0; j < g->d; j++, kw += 8, qw += ldq) {
            __m512 b[NCMAX];
#pragma GCC unroll 3
            for (int c = 0; c < NC; c++) b[c] = _mm512_loadu_ps(qw + 16 * c);
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) {
                const __m512 a = _mm512_set1_ps(kw[i]);
#pragma GCC unroll 3
                for (int c = 0; c < NC; c++) acc[i][c] = _mm512_fmadd_ps(a, b[c], acc[i][c]);
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
#pragma GCC unroll 3
        for (int c = 0; c < NC; c++) {
            _mm512_storeu_ps(S + i * LDS + 16 * c, acc[i][c]);
            vmax[c] = edge ? _mm512_mask_max_ps(vmax[c], seen(m0 + i, M, causal, qv[c]), vmax[c], acc[i][c])
                           : _mm512_max_ps(vmax[c], acc[i][c]);
        }
}

/* O^T rows of one head-dim block of 8 (row stride ldo) = alpha * O^T + V^T P^T
 * over kn keys of the sub-block (vb: the block's packed V at the sub-block's
 * first key; P: the sub-block's probabilities, row stride LDS words). */
AVQ_INLINE void pv_block(const avq_avx512_dims *g, const void *vb, const void *P, int64_t kn, float *O, int64_t ldo,
                         const __m512 *alpha, const int NC) {
    __m512 acc[8][NCMAX];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
#pragma GCC unroll 3
        for (int c = 0; c < NC; c++) acc[i][c] = _mm512_mul_ps(_mm512_loadu_ps(O + i * ldo + 16 * c), alpha[c]);
    if (g->bf16) {
        const int32_t *vw = vb;
        const int32_t *pw = P;
        for (int64_t p = 0; p < kn / 2; p++, vw += 8, pw += LDS) {
            __m512bh b[NCMAX];
#pragma GCC unroll 3
            for (int c = 0; c < NC; c++) b[c] = (__m512bh)_mm512_loadu_si512(pw + 16 * c);
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) {
                const __m512bh a = (__m512bh)_mm512_set1_epi32(vw[i]);
#pragma GCC unroll 3
                for (int c = 0; c < NC; c++) acc[i][c] = _mm512_dpbf16_ps(acc[i][c], a, b[c]);
            }
        }
    } else {
        const float *vw = vb;
        const float *pw = P;
        for (int64_t m = 0; m < kn; m++, vw += 8, pw += LDS) {
            __m512 b[NCMAX];
#pragma GCC unroll 3
            for (int c = 0; c < NC; c++) b[c] = _mm512_loadu_ps(pw + 16 * c);
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) {
                const __m512 a = _mm512_set1_ps(vw[i]);
#pragma GCC unroll 3
                for (int c = 0; c < NC; c++) acc[i][c] = _mm512_fmadd_ps(a, b[c], acc[i][c]);
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
#pragma GCC unroll 3
        for (int c = 0; c < NC; c++) _mm512_storeu_ps(O + i * ldo + 16 * c, acc[i][c]);
}

/* The task's workspace: Q packed, the sub-block's scores (then probabilities,
 * in place), O^T, the running max (log2 units) and sum per query. */
typedef struct task_ws {
    void *q;
    float *S, *O, *m, *l;
} task_ws;

static task_ws carve(const avq_avx512_dims *g, void *ws) {
    const int64_t T = up(ATTN_AVX512_T, 16), qb = up((g->bf16 ? 2 : 4) * g->dk * T, 64);
    char *w = ws;
    task_ws t;
    t.q = w;
    t.S = (float *)(w + qb);
    t.O = t.S + KS * LDS;
    t.m = t.O + g->dv * T;
    t.l = t.m + T;
    return t;
}

int64_t avq_attention_avx512_task_workspace(const avq_avx512_dims *g) {
    const int64_t T = up(ATTN_AVX512_T, 16);
    return up((g->bf16 ? 2 : 4) * g->dk * T, 64) + 4 * (KS * LDS + g->dv * T + 2 * T);
}

/* Keys per L2 block: the block's packed K and V within about 128 KiB; a multiple of KS. */
static int64_t key_block(const avq_avx512_dims *g) {
    const int64_t es = g->bf16 ? 2 : 4;
    int64_t kb = (128 << 10) / ((g->dk + g->dv) * es) / KS * KS;
    return kb < KS ? KS : kb > 1024 ? 1024 : kb;
}

/* One chunk (NC query vectors from query column c0, task-relative) against
 * keys [s0, s0 + kn) of a sub-block: scores, the online softmax step, O^T. */
AVQ_INLINE void chunk_step(const avq_avx512_dims *g, const task_ws *t, int64_t Tq, int64_t c0, int64_t q0, int64_t s0,
                           int64_t kn, int64_t M, int causal, float cl, const void *kp, const void *vp, const int edge,
                           const int NC) {
    const int64_t es = g->bf16 ? 2 : 4;
    __m512i qv[NCMAX];
    __m512 vmax[NCMAX], mold[NCMAX], mnew[NCMAX], alpha[NCMAX], sum[NCMAX];
#pragma GCC unroll 3
    for (int c = 0; c < NC; c++) {
        qv[c] = _mm512_add_epi32(_mm512_set1_epi32((int)(q0 + c0 + 16 * c)),
                                 _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
        vmax[c] = _mm512_set1_ps(-FLT_MAX);
    }
    const char *qc = (const char *)t->q + c0 * 4; /* Q^T: Tq words or floats per row */
    for (int64_t i0 = 0; i0 < kn; i0 += 8)
        qk_block(g, (const char *)kp + (s0 + i0) * g->dk * es, qc, Tq, t->S + i0 * LDS, vmax, s0 + i0, M, causal, qv,
                 edge, NC);
    /* the running max moves to the sub-block's (log2 units: scale * log2(e) * score) */
#pragma GCC unroll 3
    for (int c = 0; c < NC; c++) {
        mold[c] = _mm512_loadu_ps(t->m + c0 + 16 * c);
        mnew[c] = _mm512_max_ps(mold[c], _mm512_mul_ps(vmax[c], _mm512_set1_ps(cl)));
        alpha[c] = vexp2(_mm512_sub_ps(mold[c], mnew[c]), g->bf16);
        sum[c] = _mm512_setzero_ps();
    }
    const __m512 vcl = _mm512_set1_ps(cl);
    if (g->bf16) {
        /* exps of two key rows -> bf16, interleaved per query into the words vdpbf16ps takes */
        const __m512i ilv = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                             21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
        for (int64_t i = 0; i < kn; i += 2) {
            const float *s = t->S + i * LDS;
            int32_t *p = (int32_t *)t->S + i / 2 * LDS; /* in place: rows i, i + 1 are read first */
#pragma GCC unroll 3
            for (int c = 0; c < NC; c++) {
                __m512 e0 = vexp2(_mm512_fmsub_ps(_mm512_loadu_ps(s + 16 * c), vcl, mnew[c]), 1);
                __m512 e1 = vexp2(_mm512_fmsub_ps(_mm512_loadu_ps(s + LDS + 16 * c), vcl, mnew[c]), 1);
                if (edge) {
                    e0 = _mm512_maskz_mov_ps(seen(s0 + i, M, causal, qv[c]), e0);
                    e1 = _mm512_maskz_mov_ps(seen(s0 + i + 1, M, causal, qv[c]), e1);
                }
                sum[c] = _mm512_add_ps(sum[c], _mm512_add_ps(e0, e1));
                const __m512i pb = (__m512i)_mm512_cvtne2ps_pbh(e1, e0);
                _mm512_storeu_si512(p + 16 * c, _mm512_permutexvar_epi16(ilv, pb));
            }
        }
    } else {
        for (int64_t i = 0; i < kn; i++) {
            float *s = t->S + i * LDS;
#pragma GCC unroll 3
            for (int c = 0; c < NC; c++) {
                __m512 e = vexp2(_mm512_fmsub_ps(_mm512_loadu_ps(s + 16 * c), vcl, mnew[c]), 0);
                if (edge) e = _mm512_maskz_mov_ps(seen(s0 + i, M, causal, qv[c]), e);
                sum[c] = _mm512_add_ps(sum[c], e);
                _mm512_storeu_ps(s + 16 * c, e);
            }
        }
    }
#pragma GCC unroll 3
    for (int c = 0; c < NC; c++) {
        _mm512_storeu_ps(t->m + c0 + 16 * c, mnew[c]);
        float *l = t->l + c0 + 16 * c;
        _mm512_storeu_ps(l, _mm512_fmadd_ps(_mm512_loadu_ps(l), alpha[c], sum[c]));
    }
    /* O^T = alpha O^T + V^T P^T, head-dim rows 8 at a time */
    for (int64_t jb = 0; jb < g->dv / 8; jb++) {
        const char *vb = (const char *)vp + (jb * 8 * g->Mpad + s0 * 8) * es;
        pv_block(g, vb, t->S, kn, t->O + jb * 8 * Tq + c0, Tq, alpha, NC);
    }
}

#define DISPATCH(NCV, CALL)  \
    switch (NCV) {           \
    case 3: CALL(3); break;  \
    case 2: CALL(2); break;  \
    default: CALL(1); break; \
    }

void avq_attention_avx512_task(const avq_avx512_dims *g, const void *q, int64_t ldq, int64_t rows, int64_t q0,
                               int64_t M, int causal, float scale, const void *kp, const void *vp, void *ws, void *out,
                               int64_t ldo) {
    const int64_t Tq = up(rows, 16), nvec = Tq / 16, nch = (nvec + NCMAX - 1) / NCMAX, KB = key_block(g);
    const task_ws t = carve(g, ws);
    const float cl = scale * 1.44269504088896341f;

    /* Q^T: bf16 words (pairs of head-dim elements) or floats, a column per query, zeros past rows and d;
     * 16 queries at a time by gathers, the tails word by word */
    {
        const int64_t es = g->bf16 ? 2 : 4, words = g->bf16 ? g->dk / 2 : g->d, full = g->bf16 ? g->d / 2 : g->d;
        const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                               _mm512_set1_epi32((int)(ldq * es)));
        uint32_t *qt = t.q;
        for (int64_t r0 = 0; r0 < Tq; r0 += 16) {
            const char *src = (const char *)q + r0 * ldq * es;
            const int whole = r0 + 16 <= rows && ldq * es * 16 < INT32_MAX;
            for (int64_t w = 0; w < words; w++) {
                if (whole && w < full) {
                    _mm512_storeu_si512(qt + w * Tq + r0, _mm512_i32gather_epi32(idx, src + w * 4, 1));
                    continue;
                }
                for (int64_t r = r0; r < r0 + 16; r++) {
                    uint32_t x = 0;
                    if (r < rows && g->bf16) {
                        const uint16_t *s = (const uint16_t *)q + r * ldq;
                        x = s[2 * w] | (uint32_t)(2 * w + 1 < g->d ? s[2 * w + 1] : 0) << 16;
                    } else if (r < rows) {
                        memcpy(&x, (const float *)q + r * ldq + w, 4);
                    }
                    qt[w * Tq + r] = x;
                }
            }
        }
    }
    memset(t.O, 0, (size_t)(g->dv * Tq) * 4);
    for (int64_t r = 0; r < Tq; r++) {
        t.m[r] = -FLT_MAX;
        t.l[r] = 0.f;
    }
    /* keys the task's last row can see */
    const int64_t kend = causal && q0 + rows < g->Mpad ? up(q0 + rows, 8) : g->Mpad;

    for (int64_t k0 = 0; k0 < kend; k0 += KB) {
        const int64_t kbn = kend - k0 < KB ? kend - k0 : KB;
        int64_t c0 = 0;
        for (int64_t ch = 0; ch < nch; ch++) {
            const int nc = (int)(nvec / nch + (ch < nvec % nch)); /* 5 -> 3 + 2, not 3 + 1 + 1 */
            const int64_t qlo = q0 + c0 * 16, qhi = q0 + (rows < (c0 + nc) * 16 ? rows : (c0 + nc) * 16) - 1;
            for (int64_t s0 = k0; s0 < k0 + kbn; s0 += KS) {
                const int64_t kn = k0 + kbn - s0 < KS ? k0 + kbn - s0 : KS;
                if (causal && s0 > qhi) break; /* no query of the chunk sees these keys */
                const int edge = s0 + kn > M || (causal && s0 + kn - 1 > qlo);
#define STEP(N)                                                                      \
    do {                                                                             \
        if (edge)                                                                    \
            chunk_step(g, &t, Tq, c0 * 16, q0, s0, kn, M, causal, cl, kp, vp, 1, N); \
        else                                                                         \
            chunk_step(g, &t, Tq, c0 * 16, q0, s0, kn, M, causal, cl, kp, vp, 0, N); \
    } while (0)
                DISPATCH(nc, STEP)
#undef STEP
            }
            c0 += nc;
        }
    }

    /* O = (O^T / l)^T: the columns scaled in place, then each row gathered from its column */
    for (int64_t r0 = 0; r0 < Tq; r0 += 16) {
        const __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.f), _mm512_loadu_ps(t.l + r0));
        for (int64_t j = 0; j < g->d; j++)
            _mm512_storeu_ps(t.O + j * Tq + r0, _mm512_mul_ps(_mm512_loadu_ps(t.O + j * Tq + r0), inv));
    }
    const __m512i col = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32((int)Tq));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < g->d; j += 16) {
            const __mmask16 k = g->d - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (g->d - j)) - 1);
            const __m512 x = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, col, t.O + j * Tq + r, 4);
            if (g->bf16)
                _mm256_mask_storeu_epi16((uint16_t *)out + r * ldo + j, k, (__m256i)_mm512_cvtneps_pbh(x));
            else
                _mm512_mask_storeu_ps((float *)out + r * ldo + j, k, x);
        }
}
#endif
