"""Accumulation and per-sample benchmarks (issue 4), and bounded planning
(issue 8).

- jacobian of k = 64 dense 16x16 links: gradchain.jacobian vs the NumPy
  left-to-right loop (the fair peer) and vs np.linalg.multi_dot (an
  algorithm-choice comparison: nearly all of multi_dot's time there is its
  order search, which runs in Python);
- dims [2000, 10, 2000, 10, 2000]: gradchain.jacobian vs multi_dot (and the
  same multiply-add count as multi_dot's choice);
- the plan for k = 500 links: the time of ``Chain(Js).plan(mode="jacobian")``
  (binding the links and choosing the order, whatever the planner decides to
  run for that chain);
- per-sample chains, B = 4096, k = 8, n = 32: vjp vs the NumPy loop
  g = (g[:, None, :] @ J)[:, 0, :] and jax.jit of a lax.scan with einsum;
- B = 256 cotangents through dims [512, 8, 512, 8, 512]: the chosen plan vs
  plain propagation G = G @ J link by link (an algorithm-choice comparison:
  propagation does twice the multiply-adds) and vs the best bracketing
  written by hand in NumPy, ((G @ J4) @ (J3 @ J2)) @ J1 (the fair peer);
- per-sample jacobian, B = 4096, k = 8, n = 32: Chain.jacobian vs the NumPy
  batched-matmul loop M = J @ M;
- one-shot vjp with a batch of 8 cotangents through k = 2000 links of 4x4
  (issue 8: planning bounded by the product's cost) vs the NumPy loop
  G = G @ J;
- jacobian of k = 3 dense 512x512 links whose first link is a strided view
  J[:, ::2] of a 512 x 1024 array, against the same chain in C order (issue
  12, item 7: the strided operand is packed, a panel at a time, never
  copied whole).
"""
import threading

import numpy as np
import pytest

import gradchain
from conftest import SLOW_CALL_S, measure, optional_peer


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

    contenders = {
        "gradchain": lambda: gradchain.jacobian(Js),
        "numpy loop": loop,
        "multi_dot": lambda: np.linalg.multi_dot(list(reversed(Js))),
    }
    fn = contenders[impl]
    if impl == "gradchain":
        measure(benchmark, "gradchain", contenders)
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
        measure(benchmark, "gradchain", {
            "gradchain": lambda: gradchain.jacobian(Js),
            "multi_dot": lambda: np.linalg.multi_dot(list(reversed(Js)))})
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
    # what is timed: the whole call, binding and planning; the planner may
    # run its order search or a cheaper one for this chain, so record what
    # the plan found next to the time
    call = lambda: gradchain.Chain(Js).plan(mode="jacobian")   # noqa: E731
    plan = call()
    benchmark.extra_info["plan_cost"] = plan.cost
    benchmark.extra_info["baseline_costs"] = dict(plan.baseline_costs)
    measure(benchmark, "test_plan_k500", {"test_plan_k500": call})
    plan = benchmark(call)
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


def read_floor(Js, nt):
    """The machine's read floor for the per-sample links: np.sum over the
    same arrays on nt threads, each summing its share (NumPy's sum streams
    the bytes at the memory's rate and does one add per element)."""
    shares = [Js[i::nt] for i in range(nt)]

    def floor():
        ts = [threading.Thread(target=lambda s=s: [np.sum(J) for J in s])
              for s in shares]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    return floor


def _jax_per_sample(jax, Js, G):
    """jax.jit of a lax.scan with einsum over the stacked per-sample links."""
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
    return lambda: f(stack, Gj).block_until_ready()


@pytest.mark.benchmark(group="per-sample vjp B=4096 k=8 n=32")
@pytest.mark.parametrize("impl", ["gradchain", "numpy", "jax"])
def test_per_sample(benchmark, impl, request):
    Js, G = per_sample_problem()
    ref = numpy_per_sample(Js, G)
    if impl == "gradchain":
        chain = gradchain.Chain(Js)
        peers = {"numpy": lambda: numpy_per_sample(Js, G),
                 # issue 12, item 10: the two-thread read floor of the same
                 # bytes, measured in the same blocks and rounds
                 "read floor": read_floor(Js, gradchain.get_num_threads())}
        jax = optional_peer(request, "jax_x64")
        if jax is not None:
            peers["jax"] = _jax_per_sample(jax, Js, G)
        benchmark.extra_info["bytes"] = sum(J.nbytes for J in Js)
        measure(benchmark, "gradchain", {"gradchain": lambda: chain.vjp(G), **peers})
        out = benchmark(chain.vjp, G)
    elif impl == "numpy":
        out = benchmark(numpy_per_sample, Js, G)
    else:
        jax = request.getfixturevalue("jax_x64")
        out = benchmark(_jax_per_sample(jax, Js, G))
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-9, atol=1e-10)


