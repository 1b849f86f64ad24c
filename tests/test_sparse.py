"""Sparse (scipy.sparse) and matrix-free (LinearOperator) links.

References are dense NumPy float64 products of ``.toarray()`` (or of the
operator's dense matrix); the error bound is conftest's rounding-error
scale, so a missed or doubled entry fails while reassociation never does.
"""
import numpy as np
import pytest

import gradchain as gc
from conftest import DTYPES, TOL, threads_compared

sp = pytest.importorskip("scipy.sparse")
spla = pytest.importorskip("scipy.sparse.linalg")

FORMATS = ["csr", "csc", "coo", "bsr", "dia", "lil", "dok"]


def f64(a):
    return np.asarray(a, dtype=np.float64)


def dense_of(J):
    if sp.issparse(J):
        return f64(J.toarray())
    if isinstance(J, spla.LinearOperator):
        return f64(J @ np.eye(J.shape[1]))
    if isinstance(J, gc.Operator):
        return f64(J.todense())
    return f64(J)


def check(res, ref, scale, dtype):
    """res in dtype, within TOL of ref on the scale of |...| products."""
    dtype = np.dtype(dtype)
    assert isinstance(res, np.ndarray) and res.dtype == dtype, (type(res), res.dtype)
    assert res.shape == ref.shape, (res.shape, ref.shape)
    bound = TOL[dtype] * (np.abs(scale) + 1e-300) * 50
    err = np.abs(f64(res) - ref)
    assert np.all(err <= bound), float(np.max(err - bound))


def sparse(rng, m, n, density, fmt, dtype=np.float64, kind="array"):
    A = sp.random(m, n, density=density, format="csr", dtype=np.float64,
                  random_state=rng, data_rvs=lambda k: rng.standard_normal(k))
    A = A.astype(dtype)
    A = A.asformat(fmt)
    if kind == "array":
        A = sp.csr_array(A).asformat(fmt) if fmt != "dok" else sp.dok_array(A)
    return A


def chain_refs(Js):
    """Dense product J_k ... J_1 and the product of |J_i| (error scale)."""
    D = [dense_of(J) for J in Js]
    P, A = D[0], np.abs(D[0])
    for J in D[1:]:
        P, A = J @ P, np.abs(J) @ A
    return P, A


# --------------------------------------------------------------------------
# every format, index dtype and data dtype against the dense product
# --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["array", "matrix"])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_formats_match_dense(rng, fmt, dtype, kind):
    S1 = sparse(rng, 30, 20, 0.2, fmt, dtype, kind)
    S2 = sparse(rng, 25, 30, 0.15, fmt, dtype, kind)
    D = rng.standard_normal((10, 25)).astype(dtype)
    Js = [S1, S2, D]
    P, A = chain_refs(Js)
    g = rng.standard_normal(10).astype(dtype)
    v = rng.standard_normal(20).astype(dtype)
    G = rng.standard_normal((7, 10)).astype(dtype)
    V = rng.standard_normal((5, 20)).astype(dtype)
    c = gc.Chain(Js)
    assert c.dtype == dtype and c.shapes == ((30, 20), (25, 30), (10, 25))
    check(c.vjp(g), P.T @ f64(g), A.T @ np.abs(f64(g)), dtype)
    check(c.jvp(v), P @ f64(v), A @ np.abs(f64(v)), dtype)
    check(c.vjp(G), f64(G) @ P, np.abs(f64(G)) @ A, dtype)
    check(c.jvp(V), f64(V) @ P.T, np.abs(f64(V)) @ A.T, dtype)
    check(c.jacobian(), P, A, dtype)
    check(gc.vjp(Js, g), P.T @ f64(g), A.T @ np.abs(f64(g)), dtype)
    check(gc.jvp(Js, v), P @ f64(v), A @ np.abs(f64(v)), dtype)
    check(gc.jacobian(Js), P, A, dtype)


@pytest.mark.parametrize("fmt", ["csr", "csc"])
@pytest.mark.parametrize("idx", [np.int32, np.int64])
@pytest.mark.parametrize("dtype", DTYPES)
def test_csr_csc_read_in_place(rng, fmt, idx, dtype):
    S = sparse(rng, 40, 30, 0.1, fmt, dtype)
    S.indices = S.indices.astype(idx)
    S.indptr = S.indptr.astype(idx)
    c = gc.Chain([S])
    assert c.jacobians[0] is S                  # the caller's object, bound
    g = rng.standard_normal(40).astype(dtype)
    before = c.vjp(g)
    # the data is read in place: a change is seen by the next call
    S.data *= 2
    after = c.vjp(g)
    check(after, dense_of(S).T @ f64(g), np.abs(dense_of(S)).T @ np.abs(f64(g)), dtype)
    assert np.array_equal(after, 2 * before)


def test_mixed_index_dtypes_and_other_dtypes(rng):
    # int32 indices with int64 indptr, int16 data: converted, still right
    S = sparse(rng, 12, 9, 0.3, "csr")
    S.indptr = S.indptr.astype(np.int64)
    g = rng.standard_normal(12)
    check(gc.vjp([S], g), dense_of(S).T @ g, np.abs(dense_of(S)).T @ np.abs(g), np.float64)
    Si = sp.csr_array((np.arange(1, 6, dtype=np.int16), [0, 1, 2, 0, 1], [0, 2, 3, 5]),
                      shape=(3, 3))
    res = gc.vjp([Si], np.ones(3, np.float32))
    assert res.dtype == np.float64                  # int data: float64
    assert np.array_equal(res, Si.toarray().T @ np.ones(3))
    # float32 sparse in a float64 chain: promoted (data converted)
    S32 = sparse(rng, 9, 9, 0.3, "csc", np.float32)
    D = rng.standard_normal((4, 9))
    P, A = chain_refs([S32, D])
    check(gc.jacobian([S32, D]), P, A, np.float64)


