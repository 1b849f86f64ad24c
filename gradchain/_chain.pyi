# Type stubs for the compiled module gradchain._chain.
from collections.abc import Iterable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

_Float = np.float32 | np.float64

class ChainCore:
    def __init__(
        self,
        jacobians: Iterable[ArrayLike] | ArrayLike,  # list of (n_i, n_{i-1}) or (k, m, n)
    ) -> None: ...
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
    def dtype(self) -> np.dtype[Any] | None: ...
    @property
    def jacobians(self) -> tuple[NDArray[_Float], ...]: ...
    def vjp(
        self,
        cotangent: ArrayLike,  # (n_k,) or (batch, n_k)
        out: NDArray[_Float] | None = ...,
    ) -> NDArray[_Float]: ...
    def jvp(
        self,
        tangent: ArrayLike,  # (n_0,) or (batch, n_0)
        out: NDArray[_Float] | None = ...,
    ) -> NDArray[_Float]: ...
