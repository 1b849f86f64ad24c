"""Kernels of the structured Jacobian links (see operators.py).

A diagonal link costs n multiplies, a scaled identity n, a diagonal plus
rank one about 3n; none is ever formed as an n x n matrix.  The C loops are
in csrc/gc_struct.c; this module selects the float/double instance.
"""
from cython cimport floating


cdef void struct_apply(int kind, Py_ssize_t n, const floating *d,
                       Py_ssize_t ds, const floating *u, Py_ssize_t us,
                       const floating *v, Py_ssize_t vs, double c,
                       bint transpose, const floating *x,
                       floating *out) noexcept nogil:
    if kind == LINK_DIAG:
        if floating is float:
            gc_diag_s(n, d, ds, x, out)
        else:
            gc_diag_d(n, d, ds, x, out)
    elif kind == LINK_SCALED_IDENTITY:
        if floating is float:
            gc_scale_s(n, c, x, out)
        else:
            gc_scale_d(n, c, x, out)
    else:
        # (diag(d) + c u v^T)^T x = d x + c v (u . x);  J x = d x + c u (v . x)
        if transpose:
            if floating is float:
                gc_diag_rank1_s(n, d, ds, c, v, vs, u, us, x, out)
            else:
                gc_diag_rank1_d(n, d, ds, c, v, vs, u, us, x, out)
        else:
            if floating is float:
                gc_diag_rank1_s(n, d, ds, c, u, us, v, vs, x, out)
            else:
                gc_diag_rank1_d(n, d, ds, c, u, us, v, vs, x, out)
