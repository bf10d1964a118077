/* asymvq's exception hierarchy in the module state (see errors.h). */
#include "errors.h"

#include "core/engine.h"
#include "pytypes.h"

static const struct {
    const char *name;
    const char *doc;
} exc_spec[AVQ_PY_NEXC] = {
    [AVQ_PY_EXC_VALUE] = {"asymvq.InvalidInputError", "A bad argument, shape, config or weight (also a ValueError)."},
    [AVQ_PY_EXC_TYPE] = {"asymvq.DTypeError", "An unsupported dtype or argument type (also a TypeError)."},
    [AVQ_PY_EXC_MEMORY] = {"asymvq.OutOfMemoryError", "An allocation failed (also a MemoryError)."},
    [AVQ_PY_EXC_NUMERIC] = {"asymvq.NumericError", "NaN or Inf where none may be (also a FloatingPointError)."},
    [AVQ_PY_EXC_ENGINE] = {"asymvq.EngineError",
                           "oneDNN failed, or an invariant of asymvq broke (also a RuntimeError)."},
};

int avq_py_errors_init(PyObject *m, avq_py_state *state) {
    PyObject *builtin[AVQ_PY_NEXC] = {PyExc_ValueError, PyExc_TypeError, PyExc_MemoryError, PyExc_FloatingPointError,
                                      PyExc_RuntimeError};
    state->error = PyErr_NewExceptionWithDoc("asymvq.Error", "The base of every exception asymvq raises.", NULL, NULL);
    if (!state->error || avq_py_add_object(m, "Error", state->error) < 0) return -1;
    for (int i = 0; i < AVQ_PY_NEXC; i++) {
        PyObject *bases = PyTuple_Pack(2, state->error, builtin[i]);
        if (!bases) return -1;
        state->exc[i] = PyErr_NewExceptionWithDoc(exc_spec[i].name, exc_spec[i].doc, bases, NULL);
        Py_DECREF(bases);
        if (!state->exc[i] || avq_py_add_object(m, exc_spec[i].name + 7, state->exc[i]) < 0) return -1;
    }
    return 0;
}

int avq_py_errors_traverse(avq_py_state *state, visitproc visit, void *arg) {
    Py_VISIT(state->error);
    for (int i = 0; i < AVQ_PY_NEXC; i++) Py_VISIT(state->exc[i]);
    return 0;
}

void avq_py_errors_clear(avq_py_state *state) {
    Py_CLEAR(state->error);
    for (int i = 0; i < AVQ_PY_NEXC; i++) Py_CLEAR(state->exc[i]);
}

static int exc_index(avq_status st) {
    switch (st) {
    case AVQ_ERR_ARG:
    case AVQ_ERR_SHAPE:
    case AVQ_ERR_IO: return AVQ_PY_EXC_VALUE;
    case AVQ_ERR_DTYPE: return AVQ_PY_EXC_TYPE;
    case AVQ_ERR_MEMORY: return AVQ_PY_EXC_MEMORY;
    case AVQ_ERR_NUMERIC: return AVQ_PY_EXC_NUMERIC;
    default: return AVQ_PY_EXC_ENGINE;
    }
}

PyObject *avq_py_exc(avq_status st) {
    static PyObject *const *builtin[AVQ_PY_NEXC] = {&PyExc_ValueError, &PyExc_TypeError, &PyExc_MemoryError,
                                                    &PyExc_FloatingPointError, &PyExc_RuntimeError};
    if (st == AVQ_ERR_ABORTED) return PyExc_KeyboardInterrupt;
    const int i = exc_index(st);
    /* The classes are read from the module's state, not from a C global: the
     * state is what the interpreter keeps alive (and frees at shutdown). */
    static PyObject *name; /* interned once, kept for the process */
    if (!name && !(name = PyUnicode_InternFromString("asymvq._core"))) {
        PyErr_Clear();
        return *builtin[i];
    }
    PyObject *m = PyImport_GetModule(name); /* new reference or NULL */
    avq_py_state *state = m ? PyModule_GetState(m) : NULL;
    PyObject *cls = state && state->exc[i] ? state->exc[i] : *builtin[i];
    Py_XDECREF(m); /* sys.modules still holds the module, hence the class */
    if (!state) PyErr_Clear();
    return cls;
}

PyObject *avq_py_raise(avq_status st) {
    if (!PyErr_Occurred()) PyErr_SetString(avq_py_exc(st), avq_last_error());
    return NULL;
}
