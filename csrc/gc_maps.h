/*
 * gc_maps.h -- elementwise maps, softmax rows and losses for gradchain's
 * compiled compositions.  Plain C99, no Python; float (_s) and double (_d)
 * from gc_maps_impl.h.  Arrays are contiguous; batches are row-major
 * (B, n).  Every function is numerically stable for large |x| (no overflow
 * to NaN at x = +-1000) and lets NaN/Inf through as IEEE arithmetic does.
 */
#ifndef GC_MAPS_H
#define GC_MAPS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Elementwise map codes (param: LeakyReLU's alpha, Scale's c). */
enum {
    GC_EW_TANH = 1,
    GC_EW_SIGMOID,
    GC_EW_RELU,
    GC_EW_LEAKY_RELU,
    GC_EW_SOFTPLUS,
    GC_EW_EXP,
    GC_EW_LOG,
    GC_EW_SIN,
    GC_EW_COS,
    GC_EW_SQUARE,
    GC_EW_SCALE
};

/* Loss codes.  Per row b of x (B, n): value[b] and grad[b, :]. */
enum {
    GC_LOSS_SQUARED_ERROR = 1,   /* 1/2 ||x - t||^2          t: (B, n)    */
    GC_LOSS_MEAN_SQUARED_ERROR,  /* mean((x - t)^2)          t: (B, n)    */
    GC_LOSS_CROSS_ENTROPY,       /* logsumexp(x) - x[label]  labels: (B,) */
    GC_LOSS_LOGSUMEXP,           /* logsumexp(x)                          */
    GC_LOSS_DOT                  /* w . x                    w: (B, n)    */
};

/* y = f(x), n elements. */
void gc_ew_forward_s(int code, double param, ptrdiff_t n, const float *x, float *y);
void gc_ew_forward_d(int code, double param, ptrdiff_t n, const double *x, double *y);

/* out = f'(x) * g, with y = f(x) (each derivative uses whichever is cheaper
 * and exact).  The Jacobian is diagonal, so this is both J^T g and J g. */
void gc_ew_deriv_mul_s(int code, double param, ptrdiff_t n, const float *x,
                       const float *y, const float *g, float *out);
void gc_ew_deriv_mul_d(int code, double param, ptrdiff_t n, const double *x,
                       const double *y, const double *g, double *out);

/* Row-wise softmax (log = 0) or log-softmax (log = 1), stable. */
void gc_softmax_s(int log, ptrdiff_t B, ptrdiff_t n, const float *x, float *y);
void gc_softmax_d(int log, ptrdiff_t B, ptrdiff_t n, const double *x, double *y);

/* Row-wise products with the softmax / log-softmax Jacobian at output y:
 *   softmax      J = diag(s) - s s^T (symmetric): out = s * (g - s.g)
 *   log-softmax  J = I - 1 s^T, s = exp(y):
 *                transpose: out = g - s * sum(g);  else: out = g - (s.g) */
void gc_softmax_apply_s(int log, int transpose, ptrdiff_t B, ptrdiff_t n,
                        const float *y, const float *g, float *out);
void gc_softmax_apply_d(int log, int transpose, ptrdiff_t B, ptrdiff_t n,
                        const double *y, const double *g, double *out);

/* Loss value per row into value[B] and its gradient into grad (B, n).
 * aux: the target / weight rows (B, n), or NULL; labels: (B,) class
 * indices for cross-entropy (checked by the caller), or NULL. */
void gc_loss_s(int code, ptrdiff_t B, ptrdiff_t n, const float *x,
               const float *aux, const long long *labels, double *value,
               float *grad);
void gc_loss_d(int code, ptrdiff_t B, ptrdiff_t n, const double *x,
               const double *aux, const long long *labels, double *value,
               double *grad);

#ifdef __cplusplus
}
#endif
#endif /* GC_MAPS_H */
