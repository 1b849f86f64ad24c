"""Adversarial inputs: one regression test per finding of issue 8.

Every call here once crashed the interpreter, read or wrote out of bounds,
returned garbage or raised the wrong exception.  Each test states the
correct behaviour: a clean ValueError/TypeError whose message names the
offending argument, or the right result checked against NumPy.
"""
import re
import threading

import numpy as np
import pytest

import gradchain as gc
from gradchain import Chain

f32 = np.float32


def raises(exc, text):
    return pytest.raises(exc, match=re.escape(text))


# --------------------------------------------------------------------------
# 1, 2: callback outputs are checked before compiled code reads them
# --------------------------------------------------------------------------

def test_user_map_with_extra_rows_is_refused():
    # finding 1: the loss looped over the callback's rows, labels over B
    f = gc.compose(
        gc.Map(lambda x: np.zeros((x.shape[0] + 100000, x.shape[1])),
               vjp=lambda x, g: g),
        loss=gc.CrossEntropy(np.zeros(2, int)))
    with raises(ValueError, "maps[0].fn returned shape (100002, 3), expected (2, any)"):
        f.value_and_grad(np.zeros((2, 3)))


def test_narrow_jacobian_in_the_middle_is_refused():
    # finding 2: garbage from an out-of-bounds read in the next Affine
    m = gc.Map(np.sin, jacobian=lambda x: np.diag(np.cos(x))[:-1])
    f = gc.compose(gc.Affine(np.eye(3)), m, gc.Affine(np.eye(3)))
    with raises(ValueError, "maps[1].jacobian returned shape (2, 3), expected (3, 3)"):
        f.jvp(np.ones(3), np.ones(3))
    with raises(ValueError, "maps[1].jacobian returned shape (2, 3), expected (3, 3)"):
        f.vjp(np.ones(3), np.ones(3))
    with raises(ValueError, "maps[1].jacobian returned shape (2, 3), expected (3, 3)"):
        f.chain(np.ones(3))


@pytest.mark.parametrize("batch", [False, True])
def test_narrow_vjp_block_is_refused(batch):
    # finding 2: a narrow vjp block segfaulted inside BLAS
    m = gc.Map(np.sin, vjp=lambda x, g: g[..., :1])
    f = gc.compose(gc.Affine(np.eye(3)), m, gc.Affine(np.ones((1000, 3))),
                   loss=gc.SquaredError(np.zeros(1000)))
    x = np.ones((4, 3)) if batch else np.ones(3)
    want = "(4, 3)" if batch else "(3,)"
    got = "(4, 1)" if batch else "(1,)"
    with raises(ValueError, f"maps[1].vjp returned shape {got}, expected {want}"):
        f.value_and_grad(x)


def test_jvp_must_have_the_output_shape():
    m = gc.Map(lambda x: x[..., :2], jvp=lambda x, v: v)   # v is 3 wide
    f = gc.compose(m, gc.Affine(np.ones((4, 2))))
    with raises(ValueError, "maps[0].jvp returned shape (3,), expected (2,)"):
        f.jvp(np.ones(3), np.ones(3))


@pytest.mark.parametrize("result, exc, text", [
    (lambda x, g: g * 1j, TypeError, "maps[0].vjp returned complex values"),
    (lambda x, g: None, TypeError, "maps[0].vjp's result has dtype object"),
    (lambda x, g: "abc", TypeError, "maps[0].vjp's result has dtype <U3"),
    (lambda x, g: 3.0, ValueError, "maps[0].vjp returned shape (), expected (3,)"),
    (lambda x, g: [[1.0, 2.0], [3.0]], TypeError, "maps[0].vjp's result could not"),
    (lambda x, g: np.ma.masked_array(g, False), TypeError,
     "maps[0].vjp's result is a masked array"),
])
def test_bad_callback_results_raise(result, exc, text):
    f = gc.compose(gc.Map(np.sin, vjp=result), loss=gc.SquaredError(np.zeros(3)))
    with raises(exc, text):
        f.value_and_grad(np.ones(3))


