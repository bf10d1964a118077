/* asymvq._core.Autoencoder: the C KL encoder / decoders on a dict of weights.
 *
 *   Autoencoder(weights, encoder=None, decoder=None, precision="fp32")
 *     encoder: {"in_channels", "ch", "ch_mult", "num_res_blocks", "z_channels", "embed_dim", "prefix"}
 *     decoder: {"embed_dim", "z_channels", "widths", "blocks_per_level", "out_channels",
 *               "conditional", "cond_channels", "prefix"}
 *   .encode(image, noise=None) -> (mean, logvar) or (mean, logvar, sample)
 *   .decode(latent, image=None, mask=None, *, banded=False, band_rows=0, spill_dir=None,
 *           memory_budget=0, spill_optional=False) -> image
 *
 * Arrays are float32 NCHW; this binding checks their shapes and dtypes (the
 * decode contract: asymvq.Autoencoder adds only its policy, a binary mask and
 * tiling). The model copies the weights it needs while it is built (the dict
 * is not kept). Plans and concurrency follow plan_cache.h: one plan per
 * (task, batch, height, width), calls serialised behind the model's lock. */
#include "bindings.h"
#include "common.h"
#include "config.h"
#include "model.h"
#include "models/autoencoder.h"

typedef avq_py_model AutoencoderObject; /* model: the avq_autoencoder */

/* Tasks 3 and 4: the banded forms of decode and decode_cond, band rows in dims[3] (0 = from the budget). */
#define BANDED_TASK 2

static avq_status plan_create(const void *model, const avq_py_plan_key *k, void **out) {
    if (k->task > BANDED_TASK)
        return avq_autoencoder_plan_create_banded(model, (avq_ae_task)(k->task - BANDED_TASK), k->dims[0], k->dims[1],
                                                  k->dims[2], k->dims[3], (avq_autoencoder_plan **)out);
    return avq_autoencoder_plan_create(model, (avq_ae_task)k->task, k->dims[0], k->dims[1], k->dims[2],
                                       (avq_autoencoder_plan **)out);
}

AVQ_PY_MODEL_FUNCTIONS(autoencoder)

static const char *const task_names[] = {"encode", "decode", "decode_cond", "decode_banded", "decode_cond_banded"};
static const avq_py_model_kind ae_kind = {
    {"Autoencoder", task_names, {"batch", "height", "width", NULL}, plan_create, plan_destroy, plan_core},
    num_params,
    precision,
    destroy,
};

/* ---- config dicts ------------------------------------------------------- */

#define E(kind, key)      {#key, kind, offsetof(avq_ae_encoder_config, key), AVQ_PY_NO_COUNT, 1, 0, 0, 0}
#define D(kind, key, req) {#key, kind, offsetof(avq_ae_decoder_config, key), AVQ_PY_NO_COUNT, req, 0, 0, 0}
#define LEVELS(T, key)    {#key, AVQ_PY_INTS, offsetof(T, key), offsetof(T, num_levels), 1, 0, 1, AVQ_AE_MAX_LEVELS}
#define PREFIX(T)         {"prefix", AVQ_PY_STR, offsetof(T, prefix), AVQ_PY_NO_COUNT, 0, 0, 0, AVQ_AE_PREFIX_MAX}
static const avq_py_field encoder_fields[] = {
    E(AVQ_PY_INT, in_channels),    E(AVQ_PY_INT, ch),         LEVELS(avq_ae_encoder_config, ch_mult),
    E(AVQ_PY_INT, num_res_blocks), E(AVQ_PY_INT, z_channels), E(AVQ_PY_INT, embed_dim),
    PREFIX(avq_ae_encoder_config),
};
static const avq_py_field decoder_fields[] = {
    D(AVQ_PY_INT, embed_dim, 1),        D(AVQ_PY_INT, z_channels, 1),   LEVELS(avq_ae_decoder_config, widths),
    D(AVQ_PY_INT, blocks_per_level, 1), D(AVQ_PY_INT, out_channels, 1), D(AVQ_PY_BOOL, conditional, 0),
    PREFIX(avq_ae_decoder_config),
};
/* only the conditional decoder has (and needs) them */
static const avq_py_field condition_fields[] = {
    {"cond_channels", AVQ_PY_INTS, offsetof(avq_ae_decoder_config, cond_channels), AVQ_PY_NO_COUNT, 1, 0, 3, 3},
};
#undef E
#undef D
#undef LEVELS
#undef PREFIX
#define NFIELDS(a) (sizeof a / sizeof a[0])

