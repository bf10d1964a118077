/* asymvq._core.*_tensors: the tensors each C model looks up, as a list of
 * (checkpoint name, shape) in lookup order (private; asymvq.tables is the
 * public face). Each function builds its model against a recording weight
 * source (models/loader.h), which hands out no memory: the C loader is the
 * one description of every topology, and a real-size table takes
 * milliseconds. The keyword arguments are the config dict the model's
 * constructor takes (config.h: one parser); a config the C model refuses
 * raises ValueError with the model's message. */
#include "bindings.h"
#include "common.h"
#include "config.h"
#include "models/autoencoder.h"
#include "models/text_encoder.h"
#include "models/unet.h"
#include "pytypes.h"

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

/* The keyword arguments, which are the model's config dict (config.h parses
 * it as the model constructors do); positional arguments are refused. */
static PyObject *config_kwargs(PyObject *args, PyObject *kw, const char *fn) {
    if (PyTuple_GET_SIZE(args) == 0 && kw) return kw;
    PyErr_Format(PyExc_TypeError, "%s() takes the config's fields as keyword arguments only", fn);
    return NULL;
}

/* Each model built (f32) from its config against a recording source. */
static avq_status unet_create(const void *c, const avq_weight_source *src, void **m) {
    return avq_unet_create(c, AVQ_F32, src, (avq_unet **)m);
}
static avq_status text_create(const void *c, const avq_weight_source *src, void **m) {
    return avq_text_encoder_create(c, src, AVQ_F32, (avq_text_encoder **)m);
}
static avq_status ae_create(const void *c, const avq_weight_source *src, void **m) {
    return avq_autoencoder_create(c, src, AVQ_F32, (avq_autoencoder **)m);
}
static void unet_destroy(void *m) { avq_unet_destroy(m); }
static void text_destroy(void *m) { avq_text_encoder_destroy(m); }
static void ae_destroy(void *m) { avq_autoencoder_destroy(m); }

/* The tensors the model of config `c` looks up. */
static PyObject *record(avq_status (*create)(const void *, const avq_weight_source *, void **), const void *c,
                        void (*destroy)(void *)) {
    avq_weight_recorder r;
    avq_weight_recorder_init(&r);
    void *m = NULL;
    avq_status st = create(c, &r.src, &m);
    return recorded(st, &r, m, destroy);
}

static PyObject *py_unet_tensors(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    PyObject *cfg = config_kwargs(args, kw, "unet_tensors");
    avq_unet_config c;
    if (!cfg || avq_py_unet_config(cfg, &c) < 0) return NULL;
    return record(unet_create, &c, unet_destroy);
}

static PyObject *py_text_encoder_tensors(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwl[] = {"vocab_size", "width", "layers", "heads", "mlp", "max_positions", NULL};
    avq_text_encoder_config c;
    memset(&c, 0, sizeof c);
    c.eps = 1e-5f; /* not a weight's business */
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iiiiii:text_encoder_tensors", kwl, &c.vocab_size, &c.width, &c.layers,
                                     &c.heads, &c.mlp, &c.max_positions))
        return NULL;
    return record(text_create, &c, text_destroy);
}

/* The table of an autoencoder with one part: the encoder or a decoder. */
static PyObject *part_tensors(PyObject *args, PyObject *kw, int decoder) {
    PyObject *cfg = config_kwargs(args, kw, decoder ? "decoder_tensors" : "vae_encoder_tensors");
    avq_autoencoder_config c = {.has_encoder = !decoder, .has_decoder = decoder};
    if (!cfg || (decoder ? avq_py_decoder_config(cfg, &c.decoder) : avq_py_encoder_config(cfg, &c.encoder)) < 0)
        return NULL;
    return record(ae_create, &c, ae_destroy);
}

AVQ_PY_VARIANT(py_vae_encoder_tensors, part_tensors, 0)

AVQ_PY_VARIANT(py_decoder_tensors, part_tensors, 1)

#define TABLE_DOC(model) "[(name, shape)] the C " model " looks up, in order."
static PyMethodDef table_methods[] = {
    AVQ_PY_KW_METHOD("unet_tensors", py_unet_tensors, TABLE_DOC("UNet")),
    AVQ_PY_KW_METHOD("text_encoder_tensors", py_text_encoder_tensors, TABLE_DOC("text encoder")),
    AVQ_PY_KW_METHOD("vae_encoder_tensors", py_vae_encoder_tensors, TABLE_DOC("VAE encoder")),
    AVQ_PY_KW_METHOD("decoder_tensors", py_decoder_tensors, TABLE_DOC("decoder")),
    {NULL, NULL, 0, NULL},
};

int avq_py_add_tables(PyObject *m) { return PyModule_AddFunctions(m, table_methods); }
