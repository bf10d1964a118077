/* asymvq._core.Autoencoder: the C KL encoder / decoders on a dict of weights.
 *
 *   Autoencoder(weights, encoder=None, decoder=None, precision="fp32")
 *     encoder: {"in_channels", "ch", "ch_mult", "num_res_blocks", "z_channels", "embed_dim", "prefix"}
 *     decoder: {"embed_dim", "z_channels", "widths", "blocks_per_level", "out_channels",
 *               "conditional", "cond_channels", "prefix"}
 *   .encode(image, noise=None) -> (mean, logvar) or (mean, logvar, sample)
 *   .decode(latent, image=None, mask=None) -> image
 *
 * Arrays are float32 NCHW. The model copies the weights it needs while it is
 * built (the dict is not kept) and keeps up to MAX_PLANS plans, one per (task,
 * batch, height, width), the oldest dropped first: a decoder plan's arena can
 * hold gigabytes. Runs release the GIL and are serialised by a lock, because a
 * plan's arena is not re-entrant. */
#include <stdlib.h>

#include "common.h"
#include "models/autoencoder.h"

#define MAX_PLANS 4

typedef struct plan_entry {
    avq_ae_task task;
    int64_t batch, height, width;
    avq_autoencoder_plan *plan; /* owned */
} plan_entry;

typedef struct {
    PyObject_HEAD
    avq_autoencoder *model; /* owned */
    plan_entry plans[MAX_PLANS];
    size_t nplans;
    PyThread_type_lock lock; /* serialises runs */
} AutoencoderObject;

static void ae_clear_plans(AutoencoderObject *self) {
    for (size_t i = 0; i < self->nplans; i++) avq_autoencoder_plan_destroy(self->plans[i].plan);
    self->nplans = 0;
}

static void ae_dealloc(AutoencoderObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    ae_clear_plans(self);
    avq_autoencoder_destroy(self->model);
    if (self->lock) PyThread_free_lock(self->lock);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* ---- config dicts ------------------------------------------------------- */

static int cfg_int(PyObject *d, const char *what, const char *key, int *out) {
    PyObject *v = PyDict_GetItemString(d, key); /* borrowed */
    if (!v) {
        PyErr_Format(PyExc_ValueError, "%s config: missing '%s'", what, key);
        return -1;
    }
    long x = PyLong_AsLong(v);
    if (x == -1 && PyErr_Occurred()) {
        PyErr_Format(PyExc_TypeError, "%s config: %s must be an integer", what, key);
        return -1;
    }
    if (x < 0 || x > (1 << 20)) {
        PyErr_Format(PyExc_ValueError, "%s config: %s = %ld is out of range", what, key, x);
        return -1;
    }
    *out = (int)x;
    return 0;
}

/* A sequence of 1..max integers; returns its length or -1. */
static int cfg_ints(PyObject *d, const char *what, const char *key, int *out, int max) {
    PyObject *v = PyDict_GetItemString(d, key);
    if (!v) {
        PyErr_Format(PyExc_ValueError, "%s config: missing '%s'", what, key);
        return -1;
    }
    PyObject *seq = PySequence_Fast(v, "");
    if (!seq) {
        PyErr_Format(PyExc_TypeError, "%s config: %s must be a sequence of integers", what, key);
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n < 1 || n > max) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "%s config: %s must have 1 to %d entries, got %zd", what, key, max, n);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long x = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if ((x == -1 && PyErr_Occurred()) || x < 1 || x > (1 << 20)) {
            Py_DECREF(seq);
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "%s config: %s[%zd] must be a positive integer", what, key, i);
            return -1;
        }
        out[i] = (int)x;
    }
    Py_DECREF(seq);
    return (int)n;
}

static int cfg_prefix(PyObject *d, const char *what, char *out) {
    PyObject *v = PyDict_GetItemString(d, "prefix");
    if (!v || v == Py_None) {
        out[0] = '\0';
        return 0;
    }
    const char *s = PyUnicode_Check(v) ? PyUnicode_AsUTF8(v) : NULL;
    if (!s) {
        PyErr_Format(PyExc_TypeError, "%s config: prefix must be a string", what);
        return -1;
    }
    if (strlen(s) >= AVQ_AE_PREFIX_MAX) {
        PyErr_Format(PyExc_ValueError, "%s config: prefix %R is too long", what, v);
        return -1;
    }
    strcpy(out, s);
    return 0;
}

