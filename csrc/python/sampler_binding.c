/* Placeholder until the sampler binding lands: registers nothing. */
#include "common.h"

int avq_py_add_sampler(PyObject *m) {
    (void)m;
    return 0;
}
