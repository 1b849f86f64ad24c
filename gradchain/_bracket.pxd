# Choosing how a product runs: the structure-aware cost model, the
# matrix-chain programme, and the one Strategy record that both the
# executors (_chain.ChainCore) run and Chain.plan() renders.
from gradchain._link cimport Link

# Products along a chain
cdef enum:
    MODE_VJP = 0          # G J_k ... J_1 (a block G of cotangents as rows)
    MODE_JVP = 1          # V J_1^T ... J_k^T (a block of tangents as rows)
    MODE_JACOBIAN = 2     # J_k ... J_1
    MODE_SPARSE = 3       # J_k ... J_1 as a sparse matrix: every link sparse
                          # or diagonal-like (sparse_jacobian_ok), products
                          # by SpGEMM, costed by estimated nonzeros

# Orders a product runs in
cdef enum:
    ORDER_TABLE = 0       # the bracketing table of the programme
    ORDER_LEFT = 1        # ((F_0 F_1) F_2) ...: for vjp/jvp, propagation
    ORDER_RIGHT = 2       # F_0 (F_1 (... F_{m-1}))

cdef class Strategy:
    cdef readonly str mode          # "vjp", "jvp" or "jacobian"
    cdef readonly str format        # "dense", or "csr" (MODE_SPARSE)
    cdef readonly Py_ssize_t batch  # vectors in the block (0: jacobian)
    cdef readonly int order         # ORDER_*
    cdef readonly object table      # ORDER_TABLE: the split table (intc,
                                    # m * m), else None
    cdef readonly double cost       # multiply-adds of what runs
    cdef readonly double l2r, r2l   # ... of the two plain orders
    cdef readonly bint per_sample   # the chain has per-sample links
    cdef readonly bint sample_threads  # per-sample jacobian: samples split
                                    # over threads (each product on one);
                                    # else one sample at a time, products
                                    # threaded
    cdef const int *split           # the table's data (NULL: plain order)

# The factors of the product, in the order they multiply: jacobian
# [J_k .. J_1]; vjp [G, J_k .. J_1]; jvp [V, J_1^T .. J_k^T], G and V the
# C-contiguous block (B rows) at block.  out holds k (+ 1) links.
cdef Py_ssize_t product_factors(const Link *links, Py_ssize_t k, int mode,
                                Py_ssize_t B, const void *block,
                                Link *out) noexcept nogil

# The strategy for a product along links[0..k) (k >= 1) with a block of B
# vectors (0 for the jacobian), nsamples the per-sample links' count (-1:
# none), cached in chain_cache per (mode, B) and, for small tables, across
# chains by shape.
cdef Strategy choose(const Link *links, Py_ssize_t k, int mode, Py_ssize_t B,
                     Py_ssize_t nsamples, dict chain_cache)

# The links can make a sparse jacobian (MODE_SPARSE): at least one sparse
# link, every other diagonal, c I or I, none per-sample.
cdef bint sparse_jacobian_ok(const Link *links, Py_ssize_t k) noexcept nogil
