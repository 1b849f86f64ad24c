"""The chain rule as a product of Jacobians: ``vjp``, ``jvp`` and ``Chain``.

With x^(0) = x, x^(i) = f^(i)(x^(i-1)) for i = 1..k, each f^(i) having the
Jacobian J_i of shape (n_i, n_{i-1}), and a scalar loss L = l(x^(k)), the
gradient is

    grad_x L = J_1^T J_2^T ... J_k^T g,        g = grad_{x^(k)} L,

a vector-Jacobian product (VJP, reverse mode).  Its forward twin, the
Jacobian-vector product (JVP), is J_k ... J_2 J_1 v.

Validation happens once, in compiled code, before any arithmetic; the
products run in one compiled call with no Python between links.

Dtype rule
----------
The chain computes in float32 when every input (Jacobians and vector) is
float32 (float16 is widened to float32), and in float64 otherwise: float64,
integer and bool inputs all give float64, and a float32 chain applied to a
float64 vector is promoted to float64 for that call, as NumPy's ``@`` would.
Complex, long double, object and string inputs raise ``TypeError``;
ragged nested lists raise ``TypeError``.

Memory
------
float32/float64 arrays in native byte order are read in place, whatever
their layout (C-order, F-order, any strides, including negative and zero
strides): nothing is copied.  Other inputs (lists, integer arrays, arrays
of the other float dtype in a mixed chain, byte-swapped or unaligned data)
are converted once.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, Literal, Union

import numpy as np
from numpy.typing import ArrayLike, NDArray

from gradchain._chain import ChainCore
from gradchain.operators import Operator

__all__ = ["Chain", "ChainPlan", "vjp", "jvp", "jacobian"]

# What a chain is built from (for the annotations): a sequence of links (2-D
# arrays, 3-D per-sample arrays, operators) or one 3-D array (k, m, n).
_Jacobians = Union[Iterable[Union[ArrayLike, Operator]], ArrayLike]


class ChainPlan:
    """The bracketing gradchain chose for a product along a chain.

    Attributes
    ----------
    mode : str
        "vjp" (G J_k ... J_1 for a block G of ``batch`` cotangents), "jvp"
        (V J_1^T ... J_k^T, a block of tangents as rows) or "jacobian"
        (J_k ... J_1).
    batch : int
        The number of vectors (0 for "jacobian").
    expression : str
        The bracketing, fully parenthesised, e.g. ``"(G J3) (J2 J1)"``.
    cost : float
        Its multiply-add count under the structure-aware cost model.
    baseline_costs : dict
        ``{"left_to_right": ..., "right_to_left": ...}``: the counts of the
        two plain orders (for "vjp"/"jvp", left to right is plain
        propagation of the block through the chain).
    format : str
        ``"dense"``, or ``"csr"`` for a sparse jacobian (every link sparse or
        diagonal-like): products by SpGEMM, ``cost`` and the baselines then
        count estimated multiply-adds (see :meth:`Chain.jacobian`).
    """

    __slots__ = ("mode", "batch", "expression", "cost", "baseline_costs",
                 "format")

    mode: str
    batch: int
    expression: str
    cost: float
    baseline_costs: dict[str, float]
    format: str

    def __init__(self, mode: str, batch: int, expression: str, cost: float,
                 baseline_costs: dict[str, float], format: str = "dense") -> None:
        self.mode, self.batch, self.expression = mode, batch, expression
        self.cost, self.baseline_costs = cost, baseline_costs
        self.format = format

    def __repr__(self) -> str:
        return (f"ChainPlan(mode={self.mode!r}, batch={self.batch}, "
                f"expression={self.expression!r}, cost={self.cost:g}, "
                f"baseline_costs={{'left_to_right': "
                f"{self.baseline_costs['left_to_right']:g}, 'right_to_left': "
                f"{self.baseline_costs['right_to_left']:g}}}"
                + (f", format={self.format!r})" if self.format != "dense" else ")"))


def _factor_names(k: int, mode: str, batch: int) -> list[str]:
    """The factors of a product as ChainPlan.expression names them."""
    if mode == "jacobian":
        return [f"J{i}" for i in range(k, 0, -1)]
    if mode == "vjp":
        return ["G" if batch != 1 else "g"] + [f"J{i}" for i in range(k, 0, -1)]
    return ["V" if batch != 1 else "v"] + [f"J{i}^T" for i in range(1, k + 1)]


def _expression(order: str | NDArray[np.intc], names: list[str]) -> str:
    """The bracketing as text: order is "left" or "right" (the plain
    orders) or the table of the matrix-chain programme (the k of
    (F_i..F_k)(F_k+1..F_j) at i * m + j).  Iterative: any length."""
    m = len(names)
    if isinstance(order, str):
        if order == "left":
            text = names[0]
            for j in range(1, m):
                text = f"{text} {names[j]}" if j == m - 1 else f"({text} {names[j]})"
        else:
            text = names[m - 1]
            for j in range(m - 2, -1, -1):
                text = f"{names[j]} {text}" if j == 0 else f"({names[j]} {text})"
        return text
    split = order
    done: dict[tuple[int, int], str] = {}   # (i, j) -> text of F_i .. F_j
    todo = [(0, m - 1)]
    while todo:
        i, j = todo[-1]
        if i == j:
            done[i, j] = names[i]
            todo.pop()
            continue
        s = int(split[i * m + j])
        parts = [(i, s), (s + 1, j)]
        missing = [p for p in parts if p not in done]
        if missing:
            todo.extend(missing)
            continue
        todo.pop()
        inner = f"{done[parts[0]]} {done[parts[1]]}"
        done[i, j] = inner if (i, j) == (0, m - 1) else f"({inner})"
    return done[0, m - 1]


class Chain(ChainCore):
    """A validated chain of Jacobians [J_1, ..., J_k], ready to apply.

    Parameters
    ----------
    jacobians : sequence of links, or array_like of shape (k, m, n)
        The Jacobians in application order: ``jacobians[i-1]`` is J_i, of
        shape (n_i, n_{i-1}), so that ``jacobians[i].shape[1] ==
        jacobians[i-1].shape[0]``.  A link is a 2-D array, a 3-D array of
        per-sample Jacobians (batch, n_i, n_{i-1}), a gradchain operator
        (:class:`Diagonal`, ...), a ``scipy.sparse`` matrix or array (CSR
        and CSC read in place, other formats converted once), or a
        matrix-free operator with ``shape``, ``matvec`` and ``rmatvec``
        (a ``scipy.sparse.linalg.LinearOperator``, another ``Chain``).  A
        single 3-D array stacks k Jacobians of one shape (square, unless
        k = 1).  An empty sequence is the identity.
    transpose_copies : bool, optional
        Keep each sparse link also in the other compressed format (a CSR
        link's CSC, built once here: as much memory again as its data and
        indices, reported by ``transpose_copy_bytes`` and the repr), so that
        the products that would scatter (J^T g of a CSR, J v of a CSC)
        gather over the copy instead: threaded over lines whatever the
        structure, each sum in the original's line order (the bits of a
        one-chunk scatter, which differ in the last bits from a
        partitioned one: README).  Measured on the wide random structures whose
        scatter cannot be split (README, "Sparse and matrix-free
        Jacobians"); a banded scatter is as fast without.  The copy is a
        snapshot: an in-place change to the link's data after binding is
        not seen by the products that read the copy.  Default False.

    Notes
    -----
    ``Chain`` validates shapes and dtypes once and then keeps references to
    the caller's arrays: it never copies a float32/float64 array (see the
    dtype rule in :mod:`gradchain.chain`).  If the caller later modifies
    such an array in place, later products use the new values; rebinding a
    name to a new array does not affect the chain.  ``.vjp`` and ``.jvp``
    are each one compiled call and are safe to call from several threads at
    once (each call has its own work buffers).

    Attributes
    ----------
    shapes : tuple of (int, int)
        ``jacobians[i].shape`` for each link.
    dims : tuple of int
        (n_0, n_1, ..., n_k).
    input_dim, output_dim : int or None
        n_0 and n_k (None for the empty chain, which accepts any length).
    dtype : numpy.dtype or None
        float32 or float64 (None for the empty chain).
    jacobians : tuple of ndarray
        The bound arrays.

    Examples
    --------
    >>> import numpy as np, gradchain
    >>> J1 = np.array([[1., 2.], [0., 1.], [3., 0.]])   # R^2 -> R^3
    >>> J2 = np.array([[1., 1., 1.]])                   # R^3 -> R
    >>> chain = gradchain.Chain([J1, J2])
    >>> chain.vjp(np.array([1.]))                       # J1^T J2^T g
    array([4., 3.])
    >>> chain.jvp(np.array([1., 0.]))                   # J2 J1 v
    array([4.])
    """

    def plan(self, batch: int = 1, mode: str = "vjp",
             format: str | None = None, *,
             intermediates: bool = False) -> ChainPlan:
        """The bracketing used for ``mode`` ("vjp", "jvp" or "jacobian")
        with ``batch`` vectors, as a :class:`ChainPlan`.

        A block of B cotangents is one more factor of the product
        G J_k ... J_1; the matrix-chain programme (structure-aware: a
        diagonal link costs n per vector, a diagonal-plus-rank-one ~3n, the
        identity nothing) decides between propagating the block link by link
        and pre-multiplying some links.  ``vjp``/``jvp`` of a block follow
        this plan; a single vector (``batch=1``) always propagates.

        Planning is bounded by what it can save: the programme, O(m^3) for
        m factors, runs when its m^3 / 6 steps are at most 1024 (m <= 18)
        or, each worth about 3 multiply-adds, cost no more than the cheaper
        plain order (left to right, or right to left); otherwise that plain
        order runs.  A plan
        is cached per (mode, batch) for the chain's life and, for chains
        of at most 256 factors, per shape across chains, so repeated
        one-shot calls of the same shapes plan once.

        With per-sample (3-D) links, ``batch`` must be the chain's
        :attr:`batch` for vjp/jvp, and the plan is what runs: the block is
        propagated link by link (row b through sample b's Jacobians), and
        the right-to-left baseline counts a product holding a per-sample
        link once per sample.  For ``"jacobian"`` the bracketing runs once
        per sample, and every count is ``batch`` times the per-sample one.

        ``format`` (mode "jacobian" only) is :meth:`jacobian`'s: the plan of
        the sparse product (``ChainPlan.format == "csr"``) where the links
        make one, unless ``format="dense"``.

        ``intermediates=True`` (vjp/jvp) is the plan of
        ``vjp(..., intermediates=True)``: every intermediate is kept, so the
        block propagates link by link (left to right) whatever the
        programme would choose for the result alone.
        """
        if intermediates is not True and intermediates is not False:
            raise TypeError(f"intermediates must be True or False, got "
                            f"{intermediates!r}")
        if intermediates and mode == "jacobian":
            raise ValueError("intermediates applies to mode='vjp' or 'jvp'")
        if isinstance(batch, (bool, np.bool_)) or not isinstance(batch, (int, np.integer)):
            raise TypeError(f"batch must be an int, got {batch!r}")
        batch = int(batch)
        if batch < 0:
            raise ValueError(f"batch must be >= 0, got {batch}")
        if batch > sys.maxsize:
            raise ValueError(f"batch must be at most sys.maxsize = {sys.maxsize}, "
                             f"got {batch}")
        s = self._plan_strategy(batch, mode, format)
        if intermediates:
            return ChainPlan(mode, s.batch, _expression(
                "left", _factor_names(len(self), mode, batch)), s.l2r,
                {"left_to_right": s.l2r, "right_to_left": s.r2l}, s.format)
        return ChainPlan(mode, s.batch, _expression(
            s.table if s.table is not None else s.order_name,
            _factor_names(len(self), mode, batch)), s.cost,
            {"left_to_right": s.l2r, "right_to_left": s.r2l}, s.format)

    # -- the chain as a linear operator J = J_k ... J_1 -------------------

    def _operator_shape(self) -> tuple[int, int]:
        """(n_k, n_0), or ValueError when the chain is no one matrix."""
        if len(self) == 0:
            raise ValueError("the empty chain is the identity of any size: it "
                             "has no shape as an operator")
        if self.batch is not None:
            raise ValueError(f"a chain with per-sample links is {self.batch} "
                             f"operators, one per sample, not one")
        m, n = self.output_dim, self.input_dim
        assert m is not None and n is not None     # k > 0
        return (m, n)

    @property
    def shape(self) -> tuple[int, int]:
        """(n_k, n_0): the shape of J = J_k ... J_1 (the LinearOperator
        protocol; ValueError for the empty or a per-sample chain)."""
        return self._operator_shape()

    def matvec(self, v: ArrayLike) -> NDArray[np.floating[Any]]:
        """J v, i.e. :meth:`jvp` (the LinearOperator protocol)."""
        return self.jvp(v)

    def rmatvec(self, g: ArrayLike) -> NDArray[np.floating[Any]]:
        """J^T g, i.e. :meth:`vjp` (the LinearOperator protocol)."""
        return self.vjp(g)

    def matmat(self, V: ArrayLike) -> NDArray[np.floating[Any]]:
        """J V for V of shape (n_0, B): the columns as one block of tangents."""
        return self.jvp(np.asarray(V).T).T

    def rmatmat(self, G: ArrayLike) -> NDArray[np.floating[Any]]:
        """J^T G for G of shape (n_k, B): the columns as one block of
        cotangents."""
        return self.vjp(np.asarray(G).T).T

    def as_linear_operator(self) -> Any:
        """J = J_k ... J_1 as a :class:`scipy.sparse.linalg.LinearOperator`.

        ``matvec`` is :meth:`jvp`, ``rmatvec`` :meth:`vjp`, and
        ``matmat``/``rmatmat`` run a block of columns as one batched call,
        so a chain plugs into ``lsqr``, ``lsmr``, ``svds``, ``eigsh``,
        ``gmres`` without forming J.  (``aslinearoperator(chain)`` works
        too, through the same methods.)

        Returns
        -------
        scipy.sparse.linalg.LinearOperator, shape (n_k, n_0)
            In the chain's dtype (float64 for a chain of identities only).

        Raises
        ------
        ValueError
            For the empty chain (no shape) and for a chain with per-sample
            links (one operator per sample).

        Examples
        --------
        >>> import numpy as np, gradchain
        >>> from scipy.sparse.linalg import svds
        >>> c = gradchain.Chain([np.diag([1., 2., 3.]), np.diag([1., 1., 2.])])
        >>> s = svds(c.as_linear_operator(), k=1, return_singular_vectors=False)
        >>> bool(np.isclose(s[0], 6.0))
        True
        """
        return _chain_operator(self, self._operator_shape())

    def __repr__(self) -> str:
        k = len(self)
        if k == 0:
            return "Chain(0 links: identity)"
        d = [str(n) for n in self.dims]
        if len(d) > 8:
            d = d[:4] + ["..."] + d[-2:]
        dims = " -> ".join(d)
        copies = self.transpose_copy_bytes
        extra = "" if copies is None else f", transpose copies {copies / 2**20:.1f} MiB"
        return (f"Chain({k} link{'s' if k != 1 else ''}: {dims}, "
                f"dtype={self.dtype}{extra})")


_CHAIN_OPERATOR: Any = None


def _chain_operator(chain: Chain, shape: tuple[int, int]) -> Any:
    """A LinearOperator running chain's products (see as_linear_operator);
    its class is made once, on first use (scipy.sparse.linalg imported
    then)."""
    global _CHAIN_OPERATOR
    if _CHAIN_OPERATOR is None:
        from scipy.sparse.linalg import LinearOperator  # type: ignore[import-untyped]

        def init(self: Any, chain: Chain, shape: tuple[int, int]) -> None:
            self.chain = chain
            LinearOperator.__init__(self, chain.dtype or np.dtype(np.float64), shape)

        _CHAIN_OPERATOR = type("ChainOperator", (LinearOperator,), {
            "__init__": init,
            "_matvec": lambda self, v: self.chain.matvec(np.ravel(v)),
            "_rmatvec": lambda self, g: self.chain.rmatvec(np.ravel(g)),
            "_matmat": lambda self, V: self.chain.matmat(V),
            "_rmatmat": lambda self, G: self.chain.rmatmat(G),
            "__repr__": lambda self: (f"<{self.shape[0]}x{self.shape[1]} "
                                      f"LinearOperator of {self.chain!r}>"),
            "__doc__": "J = J_k ... J_1 of a gradchain.Chain as a LinearOperator.",
        })
    return _CHAIN_OPERATOR(chain, shape)


def vjp(jacobians: _Jacobians, cotangent: ArrayLike, *,
        out: Any = None, intermediates: bool = False,
        accumulate: Literal["float64"] | None = None) -> Any:
    """Vector-Jacobian product through a chain: J_1^T J_2^T ... J_k^T g.

    Parameters
    ----------
    jacobians : sequence of array_like, or array_like of shape (k, m, n)
        [J_1, ..., J_k] in application order, J_i of shape (n_i, n_{i-1});
        see :class:`Chain`.  Empty: the identity.
    cotangent : array_like, shape (n_k,) or (batch, n_k)
        g = dL/dx^(k), or a batch of them, one per row.
    out : ndarray, or sequence of k + 1 ndarrays, optional
        Where to write the result: shape (n_0,) or (batch, n_0), the
        result's dtype, writeable, sharing no memory with the inputs.  With
        ``intermediates=True``, one array per cotangent, item i of shape
        (n_i,) or (batch, n_i), sharing no memory with each other either.
    intermediates : bool, optional
        Return every cotangent along the chain, lambda_i = J_{i+1}^T ...
        J_k^T g for i = k, ..., 0 (the adjoints a parameter gradient needs:
        dL/dtheta_i = (df_i/dtheta_i)^T lambda_i), as a
        :class:`gradchain.Trajectory` indexed by i: ``traj[0]`` is the
        gradient, ``traj[k]`` a copy of g.  One pass, link by link (the
        plain order: ``Chain.plan(..., intermediates=True)``), no extra
        pass over the Jacobians; the values are the same bits as the plain
        product's where that propagates too.  Memory: batch * (n_0 + ... +
        n_k) elements, one allocation (none beyond the result when False,
        the default).
    accumulate : {None, "float64"}, optional
        ``"float64"``: a float32 chain's product summed in float64, with a
        float64 result (NumPy's ``einsum(dtype=)``, JAX's
        ``preferred_element_type``): dense links are read in place as
        float32 by the mixed kernels when the product propagates (one
        vector, or per-sample chains), each element converted exactly on
        load; other links, and plans that multiply links first, convert the
        chain to float64 for the call.  The result is the float64 chain's
        on the converted links, up to where the compiler contracted a
        multiply-add into an FMA differently (an ulp of float64).  None (default): the chain's own dtype, as is
        "float64" for a float64 chain.

    Returns
    -------
    ndarray, shape (n_0,) or (batch, n_0), or Trajectory
        grad_x L = J_1^T ... J_k^T g (for a batch, row b is G[b] J_k ... J_1);
        with ``intermediates=True`` the k + 1 cotangents.

    Raises
    ------
    ValueError
        Shapes that do not chain (the message names the link and shapes),
        a cotangent of the wrong length or rank, a bad ``out``.
    TypeError
        Complex, object, string or ragged input; ``out`` of the wrong dtype.

    Examples
    --------
    >>> import numpy as np, gradchain
    >>> gradchain.vjp([np.eye(2), 2 * np.eye(2)], [1., 3.])
    array([2., 6.])
    """
    return ChainCore(jacobians).vjp(cotangent, out, intermediates=intermediates,
                                    accumulate=accumulate)


def jvp(jacobians: _Jacobians, tangent: ArrayLike, *,
        out: Any = None, intermediates: bool = False,
        accumulate: Literal["float64"] | None = None) -> Any:
    """Jacobian-vector product through a chain: J_k ... J_2 J_1 v.

    Parameters
    ----------
    jacobians : sequence of array_like, or array_like of shape (k, m, n)
        [J_1, ..., J_k] in application order; see :class:`Chain`.
    tangent : array_like, shape (n_0,) or (batch, n_0)
        v, or a batch of them, one per row.
    out : ndarray, or sequence of k + 1 ndarrays, optional
        Shape (n_k,) or (batch, n_k); see :func:`vjp`.
    intermediates : bool, optional
        Return every tangent t_0 = v, t_i = J_i t_{i-1}, ..., t_k as a
        :class:`gradchain.Trajectory` indexed by i (see :func:`vjp`).
    accumulate : {None, "float64"}, optional
        Sums in float64 for a float32 chain; see :func:`vjp`.

    Returns
    -------
    ndarray, shape (n_k,) or (batch, n_k), or Trajectory
        J_k ... J_1 v (for a batch, row b is J_k ... J_1 V[b]); with
        ``intermediates=True`` the k + 1 tangents.

    Examples
    --------
    >>> import numpy as np, gradchain
    >>> gradchain.jvp([np.array([[1., 2.]]), np.array([[3.]])], [1., 1.])
    array([9.])
    """
    return ChainCore(jacobians).jvp(tangent, out, intermediates=intermediates,
                                    accumulate=accumulate)


def jacobian(jacobians: _Jacobians, format: str | None = None, *,
             accumulate: Literal["float64"] | None = None) -> Any:
    """The Jacobian J_k ... J_1 of a chain, shape (n_k, n_0).

    The product is bracketed by the matrix-chain programme with a cost model
    that knows each link's structure (see :meth:`Chain.plan`); diagonal
    links scale rows or columns and are never materialised, dense products
    go to BLAS.  A chain whose links are all scipy.sparse or diagonal-like
    (at least one sparse) gives a ``scipy.sparse.csr_array``, multiplied by
    SpGEMM in the order the programme chose from estimated nonzeros; any
    dense, matrix-free or per-sample link gives a dense array.
    ``format="dense"`` forces a dense array, ``format="csr"`` a csr_array
    (see :meth:`Chain.jacobian`).  ``accumulate="float64"``: a float32
    chain's product in float64 (see :func:`vjp`; the links are converted for
    the call).

    Examples
    --------
    >>> import numpy as np, gradchain
    >>> gradchain.jacobian([np.array([[1., 2.]]).T, np.array([[3., 4.]])])
    array([[11.]])
    """
    return ChainCore(jacobians).jacobian(format, accumulate=accumulate)
