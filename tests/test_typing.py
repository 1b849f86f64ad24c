"""The public Python API type-checks (issue 13, Types): ``mypy --strict``.

Two checks, each ``python -m mypy --strict`` in a subprocess:

* the README's ```python blocks, in order, as one file (they build on each
  other; tests/test_main.py runs the same extraction), against the
  gradchain this test process imported, found on the child's path as an
  installed (typed, py.typed) package would be.  SciPy ships no type
  information: its imports are ``ignore_missing_imports`` (a per-module
  setting for scipy only); nothing else is relaxed.
* gradchain's own pure-Python modules (the source tree's), with the stubs
  of the compiled modules (gradchain/*.pyi) beside them.

mypy is in the ``test`` extra.  As in tests/test_stubs.py, without it these
tests skip, unless GRADCHAIN_EXPECT_STUBTEST=1 (CI) says they must run.
"""
import os
import pathlib
import re
import subprocess
import sys

import pytest

import gradchain

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# gradchain's pure-Python modules; the package's __init__ and what they
# import are checked with them
MODULES = ("maps", "losses", "composition", "fpenv", "operators", "chain",
           "_config")
# mypy --strict analyses NumPy's stubs, about 10-20 s on a 2-core machine
# without a cache; a limit only a hang reaches
TIMEOUT_S = 600


def _expected():
    return os.environ.get("GRADCHAIN_EXPECT_STUBTEST", "") not in ("", "0")


def _require_mypy():
    """Skip, or fail where GRADCHAIN_EXPECT_STUBTEST=1 says mypy must run."""
    try:
        import mypy.api  # noqa: F401
    except ImportError:
        if _expected():
            pytest.fail("GRADCHAIN_EXPECT_STUBTEST=1 but mypy is not installed: "
                        "install the test extra (pip install '.[test]')")
        pytest.skip("mypy is not installed (pip install '.[test]'; set "
                    "GRADCHAIN_EXPECT_STUBTEST=1 to make this a failure)")


def _mypy_strict(tmp_path, files, cwd, config="", pythonpath=None):
    """Run ``python -m mypy --strict`` on ``files`` from ``cwd``, its cache
    in tmp_path (not the checkout), with ``config`` as extra mypy.ini
    sections; assert success, showing mypy's output otherwise."""
    ini = tmp_path / "mypy.ini"
    ini.write_text(f"[mypy]\ncache_dir = {tmp_path / 'mypy_cache'}\n{config}")
    env = dict(os.environ, MYPY_FORCE_COLOR="0", NO_COLOR="1")
    env.pop("MYPYPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [pythonpath] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    cmd = [sys.executable, "-m", "mypy", "--strict", "--config-file", str(ini),
           *map(str, files)]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, (
        f"mypy --strict failed (exit code {proc.returncode}) in {cwd}:\n"
        f"$ {' '.join(cmd[1:])}\n{output}")
    assert "Success: no issues found" in output, output


def test_readme_examples_pass_mypy_strict(tmp_path):
    _require_mypy()
    if not README.exists():
        pytest.skip("README.md is not beside tests/ (an installed test run)")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 3
    script = tmp_path / "readme_examples.py"
    script.write_text("\n".join(blocks))
    # the gradchain this process imported (the in-place build, or the
    # installed package) first on the child's path: mypy finds it there as
    # an installed package, reads its annotations and stubs, and reports
    # the README's errors only (gradchain's own: the test below)
    pkg_parent = str(pathlib.Path(gradchain.__file__).resolve().parents[1])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _mypy_strict(tmp_path, [script], cwd=run_dir, pythonpath=pkg_parent,
                 config="[mypy-scipy.*]\nignore_missing_imports = True\n")


def test_package_modules_pass_mypy_strict(tmp_path):
    _require_mypy()
    src = ROOT / "gradchain"
    if not all((src / f"{m}.py").is_file() for m in MODULES):
        pytest.skip("gradchain's sources are not beside tests/ (an installed test run)")
    config = ""
    _mypy_strict(tmp_path, [pathlib.Path("gradchain", f"{m}.py") for m in MODULES],
                 cwd=ROOT, config=config)
