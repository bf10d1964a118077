/* asymvq._core.UNet: the C UNet over a dict of weights (private; the public
 * class is asymvq.UNet).
 *
 *   UNet(config: dict, weights: dict, precision="fp32")
 *   unet(x f32 [B, C, h, w], t f32 [B], context f32 [B, L, D]) -> eps f32 [B, out, h, w]
 *
 * The C model copies its weights while it is built (the dict is not kept) and
 * caches one plan per input shape (the most recent MAX_PLANS), so
 * repeated calls at one shape only run. The GIL is released around compute.
 *
 * For the sampler's C loop (csrc/python/sampler_binding.c):
 *   unet.capsule                    PyCapsule "asymvq.unet" holding the avq_unet*,
 *                                   valid while this object lives;
 *   unet.plan_capsule(b, h, w, l=77) PyCapsule "asymvq.plan" holding the cached
 *                                   avq_plan* for that shape. The capsule pins the
 *                                   plan (and keeps this object alive): until it is
 *                                   released the plan is neither evicted nor freed
 *                                   by clear_plans(), and calling this object at
 *                                   that shape raises instead of sharing the plan. */
#include "common.h"
#include "models/unet.h"

#define MAX_PLANS 4
#define CAPSULE_NAME "asymvq.unet"
#define PLAN_CAPSULE_NAME "asymvq.plan"
#define CONTEXT_LENGTH 77

typedef struct cached_plan {
    int64_t b, h, w, l;
    avq_plan *plan; /* owned */
    unsigned long long last_use;
    int pins; /* live plan capsules: the plan may be running without the GIL */
} cached_plan;

typedef struct {
    PyObject_HEAD
    avq_unet *unet;   /* owned */
    cached_plan plans[MAX_PLANS];
    unsigned long long clock;
    int busy; /* a call is running with the GIL released */
} UNetObject;

static int config_int(PyObject *cfg, const char *key, int *out, int required, int dflt) {
    PyObject *v = PyDict_GetItemString(cfg, key); /* borrowed */
    if (!v) {
        if (required) {
            PyErr_Format(PyExc_ValueError, "UNet config is missing %s", key);
            return -1;
        }
        *out = dflt;
        return 0;
    }
    long n = PyLong_AsLong(v);
    if (n == -1 && PyErr_Occurred()) {
        PyErr_Format(PyExc_TypeError, "UNet config %s must be an int", key);
        return -1;
    }
    if (n < INT32_MIN || n > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "UNet config %s is out of range: %ld", key, n);
        return -1;
    }
    *out = (int)n;
    return 0;
}

static int config_list(PyObject *cfg, const char *key, int *out, int *count) {
    PyObject *v = PyDict_GetItemString(cfg, key);
    if (!v) {
        PyErr_Format(PyExc_ValueError, "UNet config is missing %s", key);
        return -1;
    }
    PyObject *seq = PySequence_Fast(v, "UNet config list must be a sequence of ints");
    if (!seq) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > AVQ_UNET_MAX_LEVELS) {
        PyErr_Format(PyExc_ValueError, "UNet config %s has %zd entries, at most %d are supported", key, n,
                     AVQ_UNET_MAX_LEVELS);
        Py_DECREF(seq);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long x = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if ((x == -1 && PyErr_Occurred()) || x < INT32_MIN || x > INT32_MAX) {
            if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "UNet config %s[%zd] is out of range", key, i);
            Py_DECREF(seq);
            return -1;
        }
        out[i] = (int)x;
    }
    *count = (int)n;
    Py_DECREF(seq);
    return 0;
}

