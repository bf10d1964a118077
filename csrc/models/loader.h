/* How models get their weights: by checkpoint name, from a source the caller
 * provides (the binding looks names up in the checked state dict). Every
 * failed lookup is recorded and reported together, so a model with five
 * mismatched tensors fails once with five lines.
 *
 * Each weight found is copied at once into a buffer the model owns (see
 * avq_weight_take_copy), tensor by tensor, and the source is told it may drop
 * the original: after creation a model needs nothing of its source. Weights
 * holding NaN or Inf are problems too (the first ten named, the rest counted). */
#ifndef AVQ_LOADER_H
#define AVQ_LOADER_H

#include "core/weight.h"

typedef struct avq_weight_source {
    void *ctx;
    /* Fills *w (name left to the caller, data borrowed) for `name` with exactly
     * `dims`. Returns 0 on success; otherwise nonzero, and writes why into msg. */
    int (*get)(void *ctx, const char *name, int ndim, const int64_t *dims, avq_weight *w, char *msg, size_t msg_len);
    /* Optional: the weight `name` (bytes at data) has been copied; the source
     * may release the original's memory (e.g. drop mapped pages). */
    void (*done)(void *ctx, const char *name, const void *data, size_t bytes);
} avq_weight_source;

/* The weights a model holds: owned names, owned sources, owned packed copies. */
typedef struct avq_weight_set {
    const avq_weight_source *src; /* borrowed, only during model creation */
    const char *prefix;           /* borrowed, only during model creation */
    /* How multi-dimensional (conv / linear) weights are stored: AVQ_BF16 in a
     * bf16 model, whose ops pack them to bf16 anyway (halves the copy);
     * AVQ_F32 keeps each source's dtype. 1-D weights always keep theirs. */
    avq_dtype store;
    size_t nonfinite; /* weights holding NaN/Inf */
    avq_weight **all; /* owned list of owned weights */
    size_t n, cap;
    char *errors; /* owned: accumulated problems, one per line */
    size_t errors_len, nerrors;
    int oom; /* a lookup ran out of memory (returned NULL) */
} avq_weight_set;

/* store = AVQ_F32 (set ws->store later to narrow the weights looked up next). */
void avq_weight_set_init(avq_weight_set *ws, const avq_weight_source *src, const char *prefix);
/* Looks up prefix + printf(fmt, ...) with the given dims; returns a weight
 * owned by the set (on a failed lookup the problem is recorded and a
 * placeholder without data is returned; NULL only out of memory, which
 * avq_weight_set_finish reports: models need not check each lookup). */
avq_weight *avq_weight_get(avq_weight_set *ws, int ndim, const int64_t *dims, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* After all lookups: AVQ_OK, AVQ_ERR_MEMORY if a lookup ran out of memory, or
 * AVQ_ERR_IO listing every problem. */
avq_status avq_weight_set_finish(avq_weight_set *ws, const char *model);
void avq_weight_set_free(avq_weight_set *ws);
/* Number of parameters held (for repr and parity with the tables). */
int64_t avq_weight_set_numel(const avq_weight_set *ws);

/* A source that hands out no data and records what it is asked for: a model
 * built against it lists every tensor it needs, in lookup order, without
 * memory for any of them (the model must not be run; destroy it). This is
 * the one description of each topology's weights (asymvq.tables reads it). */
typedef struct avq_tensor_entry {
    char *name; /* owned */
    int ndim;
    int64_t dims[4];
} avq_tensor_entry;

typedef struct avq_weight_recorder {
    avq_weight_source src; /* pass &rec->src to a model's create */
    avq_tensor_entry *all; /* owned, n entries */
    size_t n, cap;
    int oom; /* an entry could not be recorded */
} avq_weight_recorder;

void avq_weight_recorder_init(avq_weight_recorder *r);
void avq_weight_recorder_free(avq_weight_recorder *r);

#define AVQ_DIMS(...) ((const int64_t[]){__VA_ARGS__})
/* avq_weight_get(ws, 4, AVQ_DIMS(512, 4, 3, 3), "decoder.up.%d.block.%d.conv1.weight", L, b) */

#endif
