/* The dict-backed weight source used by every model binding. */
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include "weights.h"

#include "arrays.h"

static int dict_get(void *ctx, const char *name, int ndim, const int64_t *dims, avq_weight *w, char *msg,
                    size_t msg_len) {
    PyObject *dict = ctx;
    PyObject *obj = PyDict_GetItemString(dict, name); /* borrowed */
    if (!obj) {
        snprintf(msg, msg_len, "missing");
        return 1;
    }
    if (!PyArray_Check(obj)) {
        snprintf(msg, msg_len, "not a numpy array (%s)", Py_TYPE(obj)->tp_name);
        return 1;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    int t = PyArray_TYPE(a);
    if (t != NPY_FLOAT32 && t != NPY_UINT16) {
        snprintf(msg, msg_len, "dtype must be float32 or bfloat16 (uint16 bits), got %s",
                 PyArray_DESCR(a)->typeobj->tp_name);
        return 1;
    }
    int same = PyArray_NDIM(a) == ndim;
    for (int i = 0; same && i < ndim; i++) same = PyArray_DIM(a, i) == dims[i];
    if (!same) {
        char got[128], want[128];
        size_t k = 0;
        k += (size_t)snprintf(got + k, sizeof got - k, "[");
        for (int i = 0; i < PyArray_NDIM(a) && k < sizeof got; i++)
            k += (size_t)snprintf(got + k, sizeof got - k, i ? ", %zd" : "%zd", (Py_ssize_t)PyArray_DIM(a, i));
        if (k < sizeof got) snprintf(got + k, sizeof got - k, "]");
        k = 0;
        k += (size_t)snprintf(want + k, sizeof want - k, "[");
        for (int i = 0; i < ndim && k < sizeof want; i++)
            k += (size_t)snprintf(want + k, sizeof want - k, i ? ", %lld" : "%lld", (long long)dims[i]);
        if (k < sizeof want) snprintf(want + k, sizeof want - k, "]");
        snprintf(msg, msg_len, "shape %s, expected %s", got, want);
        return 1;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        snprintf(msg, msg_len, "array is not C-contiguous and aligned");
        return 1;
    }
    avq_weight_init(w, name, t == NPY_FLOAT32 ? AVQ_F32 : AVQ_BF16, ndim, dims, PyArray_DATA(a));
    return 0;
}

/* Whether `a` is a view into a numpy.memmap opened read-only ("r"): its pages
 * are the file's, so dropping them loses nothing (they would fault back in). */
static int read_only_mapping(PyArrayObject *a) {
    static PyObject *memmap_type; /* numpy.memmap, looked up once */
    if (!memmap_type) {
        PyObject *np = PyImport_ImportModule("numpy");
        memmap_type = np ? PyObject_GetAttrString(np, "memmap") : NULL;
        Py_XDECREF(np);
        if (!memmap_type) {
            PyErr_Clear();
            return 0;
        }
    }
    PyObject *o = (PyObject *)a; /* borrowed chain */
    for (int depth = 0; o && depth < 64; depth++) {
        int is = PyObject_IsInstance(o, memmap_type);
        if (is < 0) {
            PyErr_Clear();
            return 0;
        }
        if (is) {
            PyObject *mode = PyObject_GetAttrString(o, "mode");
            int r = mode && PyUnicode_Check(mode) && PyUnicode_CompareWithASCIIString(mode, "r") == 0;
            Py_XDECREF(mode);
            PyErr_Clear();
            return r;
        }
        if (!PyArray_Check(o)) return 0;
        o = PyArray_BASE((PyArrayObject *)o);
    }
    return 0;
}

/* After the loader copied a weight: a read-only file mapping's pages of it are
 * dropped from this process, so that building a model from a memory-mapped
 * checkpoint holds the copies plus about one tensor of the file at a time
 * (not the copies plus the whole file). */
static void dict_done(void *ctx, const char *name, const void *data, size_t bytes) {
    PyObject *obj = PyDict_GetItemString(ctx, name); /* borrowed */
    if (!obj || !PyArray_Check(obj) || PyArray_DATA((PyArrayObject *)obj) != data) return;
    if (!read_only_mapping((PyArrayObject *)obj)) return;
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)data + page - 1) / page * page, hi = ((uintptr_t)data + bytes) / page * page;
    if (hi > lo) (void)madvise((void *)lo, hi - lo, MADV_DONTNEED); /* advisory: a failure costs memory only */
}

void avq_py_dict_source(avq_weight_source *src, PyObject *dict) {
    src->ctx = dict;
    src->get = dict_get;
    src->done = dict_done;
}
