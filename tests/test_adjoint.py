"""Adjoint sensitivities (issue 11): every intermediate cotangent or tangent
of a chain (``intermediates=True``, a Trajectory), and gradients with
respect to the parameters of a composition (``wrt="params"``), against
independent references: NumPy float64 products link by link, a NumPy
backward pass written by hand, per-example loops and central differences.
"""
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import aslinearoperator

import gradchain as gc

DTYPES = [np.float32, np.float64]


def f64(a):
    return np.asarray(a, dtype=np.float64)


def tol(dtype):
    return (2e-4, 1e-5) if dtype == np.float32 else (1e-11, 1e-13)


# --------------------------------------------------------------------------
# intermediates: the trajectory of a vjp / jvp
# --------------------------------------------------------------------------

def _dense_of(J):
    """A link as a float64 dense matrix (the reference's factor), from its
    definition."""
    if sp.issparse(J):
        return J.toarray().astype(np.float64)
    if isinstance(J, gc.Diagonal):
        return np.diag(f64(J.diagonal))
    if isinstance(J, gc.DiagonalPlusRankOne):
        return np.diag(f64(J.diagonal)) + J.c * np.outer(f64(J.u), f64(J.v))
    if hasattr(J, "matvec"):
        return f64(J @ np.eye(J.shape[1]))
    return f64(J)


def _mixed_links(rng, dtype, n=40):
    """Dense, diagonal, diagonal-plus-rank-one, CSR (a scatter in vjp), CSC,
    a LinearOperator and dense again, of varying widths."""
    A = (rng.standard_normal((n + 5, n)) / np.sqrt(n)).astype(dtype)
    d = rng.standard_normal(n + 5).astype(dtype)
    u, v = (rng.standard_normal(n + 5).astype(dtype) for _ in range(2))
    S = sp.random_array((n - 3, n + 5), density=0.2, random_state=1,
                        format="csr", dtype=dtype)
    C = sp.random_array((n, n - 3), density=0.2, random_state=2,
                        format="csc", dtype=dtype)
    M = (rng.standard_normal((n, n)) / np.sqrt(n)).astype(dtype)
    op = aslinearoperator(M)
    D = (rng.standard_normal((7, n)) / np.sqrt(n)).astype(dtype)
    return [A, gc.Diagonal(d), gc.DiagonalPlusRankOne(d, u, v, 0.5), S, C, op, D]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", [None, 3, 16])
def test_vjp_intermediates_mixed(rng, dtype, B):
    """traj[k] = g, traj[i] = J_{i+1}^T traj[i+1] (float64 references link by
    link), traj[0] the plain vjp bit for bit, every item a view of one
    allocation, g untouched."""
    links = _mixed_links(rng, dtype)
    chain = gc.Chain(links)
    k = len(links)
    n_k = links[-1].shape[0]
    g = rng.standard_normal(n_k if B is None else (B, n_k)).astype(dtype)
    g0 = g.copy()
    traj = chain.vjp(g, intermediates=True)
    assert isinstance(traj, gc.Trajectory) and len(traj) == k + 1
    assert traj.kind == "cotangents"
    assert np.array_equal(g, g0)
    assert np.array_equal(traj[k], g) and not np.shares_memory(traj[k], g)
    plain = chain.vjp(g)
    if B is None or chain.plan(batch=B).expression == chain.plan(
            batch=B, intermediates=True).expression:
        assert np.array_equal(traj[0], plain)       # the same propagation
    assert np.array_equal(traj[-1], traj[k]) and len(traj[1:3]) == 2
    rt, at = tol(dtype)
    ref = f64(g)
    for i in range(k, 0, -1):
        item = traj[i]
        assert item.dtype == dtype and np.shares_memory(item, traj.buffer)
        assert item.shape == ((chain.dims[i],) if B is None else (B, chain.dims[i]))
        np.testing.assert_allclose(item, ref, rtol=rt, atol=at)
        ref = ref @ _dense_of(links[i - 1]) if B is not None else \
            _dense_of(links[i - 1]).T @ ref
    np.testing.assert_allclose(traj[0], ref, rtol=rt, atol=at)
    assert traj.buffer.size == (1 if B is None else B) * sum(chain.dims)
    assert [a.shape[-1] for a in traj] == list(chain.dims)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", [None, 9])
