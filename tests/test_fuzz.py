"""Property-based fuzz tests of every public entry point (issue 8).

The contract checked here, for any generated input:

* every public call either returns the correct result (compared with an
  independent NumPy float64 reference: dense products, analytic Jacobians of
  the built-in maps) or raises ``ValueError``/``TypeError``; an exception a
  user callback raises itself propagates unchanged;
* nothing the caller passed is modified (except an ``out=`` they gave);
* callback outputs are checked (shape, dtype) before compiled code touches
  them, with messages naming ``maps[i].<callback>``; callbacks get read-only
  arrays;
* operators are immutable, and lying operator subclasses are rejected or
  ignored, never read out of bounds;
* masked arrays are rejected anywhere;
* zero-size products with huge declared dimensions return zeros and
  allocate nothing; sizes past ``Py_ssize_t`` raise ``ValueError``;
* every memory layout gives the C-order result.

Budget: ``GRADCHAIN_FUZZ_EXAMPLES`` examples per test (default 30; the
sanitizer run sets a few hundred).  Runs are derandomized (reproducible in
CI) unless ``GRADCHAIN_FUZZ_RANDOM=1``.  While exploring crashes, set
``GRADCHAIN_FUZZ_LOG=/path``: each case is appended there (and flushed)
before the calls, so the last line after a segfault is the reproducer
(``build_chain(spec)`` / ``build_composition(spec)`` rebuild it).

A crash of the interpreter here is a failing run: that is the point.
"""
import math
import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, assume, given, note, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

import gradchain as gc

# Hypothesis's pytest plugin imports its patch writer (and libcst, where
# installed) when a test fails; libcst's import warns, which the suite's
# filterwarnings=error turns into an INTERNALERROR hiding the failure.
# Import it once here, warnings silenced, so a failure is reported.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
        import hypothesis.extra._patching  # noqa: F401
    except Exception:       # not installed, or a version without it
        pass

EXAMPLES = int(os.environ.get("GRADCHAIN_FUZZ_EXAMPLES", "30"))
_RANDOM = os.environ.get("GRADCHAIN_FUZZ_RANDOM", "") not in ("", "0")
# GRADCHAIN_FUZZ_SHRINK=0: report the first failing example unshrunk
# (shrinking under the sanitizer build can take minutes).
_PHASES = tuple(p for p in Phase if p is not Phase.explain and (
    p is not Phase.shrink or os.environ.get("GRADCHAIN_FUZZ_SHRINK", "1") != "0"))

# too_slow is suppressed because each example builds NumPy arrays in many
# layouts (generation of a whole chain legitimately takes milliseconds on a
# loaded 2-core CI box and under the sanitizer build, which is 5-20x slower).
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not _RANDOM,
                database=None, phases=_PHASES,
                suppress_health_check=[HealthCheck.too_slow])
# The cheap tests (a handful of scalars per example) keep every health check.
FUZZ_CHEAP = settings(max_examples=EXAMPLES, deadline=None,
                      derandomize=not _RANDOM, database=None, phases=_PHASES)

BAD = (ValueError, TypeError)
HUGE = 2 ** 60

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
VALUE_DTYPES = [F64, F32, F16, np.dtype(np.int64), np.dtype(np.int32),
                np.dtype(np.uint8), np.dtype(np.bool_)]
LAYOUTS = ["C", "F", "strided", "negative", "broadcast", "unaligned",
           "swapped", "readonly"]
TOL = {F32: 1e-4, F64: 1e-10}
TINY = {F32: 1e-30, F64: 1e-290}


def _log(kind, spec):
    path = os.environ.get("GRADCHAIN_FUZZ_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{kind} {spec!r}\n")
            f.flush()
            os.fsync(f.fileno())
    try:
        note(f"{kind} {spec!r}")
    except InvalidArgument:     # called outside Hypothesis (a reproducer)
        pass


# --------------------------------------------------------------------------
# arrays: values per dtype, every layout
# --------------------------------------------------------------------------

def values(rng, shape, dtype):
    """Random values of ``dtype`` (entries ~ N(0, 1/n) for floats)."""
    dtype = np.dtype(dtype)
    n = shape[-1] if len(shape) else 1
    if dtype.kind == "f":
        return (rng.standard_normal(shape) / math.sqrt(max(n, 1))).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    if dtype.kind == "u":
        return rng.integers(0, 4, shape).astype(dtype)
    return rng.integers(-3, 4, shape).astype(dtype)


