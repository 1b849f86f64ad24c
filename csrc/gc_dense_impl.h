/*
 * gc_dense_impl.h -- type template for gc_dense.c.  Included once per
 * element type with GC_T (the C type), GC_SFX (s or d) and GC_W (the width
 * of a block of partial sums: two 512-bit registers of GC_T) defined.
 * Not a public header.
 *
 * GC_TA, when defined, is the matrices' element type (GC_T otherwise): the
 * mixed instance (suffix m) reads float32 matrices into float64 sums, each
 * element converted exactly on load, with the double instance's lanes and
 * order of operations -- so its results are the double kernels' on the
 * matrix converted to float64, up to FMA contraction (accumulate="float64").
 *
 * No loop here reassociates a sum across SIMD lanes: every partial-sum
 * block has the fixed width GC_W, so a result is the same whichever
 * instruction set the dispatcher picked (up to FMA contraction).
 */
#define GC_CAT_(a, b) a##_##b
#define GC_CAT(a, b) GC_CAT_(a, b)
#define GC_NAME(base) GC_CAT(base, GC_SFX)
#ifndef GC_TA
#define GC_TA GC_T
#define GC_TA_DEFAULTED
#endif

/* ------------------------------------------------------------------------
 * y = A^T x: y[c] = sum_{r<m} x[r] * A[r*rs + c*cs], c in [c0, c1)
 * ---------------------------------------------------------------------- */

/* One block of GC_W unit-stride columns, all rows: out[l] = sum_r x[r] p[r*rs+l].
 * Four partial sums (rows r mod 4) stay in registers. */
static GC_INLINE void
GC_NAME(axpy_block)(ptrdiff_t m, const GC_TA *restrict p, ptrdiff_t rs,
                    const GC_T *restrict x, GC_T *restrict out)
{
    GC_T s0[GC_W] = {0}, s1[GC_W] = {0}, s2[GC_W] = {0}, s3[GC_W] = {0};
    ptrdiff_t r, l;
    for (r = 0; r + 4 <= m; r += 4) {
        const GC_TA *restrict q = p + r * rs;
        const GC_T x0 = x[r], x1 = x[r + 1], x2 = x[r + 2], x3 = x[r + 3];
        for (l = 0; l < GC_W; l++) {
            s0[l] += x0 * q[l];
            s1[l] += x1 * q[rs + l];
            s2[l] += x2 * q[2 * rs + l];
            s3[l] += x3 * q[3 * rs + l];
        }
    }
    for (; r < m; r++) {
        const GC_TA *restrict q = p + r * rs;
        const GC_T x0 = x[r];
        for (l = 0; l < GC_W; l++) {
            s0[l] += x0 * q[l];
        }
    }
    for (l = 0; l < GC_W; l++) {
        out[l] = (s0[l] + s1[l]) + (s2[l] + s3[l]);
    }
}

/* Two blocks (2 GC_W unit-stride columns), all rows, two partial sums (rows
 * r mod 2): reads each row's 2 GC_W columns in one pass. */
static GC_INLINE void
GC_NAME(axpy_block2)(ptrdiff_t m, const GC_TA *restrict p, ptrdiff_t rs,
                     const GC_T *restrict x, GC_T *restrict out)
{
    GC_T s0[2 * GC_W] = {0}, s1[2 * GC_W] = {0};
    ptrdiff_t r, l;
    for (r = 0; r + 2 <= m; r += 2) {
        const GC_TA *restrict q = p + r * rs;
        const GC_T x0 = x[r], x1 = x[r + 1];
        for (l = 0; l < 2 * GC_W; l++) {
            s0[l] += x0 * q[l];
            s1[l] += x1 * q[rs + l];
        }
    }
    if (r < m) {
        const GC_TA *restrict q = p + r * rs;
        const GC_T x0 = x[r];
        for (l = 0; l < 2 * GC_W; l++) {
            s0[l] += x0 * q[l];
        }
    }
    for (l = 0; l < 2 * GC_W; l++) {
        out[l] = s0[l] + s1[l];
    }
}

/* Register-blocked A^T x for unit column stride: for small matrices (cache
 * resident) and narrow ones, where y would otherwise be a latency chain. */
