/*
 * gc_sparse_impl.h -- type template for gc_sparse.c: GC_T the data type,
 * GC_I the index type, GC_S the suffix (si, sl, di, dl).  Not a public
 * header; no include guard on purpose.
 */
#define GC_SP_CAT_(a, b) a##_##b
#define GC_SP_CAT(a, b) GC_SP_CAT_(a, b)
#define GC_SP(base) GC_SP_CAT(base, GC_S)
#ifndef GC_UNLIKELY
#if defined(__GNUC__)
#define GC_UNLIKELY(c) __builtin_expect(!!(c), 0)
#else
#define GC_UNLIKELY(c) (c)
#endif
#endif

/* line r's entries [*p0, *p1), or 1 when that range is not inside the
 * nstored entries (a structure changed since it was checked) */
static inline int
GC_SP(gc_sp_range)(const GC_I *ptr, ptrdiff_t r, ptrdiff_t nstored,
                   ptrdiff_t *p0, ptrdiff_t *p1)
{
    *p0 = (ptrdiff_t)ptr[r];
    *p1 = (ptrdiff_t)ptr[r + 1];
    return *p0 < 0 || *p1 > nstored || *p0 > *p1;
}

/* line r of the structure against one row x (nx wide); *bad is set when
 * the line's range or an index is out of bounds (entries skipped) */
static inline GC_T
GC_SP(gc_sp_line)(const GC_I *ptr, const GC_I *idx, const GC_T *val,
                  ptrdiff_t nstored, ptrdiff_t r, const GC_T *x,
                  ptrdiff_t nx, int *bad)
{
    GC_T acc = 0;
    ptrdiff_t p, p0, p1;
    if (GC_SP(gc_sp_range)(ptr, r, nstored, &p0, &p1)) {
        *bad = 1;
        return 0;
    }
    for (p = p0; p < p1; p++) {
        const GC_I j = idx[p];
        if (GC_UNLIKELY((size_t)j >= (size_t)nx)) {
            *bad = 1;
            continue;
        }
        acc += val[p] * x[j];
    }
    return acc;
}

int
GC_SP(gc_sp_gather)(ptrdiff_t nptr, const GC_I *ptr, const GC_I *idx,
                    const GC_T *val, ptrdiff_t nstored, ptrdiff_t B,
                    const GC_T *x, ptrdiff_t nx, GC_T *out, int nthreads)
{
    ptrdiff_t r, b;
    const ptrdiff_t work = (nstored + nptr) * B;
    const int par = nthreads > 1 && work >= GC_SPARSE_PARALLEL_MIN;
    int bad = 0;
    (void)par;
    if (B < 2 * nthreads) {
        /* lines over threads, one row of the block at a time */
        for (b = 0; b < B; b++) {
            const GC_T *xb = x + b * nx;
            GC_T *ob = out + b * nptr;
            #pragma omp parallel for if (par) num_threads(nthreads) schedule(dynamic, 2048) reduction(|:bad)
            for (r = 0; r < nptr; r++) {
                ob[r] = GC_SP(gc_sp_line)(ptr, idx, val, nstored, r, xb, nx, &bad);
            }
        }
        return bad;
    }
    #pragma omp parallel for if (par) num_threads(nthreads) schedule(dynamic, 1) reduction(|:bad)
    for (b = 0; b < B; b++) {
        const GC_T *xb = x + b * nx;
        GC_T *ob = out + b * nptr;
        ptrdiff_t q;
        for (q = 0; q < nptr; q++) {
            ob[q] = GC_SP(gc_sp_line)(ptr, idx, val, nstored, q, xb, nx, &bad);
        }
    }
    return bad;
}

/* out (nout) = sum over lines r of x[r] * line r; 1 when a line's range
 * or an index is out of bounds (entries skipped) */
static inline int
GC_SP(gc_sp_scatter_row)(ptrdiff_t nptr, const GC_I *ptr, const GC_I *idx,
                         const GC_T *val, ptrdiff_t nstored, const GC_T *x,
                         ptrdiff_t nout, GC_T *out)
{
    ptrdiff_t r, p;
    int bad = 0;
    for (r = 0; r < nout; r++) {
        out[r] = 0;
    }
    for (r = 0; r < nptr; r++) {
        const GC_T xr = x[r];
        ptrdiff_t p0, p1;
        if (GC_SP(gc_sp_range)(ptr, r, nstored, &p0, &p1)) {
            bad = 1;
            continue;
        }
        for (p = p0; p < p1; p++) {
            const GC_I j = idx[p];
            if (GC_UNLIKELY((size_t)j >= (size_t)nout)) {
                bad = 1;
                continue;
            }
            out[j] += val[p] * xr;
        }
    }
    return bad;
}

int
GC_SP(gc_sp_scatter)(ptrdiff_t nptr, const GC_I *ptr, const GC_I *idx,
                     const GC_T *val, ptrdiff_t nstored, ptrdiff_t B,
                     const GC_T *x, ptrdiff_t nout, GC_T *out, int nthreads)
{
    ptrdiff_t b;
    const int par = nthreads > 1 && B > 1
                    && (nstored + nptr) * B >= GC_SPARSE_PARALLEL_MIN;
    int bad = 0;
    (void)par;
    #pragma omp parallel for if (par) num_threads(nthreads) schedule(dynamic, 1) reduction(|:bad)
    for (b = 0; b < B; b++) {
        bad |= GC_SP(gc_sp_scatter_row)(nptr, ptr, idx, val, nstored,
                                        x + b * nptr, nout, out + b * nout);
    }
    return bad;
}

/* out[r * rs + idx[p] * cs] += val[p] (out zeroed by the caller): the
 * dense matrix of the structure, lines along rs, indices below nidx; 1
 * when something is out of bounds (skipped) */
int
GC_SP(gc_sp_todense)(ptrdiff_t nptr, const GC_I *ptr, const GC_I *idx,
                     const GC_T *val, ptrdiff_t nstored, ptrdiff_t nidx,
                     GC_T *out, ptrdiff_t rs, ptrdiff_t cs)
{
    ptrdiff_t r, p;
    int bad = 0;
    for (r = 0; r < nptr; r++) {
        ptrdiff_t p0, p1;
        if (GC_SP(gc_sp_range)(ptr, r, nstored, &p0, &p1)) {
            bad = 1;
            continue;
        }
        for (p = p0; p < p1; p++) {
            const GC_I j = idx[p];
            if ((size_t)j >= (size_t)nidx) {
                bad = 1;
                continue;
            }
            out[r * rs + (ptrdiff_t)j * cs] += val[p];
        }
    }
    return bad;
}

#undef GC_SP_CAT_
#undef GC_SP_CAT
#undef GC_SP
