/* Multi-head attention, tiled over queries.
 *
 * Per tile of T queries: S = Q_tile K^T (oneDNN batched matmul over batch x
 * heads, reading the heads straight out of the [B, N, C] token matrices through
 * strides), then an OpenMP softmax over each row with the scale (and causal
 * mask) applied on the fly, then O_tile = P V written back through strides.
 * Only B x heads x T x M scores exist at a time. */
#include <float.h>
#include <math.h>
#include <stdio.h>

#include "ops_internal.h"

/* Score elements per tile: bounds the transient buffer to 32 MiB in f32. */
#define AVQ_ATTN_TILE_ELEMS (8 << 20)

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

typedef struct attn_shape {
    int64_t B, N, M, C, H, d, T;
    dnnl_data_type_t dt;
} attn_shape;

static avq_status md4(dnnl_memory_desc_t *md, dnnl_data_type_t dt, int64_t a, int64_t b, int64_t c, int64_t d,
                      int64_t sa, int64_t sb, int64_t sc, int64_t sd) {
    dnnl_dims_t dims = {a, b, c, d}, str = {sa, sb, sc, sd};
    if (dnnl_memory_desc_create_with_strides(md, 4, dims, dt, str) != dnnl_success)
        return avq_error(AVQ_ERR_DNNL, "cannot describe an attention operand");
    return AVQ_OK;
}

/* Records the two matmuls for tiles of T queries. */
static avq_status build_pair(avq_plan *p, const attn_shape *a, int64_t T) {
    avq_status st = AVQ_OK;
    avq_step *s_qk, *s_pv;
    dnnl_memory_desc_t qmd = NULL, kmd = NULL, smd = NULL, pmd = NULL, vmd = NULL, omd = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    int64_t B = a->B, H = a->H, N = a->N, M = a->M, C = a->C, d = a->d;
    AVQ_TRY(avq_plan_step(p, AVQ_STEP_ATTN_QK, &s_qk));
    s_qk->iaux[0] = T;
    if ((st = md4(&qmd, a->dt, B, H, T, d, N * C, d, C, 1)) != AVQ_OK) goto done;
    if ((st = md4(&kmd, a->dt, B, H, d, M, M * C, d, 1, C)) != AVQ_OK) goto done;
    if ((st = md4(&smd, dnnl_f32, B, H, T, M, H * T * M, T * M, M, 1)) != AVQ_OK) goto done;
    if ((st = md4(&pmd, a->dt, B, H, T, M, H * T * M, T * M, M, 1)) != AVQ_OK) goto done;
    if ((st = md4(&vmd, a->dt, B, H, M, d, M * C, d, C, 1)) != AVQ_OK) goto done;
    if ((st = md4(&omd, a->dt, B, H, T, d, N * C, d, C, 1)) != AVQ_OK) goto done;
    AVQ_DNNL(dnnl_primitive_attr_create(&attr), "attr");
    AVQ_DNNL(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user), "scratchpad mode");
    AVQ_DNNL(dnnl_matmul_primitive_desc_create(&pd, avq_plan_engine(p), qmd, kmd, NULL, smd, attr), "attention QK^T");
    if ((st = avq_step_arg(s_qk, DNNL_ARG_SRC, qmd)) != AVQ_OK) goto done;
    if ((st = avq_step_arg(s_qk, DNNL_ARG_WEIGHTS, kmd)) != AVQ_OK) goto done;
    if ((st = avq_step_arg(s_qk, DNNL_ARG_DST, smd)) != AVQ_OK) goto done;
    st = avq_step_set_primitive(p, s_qk, pd);
    pd = NULL;
    if (st != AVQ_OK) goto done;
    if ((st = avq_plan_step(p, AVQ_STEP_ATTN_PV, &s_pv)) != AVQ_OK) goto done;
    s_pv->iaux[0] = T;
    AVQ_DNNL(dnnl_matmul_primitive_desc_create(&pd, avq_plan_engine(p), pmd, vmd, NULL, omd, attr), "attention PV");
    if ((st = avq_step_arg(s_pv, DNNL_ARG_SRC, pmd)) != AVQ_OK) goto done;
    if ((st = avq_step_arg(s_pv, DNNL_ARG_WEIGHTS, vmd)) != AVQ_OK) goto done;
    if ((st = avq_step_arg(s_pv, DNNL_ARG_DST, omd)) != AVQ_OK) goto done;
    st = avq_step_set_primitive(p, s_pv, pd);
    pd = NULL;
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    dnnl_memory_desc_t mds[] = {qmd, kmd, smd, pmd, vmd, omd};
    for (int i = 0; i < 6; i++)
        if (mds[i]) dnnl_memory_desc_destroy(mds[i]);
    return st;
}

