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

/* Ctrl-C during one model call (interrupt.c). With the GIL held around a run:
 *   if (avq_py_interrupt_begin() < 0) fail;      (a Ctrl-C was already pending)
 *   release the GIL; avq_plan_set_thread_abort_flag(avq_py_interrupt_flag());
 *   run; avq_plan_set_thread_abort_flag(NULL); take the GIL back;
 *   avq_py_interrupt_end(); on failure avq_py_raise_run(st).
 * A SIGINT meanwhile stops the run between layers (AVQ_ERR_ABORTED), which
 * avq_py_raise_run turns into Python's KeyboardInterrupt. Calls may nest and
 * run in several threads at once. */
int avq_py_interrupt_begin(void);
void avq_py_interrupt_end(void);
const volatile int *avq_py_interrupt_flag(void);
PyObject *avq_py_raise_interrupted(void);
/* avq_py_raise, except that AVQ_ERR_ABORTED runs Python's pending signal
 * handlers (normally raising KeyboardInterrupt). Returns NULL. */
PyObject *avq_py_raise_run(avq_status st);

/* Registration hooks, one per model family binding file. */
int avq_py_add_autoencoder(PyObject *m);
int avq_py_add_text_encoder(PyObject *m);
int avq_py_add_unet(PyObject *m);
int avq_py_add_sampler(PyObject *m);
int avq_py_add_tables(PyObject *m);

#endif
