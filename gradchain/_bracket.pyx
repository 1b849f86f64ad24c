"""How a product along a chain runs: cost model, programme, Strategy.

A product F_0 F_1 ... F_{m-1} of links (and, for many-vector products, the
block of vectors as one more dense link) is bracketed by the matrix-chain
dynamic programme, with a cost model that knows each link's structure:

    dense (p x q) times dense (q x r)        p q r multiply-adds
    diagonal or c I times anything            one scaling per element (q r / p q)
    I times anything                          free
    diagonal plus rank one times dense        ~3 q r (scaling, u (v^T R), sum)
    diagonal times diagonal                   q, and the result stays diagonal

``choose`` is the one place that decides what runs: the order (the
programme's table, or a plain order), its cost and the two plain orders'
costs, and for per-sample chains how samples are spread over threads.
The executors in _chain.ChainCore run exactly this record and
``Chain.plan()`` renders it.  The programme runs without the GIL in
O(m^3); planning is bounded by what it can save (see choose).
"""
cimport numpy as cnp
import numpy as np
from libc.stdlib cimport free

from gradchain._link cimport (Link, LINK_DENSE, LINK_DIAG, link_diaglike,
                              LINK_SCALED_IDENTITY, LINK_DIAG_RANK1,
                              LINK_IDENTITY, LINK_CSR, LINK_CSC,
                              LINK_OPERATOR, link_block, link_transposed,
                              link_is_layer, link_by_rows, link_bandwidth)
from gradchain._sizes cimport gc_size_mul, gc_malloc_n

cnp.import_array()

cdef double INF = float("inf")

_MODES = ("vjp", "jvp", "jacobian", "jacobian")   # by MODE_* code
_ORDER_NAMES = ("table", "left", "right")      # by ORDER_* code


cdef inline void *_alloc2(Py_ssize_t a, Py_ssize_t b, size_t size) noexcept nogil:
    cdef Py_ssize_t n
    if not gc_size_mul(a, b, &n):
        return NULL
    return gc_malloc_n(n, size)


# ---------------------------------------------------------------------------
# The cost model: one entry per kind
# ---------------------------------------------------------------------------

cdef inline bint _rank1like(int k) noexcept nogil:
    # diagonal plus rank one: ~3 multiply-adds per element of its neighbour
    return k == LINK_DIAG_RANK1


cdef inline double _work(const Link *f) noexcept nogil:
    """Multiply-adds of a sparse or matrix-free leaf per vector: its nnz
    (a matrix-free link, whose cost gradchain cannot see, counts as dense)."""
    if f.kind == LINK_CSR or f.kind == LINK_CSC:
        return <double>f.nnz
    return <double>f.m * <double>f.n


cdef inline double _mult_cost(int kl, int kr, double p, double q,
                              double r, const Link *fl,
                              const Link *fr) noexcept nogil:
    """Multiply-adds for (p x q, kind kl) times (q x r, kind kr); fl, fr:
    the operands' leaves, read (_work) only when a kind is sparse or
    matrix-free (only a leaf is: a product never is)."""
    if kl == LINK_IDENTITY or kr == LINK_IDENTITY:
        return 0.0
    if link_by_rows(kl) and link_by_rows(kr):
        # the smaller made dense, the other applied to it
        return min(p * q + p * _work(fr), q * r + _work(fl) * r)
    if link_by_rows(kl):
        return _work(fl) * r
    if link_by_rows(kr):
        return p * _work(fr)
    if link_diaglike(kl) and link_diaglike(kr):
        return q
    if link_diaglike(kl):
        return q * r + (q * q if _rank1like(kr) else 0.0)
    if link_diaglike(kr):
        return p * q + (q * q if _rank1like(kl) else 0.0)
    if _rank1like(kl) and _rank1like(kr):
        return q * q + 3.0 * q * r
    if _rank1like(kl):
        return 3.0 * q * r
    if _rank1like(kr):
        return 3.0 * p * q
    return p * q * r


cdef inline int _result_kind(int kl, int kr) noexcept nogil:
    if kl == LINK_IDENTITY:
        return kr
    if kr == LINK_IDENTITY:
        return kl
    if link_diaglike(kl) and link_diaglike(kr):
        return LINK_DIAG
    return LINK_DENSE


cdef struct SpEst:
    int kind          # LINK_CSR for any sparse product, else the leaf's
    double nz         # estimated nonzeros
    double bw         # a bound on its bandwidth (largest |row - column|)


