/* asymvq._core.Model: what every model binding shares (see model.h). */
#include "model.h"

#include <string.h>

#include "arrays.h"
#include "core/weight.h"

PyObject *avq_py_model_new(PyTypeObject *type, const avq_py_model_kind *kind, void *model) {
    avq_py_model *self = (avq_py_model *)type->tp_alloc(type, 0);
    if (!self) {
        kind->destroy(model);
        return NULL;
    }
    self->kind = kind;
    self->model = model;
    if (avq_py_plan_cache_init(&self->plans, &kind->plans, model) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void model_dealloc(avq_py_model *self) {
    PyTypeObject *tp = Py_TYPE(self);
    avq_py_plan_cache_fini(&self->plans); /* no pin is left: each holds this object */
    if (self->kind && self->model) self->kind->destroy(self->model);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *model_clear_plans(avq_py_model *self, PyObject *noargs) {
    (void)noargs;
    avq_py_plan_cache_clear(&self->plans); /* pinned plans stay */
    Py_RETURN_NONE;
}

static PyObject *model_release_memory(avq_py_model *self, PyObject *noargs) {
    (void)noargs;
    avq_py_plan_cache_release(&self->plans); /* pinned plans keep theirs */
    avq_memory_trim();
    Py_RETURN_NONE;
}

/* Process-wide figures: every model's weights and plans, whichever object holds them. */
static PyObject *model_process_memory(PyObject *unused, PyObject *noargs) {
    (void)unused;
    (void)noargs;
    return Py_BuildValue("{s:n,s:n}", "weight_bytes", (Py_ssize_t)avq_weight_live_bytes(), "plan_bytes",
                         (Py_ssize_t)avq_plan_total_resident_bytes());
}

static PyObject *model_trim(PyObject *unused, PyObject *noargs) {
    (void)unused;
    (void)noargs;
    avq_memory_trim();
    Py_RETURN_NONE;
}

static PyObject *model_plans(avq_py_model *self, PyObject *noargs) {
    (void)noargs;
    return avq_py_plan_cache_list(&self->plans);
}

static PyObject *get_memory_bytes(avq_py_model *self, void *closure) {
    (void)closure;
    return PyLong_FromSize_t(avq_py_plan_cache_bytes(&self->plans));
}

static PyObject *get_num_parameters(avq_py_model *self, void *closure) {
    (void)closure;
    return PyLong_FromLongLong((long long)self->kind->num_params(self->model));
}

static PyObject *get_precision(avq_py_model *self, void *closure) {
    (void)closure;
    return avq_py_precision_name(self->kind->precision(self->model));
}

/* Only the subtypes (with their own constructor) make objects; the flag
 * Py_TPFLAGS_DISALLOW_INSTANTIATION needs Python 3.10. */
static PyObject *model_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    (void)args;
    (void)kw;
    return PyErr_Format(PyExc_TypeError, "cannot create '%s' instances", type->tp_name);
}

static PyMethodDef model_methods[] = {
    {"clear_plans", (PyCFunction)model_clear_plans, METH_NOARGS,
     "Free every cached plan that no sampler pins (they are rebuilt on demand)."},
    {"release_memory", (PyCFunction)model_release_memory, METH_NOARGS,
     "Free the arenas and scratchpads of the cached plans, keeping the plans (the next call allocates them "
     "again), and hand freed memory back to the system."},
    {"plans", (PyCFunction)model_plans, METH_NOARGS,
     "The cached plans, least recently used first: [task,] shape, bytes, arena_bytes, scratch_bytes, resident, "
     "steps."},
    {"process_memory", (PyCFunction)model_process_memory, METH_NOARGS | METH_STATIC,
     "Bytes held now by every model of the process: {'weight_bytes': owned and packed weights, 'plan_bytes': "
     "plan arenas and scratchpads}."},
    {"trim", (PyCFunction)model_trim, METH_NOARGS | METH_STATIC,
     "Hand the allocator's free memory back to the system (malloc_trim)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef model_getset[] = {
    AVQ_PY_GETTER("precision", get_precision, "Activation precision: 'fp32' or 'bf16'."),
    AVQ_PY_GETTER("num_parameters", get_num_parameters, "Parameters held."),
    AVQ_PY_GETTER("memory_bytes", get_memory_bytes, "Activation arena + scratchpad bytes the cached plans hold now."),
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot model_slots[] = {
    {Py_tp_dealloc, model_dealloc},
    {Py_tp_getset, model_getset},
    AVQ_PY_TYPE_SLOTS(model_new, model_methods,
                      "The base of the C models: one plan cache, one concurrency rule, one set of names (private)."),
};

static PyType_Spec model_spec = {
    "asymvq._core.Model", sizeof(avq_py_model), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE, model_slots,
};

int avq_py_model_add_type(PyObject *m, PyType_Spec *spec, PyTypeObject **keep) {
    PyObject *base = PyObject_GetAttrString(m, "Model");
    if (!base) {
        PyErr_Clear();
        if (!(base = PyType_FromSpec(&model_spec)) || avq_py_add_object(m, "Model", base) < 0) {
            Py_XDECREF(base);
            return -1;
        }
    }
    PyObject *type = PyType_FromSpecWithBases(spec, base);
    Py_DECREF(base);
    const char *dot = strrchr(spec->name, '.');
    if (!type || avq_py_add_object(m, dot ? dot + 1 : spec->name, type) < 0) {
        Py_XDECREF(type);
        return -1;
    }
    if (keep)
        *keep = (PyTypeObject *)type;
    else
        Py_DECREF(type); /* the module holds it */
    return 0;
}