int avq_py_encoder_config(PyObject *cfg, avq_ae_encoder_config *out) {
    memset(out, 0, sizeof *out);
    return avq_py_parse_config(cfg, "encoder config", encoder_fields, NFIELDS(encoder_fields), out);
}

int avq_py_decoder_config(PyObject *cfg, avq_ae_decoder_config *out) {
    memset(out, 0, sizeof *out);
    if (avq_py_parse_config(cfg, "decoder config", decoder_fields, NFIELDS(decoder_fields), out) < 0) return -1;
    return out->conditional ? avq_py_parse_config(cfg, "decoder config", condition_fields, 1, out) : 0;
}

static PyObject *ae_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwl[] = {"weights", "encoder", "decoder", "precision", NULL};
    PyObject *weights, *enc = Py_None, *dec = Py_None, *prec = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!|OOO", kwl, &PyDict_Type, &weights, &enc, &dec, &prec)) return NULL;
    avq_dtype dt;
    avq_autoencoder_config cfg;
    memset(&cfg, 0, sizeof cfg);
    if (avq_py_precision(prec, &dt) < 0) return NULL;
    cfg.has_encoder = enc != Py_None;
    cfg.has_decoder = dec != Py_None;
    if (cfg.has_encoder && avq_py_encoder_config(enc, &cfg.encoder) < 0) return NULL;
    if (cfg.has_decoder && avq_py_decoder_config(dec, &cfg.decoder) < 0) return NULL;
    avq_weight_source src;
    avq_py_dict_source(&src, weights);
    avq_autoencoder *model;
    avq_status st = avq_autoencoder_create(&cfg, &src, dt, &model);
    return st == AVQ_OK ? avq_py_model_new(type, &ae_kind, model) : avq_py_raise(st);
}

/* ---- runs --------------------------------------------------------------- */

typedef struct run_args {
    avq_autoencoder *model;
    const float *image, *noise, *latent, *mask; /* borrowed; NULL where unused */
    float *mean, *logvar, *sample, *out;
    const char *spill_dir; /* borrowed (decode); NULL: the arena stays in memory */
    size_t memory_budget;  /* with spill_dir: arenas above it spill */
    int spill_optional;    /* with spill_dir: no spill file possible -> the arena stays in memory */
} run_args;

static avq_status run_encode(void *plan, void *ctx) {
    run_args *a = ctx;
    return avq_autoencoder_encode(a->model, plan, a->image, a->noise, a->mean, a->logvar, a->sample);
}

static avq_status run_decode(void *plan, void *ctx) {
    run_args *a = ctx;
    /* every call states its spilling: a cached plan spilled before goes back to memory when not asked */
    AVQ_TRY(avq_autoencoder_plan_set_spill(plan, a->spill_dir, a->memory_budget, a->spill_optional));
    return avq_autoencoder_decode(a->model, plan, a->latent, a->image, a->mask, a->out);
}

static float *data_or_null(PyArrayObject *a) { return a ? PyArray_DATA(a) : NULL; }

/* Parses encode's (image, noise=None) and checks the encode contract: image
 * [B, in, H, W] with H and W multiples of the factor; noise, if given, the
 * latent's shape [B, e, H/f, W/f]. Sets the checked float32 arrays (new
 * references; noise NULL when absent), or -1 with an exception set and
 * nothing held. */
