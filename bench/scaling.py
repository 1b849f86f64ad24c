"""Thread scaling of the OpenMP kernels: one big J^T v / J v per layout.

    python bench/scaling.py [--n 8192] [--threads 1,2,4,8,16]

Prints a Markdown table of the best time and GB/s of J read at each thread
count (set with gradchain.set_num_threads), with NumPy's J.T @ v beside it
for reference.  Used to check that the threaded kernels scale beyond the
2 cores of the development machine.
"""
import argparse
import os
import timeit

import numpy as np

import gradchain


def best(fn, reps):
    fn()
    return min(timeit.repeat(fn, number=1, repeat=reps))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--threads", default=None)
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    ncpu = os.cpu_count()
    threads = ([int(t) for t in args.threads.split(",")] if args.threads
               else sorted({t for t in (1, 2, 4, 8, 16, ncpu) if t <= ncpu}))
    n = args.n
    rng = np.random.default_rng(0)
    print(f"cores {ncpu}, kernels {gradchain.simd_target()}, OpenMP "
          f"{gradchain.openmp_enabled()}, n = {n}\n")
    print("| product | dtype | layout | " + " | ".join(f"{t} thr" for t in threads)
          + " | NumPy |")
    print("|---|---|---|" + "---|" * (len(threads) + 1))
    for dtype in (np.float64, np.float32):
        J = rng.standard_normal((n, n), dtype=np.float32).astype(dtype)
        v = rng.standard_normal(n).astype(dtype)
        for layout, A in (("C", J), ("F", np.asfortranarray(J))):
            for prod in ("J.T @ v", "J @ v"):
                chain = gradchain.Chain([A])
                fn = chain.vjp if prod == "J.T @ v" else chain.jvp
                out = np.empty(n, dtype)
                cells = []
                for t in threads:
                    gradchain.set_num_threads(t)
                    s = best(lambda: fn(v, out), args.reps)
                    cells.append(f"{s * 1e3:.2f} ms ({A.nbytes / s / 1e9:.0f} GB/s)")
                gradchain.set_num_threads(None)
                ref = (lambda: A.T @ v) if prod == "J.T @ v" else (lambda: A @ v)
                s = best(ref, args.reps)
                cells.append(f"{s * 1e3:.2f} ms ({A.nbytes / s / 1e9:.0f} GB/s)")
                print(f"| {prod} | {np.dtype(dtype).name} | {layout} | "
                      + " | ".join(cells) + " |")
            del A
    print()


if __name__ == "__main__":
    main()