static int parse_config(PyObject *cfg, avq_unet_config *c) {
    memset(c, 0, sizeof *c);
    if (!PyDict_Check(cfg)) {
        PyErr_SetString(PyExc_TypeError, "UNet config must be a dict");
        return -1;
    }
    if (config_int(cfg, "in_channels", &c->in_channels, 1, 0) < 0 ||
        config_int(cfg, "out_channels", &c->out_channels, 1, 0) < 0 ||
        config_int(cfg, "model_channels", &c->model_channels, 1, 0) < 0 ||
        config_list(cfg, "channel_mult", c->channel_mult, &c->num_levels) < 0 ||
        config_int(cfg, "num_res_blocks", &c->num_res_blocks, 1, 0) < 0 ||
        config_list(cfg, "attention_resolutions", c->attention_resolutions, &c->num_attention_resolutions) < 0 ||
        config_int(cfg, "num_heads", &c->num_heads, 0, -1) < 0 ||
        config_int(cfg, "num_head_channels", &c->num_head_channels, 0, -1) < 0 ||
        config_int(cfg, "transformer_depth", &c->transformer_depth, 0, 1) < 0 ||
        config_int(cfg, "context_dim", &c->context_dim, 1, 0) < 0)
        return -1;
    return 0;
}

static PyObject *unet_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"config", "weights", "precision", NULL};
    PyObject *cfg, *weights, *prec = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!|O:UNet", kwlist, &cfg, &PyDict_Type, &weights, &prec))
        return NULL;
    avq_unet_config c;
    avq_dtype dt;
    if (parse_config(cfg, &c) < 0 || avq_py_precision(prec, &dt) < 0) return NULL;
    UNetObject *self = (UNetObject *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    avq_weight_source src;
    avq_py_dict_source(&src, weights);
    avq_status st = avq_unet_create(&c, dt, &src, &self->unet); /* reads the dict: keep the GIL */
    if (st != AVQ_OK) {
        Py_DECREF(self);
        return avq_py_raise(st);
    }
    return (PyObject *)self;
}

/* Frees the unpinned plans (all of them at dealloc: no capsule is left then). */
static void clear_plans(UNetObject *self) {
    for (int i = 0; i < MAX_PLANS; i++) {
        if (self->plans[i].pins) continue;
        avq_plan_destroy(self->plans[i].plan);
        memset(&self->plans[i], 0, sizeof self->plans[i]);
    }
}

static void unet_dealloc(UNetObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    clear_plans(self);
    avq_unet_destroy(self->unet);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* The cached slot for a shape, or a new plan replacing the least recently
 * used unpinned one. NULL with an exception set. */
static cached_plan *plan_for(UNetObject *self, int64_t b, int64_t h, int64_t w, int64_t l) {
    cached_plan *slot = NULL;
    for (int i = 0; i < MAX_PLANS; i++) {
        cached_plan *c = &self->plans[i];
        if (c->plan && c->b == b && c->h == h && c->w == w && c->l == l) {
            c->last_use = ++self->clock;
            return c;
        }
        if (c->pins) continue;
        if (!slot || !c->plan || (slot->plan && c->last_use < slot->last_use)) slot = c;
    }
    if (!slot) {
        PyErr_SetString(PyExc_RuntimeError, "every cached UNet plan is in use by a running sampler");
        return NULL;
    }
    avq_plan_destroy(slot->plan);
    memset(slot, 0, sizeof *slot);
    avq_status st = avq_plan_create(&slot->plan);
    if (st != AVQ_OK) {
        avq_py_raise(st);
        return NULL;
    }
    slot->b = b;
    slot->h = h;
    slot->w = w;
    slot->l = l;
    slot->last_use = ++self->clock;
    return slot;
}

static PyObject *unet_call(UNetObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "t", "context", NULL};
    PyObject *ox, *ot, *oc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO:UNet", kwlist, &ox, &ot, &oc)) return NULL;
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "this UNet is already running in another thread");
        return NULL;
    }
    PyArrayObject *x = NULL, *t = NULL, *c = NULL, *eps = NULL;
    PyObject *ret = NULL;
    if (!(x = avq_py_f32(ox, "x", 4, 4)) || !(t = avq_py_f32(ot, "t", 1, 1)) || !(c = avq_py_f32(oc, "context", 3, 3)))
        goto done;
    npy_intp od[4] = {PyArray_DIM(x, 0), avq_unet_out_channels(self->unet), PyArray_DIM(x, 2), PyArray_DIM(x, 3)};
    if (!(eps = (PyArrayObject *)PyArray_SimpleNew(4, od, NPY_FLOAT32))) goto done;
    avq_tensor tx = avq_py_tensor(x), tt = avq_py_tensor(t), tc = avq_py_tensor(c), te = avq_py_tensor(eps);
    cached_plan *slot = plan_for(self, tx.dims[0], tx.dims[2], tx.dims[3], tc.dims[1]);
    if (!slot) goto done;
    if (slot->pins) {
        PyErr_SetString(PyExc_RuntimeError, "the UNet's plan for this input shape is in use by a running sampler");
        goto done;
    }
    avq_plan *plan = slot->plan;
    avq_status st;
    if (avq_py_interrupt_begin() < 0) goto done;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    avq_plan_set_thread_abort_flag(avq_py_interrupt_flag());
    st = avq_unet_run(self->unet, plan, &tx, &tt, &tc, &te);
    avq_plan_set_thread_abort_flag(NULL);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    avq_py_interrupt_end();
    if (st != AVQ_OK) {
        avq_py_raise_run(st);
        goto done;
    }
    ret = (PyObject *)eps;
    eps = NULL;
