/* Plans: everything a forward needs for one input shape, built once.
 *
 * A model's forward function is written once and run in two modes. The first
 * call builds: each oneDNN op creates its primitive and memory objects and
 * appends a step; activations get arena offsets from a deterministic first-fit
 * allocator, so the arena's peak is measured. Later calls run: the same code
 * walks the recorded steps in order, the same allocation sequence yields the
 * same offsets inside one arena allocated at the end of the build, and nothing
 * is created or allocated. One user-mode scratchpad per plan lets a plan run
 * on any thread (the GIL is released around compute). */
#ifndef AVQ_PLAN_H
#define AVQ_PLAN_H

#include "tensor.h"

#define AVQ_STEP_MAX_ARGS 10

typedef struct avq_step {
    int kind; /* op tag: a run must replay the build's sequence exactly */
    dnnl_primitive_t prim;
    int nargs;
    dnnl_exec_arg_t args[AVQ_STEP_MAX_ARGS];
    unsigned char owned[AVQ_STEP_MAX_ARGS]; /* memory objects this step destroys */
    int64_t iaux[6];                        /* op-private integers */
} avq_step;

typedef struct avq_plan avq_plan;

avq_status avq_plan_create(avq_plan **out);
void avq_plan_destroy(avq_plan *p);

int avq_plan_building(const avq_plan *p);
int avq_plan_built(const avq_plan *p);
size_t avq_plan_arena_bytes(const avq_plan *p);
size_t avq_plan_scratch_bytes(const avq_plan *p);
size_t avq_plan_num_steps(const avq_plan *p);

/* Memory between runs. A built plan holds its arena and scratchpad (sized by
 * avq_plan_arena_bytes / avq_plan_scratch_bytes) until they are released;
 * the next run allocates them again (same sizes, same offsets), so a model
 * that is idle for a while (a pipeline stage that is over) need not hold its
 * activations. Not while a run is in progress (the caller serialises). */
void avq_plan_release_buffers(avq_plan *p);
/* Arena + scratchpad bytes this plan holds now (0 once released). */
size_t avq_plan_resident_bytes(const avq_plan *p);
/* The same over every plan of the process. */
size_t avq_plan_total_resident_bytes(void);
/* Hands the allocator's free memory back to the system (glibc's malloc_trim:
 * freed weights and small buffers otherwise stay in the process's heap). */
void avq_memory_trim(void);

/* Spilling: an arena larger than `budget` bytes is backed by an unlinked
 * temporary file in `dir` (mkstemp there, unlinked at once, its blocks
 * reserved with posix_fallocate so that a full disk fails here and not as a
 * SIGBUS mid-run, mapped MAP_SHARED) instead of anonymous memory. dir NULL
 * (the default): never. The setting is copied and takes effect at the next
 * run's allocation: held buffers of the other kind are released. Not while a
 * run is in progress. A directory that is missing, not writable, in memory
 * (tmpfs, ramfs: spilling there bounds nothing) or without room for the arena
 * is AVQ_ERR_IO at that run, naming the directory and the size. The file is
 * gone (unmapped, and closed right after mapping) once the buffers are
 * released or the plan destroyed. `optional` (the automatic setting of a
 * caller that did not ask for spilling): a spill file that cannot be made
 * leaves the arena in memory, as without spilling, instead of failing. */
avq_status avq_plan_set_spill(avq_plan *p, const char *dir, size_t budget, int optional);
/* 1 while the held arena is a spill file mapping. */
int avq_plan_spilled(const avq_plan *p);
/* Drops the whole pages inside [ptr, ptr + bytes) of a spilled arena from
 * the process (madvise MADV_DONTNEED): resident memory falls, the content
 * stays in the file (page cache, written back and reclaimed by the kernel as
 * it needs) and is faulted back in by the next access. A hint: a no-op for an
 * anonymous arena (there it would zero the content), while building, and for
 * memory outside the arena. avq_plan_release drops a released block too. */
void avq_plan_drop(avq_plan *p, const void *ptr, size_t bytes);

