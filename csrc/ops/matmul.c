/* Linear layers, batched matmul, softmax and reorders on oneDNN primitives,
 * plus the small helpers the primitive-based ops share. */
#include <stdio.h>

#include "core/engine.h"
#include "ops_internal.h"
#include "simd.h"

const char *avq_act_name(avq_act act) {
    switch (act) {
    case AVQ_ACT_NONE: return "none";
    case AVQ_ACT_RELU: return "relu";
    case AVQ_ACT_SILU: return "silu";
    case AVQ_ACT_GELU: return "gelu";
    case AVQ_ACT_QUICK_GELU: return "quick_gelu";
    }
    return "?";
}

avq_status avq_dnnl_error(dnnl_status_t s, const char *what) {
    if (s == dnnl_unimplemented)
        return avq_error(
            AVQ_ERR_DNNL, "oneDNN: %s failed: not implemented for these data types at ISA %s (status %d)%s", what,
            avq_isa_dnnl_name(), (int)s, avq_isa_get()->level < AVQ_ISA_AVX512 ? "; bf16 needs AVX-512: use fp32" : "");
    return avq_error(AVQ_ERR_DNNL, "oneDNN: %s failed (status %d)", what, (int)s);
}

avq_status avq_post_act(dnnl_post_ops_t po, avq_act act) {
    dnnl_status_t s = dnnl_success;
    switch (act) {
    case AVQ_ACT_NONE: return AVQ_OK;
    case AVQ_ACT_RELU: s = dnnl_post_ops_append_eltwise(po, dnnl_eltwise_relu, 0.f, 0.f); break;
    case AVQ_ACT_SILU: s = dnnl_post_ops_append_eltwise(po, dnnl_eltwise_swish, 1.f, 0.f); break;
    case AVQ_ACT_GELU: s = dnnl_post_ops_append_eltwise(po, dnnl_eltwise_gelu_erf, 0.f, 0.f); break;
    /* quick-GELU is swish with alpha 1.702 */
    case AVQ_ACT_QUICK_GELU: s = dnnl_post_ops_append_eltwise(po, dnnl_eltwise_swish, 1.702f, 0.f); break;
    default: return avq_error(AVQ_ERR_ARG, "unknown activation %d", (int)act);
    }
    return s == dnnl_success ? AVQ_OK : avq_error(AVQ_ERR_DNNL, "cannot fuse activation %s", avq_act_name(act));
}

avq_status avq_primitive_attr(dnnl_primitive_attr_t *attr) {
    *attr = NULL;
    if (dnnl_primitive_attr_create(attr) != dnnl_success)
        return avq_error(AVQ_ERR_DNNL, "cannot create primitive attributes");
    if (dnnl_primitive_attr_set_scratchpad_mode(*attr, dnnl_scratchpad_mode_user) != dnnl_success) {
        dnnl_primitive_attr_destroy(*attr);
        *attr = NULL;
        return avq_error(AVQ_ERR_DNNL, "cannot set the user scratchpad mode");
    }
    return AVQ_OK;
}

avq_status avq_weight_src_md(const avq_weight *w, int ndim, const int64_t *dims, const int64_t *strides,
                             dnnl_memory_desc_t *md) {
    dnnl_dims_t d, s;
    for (int i = 0; i < ndim; i++) {
        d[i] = dims[i];
        s[i] = strides[i];
    }
    if (dnnl_memory_desc_create_with_strides(md, ndim, d, avq_dnnl_dt(w->dtype), s) != dnnl_success)
        return avq_error(AVQ_ERR_DNNL, "cannot describe weight %s", w->name ? w->name : "");
    return AVQ_OK;
}

