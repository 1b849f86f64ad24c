"""Structured Jacobian operators: links of a chain that are never materialised.

Each operator stands for a Jacobian J with a known structure; in a
:class:`gradchain.Chain` (mixed freely with plain 2-D arrays) its products
J^T g and J v run in O(n) inside the same compiled chain loop:

=====================================  ===================  ==============
operator                               J                    cost per vector
=====================================  ===================  ==============
``Dense(J)``                           J (what a plain      m n
                                       2-D array means)
``Diagonal(d)``                        diag(d)              n
``Identity(n, scale=c)``               c I                  n
``DiagonalPlusRankOne(d, u, v, c)``    diag(d) + c u v^T    ~3 n
``DiagonalPlusRankOne.softmax(s)``     diag(s) - s s^T      ~3 n
=====================================  ===================  ==============

Vectors follow the dtype rule of :mod:`gradchain.chain` (float32 stays
float32; integers and bool become float64; complex raises ``TypeError``).
Operators keep references to the caller's vectors, and a ``Chain`` reads
float32/float64 vectors in place whatever their stride, as it does matrices:
modify one in place and later products use the new values.  (A vector of the
other float dtype in a mixed chain is bound as a copy taken when the chain is
built.)

Operators are immutable: their attributes (``diagonal``, ``u``, ``v``,
``c``, ``n``, ``scale``, ``matrix``) are read-only, and assigning one raises
``AttributeError`` -- build a new operator instead.  A ``Chain`` checks what
an operator hands it when it binds it (a square integer shape, vectors of
that length and a real dtype, a real scale), so a subclass that overrides
them inconsistently raises ``ValueError``/``TypeError`` there rather than
making the kernels read past a vector.
"""
from __future__ import annotations

import numbers
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from gradchain._bind import as_array, compute_dtype
from gradchain._link import LinkKind

# The link kinds the compiled chain loop knows (see _link.pxd).
LINK_DENSE = int(LinkKind.LINK_DENSE)
LINK_DIAG = int(LinkKind.LINK_DIAG)
LINK_SCALED_IDENTITY = int(LinkKind.LINK_SCALED_IDENTITY)
LINK_DIAG_RANK1 = int(LinkKind.LINK_DIAG_RANK1)

__all__ = ["Operator", "Dense", "Diagonal", "Identity", "DiagonalPlusRankOne"]

if TYPE_CHECKING:
    from typing_extensions import Self

# What operators hold and return (for the annotations): float32 or float64.
_FloatArray = NDArray[np.float32 | np.float64]
_FloatDtype = np.dtype[np.float32 | np.float64]


def _as_float_array(x: ArrayLike, name: str, ndim: int) -> _FloatArray:
    a = as_array(x, name)
    try:
        dtype = compute_dtype(a.dtype, name)
    except TypeError:
        raise TypeError(f"{name} has dtype {a.dtype}; operators take real "
                        f"float32/float64 (or integer/bool) values") from None
    if a.dtype != dtype:
        a = a.astype(dtype)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    return a


def _scalar(c: object, name: str) -> float:
    """c as a float; TypeError for anything but a real number (bool too)."""
    if isinstance(c, (bool, np.bool_)) or not isinstance(c, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {c!r}")
    return float(c)


class Operator:
    """A Jacobian known by its structure (abstract base).

    Attributes
    ----------
    shape : (int, int)
        (n_out, n_in).
    dtype : numpy.dtype or None
        float32 or float64; None when the operator does not constrain the
        chain's dtype (``Identity``).
    """

    __slots__ = ()
    _gc_kind = -1

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(
            f"{type(self).__name__}.{name} cannot be set: operators are "
            f"immutable; build a new {type(self).__name__}(...) instead")

    def __delattr__(self, name: str) -> NoReturn:
        self.__setattr__(name, None)

    def _init(self, **attrs: Any) -> None:
        """Set the attributes once, at construction."""
        for name, value in attrs.items():
            object.__setattr__(self, name, value)

    @property
    def shape(self) -> tuple[int, int]:
        raise NotImplementedError

    @property
    def dtype(self) -> _FloatDtype | None:
        raise NotImplementedError

    def todense(self) -> _FloatArray:
        """The Jacobian as a dense (n_out, n_in) ndarray."""
        raise NotImplementedError

    def astype(self, dtype: DTypeLike) -> Operator:
        """The same operator with its vectors cast to ``dtype`` (float32 or
        float64)."""
        raise NotImplementedError

    @staticmethod
    def _check_float(dtype: DTypeLike) -> np.dtype[Any]:
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"operators hold float32 or float64 values, not {dtype}")
        return dtype

    def _gc_vectors(self) -> tuple[_FloatArray, ...]:
        return ()

    def _gc_scale(self) -> float:
        return 1.0

    def matvec(self, v: ArrayLike) -> NDArray[np.floating[Any]]:
        """J v (v of shape (n_in,) or (batch, n_in))."""
        from gradchain.chain import jvp
        return jvp([self], v)  # type: ignore[no-any-return, unused-ignore]  # chain.jvp: Any

    def rmatvec(self, g: ArrayLike) -> NDArray[np.floating[Any]]:
        """J^T g (g of shape (n_out,) or (batch, n_out))."""
        from gradchain.chain import vjp
        return vjp([self], g)  # type: ignore[no-any-return, unused-ignore]  # chain.vjp: Any