# --------------------------------------------------------------------------
# structure edge cases
# --------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_unsorted_duplicates_zeros_empty(rng, fmt):
    # line 0: unsorted, with a duplicate (summed, as scipy does) and an
    # explicit zero; line 1 empty; line 2 one entry
    data = np.array([1.5, -2.0, 0.0, 4.0, 0.25])
    indices = np.array([3, 1, 2, 1, 0])
    indptr = np.array([0, 4, 4, 5])
    cls = sp.csr_array if fmt == "csr" else sp.csc_array
    shape = (3, 4) if fmt == "csr" else (4, 3)
    S = cls((data, indices, indptr), shape=shape)
    assert not S.has_canonical_format
    ref = f64(S.toarray())
    g = rng.standard_normal(shape[0])
    v = rng.standard_normal(shape[1])
    assert np.allclose(gc.vjp([S], g), ref.T @ g, rtol=1e-15, atol=1e-15)
    assert np.allclose(gc.jvp([S], v), ref @ v, rtol=1e-15, atol=1e-15)
    A = gc.jacobian([S])                         # csr_array, canonical
    assert sp.issparse(A) and A.format == "csr" and A.has_canonical_format
    assert np.array_equal(A.toarray(), ref)
    assert np.array_equal(gc.jacobian([S], format="dense"), ref)
    assert not S.has_canonical_format           # not canonicalised by gradchain


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_empty_and_zero_size(rng, fmt):
    Z = sp.csr_array((5, 4)).asformat(fmt)      # nnz = 0
    assert np.array_equal(gc.vjp([Z], np.ones(5)), np.zeros(4))
    assert np.array_equal(gc.jvp([Z], np.ones(4)), np.zeros(5))
    assert np.array_equal(gc.jacobian([Z], format="dense"), np.zeros((5, 4)))
    A = gc.jacobian([Z])
    assert sp.issparse(A) and A.shape == (5, 4) and A.nnz == 0
    for shape in [(0, 4), (4, 0), (0, 0)]:
        E = sp.csr_array(shape).asformat(fmt)
        assert gc.vjp([E], np.ones(shape[0])).shape == (shape[1],)
        assert np.array_equal(gc.jvp([E], np.ones(shape[1])), np.zeros(shape[0]))
        assert gc.jacobian([E]).shape == shape
        assert gc.jacobian([E], format="dense").shape == shape
    # through a zero-width sparse intermediate: zeros
    Js = [sp.csr_array((0, 3)), sp.csr_array((2, 0))]
    assert np.array_equal(gc.vjp(Js, np.ones(2)), np.zeros(3))


def _corrupt(rng, fmt, what):
    S = sparse(rng, 6, 5, 0.5, fmt)
    S.sum_duplicates()
    if what == "indptr0":
        S.indptr = S.indptr + 1
    elif what == "decreasing":
        S.indptr[2], S.indptr[3] = S.indptr[3], S.indptr[2] - 1
        if S.indptr[2] <= S.indptr[3]:
            S.indptr[3] = S.indptr[2] - 1
    elif what == "beyond":
        S.indptr[-1] = S.indices.shape[0] + 3
    elif what == "index_high":
        S.indices[1] = S.shape[1 if fmt == "csr" else 0] + 2
    elif what == "index_negative":
        S.indices[0] = -1
    elif what == "short_indptr":
        S.indptr = S.indptr[:-1].copy()
    return S


@pytest.mark.parametrize("fmt", ["csr", "csc"])
@pytest.mark.parametrize("what,match", [
    ("indptr0", r"indptr\[0\] is 1, not 0"),
    ("decreasing", r"indptr decreases at (rows|columns) 2 -> 3"),
    ("beyond", r"indptr\[-1\] = \d+ exceeds the \d+ stored entries"),
    ("index_high", r"indices\[1\] = \d+ is not a (column|row) index in \[0, \d+\)"),
    ("index_negative", r"indices\[0\] = -1 is not a (column|row) index"),
    ("short_indptr", r"an indptr of \d+ entries; expected \d+"),
])
def test_corrupt_structure_raises(rng, fmt, what, match):
    S = _corrupt(rng, fmt, what)
    D = np.ones((2, S.shape[0]))
    with pytest.raises(ValueError, match=r"jacobians\[1\] .*corrupt structure: " + match
                       if what != "short_indptr" else r"jacobians\[1\] .*" + match):
        gc.Chain([np.ones((S.shape[1], 3)), S, D])


def test_complex_and_bad_rank_rejected():
    C = sp.csr_array(np.array([[1 + 1j, 0], [0, 1]]))
    with pytest.raises(TypeError, match=r"jacobians\[0\] has complex dtype"):
        gc.vjp([C], np.ones(2))
    if hasattr(sp, "coo_array"):
        try:
            one_d = sp.coo_array(np.array([1.0, 0.0, 2.0]))
        except (ValueError, TypeError):
            one_d = None
        if one_d is not None and len(one_d.shape) == 1:
            with pytest.raises(ValueError, match=r"jacobians\[0\] is a 1-D sparse array"):
                gc.vjp([one_d], np.ones(3))


def test_nan_inf_propagate_like_numpy(rng):
    S = sparse(rng, 8, 8, 0.4, "csr")
    S.data[0] = np.nan
    S.data[1] = np.inf
    D = dense_of(S)
    g = rng.standard_normal(8)
    with np.errstate(invalid="ignore"):
        ref_t, ref = D.T @ g, D @ g
    res_t, res = gc.vjp([S], g), gc.jvp([S], g)
    assert np.array_equal(np.isnan(res_t), np.isnan(ref_t))
    assert np.array_equal(np.isinf(res_t), np.isinf(ref_t))
    assert np.array_equal(np.isnan(res), np.isnan(ref))


def test_shape_mismatch_names_links(rng):
    S = sparse(rng, 5, 4, 0.5, "csr")
    with pytest.raises(ValueError, match=r"jacobians\[1\] has shape \(3, 6\) but "
                                         r"jacobians\[0\] outputs 5 values"):
        gc.Chain([S, np.ones((3, 6))])


