/*
 * gc_maps_impl.h -- type template for gc_maps.c: GC_T, GC_SFX and the libm
 * functions GC_EXP, GC_LOG, GC_LOG1P, GC_TANH, GC_SIN, GC_COS of that type.
 * Not a public header.
 */
#define GC_CAT_(a, b) a##_##b
#define GC_CAT(a, b) GC_CAT_(a, b)
#define GC_NAME(base) GC_CAT(base, GC_SFX)

/* tanh without a libm call, so that the loop over it vectorises:
 *   |x| < 0.625:  x + x z P(z) / Q(z), z = x^2 (Cephes' rational form);
 *   |x| >= 0.625: sign(x) (1 - 2 / (exp(2|x|) + 1)), |x| capped at GC_TANH_CAP
 *                 where tanh is +-1 to working precision;
 * with exp(t) = 2^k exp(r), r = t - k ln2 (two-part ln2), exp(r) by a
 * polynomial.  Both branches are computed and one is selected (no branch);
 * NaN is passed through.  Accuracy: a few ulp (tests/test_maps.py). */
static inline GC_T
GC_NAME(tanh_vec)(GC_T x)
{
    const GC_T ax = x < 0 ? -x : x;
    const GC_T z = x * x;
    const GC_T small = x + x * z * GC_TANH_PQ(z);
    /* exp(2 ax), 2 ax in [1.25, 2 GC_TANH_CAP]; NaN replaced by 1 here */
    const GC_T t = 2 * (ax == ax ? (ax < GC_TANH_CAP ? ax : GC_TANH_CAP) : (GC_T)1);
    const GC_T kd = GC_ROUND_INT(t * (GC_T)1.4426950408889634);
    const GC_T r = (t - kd * GC_LN2_HI) - kd * GC_LN2_LO;
    const GC_T e = GC_EXP_POLY(r) * GC_POW2(kd);
    const GC_T big = 1 - 2 / (e + 1);
    GC_T y = ax < (GC_T)0.625 ? small : (x < 0 ? -big : big);
    return (x == x && x != 0) ? y : x;      /* NaN, and the sign of zero */
}

/* 1 / (1 + exp(-x)) without overflow for either sign of x. */
static inline GC_T
GC_NAME(sigmoid)(GC_T x)
{
    if (x >= 0) {
        return 1 / (1 + GC_EXP(-x));
    }
    else {
        const GC_T e = GC_EXP(x);    /* NaN falls through here and stays NaN */
        return e / (1 + e);
    }
}

/* log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)). */
static inline GC_T
GC_NAME(softplus)(GC_T x)
{
    const GC_T ax = x < 0 ? -x : x;
    return (x > 0 ? x : 0) + GC_LOG1P(GC_EXP(-ax));   /* NaN stays NaN */
}

GC_CLONES void
GC_NAME(gc_ew_forward)(int code, double param, ptrdiff_t n, const GC_T *x,
                       GC_T *y)
{
    const GC_T p = (GC_T)param;
    ptrdiff_t i;
    switch (code) {
    case GC_EW_TANH:
        for (i = 0; i < n; i++) y[i] = GC_NAME(tanh_vec)(x[i]);
        break;
    case GC_EW_SIGMOID:
        for (i = 0; i < n; i++) y[i] = GC_NAME(sigmoid)(x[i]);
        break;
    case GC_EW_RELU:
        for (i = 0; i < n; i++) y[i] = x[i] < 0 ? 0 : x[i];
        break;
    case GC_EW_LEAKY_RELU:
        for (i = 0; i < n; i++) y[i] = x[i] < 0 ? p * x[i] : x[i];
        break;
    case GC_EW_SOFTPLUS:
        for (i = 0; i < n; i++) y[i] = GC_NAME(softplus)(x[i]);
        break;
    case GC_EW_EXP:
        for (i = 0; i < n; i++) y[i] = GC_EXP(x[i]);
        break;
    case GC_EW_LOG:
        for (i = 0; i < n; i++) y[i] = GC_LOG(x[i]);
        break;
    case GC_EW_SIN:
        for (i = 0; i < n; i++) y[i] = GC_SIN(x[i]);
        break;
    case GC_EW_COS:
        for (i = 0; i < n; i++) y[i] = GC_COS(x[i]);
        break;
    case GC_EW_SQUARE:
        for (i = 0; i < n; i++) y[i] = x[i] * x[i];
        break;
    default: /* GC_EW_SCALE */
        for (i = 0; i < n; i++) y[i] = p * x[i];
        break;
    }
}

