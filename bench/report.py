"""Run the benchmarks and write BENCHMARKS.md and the README's headline table.

    python bench/report.py [--quick] [--runs N] [--render-only] [-- PYTEST ARGS]

Runs ``pytest bench/ --benchmark-only`` with a JSON report ``--runs`` times
(default 5), saves the sessions (bench/results/sessions.json) and what the
run was measured on (bench/results/sessions-meta.json: commit, whether the
tree was dirty, the machine as read at run time, library versions, thread
counts, a read-bandwidth probe before and after), then writes BENCHMARKS.md,
its PNG plots (bench/results/plots/: time against width, GB/s of the
bandwidth-bound rows against the read probes, the 16-core thread scaling of
bench/results/scaling-16core.md; drawn with matplotlib, skipped with a note
when it is not installed) and the headline table between the markers in
README.md.  ``--render-only`` rewrites all three from the saved files without
running anything or reading the machine.

Verdict rule (one rule, fixed before the numbers, the same for every target
row): a target row is decided by its **rested alternating-block ratio**.
Inside gradchain's test, `measure` (bench/conftest.py) runs 12 rounds in which
gradchain and each peer run one block each, the order rotating from round to
round; a block is 0.3 s of rest (idle thread pools fall asleep), one warm-up
call, then up to 15 timed samples (each long enough that the timer does not
count), and its figure is the median per-call time.  A session's ratio is the
median over rounds of peer figure / gradchain figure; the row's figure is the
median of the session ratios, and "≥ x×" is met when that figure is at least
x.  Rows that bound a time ("< 100 ms") use the median over sessions of the
rested per-call time; layout rows use the layout's rested time over the
C-order time.  Nothing else decides a verdict; a row without a rested figure
says "not measured yet".

Beside every verdict the table shows, in their own columns, the interleaved
ratio (the shared ``interleaved.compare``: the contenders' rounds interleaved
with no rests, best of 7, the way a user's script runs) and the ratio of the
pytest-benchmark medians.  Why rested decides: the targets compare
gradchain's speed with its peer's.  Rested blocks time each side at its own
speed, under the same conditions, alternating so that both see the same
state of this shared machine's memory bandwidth; separately timed
pytest-benchmark rounds of a bandwidth-bound pair swing by tens of percent
between sessions, and interleaved rounds add the cost of one library's idle
thread pool spinning on a core while the other runs (real for a script that
mixes them on 2 cores, but a property of the pair and the core count).  The
rows that would miss their target on the interleaved figure are listed under
the tables.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from typing import NamedTuple, Optional

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# the gradchain of this checkout, as the suite (run from ROOT) imports it
sys.path.insert(0, ROOT)

SAVED = os.path.join(HERE, "results", "sessions.json")
SAVED_META = os.path.join(HERE, "results", "sessions-meta.json")
README_BEGIN = "<!-- headline table: written by bench/report.py (HEADLINE there) from bench/results; do not edit by hand -->"
README_END = "<!-- end of headline table -->"


class Target(NamedTuple):
    """One target row.  ``peer`` None: ``need`` bounds the rested time (s) of
    ``holder``.  ``layout`` True: the figure is the time of layout ``peer``
    over the C-order time, at most ``need``.  Otherwise the figure is peer
    time / gradchain time, at least ``need`` (None: reported only)."""
    group: str
    peer: Optional[str]
    need: Optional[float]
    label: str
    holder: str = "gradchain"      # the test whose extra_info holds the figures
    layout: bool = False
    k: Optional[int] = None        # the chain length the row is about, where the test can vary it


ALGO = " — *algorithm-choice comparison*"
FAIR = " — *fair peer*"
_MLP = "compose(Affine, Tanh)x4 + SquaredError, value_and_grad, "
_MLPP = "compose(Affine, Tanh)x4 + CrossEntropy, value_and_grad wrt=(x, params), "
_MLPS = "compose(Affine, Sigmoid)x4 + SquaredError, value_and_grad, "
SECTIONS = [
    ("issue 2: the core chain products", [
        Target("chain.vjp k=64 n=16 (prebuilt)", "numpy", 15.0,
               "prebuilt Chain.vjp k=64 n=16 vs NumPy loop"),
        Target("chain.vjp k=64 n=16 (prebuilt)", "jax", 1.0,
               "prebuilt Chain.vjp k=64 n=16 vs jax.jit(lax.scan)"),
        Target("vjp one-shot k=16 n=8 (list of arrays)", "numpy", 5.0,
               "one-shot vjp k=16 n=8 vs NumPy loop"),
        Target("chain.vjp k=64 n=64 (prebuilt)", "numpy", 2.0,
               "Chain.vjp k=64 n=64 vs NumPy loop"),
        Target("vjp one-shot k=64 n=64 (list of arrays)", "numpy", 2.0,
               "one-shot vjp k=64 n=64 vs NumPy loop"),
        Target("J.T @ v 4096x4096 float64 C-order", "numpy", 0.95, "J.T @ v 4096² float64 vs NumPy"),
        Target("J.T @ v 4096x4096 float32 C-order", "numpy", 0.95, "J.T @ v 4096² float32 vs NumPy"),
        Target("J.T @ v 8192x8192 float64 C-order", "numpy", 0.95, "J.T @ v 8192² float64 vs NumPy"),
        Target("J.T @ v 8192x8192 float32 C-order", "numpy", 0.95, "J.T @ v 8192² float32 vs NumPy"),
        Target("batch B=256 through k=8 n=512", "numpy", 0.9,
               "B=256 through k=8 n=512 vs NumPy G = G @ J"),
    ] + [
        Target(f"J.T @ v 4096x4096 {dt} layouts", lay, 1.5,
               f"J.T @ v 4096² {dt}: {lay} layout time / C-order time", holder=lay, layout=True)
        for dt in ("float64", "float32") for lay in ("F", "rows", "elements")
    ]),
    ("issue 3: maps and losses, value_and_grad of compose(Affine(W_i, b_i), Tanh) x 4 "
     "with SquaredError, W_i n x n", [
        Target(_MLP + "n=16", "numpy", 5.0, "n=16 vs NumPy by hand"),
        Target(_MLP + "n=16", "torch", 20.0, "n=16 vs PyTorch autograd"),
        Target(_MLP + "n=16", "jax", None, "n=16 vs jax.jit(jax.value_and_grad)"),
        Target(_MLP + "n=64", "numpy", 3.0, "n=64 vs NumPy by hand"),
        Target(_MLP + "n=256", "numpy", 1.5, "n=256 vs NumPy by hand"),
        Target(_MLP + "batch B=256, n=64", "numpy", 1.0, "batch B=256, n=64 vs NumPy by hand"),
        Target(_MLP + "batch B=256, n=64", "torch", 1.0, "batch B=256, n=64 vs PyTorch autograd"),
        Target(_MLP + "batch B=256, n=64", "jax", 1.0,
               "batch B=256, n=64 vs jax.jit(jax.value_and_grad)"),
    ]),
    ("issue 4: accumulation and per-sample chains", [
        Target("jacobian k=64 dense 16x16", "numpy loop", 1.5,
               "jacobian k=64 16x16 vs NumPy left-to-right loop" + FAIR),
        Target("jacobian k=64 dense 16x16", "multi_dot", 100.0,
               "jacobian k=64 16x16 vs np.linalg.multi_dot (most of its time is its "
               "order search in Python)" + ALGO),
        Target("jacobian dims [2000, 10, 2000, 10, 2000]", "multi_dot", 0.95,
               "jacobian dims [2000, 10, 2000, 10, 2000] vs multi_dot (same multiply-adds, asserted)"),
        Target("per-sample vjp B=4096 k=8 n=32", "numpy", 2.0,
               "per-sample B=4096 k=8 n=32 vs NumPy loop (single-threaded)"),
        Target("per-sample vjp B=4096 k=8 n=32", "jax", 1.0,
               "per-sample B=4096 k=8 n=32 vs jax.jit(lax.scan, einsum)"),
        Target("per-sample jacobian B=4096 k=8 n=32", "numpy", None,
               "per-sample jacobian B=4096 k=8 n=32 vs NumPy batched matmul loop"),
        Target("B=256 cotangents through [512, 8, 512, 8, 512]", "numpy best bracketing", None,
               "B=256 through [512, 8, 512, 8, 512] vs NumPy bracketed by hand "
               "((G@J4)@(J3@J2))@J1, the fewest multiply-adds" + FAIR),
        Target("B=256 cotangents through [512, 8, 512, 8, 512]", "numpy", 1.5,
               "B=256 through [512, 8, 512, 8, 512]: plan vs propagation G = G @ J "
               "(twice the multiply-adds)" + ALGO),
        Target("plan for k=500 links", None, 0.1,
               "time of Chain(Js).plan(mode='jacobian'), k = 500 links of random sizes "
               "5–59 (binding and planning, whatever the planner runs for it)",
               holder="test_plan_k500"),
    ]),
    ("issue 11: adjoints and parameter gradients (float64)", [
        Target(_MLPP + "batch B=256, n=64", "numpy", 1.2,
               "compose(Affine, Tanh)×4 + CrossEntropy, B = 256, n = 64, "
               "value_and_grad wrt=(x, params) vs NumPy by hand"),
        Target(_MLPP + "batch B=256, n=64", "torch", 1.2,
               "the same vs PyTorch autograd"),
        Target(_MLPP + "batch B=256, n=64", "jax", 1.2,
               "the same vs jax.jit(jax.value_and_grad(argnums=(0, 1)))"),
        Target(_MLPP + "one sample, n=16", "numpy", 5.0,
               "one sample, n = 16, vs NumPy by hand"),
        Target(_MLPP + "one sample, n=16", "torch", 30.0,
               "one sample, n = 16, vs PyTorch autograd"),
        Target("per-example parameter gradients, compose(Affine, Tanh)x4 + "
               "CrossEntropy, B=256, n=64", "numpy", 1.2,
               "per-example parameter gradients (reduction='none'), B = 256, n = 64, "
               "vs NumPy (one einsum per layer)"),
        Target("per-example parameter gradients, compose(Affine, Tanh)x4 + "
               "CrossEntropy, B=256, n=64", "torch vmap", 1.5,
               "the same vs torch.func.vmap(torch.func.grad)"),
        Target("Chain.vjp(g, intermediates=True), k=64 n=16", "plain vjp", 0.77,
               "Chain.vjp(g, intermediates=True) vs Chain.vjp(g), k = 64, n = 16 "
               "(target: at most 1.3× the time, i.e. a ratio of at least 0.77)"),
    ]),
    ("issue 12: kernels (subnormals; the accuracy items are tests, "
     "bench/results/issue12-accuracy.md)", [
        Target("chain.jvp k=64 n=16 (prebuilt)", "numpy", 15.0,
               "prebuilt Chain.jvp k=64 n=16 vs NumPy loop"),
        Target("chain.jvp k=64 n=16 (prebuilt)", "Chain.vjp", 0.8,
               "prebuilt Chain.jvp k=64 n=16 vs Chain.vjp on the same chain "
               "(target: at least 0.8, i.e. jvp time at most 1.25× vjp's)"),
        Target("per-sample jvp B=4096 k=8 n=32", "Chain.vjp", 1.0,
               "per-sample Chain.jvp B = 4096, k = 8, n = 32 vs the per-sample "
               "Chain.vjp of the same chain (the same bytes; target: the vjp's "
               "throughput or better)"),
        Target("per-sample jvp B=4096 k=8 n=32", "numpy", None,
               "the same vs the NumPy loop `v = (J @ v[:, :, None])[:, :, 0]`"),
        Target("RNN backward T=200 n=128: [Diagonal(d_t), W] x 200", "jax", 2.0,
               "RNN backward, T = 200, n = 128, [Diagonal(d_t), W] × 200: Chain.vjp vs "
               "jax.jit(lax.scan)"),
        Target("RNN backward T=200 n=128: [Diagonal(d_t), W] x 200", "numpy", 4.0,
               "the same vs the NumPy loop `g = d * (W.T @ g)`"),
        Target("RNN backward T=200 n=128: [Diagonal(d_t), W] x 200", "dense links only",
               None, "the same chain without its diagonals / with them (what the "
               "diagonal links cost)"),
        Target("J.T @ v 4096x4096 float32, accumulate=float64", "float32", 0.77,
               "float32 J^T v 4096² with `accumulate=\"float64\"` vs the plain float32 "
               "product (target: at most 1.3× the time, a ratio of at least 0.77)"),
        Target("jacobian k=3 512x512, first link J[:, ::2]", "C order", 0.5,
               "jacobian, k = 3 links of 512², the first a view `J[:, ::2]`, vs the same "
               "chain in C order (target: within 2× the time, a ratio of at least 0.5)"),
        Target("per-sample vjp B=1024 through [(B,32,512), 512x8, 8x512, (B,512,32)]",
               "numpy", 1.5,
               "per-sample vjp B = 1024 through [(B, 32, 512), 512×8, 8×512, (B, 512, 32)] "
               "vs plain propagation in NumPy (target ≥ 1.5×; multiplying the two shared "
               "links first would cost 512² per row against 2·512·8, so the plan propagates)"),
        Target("per-sample vjp B=1024 through [(B,32,512), 512x8, 8x512, (B,512,32)]",
               "numpy premultiplied", None,
               "the same vs NumPy with the two shared links multiplied first"),
        Target("per-sample vjp B=4096 k=8 n=32", "read floor", 0.9,
               "per-sample vjp B = 4096, k = 8, n = 32 vs the two-thread read floor of "
               "the same bytes (np.sum on each thread's share), same run (target ≥ 0.9)"),
        Target("per-sample vjp B=4096 k=8 n=32", "numpy", None,
               "the same vs the NumPy loop, reported next to it"),
        Target("k=512 n=64 float64 chain, cotangent in the subnormal range (1e-310)",
               "normal range", 0.77,
               "subnormal chain with errstate(subnormals=\"flush\") vs the same chain "
               "in the normal range (target: at most 1.3× the time, a ratio of at least 0.77)"),
        Target("k=512 n=64 float64 chain, cotangent in the subnormal range (1e-310)",
               "IEEE subnormal", None,
               "the same chain in IEEE mode on subnormals / flushed (the slowdown flushing removes)"),
        Target("k=512 n=64 float64 chain, cotangent in the subnormal range (1e-310)",
               "numpy subnormal", None, "NumPy loop on subnormals / gradchain flushed"),
        Target(_MLPS + "n=256", "numpy", 1.8,
               "compose(Affine, Sigmoid)×4 + SquaredError, n = 256, value_and_grad vs "
               "NumPy by hand (the vectorised sigmoid)"),
    ]),
    ("issue 10: sparse and matrix-free links (float64; GB/s of matrix data in the time column)", [
        Target("CSR 1e6 x 1e6, 10/row: J^T g", "scipy", 1.6,
               "one CSR link 10⁶×10⁶, 10 per row, int32: Chain.vjp vs scipy `J.T @ g`"),
        Target("CSR 1e6 x 1e6, 10/row: J^T g", "scipy", 1.6,
               "the same J^T g with `Chain(..., transpose_copies=True)` (a gather "
               "over a CSC copy: memory again)", holder="transpose copies"),
        Target("CSR 1e6 x 1e6, 10/row: J v", "scipy", 1.6,
               "the same link: Chain.jvp vs scipy `J @ v`"),
        Target("k=50 tridiagonal CSR links, n=1e5: Chain.vjp", "scipy", 4.0,
               "k = 50 tridiagonal CSR links, n = 10⁵: Chain.vjp vs the scipy loop "
               "`g = J.T @ g`"),
        Target("k=50 tridiagonal CSR links, n=1e5: Chain.vjp", "jax", 3.0,
               "the same vs jax.jit over BCOO links"),
        Target("256 cotangents through k=50 tridiagonal CSR links, n=1e5", "scipy", 2.0,
               "256 cotangents through the same chain vs the scipy loop "
               "`G = (J.T @ G.T).T`"),
        Target("256 cotangents through k=50 tridiagonal CSR links, n=1e5", "scipy", 2.0,
               "the same with `transpose_copies=True`", holder="transpose copies"),
        Target("k=50 tridiagonal CSR links, n=1e5: jacobian()", "scipy", 1.0,
               "jacobian() of the same chain (a csr_array of bandwidth 50) vs the "
               "scipy loop `A = J @ A`, the same nnz"),
        Target("32 dense 16x16 links, one LinearOperator in the middle", "without", None,
               "32 dense 16×16 links with one LinearOperator in the middle: the same "
               "chain without it, time over time (target: ≤ 3 µs more)"),
        Target("32 dense 16x16 links, one LinearOperator in the middle", "without", None,
               "the same with a plain object (shape, matvec, rmatvec) as the link",
               holder="plain object"),
    ]),
    ("issue 8: bounded planning", [
        Target("vjp one-shot batch 8 through k=2000 links of 4x4", "numpy", 0.5,
               "one-shot gradchain.vjp, batch of 8 through k = 2000 links of 4×4, vs NumPy "
               "loop G = G @ J (gradchain ≤ 2× the loop's time)", k=2000),
    ]),
]


# The README's headline table: (case, groups, holder/peer texts, what the
# gradchain cell shows).  Every figure is the rested one of BENCHMARKS.md.
HEADLINE = [
    ("prebuilt `Chain.vjp`, k = 64 links of 16×16", ["chain.vjp k=64 n=16 (prebuilt)"],
     [("numpy", "the NumPy loop `g = J.T @ g`"), ("jax", "`jax.jit` of a `lax.scan`")]),
    ("one-shot `gradchain.vjp(list, g)`, k = 16 links of 8×8",
     ["vjp one-shot k=16 n=8 (list of arrays)"], [("numpy", "the NumPy loop")]),
    ("`Chain.vjp`, k = 64 links of 64×64", ["chain.vjp k=64 n=64 (prebuilt)"],
     [("numpy", "the NumPy loop")]),
    ("one J^T v, 4096² and 8192², float64 / float32",
     [f"J.T @ v {n}x{n} {dt} C-order" for n in (4096, 8192) for dt in ("float64", "float32")],
     [("numpy", "NumPy's `J.T @ v`")]),
    ("F-order or row-strided views of a 4096² J",
     [f"J.T @ v 4096x4096 {dt} layouts" for dt in ("float64", "float32")],
     [("F", None), ("rows", None)]),
    ("256 cotangents through k = 8 links of 512×512", ["batch B=256 through k=8 n=512"],
     [("numpy", "the NumPy loop `G = G @ J`")]),
    ("`compose(Affine, Tanh)×4, loss=SquaredError`, `value_and_grad`, n = 16", [_MLP + "n=16"],
     [("numpy", "NumPy by hand"), ("torch", "PyTorch autograd"),
      ("jax", "`jax.jit(jax.value_and_grad)`")]),
    ("the same, n = 64", [_MLP + "n=64"], [("numpy", "NumPy by hand")]),
    ("the same, n = 256", [_MLP + "n=256"], [("numpy", "NumPy by hand")]),
    ("the same, batch of 256, n = 64", [_MLP + "batch B=256, n=64"],
     [("numpy", "NumPy by hand"), ("torch", "PyTorch"), ("jax", "JAX")]),
    ("`gradchain.jacobian`, k = 64 links of 16×16", ["jacobian k=64 dense 16x16"],
     [("numpy loop", "the NumPy loop `M = J @ M`")]),
    ("`gradchain.jacobian`, dims [2000, 10, 2000, 10, 2000]",
     ["jacobian dims [2000, 10, 2000, 10, 2000]"], [("multi_dot", "`multi_dot` (same multiply-adds)")]),
    ("256 cotangents through [512, 8, 512, 8, 512] (the plan pre-multiplies)",
     ["B=256 cotangents through [512, 8, 512, 8, 512]"],
     [("numpy best bracketing", "NumPy bracketed by hand, `((G@J4)@(J3@J2))@J1`")]),
    ("per-sample chain, B = 4096, k = 8, n = 32, vjp", ["per-sample vjp B=4096 k=8 n=32"],
     [("numpy", "the NumPy loop (one thread against gradchain's {threads})"),
      ("jax", "`jax.jit` (lax.scan + einsum)")]),
    ("the same, `Chain.jacobian()` → (B, 32, 32)", ["per-sample jacobian B=4096 k=8 n=32"],
     [("numpy", "the NumPy batched-matmul loop `M = J @ M`")]),
    ("one-shot `gradchain.vjp`, batch of 8 through k = 2000 links of 4×4",
     ["vjp one-shot batch 8 through k=2000 links of 4x4"], [("numpy", "the NumPy loop `G = G @ J`")]),
]


# ---------------------------------------------------------------------------
# What the run was measured on (read at run time, saved, never re-read)
# ---------------------------------------------------------------------------

def read_bandwidth(nthreads):
    """GB/s of np.sum over 1 GiB split across nthreads threads (best of 5)."""
    a = np.ones(2**27)
    parts = np.array_split(a, nthreads)
    best = float("inf")
    for _ in range(5):
        ts = [threading.Thread(target=np.sum, args=(p,)) for p in parts]
        t = time.perf_counter()
        for th in ts:
            th.start()
        for th in ts:
            th.join()
        best = min(best, time.perf_counter() - t)
    return a.nbytes / best / 1e9


def _run(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT).stdout.strip()
    except OSError:
        return ""


def git_state():
    """The commit measured and what differs from it in the working tree."""
    try:                                   # not _run: its strip() would eat the status column
        status = subprocess.run(["git", "status", "--porcelain"], capture_output=True,
                                text=True, cwd=ROOT).stdout.splitlines()
    except OSError:
        status = []
    status = [line for line in status if line.strip()]
    paths = [line[3:] for line in status]
    # the run rewrites its own outputs; anything else means the code measured is not the commit
    outputs = ("BENCHMARKS.md", "README.md", "bench/results/")
    return {
        "commit": _run(["git", "rev-parse", "HEAD"]),
        "subject": _run(["git", "log", "-1", "--format=%s"]),
        "branch": _run(["git", "rev-parse", "--abbrev-ref", "HEAD"]),
        "dirty": bool(status),
        "dirty_paths": paths,
        "dirty_outside_outputs": [p for p in paths if not p.startswith(outputs)],
    }


def machine_info():
    """The machine and software as they are now (called while measuring)."""
    info = {}
    lscpu = {}
    keep = ("Model name", "Vendor ID", "CPU(s)", "Thread(s) per core", "Core(s) per socket",
            "Socket(s)", "CPU max MHz", "BogoMIPS", "L1d cache", "L2 cache", "L3 cache",
            "NUMA node(s)", "Hypervisor vendor", "Virtualization type")
    for line in _run(["lscpu"]).splitlines():
        key, _, val = line.partition(":")
        if key.strip() in keep:
            lscpu[key.strip()] = val.strip()
    info["lscpu"] = lscpu
    info["os.cpu_count"] = os.cpu_count()
    try:
        info["cpus usable (affinity)"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        info["memory"] = f"{kb / 2**20:.1f} GiB"
    except OSError:
        pass
    info["platform"] = platform.platform()
    info["python"] = platform.python_version()
    info["numpy"] = np.__version__
    try:
        blas = np.__config__.CONFIG["Build Dependencies"]["blas"]
        info["numpy BLAS"] = f"{blas.get('name')} {blas.get('version')}"
    except (AttributeError, KeyError, TypeError):
        pass
    import scipy
    info["scipy"] = scipy.__version__
    for mod in ("jax", "jaxlib", "torch", "pytest_benchmark", "threadpoolctl"):
        try:
            m = __import__(mod)
            info[mod] = m.__version__
        except ImportError:
            info[mod] = "not installed (its rows skip)" if mod in ("jax", "torch") else "not installed"
    try:
        import torch
        info["torch"] += f" ({torch.get_num_threads()} threads)"
    except ImportError:
        pass
    import gradchain
    exts = sorted(f for f in os.listdir(os.path.dirname(gradchain.__file__)) if f.endswith(".so"))
    built = max((os.path.getmtime(os.path.join(os.path.dirname(gradchain.__file__), f))
                 for f in exts), default=None)
    info["gradchain"] = {
        "version": gradchain.__version__,
        "imported from": os.path.dirname(gradchain.__file__),
        "kernels": gradchain.simd_target(),
        "OpenMP": gradchain.openmp_enabled(),
        "threads": gradchain.get_num_threads(),
        "extensions built": (datetime.datetime.fromtimestamp(built, datetime.timezone.utc)
                             .strftime("%Y-%m-%d %H:%M UTC") if built else "no extension found"),
    }
    try:
        import threadpoolctl
        info["thread pools"] = [f"{p.get('internal_api')} {p.get('version')}: {p.get('num_threads')} threads"
                                for p in threadpoolctl.threadpool_info()]
    except ImportError:
        pass
    info["environment"] = {k: v for k, v in sorted(os.environ.items())
                           if k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                    "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_PROC_BIND")
                           or k.startswith("GRADCHAIN_")}
    return info


# ---------------------------------------------------------------------------
# Reading the sessions
# ---------------------------------------------------------------------------

def impl_of(bench):
    name = bench["name"]
    params = bench.get("params") or {}
    if "impl" in params:
        return params["impl"]
    if "layout" in params:
        return params["layout"]
    return name


def fmt_time(s):
    if s < 1e-3:
        return f"{s * 1e6:.2f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


class Figures:
    """The figures of one target row over the sessions."""

    def __init__(self, sessions, t):
        self.t = t
        self.rested, self.rested_time, self.interleaved, self.medians = [], [], [], []
        self.old_interleaved = False     # figures from the older paired_ratio
        self.slow = False                # a contender took > 1 s a call
        self.bytes = None
        self.first_call = []
        self.other_k = set()             # sessions measured at another chain length
        for gs in sessions:
            g = gs.get(t.group, {})
            b = g.get(t.holder)
            if b is None:
                continue
            ei = b["extra_info"]
            if t.k is not None and ei.get("k", t.k) != t.k:
                self.other_k.add(ei["k"])          # a quick check at another k: not this row
                continue
            self.bytes = ei.get("bytes", self.bytes)
            if "first_call_s" in ei:
                self.first_call.append(ei["first_call_s"])
            if (ei.get("measure_setup") or {}).get("blocks") == 1:
                self.slow = True
            if t.peer is None:                                # a bound on a time
                if t.holder in ei.get("rested_time", {}):
                    self.rested.append(ei["rested_time"][t.holder])
                    self.rested_time.append(ei["rested_time"][t.holder])
                self.medians.append(b["stats"]["median"])
                continue
            r = ei.get("rested", {}).get(t.peer)
            if r is None and t.peer == "numpy" and "blocked" in ei:
                r = ei["blocked"]            # sessions before `measure`: same blocks, two contenders
            if r is not None:
                if t.layout:                 # measured with "C" as ours: [layout/C, C, layout]
                    self.rested.append(r[0])
                    self.rested_time.append(r[2])
                else:
                    self.rested.append(r[0])
                    self.rested_time.append(r[1])
            i = ei.get("interleaved", {}).get(t.peer)
            if i is not None:
                self.interleaved.append(i[0])
            elif "paired" in ei and (t.layout or t.peer == "numpy"):
                self.interleaved.append(ei["paired"][0])
                self.old_interleaved = True
            base = "C" if t.layout else t.holder
            if t.peer in g and base in g:
                self.medians.append(g[t.peer]["stats"]["median"] / g[base]["stats"]["median"])

    def figure(self):
        return float(np.median(self.rested)) if self.rested else None

    def verdict(self):
        f = self.figure()
        if f is None:
            return "not measured yet"
        if self.t.need is None:
            return "(reported)"
        ok = f < self.t.need if self.t.peer is None else (
            f <= self.t.need if self.t.layout else f >= self.t.need)
        return "met" if ok else "**NOT met**"

    def interleaved_misses(self):
        if not self.interleaved or self.t.need is None or self.t.peer is None:
            return False
        f = float(np.median(self.interleaved))
        return f > self.t.need if self.t.layout else f < self.t.need


def summary(rs, unit="×"):
    """median (min–max over sessions)"""
    if not rs:
        return None
    med = float(np.median(rs))
    if unit == "s":
        txt = fmt_time(med)
        return txt if len(rs) == 1 else f"{txt} ({fmt_time(min(rs))}–{fmt_time(max(rs))})"
    txt = f"{med:.2f}×"
    return txt if len(rs) == 1 else f"{txt} ({min(rs):.2f}–{max(rs):.2f})"


def required(t):
    if t.need is None:
        return "(reported)"
    if t.peer is None:
        return f"< {t.need * 1e3:g} ms"
    return f"≤ {t.need}×" if t.layout else f"≥ {t.need}×"


def short_ratio(x):
    return f"{x:.0f}×" if x >= 10 else f"{x:.2f}×"


# ---------------------------------------------------------------------------
# Plots (PNG, matplotlib imported only here; without it the plots are skipped)
# ---------------------------------------------------------------------------

PLOTS_DIR = os.path.join(HERE, "results", "plots")
SCALING_16 = os.path.join(HERE, "results", "scaling-16core.md")

# The bandwidth-bound rows: one read of J per call, so GB/s of J read is the
# figure.  (group, holder, label, peers); the GB/s are the rested times'.
BANDWIDTH_ROWS = [
    ("J.T @ v 4096x4096 float64 C-order", "gradchain", "J^T v 4096² float64", ["numpy"]),
    ("J.T @ v 8192x8192 float64 C-order", "gradchain", "J^T v 8192² float64", ["numpy"]),
    ("J.T @ v 4096x4096 float32 C-order", "gradchain", "J^T v 4096² float32", ["numpy"]),
    ("J.T @ v 8192x8192 float32 C-order", "gradchain", "J^T v 8192² float32", ["numpy"]),
    ("J.T @ v 4096x4096 float64 layouts", "F", "J^T v 4096² float64, F order", []),
    ("J.T @ v 4096x4096 float64 layouts", "rows", "J^T v 4096² float64, row-strided", []),
    ("J.T @ v 4096x4096 float64 layouts", "elements", "J^T v 4096² float64, A[::2, ::2]", []),
    ("J.T @ v 4096x4096 float32, accumulate=float64", "gradchain",
     "J^T v 4096² float32, accumulate=float64", []),
    ("per-sample vjp B=4096 k=8 n=32", "gradchain", "per-sample vjp B=4096 k=8 n=32",
     ["numpy", "jax"]),
    ("per-sample jvp B=4096 k=8 n=32", "gradchain", "per-sample jvp B=4096 k=8 n=32",
     ["numpy"]),
    ("CSR 1e6 x 1e6, 10/row: J^T g", "gradchain", "CSR 10⁶², J^T g", ["scipy"]),
    ("CSR 1e6 x 1e6, 10/row: J^T g", "transpose copies", "CSR 10⁶², J^T g, transpose_copies",
     []),
    ("CSR 1e6 x 1e6, 10/row: J v", "gradchain", "CSR 10⁶², J v", ["scipy"]),
    ("k=50 tridiagonal CSR links, n=1e5: Chain.vjp", "gradchain",
     "50 tridiagonal CSR links, vjp", ["scipy", "jax"]),
]


class Plot(NamedTuple):
    """One PNG: its file name, alt text, caption for BENCHMARKS.md, and what
    draw_plots needs to draw it."""
    name: str
    alt: str
    caption: str
    kind: str
    data: object


def _rested_times(sessions, group, holder):
    """{contender: rested per-call time} of one test, median over sessions:
    the holder's own time (median over its pairings) and each peer's."""
    own, peers = [], {}
    for gs in sessions:
        b = gs.get(group, {}).get(holder)
        if b is None:
            continue
        rested = b["extra_info"].get("rested", {})
        for peer, r in rested.items():
            if len(r) < 3:
                continue
            if peer == holder:               # layout rows: [layout/C, C, layout]
                own.append(r[2])
                peers.setdefault("C order", []).append(r[1])
            else:
                own.append(r[1])
                peers.setdefault(peer, []).append(r[2])
    if not own:
        return {}
    out = {holder: float(np.median(own))}
    out.update({p: float(np.median(ts)) for p, ts in peers.items()})
    return out


def _series(sessions, pattern, fmt):
    """Groups that differ only in one number: {template: {value: group}},
    kept where at least two values were measured."""
    import re
    found = {}
    for group in sorted({g for gs in sessions for g in gs}):
        m = re.search(pattern, group)
        if m is None:
            continue
        template = group[:m.start()] + fmt + group[m.end():]
        found.setdefault(template, {})[int(m.group(1))] = group
    return {t: vs for t, vs in found.items() if len(vs) >= 2}


def parse_scaling_16core(path=SCALING_16):
    """The 16-core tables of bench/results/scaling-16core.md as
    {"threads": [...], "products": {label: [GB/s per thread count]},
    "numpy": {label: GB/s}, "per_sample": {label: ([GB/s...], numpy GB/s)}}.
    None when the file is missing or its tables do not parse."""
    import re
    if not os.path.exists(path):
        return None
    with open(path) as f:
        text = f.read()
    gbs = re.compile(r"([\d.]+) GB/s")
    threads, products, numpy_gbs, per_sample = None, {}, {}, {}
    section = None
    for line in text.splitlines():
        if line.startswith("B = ") and line.rstrip().endswith(":"):
            section = line.rstrip(":").strip()     # "B = 4096, commit 79dd3fa"
            continue
        if not line.startswith("|") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "product":
            thr = [int(c.split()[0]) for c in cells if c.endswith("thr")]
            threads = threads or thr
            continue
        if section is None and len(cells) == 9:      # product, dtype, layout, 5 counts, NumPy
            vals = [gbs.search(c) for c in cells[3:]]
            if all(vals):
                label = f"{cells[0]} {cells[1]} {cells[2]}"
                products[label] = [float(v.group(1)) for v in vals[:-1]]
                numpy_gbs[label] = float(vals[-1].group(1))
        elif section is not None and "baseline" not in section and len(cells) == 7:
            vals = [gbs.search(c) for c in cells[1:]]
            if all(vals):
                per_sample[f"{cells[0]}, {section.split(',')[0]}"] = (
                    [float(v.group(1)) for v in vals[1:]], float(vals[0].group(1)))
    if not threads or not products:
        return None
    return {"threads": threads, "products": products, "numpy": numpy_gbs,
            "per_sample": per_sample}


def plot_specs(sessions, meta):
    """The plots the saved data supports, and the notes on those it does not."""
    plots, notes = [], []
    # (a) time against width / chain length, against every peer measured there
    for axis, patterns in (
            ("width", [(r"\bn=(\d+)\b", "n=…", "n (width of each link / layer)"),
                       (r"\b(\d+)x\1\b", "n×n", "n (J is n×n)")]),
            ("chain length", [(r"\bk=(\d+)\b", "k=…", "k (links in the chain)")])):
        panels = []
        for pattern, fmt, xlabel in patterns:
            for template, values in _series(sessions, pattern, fmt).items():
                lines = {}
                for x, group in sorted(values.items()):
                    for who, t in _rested_times(sessions, group, "gradchain").items():
                        lines.setdefault(who, []).append((x, t))
                if lines:
                    panels.append((template, xlabel, lines))
        if panels:
            plots.append(Plot(
                f"time-vs-{axis.replace(' ', '-')}.png",
                f"time per call against the {axis}, gradchain and its peers",
                f"Time per call (rested alternating blocks, the verdict measurement; log "
                f"scales) against the {axis}, for every test the sessions measured at more "
                f"than one {axis}; a peer where its test measured it.", "series", panels))
    if not any(p.name == "time-vs-chain-length.png" for p in plots):
        notes.append("No plot of time against chain length: the saved sessions measure each "
                     "chain length at its own width (k = 16 links of 8×8, k = 64 of 16×16 and "
                     "of 64×64, k = 2000 of 4×4), so they hold no series in k at a fixed "
                     "width.")
    # (b) the bandwidth-bound rows against the machine's read floor
    rows = []
    for group, holder, label, peers in BANDWIDTH_ROWS:
        nbytes = None
        for gs in sessions:
            b = gs.get(group, {}).get(holder)
            if b is not None:
                nbytes = b["extra_info"].get("bytes", nbytes)
        times = _rested_times(sessions, group, holder)
        if not nbytes or holder not in times:
            continue
        bars = [("gradchain", nbytes / times[holder] / 1e9)]
        bars += [(p, nbytes / times[p] / 1e9) for p in peers if p in times]
        floor = times.get("read floor")
        rows.append((label, bars, nbytes / floor / 1e9 if floor else None))
    floors = {k: meta[k] for k in ("read_gbs_before_1", "read_gbs_before_2",
                                   "read_gbs_1", "read_gbs_2") if k in meta}
    if rows:
        plots.append(Plot("bandwidth.png", "GB/s of J read by the bandwidth-bound rows",
                          "GB/s of the Jacobian's bytes read per call (rested times) by the rows "
                          "that read J once per call, against this machine's read rate as "
                          "bench/report.py probed it (np.sum over 1 GiB on 1 and on 2 threads; "
                          "the shaded band spans the probes before and after the sessions, the "
                          "line is the one after) and, where its test measured one, a row's "
                          "own two-thread np.sum over the same bytes in the same rounds (the "
                          "black bar). The probes ran outside the sessions and the machine's "
                          "bandwidth moves with its other tenants, so rows can lie above them. "
                          "The A[::2, ::2] view fetches every cache line of its parent, twice "
                          "the bytes counted here.", "bandwidth", (rows, floors)))
    # (c) thread scaling: the 16-core record (not in the sessions)
    scaling = parse_scaling_16core()
    if scaling:
        plots.append(Plot("scaling-16core.png", "thread scaling on a 16-core machine",
                          "Thread scaling on a 16-core machine, plotted from "
                          "bench/results/scaling-16core.md (recorded separately, best of 5 or "
                          "7; not from the sessions): one product J^T v / J v with n = 12288 "
                          "(left, NumPy's OpenBLAS at its default thread count as the markers "
                          "at the right) and the per-sample vjp/jvp, k = 8 links of 32×32 "
                          "(right, the single-threaded NumPy loop dotted).",
                          "scaling", scaling))
    else:
        notes.append("No thread-scaling plot: bench/results/scaling-16core.md is missing "
                     "or its tables did not parse.")
    return plots, notes


def draw_plots(plots, outdir=PLOTS_DIR):
    """Write the PNGs; False (and a note on stdout) when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: plots skipped (pip install matplotlib, "
              "or the bench extra)")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(outdir, exist_ok=True)
    style = {"gradchain": dict(color="C0", marker="o", lw=2)}
    colors = iter(f"C{i}" for i in range(1, 10))
    peer_color = {}

    def color(who):
        if who == "gradchain":
            return "C0"
        if who not in peer_color:
            peer_color[who] = next(colors, "k")
        return peer_color[who]

    for p in plots:
        if p.kind == "series":
            n = len(p.data)
            cols = min(n, 3)
            rows_ = (n + cols - 1) // cols
            fig, axes = plt.subplots(rows_, cols, figsize=(4.6 * cols, 3.6 * rows_),
                                     squeeze=False)
            for ax, (template, xlabel, lines) in zip(axes.flat, p.data):
                for who, pts in sorted(lines.items(), key=lambda kv: kv[0] != "gradchain"):
                    xs, ts = zip(*pts)
                    ax.plot(xs, [t * 1e6 for t in ts], label=who,
                            **style.get(who, dict(color=color(who), marker="s", ls="--")))
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xticks(sorted({x for pts in lines.values() for x, _ in pts}))
                ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
                ax.set_xlabel(xlabel)
                ax.set_ylabel("µs per call")
                ax.set_title(template, fontsize=8, wrap=True)
                ax.grid(True, which="both", alpha=0.3)
                ax.legend(fontsize=8)
            for ax in list(axes.flat)[n:]:
                ax.set_visible(False)
        elif p.kind == "bandwidth":
            rows, floors = p.data
            labels, ticks = [], []
            y = 0
            fig, ax = plt.subplots(figsize=(9, 0.42 * sum(len(b) for _, b, _ in rows) + 1.6))
            for label, bars, own_floor in rows:
                top = y
                for who, g in bars:
                    ax.barh(y, g, color=color(who), height=0.8,
                            label=who if who not in labels else None)
                    ax.text(g, y, f" {g:.1f}", va="center", fontsize=7)
                    labels.append(who)
                    y += 1
                if own_floor:
                    ax.plot([own_floor] * 2, [top - 0.5, y - 0.5], color="k", lw=2,
                            label="this test's np.sum of the same bytes" if "floor" not in labels else None)
                    labels.append("floor")
                ticks.append(((top + y - 1) / 2, label))
                y += 0.6
            for key, ls, text in (("read_gbs_1", ":", "np.sum probe, 1 thread"),
                                  ("read_gbs_2", "--", "np.sum probe, 2 threads")):
                if key in floors:
                    lo = min(floors[key], floors.get(key.replace("gbs_", "gbs_before_"),
                                                     floors[key]))
                    hi = max(floors[key], floors.get(key.replace("gbs_", "gbs_before_"),
                                                     floors[key]))
                    ax.axvspan(lo, hi, color="0.5", alpha=0.15)
                    ax.axvline(floors[key], color="0.3", ls=ls,
                               label=f"{text} ({lo:.0f}–{hi:.0f} GB/s)")
            ax.set_yticks([t for t, _ in ticks], [lab for _, lab in ticks], fontsize=8)
            ax.invert_yaxis()
            ax.set_xlabel("GB/s of J read (rested per-call time)")
            ax.grid(True, axis="x", alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
        elif p.kind == "scaling":
            s = p.data
            fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
            th = s["threads"]
            for i, (label, g) in enumerate(s["products"].items()):
                c = f"C{i}"
                ls = "-" if label.startswith("J.T") else "--"
                a1.plot(th, g, color=c, ls=ls, marker="o", ms=3, label=label)
                a1.plot([th[-1] * 1.25], [s["numpy"][label]], color=c, marker="x", ls="")
            a1.set_title("one product, n = 12288 (x: NumPy, default threads)", fontsize=9)
            for i, (label, (g, npy)) in enumerate(s["per_sample"].items()):
                c = f"C{i}"
                a2.plot(th, g, color=c, marker="o", ms=3, label=label)
                a2.axhline(npy, color=c, ls=":", lw=1)
            a2.set_title("per-sample chains, k = 8 links of 32×32 (dotted: NumPy loop)",
                         fontsize=9)
            for ax in (a1, a2):
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xticks(th)
                ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
                ax.set_xlabel("threads")
                ax.set_ylabel("GB/s of J read")
                ax.grid(True, which="both", alpha=0.3)
                ax.legend(fontsize=7)
        fig.tight_layout()
        # no Software/date metadata: the same data gives the same file
        fig.savefig(os.path.join(outdir, p.name), dpi=110, metadata={"Software": None})
        plt.close(fig)
        print("wrote", os.path.relpath(os.path.join(outdir, p.name), ROOT))
    return True


def render_plots(plots, notes, drawn, output, w, outdir=PLOTS_DIR):
    """The Plots section of BENCHMARKS.md: image links relative to output."""
    w("## Plots\n")
    w("Drawn by `python bench/report.py` (also with `--render-only`) from the saved sessions "
      f"into `{os.path.relpath(outdir, ROOT)}/` with matplotlib.\n")
    if not drawn:
        w("*matplotlib was not installed when this file was rendered: the images below are "
          "from an earlier render and may not match the tables.*\n")
    rel = os.path.relpath(outdir, os.path.dirname(os.path.abspath(output)))
    for p in plots:
        if drawn or os.path.exists(os.path.join(outdir, p.name)):
            w(f"![{p.alt}]({rel}/{p.name})\n")
            w(p.caption + "\n")
    for note in notes:
        w(note + "\n")


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------

def render_provenance(meta, nsessions, w):
    prov = meta.get("git")
    mach = meta.get("machine")
    when = meta.get("date", "an unrecorded date")
    if meta.get("started") and meta.get("finished"):
        when += f" ({meta['started']} to {meta['finished']})"
    w(f"Sessions: {nsessions}, {when}" +
      (f", with `{meta['command']}`" if meta.get("command") else "") + ".\n")
    if meta.get("recovered"):
        w(f"*Provenance recovered, not recorded:* {meta['recovered']}\n")
    if prov:
        state = ("whether the working tree was dirty was not recorded" if prov.get("dirty") is None
                 else "working tree clean" if not prov.get("dirty") else
                 "uncommitted changes in the measured code: " + ", ".join(prov["dirty_outside_outputs"])
                 if prov.get("dirty_outside_outputs") else
                 "only the report's own outputs differed from it")
        w(f"Commit measured: `{prov.get('commit', '?')}` ({prov.get('subject', '')}); {state}.\n")
    else:
        w("Commit measured: not recorded with these sessions.\n")
    if meta.get("session_seconds"):
        ss = meta["session_seconds"]
        w(f"Each session took {min(ss) / 60:.1f}–{max(ss) / 60:.1f} min "
          f"({sum(ss) / 60:.0f} min in all).\n")
    if not mach:
        w("Machine: not recorded with these sessions.\n")
        return
    w("Machine and software, as read while the sessions ran:\n")
    for k, v in mach.items():
        if isinstance(v, dict):
            v = "; ".join(f"{a} {b}" for a, b in v.items()) or "(none set)"
        elif isinstance(v, list):
            v = "; ".join(v) or "(none reported)"
        w(f"- {k}: {v}")
    if "read_gbs_1" in meta:
        before = ""
        if "read_gbs_before_1" in meta:
            before = (f" (before the sessions: {meta['read_gbs_before_1']:.1f} / "
                      f"{meta['read_gbs_before_2']:.1f} GB/s)")
        w(f"- read bandwidth (np.sum over 1 GiB), after the sessions: {meta['read_gbs_1']:.1f} GB/s "
          f"on 1 thread, {meta['read_gbs_2']:.1f} GB/s on 2 threads{before}")
    if "loadavg" in meta:
        w(f"- load average (1, 5, 15 min) before / after: {meta['loadavg']['before']} / "
          f"{meta['loadavg']['after']}")
    w("")


def render(sessions, meta, plots=None):
    """BENCHMARKS.md; plots: (plots, notes, drawn, output) for its Plots section."""
    lines = []
    w = lines.append
    w("# gradchain benchmarks\n")
    w("Produced by `python bench/report.py` (pytest-benchmark; every contender of a row was "
      "timed in the same session). Ratios are the peer's time divided by gradchain's: above 1 "
      "means gradchain is faster. float64 unless the group says otherwise.\n")
    w("**Verdict rule, the same for every row, fixed before the numbers: the rested "
      "alternating-block figure decides.** In gradchain's test, `measure` (bench/conftest.py) "
      "runs 12 rounds; in each, gradchain and every peer run one block, the order rotating; a "
      "block is 0.3 s of rest (so idle OpenBLAS/libgomp/PyTorch/XLA pools are asleep), one "
      "warm-up call, then up to 15 timed samples, and its figure is the median per-call time. "
      "A session's ratio is the median over rounds of peer figure / gradchain figure; the "
      "row's figure is the median of the session ratios (range over sessions in brackets). "
      "Time bounds use the median rested per-call time. Beside it, and never deciding: the "
      "**interleaved** ratio, measured in the same test with the shared "
      "`interleaved.compare` (the contenders' rounds interleaved with no rests, best of 7, "
      "the way a user's script runs), and the ratio of the **pytest-benchmark medians** "
      "(separately timed tests). Why rested: the targets compare each library's own speed; "
      "rested alternating blocks give both sides the same conditions and the same state of "
      "this shared machine's memory bandwidth, while separately timed rounds of a "
      "bandwidth-bound pair swing by tens of percent between sessions and interleaved "
      "rounds add one library's idle thread pool spinning while the other runs. Rows whose "
      "interleaved figure misses the target are listed under the tables. A row with no "
      "rested figure in the saved sessions says *not measured yet*.\n")
    w("*Algorithm-choice comparisons* race gradchain against a peer that does a different "
      "amount of work (a pure-Python order search, twice the multiply-adds); each sits next "
      "to the *fair peer* doing the same work, and the README quotes the fair one.\n")
    render_provenance(meta, len(sessions), w)

    misses, slow_rows, old_rows = [], [], []
    for title, targets in SECTIONS:
        w(f"## Targets ({title})\n")
        w("| target | required | **rested blocks (verdict figure)** | time, rested | "
          "interleaved (user script) | pytest-benchmark medians | verdict |")
        w("|---|---|---|---|---|---|---|")
        for t in targets:
            f = Figures(sessions, t)
            unit = "s" if t.peer is None else "×"
            rested = summary(f.rested, unit) or "not measured yet"
            if f.slow:
                rested += " ¶"
                slow_rows.append(t.label)
            if f.other_k:
                rested += (f" (sessions at k = {', '.join(map(str, sorted(f.other_k)))} "
                           f"left out: GRADCHAIN_BENCH_LONG_K was set)")
            tm = summary(f.rested_time, "s") or ""
            if f.bytes and f.rested_time:
                tm += f", {f.bytes / float(np.median(f.rested_time)) / 1e9:.1f} GB/s of J"
            if t.peer is None:
                inter = "— (no peer)"
            else:
                inter = summary(f.interleaved) or "not measured yet"
                if f.old_interleaved:
                    inter += " ‡"
                    old_rows.append(t.label)
            med = summary(f.medians, unit) or "not run"
            w(f"| {t.label} | {required(t)} | {rested} | {tm} | {inter} | {med} | {f.verdict()} |")
            if f.interleaved_misses():
                misses.append((t, summary(f.interleaved)))
        w("")
    w("Columns: *time, rested* is the per-call time of gradchain (of the layout, for layout "
      "rows) in the rested blocks, median over sessions. *interleaved*: peer best / gradchain "
      "best over 7 interleaved rounds of ~20 ms each, median over sessions. *pytest-benchmark "
      "medians*: peer median / gradchain median of the separately timed tests in the "
      "**All groups** tables below.\n")
    if slow_rows:
        w("¶ A contender took over 1 s a call (bench/conftest.py `SLOW_CALL_S`), so its row "
          "was measured with one rested block of one call each and one interleaved round.\n")
    if old_rows:
        w("‡ From sessions saved before `measure` existed: the older `paired_ratio` "
          "interleaving (one call of each side back to back, 30 pairs alternating which goes "
          "first, median of the per-pair ratios), recorded for these rows only; "
          "`interleaved.compare` will replace it at the next run.\n")
    if misses:
        w("On the interleaved figure these rows miss their target, whatever their verdict "
          "(where rested and interleaved differ, it is mostly the cost, on 2 cores, of one "
          "library's idle thread pool spinning while the other runs; `OMP_WAIT_POLICY=passive`, "
          "or one pool limited to 1 thread with threadpoolctl, mostly removes it):\n")
        for t, txt in misses:
            w(f"- {t.label}: interleaved {txt}, required {required(t)}")
        w("")
    w("## All groups (pytest-benchmark rounds)\n")
    w("Each test timed on its own by pytest-benchmark; times from the session whose ratio "
      "(first peer against the base) is the median one; ratios are medians of the "
      "per-session ratios of medians.\n")
    all_groups = sorted({g for gs in sessions for g in gs})
    for group in all_groups:
        names = {n for gs in sessions for n in gs.get(group, {})}
        base_name = ("gradchain" if "gradchain" in names
                     else "C" if "C" in names else sorted(names)[0])
        peers = sorted(names)
        key = [p for p in peers if p != base_name][:1]
        cand = [gs for gs in sessions if group in gs and base_name in gs[group]]
        if not cand:
            continue
        if key:
            cand.sort(key=lambda gs: (gs[group].get(key[0], gs[group][base_name])
                                      ["stats"]["median"]
                                      / gs[group][base_name]["stats"]["median"]))
        g = cand[len(cand) // 2][group]
        base = g[base_name]
        has_bytes = "bytes" in base["extra_info"]
        w(f"### {group}\n")
        w(f"| implementation | median | min | rounds | vs {base_name} "
          f"(sessions) |" + (" GB/s of J read (median) |" if has_bytes else ""))
        w("|---|---|---|---|---|" + ("---|" if has_bytes else ""))
        for name, b in sorted(g.items(), key=lambda kv: kv[1]["stats"]["median"]):
            st = b["stats"]
            rs = [gs[group][name]["stats"]["median"] / gs[group][base_name]["stats"]["median"]
                  for gs in sessions
                  if name in gs.get(group, {}) and base_name in gs.get(group, {})]
            row = (f"| {name} | {fmt_time(st['median'])} | {fmt_time(st['min'])} | "
                   f"{st['rounds']} | {summary(rs)} |")
            if has_bytes:
                # (the same bytes for every implementation of the group)
                nbytes = b["extra_info"].get("bytes", base["extra_info"]["bytes"])
                row += f" {nbytes / st['median'] / 1e9:.1f} |"
            w(row)
        extra = {k: v for k, v in base["extra_info"].items()
                 if k in ("plan", "cost", "propagation_cost", "best_bracketing_cost", "plan_cost",
                          "baseline_costs", "k", "first_call_s")}
        if extra:
            w("\nRecorded with it: " + "; ".join(
                f"{k} = {fmt_time(v) if k.endswith('_s') else v}" for k, v in extra.items()
                if not (k == "plan" and len(str(v)) > 200)))
        w("")
    w("Layouts: `C` C-order; `F` Fortran-order (read as the transpose); `rows` a "
      "view `A[:, :n]` of an n×(n+64) array (row stride ≠ n, unit inner stride); "
      "`elements` a view `A[::2, ::2]` (inner stride 2: every cache line of the "
      "parent is fetched, so twice the bytes of J cross the memory bus). No layout "
      "is copied: the benchmark asserts the chain binds the caller's array.\n")
    for name, title in (("scaling-16core.md", "Thread scaling beyond 2 cores"),
                        ("per-sample-bandwidth.md",
                         "Per-sample vjp against the read floor")):
        rec = os.path.join(HERE, "results", name)
        if os.path.exists(rec):
            with open(rec) as f:
                body = f.read().split("\n", 1)[1].rstrip() + "\n"
            w(f"## {title} (recorded separately)\n")
            w(f"Not re-measured by this script: `bench/results/{name}`, "
              "copied here as recorded." + body)
    if plots is not None:
        render_plots(*plots, w)
    return "\n".join(lines)


def render_headline(sessions, meta):
    """The README's headline table, every figure from the rested blocks."""
    mach = meta.get("machine") or {}
    cpu = (mach.get("lscpu") or {}).get("Model name", "machine not recorded")
    gthreads = (mach.get("gradchain") or {}).get("threads", "?")
    pools = "; ".join(mach.get("thread pools", [])) or "not recorded"

    def fig(group, peer, holder="gradchain", layout=False):
        return Figures(sessions, Target(group, peer, None, "", holder, layout))

    out = [README_BEGIN,
           f"Headline figures from [BENCHMARKS.md](BENCHMARKS.md), every one from its verdict "
           f"measurement: rested alternating blocks, median over the {len(sessions)} sessions of "
           f"one run ({cpu}, {mach.get('os.cpu_count', '?')} cores; gradchain on {gthreads} threads, "
           f"thread pools: {pools}); float64 unless said; ratio = peer time / gradchain time, "
           "measured in the same test. *not measured yet*: the saved sessions predate that "
           "measurement for the row.", "",
           "| case | gradchain (rested) | vs peer (rested) |", "|---|---|---|"]
    for case, groups, peers in HEADLINE:
        times, gbs, cells = [], [], []
        if peers[0][1] is None:                         # layout rows: time over the C-order time
            rs = [float(np.median(f.rested)) for g in groups for lay, _ in peers
                  for f in [fig(g, lay, lay, True)] if f.rested]
            out.append(f"| {case} | no copy | " + (
                f"{min(rs):.2f}–{max(rs):.2f}× the C-order time |" if rs else "not measured yet |"))
            continue
        for peer, text in peers:
            rs = []
            for g in groups:
                f = fig(g, peer)
                if f.rested:
                    rs.append(float(np.median(f.rested)))
                    times.append(float(np.median(f.rested_time)))
                    if f.bytes:
                        gbs.append(f.bytes / times[-1] / 1e9)
            text = text.format(threads=gthreads)
            if not rs:
                cells.append(f"{text}: not measured yet")
            elif len(rs) == 1:
                cells.append(f"{short_ratio(rs[0])} {text}")
            else:
                cells.append(f"{min(rs):.2f}–{max(rs):.2f}× {text}")
        if gbs:
            tcell = f"~{min(gbs):.0f}–{max(gbs):.0f} GB/s of J read"
        elif times:
            tcell = "~" + fmt_time(float(np.median(times)))
        else:
            tcell = "not measured yet"
        if not times:
            cells = ["not measured yet"]
        out.append(f"| {case} | {tcell} | {'; '.join(cells)} |")
    short, n_rows, n_measured = [], 0, 0
    for _, targets in SECTIONS:
        for t in targets:
            f = Figures(sessions, t)
            if t.need is None:
                continue
            n_rows += 1
            n_measured += bool(f.rested)
            if f.verdict() == "**NOT met**":
                fig = summary(f.rested, "s" if t.peer is None else "×")
                short.append(f"- {t.label.split(' — ')[0]}: {fig} (required {required(t)})")
    status = f"Rested figures exist for {n_measured} of the {n_rows} target rows of BENCHMARKS.md; "
    status += ("of those, these miss their target:" if short else
               "all of those meet their target." if n_measured else "")
    out += ["", status, *short, README_END]
    return "\n".join(out)


def update_readme(path, block):
    with open(path) as f:
        text = f.read()
    a, b = text.find(README_BEGIN), text.find(README_END)
    if a < 0 or b < a:
        print(f"{path}: headline markers not found; README left as it is")
        return
    with open(path, "w") as f:
        f.write(text[:a] + block + text[b + len(README_END):])
    print("wrote the headline table in", path)


# ---------------------------------------------------------------------------

def run_sessions(args):
    sessions, seconds = [], []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            js = os.path.join(tmp, "bench.json")
            cmd = [sys.executable, "-m", "pytest", os.path.join(ROOT, "bench"),
                   "-q", "-p", "no:cacheprovider", "--benchmark-only",
                   f"--benchmark-json={js}",
                   "--benchmark-min-rounds=" + ("5" if args.quick else "20"),
                   "--benchmark-max-time=" + ("0.2" if args.quick else "1.0"),
                   *args.pytest_args]
            print(f"session {run + 1}/{args.runs}:", " ".join(cmd), flush=True)
            t0 = time.time()
            rc = subprocess.run(cmd, cwd=ROOT).returncode
            seconds.append(time.time() - t0)
            if rc not in (0, 5):
                sys.exit(rc)
            with open(js) as f:
                data = json.load(f)
        groups = {}
        for b in data["benchmarks"]:
            groups.setdefault(b["group"], {})[impl_of(b)] = {
                "stats": {k: b["stats"][k] for k in ("min", "median", "mean", "rounds")},
                "extra_info": b.get("extra_info", {}),
            }
        sessions.append(groups)
    return sessions, seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default=os.path.join(ROOT, "BENCHMARKS.md"))
    ap.add_argument("--readme", default=os.path.join(ROOT, "README.md"),
                    help="README whose headline table (between the markers) is rewritten")
    ap.add_argument("--no-readme", action="store_true", help="leave the README alone")
    ap.add_argument("--quick", action="store_true",
                    help="fewer pytest-benchmark rounds (noisier numbers)")
    ap.add_argument("--runs", type=int, default=5,
                    help="benchmark sessions (ratios: median over sessions)")
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite the report from the saved sessions and their meta "
                         "(bench/results/) without running or reading the machine")
    ap.add_argument("pytest_args", nargs="*")
    args = ap.parse_args()

    if args.render_only:
        with open(SAVED) as f:
            sessions = json.load(f)
        meta = {}
        if os.path.exists(SAVED_META):
            with open(SAVED_META) as f:
                meta = json.load(f)
    else:
        now = lambda: datetime.datetime.now(datetime.timezone.utc)   # noqa: E731
        meta = {"date": now().date().isoformat(),
                "started": now().strftime("%H:%M UTC"),
                "command": " ".join(["python", "bench/report.py", *sys.argv[1:]]),
                "git": git_state(),
                "loadavg": {"before": [round(x, 2) for x in os.getloadavg()]},
                "read_gbs_before_1": read_bandwidth(1), "read_gbs_before_2": read_bandwidth(2)}
        sessions, seconds = run_sessions(args)
        meta["finished"] = now().strftime("%H:%M UTC")
        meta["session_seconds"] = seconds
        meta["loadavg"]["after"] = [round(x, 2) for x in os.getloadavg()]
        meta["read_gbs_1"], meta["read_gbs_2"] = read_bandwidth(1), read_bandwidth(2)
        meta["machine"] = machine_info()
        os.makedirs(os.path.dirname(SAVED), exist_ok=True)
        with open(SAVED, "w") as f:
            json.dump(sessions, f, indent=0)
        with open(SAVED_META, "w") as f:
            json.dump(meta, f, indent=1)
    plots, notes = plot_specs(sessions, meta)
    drawn = draw_plots(plots)
    with open(args.output, "w") as f:
        f.write(render(sessions, meta, (plots, notes, drawn, args.output)))
    print("wrote", args.output)
    if not args.no_readme:
        update_readme(args.readme, render_headline(sessions, meta))


if __name__ == "__main__":
    main()