static int encode_inputs(AutoencoderObject *self, PyObject *args, PyObject *kw, PyArrayObject **image,
                         PyArrayObject **noise) {
    static char *kwl[] = {"image", "noise", NULL};
    PyObject *io, *no = Py_None;
    *image = *noise = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O:encode", kwl, &io, &no)) return -1;
    const avq_autoencoder_config *cfg = avq_autoencoder_get_config(self->model);
    if (!cfg->has_encoder) {
        PyErr_SetString(avq_py_exc(AVQ_ERR_ARG), "this Autoencoder has no encoder (its weights were not loaded)");
        return -1;
    }
    const int f = avq_autoencoder_factor(self->model, 1), e = cfg->encoder.embed_dim;
    if (!(*image = avq_py_f32_nchw(io, "image", cfg->encoder.in_channels))) return -1;
    const npy_intp B = PyArray_DIM(*image, 0), H = PyArray_DIM(*image, 2), W = PyArray_DIM(*image, 3);
    if (H % f || W % f) {
        PyErr_Format(avq_py_exc(AVQ_ERR_SHAPE), "image height and width must be multiples of %d, got %zd x %zd", f,
                     (Py_ssize_t)H, (Py_ssize_t)W);
        goto fail;
    }
    if (no == Py_None) return 0;
    if (!(*noise = avq_py_f32_nchw(no, "noise", e))) goto fail;
    if (!avq_py_same_dims(*noise, B, e, H / f, W / f)) {
        PyErr_Format(avq_py_exc(AVQ_ERR_SHAPE), "noise must have the latent's shape [%zd, %d, %zd, %zd]", (Py_ssize_t)B,
                     e, (Py_ssize_t)(H / f), (Py_ssize_t)(W / f));
        goto fail;
    }
    return 0;
fail:
    Py_CLEAR(*image);
    Py_CLEAR(*noise);
    return -1;
}

static PyObject *ae_check_encode(AutoencoderObject *self, PyObject *args, PyObject *kw) {
    PyArrayObject *image, *noise;
    if (encode_inputs(self, args, kw, &image, &noise) < 0) return NULL;
    Py_DECREF(image);
    Py_XDECREF(noise);
    Py_RETURN_NONE;
}

static PyObject *ae_encode(AutoencoderObject *self, PyObject *args, PyObject *kw) {
    PyArrayObject *image, *noise;
    if (encode_inputs(self, args, kw, &image, &noise) < 0) return NULL;
    const int f = avq_autoencoder_factor(self->model, 1);
    const npy_intp B = PyArray_DIM(image, 0), H = PyArray_DIM(image, 2), W = PyArray_DIM(image, 3);
    npy_intp ld[4] = {B, avq_autoencoder_get_config(self->model)->encoder.embed_dim, H / f, W / f};
    /* (mean, logvar[, sample]), filled by the run */
    PyObject *outs[3] = {PyArray_SimpleNew(4, ld, NPY_FLOAT32), PyArray_SimpleNew(4, ld, NPY_FLOAT32),
                         noise ? PyArray_SimpleNew(4, ld, NPY_FLOAT32) : NULL};
    PyObject *ret = NULL;
    if (outs[0] && outs[1] && (!noise || outs[2]))
        ret = noise ? PyTuple_Pack(3, outs[0], outs[1], outs[2]) : PyTuple_Pack(2, outs[0], outs[1]);
    if (ret) {
        run_args a = {.model = self->model,
                      .image = PyArray_DATA(image),
                      .noise = data_or_null(noise),
                      .mean = PyArray_DATA((PyArrayObject *)outs[0]),
                      .logvar = PyArray_DATA((PyArrayObject *)outs[1]),
                      .sample = noise ? PyArray_DATA((PyArrayObject *)outs[2]) : NULL};
        avq_py_plan_key key = {AVQ_AE_ENCODE, {B, H, W, 0}};
        ret = avq_py_plan_cache_call(&self->plans, &key, run_encode, &a, ret);
    }
    for (int i = 0; i < 3; i++) Py_XDECREF(outs[i]);
    Py_DECREF(image);
    Py_XDECREF(noise);
    return ret;
}

/* decode's options besides the arrays. */
typedef struct decode_opts {
    int banded;
    long long band_rows;
    PyObject *spill_dir;     /* new reference to the path as bytes (PyUnicode_FSConverter), or NULL */
    long long memory_budget; /* bytes, >= 1 with spill_dir */
    int spill_optional;      /* the automatic spilling: without a spill file, in memory */
} decode_opts;

/* Parses decode's (latent, image=None, mask=None) and checks the decode
 * contract: latent [B, e, h, w]; image [B, out, f h, f w] and mask
 * [B, 1, f h, f w] together, for a conditional decoder only; spilling for the
 * banded decode only. Sets the checked float32 arrays (new references; image
 * and mask NULL when absent) and the options, or -1 with an exception set and
 * nothing held. */
