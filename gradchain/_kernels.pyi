# Type stubs for the compiled module gradchain._kernels (_kernels.pyx).
#
# The cdef kernels (link_jtv, link_jv, pack_rows, effective_threads) are C-level
# only: other extension modules cimport them through __pyx_capi__, which
# Python code never uses (see tests/stubtest-allowlist.txt).
from typing import Any

import numpy as np
from numpy.typing import NDArray

_Float = np.float32 | np.float64

# Thread control and build facts (re-exported by gradchain).
def set_num_threads(n: int | np.integer[Any] | None) -> None: ...
def get_num_threads() -> int: ...
def simd_target() -> str: ...
def openmp_enabled() -> bool: ...

# Typed-memoryview entry points for the tests and benchmarks: J is read as
# const floating[:, :] (any layout); g, v as C-contiguous vectors
# and out as a writeable C-contiguous buffer, all of one float dtype.  No
# checks beyond shapes: the public API is gradchain.vjp / gradchain.jvp.
def jtv(J: NDArray[_Float], g: NDArray[_Float], out: NDArray[_Float]) -> None: ...
def jv(J: NDArray[_Float], v: NDArray[_Float], out: NDArray[_Float]) -> None: ...
# (The many-vector forms jtv_block / jv_block are gradchain._blas's.)
