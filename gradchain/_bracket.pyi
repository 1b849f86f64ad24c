# Type stubs for the compiled module gradchain._bracket (_bracket.pyx,
# _bracket.pxd).
#
# choose() and product_factors() are C-level only (cimported by _chain);
# Python sees the Strategy record (through Chain.plan and the tests).
import numpy as np
from numpy.typing import NDArray
from typing_extensions import disjoint_base

# A cdef class: its C struct layout makes it a disjoint base (PEP 800).
# Built by choose() only; its attributes are read-only.
@disjoint_base
class Strategy:
    @property
    def mode(self) -> str: ...  # "vjp", "jvp" or "jacobian"
    @property
    def format(self) -> str: ...  # "dense", or "csr": a sparse jacobian
    @property
    def batch(self) -> int: ...  # vectors in the block (0: jacobian)
    @property
    def order(self) -> int: ...  # ORDER_TABLE 0, ORDER_LEFT 1, ORDER_RIGHT 2
    @property
    def order_name(self) -> str: ...  # "table", "left" or "right"
    @property
    def table(self) -> NDArray[np.intc] | None: ...  # the split table (m * m)
    @property
    def cost(self) -> float: ...
    @property
    def l2r(self) -> float: ...
    @property
    def r2l(self) -> float: ...
    @property
    def per_sample(self) -> bool: ...
    @property
    def sample_threads(self) -> bool: ...

# Forget the strategies shared across chains of the same shape.
def _clear_cache() -> None: ...
