/*
 * gc_maps_impl.h -- type template for gc_maps.c: GC_T, GC_SFX, the libm
 * functions GC_EXP, GC_SIN, GC_COS of that type (GC_EXP for the softmax
 * rows' non-finite cases, GC_SIN and GC_COS for |x| >= GC_TRIG_MAX) and
 * the helpers and constants gc_maps.c defines per type.
 * Not a public header.
 */
#define GC_CAT_(a, b) a##_##b
#define GC_CAT(a, b) GC_CAT_(a, b)
#define GC_NAME(base) GC_CAT(base, GC_SFX)

/* exp(t) = 2^k exp(r): returns exp(r), r = t - k ln2 (two-part ln2), by
 * GC_EXP_POLY, and k = round(t / ln2) in *k.  tanh_vec's exponential. */
static inline GC_T
GC_NAME(exp_red)(GC_T t, GC_T *k)
{
    const GC_T kd = GC_ROUND_INT(t * (GC_T)1.4426950408889634);
    const GC_T r = (t - kd * GC_LN2_HI) - kd * GC_LN2_LO;
    *k = kd;
    return GC_EXP_POLY(r);
}

/* The same exp(r), the same polynomial, with more than the working
 * precision: exp(r) = e1 + e2, e1 = 1 + r rounded and e2 = its error
 * (Fast2Sum, |r| < 1) + r^2 Q(r) + the error of r itself (r + rerr =
 * t - k ln2_hi - k ln2_lo; k ln2_hi is exact), renormalised to eh + *el,
 * eh = e1 + e2 rounded (within 0.8 ulp), *el its error.  The Horner form
 * of exp_red is up to 1.2 ulp without FMA; sigmoid needs the pair, since
 * e / (1 + e) can fall into the binade below e and so double exp's error
 * in ulp.  The exponential core of exp_vec, sigmoid_vec and softplus_vec. */
static inline GC_T
GC_NAME(exp_red2)(GC_T t, GC_T *k, GC_T *el)
{
    const GC_T kd = GC_ROUND_INT(t * (GC_T)1.4426950408889634);
    const GC_T hi = t - kd * GC_LN2_HI;                 /* exact */
    const GC_T lo = kd * GC_LN2_LO;
    const GC_T r = hi - lo;
    const GC_T rerr = (hi - r) - lo;
    const GC_T e1 = 1 + r;
    const GC_T e2 = ((1 - e1) + r) + (r * r * GC_EXP_Q(r) + rerr * e1);
    const GC_T eh = e1 + e2;
    *el = (e1 - eh) + e2;                               /* Fast2Sum again */
    *k = kd;
    return eh;
}

/* exp(t) = E + El (unevaluated, |El| about an ulp of E at most), t clamped
 * below at GC_EXP_LO and above at GC_EXP_HI (beyond them exp is 0, below
 * half the least subnormal, and inf; NaN passes the clamp): 2^k is applied
 * as 2^k1 2^(k - k1), k1 = round(k/2), both normal, so that the first
 * product is exact and the second rounds once (overflow gives inf, the
 * gradual-underflow range is rounded from eh + el, not from a rounded
 * subnormal). */
static inline GC_T
GC_NAME(exp_pair)(GC_T x, GC_T *El)
{
    const GC_T t = x > GC_EXP_HI ? GC_EXP_HI : (x < GC_EXP_LO ? GC_EXP_LO : x);
    GC_T k, k1, el, s1, s2;
    const GC_T eh = GC_NAME(exp_red2)(t, &k, &el);
    k1 = GC_ROUND_INT(k * (GC_T)0.5);
    s1 = GC_POW2(k1);
    s2 = GC_POW2(k - k1);
    *El = el * s1 * s2;
    return eh * s1 * s2;
}

/* tanh without a libm call, so that the loop over it vectorises:
 *   |x| < 0.625:  x + x z P(z) / Q(z), z = x^2 (Cephes' rational form);
 *   |x| >= 0.625: sign(x) (1 - 2 / (exp(2|x|) + 1)), |x| capped at GC_TANH_CAP
 *                 where tanh is +-1 to working precision, exp by exp_red;
 * Both branches are computed and one is selected (no branch);
 * NaN is passed through.  Accuracy: a few ulp (tests/test_maps.py). */
