"""Instruction counts of gradchain's hot paths, for before/after checks.

    python bench/callgrind_hot.py CASE N

runs case CASE N times after one warm-up call; under
``valgrind --tool=callgrind`` the difference between two N gives the
instructions per call, free of start-up.  ``bench/callgrind_compare.sh``
runs every case for two checkouts and prints the table.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.getcwd())     # the checkout being measured
import gradchain as gc              # noqa: E402

rng = np.random.default_rng(0)


def _dense(k, n):
    return [rng.standard_normal((n, n)) for _ in range(k)]


def case(name):
    if name == "oneshot_k16_n8":
        Js, g = _dense(16, 8), rng.standard_normal(8)
        return lambda: gc.vjp(Js, g)
    if name == "prebuilt_k64_n64":
        c, g = gc.Chain(_dense(64, 64)), rng.standard_normal(64)
        out = np.empty(64)
        return lambda: c.vjp(g, out=out)
    if name == "oneshot_k64_n64":
        Js, g = _dense(64, 64), rng.standard_normal(64)
        return lambda: gc.vjp(Js, g)
    if name == "jacobian_k64_n16":
        Js = _dense(64, 16)
        return lambda: gc.jacobian(Js)
    if name == "block_B32_k8_n64":
        c, G = gc.Chain(_dense(8, 64)), rng.standard_normal((32, 64))
        return lambda: c.vjp(G)
    if name == "accumulate_B256":
        # a narrow link: pre-multiplying wins, the bracketing executor runs
        Js = [rng.standard_normal((64, 64)), rng.standard_normal((4, 64)),
              rng.standard_normal((64, 4)), rng.standard_normal((64, 64))]
        c, G = gc.Chain(Js), rng.standard_normal((256, 64))
        return lambda: c.vjp(G)
    if name == "per_sample_k2000":
        J = rng.standard_normal((2000, 8, 4, 4))
        Js, G = list(J), rng.standard_normal((8, 4))
        return lambda: gc.vjp(Js, G)
    if name == "per_sample_jacobian":
        Js = [rng.standard_normal((16, 8, 8)) for _ in range(8)]
        c = gc.Chain(Js)
        return lambda: c.jacobian()
    if name == "structured_k32":
        n = 256
        Js = [gc.Diagonal(rng.standard_normal(n)) if i % 2 else
              rng.standard_normal((n, n)) for i in range(32)]
        c, g = gc.Chain(Js), rng.standard_normal(n)
        return lambda: c.vjp(g)
    if name == "compose_fast_n16":
        n = 16
        maps = []
        for _ in range(4):
            maps += [gc.Affine(rng.standard_normal((n, n))), gc.Tanh()]
        f = gc.compose(*maps, loss=gc.SquaredError(np.zeros(n)))
        x = rng.standard_normal(n)
        return lambda: f.value_and_grad(x)
    if name == "compose_batch_B64_n64":
        n = 64
        maps = []
        for _ in range(3):
            maps += [gc.Affine(rng.standard_normal((n, n))), gc.Tanh()]
        maps += [gc.Softmax()]
        f = gc.compose(*maps, loss=gc.CrossEntropy(np.arange(64) % n))
        X = rng.standard_normal((64, n))
        return lambda: f.value_and_grad(X)
    raise SystemExit(f"unknown case {name}")


CASES = ["oneshot_k16_n8", "prebuilt_k64_n64", "oneshot_k64_n64",
         "jacobian_k64_n16", "block_B32_k8_n64", "accumulate_B256",
         "per_sample_k2000", "per_sample_jacobian", "structured_k32",
         "compose_fast_n16", "compose_batch_B64_n64"]

if __name__ == "__main__":
    import gc as _gc
    _gc.disable()       # collections at varying points add noise to the counts
    print("gradchain from", os.path.dirname(gc.__file__), file=sys.stderr)
    fn = case(sys.argv[1])
    fn()
    for _ in range(int(sys.argv[2])):
        fn()
