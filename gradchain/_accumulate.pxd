# Jacobian accumulation: the structure-aware matrix-chain programme and the
# executor of its bracketing (see _accumulate.pyx).

# Factor kinds
cdef enum:
    F_DENSE = 0      # any layout: data, rs, cs
    F_DIAG = 1       # diag(d), d with stride ds
    F_SCALED = 2     # c I (c = coef)
    F_IDENT = 3      # I: free
    F_DPR1 = 4       # diag(d) + coef u v^T, strides ds, us, vs

cdef struct Factor:
    int kind
    Py_ssize_t p, q             # shape (p, q)
    const char *data            # dense: element [0, 0]
    Py_ssize_t rs, cs           # dense: strides in elements
    const char *d               # diagonal (diag, dpr1)
    const char *u
    const char *v
    Py_ssize_t ds, us, vs
    double coef                 # scaled identity: c; dpr1: c

# Optimal bracketing of F_0 F_1 ... F_{m-1}: fills split[i*m + j] (the k of
# (F_i..F_k)(F_k+1..F_j)) and returns the multiply-add count, or -1.0 when
# out of memory.  Runs without the GIL in O(m^3).
cdef double plan_chain(const Factor *f, Py_ssize_t m, int *split) noexcept nogil

# The cost of the fixed left-to-right and right-to-left orders; with
# per_sample flags (one per factor), products holding a per-sample factor
# count batch times (see _accumulate.pyx).
cdef double order_cost(const Factor *f, Py_ssize_t m, bint left,
                       const char *per_sample=*, double batch=*,
                       bint block=*) noexcept nogil

# Orders a product runs in: the bracketing table of plan_chain, or one of
# the plain orders (no table; evaluated iteratively, any length).
cdef enum:
    ORDER_TABLE = 0
    ORDER_LEFT = 1      # ((F_0 F_1) F_2) ...
    ORDER_RIGHT = 2     # F_0 (F_1 (... F_{m-1}))

# out (p_0 x q_{m-1}, C-contiguous) = F_0 ... F_{m-1} in the bracketing of
# split (order ORDER_TABLE) or in a plain order (split unused, may be NULL).
# 0, or -1 when out of memory.
cdef int run_chain_f(const Factor *f, Py_ssize_t m, const int *split,
                     float *out, int nt, int order=*) noexcept nogil
cdef int run_chain_d(const Factor *f, Py_ssize_t m, const int *split,
                     double *out, int nt, int order=*) noexcept nogil
