/*
 * gc_maps.c -- instantiates gc_maps_impl.h for float and double.
 */
#include "gc_maps.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "gc_simd.h"

/* --- helpers for the vectorisable maps (gc_maps_impl.h) ------------------
 *
 * Every map of gc_ew_forward but the libm fallbacks below is branch-free:
 * both sides of a choice are computed and one is selected, integer work is
 * done on the bits (shifts, masks, adds: no float-to-integer conversion,
 * which x86-64 has no vector form of below AVX-512), so that GCC
 * vectorises the loops in each target clone (-fno-trapping-math lets it
 * evaluate the side not taken; setup.py). */

/* ln 2 in two parts, the high part with trailing zeros so that k ln2_hi is
 * exact for |k| < 2^20 (double, fdlibm's) / 2^9 (float). */
#define GC_LN2_HI_D 6.93147180369123816490e-01
#define GC_LN2_LO_D 1.90821492927058770002e-10
#define GC_LN2_HI_S 0.693145751953125f
#define GC_LN2_LO_S 1.428606765330187045e-06f

/* Round to the nearest integer (as a floating value) by the shifter trick:
 * exact for |v| < 2^51 (double) / 2^22 (float); vectorises without SSE4.1. */
static inline double gc_round_int_d(double v)
{
    const double shift = 6755399441055744.0;          /* 1.5 * 2^52 */
    return (v + shift) - shift;
}
static inline float gc_round_int_s(float v)
{
    const float shift = 12582912.0f;                   /* 1.5 * 2^23 */
    return (v + shift) - shift;
}

/* 2^k for an integral k in the normal exponent range, by building the bits.
 * k is read off the shifter sum's low mantissa bits (bits(k + 1.5 2^52) -
 * bits(1.5 2^52) = k, exactly, for |k| < 2^51) rather than by a
 * float-to-integer conversion: integer adds and a shift. */
static inline double gc_pow2_d(double k)
{
    const double s = k + 6755399441055744.0;           /* 1.5 * 2^52 */
    int64_t b, e;
    double r;
    memcpy(&b, &s, sizeof b);
    e = (int64_t)((uint64_t)(b - INT64_C(0x4338000000000000) + 1023) << 52);   /* unsigned: no UB for k < -1023 (NaN input) */
    memcpy(&r, &e, sizeof r);
    return r;
}
static inline float gc_pow2_s(float k)
{
    const float s = k + 12582912.0f;                   /* 1.5 * 2^23 */
    int32_t b, e;
    float r;
    memcpy(&b, &s, sizeof b);
    e = (int32_t)((uint32_t)(b - 0x4B400000 + 127) << 23);
    memcpy(&r, &e, sizeof r);
    return r;
}

/* exp(r) = 1 + r + r^2 Q(r) for |r| <= ln2/2: Taylor polynomial to degree
 * 13 (double; the truncation is below 1e-17) and 7 (float, below 6e-9);
 * gc_exp_q_* is Q (Horner, from the top down to the 1/2 term) and
 * gc_exp_poly_* the whole polynomial, Horner to the end. */
static inline double gc_exp_q_d(double r)
{
    double p = 1.0 / 6227020800.0;                     /* 1/13! */
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    return p * r + 0.5;
}
static inline double gc_exp_poly_d(double r)
{
    return (gc_exp_q_d(r) * r + 1.0) * r + 1.0;
}
static inline float gc_exp_q_s(float r)
{
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    return p * r + 0.5f;
}
static inline float gc_exp_poly_s(float r)
{
    return (gc_exp_q_s(r) * r + 1.0f) * r + 1.0f;
}

/* log(x 2^kadj) + c for a positive, normal, finite x and a small c (the
 * caller's correction, |c| below an ulp of the result): fdlibm/musl's
 * log, branch-free.  x = 2^k m with m in [sqrt(2)/2, sqrt(2)) by adding an
 * offset to the bits (k off the exponent field, as a floating value by the
 * shifter trick), f = m - 1 (exact), s = f / (2 + f),
 * log(1 + f) = f - f^2/2 + s (f^2/2 + R(s^2)), R the minimax polynomial of
 * fdlibm (double) / musl's logf (float), and k ln2 added in two parts. */
