"""Thread control and build facts: set_num_threads, get_num_threads,
openmp_enabled, simd_target, and their interplay with threadpoolctl.

GRADCHAIN_EXPECT_OPENMP=1 (set by .ci/run) says that this build must have
OpenMP: setup.py drops -fopenmp silently when the compiler cannot use it,
and the thread tests would then skip, or compare one thread with itself.
Under that variable a build without OpenMP fails here instead.
"""
import os
import sys
import threading

import numpy as np
import pytest

import gradchain


@pytest.fixture(autouse=True)
def _reset(restore_threads):
    yield


def openmp_expected():
    return os.environ.get("GRADCHAIN_EXPECT_OPENMP", "") not in ("", "0")


def skip_without_openmp():
    """Skip a test that needs OpenMP in a build without it, unless OpenMP
    is expected (GRADCHAIN_EXPECT_OPENMP=1): then fail."""
    if gradchain.openmp_enabled():
        return
    if openmp_expected():
        pytest.fail("GRADCHAIN_EXPECT_OPENMP=1 but this build of gradchain "
                    "has no OpenMP (setup.py dropped -fopenmp?)")
    pytest.skip("built without OpenMP")


def _binary_uses_openmp():
    """Whether the compiled kernels call an OpenMP runtime, read off the
    extension files themselves (GNU libgomp or LLVM libomp entry points)."""
    import gradchain._kernels
    import gradchain._propagate
    found = []
    for mod in (gradchain._kernels, gradchain._propagate):
        with open(mod.__file__, "rb") as fh:
            data = fh.read()
        found.append(any(sym in data for sym in (b"GOMP_parallel",
                                                 b"__kmpc_fork_call")))
    return found


@pytest.mark.parametrize("n", [1, 2, 3, 7, np.int64(4), np.uint8(5)])
def test_set_get_num_threads(n):
    assert gradchain.set_num_threads(n) is None
    assert gradchain.get_num_threads() == int(n)
    assert type(gradchain.get_num_threads()) is int


def test_none_resets_to_openmp_default():
    default = gradchain.get_num_threads()
    assert isinstance(default, int) and default >= 1
    if not gradchain.openmp_enabled():
        assert default == 1
    gradchain.set_num_threads(default + 3)
    assert gradchain.get_num_threads() == default + 3
    gradchain.set_num_threads(None)
    assert gradchain.get_num_threads() == default


def test_override_applies_to_every_thread():
    gradchain.set_num_threads(3)
    seen = []
    t = threading.Thread(target=lambda: seen.append(gradchain.get_num_threads()))
    t.start()
    t.join()
    assert seen == [3]


@pytest.mark.parametrize("bad", [1.5, True, False, "2", 2.0, [2], object()],
                         ids=["1.5", "True", "False", "str", "2.0", "list",
                              "object"])
def test_set_num_threads_type_errors(bad):
    before = gradchain.get_num_threads()
    with pytest.raises(TypeError, match="n must be a positive int or None"):
        gradchain.set_num_threads(bad)
    assert gradchain.get_num_threads() == before


@pytest.mark.parametrize("bad", [0, -1, -100, np.int32(0)])
def test_set_num_threads_value_errors(bad):
    gradchain.set_num_threads(2)
    with pytest.raises(ValueError,
                       match=f"n must be a positive int or None, got {int(bad)}"):
        gradchain.set_num_threads(bad)
    assert gradchain.get_num_threads() == 2


def test_openmp_enabled_matches_the_binary():
    enabled = gradchain.openmp_enabled()
    assert type(enabled) is bool
    # both threaded extensions were built with OpenMP, or neither was
    assert _binary_uses_openmp() == [enabled, enabled]
    if not enabled:
        # every override runs on the calling thread; the default is 1
        gradchain.set_num_threads(None)
        assert gradchain.get_num_threads() == 1


def test_openmp_expected_by_the_environment():
    """.ci/run sets GRADCHAIN_EXPECT_OPENMP=1: a build that lost OpenMP must
    fail CI, not skip its thread tests."""
    if not openmp_expected():
        pytest.skip("GRADCHAIN_EXPECT_OPENMP is not set")
    assert gradchain.openmp_enabled(), (
        "GRADCHAIN_EXPECT_OPENMP=1 but gradchain.openmp_enabled() is False: "
        "setup.py built without -fopenmp")
    assert _binary_uses_openmp() == [True, True]