def test_callback_results_of_other_dtypes_are_converted():
    # ints and float64 results in a float32 composition: converted, not refused
    f = gc.compose(gc.Map(lambda x: (x * 0).astype(int) + 1,
                          vjp=lambda x, g: np.ones(x.shape, np.float64)),
                   loss=gc.SquaredError(np.zeros(3, f32)))
    L, g = f.value_and_grad(np.ones(3, f32))
    assert L == 1.5 and g.dtype == f32
    np.testing.assert_array_equal(g, np.ones(3, f32))


def test_a_callback_exception_propagates_unchanged():
    def boom(x):
        raise RuntimeError("user says no")
    f = gc.compose(gc.Map(boom, vjp=lambda x, g: g), loss=gc.SquaredError(np.zeros(3)))
    with raises(RuntimeError, "user says no"):
        f.value_and_grad(np.ones(3))


def test_callbacks_get_read_only_inputs_and_cannot_corrupt_the_pass():
    x = np.array([0.1, 0.2, 0.3])
    keep = x.copy()

    def mutate(x):
        x += 1
        return x

    f = gc.compose(gc.Map(mutate, vjp=lambda x, g: g), loss=gc.SquaredError(np.zeros(3)))
    with pytest.raises(ValueError, match="read-only"):
        f.value_and_grad(x)
    np.testing.assert_array_equal(x, keep)


def test_identity_callback_result_is_not_the_callers_array():
    x = np.array([0.1, 0.2, 0.3])
    f = gc.compose(gc.Map(lambda x: x, vjp=lambda x, g: g))
    y, xs = f.forward(x)
    assert not any(np.shares_memory(a, x) for a in xs)
    g = f.vjp(x, x)
    assert not np.shares_memory(g, x)
    np.testing.assert_array_equal(g, x)


def test_same_user_map_twice_is_named_by_its_position():
    bad = gc.Map(np.sin, vjp=lambda x, g: g[..., :1])
    good = gc.Map(np.sin, vjp=lambda x, g: g * np.cos(x))
    f = gc.compose(good, gc.Tanh(), good, bad, loss=gc.SquaredError(np.zeros(3)))
    with raises(ValueError, "maps[3].vjp returned shape (1,)"):
        f.value_and_grad(np.ones(3))


def test_batched_user_jacobian_against_numpy(rng):
    W = rng.standard_normal((4, 3))
    m = gc.Map(lambda x: np.tanh(x @ W.T),
               jacobian=lambda x: (1 - np.tanh(W @ x) ** 2)[:, None] * W)
    f = gc.compose(m, loss=gc.SquaredError(np.zeros(4)))
    X = rng.standard_normal((5, 3))
    L, G = f.value_and_grad(X)
    Y = np.tanh(X @ W.T)
    np.testing.assert_allclose(L, 0.5 * np.sum(Y ** 2), rtol=1e-12)
    np.testing.assert_allclose(G, (Y * (1 - Y ** 2)) @ W, rtol=1e-12)


# --------------------------------------------------------------------------
# 3: operators are immutable and checked when bound
# --------------------------------------------------------------------------

@pytest.mark.parametrize("op, attr", [
    (gc.Diagonal(np.ones(3)), "diagonal"),
    (gc.DiagonalPlusRankOne(np.ones(3), np.ones(3), np.ones(3)), "u"),
    (gc.DiagonalPlusRankOne(np.ones(3), np.ones(3), np.ones(3)), "c"),
    (gc.Identity(3), "n"),
    (gc.Identity(3), "scale"),
    (gc.Dense(np.ones((2, 3))), "matrix"),
])
def test_operator_attributes_are_read_only(op, attr):
    name = type(op).__name__
    with raises(AttributeError, f"{name}.{attr} cannot be set: operators are immutable"):
        setattr(op, attr, np.ones(1))
    with raises(AttributeError, f"{name}.{attr} cannot be set"):
        delattr(op, attr)


class _ShortDiagonal(gc.Diagonal):
    """Claims n = 5 but hands the chain a vector of 1."""
    __slots__ = ()

    @property
    def shape(self):
        return (5, 5)

    def _gc_vectors(self):
        return (np.ones(1),)


class _WideRankOne(gc.DiagonalPlusRankOne):
    __slots__ = ()

    def _gc_vectors(self):
        return (self.diagonal, np.ones((3, 2)), self.v)


