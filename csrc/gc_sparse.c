/*
 * gc_sparse.c -- instantiates gc_sparse_impl.h for float and double data
 * with int32 and int64 indices (no SIMD clones: see gc_sparse.h), and the
 * structure checks.
 */
#include "gc_sparse.h"

#include <stdlib.h>
#include <string.h>

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

/* The partition of P chunks, each g consecutive fine chunks (line bounds
 * fb, index spans [flo, fhi), empty when flo == fhi), into part: the
 * spans, each chunk's exclusive interval and the gaps outside them.  0 (and
 * part unfinished) when the chunks' workspace, the parts of their spans
 * another span meets, exceeds nbound / 4 values; P = 1 is always taken (its
 * span is all of [0, nbound), all exclusive).  The cap keeps the partition
 * to structures whose lines, taken in order, touch mostly their own
 * indices (banded, block, locally connected): measured, partial outputs
 * of a wide random structure (each chunk's span all of [0, nbound)) made
 * its scatter slower on one thread and on two (P random-access targets
 * of nbound values each instead of one). */
static int
gc_sp_partition(ptrdiff_t P, ptrdiff_t g, const ptrdiff_t *fb,
                const ptrdiff_t *flo, const ptrdiff_t *fhi, ptrdiff_t nbound,
                ptrdiff_t nnz, int64_t *part)
{
    const ptrdiff_t cap = nbound / 4;
    ptrdiff_t lo[GC_SP_CHUNKS_MAX], hi[GC_SP_CHUNKS_MAX];
    ptrdiff_t ea[GC_SP_CHUNKS_MAX], eb[GC_SP_CHUNKS_MAX];
    ptrdiff_t order[GC_SP_CHUNKS_MAX];
    ptrdiff_t c, d, f, shared = 0, ng = 0, at = 0, ne = 0;
    for (c = 0; c < P; c++) {
        lo[c] = nbound;
        hi[c] = 0;
        for (f = c * g; f < (c + 1) * g; f++) {
            if (flo[f] < fhi[f]) {
                lo[c] = flo[f] < lo[c] ? flo[f] : lo[c];
                hi[c] = fhi[f] > hi[c] ? fhi[f] : hi[c];
            }
        }
        if (lo[c] >= hi[c]) {
            lo[c] = hi[c] = 0;
        }
    }
    if (P == 1) {
        lo[0] = 0;
        hi[0] = nbound;
    }
    /* exclusive intervals: each span less every other span that meets it
     * (one that falls strictly inside leaves none) */
    for (c = 0; c < P; c++) {
        ptrdiff_t a = lo[c], b = hi[c];
        for (d = 0; d < P && a < b; d++) {
            if (d == c || lo[d] >= hi[d] || lo[d] >= b || hi[d] <= a) {
                continue;
            }
            if (lo[d] <= a) {
                a = hi[d];
            } else if (hi[d] >= b) {
                b = lo[d];
            } else {
                b = a;
            }
        }
        if (a >= b) {
            a = b = lo[c];
        }
        ea[c] = a;
        eb[c] = b;
        shared += (a - lo[c]) + (hi[c] - b);
    }
    if (P > 1 && shared > cap) {
        return 0;
    }
    /* the gaps: [0, nbound) less the exclusive intervals (disjoint), in
     * ascending order */
    for (c = 0; c < P; c++) {
        if (ea[c] < eb[c]) {
            ptrdiff_t k = ne++;
            while (k > 0 && ea[order[k - 1]] > ea[c]) {
                order[k] = order[k - 1];
                k--;
            }
            order[k] = c;
        }
    }
    for (d = 0; d <= ne; d++) {
        const ptrdiff_t e = d < ne ? ea[order[d]] : nbound;
        if (e > at) {
            part[GC_SP_P_GLO + ng] = at;
            part[GC_SP_P_GHI + ng] = e;
            ng++;
        }
        if (d < ne) {
            at = eb[order[d]];
        }
    }
    part[0] = P;
    for (c = 0; c < P; c++) {
        part[GC_SP_P_BND + c] = fb[c * g];
        part[GC_SP_P_LO + c] = lo[c];
        part[GC_SP_P_HI + c] = hi[c];
        part[GC_SP_P_EA + c] = ea[c];
        part[GC_SP_P_EB + c] = eb[c];
    }
    part[GC_SP_P_BND + P] = fb[P * g];
    part[GC_SP_P_NGAP] = ng;
    return 1;
}

/* The check, and the structure's partition for the scatter (part != NULL,
 * GC_SP_PART_LEN entries): GC_SP_CHUNKS_MAX fine chunks of lines with
 * about equal entries, each entry's index checked and its chunk's span
 * [lo, hi) taken in the same walk; then the most chunks P (a power of two,
 * fine chunks merged) for which every chunk has GC_SP_CHUNK_MIN entries and
 * the workspace is small enough (gc_sp_partition).  P depends on the
 * structure alone. */
