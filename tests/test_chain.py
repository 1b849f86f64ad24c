"""gradchain.vjp, gradchain.jvp and gradchain.Chain against NumPy.

Every numeric check compares with the float64 dense NumPy reference of
conftest.py, within the rounding-error scale |J_1|^T ... |J_k|^T |g|.
"""
import concurrent.futures
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradchain
from gradchain import Chain, jvp, vjp

from conftest import (DTYPES, LAYOUTS, abs_chain, assert_close, check_jvp,
                      check_vjp, layout_chain, make_layout, random_chain,
                      random_matrix, reference_jvp, reference_vjp)

# (n_0, ..., n_k): k = len(dims) - 1 links; [4] is the empty chain (k = 0)
# applied to vectors of length 4.
CHAIN_DIMS = [
    [4],
    [3, 5],
    [5, 1],
    [0, 4],
    [4, 0],
    [3, 0, 4],
    [5, 1, 7],
    [6, 17, 33, 4],
    [5, 8, 3, 9, 16, 17, 4, 1, 6, 33, 2, 7, 5],      # 12 links
    [40, 65, 31],
]
BATCHES = [None, 0, 1, 3]          # None: a single vector
CHAIN_LAYOUTS = LAYOUTS + ["mixed"]


def dims_id(d):
    return "-".join(map(str, d))


def vec(rng, n, batch, dtype=np.float64):
    shape = (n,) if batch is None else (batch, n)
    return rng.standard_normal(shape).astype(dtype)


# --------------------------------------------------------------------------
# values: dtype x layout x chain dims x vector/batch
# --------------------------------------------------------------------------

