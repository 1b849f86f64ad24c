"""gradchain.composition: how a composition runs its maps, against references.

The numeric checks in test_maps.py cover compositions end to end (values,
gradients, vjp/jvp/jacobian of every built-in map and loss); this module
checks what the composition itself decides: that ``jacobian`` is the
accumulated product of ``chain`` (and falls back to forward-mode columns
only where a map has no Jacobian for forward mode), and the record its
value_and_grad fast path keeps.  References are dense NumPy products in
float64.
"""
import numpy as np
import pytest

import gradchain as gc
from gradchain import Affine, Map, SquaredError, compose

from conftest import DTYPES

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
RTOL = {F32: 2e-5, F64: 1e-12}


def f64(a):
    return np.array(a, dtype=np.float64)


def assert_close(res, ref, dtype, scale):
    """res in exactly dtype, within the dtype's tolerance of ref on the
    rounding scale (normwise: the largest |entry| of scale, and 1)."""
    dtype = np.dtype(dtype)
    assert isinstance(res, np.ndarray) and res.dtype == dtype, (type(res), res.dtype)
    ref = f64(ref)
    assert res.shape == ref.shape, (res.shape, ref.shape)
    s = max(1.0, float(np.max(np.abs(f64(scale)), initial=0.0)))
    err = float(np.max(np.abs(f64(res) - ref), initial=0.0))
    assert err <= 50 * RTOL[dtype] * s, (err, s)


def mlp(rng, n, dtype, user=None):
    """Affine-Tanh-[user]-Affine-Softmax and its dense Jacobian at x, by
    NumPy in float64 (the product of the per-map Jacobians)."""
    W1 = (rng.standard_normal((n, n)) / np.sqrt(n)).astype(dtype)
    b1 = rng.uniform(-0.5, 0.5, n).astype(dtype)
    W2 = (rng.standard_normal((3, n)) / np.sqrt(n)).astype(dtype)
    maps = [Affine(W1, b1), gc.Tanh()] + ([user] if user is not None else []) + [
        Affine(W2), gc.Softmax()]
    x = rng.uniform(-1, 1, n).astype(dtype)
    h = np.tanh(f64(W1) @ f64(x) + f64(b1))
    J = np.diag(1 - h * h) @ f64(W1)
    if user is not None:
        J = np.diag(np.cos(h)) @ J
        h = np.sin(h)
    z = f64(W2) @ h
    s = np.exp(z - z.max())
    s /= s.sum()
    J = (np.diag(s) - np.outer(s, s)) @ f64(W2) @ J
    return maps, x, J


def sin_map(calls, **which):
    """sin given by the user through the callbacks named in ``which``."""
    def jac(x):
        calls.append("jacobian")
        return np.diag(np.cos(x))

    def jvp(x, v):
        calls.append("jvp")
        return np.cos(x) * v

    def vjp(x, g):
        calls.append("vjp")
        return np.cos(x) * g
    kw = {k: f for k, f in (("jacobian", jac), ("jvp", jvp), ("vjp", vjp)) if which.get(k)}
    return Map(np.sin, **kw)


# --------------------------------------------------------------------------
# jacobian: the accumulated chain, or forward-mode columns
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 4, 17])
def test_jacobian_is_the_accumulated_chain(rng, n, dtype):
    maps, x, J = mlp(rng, n, dtype)
    f = compose(*maps)
    res = f.jacobian(x)
    assert_close(res, J, dtype, J)
    # literally the chain's accumulation (the same bits)
    assert np.array_equal(res, f.chain(x).jacobian())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", ["array", "operator"])
def test_jacobian_with_a_user_jacobian_calls_it_once(rng, dtype, form):
    calls = []

    def jac(x):
        calls.append("jacobian")
        c = np.cos(x)
        return gc.Diagonal(c) if form == "operator" else np.diag(c)
    n = 6
    maps, x, J = mlp(rng, n, dtype, user=Map(np.sin, jacobian=jac))
    res = compose(*maps).jacobian(x)
    assert_close(res, J, dtype, J)
    assert calls == ["jacobian"]                # once, not once per column


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("which", [dict(jvp=True, vjp=True), dict(jvp=True),
                                   dict(jacobian=True, jvp=True)],
                         ids=["vjp+jvp", "jvp", "jacobian+jvp"])
