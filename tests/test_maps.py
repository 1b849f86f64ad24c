"""gradchain.maps: maps, losses and compositions against independent references.

Every numeric check compares with something computed here, never with
gradchain's own output: closed forms written with NumPy in float64 (stable
forms where it matters), NumPy backprop by hand, and central finite
differences taken in float64 in this file.  The tolerance of a check is the
dtype's rounding tolerance times a scale that bounds the rounding error of
the computed quantity (|f'| |g| for a product, |x| for a shifted logit, ...),
so a wrong formula, a wrong element or a stale buffer fails and honest
rounding never does.

Tests that may crash the interpreter (heap corruption in a compiled plan)
run in a child process, so that a crash is one failure and not the end of
the session.
"""
import concurrent.futures
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import gradchain as gc
from gradchain import (Affine, CrossEntropy, Dot, LogSoftmax, LogSumExp, Map,
                       MeanSquaredError, Scale, Softmax, SquaredError, check_grad,
                       compose)

from conftest import DTYPES, make_layout

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
# rounding tolerance relative to the error scale of the computed quantity
RTOL = {F32: 2e-5, F64: 1e-12}
TINY = {F32: 1e-30, F64: 1e-290}
BATCHES = [None, 0, 1, 7]          # None: a single x of shape (n,)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(gc.__file__)))


# --------------------------------------------------------------------------
# helpers (NumPy only)
# --------------------------------------------------------------------------

def f64(a):
    return np.array(a, dtype=np.float64)


def assert_near(res, ref, dtype, scale=None, factor=1.0):
    """|res - ref| <= RTOL[dtype] * factor * scale (elementwise); res has
    exactly dtype and ref's shape.  scale defaults to |ref|.  Equal infinities
    pass; NaN never does (test NaN explicitly)."""
    dtype = np.dtype(dtype)
    assert isinstance(res, np.ndarray), type(res)
    assert res.dtype == dtype, (res.dtype, dtype)
    ref = f64(ref)
    assert res.shape == ref.shape, (res.shape, ref.shape)
    scale = np.abs(ref) if scale is None else np.broadcast_to(f64(scale), ref.shape)
    r = res.astype(np.float64)
    with np.errstate(invalid="ignore"):
        err = np.abs(r - ref)
        ok = (err <= RTOL[dtype] * factor * scale + TINY[dtype]) | (r == ref)
    if not ok.all():
        bad = np.argwhere(~ok)[:5]
        lines = [f"  at {tuple(i)}: got {res[tuple(i)]!r}, want {ref[tuple(i)]!r}"
                 for i in bad]
        raise AssertionError(f"{(~ok).sum()} of {ok.size} entries out of "
                             f"tolerance:\n" + "\n".join(lines))


def assert_losses_near(vals, ref, dtype, scale=None, factor=1.0):
    """Per-sample loss values (reduction="none", Loss.value_and_grad of a
    batch): a float64 (B,) array whatever the compute dtype (the compiled
    losses accumulate in double, as the float a single sample returns),
    within the compute dtype's tolerance of ref."""
    assert isinstance(vals, np.ndarray), type(vals)
    assert vals.dtype == F64, vals.dtype
    assert vals.ndim == 1
    dtype = np.dtype(dtype)
    ref = f64(ref)
    assert vals.shape == ref.shape, (vals.shape, ref.shape)
    scale = np.abs(ref) if scale is None else np.broadcast_to(f64(scale), ref.shape)
    with np.errstate(invalid="ignore"):
        ok = ((np.abs(vals - ref) <= RTOL[dtype] * factor * scale + TINY[dtype])
              | (vals == ref))
    assert ok.all(), (vals[~ok], ref[~ok])


def assert_value_near(res, ref, dtype, scale=None, factor=1.0):
    """A scalar loss value (a Python float)."""
    assert isinstance(res, float), type(res)
    ref = float(ref)
    scale = abs(ref) if scale is None else float(scale)
    assert abs(res - ref) <= RTOL[np.dtype(dtype)] * factor * scale + 1e-300, (res, ref)


def fd_jacobian(f, x, rel=1e-6):
    """Central differences in float64: column j is (f(x + h e_j) -
    f(x - h e_j)) / (2 h_j), for a 1-D x and a 1-D (or scalar) f."""
    x = f64(x)
    cols = []
    for j in range(x.shape[0]):
        h = rel * max(1.0, abs(x[j]))
        xp, xm = x.copy(), x.copy()
        xp[j] += h
        xm[j] -= h
        cols.append((f64(f(xp)) - f64(f(xm))) / (xp[j] - xm[j]))
    return np.stack(cols, axis=-1) if cols else np.zeros(np.shape(f(x)) + (0,))


def assert_fd_close(analytic, numeric, dtype, rel=None):
    """Analytic derivative against a float64 central difference: normwise,
    relative to the largest entry (and 1)."""
    analytic, numeric = f64(analytic), f64(numeric)
    assert analytic.shape == numeric.shape, (analytic.shape, numeric.shape)
    if rel is None:
        rel = 1e-6 if np.dtype(dtype) == F64 else 2e-3
    scale = max(1.0, float(np.max(np.abs(numeric), initial=0.0)))
    err = float(np.max(np.abs(analytic - numeric), initial=0.0))
    assert err <= rel * scale, (err, scale, analytic, numeric)


def sigmoid(x):
    """1 / (1 + exp(-x)) without overflow."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def lse(x):
    """logsumexp over the last axis, stable (finite rows)."""
    m = np.max(x, axis=-1, keepdims=True)
    return (m + np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True)))[..., 0]


def softmax(x):
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def log_softmax(x):
    return x - lse(x)[..., None]


def vec(rng, shape, dtype, lo=-2.0, hi=2.0):
    return rng.uniform(lo, hi, size=shape).astype(dtype)


def shape_of(n, batch):
    return (n,) if batch is None else (batch, n)


def run_isolated(code, timeout=240):
    """Run a snippet in a child process on the same gradchain; returns the
    CompletedProcess (a crash is a non-zero return code)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


def dense_from_chain(chain, n_out, dtype):
    """The dense Jacobian of a gradchain Chain, via its own vjp of the
    identity rows (row b of the result is e_b^T J)."""
    return chain.vjp(np.eye(n_out, dtype=dtype))


# --------------------------------------------------------------------------
# elementwise maps: closed forms
# --------------------------------------------------------------------------

# name: (constructor, f, f', scale of f(x) rounding, scale of f' rounding,
#        (lo, hi) of sampled inputs).  Inputs avoid kinks (ReLU at 0).
ELEMENTWISE = {
    "Tanh": (gc.Tanh, np.tanh, lambda x: 1 - np.tanh(x) ** 2,
             lambda x: np.abs(np.tanh(x)), lambda x: 1.0, (-3, 3)),
    "Sigmoid": (gc.Sigmoid, sigmoid, lambda x: sigmoid(x) * (1 - sigmoid(x)),
                lambda x: sigmoid(x), lambda x: 1.0, (-6, 6)),
    "ReLU": (gc.ReLU, lambda x: np.maximum(x, 0), lambda x: (x > 0) * 1.0,
             lambda x: np.abs(x), lambda x: 1.0, (-2, 2)),
    "LeakyReLU": (lambda: gc.LeakyReLU(0.2), lambda x: np.where(x < 0, 0.2 * x, x),
                  lambda x: np.where(x < 0, 0.2, 1.0), lambda x: np.abs(x),
                  lambda x: 1.0, (-2, 2)),
    "Softplus": (gc.Softplus, lambda x: np.logaddexp(0.0, x), sigmoid,
                 lambda x: np.logaddexp(0.0, x), lambda x: 1.0, (-6, 6)),
    "Exp": (gc.Exp, np.exp, np.exp, np.exp, np.exp, (-3, 3)),
    "Log": (gc.Log, np.log, lambda x: 1 / x, lambda x: np.abs(np.log(x)) + 1,
            lambda x: 1 / x, (0.2, 4)),
    "Sin": (gc.Sin, np.sin, np.cos, lambda x: 1.0, lambda x: 1.0, (-3, 3)),
    "Cos": (gc.Cos, np.cos, lambda x: -np.sin(x), lambda x: 1.0, lambda x: 1.0,
            (-3, 3)),
    "Square": (gc.Square, np.square, lambda x: 2 * x, np.square,
               lambda x: np.abs(2 * x), (-3, 3)),
    "Scale": (lambda: gc.Scale(-1.5), lambda x: -1.5 * x,
              lambda x: np.full_like(x, -1.5), lambda x: np.abs(1.5 * x),
              lambda x: 1.5, (-3, 3)),
}


def sample_ew(rng, name, shape, dtype):
    lo, hi = ELEMENTWISE[name][5]
    x = vec(rng, shape, dtype, lo, hi)
    if name in ("ReLU", "LeakyReLU"):       # keep away from the kink
        x = np.where(np.abs(x) < 0.05, np.asarray(0.5, dtype), x).astype(dtype)
    return x


