/* asymvq._core.TextEncoder: the C CLIP text transformer on a dict of weights.
 *
 *   TextEncoder(weights, vocab_size, width, layers, heads, mlp, max_positions, eps, precision="fp32")
 *   .run(ids) -> float32 ndarray [B, L, width]       ids: integer ndarray [B, L]
 *
 * The model copies its weights while it is built (the dict is not kept) and
 * keeps one plan per (B, L) it has seen; runs release the GIL and are
 * serialised by a lock, because a plan's arena is not re-entrant. */
#include <stdlib.h>

#include "common.h"
#include "models/text_encoder.h"

typedef struct plan_entry {
    int64_t batch, seq_len;
    avq_text_encoder_plan *plan; /* owned */
} plan_entry;

typedef struct {
    PyObject_HEAD
    avq_text_encoder *model; /* owned */
    plan_entry *plans;       /* owned */
    size_t nplans, cap;
    PyThread_type_lock lock; /* serialises runs */
} TextEncoderObject;

static void te_clear_plans(TextEncoderObject *self) {
    for (size_t i = 0; i < self->nplans; i++) avq_text_encoder_plan_destroy(self->plans[i].plan);
    self->nplans = 0;
}

static void te_dealloc(TextEncoderObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    te_clear_plans(self);
    free(self->plans);
    avq_text_encoder_destroy(self->model);
    if (self->lock) PyThread_free_lock(self->lock);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *te_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwl[] = {"weights", "vocab_size", "width", "layers", "heads", "mlp", "max_positions", "eps",
                          "precision", NULL};
    PyObject *weights, *prec = NULL;
    avq_text_encoder_config cfg;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!iiiiiif|O", kwl, &PyDict_Type, &weights, &cfg.vocab_size,
                                     &cfg.width, &cfg.layers, &cfg.heads, &cfg.mlp, &cfg.max_positions, &cfg.eps, &prec))
        return NULL;
    avq_dtype dt;
    if (avq_py_precision(prec, &dt) < 0) return NULL;
    TextEncoderObject *self = (TextEncoderObject *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->lock = PyThread_allocate_lock();
    if (!self->lock) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    avq_weight_source src;
    avq_py_dict_source(&src, weights);
    avq_status st = avq_text_encoder_create(&cfg, &src, dt, &self->model);
    if (st != AVQ_OK) {
        Py_DECREF(self);
        return avq_py_raise(st);
    }
    return (PyObject *)self;
}

/* Takes the run lock, letting other Python threads run while waiting. */
static void te_lock(TextEncoderObject *self) {
    if (PyThread_acquire_lock(self->lock, NOWAIT_LOCK)) return;
    Py_BEGIN_ALLOW_THREADS PyThread_acquire_lock(self->lock, WAIT_LOCK);
    Py_END_ALLOW_THREADS
}

/* The plan for (batch, seq_len), created on first use. Called with the run
 * lock held and possibly without the GIL: no Python API here. */
static avq_status te_plan(TextEncoderObject *self, int64_t batch, int64_t seq_len, avq_text_encoder_plan **out) {
    for (size_t i = 0; i < self->nplans; i++)
        if (self->plans[i].batch == batch && self->plans[i].seq_len == seq_len) {
            *out = self->plans[i].plan;
            return AVQ_OK;
        }
    if (self->nplans == self->cap) {
        size_t cap = self->cap ? 2 * self->cap : 4;
        plan_entry *np = realloc(self->plans, cap * sizeof *np);
        if (!np) return avq_error(AVQ_ERR_MEMORY, "out of memory caching a text encoder plan");
        self->plans = np;
        self->cap = cap;
    }
    AVQ_TRY(avq_text_encoder_plan_create(self->model, batch, seq_len, out));
    self->plans[self->nplans++] = (plan_entry){batch, seq_len, *out};
    return AVQ_OK;
}

