"""Binding a chain of dense Jacobians, and the fused chain loops.

``ChainCore`` validates a chain once, records each link as a pointer plus
strides into the caller's own array (no copy), and then evaluates

    vjp:  J_1^T J_2^T ... J_k^T g        jvp:  J_k ... J_2 J_1 v

for one vector or a C-contiguous block of vectors in a single ``nogil`` call
that ping-pongs between two work buffers, with no Python between links.
Validation of the arguments happens here, before the GIL is released, in
one pass of C-level checks (this keeps a 16-link one-shot call in the low
microseconds).
"""
cimport numpy as cnp
import numpy as np
from libc.stdlib cimport free
from cpython.pyport cimport PY_SSIZE_T_MAX
from libc.string cimport memcpy
from cython cimport floating
from cython.parallel cimport prange, threadid

from gradchain._kernels cimport (effective_threads, link_jtv, link_jv,
                                 block_jtv, block_jv)
from gradchain._structured cimport (struct_apply, LINK_DENSE, LINK_DIAG,
                                    LINK_SCALED_IDENTITY, LINK_DIAG_RANK1)
from gradchain._accumulate cimport (Factor, F_DENSE, F_DIAG, F_SCALED,
                                    F_IDENT, F_DPR1, plan_chain, order_cost,
                                    run_chain_f, run_chain_d, ORDER_TABLE,
                                    ORDER_LEFT, ORDER_RIGHT)

cnp.import_array()

cdef extern from "gc_dense.h":
    Py_ssize_t GC_PARALLEL_MIN_ELEMS

from gradchain._sizes cimport gc_size_mul, gc_size_mul3, gc_malloc_n

cdef struct Link:
    int kind                # LINK_DENSE or a structured kind (_structured.pxd)
    const char *data        # dense: element [0, 0]; structured: d (or NULL)
    const char *u           # diagonal plus rank one: u and v (else NULL)
    const char *v
    double scale            # scaled identity, rank-one coefficient: c
    Py_ssize_t ds, us, vs   # structured: strides of d, u, v in elements
    Py_ssize_t m, n         # J has shape (m, n): m outputs, n inputs
    Py_ssize_t rs, cs       # dense: strides in elements (any sign, may be 0)
    bint per_sample         # dense (B, m, n): one Jacobian per sample,
    Py_ssize_t bs           # sample b's at data + b * bs (elements)
    const char *lo          # [lo, hi): the bytes the link's arrays may touch
    const char *hi

cdef object _DT_FLOAT = np.dtype(np.float32)
cdef object _DT_DOUBLE = np.dtype(np.float64)


cdef int _compute_typenum(object dtype, str name) except -1:
    """The float type an input of this dtype is computed in.

    float32 (and float16) -> float32; float64, integers and bool -> float64.
    Complex, long double, object, strings and other dtypes raise TypeError.
    """
    cdef str kind = dtype.kind
    if kind == "f":
        if dtype.itemsize <= 4:
            return cnp.NPY_FLOAT
        if dtype.itemsize == 8:
            return cnp.NPY_DOUBLE
        raise TypeError(
            f"{name} has dtype {dtype}; gradchain computes in float32 or "
            f"float64 and will not silently round {dtype}: cast it "
            f"explicitly with .astype(np.float64)")
    if kind in "biu":
        return cnp.NPY_DOUBLE
    if kind == "c":
        raise TypeError(
            f"{name} has complex dtype {dtype}; gradchain supports real "
            f"float32/float64 chains only")
    raise TypeError(
        f"{name} has dtype {dtype}, which is not numeric; gradchain needs "
        f"real floating-point (float32/float64), integer or bool arrays")


def compute_dtype(dtype, str name):
    """The dtype (float32 or float64) that an input of ``dtype`` computes in,
    by gradchain's dtype rule; TypeError naming ``name`` otherwise.  The one
    implementation of the rule, shared by operators.py and maps.py."""
    return _DT_DOUBLE if _compute_typenum(np.dtype(dtype), name) == cnp.NPY_DOUBLE \
        else _DT_FLOAT


cdef inline object _pyshape(object a):
    return a.shape


cdef tuple _c_shape(cnp.ndarray a):
    """The array's dimensions as the C struct holds them."""
    return tuple(cnp.PyArray_DIM(a, i) for i in range(cnp.PyArray_NDIM(a)))


cdef _reject_masked(object a, str name):
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a masked array; gradchain does not apply masks: pass "
            f"{name}.filled(0) (or .data to use the values under the mask)")


cdef cnp.ndarray _as_array(object x, str name):
    """x as an ndarray, read in place when it is one: the one conversion of
    every input (chains, operators, maps, losses, callback outputs).  Masked
    arrays are refused whatever their dtype: gradchain would not apply the
    mask."""
    if type(x) is np.ndarray:
        return <cnp.ndarray>x
    _reject_masked(x, name)
    if isinstance(x, cnp.ndarray):
        return <cnp.ndarray>x
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as exc:
        raise TypeError(
            f"{name} could not be converted to a numeric array "
            f"(ragged or not array-like): {exc}") from exc


def as_array(x, str name):
    """The one conversion rule for inputs (see _as_array), for the Python
    layer (operators.py, maps.py)."""
    return _as_array(x, name)


cdef inline bint _usable(cnp.ndarray a, int typenum):
    """a can be read in place by the kernels as typenum."""
    return (cnp.PyArray_TYPE(a) == typenum
            and cnp.PyArray_ISALIGNED(a) and cnp.PyArray_ISNOTSWAPPED(a))


cdef void _extent(cnp.ndarray a, const char **lo, const char **hi) noexcept:
    """Smallest byte range [lo, hi) holding every element of a."""
    cdef int d, nd = cnp.PyArray_NDIM(a)
    cdef cnp.npy_intp *shape = cnp.PyArray_DIMS(a)
    cdef cnp.npy_intp *strides = cnp.PyArray_STRIDES(a)
    cdef const char *p = <const char *>cnp.PyArray_DATA(a)
    cdef Py_ssize_t low = 0, high = 0, span
    for d in range(nd):
        if shape[d] == 0:
            lo[0] = p
            hi[0] = p
            return
        span = (shape[d] - 1) * strides[d]
        if span < 0:
            low += span
        else:
            high += span
    lo[0] = p + low
    hi[0] = p + high + cnp.PyArray_ITEMSIZE(a)


