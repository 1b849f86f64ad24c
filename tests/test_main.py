"""python -m gradchain: the demo runs, checks its gradient and reports it."""
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

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


def test_readme_code_blocks_run_as_written(tmp_path):
    # the README's ```python blocks, in order, as one script (they build on
    # each other), run outside the source tree
    readme = pathlib.Path(__file__).resolve().parents[1] / "README.md"
    if not readme.exists():
        pytest.skip("README.md is not beside tests/ (an installed test run)")
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)
    assert len(blocks) >= 3
    proc = subprocess.run([sys.executable, "-c", "\n".join(blocks)],
                          capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("readelf") is None,
                    reason="needs Linux and binutils' readelf")
def test_extensions_carry_no_runpath():
    """setup.py drops CPython's -Wl,-rpath from the link: no extension (and
    so no wheel) points into the build machine's Python (issue 13).  A
    path relative to the extension itself ($ORIGIN: auditwheel's, to the
    OpenMP runtime it vendors into gradchain.libs/) is fine."""
    import gradchain
    sos = sorted(pathlib.Path(gradchain.__file__).parent.glob("*.so"))
    assert sos, "no compiled extensions found next to gradchain/__init__.py"
    for so in sos:
        dyn = subprocess.run(["readelf", "-d", str(so)], capture_output=True,
                             text=True, check=True).stdout
        paths = re.findall(r"\((?:RUNPATH|RPATH)\).*?\[(.*?)\]", dyn)
        bad = [p for entry in paths for p in entry.split(":")
               if p and not p.startswith("$ORIGIN")]
        assert not bad, (so.name, bad)


def test_one_version():
    """The version lives once, in gradchain/__init__.py; pyproject.toml reads
    it from there, and an installed copy's metadata agrees."""
    import importlib.metadata
    import gradchain
    tomllib = pytest.importorskip("tomllib")      # Python 3.11+
    root = pathlib.Path(__file__).resolve().parents[1]
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    assert "version" not in meta["project"]
    assert "version" in meta["project"]["dynamic"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "gradchain.__version__"}
    try:
        installed = importlib.metadata.version("gradchain")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("gradchain is not installed (run from a source tree)")
    assert installed == gradchain.__version__


def test_import_leaves_scipy_linalg_for_the_first_product():
    """`import gradchain` does not import scipy.linalg (cython_blas's ?gemm
    is fetched on the first matrix-matrix product; issue 13, import time),
    and that first product then gives BLAS's result."""
    code = (
        "import sys, numpy as np, gradchain, gradchain._blas as b\n"
        "assert 'scipy.linalg' not in sys.modules, sorted(\n"
        "    m for m in sys.modules if m.startswith('scipy'))\n"
        "assert not b._blas_loaded()\n"
        "rng = np.random.default_rng(0)\n"
        "J, G = rng.standard_normal((96, 80)), rng.standard_normal((64, 96))\n"
        "out = gradchain.vjp([J], G)\n"
        "assert b._blas_loaded()\n"
        "np.testing.assert_allclose(out, G @ J, rtol=1e-12, atol=1e-12)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