GC_CLONES static void
GC_NAME(axpy_regblock)(ptrdiff_t m, ptrdiff_t c0, ptrdiff_t c1,
                       const GC_TA *A, ptrdiff_t rs,
                       const GC_T *restrict x, GC_T *restrict y)
{
    ptrdiff_t c = c0, r, l;
    for (; c + 2 * GC_W <= c1; c += 2 * GC_W) {
        GC_NAME(axpy_block2)(m, A + c, rs, x, y + c);
    }
    for (; c + GC_W <= c1; c += GC_W) {
        GC_NAME(axpy_block)(m, A + c, rs, x, y + c);
    }
    if (c < c1) {
        /* column tail, narrower than a block */
        const ptrdiff_t w = c1 - c;
        GC_T s0[GC_W] = {0}, s1[GC_W] = {0};
        for (r = 0; r + 2 <= m; r += 2) {
            const GC_TA *restrict q = A + r * rs + c;
            const GC_T x0 = x[r], x1 = x[r + 1];
            for (l = 0; l < w; l++) {
                s0[l] += x0 * q[l];
                s1[l] += x1 * q[rs + l];
            }
        }
        for (; r < m; r++) {
            const GC_TA *restrict q = A + r * rs + c;
            for (l = 0; l < w; l++) {
                s0[l] += x[r] * q[l];
            }
        }
        for (l = 0; l < w; l++) {
            y[c + l] = s0[l] + s1[l];
        }
    }
}

/* Streaming A^T x for large matrices: rows are read in order, four at a
 * time, and the y slice (in cache) is updated once per four rows. */
GC_CLONES static void
GC_NAME(axpy_stream)(ptrdiff_t m, ptrdiff_t c0, ptrdiff_t c1,
                     const GC_TA *A, ptrdiff_t rs,
                     const GC_T *restrict x, GC_T *restrict y)
{
    ptrdiff_t r = 0, c;
    for (c = c0; c < c1; c++) {
        y[c] = 0;
    }
    for (; r + 4 <= m; r += 4) {
        const GC_TA *restrict a0 = A + r * rs;
        const GC_TA *restrict a1 = a0 + rs;
        const GC_TA *restrict a2 = a1 + rs;
        const GC_TA *restrict a3 = a2 + rs;
        const GC_T x0 = x[r], x1 = x[r + 1], x2 = x[r + 2], x3 = x[r + 3];
        for (c = c0; c < c1; c++) {
            y[c] += (x0 * a0[c] + x1 * a1[c]) + (x2 * a2[c] + x3 * a3[c]);
        }
    }
    for (; r < m; r++) {
        const GC_TA *restrict a0 = A + r * rs;
        const GC_T x0 = x[r];
        for (c = c0; c < c1; c++) {
            y[c] += x0 * a0[c];
        }
    }
}

/* Any column stride (strided views, broadcast columns): rows in order, four
 * at a time, as in axpy_stream. */
GC_CLONES static void
GC_NAME(axpy_strided)(ptrdiff_t m, ptrdiff_t c0, ptrdiff_t c1,
                      const GC_TA *A, ptrdiff_t rs, ptrdiff_t cs,
                      const GC_T *restrict x, GC_T *restrict y)
{
    ptrdiff_t r = 0, c;
    for (c = c0; c < c1; c++) {
        y[c] = 0;
    }
    for (; r + 4 <= m; r += 4) {
        const GC_TA *a0 = A + r * rs;
        const GC_TA *a1 = a0 + rs;
        const GC_TA *a2 = a1 + rs;
        const GC_TA *a3 = a2 + rs;
        const GC_T x0 = x[r], x1 = x[r + 1], x2 = x[r + 2], x3 = x[r + 3];
        for (c = c0; c < c1; c++) {
            const ptrdiff_t o = c * cs;
            y[c] += (x0 * a0[o] + x1 * a1[o]) + (x2 * a2[o] + x3 * a3[o]);
        }
    }
    for (; r < m; r++) {
        const GC_TA *a0 = A + r * rs;
        const GC_T x0 = x[r];
        for (c = c0; c < c1; c++) {
            y[c] += x0 * a0[c * cs];
        }
    }
}

/* Which A^T x kernel a whole (m, n) product uses.  Decided once per product,
 * never per thread slice, so that results do not depend on the thread count. */
