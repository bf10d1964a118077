#include "plan.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>
#if defined(__GLIBC__) && defined(__x86_64__)
/* glibc 2.34 moved the pthread functions into libc under new symbol versions;
 * bind the x86-64 baseline ones so that the manylinux2014 wheel (glibc >= 2.17)
 * still loads. */
__asm__(".symver pthread_create,pthread_create@GLIBC_2.2.5");
__asm__(".symver pthread_join,pthread_join@GLIBC_2.2.5");
#endif
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "engine.h"

enum { PLAN_EMPTY = 0, PLAN_BUILDING, PLAN_BUILT, PLAN_RUNNING };

typedef struct span {
    int64_t off, size;
} span;

struct avq_plan {
    int state;
    int threads;          /* the thread count it was built for (per-thread workspaces are sized by it) */
    dnnl_engine_t engine; /* borrowed global */
    dnnl_stream_t stream; /* owned */

    avq_step *steps; /* owned */
    size_t nsteps, cap_steps, cursor;

    span *live; /* arena blocks alive now, sorted by offset */
    size_t nlive, cap_live;
    int64_t peak;
    int64_t *alloc_log; /* offsets handed out while building; a run must match */
    size_t nlog, cap_log, log_cursor;

    void *arena; /* owned, peak bytes */
    size_t arena_bytes;
    void *scratch; /* owned */
    size_t scratch_bytes;

    char *spill_dir;     /* owned; NULL: the arena is never file-backed */
    size_t spill_budget; /* arenas above this many bytes spill */
    int spill_optional;  /* a spill file that cannot be made leaves the arena in memory */
    int arena_mapped;    /* the held arena is a spill file mapping (munmap, not free) */
};

#define ARENA_ALIGN 64

avq_status avq_plan_create(avq_plan **out) {
    avq_plan *p = calloc(1, sizeof *p);
    if (!p) return avq_error(AVQ_ERR_MEMORY, "out of memory creating a plan");
    avq_status st = avq_engine_get(&p->engine);
    if (st == AVQ_OK && dnnl_stream_create(&p->stream, p->engine, dnnl_stream_default_flags) != dnnl_success)
        st = avq_error(AVQ_ERR_DNNL, "cannot create a oneDNN stream");
    if (st != AVQ_OK) {
        free(p);
        return st;
    }
    *out = p;
    return AVQ_OK;
}

static void free_steps(avq_plan *p) {
    for (size_t i = 0; i < p->nsteps; i++) {
        avq_step *s = &p->steps[i];
        for (int a = 0; a < s->nargs; a++)
            if (s->owned[a] && s->args[a].memory) dnnl_memory_destroy(s->args[a].memory);
        if (s->prim) dnnl_primitive_destroy(s->prim);
    }
    free(p->steps);
    p->steps = NULL;
    p->nsteps = p->cap_steps = p->cursor = 0;
}

/* Arena + scratchpad bytes held by all plans (what the memory report reads). */
static atomic_size_t resident_total;

static size_t page_size(void) {
    long ps = sysconf(_SC_PAGESIZE);
    return ps > 0 ? (size_t)ps : 4096;
}

/* A spill file's mapping covers whole pages. */
static size_t mapped_bytes(size_t bytes) {
    size_t ps = page_size();
    return (bytes ? bytes + ps - 1 : ps) / ps * ps;
}

static void free_buffers(avq_plan *p) {
    if (p->arena && p->scratch) atomic_fetch_sub(&resident_total, p->arena_bytes + p->scratch_bytes);
    if (p->arena_mapped && p->arena)
        munmap(p->arena, mapped_bytes(p->arena_bytes)); /* the file's last reference: it goes */
    else
        free(p->arena);
    free(p->scratch);
    p->arena = p->scratch = NULL;
    p->arena_mapped = 0;
}

static void reset(avq_plan *p) {
    free_steps(p);
    free_buffers(p);
    free(p->alloc_log);
    p->alloc_log = NULL;
    p->arena_bytes = p->scratch_bytes = 0;
    p->nlog = p->cap_log = p->log_cursor = 0;
    p->nlive = 0;
    p->peak = 0;
    p->state = PLAN_EMPTY;
}

