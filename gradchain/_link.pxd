# The one link model: every factor of every product gradchain evaluates --
# a chain's Jacobians, a block of vectors, a map programme's layers -- is a
# Link.  Propagation (_propagate), bracketing (_bracket), accumulation
# (_accumulate) and the map programme (_program) all read this record and
# this kind enum; nothing else describes a link.
#
# Adding a kind of link: a kernel (C in csrc/, selected in link_apply_rows
# below or, for dense layouts, in _kernels/_blas), one value here, its cost
# entry in _bracket.pyx, its bind rule in _bind.pyx.  See the README's
# Design section.
cimport numpy as cnp
from cython cimport floating
from libc.stdint cimport int64_t

# Kinds (also the _gc_kind of the operator classes in operators.py).
cpdef enum LinkKind:
    LINK_DENSE = 0            # J (m x n) at data, strides rs, cs (elements)
    LINK_DIAG = 1             # diag(d), d with stride ds
    LINK_SCALED_IDENTITY = 2  # scale * I
    LINK_DIAG_RANK1 = 3       # diag(d) + scale u v^T, strides ds, us, vs
    LINK_IDENTITY = 4         # I (a scaled identity of scale 1: the bind
                              # rule gives it this kind; products are free)
    LINK_ELEMENTWISE = 5      # map programme layer: diag(f'(x)) per row,
                              # x rows at d, y = f(x) rows at u (contiguous
                              # B x n), code and scale (its parameter)
    LINK_SOFTMAX = 6          # diag(s) - s s^T per row, s rows at u
    LINK_LOG_SOFTMAX = 7      # I - 1 s^T per row, log s rows at u
    LINK_CSR = 8              # sparse, m compressed rows: values at data,
                              # row pointers at ptr (m + 1), column indices
                              # at idx, isize bytes each, nnz entries
    LINK_CSC = 9              # sparse, n compressed columns: the same
                              # fields, n + 1 column pointers, row indices
    LINK_OPERATOR = 10        # matrix-free: obj is an OperatorCall
                              # (_link.pyx) that calls the user's
                              # matvec/rmatvec (with the GIL); code 1:
                              # transposed

cdef struct Link:
    int kind
    Py_ssize_t m, n           # applies as an m x n matrix: n inputs, m outputs
    const char *data          # dense: element [0, 0] (of sample 0)
    Py_ssize_t rs, cs         # dense: strides in elements (any sign, may be 0)
    bint per_sample           # dense (B, m, n): one Jacobian per sample,
    Py_ssize_t bs             # sample b's at data + b * bs elements
    const char *d             # structured and layer kinds: vectors (or rows)
    const char *u
    const char *v
    Py_ssize_t ds, us, vs     # their strides in elements
    double scale              # scaled identity c, rank-one c, layer param
    int code                  # elementwise layer: the gc_maps.h code
    const char *lo            # [lo, hi): the bytes the link's arrays may
    const char *hi            # touch (for out= overlap checks)
    const char *ptr           # sparse: compressed pointers
    const char *idx           # sparse: indices
    int isize                 # sparse: bytes of an index, 4 or 8
    Py_ssize_t nnz            # sparse: entries, ptr's last value as bound
                              # (<= those stored): the kernels' bound
    void *obj                 # matrix-free: a borrowed OperatorCall
    const int64_t *part       # sparse: the scatter's partition of the
                              # lines (gc_sp_check), or NULL (one chunk)
    const char *tptr          # sparse, with a transpose copy (Chain(...,
    const char *tidx          # transpose_copies=True)): the same matrix in
    const char *tdata         # the other compressed format (a CSR's CSC),
    int tisize                # so that what would scatter gathers; NULL
    Py_ssize_t tnnz           # otherwise.  Its entries: tnnz