static int
GC_NAME(axpy_kind)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t cs)
{
    if (cs != 1) {
        return GC_AXPY_STRIDED;
    }
    if (m * n * (ptrdiff_t)sizeof(GC_T) <= GC_REGBLOCK_BYTES || n <= 2 * GC_W) {
        return GC_AXPY_REGBLOCK;
    }
    return GC_AXPY_STREAM;
}

static void
GC_NAME(axpy_rows_range)(int kind, ptrdiff_t m, ptrdiff_t c0, ptrdiff_t c1,
                         const GC_TA *A, ptrdiff_t rs, ptrdiff_t cs,
                         const GC_T *x, GC_T *y)
{
    if (kind == GC_AXPY_STRIDED) {
        GC_NAME(axpy_strided)(m, c0, c1, A, rs, cs, x, y);
    }
    else if (kind == GC_AXPY_REGBLOCK) {
        GC_NAME(axpy_regblock)(m, c0, c1, A, rs, x, y);
    }
    else {
        GC_NAME(axpy_stream)(m, c0, c1, A, rs, x, y);
    }
}

/* ------------------------------------------------------------------------
 * y = A x: y[r] = sum_{c<n} A[r*rs + c*cs] * x[c], r in [r0, r1)
 * ---------------------------------------------------------------------- */

/* sum of s[0:GC_W] by pairwise halving: each step is an element-wise add of
 * two halves, in a fixed order:
 *   (GC_W 32: s[l] += s[l + 16], l < 16), s[l] += s[l + 8] (l < 8),
 *   s[l] += s[l + 4] (l < 4), then (s[0] + s[2]) + (s[1] + s[3]).
 * With GCC/Clang the halves are vectors of four (so the steps stay in
 * registers; the compilers otherwise scalarise them), elsewhere loops: the
 * same additions either way. */
#if defined(__GNUC__)
typedef GC_T GC_NAME(v4) __attribute__((vector_size(4 * sizeof(GC_T))));
#endif
static GC_INLINE GC_T
GC_NAME(fold)(const GC_T *s)
{
#if defined(__GNUC__)
    GC_NAME(v4) g[GC_W / 4];
    memcpy(g, s, sizeof g);
#if GC_W >= 32
    for (ptrdiff_t l = 0; l < 4; l++) {
        g[l] += g[l + 4];
    }
#endif
    g[0] += g[2];
    g[1] += g[3];
    g[0] += g[1];
    return (g[0][0] + g[0][2]) + (g[0][1] + g[0][3]);
#else
    GC_T h[GC_W];
    ptrdiff_t l;
    for (l = 0; l < GC_W; l++) {
        h[l] = s[l];
    }
#if GC_W >= 32
    for (l = 0; l < 16; l++) {
        h[l] += h[l + 16];
    }
#endif
    for (l = 0; l < 8; l++) {
        h[l] += h[l + 8];
    }
    for (l = 0; l < 4; l++) {
        h[l] += h[l + 4];
    }
    return (h[0] + h[2]) + (h[1] + h[3]);
#endif
}

/* Unit column stride, short rows (n < GC_SHORT_MAX).  Each row sums in
 * GC_W lanes, then folds them by pairwise halving -- the same additions as
 * fold() and as dot_blocked's one-block rows, so the same bits.
 *
 * With GCC the fold is done for a group of rows at once ("transposed"):
 * each row's lanes are halved twice within the row (to one 32-byte vector
 * of lanes), and then two vectors of R rows x L lanes merge into one of 2R
 * rows x L/2 lanes (lane j + lane j + L/2 of every row: two shuffles and
 * one add), until one vector holds the group's row sums: a prebuilt
 * Chain.jvp of 64 links of 16 x 16 float64 went from 0.73x to ~0.95x the
 * Chain.vjp's speed (issue 12, item 5).  Rows shorter than the lanes (all
 * tail) run a group's running sums side by side.  Rows left over after
 * the last whole group are folded one at a time: the same additions. */