/* Bias packed to f32 as a [1, n] row (matmul) — conv accepts the same bytes as [n]. */
static avq_status bias_mem_nd(avq_weight *b, int64_t n, int ndim, dnnl_memory_t *mem) {
    avq_status st = AVQ_OK;
    dnnl_memory_desc_t src = NULL, want = NULL;
    if (b->ndim != 1 || b->dims[0] != n)
        return avq_error(AVQ_ERR_SHAPE, "bias %s must have shape [%lld]", b->name ? b->name : "", (long long)n);
    dnnl_dims_t d1 = {n}, d2 = {1, n};
    AVQ_DNNL(ndim == 1 ? dnnl_memory_desc_create_with_tag(&src, 1, d1, avq_dnnl_dt(b->dtype), dnnl_a)
                       : dnnl_memory_desc_create_with_tag(&src, 2, d2, avq_dnnl_dt(b->dtype), dnnl_ab),
             "bias md");
    AVQ_DNNL(ndim == 1 ? dnnl_memory_desc_create_with_tag(&want, 1, d1, dnnl_f32, dnnl_a)
                       : dnnl_memory_desc_create_with_tag(&want, 2, d2, dnnl_f32, dnnl_ab),
             "bias md");
    st = avq_weight_packed(b, src, want, mem);
done:
    if (src) dnnl_memory_desc_destroy(src);
    if (want) dnnl_memory_desc_destroy(want);
    return st;
}

avq_status avq_bias_mem(avq_weight *b, int64_t n, dnnl_memory_t *mem, dnnl_memory_desc_t *md_out) {
    (void)md_out;
    return bias_mem_nd(b, n, 1, mem);
}

avq_status avq_check_act_tensor(const avq_tensor *t, const char *what) {
    if (avq_tensor_numel(t) <= 0) return avq_error(AVQ_ERR_SHAPE, "%s is empty", what);
    if (t->layout == AVQ_NHWC && t->ndim != 4) return avq_error(AVQ_ERR_SHAPE, "%s: channels-last needs 4-D", what);
    return AVQ_OK;
}

static avq_status md_2d(const avq_tensor *t, int64_t rows, int64_t cols, dnnl_memory_desc_t *md) {
    dnnl_dims_t d = {rows, cols}, s = {cols, 1};
    if (dnnl_memory_desc_create_with_strides(md, 2, d, avq_dnnl_dt(t->dtype), s) != dnnl_success)
        return avq_error(AVQ_ERR_DNNL, "cannot describe a matrix");
    return AVQ_OK;
}

/* A binary post-op operand's argument id: post-ops are [activation] [mul] [add],
 * so the mul follows the activation and the add follows both (`before` is the
 * mul operand when one precedes the add, NULL otherwise). */
static int post_arg(avq_act act, const avq_tensor *before) {
    return DNNL_ARG_ATTR_MULTIPLE_POST_OP((act != AVQ_ACT_NONE) + (before != NULL)) | DNNL_ARG_SRC_1;
}