def _garbage(shape, dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.full(shape, np.nan, dtype)
    if dtype.kind == "b":
        return np.ones(shape, dtype)
    return np.full(shape, np.iinfo(dtype).max, dtype)


def in_layout(a, layout):
    """An array equal to ``a`` (or, for "broadcast", constant along an axis
    with a zero stride) in the given memory layout."""
    a = np.asarray(a)
    shape, nd = a.shape, a.ndim
    if layout == "C":
        return np.ascontiguousarray(a).copy()
    if layout == "F":
        return np.asfortranarray(a).copy(order="F")
    if layout == "strided":
        big = _garbage(tuple(2 * s + 1 for s in shape), a.dtype)
        v = big[(slice(None, None, 2),) * nd][tuple(slice(0, s) for s in shape)]
        v[...] = a
        return v
    if layout == "negative":
        big = _garbage(tuple(2 * s + 1 for s in shape), a.dtype)
        v = big[(slice(None, None, -2),) * nd][tuple(slice(0, s) for s in shape)]
        v[...] = a
        return v
    if layout == "broadcast":
        if nd == 0 or a.size == 0:
            return np.broadcast_to(a, shape)
        axis = nd - 1 if shape[-1] > 1 or nd == 1 else 0
        sub = a[(slice(None),) * axis + (slice(0, 1),)]
        return np.broadcast_to(sub, shape)        # a zero stride, read-only
    if layout == "unaligned":
        buf = np.zeros(a.nbytes + 1, np.uint8)
        v = buf[1:1 + a.nbytes].view(a.dtype).reshape(shape)
        v[...] = a
        return v
    if layout == "swapped":
        return a.astype(a.dtype.newbyteorder())
    if layout == "readonly":
        v = a.copy()
        v.flags.writeable = False
        return v
    raise ValueError(layout)


def f64(a):
    return np.array(a, dtype=np.float64)


def snapshot(objs):
    """Copies of every array reachable from objs (arrays, operators,
    lists)."""
    out = []
    for o in objs:
        if isinstance(o, np.ndarray):
            out.append((o, o.copy(), o.dtype, o.shape, o.strides))
        elif isinstance(o, gc.Operator):
            for name in ("matrix", "diagonal", "u", "v"):
                a = getattr(o, name, None)
                if isinstance(a, np.ndarray):
                    out.append((a, a.copy(), a.dtype, a.shape, a.strides))
    return out


def assert_unchanged(snap):
    for a, copy, dtype, shape, strides in snap:
        assert a.dtype == dtype and a.shape == shape and a.strides == strides
        same = (np.array_equal(a, copy, equal_nan=True) if a.dtype.kind in "fc"
                else np.array_equal(a, copy))
        assert same, "an input was modified"


def assert_close(res, ref, scale, dtype):
    dtype = np.dtype(dtype)
    assert isinstance(res, np.ndarray), type(res)
    assert not isinstance(res, np.ma.MaskedArray)
    assert res.dtype == dtype, (res.dtype, dtype)
    ref = np.asarray(ref, np.float64)
    assert res.shape == ref.shape, (res.shape, ref.shape)
    err = np.abs(res.astype(np.float64) - ref)
    bound = TOL[dtype] * np.asarray(scale, np.float64) + TINY[dtype]
    ok = err <= bound
    if not ok.all():
        i = tuple(np.argwhere(~ok)[0])
        raise AssertionError(f"{(~ok).sum()} of {ok.size} entries wrong; at {i}: "
                             f"got {res[i]!r}, want {ref[i]!r}, bound {bound[i]:.3g}")


def compute_dtype(dtypes):
    """The README's dtype rule: float32 iff every dtype-carrying input is
    float16/float32 (None: carries no dtype, e.g. Identity)."""
    ds = [np.dtype(d) for d in dtypes if d is not None]
    if not ds:
        return F64
    return F32 if all(d.kind == "f" and d.itemsize <= 4 for d in ds) else F64


# --------------------------------------------------------------------------
# chains
# --------------------------------------------------------------------------

widths = st.one_of(st.integers(1, 6), st.integers(0, 9))
dtypes = st.sampled_from(VALUE_DTYPES)
float_dtypes = st.sampled_from([F64, F32, F16])
layouts = st.sampled_from(LAYOUTS)


@st.composite
def chain_specs(draw, max_links=6):
    """A plain description of a chain (rebuilt by build_chain)."""
    k = draw(st.integers(0, max_links))
    dims = [draw(widths) for _ in range(k + 1)]
    per_sample_ok = draw(st.booleans())
    links = []
    for i in range(k):
        m, n = dims[i + 1], dims[i]
        kinds = ["dense", "dense", "Dense"]
        if m == n:
            kinds += ["Diagonal", "Identity", "DiagonalPlusRankOne", "softmax"]
        if per_sample_ok:
            kinds += ["per_sample", "per_sample"]
        kind = draw(st.sampled_from(kinds))
        dt = draw(dtypes) if kind in ("dense", "per_sample") else draw(
            st.sampled_from([F64, F32, F16, np.dtype(np.int64)]))
        links.append(dict(kind=kind, dtype=dt.str, layout=draw(layouts),
                          scale=draw(st.sampled_from([1.0, -0.5, 2.0, 0.0]))))
    has_ps = any(L["kind"] == "per_sample" for L in links)
    if has_ps:
        batch = draw(st.integers(0, 5))
    else:
        batch = draw(st.one_of(st.none(), st.integers(0, 5)))
    return dict(dims=dims, links=links, batch=batch,
                vec_dtype=draw(dtypes).str, vec_layout=draw(layouts),
                seed=draw(st.integers(0, 2 ** 32 - 1)))


def build_chain(spec):
    """(links, reference links as float64 arrays or per-sample stacks,
    cotangent, tangent) for a spec from chain_specs."""
    rng = np.random.default_rng(spec["seed"])
    dims, batch = spec["dims"], spec["batch"]
    links, refs, arefs = [], [], {}
    for i, L in enumerate(spec["links"]):
        m, n = dims[i + 1], dims[i]
        dt, lay, kind = np.dtype(L["dtype"]), L["layout"], L["kind"]
        if kind == "dense":
            a = in_layout(values(rng, (m, n), dt), lay)
            links.append(a)
            refs.append(f64(a))
        elif kind == "per_sample":
            a = in_layout(values(rng, (batch, m, n), dt), lay)
            links.append(a)
            refs.append(f64(a))
        elif kind == "Dense":
            op = gc.Dense(in_layout(values(rng, (m, n), dt), lay))
            links.append(op)
            refs.append(f64(op.todense()))
        elif kind == "Diagonal":
            op = gc.Diagonal(in_layout(values(rng, (n,), dt), lay))
            links.append(op)
            refs.append(f64(op.todense()))
        elif kind == "Identity":
            op = gc.Identity(n, scale=L["scale"])
            links.append(op)
            refs.append(L["scale"] * np.eye(n))
        elif kind == "DiagonalPlusRankOne":
            d, u, v = (in_layout(values(rng, (n,), dt), lay) for _ in range(3))
            op = gc.DiagonalPlusRankOne(d, u, v, L["scale"])
            links.append(op)
            refs.append(np.diag(f64(d)) + L["scale"] * np.outer(f64(u), f64(v)))
            arefs[len(refs) - 1] = np.abs(np.diag(f64(d))) + abs(L["scale"]) * np.abs(
                np.outer(f64(u), f64(v)))
        elif kind == "softmax":
            s = np.exp(rng.standard_normal(n))
            s = in_layout((s / max(s.sum(), 1e-300)).astype(dt), lay)
            op = gc.DiagonalPlusRankOne.softmax(s)
            links.append(op)
            refs.append(np.diag(f64(s)) - np.outer(f64(s), f64(s)))
            arefs[len(refs) - 1] = np.abs(np.diag(f64(s))) + np.abs(np.outer(f64(s), f64(s)))
        else:
            raise ValueError(kind)
    vdt, vlay = np.dtype(spec["vec_dtype"]), spec["vec_layout"]
    shape = lambda w: (w,) if batch is None else (batch, w)   # noqa: E731
    cot = in_layout(values(rng, shape(dims[-1]), vdt), vlay)
    tan = in_layout(values(rng, shape(dims[0]), vdt), vlay)
    # the rounding-error scale of each link: |J|, or for diag + rank one the
    # sum of its terms' magnitudes (the kernel adds them; |J| may cancel)
    absrefs = [arefs.get(i, np.abs(J)) for i, J in enumerate(refs)]
    return links, refs, cot, tan, absrefs


def link_dtype(link):
    if isinstance(link, gc.Identity):
        return None
    return link.dtype


def ref_vjp(refs, g, absolute=False):
    """Rows: g J_k ... J_1 (per-sample stacks row by row)."""
    f = np.abs if absolute else (lambda a: a)
    x = f(f64(g))
    single = x.ndim == 1
    X = x.reshape(1, -1) if single else x
    for J in reversed(refs):
        J = f(J)
        if J.ndim == 3:
            X = np.einsum("bm,bmn->bn", X, J)
        else:
            X = X @ J
    return X[0] if single else X


def ref_jvp(refs, v, absolute=False):
    f = np.abs if absolute else (lambda a: a)
    x = f(f64(v))
    single = x.ndim == 1
    X = x.reshape(1, -1) if single else x
    for J in refs:
        J = f(J)
        if J.ndim == 3:
            X = np.einsum("bmn,bn->bm", J, X)
        else:
            X = X @ J.T
    return X[0] if single else X


def ref_jacobian(refs, n0, batch, absolute=False):
    f = np.abs if absolute else (lambda a: a)
    if any(J.ndim == 3 for J in refs):
        M = np.broadcast_to(np.eye(n0), (batch, n0, n0))
        for J in refs:
            M = f(J) @ M
        return M
    M = np.eye(n0)
    for J in refs:
        M = f(J) @ M
    return M


@FUZZ
@given(spec=chain_specs())
def test_chain_products_match_reference(spec):
    """vjp/jvp/jacobian, one-shot and through a Chain, in every dtype,
    layout and link kind, equal the float64 reference and modify nothing."""
    _log("chain", spec)
    links, refs, cot, tan, arefs = build_chain(spec)
    snap = snapshot(links + [cot, tan])
    dt = compute_dtype([link_dtype(L) for L in links] + [cot.dtype])
    dims = spec["dims"]

    res = gc.vjp(links, cot)
    assert_close(res, ref_vjp(refs, cot), ref_vjp(arefs, cot, True), dt)
    res = gc.jvp(links, tan)
    assert_close(res, ref_jvp(refs, tan), ref_jvp(arefs, tan, True), dt)

    chain = gc.Chain(links)
    assert len(chain) == len(links)
    for _ in range(2):            # a second call must not see stale buffers
        res = chain.vjp(cot)
        assert_close(res, ref_vjp(refs, cot), ref_vjp(arefs, cot, True), dt)
        res = chain.jvp(tan)
        assert_close(res, ref_jvp(refs, tan), ref_jvp(arefs, tan, True), dt)
    if links:
        jdt = compute_dtype([link_dtype(L) for L in links])
        for res in (chain.jacobian(), gc.jacobian(links)):
            batch = spec["batch"]
            assert_close(res, ref_jacobian(refs, dims[0], batch),
                         ref_jacobian(arefs, dims[0], batch, True), jdt)
        for mode in ("vjp", "jvp", "jacobian"):
            b = spec["batch"] if spec["batch"] is not None else 1
            p = chain.plan(batch=b, mode=mode)
            assert isinstance(p.expression, str) and p.cost >= 0
    else:
        with pytest.raises(ValueError):
            chain.jacobian()
    assert_unchanged(snap)


# --------------------------------------------------------------------------
# out=
# --------------------------------------------------------------------------

OUT_KINDS = ["right", "right_strided", "wrong_shape", "wrong_dtype", "readonly",
             "overlap", "masked", "list", "broadcast"]


@FUZZ
@given(spec=chain_specs(max_links=4), out_kind=st.sampled_from(OUT_KINDS),
       mode=st.sampled_from(["vjp", "jvp"]), one_shot=st.booleans())
def test_out_argument(spec, out_kind, mode, one_shot):
    """out= of the right shape/dtype is written and returned; any other out
    (wrong shape, dtype, read-only, zero-stride, overlapping an input,
    masked, not an ndarray) raises ValueError/TypeError and writes
    nothing the caller passed."""
    _log("out", (spec, out_kind, mode, one_shot))
    links, refs, cot, tan, arefs = build_chain(spec)
    vec = cot if mode == "vjp" else tan
    dt = compute_dtype([link_dtype(L) for L in links] + [vec.dtype])
    ref = ref_vjp(refs, vec) if mode == "vjp" else ref_jvp(refs, vec)
    scale = ref_vjp(arefs, vec, True) if mode == "vjp" else ref_jvp(arefs, vec, True)
    shape = ref.shape
    if out_kind == "overlap":
        # the vector and out share one buffer; both have the compute dtype
        dt = compute_dtype([link_dtype(L) for L in links] + [F32])
        size, osize = vec.size, int(np.prod(shape))
        assume(size > 0 and osize > 0)
        buf = np.zeros(size + osize, dt)
        new = buf[:size].reshape(vec.shape)
        new[...] = vec
        vec = new
        dt = compute_dtype([link_dtype(L) for L in links] + [vec.dtype])
        start = (spec["seed"] % size)
        out = buf[start:start + osize].reshape(shape)
    elif out_kind == "right":
        out = np.full(shape, np.nan, dt)
    elif out_kind == "right_strided":
        big = np.full(tuple(2 * s + 1 for s in shape), np.nan, dt)
        out = big[(slice(None, None, -2),) * len(shape)][tuple(slice(0, s) for s in shape)]
    elif out_kind == "wrong_shape":
        out = np.zeros(shape[:-1] + (shape[-1] + 1,), dt)
    elif out_kind == "wrong_dtype":
        out = np.zeros(shape, F64 if dt == F32 else F32)
    elif out_kind == "readonly":
        out = np.zeros(shape, dt)
        out.flags.writeable = False
    elif out_kind == "masked":
        out = np.ma.masked_array(np.zeros(shape, dt), mask=False)
    elif out_kind == "list":
        out = np.zeros(shape, dt).tolist()
    elif out_kind == "broadcast":
        assume(int(np.prod(shape)) > 1)
        out = np.broadcast_to(np.zeros((1,) * len(shape), dt), shape)
    snap = snapshot(links + [vec])
    if out_kind not in ("overlap",):
        out_snap = snapshot([out]) if isinstance(out, np.ndarray) else []
    else:
        out_snap = []

    def call():
        if one_shot:
            return (gc.vjp if mode == "vjp" else gc.jvp)(links, vec, out=out)
        c = gc.Chain(links)
        return (c.vjp if mode == "vjp" else c.jvp)(vec, out=out)

    if out_kind in ("right", "right_strided"):
        res = call()
        assert res is out
        assert_close(res, ref, scale, dt)
        assert_unchanged(snap)
        return
    if out_kind == "overlap" and not np.shares_memory(out, vec):
        res = call()
        assert_close(res, ref, scale, dt)
        return
    err = TypeError if out_kind in ("wrong_dtype", "masked", "list") else ValueError
    with pytest.raises(err):
        call()
    assert_unchanged(snap)
    assert_unchanged(out_snap)


# --------------------------------------------------------------------------
# invalid chains and vectors
# --------------------------------------------------------------------------

def _corrupt_array(kind, a):
    if kind == "complex":
        return a.astype(np.complex128) + 1j
    if kind == "object":
        return a.astype(object)
    if kind == "str":
        return a.astype(str)
    if kind == "longdouble":
        return a.astype(np.longdouble)
    if kind.startswith("masked"):
        dt = kind.split("_")[1]
        return np.ma.masked_array(a.astype(dt), mask=np.zeros(a.shape, bool))
    raise ValueError(kind)


TYPE_CORRUPTIONS = ["complex", "object", "str", "masked_float64", "masked_float32",
                    "masked_float16", "masked_int64", "masked_bool"]
if np.dtype(np.longdouble).itemsize > 8:
    TYPE_CORRUPTIONS.append("longdouble")


@FUZZ
@given(spec=chain_specs(max_links=4),
       what=st.sampled_from(["link", "vector"]),
       corruption=st.sampled_from(TYPE_CORRUPTIONS),
       mode=st.sampled_from(["vjp", "jvp", "Chain.vjp", "Chain.jvp", "jacobian"]))
def test_bad_dtypes_raise_type_error(spec, what, corruption, mode):
    """A complex/object/str/long double/masked (of any dtype) link or vector
    is a TypeError, wherever it sits and whatever its size."""
    _log("bad_dtype", (spec, what, corruption, mode))
    links, refs, cot, tan, arefs = build_chain(spec)
    dense = [i for i, L in enumerate(links) if isinstance(L, np.ndarray)]
    if what == "link" or mode == "jacobian":
        assume(dense)
        i = dense[spec["seed"] % len(dense)]
        links[i] = _corrupt_array(corruption, np.asarray(links[i]))
    elif mode.endswith("vjp"):
        cot = _corrupt_array(corruption, np.asarray(cot))
    else:
        tan = _corrupt_array(corruption, np.asarray(tan))
    snap = snapshot(links + [cot, tan])
    with pytest.raises(TypeError):
        if mode == "vjp":
            gc.vjp(links, cot)
        elif mode == "jvp":
            gc.jvp(links, tan)
        elif mode == "jacobian":
            gc.jacobian(links)
        else:
            c = gc.Chain(links)
            (c.vjp(cot) if mode == "Chain.vjp" else c.jvp(tan))
    assert_unchanged(snap)


SHAPE_CORRUPTIONS = ["link_rows", "link_cols", "link_1d", "link_4d", "vec_len",
                     "vec_3d", "vec_0d", "per_sample_batch"]


@FUZZ
@given(spec=chain_specs(max_links=4), corruption=st.sampled_from(SHAPE_CORRUPTIONS),
       mode=st.sampled_from(["vjp", "jvp"]))
def test_bad_shapes_raise_value_error(spec, corruption, mode):
    """Links that do not chain, vectors of the wrong length or rank, a
    per-sample batch that disagrees: ValueError, never a wrong result."""
    _log("bad_shape", (spec, corruption, mode))
    links, refs, cot, tan, arefs = build_chain(spec)
    rng = np.random.default_rng(spec["seed"])
    vec = cot if mode == "vjp" else tan
    dense = [i for i, L in enumerate(links)
             if isinstance(L, np.ndarray) and L.ndim == 2]
    if corruption in ("link_rows", "link_cols", "link_1d", "link_4d"):
        assume(dense)
        i = dense[spec["seed"] % len(dense)]
        m, n = links[i].shape
        if corruption == "link_rows":
            # the first link's rows and the last link's... any interior change
            assume(len(links) > 1 and i < len(links) - 1)
            links[i] = values(rng, (m + 1, n), F64)
        elif corruption == "link_cols":
            assume(i > 0)
            links[i] = values(rng, (m, n + 1), F64)
        elif corruption == "link_1d":
            links[i] = values(rng, (m * n + 1,), F64)
        else:
            links[i] = values(rng, (1, 1, m, n), F64)
    elif corruption == "vec_len":
        assume(links)
        vec = values(rng, vec.shape[:-1] + (vec.shape[-1] + 1,), F64)
    elif corruption == "vec_3d":
        vec = values(rng, (1,) + vec.shape + (1,) * (2 - vec.ndim), F64)
    elif corruption == "vec_0d":
        assume(links)
        vec = np.float64(1.0)
    else:
        ps = [i for i, L in enumerate(links) if isinstance(L, np.ndarray) and L.ndim == 3]
        assume(ps)
        vec = values(rng, (spec["batch"] + 1, vec.shape[-1]), F64)
    snap = snapshot(links + [vec])
    with pytest.raises(ValueError):
        if mode == "vjp":
            gc.vjp(links, vec)
        else:
            gc.jvp(links, vec)
    assert_unchanged(snap)


# --------------------------------------------------------------------------
# zero-size products with huge declared dimensions; sizes past Py_ssize_t
# --------------------------------------------------------------------------

@st.composite
def zero_size_chains(draw):
    """Chains in which every link is zero-size (one of its dimensions is 0)
    while the others may be huge: the product is all zeros."""
    n_in = draw(st.integers(0, 4))
    n_out = draw(st.integers(0, 4))
    inner = draw(st.lists(st.sampled_from([0, 1, 3, HUGE, 2 ** 40, 2 ** 31 + 1]),
                          min_size=0, max_size=3))
    dims = [n_in, 0]
    for w in inner:
        dims += [w, 0]
    dims.append(n_out)
    dtype = draw(st.sampled_from([F32, F64, F16]))
    per_sample = draw(st.lists(st.booleans(), min_size=len(dims) - 1,
                               max_size=len(dims) - 1))
    batch = draw(st.one_of(st.none(), st.integers(0, 4)))
    if any(per_sample) and batch is None:
        batch = draw(st.integers(0, 4))
    return dict(dims=dims, dtype=dtype.str, per_sample=per_sample, batch=batch)


@FUZZ_CHEAP
@given(spec=zero_size_chains())
def test_zero_width_chains_return_zeros(spec):
    """A chain through a zero-width intermediate is the zero map: vjp/jvp
    give zeros of the right shape and dtype, jacobian zeros of (n_k, n_0),
    without allocating anything the size of the huge dimensions."""
    _log("zero", spec)
    dims, dt, batch = spec["dims"], np.dtype(spec["dtype"]), spec["batch"]
    links = []
    for i, ps in enumerate(spec["per_sample"]):
        m, n = dims[i + 1], dims[i]
        shape = (batch, m, n) if ps else (m, n)
        try:
            links.append(np.empty(shape, dt) if 0 in (m, n) else np.ones(shape, dt))
        except ValueError:          # NumPy itself refuses the declared size
            assume(False)
    cdt = F32 if dt.itemsize <= 4 else F64
    vshape = (lambda w: (w,) if batch is None else (batch, w))
    g = np.ones(vshape(dims[-1]), dt)
    v = np.ones(vshape(dims[0]), dt)
    for res, want in ((gc.vjp(links, g), vshape(dims[0])),
                      (gc.jvp(links, v), vshape(dims[-1])),
                      (gc.Chain(links).vjp(g), vshape(dims[0])),
                      (gc.Chain(links).jvp(v), vshape(dims[-1]))):
        assert res.shape == want and res.dtype == cdt
        assert not res.any()
    J = gc.jacobian(links)
    want = (dims[-1], dims[0]) if not any(spec["per_sample"]) else (batch, dims[-1], dims[0])
    assert J.shape == want and J.dtype == cdt and not J.any()


def test_zero_width_reproducer_from_issue():
    f32 = np.float32
    res = gc.vjp([np.empty((0, 3), f32), np.empty((2 ** 60, 0), f32),
                  np.empty((0, 2 ** 60), f32), np.ones((2, 0), f32)], np.ones(2, f32))
    assert res.dtype == F32 and res.shape == (3,) and not res.any()


@FUZZ_CHEAP
@given(n=st.one_of(st.integers(2 ** 63, 2 ** 70), st.integers(-2 ** 70, -1)),
       where=st.sampled_from(["identity", "plan_vjp", "plan_jvp", "plan_jacobian"]))
def test_huge_sizes_raise_value_error(n, where):
    """Sizes past what Py_ssize_t can hold (or negative): ValueError, never
    OverflowError, a wrap-around or a crash."""
    _log("huge", (n, where))
    if where == "identity":
        with pytest.raises(ValueError):
            gc.Chain([gc.Identity(n)]).vjp(np.ones(1))
    else:
        c = gc.Chain([np.ones((2, 2))])
        with pytest.raises(ValueError):
            c.plan(batch=n, mode=where.split("_")[1])


@pytest.mark.parametrize("bad", [np.ones(3), "2", 2.5, [2], np.ma.masked_array([2])])
def test_set_num_threads_rejects_non_integers(bad, restore_threads):
    with pytest.raises(TypeError):
        gc.set_num_threads(bad)


# --------------------------------------------------------------------------
# operators: immutable; lying subclasses
# --------------------------------------------------------------------------

def _make_op(kind, n, dt):
    rng = np.random.default_rng(n)
    if kind == "Diagonal":
        return gc.Diagonal(values(rng, (n,), dt))
    if kind == "Identity":
        return gc.Identity(n, 2.0)
    if kind == "Dense":
        return gc.Dense(values(rng, (n, n), dt))
    return gc.DiagonalPlusRankOne(*(values(rng, (n,), dt) for _ in range(3)), c=0.5)


OP_ATTRS = {"Diagonal": ["diagonal"], "Identity": ["n", "scale"],
            "Dense": ["matrix"], "DiagonalPlusRankOne": ["diagonal", "u", "v", "c"]}
NEW_VALUES = [lambda n: np.ones(n), lambda n: np.ones(n + 1), lambda n: np.ones((n, 0)),
              lambda n: "abc", lambda n: 2.5, lambda n: n + 1, lambda n: None,
              lambda n: np.ones((n, n))]


@FUZZ_CHEAP
@given(kind=st.sampled_from(sorted(OP_ATTRS)), n=st.integers(0, 5),
       dt=float_dtypes, data=st.data())
def test_operators_are_immutable(kind, n, dt, data):
    op = _make_op(kind, n, dt)
    attr = data.draw(st.sampled_from(OP_ATTRS[kind]))
    new = data.draw(st.sampled_from(NEW_VALUES))(n)
    before = op.todense().copy()
    with pytest.raises(AttributeError):
        setattr(op, attr, new)
    with pytest.raises(AttributeError):
        delattr(op, attr)
    assert np.array_equal(op.todense(), before)
    g = np.ones(n)
    # the reference in float64 from the operator's own values (todense()
    # in float32 would round c u v^T first)
    dense = f64(op.astype(np.float64).todense())
    assert_close(gc.vjp([op], g), dense.T @ g, np.abs(dense).T @ g,
                 compute_dtype([link_dtype(op), g.dtype]))


LIES = ["short", "long", "2d", "complex", "object", "none", "shape", "tuple_len",
        "masked", "not_array"]


def _lie_value(lie, n, dt):
    if lie == "short":
        return np.ones(max(n - 1, 0), dt)
    if lie == "long":
        return np.ones(n + 7, dt)
    if lie == "2d":
        return np.ones((n, 2), dt)
    if lie == "complex":
        return np.ones(n, np.complex128)
    if lie == "object":
        return np.ones(n, object)
    if lie == "masked":
        return np.ma.masked_array(np.ones(n, dt))
    if lie == "not_array":
        return [1.0] * (n + 2)      # a list, of the wrong length
    return None


@FUZZ_CHEAP
@given(base=st.sampled_from(["Diagonal", "DiagonalPlusRankOne"]),
       lie=st.sampled_from(LIES), n=st.integers(1, 6), dt=st.sampled_from([F32, F64]),
       mode=st.sampled_from(["vjp", "jvp", "jacobian"]), dense_neighbours=st.booleans())
def test_lying_operator_subclasses(base, lie, n, dt, mode, dense_neighbours):
    """A Diagonal/DiagonalPlusRankOne subclass whose diagonal, _gc_vectors()
    or shape disagree with what it was built from is rejected with
    ValueError/TypeError, or ignored (the honest result); never read out of
    bounds."""
    _log("liar", (base, lie, n, dt, mode, dense_neighbours))
    rng = np.random.default_rng(n)
    d = values(rng, (n,), dt)
    u = values(rng, (n,), dt)
    v = values(rng, (n,), dt)
    value = _lie_value(lie, n, dt)
    Base = getattr(gc, base)

    # every lie disagrees with something: the vectors with the (honest)
    # shape, or the shape with the (honest) vectors
    ns = {"shape": property(lambda self: (n, n))}
    if lie == "shape":
        ns["shape"] = property(lambda self: (n + 5, n + 5))
    elif lie == "tuple_len":
        ns["_gc_vectors"] = lambda self: (value_d,)
    else:
        ns["_gc_vectors"] = lambda self: (value,) * (1 if base == "Diagonal" else 3)
        # a property with a setter, so that the base class's __init__ can
        # still store the honest vector wherever it keeps it
        ns["diagonal"] = property(lambda self: value,
                                  lambda self, a: self.__dict__.__setitem__("_honest", a))
    value_d = d
    try:
        Liar = type("Liar", (Base,), ns)
    except (TypeError, AttributeError, ValueError):
        return          # the library forbids such subclasses outright: fine
    op = Liar(d) if base == "Diagonal" else Liar(d, u, v, -0.5)
    honest = np.diag(f64(d)) if base == "Diagonal" else (
        np.diag(f64(d)) - 0.5 * np.outer(f64(u), f64(v)))
    links = [op]
    refs = [honest]
    if dense_neighbours:
        A = values(rng, (n, 3), dt)
        C = values(rng, (2, n), dt)
        links, refs = [A, op, C], [f64(A), honest, f64(C)]
    g = values(rng, (refs[-1].shape[0],), dt)
    x = values(rng, (refs[0].shape[1],), dt)
    snap = snapshot([d, u, v, g, x] + [L for L in links if isinstance(L, np.ndarray)])
    try:
        chain = gc.Chain(links)
        if mode == "vjp":
            res = chain.vjp(g)
            want, scale = ref_vjp(refs, g), ref_vjp(refs, g, True)
        elif mode == "jvp":
            res = chain.jvp(x)
            want, scale = ref_jvp(refs, x), ref_jvp(refs, x, True)
        else:
            res = chain.jacobian()
            want, scale = ref_jacobian(refs, refs[0].shape[1], None), ref_jacobian(
                refs, refs[0].shape[1], None, True)
    except BAD:
        pass
    else:
        assert_close(res, want, scale, dt)
    assert_unchanged(snap)


# --------------------------------------------------------------------------
# maps, losses, compositions
# --------------------------------------------------------------------------

BUILTINS = ["Affine", "Affine_nobias", "Tanh", "Sigmoid", "ReLU", "LeakyReLU",
            "Softplus", "Exp", "Log", "Sin", "Cos", "Square", "Scale", "Softmax",
            "LogSoftmax", "UserLinear", "UserSin"]
LOSSES = [None, "SquaredError", "SquaredError_rows", "MeanSquaredError", "CrossEntropy",
          "LogSumExp", "Dot", "Dot_rows"]
POSITIVE = ("Exp", "Sigmoid", "Softmax", "Softplus")
BOUNDED = (None, "Tanh", "Sigmoid", "Sin", "Cos", "Softmax", "UserSin")


def _sigmoid(x):
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))),
                    np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True)) if x.shape[-1] else x
    return e / e.sum(axis=-1, keepdims=True) if x.shape[-1] else x


