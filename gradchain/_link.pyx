"""The link model (see _link.pxd) and the kernels of the links that are
not dense matrices.

A diagonal link costs n multiplies a vector, a scaled identity n, a
diagonal plus rank one about 3n; none is ever formed as an n x n matrix
(csrc/gc_struct.c).  The map programme's elementwise and softmax layers
apply their Jacobians at the stored intermediates (csrc/gc_maps.c).  This
module selects the float/double instance and exports the kind enum to
Python (operators.py).
"""
from cython cimport floating

cdef extern from "gc_struct.h" nogil:
    void gc_diag_s(Py_ssize_t n, const float *d, Py_ssize_t ds, const float *x,
                   float *out)
    void gc_diag_d(Py_ssize_t n, const double *d, Py_ssize_t ds, const double *x,
                   double *out)
    void gc_scale_s(Py_ssize_t n, double c, const float *x, float *out)
    void gc_scale_d(Py_ssize_t n, double c, const double *x, double *out)
    void gc_diag_rank1_s(Py_ssize_t n, const float *d, Py_ssize_t ds, double c,
                         const float *a, Py_ssize_t as_, const float *b,
                         Py_ssize_t bs, const float *x, float *out)
    void gc_diag_rank1_d(Py_ssize_t n, const double *d, Py_ssize_t ds, double c,
                         const double *a, Py_ssize_t as_, const double *b,
                         Py_ssize_t bs, const double *x, double *out)

cdef extern from "gc_maps.h" nogil:
    void gc_ew_deriv_mul_s(int code, double param, Py_ssize_t n, const float *x,
                           const float *y, const float *g, float *out)
    void gc_ew_deriv_mul_d(int code, double param, Py_ssize_t n, const double *x,
                           const double *y, const double *g, double *out)
    void gc_softmax_apply_s(int log, int transpose, Py_ssize_t B, Py_ssize_t n,
                            const float *y, const float *g, float *out)
    void gc_softmax_apply_d(int log, int transpose, Py_ssize_t B, Py_ssize_t n,
                            const double *y, const double *g, double *out)


cdef inline void _struct_row(const Link *L, bint transpose, const floating *x,
                             floating *out) noexcept nogil:
    cdef const floating *d = <const floating *>L.d
    cdef const floating *u = <const floating *>L.u
    cdef const floating *v = <const floating *>L.v
    if L.kind == LINK_DIAG:
        if floating is float:
            gc_diag_s(L.n, d, L.ds, x, out)
        else:
            gc_diag_d(L.n, d, L.ds, x, out)
    elif L.kind == LINK_SCALED_IDENTITY or L.kind == LINK_IDENTITY:
        if floating is float:
            gc_scale_s(L.n, L.scale, x, out)
        else:
            gc_scale_d(L.n, L.scale, x, out)
    # (diag(d) + c u v^T)^T x = d x + c v (u . x);  J x = d x + c u (v . x)
    elif transpose:
        if floating is float:
            gc_diag_rank1_s(L.n, d, L.ds, L.scale, v, L.vs, u, L.us, x, out)
        else:
            gc_diag_rank1_d(L.n, d, L.ds, L.scale, v, L.vs, u, L.us, x, out)
    else:
        if floating is float:
            gc_diag_rank1_s(L.n, d, L.ds, L.scale, u, L.us, v, L.vs, x, out)
        else:
            gc_diag_rank1_d(L.n, d, L.ds, L.scale, u, L.us, v, L.vs, x, out)


cdef void link_apply_rows(const Link *L, bint transpose, const floating *x,
                          Py_ssize_t B, floating *out) noexcept nogil:
    cdef Py_ssize_t b
    if L.kind == LINK_ELEMENTWISE:
        if floating is float:
            gc_ew_deriv_mul_s(L.code, L.scale, B * L.n, <const float *>L.d,
                              <const float *>L.u, x, out)
        else:
            gc_ew_deriv_mul_d(L.code, L.scale, B * L.n, <const double *>L.d,
                              <const double *>L.u, x, out)
    elif L.kind == LINK_SOFTMAX or L.kind == LINK_LOG_SOFTMAX:
        if floating is float:
            gc_softmax_apply_s(L.kind == LINK_LOG_SOFTMAX, transpose, B, L.n,
                               <const float *>L.u, x, out)
        else:
            gc_softmax_apply_d(L.kind == LINK_LOG_SOFTMAX, transpose, B, L.n,
                               <const double *>L.u, x, out)
    else:
        for b in range(B):
            _struct_row(L, transpose, x + b * L.n, out + b * L.n)
