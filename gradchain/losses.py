"""Losses: the scalar l(x^(k)) at the end of a composition, with its gradient.

This module's one job is the losses -- :class:`SquaredError`,
:class:`MeanSquaredError`, :class:`Dot`, :class:`LogSumExp` and
:class:`CrossEntropy` (from logits) -- each a compiled value and gradient
(``gradchain._program``), evaluated per row of a batch, stable at large
inputs.  A loss validates what it reads at each call: its target or labels
against the output it is applied to.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from gradchain._bind import as_array
from gradchain import _program as _p
from gradchain._program import Program
from gradchain.maps import _as_float, _float_dtype

__all__ = ["Loss", "SquaredError", "MeanSquaredError", "CrossEntropy",
           "LogSumExp", "Dot"]

# (for the annotations) a loss's aux rows and labels for a batch, and the
# value: a float for a single x, per-sample float64 values for a batch
_Rows = tuple["NDArray[Any] | None", "NDArray[np.int64] | None"]
_Value = float | NDArray[np.float64]

# loss codes: declared in csrc/gc_maps.h, exported by _program
_LOSS = dict(squared_error=_p.GC_LOSS_SQUARED_ERROR,
             mean_squared_error=_p.GC_LOSS_MEAN_SQUARED_ERROR,
             cross_entropy=_p.GC_LOSS_CROSS_ENTROPY,
             logsumexp=_p.GC_LOSS_LOGSUMEXP, dot=_p.GC_LOSS_DOT)


class Loss:
    """A scalar loss l(x^(k)) with a compiled value and gradient (abstract
    base; see the subclasses).

    A loss is applied to the output x^(k) of a composition
    (``compose(..., loss=...)``) or on its own (:meth:`value_and_grad`).
    For a batch (B, n) it is evaluated row by row: per-sample values and
    gradients.  Values accumulate in float64 whatever the compute dtype.
    """

    _code = 0

    def _rows(self, B: int, n: int, dtype: np.dtype[Any]) -> _Rows:
        """(aux rows (B, n) in dtype or None, labels (B,) int64 or None)."""
        return None, None

    def _params(self) -> tuple[NDArray[Any], ...]:
        return ()

    @overload
    def value_and_grad(self, x: NDArray[np.float64]) -> tuple[_Value, NDArray[np.float64]]: ...
    @overload
    def value_and_grad(self, x: ArrayLike) -> tuple[_Value, NDArray[np.floating[Any]]]: ...

    def value_and_grad(self, x: ArrayLike) -> tuple[_Value, NDArray[np.floating[Any]]]:
        """(l(x), grad l(x)) for a single x, or per-row values (B,) and
        gradients (B, n) for a batch.

        Parameters
        ----------
        x : array_like, shape (n,) or (B, n)

        Returns
        -------
        value : float, or ndarray of shape (B,) (float64)
        grad : ndarray, shape of x
            In the dtype of x and the loss's target (the dtype rule of
            :mod:`gradchain.chain`).
        """
        x = _as_float(x, "x")
        dtype = np.result_type(_float_dtype(x.dtype, "x"),
                               *[_float_dtype(p.dtype, "target") for p in self._params()])
        if x.ndim not in (1, 2):
            raise ValueError(f"x must be 1-D or 2-D, got shape {x.shape}")
        X = np.require(np.atleast_2d(x), dtype, "CA")  # type: ignore[arg-type, unused-ignore]  # "CA": C, A
        aux, labels = self._rows(X.shape[0], X.shape[1], dtype)
        vals, G = Program([], dtype).loss_grad(X, self._code, aux, labels)
        if x.ndim == 1:
            return float(vals[0]), G[0]
        return vals, G


class _TargetLoss(Loss):
    _name = "target"

    def __init__(self, target: ArrayLike) -> None:
        self._target = _as_float(target, self._name)
        if self._target.ndim not in (1, 2):
            raise ValueError(f"{self._name} must be 1-D (n,) or 2-D (batch, n), "
                             f"got shape {self.target.shape}")

    if TYPE_CHECKING:
        @property
        def target(self) -> NDArray[Any]: ...
    else:
        target = property(lambda self: self._target,
                          doc="the target (read in place at each call)")

    def _params(self) -> tuple[NDArray[Any], ...]:
        return (self.target,)

    def _rows(self, B: int, n: int, dtype: np.dtype[Any]) -> _Rows:
        t = self.target
        if t.dtype == dtype and t.flags.c_contiguous and t.flags.aligned and (
                t.shape == (n,) and B == 1 or t.shape == (B, n)):
            return t, None      # read in place
        if t.shape[-1] != n or (t.ndim == 2 and t.shape[0] != B):
            want = f"({n},) or ({B}, {n})"
            raise ValueError(f"{self._name} has shape {t.shape} but the output "
                             f"x^(k) has {B} sample(s) of {n} values: expected {want}")
        return np.require(np.broadcast_to(t, (B, n)), dtype, "CA"), None  # type: ignore[arg-type, unused-ignore]  # "CA": C, A


class SquaredError(_TargetLoss):
    """l(x) = 1/2 ||x - t||^2; grad = x - t.

    Parameters
    ----------
    target : array_like, shape (n,) or (B, n)
        t, one for every sample or one per sample; read in place at each
        call (an in-place change is seen).
    """

    _code = _LOSS["squared_error"]

    def __repr__(self) -> str:
        return "SquaredError(target)"


class MeanSquaredError(_TargetLoss):
    """l(x) = mean((x - t)^2) over the n values; grad = 2 (x - t) / n.

    Parameters
    ----------
    target : array_like, shape (n,) or (B, n)
        t, as for :class:`SquaredError`.
    """

    _code = _LOSS["mean_squared_error"]

    def __repr__(self) -> str:
        return "MeanSquaredError(target)"


class Dot(_TargetLoss):
    """l(x) = w . x; grad = w.

    Parameters
    ----------
    w : array_like, shape (n,) or (B, n)
        One for every sample or one per sample; read in place at each call.
    """

    _code = _LOSS["dot"]
    _name = "w"

    def __repr__(self) -> str:
        return "Dot(w)"


class LogSumExp(Loss):
    """l(x) = log sum exp(x), stable; grad = softmax(x)."""

    _code = _LOSS["logsumexp"]

    def __repr__(self) -> str:
        return "LogSumExp()"


class CrossEntropy(Loss):
    """Cross-entropy from logits: l(x) = logsumexp(x) - x[label], stable;
    grad = softmax(x) - onehot(label).

    Parameters
    ----------
    labels : int or array_like of ints, shape (B,)
        An int for one sample (or every sample), or one per sample.  Read
        from the caller's array at each call, copied and checked there
        (0 <= label < n).
    """

    _code = _LOSS["cross_entropy"]

    def __init__(self, labels: ArrayLike) -> None:
        a = as_array(labels, "labels")
        if a.dtype.kind not in "iu":
            raise TypeError(f"labels must be integers, got dtype {a.dtype}")
        if a.ndim > 1:
            raise ValueError(f"labels must be an int or 1-D (batch,), got shape {a.shape}")
        self._labels = a

    if TYPE_CHECKING:
        @property
        def labels(self) -> NDArray[np.integer[Any]]: ...
    else:
        labels = property(lambda self: self._labels,
                          doc="the labels (the caller's array, read at each call)")

    def _rows(self, B: int, n: int, dtype: np.dtype[Any]) -> _Rows:
        a = self._labels
        if a.ndim == 1 and a.shape[0] != B:
            raise ValueError(f"labels has shape {a.shape} but the batch has {B} "
                             f"sample(s)")
        # a copy, taken and validated here: the kernels index with it after
        # the GIL is released, so the caller's array (which another thread
        # may change meanwhile) is never what they read
        if a.ndim == 0:
            v = int(a)
            if 0 <= v < n:
                return None, (np.array((v,), dtype=np.int64) if B == 1
                              else np.full(B, v, dtype=np.int64))
        else:
            lab = np.array(a, dtype=np.int64)  # uint64 past int64 wraps < 0
            if B == 0 or (lab.min() >= 0 and lab.max() < n):
                return None, lab
        src = np.broadcast_to(a, (B,))
        lab = np.array(src, dtype=np.int64)
        bad = np.flatnonzero((lab < 0) | (lab >= n))
        if bad.size:
            i = int(bad[0])
            where = f"labels[{i}]" if a.ndim == 1 else "labels"
            raise ValueError(f"{where} = {int(src[i])} is out of range for "
                             f"{n} classes (0 <= label < {n})")
        return None, lab

    def __repr__(self) -> str:
        return "CrossEntropy(labels)"
