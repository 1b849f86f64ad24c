"""Thread scaling of a per-sample chain (issue 4): B = 4096 samples, k = 8
links of 32x32, float64, vjp, against the NumPy loop
g = (g[:, None, :] @ J)[:, 0, :].

    python bench/per_sample_scaling.py [--threads 1,2,4,8,16]
"""
import argparse
import os
import timeit

import numpy as np

import gradchain


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default=None)
    args = ap.parse_args()
    ncpu = os.cpu_count()
    threads = ([int(t) for t in args.threads.split(",")] if args.threads
               else sorted({t for t in (1, 2, 4, 8, 16, ncpu) if t <= ncpu}))
    rng = np.random.default_rng(0)
    B, k, n = 4096, 8, 32
    Js = [rng.standard_normal((B, n, n)) / np.sqrt(n) for _ in range(k)]
    G = rng.standard_normal((B, n))

    def loop(G):
        g = G
        for J in reversed(Js):
            g = (g[:, None, :] @ J)[:, 0, :]
        return g

    chain = gradchain.Chain(Js)
    assert np.allclose(chain.vjp(G), loop(G), rtol=1e-10, atol=1e-12)
    t_np = min(timeit.repeat(lambda: loop(G), number=5, repeat=7)) / 5
    nbytes = sum(J.nbytes for J in Js)
    print(f"cores {ncpu}; NumPy loop {t_np * 1e3:.2f} ms "
          f"({nbytes / t_np / 1e9:.0f} GB/s)\n")
    print("| threads | gradchain vjp | GB/s | NumPy loop / gradchain |")
    print("|---|---|---|---|")
    for t in threads:
        gradchain.set_num_threads(t)
        s = min(timeit.repeat(lambda: chain.vjp(G), number=5, repeat=7)) / 5
        print(f"| {t} | {s * 1e3:.2f} ms | {nbytes / s / 1e9:.0f} | {t_np / s:.2f}x |")
    gradchain.set_num_threads(None)


if __name__ == "__main__":
    main()
