"""python -m gradchain: the demo runs, checks its gradient and reports it."""
import subprocess
import sys

import numpy as np

from gradchain import __main__ as demo


def test_demo_gradient_matches_reference():
    # The demo's chain and gradient against an independent NumPy backprop.
    Ws, x, xs, Js = demo.default_chain()
    import gradchain
    grad = gradchain.Chain(Js).vjp(xs[-1])
    g = xs[-1]
    for W, xi in zip(reversed(Ws), reversed(xs[1:])):
        g = W.T @ ((1.0 - xi * xi) * g)
    np.testing.assert_allclose(grad, g, rtol=1e-12, atol=1e-15)


def test_demo_runs_and_passes(tmp_path):
    # run outside the source tree, so the installed package is the one found
    proc = subprocess.run([sys.executable, "-m", "gradchain", "--quick"],
                          capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gradient check: PASSED" in proc.stdout
    assert "NumPy loop" in proc.stdout
    err = float(proc.stdout.split("central differences:")[1].split()[0])
    assert err < 1e-6
