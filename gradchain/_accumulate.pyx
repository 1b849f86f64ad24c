"""Jacobian accumulation in the cheapest order.

A product F_0 F_1 ... F_{m-1} of Jacobians (and, for many-vector products,
the block of vectors as one more factor) is bracketed by the matrix-chain
dynamic programme, with a cost model that knows each factor's structure:

    dense (p x q) times dense (q x r)        p q r multiply-adds
    diagonal or c I times anything            one scaling per element (q r / p q)
    I times anything                          free
    diagonal plus rank one times dense        ~3 q r (scaling, u (v^T R), sum)
    diagonal times diagonal                   q, and the result stays diagonal

Diagonal links are never materialised: they scale rows or columns.  Dense
products go to BLAS (scipy.linalg.cython_blas) whatever the operands' layout
(C- or F-order directly; other strides are packed first).  The programme
runs without the GIL in O(m^3); for m = 500 it takes a few tens of ms.
"""
from libc.stdlib cimport malloc, free, calloc
from libc.string cimport memset, memcpy
from libc.limits cimport INT_MAX
from cython cimport floating

from scipy.linalg.cython_blas cimport sgemm, dgemm

from gradchain._kernels cimport link_jtv, link_jv

cdef double INF = float("inf")


# ---------------------------------------------------------------------------
# Cost model and the dynamic programme
# ---------------------------------------------------------------------------

cdef inline bint _diaglike(int k) noexcept nogil:
    return k == F_DIAG or k == F_SCALED


cdef inline double _mult_cost(int kl, int kr, double p, double q,
                              double r) noexcept nogil:
    """Multiply-adds for (p x q, kind kl) times (q x r, kind kr)."""
    if kl == F_IDENT or kr == F_IDENT:
        return 0.0
    if _diaglike(kl) and _diaglike(kr):
        return q
    if _diaglike(kl):
        return q * r + (q * q if kr == F_DPR1 else 0.0)
    if _diaglike(kr):
        return p * q + (q * q if kl == F_DPR1 else 0.0)
    if kl == F_DPR1 and kr == F_DPR1:
        return q * q + 3.0 * q * r
    if kl == F_DPR1:
        return 3.0 * q * r
    if kr == F_DPR1:
        return 3.0 * p * q
    return p * q * r


cdef inline int _result_kind(int kl, int kr) noexcept nogil:
    if kl == F_IDENT:
        return kr
    if kr == F_IDENT:
        return kl
    if _diaglike(kl) and _diaglike(kr):
        return F_DIAG
    return F_DENSE


cdef double _plan_dense(const Factor *f, Py_ssize_t m, int *split) noexcept nogil:
    """The classic programme when every factor is dense (no kinds to
    track): a tight O(m^3) loop over doubles."""
    cdef double *cost = <double *>malloc(m * m * sizeof(double))
    cdef double *dim = <double *>malloc((m + 1) * sizeof(double))
    cdef Py_ssize_t L, i, j, s
    cdef double best, c, pij
    cdef int bs
    if cost == NULL or dim == NULL:
        free(cost)
        free(dim)
        return -1.0
    for i in range(m):
        dim[i] = <double>f[i].p
        cost[i * m + i] = 0.0
        split[i * m + i] = <int>i
    dim[m] = <double>f[m - 1].q
    for L in range(2, m + 1):
        for i in range(0, m - L + 1):
            j = i + L - 1
            pij = dim[i] * dim[j + 1]
            bs = <int>(j - 1)
            best = cost[i * m + j - 1] + cost[j * m + j] + pij * dim[j]
            s = j - 2
            while s >= i:
                c = cost[i * m + s] + cost[(s + 1) * m + j] + pij * dim[s + 1]
                if c < best:
                    best = c
                    bs = <int>s
                s -= 1
            cost[i * m + j] = best
            split[i * m + j] = bs
    best = cost[m - 1]
    free(cost)
    free(dim)
    return best


