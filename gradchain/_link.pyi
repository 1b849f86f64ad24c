# Type stubs for the compiled module gradchain._link.
import enum

class LinkKind(enum.IntEnum):
    LINK_DENSE = 0
    LINK_DIAG = 1
    LINK_SCALED_IDENTITY = 2
    LINK_DIAG_RANK1 = 3
    LINK_IDENTITY = 4
    LINK_ELEMENTWISE = 5
    LINK_SOFTMAX = 6
    LINK_LOG_SOFTMAX = 7
