/* The dict-backed weight source used by every model binding (weights.c). */
#ifndef AVQ_PY_WEIGHTS_H
#define AVQ_PY_WEIGHTS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "models/loader.h"

/* A weight source over a dict {checkpoint name: ndarray}: float32 arrays are
 * f32 weights, uint16 arrays are bf16 bit patterns (asymvq.checkpoint's form).
 * Arrays must be C-contiguous; the dict is read only during model creation
 * (the model copies every weight). Call with the GIL held. */
void avq_py_dict_source(avq_weight_source *src, PyObject *dict);

#endif
