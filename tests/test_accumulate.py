"""Jacobian accumulation (Chain.plan, Chain.jacobian, gradchain.jacobian,
pre-accumulated vjp/jvp of blocks) and per-sample chains, against
independent references.

* Plans: the cost model is the README's ("Cost model"), and is not restated
  as formulas here: a NumPy reference evaluation (``ref_multiply`` over
  counting primitives, ``RefOps``) performs each product of two factors as
  the README describes and counts the multiplications it actually does.
  Every full bracketing is enumerated by brute force with those measured
  counts; the plan's cost must be the brute-force minimum, its baselines
  the two plain orders, and its expression must parse to a bracketing of
  exactly that cost.  The plan's bracketing, evaluated on the chain's own
  vectors and matrices, must count exactly ``plan.cost`` and give
  gradchain's result.
* Values: NumPy float64 dense products (np.linalg.multi_dot, ``@``) and
  Python loops over samples, never gradchain's own output.  The error scale
  is the same product taken with absolute values (conftest.py), with a
  structured link's scale built from |d|, |c| |u| |v|^T so that cancellation
  inside diag(d) + c u v^T cannot cause a false failure.
"""
import functools
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradchain
from gradchain import (Chain, ChainPlan, Diagonal, DiagonalPlusRankOne,
                       Identity, jvp, vjp)

from conftest import (DTYPES, LAYOUTS, assert_close, make_layout,
                      threads_compared)


def raises(exc, msg):
    return pytest.raises(exc, match=re.escape(msg))


# --------------------------------------------------------------------------
# The cost model, measured on a reference evaluation (README, "Cost model")
# --------------------------------------------------------------------------
#
# Nothing here restates gradchain's cost formulas.  RefOps performs the
# product of two factors the way the README says it is evaluated, in NumPy,
# and counts the multiplications each primitive actually performs (from the
# operands' sizes at run time).  A plan's cost must equal the count of
# evaluating its bracketing; its value must equal the dense product.


DENSE, DIAG, SCALED, IDENT, DPR1 = "dense", "diag", "scaled", "ident", "dpr1"
ALL_KINDS = (DENSE, DIAG, SCALED, IDENT, DPR1)


class RefVal:
    """A value of the reference evaluation: kind, shape (p, q) and data
    (dense: M; diag/scaled: the diagonal d; dpr1: d, cu = c u, v)."""
    __slots__ = ("kind", "p", "q", "M", "d", "cu", "v")

    def __init__(self, kind, p, q, M=None, d=None, cu=None, v=None):
        self.kind, self.p, self.q = kind, p, q
        self.M, self.d, self.cu, self.v = M, d, cu, v

    def todense(self):
        """The value as a dense matrix (for checking values; not counted)."""
        if self.kind == DENSE:
            return self.M
        if self.kind == IDENT:
            return np.eye(self.p)
        if self.kind in (DIAG, SCALED):
            return np.diag(self.d)
        return np.diag(self.d) + np.outer(self.cu, self.v)


class RefOps:
    """NumPy primitives that count the multiplications they perform.

    dry=True counts without computing (each primitive returns an
    uninitialised array of its result's shape): for brute-force searches
    over products too big to compute, along the same code path whose values
    are checked at small sizes."""

    def __init__(self, dry=False):
        self.count = 0
        self.dry = dry

    def _out(self, shape, compute):
        return np.empty(shape) if self.dry else compute()

    def matmul(self, A, B):                 # each entry: a dot of length q
        self.count += A.shape[0] * A.shape[1] * B.shape[1]
        return self._out((A.shape[0], B.shape[1]), lambda: A @ B)

    def vecmat(self, x, A):                 # x^T A
        self.count += A.size
        return self._out(A.shape[1:], lambda: x @ A)

    def matvec(self, A, x):                 # A x
        self.count += A.size
        return self._out(A.shape[:1], lambda: A @ x)

    def hadamard(self, a, b):
        self.count += a.size
        return self._out(a.shape, lambda: a * b)

    def scale_rows(self, d, A):             # diag(d) A
        self.count += A.size
        return self._out(A.shape, lambda: d[:, None] * A)

    def scale_cols(self, A, d):             # A diag(d)
        self.count += A.size
        return self._out(A.shape, lambda: A * d[None, :])

    def add_outer(self, Z, x, y):           # Z + x y^T, one multiply-add each
        self.count += Z.size
        return self._out(Z.shape, lambda: Z + np.outer(x, y))

    def write_out(self, val):               # diag(d) + cu v^T as a dense matrix
        assert val.kind == DPR1
        M = self.add_outer(self._out((val.p, val.p), lambda: np.diag(val.d)),
                           val.cu, val.v)
        return RefVal(DENSE, val.p, val.q, M=M)


def ref_multiply(L, R, ops):
    """L R as the README's cost model evaluates it, counted by ops."""
    assert L.q == R.p
    p, r = L.p, R.q
    if L.kind == IDENT:                     # I X = X: no arithmetic
        return R
    if R.kind == IDENT:
        return L
    diaglike = (DIAG, SCALED)
    if L.kind in diaglike and R.kind in diaglike:
        return RefVal(DIAG, p, r, d=ops.hadamard(L.d, R.d))
    # a diagonal plus rank one meets a dense matrix as it is, anything else
    # written out (the left one first when both are)
    if L.kind == DPR1 and R.kind != DENSE:
        L = ops.write_out(L)
    if R.kind == DPR1 and L.kind != DENSE:
        R = ops.write_out(R)
    if L.kind in diaglike:
        Z = ops.scale_rows(L.d, R.M)
    elif R.kind in diaglike:
        Z = ops.scale_cols(L.M, R.d)
    elif L.kind == DPR1:                    # diag(d) R + cu (v^T R)
        w = ops.vecmat(L.v, R.M)
        Z = ops.add_outer(ops.scale_rows(L.d, R.M), L.cu, w)
    elif R.kind == DPR1:                    # L diag(d) + (L cu) v^T
        w = ops.matvec(L.M, R.cu)
        Z = ops.add_outer(ops.scale_cols(L.M, R.d), w, R.v)
    else:
        Z = ops.matmul(L.M, R.M)
    return RefVal(DENSE, p, r, M=Z)


def random_refval(rng, kind, p, q, dry=False):
    if kind == DENSE:
        return RefVal(DENSE, p, q, M=np.empty((p, q)) if dry
                      else rng.standard_normal((p, q)))
    assert p == q
    if kind == IDENT:
        return RefVal(IDENT, p, q)
    if kind == SCALED:
        return RefVal(SCALED, p, q, d=np.full(p, float(rng.choice([-0.5, 3.0]))))
    if kind == DIAG:
        return RefVal(DIAG, p, q, d=rng.standard_normal(p))
    d, cu, v = rng.standard_normal((3, p))
    return RefVal(DPR1, p, q, d=d, cu=cu, v=v)


@functools.lru_cache(maxsize=None)
def measured_product(kl, kr, p, q, r):
    """(multiply-adds, result kind) of (p x q, kl) times (q x r, kr),
    measured on random operands; the value is checked against ``@`` (up to
    2**18 multiply-adds; beyond, counted dry)."""
    rng = np.random.default_rng([ALL_KINDS.index(kl), ALL_KINDS.index(kr),
                                 p, q, r])
    dry = p * q * r > 2 ** 18
    L, R = random_refval(rng, kl, p, q, dry), random_refval(rng, kr, q, r, dry)
    ops = RefOps(dry)
    Z = ref_multiply(L, R, ops)
    assert (Z.p, Z.q) == (p, r)
    if not dry:
        want = L.todense() @ R.todense()
        assert np.allclose(Z.todense(), want, rtol=1e-12, atol=1e-12), \
            (kl, kr, p, q, r)
    return ops.count, Z.kind


def tree_cost(tree, factors):
    """(cost, kind, p, q) of a bracketing, from measured products; tree: a
    factor index, or a pair (left, right); factors: list of (kind, p, q)."""
    if isinstance(tree, int):
        kind, p, q = factors[tree]
        return 0, kind, p, q
    cl, kl, p, q = tree_cost(tree[0], factors)
    cr, kr, q2, r = tree_cost(tree[1], factors)
    assert q == q2, "the bracketing does not chain"
    c, kind = measured_product(kl, kr, p, q, r)
    return cl + cr + c, kind, p, r


def evaluate_tree(tree, leaves, ops):
    """The product of RefVal leaves in the bracketing tree, counted by ops."""
    if isinstance(tree, int):
        return leaves[tree]
    return ref_multiply(evaluate_tree(tree[0], leaves, ops),
                        evaluate_tree(tree[1], leaves, ops), ops)


@functools.lru_cache(maxsize=None)
def all_trees(i, j):
    """Every full bracketing of factors i..j (Catalan(j - i) of them)."""
    if i == j:
        return (i,)
    return tuple((left, right) for s in range(i, j)
                 for left in all_trees(i, s) for right in all_trees(s + 1, j))


def left_to_right_tree(m):
    tree = 0
    for i in range(1, m):
        tree = (tree, i)
    return tree


