/*
 * gc_dense.c -- instantiates gc_dense_impl.h for float and double and
 * provides runtime SIMD dispatch.
 *
 * The inner loops are compiled three times (AVX-512 "x86-64-v4", AVX2+FMA
 * "x86-64-v3", and the portable baseline) with GCC's target_clones; the
 * dynamic loader picks one per CPU, so the default build stays portable
 * (no -march=native).  Other compilers build the baseline only.
 */
#include "gc_dense.h"

#include <stdlib.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    defined(__linux__) && !defined(GC_NO_SIMD_DISPATCH)
#define GC_DISPATCH 1
#define GC_CLONES \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define GC_DISPATCH 0
#define GC_CLONES
#endif

#if defined(__GNUC__)
#define GC_INLINE inline __attribute__((always_inline))
#else
#define GC_INLINE inline
#endif

/* The three A^T x kernels of gc_dense_impl.h. */
enum { GC_AXPY_STRIDED, GC_AXPY_REGBLOCK, GC_AXPY_STREAM };

#define GC_T float
#define GC_SFX s
#define GC_W 32
#include "gc_dense_impl.h"
#undef GC_T
#undef GC_SFX
#undef GC_W

#define GC_T double
#define GC_SFX d
#define GC_W 16
#include "gc_dense_impl.h"
#undef GC_T
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
