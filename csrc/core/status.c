#include "status.h"

#include <stdarg.h>
#include <stdio.h>

static _Thread_local char avq_msg[2048];

avq_status avq_error(avq_status code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(avq_msg, sizeof avq_msg, fmt, ap);
    va_end(ap);
    return code;
}

const char *avq_last_error(void) { return avq_msg; }

void avq_clear_error(void) { avq_msg[0] = '\0'; }

const char *avq_status_name(avq_status s) {
    switch (s) {
    case AVQ_OK: return "AVQ_OK";
    case AVQ_ERR_ARG: return "AVQ_ERR_ARG";
    case AVQ_ERR_SHAPE: return "AVQ_ERR_SHAPE";
    case AVQ_ERR_DTYPE: return "AVQ_ERR_DTYPE";
    case AVQ_ERR_MEMORY: return "AVQ_ERR_MEMORY";
    case AVQ_ERR_DNNL: return "AVQ_ERR_DNNL";
    case AVQ_ERR_IO: return "AVQ_ERR_IO";
    case AVQ_ERR_ABORTED: return "AVQ_ERR_ABORTED";
    case AVQ_ERR_NUMERIC: return "AVQ_ERR_NUMERIC";
    case AVQ_ERR_INTERNAL: return "AVQ_ERR_INTERNAL";
    }
    return "AVQ_ERR_UNKNOWN";
}
