/* The model protocol: asymvq._core.Model, the base type of asymvq._core.UNet,
 * Autoencoder and TextEncoder. It owns the C model and its plan cache
 * (plan_cache.h: the one caching and concurrency rule) and gives every model
 * the same names: precision, num_parameters, memory_bytes, plans(),
 * clear_plans(), release_memory(). A subtype adds its constructor and its compute methods. */
#ifndef AVQ_PY_MODEL_H
#define AVQ_PY_MODEL_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "plan_cache.h"
#include "pytypes.h"

typedef struct avq_py_model_kind {
    avq_py_plan_kind plans;
    int64_t (*num_params)(const void *model);
    avq_dtype (*precision)(const void *model);
    void (*destroy)(void *model);
} avq_py_model_kind;

typedef struct avq_py_model {
    PyObject_HEAD
    const avq_py_model_kind *kind; /* NULL until avq_py_model_init */
    void *model;                   /* owned */
    avq_py_plan_cache plans;
} avq_py_model;

/* The kind's functions over one model family's C API: every model names
 * them alike (avq_<prefix>_num_params, _precision, _destroy, _plan_destroy,
 * _plan_core); only plan creation differs, by the shape it takes. */
#define AVQ_PY_MODEL_FUNCTIONS(prefix)                                                \
    static int64_t num_params(const void *m) { return avq_##prefix##_num_params(m); } \
    static avq_dtype precision(const void *m) { return avq_##prefix##_precision(m); } \
    static void destroy(void *m) { avq_##prefix##_destroy(m); }                       \
    static void plan_destroy(void *p) { avq_##prefix##_plan_destroy(p); }             \
    static const avq_plan *plan_core(const void *p) { return avq_##prefix##_plan_core(p); }

/* A new object of `type` (a Model subtype) owning `model`, or NULL with an
 * exception set (then `model` is destroyed too). */
PyObject *avq_py_model_new(PyTypeObject *type, const avq_py_model_kind *kind, void *model);

/* Creates the subtype `spec` (its basicsize sizeof(avq_py_model)) of Model,
 * adding Model first when module `m` has none, and adds it to `m` under its
 * short name. With `keep`, *keep receives a reference kept for the process.
 * 0, or -1 with an exception set. */
int avq_py_model_add_type(PyObject *m, PyType_Spec *spec, PyTypeObject **keep);

#endif
