#include "loader.h"

#include "core/engine.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

void avq_weight_set_init(avq_weight_set *ws, const avq_weight_source *src, const char *prefix) {
    memset(ws, 0, sizeof *ws);
    ws->src = src;
    ws->prefix = prefix ? prefix : "";
    ws->store = AVQ_F32;
}

/* Listed by name up to this many; the rest are counted on one line. */
#define MAX_NONFINITE_LISTED 10

static void note(avq_weight_set *ws, const char *line) {
    size_t add = strlen(line) + 1;
    char *e = realloc(ws->errors, ws->errors_len + add + 1);
    if (!e) return;
    ws->errors = e;
    memcpy(ws->errors + ws->errors_len, line, add - 1);
    ws->errors[ws->errors_len + add - 1] = '\n';
    ws->errors_len += add;
    ws->errors[ws->errors_len] = '\0';
    ws->nerrors++;
}

avq_weight *avq_weight_get(avq_weight_set *ws, int ndim, const int64_t *dims, const char *fmt, ...) {
    char suffix[256], name[320], msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(suffix, sizeof suffix, fmt, ap);
    va_end(ap);
    snprintf(name, sizeof name, "%s%s", ws->prefix, suffix);
    if (ws->n == ws->cap) {
        size_t cap = ws->cap ? 2 * ws->cap : 128;
        avq_weight **na = realloc(ws->all, cap * sizeof *na);
        if (!na) goto oom;
        ws->all = na;
        ws->cap = cap;
    }
    avq_weight *w = calloc(1, sizeof *w + strlen(name) + 1);
    if (!w) goto oom;
    char *owned = (char *)(w + 1);
    strcpy(owned, name);
    avq_weight_init(w, owned, AVQ_F32, ndim, dims, NULL);
    msg[0] = '\0';
    if (!ws->src || ws->src->get(ws->src->ctx, owned, ndim, dims, w, msg, sizeof msg) != 0) {
        avq_weight_init(w, owned, AVQ_F32, ndim, dims, NULL);
        char line[640];
        snprintf(line, sizeof line, "  %s: %s", owned, msg[0] ? msg : "missing");
        note(ws, line);
    } else {
        const void *orig = w->data;
        const size_t bytes = (size_t)avq_weight_numel(w) * avq_dtype_size(w->dtype);
        int64_t bad = 0;
        if (avq_weight_take_copy(w, ndim >= 2 ? ws->store : AVQ_F32, &bad) != AVQ_OK) {
            free(w);
            goto oom;
        }
        if (ws->src->done) ws->src->done(ws->src->ctx, owned, orig, bytes);
        if (bad > 0 && ++ws->nonfinite <= MAX_NONFINITE_LISTED) {
            char line[640];
            snprintf(line, sizeof line, "  %s: holds %lld NaN/Inf value%s of %lld", owned, (long long)bad,
                     bad == 1 ? "" : "s", (long long)avq_weight_numel(w));
            note(ws, line);
        }
    }
    w->name = owned;
    ws->all[ws->n++] = w;
    return w;
oom:
    ws->oom = 1;
    return NULL;
}

avq_status avq_weight_set_finish(avq_weight_set *ws, const char *model) {
    ws->src = NULL;
    ws->prefix = NULL;
    if (ws->oom) return avq_error(AVQ_ERR_MEMORY, "%s: out of memory loading the weights", model);
    if (ws->nonfinite > MAX_NONFINITE_LISTED) {
        char line[128];
        size_t more = ws->nonfinite - MAX_NONFINITE_LISTED;
        snprintf(line, sizeof line, "  and %zu more weight%s holding NaN/Inf", more, more == 1 ? "" : "s");
        note(ws, line);
        ws->nerrors += more - 1; /* the summary line stands for `more` problems */
    }
    if (ws->nerrors == 0) {
        /* Start the OpenMP team now, while the process still has room for the threads' stacks:
         * libgomp ends the process when it cannot create them, and a first call made close to a
         * memory cap would otherwise exit instead of failing with AVQ_ERR_MEMORY. */
        avq_threads_enter();
        return AVQ_OK;
    }
    return avq_error(AVQ_ERR_IO, "%s: %zu weight problem%s:\n%s", model, ws->nerrors, ws->nerrors == 1 ? "" : "s",
                     ws->errors ? ws->errors : "");
}

void avq_weight_set_free(avq_weight_set *ws) {
    for (size_t i = 0; i < ws->n; i++) {
        avq_weight_release(ws->all[i]);
        free(ws->all[i]);
    }
    free(ws->all);
    free(ws->errors);
    memset(ws, 0, sizeof *ws);
}

int64_t avq_weight_set_numel(const avq_weight_set *ws) {
    int64_t n = 0;
    for (size_t i = 0; i < ws->n; i++) n += avq_weight_numel(ws->all[i]);
    return n;
}

static int record(void *ctx, const char *name, int ndim, const int64_t *dims, avq_weight *w, char *msg,
                  size_t msg_len) {
    avq_weight_recorder *r = ctx;
    if (r->n == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 256;
        avq_tensor_entry *na = realloc(r->all, cap * sizeof *na);
        if (!na) goto oom;
        r->all = na;
        r->cap = cap;
    }
    avq_tensor_entry *e = &r->all[r->n];
    if (!(e->name = strdup(name))) goto oom;
    e->ndim = ndim;
    for (int i = 0; i < ndim && i < 4; i++) e->dims[i] = dims[i];
    r->n++;
    avq_weight_init(w, name, AVQ_F32, ndim, dims, NULL); /* no data: nothing is copied */
    return 0;
oom:
    r->oom = 1;
    snprintf(msg, msg_len, "out of memory recording the tensor list");
    return 1;
}

void avq_weight_recorder_init(avq_weight_recorder *r) {
    memset(r, 0, sizeof *r);
    r->src.ctx = r;
    r->src.get = record;
}

void avq_weight_recorder_free(avq_weight_recorder *r) {
    for (size_t i = 0; i < r->n; i++) free(r->all[i].name);
    free(r->all);
    memset(r, 0, sizeof *r);
}
