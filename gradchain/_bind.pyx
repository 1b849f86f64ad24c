"""Binding: inputs -> a table of links.

The one validation path for what a chain is given: the dtype rule
(``compute_dtype``), the one conversion of every input (``as_array``), the
rules that turn each kind of input -- a 2-D array, a 3-D stack, a 3-D
per-sample array in a list, an operator -- into a Link (_link.pxd), the
extents of the memory each link may read, and the checks of an ``out=``
array.  Every error text about a chain's inputs is here.  ``LinkTable``
holds the result; _chain.ChainCore is a LinkTable that runs products.
"""
cimport numpy as cnp
import numpy as np
from libc.stdlib cimport free
from cpython.pyport cimport PY_SSIZE_T_MAX

from gradchain._link cimport (Link, LINK_DENSE, LINK_DIAG,
                              LINK_SCALED_IDENTITY, LINK_DIAG_RANK1,
                              LINK_IDENTITY, LINK_CSR, LINK_CSC, LINK_OPERATOR,
                              OperatorCall, link_clear, link_sparse_check,
                              LINK_PART_LEN)
from libc.stdint cimport int64_t
from gradchain._sizes cimport gc_malloc_n

cnp.import_array()

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


cdef bint _usable(cnp.ndarray a, int typenum):
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



# what each structured kind binds: its number of vectors
cdef dict _OPERATOR_VECTORS = {LINK_DIAG: 1, LINK_SCALED_IDENTITY: 0,
                               LINK_DIAG_RANK1: 3}


cdef inline int _join(int typenum, int t) noexcept:
    """The chain's typenum (-1: none yet) once a link computing in t (-1:
    no dtype of its own) joins it: float64 wins (the dtype rule)."""
    if t == cnp.NPY_DOUBLE or (typenum == -1 and t != -1):
        return t
    return typenum


cdef int _joined(int typenum, cnp.ndarray a, Py_ssize_t i,
                 Py_ssize_t j) except -2:
    """The chain's typenum (-1: none yet) once jacobians[i] (j >= 0: its
    vector j) joins it: float64 wins (the dtype rule); the name is
    formatted only for an error."""
    cdef int t = cnp.PyArray_TYPE(a)
    if t != cnp.NPY_DOUBLE and t != cnp.NPY_FLOAT:
        t = _compute_typenum(a.dtype, f"jacobians[{i}]" if j < 0
                             else f"jacobians[{i}]'s vector {j}")
    return _join(typenum, t)


cdef inline bint _is_int(object d):
    """d is an int (Python or NumPy), not a bool."""
    if type(d) is int:
        return True
    return (isinstance(d, (int, np.integer))
            and not isinstance(d, (bool, np.bool_)))


