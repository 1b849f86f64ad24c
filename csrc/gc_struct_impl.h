/*
 * gc_struct_impl.h -- type template for gc_struct.c (GC_T, GC_SFX, GC_W as
 * in gc_dense_impl.h).  Not a public header.
 */
#define GC_CAT_(a, b) a##_##b
#define GC_CAT(a, b) GC_CAT_(a, b)
#define GC_NAME(base) GC_CAT(base, GC_SFX)

GC_CLONES void
GC_NAME(gc_diag)(ptrdiff_t n, const GC_T *restrict d, ptrdiff_t ds,
                 const GC_T *restrict x, GC_T *restrict out)
{
    ptrdiff_t i;
    if (ds == 1) {
        for (i = 0; i < n; i++) {
            out[i] = d[i] * x[i];
        }
    }
    else {
        for (i = 0; i < n; i++) {
            out[i] = d[i * ds] * x[i];
        }
    }
}

GC_CLONES void
GC_NAME(gc_scale)(ptrdiff_t n, double c, const GC_T *restrict x,
                  GC_T *restrict out)
{
    const GC_T s = (GC_T)c;
    ptrdiff_t i;
    for (i = 0; i < n; i++) {
        out[i] = s * x[i];
    }
}

/* b . x in GC_W fixed lanes (the same sum on every instruction set; the
 * same lanes for every stride), then out = d * x + a * (c (b . x)). */
GC_CLONES void
GC_NAME(gc_diag_rank1)(ptrdiff_t n, const GC_T *restrict d, ptrdiff_t ds,
                       double c, const GC_T *restrict a, ptrdiff_t as,
                       const GC_T *restrict b, ptrdiff_t bs,
                       const GC_T *restrict x, GC_T *restrict out)
{
    GC_T s[GC_W] = {0};
    GC_T t = 0;
    ptrdiff_t i, l;
    const ptrdiff_t nb = n - n % GC_W;
    if (bs == 1) {
        for (i = 0; i < nb; i += GC_W) {
            for (l = 0; l < GC_W; l++) {
                s[l] += b[i + l] * x[i + l];
            }
        }
    }
    else {
        for (i = 0; i < nb; i += GC_W) {
            for (l = 0; l < GC_W; l++) {
                s[l] += b[(i + l) * bs] * x[i + l];
            }
        }
    }
    for (i = nb; i < n; i++) {
        t += b[i * bs] * x[i];
    }
    for (l = GC_W / 2; l >= 1; l /= 2) {
        ptrdiff_t j;
        for (j = 0; j < l; j++) {
            s[j] += s[j + l];
        }
    }
    t += s[0];
    t *= (GC_T)c;
    if (ds == 1 && as == 1) {
        for (i = 0; i < n; i++) {
            out[i] = d[i] * x[i] + a[i] * t;
        }
    }
    else {
        for (i = 0; i < n; i++) {
            out[i] = d[i * ds] * x[i] + a[i * as] * t;
        }
    }
}

#undef GC_NAME
#undef GC_CAT
#undef GC_CAT_
