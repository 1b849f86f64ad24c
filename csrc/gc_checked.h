/*
 * gc_checked.h -- overflow-checked size arithmetic, the one place where
 * gradchain multiplies or adds sizes that decide an allocation or an index
 * bound.  Plain C, no Python; header-only (static inline).
 *
 * Each function stores a op b in *r and returns 1, or returns 0 (and leaves
 * *r unspecified) when the result does not fit a ptrdiff_t.  Sizes are
 * never negative here; a negative operand also returns 0.
 */
#ifndef GC_CHECKED_H
#define GC_CHECKED_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

static inline int
gc_size_mul(ptrdiff_t a, ptrdiff_t b, ptrdiff_t *r)
{
    if (a < 0 || b < 0)
        return 0;
#if defined(__GNUC__) || defined(__clang__)
    return !__builtin_mul_overflow(a, b, r);
#else
    if (a != 0 && b > PTRDIFF_MAX / a)
        return 0;
    *r = a * b;
    return 1;
#endif
}

static inline int
gc_size_add(ptrdiff_t a, ptrdiff_t b, ptrdiff_t *r)
{
    if (a < 0 || b < 0)
        return 0;
#if defined(__GNUC__) || defined(__clang__)
    return !__builtin_add_overflow(a, b, r);
#else
    if (b > PTRDIFF_MAX - a)
        return 0;
    *r = a + b;
    return 1;
#endif
}

/* *r = a * b * c */
static inline int
gc_size_mul3(ptrdiff_t a, ptrdiff_t b, ptrdiff_t c, ptrdiff_t *r)
{
    ptrdiff_t t;
    return gc_size_mul(a, b, &t) && gc_size_mul(t, c, r);
}

/* malloc(max(count, 1) * size); NULL when out of memory or when the byte
 * count does not fit (never a wrapped, too-small block). */
static inline void *
gc_malloc_n(ptrdiff_t count, size_t size)
{
    ptrdiff_t bytes;
    if (count < 1)
        count = 1;
    if (size > (size_t)PTRDIFF_MAX || !gc_size_mul(count, (ptrdiff_t)size, &bytes))
        return NULL;
    return malloc((size_t)bytes);
}

#endif /* GC_CHECKED_H */
