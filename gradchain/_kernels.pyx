"""Dense Jacobian kernels: J^T g, J v, and their blocked (many-vector) forms.

The single-vector products call the SIMD-dispatched inner loops in
``csrc/gc_dense.c``; the blocked products call BLAS ``?gemm`` from SciPy's
``cython_blas`` (as scikit-learn does), so no BLAS is linked at build time.
Every kernel reads J in place, whatever its layout: C-order, F-order (read
as the transpose of a C-order matrix) and arbitrary strides each have a
path, and the block kernels pack a strided J panel by panel into a small
buffer instead of copying it whole.

The ``def`` functions at the bottom are thin typed-memoryview entry points
used by the tests and benchmarks; the public API is in ``gradchain.chain``.
"""
from libc.stdlib cimport malloc, free
from libc.string cimport memset
from libc.limits cimport INT_MAX
from cython cimport floating

from scipy.linalg.cython_blas cimport sgemm, dgemm

import numbers

import numpy as np

# Panel size (elements) used when a strided J is packed for BLAS: 32 Ki
# elements is 256 KiB of float64, which stays resident in L2.
cdef enum:
    PANEL_ELEMS = 32768

cdef int _num_threads = 0   # 0: follow OpenMP (OMP_NUM_THREADS, threadpoolctl)


cdef int effective_threads() noexcept nogil:
    if _num_threads > 0:
        return _num_threads
    return gc_max_threads()


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


cdef inline void _gemm(char transa, char transb, Py_ssize_t m, Py_ssize_t n,
                       Py_ssize_t k, const floating *A, Py_ssize_t lda,
                       const floating *B, Py_ssize_t ldb, floating beta,
                       floating *C, Py_ssize_t ldc) noexcept nogil:
    # Column-major C (m, n) = op(A) (m, k) op(B) (k, n) + beta C.  Callers
    # guarantee every size fits a BLAS int and that m, n, k > 0.
    cdef int im = <int>m, jn = <int>n, kk = <int>k
    cdef int la = <int>lda, lb = <int>ldb, lc = <int>ldc
    cdef floating one = 1
    if floating is float:
        sgemm(&transa, &transb, &im, &jn, &kk, &one, <float *>A, &la,
              <float *>B, &lb, &beta, C, &lc)
    else:
        dgemm(&transa, &transb, &im, &jn, &kk, &one, <double *>A, &la,
              <double *>B, &lb, &beta, C, &lc)


cdef inline bint _blas_ok(Py_ssize_t a, Py_ssize_t b, Py_ssize_t c,
                          Py_ssize_t d) noexcept nogil:
    return a <= INT_MAX and b <= INT_MAX and c <= INT_MAX and d <= INT_MAX