static int decode_inputs(AutoencoderObject *self, PyObject *args, PyObject *kw, PyArrayObject **z,
                         PyArrayObject **image, PyArrayObject **mask, decode_opts *o) {
    static char *kwl[] = {"latent",    "image",         "mask",           "banded", "band_rows",
                          "spill_dir", "memory_budget", "spill_optional", NULL};
    PyObject *zo, *io = Py_None, *mo = Py_None, *so = Py_None;
    *z = *image = *mask = NULL;
    memset(o, 0, sizeof *o);
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OO$pLOLp:decode", kwl, &zo, &io, &mo, &o->banded, &o->band_rows, &so,
                                     &o->memory_budget, &o->spill_optional))
        return -1;
    if (o->band_rows < 0 || (o->band_rows && !o->banded)) {
        PyErr_Format(avq_py_exc(AVQ_ERR_ARG),
                     o->band_rows < 0 ? "band_rows must be >= 1 (or 0: from the memory budget), got %lld"
                                      : "band_rows (%lld) applies to the banded decode only: pass banded=True",
                     o->band_rows);
        return -1;
    }
    if (so != Py_None) {
        if (!o->banded) {
            PyErr_SetString(avq_py_exc(AVQ_ERR_ARG),
                            "spill_dir applies to the banded decode only (the whole decode reads every activation "
                            "at once): pass banded=True");
            return -1;
        }
        if (o->memory_budget < 1) {
            PyErr_Format(avq_py_exc(AVQ_ERR_ARG), "memory_budget must be >= 1 byte with spill_dir, got %lld",
                         o->memory_budget);
            return -1;
        }
        if (!PyUnicode_FSConverter(so, &o->spill_dir)) return -1;
    } else if (o->memory_budget) {
        PyErr_SetString(avq_py_exc(AVQ_ERR_ARG), "memory_budget needs spill_dir: where the arena spills");
        return -1;
    }
    const avq_autoencoder_config *cfg = avq_autoencoder_get_config(self->model);
    if (!cfg->has_decoder) {
        PyErr_SetString(avq_py_exc(AVQ_ERR_ARG), "this Autoencoder has no decoder (its weights were not loaded)");
        goto fail;
    }
    const avq_ae_decoder_config *d = &cfg->decoder;
    if ((io == Py_None) != (mo == Py_None)) {
        PyErr_SetString(avq_py_exc(AVQ_ERR_ARG), io == Py_None ? "mask was given without image: pass both or neither"
                                                               : "image was given without mask: pass both or neither");
        goto fail;
    }
    const int f = avq_autoencoder_factor(self->model, 0);
    if (io != Py_None && !d->conditional) {
        PyErr_SetString(avq_py_exc(AVQ_ERR_ARG),
                        "this decoder has no condition (a _wocondition or SD decoder): pass neither image nor mask");
        goto fail;
    }
    if (!(*z = avq_py_f32_nchw(zo, "latent", d->embed_dim))) goto fail;
    if (io == Py_None) return 0;
    const npy_intp B = PyArray_DIM(*z, 0), H = f * PyArray_DIM(*z, 2), W = f * PyArray_DIM(*z, 3);
    if (!(*image = avq_py_f32_nchw(io, "image", d->out_channels)) || !(*mask = avq_py_f32_nchw(mo, "mask", 1)))
        goto fail;
    if (!avq_py_same_dims(*image, B, d->out_channels, H, W)) {
        PyErr_Format(avq_py_exc(AVQ_ERR_SHAPE), "image must have shape [%zd, %d, %zd, %zd] (%d x the latent's size)",
                     (Py_ssize_t)B, d->out_channels, (Py_ssize_t)H, (Py_ssize_t)W, f);
        goto fail;
    }
    if (!avq_py_same_dims(*mask, B, 1, H, W)) {
        PyErr_Format(avq_py_exc(AVQ_ERR_SHAPE), "mask must have the image's shape [B, 1, H, W] = [%zd, 1, %zd, %zd]",
                     (Py_ssize_t)B, (Py_ssize_t)H, (Py_ssize_t)W);
        goto fail;
    }
    return 0;