static int parse_encoder(PyObject *d, avq_ae_encoder_config *e) {
    const char *w = "encoder";
    if (!PyDict_Check(d)) {
        PyErr_SetString(PyExc_TypeError, "encoder config must be a dict");
        return -1;
    }
    if (cfg_int(d, w, "in_channels", &e->in_channels) < 0 || cfg_int(d, w, "ch", &e->ch) < 0 ||
        cfg_int(d, w, "num_res_blocks", &e->num_res_blocks) < 0 || cfg_int(d, w, "z_channels", &e->z_channels) < 0 ||
        cfg_int(d, w, "embed_dim", &e->embed_dim) < 0 || cfg_prefix(d, w, e->prefix) < 0)
        return -1;
    e->num_levels = cfg_ints(d, w, "ch_mult", e->ch_mult, AVQ_AE_MAX_LEVELS);
    return e->num_levels < 0 ? -1 : 0;
}

static int parse_decoder(PyObject *d, avq_ae_decoder_config *c) {
    const char *w = "decoder";
    if (!PyDict_Check(d)) {
        PyErr_SetString(PyExc_TypeError, "decoder config must be a dict");
        return -1;
    }
    if (cfg_int(d, w, "embed_dim", &c->embed_dim) < 0 || cfg_int(d, w, "z_channels", &c->z_channels) < 0 ||
        cfg_int(d, w, "blocks_per_level", &c->blocks_per_level) < 0 ||
        cfg_int(d, w, "out_channels", &c->out_channels) < 0 || cfg_prefix(d, w, c->prefix) < 0)
        return -1;
    c->num_levels = cfg_ints(d, w, "widths", c->widths, AVQ_AE_MAX_LEVELS);
    if (c->num_levels < 0) return -1;
    PyObject *cond = PyDict_GetItemString(d, "conditional");
    c->conditional = cond ? PyObject_IsTrue(cond) : 0;
    if (c->conditional < 0) return -1;
    if (c->conditional && cfg_ints(d, w, "cond_channels", c->cond_channels, 3) != 3) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "decoder config: cond_channels must have 3 entries");
        return -1;
    }
    return 0;
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
    if (cfg.has_encoder && parse_encoder(enc, &cfg.encoder) < 0) return NULL;
    if (cfg.has_decoder && parse_decoder(dec, &cfg.decoder) < 0) return NULL;
    AutoencoderObject *self = (AutoencoderObject *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->lock = PyThread_allocate_lock();
    if (!self->lock) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    avq_weight_source src;
    avq_py_dict_source(&src, weights);
    avq_status st = avq_autoencoder_create(&cfg, &src, dt, &self->model);
    if (st != AVQ_OK) {
        Py_DECREF(self);
        return avq_py_raise(st);
    }
    return (PyObject *)self;
}

/* ---- runs --------------------------------------------------------------- */

static void ae_lock(AutoencoderObject *self) {
    if (PyThread_acquire_lock(self->lock, NOWAIT_LOCK)) return;
    Py_BEGIN_ALLOW_THREADS PyThread_acquire_lock(self->lock, WAIT_LOCK);
    Py_END_ALLOW_THREADS
}

/* The plan for (task, batch, height, width), created on first use. Called
 * with the run lock held and possibly without the GIL: no Python API here. */
static avq_status ae_plan(AutoencoderObject *self, avq_ae_task task, int64_t b, int64_t h, int64_t w,
                          avq_autoencoder_plan **out) {
    for (size_t i = 0; i < self->nplans; i++) {
        plan_entry *e = &self->plans[i];
        if (e->task == task && e->batch == b && e->height == h && e->width == w) {
            *out = e->plan;
            return AVQ_OK;
        }
    }
    AVQ_TRY(avq_autoencoder_plan_create(self->model, task, b, h, w, out));
    if (self->nplans == MAX_PLANS) { /* drop the oldest */
        avq_autoencoder_plan_destroy(self->plans[0].plan);
        memmove(&self->plans[0], &self->plans[1], (MAX_PLANS - 1) * sizeof self->plans[0]);
        self->nplans--;
    }
    self->plans[self->nplans++] = (plan_entry){task, b, h, w, *out};
    return AVQ_OK;
}