cdef double plan_chain(const Factor *f, Py_ssize_t m, int *split) noexcept nogil:
    cdef double *cost
    cdef unsigned char *kind
    cdef Py_ssize_t L, i, j, s
    cdef double best, c
    cdef int bs
    cdef bint dense = True, square = True
    if m <= 0:
        return 0.0
    for i in range(m):
        dense = dense and f[i].kind == F_DENSE
        square = square and f[i].p == f[0].p and f[i].q == f[0].p
    if dense and square:
        # every bracketing of equal square factors costs (m - 1) n^3: take
        # plain left-to-right without searching
        for j in range(m):
            split[j] = <int>(j - 1) if j > 0 else 0
        return (m - 1) * (<double>f[0].p) ** 3
    if dense:
        return _plan_dense(f, m, split)
    cost = <double *>malloc(m * m * sizeof(double))
    kind = <unsigned char *>malloc(m * m * sizeof(unsigned char))
    if cost == NULL or kind == NULL:
        free(cost)
        free(kind)
        return -1.0
    for i in range(m):
        cost[i * m + i] = 0.0
        kind[i * m + i] = <unsigned char>f[i].kind
        split[i * m + i] = <int>i
    for L in range(2, m + 1):
        for i in range(0, m - L + 1):
            j = i + L - 1
            best = INF
            bs = <int>(j - 1)
            # from the left-to-right split down: ties keep the earlier
            # candidate, i.e. plain propagation ((F_i..F_j-1) F_j)
            s = j - 1
            while s >= i:
                c = (cost[i * m + s] + cost[(s + 1) * m + j]
                     + _mult_cost(kind[i * m + s], kind[(s + 1) * m + j],
                                  <double>f[i].p, <double>f[s].q,
                                  <double>f[j].q))
                if c < best:
                    best = c
                    bs = <int>s
                s -= 1
            cost[i * m + j] = best
            split[i * m + j] = bs
            kind[i * m + j] = <unsigned char>_result_kind(
                kind[i * m + bs], kind[(bs + 1) * m + j])
    best = cost[m - 1]
    free(cost)
    free(kind)
    return best


cdef double order_cost(const Factor *f, Py_ssize_t m, bint left,
                       const char *per_sample=NULL, double batch=1.0,
                       bint block=False) noexcept nogil:
    """Multiply-adds of the plain left-to-right or right-to-left order.

    With per_sample (one flag per factor), a product of factors that holds
    a per-sample factor is made once per sample (batch times), unless it
    holds factor 0 and block says factor 0 is the block of batch vectors of
    a vjp/jvp (row b meets only sample b's factors, so the p q r count,
    with p = batch, is already the total)."""
    cdef double total = 0.0, c
    cdef int acc
    cdef bint ps
    cdef Py_ssize_t i
    if m <= 1:
        return 0.0
    if left:
        acc = f[0].kind
        ps = per_sample != NULL and per_sample[0]
        for i in range(1, m):
            c = _mult_cost(acc, f[i].kind, <double>f[0].p,
                           <double>f[i].p, <double>f[i].q)
            ps = ps or (per_sample != NULL and per_sample[i])
            if ps and not block:
                c *= batch
            total += c
            acc = _result_kind(acc, f[i].kind)
    else:
        acc = f[m - 1].kind
        ps = per_sample != NULL and per_sample[m - 1]
        i = m - 2
        while i >= 0:
            c = _mult_cost(f[i].kind, acc, <double>f[i].p,
                           <double>f[i].q, <double>f[m - 1].q)
            ps = ps or (per_sample != NULL and per_sample[i])
            if ps and not (i == 0 and block):
                c *= batch
            total += c
            acc = _result_kind(f[i].kind, acc)
            i -= 1
    return total


# ---------------------------------------------------------------------------
# The executor
# ---------------------------------------------------------------------------

cdef struct Val:
    int kind            # F_DENSE, F_DIAG, F_SCALED, F_IDENT, F_DPR1
    bint owned          # buf holds a C-contiguous dense (p x q) or a diagonal
    bint ext            # buf is the caller's C-contiguous output (not freed)
    Py_ssize_t p, q
    void *buf
    const Factor *leaf