done:
    Py_XDECREF(x);
    Py_XDECREF(t);
    Py_XDECREF(c);
    Py_XDECREF(eps);
    return ret;
}

static PyObject *unet_clear_plans(UNetObject *self, PyObject *noargs) {
    (void)noargs;
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "this UNet is running in another thread");
        return NULL;
    }
    clear_plans(self); /* pinned plans stay */
    Py_RETURN_NONE;
}

typedef struct plan_pin {
    UNetObject *owner; /* strong reference */
    cached_plan *slot; /* inside owner; a pinned slot is never reused */
} plan_pin;

static void plan_capsule_free(PyObject *cap) {
    plan_pin *pin = PyCapsule_GetContext(cap);
    if (!pin) return;
    pin->slot->pins--;
    Py_DECREF(pin->owner);
    PyMem_Free(pin);
}

static PyObject *unet_plan_capsule(UNetObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"batch", "height", "width", "context_length", NULL};
    long long b, h, w, l = CONTEXT_LENGTH;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "LLL|L:plan_capsule", kwlist, &b, &h, &w, &l)) return NULL;
    if (b < 1 || h < 1 || w < 1 || l < 1) {
        PyErr_Format(PyExc_ValueError, "plan_capsule: batch, height, width and context_length must be >= 1, got %lld, "
                     "%lld, %lld, %lld", b, h, w, l);
        return NULL;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "this UNet is running in another thread");
        return NULL;
    }
    cached_plan *slot = plan_for(self, b, h, w, l);
    if (!slot) return NULL;
    if (slot->pins) {
        PyErr_SetString(PyExc_RuntimeError, "the UNet's plan for this input shape is in use by a running sampler");
        return NULL;
    }
    plan_pin *pin = PyMem_Malloc(sizeof *pin);
    if (!pin) return PyErr_NoMemory();
    PyObject *cap = PyCapsule_New(slot->plan, PLAN_CAPSULE_NAME, plan_capsule_free);
    if (!cap || PyCapsule_SetContext(cap, pin) < 0) {
        PyMem_Free(pin);
        Py_XDECREF(cap);
        return NULL;
    }
    Py_INCREF(self);
    pin->owner = self;
    pin->slot = slot;
    slot->pins++;
    return cap;
}

