/* The one plan cache and concurrency rule of every model binding.
 *
 * A model object keeps at most AVQ_PY_PLAN_CACHE_SIZE plans, one per key
 * (task and up to four shape numbers); a new key replaces the least recently
 * used plan: a plan's arena can hold gigabytes (a 2x decoder at 1024 px), so
 * the cache is bounded. clear_plans() frees them (they are rebuilt on demand).
 *
 * Concurrency: the calls on one model are serialised by the cache's lock,
 * which a caller waits for with the GIL released (other Python threads run
 * meanwhile); different models run concurrently. A plan may also be pinned
 * (avq_py_plan_cache_pin, the sampler's C loop): a pinned plan runs outside
 * the lock, so it is never evicted or freed while pinned, and the model's own
 * calls refuse its key (asymvq.EngineError, a RuntimeError) instead of
 * sharing it. */
#ifndef AVQ_PY_PLAN_CACHE_H
#define AVQ_PY_PLAN_CACHE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pythread.h>

#include <stdint.h>

#include "core/plan.h"

#define AVQ_PY_PLAN_CACHE_SIZE 4
#define AVQ_PY_PLAN_DIMS       4

typedef struct avq_py_plan_key {
    int task; /* 0 unless the model has several (the autoencoder's encode / decode) */
    int64_t dims[AVQ_PY_PLAN_DIMS];
} avq_py_plan_key;

/* What the cache needs of one model family. */
typedef struct avq_py_plan_kind {
    const char *model_name;                  /* "UNet": in messages */
    const char *const *task_names;           /* NULL: one task, not listed */
    const char *dim_names[AVQ_PY_PLAN_DIMS]; /* NULL ends the shape */
    avq_status (*create)(const void *model, const avq_py_plan_key *key, void **out);
    void (*destroy)(void *plan);
    const avq_plan *(*core)(const void *plan); /* for arena / scratchpad bytes and steps */
} avq_py_plan_kind;

typedef struct avq_py_plan_slot {
    avq_py_plan_key key;
    void *plan; /* owned; NULL: free slot */
    unsigned long long last_use;
    int pins; /* live pins: the plan may be running without the lock */
} avq_py_plan_slot;

typedef struct avq_py_plan_cache {
    const avq_py_plan_kind *kind;
    const void *model; /* borrowed: the model outlives its cache */
    avq_py_plan_slot slots[AVQ_PY_PLAN_CACHE_SIZE];
    unsigned long long clock;
    PyThread_type_lock lock; /* owned; serialises runs and guards the slots */
} avq_py_plan_cache;

/* -1 with an exception set. */
int avq_py_plan_cache_init(avq_py_plan_cache *c, const avq_py_plan_kind *kind, const void *model);
/* Frees every plan and the lock (no pin may be left: each holds the owner). */
void avq_py_plan_cache_fini(avq_py_plan_cache *c);

/* The function a run calls with the lock held and without the GIL: no Python API. */
typedef avq_status (*avq_py_run_fn)(void *plan, void *ctx);
/* Runs fn on the plan for `key` (created on first use): Ctrl-C armed (it
 * raises KeyboardInterrupt), the GIL released, the lock held.
 * 0, or -1 with an exception set. */
int avq_py_plan_cache_run(avq_py_plan_cache *c, const avq_py_plan_key *key, avq_py_run_fn fn, void *ctx);

/* avq_py_plan_cache_run, then `result` (stolen: the run's outputs) on
 * success, or NULL with an exception set (and `result` released). */
PyObject *avq_py_plan_cache_call(avq_py_plan_cache *c, const avq_py_plan_key *key, avq_py_run_fn fn, void *ctx,
                                 PyObject *result);

/* A PyCapsule named `capsule_name` holding the plan for `key`, pinned while
 * the capsule lives; it keeps `owner` (the object holding the cache) alive. */
PyObject *avq_py_plan_cache_pin(avq_py_plan_cache *c, PyObject *owner, const avq_py_plan_key *key,
                                const char *capsule_name);

/* Frees the unpinned plans. */
void avq_py_plan_cache_clear(avq_py_plan_cache *c);
/* Frees the arenas and scratchpads of the unpinned plans, keeping the plans
 * (their next run allocates them again; avq_plan_release_buffers). */
void avq_py_plan_cache_release(avq_py_plan_cache *c);
/* Arena + scratchpad bytes the cached plans hold now (released ones: 0). */
size_t avq_py_plan_cache_bytes(avq_py_plan_cache *c);
/* [{"task"?, <dim names>..., "bytes", "arena_bytes", "scratch_bytes",
 * "resident", "steps"}] for each built plan, least recently used first
 * ("resident": its arena and scratchpad are held now). New reference or NULL. */
PyObject *avq_py_plan_cache_list(avq_py_plan_cache *c);

#endif
