/* What the sampler's C loop needs of the UNet binding (unet_binding.c). */
#ifndef AVQ_PY_UNET_BINDING_H
#define AVQ_PY_UNET_BINDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "models/unet.h"

/* Names the capsule that pins a UNet plan (UNet.plan_capsule). */
#define AVQ_PY_PLAN_CAPSULE "asymvq.plan"

/* The C UNet inside `obj` when it is an asymvq._core.UNet or an asymvq.UNet
 * (checked by type), else NULL without an exception. Borrowed: valid while
 * `obj` lives. */
avq_unet *avq_py_unet_model(PyObject *obj);
/* For such an `obj`: a capsule pinning its cached plan for the shape (see
 * plan_cache.h; the loop holds it while it runs), the plan in *plan.
 * NULL with an exception set. */
PyObject *avq_py_unet_pin_plan(PyObject *obj, int64_t batch, int64_t height, int64_t width, int64_t context_length,
                               avq_unet_plan **plan);

#endif