static GC_INLINE void
GC_NAME(short_row)(ptrdiff_t nb, ptrdiff_t n, const GC_TA *restrict a,
                   const GC_T *restrict x, GC_T *restrict y)
{
    ptrdiff_t c, l;
    GC_T s[GC_W] = {0};
    GC_T t = 0;
    for (c = 0; c < nb; c += GC_W) {
        for (l = 0; l < GC_W; l++) {
            s[l] += a[c + l] * x[c + l];
        }
    }
    for (c = nb; c < n; c++) {
        t += a[c] * x[c];
        GC_SERIAL(t);
    }
    *y = GC_NAME(fold)(s) + t;
}

#if defined(__GNUC__) && !defined(__clang__)
/* The folds' shuffles act on 32-byte vectors: single in-lane or
 * 128-bit-half instructions with AVX2 and AVX-512 alike (64-byte vectors'
 * shuffles were scalarised in the AVX2 clone).  The loads and FMAs stay
 * 64 bytes wide: with 32-byte loads the per-sample jvp, streaming its
 * links from memory, ran at 13 GB/s instead of 19. */
#define GC_V4 (GC_W / 4)            /* lanes a vector: 4 (double), 8 (float) */

typedef GC_T GC_NAME(v32) __attribute__((vector_size(32)));
typedef GC_T GC_NAME(v64) __attribute__((vector_size(64)));
typedef GC_TA GC_NAME(v64a) __attribute__((vector_size(2 * GC_V4 * sizeof(GC_TA))));
#if GC_V4 == 4
typedef long long GC_NAME(vmask) __attribute__((vector_size(32)));
#else
typedef int GC_NAME(vmask) __attribute__((vector_size(32)));
#endif

/* One row's GC_W lane sums after its first two halvings (lane l + lane
 * l + GC_W / 2, then + lane l + GC_W / 4): GC_V4 lanes. */
static GC_INLINE GC_NAME(v32)
GC_NAME(row_quarter)(ptrdiff_t nb, const GC_TA *restrict a,
                     const GC_T *restrict x)
{
    GC_NAME(v64) lo = {0}, hi = {0}, xa, xb, h;
    GC_NAME(v64a) aa, ab;
    GC_NAME(v32) q[2];
    ptrdiff_t c;
    for (c = 0; c < nb; c += GC_W) {
        memcpy(&aa, a + c, sizeof aa);
        memcpy(&ab, a + c + 2 * GC_V4, sizeof ab);
        memcpy(&xa, x + c, sizeof xa);
        memcpy(&xb, x + c + 2 * GC_V4, sizeof xb);
        lo += __builtin_convertvector(aa, GC_NAME(v64)) * xa;
        hi += __builtin_convertvector(ab, GC_NAME(v64)) * xb;
    }
    h = lo + hi;
    memcpy(q, &h, sizeof q);
    return q[0] + q[1];
}

/* p and q each hold rows of L lanes (L = 4 or 2 for float64; 8, 4 or 2
 * for float32); the result holds twice as many rows of L / 2 lanes, lane j
 * of a row being lane j + lane j + L / 2 of that row.  The row order is
 * whatever the cheap shuffles give (each is one instruction with AVX2:
 * vperm2f128, vunpck*, vshufps); GC_NAME(perm) undoes it at the end. */
#if GC_V4 == 4
static GC_INLINE GC_NAME(v32)
GC_NAME(merge)(GC_NAME(v32) p, GC_NAME(v32) q, int L)
{
    if (L == 4) {
        return __builtin_shuffle(p, q, (GC_NAME(vmask)){0, 1, 4, 5}) +
               __builtin_shuffle(p, q, (GC_NAME(vmask)){2, 3, 6, 7});
    }
    return __builtin_shuffle(p, q, (GC_NAME(vmask)){0, 4, 2, 6}) +
           __builtin_shuffle(p, q, (GC_NAME(vmask)){1, 5, 3, 7});
}
/* lane i of the last merge holds row perm[i] of the group */
static const int GC_NAME(perm)[4] = {0, 2, 1, 3};
#else
static GC_INLINE GC_NAME(v32)
GC_NAME(merge)(GC_NAME(v32) p, GC_NAME(v32) q, int L)
{
    if (L == 8) {
        return __builtin_shuffle(p, q, (GC_NAME(vmask)){0, 1, 2, 3, 8, 9, 10, 11}) +
               __builtin_shuffle(p, q, (GC_NAME(vmask)){4, 5, 6, 7, 12, 13, 14, 15});
    }
    if (L == 4) {
        return __builtin_shuffle(p, q, (GC_NAME(vmask)){0, 1, 8, 9, 4, 5, 12, 13}) +
               __builtin_shuffle(p, q, (GC_NAME(vmask)){2, 3, 10, 11, 6, 7, 14, 15});
    }
    return __builtin_shuffle(p, q, (GC_NAME(vmask)){0, 2, 8, 10, 4, 6, 12, 14}) +
           __builtin_shuffle(p, q, (GC_NAME(vmask)){1, 3, 9, 11, 5, 7, 13, 15});
}
static const int GC_NAME(perm)[8] = {0, 2, 4, 6, 1, 3, 5, 7};
#endif

