/* NumPy arrays in and out of the C core: argument checks (the binding owns
 * shapes and dtypes) and views as avq_tensor / avq_weight. */
#ifndef AVQ_PY_ARRAYS_H
#define AVQ_PY_ARRAYS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifndef AVQ_PY_DEFINES_ARRAY_API
#define NO_IMPORT_ARRAY
#endif
#define PY_ARRAY_UNIQUE_SYMBOL avq_ARRAY_API
#include <numpy/arrayobject.h>

#include "core/tensor.h"
#include "core/weight.h"

/* Parses "fp32" / "bf16" (None: fp32). Returns -1 with an exception set. */
int avq_py_precision(PyObject *obj, avq_dtype *out);
/* The precision's name: "fp32" or "bf16" (a new reference). */
PyObject *avq_py_precision_name(avq_dtype dt);
/* A C-contiguous float32 array from `obj` (copying a non-contiguous one),
 * named `name` in errors; ndim_min..ndim_max dims. New reference or NULL. */
PyArrayObject *avq_py_f32(PyObject *obj, const char *name, int ndim_min, int ndim_max);
/* avq_py_f32 of a [B, C, H, W] array with C == channels. */
PyArrayObject *avq_py_f32_nchw(PyObject *obj, const char *name, int channels);
/* A new float32 array of the shape `oshape` (a sequence of sizes >= 0), or NULL
 * with an exception set. */
PyArrayObject *avq_py_new_f32(PyObject *oshape);
/* Whether `a` (4-D) has dims [b, c, h, w]. */
int avq_py_same_dims(PyArrayObject *a, npy_intp b, npy_intp c, npy_intp h, npy_intp w);
/* Views of a checked float32 array (borrowing its data). */
avq_tensor avq_py_tensor(PyArrayObject *a);
avq_weight avq_py_weight(PyArrayObject *a, const char *name);

#endif