class _ComplexDiagonal(gc.Diagonal):
    __slots__ = ()

    def _gc_vectors(self):
        return (self.diagonal * 1j,)


class _BadShape(gc.Diagonal):
    __slots__ = ()

    @property
    def shape(self):
        return (3, 4)


class _BadScale(gc.Identity):
    __slots__ = ()

    def _gc_scale(self):
        return "two"


@pytest.mark.parametrize("op, exc, text", [
    (_ShortDiagonal(np.ones(5)), ValueError,
     "jacobians[1] (_ShortDiagonal) has shape (5, 5) but its vector 0 has shape (1,), expected (5,)"),
    (_WideRankOne(np.ones(5), np.ones(5), np.ones(5)), ValueError,
     "its vector 1 has shape (3, 2), expected (5,)"),
    (_ComplexDiagonal(np.ones(5)), TypeError, "jacobians[1]'s vector 0 has complex dtype"),
    (_BadShape(np.ones(5)), ValueError, "jacobians[1] (_BadShape) has shape (3, 4); a "
                                        "structured operator is square"),
    (_BadScale(5), TypeError, "jacobians[1] (_BadScale) has scale 'two'"),
])
def test_lying_operator_subclasses_are_refused_at_bind(op, exc, text):
    with raises(exc, text):
        Chain([np.ones((5, 4)), op])


def test_overlap_check_sees_the_bound_vectors():
    d = np.ones(6)
    op = gc.Diagonal(d[:3])
    chain = Chain([op])
    object.__setattr__(op, "_d", np.ones(3))     # forced past immutability
    with raises(ValueError, "out shares memory with jacobians[0]"):
        chain.vjp(np.ones(3), out=d[:3])


# --------------------------------------------------------------------------
# 4: a thread changing the labels cannot make the loss index out of bounds
# --------------------------------------------------------------------------

def test_label_race_never_indexes_out_of_bounds():
    labels = np.zeros(64, dtype=np.int64)
    f = gc.compose(gc.Tanh(), loss=gc.CrossEntropy(labels))
    x = np.ones((64, 5))
    stop = threading.Event()

    def flip():
        while not stop.is_set():
            labels[0] = 1 << 40
            labels[0] = 0

    t = threading.Thread(target=flip)
    t.start()
    try:
        for _ in range(2000):
            try:
                L, G = f.value_and_grad(x, reduction="none")
            except ValueError as e:
                assert "labels[0] = 1099511627776 is out of range" in str(e)
                continue
            # validated copy: the label the loss used was 0
            np.testing.assert_allclose(L[0], np.log(5.0) + 0.0, rtol=1e-12)
    finally:
        stop.set()
        t.join()


def test_labels_follow_in_place_changes_and_are_copied_per_call():
    labels = np.array([0, 1])
    f = gc.compose(gc.Tanh(), loss=gc.CrossEntropy(labels))
    x = np.zeros((2, 3))
    L1, _ = f.value_and_grad(x, reduction="none")
    labels[:] = [2, 2]
    L2, G2 = f.value_and_grad(x, reduction="none")
    np.testing.assert_allclose(L1, np.log(3.0))
    np.testing.assert_allclose(G2, np.full((2, 3), 1 / 3) - np.eye(3)[[2, 2]])
    labels[1] = 7
    with raises(ValueError, "labels[1] = 7 is out of range for 3 classes"):
        f.value_and_grad(x)


@pytest.mark.parametrize("labels, exc, text", [
    (np.array([0.0, 1.0]), TypeError, "labels must be integers, got dtype float64"),
    (np.array([True, False]), TypeError, "labels must be integers, got dtype bool"),
    (np.array([0, 2**64 - 1], dtype=np.uint64), ValueError,
     "labels[1] = 18446744073709551615 is out of range for 3 classes"),
    (np.array([0, -1]), ValueError, "labels[1] = -1 is out of range for 3 classes"),
])
def test_bad_labels(labels, exc, text):
    with raises(exc, text):
        gc.compose(gc.Tanh(), loss=gc.CrossEntropy(labels)).value_and_grad(np.ones((2, 3)))


