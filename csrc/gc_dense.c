/*
 * gc_dense.c -- instantiates gc_dense_impl.h for float and double, with
 * runtime SIMD dispatch (gc_simd.h), and reports the build's facts.
 */
#include "gc_dense.h"

#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "gc_simd.h"
#if defined(__GNUC__) && !defined(__clang__)
/* dot_short's vector helpers are always inlined (static): no vector
 * crosses a call, so GCC's note that the baseline clone's ABI for 32-byte
 * vector arguments differs does not apply. */
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

/* The three A^T x kernels of gc_dense_impl.h. */
enum { GC_AXPY_STRIDED, GC_AXPY_REGBLOCK, GC_AXPY_STREAM };

#define GC_IMPL "gc_dense_impl.h"
#include "gc_instantiate.h"

/* The mixed instance: float32 matrices, float64 vectors and sums (the
 * double instance's lanes, so its bits; see gc_dense_impl.h). */
#define GC_T double
#define GC_TA float
#define GC_SFX m
#define GC_W 16
#include "gc_dense_impl.h"
#undef GC_T
#undef GC_TA
#undef GC_SFX
#undef GC_W

const char *
gc_simd_target(void)
{
#if GC_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) {
        return "x86-64-v4";
    }
    if (__builtin_cpu_supports("x86-64-v3")) {
        return "x86-64-v3";
    }
#endif
    return "baseline";
}

int
gc_have_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int
gc_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* --- the floating-point environment (gc_dense.h) ------------------------ */

#if defined(_MSC_VER)
#define GC_TLS __declspec(thread)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L && !defined(__STDC_NO_THREADS__)
#define GC_TLS _Thread_local
#else
#define GC_TLS __thread
#endif

#if defined(__x86_64__) || defined(_M_X64) || defined(__SSE2__)
#include <xmmintrin.h>
#define GC_FP_FLUSH_BITS 0x8040ULL          /* MXCSR FTZ (15) | DAZ (6) */
static unsigned long long gc_fp_get(void) { return _mm_getcsr(); }
static void gc_fp_put(unsigned long long w) { _mm_setcsr((unsigned int)w); }
#define GC_FP_OK 1
#elif defined(__aarch64__) && defined(__GNUC__)
#define GC_FP_FLUSH_BITS (1ULL << 24)        /* FPCR FZ */
static unsigned long long gc_fp_get(void)
{
    unsigned long long w;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(w));
    return w;
}
static void gc_fp_put(unsigned long long w)
{
    __asm__ __volatile__("msr fpcr, %0" : : "r"(w));
}
#define GC_FP_OK 1
#else
#define GC_FP_FLUSH_BITS 0ULL
static unsigned long long gc_fp_get(void) { return 0; }
static void gc_fp_put(unsigned long long w) { (void)w; }
#define GC_FP_OK 0
#endif

static GC_TLS int gc_fp_flush_mode;         /* this thread's choice */
static GC_TLS int gc_fp_worker_saved;       /* a worker: its bits are saved */
static GC_TLS unsigned long long gc_fp_worker_bits;

int
gc_fp_flush_supported(void)
{
    return GC_FP_OK;
}

void
gc_fp_set_flush(int on)
{
    gc_fp_flush_mode = on && GC_FP_OK;
}

int
gc_fp_get_flush(void)
{
    return gc_fp_flush_mode;
}

/* this thread's flush bits set, its old ones kept (a worker's in TLS) */
static void
gc_fp_worker_on(void)
{
    const unsigned long long w = gc_fp_get();
    gc_fp_worker_bits = w & GC_FP_FLUSH_BITS;
    gc_fp_worker_saved = 1;
    gc_fp_put(w | GC_FP_FLUSH_BITS);
}

/* its old bits back; a thread that was not set (a worker started during
 * the call, which inherited the flushed caller's word) gets them cleared */
static void
gc_fp_worker_off(void)
{
    const unsigned long long w = gc_fp_get() & ~GC_FP_FLUSH_BITS;
    gc_fp_put(w | (gc_fp_worker_saved ? gc_fp_worker_bits : 0ULL));
    gc_fp_worker_saved = 0;
}

void
gc_fp_enter(gc_fpstate *st, int nthreads)
{
    st->on = gc_fp_flush_mode;
    st->nthreads = nthreads;
    st->caller = 0;
    if (!st->on) {
        return;
    }
    st->caller = gc_fp_get();
#ifdef _OPENMP
    /* the workers first: one started by this region inherits the caller's
     * word, which must still be the caller's own, not the flushed one */
    if (nthreads > 1 && !omp_in_parallel()) {
        #pragma omp parallel num_threads(nthreads)
        {
            if (omp_get_thread_num() != 0) {
                gc_fp_worker_on();
            }
        }
    }
#endif
    gc_fp_put(st->caller | GC_FP_FLUSH_BITS);
}

void
gc_fp_exit(const gc_fpstate *st)
{
    if (!st->on) {
        return;
    }
#ifdef _OPENMP
    if (st->nthreads > 1 && !omp_in_parallel()) {
        #pragma omp parallel num_threads(st->nthreads)
        {
            if (omp_get_thread_num() != 0) {
                gc_fp_worker_off();
            }
        }
    }
#endif
    gc_fp_put((gc_fp_get() & ~GC_FP_FLUSH_BITS) | (st->caller & GC_FP_FLUSH_BITS));
}

/* For the tests: within a call bracketed by gc_fp_enter / gc_fp_exit over
 * nthreads, whether each thread of a parallel region of nthreads has the
 * flush bits set (during[t]), and the same just after the exit (after[t]);
 * threads missing from a region leave -1.  Returns the region's size. */
int
gc_fp_probe(int nthreads, int *during, int *after)
{
    gc_fpstate st;
    int t, got = 1;
    for (t = 0; t < nthreads; t++) {
        during[t] = after[t] = -1;
    }
    gc_fp_enter(&st, nthreads);
#ifdef _OPENMP
    #pragma omp parallel num_threads(nthreads)
    {
        const int me = omp_get_thread_num();
        during[me] = (gc_fp_get() & GC_FP_FLUSH_BITS) == GC_FP_FLUSH_BITS;
        #pragma omp single
        got = omp_get_num_threads();
    }
#else
    during[0] = (gc_fp_get() & GC_FP_FLUSH_BITS) == GC_FP_FLUSH_BITS;
#endif
    gc_fp_exit(&st);
#ifdef _OPENMP
    #pragma omp parallel num_threads(nthreads)
    {
        after[omp_get_thread_num()] = (gc_fp_get() & GC_FP_FLUSH_BITS) != 0;
    }
#else
    after[0] = (gc_fp_get() & GC_FP_FLUSH_BITS) != 0;
#endif
    return got;
}