static avq_status linear_build(avq_plan *p, avq_step *s, avq_weight *w, avq_weight *b, const avq_tensor *x,
                               const avq_tensor *y, int64_t rows, avq_act act, const avq_tensor *mul,
                               const avq_tensor *add) {
    avq_status st = AVQ_OK;
    int64_t N = w->dims[0], K = w->dims[1];
    dnnl_memory_desc_t src_md = NULL, dst_md = NULL, w_md = NULL, b_md = NULL, wsrc_md = NULL, mul_md = NULL,
                       add_md = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_memory_t wmem, bmem = NULL;

    if ((st = md_2d(x, rows, K, &src_md)) != AVQ_OK) goto done;
    if ((st = md_2d(y, rows, N, &dst_md)) != AVQ_OK) goto done;
    dnnl_dims_t wd = {K, N}, bd = {1, N};
    AVQ_DNNL(dnnl_memory_desc_create_with_tag(&w_md, 2, wd, avq_dnnl_dt(x->dtype), dnnl_format_tag_any), "weights md");
    if (b) AVQ_DNNL(dnnl_memory_desc_create_with_tag(&b_md, 2, bd, dnnl_f32, dnnl_ab), "bias md");
    if ((st = avq_primitive_attr(&attr)) != AVQ_OK) goto done;
    AVQ_DNNL(dnnl_post_ops_create(&po), "post-ops");
    if ((st = avq_post_act(po, act)) != AVQ_OK) goto done;
    if (mul) {
        if ((st = md_2d(mul, rows, N, &mul_md)) != AVQ_OK) goto done;
        AVQ_DNNL(dnnl_post_ops_append_binary(po, dnnl_binary_mul, mul_md), "binary mul post-op");
    }
    if (add) {
        if ((st = md_2d(add, rows, N, &add_md)) != AVQ_OK) goto done;
        AVQ_DNNL(dnnl_post_ops_append_binary(po, dnnl_binary_add, add_md), "binary add post-op");
    }
    AVQ_DNNL(dnnl_primitive_attr_set_post_ops(attr, po), "set post-ops");
    AVQ_DNNL(dnnl_matmul_primitive_desc_create(&pd, avq_plan_engine(p), src_md, w_md, b_md, dst_md, attr),
             "matmul descriptor");
    /* The checkpoint stores [N, K]; the matmul reads its transpose [K, N]. */
    int64_t wdims[2] = {K, N}, wstr[2] = {1, K};
    if ((st = avq_weight_src_md(w, 2, wdims, wstr, &wsrc_md)) != AVQ_OK) goto done;
    if ((st = avq_weight_packed(w, wsrc_md, dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0), &wmem)) !=
        AVQ_OK)
        goto done;
    if (b && (st = bias_mem_nd(b, N, 2, &bmem)) != AVQ_OK) goto done;
    if ((st = avq_step_arg(s, DNNL_ARG_SRC, src_md)) != AVQ_OK) goto done;
    if ((st = avq_step_arg(s, DNNL_ARG_DST, dst_md)) != AVQ_OK) goto done;
    if (mul && (st = avq_step_arg(s, post_arg(act, NULL), mul_md)) != AVQ_OK) goto done;
    if (add && (st = avq_step_arg(s, post_arg(act, mul), add_md)) != AVQ_OK) goto done;
    if ((st = avq_step_arg_fixed(s, DNNL_ARG_WEIGHTS, wmem)) != AVQ_OK) goto done;
    if (bmem && (st = avq_step_arg_fixed(s, DNNL_ARG_BIAS, bmem)) != AVQ_OK) goto done;
    st = avq_step_set_primitive(p, s, pd);
    pd = NULL;
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (po) dnnl_post_ops_destroy(po);
    if (attr) dnnl_primitive_attr_destroy(attr);
    dnnl_memory_desc_t mds[] = {src_md, dst_md, w_md, b_md, wsrc_md, mul_md, add_md};
    for (size_t i = 0; i < sizeof mds / sizeof mds[0]; i++)
        if (mds[i]) dnnl_memory_desc_destroy(mds[i]);
    return st;
}

avq_status avq_linear(avq_plan *p, avq_weight *w, avq_weight *b, const avq_tensor *x, avq_tensor *y, avq_act act,
                      const avq_tensor *mul, const avq_tensor *add) {
    avq_step *s;
    if (avq_plan_building(p)) {
        int64_t rx, kx, ry, ny;
        char bx[96], by[96];
        if (w->ndim != 2)
            return avq_error(AVQ_ERR_SHAPE, "linear weight %s must be 2-D [out, in]", w->name ? w->name : "");
        AVQ_TRY(avq_check_act_tensor(x, "linear input"));
        AVQ_TRY(avq_check_act_tensor(y, "linear output"));
        if (!avq_tensor_rows_cols(x, &rx, &kx) || !avq_tensor_rows_cols(y, &ry, &ny) || kx != w->dims[1] ||
            ny != w->dims[0] || rx != ry)
            return avq_error(AVQ_ERR_SHAPE, "linear %s [%lld, %lld]: input %s and output %s do not fit",
                             w->name ? w->name : "", (long long)w->dims[0], (long long)w->dims[1],
                             avq_tensor_str(x, bx, sizeof bx), avq_tensor_str(y, by, sizeof by));
        if (x->dtype != y->dtype) return avq_error(AVQ_ERR_DTYPE, "linear input and output dtypes differ");
        const avq_tensor *extra[2] = {mul, add};
        for (int i = 0; i < 2; i++) {
            int64_t r, c;
            if (extra[i] && (!avq_tensor_rows_cols(extra[i], &r, &c) || r != ry || c != ny))
                return avq_error(AVQ_ERR_SHAPE, "linear %s operand %s must match the output %s", i ? "add" : "mul",
                                 avq_tensor_str(extra[i], bx, sizeof bx), avq_tensor_str(y, by, sizeof by));
        }
        AVQ_TRY(avq_plan_step(p, AVQ_STEP_MATMUL, &s));
        return linear_build(p, s, w, b, x, y, rx, act, mul, add);
    }
    AVQ_TRY(avq_plan_step(p, AVQ_STEP_MATMUL, &s));
    avq_arg_data d[4] = {{DNNL_ARG_SRC, x->data}, {DNNL_ARG_DST, y->data}};
    int n = 2;
    if (mul) d[n++] = (avq_arg_data){post_arg(act, NULL), mul->data};
    if (add) d[n++] = (avq_arg_data){post_arg(act, mul), add->data};
    return avq_step_exec(p, s, d, n);
}