cdef inline bint _boxes_overlap(const char *lo1, const char *hi1,
                                const char *lo2, const char *hi2) noexcept:
    return lo1 < hi2 and lo2 < hi1 and lo1 < hi1 and lo2 < hi2


cdef bint _shares_memory(object a, object b):
    """Exact test, for arrays whose byte ranges overlap (strided views can
    interleave without sharing); undecidable within the work bound counts
    as shared."""
    try:
        return np.shares_memory(a, b, max_work=100000)
    except np.exceptions.TooHardError:
        return True


cdef inline const Link *_link_at(const Link *links, Py_ssize_t k,
                                 Py_ssize_t step, bint transpose) noexcept nogil:
    """The link applied at this step: vjp walks the chain from the end."""
    return &links[k - 1 - step if transpose else step]


cdef int _per_sample_run(const Link *links, Py_ssize_t k, Py_ssize_t s0,
                         Py_ssize_t s1, bint transpose, const floating *x,
                         Py_ssize_t B, Py_ssize_t maxw, floating *dst,
                         int nt) noexcept nogil:
    """Steps s0 <= step < s1 of the chain, all per-sample (B, m, n) links:
    rows of x (the input of step s0) in, rows of dst (the output of step
    s1 - 1, compact) out; dst must not overlap x.

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
    if s1 - s0 > 1:
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
            else:
                nxt = mine + ((step - s0) & 1) * (per // 2)
            for b in range(b0, b1):
                if transpose:
                    err += link_jtv(<const floating *>L.data + b * L.bs, L.m,
                                    L.n, L.rs, L.cs, cur + (b - b0) * nin,
                                    nxt + (b - b0) * nout, 1) != 0
                else:
                    err += link_jv(<const floating *>L.data + b * L.bs, L.m,
                                   L.n, L.rs, L.cs, cur + (b - b0) * nin,
                                   nxt + (b - b0) * nout, 1) != 0
            cur = nxt
    free(scratch)
    return -1 if err else 0


cdef int _run(const Link *links, Py_ssize_t k, Py_ssize_t maxw,
              bint transpose, const floating *x, Py_ssize_t B,
              floating *out, int nt) noexcept nogil:
    """The fused chain loop: out = x J_k ... J_1 (transpose, vjp) or
    out = x J_1^T ... J_k^T (jvp), row by row for B rows of x.

    Intermediate rows alternate between two halves of one allocation (each
    step writes the half it does not read); the last link writes straight
    into out.  A run of consecutive per-sample links is one step here (see
    _per_sample_run).  Returns 0, or -1 when out of memory.
    """
    cdef Py_ssize_t step, s1, b, half = B * maxw
    cdef floating *work = NULL
    cdef floating *dst
    cdef const floating *cur = x
    cdef const Link *L
    cdef int rc = 0, which = 0
    if B == 0:
        return 0
    if k == 0:
        return 0    # handled by the caller (a copy)
    if k > 1 and half > 0:
        # 2 * B * maxw elements: the caller checked the byte count
        work = <floating *>gc_malloc_n(2 * half, sizeof(floating))
        if work == NULL:
            return -1
    step = 0
    while step < k:
        L = _link_at(links, k, step, transpose)
        s1 = step + 1
        if L.per_sample:
            while s1 < k and _link_at(links, k, s1, transpose).per_sample:
                s1 += 1
        dst = out if s1 == k else work + which * half
        if L.per_sample:
            rc = _per_sample_run(links, k, step, s1, transpose, cur, B, maxw,
                                 dst, nt)
        elif L.kind != LINK_DENSE:
            for b in range(B):
                struct_apply(L.kind, L.n, <const floating *>L.data, L.ds,
                             <const floating *>L.u, L.us,
                             <const floating *>L.v, L.vs,
                             L.scale, transpose, cur + b * L.n, dst + b * L.n)
        elif transpose:
            if B == 1:
                rc = link_jtv(<const floating *>L.data, L.m, L.n, L.rs, L.cs,
                              cur, dst, nt)
            else:
                rc = block_jtv(<const floating *>L.data, L.m, L.n, L.rs,
                               L.cs, cur, B, dst, nt)
        else:
            if B == 1:
                rc = link_jv(<const floating *>L.data, L.m, L.n, L.rs, L.cs,
                             cur, dst, nt)
            else:
                rc = block_jv(<const floating *>L.data, L.m, L.n, L.rs,
                              L.cs, cur, B, dst, nt)
        if rc:
            break
        cur = dst
        which ^= 1
        step = s1
    free(work)
    return rc


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
# strategies shared across chains of the same shape (bounded: tables of at
# most 256^2 ints, at most 256 entries)
cdef dict _STRATEGIES = {}
cdef Py_ssize_t _CACHE_MAX_FACTORS = 256
cdef Py_ssize_t _CACHE_MAX_ENTRIES = 256


cdef tuple _choose_strategy(const Factor *f, Py_ssize_t m, bint single):
    """(order, cost, l2r, r2l) for the product f[0] ... f[m-1]; order is
    "left", "right" (the plain orders) or the programme's bracketing table.

    single: f[0] is one vector (a vjp/jvp of batch 1), which propagates
    link by link: the fused loop of _run, with no planning in the call
    (pre-multiplying links can save multiply-adds for one vector only
    around a link narrower than its neighbours, and a one-shot call could
    not pay for finding out)."""
    cdef double cost, l2r, r2l, steps, dm = <double>m
    cdef int *sp
    with nogil:
        l2r = order_cost(f, m, True)
        r2l = order_cost(f, m, False)
    if m <= 2 or single:
        return "left", l2r, l2r, r2l
    steps = dm * dm * dm / 6.0
    if steps <= _DP_FREE_STEPS or steps * _DP_STEP_MADDS <= min(l2r, r2l):
        split = np.empty(m * m, dtype=np.intc)
        sp = <int *>cnp.PyArray_DATA(split)
        with nogil:
            cost = plan_chain(f, m, sp)
        if cost < 0:
            raise MemoryError("could not allocate the bracketing tables")
        if cost < l2r:
            return split, cost, l2r, r2l
        return "left", l2r, l2r, r2l
    if r2l < l2r:
        return "right", r2l, l2r, r2l
    return "left", l2r, l2r, r2l


cdef int _order_of(object order):
    """The executor's order code for a strategy's order."""
    if isinstance(order, str):
        return ORDER_LEFT if order == "left" else ORDER_RIGHT
    return ORDER_TABLE


cdef const int *_table_of(object order):
    """The bracketing table of a strategy's order (NULL for plain orders)."""
    if isinstance(order, str):
        return NULL
    return <const int *>cnp.PyArray_DATA(<cnp.ndarray>order)


