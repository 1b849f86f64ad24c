"""Structured Jacobian operators (gradchain.operators) alone, mixed with dense
links and with each other in a Chain, against independent NumPy references.

The dense reference of every operator is built here by hand from its
vectors (np.diag(d), c * np.eye(n), np.diag(d) + np.outer(u, v), and the
closed forms diag(s) - s s^T / I - 1 s^T for softmax / log-softmax), never
from ``todense()``, which is itself under test.

Error scale.  For a dense link the rounding-error scale is |J| (conftest).
A structured link is evaluated as d*x + a*(b . x), whose rounding error is
bounded by |d||x| + |a| (|b| . |x|), i.e. by the matrix
diag(|d|) + |u| |v|^T, which can be much larger than |diag(d) + u v^T|
where the two terms cancel (softmax at s_i close to 1).  The scale used
below is therefore the chain of these "absolute forms" (|c| I for a scaled
identity), which is the rigorous bound for the algorithm and still catches
any wrong term, element or buffer.
"""
import os
import pickle
import re
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradchain
from gradchain import (Chain, Dense, Diagonal, DiagonalPlusRankOne, Identity,
                       Operator, jvp, vjp)

from conftest import (DTYPES, assert_close, make_layout, random_matrix,
                      reference_jvp, reference_vjp)


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


KINDS = ["diagonal", "identity", "rank1", "softmax", "log_softmax"]
# straddle the 16 (float64) / 32 (float32) lanes of the rank-one dot
SIZES = [0, 1, 3, 16, 17, 33, 100]
BATCHES = [None, 0, 1, 5]          # None: a single vector
DENSE_LAYOUTS = ["C", "F", "strided"]


def raises(exc, msg):
    return pytest.raises(exc, match=re.escape(msg))


def f64(a):
    return np.array(a, dtype=np.float64)


def vec(rng, n, batch, dtype=np.float64):
    shape = (n,) if batch is None else (batch, n)
    return rng.standard_normal(shape).astype(dtype)


def softmax_point(rng, n, dtype):
    if n == 0:
        return np.zeros(0, dtype)
    z = rng.standard_normal(n)
    e = np.exp(z - z.max())
    return (e / e.sum()).astype(dtype)


class Link:
    """A chain link as given to gradchain (``obj``) with its hand-built
    float64 dense reference (``ref``) and error-scale matrix (``scale``)."""

    def __init__(self, obj, ref, scale):
        self.obj, self.ref, self.scale = obj, ref, scale


def make_op(rng, kind, n, dtype):
    """An operator of the given kind and size, with its dense reference."""
    if kind == "diagonal":
        d = rng.standard_normal(n).astype(dtype)
        return Link(Diagonal(d), np.diag(f64(d)), np.diag(np.abs(f64(d))))
    if kind == "identity":
        c = float(rng.choice([1.0, -0.5, 2.25, 0.1]))
        op = Identity(n) if c == 1.0 else Identity(n, scale=c)
        return Link(op, c * np.eye(n), abs(c) * np.eye(n))
    if kind == "rank1":
        d = rng.standard_normal(n).astype(dtype)
        u = (rng.standard_normal(n) / np.sqrt(max(n, 1))).astype(dtype)
        v = (rng.standard_normal(n) / np.sqrt(max(n, 1))).astype(dtype)
        ref = np.diag(f64(d)) + np.outer(f64(u), f64(v))
        scale = np.diag(np.abs(f64(d))) + np.outer(np.abs(f64(u)), np.abs(f64(v)))
        return Link(DiagonalPlusRankOne(d, u, v), ref, scale)
    if kind == "softmax":
        s = softmax_point(rng, n, dtype)
        s64 = f64(s)
        return Link(DiagonalPlusRankOne.softmax(s),
                    np.diag(s64) - np.outer(s64, s64),
                    np.diag(s64) + np.outer(s64, s64))
    if kind == "log_softmax":
        s = softmax_point(rng, n, dtype)
        s64 = f64(s)
        return Link(DiagonalPlusRankOne.log_softmax(s),
                    np.eye(n) - np.outer(np.ones(n), s64),
                    np.eye(n) + np.outer(np.ones(n), s64))
    raise ValueError(kind)


def make_dense(rng, m, n, dtype, layout="C", wrap=False):
    J = make_layout(random_matrix(rng, m, n, dtype), layout)
    return Link(Dense(J) if wrap else J, f64(J), np.abs(f64(J)))


def check(res, links, x, transpose, dtype):
    """res against the hand-built dense reference of the chain ``links``."""
    refs = [L.ref for L in links]
    scales = [L.scale for L in links]
    ax = np.abs(f64(x))
    if transpose:
        ref, sc = reference_vjp(refs, x), reference_vjp(scales, ax)
    else:
        ref, sc = reference_jvp(refs, x), reference_jvp(scales, ax)
    assert_close(res, ref, sc, dtype)


def run_both(links, dims, rng, dtype, batches=BATCHES):
    """vjp and jvp through Chain, vjp/jvp functions, for every batch size."""
    objs = [L.obj for L in links]
    chain = Chain(objs)
    for batch in batches:
        g = vec(rng, dims[-1], batch, dtype)
        v = vec(rng, dims[0], batch, dtype)
        g0, v0 = g.copy(), v.copy()
        for res in (chain.vjp(g), vjp(objs, g)):
            check(res, links, g, True, dtype)
            assert not np.shares_memory(res, g)
        for res in (chain.jvp(v), jvp(objs, v)):
            check(res, links, v, False, dtype)
        assert np.array_equal(g, g0) and np.array_equal(v, v0)
    return chain


# --------------------------------------------------------------------------
# todense, shape, dtype, repr
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", KINDS)
def test_todense_matches_hand_built(rng, kind, n, dtype):
    L = make_op(rng, kind, n, dtype)
    op = L.obj
    assert isinstance(op, Operator)
    assert op.shape == (n, n)
    D = op.todense()
    assert isinstance(D, np.ndarray) and D.shape == (n, n)
    if kind == "identity":
        assert op.dtype is None
        assert D.dtype == np.float64
        assert np.array_equal(D, L.ref)
    else:
        assert op.dtype == np.dtype(dtype)
        assert D.dtype == np.dtype(dtype)
        # u v^T is rounded once in dtype: within the rounding scale
        assert_close(D, L.ref, L.scale, dtype)
    name = np.dtype(dtype).name
    want = {"diagonal": f"Diagonal(n={n}, dtype={name})",
            "rank1": f"DiagonalPlusRankOne(n={n}, dtype={name})",
            "softmax": f"DiagonalPlusRankOne(n={n}, dtype={name})",
            "log_softmax": f"DiagonalPlusRankOne(n={n}, dtype={name})"}
    if kind == "identity":
        c = op.scale
        want = f"Identity({n})" if c == 1.0 else f"Identity({n}, scale={c!r})"
        assert repr(op) == want
        assert eval(repr(op), {"Identity": Identity}).todense().tolist() == \
            L.ref.tolist()
    else:
        assert repr(op) == want[kind]


