# Type stubs for the compiled module gradchain._bind (_bind.pyx, _bind.pxd).
#
# LinkTable's fields and binding methods are C-level (cdef); ChainCore
# (gradchain._chain) is the LinkTable Python code uses.
from collections.abc import Iterable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray
from typing_extensions import Self, disjoint_base

from gradchain.operators import Operator

_Float = np.float32 | np.float64
_Jacobians = Iterable[ArrayLike | Operator] | ArrayLike

# A cdef class: its C struct layout makes it a disjoint base (PEP 800).
@disjoint_base
class LinkTable:
    # __cinit__(self, *args, **kwargs) takes exactly one argument, positional
    # or as jacobians=..., and the keyword transpose_copies
    def __new__(cls, jacobians: _Jacobians, *, transpose_copies: bool = ...) -> Self: ...

# The dtype rule: float32 (float16 widened) or float64 (float64, integers,
# bool); TypeError naming `name` for complex, long double and non-numeric.
def compute_dtype(dtype: DTypeLike, name: str) -> np.dtype[_Float]: ...
# The one input conversion: an ndarray read in place, or np.asarray(x);
# TypeError for masked, ragged or non-array-like input.
def as_array(x: object, name: str) -> NDArray[Any]: ...