# what each structured kind binds: its number of vectors
cdef dict _OPERATOR_VECTORS = {LINK_DIAG: 1, LINK_SCALED_IDENTITY: 0,
                               LINK_DIAG_RANK1: 3}


cdef tuple _operator_record(object op, object kind, Py_ssize_t i):
    """(kind, n, vectors, scale, typenum) of an operator link, validated
    (typenum: what its vectors compute in, -1 when it has none): everything
    the kernels will read comes from here, checked against the operator's
    shape, so an operator (or a subclass) that lies about itself raises
    instead of making the kernels read past a vector."""
    cdef str name = f"jacobians[{i}]"
    cdef cnp.ndarray a
    if kind not in _OPERATOR_VECTORS:
        raise TypeError(
            f"{name} is a {type(op).__name__}, an Operator the compiled chain "
            f"does not know; pass its dense form (Dense(op.todense())) or use "
            f"one of Dense, Diagonal, Identity, DiagonalPlusRankOne")
    shape = op.shape
    if (not isinstance(shape, tuple) or len(shape) != 2
            or not all(isinstance(d, (int, np.integer))
                       and not isinstance(d, (bool, np.bool_)) for d in shape)):
        raise TypeError(f"{name} ({type(op).__name__}) has shape {shape!r}; "
                        f"an operator's shape is a tuple of two ints")
    n = int(shape[0])
    if shape[1] != n or not 0 <= n <= PY_SSIZE_T_MAX:
        raise ValueError(f"{name} ({type(op).__name__}) has shape {shape}; a "
                         f"structured operator is square, n x n with "
                         f"0 <= n <= {PY_SSIZE_T_MAX}")
    cdef int t, typenum = -1
    vectors = tuple(op._gc_vectors())
    if len(vectors) != _OPERATOR_VECTORS[kind]:
        raise ValueError(f"{name} ({type(op).__name__}) gave {len(vectors)} "
                         f"vectors; its kind binds {_OPERATOR_VECTORS[kind]}")
    for j, vec in enumerate(vectors):
        a = _as_array(vec, f"{name}'s vector {j}")
        if cnp.PyArray_NDIM(a) != 1 or cnp.PyArray_DIM(a, 0) != n:
            raise ValueError(f"{name} ({type(op).__name__}) has shape {shape} "
                             f"but its vector {j} has shape {_pyshape(a)}, "
                             f"expected ({n},)")
        t = _compute_typenum(a.dtype, f"{name}'s vector {j}")
        if t == cnp.NPY_DOUBLE or typenum == -1:
            typenum = t
        vectors = vectors[:j] + (a,) + vectors[j + 1:]
    scale = op._gc_scale()
    if isinstance(scale, (bool, np.bool_)) or not isinstance(
            scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} ({type(op).__name__}) has scale {scale!r}; "
                        f"expected a real number")
    return (kind, n, vectors, float(scale), typenum)


