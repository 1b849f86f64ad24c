"""Core benchmarks (issue 2): chain VJP/JVP and the single-link kernels.

Run:  pytest bench/ --benchmark-only   (or python bench/report.py to write
BENCHMARKS.md).  Each group pairs gradchain with the peer named in the
issue; gradchain's test of a target row also times it against every peer with
`measure` (rested alternating blocks and interleaved rounds, see conftest.py).
"""
import numpy as np
import pytest

import gradchain
from conftest import (chain_arrays, jax_scan_vjp, measure, numpy_vjp_loop,
                      optional_peer)

# ---------------------------------------------------------------------------
# Small chains: per-call overhead dominates
# ---------------------------------------------------------------------------


def _jax_prebuilt(jax, Js, g):
    f = jax_scan_vjp(jax)
    stack = jax.numpy.asarray(np.stack(Js))
    gj = jax.numpy.asarray(g)
    f(stack, gj).block_until_ready()
    return lambda: f(stack, gj).block_until_ready()


@pytest.mark.benchmark(group="chain.vjp k=64 n=16 (prebuilt)")
@pytest.mark.parametrize("impl", ["gradchain", "numpy", "jax"])
def test_prebuilt_k64_n16(benchmark, impl, request):
    Js, g = chain_arrays(64, 16)
    ref = numpy_vjp_loop(Js, g)
    if impl == "gradchain":
        chain = gradchain.Chain(Js)
        peers = {"numpy": lambda: numpy_vjp_loop(Js, g)}
        jax = optional_peer(request, "jax_x64")
        if jax is not None:
            peers["jax"] = _jax_prebuilt(jax, Js, g)
        measure(benchmark, "gradchain", {"gradchain": lambda: chain.vjp(g), **peers})
        out = benchmark(chain.vjp, g)
    elif impl == "numpy":
        out = benchmark(numpy_vjp_loop, Js, g)
    else:
        jax = request.getfixturevalue("jax_x64")
        out = benchmark(_jax_prebuilt(jax, Js, g))
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.benchmark(group="vjp one-shot k=16 n=8 (list of arrays)")
@pytest.mark.parametrize("impl", ["gradchain", "numpy"])
def test_oneshot_k16_n8(benchmark, impl):
    Js, g = chain_arrays(16, 8)
    fn = gradchain.vjp if impl == "gradchain" else numpy_vjp_loop
    if impl == "gradchain":
        measure(benchmark, "gradchain", {"gradchain": lambda: gradchain.vjp(Js, g),
                                         "numpy": lambda: numpy_vjp_loop(Js, g)})
    out = benchmark(fn, Js, g)
    np.testing.assert_allclose(out, numpy_vjp_loop(Js, g), rtol=1e-12)


@pytest.mark.benchmark(group="chain.vjp k=64 n=64 (prebuilt)")
@pytest.mark.parametrize("impl", ["gradchain", "numpy"])
def test_prebuilt_k64_n64(benchmark, impl):
    Js, g = chain_arrays(64, 64)
    fn = gradchain.Chain(Js).vjp if impl == "gradchain" else (
        lambda g: numpy_vjp_loop(Js, g))
    if impl == "gradchain":
        measure(benchmark, "gradchain", {"gradchain": lambda: fn(g),
                                         "numpy": lambda: numpy_vjp_loop(Js, g)})
    out = benchmark(fn, g)
    np.testing.assert_allclose(out, numpy_vjp_loop(Js, g), rtol=1e-10,
                               atol=1e-12)


@pytest.mark.benchmark(group="vjp one-shot k=64 n=64 (list of arrays)")
@pytest.mark.parametrize("impl", ["gradchain", "numpy"])
def test_oneshot_k64_n64(benchmark, impl):
    Js, g = chain_arrays(64, 64)
    fn = gradchain.vjp if impl == "gradchain" else numpy_vjp_loop
    if impl == "gradchain":
        measure(benchmark, "gradchain", {"gradchain": lambda: gradchain.vjp(Js, g),
                                         "numpy": lambda: numpy_vjp_loop(Js, g)})
    out = benchmark(fn, Js, g)
    np.testing.assert_allclose(out, numpy_vjp_loop(Js, g), rtol=1e-10,
                               atol=1e-12)


