"""Jacobian accumulation: executing a bracketing of links.

A product F_0 F_1 ... F_{m-1} of links (_link.pxd), in the order a
Strategy of _bracket chose (the programme's table, or a plain order run
iteratively for any length), is evaluated here.  Diagonal-like links are
never materialised: they scale rows or columns; a diagonal plus rank one
is applied as a scaling and a rank-one update; dense products go to BLAS
through the one door (_blas.matmul), whatever the operands' layout.
``run_samples`` evaluates one product per sample for chains with
per-sample links.
"""
from libc.stdlib cimport free
from libc.string cimport memset, memcpy
from cython cimport floating
from cython.parallel cimport prange, threadid

from gradchain._link cimport (Link, LINK_DENSE, LINK_DIAG, link_diaglike,
                              LINK_SCALED_IDENTITY, LINK_DIAG_RANK1,
                              LINK_IDENTITY, link_sample, link_by_rows,
                              link_apply_rows, link_materialize)
from gradchain._bracket cimport ORDER_TABLE, ORDER_LEFT, ORDER_RIGHT
from gradchain._link cimport link_sparse_matrix
cimport numpy as cnp
import numpy as np
from gradchain._blas cimport matmul
from gradchain._kernels cimport link_jtv, link_jv, pack_rows
from gradchain._sizes cimport gc_size_mul, gc_malloc_n

cdef extern from "gc_dense.h":
    Py_ssize_t GC_PARALLEL_MIN_ELEMS


cdef inline void *_alloc2(Py_ssize_t a, Py_ssize_t b, size_t size) noexcept nogil:
    """malloc of a * b items (at least one), NULL on overflow or when out
    of memory: the executor's one allocation."""
    cdef Py_ssize_t n
    if not gc_size_mul(a, b, &n):
        return NULL
    return gc_malloc_n(n, size)


# ---------------------------------------------------------------------------
# The executor
# ---------------------------------------------------------------------------

cdef struct Val:
    int kind            # LINK_DENSE, LINK_DIAG, LINK_SCALED_IDENTITY, LINK_IDENTITY, LINK_DIAG_RANK1
    bint owned          # buf holds a C-contiguous dense (p x q) or a diagonal
    bint ext            # buf is the caller's C-contiguous output (not freed)
    Py_ssize_t p, q
    void *buf
    const Link *leaf


cdef inline floating _dget(const Val *v, Py_ssize_t i,
                           const floating *tag) noexcept nogil:
    """Diagonal element i of a diagonal-like value."""
    if v.kind == LINK_SCALED_IDENTITY:
        return <floating>v.leaf.scale
    if v.owned:
        return (<floating *>v.buf)[i]
    return (<const floating *>v.leaf.d)[i * v.leaf.ds]


cdef inline void _dense_of(const Val *v, const floating **ptr, Py_ssize_t *rs,
                           Py_ssize_t *cs) noexcept nogil:
    if v.owned or v.ext:
        ptr[0] = <const floating *>v.buf
        rs[0] = v.q
        cs[0] = 1
    else:
        ptr[0] = <const floating *>v.leaf.data
        rs[0] = v.leaf.rs
        cs[0] = v.leaf.cs


cdef void _release(Val *v) noexcept nogil:
    if v.owned:
        free(v.buf)
        v.buf = NULL
        v.owned = False


cdef int _materialize(const Val *v, floating *out, int nt) noexcept nogil:
    """out (p x q, C-contiguous) = the value as a dense matrix (0, or the
    code of a failed by-rows link: -1 out of memory, -2 a callback)."""
    cdef Py_ssize_t i, j, p = v.p, q = v.q
    cdef const floating *a
    cdef Py_ssize_t rs, cs
    cdef const Link *f = v.leaf
    if v.kind == LINK_DENSE:
        _dense_of(v, &a, &rs, &cs)
        pack_rows(0, p, q, a, rs, cs, out)
        return 0
    if link_by_rows(v.kind):
        return link_materialize(v.leaf, out, nt)
    memset(out, 0, p * q * sizeof(floating))
    if v.kind == LINK_IDENTITY:
        for i in range(p):
            out[i * q + i] = 1
    elif v.kind == LINK_DIAG or v.kind == LINK_SCALED_IDENTITY:
        for i in range(p):
            out[i * q + i] = _dget(v, i, out)
    else:   # LINK_DIAG_RANK1 leaf: diag(d) + c u v^T
        for i in range(p):
            for j in range(q):
                out[i * q + j] = (<floating>f.scale
                                  * (<const floating *>f.u)[i * f.us]
                                  * (<const floating *>f.v)[j * f.vs])
            out[i * q + i] += (<const floating *>f.d)[i * f.ds]
    return 0


