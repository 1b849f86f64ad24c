# The one propagation loop (see _propagate.pyx).
from cython cimport floating
from gradchain._link cimport Link

# out = x J_k ... J_1 (transpose: vjp) or x J_1^T ... J_k^T (jvp), for B
# C-contiguous rows of x, links[i] being J_{i+1}; out C-contiguous, not
# overlapping x.  maxw is at least every intermediate width n_1..n_{k-1}.
# work: NULL (allocated here) or the caller's 2 * B * maxw elements, the
# two halves the steps alternate between (each step writes the half it
# does not read; the last link writes straight into out).  A run of
# consecutive per-sample links is one step (sample-blocked), and so is a
# run of consecutive sparse links for B >= 8 (on tiles, with its own two
# buffers for a group of tiles: at most 2 * (B rounded up to 8) times the
# run's widest link, more elements).  k == 0 does
# nothing (the caller copies).  steps (the intermediates: NULL, or k
# pointers): step s writes its B rows, C-contiguous, to steps[s] instead
# (runs too: every link's result), work is not used and out is ignored
# (the result is steps[k - 1]); the buffers must not overlap x, the links
# or each other.  f32 (double only): every link is dense (shared or
# per-sample) and its data are float32, read by the mixed kernels and
# summed in float64 (accumulate="float64"; B > 1 through BLAS reads a
# float64 copy of a shared link).  0, -1 when out of memory, or another
# code of _link.link_apply_rows (see link_raise).
cdef int propagate(const Link *links, Py_ssize_t k, Py_ssize_t maxw,
                   bint transpose, const floating *x, Py_ssize_t B,
                   floating *out, floating *work, int nt,
                   floating **steps=*, bint f32=*) noexcept nogil
