/* 2-D convolution on oneDNN: NHWC activations, weights in the layout the
 * primitive chose (format "any", reordered once), bias and activation and
 * residual add fused as post-ops. */
#include <stdio.h>

#include "ops_internal.h"

avq_conv_params avq_conv_simple(int stride, int pad) {
    avq_conv_params prm = {stride, stride, pad, pad, pad, pad, AVQ_ACT_NONE, NULL, AVQ_CONV_AUTO};
    return prm;
}

avq_status avq_conv2d_out_size(const avq_tensor *x, const avq_weight *w, const avq_conv_params *prm, int64_t *oh,
                               int64_t *ow) {
    if (x->ndim != 4) return avq_error(AVQ_ERR_SHAPE, "conv2d input must be 4-D [N, C, H, W], got rank %d", x->ndim);
    if (w->ndim != 4) return avq_error(AVQ_ERR_SHAPE, "conv2d weight %s must be 4-D [O, I, kh, kw]", w->name ? w->name : "");
    if (prm->stride_h < 1 || prm->stride_w < 1) return avq_error(AVQ_ERR_ARG, "conv2d stride must be >= 1");
    if (prm->pad_t < 0 || prm->pad_l < 0 || prm->pad_b < 0 || prm->pad_r < 0)
        return avq_error(AVQ_ERR_ARG, "conv2d padding must be >= 0");
    int64_t kh = w->dims[2], kw = w->dims[3];
    int64_t h = x->dims[2] + prm->pad_t + prm->pad_b - kh, wd = x->dims[3] + prm->pad_l + prm->pad_r - kw;
    if (h < 0 || wd < 0)
        return avq_error(AVQ_ERR_SHAPE, "conv2d kernel %lldx%lld is larger than the padded input %lldx%lld", (long long)kh,
                         (long long)kw, (long long)(x->dims[2] + prm->pad_t + prm->pad_b),
                         (long long)(x->dims[3] + prm->pad_l + prm->pad_r));
    *oh = h / prm->stride_h + 1;
    *ow = wd / prm->stride_w + 1;
    return AVQ_OK;
}

static avq_status check(const avq_weight *w, const avq_weight *b, const avq_tensor *x, const avq_tensor *y,
                        const avq_conv_params *prm) {
    int64_t oh, ow;
    char bx[96], by[96];
    AVQ_TRY(avq_conv2d_out_size(x, w, prm, &oh, &ow));
    if (x->dims[1] != w->dims[1])
        return avq_error(AVQ_ERR_SHAPE, "conv2d %s expects %lld input channels, input is %s", w->name ? w->name : "",
                         (long long)w->dims[1], avq_tensor_str(x, bx, sizeof bx));
    if (y->ndim != 4 || y->dims[0] != x->dims[0] || y->dims[1] != w->dims[0] || y->dims[2] != oh || y->dims[3] != ow)
        return avq_error(AVQ_ERR_SHAPE, "conv2d output is %s, expected [%lld, %lld, %lld, %lld]",
                         avq_tensor_str(y, by, sizeof by), (long long)x->dims[0], (long long)w->dims[0],
                         (long long)oh, (long long)ow);
    if (b && (b->ndim != 1 || b->dims[0] != w->dims[0]))
        return avq_error(AVQ_ERR_SHAPE, "conv2d bias %s must have shape [%lld]", b->name ? b->name : "",
                         (long long)w->dims[0]);
    if (prm->add) {
        const avq_tensor *a = prm->add;
        int full = avq_tensor_same_shape(a, y) && a->layout == y->layout;
        int chan = a->ndim == 4 && a->dims[0] == y->dims[0] && a->dims[1] == y->dims[1] && a->dims[2] == 1 &&
                   a->dims[3] == 1;
        if (!full && !chan)
            return avq_error(AVQ_ERR_SHAPE, "conv2d residual %s must match the output %s or be [N, C, 1, 1]",
                             avq_tensor_str(a, bx, sizeof bx), avq_tensor_str(y, by, sizeof by));
    }
    return AVQ_OK;
}