def numpy_per_sample_jvp(Js, V):
    v = V
    for J in Js:
        v = (J @ v[:, :, None])[:, :, 0]
    return v


@pytest.mark.benchmark(group="per-sample jvp B=4096 k=8 n=32")
@pytest.mark.parametrize("impl", ["gradchain", "numpy", "Chain.vjp"])
def test_per_sample_jvp(benchmark, impl):
    """Issue 12, item 5: the per-sample jvp against the per-sample vjp of
    the same chain (the same bytes read) and the NumPy loop."""
    Js, V = per_sample_problem()
    chain = gradchain.Chain(Js)
    if impl == "gradchain":
        benchmark.extra_info["bytes"] = sum(J.nbytes for J in Js)
        measure(benchmark, "gradchain", {
            "gradchain": lambda: chain.jvp(V),
            "numpy": lambda: numpy_per_sample_jvp(Js, V),
            "Chain.vjp": lambda: chain.vjp(V)})
    if impl == "Chain.vjp":
        benchmark(chain.vjp, V)
        return
    fn = (lambda: chain.jvp(V)) if impl == "gradchain" else (
        lambda: numpy_per_sample_jvp(Js, V))
    out = benchmark(fn)
    np.testing.assert_allclose(out, numpy_per_sample_jvp(Js, V), rtol=1e-9,
                               atol=1e-10)


def best_bracketing_cost(B, dims):
    """Fewest multiply-adds of any bracketing of G (B x dims[-1]) times the
    links (dims[i+1] x dims[i]), last link first."""
    return classic_chain_cost([B] + list(reversed(dims)))


@pytest.mark.benchmark(group="B=256 cotangents through [512, 8, 512, 8, 512]")
@pytest.mark.parametrize("impl", ["gradchain", "numpy", "numpy best bracketing"])
def test_block_plan(benchmark, impl):
    rng = np.random.default_rng(4)
    dims = [512, 8, 512, 8, 512]
    Js = [rng.standard_normal((dims[i + 1], dims[i])) for i in range(4)]
    J1, J2, J3, J4 = Js
    G = rng.standard_normal((256, 512))

    def propagate(G):
        for J in reversed(Js):
            G = G @ J
        return G

    def bracketed(G):
        # written by hand: the bracketing with the fewest multiply-adds
        return ((G @ J4) @ (J3 @ J2)) @ J1

    b = G.shape[0]
    assert (b * 512 * 8 + 8 * 512 * 8 + b * 8 * 8 + b * 8 * 512
            == best_bracketing_cost(b, dims))
    contenders = {"gradchain": None, "numpy": lambda: propagate(G),
                  "numpy best bracketing": lambda: bracketed(G)}
    if impl == "gradchain":
        chain = gradchain.Chain(Js)
        plan = chain.plan(256, "vjp")
        benchmark.extra_info["plan"] = plan.expression
        benchmark.extra_info["cost"] = plan.cost
        benchmark.extra_info["propagation_cost"] = plan.baseline_costs["left_to_right"]
        benchmark.extra_info["best_bracketing_cost"] = best_bracketing_cost(b, dims)
        assert plan.cost < plan.baseline_costs["left_to_right"]
        contenders["gradchain"] = lambda: chain.vjp(G)
        measure(benchmark, "gradchain", contenders)
        out = benchmark(chain.vjp, G)
    elif impl == "numpy":
        out = benchmark(propagate, G)
    else:
        out = benchmark(bracketed, G)
    np.testing.assert_allclose(out, propagate(G), rtol=1e-9, atol=1e-8)


@pytest.mark.benchmark(group="per-sample jacobian B=4096 k=8 n=32")
@pytest.mark.parametrize("impl", ["gradchain", "numpy"])
def test_per_sample_jacobian(benchmark, impl):
    Js, _ = per_sample_problem()
    if impl == "gradchain":
        chain = gradchain.Chain(Js)
        measure(benchmark, "gradchain", {"gradchain": chain.jacobian,
                                         "numpy": lambda: numpy_jacobian_loop(Js)})
        out = benchmark(chain.jacobian)
    else:
        out = benchmark(numpy_jacobian_loop, Js)
    np.testing.assert_allclose(out, numpy_jacobian_loop(Js), rtol=1e-9, atol=1e-10)


LONG_K, LONG_N, LONG_B = 2000, 4, 8


