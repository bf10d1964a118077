/* asymvq._core: multi-phase init; engine info and threads; the ops test surface. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define PY_ARRAY_UNIQUE_SYMBOL avq_ARRAY_API
#include <numpy/arrayobject.h>

#include "common.h"

PyObject *avq_py_raise(avq_status st) {
    PyObject *exc;
    switch (st) {
    case AVQ_ERR_ARG:
    case AVQ_ERR_SHAPE:
    case AVQ_ERR_IO: exc = PyExc_ValueError; break;
    case AVQ_ERR_DTYPE: exc = PyExc_TypeError; break;
    case AVQ_ERR_MEMORY: exc = PyExc_MemoryError; break;
    case AVQ_ERR_ABORTED: exc = PyExc_KeyboardInterrupt; break;
    case AVQ_ERR_NUMERIC: exc = PyExc_FloatingPointError; break;
    default: exc = PyExc_RuntimeError; break;
    }
    if (!PyErr_Occurred()) PyErr_SetString(exc, avq_last_error());
    return NULL;
}

int avq_py_precision(PyObject *obj, avq_dtype *out) {
    if (!obj || obj == Py_None) {
        *out = AVQ_F32;
        return 0;
    }
    if (PyUnicode_Check(obj)) {
        if (PyUnicode_CompareWithASCIIString(obj, "fp32") == 0 || PyUnicode_CompareWithASCIIString(obj, "float32") == 0) {
            *out = AVQ_F32;
            return 0;
        }
        if (PyUnicode_CompareWithASCIIString(obj, "bf16") == 0 || PyUnicode_CompareWithASCIIString(obj, "bfloat16") == 0) {
            *out = AVQ_BF16;
            return 0;
        }
    }
    PyErr_Format(PyExc_ValueError, "precision must be \"fp32\" or \"bf16\", got %R", obj);
    return -1;
}

PyArrayObject *avq_py_f32(PyObject *obj, const char *name, int ndim_min, int ndim_max) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy.ndarray of float32, got %s", name, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != NPY_FLOAT32) {
        PyErr_Format(PyExc_TypeError, "%s must have dtype float32, got %s", name, PyArray_DESCR(a)->typeobj->tp_name);
        return NULL;
    }
    int nd = PyArray_NDIM(a);
    if (nd < ndim_min || nd > ndim_max) {
        if (ndim_min == ndim_max)
            PyErr_Format(PyExc_ValueError, "%s must be %d-D, got %d-D", name, ndim_min, nd);
        else
            PyErr_Format(PyExc_ValueError, "%s must be %d-D to %d-D, got %d-D", name, ndim_min, ndim_max, nd);
        return NULL;
    }
    if (PyArray_SIZE(a) == 0) {
        PyErr_Format(PyExc_ValueError, "%s is empty (shape has a zero)", name);
        return NULL;
    }
    return (PyArrayObject *)PyArray_FROM_OTF(obj, NPY_FLOAT32, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED);
}

avq_tensor avq_py_tensor(PyArrayObject *a) {
    int64_t d[AVQ_MAX_DIMS];
    int nd = PyArray_NDIM(a);
    for (int i = 0; i < nd && i < AVQ_MAX_DIMS; i++) d[i] = PyArray_DIM(a, i);
    avq_tensor t = avq_tensor_make(AVQ_F32, AVQ_PLAIN, nd, d);
    t.data = PyArray_DATA(a);
    return t;
}

avq_weight avq_py_weight(PyArrayObject *a, const char *name) {
    int64_t d[4] = {1, 1, 1, 1};
    int nd = PyArray_NDIM(a);
    for (int i = 0; i < nd && i < 4; i++) d[i] = PyArray_DIM(a, i);
    avq_weight w;
    avq_weight_init(&w, name, AVQ_F32, nd, d, PyArray_DATA(a));
    return w;
}

static PyObject *py_info(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    avq_info info;
    avq_status st = avq_get_info(&info);
    if (st != AVQ_OK) return avq_py_raise(st);
    char dnnl[64];
    snprintf(dnnl, sizeof dnnl, "%d.%d.%d", info.dnnl_major, info.dnnl_minor, info.dnnl_patch);
    return Py_BuildValue("{s:s,s:s,s:s,s:s,s:s,s:s,s:i,s:O,s:O}", "version", info.version, "onednn_version", dnnl,
                         "onednn_hash", info.dnnl_hash, "isa", info.isa, "cpu_isa", info.cpu_isa, "kernel_isa",
                         info.kernel_isa, "num_threads", info.num_threads, "bf16_native",
                         info.bf16_native ? Py_True : Py_False, "amx_attention",
                         avq_attention_uses_amx() ? Py_True : Py_False);
}

static PyObject *py_set_num_threads(PyObject *self, PyObject *arg) {
    (void)self;
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1 || n > 4096) {
        PyErr_Format(PyExc_ValueError, "num_threads must be between 1 and 4096, got %ld", n);
        return NULL;
    }
    avq_status st = avq_set_num_threads((int)n);
    if (st != AVQ_OK) return avq_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyLong_FromLong(avq_get_num_threads());
}

static PyObject *py_throttle_openmp_spinning(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    int team = 0;
    avq_status st = avq_throttle_openmp_spinning(&team);
    if (st != AVQ_OK) return avq_py_raise(st);
    return PyLong_FromLong(team);
}

static PyObject *py_check_precision(PyObject *self, PyObject *arg) {
    (void)self;
    avq_dtype dt;
    if (avq_py_precision(arg, &dt) < 0) return NULL;
    /* the models call this before reading any weight, rather than fail on a raw descriptor later */
    if (dt == AVQ_BF16) {
        avq_status st = avq_check_bf16();
        if (st != AVQ_OK) return avq_py_raise(st);
    }
    Py_RETURN_NONE;
}

static PyMethodDef core_methods[] = {
    {"info", py_info, METH_NOARGS, "Versions, the ISA that oneDNN and asymvq's kernels run (the cap applied), bf16/AMX paths, threads."},
    {"check_precision", py_check_precision, METH_O,
     "Raises what a model would for this precision (ValueError: unknown; RuntimeError: bf16 cannot run here)."},
    {"set_num_threads", py_set_num_threads, METH_O, "Threads for oneDNN and asymvq's OpenMP kernels."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "Threads used by compute calls."},
    {"throttle_openmp_spinning", py_throttle_openmp_spinning, METH_NOARGS,
     "Parks a sleeping OpenMP team so that a spinning runtime spins briefly; returns its size."},
    {NULL, NULL, 0, NULL},
};

static int core_exec(PyObject *m) {
    import_array1(-1);
    PyObject *ops = avq_ops_module();
    if (!ops) return -1;
    if (PyModule_AddObject(m, "ops", ops) < 0) {
        Py_DECREF(ops);
        return -1;
    }
    if (PyModule_AddStringConstant(m, "__version__", AVQ_VERSION) < 0) return -1;
    if (avq_py_add_autoencoder(m) < 0 || avq_py_add_text_encoder(m) < 0 || avq_py_add_unet(m) < 0 ||
        avq_py_add_sampler(m) < 0 || avq_py_add_tables(m) < 0)
        return -1;
    return 0;
}

static PyModuleDef_Slot core_slots[] = {
    {Py_mod_exec, core_exec},
    {0, NULL},
};

static struct PyModuleDef core_def = {
    PyModuleDef_HEAD_INIT, "asymvq._core", "asymvq's C core (private: use the asymvq package).", 0, core_methods,
    core_slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__core(void) { return PyModuleDef_Init(&core_def); }