# --------------------------------------------------------------------------
# mixing with dense, structured and per-sample links
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_mixed_with_structured_and_per_sample(rng, dtype):
    n, B = 12, 6
    S = sparse(rng, n, n, 0.25, "csr", dtype)
    T = sparse(rng, n, n, 0.25, "csc", dtype)
    d = rng.standard_normal(n).astype(dtype)
    P3 = rng.standard_normal((B, n, n)).astype(dtype)
    Js = [S, gc.Diagonal(d), T, P3, gc.Identity(n, scale=2.0)]
    G = rng.standard_normal((B, n)).astype(dtype)
    Ds = [dense_of(S), np.diag(f64(d)), dense_of(T)]
    for b in range(B):
        Pb = 2 * f64(P3[b]) @ Ds[2] @ Ds[1] @ Ds[0]
        Ab = 2 * np.abs(f64(P3[b])) @ np.abs(Ds[2]) @ np.abs(Ds[1]) @ np.abs(Ds[0])
        c = gc.Chain(Js)
        check(c.vjp(G)[b], f64(G[b]) @ Pb, np.abs(f64(G[b])) @ Ab, dtype)
        check(c.jacobian()[b], Pb, Ab, dtype)


def test_plan_counts_nnz(rng):
    S = sparse(rng, 50, 40, 0.1, "csr")
    c = gc.Chain([S])
    assert c.plan().cost == S.nnz
    assert c.plan(batch=8).cost == 8 * S.nnz
    D = rng.standard_normal((3, 50))
    c = gc.Chain([S, D])
    # jacobian: D (3 x 50) times S by rows: 3 * nnz
    assert c.plan(mode="jacobian").cost == 3 * S.nnz
    assert np.allclose(c.jacobian(), D @ S.toarray(), rtol=1e-13, atol=1e-13)


# --------------------------------------------------------------------------
# threads: bitwise the same for every count
# --------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["csr", "csc"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_thread_count_independence(rng, fmt, dtype, restore_threads):
    threads_compared()
    n = 20000
    S = sparse(rng, n, n, 5.0 / n, fmt, dtype)
    T = sparse(rng, n, n, 3.0 / n, "csr" if fmt == "csc" else "csc", dtype)
    c = gc.Chain([S, T])
    g = rng.standard_normal(n).astype(dtype)
    G = rng.standard_normal((8, n)).astype(dtype)
    results = []
    for t in (1, 2, 3, 4):
        gc.set_num_threads(t)
        results.append((c.vjp(g), c.jvp(g), c.vjp(G), c.jvp(G)))
    for r in results[1:]:
        for a, b in zip(results[0], r):
            assert np.array_equal(a, b)
    ref = S.T.astype(np.float64) @ (T.T.astype(np.float64) @ f64(g))
    scale = abs(S).T.astype(np.float64) @ (abs(T).T.astype(np.float64) @ np.abs(f64(g)))
    check(results[0][0], ref, scale, dtype)


# --------------------------------------------------------------------------
# nothing the caller passed is modified
# --------------------------------------------------------------------------

def test_inputs_not_modified(rng):
    Js = [sparse(rng, 9, 7, 0.3, f) for f in ("csr", "csc")]
    Js[1] = sparse(rng, 6, 9, 0.3, "csc")
    Js.append(sparse(rng, 5, 6, 0.3, "coo"))
    snap = [(J.data.copy(), getattr(J, "indices", getattr(J, "row", None)).copy())
            for J in Js]
    g = rng.standard_normal(5)
    gc.vjp(Js, g)
    gc.jvp(Js, rng.standard_normal(7))
    gc.jacobian(Js)
    gc.Chain(Js).vjp(rng.standard_normal((3, 5)))
    for J, (d, i) in zip(Js, snap):
        assert np.array_equal(J.data, d)
        assert np.array_equal(getattr(J, "indices", getattr(J, "row", None)), i)
    assert Js[2].format == "coo"


# --------------------------------------------------------------------------
# matrix-free links
# --------------------------------------------------------------------------

class Counting:
    """A matrix-free link from a dense M, counting its calls; optional
    matmat."""

    def __init__(self, M, block=True, dtype=True):
        self.M = M
        self.shape = M.shape
        if dtype:
            self.dtype = M.dtype
        self.calls = []
        if block:
            self.matmat = lambda X: (self.calls.append("matmat"), self.M @ X)[1]
            self.rmatmat = lambda Y: (self.calls.append("rmatmat"), self.M.T @ Y)[1]

    def matvec(self, x):
        self.calls.append("matvec")
        return self.M @ x

    def rmatvec(self, y):
        self.calls.append("rmatvec")
        return self.M.T @ y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block", [True, False])
def test_matrix_free_links(rng, dtype, block):
    A = rng.standard_normal((8, 6)).astype(dtype)
    M = rng.standard_normal((7, 8)).astype(dtype)
    D = rng.standard_normal((5, 7)).astype(dtype)
    op = Counting(M, block=block)
    Js = [A, op, D]
    P, Abs = chain_refs([A, M, D])
    g = rng.standard_normal(5).astype(dtype)
    c = gc.Chain(Js)
    check(c.vjp(g), P.T @ f64(g), Abs.T @ np.abs(f64(g)), dtype)
    assert op.calls == ["rmatvec"]
    v = rng.standard_normal(6).astype(dtype)
    check(c.jvp(v), P @ f64(v), Abs @ np.abs(f64(v)), dtype)
    G = rng.standard_normal((4, 5)).astype(dtype)
    op.calls.clear()
    check(c.vjp(G), f64(G) @ P, np.abs(f64(G)) @ Abs, dtype)
    assert op.calls == (["rmatmat"] if block else ["rmatvec"] * 4)
    check(c.jacobian(), P, Abs, dtype)
    # scipy's LinearOperator, and aslinearoperator of a sparse matrix
    L = spla.aslinearoperator(M)
    check(gc.Chain([A, L, D]).vjp(G), f64(G) @ P, np.abs(f64(G)) @ Abs, dtype)


def test_matrix_free_without_dtype_takes_the_chain_dtype(rng):
    M = rng.standard_normal((4, 4))
    op = Counting(M, dtype=False)
    c = gc.Chain([np.eye(4, dtype=np.float32), op])
    assert c.dtype == np.float32
    res = c.vjp(np.ones(4, np.float32))
    assert res.dtype == np.float32
    assert np.allclose(res, M.T @ np.ones(4), rtol=1e-5)