/* Drop-behind for a whole-tensor pass that the caller cannot cut into
 * bands (an op that reads all of a spilled tensor, e.g. GroupNorm
 * statistics): between begin and end a helper thread drops [ptr, ptr + bytes)
 * every AVQ_DROP_BEHIND_MS, so only what the pass touched since the last tick
 * stays resident. Safe while the pass reads or writes the range: a dropped
 * page of a shared file mapping keeps its content and is faulted back in.
 * begin sets *out to NULL (nothing runs) unless the arena is spilled and a
 * run is in progress, or when no thread can be started (the pass then keeps
 * its pages until the caller drops them); end(NULL) is a no-op, end drops the
 * range a last time. */
#define AVQ_DROP_BEHIND_MS 2
typedef struct avq_drop_behind avq_drop_behind;
void avq_plan_drop_behind_begin(avq_plan *p, const void *ptr, size_t bytes, avq_drop_behind **out);
void avq_plan_drop_behind_end(avq_drop_behind *d);

/* Cooperative abort: a run (or build) on a thread whose flag (borrowed; set
 * around one model call, which runs its steps on that thread, e.g. by the
 * Python binding for Ctrl-C) becomes nonzero stops at the next step (op) with
 * AVQ_ERR_ABORTED; the plan stays usable (an interrupted build leaves it
 * empty, to be built again). */
void avq_plan_set_thread_abort_flag(const volatile int *flag);

typedef avq_status (*avq_forward_fn)(avq_plan *p, void *ctx);
/* Builds on first use, then runs `fn`. A failed build leaves the plan empty. */
avq_status avq_plan_run(avq_plan *p, avq_forward_fn fn, void *ctx);

/* Arena tensors: fill dtype/layout/dims, then alloc; release when dead. */
avq_status avq_plan_alloc(avq_plan *p, avq_tensor *t);
void avq_plan_release(avq_plan *p, avq_tensor *t);
/* Convenience: make + alloc. */
avq_status avq_plan_tensor(avq_plan *p, avq_tensor *t, avq_dtype dt, avq_layout layout, int ndim, const int64_t *dims);

/* Steps for oneDNN ops. Build: appends a step of `kind`. Run: returns the
 * next step, checking it has that kind. */
avq_status avq_plan_step(avq_plan *p, int kind, avq_step **out);
/* Creates the primitive from `pd` (takes ownership of pd) and wires the
 * plan's scratchpad into the step. */
avq_status avq_step_set_primitive(avq_plan *p, avq_step *s, dnnl_primitive_desc_t pd);
/* An argument whose data handle is set at every run (activations). */
avq_status avq_step_arg(avq_step *s, int arg, const_dnnl_memory_desc_t md);
/* An argument bound once (packed weights; not owned). */
avq_status avq_step_arg_fixed(avq_step *s, int arg, dnnl_memory_t mem);
/* The buffer of one per-run argument, named by its oneDNN id (DNNL_ARG_SRC, ...). */
typedef struct avq_arg_data {
    int arg;
    void *data;
} avq_arg_data;
/* Binds every per-run argument of the step to the buffer given for its id (the
 * scratchpad to the plan's) and executes; an argument left without a buffer is
 * AVQ_ERR_INTERNAL. */
avq_status avq_step_exec(avq_plan *p, avq_step *s, const avq_arg_data *data, int ndata);

dnnl_engine_t avq_plan_engine(const avq_plan *p);

/* AVQ_ERR_MEMORY unless a few tens of MiB of address space are left: oneDNN
 * 3.2 crashes instead of failing when it runs out while creating a descriptor
 * or primitive (plan.c says how), so creation is not attempted without room.
 * `what` ends the message ("... left to <what>"). */
avq_status avq_memory_headroom(const char *what);
/* dnnl_primitive_create behind that check; a failure for lack of memory is
 * AVQ_ERR_MEMORY and does not stay in oneDNN's primitive cache. */
avq_status avq_primitive_create(dnnl_primitive_t *prim, const_dnnl_primitive_desc_t pd, const char *what);

#endif
