/* asymvq._core.Sampler and asymvq._core.randn (private; the public API is
 * asymvq.sampler).
 *
 *   Sampler(kind: "ddim" | "plms" | "dpmpp_2m" | "euler" | "euler_a", steps, eta, linear_start, linear_end,
 *           timesteps, karras=False)
 *   sampler.sample(unet, x_T, cond, uncond, scale, c_concat, noise, seed, callback, generator) -> x_0
 *   randn(seed, shape) -> float32 array == RandomState(seed).randn(*shape).astype(float32)
 *   Generator(kind: 0 numpy | 1 torch-cpu | 2 torch-cuda, seed, cuda_max_blocks=0)
 *   generator.randn(shape) -> float32 array
 *
 * A Generator is marked busy while a draw or a sampler loop uses it without the
 * GIL; a second use meanwhile (another thread) is a RuntimeError, not a race.
 *
 * The loop runs in C with the GIL released. The model is reached in one of two
 * ways:
 *
 *  - the fast path, an asymvq.UNet or asymvq._core.UNet (checked by type,
 *    unet_binding.h): the loop pins the UNet's cached plan for the model
 *    batch (2B with guidance) while it runs, so nothing else runs that plan
 *    meanwhile, and calls avq_unet_run without the GIL.
 *  - the slow path, any callable unet(x, t, context) -> eps (x float32
 *    [N, Cin, h, w], t int64 [N] (float32 when fractional: Euler "linspace"),
 *    context float32 [N, L, D]; eps convertible to
 *    float32 [N, C, h, w]), called with the GIL taken for each model call. Its
 *    optional int attributes in_channels / out_channels / context_dim are
 *    checked against the inputs like the C UNet's.
 *
 * After every step the loop takes the GIL briefly: PyErr_CheckSignals() (so
 * Ctrl-C stops within one step), then callback(step, timestep, x_copy); a
 * returned array replaces the latent. Any Python exception raised there (or by
 * a Python model) stops the loop and is re-raised unchanged once the GIL is
 * back; nothing is left half-done, so the sampler and the UNet stay usable. */
#include <math.h>
#include <stdint.h>

#include "bindings.h"
#include "common.h"
#include "models/unet.h"
#include "pytypes.h"
#include "sampling/rng.h"
#include "sampling/sampler.h"
#include "unet_binding.h"

/* ---- Python <-> loop glue --------------------------------------------------------- */

typedef struct py_run {
    /* the model: a C UNet and its plan, or a Python callable */
    avq_unet *unet;      /* borrowed from the UNet object */
    avq_unet_plan *plan; /* borrowed from the pinning capsule */
    PyObject *callable;  /* borrowed */
    PyObject *callback;  /* borrowed, may be NULL */
    /* the first Python exception raised inside the loop, re-raised afterwards
     * (type, value, traceback before Python 3.12; the exception alone from 3.12 on) */
    PyObject *exc[3];
} py_run;

/* Moves the pending Python exception into the run (keeps the first). */
static avq_status stash_exception(py_run *r) {
    if (r->exc[0]) {
        PyErr_Clear();
    } else {
#if PY_VERSION_HEX >= 0x030C0000
        r->exc[0] = PyErr_GetRaisedException();
#else
        PyErr_Fetch(&r->exc[0], &r->exc[1], &r->exc[2]);
#endif
    }
    return avq_error(AVQ_ERR_ABORTED, "a Python exception stopped the sampler");
}

/* Raises the stashed exception again (the run gives up its references). */
static void restore_exception(py_run *r) {
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(r->exc[0]);
#else
    PyErr_Restore(r->exc[0], r->exc[1], r->exc[2]);
#endif
    r->exc[0] = r->exc[1] = r->exc[2] = NULL;
}

static avq_status c_unet_eps(void *ud, const avq_tensor *x, const avq_tensor *t, const avq_tensor *ctx,
                             avq_tensor *eps) {
    py_run *r = ud;
    return avq_unet_run(r->unet, r->plan, x, t, ctx, eps);
}

