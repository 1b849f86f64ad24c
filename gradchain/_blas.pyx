"""The one door to BLAS.

Every matrix-matrix product gradchain makes -- a block of cotangents
through a dense link, two factors of an accumulated Jacobian -- is
``matmul`` here, which calls ``?gemm`` from SciPy's ``cython_blas`` (as
scikit-learn does: no BLAS is linked at build time).  It takes any
layout: C- and F-order operands are passed in place (an F-order matrix is
a transposed C-order one), a strided right operand is packed a panel of
rows or columns at a time into a small buffer that stays in L2 (the inner
loop of the packing runs along the smaller stride), a strided left operand
is packed once; sizes that do not fit a BLAS int run row by row on the
vector kernels of ``_kernels``.  ``?gemm`` is fetched from SciPy on the
first product (see ``_load_blas``), not when gradchain is imported.

The ``def`` functions at the bottom are typed-memoryview entry points for
the tests and benchmarks (the vector forms are ``_kernels.jtv``/``jv``).
"""
from libc.stdlib cimport free
from libc.string cimport memset
from libc.limits cimport INT_MAX
from cython cimport floating

from cpython.pycapsule cimport PyCapsule_GetName, PyCapsule_GetPointer

from gradchain._kernels cimport (link_jtv, link_jv, effective_threads,
                                 pack_rows, elem_stride, fp_enter, fp_exit,
                                 gc_fpstate)
from gradchain._sizes cimport gc_size_mul, gc_malloc_n

# Panel size (elements) for a strided operand: 32 Ki elements is 256 KiB
# of float64, which stays resident in L2.
cdef enum:
    PANEL_ELEMS = 32768


cdef inline Py_ssize_t _abs(Py_ssize_t a) noexcept nogil:
    return -a if a < 0 else a


# SciPy's ?gemm, fetched from cython_blas's C-API capsules on the first
# matrix-matrix product rather than cimported: a cimport imports
# scipy.linalg.cython_blas, and so all of scipy.linalg, when this module is
# imported -- about 0.2 s, most of `import gradchain` (issue 13).  The
# signatures are SciPy's (cython_blas.pxd).
ctypedef void (*sgemm_fn)(char *ta, char *tb, int *m, int *n, int *k,
                          float *alpha, float *a, int *lda, float *b, int *ldb,
                          float *beta, float *c, int *ldc) noexcept nogil
ctypedef void (*dgemm_fn)(char *ta, char *tb, int *m, int *n, int *k,
                          double *alpha, double *a, int *lda, double *b,
                          int *ldb, double *beta, double *c,
                          int *ldc) noexcept nogil
cdef sgemm_fn _sgemm = NULL
cdef dgemm_fn _dgemm = NULL
cdef bint _blas_tried = False


cdef void _load_blas() noexcept with gil:
    # once per process; a SciPy without cython_blas (a broken install)
    # leaves the pointers NULL, and matmul then takes its row-by-row path
    # on the vector kernels, as for sizes beyond a BLAS int
    global _sgemm, _dgemm, _blas_tried
    if _blas_tried:
        return
    _blas_tried = True
    try:
        from scipy.linalg import cython_blas
        caps = cython_blas.__pyx_capi__
        s, d = caps["sgemm"], caps["dgemm"]
        _sgemm = <sgemm_fn>PyCapsule_GetPointer(s, PyCapsule_GetName(s))
        _dgemm = <dgemm_fn>PyCapsule_GetPointer(d, PyCapsule_GetName(d))
    except Exception as exc:
        _sgemm, _dgemm = NULL, NULL
        try:
            import warnings
            warnings.warn(f"gradchain: no BLAS from scipy.linalg.cython_blas "
                          f"({exc!r}); matrix products run on the vector "
                          f"kernels", RuntimeWarning, stacklevel=2)
        except Exception:
            pass


