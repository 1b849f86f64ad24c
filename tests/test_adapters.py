"""Framework adapters (issue 13): gradchain.torch, a Chain inside a PyTorch
autograd graph.  Skipped where PyTorch is not installed."""
import numpy as np
import pytest

import gradchain

torch = pytest.importorskip("torch")
import gradchain.torch as gct  # noqa: E402


def _chain(rng, dims, dtype=np.float64):
    return gradchain.Chain([rng.standard_normal((dims[i + 1], dims[i])).astype(dtype)
                            for i in range(len(dims) - 1)])


@pytest.mark.parametrize("shape", [(5,), (3, 5)])
def test_gradcheck(rng, shape):
    chain = _chain(rng, [5, 7, 4, 6])
    x = torch.tensor(rng.standard_normal(shape), requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: gct.apply(chain, t), (x,))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_and_backward_against_dense_products(rng, dtype):
    chain = _chain(rng, [6, 9, 3], dtype)
    J = chain.jacobian().astype(np.float64)
    x0 = rng.standard_normal((4, 6)).astype(dtype)
    x = torch.tensor(x0, requires_grad=True)
    y = gct.apply(chain, x)
    assert y.dtype == x.dtype and y.shape == (4, 3)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y.detach().numpy(), x0 @ J.T, rtol=tol, atol=tol)
    (y ** 2).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * (x0 @ J.T) @ J, rtol=10 * tol,
                               atol=10 * tol)


def test_inputs_not_modified_and_errors(rng):
    chain = _chain(rng, [3, 4])
    x = torch.ones(3, dtype=torch.float64)
    before = x.clone()
    gct.apply(chain, x)
    assert torch.equal(x, before)
    with pytest.raises(TypeError, match="dtype torch.float32 but the chain is float64"):
        gct.apply(chain, torch.ones(3, dtype=torch.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        gct.apply(chain, torch.ones(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="gradchain.Chain"):
        gct.apply(np.eye(3), x)
    with pytest.raises(TypeError, match="torch.Tensor"):
        gct.apply(chain, np.ones(3))
    with pytest.raises(ValueError):
        gct.apply(chain, torch.ones(5, dtype=torch.float64))


# --------------------------------------------------------------------------
# gradchain.jax: a Chain as a custom_vjp JAX function (float32: JAX's
# default precision, so no global x64 switch in the tests)
# --------------------------------------------------------------------------

def _jax():
    return pytest.importorskip("jax")


@pytest.mark.parametrize("shape", [(6,), (3, 6)])
def test_jax_value_and_grad_under_jit(rng, shape):
    jax = _jax()
    import gradchain.jax as gcj
    jnp = jax.numpy
    chain = _chain(rng, [6, 5, 4], np.float32)
    J = chain.jacobian().astype(np.float64)
    f = gcj.function(chain)
    x0 = rng.standard_normal(shape).astype(np.float32)
    y = jax.jit(f)(jnp.asarray(x0))
    np.testing.assert_allclose(np.asarray(y), x0 @ J.T, rtol=1e-5, atol=1e-5)
    grad = jax.jit(jax.grad(lambda x: (f(x) ** 2).sum()))(jnp.asarray(x0))
    np.testing.assert_allclose(np.asarray(grad), 2 * (x0 @ J.T) @ J, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(gcj.apply(chain, jnp.asarray(x0))),
                               np.asarray(y), rtol=0, atol=0)


def test_jax_errors(rng):
    jax = _jax()
    import gradchain.jax as gcj
    chain = _chain(rng, [3, 4], np.float32)
    with pytest.raises(TypeError, match="gradchain.Chain"):
        gcj.function(np.eye(3))
    with pytest.raises(TypeError, match="dtype int32 but the chain is float32"):
        gcj.apply(chain, jax.numpy.ones(3, jax.numpy.int32))
