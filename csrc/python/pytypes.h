/* Shorthands for the tables of the binding's heap types. */
#ifndef AVQ_PY_PYTYPES_H
#define AVQ_PY_PYTYPES_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* PyModule_AddObjectRef (Python 3.10) for 3.9: adds `value` to `m` as a new
 * reference. -1 with an exception set. */
static inline int avq_py_add_object(PyObject *m, const char *name, PyObject *value) {
    Py_INCREF(value);
    if (PyModule_AddObject(m, name, value) < 0) {
        Py_DECREF(value);
        return -1;
    }
    return 0;
}

/* A METH_VARARGS | METH_KEYWORDS entry of a PyMethodDef table. */
#define AVQ_PY_KW_METHOD(name, fn, doc) {name, (PyCFunction)(void (*)(void))(fn), METH_VARARGS | METH_KEYWORDS, doc}

/* A read-only attribute of a PyGetSetDef table. */
#define AVQ_PY_GETTER(name, fn, doc) {name, (getter)(fn), NULL, doc, NULL}

/* The end of a PyType_Slot table: constructor, methods, docstring. */
#define AVQ_PY_TYPE_SLOTS(new_fn, methods, doc) \
    {Py_tp_new, new_fn}, {Py_tp_methods, methods}, {Py_tp_doc, doc}, { 0, NULL }

/* A module function that is one variant of a shared implementation:
 * name(module, args, kwargs) -> common(args, kwargs, variant). */
#define AVQ_PY_VARIANT(name, common, variant)                               \
    static PyObject *name(PyObject *module, PyObject *args, PyObject *kw) { \
        (void)module;                                                       \
        return common(args, kw, variant);                                   \
    }

#endif