def right_to_left_tree(m):
    tree = m - 1
    for i in range(m - 2, -1, -1):
        tree = (i, tree)
    return tree


def brute_force_min(factors):
    return min(tree_cost(t, factors)[0] for t in all_trees(0, len(factors) - 1))


def classic_chain_order_cost(dims):
    """Optimal cost of the classic matrix-chain problem for matrices of
    shapes (dims[i], dims[i+1]) (the programme np.linalg.multi_dot runs),
    vectorised over the start index for each length."""
    d = np.asarray(dims, dtype=np.float64)
    m = len(d) - 1
    best = np.zeros((m, m + 1))         # best[i, L]: factors i .. i+L-1
    for L in range(2, m + 1):
        i = np.arange(0, m - L + 1)[:, None]
        t = np.arange(1, L)[None, :]    # left part has t factors
        c = best[i, t] + best[i + t, L - t] + d[i] * d[i + t] * d[i + L]
        best[: m - L + 1, L] = c.min(axis=1)
    return best[0, m]


def parse_expression(expr, names):
    """The bracketing a ChainPlan expression spells, as a tree of factor
    indices; the leaves must be ``names`` in order.  Iterative (500-link
    expressions nest deeply)."""
    tokens = re.findall(r"\(|\)|[^\s()]+", expr)
    stack = [[]]
    leaf = 0
    for tok in tokens:
        if tok == "(":
            stack.append([])
        elif tok == ")":
            group = stack.pop()
            assert len(group) == 2, f"a group of {len(group)} in {expr!r}"
            stack[-1].append(tuple(group))
        else:
            assert leaf < len(names) and tok == names[leaf], (tok, names, expr)
            stack[-1].append(leaf)
            leaf += 1
    assert len(stack) == 1 and leaf == len(names), expr
    top = stack[0]
    if len(names) == 1:
        assert top == [0], expr
        return 0
    assert len(top) == 2, f"top level of {expr!r} has {len(top)} terms"
    return tuple(top)


def plan_factors(kinds, dims, mode, batch):
    """(kind, p, q) of the product's factors: jacobian [J_k .. J_1]; vjp
    [G, J_k .. J_1]; jvp [V, J_1^T .. J_k^T]; J_i has shape
    (dims[i], dims[i-1])."""
    k = len(kinds)
    if mode == "jacobian":
        return [(kinds[i], dims[i + 1], dims[i]) for i in range(k - 1, -1, -1)]
    if mode == "vjp":
        return [(DENSE, batch, dims[k])] + [
            (kinds[i], dims[i + 1], dims[i]) for i in range(k - 1, -1, -1)]
    return [(DENSE, batch, dims[0])] + [
        (kinds[i], dims[i], dims[i + 1]) for i in range(k)]


def plan_names(k, mode, batch):
    if mode == "jacobian":
        return [f"J{i}" for i in range(k, 0, -1)]
    if mode == "vjp":
        return ["G" if batch != 1 else "g"] + [f"J{i}" for i in range(k, 0, -1)]
    return ["V" if batch != 1 else "v"] + [f"J{i}^T" for i in range(1, k + 1)]


def check_plan(chain, kinds, dims, mode, batch):
    """Chain.plan(batch, mode) against the brute force of the model."""
    plan = chain.plan(batch, mode)
    assert isinstance(plan, ChainPlan)
    assert plan.mode == mode
    assert plan.batch == (0 if mode == "jacobian" else batch)
    factors = plan_factors(kinds, dims, mode, batch)
    m = len(factors)
    best = brute_force_min(factors)
    l2r = tree_cost(left_to_right_tree(m), factors)[0]
    r2l = tree_cost(right_to_left_tree(m), factors)[0]
    where = f"{mode} B={batch} factors={factors}: {plan!r}"
    if mode != "jacobian" and batch == 1:
        # a single vector always propagates (the fused loop; no planning)
        best = l2r
    assert plan.cost == best, where
    assert plan.baseline_costs == {"left_to_right": l2r,
                                   "right_to_left": r2l}, where
    tree = parse_expression(plan.expression, plan_names(len(kinds), mode, batch))
    assert tree_cost(tree, factors)[0] == plan.cost, where
    if best == l2r:
        # ties go to plain left-to-right
        assert tree == left_to_right_tree(m), where
    return plan


# --------------------------------------------------------------------------
# Building chains with their own dense references
# --------------------------------------------------------------------------

OP_KINDS = ["diag", "ident", "scaled", "scaled2", "dpr1"]
KIND_OF = {"dense": DENSE, "ps": DENSE, "diag": DIAG, "ident": IDENT,
           "scaled": SCALED, "scaled2": SCALED, "dpr1": DPR1}


def layout3(a, layout):
    """A 3-D (B, m, n) array equal to a in the given layout."""
    a = np.asarray(a)
    B, m, n = a.shape
    if layout == "C":
        out = np.ascontiguousarray(a).copy()
    elif layout == "F":          # each sample Fortran-ordered (transposed view)
        out = np.ascontiguousarray(a.transpose(0, 2, 1)).transpose(0, 2, 1)
    elif layout == "Fwhole":     # np.asfortranarray: the batch axis is unit-stride
        out = np.asfortranarray(a).copy(order="F")
    elif layout == "strided":
        big = np.full((2 * B + 1, 2 * m + 1, 3 * n + 1), np.nan, a.dtype)
        out = big[::2, ::2, ::3][:B, :m, :n]
        out[...] = a
    elif layout == "negative":
        big = np.full((B, m, 2 * n + 1), np.nan, a.dtype)
        out = big[::-1, ::-1, ::-2][:, :, :n]
        out[...] = a
    else:
        raise ValueError(layout)
    assert out.shape == a.shape and np.array_equal(out, a, equal_nan=True)
    return out


LAYOUTS3 = ["C", "F", "Fwhole", "strided", "negative"]


def build(rng, spec, dtype, n0, batch=None, layouts=None, layouts3=None):
    """Build a chain from spec, a list of tokens:
    ("dense", m) a shared dense link to m outputs; ("ps", m) a per-sample
    dense link (batch, m, n); "diag", "ident" (Identity(n)), "scaled"
    (Identity(n, 2.0)), "scaled2" (Identity(n, random scale)), "dpr1".

    Returns (links, dense, absf, kinds, dims): the links for gradchain, the
    float64 dense references (2-D shared, 3-D per-sample) built here from
    the raw values, the error-scale forms, the model kinds and the dims."""
    links, dense, absf, kinds = [], [], [], []
    dims = [n0]
    n = n0
    for idx, tok in enumerate(spec):
        name = tok[0] if isinstance(tok, tuple) else tok
        if name in ("dense", "ps"):
            m = tok[1]
            if name == "dense":
                a = (rng.standard_normal((m, n)) / np.sqrt(max(n, 1))).astype(dtype)
                lay = layouts[idx % len(layouts)] if layouts else "C"
                links.append(make_layout(a, lay))
            else:
                a = (rng.standard_normal((batch, m, n))
                     / np.sqrt(max(n, 1))).astype(dtype)
                lay = layouts3[idx % len(layouts3)] if layouts3 else "C"
                links.append(layout3(a, lay))
            ref = a.astype(np.float64)
            dense.append(ref)
            absf.append(np.abs(ref))
            n = m
        elif name == "diag":
            d = rng.standard_normal(n).astype(dtype)
            links.append(Diagonal(d))
            ref = np.diag(d.astype(np.float64))
            dense.append(ref)
            absf.append(np.abs(ref))
        elif name in ("ident", "scaled", "scaled2"):
            c = {"ident": 1.0, "scaled": 2.0,
                 "scaled2": float(rng.choice([-0.5, 0.75, 3.0]))}[name]
            links.append(Identity(n, c) if name != "ident" else Identity(n))
            dense.append(c * np.eye(n))
            absf.append(abs(c) * np.eye(n))
        elif name == "dpr1":
            d, u, v = (rng.standard_normal(n).astype(dtype) for _ in range(3))
            c = float(rng.choice([-1.0, 0.5, 1.25]))
            links.append(DiagonalPlusRankOne(d, u, v, c))
            d64, u64, v64 = (x.astype(np.float64) for x in (d, u, v))
            dense.append(np.diag(d64) + c * np.outer(u64, v64))
            absf.append(np.diag(np.abs(d64)) + abs(c) * np.outer(np.abs(u64),
                                                                 np.abs(v64)))
        else:
            raise ValueError(tok)
        kinds.append(KIND_OF[name])
        dims.append(n)
    return links, dense, absf, kinds, dims


def random_spec(rng, k, mix, ps_prob=0.0):
    """k tokens: mix "dense" (dims 1..12), "ops" (operators only) or
    "mixed"; a dense link is per-sample with probability ps_prob."""
    spec = []
    for _ in range(k):
        if mix == "dense" or (mix == "mixed" and rng.random() < 0.45):
            name = "ps" if rng.random() < ps_prob else "dense"
            spec.append((name, int(rng.integers(1, 13))))
        else:
            spec.append(OP_KINDS[int(rng.integers(len(OP_KINDS)))])
    return spec