class Dense(Operator):
    """A dense Jacobian J of shape (n_out, n_in): what a plain 2-D array
    in a chain means.  Keeps a reference to ``J`` (no copy)."""

    __slots__ = ("_matrix",)
    _gc_kind = LINK_DENSE

    _matrix: _FloatArray

    def __init__(self, J: ArrayLike) -> None:
        self._init(_matrix=_as_float_array(J, "J", 2))

    @property
    def matrix(self) -> _FloatArray:
        """The dense Jacobian (the caller's array, read in place)."""
        return self._matrix

    @property
    def shape(self) -> tuple[int, int]:
        m, n = self.matrix.shape        # 2-D (checked); NumPy 2.0 types it tuple[int, ...]
        return m, n

    @property
    def dtype(self) -> _FloatDtype:
        return self.matrix.dtype

    def todense(self) -> _FloatArray:
        return np.array(self.matrix)

    def astype(self, dtype: DTypeLike) -> Dense:
        return Dense(self.matrix.astype(self._check_float(dtype), copy=False))

    def __reduce__(self) -> tuple[type[Dense], tuple[_FloatArray]]:
        return (Dense, (self.matrix,))

    def __repr__(self) -> str:
        return f"Dense(shape={self.shape}, dtype={self.dtype})"


class Diagonal(Operator):
    """J = diag(d): the Jacobian of an elementwise map, J^T g = d * g.

    Costs n per vector and O(n) memory, whatever n.
    """

    __slots__ = ("_d",)
    _gc_kind = LINK_DIAG

    _d: _FloatArray

    def __init__(self, d: ArrayLike) -> None:
        self._init(_d=_as_float_array(d, "d", 1))

    @property
    def diagonal(self) -> _FloatArray:
        """d (the caller's vector, read in place)."""
        return self._d

    @property
    def shape(self) -> tuple[int, int]:
        n = self.diagonal.shape[0]
        return (n, n)

    @property
    def dtype(self) -> _FloatDtype:
        return self.diagonal.dtype

    def todense(self) -> _FloatArray:
        return np.diag(self.diagonal)

    def astype(self, dtype: DTypeLike) -> Diagonal:
        return Diagonal(self.diagonal.astype(self._check_float(dtype), copy=False))

    def __reduce__(self) -> tuple[type[Diagonal], tuple[_FloatArray]]:
        return (Diagonal, (self.diagonal,))

    def _gc_vectors(self) -> tuple[_FloatArray]:
        return (self.diagonal,)

    def __mul__(self, c: float) -> Diagonal:
        if not isinstance(c, numbers.Real) or isinstance(c, (bool, np.bool_)):
            return NotImplemented
        return Diagonal(self.diagonal * self.diagonal.dtype.type(c))

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return f"Diagonal(n={self.shape[0]}, dtype={self.dtype})"