def test_reprs():
    assert repr(Identity(3)) == "Identity(3)"
    assert repr(Identity(3, scale=2.5)) == "Identity(3, scale=2.5)"
    assert repr(Diagonal(np.ones(4, np.float32))) == "Diagonal(n=4, dtype=float32)"
    assert (repr(DiagonalPlusRankOne(np.ones(2), np.ones(2), np.ones(2)))
            == "DiagonalPlusRankOne(n=2, dtype=float64)")
    assert repr(Dense(np.ones((2, 3)))) == "Dense(shape=(2, 3), dtype=float64)"


# --------------------------------------------------------------------------
# values: each operator alone, in mixed chains, and chained with each other
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", KINDS)
def test_operator_alone(rng, kind, n, dtype):
    L = make_op(rng, kind, n, dtype)
    chain = run_both([L], [n, n], rng, dtype)
    assert len(chain) == 1
    assert chain.shapes == ((n, n),)
    assert chain.dims == (n, n)
    assert chain.jacobians[0] is L.obj
    assert chain.dtype == (None if kind == "identity" else np.dtype(dtype))
    for batch in BATCHES:
        g = vec(rng, n, batch, dtype)
        check(L.obj.rmatvec(g), [L], g, True, dtype)
        check(L.obj.matvec(g), [L], g, False, dtype)


