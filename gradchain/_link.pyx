"""The link model (see _link.pxd) and the kernels of the links that are
not dense matrices.

A diagonal link costs n multiplies a vector, a scaled identity n, a
diagonal plus rank one about 3n; none is ever formed as an n x n matrix
(csrc/gc_struct.c).  The map programme's elementwise and softmax layers
apply their Jacobians at the stored intermediates (csrc/gc_maps.c).  A
sparse link (CSR or CSC) costs its nnz a vector (csrc/gc_sparse.c).  A
matrix-free link calls back into Python, taking the GIL for the call only
(``OperatorCall``).  This module selects the float/double instance and
exports the kind enum to Python (operators.py).
"""
import threading

cimport numpy as cnp
import numpy as np
from libc.string cimport memcpy, memset
from libc.stdlib cimport free

from libc.stdint cimport int32_t, int64_t

from gradchain._sizes cimport gc_malloc_n, gc_size_mul
from gradchain._kernels cimport effective_threads, fp_enter, fp_exit, gc_fpstate
from cython cimport floating

cnp.import_array()

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

cdef extern from "gc_sparse.h" nogil:
    int gc_sp_apply(int dbl, int isize, int gather, Py_ssize_t nptr,
                    const void *ptr, const void *idx, const void *val,
                    Py_ssize_t nstored, Py_ssize_t B, const void *x,
                    Py_ssize_t nother, void *out, int nthreads,
                    const int64_t *part, int tiled)
    int gc_sp_dense(int dbl, int isize, Py_ssize_t nptr, const void *ptr,
                    const void *idx, const void *val, Py_ssize_t nstored,
                    Py_ssize_t nidx, void *out, Py_ssize_t rs, Py_ssize_t cs)
    void gc_sp_tiles(int dbl, int to_tiles, Py_ssize_t nrows, Py_ssize_t w,
                     const void *src, void *dst, int nthreads)
    int gc_sp_check(int isize, Py_ssize_t nptr, const void *ptr,
                    const void *idx, Py_ssize_t nidx, Py_ssize_t nbound,
                    Py_ssize_t *where, int64_t *part)

cdef extern from "gc_maps.h" nogil:
    void gc_ew_deriv_mul_s(int code, double param, Py_ssize_t n, const float *x,
                           const float *y, const float *g, float *out)
    void gc_ew_deriv_mul_d(int code, double param, Py_ssize_t n, const double *x,
                           const double *y, const double *g, double *out)
    void gc_softmax_apply_s(int log, int transpose, Py_ssize_t B, Py_ssize_t n,
                            const float *y, const float *g, float *out)
    void gc_softmax_apply_d(int log, int transpose, Py_ssize_t B, Py_ssize_t n,
                            const double *y, const double *g, double *out)


cdef inline void _struct_row(const Link *L, bint transpose, const floating *x,
                             floating *out) noexcept nogil:
    cdef const floating *d = <const floating *>L.d
    cdef const floating *u = <const floating *>L.u
    cdef const floating *v = <const floating *>L.v
    if L.kind == LINK_DIAG:
        if floating is float:
            gc_diag_s(L.n, d, L.ds, x, out)
        else:
            gc_diag_d(L.n, d, L.ds, x, out)
    elif L.kind == LINK_SCALED_IDENTITY or L.kind == LINK_IDENTITY:
        if floating is float:
            gc_scale_s(L.n, L.scale, x, out)
        else:
            gc_scale_d(L.n, L.scale, x, out)
    # (diag(d) + c u v^T)^T x = d x + c v (u . x);  J x = d x + c u (v . x)
    elif transpose:
        if floating is float:
            gc_diag_rank1_s(L.n, d, L.ds, L.scale, v, L.vs, u, L.us, x, out)
        else:
            gc_diag_rank1_d(L.n, d, L.ds, L.scale, v, L.vs, u, L.us, x, out)
    else:
        if floating is float:
            gc_diag_rank1_s(L.n, d, L.ds, L.scale, u, L.us, v, L.vs, x, out)
        else:
            gc_diag_rank1_d(L.n, d, L.ds, L.scale, u, L.us, v, L.vs, x, out)


