# The dense vector kernels J^T g and J v.
#
# The C inner loops live in csrc/gc_dense.c (plain C, no Python); this file
# exposes them to Cython together with the fused float32/float64 link
# kernels that _kernels.pyx defines and _propagate, _blas and _accumulate
# call.  Many-vector (matrix-matrix) products are _blas.pyx's.  Everything
# here runs without the GIL.
from cython cimport floating

cdef extern from "gc_dense.h" nogil:
    int gc_axpy_rows_s(Py_ssize_t m, Py_ssize_t n, const float *A,
                        Py_ssize_t rs, Py_ssize_t cs, const float *x,
                        float *y, int nthreads)
    int gc_axpy_rows_d(Py_ssize_t m, Py_ssize_t n, const double *A,
                        Py_ssize_t rs, Py_ssize_t cs, const double *x,
                        double *y, int nthreads)
    void gc_dot_rows_s(Py_ssize_t m, Py_ssize_t n, const float *A,
                       Py_ssize_t rs, Py_ssize_t cs, const float *x,
                       float *y, int nthreads)
    void gc_dot_rows_d(Py_ssize_t m, Py_ssize_t n, const double *A,
                       Py_ssize_t rs, Py_ssize_t cs, const double *x,
                       double *y, int nthreads)
    void gc_pack_rows_s(Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t n,
                        const float *A, Py_ssize_t rs, Py_ssize_t cs, float *P)
    void gc_pack_rows_d(Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t n,
                        const double *A, Py_ssize_t rs, Py_ssize_t cs,
                        double *P)
    int gc_axpy_rows_m(Py_ssize_t m, Py_ssize_t n, const float *A,
                        Py_ssize_t rs, Py_ssize_t cs, const double *x,
                        double *y, int nthreads)
    void gc_dot_rows_m(Py_ssize_t m, Py_ssize_t n, const float *A,
                       Py_ssize_t rs, Py_ssize_t cs, const double *x,
                       double *y, int nthreads)
    void gc_pack_rows_m(Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t n,
                        const float *A, Py_ssize_t rs, Py_ssize_t cs,
                        double *P)
    const char *gc_simd_target()
    int gc_have_openmp()
    int gc_max_threads()
    ctypedef struct gc_fpstate:
        int on
        int nthreads
        unsigned long long caller
    int gc_fp_flush_supported()
    void gc_fp_set_flush(int on)
    int gc_fp_get_flush()
    void gc_fp_enter(gc_fpstate *st, int nthreads)
    void gc_fp_exit(const gc_fpstate *st)
    int gc_fp_probe(int nthreads, int *during, int *after)


# Number of threads the next kernel call may use (see set_num_threads).
cdef int effective_threads() noexcept nogil

# The floating-point environment of one call (csrc/gc_dense.h): every block
# of compiled work that runs kernels is bracketed by fp_enter(&st, nt) ...
# fp_exit(&st), with nt the threads it may use; they flush subnormals in
# the caller and those workers when the calling thread asked for it
# (gradchain.errstate), and cost a thread-local read otherwise.  Defined
# here, the one module whose C holds the per-thread choice.
cdef void fp_enter(gc_fpstate *st, int nthreads) noexcept nogil
cdef void fp_exit(const gc_fpstate *st) noexcept nogil

# out (n,) = J^T g for one dense J (m, n) given by its first element and its
# strides in elements.  g and out are contiguous and do not overlap J.
# 0, or -1 when a work buffer cannot be allocated.
cdef int link_jtv(const floating *J, Py_ssize_t m, Py_ssize_t n,
                   Py_ssize_t rs, Py_ssize_t cs, const floating *g,
                   floating *out, int nthreads) noexcept nogil

# out (m,) = J v.  0 or -1 as above.
cdef int link_jv(const floating *J, Py_ssize_t m, Py_ssize_t n,
                  Py_ssize_t rs, Py_ssize_t cs, const floating *v,
                  floating *out, int nthreads) noexcept nogil

# The same for a float32 J and float64 vectors, summed in float64: link_jtv/
# link_jv's operations on J converted to float64 (accumulate="float64").
cdef int link_jtv_m(const float *J, Py_ssize_t m, Py_ssize_t n,
                    Py_ssize_t rs, Py_ssize_t cs, const double *g,
                    double *out, int nthreads) noexcept nogil
cdef int link_jv_m(const float *J, Py_ssize_t m, Py_ssize_t n,
                   Py_ssize_t rs, Py_ssize_t cs, const double *v,
                   double *out, int nthreads) noexcept nogil

# P (r1 - r0, n), C-contiguous = rows r0 .. r1 of A (strides rs, cs in
# elements): the packing of a strided operand for BLAS (_blas.pyx).
cdef void pack_rows(Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t n,
                    const floating *A, Py_ssize_t rs, Py_ssize_t cs,
                    floating *P) noexcept nogil

# A memoryview's stride in bytes as elements of itemsize bytes; ValueError
# when it is not a multiple (the typed-memoryview entry points).
cdef Py_ssize_t elem_stride(Py_ssize_t nbytes, Py_ssize_t itemsize) except? -1

# The same, converting float32 rows to float64 (the mixed kernels' blocks).
cdef void pack_rows_m(Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t n,
                      const float *A, Py_ssize_t rs, Py_ssize_t cs,
                      double *P) noexcept nogil