def test_jvp_intermediates_mixed(rng, dtype, B):
    links = _mixed_links(rng, dtype)
    chain = gc.Chain(links)
    k = len(links)
    v = rng.standard_normal(chain.dims[0] if B is None else (B, chain.dims[0])).astype(dtype)
    traj = chain.jvp(v, intermediates=True)
    assert traj.kind == "tangents" and len(traj) == k + 1
    assert np.array_equal(traj[0], v)
    if B is None or chain.plan(batch=B, mode="jvp").expression == chain.plan(
            batch=B, mode="jvp", intermediates=True).expression:
        assert np.array_equal(traj[k], chain.jvp(v))
    rt, at = tol(dtype)
    ref = f64(v)
    for i in range(1, k + 1):
        ref = ref @ _dense_of(links[i - 1]).T if B is not None else \
            _dense_of(links[i - 1]) @ ref
        np.testing.assert_allclose(traj[i], ref, rtol=rt, atol=at)


def test_intermediates_runs_per_sample_and_sparse_tiles(rng):
    """Runs that the propagation fuses (per-sample links, sparse links under
    a block of >= 8 rows on tiles) still hand out every intermediate: the
    same bits as the one-link products applied in turn."""
    B, n = 12, 30
    P1 = rng.standard_normal((B, n, n)) / np.sqrt(n)
    P2 = rng.standard_normal((B, n, n)) / np.sqrt(n)
    S1 = sp.random_array((n, n), density=0.3, random_state=3, format="csr")
    S2 = sp.random_array((n, n), density=0.3, random_state=4, format="csc")
    S3 = sp.random_array((n, n), density=0.3, random_state=5, format="csr")
    links = [P1, P2, S1, S2, S3]
    G = rng.standard_normal((B, n))
    traj = gc.Chain(links).vjp(G, intermediates=True)
    ref = G
    for i in range(len(links), 0, -1):
        assert np.array_equal(traj[i], ref), i
        ref = gc.Chain([links[i - 1]]).vjp(ref)
    assert np.array_equal(traj[0], ref)
    V = rng.standard_normal((B, n))
    traj = gc.Chain(links).jvp(V, intermediates=True)
    ref = V
    for i in range(len(links)):
        assert np.array_equal(traj[i], ref), i
        ref = gc.Chain([links[i]]).jvp(ref)
    assert np.array_equal(traj[len(links)], ref)


def test_intermediates_out_sequence(rng):
    """out= takes one array per position (C-contiguous or not), returned as
    the items; bad sequences raise naming the item."""
    Js = [rng.standard_normal((5, 4)), rng.standard_normal((3, 5))]
    c = gc.Chain(Js)
    g = rng.standard_normal(3)
    out = [np.empty(4), np.empty((5, 2))[:, 0], np.empty(3)]
    traj = c.vjp(g, out=out, intermediates=True)
    assert traj.buffer is None and all(traj[i] is out[i] for i in range(3))
    np.testing.assert_allclose(out[0], Js[0].T @ (Js[1].T @ g), rtol=1e-13)
    np.testing.assert_allclose(out[1], Js[1].T @ g, rtol=1e-13)
    assert np.array_equal(out[2], g)
    with pytest.raises(ValueError, match="out must hold 3 arrays"):
        c.vjp(g, out=out[:2], intermediates=True)
    with pytest.raises(TypeError, match="sequence of 3 arrays"):
        c.vjp(g, out=np.empty(4), intermediates=True)
    with pytest.raises(ValueError, match=r"out\[1\] has shape \(4,\)"):
        c.vjp(g, out=[np.empty(4), np.empty(4), np.empty(3)], intermediates=True)
    with pytest.raises(TypeError, match=r"out\[0\] has dtype float32"):
        c.vjp(g, out=[np.empty(4, np.float32), np.empty(5), np.empty(3)],
              intermediates=True)
    buf = np.empty(8)
    with pytest.raises(ValueError, match=r"out\[0\] and out\[1\] share memory"):
        c.vjp(g, out=[buf[:4], buf[3:8], np.empty(3)], intermediates=True)
    with pytest.raises(ValueError, match=r"out\[2\] shares memory with cotangent"):
        c.vjp(g, out=[np.empty(4), np.empty(5), g], intermediates=True)
    with pytest.raises(ValueError, match=r"out\[0\] shares memory with jacobians\[0\]"):
        c.vjp(g, out=[Js[0][0, :4], np.empty(5), np.empty(3)], intermediates=True)
    # interleaved strided views share no element: accepted
    buf = np.empty(10)
    c.jvp(rng.standard_normal(4), out=[np.empty(4), buf[0::2], np.empty(3)],
          intermediates=True)
    with pytest.raises(TypeError, match="intermediates must be True or False"):
        c.vjp(g, intermediates=1)