GC_CLONES static void
GC_NAME(dot_short)(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t n,
                   const GC_TA *A, ptrdiff_t rs,
                   const GC_T *restrict x, GC_T *restrict y)
{
    ptrdiff_t r, c;
    int i;
    const ptrdiff_t nb = n - n % GC_W;
    r = r0;
    for (; r + GC_V4 <= r1 && nb > 0; r += GC_V4) {
        GC_NAME(v32) t[GC_V4], f;
        /* the rows in order (a group's rows read last to first -- the
         * order GCC evaluated nested calls' arguments in -- ran 3x slower
         * from L3) */
#pragma GCC unroll 8
        for (i = 0; i < GC_V4; i++) {
            t[i] = GC_NAME(row_quarter)(nb, A + (r + i) * rs, x);
        }
#if GC_V4 == 8
#pragma GCC unroll 4
        for (i = 0; i < 4; i++) {
            t[i] = GC_NAME(merge)(t[2 * i], t[2 * i + 1], 8);
        }
#endif
        t[0] = GC_NAME(merge)(t[0], t[1], 4);
        t[1] = GC_NAME(merge)(t[2], t[3], 4);
        f = GC_NAME(merge)(t[0], t[1], 2);
        if (nb == n) {
            for (i = 0; i < GC_V4; i++) {
                /* + 0: short_row's fold(s) + t with no tail (a -0 sum
                 * stores +0 on every path) */
                y[r + GC_NAME(perm)[i]] = f[i] + (GC_T)0;
            }
            continue;
        }
        for (i = 0; i < GC_V4; i++) {
            const ptrdiff_t ri = r + GC_NAME(perm)[i];
            const GC_TA *restrict a = A + ri * rs;
            GC_T t = 0;
            for (c = nb; c < n; c++) {
                t += a[c] * x[c];
                GC_SERIAL(t);
            }
            y[ri] = f[i] + t;
        }
    }
    /* rows shorter than the lanes: all tail, GC_V4 rows' running sums side
     * by side (independent chains) */
    for (; r + GC_V4 <= r1 && nb == 0; r += GC_V4) {
        GC_T t[GC_V4] = {0};
        for (c = 0; c < n; c++) {
#pragma GCC unroll 8
            for (i = 0; i < GC_V4; i++) {
                t[i] += A[(r + i) * rs + c] * x[c];
                GC_SERIAL(t[i]);
            }
        }
        for (i = 0; i < GC_V4; i++) {
            y[r + i] = (GC_T)0 + t[i];
        }
    }
    for (; r < r1; r++) {
        GC_NAME(short_row)(nb, n, A + r * rs, x, y + r);
    }
}
#undef GC_V4
#else
GC_CLONES static void
GC_NAME(dot_short)(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t n,
                   const GC_TA *A, ptrdiff_t rs,
                   const GC_T *restrict x, GC_T *restrict y)
{
    ptrdiff_t r;
    const ptrdiff_t nb = n - n % GC_W;
    for (r = r0; r < r1; r++) {
        GC_NAME(short_row)(nb, n, A + r * rs, x, y + r);
    }
}
#endif