fail:
    Py_CLEAR(*z);
    Py_CLEAR(*image);
    Py_CLEAR(*mask);
    Py_CLEAR(o->spill_dir);
    return -1;
}

static PyObject *ae_check_decode(AutoencoderObject *self, PyObject *args, PyObject *kw) {
    PyArrayObject *z, *image, *mask;
    decode_opts o;
    if (decode_inputs(self, args, kw, &z, &image, &mask, &o) < 0) return NULL;
    Py_DECREF(z);
    Py_XDECREF(image);
    Py_XDECREF(mask);
    Py_XDECREF(o.spill_dir);
    Py_RETURN_NONE;
}

static PyObject *ae_decode(AutoencoderObject *self, PyObject *args, PyObject *kw) {
    PyArrayObject *z, *image, *mask;
    decode_opts o;
    if (decode_inputs(self, args, kw, &z, &image, &mask, &o) < 0) return NULL;
    const int banded = o.banded;
    const long long band_rows = o.band_rows;
    const avq_ae_decoder_config *d = &avq_autoencoder_get_config(self->model)->decoder;
    const int f = avq_autoencoder_factor(self->model, 0);
    const npy_intp B = PyArray_DIM(z, 0), H = f * PyArray_DIM(z, 2), W = f * PyArray_DIM(z, 3);
    npy_intp od[4] = {B, d->out_channels, H, W};
    PyObject *out = PyArray_SimpleNew(4, od, NPY_FLOAT32);
    if (out) {
        run_args a = {.model = self->model,
                      .latent = PyArray_DATA(z),
                      .image = data_or_null(image),
                      .mask = data_or_null(mask),
                      .out = PyArray_DATA((PyArrayObject *)out),
                      .spill_dir = o.spill_dir ? PyBytes_AS_STRING(o.spill_dir) : NULL,
                      .memory_budget = (size_t)o.memory_budget,
                      .spill_optional = o.spill_optional};
        int task = (image ? AVQ_AE_DECODE_COND : AVQ_AE_DECODE) + (banded ? BANDED_TASK : 0);
        avq_py_plan_key key = {task, {B, H, W, banded ? band_rows : 0}};
        out = avq_py_plan_cache_call(&self->plans, &key, run_decode, &a, out);
    }
    Py_DECREF(z);
    Py_XDECREF(image);
    Py_XDECREF(mask);
    Py_XDECREF(o.spill_dir);
    return out;
}

/* ---- the type: the model protocol (model.h) and the above -------------- */

static PyMethodDef ae_methods[] = {
    AVQ_PY_KW_METHOD("encode", ae_encode,
                     "encode(image, noise=None) -> (mean, logvar) or (mean, logvar, mean + exp(logvar / 2) * noise)."),
    AVQ_PY_KW_METHOD("decode", ae_decode,
                     "decode(latent, image=None, mask=None, *, banded=False, band_rows=0, spill_dir=None, "
                     "memory_budget=0) -> float32 [B, 3, H, W]; image and mask for the conditional decoder; banded: "
                     "the exact decode in row bands of band_rows rows (0: from the memory budget); spill_dir "
                     "(banded only): an arena above memory_budget bytes is an unlinked file there."),
    AVQ_PY_KW_METHOD("check_encode", ae_check_encode,
                     "check_encode(image, noise=None): raises what encode would for these arguments, runs nothing."),
    AVQ_PY_KW_METHOD("check_decode", ae_check_decode,
                     "check_decode(latent, image=None, mask=None, *, banded=False, band_rows=0, spill_dir=None, "
                     "memory_budget=0): raises what decode would, runs nothing."),
    {NULL, NULL, 0, NULL},
};

static PyType_Slot ae_slots[] = {AVQ_PY_TYPE_SLOTS(
    ae_new, ae_methods,
    "KL encoder and (asymmetric) decoders on a dict of checkpoint arrays (private: use asymvq.Autoencoder).")};

static PyType_Spec ae_spec = {"asymvq._core.Autoencoder", sizeof(avq_py_model), 0, Py_TPFLAGS_DEFAULT, ae_slots};

int avq_py_add_autoencoder(PyObject *m) { return avq_py_model_add_type(m, &ae_spec, NULL); }