static PyObject *copy_to_array(const avq_tensor *t, int type) {
    npy_intp d[AVQ_MAX_DIMS];
    for (int i = 0; i < t->ndim; i++) d[i] = (npy_intp)t->dims[i];
    PyArrayObject *a = (PyArrayObject *)PyArray_SimpleNew(t->ndim, d, type);
    if (!a) return NULL;
    const int64_t n = avq_tensor_numel(t);
    const float *src = t->data;
    if (type == NPY_FLOAT32) {
        memcpy(PyArray_DATA(a), src, sizeof(float) * (size_t)n);
    } else { /* NPY_INT64: the integer timesteps */
        int64_t *dst = PyArray_DATA(a);
        for (int64_t i = 0; i < n; i++) dst[i] = (int64_t)src[i];
    }
    return (PyObject *)a;
}

/* The timesteps for a Python model: int64 when integral (every kind but
 * Euler with "linspace" spacing), float32 otherwise, so none is truncated. */
static PyObject *timesteps_to_array(const avq_tensor *t) {
    const float *v = t->data;
    const int64_t n = avq_tensor_numel(t);
    for (int64_t i = 0; i < n; i++)
        if (v[i] != floorf(v[i])) return copy_to_array(t, NPY_FLOAT32);
    return copy_to_array(t, NPY_INT64);
}

/* Copies `obj` (anything convertible to float32 of t's shape) into t. -1 with an exception set. */
static int copy_from_array(PyObject *obj, avq_tensor *t, const char *what) {
    PyArrayObject *a = (PyArrayObject *)PyArray_FROM_OTF(
        obj, NPY_FLOAT32, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_FORCECAST);
    if (!a) return -1;
    int ok = PyArray_NDIM(a) == t->ndim;
    for (int i = 0; ok && i < t->ndim; i++) ok = PyArray_DIM(a, i) == t->dims[i];
    if (!ok) {
        char buf[96];
        PyObject *shape = PyObject_GetAttrString((PyObject *)a, "shape");
        PyErr_Format(PyExc_ValueError, "%s has shape %R, expected %s", what, shape ? shape : Py_None,
                     avq_tensor_str(t, buf, sizeof buf));
        Py_XDECREF(shape);
        Py_DECREF(a);
        return -1;
    }
    memcpy(t->data, PyArray_DATA(a), sizeof(float) * (size_t)avq_tensor_numel(t));
    Py_DECREF(a);
    return 0;
}

static avq_status py_unet_eps(void *ud, const avq_tensor *x, const avq_tensor *t, const avq_tensor *ctx,
                              avq_tensor *eps) {
    py_run *r = ud;
    avq_status st = AVQ_OK;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *ax = copy_to_array(x, NPY_FLOAT32), *at = timesteps_to_array(t), *ac = copy_to_array(ctx, NPY_FLOAT32);
    PyObject *out = NULL;
    if (ax && at && ac) out = PyObject_CallFunctionObjArgs(r->callable, ax, at, ac, NULL);
    if (!out || copy_from_array(out, eps, "the output of unet(x, t, context)") < 0) st = stash_exception(r);
    Py_XDECREF(out);
    Py_XDECREF(ax);
    Py_XDECREF(at);
    Py_XDECREF(ac);
    PyGILState_Release(g);
    return st;
}

static avq_status step_hook(void *ud, int step, int timestep, avq_tensor *x, int *modified) {
    py_run *r = ud;
    avq_status st = AVQ_OK;
    PyGILState_STATE g = PyGILState_Ensure();
    if (PyErr_CheckSignals() < 0) {
        st = stash_exception(r);
    } else if (r->callback) {
        PyObject *ax = copy_to_array(x, NPY_FLOAT32);
        PyObject *ret = ax ? PyObject_CallFunction(r->callback, "iiO", step, timestep, ax) : NULL;
        if (!ret) {
            st = stash_exception(r);
        } else if (ret != Py_None) {
            if (copy_from_array(ret, x, "the latent returned by the callback") < 0)
                st = stash_exception(r);
            else
                *modified = 1;
        }
        Py_XDECREF(ret);
        Py_XDECREF(ax);
    }
    PyGILState_Release(g);
    return st;
}

/* ---- argument helpers --------------------------------------------------------------- */

