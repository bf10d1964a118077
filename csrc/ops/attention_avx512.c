/* Attention tiles on AVX-512 register blocks, fp32 and (with AVX512-BF16) bf16.
 *
 * The same tasks as attention.c's tile loop; per group of ATTN_R query rows:
 * S = Q K^T for all keys, a row softmax, O = P V, each product a
 * register-blocked micro-kernel of ATTN_R rows x up to 4 vectors of 16 columns
 * (24 accumulators). A head's K and V are repacked once per (batch, head) so
 * every vector load is one contiguous 64-byte line:
 *   K: key blocks of 16, inside one a row per head-dim step (bf16: per pair of
 *      head-dim elements, interleaved as vdpbf16ps wants them);
 *   V: head-dim blocks of 16, inside one a row per key (bf16: per key pair).
 * Keys are padded to 16 and the head dim to 16 (V) / 2 (bf16 K) with zeros.
 *
 * bf16 multiplies bf16 pairs into f32 (vdpbf16ps), rounds exp(score - max) to
 * bf16 for P V as a bf16 attention's probabilities are (the AMX path does the
 * same) and applies 1/sum to the f32 output rows. fp32 is all f32 FMA, with
 * the exp of simd_body.h's softmax. */
#include <float.h>
#include <string.h>

#include "ops_internal.h"
#include "simd.h"
#include "vmath.h"

#if AVQ_HAVE_AVX512_ATTENTION
#include <immintrin.h>

#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma")

static int64_t up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

void avq_attention_avx512_dims(int64_t M, int64_t d, avq_dtype dt, avq_avx512_dims *g) {
    g->bf16 = dt == AVQ_BF16;
    g->d = d;
    g->Mpad = up(M, 16);
    g->dk = g->bf16 ? up(d, 2) : d;
    g->dn = up(d, 16);
}

/* bf16: block mb, pair p, column n, element e = k[16 mb + n][2 p + e]; f32: block mb, row j, column n = k[16 mb + n][j]. */
void avq_attention_avx512_pack_k(const void *k, int64_t ld, int64_t M, const avq_avx512_dims *g, void *kp) {
    if (g->bf16) {
        const uint16_t *s = k;
        uint16_t *t = kp;
        for (int64_t mb = 0; mb < g->Mpad / 16; mb++)
            for (int64_t p = 0; p < g->dk / 2; p++, t += 32)
                for (int n = 0; n < 16; n++)
                    for (int e = 0; e < 2; e++) {
                        int64_t m = mb * 16 + n, j = 2 * p + e;
                        t[2 * n + e] = m < M && j < g->d ? s[m * ld + j] : 0;
                    }
    } else {
        const float *s = k;
        float *t = kp;
        for (int64_t mb = 0; mb < g->Mpad / 16; mb++)
            for (int64_t j = 0; j < g->d; j++, t += 16)
                for (int n = 0; n < 16; n++) {
                    int64_t m = mb * 16 + n;
                    t[n] = m < M ? s[m * ld + j] : 0.f;
                }
    }
}

/* bf16: block jb, key pair mp, column n, element e = v[2 mp + e][16 jb + n]; f32: block jb, key m, column n = v[m][16 jb + n]. */
void avq_attention_avx512_pack_v(const void *v, int64_t ld, int64_t M, const avq_avx512_dims *g, void *vp) {
    if (g->bf16) {
        const uint16_t *s = v;
        uint16_t *t = vp;
        for (int64_t jb = 0; jb < g->dn / 16; jb++)
            for (int64_t mp = 0; mp < g->Mpad / 2; mp++, t += 32)
                for (int n = 0; n < 16; n++)
                    for (int e = 0; e < 2; e++) {
                        int64_t m = 2 * mp + e, j = jb * 16 + n;
                        t[2 * n + e] = m < M && j < g->d ? s[m * ld + j] : 0;
                    }
    } else {
        const float *s = v;
        float *t = vp;
        for (int64_t jb = 0; jb < g->dn / 16; jb++)
            for (int64_t m = 0; m < g->Mpad; m++, t += 16)
                for (int n = 0; n < 16; n++) {
                    int64_t j = jb * 16 + n;
                    t[n] = m < M && j < g->d ? s[m * ld + j] : 0.f;
                }
    }
}

