"""Thread scaling of a per-sample chain (issue 4): B samples (default 4096),
k = 8 links of 32x32, float64.  vjp and jvp against the NumPy loops
g = (g[:, None, :] @ J)[:, 0, :] and v = (J @ v[:, :, None])[:, :, 0], and
Chain.jacobian against the batched-matmul loop M = J @ M.

    python bench/per_sample_scaling.py [--batch 4096] [--threads 1,2,4,8,16]

GB/s counts the per-sample Jacobians read once (B k n^2 8 bytes); with B
large enough that they outgrow the last-level cache it is memory bandwidth.
"""
import argparse
import os
import timeit

import numpy as np

import gradchain
from test_bench_accumulate import (numpy_jacobian_loop, numpy_per_sample,
                                   per_sample_problem)


def best(f, number=5, repeat=7):
    return min(timeit.repeat(f, number=number, repeat=repeat)) / number


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default=None)
    ap.add_argument("--batch", type=int, default=4096)
    args = ap.parse_args()
    ncpu = os.cpu_count()
    threads = ([int(t) for t in args.threads.split(",")] if args.threads
               else sorted({t for t in (1, 2, 4, 8, 16, ncpu) if t <= ncpu}))
    B, k, n = args.batch, 8, 32
    Js, G = per_sample_problem(B, k, n)
    V = np.random.default_rng(0).standard_normal((B, n))
    vjp_loop = lambda: numpy_per_sample(Js, G)      # noqa: E731
    jac_loop = lambda: numpy_jacobian_loop(Js)      # noqa: E731

    def jvp_loop():
        v = V
        for J in Js:
            v = (J @ v[:, :, None])[:, :, 0]
        return v

    chain = gradchain.Chain(Js)
    assert np.allclose(chain.vjp(G), vjp_loop(), rtol=1e-10, atol=1e-12)
    assert np.allclose(chain.jvp(V), jvp_loop(), rtol=1e-10, atol=1e-12)
    assert np.allclose(chain.jacobian(), jac_loop(), rtol=1e-10, atol=1e-12)
    nbytes = sum(J.nbytes for J in Js)
    rows = [("vjp", lambda: chain.vjp(G), vjp_loop),
            ("jvp", lambda: chain.jvp(V), jvp_loop),
            ("jacobian", chain.jacobian, jac_loop)]
    print(f"cores {ncpu}; B = {B}, k = {k}, n = {n}, float64; "
          f"{nbytes / 2**20:.0f} MiB of per-sample Jacobians\n")
    print("| product | NumPy loop | " + " | ".join(f"{t} thr" for t in threads)
          + " |")
    print("|---|---|" + "---|" * len(threads))
    for name, ours, peer in rows:
        t_np = best(peer, number=2 if name == "jacobian" else 5)
        cells = []
        for t in threads:
            gradchain.set_num_threads(t)
            s = best(ours, number=2 if name == "jacobian" else 5)
            gb = f", {nbytes / s / 1e9:.0f} GB/s" if name != "jacobian" else ""
            cells.append(f"{s * 1e3:.2f} ms ({t_np / s:.2f}x{gb})")
        gradchain.set_num_threads(None)
        gb = f", {nbytes / t_np / 1e9:.0f} GB/s" if name != "jacobian" else ""
        print(f"| {name} | {t_np * 1e3:.2f} ms{gb} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
