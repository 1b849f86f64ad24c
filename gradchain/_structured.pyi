# Type stubs for the compiled module gradchain._structured.
import enum

class LinkKind(enum.IntEnum):
    LINK_DENSE = 0
    LINK_DIAG = 1
    LINK_SCALED_IDENTITY = 2
    LINK_DIAG_RANK1 = 3
