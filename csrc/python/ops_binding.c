/* asymvq._core.ops: every op callable on NumPy arrays, for tests and
 * benchmarks (private API). Inputs are float32 in PyTorch's layouts; each call
 * builds a one-op plan that converts them to the internal layout and
 * precision, runs the op with the GIL released, and converts the result back.
 * Calling the same function twice builds twice: plans are for models.
 * ops.timeit(name, *args, repeat=n, **kw) replays one plan n times and returns
 * the best time of the op itself (edge conversions excluded), for benchmarks. */
#include <limits.h>
#include <math.h>
#include <time.h>

#include "bindings.h"
#include "common.h"
#include "pytypes.h"

#define MAX_IN 6

typedef struct op_call op_call;
typedef avq_status (*op_body)(avq_plan *p, op_call *c, avq_tensor *in, avq_tensor *out);

struct op_call {
    int nin;
    avq_tensor ext[MAX_IN];
    int keep[MAX_IN]; /* 1: hand the f32 array to the op as is */
    avq_tensor out_ext;
    avq_dtype dt;
    op_body body;
    avq_weight w[3];
    int nw;
    /* op parameters */
    avq_conv_params conv;
    avq_act act;
    int i0, i1, i2;
    float f0, f1;
    /* timing (ops.timeit): body seconds of the fastest run pass */
    int timed;
    double best;
};

/* Set by ops.timeit for the run() it triggers on this thread (GIL held). */
typedef struct op_timing {
    int repeat;
    double best;
} op_timing;
static _Thread_local op_timing *t_timing;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static avq_layout internal_layout(const avq_tensor *t) { return t->ndim == 4 ? AVQ_NHWC : AVQ_PLAIN; }

static avq_status op_forward(avq_plan *p, void *ctx) {
    op_call *c = ctx;
    avq_tensor in[MAX_IN], out;
    avq_status st = AVQ_OK;
    int made = 0;
    for (; made < c->nin && st == AVQ_OK; made++) {
        if (c->keep[made]) {
            in[made] = c->ext[made];
            continue;
        }
        st = avq_plan_tensor(p, &in[made], c->dt, internal_layout(&c->ext[made]), c->ext[made].ndim, c->ext[made].dims);
        if (st == AVQ_OK) st = avq_reorder(p, &c->ext[made], &in[made]);
    }
    if (st != AVQ_OK) return st;
    AVQ_TRY(avq_plan_tensor(p, &out, c->dt, internal_layout(&c->out_ext), c->out_ext.ndim, c->out_ext.dims));
    int timing = c->timed && !avq_plan_building(p);
    double t0 = timing ? now_s() : 0.0;
    AVQ_TRY(c->body(p, c, in, &out));
    if (timing) {
        double dt = now_s() - t0;
        if (c->best < 0.0 || dt < c->best) c->best = dt;
    }
    AVQ_TRY(avq_reorder(p, &out, &c->out_ext));
    avq_plan_release(p, &out);
    for (int i = c->nin - 1; i >= 0; i--)
        if (!c->keep[i]) avq_plan_release(p, &in[i]);
    return AVQ_OK;
}

/* Runs the call into a new float32 array of out_dims. Steals the array refs. */
static PyObject *run(op_call *c, PyArrayObject **arrays, int narrays, int out_nd, const int64_t *out_dims) {
    npy_intp od[AVQ_MAX_DIMS];
    for (int i = 0; i < out_nd; i++) od[i] = (npy_intp)out_dims[i];
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(out_nd, od, NPY_FLOAT32);
    PyObject *ret = NULL;
    avq_plan *plan = NULL;
    avq_status st;
    op_timing *tm = t_timing;
    int passes = tm ? tm->repeat : 1;
    t_timing = NULL;
    c->timed = tm != NULL;
    c->best = -1.0;
    if (!out) goto done;
    c->out_ext = avq_py_tensor(out);
    st = avq_plan_create(&plan);
    if (st == AVQ_OK) {
        Py_BEGIN_ALLOW_THREADS for (int i = 0; i < passes && st == AVQ_OK; i++) st = avq_plan_run(plan, op_forward, c);
        Py_END_ALLOW_THREADS
    }
    if (st != AVQ_OK) {
        avq_py_raise(st);
        goto done;
    }
    if (tm) tm->best = c->best;
    ret = (PyObject *)out;
    out = NULL;
done:
    avq_plan_destroy(plan);
    for (int i = 0; i < c->nw; i++) avq_weight_release(&c->w[i]);
    Py_XDECREF(out);
    for (int i = 0; i < narrays; i++) Py_XDECREF(arrays[i]);
    return ret;
}

static int add_input(op_call *c, PyArrayObject *a, int keep) {
    c->ext[c->nin] = avq_py_tensor(a);
    c->keep[c->nin] = keep;
    return c->nin++;
}