cdef inline floating _dget(const Val *v, Py_ssize_t i,
                           const floating *tag) noexcept nogil:
    """Diagonal element i of a diagonal-like value."""
    if v.kind == F_SCALED:
        return <floating>v.leaf.coef
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


cdef int _materialize(const Val *v, floating *out) noexcept nogil:
    """out (p x q, C-contiguous) = the value as a dense matrix."""
    cdef Py_ssize_t i, j, p = v.p, q = v.q
    cdef const floating *a
    cdef Py_ssize_t rs, cs
    cdef const Factor *f = v.leaf
    if v.kind == F_DENSE:
        _dense_of(v, &a, &rs, &cs)
        for i in range(p):
            for j in range(q):
                out[i * q + j] = a[i * rs + j * cs]
        return 0
    memset(out, 0, p * q * sizeof(floating))
    if v.kind == F_IDENT:
        for i in range(p):
            out[i * q + i] = 1
    elif v.kind == F_DIAG or v.kind == F_SCALED:
        for i in range(p):
            out[i * q + i] = _dget(v, i, out)
    else:   # F_DPR1 leaf: diag(d) + c u v^T
        for i in range(p):
            for j in range(q):
                out[i * q + j] = (<floating>f.coef
                                  * (<const floating *>f.u)[i * f.us]
                                  * (<const floating *>f.v)[j * f.vs])
            out[i * q + i] += (<const floating *>f.d)[i * f.ds]
    return 0


cdef int _to_dense(Val *v, const floating *tag) noexcept nogil:
    """Replace a structured value by an owned dense one."""
    cdef floating *buf
    if v.kind == F_DENSE:
        return 0
    buf = <floating *>malloc(max(1, v.p * v.q) * sizeof(floating))
    if buf == NULL:
        return -1
    _materialize(v, buf)
    _release(v)
    v.kind = F_DENSE
    v.owned = True
    v.ext = False
    v.buf = buf
    return 0


cdef inline bint _c_order(Py_ssize_t rs, Py_ssize_t cs, Py_ssize_t q) noexcept nogil:
    return cs == 1 and rs >= max(q, 1)


cdef inline bint _f_order(Py_ssize_t rs, Py_ssize_t cs, Py_ssize_t p) noexcept nogil:
    return rs == 1 and cs >= max(p, 1)


