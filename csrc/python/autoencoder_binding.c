/* Placeholder until the autoencoder binding lands: registers nothing. */
#include "common.h"

int avq_py_add_autoencoder(PyObject *m) {
    (void)m;
    return 0;
}