cdef tuple _operator_record(object op, object kind, Py_ssize_t i):
    """(kind, n, vectors, scale, typenum) of an operator link, validated
    (typenum: what its vectors compute in, -1 when it has none): everything
    the kernels will read comes from here, checked against the operator's
    shape, so an operator (or a subclass) that lies about itself raises
    instead of making the kernels read past a vector."""
    # (messages are formatted only when raised: binding an operator is on
    # the path of every one-shot call)
    cdef cnp.ndarray a
    cdef int t, typenum = -1
    if kind not in _OPERATOR_VECTORS:
        name = f"jacobians[{i}]"
        raise TypeError(
            f"{name} is a {type(op).__name__}, an Operator the compiled chain "
            f"does not know; pass its dense form (Dense(op.todense())) or use "
            f"one of Dense, Diagonal, Identity, DiagonalPlusRankOne")
    shape = op.shape
    if not (isinstance(shape, tuple) and len(shape) == 2
            and _is_int(shape[0]) and _is_int(shape[1])):
        name = f"jacobians[{i}]"
        raise TypeError(f"{name} ({type(op).__name__}) has shape {shape!r}; "
                        f"an operator's shape is a tuple of two ints")
    n = int(shape[0])
    if shape[1] != n or not 0 <= n <= PY_SSIZE_T_MAX:
        name = f"jacobians[{i}]"
        raise ValueError(f"{name} ({type(op).__name__}) has shape {shape}; a "
                         f"structured operator is square, n x n with "
                         f"0 <= n <= {PY_SSIZE_T_MAX}")
    vectors = tuple(op._gc_vectors())
    cdef list arrays = []
    if len(vectors) != _OPERATOR_VECTORS[kind]:
        name = f"jacobians[{i}]"
        raise ValueError(f"{name} ({type(op).__name__}) gave {len(vectors)} "
                         f"vectors; its kind binds {_OPERATOR_VECTORS[kind]}")
    for j, vec in enumerate(vectors):
        a = vec if type(vec) is np.ndarray else _as_array(
            vec, f"jacobians[{i}]'s vector {j}")
        if cnp.PyArray_NDIM(a) != 1 or cnp.PyArray_DIM(a, 0) != n:
            name = f"jacobians[{i}]"
            raise ValueError(f"{name} ({type(op).__name__}) has shape {shape} "
                             f"but its vector {j} has shape {_pyshape(a)}, "
                             f"expected ({n},)")
        typenum = _joined(typenum, a, i, j)
        arrays.append(a)
    scale = op._gc_scale()
    if type(scale) is not float and (isinstance(scale, (bool, np.bool_)) or not isinstance(
            scale, (int, float, np.integer, np.floating))):
        name = f"jacobians[{i}]"
        raise TypeError(f"{name} ({type(op).__name__}) has scale {scale!r}; "
                        f"expected a real number")
    return (kind, n, tuple(arrays), float(scale), typenum)


cdef bint _is_sparse(object item):
    """item is a scipy.sparse matrix or array (scipy imported only for an
    object that looks like one)."""
    if not (isinstance(getattr(item, "format", None), str)
            and hasattr(item, "tocsr")):
        return False
    import scipy.sparse
    return scipy.sparse.issparse(item)


cdef cnp.ndarray _index_array(object a, object dtype):
    """An index or pointer array as the kernels read it: 1-D, C-contiguous,
    aligned, native, of dtype (int32 or int64); copied only when it is not."""
    a = np.asarray(a)
    if a.dtype == dtype and a.ndim == 1 and a.flags.c_contiguous and a.flags.aligned:
        return <cnp.ndarray>a
    return np.ascontiguousarray(a, dtype=dtype).reshape(-1)


cdef tuple _transpose_copy(cnp.ndarray data, cnp.ndarray indices,
                           cnp.ndarray indptr, Py_ssize_t nnz, Py_ssize_t nb):
    """(data, indices, indptr) of a checked compressed structure (nnz
    entries, indices below nb) in the other format: nb lines, each holding
    its entries in the order of the original's lines (a stable sort), so a
    gather over it sums as a one-chunk scatter over the original."""
    nl = cnp.PyArray_DIM(indptr, 0) - 1
    idx = indices[:nnz]
    it = np.int32 if max(nnz, nl, nb) < 2 ** 31 - 1 else np.int64
    order = np.argsort(idx, kind="stable")
    tptr = np.zeros(nb + 1, it)
    np.cumsum(np.bincount(idx, minlength=nb), out=tptr[1:])
    lines = np.repeat(np.arange(nl, dtype=it), np.diff(indptr))
    return (np.ascontiguousarray(data[:nnz][order]), lines[order], tptr)


