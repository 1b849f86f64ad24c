"""A gradchain :class:`~gradchain.Chain` inside a PyTorch autograd graph.

Optional: needs PyTorch (``pip install torch``); importing this module
without it raises ImportError.

    >>> import numpy as np, torch, gradchain, gradchain.torch
    >>> rng = np.random.default_rng(0)
    >>> chain = gradchain.Chain([rng.standard_normal((4, 3)), rng.standard_normal((2, 4))])
    >>> x = torch.ones(3, dtype=torch.float64, requires_grad=True)
    >>> y = gradchain.torch.apply(chain, x)          # J x, J = J_2 J_1
    >>> y.sum().backward()                            # x.grad = J^T 1, by Chain.vjp
    >>> bool(np.allclose(x.grad.numpy(), chain.vjp(np.ones(2))))
    True
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch  # type: ignore[import-not-found, unused-ignore]

from gradchain.chain import Chain

__all__ = ["apply"]

_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def _as_numpy(t: torch.Tensor, chain: Chain, name: str) -> np.ndarray[Any, Any]:
    if t.device.type != "cpu":
        raise ValueError(f"{name} is on device {t.device}; gradchain runs on the "
                         f"CPU: move it with .cpu() first")
    if t.dtype not in _DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}; gradchain takes float32 or "
                        f"float64 tensors")
    if _DTYPES[t.dtype] != chain.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but the chain is "
                        f"{np.dtype(chain.dtype).name}: convert one of them")
    # a view of the tensor's memory (no copy); gradchain never writes to it
    return t.detach().numpy()


class _ChainFunction(torch.autograd.Function):
    """y = J x forward (Chain.jvp), x_bar = J^T y_bar backward (Chain.vjp)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, chain: Chain) -> torch.Tensor:
        ctx.chain = chain
        return torch.from_numpy(chain.jvp(_as_numpy(x, chain, "x")))

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        chain = ctx.chain
        return torch.from_numpy(chain.vjp(_as_numpy(g.contiguous(), chain,
                                                    "the incoming gradient"))), None


def apply(chain: Chain, x: torch.Tensor) -> torch.Tensor:
    r"""The chain's product :math:`y = J x = J_k \cdots J_1 x` as a
    differentiable PyTorch operation.

    The forward pass is :meth:`Chain.jvp`; the backward pass gives
    :math:`\bar x = J^\mathsf{T} \bar y` by :meth:`Chain.vjp`, so a loss
    computed from ``y`` back-propagates through the chain with gradchain's
    kernels.  The Jacobians themselves are constants of the graph (no
    gradient with respect to them).

    Parameters
    ----------
    chain : Chain
        The chain, float32 or float64.
    x : torch.Tensor
        A CPU tensor of the chain's dtype: one vector, shape ``(n0,)``, or a
        batch of them, shape ``(B, n0)``.  Read in place (no copy) when
        contiguous.

    Returns
    -------
    torch.Tensor
        ``J x``, shape ``(nk,)`` or ``(B, nk)``, the chain's dtype.

    Raises
    ------
    TypeError
        If `chain` is not a Chain, or `x` is not float32/float64 or not of
        the chain's dtype.
    ValueError
        If `x` is not on the CPU, or its shape does not fit the chain (from
        :meth:`Chain.jvp`).

    Examples
    --------
    >>> import numpy as np, torch, gradchain, gradchain.torch
    >>> chain = gradchain.Chain([2.0 * np.eye(3)])
    >>> gradchain.torch.apply(chain, torch.ones(3, dtype=torch.float64))
    tensor([2., 2., 2.], dtype=torch.float64)
    """
    if not isinstance(chain, Chain):
        raise TypeError(f"chain must be a gradchain.Chain, got {type(chain).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    out: torch.Tensor = _ChainFunction.apply(x, chain)
    return out
