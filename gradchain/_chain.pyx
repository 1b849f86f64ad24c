"""ChainCore: a bound chain (a LinkTable, see _bind) that runs products.

``ChainCore`` validates a chain once (``_bind``), recording each link as a
pointer plus strides into the caller's own array (no copy), and then
evaluates

    vjp:  J_1^T J_2^T ... J_k^T g        jvp:  J_k ... J_2 J_1 v
    jacobian:  J_k ... J_1

by the Strategy ``_bracket.choose`` gives for the (mode, batch), which it
caches: propagation (``_propagate``: one ``nogil`` call that ping-pongs
between two work buffers, with no Python between links) or accumulation
in a bracketing (``_accumulate``), once or per sample.  The strategy an
executor ran is recorded (``_last_strategy``), so that tests can check
that what ``Chain.plan()`` reports is what ran.  Validation of the
arguments happens before the GIL is released, in one pass of C-level
checks (this keeps a 16-link one-shot call in the low microseconds).
"""
cimport numpy as cnp
import numpy as np
from libc.stdlib cimport free
from cython cimport floating

from gradchain._link cimport Link, LINK_DENSE, link_raise
from gradchain._bind cimport (LinkTable, _usable, _is_sparse, _extent,
                              _shares_memory)
from libc.string cimport memcpy, memset
from gradchain._bracket cimport (Strategy, choose, product_factors,
                                 MODE_VJP, MODE_JVP, MODE_JACOBIAN,
                                 MODE_SPARSE, ORDER_LEFT, sparse_jacobian_ok)
from gradchain._propagate cimport propagate
from gradchain._accumulate cimport run_product, run_samples, run_sparse_product
from gradchain._kernels cimport effective_threads, fp_enter, fp_exit, gc_fpstate
from gradchain._sizes cimport gc_size_mul, gc_size_mul3, gc_size_add, gc_malloc_n

cnp.import_array()

cdef object _DT_FLOAT = np.dtype(np.float32)
cdef object _DT_DOUBLE = np.dtype(np.float64)
cdef dict _MODE_CODES = {"vjp": MODE_VJP, "jvp": MODE_JVP,
                         "jacobian": MODE_JACOBIAN}
# what a product ran (the executors' record, see _last_strategy)
cdef enum:
    RAN_PROPAGATE = 0
    RAN_ACCUMULATE = 1
    RAN_SAMPLES = 2
    RAN_ZEROS = 3
    RAN_COPY = 4
    RAN_PROMOTED = 5
    RAN_MIXED = 6
_RAN = ("propagate", "accumulate", "samples", "zeros", "copy", "promoted",
        "mixed")


cdef inline int _execute(const Link *f, Py_ssize_t m, const int *split,
                         int order, bint per_sample, bint sample_threads,
                         Py_ssize_t nb, floating *out, Py_ssize_t ostride,
                         int nt) noexcept nogil:
    """A bracketing of f into out: once, or per sample (nb samples, out's
    rows ostride elements apart)."""
    if per_sample:
        return run_samples(f, m, split, order, nb, out, ostride,
                           sample_threads, nt)
    return run_product(f, m, split, order, out, nt)


cdef object _promoted(object J):
    """A bound link in float64, for a float32 chain given a float64 vector:
    arrays, operators and sparse matrices converted; a matrix-free link
    stays itself (its results are converted to the chain's dtype)."""
    if isinstance(J, cnp.ndarray):
        return np.asarray(J, _DT_DOUBLE)
    if hasattr(J, "_gc_kind") or _is_sparse(J):
        return J.astype(_DT_DOUBLE)
    return J


cdef bint _wide(object accumulate) except -1:
    """accumulate=: None (the chain's dtype) or "float64"."""
    if accumulate is None:
        return False
    if (isinstance(accumulate, str) and accumulate == "float64") or (
            not isinstance(accumulate, str) and accumulate is not bool
            and _is_float64(accumulate)):
        return True
    raise ValueError(f"accumulate must be None or 'float64', got {accumulate!r}")


