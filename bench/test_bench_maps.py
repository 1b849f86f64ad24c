"""Maps and losses benchmarks (issue 3): value_and_grad of
compose(Affine, Tanh) x 4 with SquaredError, against the same computation by
hand in NumPy, PyTorch autograd and jax.jit(jax.value_and_grad); and
(issue 12, item 8: the vectorised sigmoid) the same with Sigmoid, n = 256.

Peers other than NumPy are optional (rows skip when absent).  gradchain's
test of each size also times it against every installed peer with `measure`
(rested alternating blocks and interleaved rounds, see conftest.py).
"""
import numpy as np
import pytest

import gradchain as gc
from conftest import measure, peer_calls

SIZES = [16, 64, 256]


def problem(n, B=None, seed=0):
    rng = np.random.default_rng(seed)
    Ws = [rng.standard_normal((n, n)) / np.sqrt(n) for _ in range(4)]
    bs = [0.1 * rng.standard_normal(n) for _ in range(4)]
    shape = (n,) if B is None else (B, n)
    x = rng.standard_normal(shape)
    t = rng.standard_normal(shape)
    return Ws, bs, x, t


def numpy_by_hand(Ws, bs, x, t, act="tanh"):
    """Forward with np.tanh(W @ h + b), backward with (g * (1 - h*h)) @ W;
    act="sigmoid": 1 / (1 + np.exp(-(W @ h + b))), (g * h * (1 - h)) @ W."""
    hs = [x]
    for W, b in zip(Ws, bs):
        z = hs[-1] @ W.T + b
        hs.append(np.tanh(z) if act == "tanh" else 1 / (1 + np.exp(-z)))
    g = hs[-1] - t
    L = 0.5 * float(np.sum(g * g))
    for W, h in zip(reversed(Ws), reversed(hs[1:])):
        g = (g * (1 - h * h) if act == "tanh" else g * h * (1 - h)) @ W
    return L, g


ACTS = {"tanh": "Tanh", "sigmoid": "Sigmoid"}


def gradchain_fn(Ws, bs, t, act="tanh"):
    maps = []
    for W, b in zip(Ws, bs):
        maps += [gc.Affine(W, b), getattr(gc, ACTS[act])()]
    f = gc.compose(*maps, loss=gc.SquaredError(t))
    return f.value_and_grad


def torch_fn(Ws, bs, t, act="tanh"):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    Wt = [torch.from_numpy(W) for W in Ws]
    bt = [torch.from_numpy(b) for b in bs]
    tt = torch.from_numpy(t)

    def f(x):
        xt = torch.from_numpy(x).requires_grad_(True)
        h = xt
        for W, b in zip(Wt, bt):
            h = getattr(torch, act)(h @ W.T + b)
        L = 0.5 * torch.sum((h - tt) ** 2)
        L.backward()
        return L.item(), xt.grad.numpy()

    return f


def jax_fn(jax, Ws, bs, t, act="tanh"):
    jnp = jax.numpy
    Wj = [jnp.asarray(W) for W in Ws]
    bj = [jnp.asarray(b) for b in bs]
    tj = jnp.asarray(t)

    def loss(x):
        h = x
        act_f = jnp.tanh if act == "tanh" else jax.nn.sigmoid
        for W, b in zip(Wj, bj):
            h = act_f(h @ W.T + b)
        return 0.5 * jnp.sum((h - tj) ** 2)

    vg = jax.jit(jax.value_and_grad(loss))

    def f(x):
        L, g = vg(x)
        g.block_until_ready()
        return L, g

    return f


def _peer_calls(Ws, bs, x, t, request, act="tanh"):
    """name -> zero-argument call, for every peer that is installed."""
    return peer_calls(request, lambda: numpy_by_hand(Ws, bs, x, t, act),
                      lambda: torch_fn(Ws, bs, t, act),
                      lambda jax: jax_fn(jax, Ws, bs, t, act), x)


def _bench(benchmark, impl, Ws, bs, x, t, request, act="tanh"):
    if impl == "gradchain":
        f = gradchain_fn(Ws, bs, t, act)
        measure(benchmark, "gradchain", {"gradchain": lambda: f(x),
                                         **_peer_calls(Ws, bs, x, t, request, act)})
    elif impl == "numpy":
        def f(x):
            return numpy_by_hand(Ws, bs, x, t, act)
    elif impl == "torch":
        f = torch_fn(Ws, bs, t, act)
    else:
        jax = request.getfixturevalue("jax_x64")
        f = jax_fn(jax, Ws, bs, t, act)
        x = jax.numpy.asarray(x)
    L, g = benchmark(f, x)
    Lr, gr = numpy_by_hand(Ws, bs, np.asarray(x), t, act)
    assert abs(float(L) - Lr) <= 1e-9 * max(1.0, abs(Lr))
    np.testing.assert_allclose(np.asarray(g), gr, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("impl", ["gradchain", "numpy", "torch", "jax"])
def test_mlp_value_and_grad(benchmark, impl, n, request):
    benchmark.group = f"compose(Affine, Tanh)x4 + SquaredError, value_and_grad, n={n}"
    Ws, bs, x, t = problem(n)
    _bench(benchmark, impl, Ws, bs, x, t, request)


@pytest.mark.parametrize("impl", ["gradchain", "numpy", "torch", "jax"])
def test_mlp_value_and_grad_batch(benchmark, impl, request):
    benchmark.group = ("compose(Affine, Tanh)x4 + SquaredError, value_and_grad, "
                       "batch B=256, n=64")
    Ws, bs, x, t = problem(64, B=256)
    _bench(benchmark, impl, Ws, bs, x, t, request)


@pytest.mark.parametrize("n", [256])
@pytest.mark.parametrize("impl", ["gradchain", "numpy", "torch", "jax"])
def test_mlp_sigmoid_value_and_grad(benchmark, impl, n, request):
    benchmark.group = f"compose(Affine, Sigmoid)x4 + SquaredError, value_and_grad, n={n}"
    Ws, bs, x, t = problem(n)
    _bench(benchmark, impl, Ws, bs, x, t, request, act="sigmoid")
