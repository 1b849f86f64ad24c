/*
 * gc_maps.c -- instantiates gc_maps_impl.h for float and double.
 */
#include "gc_maps.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "gc_simd.h"

/* --- helpers for the vectorisable tanh (gc_maps_impl.h) ------------------ */

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
 * float-to-integer conversion, which x86-64 has no vector form of below
 * AVX-512: integer adds and a shift, so the loops over tanh vectorise. */
static inline double gc_pow2_d(double k)
{
    const double s = k + 6755399441055744.0;           /* 1.5 * 2^52 */
    int64_t b, e;
    double r;
    memcpy(&b, &s, sizeof b);
    e = (b - INT64_C(0x4338000000000000) + 1023) << 52;
    memcpy(&r, &e, sizeof r);
    return r;
}
static inline float gc_pow2_s(float k)
{
    const float s = k + 12582912.0f;                   /* 1.5 * 2^23 */
    int32_t b, e;
    float r;
    memcpy(&b, &s, sizeof b);
    e = (b - 0x4B400000 + 127) << 23;
    memcpy(&r, &e, sizeof r);
    return r;
}

/* exp(r) for |r| <= ln2/2: Taylor polynomial to degree 13 (double; the
 * truncation is below 1e-17) and 7 (float, below 6e-9), in Horner form. */
static inline double gc_exp_poly_d(double r)
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
    p = p * r + 0.5;
    p = p * r + 1.0;
    return p * r + 1.0;
}
static inline float gc_exp_poly_s(float r)
{
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    return p * r + 1.0f;
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

#define GC_T float
#define GC_IS_DOUBLE 0
#define GC_SFX s
#define GC_EXP expf
#define GC_LOG logf
#define GC_LOG1P log1pf
#define GC_TANH tanhf
#define GC_SIN sinf
#define GC_COS cosf
#define GC_ROUND_INT gc_round_int_s
#define GC_POW2 gc_pow2_s
#define GC_EXP_POLY gc_exp_poly_s
#define GC_TANH_PQ gc_tanh_pq_s
#define GC_TANH_CAP 10.0f
#define GC_LN2_HI 0.693145751953125f
#define GC_LN2_LO 1.428606765330187045e-06f
#include "gc_maps_impl.h"
#undef GC_T
#undef GC_IS_DOUBLE
#undef GC_SFX
#undef GC_EXP
#undef GC_LOG
#undef GC_LOG1P
#undef GC_TANH
#undef GC_SIN
#undef GC_COS
#undef GC_ROUND_INT
#undef GC_POW2
#undef GC_EXP_POLY
#undef GC_TANH_PQ
#undef GC_TANH_CAP
#undef GC_LN2_HI
#undef GC_LN2_LO

#define GC_T double
#define GC_IS_DOUBLE 1
#define GC_SFX d
#define GC_EXP exp
#define GC_LOG log
#define GC_LOG1P log1p
#define GC_TANH tanh
#define GC_SIN sin
#define GC_COS cos
#define GC_ROUND_INT gc_round_int_d
#define GC_POW2 gc_pow2_d
#define GC_EXP_POLY gc_exp_poly_d
#define GC_TANH_PQ gc_tanh_pq_d
#define GC_TANH_CAP 22.0
#define GC_LN2_HI 6.93147180369123816490e-01
#define GC_LN2_LO 1.90821492927058770002e-10
#include "gc_maps_impl.h"