cdef int _matmul(const floating *A, Py_ssize_t ars, Py_ssize_t acs,
                 const floating *Bm, Py_ssize_t brs, Py_ssize_t bcs,
                 Py_ssize_t p, Py_ssize_t q, Py_ssize_t r,
                 floating *Z, int nt) noexcept nogil:
    """Z (p x r, C-contiguous) = A (p x q) B (q x r), any layouts."""
    cdef char ta, tb
    cdef int ip, iq, ir, lda, ldb, ldz
    cdef floating one = 1, zero = 0
    cdef floating *pack = NULL
    cdef Py_ssize_t i, j
    cdef int rc = 0
    if p == 0 or r == 0:
        return 0
    if q == 0:
        memset(Z, 0, p * r * sizeof(floating))
        return 0
    # BLAS needs B in C- or F-order and sizes that fit its ints; otherwise
    # the product runs row by row, Z[i] = B^T A[i], with rows of A as the
    # vectors (so A's rows must be contiguous)
    cdef bint blas = (p <= INT_MAX and q <= INT_MAX and r <= INT_MAX
                      and (_c_order(brs, bcs, r) or _f_order(brs, bcs, q))
                      and brs <= INT_MAX and bcs <= INT_MAX)
    # pack A when its layout does not fit (p q copies, against the p q r of
    # the product)
    if (not (_c_order(ars, acs, q) or _f_order(ars, acs, p))
            or ars > INT_MAX or acs > INT_MAX or (not blas and acs != 1)):
        pack = <floating *>malloc(p * q * sizeof(floating))
        if pack == NULL:
            return -1
        for i in range(p):
            for j in range(q):
                pack[i * q + j] = A[i * ars + j * acs]
        A = pack
        ars, acs = q, 1
    if not blas:
        for i in range(p):
            if link_jtv(Bm, q, r, brs, bcs, A + i * ars, Z + i * r, nt):
                rc = -1
                break
        free(pack)
        return rc
    # column-major view: Z^T (r x p) = B^T A^T
    if _c_order(brs, bcs, r):
        tb = c'N'
        ldb = <int>brs
    else:
        tb = c'T'
        ldb = <int>bcs
    if _c_order(ars, acs, q):
        ta = c'N'
        lda = <int>ars
    else:
        ta = c'T'
        lda = <int>acs
    ip, iq, ir, ldz = <int>p, <int>q, <int>r, <int>r
    if floating is float:
        sgemm(&tb, &ta, &ir, &ip, &iq, &one, <float *>Bm, &ldb, <float *>A, &lda,
              &zero, Z, &ldz)
    else:
        dgemm(&tb, &ta, &ir, &ip, &iq, &one, <double *>Bm, &ldb, <double *>A, &lda,
              &zero, Z, &ldz)
    free(pack)
    return 0


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
    cdef const Factor *f
    cdef floating c
    out.p = p
    out.q = r
    out.leaf = NULL
    out.ext = False
    if L.kind == F_IDENT:
        out[0] = R[0]
        out.p, out.q = p, r
        return 0
    if R.kind == F_IDENT:
        out[0] = L[0]
        return 0
    if _diaglike(L.kind) and _diaglike(R.kind):
        z = <floating *>malloc(max(1, q) * sizeof(floating))
        if z == NULL:
            return -1
        for i in range(q):
            z[i] = _dget(L, i, tag) * _dget(R, i, tag)
        _release(L)
        _release(R)
        out.kind = F_DIAG
        out.owned = True
        out.buf = z
        return 0
    if L.kind == F_DPR1 and R.kind != F_DENSE:
        if _to_dense(L, tag):
            return -1
    if R.kind == F_DPR1 and L.kind != F_DENSE:
        if _to_dense(R, tag):
            return -1
    if dest != NULL:
        z = dest
        out.ext = True
        out.owned = False
    else:
        z = <floating *>malloc(max(1, p * r) * sizeof(floating))
        if z == NULL:
            return -1
        out.owned = True
    out.kind = F_DENSE
    out.buf = z
    if _diaglike(L.kind):                       # row scaling of R
        _dense_of(R, &a, &rs, &cs)
        for i in range(p):
            c = _dget(L, i, tag)
            for j in range(r):
                z[i * r + j] = c * a[i * rs + j * cs]
    elif _diaglike(R.kind):                     # column scaling of L
        _dense_of(L, &a, &rs, &cs)
        for i in range(p):
            for j in range(r):
                z[i * r + j] = a[i * rs + j * cs] * _dget(R, j, tag)
    elif L.kind == F_DPR1:                      # (diag(d) + c u v^T) R
        f = L.leaf
        _dense_of(R, &a, &rs, &cs)
        tmp = <floating *>malloc(max(1, q + r) * sizeof(floating))
        if tmp == NULL:
            return -1
        w = tmp + q
        for i in range(q):
            tmp[i] = (<const floating *>f.v)[i * f.vs]
        if link_jtv(a, q, r, rs, cs, tmp, w, nt):      # w = R^T v
            free(tmp)
            return -1
        c = <floating>f.coef
        for i in range(p):
            for j in range(r):
                z[i * r + j] = ((<const floating *>f.d)[i * f.ds] * a[i * rs + j * cs]
                                + c * (<const floating *>f.u)[i * f.us] * w[j])
        free(tmp)
    elif R.kind == F_DPR1:                      # L (diag(d) + c u v^T)
        f = R.leaf
        _dense_of(L, &a, &rs, &cs)
        tmp = <floating *>malloc(max(1, q + p) * sizeof(floating))
        if tmp == NULL:
            return -1
        w = tmp + q
        for i in range(q):
            tmp[i] = (<const floating *>f.u)[i * f.us]
        if link_jv(a, p, q, rs, cs, tmp, w, nt):       # w = L u
            free(tmp)
            return -1
        c = <floating>f.coef
        for i in range(p):
            for j in range(r):
                z[i * r + j] = (a[i * rs + j * cs] * (<const floating *>f.d)[j * f.ds]
                                + c * w[i] * (<const floating *>f.v)[j * f.vs])
        free(tmp)
    else:
        _dense_of(L, &a, &rs, &cs)
        _dense_of(R, <const floating **>&tmp, &i, &j)
        if _matmul(a, rs, cs, <const floating *>tmp, i, j, p, q, r, z, nt):
            return -1
    _release(L)
    _release(R)
    return 0


