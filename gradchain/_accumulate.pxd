# Jacobian accumulation: executing a bracketing of links (see
# _accumulate.pyx); what to run is _bracket's Strategy.
from cython cimport floating
from gradchain._link cimport Link

# out (p_0 x n_{m-1}, C-contiguous) = F_0 ... F_{m-1} in the bracketing of
# split (order ORDER_TABLE) or in a plain order (split unused, may be NULL).
# 0, -1 when out of memory, or another code of _link.link_apply_rows.
cdef int run_product(const Link *f, Py_ssize_t m, const int *split, int order,
                     floating *out, int nt) noexcept nogil

# out + b * ostride (elements; C-contiguous p_0 x n_{m-1}) = sample b's
# product F_0 ... F_{m-1} (per-sample links read at link_sample), for every
# sample b < B.  sample_threads: samples split over nt threads, each
# product on one; else one sample at a time, each product on nt threads.
# A sample's bits are the same either way.  0, or -1 when out of memory.
cdef int run_samples(const Link *f, Py_ssize_t m, const int *split, int order,
                     Py_ssize_t B, floating *out, Py_ssize_t ostride,
                     bint sample_threads, int nt) noexcept nogil

# The sparse product F_0 ... F_{m-1} (every factor sparse or diagonal-like:
# _bracket.MODE_SPARSE) as a scipy.sparse.csr_array of dtype typenum, in
# the bracketing of split (ORDER_TABLE) or a plain order: SciPy's SpGEMM
# for each product of two sparse operands, scalings for diagonal-like ones.
cdef object run_sparse_product(const Link *f, Py_ssize_t m, const int *split,
                               int order, int typenum)
