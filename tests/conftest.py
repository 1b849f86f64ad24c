"""Shared helpers for the gradchain tests.

Everything here is independent of gradchain: the references are plain NumPy
float64 dense products, and the error scale is the classical rounding-error
bound of a chain of dot products,

    |computed - exact| <= tol * |J_1|^T |J_2|^T ... |J_k|^T |g|,

so that cancellation in the exact result can never cause a false failure
and a wrong result (a missed term, a wrong element, a stale buffer) almost
always does.
"""
import os

import numpy as np
import pytest

import gradchain

DTYPES = [np.float32, np.float64]

# Relative tolerance on the rounding-error scale, per compute dtype.
TOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}
# Absolute floor, far below any value the tests produce (entries whose
# scale is exactly 0 must then be (almost) exactly 0).
TINY = {np.dtype(np.float32): 1e-30, np.dtype(np.float64): 1e-290}

# Every layout that make_layout() can produce.
LAYOUTS = ["C", "F", "strided", "negative", "rowstrided"]


def threads_compared():
    """Called first by a test that compares results across thread counts.
    Without OpenMP every count runs on one thread and the comparison is one
    thread against itself; where GRADCHAIN_EXPECT_OPENMP=1 (.ci/run) says
    the build must have OpenMP, that is a failure, not a vacuous pass."""
    if (os.environ.get("GRADCHAIN_EXPECT_OPENMP", "") not in ("", "0")
            and not gradchain.openmp_enabled()):
        pytest.fail("GRADCHAIN_EXPECT_OPENMP=1 but this build of gradchain has "
                    "no OpenMP: comparing thread counts would compare one "
                    "thread with itself")


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------

@pytest.fixture
def rng():
    """A fresh, seeded generator per test (reproducible failures)."""
    return np.random.default_rng(20240607)


@pytest.fixture
def restore_threads():
    """Leave gradchain's thread override as it was found (None)."""
    gradchain.set_num_threads(None)
    try:
        yield
    finally:
        gradchain.set_num_threads(None)


# --------------------------------------------------------------------------
# references (NumPy only, float64)
# --------------------------------------------------------------------------

def _f64(a):
    return np.array(a, dtype=np.float64)   # exact for every float/int input


def reference_vjp(jacobians, cotangent):
    """J_1^T ... J_k^T g in float64; for a batch, row b is G[b] J_k ... J_1."""
    x = _f64(cotangent)
    for J in reversed(list(jacobians)):
        x = x @ _f64(J)
    return x


def reference_jvp(jacobians, tangent):
    """J_k ... J_1 v in float64; for a batch, row b is J_k ... J_1 V[b]."""
    x = _f64(tangent)
    for J in jacobians:
        x = x @ _f64(J).T
    return x


def abs_chain(jacobians, x, transpose=True):
    """The rounding-error scale: |J_1|^T ... |J_k|^T |g| (transpose=True,
    vjp) or |J_k| ... |J_1| |v| (jvp), in float64 with np.abs."""
    a = [np.abs(_f64(J)) for J in jacobians]
    if transpose:
        return reference_vjp(a, np.abs(_f64(x)))
    return reference_jvp(a, np.abs(_f64(x)))


def assert_close(res, ref, scale, dtype):
    """|res - ref| <= tol(dtype) * scale + tiny, elementwise; res must have
    exactly dtype and the reference's shape, and be finite where ref is."""
    dtype = np.dtype(dtype)
    assert isinstance(res, np.ndarray)
    assert res.dtype == dtype, (res.dtype, dtype)
    ref = np.asarray(ref, dtype=np.float64)
    assert res.shape == ref.shape, (res.shape, ref.shape)
    err = np.abs(res.astype(np.float64) - ref)
    bound = TOL[dtype] * np.asarray(scale, dtype=np.float64) + TINY[dtype]
    ok = err <= bound          # False for NaN
    if not ok.all():
        bad = np.argwhere(~ok)[:5]
        lines = [f"  at {tuple(i)}: got {res[tuple(i)]!r}, want {ref[tuple(i)]!r}, "
                 f"bound {bound[tuple(i)]:.3g}" for i in bad]
        raise AssertionError(
            f"{(~ok).sum()} of {ok.size} entries out of tolerance:\n"
            + "\n".join(lines))


def check_vjp(res, jacobians, cotangent, dtype):
    assert_close(res, reference_vjp(jacobians, cotangent),
                 abs_chain(jacobians, cotangent, True), dtype)


def check_jvp(res, jacobians, tangent, dtype):
    assert_close(res, reference_jvp(jacobians, tangent),
                 abs_chain(jacobians, tangent, False), dtype)


# --------------------------------------------------------------------------
# data and layouts
# --------------------------------------------------------------------------

def random_matrix(rng, m, n, dtype=np.float64):
    """Entries ~ N(0, 1/n): chains of them stay O(1)."""
    return (rng.standard_normal((m, n)) / np.sqrt(max(n, 1))).astype(dtype)


def random_chain(rng, dims, dtype=np.float64):
    """[J_1, ..., J_k] for dims (n_0, ..., n_k); J_i has shape (n_i, n_{i-1})."""
    return [random_matrix(rng, dims[i + 1], dims[i], dtype)
            for i in range(len(dims) - 1)]


def _garbage(shape, dtype):
    # NaN everywhere outside the view: a kernel reading a wrong element
    # poisons its result.
    return np.full(shape, np.nan, dtype=dtype)


def make_layout(a, layout):
    """A 2-D array equal to a, in the given memory layout.

    C          C-contiguous copy
    F          Fortran-contiguous copy
    strided    big[::2, ::3]: positive row and column strides > 1
    negative   big[::-1, ::-2]: both strides negative
    rowstrided big[::2, 1:n+1]: row stride > n, unit column stride
    """
    a = np.asarray(a)
    m, n = a.shape
    if layout == "C":
        out = np.ascontiguousarray(a).copy()
    elif layout == "F":
        out = np.asfortranarray(a).copy(order="F")
    elif layout == "strided":
        big = _garbage((2 * m + 1, 3 * n + 1), a.dtype)
        out = big[::2, ::3][:m, :n]
        out[...] = a
    elif layout == "negative":
        big = _garbage((m, 2 * n + 1), a.dtype)
        out = big[::-1, ::-2][:, :n]
        out[...] = a
    elif layout == "rowstrided":
        big = _garbage((2 * m, n + 3), a.dtype)
        out = big[::2, 1:n + 1]
        out[...] = a
    else:
        raise ValueError(layout)
    assert out.shape == a.shape and out.dtype == a.dtype
    assert np.array_equal(out, a, equal_nan=True)
    return out


def layout_chain(jacobians, layout):
    """Every link in one layout, or 'mixed': link i in LAYOUTS[i % 5]."""
    if layout == "mixed":
        return [make_layout(J, LAYOUTS[i % len(LAYOUTS)])
                for i, J in enumerate(jacobians)]
    return [make_layout(J, layout) for J in jacobians]