/* NULL for None; otherwise a float32 C-contiguous array of `ndim` dims (new reference). */
static int opt_array(PyObject *obj, const char *name, int ndim, PyArrayObject **out) {
    *out = NULL;
    if (!obj || obj == Py_None) return 0;
    *out = avq_py_f32(obj, name, ndim, ndim);
    return *out ? 0 : -1;
}

/* Reads an optional non-negative int attribute (0 when absent or None). */
static int int_attr(PyObject *obj, const char *name, int *out) {
    *out = 0;
    PyObject *v = PyObject_GetAttrString(obj, name);
    if (!v) {
        PyErr_Clear();
        return 0;
    }
    if (v != Py_None) {
        long n = PyLong_AsLong(v);
        if (n == -1 && PyErr_Occurred()) {
            Py_DECREF(v);
            PyErr_Format(PyExc_TypeError, "unet.%s must be an int", name);
            return -1;
        }
        *out = n > 0 && n < INT32_MAX ? (int)n : 0;
    }
    Py_DECREF(v);
    return 0;
}

/* ---- the Sampler type ------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    avq_sampler *s; /* owned */
    int steps;      /* as requested */
} SamplerObject;

/* The kinds by their Python names, in avq_sampler_kind order. */
static const char *const sampler_kind_names[] = {"ddim", "plms", "dpmpp_2m", "euler", "euler_a"};
#define N_SAMPLER_KINDS ((int)(sizeof sampler_kind_names / sizeof sampler_kind_names[0]))
/* diffusers' timestep_spacing names, in avq_spacing order. */
static const char *const spacing_names[] = {"linspace", "leading", "trailing"};
#define N_SPACINGS ((int)(sizeof spacing_names / sizeof spacing_names[0]))

static PyObject *sampler_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"kind",   "steps",   "eta", "linear_start", "linear_end", "timesteps",
                             "karras", "spacing", NULL};
    const char *kind_s, *spacing_s = "linspace";
    int steps, timesteps = 1000, karras = 0;
    double eta, ls = 0.00085, le = 0.012;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "sid|ddips:Sampler", kwlist, &kind_s, &steps, &eta, &ls, &le,
                                     &timesteps, &karras, &spacing_s))
        return NULL;
    int spacing = -1;
    for (int i = 0; i < N_SPACINGS; i++)
        if (strcmp(spacing_s, spacing_names[i]) == 0) spacing = i;
    if (spacing < 0)
        return PyErr_Format(PyExc_ValueError, "spacing must be \"linspace\", \"leading\" or \"trailing\", got \"%s\"",
                            spacing_s);
    int kind = -1;
    for (int i = 0; i < N_SAMPLER_KINDS; i++)
        if (strcmp(kind_s, sampler_kind_names[i]) == 0) kind = i;
    if (kind < 0)
        return PyErr_Format(PyExc_ValueError,
                            "kind must be one of \"ddim\", \"plms\", \"dpmpp_2m\", \"euler\", \"euler_a\", got \"%s\"",
                            kind_s);
    avq_schedule_config cfg = {ls, le, timesteps};
    avq_sampler *s;
    avq_status st = avq_sampler_create_ex((avq_sampler_kind)kind, steps, eta, karras, (avq_spacing)spacing, &cfg, &s);
    if (st != AVQ_OK) return avq_py_raise(st);
    SamplerObject *self = (SamplerObject *)type->tp_alloc(type, 0);
    if (!self) {
        avq_sampler_destroy(s);
        return NULL;
    }
    self->s = s;
    self->steps = steps;
    return (PyObject *)self;
}

