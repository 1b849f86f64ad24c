"""Issue 12, item 8: the elementwise maps' max error in ulp of the result's
dtype against a long-double (80-bit) reference, on a grid that includes the
extremes (tiny, subnormal, near the overflow and underflow thresholds, +-0,
+-inf, NaN, large |x| for sin and cos) and random values.

    python bench/elementwise_accuracy.py [--arch ARCH ...]

Without --arch it measures gradchain as built (the kernel the CPU
dispatches to, gradchain.simd_target()).  With --arch (x86-64, x86-64-v3,
x86-64-v4, ...) it also compiles csrc/gc_maps.c alone for each -march, with
the build's flags and without the run-time dispatch, and measures that
(every clone the dispatch may pick, on any one machine that runs them all).

A row is "name dtype: max ulp (at x), special values ok/BAD".  A special
value (NaN, +-inf, or 0 where the reference rounds to one) must match
exactly, sign of zero included; its ulp is then 0.  The ulp of a finite result is
|got - ref| / spacing(ref rounded to the dtype), the spacing at least the
smallest subnormal.  Derivative rows are vjp(x, 1) of the map: Softplus'
(the sigmoid), Sin's (cos), Cos' (-sin).
"""
import argparse
import ctypes
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
import gradchain as gc  # noqa: E402

L = np.longdouble
CODES = {"Tanh": 1, "Sigmoid": 2, "Softplus": 5, "Exp": 6, "Log": 7, "Sin": 8, "Cos": 9}


def ld_sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def ld_softplus(x):
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


# name: (long-double reference of the value, which derivative row, if any)
REFS = {
    "Exp": np.exp, "Log": np.log, "Sigmoid": ld_sigmoid, "Softplus": ld_softplus,
    "Sin": np.sin, "Cos": np.cos, "Tanh": np.tanh,
}
DERIVS = {"Softplus": ("sigmoid", ld_sigmoid), "Sin": ("cos", np.cos),
          "Cos": ("-sin", lambda x: -np.sin(x))}


def grid(name, dt, seed=0):
    """The inputs for one map and dtype (a float array of dtype dt)."""
    fi = np.finfo(dt)
    rng = np.random.default_rng(seed)
    sub, tiny, big = float(fi.smallest_subnormal), float(fi.tiny), float(fi.max)
    lsub, ltiny, lbig = np.log(L(sub)), np.log(L(tiny)), np.log(L(big))
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, sub, -sub, tiny, -tiny, big, -big]
    mags = np.logspace(np.log10(sub), np.log10(big) - 1e-3, 40001, dtype=L)
    parts = [special, mags, -mags]
    if name in ("Exp", "Sigmoid", "Softplus", "Tanh"):
        lo, hi = float(lsub) - 5, float(lbig) + 5
        parts += [np.linspace(lo, hi, 200001)]
        for c in (lbig, ltiny, lsub, np.log(L(sub) / 2)):
            parts += [np.linspace(c - L(1e-3) * abs(c), c + L(1e-3) * abs(c), 4001)]
            parts += [np.linspace(-c - L(1e-3) * abs(c), -c + L(1e-3) * abs(c), 4001)]
        parts += [rng.standard_normal(20000) * 20, rng.uniform(lo, hi, 20000)]
    elif name == "Log":
        eps = float(fi.eps)
        k = np.arange(-2000, 2001)
        parts += [1 + k * (eps / 2), 1 + np.logspace(np.log10(eps), 0, 4001),
                  1 - np.logspace(np.log10(eps), -0.3, 4001),
                  np.ldexp(1.0, np.arange(fi.minexp - fi.nmant, fi.maxexp)),
                  np.linspace(0, 4, 100001), rng.uniform(0, 10, 20000),
                  np.exp(rng.uniform(float(lsub), float(lbig), 20000)),
                  -rng.uniform(0, 10, 100)]
    else:                                          # Sin, Cos
        kk = np.arange(-200000, 200001)
        near = (kk * (np.pi / 2)).astype(dt)       # the doubles nearest k pi/2
        parts += [np.linspace(-10, 10, 200001), near,
                  np.nextafter(near, np.inf), np.nextafter(near, -np.inf),
                  rng.uniform(-1e6, 1e6, 40000), rng.uniform(-1e3, 1e3, 40000),
                  [1e5, -1e5, 1e6, -1e6, 1e7, 1e10, 1e15, 1e22, -1e22, 1e30, 3e38],
                  np.logspace(5, np.log10(big) - 1e-3, 2001)]
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.concatenate([np.asarray(p, dtype=L).ravel() for p in parts]).astype(dt)
    return x