#define GC_SP_CHECK(NAME, I)                                                  \
    int NAME(ptrdiff_t nptr, const I *ptr, const I *idx, ptrdiff_t nidx,     \
             ptrdiff_t nbound, ptrdiff_t *where, int64_t *part)              \
    {                                                                         \
        const ptrdiff_t F = GC_SP_CHUNKS_MAX;                                 \
        ptrdiff_t r, p, c, nnz, P, band = 0;                                  \
        ptrdiff_t fb[GC_SP_CHUNKS_MAX + 1], flo[GC_SP_CHUNKS_MAX],            \
            fhi[GC_SP_CHUNKS_MAX];                                            \
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
        /* fine chunk c: the lines from the first whose entries start at    \
         * or after c * nnz / F (a binary search over ptr) */                \
        fb[0] = 0;                                                            \
        fb[F] = nptr;                                                         \
        for (c = 1; c < F; c++) {                                             \
            const ptrdiff_t want = (ptrdiff_t)((double)nnz * c / F);          \
            ptrdiff_t a = fb[c - 1], e = nptr;                                \
            while (a < e) {                                                   \
                const ptrdiff_t mid = a + (e - a) / 2;                        \
                if ((ptrdiff_t)ptr[mid] < want) {                             \
                    a = mid + 1;                                              \
                } else {                                                      \
                    e = mid;                                                  \
                }                                                             \
            }                                                                 \
            fb[c] = a;                                                        \
        }                                                                     \
        for (c = 0; c < F; c++) {                                             \
            ptrdiff_t lo = nbound, hi = 0;                                    \
            for (r = fb[c]; r < fb[c + 1]; r++) {                             \
                const ptrdiff_t p1 = (ptrdiff_t)ptr[r + 1];                   \
                for (p = (ptrdiff_t)ptr[r]; p < p1; p++) {                    \
                    const ptrdiff_t j = (ptrdiff_t)idx[p];                    \
                    if (j < 0 || j >= nbound) {                               \
                        *where = p;                                           \
                        return 4;                                             \
                    }                                                         \
                    lo = j < lo ? j : lo;                                     \
                    hi = j >= hi ? j + 1 : hi;                                \
                    band = j - r > band ? j - r : r - j > band ? r - j : band; \
                }                                                             \
            }                                                                 \
            flo[c] = lo < hi ? lo : 0;                                        \
            fhi[c] = lo < hi ? hi : 0;                                        \
        }                                                                     \
        if (part == NULL) {                                                   \
            return 0;                                                         \
        }                                                                     \
        part[GC_SP_P_BAND] = band;                                            \
        for (P = F; P > 1; P /= 2) {                                          \
            if (nnz / P >= GC_SP_CHUNK_MIN                                    \
                && gc_sp_partition(P, F / P, fb, flo, fhi, nbound,            \
                                   nnz, part)) {                              \
                break;                                                        \
            }                                                                 \
        }                                                                     \
        if (P == 1) {                                                         \
            gc_sp_partition(1, F, fb, flo, fhi, nbound, nnz, part);           \
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
            const void *x, ptrdiff_t nother, void *out, int nthreads,
            const int64_t *part, int tiled)
{
#define GC_SP_CALL(S, T, I)                                                  \
    return gather ? gc_sp_gather_##S(nptr, (const I *)ptr, (const I *)idx,  \
                                     (const T *)val, nstored, B,            \
                                     (const T *)x, nother, (T *)out,        \
                                     nthreads, tiled)                       \
                  : gc_sp_scatter_##S(nptr, (const I *)ptr, (const I *)idx, \
                                      (const T *)val, nstored, B,           \
                                      (const T *)x, nother, (T *)out,       \
                                      nthreads, part, tiled)
    if (tiled && B % GC_SP_TILE != 0) {
        return 3;
    }
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
            ptrdiff_t nidx, ptrdiff_t nbound, ptrdiff_t *where, int64_t *part)
{
    if (isize == 4) {
        return gc_sp_check_i(nptr, (const int32_t *)ptr, (const int32_t *)idx,
                             nidx, nbound, where, part);
    }
    return gc_sp_check_l(nptr, (const int64_t *)ptr, (const int64_t *)idx,
                         nidx, nbound, where, part);
}

/* Rows and tiles (gc_sparse.h): to_tiles, the nrows rows (w wide) of src
 * into the tiles of dst, the rows past nrows of the last tile zero; else
 * the first nrows rows of src's tiles into the rows of dst. */
#define GC_SP_TILES(T)                                                        \
    do {                                                                      \
        const ptrdiff_t ntile = (nrows + GC_SP_TILE - 1) / GC_SP_TILE;        \
        const T *s_ = (const T *)src;                                         \
        T *d_ = (T *)dst;                                                     \
        ptrdiff_t c;                                                          \
        _Pragma("omp parallel for if (par) num_threads(nthreads) schedule(static)") \
        for (c = 0; c < ntile; c++) {                                         \
            const ptrdiff_t b0 = c * GC_SP_TILE;                              \
            const ptrdiff_t bt = nrows - b0 < GC_SP_TILE ? nrows - b0        \
                                                         : GC_SP_TILE;        \
            ptrdiff_t j, t;                                                   \
            if (to_tiles) {                                                   \
                T *o = d_ + b0 * w;                                           \
                for (j = 0; j < w; j++) {                                     \
                    for (t = 0; t < bt; t++) {                                \
                        o[j * GC_SP_TILE + t] = s_[(b0 + t) * w + j];         \
                    }                                                         \
                    for (; t < GC_SP_TILE; t++) {                             \
                        o[j * GC_SP_TILE + t] = 0;                            \
                    }                                                         \
                }                                                             \
            }                                                                 \
            else {                                                            \
                const T *i_ = s_ + b0 * w;                                    \
                for (t = 0; t < bt; t++) {                                    \
                    for (j = 0; j < w; j++) {                                 \
                        d_[(b0 + t) * w + j] = i_[j * GC_SP_TILE + t];        \
                    }                                                         \
                }                                                             \
            }                                                                 \
        }                                                                     \
    } while (0)

void
gc_sp_tiles(int dbl, int to_tiles, ptrdiff_t nrows, ptrdiff_t w,
            const void *src, void *dst, int nthreads)
{
    const int par = nthreads > 1 && nrows * w >= GC_SPARSE_PARALLEL_MIN;
    (void)par;
    if (dbl) {
        GC_SP_TILES(double);
    }
    else {
        GC_SP_TILES(float);
    }
}
#undef GC_SP_TILES