def ref_map(kind, p, x):
    """(y, J) in float64 at a single x: y = f(x), J its Jacobian."""
    n = x.shape[0]
    if kind.startswith("Affine"):
        W, b = f64(p["W"]), p.get("b")
        return W @ x + (0 if b is None else f64(b)), W
    if kind == "UserLinear":
        A = f64(p["A"])
        return A @ x, A
    el = {"Tanh": (np.tanh, lambda x, y: 1 - y * y),
          "Sigmoid": (_sigmoid, lambda x, y: y * (1 - y)),
          "ReLU": (lambda x: np.maximum(x, 0), lambda x, y: (x > 0) * 1.0),
          "LeakyReLU": (lambda x: np.where(x >= 0, x, p["alpha"] * x),
                        lambda x, y: np.where(x >= 0, 1.0, p["alpha"])),
          "Softplus": (lambda x: np.logaddexp(0, x), lambda x, y: _sigmoid(x)),
          "Exp": (np.exp, lambda x, y: y), "Log": (np.log, lambda x, y: 1 / x),
          "Sin": (np.sin, lambda x, y: np.cos(x)), "UserSin": (np.sin, lambda x, y: np.cos(x)),
          "Cos": (np.cos, lambda x, y: -np.sin(x)),
          "Square": (np.square, lambda x, y: 2 * x),
          "Scale": (lambda x: p["c"] * x, lambda x, y: p["c"] * np.ones_like(x))}
    if kind in el:
        f, df = el[kind]
        y = f(x)
        return y, np.diag(df(x, y))
    s = _softmax(x)
    if kind == "Softmax":
        return s, np.diag(s) - np.outer(s, s)
    if kind == "LogSoftmax":
        return np.log(s) if n else s, np.eye(n) - np.outer(np.ones(n), s)
    raise ValueError(kind)


