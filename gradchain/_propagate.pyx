"""Propagation: a block of vectors through a table of links, link by link.

The one propagation loop of gradchain.  ``propagate`` runs

    vjp:  x J_k ... J_1   (rows of x are cotangents)
    jvp:  x J_1^T ... J_k^T  (rows of x are tangents)

in one ``nogil`` call that ping-pongs between two work halves, with no
Python between links: a chain's Jacobians (``_chain.ChainCore``) and the
backward and forward-mode passes of a map programme (``_program.Program``,
whose layers are links too) both run here.  A dense link goes to the
vector kernel (one row) or BLAS (a block, through ``_blas``), a structured
or layer link to ``_link.link_apply_rows``, a run of per-sample links
to the sample-blocked loop below, and a run of sparse links applied to a
block of at least 8 rows to the tiled loop below.
"""
from libc.stdlib cimport free
from cython cimport floating
from cython.parallel cimport prange, threadid

from gradchain._link cimport (Link, LINK_DENSE, LINK_CSR, LINK_CSC, LINK_TILE,
                              LINK_TILES_MIN,
                              link_sample, link_apply_rows, link_apply_sparse,
                              link_scatters, link_tiles)
from gradchain._kernels cimport link_jtv_m, link_jv_m, pack_rows_m
from gradchain._blas cimport block_jtv, block_jv
from gradchain._sizes cimport gc_size_mul, gc_malloc_n

cdef extern from "gc_dense.h":
    Py_ssize_t GC_PARALLEL_MIN_ELEMS

# A shared dense link of at most this many bytes between per-sample links
# joins their sample-blocked run (each sample's rows through it by the
# vector kernel, the link staying in L1/L2 for every sample of a block)
# rather than going to a BLAS product of the whole block between two of
# gradchain's parallel regions: there, OpenBLAS's pool and gradchain's
# OpenMP team alternate on the cores within one call, each spinning while
# the other works.  Measured on [per-sample (B, 32, 512), 512 x 8, 8 x 512,
# per-sample (B, 512, 32)], B = 1024, 2 cores: bench/test_bench_accumulate.py.
cdef enum:
    _RUN_SHARED_BYTES = 64 << 10


cdef inline const Link *_link_at(const Link *links, Py_ssize_t k,
                                 Py_ssize_t step, bint transpose) noexcept nogil:
    """The link applied at this step: vjp walks the chain from the end."""
    return &links[k - 1 - step if transpose else step]


cdef int _dense_rows(const Link *L, const char *J, bint transpose,
                     const floating *x, Py_ssize_t B, floating *out, int nt,
                     bint f32) noexcept nogil:
    """out = the B rows of x through the dense link L whose data (a
    sample's, for a per-sample link) start at J: one row on the vector
    kernel, a block through BLAS (_blas).  f32 (floating is double): J is
    float32, one row on the mixed kernels, a block through a float64 copy
    of J (m n elements, freed here)."""
    cdef double *tmp
    cdef int rc
    if floating is double:
        if f32:
            if B == 1:
                if transpose:
                    return link_jtv_m(<const float *>J, L.m, L.n, L.rs, L.cs,
                                      x, out, nt)
                return link_jv_m(<const float *>J, L.m, L.n, L.rs, L.cs, x,
                                 out, nt)
            # m n fits: the link exists as an array of m n float32
            tmp = <double *>gc_malloc_n(L.m * L.n, sizeof(double))
            if tmp == NULL:
                return -1
            pack_rows_m(0, L.m, L.n, <const float *>J, L.rs, L.cs, tmp)
            if transpose:
                rc = block_jtv(tmp, L.m, L.n, L.n, 1, x, B, out, nt)
            else:
                rc = block_jv(tmp, L.m, L.n, L.n, 1, x, B, out, nt)
            free(tmp)
            return rc
    if transpose:   # (one row: block_jtv runs the vector kernel)
        return block_jtv(<const floating *>J, L.m, L.n, L.rs, L.cs, x, B, out, nt)
    return block_jv(<const floating *>J, L.m, L.n, L.rs, L.cs, x, B, out, nt)


cdef inline bint _sample_blocked(const Link *L, size_t itemsize) noexcept nogil:
    """Whether the sample-blocked loop takes this link: per-sample, or
    shared, dense and small (_RUN_SHARED_BYTES)."""
    return L.per_sample or (L.kind == LINK_DENSE
                            and <double>L.m * L.n * itemsize <= _RUN_SHARED_BYTES)