def sample_of(forms, b):
    return [J[b] if J.ndim == 3 else J for J in forms]


def chain_product(mats):
    """mats[0] @ mats[1] @ ... (np.linalg.multi_dot for two or more)."""
    if len(mats) == 1:
        return np.array(mats[0], dtype=np.float64)
    return np.linalg.multi_dot(mats)


def ref_jacobian(forms):
    """J_k ... J_1, or (B, n_k, n_0) by a loop over samples."""
    batch = next((J.shape[0] for J in forms if J.ndim == 3), None)
    if batch is None:
        return chain_product(forms[::-1])
    out = np.zeros((batch, forms[-1].shape[-2], forms[0].shape[-1]))
    for b in range(batch):
        out[b] = chain_product(sample_of(forms, b)[::-1])
    return out


def ref_vjp(forms, G):
    """Row b: G[b] J_k ... J_1 (one Python step per sample for per-sample
    chains)."""
    G = np.asarray(G, dtype=np.float64)
    if all(J.ndim == 2 for J in forms):
        return chain_product([G] + forms[::-1]) if forms else G.copy()
    out = np.zeros((G.shape[0], forms[0].shape[-1]))
    for b in range(G.shape[0]):
        x = G[b]
        for J in sample_of(forms, b)[::-1]:
            x = x @ J
        out[b] = x
    return out


def ref_jvp(forms, V):
    """Row b: J_k ... J_1 V[b]."""
    V = np.asarray(V, dtype=np.float64)
    if all(J.ndim == 2 for J in forms):
        return chain_product([V] + [J.T for J in forms])
    out = np.zeros((V.shape[0], forms[-1].shape[-2]))
    for b in range(V.shape[0]):
        x = V[b]
        for J in sample_of(forms, b):
            x = J @ x
        out[b] = x
    return out


def check_all(chain, dense, absf, dtype, rng, batch_sizes=(), jac_dtype=None):
    """jacobian, vjp and jvp of a chain against the references."""
    res = chain.jacobian()
    assert_close(res, ref_jacobian(dense), ref_jacobian(absf),
                 dtype if jac_dtype is None else jac_dtype)
    n0, nk = dense[0].shape[-1], dense[-1].shape[-2]
    for B in batch_sizes:
        G = rng.standard_normal((B, nk)).astype(dtype)
        V = rng.standard_normal((B, n0)).astype(dtype)
        assert_close(chain.vjp(G), ref_vjp(dense, G),
                     ref_vjp(absf, np.abs(G)), dtype)
        assert_close(chain.jvp(V), ref_jvp(dense, V),
                     ref_jvp(absf, np.abs(V)), dtype)


# --------------------------------------------------------------------------
# Plans against the brute force
# --------------------------------------------------------------------------

MODES = ["jacobian", "vjp", "jvp"]
PLAN_BATCHES = [1, 3, 50]


@pytest.mark.parametrize("mix", ["dense", "ops", "mixed"])
@pytest.mark.parametrize("k", range(1, 8))
def test_plan_is_the_brute_force_optimum(rng, k, mix):
    for _ in range(5):
        spec = random_spec(rng, k, mix)
        links, _, _, kinds, dims = build(
            rng, spec, np.float64, int(rng.integers(1, 13)))
        chain = Chain(links)
        for mode in MODES:
            for B in PLAN_BATCHES:
                check_plan(chain, kinds, dims, mode, B)


@pytest.mark.parametrize("spec", [
    # every operator pairing the model distinguishes, in both orders
    ["diag", "dpr1", "diag"],
    ["dpr1", "dpr1", "dpr1"],
    ["scaled", "dpr1", "scaled2", "dpr1"],
    ["ident", "dpr1", "ident", "ident"],
    ["ident", "ident", "ident"],
    ["diag", "scaled", "ident", "diag", "scaled2"],
    [("dense", 7), "dpr1", ("dense", 2), "dpr1", "diag", ("dense", 9)],
    [("dense", 12), "ident", "dpr1", "scaled", ("dense", 1), "ident"],
    [("dense", 5), ("dense", 5), ("dense", 5)],         # square: all equal
    [("dense", 3), ("dense", 11), ("dense", 3), ("dense", 11), ("dense", 3)],
], ids=lambda s: "-".join(t if isinstance(t, str) else f"{t[0]}{t[1]}" for t in s))
@pytest.mark.parametrize("n0", [5, 1])
def test_plan_structured_cases(rng, spec, n0):
    links, _, _, kinds, dims = build(rng, spec, np.float64, n0)
    chain = Chain(links)
    for mode in MODES:
        for B in PLAN_BATCHES + [n0, 0]:
            check_plan(chain, kinds, dims, mode, B)


def test_plan_square_dense_block_shortcut(rng):
    # all factors square and equal, the block included: (m - 1) n^3
    links, _, _, kinds, dims = build(rng, [("dense", 6)] * 4, np.float64, 6)
    chain = Chain(links)
    for mode in MODES:
        plan = check_plan(chain, kinds, dims, mode, 6)
        m = 4 if mode == "jacobian" else 5
        assert plan.cost == (m - 1) * 6 ** 3
        # every bracketing ties: plain left to right
        names = plan_names(4, mode, 6)
        assert parse_expression(plan.expression, names) == left_to_right_tree(m)


def test_plan_zero_size_dims(rng):
    for spec, n0 in [([("dense", 0)], 4), ([("dense", 0), ("dense", 5)], 3),
                     ([("dense", 4), "diag", ("dense", 0), "dpr1"], 0),
                     ([("dense", 64), ("dense", 4), ("dense", 0), ("dense", 4),
                       ("dense", 64)], 64)]:
        links, _, _, kinds, dims = build(rng, spec, np.float64, n0)
        chain = Chain(links)
        for mode in MODES:
            for B in (0, 1, 3, 50):
                check_plan(chain, kinds, dims, mode, B)


def test_plan_classic_matrix_chain_big_dims(rng):
    dims = [2000, 10, 2000, 10, 2000]
    links = [rng.standard_normal((dims[i + 1], dims[i])) * 1e-2
             for i in range(4)]
    chain = Chain(links)
    plan = chain.plan(mode="jacobian")
    # factors J4 .. J1: shapes (dims[4], dims[3]) ... (dims[1], dims[0])
    assert plan.cost == classic_chain_order_cost(dims[::-1])
    assert plan.cost == brute_force_min(plan_factors([DENSE] * 4, dims,
                                                     "jacobian", 0))
    for B in PLAN_BATCHES:
        p = chain.plan(B, "vjp")
        assert p.cost == classic_chain_order_cost([B] + dims[::-1])
        p = chain.plan(B, "jvp")
        assert p.cost == classic_chain_order_cost([B] + dims)
    # a cheap product with this chain (no 2000 x 2000 matrix anywhere)
    G = rng.standard_normal((3, 2000))
    res = chain.vjp(G)
    ref = G @ links[3] @ links[2] @ links[1] @ links[0]
    scale = np.abs(G) @ np.abs(links[3]) @ np.abs(links[2]) @ \
        np.abs(links[1]) @ np.abs(links[0])
    assert_close(res, ref, scale, np.float64)


def test_plan_for_500_links(rng):
    # products large enough that the O(m^3) programme pays for itself
    # (zero-stride links: no memory): the optimum
    k = 500
    dims = [int(x) for x in rng.integers(100, 400, size=k + 1)]
    links = [np.broadcast_to(np.ones(1), (dims[i + 1], dims[i])) for i in range(k)]
    chain = Chain(links)
    plan = chain.plan(mode="jacobian")
    tree = parse_expression(plan.expression, plan_names(k, "jacobian", 0))
    factors = plan_factors([DENSE] * k, dims, "jacobian", 0)
    assert plan.cost == classic_chain_order_cost(dims[::-1])
    assert tree_cost(tree, factors)[0] == plan.cost
    assert plan.cost < min(plan.baseline_costs.values())
    p = chain.plan(7, "vjp")
    assert p.cost == classic_chain_order_cost([7] + dims[::-1])


@pytest.mark.parametrize("mode, batch", [("jacobian", 0), ("vjp", 7), ("jvp", 3)])
def test_planning_is_bounded_by_the_product(rng, mode, batch):
    # issue 8, item 9: 500 small links, where the programme's 2e7 steps
    # would cost far more than the product: the cheaper plain order runs
    # and is reported, and the plan is what the products compute
    k = 500
    dims = [int(x) for x in rng.integers(1, 13, size=k + 1)]
    links = [rng.standard_normal((dims[i + 1], dims[i])) / 2 for i in range(k)]
    chain = Chain(links)
    plan = chain.plan(batch, mode)
    assert plan.cost == min(plan.baseline_costs.values())
    names = plan_names(k, mode, batch)
    tree = parse_expression(plan.expression, names)
    kinds = [DENSE] * k
    factors = plan_factors(kinds, dims, mode, batch)
    assert tree_cost(tree, factors)[0] == plan.cost
    assert tree in (left_to_right_tree(len(names)), right_to_left_tree(len(names)))
    if mode == "jacobian":
        ref = np.linalg.multi_dot(links[::-1])
        np.testing.assert_allclose(chain.jacobian(), ref, rtol=1e-9,
                                   atol=1e-9 * np.abs(ref).max())