/* The residual operand's argument id: the binary add follows the activation post-op, if any. */
static int add_arg(const avq_conv_params *prm) {
    return DNNL_ARG_ATTR_MULTIPLE_POST_OP(prm->act != AVQ_ACT_NONE ? 1 : 0) | DNNL_ARG_SRC_1;
}

static avq_status build(avq_plan *p, avq_step *s, avq_weight *w, avq_weight *b, const avq_tensor *x,
                        const avq_tensor *y, const avq_conv_params *prm) {
    avq_status st = AVQ_OK;
    dnnl_engine_t eng = avq_plan_engine(p);
    dnnl_memory_desc_t src_md = NULL, dst_md = NULL, wany_md = NULL, bias_md = NULL, add_md = NULL, wsrc_md = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_memory_t wmem, bmem = NULL;

    AVQ_TRY(avq_tensor_md(x, &src_md));
    if ((st = avq_tensor_md(y, &dst_md)) != AVQ_OK) goto done;
    dnnl_dims_t wd = {w->dims[0], w->dims[1], w->dims[2], w->dims[3]};
    AVQ_DNNL(dnnl_memory_desc_create_with_tag(&wany_md, 4, wd, avq_dnnl_dt(x->dtype), dnnl_format_tag_any), "weights md");
    if (b) {
        dnnl_dims_t bd = {w->dims[0]};
        AVQ_DNNL(dnnl_memory_desc_create_with_tag(&bias_md, 1, bd, dnnl_f32, dnnl_a), "bias md");
    }
    if ((st = avq_primitive_attr(&attr)) != AVQ_OK) goto done;
    AVQ_DNNL(dnnl_post_ops_create(&po), "post-ops");
    if ((st = avq_post_act(po, prm->act)) != AVQ_OK) goto done;
    if (prm->add) {
        if ((st = avq_tensor_md(prm->add, &add_md)) != AVQ_OK) goto done;
        AVQ_DNNL(dnnl_post_ops_append_binary(po, dnnl_binary_add, add_md), "binary post-op");
    }
    AVQ_DNNL(dnnl_primitive_attr_set_post_ops(attr, po), "set post-ops");
    dnnl_dims_t strides = {prm->stride_h, prm->stride_w}, dil = {0, 0};
    dnnl_dims_t pl = {prm->pad_t, prm->pad_l}, pr = {prm->pad_b, prm->pad_r};
    AVQ_DNNL(dnnl_convolution_forward_primitive_desc_create(&pd, eng, dnnl_forward_inference, dnnl_convolution_direct,
                                                            src_md, wany_md, bias_md, dst_md, strides, dil, pl, pr,
                                                            attr),
             "convolution descriptor");

    /* Weights: the checkpoint's OIHW buffer reordered into the chosen layout. */
    AVQ_DNNL(dnnl_memory_desc_create_with_tag(&wsrc_md, 4, wd, avq_dnnl_dt(w->dtype), dnnl_oihw), "weights source md");
    if ((st = avq_weight_packed(w, wsrc_md, dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0), &wmem)) != AVQ_OK)
        goto done;
    if (b && (st = avq_bias_mem(b, w->dims[0], &bmem, NULL)) != AVQ_OK) goto done;

    if ((st = avq_step_arg(s, DNNL_ARG_SRC, src_md)) != AVQ_OK) goto done;
    if ((st = avq_step_arg(s, DNNL_ARG_DST, dst_md)) != AVQ_OK) goto done;
    if (prm->add && (st = avq_step_arg(s, add_arg(prm), add_md)) != AVQ_OK) goto done;
    if ((st = avq_step_arg_fixed(s, DNNL_ARG_WEIGHTS, wmem)) != AVQ_OK) goto done;
    if (bmem && (st = avq_step_arg_fixed(s, DNNL_ARG_BIAS, bmem)) != AVQ_OK) goto done;
    st = avq_step_set_primitive(p, s, pd);
    pd = NULL;
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (po) dnnl_post_ops_destroy(po);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (src_md) dnnl_memory_desc_destroy(src_md);
    if (dst_md) dnnl_memory_desc_destroy(dst_md);
    if (wany_md) dnnl_memory_desc_destroy(wany_md);
    if (wsrc_md) dnnl_memory_desc_destroy(wsrc_md);
    if (bias_md) dnnl_memory_desc_destroy(bias_md);
    if (add_md) dnnl_memory_desc_destroy(add_md);
    return st;
}