/* ids as a C-contiguous int32 copy, after checking dtype, shape and range. */
static PyArrayObject *te_ids(TextEncoderObject *self, PyObject *obj) {
    const avq_text_encoder_config *c = avq_text_encoder_get_config(self->model);
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "ids must be a numpy.ndarray of integers [batch, tokens], got %s",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (!PyArray_ISINTEGER(a)) {
        PyErr_Format(PyExc_TypeError, "ids must have an integer dtype, got %s", PyArray_DESCR(a)->typeobj->tp_name);
        return NULL;
    }
    if (PyArray_NDIM(a) != 2 || PyArray_DIM(a, 0) < 1 || PyArray_DIM(a, 1) < 1 ||
        PyArray_DIM(a, 1) > c->max_positions) {
        PyErr_Format(PyExc_ValueError, "ids must have shape [batch >= 1, tokens in 1..%d], got %d-D array of %zd elements",
                     c->max_positions, PyArray_NDIM(a), (Py_ssize_t)PyArray_SIZE(a));
        return NULL;
    }
    PyArrayObject *wide = (PyArrayObject *)PyArray_FROM_OTF(obj, NPY_INT64, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED |
                                                                             NPY_ARRAY_FORCECAST);
    if (!wide) return NULL;
    const int64_t *v = PyArray_DATA(wide);
    const npy_intp n = PyArray_SIZE(wide), L = PyArray_DIM(wide, 1);
    int unsigned_huge = PyArray_ISUNSIGNED(a);
    for (npy_intp i = 0; i < n; i++) {
        if (v[i] < 0 || v[i] >= c->vocab_size) {
            if (unsigned_huge && v[i] < 0)
                PyErr_Format(PyExc_ValueError, "token id at [%zd, %zd] is outside the vocabulary [0, %d)",
                             (Py_ssize_t)(i / L), (Py_ssize_t)(i % L), c->vocab_size);
            else
                PyErr_Format(PyExc_ValueError, "token id %lld at [%zd, %zd] is outside the vocabulary [0, %d)",
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

static PyObject *te_run(TextEncoderObject *self, PyObject *ids_obj) {
    PyArrayObject *ids = te_ids(self, ids_obj);
    if (!ids) return NULL;
    const avq_text_encoder_config *c = avq_text_encoder_get_config(self->model);
    const int64_t B = PyArray_DIM(ids, 0), L = PyArray_DIM(ids, 1);
    npy_intp od[3] = {(npy_intp)B, (npy_intp)L, c->width};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(3, od, NPY_FLOAT32);
    if (!out) {
        Py_DECREF(ids);
        return NULL;
    }
    avq_status st;
    const int32_t *idp = PyArray_DATA(ids);
    float *op = PyArray_DATA(out);
    if (avq_py_interrupt_begin() < 0) {
        Py_DECREF(ids);
        Py_DECREF(out);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS PyThread_acquire_lock(self->lock, WAIT_LOCK);
    avq_plan_set_thread_abort_flag(avq_py_interrupt_flag());
    avq_text_encoder_plan *plan = NULL;
    st = te_plan(self, B, L, &plan);
    if (st == AVQ_OK) st = avq_text_encoder_run(self->model, plan, idp, op);
    avq_plan_set_thread_abort_flag(NULL);
    PyThread_release_lock(self->lock);
    Py_END_ALLOW_THREADS Py_DECREF(ids);
    avq_py_interrupt_end();
    if (st != AVQ_OK) {
        Py_DECREF(out);
        return avq_py_raise_run(st);
    }
    return (PyObject *)out;
}

static PyObject *te_clear(TextEncoderObject *self, PyObject *noargs) {
    (void)noargs;
    te_lock(self);
    te_clear_plans(self);
    PyThread_release_lock(self->lock);
    Py_RETURN_NONE;
}

static PyObject *te_get_num_parameters(TextEncoderObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLongLong((long long)avq_text_encoder_num_params(self->model));
}

static PyObject *te_get_precision(TextEncoderObject *self, void *closure) {
    (void)closure;
    return PyUnicode_FromString(avq_text_encoder_precision(self->model) == AVQ_BF16 ? "bf16" : "fp32");
}

static PyObject *te_get_memory_bytes(TextEncoderObject *self, void *closure) {
    (void)closure;
    size_t total = 0;
    te_lock(self);
    for (size_t i = 0; i < self->nplans; i++) total += avq_text_encoder_plan_bytes(self->plans[i].plan);
    PyThread_release_lock(self->lock);
    return PyLong_FromSize_t(total);
}

static PyObject *te_get_plan_shapes(TextEncoderObject *self, void *closure) {
    (void)closure;
    te_lock(self);
    PyObject *list = PyList_New((Py_ssize_t)self->nplans);
    for (size_t i = 0; list && i < self->nplans; i++) {
        PyObject *t = Py_BuildValue("(LL)", (long long)self->plans[i].batch, (long long)self->plans[i].seq_len);
        if (!t) Py_CLEAR(list);
        else PyList_SET_ITEM(list, (Py_ssize_t)i, t);
    }
    PyThread_release_lock(self->lock);
    return list;
}

static PyObject *te_get_config(TextEncoderObject *self, void *closure) {
    (void)closure;
    const avq_text_encoder_config *c = avq_text_encoder_get_config(self->model);
    return Py_BuildValue("{s:i,s:i,s:i,s:i,s:i,s:i,s:d}", "vocab_size", c->vocab_size, "width", c->width, "layers",
                         c->layers, "heads", c->heads, "mlp", c->mlp, "max_positions", c->max_positions, "eps",
                         (double)c->eps);
}

static PyMethodDef te_methods[] = {
    {"run", (PyCFunction)te_run, METH_O,
     "run(ids) -> float32 [B, L, width]: the final-layer-normed last hidden state for integer ids [B, L]."},
    {"clear_plans", (PyCFunction)te_clear, METH_NOARGS, "Free every cached plan (they are rebuilt on demand)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef te_getset[] = {
    {"num_parameters", (getter)te_get_num_parameters, NULL, "Parameters held (embeddings included).", NULL},
    {"precision", (getter)te_get_precision, NULL, "Activation precision: 'fp32' or 'bf16'.", NULL},
    {"memory_bytes", (getter)te_get_memory_bytes, NULL, "Activation arena + scratchpad bytes of all cached plans.",
     NULL},
    {"plan_shapes", (getter)te_get_plan_shapes, NULL, "(batch, tokens) of each cached plan.", NULL},
    {"config", (getter)te_get_config, NULL, "The hyper-parameters as a dict.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot te_slots[] = {
    {Py_tp_new, te_new},
    {Py_tp_dealloc, te_dealloc},
    {Py_tp_methods, te_methods},
    {Py_tp_getset, te_getset},
    {Py_tp_doc, "CLIP text transformer on a dict of checkpoint arrays (private: use asymvq.TextEncoder)."},
    {0, NULL},
};

static PyType_Spec te_spec = {
    "asymvq._core.TextEncoder", sizeof(TextEncoderObject), 0, Py_TPFLAGS_DEFAULT, te_slots,
};

int avq_py_add_text_encoder(PyObject *m) {
    PyObject *type = PyType_FromSpec(&te_spec);
    if (!type) return -1;
    if (PyModule_AddObject(m, "TextEncoder", type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}