/* Every other row: four rows at a time share each load of x; each row sums
 * in GC_W lanes, folded at the end.  A last group of fewer than four rows
 * repeats its final row in the missing slots, so that every row goes
 * through the same instructions wherever it sits (results do not depend on
 * how rows are split between threads).  Rows longer than GC_DOT_BLOCK (a
 * multiple of GC_W) are cut into blocks; a block's lane sums start from
 * zero, and the blocks' lane vectors are added in a fixed binary tree -- a
 * cascade: block b is merged with the pending sums of the blocks before it
 * as b's binary carries dictate, older + newer -- so a row of n terms sums
 * with an error that grows as log2(n / GC_DOT_BLOCK) + GC_DOT_BLOCK / GC_W
 * rather than n / GC_W, in an order that depends on n alone.  A strided row
 * goes through the same operations (its loads strided), so it gives the
 * contiguous row's bits. */
#define GC_DOT_BLOCK ((ptrdiff_t)GC_W * 64)
#ifndef GC_SHORT_MAX
#define GC_SHORT_MAX ((ptrdiff_t)GC_W * 16)
#endif
#define GC_DOT_LEVELS 32           /* up to 2^32 blocks in a row */

static GC_INLINE void
GC_NAME(dot_block4)(ptrdiff_t nb, ptrdiff_t cs, const GC_TA *restrict a0,
                    const GC_TA *restrict a1, const GC_TA *restrict a2,
                    const GC_TA *restrict a3, const GC_T *restrict x,
                    GC_T *restrict P)
{
    ptrdiff_t c, l;
    GC_T s0[GC_W] = {0}, s1[GC_W] = {0}, s2[GC_W] = {0}, s3[GC_W] = {0};
    for (c = 0; c < nb; c += GC_W) {
        for (l = 0; l < GC_W; l++) {
            const GC_T xv = x[c + l];
            s0[l] += a0[(c + l) * cs] * xv;
            s1[l] += a1[(c + l) * cs] * xv;
            s2[l] += a2[(c + l) * cs] * xv;
            s3[l] += a3[(c + l) * cs] * xv;
        }
    }
    for (l = 0; l < GC_W; l++) {
        P[l] = s0[l];
        P[GC_W + l] = s1[l];
        P[2 * GC_W + l] = s2[l];
        P[3 * GC_W + l] = s3[l];
    }
}

GC_CLONES static void
GC_NAME(dot_blocked)(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t n,
                     const GC_TA *A, ptrdiff_t rs, ptrdiff_t cs,
                     const GC_T *restrict x, GC_T *restrict y)
{
    ptrdiff_t r, c, e, i;
    const ptrdiff_t nb = n - n % GC_W;
    GC_T stk[GC_DOT_LEVELS][4 * GC_W];
    GC_T P[4 * GC_W];
    for (r = r0; r < r1; r += 4) {
        const ptrdiff_t nr = r1 - r < 4 ? r1 - r : 4;
        const GC_TA *rows[4];
        GC_T t[4] = {0, 0, 0, 0};
        for (i = 0; i < 4; i++) {
            rows[i] = A + (r + (i < nr ? i : nr - 1)) * rs;
        }
        if (nb <= GC_DOT_BLOCK) {
            /* one block (or none): its lane sums are the rows' */
            if (cs == 1) {      /* the unit-stride instance: vector loads */
                GC_NAME(dot_block4)(nb, 1, rows[0], rows[1], rows[2], rows[3], x, P);
            }
            else {
                GC_NAME(dot_block4)(nb, cs, rows[0], rows[1], rows[2], rows[3], x, P);
            }
        }
        else {
            unsigned long long cnt = 0;
            int lvl, have = 0;
            for (c = 0; c < nb; c += GC_DOT_BLOCK) {
                const ptrdiff_t w = nb - c < GC_DOT_BLOCK ? nb - c : GC_DOT_BLOCK;
                if (cs == 1) {
                    GC_NAME(dot_block4)(w, 1, rows[0] + c, rows[1] + c,
                                        rows[2] + c, rows[3] + c, x + c, P);
                }
                else {
                    GC_NAME(dot_block4)(w, cs, rows[0] + c * cs, rows[1] + c * cs,
                                        rows[2] + c * cs, rows[3] + c * cs, x + c, P);
                }
                /* the cascade: merge with the pending sums block cnt's
                 * carries name (older + newer), then park the result at
                 * its level */
                for (lvl = 0; (cnt >> lvl) & 1; lvl++) {
                    for (e = 0; e < 4 * GC_W; e++) {
                        P[e] = stk[lvl][e] + P[e];
                    }
                }
                memcpy(stk[lvl], P, sizeof P);
                cnt++;
            }
            /* the pending sums, lowest level (newest) first */
            for (lvl = 0; lvl < GC_DOT_LEVELS; lvl++) {
                if ((cnt >> lvl) & 1) {
                    if (!have) {
                        memcpy(P, stk[lvl], sizeof P);
                        have = 1;
                    }
                    else {
                        for (e = 0; e < 4 * GC_W; e++) {
                            P[e] = stk[lvl][e] + P[e];
                        }
                    }
                }
            }
        }
        for (c = nb; c < n; c++) {
            for (i = 0; i < 4; i++) {
                t[i] += rows[i][c * cs] * x[c];
                GC_SERIAL(t[i]);
            }
        }
        for (i = 0; i < nr; i++) {
            y[r + i] = GC_NAME(fold)(P + i * GC_W) + t[i];
        }
    }
}

