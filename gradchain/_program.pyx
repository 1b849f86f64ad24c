"""Compiled map programmes: forward and backward passes of a composition
of built-in maps (and a loss) as one nogil call over op codes and bound
buffers.

A ``Program`` holds one op per map (affine: W and b bound in place;
elementwise code and parameter; softmax / log-softmax) and runs the
forward pass into a workspace that keeps every intermediate x^(i).  The
backward pass J_1^T ... J_k^T g (or the forward-mode J_k ... J_1 v) is the
chain's own propagation loop (``_propagate``): each op's Jacobian at the
stored intermediates is a link (_link.pxd: an affine map's is its W, an
elementwise map's a LINK_ELEMENTWISE layer, softmax's a LINK_SOFTMAX
layer), so there is no second propagation loop.  The workspace is reused
across calls of the same batch size and dtype; a call that finds it in use
(another thread) takes a fresh one, so programmes are safe to share
between threads.

``Program.run`` and ``Program.loss_grad`` are private entry points for
composition.py: they trust the caller for the meaning of their arguments
but check every buffer they read (``_check_block``), so a slip raises
instead of reading out of bounds.
"""
cimport numpy as cnp
import numpy as np
from libc.string cimport memcpy
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cython cimport floating

from gradchain._kernels cimport effective_threads, fp_enter, fp_exit, gc_fpstate
from gradchain._blas cimport block_jv, matmul
from gradchain._link cimport (Link, LINK_DENSE, LINK_DIAG, LINK_DIAG_RANK1,
                              LINK_ELEMENTWISE, LINK_SOFTMAX, LINK_LOG_SOFTMAX,
                              link_clear)
from gradchain._propagate cimport propagate
from gradchain._bracket cimport Strategy, choose, product_factors, MODE_JACOBIAN
from gradchain._accumulate cimport run_product
from libc.math cimport exp
from gradchain._sizes cimport gc_size_add, gc_size_mul, gc_size_mul3, gc_malloc_n
from libc.stdlib cimport free

cnp.import_array()

cdef extern from "gc_maps.h" nogil:
    void gc_ew_forward_s(int code, double param, Py_ssize_t n, const float *x, float *y)
    void gc_ew_forward_d(int code, double param, Py_ssize_t n, const double *x, double *y)
    void gc_ew_deriv_mul_s(int code, double param, Py_ssize_t n, const float *x,
                           const float *y, const float *g, float *out)
    void gc_ew_deriv_mul_d(int code, double param, Py_ssize_t n, const double *x,
                           const double *y, const double *g, double *out)
    void gc_softmax_s(int log, Py_ssize_t B, Py_ssize_t n, const float *x, float *y)
    void gc_softmax_d(int log, Py_ssize_t B, Py_ssize_t n, const double *x, double *y)
    # the elementwise and loss codes, declared once (in the C header) and
    # exported to Python from here for maps.py
    cpdef enum:
        GC_EW_TANH
        GC_EW_SIGMOID
        GC_EW_RELU
        GC_EW_LEAKY_RELU
        GC_EW_SOFTPLUS
        GC_EW_EXP
        GC_EW_LOG
        GC_EW_SIN
        GC_EW_COS
        GC_EW_SQUARE
        GC_EW_SCALE
    cpdef enum:
        GC_LOSS_SQUARED_ERROR
        GC_LOSS_MEAN_SQUARED_ERROR
        GC_LOSS_CROSS_ENTROPY
        GC_LOSS_LOGSUMEXP
        GC_LOSS_DOT
    void gc_loss_s(int code, Py_ssize_t B, Py_ssize_t n, const float *x,
                   const float *aux, const long long *labels, double *value,
                   float *grad)
    void gc_loss_d(int code, Py_ssize_t B, Py_ssize_t n, const double *x,
                   const double *aux, const long long *labels, double *value,
                   double *grad)

# op codes (maps.py sets them through Program's constructor)
cpdef enum OpCode:
    OP_AFFINE = 1
    OP_ELEMENTWISE = 2
    OP_SOFTMAX = 3
    OP_LOG_SOFTMAX = 4

cdef struct Op:
    int code
    int ew                  # elementwise: gc_maps.h code
    const double *param     # elementwise parameter: a float64 0-d array's
                            # datum, read in place (set_params writes it),
                            # or pval
    double pval             # a parameter given as a number
    const char *W           # affine: W[0, 0], strides in elements
    const char *b           # affine: bias (contiguous) or NULL
    Py_ssize_t n_out, n_in, rs, cs