static inline double gc_log_core_d(double x, double kadj, double c)
{
    const double Lg1 = 6.666666666666735130e-01, Lg2 = 3.999999999940941908e-01,
                 Lg3 = 2.857142874366239149e-01, Lg4 = 2.222219843214978396e-01,
                 Lg5 = 1.818357216161805012e-01, Lg6 = 1.531383769920937332e-01,
                 Lg7 = 1.479819860511658591e-01;
    uint64_t u, kb;
    double m, k, f, hfsq, s, z, w, R;
    memcpy(&u, &x, sizeof u);
    u += UINT64_C(0x3ff0000000000000) - UINT64_C(0x3fe6a09e667f3bcd);
    kb = (u >> 52) | UINT64_C(0x4330000000000000);     /* 2^52 + biased k */
    u = (u & UINT64_C(0x000fffffffffffff)) + UINT64_C(0x3fe6a09e667f3bcd);
    memcpy(&m, &u, sizeof m);
    memcpy(&k, &kb, sizeof k);
    k = (k - 4503599627371519.0) + kadj;                /* - (2^52 + 1023) */
    f = m - 1.0;
    hfsq = 0.5 * f * f;
    s = f / (2.0 + f);
    z = s * s;
    w = z * z;
    R = z * (Lg1 + w * (Lg3 + w * (Lg5 + w * Lg7))) + w * (Lg2 + w * (Lg4 + w * Lg6));
    return s * (hfsq + R) + (k * GC_LN2_LO_D + c) - hfsq + f + k * GC_LN2_HI_D;
}
static inline float gc_log_core_s(float x, float kadj, float c)
{
    const float Lg1 = 0xaaaaaa.0p-24f, Lg2 = 0xccce13.0p-25f,
                Lg3 = 0x91e9ee.0p-25f, Lg4 = 0xf89e26.0p-26f;
    uint32_t u, kb;
    float m, k, f, hfsq, s, z, w, R;
    memcpy(&u, &x, sizeof u);
    u += 0x3f800000u - 0x3f3504f3u;
    kb = (u >> 23) | 0x4B000000u;                       /* 2^23 + biased k */
    u = (u & 0x007fffffu) + 0x3f3504f3u;
    memcpy(&m, &u, sizeof m);
    memcpy(&k, &kb, sizeof k);
    k = (k - 8388735.0f) + kadj;                        /* - (2^23 + 127) */
    f = m - 1.0f;
    hfsq = 0.5f * f * f;
    s = f / (2.0f + f);
    z = s * s;
    w = z * z;
    R = z * (Lg1 + w * Lg3) + w * (Lg2 + w * Lg4);
    return s * (hfsq + R) + (k * GC_LN2_LO_S + c) - hfsq + f + k * GC_LN2_HI_S;
}

/* sin (cosine = 0) or cos (cosine = 1) of x, |x| < GC_TRIG_MAX, in double
 * (the float maps round it once more).  Cody-Waite reduction by pi/2 in
 * three parts (fdlibm's pio2_1, pio2_2: 33 bits each, so n pio2_1 and
 * n pio2_2 are exact for n < 2^20; pio2_2t the rest to 53 bits, 118 bits
 * of pi/2 in all), the remainder r = x - n pi/2 kept as y0 + y1 (TwoSum),
 * then FreeBSD/musl's kernels __sin(y0, y1) and __cos(y0, y1) (each within
 * an ulp on [-pi/4, pi/4]), both computed and the quadrant's selected
 * (n mod 4 off the shifter sum's low bits).  Beyond GC_TRIG_MAX the caller
 * calls libm instead (gc_maps_impl.h, trig_loop).  sin(-0) = -0. */
#define GC_TRIG_MAX 1e6
static inline double gc_trig_d(double x, int cosine)
{
    const double S1 = -1.66666666666666324348e-01, S2 = 8.33333333332248946124e-03,
                 S3 = -1.98412698298579493134e-04, S4 = 2.75573137070700676789e-06,
                 S5 = -2.50507602534068634195e-08, S6 = 1.58969099521155010221e-10;
    const double C1 = 4.16666666666666019037e-02, C2 = -1.38888888888741095749e-03,
                 C3 = 2.48015872894767294178e-05, C4 = -2.75573143513906633035e-07,
                 C5 = 2.08757232129817482790e-09, C6 = -1.13596475577881948265e-11;
    const double pio2_1 = 1.57079632673412561417e+00;   /* 0x3FF921FB54400000 */
    const double pio2_2 = 6.07710050630396597660e-11;   /* 0x3DD0B4611A600000 */
    const double pio2_2t = 2.02226624879595063154e-21;  /* pi/2 - pio2_1 - pio2_2 */
    const double shift = 6755399441055744.0;            /* 1.5 * 2^52 */
    const double sn = x * 6.36619772367581382433e-01 + shift;
    const double n = sn - shift;
    uint64_t q, sb, cb, sel;
    double a, w, r, bb, lo, y0, y1, z, zz, v, rs, sk, rc, hz, wc, ck, val;
    memcpy(&q, &sn, sizeof q);                          /* low bits: n */
    a = x - n * pio2_1;                                 /* exact */
    w = n * pio2_2;                                     /* exact */
    r = a - w;
    bb = r - a;
    lo = ((a - (r - bb)) + (-w - bb)) - n * pio2_2t;    /* a - w = r + err */
    y0 = r + lo;
    y1 = (r - y0) + lo;
    z = y0 * y0;
    zz = z * z;
    v = z * y0;
    rs = S2 + z * (S3 + z * S4) + z * zz * (S5 + z * S6);
    sk = y0 - ((z * (0.5 * y1 - v * rs) - y1) - v * S1);
    rc = z * (C1 + z * (C2 + z * C3)) + zz * zz * (C4 + z * (C5 + z * C6));
    hz = 0.5 * z;
    wc = 1.0 - hz;
    ck = wc + (((1.0 - wc) - hz) + (z * rc - y0 * y1));
    /* quadrant q = n (+ 1 for cos x = sin(x + pi/2)) mod 4: cos for odd q,
     * negated for q = 2, 3; by masks and the sign bit (SSE2 has no 64-bit
     * integer compare to select with) */
    q += (uint64_t)cosine;
    memcpy(&sb, &sk, sizeof sb);
    memcpy(&cb, &ck, sizeof cb);
    sel = (uint64_t)0 - (q & 1);
    sb = ((cb & sel) | (sb & ~sel)) ^ ((q & 2) << 62);
    memcpy(&val, &sb, sizeof val);
    return (x == 0 && !cosine) ? x : val;
}