cdef bint _is_float64(object dt):
    try:
        return np.dtype(dt) == _DT_DOUBLE
    except TypeError:
        return False


cdef object _in_float64(object x):
    """A real vector as float64 (accumulate="float64"); anything else as it
    is, for the product's own checks to report."""
    try:
        a = np.asarray(x)
    except Exception:
        return x
    if a.dtype.kind in "fiub" and a.dtype != _DT_DOUBLE:
        return a.astype(_DT_DOUBLE)
    return x


def _rebuild(cls, jacobians, copies):
    """Unpickling: the chain again, with its transpose copies if it had them."""
    return cls(jacobians, transpose_copies=copies)


cdef inline Py_ssize_t _pos_width(LinkTable chain, Py_ssize_t n,
                                  Py_ssize_t i) noexcept:
    """n_i, the width at position i of chain (n: the one width of a chain
    of no links)."""
    if chain.k == 0:
        return n
    return chain.links[0].n if i == 0 else chain.links[i - 1].m


cdef class Trajectory:
    """The k + 1 cotangents or tangents of one product along a chain.

    What ``Chain.vjp(g, intermediates=True)`` and ``Chain.jvp(v,
    intermediates=True)`` return: a sequence indexed by position along the
    chain, ``traj[i]`` being the value at x^(i), i = 0, ..., k:

        vjp (cotangents):  traj[k] = g,  traj[i] = J_{i+1}^T traj[i+1],
                           so traj[0] = J_1^T ... J_k^T g, the gradient;
        jvp (tangents):    traj[0] = v,  traj[i] = J_i traj[i-1],
                           so traj[k] = J_k ... J_1 v.

    Each item has shape (n_i,), or (batch, n_i) for a block, in the chain's
    dtype.  Without ``out=`` every item is a view into one allocation of
    batch * (n_0 + ... + n_k) elements (:attr:`buffer`), made when it is
    indexed; with ``out=`` the items are the caller's arrays.  Supports
    ``len``, indexing (negative too), slicing (a tuple) and iteration.
    """

    cdef LinkTable _chain       # the widths n_0 .. n_k
    cdef object _buf            # the one allocation (None: _arrays)
    cdef tuple _arrays          # the caller's out arrays, or None
    cdef Py_ssize_t _B, _n      # rows; the one width of a 0-link chain
    cdef int _nd
    cdef bint _cotangents

    @property
    def buffer(self):
        """The one flat allocation the items are views into (None when the
        trajectory was written to ``out=`` arrays)."""
        return self._buf

    @property
    def kind(self):
        """"cotangents" (from vjp) or "tangents" (from jvp)."""
        return "cotangents" if self._cotangents else "tangents"

    cdef Py_ssize_t _width(self, Py_ssize_t i) noexcept:
        return _pos_width(self._chain, self._n, i)

    def __len__(self):
        return self._chain.k + 1

    cdef object _item(self, Py_ssize_t i):
        cdef Py_ssize_t j, off = 0, n = self._width(i)
        if self._arrays is not None:
            return self._arrays[i]
        for j in range(i):
            off += self._width(j)
        off *= self._B
        a = self._buf[off:off + self._B * n]
        return a if self._nd == 1 else a.reshape(self._B, n)

    def __getitem__(self, index):
        cdef Py_ssize_t i, m = self._chain.k + 1
        if isinstance(index, slice):
            return tuple(self._item(i) for i in range(*index.indices(m)))
        try:
            i = index.__index__()
        except AttributeError:
            raise TypeError(f"Trajectory indices must be integers or slices, "
                            f"not {type(index).__name__}") from None
        if i < 0:
            i += m
        if i < 0 or i >= m:
            raise IndexError(f"index {index} out of range for a trajectory of "
                             f"{m} {self.kind}")
        return self._item(i)

    def __iter__(self):
        cdef Py_ssize_t i
        for i in range(self._chain.k + 1):
            yield self._item(i)

    def __repr__(self):
        cdef Py_ssize_t i, m = self._chain.k + 1
        w = [str(self._width(i)) for i in range(min(m, 8))]
        if m > 8:
            w.append("...")
        rows = "" if self._nd == 1 else f", batch {self._B}"
        return (f"Trajectory({m} {self.kind} of widths {', '.join(w)}{rows})")