static PyObject *unet_plans(UNetObject *self, PyObject *noargs) {
    (void)noargs;
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    for (int i = 0; i < MAX_PLANS; i++) {
        cached_plan *c = &self->plans[i];
        if (!c->plan || !avq_plan_built(c->plan)) continue;
        PyObject *d = Py_BuildValue("{s:L,s:L,s:L,s:L,s:n,s:n,s:n}", "batch", (long long)c->b, "height",
                                    (long long)c->h, "width", (long long)c->w, "context_length", (long long)c->l,
                                    "arena_bytes", (Py_ssize_t)avq_plan_arena_bytes(c->plan), "scratch_bytes",
                                    (Py_ssize_t)avq_plan_scratch_bytes(c->plan), "steps",
                                    (Py_ssize_t)avq_plan_num_steps(c->plan));
        if (!d || PyList_Append(out, d) < 0) {
            Py_XDECREF(d);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(d);
    }
    return out;
}

static PyObject *get_in_channels(UNetObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLong(avq_unet_in_channels(self->unet));
}
static PyObject *get_out_channels(UNetObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLong(avq_unet_out_channels(self->unet));
}
static PyObject *get_context_dim(UNetObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLong(avq_unet_context_dim(self->unet));
}
static PyObject *get_size_multiple(UNetObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLong(avq_unet_size_multiple(self->unet));
}
static PyObject *get_precision(UNetObject *self, void *closure) {
    (void)closure;
    return PyUnicode_FromString(avq_unet_precision(self->unet) == AVQ_F32 ? "fp32" : "bf16");
}
static PyObject *get_num_params(UNetObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLongLong((long long)avq_unet_num_params(self->unet));
}
static PyObject *get_capsule(UNetObject *self, void *closure) {
    (void)closure;
    return PyCapsule_New(self->unet, CAPSULE_NAME, NULL);
}

static PyMethodDef unet_methods[] = {
    {"clear_plans", (PyCFunction)unet_clear_plans, METH_NOARGS, "Free every cached plan (activation memory)."},
    {"plans", (PyCFunction)unet_plans, METH_NOARGS, "The cached plans: shape, arena and scratchpad bytes, steps."},
    {"plan_capsule", (PyCFunction)(void (*)(void))unet_plan_capsule, METH_VARARGS | METH_KEYWORDS,
     "plan_capsule(batch, height, width, context_length=77) -> PyCapsule \"" PLAN_CAPSULE_NAME "\" pinning the plan."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef unet_getset[] = {
    {"in_channels", (getter)get_in_channels, NULL, "Input channels (4 txt2img, 9 inpainting).", NULL},
    {"out_channels", (getter)get_out_channels, NULL, "Output channels (4).", NULL},
    {"context_dim", (getter)get_context_dim, NULL, "Width of the cross-attention context (768).", NULL},
    {"size_multiple", (getter)get_size_multiple, NULL, "Latent sizes must be multiples of this (8).", NULL},
    {"precision", (getter)get_precision, NULL, "\"fp32\" or \"bf16\" (activations and packed weights).", NULL},
    {"num_params", (getter)get_num_params, NULL, "Number of parameters.", NULL},
    {"capsule", (getter)get_capsule, NULL, "PyCapsule \"" CAPSULE_NAME "\" holding the avq_unet pointer.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot unet_slots[] = {
    {Py_tp_new, unet_new},
    {Py_tp_dealloc, unet_dealloc},
    {Py_tp_call, unet_call},
    {Py_tp_methods, unet_methods},
    {Py_tp_getset, unet_getset},
    {Py_tp_doc, "UNet(config: dict, weights: dict, precision='fp32'): the SD v1 UNet in C (private)."},
    {0, NULL},
};

static PyType_Spec unet_spec = {
    "asymvq._core.UNet", sizeof(UNetObject), 0, Py_TPFLAGS_DEFAULT, unet_slots,
};

int avq_py_add_unet(PyObject *m) {
    PyObject *type = PyType_FromSpec(&unet_spec);
    if (!type) return -1;
    if (PyModule_AddObject(m, "UNet", type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}
