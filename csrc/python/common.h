/* Shared by the binding files: status -> exception mapping, array checks,
 * single-op plans. Only csrc/python includes Python and NumPy headers. */
#ifndef AVQ_PY_COMMON_H
#define AVQ_PY_COMMON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL avq_ARRAY_API
#include <numpy/arrayobject.h>

#include "core/engine.h"
#include "core/plan.h"
#include "core/weight.h"
#include "ops/ops.h"

/* Raises the Python exception for a failed status; returns NULL. */
PyObject *avq_py_raise(avq_status st);
/* Parses "fp32" / "bf16". Returns -1 with an exception set. */
int avq_py_precision(PyObject *obj, avq_dtype *out);
/* A C-contiguous float32 array from `obj` (copying a non-contiguous one),
 * named `name` in errors; ndim_min..ndim_max dims. New reference or NULL. */
PyArrayObject *avq_py_f32(PyObject *obj, const char *name, int ndim_min, int ndim_max);
avq_tensor avq_py_tensor(PyArrayObject *a);
avq_weight avq_py_weight(PyArrayObject *a, const char *name);

PyObject *avq_ops_module(void);

#include "models/loader.h"

/* A weight source over a dict {checkpoint name: ndarray}: float32 arrays are
 * f32 weights, uint16 arrays are bf16 bit patterns (asymvq.checkpoint's form).
 * Arrays must be C-contiguous; the dict is read only during model creation
 * (the model copies every weight). Call with the GIL held. */
void avq_py_dict_source(avq_weight_source *src, PyObject *dict);

/* Registration hooks, one per model family binding file. */
int avq_py_add_autoencoder(PyObject *m);
int avq_py_add_text_encoder(PyObject *m);
int avq_py_add_unet(PyObject *m);
int avq_py_add_sampler(PyObject *m);

#endif
