"""The type stubs match the compiled modules (issue 9): mypy's stubtest.

``python -m mypy.stubtest gradchain`` imports every module of the package
and compares what it finds at run time (functions and their signatures,
classes, methods, properties, enum members, module constants) with what the
stubs (gradchain/*.pyi) and the annotated pure-Python modules declare.  What
Cython generates and no Python code uses is allowlisted, with a reason per
entry, in tests/stubtest-allowlist.txt.

mypy is in the ``test`` extra.  Without it this test skips, unless
GRADCHAIN_EXPECT_STUBTEST=1 (CI) says it must run: then a missing (or too
old) mypy is a failure, not a skip.
"""
import ast
import importlib
import importlib.machinery
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

import gradchain

ROOT = pathlib.Path(__file__).resolve().parents[1]
ALLOWLIST = ROOT / "tests" / "stubtest-allowlist.txt"
# The oldest mypy whose stubtest passes here: 1.18 brought @disjoint_base
# (PEP 800), and 1.18-1.19 still checked names merely imported into the
# pure-Python modules (typing.Any, collections.abc.Iterable, a Self imported
# under TYPE_CHECKING).  Keep in step with pyproject.toml's test extra
# (test_mypy_lower_bound_matches_pyproject).
MYPY_MIN = (1, 20)
# stubtest runs single-threaded: 10-13 s measured on a 2-core machine under
# load ~4 (most of it mypy analysing numpy's stubs); a limit only a hang
# reaches
TIMEOUT_S = 600


def _expected():
    return os.environ.get("GRADCHAIN_EXPECT_STUBTEST", "") not in ("", "0")


def _unavailable(reason):
    """Skip, or fail where GRADCHAIN_EXPECT_STUBTEST=1 says stubtest must run."""
    if _expected():
        pytest.fail(f"GRADCHAIN_EXPECT_STUBTEST=1 but {reason}: install the "
                    f"test extra (pip install '.[test]')")
    pytest.skip(f"{reason} (pip install '.[test]'; set "
                f"GRADCHAIN_EXPECT_STUBTEST=1 to make this a failure)")


def _mypy_version():
    """mypy's (major, minor), or None when mypy is not importable."""
    try:
        import mypy.stubtest  # noqa: F401
        from mypy.version import __version__
    except ImportError:
        return None
    return tuple(int(p) for p in re.findall(r"\d+", __version__)[:2])


def test_stubtest_passes(tmp_path):
    version = _mypy_version()
    if version is None:
        _unavailable("mypy is not installed")
    if version < MYPY_MIN:
        _unavailable(f"mypy {'.'.join(map(str, version))} is older than "
                     f"{'.'.join(map(str, MYPY_MIN))}")
    # The gradchain this test process imported (the in-place build, or the
    # installed package) goes first on the child's path, before the current
    # directory that `python -m`/`-c` would put first: from the repository
    # root that is the source tree, which has no compiled modules when the
    # package was installed rather than built in place.  mypy reads the
    # stubs from the repository root (the current directory comes first on
    # its search path), i.e. the .pyi files of this checkout.
    pkg_parent = str(pathlib.Path(gradchain.__file__).resolve().parents[1])
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
            "from mypy.stubtest import main; sys.exit(main())")
    # stubtest builds non-incrementally (reads no cache) but still writes
    # mypy's cache, to ./.mypy_cache unless a config file says otherwise
    # (it ignores MYPY_CACHE_DIR): a scratch folder, not the checkout
    config = tmp_path / "mypy.ini"
    # (and the adapters' frameworks are not analysed: torch and jax alone
    # took mypy ~50 s; their names are Any to it)
    config.write_text(f"[mypy]\ncache_dir = {tmp_path / 'mypy_cache'}\n"
                      "[mypy-torch.*]\nfollow_imports = skip\n"
                      "[mypy-jax.*]\nfollow_imports = skip\n")
    cmd = [sys.executable, "-c", code, pkg_parent,
           "gradchain", "--allowlist", str(ALLOWLIST),
           "--mypy-config-file", str(config)]
    # the optional adapters import their framework: where it is not
    # installed, stubtest cannot import the adapter module, which is then
    # checked wherever the framework is (not here)
    import importlib.util
    extra = [rf"gradchain\.{mod}" for mod in ("torch", "jax")
             if importlib.util.find_spec(mod) is None]
    if extra:
        skip = tmp_path / "allowlist-missing-frameworks.txt"
        skip.write_text("\n".join(extra) + "\n")
        cmd += ["--allowlist", str(skip)]
    env = dict(os.environ, MYPY_FORCE_COLOR="0", NO_COLOR="1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    elapsed = time.perf_counter() - t0
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, (
        f"stubtest failed (exit code {proc.returncode}, {elapsed:.1f} s); "
        f"fix the stub (gradchain/*.pyi) or, for Cython-generated names "
        f"only, add a commented entry to {ALLOWLIST.relative_to(ROOT)}:\n"
        f"$ python -m mypy.stubtest gradchain --allowlist "
        f"{ALLOWLIST.relative_to(ROOT)}\n{output}")
    # the run checked the modules (not, say, an empty package)
    assert "Success: no issues found" in output, output


def _extension_modules(directory):
    return sorted(p.name.split(".")[0] for p in directory.iterdir()
                  if any(p.name.endswith(s)
                         for s in importlib.machinery.EXTENSION_SUFFIXES))


def test_every_compiled_module_has_a_stub():
    # Where stubtest cannot run (no mypy), the cheap half of its check: every
    # extension module of the imported package has a .pyi beside it (a wheel
    # ships them: setup.py's package_data), and the package is marked typed.
    pkg = pathlib.Path(gradchain.__file__).resolve().parent
    modules = _extension_modules(pkg)
    assert {"_kernels", "_chain"} <= set(modules), modules
    missing = [m for m in modules if not (pkg / f"{m}.pyi").is_file()]
    assert not missing, f"compiled modules without a stub in {pkg}: {missing}"
    assert (pkg / "py.typed").is_file()


def _stub_enums():
    """(module, class, {member: value}) for every enum class in the stubs."""
    pkg = pathlib.Path(gradchain.__file__).resolve().parent
    for stub in sorted(pkg.glob("*.pyi")):
        for node in ast.parse(stub.read_text()).body:
            if isinstance(node, ast.ClassDef) and any(
                    ast.unparse(b).split(".")[-1] in ("Enum", "IntEnum")
                    for b in node.bases):
                members = {t.id: ast.literal_eval(a.value) for a in node.body
                           if isinstance(a, ast.Assign)
                           for t in a.targets if isinstance(t, ast.Name)}
                yield f"gradchain.{stub.stem}", node.name, members


def test_stub_enum_values_match_runtime():
    # stubtest checks that an enum's members exist, not their values; the
    # values are the codes the C kernels switch on (csrc/, the .pxd files)
    enums = list(_stub_enums())
    assert {(m, c) for m, c, _ in enums} >= {("gradchain._program", "OpCode"),
                                             ("gradchain._link", "LinkKind")}
    for module, name, members in enums:
        runtime = getattr(importlib.import_module(module), name)
        assert members == {m.name: m.value for m in runtime}, (module, name)


def test_mypy_lower_bound_matches_pyproject():
    pyproject = ROOT / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("pyproject.toml is not beside tests/ (an installed test run)")
    pins = re.findall(r'"mypy>=([0-9.]+)"', pyproject.read_text())
    assert len(pins) == 1, pins
    assert tuple(int(p) for p in pins[0].split(".")[:2]) == MYPY_MIN