def test_matrix_free_callback_errors(rng):
    M = rng.standard_normal((4, 3))

    class Bad(Counting):
        def __init__(self, M, result):
            super().__init__(M, block=False)
            self.result = result

        def rmatvec(self, y):
            return self.result(y)

    D = np.ones((2, 4))
    for res, exc, match in [
            (lambda y: np.ones(5), ValueError,
             r"jacobians\[1\] \(Bad\)\.rmatvec returned shape \(5,\), expected \(3,\)"),
            (lambda y: np.ones(3, complex), ValueError,
             r"jacobians\[1\] \(Bad\)\.rmatvec returned dtype complex128"),
            (lambda y: 1 / 0, ZeroDivisionError, "division by zero")]:
        c = gc.Chain([np.ones((3, 2)), Bad(M, res), D])
        with pytest.raises(exc, match=match):
            c.vjp(np.ones(2))
        with pytest.raises(exc, match=match):
            c.vjp(np.ones((3, 2)))
        # the chain stays usable
        with pytest.raises(exc):
            c.jacobian()
    with pytest.raises(TypeError, match=r"jacobians\[0\] \(Counting\) has shape"):
        op = Counting(M)
        op.shape = (4, -1)
        gc.Chain([op])


def test_matrix_free_per_sample_jacobian(rng):
    # a matrix-free link in a per-sample chain: its callbacks run on the
    # calling thread
    B, n = 5, 4
    M = rng.standard_normal((n, n))
    P3 = rng.standard_normal((B, n, n))
    c = gc.Chain([P3, Counting(M)])
    J = c.jacobian()
    for b in range(B):
        assert np.allclose(J[b], M @ P3[b], rtol=1e-13, atol=1e-13)


# --------------------------------------------------------------------------
# a Chain as a LinearOperator
# --------------------------------------------------------------------------

def test_linear_operator_hooks_and_overrides(rng):
    """A scipy LinearOperator is called through its public methods (SciPy's
    wrappers, which call the _matvec hooks and reshape, or an override);
    results are checked (a (n, 1) column is taken, a wrong shape or complex
    dtype raises); a one-vector result that is byte-swapped or a NumPy
    scalar of a (1, n) operator is taken by value."""
    from scipy.sparse.linalg import LinearOperator
    M = rng.standard_normal((6, 4))
    calls = []

    class Hooks(LinearOperator):
        def __init__(self):
            super().__init__(np.float64, M.shape)

        def _matvec(self, x):
            calls.append("_matvec")
            return (M @ x.ravel()).reshape(-1, 1)      # a column: allowed

        def _rmatvec(self, x):
            calls.append("_rmatvec")
            return M.T @ x

    class Override(Hooks):
        def rmatvec(self, x):
            calls.append("rmatvec")
            return 2 * (M.T @ x)

    g, v = rng.standard_normal(6), rng.standard_normal(4)
    np.testing.assert_allclose(gc.vjp([Hooks()], g), M.T @ g, rtol=1e-13)
    np.testing.assert_allclose(gc.jvp([Hooks()], v), M @ v, rtol=1e-13)
    assert calls == ["_rmatvec", "_matvec"]
    calls.clear()
    np.testing.assert_allclose(gc.vjp([Override()], g), 2 * (M.T @ g), rtol=1e-13)
    assert calls == ["rmatvec"]
    G = rng.standard_normal((3, 6))
    np.testing.assert_allclose(gc.vjp([Hooks()], G), G @ M, rtol=1e-13)

    class Bad(Hooks):
        def _rmatvec(self, x):
            return np.zeros(5)

    with pytest.raises(ValueError, match="shape"):     # SciPy's reshape refuses
        gc.vjp([Bad()], g)

    class Complex(Hooks):
        def _rmatvec(self, x):
            return (M.T @ x) * 1j

    with pytest.raises(ValueError, match="real"):
        gc.vjp([Complex()], g)

    class Swapped(Hooks):
        def _rmatvec(self, x):
            return (M.T @ x).astype(">f8")

    np.testing.assert_allclose(gc.vjp([Swapped()], g), M.T @ g, rtol=1e-13)
    w = rng.standard_normal(4)
    row = LinearOperator((1, 4), matvec=lambda x: w @ x, rmatvec=lambda y: w * y,
                         dtype=np.float64)
    np.testing.assert_allclose(gc.jvp([row], v), [w @ v], rtol=1e-13)


def test_as_linear_operator_svds_lsqr(rng):
    n = 60
    Js = [sparse(rng, n, n, 0.1, "csr") + sp.eye_array(n, format="csr"),
          rng.standard_normal((40, n)) / 8, gc.Diagonal(rng.uniform(1, 2, 40))]
    c = gc.Chain(Js)
    P, _ = chain_refs(Js)
    L = c.as_linear_operator()
    assert L.shape == (40, n) and L.dtype == np.float64
    x = rng.standard_normal(n)
    assert np.allclose(L @ x, P @ x, rtol=1e-12, atol=1e-12)
    y = rng.standard_normal(40)
    assert np.allclose(L.T @ y, P.T @ y, rtol=1e-12, atol=1e-12)
    X = rng.standard_normal((n, 3))
    assert np.allclose(L @ X, P @ X, rtol=1e-12, atol=1e-12)
    assert np.allclose(L.H @ X[:40], P.T @ X[:40], rtol=1e-12, atol=1e-12)
    s = spla.svds(L, k=3, return_singular_vectors=False, random_state=0)
    ref = np.linalg.svd(P, compute_uv=False)[:3]
    assert np.allclose(np.sort(s)[::-1], ref, rtol=1e-8)
    b = rng.standard_normal(40)
    sol = spla.lsqr(L, b, atol=1e-14, btol=1e-14, iter_lim=2000)[0]
    ref = np.linalg.lstsq(P, b, rcond=None)[0]
    assert np.allclose(sol, ref, rtol=1e-6, atol=1e-8)
    # the usual protocol
    L2 = spla.aslinearoperator(c)
    assert np.allclose(L2.rmatvec(b), P.T @ b, rtol=1e-12, atol=1e-12)
    # a chain is a matrix-free link of another chain
    outer = gc.Chain([np.eye(n), c])
    assert np.allclose(outer.vjp(b), P.T @ b, rtol=1e-12, atol=1e-12)