# A clear link: every field zero or NULL, of the given kind and shape.
cdef inline Link link_clear(int kind, Py_ssize_t m, Py_ssize_t n) noexcept nogil:
    cdef Link L
    L.kind = kind
    L.m = m
    L.n = n
    L.data = L.d = L.u = L.v = L.lo = L.hi = NULL
    L.rs = L.cs = L.bs = L.ds = L.us = L.vs = 0
    L.per_sample = False
    L.scale = 1.0
    L.code = 0
    L.ptr = L.idx = NULL
    L.isize = 0
    L.nnz = 0
    L.obj = NULL
    L.part = NULL
    L.tptr = L.tidx = L.tdata = NULL
    L.tisize = 0
    L.tnnz = 0
    return L


# A map programme's layer: a batched, matrix-free form for propagation only
# (products take the structured links of _program._jacobian_links).
cdef inline bint link_is_layer(int kind) noexcept nogil:
    return (kind == LINK_ELEMENTWISE or kind == LINK_SOFTMAX
            or kind == LINK_LOG_SOFTMAX)


# Applied to a block only row by row through link_apply_rows (a sparse or
# matrix-free link): a product with a dense neighbour runs through it.
cdef inline bint link_by_rows(int kind) noexcept nogil:
    return kind == LINK_CSR or kind == LINK_CSC or kind == LINK_OPERATOR


# Diagonal in its effect on a neighbour in a product (scales its rows or
# columns): the cost model (_bracket) and the executor (_accumulate) ask here.
cdef inline bint link_diaglike(int kind) noexcept nogil:
    return kind == LINK_DIAG or kind == LINK_SCALED_IDENTITY


# A C-contiguous block of p rows of q values as a dense link (the block of
# vectors G of a vjp, V of a jvp, is just another factor of the product).
cdef inline Link link_block(const void *data, Py_ssize_t p,
                            Py_ssize_t q) noexcept nogil:
    cdef Link L = link_clear(LINK_DENSE, p, q)
    L.data = <const char *>data
    L.rs = q
    L.cs = 1
    return L


# J^T as a link (the factors of a jvp are J_1^T .. J_k^T): strides swap,
# (diag(d) + c u v^T)^T = diag(d) + c v u^T, a CSR matrix's arrays are its
# transpose's CSC arrays and the other way round (so are a transpose
# copy's: it stays the other format of the same arrays), and a matrix-free link
# flips its code (1: transposed, its rmatvec is the matvec).
cdef inline Link link_transposed(const Link *J) noexcept nogil:
    cdef Link L = J[0]
    L.m = J.n
    L.n = J.m
    L.rs = J.cs
    L.cs = J.rs
    if J.kind == LINK_DIAG_RANK1:
        L.u, L.us, L.v, L.vs = J.v, J.vs, J.u, J.us
    elif J.kind == LINK_CSR:
        L.kind = LINK_CSC
    elif J.kind == LINK_CSC:
        L.kind = LINK_CSR
    elif J.kind == LINK_OPERATOR:
        L.code = 1 - J.code
    return L


# Where sample b's Jacobian of a dense link starts, for elements of
# itemsize bytes (sample 0's, i.e. data, for a shared link): the one place
# that knows the per-sample offset rule.
cdef inline const char *link_sample(const Link *L, Py_ssize_t b,
                                    size_t itemsize) noexcept nogil:
    if not L.per_sample:
        return L.data
    return L.data + b * L.bs * <Py_ssize_t>itemsize


# out = J^T x (transpose) or J x for B rows of x (contiguous; m wide for
# J^T, n for J) of a link that is not dense: structured links row by row in
# O(n), the map programme's layers over the whole block, sparse links by
# csrc/gc_sparse.c on nt threads, matrix-free links through the user's
# callbacks (with the GIL).  out contiguous, not aliased.  0; -1 out of
# memory; -2 a callback failed (its exception is pending: link_raise); -3
# a sparse structure is out of bounds (changed since it was bound).
cdef int link_apply_rows(const Link *L, bint transpose, const floating *x,
                         Py_ssize_t B, floating *out, int nt) noexcept nogil