static int parse_act(PyObject *o, avq_act *act) {
    if (!o || o == Py_None) {
        *act = AVQ_ACT_NONE;
        return 0;
    }
    const char *names[] = {"none", "relu", "silu", "gelu", "quick_gelu"};
    if (PyUnicode_Check(o))
        for (int i = 0; i < 5; i++)
            if (PyUnicode_CompareWithASCIIString(o, names[i]) == 0) {
                *act = (avq_act)i;
                return 0;
            }
    PyErr_Format(avq_py_exc(AVQ_ERR_ARG),
                 "activation must be one of None, 'relu', 'silu', 'gelu', 'quick_gelu'; got %R", o);
    return -1;
}

static int shape_eq(PyArrayObject *a, int nd, const npy_intp *d) {
    if (PyArray_NDIM(a) != nd) return 0;
    for (int i = 0; i < nd; i++)
        if (PyArray_DIM(a, i) != d[i]) return 0;
    return 1;
}

static void dims_of(PyArrayObject *a, int64_t *d) {
    for (int i = 0; i < PyArray_NDIM(a); i++) d[i] = PyArray_DIM(a, i);
}

/* Releases the op's arrays; returns NULL (for `return release(...)`). */
static PyObject *release(PyArrayObject **arr, int n) {
    for (int i = 0; i < n; i++) Py_XDECREF(arr[i]);
    return NULL;
}

/* Starts an op: no inputs yet, the precision parsed. -1 with an exception set. */
static int op_begin(op_call *c, PyObject *precision) {
    memset(c, 0, sizeof *c);
    return avq_py_precision(precision, &c->dt);
}

/* The op's array arguments objs[0..n) as float32 arrays of lo..hi dims (named
 * names[i] in errors), each added as an input in order. 0, or -1 with an
 * exception set and none held. */
static int op_inputs(op_call *c, PyArrayObject **arr, int n, PyObject *const *objs, const char *const *names, int lo,
                     int hi) {
    for (int i = 0; i < n; i++) {
        if (!(arr[i] = avq_py_f32(objs[i], names[i], lo, hi))) {
            release(arr, i);
            return -1;
        }
        add_input(c, arr[i], 0);
    }
    return 0;
}

/* Parses the (x, precision='fp32') of a unary op and loads x (lo..hi dims). */
static int op_unary(PyObject *args, PyObject *kw, op_call *c, PyArrayObject **x, int lo, int hi) {
    static char *kwl[] = {"x", "precision", NULL};
    static const char *const names[] = {"x"};
    PyObject *xo, *pr = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O", kwl, &xo, &pr) || op_begin(c, pr) < 0) return -1;
    return op_inputs(c, x, 1, &xo, names, lo, hi);
}

/* Parses the (a, b, precision='fp32') of a binary op and loads a and b. */
static int op_binary(PyObject *args, PyObject *kw, op_call *c, PyArrayObject **arr, int lo, int hi) {
    static char *kwl[] = {"a", "b", "precision", NULL};
    static const char *const names[] = {"a", "b"};
    PyObject *objs[2], *pr = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O", kwl, &objs[0], &objs[1], &pr) || op_begin(c, pr) < 0) return -1;
    return op_inputs(c, arr, 2, objs, names, lo, hi);
}

/* Runs `body` with an output of the first input's shape (consumes the arrays). */
static PyObject *run_like_first(op_call *c, op_body body, PyArrayObject **arr, int n) {
    int64_t od[AVQ_MAX_DIMS];
    dims_of(arr[0], od);
    c->body = body;
    return run(c, arr, n, PyArray_NDIM(arr[0]), od);
}

/* ---- conv2d ---- */

static avq_status body_conv(avq_plan *p, op_call *c, avq_tensor *in, avq_tensor *out) {
    avq_conv_params prm = c->conv;
    prm.add = c->nin > 1 ? &in[1] : NULL;
    return avq_conv2d(p, &c->w[0], c->nw > 1 ? &c->w[1] : NULL, &in[0], out, &prm);
}

