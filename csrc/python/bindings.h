/* What module.c adds to asymvq._core: one registration function per binding
 * file. Only module.c calls these; the binding files depend on the helpers
 * (errors, arrays, config, plan_cache, interrupt, weights), never on module.c. */
#ifndef AVQ_PY_BINDINGS_H
#define AVQ_PY_BINDINGS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

PyObject *avq_ops_module(void);
int avq_py_add_autoencoder(PyObject *m);
int avq_py_add_text_encoder(PyObject *m);
int avq_py_add_unet(PyObject *m);
int avq_py_add_sampler(PyObject *m);
int avq_py_add_tables(PyObject *m);

#endif