void
GC_NAME(gc_ew_deriv_mul)(int code, double param, ptrdiff_t n, const GC_T *x,
                         const GC_T *y, const GC_T *g, GC_T *out)
{
    const GC_T p = (GC_T)param;
    ptrdiff_t i;
    switch (code) {
    case GC_EW_TANH:
        for (i = 0; i < n; i++) out[i] = (1 - y[i] * y[i]) * g[i];
        break;
    case GC_EW_SIGMOID:
        for (i = 0; i < n; i++) out[i] = y[i] * (1 - y[i]) * g[i];
        break;
    case GC_EW_RELU:
        /* derivative 0 at x <= 0 (and for NaN x, which the forward value
         * already carries), 1 above */
        for (i = 0; i < n; i++) out[i] = (x[i] > 0 ? 1 : 0) * g[i];
        break;
    case GC_EW_LEAKY_RELU:
        for (i = 0; i < n; i++) out[i] = (x[i] < 0 ? p : 1) * g[i];
        break;
    case GC_EW_SOFTPLUS:
        for (i = 0; i < n; i++) out[i] = GC_NAME(sigmoid)(x[i]) * g[i];
        break;
    case GC_EW_EXP:
        for (i = 0; i < n; i++) out[i] = y[i] * g[i];
        break;
    case GC_EW_LOG:
        for (i = 0; i < n; i++) out[i] = g[i] / x[i];
        break;
    case GC_EW_SIN:
        for (i = 0; i < n; i++) out[i] = GC_COS(x[i]) * g[i];
        break;
    case GC_EW_COS:
        for (i = 0; i < n; i++) out[i] = -GC_SIN(x[i]) * g[i];
        break;
    case GC_EW_SQUARE:
        for (i = 0; i < n; i++) out[i] = 2 * x[i] * g[i];
        break;
    default: /* GC_EW_SCALE */
        for (i = 0; i < n; i++) out[i] = p * g[i];
        break;
    }
}

/* Sum of n values by a fixed pairwise tree: blocks of up to 128 summed in
 * eight interleaved lanes (combined pairwise), longer runs split in halves
 * at a multiple of 8.  The error grows as O(log n) rather than O(n), and the
 * order depends on n alone (not on threads or the instruction set). */
static double
GC_NAME(sum_pw)(ptrdiff_t n, const GC_T *a)
{
    if (n < 8) {
        double s = 0;
        ptrdiff_t i;
        for (i = 0; i < n; i++) s += (double)a[i];
        return s;
    }
    if (n <= 128) {
        double r[8];
        ptrdiff_t i, j;
        for (j = 0; j < 8; j++) r[j] = (double)a[j];
        for (i = 8; i + 8 <= n; i += 8)
            for (j = 0; j < 8; j++) r[j] += (double)a[i + j];
        double s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) s += (double)a[i];
        return s;
    }
    {
        const ptrdiff_t h = (n / 2) - (n / 2) % 8;
        return GC_NAME(sum_pw)(h, a) + GC_NAME(sum_pw)(n - h, a + h);
    }
}

/* One row's shifted exponentials, the core of softmax, log-softmax,
 * logsumexp and cross-entropy.  With m = max(x) finite (first at index
 * *am), writes e[i] = exp(x[i] - m), the difference taken exactly (its
 * rounding error, from TwoSum, corrects the exponential to first order;
 * float rows go through double), and returns 1 and *rest = the sum of the
 * e[i] other than e[*am] = 1 (pairwise), so that S = 1 + rest and
 * log S = log1p(rest) keep their low bits when one logit dominates.  A row
 * whose max is +-inf or NaN returns 0 and leaves e alone (the callers give
 * scipy's values). */
