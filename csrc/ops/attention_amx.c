/* bf16 attention tiles on AMX (Intel Advanced Matrix Extensions).
 *
 * The same tasks as attention.c's tile loop (batch, head, block of query
 * rows), with both products on the tile unit: 16x16 f32 accumulators fed by
 * 16x32 bf16 rows (A) and 16 pairs-of-rows x 16 columns (B, "VNNI" pairs).
 * Per (batch, head) a thread repacks K (as B of S = Q K^T, head dim padded to
 * 32 with zeros) and V (as B of O = P V, keys padded to 32) into whole tiles;
 * a query block is copied into zero-padded rows. Scores and accumulation are
 * f32; exp(score - max) is rounded to bf16 for P V (as a bf16 attention's
 * probabilities are) and the 1/sum is applied to the f32 output rows.
 *
 * Used only where the process's ISA decision (core/engine.h) allows AMX, so
 * ONEDNN_MAX_CPU_ISA below avx512_core_amx turns it off as it does oneDNN's.
 * Linux hands out the tile registers only on request (arch_prctl
 * ARCH_REQ_XCOMP_PERM), asked once; without it, or without AMX, the caller
 * keeps its widening path. */
#include <float.h>
#include <string.h>

#include "core/engine.h"
#include "ops_internal.h"
#include "vmath.h"

#if AVQ_HAVE_AMX_KERNELS
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#define AMX_TARGET          __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16")))
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA  18

/* The ISA decision (core/engine.c) says whether the CPU has AMX-BF16 with the
 * OS saving tile state and whether oneDNN's cap allows AMX; what is left is
 * Linux's per-process grant of the tile data. */
static int amx_probe(void) {
    if (!avq_isa_get()->amx_bf16) return 0;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}

int avq_attention_amx_supported(void) {
    /* A fact of the machine, probed once (the prctl is per process): -1 unknown, else 0/1. */
    static int state = -1;
    int s = __atomic_load_n(&state, __ATOMIC_ACQUIRE);
    if (s < 0) {
        s = amx_probe();
        __atomic_store_n(&state, s, __ATOMIC_RELEASE);
    }
    return s;
}