cdef inline bint _lines(const Link *L, Py_ssize_t *nl,
                       Py_ssize_t *ni) noexcept nogil:
    """A sparse link's compressed lines (*nl: rows of a CSR, columns of a
    CSC) and its indices' bound (*ni); True for a CSR."""
    cdef bint csr = L.kind == LINK_CSR
    nl[0] = L.m if csr else L.n
    ni[0] = L.n if csr else L.m
    return csr


cdef int link_apply_sparse(const Link *L, bint transpose, const floating *x,
                           Py_ssize_t B, floating *out, int nt, bint tiled,
                           Py_ssize_t block) noexcept nogil:
    """The sparse kinds: J x of a CSR and J^T x of a CSC gather along
    lines, the other two scatter (or, with a transpose copy, gather over
    the copy: the same sums, in line order): over the link's partition for a block of
    fewer than LINK_TILES_MIN tiles (its rows' work split by chunks of
    lines), else in line order with the block's tiles split (block: the
    rows of the whole block these B rows belong to, so that a row's sums
    do not depend on how the block was cut).  -3 when the structure is
    out of bounds now (changed since it was bound), -1 when a scatter's
    workspace cannot be had."""
    cdef Py_ssize_t nl, ni
    cdef bint gather = _lines(L, &nl, &ni) != transpose
    cdef int rc
    if not gather and not link_scatters(L, transpose):
        # the transpose copy's lines are the indices: a gather, each sum in
        # the order of the original's lines (a one-chunk scatter's bits)
        rc = gc_sp_apply(floating is double, L.tisize, True, ni, L.tptr,
                         L.tidx, L.tdata, L.tnnz, B, x, nl, out, nt, NULL,
                         tiled)
    else:
        rc = gc_sp_apply(floating is double, L.isize, gather, nl, L.ptr,
                         L.idx, L.data, L.nnz, B, x, ni, out, nt,
                         link_block_part(L.part, block), tiled)
    return 0 if rc == 0 else -1 if rc == 2 else -3


# the exception of a matrix-free link's callback, per thread, from the
# nogil loop that met it to the caller that raises it (link_raise)
cdef object _pending = threading.local()


cdef class OperatorCall:
    """A matrix-free link: the user's ``matvec``/``rmatvec`` (and, for
    blocks, ``matmat``/``rmatmat`` where present), called on copies of the
    chain's rows and checked before their result is copied back.

    Parameters
    ----------
    op : object with shape, matvec and rmatvec
    index : int
        Its position in the chain (for messages).
    m, n : int
        Its shape.
    """

    def __init__(self, op, Py_ssize_t index, Py_ssize_t m, Py_ssize_t n):
        self.op = op
        self.index = index
        self.m = m
        self.n = n
        self._mv = op.matvec
        self._rmv = op.rmatvec
        self._mm = getattr(op, "matmat", None)
        self._rmm = getattr(op, "rmatmat", None)

    def __repr__(self):
        return f"OperatorCall({type(self.op).__name__}, {self.m} x {self.n})"

    cdef int apply(self, bint rmat, const char *x, Py_ssize_t B, char *out,
                   int typenum) except -1:
        """out (B rows) = rows of x through op^T (rmat) or op."""
        cdef Py_ssize_t nin = self.m if rmat else self.n
        cdef Py_ssize_t nout = self.n if rmat else self.m
        cdef cnp.npy_intp dims[2]
        cdef cnp.ndarray X, O
        cdef str name = "rmatvec" if rmat else "matvec"
        cdef object r
        if B == 1:
            # one vector: a 1-D copy in, and a result of the exact kind
            # copied straight out (the general check otherwise)
            dims[0] = nin
            X = cnp.PyArray_EMPTY(1, dims, typenum, 0)
            memcpy(cnp.PyArray_DATA(X), x, nin * cnp.PyArray_ITEMSIZE(X))
            r = (self._rmv if rmat else self._mv)(X)
            if (type(r) is np.ndarray and cnp.PyArray_TYPE(<cnp.ndarray>r) == typenum
                    and cnp.PyArray_NDIM(<cnp.ndarray>r) == 1
                    and cnp.PyArray_DIM(<cnp.ndarray>r, 0) == nout
                    and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>r)
                    and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>r)):
                memcpy(out, cnp.PyArray_DATA(<cnp.ndarray>r),
                       nout * cnp.PyArray_ITEMSIZE(X))
                return 0
            dims[0] = nout
            self._store(cnp.PyArray_SimpleNewFromData(1, dims, typenum, out),
                        r, (nout,), name)
            return 0
        dims[0], dims[1] = B, nin
        X = cnp.PyArray_EMPTY(2, dims, typenum, 0)
        memcpy(cnp.PyArray_DATA(X), x, B * nin * cnp.PyArray_ITEMSIZE(X))
        dims[1] = nout
        O = cnp.PyArray_SimpleNewFromData(2, dims, typenum, out)
        mm = self._rmm if rmat else self._mm
        if B > 1 and mm is not None:
            name = "rmatmat" if rmat else "matmat"
            self._store(O.T, mm(X.T), (nout, B), name)
        else:
            fn = self._rmv if rmat else self._mv
            for b in range(B):
                self._store(O[b], fn(X[b]), (nout,), name)
        return 0

    cdef _store(self, cnp.ndarray dst, object res, tuple want, str name):
        """dst[...] = res, once res is a real array of shape want (or the
        (n, 1) column matvec may give for (n,))."""
        r = np.asarray(res)
        if r.dtype.kind not in "fiub":
            raise ValueError(
                f"jacobians[{self.index}] ({type(self.op).__name__}).{name} "
                f"returned dtype {r.dtype}; a link's products must be real")
        if r.shape != want and not (len(want) == 1 and r.shape == (want[0], 1)):
            raise ValueError(
                f"jacobians[{self.index}] ({type(self.op).__name__}).{name} "
                f"returned shape {r.shape}, expected {want}")
        dst[...] = r.reshape(want)