# --------------------------------------------------------------------------
# 5, 6: sizes never wrap; a product through a zero width is zeros
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, e", [(f32, 60), (np.float64, 59)])
def test_huge_declared_sizes_through_zero_width(dtype, e):
    # finding 5 (SIGFPE: 2 * maxw * sizeof(double) wrapped to 0) and 6
    # (MemoryError where the answer is zeros)
    links = [np.empty((0, 3), dtype), np.empty((2 ** e, 0), dtype),
             np.empty((0, 2 ** e), dtype), np.ones((2, 0), dtype)]
    out = gc.vjp(links, np.ones(2, dtype))
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, np.zeros(3, dtype))
    np.testing.assert_array_equal(gc.vjp(links, np.full((4, 2), np.nan, dtype)),
                                  np.zeros((4, 3), dtype))
    np.testing.assert_array_equal(gc.jvp(links, np.ones(3, dtype)), np.zeros(2, dtype))
    np.testing.assert_array_equal(gc.jacobian(links), np.zeros((2, 3), dtype))
    res = np.full(3, 7.0, dtype)
    gc.vjp(links, np.ones(2, dtype), out=res)
    np.testing.assert_array_equal(res, np.zeros(3, dtype))
    assert Chain(links).plan(4).cost == 0


def test_zero_width_matches_numpy():
    # an empty sum is 0, NaN or not, as NumPy's @
    A = np.full((3, 0), np.nan)
    B = np.full((0, 2), np.inf)
    np.testing.assert_array_equal(gc.jacobian([B, A]), A @ B)


def test_work_buffers_that_cannot_exist_raise_memory_error():
    # widths whose 2 * B * maxw work buffer does not fit the address space:
    # a MemoryError naming the sizes, never a wrap-around
    # (zero-stride links: no memory behind them)
    chain = Chain([np.broadcast_to(np.ones(1), (2 ** 40, 1)),
                   np.broadcast_to(np.ones(1), (1, 2 ** 40))])
    G = np.ones((2 ** 22, 1))
    with pytest.raises(MemoryError, match=r"work buffers for a batch of 4194304 "
                                          r"through widths up to 1099511627776"):
        chain.vjp(G)


# --------------------------------------------------------------------------
# 7: one rule for masked arrays
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int64, bool])
def test_masked_cotangent_of_any_dtype_is_refused(dtype):
    g = np.ma.masked_array(np.ones(2, dtype), [0, 1])
    with raises(TypeError, "cotangent is a masked array"):
        gc.vjp([np.eye(2)], g)
    with raises(TypeError, "tangent is a masked array"):
        gc.jvp([np.eye(2)], g)


def test_masked_arrays_everywhere_are_refused():
    M = np.ma.masked_array(np.eye(2), [[0, 1], [0, 0]])
    v = np.ma.masked_array(np.ones(2), [0, 1])
    with raises(TypeError, "jacobians[0] is a masked array"):
        gc.vjp([M], np.ones(2))
    with raises(TypeError, "jacobians is a masked array"):
        gc.vjp(np.ma.masked_array(np.ones((1, 2, 2)), False), np.ones(2))
    with raises(TypeError, "out is a masked array"):
        gc.vjp([np.eye(2)], np.ones(2), out=np.ma.masked_array(np.ones(2), False))
    with raises(TypeError, "d is a masked array"):
        gc.Diagonal(v)
    with raises(TypeError, "W is a masked array"):
        gc.Affine(M)
    with raises(TypeError, "b is a masked array"):
        gc.Affine(np.eye(2), v)
    with raises(TypeError, "target is a masked array"):
        gc.SquaredError(v)
    with raises(TypeError, "labels is a masked array"):
        gc.CrossEntropy(np.ma.masked_array([0, 1], [0, 1]))
    f = gc.compose(gc.Tanh(), loss=gc.SquaredError(np.zeros(2)))
    with raises(TypeError, "x is a masked array"):
        f.value_and_grad(v)
    with raises(TypeError, "g is a masked array"):
        gc.compose(gc.Tanh()).vjp(np.ones(2), v)


# --------------------------------------------------------------------------
# 8: unaligned input on the value_and_grad fast path
# --------------------------------------------------------------------------

