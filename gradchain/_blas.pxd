# The one door to BLAS: every ?gemm gradchain makes goes through matmul
# (_blas.pyx), which knows the layouts BLAS takes, the int sizes it takes,
# and how to pack the rest.
from cython cimport floating

# Z (p x r, C-contiguous) = A (p x q) B (q x r), A and B of any layout
# (strides in elements, any sign).  C- and F-order operands go to ?gemm in
# place; a strided B is packed a panel at a time (never copied whole), a
# strided A once; sizes beyond a BLAS int run row by row on the vector
# kernels (nt threads).  0, or -1 when a buffer cannot be allocated.
cdef int matmul(const floating *A, Py_ssize_t ars, Py_ssize_t acs,
                const floating *B, Py_ssize_t brs, Py_ssize_t bcs,
                Py_ssize_t p, Py_ssize_t q, Py_ssize_t r, floating *Z,
                int nt) noexcept nogil

# Out (B, n) = G (B, m) @ J for one dense J (m, n) given by its first
# element and strides; G and Out C-contiguous.  B == 1 runs on the vector
# kernel (link_jtv), more rows on matmul.  0 or -1 as above.
cdef int block_jtv(const floating *J, Py_ssize_t m, Py_ssize_t n,
                   Py_ssize_t rs, Py_ssize_t cs, const floating *G,
                   Py_ssize_t B, floating *Out, int nthreads) noexcept nogil

# Out (B, m) = V (B, n) @ J^T; as block_jtv (B == 1: link_jv).
cdef int block_jv(const floating *J, Py_ssize_t m, Py_ssize_t n,
                  Py_ssize_t rs, Py_ssize_t cs, const floating *V,
                  Py_ssize_t B, floating *Out, int nthreads) noexcept nogil