/* A float32 [B, C, H, W] array with C == channels (C unchecked if channels < 0). */
static PyArrayObject *array4(PyObject *obj, const char *name, int channels) {
    PyArrayObject *a = avq_py_f32(obj, name, 4, 4);
    if (a && channels >= 0 && PyArray_DIM(a, 1) != channels) {
        PyErr_Format(PyExc_ValueError, "%s must have %d channels ([B, %d, H, W]), got %zd", name, channels, channels,
                     (Py_ssize_t)PyArray_DIM(a, 1));
        Py_CLEAR(a);
    }
    return a;
}

static int same_dims(PyArrayObject *a, npy_intp b, npy_intp c, npy_intp h, npy_intp w) {
    return PyArray_DIM(a, 0) == b && PyArray_DIM(a, 1) == c && PyArray_DIM(a, 2) == h && PyArray_DIM(a, 3) == w;
}

static PyObject *ae_encode(AutoencoderObject *self, PyObject *args, PyObject *kw) {
    static char *kwl[] = {"image", "noise", NULL};
    PyObject *io, *no = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O", kwl, &io, &no)) return NULL;
    const avq_autoencoder_config *cfg = avq_autoencoder_get_config(self->model);
    if (!cfg->has_encoder) {
        PyErr_SetString(PyExc_ValueError, "this Autoencoder has no encoder (its weights were not loaded)");
        return NULL;
    }
    const int f = avq_autoencoder_factor(self->model, 1), e = cfg->encoder.embed_dim;
    PyArrayObject *image = array4(io, "image", cfg->encoder.in_channels), *noise = NULL;
    PyArrayObject *mean = NULL, *logvar = NULL, *sample = NULL;
    PyObject *ret = NULL;
    if (!image) return NULL;
    const npy_intp B = PyArray_DIM(image, 0), H = PyArray_DIM(image, 2), W = PyArray_DIM(image, 3);
    if (H % f || W % f) {
        PyErr_Format(PyExc_ValueError, "image height and width must be multiples of %d, got %zd x %zd", f,
                     (Py_ssize_t)H, (Py_ssize_t)W);
        goto done;
    }
    npy_intp ld[4] = {B, e, H / f, W / f};
    if (no != Py_None) {
        if (!(noise = array4(no, "noise", e))) goto done;
        if (!same_dims(noise, ld[0], ld[1], ld[2], ld[3])) {
            PyErr_Format(PyExc_ValueError, "noise must have the latent's shape [%zd, %zd, %zd, %zd]", (Py_ssize_t)ld[0],
                         (Py_ssize_t)ld[1], (Py_ssize_t)ld[2], (Py_ssize_t)ld[3]);
            goto done;
        }
        if (!(sample = (PyArrayObject *)PyArray_SimpleNew(4, ld, NPY_FLOAT32))) goto done;
    }
    if (!(mean = (PyArrayObject *)PyArray_SimpleNew(4, ld, NPY_FLOAT32)) ||
        !(logvar = (PyArrayObject *)PyArray_SimpleNew(4, ld, NPY_FLOAT32)))
        goto done;
    avq_status st;
    const float *ip = PyArray_DATA(image), *np_ = noise ? PyArray_DATA(noise) : NULL;
    float *mp = PyArray_DATA(mean), *lp = PyArray_DATA(logvar), *sp = sample ? PyArray_DATA(sample) : NULL;
    if (avq_py_interrupt_begin() < 0) goto done;
    Py_BEGIN_ALLOW_THREADS PyThread_acquire_lock(self->lock, WAIT_LOCK);
    avq_plan_set_thread_abort_flag(avq_py_interrupt_flag());
    avq_autoencoder_plan *plan = NULL;
    st = ae_plan(self, AVQ_AE_ENCODE, B, H, W, &plan);
    if (st == AVQ_OK) st = avq_autoencoder_encode(self->model, plan, ip, np_, mp, lp, sp);
    avq_plan_set_thread_abort_flag(NULL);
    PyThread_release_lock(self->lock);
    Py_END_ALLOW_THREADS
    avq_py_interrupt_end();
    if (st != AVQ_OK) {
        avq_py_raise_run(st);
        goto done;
    }
    ret = sample ? PyTuple_Pack(3, mean, logvar, sample) : PyTuple_Pack(2, mean, logvar);
done:
    Py_XDECREF(image);
    Py_XDECREF(noise);
    Py_XDECREF(mean);
    Py_XDECREF(logvar);
    Py_XDECREF(sample);
    return ret;
}