def abs_ref_map(kind, J, y):
    """The rounding-error scale of a map's Jacobian product: |J|, but for
    (log-)softmax the sum of the magnitudes of the two terms the product
    adds (diag(s) - s s^T cancels to ~0 where s saturates at 1)."""
    if kind == "Softmax":
        return np.diag(np.abs(y)) + np.outer(np.abs(y), np.abs(y))
    # 1 - y^2 and y (1 - y) from a rounded y: the error is eps (1 + y^2)
    if kind == "Tanh":
        return np.diag(1 + y * y)
    if kind == "Sigmoid":
        return np.diag(y * (1 + y))
    if kind == "LogSoftmax":
        s = np.exp(y)
        return np.eye(len(y)) + np.outer(np.ones(len(y)), s)
    return np.abs(J)


def ref_loss(kind, p, y, b):
    """(value, gradient) of sample b's loss at y (float64)."""
    n = y.shape[0]
    if kind is None:
        return None
    if kind.startswith("SquaredError"):
        t = f64(p["t"])
        t = t[b] if t.ndim == 2 else t
        return 0.5 * np.sum((y - t) ** 2), y - t
    if kind == "MeanSquaredError":
        t = f64(p["t"])
        return np.mean((y - t) ** 2) if n else 0.0, 2 * (y - t) / max(n, 1)
    if kind == "Dot" or kind == "Dot_rows":
        w = f64(p["t"])
        w = w[b] if w.ndim == 2 else w
        return float(w @ y), w
    if kind == "LogSumExp":
        m = y.max()
        return m + np.log(np.sum(np.exp(y - m))), _softmax(y)
    if kind == "CrossEntropy":
        lab = np.asarray(p["labels"])
        c = int(lab[b]) if lab.ndim else int(lab)
        m = y.max()
        g = _softmax(y)
        g[c] -= 1
        return m + np.log(np.sum(np.exp(y - m))) - y[c], g
    raise ValueError(kind)