def test_intermediates_edges(rng):
    """The empty chain (one item, a copy), a zero-width intermediate (zeros
    from there on), an empty batch, promotion of a float32 chain by a
    float64 vector, and the plan."""
    g = rng.standard_normal(4)
    t = gc.Chain([]).vjp(g, intermediates=True)
    assert len(t) == 1 and np.array_equal(t[0], g) and not np.shares_memory(t[0], g)
    Js = [rng.standard_normal((0, 3)), rng.standard_normal((2, 0))]
    t = gc.Chain(Js).vjp(np.ones(2), intermediates=True)
    assert [a.shape for a in t] == [(3,), (0,), (2,)]
    assert np.array_equal(t[0], np.zeros(3)) and np.array_equal(t[2], np.ones(2))
    t = gc.Chain(Js).jvp(np.ones(3), intermediates=True)
    assert np.array_equal(t[2], np.zeros(2))
    t = gc.Chain([rng.standard_normal((3, 4))]).vjp(np.zeros((0, 3)), intermediates=True)
    assert [a.shape for a in t] == [(0, 4), (0, 3)]
    J32 = rng.standard_normal((3, 4)).astype(np.float32)
    t = gc.Chain([J32]).vjp(g[:3], intermediates=True)
    assert t[0].dtype == np.float64
    np.testing.assert_allclose(t[0], f64(J32).T @ g[:3], rtol=1e-13)
    with pytest.raises(IndexError):
        t[2]
    with pytest.raises(TypeError, match="integers or slices"):
        t["a"]
    assert "Trajectory(2 cotangents" in repr(t)
    import pickle
    t2 = pickle.loads(pickle.dumps(t))
    assert all(np.array_equal(a, b) for a, b in zip(t, t2)) and len(t2) == 2
    # a block whose plain product pre-multiplies (accumulates) still
    # propagates when every intermediate is wanted; the plan says so
    W = [rng.standard_normal((2, 50)), rng.standard_normal((50, 2)),
         rng.standard_normal((2, 50))]
    c = gc.Chain(W)
    p = c.plan(batch=64, intermediates=True)
    assert p.expression == "((G J3) J2) J1" != c.plan(batch=64).expression
    assert p.cost == p.baseline_costs["left_to_right"]
    G = rng.standard_normal((64, 2))
    t = c.vjp(G, intermediates=True)
    assert c._last_strategy()[1] == "propagate"
    np.testing.assert_allclose(t[0], G @ W[2] @ W[1] @ W[0], rtol=1e-11)
    with pytest.raises(ValueError, match="intermediates applies"):
        c.plan(mode="jacobian", intermediates=True)


def test_intermediates_module_functions_and_threads(rng, restore_threads):
    Js = [rng.standard_normal((60, 50)), rng.standard_normal((60, 60)),
          rng.standard_normal((60, 60))]
    g = rng.standard_normal((5, 60))
    t1 = gc.vjp(Js, g, intermediates=True)
    gc.set_num_threads(2)
    t2 = gc.vjp(Js, g, intermediates=True)
    assert all(np.array_equal(a, b) for a, b in zip(t1, t2))
    v = rng.standard_normal(50)
    tj = gc.jvp(Js, v, intermediates=True)
    np.testing.assert_allclose(tj[3], Js[2] @ Js[1] @ Js[0] @ v, rtol=1e-12)


# --------------------------------------------------------------------------
# parameter gradients
# --------------------------------------------------------------------------

def _mlp(rng, sizes, dtype=np.float64, bias=True):
    Ws = [(rng.standard_normal((m, n)) / np.sqrt(n)).astype(dtype)
          for n, m in zip(sizes[:-1], sizes[1:])]
    bs = [(0.1 * rng.standard_normal(m)).astype(dtype) if bias else None
          for m in sizes[1:]]
    return Ws, bs