def test_jacobian_matrix_free_fallback(rng, dtype, which):
    # a user map without a Jacobian for forward mode -- matrix-free, or its
    # jvp= taking precedence over jacobian= -- is run by forward-mode
    # columns J e_j, one per input
    calls = []
    n = 5
    maps, x, J = mlp(rng, n, dtype, user=sin_map(calls, **which))
    res = compose(*maps).jacobian(x)
    assert_close(res, J, dtype, J)
    assert calls == ["jvp"] * n


def test_jacobian_vjp_only_map_has_no_forward_mode(rng):
    f = compose(gc.Tanh(), sin_map([], vjp=True))
    with pytest.raises(TypeError, match="no jvp= or jacobian= for forward mode"):
        f.jacobian(np.ones(3))


@pytest.mark.parametrize("dtype", DTYPES)
def test_jacobian_edges(dtype):
    # no maps: the identity, in the composition's dtype (a loss's target
    # takes part in it)
    for x in (np.ones(3, dtype), np.ones(0, dtype)):
        J = compose().jacobian(x)
        assert J.dtype == dtype and np.array_equal(J, np.eye(x.shape[0]))
    J = compose(loss=SquaredError(np.zeros(2))).jacobian(np.ones(2, dtype))
    assert J.dtype == F64 and np.array_equal(J, np.eye(2))
    # n_0 = 0, built in and user map
    J = compose(Affine(np.ones((3, 0), dtype)), gc.Tanh()).jacobian(np.zeros(0, dtype))
    assert J.shape == (3, 0) and J.dtype == dtype
    U = Map(lambda x: np.concatenate([x, np.ones(x.shape[:-1] + (1,))], axis=-1),
            jacobian=lambda x: np.eye(x.shape[0] + 1, x.shape[0]))
    J = compose(U, gc.Tanh()).jacobian(np.zeros(0, dtype))
    assert J.shape == (1, 0) and J.dtype == dtype
    V = Map(lambda x: np.concatenate([x, np.ones(x.shape[:-1] + (1,))], axis=-1),
            jvp=lambda x, v: np.concatenate([v, np.zeros(v.shape[:-1] + (1,))], axis=-1))
    J = compose(V, gc.Tanh()).jacobian(np.zeros(0, dtype))
    assert J.shape == (1, 0) and J.dtype == dtype
    # through a zero-width intermediate: zeros
    f = compose(Affine(np.ones((0, 3), dtype)), Affine(np.ones((2, 0), dtype), np.ones(2, dtype)))
    J = f.jacobian(np.ones(3, dtype))
    assert J.dtype == dtype and np.array_equal(J, np.zeros((2, 3)))
    # zero outputs
    J = compose(gc.Tanh(), Affine(np.ones((0, 4), dtype))).jacobian(np.ones(4, dtype))
    assert J.shape == (0, 4) and J.dtype == dtype
    # a user Jacobian that is an Identity (no dtype of its own): the result
    # is still in the composition's dtype
    I3 = Map(lambda x: 2 * x, jacobian=lambda x: gc.Identity(3, scale=2.0))
    J = compose(I3).jacobian(np.ones(3, dtype))
    assert J.dtype == dtype and np.array_equal(J, 2 * np.eye(3))
    J = compose(I3, I3).jacobian(np.ones(3, dtype))
    assert J.dtype == dtype and np.array_equal(J, 4 * np.eye(3))


def _softmax(z):
    s = np.exp(z - z.max())
    return s / s.sum()