typedef struct tilecfg {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tilecfg;

static int64_t up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

void avq_attention_amx_dims(int64_t M, int64_t d, avq_amx_dims *g) {
    g->Mpad = up(M, 32);
    g->dk = up(d, 32); /* head dim as the reduction of Q K^T */
    g->dn = up(d, 16); /* head dim as the columns of P V */
}

AMX_TARGET void avq_attention_amx_begin(void) {
    tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    /* GCC 12 does not see that ldtilecfg reads cfg and drops the stores above. */
    __asm__ volatile("" : : "r"(&cfg) : "memory");
    _tile_loadconfig(&cfg);
}

AMX_TARGET void avq_attention_amx_end(void) { _tile_release(); }

/* kp tile (m/16, kk): row r, column 2n + e = k[m + n][32 kk + 2 r + e]. */
void avq_attention_amx_pack_k(const uint16_t *k, int64_t ld, int64_t M, int64_t d, const avq_amx_dims *g,
                              uint16_t *kp) {
    const int64_t nk = g->dk / 32;
    for (int64_t mb = 0; mb < g->Mpad / 16; mb++)
        for (int64_t kk = 0; kk < nk; kk++) {
            uint16_t *tile = kp + (mb * nk + kk) * 512;
            for (int r = 0; r < 16; r++)
                for (int n = 0; n < 16; n++)
                    for (int e = 0; e < 2; e++) {
                        int64_t m = mb * 16 + n, j = kk * 32 + 2 * r + e;
                        tile[r * 32 + 2 * n + e] = m < M && j < d ? k[m * ld + j] : 0;
                    }
        }
}

/* vp tile (m/32, j/16): row r, column 2n + e = v[m + 2 r + e][j + n]. */
void avq_attention_amx_pack_v(const uint16_t *v, int64_t ld, int64_t M, int64_t d, const avq_amx_dims *g,
                              uint16_t *vp) {
    const int64_t nj = g->dn / 16;
    for (int64_t mb = 0; mb < g->Mpad / 32; mb++)
        for (int64_t jb = 0; jb < nj; jb++) {
            uint16_t *tile = vp + (mb * nj + jb) * 512;
            for (int r = 0; r < 16; r++)
                for (int n = 0; n < 16; n++)
                    for (int e = 0; e < 2; e++) {
                        int64_t m = mb * 32 + 2 * r + e, j = jb * 16 + n;
                        tile[r * 32 + 2 * n + e] = m < M && j < d ? v[m * ld + j] : 0;
                    }
        }
}

/* S[32 rows][Mpad] = Q[32 rows][dk] K^T: q rows zero-padded to dk, stride dk. */
AMX_TARGET void avq_attention_amx_qk32(const uint16_t *q, const uint16_t *kp, const avq_amx_dims *g, float *S) {
    const int64_t nk = g->dk / 32, ldS = g->Mpad * 4;
    for (int64_t mb = 0; mb < g->Mpad / 16; mb += 2) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t kk = 0; kk < nk; kk++) {
            _tile_loadd(4, q + kk * 32, g->dk * 2);
            _tile_loadd(5, q + 16 * g->dk + kk * 32, g->dk * 2);
            _tile_loadd(6, kp + (mb * nk + kk) * 512, 64);
            _tile_loadd(7, kp + ((mb + 1) * nk + kk) * 512, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
        _tile_stored(0, S + mb * 16, ldS);
        _tile_stored(1, S + (mb + 1) * 16, ldS);
        _tile_stored(2, S + 16 * g->Mpad + mb * 16, ldS);
        _tile_stored(3, S + 16 * g->Mpad + (mb + 1) * 16, ldS);
    }
}

/* O[32 rows][dn] = P[32 rows][Mpad] V (P bf16 with stride Mpad). */
AMX_TARGET void avq_attention_amx_pv32(const uint16_t *P, const uint16_t *vp, const avq_amx_dims *g, float *O) {
    const int64_t nj = g->dn / 16, ldP = g->Mpad * 2, ldO = g->dn * 4;
    for (int64_t jb = 0; jb < nj; jb += 2) {
        const int two = jb + 1 < nj;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t mb = 0; mb < g->Mpad / 32; mb++) {
            _tile_loadd(4, P + mb * 32, ldP);
            _tile_loadd(5, P + 16 * g->Mpad + mb * 32, ldP);
            _tile_loadd(6, vp + (mb * nj + jb) * 512, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(2, 5, 6);
            if (two) {
                _tile_loadd(7, vp + (mb * nj + jb + 1) * 512, 64);
                _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(3, 5, 7);
            }
        }
        _tile_stored(0, O + jb * 16, ldO);
        _tile_stored(2, O + 16 * g->dn + jb * 16, ldO);
        if (two) {
            _tile_stored(1, O + (jb + 1) * 16, ldO);
            _tile_stored(3, O + 16 * g->dn + (jb + 1) * 16, ldO);
        }
    }
}

/* p[0, Mpad) = bf16(exp(scale * s - max)) over [0, limit), zeros after;
 * returns the sum of the rounded values' f32 originals. One pass for the max,
 * one for exp, sum and rounding: the 1/sum goes onto the output rows. The exp
 * is 2^n * p(r) with a degree-5 polynomial (relative error 3e-6, a thousandth
 * of the bf16 rounding that follows), n applied by vscalefps, which also
 * takes exponents far below the float range to 0 without a clamp. */
AMX_TARGET float avq_attention_amx_softmax(const float *s, int64_t limit, int64_t Mpad, float scale, uint16_t *p) {
    const __m512 vs = _mm512_set1_ps(scale);
    __m512 vmx = _mm512_set1_ps(-FLT_MAX);
    int64_t j = 0;
    for (; j + 16 <= limit; j += 16) vmx = _mm512_max_ps(vmx, _mm512_mul_ps(_mm512_loadu_ps(s + j), vs));
    float mx = _mm512_reduce_max_ps(vmx);
    for (; j < limit; j++) mx = scale * s[j] > mx ? scale * s[j] : mx;
    const __m512 vm = _mm512_set1_ps(mx), l2e = _mm512_set1_ps(1.44269504088896341f);
    const __m512 c1 = _mm512_set1_ps(0.693145751953125f), c2 = _mm512_set1_ps(1.42860682030941723e-06f);
    const __m512 p5 = _mm512_set1_ps(1.f / 120.f), p4 = _mm512_set1_ps(1.f / 24.f), p3 = _mm512_set1_ps(1.f / 6.f),
                 p2 = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.f);
    __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
#define AVQ_EXP16(x_, out_)                                                                                      \
    do {                                                                                                         \
        __m512 n_ = _mm512_roundscale_ps(_mm512_mul_ps(x_, l2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); \
        __m512 r_ = _mm512_fnmadd_ps(n_, c2, _mm512_fnmadd_ps(n_, c1, x_));                                      \
        __m512 q_ = _mm512_fmadd_ps(_mm512_fmadd_ps(_mm512_fmadd_ps(p5, r_, p4), r_, p3), r_, p2);               \
        q_ = _mm512_fmadd_ps(_mm512_fmadd_ps(q_, r_, one), r_, one);                                             \
        out_ = _mm512_scalef_ps(q_, n_);                                                                         \
    } while (0)
    j = 0;
    for (; j + 32 <= limit; j += 32) {
        __m512 e0, e1;
        AVQ_EXP16(_mm512_fmsub_ps(_mm512_loadu_ps(s + j), vs, vm), e0);
        AVQ_EXP16(_mm512_fmsub_ps(_mm512_loadu_ps(s + j + 16), vs, vm), e1);
        sum0 = _mm512_add_ps(sum0, e0);
        sum1 = _mm512_add_ps(sum1, e1);
        _mm512_storeu_si512(p + j, (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
    }
#undef AVQ_EXP16
    float sum = _mm512_reduce_add_ps(_mm512_add_ps(sum0, sum1));
    for (; j < limit; j++) {
        float e = avq_vexpf(scale * s[j] - mx);
        sum += e;
        p[j] = avq_f32_to_bf16(e);
    }
    for (; j < Mpad; j++) p[j] = 0;
    return sum;
}

#else
int avq_attention_amx_supported(void) { return 0; }
#endif