/* A Python int that fits a C int (a silent truncation would change the op). */
static int int_value(PyObject *o, const char *name, int *out) {
    if (!PyLong_Check(o)) {
        PyErr_Format(avq_py_exc(AVQ_ERR_DTYPE), "%s values must be ints, got %R", name, o);
        return -1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (overflow || v < INT_MIN || v > INT_MAX) {
        PyErr_Format(avq_py_exc(AVQ_ERR_ARG), "%s value %R is out of range", name, o);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_pair_or_quad(PyObject *o, const char *name, int *vals, int n4) {
    /* int -> all; (a, b) -> (a, b, a, b); (t, l, b, r) */
    if (PyLong_Check(o)) {
        int v;
        if (int_value(o, name, &v) < 0) return -1;
        for (int i = 0; i < n4; i++) vals[i] = v;
        return 0;
    }
    if (PyTuple_Check(o) || PyList_Check(o)) {
        Py_ssize_t n = PySequence_Size(o);
        if (n == 2 || (n == 4 && n4 == 4)) {
            for (Py_ssize_t i = 0; i < n; i++) {
                PyObject *it = PySequence_GetItem(o, i);
                int bad = !it || int_value(it, name, &vals[i]) < 0;
                Py_XDECREF(it);
                if (bad) return -1;
            }
            if (n == 2 && n4 == 4) {
                vals[2] = vals[0];
                vals[3] = vals[1];
            }
            return 0;
        }
    }
    PyErr_Format(avq_py_exc(AVQ_ERR_ARG), "%s must be an int, a pair%s; got %R", name,
                 n4 == 4 ? " or (top, left, bottom, right)" : "", o);
    return -1;
}

static PyObject *py_conv2d(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwl[] = {"x",          "weight",   "bias",      "stride",    "padding",
                          "activation", "residual", "precision", "algorithm", NULL};
    PyObject *xo, *wo, *bo = Py_None, *so = NULL, *po = NULL, *ao = Py_None, *ro = Py_None, *pr = NULL;
    const char *algo = "auto";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OOOOOOs", kwl, &xo, &wo, &bo, &so, &po, &ao, &ro, &pr, &algo))
        return NULL;
    avq_conv_algo alg;
    if (!strcmp(algo, "auto"))
        alg = AVQ_CONV_AUTO;
    else if (!strcmp(algo, "direct"))
        alg = AVQ_CONV_DIRECT;
    else if (!strcmp(algo, "winograd"))
        alg = AVQ_CONV_WINOGRAD;
    else {
        PyErr_Format(avq_py_exc(AVQ_ERR_ARG), "algorithm must be 'auto', 'direct' or 'winograd', got '%s'", algo);
        return NULL;
    }
    op_call c;
    memset(&c, 0, sizeof c);
    int stride[2] = {1, 1}, pad[4] = {0, 0, 0, 0};
    if (avq_py_precision(pr, &c.dt) < 0 || parse_act(ao, &c.act) < 0) return NULL;
    if (so && parse_pair_or_quad(so, "stride", stride, 2) < 0) return NULL;
    if (po && parse_pair_or_quad(po, "padding", pad, 4) < 0) return NULL;
    PyArrayObject *arr[4] = {0};
    int na = 0;
    if (!(arr[na++] = avq_py_f32(xo, "x", 4, 4)) || !(arr[na++] = avq_py_f32(wo, "weight", 4, 4))) goto fail;
    if (bo != Py_None && !(arr[na++] = avq_py_f32(bo, "bias", 1, 1))) goto fail;
    if (ro != Py_None && !(arr[na++] = avq_py_f32(ro, "residual", 4, 4))) goto fail;
    PyArrayObject *x = arr[0], *w = arr[1];
    if (PyArray_DIM(x, 1) != PyArray_DIM(w, 1)) {
        PyErr_Format(avq_py_exc(AVQ_ERR_ARG), "x has %zd channels but weight expects %zd (weight shape [O, I, kh, kw])",
                     (Py_ssize_t)PyArray_DIM(x, 1), (Py_ssize_t)PyArray_DIM(w, 1));
        goto fail;
    }
    if (bo != Py_None && PyArray_DIM(arr[2], 0) != PyArray_DIM(w, 0)) {
        PyErr_Format(avq_py_exc(AVQ_ERR_ARG),
                     "bias must have shape [%zd] (one value per output channel of weight), got [%zd]",
                     (Py_ssize_t)PyArray_DIM(w, 0), (Py_ssize_t)PyArray_DIM(arr[2], 0));
        goto fail;
    }
    c.conv = (avq_conv_params){stride[0], stride[1], pad[0], pad[1], pad[2], pad[3], c.act, NULL, alg};
    c.w[c.nw++] = avq_py_weight(w, "weight");
    if (bo != Py_None) c.w[c.nw++] = avq_py_weight(arr[2], "bias");
    add_input(&c, x, 0);
    avq_tensor xt = avq_py_tensor(x);
    int64_t oh, ow;
    avq_status st = avq_conv2d_out_size(&xt, &c.w[0], &c.conv, &oh, &ow);
    if (st != AVQ_OK) {
        avq_py_raise(st);
        goto fail;
    }
    int64_t od[4] = {PyArray_DIM(x, 0), PyArray_DIM(w, 0), oh, ow};
    if (ro != Py_None) {
        npy_intp full[4] = {od[0], od[1], od[2], od[3]}, chan[4] = {od[0], od[1], 1, 1};
        PyArrayObject *r = arr[na - 1];
        if (!shape_eq(r, 4, full) && !shape_eq(r, 4, chan)) {
            PyErr_Format(avq_py_exc(AVQ_ERR_ARG),
                         "residual must have the output shape [%lld, %lld, %lld, %lld] or [N, C, 1, 1]",
                         (long long)od[0], (long long)od[1], (long long)od[2], (long long)od[3]);
            goto fail;
        }
        add_input(&c, r, 0);
    }
    c.body = body_conv;
    return run(&c, arr, na, 4, od);
fail:
    for (int i = 0; i < na; i++) Py_XDECREF(arr[i]);
    return NULL;
}

/* ---- linear ---- */

static avq_status body_linear(avq_plan *p, op_call *c, avq_tensor *in, avq_tensor *out) {
    const avq_tensor *mul = c->i0 >= 0 ? &in[c->i0] : NULL, *add = c->i1 >= 0 ? &in[c->i1] : NULL;
    return avq_linear(p, &c->w[0], c->nw > 1 ? &c->w[1] : NULL, &in[0], out, c->act, mul, add);
}

static PyObject *py_linear(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwl[] = {"x", "weight", "bias", "activation", "mul", "add", "precision", NULL};
    PyObject *xo, *wo, *bo = Py_None, *ao = Py_None, *mo = Py_None, *ado = Py_None, *pr = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OOOOO", kwl, &xo, &wo, &bo, &ao, &mo, &ado, &pr)) return NULL;
    op_call c;
    memset(&c, 0, sizeof c);
    c.i0 = c.i1 = -1;
    if (avq_py_precision(pr, &c.dt) < 0 || parse_act(ao, &c.act) < 0) return NULL;
    PyArrayObject *arr[5] = {0};
    int na = 0;
    if (!(arr[na++] = avq_py_f32(xo, "x", 2, 3)) || !(arr[na++] = avq_py_f32(wo, "weight", 2, 2))) goto fail;
    PyArrayObject *x = arr[0], *w = arr[1];
    int nd = PyArray_NDIM(x);
    if (PyArray_DIM(x, nd - 1) != PyArray_DIM(w, 1)) {
        PyErr_Format(avq_py_exc(AVQ_ERR_ARG), "x has %zd features but weight [out, in] expects %zd",
                     (Py_ssize_t)PyArray_DIM(x, nd - 1), (Py_ssize_t)PyArray_DIM(w, 1));
        goto fail;
    }
    c.w[c.nw++] = avq_py_weight(w, "weight");
    if (bo != Py_None) {
        if (!(arr[na++] = avq_py_f32(bo, "bias", 1, 1))) goto fail;
        if (PyArray_DIM(arr[na - 1], 0) != PyArray_DIM(w, 0)) {
            PyErr_Format(avq_py_exc(AVQ_ERR_ARG), "bias must have shape [%zd]", (Py_ssize_t)PyArray_DIM(w, 0));
            goto fail;
        }
        c.w[c.nw++] = avq_py_weight(arr[na - 1], "bias");
    }
    int64_t od[3];
    dims_of(x, od);
    od[nd - 1] = PyArray_DIM(w, 0);
    npy_intp odn[3] = {od[0], od[1], nd == 3 ? od[2] : 0};
    add_input(&c, x, 0);
    PyObject *extra[2] = {mo, ado};
    const char *ename[2] = {"mul", "add"};
    for (int i = 0; i < 2; i++) {
        if (extra[i] == Py_None) continue;
        if (!(arr[na++] = avq_py_f32(extra[i], ename[i], nd, nd))) goto fail;
        if (!shape_eq(arr[na - 1], nd, odn)) {
            PyErr_Format(avq_py_exc(AVQ_ERR_ARG), "%s must have the output's shape", ename[i]);
            goto fail;
        }
        int idx = add_input(&c, arr[na - 1], 0);
        if (i == 0)
            c.i0 = idx;
        else
            c.i1 = idx;
    }
    c.body = body_linear;
    return run(&c, arr, na, nd, od);
fail:
    for (int i = 0; i < na; i++) Py_XDECREF(arr[i]);
    return NULL;
}

static avq_status body_linear_geglu(avq_plan *p, op_call *c, avq_tensor *in, avq_tensor *out) {
    return avq_linear_geglu(p, &c->w[0], c->nw > 1 ? &c->w[1] : NULL, &in[0], out);
}

static PyObject *py_linear_geglu(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwl[] = {"x", "weight", "bias", "precision", NULL};
    PyObject *xo, *wo, *bo = Py_None, *pr = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OO", kwl, &xo, &wo, &bo, &pr)) return NULL;
    op_call c;
    memset(&c, 0, sizeof c);
    c.i0 = c.i1 = -1;
    if (avq_py_precision(pr, &c.dt) < 0) return NULL;
    PyArrayObject *arr[3] = {0};
    int na = 0;
    if (!(arr[na++] = avq_py_f32(xo, "x", 2, 3)) || !(arr[na++] = avq_py_f32(wo, "weight", 2, 2))) goto fail;
    PyArrayObject *x = arr[0], *w = arr[1];
    int nd = PyArray_NDIM(x);
    if (PyArray_DIM(x, nd - 1) != PyArray_DIM(w, 1)) {
        PyErr_Format(avq_py_exc(AVQ_ERR_ARG), "x has %zd features but weight [2F, in] expects %zd",
                     (Py_ssize_t)PyArray_DIM(x, nd - 1), (Py_ssize_t)PyArray_DIM(w, 1));
        goto fail;
    }
    if (PyArray_DIM(w, 0) % 2) {
        PyErr_Format(avq_py_exc(AVQ_ERR_ARG), "linear_geglu: weight has %zd rows, not an even [value | gate] count",
                     (Py_ssize_t)PyArray_DIM(w, 0));
        goto fail;
    }
    c.w[c.nw++] = avq_py_weight(w, "weight");
    if (bo != Py_None) {
        if (!(arr[na++] = avq_py_f32(bo, "bias", 1, 1))) goto fail;
        if (PyArray_DIM(arr[na - 1], 0) != PyArray_DIM(w, 0)) {
            PyErr_Format(avq_py_exc(AVQ_ERR_ARG), "bias must have shape [%zd]", (Py_ssize_t)PyArray_DIM(w, 0));
            goto fail;
        }
        c.w[c.nw++] = avq_py_weight(arr[na - 1], "bias");
    }
    int64_t od[3];
    dims_of(x, od);
    od[nd - 1] = PyArray_DIM(w, 0) / 2;
    add_input(&c, x, 0);
    c.body = body_linear_geglu;
    return run(&c, arr, na, nd, od);
fail:
    for (int i = 0; i < na; i++) Py_XDECREF(arr[i]);
    return NULL;
}

/* ---- matmul, softmax ---- */

static avq_status body_matmul(avq_plan *p, op_call *c, avq_tensor *in, avq_tensor *out) {
    return avq_matmul(p, &in[0], &in[1], out, c->i0, c->f0);
}

static PyObject *py_matmul(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwl[] = {"a", "b", "trans_b", "alpha", "precision", NULL};
    static const char *const names[] = {"a", "b"};
    PyObject *objs[2], *pr = NULL;
    int tb = 0;
    float alpha = 1.f;
    op_call c;
    PyArrayObject *arr[2];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|pfO", kwl, &objs[0], &objs[1], &tb, &alpha, &pr) ||
        op_begin(&c, pr) < 0 || op_inputs(&c, arr, 2, objs, names, 3, 3) < 0)
        return NULL;
    PyArrayObject *a = arr[0], *b = arr[1];
    npy_intp K = PyArray_DIM(a, 2), Kb = PyArray_DIM(b, tb ? 2 : 1), N = PyArray_DIM(b, tb ? 1 : 2);
    if (PyArray_DIM(a, 0) != PyArray_DIM(b, 0) || K != Kb) {
        PyErr_Format(avq_py_exc(AVQ_ERR_ARG), "matmul: a [B, M, K] and b [B, %s] do not fit", tb ? "N, K" : "K, N");
        return release(arr, 2);
    }
    c.i0 = tb;
    c.f0 = alpha;
    c.body = body_matmul;
    int64_t od[3] = {PyArray_DIM(a, 0), PyArray_DIM(a, 1), N};
    return run(&c, arr, 2, 3, od);
}

static avq_status body_softmax(avq_plan *p, op_call *c, avq_tensor *in, avq_tensor *out) {
    (void)c;
    return avq_softmax(p, &in[0], out);
}

static PyObject *py_softmax(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    op_call c;
    PyArrayObject *x;
    return op_unary(args, kw, &c, &x, 1, 3) < 0 ? NULL : run_like_first(&c, body_softmax, &x, 1);
}

/* ---- attention ---- */

static avq_status body_attention(avq_plan *p, op_call *c, avq_tensor *in, avq_tensor *out) {
    return avq_attention(p, &in[0], &in[1], &in[2], out, c->i0, c->f0, c->i1);
}

static PyObject *py_attention(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwl[] = {"q", "k", "v", "heads", "scale", "causal", "precision", NULL};
    static const char *const names[] = {"q", "k", "v"};
    PyObject *objs[3], *so = Py_None, *pr = NULL;
    int heads, causal = 0;
    op_call c;
    PyArrayObject *arr[3];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOi|OpO", kwl, &objs[0], &objs[1], &objs[2], &heads, &so, &causal,
                                     &pr) ||
        op_begin(&c, pr) < 0 || op_inputs(&c, arr, 3, objs, names, 3, 3) < 0)
        return NULL;
    npy_intp C = PyArray_DIM(arr[0], 2);
    if (heads < 1 || C % heads) {
        PyErr_Format(avq_py_exc(AVQ_ERR_ARG), "heads must divide the %zd features of q, got %d", (Py_ssize_t)C, heads);
        return release(arr, 3);
    }
    c.f0 = so == Py_None ? 1.f / sqrtf((float)(C / heads)) : (float)PyFloat_AsDouble(so);
    if (PyErr_Occurred()) return release(arr, 3);
    c.i0 = heads;
    c.i1 = causal;
    return run_like_first(&c, body_attention, arr, 3);
}

