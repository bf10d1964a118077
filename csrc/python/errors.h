/* asymvq's exception classes and the status -> exception mapping.
 *
 * The classes live in the module state of asymvq._core (multi-phase init):
 * asymvq.Error derives from Exception; each status class derives from it and
 * from the builtin exception that status raised before, so that callers that
 * catch ValueError, TypeError, ... keep working. AVQ_ERR_ABORTED stays
 * KeyboardInterrupt (a BaseException: not an asymvq.Error). */
#ifndef AVQ_PY_ERRORS_H
#define AVQ_PY_ERRORS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "core/status.h"

enum { AVQ_PY_EXC_VALUE, AVQ_PY_EXC_TYPE, AVQ_PY_EXC_MEMORY, AVQ_PY_EXC_NUMERIC, AVQ_PY_EXC_ENGINE, AVQ_PY_NEXC };

/* asymvq._core's module state (every reference owned). */
typedef struct avq_py_state {
    PyObject *error;            /* asymvq.Error */
    PyObject *exc[AVQ_PY_NEXC]; /* its status subclasses */
} avq_py_state;

/* Creates the classes into `state` and adds them to module `m`. -1 with an exception set. */
int avq_py_errors_init(PyObject *m, avq_py_state *state);
int avq_py_errors_traverse(avq_py_state *state, visitproc visit, void *arg);
void avq_py_errors_clear(avq_py_state *state);

/* The class a failed status raises (borrowed; the builtin one while asymvq._core
 * is not importable, e.g. during its own initialisation). Call with the GIL held. */
PyObject *avq_py_exc(avq_status st);
/* Raises avq_last_error() as the class for `st` (unless an exception is already set); returns NULL. */
PyObject *avq_py_raise(avq_status st);

#endif