static PyObject *ae_decode(AutoencoderObject *self, PyObject *args, PyObject *kw) {
    static char *kwl[] = {"latent", "image", "mask", NULL};
    PyObject *zo, *io = Py_None, *mo = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OO", kwl, &zo, &io, &mo)) return NULL;
    const avq_autoencoder_config *cfg = avq_autoencoder_get_config(self->model);
    if (!cfg->has_decoder) {
        PyErr_SetString(PyExc_ValueError, "this Autoencoder has no decoder (its weights were not loaded)");
        return NULL;
    }
    const avq_ae_decoder_config *d = &cfg->decoder;
    if ((io == Py_None) != (mo == Py_None)) {
        PyErr_SetString(PyExc_ValueError, io == Py_None ? "mask was given without image: pass both or neither"
                                                        : "image was given without mask: pass both or neither");
        return NULL;
    }
    const int cond = io != Py_None, f = avq_autoencoder_factor(self->model, 0);
    if (cond && !d->conditional) {
        PyErr_SetString(PyExc_ValueError,
                        "this decoder has no condition (a _wocondition or SD decoder): pass neither image nor mask");
        return NULL;
    }
    PyArrayObject *z = array4(zo, "latent", d->embed_dim), *image = NULL, *mask = NULL, *out = NULL;
    PyObject *ret = NULL;
    if (!z) return NULL;
    const npy_intp B = PyArray_DIM(z, 0), H = f * PyArray_DIM(z, 2), W = f * PyArray_DIM(z, 3);
    if (cond) {
        if (!(image = array4(io, "image", d->out_channels)) || !(mask = array4(mo, "mask", 1))) goto done;
        if (!same_dims(image, B, d->out_channels, H, W)) {
            PyErr_Format(PyExc_ValueError, "image must have shape [%zd, %d, %zd, %zd] (%d x the latent's size)",
                         (Py_ssize_t)B, d->out_channels, (Py_ssize_t)H, (Py_ssize_t)W, f);
            goto done;
        }
        if (!same_dims(mask, B, 1, H, W)) {
            PyErr_Format(PyExc_ValueError, "mask must have shape [%zd, 1, %zd, %zd] (the image's)", (Py_ssize_t)B,
                         (Py_ssize_t)H, (Py_ssize_t)W);
            goto done;
        }
    }
    npy_intp od[4] = {B, d->out_channels, H, W};
    if (!(out = (PyArrayObject *)PyArray_SimpleNew(4, od, NPY_FLOAT32))) goto done;
    avq_status st;
    const float *zp = PyArray_DATA(z), *ip = image ? PyArray_DATA(image) : NULL, *mp = mask ? PyArray_DATA(mask) : NULL;
    float *op = PyArray_DATA(out);
    avq_ae_task task = cond ? AVQ_AE_DECODE_COND : AVQ_AE_DECODE;
    if (avq_py_interrupt_begin() < 0) goto done;
    Py_BEGIN_ALLOW_THREADS PyThread_acquire_lock(self->lock, WAIT_LOCK);
    avq_plan_set_thread_abort_flag(avq_py_interrupt_flag());
    avq_autoencoder_plan *plan = NULL;
    st = ae_plan(self, task, B, H, W, &plan);
    if (st == AVQ_OK) st = avq_autoencoder_decode(self->model, plan, zp, ip, mp, op);
    avq_plan_set_thread_abort_flag(NULL);
    PyThread_release_lock(self->lock);
    Py_END_ALLOW_THREADS
    avq_py_interrupt_end();
    if (st != AVQ_OK) {
        avq_py_raise_run(st);
        goto done;
    }
    ret = (PyObject *)out;
    out = NULL;
done:
    Py_XDECREF(z);
    Py_XDECREF(image);
    Py_XDECREF(mask);
    Py_XDECREF(out);
    return ret;
}

static PyObject *ae_clear(AutoencoderObject *self, PyObject *noargs) {
    (void)noargs;
    ae_lock(self);
    ae_clear_plans(self);
    PyThread_release_lock(self->lock);
    Py_RETURN_NONE;
}

/* ---- attributes --------------------------------------------------------- */

static PyObject *ae_get_num_parameters(AutoencoderObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLongLong((long long)avq_autoencoder_num_params(self->model));
}