def _mlp_maps(Ws, bs, act=gc.Tanh):
    maps = []
    for i, (W, b) in enumerate(zip(Ws, bs)):
        maps.append(gc.Affine(W, b))
        if i < len(Ws) - 1:
            maps.append(act())
    return maps


def _numpy_mlp_grads(Ws, bs, X, labels):
    """Softmax cross-entropy of the tanh MLP, backward by hand in float64:
    (per-sample losses, dX rows, per-example [(dW_b, db_b)] as (B, ...))."""
    hs = [f64(X)]
    for i, (W, b) in enumerate(zip(Ws, bs)):
        z = hs[-1] @ f64(W).T + (0 if b is None else f64(b))
        hs.append(np.tanh(z) if i < len(Ws) - 1 else z)
    z = hs[-1]
    zmax = z.max(axis=1, keepdims=True)
    lse = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
    L = lse - z[np.arange(len(z)), labels]
    G = np.exp(z - lse[:, None])
    G[np.arange(len(z)), labels] -= 1
    per = []
    for i in range(len(Ws) - 1, -1, -1):
        per.append((np.einsum("bi,bj->bij", G, hs[i]), G.copy()))
        G = G @ f64(Ws[i])
        if i > 0:
            G = G * (1 - hs[i] ** 2)
    return L, G, per[::-1]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_mlp_param_grads_against_numpy(rng, dtype, reduction):
    sizes = [6, 9, 7, 4]
    Ws, bs = _mlp(rng, sizes, dtype)
    B = 13
    X = rng.standard_normal((B, sizes[0])).astype(dtype)
    labels = rng.integers(0, sizes[-1], B)
    f = gc.compose(*_mlp_maps(Ws, bs), loss=gc.CrossEntropy(labels))
    snapshot = [p.copy() for t in f.param_arrays() for p in t]
    L, (gx, pg) = f.value_and_grad(X, reduction=reduction, wrt=("x", "params"))
    Lr, Gr, per = _numpy_mlp_grads(Ws, bs, X, labels)
    scale = 1.0 / B if reduction == "mean" else 1.0
    rt, at = tol(dtype)
    rt *= 10
    if reduction == "none":
        np.testing.assert_allclose(L, Lr, rtol=rt, atol=at)
    else:
        assert abs(L - Lr.sum() * scale) <= rt * abs(Lr.sum())
    np.testing.assert_allclose(gx, Gr * scale, rtol=rt, atol=at)
    assert len(pg) == len(f.maps)
    for i, m in enumerate(f.maps):
        if not isinstance(m, gc.Affine):
            assert pg[i] == ()
            continue
        dW, db = pg[i]
        rW, rb = per[i // 2]
        if reduction == "none":
            assert dW.shape == (B,) + m.W.shape and db.shape == (B,) + m.b.shape
            np.testing.assert_allclose(dW, rW, rtol=rt, atol=at)
            np.testing.assert_allclose(db, rb, rtol=rt, atol=at)
        else:
            assert dW.shape == m.W.shape and dW.dtype == dtype
            np.testing.assert_allclose(dW, rW.sum(0) * scale, rtol=rt, atol=at)
            np.testing.assert_allclose(db, rb.sum(0) * scale, rtol=rt, atol=at)
    # the params alone: the same arrays, the x gradient not computed
    L2, pg2 = f.value_and_grad(X, reduction=reduction, wrt="params")
    for a, b in zip(pg, pg2):
        for u, w in zip(a, b):
            np.testing.assert_array_equal(u, w)
    L3, (pg3, gx3) = f.value_and_grad(X, reduction=reduction, wrt=("params", "x"))
    np.testing.assert_array_equal(gx3, gx)
    assert all(np.array_equal(p, q) for p, q in
               zip(snapshot, [p for t in f.param_arrays() for p in t]))


def test_scale_leaky_relu_and_user_map_params(rng):
    """Scale's c, LeakyReLU's alpha and a user map's params (its own
    param_vjp) against central differences, single x and batches; the
    per-example gradients against per-sample calls."""
    n = 5
    W = rng.standard_normal((n, n)) / np.sqrt(n)
    U = rng.standard_normal((n, n)) / np.sqrt(n)
    user = gc.Map(lambda x, U: x @ U.T, jacobian=lambda x, U: U,
                  params=(U,), param_vjp=lambda x, g, U: (np.atleast_2d(g).T @ np.atleast_2d(x),))
    f = gc.compose(gc.Affine(W), gc.LeakyReLU(0.2), user, gc.Scale(1.7), gc.Tanh(),
                   loss=gc.SquaredError(rng.standard_normal(n)))
    x = rng.standard_normal(n)
    assert gc.check_grad(f, x, wrt="params") < 1e-8
    assert gc.check_grad(f, x, wrt=("x", "params")) < 1e-8
    L, pg = f.value_and_grad(x, wrt="params")
    assert [len(t) for t in pg] == [1, 1, 1, 1, 0]
    assert pg[1][0].shape == () and pg[3][0].shape == ()
    X = rng.standard_normal((6, n))
    t = rng.standard_normal((6, n))
    fb = gc.compose(*f.maps, loss=gc.SquaredError(t))
    _, summed = fb.value_and_grad(X, wrt="params")
    _, per = fb.value_and_grad(X, reduction="none", wrt="params")
    for b in range(6):
        fs = gc.compose(*f.maps, loss=gc.SquaredError(t[b]))
        _, one = fs.value_and_grad(X[b], wrt="params")
        for i in range(len(f.maps)):
            for j in range(len(one[i])):
                np.testing.assert_allclose(per[i][j][b], one[i][j], rtol=1e-12, atol=1e-14)
    for i in range(len(f.maps)):
        for j in range(len(summed[i])):
            np.testing.assert_allclose(summed[i][j], per[i][j].sum(0), rtol=1e-12,
                                       atol=1e-13)
    np.testing.assert_allclose(fb.ravel(per).sum(0), fb.ravel(summed), rtol=1e-12,
                               atol=1e-13)
    assert fb.ravel(per).shape == (6, fb.params().size)


def test_user_map_param_errors():
    U = np.eye(3)
    with pytest.raises(TypeError, match="params= needs param_vjp="):
        gc.Map(lambda x, U: x, jacobian=lambda x, U: U, params=(U,))
    with pytest.raises(TypeError, match="param_vjp= needs params="):
        gc.Map(lambda x: x, jacobian=lambda x: np.eye(3), param_vjp=lambda x, g: ())
    with pytest.raises(TypeError, match="params must be a sequence"):
        gc.Map(lambda x, U: x, jacobian=lambda x, U: U, params=U,
               param_vjp=lambda x, g, U: (U,))
    x = np.ones(3)
    for ret, err, msg in [((np.ones(2),), ValueError, r"maps\[0\]\.param_vjp \(params\[0\]\) returned shape"),
                          ((U, U), ValueError, "returned 2 gradients for 1 parameters"),
                          (U, TypeError, "must return a tuple of 1 arrays"),
                          ((U + 1j,), TypeError, "complex")]:
        m = gc.Map(lambda x, U: U @ x, jacobian=lambda x, U: U, params=(U,),
                   param_vjp=lambda x, g, U, r=ret: r)
        f = gc.compose(m, loss=gc.SquaredError(np.zeros(3)))
        with pytest.raises(err, match=msg):
            f.value_and_grad(x, wrt="params")
    f = gc.compose(gc.Tanh(), loss=gc.SquaredError(np.zeros(3)))
    for bad in ["w", ("x", "x"), (), ["params", 1], None, ("x", ["params"]),
                np.array(["x"])]:
        with pytest.raises(ValueError, match="wrt must be"):
            f.value_and_grad(x, wrt=bad)
    with pytest.raises(TypeError, match="with a loss"):
        gc.check_grad(gc.compose(gc.Tanh()), x, wrt="params")


def test_params_set_params_ravel(rng):
    Ws, bs = _mlp(rng, [3, 4, 2])
    f = gc.compose(*_mlp_maps(Ws, bs), gc.Scale(2.0), loss=gc.SquaredError(np.zeros(2)))
    p = f.params()
    assert p.shape == (3 * 4 + 4 + 4 * 2 + 2 + 1,) and p.dtype == np.float64
    np.testing.assert_array_equal(p[:12], Ws[0].ravel())
    f.set_params(p * 2)
    np.testing.assert_array_equal(Ws[0], p[:12].reshape(4, 3) * 2)   # in place
    assert f.maps[-1].c == 4.0
    np.testing.assert_array_equal(f.params(), p * 2)
    # the programmes read the new values (cached ones too)
    x = rng.standard_normal(3)
    y = np.tanh(x @ Ws[0].T + bs[0]) @ Ws[1].T + bs[1]
    np.testing.assert_allclose(f(x), 4.0 * y, rtol=1e-13)
    with pytest.raises(ValueError, match=r"flat has shape \(3,\) but the parameters hold 27"):
        f.set_params(np.ones(3))
    _, g = f.value_and_grad(x, wrt="params")
    assert f.ravel(g).shape == p.shape
    with pytest.raises(ValueError, match="grads must be a tuple of 4"):
        f.ravel(g[:2])
    with pytest.raises(ValueError, match=r"grads\[0\]\[0\] has shape"):
        f.ravel(((np.ones(3), g[0][1]),) + g[1:])


def _train_mlp(rng):
    """A 2-hidden-layer tanh MLP with softmax cross-entropy trained by plain
    SGD (30 epochs of mini-batches of 32) on a synthetic three-class
    problem with gradchain's values and parameter gradients alone.
    Returns (the composition over the full set, X, labels, Ws, bs, the
    epoch losses)."""
    n, B, C = 4, 96, 3
    centers = rng.standard_normal((C, n)) * 2
    labels = rng.integers(0, C, B)
    X = centers[labels] + 0.5 * rng.standard_normal((B, n))
    Ws, bs = _mlp(rng, [n, 16, 16, C])
    f = gc.compose(*_mlp_maps(Ws, bs), loss=gc.CrossEntropy(labels))
    losses = []
    for epoch in range(30):
        for s in range(0, B, 32):
            fb = gc.compose(*f.maps, loss=gc.CrossEntropy(labels[s:s + 32]))
            L, g = fb.value_and_grad(X[s:s + 32], reduction="mean", wrt="params")
            f.set_params(f.params() - 0.3 * f.ravel(g))
        losses.append(f.value(X, reduction="mean"))
    return f, X, labels, Ws, bs, losses


def test_sgd_trains_mlp(rng):
    """The README's example: the loss falls (epoch means decrease overall,
    and the final loss is well under the first), and the final gradients
    match a NumPy backward pass and central differences to 1e-8."""
    f, X, labels, Ws, bs, losses = _train_mlp(rng)
    assert losses[-1] < 0.5 * losses[0]
    assert np.mean(np.diff(losses) < 0) > 0.7
    _, g = f.value_and_grad(X, reduction="mean", wrt="params")
    Lr, _, per = _numpy_mlp_grads(Ws, bs, X, labels)
    for i in range(0, len(f.maps), 2):
        np.testing.assert_allclose(g[i][0], per[i // 2][0].mean(0), rtol=1e-10, atol=1e-13)
    one = gc.compose(*f.maps, loss=gc.CrossEntropy(labels[0]))
    assert gc.check_grad(one, X[0], wrt="params") < 1e-8


def test_sgd_final_grads_match_torch(rng):
    """The trained MLP's final value, input and parameter gradients
    against PyTorch autograd in float64 (skipped where torch is not
    installed; the test above checks the same against NumPy and central
    differences)."""
    torch = pytest.importorskip("torch")
    f, X, labels, Ws, bs, _ = _train_mlp(rng)
    L, (gx, pg) = f.value_and_grad(X, reduction="mean", wrt=("x", "params"))
    Wt = [torch.tensor(W, dtype=torch.float64, requires_grad=True) for W in Ws]
    bt = [torch.tensor(b, dtype=torch.float64, requires_grad=True) for b in bs]
    xt = torch.tensor(X, dtype=torch.float64, requires_grad=True)
    h = xt
    for i, (W, b) in enumerate(zip(Wt, bt)):
        h = h @ W.T + b
        if i < len(Wt) - 1:
            h = torch.tanh(h)
    Lt = torch.nn.functional.cross_entropy(h, torch.from_numpy(labels), reduction="mean")
    Lt.backward()
    assert abs(L - Lt.item()) <= 1e-12 * abs(Lt.item())
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-8, atol=1e-14)
    for i, (W, b) in enumerate(zip(Wt, bt)):
        dW, db = pg[2 * i]
        np.testing.assert_allclose(dW, W.grad.numpy(), rtol=1e-8, atol=1e-14)
        np.testing.assert_allclose(db, b.grad.numpy(), rtol=1e-8, atol=1e-14)


def test_discrete_adjoint_of_linear_time_stepping(rng):
    """x_{t+1} = A(theta) x_t with A(theta) = A0 + theta A1 (dA/dtheta =
    A1), L = c . x_T: dL/dtheta = sum_t lambda_{t+1}^T A1 x_t from the
    intermediate cotangents of one vjp, against central differences and
    the closed form sum_t c^T A^(T-1-t) A1 A^t x_0."""
    n, T, theta = 6, 25, 0.3
    A0 = np.eye(n) + 0.05 * rng.standard_normal((n, n))
    A1 = 0.05 * rng.standard_normal((n, n))
    x0, c = rng.standard_normal(n), rng.standard_normal(n)

    def simulate(th):
        xs = [x0]
        for _ in range(T):
            xs.append((A0 + th * A1) @ xs[-1])
        return xs

    xs = simulate(theta)
    A = A0 + theta * A1
    lam = gc.Chain([A] * T).vjp(c, intermediates=True)
    dtheta = sum(lam[t + 1] @ (A1 @ xs[t]) for t in range(T))
    h = 1e-6
    fd = (c @ simulate(theta + h)[-1] - c @ simulate(theta - h)[-1]) / (2 * h)
    closed = sum(c @ np.linalg.matrix_power(A, T - 1 - t) @ A1 @
                 np.linalg.matrix_power(A, t) @ x0 for t in range(T))
    assert abs(dtheta - closed) <= 1e-12 * abs(closed)
    assert abs(dtheta - fd) <= 1e-7 * abs(fd)
    np.testing.assert_allclose(lam[0], np.linalg.matrix_power(A, T).T @ c, rtol=1e-12)


def test_param_edge_cases(rng):
    """Integer parameters (a user map's converted to float64 once; an
    Affine's integer W refused by set_params instead of truncated),
    check_grad's step in a float32 composition, and ravel of per-example
    gradients of an empty batch."""
    s = np.array([2, 3, 4])
    m = gc.Map(lambda x, s: s * x, lambda x, s: np.diag(s), params=(s,),
               param_vjp=lambda x, g, s: (g * x,))
    c = gc.compose(m, loss=gc.SquaredError(np.zeros(3)))
    x = np.array([1., 2., 3.])
    np.testing.assert_allclose(c.value_and_grad(x, wrt="params")[1][0][0], [2., 12., 36.])
    assert gc.check_grad(c, x, wrt="params") < 1e-8
    c.set_params([2.5, 3.5, 4.5])
    np.testing.assert_array_equal(c.params(), [2.5, 3.5, 4.5])
    assert np.array_equal(s, [2, 3, 4])            # the caller's int array untouched
    W = np.arange(6).reshape(2, 3)
    ca = gc.compose(gc.Affine(W), loss=gc.SquaredError(np.zeros(2)))
    with pytest.raises(TypeError, match=r"maps\[0\]'s parameter 0 has dtype int64"):
        ca.set_params(np.full(6, .5))
    assert np.array_equal(W, np.arange(6).reshape(2, 3))
    W32 = rng.standard_normal((5, 4)).astype(np.float32)
    t = rng.standard_normal(5).astype(np.float32)
    x32 = rng.standard_normal(4).astype(np.float32)
    c32 = gc.compose(gc.Affine(W32), gc.LeakyReLU(0.3), gc.Scale(1.5),
                     loss=gc.SquaredError(t))
    assert gc.check_grad(c32, x32, wrt="params") < 1e-3
    c0 = gc.compose(gc.Affine(np.ones((3, 4))), gc.Tanh(), loss=gc.SquaredError(np.ones(3)))
    _, g = c0.value_and_grad(np.zeros((0, 4)), "none", wrt="params")
    assert c0.ravel(g).shape == (0, 12)