def test_one_shot_batched_vjp_of_a_long_chain_is_fast(rng):
    # issue 8, item 9: k = 3000 links of 1 x 1, a batch of 3, took 49 s
    # (the programme re-ran at every call); now the cheaper plain order:
    # right to left (one multiply-add a product, and 3 for G) rather than
    # 3 a link
    links = [rng.standard_normal((1, 1)) for _ in range(3000)]
    G = rng.standard_normal((3, 1))
    ref = G.copy()
    for J in reversed(links):
        ref = ref @ J
    out = gradchain.vjp(links, G)
    np.testing.assert_allclose(out, ref, rtol=1e-10)
    plan = Chain(links).plan(3)
    assert plan.expression.startswith("G (J3000 (J2999 (J2998")
    assert (plan.cost, plan.baseline_costs) == (
        3002, {"left_to_right": 9000, "right_to_left": 3002})


def test_plan_for_500_links_is_consistent(rng):
    # a long chain: the planner may stop short of the O(m^3) programme when
    # that cannot pay for itself, so only what every plan must satisfy is
    # asserted: its expression counts its cost, the baselines are the plain
    # orders, and it is no worse than either
    k = 500
    dims = [int(x) for x in rng.integers(1, 13, size=k + 1)]
    links = [np.ones((dims[i + 1], dims[i])) for i in range(k)]
    chain = Chain(links)
    for mode, B in (("jacobian", 0), ("vjp", 7)):
        plan = chain.plan(B, mode)
        factors = plan_factors([DENSE] * k, dims, mode, B)
        m = len(factors)
        tree = parse_expression(plan.expression, plan_names(k, mode, B))
        assert tree_cost(tree, factors)[0] == plan.cost
        assert plan.baseline_costs == {
            "left_to_right": tree_cost(left_to_right_tree(m), factors)[0],
            "right_to_left": tree_cost(right_to_left_tree(m), factors)[0]}
        assert plan.cost <= min(plan.baseline_costs.values())


def test_plan_argument_errors(rng):
    chain = Chain([rng.standard_normal((3, 4))])
    with raises(ValueError, "mode must be 'vjp', 'jvp' or 'jacobian', got 'jtv'"):
        chain.plan(1, "jtv")
    with raises(ValueError, "batch must be >= 0, got -1"):
        chain.plan(-1)
    with raises(TypeError, "batch must be an int"):
        chain.plan(True)
    with raises(TypeError, "batch must be an int"):
        chain.plan(2.0)
    for mode in MODES:
        with raises(ValueError, "the empty chain has nothing to plan"):
            Chain([]).plan(1, mode)


def test_plan_default_is_vjp_of_one_vector(rng):
    chain = Chain([rng.standard_normal((3, 4)), rng.standard_normal((2, 3))])
    plan = chain.plan()
    assert plan.mode == "vjp" and plan.batch == 1
    assert plan.expression == "(g J2) J1"
    assert plan.cost == 2 * 3 + 3 * 4


# --------------------------------------------------------------------------
# Plans against a counted reference evaluation of their own bracketing
# --------------------------------------------------------------------------

def ref_leaf(link, transpose=False, sample=None):
    """The RefVal of a chain link, read off the object gradchain was given
    (J^T for transpose; sample b of a per-sample link)."""
    if isinstance(link, np.ndarray):
        M = np.array(link[sample] if link.ndim == 3 else link, np.float64)
        M = M.T if transpose else M
        return RefVal(DENSE, M.shape[0], M.shape[1], M=M)
    n = link.shape[0]
    if isinstance(link, Identity):
        if link.scale == 1.0:
            return RefVal(IDENT, n, n)
        return RefVal(SCALED, n, n, d=np.full(n, link.scale))
    if isinstance(link, Diagonal):
        return RefVal(DIAG, n, n, d=np.array(link.diagonal, np.float64))
    assert isinstance(link, DiagonalPlusRankOne)
    d, u, v = (np.array(a, np.float64) for a in (link.diagonal, link.u, link.v))
    if transpose:           # (diag(d) + c u v^T)^T = diag(d) + c v u^T
        u, v = v, u
    return RefVal(DPR1, n, n, d=d, cu=link.c * u, v=v)


def ref_leaves(links, mode, block=None, sample=None):
    """The factors of the product (see plan_factors) as RefVals."""
    if mode == "jacobian":
        return [ref_leaf(J, False, sample) for J in links[::-1]]
    head = RefVal(DENSE, block.shape[0], block.shape[1], M=block)
    if mode == "vjp":
        return [head] + [ref_leaf(J, False, sample) for J in links[::-1]]
    return [head] + [ref_leaf(J, True, sample) for J in links]


def counted(tree, leaves):
    """(multiply-adds, dense value) of evaluating tree over leaves."""
    ops = RefOps()
    val = evaluate_tree(tree, leaves, ops)
    return ops.count, val.todense()


MEASURED_SPECS = [
    ["diag", "dpr1", "diag"],
    ["dpr1", "dpr1", ("dense", 3), "dpr1", "dpr1"],
    ["scaled", "dpr1", "scaled2", "dpr1", "ident"],
    ["ident", "dpr1", "ident"],
    ["diag", "scaled", "ident", "diag", "scaled2"],
    [("dense", 7), "dpr1", ("dense", 2), "dpr1", "diag", ("dense", 9)],
    [("dense", 12), "ident", "dpr1", "scaled", ("dense", 1), "ident"],
    [("dense", 4), ("dense", 64), ("dense", 4), ("dense", 64)],
    [("dense", 16), "diag", "dpr1", "scaled", ("dense", 16), "ident", "dpr1",
     ("dense", 3)],
]


@pytest.mark.parametrize("spec", MEASURED_SPECS, ids=lambda s: "-".join(
    t if isinstance(t, str) else f"{t[0]}{t[1]}" for t in s))
def test_plan_cost_is_the_count_of_evaluating_it(rng, spec):
    """Evaluate the plan's bracketing (and the two plain orders) in NumPy,
    counting the multiplications performed: the counts are plan.cost and
    baseline_costs, and the value is gradchain's result."""
    n0 = 6
    links, dense, absf, kinds, dims = build(rng, spec, np.float64, n0)
    chain = Chain(links)
    k = len(links)
    for mode in MODES:
        for B in ((0,) if mode == "jacobian" else (1, 3, 64)):
            plan = chain.plan(B, mode)
            block = None
            if mode == "vjp":
                block = rng.standard_normal((B, dims[-1]))
                got = chain.vjp(block)
                ref, scale = ref_vjp(dense, block), ref_vjp(absf, np.abs(block))
            elif mode == "jvp":
                block = rng.standard_normal((B, dims[0]))
                got = chain.jvp(block)
                ref, scale = ref_jvp(dense, block), ref_jvp(absf, np.abs(block))
            else:
                got, ref, scale = (chain.jacobian(), ref_jacobian(dense),
                                   ref_jacobian(absf))
            leaves = ref_leaves(links, mode, block)
            m = len(leaves)
            tree = parse_expression(plan.expression, plan_names(k, mode, B))
            where = f"{mode} B={B}: {plan!r}"
            count, value = counted(tree, leaves)
            assert count == plan.cost, where
            assert_close(got, value, scale, np.float64)
            assert_close(value, ref, scale, np.float64)
            for key, t in (("left_to_right", left_to_right_tree(m)),
                           ("right_to_left", right_to_left_tree(m))):
                count, value = counted(t, leaves)
                assert count == plan.baseline_costs[key], (key, where)
                assert_close(value, ref, scale, np.float64)


def test_measured_product_counts_by_hand():
    # a few entries of the README's table, counted by hand for small sizes,
    # against the measured reference evaluation
    p, q, r = 2, 3, 5
    assert measured_product(DENSE, DENSE, p, q, r) == (p * q * r, DENSE)
    assert measured_product(DIAG, DENSE, q, q, r) == (q * r, DENSE)
    assert measured_product(DENSE, SCALED, p, q, q) == (p * q, DENSE)
    assert measured_product(SCALED, DIAG, q, q, q) == (q, DIAG)
    assert measured_product(SCALED, SCALED, q, q, q) == (q, DIAG)
    assert measured_product(IDENT, DPR1, q, q, q) == (0, DPR1)
    assert measured_product(DENSE, IDENT, p, q, q) == (0, DENSE)
    assert measured_product(IDENT, IDENT, q, q, q) == (0, IDENT)
    assert measured_product(DPR1, DENSE, q, q, r) == (3 * q * r, DENSE)
    assert measured_product(DENSE, DPR1, p, q, q) == (3 * p * q, DENSE)
    assert measured_product(DIAG, DPR1, q, q, q) == (2 * q * q, DENSE)
    assert measured_product(DPR1, SCALED, q, q, q) == (2 * q * q, DENSE)
    assert measured_product(DPR1, DPR1, q, q, q) == (4 * q * q, DENSE)


@pytest.mark.parametrize("name", ["shared-ps", "ps-shared-ps", "ops",
                                  "ps-ops-first"])