@pytest.mark.parametrize("layout", DENSE_LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", KINDS)
def test_operator_in_mixed_chain(rng, kind, n, dtype, layout):
    # operator as first, middle (twice in a row) and last link, dense links
    # as plain arrays and as Dense(...), non-square, in the given layout
    m = n + 3
    other = KINDS[(KINDS.index(kind) + 1) % len(KINDS)]
    links = [make_op(rng, kind, n, dtype),
             make_dense(rng, m, n, dtype, layout),
             make_op(rng, other, m, dtype),
             make_op(rng, kind, m, dtype),
             make_dense(rng, n, m, dtype, layout, wrap=True),
             make_op(rng, kind, n, dtype)]
    chain = run_both(links, [n, n, m, m, m, n, n], rng, dtype)
    assert chain.dims == (n, n, m, m, m, n, n)
    assert chain.dtype == np.dtype(dtype)
    assert chain.jacobians[1] is links[1].obj
    assert chain.jacobians[4] is links[4].obj.matrix   # Dense is unwrapped
    for i in (0, 2, 3, 5):
        assert chain.jacobians[i] is links[i].obj


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_operators_chained_with_each_other(rng, n, dtype):
    links = [make_op(rng, k, n, dtype) for k in KINDS + KINDS[::-1]]
    run_both(links, [n] * (len(links) + 1), rng, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_identities_only_chain(rng, dtype):
    links = [make_op(rng, "identity", 17, dtype) for _ in range(3)]
    chain = run_both(links, [17] * 4, rng, dtype)
    assert chain.dtype is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_noncontiguous_and_readonly_vectors(rng, kind, dtype):
    L = make_op(rng, kind, 33, dtype)
    A = make_dense(rng, 33, 5, dtype, "F")
    links = [A, L]
    chain = Chain([A.obj, L.obj])
    G = np.asfortranarray(rng.standard_normal((4, 33)).astype(dtype))
    gbig = rng.standard_normal(66).astype(dtype)
    for g in (gbig[::2], gbig[::-2], G, G[::-1]):
        check(chain.vjp(g), links, g, True, dtype)
    v = rng.standard_normal((3, 5)).astype(dtype)
    v.flags.writeable = False
    check(chain.jvp(v), links, v, False, dtype)
    # read-only operator vectors are fine
    for a in L.obj.__class__.__slots__:
        val = getattr(L.obj, a)
        if isinstance(val, np.ndarray):
            val.flags.writeable = False
    check(Chain([A.obj, L.obj]).vjp(G), links, G, True, dtype)


# --------------------------------------------------------------------------
# dtype rule
# --------------------------------------------------------------------------

def _ops32(rng, n):
    return [make_op(rng, k, n, np.float32) for k in KINDS]


def test_float32_stays_float32(rng):
    A = make_dense(rng, 6, 4, np.float32)
    links = [A] + _ops32(rng, 6)
    chain = Chain([L.obj for L in links])
    assert chain.dtype == np.float32
    g = rng.standard_normal(6).astype(np.float32)
    check(chain.vjp(g), links, g, True, np.float32)
    # float16 vectors compute in float32 too
    g16 = g.astype(np.float16)
    check(chain.vjp(g16), links, g16, True, np.float32)


@pytest.mark.parametrize("kind", ["dense", "diagonal", "rank1", "softmax",
                                  "log_softmax"])
def test_float16_vectors_widen_to_float32(rng, kind):
    # the dtype rule: float16 is widened to float32, for operator vectors as
    # for arrays; the values are exact in float32
    n = 6
    h = [rng.standard_normal(n).astype(np.float16) for _ in range(3)]
    d, u, v = (f64(x) for x in h)
    s16 = softmax_point(rng, n, np.float16)
    s = f64(s16)
    if kind == "dense":
        M16 = rng.standard_normal((n, n)).astype(np.float16)
        op, ref, scale = Dense(M16), f64(M16), np.abs(f64(M16))
        vectors = (op.matrix,)
        sources = (M16,)
    elif kind == "diagonal":
        op, ref, scale = Diagonal(h[0]), np.diag(d), np.diag(np.abs(d))
        vectors, sources = (op.diagonal,), (h[0],)
    elif kind == "rank1":
        op = DiagonalPlusRankOne(h[0], h[1], h[2], -0.5)
        ref = np.diag(d) - 0.5 * np.outer(u, v)
        scale = np.diag(np.abs(d)) + 0.5 * np.outer(np.abs(u), np.abs(v))
        vectors, sources = (op.diagonal, op.u, op.v), tuple(h)
    elif kind == "softmax":
        op = DiagonalPlusRankOne.softmax(s16)
        ref = np.diag(s) - np.outer(s, s)
        scale = np.diag(s) + np.outer(s, s)
        vectors, sources = (op.diagonal, op.u, op.v), (s16,) * 3
    else:
        op = DiagonalPlusRankOne.log_softmax(s16)
        ref = np.eye(n) - np.outer(np.ones(n), s)
        scale = np.eye(n) + np.outer(np.ones(n), s)
        vectors, sources = (op.v,), (s16,)
    assert op.dtype == np.float32
    for a, src in zip(vectors, sources):
        assert a.dtype == np.float32
        assert np.array_equal(f64(a), f64(src))        # widening is exact
    D = op.todense()
    assert D.dtype == np.float32
    assert_close(D, ref, scale, np.float32)
    chain = Chain([op])
    assert chain.dtype == np.float32
    link = [Link(op, ref, scale)]
    g16 = rng.standard_normal((3, n)).astype(np.float16)
    for x in (g16, g16.astype(np.float32)):
        check(chain.vjp(x), link, x, True, np.float32)
        check(chain.jvp(x), link, x, False, np.float32)
        check(op.rmatvec(x), link, x, True, np.float32)
    # a float64 vector promotes the call to float64, as for float32
    g64 = rng.standard_normal(n)
    check(chain.vjp(g64), link, g64, True, np.float64)


@pytest.mark.parametrize("which", ["dense64", "diag64", "rank1_d64", "rank1_u64",
                                   "softmax64"])
def test_any_float64_gives_float64(rng, which):
    A = make_dense(rng, 6, 4, np.float64 if which == "dense64" else np.float32)
    ops = _ops32(rng, 6)
    d32 = rng.standard_normal(6).astype(np.float32)
    u32 = rng.standard_normal(6).astype(np.float32)
    if which == "diag64":
        ops.append(make_op(rng, "diagonal", 6, np.float64))
    elif which == "softmax64":
        ops.append(make_op(rng, "softmax", 6, np.float64))
    elif which in ("rank1_d64", "rank1_u64"):
        d = d32.astype(np.float64) if which == "rank1_d64" else d32
        u = u32.astype(np.float64) if which == "rank1_u64" else u32
        op = DiagonalPlusRankOne(d, u, d32)
        assert op.dtype == np.float64
        ops.append(Link(op, np.diag(f64(d)) + np.outer(f64(u), f64(d32)),
                        np.diag(np.abs(f64(d))) + np.outer(np.abs(f64(u)),
                                                           np.abs(f64(d32)))))
    links = [A] + ops
    chain = Chain([L.obj for L in links])
    assert chain.dtype == np.float64
    for i, L in enumerate(links[1:], 1):
        assert chain.jacobians[i] is L.obj
    g32 = rng.standard_normal((2, 6)).astype(np.float32)
    check(chain.vjp(g32), links, g32, True, np.float64)
    v32 = rng.standard_normal(4).astype(np.float32)
    check(chain.jvp(v32), links, v32, False, np.float64)


@pytest.mark.parametrize("x", [np.array([1, -2, 3, 0, 2]), np.array([1, 0, 1, 1, 0], bool),
                               np.array([3, 1, 4, 1, 5], np.uint8)],
                         ids=["int64", "bool", "uint8"])
def test_integer_and_bool_vectors_give_float64(rng, x):
    links32 = [make_op(rng, k, 5, np.float32) for k in KINDS]
    for links in (links32, [make_op(rng, "identity", 5, np.float32)]):
        chain = Chain([L.obj for L in links])
        check(chain.vjp(x), links, x, True, np.float64)
        check(chain.jvp(x), links, x, False, np.float64)
    # integer operator vectors become float64 operators
    op = Diagonal(np.array([1, 2, 3]))
    assert op.dtype == np.float64
    assert Chain([op]).dtype == np.float64
    res = op.rmatvec(np.array([1, 1, 2]))
    assert res.dtype == np.float64 and np.array_equal(res, [1.0, 2.0, 6.0])
    b = DiagonalPlusRankOne([True, False], [1, 0], [0, 1])
    assert b.dtype == np.float64
    assert np.array_equal(b.todense(), [[1.0, 1.0], [0.0, 0.0]])


@pytest.mark.parametrize("src,want", [(np.float32, np.float32), (np.float64, np.float64),
                                      (np.float16, np.float32), (np.int32, np.float64),
                                      (np.bool_, np.float64)])
def test_identity_follows_the_vector(rng, src, want):
    chain = Chain([Identity(3)])
    assert chain.dtype is None
    x = np.array([1, 0, 1]).astype(src)
    for res in (chain.vjp(x), chain.jvp(x), Identity(3).matvec(x),
                Identity(3, scale=-2).rmatvec(x)):
        assert res.dtype == np.dtype(want)
    assert np.array_equal(Identity(3, scale=-2).rmatvec(x), -2 * x.astype(np.float64))
    # Identity next to a float32 link: float32
    c32 = Chain([Identity(3), np.ones((2, 3), np.float32), Identity(2, 0.5)])
    assert c32.dtype == np.float32
    c64 = Chain([Identity(3), np.ones((2, 3))])
    assert c64.dtype == np.float64


@pytest.mark.parametrize("batch", [None, 3])
def test_float32_chain_float64_vector_promotes(rng, batch):
    links = [make_dense(rng, 7, 4, np.float32, "F")] + _ops32(rng, 7)
    chain = Chain([L.obj for L in links])
    assert chain.dtype == np.float32
    g = vec(rng, 7, batch, np.float64)
    v = vec(rng, 4, batch, np.float64)
    # computed in float64 from the (exactly representable) float32 values
    check(chain.vjp(g), links, g, True, np.float64)
    check(chain.jvp(v), links, v, False, np.float64)
    out = np.empty(4 if batch is None else (batch, 4))
    assert chain.vjp(g, out=out) is out
    check(out, links, g, True, np.float64)
    assert chain.dtype == np.float32
    for i, L in enumerate(links):
        if i:
            assert chain.jacobians[i] is L.obj
            assert L.obj.astype(np.float32).dtype in (None, np.float32)


def test_complex_raises(rng):
    for chain in (Chain([Identity(3)]), Chain([Diagonal(np.ones(3, np.float32))]),
                  Chain([DiagonalPlusRankOne.softmax([0.2, 0.3, 0.5])])):
        with pytest.raises(TypeError, match="complex"):
            chain.vjp(np.ones(3, complex))
        with pytest.raises(TypeError, match="complex"):
            chain.jvp(np.ones((2, 3), np.complex64))
    with raises(TypeError, "d has dtype complex128; operators take real"):
        Diagonal(np.ones(3, complex))
    with raises(TypeError, "u has dtype complex64"):
        DiagonalPlusRankOne(np.ones(3), np.ones(3, np.complex64), np.ones(3))
    with raises(TypeError, "s has dtype complex128"):
        DiagonalPlusRankOne.softmax(np.ones(3, complex))
    with raises(TypeError, "d has dtype <U1; operators take real"):
        Diagonal(np.array(["a", "b"]))


# --------------------------------------------------------------------------
# validation messages
# --------------------------------------------------------------------------

def test_rank_one_length_mismatch():
    with raises(ValueError, "u has shape (3,) but d has shape (4,); all three "
                            "must have length n"):
        DiagonalPlusRankOne(np.ones(4), np.ones(3), np.ones(4))
    with raises(ValueError, "v has shape (5,) but d has shape (4,); all three "
                            "must have length n"):
        DiagonalPlusRankOne(np.ones(4), np.ones(4), np.ones(5))


def test_vectors_must_be_1d():
    with raises(ValueError, "d must be 1-D, got shape (2, 2)"):
        DiagonalPlusRankOne(np.ones((2, 2)), np.ones(2), np.ones(2))
    with raises(ValueError, "d must be 1-D, got shape (2, 2)"):
        Diagonal(np.ones((2, 2)))
    with raises(ValueError, "d must be 1-D, got shape ()"):
        Diagonal(3.0)
    with raises(ValueError, "v must be 1-D, got shape (1, 2)"):
        DiagonalPlusRankOne(np.ones(2), np.ones(2), np.ones((1, 2)))
    with raises(ValueError, "s must be 1-D, got shape (2, 2)"):
        DiagonalPlusRankOne.softmax(np.ones((2, 2)) / 4)
    with raises(ValueError, "J must be 2-D, got shape (3,)"):
        Dense(np.ones(3))


def test_identity_validation():
    with raises(ValueError, "n must be a non-negative int, got -1"):
        Identity(-1)
    with raises(TypeError, "n must be a non-negative int, got 2.5"):
        Identity(2.5)
    with raises(TypeError, "n must be a non-negative int, got True"):
        Identity(True)
    with raises(TypeError, "n must be a non-negative int, got '3'"):
        Identity("3")
    with raises(TypeError, "scale must be a real number, got True"):
        Identity(3, scale=True)
    with raises(TypeError, "scale must be a real number, got 1j"):
        Identity(3, scale=1j)
    assert Identity(np.int64(4)).shape == (4, 4)
    assert type(Identity(np.int64(4)).n) is int
    assert Identity(0).shape == (0, 0)


def test_operator_width_mismatch_in_chain():
    W = np.ones((5, 3))
    W2 = np.ones((2, 5))
    with raises(ValueError, "jacobians[1] has shape (4, 4) but jacobians[0] "
                            "outputs 5 values"):
        Chain([W, Diagonal(np.ones(4)), W2])
    with raises(ValueError, "jacobians[2] has shape (2, 5) but jacobians[1] "
                            "outputs 4 values"):
        vjp([np.ones((4, 3)), Identity(4), W2], np.ones(2))
    with raises(ValueError, "jacobians[1] has shape (6, 6) but jacobians[0] "
                            "outputs 5 values"):
        Chain([W, DiagonalPlusRankOne.softmax(np.full(6, 1 / 6))])
    with raises(ValueError, "jacobians[1] has shape (5, 3) but jacobians[0] "
                            "outputs 4 values"):
        Chain([Identity(4, 2.0), Dense(np.ones((5, 3)))])


def test_vector_length_mismatch_names_the_operator():
    chain = Chain([Diagonal(np.ones(4)), Identity(4)])
    with raises(ValueError, "cotangent has shape (3,) but jacobians[1] (shape "
                            "(4, 4)) outputs 4 values"):
        chain.vjp(np.ones(3))
    with raises(ValueError, "tangent has shape (2, 5) but jacobians[0] (shape "
                            "(4, 4)) takes 4 inputs"):
        chain.jvp(np.ones((2, 5)))
    with raises(ValueError, "cotangent must be 1-D (n,) or 2-D (batch, n), got "
                            "shape (1, 1, 4)"):
        chain.vjp(np.ones((1, 1, 4)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_scalar_times_operator(rng, dtype):
    I3 = Identity(3)
    for r in (2 * I3, I3 * 2, I3 * np.float32(2.0), np.int64(2) * I3):
        assert type(r) is Identity and r.n == 3 and r.scale == 2.0
        assert np.array_equal(r.todense(), 2 * np.eye(3))
    r = -0.5 * Identity(4, scale=3.0)
    assert type(r) is Identity and r.scale == -1.5 and r.shape == (4, 4)
    assert I3.scale == 1.0                          # unchanged
    d = rng.standard_normal(5).astype(dtype)
    d0 = d.copy()
    D = Diagonal(d)
    for c in (3, 2.5, np.float64(-1.25)):
        for r in (c * D, D * c):
            assert type(r) is Diagonal
            assert r.dtype == np.dtype(dtype)
            assert np.array_equal(r.diagonal, (f64(d) * c).astype(dtype))
            assert np.array_equal(r.todense(), np.diag((f64(d) * c).astype(dtype)))
            assert not np.shares_memory(r.diagonal, d)
    assert np.array_equal(d, d0)
    # the products work in a chain
    g = rng.standard_normal(5).astype(dtype)
    L = Link(2.5 * D, np.diag(2.5 * f64(d)), np.diag(2.5 * np.abs(f64(d))))
    check(Chain([L.obj]).vjp(g), [L], g, True, dtype)
    Li = Link(-3 * Identity(5), -3 * np.eye(5), 3 * np.eye(5))
    check(Chain([Li.obj, L.obj]).jvp(g), [Li, L], g, False, dtype)
    # not scalars
    for bad, what in ((True, "'bool'"), (np.bool_(True), "'bool'"),
                      (1j, "'complex'")):
        for op in (D, I3):
            with raises(TypeError, f"unsupported operand type(s) for *: "
                                   f"'{type(op).__name__}' and {what}"):
                op * bad
    for bad in ("2", [2]):              # str/list * op: sequence repetition
        for op in (D, I3):
            with raises(TypeError, f"can't multiply sequence by non-int of "
                                   f"type '{type(op).__name__}'"):
                op * bad


# --------------------------------------------------------------------------
# references: the operators see in-place changes; inputs stay untouched
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_in_place_changes_are_seen(rng, dtype):
    n = 37
    d = rng.standard_normal(n).astype(dtype)
    d2, u, v = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    s = softmax_point(rng, n, dtype)
    A = rng.standard_normal((n, 4)).astype(dtype)
    ops = [Diagonal(d), DiagonalPlusRankOne(d2, u, v),
           DiagonalPlusRankOne.log_softmax(s)]
    chain = Chain([A] + ops)

    def links():
        s64 = f64(s)
        return [Link(A, f64(A), np.abs(f64(A))),
                Link(None, np.diag(f64(d)), np.diag(np.abs(f64(d)))),
                Link(None, np.diag(f64(d2)) + np.outer(f64(u), f64(v)),
                     np.diag(np.abs(f64(d2))) + np.outer(np.abs(f64(u)), np.abs(f64(v)))),
                Link(None, np.eye(n) - np.outer(np.ones(n), s64),
                     np.eye(n) + np.outer(np.ones(n), s64))]

    g = rng.standard_normal((2, n)).astype(dtype)
    x = rng.standard_normal(4).astype(dtype)
    check(chain.vjp(g), links(), g, True, dtype)
    before = chain.vjp(g)
    d *= -2
    d2[5] = 7.0
    u[20] = -3.0
    v[:] = rng.standard_normal(n)
    s[:] = softmax_point(rng, n, dtype)
    after = chain.vjp(g)
    assert not np.array_equal(after, before)
    check(after, links(), g, True, dtype)
    check(chain.jvp(x), links(), x, False, dtype)
    # operator.todense follows too
    assert np.array_equal(ops[0].todense(), np.diag(d))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("view", ["strided", "reversed"])
def test_in_place_changes_to_strided_vectors_are_seen(rng, dtype, view):
    # The operators module promises: "Operators keep references to the
    # caller's float32/float64 vectors, as Chain does to matrices: modify one
    # in place and later products use the new values."  Chain reads strided
    # matrices in place; a strided/reversed d must not be silently frozen.
    base = rng.standard_normal(20).astype(dtype)
    d = base[::2] if view == "strided" else base[::-1]
    op = Diagonal(d)
    assert op.diagonal is d
    chain = Chain([op])
    g = rng.standard_normal(d.shape[0]).astype(dtype)
    L = lambda: [Link(op, np.diag(f64(d)), np.diag(np.abs(f64(d))))]
    check(chain.vjp(g), L(), g, True, dtype)
    base[:] = rng.standard_normal(20)              # changes d in place
    check(op.rmatvec(g), L(), g, True, dtype)      # a fresh chain sees it
    check(chain.vjp(g), L(), g, True, dtype)       # the bound chain must too


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_operator_follows_in_place_change_of_s(rng, dtype):
    # softmax(s) keeps references to s (as d and v); after s changes in place
    # it must still be *a* softmax Jacobian, diag(s) - s s^T at the new s,
    # not diag(s_new) - s_old s_new^T.
    s = softmax_point(rng, 17, dtype)
    op = DiagonalPlusRankOne.softmax(s)
    chain = Chain([op])
    s[:] = softmax_point(rng, 17, dtype)
    s64 = f64(s)
    L = Link(op, np.diag(s64) - np.outer(s64, s64), np.diag(s64) + np.outer(s64, s64))
    g = rng.standard_normal(17).astype(dtype)
    check(chain.vjp(g), [L], g, True, dtype)
    assert_close(op.todense(), L.ref, L.scale, dtype)


def test_rebinding_an_operator_vector_never_reads_freed_memory(rng):
    # Operators are immutable: rebinding a vector raises.  The chain binds
    # pointers to the operator's vectors; even if the operator's slot is
    # forced (object.__setattr__) and the operator was the only owner of
    # the old vector, the chain keeps reading the vector it bound (like a
    # rebound dense link, which "does not affect the chain"), never freed
    # memory.
    n = 2000
    g = np.ones(n)
    op = Diagonal(np.full(n, 3.0))
    r1 = DiagonalPlusRankOne(np.full(n, 2.0), np.full(n, 1.0), np.full(n, 1.0))
    chain_d = Chain([op])
    chain_r = Chain([r1])
    with raises(AttributeError, r"Diagonal.diagonal cannot be set: operators "
                                r"are immutable"):
        op.diagonal = np.zeros(n)
    with raises(AttributeError, r"DiagonalPlusRankOne.u cannot be set"):
        r1.u = np.zeros(n)
    object.__setattr__(op, "_d", np.zeros(n))
    object.__setattr__(r1, "_u", np.zeros(n))
    junk = [np.full(n, 7.0) for _ in range(32)]    # reuse any freed block
    res_d = chain_d.vjp(g)
    res_r = chain_r.vjp(g)
    del junk
    np.testing.assert_array_equal(res_d, np.full(n, 3.0))
    # J^T g = d g + v (u . g) with the bound u: 2 + 2000
    np.testing.assert_array_equal(res_r, np.full(n, 2002.0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_inputs_never_modified(rng, dtype):
    links = [make_dense(rng, 33, 5, dtype, "strided")] + \
            [make_op(rng, k, 33, dtype) for k in KINDS]
    objs = [L.obj for L in links]
    vecs = [getattr(op, a) for op in objs[1:] for a in type(op).__slots__
            if isinstance(getattr(op, a, None), np.ndarray)]
    copies = [a.copy() for a in vecs]
    base_copy = links[0].obj.base.copy()
    g = rng.standard_normal(33).astype(dtype)
    G = rng.standard_normal((3, 33)).astype(dtype)
    v = rng.standard_normal(5).astype(dtype)
    V = rng.standard_normal((2, 5)).astype(dtype)
    g64 = rng.standard_normal(33)
    xs = [a.copy() for a in (g, G, v, V, g64)]
    chain = Chain(objs)
    chain.vjp(g)
    vjp(objs, G)
    chain.jvp(v)
    jvp(objs, V)
    chain.vjp(g64)
    chain.vjp(g, out=np.empty(5, dtype))
    for op in objs[1:]:
        op.rmatvec(g)
        op.matvec(G)
    for a, c in zip(vecs, copies):
        assert np.array_equal(a, c)
    assert np.array_equal(links[0].obj.base, base_copy, equal_nan=True)
    for a, c in zip((g, G, v, V, g64), xs):
        assert np.array_equal(a, c)


def test_jacobians_are_the_operator_objects(rng):
    ops = [Diagonal(np.ones(3)), Identity(3, 2.0),
           DiagonalPlusRankOne(np.ones(3), np.ones(3), np.ones(3)),
           DiagonalPlusRankOne.softmax(np.full(3, 1 / 3))]
    W = np.ones((3, 3))
    chain = Chain([ops[0], W, ops[1], ops[2], ops[3]])
    bound = chain.jacobians
    assert isinstance(bound, tuple) and len(bound) == 5
    assert bound[0] is ops[0] and bound[1] is W
    assert bound[2] is ops[1] and bound[3] is ops[2] and bound[4] is ops[3]
    assert chain.shapes == ((3, 3),) * 5
    assert repr(chain) == "Chain(5 links: 3 -> 3 -> 3 -> 3 -> 3 -> 3, dtype=float64)"
    # a float32 operator in a float64 chain is still returned as itself
    d32 = np.ones(3, np.float32)
    op32 = Diagonal(d32)
    c = Chain([op32, W])
    assert c.dtype == np.float64 and c.jacobians[0] is op32


# --------------------------------------------------------------------------
# out=
# --------------------------------------------------------------------------

def test_out_overlapping_an_operator_vector_is_rejected():
    n = 6
    d = np.arange(1.0, n + 1)
    with raises(ValueError, "out shares memory with jacobians[0]"):
        vjp([Diagonal(d)], np.ones(n), out=d)
    assert np.array_equal(d, np.arange(1.0, n + 1))
    buf = np.arange(3.0 * n)
    u = buf[:n]
    r1 = DiagonalPlusRankOne(np.ones(n), u, np.ones(n))
    chain = Chain([Identity(n), np.eye(n), r1, Diagonal(np.ones(n))])
    out = buf[n - 2:2 * n - 2]                     # overlaps the end of u
    with raises(ValueError, "out shares memory with jacobians[2]"):
        chain.vjp(np.ones(n), out=out)
    with raises(ValueError, "out shares memory with jacobians[2]"):
        chain.jvp(np.ones(n), out=out)
    assert np.array_equal(buf, np.arange(3.0 * n))
    # v of a softmax operator (which is s itself), in a batch
    S = np.full((2, 4), 0.25)
    sm = DiagonalPlusRankOne.softmax(S[0])
    with raises(ValueError, "out shares memory with jacobians[1]"):
        vjp([np.ones((4, 4)), sm], np.ones((2, 4)), out=S)
    # the negated u of softmax is an operator vector too
    with raises(ValueError, "out shares memory with jacobians[0]"):
        vjp([sm], np.ones(4), out=sm.u)
    # disjoint and interleaved parts of the same buffer are fine
    out = buf[2 * n:]
    assert chain.vjp(np.ones(n), out=out) is out
    want = np.ones(n) + np.ones(n) * u.sum()
    assert np.array_equal(out, want)
    buf2 = np.zeros(2 * n)
    d2 = buf2[::2]
    d2[...] = 2.0
    out2 = buf2[1::2]
    assert vjp([Diagonal(d2)], np.arange(n, dtype=float), out=out2) is out2
    assert np.array_equal(out2, 2.0 * np.arange(n))
    # Identity has no vectors: any other out is fine
    o = np.empty(n)
    assert Chain([Identity(n, 3.0)]).vjp(np.ones(n), out=o) is o
    assert np.array_equal(o, np.full(n, 3.0))


def test_out_overlapping_the_vector_through_operators():
    g = np.arange(4.0)
    with raises(ValueError, "out shares memory with cotangent"):
        vjp([Diagonal(np.ones(4)), Identity(4)], g, out=g)
    with raises(ValueError, "out shares memory with tangent"):
        jvp([Identity(4)], g, out=g)


# --------------------------------------------------------------------------
# a very wide structured link between small dense links
# --------------------------------------------------------------------------

def test_million_wide_structured_links(rng):
    n = 10**6
    W = rng.standard_normal((n, 3))                  # R^3 -> R^n
    d = rng.standard_normal(n)
    d2 = rng.standard_normal(n)
    u = rng.standard_normal(n) / 1e3
    v = rng.standard_normal(n) / 1e3
    W2 = rng.standard_normal((2, n)) / 1e3           # R^n -> R^2
    g = rng.standard_normal(2)
    G = rng.standard_normal((3, 2))
    x = rng.standard_normal(3)
    tracemalloc.start()
    try:
        chain = Chain([W, Diagonal(d), DiagonalPlusRankOne(d2, u, v), W2])
        r_g = chain.vjp(g)
        r_G = chain.vjp(G)
        r_x = chain.jvp(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # nothing n x n (8e12 bytes), nor even a copy of one length-n vector
    assert peak < 8 * n, peak
    assert chain.dims == (3, n, n, n, 2)

    def ref_vjp(g, W, d, d2, u, v, W2):
        y = g @ W2
        y = d2 * y + np.multiply.outer(y @ u, v)    # (diag(d2) + u v^T)^T y
        y = d * y
        return y @ W

    def ref_jvp(x, W, d, d2, u, v, W2):
        y = d * (W @ x)
        y = d2 * y + u * (v @ y)
        return W2 @ y

    a = [np.abs(t) for t in (W, d, d2, u, v, W2)]
    assert_close(r_g, ref_vjp(g, W, d, d2, u, v, W2), ref_vjp(np.abs(g), *a),
                 np.float64)
    assert_close(r_G, ref_vjp(G, W, d, d2, u, v, W2), ref_vjp(np.abs(G), *a),
                 np.float64)
    assert_close(r_x, ref_jvp(x, W, d, d2, u, v, W2), ref_jvp(np.abs(x), *a),
                 np.float64)


# --------------------------------------------------------------------------
# NaN and Inf follow the operators' formulas under IEEE arithmetic
# --------------------------------------------------------------------------

def formula(op, x, transpose):
    """J^T x = d x + v (u . x), J x = d x + u (v . x), d x, c x: float64
    NumPy, elementwise, for a single vector."""
    x = f64(x)
    with np.errstate(all="ignore"):
        if isinstance(op, Identity):
            return op.scale * x
        if isinstance(op, Diagonal):
            return f64(op.diagonal) * x
        d, u, v = f64(op.diagonal), f64(op.u), f64(op.v)
        a, b = (v, u) if transpose else (u, v)
        return d * x + a * np.sum(b * x)


def assert_ieee_equal(res, want, scale, dtype):
    assert res.dtype == np.dtype(dtype)
    assert np.array_equal(np.isnan(res), np.isnan(want)), (res, want)
    assert np.array_equal(np.isposinf(res), np.isposinf(want)), (res, want)
    assert np.array_equal(np.isneginf(res), np.isneginf(want)), (res, want)
    fin = np.isfinite(want)
    assert_close(res[fin], want[fin], scale[fin], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("zero_x", [False, True], ids=["x", "x0"])
@pytest.mark.parametrize("j", [3, 35])               # in a lane block / tail
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("field", ["d", "u", "v"])
def test_rank_one_nonfinite(rng, field, bad, j, zero_x, dtype):
    n = 37
    d, u, v = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    d[9] = u[7] = v[5] = 0                           # Inf * 0 somewhere
    {"d": d, "u": u, "v": v}[field][j] = bad
    op = DiagonalPlusRankOne(d, u, v)
    ab = DiagonalPlusRankOne(np.abs(f64(d)), np.abs(f64(u)), np.abs(f64(v)))
    x = rng.standard_normal(n).astype(dtype)
    if zero_x:
        x[j] = 0
    for transpose in (True, False):
        res = op.rmatvec(x) if transpose else op.matvec(x)
        want = formula(op, x, transpose)
        with np.errstate(all="ignore"):
            sc = formula(ab, np.abs(f64(x)), transpose)
        assert_ieee_equal(res, want, sc, dtype)
    # the patterns the formula implies, spelled out for NaN
    if bad is not np.nan:
        return
    rv, rj = op.rmatvec(x), op.matvec(x)
    if field == "d":
        assert np.isnan(rv).sum() == 1 and np.isnan(rv[j])
        assert np.isnan(rj).sum() == 1 and np.isnan(rj[j])
    elif field == "u":              # u . x is NaN: all of J^T x; only J x [j]
        assert np.isnan(rv).all()
        assert np.isnan(rj).sum() == 1 and np.isnan(rj[j])
    else:
        assert np.isnan(rv).sum() == 1 and np.isnan(rv[j])
        assert np.isnan(rj).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_diagonal_and_identity_nonfinite(rng, dtype):
    n = 20
    d = rng.standard_normal(n).astype(dtype)
    d[2], d[5], d[11] = np.nan, np.inf, -np.inf
    x = rng.standard_normal(n).astype(dtype)
    x[5] = 0.0                                    # inf * 0 = nan
    x[7] = np.inf                                 # d[7] * inf = +-inf, only there
    op = Diagonal(d)
    for res in (op.rmatvec(x), op.matvec(x), Chain([op]).vjp(x[None])[0]):
        want = formula(op, x, True)
        assert np.isnan(want[[2, 5]]).all() and np.isinf(want[[7, 11]]).all()
        assert np.isfinite(np.delete(want, [2, 5, 7, 11])).all()
        assert_ieee_equal(res, want, np.abs(want), dtype)
    for c in (np.inf, np.nan, -np.inf):
        op = Identity(n, scale=c)
        res = op.rmatvec(x)
        assert_ieee_equal(res, formula(op, x, True), np.abs(f64(x)), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nonfinite_through_a_mixed_chain(rng, dtype):
    n, j = 40, 21
    A = random_matrix(rng, n, 4, dtype)
    d, u, v = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    u[j] = np.nan
    r1 = DiagonalPlusRankOne(d, u, v)
    dd = rng.standard_normal(n).astype(dtype)
    chain = Chain([A, r1, Diagonal(dd)])
    x = rng.standard_normal(4).astype(dtype)
    # J x: only row j of the rank-one link is NaN, and the diagonal after it
    # keeps it in place
    res = chain.jvp(x)
    assert np.flatnonzero(np.isnan(res)).tolist() == [j]
    with np.errstate(all="ignore"):
        y = f64(dd) * formula(r1, f64(A) @ f64(x), False)
        sc = np.abs(f64(dd)) * formula(
            DiagonalPlusRankOne(np.abs(f64(d)), np.abs(f64(u)), np.abs(f64(v))),
            np.abs(f64(A)) @ np.abs(f64(x)), False)
    assert_ieee_equal(res, y, sc, dtype)
    # J^T g: u . (dd g) is NaN, every entry of the rank-one output is NaN, and
    # so is every entry of A^T (that)
    g = rng.standard_normal(n).astype(dtype)
    assert np.isnan(chain.vjp(g)).all()
    assert np.isnan(chain.vjp(np.stack([g, g]))).all()


# --------------------------------------------------------------------------
# matvec / rmatvec / astype / pickle
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_matvec_rmatvec(rng, dtype):
    for kind in KINDS:
        L = make_op(rng, kind, 17, dtype)
        for batch in (None, 0, 3):
            x = vec(rng, 17, batch, dtype)
            check(L.obj.matvec(x), [L], x, False, dtype)
            check(L.obj.rmatvec(x), [L], x, True, dtype)
    D = make_dense(rng, 4, 6, dtype, "F", wrap=True)
    x = vec(rng, 6, 2, dtype)
    check(D.obj.matvec(x), [D], x, False, dtype)
    g = vec(rng, 4, None, dtype)
    check(D.obj.rmatvec(g), [D], g, True, dtype)
    # non-symmetric: rmatvec really is the transpose
    r1 = DiagonalPlusRankOne(np.zeros(2), np.array([1.0, 0.0]), np.array([0.0, 1.0]))
    assert np.array_equal(r1.matvec([1.0, 2.0]), [2.0, 0.0])
    assert np.array_equal(r1.rmatvec([1.0, 2.0]), [0.0, 1.0])
    with raises(ValueError, "tangent has shape (3,) but jacobians[0]"):
        r1.matvec(np.ones(3))


def test_astype(rng):
    d = rng.standard_normal(5)
    D = Diagonal(d)
    D32 = D.astype(np.float32)
    assert type(D32) is Diagonal and D32.dtype == np.float32
    assert np.array_equal(D32.diagonal, d.astype(np.float32))
    assert D.dtype == np.float64 and D.diagonal is d          # unchanged
    assert D.astype(np.float64).diagonal is d                 # no copy needed
    assert Chain([D32]).dtype == np.float32
    assert D32.rmatvec(np.ones(5, np.float32)).dtype == np.float32
    u, v = rng.standard_normal(5), rng.standard_normal(5)
    R = DiagonalPlusRankOne(d, u, v)
    R32 = R.astype(np.float32)
    assert type(R32) is DiagonalPlusRankOne and R32.dtype == np.float32
    for a, b in ((R32.diagonal, d), (R32.u, u), (R32.v, v)):
        assert a.dtype == np.float32 and np.array_equal(a, b.astype(np.float32))
    R64 = R32.astype(np.float64)
    assert R64.dtype == np.float64
    for a, b in ((R64.diagonal, R32.diagonal), (R64.u, R32.u), (R64.v, R32.v)):
        assert a.dtype == np.float64 and np.array_equal(a, b)
    I = Identity(4, 2.0)
    assert I.astype(np.float32) is I and I.astype(np.float64).dtype is None
    J = rng.standard_normal((3, 2))
    Dn = Dense(J).astype(np.float32)
    assert type(Dn) is Dense and Dn.dtype == np.float32 and Dn.shape == (3, 2)
    assert Dense(J).matrix is J
    with raises(TypeError, "operators hold float32 or float64 values, not "
                           "complex128"):
        D.astype(np.complex128)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pickle_operators_and_chains(rng, dtype):
    ops = [make_op(rng, k, 17, dtype).obj for k in KINDS]
    ops.append(Dense(random_matrix(rng, 17, 17, dtype)))
    for op in ops:
        op2 = pickle.loads(pickle.dumps(op))
        assert type(op2) is type(op)
        assert op2.shape == op.shape and op2.dtype == op.dtype
        assert np.array_equal(op2.todense(), op.todense())
        if isinstance(op, Identity):
            assert op2.n == op.n and op2.scale == op.scale
        g = rng.standard_normal(17).astype(dtype)
        assert np.array_equal(op2.rmatvec(g), op.rmatvec(g))
    W = random_matrix(rng, 17, 5, dtype)
    chain = Chain([W] + ops)
    c2 = pickle.loads(pickle.dumps(chain))
    assert type(c2) is Chain
    assert c2.shapes == chain.shapes and c2.dtype == chain.dtype
    assert [type(J) for J in c2.jacobians] == [np.ndarray] + \
        [type(op) for op in ops[:-1]] + [np.ndarray]
    G = rng.standard_normal((3, 17)).astype(dtype)
    assert np.array_equal(c2.vjp(G), chain.vjp(G))
    x = rng.standard_normal(5).astype(dtype)
    assert np.array_equal(c2.jvp(x), chain.jvp(x))
    # an identities-only chain keeps following the vector after a round trip
    ci = pickle.loads(pickle.dumps(Chain([Identity(3, 2.0), Identity(3)])))
    assert ci.dtype is None
    assert ci.vjp(np.ones(3, np.float32)).dtype == np.float32


def test_pickle_operators_every_protocol():
    # Chain pickles with every protocol (its __reduce__); the operators in it
    # should too.
    ops = [Diagonal(np.arange(3.0)), Identity(3, 2.0),
           DiagonalPlusRankOne(np.ones(3), np.arange(3.0), np.ones(3)),
           Dense(np.eye(3))]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        for op in ops:
            op2 = pickle.loads(pickle.dumps(op, protocol))
            assert np.array_equal(op2.todense(), op.todense())
        c = pickle.loads(pickle.dumps(Chain(ops), protocol))
        assert np.array_equal(c.vjp(np.ones(3)), Chain(ops).vjp(np.ones(3)))


# --------------------------------------------------------------------------
# thread-count independence
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_bitwise_identical_across_thread_counts(rng, dtype, restore_threads):
    threads_compared()
    m, n = 400, 1500               # 600k-element dense link: threaded
    links = [make_op(rng, "diagonal", m, dtype),
             make_dense(rng, n, m, dtype, "C"),
             make_op(rng, "rank1", n, dtype),
             make_dense(rng, 300, n, dtype, "F"),
             make_op(rng, "softmax", 300, dtype),
             make_op(rng, "identity", 300, dtype)]
    chain = Chain([L.obj for L in links])
    xs = {"vjp": [vec(rng, 300, None, dtype), vec(rng, 300, 4, dtype)],
          "jvp": [vec(rng, m, None, dtype), vec(rng, m, 4, dtype)]}
    results = {}
    for nt in (1, 2):
        gradchain.set_num_threads(nt)
        results[nt] = [getattr(chain, op)(x) for op in ("vjp", "jvp") for x in xs[op]]
    for a, b in zip(results[1], results[2]):
        assert a.tobytes() == b.tobytes()
    check(results[2][1], links, xs["vjp"][1], True, dtype)
    check(results[2][3], links, xs["jvp"][1], False, dtype)


# --------------------------------------------------------------------------
# an Operator subclass that the compiled loop does not know
# --------------------------------------------------------------------------

def test_unknown_operator_subclass_does_not_crash():
    # Operator is the documented abstract base.  A subclass implementing its
    # documented API (shape, dtype, todense) but with no compiled link kind
    # must either work or raise a Python exception -- never crash the
    # interpreter.  Run in a child process so that a crash fails only this
    # test.
    code = textwrap.dedent("""
        import numpy as np, gradchain
        class Neg(gradchain.Operator):
            __slots__ = ("n",)
            def __init__(self, n):
                self.n = n
            shape = property(lambda self: (self.n, self.n))
            dtype = property(lambda self: np.dtype(np.float64))
            def todense(self):
                return -np.eye(self.n)
        try:
            r = gradchain.Chain([Neg(3)]).vjp(np.array([1.0, 2.0, 3.0]))
            print("RESULT", r.tolist())
        except Exception as e:
            print("EXCEPTION", type(e).__name__)
    """)
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(gradchain.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    # run from the package's parent folder, so the child imports the same
    # (installed or built in place) gradchain, not a source tree in the cwd
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=root,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, (
        f"child died with return code {proc.returncode} "
        f"(negative: killed by signal {-proc.returncode}); stderr: "
        f"{proc.stderr[-500:]}")
    out = proc.stdout.strip()
    assert (out == "RESULT [-1.0, -2.0, -3.0]"
            or out.startswith("EXCEPTION ")), out


# --------------------------------------------------------------------------
# property test: random mixed chains
# --------------------------------------------------------------------------

LINK_KINDS = ["dense", "Dense"] + KINDS


@st.composite
def mixed_chains(draw):
    dtype = draw(st.sampled_from(DTYPES))
    n0 = draw(st.integers(0, 40))
    specs, w = [], n0
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(LINK_KINDS))
        if kind in ("dense", "Dense"):
            m = draw(st.integers(0, 40))
            specs.append((kind, m, w, draw(st.sampled_from(DENSE_LAYOUTS))))
            w = m
        else:
            specs.append((kind, w, w, None))
    batch = draw(st.sampled_from([None, 0, 1, 3]))
    seed = draw(st.integers(0, 2**32 - 1))
    return dtype, n0, specs, batch, seed


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(mixed_chains())
def test_random_mixed_chains(params):
    dtype, n0, specs, batch, seed = params
    rng = np.random.default_rng(seed)
    links = []
    for kind, m, n, layout in specs:
        if kind in ("dense", "Dense"):
            links.append(make_dense(rng, m, n, dtype, layout, wrap=kind == "Dense"))
        else:
            links.append(make_op(rng, kind, n, dtype))
    dims = [n0] + [m for _, m, _, _ in specs]
    chain = Chain([L.obj for L in links])
    assert chain.dims == tuple(dims)
    g = vec(rng, dims[-1], batch, dtype)
    v = vec(rng, n0, batch, dtype)
    check(chain.vjp(g), links, g, True, dtype)
    check(chain.jvp(v), links, v, False, dtype)
