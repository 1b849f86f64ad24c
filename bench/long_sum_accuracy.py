"""Issue 12, item 1: one row of m terms, gc.jvp([J], v) against np.dot and
np.sum(a*b), relative error in eps against a long-double reference (mean
over trials), contiguous and through a strided view J[:, ::2]."""
import sys, numpy as np, gradchain as gc
L = np.longdouble
ms = [int(float(a)) for a in sys.argv[1:]] or [10**5, 10**6, 10**7]
rng = np.random.default_rng(0)
for dt in (np.float32, np.float64):
    eps = float(np.finfo(dt).eps)
    for m in ms:
        for strided in (False, True):
            errs = {"gc": [], "np.dot": [], "sum(a*b)": []}
            for t in range(3):
                if strided:
                    buf = rng.random((1, 2 * m), dtype=dt) if dt == np.float32 else rng.random((1, 2 * m))
                    J = buf[:, ::2]
                else:
                    J = rng.random((1, m), dtype=dt) if dt == np.float32 else rng.random((1, m))
                v = rng.random(m).astype(dt)
                ref = np.sum(J[0].astype(L) * v.astype(L))
                for k, val in (("gc", gc.jvp([J], v)[0]), ("np.dot", np.dot(J[0], v)), ("sum(a*b)", np.sum(J[0] * v))):
                    errs[k].append(float(abs(L(val) - ref) / abs(ref)) / eps)
            print(f"{np.dtype(dt).name} m={m:.0e} {'strided' if strided else 'contig '}  " +
                  "  ".join(f"{k} {np.mean(e):8.2f}" for k, e in errs.items()), flush=True)