def test_as_linear_operator_refuses_what_is_no_matrix(rng):
    with pytest.raises(ValueError, match="empty chain"):
        gc.Chain([]).as_linear_operator()
    with pytest.raises(ValueError, match="per-sample"):
        gc.Chain([rng.standard_normal((3, 2, 2))]).as_linear_operator()


# --------------------------------------------------------------------------
# the kernels' typed-memoryview entry point, and structures that change
# after they were bound
# --------------------------------------------------------------------------

@pytest.mark.parametrize("idx", [np.int32, np.int64])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_rows_entry_point(rng, idx, dtype):
    from gradchain._link import sparse_rows
    S = sparse(rng, 13, 9, 0.3, "csr", dtype)
    data, indices, indptr = S.data, S.indices.astype(idx), S.indptr.astype(idx)
    D = dense_of(S)
    X = rng.standard_normal((4, 9)).astype(dtype)
    out = np.empty((4, 13), dtype)
    sparse_rows(data, indices, indptr, 9, X, out, True)        # J x of the CSR
    check(out, f64(X) @ D.T, np.abs(f64(X)) @ np.abs(D).T, dtype)
    Y = rng.standard_normal((4, 13)).astype(dtype)
    out = np.empty((4, 9), dtype)
    sparse_rows(data, indices, indptr, 9, Y, out, False)       # J^T y
    check(out, f64(Y) @ D, np.abs(f64(Y)) @ np.abs(D), dtype)
    bad = indices.copy()
    bad[0] = 9
    with pytest.raises(ValueError, match="corrupt structure"):
        sparse_rows(data, bad, indptr, 9, X, np.empty((4, 13), dtype), True)


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_structure_changed_after_binding_raises(rng, fmt):
    # the chain reads indices and indptr in place; made corrupt after the
    # check, they are bounded by the kernels: a ValueError, never a read
    # out of bounds
    S = sparse(rng, 50, 40, 0.2, fmt)
    c = gc.Chain([S, np.ones((3, 50))])
    g = np.ones(3)
    c.vjp(g)
    S.indices[3] = 10 ** 6
    for call in (lambda: c.vjp(g), lambda: c.jvp(np.ones(40)), c.jacobian,
                 lambda: c.vjp(np.ones((5, 3)))):
        with pytest.raises(ValueError, match="out of bounds now"):
            call()
    S.indices[3] = 0
    S.indptr[5] = 10 ** 6
    with pytest.raises(ValueError, match="out of bounds now"):
        c.vjp(g)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_float32_chain_promoted_by_a_float64_vector(rng, fmt):
    # a float32 chain given a float64 vector computes in float64, as NumPy
    # would: sparse and matrix-free links included
    S = sparse(rng, 9, 7, 0.3, fmt, np.float32)
    M = rng.standard_normal((5, 9)).astype(np.float32)
    Js = [S, Counting(M), gc.Diagonal(np.ones(5, np.float32))]
    c = gc.Chain(Js)
    assert c.dtype == np.float32
    g = rng.standard_normal(5)
    res = c.vjp(g)
    assert res.dtype == np.float64
    ref = dense_of(S).T @ (f64(M).T @ g)
    assert np.allclose(res, ref, rtol=1e-6, atol=1e-6)
    res = c.jvp(rng.standard_normal(7))
    assert res.dtype == np.float64


def test_sparse_dtype_is_read_from_the_bound_data():
    # a subclass whose dtype lies about its data: the data the kernels
    # would read decides (complex: TypeError, never a silent cast)
    class Lying(sp.csr_array):
        @property
        def dtype(self):
            return np.dtype(np.float64)

    C = Lying(sp.csr_array(np.array([[1 + 1j, 0], [0, 1]])))
    with pytest.raises(TypeError, match=r"jacobians\[0\] has complex dtype"):
        gc.vjp([C], np.ones(2))


# --------------------------------------------------------------------------
# the scatter's partition (J^T g of a CSR, J v of a CSC): chunks of lines
# summed apart, then in chunk order; bitwise against np.add.at in that order
# --------------------------------------------------------------------------

NPART = 1 << 17


def _rows_to_csr(rows, n, dtype, rng, shuffle=True):
    """A CSR from per-row (columns, values), entries in the given order
    (shuffled within rows when asked: unsorted indices, duplicates kept)."""
    indptr = np.zeros(len(rows) + 1, np.int64)
    cols, vals = [], []
    for i, (c, v) in enumerate(rows):
        if shuffle and len(c) > 1:
            o = rng.permutation(len(c))
            c, v = c[o], v[o]
        cols.append(c)
        vals.append(v)
        indptr[i + 1] = indptr[i] + len(c)
    return sp.csr_array((np.concatenate(vals).astype(dtype),
                         np.concatenate(cols).astype(np.int32),
                         indptr.astype(np.int32)), shape=(len(rows), n))


