"""Shared set-up for the gradchain benchmarks (pytest-benchmark).

Every benchmark group holds gradchain and the peer it is judged against,
timed in the same session; bench/report.py turns the JSON into the ratio
table of BENCHMARKS.md.  Optional peers (JAX) skip when not installed.
"""
import os

import numpy as np
import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "peer(name): benchmark of a peer library")


@pytest.fixture(scope="session")
def jax_x64():
    """jax with float64 enabled, or skip."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_platforms", "cpu")
    return jax


def chain_arrays(k, n, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    Js = [(rng.standard_normal((n, n)) / np.sqrt(n)).astype(dtype)
          for _ in range(k)]
    g = rng.standard_normal(n).astype(dtype)
    return Js, g


def numpy_vjp_loop(Js, g):
    """The plain NumPy loop a user writes: g = J.T @ g, last link first."""
    for J in reversed(Js):
        g = J.T @ g
    return g


def jax_scan_vjp(jax):
    """jax.jit of a lax.scan over the stacked chain (last link first)."""
    from jax import lax

    @jax.jit
    def f(stack, g):
        def step(h, J):
            return J.T @ h, None

        h, _ = lax.scan(step, g, stack, reverse=True)
        return h

    return f


def pytest_report_header(config):
    import gradchain
    return (f"gradchain {gradchain.__version__}: kernels {gradchain.simd_target()}, "
            f"OpenMP {gradchain.openmp_enabled()}, {gradchain.get_num_threads()} "
            f"thread(s); cores {os.cpu_count()}")


def paired_ratio(ours, peer, pairs=30):
    """Interleaved timing of two callables: ``pairs`` rounds of one call
    each, alternating which goes first.  Returns (median of per-pair
    peer/ours time ratios, median ours time, median peer time).

    Bandwidth-bound pairs on a shared machine drift by tens of percent
    between the pytest-benchmark rounds of one test and of the next; timing
    them back to back cancels the drift that both calls of a pair see.
    """
    import time
    ours(), peer()
    r, to, tp = [], [], []
    for i in range(pairs):
        order = (ours, peer) if i % 2 == 0 else (peer, ours)
        t = {}
        for fn in order:
            t0 = time.perf_counter()
            fn()
            t[fn] = time.perf_counter() - t0
        to.append(t[ours])
        tp.append(t[peer])
        r.append(t[peer] / t[ours])
    return float(np.median(r)), float(np.median(to)), float(np.median(tp))


def blocked_ratio(ours, peer, blocks=12, calls=15, rest=0.3):
    """Alternating blocks of calls with a rest before each: ``blocks``
    blocks per callable (which goes first alternates), each ``calls``
    timed calls after one warm-up, ``rest`` seconds of sleep before each
    block so that idle thread pools (OpenBLAS's, libgomp's) are asleep when
    a block starts.  Returns (median over block pairs of peer/ours of the
    block medians, median ours block time, median peer block time).

    Used for the bandwidth-bound single products, whose separately timed
    rounds drift with this shared machine's memory bandwidth.
    """
    import time
    meds = {ours: [], peer: []}
    for blk in range(blocks):
        order = (ours, peer) if blk % 2 == 0 else (peer, ours)
        for fn in order:
            time.sleep(rest)
            fn()
            ts = []
            for _ in range(calls):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            meds[fn].append(float(np.median(ts)))
    a, b = np.array(meds[ours]), np.array(meds[peer])
    return float(np.median(b / a)), float(np.median(a)), float(np.median(b))