/* Rows per GEGLU chunk: the chunk's [rows, 2F] product (bf16: 1.3 MB at F 1280)
 * is read back by the epilogue from cache instead of from memory. */
#define GEGLU_CHUNK_ROWS 256

avq_status avq_linear_geglu(avq_plan *p, avq_weight *w, avq_weight *b, const avq_tensor *x, avq_tensor *y) {
    int64_t rows, K, ry, F;
    if (avq_plan_building(p)) {
        char bx[96], by[96];
        if (w->ndim != 2 || w->dims[0] % 2)
            return avq_error(AVQ_ERR_SHAPE, "geglu linear weight %s must be 2-D [2F, in]", w->name ? w->name : "");
        AVQ_TRY(avq_check_act_tensor(x, "geglu linear input"));
        AVQ_TRY(avq_check_act_tensor(y, "geglu linear output"));
        if (!avq_tensor_rows_cols(x, &rows, &K) || !avq_tensor_rows_cols(y, &ry, &F) || K != w->dims[1] ||
            2 * F != w->dims[0] || rows != ry)
            return avq_error(AVQ_ERR_SHAPE, "geglu linear %s [%lld, %lld]: input %s and output %s do not fit",
                             w->name ? w->name : "", (long long)w->dims[0], (long long)w->dims[1],
                             avq_tensor_str(x, bx, sizeof bx), avq_tensor_str(y, by, sizeof by));
        if (x->dtype != y->dtype) return avq_error(AVQ_ERR_DTYPE, "geglu linear input and output dtypes differ");
    }
    avq_tensor_rows_cols(x, &rows, &K);
    avq_tensor_rows_cols(y, &ry, &F);
    const int64_t R = rows < GEGLU_CHUNK_ROWS ? rows : GEGLU_CHUNK_ROWS, tail = rows % R;
    avq_tensor tmp, xv;
    const int64_t tdims[2] = {R, 2 * F};
    AVQ_TRY(avq_plan_tensor(p, &tmp, x->dtype, AVQ_PLAIN, 2, tdims));
    avq_step *full, *part = NULL;
    if (avq_plan_building(p)) {
        /* One primitive for R rows, one for the last rows % R: the same
         * packed weight (packed once, shared by both). */
        xv = *x;
        xv.ndim = 2;
        xv.layout = AVQ_PLAIN;
        xv.dims[0] = R;
        xv.dims[1] = K;
        AVQ_TRY(avq_plan_step(p, AVQ_STEP_MATMUL, &full));
        AVQ_TRY(linear_build(p, full, w, b, &xv, &tmp, R, AVQ_ACT_NONE, NULL, NULL));
        if (tail) {
            xv.dims[0] = tail;
            AVQ_TRY(avq_plan_step(p, AVQ_STEP_MATMUL, &part));
            AVQ_TRY(linear_build(p, part, w, b, &xv, &tmp, tail, AVQ_ACT_NONE, NULL, NULL));
        }
        avq_plan_release(p, &tmp);
        return AVQ_OK;
    }
    AVQ_TRY(avq_plan_step(p, AVQ_STEP_MATMUL, &full));
    if (tail) AVQ_TRY(avq_plan_step(p, AVQ_STEP_MATMUL, &part));
    const size_t es = avq_dtype_size(x->dtype);
    const avq_simd_kernels *k = avq_simd();
    avq_status st = AVQ_OK;
    for (int64_t r0 = 0; r0 < rows && st == AVQ_OK; r0 += R) {
        const int64_t n = rows - r0 < R ? rows - r0 : R;
        avq_arg_data d[2] = {{DNNL_ARG_SRC, (char *)x->data + (size_t)(r0 * K) * es}, {DNNL_ARG_DST, tmp.data}};
        if ((st = avq_step_exec(p, n == R ? full : part, d, 2)) != AVQ_OK) break;
        /* The epilogue over the chunk: y = value * gelu(gate) per row. */
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < n; r++) {
            const char *row = (const char *)tmp.data + (size_t)(r * 2 * F) * es;
            k->geglu_row(row, row + (size_t)F * es, (char *)y->data + (size_t)((r0 + r) * F) * es, F, x->dtype);
        }
    }
    avq_plan_release(p, &tmp);
    return st;
}

