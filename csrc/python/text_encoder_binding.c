/* Placeholder until the text_encoder binding lands: registers nothing. */
#include "common.h"

int avq_py_add_text_encoder(PyObject *m) {
    (void)m;
    return 0;
}
