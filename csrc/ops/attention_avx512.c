/* Attention tiles on AVX-512 register blocks, fp32 and (with AVX512-BF16) bf16.
 *
 * The same tasks as attention.c's tile loop (batch, head, block of up to
 * ATTN_AVX512_T query rows). A task walks the keys in blocks of 64 to 512
 * (key_block: the block's packed K and V stay in L2 while all its row groups
 * pass, where whole rows of 4096 keys would stream K and V from L3 for every
 * group) with an online softmax: per row a running max and sum, the output
 * rescaled when the max moves. Per group of ATTN_R rows and key block:
 * S = Q K^T, the softmax step, O += P V, each product a register-blocked
 * micro-kernel of ATTN_R rows x up to 4 vectors of 16 columns (24
 * accumulators). A head's K and V are repacked once per (batch, head) so that
 * every vector load is one contiguous 64-byte line:
 *   K: key blocks of 16, inside one a row per head-dim step (bf16: per pair of
 *      head-dim elements, interleaved as vdpbf16ps wants them);
 *   V: head-dim blocks of 16, inside one a row per key (bf16: per key pair).
 * Keys are padded to 16 and the head dim to 16 (V) / 2 (bf16 K) with zeros.
 *
 * bf16 multiplies bf16 pairs into f32 (vdpbf16ps), rounds exp(score - max) to
 * bf16 for P V as a bf16 attention's probabilities are (the AMX path does the
 * same) and applies 1/sum to the f32 output rows. fp32 is all f32 FMA with a
 * degree-6 exp. The file targets AVX512-BF16, but only the bf16 branches use
 * its instructions: attention.c calls the fp32 ones on any AVX-512 CPU. */
#include <float.h>
#include <stdint.h>
#include <string.h>

#include "ops_internal.h"
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

/* bf16: block mb, pair p, column n, element e = k[16 mb + n][2 p + e]; f32: block mb, row j, column n = k[16 mb + n][j].
 * A transpose of 32-bit words (bf16 pairs or floats): whole blocks by gathers,
 * the padded tail (keys past M, the odd bf16 head dim's last pair) element by element. */
void avq_attention_avx512_pack_k(const void *k, int64_t ld, int64_t M, const avq_avx512_dims *g, void *kp) {
    const int64_t es = g->bf16 ? 2 : 4, words = g->bf16 ? g->dk / 2 : g->d, full = g->bf16 ? g->d / 2 : g->d;
    const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32((int)(ld * es)));
    uint32_t *t = kp;
    for (int64_t mb = 0; mb < g->Mpad / 16; mb++) {
        const char *src = (const char *)k + (size_t)(mb * 16 * ld * es);
        const int whole = mb * 16 + 16 <= M && ld * es * 16 < INT32_MAX;
        for (int64_t w = 0; w < words; w++, t += 16) {
            if (whole && w < full) {
                _mm512_storeu_si512(t, _mm512_i32gather_epi32(rows, src + w * 4, 1));
                continue;
            }
            for (int n = 0; n < 16; n++) {
                const int64_t m = mb * 16 + n;
                if (g->bf16) {
                    const uint16_t *r = (const uint16_t *)k + m * ld;
                    const uint32_t lo = m < M ? r[2 * w] : 0, hi = m < M && 2 * w + 1 < g->d ? r[2 * w + 1] : 0;
                    t[n] = lo | hi << 16;
                } else {
                    t[n] = 0;
                    if (m < M) memcpy(t + n, (const float *)k + m * ld + w, 4);
                }
            }
        }
    }
}

/* bf16: block jb, key pair mp, column n, element e = v[2 mp + e][16 jb + n]; f32: block jb, key m, column n = v[m][16 jb + n].
 * Rows of 16 copied (f32) or two keys' rows interleaved (bf16); the padded tail element by element. */