avq_status avq_matmul(avq_plan *p, const avq_tensor *a, const avq_tensor *b, avq_tensor *c, int trans_b, float alpha) {
    avq_step *s;
    if (!avq_plan_building(p)) {
        AVQ_TRY(avq_plan_step(p, AVQ_STEP_MATMUL, &s));
        avq_arg_data d[] = {{DNNL_ARG_SRC, a->data}, {DNNL_ARG_WEIGHTS, b->data}, {DNNL_ARG_DST, c->data}};
        return avq_step_exec(p, s, d, 3);
    }
    char ba[96], bb[96], bc[96];
    if (a->ndim != 3 || b->ndim != 3 || c->ndim != 3 || a->layout || b->layout || c->layout)
        return avq_error(AVQ_ERR_SHAPE, "matmul needs plain 3-D tensors [B, M, K]");
    int64_t B = a->dims[0], M = a->dims[1], K = a->dims[2];
    int64_t N = trans_b ? b->dims[1] : b->dims[2], Kb = trans_b ? b->dims[2] : b->dims[1];
    if (b->dims[0] != B || Kb != K || c->dims[0] != B || c->dims[1] != M || c->dims[2] != N)
        return avq_error(AVQ_ERR_SHAPE, "matmul shapes do not fit: a %s, b %s%s, c %s",
                         avq_tensor_str(a, ba, sizeof ba), avq_tensor_str(b, bb, sizeof bb),
                         trans_b ? " (transposed)" : "", avq_tensor_str(c, bc, sizeof bc));
    if (a->dtype != b->dtype || a->dtype != c->dtype) return avq_error(AVQ_ERR_DTYPE, "matmul dtypes differ");
    AVQ_TRY(avq_check_act_tensor(a, "matmul a"));
    AVQ_TRY(avq_check_act_tensor(b, "matmul b"));
    AVQ_TRY(avq_plan_step(p, AVQ_STEP_MATMUL, &s));
    avq_status st = AVQ_OK;
    dnnl_memory_desc_t amd = NULL, bmd = NULL, cmd = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_data_type_t dt = avq_dnnl_dt(a->dtype);
    dnnl_dims_t ad = {B, M, K}, as = {M * K, K, 1};
    dnnl_dims_t bd = {B, K, N}, bs_n = {K * N, N, 1}, bs_t = {N * K, 1, K};
    dnnl_dims_t cd = {B, M, N}, cs = {M * N, N, 1};
    AVQ_DNNL(dnnl_memory_desc_create_with_strides(&amd, 3, ad, dt, as), "a md");
    AVQ_DNNL(dnnl_memory_desc_create_with_strides(&bmd, 3, bd, dt, trans_b ? bs_t : bs_n), "b md");
    AVQ_DNNL(dnnl_memory_desc_create_with_strides(&cmd, 3, cd, dt, cs), "c md");
    if ((st = avq_primitive_attr(&attr)) != AVQ_OK) goto done;
    if (alpha != 1.f) {
        AVQ_DNNL(dnnl_post_ops_create(&po), "post-ops");
        AVQ_DNNL(dnnl_post_ops_append_eltwise(po, dnnl_eltwise_linear, alpha, 0.f), "scale post-op");
        AVQ_DNNL(dnnl_primitive_attr_set_post_ops(attr, po), "set post-ops");
    }
    AVQ_DNNL(dnnl_matmul_primitive_desc_create(&pd, avq_plan_engine(p), amd, bmd, NULL, cmd, attr),
             "matmul descriptor");
    if ((st = avq_step_arg(s, DNNL_ARG_SRC, amd)) != AVQ_OK) goto done;
    if ((st = avq_step_arg(s, DNNL_ARG_WEIGHTS, bmd)) != AVQ_OK) goto done;
    if ((st = avq_step_arg(s, DNNL_ARG_DST, cmd)) != AVQ_OK) goto done;
    st = avq_step_set_primitive(p, s, pd);
    pd = NULL;
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (po) dnnl_post_ops_destroy(po);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (amd) dnnl_memory_desc_destroy(amd);
    if (bmd) dnnl_memory_desc_destroy(bmd);
    if (cmd) dnnl_memory_desc_destroy(cmd);
    return st;
}

