"""Shared set-up for the gradchain benchmarks (pytest-benchmark).

Every benchmark group holds gradchain and the peers it is judged against,
timed in the same session.  The test of gradchain's side of a target row also
times gradchain against its peers both ways with `measure` (rested
alternating blocks, which decide the verdict, and interleaved rounds the way
a user's script runs); bench/report.py turns the JSON into the tables of
BENCHMARKS.md.  Optional peers (JAX, PyTorch) skip when not installed.
"""
import os
import sys
import time

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


# ---------------------------------------------------------------------------
# The two measurements every target row carries (bench/report.py)
# ---------------------------------------------------------------------------

#: a contender whose single call takes longer than this is measured with one
#: rested block of one call each and one interleaved round (the full
#: measurement would take minutes); the row says so
SLOW_CALL_S = 1.0


def _one_call(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def rested_blocks(contenders, blocks=12, calls=15, rest=0.3, sample_s=2e-4,
                  block_s=0.3):
    """Rested alternating blocks: the verdict measurement of BENCHMARKS.md.

    ``contenders`` maps a name to a zero-argument callable.  ``blocks``
    rounds; in each round every contender runs one block, the order rotating
    from round to round (two contenders: which goes first alternates).  A
    block is ``rest`` seconds of sleep (so that idle thread pools, OpenBLAS's
    and libgomp's, are asleep when it starts), one untimed warm-up call, then
    ``calls`` timed samples of ``inner`` back-to-back calls each; the block's
    figure is the median per-call time of its samples.  ``inner`` is chosen
    per contender so that a sample lasts at least ``sample_s`` (1 for calls
    of 0.2 ms or more, so that the timer's cost stays out of microsecond
    calls); ``calls`` is lowered to fit the slowest contender's block into
    about ``block_s`` (never below 3).

    Returns (per-round block figures: dict name -> list of seconds per call,
    a dict describing the set-up).
    """
    names = list(contenders)
    single = {}
    for name in names:
        fn = contenders[name]
        fn()                                   # warm-up (first call, caches)
        ts = [_one_call(fn)]
        while len(ts) < 5 and sum(ts) < 0.2:   # best of a few: one call can be
            ts.append(_one_call(fn))           # descheduled on a busy machine
        single[name] = min(ts)
    slowest = max(single.values())
    if slowest > SLOW_CALL_S:
        blocks, calls = 1, 1
    else:
        calls = max(3, min(calls, int(block_s / max(slowest, 1e-9))))
    inner = {n: max(1, int(sample_s / max(single[n], 1e-9))) for n in names}
    figs = {n: [] for n in names}
    for r in range(blocks):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn, m = contenders[name], inner[name]
            time.sleep(rest)
            if slowest <= SLOW_CALL_S:
                fn()
            ts = []
            for _ in range(calls):
                t0 = time.perf_counter()
                for _ in range(m):
                    fn()
                ts.append((time.perf_counter() - t0) / m)
            figs[name].append(float(np.median(ts)))
    setup = {"blocks": blocks, "calls": calls, "rest_s": rest, "inner": inner}
    return figs, setup


def _interleaved_compare():
    """`compare` from the project's shared bench/interleaved.py (the way a
    user's script runs: contenders' rounds interleaved, no rests)."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.environ.get("GRADCHAIN_SHARED_BENCH",
                          os.path.join(here, "..", "..", "shared", "bench"))
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        from interleaved import compare
    except ImportError as e:                  # pragma: no cover
        raise ImportError(
            f"bench needs shared/bench/interleaved.py (looked in {path}; set "
            "GRADCHAIN_SHARED_BENCH to its folder)") from e
    return compare


def measure(benchmark, ours, contenders):
    """Time ``contenders`` (name -> zero-argument callable; ``ours`` is one of
    them) both ways and store the result in ``benchmark.extra_info``:

    - ``rested``: peer -> [median over rounds of the peer/ours ratio of the
      block figures, median ours figure (s), median peer figure (s)], and
      ``rested_time``: name -> median block figure (s), from
      `rested_blocks`;
    - ``interleaved``: peer -> [peer best / ours best, ours best (s), peer
      best (s)] from the shared `interleaved.compare` (best per-call time
      over 7 interleaved rounds, no rests; one round for a contender slower
      than SLOW_CALL_S);
    - ``measure_setup``: how the blocks were run.

    With one contender only the rested time is recorded.  Called inside the
    test of ``ours``, before its pytest-benchmark rounds.
    """
    figs, setup = rested_blocks(contenders)
    benchmark.extra_info["rested_time"] = {
        n: float(np.median(v)) for n, v in figs.items()}
    a = np.array(figs[ours])
    benchmark.extra_info["rested"] = {
        n: [float(np.median(np.array(v) / a)), float(np.median(a)),
            float(np.median(v))]
        for n, v in figs.items() if n != ours}
    if len(contenders) > 1:
        compare = _interleaved_compare()
        rounds = 1 if setup["blocks"] == 1 else 7
        best = compare(contenders, rounds=rounds)
        benchmark.extra_info["interleaved"] = {
            n: [best[n] / best[ours], best[ours], best[n]]
            for n in contenders if n != ours}
        setup["interleaved_rounds"] = rounds
    benchmark.extra_info["measure_setup"] = setup


def optional_peer(request, fixture):
    """The fixture's value, or None where the peer is not installed."""
    try:
        return request.getfixturevalue(fixture)
    except pytest.skip.Exception:
        return None


def peer_calls(request, numpy_call, torch_factory, jax_factory, x):
    """name -> zero-argument call for NumPy and each installed optional peer
    at the input x: ``torch_factory()`` returns a function of x (it skips
    when PyTorch is absent), ``jax_factory(jax)`` one of a JAX array."""
    calls = {"numpy": numpy_call}
    try:
        f_torch = torch_factory()
        calls["torch"] = lambda: f_torch(x)
    except pytest.skip.Exception:
        pass
    jax = optional_peer(request, "jax_x64")
    if jax is not None:
        f_jax, xj = jax_factory(jax), jax.numpy.asarray(x)
        calls["jax"] = lambda: f_jax(xj)
    return calls
