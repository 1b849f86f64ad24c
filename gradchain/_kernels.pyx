"""Dense Jacobian vector kernels J^T g and J v, thread control, build facts.

The products call the SIMD-dispatched inner loops in ``csrc/gc_dense.c``
and read J in place, whatever its layout: C-order, F-order (read as the
transpose of a C-order matrix) and arbitrary strides each have a path.
Products of many vectors (matrix-matrix) are BLAS's, through the one door
in ``_blas.pyx``.

The ``def`` functions at the bottom are thin typed-memoryview entry points
used by the tests and benchmarks; the public API is in ``gradchain.chain``.
"""
from cython cimport floating

import numbers

import numpy as np

cdef int _num_threads = 0   # 0: follow OpenMP (OMP_NUM_THREADS, threadpoolctl)


cdef int effective_threads() noexcept nogil:
    if _num_threads > 0:
        return _num_threads
    return gc_max_threads()


cdef void fp_enter(gc_fpstate *st, int nthreads) noexcept nogil:
    gc_fp_enter(st, nthreads)


cdef void fp_exit(const gc_fpstate *st) noexcept nogil:
    gc_fp_exit(st)


cdef inline Py_ssize_t _abs(Py_ssize_t a) noexcept nogil:
    return -a if a < 0 else a


cdef int link_jtv(const floating *J, Py_ssize_t m, Py_ssize_t n,
                  Py_ssize_t rs, Py_ssize_t cs, const floating *g,
                  floating *out, int nthreads) noexcept nogil:
    # out[c] = sum_r J[r, c] g[r]; run the inner loop along the smaller stride.
    if _abs(cs) <= _abs(rs):
        if floating is float:
            return gc_axpy_rows_s(m, n, J, rs, cs, g, out, nthreads)
        else:
            return gc_axpy_rows_d(m, n, J, rs, cs, g, out, nthreads)
    # columns of J are the rows of J^T, stepping by cs, inner stride rs
    if floating is float:
        gc_dot_rows_s(n, m, J, cs, rs, g, out, nthreads)
    else:
        gc_dot_rows_d(n, m, J, cs, rs, g, out, nthreads)
    return 0


cdef int link_jv(const floating *J, Py_ssize_t m, Py_ssize_t n,
                 Py_ssize_t rs, Py_ssize_t cs, const floating *v,
                 floating *out, int nthreads) noexcept nogil:
    # out[r] = sum_c J[r, c] v[c]
    if _abs(cs) <= _abs(rs):
        if floating is float:
            gc_dot_rows_s(m, n, J, rs, cs, v, out, nthreads)
        else:
            gc_dot_rows_d(m, n, J, rs, cs, v, out, nthreads)
        return 0
    if floating is float:
        return gc_axpy_rows_s(n, m, J, cs, rs, v, out, nthreads)
    else:
        return gc_axpy_rows_d(n, m, J, cs, rs, v, out, nthreads)


cdef int link_jtv_m(const float *J, Py_ssize_t m, Py_ssize_t n,
                    Py_ssize_t rs, Py_ssize_t cs, const double *g,
                    double *out, int nthreads) noexcept nogil:
    # link_jtv's choice of loop, on the mixed instance
    if _abs(cs) <= _abs(rs):
        return gc_axpy_rows_m(m, n, J, rs, cs, g, out, nthreads)
    gc_dot_rows_m(n, m, J, cs, rs, g, out, nthreads)
    return 0


cdef int link_jv_m(const float *J, Py_ssize_t m, Py_ssize_t n,
                   Py_ssize_t rs, Py_ssize_t cs, const double *v,
                   double *out, int nthreads) noexcept nogil:
    if _abs(cs) <= _abs(rs):
        gc_dot_rows_m(m, n, J, rs, cs, v, out, nthreads)
        return 0
    return gc_axpy_rows_m(n, m, J, cs, rs, v, out, nthreads)


cdef void pack_rows_m(Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t n,
                      const float *A, Py_ssize_t rs, Py_ssize_t cs,
                      double *P) noexcept nogil:
    gc_pack_rows_m(r0, r1, n, A, rs, cs, P)


cdef void pack_rows(Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t n,
                    const floating *A, Py_ssize_t rs, Py_ssize_t cs,
                    floating *P) noexcept nogil:
    if floating is float:
        gc_pack_rows_s(r0, r1, n, A, rs, cs, P)
    else:
        gc_pack_rows_d(r0, r1, n, A, rs, cs, P)


# --------------------------------------------------------------------------
# Thread control and build facts
# --------------------------------------------------------------------------