/* ---- norms ---- */

static avq_status body_group_norm(avq_plan *p, op_call *c, avq_tensor *in, avq_tensor *out) {
    return avq_group_norm(p, &in[0], out, &c->w[0], &c->w[1], c->i0, c->f0, c->i1);
}

static avq_status body_layer_norm(avq_plan *p, op_call *c, avq_tensor *in, avq_tensor *out) {
    return avq_layer_norm(p, &in[0], out, &c->w[0], &c->w[1], c->f0);
}

static PyObject *norm_common(PyObject *args, PyObject *kw, int group) {
    static char *kwg[] = {"x", "weight", "bias", "groups", "eps", "silu", "precision", NULL};
    static char *kwl[] = {"x", "weight", "bias", "eps", "precision", NULL};
    PyObject *xo, *wo, *bo, *pr = NULL;
    int groups = 32, silu = 0;
    float eps = 1e-5f;
    int ok = group ? PyArg_ParseTupleAndKeywords(args, kw, "OOO|ifpO", kwg, &xo, &wo, &bo, &groups, &eps, &silu, &pr)
                   : PyArg_ParseTupleAndKeywords(args, kw, "OOO|fO", kwl, &xo, &wo, &bo, &eps, &pr);
    if (!ok) return NULL;
    op_call c;
    memset(&c, 0, sizeof c);
    if (avq_py_precision(pr, &c.dt) < 0) return NULL;
    PyArrayObject *arr[3] = {0};
    int na = 0;
    if (!(arr[na++] = avq_py_f32(xo, "x", group ? 2 : 2, group ? 4 : 3)) ||
        !(arr[na++] = avq_py_f32(wo, "weight", 1, 1)) || !(arr[na++] = avq_py_f32(bo, "bias", 1, 1)))
        goto fail;
    PyArrayObject *x = arr[0];
    npy_intp C = group ? PyArray_DIM(x, 1) : PyArray_DIM(x, PyArray_NDIM(x) - 1);
    if (group && PyArray_NDIM(x) == 3) {
        PyErr_SetString(avq_py_exc(AVQ_ERR_ARG), "x must be [N, C] or [N, C, H, W] for group_norm");
        goto fail;
    }
    if (PyArray_DIM(arr[1], 0) != C || PyArray_DIM(arr[2], 0) != C) {
        PyErr_Format(avq_py_exc(AVQ_ERR_ARG), "weight and bias must have shape [%zd]", (Py_ssize_t)C);
        goto fail;
    }
    if (group && (groups < 1 || C % groups)) {
        PyErr_Format(avq_py_exc(AVQ_ERR_ARG), "groups must divide the %zd channels, got %d", (Py_ssize_t)C, groups);
        goto fail;
    }
    if (!(eps > 0.f)) {
        PyErr_SetString(avq_py_exc(AVQ_ERR_ARG), "eps must be > 0");
        goto fail;
    }
    c.w[c.nw++] = avq_py_weight(arr[1], "weight");
    c.w[c.nw++] = avq_py_weight(arr[2], "bias");
    c.i0 = groups;
    c.i1 = silu;
    c.f0 = eps;
    add_input(&c, x, 0);
    c.body = group ? body_group_norm : body_layer_norm;
    int64_t od[4];
    dims_of(x, od);
    return run(&c, arr, na, PyArray_NDIM(x), od);
fail:
    for (int i = 0; i < na; i++) Py_XDECREF(arr[i]);
    return NULL;
}

