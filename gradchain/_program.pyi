# Type stubs for the compiled module gradchain._program (_program.pyx).
import enum
from typing import Any, Final, Literal, NoReturn, overload

import numpy as np
from numpy.typing import DTypeLike, NDArray
from typing_extensions import Self, disjoint_base

from gradchain.operators import Diagonal, DiagonalPlusRankOne

_Float = np.float32 | np.float64

# One spec per map, already in the plan's dtype:
#   (OP_AFFINE, W (n_out, n_in), b (n_out,) or None)
#   (OP_ELEMENTWISE, GC_EW_* code, parameter)
#   (OP_SOFTMAX,) or (OP_LOG_SOFTMAX,)
_Spec = (
    tuple[int, NDArray[_Float], NDArray[_Float] | None]
    | tuple[int, int, float]
    | tuple[int]
)

# cpdef enum OpCode: the op codes of a programme (maps.py builds the specs).
class OpCode(enum.IntEnum):
    OP_AFFINE = 1
    OP_ELEMENTWISE = 2
    OP_SOFTMAX = 3
    OP_LOG_SOFTMAX = 4

# A cdef class: its C struct layout makes it a disjoint base (PEP 800).
@disjoint_base
class Program:
    # __cinit__(self, list specs, dtype); no __init__ of its own.
    def __new__(cls, specs: list[_Spec], dtype: DTypeLike) -> Self: ...
    # Not picklable (it holds C pointers): Cython's generated __reduce__
    # raises TypeError.
    def __reduce__(self) -> NoReturn: ...
    def dims(self, n0: int) -> tuple[int, ...]: ...
    def loss_grad(
        self,
        x: NDArray[_Float],  # (n_0,) or (B, n_0), C-contiguous, plan dtype
        loss: int,  # a GC_LOSS_* code
        aux: NDArray[_Float] | None,  # (B, n_k) target rows, or None
        labels: NDArray[np.int64] | None,  # (B,), C-contiguous, or None
        pmode: int = 0,  # 0; 1 parameter gradients summed; 2 per example
        want_x: bool = True,
    ) -> Any: ...  # (values (B,), grad like x) [+ parameter gradients per op]
    # x (n_0,), C-contiguous in the plan's dtype.
    @overload
    def jacobian(
        self, x: NDArray[_Float], links: Literal[False] = False
    ) -> NDArray[_Float]: ...  # J_k ... J_1, (n_k, n_0)
    @overload
    def jacobian(
        self, x: NDArray[_Float], links: Literal[True]
    ) -> list[NDArray[_Float] | Diagonal | DiagonalPlusRankOne]: ...
    @overload
    def jacobian(
        self, x: NDArray[_Float], links: bool
    ) -> NDArray[_Float] | list[NDArray[_Float] | Diagonal | DiagonalPlusRankOne]: ...
    # X (B, n_0), C-contiguous in the plan's dtype.
    # mode "forward": [x^(0), ..., x^(k)] (copies); "vjp"/"jvp": (x^(k),
    # products), with pmode 1/2 (vjp) plus the parameter gradients per op.
    def run(
        self, X: NDArray[_Float], mode: str, T: NDArray[_Float] | None = None,
        pmode: int = 0, want_x: bool = True,
    ) -> Any: ...

# The elementwise and loss codes, declared once in csrc/gc_maps.h and
# exported by an anonymous cpdef enum (plain ints at module level).
GC_EW_TANH: Final[int]
GC_EW_SIGMOID: Final[int]
GC_EW_RELU: Final[int]
GC_EW_LEAKY_RELU: Final[int]
GC_EW_SOFTPLUS: Final[int]
GC_EW_EXP: Final[int]
GC_EW_LOG: Final[int]
GC_EW_SIN: Final[int]
GC_EW_COS: Final[int]
GC_EW_SQUARE: Final[int]
GC_EW_SCALE: Final[int]
GC_LOSS_SQUARED_ERROR: Final[int]
GC_LOSS_MEAN_SQUARED_ERROR: Final[int]
GC_LOSS_CROSS_ENTROPY: Final[int]
GC_LOSS_LOGSUMEXP: Final[int]
GC_LOSS_DOT: Final[int]