static void sampler_dealloc(SamplerObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    avq_sampler_destroy(self->s);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* Finds the model: fills r (C unet or Python callable) and the denoiser.
 * -1 with an exception set. The C path's plan is requested later, once the
 * inputs are checked and the model batch is known (sampler_sample). */
static int resolve_model(PyObject *unet, py_run *r, avq_denoiser *d) {
    memset(d, 0, sizeof *d);
    d->user_data = r;
    if ((r->unet = avq_py_unet_model(unet))) {
        d->eps = c_unet_eps;
        d->in_channels = avq_unet_in_channels(r->unet);
        d->out_channels = avq_unet_out_channels(r->unet);
        d->context_dim = avq_unet_context_dim(r->unet);
        return 0;
    }
    if (!PyCallable_Check(unet)) {
        PyErr_Format(PyExc_TypeError, "unet must be an asymvq.UNet or a callable unet(x, t, context) -> eps, got %s",
                     Py_TYPE(unet)->tp_name);
        return -1;
    }
    r->callable = unet;
    d->eps = py_unet_eps;
    if (int_attr(unet, "in_channels", &d->in_channels) < 0 || int_attr(unet, "out_channels", &d->out_channels) < 0 ||
        int_attr(unet, "context_dim", &d->context_dim) < 0)
        return -1;
    return 0;
}

/* ---- Generator ------------------------------------------------------------------------- */

typedef struct GeneratorObject {
    PyObject_HEAD
    avq_generator g;
    int busy; /* 1 while a draw runs without the GIL */
} GeneratorObject;

static PyTypeObject *generator_type = NULL; /* owned by the module (a reference kept here) */

static PyObject *generator_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"kind", "seed", "cuda_max_blocks", NULL};
    int kind;
    PyObject *oseed;
    unsigned int max_blocks = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iO|I:Generator", kwlist, &kind, &oseed, &max_blocks)) return NULL;
    if (!avq_rng_kind_supported(kind)) return PyErr_Format(PyExc_ValueError, "unsupported generator kind %d", kind);
    unsigned long long sv = PyLong_AsUnsignedLongLong(oseed);
    const unsigned long long max = kind == AVQ_RNG_NUMPY ? 0xffffffffULL : 0xffffffffffffffffULL;
    if (PyErr_Occurred() || sv > max) {
        PyErr_Clear();
        return PyErr_Format(PyExc_ValueError, "seed must be an integer between 0 and %llu for this generator, got %R",
                            max, oseed);
    }
    GeneratorObject *self = (GeneratorObject *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    avq_generator_seed(&self->g, (avq_rng_kind)kind, (uint64_t)sv);
    self->g.cuda_max_blocks = max_blocks;
    return (PyObject *)self;
}

static void generator_dealloc(GeneratorObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int generator_acquire(GeneratorObject *g) {
    if (g->busy) {
        PyErr_SetString(PyExc_RuntimeError, "this Generator is in use by another thread: use one generator per thread");
        return -1;
    }
    g->busy = 1;
    return 0;
}

static PyObject *generator_randn(GeneratorObject *self, PyObject *oshape) {
    PyArrayObject *a = avq_py_new_f32(oshape);
    if (!a) return NULL;
    if (generator_acquire(self) < 0) {
        Py_DECREF(a);
        return NULL;
    }
    float *p = PyArray_DATA(a);
    const npy_intp n = PyArray_SIZE(a);
    Py_BEGIN_ALLOW_THREADS avq_generator_randn(&self->g, p, (int64_t)n);
    Py_END_ALLOW_THREADS self->busy = 0;
    return (PyObject *)a;
}

static PyObject *generator_get_kind(GeneratorObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLong((long)self->g.kind);
}
static PyObject *generator_get_seed(GeneratorObject *self, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->g.seed);
}