/* Row softmax of scale * s (+ causal mask), written as dt into p_out. */
static void softmax_rows(const attn_shape *a, int64_t T, int64_t q0, float *s, void *p_out, avq_dtype odt,
                         float scale, int causal) {
    int64_t rows = a->B * a->H * T, M = a->M;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        float *row = s + r * M;
        int64_t limit = causal ? (q0 + r % T) + 1 : M;
        if (limit > M) limit = M;
        float mx = -FLT_MAX;
        for (int64_t j = 0; j < limit; j++) mx = row[j] > mx ? row[j] : mx;
        float sum = 0.f;
        for (int64_t j = 0; j < limit; j++) {
            float e = avq_expf((row[j] - mx) * scale);
            row[j] = e;
            sum += e;
        }
        float inv = 1.f / sum;
        if (odt == AVQ_F32) {
            float *o = (float *)p_out + r * M;
            for (int64_t j = 0; j < limit; j++) o[j] = row[j] * inv;
            for (int64_t j = limit; j < M; j++) o[j] = 0.f;
        } else {
            uint16_t *o = (uint16_t *)p_out + r * M;
            for (int64_t j = 0; j < limit; j++) o[j] = avq_f32_to_bf16(row[j] * inv);
            for (int64_t j = limit; j < M; j++) o[j] = 0;
        }
    }
}

avq_status avq_attention(avq_plan *p, const avq_tensor *q, const avq_tensor *k, const avq_tensor *v, avq_tensor *o,
                         int heads, float scale, int causal) {
    attn_shape a;
    int64_t Bk, Ck, Bv, Mv, Cv, Bo, No, Co;
    char b1[96], b2[96], b3[96], b4[96];
    if (!tokens_view(q, &a.B, &a.N, &a.C) || !tokens_view(k, &Bk, &a.M, &Ck) || !tokens_view(v, &Bv, &Mv, &Cv) ||
        !tokens_view(o, &Bo, &No, &Co) || Bk != a.B || Bv != a.B || Bo != a.B || Ck != a.C || Cv != a.C ||
        Co != a.C || Mv != a.M || No != a.N)
        return avq_error(AVQ_ERR_SHAPE, "attention shapes do not fit: q %s, k %s, v %s, out %s (want [B, N, C], [B, M, C])",
                         avq_tensor_str(q, b1, sizeof b1), avq_tensor_str(k, b2, sizeof b2),
                         avq_tensor_str(v, b3, sizeof b3), avq_tensor_str(o, b4, sizeof b4));
    if (heads < 1 || a.C % heads)
        return avq_error(AVQ_ERR_ARG, "attention: %lld features cannot be split into %d heads", (long long)a.C, heads);
    if (q->dtype != k->dtype || q->dtype != v->dtype || q->dtype != o->dtype)
        return avq_error(AVQ_ERR_DTYPE, "attention operands must share one dtype");
    if (causal && a.M != a.N) return avq_error(AVQ_ERR_ARG, "causal attention needs as many keys as queries");
    a.H = heads;
    a.d = a.C / heads;
    a.dt = avq_dnnl_dt(q->dtype);
    int64_t per_row = a.B * a.H * a.M;
    a.T = AVQ_ATTN_TILE_ELEMS / (per_row > 0 ? per_row : 1);
    if (a.T < 1) a.T = 1;
    if (a.T > a.N) a.T = a.N;
    int64_t rem = a.N % a.T;

    avq_tensor s, pbuf;
    int64_t sd[1] = {a.B * a.H * a.T * a.M};
    AVQ_TRY(avq_plan_tensor(p, &s, AVQ_F32, AVQ_PLAIN, 1, sd));
    int separate_p = q->dtype != AVQ_F32;
    if (separate_p) AVQ_TRY(avq_plan_tensor(p, &pbuf, q->dtype, AVQ_PLAIN, 1, sd));

    avq_status st = AVQ_OK;
    if (avq_plan_building(p)) {
        st = build_pair(p, &a, a.T);
        if (st == AVQ_OK && rem) st = build_pair(p, &a, rem);
    } else {
        avq_step *steps[4] = {0};
        int n = rem ? 4 : 2;
        int kinds[4] = {AVQ_STEP_ATTN_QK, AVQ_STEP_ATTN_PV, AVQ_STEP_ATTN_QK, AVQ_STEP_ATTN_PV};
        for (int i = 0; i < n && st == AVQ_OK; i++) st = avq_plan_step(p, kinds[i], &steps[i]);
        size_t es = avq_dtype_size(q->dtype);
        void *pdata = separate_p ? pbuf.data : s.data;
        for (int64_t q0 = 0; q0 < a.N && st == AVQ_OK; q0 += a.T) {
            int64_t T = a.N - q0 < a.T ? a.N - q0 : a.T;
            avq_step *sqk = T == a.T ? steps[0] : steps[2], *spv = T == a.T ? steps[1] : steps[3];
            void *hq[3] = {(char *)q->data + (size_t)(q0 * a.C) * es, k->data, s.data};
            st = avq_step_exec(p, sqk, hq, 3);
            if (st != AVQ_OK) break;
            softmax_rows(&a, T, q0, (float *)s.data, pdata, q->dtype, scale, causal);
            void *hv[3] = {pdata, v->data, (char *)o->data + (size_t)(q0 * a.C) * es};
            st = avq_step_exec(p, spv, hv, 3);
        }
    }
    if (separate_p) avq_plan_release(p, &pbuf);
    avq_plan_release(p, &s);
    return st;
}