def set_num_threads(n):
    """Set the number of threads gradchain's kernels may use.

    Parameters
    ----------
    n : int or None
        A positive count, used by every thread of the process from now on;
        or None to follow OpenMP again (``OMP_NUM_THREADS``,
        ``omp_set_num_threads``, and so ``threadpoolctl``).

    Only products with at least 2**15 matrix elements are split over
    threads; smaller ones always run on the calling thread.
    """
    global _num_threads
    if n is None:
        _num_threads = 0
        return
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n must be a positive int or None, got "
                        f"{type(n).__name__} {n!r}")
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be a positive int or None, got {n}")
    _num_threads = <int>min(n, 1 << 16)


def get_num_threads():
    """Number of threads the next call from this thread may use."""
    return effective_threads()


def simd_target():
    """Instruction set the dense inner loops run on (chosen at run time)."""
    return gc_simd_target().decode("ascii")


def openmp_enabled():
    """Whether this build of gradchain was compiled with OpenMP."""
    return bool(gc_have_openmp())


def _flush_supported():
    """Whether this CPU and build can flush subnormals (gradchain.errstate)."""
    return bool(gc_fp_flush_supported())


def _set_flush(bint on):
    """This thread's choice: flush subnormals in gradchain's calls."""
    gc_fp_set_flush(on)


def _get_flush():
    return bool(gc_fp_get_flush())


def _fp_probe(int nthreads):
    """For the tests: run one bracketed call over nthreads (under this
    thread's choice) and report, per thread of a parallel region, whether
    the flush bits were set during it and whether any is left after it:
    (region size, [during], [after]); -1 for a thread missing."""
    if not 1 <= nthreads <= 256:
        raise ValueError(f"nthreads must be in 1..256, got {nthreads}")
    cdef int during[256]
    cdef int after[256]
    cdef int got
    with nogil:
        got = gc_fp_probe(nthreads, during, after)
    return got, [during[t] for t in range(nthreads)], [after[t] for t in range(nthreads)]


# --------------------------------------------------------------------------
# Typed-memoryview entry points (tests and benchmarks)
# --------------------------------------------------------------------------

cdef Py_ssize_t elem_stride(Py_ssize_t nbytes, Py_ssize_t itemsize) except? -1:
    if nbytes % itemsize:
        raise ValueError("strides must be multiples of the item size")
    return nbytes // itemsize


ctypedef fused _matrix:
    float
    double


def _vector(const _matrix[:, :] J, const floating[::1] x, floating[::1] out,
            bint transpose):
    # out = J^T x (transpose) or J x, on the vector kernels: J and the
    # vectors of one dtype, or a float32 J with float64 vectors (the mixed
    # kernels, float64 sums)
    if _matrix is double and floating is float:
        raise TypeError("a float64 J takes float64 vectors")
    cdef Py_ssize_t m = J.shape[0], n = J.shape[1]
    if x.shape[0] != (m if transpose else n) or out.shape[0] != (n if transpose else m):
        raise ValueError("shape mismatch")
    if out.shape[0] == 0:
        return
    if x.shape[0] == 0:
        out[:] = 0
        return
    cdef Py_ssize_t rs = elem_stride(J.strides[0], sizeof(_matrix))
    cdef Py_ssize_t cs = elem_stride(J.strides[1], sizeof(_matrix))
    cdef int nt = effective_threads(), rc = 0
    cdef gc_fpstate fps
    with nogil:
        fp_enter(&fps, nt)
        if _matrix is float and floating is double:
            if transpose:
                rc = link_jtv_m(&J[0, 0], m, n, rs, cs, &x[0], &out[0], nt)
            else:
                rc = link_jv_m(&J[0, 0], m, n, rs, cs, &x[0], &out[0], nt)
        elif transpose:
            rc = link_jtv(<const floating *>&J[0, 0], m, n, rs, cs, &x[0], &out[0], nt)
        else:
            rc = link_jv(<const floating *>&J[0, 0], m, n, rs, cs, &x[0], &out[0], nt)
        fp_exit(&fps)
    if rc:
        raise MemoryError()


def jtv(J, g, out):
    """out[:] = J.T @ g for one dense J of any layout (no argument checks
    beyond shapes; use gradchain.vjp); a float32 J with float64 g and out
    sums in float64 (the mixed kernels).  The many-vector forms are in
    gradchain._blas."""
    _vector(J, g, out, True)


def jv(J, v, out):
    """out[:] = J @ v for one dense J of any layout (float32 J, float64
    vectors: the mixed kernels)."""
    _vector(J, v, out, False)