static PyMethodDef generator_methods[] = {
    {"randn", (PyCFunction)generator_randn, METH_O, "randn(shape) -> float32 array; the state advances."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef generator_getset[] = {
    {"kind", (getter)generator_get_kind, NULL, "0 numpy, 1 torch-cpu, 2 torch-cuda.", NULL},
    {"seed", (getter)generator_get_seed, NULL, "The seed it was created with.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot generator_slots[] = {
    {Py_tp_dealloc, generator_dealloc},
    {Py_tp_getset, generator_getset},
    AVQ_PY_TYPE_SLOTS(generator_new, generator_methods, "Generator(kind, seed) (private; see asymvq.rng.Generator)."),
};

static PyType_Spec generator_spec = {
    "asymvq._core.Generator", sizeof(GeneratorObject), 0, Py_TPFLAGS_DEFAULT, generator_slots,
};

static PyObject *sampler_sample(SamplerObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"unet",  "x_T",  "cond",     "uncond",    "scale", "c_concat",
                             "noise", "seed", "callback", "generator", NULL};
    PyObject *unet, *ox, *oc, *ou = Py_None, *occ = Py_None, *on = Py_None, *oseed = Py_None, *ocb = Py_None;
    PyObject *ogen = Py_None;
    GeneratorObject *gen = NULL; /* acquired (busy) while set */
    double scale = 1.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|OdOOOOO:sample", kwlist, &unet, &ox, &oc, &ou, &scale, &occ, &on,
                                     &oseed, &ocb, &ogen))
        return NULL;
    py_run r;
    memset(&r, 0, sizeof r);
    avq_denoiser model;
    PyArrayObject *x = NULL, *c = NULL, *u = NULL, *cc = NULL, *noise = NULL, *out = NULL;
    PyObject *plan_cap = NULL, *ret = NULL;
    avq_tensor tx, tc, tu, tcc, tn, tout;
    avq_sample_inputs in;
    memset(&in, 0, sizeof in);

    if (resolve_model(unet, &r, &model) < 0) goto done;
    if (!(x = avq_py_f32(ox, "x_T", 4, 4)) || !(c = avq_py_f32(oc, "cond", 3, 3)) ||
        opt_array(ou, "uncond", 3, &u) < 0 || opt_array(occ, "c_concat", 4, &cc) < 0 ||
        opt_array(on, "noise", 5, &noise) < 0)
        goto done;
    if (oseed != Py_None) {
        unsigned long long sv = PyLong_AsUnsignedLongLong(oseed);
        if (PyErr_Occurred() || sv > 0xffffffffULL) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "seed must be an integer between 0 and 2**32 - 1, got %R", oseed);
            goto done;
        }
        in.use_seed = 1;
        in.seed = (uint32_t)sv;
    }
    if (ogen != Py_None) {
        if (!generator_type || !PyObject_TypeCheck(ogen, generator_type)) {
            PyErr_Format(PyExc_TypeError, "generator must be an asymvq._core.Generator or None, got %s",
                         Py_TYPE(ogen)->tp_name);
            goto done;
        }
        if (generator_acquire((GeneratorObject *)ogen) < 0) goto done;
        gen = (GeneratorObject *)ogen;
        in.generator = &gen->g;
    }
    if (ocb != Py_None) {
        if (!PyCallable_Check(ocb)) {
            PyErr_Format(PyExc_TypeError, "callback must be callable(step, timestep, x) or None, got %s",
                         Py_TYPE(ocb)->tp_name);
            goto done;
        }
        r.callback = ocb;
    }
    tx = avq_py_tensor(x);
    tc = avq_py_tensor(c);
    in.x_T = &tx;
    in.cond = &tc;
    in.scale = (float)scale;
    if (u) tu = avq_py_tensor(u), in.uncond = &tu;
    if (cc) tcc = avq_py_tensor(cc), in.c_concat = &tcc;
    if (noise) tn = avq_py_tensor(noise), in.noise = &tn;
    in.on_step = step_hook;
    in.on_step_data = &r;

    if (!(out = (PyArrayObject *)PyArray_SimpleNew(4, PyArray_DIMS(x), NPY_FLOAT32))) goto done;
    tout = avq_py_tensor(out);
    avq_status st = avq_sampler_check(self->s, &model, &in, &tout);
    if (st != AVQ_OK) {
        avq_py_raise(st);
        goto done;
    }
    if (r.unet) {
        const long long batch = avq_sample_guided(&in) ? 2 * tx.dims[0] : tx.dims[0];
        plan_cap = avq_py_unet_pin_plan(unet, batch, tx.dims[2], tx.dims[3], tc.dims[1], &r.plan);
        if (!plan_cap) goto done;
    }

    Py_BEGIN_ALLOW_THREADS st = avq_sampler_run(self->s, &model, &in, &tout);
    Py_END_ALLOW_THREADS

        if (r.exc[0]) {
        restore_exception(&r);
        goto done;
    }
    if (st != AVQ_OK) {
        avq_py_raise(st);
        goto done;
    }
    ret = (PyObject *)out;
    out = NULL;
done:
    if (gen) gen->busy = 0;
    for (int i = 0; i < 3; i++) Py_XDECREF(r.exc[i]);
    Py_XDECREF(plan_cap);
    Py_XDECREF(out);
    Py_XDECREF(x);
    Py_XDECREF(c);
    Py_XDECREF(u);
    Py_XDECREF(cc);
    Py_XDECREF(noise);
    return ret;
}