AVQ_PY_VARIANT(py_group_norm, norm_common, 1)
AVQ_PY_VARIANT(py_layer_norm, norm_common, 0)

/* ---- elementwise ---- */

static avq_status body_act(avq_plan *p, op_call *c, avq_tensor *in, avq_tensor *out) {
    return avq_activation(p, &in[0], out, c->act);
}
static avq_status body_geglu(avq_plan *p, op_call *c, avq_tensor *in, avq_tensor *out) {
    (void)c;
    return avq_geglu(p, &in[0], out);
}
static avq_status body_add(avq_plan *p, op_call *c, avq_tensor *in, avq_tensor *out) {
    return c->i0 ? avq_mul(p, &in[0], &in[1], out) : avq_add(p, &in[0], &in[1], out);
}
static avq_status body_blend(avq_plan *p, op_call *c, avq_tensor *in, avq_tensor *out) {
    (void)c;
    return avq_blend(p, &in[0], &in[1], &in[2], out);
}
static avq_status body_concat(avq_plan *p, op_call *c, avq_tensor *in, avq_tensor *out) {
    (void)c;
    return avq_concat_channels(p, &in[0], &in[1], out);
}
static avq_status body_resize(avq_plan *p, op_call *c, avq_tensor *in, avq_tensor *out) {
    return c->i0 ? avq_upsample2x(p, &in[0], out) : avq_resize_nearest(p, &in[0], out);
}
static avq_status body_temb(avq_plan *p, op_call *c, avq_tensor *in, avq_tensor *out) {
    return avq_timestep_embedding(p, &in[0], out, c->i0, c->f0);
}

