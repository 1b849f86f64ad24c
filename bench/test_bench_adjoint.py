"""Adjoint sensitivities (issue 11): parameter gradients of
compose(Affine, Tanh) x 4 with CrossEntropy against NumPy written by hand,
PyTorch autograd and jax.jit(jax.value_and_grad(argnums=(0, 1))); per-example
parameter gradients against NumPy (one einsum per layer) and
torch.func.vmap(grad); and Chain.vjp(g, intermediates=True) against the plain
Chain.vjp(g).

Peers other than NumPy are optional (rows skip when absent).  gradchain's
test of each group also times it against every installed peer with
`measure` (rested alternating blocks and interleaved rounds, conftest.py).
"""
import numpy as np
import pytest

import gradchain as gc
from conftest import measure, peer_calls


def problem(n, B=None, seed=0):
    rng = np.random.default_rng(seed)
    Ws = [rng.standard_normal((n, n)) / np.sqrt(n) for _ in range(4)]
    bs = [0.1 * rng.standard_normal(n) for _ in range(4)]
    x = rng.standard_normal((n,) if B is None else (B, n))
    labels = rng.integers(0, n, 1 if B is None else B)
    return Ws, bs, x, labels


def numpy_by_hand(Ws, bs, x, labels, per_example=False):
    """Forward h = tanh(h W^T + b); softmax cross-entropy (summed); backward
    G <- (G * (1 - h^2)), dW = G^T h_prev (per example: one einsum),
    db = sum G, G <- G W.  Returns (L, dx, [(dW, db)] per layer)."""
    single = x.ndim == 1
    X = x[None, :] if single else x
    hs = [X]
    for W, b in zip(Ws, bs):
        hs.append(np.tanh(hs[-1] @ W.T + b))
    z = hs[-1]
    zmax = z.max(axis=1, keepdims=True)
    e = np.exp(z - zmax)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(len(z))
    L = float(np.sum(np.log(s[:, 0]) + zmax[:, 0] - z[rows, labels]))
    G = e / s
    G[rows, labels] -= 1
    grads = []
    for W, h, hp in zip(reversed(Ws), reversed(hs[1:]), reversed(hs[:-1])):
        G = G * (1 - h * h)
        if per_example:
            grads.append((np.einsum("bi,bj->bij", G, hp), G))
        else:
            grads.append((G.T @ hp, G.sum(axis=0)))
        G = G @ W
    return L, (G[0] if single else G), grads[::-1]


def gradchain_fn(Ws, bs, labels, reduction="sum"):
    maps = []
    for W, b in zip(Ws, bs):
        maps += [gc.Affine(W, b), gc.Tanh()]
    f = gc.compose(*maps, loss=gc.CrossEntropy(labels if len(labels) > 1 else labels[0]))
    return lambda x: f.value_and_grad(x, reduction=reduction, wrt=("x", "params"))


def torch_fn(Ws, bs, labels):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    Wt = [torch.from_numpy(W.copy()).requires_grad_(True) for W in Ws]
    bt = [torch.from_numpy(b.copy()).requires_grad_(True) for b in bs]
    lt = torch.from_numpy(labels)

    def f(x):
        xt = torch.from_numpy(x).requires_grad_(True)
        h = xt if x.ndim == 2 else xt[None, :]
        for W, b in zip(Wt, bt):
            h = torch.tanh(h @ W.T + b)
        L = torch.nn.functional.cross_entropy(h, lt, reduction="sum")
        for p in Wt + bt:
            p.grad = None
        L.backward()
        return L.item(), xt.grad.numpy(), [(W.grad.numpy(), b.grad.numpy())
                                           for W, b in zip(Wt, bt)]

    return f


def torch_per_example_fn(Ws, bs, labels):
    torch = pytest.importorskip("torch")
    func = pytest.importorskip("torch.func")
    torch.set_num_threads(2)
    params = ([torch.from_numpy(W) for W in Ws], [torch.from_numpy(b) for b in bs])
    lt = torch.from_numpy(labels)

    def loss(params, x, y):
        h = x[None, :]
        for W, b in zip(*params):
            h = torch.tanh(h @ W.T + b)
        return torch.nn.functional.cross_entropy(h, y[None], reduction="sum")

    g = func.vmap(func.grad(loss), in_dims=(None, 0, 0))
    return lambda x: g(params, torch.from_numpy(x), lt)


def jax_fn(jax, Ws, bs, labels):
    jnp = jax.numpy
    Wj = [jnp.asarray(W) for W in Ws]
    bj = [jnp.asarray(b) for b in bs]
    lj = jnp.asarray(labels)

    def loss(x, params):
        h = x if x.ndim == 2 else x[None, :]
        for W, b in zip(*params):
            h = jnp.tanh(h @ W.T + b)
        lse = jax.nn.logsumexp(h, axis=1)
        return jnp.sum(lse - h[jnp.arange(h.shape[0]), lj])

    vg = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))

    def f(x):
        L, g = vg(x, (Wj, bj))
        jax.block_until_ready(g)
        return L, g

    return f


