/* asymvq._core.*_tensors: the tensors each C model looks up, as a list of
 * (checkpoint name, shape) in lookup order (private; asymvq.tables is the
 * public face). Each function builds its model against a recording weight
 * source (models/loader.h), which hands out no memory: the C loader is the
 * one description of every topology, and a real-size table takes
 * milliseconds. Arguments are the C config's fields (all required); a config
 * the C model refuses raises ValueError with the model's message. */
#include "common.h"
#include "models/autoencoder.h"
#include "models/text_encoder.h"
#include "models/unet.h"

/* The recorded list, or the creation's error. Frees `model` with `destroy`. */
static PyObject *recorded(avq_status st, avq_weight_recorder *r, void *model, void (*destroy)(void *)) {
    if (model) destroy(model);
    PyObject *out = NULL;
    if (r->oom) {
        PyErr_NoMemory();
    } else if (st != AVQ_OK) {
        avq_py_raise(st);
    } else if ((out = PyList_New((Py_ssize_t)r->n))) {
        for (size_t i = 0; i < r->n; i++) {
            const avq_tensor_entry *e = &r->all[i];
            PyObject *shape = PyTuple_New(e->ndim);
            for (int d = 0; shape && d < e->ndim; d++) PyTuple_SET_ITEM(shape, d, PyLong_FromLongLong(e->dims[d]));
            PyObject *item = shape ? Py_BuildValue("(sN)", e->name, shape) : NULL;
            if (!item) {
                Py_CLEAR(out);
                break;
            }
            PyList_SET_ITEM(out, (Py_ssize_t)i, item);
        }
    }
    avq_weight_recorder_free(r);
    return out;
}

/* Fills out[0..n) from a sequence of at most `max` ints; returns n or -1. */
static int int_list(PyObject *seq_obj, const char *key, int *out, int max) {
    PyObject *seq = PySequence_Fast(seq_obj, "expected a sequence of ints");
    if (!seq) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > max) PyErr_Format(PyExc_ValueError, "%s has %zd entries, at most %d are supported", key, n, max);
    for (Py_ssize_t i = 0; i < n && !PyErr_Occurred(); i++) {
        long x = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (!PyErr_Occurred() && (x < INT32_MIN || x > INT32_MAX))
            PyErr_Format(PyExc_ValueError, "%s[%zd] is out of range", key, i);
        out[i] = (int)x;
    }
    Py_DECREF(seq);
    return PyErr_Occurred() ? -1 : (int)n;
}

static int prefix_copy(const char *prefix, char *out, size_t size) {
    if (strlen(prefix) >= size) {
        PyErr_Format(PyExc_ValueError, "prefix %s is too long", prefix);
        return -1;
    }
    strcpy(out, prefix);
    return 0;
}

static void unet_destroy(void *m) { avq_unet_destroy(m); }
static void text_destroy(void *m) { avq_text_encoder_destroy(m); }
static void ae_destroy(void *m) { avq_autoencoder_destroy(m); }

static PyObject *py_unet_tensors(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwl[] = {"in_channels", "out_channels", "model_channels", "channel_mult", "num_res_blocks",
                          "attention_resolutions", "num_heads", "num_head_channels", "transformer_depth",
                          "context_dim", NULL};
    avq_unet_config c;
    memset(&c, 0, sizeof c);
    PyObject *mult, *attn;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iiiOiOiiii:unet_tensors", kwl, &c.in_channels, &c.out_channels,
                                     &c.model_channels, &mult, &c.num_res_blocks, &attn, &c.num_heads,
                                     &c.num_head_channels, &c.transformer_depth, &c.context_dim))
        return NULL;
    if ((c.num_levels = int_list(mult, "channel_mult", c.channel_mult, AVQ_UNET_MAX_LEVELS)) < 0 ||
        (c.num_attention_resolutions =
             int_list(attn, "attention_resolutions", c.attention_resolutions, AVQ_UNET_MAX_LEVELS)) < 0)
        return NULL;
    avq_weight_recorder r;
    avq_weight_recorder_init(&r);
    avq_unet *m = NULL;
    avq_status st = avq_unet_create(&c, AVQ_F32, &r.src, &m);
    return recorded(st, &r, m, unet_destroy);
}