static int
GC_NAME(row_shifted_exp)(ptrdiff_t n, const GC_T *x, GC_T *e, GC_T *m_out,
                         ptrdiff_t *am, double *rest)
{
    ptrdiff_t i, k = 0;
    GC_T m = x[0];
    for (i = 1; i < n; i++) {
        if (x[i] > m || x[i] != x[i]) {
            m = x[i];
            k = i;
            if (m != m) {
                break;
            }
        }
    }
    *m_out = m;
    *am = k;
    if (!(m > -(GC_T)INFINITY && m < (GC_T)INFINITY)) {
        return 0;
    }
    for (i = 0; i < n; i++) {
#if GC_IS_DOUBLE
        const double d = x[i] - m;
        const double bb = d - x[i];
        double err = (x[i] - (d - bb)) + (-m - bb);     /* x - m = d + err */
        const double ed = exp(d);
        err = err == err ? err : 0.0;                   /* x[i] = -inf */
        e[i] = ed + ed * err;
#else
        e[i] = (float)exp((double)x[i] - (double)m);   /* exact in double */
#endif
    }
    e[k] = 0;
    *rest = GC_NAME(sum_pw)(n, e);
    e[k] = 1;
    return 1;
}

/* e[i] /= S for a row (the softmax's normalisation, in double). */
static void
GC_NAME(row_divide)(ptrdiff_t n, GC_T *e, double S)
{
    ptrdiff_t i;
    for (i = 0; i < n; i++) e[i] = (GC_T)((double)e[i] / S);
}

/* softmax of a row whose max m is +-inf or NaN, as scipy computes it:
 * exp(x - m) / sum (NaN rows: inf - inf, or a NaN, reaches every entry). */
static void
GC_NAME(row_softmax_nonfinite)(ptrdiff_t n, const GC_T *x, GC_T m, GC_T *y)
{
    ptrdiff_t i;
    for (i = 0; i < n; i++) y[i] = GC_EXP(x[i] - m);
    GC_NAME(row_divide)(n, y, GC_NAME(sum_pw)(n, y));
}

void
GC_NAME(gc_softmax)(int take_log, ptrdiff_t B, ptrdiff_t n, const GC_T *x, GC_T *y)
{
    ptrdiff_t b, i, k;
    for (b = 0; b < B; b++) {
        const GC_T *xr = x + b * n;
        GC_T *yr = y + b * n;
        GC_T m;
        double rest;
        if (n == 0) {
            continue;
        }
        if (!GC_NAME(row_shifted_exp)(n, xr, yr, &m, &k, &rest)) {
            /* scipy's values: softmax through x - m (NaN rows for an
             * infinite max), log-softmax with m taken as 0 */
            if (take_log) {
                double s = 0;
                for (i = 0; i < n; i++) s += (double)GC_EXP(xr[i]);
                s = log(s);
                for (i = 0; i < n; i++) yr[i] = xr[i] - (GC_T)s;
            }
            else {
                GC_NAME(row_softmax_nonfinite)(n, xr, m, yr);
            }
            continue;
        }
        if (take_log) {
            /* y = (x - m) - log S: two terms <= 0, no cancellation */
            const double ls = log1p(rest);
            for (i = 0; i < n; i++) yr[i] = (GC_T)((double)(xr[i] - m) - ls);
        }
        else {
            GC_NAME(row_divide)(n, yr, 1 + rest);
        }
    }
}