cdef inline bint _have_blas() noexcept nogil:
    if not _blas_tried:
        _load_blas()
    return _sgemm != NULL and _dgemm != NULL


def _blas_loaded():
    """For the tests: whether ?gemm has been fetched from SciPy yet."""
    return _sgemm != NULL and _dgemm != NULL


cdef inline void _gemm(char ta, char tb, Py_ssize_t m, Py_ssize_t n,
                       Py_ssize_t k, const floating *A, Py_ssize_t lda,
                       const floating *B, Py_ssize_t ldb, floating beta,
                       floating *C, Py_ssize_t ldc) noexcept nogil:
    # column-major C (m, n) = op(A) (m, k) op(B) (k, n) + beta C; the caller
    # guarantees every size fits a BLAS int, m, n, k > 0 and _have_blas()
    cdef int im = <int>m, jn = <int>n, kk = <int>k
    cdef int la = <int>lda, lb = <int>ldb, lc = <int>ldc
    cdef floating one = 1
    if floating is float:
        _sgemm(&ta, &tb, &im, &jn, &kk, &one, <float *>A, &la, <float *>B,
               &lb, &beta, C, &lc)
    else:
        _dgemm(&ta, &tb, &im, &jn, &kk, &one, <double *>A, &la, <double *>B,
               &lb, &beta, C, &lc)


cdef inline bint _c_order(Py_ssize_t rs, Py_ssize_t cs, Py_ssize_t q) noexcept nogil:
    return cs == 1 and rs >= max(q, 1) and rs <= INT_MAX


cdef inline bint _f_order(Py_ssize_t rs, Py_ssize_t cs, Py_ssize_t p) noexcept nogil:
    return rs == 1 and cs >= max(p, 1) and cs <= INT_MAX


