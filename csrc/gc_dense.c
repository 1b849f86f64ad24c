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

/* The three A^T x kernels of gc_dense_impl.h. */
enum { GC_AXPY_STRIDED, GC_AXPY_REGBLOCK, GC_AXPY_STREAM };

#define GC_IMPL "gc_dense_impl.h"
#include "gc_instantiate.h"

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