def _partition_cases(rng, dtype):
    n = NPART
    out = {}
    out["tridiagonal"] = sp.diags_array(
        [rng.standard_normal(n - 1), rng.standard_normal(n), rng.standard_normal(n - 1)],
        offsets=[-1, 0, 1], format="csr", dtype=dtype)
    # pentadiagonal rows, shuffled, with duplicates, empty rows and (one
    # case) a few long-range entries: each widens its chunk's span over its
    # neighbours' exclusive intervals, so fewer chunks, maybe one, pass the
    # workspace cap
    rows = []
    far = set(rng.choice(n, 12, replace=False).tolist())
    for i in range(n):
        if i % 7 == 3:
            rows.append((np.zeros(0, np.int64), np.zeros(0)))
            continue
        c = np.arange(max(i - 2, 0), min(i + 3, n))
        if i % 5 == 0:
            c = np.append(c, i)                       # a duplicate
        if i in far:
            c = np.append(c, rng.integers(0, n))      # long range
        rows.append((c, rng.standard_normal(len(c))))
    out["long-range entries"] = _rows_to_csr(rows, n, dtype, rng)
    out["pentadiagonal, shuffled"] = _rows_to_csr(
        [(c[np.abs(c - i) <= 2], v[np.abs(c - i) <= 2]) for i, (c, v) in enumerate(rows)],
        n, dtype, rng)
    # blocks of 8 on the diagonal
    rows = [(np.arange(i - i % 8, i - i % 8 + 8), rng.standard_normal(8)) for i in range(n)]
    out["block diagonal"] = _rows_to_csr(rows, n, dtype, rng, shuffle=False)
    # one long-range entry, row 10 to column 3n/16 + 5: at 16 chunks it
    # covers chunks 1-2 (no exclusive interval left) and too much is
    # shared; at 8, chunk 0's exclusive interval is cut on the right and
    # chunk 1's on the left, a gap of ~n/16 columns between
    T = out["tridiagonal"].tolil()
    T[10, 3 * n // 16 + 5] = 1.5
    out["one long-range entry"] = sp.csr_array(T.tocsr())
    # a banded structure whose rows are permuted: every chunk's span is wide
    perm = rng.permutation(n)
    out["permuted rows"] = out["tridiagonal"][perm]
    return out


def _chunked_scatter_ref(S, part, X):
    """The scatter's sums in the partition's order: each chunk's entries
    added in storage order (np.add.at is sequential), then out = 0 + ws_0 +
    ws_1 + ... (a column no chunk touches adds exact zeros)."""
    dtype = S.data.dtype
    nb = S.shape[1]
    B = X.shape[0]
    out = np.zeros((B, nb), dtype)
    ptr = S.indptr
    for c in range(part["chunks"]):
        l0, l1 = part["bounds"][c], part["bounds"][c + 1]
        p0, p1 = ptr[l0], ptr[l1]
        lines = np.repeat(np.arange(l0, l1), np.diff(ptr[l0:l1 + 1]))
        for b in range(B):
            ws = np.zeros(nb, dtype)
            np.add.at(ws, S.indices[p0:p1], S.data[p0:p1] * X[b, lines])
            out[b] = out[b] + ws
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_scatter_partition(rng, dtype, restore_threads):
    """Every case's partition is a valid one (chunks cover the lines, every
    entry inside its chunk's span, exclusive intervals met by no other
    span, gaps and exclusive intervals tile [0, n), workspace within the
    cap); J^T g of the CSR and J v of its CSC twin equal the chunked
    reference bit for bit, for 1-4 threads and block sizes around a tile."""
    from gradchain._link import sparse_partition
    threads_compared()
    n = NPART
    for name, S in _partition_cases(rng, dtype).items():
        part = sparse_partition(S.indices, S.indptr, n)
        P, bounds = part["chunks"], part["bounds"]
        assert bounds[0] == 0 and bounds[-1] == S.shape[0], name
        assert all(a <= b for a, b in zip(bounds, bounds[1:])), name
        shared = 0
        for c in range(P):
            lo, hi = part["spans"][c]
            ea, eb = part["exclusive"][c]
            seg = S.indices[S.indptr[bounds[c]]:S.indptr[bounds[c + 1]]]
            if len(seg):
                assert lo == seg.min() and hi == seg.max() + 1, (name, c)
            assert lo <= ea <= eb <= hi, (name, c)
            for d in range(P):
                dlo, dhi = part["spans"][d]
                if d != c and dlo < dhi and ea < eb:
                    assert dhi <= ea or dlo >= eb, (name, c, d)
            shared += (ea - lo) + (hi - eb)
        if P > 1:
            assert shared <= n // 4, name
        tiles = sorted([e for e in part["exclusive"] if e[0] < e[1]] + part["gaps"])
        assert tiles[0][0] == 0 and tiles[-1][1] == n, name
        assert all(a[1] == b[0] for a, b in zip(tiles, tiles[1:])), name
        if name in ("tridiagonal", "block diagonal", "pentadiagonal, shuffled"):
            assert P == 16, (name, P)
        elif name == "one long-range entry":
            assert P == 8, (name, P)
            assert part["exclusive"][0][1] < 3 * n // 16 + 6 <= part["exclusive"][1][0]
            assert any(b - a > n // 32 for a, b in part["gaps"]), part["gaps"]
        elif name == "permuted rows":
            assert P == 1, (name, P)      # every span is all of [0, n)
        G = rng.standard_normal((11, S.shape[0])).astype(dtype)
        ref = _chunked_scatter_ref(S, part, G)
        St = sp.csc_array((S.data, S.indices, S.indptr), shape=S.shape[::-1])
        for t in (1, 2, 3, 4):
            gc.set_num_threads(t)
            for B in (1, 8, 11):
                assert np.array_equal(gc.Chain([S]).vjp(G[:B] if B > 1 else G[0]),
                                      ref[:B] if B > 1 else ref[0]), (name, t, B)
            assert np.array_equal(gc.Chain([St]).jvp(G[3]), ref[3]), (name, t)
        # and against the dense-free float64 product
        check(gc.Chain([S]).vjp(G[5]), S.T.astype(np.float64) @ f64(G[5]),
              abs(S).T.astype(np.float64) @ np.abs(f64(G[5])), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_run_tiles(rng, dtype, restore_threads):
    """A block of 8 rows or more runs a chain's consecutive sparse links on
    tiles (csrc/gc_sparse.h): the same bits as the row layout link by link
    (_link.sparse_rows), for 1-4 threads; from GC_SP_TILES_MIN tiles (32
    rows) on, a scatter splits tiles and sums each row in line order (the
    sequential reference), below that it keeps the partition's order."""
    from gradchain._link import sparse_rows
    threads_compared()
    n = NPART
    cases = _partition_cases(rng, dtype)
    S, S2 = cases["tridiagonal"], cases["pentadiagonal, shuffled"]
    St = sp.csc_array((S2.data, S2.indices, S2.indptr), shape=S2.shape[::-1])
    one = {"chunks": 1, "bounds": [0, n]}
    for B in (8, 11, 40):
        G = rng.standard_normal((B, n)).astype(dtype)
        # vjp of [St, S, S2]: S2^T (scatter), S^T (scatter), St^T (gather)
        ref = G
        for M, gather in ((S2, False), (S, False), (St, True)):
            nxt = np.empty((B, n), dtype)
            sparse_rows(M.data, M.indices, M.indptr, n, np.ascontiguousarray(ref),
                        nxt, gather)
            ref = nxt
        for t in (1, 2, 3, 4):
            gc.set_num_threads(t)
            assert np.array_equal(gc.Chain([St, S, S2]).vjp(G), ref), (B, t)
        if B == 40:
            for name, M in cases.items():
                seq = _chunked_scatter_ref(M, one, G)
                assert np.array_equal(gc.Chain([M]).vjp(G), seq), name
        x, a = f64(G[B - 1]), np.abs(f64(G[B - 1]))
        for M in (S2, S, St):
            x, a = M.T.astype(np.float64) @ x, abs(M).T.astype(np.float64) @ a
        check(gc.Chain([St, S, S2]).vjp(G[B - 1]), x, a, dtype)
    # runs between other kinds: dense, sparse, sparse, diagonal, sparse
    m = 300
    A = sp.random_array((m, m), density=0.02, random_state=3, format="csr").astype(dtype)
    D = rng.standard_normal((m, m)).astype(dtype) / m
    d = rng.standard_normal(m).astype(dtype)
    links = [D, A, A.tocsc(), gc.Diagonal(d), A]
    full = [D, A.toarray(), A.toarray(), np.diag(d), A.toarray()]
    for B in (5, 8, 20, 64):
        G = rng.standard_normal((B, m)).astype(dtype)
        V = rng.standard_normal((B, m)).astype(dtype)
        refg, refv = f64(G), f64(V)
        for M in reversed(full):
            refg = refg @ f64(M)
        for M in full:
            refv = refv @ f64(M).T
        np.testing.assert_allclose(gc.Chain(links).vjp(G), refg,
                                   rtol=1e-4 if dtype == np.float32 else 1e-12,
                                   atol=1e-5 if dtype == np.float32 else 1e-13)
        np.testing.assert_allclose(gc.Chain(links).jvp(V), refv,
                                   rtol=1e-4 if dtype == np.float32 else 1e-12,
                                   atol=1e-5 if dtype == np.float32 else 1e-13)
    X = np.zeros((12, n), dtype)
    with pytest.raises(ValueError, match="multiples of 8"):
        sparse_rows(S.data, S.indices, S.indptr, n, X, X.copy(), True, True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("itype", [np.int32, np.int64])
def test_transpose_copies(rng, dtype, itype, restore_threads):
    """Chain(..., transpose_copies=True): the products that would scatter
    gather over a copy in the other format, with the bits of the one-chunk
    scatter (each sum in line order: the sequential reference), for 1-4
    threads, rows and blocks; the copy's bytes are reported (repr too),
    survive pickling, and the copy is a snapshot of the data."""
    import pickle
    threads_compared()
    n = NPART
    cases = _partition_cases(rng, dtype)
    one = {"chunks": 1, "bounds": [0, n]}
    for name, S in cases.items():
        S = sp.csr_array((S.data, S.indices.astype(itype), S.indptr.astype(itype)),
                         shape=S.shape)
        St = sp.csc_array((S.data, S.indices, S.indptr), shape=S.shape[::-1])
        c = gc.Chain([S], transpose_copies=True)
        ct = gc.Chain([St], transpose_copies=True)
        G = rng.standard_normal((11, n)).astype(dtype)
        seq = _chunked_scatter_ref(S, one, G)
        for t in (1, 2, 4):
            gc.set_num_threads(t)
            assert np.array_equal(c.vjp(G[0]), seq[0]), (name, t)
            assert np.array_equal(c.vjp(G), seq), (name, t)
            assert np.array_equal(ct.jvp(G[:3]), seq[:3]), (name, t)
        # the gathers are unchanged
        assert np.array_equal(c.jvp(G[1]), gc.Chain([S]).jvp(G[1])), name
        nnz = S.indptr[-1]
        want = nnz * (np.dtype(dtype).itemsize + 4) + (n + 1) * 4
        assert c.transpose_copy_bytes == want, name
    assert "transpose copies" in repr(c) and "MiB" in repr(c)
    assert gc.Chain([S]).transpose_copy_bytes is None
    assert "transpose copies" not in repr(gc.Chain([S]))
    if dtype == np.float32:     # promoted per call: the copy kept
        g64 = rng.standard_normal(n)
        S64 = sp.csr_array((S.data.astype(np.float64), S.indices, S.indptr),
                           shape=S.shape)
        assert np.array_equal(c.vjp(g64),
                              gc.Chain([S64], transpose_copies=True).vjp(g64))
    c2 = pickle.loads(pickle.dumps(c))
    assert c2.transpose_copy_bytes == c.transpose_copy_bytes
    assert np.array_equal(c2.vjp(G[2]), c.vjp(G[2]))
    # mixed with dense links and a tiled run, against float64 products
    D = rng.standard_normal((7, n)).astype(dtype) / np.sqrt(n)
    mixed = gc.Chain([S, St, D], transpose_copies=True)
    H = rng.standard_normal((9, 7)).astype(dtype)
    ref = ((f64(H) @ f64(D)) @ St.astype(np.float64)) @ S.astype(np.float64)
    np.testing.assert_allclose(mixed.vjp(H), ref, rtol=1e-3 if dtype == np.float32
                               else 1e-11, atol=1e-3 if dtype == np.float32 else 1e-11)
    # a snapshot: an in-place change of the data is seen where the original
    # is read (J v of a CSR), not through the copy (J^T g)
    A = sp.random_array((50, 40), density=0.2, random_state=1, format="csr",
                        dtype=dtype)
    ca = gc.Chain([A], transpose_copies=True)
    g, v = rng.standard_normal(50).astype(dtype), rng.standard_normal(40).astype(dtype)
    before = ca.vjp(g)
    A.data *= 2
    assert np.array_equal(ca.vjp(g), before)
    np.testing.assert_allclose(ca.jvp(v), A @ v, rtol=1e-5)
    with pytest.raises(TypeError, match="transpose_copies"):
        gc.Chain([A], transpose_copies="yes")
    with pytest.raises(TypeError, match="keyword transpose_copies"):
        gc.Chain([A], copies=True)


def test_scatter_partition_structure_changed(rng):
    """An index edited in place after binding, still below n but outside
    its chunk's span, is reported (ValueError), not written out of place;
    the gather (J v) is not partitioned and follows the edit."""
    n = NPART
    S = sp.diags_array([np.ones(n - 1), np.ones(n), np.ones(n - 1)],
                       offsets=[-1, 0, 1], format="csr")
    c = gc.Chain([S])
    g = rng.standard_normal(n)
    before = c.vjp(g)
    S.indices[1] = n - 1                 # row 0's second entry, chunk 0
    with pytest.raises(ValueError, match="changed after"):
        c.vjp(g)
    v = rng.standard_normal(n)
    assert np.array_equal(c.jvp(v), S @ v)
    S.indices[1] = n + 5                 # out of range: jacobian()'s SpGEMM
    with pytest.raises(ValueError, match="changed after"):
        c.jacobian()
    S.indices[1] = 1
    assert np.array_equal(c.vjp(g), before)


def test_sparse_partition_refuses_corrupt_structure():
    from gradchain._link import sparse_partition
    with pytest.raises(ValueError, match="corrupt"):
        sparse_partition(np.array([0, 5], np.int32), np.array([0, 2], np.int32), 3)
    with pytest.raises(ValueError, match="corrupt"):
        sparse_partition(np.array([0, 1], np.int32), np.array([0, 2, 1], np.int32), 3)
    d = sparse_partition(np.zeros(0, np.int64), np.zeros(4, np.int64), 5)
    assert d["chunks"] == 1 and d["gaps"] == [] and d["exclusive"] == [(0, 5)]


# --------------------------------------------------------------------------
# jacobian(): a csr_array for chains of sparse and diagonal-like links
# --------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_jacobian(rng, fmt, dtype):
    """Sparse, diagonal, c I and I links: a canonical csr_array of the
    chain's dtype, the dense product's values and scipy's loop's nnz."""
    n = 60
    Js = [sparse(rng, n, n, 0.05, fmt, dtype),
          gc.Diagonal(rng.standard_normal(n).astype(dtype)),
          sparse(rng, n, n, 0.05, "csr", dtype),
          gc.Identity(n, scale=-1.5),
          gc.Identity(n),
          sparse(rng, 40, n, 0.08, "csc", dtype)]
    before = [J.copy() for J in Js if sp.issparse(J)]
    A = gc.jacobian(Js)
    assert sp.issparse(A) and A.format == "csr" and A.dtype == np.dtype(dtype)
    assert A.has_canonical_format
    P, absP = chain_refs(Js)
    check(A.toarray(), P, absP, dtype)
    loop = sp.csr_array(Js[0]).astype(np.float64)
    for J in Js[1:]:
        M = sp.csr_array(dense_of(J)) if isinstance(J, gc.Operator) else J
        loop = sp.csr_array(M.astype(np.float64) @ loop)
    loop.eliminate_zeros()
    A.eliminate_zeros()
    assert A.nnz == loop.nnz
    D = gc.jacobian(Js, format="dense")
    assert isinstance(D, np.ndarray) and D.dtype == np.dtype(dtype)
    check(D, P, absP, dtype)
    for b, J in zip(before, [J for J in Js if sp.issparse(J)]):
        assert (b != J).nnz == 0 and b.format == J.format   # inputs untouched


def test_sparse_jacobian_rule(rng):
    """Any dense, matrix-free or per-sample link: dense; format='csr'
    forces a csr_array; a single link comes back as a copy."""
    n = 30
    S = sparse(rng, n, n, 0.1, "csr")
    D = rng.standard_normal((n, n))
    assert isinstance(gc.jacobian([S, D]), np.ndarray)
    op = spla.aslinearoperator(S)
    assert isinstance(gc.jacobian([S, op]), np.ndarray)
    assert isinstance(gc.jacobian([gc.Diagonal(np.ones(n))]), np.ndarray)
    A = gc.jacobian([S, D], format="csr")
    assert sp.issparse(A) and np.allclose(A.toarray(), D @ S.toarray(), rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="format"):
        gc.jacobian([S], format="coo")
    c = gc.Chain([S])
    with pytest.raises(ValueError, match="format"):
        c.plan(mode="vjp", format="csr")
    one = c.jacobian()
    assert not np.shares_memory(one.data, S.data)
    one.data[:] = 0                       # the caller's matrix is not touched
    assert S.nnz and np.any(S.data != 0)
    assert c.plan(mode="jacobian").format == "csr"
    assert c.plan(mode="jacobian", format="dense").format == "dense"


def test_sparse_jacobian_plan_is_what_runs(rng):
    """A wide-narrow-wide chain where the programme's bracketing beats both
    plain orders on estimated multiply-adds: plan() reports it, the product
    runs it (_last_strategy), and the result is right."""
    # J = J4 J3 D J2 J1, (30 x 2000)(2000 x 30) D (30 x 2000)(2000 x 30):
    # (J4 J3)(D J2 J1)-like brackets make 30 x 30 products only
    Js = [sparse(rng, 2000, 30, 0.5, "csr"), sparse(rng, 30, 2000, 0.5, "csr"),
          gc.Diagonal(rng.standard_normal(30)),
          sparse(rng, 2000, 30, 0.5, "csr"), sparse(rng, 30, 2000, 0.5, "csc")]
    c = gc.Chain(Js)
    p = c.plan(mode="jacobian")
    assert p.format == "csr"
    assert p.cost < min(p.baseline_costs.values())
    M = c.jacobian()
    s, ran = c._last_strategy()
    assert s.format == "csr" and s.cost == p.cost and s.order_name == "table"
    P, absP = chain_refs(Js)
    check(M.toarray(), P, absP, np.float64)


def test_plan_cache_sees_nnz(rng):
    """Two chains of equal shapes and different nnz do not share a plan
    (the cost of a sparse link is its nnz)."""
    gc.Chain([np.ones((3, 3))])           # (the cache is module-wide)
    S1 = sparse(rng, 400, 400, 0.002, "csr")
    S2 = sparse(rng, 400, 400, 0.2, "csr")
    D = rng.standard_normal((5, 400))
    p1 = gc.Chain([S1, S1, D]).plan(mode="jacobian")
    p2 = gc.Chain([S2, S2, D]).plan(mode="jacobian")
    assert p1.cost != p2.cost