#define R ATTN_R
#define AVQ_INLINE static inline __attribute__((always_inline))

/* The micro-kernels: R rows x NC vectors, NC a constant at each call site so
 * the accumulators stay in registers. */

/* S[r][16 c + n] (row stride ldS) += sum_p q[r][2p..2p+1] . kb[c][p][n][0..1]; bf16 pairs. */
AVQ_INLINE void qk_bf16(const uint16_t *q, int64_t dk, const uint16_t *kb, int64_t kstride, float *S, int64_t ldS,
                        const int NC) {
    __m512 acc[R][4];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++) acc[r][c] = _mm512_setzero_ps();
    for (int64_t p = 0; p < dk / 2; p++) {
        __m512bh b[4];
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++) b[c] = (__m512bh)_mm512_loadu_si512(kb + c * kstride + p * 32);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            int32_t pair;
            memcpy(&pair, q + r * dk + 2 * p, 4);
            const __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 4
            for (int c = 0; c < NC; c++) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], a, b[c]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++) _mm512_storeu_ps(S + r * ldS + 16 * c, acc[r][c]);
}

/* O[r][16 c + n] (row stride ldO) = sum_mp P[r][2mp..2mp+1] . vb[c][mp][n][0..1]; bf16 pairs over Mk keys. */
AVQ_INLINE void pv_bf16(const uint16_t *P, int64_t ldP, int64_t Mk, const uint16_t *vb, int64_t vstride, float *O,
                        int64_t ldO, const int NC) {
    __m512 acc[R][4];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++) acc[r][c] = _mm512_setzero_ps();
    for (int64_t mp = 0; mp < Mk / 2; mp++) {
        __m512bh b[4];
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++) b[c] = (__m512bh)_mm512_loadu_si512(vb + c * vstride + mp * 32);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            int32_t pair;
            memcpy(&pair, P + r * ldP + 2 * mp, 4);
            const __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 4
            for (int c = 0; c < NC; c++) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], a, b[c]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++) _mm512_storeu_ps(O + r * ldO + 16 * c, acc[r][c]);
}

/* The same two products in f32: kb rows of 16 per head-dim element, vb rows of 16 per key. */
AVQ_INLINE void qk_f32(const float *q, int64_t d, const float *kb, int64_t kstride, float *S, int64_t ldS,
                       const int NC) {
    __m512 acc[R][4];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++) acc[r][c] = _mm512_setzero_ps();
    for (int64_t j = 0; j < d; j++) {
        __m512 b[4];
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++) b[c] = _mm512_loadu_ps(kb + c * kstride + j * 16);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const __m512 a = _mm512_set1_ps(q[r * d + j]);
#pragma GCC unroll 4
            for (int c = 0; c < NC; c++) acc[r][c] = _mm512_fmadd_ps(a, b[c], acc[r][c]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++) _mm512_storeu_ps(S + r * ldS + 16 * c, acc[r][c]);
}

AVQ_INLINE void pv_f32(const float *P, int64_t ldP, int64_t Mk, const float *vb, int64_t vstride, float *O,
                       int64_t ldO, const int NC) {
    __m512 acc[R][4];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++) acc[r][c] = _mm512_setzero_ps();
    for (int64_t m = 0; m < Mk; m++) {
        __m512 b[4];
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++) b[c] = _mm512_loadu_ps(vb + c * vstride + m * 16);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const __m512 a = _mm512_set1_ps(P[r * ldP + m]);
#pragma GCC unroll 4
            for (int c = 0; c < NC; c++) acc[r][c] = _mm512_fmadd_ps(a, b[c], acc[r][c]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++) _mm512_storeu_ps(O + r * ldO + 16 * c, acc[r][c]);
}

