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
 * value of line r at x[t * xs + r * xe]): entry p adds val[p] x(t, r)
 * into row t's index j = idx[p], in entry order.  Two targets: an index
 * in [ea, eb) goes straight to out (at out[t * os + j * de]); one in the
 * rest of the span [lo, hi) to the workspace w (left part [lo, ea) first,
 * then [eb, hi): at w[t * ws + (pos) * de]); one outside [lo, hi) is
 * skipped (1).  Inlined with constant strides, as the gather. */
static GC_SP_INLINE int
GC_SP(gc_sp_scatter_lines)(ptrdiff_t l0, ptrdiff_t l1, const GC_I *ptr,
                           const GC_I *idx, const GC_T *val,
                           ptrdiff_t nstored, const GC_T *x, const ptrdiff_t xs,
                           const ptrdiff_t xe, const ptrdiff_t bt,
                           const ptrdiff_t de, ptrdiff_t ea, ptrdiff_t eb,
                           GC_T *out, const ptrdiff_t os, ptrdiff_t lo,
                           ptrdiff_t hi, GC_T *w, const ptrdiff_t ws)
{
    const size_t espan = (size_t)(eb - ea);
    GC_T *const wl = w - lo * de;                   /* [lo, ea) */
    GC_T *const wr = w + (ea - lo - eb) * de;       /* [eb, hi) */
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
            ptrdiff_t s;
            if (GC_UNLIKELY((size_t)(j - ea) >= espan)) {
                if (j >= lo && j < ea) {
                    o = wl + j * de;
                }
                else if (j >= eb && j < hi) {
                    o = wr + j * de;
                }
                else {
                    bad = 1;
                    continue;
                }
                s = ws;
            }
            else {
                o = out + j * de;
                s = os;
            }
            for (t = 0; t < bt; t++) {
                o[t * s] += v * xr[t];
            }
        }
    }
    return bad;
}

/* gc_sp_scatter_lines inlined for a tile in the interleaved layout (index
 * j of row t at j GC_SP_TILE + t: de = GC_SP_TILE, row strides 1), a full
 * tile of rows, one row or bt rows (rows os apart in out, ws in w) */
#define GC_SP_SCATTER_LINES(l0, l1, x, bt, ea, eb, out, os, lo, hi, w, ws)   \
    (tiled                                                                    \
     ? GC_SP(gc_sp_scatter_lines)(l0, l1, ptr, idx, val, nstored, x, 1,       \
                                  GC_SP_TILE, GC_SP_TILE, GC_SP_TILE, ea, eb, \
                                  out, 1, lo, hi, w, 1)                       \
     : (bt) == GC_SP_TILE                                                     \
     ? GC_SP(gc_sp_scatter_lines)(l0, l1, ptr, idx, val, nstored, x, nptr, 1, \
                                  GC_SP_TILE, 1, ea, eb, out, os, lo, hi, w,  \
                                  ws)                                         \
     : (bt) == 1                                                              \
     ? GC_SP(gc_sp_scatter_lines)(l0, l1, ptr, idx, val, nstored, x, nptr, 1, \
                                  1, 1, ea, eb, out, os, lo, hi, w, ws)       \
     : GC_SP(gc_sp_scatter_lines)(l0, l1, ptr, idx, val, nstored, x, nptr, 1, \
                                  bt, 1, ea, eb, out, os, lo, hi, w, ws))

/* rows [0, bt) of a block (row t's index j at t * rs + j * de) zeroed over
 * the indices [a, e) */
static GC_SP_INLINE void
GC_SP(gc_sp_zero)(GC_T *o, ptrdiff_t bt, ptrdiff_t rs, ptrdiff_t de,
                  ptrdiff_t a, ptrdiff_t e)
{
    ptrdiff_t t;
    if (e <= a) {
        return;
    }
    if (de > 1) {
        /* index-major: the tile's values of [a, e) side by side */
        memset(o + a * de, 0, (size_t)((e - a) * de) * sizeof(GC_T));
        return;
    }
    for (t = 0; t < bt; t++) {
        memset(o + t * rs + a, 0, (size_t)(e - a) * sizeof(GC_T));
    }
}

#ifndef GC_SP_CHUNK_DEFINED
#define GC_SP_CHUNK_DEFINED
/* Chunk c of a partition: its span [*lo, *hi) and exclusive interval [*ea,
 * *eb); returns its workspace width, the shared parts [lo, ea) then [eb,
 * hi) side by side. */