@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_elementwise_forward_vjp_jvp(rng, name, dtype, batch):
    make, fx, dfx, fscale, dscale, _ = ELEMENTWISE[name]
    n = 6
    x = sample_ew(rng, name, shape_of(n, batch), dtype)
    x64 = f64(x)
    f = compose(make())
    y = f(x)
    assert_near(y, fx(x64), dtype, fscale(x64), factor=2)
    # forward() keeps x^(0) and x^(1)
    yk, xs = f.forward(x)
    assert len(xs) == 2
    assert np.array_equal(xs[0], x) and np.array_equal(yk, y)
    g = vec(rng, x.shape, dtype)
    d = dfx(x64)
    scale = np.abs(g) * dscale(x64)
    assert_near(f.vjp(x, g), d * f64(g), dtype, scale, factor=2)
    assert_near(f.jvp(x, g), d * f64(g), dtype, scale, factor=2)
    # calling the map itself is the same forward pass
    assert_near(make()(x), fx(x64), dtype, fscale(x64), factor=2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_elementwise_jacobian_and_chain(rng, name, dtype):
    make, fx, dfx, fscale, dscale, _ = ELEMENTWISE[name]
    n = 5
    x = sample_ew(rng, name, (n,), dtype)
    x64 = f64(x)
    f = compose(make())
    ref = np.diag(dfx(x64))
    scale = np.diag(np.broadcast_to(f64(dscale(x64)), (n,))) + 0.0
    J = f.jacobian(x)
    assert_near(J, ref, dtype, scale, factor=2)
    chain = f.chain(x)
    assert len(chain) == 1
    assert_near(dense_from_chain(chain, n, dtype), ref, dtype, scale, factor=2)
    op = make().jacobian(x)                     # the map's own operator
    assert isinstance(op, gc.Operator)
    assert_near(np.asarray(op.todense(), dtype), ref, dtype, scale, factor=2)
    # finite differences of the forward pass, in float64 at the same x
    fd = fd_jacobian(lambda z: compose(make())(z), x64)
    assert_fd_close(J, fd, dtype)
    # ... and of the closed form (checks the table itself)
    assert_fd_close(ref, fd_jacobian(fx, x64), F64)


@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("layout", ["C", "F", "strided", "negative"])
def test_affine(rng, layout, bias, dtype, batch):
    m, n = 4, 6
    W = make_layout((rng.standard_normal((m, n)) / np.sqrt(n)).astype(dtype), layout)
    b = vec(rng, m, dtype) if bias else None
    x = vec(rng, shape_of(n, batch), dtype)
    a = Affine(W, b)
    assert (a.in_dim, a.out_dim) == (n, m)
    f = compose(a)
    W64, x64 = f64(W), f64(x)
    ref = x64 @ W64.T + (0 if b is None else f64(b))
    scale = np.abs(x64) @ np.abs(W64).T + (0 if b is None else np.abs(f64(b)))
    assert_near(f(x), ref, dtype, scale, factor=n)
    g = vec(rng, shape_of(m, batch), dtype)
    v = vec(rng, shape_of(n, batch), dtype)
    assert_near(f.vjp(x, g), f64(g) @ W64, dtype, np.abs(f64(g)) @ np.abs(W64),
                factor=m)
    assert_near(f.jvp(x, v), f64(v) @ W64.T, dtype, np.abs(f64(v)) @ np.abs(W64).T,
                factor=n)
    if batch is None:
        J = f.jacobian(x)
        assert_near(J, W64, dtype, np.abs(W64))
        chain = f.chain(x)
        assert chain.jacobians[0] is W              # read in place
        assert_fd_close(J, fd_jacobian(lambda z: f64(z) @ W64.T
                                       + (0 if b is None else f64(b)), x64), dtype)
        # ... and the finite differences of gradchain's own float64 forward
        W64c = W64.copy()
        b64 = None if b is None else f64(b)
        assert_fd_close(J, fd_jacobian(compose(Affine(W64c, b64)), x64), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_affine_readonly_and_zero_sizes(rng, dtype):
    W = (rng.standard_normal((3, 4))).astype(dtype)
    W.flags.writeable = False
    x = vec(rng, (2, 4), dtype)
    x.flags.writeable = False
    f = compose(Affine(W), gc.Tanh())
    assert_near(f(x), np.tanh(f64(x) @ f64(W).T), dtype,
                np.abs(f64(x)) @ np.abs(f64(W)).T, factor=4)
    # zero outputs / zero inputs
    z = compose(Affine(np.zeros((0, 4), dtype)))
    assert z(x).shape == (2, 0) and z(x).dtype == dtype
    assert z.jacobian(x[0]).shape == (0, 4)
    e = compose(Affine(np.ones((3, 0), dtype), np.arange(3.0).astype(dtype)))
    assert np.array_equal(e(np.zeros(0, dtype)), np.arange(3.0).astype(dtype))
    assert e.jacobian(np.zeros(0, dtype)).shape == (3, 0)
    # read-only x through value_and_grad, twice (the second call takes the
    # compiled fast path, which reads x in place)
    t = vec(rng, 3, dtype)
    fl = compose(Affine(W), gc.Tanh(), loss=SquaredError(t))
    h = np.tanh(f64(x) @ f64(W).T)
    G = ((h - f64(t)) * (1 - h * h)) @ f64(W)
    for _ in range(2):
        L, g = fl.value_and_grad(x)
        assert_near(g, G, dtype, np.max(np.abs(G)) + np.abs(G), factor=8)


def softmax_jacobians(x64):
    s = softmax(x64)
    Js = np.diag(s) - np.outer(s, s)
    Jl = np.eye(len(s)) - np.outer(np.ones(len(s)), s)
    return s, Js, Jl


@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "logsoftmax"])
def test_softmax_maps(rng, log, dtype, batch):
    n = 5
    x = vec(rng, shape_of(n, batch), dtype, -3, 3)
    x64 = f64(x)
    f = compose(LogSoftmax() if log else Softmax())
    ref = log_softmax(x64) if log else softmax(x64)
    assert_near(f(x), ref, dtype, np.abs(ref) + (np.abs(x64) + 1 if log else 0),
                factor=4)
    g = vec(rng, x.shape, dtype)
    v = vec(rng, x.shape, dtype)
    rows_x = x64.reshape(-1, n)
    rows_g, rows_v = f64(g).reshape(-1, n), f64(v).reshape(-1, n)
    vj, jv, svj, sjv = [], [], [], []
    for xb, gb, vb in zip(rows_x, rows_g, rows_v):
        s, Js, Jl = softmax_jacobians(xb)
        J = Jl if log else Js
        vj.append(J.T @ gb)
        jv.append(J @ vb)
        A = np.abs(J)
        svj.append(A.T @ np.abs(gb))
        sjv.append(A @ np.abs(vb))
    shape = x.shape
    assert_near(f.vjp(x, g), np.reshape(vj, shape), dtype,
                np.reshape(svj, shape), factor=8)
    assert_near(f.jvp(x, v), np.reshape(jv, shape), dtype,
                np.reshape(sjv, shape), factor=8)
    if batch is None:
        s, Js, Jl = softmax_jacobians(x64)
        ref_J = Jl if log else Js
        scale = np.abs(ref_J) + np.outer(np.ones(n), s)
        assert_near(f.jacobian(x), ref_J, dtype, scale, factor=8)
        assert_near(dense_from_chain(f.chain(x), n, dtype), ref_J, dtype, scale,
                    factor=8)
        fn = log_softmax if log else softmax
        assert_fd_close(f.jacobian(x), fd_jacobian(fn, x64), dtype)
        assert_fd_close(f.jacobian(x), fd_jacobian(
            compose(LogSoftmax() if log else Softmax()), x64), dtype)


def test_softmax_single_class_and_empty():
    for dtype in DTYPES:
        one = np.array([3.5], dtype)
        assert np.array_equal(compose(Softmax())(one), np.ones(1, dtype))
        assert np.array_equal(compose(LogSoftmax())(one), np.zeros(1, dtype))
        assert np.array_equal(compose(Softmax()).jacobian(one), np.zeros((1, 1), dtype))
        assert compose(Softmax())(np.zeros((3, 0), dtype)).shape == (3, 0)


# --------------------------------------------------------------------------
# stability, NaN / Inf
# --------------------------------------------------------------------------