void avq_plan_destroy(avq_plan *p) {
    if (!p) return;
    reset(p);
    free(p->live);
    free(p->spill_dir);
    if (p->stream) dnnl_stream_destroy(p->stream);
    free(p);
}

int avq_plan_building(const avq_plan *p) { return p->state == PLAN_BUILDING; }
int avq_plan_built(const avq_plan *p) { return p->state == PLAN_BUILT || p->state == PLAN_RUNNING; }
size_t avq_plan_arena_bytes(const avq_plan *p) { return p->arena_bytes; }
size_t avq_plan_scratch_bytes(const avq_plan *p) { return p->scratch_bytes; }
size_t avq_plan_num_steps(const avq_plan *p) { return p->nsteps; }
dnnl_engine_t avq_plan_engine(const avq_plan *p) { return p->engine; }

static _Thread_local const volatile int *thread_abort_flag; /* borrowed */

void avq_plan_set_thread_abort_flag(const volatile int *flag) { thread_abort_flag = flag; }

static void *aligned(size_t bytes) {
    if (bytes == 0) bytes = ARENA_ALIGN;
    bytes = (bytes + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    return aligned_alloc(ARENA_ALIGN, bytes);
}

static int wants_spill(const avq_plan *p) { return p->spill_dir && p->arena_bytes > p->spill_budget; }

#define TMPFS_MAGIC_ 0x01021994
#define RAMFS_MAGIC_ 0x858458f6

/* The arena as an unlinked file of `spill_dir`, mapped shared: its pages can
 * leave the process (avq_plan_drop) and the machine's memory (writeback)
 * without losing their content. */
static avq_status map_spill_file(avq_plan *p) {
    const size_t len = mapped_bytes(p->arena_bytes);
    const double gib = (double)len / (1 << 30);
    size_t n = strlen(p->spill_dir) + sizeof "/asymvq-arena-XXXXXX";
    char *path = malloc(n);
    if (!path) return avq_error(AVQ_ERR_MEMORY, "out of memory naming a spill file");
    snprintf(path, n, "%s/asymvq-arena-XXXXXX", p->spill_dir);
    int fd = mkstemp(path);
    if (fd < 0) {
        int e = errno;
        free(path);
        return avq_error(AVQ_ERR_IO, "cannot create a spill file for %zu bytes (%.2f GiB) of activations in %s: %s",
                         len, gib, p->spill_dir, strerror(e));
    }
    unlink(path); /* nameless from now on: no file outlives the mapping, whatever happens */
    free(path);
    struct statfs fs;
    avq_status st = AVQ_OK;
    int e;
    if (fstatfs(fd, &fs) == 0 && ((unsigned long)fs.f_type == TMPFS_MAGIC_ || (unsigned long)fs.f_type == RAMFS_MAGIC_))
        st = avq_error(AVQ_ERR_IO,
                       "spill directory %s is in memory (tmpfs/ramfs): spilling %zu bytes (%.2f GiB) there would "
                       "not bound memory; give a directory on a disk",
                       p->spill_dir, len, gib);
    else if ((e = posix_fallocate(fd, 0, (off_t)len)) != 0)
        st = avq_error(AVQ_ERR_IO, "cannot reserve %zu bytes (%.2f GiB) for a spill file in %s: %s", len, gib,
                       p->spill_dir, strerror(e));
    if (st == AVQ_OK) {
        void *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (a == MAP_FAILED)
            st = avq_error(AVQ_ERR_MEMORY, "cannot map a spill file of %zu bytes (%.2f GiB) in %s: %s", len, gib,
                           p->spill_dir, strerror(errno));
        else
            p->arena = a;
    }
    close(fd); /* the mapping holds the file */
    p->arena_mapped = st == AVQ_OK;
    return st;
}

/* The arena and scratchpad of a built plan (after the build, and again after
 * avq_plan_release_buffers). Large ones come from mmap and go back to the
 * system when freed; a spilled arena is a file mapping. */
static avq_status alloc_buffers(avq_plan *p) {
    if (p->arena && p->scratch && p->arena_mapped == wants_spill(p)) return AVQ_OK;
    free_buffers(p);
    if (wants_spill(p)) {
        avq_status st = map_spill_file(p);
        if (st != AVQ_OK && !p->spill_optional) return st;
    }
    if (!p->arena) p->arena = aligned(p->arena_bytes); /* not spilled, or optional and no file could be made */
    p->scratch = aligned(p->scratch_bytes);
    if (!p->arena || !p->scratch) {
        free_buffers(p);
        return avq_error(AVQ_ERR_MEMORY, "cannot allocate %zu bytes of activations", p->arena_bytes + p->scratch_bytes);
    }
    atomic_fetch_add(&resident_total, p->arena_bytes + p->scratch_bytes);
    return AVQ_OK;
}

static avq_status finish_build(avq_plan *p) {
    if (p->nlive != 0) return avq_error(AVQ_ERR_INTERNAL, "plan build leaked %zu arena tensors", p->nlive);
    p->arena_bytes = (size_t)p->peak;
    /* Packing weights while building frees each source once its packed copy
     * exists: the heap is left with hundreds of MB of holes (a 2x decoder:
     * 0.5 GB) that would sit beside the arena; hand them back first. */
    avq_memory_trim();
    AVQ_TRY(alloc_buffers(p));
    p->state = PLAN_BUILT;
    return AVQ_OK;
}

void avq_plan_release_buffers(avq_plan *p) {
    if (p->state == PLAN_BUILT) free_buffers(p);
}

size_t avq_plan_resident_bytes(const avq_plan *p) {
    return p->arena && p->scratch ? p->arena_bytes + p->scratch_bytes : 0;
}

size_t avq_plan_total_resident_bytes(void) { return atomic_load(&resident_total); }

avq_status avq_plan_set_spill(avq_plan *p, const char *dir, size_t budget, int optional) {
    if (p->state == PLAN_RUNNING || p->state == PLAN_BUILDING)
        return avq_error(AVQ_ERR_INTERNAL, "plan spill setting changed during a run");
    if (dir && !*dir) return avq_error(AVQ_ERR_ARG, "spill directory: empty path");
    if (dir && (!p->spill_dir || strcmp(dir, p->spill_dir) != 0)) {
        char *copy = strdup(dir);
        if (!copy) return avq_error(AVQ_ERR_MEMORY, "out of memory for the spill directory");
        free(p->spill_dir);
        p->spill_dir = copy;
        if (p->arena_mapped) free_buffers(p); /* its file is in the old directory */
    } else if (!dir) {
        free(p->spill_dir);
        p->spill_dir = NULL;
    }
    p->spill_budget = budget;
    p->spill_optional = optional;
    /* held buffers of the other kind go; the next run allocates the right one */
    if (p->state == PLAN_BUILT && p->arena && p->arena_mapped != wants_spill(p)) free_buffers(p);
    return AVQ_OK;
}

int avq_plan_spilled(const avq_plan *p) { return p->arena && p->arena_mapped; }

/* The whole pages of [ptr, ptr + bytes) inside a spilled arena during a run: *a, *b (empty: a == b). */
static void drop_range(const avq_plan *p, const void *ptr, size_t bytes, uintptr_t *a, uintptr_t *b) {
    *a = *b = 0;
    if (!p->arena_mapped || !p->arena || !ptr || p->state != PLAN_RUNNING) return;
    const uintptr_t lo = (uintptr_t)p->arena, hi = lo + p->arena_bytes, ps = page_size();
    uintptr_t x = (uintptr_t)ptr, y = x + bytes;
    if (x < lo) x = lo;
    if (y > hi) y = hi;
    x = (x + ps - 1) / ps * ps; /* whole pages only: a neighbour's bytes stay */
    y = y / ps * ps;
    if (y > x) *a = x, *b = y;
}

void avq_plan_drop(avq_plan *p, const void *ptr, size_t bytes) {
    uintptr_t a, b;
    drop_range(p, ptr, bytes, &a, &b);
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
}

struct avq_drop_behind {
    pthread_t thread;
    atomic_int stop;
    void *lo;
    size_t len;
};

static void *drop_behind_loop(void *arg) {
    avq_drop_behind *d = arg;
    const struct timespec tick = {0, AVQ_DROP_BEHIND_MS * 1000000L};
    while (!atomic_load(&d->stop)) {
        nanosleep(&tick, NULL);
        madvise(d->lo, d->len, MADV_DONTNEED);
    }
    return NULL;
}

void avq_plan_drop_behind_begin(avq_plan *p, const void *ptr, size_t bytes, avq_drop_behind **out) {
    uintptr_t a, b;
    *out = NULL;
    drop_range(p, ptr, bytes, &a, &b);
    if (b <= a) return;
    avq_drop_behind *d = malloc(sizeof *d);
    if (!d) return; /* an optimisation only: the pass then keeps its pages until dropped */
    atomic_init(&d->stop, 0);
    d->lo = (void *)a;
    d->len = b - a;
    if (pthread_create(&d->thread, NULL, drop_behind_loop, d) != 0) {
        free(d);
        return;
    }
    *out = d;
}

void avq_plan_drop_behind_end(avq_drop_behind *d) {
    if (!d) return;
    atomic_store(&d->stop, 1);
    pthread_join(d->thread, NULL);
    madvise(d->lo, d->len, MADV_DONTNEED);
    free(d);
}

void avq_memory_trim(void) {
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

avq_status avq_plan_run(avq_plan *p, avq_forward_fn fn, void *ctx) {
    avq_threads_enter();
    /* Kernels size per-thread workspaces at build: a plan built for fewer threads than now
     * would be overrun (asymvq.set_num_threads between calls), so a new count rebuilds it. */
    const int threads = avq_get_num_threads();
    if (p->state == PLAN_BUILT && p->threads != threads) reset(p);
    if (p->state == PLAN_EMPTY) {
        p->state = PLAN_BUILDING;
        p->nlive = 0;
        avq_status st = fn(p, ctx);
        if (st == AVQ_OK) st = finish_build(p);
        if (st != AVQ_OK) {
            reset(p);
            return st;
        }
        p->threads = threads;
    }
    if (p->state != PLAN_BUILT) return avq_error(AVQ_ERR_INTERNAL, "plan is in use by another run");
    AVQ_TRY(alloc_buffers(p)); /* released since the last run */
    p->state = PLAN_RUNNING;
    p->cursor = 0;
    p->log_cursor = 0;
    p->nlive = 0;
    avq_status st = fn(p, ctx);
    if (st == AVQ_OK && p->cursor != p->nsteps)
        st = avq_error(AVQ_ERR_INTERNAL, "run executed %zu of %zu planned steps", p->cursor, p->nsteps);
    p->state = PLAN_BUILT;
    return st;
}

/* First fit over the gaps between live blocks: deterministic, so the build
 * and every run hand out identical offsets for the same sequence. */
avq_status avq_plan_alloc(avq_plan *p, avq_tensor *t) {
    int64_t size = (int64_t)((avq_tensor_bytes(t) + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN);
    if (size == 0) size = ARENA_ALIGN;
    if (p->state != PLAN_BUILDING && p->state != PLAN_RUNNING)
        return avq_error(AVQ_ERR_INTERNAL, "arena allocation outside a plan pass");
    int64_t off = 0;
    size_t pos = 0;
    for (; pos < p->nlive; pos++) {
        if (p->live[pos].off - off >= size) break;
        off = p->live[pos].off + p->live[pos].size;
    }
    if (p->nlive == p->cap_live) {
        if (p->state == PLAN_RUNNING) return avq_error(AVQ_ERR_INTERNAL, "arena replay diverged");
        size_t cap = p->cap_live ? 2 * p->cap_live : 64;
        span *nl = realloc(p->live, cap * sizeof *nl);
        if (!nl) return avq_error(AVQ_ERR_MEMORY, "out of memory planning activations");
        p->live = nl;
        p->cap_live = cap;
    }
    memmove(&p->live[pos + 1], &p->live[pos], (p->nlive - pos) * sizeof(span));
    p->live[pos].off = off;
    p->live[pos].size = size;
    p->nlive++;
    if (off + size > p->peak) p->peak = off + size;
    t->arena_off = off;
    if (p->state == PLAN_BUILDING) {
        if (p->nlog == p->cap_log) {
            size_t cap = p->cap_log ? 2 * p->cap_log : 256;
            int64_t *nl = realloc(p->alloc_log, cap * sizeof *nl);
            if (!nl) return avq_error(AVQ_ERR_MEMORY, "out of memory planning activations");
            p->alloc_log = nl;
            p->cap_log = cap;
        }
        p->alloc_log[p->nlog++] = off;
        t->data = NULL;
    } else {
        if (p->log_cursor >= p->nlog || p->alloc_log[p->log_cursor] != off)
            return avq_error(AVQ_ERR_INTERNAL, "arena replay diverged from the build");
        p->log_cursor++;
        t->data = (char *)p->arena + off;
    }
    return AVQ_OK;
}

void avq_plan_release(avq_plan *p, avq_tensor *t) {
    if (t->arena_off < 0) return;
    for (size_t i = 0; i < p->nlive; i++) {
        if (p->live[i].off == t->arena_off) {
            if (p->arena_mapped && p->state == PLAN_RUNNING)
                avq_plan_drop(p, (char *)p->arena + p->live[i].off, (size_t)p->live[i].size);
            memmove(&p->live[i], &p->live[i + 1], (p->nlive - i - 1) * sizeof(span));
            p->nlive--;
            break;
        }
    }
    t->arena_off = -1;
    t->data = NULL;
}

avq_status avq_plan_tensor(avq_plan *p, avq_tensor *t, avq_dtype dt, avq_layout layout, int ndim, const int64_t *dims) {
    *t = avq_tensor_make(dt, layout, ndim, dims);
    return avq_plan_alloc(p, t);
}

avq_status avq_plan_step(avq_plan *p, int kind, avq_step **out) {
    /* Every op asks for its step first: the one place to notice an abort
     * between layers, building or running. */
    if (thread_abort_flag && *thread_abort_flag) return avq_error(AVQ_ERR_ABORTED, "interrupted");
    if (p->state == PLAN_BUILDING) {
        /* The op about to be built creates oneDNN descriptors (see CREATE_HEADROOM). */
        AVQ_TRY(avq_memory_headroom("build the next layer"));
        if (p->nsteps == p->cap_steps) {
            size_t cap = p->cap_steps ? 2 * p->cap_steps : 64;
            avq_step *ns = realloc(p->steps, cap * sizeof *ns);
            if (!ns) return avq_error(AVQ_ERR_MEMORY, "out of memory building a plan");
            p->steps = ns;
            p->cap_steps = cap;
        }
        avq_step *s = &p->steps[p->nsteps++];
        memset(s, 0, sizeof *s);
        s->kind = kind;
        *out = s;
        return AVQ_OK;
    }
    if (p->state != PLAN_RUNNING) return avq_error(AVQ_ERR_INTERNAL, "op called outside a plan pass");
    if (p->cursor >= p->nsteps || p->steps[p->cursor].kind != kind)
        return avq_error(AVQ_ERR_INTERNAL, "plan replay diverged at step %zu", p->cursor);
    *out = &p->steps[p->cursor++];
    return AVQ_OK;
}

avq_status avq_step_arg(avq_step *s, int arg, const_dnnl_memory_desc_t md) {
    if (s->nargs >= AVQ_STEP_MAX_ARGS) return avq_error(AVQ_ERR_INTERNAL, "too many step arguments");
    dnnl_engine_t eng;
    AVQ_TRY(avq_engine_get(&eng));
    dnnl_memory_t m;
    if (dnnl_memory_create(&m, md, eng, DNNL_MEMORY_NONE) != dnnl_success)
        return avq_error(AVQ_ERR_DNNL, "cannot create a oneDNN memory object");
    s->args[s->nargs].arg = arg;
    s->args[s->nargs].memory = m;
    s->owned[s->nargs] = 1;
    s->nargs++;
    return AVQ_OK;
}

avq_status avq_step_arg_fixed(avq_step *s, int arg, dnnl_memory_t mem) {
    if (s->nargs >= AVQ_STEP_MAX_ARGS) return avq_error(AVQ_ERR_INTERNAL, "too many step arguments");
    s->args[s->nargs].arg = arg;
    s->args[s->nargs].memory = mem;
    s->owned[s->nargs] = 0;
    s->nargs++;
    return AVQ_OK;
}

/* oneDNN 3.2 allocates its primitive descriptors and primitives through a
 * class operator new (c_compatible) that returns NULL when malloc fails, and
 * constructs into it: out of memory inside dnnl_*_primitive_desc_create or
 * dnnl_primitive_create is a segfault (seen in matmul_pd_t's copy constructor
 * under pd_t::clone()), not an error status. It cannot be caught, so an op is
 * not started without this much address space to spare; what oneDNN
 * allocates while creating one op (descriptors, JIT code, the OpenMP pool's
 * first threads) is far less. */
#define CREATE_HEADROOM ((size_t)64 << 20)

avq_status avq_memory_headroom(const char *what) {
    /* Mapped, never touched: counts against RLIMIT_AS (and the commit limit
     * in strict overcommit) without costing resident memory. */
    void *probe = mmap(NULL, CREATE_HEADROOM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (probe == MAP_FAILED)
        return avq_error(AVQ_ERR_MEMORY, "out of memory: less than %zu MiB of address space left to %s",
                         CREATE_HEADROOM >> 20, what);
    munmap(probe, CREATE_HEADROOM);
    return AVQ_OK;
}

/* oneDNN's primitive cache keeps a creation that failed for lack of memory
 * and hands the failure back for the same descriptor later, even once memory
 * is free again: dropping the cache's contents makes the next try real. */
static void flush_primitive_cache(void) {
    int cap = 0;
    if (dnnl_get_primitive_cache_capacity(&cap) == dnnl_success && cap > 0) {
        dnnl_set_primitive_cache_capacity(0);
        dnnl_set_primitive_cache_capacity(cap);
    }
}

avq_status avq_primitive_create(dnnl_primitive_t *prim, const_dnnl_primitive_desc_t pd, const char *what) {
    *prim = NULL;
    AVQ_TRY(avq_memory_headroom("create a oneDNN primitive"));
    dnnl_status_t s = dnnl_primitive_create(prim, pd);
    if (s == dnnl_success) return AVQ_OK;
    *prim = NULL;
    flush_primitive_cache();
    if (s == dnnl_out_of_memory || avq_memory_headroom("create a oneDNN primitive") != AVQ_OK)
        return avq_error(AVQ_ERR_MEMORY, "out of memory creating a oneDNN primitive (%s)", what);
    return avq_error(AVQ_ERR_DNNL, "cannot create a oneDNN primitive (%s): status %d", what, (int)s);
}

avq_status avq_step_set_primitive(avq_plan *p, avq_step *s, dnnl_primitive_desc_t pd) {
    avq_status st = AVQ_OK;
    const_dnnl_memory_desc_t smd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    size_t sbytes = smd ? dnnl_memory_desc_get_size(smd) : 0;
    if ((st = avq_primitive_create(&s->prim, pd, "a plan step")) != AVQ_OK) {
        /* the message says why */
    } else if (sbytes > 0) {
        if (sbytes > p->scratch_bytes) p->scratch_bytes = sbytes;
        st = avq_step_arg(s, DNNL_ARG_SCRATCHPAD, smd);
    }
    dnnl_primitive_desc_destroy(pd);
    return st;
}

avq_status avq_step_exec(avq_plan *p, avq_step *s, const avq_arg_data *data, int ndata) {
    for (int a = 0; a < s->nargs; a++) {
        if (!s->owned[a]) continue;
        const int id = s->args[a].arg;
        void *ptr = id == DNNL_ARG_SCRATCHPAD ? p->scratch : NULL;
        for (int i = 0; !ptr && i < ndata; i++)
            if (data[i].arg == id) ptr = data[i].data;
        if (!ptr) return avq_error(AVQ_ERR_INTERNAL, "plan step argument %d has no buffer", id);
        if (dnnl_memory_set_data_handle(s->args[a].memory, ptr) != dnnl_success)
            return avq_error(AVQ_ERR_DNNL, "cannot bind a buffer to a oneDNN memory object");
    }
    if (dnnl_primitive_execute(s->prim, p->stream, s->nargs, s->args) != dnnl_success ||
        dnnl_stream_wait(p->stream) != dnnl_success)
        return avq_error(AVQ_ERR_DNNL, "oneDNN primitive execution failed");
    return AVQ_OK;
}