static PyObject *py_activation(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwl[] = {"x", "kind", "precision", NULL};
    static const char *const names[] = {"x"};
    PyObject *xo, *ko, *pr = NULL;
    op_call c;
    PyArrayObject *x;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O", kwl, &xo, &ko, &pr) || op_begin(&c, pr) < 0 ||
        parse_act(ko, &c.act) < 0 || op_inputs(&c, &x, 1, &xo, names, 1, 4) < 0)
        return NULL;
    return run_like_first(&c, body_act, &x, 1);
}

static PyObject *py_geglu(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    op_call c;
    PyArrayObject *x;
    if (op_unary(args, kw, &c, &x, 2, 3) < 0) return NULL;
    int nd = PyArray_NDIM(x);
    if (PyArray_DIM(x, nd - 1) % 2) {
        PyErr_SetString(avq_py_exc(AVQ_ERR_ARG), "geglu: the last dim of x must be even ([value | gate])");
        return release(&x, 1);
    }
    c.body = body_geglu;
    int64_t od[3];
    dims_of(x, od);
    od[nd - 1] /= 2;
    return run(&c, &x, 1, nd, od);
}

static PyObject *binary_common(PyObject *args, PyObject *kw, int is_mul) {
    op_call c;
    PyArrayObject *arr[2];
    if (op_binary(args, kw, &c, arr, 1, 4) < 0) return NULL;
    c.i0 = is_mul;
    return run_like_first(&c, body_add, arr, 2);
}
AVQ_PY_VARIANT(py_add, binary_common, 0)
AVQ_PY_VARIANT(py_mul, binary_common, 1)