def test_openmp_expectation_fails_loudly(monkeypatch):
    # the helper the thread tests use: with OpenMP expected, a build without
    # it is a failure, never a skip or a pass
    monkeypatch.setenv("GRADCHAIN_EXPECT_OPENMP", "1")
    monkeypatch.setattr(gradchain, "openmp_enabled", lambda: False)
    with pytest.raises(pytest.fail.Exception, match="has no OpenMP"):
        skip_without_openmp()
    monkeypatch.setenv("GRADCHAIN_EXPECT_OPENMP", "0")
    with pytest.raises(pytest.skip.Exception, match="built without OpenMP"):
        skip_without_openmp()


def test_simd_target():
    t = gradchain.simd_target()
    assert t in {"x86-64-v4", "x86-64-v3", "baseline"}
    assert gradchain.simd_target() == t            # stable


@pytest.mark.parametrize("n", [1, 2, 5])
def test_results_use_override_and_stay_correct(rng, n):
    # With any override the products are right (see test_kernels for the
    # bitwise thread-count independence).
    from conftest import check_vjp
    gradchain.set_num_threads(n)
    J = rng.standard_normal((700, 256))
    g = rng.standard_normal(700)
    check_vjp(gradchain.vjp([J], g), [J], g, np.float64)


# --------------------------------------------------------------------------
# threadpoolctl
# --------------------------------------------------------------------------

def test_threadpoolctl_sees_openmp():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    skip_without_openmp()
    info = threadpoolctl.threadpool_info()
    apis = [d["user_api"] for d in info]
    assert "openmp" in apis, info


def test_threadpool_limits_openmp_one():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    skip_without_openmp()
    gradchain.set_num_threads(None)
    before = gradchain.get_num_threads()
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert gradchain.get_num_threads() == 1
        # an explicit override wins over OpenMP's setting
        gradchain.set_num_threads(3)
        assert gradchain.get_num_threads() == 3
        gradchain.set_num_threads(None)
        assert gradchain.get_num_threads() == 1
    assert gradchain.get_num_threads() == before


def test_threadpool_limits_openmp_two():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    skip_without_openmp()
    with threadpoolctl.threadpool_limits(2, user_api="openmp"):
        assert gradchain.get_num_threads() == 2


def test_threadpoolctl_sees_gradchain_and_its_setting():
    """gradchain's own controller (issue 13): threadpool_info lists it
    (user_api openmp, internal_api gradchain, gradchain's version) with the
    count set_num_threads gave, and threadpool_limits sets and restores it."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    gradchain.set_num_threads(3)

    def ours():
        mine = [d for d in threadpoolctl.threadpool_info()
                if d["internal_api"] == "gradchain"]
        assert len(mine) == 1, threadpoolctl.threadpool_info()
        return mine[0]

    info = ours()
    assert info["user_api"] == "openmp"
    assert info["num_threads"] == 3
    assert info["version"] == gradchain.__version__
    assert info["filepath"] == os.path.realpath(gradchain._kernels.__file__)
    with threadpoolctl.threadpool_limits(1):
        assert gradchain.get_num_threads() == 1
        assert ours()["num_threads"] == 1
    assert gradchain.get_num_threads() == 3
    with threadpoolctl.threadpool_limits(2, user_api="openmp"):
        assert gradchain.get_num_threads() == 2
    assert gradchain.get_num_threads() == 3


def test_show_config(capsys):
    import numpy
    import scipy
    cfg = gradchain.show_config(mode="dicts")
    assert cfg["gradchain"]["version"] == gradchain.__version__
    assert cfg["gradchain"]["simd kernels"] == gradchain.simd_target()
    assert cfg["gradchain"]["openmp"] == gradchain.openmp_enabled()
    assert cfg["gradchain"]["threads"] == gradchain.get_num_threads()
    assert cfg["dependencies"]["numpy"] == numpy.__version__
    assert cfg["dependencies"]["scipy"] == scipy.__version__
    if gradchain.openmp_enabled() and sys.platform.startswith("linux"):
        assert any("gomp" in (d.get("filepath") or "") or "omp" in (d.get("filepath") or "")
                   for d in cfg["openmp runtime"]), cfg["openmp runtime"]
    assert gradchain.show_config() is None
    out = capsys.readouterr().out
    assert gradchain.simd_target() in out and "blas" in out
    with pytest.raises(ValueError, match="mode must be"):
        gradchain.show_config(mode="json")
