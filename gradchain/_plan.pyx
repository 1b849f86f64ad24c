"""Compiled plans: forward and backward passes of a composition of built-in
maps (and a loss) as one nogil call over op codes and bound buffers.

A ``Plan`` holds one op per map (affine: W and b bound in place; elementwise
code and parameter; softmax / log-softmax), runs the forward pass into a
workspace that keeps every intermediate x^(i), and then the backward pass
J_1^T ... J_k^T g (or the forward-mode J_k ... J_1 v) with the same dense
kernels as ``Chain`` and the elementwise, softmax and loss loops of
csrc/gc_maps.c.  The workspace is reused across calls of the same batch
size and dtype; a call that finds it in use (another thread) takes a fresh
one, so plans are safe to share between threads.
"""
cimport numpy as cnp
import numpy as np
from libc.string cimport memcpy
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cython cimport floating

from gradchain._kernels cimport effective_threads, block_jtv, block_jv

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
    void gc_softmax_apply_s(int log, int transpose, Py_ssize_t B, Py_ssize_t n,
                            const float *y, const float *g, float *out)
    void gc_softmax_apply_d(int log, int transpose, Py_ssize_t B, Py_ssize_t n,
                            const double *y, const double *g, double *out)
    void gc_loss_s(int code, Py_ssize_t B, Py_ssize_t n, const float *x,
                   const float *aux, const long long *labels, double *value,
                   float *grad)
    void gc_loss_d(int code, Py_ssize_t B, Py_ssize_t n, const double *x,
                   const double *aux, const long long *labels, double *value,
                   double *grad)

# op codes (maps.py sets them through Plan's constructor)
cpdef enum OpCode:
    OP_AFFINE = 1
    OP_ELEMENTWISE = 2
    OP_SOFTMAX = 3
    OP_LOG_SOFTMAX = 4

cdef struct Op:
    int code
    int ew                  # elementwise: gc_maps.h code
    double param            # elementwise parameter
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
                gc_ew_forward_s(o.ew, o.param, B * dims[i], xs[i], xs[i + 1])
            else:
                gc_ew_forward_d(o.ew, o.param, B * dims[i], xs[i], xs[i + 1])
        else:
            if floating is float:
                gc_softmax_s(o.code == OP_LOG_SOFTMAX, B, dims[i], xs[i], xs[i + 1])
            else:
                gc_softmax_d(o.code == OP_LOG_SOFTMAX, B, dims[i], xs[i], xs[i + 1])
    return 0


cdef int _propagate(const Op *ops, Py_ssize_t k, Py_ssize_t B,
                    const Py_ssize_t *dims, floating **xs, bint transpose,
                    const floating *t, floating *out, floating *work,
                    Py_ssize_t half, int nt) noexcept nogil:
    """transpose: out = t J_k ... J_1 (rows of t are cotangents, (B, dims[k]))
    else: out = J_k ... J_1 t (rows are tangents, (B, dims[0])), with each
    J_i evaluated at the stored intermediates xs."""
    cdef Py_ssize_t step, i, n
    cdef const Op *o
    cdef const floating *cur = t
    cdef floating *dst
    if k == 0:
        n = dims[0]
        memcpy(out, t, B * n * sizeof(floating))
        return 0
    for step in range(k):
        i = k - 1 - step if transpose else step
        o = &ops[i]
        dst = out if step == k - 1 else work + (step & 1) * half
        if o.code == OP_AFFINE:
            if transpose:
                if block_jtv(<const floating *>o.W, o.n_out, o.n_in, o.rs,
                             o.cs, cur, B, dst, nt):
                    return -1
            elif block_jv(<const floating *>o.W, o.n_out, o.n_in, o.rs, o.cs,
                          cur, B, dst, nt):
                return -1
        elif o.code == OP_ELEMENTWISE:
            if floating is float:
                gc_ew_deriv_mul_s(o.ew, o.param, B * dims[i], xs[i], xs[i + 1],
                                  cur, dst)
            else:
                gc_ew_deriv_mul_d(o.ew, o.param, B * dims[i], xs[i], xs[i + 1],
                                  cur, dst)
        else:
            if floating is float:
                gc_softmax_apply_s(o.code == OP_LOG_SOFTMAX, transpose, B,
                                   dims[i], xs[i + 1], cur, dst)
            else:
                gc_softmax_apply_d(o.code == OP_LOG_SOFTMAX, transpose, B,
                                   dims[i], xs[i + 1], cur, dst)
        cur = dst
    return 0