void
GC_NAME(gc_softmax_apply)(int log, int transpose, ptrdiff_t B, ptrdiff_t n,
                          const GC_T *y, const GC_T *g, GC_T *out)
{
    ptrdiff_t b, i;
    for (b = 0; b < B; b++) {
        const GC_T *yr = y + b * n, *gr = g + b * n;
        GC_T *o = out + b * n;
        GC_T t = 0;
        if (!log) {
            for (i = 0; i < n; i++) t += yr[i] * gr[i];
            for (i = 0; i < n; i++) o[i] = yr[i] * (gr[i] - t);
        }
        else if (transpose) {
            for (i = 0; i < n; i++) t += gr[i];
            for (i = 0; i < n; i++) o[i] = gr[i] - GC_EXP(yr[i]) * t;
        }
        else {
            for (i = 0; i < n; i++) t += GC_EXP(yr[i]) * gr[i];
            for (i = 0; i < n; i++) o[i] = gr[i] - t;
        }
    }
}

void
GC_NAME(gc_loss)(int code, ptrdiff_t B, ptrdiff_t n, const GC_T *x,
                 const GC_T *aux, const long long *labels, double *value,
                 GC_T *grad)
{
    ptrdiff_t b, i;
    for (b = 0; b < B; b++) {
        const GC_T *xr = x + b * n;
        const GC_T *ar = aux ? aux + b * n : NULL;
        GC_T *gr = grad + b * n;
        GC_T v = 0;
        switch (code) {
        case GC_LOSS_SQUARED_ERROR:
            for (i = 0; i < n; i++) {
                const GC_T d = xr[i] - ar[i];
                gr[i] = d;
                v += d * d;
            }
            v *= (GC_T)0.5;
            break;
        case GC_LOSS_MEAN_SQUARED_ERROR:
            for (i = 0; i < n; i++) {
                const GC_T d = xr[i] - ar[i];
                gr[i] = 2 * d / (GC_T)n;
                v += d * d;
            }
            v /= (GC_T)n;
            break;
        case GC_LOSS_CROSS_ENTROPY:
        case GC_LOSS_LOGSUMEXP: {
            /* the caller validated the labels; read each once, and a label
             * changed since (it is the caller's memory) gives a NaN row,
             * never an index out of bounds */
            const long long c = code == GC_LOSS_CROSS_ENTROPY ? labels[b] : -1;
            GC_T m;
            ptrdiff_t k;
            double S, rest;
            if (code == GC_LOSS_CROSS_ENTROPY && (c < 0 || c >= (long long)n)) {
                for (i = 0; i < n; i++)
                    gr[i] = (GC_T)NAN;
                v = (GC_T)NAN;
                break;
            }
            if (n == 0) {
                v = -(GC_T)INFINITY;
                break;
            }
            if (!GC_NAME(row_shifted_exp)(n, xr, gr, &m, &k, &rest)) {
                /* an infinite or NaN max: logsumexp is m (scipy's), the
                 * gradient softmax through x - m (NaN rows) */
                GC_NAME(row_softmax_nonfinite)(n, xr, m, gr);
                v = m;
                if (c >= 0) {
                    gr[c] -= 1;
                    v = m - xr[c];
                }
                break;
            }
            S = 1 + rest;
            if (c >= 0) {
                /* softmax_c - 1 = -(S - e_c) / S, with S - e_c the sum of
                 * the other terms (rest itself when c is the max; else
                 * S - e_c >= S / 2, exact to an ulp); the value
                 * log S - (x_c - m), two terms >= 0 */
                const double others = (ptrdiff_t)c == k ? rest : S - (double)gr[c];
                GC_NAME(row_divide)(n, gr, S);
                gr[c] = (GC_T)(-others / S);
                v = (GC_T)(log1p(rest) - (double)(xr[c] - m));
            }
            else {
                GC_NAME(row_divide)(n, gr, S);
                v = (GC_T)((double)m + log1p(rest));
            }
            break;
        }
        default: /* GC_LOSS_DOT */
            for (i = 0; i < n; i++) {
                gr[i] = ar[i];
                v += ar[i] * xr[i];
            }
            break;
        }
        value[b] = (double)v;
    }
}

#undef GC_NAME
#undef GC_CAT
#undef GC_CAT_
