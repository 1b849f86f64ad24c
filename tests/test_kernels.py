"""The four private dense kernels against NumPy: the vector kernels of
gradchain._kernels and the block kernels of gradchain._blas (the BLAS door).

    jtv(J, g, out)        out = J.T @ g
    jv(J, v, out)         out = J @ v
    jtv_block(J, G, out)  out = G @ J
    jv_block(J, V, out)   out = V @ J.T

Shapes straddle every regime of csrc/gc_dense_impl.h and _kernels.pyx: 1, 3,
4, 5, 9 rows (4-row blocks and their tails), column counts around the
partial-sum width W (16 doubles / 32 floats) and 2W, the 256 KiB boundary
between the register-blocked and the streaming J^T x kernel, products with
>= 2**15 elements (split over OpenMP threads), strided J in the batched path
large enough to need several packed 32768-element panels, and zero-size and
stride-0 (broadcast) J.
"""

import numpy as np
import pytest

import gradchain
from gradchain import _kernels as K
from gradchain import _blas

from conftest import (threads_compared, DTYPES, LAYOUTS, abs_chain, assert_close, make_layout,
                      random_matrix, reference_jvp, reference_vjp)


ROWS = [1, 3, 4, 5, 9]
COLS = [1, 15, 16, 17, 31, 32, 33, 65, 77]
SMALL_SHAPES = [(m, n) for m in ROWS for n in COLS] + [
    (17, 3), (33, 4), (64, 5), (69, 2), (8, 64), (12, 128)]
ZERO_SHAPES = [(0, 5), (5, 0), (0, 0), (0, 1), (1, 0)]

# (m, n, dtypes): the large regimes.
BIG_SHAPES = [
    (256, 128),    # float64: exactly 256 KiB -> register-blocked J^T x
    (257, 128),    # float64: just above 256 KiB -> streaming J^T x
    (513, 128),    # float32: just above 256 KiB -> streaming J^T x
    (600, 300),    # >= 2**15 elements: OpenMP split when threads > 1
    (2048, 64),    # float64 2**17 elements (threaded), 4W columns
    (1024, 128),   # float32 2**17 elements (threaded), 4W columns
    (300, 200),    # strided batch path: two 32768-element panels
    (700, 100),    # strided batch path: three panels
    (2, 33000),    # more than one panel's worth of columns: 1-row panels
    (4000, 32),    # float64 1 MB but only 2W columns -> register-blocked
    (3000, 33),    # float64 2W + 1 columns, > 256 KiB -> streaming
    (2000, 64),    # float32 2W columns -> register-blocked
    (2000, 65),    # float32 2W + 1 columns -> streaming
]

KERNELS = ["jtv", "jv", "jtv_block", "jv_block"]


def run_kernel(name, J, x):
    """Call one kernel on J (any layout) and x (C-contiguous); return out,
    pre-filled with NaN so that every entry must be written."""
    m, n = J.shape
    dt = J.dtype
    if name == "jtv":
        out = np.full(n, np.nan, dtype=dt)
        K.jtv(J, x, out)
    elif name == "jv":
        out = np.full(m, np.nan, dtype=dt)
        K.jv(J, x, out)
    elif name == "jtv_block":
        out = np.full((x.shape[0], n), np.nan, dtype=dt)
        _blas.jtv_block(J, x, out)
    elif name == "jv_block":
        out = np.full((x.shape[0], m), np.nan, dtype=dt)
        _blas.jv_block(J, x, out)
    else:
        raise ValueError(name)
    return out


def kernel_reference(name, J, x):
    """(float64 reference, error scale) for kernel name on J and x."""
    transposed = name in ("jtv", "jtv_block")
    ref = (reference_vjp if transposed else reference_jvp)([J], x)
    return ref, abs_chain([J], x, transposed)


def kernel_input(rng, name, J, batch=3):
    """A C-contiguous input vector / block for kernel name applied to J."""
    m, n = J.shape
    length = m if name in ("jtv", "jtv_block") else n
    shape = (length,) if name in ("jtv", "jv") else (batch, length)
    return rng.standard_normal(shape).astype(J.dtype)


def check_kernel(rng, name, J, batch=3):
    x = kernel_input(rng, name, J, batch)
    J_before, x_before = J.copy(), x.copy()
    out = run_kernel(name, J, x)
    assert_close(out, *kernel_reference(name, J, x), J.dtype)
    # inputs untouched
    assert np.array_equal(J, J_before, equal_nan=True)
    assert np.array_equal(x, x_before)


