"""The documentation (docs/, Sphinx) builds without a warning, and its code
examples run as written (issue 13).

``sphinx-build -W --keep-going -b html docs <tmp>`` must exit 0: every
warning (a docstring's broken markup, a missing image, a dangling reference)
is an error.  It needs the ``docs`` extra (Sphinx, numpydoc, furo); without
it the build test skips, unless GRADCHAIN_EXPECT_DOCS=1 (.ci/run) says it
must run: then a missing extra is a failure, not a skip.
"""
import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

import gradchain

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# the pages whose ``.. code-block:: python`` examples build on each other,
# each run as one script
PAGES = ["index.rst", "getting-started.rst", "user-guide.rst", "rules.rst"]
# a full build took 8-15 s on a 2-core machine under load; a limit only a
# hang reaches
TIMEOUT_S = 600


def _expected():
    return os.environ.get("GRADCHAIN_EXPECT_DOCS", "") not in ("", "0")


def _unavailable(reason):
    """Skip, or fail where GRADCHAIN_EXPECT_DOCS=1 says the docs must build."""
    if _expected():
        pytest.fail(f"GRADCHAIN_EXPECT_DOCS=1 but {reason}: install the docs "
                    f"extra (pip install '.[docs]')")
    pytest.skip(f"{reason} (pip install '.[docs]'; set GRADCHAIN_EXPECT_DOCS=1 "
                f"to make this a failure)")


def test_sphinx_build_has_no_warnings(tmp_path):
    if not (DOCS / "conf.py").is_file():
        _unavailable(f"there is no {DOCS / 'conf.py'} (an installed test run?)")
    # find_spec, not import: importing Sphinx here would run its import-time
    # code under this suite's filterwarnings=error
    missing = [m for m in ("sphinx", "numpydoc", "furo")
               if importlib.util.find_spec(m) is None]
    if missing:
        _unavailable(f"{', '.join(missing)} not importable")
    # The gradchain this process imported (the in-place build, or the
    # installed package) goes first on the child's path; the child runs in a
    # scratch folder, so neither `python -c`'s current directory nor the
    # source tree (no compiled modules when the package was installed)
    # shadows it.  docs/conf.py then imports that gradchain.
    pkg_parent = str(pathlib.Path(gradchain.__file__).resolve().parents[1])
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
            "from sphinx.cmd.build import main; sys.exit(main(sys.argv[1:]))")
    out = tmp_path / "html"
    cmd = [sys.executable, "-c", code, pkg_parent,
           "-W", "--keep-going", "-b", "html", "-q", str(DOCS), str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert proc.returncode == 0, (
        f"sphinx-build -W --keep-going -b html docs failed (exit code "
        f"{proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    for page in ["index", "getting-started", "user-guide", "rules", "api", "benchmarks"]:
        assert (out / f"{page}.html").is_file(), page
    api = (out / "api.html").read_text(encoding="utf-8")
    # every public name has its entry in the reference
    undocumented = [name for name in gradchain.__all__
                    if f'id="gradchain.{name}"' not in api]
    assert not undocumented, f"gradchain.__all__ names missing from docs/api.rst: {undocumented}"
    # the plots the benchmarks page shows were found and copied
    images = {p.name for p in (out / "_images").iterdir()}
    assert {"time-vs-width.png", "bandwidth.png", "scaling-16core.png"} <= images, images


def _python_blocks(path):
    """The ``.. code-block:: python`` bodies of a reST page, dedented."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^(\s*)\.\. code-block:: python\s*$", lines[i])
        i += 1
        if not m:
            continue
        indent, body = len(m.group(1)), []
        while i < len(lines) and (not lines[i].strip()
                                  or len(lines[i]) - len(lines[i].lstrip()) > indent):
            body.append(lines[i])
            i += 1
        blocks.append(textwrap.dedent("\n".join(body)).strip("\n"))
    return blocks


@pytest.mark.parametrize("page", PAGES)
def test_docs_code_blocks_run_as_written(page, tmp_path):
    # each page's python blocks, in order, as one script, outside the source tree
    path = DOCS / page
    if not path.is_file():
        pytest.skip(f"{path} is not beside tests/ (an installed test run)")
    blocks = _python_blocks(path)
    assert blocks, f"{page} has no python code blocks"
    pkg_parent = str(pathlib.Path(gradchain.__file__).resolve().parents[1])
    script = f"import sys; sys.path.insert(0, {pkg_parent!r})\n" + "\n".join(blocks)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