cdef class Plan:
    """Compiled forward/backward of built-in maps (see module docstring).

    Parameters
    ----------
    specs : list of tuples
        One per map: (OP_AFFINE, W, b) with W (n_out, n_in) and b (n_out,)
        or None, already in ``dtype``; (OP_ELEMENTWISE, code, param);
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

    def __cinit__(self, list specs, dtype):
        cdef Py_ssize_t i
        cdef Op *o
        cdef cnp.ndarray W, b
        self._k = len(specs)
        self._typenum = cnp.NPY_FLOAT if np.dtype(dtype) == np.float32 else cnp.NPY_DOUBLE
        self._keep = []
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
            o.param = 0.0
            o.W = o.b = NULL
            o.n_out = o.n_in = o.rs = o.cs = 0
            if o.code == OP_AFFINE:
                W = spec[1]
                self._keep.append(W)
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
                o.param = spec[2]

    def __dealloc__(self):
        PyMem_Free(self._ops)

    cdef list _dims(self, Py_ssize_t n0):
        cdef Py_ssize_t i
        dims = [n0]
        for i in range(self._k):
            if self._ops[i].code == OP_AFFINE:
                if dims[i] != self._ops[i].n_in:
                    raise ValueError(
                        f"op {i} (affine) takes {self._ops[i].n_in} inputs but "
                        f"receives {dims[i]}")
                dims.append(self._ops[i].n_out)
            else:
                dims.append(dims[i])
        return dims

    def dims(self, n0):
        """(n_0, ..., n_k) for inputs of length n0."""
        return tuple(self._dims(n0))

    cdef cnp.ndarray _workspace(self, Py_ssize_t B, Py_ssize_t total):
        # the cached workspace, or a fresh one when the cache is in use or
        # sized for another batch
        if (self._ws_busy or self._ws is None or self._ws_B != B
                or self._ws.shape[0] < total):
            ws = np.empty(total, dtype=np.float32 if self._typenum == cnp.NPY_FLOAT
                          else np.float64)
            if not self._ws_busy:
                self._ws, self._ws_B = ws, B
            else:
                return ws
        return self._ws

    def loss_grad(self, cnp.ndarray x, int loss, object aux, object labels):
        """The fast path of value_and_grad: x (n_0,) or (B, n_0), C-contiguous
        in the plan's dtype (checked by the caller); aux / labels as for run.
        Returns (values (B,), gradient shaped like x)."""
        cdef Py_ssize_t B = 1 if x.ndim == 1 else x.shape[0]
        cdef Py_ssize_t n0 = x.shape[x.ndim - 1], k = self._k, i
        cdef Py_ssize_t cdims[65]
        cdef Py_ssize_t nmax = n0, total = 0
        if k + 1 > 65:
            # long plans: the general path (heap-allocated tables)
            _, vals, G, _ = self.run(x.reshape(B, n0), "loss", loss=loss,
                                     aux=aux, labels=labels)
            return vals, G.reshape((<object>x).shape)
        cdims[0] = n0
        for i in range(k):
            if self._ops[i].code == OP_AFFINE and cdims[i] != self._ops[i].n_in:
                raise ValueError(
                    f"op {i} (affine) takes {self._ops[i].n_in} inputs but "
                    f"receives {cdims[i]}")
            cdims[i + 1] = self._ops[i].n_out if self._ops[i].code == OP_AFFINE else cdims[i]
            if cdims[i + 1] > nmax:
                nmax = cdims[i + 1]
            total += B * cdims[i + 1]
        total += 2 * B * nmax
        owned = self._ws_busy
        ws = self._workspace(B, total)
        if not owned:
            self._ws_busy = True
        try:
            if self._typenum == cnp.NPY_FLOAT:
                return self._loss_typed(<float *>NULL, x, B, loss, aux, labels,
                                        ws, cdims, B * nmax)
            return self._loss_typed(<double *>NULL, x, B, loss, aux, labels,
                                    ws, cdims, B * nmax)
        finally:
            if not owned:
                self._ws_busy = False

    cdef object _loss_typed(self, floating *tag, cnp.ndarray x, Py_ssize_t B,
                            int loss, aux, labels, cnp.ndarray ws,
                            Py_ssize_t *dims, Py_ssize_t half):
        cdef Py_ssize_t k = self._k, i, off = 0
        cdef floating *base = <floating *>cnp.PyArray_DATA(ws)
        cdef floating *xs[65]
        cdef floating *work
        cdef int nt = effective_threads(), rc = 0
        cdef cnp.ndarray vals = cnp.PyArray_EMPTY(1, [B], cnp.NPY_DOUBLE, 0)
        cdef cnp.ndarray res = cnp.PyArray_EMPTY(x.ndim, x.shape, self._typenum, 0)
        cdef const floating *ap = NULL
        cdef const long long *lp = NULL
        if aux is not None:
            ap = <const floating *>cnp.PyArray_DATA(<cnp.ndarray>aux)
        if labels is not None:
            lp = <const long long *>cnp.PyArray_DATA(<cnp.ndarray>labels)
        xs[0] = <floating *>cnp.PyArray_DATA(x)
        for i in range(1, k + 1):
            xs[i] = base + off
            off += B * dims[i]
        work = base + off
        with nogil:
            rc = _forward(self._ops, k, B, dims, xs, nt)
            if rc == 0:
                if floating is float:
                    gc_loss_s(loss, B, dims[k], xs[k], ap, lp,
                              <double *>cnp.PyArray_DATA(vals), work + half)
                else:
                    gc_loss_d(loss, B, dims[k], xs[k], ap, lp,
                              <double *>cnp.PyArray_DATA(vals), work + half)
                rc = _propagate(self._ops, k, B, dims, xs, True, work + half,
                                <floating *>cnp.PyArray_DATA(res), work, half, nt)
        if rc:
            raise MemoryError()
        return vals, res

    def run(self, cnp.ndarray X, str mode, object T=None, int loss=0,
            object aux=None, object labels=None, bint keep=False):
        """One compiled pass over a C-contiguous batch X (B, n_0) in the
        plan's dtype (checked by the caller).

        mode "forward": returns the list [x^(0), ..., x^(k)] (copies).
        mode "vjp": T (B, n_k) cotangents -> (x^(k), T J_k ... J_1).
        mode "jvp": T (B, n_0) tangents -> (x^(k), J_k ... J_1 T rows).
        mode "loss": loss code, aux rows (B, n_k) or None, labels (B,) int64
            or None -> (x^(k), values (B,), gradients (B, n_0)).
        With keep=True the intermediates are also returned (as copies).
        """
        cdef Py_ssize_t B = X.shape[0], n0 = X.shape[1], i, total, nmax, half
        cdef list dims = self._dims(n0)
        cdef Py_ssize_t k = self._k
        cdef Py_ssize_t cdims[64]
        cdef Py_ssize_t *pd
        cdef bint heap = k + 1 > 64
        nmax = 0
        total = 0
        for i in range(k + 1):
            total += B * <Py_ssize_t>dims[i]
            nmax = max(nmax, <Py_ssize_t>dims[i])
        half = B * nmax
        total += 2 * half
        owned = self._ws_busy
        ws = self._workspace(B, total)
        if not owned:
            self._ws_busy = True
        try:
            if heap:
                pd = <Py_ssize_t *>PyMem_Malloc((k + 1) * sizeof(Py_ssize_t))
                if pd == NULL:
                    raise MemoryError()
            else:
                pd = cdims
            for i in range(k + 1):
                pd[i] = dims[i]
            try:
                if self._typenum == cnp.NPY_FLOAT:
                    return self._run_typed(<float *>NULL, X, mode, T, loss, aux,
                                           labels, keep, ws, pd, half)
                return self._run_typed(<double *>NULL, X, mode, T, loss, aux,
                                       labels, keep, ws, pd, half)
            finally:
                if heap:
                    PyMem_Free(pd)
        finally:
            if not owned:
                self._ws_busy = False

    cdef object _run_typed(self, floating *tag, cnp.ndarray X, str mode, T,
                           int loss, aux, labels, bint keep, cnp.ndarray ws,
                           Py_ssize_t *dims, Py_ssize_t half):
        cdef Py_ssize_t k = self._k, B = X.shape[0], i, off = 0
        cdef floating *base = <floating *>cnp.PyArray_DATA(ws)
        cdef floating *xsbuf[65]
        cdef floating **xs = xsbuf
        cdef floating *work
        cdef int nt = effective_threads(), rc = 0
        cdef cnp.ndarray res, vals, Ta, auxa, laba
        cdef const floating *tp
        cdef const floating *ap = NULL
        cdef const long long *lp = NULL
        dtype = X.dtype
        if k + 1 > 65:
            xs = <floating **>PyMem_Malloc((k + 1) * sizeof(floating *))
            if xs == NULL:
                raise MemoryError()
        try:
            xs[0] = <floating *>cnp.PyArray_DATA(X)
            for i in range(1, k + 1):
                xs[i] = base + off
                off += B * dims[i]
            work = base + off
            with nogil:
                rc = _forward(self._ops, k, B, dims, xs, nt)
            if rc:
                raise MemoryError()
            Y = np.empty((B, dims[k]), dtype)
            memcpy(cnp.PyArray_DATA(Y), xs[k], B * dims[k] * sizeof(floating))
            inter = None
            if keep or mode == "forward":
                inter = [X.copy()]
                for i in range(1, k + 1):
                    a = np.empty((B, dims[i]), dtype)
                    memcpy(cnp.PyArray_DATA(a), xs[i], B * dims[i] * sizeof(floating))
                    inter.append(a)
            if mode == "forward":
                return inter
            if mode == "loss":
                vals = np.empty(B, np.float64)
                # the loss gradient (B, n_k) goes to the second work half
                if aux is not None:
                    auxa = aux
                    ap = <const floating *>cnp.PyArray_DATA(auxa)
                if labels is not None:
                    laba = labels
                    lp = <const long long *>cnp.PyArray_DATA(laba)
                with nogil:
                    if floating is float:
                        gc_loss_s(loss, B, dims[k], xs[k], ap, lp,
                                  <double *>cnp.PyArray_DATA(vals), work + half)
                    else:
                        gc_loss_d(loss, B, dims[k], xs[k], ap, lp,
                                  <double *>cnp.PyArray_DATA(vals), work + half)
                res = np.empty((B, dims[0]), dtype)
                if k == 0:
                    memcpy(cnp.PyArray_DATA(res), work + half,
                           B * dims[0] * sizeof(floating))
                else:
                    # the grad sits in half 1; step 0 writes half 0, step 1
                    # half 1 (overwriting it only after it was read)
                    with nogil:
                        rc = _propagate(self._ops, k, B, dims, xs, True,
                                        work + half, <floating *>cnp.PyArray_DATA(res),
                                        work, half, nt)
                    if rc:
                        raise MemoryError()
                return (Y, vals, res, inter)
            Ta = T
            tp = <const floating *>cnp.PyArray_DATA(Ta)
            if mode == "vjp":
                res = np.empty((B, dims[0]), dtype)
                with nogil:
                    rc = _propagate(self._ops, k, B, dims, xs, True, tp,
                                    <floating *>cnp.PyArray_DATA(res), work, half, nt)
            else:
                res = np.empty((B, dims[k]), dtype)
                with nogil:
                    rc = _propagate(self._ops, k, B, dims, xs, False, tp,
                                    <floating *>cnp.PyArray_DATA(res), work, half, nt)
            if rc:
                raise MemoryError()
            return (Y, res, inter)
        finally:
            if xs != xsbuf:
                PyMem_Free(xs)