static inline GC_T
GC_NAME(tanh_vec)(GC_T x)
{
    const GC_T ax = x < 0 ? -x : x;
    const GC_T z = x * x;
    const GC_T small = x + x * z * GC_TANH_PQ(z);
    /* exp(2 ax), 2 ax in [1.25, 2 GC_TANH_CAP]; NaN replaced by 1 here */
    const GC_T t = 2 * (ax == ax ? (ax < GC_TANH_CAP ? ax : GC_TANH_CAP) : (GC_T)1);
    GC_T kd;
    const GC_T e = GC_NAME(exp_red)(t, &kd) * GC_POW2(kd);
    const GC_T big = 1 - 2 / (e + 1);
    GC_T y = ax < (GC_T)0.625 ? small : (x < 0 ? -big : big);
    return (x == x && x != 0) ? y : x;      /* NaN, and the sign of zero */
}

/* exp(x) over the whole range, branch-free, NaN and +-inf as libm:
 * exp_pair's E + El (within 0.8 ulp, bench/elementwise_accuracy.py; in
 * the subnormal range E is eh rounded once to the subnormal grid). */
static inline GC_T
GC_NAME(exp_vec)(GC_T x)
{
    GC_T El;
    const GC_T E = GC_NAME(exp_pair)(x, &El);
    /* E = 0 is exp rounded (the pair is below half the least subnormal):
     * 0, where E + El, contracted to an FMA, would give -0 for El < 0 */
    return E > 0 ? E + El : E;
}

/* 1 / (1 + exp(-x)) for x >= 0 and e / (1 + e), e = exp(x), for x < 0:
 * e = exp(-|x|) = E + El once (exp_pair), both numerators, one selected.
 * 1 + e = d + de (de: d's rounding error by Fast2Sum, e <= 1, plus El),
 * and the quotient num / d is corrected by (num_lo - q de) / d, so that
 * neither exp's rounding nor 1 + e's adds to the error (within 1.1 ulp
 * in double without FMA).  Float: the double sigmoid rounded once. */
static inline GC_T
GC_NAME(sigmoid_vec)(GC_T x)
{
#if GC_IS_DOUBLE
    GC_T El;
    const GC_T E = GC_NAME(exp_pair)(x < 0 ? x : -x, &El);   /* NaN stays NaN */
    const GC_T d = 1 + E;
    const GC_T de = (E - (d - 1)) + El;
    const GC_T q = (x < 0 ? E : 1) / d;
    return q + ((x < 0 ? El : 0) - q * de) / d;
#else
    return (float)sigmoid_vec_d((double)x);
#endif
}

/* log(1 + exp(x)) = max(x, 0) + log1p(e), e = exp(-|x|) = E + El in
 * [0, 1]: log1p(e) = log(u) + c / u, u = 1 + E rounded and c = e - u (its
 * error, exact, plus El), log(u) by the log core with c / u added to its
 * low part. */
static inline GC_T
GC_NAME(softplus_vec)(GC_T x)
{
    GC_T El;
    const GC_T E = GC_NAME(exp_pair)(x < 0 ? x : -x, &El);   /* NaN stays NaN */
    const GC_T u = 1 + E;
    const GC_T c = (E - (u - 1)) + El;
    return (x > 0 ? x : 0) + GC_LOG_CORE(u, 0, c / u);
}

/* log(x), branch-free: a subnormal x is scaled by 2^GC_SUB_BITS first;
 * x < 0 gives NaN, +-0 -inf, inf inf, NaN itself. */
static inline GC_T
GC_NAME(log_vec)(GC_T x)
{
    const int sub = x < GC_T_MIN;
    const GC_T y = GC_LOG_CORE(sub ? x * GC_SUB_SCALE : x,
                               sub ? -GC_SUB_BITS : 0, 0);
    return (x > 0 && x < (GC_T)INFINITY) ? y
           : (x == 0 ? -(GC_T)INFINITY : (x < 0 ? (GC_T)NAN : x));
}

#ifndef GC_TRIG_CHUNK
#define GC_TRIG_CHUNK 256
#endif
/* out[i] = s * f(x[i]) * g[i] (g NULL: s * f(x[i])), f = sin (cosine = 0)
 * or cos, s = -1 if neg else 1.  A chunk at a time: f by gc_trig_d for
 * every element into buf (the loop vectorises), then libm's f for the
 * elements with |x| >= GC_TRIG_MAX, inf or NaN (a scalar pass over only
 * those, taken where the chunk has any), then the product; through buf, so
 * that out may be x or g. */