@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("layout", CHAIN_LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims", CHAIN_DIMS, ids=dims_id)
def test_vjp_matches_reference(rng, dims, dtype, layout, batch):
    Js = layout_chain(random_chain(rng, dims, dtype), layout)
    g = vec(rng, dims[-1], batch, dtype)
    chain = Chain(Js)
    for res in (vjp(Js, g), chain.vjp(g), chain.vjp(g)):
        check_vjp(res, Js, g, dtype)
        assert not np.shares_memory(res, g)


@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("layout", CHAIN_LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims", CHAIN_DIMS, ids=dims_id)
def test_jvp_matches_reference(rng, dims, dtype, layout, batch):
    Js = layout_chain(random_chain(rng, dims, dtype), layout)
    v = vec(rng, dims[0], batch, dtype)
    chain = Chain(Js)
    for res in (jvp(Js, v), chain.jvp(v), chain.jvp(v)):
        check_jvp(res, Js, v, dtype)
        assert not np.shares_memory(res, v)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [None, 1, 6])
def test_big_links_in_a_chain(rng, dtype, batch):
    # Links in the streaming, threaded and strided-panel regimes, chained.
    Js = random_chain(rng, [300, 200, 600, 257, 9], dtype)
    Js = [make_layout(Js[0], "strided"), make_layout(Js[1], "F"),
          make_layout(Js[2], "C"), make_layout(Js[3], "negative")]
    g = vec(rng, 9, batch, dtype)
    v = vec(rng, 300, batch, dtype)
    check_vjp(vjp(Js, g), Js, g, dtype)
    check_jvp(jvp(Js, v), Js, v, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [None, 4])
def test_broadcast_links(rng, dtype, batch):
    # stride-0 Jacobians (np.broadcast_to) are read in place
    J1 = np.broadcast_to(rng.standard_normal(6).astype(dtype), (5, 6))
    J2 = np.broadcast_to(rng.standard_normal((7, 1)).astype(dtype), (7, 5))
    J3 = np.broadcast_to(dtype(0.5), (3, 7))
    Js = [J1, J2, J3]
    g = vec(rng, 3, batch, dtype)
    v = vec(rng, 6, batch, dtype)
    check_vjp(vjp(Js, g), Js, g, dtype)
    check_jvp(jvp(Js, v), Js, v, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_noncontiguous_vectors(rng, dtype):
    Js = random_chain(rng, [7, 4, 6], dtype)
    gbig = rng.standard_normal(12).astype(dtype)
    G = np.asfortranarray(rng.standard_normal((5, 6)).astype(dtype))
    for g in (gbig[::2], gbig[::-2], G, G[::-1], G[:, ::-1]):
        check_vjp(vjp(Js, g), Js, g, dtype)
    vbig = rng.standard_normal((3, 21)).astype(dtype)
    for v in (vbig[0, ::3], vbig[:, ::3], vbig[::-1, 1::3]):
        check_jvp(jvp(Js, v), Js, v, dtype)


# --------------------------------------------------------------------------
# stacked 3-D input
# --------------------------------------------------------------------------

def _stack_views(rng, k, n, dtype):
    A = (rng.standard_normal((k, n, n)) / np.sqrt(n)).astype(dtype)
    big = np.full((2 * k, n, 2 * n), np.nan, dtype)
    view = big[::2, ::-1, 1::2]
    view[...] = A
    return {
        "C": A,
        "F": np.asfortranarray(A),
        "noncontig": view,
        "transposed": np.ascontiguousarray(A.transpose(0, 2, 1)).transpose(0, 2, 1),
    }


@pytest.mark.parametrize("which", ["C", "F", "noncontig", "transposed"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [None, 0, 1, 3])
def test_stacked_3d(rng, which, dtype, batch):
    S = _stack_views(rng, 5, 6, dtype)[which]
    assert S.ndim == 3
    Js = list(S)
    g = vec(rng, 6, batch, dtype)
    v = vec(rng, 6, batch, dtype)
    check_vjp(vjp(S, g), Js, g, dtype)
    check_jvp(jvp(S, v), Js, v, dtype)
    chain = Chain(S)
    check_vjp(chain.vjp(g), Js, g, dtype)
    assert len(chain) == 5
    assert chain.shapes == ((6, 6),) * 5
    assert chain.dims == (6,) * 6
    assert chain.dtype == np.dtype(dtype)
    bound = chain.jacobians
    assert len(bound) == 5
    for i in range(5):
        assert np.shares_memory(bound[i], S)    # views, no copy
        assert np.array_equal(bound[i], S[i])


def test_stacked_one_nonsquare_link(rng):
    S = rng.standard_normal((1, 3, 5))
    g = rng.standard_normal(3)
    v = rng.standard_normal(5)
    check_vjp(vjp(S, g), [S[0]], g, np.float64)
    check_jvp(jvp(S, v), [S[0]], v, np.float64)
    assert Chain(S).shapes == ((3, 5),)


def test_stacked_nonsquare_mismatch():
    with pytest.raises(ValueError, match=re.escape(
            "jacobians[1] has shape (3, 5) but jacobians[0] outputs 3 values")):
        Chain(np.ones((2, 3, 5)))


def test_stacked_empty_is_identity(rng):
    S = np.ones((0, 4, 4))
    g = rng.standard_normal(7)
    res = vjp(S, g)
    assert np.array_equal(res, g) and not np.shares_memory(res, g)
    assert len(Chain(S)) == 0


# --------------------------------------------------------------------------
# the empty chain
# --------------------------------------------------------------------------

@pytest.mark.parametrize("x", [np.arange(5.0), np.arange(6.0).reshape(2, 3),
                               np.zeros((0, 3)), np.zeros(0)],
                         ids=["vec", "batch", "batch0", "empty"])
@pytest.mark.parametrize("op", ["vjp", "jvp"])
def test_empty_chain_is_identity_copy(x, op):
    for res in (getattr(gradchain, op)([], x), getattr(Chain([]), op)(x),
                getattr(gradchain, op)((), x)):
        assert res is not x
        assert not np.shares_memory(res, x)
        assert res.dtype == np.float64
        assert np.array_equal(res, x)


@pytest.mark.parametrize("src,want", [
    (np.float32, np.float32), (np.float16, np.float32),
    (np.int64, np.float64), (np.int8, np.float64), (np.uint16, np.float64),
    (np.bool_, np.float64), (np.float64, np.float64)])
def test_empty_chain_dtype_rule(src, want):
    x = np.array([1, 0, 1, 1]).astype(src)
    res = vjp([], x)
    assert res.dtype == np.dtype(want)
    assert np.array_equal(res, x.astype(np.float64))


def test_empty_chain_attributes():
    c = Chain([])
    assert len(c) == 0
    assert c.dtype is None
    assert c.input_dim is None and c.output_dim is None
    assert c.dims == () and c.shapes == ()
    assert c.jacobians == ()
    assert repr(c) == "Chain(0 links: identity)"


# --------------------------------------------------------------------------
# input kinds
# --------------------------------------------------------------------------

class ArrayLike:
    """A minimal object with __array__ (NumPy 2 signature)."""

    def __init__(self, a):
        self._a = np.asarray(a)

    def __array__(self, dtype=None, copy=None):
        if dtype is not None:
            return self._a.astype(dtype)
        return self._a.copy() if copy else self._a


@pytest.mark.parametrize("kind", ["list", "tuple", "generator", "nested_lists",
                                  "array_like_links", "array_like_stack",
                                  "object_array"])
def test_jacobians_input_kinds(rng, kind):
    dims = [4, 4, 4, 4]
    Js = random_chain(rng, dims)
    if kind == "list":
        arg = list(Js)
    elif kind == "tuple":
        arg = tuple(Js)
    elif kind == "generator":
        arg = (J for J in Js)
    elif kind == "nested_lists":
        arg = [J.tolist() for J in Js]
    elif kind == "array_like_links":
        arg = [ArrayLike(J) for J in Js]
    elif kind == "array_like_stack":
        arg = ArrayLike(np.stack(Js))
    else:                                   # 1-D object array of links
        arg = np.empty(len(Js), dtype=object)
        for i, J in enumerate(Js):
            arg[i] = J
    g = rng.standard_normal(4)
    check_vjp(vjp(arg, g), Js, g, np.float64)
    if kind == "generator":
        arg = (J for J in Js)
    v = rng.standard_normal(4)
    check_jvp(jvp(arg, v), Js, v, np.float64)


@pytest.mark.parametrize("kind", ["list", "tuple", "nested_list_batch",
                                  "array_like", "memoryview"])
def test_vector_input_kinds(rng, kind):
    Js = random_chain(rng, [3, 5, 4])
    g0 = rng.standard_normal(4)
    if kind == "list":
        g = g0.tolist()
    elif kind == "tuple":
        g = tuple(g0.tolist())
    elif kind == "nested_list_batch":
        g0 = rng.standard_normal((2, 4))
        g = g0.tolist()
    elif kind == "array_like":
        g = ArrayLike(g0)
    else:
        g = memoryview(g0)
    res = vjp(Js, g)
    check_vjp(res, Js, g0, np.float64)
    res2 = Chain(Js).vjp(g)
    check_vjp(res2, Js, g0, np.float64)


def test_memmap_inputs(rng, tmp_path):
    Js = random_chain(rng, [5, 7, 3])
    g = rng.standard_normal(3)
    maps = []
    for i, J in enumerate(Js):
        path = tmp_path / f"J{i}.bin"
        w = np.memmap(path, dtype=np.float64, mode="w+", shape=J.shape)
        w[...] = J
        w.flush()
        del w
        maps.append(np.memmap(path, dtype=np.float64, mode="r", shape=J.shape))
    assert not maps[0].flags.writeable
    chain = Chain(maps)
    assert chain.jacobians[0] is maps[0] and chain.jacobians[1] is maps[1]
    check_vjp(chain.vjp(g), Js, g, np.float64)
    v = rng.standard_normal(5)
    check_jvp(chain.jvp(v), Js, v, np.float64)
    # a memmapped 3-D stack and a memmapped cotangent
    path = tmp_path / "stack.bin"
    S = (rng.standard_normal((3, 4, 4)) / 2).astype(np.float32)
    w = np.memmap(path, dtype=np.float32, mode="w+", shape=S.shape)
    w[...] = S
    w.flush()
    del w
    Sm = np.memmap(path, dtype=np.float32, mode="r", shape=S.shape)
    gpath = tmp_path / "g.bin"
    w = np.memmap(gpath, dtype=np.float32, mode="w+", shape=(2, 4))
    w[...] = np.arange(8, dtype=np.float32).reshape(2, 4)
    w.flush()
    del w
    gm = np.memmap(gpath, dtype=np.float32, mode="r", shape=(2, 4))
    res = vjp(Sm, gm)
    check_vjp(res, list(S), np.arange(8.0).reshape(2, 4), np.float32)
    del Sm, gm, maps, chain


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["C", "F", "negative"])
def test_readonly_inputs(rng, dtype, layout):
    Js = layout_chain(random_chain(rng, [6, 5, 33], dtype), layout)
    for J in Js:
        J.flags.writeable = False
    g = rng.standard_normal(33).astype(dtype)
    G = rng.standard_normal((3, 33)).astype(dtype)
    v = rng.standard_normal(6).astype(dtype)
    for a in (g, G, v):
        a.flags.writeable = False
    chain = Chain(Js)
    assert all(chain.jacobians[i] is Js[i] for i in range(2))
    check_vjp(chain.vjp(g), Js, g, dtype)
    check_vjp(vjp(Js, G), Js, G, dtype)
    check_jvp(chain.jvp(v), Js, v, dtype)


def test_byteswapped_and_unaligned_inputs(rng):
    Js = random_chain(rng, [4, 6, 3])
    g = rng.standard_normal(3)
    swapped = [J.astype(">f8") for J in Js]
    check_vjp(vjp(swapped, g.astype(">f8")), Js, g, np.float64)
    # unaligned float64 data: a view one byte into a buffer
    buf = np.zeros(Js[0].size * 8 + 1, dtype=np.uint8)
    un = np.frombuffer(buf.data, dtype=np.float64, count=Js[0].size,
                       offset=1).reshape(Js[0].shape)
    assert not un.flags.aligned
    buf[1:] = np.frombuffer(Js[0].tobytes(), dtype=np.uint8)
    check_vjp(vjp([un, Js[1]], g), Js, g, np.float64)


# --------------------------------------------------------------------------
# dtype rule
# --------------------------------------------------------------------------

def test_integer_and_bool_inputs_give_float64(rng):
    J1 = rng.integers(-3, 4, size=(5, 4))
    J2 = rng.integers(-3, 4, size=(3, 5)).astype(np.int32)
    g = rng.integers(-3, 4, size=3).astype(np.int16)
    res = vjp([J1, J2], g)
    assert res.dtype == np.float64
    # small integers: the float64 result is exact
    assert np.array_equal(res, (g @ J2 @ J1).astype(np.float64))
    B1 = rng.random((5, 4)) < 0.5
    Gb = rng.random((2, 5)) < 0.5
    res = vjp([B1], Gb)
    assert res.dtype == np.float64
    assert np.array_equal(res, Gb.astype(float) @ B1.astype(float))
    chain = Chain([J1, B1.T])
    assert chain.dtype == np.float64
    v = rng.standard_normal(4)
    check_jvp(chain.jvp(v), [J1, B1.T], v, np.float64)


def test_float16_gives_float32(rng):
    Js = [J.astype(np.float16) for J in random_chain(rng, [6, 5, 4])]
    g16 = rng.standard_normal(4).astype(np.float16)
    chain = Chain(Js)
    assert chain.dtype == np.float32
    for g in (g16, g16.astype(np.float32)):
        res = chain.vjp(g)
        check_vjp(res, Js, g, np.float32)
    # float32 chain, float16 vector: float32
    J32 = [J.astype(np.float32) for J in Js]
    check_vjp(vjp(J32, g16), J32, g16, np.float32)
    # float16 next to float32 links: float32
    mixed = [Js[0], J32[1]]
    assert Chain(mixed).dtype == np.float32
    check_vjp(vjp(mixed, g16), mixed, g16, np.float32)


@pytest.mark.parametrize("batch", [None, 3])
def test_float32_chain_float64_vector_promotes(rng, batch):
    Js = random_chain(rng, [6, 40, 5], np.float32)
    chain = Chain(Js)
    assert chain.dtype == np.float32
    g = vec(rng, 5, batch, np.float64)
    v = vec(rng, 6, batch, np.float64)
    check_vjp(chain.vjp(g), Js, g, np.float64)      # computed in float64
    check_jvp(chain.jvp(v), Js, v, np.float64)
    check_vjp(vjp(Js, g), Js, g, np.float64)
    assert chain.dtype == np.float32                # the chain is unchanged
    assert all(chain.jacobians[i] is Js[i] for i in range(2))
    # integer vector with a float32 chain: float64 too (documented rule)
    gi = np.arange(5)
    check_vjp(chain.vjp(gi), Js, gi, np.float64)
    # a Python list of floats is float64 for NumPy
    check_vjp(chain.vjp(g[..., :].tolist()), Js, g, np.float64)
    # float32 vector stays float32
    g32 = g.astype(np.float32)
    check_vjp(chain.vjp(g32), Js, g32, np.float32)


def test_mixed_float32_float64_links(rng):
    J1 = random_matrix(rng, 7, 5, np.float32)
    J2 = random_matrix(rng, 4, 7, np.float64)
    J3 = random_matrix(rng, 3, 4, np.float32)
    Js = [J1, J2, J3]
    chain = Chain(Js)
    assert chain.dtype == np.float64
    bound = chain.jacobians
    assert bound[1] is J2                       # float64: no copy
    assert bound[0].dtype == np.float64 and bound[2].dtype == np.float64
    assert np.array_equal(bound[0], J1) and np.array_equal(bound[2], J3)
    g32 = rng.standard_normal(3).astype(np.float32)
    check_vjp(chain.vjp(g32), Js, g32, np.float64)
    check_vjp(vjp(Js, g32), Js, g32, np.float64)
    v = rng.standard_normal((2, 5)).astype(np.float32)
    check_jvp(jvp(Js, v), Js, v, np.float64)


# --------------------------------------------------------------------------
# Chain attributes
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_chain_attributes(rng, dtype):
    Js = random_chain(rng, [3, 5, 2], dtype)
    chain = Chain(Js)
    assert isinstance(chain, Chain)
    assert len(chain) == 2
    assert chain.shapes == ((5, 3), (2, 5))
    assert chain.dims == (3, 5, 2)
    assert chain.input_dim == 3
    assert chain.output_dim == 2
    assert chain.dtype == np.dtype(dtype)
    assert isinstance(chain.jacobians, tuple)
    assert chain.jacobians[0] is Js[0] and chain.jacobians[1] is Js[1]
    name = np.dtype(dtype).name
    assert repr(chain) == f"Chain(2 links: 3 -> 5 -> 2, dtype={name})"
    one = Chain([Js[0]])
    assert repr(one) == f"Chain(1 link: 3 -> 5, dtype={name})"
    assert one.input_dim == 3 and one.output_dim == 5


def test_chain_repr_long_chain_is_abbreviated(rng):
    # README: "Chain(64 links: 16 -> 16 -> 16 -> 16 -> ... -> 16 -> 16, ...)"
    dims = [5, 8, 3, 9, 16, 17, 4, 1, 6, 33, 2, 7, 5]
    chain = Chain(random_chain(rng, dims))
    assert repr(chain) == ("Chain(12 links: 5 -> 8 -> 3 -> 9 -> ... -> 7 -> 5, "
                           "dtype=float64)")
    assert chain.dims == tuple(dims)        # the attribute is never cut
    short = Chain(random_chain(rng, dims[:8]))
    assert repr(short) == ("Chain(7 links: 5 -> 8 -> 3 -> 9 -> 16 -> 17 -> 4 "
                           "-> 1, dtype=float64)")


def test_chain_keyword_argument(rng):
    Js = random_chain(rng, [2, 3])
    chain = Chain(jacobians=Js)
    assert chain.jacobians[0] is Js[0]


def test_chain_rejects_extra_arguments(rng):
    # Chain(jacobians) takes one argument; anything else must not be
    # silently ignored (e.g. a hoped-for dtype= that has no effect).
    Js = random_chain(rng, [2, 3])
    with pytest.raises(TypeError):
        Chain(Js, np.float32)
    with pytest.raises(TypeError):
        Chain(Js, dtype=np.float32)


def test_chain_strided_layout_no_copy(rng):
    Js = [make_layout(J, lay) for J, lay in
          zip(random_chain(rng, [4, 5, 6, 7, 3]),
              ["F", "strided", "negative", "rowstrided"])]
    chain = Chain(Js)
    for i in range(4):
        assert chain.jacobians[i] is Js[i]


# --------------------------------------------------------------------------
# mutation semantics and input preservation
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_in_place_mutation_is_seen(rng, dtype):
    Js = random_chain(rng, [4, 6, 5], dtype)
    chain = Chain(Js)
    g = rng.standard_normal(5).astype(dtype)
    check_vjp(chain.vjp(g), Js, g, dtype)
    Js[1][2, 3] = 7.5
    Js[0] *= -2
    check_vjp(chain.vjp(g), Js, g, dtype)
    v = rng.standard_normal(4).astype(dtype)
    check_jvp(chain.jvp(v), Js, v, dtype)
    # rebinding a list entry does not change the chain
    old = [J.copy() for J in Js]
    Js[0] = np.zeros_like(Js[0])
    check_vjp(chain.vjp(g), old, g, dtype)


def test_in_place_mutation_of_stack_and_view(rng):
    S = rng.standard_normal((3, 4, 4))
    chain = Chain(S)
    g = rng.standard_normal(4)
    S[1] = np.eye(4) * 3
    check_vjp(chain.vjp(g), list(S), g, np.float64)
    base = rng.standard_normal((8, 9))
    J = base[::2, ::3]
    chain = Chain([J])
    base[2, 3] = 100.0                  # element J[1, 1]
    check_vjp(chain.vjp(g), [J], g, np.float64)
    assert J[1, 1] == 100.0


def test_converted_links_are_copies(rng):
    Ji = rng.integers(-3, 3, size=(3, 4))
    chain = Chain([Ji])
    assert chain.jacobians[0] is not Ji
    g = np.ones(3)
    before = chain.vjp(g)
    Ji[0, 0] += 10                      # the chain holds a converted copy
    assert np.array_equal(chain.vjp(g), before)


@pytest.mark.parametrize("layout", CHAIN_LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_inputs_never_modified(rng, layout, dtype):
    Js = layout_chain(random_chain(rng, [5, 33, 4, 17], dtype), layout)
    copies = [J.copy() for J in Js]
    bases = [J.base.copy() if J.base is not None else None for J in Js]
    g = rng.standard_normal(17).astype(dtype)
    G = rng.standard_normal((3, 17)).astype(dtype)
    v = rng.standard_normal(5).astype(dtype)
    V = rng.standard_normal((2, 5)).astype(dtype)
    g64 = rng.standard_normal(17)
    xs = [a.copy() for a in (g, G, v, V, g64)]
    chain = Chain(Js)
    vjp(Js, g)
    chain.vjp(G)
    chain.jvp(v)
    jvp(Js, V)
    chain.vjp(g64)
    chain.vjp(g, out=np.empty(5, dtype))
    for J, c, b in zip(Js, copies, bases):
        assert np.array_equal(J, c)
        if b is not None:
            assert np.array_equal(J.base, b, equal_nan=True)
    for a, c in zip((g, G, v, V, g64), xs):
        assert np.array_equal(a, c)


# --------------------------------------------------------------------------
# out=
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_out_contiguous(rng, dtype):
    Js = random_chain(rng, [6, 9, 4], dtype)
    g = rng.standard_normal(4).astype(dtype)
    out = np.full(6, np.nan, dtype)
    res = vjp(Js, g, out=out)
    assert res is out
    check_vjp(out, Js, g, dtype)
    out2 = np.full(6, np.nan, dtype)
    assert Chain(Js).vjp(g, out=out2) is out2
    check_vjp(out2, Js, g, dtype)
    # positional out on the method
    out3 = np.full(6, np.nan, dtype)
    assert Chain(Js).vjp(g, out3) is out3
    check_vjp(out3, Js, g, dtype)
    v = rng.standard_normal(6).astype(dtype)
    outj = np.full(4, np.nan, dtype)
    assert jvp(Js, v, out=outj) is outj
    check_jvp(outj, Js, v, dtype)
    outj2 = np.full(4, np.nan, dtype)
    assert Chain(Js).jvp(v, out=outj2) is outj2
    check_jvp(outj2, Js, v, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["step2", "reversed", "unaligned"])
def test_out_noncontiguous_vector(rng, dtype, kind):
    Js = random_chain(rng, [6, 9, 4], dtype)
    g = rng.standard_normal(4).astype(dtype)
    if kind == "step2":
        big = np.full(13, np.nan, dtype)
        out = big[1::2]
    elif kind == "reversed":
        # a guard element on each side of the reversed view
        big = np.full(8, np.nan, dtype)
        out = big[6:0:-1]
        assert out.strides[0] < 0 and out.shape == (6,)
    else:
        # a guard of whole elements on each side of the unaligned view
        isz = np.dtype(dtype).itemsize
        buf = np.full(8 * isz + 1, 0xA5, np.uint8)
        out = np.frombuffer(buf.data, dtype=dtype, count=6, offset=1 + isz)
        assert not out.flags.aligned
    res = vjp(Js, g, out=out)
    assert res is out
    check_vjp(out, Js, g, dtype)
    if kind == "unaligned":
        guard = np.concatenate([buf[:1 + isz], buf[1 + 7 * isz:]])
        assert guard.size == 2 * isz + 1
        assert (guard == 0xA5).all()
    else:
        untouched = big[0::2] if kind == "step2" else big[[0, 7]]
        assert untouched.size > 0 and np.isnan(untouched).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ["C", "F", "strided"])
def test_out_batch(rng, dtype, order):
    Js = random_chain(rng, [6, 9, 4], dtype)
    G = rng.standard_normal((3, 4)).astype(dtype)
    if order == "strided":
        big = np.full((6, 13), np.nan, dtype)
        out = big[::2, 1::2]
    else:
        out = np.full((3, 6), np.nan, dtype, order=order)
    res = vjp(Js, G, out=out)
    assert res is out
    check_vjp(out, Js, G, dtype)
    if order == "strided":
        assert np.isnan(big[1::2]).all() and np.isnan(big[::2, ::2]).all()
    V = rng.standard_normal((5, 6)).astype(dtype)
    outj = np.full((5, 4), np.nan, dtype, order="F" if order == "F" else "C")
    assert Chain(Js).jvp(V, out=outj) is outj
    check_jvp(outj, Js, V, dtype)


def test_out_edge_cases(rng):
    # empty chain, zero batch, zero-size dims, float32 chain + float64 vector
    g = rng.standard_normal(5)
    out = np.full(5, np.nan)
    assert vjp([], g, out=out) is out and np.array_equal(out, g)
    Js = random_chain(rng, [3, 4])
    out = np.empty((0, 3))
    assert vjp(Js, np.zeros((0, 4)), out=out) is out
    Jz = random_chain(rng, [3, 0, 4])
    out = np.full(3, np.nan)
    assert vjp(Jz, rng.standard_normal(4), out=out) is out
    assert np.array_equal(out, np.zeros(3))
    J32 = random_chain(rng, [3, 4], np.float32)
    out = np.full(3, np.nan)
    assert Chain(J32).vjp(g[:4], out=out) is out
    check_vjp(out, J32, g[:4], np.float64)


# --------------------------------------------------------------------------
# bad input: type and message
# --------------------------------------------------------------------------

def raises(exc, msg):
    return pytest.raises(exc, match=re.escape(msg))


@pytest.mark.parametrize("make", [vjp, lambda Js, g: Chain(Js).vjp(g)],
                         ids=["vjp", "Chain"])
def test_link_shape_mismatch(make):
    Js = [np.ones((4, 3)), np.ones((6, 4)), np.ones((5, 7))]
    with raises(ValueError,
                "jacobians[2] has shape (5, 7) but jacobians[1] outputs 6 values"):
        make(Js, np.ones(5))
    with raises(ValueError,
                "jacobians[1] has shape (6, 5) but jacobians[0] outputs 4 values"):
        make([np.ones((4, 3)), np.ones((6, 5))], np.ones(6))


def test_link_wrong_ndim():
    # (a 3-D link in a list is a per-sample link: see tests for issue 4)
    with raises(ValueError, "jacobians[1] must be a 2-D array of shape "
                            "(n_2, n_1), or 3-D (batch, n_2, n_1) for per-sample "
                            "Jacobians, got shape (3,)"):
        vjp([np.ones((3, 2)), np.ones(3)], np.ones(3))
    with raises(ValueError, "jacobians[0] must be a 2-D array of shape "
                            "(n_1, n_0), or 3-D (batch, n_1, n_0) for per-sample "
                            "Jacobians, got shape (2, 3, 2, 1)"):
        Chain([np.ones((2, 3, 2, 1))])
    with raises(ValueError, "jacobians[0] must be a 2-D array of shape "
                            "(n_1, n_0), or 3-D (batch, n_1, n_0) for per-sample "
                            "Jacobians, got shape ()"):
        jvp([np.float64(1.0)], np.ones(1))


def test_single_2d_array_as_jacobians():
    with raises(ValueError, "jacobians is a single 2-D array of shape (3, 4); "
                            "pass [J] for a one-link chain"):
        vjp(np.ones((3, 4)), np.ones(3))
    with raises(ValueError, "jacobians is a single 2-D array of shape (2, 2)"):
        Chain(ArrayLike(np.ones((2, 2))))


@pytest.mark.parametrize("shape", [(5,), (2, 2, 2, 2), ()])
def test_wrong_rank_array_as_jacobians(shape):
    with raises(ValueError, "jacobians as one array must be 3-D (k, m, n), "
                            f"got shape {shape}"):
        vjp(np.ones(shape), np.ones(2))


@pytest.mark.parametrize("batch", [None, 2])
def test_cotangent_wrong_length(batch):
    Js = [np.ones((6, 3)), np.ones((5, 6))]
    g = np.ones(4) if batch is None else np.ones((batch, 4))
    with raises(ValueError, f"cotangent has shape {g.shape} but jacobians[1] "
                            "(shape (5, 6)) outputs 5 values"):
        vjp(Js, g)
    with raises(ValueError, f"cotangent has shape {g.shape}"):
        Chain(Js).vjp(g)


@pytest.mark.parametrize("g", [np.float64(1.0), np.ones((1, 1, 5))],
                         ids=["0d", "3d"])
@pytest.mark.parametrize("k", [0, 2])
def test_cotangent_wrong_ndim(g, k):
    Js = [np.ones((6, 3)), np.ones((5, 6))][:k]
    with raises(ValueError, "cotangent must be 1-D (n,) or 2-D (batch, n), "
                            f"got shape {np.shape(g)}"):
        vjp(Js, g)
    with raises(ValueError, "tangent must be 1-D (n,) or 2-D (batch, n), "
                            f"got shape {np.shape(g)}"):
        jvp(Js, g)


@pytest.mark.parametrize("batch", [None, 3])
def test_tangent_wrong_length(batch):
    Js = [np.ones((6, 3)), np.ones((5, 6))]
    v = np.ones(4) if batch is None else np.ones((batch, 4))
    with raises(ValueError, f"tangent has shape {v.shape} but jacobians[0] "
                            "(shape (6, 3)) takes 3 inputs"):
        jvp(Js, v)
    with raises(ValueError, f"tangent has shape {v.shape}"):
        Chain(Js).jvp(v)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_is_typeerror(dtype):
    with raises(TypeError, "jacobians[1] has complex dtype"):
        vjp([np.ones((2, 2)), np.ones((2, 2), dtype)], np.ones(2))
    with raises(TypeError, "cotangent has complex dtype"):
        vjp([np.ones((2, 2))], np.ones(2, dtype))
    with raises(TypeError, "tangent has complex dtype"):
        jvp([np.ones((2, 2))], np.ones(2, dtype))
    with raises(TypeError, "jacobians has complex dtype"):
        vjp(np.ones((1, 2, 2), dtype), np.ones(2))
    with raises(TypeError, "cotangent has complex dtype"):
        vjp([], np.ones(2, dtype))
    with raises(TypeError, "cotangent has complex dtype"):
        vjp([np.ones((2, 2))], [1.0, 2j])


def test_object_is_typeerror():
    with raises(TypeError, "jacobians[0] has dtype object, which is not numeric"):
        vjp([np.ones((2, 2), dtype=object)], np.ones(2))
    with raises(TypeError, "cotangent has dtype object, which is not numeric"):
        vjp([np.ones((2, 2))], np.array([1.0, 2.0], dtype=object))
    with raises(TypeError, "cotangent has dtype object, which is not numeric"):
        vjp([np.ones((2, 2))], None)


def test_string_is_typeerror():
    with raises(TypeError, "jacobians[0] has dtype <U1, which is not numeric"):
        vjp([np.array([["a", "b"], ["c", "d"]])], np.ones(2))
    with raises(TypeError, "cotangent has dtype <U2, which is not numeric"):
        vjp([np.ones((2, 2))], "ab")
    with raises(TypeError, "tangent has dtype |S1, which is not numeric"):
        jvp([np.ones((2, 2))], np.array([b"a", b"b"]))


def test_string_as_jacobians_is_typeerror():
    # The documented rule: "string inputs raise TypeError".  A str is
    # iterable, but it is not a sequence of Jacobians.
    with raises(TypeError, "jacobians must be a sequence of 2-D arrays or one "
                           "3-D array, got str"):
        vjp("abc", np.ones(2))


def test_ragged_is_typeerror():
    with raises(TypeError, "jacobians[1] could not be converted to a numeric "
                           "array (ragged or not array-like)"):
        vjp([np.ones((2, 2)), [[1.0, 2.0], [3.0]]], np.ones(2))
    with raises(TypeError, "cotangent could not be converted to a numeric "
                           "array (ragged or not array-like)"):
        vjp([np.ones((2, 2))], [[1.0, 2.0], [3.0]])
    with raises(TypeError, "tangent could not be converted"):
        jvp([np.ones((2, 2))], [[1.0, 2.0], [3.0]])


@pytest.mark.skipif(np.dtype(np.longdouble).itemsize <= 8,
                    reason="long double is double on this platform")
def test_longdouble_is_typeerror():
    ld = np.dtype(np.longdouble).name
    with raises(TypeError, f"jacobians[0] has dtype {ld}; gradchain computes "
                           "in float32 or float64 and will not silently round"):
        vjp([np.ones((2, 2), np.longdouble)], np.ones(2))
    with raises(TypeError, f"cotangent has dtype {ld}"):
        vjp([np.ones((2, 2))], np.ones(2, np.longdouble))
    with raises(TypeError, f"jacobians has dtype {ld}"):
        Chain(np.ones((2, 2, 2), np.longdouble))


@pytest.mark.parametrize("bad,name", [(5, "int"), (None, "NoneType"),
                                      (2.5, "float")])
def test_non_iterable_jacobians(bad, name):
    with raises(TypeError, "jacobians must be a sequence of 2-D arrays or one "
                           f"3-D array, got {name}"):
        vjp(bad, np.ones(2))
    with raises(TypeError, f"got {name}"):
        Chain(bad)


def test_out_wrong_shape():
    Js = [np.ones((4, 3))]
    with raises(ValueError, "out has shape (4,) but the result has shape (3,)"):
        vjp(Js, np.ones(4), out=np.empty(4))
    with raises(ValueError, "out has shape (1, 3) but the result has shape (3,)"):
        vjp(Js, np.ones(4), out=np.empty((1, 3)))
    with raises(ValueError, "out has shape (3,) but the result has shape (2, 3)"):
        vjp(Js, np.ones((2, 4)), out=np.empty(3))
    with raises(ValueError, "out has shape (3,) but the result has shape (4,)"):
        jvp(Js, np.ones(3), out=np.empty(3))


def test_out_wrong_dtype():
    J64 = [np.ones((4, 3))]
    J32 = [np.ones((4, 3), np.float32)]
    with raises(TypeError, "out has dtype float32 but the result has dtype float64"):
        vjp(J64, np.ones(4), out=np.empty(3, np.float32))
    with raises(TypeError, "out has dtype float64 but the result has dtype float32"):
        vjp(J32, np.ones(4, np.float32), out=np.empty(3))
    # float32 chain, float64 vector: the result is float64
    with raises(TypeError, "out has dtype float32 but the result has dtype float64"):
        vjp(J32, np.ones(4), out=np.empty(3, np.float32))
    with raises(TypeError, "out has dtype int64 but the result has dtype float64"):
        vjp(J64, np.ones(4), out=np.empty(3, np.int64))
    with raises(TypeError, "out has dtype >f8 but the result has dtype float64"):
        vjp(J64, np.ones(4), out=np.empty(3, ">f8"))


@pytest.mark.parametrize("bad", [[0.0, 0.0, 0.0], (0.0, 0.0, 0.0), memoryview(bytearray(24))],
                         ids=["list", "tuple", "memoryview"])
def test_out_not_ndarray(bad):
    with raises(TypeError, f"out must be a numpy.ndarray, got {type(bad).__name__}"):
        vjp([np.ones((4, 3))], np.ones(4), out=bad)


def test_out_read_only():
    out = np.zeros(3)
    out.flags.writeable = False
    with raises(ValueError, "out is read-only"):
        vjp([np.ones((4, 3))], np.ones(4), out=out)
    assert np.array_equal(out, np.zeros(3))


def test_out_overlaps_cotangent():
    J = np.eye(4) * 2
    buf = np.arange(8.0)
    g = buf[:4]
    with raises(ValueError, "out shares memory with cotangent"):
        vjp([J], g, out=buf[2:6])
    assert np.array_equal(buf, np.arange(8.0))
    with raises(ValueError, "out shares memory with cotangent"):
        vjp([J], g, out=g)
    with raises(ValueError, "out shares memory with cotangent"):
        vjp([], g, out=g)                   # the identity too
    with raises(ValueError, "out shares memory with tangent"):
        jvp([J], g, out=buf[::-1][4:])       # reversed view of g
    G = np.arange(12.0).reshape(3, 4)
    with raises(ValueError, "out shares memory with cotangent"):
        vjp([J], G, out=G.T.T)


def test_out_overlaps_jacobian():
    J1 = np.ones((4, 3))
    J2 = np.arange(16.0).reshape(4, 4)
    with raises(ValueError, "out shares memory with jacobians[0]"):
        vjp([J1, J2], np.ones(4), out=J1[0])
    with raises(ValueError, "out shares memory with jacobians[1]"):
        jvp([J1, J2], np.ones(3), out=J2[:, 1])          # a strided column
    assert np.array_equal(J2, np.arange(16.0).reshape(4, 4))
    S = np.ones((2, 3, 3))
    with raises(ValueError, "out shares memory with jacobians[1]"):
        vjp(S, np.ones(3), out=S[1, 2])     # row 2 of the second link
    # disjoint halves of one buffer are fine
    buf = np.zeros(16)
    Jb = buf[:12].reshape(4, 3)
    Jb[...] = J1
    out = buf[12:15]
    assert vjp([Jb], np.ones(4), out=out) is out
    assert np.array_equal(out, np.full(3, 4.0))


def test_out_interleaved_with_inputs_is_not_overlap():
    # "sharing no memory" (the vjp docstring): interleaved views of one
    # buffer share none (np.shares_memory is False), so they are valid.
    buf = np.zeros(8)
    g = buf[::2]
    g[...] = [1.0, 2.0, 3.0, 4.0]
    out = buf[1::2]
    assert not np.shares_memory(g, out)
    assert vjp([2 * np.eye(4)], g, out=out) is out
    assert np.array_equal(out, [2.0, 4.0, 6.0, 8.0])
    assert np.array_equal(buf[::2], [1.0, 2.0, 3.0, 4.0])
    M = np.zeros((4, 6))
    J = M[:, ::2]
    J[...] = 1.0
    out = M[0, 1::2]
    assert not np.shares_memory(J, out)
    assert vjp([J], np.ones(4), out=out) is out
    assert np.array_equal(out, np.full(3, 4.0))


def test_error_leaves_out_untouched():
    out = np.full(3, 7.0)
    with raises(ValueError, "jacobians[1] has shape (2, 5) but jacobians[0] "
                            "outputs 4 values"):
        vjp([np.ones((4, 3)), np.ones((2, 5))], np.ones(2), out=out)
    with raises(ValueError, "cotangent has shape (5,) but jacobians[0] (shape "
                            "(4, 3)) outputs 4 values"):
        vjp([np.ones((4, 3))], np.ones(5), out=out)
    assert np.array_equal(out, np.full(3, 7.0))


# --------------------------------------------------------------------------
# NaN and Inf
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [None, 2])
def test_nan_inf_propagate(rng, dtype, batch):
    J1 = random_matrix(rng, 4, 3, dtype)
    J2 = random_matrix(rng, 5, 4, dtype)
    J2[2, 1] = np.nan
    # vjp with g = 0: J2^T g = [0, NaN, 0, 0]; J1^T of that is all NaN
    g = np.zeros((5,) if batch is None else (batch, 5), dtype)
    res = vjp([J1, J2], g)
    assert res.dtype == dtype and np.isnan(res).all()
    # jvp: only output 2 sees J2[2, 1]
    v = vec(rng, 3, batch, dtype)
    res = jvp([J1, J2], v)
    nan_mask = np.zeros(5, bool)
    nan_mask[2] = True
    assert np.array_equal(np.isnan(res), np.broadcast_to(nan_mask, res.shape))
    J2f = J2.copy()
    J2f[2, 1] = 0
    ok = ~nan_mask
    check = reference_jvp([J1, J2f], v)[..., ok]
    assert_close(res[..., ok], check,
                 abs_chain([J1, J2f], v, False)[..., ok], dtype)
    # Inf in the cotangent: out[c] = J[0, c] * Inf + finite: +Inf, -Inf,
    # NaN (0 * Inf) for J[0] = (1, -1, 0)
    J = np.array([[1.0, -1.0, 0.0], [2.0, 3.0, 4.0]], dtype)
    gi = np.array([np.inf, 1.0], dtype)
    res = vjp([J], gi)
    assert res[0] == np.inf and res[1] == -np.inf and np.isnan(res[2])
    # ... and a second link mixes them: every output of J1^T sees the NaN
    res = vjp([random_matrix(rng, 3, 2, dtype), J], gi)
    assert np.isnan(res).all()
    # the identity copies NaN/Inf as they are
    x = np.array([np.nan, np.inf, -np.inf, 1.0], dtype)
    assert np.array_equal(vjp([], x), x, equal_nan=True)


# --------------------------------------------------------------------------
# property test
# --------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(dims=st.lists(st.integers(0, 9), min_size=1, max_size=6),
       dtype=st.sampled_from(DTYPES),
       batch=st.one_of(st.none(), st.integers(0, 4)),
       layout=st.sampled_from(CHAIN_LAYOUTS),
       seed=st.integers(0, 2**32 - 1))