static PyObject *py_blend(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwl[] = {"h", "f", "mask", "precision", NULL};
    static const char *const names[] = {"h", "f", "mask"};
    PyObject *objs[3], *pr = NULL;
    op_call c;
    PyArrayObject *arr[3];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|O", kwl, &objs[0], &objs[1], &objs[2], &pr) ||
        op_begin(&c, pr) < 0 || op_inputs(&c, arr, 3, objs, names, 4, 4) < 0)
        return NULL;
    return run_like_first(&c, body_blend, arr, 3);
}

static PyObject *py_concat(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    op_call c;
    PyArrayObject *arr[2];
    if (op_binary(args, kw, &c, arr, 4, 4) < 0) return NULL;
    c.body = body_concat;
    int64_t od[4];
    dims_of(arr[0], od);
    od[1] += PyArray_DIM(arr[1], 1);
    return run(&c, arr, 2, 4, od);
}

static PyObject *resize_common(PyObject *args, PyObject *kw, int up2) {
    static char *kwu[] = {"x", "precision", NULL};
    static char *kwr[] = {"x", "size", "precision", NULL};
    static const char *const names[] = {"x"};
    PyObject *xo, *pr = NULL;
    int oh = 0, ow = 0;
    int ok = up2 ? PyArg_ParseTupleAndKeywords(args, kw, "O|O", kwu, &xo, &pr)
                 : PyArg_ParseTupleAndKeywords(args, kw, "O(ii)|O", kwr, &xo, &oh, &ow, &pr);
    op_call c;
    PyArrayObject *x;
    if (!ok || op_begin(&c, pr) < 0 || op_inputs(&c, &x, 1, &xo, names, 4, 4) < 0) return NULL;
    int64_t od[4];
    dims_of(x, od);
    if (up2) {
        od[2] *= 2;
        od[3] *= 2;
    } else {
        if (oh < 1 || ow < 1) {
            PyErr_Format(avq_py_exc(AVQ_ERR_ARG), "size must be positive (height, width), got (%d, %d)", oh, ow);
            return release(&x, 1);
        }
        od[2] = oh;
        od[3] = ow;
    }
    c.i0 = up2;
    c.body = body_resize;
    return run(&c, &x, 1, 4, od);
}
AVQ_PY_VARIANT(py_upsample2x, resize_common, 1)
AVQ_PY_VARIANT(py_resize_nearest, resize_common, 0)

static PyObject *py_timestep_embedding(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwl[] = {"t", "dim", "max_period", "precision", NULL};
    PyObject *to, *pr = NULL;
    int dim;
    float maxp = 10000.f;
    op_call c;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oi|fO", kwl, &to, &dim, &maxp, &pr) || op_begin(&c, pr) < 0)
        return NULL;
    if (dim < 2 || dim % 2) {
        PyErr_Format(avq_py_exc(AVQ_ERR_ARG), "dim must be even and >= 2, got %d", dim);
        return NULL;
    }
    PyArrayObject *t = avq_py_f32(to, "t", 1, 1);
    if (!t) return NULL;
    c.i0 = dim;
    c.f0 = maxp;
    add_input(&c, t, 1);
    c.body = body_temb;
    int64_t od[2] = {PyArray_DIM(t, 0), dim};
    return run(&c, &t, 1, 2, od);
}

