/* asymvq._core.UNet: the C UNet over a dict of weights (private; the public
 * class is asymvq.UNet).
 *
 *   UNet(config: dict, weights: dict, precision="fp32")
 *   unet(x f32 [B, C, h, w], t f32 [B], context f32 [B, L, D]) -> eps f32 [B, out, h, w]
 *
 * The C model copies its weights while it is built (the dict is not kept).
 * Plans and concurrency follow plan_cache.h: one plan per (batch, h, w,
 * context length), calls serialised behind the model's lock with the GIL
 * released. The sampler's C loop reaches the model through unet_binding.h;
 * plan_capsule(b, h, w, l=77) pins the cached plan for a loop. */
#include "unet_binding.h"

#include "bindings.h"
#include "common.h"
#include "config.h"
#include "model.h"

#define CONTEXT_LENGTH 77

static PyTypeObject *unet_type = NULL; /* a reference kept for the process, for the sampler's type check */

static avq_unet *unet_of(avq_py_model *self) { return self->model; }

static avq_status plan_create(const void *model, const avq_py_plan_key *k, void **out) {
    return avq_unet_plan_create(model, k->dims[0], k->dims[1], k->dims[2], k->dims[3], (avq_unet_plan **)out);
}

AVQ_PY_MODEL_FUNCTIONS(unet)

static const avq_py_model_kind unet_kind = {
    {"UNet", NULL, {"batch", "height", "width", "context_length"}, plan_create, plan_destroy, plan_core},
    num_params,
    precision,
    destroy,
};

/* ints (required, or their default when absent) and the two level lists */
#define F(key, req, dflt) {#key, AVQ_PY_INT, offsetof(avq_unet_config, key), AVQ_PY_NO_COUNT, req, dflt, 0, 0}
#define FL(key, count) \
    {#key, AVQ_PY_INTS, offsetof(avq_unet_config, key), offsetof(avq_unet_config, count), 1, 0, 0, AVQ_UNET_MAX_LEVELS}
static const avq_py_field unet_fields[] = {
    F(in_channels, 1, 0),         F(out_channels, 1, 0),       F(model_channels, 1, 0),
    FL(channel_mult, num_levels), F(num_res_blocks, 1, 0),     FL(attention_resolutions, num_attention_resolutions),
    F(num_heads, 0, -1),          F(num_head_channels, 0, -1), F(transformer_depth, 0, 1),
    F(context_dim, 1, 0),
};
#undef F
#undef FL

int avq_py_unet_config(PyObject *cfg, avq_unet_config *out) {
    memset(out, 0, sizeof *out);
    return avq_py_parse_config(cfg, "UNet config", unet_fields, sizeof unet_fields / sizeof unet_fields[0], out);
}

static PyObject *unet_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"config", "weights", "precision", NULL};
    PyObject *cfg, *weights, *prec = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!|O:UNet", kwlist, &cfg, &PyDict_Type, &weights, &prec))
        return NULL;
    avq_unet_config c;
    avq_dtype dt;
    if (avq_py_unet_config(cfg, &c) < 0 || avq_py_precision(prec, &dt) < 0) return NULL;
    avq_weight_source src;
    avq_py_dict_source(&src, weights);
    avq_unet *unet;
    avq_status st = avq_unet_create(&c, dt, &src, &unet); /* reads the dict: keep the GIL */
    return st == AVQ_OK ? avq_py_model_new(type, &unet_kind, unet) : avq_py_raise(st);
}

typedef struct run_args {
    avq_unet *unet;
    avq_tensor x, t, context, eps;
} run_args;

static avq_status run(void *plan, void *ctx) {
    run_args *a = ctx;
    return avq_unet_run(a->unet, plan, &a->x, &a->t, &a->context, &a->eps);
}

static PyObject *unet_call(avq_py_model *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "t", "context", NULL};
    PyObject *ox, *ot, *oc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO:UNet", kwlist, &ox, &ot, &oc)) return NULL;
    PyArrayObject *x = NULL, *t = NULL, *c = NULL;
    PyObject *eps = NULL;
    if ((x = avq_py_f32(ox, "x", 4, 4)) && (t = avq_py_f32(ot, "t", 1, 1)) && (c = avq_py_f32(oc, "context", 3, 3))) {
        npy_intp od[4] = {PyArray_DIM(x, 0), avq_unet_out_channels(unet_of(self)), PyArray_DIM(x, 2),
                          PyArray_DIM(x, 3)};
        eps = PyArray_SimpleNew(4, od, NPY_FLOAT32);
    }
    if (eps) {
        run_args a = {unet_of(self), avq_py_tensor(x), avq_py_tensor(t), avq_py_tensor(c),
                      avq_py_tensor((PyArrayObject *)eps)};
        avq_py_plan_key key = {0, {a.x.dims[0], a.x.dims[2], a.x.dims[3], a.context.dims[1]}};
        eps = avq_py_plan_cache_call(&self->plans, &key, run, &a, eps);
    }
    Py_XDECREF(x);
    Py_XDECREF(t);
    Py_XDECREF(c);
    return eps;
}

