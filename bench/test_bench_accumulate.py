"""Accumulation and per-sample benchmarks (issue 4).

- jacobian of k = 64 dense 16x16 links: gradchain.jacobian vs
  np.linalg.multi_dot (whose bracketing search runs in Python) and vs the
  NumPy left-to-right loop;
- dims [2000, 10, 2000, 10, 2000]: gradchain.jacobian vs multi_dot (and the
  same multiply-add count as multi_dot's choice);
- the plan for k = 500 links (time to compute the bracketing);
- per-sample chains, B = 4096, k = 8, n = 32: vjp vs the NumPy loop
  g = (g[:, None, :] @ J)[:, 0, :] and jax.jit of a lax.scan with einsum;
- B = 256 cotangents through dims [512, 8, 512, 8, 512]: the chosen plan vs
  plain propagation G = G @ J link by link;
- per-sample jacobian, B = 4096, k = 8, n = 32: Chain.jacobian vs the NumPy
  batched-matmul loop M = J @ M.
"""
import numpy as np
import pytest

import gradchain
from conftest import paired_ratio


def classic_chain_cost(dims):
    """Optimal multiply-add count of the matrix chain with these dims (the
    textbook programme, what multi_dot minimises)."""
    n = len(dims) - 1
    cost = [[0.0] * n for _ in range(n)]
    for L in range(2, n + 1):
        for i in range(n - L + 1):
            j = i + L - 1
            cost[i][j] = min(cost[i][s] + cost[s + 1][j]
                             + dims[i] * dims[s + 1] * dims[j + 1]
                             for s in range(i, j))
    return cost[0][n - 1]


def numpy_jacobian_loop(Js):
    """J_k ... J_1 left to right, M = J @ M (a batch of products for 3-D
    per-sample links)."""
    M = Js[0]
    for J in Js[1:]:
        M = J @ M
    return M


@pytest.mark.benchmark(group="jacobian k=64 dense 16x16")
@pytest.mark.parametrize("impl", ["gradchain", "numpy loop", "multi_dot"])
def test_jacobian_k64_n16(benchmark, impl):
    rng = np.random.default_rng(0)
    Js = [rng.standard_normal((16, 16)) / 4 for _ in range(64)]
    loop = lambda: numpy_jacobian_loop(Js)          # noqa: E731

    if impl == "gradchain":
        fn = lambda: gradchain.jacobian(Js)          # noqa: E731
    elif impl == "numpy loop":
        fn = loop
    else:
        fn = lambda: np.linalg.multi_dot(list(reversed(Js)))   # noqa: E731
    out = benchmark(fn)
    np.testing.assert_allclose(out, loop(), rtol=1e-9, atol=1e-12)


@pytest.mark.benchmark(group="jacobian dims [2000, 10, 2000, 10, 2000]")
@pytest.mark.parametrize("impl", ["gradchain", "multi_dot"])
def test_jacobian_rectangular(benchmark, impl):
    rng = np.random.default_rng(1)
    dims = [2000, 10, 2000, 10, 2000]
    Js = [rng.standard_normal((dims[i + 1], dims[i])) for i in range(4)]
    if impl == "gradchain":
        chain = gradchain.Chain(Js)
        plan = chain.plan(mode="jacobian")
        # the same multiply-add count as the classic optimum multi_dot uses
        assert plan.cost == classic_chain_cost(list(reversed(dims)))
        benchmark.extra_info["cost"] = plan.cost
        out = benchmark(lambda: gradchain.jacobian(Js))
    else:
        out = benchmark(lambda: np.linalg.multi_dot(list(reversed(Js))))
    ref = Js[3] @ (Js[2] @ Js[1]) @ Js[0]
    np.testing.assert_allclose(out, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.benchmark(group="plan for k=500 links")
def test_plan_k500(benchmark):
    rng = np.random.default_rng(2)
    dims = rng.integers(5, 60, 501)
    Js = [np.empty((dims[i + 1], dims[i])) for i in range(500)]
    plan = benchmark(lambda: gradchain.Chain(Js).plan(mode="jacobian"))
    assert plan.cost <= min(plan.baseline_costs.values())


def per_sample_problem(B=4096, k=8, n=32):
    rng = np.random.default_rng(3)
    Js = [rng.standard_normal((B, n, n)) / np.sqrt(n) for _ in range(k)]
    G = rng.standard_normal((B, n))
    return Js, G


def numpy_per_sample(Js, G):
    g = G
    for J in reversed(Js):
        g = (g[:, None, :] @ J)[:, 0, :]
    return g


@pytest.mark.benchmark(group="per-sample vjp B=4096 k=8 n=32")
@pytest.mark.parametrize("impl", ["gradchain", "numpy", "jax"])
def test_per_sample(benchmark, impl, request):
    Js, G = per_sample_problem()
    ref = numpy_per_sample(Js, G)
    if impl == "gradchain":
        chain = gradchain.Chain(Js)
        # bandwidth-bound (256 MiB of Jacobians per call): also timed
        # interleaved with the NumPy loop, so both sides of each pair see
        # the same state of this shared machine's memory bandwidth
        benchmark.extra_info["paired"] = paired_ratio(
            lambda: chain.vjp(G), lambda: numpy_per_sample(Js, G))
        out = benchmark(chain.vjp, G)
    elif impl == "numpy":
        out = benchmark(numpy_per_sample, Js, G)
    else:
        jax = request.getfixturevalue("jax_x64")
        from jax import lax
        stack = jax.numpy.asarray(np.stack(Js))        # (k, B, n, n)
        Gj = jax.numpy.asarray(G)

        @jax.jit
        def f(stack, g):
            def step(h, J):
                return jax.numpy.einsum("bi,bij->bj", h, J), None
            h, _ = lax.scan(step, g, stack, reverse=True)
            return h

        f(stack, Gj).block_until_ready()
        out = benchmark(lambda: f(stack, Gj).block_until_ready())
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-9, atol=1e-10)


@pytest.mark.benchmark(group="B=256 cotangents through [512, 8, 512, 8, 512]")
@pytest.mark.parametrize("impl", ["gradchain", "numpy"])
def test_block_plan(benchmark, impl):
    rng = np.random.default_rng(4)
    dims = [512, 8, 512, 8, 512]
    Js = [rng.standard_normal((dims[i + 1], dims[i])) for i in range(4)]
    G = rng.standard_normal((256, 512))

    def propagate(G):
        for J in reversed(Js):
            G = G @ J
        return G

    if impl == "gradchain":
        chain = gradchain.Chain(Js)
        plan = chain.plan(256, "vjp")
        benchmark.extra_info["plan"] = plan.expression
        benchmark.extra_info["cost"] = plan.cost
        benchmark.extra_info["propagation_cost"] = plan.baseline_costs["left_to_right"]
        assert plan.cost < plan.baseline_costs["left_to_right"]
        out = benchmark(chain.vjp, G)
    else:
        out = benchmark(propagate, G)
    np.testing.assert_allclose(out, propagate(G), rtol=1e-9, atol=1e-8)


@pytest.mark.benchmark(group="per-sample jacobian B=4096 k=8 n=32")
@pytest.mark.parametrize("impl", ["gradchain", "numpy"])
def test_per_sample_jacobian(benchmark, impl):
    Js, _ = per_sample_problem()
    if impl == "gradchain":
        out = benchmark(gradchain.Chain(Js).jacobian)
    else:
        out = benchmark(numpy_jacobian_loop, Js)
    np.testing.assert_allclose(out, numpy_jacobian_loop(Js), rtol=1e-9, atol=1e-10)