cdef int _call_operator(const Link *L, bint transpose, const void *x,
                        Py_ssize_t B, void *out, int typenum) noexcept with gil:
    try:
        (<OperatorCall>L.obj).apply(transpose != (L.code == 1),
                                    <const char *>x, B, <char *>out, typenum)
        return 0
    except BaseException as exc:
        _pending.exc = exc
        return -2


cdef int link_raise(int rc, str msg) except -1:
    exc = getattr(_pending, "exc", None)
    if rc == -2 and exc is not None:
        _pending.exc = None
        raise exc
    if rc == -3:
        raise ValueError(
            "a sparse link's indptr or indices are out of bounds now: they "
            "were changed after the chain validated them (the kernels skipped "
            "what was out of range; the result is not computed)")
    raise MemoryError(msg)


cdef int link_sparse_check(Py_ssize_t nl, const void *ptr, const void *idx,
                           int isize, Py_ssize_t nidx, Py_ssize_t nbound,
                           Py_ssize_t *where, int64_t *part) noexcept nogil:
    return gc_sp_check(isize, nl, ptr, idx, nidx, nbound, where, part)


cdef int link_materialize(const Link *L, floating *out, int nt) noexcept nogil:
    cdef Py_ssize_t nl, ni, i, cnt
    cdef bint csr = _lines(L, &nl, &ni)
    cdef Py_ssize_t rs = L.n if csr else 1, cs = 1 if csr else L.n
    cdef floating *eye
    cdef int rc
    memset(out, 0, L.m * L.n * sizeof(floating))    # the caller's m x n block
    if L.kind == LINK_OPERATOR:
        # row i of J is (J^T e_i)^T
        if not gc_size_mul(L.m, L.m, &cnt):
            return -1
        eye = <floating *>gc_malloc_n(cnt, sizeof(floating))
        if eye == NULL:
            return -1
        memset(eye, 0, cnt * sizeof(floating))
        for i in range(L.m):
            eye[i * L.m + i] = 1
        rc = link_apply_rows(L, True, eye, L.m, out, nt)
        free(eye)
        return rc
    if gc_sp_dense(floating is double, L.isize, nl, L.ptr, L.idx, L.data,
                   L.nnz, ni, out, rs, cs):
        return -3
    return 0


cdef void link_tiles(bint to_tiles, Py_ssize_t nrows, Py_ssize_t w,
                     const floating *src, floating *dst, int nt) noexcept nogil:
    gc_sp_tiles(floating is double, to_tiles, nrows, w, src, dst, nt)


