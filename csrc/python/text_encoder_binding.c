/* asymvq._core.TextEncoder: the C CLIP text transformer on a dict of weights.
 *
 *   TextEncoder(weights, vocab_size, width, layers, heads, mlp, max_positions, eps, precision="fp32")
 *   .run(ids) -> float32 ndarray [B, L, width]       ids: integer ndarray [B, L]
 *
 * The model copies its weights while it is built (the dict is not kept).
 * Plans and concurrency follow plan_cache.h: one plan per (batch, tokens),
 * calls serialised behind the model's lock with the GIL released. */
#include "bindings.h"
#include "common.h"
#include "model.h"
#include "models/text_encoder.h"

typedef avq_py_model TextEncoderObject; /* model: the avq_text_encoder */

static avq_status plan_create(const void *model, const avq_py_plan_key *k, void **out) {
    return avq_text_encoder_plan_create(model, k->dims[0], k->dims[1], (avq_text_encoder_plan **)out);
}

AVQ_PY_MODEL_FUNCTIONS(text_encoder)

static const avq_py_model_kind te_kind = {
    {"TextEncoder", NULL, {"batch", "tokens", NULL, NULL}, plan_create, plan_destroy, plan_core},
    num_params,
    precision,
    destroy,
};

static PyObject *te_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwl[] = {"weights", "vocab_size",    "width", "layers",    "heads",
                          "mlp",     "max_positions", "eps",   "precision", NULL};
    PyObject *weights, *prec = NULL;
    avq_text_encoder_config cfg;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!iiiiiif|O", kwl, &PyDict_Type, &weights, &cfg.vocab_size, &cfg.width,
                                     &cfg.layers, &cfg.heads, &cfg.mlp, &cfg.max_positions, &cfg.eps, &prec))
        return NULL;
    avq_dtype dt;
    if (avq_py_precision(prec, &dt) < 0) return NULL;
    avq_weight_source src;
    avq_py_dict_source(&src, weights);
    avq_text_encoder *model;
    avq_status st = avq_text_encoder_create(&cfg, &src, dt, &model);
    return st == AVQ_OK ? avq_py_model_new(type, &te_kind, model) : avq_py_raise(st);
}

/* ids as a C-contiguous int32 copy, after checking dtype, shape and range. */
static PyArrayObject *te_ids(TextEncoderObject *self, PyObject *obj) {
    const avq_text_encoder_config *c = avq_text_encoder_get_config(self->model);
    if (!PyArray_Check(obj)) {
        PyErr_Format(avq_py_exc(AVQ_ERR_DTYPE), "ids must be a numpy.ndarray of integers [batch, tokens], got %s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (!PyArray_ISINTEGER(a)) {
        PyErr_Format(avq_py_exc(AVQ_ERR_DTYPE), "ids must have an integer dtype, got %s",
                     PyArray_DESCR(a)->typeobj->tp_name);
        return NULL;
    }
    if (PyArray_NDIM(a) != 2 || PyArray_DIM(a, 0) < 1 || PyArray_DIM(a, 1) < 1 ||
        PyArray_DIM(a, 1) > c->max_positions) {
        PyErr_Format(avq_py_exc(AVQ_ERR_ARG),
                     "ids must have shape [batch >= 1, tokens in 1..%d], got %d-D array of %zd elements",
                     c->max_positions, PyArray_NDIM(a), (Py_ssize_t)PyArray_SIZE(a));
        return NULL;
    }
    PyArrayObject *wide = (PyArrayObject *)PyArray_FROM_OTF(
        obj, NPY_INT64, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_FORCECAST);
    if (!wide) return NULL;
    const int64_t *v = PyArray_DATA(wide);
    const npy_intp n = PyArray_SIZE(wide), L = PyArray_DIM(wide, 1);
    int unsigned_huge = PyArray_ISUNSIGNED(a);
    for (npy_intp i = 0; i < n; i++) {
        if (v[i] < 0 || v[i] >= c->vocab_size) {
            if (unsigned_huge && v[i] < 0)
                PyErr_Format(avq_py_exc(AVQ_ERR_ARG), "token id at [%zd, %zd] is outside the vocabulary [0, %d)",
                             (Py_ssize_t)(i / L), (Py_ssize_t)(i % L), c->vocab_size);
            else
                PyErr_Format(avq_py_exc(AVQ_ERR_ARG), "token id %lld at [%zd, %zd] is outside the vocabulary [0, %d)",
                             (long long)v[i], (Py_ssize_t)(i / L), (Py_ssize_t)(i % L), c->vocab_size);
            Py_DECREF(wide);
            return NULL;
        }
    }
    PyArrayObject *narrow = (PyArrayObject *)PyArray_FROM_OTF((PyObject *)wide, NPY_INT32,
                                                              NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED |
                                                                  NPY_ARRAY_FORCECAST | NPY_ARRAY_ENSURECOPY);
    Py_DECREF(wide);
    return narrow;
}

typedef struct run_args {
    avq_text_encoder *model;
    const int32_t *ids;
    float *out;
} run_args;

static avq_status run(void *plan, void *ctx) {
    run_args *a = ctx;
    return avq_text_encoder_run(a->model, plan, a->ids, a->out);
}

static PyObject *te_run(TextEncoderObject *self, PyObject *ids_obj) {
    PyArrayObject *ids = te_ids(self, ids_obj);
    if (!ids) return NULL;
    const avq_text_encoder_config *c = avq_text_encoder_get_config(self->model);
    const int64_t B = PyArray_DIM(ids, 0), L = PyArray_DIM(ids, 1);
    npy_intp od[3] = {(npy_intp)B, (npy_intp)L, c->width};
    PyObject *out = PyArray_SimpleNew(3, od, NPY_FLOAT32);
    if (out) {
        run_args a = {self->model, PyArray_DATA(ids), PyArray_DATA((PyArrayObject *)out)};
        avq_py_plan_key key = {0, {B, L, 0, 0}};
        out = avq_py_plan_cache_call(&self->plans, &key, run, &a, out);
    }
    Py_DECREF(ids);
    return out;
}

/* ---- the type: the model protocol (model.h) and the above -------------- */

static PyMethodDef te_methods[] = {
    {"run", (PyCFunction)te_run, METH_O,
     "run(ids) -> float32 [B, L, width]: the final-layer-normed last hidden state for integer ids [B, L]."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot te_slots[] = {AVQ_PY_TYPE_SLOTS(
    te_new, te_methods, "CLIP text transformer on a dict of checkpoint arrays (private: use asymvq.TextEncoder).")};

static PyType_Spec te_spec = {"asymvq._core.TextEncoder", sizeof(avq_py_model), 0, Py_TPFLAGS_DEFAULT, te_slots};

int avq_py_add_text_encoder(PyObject *m) { return avq_py_model_add_type(m, &te_spec, NULL); }
