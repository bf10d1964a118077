/* The bounded, locked plan cache of the model bindings (see plan_cache.h). */
#include "plan_cache.h"

#include <string.h>

#include "errors.h"
#include "interrupt.h"

int avq_py_plan_cache_init(avq_py_plan_cache *c, const avq_py_plan_kind *kind, const void *model) {
    memset(c, 0, sizeof *c);
    c->kind = kind;
    c->model = model;
    c->lock = PyThread_allocate_lock();
    if (!c->lock) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void free_slot(avq_py_plan_cache *c, avq_py_plan_slot *s) {
    if (s->plan) c->kind->destroy(s->plan);
    memset(s, 0, sizeof *s);
}

void avq_py_plan_cache_fini(avq_py_plan_cache *c) {
    for (int i = 0; i < AVQ_PY_PLAN_CACHE_SIZE; i++) free_slot(c, &c->slots[i]);
    if (c->lock) PyThread_free_lock(c->lock);
    c->lock = NULL;
}

/* Takes the lock, letting other Python threads run while waiting. GIL held. */
static void lock_gil_held(avq_py_plan_cache *c) {
    if (PyThread_acquire_lock(c->lock, NOWAIT_LOCK)) return;
    Py_BEGIN_ALLOW_THREADS PyThread_acquire_lock(c->lock, WAIT_LOCK);
    Py_END_ALLOW_THREADS
}

/* Field by field: a key's padding is not initialised. */
static int same_key(const avq_py_plan_key *a, const avq_py_plan_key *b) {
    if (a->task != b->task) return 0;
    for (int i = 0; i < AVQ_PY_PLAN_DIMS; i++)
        if (a->dims[i] != b->dims[i]) return 0;
    return 1;
}

enum { GOT_PLAN = 0, GOT_PINNED, GOT_ALL_PINNED, GOT_ERROR };

/* The slot for `key`, or a new plan in the least recently used unpinned slot.
 * Lock held; no Python API (may run without the GIL). */
static int get_slot(avq_py_plan_cache *c, const avq_py_plan_key *key, avq_py_plan_slot **out, avq_status *st) {
    avq_py_plan_slot *victim = NULL;
    for (int i = 0; i < AVQ_PY_PLAN_CACHE_SIZE; i++) {
        avq_py_plan_slot *s = &c->slots[i];
        if (s->plan && same_key(&s->key, key)) {
            s->last_use = ++c->clock;
            *out = s;
            return s->pins ? GOT_PINNED : GOT_PLAN;
        }
        if (s->pins) continue;
        if (!victim || !s->plan || (victim->plan && s->last_use < victim->last_use)) victim = s;
    }
    if (!victim) return GOT_ALL_PINNED;
    free_slot(c, victim);
    void *plan = NULL;
    *st = c->kind->create(c->model, key, &plan);
    if (*st != AVQ_OK) return GOT_ERROR;
    victim->key = *key;
    victim->plan = plan;
    victim->last_use = ++c->clock;
    *out = victim;
    return GOT_PLAN;
}

/* Turns a get_slot result other than GOT_PLAN into an exception. */
static void raise_got(avq_py_plan_cache *c, int got, avq_status st) {
    if (got == GOT_PINNED)
        PyErr_Format(avq_py_exc(AVQ_ERR_INTERNAL), "the %s's plan for this input shape is in use by a running sampler",
                     c->kind->model_name);
    else if (got == GOT_ALL_PINNED)
        PyErr_Format(avq_py_exc(AVQ_ERR_INTERNAL), "every cached %s plan is in use by a running sampler",
                     c->kind->model_name);
    else
        avq_py_raise_run(st);
}

int avq_py_plan_cache_run(avq_py_plan_cache *c, const avq_py_plan_key *key, avq_py_run_fn fn, void *ctx) {
    avq_status st = AVQ_OK;
    int got;
    if (avq_py_interrupt_begin() < 0) return -1;
    Py_BEGIN_ALLOW_THREADS PyThread_acquire_lock(c->lock, WAIT_LOCK);
    avq_plan_set_thread_abort_flag(avq_py_interrupt_flag());
    avq_py_plan_slot *slot = NULL;
    got = get_slot(c, key, &slot, &st);
    if (got == GOT_PLAN) {
        st = fn(slot->plan, ctx);
        if (st != AVQ_OK) got = GOT_ERROR;
    }
    avq_plan_set_thread_abort_flag(NULL);
    PyThread_release_lock(c->lock);
    Py_END_ALLOW_THREADS avq_py_interrupt_end();
    if (got == GOT_PLAN) return 0;
    raise_got(c, got, st);
    return -1;
}

PyObject *avq_py_plan_cache_call(avq_py_plan_cache *c, const avq_py_plan_key *key, avq_py_run_fn fn, void *ctx,
                                 PyObject *result) {
    if (result && avq_py_plan_cache_run(c, key, fn, ctx) < 0) Py_CLEAR(result);
    return result;
}

typedef struct plan_pin {
    avq_py_plan_cache *cache; /* inside owner */
    PyObject *owner;          /* strong reference */
    avq_py_plan_slot *slot;   /* a pinned slot is never reused */
} plan_pin;

static void pin_free(PyObject *cap) {
    plan_pin *pin = PyCapsule_GetContext(cap);
    if (!pin) return;
    lock_gil_held(pin->cache);
    pin->slot->pins--;
    PyThread_release_lock(pin->cache->lock);
    Py_DECREF(pin->owner);
    PyMem_Free(pin);
}

PyObject *avq_py_plan_cache_pin(avq_py_plan_cache *c, PyObject *owner, const avq_py_plan_key *key,
                                const char *capsule_name) {
    plan_pin *pin = PyMem_Malloc(sizeof *pin);
    if (!pin) return PyErr_NoMemory();
    avq_status st = AVQ_OK;
    avq_py_plan_slot *slot = NULL;
    lock_gil_held(c);
    int got = get_slot(c, key, &slot, &st);
    if (got == GOT_PLAN) slot->pins++;
    PyThread_release_lock(c->lock);
    if (got != GOT_PLAN) {
        PyMem_Free(pin);
        raise_got(c, got, st);
        return NULL;
    }
    *pin = (plan_pin){c, owner, slot};
    PyObject *cap = PyCapsule_New(slot->plan, capsule_name, pin_free);
    if (!cap || PyCapsule_SetContext(cap, pin) < 0) {
        Py_XDECREF(cap); /* its context is not set yet: no unpin happened */
        lock_gil_held(c);
        slot->pins--;
        PyThread_release_lock(c->lock);
        PyMem_Free(pin);
        return NULL;
    }
    Py_INCREF(owner);
    return cap;
}

void avq_py_plan_cache_clear(avq_py_plan_cache *c) {
    lock_gil_held(c);
    for (int i = 0; i < AVQ_PY_PLAN_CACHE_SIZE; i++)
        if (!c->slots[i].pins) free_slot(c, &c->slots[i]);
    PyThread_release_lock(c->lock);
}

void avq_py_plan_cache_release(avq_py_plan_cache *c) {
    lock_gil_held(c);
    for (int i = 0; i < AVQ_PY_PLAN_CACHE_SIZE; i++) {
        const avq_py_plan_slot *s = &c->slots[i];
        /* The cache owns the plan (core() hands it out read-only for the listing). */
        if (s->plan && !s->pins) avq_plan_release_buffers((avq_plan *)c->kind->core(s->plan));
    }
    PyThread_release_lock(c->lock);
}

size_t avq_py_plan_cache_bytes(avq_py_plan_cache *c) {
    size_t total = 0;
    lock_gil_held(c);
    for (int i = 0; i < AVQ_PY_PLAN_CACHE_SIZE; i++)
        if (c->slots[i].plan) total += avq_plan_resident_bytes(c->kind->core(c->slots[i].plan));
    PyThread_release_lock(c->lock);
    return total;
}

/* What the listing reports of one plan, copied under the lock so that no
 * Python object is made while it is held (a collection could free a pin). */
typedef struct plan_info {
    avq_py_plan_key key;
    unsigned long long last_use;
    size_t arena, scratch, steps;
    int resident;
} plan_info;

static PyObject *describe(const avq_py_plan_kind *kind, const plan_info *in) {
    PyObject *d = Py_BuildValue("{s:n,s:n,s:n,s:O,s:n}", "bytes", (Py_ssize_t)(in->arena + in->scratch), "arena_bytes",
                                (Py_ssize_t)in->arena, "scratch_bytes", (Py_ssize_t)in->scratch, "resident",
                                in->resident ? Py_True : Py_False, "steps", (Py_ssize_t)in->steps);
    if (d && kind->task_names) {
        PyObject *task = PyUnicode_FromString(kind->task_names[in->key.task]);
        if (!task || PyDict_SetItemString(d, "task", task) < 0) Py_CLEAR(d);
        Py_XDECREF(task);
    }
    for (int k = 0; d && k < AVQ_PY_PLAN_DIMS && kind->dim_names[k]; k++) {
        PyObject *v = PyLong_FromLongLong((long long)in->key.dims[k]);
        if (!v || PyDict_SetItemString(d, kind->dim_names[k], v) < 0) Py_CLEAR(d);
        Py_XDECREF(v);
    }
    return d;
}

PyObject *avq_py_plan_cache_list(avq_py_plan_cache *c) {
    plan_info info[AVQ_PY_PLAN_CACHE_SIZE];
    int n = 0;
    lock_gil_held(c);
    for (int i = 0; i < AVQ_PY_PLAN_CACHE_SIZE; i++) {
        const avq_py_plan_slot *s = &c->slots[i];
        const avq_plan *p = s->plan ? c->kind->core(s->plan) : NULL;
        if (!p || !avq_plan_built(p)) continue;
        int j = n++;
        for (; j > 0 && info[j - 1].last_use > s->last_use; j--) info[j] = info[j - 1];
        info[j] = (plan_info){s->key,
                              s->last_use,
                              avq_plan_arena_bytes(p),
                              avq_plan_scratch_bytes(p),
                              avq_plan_num_steps(p),
                              avq_plan_resident_bytes(p) > 0};
    }
    PyThread_release_lock(c->lock);
    PyObject *list = PyList_New(n);
    for (int i = 0; list && i < n; i++) {
        PyObject *d = describe(c->kind, &info[i]);
        if (!d)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, i, d);
    }
    return list;
}
