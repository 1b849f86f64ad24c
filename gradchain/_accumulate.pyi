# Type stubs for the compiled module gradchain._accumulate (_accumulate.pyx,
# _accumulate.pxd).
#
# The module has no Python-level API: the executor of a bracketing
# (run_product, run_samples) is cdef, cimported by gradchain._chain through
# __pyx_capi__.  This stub exists so that stubtest checks the module (it
# would report any public name added to it later).