cdef inline SpEst _sp_leaf(const Link *f) noexcept nogil:
    cdef SpEst e
    e.kind = f.kind
    if f.kind == LINK_CSR or f.kind == LINK_CSC:
        e.kind = LINK_CSR
        e.nz = <double>f.nnz
        e.bw = <double>link_bandwidth(f)
    else:
        e.nz = <double>f.n
        e.bw = 0.0
    return e


cdef inline double _sp_mult(SpEst a, SpEst b, double p, double q, double r,
                            SpEst *res) noexcept nogil:
    """Multiply-adds of (p x q, a) times (q x r, b), and the estimate of
    the product (res).  Sparse times sparse: every entry of a meets the
    entries of one row of b, nz_b / q of them on average (exact for
    banded factors); the product has at most that many nonzeros, at most
    p r, and at most p (2 (bw_a + bw_b) + 1) (its bandwidth is at most
    the sum).  A diagonal-like factor scales the other's entries."""
    cdef double flops
    if a.kind == LINK_IDENTITY:
        res[0] = b
        return 0.0
    if b.kind == LINK_IDENTITY:
        res[0] = a
        return 0.0
    if link_diaglike(a.kind) and link_diaglike(b.kind):
        res.kind, res.nz, res.bw = LINK_DIAG, q, 0.0
        return q
    if link_diaglike(a.kind):
        res[0] = b
        return b.nz
    if link_diaglike(b.kind):
        res[0] = a
        return a.nz
    flops = a.nz * b.nz / q if q > 0 else 0.0
    res.kind = LINK_CSR
    res.bw = min(a.bw + b.bw, max(p, r))
    res.nz = min(flops, p * r, p * (2.0 * res.bw + 1.0))
    return flops


# ---------------------------------------------------------------------------
# The dynamic programme
# ---------------------------------------------------------------------------

cdef double _plan_dense(const Link *f, Py_ssize_t m, int *split) noexcept nogil:
    """The classic programme when every factor is dense (no kinds to
    track): a tight O(m^3) loop over doubles."""
    cdef double *cost = <double *>_alloc2(m, m, sizeof(double))
    cdef double *dim = <double *>_alloc2(m + 1, 1, sizeof(double))
    cdef Py_ssize_t L, i, j, s
    cdef double best, c, pij
    cdef int bs
    if cost == NULL or dim == NULL:
        free(cost)
        free(dim)
        return -1.0
    for i in range(m):
        dim[i] = <double>f[i].m
        cost[i * m + i] = 0.0
        split[i * m + i] = <int>i
    dim[m] = <double>f[m - 1].n
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


cdef double _plan_chain(const Link *f, Py_ssize_t m, int *split,
                        bint sparse) noexcept nogil:
    """Optimal bracketing of f[0] ... f[m-1]: fills split[i*m + j] (the s of
    (F_i..F_s)(F_s+1..F_j)) and returns the multiply-add count, or -1.0
    when out of memory.  sparse (MODE_SPARSE): every product is sparse,
    costed by _sp_mult's estimates; else by _mult_cost, products dense
    unless both operands are diagonal-like."""
    cdef double *cost
    cdef SpEst *est
    cdef SpEst e, best_e
    cdef Py_ssize_t L, i, j, s
    cdef double best, c
    cdef int bs
    cdef bint dense = not sparse, square = True
    if m <= 0:
        return 0.0
    for i in range(m):
        dense = dense and f[i].kind == LINK_DENSE
        square = square and f[i].m == f[0].m and f[i].n == f[0].m
    if dense and square:
        # every bracketing of equal square factors costs (m - 1) n^3: take
        # plain left-to-right without searching
        for j in range(m):
            split[j] = <int>(j - 1) if j > 0 else 0
        return (m - 1) * (<double>f[0].m) ** 3
    if dense:
        return _plan_dense(f, m, split)
    cost = <double *>_alloc2(m, m, sizeof(double))
    est = <SpEst *>_alloc2(m, m, sizeof(SpEst))
    if cost == NULL or est == NULL:
        free(cost)
        free(est)
        return -1.0
    for i in range(m):
        cost[i * m + i] = 0.0
        if sparse:
            est[i * m + i] = _sp_leaf(&f[i])
        else:
            est[i * m + i].kind = f[i].kind
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
                if sparse:
                    c = _sp_mult(est[i * m + s], est[(s + 1) * m + j],
                                 <double>f[i].m, <double>f[s].n,
                                 <double>f[j].n, &e)
                else:
                    c = _mult_cost(est[i * m + s].kind, est[(s + 1) * m + j].kind,
                                   <double>f[i].m, <double>f[s].n,
                                   <double>f[j].n, &f[i], &f[j])
                    e.kind = _result_kind(est[i * m + s].kind,
                                          est[(s + 1) * m + j].kind)
                c += cost[i * m + s] + cost[(s + 1) * m + j]
                if c < best:
                    best, bs, best_e = c, <int>s, e
                s -= 1
            cost[i * m + j] = best
            split[i * m + j] = bs
            est[i * m + j] = best_e
    best = cost[m - 1]
    free(cost)
    free(est)
    return best