cdef int _block(const floating *J, Py_ssize_t m, Py_ssize_t n, Py_ssize_t rs,
                Py_ssize_t cs, const floating *X, Py_ssize_t B, floating *Out,
                int nthreads, bint transpose) noexcept nogil:
    # transpose: row-major Out (B, n) = X (B, m) @ J, i.e. column-major
    #            Out^T = J^T X^T;
    # else:      Out (B, m) = X (B, n) @ J^T, i.e. Out^T = J X^T.
    # A C-order J is stored column-major as J^T (ld rs), an F-order one as J
    # (ld cs); any other layout is packed a panel of rows at a time.
    cdef Py_ssize_t nin = m if transpose else n
    cdef Py_ssize_t nout = n if transpose else m
    cdef Py_ssize_t b, r0, r1, rows
    cdef floating *P
    cdef int rc
    if B == 0 or nout == 0:
        return 0
    if nin == 0:
        memset(Out, 0, B * nout * sizeof(floating))
        return 0
    if B == 1 or not _blas_ok(m, n, B, _abs(rs) + _abs(cs)):
        for b in range(B):
            if transpose:
                rc = link_jtv(J, m, n, rs, cs, X + b * nin, Out + b * nout, nthreads)
            else:
                rc = link_jv(J, m, n, rs, cs, X + b * nin, Out + b * nout, nthreads)
            if rc:
                return -1
        return 0
    if cs == 1 and rs >= n:
        _gemm(c'N' if transpose else c'T', c'N', nout, B, nin, J, rs, X, nin,
              <floating>0, Out, nout)
    elif rs == 1 and cs >= m:
        _gemm(c'T' if transpose else c'N', c'N', nout, B, nin, J, cs, X, nin,
              <floating>0, Out, nout)
    else:
        # transpose: Out += X[:, r0:r1] @ J[r0:r1]; else Out[:, r0:r1] =
        # X @ J[r0:r1]^T -- never copying J whole
        rows = max(1, min(m, PANEL_ELEMS // n))
        P = <floating *>malloc(rows * n * sizeof(floating))
        if P == NULL:
            return -1
        r0 = 0
        while r0 < m:
            r1 = min(m, r0 + rows)
            if floating is float:
                gc_pack_rows_s(r0, r1, n, J, rs, cs, P)
            else:
                gc_pack_rows_d(r0, r1, n, J, rs, cs, P)
            if transpose:
                _gemm(c'N', c'N', n, B, r1 - r0, P, n, X + r0, m,
                      <floating>(0 if r0 == 0 else 1), Out, n)
            else:
                _gemm(c'T', c'N', r1 - r0, B, n, P, n, X, n, <floating>0,
                      Out + r0, m)
            r0 = r1
        free(P)
    return 0


cdef int block_jtv(const floating *J, Py_ssize_t m, Py_ssize_t n,
                   Py_ssize_t rs, Py_ssize_t cs, const floating *G,
                   Py_ssize_t B, floating *Out, int nthreads) noexcept nogil:
    return _block(J, m, n, rs, cs, G, B, Out, nthreads, True)


cdef int block_jv(const floating *J, Py_ssize_t m, Py_ssize_t n,
                  Py_ssize_t rs, Py_ssize_t cs, const floating *V,
                  Py_ssize_t B, floating *Out, int nthreads) noexcept nogil:
    return _block(J, m, n, rs, cs, V, B, Out, nthreads, False)


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


# --------------------------------------------------------------------------
# Typed-memoryview entry points (tests and benchmarks)
# --------------------------------------------------------------------------

cdef inline Py_ssize_t _stride(Py_ssize_t nbytes, Py_ssize_t itemsize) except? -1:
    if nbytes % itemsize:
        raise ValueError("strides must be multiples of the item size")
    return nbytes // itemsize


def _apply(const floating[:, :] J, const floating[:, ::1] X,
          floating[:, ::1] out, bint transpose):
    # out = X @ J (transpose: rows of X are cotangents) or X @ J^T.
    cdef Py_ssize_t m = J.shape[0], n = J.shape[1], B = X.shape[0]
    cdef Py_ssize_t nin = m if transpose else n, nout = n if transpose else m
    if X.shape[1] != nin or out.shape[0] != B or out.shape[1] != nout:
        raise ValueError("shape mismatch")
    if B == 0 or m == 0 or n == 0:
        out[:, :] = 0
        return
    cdef Py_ssize_t rs = _stride(J.strides[0], sizeof(floating))
    cdef Py_ssize_t cs = _stride(J.strides[1], sizeof(floating))
    cdef int nt = effective_threads(), rc
    with nogil:
        if transpose:
            rc = block_jtv(&J[0, 0], m, n, rs, cs, &X[0, 0], B, &out[0, 0], nt)
        else:
            rc = block_jv(&J[0, 0], m, n, rs, cs, &X[0, 0], B, &out[0, 0], nt)
    if rc:
        raise MemoryError()


# The vector forms run as a batch of one: block_jtv/block_jv send B == 1 to
# the vector kernels (gc_axpy_rows / gc_dot_rows), not to BLAS.

def jtv(J, g, out):
    """out[:] = J.T @ g for one dense J of any layout (no argument checks
    beyond shapes; use gradchain.vjp)."""
    _apply(J, g[None, :], out[None, :], True)


def jv(J, v, out):
    """out[:] = J @ v for one dense J of any layout."""
    _apply(J, v[None, :], out[None, :], False)


def jtv_block(J, G, out):
    """out[:, :] = G @ J for one dense J of any layout."""
    _apply(J, G, out, True)


def jv_block(J, V, out):
    """out[:, :] = V @ J.T for one dense J of any layout."""
    _apply(J, V, out, False)