def _loss_grad_scale(kind, p, y, b):
    """The rounding-error scale of a loss gradient: the magnitudes of the
    terms it sums (softmax - onehot cancels to ~0 at a confident label)."""
    g = np.abs(ref_loss(kind, p, y, b)[1])
    if kind == "CrossEntropy":
        return g + 1.0
    if kind.startswith("SquaredError") or kind == "MeanSquaredError":
        t = f64(p["t"])
        t = t[b] if t.ndim == 2 else t
        return g + (np.abs(y) + np.abs(t)) * (2 / max(len(y), 1) if kind[0] == "M" else 1)
    return g


@st.composite
def composition_specs(draw, max_maps=5):
    n0 = draw(st.integers(1, 5))
    k = draw(st.integers(0, max_maps))
    maps, w = [], n0
    prev = None
    for _ in range(k):
        # Log only of positive values; Exp only of bounded ones (no overflow)
        choices = [b for b in BUILTINS if (b != "Log" or prev in POSITIVE) and (
            b != "Exp" or prev in BOUNDED)]
        kind = draw(st.sampled_from(choices))
        m = dict(kind=kind)
        if kind.startswith("Affine") or kind == "UserLinear":
            m["out"] = draw(st.integers(1, 5))
            w = m["out"]
        if kind.startswith("Affine"):
            m["dtype"] = draw(st.sampled_from([F64, F32, F16, np.dtype(np.int64)])).str
            m["layout"] = draw(layouts)
        if kind.startswith("User"):
            m["callbacks"] = draw(st.sampled_from(
                ["jacobian", "vjp+jvp", "jacobian+vjp", "jacobian+jvp", "all"]))
            m["jac_form"] = draw(st.sampled_from(["array", "int", "list", "Dense",
                                                  "Diagonal", "float16", "F"]))
        if kind == "LeakyReLU":
            m["alpha"] = draw(st.sampled_from([0.01, 0.5, -0.2]))
        if kind == "Scale":
            m["c"] = draw(st.sampled_from([2.0, -0.5, 1.0]))
        maps.append(m)
        prev = kind
    loss = draw(st.sampled_from(LOSSES))
    batch = draw(st.one_of(st.none(), st.integers(0, 4)))
    if loss in ("SquaredError_rows", "Dot_rows") and batch is None:
        loss = loss.split("_")[0]
    return dict(n0=n0, maps=maps, loss=loss, batch=batch,
                x_dtype=draw(st.sampled_from([F64, F32, F16, np.dtype(np.int64)])).str,
                x_layout=draw(layouts), target_dtype=draw(float_dtypes).str,
                seed=draw(st.integers(0, 2 ** 32 - 1)))


def _freeze_check(a):
    return a