def _calls(Ws, bs, x, labels, request):
    """name -> zero-argument call, for every peer that is installed."""
    return peer_calls(request, lambda: numpy_by_hand(Ws, bs, x, labels),
                      lambda: torch_fn(Ws, bs, labels),
                      lambda jax: jax_fn(jax, Ws, bs, labels), x)


def _check(res, Ws, bs, x, labels):
    L, (gx, pg) = res
    Lr, gr, ref = numpy_by_hand(Ws, bs, x, labels)
    assert abs(L - Lr) <= 1e-10 * max(1.0, abs(Lr))
    np.testing.assert_allclose(gx, gr, rtol=1e-9, atol=1e-12)
    for (dW, db), (rW, rb) in zip(pg[0::2], ref):
        np.testing.assert_allclose(dW, rW, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(db, rb, rtol=1e-9, atol=1e-12)


def _run(benchmark, impl, Ws, bs, x, labels, request):
    if impl == "gradchain":
        f = gradchain_fn(Ws, bs, labels)
        measure(benchmark, "gradchain", {"gradchain": lambda: f(x),
                                         **_calls(Ws, bs, x, labels, request)})
        _check(benchmark(f, x), Ws, bs, x, labels)
        return
    if impl == "numpy":
        benchmark(numpy_by_hand, Ws, bs, x, labels)
    elif impl == "torch":
        benchmark(torch_fn(Ws, bs, labels), x)
    else:
        jax = request.getfixturevalue("jax_x64")
        benchmark(jax_fn(jax, Ws, bs, labels), jax.numpy.asarray(x))


@pytest.mark.parametrize("impl", ["gradchain", "numpy", "torch", "jax"])
def test_mlp_params_batch(benchmark, impl, request):
    benchmark.group = ("compose(Affine, Tanh)x4 + CrossEntropy, value_and_grad "
                       "wrt=(x, params), batch B=256, n=64")
    Ws, bs, x, labels = problem(64, B=256)
    _run(benchmark, impl, Ws, bs, x, labels, request)


@pytest.mark.parametrize("impl", ["gradchain", "numpy", "torch", "jax"])
def test_mlp_params_single(benchmark, impl, request):
    benchmark.group = ("compose(Affine, Tanh)x4 + CrossEntropy, value_and_grad "
                       "wrt=(x, params), one sample, n=16")
    Ws, bs, x, labels = problem(16)
    _run(benchmark, impl, Ws, bs, x, labels, request)


@pytest.mark.parametrize("impl", ["gradchain", "numpy", "torch vmap"])
def test_per_example_grads(benchmark, impl, request):
    """reduction="none": per-example parameter gradients (B, *W.shape)."""
    benchmark.group = ("per-example parameter gradients, compose(Affine, Tanh)x4 "
                       "+ CrossEntropy, B=256, n=64")
    Ws, bs, x, labels = problem(64, B=256)
    np_fn = lambda: numpy_by_hand(Ws, bs, x, labels, per_example=True)  # noqa: E731
    if impl == "gradchain":
        f = gradchain_fn(Ws, bs, labels, reduction="none")
        calls = {"gradchain": lambda: f(x), "numpy": np_fn}
        try:
            g_t = torch_per_example_fn(Ws, bs, labels)
            calls["torch vmap"] = lambda: g_t(x)
        except pytest.skip.Exception:
            pass
        measure(benchmark, "gradchain", calls)
        L, (gx, pg) = benchmark(f, x)
        _, _, ref = np_fn()
        for (dW, db), (rW, rb) in zip(pg[0::2], ref):
            np.testing.assert_allclose(dW, rW, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(db, rb, rtol=1e-9, atol=1e-12)
    elif impl == "numpy":
        benchmark(np_fn)
    else:
        g_t = torch_per_example_fn(Ws, bs, labels)
        benchmark(g_t, x)


@pytest.mark.parametrize("impl", ["gradchain", "plain vjp"])
def test_vjp_intermediates(benchmark, impl):
    """Chain.vjp(g, intermediates=True) (every cotangent, one allocation)
    against Chain.vjp(g), k = 64 dense 16 x 16 links."""
    benchmark.group = "Chain.vjp(g, intermediates=True), k=64 n=16"
    rng = np.random.default_rng(1)
    chain = gc.Chain([rng.standard_normal((16, 16)) / 4 for _ in range(64)])
    g = rng.standard_normal(16)
    if impl == "gradchain":
        measure(benchmark, "gradchain", {
            "gradchain": lambda: chain.vjp(g, intermediates=True),
            "plain vjp": lambda: chain.vjp(g)})
        t = benchmark(chain.vjp, g, intermediates=True)
        assert np.array_equal(t[0], chain.vjp(g))
    else:
        benchmark(chain.vjp, g)
