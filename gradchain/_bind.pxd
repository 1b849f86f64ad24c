# Binding: inputs -> a table of links (see _bind.pyx).
cimport numpy as cnp
from gradchain._link cimport Link

# The dtype an input of this dtype computes in, as a typenum (NPY_FLOAT or
# NPY_DOUBLE); TypeError naming name otherwise.
cdef int _compute_typenum(object dtype, str name) except -1
# x as an ndarray, read in place when it is one (masked arrays refused).
cdef cnp.ndarray _as_array(object x, str name)
# a can be read in place by the kernels as typenum.
cdef bint _usable(cnp.ndarray a, int typenum)
# item is a scipy.sparse matrix or array.
cdef bint _is_sparse(object item)
# Smallest byte range [lo, hi) holding every element of a.
cdef void _extent(cnp.ndarray a, const char **lo, const char **hi) noexcept
# a and b share memory (exact; undecidable within NumPy's work bound counts
# as shared).
cdef bint _shares_memory(object a, object b)

cdef class LinkTable:
    cdef Link *links
    cdef Py_ssize_t k
    cdef Py_ssize_t maxw          # widest intermediate dimension
    cdef bint has_zero            # some n_i is 0: every product is zeros
    cdef int typenum              # NPY_FLOAT / NPY_DOUBLE; -1 when no link
                                  # sets it (k == 0, identities only)
    cdef tuple arrays             # the bound 2-D arrays and operators
    cdef object stack             # the 3-D array the links view, or None
    cdef list keep                # operator vectors converted for the kernels
    cdef tuple opvecs             # per link: the operator's validated record
                                  # (_operator_record), or None
    cdef tuple sources            # each link as the caller gave it
    cdef bint converted           # some link is bound to a converted copy
    cdef Py_ssize_t nsamples      # per-sample links' batch size, or -1
    cdef Py_ssize_t samples_from  # the first per-sample link
    cdef Py_ssize_t copy_bytes    # bytes of the sparse links' transpose
                                  # copies; -1: none asked for

    cdef _bind(self, jacobians)
    cdef _set_operator(self, Py_ssize_t i, tuple rec, dtype)
    cdef tuple _set_sparse(self, Py_ssize_t i, tuple rec, dtype)
    cdef _bind_stack(self, cnp.ndarray a)
    cdef _alloc(self, Py_ssize_t k, int typenum)
    cdef _set_link(self, Py_ssize_t i, cnp.ndarray a)
    cdef _check_dims(self)
    cdef tuple link_arrays(self, Py_ssize_t i)
    cdef cnp.ndarray check_out(self, object out, cnp.ndarray x, str name,
                               int nd, cnp.npy_intp *rdims, int typenum,
                               str oname=*)
    cdef cnp.ndarray vector(self, object x_in, str name, bint transpose,
                            int *typenum, Py_ssize_t *B, Py_ssize_t *nres)
    cdef check_batch(self, Py_ssize_t batch, str mode)
