/*
 * gc_simd.h -- compiler glue shared by gradchain's C sources (not public).
 *
 * GC_CLONES marks a function for runtime SIMD dispatch: with GCC on x86-64
 * Linux it is compiled three times (AVX-512 "x86-64-v4", AVX2+FMA
 * "x86-64-v3", and the portable baseline) via target_clones, and the
 * dynamic loader picks one per CPU, so the default build stays portable (no
 * -march=native).  Other compilers build the baseline only.
 */
#ifndef GC_SIMD_H
#define GC_SIMD_H

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

/* GC_SERIAL(v): keeps a running scalar sum out of the vectoriser.  GCC
 * vectorises "t += a[c] * x[c]" as an in-order reduction whose products
 * are not fused, while the same loop over a strided row (or in a clone
 * without that vector width) stays scalar and FMA-contracted: two roundings
 * for one row.  An empty asm that takes and returns v in a register costs
 * no instruction and makes every copy of such a loop the scalar one. */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define GC_SERIAL(v) __asm__("" : "+x"(v))
#elif defined(__GNUC__) && defined(__aarch64__)
#define GC_SERIAL(v) __asm__("" : "+w"(v))
#else
#define GC_SERIAL(v) ((void)0)
#endif

#endif /* GC_SIMD_H */