/* oneDNN 3.2's fast convolutions take a binary post-op broadcast per output
 * channel, but not per (sample, channel): a [N, C, 1, 1] add with N > 1 (the
 * UNet's time-embedding injection, batch 2 under guidance) falls back to the
 * reference kernel, hundreds of times slower. Such a conv is built for one
 * sample and run once per sample (iaux[0] = number of samples). */
static int per_sample_add(const avq_tensor *y, const avq_conv_params *prm) {
    const avq_tensor *a = prm->add;
    return a && y->dims[0] > 1 && a->dims[2] == 1 && a->dims[3] == 1 && (y->dims[2] != 1 || y->dims[3] != 1);
}

static avq_tensor one_sample(const avq_tensor *t) {
    avq_tensor s = *t;
    s.dims[0] = 1;
    return s;
}

avq_status avq_conv2d(avq_plan *p, avq_weight *w, avq_weight *b, const avq_tensor *x, avq_tensor *y,
                      const avq_conv_params *prm) {
    avq_step *s;
    if (prm->algo < AVQ_CONV_AUTO || prm->algo > AVQ_CONV_WINOGRAD)
        return avq_error(AVQ_ERR_ARG, "unknown conv2d algorithm %d", (int)prm->algo);
    const int wino = prm->algo == AVQ_CONV_WINOGRAD || (prm->algo == AVQ_CONV_AUTO && avq_conv2d_winograd_fits(w, x, prm));
    if (avq_plan_building(p)) {
        AVQ_TRY(check(w, b, x, y, prm));
        if (x->dtype != y->dtype) return avq_error(AVQ_ERR_DTYPE, "conv2d input and output dtypes differ");
        AVQ_TRY(avq_check_act_tensor(x, "conv2d input"));
        AVQ_TRY(avq_check_act_tensor(y, "conv2d output"));
        if (wino) return avq_conv2d_winograd(p, w, b, x, y, prm);
        AVQ_TRY(avq_plan_step(p, AVQ_STEP_CONV, &s));
        if (!per_sample_add(y, prm)) return build(p, s, w, b, x, y, prm);
        avq_tensor x1 = one_sample(x), y1 = one_sample(y), a1 = one_sample(prm->add);
        avq_conv_params prm1 = *prm;
        prm1.add = &a1;
        s->iaux[0] = y->dims[0];
        return build(p, s, w, b, &x1, &y1, &prm1);
    }
    if (wino) return avq_conv2d_winograd(p, w, b, x, y, prm);
    AVQ_TRY(avq_plan_step(p, AVQ_STEP_CONV, &s));
    if (s->iaux[0] > 1) {
        int64_t n = s->iaux[0];
        size_t xs = avq_tensor_bytes(x) / (size_t)n, ys = avq_tensor_bytes(y) / (size_t)n;
        size_t as = avq_tensor_bytes(prm->add) / (size_t)n;
        for (int64_t i = 0; i < n; i++) {
            avq_arg_data d[] = {{DNNL_ARG_SRC, (char *)x->data + i * xs},
                                {DNNL_ARG_DST, (char *)y->data + i * ys},
                                {add_arg(prm), (char *)prm->add->data + i * as}};
            AVQ_TRY(avq_step_exec(p, s, d, 3));
        }
        return AVQ_OK;
    }
    avq_arg_data d[] = {{DNNL_ARG_SRC, x->data}, {DNNL_ARG_DST, y->data}, {add_arg(prm), prm->add ? prm->add->data : NULL}};
    return avq_step_exec(p, s, d, prm->add ? 3 : 2);
}