void avq_attention_avx512_pack_v(const void *v, int64_t ld, int64_t M, const avq_avx512_dims *g, void *vp) {
    if (g->bf16) {
        const uint16_t *s = v;
        uint16_t *t = vp;
        for (int64_t jb = 0; jb < g->dn / 16; jb++)
            for (int64_t mp = 0; mp < g->Mpad / 2; mp++, t += 32) {
                const int64_t m = 2 * mp;
                if (jb * 16 + 16 <= g->d && m + 2 <= M) {
                    const __m512i a =
                        _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(s + m * ld + jb * 16)));
                    const __m512i b =
                        _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(s + (m + 1) * ld + jb * 16)));
                    _mm512_storeu_si512(t, _mm512_or_si512(a, _mm512_slli_epi32(b, 16)));
                    continue;
                }
                for (int n = 0; n < 16; n++)
                    for (int e = 0; e < 2; e++) {
                        const int64_t j = jb * 16 + n;
                        t[2 * n + e] = m + e < M && j < g->d ? s[(m + e) * ld + j] : 0;
                    }
            }
    } else {
        const float *s = v;
        float *t = vp;
        for (int64_t jb = 0; jb < g->dn / 16; jb++) {
            const int64_t nj = g->d - jb * 16 < 16 ? g->d - jb * 16 : 16;
            const __mmask16 cols = (__mmask16)((1u << nj) - 1);
            for (int64_t m = 0; m < g->Mpad; m++, t += 16)
                _mm512_storeu_ps(t, m < M ? _mm512_maskz_loadu_ps(cols, s + m * ld + jb * 16) : _mm512_setzero_ps());
        }
    }
}

#define R          ATTN_R
#define NCMAX      4 /* vectors per micro-kernel: R x 4 = 24 accumulators of 32 registers */
#define AVQ_INLINE static inline __attribute__((always_inline))

/* The micro-kernels: R rows x NC vectors, NC a constant at each call site so
 * the accumulators stay in registers. */

/* C[r][16 c + n] (row stride ldc) = (accumulate ? C : 0) + sum_p A[r][2p..2p+1] . B[c][p][n][0..1]
 * over np bf16 pairs: S = Q K^T (A = the query rows, B = packed K, zeroed) and O += P V (A = the
 * probabilities, B = packed V, accumulated into the running output). */
AVQ_INLINE void dot_bf16(const uint16_t *A, int64_t lda, int64_t np, const uint16_t *B, int64_t bstride, float *Cm,
                         int64_t ldc, int accumulate, const int NC) {
    __m512 acc[R][4];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++)
            acc[r][c] = accumulate ? _mm512_loadu_ps(Cm + r * ldc + 16 * c) : _mm512_setzero_ps();
    for (int64_t p = 0; p < np; p++) {
        __m512bh b[4];
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++) b[c] = (__m512bh)_mm512_loadu_si512(B + c * bstride + p * 32);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            int32_t pair;
            memcpy(&pair, A + r * lda + 2 * p, 4);
            const __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 4
            for (int c = 0; c < NC; c++) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], a, b[c]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++) _mm512_storeu_ps(Cm + r * ldc + 16 * c, acc[r][c]);
}

/* The same product in f32 over K elements: B rows of 16 per element (head-dim element or key). */
AVQ_INLINE void dot_f32(const float *A, int64_t lda, int64_t K, const float *B, int64_t bstride, float *Cm, int64_t ldc,
                        int accumulate, const int NC) {
    __m512 acc[R][4];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++)
            acc[r][c] = accumulate ? _mm512_loadu_ps(Cm + r * ldc + 16 * c) : _mm512_setzero_ps();
    for (int64_t j = 0; j < K; j++) {
        __m512 b[4];
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++) b[c] = _mm512_loadu_ps(B + c * bstride + j * 16);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const __m512 a = _mm512_set1_ps(A[r * lda + j]);
#pragma GCC unroll 4
            for (int c = 0; c < NC; c++) acc[r][c] = _mm512_fmadd_ps(a, b[c], acc[r][c]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++) _mm512_storeu_ps(Cm + r * ldc + 16 * c, acc[r][c]);
}

/* Splits n vectors into chunks of at most NCMAX, as even as they go (5 -> 3 + 2, not 4 + 1:
 * a one-vector chunk waits on its R broadcasts). Returns the size of chunk i of k. */
static int chunk_size(int64_t n, int64_t k, int64_t i) { return (int)(n / k + (i < n % k)); }

#define DISPATCH(NCV, CALL)  \
    switch (NCV) {           \
    case 4: CALL(4); break;  \
    case 3: CALL(3); break;  \
    case 2: CALL(2); break;  \
    default: CALL(1); break; \
    }

/* exp(x) for 16 lanes as 2^n p(r), |r| <= ln2 / 2: degree 6 (about 2 ulp, for
 * fp32) or 5 (relative 3e-6, far below the bf16 rounding after it); 2^n by
 * vscalefps, which takes exponents far below the float range to 0. */
static inline __m512 vexp16(__m512 x, const int deg6) {
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723e-06f),
                                      _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x));
    __m512 q = deg6 ? _mm512_fmadd_ps(_mm512_set1_ps(1.f / 720.f), r, _mm512_set1_ps(1.f / 120.f))
                    : _mm512_set1_ps(1.f / 120.f);
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.f / 24.f));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.f / 6.f));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(0.5f));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.f));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.f));
    return _mm512_scalef_ps(q, n);
}

