/*
 * gc_struct.h -- structured Jacobian links for gradchain: O(n) products
 * with diagonal, scaled-identity and diagonal-plus-rank-one matrices, which
 * are never materialised.  Plain C99, no Python; float (_s) and double (_d)
 * generated from gc_struct_impl.h.  Vectors are contiguous; out never
 * aliases an input.
 *
 *   gc_diag:       out = d * x                     (J = J^T = diag(d))
 *   gc_scale:      out = c * x                     (J = c I)
 *   gc_diag_rank1: out = d * x + a (b . x)         (J = diag(d) + u v^T:
 *                                                    J x   with a=u, b=v;
 *                                                    J^T x with a=v, b=u)
 */
#ifndef GC_STRUCT_H
#define GC_STRUCT_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

void gc_diag_s(ptrdiff_t n, const float *d, const float *x, float *out);
void gc_diag_d(ptrdiff_t n, const double *d, const double *x, double *out);

void gc_scale_s(ptrdiff_t n, double c, const float *x, float *out);
void gc_scale_d(ptrdiff_t n, double c, const double *x, double *out);

void gc_diag_rank1_s(ptrdiff_t n, const float *d, const float *a,
                     const float *b, const float *x, float *out);
void gc_diag_rank1_d(ptrdiff_t n, const double *d, const double *a,
                     const double *b, const double *x, double *out);

#ifdef __cplusplus
}
#endif
#endif /* GC_STRUCT_H */