cdef int _eval(const Factor *f, Py_ssize_t m, const int *split, Py_ssize_t i,
               Py_ssize_t j, Val *out, floating *dest, int nt) noexcept nogil:
    """Evaluate F_i .. F_j; a dense root product is written into dest (the
    caller's output) when dest is not NULL."""
    cdef Val L, R
    cdef Py_ssize_t s
    cdef floating *none = NULL
    if i == j:
        out.kind = f[i].kind
        out.owned = False
        out.ext = False
        out.p = f[i].p
        out.q = f[i].q
        out.buf = NULL
        out.leaf = &f[i]
        return 0
    s = split[i * m + j]
    if _eval(f, m, split, i, s, &L, none, nt):
        return -1
    if _eval(f, m, split, s + 1, j, &R, none, nt):
        _release(&L)
        return -1
    if _combine(&L, &R, out, dest, nt):
        _release(&L)
        _release(&R)
        return -1
    return 0


cdef inline void _leaf(const Factor *f, Val *out) noexcept nogil:
    out.kind = f.kind
    out.owned = False
    out.ext = False
    out.p = f.p
    out.q = f.q
    out.buf = NULL
    out.leaf = f


cdef int _eval_plain(const Factor *f, Py_ssize_t m, bint left, Val *out,
                     floating *dest, int nt) noexcept nogil:
    """Evaluate F_0 .. F_{m-1} in a plain order, iteratively (no table, no
    recursion: chains of any length): ((F_0 F_1) F_2) ... (left) or
    F_0 (F_1 (... F_{m-1})) (right); the last product goes to dest."""
    cdef Val acc, nxt, leaf
    cdef Py_ssize_t i
    cdef floating *none = NULL
    if left:
        _leaf(&f[0], &acc)
        for i in range(1, m):
            _leaf(&f[i], &leaf)
            if _combine(&acc, &leaf, &nxt, dest if i == m - 1 else none, nt):
                _release(&acc)
                return -1
            acc = nxt
    else:
        _leaf(&f[m - 1], &acc)
        i = m - 2
        while i >= 0:
            _leaf(&f[i], &leaf)
            if _combine(&leaf, &acc, &nxt, dest if i == 0 else none, nt):
                _release(&acc)
                return -1
            acc = nxt
            i -= 1
    out[0] = acc
    return 0


cdef int _run_chain(const Factor *f, Py_ssize_t m, const int *split,
                    floating *out, int nt, int order) noexcept nogil:
    cdef Val v
    if m == 0:
        return 0
    if order == ORDER_TABLE:
        if _eval(f, m, split, 0, m - 1, &v, out, nt):
            return -1
    elif _eval_plain(f, m, order == ORDER_LEFT, &v, out, nt):
        return -1
    if v.ext:
        pass                                    # already in out
    elif v.kind == F_DENSE and v.owned:
        memcpy(out, v.buf, v.p * v.q * sizeof(floating))
    else:
        _materialize(&v, out)
    _release(&v)
    return 0


cdef int run_chain_f(const Factor *f, Py_ssize_t m, const int *split,
                     float *out, int nt, int order=ORDER_TABLE) noexcept nogil:
    return _run_chain(f, m, split, out, nt, order)


cdef int run_chain_d(const Factor *f, Py_ssize_t m, const int *split,
                     double *out, int nt, int order=ORDER_TABLE) noexcept nogil:
    return _run_chain(f, m, split, out, nt, order)