cdef int _per_sample_run(const Link *links, Py_ssize_t k, Py_ssize_t s0,
                         Py_ssize_t s1, bint transpose, const floating *x,
                         Py_ssize_t B, Py_ssize_t maxw, floating *dst,
                         int nt, floating **steps, bint f32) noexcept nogil:
    """Steps s0 <= step < s1 of the chain, per-sample (B, m, n) links and
    small shared dense ones (_sample_blocked), at least one per-sample:
    rows of x (the input of step s0) in, rows of dst (the output of step
    s1 - 1, compact) out; dst must not overlap x.  With steps (propagate's
    intermediates), every step's rows go to steps[step] instead of scratch.

    Sample-block major: the batch is cut into blocks and one thread takes a
    block through every link of the run before the next block, so there is
    no barrier between links and each link's Jacobians stream in long
    contiguous runs of a block's samples.  A block's intermediate rows stay
    in its thread's scratch (widths change from link to link, so rows of a
    shared buffer would overlap other blocks' rows).  A sample's result does
    not depend on the blocking or the thread count.  Returns 0, or -1 when
    out of memory.
    """
    cdef Py_ssize_t step, b, c, b0, b1, nin, nout, nblocks, size, per, nin0
    cdef Py_ssize_t elems = 0, total
    cdef const Link *L
    cdef const floating *cur
    cdef floating *nxt
    cdef floating *scratch = NULL
    cdef floating *mine
    cdef int err = 0
    for step in range(s0, s1):
        L = _link_at(links, k, step, transpose)
        elems += L.m * L.n
    L = _link_at(links, k, s0, transpose)
    nin0 = L.m if transpose else L.n        # width of the rows of x
    if gc_size_mul(B, elems, &total) and total < GC_PARALLEL_MIN_ELEMS:
        nt = 1
    nt = max(nt, 1)
    # a few blocks per thread: long streams per link, and a thread that
    # loses its core for a while (another library's spinning pool) takes
    # fewer blocks instead of holding up the others
    size = (B + 4 * nt - 1) // (4 * nt)
    nblocks = (B + size - 1) // size
    if nt > nblocks:
        nt = <int>nblocks
    # one thread's two scratch blocks (size * maxw <= B * maxw, which the
    # caller checked; the thread count multiplies it once more)
    per = 2 * size * maxw
    if s1 - s0 > 1 and steps == NULL:
        if not gc_size_mul(nt, per, &total):
            return -1
        scratch = <floating *>gc_malloc_n(total, sizeof(floating))
        if scratch == NULL:
            return -1
    for c in prange(nblocks, num_threads=nt, schedule="dynamic", chunksize=1):
        b0 = c * size
        b1 = min(b0 + size, B)
        mine = scratch + threadid() * per if scratch != NULL else NULL
        cur = x + b0 * nin0
        for step in range(s0, s1):
            L = _link_at(links, k, step, transpose)
            nin = L.m if transpose else L.n
            nout = L.n if transpose else L.m
            if step == s1 - 1:
                nxt = dst + b0 * nout
            elif steps != NULL:
                nxt = steps[step] + b0 * nout
            else:
                nxt = mine + ((step - s0) & 1) * (per // 2)
            for b in range(b0, b1):
                err += _dense_rows(L, link_sample(L, b, 4 if f32 else sizeof(floating)),
                                   transpose, cur + (b - b0) * nin,
                                   1, nxt + (b - b0) * nout, 1, f32) != 0
            cur = nxt
    free(scratch)
    return -1 if err else 0



# A sparse run's group of tiles goes through every link of the run while
# its rows (in and out) fit in this many bytes, at least one tile; measured
# (50 tridiagonal links, n = 1e5, 256 rows of a gather): 4 MiB groups ran
# 10% faster than the whole block, 16 MiB no better than 4.
cdef enum:
    _RUN_BYTES = 4 << 20


cdef inline bint _sparse(const Link *L) noexcept nogil:
    return (L.kind == LINK_CSR or L.kind == LINK_CSC) and not L.per_sample


cdef int _sparse_run(const Link *links, Py_ssize_t k, Py_ssize_t s0,
                     Py_ssize_t s1, bint transpose, const floating *x,
                     Py_ssize_t B, floating *dst, int nt,
                     floating **steps) noexcept nogil:
    """Steps s0 <= step < s1 of the chain, all sparse links, for B >=
    LINK_TILE rows of x: the rows go into tiles once (csrc/gc_sparse.h: a
    tile's values of one index side by side, so a tile's sums are vector
    operations), every link of the run runs on the tiles, and the last
    result comes back into the rows of dst (with steps, propagate's
    intermediates, every step's result also into the rows of steps[step]).
    The same bits as the links applied to rows one by one (each row's sums
    keep their order).  Returns 0 or a code of link_apply_rows."""
    cdef Py_ssize_t step, w, maxw = 0, half, g0, gb, per, nin0, nout1
    cdef const Link *L
    cdef floating *buf
    cdef floating *cur
    cdef floating *nxt
    cdef int rc = 0
    cdef Py_ssize_t least = 1
    for step in range(s0, s1):
        L = _link_at(links, k, step, transpose)
        maxw = max(maxw, L.m, L.n)
        if link_scatters(L, transpose):
            least = LINK_TILES_MIN      # a scatter: split by tiles
    # groups of tiles, each through the whole run (its rows stay in cache
    # from link to link while the links stream)
    per = _RUN_BYTES // max(2 * maxw * LINK_TILE * <Py_ssize_t>sizeof(floating), 1)
    per = min(max(per, least) * LINK_TILE, ((B + LINK_TILE - 1) // LINK_TILE) * LINK_TILE)
    if not gc_size_mul(per, maxw, &half) or not gc_size_mul(2, half, &w):
        return -1
    buf = <floating *>gc_malloc_n(w, sizeof(floating))
    if buf == NULL:
        return -1
    L = _link_at(links, k, s0, transpose)
    nin0 = L.m if transpose else L.n
    L = _link_at(links, k, s1 - 1, transpose)
    nout1 = L.n if transpose else L.m
    g0 = 0
    while g0 < B:
        gb = min(per, B - g0)
        cur = buf
        link_tiles(True, gb, nin0, x + g0 * nin0, cur, nt)
        gb = ((gb + LINK_TILE - 1) // LINK_TILE) * LINK_TILE
        for step in range(s0, s1):
            L = _link_at(links, k, step, transpose)
            nxt = buf + half if cur == buf else buf
            rc = link_apply_sparse(L, transpose, cur, gb, nxt, nt, True, B)
            if rc:
                break
            if steps != NULL and step < s1 - 1:
                link_tiles(False, min(per, B - g0), L.n if transpose else L.m,
                           nxt, steps[step] + g0 * (L.n if transpose else L.m), nt)
            cur = nxt
        if rc:
            break
        link_tiles(False, min(per, B - g0), nout1, cur, dst + g0 * nout1, nt)
        g0 += per
    free(buf)
    return rc


cdef int propagate(const Link *links, Py_ssize_t k, Py_ssize_t maxw,
                   bint transpose, const floating *x, Py_ssize_t B,
                   floating *out, floating *work, int nt,
                   floating **steps=NULL, bint f32=False) noexcept nogil:
    """The fused chain loop (see _propagate.pxd)."""
    cdef Py_ssize_t step, s1, half = B * maxw, plain_until = 0
    cdef floating *own = NULL
    cdef floating *dst
    cdef const floating *cur = x
    cdef const Link *L
    cdef int rc = 0, which = 0
    cdef bint run
    cdef size_t isz = sizeof(floating)
    if B == 0:
        return 0
    if k == 0:
        return 0    # handled by the caller (a copy)
    if k > 1 and half > 0 and work == NULL and steps == NULL:
        # 2 * B * maxw elements: the caller checked the byte count
        own = <floating *>gc_malloc_n(2 * half, sizeof(floating))
        if own == NULL:
            return -1
        work = own
    step = 0
    while step < k:
        L = _link_at(links, k, step, transpose)
        s1 = step + 1
        run = False
        if step >= plain_until and _sample_blocked(L, isz):
            # the stretch the sample-blocked loop could take: a run when it
            # holds a per-sample link (else its links go one by one, and the
            # stretch is not scanned again)
            run = L.per_sample
            while s1 < k and _sample_blocked(_link_at(links, k, s1, transpose), isz):
                run = run or _link_at(links, k, s1, transpose).per_sample
                s1 += 1
            if not run:
                plain_until = s1
                s1 = step + 1
        elif _sparse(L) and B >= LINK_TILE:
            while s1 < k and _sparse(_link_at(links, k, s1, transpose)):
                s1 += 1
        if steps != NULL:
            dst = steps[s1 - 1]
        else:
            dst = out if s1 == k else work + which * half
        if run:
            rc = _per_sample_run(links, k, step, s1, transpose, cur, B, maxw,
                                 dst, nt, steps, f32)
        elif _sparse(L) and B >= LINK_TILE:
            rc = _sparse_run(links, k, step, s1, transpose, cur, B, dst, nt,
                             steps)
        elif L.kind != LINK_DENSE:
            rc = link_apply_rows(L, transpose, cur, B, dst, nt)
        else:
            rc = _dense_rows(L, L.data, transpose, cur, B, dst, nt, f32)
        if rc:
            break
        cur = dst
        which ^= 1
        step = s1
    free(own)
    return rc