static GC_SP_INLINE ptrdiff_t
gc_sp_chunk(const int64_t *part, ptrdiff_t c, ptrdiff_t *lo, ptrdiff_t *hi,
            ptrdiff_t *ea, ptrdiff_t *eb)
{
    *lo = (ptrdiff_t)part[GC_SP_P_LO + c];
    *hi = (ptrdiff_t)part[GC_SP_P_HI + c];
    *ea = (ptrdiff_t)part[GC_SP_P_EA + c];
    *eb = (ptrdiff_t)part[GC_SP_P_EB + c];
    return (*ea - *lo) + (*hi - *eb);
}
#endif

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
    const ptrdiff_t ng = P > 1 ? (ptrdiff_t)part[GC_SP_P_NGAP] : 0;
    const int par = nthreads > 1 && (nstored + nptr) * B >= GC_SPARSE_PARALLEL_MIN;
    /* a row's value of index j at row * rstep + j * de, in out (rstep
     * nout) and in a workspace of width w (rstep w): rows, or a tile's
     * interleaved layout (rstep 1, de GC_SP_TILE) */
    const ptrdiff_t de = tiled ? GC_SP_TILE : 1;
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
                                       nout, 0, nout, ot, nout);
        }
        return bad;
    }
    /* P chunks of lines (the structure's partition, gc_sp_check): chunk c
     * adds its lines' entries, in line order, straight into out over its
     * exclusive interval [ea_c, eb_c) (which no other chunk's span meets,
     * zeroed first by the chunk), and into its own workspace over the rest
     * of its index span [lo_c, hi_c).  Then each column of the gaps (the
     * indices outside every exclusive interval) is 0 + workspace c over
     * the chunks c whose span holds it, in chunk order.  So each column is
     * 0 + the sum of each chunk's terms in line order, the chunks in order
     * (0 + s is s: a sum from +0 never gives -0).  The workspaces hold the
     * spans' shared parts, at most 1/4 of the output (the partition's
     * cap). */
    off[0] = 0;
    for (c = 0; c < P; c++) {
        ptrdiff_t lo, hi, ea, eb;
        off[c + 1] = off[c] + gc_sp_chunk(part, c, &lo, &hi, &ea, &eb) * btmax;
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
                ptrdiff_t lo, hi, ea, eb;
                const ptrdiff_t wn = gc_sp_chunk(part, q, &lo, &hi, &ea, &eb);
                GC_T *w = ws + off[q];
                memset(w, 0, (size_t)(bt * wn) * sizeof(GC_T));
                GC_SP(gc_sp_zero)(ot, bt, nout, de, ea, eb);
                bad |= GC_SP_SCATTER_LINES((ptrdiff_t)part[GC_SP_P_BND + q],
                                           (ptrdiff_t)part[GC_SP_P_BND + q + 1],
                                           x + b0 * nptr, bt, ea, eb, ot, nout,
                                           lo, hi, w, wn);
            }
            #pragma omp for schedule(static)
            for (q = 0; q < nblk; q++) {
                const ptrdiff_t j0 = q * GC_SP_COLS;
                const ptrdiff_t j1 = nout - j0 < GC_SP_COLS ? nout : j0 + GC_SP_COLS;
                ptrdiff_t g, k, t, j;
                for (g = 0; g < ng; g++) {
                    const ptrdiff_t glo = (ptrdiff_t)part[GC_SP_P_GLO + g];
                    const ptrdiff_t ghi = (ptrdiff_t)part[GC_SP_P_GHI + g];
                    const ptrdiff_t a = glo > j0 ? glo : j0;
                    const ptrdiff_t e = ghi < j1 ? ghi : j1;
                    if (a >= e) {
                        continue;
                    }
                    GC_SP(gc_sp_zero)(ot, bt, nout, de, a, e);
                    for (k = 0; k < P; k++) {
                        /* chunk k's shared parts [lo, ea) and [eb, hi) at
                         * workspace positions from 0 and from ea - lo */
                        ptrdiff_t lo, hi, ea, eb, side;
                        const ptrdiff_t wn = gc_sp_chunk(part, k, &lo, &hi,
                                                         &ea, &eb);
                        for (side = 0; side < 2; side++) {
                            const ptrdiff_t s0 = side ? eb : lo;
                            const ptrdiff_t s1 = side ? hi : ea;
                            const ptrdiff_t sa = s0 > a ? s0 : a;
                            const ptrdiff_t se = s1 < e ? s1 : e;
                            /* index j at workspace position j - shift */
                            const ptrdiff_t shift = side ? eb - (ea - lo) : lo;
                            const GC_T *w = ws + off[k];
                            if (sa >= se) {
                                continue;
                            }
                            if (tiled) {
                                for (j = sa * de; j < se * de; j++) {
                                    ot[j] += w[j - shift * de];
                                }
                                continue;
                            }
                            for (t = 0; t < bt; t++) {
                                for (j = sa; j < se; j++) {
                                    ot[t * nout + j] += w[t * wn + j - shift];
                                }
                            }
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