def test_property_random_chains(dims, dtype, batch, layout, seed):
    rng = np.random.default_rng(seed)
    Js = layout_chain(random_chain(rng, dims, dtype), layout)
    chain = Chain(Js)
    assert chain.dims == (tuple(dims) if len(dims) > 1 else ())
    g = vec(rng, dims[-1], batch, dtype)
    v = vec(rng, dims[0], batch, dtype)
    check_vjp(vjp(Js, g), Js, g, dtype)
    check_vjp(chain.vjp(g), Js, g, dtype)
    check_jvp(jvp(Js, v), Js, v, dtype)
    check_jvp(chain.jvp(v), Js, v, dtype)


# --------------------------------------------------------------------------
# concurrency
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_thread_pool_concurrent_calls(rng, dtype):
    # Links with >= 2**15 elements, so the kernels may also split over
    # OpenMP threads inside each call.
    dims = [300, 450, 500, 64]
    Js = random_chain(rng, dims, dtype)
    Js[1] = make_layout(Js[1], "F")
    chain = Chain(Js)
    n_threads, n_calls = 8, 20
    tasks = []
    for t in range(n_threads):
        for c in range(n_calls):
            kind = (t + c) % 4
            if kind == 0:
                tasks.append(("vjp", vec(rng, 64, None, dtype)))
            elif kind == 1:
                tasks.append(("jvp", vec(rng, 300, None, dtype)))
            elif kind == 2:
                tasks.append(("vjp", vec(rng, 64, 3, dtype)))
            else:
                tasks.append(("jvp", vec(rng, 300, 2, dtype)))
    expected = [getattr(chain, op)(x) for op, x in tasks]   # one at a time

    def worker(t):
        return [getattr(chain, op)(x)
                for op, x in tasks[t * n_calls:(t + 1) * n_calls]]

    with concurrent.futures.ThreadPoolExecutor(max_workers=n_threads) as ex:
        futures = [ex.submit(worker, t) for t in range(n_threads)]
        results = [r for f in futures for r in f.result()]
    assert len(results) == len(tasks)
    for (op, x), res, want in zip(tasks, results, expected):
        assert np.array_equal(res, want)
    # and the single-threaded answers are right
    for op, x in tasks[::7]:
        res = getattr(chain, op)(x)
        (check_vjp if op == "vjp" else check_jvp)(res, Js, x, dtype)