def test_unaligned_input_on_the_fast_path():
    f = gc.compose(gc.Affine(np.eye(5) * 2), gc.Tanh(), loss=gc.SquaredError(np.zeros(5)))
    aligned = np.full((3, 5), 0.3)
    ref = f.value_and_grad(aligned)
    f.value_and_grad(aligned)                     # the fast path is set up
    raw = np.zeros(8 * 15 + 1, np.uint8)[1:]
    unaligned = raw.view(np.float64).reshape(3, 5)
    unaligned[...] = 0.3
    assert not unaligned.flags.aligned
    L, G = f.value_and_grad(unaligned)
    assert L == ref[0]
    np.testing.assert_array_equal(G, ref[1])


def test_unaligned_target_is_not_read_in_place():
    raw = np.zeros(8 * 5 + 1, np.uint8)[1:]
    t = raw.view(np.float64)
    t[...] = 0.5
    f = gc.compose(gc.Tanh(), loss=gc.SquaredError(t))
    L, G = f.value_and_grad(np.zeros(5))
    assert L == pytest.approx(0.625, rel=1e-15)
    np.testing.assert_array_equal(G, np.full(5, -0.5))


def test_program_entry_points_check_their_buffers():
    from gradchain._program import Program as Plan
    p = Plan([], np.dtype(np.float64))
    with raises(ValueError, "X must be an aligned, C-contiguous array of the plan's dtype"):
        p.run(np.ones((2, 3), f32), "forward")
    with raises(ValueError, "T has shape (2, 2), expected (2, 3)"):
        p.run(np.ones((2, 3)), "vjp", T=np.ones((2, 2)))
    with raises(ValueError, "labels must be a C-contiguous int64 array of shape (2,)"):
        p.loss_grad(np.ones((2, 3)), 3, None, np.zeros(1, np.int64))


# --------------------------------------------------------------------------
# 9: planning is bounded by the product (see test_accumulate for the plans)
# --------------------------------------------------------------------------

def test_one_shot_batched_vjp_through_a_long_chain(rng):
    # k = 1500 links of 1 x 1 with a batch of 3 took 2.6 s a call
    links = [rng.uniform(0.9, 1.1, (1, 1)) for _ in range(1500)]
    G = rng.standard_normal((3, 1))
    ref = G
    for J in reversed(links):
        ref = ref @ J
    for _ in range(3):
        np.testing.assert_allclose(gc.vjp(links, G), ref, rtol=1e-11)


# --------------------------------------------------------------------------
# 10: exception types and messages
# --------------------------------------------------------------------------

def test_exception_types_and_messages():
    with raises(ValueError, "n must be at most sys.maxsize"):
        Chain([gc.Identity(2 ** 63)])
    with raises(ValueError, "batch must be at most sys.maxsize"):
        Chain([np.eye(2)]).plan(batch=2 ** 63)
    with raises(TypeError, "n must be a positive int or None, got ndarray"):
        gc.set_num_threads(np.ones(3))
    with raises(TypeError, "n must be a positive int or None, got float 2.0"):
        gc.set_num_threads(2.0)
    assert gc.get_num_threads() >= 1


@pytest.mark.parametrize("batch", [False, True])
def test_operator_jacobian_of_another_dtype_joins_the_composition(batch):
    # a float64 operator from a user map's jacobian in a float32 composition
    # is taken in float32, as an array result would be
    m = gc.Map(np.sin, jacobian=lambda x: gc.Diagonal(np.cos(x).astype(np.float64)))
    f = gc.compose(gc.Affine(np.eye(3, dtype=f32)), m, loss=gc.SquaredError(np.zeros(3, f32)))
    x = np.full((2, 3) if batch else 3, 0.5, f32)
    L, g = f.value_and_grad(x)
    assert g.dtype == f32
    ref = np.sin(x.astype(np.float64)) * np.cos(x.astype(np.float64))
    np.testing.assert_allclose(g, ref, rtol=1e-6)
    for v in (f.vjp(x, np.ones_like(x)), f.jvp(x, np.ones_like(x))):
        assert v.dtype == f32
        np.testing.assert_allclose(v, np.cos(x.astype(np.float64)), rtol=1e-6)