static PyObject *py_text_encoder_tensors(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwl[] = {"vocab_size", "width", "layers", "heads", "mlp", "max_positions", NULL};
    avq_text_encoder_config c;
    memset(&c, 0, sizeof c);
    c.eps = 1e-5f; /* not a weight's business */
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iiiiii:text_encoder_tensors", kwl, &c.vocab_size, &c.width,
                                     &c.layers, &c.heads, &c.mlp, &c.max_positions))
        return NULL;
    avq_weight_recorder r;
    avq_weight_recorder_init(&r);
    avq_text_encoder *m = NULL;
    avq_status st = avq_text_encoder_create(&c, &r.src, AVQ_F32, &m);
    return recorded(st, &r, m, text_destroy);
}

static PyObject *py_vae_encoder_tensors(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwl[] = {"in_channels", "ch", "ch_mult", "num_res_blocks", "z_channels", "embed_dim", "prefix", NULL};
    avq_autoencoder_config c;
    memset(&c, 0, sizeof c);
    avq_ae_encoder_config *e = &c.encoder;
    PyObject *mult;
    const char *prefix = "";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iiOiiis:vae_encoder_tensors", kwl, &e->in_channels, &e->ch, &mult,
                                     &e->num_res_blocks, &e->z_channels, &e->embed_dim, &prefix))
        return NULL;
    if ((e->num_levels = int_list(mult, "ch_mult", e->ch_mult, AVQ_AE_MAX_LEVELS)) < 0 ||
        prefix_copy(prefix, e->prefix, sizeof e->prefix) < 0)
        return NULL;
    c.has_encoder = 1;
    avq_weight_recorder r;
    avq_weight_recorder_init(&r);
    avq_autoencoder *m = NULL;
    avq_status st = avq_autoencoder_create(&c, &r.src, AVQ_F32, &m);
    return recorded(st, &r, m, ae_destroy);
}

static PyObject *py_decoder_tensors(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwl[] = {"embed_dim",   "z_channels",    "widths", "blocks_per_level", "out_channels",
                          "conditional", "cond_channels", "prefix", NULL};
    avq_autoencoder_config c;
    memset(&c, 0, sizeof c);
    avq_ae_decoder_config *d = &c.decoder;
    PyObject *widths, *cond = NULL;
    const char *prefix = "";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iiOiipOs:decoder_tensors", kwl, &d->embed_dim, &d->z_channels,
                                     &widths, &d->blocks_per_level, &d->out_channels, &d->conditional, &cond, &prefix))
        return NULL;
    if ((d->num_levels = int_list(widths, "widths", d->widths, AVQ_AE_MAX_LEVELS)) < 0 ||
        (d->conditional && int_list(cond, "cond_channels", d->cond_channels, 3) < 0) ||
        prefix_copy(prefix, d->prefix, sizeof d->prefix) < 0)
        return NULL;
    c.has_decoder = 1;
    avq_weight_recorder r;
    avq_weight_recorder_init(&r);
    avq_autoencoder *m = NULL;
    avq_status st = avq_autoencoder_create(&c, &r.src, AVQ_F32, &m);
    return recorded(st, &r, m, ae_destroy);
}

static PyMethodDef table_methods[] = {
    {"unet_tensors", (PyCFunction)(void (*)(void))py_unet_tensors, METH_VARARGS | METH_KEYWORDS,
     "[(name, shape)] the C UNet looks up, in order."},
    {"text_encoder_tensors", (PyCFunction)(void (*)(void))py_text_encoder_tensors, METH_VARARGS | METH_KEYWORDS,
     "[(name, shape)] the C text encoder looks up, in order."},
    {"vae_encoder_tensors", (PyCFunction)(void (*)(void))py_vae_encoder_tensors, METH_VARARGS | METH_KEYWORDS,
     "[(name, shape)] the C VAE encoder looks up, in order."},
    {"decoder_tensors", (PyCFunction)(void (*)(void))py_decoder_tensors, METH_VARARGS | METH_KEYWORDS,
     "[(name, shape)] the C decoder looks up, in order."},
    {NULL, NULL, 0, NULL},
};

int avq_py_add_tables(PyObject *m) { return PyModule_AddFunctions(m, table_methods); }
