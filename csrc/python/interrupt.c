/* Ctrl-C inside one model call. Python runs its SIGINT handler only when the
 * main thread gets back to the interpreter, i.e. after a call that released
 * the GIL has ended (seconds for a decode). While a call runs, a C handler
 * chained in front of Python's raises a flag that the plan polls between
 * layers (avq_plan_set_thread_abort_flag), then passes the signal on, so
 * Python still sees it and raises KeyboardInterrupt once the call is back. */
#include <signal.h>

#include "errors.h"
#include "interrupt.h"

static volatile int sigint_seen;
static int depth;                /* calls in progress; changed with the GIL held */
static struct sigaction chained; /* the handler found at the outermost begin */

static void on_sigint(int sig, siginfo_t *info, void *uc) {
    sigint_seen = 1;
    if (chained.sa_flags & SA_SIGINFO)
        chained.sa_sigaction(sig, info, uc);
    else if (chained.sa_handler != SIG_DFL && chained.sa_handler != SIG_IGN)
        chained.sa_handler(sig);
}

int avq_py_interrupt_begin(void) {
    if (PyErr_CheckSignals() < 0) return -1; /* a Ctrl-C already pending: do not start */
    if (depth++ > 0) return 0;
    sigint_seen = 0;
    struct sigaction cur;
    if (sigaction(SIGINT, NULL, &cur) != 0) return 0;
    /* Only in front of a handler (Python's): SIG_IGN stays ignored, SIG_DFL
     * kills the process anyway. */
    if (!(cur.sa_flags & SA_SIGINFO) && (cur.sa_handler == SIG_DFL || cur.sa_handler == SIG_IGN)) return 0;
    struct sigaction ours;
    memset(&ours, 0, sizeof ours);
    ours.sa_sigaction = on_sigint;
    ours.sa_flags = SA_SIGINFO | SA_ONSTACK | (cur.sa_flags & SA_RESTART); /* see avq_threads_enter */
    sigemptyset(&ours.sa_mask);
    chained = cur;
    if (sigaction(SIGINT, &ours, NULL) != 0) chained.sa_handler = SIG_DFL; /* not installed */
    return 0;
}

void avq_py_interrupt_end(void) {
    if (--depth > 0) return;
    struct sigaction cur;
    /* Put the chained handler back unless someone replaced ours meanwhile. */
    if (sigaction(SIGINT, NULL, &cur) == 0 && (cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_sigint)
        sigaction(SIGINT, &chained, NULL);
    sigint_seen = 0;
}

const volatile int *avq_py_interrupt_flag(void) { return &sigint_seen; }

PyObject *avq_py_raise_interrupted(void) {
    /* Python's own handler runs here (main thread) and normally raises
     * KeyboardInterrupt; raise it ourselves otherwise (another thread, or a
     * handler that returned): the call did stop. */
    if (PyErr_CheckSignals() < 0) return NULL;
    PyErr_SetString(PyExc_KeyboardInterrupt, "interrupted (SIGINT) during the call");
    return NULL;
}

PyObject *avq_py_raise_run(avq_status st) {
    return st == AVQ_ERR_ABORTED ? avq_py_raise_interrupted() : avq_py_raise(st);
}
