# Structured Jacobian links: diagonal, scaled identity, diagonal plus
# rank one.  Applied in O(n) without the GIL; never materialised.
from cython cimport floating

cdef extern from "gc_struct.h" nogil:
    void gc_diag_s(Py_ssize_t n, const float *d, const float *x, float *out)
    void gc_diag_d(Py_ssize_t n, const double *d, const double *x, double *out)
    void gc_scale_s(Py_ssize_t n, double c, const float *x, float *out)
    void gc_scale_d(Py_ssize_t n, double c, const double *x, double *out)
    void gc_diag_rank1_s(Py_ssize_t n, const float *d, const float *a,
                         const float *b, const float *x, float *out)
    void gc_diag_rank1_d(Py_ssize_t n, const double *d, const double *a,
                         const double *b, const double *x, double *out)

# Link kinds (also the _gc_kind of the operator classes in operators.py).
cpdef enum LinkKind:
    LINK_DENSE = 0
    LINK_DIAG = 1
    LINK_SCALED_IDENTITY = 2
    LINK_DIAG_RANK1 = 3

# out = J^T x (transpose) or J x for the structured n x n link of the given
# kind: diag(d); c I; diag(d) + u v^T.  x and out contiguous, not aliased.
cdef void struct_apply(int kind, Py_ssize_t n, const floating *d,
                       const floating *u, const floating *v, double c,
                       bint transpose, const floating *x,
                       floating *out) noexcept nogil
