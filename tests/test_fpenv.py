"""gradchain.errstate(subnormals=...) (issue 12, item 4): flushing subnormals
in gradchain's calls, in the calling thread and every OpenMP worker that
runs them, restored afterwards; the default stays IEEE, and NumPy and other
threads are never affected."""
import threading

import numpy as np
import pytest

import gradchain as gc
from gradchain import _kernels as K

pytestmark = pytest.mark.skipif(not K._flush_supported(),
                                reason="no flush-to-zero on this CPU or build")

TINY = {np.float32: 1e-41, np.float64: 1e-310}      # subnormal in each


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flush_reads_and_writes_subnormals_as_zero(rng, dtype):
    n = 6
    Js = [np.linalg.qr(rng.standard_normal((n, n)))[0].astype(dtype) for _ in range(3)]
    g = (rng.standard_normal(n) * TINY[dtype]).astype(dtype)
    g[0] = 1.0                                       # one normal entry
    assert np.all(np.abs(g[1:]) < np.finfo(dtype).tiny) and np.all(g[1:] != 0)
    ieee = gc.vjp(Js, g)
    ref = g.astype(np.float64)
    for J in reversed(Js):
        ref = J.T.astype(np.float64) @ ref
    np.testing.assert_allclose(ieee, ref, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=float(np.finfo(dtype).smallest_subnormal) * 8)
    gz = g.copy()
    gz[1:] = 0                                        # what DAZ reads
    with gc.errstate(subnormals="flush"):
        assert gc.get_subnormals() == "flush"
        flushed = gc.vjp(Js, g)
        # NumPy inside the block is untouched: only gradchain's work flushes
        assert dtype(TINY[dtype]) * dtype(1) != 0
        assert np.all(gc.jvp(Js, g * 0 + TINY[dtype]) == 0)
    ref0 = gz.astype(np.float64)
    for J in reversed(Js):
        ref0 = J.T.astype(np.float64) @ ref0
    # results below the normal range are exactly zero, the others close
    big = np.abs(ref0) >= np.finfo(dtype).tiny
    assert np.all(flushed[~big] == 0)
    np.testing.assert_allclose(flushed[big], ref0[big], rtol=1e-5 if dtype == np.float32 else 1e-12)
    assert gc.get_subnormals() == "ieee"
    np.testing.assert_array_equal(gc.vjp(Js, g), ieee)      # restored


def test_flush_covers_compositions_jacobians_and_batches(rng):
    x = np.array([1e-200, 2.0, -3e-200])
    f = gc.compose(gc.Scale(1e-110), gc.Tanh(), loss=gc.SquaredError(np.zeros(3)))
    chain = gc.Chain([np.eye(3) * 1e-110, np.eye(3)])
    with gc.errstate(subnormals="flush"):
        y = f(x)
        _, gx = f.value_and_grad(x)
        J = f.jacobian(x)
        c = chain.vjp(np.stack([x, x]))
        Jc = chain.jacobian()
    assert y[0] == 0 and y[2] == 0 and y[1] != 0
    assert gx[0] == 0 and gx[2] == 0
    assert J[1, 1] != 0
    assert np.all(c[:, [0, 2]] == 0) and np.all(c[:, 1] != 0)
    assert np.all(Jc == np.diag([1e-110] * 3))
    y_ieee = f(x)
    assert y_ieee[0] != 0 and y_ieee[2] != 0


@pytest.mark.skipif(not gc.openmp_enabled(), reason="built without OpenMP")
@pytest.mark.parametrize("nt", [2, 3, 8])
def test_every_worker_is_flushed_and_restored(nt):
    """The bits in every thread of the call's team during it, in none after
    it; without flushing, in none at all."""
    assert K._fp_probe(nt) == (nt, [0] * nt, [0] * nt)
    with gc.errstate(subnormals="flush"):
        got, during, after = K._fp_probe(nt)
    assert (got, during, after) == (nt, [1] * nt, [0] * nt)
    assert K._fp_probe(nt) == (nt, [0] * nt, [0] * nt)


@pytest.mark.skipif(not gc.openmp_enabled(), reason="built without OpenMP")
def test_flush_in_a_threaded_product(rng, restore_threads):
    """A product split over two threads whose every result is subnormal:
    all zero when flushed (no worker computes in IEEE), the IEEE values
    again afterwards."""
    gc.set_num_threads(2)
    J = 1e-160 * (1 + rng.random((512, 128)))
    v = 1e-160 * (1 + rng.random(128))
    ieee = gc.jvp([J], v)
    assert np.all(ieee > 0) and np.all(ieee < np.finfo(np.float64).tiny)
    for _ in range(5):
        with gc.errstate(subnormals="flush"):
            assert np.all(gc.jvp([J], v) == 0)
            assert np.all(gc.vjp([J.T.copy()], v) == 0)
    np.testing.assert_array_equal(gc.jvp([J], v), ieee)


def test_the_choice_is_per_thread():
    seen = []
    with gc.errstate(subnormals="flush"):
        t = threading.Thread(target=lambda: seen.append(
            (gc.get_subnormals(), gc.vjp([np.eye(1)], np.array([1e-310]))[0])))
        t.start()
        t.join()
        assert gc.vjp([np.eye(1)], np.array([1e-310]))[0] == 0
    assert seen == [("ieee", 1e-310)]


def test_errstate_nesting_decorator_and_errors():
    es = gc.errstate(subnormals="flush")
    with es:
        with gc.errstate(subnormals="ieee"):
            assert gc.get_subnormals() == "ieee"
        assert gc.get_subnormals() == "flush"
        with es:                                    # re-entered
            assert gc.get_subnormals() == "flush"
        assert gc.get_subnormals() == "flush"
    assert gc.get_subnormals() == "ieee"

    @gc.errstate(subnormals="flush")
    def f():
        return gc.get_subnormals()
    assert f() == "flush" and gc.get_subnormals() == "ieee"
    with pytest.raises(ValueError, match="subnormals must be 'ieee' or 'flush'"):
        gc.errstate(subnormals="ftz")
    with pytest.raises(ValueError, match="subnormals must be"):
        gc.errstate(subnormals=None)
    with pytest.raises(TypeError):
        gc.errstate("flush")                        # keyword only
    try:
        with gc.errstate(subnormals="flush"):
            raise KeyError("x")
    except KeyError:
        pass
    assert gc.get_subnormals() == "ieee"