def _user_map(kind, p, form, callbacks, calls):
    """A well-behaved user Map (linear with a small integer matrix, or sin)
    whose Jacobian comes back in ``form``; ``calls`` counts the calls."""
    def fn(x):
        calls.append("fn")
        if kind == "UserLinear":
            return x @ p["A"].T.astype(x.dtype)
        return np.sin(x)

    def jac(x):
        calls.append("jacobian")
        if kind == "UserLinear":
            A = p["A"]
        else:
            A = np.diag(np.cos(x))
            if form == "Diagonal":
                return gc.Diagonal(np.cos(x))
        if form == "int":
            return A.astype(np.int64) if kind == "UserLinear" else A
        if form == "float16":
            return A.astype(np.float16) if kind == "UserLinear" else A
        if form == "list":
            return A.tolist()
        if form == "Dense" or form == "Diagonal":
            return gc.Dense(A.astype(x.dtype))
        if form == "F":
            return np.asfortranarray(A.astype(x.dtype))
        return A.astype(x.dtype)

    def vjp(x, g):
        calls.append("vjp")
        if kind == "UserLinear":
            return g @ p["A"].astype(g.dtype)
        return np.cos(x) * g

    def jvp(x, v):
        calls.append("jvp")
        if kind == "UserLinear":
            return v @ p["A"].T.astype(v.dtype)
        return np.cos(x) * v

    kw = {}
    if "jacobian" in callbacks or callbacks == "all":
        kw["jacobian"] = jac
    if "vjp" in callbacks or callbacks == "all":
        kw["vjp"] = vjp
    if "jvp" in callbacks or callbacks == "all":
        kw["jvp"] = jvp
    return gc.Map(fn, **kw)


def build_composition(spec, calls=None):
    """(composition, x, loss params, per-map params) for a composition spec."""
    rng = np.random.default_rng(spec["seed"])
    calls = [] if calls is None else calls
    w = spec["n0"]
    maps, params = [], []
    for m in spec["maps"]:
        kind, p = m["kind"], dict(m)
        if kind.startswith("Affine"):
            W = in_layout(values(rng, (m["out"], w), m["dtype"]), m["layout"])
            p["W"] = W
            if kind == "Affine":
                p["b"] = in_layout(values(rng, (m["out"],), m["dtype"]), m["layout"])
            maps.append(gc.Affine(W, p.get("b")))
            w = m["out"]
        elif kind.startswith("User"):
            if kind == "UserLinear":
                p["A"] = rng.integers(-2, 3, (m["out"], w)).astype(np.float64)
                w = m["out"]
            maps.append(_user_map(kind, p, m["jac_form"], m["callbacks"], calls))
        elif kind in ("LeakyReLU",):
            maps.append(gc.LeakyReLU(m["alpha"]))
        elif kind == "Scale":
            maps.append(gc.Scale(m["c"]))
        else:
            maps.append(getattr(gc, kind)())
        params.append(p)
    loss, lp = spec["loss"], {}
    B = spec["batch"]
    tdt = np.dtype(spec["target_dtype"])
    if loss is None:
        L = None
    elif loss in ("SquaredError", "MeanSquaredError", "Dot"):
        lp["t"] = values(rng, (w,), tdt)
        L = getattr(gc, loss)(lp["t"])
    elif loss in ("SquaredError_rows", "Dot_rows"):
        lp["t"] = values(rng, (B, w), tdt)
        L = getattr(gc, loss.split("_")[0])(lp["t"])
    elif loss == "CrossEntropy":
        lp["labels"] = rng.integers(0, w, () if B is None else (B,))
        L = gc.CrossEntropy(lp["labels"] if B is not None else int(lp["labels"]))
    else:
        L = gc.LogSumExp()
    f = gc.compose(*maps, loss=L)
    xdt = np.dtype(spec["x_dtype"])
    shape = (spec["n0"],) if B is None else (B, spec["n0"])
    x = values(rng, shape, xdt)
    if xdt.kind == "f":
        x = (x * math.sqrt(spec["n0"])).astype(xdt)     # O(1) entries
    x = in_layout(x, spec["x_layout"])
    return f, x, lp, params


def comp_dtype(spec, x):
    dts = [x.dtype]
    for m in spec["maps"]:
        if m["kind"].startswith("Affine"):
            dts.append(np.dtype(m["dtype"]))
    if spec["loss"] in ("SquaredError", "SquaredError_rows", "MeanSquaredError",
                        "Dot", "Dot_rows"):
        dts.append(np.dtype(spec["target_dtype"]))
    return compute_dtype(dts)


def ref_composition(spec, params, x, lp):
    """Per sample: (outputs y, Jacobians [J_1..J_k], loss value, loss grad)
    in float64."""
    X = f64(x)
    rows = [X] if X.ndim == 1 else list(X)
    out = []
    for b, xb in enumerate(rows):
        y, Js = xb, []
        for m, p in zip(spec["maps"], params):
            y, J = ref_map(m["kind"], p, y)
            Js.append(AbsJ(J, abs_ref_map(m["kind"], J, y)))
        lg = ref_loss(spec["loss"], lp, y, b)
        out.append((y, Js, lg))
    return out


class AbsJ(np.ndarray):
    """A reference Jacobian carrying its rounding-error scale (.scale)."""
    def __new__(cls, J, scale):
        obj = np.asarray(J).view(cls)
        obj.scale = scale
        return obj


def _total_jacobian(Js, n0):
    M = np.eye(n0)
    for J in Js:
        M = np.asarray(J) @ M
    return M


def _abs_jacobian(Js, n0):
    M = np.eye(n0)
    for J in Js:
        M = (J.scale if isinstance(J, AbsJ) else np.abs(J)) @ M
    return M


def _close_rows(res, want, scale, dt):
    """Compositions: forward-pass rounding enters the Jacobians, so the
    bound is relative to the row's largest rounding scale as well."""
    scale = np.asarray(scale, np.float64)
    big = scale.max(axis=-1, keepdims=True) if scale.size else scale
    assert_close(res, want, scale + big, dt)


@FUZZ
@given(spec=composition_specs())
def test_compositions_match_reference(spec):
    """forward, value_and_grad (every reduction), vjp, jvp, jacobian and
    chain of compositions of built-in and well-behaved user maps, in every
    x dtype and layout, against the analytic float64 reference."""
    _log("compose", spec)
    calls = []
    f, x, lp, params = build_composition(spec, calls)
    dt = comp_dtype(spec, x)
    snap = snapshot([x] + [a for p in params for a in p.values()
                           if isinstance(a, np.ndarray)]
                    + [a for a in lp.values() if isinstance(a, np.ndarray)])
    refs = ref_composition(spec, params, x, lp)
    single = x.ndim == 1
    n0 = spec["n0"]
    stack = (lambda rows: rows[0]) if single else (lambda rows: np.array(rows).reshape(
        (len(rows),) + (np.shape(rows[0]) if rows else ())))
    rng = np.random.default_rng(spec["seed"] + 1)
    nk = refs[0][0].shape[0] if refs else None

    y, xs = f.forward(x)
    assert len(xs) == len(spec["maps"]) + 1
    if refs:
        ys = stack([r[0] for r in refs])
        # the forward value: rounding relative to |y| and the inputs' scale
        assert_close(y, ys, np.abs(ys) + 1 + np.abs(f64(x)).max(), dt) \
            if dt == F64 else assert_close(y, ys, 10 * (np.abs(ys) + 1), dt)

    # jvp, vjp
    if refs:
        v = values(rng, x.shape, F64)
        g = values(rng, (nk,) if single else (len(refs), nk), F64)
        Vr = [v] if single else list(v)
        Gr = [g] if single else list(g)
        want = stack([_total_jacobian(r[1], n0) @ vb for r, vb in zip(refs, Vr)])
        scale = stack([_abs_jacobian(r[1], n0) @ np.abs(vb) for r, vb in zip(refs, Vr)])
        _close_rows(f.jvp(x, v.astype(dt)), want, scale, dt)
        want = stack([gb @ _total_jacobian(r[1], n0) for r, gb in zip(refs, Gr)])
        scale = stack([np.abs(gb) @ _abs_jacobian(r[1], n0) for r, gb in zip(refs, Gr)])
        _close_rows(f.vjp(x, g.astype(dt)), want, scale, dt)
    else:
        # an empty batch: shapes only
        res = f.vjp(x, np.zeros(f.forward(x)[0].shape, dt))
        assert res.shape == x.shape

    if single:
        Jw = _total_jacobian(refs[0][1], n0)
        _close_rows(f.jacobian(x), Jw, _abs_jacobian(refs[0][1], n0), dt)
        try:
            c = f.chain(x)
        except TypeError:
            assert any(m["kind"].startswith("User") and "jacobian" not in m["callbacks"]
                       and m["callbacks"] != "all" for m in spec["maps"])
        else:
            assert len(c) == len(spec["maps"])
            if spec["maps"]:
                # a Chain follows the dtype rule over its links: a user
                # Jacobian given as ints or a list makes it float64
                promoting = any(m["kind"].startswith("User") and m["jac_form"] in (
                    "int", "list") for m in spec["maps"])
                cj = c.jacobian()
                assert cj.dtype == dt or (promoting and cj.dtype == F64), cj.dtype
                # (to dt's tolerance: its inputs were computed in dt)
                _close_rows(cj.astype(dt), Jw, _abs_jacobian(refs[0][1], n0), dt)

    if spec["loss"] is not None:
        for reduction in ("sum", "mean", "none"):
            if single and reduction != "sum":
                continue
            val, G = f.value_and_grad(x, reduction=reduction)
            Bn = len(refs)
            vals = np.array([r[2][0] for r in refs])
            grads = [r[2][1] @ _total_jacobian(r[1], n0) for r in refs]
            gscale = [_loss_grad_scale(spec["loss"], lp, r[0], b) @ _abs_jacobian(r[1], n0)
                      for b, r in enumerate(refs)]
            div = max(Bn, 1) if reduction == "mean" else 1
            want_g = stack([gr / div for gr in grads]) if Bn else np.zeros((0, n0))
            scl = stack([gs / div for gs in gscale]) if Bn else np.zeros((0, n0))
            _close_rows(G, want_g, scl + 1e-3 * np.abs(want_g), dt)
            vtol = (1e-3 if dt == F32 else 1e-9) * (1 + np.abs(vals).sum())
            if reduction == "none":
                assert np.shape(val) == (Bn,)
                assert np.all(np.abs(f64(val) - vals) <= vtol)
            elif reduction == "mean" and Bn == 0:
                assert math.isnan(val)
            else:
                assert abs(val - vals.sum() / div) <= vtol
    assert_unchanged(snap)


