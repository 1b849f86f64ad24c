"""The per-sample vjp (issue 4: B = 4096, k = 8, n = 32, float64) against
the NumPy loop g = (g[:, None, :] @ J)[:, 0, :] and against the machine's
read floor for the same bytes, sampled over a stretch of time.

Both sides read the same 256 MiB of per-sample Jacobians per call, so on a
machine whose memory bandwidth is shared with other tenants the ratio moves
with that bandwidth.  Every `--every` seconds for `--minutes` minutes this
times, back to back and alternating which goes first, `--pairs` calls of

- gradchain's Chain.vjp,
- the NumPy loop,
- the read floor: np.sum over the same arrays, on as many threads as
  gradchain uses (each thread summing its share of the arrays),

and prints one line per sample (medians over the pairs), then a summary of
NumPy / gradchain against the floor's GB/s.

    python bench/per_sample_bandwidth.py [--minutes 5] [--every 10]
"""
import argparse
import time

import numpy as np

import gradchain
from test_bench_accumulate import numpy_per_sample, per_sample_problem, read_floor


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--every", type=float, default=10.0)
    ap.add_argument("--pairs", type=int, default=10)
    args = ap.parse_args()
    Js, G = per_sample_problem()
    chain = gradchain.Chain(Js)
    nt = gradchain.get_num_threads()
    nbytes = sum(J.nbytes for J in Js)

    loop = lambda: numpy_per_sample(Js, G)          # noqa: E731

    floor = read_floor(Js, nt)

    assert np.allclose(chain.vjp(G), loop(), rtol=1e-10, atol=1e-12)
    fns = {"gradchain": lambda: chain.vjp(G), "numpy": loop, "floor": floor}
    print(f"gradchain threads {nt}; {nbytes / 2**20:.0f} MiB read per call\n")
    print("| t (s) | floor GB/s | gradchain | NumPy loop | NumPy / gradchain "
          "| gradchain / floor time |")
    print("|---|---|---|---|---|---|")
    rows = []
    start = time.perf_counter()
    while time.perf_counter() - start < args.minutes * 60:
        t_sample = time.perf_counter()
        times = {name: [] for name in fns}
        for i in range(args.pairs):
            order = list(fns.items())
            if i % 2:
                order.reverse()
            for name, fn in order:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        med = {name: float(np.median(v)) for name, v in times.items()}
        bw = nbytes / med["floor"] / 1e9
        rows.append((bw, med["numpy"] / med["gradchain"],
                     med["gradchain"] / med["floor"]))
        print(f"| {t_sample - start:.0f} | {bw:.1f} | "
              f"{med['gradchain'] * 1e3:.2f} ms | {med['numpy'] * 1e3:.2f} ms | "
              f"{rows[-1][1]:.2f}x | {rows[-1][2]:.2f} |", flush=True)
        time.sleep(max(0.0, args.every - (time.perf_counter() - t_sample)))
    bw, ratio, eff = (np.array(c) for c in zip(*rows))
    print(f"\n{len(rows)} samples; NumPy / gradchain: median {np.median(ratio):.2f}x "
          f"(range {ratio.min():.2f}-{ratio.max():.2f}); gradchain time / read "
          f"floor time: median {np.median(eff):.2f}")
    for lo, hi in ((0, 40), (40, 50), (50, 1e9)):
        sel = (bw >= lo) & (bw < hi)
        if sel.any():
            label = f"floor >= {lo} GB/s" if hi > 1e8 else f"floor {lo}-{hi} GB/s"
            print(f"- {label}: {sel.sum()} samples, NumPy / gradchain median "
                  f"{np.median(ratio[sel]):.2f}x")


if __name__ == "__main__":
    main()
