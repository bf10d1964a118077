/* Array checks and views (see arrays.h). The NumPy C API table lives in module.c. */
#include "arrays.h"

#include "errors.h"

int avq_py_precision(PyObject *obj, avq_dtype *out) {
    if (!obj || obj == Py_None) {
        *out = AVQ_F32;
        return 0;
    }
    if (PyUnicode_Check(obj)) {
        if (PyUnicode_CompareWithASCIIString(obj, "fp32") == 0 ||
            PyUnicode_CompareWithASCIIString(obj, "float32") == 0) {
            *out = AVQ_F32;
            return 0;
        }
        if (PyUnicode_CompareWithASCIIString(obj, "bf16") == 0 ||
            PyUnicode_CompareWithASCIIString(obj, "bfloat16") == 0) {
            *out = AVQ_BF16;
            return 0;
        }
    }
    PyErr_Format(avq_py_exc(AVQ_ERR_ARG), "precision must be \"fp32\" or \"bf16\", got %R", obj);
    return -1;
}

PyObject *avq_py_precision_name(avq_dtype dt) { return PyUnicode_FromString(dt == AVQ_BF16 ? "bf16" : "fp32"); }

PyArrayObject *avq_py_f32(PyObject *obj, const char *name, int ndim_min, int ndim_max) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(avq_py_exc(AVQ_ERR_DTYPE), "%s must be a numpy.ndarray of float32, got %s", name,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != NPY_FLOAT32) {
        PyErr_Format(avq_py_exc(AVQ_ERR_DTYPE), "%s must have dtype float32, got %s", name,
                     PyArray_DESCR(a)->typeobj->tp_name);
        return NULL;
    }
    int nd = PyArray_NDIM(a);
    if (nd < ndim_min || nd > ndim_max) {
        if (ndim_min == ndim_max)
            PyErr_Format(avq_py_exc(AVQ_ERR_SHAPE), "%s must be %d-D, got %d-D", name, ndim_min, nd);
        else
            PyErr_Format(avq_py_exc(AVQ_ERR_SHAPE), "%s must be %d-D to %d-D, got %d-D", name, ndim_min, ndim_max, nd);
        return NULL;
    }
    if (PyArray_SIZE(a) == 0) {
        PyErr_Format(avq_py_exc(AVQ_ERR_SHAPE), "%s is empty (shape has a zero)", name);
        return NULL;
    }
    return (PyArrayObject *)PyArray_FROM_OTF(obj, NPY_FLOAT32, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED);
}

PyArrayObject *avq_py_f32_nchw(PyObject *obj, const char *name, int channels) {
    PyArrayObject *a = avq_py_f32(obj, name, 4, 4);
    if (a && PyArray_DIM(a, 1) != channels) {
        PyErr_Format(avq_py_exc(AVQ_ERR_SHAPE), "%s must have %d channels ([B, %d, H, W]), got %zd", name, channels,
                     channels, (Py_ssize_t)PyArray_DIM(a, 1));
        Py_CLEAR(a);
    }
    return a;
}

PyArrayObject *avq_py_new_f32(PyObject *oshape) {
    PyArray_Dims dims = {NULL, 0};
    if (!PyArray_IntpConverter(oshape, &dims)) return NULL;
    for (int i = 0; i < dims.len; i++)
        if (dims.ptr[i] < 0) {
            PyDimMem_FREE(dims.ptr);
            PyErr_Format(avq_py_exc(AVQ_ERR_SHAPE), "shape must not hold negative sizes, got %R", oshape);
            return NULL;
        }
    PyArrayObject *a = (PyArrayObject *)PyArray_SimpleNew(dims.len, dims.ptr, NPY_FLOAT32);
    PyDimMem_FREE(dims.ptr);
    return a;
}

int avq_py_same_dims(PyArrayObject *a, npy_intp b, npy_intp c, npy_intp h, npy_intp w) {
    return PyArray_DIM(a, 0) == b && PyArray_DIM(a, 1) == c && PyArray_DIM(a, 2) == h && PyArray_DIM(a, 3) == w;
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
