#include "engine.h"

#include <omp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

/* The binary wheel targets manylinux2014 (glibc >= 2.17). glibc 2.34 moved these functions from
 * libpthread into libc under a new default version; binding to their first versions, which
 * every glibc since 2.17 exports (2.34+ from libc, older ones from libpthread), keeps the
 * extension loadable there. */
#if defined(__GLIBC__) && defined(__x86_64__)
__asm__(".symver pthread_create,pthread_create@GLIBC_2.2.5");
__asm__(".symver pthread_key_create,pthread_key_create@GLIBC_2.2.5");
__asm__(".symver pthread_setspecific,pthread_setspecific@GLIBC_2.2.5");
__asm__(".symver pthread_attr_setstacksize,pthread_attr_setstacksize@GLIBC_2.2.5");
__asm__(".symver pthread_setname_np,pthread_setname_np@GLIBC_2.12");
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#define AVQ_X86 1
#else
#define AVQ_X86 0
#endif

static dnnl_engine_t g_engine;
static dnnl_status_t g_engine_status = dnnl_runtime_error;
void avq_run_once(avq_once_flag *o, void (*fn)(void)) {
    if (atomic_load_explicit(&o->done, memory_order_acquire)) return;
    pthread_mutex_lock(&o->mutex);
    if (!atomic_load_explicit(&o->done, memory_order_relaxed)) {
        fn();
        atomic_store_explicit(&o->done, 1, memory_order_release);
    }
    pthread_mutex_unlock(&o->mutex);
}

static avq_once_flag g_engine_once = AVQ_ONCE_INIT;
static atomic_int g_threads;
static pthread_mutex_t g_pack_mutex = PTHREAD_MUTEX_INITIALIZER;

static void engine_init(void) {
    g_engine_status = dnnl_engine_create(&g_engine, dnnl_cpu, 0);
    int n = omp_get_max_threads();
    atomic_store(&g_threads, n > 0 ? n : 1);
}

static void engine_once(void) { avq_run_once(&g_engine_once, engine_init); }

avq_status avq_engine_get(dnnl_engine_t *engine) {
    engine_once();
    if (g_engine_status != dnnl_success)
        return avq_error(AVQ_ERR_DNNL, "cannot create the oneDNN CPU engine (status %d)", (int)g_engine_status);
    *engine = g_engine;
    return AVQ_OK;
}

avq_status avq_set_num_threads(int n) {
    engine_once();
    if (n < 1) return avq_error(AVQ_ERR_ARG, "number of threads must be >= 1, got %d", n);
    atomic_store(&g_threads, n);
    omp_set_num_threads(n);
    return AVQ_OK;
}

int avq_get_num_threads(void) {
    engine_once();
    return atomic_load(&g_threads);
}

/* oneDNN 3.2's JIT sgemm keeps data below the stack pointer, past the 128-byte red zone that
 * a signal frame skips: a signal handled on the computing thread's own stack overwrote it
 * (heap corruption in 6 of 6 runs with SIGUSR1 sent during a UNet call, 0 of 6 with an
 * alternate stack). Python installs its handlers with SA_ONSTACK, so an alternate signal
 * stack on every computing thread puts their frames elsewhere. One per thread, kept for the
 * thread's life; a stack the thread already has (faulthandler's) is left alone. */
#define SIGSTACK_BYTES (256 * 1024)
static pthread_key_t g_sigstack_key;
static int g_sigstack_key_ok;
static avq_once_flag g_sigstack_once = AVQ_ONCE_INIT;
static _Thread_local int t_sigstack_checked;

static void sigstack_release(void *mem) {
    stack_t cur;
    if (sigaltstack(NULL, &cur) == 0 && cur.ss_sp == mem) {
        stack_t off = {.ss_sp = NULL, .ss_flags = SS_DISABLE, .ss_size = 0};
        sigaltstack(&off, NULL);
    }
    free(mem);
}

static void sigstack_key_init(void) { g_sigstack_key_ok = pthread_key_create(&g_sigstack_key, sigstack_release) == 0; }

static void sigstack_ensure(void) {
    if (t_sigstack_checked) return;
    t_sigstack_checked = 1;
    avq_run_once(&g_sigstack_once, sigstack_key_init);
    stack_t cur;
    if (!g_sigstack_key_ok || sigaltstack(NULL, &cur) != 0 || !(cur.ss_flags & SS_DISABLE)) return;
    void *mem = malloc(SIGSTACK_BYTES);
    if (!mem) return; /* best effort: the run itself does not need it */
    stack_t ss = {.ss_sp = mem, .ss_flags = 0, .ss_size = SIGSTACK_BYTES};
    if (sigaltstack(&ss, NULL) != 0 || pthread_setspecific(g_sigstack_key, mem) != 0) {
        stack_t off = {.ss_sp = NULL, .ss_flags = SS_DISABLE, .ss_size = 0};
        sigaltstack(&off, NULL);
        free(mem);
    }
}