# --------------------------------------------------------------------------
# values
# --------------------------------------------------------------------------

@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SMALL_SHAPES, ids=str)
def test_small_shapes(rng, kernel, layout, dtype, shape):
    J = make_layout(random_matrix(rng, *shape, dtype), layout)
    check_kernel(rng, kernel, J)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ZERO_SHAPES, ids=str)
def test_zero_size(rng, kernel, layout, dtype, shape):
    # An empty sum is 0: out must be fully written with zeros.
    J = make_layout(random_matrix(rng, *shape, dtype), layout)
    check_kernel(rng, kernel, J)


@pytest.mark.parametrize("kernel", ["jtv_block", "jv_block"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [0, 1, 2, 5])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_block_batch_sizes(rng, kernel, dtype, batch, layout):
    J = make_layout(random_matrix(rng, 9, 17, dtype), layout)
    check_kernel(rng, kernel, J, batch=batch)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BIG_SHAPES, ids=str)
def test_big_shapes(rng, kernel, layout, dtype, shape):
    J = make_layout(random_matrix(rng, *shape, dtype), layout)
    check_kernel(rng, kernel, J, batch=4)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["C", "F", "strided", "negative"])
def test_big_shapes_threaded_2(rng, restore_threads, kernel, dtype, layout):
    threads_compared()
    # Same values under an explicit 2-thread override (OpenMP split).
    gradchain.set_num_threads(2)
    J = make_layout(random_matrix(rng, 600, 300, dtype), layout)
    check_kernel(rng, kernel, J, batch=4)


def _broadcasts(rng, m, n, dtype):
    row = rng.standard_normal(n).astype(dtype)
    col = rng.standard_normal(m).astype(dtype)
    return {
        "row": np.broadcast_to(row, (m, n)),                 # strides (0, s)
        "col": np.broadcast_to(col[:, None], (m, n)),        # strides (s, 0)
        "scalar": np.broadcast_to(dtype(1.5), (m, n)),       # strides (0, 0)
        "negcol": np.broadcast_to(col[::-1, None], (m, n)),  # (-s, 0)
    }


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("which", ["row", "col", "scalar", "negcol"])
@pytest.mark.parametrize("shape", [(1, 1), (5, 17), (4, 33), (9, 70),
                                   (300, 200)], ids=str)
