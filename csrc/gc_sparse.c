/*
 * gc_sparse.c -- instantiates gc_sparse_impl.h for float and double data
 * with int32 and int64 indices (no SIMD clones: see gc_sparse.h), and the
 * structure checks.
 */
#include "gc_sparse.h"

#define GC_T float
#define GC_I int32_t
#define GC_S si
#include "gc_sparse_impl.h"
#undef GC_T
#undef GC_I
#undef GC_S

#define GC_T float
#define GC_I int64_t
#define GC_S sl
#include "gc_sparse_impl.h"
#undef GC_T
#undef GC_I
#undef GC_S

#define GC_T double
#define GC_I int32_t
#define GC_S di
#include "gc_sparse_impl.h"
#undef GC_T
#undef GC_I
#undef GC_S

#define GC_T double
#define GC_I int64_t
#define GC_S dl
#include "gc_sparse_impl.h"
#undef GC_T
#undef GC_I
#undef GC_S

#define GC_SP_CHECK(NAME, I)                                                  \
    int NAME(ptrdiff_t nptr, const I *ptr, const I *idx, ptrdiff_t nidx,     \
             ptrdiff_t nbound, ptrdiff_t *where)                             \
    {                                                                         \
        ptrdiff_t r, p, nnz;                                                  \
        if (ptr[0] != 0) {                                                    \
            return 1;                                                         \
        }                                                                     \
        for (r = 0; r < nptr; r++) {                                          \
            if (ptr[r + 1] < ptr[r]) {                                        \
                *where = r;                                                   \
                return 2;                                                     \
            }                                                                 \
        }                                                                     \
        nnz = (ptrdiff_t)ptr[nptr];                                           \
        if (nnz > nidx) {                                                     \
            return 3;                                                         \
        }                                                                     \
        for (p = 0; p < nnz; p++) {                                           \
            if (idx[p] < 0 || (ptrdiff_t)idx[p] >= nbound) {                  \
                *where = p;                                                   \
                return 4;                                                     \
            }                                                                 \
        }                                                                     \
        return 0;                                                             \
    }

GC_SP_CHECK(gc_sp_check_i, int32_t)
GC_SP_CHECK(gc_sp_check_l, int64_t)

/* The dispatchers: data type (dbl), index size (4 or 8) and loop chosen at
 * run time, so that the binding calls one function.  GC_SP_DISPATCH runs
 * the GC_SP_CALL(suffix, data type, index type) its function defines. */
#define GC_SP_DISPATCH()                                                      \
    do {                                                                      \
        if (dbl && isize == 4) {                                              \
            GC_SP_CALL(di, double, int32_t);                                  \
        }                                                                     \
        if (dbl) {                                                            \
            GC_SP_CALL(dl, double, int64_t);                                  \
        }                                                                     \
        if (isize == 4) {                                                     \
            GC_SP_CALL(si, float, int32_t);                                   \
        }                                                                     \
        GC_SP_CALL(sl, float, int64_t);                                       \
    } while (0)
int
gc_sp_apply(int dbl, int isize, int gather, ptrdiff_t nptr, const void *ptr,
            const void *idx, const void *val, ptrdiff_t nstored, ptrdiff_t B,
            const void *x, ptrdiff_t nother, void *out, int nthreads)
{
#define GC_SP_CALL(S, T, I)                                                  \
    return gather ? gc_sp_gather_##S(nptr, (const I *)ptr, (const I *)idx,  \
                                     (const T *)val, nstored, B,            \
                                     (const T *)x, nother, (T *)out,        \
                                     nthreads)                              \
                  : gc_sp_scatter_##S(nptr, (const I *)ptr, (const I *)idx, \
                                      (const T *)val, nstored, B,           \
                                      (const T *)x, nother, (T *)out,       \
                                      nthreads)
    GC_SP_DISPATCH();
#undef GC_SP_CALL
}

int
gc_sp_dense(int dbl, int isize, ptrdiff_t nptr, const void *ptr,
            const void *idx, const void *val, ptrdiff_t nstored,
            ptrdiff_t nidx, void *out, ptrdiff_t rs, ptrdiff_t cs)
{
#define GC_SP_CALL(S, T, I)                                                  \
    return gc_sp_todense_##S(nptr, (const I *)ptr, (const I *)idx,          \
                             (const T *)val, nstored, nidx, (T *)out, rs, cs)
    GC_SP_DISPATCH();
#undef GC_SP_CALL
}

int
gc_sp_check(int isize, ptrdiff_t nptr, const void *ptr, const void *idx,
            ptrdiff_t nidx, ptrdiff_t nbound, ptrdiff_t *where)
{
    if (isize == 4) {
        return gc_sp_check_i(nptr, (const int32_t *)ptr, (const int32_t *)idx,
                             nidx, nbound, where);
    }
    return gc_sp_check_l(nptr, (const int64_t *)ptr, (const int64_t *)idx,
                         nidx, nbound, where);
}