/* Largest team of this (master) thread whose OpenMP threads were given their stacks: a signal
 * sent to the process may be delivered to any of them. */
static _Thread_local int t_sigstack_team;

void avq_threads_enter(void) {
    sigstack_ensure();
    int n = avq_get_num_threads();
    if (omp_get_max_threads() != n) omp_set_num_threads(n);
    if (n > t_sigstack_team) {
#pragma omp parallel num_threads(n)
        sigstack_ensure();
        t_sigstack_team = n;
    }
}

/* A runtime that loaded before asymvq could set OMP_WAIT_POLICY=PASSIVE (torch imported
 * first: its libgomp then serves asymvq too) lets idle threads spin 300,000 times before they
 * sleep; on a machine with more work than cores they take the cores from the threads that
 * work. The policy is read once, at load. What libgomp still checks on every wait is its
 * documented GOMP_SPINCOUNT rule: while it manages more threads than CPUs, it spins only 1,000
 * times. A parked team (a thread of ours that opened a parallel region and then sleeps for
 * ever, keeping its pool) adds enough threads to be over that line whenever asymvq uses its
 * thread count. */
static avq_once_flag g_park_once = AVQ_ONCE_INIT;
static pthread_mutex_t g_park_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_park_cond = PTHREAD_COND_INITIALIZER;
static int g_park_size;    /* the team's threads, 0 until it exists */
static int g_park_request; /* the team size asked for */
static int g_park_error;   /* pthread_create's error, 0 if it started */

static void *park_main(void *arg) {
    (void)arg;
    int got = 0;
    /* named before the region: the team's threads inherit the name when they are created */
    pthread_setname_np(pthread_self(), "avq-omp-park");
#pragma omp parallel num_threads(g_park_request)
    {
#pragma omp single
        got = omp_get_num_threads();
    }
    pthread_mutex_lock(&g_park_mutex);
    g_park_size = got;
    pthread_cond_broadcast(&g_park_cond);
    for (;;) pthread_cond_wait(&g_park_cond, &g_park_mutex); /* never exits: the pool lives with it */
    return NULL;
}

static void park_start(void) {
    /* the managed threads are asymvq's n plus the team's k - 1: more than the CPUs from k = CPUs - n + 2 */
    int k = omp_get_num_procs() - avq_get_num_threads() + 2;
    g_park_request = k < 2 ? 2 : k;
    pthread_attr_t attr;
    pthread_t thread;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 1 << 18); /* it only opens one empty region */
    g_park_error = pthread_create(&thread, &attr, park_main, NULL);
    pthread_attr_destroy(&attr);
    if (g_park_error) return;
    pthread_mutex_lock(&g_park_mutex);
    while (!g_park_size) pthread_cond_wait(&g_park_cond, &g_park_mutex);
    pthread_mutex_unlock(&g_park_mutex);
}

avq_status avq_throttle_openmp_spinning(int *team) {
    avq_run_once(&g_park_once, park_start);
    if (g_park_error) return avq_error(AVQ_ERR_MEMORY, "cannot start the parked OpenMP team (error %d)", g_park_error);
    *team = g_park_size;
    return AVQ_OK;
}

void avq_pack_lock(void) { pthread_mutex_lock(&g_pack_mutex); }
void avq_pack_unlock(void) { pthread_mutex_unlock(&g_pack_mutex); }

static const char *isa_name(dnnl_cpu_isa_t isa) {
    switch (isa) {
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx2_vnni_2: return "avx2_vnni_2";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_fp16: return "avx512_core_fp16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    case dnnl_cpu_isa_avx512_core_amx_fp16: return "avx512_core_amx_fp16";
    default: return "other";
    }
}

/* ---- the ISA decision --------------------------------------------------- */

typedef struct cpu_features {
    int avx2_fma, avx512, avx512_vnni, avx512_bf16, avx512_fp16, amx_bf16, avx, sse41;
} cpu_features;

#if AVQ_X86
/* XCR0: which register states the OS saves (YMM, ZMM, AMX tiles). */
static unsigned long long xcr0(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1)) return 0; /* no OSXSAVE */
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}
#endif

static cpu_features cpu_probe(void) {
    cpu_features f = {0};
#if AVQ_X86
    __builtin_cpu_init();
    /* __builtin_cpu_supports also checks that the OS saves YMM / ZMM state. */
    f.sse41 = __builtin_cpu_supports("sse4.1");
    f.avx = __builtin_cpu_supports("avx");
    f.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    f.avx512 = f.avx2_fma && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    unsigned a, b, c, d;
    if (f.avx512 && __get_cpuid_count(7, 0, &a, &b, &c, &d)) {
        f.avx512_vnni = (c >> 11) & 1;
        f.avx512_fp16 = (d >> 23) & 1;
        const int tile = (d >> 24) & 1, tbf16 = (d >> 22) & 1;
        if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) f.avx512_bf16 = (a >> 5) & 1;
        /* the AMX attention also rounds with AVX512-BF16; the OS must save XTILECFG and XTILEDATA */
        f.amx_bf16 = tile && tbf16 && f.avx512_bf16 && (xcr0() & (3ull << 17)) == (3ull << 17);
    }