avq_status avq_softmax(avq_plan *p, const avq_tensor *x, avq_tensor *y) {
    avq_step *s;
    if (!avq_plan_building(p)) {
        AVQ_TRY(avq_plan_step(p, AVQ_STEP_SOFTMAX, &s));
        avq_arg_data d[] = {{DNNL_ARG_SRC, x->data}, {DNNL_ARG_DST, y->data}};
        return avq_step_exec(p, s, d, 2);
    }
    char bx[96], by[96];
    if (!avq_tensor_same_shape(x, y) || x->layout != AVQ_PLAIN || y->layout != AVQ_PLAIN)
        return avq_error(AVQ_ERR_SHAPE, "softmax input %s and output %s must be plain and of one shape",
                         avq_tensor_str(x, bx, sizeof bx), avq_tensor_str(y, by, sizeof by));
    AVQ_TRY(avq_check_act_tensor(x, "softmax input"));
    AVQ_TRY(avq_plan_step(p, AVQ_STEP_SOFTMAX, &s));
    avq_status st = AVQ_OK;
    dnnl_memory_desc_t xmd = NULL, ymd = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    if ((st = avq_tensor_md(x, &xmd)) != AVQ_OK) goto done;
    if ((st = avq_tensor_md(y, &ymd)) != AVQ_OK) goto done;
    if ((st = avq_primitive_attr(&attr)) != AVQ_OK) goto done;
    AVQ_DNNL(dnnl_softmax_forward_primitive_desc_create(&pd, avq_plan_engine(p), dnnl_forward_inference,
                                                        dnnl_softmax_accurate, xmd, ymd, x->ndim - 1, attr),
             "softmax descriptor");
    if ((st = avq_step_arg(s, DNNL_ARG_SRC, xmd)) != AVQ_OK) goto done;
    if ((st = avq_step_arg(s, DNNL_ARG_DST, ymd)) != AVQ_OK) goto done;
    st = avq_step_set_primitive(p, s, pd);
    pd = NULL;
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (xmd) dnnl_memory_desc_destroy(xmd);
    if (ymd) dnnl_memory_desc_destroy(ymd);
    return st;
}

avq_status avq_reorder(avq_plan *p, const avq_tensor *x, avq_tensor *y) {
    avq_step *s;
    if (!avq_plan_building(p)) {
        AVQ_TRY(avq_plan_step(p, AVQ_STEP_REORDER, &s));
        avq_arg_data d[] = {{DNNL_ARG_FROM, x->data}, {DNNL_ARG_TO, y->data}};
        return avq_step_exec(p, s, d, 2);
    }
    char bx[96], by[96];
    if (!avq_tensor_same_shape(x, y))
        return avq_error(AVQ_ERR_SHAPE, "reorder from %s to %s changes the shape", avq_tensor_str(x, bx, sizeof bx),
                         avq_tensor_str(y, by, sizeof by));
    AVQ_TRY(avq_check_act_tensor(x, "reorder input"));
    AVQ_TRY(avq_plan_step(p, AVQ_STEP_REORDER, &s));
    avq_status st = AVQ_OK;
    dnnl_memory_desc_t xmd = NULL, ymd = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    if ((st = avq_tensor_md(x, &xmd)) != AVQ_OK) goto done;
    if ((st = avq_tensor_md(y, &ymd)) != AVQ_OK) goto done;
    if ((st = avq_primitive_attr(&attr)) != AVQ_OK) goto done;
    AVQ_DNNL(dnnl_reorder_primitive_desc_create(&pd, xmd, avq_plan_engine(p), ymd, avq_plan_engine(p), attr),
             "reorder descriptor");
    if ((st = avq_step_arg(s, DNNL_ARG_FROM, xmd)) != AVQ_OK) goto done;
    if ((st = avq_step_arg(s, DNNL_ARG_TO, ymd)) != AVQ_OK) goto done;
    st = avq_step_set_primitive(p, s, pd);
    pd = NULL;
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (xmd) dnnl_memory_desc_destroy(xmd);
    if (ymd) dnnl_memory_desc_destroy(ymd);
    return st;
}