cdef double _order_cost(const Link *f, Py_ssize_t m, bint left, double batch,
                        bint block) noexcept nogil:
    """Multiply-adds of the plain left-to-right or right-to-left order.

    A product of factors that holds a per-sample factor is made once per
    sample (batch times), unless it holds factor 0 and block says factor 0
    is the block of batch vectors of a vjp/jvp (row b meets only sample b's
    factors, so the p q r count, with p = batch, is already the total)."""
    cdef double total = 0.0, c
    cdef int acc
    cdef bint ps
    cdef Py_ssize_t i
    if m <= 1:
        return 0.0
    if left:
        acc = f[0].kind
        ps = f[0].per_sample
        for i in range(1, m):
            c = _mult_cost(acc, f[i].kind, <double>f[0].m,
                           <double>f[i].m, <double>f[i].n, &f[0], &f[i])
            ps = ps or f[i].per_sample
            if ps and not block:
                c *= batch
            total += c
            acc = _result_kind(acc, f[i].kind)
    else:
        acc = f[m - 1].kind
        ps = f[m - 1].per_sample
        i = m - 2
        while i >= 0:
            c = _mult_cost(f[i].kind, acc, <double>f[i].m,
                           <double>f[i].n, <double>f[m - 1].n, &f[i],
                           &f[m - 1])
            ps = ps or f[i].per_sample
            if ps and not (i == 0 and block):
                c *= batch
            total += c
            acc = _result_kind(f[i].kind, acc)
            i -= 1
    return total


# ---------------------------------------------------------------------------
# The factors of a product, and the one decision
# ---------------------------------------------------------------------------

cdef Py_ssize_t product_factors(const Link *links, Py_ssize_t k, int mode,
                                Py_ssize_t B, const void *block,
                                Link *out) noexcept nogil:
    cdef Py_ssize_t j, off = 0
    if mode == MODE_VJP or mode == MODE_JVP:
        out[0] = link_block(block, B, links[k - 1].m if mode == MODE_VJP
                            else links[0].n)
        off = 1
    for j in range(k):
        if mode == MODE_JVP:
            out[off + j] = link_transposed(&links[j])
        else:
            out[off + j] = links[k - 1 - j]
    return k + off


# Planning is bounded by what it can save.  One step of the matrix-chain
# programme (m^3 / 6 steps for m factors) takes about as long as 3
# multiply-adds of the products it plans (measured: 1.2-1.8 ns a step,
# 0.45-0.6 ns a multiply-add of 5..60-wide dense products on this build's
# reference machine), so the programme runs only when its steps cost no more
# than the cheaper plain order itself: planning then at most doubles a
# one-shot product, and only where it may pay.  Otherwise the cheaper plain
# order runs.  Up to 1024 steps (m <= 18, about 2 us, the order of a call's
# fixed overhead) the programme always runs.
cdef double _DP_STEP_MADDS = 3.0
cdef double _DP_FREE_STEPS = 1024.0
# Per-sample Jacobians: where every link is at most this wide, every
# product of the plan is at most 64^3 multiply-adds, which OpenBLAS (the
# BLAS of the SciPy wheels) runs on the calling thread; samples are then
# split over threads.  Wider: one sample at a time, each product threaded.
cdef Py_ssize_t _SAMPLE_THREADS_MAX_WIDTH = 64
# strategies shared across chains of the same shape (bounded: tables of at
# most 256^2 ints, at most 256 entries)
cdef dict _STRATEGIES = {}
cdef Py_ssize_t _CACHE_MAX_FACTORS = 256
cdef Py_ssize_t _CACHE_MAX_ENTRIES = 256