def test_per_sample_plan_counts_measured(rng, name):
    """Per-sample plans against a counted evaluation that makes a product
    once per sample when it holds a per-sample factor (row b of the block
    meets only sample b) and once when it holds shared factors only."""
    B = 3
    links, dense, absf, kinds, dims = build(rng, PS_SPECS[name], np.float64, 4,
                                            batch=B)
    chain = Chain(links)
    k = len(links)
    ps_link = [isinstance(J, np.ndarray) and J.ndim == 3 for J in links]
    # jacobian: the whole bracketing runs once per sample
    plan = chain.plan(mode="jacobian")
    m = k
    got = chain.jacobian()
    for key, tree in (("cost", parse_expression(plan.expression,
                                                plan_names(k, "jacobian", 0))),
                      ("left_to_right", left_to_right_tree(m)),
                      ("right_to_left", right_to_left_tree(m))):
        total = 0
        for b in range(B):
            count, value = counted(tree, ref_leaves(links, "jacobian", sample=b))
            total += count
            assert_close(got[b], value, ref_jacobian(absf)[b], np.float64)
        want = plan.cost if key == "cost" else plan.baseline_costs[key]
        assert total == want, (key, plan)
    for mode in ("vjp", "jvp"):
        plan = chain.plan(B, mode)
        m = k + 1
        block = rng.standard_normal((B, dims[-1] if mode == "vjp" else dims[0]))
        got = chain.vjp(block) if mode == "vjp" else chain.jvp(block)
        # factor 0 is the block (per-row), then the links in factor order
        ps = [True] + (ps_link[::-1] if mode == "vjp" else ps_link)

        def leaves_of(b):
            return ref_leaves(links, mode, block[b:b + 1], sample=b)

        def run(tree, ops):
            def rec(t):
                if isinstance(t, int):
                    if ps[t]:
                        return [leaves_of(b)[t] for b in range(B)]
                    return leaves_of(0)[t]
                L, R = rec(t[0]), rec(t[1])
                if isinstance(L, list) or isinstance(R, list):
                    return [ref_multiply(L[b] if isinstance(L, list) else L,
                                         R[b] if isinstance(R, list) else R, ops)
                            for b in range(B)]
                return ref_multiply(L, R, ops)
            return rec(tree)

        tree = parse_expression(plan.expression, plan_names(k, mode, B))
        assert tree == left_to_right_tree(m), plan      # propagation
        for key, t in (("cost", tree), ("right_to_left", right_to_left_tree(m))):
            ops = RefOps()
            rows = run(t, ops)
            want = plan.cost if key == "cost" else plan.baseline_costs[key]
            assert ops.count == want, (mode, key, plan)
            value = np.vstack([r.todense() for r in rows])
            scale = (ref_vjp(absf, np.abs(block)) if mode == "vjp"
                     else ref_jvp(absf, np.abs(block)))
            assert_close(got, value, scale, np.float64)
        assert plan.cost == plan.baseline_costs["left_to_right"]


def _overflow_chain():
    # g J2 J1 with g = 1e-200, J2 (2 x 100) = 1e200, J1 (100 x 1) = 1e200:
    # propagating, (g J2) is 2 and (g J2) J1 = 2e202 is finite; pre-
    # multiplying, (J2 J1) = 1e402 overflows and g (J2 J1) is inf.  The
    # result tells which bracketing ran.
    J1 = np.full((100, 1), 1e200)
    J2 = np.full((2, 100), 1e200)
    return Chain([J1, J2])


def _check_plan_is_what_runs(chain, B):
    plan = chain.plan(B, "vjp")
    res = chain.vjp(np.full((B, 2), 1e-200))
    if plan.expression in ("g (J2 J1)", "G (J2 J1)"):
        assert np.isinf(res).all(), (plan, res)
    else:
        assert plan.expression in ("(g J2) J1", "(G J2) J1"), plan
        # 100 terms of 2e200, summed in the kernel's order
        assert np.isfinite(res).all(), (plan, res)
        np.testing.assert_allclose(res, 2e202, rtol=1e-14)


def test_plan_of_a_block_is_what_runs():
    chain = _overflow_chain()
    plan = chain.plan(2, "vjp")
    # G (J2 J1): 2*100*1 + 2*2*1 against propagation 2*2*100 + 2*100*1
    assert plan.expression == "G (J2 J1)" and plan.cost == 204
    assert plan.baseline_costs["left_to_right"] == 600
    _check_plan_is_what_runs(chain, 2)


def test_plan_of_one_vector_is_what_runs():
    # one vector always propagates, and plan(batch=1) says so
    chain = _overflow_chain()
    assert chain.plan(1, "vjp").expression == "(g J2) J1"
    _check_plan_is_what_runs(chain, 1)


# --------------------------------------------------------------------------
# Jacobians against np.linalg.multi_dot
# --------------------------------------------------------------------------

RESULT_SPECS = {
    "dense1": [("dense", 6)],
    "dense5": [("dense", 9), ("dense", 2), ("dense", 12), ("dense", 1),
               ("dense", 7)],
    "diag": [("dense", 5), "diag", ("dense", 4)],
    "ident": [("dense", 5), "ident", ("dense", 3), "ident"],
    "scaled": ["scaled", ("dense", 6), "scaled2", ("dense", 3)],
    "dpr1": [("dense", 5), "dpr1", ("dense", 8), "dpr1"],
    "dpr1-dpr1": ["dpr1", "dpr1", ("dense", 3), "dpr1", "dpr1"],
    "diag-dpr1": ["diag", "dpr1", "scaled", "dpr1", "diag"],
    "all": ["ident", ("dense", 7), "diag", "scaled", "dpr1", ("dense", 7),
            "ident", "dpr1", "scaled2", ("dense", 4), "diag"],
    "ops-only": ["diag", "ident", "scaled", "dpr1", "diag", "dpr1"],
    "diag-only": ["diag", "ident", "scaled", "diag", "scaled2"],
    "ident-only": ["ident", "ident"],
    "scaled-only": ["scaled", "ident", "scaled2"],
    "one-scaled": ["ident", "scaled", "ident"],
    "one-dpr1": ["ident", "dpr1", "ident"],
}
CHAIN_LAYOUTS = ["C", "F", "strided", "negative", "rowstrided", "mixed"]