HUGE_ROWS = [
    [1000.0, -1000.0, 0.0, 3.0],
    [1000.0, 1000.0, 1000.0, 1000.0],
    [-1000.0, -1000.0, -1000.0, -1000.0],
    [1000.0, 999.0, -1000.0, 1e-3],
    [-1000.0, -999.5, 2.0, -1e-3],
]


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_logsoftmax_stable(dtype):
    X = np.array(HUGE_ROWS, dtype)
    X64 = f64(X)
    s = compose(Softmax())(X)
    ls = compose(LogSoftmax())(X)
    assert np.isfinite(s).all() and np.isfinite(ls).all()
    assert_near(s, softmax(X64), dtype, np.abs(softmax(X64)) + 1e-3, factor=4)
    # x - lse at |x| ~ 1000: rounding of the order of |x| eps
    assert_near(ls, log_softmax(X64), dtype, np.abs(X64) + 1, factor=4)
    # gradients through them stay finite and right
    G = np.ones_like(X)
    G[:, 0] = 2
    vj = compose(Softmax()).vjp(X, G)
    S = softmax(X64)
    ref = S * (f64(G) - np.sum(S * f64(G), axis=1, keepdims=True))
    assert np.isfinite(vj).all()
    assert_near(vj, ref, dtype, S * 4 + 1e-3, factor=4)
    for row in X:                       # single rows take the same path
        assert_near(compose(Softmax())(row), softmax(f64(row)), dtype,
                    softmax(f64(row)) + 1e-3, factor=4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_softplus_at_huge_inputs(dtype):
    x = np.array([1000.0, -1000.0, 50.0, -50.0, 0.0, 88.0, -88.0], dtype)
    x64 = f64(x)
    y = compose(gc.Sigmoid())(x)
    assert np.isfinite(y).all()
    assert y[0] == 1 and y[1] == 0 and y[4] == 0.5
    assert_near(y, sigmoid(x64), dtype, sigmoid(x64), factor=2)
    d = compose(gc.Sigmoid()).vjp(x, np.ones_like(x))
    assert np.isfinite(d).all() and d[0] == 0 and d[1] == 0
    assert_near(d, sigmoid(x64) * (1 - sigmoid(x64)), dtype, sigmoid(x64), factor=2)
    sp = compose(gc.Softplus())(x)
    assert np.isfinite(sp).all()
    assert sp[0] == 1000 and sp[1] == 0
    assert_near(sp, np.logaddexp(0.0, x64), dtype, np.logaddexp(0.0, x64), factor=2)
    dsp = compose(gc.Softplus()).vjp(x, np.ones_like(x))
    assert np.isfinite(dsp).all() and dsp[0] == 1 and dsp[1] == 0
    assert_near(dsp, sigmoid(x64), dtype, sigmoid(x64), factor=2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_logsumexp_stable(dtype):
    X = np.array(HUGE_ROWS, dtype)
    X64 = f64(X)
    labels = np.array([1, 2, 0, 2, 3])
    vals, G = compose(loss=CrossEntropy(labels)).value_and_grad(X, reduction="none")
    assert np.isfinite(vals).all() and np.isfinite(G).all()
    ref = lse(X64) - X64[np.arange(5), labels]
    onehot = np.eye(4)[labels]
    assert_losses_near(vals, ref, dtype, np.abs(X64).max(axis=1) + 1, factor=4)
    assert_near(G, softmax(X64) - onehot, dtype, softmax(X64) + 1e-3, factor=4)
    assert vals[0] == pytest.approx(2000.0, rel=1e-6)      # 1000 - (-1000)
    vals, G = compose(loss=LogSumExp()).value_and_grad(X, reduction="none")
    assert np.isfinite(vals).all() and np.isfinite(G).all()
    assert_losses_near(vals, lse(X64), dtype, np.abs(X64).max(axis=1) + 1,
                       factor=4)
    assert_near(G, softmax(X64), dtype, softmax(X64) + 1e-3, factor=4)
    for b in range(5):                  # single samples
        L, g = compose(loss=CrossEntropy(int(labels[b]))).value_and_grad(X[b])
        assert np.isfinite(L) and np.isfinite(g).all()
        assert_value_near(L, ref[b], dtype, np.abs(X64[b]).max() + 1, factor=4)


NAN_INF = [np.nan, np.inf, -np.inf, 0.5, -0.5]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_elementwise_nan_inf_propagate(name, dtype):
    make, fx = ELEMENTWISE[name][:2]
    x = np.array(NAN_INF, dtype)
    with np.errstate(all="ignore"):
        ref = fx(f64(x))
    y = compose(make())(x)
    assert y.dtype == dtype
    assert np.array_equal(np.isnan(y), np.isnan(ref)), (y, ref)
    inf = np.isinf(ref)
    assert np.array_equal(y[inf], ref[inf].astype(dtype))
    fin = np.isfinite(ref)
    assert_near(y[fin], ref[fin], dtype, np.abs(ref[fin]) + 1e-3, factor=2)
    assert np.isnan(y[0])                           # NaN in, NaN out
    # NaN in the cotangent stays where it is (the Jacobian is diagonal)
    xf = np.array([0.5, 1.0, 1.5], dtype)
    g = np.array([1.0, np.nan, 1.0], dtype)
    out = compose(make()).vjp(xf, g)
    assert np.isnan(out[1]) and np.isfinite(out[[0, 2]]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_and_losses_nan_inf(dtype):
    X = np.array([[np.nan, 0.0, 1.0], [0.0, 1.0, 2.0], [-np.inf, 0.0, 1.0]], dtype)
    s = compose(Softmax())(X)
    assert np.isnan(s[0]).all()                     # a NaN poisons its row only
    assert_near(s[1], softmax(f64(X[1])), dtype, softmax(f64(X[1])), factor=4)
    ref2 = softmax(f64(X[2, 1:]))
    assert s[2, 0] == 0 and np.isfinite(s[2]).all()
    assert_near(s[2, 1:], ref2, dtype, ref2, factor=4)
    vals, G = compose(loss=LogSumExp()).value_and_grad(X, reduction="none")
    assert np.isnan(vals[0]) and np.isnan(G[0]).all()
    assert np.isfinite(vals[1:]).all()
    assert vals.dtype == F64
    assert_value_near(float(vals[2]), lse(f64(X[2, 1:])), dtype,
                      np.abs(f64(X[2, 1:])).max() + 1, factor=4)
    vals, _ = compose(loss=SquaredError(np.zeros(3, dtype))).value_and_grad(
        X, reduction="none")
    assert np.isnan(vals[0]) and vals[2] == np.inf


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_of_zero_and_negative_like_numpy(dtype):
    x = np.array([0.0, -0.0, -1.0, -np.inf, 2.0, np.inf], dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = np.log(f64(x))
        dref = 1.0 / f64(x)
    f = compose(gc.Log())
    y = f(x)                                        # no exception, no warning
    assert y.dtype == dtype
    assert y[0] == -np.inf and y[1] == -np.inf
    assert np.isnan(y[2]) and np.isnan(y[3]) and y[5] == np.inf
    assert np.array_equal(np.isnan(y), np.isnan(ref))
    assert_near(y[[4]], ref[[4]], dtype, factor=2)
    d = f.vjp(x, np.ones_like(x))
    assert d[0] == np.inf and d[1] == -np.inf and d[2] == -1 and d[5] == 0
    assert np.array_equal(np.isnan(d), np.isnan(dref))
    # batch and chain() too
    yb = f(np.stack([x, x]))
    assert np.array_equal(yb, np.stack([y, y]), equal_nan=True)
    ch = f.chain(x)
    assert np.array_equal(ch.jacobians[0].diagonal, d, equal_nan=True)


# --------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------

def ref_loss(kind, x, aux):
    """(values (B,), gradients (B, n)) of the loss rows, float64."""
    x = f64(x)
    if kind == "se":
        d = x - aux
        return 0.5 * np.sum(d * d, axis=-1), d
    if kind == "mse":
        d = x - aux
        n = x.shape[-1]
        return np.mean(d * d, axis=-1), 2 * d / n
    if kind == "dot":
        return np.sum(aux * x, axis=-1), np.broadcast_to(aux, x.shape) + 0.0
    if kind == "lse":
        return lse(x), softmax(x)
    if kind == "ce":
        lab = np.broadcast_to(aux, x.shape[:-1])
        oh = np.eye(x.shape[-1])[lab]
        return lse(x) - np.take_along_axis(x, lab[..., None], -1)[..., 0], softmax(x) - oh
    raise ValueError(kind)


def make_loss(kind, rng, n, batch, dtype, broadcast):
    """(Loss, aux for ref_loss)."""
    if kind == "ce":
        if batch is None:
            lab = int(rng.integers(0, n))
            return CrossEntropy(lab), np.int64(lab)
        lab = rng.integers(0, n, size=batch)
        return CrossEntropy(lab), lab
    if kind == "lse":
        return LogSumExp(), None
    shape = (n,) if (batch is None or broadcast) else (batch, n)
    t = vec(rng, shape, dtype)
    cls = {"se": SquaredError, "mse": MeanSquaredError, "dot": Dot}[kind]
    return cls(t), f64(t)


def loss_scales(kind, x64, aux, n):
    if kind in ("se", "mse", "dot"):
        a = np.abs(f64(aux)) if aux is not None else 0
        vs = np.sum((np.abs(x64) + a) ** 2, axis=-1) + 1
        return vs * (2.0 / n if kind == "mse" else 1.0), np.abs(x64) + a + 1
    return np.max(np.abs(x64), axis=-1) + 1, np.ones_like(x64)


LOSS_KINDS = ["se", "mse", "ce", "lse", "dot"]


@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,broadcast", [(k, False) for k in LOSS_KINDS]
                         + [("se", True), ("mse", True), ("dot", True)],
                         ids=lambda v: {True: "bcast", False: "persample"}.get(v, v))
def test_loss_value_and_grad(rng, kind, dtype, batch, broadcast):
    n, c = 5, 1.5
    loss, aux = make_loss(kind, rng, n, batch, dtype, broadcast)
    x = vec(rng, shape_of(n, batch), dtype)
    x64 = f64(x)
    # through a compiled plan: L(x) = l(c x), grad = c l'(c x)
    f = compose(gc.Scale(c), loss=loss)
    vals, grads = ref_loss(kind, c * x64, aux)
    vsc, gsc = loss_scales(kind, c * x64, aux, n)
    for call in range(3):               # slow path, then the fast path
        if batch is None:
            L, g = f.value_and_grad(x)
            assert_value_near(L, vals, dtype, vsc, factor=4 * n)
            assert_near(g, c * grads, dtype, c * gsc, factor=4)
            assert f.value(x) == L and np.array_equal(f.grad(x), g)
            continue
        L, G = f.value_and_grad(x)      # "sum" by default
        assert_value_near(L, np.sum(vals), dtype, np.sum(vsc), factor=4 * n)
        assert_near(G, c * grads, dtype, c * gsc, factor=4)
        Lm, Gm = f.value_and_grad(x, reduction="mean")
        if batch:
            assert_value_near(Lm, np.sum(vals) / batch, dtype,
                              np.sum(vsc) / batch, factor=4 * n)
        else:
            # the mean of no losses is NaN, as np.mean of an empty array
            # (without its warning); the gradient is the empty (0, n) block
            assert isinstance(Lm, float) and np.isnan(Lm)
            assert Gm.shape == (0, n) and Gm.dtype == dtype
        assert_near(Gm, c * grads / max(batch, 1), dtype,
                    c * gsc / max(batch, 1), factor=4)
        Ln, Gn = f.value_and_grad(x, reduction="none")
        assert isinstance(Ln, np.ndarray) and Ln.shape == (batch,)
        assert_losses_near(Ln, vals, dtype, vsc, factor=4 * n)
        assert_near(Gn, c * grads, dtype, c * gsc, factor=4)
        assert f.value(x, "none").shape == (batch,)
        assert np.array_equal(f.grad(x, "mean"), Gm)
    # without maps, and the loss object itself
    vals, grads = ref_loss(kind, x64, aux)
    vsc, gsc = loss_scales(kind, x64, aux, n)
    v2, g2 = compose(loss=loss).value_and_grad(x, reduction="none") \
        if batch is not None else compose(loss=loss).value_and_grad(x)
    v3, g3 = loss.value_and_grad(x)
    for v, g in ((v2, g2), (v3, g3)):
        if batch is None:
            assert_value_near(v, vals, dtype, vsc, factor=4 * n)
        else:
            assert_losses_near(v, vals, dtype, vsc, factor=4 * n)
        assert_near(g, grads, dtype, gsc, factor=4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("user_map", [False, True], ids=["compiled", "user-map"])
def test_mean_of_an_empty_batch(dtype, user_map):
    # Composition._reduce: the mean of no losses is NaN (np.mean's value,
    # without its RuntimeWarning), the gradient the empty (0, n_0) block
    import warnings
    n = 4
    maps = [gc.Tanh(), Affine(np.ones((3, n), dtype))]
    if user_map:
        maps.insert(1, Map(np.sin, vjp=lambda x, g: g * np.cos(x)))
    f = compose(*maps, loss=SquaredError(np.zeros(3, dtype)))
    X = np.zeros((0, n), dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):                  # slow path, then the fast path
            L, G = f.value_and_grad(X, reduction="mean")
            assert isinstance(L, float) and np.isnan(L)
            assert isinstance(G, np.ndarray)
            assert G.shape == (0, n) and G.dtype == dtype
            assert f.value(X, "sum") == 0.0
            vals = f.value(X, "none")
            assert vals.shape == (0,) and vals.dtype == F64


def test_loss_target_mutation_and_labels_are_followed(rng):
    t = np.zeros(4)
    x = rng.standard_normal((3, 4))
    f = compose(gc.Tanh(), loss=SquaredError(t))
    for _ in range(2):
        f.value_and_grad(x)
    t[:] = 0.5                           # the target is read at each call
    L, G = f.value_and_grad(x)
    d = np.tanh(x) - 0.5
    assert L == pytest.approx(0.5 * np.sum(d * d), rel=1e-12)
    np.testing.assert_allclose(G, d * (1 - np.tanh(x) ** 2), rtol=1e-12, atol=1e-15)
    lab = np.array([0, 1, 2])
    f = compose(gc.Tanh(), loss=CrossEntropy(lab))
    for _ in range(2):
        f.value_and_grad(x)
    lab[:] = [3, 3, 0]
    L, _ = f.value_and_grad(x, reduction="none")
    th = np.tanh(x)
    np.testing.assert_allclose(L, lse(th) - th[np.arange(3), [3, 3, 0]], rtol=1e-12)


# --------------------------------------------------------------------------
# compose(Affine, Tanh) x 4 + SquaredError against NumPy backprop by hand
# --------------------------------------------------------------------------

def mlp_params(rng, n, dtype, layers=4):
    Ws = [(1.3 * rng.standard_normal((n, n)) / np.sqrt(n)).astype(dtype)
          for _ in range(layers)]
    bs = [vec(rng, n, dtype, -0.5, 0.5) for _ in range(layers)]
    return Ws, bs


def mlp_reference(Ws, bs, x, t):
    """(values per sample (B,), gradients (B, n), error scale (B, n)) for
    L = 1/2 ||tanh(W4 tanh(... tanh(W1 x + b1) ...) + b4) - t||^2, float64.

    The error scale is the row's largest gradient entry (normwise) plus the
    classical bound -- |d| + |h| backpropagated through |D_i| |W_i| with the
    rounding of 1 - h^2 -- damped by n^2, since that bound grows like
    (sqrt(n))^depth faster than the errors of random-sign products do; the
    bound term matters where the gradient is small by cancellation."""
    h = np.atleast_2d(f64(x))
    hs = [h]
    for W, b in zip(Ws, bs):
        h = np.tanh(h @ f64(W).T + f64(b))
        hs.append(h)
    d = h - f64(t)
    vals = 0.5 * np.sum(d * d, axis=1)
    g, s = d, np.abs(d) + np.abs(h)
    for i in reversed(range(len(Ws))):
        hi = hs[i + 1]
        s = s * np.abs(1 - hi * hi) + np.abs(g) * hi * hi
        g = g * (1 - hi * hi)
        g = g @ f64(Ws[i])
        s = s @ np.abs(f64(Ws[i]))
    n = g.shape[1]
    scale = (np.max(np.abs(g), axis=1, keepdims=True, initial=0.0)
             + np.max(s, axis=1, keepdims=True, initial=0.0) / max(n, 1) ** 2)
    return vals, g, np.broadcast_to(scale, g.shape)


def check_mlp_call(f, Ws, bs, x, t, dtype, n):
    vals, G, S = mlp_reference(Ws, bs, x, t)
    k = 4
    if x.ndim == 1:
        L, g = f.value_and_grad(x)
        assert_value_near(L, vals[0], dtype, vals[0] + n, factor=k)
        assert_near(g, G[0], dtype, S[0], factor=k)
        return L, g
    L, g = f.value_and_grad(x)
    assert_value_near(L, np.sum(vals), dtype, np.sum(vals) + n * x.shape[0], factor=k)
    assert_near(g, G, dtype, S, factor=k)
    return L, g


@pytest.mark.parametrize("batch", [None, 7], ids=lambda b: f"B{b}")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 5, 16, 64])
def test_mlp_against_numpy_backprop(rng, n, dtype, batch):
    Ws, bs = mlp_params(rng, n, dtype)
    t = vec(rng, n, dtype, -0.8, 0.8)
    maps = []
    for W, b in zip(Ws, bs):
        maps += [Affine(W, b), gc.Tanh()]
    f = compose(*maps, loss=SquaredError(t))
    x = vec(rng, shape_of(n, batch), dtype)
    first = check_mlp_call(f, Ws, bs, x, t, dtype, n)
    for _ in range(3):                  # the fast path: bitwise the same
        again = check_mlp_call(f, Ws, bs, x, t, dtype, n)
        assert again[0] == first[0] and np.array_equal(again[1], first[1])
    # different inputs of the same shape through the fast path
    x2 = vec(rng, x.shape, dtype)
    check_mlp_call(f, Ws, bs, x2, t, dtype, n)
    # mutate the parameters in place: later calls follow the new values
    Ws[1] *= -0.5
    Ws[2][0, -1] += 0.75
    bs[3][...] = 0.25
    check_mlp_call(f, Ws, bs, x, t, dtype, n)
    check_mlp_call(f, Ws, bs, x2, t, dtype, n)
    # another batch size (and the single/batch switch) in between
    other = vec(rng, (3, n), dtype) if batch is not None else vec(rng, (2, n), dtype)
    check_mlp_call(f, Ws, bs, other, t, dtype, n)
    check_mlp_call(f, Ws, bs, other[0], t, dtype, n)
    check_mlp_call(f, Ws, bs, x, t, dtype, n)
    Ws[0][...] = 0.1 * np.eye(n, dtype=dtype) + Ws[0]
    check_mlp_call(f, Ws, bs, x, t, dtype, n)
    check_mlp_call(f, Ws, bs, x, t, dtype, n)
    # the composition's other entry points agree with the same reference
    if batch is None:
        h = f64(x)
        Js = []
        for W, b in zip(Ws, bs):
            h = np.tanh(h @ f64(W).T + f64(b))
            Js.append(np.diag(1 - h * h) @ f64(W))
        J, Jabs = np.eye(n), np.eye(n)
        for Ji, W in zip(Js, Ws):
            J = Ji @ J
            Jabs = np.abs(f64(W)) @ Jabs        # |1 - h^2| + its rounding <= 1
        # normwise, plus the damped classical bound (see mlp_reference)
        scale = np.max(np.abs(J)) + np.abs(J) + np.max(Jabs) / n ** 2
        jac = compose(*maps).jacobian(x)
        nl = compose(*maps)
        assert_near(jac, J, dtype, scale, factor=8)
        assert_near(dense_from_chain(nl.chain(x), n, dtype), J, dtype, scale,
                    factor=8)
        assert_near(nl(x), h, dtype, np.abs(h) + 1, factor=8)


def test_mlp_float32_params_float64_input_follow_mutation(rng):
    # float32 parameters with a float64 x compute in float64 (the chain's
    # dtype rule); a later in-place change of W must be seen, as it is by
    # Chain for a float32 chain applied to a float64 vector.
    n = 5
    Ws, bs = mlp_params(rng, n, np.float32)
    t = vec(rng, n, np.float64, -0.8, 0.8)
    maps = []
    for W, b in zip(Ws, bs):
        maps += [Affine(W, b), gc.Tanh()]
    f = compose(*maps, loss=SquaredError(t))
    x = vec(rng, (3, n), np.float64)
    check_mlp_call(f, Ws, bs, x, t, np.float64, n)
    check_mlp_call(f, Ws, bs, x, t, np.float64, n)
    Ws[1] *= -0.5
    bs[0][...] = 0.3
    check_mlp_call(f, Ws, bs, x, t, np.float64, n)
    y = compose(*maps)(x[0])
    h = x[0]
    for W, b in zip(Ws, bs):
        h = np.tanh(h @ f64(W).T + f64(b))
    assert_near(y, h, np.float64, np.abs(h) + 1, factor=100)


# --------------------------------------------------------------------------
# user maps
# --------------------------------------------------------------------------

def user_setup(rng, kind, dtype=np.float64):
    """compose(Affine(W1, b1), U, Tanh(), Affine(W2), loss=SquaredError(t))
    with U = sin given by the user in one of three ways."""
    W1 = (rng.standard_normal((4, 3)) / 2).astype(dtype)
    b1 = vec(rng, 4, dtype, -0.5, 0.5)
    W2 = (rng.standard_normal((2, 4)) / 2).astype(dtype)
    t = vec(rng, 2, dtype)
    if kind == "array":
        U = Map(np.sin, jacobian=lambda x: np.diag(np.cos(x)))
    elif kind == "operator":
        U = Map(np.sin, jacobian=lambda x: gc.Diagonal(np.cos(x)))
    else:
        U = Map(np.sin, vjp=lambda x, g: np.cos(x) * g,
                jvp=lambda x, v: np.cos(x) * v)
    maps = [Affine(W1, b1), U, gc.Tanh(), Affine(W2)]
    return maps, (W1, b1, W2, t)


def user_reference(params, x):
    W1, b1, W2, t = [f64(p) for p in params]
    X = np.atleast_2d(f64(x))
    z1 = X @ W1.T + b1
    z2 = np.sin(z1)
    z3 = np.tanh(z2)
    y = z3 @ W2.T
    d = y - t
    vals = 0.5 * np.sum(d * d, axis=1)
    g = d @ W2
    g = g * (1 - z3 * z3)
    g = g * np.cos(z1)
    g = g @ W1
    Js = [np.diag(1 - z3[b] ** 2) @ np.diag(np.cos(z1[b])) for b in range(X.shape[0])]
    J = [W2 @ Jb @ W1 for Jb in Js]          # d y / d x per sample
    return y, vals, g, J


@pytest.mark.parametrize("kind", ["array", "operator", "vjp_jvp"])
@pytest.mark.parametrize("batch", [None, 3])
def test_user_maps_mixed_with_builtins(rng, kind, batch):
    maps, params = user_setup(rng, kind)
    f = compose(*maps, loss=SquaredError(params[3]))
    nl = compose(*maps)
    x = vec(rng, shape_of(3, batch), np.float64)
    y, vals, G, J = user_reference(params, x)
    tol = dict(rtol=1e-12, atol=1e-13)
    for _ in range(2):
        L, g = f.value_and_grad(x)
        np.testing.assert_allclose(L, np.sum(vals), **tol)
        np.testing.assert_allclose(g, G if batch else G[0], **tol)
    np.testing.assert_allclose(nl(x), y if batch else y[0], **tol)
    gy = vec(rng, shape_of(2, batch), np.float64)
    v = vec(rng, shape_of(3, batch), np.float64)
    gy2, v2 = np.atleast_2d(gy), np.atleast_2d(v)
    ref_vjp = np.stack([gy2[b] @ J[b] for b in range(len(J))])
    ref_jvp = np.stack([J[b] @ v2[b] for b in range(len(J))])
    np.testing.assert_allclose(nl.vjp(x, gy), ref_vjp if batch else ref_vjp[0], **tol)
    np.testing.assert_allclose(nl.jvp(x, v), ref_jvp if batch else ref_jvp[0], **tol)
    if batch is None:
        np.testing.assert_allclose(nl.jacobian(x), J[0], **tol)
        assert_fd_close(nl.jacobian(x), fd_jacobian(lambda z: user_reference(
            params, z)[0][0], x), F64)
        if kind != "vjp_jvp":
            ch = nl.chain(x)
            assert len(ch) == 4
            np.testing.assert_allclose(dense_from_chain(ch, 2, np.float64), J[0], **tol)
        assert check_grad(f, x) < 1e-6


def test_user_map_float32(rng):
    maps, params = user_setup(rng, "array", np.float32)
    f = compose(*maps, loss=SquaredError(params[3]))
    x = vec(rng, (3,), np.float32)
    _, vals, G, _ = user_reference(params, x)
    L, g = f.value_and_grad(x)
    assert g.dtype == np.float32
    np.testing.assert_allclose(L, vals[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g, G[0], rtol=1e-4, atol=1e-5)


def test_user_map_errors(rng):
    with pytest.raises(TypeError, match=re.escape("a Map needs jacobian=, vjp= or jvp=")):
        Map(np.sin)
    with pytest.raises(TypeError, match="jacobian must be callable"):
        Map(np.sin, jacobian=np.eye(3))
    only_vjp = Map(np.sin, vjp=lambda x, g: np.cos(x) * g)
    f = compose(gc.Tanh(), only_vjp)
    x = vec(rng, 3, np.float64)
    # reverse mode works ...
    np.testing.assert_allclose(f.vjp(x, np.ones(3)),
                               np.cos(np.tanh(x)) * (1 - np.tanh(x) ** 2), rtol=1e-12)
    # ... forward mode has nothing to run
    with pytest.raises(TypeError, match="no jvp= or jacobian= for forward mode"):
        f.jvp(x, np.ones(3))
    with pytest.raises(TypeError, match=re.escape(
            "maps[1] is matrix-free (vjp=/jvp= only)")):
        f.chain(x)
    only_jvp = Map(np.sin, jvp=lambda x, v: np.cos(x) * v)
    with pytest.raises(TypeError, match="no vjp= or jacobian= for reverse mode"):
        compose(only_jvp).vjp(x, np.ones(3))
    with pytest.raises(TypeError, match=re.escape("maps[0] is matrix-free")):
        compose(only_jvp).chain(x)


def test_user_map_output_width_is_checked(rng):
    # A user map whose output does not fit the next Affine: the composition
    # must say so, not read past the end of the user's output.
    drop = Map(lambda x: x[..., :2], jacobian=lambda x: np.eye(3)[:2])
    f = compose(drop, Affine(np.arange(12.0).reshape(4, 3)))
    for x in (np.ones(3), np.ones((2, 3))):
        with pytest.raises(ValueError, match=r"maps\[1\].*3"):
            f(x)


def test_user_map_jacobian_with_no_inputs():
    # n_0 = 0: the Jacobian is an (n_k, 0) array, as for built-in maps
    U = Map(lambda x: np.concatenate([x, np.ones(x.shape[:-1] + (1,))], axis=-1),
            jacobian=lambda x: np.eye(x.shape[0] + 1, x.shape[0]))
    J = compose(U, gc.Tanh()).jacobian(np.zeros(0))
    assert J.shape == (1, 0)


def test_user_map_jvp_empty_batch_shape(rng):
    U = Map(lambda x: 2 * x[..., :2], jacobian=lambda x: 2 * np.eye(3)[:2])
    f = compose(U)
    assert f.jvp(np.zeros((0, 3)), np.zeros((0, 3))).shape == (0, 2)
    assert f.vjp(np.zeros((0, 3)), np.zeros((0, 2))).shape == (0, 3)
    assert f(np.zeros((0, 3))).shape == (0, 2)


# --------------------------------------------------------------------------
# check_grad
# --------------------------------------------------------------------------

def test_check_grad_compositions_and_maps(rng):
    W = rng.standard_normal((4, 3)) / 2
    x = vec(rng, 3, np.float64)
    with_loss = compose(Affine(W, np.ones(4)), gc.Tanh(), gc.Softmax(),
                        loss=CrossEntropy(2))
    assert check_grad(with_loss, x) < 1e-6
    without = compose(Affine(W), gc.Sigmoid(), gc.LogSoftmax())
    assert check_grad(without, x) < 1e-6
    assert check_grad(gc.Softmax(), x) < 1e-6
    assert check_grad(gc.Exp(), x) < 1e-6
    assert check_grad(lambda z: (np.sum(np.sin(z)), np.cos(z)), x) < 1e-6
    # float32: looser, but far from a wrong gradient
    assert check_grad(with_loss, x.astype(np.float32)) < 1e-2


def test_check_grad_user_map(rng):
    x = vec(rng, 3, np.float64)
    good = Map(np.sin, jacobian=lambda z: np.diag(np.cos(z)))
    assert check_grad(good, x) < 1e-6
    assert check_grad(compose(good, loss=LogSumExp()), x) < 1e-6


def test_check_grad_reports_wrong_gradient(rng):
    x = vec(rng, 3, np.float64, 0.1, 1.0)
    # a callable whose gradient is twice the true one: relative error 1
    err = check_grad(lambda z: (np.sum(np.sin(z)), 2 * np.cos(z)), x)
    assert err == pytest.approx(1.0, rel=1e-4)
    err = check_grad(lambda z: (np.sum(np.sin(z)), np.cos(z) + 1e-3), x)
    assert 1e-4 < err < 1e-2


def test_check_grad_reports_wrong_user_jacobian(rng):
    x = vec(rng, 3, np.float64, 0.1, 1.0)
    # a user Map whose Jacobian is twice the true one
    wrong = Map(np.sin, jacobian=lambda z: 2 * np.diag(np.cos(z)))
    assert check_grad(wrong, x) == pytest.approx(1.0, rel=1e-4)
    assert check_grad(compose(wrong, loss=Dot(np.ones(3))), x) == pytest.approx(
        1.0, rel=1e-4)


# --------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------

def test_affine_bad_parameters():
    with pytest.raises(ValueError, match=re.escape(
            "W must be 2-D (n_out, n_in), got shape (3,)")):
        Affine(np.ones(3))
    with pytest.raises(ValueError, match=re.escape("got shape (2, 3, 4)")):
        Affine(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match=re.escape(
            "b has shape (4,) but W has shape (3, 4): b must have shape (3,)")):
        Affine(np.ones((3, 4)), np.ones(4))
    with pytest.raises(ValueError, match=re.escape("b has shape (3, 1)")):
        Affine(np.ones((3, 4)), np.ones((3, 1)))
    with pytest.raises(TypeError, match="W has complex dtype"):
        Affine(np.ones((3, 4), complex))
    with pytest.raises(TypeError, match="b has complex dtype"):
        Affine(np.ones((3, 4)), np.ones(3, complex))
    with pytest.raises(TypeError, match="alpha must be a real number"):
        gc.LeakyReLU("0.1")
    with pytest.raises(TypeError, match="c must be a real number"):
        gc.Scale(True)


def test_compose_dims_mismatch():
    A = Affine(np.ones((4, 3)))
    B = Affine(np.ones((2, 5)))
    with pytest.raises(ValueError, match=re.escape(
            "maps[2] (Affine(5 -> 2)) takes 5 inputs but maps[0] outputs 4 values")):
        compose(A, gc.Tanh(), B)
    with pytest.raises(ValueError, match=re.escape(
            "maps[1] (Affine(5 -> 2)) takes 5 inputs but maps[0] outputs 4 values")):
        compose(A, B)
    with pytest.raises(TypeError, match=re.escape("maps[1] must be a gradchain Map")):
        compose(A, np.ones((3, 4)))
    with pytest.raises(TypeError, match="loss must be a gradchain Loss"):
        compose(A, loss=np.sum)
    with pytest.raises(ValueError, match=re.escape(
            "loss target has shape (3,) but maps[0] outputs 4 values")):
        compose(A, gc.Tanh(), loss=SquaredError(np.zeros(3)))
    with pytest.raises(ValueError, match=re.escape(
            "loss w has shape (2, 5) but maps[0] outputs 4 values")):
        compose(A, loss=Dot(np.zeros((2, 5))))


def test_x_wrong_length_or_rank_at_first_call():
    f = compose(gc.Tanh(), Affine(np.ones((2, 3))), loss=LogSumExp())
    for x in (np.ones(4), np.ones((5, 4))):
        with pytest.raises(ValueError, match=re.escape(
                f"x has shape {x.shape} but maps[1] (Affine(3 -> 2)) takes 3 inputs")):
            f.value_and_grad(x)
        with pytest.raises(ValueError, match="takes 3 inputs"):
            f(x)
    with pytest.raises(ValueError, match=re.escape(
            "x must be 1-D (n_0,) or 2-D (batch, n_0), got shape (2, 2, 3)")):
        f(np.ones((2, 2, 3)))
    with pytest.raises(ValueError, match=re.escape("got shape ()")):
        f.value_and_grad(np.float64(1.0))
    f.value_and_grad(np.ones(3))
    f.value_and_grad(np.ones(3))        # fast path now set
    with pytest.raises(ValueError, match="takes 3 inputs"):
        f.value_and_grad(np.ones(4))
    nl = compose(Affine(np.ones((2, 3))))
    with pytest.raises(ValueError, match=re.escape("g has shape (3,) but the maps output (2,)")):
        nl.vjp(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match=re.escape("v has shape (4,) but x has shape (3,)")):
        nl.jvp(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="jacobian takes a single x"):
        nl.jacobian(np.ones((2, 3)))
    with pytest.raises(ValueError, match="chain takes a single x"):
        nl.chain(np.ones((2, 3)))


def test_target_shape_mismatch_at_call():
    f = compose(gc.Tanh(), loss=SquaredError(np.zeros(3)))
    with pytest.raises(ValueError, match=re.escape(
            "target has shape (3,) but the output x^(k) has 1 sample(s) of 4 values")):
        f.value_and_grad(np.ones(4))
    g = compose(gc.Tanh(), loss=MeanSquaredError(np.zeros((2, 3))))
    with pytest.raises(ValueError, match=re.escape(
            "target has shape (2, 3) but the output x^(k) has 5 sample(s) of 3 "
            "values: expected (3,) or (5, 3)")):
        g.value_and_grad(np.ones((5, 3)))
    with pytest.raises(ValueError, match="target has shape"):
        g.value_and_grad(np.ones(3))     # a single x, per-sample target of 2
    with pytest.raises(ValueError, match=re.escape(
            "target must be 1-D (n,) or 2-D (batch, n), got shape (1, 2, 3)")):
        SquaredError(np.zeros((1, 2, 3)))
    with pytest.raises(TypeError, match="target has complex dtype"):
        SquaredError(np.zeros(3, complex))


def test_labels_errors():
    X = np.zeros((3, 4))
    with pytest.raises(ValueError, match=re.escape(
            "labels[1] = 4 is out of range for 4 classes (0 <= label < 4)")):
        compose(loss=CrossEntropy([0, 4, 1])).value_and_grad(X)
    with pytest.raises(ValueError, match=re.escape("labels[2] = -1 is out of range")):
        compose(gc.Tanh(), loss=CrossEntropy([0, 1, -1])).value_and_grad(X)
    with pytest.raises(ValueError, match=re.escape("labels = 7 is out of range for 4")):
        compose(loss=CrossEntropy(7)).value_and_grad(np.zeros(4))
    with pytest.raises(ValueError, match=re.escape(
            "labels has shape (2,) but the batch has 3 sample(s)")):
        compose(gc.Tanh(), loss=CrossEntropy([0, 1])).value_and_grad(X)
    with pytest.raises(TypeError, match="labels must be integers, got dtype float64"):
        CrossEntropy([0.0, 1.0])
    with pytest.raises(TypeError, match="labels must be integers"):
        CrossEntropy(1.5)
    with pytest.raises(TypeError, match="labels must be integers"):
        CrossEntropy(np.array([True, False]))
    with pytest.raises(ValueError, match="labels must be an int or 1-D"):
        CrossEntropy(np.zeros((2, 2), int))
    # out of range after the fast path was set
    lab = np.array([0, 1, 2])
    f = compose(gc.Tanh(), loss=CrossEntropy(lab))
    f.value_and_grad(X)
    f.value_and_grad(X)
    lab[0] = 9
    with pytest.raises(ValueError, match=re.escape("labels[0] = 9 is out of range")):
        f.value_and_grad(X)


@pytest.mark.parametrize("shape", [(4,), (3, 4)], ids=["single", "batch"])
def test_reduction_errors(shape):
    f = compose(gc.Tanh(), loss=SquaredError(np.zeros(4)))
    x = np.ones(shape)
    msg = re.escape("reduction must be 'sum', 'mean' or 'none', got 'avg'")
    with pytest.raises(ValueError, match=msg):
        f.value_and_grad(x, reduction="avg")
    f.value_and_grad(x)
    f.value_and_grad(x)                 # the fast path is set for this shape
    with pytest.raises(ValueError, match=msg):
        f.value_and_grad(x, reduction="avg")
    with pytest.raises(ValueError, match="reduction must be"):
        f.value(x, reduction=None)
    with pytest.raises(ValueError, match="reduction must be"):
        f.grad(x, reduction="SUM")


def test_value_and_grad_without_loss():
    f = compose(Affine(np.ones((2, 3))), gc.Tanh())
    for x in (np.ones(3), np.ones((2, 3))):
        with pytest.raises(ValueError, match=re.escape(
                "value_and_grad needs a loss: compose(..., loss=...)")):
            f.value_and_grad(x)
    with pytest.raises(ValueError, match="needs a loss"):
        f.grad(np.ones(3))


def test_complex_and_non_numeric_input():
    f = compose(gc.Tanh(), loss=LogSumExp())
    for x in (np.ones(3, complex), np.ones((2, 3), np.complex64)):
        with pytest.raises(TypeError, match="x has complex dtype"):
            f.value_and_grad(x)
        with pytest.raises(TypeError, match="x has complex dtype"):
            f(x)
    f.value_and_grad(np.ones(3))
    f.value_and_grad(np.ones(3))
    with pytest.raises(TypeError, match="x has complex dtype"):
        f.value_and_grad(np.ones(3, complex))
    with pytest.raises(TypeError, match="g has complex dtype"):
        f.vjp(np.ones(3), np.ones(3, complex))
    with pytest.raises(TypeError, match="x has dtype"):
        f(np.array(["a", "b"]))
    with pytest.raises(TypeError, match="x has complex dtype"):
        check_grad(f, np.ones(3, complex))
    with pytest.raises(TypeError, match="x has complex dtype"):
        LogSumExp().value_and_grad(np.ones(3, complex))


def test_integer_and_float16_inputs_follow_dtype_rule():
    f = compose(gc.Square(), loss=SquaredError(np.zeros(3, np.float32)))
    L, g = f.value_and_grad(np.array([1, 2, 3]))
    assert g.dtype == np.float64
    assert L == 0.5 * (1 + 16 + 81)
    assert np.array_equal(g, np.array([2.0, 16.0, 54.0]))     # 2 x^3
    y = compose(gc.Square())(np.array([1, 2], np.float16))
    assert y.dtype == np.float32 and np.array_equal(y, [1.0, 4.0])


def test_too_many_maps_for_the_fast_path():
    # value_and_grad called twice on a long composition (more maps than the
    # compiled fast path holds) must fall back, not fail.
    for k in (63, 64, 65, 70):
        f = compose(*[gc.Scale(1.0) for _ in range(k)],
                    loss=SquaredError(np.zeros(3)))
        for x in (np.arange(3.0), np.arange(6.0).reshape(2, 3)):
            for _ in range(3):
                L, g = f.value_and_grad(x)
                assert L == 0.5 * float(np.sum(x * x))
                assert np.array_equal(g, x)


def test_workspace_reuse_with_another_width():
    # A composition without an Affine accepts any width; a call with the same
    # batch size but more values must not reuse the smaller workspace.
    code = """
        import numpy as np, gradchain as gc
        f = gc.compose(gc.Exp(), gc.Tanh(), gc.Scale(2.0))
        for n in (2, 3, 200000, 5, 300000):
            x = np.linspace(-1, 1, n).reshape(1, -1)
            y = f(x)
            assert np.allclose(y, 2 * np.tanh(np.exp(x)), rtol=1e-12, atol=0), n
            v = f.vjp(x, np.ones_like(x))
            ref = 2 * (1 - np.tanh(np.exp(x)) ** 2) * np.exp(x)
            assert np.allclose(v, ref, rtol=1e-12, atol=1e-300), n
        g = gc.compose(gc.Softmax(), loss=gc.LogSumExp())
        for n in (2, 100000, 3):
            x = np.linspace(-1, 1, n)
            for _ in range(2):
                L, gr = g.value_and_grad(x)
            s = np.exp(x - x.max()); s /= s.sum()
            assert np.isclose(L, np.log(np.sum(np.exp(s))), rtol=1e-12), n
        print("ok")
    """
    r = run_isolated(code)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (
        f"child exited with {r.returncode}:\n{r.stderr[-2000:]}")


def test_forward_does_not_alias_input(rng):
    f = compose(gc.Tanh(), gc.Scale(2.0))
    for x in (vec(rng, 4, np.float64), vec(rng, (3, 4), np.float64)):
        y, xs = f.forward(x)
        for a in [y] + xs:
            assert not np.shares_memory(a, x)
        assert np.array_equal(xs[0], x)


# --------------------------------------------------------------------------
# determinism and threads
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_bitwise_repeatable(rng, dtype):
    n = 16
    Ws, bs = mlp_params(rng, n, dtype)
    maps = [Affine(Ws[0], bs[0]), gc.Tanh(), Affine(Ws[1]), gc.Softplus(),
            Affine(Ws[2], bs[2]), gc.LogSoftmax()]
    f = compose(*maps, loss=CrossEntropy(np.arange(5) % n))
    nl = compose(*maps)
    X = vec(rng, (5, n), dtype)
    G = vec(rng, (5, n), dtype)
    for a, b in [(f.value_and_grad(X), f.value_and_grad(X)),
                 (f.value_and_grad(X, "none"), f.value_and_grad(X, "none"))]:
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert np.array_equal(nl.vjp(X, G), nl.vjp(X, G))
    assert np.array_equal(nl.jvp(X, G), nl.jvp(X, G))
    assert np.array_equal(nl(X), nl(X))
    assert np.array_equal(nl.jacobian(X[0]), nl.jacobian(X[0]))
    # a fresh composition of the same maps gives the same bits
    f2 = compose(*maps, loss=CrossEntropy(np.arange(5) % n))
    a, b = f.value_and_grad(X), f2.value_and_grad(X)
    assert a[0] == b[0] and np.array_equal(a[1], b[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_threads_share_one_composition(rng, dtype):
    n = 64
    Ws, bs = mlp_params(rng, n, dtype)
    t = vec(rng, n, dtype, -0.8, 0.8)
    maps = []
    for W, b in zip(Ws, bs):
        maps += [Affine(W, b), gc.Tanh()]
    f = compose(*maps, loss=SquaredError(t))
    n_threads, n_calls = 8, 12
    tasks = []
    for i in range(n_threads * n_calls):
        kind = i % 3
        shape = (n,) if kind == 2 else ((7, n) if kind == 0 else (16, n))
        tasks.append(vec(rng, shape, dtype))
    expected = [f.value_and_grad(x) for x in tasks]        # one at a time
    for x, (L, g) in list(zip(tasks, expected))[::11]:     # and they are right
        vals, G, S = mlp_reference(Ws, bs, x, t)
        assert_near(g, G if x.ndim == 2 else G[0], dtype,
                    S if x.ndim == 2 else S[0], factor=4)

    def worker(k):
        return [f.value_and_grad(x) for x in tasks[k::n_threads]]

    for _ in range(3):
        with concurrent.futures.ThreadPoolExecutor(max_workers=n_threads) as ex:
            futures = [ex.submit(worker, k) for k in range(n_threads)]
            results = [fu.result() for fu in futures]
        for k in range(n_threads):
            for j, (L, g) in enumerate(results[k]):
                want = expected[k + j * n_threads]
                assert L == want[0] and np.array_equal(g, want[1])


# --------------------------------------------------------------------------
# property test: random compositions against finite differences
# --------------------------------------------------------------------------

EW_STEPS = {
    # name: [(gradchain constructor, NumPy forward)] -- exp and log come with
    # a map in front that keeps their input in range
    "tanh": [(gc.Tanh, np.tanh)],
    "sigmoid": [(gc.Sigmoid, sigmoid)],
    "relu": [(gc.ReLU, lambda x: np.maximum(x, 0))],
    "leaky": [(lambda: gc.LeakyReLU(0.1), lambda x: np.where(x < 0, 0.1 * x, x))],
    "softplus": [(gc.Softplus, lambda x: np.logaddexp(0.0, x))],
    "exp": [(gc.Tanh, np.tanh), (gc.Exp, np.exp)],
    "log": [(gc.Softplus, lambda x: np.logaddexp(0.0, x)), (gc.Log, np.log)],
    "sin": [(gc.Sin, np.sin)],
    "cos": [(gc.Cos, np.cos)],
    "square": [(gc.Square, np.square)],
    "scale": [(lambda: gc.Scale(-0.7), lambda x: -0.7 * x)],
    "softmax": [(Softmax, softmax)],
    "logsoftmax": [(LogSoftmax, log_softmax)],
}
STEP_NAMES = ["affine", "affine_b"] + list(EW_STEPS)


@settings(max_examples=40, deadline=None)
@given(n0=st.integers(1, 6),
       steps=st.lists(st.tuples(st.sampled_from(STEP_NAMES), st.integers(1, 6)),
                      min_size=1, max_size=5),
       loss_kind=st.sampled_from(LOSS_KINDS),
       dtype=st.sampled_from(DTYPES),
       batch=st.sampled_from([None, 1, 3]),
       seed=st.integers(0, 2**32 - 1))
def test_property_random_compositions(n0, steps, loss_kind, dtype, batch, seed):
    rng = np.random.default_rng(seed)
    maps, fns, kinks = [], [], set()
    n = n0
    for name, width in steps:
        if name.startswith("affine"):
            W = (rng.standard_normal((width, n)) / np.sqrt(n)).astype(dtype)
            b = vec(rng, width, dtype, -0.5, 0.5) if name == "affine_b" else None
            maps.append(Affine(W, b))
            fns.append(lambda h, W=f64(W), b=None if b is None else f64(b):
                       h @ W.T + (0 if b is None else b))
            n = width
        else:
            for make, fn in EW_STEPS[name]:
                maps.append(make())
                fns.append(fn)
                if name in ("relu", "leaky"):
                    kinks.add(len(fns) - 1)
    loss, aux = make_loss(loss_kind, rng, n, batch, dtype, broadcast=False)
    x = vec(rng, shape_of(n0, batch), dtype, -1.5, 1.5)
    x64 = f64(x)

    def ref_total(z):
        """Sum of the per-sample losses of the NumPy forward pass."""
        h = np.reshape(z, x.shape)
        for i, fn in enumerate(fns):
            if i in kinks:
                pre.append(h)
            h = fn(h)
        return float(np.sum(ref_loss(loss_kind, h, aux)[0]))

    pre = []
    ref_total(x64)
    # keep the inputs of ReLU / LeakyReLU away from their kink
    assume(all(np.min(np.abs(p), initial=1.0) > 1e-3 for p in pre))
    f = compose(*maps, loss=loss)
    L, g = f.value_and_grad(x)
    assert g.dtype == dtype and g.shape == x.shape
    Lref = ref_total(x64)
    assert abs(L - Lref) <= (1e-10 if dtype == np.float64 else 2e-4) * (1 + abs(Lref))
    fd = fd_jacobian(ref_total, x64.ravel()).reshape(x.shape)
    assert_fd_close(g, fd, dtype, rel=1e-6 if dtype == np.float64 else 3e-3)
    # a second call takes the fast path (all built in) and gives the same bits
    L2, g2 = f.value_and_grad(x)
    assert L2 == L and np.array_equal(g2, g)
    if batch is None:
        # the maps' Jacobian against differences of the NumPy forward pass
        def ref_forward(z):
            h = z
            for fn in fns:
                h = fn(h)
            return h
        J = compose(*maps).jacobian(x)
        assert J.dtype == dtype and J.shape == (n, n0)
        assert_fd_close(J, fd_jacobian(ref_forward, x64), dtype,
                        rel=1e-6 if dtype == np.float64 else 3e-3)


# --------------------------------------------------------------------------
# the branch-free tanh (csrc/gc_maps.c) against a long-double reference
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tanh_within_two_ulp_of_long_double(dtype):
    tiny = -37 if dtype == np.float32 else -300
    x = np.concatenate([
        np.linspace(-30, 30, 200001),
        np.logspace(tiny, 1.5, 20001), -np.logspace(tiny, 1.5, 20001),
        [0.0, -0.0, 0.6249999, 0.625, 0.6250001, 9.0, 22.0, 1e300 if dtype == np.float64 else 3e38],
    ]).astype(dtype)
    y = gc.Tanh()(x)
    ref = np.tanh(x.astype(np.longdouble))
    ulp = np.spacing(np.abs(ref).astype(dtype)).astype(np.longdouble)
    err = np.abs(y.astype(np.longdouble) - ref) / ulp
    assert float(err.max()) <= 2.0
    assert np.signbit(gc.Tanh()(np.array([-0.0], dtype)))[0]      # tanh(-0) = -0
    special = gc.Tanh()(np.array([np.inf, -np.inf, np.nan], dtype))
    assert special[0] == 1 and special[1] == -1 and np.isnan(special[2])


# --------------------------------------------------------------------------
# the vectorised exp, log, sigmoid, softplus, sin and cos (issue 12, item 8)
# against a long-double reference: within 2 ulp on a grid with the extremes
# (tiny, subnormal, near the overflow and underflow thresholds, +-0, +-inf,
# NaN, |x| beyond the trig reduction's range), special values exact
# --------------------------------------------------------------------------

def _ld_sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


# name: (the map, its long-double reference, its derivative's)
_LD_MAPS = {
    "Exp": (gc.Exp, np.exp, np.exp),
    "Log": (gc.Log, np.log, lambda x: 1 / x),
    "Sigmoid": (gc.Sigmoid, _ld_sigmoid, None),
    "Softplus": (gc.Softplus, lambda x: np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x))),
                 _ld_sigmoid),
    "Sin": (gc.Sin, np.sin, np.cos),
    "Cos": (gc.Cos, np.cos, lambda x: -np.sin(x)),
}


def _ew_grid(name, dtype, rng):
    fi = np.finfo(dtype)
    L = np.longdouble
    sub, tiny, big = float(fi.smallest_subnormal), float(fi.tiny), float(fi.max)
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, sub, -sub, tiny, -tiny, big, -big]
    mags = np.logspace(np.log10(sub), np.log10(big) - 1e-3, 4001, dtype=L)
    parts = [special, mags, -mags]
    if name in ("Exp", "Sigmoid", "Softplus"):
        lo, hi = float(np.log(L(sub))) - 5, float(np.log(L(big))) + 5
        parts.append(np.linspace(lo, hi, 50001))
        # either side of the overflow threshold, the end of the normal range,
        # the least subnormal and half of it
        for c in np.log(np.array([big, tiny, sub], dtype=L).tolist() + [L(sub) / 2]):
            w = L(1e-3) * abs(c)
            parts += [np.linspace(c - w, c + w, 1001), np.linspace(-c - w, -c + w, 1001)]
        parts.append(rng.uniform(lo, hi, 5000))
    elif name == "Log":
        k = np.arange(-500, 501)
        parts += [1 + k * (float(fi.eps) / 2), rng.uniform(0, 10, 5000),
                  np.ldexp(1.0, np.arange(fi.minexp - fi.nmant, fi.maxexp)),
                  np.exp(rng.uniform(np.log(sub), np.log(big), 5000)), -rng.uniform(0, 10, 20)]
    else:
        kk = np.arange(-20000, 20001)
        near = (kk * (np.pi / 2)).astype(dtype)       # nearest k pi/2: cancellation
        parts += [np.linspace(-10, 10, 20001), near, np.nextafter(near, np.inf),
                  rng.uniform(-1e6, 1e6, 5000),
                  [1e5, -1e5, 999999.9, 1e6, -1e6, 1e7, 1e15, 1e22, -1e22, 1e30, 3e38]]
    with np.errstate(over="ignore", invalid="ignore"):
        return np.concatenate([np.asarray(p, dtype=L).ravel() for p in parts]).astype(dtype)


def _ew_ulps(got, ref, dtype):
    """Per-element error in ulp of dtype, the spacing at least the least
    subnormal; where the reference rounds to a NaN, an infinity or a zero
    the result must be that value exactly (sign included): 0, else inf."""
    L = np.longdouble
    with np.errstate(over="ignore", invalid="ignore"):
        refd = ref.astype(dtype)
        special = ~np.isfinite(refd) | (refd == 0)
        exact = ((got == refd) & (np.signbit(got) == np.signbit(refd))) | (
            np.isnan(got) & np.isnan(refd))
        sp = np.spacing(np.abs(np.where(np.isfinite(refd), refd, np.finfo(dtype).max)))
        sp = np.maximum(sp.astype(L), L(np.finfo(dtype).smallest_subnormal))
        err = np.abs(got.astype(L) - ref) / sp
    err = np.where(special, np.where(exact, 0.0, np.inf), err.astype(np.float64))
    return np.where(np.isnan(err), np.inf, err)


@pytest.mark.skipif(np.finfo(np.longdouble).nmant < 60,
                    reason="needs an extended long double for the reference")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(_LD_MAPS))