static PyObject *unet_check_latent(avq_py_model *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", NULL};
    PyObject *ox;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:check_latent", kwlist, &ox)) return NULL;
    PyArrayObject *x = avq_py_f32(ox, "x", 4, 4);
    if (!x) return NULL;
    const int64_t dims[4] = {PyArray_DIM(x, 0), PyArray_DIM(x, 1), PyArray_DIM(x, 2), PyArray_DIM(x, 3)};
    Py_DECREF(x);
    avq_status st = avq_unet_check_latent(unet_of(self), dims);
    if (st != AVQ_OK) return avq_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *unet_plan_capsule(avq_py_model *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"batch", "height", "width", "context_length", NULL};
    long long b, h, w, l = CONTEXT_LENGTH;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "LLL|L:plan_capsule", kwlist, &b, &h, &w, &l)) return NULL;
    avq_py_plan_key key = {0, {b, h, w, l}};
    return avq_py_plan_cache_pin(&self->plans, (PyObject *)self, &key, AVQ_PY_PLAN_CAPSULE);
}

/* ---- the sampler's access (unet_binding.h) ---------------------------------- */

/* The core UNet object of `obj` (borrowed), or NULL without an exception. */
static avq_py_model *core_of(PyObject *obj) {
    if (unet_type && PyObject_TypeCheck(obj, unet_type)) return (avq_py_model *)obj;
    PyObject *mod = PyImport_ImportModule("asymvq.unet");
    PyObject *cls = mod ? PyObject_GetAttrString(mod, "UNet") : NULL;
    int is_unet = cls && PyType_Check(cls) ? PyObject_TypeCheck(obj, (PyTypeObject *)cls) : 0;
    Py_XDECREF(cls);
    Py_XDECREF(mod);
    PyErr_Clear();
    if (!is_unet) return NULL;
    PyObject *core = PyObject_GetAttrString(obj, "_core"); /* asymvq.UNet's own attribute */
    avq_py_model *found = core && unet_type && PyObject_TypeCheck(core, unet_type) ? (avq_py_model *)core : NULL;
    Py_XDECREF(core); /* obj keeps it alive */
    PyErr_Clear();
    return found;
}

avq_unet *avq_py_unet_model(PyObject *obj) {
    avq_py_model *u = core_of(obj);
    return u ? unet_of(u) : NULL;
}

PyObject *avq_py_unet_pin_plan(PyObject *obj, int64_t batch, int64_t height, int64_t width, int64_t context_length,
                               avq_unet_plan **plan) {
    avq_py_model *u = core_of(obj);
    if (!u) return PyErr_Format(avq_py_exc(AVQ_ERR_DTYPE), "%s is not an asymvq UNet", Py_TYPE(obj)->tp_name);
    avq_py_plan_key key = {0, {batch, height, width, context_length}};
    PyObject *cap = avq_py_plan_cache_pin(&u->plans, (PyObject *)u, &key, AVQ_PY_PLAN_CAPSULE);
    *plan = cap ? PyCapsule_GetPointer(cap, AVQ_PY_PLAN_CAPSULE) : NULL;
    return cap;
}

/* ---- the type: the model protocol (model.h) and the above ------------------- */

static PyMethodDef unet_methods[] = {
    AVQ_PY_KW_METHOD("check_latent", unet_check_latent,
                     "check_latent(x): raises what a call would for this latent's shape, runs nothing."),
    AVQ_PY_KW_METHOD("plan_capsule", unet_plan_capsule,
                     "plan_capsule(batch, height, width, context_length=77) -> PyCapsule \"" AVQ_PY_PLAN_CAPSULE
                     "\" pinning the plan."),
    {NULL, NULL, 0, NULL},
};

static PyType_Slot unet_slots[] = {
    {Py_tp_call, unet_call},
    AVQ_PY_TYPE_SLOTS(unet_new, unet_methods,
                      "UNet(config: dict, weights: dict, precision='fp32'): the SD v1 UNet in C (private)."),
};

static PyType_Spec unet_spec = {"asymvq._core.UNet", sizeof(avq_py_model), 0, Py_TPFLAGS_DEFAULT, unet_slots};

int avq_py_add_unet(PyObject *m) { return avq_py_model_add_type(m, &unet_spec, &unet_type); }