static GC_INLINE void
GC_NAME(trig_loop)(int cosine, int neg, ptrdiff_t n, const GC_T *x,
                   const GC_T *g, GC_T *out)
{
    GC_T buf[GC_TRIG_CHUNK];
    ptrdiff_t i0, i, m;
    for (i0 = 0; i0 < n; i0 += m) {
        const GC_T *xc = x + i0;
        int big = 0;
        m = n - i0 < GC_TRIG_CHUNK ? n - i0 : GC_TRIG_CHUNK;
        for (i = 0; i < m; i++) buf[i] = (GC_T)gc_trig_d((double)xc[i], cosine);
        for (i = 0; i < m; i++) big |= !(xc[i] < (GC_T)GC_TRIG_MAX && xc[i] > -(GC_T)GC_TRIG_MAX);
        if (big) {
            for (i = 0; i < m; i++) {
                if (!(xc[i] < (GC_T)GC_TRIG_MAX && xc[i] > -(GC_T)GC_TRIG_MAX)) {
                    buf[i] = cosine ? GC_COS(xc[i]) : GC_SIN(xc[i]);
                }
            }
        }
        if (neg) {
            for (i = 0; i < m; i++) buf[i] = -buf[i];
        }
        if (g) {
            for (i = 0; i < m; i++) out[i0 + i] = buf[i] * g[i0 + i];
        }
        else {
            for (i = 0; i < m; i++) out[i0 + i] = buf[i];
        }
    }
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
        for (i = 0; i < n; i++) y[i] = GC_NAME(sigmoid_vec)(x[i]);
        break;
    case GC_EW_RELU:
        for (i = 0; i < n; i++) y[i] = x[i] < 0 ? 0 : x[i];
        break;
    case GC_EW_LEAKY_RELU:
        for (i = 0; i < n; i++) y[i] = x[i] < 0 ? p * x[i] : x[i];
        break;
    case GC_EW_SOFTPLUS:
        for (i = 0; i < n; i++) y[i] = GC_NAME(softplus_vec)(x[i]);
        break;
    case GC_EW_EXP:
        for (i = 0; i < n; i++) y[i] = GC_NAME(exp_vec)(x[i]);
        break;
    case GC_EW_LOG:
        for (i = 0; i < n; i++) y[i] = GC_NAME(log_vec)(x[i]);
        break;
    case GC_EW_SIN:
        GC_NAME(trig_loop)(0, 0, n, x, NULL, y);
        break;
    case GC_EW_COS:
        GC_NAME(trig_loop)(1, 0, n, x, NULL, y);
        break;
    case GC_EW_SQUARE:
        for (i = 0; i < n; i++) y[i] = x[i] * x[i];
        break;
    default: /* GC_EW_SCALE */
        for (i = 0; i < n; i++) y[i] = p * x[i];
        break;
    }
}

/* The derivatives that evaluate a map (Softplus' sigmoid, Sin's cos, Cos'
 * -sin): cloned like gc_ew_forward.  (The others stay in the uncloned
 * gc_ew_deriv_mul, so that their bits are those of before: a clone with
 * FMA would contract Tanh's (1 - y y) g.) */
static GC_CLONES void
GC_NAME(ew_deriv_eval)(int code, ptrdiff_t n, const GC_T *x, const GC_T *g,
                       GC_T *out)
{
    ptrdiff_t i;
    switch (code) {
    case GC_EW_SOFTPLUS:
        for (i = 0; i < n; i++) out[i] = GC_NAME(sigmoid_vec)(x[i]) * g[i];
        break;
    case GC_EW_SIN:
        GC_NAME(trig_loop)(1, 0, n, x, g, out);
        break;
    default: /* GC_EW_COS */
        GC_NAME(trig_loop)(0, 1, n, x, g, out);
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
    case GC_EW_SIN:
    case GC_EW_COS:
        GC_NAME(ew_deriv_eval)(code, n, x, g, out);
        break;
    case GC_EW_EXP:
        for (i = 0; i < n; i++) out[i] = y[i] * g[i];
        break;
    case GC_EW_LOG:
        for (i = 0; i < n; i++) out[i] = g[i] / x[i];
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