cdef int matmul(const floating *A, Py_ssize_t ars, Py_ssize_t acs,
                const floating *B, Py_ssize_t brs, Py_ssize_t bcs,
                Py_ssize_t p, Py_ssize_t q, Py_ssize_t r, floating *Z,
                int nt) noexcept nogil:
    # Column-major view: Z^T (r x p) = B^T (r x q) A^T (q x p).  A C-order
    # operand is its transpose in column-major storage ('N'), an F-order
    # one itself ('T').
    cdef floating *packA = NULL
    cdef floating *P = NULL
    cdef Py_ssize_t i, j, lda, ldb, w, s0, s1
    cdef char ta, tb
    cdef int rc = 0
    cdef bint bc, bf, rows
    if p == 0 or r == 0:
        return 0
    if q == 0:
        memset(Z, 0, p * r * sizeof(floating))
        return 0
    # fits: BLAS can take the product (its int sizes, and a BLAS at all)
    cdef bint fits = (p <= INT_MAX and q <= INT_MAX and r <= INT_MAX
                      and _have_blas())
    bc = _c_order(brs, bcs, r)
    bf = _f_order(brs, bcs, q)
    # pack A when BLAS cannot take its layout (p q copies, against the
    # p q r of the product), or when the row loop needs contiguous rows
    if (not (_c_order(ars, acs, q) or _f_order(ars, acs, p))
            or (not fits and acs != 1)):
        packA = <floating *>gc_malloc_n(p * q, sizeof(floating)) \
            if gc_size_mul(p, q, &i) else NULL
        if packA == NULL:
            return -1
        pack_rows(0, p, q, A, ars, acs, packA)
        A = packA
        ars, acs = q, 1
    if not fits:
        # Z[i] = B^T A[i], rows of A as the vectors
        for i in range(p):
            if link_jtv(B, q, r, brs, bcs, A + i * ars, Z + i * r, nt):
                rc = -1
                break
        free(packA)
        return rc
    if _c_order(ars, acs, q):
        ta, lda = c'N', ars
    else:
        ta, lda = c'T', acs
    if bc or bf:
        if bc:
            tb, ldb = c'N', brs
        else:
            tb, ldb = c'T', bcs
        _gemm(tb, ta, r, p, q, B, ldb, A, lda, <floating>0, Z, r)
        free(packA)
        return 0
    # a strided B, a panel at a time, the packing's inner loop along the
    # smaller stride: panels of rows (Z += A[:, s0:s1] B[s0:s1, :]) or of
    # columns (Z[:, s0:s1] = A B[:, s0:s1])
    rows = _abs(bcs) <= _abs(brs)
    w = max(1, min(q if rows else r, PANEL_ELEMS // (r if rows else q)))
    P = <floating *>gc_malloc_n(w * (r if rows else q), sizeof(floating))
    if P == NULL:
        free(packA)
        return -1
    s0 = 0
    while s0 < (q if rows else r):
        s1 = min(q if rows else r, s0 + w)
        if rows:
            pack_rows(s0, s1, r, B, brs, bcs, P)
            _gemm(c'N', ta, r, p, s1 - s0, P, r, A + s0 * acs, lda,
                  <floating>(0 if s0 == 0 else 1), Z, r)
        else:
            pack_rows(s0, s1, q, B, bcs, brs, P)     # rows of B^T
            _gemm(c'T', ta, s1 - s0, p, q, P, q, A, lda, <floating>0,
                  Z + s0, r)
        s0 = s1
    free(P)
    free(packA)
    return 0


cdef int block_jtv(const floating *J, Py_ssize_t m, Py_ssize_t n,
                   Py_ssize_t rs, Py_ssize_t cs, const floating *G,
                   Py_ssize_t B, floating *Out, int nthreads) noexcept nogil:
    if B == 1:
        return link_jtv(J, m, n, rs, cs, G, Out, nthreads)
    return matmul(G, m, 1, J, rs, cs, B, m, n, Out, nthreads)


cdef int block_jv(const floating *J, Py_ssize_t m, Py_ssize_t n,
                  Py_ssize_t rs, Py_ssize_t cs, const floating *V,
                  Py_ssize_t B, floating *Out, int nthreads) noexcept nogil:
    if B == 1:
        return link_jv(J, m, n, rs, cs, V, Out, nthreads)
    return matmul(V, n, 1, J, cs, rs, B, n, m, Out, nthreads)    # V J^T


# --------------------------------------------------------------------------
# Typed-memoryview entry points (tests and benchmarks)
# --------------------------------------------------------------------------

def _blocks(const floating[:, :] J, const floating[:, ::1] X,
           floating[:, ::1] out, bint transpose):
    # out = X @ J (transpose: rows of X are cotangents) or X @ J^T.
    cdef Py_ssize_t m = J.shape[0], n = J.shape[1], B = X.shape[0]
    cdef Py_ssize_t nin = m if transpose else n, nout = n if transpose else m
    if X.shape[1] != nin or out.shape[0] != B or out.shape[1] != nout:
        raise ValueError("shape mismatch")
    if B == 0 or m == 0 or n == 0:
        out[:, :] = 0
        return
    cdef Py_ssize_t rs = elem_stride(J.strides[0], sizeof(floating))
    cdef Py_ssize_t cs = elem_stride(J.strides[1], sizeof(floating))
    cdef int nt = effective_threads(), rc
    cdef gc_fpstate fps
    with nogil:
        fp_enter(&fps, nt)
        if transpose:
            rc = block_jtv(&J[0, 0], m, n, rs, cs, &X[0, 0], B, &out[0, 0], nt)
        else:
            rc = block_jv(&J[0, 0], m, n, rs, cs, &X[0, 0], B, &out[0, 0], nt)
        fp_exit(&fps)
    if rc:
        raise MemoryError()


def jtv_block(J, G, out):
    """out[:, :] = G @ J for one dense J of any layout."""
    _blocks(J, G, out, True)


def jv_block(J, V, out):
    """out[:, :] = V @ J.T for one dense J of any layout."""
    _blocks(J, V, out, False)