cdef int _to_dense(Val *v, const floating *tag, int nt=1) noexcept nogil:
    """Replace a structured value by an owned dense one."""
    cdef floating *buf
    cdef int rc
    if v.kind == LINK_DENSE:
        return 0
    buf = <floating *>_alloc2(v.p, v.q, sizeof(floating))
    if buf == NULL:
        return -1
    rc = _materialize(v, <floating *>buf, nt)
    if rc:
        free(buf)
        return rc
    _release(v)
    v.kind = LINK_DENSE
    v.owned = True
    v.ext = False
    v.buf = buf
    return 0


cdef int _combine_rows(Val *L, Val *R, Val *out, floating *dest,
                       int nt) noexcept nogil:
    """out = L R (dense, into dest when not NULL) where L or R is a sparse
    or matrix-free link, applied by rows (link_apply_rows).  R by rows: row
    i of L R is (R^T L[i, :]^T)^T, so L's rows (dense, C-contiguous) go
    through R^T.  L by rows: the columns of R go through L (R transposed
    into rows, the result transposed back).  When both are, the smaller is
    made dense.  Consumes L and R; 0 or a link's failure code."""
    cdef const floating *tag = dest
    cdef Py_ssize_t p = L.p, q = L.q, r = R.q, i, j, rs, cs
    cdef const floating *a
    cdef floating *t = NULL
    cdef floating *u = NULL
    cdef floating *z
    cdef int rc = 0
    cdef bint rows_of_r = link_by_rows(R.kind) and (
        not link_by_rows(L.kind) or <double>p * q <= <double>q * r)
    out.p, out.q, out.leaf, out.kind = p, r, NULL, LINK_DENSE
    if dest != NULL:
        z = dest
        out.ext, out.owned = True, False
    else:
        z = <floating *>_alloc2(p, r, sizeof(floating))
        if z == NULL:
            return -1
        out.ext, out.owned = False, True
    out.buf = z
    if rows_of_r:
        rc = _to_dense(L, tag, nt)
        if rc == 0:
            _dense_of(L, &a, &rs, &cs)
            if cs != 1 or rs != q:
                # a strided dense leaf: its rows, contiguous
                t = <floating *>_alloc2(p, q, sizeof(floating))
                if t == NULL:
                    rc = -1
                else:
                    pack_rows(0, p, q, a, rs, cs, t)
                    a = t
            if rc == 0:
                rc = link_apply_rows(R.leaf, True, a, p, z, nt)
    else:
        rc = _to_dense(R, tag, nt)
        if rc == 0:
            _dense_of(R, &a, &rs, &cs)
            t = <floating *>_alloc2(r, q, sizeof(floating))
            u = <floating *>_alloc2(r, p, sizeof(floating))
            if t == NULL or u == NULL:
                rc = -1
            else:
                pack_rows(0, r, q, a, cs, rs, t)      # R^T, by rows
                rc = link_apply_rows(L.leaf, False, <const floating *>t, r, u, nt)
                if rc == 0:
                    for i in range(p):
                        for j in range(r):
                            z[i * r + j] = u[j * p + i]
    free(t)
    free(u)
    _release(L)
    _release(R)
    if rc and out.owned:
        free(z)
        out.owned = False
        out.buf = NULL
    return rc