cdef int link_apply_rows(const Link *L, bint transpose, const floating *x,
                         Py_ssize_t B, floating *out, int nt) noexcept nogil:
    cdef Py_ssize_t b
    if L.kind == LINK_CSR or L.kind == LINK_CSC:
        return link_apply_sparse(L, transpose, x, B, out, nt, False, B)
    elif L.kind == LINK_OPERATOR:
        if B == 0:
            return 0
        return _call_operator(L, transpose, x, B, out,
                              cnp.NPY_FLOAT if floating is float else cnp.NPY_DOUBLE)
    elif L.kind == LINK_ELEMENTWISE:
        if floating is float:
            gc_ew_deriv_mul_s(L.code, L.scale, B * L.n, <const float *>L.d,
                              <const float *>L.u, x, out)
        else:
            gc_ew_deriv_mul_d(L.code, L.scale, B * L.n, <const double *>L.d,
                              <const double *>L.u, x, out)
    elif L.kind == LINK_SOFTMAX or L.kind == LINK_LOG_SOFTMAX:
        if floating is float:
            gc_softmax_apply_s(L.kind == LINK_LOG_SOFTMAX, transpose, B, L.n,
                               <const float *>L.u, x, out)
        else:
            gc_softmax_apply_d(L.kind == LINK_LOG_SOFTMAX, transpose, B, L.n,
                               <const double *>L.u, x, out)
    else:
        for b in range(B):
            _struct_row(L, transpose, x + b * L.n, out + b * L.n)
    return 0


# ---------------------------------------------------------------------------
# The sparse kernels' typed-memoryview entry point (tests and other Cython
# code; a chain binds the pointers once instead)
# ---------------------------------------------------------------------------

ctypedef fused sp_index:
    int32_t
    int64_t


def sparse_rows(const floating[::1] data, const sp_index[::1] indices,
                const sp_index[::1] indptr, Py_ssize_t nbound,
                const floating[:, ::1] x, floating[:, ::1] out, bint gather,
                bint tiled=False):
    """One compressed structure (``len(indptr) - 1`` lines, indices below
    ``nbound``) applied to the B rows of x.

    gather: out[b, r] = sum_p data[p] x[b, indices[p]] over line r's entries
    (x rows nbound wide, out rows one per line): J x of a CSR, J^T x of a CSC.
    Otherwise scatter: out[b, indices[p]] = sum over lines r of data[p]
    x[b, r] (x rows one per line, out rows nbound wide): J^T x of a CSR, J x
    of a CSC.  tiled: x and out hold their rows in tiles (gc_sparse.h: B a
    multiple of 8, the tile's values of an index side by side), the layout
    of a chain's run of sparse links.  The structure is checked first
    (ValueError); no other checks beyond shapes (use gradchain.vjp/jvp).
    """
    cdef Py_ssize_t nl = indptr.shape[0] - 1, where = -1, B = x.shape[0]
    cdef int64_t part[LINK_PART_LEN]
    cdef int rc
    if nl < 0:
        raise ValueError("indptr is empty")
    if (out.shape[0] != B or x.shape[1] != (nbound if gather else nl)
            or out.shape[1] != (nl if gather else nbound)):
        raise ValueError("shape mismatch")
    rc = link_sparse_check(nl, &indptr[0], &indices[0] if indices.shape[0] else NULL,
                           sizeof(sp_index), min(indices.shape[0], data.shape[0]),
                           nbound, &where, part)
    if rc:
        raise ValueError(f"corrupt structure (gc_sp_check code {rc} at {where})")
    if B == 0 or out.shape[1] == 0:
        return
    cdef int nt = effective_threads()
    cdef gc_fpstate fps
    with nogil:
        fp_enter(&fps, nt)
        rc = gc_sp_apply(floating is double, sizeof(sp_index), gather, nl,
                         &indptr[0], &indices[0] if indices.shape[0] else NULL,
                         &data[0] if data.shape[0] else NULL, indptr[nl], B,
                         &x[0, 0] if x.shape[1] else NULL, nbound,
                         &out[0, 0], nt, link_block_part(part, B), tiled)
        fp_exit(&fps)
    if rc == 3:
        raise ValueError(f"tiled needs rows in multiples of 8, got {B}")
    if rc == 2:
        raise MemoryError("no memory for the scatter's workspace")
    if rc:
        raise ValueError("structure out of bounds")


