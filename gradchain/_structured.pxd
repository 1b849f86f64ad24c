# Structured Jacobian links: diagonal, scaled identity, diagonal plus
# rank one.  Applied in O(n) without the GIL; never materialised.
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

# Link kinds (also the _gc_kind of the operator classes in operators.py).
cpdef enum LinkKind:
    LINK_DENSE = 0
    LINK_DIAG = 1
    LINK_SCALED_IDENTITY = 2
    LINK_DIAG_RANK1 = 3

# out = J^T x (transpose) or J x for the structured n x n link of the given
# kind: diag(d); c I; diag(d) + c u v^T.  d, u, v with strides ds, us, vs
# (elements); x and out contiguous, not aliased.
cdef void struct_apply(int kind, Py_ssize_t n, const floating *d,
                       Py_ssize_t ds, const floating *u, Py_ssize_t us,
                       const floating *v, Py_ssize_t vs, double c,
                       bint transpose, const floating *x,
                       floating *out) noexcept nogil
