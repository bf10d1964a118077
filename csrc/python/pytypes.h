/* Shorthands for the tables of the binding's heap types. */
#ifndef AVQ_PY_PYTYPES_H
#define AVQ_PY_PYTYPES_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* A METH_VARARGS | METH_KEYWORDS entry of a PyMethodDef table. */
#define AVQ_PY_KW_METHOD(name, fn, doc) {name, (PyCFunction)(void (*)(void))(fn), METH_VARARGS | METH_KEYWORDS, doc}

/* A read-only attribute of a PyGetSetDef table. */
#define AVQ_PY_GETTER(name, fn, doc) {name, (getter)(fn), NULL, doc, NULL}

/* The end of a PyType_Slot table: constructor, methods, docstring. */
#define AVQ_PY_TYPE_SLOTS(new_fn, methods, doc) \
    {Py_tp_new, new_fn}, {Py_tp_methods, methods}, {Py_tp_doc, doc}, { 0, NULL }

#endif
