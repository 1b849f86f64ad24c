# Type stubs for the compiled module gradchain._accumulate (_accumulate.pyx,
# _accumulate.pxd).
#
# The module has no Python-level API: the matrix-chain programme and its
# executor (plan_chain, order_cost, run_chain_f, run_chain_d) are cdef
# functions that gradchain._chain cimports through __pyx_capi__.  This stub
# exists so that `import gradchain._accumulate` type-checks and stubtest
# checks the module (it would report any public name added to it later).
