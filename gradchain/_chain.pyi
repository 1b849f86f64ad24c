# Type stubs for the compiled module gradchain._chain (_chain.pyx).
# ChainCore is a LinkTable (gradchain._bind) that runs products.
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal, TypeVar, overload

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray
from typing_extensions import Self, disjoint_base

from gradchain._bind import LinkTable
from gradchain._bracket import Strategy
from gradchain.operators import Operator

_C = TypeVar("_C")

_Float = np.float32 | np.float64
# A link: a 2-D array (n_i, n_{i-1}), a 3-D array (batch, n_i, n_{i-1}) of
# per-sample Jacobians, or a structured operator.
_Link = ArrayLike | Operator
# A list of links, or one 3-D array (k, m, n) stacking k Jacobians.
_Jacobians = Iterable[_Link] | ArrayLike

# A cdef class: its C struct layout makes it a disjoint base (PEP 800).
def _rebuild(cls: type[_C], jacobians: Any, copies: bool) -> _C: ...

# The k + 1 cotangents (vjp) or tangents (jvp) of one product; a Sequence
# (registered with collections.abc.Sequence) of arrays.
@disjoint_base
class Trajectory:
    @property
    def buffer(self) -> NDArray[_Float] | None: ...
    @property
    def kind(self) -> str: ...
    def __len__(self) -> int: ...
    @overload
    def __getitem__(self, index: int, /) -> NDArray[_Float]: ...
    @overload
    def __getitem__(self, index: slice, /) -> tuple[NDArray[_Float], ...]: ...
    def __iter__(self) -> Iterator[NDArray[_Float]]: ...

@disjoint_base
class ChainCore(LinkTable):
    # __cinit__(self, *args, **kwargs) takes exactly one argument, positional
    # or as jacobians=...; no __init__ of its own.
    def __new__(cls, jacobians: _Jacobians, *, transpose_copies: bool = ...) -> Self: ...
    # Pickles as _rebuild(type(self), the bound jacobians, transpose_copies).
    def __reduce__(self) -> tuple[Callable[..., Self], tuple[type[Self], NDArray[Any] | list[Any], bool]]: ...
    @property
    def transpose_copy_bytes(self) -> int | None: ...
    def __len__(self) -> int: ...
    @property
    def shapes(self) -> tuple[tuple[int, int], ...]: ...
    @property
    def dims(self) -> tuple[int, ...]: ...
    @property
    def input_dim(self) -> int | None: ...
    @property
    def output_dim(self) -> int | None: ...
    @property
    def dtype(self) -> np.dtype[_Float] | None: ...
    @property
    def jacobians(self) -> tuple[NDArray[Any] | Operator, ...]: ...
    @property
    def batch(self) -> int | None: ...
    # Used by gradchain.chain.Chain.plan: the Strategy a product of (mode,
    # batch) runs; mode "vjp", "jvp" or "jacobian".
    def _plan_strategy(self, batch: int, mode: str,
                       format: str | None = None) -> Strategy: ...
    # Tests: the record for (mode, batch), and (record or None, what ran) of
    # the last product ("propagate", "accumulate", "samples", "zeros",
    # "copy" or "promoted").
    def _strategy_of(self, mode: str, batch: int) -> Strategy: ...
    def _last_strategy(self) -> tuple[Strategy | None, str] | None: ...
    @overload
    def vjp(
        self,
        cotangent: ArrayLike,  # (n_k,) or (batch, n_k)
        out: NDArray[_Float] | None = None,
        *,
        intermediates: Literal[False] = ...,
        accumulate: Literal["float64"] | None = None,
    ) -> NDArray[_Float]: ...
    @overload
    def vjp(
        self,
        cotangent: ArrayLike,
        out: Sequence[NDArray[_Float]] | None = None,
        *,
        intermediates: Literal[True],
        accumulate: Literal["float64"] | None = None,
    ) -> Trajectory: ...
    @overload
    def vjp(
        self,
        cotangent: ArrayLike,
        out: NDArray[_Float] | Sequence[NDArray[_Float]] | None = None,
        *,
        intermediates: bool,
        accumulate: Literal["float64"] | None = None,
    ) -> NDArray[_Float] | Trajectory: ...
    @overload
    def jvp(
        self,
        tangent: ArrayLike,  # (n_0,) or (batch, n_0)
        out: NDArray[_Float] | None = None,
        *,
        intermediates: Literal[False] = ...,
        accumulate: Literal["float64"] | None = None,
    ) -> NDArray[_Float]: ...
    @overload
    def jvp(
        self,
        tangent: ArrayLike,
        out: Sequence[NDArray[_Float]] | None = None,
        *,
        intermediates: Literal[True],
        accumulate: Literal["float64"] | None = None,
    ) -> Trajectory: ...
    @overload
    def jvp(
        self,
        tangent: ArrayLike,
        out: NDArray[_Float] | Sequence[NDArray[_Float]] | None = None,
        *,
        intermediates: bool,
        accumulate: Literal["float64"] | None = None,
    ) -> NDArray[_Float] | Trajectory: ...
    # (n_k, n_0), or (batch, n_k, n_0) with per-sample links.
    # a dense array, or a scipy.sparse.csr_array (see Chain.jacobian)
    def jacobian(self, format: str | None = None, *,
                 accumulate: Literal["float64"] | None = None) -> Any: ...