static void
GC_NAME(dot_rows_range)(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t n,
                        const GC_TA *A, ptrdiff_t rs, ptrdiff_t cs,
                        const GC_T *x, GC_T *y)
{
    if (cs == 1 && n < GC_SHORT_MAX) {
        GC_NAME(dot_short)(r0, r1, n, A, rs, x, y);
    }
    else {
        GC_NAME(dot_blocked)(r0, r1, n, A, rs, cs, x, y);
    }
}

/* ------------------------------------------------------------------------
 * Entry points: split large products over OpenMP threads.
 * ---------------------------------------------------------------------- */

/* Rows per chunk of a large A^T x: a function of m alone (never of the
 * thread count), a multiple of 4, at least GC_CHUNK_MIN_ROWS, and at most
 * GC_CHUNK_MAX chunks in all. */
static ptrdiff_t
GC_NAME(chunk_rows)(ptrdiff_t m)
{
    ptrdiff_t c = (m + GC_CHUNK_MAX - 1) / GC_CHUNK_MAX;
    if (c < GC_CHUNK_MIN_ROWS) {
        c = GC_CHUNK_MIN_ROWS;
    }
    return (c + 3) / 4 * 4;
}

/* y[c] += P[j*n + c] for j = 0..np-1 in order, c in [c0, c1). */
static void
GC_NAME(add_partials)(ptrdiff_t np, ptrdiff_t n, ptrdiff_t c0, ptrdiff_t c1,
                      const GC_T *restrict P, GC_T *restrict y)
{
    ptrdiff_t j, c;
    for (j = 0; j < np; j++) {
        const GC_T *restrict p = P + j * n;
        for (c = c0; c < c1; c++) {
            y[c] += p[c];
        }
    }
}

/*
 * A matrix of more than GC_CHUNK_MIN_ROWS rows is cut into chunks of whole
 * rows (which also keeps long float32 sums accurate: two levels of partial
 * sums instead of one running sum);
 * chunk j yields the partial sum P_j = A[rows of j]^T x[rows of j], and
 * y = ((P_0 + P_1) + P_2) + ... in chunk order.  Threads take whole chunks
 * (each streams a contiguous band of A) and then whole column ranges of the
 * final sum, so the result is the same for every thread count.
 */
