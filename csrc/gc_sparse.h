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
 * contiguous, out never aliases an input).  Each sum of a gather runs in
 * the order of its line's entries.  A scatter sums in the order of the
 * structure's partition (gc_sp_check): P chunks of consecutive lines, each
 * chunk's contributions line by line, entry by entry (duplicates summed as
 * they come), then the chunks' partial sums added in chunk order; P = 1
 * (small structures) is plain line order.  The partition depends on the
 * structure alone, so the chunks are what threads split, not one sum.
 * Blocks run in tiles of GC_SP_TILE rows that share one walk of the
 * structure (the tile's sums side by side: the same order per row).  A
 * block is B contiguous rows, or (tiled: B a multiple of GC_SP_TILE) B /
 * GC_SP_TILE tiles, tile c's value of row c GC_SP_TILE + t at index j at
 * [c GC_SP_TILE w + j GC_SP_TILE + t] (w: the rows' width): the tile's
 * values of one index side by side, so its sums are vector operations.
 * The two layouts give the same bits.  Threads
 * (nthreads > 1, products of at least GC_SPARSE_PARALLEL_MIN entries x rows)
 * split lines and tiles (gather) or chunks and tiles (scatter), never one
 * sum's order: results do not depend on the thread count.
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
#define GC_SP_TILE 8            /* rows of a block per walk of the structure */
#define GC_SP_TILES_MIN 4       /* a block of this many tiles or more
                                   scatters in line order, split by tiles
                                   (the caller passes no partition) */
#define GC_SP_LINES 256         /* lines per gather task */
#define GC_SP_COLS 4096         /* outputs per zeroing / reduction task */
#define GC_SP_CHUNKS_MAX 16     /* a scatter's partition: at most 16 chunks */
#define GC_SP_CHUNK_MIN ((ptrdiff_t)1 << 14)    /* entries, at least, each */
/* The partition record (int64): [0] P; at GC_SP_P_BND + c (c <= P) the
 * chunks' line bounds; at _LO + c, _HI + c chunk c's index span [lo, hi);
 * at _EA + c, _EB + c its exclusive interval [ea, eb) (inside the span, no
 * other span meets it; ea = eb = lo when none); at _NGAP the number of
 * gaps, at _GLO + g, _GHI + g gap g: the intervals of [0, nbound) outside
 * every exclusive interval, ascending (the columns that more than one chunk
 * reaches: the cap's measure, what sparse_partition reports, and where
 * the scatter merges its chunks' workspaces); at _BAND the structure's
 * bandwidth,
 * the largest |line - index| of an entry (0 when there is none: the cost
 * model's bound on the entries of a product). */
#define GC_SP_P_BND 1
#define GC_SP_P_LO (2 + GC_SP_CHUNKS_MAX)
#define GC_SP_P_HI (2 + 2 * GC_SP_CHUNKS_MAX)
#define GC_SP_P_EA (2 + 3 * GC_SP_CHUNKS_MAX)
#define GC_SP_P_EB (2 + 4 * GC_SP_CHUNKS_MAX)
#define GC_SP_P_NGAP (2 + 5 * GC_SP_CHUNKS_MAX)
#define GC_SP_P_GLO (3 + 5 * GC_SP_CHUNKS_MAX)
#define GC_SP_P_GHI (4 + 6 * GC_SP_CHUNKS_MAX)
#define GC_SP_P_BAND (5 + 7 * GC_SP_CHUNKS_MAX)  /* max |line - index| */
#define GC_SP_PART_LEN (6 + 7 * GC_SP_CHUNKS_MAX)

#define GC_SP_DECL(T, S, I)                                                   \
    int gc_sp_gather_##S(ptrdiff_t nptr, const I *ptr, const I *idx,         \
                         const T *val, ptrdiff_t nstored, ptrdiff_t B,       \
                         const T *x, ptrdiff_t nx, T *out, int nthreads,     \
                         int tiled);                                         \
    int gc_sp_scatter_##S(ptrdiff_t nptr, const I *ptr, const I *idx,        \
                          const T *val, ptrdiff_t nstored, ptrdiff_t B,      \
                          const T *x, ptrdiff_t nout, T *out, int nthreads,  \
                          const int64_t *part, int tiled);                   \
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
 * beyond the entries; 4 idx[*where] is out of range.  With part (NULL or
 * GC_SP_PART_LEN entries), the same walk writes the structure's partition
 * for the scatter (gc_sparse.c says the rule).  A scatter given a
 * partition reports (1) an index outside its chunk's span: the structure
 * changed since it was checked. */
int gc_sp_check_i(ptrdiff_t nptr, const int32_t *ptr, const int32_t *idx,
                  ptrdiff_t nidx, ptrdiff_t nbound, ptrdiff_t *where,
                  int64_t *part);
int gc_sp_check_l(ptrdiff_t nptr, const int64_t *ptr, const int64_t *idx,
                  ptrdiff_t nidx, ptrdiff_t nbound, ptrdiff_t *where,
                  int64_t *part);

/* One entry point each for the binding, dispatching on the data type (dbl:
 * double, else float) and the index size (4 or 8 bytes):
 *   gc_sp_apply: gather (nother = nx) or scatter (nother = nout, over the
 *                partition part: NULL is one chunk) as above, x and out in
 *                rows or (tiled) in tiles; 0, 1 out of bounds, 2 out of
 *                memory (a scatter's workspace), 3 tiled with B not a
 *                multiple of GC_SP_TILE;
 *   gc_sp_dense: gc_sp_todense;  gc_sp_check: gc_sp_check_i / _l. */
int gc_sp_apply(int dbl, int isize, int gather, ptrdiff_t nptr,
                const void *ptr, const void *idx, const void *val,
                ptrdiff_t nstored, ptrdiff_t B, const void *x,
                ptrdiff_t nother, void *out, int nthreads,
                const int64_t *part, int tiled);
/* Rows and tiles: to_tiles, the nrows rows (w wide) of src into the tiles
 * of dst (ceil(nrows / GC_SP_TILE) of them, the rows past nrows zero);
 * else the first nrows rows of src's tiles into the rows of dst. */
void gc_sp_tiles(int dbl, int to_tiles, ptrdiff_t nrows, ptrdiff_t w,
                 const void *src, void *dst, int nthreads);
int gc_sp_dense(int dbl, int isize, ptrdiff_t nptr, const void *ptr,
                const void *idx, const void *val, ptrdiff_t nstored,
                ptrdiff_t nidx, void *out, ptrdiff_t rs, ptrdiff_t cs);
int gc_sp_check(int isize, ptrdiff_t nptr, const void *ptr, const void *idx,
                ptrdiff_t nidx, ptrdiff_t nbound, ptrdiff_t *where,
                int64_t *part);

#ifdef __cplusplus
}
#endif
#endif /* GC_SPARSE_H */
