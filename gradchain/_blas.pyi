# Type stubs for the compiled module gradchain._blas (_blas.pyx, _blas.pxd).
#
# The one door to BLAS ?gemm: matmul, block_jtv and block_jv are C-level
# only (cimported through __pyx_capi__ by _propagate, _accumulate and
# _program).  The def functions are typed-memoryview entry points for the
# tests and benchmarks: J is read as const floating[:, :] (any layout), the
# rows as C-contiguous, out as a writeable C-contiguous buffer, all of one
# float dtype; no checks beyond shapes.
import numpy as np
from numpy.typing import NDArray

_Float = np.float32 | np.float64

def jtv_block(J: NDArray[_Float], G: NDArray[_Float], out: NDArray[_Float]) -> None: ...
def jv_block(J: NDArray[_Float], V: NDArray[_Float], out: NDArray[_Float]) -> None: ...
def _blas_loaded() -> bool: ...
