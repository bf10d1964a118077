/* Placeholder until the unet binding lands: registers nothing. */
#include "common.h"

int avq_py_add_unet(PyObject *m) {
    (void)m;
    return 0;
}
