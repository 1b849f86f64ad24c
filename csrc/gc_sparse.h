/*
 * gc_sparse.h -- compressed sparse Jacobian links (CSR and CSC) for
 * gradchain.  Plain C99, no Python.  Every routine exists for float (_s) and
 * double (_d) data with int32 (i) and int64 (l) indices, generated from
 * gc_sparse_impl.h: e.g. gc_sp_gather_di is double data, int32 indices.
 *
 * A compressed structure has nptr lines; line r holds the entries
 * p in [ptr[r], ptr[r + 1]) with index idx[p] and value val[p].  A CSR
 * matrix J (m x n) is m lines of column indices; a CSC matrix is n lines of
 * row indices.  Both products a link needs are one of two loops over it:
 *
 *   gc_sp_gather:   out[r] = sum_p val[p] * x[idx[p]]      (CSR: J x,   CSC: J^T x)
 *   gc_sp_scatter:  out[idx[p]] += val[p] * x[r], out = 0 first
 *                                                         (CSR: J^T x, CSC: J x)
 *
 * each on B rows (x rows nx = number of indices wide for gather, nptr wide
 * for scatter; out rows nptr wide for gather, nout wide for scatter; all
 * contiguous, out never aliases an input).  Sums run in the order of the
 * structure: line by line, entry by entry, duplicates summed as they come,
 * so a gather over a stably transposed copy of a structure gives exactly
 * the bits of the scatter over the structure (measured as an option for
 * threaded J^T g of a CSR; not used yet).  Threads (nthreads > 1, products
 * of at least GC_SPARSE_PARALLEL_MIN entries x rows) split lines (gather)
 * or rows of the block (both), never one sum: results do not depend on the
 * thread count.  A scatter of one row runs on one thread.
 *
 * The structure is trusted for nothing: every line's range is checked
 * against nstored (the entries idx and val hold) and every index against
 * its bound, at a compare per entry, so a structure changed after it was
 * validated (another thread, an in-place edit) is skipped where it is out
 * of bounds and reported (return 1), never read past.  0 otherwise.
 *
 * No floating-point contraction: the kernels are compiled for the baseline
 * instruction set only (a gather and a scatter must round alike).
 */
#ifndef GC_SPARSE_H
#define GC_SPARSE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GC_SPARSE_PARALLEL_MIN ((ptrdiff_t)1 << 15)

#define GC_SP_DECL(T, S, I)                                                   \
    int gc_sp_gather_##S(ptrdiff_t nptr, const I *ptr, const I *idx,         \
                         const T *val, ptrdiff_t nstored, ptrdiff_t B,       \
                         const T *x, ptrdiff_t nx, T *out, int nthreads);    \
    int gc_sp_scatter_##S(ptrdiff_t nptr, const I *ptr, const I *idx,        \
                          const T *val, ptrdiff_t nstored, ptrdiff_t B,      \
                          const T *x, ptrdiff_t nout, T *out, int nthreads); \
    int gc_sp_todense_##S(ptrdiff_t nptr, const I *ptr, const I *idx,        \
                          const T *val, ptrdiff_t nstored, ptrdiff_t nidx,   \
                          T *out, ptrdiff_t rs, ptrdiff_t cs);

GC_SP_DECL(float, si, int32_t)
GC_SP_DECL(float, sl, int64_t)
GC_SP_DECL(double, di, int32_t)
GC_SP_DECL(double, dl, int64_t)
#undef GC_SP_DECL

/* The structure check, O(nptr + nnz): 0 when ptr[0] == 0, ptr is
 * non-decreasing, nnz = ptr[nptr] <= nidx (the entries of idx and of val)
 * and every idx[p] (p < nnz) is in [0, nbound).  Otherwise the first
 * failure: 1 ptr[0] != 0; 2 ptr[*where + 1] < ptr[*where]; 3 ptr[nptr] is
 * beyond the entries; 4 idx[*where] is out of range. */
int gc_sp_check_i(ptrdiff_t nptr, const int32_t *ptr, const int32_t *idx,
                  ptrdiff_t nidx, ptrdiff_t nbound, ptrdiff_t *where);
int gc_sp_check_l(ptrdiff_t nptr, const int64_t *ptr, const int64_t *idx,
                  ptrdiff_t nidx, ptrdiff_t nbound, ptrdiff_t *where);

/* One entry point each for the binding, dispatching on the data type (dbl:
 * double, else float) and the index size (4 or 8 bytes):
 *   gc_sp_apply: gather (nother = nx) or scatter (nother = nout) as above;
 *   gc_sp_dense: gc_sp_todense;  gc_sp_check: gc_sp_check_i / _l. */
int gc_sp_apply(int dbl, int isize, int gather, ptrdiff_t nptr,
                const void *ptr, const void *idx, const void *val,
                ptrdiff_t nstored, ptrdiff_t B, const void *x,
                ptrdiff_t nother, void *out, int nthreads);
int gc_sp_dense(int dbl, int isize, ptrdiff_t nptr, const void *ptr,
                const void *idx, const void *val, ptrdiff_t nstored,
                ptrdiff_t nidx, void *out, ptrdiff_t rs, ptrdiff_t cs);
int gc_sp_check(int isize, ptrdiff_t nptr, const void *ptr, const void *idx,
                ptrdiff_t nidx, ptrdiff_t nbound, ptrdiff_t *where);

#ifdef __cplusplus
}
#endif
#endif /* GC_SPARSE_H */