/* Splits n vectors into chunks of at most 4, as even as they go (5 -> 3 + 2, not 4 + 1:
 * a one-vector chunk waits on its R broadcasts). Returns the size of chunk i of k. */
static int chunk_size(int64_t n, int64_t k, int64_t i) { return (int)(n / k + (i < n % k)); }

#define DISPATCH(NCV, CALL)        \
    switch (NCV) {                 \
    case 4: CALL(4); break;        \
    case 3: CALL(3); break;        \
    case 2: CALL(2); break;        \
    default: CALL(1); break;       \
    }

/* p[0, Mk) = bf16(exp(scale * s - max)) over [0, limit), zeros after; returns
 * the sum of the f32 values before rounding. exp as 2^n p(r), degree 5
 * (relative error 3e-6, far below the bf16 rounding after it), 2^n by
 * vscalefps, which takes far-below-range exponents to 0 without a clamp. */
static float softmax_bf16(const float *s, int64_t limit, int64_t Mk, float scale, uint16_t *p) {
    const __m512 vs = _mm512_set1_ps(scale);
    __m512 vmx = _mm512_set1_ps(-FLT_MAX);
    int64_t j = 0;
    for (; j + 16 <= limit; j += 16) vmx = _mm512_max_ps(vmx, _mm512_loadu_ps(s + j));
    if (j < limit) {
        const __mmask16 m = (__mmask16)((1u << (limit - j)) - 1);
        vmx = _mm512_mask_max_ps(vmx, m, vmx, _mm512_maskz_loadu_ps(m, s + j));
    }
    /* max of scale * s is scale * max s for the positive scale attention takes; a
     * negative one (allowed) needs the min, so take the max of the products. */
    float mx = _mm512_reduce_max_ps(vmx) * scale;
    if (scale < 0) {
        mx = -FLT_MAX;
        for (j = 0; j < limit; j++) mx = scale * s[j] > mx ? scale * s[j] : mx;
    }
    const __m512 vm = _mm512_set1_ps(mx), l2e = _mm512_set1_ps(1.44269504088896341f);
    const __m512 c1 = _mm512_set1_ps(0.693145751953125f), c2 = _mm512_set1_ps(1.42860682030941723e-06f);
    const __m512 p5 = _mm512_set1_ps(1.f / 120.f), p4 = _mm512_set1_ps(1.f / 24.f), p3 = _mm512_set1_ps(1.f / 6.f),
                 p2 = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.f);
    __m512 sum = _mm512_setzero_ps();
    for (j = 0; j < Mk; j += 16) {
        const __mmask16 m = j + 16 <= limit ? 0xffff : j < limit ? (__mmask16)((1u << (limit - j)) - 1) : 0;
        const __m512 x = _mm512_fmsub_ps(_mm512_maskz_loadu_ps(m, s + j), vs, vm);
        __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, l2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m512 r = _mm512_fnmadd_ps(n, c2, _mm512_fnmadd_ps(n, c1, x));
        __m512 q = _mm512_fmadd_ps(_mm512_fmadd_ps(_mm512_fmadd_ps(p5, r, p4), r, p3), r, p2);
        q = _mm512_fmadd_ps(_mm512_fmadd_ps(q, r, one), r, one);
        const __m512 e = _mm512_maskz_mov_ps(m, _mm512_scalef_ps(q, n));
        sum = _mm512_add_ps(sum, e);
        _mm256_storeu_si256((__m256i *)(p + j), (__m256i)_mm512_cvtneps_pbh(e));
    }
    return _mm512_reduce_add_ps(sum);
}

