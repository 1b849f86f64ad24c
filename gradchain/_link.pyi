# Type stubs for the compiled module gradchain._link (_link.pyx, _link.pxd).
#
# The Link record and link_apply_rows are C-level only (cimported through
# __pyx_capi__); Python sees the kind enum.
import enum

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
