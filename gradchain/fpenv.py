"""The floating-point environment of gradchain's calls: subnormal numbers.

A chain whose values decay below the normal range (2.2e-308 in float64,
1.2e-38 in float32) into subnormal numbers runs many times slower on most
CPUs, which handle each subnormal operand in microcode.  Inside
``gradchain.errstate(subnormals="flush")`` gradchain's calls from this
thread run with flush-to-zero and denormals-are-zero set (x86-64: the
MXCSR's FTZ and DAZ bits; aarch64: FPCR.FZ) in the calling thread and in
every OpenMP worker that runs the call, and put back afterwards: the
default stays IEEE, and nothing outside gradchain's compiled work (NumPy,
your own code between calls) is affected.  The C side is csrc/gc_dense.c.
"""
from __future__ import annotations

import threading
from contextlib import ContextDecorator
from typing import TYPE_CHECKING, Literal

from gradchain._kernels import _flush_supported, _get_flush, _set_flush

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["errstate", "get_subnormals"]

_MODES = ("ieee", "flush")


class errstate(ContextDecorator):
    """How gradchain's calls from this thread treat subnormal numbers.

    A context manager (or decorator), like :func:`numpy.errstate`.

    Parameters
    ----------
    subnormals : {"ieee", "flush"}
        ``"ieee"`` (the default outside any ``errstate``): subnormal inputs
        and results are kept, as IEEE 754 asks.  ``"flush"``: a subnormal
        input is read as zero and a subnormal result is written as zero
        (its sign kept), so that no operation takes the slow path.

    Notes
    -----
    What flushing changes in the results: every value whose magnitude is
    below the smallest normal number (``np.finfo(dtype).tiny``), whether
    an input, an entry of a Jacobian or an intermediate product, counts as
    a signed zero.  Results that never pass through that range are
    bitwise the same as without flushing; results that do may differ
    from the IEEE ones by up to that magnitude in each affected operation
    (a relative change only where the result itself is that small).

    The choice belongs to the calling thread (threads started inside the
    block do not inherit it); the calls' OpenMP workers follow it.  The
    products that gradchain hands to the BLAS (many-vector and Jacobian
    accumulation products, through ``scipy.linalg.cython_blas``) run on
    that library's own threads and are flushed only on the calling
    thread's share.  User callbacks (matrix-free operators, user maps)
    called during a flushed call run flushed as well.

    Examples
    --------
    >>> import numpy as np, gradchain
    >>> J = [np.eye(2)] * 3
    >>> g = np.array([1e-310, 1.0])
    >>> gradchain.vjp(J, g)
    array([1.e-310, 1.e+000])
    >>> with gradchain.errstate(subnormals="flush"):
    ...     gradchain.vjp(J, g)
    array([0., 1.])
    """

    def __init__(self, *, subnormals: Literal["ieee", "flush"]) -> None:
        if not isinstance(subnormals, str) or subnormals not in _MODES:
            raise ValueError(f"subnormals must be 'ieee' or 'flush', got {subnormals!r}")
        if subnormals == "flush" and not _flush_supported():
            raise ValueError("subnormals='flush' is not supported on this CPU or "
                             "build (x86-64 with SSE, or aarch64)")
        self.subnormals: Literal["ieee", "flush"] = subnormals
        self._saved = threading.local()

    def __enter__(self) -> Self:
        stack = self._saved.__dict__.setdefault("stack", [])
        stack.append(_get_flush())
        _set_flush(self.subnormals == "flush")
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        _set_flush(self._saved.stack.pop())
        return False

    def __repr__(self) -> str:
        return f"errstate(subnormals={self.subnormals!r})"


def get_subnormals() -> Literal["ieee", "flush"]:
    """This thread's current choice: ``"flush"`` or ``"ieee"``."""
    return "flush" if _get_flush() else "ieee"
