"""A gradchain :class:`~gradchain.Chain` as a differentiable JAX function.

Optional: needs JAX (``pip install "jax[cpu]"``); importing this module
without it raises ImportError.  The products run in gradchain through
``jax.pure_callback`` (on the host, outside XLA), wrapped in a
``jax.custom_vjp`` so that ``jax.grad`` and ``jax.jit`` work; ``jax.vmap``
is not supported (batch the vectors instead: ``x`` of shape ``(B, n0)``).

    >>> import numpy as np, jax, jax.numpy as jnp, gradchain, gradchain.jax
    >>> rng = np.random.default_rng(0)
    >>> chain = gradchain.Chain([rng.standard_normal((4, 3)).astype(np.float32)])
    >>> f = gradchain.jax.function(chain)             # x -> J x
    >>> g = jax.jit(jax.grad(lambda x: f(x).sum()))(jnp.ones(3, jnp.float32))
    >>> bool(np.allclose(g, chain.vjp(np.ones(4, np.float32)), rtol=1e-6))
    True
"""
from __future__ import annotations

from typing import Any, Callable

import jax  # type: ignore[import-not-found, unused-ignore]
import numpy as np

from gradchain.chain import Chain

__all__ = ["function", "apply"]


def function(chain: Chain) -> Callable[[Any], Any]:
    r"""The chain's product :math:`x \mapsto J x = J_k \cdots J_1 x` as a
    JAX function with a custom VJP.

    Forward: :meth:`Chain.jvp`; backward: :math:`\bar x = J^\mathsf{T}
    \bar y` by :meth:`Chain.vjp`, both through ``jax.pure_callback``.  The
    Jacobians are constants (no gradient with respect to them).

    Parameters
    ----------
    chain : Chain
        The chain, float32 or float64 (float64 needs JAX's x64 mode,
        ``jax.config.update("jax_enable_x64", True)``).

    Returns
    -------
    callable
        ``f(x)`` for a JAX array ``x`` of the chain's dtype, shape ``(n0,)``
        or ``(B, n0)``, returning ``J x`` of shape ``(nk,)`` or ``(B, nk)``;
        usable under ``jax.jit`` and ``jax.grad``.

    Raises
    ------
    TypeError
        If `chain` is not a Chain; from ``f``, if ``x``'s dtype is not the
        chain's.

    Examples
    --------
    >>> import numpy as np, jax.numpy as jnp, gradchain, gradchain.jax
    >>> f = gradchain.jax.function(gradchain.Chain([2 * np.eye(2, dtype=np.float32)]))
    >>> np.asarray(f(jnp.ones(2, jnp.float32)))
    array([2., 2.], dtype=float32)
    """
    if not isinstance(chain, Chain):
        raise TypeError(f"chain must be a gradchain.Chain, got {type(chain).__name__}")
    dt = np.dtype(chain.dtype)

    def check(x: Any, name: str) -> None:
        if np.dtype(x.dtype) != dt:
            raise TypeError(f"{name} has dtype {np.dtype(x.dtype).name} but the chain "
                            f"is {dt.name}: convert one of them"
                            + (" (float64 in JAX needs jax_enable_x64)"
                               if dt == np.float64 else ""))
        if x.ndim not in (1, 2):
            raise ValueError(f"{name} must have shape (n,) or (B, n), got {x.shape}")

    def forward_cb(x: Any) -> Any:
        return chain.jvp(np.asarray(x))

    def backward_cb(g: Any) -> Any:
        return chain.vjp(np.asarray(g))

    @jax.custom_vjp
    def f(x: Any) -> Any:
        check(x, "x")
        out = jax.ShapeDtypeStruct(x.shape[:-1] + (chain.output_dim,), dt)
        return jax.pure_callback(forward_cb, out, x)

    def f_fwd(x: Any) -> tuple[Any, None]:
        return f(x), None           # linear: nothing to keep

    def f_bwd(_: None, g: Any) -> tuple[Any]:
        check(g, "the incoming cotangent")
        out = jax.ShapeDtypeStruct(g.shape[:-1] + (chain.input_dim,), dt)
        return (jax.pure_callback(backward_cb, out, g),)

    f.defvjp(f_fwd, f_bwd)
    return f


def apply(chain: Chain, x: Any) -> Any:
    """``function(chain)(x)``: the chain's product ``J x`` of one JAX array
    (see :func:`function`; build the function once to reuse it under
    ``jax.jit``).

    Parameters
    ----------
    chain : Chain
        The chain.
    x : jax.Array
        Shape ``(n0,)`` or ``(B, n0)``, the chain's dtype.

    Returns
    -------
    jax.Array
        ``J x``.
    """
    return function(chain)(x)