static PyObject *ae_get_precision(AutoencoderObject *self, void *closure) {
    (void)closure;
    return PyUnicode_FromString(avq_autoencoder_precision(self->model) == AVQ_BF16 ? "bf16" : "fp32");
}

static PyObject *ae_get_memory_bytes(AutoencoderObject *self, void *closure) {
    (void)closure;
    size_t total = 0;
    ae_lock(self);
    for (size_t i = 0; i < self->nplans; i++) total += avq_autoencoder_plan_bytes(self->plans[i].plan);
    PyThread_release_lock(self->lock);
    return PyLong_FromSize_t(total);
}

static PyObject *ae_get_plans(AutoencoderObject *self, void *closure) {
    (void)closure;
    static const char *names[] = {"encode", "decode", "decode_cond"};
    ae_lock(self);
    PyObject *list = PyList_New((Py_ssize_t)self->nplans);
    for (size_t i = 0; list && i < self->nplans; i++) {
        const plan_entry *e = &self->plans[i];
        PyObject *t = Py_BuildValue("(sLLLn)", names[e->task], (long long)e->batch, (long long)e->height,
                                    (long long)e->width, (Py_ssize_t)avq_autoencoder_plan_bytes(e->plan));
        if (!t) Py_CLEAR(list);
        else PyList_SET_ITEM(list, (Py_ssize_t)i, t);
    }
    PyThread_release_lock(self->lock);
    return list;
}

static PyObject *ae_get_has_encoder(AutoencoderObject *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(avq_autoencoder_get_config(self->model)->has_encoder);
}

static PyObject *ae_get_has_decoder(AutoencoderObject *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(avq_autoencoder_get_config(self->model)->has_decoder);
}

static PyObject *ae_get_conditional(AutoencoderObject *self, void *closure) {
    (void)closure;
    const avq_autoencoder_config *c = avq_autoencoder_get_config(self->model);
    return PyBool_FromLong(c->has_decoder && c->decoder.conditional);
}

static PyMethodDef ae_methods[] = {
    {"encode", (PyCFunction)(void (*)(void))ae_encode, METH_VARARGS | METH_KEYWORDS,
     "encode(image, noise=None) -> (mean, logvar) or (mean, logvar, mean + exp(logvar / 2) * noise)."},
    {"decode", (PyCFunction)(void (*)(void))ae_decode, METH_VARARGS | METH_KEYWORDS,
     "decode(latent, image=None, mask=None) -> float32 [B, 3, H, W]; image and mask for the conditional decoder."},
    {"clear_plans", (PyCFunction)ae_clear, METH_NOARGS, "Free every cached plan (they are rebuilt on demand)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef ae_getset[] = {
    {"num_parameters", (getter)ae_get_num_parameters, NULL, "Parameters held.", NULL},
    {"precision", (getter)ae_get_precision, NULL, "Activation precision: 'fp32' or 'bf16'.", NULL},
    {"memory_bytes", (getter)ae_get_memory_bytes, NULL, "Activation arena + scratchpad bytes of all cached plans.",
     NULL},
    {"plans", (getter)ae_get_plans, NULL, "(task, batch, height, width, bytes) of each cached plan.", NULL},
    {"has_encoder", (getter)ae_get_has_encoder, NULL, "Whether the encoder was loaded.", NULL},
    {"has_decoder", (getter)ae_get_has_decoder, NULL, "Whether a decoder was loaded.", NULL},
    {"conditional", (getter)ae_get_conditional, NULL, "Whether the decoder merges the mask condition.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot ae_slots[] = {
    {Py_tp_new, ae_new},
    {Py_tp_dealloc, ae_dealloc},
    {Py_tp_methods, ae_methods},
    {Py_tp_getset, ae_getset},
    {Py_tp_doc,
     "KL encoder and (asymmetric) decoders on a dict of checkpoint arrays (private: use asymvq.Autoencoder)."},
    {0, NULL},
};

static PyType_Spec ae_spec = {
    "asymvq._core.Autoencoder", sizeof(AutoencoderObject), 0, Py_TPFLAGS_DEFAULT, ae_slots,
};

int avq_py_add_autoencoder(PyObject *m) {
    PyObject *type = PyType_FromSpec(&ae_spec);
    if (!type) return -1;
    if (PyModule_AddObject(m, "Autoencoder", type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}