def test_vectorised_maps_within_two_ulp_of_long_double(rng, name, dtype):
    make, ref_f, ref_d = _LD_MAPS[name]
    x = _ew_grid(name, dtype, rng)
    xl = x.astype(np.longdouble)
    with np.errstate(all="ignore"):
        y = make()(x)
        ref = ref_f(xl)
    assert y.dtype == dtype
    err = _ew_ulps(y, ref, dtype)
    bad = np.argsort(err)[-3:]
    assert float(err.max()) <= 2.0, (x[bad], y[bad], ref[bad].astype(dtype), err[bad])
    if ref_d is not None and name != "Log":
        # the derivatives that evaluate a map (Softplus' sigmoid, Sin's cos,
        # Cos' -sin): vjp(x, 1)
        with np.errstate(all="ignore"):
            d = compose(make()).vjp(x, np.ones_like(x))
            refd = ref_d(xl)
        err = _ew_ulps(d, refd, dtype)
        bad = np.argsort(err)[-3:]
        assert float(err.max()) <= 2.0, (x[bad], d[bad], refd[bad].astype(dtype), err[bad])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vectorised_maps_special_values(dtype):
    inf, nan = np.inf, np.nan
    x = np.array([0.0, -0.0, inf, -inf, nan], dtype)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(gc.Exp()(x), [1, 1, inf, 0, nan])
        np.testing.assert_array_equal(gc.Log()(np.array([0.0, -0.0, inf, -1.0, -inf, nan], dtype)),
                                      [-inf, -inf, inf, nan, nan, nan])
        np.testing.assert_array_equal(gc.Sigmoid()(x), [0.5, 0.5, 1, 0, nan])
        np.testing.assert_array_equal(gc.Softplus()(x), [np.log(2.0).astype(dtype)] * 2
                                      + [inf, 0, nan])
        np.testing.assert_array_equal(gc.Sin()(x), [0, 0, nan, nan, nan])
        np.testing.assert_array_equal(gc.Cos()(x), [1, 1, nan, nan, nan])
        assert np.signbit(gc.Sin()(x)[1]) and not np.signbit(gc.Sin()(x)[0])
        # exp never gives -0 (underflow to +0), its derivative neither
        under = np.array([-746.0, -1000.0, -104.0, -1e30], dtype)
        assert not np.signbit(gc.Exp()(under)).any()
        assert not np.signbit(gc.Sigmoid()(under)).any()
        big = np.finfo(dtype).max
        assert gc.Exp()(np.array([big], dtype))[0] == inf
        assert gc.Softplus()(np.array([big], dtype))[0] == big
        assert gc.Sigmoid()(np.array([-big], dtype))[0] == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(_LD_MAPS))