class Identity(Operator):
    """J = scale * I of size n.  Takes the chain's dtype (constrains none)."""

    __slots__ = ("_n", "_scale")
    _gc_kind = LINK_SCALED_IDENTITY

    _n: int
    _scale: float

    def __init__(self, n: int, scale: float = 1.0) -> None:
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
            raise TypeError(f"n must be a non-negative int, got {n!r}")
        if n < 0:
            raise ValueError(f"n must be a non-negative int, got {n}")
        if n > sys.maxsize:
            raise ValueError(f"n must be at most sys.maxsize = {sys.maxsize}, "
                             f"got {n}")
        self._init(_n=int(n), _scale=_scalar(scale, "scale"))

    @property
    def n(self) -> int:
        """The size."""
        return self._n

    @property
    def scale(self) -> float:
        """c, a float."""
        return self._scale

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.n)

    @property
    def dtype(self) -> None:
        return None

    def todense(self) -> NDArray[np.float64]:
        return self.scale * np.eye(self.n)

    def astype(self, dtype: DTypeLike) -> Self:
        self._check_float(dtype)
        return self

    def __reduce__(self) -> tuple[type[Identity], tuple[int, float]]:
        return (Identity, (self.n, self.scale))

    def _gc_scale(self) -> float:
        return self.scale

    def __mul__(self, c: float) -> Identity:
        if not isinstance(c, numbers.Real) or isinstance(c, (bool, np.bool_)):
            return NotImplemented
        return Identity(self.n, self.scale * float(c))

    __rmul__ = __mul__

    def __repr__(self) -> str:
        if self.scale == 1.0:
            return f"Identity({self.n})"
        return f"Identity({self.n}, scale={self.scale!r})"


class DiagonalPlusRankOne(Operator):
    """J = diag(d) + c u v^T, applied in about 3n operations.

    J^T g = d * g + c v (u . g) and J x = d * x + c u (v . x).  The Jacobian
    of softmax s(x) is diag(s) - s s^T (:meth:`softmax`, which binds s three
    times and c = -1, so an in-place change of s keeps it a softmax
    Jacobian); that of log-softmax is I - 1 s^T (:meth:`log_softmax`).
    """

    __slots__ = ("_d", "_u", "_v", "_c")
    _gc_kind = LINK_DIAG_RANK1

    _d: _FloatArray
    _u: _FloatArray
    _v: _FloatArray
    _c: float

    def __init__(self, d: ArrayLike, u: ArrayLike, v: ArrayLike,
                 c: float = 1.0) -> None:
        d = _as_float_array(d, "d", 1)
        u = _as_float_array(u, "u", 1)
        v = _as_float_array(v, "v", 1)
        n = d.shape[0]
        for name, a in (("u", u), ("v", v)):
            if a.shape[0] != n:
                raise ValueError(f"{name} has shape {a.shape} but d has shape "
                                 f"{d.shape}; all three must have length n")
        self._init(_d=d, _u=u, _v=v, _c=_scalar(c, "c"))

    # (properties as decorators rather than property(lambda ...), so that
    # type checkers see them read-only, as they are)
    @property
    def diagonal(self) -> _FloatArray:
        """d (read in place)"""
        return self._d

    @property
    def u(self) -> _FloatArray:
        """u (read in place)"""
        return self._u

    @property
    def v(self) -> _FloatArray:
        """v (read in place)"""
        return self._v

    @property
    def c(self) -> float:
        """c, a float"""
        return self._c

    @classmethod
    def softmax(cls, s: ArrayLike) -> Self:
        """Jacobian of softmax at the point where softmax(x) = s."""
        s = _as_float_array(s, "s", 1)
        return cls(s, s, s, -1.0)

    @classmethod
    def log_softmax(cls, s: ArrayLike) -> Self:
        """Jacobian of log-softmax at the point where softmax(x) = s."""
        s = _as_float_array(s, "s", 1)
        one = np.ones_like(s)
        return cls(one, one, s, -1.0)

    @property
    def shape(self) -> tuple[int, int]:
        n = self.diagonal.shape[0]
        return (n, n)

    @property
    def dtype(self) -> _FloatDtype:
        return np.result_type(self.diagonal, self.u, self.v)

    def todense(self) -> _FloatArray:
        return np.diag(self.diagonal) + self.c * np.outer(self.u, self.v)

    def astype(self, dtype: DTypeLike) -> DiagonalPlusRankOne:
        dtype = self._check_float(dtype)
        return DiagonalPlusRankOne(self.diagonal.astype(dtype, copy=False),
                                   self.u.astype(dtype, copy=False),
                                   self.v.astype(dtype, copy=False), self.c)

    def __reduce__(self) -> tuple[type[DiagonalPlusRankOne],
                                  tuple[_FloatArray, _FloatArray, _FloatArray, float]]:
        return (DiagonalPlusRankOne, (self.diagonal, self.u, self.v, self.c))

    def _gc_vectors(self) -> tuple[_FloatArray, _FloatArray, _FloatArray]:
        return (self.diagonal, self.u, self.v)

    def _gc_scale(self) -> float:
        return self.c

    def __repr__(self) -> str:
        return f"DiagonalPlusRankOne(n={self.shape[0]}, dtype={self.dtype})"