cdef class ChainCore:
    """Compiled core of :class:`gradchain.Chain` (see there)."""

    cdef Link *_links
    cdef Py_ssize_t _k
    cdef Py_ssize_t _maxw          # widest intermediate dimension
    cdef bint _has_zero            # some n_i is 0: every product is zeros
    cdef int _typenum              # NPY_FLOAT / NPY_DOUBLE; -1 when no link
                                   # sets it (k == 0, identities only)
    cdef tuple _arrays             # the bound 2-D arrays and operators
    cdef object _stack             # the 3-D array the links view, or None
    cdef list _keep                # operator vectors converted for the kernels
    cdef tuple _opvecs             # per link: the operator's validated record
                                   # (_operator_record), or None
    cdef tuple _sources            # each link as the caller gave it
    cdef bint _converted           # some link is bound to a converted copy
    cdef dict _plan_cache          # (mode, batch) -> (order, cost, l2r, r2l)
    cdef Py_ssize_t _batch         # per-sample links' batch size, or -1
    cdef Py_ssize_t _batch_from    # the first per-sample link

    def __cinit__(self, *args, **kwargs):
        self._links = NULL
        self._k = 0
        self._maxw = 0
        self._typenum = -1
        self._stack = None
        self._keep = []
        self._opvecs = None
        self._converted = False
        self._plan_cache = {}
        self._batch = -1
        self._batch_from = -1
        if len(args) + len(kwargs) != 1 or (kwargs and "jacobians" not in kwargs):
            raise TypeError(
                f"{type(self).__name__}() takes exactly one argument, "
                f"jacobians (a sequence of 2-D arrays or one 3-D array)")
        self._bind(args[0] if args else kwargs["jacobians"])

    def __reduce__(self):
        return (type(self), (self._stack if self._stack is not None
                             else list(self._arrays),))

    def __dealloc__(self):
        free(self._links)

    cdef _bind(self, jacobians):
        cdef list items
        cdef cnp.ndarray a
        cdef Py_ssize_t i, k
        cdef int t, typenum = -1
        if isinstance(jacobians, (str, bytes, dict, set, frozenset)):
            raise TypeError(
                f"jacobians must be a sequence of 2-D arrays or one 3-D "
                f"array, got {type(jacobians).__name__}")
        if isinstance(jacobians, cnp.ndarray) or (
                not isinstance(jacobians, (list, tuple))
                and hasattr(jacobians, "__array__")):
            a = _as_array(jacobians, "jacobians")
            if a.ndim == 3:
                self._bind_stack(a)
                return
            if a.ndim == 2 and a.dtype != object:
                raise ValueError(
                    f"jacobians is a single 2-D array of shape {_pyshape(a)}; "
                    f"pass [J] for a one-link chain, or a 3-D array of "
                    f"shape (k, m, n) for a stacked chain")
            if a.dtype != object:
                raise ValueError(
                    f"jacobians as one array must be 3-D (k, m, n), got "
                    f"shape {_pyshape(a)}")
            if a.ndim == 0:
                raise TypeError(
                    "jacobians must be a sequence of 2-D arrays or one 3-D "
                    "array, got a 0-d object array")
            items = list(a)
        elif isinstance(jacobians, list):
            # a copy: converting an item can run user code (__array__) that
            # changes the caller's list
            items = list(<list>jacobians)
        elif isinstance(jacobians, tuple):
            items = list(<tuple>jacobians)
        else:
            try:
                items = list(jacobians)
            except TypeError:
                raise TypeError(
                    f"jacobians must be a sequence of 2-D arrays or one 3-D "
                    f"array, got {type(jacobians).__name__}") from None
        k = len(items)
        # Pass 1: arrays or operators, ranks and the common dtype.
        arrays = [None] * k
        opvecs = [None] * k
        cdef Py_ssize_t batch = -1, batch_from = -1
        for i in range(k):
            item = items[i]
            if not isinstance(item, cnp.ndarray):
                kind = getattr(type(item), "_gc_kind", None)
                if kind == LINK_DENSE:
                    matrix = getattr(item, "matrix", None)
                    if matrix is None:
                        raise TypeError(
                            f"jacobians[{i}] ({type(item).__name__}) is a dense "
                            f"operator without a matrix")
                    item = matrix
                elif kind is not None:
                    rec = _operator_record(item, kind, i)
                    arrays[i] = item
                    opvecs[i] = rec
                    t = rec[4]
                    if t == cnp.NPY_DOUBLE or (typenum == -1 and t != -1):
                        typenum = t
                    continue
            a = _as_array(item, f"jacobians[{i}]")
            if cnp.PyArray_NDIM(a) == 3:
                # per-sample: one Jacobian per row of the batch
                if batch == -1:
                    batch, batch_from = cnp.PyArray_DIM(a, 0), i
                elif cnp.PyArray_DIM(a, 0) != batch:
                    raise ValueError(
                        f"jacobians[{i}] holds {cnp.PyArray_DIM(a, 0)} "
                        f"per-sample Jacobians (shape {_pyshape(a)}) but "
                        f"jacobians[{batch_from}] holds {batch}")
            elif cnp.PyArray_NDIM(a) != 2:
                raise ValueError(
                    f"jacobians[{i}] must be a 2-D array of shape "
                    f"(n_{i + 1}, n_{i}), or 3-D (batch, n_{i + 1}, n_{i}) "
                    f"for per-sample Jacobians, got shape {_pyshape(a)}")
            t = cnp.PyArray_TYPE(a)
            if t != cnp.NPY_DOUBLE and t != cnp.NPY_FLOAT:
                t = _compute_typenum(a.dtype, f"jacobians[{i}]")
            if t == cnp.NPY_DOUBLE or typenum == -1:
                typenum = t
            arrays[i] = a
        # Pass 2: conversions where unavoidable, then the link table.
        dtype = _DT_DOUBLE if typenum == cnp.NPY_DOUBLE else _DT_FLOAT
        self._sources = tuple(arrays)
        for i in range(k):
            if isinstance(arrays[i], cnp.ndarray):
                a = <cnp.ndarray>arrays[i]
                # a zero-size link is never read (a product through it is
                # zeros): bound as it is, whatever the declared sizes, which
                # NumPy may refuse to allocate in another dtype
                if not _usable(a, typenum) and cnp.PyArray_SIZE(a) > 0:
                    arrays[i] = np.require(a, dtype, "A")
                    self._converted = True
        self._alloc(k, typenum)
        for i in range(k):
            if isinstance(arrays[i], cnp.ndarray):
                self._set_link(i, <cnp.ndarray>arrays[i])
            else:
                self._set_operator(i, opvecs[i], dtype)
        self._arrays = tuple(arrays)
        self._opvecs = tuple(opvecs)
        self._batch = batch
        self._batch_from = batch_from
        self._check_dims()

    cdef _set_operator(self, Py_ssize_t i, tuple rec, dtype):
        """Link i from an operator's validated record (_operator_record)."""
        cdef Link *L = &self._links[i]
        cdef cnp.ndarray a
        cdef const char *lo
        cdef const char *hi
        cdef const char *ptrs[3]
        cdef Py_ssize_t strd[3]
        cdef int j, typenum = cnp.NPY_DOUBLE if dtype == _DT_DOUBLE else cnp.NPY_FLOAT
        kind, n, vectors, scale = rec[:4]
        L.kind = kind
        L.per_sample = False
        L.bs = 0
        L.m = L.n = n
        L.rs = L.cs = 0
        L.scale = scale
        L.lo = L.hi = NULL
        ptrs[0] = ptrs[1] = ptrs[2] = NULL
        strd[0] = strd[1] = strd[2] = 0
        for j, vec in enumerate(vectors):
            # read in place when it has the chain's dtype (any stride), else
            # an aligned copy (O(n)); the bound array is kept alive here,
            # whatever later happens to op's attributes
            a = vec if _usable(vec, typenum) else np.require(vec, dtype, "A")
            self._keep.append(a)
            if a is not vec:
                self._converted = True
            strd[j] = cnp.PyArray_STRIDE(a, 0) // cnp.PyArray_ITEMSIZE(a)
            ptrs[j] = <const char *>cnp.PyArray_DATA(a)
            _extent(<cnp.ndarray>vec if isinstance(vec, cnp.ndarray) else a,
                    &lo, &hi)
            if L.lo == NULL or lo < L.lo:
                L.lo = lo
            if L.hi == NULL or hi > L.hi:
                L.hi = hi
        L.data, L.u, L.v = ptrs[0], ptrs[1], ptrs[2]
        L.ds, L.us, L.vs = strd[0], strd[1], strd[2]

    cdef _bind_stack(self, cnp.ndarray a):
        cdef int typenum = _compute_typenum(a.dtype, "jacobians")
        cdef Py_ssize_t i, k = a.shape[0]
        cdef Link *L
        src = a
        if not _usable(a, typenum) and cnp.PyArray_SIZE(a) > 0:
            a = np.require(
                a, _DT_DOUBLE if typenum == cnp.NPY_DOUBLE else _DT_FLOAT, "A")
        self._alloc(k, typenum)
        cdef Py_ssize_t isz = cnp.PyArray_ITEMSIZE(a)
        cdef cnp.npy_intp *st = cnp.PyArray_STRIDES(a)
        cdef const char *base = <const char *>cnp.PyArray_DATA(a)
        cdef const char *lo
        cdef const char *hi
        _extent(a, &lo, &hi)
        for i in range(k):
            L = &self._links[i]
            L.kind = LINK_DENSE
            L.u = L.v = NULL
            L.scale = 1.0
            L.ds = L.us = L.vs = 0
            L.per_sample = False
            L.bs = 0
            L.data = base + i * st[0]
            L.m = a.shape[1]
            L.n = a.shape[2]
            L.rs = st[1] // isz
            L.cs = st[2] // isz
            L.lo = lo
            L.hi = hi
        self._stack = a
        self._arrays = None
        self._sources = (src,) * k
        self._converted = src is not a
        self._check_dims()

    cdef _alloc(self, Py_ssize_t k, int typenum):
        self._k = k
        self._typenum = typenum
        if k > 0:
            self._links = <Link *>gc_malloc_n(k, sizeof(Link))
            if self._links == NULL:
                raise MemoryError()

    cdef _set_link(self, Py_ssize_t i, cnp.ndarray a):
        cdef Link *L = &self._links[i]
        cdef Py_ssize_t isz = cnp.PyArray_ITEMSIZE(a)
        cdef int o = cnp.PyArray_NDIM(a) - 2     # 1 for per-sample links
        L.kind = LINK_DENSE
        L.u = L.v = NULL
        L.scale = 1.0
        L.ds = L.us = L.vs = 0
        L.per_sample = o == 1
        L.bs = cnp.PyArray_STRIDE(a, 0) // isz if o == 1 else 0
        L.data = <const char *>cnp.PyArray_DATA(a)
        L.m = cnp.PyArray_DIM(a, o)
        L.n = cnp.PyArray_DIM(a, o + 1)
        L.rs = cnp.PyArray_STRIDE(a, o) // isz
        L.cs = cnp.PyArray_STRIDE(a, o + 1) // isz
        _extent(a, &L.lo, &L.hi)

    cdef _check_dims(self):
        cdef Py_ssize_t i
        self._maxw = 0
        self._has_zero = False
        for i in range(self._k):
            if self._links[i].m == 0 or self._links[i].n == 0:
                self._has_zero = True
        for i in range(1, self._k):
            if self._links[i].n != self._links[i - 1].m:
                raise ValueError(
                    f"jacobians[{i}] has shape "
                    f"({self._links[i].m}, {self._links[i].n}) but "
                    f"jacobians[{i - 1}] outputs {self._links[i - 1].m} "
                    f"values")
            if self._links[i].n > self._maxw:
                self._maxw = self._links[i].n

    cdef tuple _link_arrays(self, Py_ssize_t i):
        """The arrays behind link i, as bound and as the caller gave them
        (for the out= overlap check)."""
        if self._stack is not None:
            if self._sources[i] is self._stack:
                return (self._stack[i],)
            return (self._stack[i], self._sources[i][i])
        if self._opvecs[i] is not None:
            # the vectors bound at construction, whatever the operator's
            # attributes say now (converted copies are the chain's own)
            return self._opvecs[i][2]
        return tuple(a for a in (self._arrays[i], self._sources[i])
                     if isinstance(a, cnp.ndarray))

    # ---------------------------------------------------------------- info

    def __len__(self):
        return self._k

    @property
    def shapes(self):
        """Tuple of the links' shapes (n_i, n_{i-1}), in application order."""
        return tuple((self._links[i].m, self._links[i].n)
                     for i in range(self._k))

    @property
    def dims(self):
        """(n_0, n_1, ..., n_k); empty for k = 0."""
        if self._k == 0:
            return ()
        return (self._links[0].n,) + tuple(self._links[i].m
                                           for i in range(self._k))

    @property
    def input_dim(self):
        """n_0, the length of a tangent (None for k = 0: any length)."""
        return self._links[0].n if self._k else None

    @property
    def output_dim(self):
        """n_k, the length of a cotangent (None for k = 0: any length)."""
        return self._links[self._k - 1].m if self._k else None

    @property
    def dtype(self):
        """float32 or float64, the dtype the chain computes in (None, k = 0)."""
        if self._typenum == cnp.NPY_DOUBLE:
            return _DT_DOUBLE
        if self._typenum == cnp.NPY_FLOAT:
            return _DT_FLOAT
        return None

    @property
    def jacobians(self):
        """The bound Jacobians: the caller's arrays and operators themselves
        (views of the stacked array for a 3-D input), or converted copies
        where the dtype rule required one."""
        if self._stack is not None:
            return tuple(self._stack)
        return self._arrays

    # ------------------------------------------------------ accumulation

    cdef void _fill_factors(self, Factor *f, str mode, Py_ssize_t B,
                            const char *block, Py_ssize_t sample=0):
        """The product as factors: jacobian [J_k .. J_1]; vjp [G, J_k .. J_1];
        jvp [V, J_1^T .. J_k^T] (G, V: C-contiguous blocks of B rows)."""
        cdef Py_ssize_t k = self._k, i, j, off = 0
        cdef const Link *L
        cdef Factor *F
        cdef bint tr = mode == "jvp"
        if mode != "jacobian":
            F = &f[0]
            F.kind = F_DENSE
            F.p = B
            F.q = self._links[k - 1].m if mode == "vjp" else self._links[0].n
            F.data = block
            F.rs = F.q
            F.cs = 1
            F.d = F.u = F.v = NULL
            F.ds = F.us = F.vs = 0
            F.coef = 1.0
            off = 1
        for j in range(k):
            i = j if tr else k - 1 - j
            L = &self._links[i]
            F = &f[off + j]
            F.d = F.u = F.v = NULL
            F.ds = F.us = F.vs = 0
            F.data = NULL
            F.rs = F.cs = 0
            F.coef = L.scale
            if tr:
                F.p = L.n
                F.q = L.m
            else:
                F.p = L.m
                F.q = L.n
            if L.kind == LINK_DENSE:
                F.kind = F_DENSE
                F.data = L.data
                if L.per_sample:
                    F.data = L.data + sample * L.bs * (
                        4 if self._typenum == cnp.NPY_FLOAT else 8)
                if tr:
                    F.rs = L.cs
                    F.cs = L.rs
                else:
                    F.rs = L.rs
                    F.cs = L.cs
            elif L.kind == LINK_DIAG:
                F.kind = F_DIAG
                F.d, F.ds = L.data, L.ds
            elif L.kind == LINK_SCALED_IDENTITY:
                F.kind = F_IDENT if L.scale == 1.0 else F_SCALED
            else:
                F.kind = F_DPR1
                F.d, F.ds = L.data, L.ds
                if tr:      # (diag(d) + c u v^T)^T = diag(d) + c v u^T
                    F.u, F.us, F.v, F.vs = L.v, L.vs, L.u, L.us
                else:
                    F.u, F.us, F.v, F.vs = L.u, L.us, L.v, L.vs

    cdef tuple _get_plan(self, str mode, Py_ssize_t B):
        """The strategy for (mode, B): (order, cost, l2r, r2l), where order
        is the programme's bracketing table, "right" (right to left) or
        "left" (left to right; for vjp/jvp: propagating the block link by
        link, the fused loop of _run).  The one place
        that decides what runs; cached per (mode, B) for the chain's life
        and, for small tables, per chain shape across chains (one-shot
        calls of the same shapes plan once)."""
        key = (mode, B)
        cached = self._plan_cache.get(key)
        if cached is not None:
            return cached
        cdef Py_ssize_t m = self._k + (0 if mode == "jacobian" else 1), i
        cdef Factor *f = <Factor *>gc_malloc_n(m, sizeof(Factor))
        cdef Py_ssize_t *sig
        if f == NULL:
            raise MemoryError()
        try:
            self._fill_factors(f, mode, B, NULL)
            if mode != "jacobian" and B <= 1:
                cached = _choose_strategy(f, m, True)   # O(m), no search
            else:
                # the shape signature: what the strategy depends on
                sigb = bytearray(3 * m * sizeof(Py_ssize_t))
                sig = <Py_ssize_t *><char *>sigb
                for i in range(m):
                    sig[3 * i] = f[i].kind
                    sig[3 * i + 1] = f[i].p
                    sig[3 * i + 2] = f[i].q
                gkey = (mode, B, bytes(sigb))
                cached = _STRATEGIES.get(gkey)
                if cached is None:
                    cached = _choose_strategy(f, m, False)
                    if m <= _CACHE_MAX_FACTORS:
                        if len(_STRATEGIES) >= _CACHE_MAX_ENTRIES:
                            _STRATEGIES.clear()
                        _STRATEGIES[gkey] = cached
        finally:
            free(f)
        if len(self._plan_cache) < 64:
            self._plan_cache[key] = cached
        return cached

    cdef _run_plan(self, split, bint transpose, cnp.ndarray x, Py_ssize_t B,
                   cnp.ndarray dst, int typenum, Py_ssize_t sample=0):
        cdef str mode = "jacobian" if x is None else ("vjp" if transpose else "jvp")
        cdef Py_ssize_t m = self._k + (0 if x is None else 1)
        cdef Factor *f = <Factor *>gc_malloc_n(m, sizeof(Factor))
        cdef int order = _order_of(split)
        cdef const int *sp = _table_of(split)
        cdef int rc, nt = effective_threads()
        if f == NULL:
            raise MemoryError()
        try:
            if x is None:
                self._fill_factors(f, mode, B, NULL, sample)
            else:
                self._fill_factors(f, mode, B, <const char *>cnp.PyArray_DATA(x))
            if typenum == cnp.NPY_DOUBLE:
                with nogil:
                    rc = run_chain_d(f, m, sp, <double *>cnp.PyArray_DATA(dst),
                                     nt, order)
            else:
                with nogil:
                    rc = run_chain_f(f, m, sp, <float *>cnp.PyArray_DATA(dst),
                                     nt, order)
        finally:
            free(f)
        if rc:
            raise MemoryError("could not allocate the intermediate products")

    def jacobian(self):
        """The dense Jacobian J_k ... J_1 of shape (n_k, n_0) (or, with
        per-sample links, (batch, n_k, n_0)), accumulated in the cheapest
        bracketing (see ``plan(mode="jacobian")``)."""
        cdef cnp.npy_intp dims[3]
        if self._k == 0:
            raise ValueError("the empty chain is the identity of any size; it "
                             "has no dense Jacobian")
        typenum = self._typenum if self._typenum != -1 else cnp.NPY_DOUBLE
        dims[0] = self._batch
        dims[1] = self._links[self._k - 1].m
        dims[2] = self._links[0].n
        if self._batch < 0:
            out = cnp.PyArray_EMPTY(2, &dims[1], typenum, 0)
        else:
            out = cnp.PyArray_EMPTY(3, dims, typenum, 0)
        if cnp.PyArray_SIZE(out) == 0:
            return out
        if self._has_zero:
            out[...] = 0    # through a zero-width intermediate: zeros
            return out
        split = self._get_plan("jacobian", 0)[0]
        if self._batch < 0:
            self._run_plan(split, False, None, 0, out, typenum)
            return out
        self._run_plan_samples(split, out, typenum)
        return out

    cdef _run_plan_samples(self, split, cnp.ndarray dst, int typenum):
        """dst[b] = J_k ... J_1 of sample b, for every sample.

        Where every link is at most 64 wide, so that every product of the
        plan is at most 64^3 multiply-adds (which OpenBLAS, the BLAS of the
        SciPy wheels, runs on the calling thread), the samples are split
        across threads, each running the plan single-threaded; otherwise
        samples go one at a time, each product threaded.  A sample's bits
        are the same either way."""
        cdef Py_ssize_t k = self._k, B = self._batch, b, j, w = 0, elems = 0
        cdef Py_ssize_t bstride = cnp.PyArray_STRIDE(dst, 0)
        cdef int order = _order_of(split)
        cdef const int *sp = _table_of(split)
        cdef char *base = <char *>cnp.PyArray_DATA(dst)
        cdef int nt = effective_threads(), err = 0
        cdef Factor *tmpl = NULL
        cdef Factor *fs = NULL
        cdef Factor *F
        cdef Py_ssize_t *step = NULL
        for j in range(k):
            w = max(w, self._links[j].m, self._links[j].n)
            elems += self._links[j].m * self._links[j].n
        if w > 64:          # some product may exceed 64^3 multiply-adds
            for b in range(B):
                self._run_plan(split, False, None, 0, dst[b], typenum, b)
            return
        if B * elems < GC_PARALLEL_MIN_ELEMS:
            nt = 1
        nt = <int>max(1, min(nt, B))
        tmpl = <Factor *>gc_malloc_n(k, sizeof(Factor))
        fs = <Factor *>gc_malloc_n(nt * k, sizeof(Factor))   # nt <= B, k small
        step = <Py_ssize_t *>gc_malloc_n(k, sizeof(Py_ssize_t))
        try:
            if tmpl == NULL or fs == NULL or step == NULL:
                raise MemoryError()
            # sample b's factors: sample 0's, data moved by b steps (0 for
            # shared links), the step read off sample 1's factors
            self._fill_factors(tmpl, "jacobian", 0, NULL, 0)
            self._fill_factors(fs, "jacobian", 0, NULL, 1 if B > 1 else 0)
            for j in range(k):
                step[j] = fs[j].data - tmpl[j].data if tmpl[j].data != NULL else 0
            with nogil:
                for b in prange(B, num_threads=nt, schedule="dynamic",
                                chunksize=8):
                    F = fs + threadid() * k
                    for j in range(k):
                        F[j] = tmpl[j]
                        if step[j]:
                            F[j].data = tmpl[j].data + b * step[j]
                    if typenum == cnp.NPY_DOUBLE:
                        err += run_chain_d(
                            F, k, sp, <double *>(base + b * bstride), 1,
                            order) != 0
                    else:
                        err += run_chain_f(
                            F, k, sp, <float *>(base + b * bstride), 1,
                            order) != 0
        finally:
            free(tmpl)
            free(fs)
            free(step)
        if err:
            raise MemoryError("could not allocate the intermediate products")

    @property
    def batch(self):
        """The number of per-sample Jacobians of the chain's 3-D links, or
        None when every link is shared."""
        return None if self._batch < 0 else self._batch

    cdef tuple _per_sample_plan(self, tuple plan, str mode):
        """The plan of a chain with per-sample links as it is executed.

        jacobian: the bracketing runs once per sample, so every count is
        batch times the per-sample one.  vjp/jvp: the block propagates link
        by link (row b through sample b's Jacobians), so the bracketing is
        left to right; the right-to-left baseline counts a product that
        holds a per-sample link once per sample."""
        cdef Py_ssize_t k = self._k, m = k + 1, i, j
        cdef double B = <double>self._batch, l2r, r2l
        cdef bint tr = mode == "jvp"
        cdef Factor *f
        cdef char *ps
        split, cost, l2r, r2l = plan
        if mode == "jacobian":
            return split, cost * B, l2r * B, r2l * B
        f = <Factor *>gc_malloc_n(m, sizeof(Factor))
        ps = <char *>gc_malloc_n(m, 1)
        try:
            if f == NULL or ps == NULL:
                raise MemoryError()
            self._fill_factors(f, mode, self._batch, NULL)
            ps[0] = 0
            for j in range(k):
                i = j if tr else k - 1 - j
                ps[j + 1] = self._links[i].per_sample
            l2r = order_cost(f, m, True, ps, B, True)
            r2l = order_cost(f, m, False, ps, B, True)
        finally:
            free(f)
            free(ps)
        return "left", l2r, l2r, r2l       # propagation, left to right

    def _plan_info(self, Py_ssize_t batch, str mode):
        """(order, cost, l2r, r2l, factor names) for Chain.plan (order as
        in _get_plan)."""
        if mode not in ("vjp", "jvp", "jacobian"):
            raise ValueError(f"mode must be 'vjp', 'jvp' or 'jacobian', got {mode!r}")
        if batch < 0:
            raise ValueError(f"batch must be >= 0, got {batch}")
        if self._k == 0:
            raise ValueError("the empty chain has nothing to plan")
        if self._batch >= 0 and mode != "jacobian" and batch != self._batch:
            raise ValueError(
                f"jacobians[{self._batch_from}] holds {self._batch} per-sample "
                f"Jacobians, so a {mode} takes a batch of exactly "
                f"{self._batch} vectors: pass batch={self._batch}, got {batch}")
        plan = self._get_plan(mode, 0 if mode == "jacobian" else batch)
        if self._batch >= 0:
            plan = self._per_sample_plan(plan, mode)
        k = self._k
        if mode == "jacobian":
            names = [f"J{i}" for i in range(k, 0, -1)]
        elif mode == "vjp":
            names = ["G" if batch != 1 else "g"] + [f"J{i}" for i in range(k, 0, -1)]
        else:
            names = ["V" if batch != 1 else "v"] + [f"J{i}^T" for i in range(1, k + 1)]
        return plan + (names,)

    # ------------------------------------------------------------ products

    def vjp(self, cotangent, out=None):
        """J_1^T J_2^T ... J_k^T g for g of shape (n_k,) or (batch, n_k)."""
        return self._apply(cotangent, out, True)

    def jvp(self, tangent, out=None):
        """J_k ... J_2 J_1 v for v of shape (n_0,) or (batch, n_0)."""
        return self._apply(tangent, out, False)

    cdef object _apply(self, object x_in, object out, bint transpose):
        cdef str name = "cotangent" if transpose else "tangent"
        cdef cnp.ndarray x = _as_array(x_in, name)
        cdef int xt = cnp.PyArray_TYPE(x)
        cdef int typenum
        cdef Py_ssize_t k = self._k, B, nin, nres, i
        cdef cnp.ndarray res, dst
        cdef const char *olo
        cdef const char *ohi
        cdef const char *xlo
        cdef const char *xhi
        cdef int nt, rc
        cdef Py_ssize_t wsize
        cdef tuple shape
        cdef cnp.npy_intp rdims[2]
        if xt != cnp.NPY_DOUBLE and xt != cnp.NPY_FLOAT:
            xt = _compute_typenum(x.dtype, name)
        typenum = xt if self._typenum == -1 else self._typenum
        if xt == cnp.NPY_DOUBLE and typenum == cnp.NPY_FLOAT:
            typenum = cnp.NPY_DOUBLE       # promoted below, after the checks
        # shapes
        cdef int nd = cnp.PyArray_NDIM(x)
        if nd == 1:
            B = 1
        elif nd == 2:
            B = cnp.PyArray_DIM(x, 0)
        else:
            raise ValueError(
                f"{name} must be 1-D (n,) or 2-D (batch, n), got shape "
                f"{_pyshape(x)}")
        nin = cnp.PyArray_DIM(x, nd - 1)
        if self._batch >= 0:
            if nd != 2:
                raise ValueError(
                    f"jacobians[{self._batch_from}] holds {self._batch} "
                    f"per-sample Jacobians, so the {name} must be a batch of "
                    f"shape ({self._batch}, n), got shape {_pyshape(x)}")
            if B != self._batch:
                raise ValueError(
                    f"{name} has {B} rows but jacobians[{self._batch_from}] "
                    f"holds {self._batch} per-sample Jacobians")
        if k == 0:
            nres = nin
        elif transpose:
            nres = self._links[0].n
            if nin != self._links[k - 1].m:
                raise ValueError(
                    f"cotangent has shape {_pyshape(x)} but jacobians[{k - 1}] "
                    f"(shape ({self._links[k - 1].m}, {self._links[k - 1].n}))"
                    f" outputs {self._links[k - 1].m} values")
        else:
            nres = self._links[k - 1].m
            if nin != self._links[0].n:
                raise ValueError(
                    f"tangent has shape {_pyshape(x)} but jacobians[0] (shape "
                    f"({self._links[0].m}, {self._links[0].n})) takes "
                    f"{self._links[0].n} inputs")
        rdtype = _DT_DOUBLE if typenum == cnp.NPY_DOUBLE else _DT_FLOAT
        if nd == 1:
            shape = (nres,)
            rdims[0] = nres
        else:
            shape = (B, nres)
            rdims[0] = B
            rdims[1] = nres
        # out
        if out is None:
            res = cnp.PyArray_EMPTY(nd, rdims, typenum, 0)
            dst = res
        else:
            if not isinstance(out, cnp.ndarray):
                raise TypeError(
                    f"out must be a numpy.ndarray, got {type(out).__name__}")
            _reject_masked(out, "out")
            res = <cnp.ndarray>out
            if cnp.PyArray_TYPE(res) != typenum or not cnp.PyArray_ISNOTSWAPPED(res):
                raise TypeError(
                    f"out has dtype {res.dtype} but the result has dtype "
                    f"{rdtype}")
            # the array's own dimensions, not a (subclass's) .shape attribute
            if (cnp.PyArray_NDIM(res) != nd or cnp.PyArray_DIM(res, 0) != rdims[0]
                    or (nd == 2 and cnp.PyArray_DIM(res, 1) != rdims[1])):
                raise ValueError(
                    f"out has shape {_c_shape(res)} but the result has shape "
                    f"{shape}")
            if not cnp.PyArray_ISWRITEABLE(res):
                raise ValueError("out is read-only")
            for i in range(nd):
                if (cnp.PyArray_STRIDE(res, i) == 0 and cnp.PyArray_DIM(res, i) > 1
                        and cnp.PyArray_SIZE(res) > 0):
                    raise ValueError(
                        "out has a zero stride: its elements overlap each other")
            _extent(res, &olo, &ohi)
            _extent(x, &xlo, &xhi)
            if _boxes_overlap(olo, ohi, xlo, xhi) and _shares_memory(res, x):
                raise ValueError(f"out shares memory with {name}")
            for i in range(k):
                if (_boxes_overlap(olo, ohi, self._links[i].lo, self._links[i].hi)
                        or self._converted):
                    if any(_shares_memory(res, a) for a in self._link_arrays(i)):
                        raise ValueError(
                            f"out shares memory with jacobians[{i}]")
            if cnp.PyArray_IS_C_CONTIGUOUS(res) and cnp.PyArray_ISALIGNED(res):
                dst = res
            else:
                dst = cnp.PyArray_EMPTY(nd, rdims, typenum, 0)
        if typenum != self._typenum and self._typenum != -1:
            # float32 chain, float64 vector: promote like NumPy.  This
            # converts every link for this call; build the Chain in float64
            # to avoid it.
            promoted = ChainCore([J.astype(_DT_DOUBLE) if hasattr(J, "_gc_kind")
                                  else np.asarray(J, _DT_DOUBLE)
                                  for J in self.jacobians])
            (<ChainCore>promoted)._apply(x, dst, transpose)
        elif B * nres > 0 and self._has_zero:
            # the product passes through a zero-width intermediate: an
            # empty sum, exactly zero (as NumPy's @), whatever the values
            dst[...] = 0
        elif B * nres > 0:
            if not (cnp.PyArray_IS_C_CONTIGUOUS(x) and _usable(x, typenum)):
                x = np.require(x, rdtype, "CA")
            if k == 0:
                dst[...] = x
            else:
                # the two work halves: 2 * B * maxw elements, checked for
                # overflow before any allocation
                if not gc_size_mul3(2 * B, self._maxw, sizeof(double), &wsize):
                    raise MemoryError(
                        f"the work buffers for a batch of {B} through widths "
                        f"up to {self._maxw} exceed the address space")
                nt = effective_threads()
                if self._batch < 0:
                    plan = self._get_plan("vjp" if transpose else "jvp", B)
                    if _order_of(plan[0]) != ORDER_LEFT:
                        # pre-accumulating some links beats plain propagation
                        self._run_plan(plan[0], transpose, x, B, dst, typenum)
                        if dst is not res:
                            res[...] = dst
                        return res
                if typenum == cnp.NPY_DOUBLE:
                    with nogil:
                        rc = _run(self._links, k, self._maxw, transpose,
                                  <const double *>cnp.PyArray_DATA(x), B,
                                  <double *>cnp.PyArray_DATA(dst), nt)
                else:
                    with nogil:
                        rc = _run(self._links, k, self._maxw, transpose,
                                  <const float *>cnp.PyArray_DATA(x), B,
                                  <float *>cnp.PyArray_DATA(dst), nt)
                if rc:
                    raise MemoryError(
                        "could not allocate the chain's work buffers")
        if dst is not res:
            res[...] = dst
        return res
