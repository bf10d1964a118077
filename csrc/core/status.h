/* Status codes and the thread-local error message.
 * Every fallible C function returns avq_status; on failure it has stored one
 * human-readable message for the calling thread (never from inside an OpenMP
 * region), which the binding turns into a Python exception. */
#ifndef AVQ_STATUS_H
#define AVQ_STATUS_H

typedef enum avq_status {
    AVQ_OK = 0,
    AVQ_ERR_ARG,     /* bad argument value (maps to ValueError) */
    AVQ_ERR_SHAPE,   /* shapes do not agree (ValueError) */
    AVQ_ERR_DTYPE,   /* unsupported dtype (TypeError) */
    AVQ_ERR_MEMORY,  /* allocation failed (MemoryError) */
    AVQ_ERR_DNNL,    /* oneDNN refused a descriptor or failed (RuntimeError) */
    AVQ_ERR_IO,      /* file or weight problem (ValueError) */
    AVQ_ERR_ABORTED, /* a run was interrupted on request (KeyboardInterrupt) */
    AVQ_ERR_NUMERIC, /* NaN/Inf where they are not allowed (FloatingPointError) */
    AVQ_ERR_INTERNAL /* an invariant of ours broke: a bug (RuntimeError) */
} avq_status;

/* Stores a printf-style message for this thread and returns `code`. */
avq_status avq_error(avq_status code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The last message stored by this thread ("" if none). */
const char *avq_last_error(void);
void avq_clear_error(void);
const char *avq_status_name(avq_status s);

#define AVQ_TRY(expr)                                \
    do {                                             \
        avq_status avq_try_s_ = (expr);              \
        if (avq_try_s_ != AVQ_OK) return avq_try_s_; \
    } while (0)

#endif
