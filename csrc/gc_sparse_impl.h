/*
 * gc_sparse_impl.h -- type template for gc_sparse.c: GC_T the data type,
 * GC_I the index type, GC_S the suffix (si, sl, di, dl).  Not a public
 * header; no include guard on purpose.
 */
#define GC_SP_CAT_(a, b) a##_##b
#define GC_SP_CAT(a, b) GC_SP_CAT_(a, b)
#define GC_SP(base) GC_SP_CAT(base, GC_S)
#ifndef GC_SP_INLINE
#if defined(__GNUC__)
#define GC_SP_INLINE inline __attribute__((always_inline))
#else
#define GC_SP_INLINE inline
#endif
#endif
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

/* The gather of lines [r0, r1) for the bt rows t of a tile: out[t * os +
 * r * oe] = sum over line r's entries, in order, of val[p] x[t * xs +
 * idx[p] * xe]; 1 when a line's range or an index is out of bounds
 * (entries skipped).  Inlined with constant strides: rows (xs = nx, xe =
 * 1, os = no, oe = 1) for bt = GC_SP_TILE, 1 or any, and a tile's
 * interleaved layout (xs = os = 1, xe = oe = GC_SP_TILE: the tile's values
 * of one index side by side, so the tile's sums are one vector). */
static GC_SP_INLINE int
GC_SP(gc_sp_gather_lines)(ptrdiff_t r0, ptrdiff_t r1, const GC_I *ptr,
                          const GC_I *idx, const GC_T *val, ptrdiff_t nstored,
                          const GC_T *x, ptrdiff_t nx, const ptrdiff_t xs,
                          const ptrdiff_t xe, const ptrdiff_t bt, GC_T *out,
                          const ptrdiff_t os, const ptrdiff_t oe)
{
    ptrdiff_t r, p, t;
    int bad = 0;
    for (r = r0; r < r1; r++) {
        GC_T acc[GC_SP_TILE];
        ptrdiff_t p0, p1;
        for (t = 0; t < bt; t++) {
            acc[t] = 0;
        }
        if (GC_SP(gc_sp_range)(ptr, r, nstored, &p0, &p1)) {
            bad = 1;
            p1 = p0;
        }
        for (p = p0; p < p1; p++) {
            const GC_I j = idx[p];
            const GC_T v = val[p];
            const GC_T *xj;
            if (GC_UNLIKELY((size_t)j >= (size_t)nx)) {
                bad = 1;
                continue;
            }
            xj = x + (ptrdiff_t)j * xe;
            for (t = 0; t < bt; t++) {
                acc[t] += v * xj[t * xs];
            }
        }
        for (t = 0; t < bt; t++) {
            out[t * os + r * oe] = acc[t];
        }
    }
    return bad;
}

int
GC_SP(gc_sp_gather)(ptrdiff_t nptr, const GC_I *ptr, const GC_I *idx,
                    const GC_T *val, ptrdiff_t nstored, ptrdiff_t B,
                    const GC_T *x, ptrdiff_t nx, GC_T *out, int nthreads,
                    int tiled)
{
    /* tasks: (block of GC_SP_LINES lines) x (tile of GC_SP_TILE rows of
     * the block); a tile's sums run side by side over one walk of the
     * lines, each in the order of its line's entries */
    const ptrdiff_t nblk = (nptr + GC_SP_LINES - 1) / GC_SP_LINES;
    const ptrdiff_t ntile = (B + GC_SP_TILE - 1) / GC_SP_TILE;
    const ptrdiff_t work = (nstored + nptr) * B;
    const int par = nthreads > 1 && work >= GC_SPARSE_PARALLEL_MIN
                    && nblk * ntile > 1;
    ptrdiff_t q;
    int bad = 0;
    (void)par;
    #pragma omp parallel for if (par) num_threads(nthreads) schedule(dynamic, 1) reduction(|:bad)
    for (q = 0; q < nblk * ntile; q++) {
        const ptrdiff_t r0 = (q / ntile) * GC_SP_LINES;
        const ptrdiff_t r1 = r0 + GC_SP_LINES < nptr ? r0 + GC_SP_LINES : nptr;
        const ptrdiff_t t0 = (q % ntile) * GC_SP_TILE;
        const ptrdiff_t bt = B - t0 < GC_SP_TILE ? B - t0 : GC_SP_TILE;
        const GC_T *xt = x + t0 * nx;
        GC_T *ot = out + t0 * nptr;
        bad |= tiled
            ? GC_SP(gc_sp_gather_lines)(r0, r1, ptr, idx, val, nstored, xt, nx,
                                        1, GC_SP_TILE, GC_SP_TILE, ot, 1,
                                        GC_SP_TILE)
            : bt == GC_SP_TILE
            ? GC_SP(gc_sp_gather_lines)(r0, r1, ptr, idx, val, nstored, xt, nx,
                                        nx, 1, GC_SP_TILE, ot, nptr, 1)
            : bt == 1
            ? GC_SP(gc_sp_gather_lines)(r0, r1, ptr, idx, val, nstored, xt, nx,
                                        nx, 1, 1, ot, nptr, 1)
            : GC_SP(gc_sp_gather_lines)(r0, r1, ptr, idx, val, nstored, xt, nx,
                                        nx, 1, bt, ot, nptr, 1);
    }
    return bad;
}