# each built-in map's Jacobian at x, in closed form (float64)
BUILTIN_JACOBIANS = {
    "Tanh": (gc.Tanh, lambda x: np.diag(1 - np.tanh(x) ** 2)),
    "Sigmoid": (gc.Sigmoid, lambda x: np.diag(np.exp(-x) / (1 + np.exp(-x)) ** 2)),
    "ReLU": (gc.ReLU, lambda x: np.diag((x > 0).astype(float))),
    "LeakyReLU": (lambda: gc.LeakyReLU(0.25),
                  lambda x: np.diag(np.where(x < 0, 0.25, 1.0))),
    "Softplus": (gc.Softplus, lambda x: np.diag(1 / (1 + np.exp(-x)))),
    "Exp": (gc.Exp, lambda x: np.diag(np.exp(x))),
    "Log": (gc.Log, lambda x: np.diag(1 / x)),
    "Sin": (gc.Sin, lambda x: np.diag(np.cos(x))),
    "Cos": (gc.Cos, lambda x: np.diag(-np.sin(x))),
    "Square": (gc.Square, lambda x: np.diag(2 * x)),
    "Scale": (lambda: gc.Scale(-1.5), lambda x: -1.5 * np.eye(x.shape[0])),
    "Softmax": (gc.Softmax, lambda x: np.diag(_softmax(x)) - np.outer(_softmax(x), _softmax(x))),
    "LogSoftmax": (gc.LogSoftmax,
                   lambda x: np.eye(x.shape[0]) - np.outer(np.ones(x.shape[0]), _softmax(x))),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(BUILTIN_JACOBIANS))
def test_builtin_jacobians_closed_form(rng, name, dtype):
    # every op's Jacobian, alone and between two affine maps: the compiled
    # jacobian (forward pass, the ops' Jacobians as links, their product in
    # one call) against the closed form; Map.jacobian and Composition.chain
    # read the same links (the same bits)
    make, ref = BUILTIN_JACOBIANS[name]
    n = 7
    # positive x (Log), with exact zeros and negatives elsewhere (ReLU's
    # derivative is exactly 0 at 0 and 1 above: exact ones must survive)
    x = rng.uniform(0.2, 2.0, n) if name == "Log" else np.r_[0.0, -0.5, 1.0, rng.uniform(-2, 2, n - 3)]
    x = x.astype(dtype)
    xr = f64(x)
    J = ref(xr)
    res = compose(make()).jacobian(x)
    assert_close(res, J, dtype, J)
    op = make().jacobian(x)
    assert np.array_equal(np.asarray(op.todense()), res)
    assert np.array_equal(compose(make()).chain(x).jacobian(), res)
    W1 = rng.standard_normal((n, 5)).astype(dtype)
    W2 = rng.standard_normal((3, n)).astype(dtype)
    x5 = (rng.uniform(0.5, 1.0, 5) if name == "Log" else rng.uniform(-1, 1, 5)).astype(dtype)
    if name == "Log":
        W1 = np.abs(W1)
    f = compose(Affine(W1), make(), Affine(W2))
    J = f64(W2) @ ref(f64(W1) @ f64(x5)) @ f64(W1)
    res = f.jacobian(x5)
    assert_close(res, J, dtype, np.abs(f64(W2)) @ np.abs(ref(f64(W1) @ f64(x5))) @ np.abs(f64(W1)))
    assert np.array_equal(res, f.chain(x5).jacobian())


def test_jacobian_rejects_a_batch():
    f = compose(gc.Tanh())
    with pytest.raises(ValueError, match=r"jacobian takes a single x \(n_0,\), got shape \(2, 3\)"):
        f.jacobian(np.ones((2, 3)))


# --------------------------------------------------------------------------
# value_and_grad's fast path: a named record of what it skips
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5,), (3, 5)], ids=["single", "batch"])
def test_fast_path_record(rng, dtype, shape):
    from gradchain.composition import _FastPath
    f = compose(Affine(np.ones((4, 5), dtype)), gc.Tanh(),
                loss=SquaredError(np.zeros(4, dtype)))
    assert f._fast is None
    x = rng.uniform(-1, 1, shape).astype(dtype)
    first = f.value_and_grad(x)
    rec = f._fast
    assert isinstance(rec, _FastPath)
    assert rec.dtype == dtype and rec.shape == shape and rec.n_k == 4
    assert rec.single == (len(shape) == 1)
    assert rec.program is f._programs[np.dtype(dtype)][0]
    again = f.value_and_grad(x)                 # through the record
    assert f._fast is rec
    assert again[0] == first[0] and np.array_equal(again[1], first[1])
    # a user map: no single plan, no record
    g = compose(gc.Tanh(), Map(np.sin, vjp=lambda z, t: np.cos(z) * t),
                loss=SquaredError(np.zeros(5, dtype)))
    g.value_and_grad(x)
    assert g._fast is None