def sparse_partition(const sp_index[::1] indices, const sp_index[::1] indptr,
                     Py_ssize_t nbound):
    """The scatter's partition of a compressed structure (checked first:
    ValueError), as csrc/gc_sparse.c computes it for a bound link: a dict
    of ``chunks`` (P), ``bounds`` (P + 1 line bounds), ``spans`` (P x 2:
    each chunk's index span [lo, hi)), ``exclusive`` (P x 2: the part of
    its span no other span meets, [ea, eb), empty as ea == eb) and ``gaps``
    (the intervals of [0, nbound) outside every exclusive interval).  For
    tests and for reading a scatter's summation order: chunk by chunk, each
    chunk in line order, then the chunks' partial sums in chunk order."""
    cdef Py_ssize_t nl = indptr.shape[0] - 1, where = -1, P, c
    cdef int64_t part[LINK_PART_LEN]
    cdef int rc
    if nl < 0:
        raise ValueError("indptr is empty")
    rc = link_sparse_check(nl, &indptr[0], &indices[0] if indices.shape[0] else NULL,
                           sizeof(sp_index), indices.shape[0], nbound, &where, part)
    if rc:
        raise ValueError(f"corrupt structure (gc_sp_check code {rc} at {where})")
    P = part[0]
    lay = _part_layout()
    return {
        "chunks": int(P),
        "bounds": [int(part[lay[0] + c]) for c in range(P + 1)],
        "spans": [(int(part[lay[1] + c]), int(part[lay[2] + c])) for c in range(P)],
        "exclusive": [(int(part[lay[3] + c]), int(part[lay[4] + c])) for c in range(P)],
        "gaps": [(int(part[lay[6] + c]), int(part[lay[7] + c]))
                 for c in range(part[lay[5]])],
        "band": int(part[LINK_PART_BAND]),
    }


cdef extern from "gc_sparse.h":
    enum:
        GC_SP_P_BND
        GC_SP_P_LO
        GC_SP_P_HI
        GC_SP_P_EA
        GC_SP_P_EB
        GC_SP_P_NGAP
        GC_SP_P_GLO
        GC_SP_P_GHI


cdef tuple _part_layout():
    return (GC_SP_P_BND, GC_SP_P_LO, GC_SP_P_HI, GC_SP_P_EA, GC_SP_P_EB,
            GC_SP_P_NGAP, GC_SP_P_GLO, GC_SP_P_GHI)


cdef cnp.ndarray _view(const char *p, Py_ssize_t n, Py_ssize_t stride,
                       int typenum, int itemsize):
    """A read-only 1-D view of n elements at p (stride in elements)."""
    cdef cnp.npy_intp dims[1]
    cdef cnp.npy_intp strides[1]
    dims[0] = n
    strides[0] = stride * itemsize if n > 1 else itemsize
    a = cnp.PyArray_New(np.ndarray, 1, dims, typenum, strides,
                        <void *>p if n > 0 else NULL, itemsize, 0, None)
    a.flags.writeable = False
    return a


cdef object link_sparse_matrix(const Link *L, int typenum):
    import scipy.sparse as sp
    cdef int isz = 8 if typenum == cnp.NPY_DOUBLE else 4
    cdef int itype = cnp.NPY_INT32 if L.isize == 4 else cnp.NPY_INT64
    cdef Py_ssize_t nl, where = -1
    if L.kind == LINK_CSR or L.kind == LINK_CSC:
        nl = L.m if L.kind == LINK_CSR else L.n
        # SciPy's products trust a structure: check it again (O(nnz), next
        # to the product's cost) in case it was edited in place since binding
        if link_sparse_check(nl, L.ptr, L.idx, L.isize, L.nnz,
                             L.n if L.kind == LINK_CSR else L.m, &where, NULL):
            link_raise(-3, "")
        arrays = (_view(L.data, L.nnz, 1, typenum, isz),
                  _view(L.idx, L.nnz, 1, itype, L.isize),
                  _view(L.ptr, nl + 1, 1, itype, L.isize))
        if L.kind == LINK_CSR:
            return sp.csr_array(arrays, shape=(L.m, L.n))
        return sp.csc_array(arrays, shape=(L.m, L.n))
    if L.kind == LINK_DIAG:
        return sp.diags_array(_view(L.d, L.n, L.ds, typenum, isz), format="csr")
    if L.kind == LINK_IDENTITY:
        return None
    if L.kind == LINK_SCALED_IDENTITY:
        return float(L.scale)
    raise TypeError(f"a link of kind {L.kind} has no sparse form")