/* The scatter of lines [l0, l1) for the bt rows t of a tile (row t's
 * value of line r at x[t * xs + r * xe]) into dst (index j of row t at
 * dst[t * ds + (j - lo) * de]): entry p adds val[p] x(t, r) into dst(t,
 * idx[p]); an index outside [lo, hi) is skipped (1).  Inlined with
 * constant strides, as the gather. */
static GC_SP_INLINE int
GC_SP(gc_sp_scatter_lines)(ptrdiff_t l0, ptrdiff_t l1, const GC_I *ptr,
                           const GC_I *idx, const GC_T *val,
                           ptrdiff_t nstored, const GC_T *x, const ptrdiff_t xs,
                           const ptrdiff_t xe, const ptrdiff_t bt, ptrdiff_t lo,
                           ptrdiff_t hi, GC_T *dst, const ptrdiff_t ds,
                           const ptrdiff_t de)
{
    const size_t span = (size_t)(hi - lo);
    GC_T *const base = dst - lo * de;
    ptrdiff_t r, p, t;
    int bad = 0;
    for (r = l0; r < l1; r++) {
        GC_T xr[GC_SP_TILE];
        ptrdiff_t p0, p1;
        if (GC_SP(gc_sp_range)(ptr, r, nstored, &p0, &p1)) {
            bad = 1;
            continue;
        }
        for (t = 0; t < bt; t++) {
            xr[t] = x[t * xs + r * xe];
        }
        for (p = p0; p < p1; p++) {
            const ptrdiff_t j = (ptrdiff_t)idx[p];
            const GC_T v = val[p];
            GC_T *o;
            if (GC_UNLIKELY((size_t)(j - lo) >= span)) {
                bad = 1;
                continue;
            }
            o = base + j * de;
            for (t = 0; t < bt; t++) {
                o[t * ds] += v * xr[t];
            }
        }
    }
    return bad;
}

/* gc_sp_scatter_lines inlined for a tile in the interleaved layout (dst
 * index-major: ds = 1, de = GC_SP_TILE), a full tile of rows, one row or
 * bt rows (dst rows ds apart) */
#define GC_SP_SCATTER_LINES(l0, l1, x, bt, lo, hi, dst, ds)                   \
    (tiled                                                                    \
     ? GC_SP(gc_sp_scatter_lines)(l0, l1, ptr, idx, val, nstored, x, 1,       \
                                  GC_SP_TILE, GC_SP_TILE, lo, hi, dst, 1,     \
                                  GC_SP_TILE)                                 \
     : (bt) == GC_SP_TILE                                                     \
     ? GC_SP(gc_sp_scatter_lines)(l0, l1, ptr, idx, val, nstored, x, nptr, 1, \
                                  GC_SP_TILE, lo, hi, dst, ds, 1)             \
     : (bt) == 1                                                              \
     ? GC_SP(gc_sp_scatter_lines)(l0, l1, ptr, idx, val, nstored, x, nptr, 1, \
                                  1, lo, hi, dst, ds, 1)                      \
     : GC_SP(gc_sp_scatter_lines)(l0, l1, ptr, idx, val, nstored, x, nptr, 1, \
                                  bt, lo, hi, dst, ds, 1))