int
GC_NAME(gc_axpy_rows)(ptrdiff_t m, ptrdiff_t n, const GC_TA *A, ptrdiff_t rs,
                      ptrdiff_t cs, const GC_T *x, GC_T *y, int nthreads)
{
    const int kind = GC_NAME(axpy_kind)(m, n, cs);
    ptrdiff_t chunk, nch, j;
    GC_T *P;
    if (n == 0) {
        return 0;
    }
    chunk = GC_NAME(chunk_rows)(m);
    nch = (m + chunk - 1) / chunk;
    if (nch <= 1) {
        GC_NAME(axpy_rows_range)(kind, m, 0, n, A, rs, cs, x, y);
        return 0;
    }
#ifdef _OPENMP
    if (nthreads > 1 && m * n >= GC_PARALLEL_MIN_ELEMS) {
        const ptrdiff_t ncb = (n + GC_W * 16 - 1) / (GC_W * 16);
        P = (GC_T *)malloc((size_t)(nch - 1) * (size_t)n * sizeof(GC_T));
        if (P == NULL) {
            return -1;
        }
        if (nthreads > nch) {
            nthreads = (int)nch;
        }
        #pragma omp parallel num_threads(nthreads)
        {
            ptrdiff_t jj, cb;
            /* dynamic: a thread slowed by another process's spinning thread
             * (an idle BLAS pool, say) takes fewer chunks instead of making
             * the others wait; each chunk still has its own slot. */
            #pragma omp for schedule(dynamic, 1)
            for (jj = 0; jj < nch; jj++) {
                const ptrdiff_t r0 = jj * chunk;
                const ptrdiff_t r1 = r0 + chunk < m ? r0 + chunk : m;
                GC_NAME(axpy_rows_range)(kind, r1 - r0, 0, n, A + r0 * rs, rs,
                                         cs, x + r0,
                                         jj == 0 ? y : P + (jj - 1) * n);
            }
            #pragma omp for schedule(dynamic, 1)
            for (cb = 0; cb < ncb; cb++) {
                const ptrdiff_t c0 = cb * GC_W * 16;
                const ptrdiff_t c1 = c0 + GC_W * 16 < n ? c0 + GC_W * 16 : n;
                GC_NAME(add_partials)(nch - 1, n, c0, c1, P, y);
            }
        }
        free(P);
        return 0;
    }
#endif
    (void)nthreads;
    {
        /* one chunk's partial sums: on the stack when narrow (per-sample
         * links call this once per sample, inside a parallel loop) */
        GC_T onstack[GC_STACK_PARTIALS];
        P = n <= GC_STACK_PARTIALS ? onstack
                                   : (GC_T *)malloc((size_t)n * sizeof(GC_T));
        if (P == NULL) {
            return -1;
        }
        GC_NAME(axpy_rows_range)(kind, chunk, 0, n, A, rs, cs, x, y);
        for (j = 1; j < nch; j++) {
            const ptrdiff_t r0 = j * chunk;
            const ptrdiff_t r1 = r0 + chunk < m ? r0 + chunk : m;
            GC_NAME(axpy_rows_range)(kind, r1 - r0, 0, n, A + r0 * rs, rs,
                                     cs, x + r0, P);
            GC_NAME(add_partials)(1, n, 0, n, P, y);
        }
        if (P != onstack) {
            free(P);
        }
    }
    return 0;
}

void
GC_NAME(gc_dot_rows)(ptrdiff_t m, ptrdiff_t n, const GC_TA *A, ptrdiff_t rs,
                     ptrdiff_t cs, const GC_T *x, GC_T *y, int nthreads)
{
#ifdef _OPENMP
    /* Bands of whole rows (a multiple of four, so every row goes through
     * the same code) handed out dynamically; each thread writes its bands'
     * slices of y. */
    if (nthreads > 1 && m * n >= GC_PARALLEL_MIN_ELEMS && m >= 8) {
        const ptrdiff_t band = GC_NAME(chunk_rows)(m);
        const ptrdiff_t nband = (m + band - 1) / band;
        if (nthreads > nband) {
            nthreads = (int)nband;
        }
        if (nthreads > 1) {
            ptrdiff_t b;
            #pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
            for (b = 0; b < nband; b++) {
                const ptrdiff_t r0 = b * band;
                const ptrdiff_t r1 = r0 + band < m ? r0 + band : m;
                GC_NAME(dot_rows_range)(r0, r1, n, A, rs, cs, x, y);
            }
            return;
        }
    }
#endif
    (void)nthreads;
    GC_NAME(dot_rows_range)(0, m, n, A, rs, cs, x, y);
}

void
GC_NAME(gc_pack_rows)(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t n, const GC_TA *A,
                      ptrdiff_t rs, ptrdiff_t cs, GC_T *P)
{
    ptrdiff_t r, c;
    for (r = r0; r < r1; r++) {
        const GC_TA *a = A + r * rs;
        GC_T *p = P + (r - r0) * n;
        for (c = 0; c < n; c++) {
            p[c] = a[c * cs];
        }
    }
}

#undef GC_NAME
#undef GC_CAT
#undef GC_CAT_
#ifdef GC_TA_DEFAULTED
#undef GC_TA
#undef GC_TA_DEFAULTED
#endif
