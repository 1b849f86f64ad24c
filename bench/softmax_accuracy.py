"""Issue 12, item 2: the softmax family with shifted logits, max ulp error
against a long-double reference (the shifted forms), gradchain / NumPy-SciPy
side by side.  python bench/softmax_accuracy.py"""
import numpy as np, gradchain as gc, scipy.special as ss
L = np.longdouble
def ref_rows(x):
    xl = x.astype(L); m = xl.max(axis=1, keepdims=True)
    e = np.exp(xl - m); S = e.sum(axis=1, keepdims=True)
    sm = e / S; ls = (xl - m) - np.log(S); lse = (m + np.log(S))[:, 0]
    return sm, ls, lse
def ulp(got, ref, dt):
    sp = np.spacing(np.abs(ref).astype(dt)).astype(L)
    sp = np.maximum(sp, np.finfo(dt).smallest_subnormal)
    return float(np.max(np.abs(got.astype(L) - ref) / sp))
rng = np.random.default_rng(0)
B, n = 32, 1000
for dt in (np.float32, np.float64):
    for off in (0.0, 1e3, 1e5, 1e6):
        x = (rng.standard_normal((B, n)) + off).astype(dt)
        lab = rng.integers(0, n, B)
        sm, ls, lse = ref_rows(x)
        xl=x.astype(L); mm=xl.max(axis=1); ce_ref = np.log(np.exp(xl-mm[:,None]).sum(axis=1)) - (xl[np.arange(B), lab]-mm)
        gce_ref = sm.copy(); gce_ref[np.arange(B), lab] -= 1
        r = {}
        r["softmax"] = (ulp(gc.compose(gc.Softmax())(x), sm, dt), ulp(ss.softmax(x, axis=1), sm, dt))
        r["logsoftmax"] = (ulp(gc.compose(gc.LogSoftmax())(x), ls, dt), ulp(ss.log_softmax(x, axis=1), ls, dt))
        v, g = gc.CrossEntropy(lab).value_and_grad(x)
        r["CE val"] = (ulp(np.asarray(v).astype(dt), ce_ref, dt), ulp((ss.logsumexp(x, axis=1) - x[np.arange(B), lab]).astype(dt), ce_ref, dt))
        gs = ss.softmax(x, axis=1); gs[np.arange(B), lab] -= 1
        r["CE grad"] = (ulp(g, gce_ref, dt), ulp(gs, gce_ref, dt))
        v, g = gc.LogSumExp().value_and_grad(x)
        r["LSE val"] = (ulp(np.asarray(v).astype(dt), lse, dt), ulp(ss.logsumexp(x, axis=1), lse, dt))
        r["LSE grad"] = (ulp(g, sm, dt), ulp(ss.softmax(x, axis=1), sm, dt))
        print(np.dtype(dt).name, f"{off:g}", "  ".join(f"{k} {a:.1f}/{b:.1f}" for k, (a, b) in r.items()))