cdef tuple _sparse_record(object item, Py_ssize_t i):
    """(kind, (m, n), (data, indices, indptr), source, typenum, part) of a
    scipy.sparse link, validated: CSR and CSC are read in place (their data,
    indices and indptr, any order, duplicates and explicit zeros included)
    when the arrays are contiguous int32/int64 indices; any other format is
    converted to CSR once, here.  The structure is checked in O(nnz): a
    corrupt one raises instead of making the kernels read out of bounds.
    part is the scatter's partition of its lines (the same walk)."""
    cdef cnp.ndarray data, indices, indptr
    cdef cnp.ndarray part = np.empty(LINK_PART_LEN, np.int64)
    cdef Py_ssize_t m, n, nl, nb, where = -1
    cdef int rc
    name = f"jacobians[{i}]"
    shape = item.shape
    if len(shape) != 2:
        raise ValueError(f"{name} is a {len(shape)}-D sparse array of shape "
                         f"{shape}; a link is 2-D (n_{i + 1}, n_{i})")
    src = item
    if item.format not in ("csr", "csc"):
        item = item.tocsr()     # converted once, at bind time
    m, n = shape
    csr = item.format == "csr"
    nl, nb = (m, n) if csr else (n, m)
    indices, indptr = item.indices, item.indptr
    idt = np.dtype(np.int32)
    if not (isinstance(indices, cnp.ndarray) and isinstance(indptr, cnp.ndarray)
            and indices.dtype == idt and indptr.dtype == idt):
        idt = np.dtype(np.int64)
    indices = _index_array(indices, idt)
    indptr = _index_array(indptr, idt)
    data = np.asarray(item.data)
    if data.ndim != 1:
        raise ValueError(f"{name} ({type(src).__name__}) has data of shape "
                         f"{_pyshape(data)}; expected 1-D")
    # the dtype of what the kernels will read, not what the object says
    typenum = _compute_typenum(data.dtype, name)
    if cnp.PyArray_DIM(indptr, 0) != nl + 1:
        raise ValueError(
            f"{name} ({type(src).__name__}, format {item.format}) has shape "
            f"{shape} but an indptr of {cnp.PyArray_DIM(indptr, 0)} entries; "
            f"expected {nl + 1}")
    nidx = min(cnp.PyArray_DIM(indices, 0), cnp.PyArray_DIM(data, 0))
    rc = link_sparse_check(nl, cnp.PyArray_DATA(indptr), cnp.PyArray_DATA(indices),
                           <int>cnp.PyArray_ITEMSIZE(indices), nidx, nb, &where,
                           <int64_t *>cnp.PyArray_DATA(part))
    if rc:
        what = ("rows" if csr else "columns", "column" if csr else "row")
        raise ValueError(f"{name} ({type(src).__name__}, format {item.format}) "
                         f"has a corrupt structure: " + (
            f"indptr[0] is {indptr[0]}, not 0" if rc == 1 else
            f"indptr decreases at {what[0]} {where} -> {where + 1}" if rc == 2 else
            f"indptr[-1] = {indptr[nl]} exceeds the {nidx} stored entries" if rc == 3 else
            f"indices[{where}] = {indices[where]} is not a {what[1]} index in "
            f"[0, {nb})"))
    kind = LINK_CSR if csr else LINK_CSC
    return (kind, (m, n), (data, indices, indptr), item, typenum, part)


cdef tuple _matfree_record(object op, Py_ssize_t i):
    """(LINK_OPERATOR, (m, n), (), OperatorCall, typenum) of a matrix-free
    link: an object with shape, matvec and rmatvec (a
    scipy.sparse.linalg.LinearOperator, say); its dtype, if it declares
    one, joins the chain's by the dtype rule."""
    name = f"jacobians[{i}]"
    shape = op.shape
    if not (isinstance(shape, tuple) and len(shape) == 2
            and _is_int(shape[0]) and _is_int(shape[1])
            and 0 <= shape[0] <= PY_SSIZE_T_MAX and 0 <= shape[1] <= PY_SSIZE_T_MAX):
        raise TypeError(f"{name} ({type(op).__name__}) has shape {shape!r}; a "
                        f"matrix-free link's shape is a tuple of two "
                        f"non-negative ints")
    dt = getattr(op, "dtype", None)
    typenum = -1 if dt is None else _compute_typenum(np.dtype(dt), name)
    m, n = int(shape[0]), int(shape[1])
    return (LINK_OPERATOR, (m, n), (), OperatorCall(op, i, m, n), typenum)


