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
from cython cimport floating

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
    return L


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
# and (diag(d) + c u v^T)^T = diag(d) + c v u^T.
cdef inline Link link_transposed(const Link *J) noexcept nogil:
    cdef Link L = J[0]
    L.m = J.n
    L.n = J.m
    L.rs = J.cs
    L.cs = J.rs
    if J.kind == LINK_DIAG_RANK1:
        L.u, L.us, L.v, L.vs = J.v, J.vs, J.u, J.us
    return L


# Where sample b's Jacobian of a dense link starts, for elements of
# itemsize bytes (sample 0's, i.e. data, for a shared link): the one place
# that knows the per-sample offset rule.
cdef inline const char *link_sample(const Link *L, Py_ssize_t b,
                                    size_t itemsize) noexcept nogil:
    if not L.per_sample:
        return L.data
    return L.data + b * L.bs * <Py_ssize_t>itemsize


# out = J^T x (transpose) or J x for B rows of x (contiguous, n_in wide) of
# a link that is not dense: structured links row by row in O(n), the map
# programme's layers over the whole block.  out contiguous, not aliased.
cdef void link_apply_rows(const Link *L, bint transpose, const floating *x,
                          Py_ssize_t B, floating *out) noexcept nogil