cdef int _combine(Val *L, Val *R, Val *out, floating *dest,
                  int nt) noexcept nogil:
    """out = L R; consumes (releases) L and R.  A dense result goes to dest
    (C-contiguous p x r) when dest is not NULL."""
    cdef const floating *tag = dest
    cdef Py_ssize_t p = L.p, q = L.q, r = R.q, i, j
    cdef floating *z
    cdef floating *tmp
    cdef floating *w
    cdef const floating *a
    cdef Py_ssize_t rs, cs
    cdef const Link *f
    cdef floating c
    out.p = p
    out.q = r
    out.leaf = NULL
    out.ext = False
    if L.kind == LINK_IDENTITY:
        out[0] = R[0]
        out.p, out.q = p, r
        return 0
    if R.kind == LINK_IDENTITY:
        out[0] = L[0]
        return 0
    if link_diaglike(L.kind) and link_diaglike(R.kind):
        z = <floating *>_alloc2(q, 1, sizeof(floating))
        if z == NULL:
            return -1
        for i in range(q):
            z[i] = _dget(L, i, tag) * _dget(R, i, tag)
        _release(L)
        _release(R)
        out.kind = LINK_DIAG
        out.owned = True
        out.buf = z
        return 0
    if link_by_rows(L.kind) or link_by_rows(R.kind):
        return _combine_rows(L, R, out, dest, nt)
    if L.kind == LINK_DIAG_RANK1 and R.kind != LINK_DENSE:
        if _to_dense(L, tag):
            return -1
    if R.kind == LINK_DIAG_RANK1 and L.kind != LINK_DENSE:
        if _to_dense(R, tag):
            return -1
    if dest != NULL:
        z = dest
        out.ext = True
        out.owned = False
    else:
        z = <floating *>_alloc2(p, r, sizeof(floating))
        if z == NULL:
            return -1
        out.owned = True
    out.kind = LINK_DENSE
    out.buf = z
    if link_diaglike(L.kind):                       # row scaling of R
        _dense_of(R, &a, &rs, &cs)
        for i in range(p):
            c = _dget(L, i, tag)
            for j in range(r):
                z[i * r + j] = c * a[i * rs + j * cs]
    elif link_diaglike(R.kind):                     # column scaling of L
        _dense_of(L, &a, &rs, &cs)
        for i in range(p):
            for j in range(r):
                z[i * r + j] = a[i * rs + j * cs] * _dget(R, j, tag)
    elif L.kind == LINK_DIAG_RANK1:                      # (diag(d) + c u v^T) R
        f = L.leaf
        _dense_of(R, &a, &rs, &cs)
        tmp = <floating *>_alloc2(q + r, 1, sizeof(floating))
        if tmp == NULL:
            return -1
        w = tmp + q
        for i in range(q):
            tmp[i] = (<const floating *>f.v)[i * f.vs]
        if link_jtv(a, q, r, rs, cs, tmp, w, nt):      # w = R^T v
            free(tmp)
            return -1
        c = <floating>f.scale
        for i in range(p):
            for j in range(r):
                z[i * r + j] = ((<const floating *>f.d)[i * f.ds] * a[i * rs + j * cs]
                                + c * (<const floating *>f.u)[i * f.us] * w[j])
        free(tmp)
    elif R.kind == LINK_DIAG_RANK1:                      # L (diag(d) + c u v^T)
        f = R.leaf
        _dense_of(L, &a, &rs, &cs)
        tmp = <floating *>_alloc2(q + p, 1, sizeof(floating))
        if tmp == NULL:
            return -1
        w = tmp + q
        for i in range(q):
            tmp[i] = (<const floating *>f.u)[i * f.us]
        if link_jv(a, p, q, rs, cs, tmp, w, nt):       # w = L u
            free(tmp)
            return -1
        c = <floating>f.scale
        for i in range(p):
            for j in range(r):
                z[i * r + j] = (a[i * rs + j * cs] * (<const floating *>f.d)[j * f.ds]
                                + c * w[i] * (<const floating *>f.v)[j * f.vs])
        free(tmp)
    else:
        _dense_of(L, &a, &rs, &cs)
        _dense_of(R, <const floating **>&tmp, &i, &j)
        if matmul(a, rs, cs, <const floating *>tmp, i, j, p, q, r, z, nt):
            return -1
    _release(L)
    _release(R)
    return 0


cdef int _eval(const Link *f, Py_ssize_t m, const int *split, Py_ssize_t i,
               Py_ssize_t j, Val *out, floating *dest, int nt) noexcept nogil:
    """Evaluate F_i .. F_j; a dense root product is written into dest (the
    caller's output) when dest is not NULL."""
    cdef Val L, R
    cdef Py_ssize_t s
    cdef floating *none = NULL
    cdef int rc
    if i == j:
        out.kind = f[i].kind
        out.owned = False
        out.ext = False
        out.p = f[i].m
        out.q = f[i].n
        out.buf = NULL
        out.leaf = &f[i]
        return 0
    s = split[i * m + j]
    rc = _eval(f, m, split, i, s, &L, none, nt)
    if rc:
        return rc
    rc = _eval(f, m, split, s + 1, j, &R, none, nt)
    if rc:
        _release(&L)
        return rc
    rc = _combine(&L, &R, out, dest, nt)
    if rc:
        _release(&L)
        _release(&R)
    return rc


cdef inline void _leaf(const Link *f, Val *out) noexcept nogil:
    out.kind = f.kind
    out.owned = False
    out.ext = False
    out.p = f.m
    out.q = f.n
    out.buf = NULL
    out.leaf = f


cdef int _eval_plain(const Link *f, Py_ssize_t m, bint left, Val *out,
                     floating *dest, int nt) noexcept nogil:
    """Evaluate F_0 .. F_{m-1} in a plain order, iteratively (no table, no
    recursion: chains of any length): ((F_0 F_1) F_2) ... (left) or
    F_0 (F_1 (... F_{m-1})) (right); the last product goes to dest."""
    cdef Val acc, nxt, leaf
    cdef Py_ssize_t i
    cdef floating *none = NULL
    cdef int rc
    if left:
        _leaf(&f[0], &acc)
        for i in range(1, m):
            _leaf(&f[i], &leaf)
            rc = _combine(&acc, &leaf, &nxt, dest if i == m - 1 else none, nt)
            if rc:
                _release(&acc)
                return rc
            acc = nxt
    else:
        _leaf(&f[m - 1], &acc)
        i = m - 2
        while i >= 0:
            _leaf(&f[i], &leaf)
            rc = _combine(&leaf, &acc, &nxt, dest if i == 0 else none, nt)
            if rc:
                _release(&acc)
                return rc
            acc = nxt
            i -= 1
    out[0] = acc
    return 0