cdef void _add_bias(floating *Y, const floating *b, Py_ssize_t B,
                    Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t r, i
    for r in range(B):
        for i in range(n):
            Y[r * n + i] += b[i]


cdef int _forward(const Op *ops, Py_ssize_t k, Py_ssize_t B,
                  const Py_ssize_t *dims, floating **xs, int nt) noexcept nogil:
    """xs[i + 1] = f_i(xs[i]) for every op; xs[i] is (B, dims[i])."""
    cdef Py_ssize_t i
    cdef const Op *o
    for i in range(k):
        o = &ops[i]
        if o.code == OP_AFFINE:
            if block_jv(<const floating *>o.W, o.n_out, o.n_in, o.rs, o.cs,
                        xs[i], B, xs[i + 1], nt):
                return -1
            if o.b != NULL:
                _add_bias(xs[i + 1], <const floating *>o.b, B, o.n_out)
        elif o.code == OP_ELEMENTWISE:
            if floating is float:
                gc_ew_forward_s(o.ew, o.param[0], B * dims[i], xs[i], xs[i + 1])
            else:
                gc_ew_forward_d(o.ew, o.param[0], B * dims[i], xs[i], xs[i + 1])
        else:
            if floating is float:
                gc_softmax_s(o.code == OP_LOG_SOFTMAX, B, dims[i], xs[i], xs[i + 1])
            else:
                gc_softmax_d(o.code == OP_LOG_SOFTMAX, B, dims[i], xs[i], xs[i + 1])
    return 0


cdef int _backward(const Op *ops, Py_ssize_t k, Py_ssize_t B,
                   const Py_ssize_t *dims, floating **xs, bint transpose,
                   const floating *t, floating *out, floating *work,
                   Py_ssize_t nmax, int nt, floating **lam=NULL,
                   Py_ssize_t nsteps=-1) noexcept nogil:
    """transpose: out = t J_k ... J_1 (rows of t are cotangents, (B, dims[k]))
    else: out = J_k ... J_1 t (rows are tangents, (B, dims[0])), each J_i
    the link of op i at the stored intermediates xs, through the chain's
    propagation loop; work: 2 * B * nmax elements.

    lam (transpose only): the cotangents are kept, lam[i] receiving the
    rows at x^(i) (B x dims[i]) for i = k - nsteps .. k - 1 (the first
    nsteps links from the end: the ones a parameter gradient needs; out
    and work unused), lam[k] being t itself."""
    cdef Link stackbuf[32]
    cdef Link *links = stackbuf
    cdef Link *L
    cdef const Op *o
    cdef Py_ssize_t i
    cdef int rc
    cdef floating *orderbuf[32]
    cdef floating **order = orderbuf
    if nsteps < 0:
        nsteps = k
    if k == 0:
        if lam == NULL:
            memcpy(out, t, B * dims[0] * sizeof(floating))
        return 0
    if k > 32:
        links = <Link *>gc_malloc_n(k, sizeof(Link))
        order = <floating **>gc_malloc_n(k, sizeof(floating *))
        if links == NULL or order == NULL:
            free(links)
            free(order)
            return -1
    for i in range(k):
        o = &ops[i]
        L = &links[i]
        if o.code == OP_AFFINE:
            L[0] = link_clear(LINK_DENSE, o.n_out, o.n_in)
            L.data, L.rs, L.cs = o.W, o.rs, o.cs
        elif o.code == OP_ELEMENTWISE:
            L[0] = link_clear(LINK_ELEMENTWISE, dims[i], dims[i])
            L.d, L.u = <const char *>xs[i], <const char *>xs[i + 1]
            L.code, L.scale = o.ew, o.param[0]
        else:
            L[0] = link_clear(LINK_LOG_SOFTMAX if o.code == OP_LOG_SOFTMAX
                              else LINK_SOFTMAX, dims[i], dims[i])
            L.u = <const char *>xs[i + 1]
    if lam == NULL:
        rc = propagate(links, k, nmax, transpose, t, B, out, work, nt)
    else:
        # propagate's step s writes the value at x^(k-1-s): lam reversed
        for i in range(nsteps):
            order[i] = lam[k - 1 - i]
        rc = propagate(links + (k - nsteps), nsteps, nmax, True, t, B, NULL,
                       NULL, nt, order) if nsteps > 0 else 0
    if links != stackbuf:
        free(links)
        free(order)
    return rc


cdef double _ew_param_sum(int ew, Py_ssize_t n, const floating *x,
                          const floating *lam) noexcept nogil:
    """sum_j lam_j d f(x_j) / d theta for an elementwise map's parameter
    theta (in double, in index order): Scale (f = c x) x_j; LeakyReLU (f =
    alpha x below 0) x_j where x_j < 0, else 0."""
    cdef Py_ssize_t j
    cdef double acc = 0.0
    if ew == GC_EW_SCALE:
        for j in range(n):
            acc += <double>lam[j] * <double>x[j]
    elif ew == GC_EW_LEAKY_RELU:
        for j in range(n):
            if x[j] < 0:
                acc += <double>lam[j] * <double>x[j]
    return acc


cdef bint _op_has_params(const Op *o) noexcept nogil:
    """The op has parameters of its own (affine W, b; Scale's c;
    LeakyReLU's alpha)."""
    return o.code == OP_AFFINE or (o.code == OP_ELEMENTWISE and (
        o.ew == GC_EW_SCALE or o.ew == GC_EW_LEAKY_RELU))


cdef int _param_grads(const Op *ops, Py_ssize_t k, Py_ssize_t B,
                      const Py_ssize_t *dims, floating **xs, floating **lam,
                      bint per_example, void **gout, int nt) noexcept nogil:
    """The parameter gradients of every op with parameters, from its input
    rows X = xs[i] (B x dims[i]) and the cotangent rows at its output
    Lam = lam[i + 1] (B x dims[i + 1]):

        affine       dW = Lam^T X  (one ?gemm),   db = sum_b Lam[b]
        Scale        dc = sum_bj Lam[b, j] X[b, j]
        LeakyReLU    dalpha = sum over X[b, j] < 0 of Lam[b, j] X[b, j]

    summed over the batch, or (per_example) one per row: dW[b] = Lam[b]
    X[b]^T, db[b] = Lam[b], dc[b], dalpha[b].  gout[2 i], gout[2 i + 1]:
    op i's outputs (NULL where it has none; db NULL without a bias).
    The sums over rows and indices run in order (double accumulators for
    the scalars).  0, or -1 when out of memory."""
    cdef Py_ssize_t i, b, j, m, n
    cdef const Op *o
    cdef const floating *X
    cdef const floating *G
    cdef floating *dW
    cdef floating *db
    cdef floating *d
    for i in range(k):
        o = &ops[i]
        if not _op_has_params(o) or gout[2 * i] == NULL:
            continue
        X, G = xs[i], lam[i + 1]
        n, m = dims[i], dims[i + 1]
        if o.code == OP_AFFINE:
            dW = <floating *>gout[2 * i]
            db = <floating *>gout[2 * i + 1]
            if per_example:
                # one thread: the B m n outputs are fresh memory, and on the
                # measured VM two threads first-touching it ran slower (18
                # -> 29-46 ms for B = 256 through four 64 x 64 layers)
                for b in range(B):
                    _outer(G + b * m, X + b * n, m, n, dW + b * m * n)
                if db != NULL:
                    memcpy(db, G, B * m * sizeof(floating))
                continue
            # dW (m x n) = G^T (m x B: G read as F-order) X (B x n); one
            # row: the outer product (a BLAS call costs more than it)
            if B == 1:
                _outer(G, X, m, n, dW)
            elif matmul(G, 1, m, X, n, 1, m, B, n, dW, nt):
                return -1
            if db != NULL:
                for j in range(m):
                    db[j] = 0
                for b in range(B):
                    for j in range(m):
                        db[j] += G[b * m + j]
            continue
        d = <floating *>gout[2 * i]
        if per_example:
            for b in range(B):
                d[b] = <floating>_ew_param_sum(o.ew, n, X + b * n, G + b * n)
        else:
            d[0] = <floating>_ew_param_sum(o.ew, B * n, X, G)
    return 0


cdef void _outer(const floating *g, const floating *x, Py_ssize_t m,
                 Py_ssize_t n, floating *out) noexcept nogil:
    """out (m x n) = g x^T."""
    cdef Py_ssize_t j, l
    cdef floating gj
    for j in range(m):
        gj = g[j]
        for l in range(n):
            out[j * n + l] = gj * x[l]


cdef Py_ssize_t _jacobian_scratch(const Op *ops, Py_ssize_t k,
                                 const Py_ssize_t *dims,
                                 Py_ssize_t nmax) noexcept nogil:
    """Elements _jacobian_links needs: nmax ones, then one vector per
    elementwise and log-softmax op."""
    cdef Py_ssize_t i, t = nmax
    for i in range(k):
        if ops[i].code == OP_ELEMENTWISE or ops[i].code == OP_LOG_SOFTMAX:
            t += dims[i]
    return t


cdef void _jacobian_links(const Op *ops, Py_ssize_t k, const Py_ssize_t *dims,
                          floating **xs, floating *scratch, Py_ssize_t nmax,
                          Link *links) noexcept nogil:
    """links[i] = op i's Jacobian J_i at the stored intermediates of a
    single x (B = 1) as a link products take (_bracket, _accumulate): the
    one statement of each op's Jacobian as a matrix,

        affine       J = W                   (dense, read in place)
        elementwise  J = diag(f'(x))         f'(x) = the kernel's f'(x) * 1
        softmax      J = diag(s) - s s^T     s = y
        log-softmax  J = I - 1 s^T           s = exp(y)

    (the propagation's batched forms of the same Jacobians are the layer
    kinds of _backward).  scratch: _jacobian_scratch elements; the links
    point into it and into xs."""
    cdef Py_ssize_t i, j, n
    cdef const Op *o
    cdef Link *L
    cdef floating *ones = scratch
    cdef floating *vec = scratch + nmax
    for j in range(nmax):
        ones[j] = 1
    for i in range(k):
        o = &ops[i]
        L = &links[i]
        n = dims[i]
        if o.code == OP_AFFINE:
            L[0] = link_clear(LINK_DENSE, o.n_out, o.n_in)
            L.data, L.rs, L.cs = o.W, o.rs, o.cs
            continue
        if o.code == OP_ELEMENTWISE:
            if floating is float:
                gc_ew_deriv_mul_s(o.ew, o.param[0], n, xs[i], xs[i + 1], ones, vec)
            else:
                gc_ew_deriv_mul_d(o.ew, o.param[0], n, xs[i], xs[i + 1], ones, vec)
            L[0] = link_clear(LINK_DIAG, n, n)
            L.d, L.ds = <const char *>vec, 1
            vec += n
            continue
        L[0] = link_clear(LINK_DIAG_RANK1, n, n)
        L.ds = L.us = L.vs = 1
        L.scale = -1.0
        if o.code == OP_SOFTMAX:
            L.d = L.u = L.v = <const char *>xs[i + 1]
        else:
            for j in range(n):
                vec[j] = <floating>exp(xs[i + 1][j])
            L.d = L.u = <const char *>ones
            L.v = <const char *>vec
            vec += n


cdef floating *_bind_layers(floating **xs, floating *x0, floating *base,
                            const Py_ssize_t *dims, Py_ssize_t B,
                            Py_ssize_t k) noexcept nogil:
    """xs[0] = x0 and xs[i] = layer i's B x dims[i] rows in the workspace,
    one after another from base; returns the work area that follows."""
    cdef Py_ssize_t i, off = 0
    xs[0] = x0
    for i in range(1, k + 1):
        xs[i] = base + off
        off += B * dims[i]
    return base + off


cdef int _check_block(object a, str name, int typenum, Py_ssize_t B,
                      Py_ssize_t n, int ndim=2) except -1:
    """a is what the nogil loops may read as B rows of n values: an aligned,
    C-contiguous ndarray of the plan's dtype and exactly that shape (ndim 1:
    (n,) with B == 1).  The callers (maps.py) guarantee it; checking costs a
    few comparisons and turns any slip into an error instead of an
    out-of-bounds read."""
    cdef cnp.ndarray x
    if not isinstance(a, cnp.ndarray):
        raise TypeError(f"{name} must be an ndarray, got {type(a).__name__}")
    x = <cnp.ndarray>a
    if (cnp.PyArray_TYPE(x) != typenum or not cnp.PyArray_IS_C_CONTIGUOUS(x)
            or not cnp.PyArray_ISALIGNED(x) or not cnp.PyArray_ISNOTSWAPPED(x)):
        raise ValueError(f"{name} must be an aligned, C-contiguous array of "
                         f"the plan's dtype, got dtype {x.dtype}")
    if ndim == 1 and cnp.PyArray_NDIM(x) == 1:
        if B != 1 or cnp.PyArray_DIM(x, 0) != n:
            raise ValueError(f"{name} has shape {(<object>x).shape}, expected ({n},)")
    elif (cnp.PyArray_NDIM(x) != 2 or cnp.PyArray_DIM(x, 0) != B
            or cnp.PyArray_DIM(x, 1) != n):
        raise ValueError(f"{name} has shape {(<object>x).shape}, expected ({B}, {n})")
    return 0


cdef Py_ssize_t _workspace_elems(Py_ssize_t B, const Py_ssize_t *dims,
                                 Py_ssize_t k, Py_ssize_t itemsize,
                                 Py_ssize_t *nmax) except -1:
    """Elements of a plan's workspace for B rows (see _bind_layers): the
    layers x^(1) .. x^(k), then two work halves of B * nmax, nmax the widest
    of dims[0..k] (stored in *nmax).  Every product and sum checked."""
    cdef Py_ssize_t i, t, total = 0, w = dims[0]
    cdef bint ok = True
    for i in range(1, k + 1):
        w = max(w, dims[i])
        ok = ok and gc_size_mul(B, dims[i], &t) and gc_size_add(total, t, &total)
    ok = (ok and gc_size_mul3(2, B, w, &t) and gc_size_add(total, t, &total)
          and gc_size_mul(total, itemsize, &t))
    if not ok:
        raise MemoryError(f"the plan's workspace for a batch of {B} through "
                          f"widths up to {w} exceeds the address space")
    nmax[0] = w
    return total


cdef class _Grads:
    """One parameter-gradient pass of a Program: the arrays it fills
    (``grads``: per op a tuple -- affine (dW, db) or (dW,), Scale (dc,),
    LeakyReLU (dalpha,), else () -- summed over the batch or, per example,
    with a leading batch axis) and the kept cotangents it runs through
    (_backward with lam, then _param_grads)."""

    cdef readonly tuple grads
    cdef char *_keep            # the kept cotangents' buffer (gc_malloc_n)
    cdef void **gout            # 2 k output pointers (NULL: none)
    cdef char **lam             # k + 1 cotangent pointers (NULL: not kept)
    cdef Py_ssize_t nsteps
    cdef bint per_example, want_x

    def __dealloc__(self):
        PyMem_Free(self.gout)
        PyMem_Free(self.lam)
        free(self._keep)

    cdef int prepare(self, Program prog, Py_ssize_t B, const Py_ssize_t *dims,
                     bint per_example, bint want_x, char *t, cnp.ndarray res,
                     Py_ssize_t isz) except -1:
        """The outputs and the cotangent buffers for B rows: t holds the
        cotangent rows at x^(k), res receives those at x^(0) (want_x)."""
        cdef Py_ssize_t k = prog._k, i, first = k, total = 0, off = 0
        cdef const Op *o
        cdef cnp.ndarray a
        cdef cnp.npy_intp sh[3]
        self.per_example, self.want_x = per_example, want_x
        self.gout = <void **>PyMem_Malloc(max(2 * k, 1) * sizeof(void *))
        self.lam = <char **>PyMem_Malloc((k + 1) * sizeof(char *))
        if self.gout == NULL or self.lam == NULL:
            raise MemoryError()
        grads = []
        tn = prog._typenum
        lead = 1 if per_example else 0      # the leading batch axis
        sh[0] = B
        for i in range(k):
            o = &prog._ops[i]
            self.gout[2 * i] = self.gout[2 * i + 1] = NULL
            self.lam[i] = NULL
            if not _op_has_params(o):
                grads.append(())
                continue
            first = min(first, i)
            if o.code == OP_AFFINE:
                sh[lead], sh[lead + 1] = o.n_out, o.n_in
                a = cnp.PyArray_EMPTY(2 + lead, sh, tn, 0)
                self.gout[2 * i] = cnp.PyArray_DATA(a)
                if o.b != NULL:
                    db = cnp.PyArray_EMPTY(1 + lead, sh, tn, 0)
                    self.gout[2 * i + 1] = cnp.PyArray_DATA(<cnp.ndarray>db)
                    grads.append((a, db))
                else:
                    grads.append((a,))
            else:
                a = cnp.PyArray_EMPTY(lead, sh, tn, 0)
                self.gout[2 * i] = cnp.PyArray_DATA(a)
                grads.append((a,))
        # the cotangents kept: at x^(first + 1) .. x^(k - 1), and x^(0)
        # (into res) when the input's gradient is wanted
        self.nsteps = k if want_x else k - 1 - first if first < k else 0
        cdef Py_ssize_t rows
        for i in range(k - self.nsteps, k):
            if i > 0 and not (gc_size_mul(B, dims[i], &rows)
                              and gc_size_add(total, rows, &total)):
                raise MemoryError(f"the kept cotangents of a batch of {B} "
                                  f"exceed the address space")
        self.grads = tuple(grads)
        self._keep = <char *>gc_malloc_n(max(total, 1), isz)
        if self._keep == NULL:
            raise MemoryError()
        for i in range(k - self.nsteps, k):
            if i > 0:
                self.lam[i] = self._keep + off * isz
                off += B * dims[i]
        if want_x:
            self.lam[0] = <char *>cnp.PyArray_DATA(res)
        self.lam[k] = t
        return 0

    cdef int run(self, const Op *ops, Py_ssize_t k, Py_ssize_t B,
                 const Py_ssize_t *dims, floating **xs, Py_ssize_t nmax,
                 int nt) noexcept nogil:
        cdef int rc
        if k == 0:
            if self.want_x:
                memcpy(self.lam[0], self.lam[k], B * dims[0] * sizeof(floating))
            return 0
        rc = _backward(ops, k, B, dims, xs, True, <floating *>self.lam[k],
                       NULL, NULL, nmax, nt, <floating **>self.lam, self.nsteps)
        if rc == 0:
            rc = _param_grads(ops, k, B, dims, xs, <floating **>self.lam,
                              self.per_example, self.gout, nt)
        return rc


cdef class Program:
    """Compiled forward/backward of built-in maps (see module docstring).

    Parameters
    ----------
    specs : list of tuples
        One per map: (OP_AFFINE, W, b) with W (n_out, n_in) and b (n_out,)
        or None, already in ``dtype``; (OP_ELEMENTWISE, code, param), param
        a number or a 0-d float64 array read in place at every call;
        (OP_SOFTMAX,) or (OP_LOG_SOFTMAX,).
    dtype : float32 or float64
    """

    cdef Op *_ops
    cdef Py_ssize_t _k
    cdef int _typenum
    cdef list _keep
    cdef object _ws
    cdef Py_ssize_t _ws_B
    cdef bint _ws_busy
    cdef list _arrays          # per op: W for an affine op, else None
    cdef dict _strategies      # n_0 -> the jacobian's strategy cache

    def __cinit__(self, list specs, dtype):
        cdef Py_ssize_t i
        cdef Op *o
        cdef cnp.ndarray W, b, P
        self._k = len(specs)
        self._typenum = cnp.NPY_FLOAT if np.dtype(dtype) == np.float32 else cnp.NPY_DOUBLE
        self._keep = []
        self._arrays = [None] * self._k
        self._strategies = {}
        self._ws = None
        self._ws_B = -1
        self._ws_busy = False
        self._ops = <Op *>PyMem_Malloc(max(1, self._k) * sizeof(Op))
        if self._ops == NULL:
            raise MemoryError()
        for i in range(self._k):
            o = &self._ops[i]
            spec = specs[i]
            o.code = spec[0]
            o.ew = 0
            o.pval = 0.0
            o.param = &o.pval
            o.W = o.b = NULL
            o.n_out = o.n_in = o.rs = o.cs = 0
            if o.code == OP_AFFINE:
                W = spec[1]
                self._keep.append(W)
                self._arrays[i] = W
                o.W = <const char *>cnp.PyArray_DATA(W)
                o.n_out = W.shape[0]
                o.n_in = W.shape[1]
                o.rs = W.strides[0] // W.itemsize
                o.cs = W.strides[1] // W.itemsize
                if spec[2] is not None:
                    b = spec[2]
                    self._keep.append(b)
                    o.b = <const char *>cnp.PyArray_DATA(b)
            elif o.code == OP_ELEMENTWISE:
                o.ew = spec[1]
                if isinstance(spec[2], cnp.ndarray):
                    P = spec[2]
                    if (P.dtype != np.float64 or P.ndim != 0
                            or not cnp.PyArray_ISALIGNED(P)
                            or not cnp.PyArray_ISNOTSWAPPED(P)):
                        raise TypeError("an elementwise parameter array must "
                                        "be a native, aligned 0-d float64 array")
                    self._keep.append(P)
                    o.param = <const double *>cnp.PyArray_DATA(P)
                else:
                    o.pval = spec[2]

    def __dealloc__(self):
        PyMem_Free(self._ops)

    cdef int _fill_dims(self, Py_ssize_t n0, Py_ssize_t *dims) except -1:
        """dims[0..k] = (n_0, ..., n_k) for inputs of width n0, checking
        every affine op's input width."""
        cdef Py_ssize_t i
        dims[0] = n0
        for i in range(self._k):
            if self._ops[i].code == OP_AFFINE:
                if dims[i] != self._ops[i].n_in:
                    raise ValueError(
                        f"op {i} (affine) takes {self._ops[i].n_in} inputs but "
                        f"receives {dims[i]}")
                dims[i + 1] = self._ops[i].n_out
            else:
                dims[i + 1] = dims[i]
        return 0

    cdef Py_ssize_t *_dims_buffer(self, Py_ssize_t *stackbuf, Py_ssize_t n) except NULL:
        """stackbuf when n entries fit in it (64), else a PyMem block."""
        cdef Py_ssize_t *p = stackbuf
        if n > 64:
            p = <Py_ssize_t *>PyMem_Malloc(n * sizeof(Py_ssize_t))
            if p == NULL:
                raise MemoryError()
        return p

    def dims(self, Py_ssize_t n0):
        """(n_0, ..., n_k) for inputs of length n0."""
        cdef Py_ssize_t buf[64]
        cdef Py_ssize_t *d = self._dims_buffer(buf, self._k + 1)
        try:
            self._fill_dims(n0, d)
            return tuple(d[i] for i in range(self._k + 1))
        finally:
            if d != buf:
                PyMem_Free(d)

    cdef cnp.ndarray _claim(self, Py_ssize_t B, Py_ssize_t total,
                            bint *claimed):
        """A workspace of total elements for this call: the cached one,
        which this call then holds (*claimed; the caller releases it with
        _ws_busy = False), unless another call (another thread) holds it;
        then a fresh one.  Resized for a new batch or size."""
        claimed[0] = not self._ws_busy
        if (self._ws_busy or self._ws is None or self._ws_B != B
                or self._ws.shape[0] < total):
            ws = np.empty(total, dtype=np.float32 if self._typenum == cnp.NPY_FLOAT
                          else np.float64)
            if not claimed[0]:
                return ws
            self._ws, self._ws_B = ws, B
        self._ws_busy = True
        return self._ws

    def loss_grad(self, cnp.ndarray x, int loss, object aux, object labels,
                  int pmode=0, bint want_x=True):
        """Loss values and gradients in one compiled pass: x (n_0,) or
        (B, n_0), C-contiguous in the plan's dtype (checked by the caller);
        aux rows (B, n_k) or None, labels (B,) int64 or None.  Returns
        (values (B,), gradient shaped like x); with pmode 1 (summed over
        the batch) or 2 (per example) (values, gradient or None when not
        want_x, the ops' parameter gradients: _grad_arrays)."""
        cdef Py_ssize_t B = 1 if x.ndim == 1 else x.shape[0]
        cdef Py_ssize_t n0 = x.shape[x.ndim - 1], k = self._k, i
        cdef Py_ssize_t buf[64]
        cdef Py_ssize_t *cdims = self._dims_buffer(buf, k + 1)
        cdef Py_ssize_t nmax = n0, total = 0
        cdef bint claimed
        try:
            _check_block(x, "x", self._typenum, B, n0, 1)
            self._fill_dims(n0, cdims)
            total = _workspace_elems(B, cdims, k, cnp.PyArray_ITEMSIZE(x), &nmax)
            if aux is not None:
                _check_block(aux, "the loss target rows", self._typenum, B,
                             cdims[k], 1)
            if labels is not None:
                if (not isinstance(labels, cnp.ndarray)
                        or cnp.PyArray_TYPE(<cnp.ndarray>labels) != cnp.NPY_INT64
                        or cnp.PyArray_NDIM(<cnp.ndarray>labels) != 1
                        or cnp.PyArray_DIM(<cnp.ndarray>labels, 0) != B
                        or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>labels)):
                    raise ValueError(f"labels must be a C-contiguous int64 "
                                     f"array of shape ({B},)")
            elif loss == GC_LOSS_CROSS_ENTROPY:
                raise ValueError("cross-entropy needs labels")
            ws = self._claim(B, total, &claimed)
            try:
                if self._typenum == cnp.NPY_FLOAT:
                    return self._loss_typed(<float *>cnp.PyArray_DATA(ws), x, B,
                                            loss, aux, labels, cdims, nmax,
                                            pmode, want_x)
                return self._loss_typed(<double *>cnp.PyArray_DATA(ws), x, B,
                                        loss, aux, labels, cdims, nmax, pmode,
                                        want_x)
            finally:
                if claimed:
                    self._ws_busy = False
        finally:
            if cdims != buf:
                PyMem_Free(cdims)

    cdef object _loss_typed(self, floating *base, cnp.ndarray x, Py_ssize_t B,
                            int loss, aux, labels, Py_ssize_t *dims,
                            Py_ssize_t nmax, int pmode, bint want_x):
        """loss_grad in the workspace at base (see there)."""
        cdef Py_ssize_t k = self._k, i
        cdef floating *xsbuf[65]
        cdef floating **xs = xsbuf
        cdef floating *work
        cdef int nt = effective_threads(), rc = 0
        cdef cnp.ndarray vals = cnp.PyArray_EMPTY(1, [B], cnp.NPY_DOUBLE, 0)
        cdef cnp.ndarray res = cnp.PyArray_EMPTY(x.ndim, x.shape, self._typenum, 0)
        cdef _Grads gr
        if pmode:
            gr = _Grads.__new__(_Grads)
        cdef const floating *ap = NULL
        cdef const long long *lp = NULL
        cdef gc_fpstate fps
        if aux is not None:
            ap = <const floating *>cnp.PyArray_DATA(<cnp.ndarray>aux)
        if labels is not None:
            lp = <const long long *>cnp.PyArray_DATA(<cnp.ndarray>labels)
        if k + 1 > 65:
            xs = <floating **>PyMem_Malloc((k + 1) * sizeof(floating *))
            if xs == NULL:
                raise MemoryError()
        try:
            work = _bind_layers(xs, <floating *>cnp.PyArray_DATA(x), base,
                                dims, B, k)
            if pmode:
                gr.prepare(self, B, dims, pmode == 2, want_x,
                           <char *>(work + B * nmax), res, sizeof(floating))
            with nogil:
                fp_enter(&fps, nt)
                rc = _forward(self._ops, k, B, dims, xs, nt)
                if rc == 0:
                    # the loss gradient goes to work half 1; the first link
                    # of the backward pass writes half 0, the second half 1
                    # (after the gradient was read)
                    if floating is float:
                        gc_loss_s(loss, B, dims[k], xs[k], ap, lp,
                                  <double *>cnp.PyArray_DATA(vals), work + B * nmax)
                    else:
                        gc_loss_d(loss, B, dims[k], xs[k], ap, lp,
                                  <double *>cnp.PyArray_DATA(vals), work + B * nmax)
                    if pmode:
                        rc = gr.run(self._ops, k, B, dims, xs, nmax, nt)
                    else:
                        rc = _backward(self._ops, k, B, dims, xs, True,
                                       work + B * nmax,
                                       <floating *>cnp.PyArray_DATA(res), work,
                                       nmax, nt)
                fp_exit(&fps)
        finally:
            if xs != xsbuf:
                PyMem_Free(xs)
        if rc:
            raise MemoryError()
        if pmode:
            return vals, (res if want_x else None), gr.grads
        return vals, res

    def jacobian(self, cnp.ndarray x, bint links=False):
        """The ops' Jacobian at a single x (n_0,), C-contiguous in the plan's
        dtype (checked by the caller, and here).

        links False: the dense J_k ... J_1, (n_k, n_0), accumulated from the
        ops' Jacobians (_jacobian_links) in the cheapest bracketing
        (_bracket.choose, cached per n_0) in one compiled call.
        links True: those Jacobians as a Chain binds them -- an affine op's
        W itself, Diagonal, DiagonalPlusRankOne (their vectors copied).
        """
        cdef Py_ssize_t k = self._k, nmax = 0, total = 0, extra
        cdef Py_ssize_t buf[64]
        cdef Py_ssize_t *d = self._dims_buffer(buf, k + 1)
        cdef bint claimed
        try:
            if x.ndim != 1:
                raise ValueError(f"x must be 1-D (n_0,), got shape {(<object>x).shape}")
            _check_block(x, "x", self._typenum, 1, x.shape[0], 1)
            self._fill_dims(x.shape[0], d)
            total = _workspace_elems(1, d, k, cnp.PyArray_ITEMSIZE(x), &nmax)
            extra = _jacobian_scratch(self._ops, k, d, nmax)
            if not gc_size_add(total, extra, &extra):
                raise MemoryError()
            ws = self._claim(1, extra, &claimed)
            try:
                if self._typenum == cnp.NPY_FLOAT:
                    return self._jacobian_typed(<float *>cnp.PyArray_DATA(ws), x,
                                                d, nmax, total, links)
                return self._jacobian_typed(<double *>cnp.PyArray_DATA(ws), x,
                                            d, nmax, total, links)
            finally:
                if claimed:
                    self._ws_busy = False
        finally:
            if d != buf:
                PyMem_Free(d)

    cdef object _jacobian_typed(self, floating *base, cnp.ndarray x,
                                Py_ssize_t *dims, Py_ssize_t nmax,
                                Py_ssize_t total, bint want_links):
        """jacobian in the workspace at base: the layers, then (from
        base + total) _jacobian_links' scratch."""
        cdef Py_ssize_t k = self._k, i
        cdef floating *xsbuf[65]
        cdef floating **xs = xsbuf
        cdef Link *links = NULL
        cdef Link *f = NULL
        cdef int nt = effective_threads(), rc = 0
        cdef Strategy s
        cdef cnp.npy_intp odims[2]
        cdef cnp.ndarray out
        cdef bint zero = False
        cdef gc_fpstate fps
        if k == 0:
            return [] if want_links else np.eye(dims[0], dtype=x.dtype)
        links = <Link *>gc_malloc_n(2 * k, sizeof(Link))
        if k + 1 > 65:
            xs = <floating **>PyMem_Malloc((k + 1) * sizeof(floating *))
        if links == NULL or xs == NULL:
            free(links)
            raise MemoryError()
        f = links + k
        try:
            _bind_layers(xs, <floating *>cnp.PyArray_DATA(x), base, dims, 1, k)
            with nogil:
                fp_enter(&fps, nt)
                rc = _forward(self._ops, k, 1, dims, xs, nt)
                if rc == 0:
                    _jacobian_links(self._ops, k, dims, xs, base + total, nmax,
                                    links)
                fp_exit(&fps)
            if rc:
                raise MemoryError()
            if want_links:
                return [self._link_object(&links[i], i) for i in range(k)]
            odims[0], odims[1] = dims[k], dims[0]
            out = cnp.PyArray_EMPTY(2, odims, self._typenum, 0)
            for i in range(k + 1):
                zero = zero or dims[i] == 0
            if zero:
                out[...] = 0    # through a zero-width intermediate: zeros
                return out
            cache = self._strategies.get(dims[0])
            if cache is None:
                cache = self._strategies[dims[0]] = {}
            s = choose(links, k, MODE_JACOBIAN, 0, -1, cache)
            product_factors(links, k, MODE_JACOBIAN, 0, NULL, f)
            with nogil:
                fp_enter(&fps, nt)
                rc = run_product(f, k, s.split, s.order,
                                 <floating *>cnp.PyArray_DATA(out), nt)
                fp_exit(&fps)
            if rc:
                raise MemoryError("could not allocate the intermediate products")
            return out
        finally:
            free(links)
            if xs != xsbuf:
                PyMem_Free(xs)

    cdef object _link_object(self, const Link *L, Py_ssize_t i):
        """Link i of _jacobian_links as a Chain binds it (vectors copied out
        of the workspace)."""
        from gradchain.operators import Diagonal, DiagonalPlusRankOne
        if L.kind == LINK_DENSE:
            return self._arrays[i]
        d = self._vector(L.d, L.n)
        if L.kind == LINK_DIAG:
            return Diagonal(d)
        u = d if L.u == L.d else self._vector(L.u, L.n)
        v = d if L.v == L.d else self._vector(L.v, L.n)
        return DiagonalPlusRankOne(d, u, v, L.scale)

    cdef object _vector(self, const char *p, Py_ssize_t n):
        """A copy of n contiguous elements of the plan's dtype at p."""
        cdef cnp.npy_intp dim = n
        cdef cnp.ndarray a = cnp.PyArray_EMPTY(1, &dim, self._typenum, 0)
        memcpy(cnp.PyArray_DATA(a), p, n * cnp.PyArray_ITEMSIZE(a))
        return a

    def run(self, cnp.ndarray X, str mode, object T=None, int pmode=0,
            bint want_x=True):
        """One compiled pass over a C-contiguous batch X (B, n_0) in the
        plan's dtype (checked by the caller).

        mode "forward": returns the list [x^(0), ..., x^(k)] (copies).
        mode "vjp": T (B, n_k) cotangents -> (x^(k), T J_k ... J_1); with
        pmode 1 or 2 (x^(k), T J_k ... J_1 or None when not want_x, the
        parameter gradients, as loss_grad).
        mode "jvp": T (B, n_0) tangents -> (x^(k), J_k ... J_1 T rows).
        (Losses: loss_grad.)
        """
        cdef Py_ssize_t B = X.shape[0], n0 = X.shape[1], i, total = 0, nmax = 0
        cdef Py_ssize_t k = self._k
        cdef Py_ssize_t buf[64]
        cdef Py_ssize_t *pd = self._dims_buffer(buf, k + 1)
        cdef bint claimed
        try:
            _check_block(X, "X", self._typenum, B, n0)
            self._fill_dims(n0, pd)
            total = _workspace_elems(B, pd, k, cnp.PyArray_ITEMSIZE(X), &nmax)
            if mode == "vjp":
                _check_block(T, "T", self._typenum, B, pd[k])
            elif mode == "jvp":
                _check_block(T, "T", self._typenum, B, n0)
            elif mode != "forward":
                raise ValueError(f"mode must be 'forward', 'vjp' or 'jvp', "
                                 f"got {mode!r}")
            ws = self._claim(B, total, &claimed)
            try:
                if self._typenum == cnp.NPY_FLOAT:
                    return self._run_typed(<float *>cnp.PyArray_DATA(ws), X, mode,
                                           T, pd, nmax, pmode, want_x)
                return self._run_typed(<double *>cnp.PyArray_DATA(ws), X, mode,
                                       T, pd, nmax, pmode, want_x)
            finally:
                if claimed:
                    self._ws_busy = False
        finally:
            if pd != buf:
                PyMem_Free(pd)

    cdef object _run_typed(self, floating *base, cnp.ndarray X, str mode, T,
                           Py_ssize_t *dims, Py_ssize_t nmax, int pmode,
                           bint want_x):
        """run in the workspace at base (see there)."""
        cdef Py_ssize_t k = self._k, B = X.shape[0], i
        cdef floating *xsbuf[65]
        cdef floating **xs = xsbuf
        cdef floating *work
        cdef int nt = effective_threads(), rc = 0
        cdef cnp.ndarray res, Ta
        cdef const floating *tp
        cdef bint transpose
        cdef _Grads gr
        cdef gc_fpstate fps
        dtype = X.dtype
        if k + 1 > 65:
            xs = <floating **>PyMem_Malloc((k + 1) * sizeof(floating *))
            if xs == NULL:
                raise MemoryError()
        try:
            work = _bind_layers(xs, <floating *>cnp.PyArray_DATA(X), base,
                                dims, B, k)
            with nogil:
                fp_enter(&fps, nt)
                rc = _forward(self._ops, k, B, dims, xs, nt)
                fp_exit(&fps)
            if rc:
                raise MemoryError()
            if mode == "forward":
                inter = [X.copy()]
                for i in range(1, k + 1):
                    a = np.empty((B, dims[i]), dtype)
                    memcpy(cnp.PyArray_DATA(a), xs[i], B * dims[i] * sizeof(floating))
                    inter.append(a)
                return inter
            Y = np.empty((B, dims[k]), dtype)
            memcpy(cnp.PyArray_DATA(Y), xs[k], B * dims[k] * sizeof(floating))
            Ta = T
            tp = <const floating *>cnp.PyArray_DATA(Ta)
            transpose = mode == "vjp"
            res = np.empty((B, dims[0] if transpose else dims[k]), dtype)
            if pmode and transpose:
                gr = _Grads.__new__(_Grads)
                gr.prepare(self, B, dims, pmode == 2, want_x, <char *>tp, res,
                           sizeof(floating))
                with nogil:
                    fp_enter(&fps, nt)
                    rc = gr.run(self._ops, k, B, dims, xs, nmax, nt)
                    fp_exit(&fps)
                if rc:
                    raise MemoryError()
                return (Y, res if want_x else None, gr.grads)
            with nogil:
                fp_enter(&fps, nt)
                rc = _backward(self._ops, k, B, dims, xs, transpose, tp,
                               <floating *>cnp.PyArray_DATA(res), work,
                               nmax, nt)
                fp_exit(&fps)
            if rc:
                raise MemoryError()
            return (Y, res)
        finally:
            if xs != xsbuf:
                PyMem_Free(xs)
