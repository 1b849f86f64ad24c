# Type stubs for the compiled module gradchain._chain (_chain.pyx).
from collections.abc import Iterable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray
from typing_extensions import Self, disjoint_base

from gradchain.operators import Operator

_Float = np.float32 | np.float64
# A link: a 2-D array (n_i, n_{i-1}), a 3-D array (batch, n_i, n_{i-1}) of
# per-sample Jacobians, or a structured operator.
_Link = ArrayLike | Operator
# A list of links, or one 3-D array (k, m, n) stacking k Jacobians.
_Jacobians = Iterable[_Link] | ArrayLike
# The bracketing table of the matrix-chain programme, or a plain order.
_Order = str | NDArray[np.intc]

# A cdef class: its C struct layout makes it a disjoint base (PEP 800).
@disjoint_base
class ChainCore:
    # __cinit__(self, *args, **kwargs) takes exactly one argument, positional
    # or as jacobians=...; no __init__ of its own.
    def __new__(cls, jacobians: _Jacobians) -> Self: ...
    # Pickles as type(self)(the bound jacobians).
    def __reduce__(self) -> tuple[type[Self], tuple[NDArray[Any] | list[Any]]]: ...
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
    # Used by gradchain.chain.Chain.plan: (order, cost, left-to-right cost,
    # right-to-left cost, factor names); mode "vjp", "jvp" or "jacobian".
    def _plan_info(
        self, batch: int, mode: str
    ) -> tuple[_Order, float, float, float, list[str]]: ...
    def vjp(
        self,
        cotangent: ArrayLike,  # (n_k,) or (batch, n_k)
        out: NDArray[_Float] | None = None,
    ) -> NDArray[_Float]: ...
    def jvp(
        self,
        tangent: ArrayLike,  # (n_0,) or (batch, n_0)
        out: NDArray[_Float] | None = None,
    ) -> NDArray[_Float]: ...
    # (n_k, n_0), or (batch, n_k, n_0) with per-sample links.
    def jacobian(self) -> NDArray[_Float]: ...

# The dtype rule: float32 (float16 widened) or float64 (float64, integers,
# bool); TypeError naming `name` for complex, long double and non-numeric.
def compute_dtype(dtype: DTypeLike, name: str) -> np.dtype[_Float]: ...
# The one input conversion: an ndarray read in place, or np.asarray(x);
# TypeError for masked, ragged or non-array-like input.
def as_array(x: object, name: str) -> NDArray[Any]: ...