static PyObject *int_array(const int *v, int n) {
    npy_intp d = n;
    PyArrayObject *a = (PyArrayObject *)PyArray_SimpleNew(1, &d, NPY_INT64);
    if (!a) return NULL;
    int64_t *p = PyArray_DATA(a);
    for (int i = 0; i < n; i++) p[i] = v[i];
    return (PyObject *)a;
}

static PyObject *float_array(const float *v, int n) {
    npy_intp d = n;
    PyArrayObject *a = (PyArrayObject *)PyArray_SimpleNew(1, &d, NPY_FLOAT32);
    if (!a) return NULL;
    memcpy(PyArray_DATA(a), v, sizeof(float) * (size_t)n);
    return (PyObject *)a;
}

static PyObject *get_kind(SamplerObject *self, void *closure) {
    (void)closure;
    return PyUnicode_FromString(sampler_kind_names[avq_sampler_get_kind(self->s)]);
}
static PyObject *get_karras(SamplerObject *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(avq_sampler_karras(self->s));
}
static PyObject *get_init_noise_sigma(SamplerObject *self, void *closure) {
    (void)closure;
    return PyFloat_FromDouble((double)avq_sampler_init_noise_sigma(self->s));
}
static PyObject *get_noise_levels(SamplerObject *self, void *closure) {
    (void)closure;
    const float *lev = avq_sampler_noise_levels(self->s);
    if (!lev) Py_RETURN_NONE;
    return float_array(lev, avq_sampler_num_steps(self->s) + 1);
}
static PyObject *get_spacing(SamplerObject *self, void *closure) {
    (void)closure;
    return PyUnicode_FromString(spacing_names[avq_sampler_spacing(self->s)]);
}
static PyObject *get_model_timesteps(SamplerObject *self, void *closure) {
    (void)closure;
    const float *t = avq_sampler_model_timesteps(self->s);
    if (!t) Py_RETURN_NONE;
    return float_array(t, avq_sampler_num_steps(self->s));
}
static PyObject *get_needs_noise(SamplerObject *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(avq_sampler_needs_noise(self->s));
}
static PyObject *get_steps(SamplerObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLong(self->steps);
}
static PyObject *get_eta(SamplerObject *self, void *closure) {
    (void)closure;
    return PyFloat_FromDouble(avq_sampler_eta(self->s));
}
static PyObject *get_num_model_calls(SamplerObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLong(avq_sampler_num_model_calls(self->s));
}
static PyObject *get_timesteps(SamplerObject *self, void *closure) {
    (void)closure;
    return int_array(avq_sampler_timesteps(self->s), avq_sampler_num_steps(self->s));
}
/* The per-step float tables; the getter's closure indexes them. */
static const float *(*const step_tables[])(const avq_sampler *) = {avq_sampler_alphas, avq_sampler_alphas_prev,
                                                                   avq_sampler_sigmas};
static PyObject *get_step_table(SamplerObject *self, void *closure) {
    return float_array(step_tables[(intptr_t)closure](self->s), avq_sampler_num_steps(self->s));
}
static PyObject *get_alphas_cumprod(SamplerObject *self, void *closure) {
    (void)closure;
    int T;
    const float *abar = avq_sampler_alphas_cumprod(self->s, &T);
    return float_array(abar, T);
}