def test_chain_pickles_by_its_jacobians():
    import pickle
    rng = np.random.default_rng(5)
    Js = [rng.standard_normal((4, 3)), rng.standard_normal((2, 4))]
    for src in (Js, np.stack([rng.standard_normal((3, 3))] * 2)):
        c = Chain(src)
        c2 = pickle.loads(pickle.dumps(c))
        assert type(c2) is Chain and c2.shapes == c.shapes
        g = rng.standard_normal(c.output_dim)
        np.testing.assert_array_equal(c2.vjp(g), c.vjp(g))


# --- regressions from the adversarial review --------------------------------

def test_list_mutated_during_binding_is_safe():
    Js = []

    class Evil:
        def __array__(self, dtype=None, copy=None):
            Js.clear()                      # runs while the list is bound
            return np.eye(2)

    Js.extend([Evil(), 2 * np.eye(2), 3 * np.eye(2)])
    # the list as it was at the call: I^T (2I)^T (3I)^T g = 6 g
    np.testing.assert_array_equal(vjp(Js, np.ones(2)), np.full(2, 6.0))


def test_out_subclass_lying_about_shape_is_refused():
    class Liar(np.ndarray):
        @property
        def shape(self):
            return (1000,)

    out = np.zeros(1).view(Liar)
    with pytest.raises(ValueError, match=r"out has shape \(1,\) but the result "
                                         r"has shape \(1000,\)"):
        vjp([np.ones((1, 1000))], np.ones(1), out=out)