@pytest.mark.benchmark(group="vjp one-shot batch 8 through k=2000 links of 4x4")
@pytest.mark.parametrize("impl", ["gradchain", "numpy"])
def test_oneshot_long_chain(benchmark, impl):
    """Issue 8, item 9: planning bounded by the product's cost.  A one-shot
    vjp of a batch through a long chain of small links must not cost more
    than twice the NumPy loop.  GRADCHAIN_BENCH_LONG_K overrides k (for a
    quick check of the code path; the report's row is for k = 2000)."""
    import os
    import time
    k = int(os.environ.get("GRADCHAIN_BENCH_LONG_K", LONG_K))
    rng = np.random.default_rng(5)
    # scaled so that the product neither grows nor shrinks much over 2000 links
    Js = [rng.standard_normal((LONG_N, LONG_N)) / 1.75 for _ in range(k)]
    G = rng.standard_normal((LONG_B, LONG_N))

    def loop():
        H = G
        for J in reversed(Js):
            H = H @ J
        return H

    benchmark.extra_info["k"] = k
    if impl == "gradchain":
        # the first call for these shapes, before anything could be cached
        t0 = time.perf_counter()
        out = gradchain.vjp(Js, G)
        first = time.perf_counter() - t0
        benchmark.extra_info["first_call_s"] = first
        measure(benchmark, "gradchain", {"gradchain": lambda: gradchain.vjp(Js, G),
                                         "numpy": loop})
        fn = lambda: gradchain.vjp(Js, G)       # noqa: E731
    else:
        first = 0.0
        fn = loop
    if first > SLOW_CALL_S:
        # today's planner can take seconds a call: one round, not twenty
        out = benchmark.pedantic(fn, rounds=1, iterations=1)
    else:
        out = benchmark(fn)
    np.testing.assert_allclose(out, loop(), rtol=1e-8, atol=1e-300)


@pytest.mark.benchmark(group="jacobian k=3 512x512, first link J[:, ::2]")
@pytest.mark.parametrize("impl", ["gradchain", "C order"])
def test_jacobian_strided_first_link(benchmark, impl):
    rng = np.random.default_rng(12)
    n = 512
    wide = rng.standard_normal((n, 2 * n))
    strided = [wide[:, ::2]] + [rng.standard_normal((n, n)) / np.sqrt(n) for _ in range(2)]
    contiguous = [np.ascontiguousarray(J) for J in strided]
    calls = {"gradchain": lambda: gradchain.jacobian(strided),
             "C order": lambda: gradchain.jacobian(contiguous)}
    if impl == "gradchain":
        measure(benchmark, "gradchain", calls)
    out = benchmark(calls[impl])
    ref = contiguous[2] @ contiguous[1] @ contiguous[0]
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-10)


MIXED_GROUP = ("per-sample vjp B=1024 through [(B,32,512), 512x8, 8x512, (B,512,32)]")


def mixed_problem(B=1024):
    """Issue 12, item 9: per-sample links around a stretch of two thin shared
    links (the chain's Jacobian is J4 J3 J2 J1, J4 (B, 32, 512) ... J1
    (B, 512, 32))."""
    rng = np.random.default_rng(9)
    J4 = rng.standard_normal((B, 32, 512)) / np.sqrt(512)
    J3 = rng.standard_normal((512, 8)) / np.sqrt(8)
    J2 = rng.standard_normal((8, 512)) / np.sqrt(512)
    J1 = rng.standard_normal((B, 512, 32)) / np.sqrt(32)
    G = rng.standard_normal((B, 32))
    return [J1, J2, J3, J4], G


def numpy_mixed(links, G, premultiplied=False):
    """Plain propagation in NumPy, one batched product per per-sample link
    and a BLAS product of the block per shared link (or the two shared
    links multiplied first)."""
    J1, J2, J3, J4 = links
    g = (G[:, None, :] @ J4)[:, 0, :]
    g = g @ (J3 @ J2) if premultiplied else (g @ J3) @ J2
    return (g[:, None, :] @ J1)[:, 0, :]


@pytest.mark.benchmark(group=MIXED_GROUP)
@pytest.mark.parametrize("impl", ["gradchain", "numpy", "numpy premultiplied"])
def test_per_sample_shared_stretch(benchmark, impl):
    links, G = mixed_problem()
    chain = gradchain.Chain(links)
    calls = {"gradchain": lambda: chain.vjp(G),
             "numpy": lambda: numpy_mixed(links, G),
             "numpy premultiplied": lambda: numpy_mixed(links, G, True)}
    if impl == "gradchain":
        plan = chain.plan(batch=G.shape[0])
        benchmark.extra_info["plan"] = plan.expression
        benchmark.extra_info["cost"] = plan.cost
        measure(benchmark, "gradchain", calls)
    out = benchmark(calls[impl])
    np.testing.assert_allclose(out, numpy_mixed(links, G), rtol=1e-9, atol=1e-12)