@pytest.mark.parametrize("layout", CHAIN_LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(RESULT_SPECS))
def test_jacobian_matches_multi_dot(rng, name, dtype, layout):
    layouts = LAYOUTS if layout == "mixed" else [layout]
    links, dense, absf, kinds, dims = build(rng, RESULT_SPECS[name], dtype, 6,
                                            layouts=layouts)
    ref, scale = ref_jacobian(dense), ref_jacobian(absf)
    only_identities = all(k == IDENT or k == SCALED for k in kinds)
    want = np.float64 if only_identities else dtype
    for res in (Chain(links).jacobian(), gradchain.jacobian(links)):
        assert res.shape == (dims[-1], dims[0])
        assert res.flags.c_contiguous
        assert_close(res, ref, scale, want)
    # the chain keeps working: a second call, and vjp/jvp for good measure
    chain = Chain(links)
    chain.jacobian()
    check_all(chain, dense, absf, dtype, rng, batch_sizes=(2, 5),
              jac_dtype=want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", range(1, 8))
def test_jacobian_random_mixes(rng, k, dtype):
    for _ in range(6):
        spec = random_spec(rng, k, "mixed")
        lays = [LAYOUTS[int(i)] for i in rng.integers(len(LAYOUTS), size=k)]
        links, dense, absf, kinds, dims = build(
            rng, spec, dtype, int(rng.integers(1, 13)), layouts=lays)
        want = (np.float64 if all(k_ in (IDENT, SCALED) for k_ in kinds)
                else dtype)
        assert_close(Chain(links).jacobian(), ref_jacobian(dense),
                     ref_jacobian(absf), want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_jacobian_big_links_strided(rng, dtype, restore_threads):
    threads_compared()
    # products past the threading threshold, strided/negative/F links, a
    # diagonal-plus-rank-one link against a 200 x 300 block
    spec = [("dense", 200), "dpr1", ("dense", 257), "diag", ("dense", 9)]
    links, dense, absf, _, dims = build(
        rng, spec, dtype, 300, layouts=["strided", "C", "negative", "C", "F"])
    ref, scale = ref_jacobian(dense), ref_jacobian(absf)
    for nt in (1, 2):
        gradchain.set_num_threads(nt)
        assert_close(Chain(links).jacobian(), ref, scale, dtype)
        G = rng.standard_normal((40, 9)).astype(dtype)
        assert_close(Chain(links).vjp(G), ref_vjp(dense, G),
                     ref_vjp(absf, np.abs(G)), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_jacobian_broadcast_readonly_links_untouched(rng, dtype):
    J1 = np.broadcast_to(rng.standard_normal(6).astype(dtype), (5, 6))
    J2 = np.broadcast_to(rng.standard_normal((7, 1)).astype(dtype), (7, 5))
    J3 = np.broadcast_to(dtype(0.5), (3, 7))
    J4 = rng.standard_normal((3, 3)).astype(dtype)
    J4.flags.writeable = False
    d = rng.standard_normal(3).astype(dtype)
    links = [J1, J2, J3, Diagonal(d), J4]
    before = [np.array(J) for J in (J1, J2, J3, J4)] + [d.copy()]
    dense = [np.array(J, np.float64) for J in (J1, J2, J3)] + [
        np.diag(d.astype(np.float64)), J4.astype(np.float64)]
    absf = [np.abs(x) for x in dense]
    assert_close(Chain(links).jacobian(), ref_jacobian(dense),
                 ref_jacobian(absf), dtype)
    G = rng.standard_normal((16, 3)).astype(dtype)
    V = rng.standard_normal((16, 6)).astype(dtype)
    assert_close(Chain(links).vjp(G), ref_vjp(dense, G),
                 ref_vjp(absf, np.abs(G)), dtype)
    assert_close(Chain(links).jvp(V), ref_jvp(dense, V),
                 ref_jvp(absf, np.abs(V)), dtype)
    for a, b in zip(before, [J1, J2, J3, J4, d]):
        assert np.array_equal(a, b)


def test_jacobian_identity_only_values():
    res = Chain([Identity(4), Identity(4)]).jacobian()
    assert res.dtype == np.float64
    assert np.array_equal(res, np.eye(4))
    res = gradchain.jacobian([Identity(3, 2.0), Identity(3), Identity(3, -1.5)])
    assert np.array_equal(res, -3.0 * np.eye(3))
    d = np.array([1.0, -2.0, 0.5], np.float32)
    res = gradchain.jacobian([Diagonal(d), Identity(3, 2.0), Diagonal(d)])
    assert res.dtype == np.float32
    assert np.array_equal(res, np.diag(2 * d * d))


def test_jacobian_k0_and_k1(rng):
    with raises(ValueError, "the empty chain is the identity of any size; it "
                            "has no dense Jacobian"):
        Chain([]).jacobian()
    with raises(ValueError, "the empty chain is the identity of any size; it "
                            "has no dense Jacobian"):
        gradchain.jacobian([])
    for dtype in DTYPES:
        for lay in LAYOUTS:
            J = make_layout(rng.standard_normal((4, 7)).astype(dtype), lay)
            res = Chain([J]).jacobian()
            assert res.dtype == dtype and res.shape == (4, 7)
            assert np.array_equal(res, J)      # a copy: exact
            assert not np.shares_memory(res, J)
    d = rng.standard_normal(5)
    assert np.array_equal(gradchain.jacobian([Diagonal(d)]), np.diag(d))
    d, u, v = rng.standard_normal((3, 5))
    res = gradchain.jacobian([DiagonalPlusRankOne(d, u, v, -1.0)])
    assert_close(res, np.diag(d) - np.outer(u, v),
                 np.diag(np.abs(d)) + np.outer(np.abs(u), np.abs(v)), np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec, n0", [
    ([("dense", 0)], 4),
    ([("dense", 4)], 0),
    ([("dense", 0), ("dense", 4)], 3),
    ([("dense", 0), "diag", ("dense", 4)], 3),
    ([("dense", 0), "dpr1", "scaled", ("dense", 4)], 3),
    ([("dense", 3), ("dense", 0)], 0),
    (["diag", "dpr1", "ident"], 0),
    ([("dense", 4), "dpr1", ("dense", 0), "dpr1", ("dense", 5)], 6),
    ([("dense", 64), ("dense", 4), ("dense", 0), ("dense", 4), ("dense", 64)], 64),
], ids=lambda x: str(x))
def test_zero_size_dims(rng, dtype, spec, n0):
    links, dense, absf, _, dims = build(rng, spec, dtype, n0)
    chain = Chain(links)
    res = chain.jacobian()
    assert res.shape == (dims[-1], dims[0]) and res.dtype == dtype
    assert_close(res, ref_jacobian(dense), ref_jacobian(absf), dtype)
    assert_close(gradchain.jacobian(links), ref_jacobian(dense),
                 ref_jacobian(absf), dtype)
    check_all(chain, dense, absf, dtype, rng, batch_sizes=(0, 1, 2, 7, 64))


# --------------------------------------------------------------------------
# Blocks of vectors: pre-accumulated or propagated
# --------------------------------------------------------------------------

BLOCK_SPECS = {
    "64-4-64-4-64": ([("dense", 4), ("dense", 64), ("dense", 4),
                      ("dense", 64)], 64),
    "narrowing": ([("dense", 30), ("dense", 20), ("dense", 10)], 5),
    "widening": ([("dense", 50), ("dense", 40), ("dense", 3)], 60),
    "structured": ([("dense", 16), "diag", "dpr1", "scaled", ("dense", 16),
                    "ident", "dpr1", ("dense", 3)], 8),
    "diag-run": (["diag", "diag", "scaled", "dpr1", "diag"], 24),
}
BLOCK_B = [0, 1, 2, 7, 256]


@pytest.mark.parametrize("B", BLOCK_B)
@pytest.mark.parametrize("layout", ["C", "F", "strided", "negative", "mixed"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(BLOCK_SPECS))
def test_blocks_match_reference(rng, name, dtype, layout, B):
    spec, n0 = BLOCK_SPECS[name]
    layouts = LAYOUTS if layout == "mixed" else [layout]
    links, dense, absf, kinds, dims = build(rng, spec, dtype, n0,
                                            layouts=layouts)
    chain = Chain(links)
    for mode in ("vjp", "jvp"):
        check_plan(chain, kinds, dims, mode, B)
    G = rng.standard_normal((B, dims[-1])).astype(dtype)
    V = rng.standard_normal((B, dims[0])).astype(dtype)
    for res in (chain.vjp(G), vjp(links, G)):
        assert_close(res, ref_vjp(dense, G), ref_vjp(absf, np.abs(G)), dtype)
    for res in (chain.jvp(V), jvp(links, V)):
        assert_close(res, ref_jvp(dense, V), ref_jvp(absf, np.abs(V)), dtype)
    # Fortran-ordered blocks and out= take the same path
    out = np.full((B, dims[0]), np.nan, dtype)
    r = chain.vjp(np.asfortranarray(G), out=out)
    assert r is out
    assert_close(out, ref_vjp(dense, G), ref_vjp(absf, np.abs(G)), dtype)


def test_both_regimes_are_exercised(rng):
    """The block cases above include plans that pre-accumulate (cost below
    plain propagation) and plans that propagate."""
    pre, prop = set(), set()
    for name, (spec, n0) in BLOCK_SPECS.items():
        links, _, _, kinds, dims = build(rng, spec, np.float64, n0)
        chain = Chain(links)
        for B in BLOCK_B:
            for mode in ("vjp", "jvp"):
                p = chain.plan(B, mode)
                (pre if p.cost < p.baseline_costs["left_to_right"]
                 else prop).add((name, B, mode))
    assert ("64-4-64-4-64", 256, "vjp") in pre
    assert ("64-4-64-4-64", 1, "vjp") in prop
    assert len(pre) > 10 and len(prop) > 10


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["C", "F", "strided", "negative"])
def test_preaccumulating_block_64(rng, dtype, layout):
    links, dense, absf, kinds, dims = build(
        rng, BLOCK_SPECS["64-4-64-4-64"][0], dtype, 64, layouts=[layout])
    chain = Chain(links)
    for mode in ("vjp", "jvp"):
        plan = check_plan(chain, kinds, dims, mode, 64)
        assert plan.cost < plan.baseline_costs["left_to_right"]
    G = rng.standard_normal((64, 64)).astype(dtype)
    assert_close(chain.vjp(G), ref_vjp(dense, G), ref_vjp(absf, np.abs(G)), dtype)
    assert_close(chain.jvp(G), ref_jvp(dense, G), ref_jvp(absf, np.abs(G)), dtype)
    # plan with one vector: plain propagation
    plan = chain.plan(1, "vjp")
    assert plan.cost == plan.baseline_costs["left_to_right"]
    assert plan.expression == "(((g J4) J3) J2) J1"


def test_block_readonly_and_float64_promotion(rng):
    links, dense, absf, _, dims = build(
        rng, BLOCK_SPECS["64-4-64-4-64"][0], np.float32, 64)
    for J in links:
        J.flags.writeable = False
    chain = Chain(links)
    G = rng.standard_normal((64, 64))            # float64: promoted
    G.flags.writeable = False
    res = chain.vjp(G)
    assert res.dtype == np.float64
    assert_close(res, ref_vjp(dense, G), ref_vjp(absf, np.abs(G)), np.float64)
    G32 = G.astype(np.float32)
    G32.flags.writeable = False
    assert_close(chain.jvp(G32), ref_jvp(dense, G32),
                 ref_jvp(absf, np.abs(G32)), np.float32)


def test_block_results_independent_of_threads(rng, restore_threads):
    threads_compared()
    links, *_ = build(rng, BLOCK_SPECS["64-4-64-4-64"][0], np.float64, 64)
    G = rng.standard_normal((256, 64))
    gradchain.set_num_threads(1)
    one = Chain(links).vjp(G), Chain(links).jvp(G), Chain(links).jacobian()
    gradchain.set_num_threads(2)
    two = Chain(links).vjp(G), Chain(links).jvp(G), Chain(links).jacobian()
    for a, b in zip(one, two):
        assert np.array_equal(a, b)


# --------------------------------------------------------------------------
# Per-sample chains
# --------------------------------------------------------------------------

PS_SPECS = {
    "ps1": [("ps", 4)],
    "shared-ps": [("dense", 6), ("ps", 3)],
    "ps-shared-ps": [("ps", 5), ("dense", 7), ("ps", 2)],
    "ops": [("ps", 6), "diag", "dpr1", ("dense", 6), "scaled", ("ps", 4),
            "ident"],
    "ps-ops-first": ["dpr1", ("ps", 3), "scaled2", ("ps", 3), "diag"],
}


def _ps_check(chain, dense, absf, dtype, rng, B):
    n0, nk = dense[0].shape[-1], dense[-1].shape[-2]
    assert chain.batch == B
    J = chain.jacobian()
    assert J.shape == (B, nk, n0) and J.dtype == dtype
    assert_close(J, ref_jacobian(dense), ref_jacobian(absf), dtype)
    G = rng.standard_normal((B, nk)).astype(dtype)
    V = rng.standard_normal((B, n0)).astype(dtype)
    r = chain.vjp(G)
    assert r.shape == (B, n0)
    assert_close(r, ref_vjp(dense, G), ref_vjp(absf, np.abs(G)), dtype)
    r = chain.jvp(V)
    assert r.shape == (B, nk)
    assert_close(r, ref_jvp(dense, V), ref_jvp(absf, np.abs(V)), dtype)
    return G, V


@pytest.mark.parametrize("B", [0, 1, 5])
@pytest.mark.parametrize("layout3_", LAYOUTS3 + ["mixed"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(PS_SPECS))
def test_per_sample_chain(rng, name, dtype, layout3_, B):
    lay3 = LAYOUTS3 if layout3_ == "mixed" else [layout3_]
    links, dense, absf, _, _ = build(rng, PS_SPECS[name], dtype, 4, batch=B,
                                     layouts=LAYOUTS, layouts3=lay3)
    chain = Chain(links)
    G, V = _ps_check(chain, dense, absf, dtype, rng, B)
    # the functional API agrees
    assert_close(vjp(links, G), ref_vjp(dense, G), ref_vjp(absf, np.abs(G)), dtype)
    assert_close(jvp(links, V), ref_jvp(dense, V), ref_jvp(absf, np.abs(V)), dtype)
    assert_close(gradchain.jacobian(links), ref_jacobian(dense),
                 ref_jacobian(absf), dtype)


def test_per_sample_float32_chain_float64_vector(rng):
    links, dense, absf, _, _ = build(rng, PS_SPECS["ops"], np.float32, 4,
                                     batch=3, layouts3=["F", "strided"])
    chain = Chain(links)
    G = rng.standard_normal((3, 4))
    res = chain.vjp(G)
    assert res.dtype == np.float64
    assert_close(res, ref_vjp(dense, G), ref_vjp(absf, np.abs(G)), np.float64)
    V = rng.standard_normal((3, 4))
    res = chain.jvp(V)
    assert res.dtype == np.float64
    assert_close(res, ref_jvp(dense, V), ref_jvp(absf, np.abs(V)), np.float64)


def test_per_sample_mixed_dtypes_and_pickle(rng):
    import pickle
    A = rng.standard_normal((4, 3, 5)).astype(np.float32)    # converted
    S = rng.standard_normal((2, 3))
    chain = Chain([A, S])
    assert chain.dtype == np.float64 and chain.batch == 4
    dense = [A.astype(np.float64), S]
    _ps_check(chain, dense, [np.abs(x) for x in dense], np.float64, rng, 4)
    again = pickle.loads(pickle.dumps(chain))
    assert again.batch == 4
    _ps_check(again, dense, [np.abs(x) for x in dense], np.float64, rng, 4)


def test_per_sample_broadcast_and_readonly(rng):
    # a stride-0 batch axis and read-only arrays
    J = rng.standard_normal((4, 3))
    Jb = np.broadcast_to(J, (6, 4, 3))
    K = rng.standard_normal((6, 2, 4))
    K.flags.writeable = False
    chain = Chain([Jb, K])
    assert chain.batch == 6
    dense = [np.array(Jb), K]
    _ps_check(chain, dense, [np.abs(x) for x in dense], np.float64, rng, 6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout3_", ["C", "F", "Fwhole", "strided"])
def test_per_sample_threads_bitwise(rng, restore_threads, dtype, layout3_):
    threads_compared()
    # B * m * n >= 2**15 for each per-sample link: the batch is threaded
    B = 96
    spec = [("ps", 32), "diag", ("dense", 32), ("ps", 24), "dpr1",
            ("ps", 16)]
    links, dense, absf, _, dims = build(rng, spec, dtype, 32, batch=B,
                                        layouts3=[layout3_])
    assert all(B * J.shape[1] * J.shape[2] >= 2 ** 15
               for J in links if isinstance(J, np.ndarray) and J.ndim == 3)
    G = rng.standard_normal((B, dims[-1])).astype(dtype)
    V = rng.standard_normal((B, dims[0])).astype(dtype)
    results = {}
    for nt in (1, 2):
        gradchain.set_num_threads(nt)
        chain = Chain(links)
        results[nt] = (chain.vjp(G), chain.jvp(V), chain.jacobian())
    gradchain.set_num_threads(None)
    for a, b in zip(results[1], results[2]):
        assert np.array_equal(a, b)
    assert_close(results[2][0], ref_vjp(dense, G), ref_vjp(absf, np.abs(G)), dtype)
    assert_close(results[2][1], ref_jvp(dense, V), ref_jvp(absf, np.abs(V)), dtype)
    assert_close(results[2][2], ref_jacobian(dense), ref_jacobian(absf), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", [
    [("ps", 24), ("ps", 16), ("ps", 32)],                   # the whole chain
    [("ps", 24), ("ps", 16), "diag", ("dense", 32), ("ps", 32), ("ps", 8),
     ("ps", 32)],                                           # runs at both ends
    ["dpr1", ("ps", 40), ("ps", 40), ("ps", 40), ("dense", 16)],   # inside
    [("ps", 24), ("ps", 0), ("ps", 16)],                    # an empty middle
], ids=["all", "ends", "middle", "empty"])
def test_per_sample_runs_threads_bitwise(rng, restore_threads, dtype, spec):
    threads_compared()
    # consecutive per-sample links go through the chain in one pass, a block
    # of samples at a time; B is odd so that the last block is short, and
    # every thread count gives the same bits
    B = 97
    links, dense, absf, _, dims = build(rng, spec, dtype, 32, batch=B)
    G = rng.standard_normal((B, dims[-1])).astype(dtype)
    V = rng.standard_normal((B, dims[0])).astype(dtype)
    results = {}
    for nt in (1, 2, 3):
        gradchain.set_num_threads(nt)
        chain = Chain(links)
        results[nt] = (chain.vjp(G), chain.jvp(V))
    for nt in (2, 3):
        for a, b in zip(results[1], results[nt]):
            assert np.array_equal(a, b)
    assert_close(results[2][0], ref_vjp(dense, G), ref_vjp(absf, np.abs(G)), dtype)
    assert_close(results[2][1], ref_jvp(dense, V), ref_jvp(absf, np.abs(V)), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_per_sample_jacobian_wide_links(rng, dtype):
    # products over 64^3 multiply-adds: samples go one at a time, each
    # product threaded (the other path of Chain.jacobian for batches)
    B = 3
    spec = [("ps", 70), ("dense", 66), "diag", ("ps", 72)]
    links, dense, absf, _, dims = build(rng, spec, dtype, 68, batch=B)
    res = Chain(links).jacobian()
    assert res.shape == (B, 72, 68) and res.dtype == dtype
    assert_close(res, ref_jacobian(dense), ref_jacobian(absf), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n0", [40, 520], ids=["partials-on-stack", "partials-on-heap"])
def test_per_sample_tall_links(rng, restore_threads, dtype, n0):
    threads_compared()
    # more than 128 rows: J^T g sums the rows in chunks, with the partial
    # sums on the stack up to 512 columns and allocated beyond
    B = 3
    links, dense, absf, _, dims = build(rng, [("ps", 140), ("ps", 130)], dtype,
                                        n0, batch=B)
    G = rng.standard_normal((B, dims[-1])).astype(dtype)
    results = []
    for nt in (1, 2):
        gradchain.set_num_threads(nt)
        results.append(Chain(links).vjp(G))
    assert np.array_equal(results[0], results[1])
    assert_close(results[1], ref_vjp(dense, G), ref_vjp(absf, np.abs(G)), dtype)


def test_per_sample_plans(rng):
    # plans of chains with per-sample links report what runs: vjp/jvp
    # propagate the block link by link; jacobian runs its bracketing once
    # per sample; a product holding a per-sample link counts B times
    B = 5
    J1 = rng.standard_normal((B, 3, 4))
    W2 = rng.standard_normal((6, 3))
    J3 = rng.standard_normal((B, 2, 6))
    chain = Chain([J1, W2, J3])
    p = chain.plan(B, "vjp")
    assert p.expression == "((G J3) J2) J1"
    assert p.cost == p.baseline_costs["left_to_right"] == B * (2 * 6 + 6 * 3 + 3 * 4)
    assert p.baseline_costs["right_to_left"] == (B * 6 * 3 * 4 + B * 2 * 6 * 4
                                                 + B * 2 * 4)
    p = chain.plan(B, "jvp")
    assert p.expression == "((V J1^T) J2^T) J3^T"
    assert p.cost == B * (4 * 3 + 3 * 6 + 6 * 2)
    assert p.baseline_costs["right_to_left"] == (B * 3 * 6 * 2 + B * 4 * 3 * 2
                                                 + B * 4 * 2)
    shared = Chain([J1[0], W2, J3[0]]).plan(mode="jacobian")
    p = chain.plan(mode="jacobian")
    assert p.expression == shared.expression
    assert p.cost == B * shared.cost
    assert p.baseline_costs == {key: B * v for key, v in shared.baseline_costs.items()}
    # a product of shared links only is made once
    W1 = rng.standard_normal((3, 4))
    p = Chain([W1, W2, J3]).plan(B, "vjp")
    assert p.baseline_costs["right_to_left"] == 6 * 3 * 4 + B * 2 * 6 * 4 + B * 2 * 4
    with raises(ValueError, "jacobians[0] holds 5 per-sample Jacobians, so a vjp "
                            "takes a batch of exactly 5 vectors: pass batch=5, got 1"):
        chain.plan()


def test_batch_property(rng):
    assert Chain([]).batch is None
    assert Chain([rng.standard_normal((3, 4))]).batch is None
    assert Chain([Identity(3), Diagonal(np.ones(3))]).batch is None
    # a bare 3-D array is a stacked chain of shared links, not a batch
    assert Chain(rng.standard_normal((5, 3, 3))).batch is None
    assert Chain([rng.standard_normal((5, 3, 4))]).batch == 5
    assert Chain([rng.standard_normal((4, 3)),
                  rng.standard_normal((0, 2, 4))]).batch == 0


def test_per_sample_batch_mismatch_names_both_links(rng):
    A = rng.standard_normal((3, 4, 5))
    S = rng.standard_normal((4, 4))
    C = rng.standard_normal((2, 6, 4))
    msg = ("jacobians[2] holds 2 per-sample Jacobians (shape (2, 6, 4)) but "
           "jacobians[0] holds 3")
    with raises(ValueError, msg):
        Chain([A, S, C])
    with raises(ValueError, msg):
        vjp([A, S, C], np.ones((3, 6)))
    with raises(ValueError, msg):
        gradchain.jacobian([A, S, C])


def test_per_sample_vector_errors(rng):
    S = rng.standard_normal((4, 5))
    A = rng.standard_normal((3, 6, 4))
    chain = Chain([S, A])
    with raises(ValueError, "jacobians[1] holds 3 per-sample Jacobians, so the "
                            "cotangent must be a batch of shape (3, n), got "
                            "shape (6,)"):
        chain.vjp(np.ones(6))
    with raises(ValueError, "jacobians[1] holds 3 per-sample Jacobians, so the "
                            "tangent must be a batch of shape (3, n), got "
                            "shape (5,)"):
        chain.jvp(np.ones(5))
    with raises(ValueError, "cotangent has 4 rows but jacobians[1] holds 3 "
                            "per-sample Jacobians"):
        chain.vjp(np.ones((4, 6)))
    with raises(ValueError, "tangent has 1 rows but jacobians[1] holds 3 "
                            "per-sample Jacobians"):
        chain.jvp(np.ones((1, 5)))
    with raises(ValueError, "cotangent has 0 rows but jacobians[1] holds 3 "
                            "per-sample Jacobians"):
        vjp([S, A], np.ones((0, 6)))
    # wrong length of the right batch: the usual shape message
    with raises(ValueError, "cotangent has shape (3, 5) but jacobians[1]"):
        chain.vjp(np.ones((3, 5)))
    # per-sample inner shapes must chain like shared ones
    with raises(ValueError, "jacobians[1] has shape (6, 5) but jacobians[0] "
                            "outputs 4 values"):
        Chain([S, rng.standard_normal((3, 6, 5))])


# --------------------------------------------------------------------------
# Property test
# --------------------------------------------------------------------------

@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1),
       k=st.integers(1, 6),
       dtype=st.sampled_from(DTYPES),
       per_sample=st.booleans(),
       batch=st.integers(0, 6),
       n0=st.integers(0, 9))
def test_property_mixed_chains(seed, k, dtype, per_sample, batch, n0):
    rng = np.random.default_rng(seed)
    spec = random_spec(rng, k, "mixed", ps_prob=0.5 if per_sample else 0.0)
    spec = [(t[0], int(rng.integers(0, 10))) if isinstance(t, tuple) else t
            for t in spec]
    lays = [LAYOUTS[int(i)] for i in rng.integers(len(LAYOUTS), size=k)]
    lays3 = [LAYOUTS3[int(i)] for i in rng.integers(len(LAYOUTS3), size=k)]
    links, dense, absf, kinds, dims = build(rng, spec, dtype, n0, batch=batch,
                                            layouts=lays, layouts3=lays3)
    chain = Chain(links)
    is_ps = any(J.ndim == 3 for J in dense)
    want = (np.float64 if all(x in (IDENT, SCALED) for x in kinds) else dtype)
    G = rng.standard_normal((batch, dims[-1])).astype(dtype)
    V = rng.standard_normal((batch, dims[0])).astype(dtype)
    assert chain.batch == (batch if is_ps else None)
    res = chain.jacobian()
    assert_close(res, ref_jacobian(dense), ref_jacobian(absf), want)
    assert_close(chain.vjp(G), ref_vjp(dense, G), ref_vjp(absf, np.abs(G)), dtype)
    assert_close(chain.jvp(V), ref_jvp(dense, V), ref_jvp(absf, np.abs(V)), dtype)
    if not is_ps:
        for mode in MODES:
            check_plan(chain, kinds, dims, mode, batch)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shared_layout", ["C", "F", "strided"])
@pytest.mark.parametrize("big", [False, True], ids=["in-run", "blas"])
def test_per_sample_with_shared_stretch(rng, restore_threads, dtype,
                                        shared_layout, big):
    # issue 12, item 9: [per-sample, shared, shared, per-sample] with thin
    # shared links (small: each sample's rows go through them inside the
    # sample-blocked run) or wide ones (over the run's size limit: a BLAS
    # product of the whole block between two runs); both against NumPy, with
    # intermediates, and the same bits on 1, 2 and 3 threads
    threads_compared()
    B, w = 37, (300 if big else 12)
    n0, n4 = 20, 9

    def lay(A):
        if shared_layout == "F":
            return np.asfortranarray(A)
        if shared_layout == "strided":
            wide = np.zeros((A.shape[0], 2 * A.shape[1]), dtype)
            wide[:, ::2] = A
            return wide[:, ::2]
        return A

    J1 = rng.standard_normal((B, 64, n0)).astype(dtype)
    J2 = lay(rng.standard_normal((w, 64)).astype(dtype))
    J3 = lay(rng.standard_normal((64 if big else 40, w)).astype(dtype))
    J4 = rng.standard_normal((B, n4, J3.shape[0])).astype(dtype)
    links = [J1, J2, J3, J4]
    if big:
        assert J2.nbytes > 64 << 10 or J3.nbytes > 64 << 10
    dense = [np.asarray(J, np.float64) for J in links]
    absf = [np.abs(J) for J in dense]
    G = rng.standard_normal((B, n4)).astype(dtype)
    V = rng.standard_normal((B, n0)).astype(dtype)
    results = {}
    for nt in (1, 2, 3):
        gradchain.set_num_threads(nt)
        chain = Chain(links)
        tv, tj = chain.vjp(G, intermediates=True), chain.jvp(V, intermediates=True)
        results[nt] = (chain.vjp(G), chain.jvp(V), tv[0], tj[4], tv[2], tj[2])
    for nt in (2, 3):
        for a, b in zip(results[1], results[nt]):
            assert np.array_equal(a, b)
    r = results[2]
    assert_close(r[0], ref_vjp(dense, G), ref_vjp(absf, np.abs(G)), dtype)
    assert_close(r[1], ref_jvp(dense, V), ref_jvp(absf, np.abs(V)), dtype)
    assert np.array_equal(r[2], r[0]) and np.array_equal(r[3], r[1])
    # the middle of the trajectories: lambda_2 = G J4 J3, t_2 = J2 J1 V
    assert_close(r[4], ref_vjp(dense[2:], G), ref_vjp(absf[2:], np.abs(G)), dtype)
    assert_close(r[5], ref_jvp(dense[:2], V), ref_jvp(absf[:2], np.abs(V)), dtype)
