"""Run the benchmarks and write BENCHMARKS.md.

    python bench/report.py [--quick] [--output BENCHMARKS.md] [-- PYTEST ARGS]

Runs ``pytest bench/ --benchmark-only`` with a JSON report ``--runs`` times
(default 5), then writes, for each group, every implementation's median and
minimum time and its speed relative to gradchain (peer median / gradchain
median; > 1 means gradchain is faster), the issue's targets with the
measured ratio, GB/s for the bandwidth-bound groups, and the machine the
numbers came from.

This machine's memory bandwidth drifts by tens of percent from minute to
minute (it is shared), so one session can flatter either side of a
bandwidth-bound pair.  Each ratio is therefore taken per session and the
table reports the median over the sessions, with their range; the time
columns are from the session whose ratio is the median.
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

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# (group, peer test-id fragment, minimum ratio peer/gradchain, label)
TARGETS = [
    ("chain.vjp k=64 n=16 (prebuilt)", "numpy", 15.0, "prebuilt Chain.vjp k=64 n=16 vs NumPy loop"),
    ("chain.vjp k=64 n=16 (prebuilt)", "jax", 1.0, "prebuilt Chain.vjp k=64 n=16 vs jax.jit(lax.scan)"),
    ("vjp one-shot k=16 n=8 (list of arrays)", "numpy", 5.0, "one-shot vjp k=16 n=8 vs NumPy loop"),
    ("chain.vjp k=64 n=64 (prebuilt)", "numpy", 2.0, "Chain.vjp k=64 n=64 vs NumPy loop"),
    ("vjp one-shot k=64 n=64 (list of arrays)", "numpy", 2.0, "one-shot vjp k=64 n=64 vs NumPy loop"),
    ("J.T @ v 4096x4096 float64 C-order", "numpy", 0.95, "J.T @ v 4096² float64 vs NumPy"),
    ("J.T @ v 4096x4096 float32 C-order", "numpy", 0.95, "J.T @ v 4096² float32 vs NumPy"),
    ("J.T @ v 8192x8192 float64 C-order", "numpy", 0.95, "J.T @ v 8192² float64 vs NumPy"),
    ("J.T @ v 8192x8192 float32 C-order", "numpy", 0.95, "J.T @ v 8192² float32 vs NumPy"),
    ("batch B=256 through k=8 n=512", "numpy", 0.9, "B=256 through k=8 n=512 vs NumPy G = G @ J"),
]
TARGETS4 = [
    ("jacobian k=64 dense 16x16", "multi_dot", 100.0, "jacobian k=64 16x16 vs np.linalg.multi_dot"),
    ("jacobian k=64 dense 16x16", "numpy loop", 1.5, "jacobian k=64 16x16 vs NumPy left-to-right loop"),
    ("jacobian dims [2000, 10, 2000, 10, 2000]", "multi_dot", 0.95,
     "jacobian dims [2000, 10, 2000, 10, 2000] vs multi_dot (same multiply-adds, asserted)"),
    ("per-sample vjp B=4096 k=8 n=32", "numpy", 2.0, "per-sample B=4096 k=8 n=32 vs NumPy loop"),
    ("per-sample vjp B=4096 k=8 n=32", "jax", 1.0, "per-sample B=4096 k=8 n=32 vs jax.jit(lax.scan, einsum)"),
    ("per-sample jacobian B=4096 k=8 n=32", "numpy", None,
     "per-sample jacobian B=4096 k=8 n=32 vs NumPy batched matmul loop"),
    ("B=256 cotangents through [512, 8, 512, 8, 512]", "numpy", 1.5,
     "B=256 through [512, 8, 512, 8, 512]: plan vs propagation G = G @ J"),
]
_MLP = "compose(Affine, Tanh)x4 + SquaredError, value_and_grad, "
TARGETS3 = [
    (_MLP + "n=16", "numpy", 5.0, "n=16 vs NumPy by hand"),
    (_MLP + "n=16", "torch", 20.0, "n=16 vs PyTorch autograd"),
    (_MLP + "n=16", "jax", None, "n=16 vs jax.jit(jax.value_and_grad)"),
    (_MLP + "n=64", "numpy", 3.0, "n=64 vs NumPy by hand"),
    (_MLP + "n=256", "numpy", 1.5, "n=256 vs NumPy by hand"),
    (_MLP + "batch B=256, n=64", "numpy", 1.0, "batch B=256, n=64 vs NumPy by hand"),
    (_MLP + "batch B=256, n=64", "torch", 1.0, "batch B=256, n=64 vs PyTorch autograd"),
    (_MLP + "batch B=256, n=64", "jax", 1.0, "batch B=256, n=64 vs jax.jit(jax.value_and_grad)"),
]
# layout groups: (group, layout id, max slowdown vs the C-order row)
LAYOUT_TARGETS = [
    (f"J.T @ v 4096x4096 {dt} layouts", lay, 1.5)
    for dt in ("float64", "float32") for lay in ("F", "rows", "elements")
]


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


def machine():
    info = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            key, _, val = line.partition(":")
            if key.strip() in ("Model name", "L2 cache", "L3 cache"):
                info[key.strip()] = val.strip()
    except OSError:
        pass
    info["cores"] = os.cpu_count()
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        info["memory"] = f"{kb / 2**20:.0f} GiB"
    except OSError:
        pass
    import gradchain
    import scipy
    info["python"] = platform.python_version()
    info["numpy"] = np.__version__
    info["scipy"] = scipy.__version__
    try:
        import jax
        info["jax"] = jax.__version__
    except ImportError:
        info["jax"] = "not installed (its rows skip)"
    try:
        import torch
        info["torch"] = f"{torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        info["torch"] = "not installed (its rows skip)"
    info["gradchain"] = (f"{gradchain.__version__}, kernels {gradchain.simd_target()}, "
                         f"OpenMP {'on' if gradchain.openmp_enabled() else 'off'}, "
                         f"{gradchain.get_num_threads()} threads")
    return info


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
    return f"{s * 1e3:.2f} ms"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default=os.path.join(ROOT, "BENCHMARKS.md"))
    ap.add_argument("--quick", action="store_true",
                    help="fewer rounds (noisier numbers)")
    ap.add_argument("--runs", type=int, default=5,
                    help="benchmark sessions (ratios: median over sessions)")
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite the report from the last saved sessions "
                         "(bench/results/sessions.json) without running")
    ap.add_argument("pytest_args", nargs="*")
    args = ap.parse_args()

    saved = os.path.join(HERE, "results", "sessions.json")
    sessions = []
    if args.render_only:
        with open(saved) as f:
            sessions = json.load(f)
    for run in range(0 if args.render_only else args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            js = os.path.join(tmp, "bench.json")
            cmd = [sys.executable, "-m", "pytest", os.path.join(ROOT, "bench"),
                   "-q", "-p", "no:cacheprovider", "--benchmark-only",
                   f"--benchmark-json={js}",
                   "--benchmark-min-rounds=" + ("5" if args.quick else "20"),
                   "--benchmark-max-time=" + ("0.2" if args.quick else "1.0"),
                   *args.pytest_args]
            print(f"session {run + 1}/{args.runs}:", " ".join(cmd), flush=True)
            rc = subprocess.run(cmd, cwd=ROOT).returncode
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
    # the date and the read-bandwidth probe belong to the sessions: measured
    # right after them, saved with them, and reused by --render-only
    saved_meta = os.path.join(HERE, "results", "sessions-meta.json")
    if args.render_only and os.path.exists(saved_meta):
        with open(saved_meta) as f:
            meta = json.load(f)
    else:
        meta = {"date": datetime.date.today().isoformat(),
                "read_gbs_1": read_bandwidth(1), "read_gbs_2": read_bandwidth(2)}
    if not args.render_only:
        os.makedirs(os.path.dirname(saved), exist_ok=True)
        with open(saved, "w") as f:
            json.dump(sessions, f, indent=0)
        with open(saved_meta, "w") as f:
            json.dump(meta, f, indent=0)

    def ratios(group, num, den, stat="median"):
        """num stat / den stat in each session that has both."""
        out = []
        for gs in sessions:
            g = gs.get(group, {})
            if num in g and den in g:
                out.append(g[num]["stats"][stat] / g[den]["stats"][stat])
        return out

    def paired(group, name, key="paired"):
        """Per-session interleaved ratios recorded by the test `name`."""
        out = []
        for gs in sessions:
            b = gs.get(group, {}).get(name)
            if b is not None and key in b["extra_info"]:
                out.append(b["extra_info"][key][0])
        return out

    def summary(rs):
        med = float(np.median(rs))
        if len(rs) == 1:
            return med, f"{med:.2f}×"
        return med, f"{med:.2f}× ({min(rs):.2f}–{max(rs):.2f})"

    bw1, bw2 = meta["read_gbs_1"], meta["read_gbs_2"]
    lines = []
    w = lines.append
    w("# gradchain benchmarks\n")
    w("Produced by `python bench/report.py` (pytest-benchmark; every row of a group "
      "was timed in the same session). Ratios are the peer's median time divided by "
      "gradchain's: above 1 means gradchain is faster. float64 unless the group "
      "says otherwise.\n")
    w(f"The suite ran {len(sessions)} times; each ratio is the median of the "
      "per-session ratios, with their range in brackets (the shared machine's memory "
      "bandwidth drifts between sessions, which moves the bandwidth-bound rows). The "
      "time columns come from the session with the median ratio.\n")
    w(f"Measured {meta['date']} on:\n")
    for k, v in machine().items():
        w(f"- {k}: {v}")
    w(f"- read bandwidth (np.sum over 1 GiB): {bw1:.1f} GB/s on 1 thread, "
      f"{bw2:.1f} GB/s on 2 threads\n")

    w("## Targets (issue 2: the core chain products)\n")
    w("| target | required | measured | |")
    w("|---|---|---|---|")
    interference = []
    for group, peer, need, label in TARGETS:
        # bandwidth-bound single products: alternating rested blocks (§)
        rs = paired(group, "gradchain", "blocked")
        mark = " §" if rs else ""
        rs = rs or ratios(group, peer, "gradchain")
        if not rs:
            w(f"| {label} | ≥ {need}× | not run ({peer} absent or deselected) | |")
            continue
        med, txt = summary(rs)
        txt += mark
        w(f"| {label} | ≥ {need}× | {txt} | {'met' if med >= need else 'NOT met'} |")
        pr = paired(group, "gradchain")
        if pr:
            interference.append((label, pr))
    for group, lay, most in LAYOUT_TARGETS:
        rs = paired(group, lay)
        if not rs:
            continue
        med, txt = summary(rs)
        w(f"| {group.replace(' layouts', '')}: {lay} layout vs C-order time | "
          f"≤ {most}× | {txt} † | {'met' if med <= most else 'NOT met'} |")
    w("")
    w("## Targets (issue 3: maps and losses, value_and_grad of "
      "compose(Affine(W_i, b_i), Tanh) x 4 with SquaredError, W_i n x n)\n")
    w("| target | required | measured | |")
    w("|---|---|---|---|")
    for group, peer, need, label in TARGETS3:
        rs = ratios(group, peer, "gradchain")
        if not rs:
            w(f"| {label} | {'≥ ' + str(need) + '×' if need else 'none'} | "
              f"not run ({peer} absent or deselected) | |")
            continue
        med, txt = summary(rs)
        verdict = "" if need is None else ("met" if med >= need else "NOT met")
        w(f"| {label} | {'≥ ' + str(need) + '×' if need else '(reported)'} | "
          f"{txt} | {verdict} |")
    w("")
    w("## Targets (issue 4: accumulation and per-sample chains)\n")
    w("| target | required | measured (medians) | measured (best times) "
      "| measured (interleaved pairs) ‡ | |")
    w("|---|---|---|---|---|---|")
    for group, peer, need, label in TARGETS4:
        req = f"≥ {need}×" if need else "(reported)"
        rs = ratios(group, peer, "gradchain")
        if not rs:
            w(f"| {label} | {req} | not run ({peer} absent or deselected) | | | |")
            continue
        med, txt = summary(rs)
        _, txt_min = summary(ratios(group, peer, "gradchain", "min"))
        # a bandwidth-bound row: its peer was also timed interleaved (‡),
        # which decides the verdict
        pr = paired(group, "gradchain") if peer == "numpy" else []
        txt_pr = ""
        if pr:
            med, txt_pr = summary(pr)
        verdict = "" if need is None else ("met" if med >= need else "NOT met")
        w(f"| {label} | {req} | {txt} | {txt_min} | {txt_pr} | {verdict} |")
    for gs in sessions[:1]:
        g = gs.get("plan for k=500 links", {})
        for name, b in g.items():
            w(f"| plan for k = 500 links | < 100 ms | {fmt_time(b['stats']['median'])} "
              f"| {fmt_time(b['stats']['min'])} | | "
              f"{'met' if b['stats']['median'] < 0.1 else 'NOT met'} |")
    w("")
    w("§ Alternating rested blocks (`blocked_ratio` in bench/conftest.py), "
      "measured inside the gradchain test: 12 blocks of 15 calls of each side, which "
      "side goes first alternating, 0.3 s of rest before each block so that idle "
      "thread pools are asleep; the ratio is the median over block pairs of the "
      "block medians. This shared machine's memory bandwidth drifts by tens of "
      "percent between the rounds of one pytest-benchmark test and the next, so the "
      "separately timed medians of these bandwidth-bound pairs (in the tables below) "
      "swing by ±40% between sessions; back-to-back blocks see the same bandwidth.\n")
    w("† Interleaved measurement: inside the layout's test, `paired_ratio` "
      "(bench/conftest.py) times the C-order and the other layout back to back, 30 "
      "pairs alternating which goes first, over the same values, and takes the "
      "median of the per-pair ratios.\n")
    w("‡ Interleaved with the peer: inside the gradchain test, `paired_ratio` times "
      "one gradchain call and one NumPy call back to back, 30 pairs alternating "
      "which goes first, and takes the median of the per-pair ratios (the range "
      "in brackets is over sessions). Used for the per-sample row, which reads "
      "256 MiB of Jacobians per call: its separately timed rounds swing with the "
      "machine's memory bandwidth, which other tenants of the host move by tens "
      "of percent from minute to minute, while both calls of a pair see the same "
      "bandwidth. Where it is given it decides the row's verdict.\n")
    if interference:
        w("### Interleaved with NumPy calls\n")
        w("The same pairing against NumPy (one gradchain call, one NumPy call, "
          "alternately) measures something else: on 2 cores, an idle OpenBLAS pool "
          "keeps spinning for a while after each NumPy call and libgomp's pool after "
          "each gradchain call, so each library runs while the other's threads "
          "hold a core. Both slow down; this is what code that alternates NumPy "
          "BLAS calls and gradchain calls sees on a small machine "
          "(`OMP_WAIT_POLICY=passive`, or one of the two pools limited to 1 "
          "thread with threadpoolctl, mostly removes it).\n")
        w("| product | NumPy time / gradchain time, alternating |")
        w("|---|---|")
        for label, pr in interference:
            w(f"| {label} | {summary(pr)[1]} |")
        w("")

    w("## All groups\n")
    all_groups = sorted({g for gs in sessions for g in gs})
    for group in all_groups:
        names = {n for gs in sessions for n in gs.get(group, {})}
        base_name = ("gradchain" if "gradchain" in names
                     else "C" if "C" in names else sorted(names)[0])
        peers = sorted({n for gs in sessions for n in gs.get(group, {})})
        # the session whose first peer ratio is the median one
        key = [p for p in peers if p != base_name][:1]
        cand = [gs for gs in sessions if group in gs and base_name in gs[group]]
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
            rs = ratios(group, name, base_name)
            row = (f"| {name} | {fmt_time(st['median'])} | {fmt_time(st['min'])} | "
                   f"{st['rounds']} | {summary(rs)[1]} |")
            if has_bytes:
                row += f" {b['extra_info']['bytes'] / st['median'] / 1e9:.1f} |"
            w(row)
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
    with open(args.output, "w") as f:
        f.write("\n".join(lines))
    print("wrote", args.output)


if __name__ == "__main__":
    main()