cdef class Strategy:
    """What runs for one (mode, batch) of a chain; see _bracket.pxd."""

    def __repr__(self):
        return (f"Strategy(mode={self.mode!r}, batch={self.batch}, "
                f"order={self.order_name!r}, cost={self.cost:g}, l2r={self.l2r:g}, "
                f"r2l={self.r2l:g}, per_sample={bool(self.per_sample)}, "
                f"sample_threads={bool(self.sample_threads)})")

    @property
    def order_name(self):
        """"table", "left" or "right"."""
        return _ORDER_NAMES[self.order]


cdef Strategy _new(int mode, Py_ssize_t B, int order, object table,
                   double cost, double l2r, double r2l):
    cdef Strategy s = Strategy.__new__(Strategy)
    s.mode = _MODES[mode]
    s.format = "csr" if mode == MODE_SPARSE else "dense"
    s.batch = B
    s.order = order
    s.table = table
    s.split = NULL if table is None else <const int *>cnp.PyArray_DATA(
        <cnp.ndarray>table)
    s.cost, s.l2r, s.r2l = cost, l2r, r2l
    s.per_sample = False
    s.sample_threads = False
    return s


cdef Strategy _decide(const Link *f, Py_ssize_t m, int mode, Py_ssize_t B,
                      bint single):
    """The order of f[0] ... f[m-1] (shared links).

    single: f[0] is one vector (a vjp/jvp of batch 1), which propagates
    link by link: the fused loop, with no planning in the call
    (pre-multiplying links can save multiply-adds for one vector only
    around a link narrower than its neighbours, and a one-shot call could
    not pay for finding out)."""
    cdef double cost, l2r, r2l, steps, dm = <double>m
    cdef int *sp
    cdef bint sparse = mode == MODE_SPARSE      # sparse products throughout
    with nogil:
        if sparse:
            l2r = _sp_order(f, m, True)
            r2l = _sp_order(f, m, False)
        else:
            l2r = _order_cost(f, m, True, 1.0, False)
            r2l = _order_cost(f, m, False, 1.0, False)
    if m <= 2 or single:
        return _new(mode, B, ORDER_LEFT, None, l2r, l2r, r2l)
    steps = dm * dm * dm / 6.0
    if steps <= _DP_FREE_STEPS or steps * _DP_STEP_MADDS <= min(l2r, r2l):
        split = np.empty(m * m, dtype=np.intc)
        sp = <int *>cnp.PyArray_DATA(split)
        with nogil:
            cost = _plan_chain(f, m, sp, sparse)
        if cost < 0:
            raise MemoryError("could not allocate the bracketing tables")
        if cost < l2r:
            return _new(mode, B, ORDER_TABLE, split, cost, l2r, r2l)
        return _new(mode, B, ORDER_LEFT, None, l2r, l2r, r2l)
    if r2l < l2r:
        return _new(mode, B, ORDER_RIGHT, None, r2l, l2r, r2l)
    return _new(mode, B, ORDER_LEFT, None, l2r, l2r, r2l)


# ---------------------------------------------------------------------------
# Sparse products (MODE_SPARSE): every factor sparse or diagonal-like, every
# product sparse, each costed by an estimate of the nonzeros it makes
# ---------------------------------------------------------------------------

cdef bint sparse_jacobian_ok(const Link *links, Py_ssize_t k) noexcept nogil:
    cdef Py_ssize_t i
    cdef bint any_sparse = False
    for i in range(k):
        if links[i].per_sample:
            return False
        if links[i].kind == LINK_CSR or links[i].kind == LINK_CSC:
            any_sparse = True
        elif not (link_diaglike(links[i].kind) or links[i].kind == LINK_IDENTITY):
            return False
    return any_sparse


cdef double _sp_order(const Link *f, Py_ssize_t m, bint left) noexcept nogil:
    """The estimated multiply-adds of a plain order of sparse products."""
    cdef SpEst acc, nxt
    cdef double total = 0.0
    cdef Py_ssize_t i
    if left:
        acc = _sp_leaf(&f[0])
        for i in range(1, m):
            total += _sp_mult(acc, _sp_leaf(&f[i]), <double>f[0].m,
                              <double>f[i].m, <double>f[i].n, &nxt)
            acc = nxt
    else:
        acc = _sp_leaf(&f[m - 1])
        i = m - 2
        while i >= 0:
            total += _sp_mult(_sp_leaf(&f[i]), acc, <double>f[i].m,
                              <double>f[i].n, <double>f[m - 1].n, &nxt)
            acc = nxt
            i -= 1
    return total