def test_stride0_broadcast(rng, kernel, dtype, which, shape):
    J = _broadcasts(rng, *shape, dtype)[which]
    assert 0 in J.strides and not J.flags.writeable
    check_kernel(rng, kernel, J)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_readonly_inputs(rng, kernel, dtype):
    J = random_matrix(rng, 7, 20, dtype)
    x = kernel_input(rng, kernel, J)
    J.flags.writeable = False
    x.flags.writeable = False
    out = run_kernel(kernel, J, x)
    assert_close(out, *kernel_reference(kernel, J, x), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_transposed_views(rng, dtype):
    # J.T of a C-order array is F-order and vice versa; both kernels agree
    # with each other: jtv(J) == jv(J.T) in value.
    A = random_matrix(rng, 37, 21, dtype)
    g = rng.standard_normal(37).astype(dtype)
    o1 = np.empty(21, dtype)
    o2 = np.empty(21, dtype)
    K.jtv(A, g, o1)
    K.jv(A.T, g, o2)
    scale = abs_chain([A], g, True)
    assert_close(o1, reference_vjp([A], g), scale, dtype)
    assert_close(o2, reference_vjp([A], g), scale, dtype)


# --------------------------------------------------------------------------
# thread-count independence
# --------------------------------------------------------------------------

THREAD_CASES = [
    # (m, n, dtype): all with >= 2**15 elements
    (600, 300, np.float64),
    (600, 300, np.float32),
    (2048, 64, np.float64),     # 2 threads: 32-column halves
    (1024, 128, np.float32),    # 2 threads: 64-column halves
    (520, 256, np.float64),
    (300, 600, np.float32),
]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("layout", ["C", "F", "strided", "negative",
                                    "rowstrided"])
@pytest.mark.parametrize("case", THREAD_CASES,
                         ids=lambda c: f"{c[0]}x{c[1]}-{np.dtype(c[2]).name}")
def test_threads_bitwise_identical(rng, restore_threads, kernel, layout, case):
    """gc_dense.h: 'results do not depend on [nthreads]'."""
    threads_compared()
    m, n, dtype = case
    J = make_layout(random_matrix(rng, m, n, dtype), layout)
    # batch 1 goes through the threaded single-vector kernels too
    x = kernel_input(rng, kernel, J, batch=1)
    gradchain.set_num_threads(1)
    assert gradchain.get_num_threads() == 1
    out1 = run_kernel(kernel, J, x)
    gradchain.set_num_threads(2)
    assert gradchain.get_num_threads() == 2
    out2 = run_kernel(kernel, J, x)
    ref, scale = kernel_reference(kernel, J, x)
    assert_close(out1, ref, scale, dtype)
    assert_close(out2, ref, scale, dtype)
    assert np.array_equal(out1, out2), (
        f"1 vs 2 threads differ in {np.sum(out1 != out2)} entries, "
        f"max |diff| {np.max(np.abs(out1.astype(float) - out2)):.3g}")


@pytest.mark.parametrize("nthreads", [3, 4, 8])
@pytest.mark.parametrize("kernel", ["jtv", "jv"])
@pytest.mark.parametrize("layout", ["C", "F"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_threads_bitwise_identical_more_threads(rng, restore_threads, nthreads,
                                                kernel, layout, dtype):
    threads_compared()
    J = make_layout(random_matrix(rng, 600, 300, dtype), layout)
    x = kernel_input(rng, kernel, J)
    gradchain.set_num_threads(1)
    out1 = run_kernel(kernel, J, x)
    gradchain.set_num_threads(nthreads)
    out_n = run_kernel(kernel, J, x)
    assert_close(out_n, *kernel_reference(kernel, J, x), dtype)
    assert np.array_equal(out1, out_n), (
        f"1 vs {nthreads} threads differ in {np.sum(out1 != out_n)} entries")


# --------------------------------------------------------------------------
# NaN and Inf: IEEE semantics, entry by entry
# --------------------------------------------------------------------------

NAN_SHAPES = [(1, 1), (5, 17), (9, 33), (4, 70), (257, 128), (600, 300)]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", NAN_SHAPES, ids=str)
def test_nan_in_J_with_zero_input(rng, kernel, layout, dtype, shape):
    # A NaN at J[i, j] poisons exactly the outputs that multiply it, even
    # by zero (0 * NaN = NaN); every other output is an exact zero.
    m, n = shape
    i, j = m // 2, (2 * n) // 3
    A = random_matrix(rng, m, n, dtype)
    A[i, j] = np.nan
    J = make_layout(A, layout)
    transposed = kernel in ("jtv", "jtv_block")
    length = m if transposed else n
    x = np.zeros(length if kernel in ("jtv", "jv") else (3, length), dtype)
    out = run_kernel(kernel, J, x)
    expected = np.zeros(out.shape, dtype)
    expected[..., j if transposed else i] = np.nan
    assert np.array_equal(out, expected, equal_nan=True), np.argwhere(
        ~((out == expected) | (np.isnan(out) & np.isnan(expected))))[:5]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", NAN_SHAPES[1:], ids=str)
def test_inf_in_J(rng, kernel, layout, dtype, shape):
    # +Inf times a positive input gives +Inf; +Inf and -Inf in the same
    # output's sum give NaN; Inf times 0 gives NaN; other outputs are
    # finite and correct.
    m, n = shape
    transposed = kernel in ("jtv", "jtv_block")
    A = np.abs(random_matrix(rng, m, n, dtype)) + dtype(0.5)
    # choose entries so that outputs a, b, c are affected as described
    if transposed:          # out index = column; contraction over rows
        a, b, c = 0, n // 2, n - 1
        A[m - 1, a] = np.inf
        A[0, b], A[m - 1, b] = np.inf, -np.inf
        A[m // 2, c] = np.inf
        zero_at = m // 2
        n_in = m
    else:                   # out index = row; contraction over columns
        a, b, c = 0, m // 2, m - 1
        A[a, n - 1] = np.inf
        A[b, 0], A[b, n - 1] = np.inf, -np.inf
        A[c, n // 2] = np.inf
        zero_at = n // 2
        n_in = n
    xv = np.abs(rng.standard_normal(n_in)).astype(dtype) + dtype(0.25)
    xv[zero_at] = 0
    J = make_layout(A, layout)
    x = xv if kernel in ("jtv", "jv") else np.tile(xv, (3, 1))
    out = run_kernel(kernel, J, x)

    expected_inf = np.zeros(out.shape[-1], bool)
    expected_nan = np.zeros(out.shape[-1], bool)
    assert len({a, b, c}) == 3
    expected_inf[a] = True
    expected_nan[b] = True
    expected_nan[c] = True              # Inf * 0
    assert np.array_equal(np.isnan(out), np.broadcast_to(expected_nan, out.shape))
    assert np.array_equal(np.isposinf(out),
                          np.broadcast_to(expected_inf, out.shape))
    assert not np.isneginf(out).any()
    # the finite entries are right
    finite = ~(expected_inf | expected_nan)
    Af = np.where(np.isfinite(A), A, 0)
    ref = (reference_vjp if transposed else reference_jvp)([Af], x)
    scale = abs_chain([Af], x, transposed)
    assert_close(out[..., finite], ref[..., finite], scale[..., finite], dtype)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 17), (9, 40), (600, 300)], ids=str)
def test_inf_in_input(rng, kernel, dtype, shape):
    # x[i] = Inf: each output that multiplies it by a nonzero J entry is
    # +-Inf (its sign), by a zero entry NaN.
    m, n = shape
    transposed = kernel in ("jtv", "jtv_block")
    A = random_matrix(rng, m, n, dtype)
    if transposed:
        i = m // 3
        A[i, ::3] = 0
        line = A[i, :]
        x1 = rng.standard_normal(m).astype(dtype)
    else:
        i = n // 3
        A[::3, i] = 0
        line = A[:, i]
        x1 = rng.standard_normal(n).astype(dtype)
    x1[i] = np.inf
    x = x1 if kernel in ("jtv", "jv") else np.stack([x1, x1])
    out = run_kernel(kernel, make_layout(A, "C"), x)
    exp_nan = line == 0
    exp_pinf = line > 0
    exp_ninf = line < 0
    assert np.array_equal(np.isnan(out), np.broadcast_to(exp_nan, out.shape))
    assert np.array_equal(np.isposinf(out), np.broadcast_to(exp_pinf, out.shape))
    assert np.array_equal(np.isneginf(out), np.broadcast_to(exp_ninf, out.shape))


# --------------------------------------------------------------------------
# argument checks of the entry points
# --------------------------------------------------------------------------

@pytest.mark.parametrize("kernel", KERNELS)
def test_entry_point_shape_mismatch(kernel):
    J = np.ones((3, 4))
    if kernel == "jtv":
        args = (np.ones(4), np.empty(4))          # g must have 3 entries
    elif kernel == "jv":
        args = (np.ones(3), np.empty(3))          # v must have 4 entries
    elif kernel == "jtv_block":
        args = (np.ones((2, 3)), np.empty((2, 3)))  # out must be (2, 4)
    else:
        args = (np.ones((2, 4)), np.empty((3, 3)))  # out must be (2, 3)
    with pytest.raises(ValueError, match="shape mismatch"):
        getattr(K if kernel in ("jtv", "jv") else _blas, kernel)(J, *args)


# --------------------------------------------------------------------------
# long sums (issue 12, item 1): a row of millions of terms sums in a fixed
# cascade of blocks, contiguous or strided, no worse than np.dot
# --------------------------------------------------------------------------

@pytest.mark.skipif(np.finfo(np.longdouble).nmant < 60,
                    reason="needs an extended long double for the reference")
@pytest.mark.parametrize("dtype", DTYPES)
def test_long_row_sums_against_long_double(rng, dtype):
    m = 3 * 10**6
    eps = np.finfo(dtype).eps
    buf = rng.random((1, 2 * m)).astype(dtype)
    strided = buf[:, ::2]
    contig = np.ascontiguousarray(strided)
    v = rng.random(m).astype(dtype)
    ref = np.sum(contig[0].astype(np.longdouble) * v.astype(np.longdouble))
    y = gradchain.jvp([contig], v)
    ys = gradchain.jvp([strided], v)
    # the same operations in the same order: the same bits either way
    assert y.tobytes() == ys.tobytes()
    err = float(abs(np.longdouble(y[0]) - ref) / ref)
    err_np = float(abs(np.longdouble(np.dot(contig[0], v)) - ref) / ref)
    assert err <= max(err_np, 4 * eps)
    # before the cascade: float32 summed 94K terms a lane (~100 eps here),
    # the strided row two running sums (~1000 eps)
    assert err <= 4 * eps


@pytest.mark.parametrize("dtype", DTYPES)
def test_long_rows_bitwise_independent_of_threads(rng, dtype, restore_threads):
    """Rows longer than a block (the cascade) and rows of a block or less
    (the plain lanes) give the same bits for 1 and 2 threads, and a
    strided view the bits of its contiguous copy."""
    for n in (5000, 2048, 1000):
        J = rng.standard_normal((37, 2 * n)).astype(dtype)[:, ::2]
        v = rng.standard_normal(n).astype(dtype)
        outs = []
        for t in (1, 2):
            gradchain.set_num_threads(t)
            outs.append(gradchain.jvp([J], v).tobytes())
            outs.append(gradchain.jvp([np.ascontiguousarray(J)], v).tobytes())
        assert len(set(outs)) == 1, n
        ref = J.astype(np.float64) @ v.astype(np.float64)
        np.testing.assert_allclose(np.frombuffer(outs[0], dtype), ref,
                                   rtol=0, atol=50 * np.finfo(dtype).eps * np.abs(J).sum(1).max())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("accumulate", [None, "float64"])
def test_short_rows_grouped_fold_same_bits_as_strided(rng, dtype, accumulate):
    """Short contiguous rows fold their lanes a group of rows at a time
    (issue 12, item 5); a strided view folds row by row.  Row counts that
    leave a partial group, and row lengths with and without a tail past the
    lanes, give the same bits either way and for 1 and 2 threads."""
    for m in (1, 3, 4, 7, 8, 13, 16, 37):
        for n in (16, 20, 32, 33, 47, 64, 100):
            J = rng.standard_normal((m, 2 * n)).astype(dtype)[:, ::2]
            v = rng.standard_normal(n).astype(dtype)
            got = {gradchain.jvp([J], v, accumulate=accumulate).tobytes(),
                   gradchain.jvp([np.ascontiguousarray(J)], v,
                                 accumulate=accumulate).tobytes()}
            assert len(got) == 1, (m, n)
            out = np.frombuffer(got.pop(), np.float64 if accumulate else dtype)
            ref = J.astype(np.float64) @ v.astype(np.float64)
            tol = 4 * n * np.finfo(np.float64 if accumulate else dtype).eps
            np.testing.assert_allclose(out, ref, rtol=0,
                                       atol=tol * (np.abs(J) @ np.abs(v)).max())


# --------------------------------------------------------------------------
# accumulate="float64" (issue 12, item 3): float32 links, float64 sums
# --------------------------------------------------------------------------

def _as_f64_same_layout(J):
    """J converted to float64 with J's strides (in elements)."""
    if J.flags.c_contiguous:
        return J.astype(np.float64)
    if J.flags.f_contiguous:
        return np.asfortranarray(J, dtype=np.float64)
    base = J.base.astype(np.float64)
    return np.lib.stride_tricks.as_strided(
        base, J.shape, tuple(s * 2 for s in J.strides))


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
@pytest.mark.parametrize("batch", [None, 3])
@pytest.mark.parametrize("mode", ["vjp", "jvp"])
def test_accumulate_float64_is_the_float64_chain(rng, layout, batch, mode):
    # float32 links read in place by the mixed kernels give the float64
    # chain's result on the same links converted
    Js = []
    for _ in range(4):
        A = rng.standard_normal((40, 80)).astype(np.float32)
        Js.append({"C": np.ascontiguousarray(A[:, :40]),
                   "F": np.asfortranarray(A[:, :40]),
                   "strided": A[:, ::2]}[layout])
    J64 = [_as_f64_same_layout(J) for J in Js]
    x = rng.standard_normal(40 if batch is None else (batch, 40)).astype(np.float32)
    chain, ref = gradchain.Chain(Js), gradchain.Chain(J64)
    got = getattr(chain, mode)(x, accumulate="float64")
    want = getattr(ref, mode)(x.astype(np.float64))
    assert got.dtype == np.float64
    assert chain._last_strategy()[1] == "mixed"
    # the same operations in the same order; the compiler may contract a
    # multiply-add into an FMA differently in the two instances
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
    # the functional form, intermediates, and float64 input without the keyword
    np.testing.assert_array_equal(
        getattr(gradchain, mode)(Js, x, accumulate="float64"), got)
    traj = getattr(chain, mode)(x, accumulate="float64", intermediates=True)
    np.testing.assert_array_equal(traj[0 if mode == "vjp" else 4], got)
    np.testing.assert_array_equal(getattr(chain, mode)(x.astype(np.float64)), got)
    # a float64 chain ignores it
    np.testing.assert_array_equal(getattr(ref, mode)(x, accumulate="float64"),
                                  getattr(ref, mode)(x))


def test_accumulate_float64_per_sample_and_structured(rng):
    P = rng.standard_normal((6, 20, 20)).astype(np.float32)
    S = rng.standard_normal((20, 20)).astype(np.float32)
    G = rng.standard_normal((6, 20)).astype(np.float32)
    chain = gradchain.Chain([P, S, P])
    got = chain.vjp(G, accumulate="float64")
    assert chain._last_strategy()[1] == "mixed"
    want = gradchain.Chain([P.astype(np.float64), S.astype(np.float64),
                            P.astype(np.float64)]).vjp(G.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
    # a chain with a structured link is converted for the call: same values
    d = rng.uniform(0.5, 2, 20).astype(np.float32)
    c2 = gradchain.Chain([S, gradchain.Diagonal(d), S])
    g = rng.standard_normal(20).astype(np.float32)
    r = c2.vjp(g, accumulate="float64")
    assert r.dtype == np.float64 and c2._last_strategy()[1] == "promoted"
    S64 = S.astype(np.float64)
    np.testing.assert_allclose(r, S64.T @ (d.astype(np.float64) * (S64.T @ g)),
                               rtol=1e-13)
    J = chain.jacobian(accumulate="float64")
    assert J.dtype == np.float64 and J.shape == (6, 20, 20)
    np.testing.assert_allclose(J, P.astype(np.float64) @ S64 @ P.astype(np.float64),
                               rtol=1e-12, atol=1e-12)


def test_accumulate_float64_long_row_accuracy(rng):
    # one float32 row of 3e6 terms: float64 sums are ~1 float64 ulp of the
    # exact value (computed in long double from the same float32 values);
    # the float32 result is only as good as float32 can hold
    n = 3_000_000
    J = rng.standard_normal((1, n)).astype(np.float32)
    v = rng.standard_normal(n).astype(np.float32)
    exact = float(np.dot(J[0].astype(np.longdouble), v.astype(np.longdouble)))
    scale = float(np.dot(np.abs(J[0]).astype(np.float64), np.abs(v).astype(np.float64)))
    wide = gradchain.jvp([J], v, accumulate="float64")
    assert wide.dtype == np.float64
    assert abs(wide[0] - exact) <= 8 * np.finfo(np.float64).eps * scale
    narrow = gradchain.jvp([J], v)
    assert abs(wide[0] - exact) * 1e4 < max(abs(float(narrow[0]) - exact),
                                            np.finfo(np.float32).eps * abs(exact))


@pytest.mark.parametrize("bad", ["float32", "double64", 64, np.float32, True])
def test_accumulate_rejects(rng, bad):
    J = rng.standard_normal((3, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="accumulate must be None or 'float64'"):
        gradchain.vjp([J], np.ones(3, np.float32), accumulate=bad)
    with pytest.raises(ValueError, match="accumulate"):
        gradchain.Chain([J]).jacobian(accumulate=bad)


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_mixed_vector_kernels_entry_point(rng, layout):
    # the typed-memoryview entry point takes a float32 J with float64
    # vectors (the mixed kernels) and refuses a float64 J with float32 ones
    A = rng.standard_normal((30, 50)).astype(np.float32)
    J = {"C": np.ascontiguousarray(A[:, :25]), "F": np.asfortranarray(A[:, :25]),
         "strided": A[:, ::2]}[layout]
    g, v = rng.standard_normal(30), rng.standard_normal(25)
    out_t, out = np.empty(25), np.empty(30)
    K.jtv(J, g, out_t)
    K.jv(J, v, out)
    J64 = J.astype(np.float64)
    np.testing.assert_allclose(out_t, J64.T @ g, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(out, J64 @ v, rtol=1e-13, atol=1e-13)
    with pytest.raises(TypeError):
        K.jtv(J64, g.astype(np.float32), np.empty(25, np.float32))