#endif
    return f;
}

static const char *cpu_isa_name(const cpu_features *f) {
    if (f->amx_bf16) return "avx512_core_amx";
    if (f->avx512_fp16) return "avx512_core_fp16";
    if (f->avx512_bf16) return "avx512_core_bf16";
    if (f->avx512_vnni) return "avx512_core_vnni";
    if (f->avx512) return "avx512_core";
    if (f->avx2_fma) return "avx2";
    if (f->avx) return "avx";
    if (f->sse41) return "sse41";
    return "baseline";
}

static avq_isa g_isa;
static avq_once_flag g_isa_once = AVQ_ONCE_INIT;

static void isa_init(void) {
    const cpu_features f = cpu_probe();
    /* oneDNN's effective ISA is min(CPU, cap); reading it also fixes the cap
     * for the rest of the process, so both libraries keep the same answer. */
    const dnnl_cpu_isa_t d = dnnl_get_effective_cpu_isa();
    avq_isa_level dnnl_level = AVQ_ISA_BASELINE;
    int dnnl_bf16 = 0, dnnl_amx = 0;
    switch (d) {
    case dnnl_cpu_isa_avx512_core_amx:
    case dnnl_cpu_isa_avx512_core_amx_fp16: dnnl_amx = 1; /* fall through */
    case dnnl_cpu_isa_avx512_core_bf16:
    case dnnl_cpu_isa_avx512_core_fp16: dnnl_bf16 = 1; /* fall through */
    case dnnl_cpu_isa_avx512_core:
    case dnnl_cpu_isa_avx512_core_vnni: dnnl_level = AVQ_ISA_AVX512; break;
    case dnnl_cpu_isa_avx2:
    case dnnl_cpu_isa_avx2_vnni:
    case dnnl_cpu_isa_avx2_vnni_2: dnnl_level = AVQ_ISA_AVX2; break;
    default: break;
    }
    const avq_isa_level cpu_level = f.avx512 ? AVQ_ISA_AVX512 : f.avx2_fma ? AVQ_ISA_AVX2 : AVQ_ISA_BASELINE;
    g_isa.level = cpu_level < dnnl_level ? cpu_level : dnnl_level;
    g_isa.amx_bf16 = f.amx_bf16 && dnnl_amx && g_isa.level == AVQ_ISA_AVX512;
    g_isa.bf16_native = g_isa.level == AVQ_ISA_AVX512 && dnnl_bf16 && (f.avx512_bf16 || f.amx_bf16);
    g_isa.dnnl_isa = d;
    g_isa.cpu_isa = cpu_isa_name(&f);
}

const avq_isa *avq_isa_get(void) {
    avq_run_once(&g_isa_once, isa_init);
    return &g_isa;
}

const char *avq_isa_level_name(avq_isa_level level) {
    switch (level) {
    case AVQ_ISA_AVX512: return "avx512";
    case AVQ_ISA_AVX2: return "avx2";
    default: return "baseline";
    }
}

const char *avq_isa_dnnl_name(void) { return isa_name(avq_isa_get()->dnnl_isa); }

avq_status avq_check_bf16(void) {
    const avq_isa *isa = avq_isa_get();
    if (isa->level >= AVQ_ISA_AVX512) return AVQ_OK;
    const char *cap = getenv("ONEDNN_MAX_CPU_ISA");
    if (!cap || !cap[0]) cap = getenv("DNNL_MAX_CPU_ISA");
    char why[160];
    if (cap && cap[0])
        snprintf(why, sizeof why, "oneDNN is capped at %s by ONEDNN_MAX_CPU_ISA=%s (the CPU has %s)",
                 isa_name(isa->dnnl_isa), cap, isa->cpu_isa);
    else
        snprintf(why, sizeof why, "this CPU has %s", isa->cpu_isa);
    return avq_error(AVQ_ERR_DNNL,
                     "bf16 needs a CPU with AVX-512 (native bf16: AVX512_BF16 or AMX; plain AVX-512 emulates it) "
                     "and %s: use precision \"fp32\", or \"auto\" to take bf16 only where the CPU has it natively",
                     why);
}

avq_status avq_get_info(avq_info *info) {
    dnnl_engine_t e;
    AVQ_TRY(avq_engine_get(&e));
    const dnnl_version_t *v = dnnl_version();
    const avq_isa *isa = avq_isa_get();
    info->version = AVQ_VERSION;
    info->dnnl_major = v->major;
    info->dnnl_minor = v->minor;
    info->dnnl_patch = v->patch;
    info->dnnl_hash = v->hash;
    info->isa = isa_name(isa->dnnl_isa);
    info->cpu_isa = isa->cpu_isa;
    info->kernel_isa = avq_isa_level_name(isa->level);
    info->num_threads = avq_get_num_threads();
    info->bf16_native = isa->bf16_native;
    return AVQ_OK;
}