try:
    from collections.abc import Sequence as _Sequence
    _Sequence.register(Trajectory)
except ImportError:         # pragma: no cover
    pass


cdef class ChainCore(LinkTable):
    """Compiled core of :class:`gradchain.Chain` (see there)."""

    cdef dict _strategies          # (mode, batch) -> Strategy
    cdef Strategy _last            # the last product's record (tests):
    cdef int _ran                  # its Strategy (None: no choice made)
                                   # and what ran (_RAN)

    def __cinit__(self, *args, **kwargs):
        self._strategies = {}
        self._last = None
        self._ran = -1

    def __reduce__(self):
        return (_rebuild, (type(self), self.stack if self.stack is not None
                           else list(self.arrays), self.copy_bytes >= 0))

    @property
    def transpose_copy_bytes(self):
        """Bytes held by the sparse links' transpose copies (``Chain(...,
        transpose_copies=True)``), or None when none were asked for."""
        return None if self.copy_bytes < 0 else self.copy_bytes

    # ---------------------------------------------------------------- info

    def __len__(self):
        return self.k

    @property
    def shapes(self):
        """Tuple of the links' shapes (n_i, n_{i-1}), in application order."""
        return tuple((self.links[i].m, self.links[i].n) for i in range(self.k))

    @property
    def dims(self):
        """(n_0, n_1, ..., n_k); empty for k = 0."""
        if self.k == 0:
            return ()
        return (self.links[0].n,) + tuple(self.links[i].m
                                          for i in range(self.k))

    @property
    def input_dim(self):
        """n_0, the length of a tangent (None for k = 0: any length)."""
        return self.links[0].n if self.k else None

    @property
    def output_dim(self):
        """n_k, the length of a cotangent (None for k = 0: any length)."""
        return self.links[self.k - 1].m if self.k else None

    @property
    def dtype(self):
        """float32 or float64, the dtype the chain computes in (None, k = 0)."""
        if self.typenum == cnp.NPY_DOUBLE:
            return _DT_DOUBLE
        if self.typenum == cnp.NPY_FLOAT:
            return _DT_FLOAT
        return None

    @property
    def jacobians(self):
        """The bound Jacobians: the caller's arrays and operators themselves
        (views of the stacked array for a 3-D input), or converted copies
        where the dtype rule required one."""
        if self.stack is not None:
            return tuple(self.stack)
        return self.arrays

    @property
    def batch(self):
        """The number of per-sample Jacobians of the chain's 3-D links, or
        None when every link is shared."""
        return None if self.nsamples < 0 else self.nsamples

    # ---------------------------------------------------------- strategy

    cdef Strategy _strategy(self, int mode, Py_ssize_t B):
        return choose(self.links, self.k, mode, B, self.nsamples,
                      self._strategies)

    def _plan_strategy(self, Py_ssize_t batch, str mode, format=None):
        """The Strategy that a product of (mode, batch) runs, for
        Chain.plan to render (arguments checked here)."""
        if mode not in _MODE_CODES:
            raise ValueError(f"mode must be 'vjp', 'jvp' or 'jacobian', got {mode!r}")
        if batch < 0:
            raise ValueError(f"batch must be >= 0, got {batch}")
        if self.k == 0:
            raise ValueError("the empty chain has nothing to plan")
        self.check_batch(batch, mode)
        if mode == "jacobian":
            return self._strategy(MODE_SPARSE if self._sparse_result(format)
                                  else MODE_JACOBIAN, 0)
        if format is not None:
            raise ValueError(f"format applies to mode='jacobian' only, got "
                             f"format={format!r} with mode={mode!r}")
        return self._strategy(_MODE_CODES[mode], batch)

    cdef bint _sparse_result(self, object format) except -1:
        """jacobian's rule: a csr_array when every link is sparse or
        diagonal-like (at least one sparse) unless format="dense"; format
        "csr" asks for one whatever the links (checked here)."""
        if format is not None and format not in ("dense", "csr"):
            raise ValueError(f"format must be None, 'dense' or 'csr', got {format!r}")
        if format == "dense":
            return False
        return sparse_jacobian_ok(self.links, self.k)

    def _strategy_of(self, str mode, Py_ssize_t batch):
        """The Strategy record for (mode, batch) (tests)."""
        return self._strategy(_MODE_CODES[mode], batch)

    def _last_strategy(self):
        """(Strategy or None, what ran) of the last product on this chain:
        what ran is "propagate", "accumulate", "samples", "zeros", "copy",
        "promoted" (a float32 chain converted to float64 for the call) or
        "mixed" (float32 dense links read in place into float64 sums)
        (tests)."""
        if self._ran < 0:
            return None
        return (self._last, _RAN[self._ran])

    # ------------------------------------------------------------ products

    def jacobian(self, format=None, *, accumulate=None):
        """The Jacobian J_k ... J_1 of shape (n_k, n_0) (or, with
        per-sample links, (batch, n_k, n_0)), accumulated in the cheapest
        bracketing (see ``plan(mode="jacobian")``): a
        ``scipy.sparse.csr_array`` when every link is sparse or
        diagonal-like (and one at least sparse), else a dense array;
        ``format="dense"`` forces a dense array, ``format="csr"`` a
        csr_array (of the dense product, for a chain with dense links).
        ``accumulate="float64"``: a float32 chain's product in float64 (its
        links converted for the call: O(size) against the product's
        O(size * width)), a float64 result."""
        cdef cnp.npy_intp dims[3]
        cdef Strategy s
        cdef int rc, nt
        cdef Py_ssize_t ostride
        cdef char *base
        if _wide(accumulate) and self.typenum == cnp.NPY_FLOAT:
            self._last, self._ran = None, RAN_PROMOTED
            return ChainCore([_promoted(J) for J in self.jacobians],
                             transpose_copies=self.copy_bytes >= 0).jacobian(format)
        if self.k == 0:
            raise ValueError("the empty chain is the identity of any size; it "
                             "has no dense Jacobian")
        sparse = self._sparse_result(format)
        if format == "csr" and not sparse:
            if self.nsamples >= 0:
                raise ValueError("format='csr' makes one matrix; a chain with "
                                 "per-sample links has one per sample")
            import scipy.sparse
            return scipy.sparse.csr_array(self.jacobian("dense"))
        typenum = self.typenum if self.typenum != -1 else cnp.NPY_DOUBLE
        if sparse:
            return self._sparse_jacobian(typenum)
        dims[0] = self.nsamples
        dims[1] = self.links[self.k - 1].m
        dims[2] = self.links[0].n
        if self.nsamples < 0:
            out = cnp.PyArray_EMPTY(2, &dims[1], typenum, 0)
        else:
            out = cnp.PyArray_EMPTY(3, dims, typenum, 0)
        if cnp.PyArray_SIZE(out) == 0:
            return out
        if self.has_zero:
            out[...] = 0    # through a zero-width intermediate: zeros
            self._last, self._ran = None, RAN_ZEROS
            return out
        s = self._strategy(MODE_JACOBIAN, 0)
        self._accumulate(s, None, 0, out, typenum)
        self._last, self._ran = s, RAN_SAMPLES if s.per_sample else RAN_ACCUMULATE
        return out

    cdef object _sparse_jacobian(self, int typenum):
        """The csr_array product of a chain of sparse and diagonal-like
        links, in the order MODE_SPARSE's strategy chose."""
        cdef Link *f
        cdef Strategy s
        if self.has_zero:
            import scipy.sparse
            self._last, self._ran = None, RAN_ZEROS
            return scipy.sparse.csr_array(
                (self.links[self.k - 1].m, self.links[0].n),
                dtype=_DT_DOUBLE if typenum == cnp.NPY_DOUBLE else _DT_FLOAT)
        s = self._strategy(MODE_SPARSE, 0)
        f = <Link *>gc_malloc_n(self.k, sizeof(Link))
        if f == NULL:
            raise MemoryError()
        try:
            product_factors(self.links, self.k, MODE_SPARSE, 0, NULL, f)
            res = run_sparse_product(f, self.k, s.split, s.order, typenum)
        finally:
            free(f)
        self._last, self._ran = s, RAN_ACCUMULATE
        return res

    cdef _accumulate(self, Strategy s, cnp.ndarray x, Py_ssize_t B,
                     cnp.ndarray dst, int typenum):
        """dst = the product of s.mode (x: the block of a vjp/jvp, None for
        the jacobian) in s's order; per sample for a per-sample jacobian."""
        cdef int mode = _MODE_CODES[s.mode]
        cdef Py_ssize_t m = self.k + (0 if mode == MODE_JACOBIAN else 1)
        cdef Link *f = <Link *>gc_malloc_n(m, sizeof(Link))
        cdef int rc, nt = effective_threads()
        cdef void *out = cnp.PyArray_DATA(dst)
        cdef Py_ssize_t ostride = 0, nb = self.nsamples
        cdef const int *split = s.split
        cdef int order = s.order
        cdef bint per_sample = s.per_sample, sample_threads = s.sample_threads
        cdef gc_fpstate fps
        if f == NULL:
            raise MemoryError()
        try:
            product_factors(self.links, self.k, mode, B,
                            NULL if x is None else cnp.PyArray_DATA(x), f)
            if s.per_sample:
                ostride = cnp.PyArray_STRIDE(dst, 0) // cnp.PyArray_ITEMSIZE(dst)
            with nogil:
                fp_enter(&fps, nt)
                if typenum == cnp.NPY_DOUBLE:
                    rc = _execute(f, m, split, order, per_sample, sample_threads,
                                  nb, <double *>out, ostride, nt)
                else:
                    rc = _execute(f, m, split, order, per_sample, sample_threads,
                                  nb, <float *>out, ostride, nt)
                fp_exit(&fps)
        finally:
            free(f)
        if rc:
            link_raise(rc, "could not allocate the intermediate products")

    def vjp(self, cotangent, out=None, *, intermediates=False, accumulate=None):
        """J_1^T J_2^T ... J_k^T g for g of shape (n_k,) or (batch, n_k);
        with intermediates=True every cotangent along the way, lambda_k = g,
        ..., lambda_0, as a Trajectory indexed by i (batch * (n_0 + ... +
        n_k) elements in one allocation, or the k + 1 arrays of an out=
        sequence); see gradchain.vjp."""
        if _wide(accumulate):
            cotangent = _in_float64(cotangent)
        if intermediates is False:
            return self._product(cotangent, out, True)
        return self._trajectory(cotangent, out, True, intermediates)

    def jvp(self, tangent, out=None, *, intermediates=False, accumulate=None):
        """J_k ... J_2 J_1 v for v of shape (n_0,) or (batch, n_0); with
        intermediates=True every tangent along the way, t_0 = v, ..., t_k,
        as a Trajectory (memory as vjp's); see gradchain.jvp."""
        if _wide(accumulate):
            tangent = _in_float64(tangent)
        if intermediates is False:
            return self._product(tangent, out, False)
        return self._trajectory(tangent, out, False, intermediates)

    cdef object _trajectory(self, object x_in, object out, bint transpose,
                            object flag):
        """The k + 1 values of a vjp (transpose) or jvp of x_in, into one
        allocation or the caller's out sequence (a Trajectory).  Propagates
        link by link, whatever the strategy of the plain product (every
        intermediate is wanted): the plan of ``Chain.plan(...,
        intermediates=True)``."""
        cdef str name = "cotangent" if transpose else "tangent"
        cdef int typenum, rc = 0, nt
        cdef Py_ssize_t k = self.k, B, nres, i, s, total = 0, t, run
        cdef cnp.ndarray x
        cdef Trajectory traj
        cdef void **steps = NULL
        cdef void *stackbuf[64]
        cdef Py_ssize_t isz
        cdef cnp.npy_intp dim
        cdef char *p
        if flag is not True:
            raise TypeError(f"intermediates must be True or False, got {flag!r}")
        x = self.vector(x_in, name, transpose, &typenum, &B, &nres)
        cdef int nd = cnp.PyArray_NDIM(x)
        cdef gc_fpstate fps
        cdef bint f32 = False
        if typenum != self.typenum and self.typenum != -1 and self._dense_only():
            f32 = True      # the mixed kernels (as _product)
        elif typenum != self.typenum and self.typenum != -1:
            # float32 chain, float64 vector: promoted for this call (as _product)
            promoted = ChainCore([_promoted(J) for J in self.jacobians],
                                 transpose_copies=self.copy_bytes >= 0)
            self._last, self._ran = None, RAN_PROMOTED
            return (<ChainCore>promoted)._trajectory(x, out, transpose, flag)
        traj = Trajectory.__new__(Trajectory)
        traj._chain, traj._B, traj._nd, traj._cotangents = self, B, nd, transpose
        traj._n = cnp.PyArray_DIM(x, nd - 1)
        isz = 8 if typenum == cnp.NPY_DOUBLE else 4
        # the sizes: every width is at most maxw (or the vector's, k = 0),
        # so (k + 1) maxw B items bound them; the exact sum when that fits
        if not gc_size_mul3(k + 1, max(self.maxw, traj._n), B, &t) \
                or not gc_size_mul(t, isz, &t):
            for i in range(k + 1):
                if (not gc_size_mul(B, traj._width(i), &t)
                        or not gc_size_add(total, t, &total)
                        or not gc_size_mul(total, isz, &t)):
                    raise MemoryError(
                        f"the {k + 1} {traj.kind} of a batch of {B} exceed the "
                        f"address space")
        total = 0
        for i in range(k + 1):
            total += _pos_width(self, traj._n, i)
        total *= B
        arrays = None
        if out is None:
            dim = total
            traj._buf = cnp.PyArray_EMPTY(1, &dim, typenum, 0)
            if self.has_zero:
                memset(cnp.PyArray_DATA(traj._buf), 0, total * isz)
        else:
            arrays = self._check_trajectory_out(out, x, name, nd, B, typenum,
                                                traj)
            traj._arrays = tuple(out)
        if not (cnp.PyArray_IS_C_CONTIGUOUS(x) and _usable(x, typenum)):
            x = np.require(x, _DT_DOUBLE if typenum == cnp.NPY_DOUBLE
                           else _DT_FLOAT, "CA")
        if k + 1 <= 64:
            steps = &stackbuf[0]
        else:
            steps = <void **>gc_malloc_n(k + 1, sizeof(void *))
        if steps == NULL:
            raise MemoryError()
        try:
            # steps[j]: where propagation's value j goes -- j = 0 the given
            # end (g at x^(k) for a vjp, v at x^(0) for a jvp), j = s + 1
            # step s's result (the value at x^(k-1-s), or x^(s+1))
            t = 0
            for i in range(k + 1):
                p = (<char *>cnp.PyArray_DATA(traj._buf) + t * isz
                     if arrays is None
                     else <char *>cnp.PyArray_DATA(<cnp.ndarray>arrays[i]))
                steps[k - i if transpose else i] = p
                t += B * _pos_width(self, traj._n, i)
            memcpy(steps[0], cnp.PyArray_DATA(x), B * traj._n * isz)
            # the steps that run: up to the first zero width (an empty sum
            # from there on: zeros, already there)
            run = k if B > 0 else 0
            if self.has_zero and B > 0:
                run = 0
                while run < k:
                    i = k - run if transpose else run
                    if (traj._width(i) == 0
                            or traj._width(i - 1 if transpose else i + 1) == 0):
                        break
                    run += 1
            if run > 0:
                nt = effective_threads()
                with nogil:
                    fp_enter(&fps, nt)
                    if typenum == cnp.NPY_DOUBLE:
                        rc = propagate(self.links + (k - run if transpose else 0),
                                       run, self.maxw, transpose,
                                       <const double *>cnp.PyArray_DATA(x), B,
                                       NULL, NULL, nt, <double **>(steps + 1),
                                       f32)
                    else:
                        rc = propagate(self.links + (k - run if transpose else 0),
                                       run, self.maxw, transpose,
                                       <const float *>cnp.PyArray_DATA(x), B,
                                       NULL, NULL, nt, <float **>(steps + 1))
                    fp_exit(&fps)
        finally:
            if steps != &stackbuf[0]:
                free(steps)
        if rc:
            link_raise(rc, "could not allocate the chain's work buffers")
        self._last, self._ran = None, (RAN_MIXED if f32 else RAN_PROPAGATE)
        if arrays is not None:
            for i in range(k + 1):
                if arrays[i] is not out[i]:
                    out[i][...] = arrays[i]
        return traj

    cdef list _check_trajectory_out(self, object out, cnp.ndarray x, str name,
                                    int nd, Py_ssize_t B, int typenum,
                                    Trajectory traj):
        """out= of an intermediates product: a sequence of k + 1 arrays,
        item i of shape (n_i,) or (B, n_i), each checked as a product's out
        (check_out), none sharing memory with another.  Returns the arrays
        to write (a fresh C-contiguous one where an item is not), zeroed
        when the chain has a zero width."""
        cdef Py_ssize_t i, m = self.k + 1
        cdef cnp.npy_intp rdims[2]
        cdef const char *lo
        cdef const char *hi
        if isinstance(out, cnp.ndarray) or not hasattr(out, "__len__"):
            raise TypeError(f"out must be a sequence of {m} arrays (one per "
                            f"{traj.kind[:-1]}) with intermediates=True, got "
                            f"{type(out).__name__}")
        if len(out) != m:
            raise ValueError(f"out must hold {m} arrays (n_0 ... n_k) with "
                             f"intermediates=True, got {len(out)}")
        arrays, boxes = [], []
        for i in range(m):
            rdims[0] = traj._width(i) if nd == 1 else B
            rdims[1] = traj._width(i)
            a = self.check_out(out[i], x, name, nd, rdims, typenum, f"out[{i}]")
            arrays.append(a)
            _extent(<cnp.ndarray>out[i], &lo, &hi)
            if lo < hi:
                boxes.append((<size_t>lo, <size_t>hi, i))
        # a sweep over the byte ranges by start: each against the earlier
        # ones still open (an exact test where ranges meet)
        boxes.sort()
        active = []
        for blo, bhi, j in boxes:
            active = [b for b in active if b[1] > blo]
            for b in active:
                if _shares_memory(out[b[2]], out[j]):
                    raise ValueError(f"out[{min(b[2], j)}] and out[{max(b[2], j)}] "
                                     f"share memory")
            active.append((blo, bhi, j))
        if self.has_zero:
            for a in arrays:
                a[...] = 0
        return arrays

    cdef object _product(self, object x_in, object out, bint transpose):
        """vjp (transpose) or jvp of x_in, into out when given."""
        cdef str name = "cotangent" if transpose else "tangent"
        cdef int typenum, nt, rc
        cdef Py_ssize_t k = self.k, B, nres, wsize
        cdef cnp.ndarray res, dst
        cdef cnp.npy_intp rdims[2]
        cdef Strategy s
        cdef cnp.ndarray x = self.vector(x_in, name, transpose, &typenum, &B,
                                         &nres)
        cdef int nd = cnp.PyArray_NDIM(x)
        rdims[0] = nres if nd == 1 else B
        rdims[1] = nres
        if out is None:
            res = cnp.PyArray_EMPTY(nd, rdims, typenum, 0)
            dst = res
        else:
            dst = self.check_out(out, x, name, nd, rdims, typenum)
            res = <cnp.ndarray>out
        cdef bint promote = typenum != self.typenum and self.typenum != -1
        if (promote and B * nres > 0 and k > 0 and not self.has_zero
                and self._dense_only()):
            # float32 dense links, float64 vector, a plan that propagates:
            # the links read in place by the mixed kernels (float64 sums,
            # the float64 chain's operations)
            s = self._strategy(MODE_VJP if transpose else MODE_JVP, B)
            if s.order == ORDER_LEFT:
                if not gc_size_mul3(2 * B, self.maxw, sizeof(double), &wsize):
                    raise MemoryError(
                        f"the work buffers for a batch of {B} through widths "
                        f"up to {self.maxw} exceed the address space")
                if not (cnp.PyArray_IS_C_CONTIGUOUS(x) and _usable(x, typenum)):
                    x = np.require(x, _DT_DOUBLE, "CA")
                self._propagate(x, B, dst, typenum, transpose, True)
                self._last, self._ran = s, RAN_MIXED
                promote = False
                if dst is not res:
                    res[...] = dst
                return res
        if promote:
            # float32 chain, float64 vector: promote like NumPy.  This
            # converts every link for this call (except where the mixed
            # kernels above apply); build the Chain in float64 to avoid it.
            promoted = ChainCore([_promoted(J) for J in self.jacobians],
                                 transpose_copies=self.copy_bytes >= 0)
            (<ChainCore>promoted)._product(x, dst, transpose)
            self._last, self._ran = None, RAN_PROMOTED
        elif B * nres > 0 and self.has_zero:
            # the product passes through a zero-width intermediate: an
            # empty sum, exactly zero (as NumPy's @), whatever the values
            dst[...] = 0
            self._last, self._ran = None, RAN_ZEROS
        elif B * nres > 0:
            if not (cnp.PyArray_IS_C_CONTIGUOUS(x) and _usable(x, typenum)):
                x = np.require(x, _DT_DOUBLE if typenum == cnp.NPY_DOUBLE
                               else _DT_FLOAT, "CA")
            if k == 0:
                dst[...] = x
                self._last, self._ran = None, RAN_COPY
            else:
                # the two work halves of propagation: 2 * B * maxw elements,
                # checked for overflow before any allocation
                if not gc_size_mul3(2 * B, self.maxw, sizeof(double), &wsize):
                    raise MemoryError(
                        f"the work buffers for a batch of {B} through widths "
                        f"up to {self.maxw} exceed the address space")
                s = self._strategy(MODE_VJP if transpose else MODE_JVP, B)
                if s.order != ORDER_LEFT:
                    # pre-accumulating some links beats plain propagation
                    self._accumulate(s, x, B, dst, typenum)
                    self._last, self._ran = s, RAN_ACCUMULATE
                else:
                    self._propagate(x, B, dst, typenum, transpose)
                    self._last, self._ran = s, RAN_PROPAGATE
        if dst is not res:
            res[...] = dst
        return res

    cdef bint _dense_only(self):
        """Every link dense (shared or per-sample): what the mixed kernels
        take."""
        cdef Py_ssize_t i
        for i in range(self.k):
            if self.links[i].kind != LINK_DENSE:
                return False
        return True

    cdef _propagate(self, cnp.ndarray x, Py_ssize_t B, cnp.ndarray dst,
                    int typenum, bint transpose, bint f32=False):
        cdef int rc, nt = effective_threads()
        cdef const void *xp = cnp.PyArray_DATA(x)
        cdef void *dp = cnp.PyArray_DATA(dst)
        cdef gc_fpstate fps
        with nogil:
            fp_enter(&fps, nt)
            if typenum == cnp.NPY_DOUBLE:
                rc = propagate(self.links, self.k, self.maxw, transpose,
                               <const double *>xp, B, <double *>dp, NULL, nt,
                               NULL, f32)
            else:
                rc = propagate(self.links, self.k, self.maxw, transpose,
                               <const float *>xp, B, <float *>dp, NULL, nt)
            fp_exit(&fps)
        if rc:
            link_raise(rc, "could not allocate the chain's work buffers")