int
GC_SP(gc_sp_scatter)(ptrdiff_t nptr, const GC_I *ptr, const GC_I *idx,
                     const GC_T *val, ptrdiff_t nstored, ptrdiff_t B,
                     const GC_T *x, ptrdiff_t nout, GC_T *out, int nthreads,
                     const int64_t *part, int tiled)
{
    const ptrdiff_t P = part != NULL && part[0] > 1 ? (ptrdiff_t)part[0] : 1;
    const ptrdiff_t ntile = (B + GC_SP_TILE - 1) / GC_SP_TILE;
    const ptrdiff_t btmax = B < GC_SP_TILE ? B : GC_SP_TILE;
    const ptrdiff_t nblk = (nout + GC_SP_COLS - 1) / GC_SP_COLS;
    const int par = nthreads > 1 && (nstored + nptr) * B >= GC_SPARSE_PARALLEL_MIN;
    /* a row's value of index j at row * rstep + j * estep, in out and in a
     * workspace of width w: rows, or a tile's interleaved layout */
    const ptrdiff_t estep = tiled ? GC_SP_TILE : 1;
    ptrdiff_t off[GC_SP_CHUNKS_MAX + 1], c, t0;
    GC_T *ws;
    int bad = 0;
    (void)par;
    if (P == 1) {
        /* one chunk: the tiles over threads, each summed in line order */
        #pragma omp parallel for if (par && ntile > 1) num_threads(nthreads) schedule(dynamic, 1) reduction(|:bad)
        for (t0 = 0; t0 < ntile; t0++) {
            const ptrdiff_t b0 = t0 * GC_SP_TILE;
            const ptrdiff_t bt = B - b0 < GC_SP_TILE ? B - b0 : GC_SP_TILE;
            GC_T *ot = out + b0 * nout;
            memset(ot, 0, (size_t)(bt * nout) * sizeof(GC_T));
            bad |= GC_SP_SCATTER_LINES(0, nptr, x + b0 * nptr, bt, 0, nout, ot,
                                       nout);
        }
        return bad;
    }
    /* P chunks of lines (the structure's partition, gc_sp_check): chunk c
     * adds its lines' entries into its own workspace over its index span
     * [lo_c, hi_c) (the one-target loop of P = 1); then each column is
     * 0 + workspace c, over the chunks c whose span holds it, in chunk
     * order.  (A column inside chunk c's exclusive interval gets chunk c's
     * sum alone.)  The workspaces hold the spans' sum, at most 5/4 of the
     * output (the partition's cap). */
    off[0] = 0;
    for (c = 0; c < P; c++) {
        off[c + 1] = off[c]
            + (ptrdiff_t)(part[GC_SP_P_HI + c] - part[GC_SP_P_LO + c]) * btmax;
    }
    ws = (GC_T *)malloc((size_t)(off[P] > 0 ? off[P] : 1) * sizeof(GC_T));
    if (ws == NULL) {
        return 2;
    }
    #pragma omp parallel if (par) num_threads(nthreads) reduction(|:bad)
    {
        ptrdiff_t b0, q;
        for (b0 = 0; b0 < B; b0 += GC_SP_TILE) {
            const ptrdiff_t bt = B - b0 < GC_SP_TILE ? B - b0 : GC_SP_TILE;
            GC_T *ot = out + b0 * nout;
            #pragma omp for schedule(dynamic, 1)
            for (q = 0; q < P; q++) {
                const ptrdiff_t lo = (ptrdiff_t)part[GC_SP_P_LO + q];
                const ptrdiff_t hi = (ptrdiff_t)part[GC_SP_P_HI + q];
                GC_T *w = ws + off[q];
                memset(w, 0, (size_t)(bt * (hi - lo)) * sizeof(GC_T));
                bad |= GC_SP_SCATTER_LINES((ptrdiff_t)part[GC_SP_P_BND + q],
                                           (ptrdiff_t)part[GC_SP_P_BND + q + 1],
                                           x + b0 * nptr, bt, lo, hi, w,
                                           hi - lo);
            }
            #pragma omp for schedule(static)
            for (q = 0; q < nblk; q++) {
                const ptrdiff_t j0 = q * GC_SP_COLS;
                const ptrdiff_t j1 = nout - j0 < GC_SP_COLS ? nout : j0 + GC_SP_COLS;
                ptrdiff_t k, t, j;
                if (tiled) {
                    /* index-major: the tile's values of [j0, j1) in a row */
                    memset(ot + j0 * estep, 0,
                           (size_t)((j1 - j0) * estep) * sizeof(GC_T));
                }
                else {
                    for (t = 0; t < bt; t++) {
                        memset(ot + t * nout + j0, 0,
                               (size_t)(j1 - j0) * sizeof(GC_T));
                    }
                }
                for (k = 0; k < P; k++) {
                    const ptrdiff_t lo = (ptrdiff_t)part[GC_SP_P_LO + k];
                    const ptrdiff_t hi = (ptrdiff_t)part[GC_SP_P_HI + k];
                    const ptrdiff_t a = lo > j0 ? lo : j0, e = hi < j1 ? hi : j1;
                    const GC_T *w = ws + off[k] - lo * estep;
                    if (tiled) {
                        for (j = a * estep; j < e * estep; j++) {
                            ot[j] += w[j];
                        }
                        continue;
                    }
                    for (t = 0; t < bt; t++) {
                        for (j = a; j < e; j++) {
                            ot[t * nout + j] += w[t * (hi - lo) + j];
                        }
                    }
                }
            }
        }
    }
    free(ws);
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

#undef GC_SP_SCATTER_LINES
#undef GC_SP_CAT_
#undef GC_SP_CAT
#undef GC_SP