static PyMethodDef sampler_methods[] = {
    {"sample", (PyCFunction)(void (*)(void))sampler_sample, METH_VARARGS | METH_KEYWORDS,
     "sample(unet, x_T, cond, uncond=None, scale=1.0, c_concat=None, noise=None, seed=None, callback=None, "
     "generator=None) -> x_0"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef sampler_getset[] = {
    {"kind", (getter)get_kind, NULL, "\"ddim\", \"plms\", \"dpmpp_2m\", \"euler\" or \"euler_a\".", NULL},
    {"karras", (getter)get_karras, NULL, "True when DPM++ 2M uses Karras sigmas.", NULL},
    {"init_noise_sigma", (getter)get_init_noise_sigma, NULL, "The factor x_T is scaled by first (1 for DDIM/PLMS).",
     NULL},
    {"noise_levels", (getter)get_noise_levels, NULL,
     "float32 sigma per loop step plus the final 0 (sigma kinds), or None.", NULL},
    {"spacing", (getter)get_spacing, NULL, "diffusers' timestep_spacing of the sigma kinds.", NULL},
    {"model_timesteps", (getter)get_model_timesteps, NULL,
     "float32 timestep the model sees at each loop step (sigma kinds), or None.", NULL},
    {"needs_noise", (getter)get_needs_noise, NULL, "True when a run adds noise every step.", NULL},
    {"steps", (getter)get_steps, NULL, "The number of steps asked for.", NULL},
    {"eta", (getter)get_eta, NULL, "DDIM eta (0 for PLMS).", NULL},
    {"num_model_calls", (getter)get_num_model_calls, NULL, "Model evaluations per sample (PLMS: steps + 1).", NULL},
    {"timesteps", (getter)get_timesteps, NULL, "int64 DDIM timesteps, ascending (the loop runs them backwards).", NULL},
    {"alphas", (getter)get_step_table, NULL, "float32 a_k = alphas_cumprod[timesteps[k]].", (void *)0},
    {"alphas_prev", (getter)get_step_table, NULL, "float32 aprev_k (aprev_0 = alphas_cumprod[0]).", (void *)1},
    {"sigmas", (getter)get_step_table, NULL, "float32 sigma_k.", (void *)2},
    {"alphas_cumprod", (getter)get_alphas_cumprod, NULL, "The float32 DDPM schedule.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot sampler_slots[] = {
    {Py_tp_dealloc, sampler_dealloc},
    {Py_tp_getset, sampler_getset},
    AVQ_PY_TYPE_SLOTS(sampler_new, sampler_methods,
                      "Sampler(kind, steps, eta, linear_start=0.00085, linear_end=0.012, timesteps=1000, "
                      "karras=False) (private)."),
};

static PyType_Spec sampler_spec = {
    "asymvq._core.Sampler", sizeof(SamplerObject), 0, Py_TPFLAGS_DEFAULT, sampler_slots,
};

/* ---- randn ------------------------------------------------------------------------------- */

static PyObject *py_randn(PyObject *self, PyObject *args, PyObject *kwds) {
    (void)self;
    static char *kwlist[] = {"seed", "shape", NULL};
    PyObject *oseed, *oshape;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:randn", kwlist, &oseed, &oshape)) return NULL;
    unsigned long long sv = PyLong_AsUnsignedLongLong(oseed);
    if (PyErr_Occurred() || sv > 0xffffffffULL) {
        PyErr_Clear();
        return PyErr_Format(PyExc_ValueError, "seed must be an integer between 0 and 2**32 - 1, got %R", oseed);
    }
    PyArrayObject *a = avq_py_new_f32(oshape);
    if (!a) return NULL;
    avq_rng rng;
    avq_rng_seed(&rng, (uint32_t)sv);
    float *p = PyArray_DATA(a);
    const npy_intp n = PyArray_SIZE(a);
    Py_BEGIN_ALLOW_THREADS avq_rng_randn_f32(&rng, p, (int64_t)n);
    Py_END_ALLOW_THREADS return (PyObject *)a;
}

static PyMethodDef randn_defs[] = {
    {"randn", (PyCFunction)(void (*)(void))py_randn, METH_VARARGS | METH_KEYWORDS,
     "randn(seed, shape) -> float32 array equal to numpy.random.RandomState(seed).randn(*shape).astype(float32)"},
    {NULL, NULL, 0, NULL},
};

int avq_py_add_sampler(PyObject *m) {
    PyObject *type = PyType_FromSpec(&sampler_spec);
    if (!type) return -1;
    if (PyModule_AddObject(m, "Sampler", type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    PyObject *gtype = PyType_FromSpec(&generator_spec);
    if (!gtype) return -1;
    Py_INCREF(gtype);
    if (PyModule_AddObject(m, "Generator", gtype) < 0) {
        Py_DECREF(gtype);
        Py_DECREF(gtype);
        return -1;
    }
    generator_type = (PyTypeObject *)gtype; /* the extra reference keeps it alive for the process */
    return PyModule_AddFunctions(m, randn_defs);
}