cdef Strategy _per_sample(const Link *f, Py_ssize_t m, int mode,
                          Py_ssize_t B, Strategy base):
    """Chains with per-sample links.  jacobian: base, the bracketing of one
    sample's product, runs once per sample, so every count is B times the
    per-sample one.  vjp/jvp: the block propagates link by link (row b
    through sample b's Jacobians), so the order is left to right; the
    right-to-left baseline counts a product that holds a per-sample link
    once per sample."""
    cdef Strategy s
    cdef Py_ssize_t i, w = 0
    cdef double dB = <double>B, l2r
    if mode == MODE_JACOBIAN:
        s = _new(mode, 0, base.order, base.table, base.cost * dB,
                 base.l2r * dB, base.r2l * dB)
        calls = False
        for i in range(m):
            w = max(w, f[i].m, f[i].n)
            calls = calls or f[i].kind == LINK_OPERATOR
        # a matrix-free link calls back on the calling thread only (its
        # exception travels through that thread's state: _link.link_raise)
        s.sample_threads = w <= _SAMPLE_THREADS_MAX_WIDTH and not calls
    else:
        l2r = _order_cost(f, m, True, dB, True)
        s = _new(mode, B, ORDER_LEFT, None, l2r, l2r,
                 _order_cost(f, m, False, dB, True))
    s.per_sample = True
    return s


cdef Strategy _shared(const Link *f, Py_ssize_t m, int mode, Py_ssize_t B):
    """_decide through the cache of strategies shared across chains."""
    cdef Py_ssize_t i
    cdef Py_ssize_t *sig
    cdef Strategy s
    if (mode == MODE_VJP or mode == MODE_JVP) and B <= 1:
        return _decide(f, m, mode, B, True)     # O(m), no search
    # the shape signature: what the strategy depends on
    # (a sparse link's cost is its nnz, and in a sparse product its
    # bandwidth bounds the product's nonzeros)
    sigb = bytearray(5 * m * sizeof(Py_ssize_t))
    sig = <Py_ssize_t *><char *>sigb
    for i in range(m):
        sig[5 * i] = f[i].kind
        sig[5 * i + 1] = f[i].m
        sig[5 * i + 2] = f[i].n
        if f[i].kind == LINK_CSR or f[i].kind == LINK_CSC:
            sig[5 * i + 3] = f[i].nnz
            sig[5 * i + 4] = link_bandwidth(&f[i])
    gkey = (mode, B, bytes(sigb))
    s = _STRATEGIES.get(gkey)
    if s is None:
        s = _decide(f, m, mode, B, False)
        if m <= _CACHE_MAX_FACTORS:
            if len(_STRATEGIES) >= _CACHE_MAX_ENTRIES:
                _STRATEGIES.clear()
            _STRATEGIES[gkey] = s
    return s


cdef Strategy choose(const Link *links, Py_ssize_t k, int mode, Py_ssize_t B,
                     Py_ssize_t nsamples, dict chain_cache):
    """The strategy for (mode, B) (nsamples: the per-sample links' count,
    which a vjp/jvp's B equals), cached per (mode, B) in chain_cache for
    the chain's life and, for small tables, per chain shape across chains
    (one-shot calls of the same shapes plan once)."""
    key = (mode, B)
    cdef Strategy s = chain_cache.get(key)
    if s is not None:
        return s
    cdef Py_ssize_t m = k + (0 if mode == MODE_JACOBIAN or mode == MODE_SPARSE else 1), i
    cdef Link *f = <Link *>gc_malloc_n(m, sizeof(Link))
    cdef bint per_sample = False
    if f == NULL:
        raise MemoryError()
    try:
        product_factors(links, k, mode, B, NULL, f)
        for i in range(m):
            per_sample = per_sample or f[i].per_sample
            if link_is_layer(f[i].kind):
                # a map programme's layer kinds are batched, matrix-free
                # forms; their Jacobians enter products as the structured
                # links of _program._jacobian_links
                raise TypeError(f"link {i} is a map programme layer (kind "
                                f"{f[i].kind}): it has no product rule")
        if per_sample and mode != MODE_JACOBIAN:
            s = _per_sample(f, m, mode, B, None)
        elif per_sample:
            s = _per_sample(f, m, mode, nsamples, _shared(f, m, mode, B))
        else:
            s = _shared(f, m, mode, B)
    finally:
        free(f)
    if len(chain_cache) < 64:
        chain_cache[key] = s
    return s


def _clear_cache():
    """Forget the strategies shared across chains (tests)."""
    _STRATEGIES.clear()
