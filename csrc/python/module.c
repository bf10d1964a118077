/* asymvq._core: multi-phase init with the exception classes in the module
 * state; engine info and threads; the ops test surface and the models come
 * from the binding files (bindings.h). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* This file defines NumPy's C API table; every other file imports it (arrays.h). */
#define AVQ_PY_DEFINES_ARRAY_API
#include "arrays.h"
#include "bindings.h"
#include "errors.h"

#include "core/engine.h"
#include "ops/ops.h"

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
        PyErr_Format(avq_py_exc(AVQ_ERR_ARG), "num_threads must be between 1 and 4096, got %ld", n);
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
    {"info", py_info, METH_NOARGS,
     "Versions, the ISA that oneDNN and asymvq's kernels run (the cap applied), bf16/AMX paths, threads."},
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
    if (avq_py_errors_init(m, PyModule_GetState(m)) < 0) return -1;
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

static int core_traverse(PyObject *m, visitproc visit, void *arg) {
    avq_py_state *state = PyModule_GetState(m);
    return state ? avq_py_errors_traverse(state, visit, arg) : 0;
}

static int core_clear(PyObject *m) {
    avq_py_state *state = PyModule_GetState(m);
    if (state) avq_py_errors_clear(state);
    return 0;
}

static void core_free(void *m) { core_clear(m); }

/* The state holds the exception classes (errors.h). */
static struct PyModuleDef core_def = {
    PyModuleDef_HEAD_INIT, "asymvq._core", "asymvq's C core (private: use the asymvq package).",
    sizeof(avq_py_state),  core_methods,   core_slots,
    core_traverse,         core_clear,     core_free,
};

PyMODINIT_FUNC PyInit__core(void) { return PyModuleDef_Init(&core_def); }
