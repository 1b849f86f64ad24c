# Type stubs for the compiled module gradchain._link (_link.pyx, _link.pxd).
#
# The Link record and link_apply_rows are C-level only (cimported through
# __pyx_capi__); Python sees the kind enum and OperatorCall.
import enum
from typing import Any

import numpy as np
from numpy.typing import NDArray

from typing_extensions import disjoint_base

# cpdef enum LinkKind (_link.pxd): the one kind enum of the links, also the
# _gc_kind of the operator classes in gradchain.operators.
class LinkKind(enum.IntEnum):
    LINK_DENSE = 0
    LINK_DIAG = 1
    LINK_SCALED_IDENTITY = 2
    LINK_DIAG_RANK1 = 3
    LINK_IDENTITY = 4
    LINK_ELEMENTWISE = 5
    LINK_SOFTMAX = 6
    LINK_LOG_SOFTMAX = 7
    LINK_CSR = 8
    LINK_CSC = 9
    LINK_OPERATOR = 10

# A matrix-free link's callbacks (built by _bind for an object with shape,
# matvec and rmatvec).  A cdef class: a disjoint base (PEP 800).
@disjoint_base
class OperatorCall:
    @property
    def op(self) -> Any: ...
    @property
    def index(self) -> int: ...
    @property
    def m(self) -> int: ...
    @property
    def n(self) -> int: ...
    def __init__(self, op: Any, index: int, m: int, n: int) -> None: ...
    # Cython's generated pickle support (it holds Python objects only)
    def __reduce_cython__(self) -> Any: ...
    def __setstate_cython__(self, state: Any) -> None: ...

# The sparse kernels over typed memoryviews (fused float32/float64 data,
# int32/int64 indices): gather (J x of a CSR) or scatter (J^T x of a CSR).
def sparse_rows(
    data: NDArray[np.float32] | NDArray[np.float64],
    indices: NDArray[np.int32] | NDArray[np.int64],
    indptr: NDArray[np.int32] | NDArray[np.int64],
    nbound: int,
    x: NDArray[np.float32] | NDArray[np.float64],
    out: NDArray[np.float32] | NDArray[np.float64],
    gather: bool,
    tiled: bool = ...,
) -> None: ...

# The scatter's partition of a compressed structure (chunks, bounds, spans,
# exclusive intervals, gaps), as a bound link's is computed.
def sparse_partition(
    indices: NDArray[np.int32] | NDArray[np.int64],
    indptr: NDArray[np.int32] | NDArray[np.int64],
    nbound: int,
) -> dict[str, Any]: ...