# -- adversarial user maps ----------------------------------------------

ADVERSARIES = ["extra_rows", "fewer_rows", "extra_cols", "fewer_cols", "ndim_up",
               "ndim_down", "scalar", "complex", "object", "str", "none", "masked",
               "list_ragged", "raise", "mutate_input", "mutate_other", "python_scalar",
               "list_good", "transposed"]
CALLBACKS = ["fn", "jacobian", "vjp", "jvp"]


class Boom(RuntimeError):
    pass


def _adversarial(adv, good, args):
    """What a bad callback returns (or does) instead of ``good``."""
    good = np.asarray(good)
    if adv == "raise":
        raise Boom("raised by the user callback")
    if adv == "mutate_input":
        args[0][...] = 0            # must be refused: read-only
        return good
    if adv == "mutate_other":
        args[-1][...] = 0
        return good
    sh = good.shape
    if adv == "extra_rows":
        return np.zeros((sh[0] + 3,) + sh[1:]) if sh else np.zeros(3)
    if adv == "fewer_rows":
        return good[:-1] if sh and sh[0] else np.zeros((1,) + sh[1:])
    if adv == "extra_cols":
        return np.zeros(sh[:-1] + (sh[-1] + 2,)) if sh else np.zeros(2)
    if adv == "fewer_cols":
        return good[..., :-1] if sh and sh[-1] else np.zeros(sh[:-1] + (1,))
    if adv == "ndim_up":
        return good[None]
    if adv == "ndim_down":
        return good.ravel()[:1].reshape(()) if good.ndim == 1 else good.reshape(-1)
    if adv == "scalar":
        return np.float64(1.0)
    if adv == "python_scalar":
        return 1.0
    if adv == "complex":
        return good.astype(np.complex128)
    if adv == "object":
        return good.astype(object)
    if adv == "str":
        return good.astype(str)
    if adv == "none":
        return None
    if adv == "masked":
        return np.ma.masked_array(good, mask=np.zeros(good.shape, bool))
    if adv == "list_ragged":
        return [[1.0], [1.0, 2.0]]
    if adv == "list_good":
        return good.tolist()
    if adv == "transposed":
        return good.T if good.ndim == 2 and good.shape[0] != good.shape[1] else good[None]
    raise ValueError(adv)


@st.composite
def adversarial_specs(draw):
    """A composition [built-in prefix] + one user map + [built-in suffix] +
    loss, one of whose callbacks misbehaves."""
    n_in = draw(st.integers(1, 4))
    m_out = draw(st.integers(1, 4))
    prefix = draw(st.sampled_from([[], ["Affine"], ["Tanh"], ["Affine", "Sigmoid"]]))
    suffix = draw(st.sampled_from([[], ["Affine"], ["Tanh"], ["Softmax", "Log"],
                                   ["Affine", "Tanh", "Affine"]]))
    callbacks = draw(st.sampled_from(["jacobian", "vjp+jvp", "all"]))
    bad = draw(st.sampled_from(["fn"] + (["jacobian"] if callbacks != "vjp+jvp" else [])
                               + (["vjp", "jvp"] if callbacks != "jacobian" else [])))
    adv = draw(st.sampled_from(ADVERSARIES))
    method = draw(st.sampled_from(["value_and_grad", "vjp", "jvp", "jacobian",
                                   "forward", "chain"]))
    batch = draw(st.one_of(st.none(), st.integers(1, 3)))
    if method in ("jacobian", "chain"):
        batch = None
    loss = draw(st.sampled_from(["SquaredError", "CrossEntropy", "LogSumExp", "Dot",
                                 "MeanSquaredError"]))
    return dict(n_in=n_in, m_out=m_out, prefix=prefix, suffix=suffix, callbacks=callbacks,
                bad=bad, adv=adv, method=method, batch=batch, loss=loss,
                dtype=draw(st.sampled_from([F32, F64])).str,
                seed=draw(st.integers(0, 2 ** 32 - 1)))


def _used_callbacks(method, callbacks):
    """The callbacks a method consults: fn always; reverse mode vjp (else
    jacobian), forward mode jvp (else jacobian); chain: jacobian."""
    has = {"jacobian": callbacks in ("jacobian", "all"),
           "vjp": callbacks in ("vjp+jvp", "all"), "jvp": callbacks in ("vjp+jvp", "all")}
    used = {"fn"}
    if method in ("value_and_grad", "vjp"):
        used.add("vjp" if has["vjp"] else "jacobian")
    elif method in ("jvp", "jacobian"):
        used.add("jvp" if has["jvp"] else "jacobian")
    elif method == "chain":
        used.add("jacobian")
    return used


def build_adversarial(spec, calls):
    rng = np.random.default_rng(spec["seed"])
    dt = np.dtype(spec["dtype"])
    n0, m_out = spec["n_in"], spec["m_out"]
    A = rng.integers(-2, 3, (m_out, n0)).astype(np.float64)
    i_user = len(spec["prefix"])
    bad, adv = spec["bad"], spec["adv"]

    def wrap(name, good_fn):
        def cb(*args):
            calls.append(name)
            good = good_fn(*args)
            if name == bad:
                return _adversarial(adv, good, args)
            return good
        return cb

    fn = wrap("fn", lambda x: x @ A.T)
    jac = wrap("jacobian", lambda x: A.copy())
    vjp = wrap("vjp", lambda x, g: g @ A)
    jvp = wrap("jvp", lambda x, v: v @ A.T)
    cbs = spec["callbacks"]
    kw = {}
    if cbs in ("jacobian", "all"):
        kw["jacobian"] = jac
    if cbs in ("vjp+jvp", "all"):
        kw["vjp"], kw["jvp"] = vjp, jvp
    maps = []
    w = n0
    for kind in spec["prefix"]:
        if kind == "Affine":
            maps.append(gc.Affine(values(rng, (n0, n0), dt), values(rng, (n0,), dt)))
        else:
            maps.append(getattr(gc, kind)())
    maps.append(gc.Map(fn, **kw))
    w = m_out
    for kind in spec["suffix"]:
        if kind == "Affine":
            maps.append(gc.Affine(values(rng, (w, w), dt), values(rng, (w,), dt)))
        else:
            maps.append(getattr(gc, kind)())
    B = spec["batch"]
    if spec["loss"] == "CrossEntropy":
        labels = rng.integers(0, w, () if B is None else (B,))
        loss = gc.CrossEntropy(int(labels) if B is None else labels)
    elif spec["loss"] == "LogSumExp":
        loss = gc.LogSumExp()
    else:
        loss = getattr(gc, spec["loss"])(values(rng, (w,), dt))
    f = gc.compose(*maps, loss=loss)
    x = values(rng, (n0,) if B is None else (B, n0), dt)
    return f, x, i_user, w