cdef class LinkTable:
    """The links of a chain, bound (see the module docstring and _bind.pxd)."""

    def __cinit__(self, *args, **kwargs):
        self.links = NULL
        self.k = 0
        self.maxw = 0
        self.typenum = -1
        self.stack = None
        self.keep = []
        self.opvecs = None
        self.converted = False
        self.nsamples = -1
        self.samples_from = -1
        self.copy_bytes = -1
        kwargs = dict(kwargs)
        copies = kwargs.pop("transpose_copies", False)
        if len(args) + len(kwargs) != 1 or (kwargs and "jacobians" not in kwargs):
            raise TypeError(
                f"{type(self).__name__}() takes exactly one argument, "
                f"jacobians (a sequence of 2-D arrays or one 3-D array), "
                f"and the keyword transpose_copies")
        if not isinstance(copies, (bool, np.bool_)):
            raise TypeError(f"transpose_copies must be True or False, got "
                            f"{type(copies).__name__}")
        if copies:
            self.copy_bytes = 0
        self._bind(args[0] if args else kwargs["jacobians"])

    def __dealloc__(self):
        free(self.links)

    cdef _bind(self, jacobians):
        cdef list items
        cdef cnp.ndarray a
        cdef Link *L
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
                rec = None
                if _is_sparse(item):
                    rec = _sparse_record(item, i)
                elif (not hasattr(type(item), "_gc_kind") and hasattr(item, "matvec")
                        and hasattr(item, "rmatvec") and hasattr(item, "shape")):
                    rec = _matfree_record(item, i)
                if rec is not None:
                    arrays[i] = rec[3] if rec[0] != LINK_OPERATOR else item
                    if arrays[i] is not item:
                        self.converted = True       # another sparse format
                    opvecs[i] = rec
                    typenum = _join(typenum, rec[4])
                    continue
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
                    typenum = _join(typenum, rec[4])
                    continue
            # (the name is formatted only for a conversion: binding is on the
            # path of every one-shot call)
            a = item if type(item) is np.ndarray else _as_array(
                item, f"jacobians[{i}]")
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
            typenum = _joined(typenum, a, i, -1)
            arrays[i] = a
        # Pass 2: conversions where unavoidable, then the link table.
        dtype = _DT_DOUBLE if typenum == cnp.NPY_DOUBLE else _DT_FLOAT
        self.sources = tuple(arrays)
        for i in range(k):
            if isinstance(arrays[i], cnp.ndarray):
                a = <cnp.ndarray>arrays[i]
                # a zero-size link is never read (a product through it is
                # zeros): bound as it is, whatever the declared sizes, which
                # NumPy may refuse to allocate in another dtype
                if not _usable(a, typenum) and cnp.PyArray_SIZE(a) > 0:
                    arrays[i] = np.require(a, dtype, "A")
                    self.converted = True
        self._alloc(k, typenum)
        for i in range(k):
            if isinstance(arrays[i], cnp.ndarray):
                self._set_link(i, <cnp.ndarray>arrays[i])
            elif opvecs[i][0] == LINK_CSR or opvecs[i][0] == LINK_CSC:
                opvecs[i] = self._set_sparse(i, opvecs[i], dtype)
            elif opvecs[i][0] == LINK_OPERATOR:
                L = &self.links[i]
                L[0] = link_clear(LINK_OPERATOR, opvecs[i][1][0], opvecs[i][1][1])
                L.obj = <void *>opvecs[i][3]
            else:
                self._set_operator(i, opvecs[i], dtype)
        self.arrays = tuple(arrays)
        self.opvecs = tuple(opvecs)
        self.nsamples = batch
        self.samples_from = batch_from
        self._check_dims()

    cdef tuple _set_sparse(self, Py_ssize_t i, tuple rec, dtype):
        """Link i from a sparse record (_sparse_record): the data in the
        chain's dtype (a converted copy of the values only, where needed),
        indices and pointers in place.  Returns the record as bound."""
        cdef Link *L = &self.links[i]
        cdef cnp.ndarray data, indices, indptr
        cdef const char *lo
        cdef const char *hi
        cdef int typenum = cnp.NPY_DOUBLE if dtype is _DT_DOUBLE else cnp.NPY_FLOAT
        kind, (m, n), (data, indices, indptr), item, t, part = rec
        if not (_usable(data, typenum) and cnp.PyArray_IS_C_CONTIGUOUS(data)):
            data = np.ascontiguousarray(data, dtype=dtype)
            self.converted = True
        L[0] = link_clear(kind, m, n)
        L.data = <const char *>cnp.PyArray_DATA(data)
        L.ptr = <const char *>cnp.PyArray_DATA(indptr)
        L.idx = <const char *>cnp.PyArray_DATA(indices)
        L.isize = <int>cnp.PyArray_ITEMSIZE(indices)
        L.nnz = indptr[cnp.PyArray_DIM(indptr, 0) - 1]
        L.part = <const int64_t *>cnp.PyArray_DATA(part)
        for a in (data, indices, indptr):
            _extent(<cnp.ndarray>a, &lo, &hi)
            if L.lo == NULL or lo < L.lo:
                L.lo = lo
            if L.hi == NULL or hi > L.hi:
                L.hi = hi
        copy = None
        if self.copy_bytes >= 0:
            copy = _transpose_copy(data, indices, indptr, L.nnz,
                                   n if kind == LINK_CSR else m)
            L.tdata = <const char *>cnp.PyArray_DATA(copy[0])
            L.tidx = <const char *>cnp.PyArray_DATA(copy[1])
            L.tptr = <const char *>cnp.PyArray_DATA(copy[2])
            L.tisize = <int>cnp.PyArray_ITEMSIZE(copy[1])
            L.tnnz = L.nnz
            self.copy_bytes += sum(a.nbytes for a in copy)
        return (kind, (m, n), (data, indices, indptr), item, t, part, copy)

    cdef _set_operator(self, Py_ssize_t i, tuple rec, dtype):
        """Link i from an operator's validated record (_operator_record)."""
        cdef Link *L = &self.links[i]
        cdef cnp.ndarray a
        cdef const char *lo
        cdef const char *hi
        cdef const char *ptrs[3]
        cdef Py_ssize_t strd[3]
        cdef int j, typenum = cnp.NPY_DOUBLE if dtype is _DT_DOUBLE else cnp.NPY_FLOAT
        kind, n, vectors, scale = rec[:4]
        if kind == LINK_SCALED_IDENTITY and scale == 1.0:
            kind = LINK_IDENTITY        # products with it are free
        L[0] = link_clear(kind, n, n)
        L.scale = scale
        ptrs[0] = ptrs[1] = ptrs[2] = NULL
        strd[0] = strd[1] = strd[2] = 0
        for j, vec in enumerate(vectors):
            # read in place when it has the chain's dtype (any stride), else
            # an aligned copy (O(n)); the bound array is kept alive here,
            # whatever later happens to op's attributes
            a = vec if _usable(vec, typenum) else np.require(vec, dtype, "A")
            self.keep.append(a)
            if a is not vec:
                self.converted = True
            strd[j] = cnp.PyArray_STRIDE(a, 0) // cnp.PyArray_ITEMSIZE(a)
            ptrs[j] = <const char *>cnp.PyArray_DATA(a)
            _extent(<cnp.ndarray>vec if isinstance(vec, cnp.ndarray) else a,
                    &lo, &hi)
            if L.lo == NULL or lo < L.lo:
                L.lo = lo
            if L.hi == NULL or hi > L.hi:
                L.hi = hi
        L.d, L.u, L.v = ptrs[0], ptrs[1], ptrs[2]
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
            L = &self.links[i]
            L[0] = link_clear(LINK_DENSE, a.shape[1], a.shape[2])
            L.data = base + i * st[0]
            L.rs = st[1] // isz
            L.cs = st[2] // isz
            L.lo = lo
            L.hi = hi
        self.stack = a
        self.arrays = None
        self.sources = (src,) * k
        self.converted = src is not a
        self._check_dims()

    cdef _alloc(self, Py_ssize_t k, int typenum):
        self.k = k
        self.typenum = typenum
        if k > 0:
            self.links = <Link *>gc_malloc_n(k, sizeof(Link))
            if self.links == NULL:
                raise MemoryError()

    cdef _set_link(self, Py_ssize_t i, cnp.ndarray a):
        cdef Link *L = &self.links[i]
        cdef Py_ssize_t isz = cnp.PyArray_ITEMSIZE(a)
        cdef int o = cnp.PyArray_NDIM(a) - 2     # 1 for per-sample links
        L[0] = link_clear(LINK_DENSE, cnp.PyArray_DIM(a, o),
                          cnp.PyArray_DIM(a, o + 1))
        L.per_sample = o == 1
        L.bs = cnp.PyArray_STRIDE(a, 0) // isz if o == 1 else 0
        L.data = <const char *>cnp.PyArray_DATA(a)
        L.rs = cnp.PyArray_STRIDE(a, o) // isz
        L.cs = cnp.PyArray_STRIDE(a, o + 1) // isz
        _extent(a, &L.lo, &L.hi)

    cdef _check_dims(self):
        cdef Py_ssize_t i
        self.maxw = 0
        self.has_zero = False
        for i in range(self.k):
            if self.links[i].m == 0 or self.links[i].n == 0:
                self.has_zero = True
        for i in range(1, self.k):
            if self.links[i].n != self.links[i - 1].m:
                raise ValueError(
                    f"jacobians[{i}] has shape "
                    f"({self.links[i].m}, {self.links[i].n}) but "
                    f"jacobians[{i - 1}] outputs {self.links[i - 1].m} "
                    f"values")
            if self.links[i].n > self.maxw:
                self.maxw = self.links[i].n

    cdef tuple link_arrays(self, Py_ssize_t i):
        """The arrays behind link i, as bound and as the caller gave them
        (for the out= overlap check)."""
        if self.stack is not None:
            if self.sources[i] is self.stack:
                return (self.stack[i],)
            return (self.stack[i], self.sources[i][i])
        if self.opvecs[i] is not None:
            # the vectors bound at construction, whatever the operator's
            # attributes say now (converted copies are the chain's own)
            return self.opvecs[i][2]
        return tuple(a for a in (self.arrays[i], self.sources[i])
                     if isinstance(a, cnp.ndarray))

    cdef cnp.ndarray check_out(self, object out, cnp.ndarray x, str name,
                               int nd, cnp.npy_intp *rdims, int typenum,
                               str oname="out"):
        """out, checked as the destination of a product of x through this
        chain (shape rdims[:nd], dtype typenum): the array to write into,
        out itself or, when out is not C-contiguous and aligned, a fresh
        one that the caller copies into out.  oname: its name in messages."""
        cdef cnp.ndarray res
        cdef const char *olo
        cdef const char *ohi
        cdef const char *xlo
        cdef const char *xhi
        cdef Py_ssize_t i
        if not isinstance(out, cnp.ndarray):
            raise TypeError(
                f"{oname} must be a numpy.ndarray, got {type(out).__name__}")
        _reject_masked(out, oname)
        res = <cnp.ndarray>out
        if cnp.PyArray_TYPE(res) != typenum or not cnp.PyArray_ISNOTSWAPPED(res):
            raise TypeError(
                f"{oname} has dtype {res.dtype} but the result has dtype "
                f"{_DT_DOUBLE if typenum == cnp.NPY_DOUBLE else _DT_FLOAT}")
        # the array's own dimensions, not a (subclass's) .shape attribute
        if (cnp.PyArray_NDIM(res) != nd or cnp.PyArray_DIM(res, 0) != rdims[0]
                or (nd == 2 and cnp.PyArray_DIM(res, 1) != rdims[1])):
            shape = tuple(rdims[i] for i in range(nd))
            raise ValueError(
                f"{oname} has shape {_c_shape(res)} but the result has shape "
                f"{shape}")
        if not cnp.PyArray_ISWRITEABLE(res):
            raise ValueError(f"{oname} is read-only")
        for i in range(nd):
            if (cnp.PyArray_STRIDE(res, i) == 0 and cnp.PyArray_DIM(res, i) > 1
                    and cnp.PyArray_SIZE(res) > 0):
                raise ValueError(
                    f"{oname} has a zero stride: its elements overlap each other")
        _extent(res, &olo, &ohi)
        _extent(x, &xlo, &xhi)
        if _boxes_overlap(olo, ohi, xlo, xhi) and _shares_memory(res, x):
            raise ValueError(f"{oname} shares memory with {name}")
        for i in range(self.k):
            if (_boxes_overlap(olo, ohi, self.links[i].lo, self.links[i].hi)
                    or self.converted):
                if any(_shares_memory(res, a) for a in self.link_arrays(i)):
                    raise ValueError(
                        f"{oname} shares memory with jacobians[{i}]")
        if cnp.PyArray_IS_C_CONTIGUOUS(res) and cnp.PyArray_ISALIGNED(res):
            return res
        return cnp.PyArray_EMPTY(nd, rdims, typenum, 0)

    cdef cnp.ndarray vector(self, object x_in, str name, bint transpose,
                            int *typenum, Py_ssize_t *B, Py_ssize_t *nres):
        """The vector (or block) of a vjp (transpose) or jvp, checked
        against the chain: returns it as an array and sets the dtype the
        product computes in (NumPy's promotion of the chain's and x's),
        the number of rows and the result's width."""
        cdef cnp.ndarray x = _as_array(x_in, name)
        cdef int xt = cnp.PyArray_TYPE(x)
        cdef Py_ssize_t k = self.k, nin
        cdef int nd = cnp.PyArray_NDIM(x)
        if xt != cnp.NPY_DOUBLE and xt != cnp.NPY_FLOAT:
            xt = _compute_typenum(x.dtype, name)
        typenum[0] = xt if self.typenum == -1 else self.typenum
        if xt == cnp.NPY_DOUBLE and typenum[0] == cnp.NPY_FLOAT:
            typenum[0] = cnp.NPY_DOUBLE      # promoted, after the checks
        if nd == 1:
            B[0] = 1
        elif nd == 2:
            B[0] = cnp.PyArray_DIM(x, 0)
        else:
            raise ValueError(
                f"{name} must be 1-D (n,) or 2-D (batch, n), got shape "
                f"{_pyshape(x)}")
        nin = cnp.PyArray_DIM(x, nd - 1)
        if self.nsamples >= 0:
            if nd != 2:
                raise ValueError(
                    f"jacobians[{self.samples_from}] holds {self.nsamples} "
                    f"per-sample Jacobians, so the {name} must be a batch of "
                    f"shape ({self.nsamples}, n), got shape {_pyshape(x)}")
            if B[0] != self.nsamples:
                raise ValueError(
                    f"{name} has {B[0]} rows but jacobians[{self.samples_from}] "
                    f"holds {self.nsamples} per-sample Jacobians")
        if k == 0:
            nres[0] = nin
        elif transpose:
            nres[0] = self.links[0].n
            if nin != self.links[k - 1].m:
                raise ValueError(
                    f"cotangent has shape {_pyshape(x)} but jacobians[{k - 1}] "
                    f"(shape ({self.links[k - 1].m}, {self.links[k - 1].n}))"
                    f" outputs {self.links[k - 1].m} values")
        else:
            nres[0] = self.links[k - 1].m
            if nin != self.links[0].n:
                raise ValueError(
                    f"tangent has shape {_pyshape(x)} but jacobians[0] (shape "
                    f"({self.links[0].m}, {self.links[0].n})) takes "
                    f"{self.links[0].n} inputs")
        return x

    cdef check_batch(self, Py_ssize_t batch, str mode):
        """A plan's batch against the chain's per-sample count."""
        if self.nsamples >= 0 and mode != "jacobian" and batch != self.nsamples:
            raise ValueError(
                f"jacobians[{self.samples_from}] holds {self.nsamples} per-sample "
                f"Jacobians, so a {mode} takes a batch of exactly "
                f"{self.nsamples} vectors: pass batch={self.nsamples}, got {batch}")
