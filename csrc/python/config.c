/* The config-dict parser (see config.h). */
#include "config.h"

#include <string.h>

#include "errors.h"

#define AVQ_PY_CONFIG_MAX (1 << 20)

/* An int in [-1, AVQ_PY_CONFIG_MAX], or -1 with an exception naming key[index]. */
static int as_int(PyObject *v, const char *what, const char *key, Py_ssize_t index, int *out) {
    int overflow = 0;
    long long x = 0;
    /* an int, or an integer type such as numpy's (__index__), but not a bool */
    PyObject *i = PyIndex_Check(v) && !PyBool_Check(v) ? PyNumber_Index(v) : NULL;
    if (i) {
        x = PyLong_AsLongLongAndOverflow(i, &overflow);
        Py_DECREF(i);
    }
    if (!i || (x == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        if (index < 0)
            PyErr_Format(avq_py_exc(AVQ_ERR_DTYPE), "%s: %s must be an int, got %s", what, key, Py_TYPE(v)->tp_name);
        else
            PyErr_Format(avq_py_exc(AVQ_ERR_DTYPE), "%s: %s[%zd] must be an int, got %s", what, key, index,
                         Py_TYPE(v)->tp_name);
        return -1;
    }
    /* -1 is the "unset" of some fields; no width or count comes near 2^20, and
     * the cap keeps the C model's size arithmetic far from overflowing */
    if (overflow || x < -1 || x > AVQ_PY_CONFIG_MAX) {
        PyErr_Format(avq_py_exc(AVQ_ERR_ARG), "%s: %s = %R is out of range (-1 to %d)", what, key, v,
                     AVQ_PY_CONFIG_MAX);
        return -1;
    }
    *out = (int)x;
    return 0;
}

static int parse_ints(PyObject *v, const char *what, const avq_py_field *f, char *base) {
    PyObject *seq = PyUnicode_Check(v) || PyBytes_Check(v) ? NULL : PySequence_Fast(v, "");
    if (!seq) {
        PyErr_Clear();
        PyErr_Format(avq_py_exc(AVQ_ERR_DTYPE), "%s: %s must be a sequence of ints, got %s", what, f->key,
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int rc = 0;
    if (n < f->min_count || n > f->max_count) {
        if (f->min_count == f->max_count)
            PyErr_Format(avq_py_exc(AVQ_ERR_ARG), "%s: %s must have %d entries, got %zd", what, f->key, f->max_count,
                         n);
        else
            PyErr_Format(avq_py_exc(AVQ_ERR_ARG), "%s: %s must have %d to %d entries, got %zd", what, f->key,
                         f->min_count, f->max_count, n);
        rc = -1;
    }
    int *dst = (int *)(base + f->offset);
    for (Py_ssize_t i = 0; rc == 0 && i < n; i++)
        rc = as_int(PySequence_Fast_GET_ITEM(seq, i), what, f->key, i, &dst[i]);
    Py_DECREF(seq);
    if (rc == 0 && f->count_offset != AVQ_PY_NO_COUNT) *(int *)(base + f->count_offset) = (int)n;
    return rc;
}

static int parse_str(PyObject *v, const char *what, const avq_py_field *f, char *dst) {
    if (v == Py_None) {
        dst[0] = '\0';
        return 0;
    }
    const char *s = PyUnicode_Check(v) ? PyUnicode_AsUTF8(v) : NULL;
    if (!s) {
        PyErr_Clear();
        PyErr_Format(avq_py_exc(AVQ_ERR_DTYPE), "%s: %s must be a string", what, f->key);
        return -1;
    }
    if (strlen(s) >= (size_t)f->max_count) {
        PyErr_Format(avq_py_exc(AVQ_ERR_ARG), "%s: %s %R is too long", what, f->key, v);
        return -1;
    }
    strcpy(dst, s);
    return 0;
}

int avq_py_parse_config(PyObject *cfg, const char *what, const avq_py_field *fields, size_t n, void *out) {
    if (!PyDict_Check(cfg)) {
        PyErr_Format(avq_py_exc(AVQ_ERR_DTYPE), "%s must be a dict, got %s", what, Py_TYPE(cfg)->tp_name);
        return -1;
    }
    char *base = out;
    for (size_t i = 0; i < n; i++) {
        const avq_py_field *f = &fields[i];
        PyObject *v = PyDict_GetItemString(cfg, f->key); /* borrowed */
        if (!v) {
            if (f->required) {
                PyErr_Format(avq_py_exc(AVQ_ERR_ARG), "%s: missing '%s'", what, f->key);
                return -1;
            }
            if (f->kind == AVQ_PY_INT || f->kind == AVQ_PY_BOOL) *(int *)(base + f->offset) = f->dflt;
            if (f->kind == AVQ_PY_STR) base[f->offset] = '\0';
            continue;
        }
        int rc = 0;
        switch (f->kind) {
        case AVQ_PY_INT: rc = as_int(v, what, f->key, -1, (int *)(base + f->offset)); break;
        case AVQ_PY_INTS: rc = parse_ints(v, what, f, base); break;
        case AVQ_PY_BOOL: {
            int b = PyObject_IsTrue(v);
            if (b < 0) return -1;
            *(int *)(base + f->offset) = b;
            break;
        }
        case AVQ_PY_STR: rc = parse_str(v, what, f, base + f->offset); break;
        }
        if (rc < 0) return -1;
    }
    return 0;
}