def ulps(got, ref, dt):
    """Per-element error in ulp of dt; exact matches of special values are 0,
    mismatches (NaN vs number, wrong infinity or sign of zero) inf."""
    dt = np.dtype(dt)
    got = np.asarray(got)
    with np.errstate(over="ignore", invalid="ignore"):
        refd = ref.astype(dt)
        same = (got == refd) & (np.signbit(got) == np.signbit(refd))
        both_nan = np.isnan(got) & np.isnan(refd)
        sp = np.spacing(np.abs(np.where(np.isfinite(refd), refd, np.finfo(dt).max)))
        sp = np.maximum(sp.astype(L), L(np.finfo(dt).smallest_subnormal))
        err = np.abs(got.astype(L) - ref) / sp
        special = ~np.isfinite(refd) | (refd == 0)
        err = np.where(special & ~same & ~both_nan, np.inf, err)
        err = np.where((special & same) | both_nan, 0, err)
        err = np.where(np.isnan(err), np.inf, err)
    return err.astype(np.float64)


def worst(err, x):
    i = int(np.argmax(err))
    return float(err[i]), x[i]


# ---------------------------------------------------------------------------
# the maps through gradchain as built, or through a standalone gc_maps.c
# ---------------------------------------------------------------------------

def via_gradchain(name, dt, x, deriv=False):
    m = getattr(gc, name)()
    if deriv:
        return gc.compose(m).vjp(x, np.ones_like(x))
    return m(x)


def build_standalone(arch):
    """csrc/gc_maps.c compiled alone for -march=arch (no dispatch), as a
    ctypes library."""
    out = os.path.join(tempfile.mkdtemp(), f"gc_maps_{arch}.so")
    cmd = ["gcc", "-std=c99", "-O3", "-ffp-contract=fast", "-fno-trapping-math",
           f"-march={arch}", "-DGC_NO_SIMD_DISPATCH", "-shared", "-fPIC",
           "-Icsrc", "csrc/gc_maps.c", "-o", out, "-lm"]
    subprocess.run(cmd, check=True, cwd=ROOT)
    lib = ctypes.CDLL(out)
    for sfx in ("s", "d"):
        getattr(lib, f"gc_ew_forward_{sfx}").restype = None
        getattr(lib, f"gc_ew_deriv_mul_{sfx}").restype = None
    return lib


def via_lib(lib):
    def call(name, dt, x, deriv=False):
        sfx = "s" if np.dtype(dt) == np.float32 else "d"
        x = np.ascontiguousarray(x)
        y = np.empty_like(x)
        p = lambda a: a.ctypes.data_as(ctypes.c_void_p)
        n = ctypes.c_ssize_t(x.size)
        code, param = ctypes.c_int(CODES[name]), ctypes.c_double(0.0)
        getattr(lib, f"gc_ew_forward_{sfx}")(code, param, n, p(x), p(y))
        if not deriv:
            return y
        g, out = np.ones_like(x), np.empty_like(x)
        getattr(lib, f"gc_ew_deriv_mul_{sfx}")(code, param, n, p(x), p(y), p(g), p(out))
        return out
    return call


def report(label, call, names):
    print(f"== {label}")
    for name in names:
        for dt in (np.float32, np.float64):
            x = grid(name, dt)
            xl = x.astype(L)
            rows = [(name, REFS[name], False)]
            if name in DERIVS:
                rows.append((f"{name}' ({DERIVS[name][0]})", DERIVS[name][1], True))
            for label_, ref_fn, deriv in rows:
                with np.errstate(all="ignore"):
                    ref = ref_fn(xl)
                    got = call(name, dt, x, deriv)
                err = ulps(got, ref, dt)
                fin = np.isfinite(err)
                e, at = worst(np.where(fin, err, -1), x)
                bad = int((~fin).sum())
                print(f"{label_:<22} {np.dtype(dt).name:<8} max {e:6.3f} ulp "
                      f"(at x = {at!r})  special values: "
                      f"{'ok' if bad == 0 else f'{bad} BAD, e.g. x = {x[~fin][:3]!r}'}",
                      flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", nargs="*", default=[],
                    help="also measure gc_maps.c compiled alone for these -march values")
    ap.add_argument("--maps", nargs="*", default=list(REFS))
    a = ap.parse_args()
    report(f"gradchain as built ({gc.simd_target()} kernels)", via_gradchain, a.maps)
    for arch in a.arch:
        report(f"csrc/gc_maps.c alone, -march={arch}", via_lib(build_standalone(arch)), a.maps)


if __name__ == "__main__":
    main()