def test_vectorised_maps_independent_of_position(rng, name, dtype):
    """An element's result does not depend on where it sits (vector body,
    scalar remainder, a trig chunk with or without elements beyond the
    reduction's range, chunk boundaries) nor on the batch shape."""
    make = _LD_MAPS[name][0]
    n = 1031                                     # > 4 trig chunks, odd remainder
    lo, hi = (0.01, 50) if name == "Log" else (-50, 50)
    x = rng.uniform(lo, hi, n).astype(dtype)
    if name in ("Sin", "Cos"):
        x[[3, 255, 256, 700]] = np.array([1e7, -3e9, 2e20, np.inf], dtype)
    whole = make()(x)
    single = np.concatenate([make()(x[i:i + 1]) for i in range(n)])
    assert np.array_equal(whole, single, equal_nan=True)
    rolled = make()(np.roll(x, 5))
    assert np.array_equal(np.roll(whole, 5), rolled, equal_nan=True)
    X = x[:1030].reshape(10, 103)
    assert np.array_equal(make()(X).ravel(), whole[:1030], equal_nan=True)
    g = np.ones_like(x)
    dv = compose(make()).vjp(x, g)
    ds = np.concatenate([compose(make()).vjp(x[i:i + 1], g[:1]) for i in range(0, n, 97)])
    assert np.array_equal(dv[::97], ds, equal_nan=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vectorised_maps_against_mpmath(dtype):
    """Spot checks at the extremes against mpmath at 60 digits (the long
    double reference checked independently): overflow and underflow edges,
    subnormal results, sin and cos near multiples of pi/2 and far out."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    fi = np.finfo(dtype)
    lmax = float(np.log(np.longdouble(fi.max)))
    lsub = float(np.log(np.longdouble(fi.smallest_subnormal)))
    pts = {
        "Exp": [lmax * (1 - 1e-7), lmax * 0.999, lsub + 0.3, lsub * 0.99, 1e-30, -1e-30, 0.5],
        "Log": [float(fi.smallest_subnormal) * 3, float(fi.tiny), 1 + float(fi.eps), 1 - float(fi.eps) / 2,
                float(fi.max), 0.75],
        "Sigmoid": [-lmax * 0.99, lsub * 0.99, -30.0, -1e-20, 1e-20, 30.0],
        "Softplus": [lsub * 0.99, -40.0, -1e-20, 0.3, 40.0, lmax],
        "Sin": [np.pi, 2 * np.pi, 355.0, 1e5 * np.pi, 1e5, 999999.0, 1e6, 1e22, 1e30],
        "Cos": [np.pi / 2, 3 * np.pi / 2, 355.0 / 2, 1e5, 999999.0, 1e6, 1e22, 1e30],
    }
    fns = {"Exp": mpmath.exp, "Log": mpmath.log, "Sin": mpmath.sin, "Cos": mpmath.cos,
           "Sigmoid": lambda v: 1 / (1 + mpmath.exp(-v)),
           "Softplus": lambda v: mpmath.log1p(mpmath.exp(v))}
    for name, xs in pts.items():
        x = np.array(xs, dtype)
        y = _LD_MAPS[name][0]()(x)
        for xi, yi in zip(x, y):
            ref = fns[name](mpmath.mpf(float(xi)))
            r = dtype(float(ref))
            ulp = max(float(np.spacing(abs(r))), float(fi.smallest_subnormal))
            err = abs(mpmath.mpf(float(yi)) - ref) / ulp
            assert err <= 2, (name, xi, yi, ref, float(err))


# --------------------------------------------------------------------------
# the softmax family with shifted logits (issue 12, item 2): within 4 ulp of
# a long-double reference for common offsets up to 1e6, NumPy/SciPy side by
# side; infinite logits give SciPy's values
# --------------------------------------------------------------------------

def _ld_softmax_parts(x):
    """Long-double reference rows of the shifted forms: softmax, log-softmax,
    logsumexp, and per label c log S - (x_c - m) (the cross-entropy)."""
    xl = x.astype(np.longdouble)
    m = xl.max(axis=1, keepdims=True)
    e = np.exp(xl - m)
    S = e.sum(axis=1, keepdims=True)
    return xl, m, e / S, (xl - m) - np.log(S), (m + np.log(S))[:, 0], np.log(S)[:, 0]


def _ulps(got, ref, dtype):
    sp = np.maximum(np.spacing(np.abs(ref).astype(dtype)).astype(np.longdouble),
                    np.finfo(dtype).smallest_subnormal)
    return float(np.max(np.abs(np.asarray(got).astype(np.longdouble) - ref) / sp))


@pytest.mark.skipif(np.finfo(np.longdouble).nmant < 60,
                    reason="needs an extended long double for the reference")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0.0, 1e3, 1e5, 1e6])
@pytest.mark.parametrize("n", [7, 1000])
def test_softmax_family_shifted_logits_ulp(rng, dtype, offset, n):
    B = 24
    x = (rng.standard_normal((B, n)) * 3 + offset).astype(dtype)
    labels = rng.integers(0, n, B)
    labels[:4] = np.argmax(x[:4], axis=1)       # the dominant class: 1 - s_c small
    rows = np.arange(B)
    xl, m, sm, ls, lse, logS = _ld_softmax_parts(x)
    ce = logS - (xl[rows, labels] - m[:, 0])
    gce = sm.copy()
    gce[rows, labels] -= 1
    assert _ulps(compose(Softmax())(x), sm, dtype) <= 4
    assert _ulps(compose(LogSoftmax())(x), ls, dtype) <= 4
    v, g = CrossEntropy(labels).value_and_grad(x)
    assert _ulps(v.astype(dtype), ce, dtype) <= 4
    assert _ulps(g, gce, dtype) <= 4
    v, g = LogSumExp().value_and_grad(x)
    assert _ulps(v.astype(dtype), lse, dtype) <= 4
    assert _ulps(g, sm, dtype) <= 4
    # through a composition's compiled pass as well (the loss after a map)
    f = compose(Scale(1.0), loss=CrossEntropy(labels))
    v2, g2 = f.value_and_grad(x, reduction="none")
    assert _ulps(v2.astype(dtype), ce, dtype) <= 4 and _ulps(g2, gce, dtype) <= 4
    # the log-softmax vjp from its (accurate) output: within a few ulp of
    # g - softmax * sum(g) in long double, scaled by the terms' size
    G = rng.standard_normal((B, n)).astype(dtype)
    vj = compose(LogSoftmax()).vjp(x, G)
    ref = G.astype(np.longdouble) - sm * G.astype(np.longdouble).sum(axis=1, keepdims=True)
    scale = np.abs(G).astype(np.longdouble) + sm * np.abs(G).sum(axis=1, keepdims=True)
    assert float(np.max(np.abs(vj - ref) / scale)) <= 8 * np.finfo(dtype).eps * (
        1 + np.abs(ls).max())


def _same_as(got, want, dtype):
    """NaN where want is, the same infinities, the finite values within
    4 ulp."""
    got, want = np.asarray(got), np.asarray(want)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    fin = np.isfinite(want)
    np.testing.assert_array_equal(got[~fin & ~np.isnan(want)], want[~fin & ~np.isnan(want)])
    np.testing.assert_allclose(got[fin], want[fin], rtol=4 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_family_infinite_logits_as_scipy(dtype):
    """+-inf and NaN logits give what scipy.special gives."""
    special = pytest.importorskip("scipy.special")
    rows = np.array([[np.inf, 1.0, 2.0], [np.inf, np.inf, 1.0], [-np.inf, 1.0, 2.0],
                     [-np.inf, -np.inf, -np.inf], [np.nan, 1.0, 2.0],
                     [np.inf, -np.inf, 0.0]], dtype)
    with np.errstate(all="ignore"):
        sm = special.softmax(rows, axis=1)
        ls = special.log_softmax(rows, axis=1)
        lse = special.logsumexp(rows, axis=1)
        ce = lse - rows[:, 1]
        gs = sm.copy()
        gs[:, 1] -= 1
    _same_as(compose(Softmax())(rows), sm, dtype)
    _same_as(compose(LogSoftmax())(rows), ls, dtype)
    v, g = LogSumExp().value_and_grad(rows)
    _same_as(v, lse, dtype)
    _same_as(g, sm, dtype)
    v, g = CrossEntropy(np.ones(len(rows), np.int64)).value_and_grad(rows)
    _same_as(v, ce, dtype)
    _same_as(g, gs, dtype)


# --------------------------------------------------------------------------
# module layout: maps, losses and compositions in their own modules, every
# name still importable from gradchain.maps
# --------------------------------------------------------------------------

MOVED_TO = {
    "gradchain.losses": ["Loss", "SquaredError", "MeanSquaredError", "CrossEntropy",
                         "LogSumExp", "Dot"],
    "gradchain.composition": ["Composition", "compose", "check_grad"],
}


def test_moved_names_still_importable_from_maps():
    import importlib
    import gradchain.maps as maps
    for home, names in MOVED_TO.items():
        mod = importlib.import_module(home)
        for name in names:
            assert getattr(maps, name) is getattr(mod, name) is getattr(gc, name)
            assert name in maps.__all__ and name in dir(maps)
    from gradchain.maps import Composition, compose      # the spelling users have
    assert Composition is gc.Composition and compose is gc.compose
    ns = {}
    exec("from gradchain.maps import *", ns)
    for name in maps.__all__:
        assert ns[name] is getattr(gc, name)
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchMap'"):
        maps.NoSuchMap
    assert not hasattr(maps, "NoSuchMap")


@pytest.mark.parametrize("first", [
    "import gradchain.composition", "import gradchain.losses", "import gradchain.maps",
    "from gradchain.maps import Composition", "from gradchain.maps import check_grad",
    "from gradchain.composition import compose", "from gradchain.losses import Dot",
])
def test_any_import_order(first):
    # a fresh interpreter whose first import is `first`: no circular-import
    # error whichever module comes first, and one class per name
    r = run_isolated(f"""
        {first}
        import gradchain, gradchain.maps, gradchain.losses, gradchain.composition
        assert gradchain.maps.Composition is gradchain.composition.Composition
        assert gradchain.maps.Dot is gradchain.losses.Dot is gradchain.Dot
        assert gradchain.Composition.__module__ == "gradchain.composition"
        assert gradchain.Dot.__module__ == "gradchain.losses"
        assert gradchain.Tanh.__module__ == "gradchain.maps"
        print("ok")
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


# --------------------------------------------------------------------------
# a built-in map evaluated alone: a one-op compiled plan and its own
# Jacobian, never a Composition
# --------------------------------------------------------------------------

def _builtin_cases(rng, dtype):
    W = (rng.standard_normal((3, 5)) / 2).astype(dtype)
    b = vec(rng, 3, dtype)
    cases = [(name, ELEMENTWISE[name][0]()) for name in ELEMENTWISE]
    return cases + [("Affine", Affine(W, b)), ("Affine-nobias", Affine(W)),
                    ("Softmax", Softmax()), ("LogSoftmax", LogSoftmax())]


@pytest.fixture
def no_composition(monkeypatch):
    """Composition made unbuildable: what runs under it builds none."""
    import gradchain.composition

    def refuse(self, *args, **kwargs):
        raise AssertionError("a Composition was built")
    monkeypatch.setattr(gradchain.composition.Composition, "__init__", refuse)


@pytest.mark.parametrize("dtype", DTYPES)
def test_builtin_alone_matches_a_one_map_composition(rng, dtype):
    for name, m in _builtin_cases(rng, dtype):
        n = m.in_dim or 5
        f = compose(m)
        for shape in [(n,), (4, n), (0, n), (1, n)]:
            x = sample_ew(rng, name, shape, dtype) if name in ELEMENTWISE else \
                vec(rng, shape, dtype)
            y = m(x)
            assert y.dtype == dtype and np.array_equal(y, f(x)), name
        x = sample_ew(rng, name, (n,), dtype) if name in ELEMENTWISE else \
            vec(rng, n, dtype)
        J = m.jacobian(x)
        ref = f.chain(x).jacobians[0]
        assert type(J) is type(ref), name
        if name.startswith("Affine"):
            assert J is m.W                     # read in place
        else:
            assert isinstance(J, gc.DiagonalPlusRankOne if "Softmax" in name
                              else gc.Diagonal)
            assert J.dtype == dtype
            for attr in ("diagonal", "u", "v", "c"):
                if hasattr(ref, attr):
                    assert np.array_equal(getattr(J, attr), getattr(ref, attr),
                                          equal_nan=True), (name, attr)
        dense = f64(J if isinstance(J, np.ndarray) else J.todense())
        assert_near(f.jacobian(x), dense, dtype, np.abs(dense) + 1, factor=4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_builtin_alone_builds_no_composition(rng, dtype, no_composition):
    for name, m in _builtin_cases(rng, dtype):
        n = m.in_dim or 5
        x = sample_ew(rng, name, (2, n), dtype) if name in ELEMENTWISE else \
            vec(rng, (2, n), dtype)
        assert m(x).shape == (2, m.out_dim or n)
        assert m(x[0]).shape == (m.out_dim or n,)
        assert m.jacobian(x[0]).shape == (m.out_dim or n, n)


def test_builtin_alone_dtype_rule_and_errors(rng):
    W32 = np.ones((2, 3), np.float32)
    a = Affine(W32)
    assert a(np.ones(3, np.float32)).dtype == F32
    assert a(np.ones(3)).dtype == F64              # float32 W, float64 x
    J = a.jacobian(np.ones(3))
    assert J.dtype == F64 and np.array_equal(J, W32)
    assert a.jacobian(np.ones(3, np.float32)) is W32
    assert gc.Tanh()(np.ones(2, np.float16)).dtype == F32
    assert gc.Tanh()(np.array([1, 2])).dtype == F64
    assert gc.Tanh().jacobian(np.array([1, 2])).dtype == F64
    assert gc.Softmax().jacobian(np.ones(3, np.float32)).dtype == F32
    with pytest.raises(ValueError, match=re.escape(
            "x has shape (4,) but maps[0] (Affine(3 -> 2)) takes 3 inputs")):
        a(np.ones(4))
    with pytest.raises(ValueError, match=re.escape(
            "x has shape (4,) but maps[0] (Affine(3 -> 2)) takes 3 inputs")):
        a.jacobian(np.ones(4))
    with pytest.raises(ValueError, match=re.escape(
            "x must be 1-D (n_0,) or 2-D (batch, n_0), got shape (2, 2, 2)")):
        gc.Tanh()(np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match=re.escape(
            "chain takes a single x (n_0,), got shape (2, 3)")):
        gc.Tanh().jacobian(np.ones((2, 3)))
    with pytest.raises(TypeError, match="x has complex dtype"):
        gc.Sigmoid()(np.ones(3, complex))
    with pytest.raises(TypeError, match="x has complex dtype"):
        gc.Softmax().jacobian(np.ones(3, complex))
    # zero sizes
    assert gc.Tanh()(np.zeros(0)).shape == (0,)
    assert gc.Tanh().jacobian(np.zeros(0)).shape == (0, 0)
    assert Affine(np.ones((0, 3)))(np.ones((2, 3))).shape == (2, 0)


# --------------------------------------------------------------------------
# a user Map(jacobian=) on a batch: one jacobian call per row, the rows
# stacked and applied in one compiled per-sample call
# --------------------------------------------------------------------------

def batched_user_setup(rng, dtype, form="array", bad_row=None, calls=None):
    """compose(Affine(W1, b1), U, Tanh(), Affine(W2)), U(z) = A sin(z) from
    R^4 to R^3 given by jacobian= only (A diag(cos z)); ``form`` is what
    jacobian returns ("array", "Dense", "Diagonal-on-odd-rows" needs a
    square U, so it uses A = I), and row ``bad_row`` returns a wrong shape."""
    square = form == "mixed"
    m = 4 if square else 3
    A = np.eye(4) if square else rng.standard_normal((3, 4)) / 2
    W1 = (rng.standard_normal((4, 3)) / 2).astype(dtype)
    b1 = vec(rng, 4, dtype, -0.5, 0.5)
    W2 = (rng.standard_normal((2, m)) / 2).astype(dtype)
    seen = [] if calls is None else calls

    def fn(z):
        return np.sin(z) @ A.T.astype(z.dtype)

    def jac(z):
        r = len(seen)
        seen.append(r)
        J = A * np.cos(f64(z))[None, :]
        if r == bad_row:
            return J[:, :-1]
        if form == "Dense":
            return gc.Dense(J)
        if form == "mixed" and r % 2:
            return gc.Diagonal(np.cos(f64(z)))
        return J
    maps = [Affine(W1, b1), Map(fn, jacobian=jac), gc.Tanh(), Affine(W2)]
    return maps, (W1, b1, A, W2)


def batched_user_reference(params, X):
    """Per row, in float64: y, and J = dy/dx (list of (2, 3) arrays)."""
    W1, b1, A, W2 = [f64(p) for p in params]
    ys, Js = [], []
    for x in np.atleast_2d(f64(X)):
        z1 = W1 @ x + b1
        z2 = A @ np.sin(z1)
        z3 = np.tanh(z2)
        ys.append(W2 @ z3)
        Js.append(W2 @ np.diag(1 - z3 ** 2) @ A @ np.diag(np.cos(z1)) @ W1)
    return np.array(ys).reshape(-1, 2), Js


@pytest.mark.parametrize("form", ["array", "Dense", "mixed"])
@pytest.mark.parametrize("B", [0, 1, 5])
@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_user_jacobian_against_per_row_reference(rng, dtype, B, form):
    calls = []
    maps, params = batched_user_setup(rng, dtype, form, calls=calls)
    t = vec(rng, 2, dtype)
    f = compose(*maps, loss=SquaredError(t))
    nl = compose(*maps)
    X = vec(rng, (B, 3), dtype)
    G = vec(rng, (B, 2), dtype)
    V = vec(rng, (B, 3), dtype)
    y, Js = batched_user_reference(params, X)
    ref_vjp = np.array([g @ J for g, J in zip(f64(G), Js)]).reshape(B, 3)
    ref_jvp = np.array([J @ v for v, J in zip(f64(V), Js)]).reshape(B, 2)
    ref_grad = np.array([(yb - f64(t)) @ J for yb, J in zip(y, Js)]).reshape(B, 3)
    scale = lambda r: np.abs(r) + np.max(np.abs(r), initial=0.0) + 1
    res = nl.vjp(X, G)
    assert_near(res, ref_vjp, dtype, scale(ref_vjp), factor=16)
    assert len(calls) == B                      # one jacobian call per row
    assert_near(nl.jvp(X, V), ref_jvp, dtype, scale(ref_jvp), factor=16)
    for reduction in ("sum", "mean", "none"):
        L, g = f.value_and_grad(X, reduction=reduction)
        div = max(B, 1) if reduction == "mean" else 1
        assert_near(g, ref_grad / div, dtype, scale(ref_grad) / div, factor=16)
    vals = f.value(X, "none")
    ref_vals = 0.5 * np.sum((y - f64(t)) ** 2, axis=1)
    assert_losses_near(vals, ref_vals, dtype, ref_vals + 1, factor=16)
    # each row as a single x gives the same row (up to rounding)
    for b in range(B):
        assert_near(nl.vjp(X[b], G[b]), ref_vjp[b], dtype, scale(ref_vjp[b]), factor=16)


@pytest.mark.parametrize("form", ["array", "Dense", "mixed"])
def test_batched_user_jacobian_is_one_per_sample_call(rng, monkeypatch, form):
    import gradchain.maps
    built = []
    real = gradchain.maps.Chain

    def spy(links):
        built.append(tuple(L.shape if isinstance(L, np.ndarray) else type(L).__name__
                           for L in links))
        return real(links)
    monkeypatch.setattr(gradchain.maps, "Chain", spy)
    maps, _ = batched_user_setup(rng, np.float64, form)
    X = vec(rng, (5, 3), np.float64)
    compose(*maps).vjp(X, np.ones((5, 2)))
    if form == "mixed":
        # rows 1 and 3 give Diagonal operators: that block goes row by row
        assert built == [((4, 4),), ("Diagonal",), ((4, 4),), ("Diagonal",), ((4, 4),)]
    else:
        assert built == [((5, 3, 4),)]          # one stack, one compiled call
    if form == "mixed":
        return
    # a stack over the element budget is applied a block of rows at a time,
    # with the same result
    whole = compose(*maps).vjp(X, np.ones((5, 2)))
    built.clear()
    monkeypatch.setattr(gradchain.maps, "_STACK_ELEMS", 2 * 3 * 4)
    blocks = compose(*maps).vjp(X, np.ones((5, 2)))
    assert built == [((2, 3, 4),), ((2, 3, 4),), ((1, 3, 4),)]
    np.testing.assert_allclose(blocks, whole, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["vjp", "jvp", "value_and_grad"])
def test_batched_user_jacobian_wrong_shape_on_one_row(rng, dtype, method):
    maps, _ = batched_user_setup(rng, dtype, bad_row=3)
    f = compose(*maps, loss=SquaredError(np.zeros(2, dtype)))
    X = vec(rng, (5, 3), dtype)
    call = {"vjp": lambda: f.vjp(X, np.ones((5, 2), dtype)),
            "jvp": lambda: f.jvp(X, np.ones((5, 3), dtype)),
            "value_and_grad": lambda: f.value_and_grad(X)}[method]
    with pytest.raises(ValueError, match=re.escape(
            "maps[1].jacobian returned shape (3, 3), expected (3, 4)")):
        call()
    # the same map on rows 0-2 only is fine
    maps, _ = batched_user_setup(rng, dtype, bad_row=3)
    assert compose(*maps).vjp(X[:3], np.ones((3, 2), dtype)).shape == (3, 3)
