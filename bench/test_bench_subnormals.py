"""Issue 12, item 4: a chain whose values sit in the subnormal range, k = 512
links of 64 x 64 (orthogonal, so the values keep their size), float64, with
gradchain.errstate(subnormals="flush") against the same chain on values in
the normal range; the IEEE subnormal time and NumPy's loop on both ranges
are reported beside it."""
import numpy as np
import pytest

import gradchain as gc
from conftest import measure

K, N = 512, 64
GROUP = "k=512 n=64 float64 chain, cotangent in the subnormal range (1e-310)"


def _setup():
    rng = np.random.default_rng(5)
    Qs = [np.linalg.qr(rng.standard_normal((N, N)))[0] for _ in range(K)]
    g = rng.standard_normal(N)
    return gc.Chain(Qs), Qs, g, g * 1e-310


def _numpy_loop(Qs, g):
    for Q in reversed(Qs):
        g = Q.T @ g
    return g


@pytest.mark.parametrize("impl", ["gradchain", "normal range", "IEEE subnormal",
                                  "numpy normal", "numpy subnormal"])
def test_subnormal_chain(benchmark, impl):
    benchmark.group = GROUP
    chain, Qs, g, gs = _setup()
    flushed = gc.errstate(subnormals="flush")(lambda: chain.vjp(gs))
    calls = {"gradchain": flushed,
             "normal range": lambda: chain.vjp(g),
             "IEEE subnormal": lambda: chain.vjp(gs),
             "numpy normal": lambda: _numpy_loop(Qs, g),
             "numpy subnormal": lambda: _numpy_loop(Qs, gs)}
    if impl == "gradchain":
        measure(benchmark, "gradchain", calls)
        out = benchmark(flushed)
        assert np.all(out == 0)                     # DAZ: the input reads as zero
        ref = _numpy_loop(Qs, gs)
        np.testing.assert_allclose(chain.vjp(gs), ref, rtol=1e-6, atol=1e-320)
    else:
        benchmark(calls[impl])