static inline __mmask16 lanes(int64_t j, int64_t limit) {
    return j + 16 <= limit ? 0xffff : j < limit ? (__mmask16)((1u << (limit - j)) - 1) : 0;
}

/* One row's step of the online softmax over a block of kn scores s (valid
 * [0, lim), lim >= 1): the running max *m and sum *l move to the block,
 * exp(scale * s - max) goes to p (bf16) or back into s (f32), zeros on
 * [lim, kn); returns the factor exp(old max - new max) for the row's output. */
static float online_row(float *s, int64_t lim, int64_t kn, float scale, float *m, float *l, uint16_t *p) {
    /* the max of scale * s: scale times the max of s, or the min for a negative scale */
    float bm;
    if (scale >= 0) {
        __m512 vmx = _mm512_set1_ps(-FLT_MAX);
        for (int64_t j = 0; j < lim; j += 16) vmx = _mm512_mask_max_ps(vmx, lanes(j, lim), vmx, _mm512_loadu_ps(s + j));
        bm = _mm512_reduce_max_ps(vmx) * scale;
    } else {
        __m512 vmn = _mm512_set1_ps(FLT_MAX);
        for (int64_t j = 0; j < lim; j += 16) vmn = _mm512_mask_min_ps(vmn, lanes(j, lim), vmn, _mm512_loadu_ps(s + j));
        bm = _mm512_reduce_min_ps(vmn) * scale;
    }
    const float mx = bm > *m ? bm : *m;
    const float alpha = *m == -FLT_MAX ? 0.f : avq_vexpf(*m - mx);
    const __m512 vs = _mm512_set1_ps(scale), vm = _mm512_set1_ps(mx);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < kn; j += 16) {
        const __mmask16 k = lanes(j, lim);
        const __m512 e = _mm512_maskz_mov_ps(k, vexp16(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(k, s + j), vs, vm), !p));
        sum = _mm512_add_ps(sum, e);
        if (p)
            _mm256_storeu_si256((__m256i *)(p + j), (__m256i)_mm512_cvtneps_pbh(e));
        else
            _mm512_storeu_ps(s + j, e);
    }
    *m = mx;
    *l = *l * alpha + _mm512_reduce_add_ps(sum);
    return alpha;
}

/* Keys per block of the online softmax: the block's packed K and V within
 * about 128 KiB (in L2 while every row group of the task passes over them). */
static int64_t key_block(const avq_avx512_dims *g) {
    const int64_t es = g->bf16 ? 2 : 4;
    int64_t kb = (128 << 10) / ((g->dk + g->dn) * es) / 16 * 16;
    kb = kb < 64 ? 64 : kb > 512 ? 512 : kb;
    return kb < g->Mpad ? kb : g->Mpad;
}

typedef struct task_ws {
    void *q;              /* T x dk query rows, zero-padded */
    float *S, *O, *m, *l; /* R x KB scores; T x dn outputs; running max and sum per row */
    uint16_t *P;          /* R x KB bf16 probabilities */
} task_ws;

static task_ws carve(const avq_avx512_dims *g, void *ws, int64_t KB) {
    const int64_t es = g->bf16 ? 2 : 4, T = ATTN_AVX512_T;
    char *w = ws;
    task_ws t;
    t.q = w;
    w += up(T * g->dk * es, 64);
    t.S = (float *)w;
    w += up(R * KB * 4, 64);
    t.P = (uint16_t *)w;
    w += up(R * KB * 2, 64);
    t.O = (float *)w;
    w += up(T * g->dn * 4, 64);
    t.m = (float *)w;
    t.l = t.m + T;
    return t;
}

int64_t avq_attention_avx512_task_workspace(const avq_avx512_dims *g) {
    const int64_t es = g->bf16 ? 2 : 4, T = ATTN_AVX512_T, KB = key_block(g);
    return up(T * g->dk * es, 64) + up(R * KB * 4, 64) + up(R * KB * 2, 64) + up(T * g->dn * 4, 64) + 2 * T * 4;
}