@pytest.mark.benchmark(group="chain.jvp k=64 n=16 (prebuilt)")
@pytest.mark.parametrize("impl", ["gradchain", "numpy", "Chain.vjp"])
def test_prebuilt_jvp_k64_n16(benchmark, impl):
    """Issue 12, item 5: Chain.jvp against the NumPy loop and against
    Chain.vjp on the same chain."""
    Js, v = chain_arrays(64, 16)

    def numpy_jvp(v):
        for J in Js:
            v = J @ v
        return v

    chain = gradchain.Chain(Js)
    if impl == "gradchain":
        measure(benchmark, "gradchain", {"gradchain": lambda: chain.jvp(v),
                                         "numpy": lambda: numpy_jvp(v),
                                         "Chain.vjp": lambda: chain.vjp(v)})
    if impl == "Chain.vjp":
        benchmark(chain.vjp, v)
        return
    fn = chain.jvp if impl == "gradchain" else numpy_jvp
    out = benchmark(fn, v)
    np.testing.assert_allclose(out, numpy_jvp(v), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------
# One big J^T v: memory-bandwidth bound
# ---------------------------------------------------------------------------

BIG = [(4096, np.float64), (4096, np.float32), (8192, np.float64),
       (8192, np.float32)]


def _big(n, dtype, layout):
    rng = np.random.default_rng(1)
    if layout == "C":
        J = rng.standard_normal((n, n), dtype=np.float32).astype(dtype)
    elif layout == "F":
        J = np.asfortranarray(
            rng.standard_normal((n, n), dtype=np.float32).astype(dtype))
    elif layout == "rows":
        # a view of a wider array: row stride n + 64, unit inner stride
        J = rng.standard_normal((n, n + 64), dtype=np.float32).astype(dtype)[:, :n]
    else:
        # every other element of every other row: inner stride 2
        J = rng.standard_normal((2 * n, 2 * n),
                                dtype=np.float32).astype(dtype)[::2, ::2]
    g = rng.standard_normal(n).astype(dtype)
    return J, g


@pytest.mark.parametrize("n,dtype", BIG, ids=[f"{n}-{np.dtype(d).name}"
                                               for n, d in BIG])
@pytest.mark.parametrize("impl", ["gradchain", "numpy"])
def test_single_jtv_C(benchmark, impl, n, dtype):
    benchmark.group = f"J.T @ v {n}x{n} {np.dtype(dtype).name} C-order"
    J, g = _big(n, dtype, "C")
    benchmark.extra_info["bytes"] = J.nbytes
    if impl == "gradchain":
        chain = gradchain.Chain([J])
        out = np.empty(n, dtype)
        measure(benchmark, "gradchain", {"gradchain": lambda: chain.vjp(g, out),
                                         "numpy": lambda: J.T @ g})
        res = benchmark(chain.vjp, g, out)
    else:
        res = benchmark(lambda: J.T @ g)
    ref = J.T.astype(np.float64) @ g.astype(np.float64)
    scale = np.abs(J.T).astype(np.float64) @ np.abs(g).astype(np.float64)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert np.all(np.abs(res - ref) <= tol * scale)


@pytest.mark.parametrize("layout", ["C", "F", "rows", "elements"])
@pytest.mark.parametrize("n,dtype", [(4096, np.float64), (4096, np.float32)],
                         ids=["4096-float64", "4096-float32"])
def test_single_jtv_layouts(benchmark, layout, n, dtype):
    benchmark.group = f"J.T @ v {n}x{n} {np.dtype(dtype).name} layouts"
    J, g = _big(n, dtype, layout)
    benchmark.extra_info["bytes"] = J.nbytes
    chain = gradchain.Chain([J])
    assert chain.jacobians[0] is J          # bound in place, never copied
    out = np.empty(n, dtype)
    if layout != "C":
        # against the same values in C order, both ways; the ratios stored
        # under this layout's name are its time over the C-order time
        c_chain = gradchain.Chain([np.ascontiguousarray(J)])
        c_out = np.empty(n, dtype)
        measure(benchmark, "C", {"C": lambda: c_chain.vjp(g, c_out),
                                 layout: lambda: chain.vjp(g, out)})
        del c_chain
    res = benchmark(chain.vjp, g, out)
    ref = J.T.astype(np.float64) @ g.astype(np.float64)
    scale = np.abs(J.T).astype(np.float64) @ np.abs(g).astype(np.float64)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert np.all(np.abs(res - ref) <= tol * scale)


# ---------------------------------------------------------------------------
# Many cotangents: matrix-matrix (BLAS) work
# ---------------------------------------------------------------------------


@pytest.mark.benchmark(group="batch B=256 through k=8 n=512")
@pytest.mark.parametrize("impl", ["gradchain", "numpy"])
def test_batch_b256_k8_n512(benchmark, impl):
    Js, _ = chain_arrays(8, 512)
    G = np.random.default_rng(2).standard_normal((256, 512))

    def numpy_loop(G):
        for J in reversed(Js):
            G = G @ J
        return G

    fn = gradchain.Chain(Js).vjp if impl == "gradchain" else numpy_loop
    if impl == "gradchain":
        measure(benchmark, "gradchain", {"gradchain": lambda: fn(G),
                                         "numpy": lambda: numpy_loop(G)})
    out = benchmark(fn, G)
    np.testing.assert_allclose(out, numpy_loop(G), rtol=1e-9, atol=1e-9)


ACC_GROUP = "J.T @ v 4096x4096 float32, accumulate=float64"


@pytest.mark.benchmark(group=ACC_GROUP)
@pytest.mark.parametrize("impl", ["gradchain", "float32"])
def test_accumulate_float64_jtv(benchmark, impl):
    """Issue 12, item 3: the bandwidth-bound float32 J^T v summed in float64
    (the mixed kernels read J in place) against the plain float32 product on
    the same chain."""
    rng = np.random.default_rng(31)
    J = rng.standard_normal((4096, 4096), dtype=np.float32)
    g = rng.standard_normal(4096, dtype=np.float32)
    chain = gradchain.Chain([J])
    calls = {"gradchain": lambda: chain.vjp(g, accumulate="float64"),
             "float32": lambda: chain.vjp(g)}
    benchmark.extra_info["bytes"] = J.nbytes
    if impl == "gradchain":
        measure(benchmark, "gradchain", calls)
    out = benchmark(calls[impl])
    ref = J.astype(np.float64).T @ g.astype(np.float64)
    np.testing.assert_allclose(out, ref, rtol=1e-4 if impl == "float32" else 1e-12,
                               atol=1e-3 if impl == "float32" else 1e-10)


RNN_GROUP = "RNN backward T=200 n=128: [Diagonal(d_t), W] x 200"


def rnn_problem(T=200, n=128):
    """Issue 12, item 6: an RNN's backward pass, the chain [D_1, W, D_2, W,
    ..., D_T, W] (h_t = W diag(d_t) h_{t-1}), one cotangent, float64."""
    rng = np.random.default_rng(6)
    W = rng.standard_normal((n, n)) / np.sqrt(n)
    ds = rng.uniform(0.1, 1.0, (T, n))
    links = []
    for d in ds:
        links += [gradchain.Diagonal(d), W]
    return W, ds, links, rng.standard_normal(n)


def numpy_rnn(W, ds, g):
    for d in ds[::-1]:
        g = d * (W.T @ g)
    return g


def jax_rnn(jax, W, ds, g):
    from jax import lax
    Wj, Dj, gj = (jax.numpy.asarray(a) for a in (W, ds, g))

    @jax.jit
    def f(Wj, Dj, g):
        def step(h, d):
            return d * (Wj.T @ h), None
        h, _ = lax.scan(step, g, Dj, reverse=True)
        return h

    f(Wj, Dj, gj).block_until_ready()
    return lambda: f(Wj, Dj, gj).block_until_ready()


@pytest.mark.benchmark(group=RNN_GROUP)
@pytest.mark.parametrize("impl", ["gradchain", "numpy", "jax", "dense links only"])
def test_rnn_backward(benchmark, impl, request):
    W, ds, links, g = rnn_problem()
    chain = gradchain.Chain(links)
    dense_only = gradchain.Chain([W] * len(ds))
    calls = {"gradchain": lambda: chain.vjp(g), "numpy": lambda: numpy_rnn(W, ds, g),
             # the same chain without its diagonals: what the diagonals cost
             "dense links only": lambda: dense_only.vjp(g)}
    if impl == "jax" or impl == "gradchain":
        jax = optional_peer(request, "jax_x64")
        if jax is not None:
            calls["jax"] = jax_rnn(jax, W, ds, g)
        elif impl == "jax":
            pytest.skip("jax is not installed")
    if impl == "gradchain":
        measure(benchmark, "gradchain", calls)
    out = benchmark(calls[impl])
    if impl != "dense links only":
        np.testing.assert_allclose(np.asarray(out), numpy_rnn(W, ds, g), rtol=1e-10,
                                   atol=1e-300)


# ---------------------------------------------------------------------------
# Framework adapters (issue 13): a Chain inside a PyTorch autograd graph
# ---------------------------------------------------------------------------

@pytest.mark.benchmark(group="torch adapter: x.grad through k=64 links of 16x16")
@pytest.mark.parametrize("impl", ["gradchain", "torch autograd"])
def test_torch_adapter_k64_n16(benchmark, impl):
    """Forward and backward of y = J_64 ... J_1 x, loss y.sum(): through
    gradchain.torch.apply (Chain.jvp forward, Chain.vjp backward) against
    PyTorch's own autograd over the 64 matmuls."""
    torch = pytest.importorskip("torch")
    import gradchain.torch as gct
    Js, _ = chain_arrays(64, 16)
    chain = gradchain.Chain(Js)
    Jt = [torch.from_numpy(J) for J in Js]
    x = torch.ones(16, dtype=torch.float64, requires_grad=True)

    def ours():
        x.grad = None
        gct.apply(chain, x).sum().backward()
        return x.grad

    def theirs():
        x.grad = None
        y = x
        for J in Jt:
            y = J @ y
        y.sum().backward()
        return x.grad

    if impl == "gradchain":
        measure(benchmark, "gradchain", {"gradchain": ours, "torch autograd": theirs})
        out = benchmark(ours).numpy().copy()
        np.testing.assert_allclose(out, theirs().numpy(), rtol=1e-10, atol=1e-12)
    else:
        benchmark(theirs)


@pytest.mark.benchmark(group="jax adapter: jax.grad through k=64 links of 16x16")
@pytest.mark.parametrize("impl", ["gradchain", "jax autodiff"])
def test_jax_adapter_k64_n16(benchmark, impl, jax_x64):
    """jax.jit(jax.grad(x -> sum(J_64 ... J_1 x))): through gradchain.jax
    (pure_callback to Chain.jvp / Chain.vjp) against JAX's own reverse mode
    over a lax.scan of the 64 matmuls."""
    import gradchain.jax as gcj
    jax = jax_x64
    jnp = jax.numpy
    Js, _ = chain_arrays(64, 16)
    f = gcj.function(gradchain.Chain(Js))
    stack = jnp.asarray(np.stack(Js))

    def product(x):
        y, _ = jax.lax.scan(lambda y, J: (J @ y, None), x, stack)
        return y.sum()

    ours_f = jax.jit(jax.grad(lambda x: f(x).sum()))
    theirs_f = jax.jit(jax.grad(product))
    x = jnp.ones(16)
    ours = lambda: ours_f(x).block_until_ready()          # noqa: E731
    theirs = lambda: theirs_f(x).block_until_ready()      # noqa: E731
    if impl == "gradchain":
        measure(benchmark, "gradchain", {"gradchain": ours, "jax autodiff": theirs})
        out = np.asarray(benchmark(ours))
        np.testing.assert_allclose(out, np.asarray(theirs()), rtol=1e-10, atol=1e-12)
    else:
        benchmark(theirs)