cdef int run_product(const Link *f, Py_ssize_t m, const int *split, int order,
                     floating *out, int nt) noexcept nogil:
    cdef Val v
    cdef int rc = 0
    if m == 0:
        return 0
    if order == ORDER_TABLE:
        rc = _eval(f, m, split, 0, m - 1, &v, out, nt)
    else:
        rc = _eval_plain(f, m, order == ORDER_LEFT, &v, out, nt)
    if rc:
        return rc
    if v.ext:
        pass                                    # already in out
    elif v.kind == LINK_DENSE and v.owned:
        memcpy(out, v.buf, v.p * v.q * sizeof(floating))
    else:
        rc = _materialize(&v, out, nt)
    _release(&v)
    return rc


cdef int run_samples(const Link *f, Py_ssize_t m, const int *split, int order,
                     Py_ssize_t B, floating *out, Py_ssize_t ostride,
                     bint sample_threads, int nt) noexcept nogil:
    cdef Link *fs
    cdef Link *F
    cdef Py_ssize_t b, j, elems = 0, total
    cdef int err = 0
    if B == 0 or m == 0:
        return 0
    if not sample_threads:
        # one sample at a time, each product threaded
        fs = <Link *>gc_malloc_n(m, sizeof(Link))
        if fs == NULL:
            return -1
        for b in range(B):
            for j in range(m):
                fs[j] = f[j]
                fs[j].data = link_sample(&f[j], b, sizeof(floating))
            err = run_product(fs, m, split, order, out + b * ostride, nt)
            if err:
                break
        free(fs)
        return err
    for j in range(m):
        elems += f[j].m * f[j].n
    if gc_size_mul(B, elems, &total) and total < GC_PARALLEL_MIN_ELEMS:
        nt = 1
    nt = <int>max(1, min(nt, B))
    fs = <Link *>_alloc2(nt, m, sizeof(Link))
    if fs == NULL:
        return -1
    for b in prange(B, num_threads=nt, schedule="dynamic", chunksize=8):
        F = fs + threadid() * m
        for j in range(m):
            F[j] = f[j]
            F[j].data = link_sample(&f[j], b, sizeof(floating))
        err += run_product(F, m, split, order, out + b * ostride, 1) != 0
    free(fs)
    return -1 if err else 0


# ---------------------------------------------------------------------------
# Sparse products (the sparse jacobian)
# ---------------------------------------------------------------------------

cdef object _sp_mul(object a, object b):
    """The product of two factors of link_sparse_matrix's forms."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, float) or isinstance(b, float):
        return a * b                   # c I: a scaling (or c c')
    return a @ b


cdef object run_sparse_product(const Link *f, Py_ssize_t m, const int *split,
                               int order, int typenum):
    import scipy.sparse as sp
    cdef Py_ssize_t i, j, s
    dtype = np.float64 if typenum == cnp.NPY_DOUBLE else np.float32
    ops = [link_sparse_matrix(&f[i], typenum) for i in range(m)]
    if order == ORDER_LEFT:
        acc = ops[0]
        for i in range(1, m):
            acc = _sp_mul(acc, ops[i])
    elif order == ORDER_RIGHT:
        acc = ops[m - 1]
        for i in range(m - 2, -1, -1):
            acc = _sp_mul(ops[i], acc)
    else:
        # the table's tree, evaluated without recursion: (i, j, expanded)
        done = {}
        stack = [(0, m - 1, False)]
        while stack:
            i, j, expanded = stack.pop()
            if i == j:
                done[(i, j)] = ops[i]
                continue
            s = split[i * m + j]
            if expanded:
                done[(i, j)] = _sp_mul(done.pop((i, s)), done.pop((s + 1, j)))
            else:
                stack.append((i, j, True))
                stack.append((s + 1, j, False))
                stack.append((i, s, False))
        acc = done[(0, m - 1)]
    if acc is None or isinstance(acc, float):
        acc = sp.diags_array(np.full(f[0].m, 1.0 if acc is None else acc, dtype),
                             format="csr")
    # a fresh, canonical csr_array of the chain's dtype (a single link
    # comes back as a copy: the result never shares the caller's arrays)
    shares = any(acc is o for o in ops)
    acc = sp.csr_array(acc, dtype=dtype, copy=shares)
    acc.sum_duplicates()
    return acc
