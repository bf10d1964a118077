/* Ctrl-C during one model call (interrupt.c). With the GIL held around a run:
 *   if (avq_py_interrupt_begin() < 0) fail;      (a Ctrl-C was already pending)
 *   release the GIL; avq_plan_set_thread_abort_flag(avq_py_interrupt_flag());
 *   run; avq_plan_set_thread_abort_flag(NULL); take the GIL back;
 *   avq_py_interrupt_end(); on failure avq_py_raise_run(st).
 * A SIGINT meanwhile stops the run between layers (AVQ_ERR_ABORTED), which
 * avq_py_raise_run turns into Python's KeyboardInterrupt. Calls may nest and
 * run in several threads at once. avq_py_plan_cache_run does all of this. */
#ifndef AVQ_PY_INTERRUPT_H
#define AVQ_PY_INTERRUPT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "core/status.h"

int avq_py_interrupt_begin(void);
void avq_py_interrupt_end(void);
const volatile int *avq_py_interrupt_flag(void);
PyObject *avq_py_raise_interrupted(void);
/* avq_py_raise, except that AVQ_ERR_ABORTED runs Python's pending signal
 * handlers (normally raising KeyboardInterrupt). Returns NULL. */
PyObject *avq_py_raise_run(avq_status st);

#endif
