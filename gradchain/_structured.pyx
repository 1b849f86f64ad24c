"""Kernels of the structured Jacobian links (see operators.py).

A diagonal link costs n multiplies, a scaled identity n, a diagonal plus
rank one about 3n; none is ever formed as an n x n matrix.  The C loops are
in csrc/gc_struct.c; this module selects the float/double instance.
"""
from cython cimport floating


cdef void struct_apply(int kind, Py_ssize_t n, const floating *d,
                       const floating *u, const floating *v, double c,
                       bint transpose, const floating *x,
                       floating *out) noexcept nogil:
    if kind == LINK_DIAG:
        if floating is float:
            gc_diag_s(n, d, x, out)
        else:
            gc_diag_d(n, d, x, out)
    elif kind == LINK_SCALED_IDENTITY:
        if floating is float:
            gc_scale_s(n, c, x, out)
        else:
            gc_scale_d(n, c, x, out)
    else:
        # (diag(d) + u v^T)^T x = d x + v (u . x);  (diag(d) + u v^T) x = d x + u (v . x)
        if transpose:
            if floating is float:
                gc_diag_rank1_s(n, d, v, u, x, out)
            else:
                gc_diag_rank1_d(n, d, v, u, x, out)
        else:
            if floating is float:
                gc_diag_rank1_s(n, d, u, v, x, out)
            else:
                gc_diag_rank1_d(n, d, u, v, x, out)
