"""Sparse and matrix-free links (issue 10), against scipy.sparse.

Run:  pytest bench/test_bench_sparse.py --benchmark-only (or bench/report.py).
Every gradchain test times it against its peers with `measure` (rested
alternating blocks and interleaved rounds, see conftest.py) and records the
bytes of matrix data each call reads (``bytes``), for the GB/s column.
"""
import numpy as np
import pytest

import gradchain
from conftest import measure, optional_peer

sp = pytest.importorskip("scipy.sparse")
spla = pytest.importorskip("scipy.sparse.linalg")


def _sparse_bytes(S):
    return S.data.nbytes + S.indices.nbytes + S.indptr.nbytes


def _random_csr(n, per_row, seed=0):
    """n x n, per_row nonzeros a row at random columns, int32 indices."""
    rng = np.random.default_rng(seed)
    indptr = np.arange(0, n * per_row + 1, per_row, dtype=np.int32)
    indices = rng.integers(0, n, n * per_row, dtype=np.int32)
    data = rng.standard_normal(n * per_row)
    return sp.csr_array((data, indices, indptr), shape=(n, n))


def _diffusion_steps(n, k, seed=0):
    """k Jacobians of an implicit 1-D diffusion step's explicit form: the
    tridiagonal (1 - 2r) I + r (shift + shift^T), r varying per step, CSR."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(k):
        r = rng.uniform(0.1, 0.3)
        out.append(sp.diags_array([np.full(n - 1, r), np.full(n, 1 - 2 * r),
                                   np.full(n - 1, r)], offsets=[-1, 0, 1],
                                  format="csr"))
    return out


def _check(res, ref, scale, tol=1e-12):
    assert np.all(np.abs(res - ref) <= tol * (scale + 1e-300))


# ---------------------------------------------------------------------------
# One big CSR link
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def big_csr():
    return _random_csr(1_000_000, 10)


@pytest.mark.parametrize("direction", ["jtv", "jv"])
@pytest.mark.parametrize("impl", ["gradchain", "transpose copies", "scipy"])
def test_csr_one_link(benchmark, impl, direction, big_csr):
    """J^T g (Chain.vjp against scipy's J.T @ g) or J v (Chain.jvp against
    J @ v) of one big CSR link; J^T g also with Chain(...,
    transpose_copies=True) (a gather over the CSC copy)."""
    transpose = direction == "jtv"
    if impl == "transpose copies" and not transpose:
        pytest.skip("J v of a CSR gathers already")
    benchmark.group = ("CSR 1e6 x 1e6, 10/row: " + ("J^T g" if transpose else "J v"))
    J = big_csr
    benchmark.extra_info["bytes"] = _sparse_bytes(J)
    x = np.random.default_rng(1 if transpose else 2).standard_normal(J.shape[0])
    A = J.T if transpose else J
    if impl != "scipy":
        chain = gradchain.Chain([J], transpose_copies=impl == "transpose copies")
        run = chain.vjp if transpose else chain.jvp
        out = np.empty(A.shape[0])
        measure(benchmark, impl, {impl: lambda: run(x, out),
                                  "scipy": lambda: A @ x})
        res = benchmark(run, x, out)
    else:
        res = benchmark(lambda: A @ x)
    _check(res, A @ x, abs(A) @ np.abs(x))


# ---------------------------------------------------------------------------
# A chain of 50 tridiagonal links (an implicit diffusion step over time)
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def diffusion():
    return _diffusion_steps(100_000, 50)


def scipy_vjp_loop(Js, g):
    for J in reversed(Js):
        g = J.T @ g
    return g


def scipy_block_loop(Js, G):
    for J in reversed(Js):
        G = (J.T @ G.T).T
    return G


def _jax_bcoo_vjp(jax, Js, g):
    """jax.jit of a Python-unrolled chain of BCOO transposed products
    (BCOO links of different values cannot be stacked into one scan)."""
    from jax.experimental import sparse as jsp
    mats = [jsp.BCOO.from_scipy_sparse(J.T.tocsr()) for J in Js]

    @jax.jit
    def f(mats, g):
        for M in reversed(mats):
            g = M @ g
        return g

    gj = jax.numpy.asarray(g)
    f(mats, gj).block_until_ready()
    return lambda: f(mats, gj).block_until_ready()


@pytest.mark.parametrize("impl", ["gradchain", "scipy", "jax"])
def test_tridiagonal_chain_vjp(benchmark, impl, diffusion, request):
    benchmark.group = "k=50 tridiagonal CSR links, n=1e5: Chain.vjp"
    Js = diffusion
    benchmark.extra_info["bytes"] = sum(_sparse_bytes(J) for J in Js)
    g = np.random.default_rng(3).standard_normal(Js[-1].shape[0])
    if impl == "gradchain":
        chain = gradchain.Chain(Js)
        out = np.empty(Js[0].shape[1])
        contenders = {"gradchain": lambda: chain.vjp(g, out),
                      "scipy": lambda: scipy_vjp_loop(Js, g)}
        jax = optional_peer(request, "jax_x64")
        if jax is not None:
            contenders["jax"] = _jax_bcoo_vjp(jax, Js, g)
        measure(benchmark, "gradchain", contenders)
        res = benchmark(chain.vjp, g, out)
    elif impl == "scipy":
        res = benchmark(scipy_vjp_loop, Js, g)
    else:
        jax = request.getfixturevalue("jax_x64")
        fn = _jax_bcoo_vjp(jax, Js, g)
        benchmark(fn)
        return
    ref = scipy_vjp_loop(Js, g)
    _check(res, ref, scipy_vjp_loop([abs(J) for J in Js], np.abs(g)))


@pytest.mark.parametrize("impl", ["gradchain", "transpose copies", "scipy"])
def test_tridiagonal_chain_block(benchmark, impl, diffusion):
    benchmark.group = "256 cotangents through k=50 tridiagonal CSR links, n=1e5"
    Js = diffusion
    benchmark.extra_info["bytes"] = sum(_sparse_bytes(J) for J in Js)
    G = np.random.default_rng(4).standard_normal((256, Js[-1].shape[0]))
    if impl != "scipy":
        chain = gradchain.Chain(Js, transpose_copies=impl == "transpose copies")
        out = np.empty((256, Js[0].shape[1]))
        measure(benchmark, impl, {impl: lambda: chain.vjp(G, out),
                                  "scipy": lambda: scipy_block_loop(Js, G)})
        res = benchmark.pedantic(chain.vjp, args=(G, out), rounds=3, iterations=1)
    else:
        res = benchmark.pedantic(scipy_block_loop, args=(Js, G), rounds=3, iterations=1)
    ref = scipy_block_loop(Js, G)
    _check(res, ref, scipy_block_loop([abs(J) for J in Js], np.abs(G)))


def scipy_jacobian_loop(Js):
    A = Js[0]
    for J in Js[1:]:
        A = J @ A
    return A


@pytest.mark.parametrize("impl", ["gradchain", "scipy"])
def test_tridiagonal_chain_jacobian(benchmark, impl, diffusion):
    """jacobian() of the 50 tridiagonal links (a banded csr_array of
    bandwidth 50) against the scipy loop A = J @ A; the same nnz."""
    benchmark.group = "k=50 tridiagonal CSR links, n=1e5: jacobian()"
    Js = diffusion
    benchmark.extra_info["bytes"] = sum(_sparse_bytes(J) for J in Js)
    if impl == "gradchain":
        chain = gradchain.Chain(Js)
        measure(benchmark, "gradchain", {"gradchain": chain.jacobian,
                                         "scipy": lambda: scipy_jacobian_loop(Js)})
        res = benchmark.pedantic(chain.jacobian, rounds=3, iterations=1)
    else:
        res = benchmark.pedantic(scipy_jacobian_loop, args=(Js,), rounds=3,
                                 iterations=1)
    ref = scipy_jacobian_loop(Js)
    assert res.nnz == ref.nnz
    d = (res - ref)
    assert abs(d).max() <= 1e-12 * abs(ref).max()


# ---------------------------------------------------------------------------
# A matrix-free link in a dense chain: the cost of one callback
# ---------------------------------------------------------------------------

class _PlainOperator:
    """The least a matrix-free link can be: shape, matvec, rmatvec."""

    def __init__(self, M):
        self.M, self.shape = M, M.shape

    def matvec(self, x):
        return self.M @ x

    def rmatvec(self, x):
        return self.M.T @ x


@pytest.mark.parametrize("impl", ["gradchain", "plain object", "without"])
def test_linear_operator_overhead(benchmark, impl):
    """The same chain with its middle link as aslinearoperator(M), as a plain
    object with matvec/rmatvec, and as the dense M: the extra time is
    gradchain's callback plus the operator's own call (scipy's
    LinearOperator.rmatvec alone takes several microseconds)."""
    benchmark.group = "32 dense 16x16 links, one LinearOperator in the middle"
    rng = np.random.default_rng(5)
    Js = [rng.standard_normal((16, 16)) / 4 for _ in range(32)]
    M = Js[16]
    with_op = Js[:16] + [spla.aslinearoperator(M)] + Js[17:]
    with_plain = Js[:16] + [_PlainOperator(M)] + Js[17:]
    g = rng.standard_normal(16)
    c_op, c_plain = gradchain.Chain(with_op), gradchain.Chain(Js)
    c_obj = gradchain.Chain(with_plain)
    out = np.empty(16)
    if impl == "gradchain":
        measure(benchmark, "gradchain", {"gradchain": lambda: c_op.vjp(g, out),
                                         "without": lambda: c_plain.vjp(g, out)})
        res = benchmark(c_op.vjp, g, out)
    elif impl == "plain object":
        measure(benchmark, "plain object", {"plain object": lambda: c_obj.vjp(g, out),
                                            "without": lambda: c_plain.vjp(g, out)})
        res = benchmark(c_obj.vjp, g, out)
    else:
        res = benchmark(c_plain.vjp, g, out)
    ref = c_plain.vjp(g)
    _check(res, ref, np.abs(ref).max() * np.ones(16), 1e-12)