void avq_attention_avx512_task(const avq_avx512_dims *g, const void *q, int64_t ldq, int64_t rows, int64_t q0,
                               int64_t M, int causal, float scale, const void *kp, const void *vp, void *ws, void *out,
                               int64_t ldo) {
    const int64_t dk = g->dk, dn = g->dn, Mpad = g->Mpad, KB = key_block(g);
    const size_t es = g->bf16 ? 2 : 4;
    const int64_t Tp = up(rows, R), nvb = dn / 16, vch = (nvb + NCMAX - 1) / NCMAX;
    const task_ws t = carve(g, ws, KB);

    memset(t.q, 0, (size_t)(Tp * dk) * es);
    for (int64_t r = 0; r < rows; r++)
        memcpy((char *)t.q + (size_t)(r * dk) * es, (const char *)q + (size_t)(r * ldq) * es, (size_t)g->d * es);
    memset(t.O, 0, (size_t)(Tp * dn) * 4);
    for (int64_t r = 0; r < Tp; r++) {
        t.m[r] = -FLT_MAX;
        t.l[r] = 0.f;
    }
    /* keys the task's last row can see */
    const int64_t kend = causal && q0 + Tp < M ? up(q0 + Tp, 16) : Mpad;

    for (int64_t k0 = 0; k0 < kend; k0 += KB) {
        const int64_t kn = kend - k0 < KB ? kend - k0 : KB, nkb = kn / 16, kch = (nkb + NCMAX - 1) / NCMAX;
        for (int64_t g0 = 0; g0 < Tp; g0 += R) {
            if (causal && k0 > q0 + g0 + R - 1) continue; /* no row of the group sees these keys */
            /* S = Q K^T over the block */
            int64_t kb0 = 0;
            for (int64_t i = 0; i < kch; i++) {
                const int nc = chunk_size(nkb, kch, i);
                if (g->bf16) {
                    const uint16_t *qg = (const uint16_t *)t.q + g0 * dk,
                                   *kb = (const uint16_t *)kp + (k0 + kb0 * 16) * dk;
#define QKB(N) dot_bf16(qg, dk, dk / 2, kb, 16 * dk, t.S + kb0 * 16, KB, 0, N)
                    DISPATCH(nc, QKB)
#undef QKB
                } else {
                    const float *qg = (const float *)t.q + g0 * dk, *kb = (const float *)kp + (k0 + kb0 * 16) * dk;
#define QKF(N) dot_f32(qg, dk, dk, kb, 16 * dk, t.S + kb0 * 16, KB, 0, N)
                    DISPATCH(nc, QKF)
#undef QKF
                }
                kb0 += nc;
            }
            /* the online softmax, row by row; a row that sees no key of the block keeps its state */
            for (int64_t r = 0; r < R; r++) {
                int64_t limit = causal ? q0 + g0 + r + 1 : M;
                limit = (limit < M ? limit : M) - k0;
                float *srow = t.S + r * KB;
                uint16_t *prow = g->bf16 ? t.P + r * KB : NULL;
                if (limit <= 0) {
                    if (prow)
                        memset(prow, 0, (size_t)kn * 2);
                    else
                        memset(srow, 0, (size_t)kn * 4);
                    continue;
                }
                const float alpha =
                    online_row(srow, limit < kn ? limit : kn, kn, scale, t.m + g0 + r, t.l + g0 + r, prow);
                if (alpha != 1.f) {
                    float *orow = t.O + (g0 + r) * dn;
                    const __m512 a = _mm512_set1_ps(alpha);
                    for (int64_t j = 0; j < dn; j += 16)
                        _mm512_storeu_ps(orow + j, _mm512_mul_ps(_mm512_loadu_ps(orow + j), a));
                }
            }
            /* O += P V over the block */
            int64_t vb0 = 0;
            for (int64_t i = 0; i < vch; i++) {
                const int nc = chunk_size(nvb, vch, i);
                float *og = t.O + g0 * dn + vb0 * 16;
                if (g->bf16) {
                    const uint16_t *vb = (const uint16_t *)vp + vb0 * 16 * Mpad + k0 * 16;
#define PVB(N) dot_bf16(t.P, KB, kn / 2, vb, 16 * Mpad, og, dn, 1, N)
                    DISPATCH(nc, PVB)
#undef PVB
                } else {
                    const float *vb = (const float *)vp + vb0 * 16 * Mpad + k0 * 16;
#define PVF(N) dot_f32(t.S, KB, kn, vb, 16 * Mpad, og, dn, 1, N)
                    DISPATCH(nc, PVF)
#undef PVF
                }
                vb0 += nc;
            }
        }
    }

    for (int64_t r = 0; r < rows; r++) {
        float *orow = t.O + r * dn;
        const __m512 s = _mm512_set1_ps(1.f / t.l[r]);
        for (int64_t j = 0; j < dn; j += 16) _mm512_storeu_ps(orow + j, _mm512_mul_ps(_mm512_loadu_ps(orow + j), s));
        avq_store_row(out, g->bf16 ? AVQ_BF16 : AVQ_F32, r * ldo, orow, g->d);
    }
}
#endif