/* P(z)/Q(z) of Cephes' tanh for |x| < 0.625 (double), and the minimax
 * polynomial of Cephes' tanhf (float). */
static inline double gc_tanh_pq_d(double z)
{
    const double p = (-9.64399179425052238628E-1 * z - 9.92877231001918586564E1) * z
                     - 1.61468768441708447952E3;
    const double q = ((z + 1.12811678491632931402E2) * z + 2.23548839060100448583E3) * z
                     + 4.84406305325125486048E3;
    return p / q;
}
static inline float gc_tanh_pq_s(float z)
{
    return (((-5.70498872745E-3f * z + 2.06390887954E-2f) * z - 5.37397155531E-2f) * z
            + 1.33314422036E-1f) * z - 3.33332819422E-1f;
}

/* double first: the float sigmoid is the double one rounded (gc_maps_impl.h) */
#define GC_T double
#define GC_IS_DOUBLE 1
#define GC_SFX d
#define GC_EXP exp
#define GC_TANH tanh
#define GC_SIN sin
#define GC_COS cos
#define GC_ROUND_INT gc_round_int_d
#define GC_POW2 gc_pow2_d
#define GC_EXP_POLY gc_exp_poly_d
#define GC_EXP_Q gc_exp_q_d
#define GC_TANH_PQ gc_tanh_pq_d
#define GC_TANH_CAP 22.0
#define GC_LN2_HI GC_LN2_HI_D
#define GC_LN2_LO GC_LN2_LO_D
#define GC_LOG_CORE gc_log_core_d
#define GC_EXP_LO -746.0
#define GC_EXP_HI 710.0
#define GC_SUB_BITS 54.0
#define GC_SUB_SCALE 0x1p54
#define GC_T_MIN DBL_MIN
#include "gc_maps_impl.h"
#undef GC_T
#undef GC_IS_DOUBLE
#undef GC_SFX
#undef GC_EXP
#undef GC_TANH
#undef GC_SIN
#undef GC_COS
#undef GC_ROUND_INT
#undef GC_POW2
#undef GC_EXP_POLY
#undef GC_EXP_Q
#undef GC_TANH_PQ
#undef GC_TANH_CAP
#undef GC_LN2_HI
#undef GC_LN2_LO
#undef GC_LOG_CORE
#undef GC_EXP_LO
#undef GC_EXP_HI
#undef GC_SUB_BITS
#undef GC_SUB_SCALE
#undef GC_T_MIN


#define GC_T float
#define GC_IS_DOUBLE 0
#define GC_SFX s
#define GC_EXP expf
#define GC_TANH tanhf
#define GC_SIN sinf
#define GC_COS cosf
#define GC_ROUND_INT gc_round_int_s
#define GC_POW2 gc_pow2_s
#define GC_EXP_POLY gc_exp_poly_s
#define GC_EXP_Q gc_exp_q_s
#define GC_TANH_PQ gc_tanh_pq_s
#define GC_TANH_CAP 10.0f
#define GC_LN2_HI GC_LN2_HI_S
#define GC_LN2_LO GC_LN2_LO_S
#define GC_LOG_CORE gc_log_core_s
#define GC_EXP_LO -104.0f           /* exp below: 0 (< half the least subnormal) */
#define GC_EXP_HI 89.0f             /* exp above: inf */
#define GC_SUB_BITS 25.0f           /* a subnormal times 2^GC_SUB_BITS is normal */
#define GC_SUB_SCALE 0x1p25f
#define GC_T_MIN FLT_MIN
#include "gc_maps_impl.h"
