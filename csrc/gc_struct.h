/*
 * gc_struct.h -- structured Jacobian links for gradchain: O(n) products
 * with diagonal, scaled-identity and diagonal-plus-rank-one matrices, which
 * are never materialised.  Plain C99, no Python; float (_s) and double (_d)
 * generated from gc_struct_impl.h.  x and out are contiguous; the operator
 * vectors d, a, b are read with strides ds, as, bs (in elements, any sign,
 * so strided and reversed views are read in place); out never aliases an
 * input.
 *
 *   gc_diag:       out = d * x                     (J = J^T = diag(d))
 *   gc_scale:      out = c * x                     (J = c I)
 *   gc_diag_rank1: out = d * x + c a (b . x)       (J = diag(d) + c u v^T:
 *                                                    J x   with a=u, b=v;
 *                                                    J^T x with a=v, b=u)
 */
#ifndef GC_STRUCT_H
#define GC_STRUCT_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

void gc_diag_s(ptrdiff_t n, const float *d, ptrdiff_t ds, const float *x,
               float *out);
void gc_diag_d(ptrdiff_t n, const double *d, ptrdiff_t ds, const double *x,
               double *out);

void gc_scale_s(ptrdiff_t n, double c, const float *x, float *out);
void gc_scale_d(ptrdiff_t n, double c, const double *x, double *out);

void gc_diag_rank1_s(ptrdiff_t n, const float *d, ptrdiff_t ds, double c,
                     const float *a, ptrdiff_t as, const float *b, ptrdiff_t bs,
                     const float *x, float *out);
void gc_diag_rank1_d(ptrdiff_t n, const double *d, ptrdiff_t ds, double c,
                     const double *a, ptrdiff_t as, const double *b,
                     ptrdiff_t bs, const double *x, double *out);

#ifdef __cplusplus
}
#endif
#endif /* GC_STRUCT_H */