static PyObject *py_timeit(PyObject *self, PyObject *args, PyObject *kw) {
    Py_ssize_t n = PyTuple_Size(args);
    if (n < 1 || !PyUnicode_Check(PyTuple_GET_ITEM(args, 0))) {
        PyErr_SetString(avq_py_exc(AVQ_ERR_DTYPE),
                        "timeit(name, *args, repeat=10, **kwargs): name must be an op name (str)");
        return NULL;
    }
    PyObject *name = PyTuple_GET_ITEM(args, 0);
    op_timing tm = {10, -1.0};
    PyObject *rest = NULL, *kw2 = NULL, *fn = NULL, *res = NULL, *ret = NULL;
    if (PyUnicode_CompareWithASCIIString(name, "timeit") == 0 || !(fn = PyObject_GetAttr(self, name)) ||
        !PyCFunction_Check(fn)) {
        PyErr_Clear();
        PyErr_Format(avq_py_exc(AVQ_ERR_ARG), "timeit: %R is not an op of asymvq._core.ops", name);
        goto done;
    }
    if (!(kw2 = kw ? PyDict_Copy(kw) : PyDict_New())) goto done;
    PyObject *r = PyDict_GetItemString(kw2, "repeat"); /* borrowed */
    if (r) {
        long v = PyLong_Check(r) ? PyLong_AsLong(r) : -1;
        if (v < 1 || v > 1000000) {
            PyErr_Clear();
            PyErr_Format(avq_py_exc(AVQ_ERR_ARG), "repeat must be an int between 1 and 1000000, got %R", r);
            goto done;
        }
        tm.repeat = (int)v;
        if (PyDict_DelItemString(kw2, "repeat") < 0) goto done;
    }
    if (!(rest = PyTuple_GetSlice(args, 1, n))) goto done;
    t_timing = &tm;
    res = PyObject_Call(fn, rest, kw2);
    t_timing = NULL;
    if (!res) goto done;
    if (tm.best < 0.0) {
        PyErr_SetString(avq_py_exc(AVQ_ERR_INTERNAL), "timeit: the op did not run");
        goto done;
    }
    ret = PyFloat_FromDouble(tm.best);
done:
    Py_XDECREF(res);
    Py_XDECREF(rest);
    Py_XDECREF(kw2);
    Py_XDECREF(fn);
    return ret;
}

static PyMethodDef ops_methods[] = {
    AVQ_PY_KW_METHOD(
        "conv2d", py_conv2d,
        "conv2d(x, weight, bias=None, stride=1, padding=0, activation=None, residual=None, precision='fp32', "
        "algorithm='auto')"),
    AVQ_PY_KW_METHOD("linear", py_linear,
                     "linear(x, weight, bias=None, activation=None, mul=None, add=None, precision='fp32')"),
    AVQ_PY_KW_METHOD("linear_geglu", py_linear_geglu,
                     "linear_geglu(x, weight, bias=None, precision='fp32'): value * gelu(gate), [value | gate] = "
                     "linear(x, weight, bias), weight [2F, in]"),
    AVQ_PY_KW_METHOD("matmul", py_matmul, "matmul(a, b, trans_b=False, alpha=1.0, precision='fp32')"),
    AVQ_PY_KW_METHOD("softmax", py_softmax, "softmax(x, precision='fp32')"),
    AVQ_PY_KW_METHOD("attention", py_attention,
                     "attention(q, k, v, heads, scale=None, causal=False, precision='fp32')"),
    AVQ_PY_KW_METHOD("group_norm", py_group_norm,
                     "group_norm(x, weight, bias, groups=32, eps=1e-5, silu=False, precision='fp32')"),
    AVQ_PY_KW_METHOD("layer_norm", py_layer_norm, "layer_norm(x, weight, bias, eps=1e-5, precision='fp32')"),
    AVQ_PY_KW_METHOD("activation", py_activation,
                     "activation(x, kind, precision='fp32'), kind in relu, silu, gelu, quick_gelu"),
    AVQ_PY_KW_METHOD("geglu", py_geglu, "geglu(x, precision='fp32')"),
    AVQ_PY_KW_METHOD("add", py_add, "add(a, b, precision='fp32')"),
    AVQ_PY_KW_METHOD("mul", py_mul, "mul(a, b, precision='fp32')"),
    AVQ_PY_KW_METHOD("blend", py_blend, "blend(h, f, mask, precision='fp32') = h * mask + f * (1 - mask)"),
    AVQ_PY_KW_METHOD("concat", py_concat, "concat(a, b, precision='fp32')"),
    AVQ_PY_KW_METHOD("upsample2x", py_upsample2x, "upsample2x(x, precision='fp32')"),
    AVQ_PY_KW_METHOD("resize_nearest", py_resize_nearest, "resize_nearest(x, size, precision='fp32')"),
    AVQ_PY_KW_METHOD("timestep_embedding", py_timestep_embedding,
                     "timestep_embedding(t, dim, max_period=10000.0, precision='fp32')"),
    AVQ_PY_KW_METHOD(
        "timeit", py_timeit,
        "timeit(name, *args, repeat=10, **kwargs) -> float: builds the plan of ops.<name>(*args, **kwargs) once, runs "
        "it "
        "`repeat` times and returns the best seconds of the op itself (input/output layout conversions excluded)"),
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef ops_def = {
    PyModuleDef_HEAD_INIT,
    "asymvq._core.ops",
    "Every op on NumPy arrays (private: for tests and benchmarks; float32 in PyTorch layouts).",
    -1,
    ops_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyObject *avq_ops_module(void) { return PyModule_Create(&ops_def); }