# A sparse link's part of link_apply_rows, for B rows in rows or (tiled: B
# a multiple of LINK_TILE) in tiles (csrc/gc_sparse.h: the layout of
# _propagate's runs of sparse links, link_tiles), part of a block of
# `block` rows (B for a whole block): the rule of a scatter's order.
cdef int link_apply_sparse(const Link *L, bint transpose, const floating *x,
                           Py_ssize_t B, floating *out, int nt, bint tiled,
                           Py_ssize_t block) noexcept nogil


# out (m x n, C-contiguous) = a sparse or matrix-free link as a dense
# matrix (a matrix-free one through its callbacks: the rows of J^T I).
# 0, or a code of link_apply_rows.
cdef int link_materialize(const Link *L, floating *out, int nt) noexcept nogil

# The O(nnz) structure check of a sparse link's pointers (nl + 1 of them)
# and indices (isize bytes each, nidx stored, each < nbound): 0, or the
# first failure's code and *where (csrc/gc_sparse.h, gc_sp_check_*).  With
# part (LINK_PART_LEN entries, or NULL) the same walk writes the scatter's
# partition of the lines, for Link.part.
cdef int link_sparse_check(Py_ssize_t nl, const void *ptr, const void *idx,
                           int isize, Py_ssize_t nidx, Py_ssize_t nbound,
                           Py_ssize_t *where, int64_t *part) noexcept nogil

cdef extern from "gc_sparse.h":
    enum: LINK_PART_LEN "GC_SP_PART_LEN"
    enum: LINK_PART_BAND "GC_SP_P_BAND"
    enum: LINK_TILE "GC_SP_TILE"
    enum: LINK_TILES_MIN "GC_SP_TILES_MIN"

# A sparse link's product scatters (J^T x of a CSR, J x of a CSC, without a
# transpose copy to gather over): the one place that says which.
cdef inline bint link_scatters(const Link *L, bint transpose) noexcept nogil:
    return (L.kind == LINK_CSR) == transpose and L.tptr == NULL

# The partition a scatter of a block of `block` rows sums over: the
# structure's for fewer than LINK_TILES_MIN tiles, else none (line order).
cdef inline const int64_t *link_block_part(const int64_t *part,
                                           Py_ssize_t block) noexcept nogil:
    return part if block < LINK_TILES_MIN * LINK_TILE else NULL

# nrows rows (w wide) of src into the tiles of dst (to_tiles; the rows
# past nrows of the last tile zero) or the first nrows rows of src's tiles
# back into rows (csrc/gc_sparse.h, gc_sp_tiles)
cdef void link_tiles(bint to_tiles, Py_ssize_t nrows, Py_ssize_t w,
                     const floating *src, floating *dst, int nt) noexcept nogil


# A sparse link's bandwidth (the largest |line - index| of an entry, from
# its check), or the larger dimension when it has no partition record.
cdef inline Py_ssize_t link_bandwidth(const Link *L) noexcept nogil:
    if L.part != NULL:
        return <Py_ssize_t>L.part[LINK_PART_BAND]
    return L.m if L.m > L.n else L.n

# A sparse or diagonal-like link as a factor of a sparse product
# (_accumulate.run_sparse_product): a scipy.sparse matrix over the link's
# own arrays (read-only views, the structure checked again; scipy imported
# here) for a sparse or diagonal link, a float for c I, None for I;
# typenum: the chain's dtype.
cdef object link_sparse_matrix(const Link *L, int typenum)

# After an executor returned rc != 0: raise what failed -- the pending
# exception of a matrix-free link's callback (rc -2), ValueError for a
# sparse structure gone out of bounds (-3), else MemoryError(msg).
cdef int link_raise(int rc, str msg) except -1


# A matrix-free link's callbacks (see _link.pyx); _bind builds them.
cdef class OperatorCall:
    cdef readonly object op
    cdef readonly Py_ssize_t index, m, n
    cdef object _mv, _rmv, _mm, _rmm
    cdef int apply(self, bint rmat, const char *x, Py_ssize_t B, char *out,
                   int typenum) except -1
    cdef _store(self, cnp.ndarray dst, object res, tuple want, str name)