def test_zero_stride_out_is_refused():
    out = np.lib.stride_tricks.as_strided(np.zeros(1), shape=(4,), strides=(0,))
    with pytest.raises(ValueError, match="zero stride"):
        vjp([np.eye(4)], np.ones(4), out=out)


def test_huge_empty_batch_and_overflowing_work_buffers():
    r = vjp([np.zeros((1024, 0)), np.zeros((0, 1024))], np.empty((2**50, 0)))
    assert r.shape == (2**50, 0)
    one = np.ones(1)
    J1 = np.lib.stride_tricks.as_strided(one, shape=(2**59, 1), strides=(0, 0),
                                         writeable=False)
    J2 = np.lib.stride_tricks.as_strided(one, shape=(1, 2**59), strides=(0, 0),
                                         writeable=False)
    with pytest.raises(MemoryError):
        Chain([J1, J2]).jvp(np.ones((4, 1)))


def test_out_overlapping_a_converted_input_is_refused():
    buf = np.zeros(8)
    J32 = buf.view(np.float32)[:4].reshape(2, 2)
    J32[...] = np.eye(2)
    with pytest.raises(ValueError, match=r"out shares memory with jacobians\[0\]"):
        vjp([J32], np.array([1.0, 2.0]), out=buf[:2])        # promotion path
    assert np.array_equal(J32, np.eye(2, dtype=np.float32))
    Ji = np.eye(2, dtype=np.int64)
    with pytest.raises(ValueError, match=r"out shares memory with jacobians\[0\]"):
        vjp([Ji], np.array([1.0, 2.0]), out=Ji.view(np.float64).reshape(-1)[:2])
    assert np.array_equal(Ji, np.eye(2, dtype=np.int64))


@pytest.mark.parametrize("bad,match", [
    ({"a": 1}, "got dict"),
    (np.array(None, dtype=object), "0-d object array"),
])
def test_odd_jacobians_containers_raise_typeerror(bad, match):
    with pytest.raises(TypeError, match=match):
        vjp(bad, np.ones(2))


def test_masked_arrays_are_refused():
    m = np.ma.masked_array(np.eye(2), mask=[[0, 1], [0, 0]])
    with pytest.raises(TypeError, match=r"jacobians\[0\] is a masked array"):
        vjp([m], np.ones(2))
    with pytest.raises(TypeError, match="cotangent is a masked array"):
        vjp([np.eye(2)], np.ma.masked_array(np.ones(2), mask=[0, 1]))


def test_long_float32_sums_stay_accurate():
    # two levels of partial sums: better than a running float32 sum
    n = 65000
    g = np.ones(n, np.float32)
    exact = n * float(np.float32(0.1))
    for J in (np.full((n, 1), 0.1, np.float32),
              np.full(n, 0.1, np.float32)[:, None]):
        assert abs(float(vjp([J], g)[0]) - exact) <= 2e-5 * exact
