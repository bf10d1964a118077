/* The helpers every binding file uses, in one include. Only csrc/python
 * includes Python and NumPy headers. */
#ifndef AVQ_PY_COMMON_H
#define AVQ_PY_COMMON_H

#include "arrays.h"
#include "errors.h"
#include "interrupt.h"
#include "weights.h"

#include "core/engine.h"
#include "core/plan.h"
#include "core/weight.h"
#include "ops/ops.h"

#endif