void avq_attention_avx512_rows(const avq_avx512_dims *g, const void *q, int64_t ldq, int64_t rows, int64_t q0,
                               int64_t M, int causal, float scale, const void *kp, const void *vp, void *ws, void *out,
                               int64_t ldo) {
    const int64_t dk = g->dk, dn = g->dn, Mpad = g->Mpad;
    const size_t es = g->bf16 ? 2 : 4;
    /* workspace: query rows (R x dk, zero-padded), scores R x Mpad, bf16 P R x Mpad, output R x dn, 1/sums */
    char *w = ws;
    void *qb = w;
    float *S = (float *)(w + up(R * dk * (int64_t)es, 64));
    uint16_t *P = (uint16_t *)(S + R * Mpad);
    float *O = (float *)((char *)P + up(R * Mpad * 2, 64)), *inv = O + R * dn;
    /* keys this group's last row can see, whole 16-key blocks */
    const int64_t kmax = causal && q0 + R < M ? q0 + R : M, Mk = up(kmax, 16);
    const int64_t nkb = Mk / 16, kch = (nkb + 3) / 4, nvb = dn / 16, vch = (nvb + 3) / 4;

    memset(qb, 0, (size_t)(R * dk) * es);
    for (int64_t r = 0; r < rows; r++)
        memcpy((char *)qb + (size_t)(r * dk) * es, (const char *)q + (size_t)(r * ldq) * es, (size_t)g->d * es);

    int64_t kb0 = 0;
    for (int64_t i = 0; i < kch; i++) {
        const int nc = chunk_size(nkb, kch, i);
        if (g->bf16) {
            const uint16_t *kb = (const uint16_t *)kp + kb0 * 16 * dk;
#define QKB(N) qk_bf16(qb, dk, kb, 16 * dk, S + kb0 * 16, Mpad, N)
            DISPATCH(nc, QKB)
#undef QKB
        } else {
            const float *kb = (const float *)kp + kb0 * 16 * dk;
#define QKF(N) qk_f32(qb, dk, kb, 16 * dk, S + kb0 * 16, Mpad, N)
            DISPATCH(nc, QKF)
#undef QKF
        }
        kb0 += nc;
    }

    float (*softmax_row)(float *, int64_t, int64_t, float) = avq_simd()->softmax_row_unnormalised;
    for (int64_t r = 0; r < R; r++) {
        int64_t limit = causal ? q0 + r + 1 : M;
        limit = limit < M ? limit : M;
        const float sum = g->bf16 ? softmax_bf16(S + r * Mpad, limit, Mk, scale, P + r * Mpad)
                                  : softmax_row(S + r * Mpad, limit, Mk, scale);
        inv[r] = 1.f / sum;
    }

    int64_t vb0 = 0;
    for (int64_t i = 0; i < vch; i++) {
        const int nc = chunk_size(nvb, vch, i);
        if (g->bf16) {
            const uint16_t *vb = (const uint16_t *)vp + vb0 * 16 * Mpad;
#define PVB(N) pv_bf16(P, Mpad, Mk, vb, 16 * Mpad, O + vb0 * 16, dn, N)
            DISPATCH(nc, PVB)
#undef PVB
        } else {
            const float *vb = (const float *)vp + vb0 * 16 * Mpad;
#define PVF(N) pv_f32(S, Mpad, Mk, vb, 16 * Mpad, O + vb0 * 16, dn, N)
            DISPATCH(nc, PVF)
#undef PVF
        }
        vb0 += nc;
    }

    for (int64_t r = 0; r < rows; r++) {
        float *orow = O + r * dn;
        const __m512 s = _mm512_set1_ps(inv[r]);
        for (int64_t j = 0; j < dn; j += 16) _mm512_storeu_ps(orow + j, _mm512_mul_ps(_mm512_loadu_ps(orow + j), s));
        avq_store_row(out, g->bf16 ? AVQ_BF16 : AVQ_F32, r * ldo, orow, g->d);
    }
}

int64_t avq_attention_avx512_rows_workspace(const avq_avx512_dims *g) {
    const int64_t es = g->bf16 ? 2 : 4;
    return up(R * g->dk * es, 64) + R * g->Mpad * 4 + up(R * g->Mpad * 2, 64) + R * g->dn * 4 + R * 4;
}
#endif