@FUZZ
@given(spec=adversarial_specs())
def test_adversarial_user_maps(spec):
    """A user map with one misbehaving callback: wrong shapes (extra rows,
    missing columns, wrong rank, scalars), wrong dtypes (complex, object,
    str, None, masked, ragged lists), raising, or writing into its inputs.
    The call raises ValueError/TypeError naming maps[i] and the callback
    (the callback's own exception propagates unchanged), or -- when the
    bad callback is not consulted, or its output is a harmless spelling of
    the right answer -- returns the correct result.  Nothing the caller
    passed changes."""
    _log("adversarial", spec)
    calls = []
    f, x, i, w = build_adversarial(spec, calls)
    dt = np.dtype(spec["dtype"])
    rng = np.random.default_rng(spec["seed"] + 7)
    method, bad, adv = spec["method"], spec["bad"], spec["adv"]
    g = values(rng, (w,) if x.ndim == 1 else (x.shape[0], w), dt)
    v = values(rng, x.shape, dt)
    snap = snapshot([x, g, v])

    def call():
        if method == "value_and_grad":
            return f.value_and_grad(x)
        if method == "vjp":
            return f.vjp(x, g)
        if method == "jvp":
            return f.jvp(x, v)
        if method == "jacobian":
            return f.jacobian(x)
        if method == "forward":
            return f.forward(x)
        return f.chain(x).jacobian()

    used = _used_callbacks(method, spec["callbacks"])
    # (fn has one argument, so its "other" argument is its input x: a
    # write into it is refused like any other)
    harmless = adv in ("list_good",) or (
        # a transposed square block is a (wrong) value of the right shape:
        # nothing the library can check
        adv == "transposed")
    name = rf"maps\[{i}\]"
    if bad not in used or harmless:
        try:
            call()
        except BAD as e:
            # a list of the right values may be refused as a non-array, and
            # a transposed block of the wrong shape is a shape error
            assert adv in ("list_good", "transposed") or bad not in used, e
    elif adv == "raise":
        with pytest.raises(Boom, match="raised by the user callback"):
            call()
    elif adv in ("mutate_input", "mutate_other"):
        with pytest.raises(ValueError, match="read-only"):
            call()
    elif adv in ("complex", "object", "str", "none", "masked", "list_ragged"):
        with pytest.raises(TypeError, match=name):
            call()
    elif bad == "fn" and (adv in ("extra_cols", "fewer_cols") or (
            x.ndim == 1 and adv in ("extra_rows", "fewer_rows"))):
        # fn's width is only known from what consumes it (the next map, the
        # loss, jacobian/vjp/jvp): an error, or (forward, no consumer) a
        # result; never a crash
        try:
            call()
        except BAD:
            pass
    elif adv in ("scalar", "python_scalar"):
        with pytest.raises(BAD, match=name):
            call()
    else:
        with pytest.raises(ValueError, match=name + (r"\." + bad if bad != "fn" else "")):
            call()
    assert_unchanged(snap)


# -- losses -------------------------------------------------------------

LOSS_FAULTS = ["label_high", "label_negative", "label_float", "label_bool", "label_2d",
               "label_batch", "label_masked", "label_huge", "target_width",
               "target_rows", "target_3d", "target_masked", "target_complex",
               "x_masked", "x_complex", "x_3d", "W_masked", "b_masked", "x_object"]


@FUZZ
@given(fault=st.sampled_from(LOSS_FAULTS), n=st.integers(1, 5),
       batch=st.one_of(st.none(), st.integers(0, 4)),
       dt=st.sampled_from([F32, F64, F16, np.dtype(np.int64)]),
       seed=st.integers(0, 2 ** 32 - 1), via=st.sampled_from(["compose", "loss"]))
def test_loss_faults(fault, n, batch, dt, seed, via):
    """Bad labels (out of range, float, bool, wrong rank or batch, masked),
    bad targets (width, rows, rank, masked, complex), bad x/W/b: ValueError
    or TypeError, never a wrong loss or a crash."""
    _log("loss", (fault, n, batch, dt, seed, via))
    rng = np.random.default_rng(seed)
    B = 1 if batch is None else batch
    x = values(rng, (n,) if batch is None else (batch, n), dt)
    labels = rng.integers(0, n, () if batch is None else (batch,))
    target = values(rng, (n,), dt)
    W, b = values(rng, (n, n), dt), values(rng, (n,), dt)
    err = ValueError
    loss_kind = "SquaredError"
    if fault.startswith("label"):
        loss_kind = "CrossEntropy"
        if fault == "label_high":
            assume(B > 0)
            labels = np.array(labels)
            labels.reshape(-1)[seed % B] = n + seed % 3
        elif fault == "label_negative":
            assume(B > 0)
            labels = np.array(labels)
            labels.reshape(-1)[seed % B] = -1 - seed % 3
        elif fault == "label_huge":
            assume(B > 0)
            labels = np.array(labels)
            labels.reshape(-1)[seed % B] = 1 << 40
        elif fault == "label_float":
            labels, err = labels.astype(np.float64), TypeError
        elif fault == "label_bool":
            labels, err = labels.astype(bool), TypeError
        elif fault == "label_2d":
            labels = np.zeros((B, 2), int)
        elif fault == "label_batch":
            labels = rng.integers(0, n, (B + 1,))
        elif fault == "label_masked":
            labels, err = np.ma.masked_array(labels, mask=False), TypeError
    elif fault == "target_width":
        target = values(rng, (n + 1,), dt)
    elif fault == "target_rows":
        target = values(rng, (B + 1, n), dt)
    elif fault == "target_3d":
        target = values(rng, (1, B, n), dt)
    elif fault == "target_masked":
        target, err = np.ma.masked_array(target, mask=False), TypeError
    elif fault == "target_complex":
        target, err = target.astype(np.complex128), TypeError
    elif fault == "x_masked":
        x, err = np.ma.masked_array(x, mask=False), TypeError
    elif fault == "x_complex":
        x, err = x.astype(np.complex64), TypeError
    elif fault == "x_object":
        x, err = x.astype(object), TypeError
    elif fault == "x_3d":
        x = values(rng, (1, B, n), dt)
    elif fault == "W_masked":
        W, err = np.ma.masked_array(W, mask=False), TypeError
    elif fault == "b_masked":
        b, err = np.ma.masked_array(b, mask=False), TypeError
    snap = snapshot([a for a in (x, labels, target, W, b) if isinstance(a, np.ndarray)])
    with pytest.raises(err):
        if loss_kind == "CrossEntropy":
            L = gc.CrossEntropy(labels)
        else:
            L = gc.SquaredError(target)
        if via == "loss" and not fault.startswith(("W", "b")):
            L.value_and_grad(x)
        else:
            gc.compose(gc.Affine(W, b), gc.Tanh(), loss=L).value_and_grad(x)
    assert_unchanged(snap)


@FUZZ_CHEAP
@given(n=st.integers(1, 5), batch=st.integers(1, 4), seed=st.integers(0, 2 ** 32 - 1))
def test_cross_entropy_reads_labels_per_call(n, batch, seed):
    """The caller's labels are read (copied and validated) at each call: an
    in-place change is followed, an out-of-range one is a ValueError at the
    next call, and the caller's array is never written."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n, batch)
    X = values(rng, (batch, n), F64)
    f = gc.compose(gc.Tanh(), loss=gc.CrossEntropy(labels))
    f.value_and_grad(X)
    labels[:] = (labels + 1) % n
    saved = labels.copy()
    val, G = f.value_and_grad(X, reduction="none")
    ref = [ref_loss("CrossEntropy", {"labels": saved}, np.tanh(X[b]), b) for b in range(batch)]
    assert np.allclose(val, [r[0] for r in ref], rtol=1e-12, atol=1e-12)
    labels[0] = 1 << 40
    with pytest.raises(ValueError, match=r"labels\[0\] = 1099511627776 is out of range"):
        f.value_and_grad(X)
    assert labels[0] == 1 << 40 and np.array_equal(labels[1:], saved[1:])
