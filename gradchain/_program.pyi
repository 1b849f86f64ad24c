# Type stubs for the compiled module gradchain._plan.
import enum
from typing import Any

import numpy as np
from numpy.typing import NDArray

class OpCode(enum.IntEnum):
    OP_AFFINE = 1
    OP_ELEMENTWISE = 2
    OP_SOFTMAX = 3
    OP_LOG_SOFTMAX = 4

class Plan:
    def __init__(self, specs: list[tuple[Any, ...]], dtype: Any) -> None: ...
    def dims(self, n0: int) -> tuple[int, ...]: ...
    def loss_grad(
        self,
        x: NDArray[np.floating],  # (n_0,) or (B, n_0), C-contiguous, plan dtype
        loss: int,
        aux: NDArray[np.floating] | None,
        labels: NDArray[np.int64] | None,
    ) -> tuple[NDArray[np.float64], NDArray[np.floating]]: ...
    def run(
        self,
        X: NDArray[np.floating],  # (B, n_0), C-contiguous, plan dtype
        mode: str,
        T: NDArray[np.floating] | None = ...,
    ) -> Any: ...

# elementwise and loss codes (csrc/gc_maps.h)
GC_EW_TANH: int
GC_EW_SIGMOID: int
GC_EW_RELU: int
GC_EW_LEAKY_RELU: int
GC_EW_SOFTPLUS: int
GC_EW_EXP: int
GC_EW_LOG: int
GC_EW_SIN: int
GC_EW_COS: int
GC_EW_SQUARE: int
GC_EW_SCALE: int
GC_LOSS_SQUARED_ERROR: int
GC_LOSS_MEAN_SQUARED_ERROR: int
GC_LOSS_CROSS_ENTROPY: int
GC_LOSS_LOGSUMEXP: int
GC_LOSS_DOT: int
