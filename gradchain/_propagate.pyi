# Type stubs for the compiled module gradchain._propagate (_propagate.pyx,
# _propagate.pxd).
#
# No Python-level API: the one propagation loop (propagate) is cdef,
# cimported by gradchain._chain and gradchain._program through __pyx_capi__.
