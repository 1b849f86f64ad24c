# Type stubs for the compiled module gradchain._structured (_structured.pyx,
# _structured.pxd).  The kernel struct_apply is C-level only (cimported by
# _chain through __pyx_capi__).
import enum

# cpdef enum LinkKind (_structured.pxd): the link kinds of the compiled chain
# loop, also the _gc_kind of the operator classes in gradchain.operators.
class LinkKind(enum.IntEnum):
    LINK_DENSE = 0
    LINK_DIAG = 1
    LINK_SCALED_IDENTITY = 2
    LINK_DIAG_RANK1 = 3
