"""Maps: the differentiable links x -> f(x) of a composition.

This module's one job is the maps themselves: :class:`Map` (a map the user
gives by its value and its Jacobian, VJP or JVP) and the built-in maps the
compiled progs know -- :class:`Affine`, whose Jacobian is its weight matrix,
read in place; the elementwise maps (:class:`Tanh`, :class:`Sigmoid`, ...),
whose Jacobians are diagonal; :class:`Softmax` and :class:`LogSoftmax`,
whose Jacobians are diagonal plus rank one -- and the checks every value
crossing into compiled code passes (the dtype rule, a user callback's
result).

Losses live in :mod:`gradchain.losses`, compositions (``compose``,
``check_grad``) in :mod:`gradchain.composition`; their names are still
importable from here.

Batches: x of shape (B, n) is B independent samples; a map acts on each row.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from gradchain._bind import as_array, compute_dtype
from gradchain import _program as _p
from gradchain._program import OpCode, Program
from gradchain.chain import Chain
from gradchain.operators import Dense, Operator, _scalar

# the names that moved to gradchain.losses and gradchain.composition, and
# are still importable from here (see __getattr__ at the end)
_MOVED = {
    **dict.fromkeys(["Loss", "SquaredError", "MeanSquaredError", "CrossEntropy",
                     "LogSumExp", "Dot", "_TargetLoss", "_LOSS"], "gradchain.losses"),
    **dict.fromkeys(["Composition", "compose", "check_grad"], "gradchain.composition"),
}

if TYPE_CHECKING:     # what __getattr__ resolves, for type checkers and stubtest
    from gradchain._program import _Spec        # (stub only: a map's op spec)
    from gradchain.composition import Composition, check_grad, compose
    from gradchain.losses import (CrossEntropy, Dot, LogSumExp, Loss,
                                  MeanSquaredError, SquaredError)

__all__ = [
    "Map", "Affine", "Tanh", "Sigmoid", "ReLU", "LeakyReLU", "Softplus", "Exp",
    "Log", "Sin", "Cos", "Square", "Scale", "Softmax", "LogSoftmax",
    # moved, still exported from here
    "Loss", "SquaredError", "MeanSquaredError", "CrossEntropy", "LogSumExp",
    "Dot", "Composition", "compose", "check_grad",
]

_OP_AFFINE = int(OpCode.OP_AFFINE)
_OP_ELEMENTWISE = int(OpCode.OP_ELEMENTWISE)
_OP_SOFTMAX = int(OpCode.OP_SOFTMAX)
_OP_LOG_SOFTMAX = int(OpCode.OP_LOG_SOFTMAX)

# elementwise codes: declared in csrc/gc_maps.h, exported by _program
_EW = dict(tanh=_p.GC_EW_TANH, sigmoid=_p.GC_EW_SIGMOID, relu=_p.GC_EW_RELU,
           leaky_relu=_p.GC_EW_LEAKY_RELU, softplus=_p.GC_EW_SOFTPLUS,
           exp=_p.GC_EW_EXP, log=_p.GC_EW_LOG, sin=_p.GC_EW_SIN,
           cos=_p.GC_EW_COS, square=_p.GC_EW_SQUARE, scale=_p.GC_EW_SCALE)


_float_dtype = compute_dtype      # the chain's dtype rule (gradchain._chain)

# (for the annotations) what maps return: float32 or float64 arrays; a
# shape with None where any extent is accepted; a NumPy array type
_FloatArray = NDArray[np.floating[Any]]
_Want = tuple[int | None, ...]
_A = TypeVar("_A", bound="np.ndarray[Any, Any]")

# the most elements a batch's stack of user Jacobians holds at a time (2 MiB
# of float64, so that it is still in cache when the compiled call reads it):
# a larger batch is applied a block of rows at a time, reusing the buffer
_STACK_ELEMS = 1 << 18


def _as_float(x: object, name: str) -> NDArray[Any]:
    """x as an array (the one conversion rule: masked arrays refused), of a
    dtype the dtype rule accepts; TypeError naming ``name`` otherwise."""
    a = as_array(x, name)
    _float_dtype(a.dtype, name)
    return a


def _readonly(a: _A) -> _A:
    """A read-only view of a: what user callbacks receive, so that one that
    writes into its input gets NumPy's error instead of corrupting the
    forward pass (or the caller's array)."""
    v = a.view()
    v.flags.writeable = False
    return v


def _checked(y: object, want: _Want, dtype: np.dtype[Any], i: int, name: str,
             inputs: Iterable[NDArray[Any]]) -> NDArray[Any]:
    """A callback's result checked before compiled code reads it: exactly
    the shape ``want`` (None: any extent there), a real dtype, then
    C-contiguous in ``dtype``, and never sharing memory with ``inputs``."""
    a = _validated(y, want, i, name)
    out = np.require(a, dtype, "CA")  # type: ignore[arg-type, unused-ignore]  # "CA": C, A
    if out is a and any(np.may_share_memory(out, x) for x in inputs):
        out = out.copy()
    return out


def _validated(y: object, want: _Want, i: int, name: str) -> NDArray[Any]:
    """maps[i].name's result y as an array, checked (see _checked) but not
    converted."""
    where = f"maps[{i}].{name}"
    a = as_array(y, f"{where}'s result")
    if a.dtype.kind == "c":
        raise TypeError(f"{where} returned complex values (dtype {a.dtype}); "
                        f"gradchain's maps are real")
    _float_dtype(a.dtype, f"{where}'s result")
    if a.ndim != len(want) or any(w is not None and s != w
                                  for s, w in zip(a.shape, want)):
        shown = tuple("any" if w is None else w for w in want)
        raise ValueError(f"{where} returned shape {a.shape}, expected "
                         f"{_shape_text(shown)}")
    return a


def _shape_text(shape: tuple[object, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _first_sized(maps: Sequence[Map], idx: int) -> int | None:
    """Index of the first map from maps[idx] on whose input size is known
    (an Affine) before any user map, or None."""
    for i in range(idx, len(maps)):
        m = maps[i]
        if not m._builtin:
            return None
        if m.in_dim is not None:
            return i
    return None


def _input(x: ArrayLike, maps: Sequence[Map], params: Iterable[NDArray[Any]] = (),
           name: str = "x") -> tuple[NDArray[Any], bool, np.dtype[Any]]:
    """x checked for the maps applied in order: (X, single, dtype).

    x must be 1-D (n_0,) or 2-D (B, n_0), of the width the first sized map
    takes; dtype is the dtype rule over x, the maps' parameters and
    ``params`` (a loss's); X is x as a C-contiguous (B, n_0) block in it
    (B = 1 for a single x, which ``single`` says).
    """
    x = _as_float(x, name)
    if x.ndim not in (1, 2):
        raise ValueError(f"{name} must be 1-D (n_0,) or 2-D (batch, n_0), "
                         f"got shape {x.shape}")
    i = _first_sized(maps, 0)
    if i is not None and x.shape[-1] != maps[i].in_dim:
        raise ValueError(f"{name} has shape {x.shape} but maps[{i}] "
                         f"({maps[i]!r}) takes {maps[i].in_dim} inputs")
    dts = [_float_dtype(x.dtype, name)]
    for m in maps:
        dts += [_float_dtype(p.dtype, "parameters") for p in m._params()]
    dts += [_float_dtype(p.dtype, "loss target") for p in params]
    dtype = np.dtype(np.result_type(*dts))
    X = np.require(x.reshape(1, -1) if x.ndim == 1 else x, dtype, "CA")  # type: ignore[arg-type, unused-ignore]  # "CA": C, A
    return X, x.ndim == 1, dtype


# ---------------------------------------------------------------------------
# Maps
# ---------------------------------------------------------------------------

class Map:
    """A differentiable map f: R^n_in -> R^n_out given by the user.

    Parameters
    ----------
    fn : callable
        ``fn(x)`` -> f(x).  Called with a 1-D x for single inputs and with a
        2-D batch (B, n_in) for batched inputs (one row per sample).
    jacobian : callable, optional
        ``jacobian(x)`` -> the Jacobian at a single x (1-D), as an array of
        shape (n_out, n_in) or a :class:`gradchain.Operator`.  Its products
        run in the compiled kernels.  For a batch it is called once per
        row; the rows' arrays are stacked into one (B, n_out, n_in) array
        and applied in one compiled per-sample call (a block of rows at a
        time beyond 2^18 elements).  Operators other than
        :class:`gradchain.Dense` cannot be stacked: a block of rows where
        one row returns such an operator is applied row by row.
    vjp, jvp : callable, optional
        Matrix-free links: ``vjp(x, g)`` -> J^T g and ``jvp(x, v)`` -> J v,
        called with x and g/v of matching rank (1-D, or 2-D batches).
        ``vjp`` takes precedence over ``jacobian`` for reverse mode and
        ``jvp`` for forward mode.
    params : sequence of array_like, optional
        The map's parameters theta_1, ..., theta_p, for parameter gradients
        (``Composition.value_and_grad(..., wrt="params")``).  Float arrays
        are kept by reference (others are converted once to float64) and
        passed to every callback after its own
        arguments: ``fn(x, *params)``, ``jacobian(x, *params)``, ``vjp(x, g,
        *params)``, ``jvp(x, v, *params)``, so that a gradient check can
        evaluate the map at other parameter values without touching these.
        gradchain never writes into them (``Composition.set_params`` does,
        when asked).
    param_vjp : callable, optional
        ``param_vjp(x, g, *params)`` -> a tuple of p arrays, item j of
        ``params[j]``'s shape: the gradient with respect to theta_j of
        g . f(x), i.e. (d f / d theta_j)^T g, summed over the rows of a
        batch (x (B, n_in), g (B, n_out)).  For per-example gradients
        (``reduction="none"``) it is called once per row.  Required with
        ``params``; a map without ``params`` has no parameters (its
        parameter gradient is ``()``).

    A map needs ``jacobian`` or ``vjp`` for gradients, and ``jacobian`` or
    ``jvp`` for forward mode.

    Inside a composition every callback receives read-only arrays in the
    composition's dtype, and what it returns is checked before compiled
    code reads it: ``fn`` must return a real array of shape (m,) for a
    single x and (B, m), with the same B, for a batch; ``vjp(x, g)`` must
    return x's shape; ``jvp(x, v)`` must return fn(x)'s shape; ``jacobian(x)``
    must return an (m, n_in) real array or a :class:`gradchain.Operator` of
    that shape.  A wrong shape raises ``ValueError`` naming the map and the
    callback (``maps[2].vjp returned shape (3, 1), expected (3, 1000)``), a
    complex, object or masked result ``TypeError``; an exception raised by
    the callback itself propagates unchanged.  Results are converted to the
    composition's dtype, and copied if they share memory with an input.
    """

    _builtin = False

    def __init__(self, fn: Callable[..., ArrayLike],
                 jacobian: Callable[..., ArrayLike | Operator] | None = None, *,
                 vjp: Callable[..., ArrayLike] | None = None,
                 jvp: Callable[..., ArrayLike] | None = None,
                 params: Sequence[ArrayLike] | None = None,
                 param_vjp: Callable[..., Sequence[ArrayLike]] | None = None) -> None:
        for name, f in (("fn", fn), ("jacobian", jacobian), ("vjp", vjp),
                        ("jvp", jvp), ("param_vjp", param_vjp)):
            if f is not None and not callable(f):
                raise TypeError(f"{name} must be callable, got {type(f).__name__}")
        if fn is None:
            raise TypeError("fn must be callable, got None")
        if jacobian is None and vjp is None and jvp is None:
            raise TypeError("a Map needs jacobian=, vjp= or jvp=")
        if params is not None and param_vjp is None:
            raise TypeError("a Map with params= needs param_vjp= (the gradient "
                            "with respect to them)")
        if param_vjp is not None and params is None:
            raise TypeError("param_vjp= needs params= (the parameters it "
                            "differentiates)")
        ps: tuple[NDArray[Any], ...] = ()
        if params is not None:
            if isinstance(params, np.ndarray) or not hasattr(params, "__len__"):
                raise TypeError(f"params must be a sequence of arrays, got "
                                f"{type(params).__name__}")
            ps = tuple(_as_float(p, f"params[{j}]") for j, p in enumerate(params))
            # float arrays by reference; others (integers, bool) converted
            # once to float64, so that gradients and set_params have room
            ps = tuple(p if p.dtype.kind == "f" else p.astype(np.float64)
                       for p in ps)
        self._fn, self._jacobian, self._vjp, self._jvp = fn, jacobian, vjp, jvp
        self._uparams, self._param_vjp = ps, param_vjp

    if TYPE_CHECKING:
        # None here; Affine's are properties (its W's shape)
        @property
        def in_dim(self) -> int | None: ...
        @property
        def out_dim(self) -> int | None: ...
    else:
        in_dim = None
        out_dim = None

    @property
    def fn(self) -> Callable[..., ArrayLike]:
        """f(x) (the callback given as ``fn``, with the map's parameters
        bound: ``fn(x)`` calls the given ``fn(x, *params)``)."""
        if not self._uparams:
            return self._fn
        return lambda x: self._fn(x, *self._uparams)

    def _params(self) -> tuple[NDArray[Any], ...]:
        """The arrays the dtype rule reads (built-in maps' parameters)."""
        return ()

    def _param_arrays(self) -> tuple[NDArray[Any], ...]:
        """The map's parameters, in order (arrays, read in place)."""
        return self._uparams

    def _with_params(self, new: Sequence[NDArray[Any]]) -> Map:
        """The same map over other parameter arrays (check_grad's copies)."""
        m = Map.__new__(type(self))
        m.__dict__.update(self.__dict__)
        m._uparams = tuple(new)
        return m

    def _user_param_vjp(self, i: int, x: NDArray[Any], g: NDArray[Any],
                        single: bool) -> tuple[NDArray[Any], ...]:
        """maps[i]'s parameter gradient at x for cotangent rows g (both
        read-only; single: 1-D), checked: a tuple of arrays of the
        parameters' shapes (and dtypes, real)."""
        if not self._uparams:
            return ()
        res = self._param_vjp(x, g, *self._uparams)  # type: ignore[misc]  # set with params
        where = f"maps[{i}].param_vjp"
        if isinstance(res, np.ndarray) or not isinstance(res, (tuple, list)):
            raise TypeError(f"{where} must return a tuple of {len(self._uparams)} "
                            f"arrays, got {type(res).__name__}")
        if len(res) != len(self._uparams):
            raise ValueError(f"{where} returned {len(res)} gradients for "
                             f"{len(self._uparams)} parameters")
        out: list[NDArray[Any]] = []
        for j, (r, p) in enumerate(zip(res, self._uparams)):
            a = _validated(r, p.shape, i, f"param_vjp (params[{j}])")
            out.append(np.array(a, dtype=_float_dtype(p.dtype, f"params[{j}]")))
        return tuple(out)

    def __call__(self, x: ArrayLike) -> NDArray[Any]:
        return np.asarray(self.fn(x))

    @property
    def _forward_uses_jacobian(self) -> bool:
        """Whether forward mode (jvp, and so Composition.jacobian) runs on
        ``jacobian(x)``: it is given, and no ``jvp=`` takes precedence."""
        return self._jacobian is not None and self._jvp is None

    def _link(self, i: int, x: NDArray[Any], y: NDArray[Any] | None,
              dtype: np.dtype[Any]) -> NDArray[Any] | Operator:
        """maps[i]'s Jacobian at x (1-D, in dtype; y = f(x)) as a link of a
        Chain: here, the user's ``jacobian(x)``, checked (see _jac_at)."""
        if self._jacobian is None:
            raise TypeError(f"maps[{i}] is matrix-free (vjp=/jvp= only): it has "
                            f"no Jacobian to put in a Chain")
        return self._jac_at(_readonly(x), y.shape[0], i, dtype)  # type: ignore[union-attr]  # y given

    def _jac_at(self, x: NDArray[Any], m_out: int, i: int, dtype: np.dtype[Any],
                out: NDArray[Any] | None = None) -> NDArray[Any] | Operator:
        """The Jacobian at a single x (read-only, 1-D), checked: an
        (m_out, len(x)) real array in dtype, or an Operator of that shape.

        With ``out`` (an (m_out, len(x)) block in dtype, a row of a stack),
        an array result -- or a Dense operator's matrix -- is written there
        and ``out`` is returned; another operator is returned as it is."""
        want = (m_out, x.shape[0])
        J = self._jacobian(x, *self._uparams)  # type: ignore[misc]  # callers check
        if isinstance(J, Operator):
            if tuple(J.shape) != want:
                raise ValueError(f"maps[{i}].jacobian returned an operator of "
                                 f"shape {tuple(J.shape)}, expected {want}")
            if out is not None and isinstance(J, Dense):
                out[...] = J.matrix
                return out
            # in the composition's dtype, as an array result would be
            return J if J.dtype is None or J.dtype == dtype else J.astype(dtype)
        if out is None:
            return _checked(J, want, dtype, i, "jacobian", (x,))
        out[...] = _validated(J, want, i, "jacobian")   # converted, copied
        return out

    def _apply(self, i: int, x: NDArray[Any], t: NDArray[Any], m_out: int,
               transpose: bool, dtype: np.dtype[Any]) -> NDArray[Any]:
        """J^T t (transpose) or J t at x (read-only, rank 1 or 2), checked:
        the result has x's shape (transpose) or (..., m_out)."""
        name = "vjp" if transpose else "jvp"
        lead = x.shape[:-1]
        want = lead + ((x.shape[-1],) if transpose else (m_out,))
        f = self._vjp if transpose else self._jvp
        if f is not None:
            return _checked(f(x, t, *self._uparams), want, dtype, i, name, (x, t))
        if self._jacobian is None:
            raise TypeError(
                f"maps[{i}] has no {name}= or jacobian= for "
                f"{'reverse' if transpose else 'forward'} mode")
        if x.ndim == 1:
            c = Chain([self._jac_at(x, m_out, i, dtype)])
            return c.vjp(t) if transpose else c.jvp(t)
        return self._apply_rows(i, x, t, m_out, transpose, dtype,
                                np.empty(want, dtype))

    def _apply_rows(self, i: int, x: NDArray[Any], t: NDArray[Any], m_out: int,
                    transpose: bool, dtype: np.dtype[Any],
                    out: NDArray[Any]) -> NDArray[Any]:
        """_apply of jacobian= to a batch x (B, n), into out.

        jacobian(x[b]) is called per row (the callback is per row, by
        contract) and the results are stacked into (rows, m_out, n), applied
        in one compiled per-sample call; a block of rows at a time, so that
        the stack (one buffer, reused) stays within _STACK_ELEMS.  A block
        where some row gave an operator, which cannot be stacked, goes row
        by row, each row a one-link chain."""
        B, n = x.shape
        rows = max(1, _STACK_ELEMS // (m_out * n)) if m_out * n else max(B, 1)
        buf = np.empty((min(rows, B), m_out, n), dtype)
        for b0 in range(0, B, rows):
            b1 = min(B, b0 + rows)
            S = buf[:b1 - b0]
            ops: dict[int, NDArray[Any] | Operator] = {}
            for b in range(b0, b1):
                row = S[b - b0]
                J = self._jac_at(x[b], m_out, i, dtype, out=row)
                if J is not row:
                    ops[b] = J
            if not ops:
                c = Chain([S])          # row b of t through S[b]
                if transpose:
                    c.vjp(t[b0:b1], out=out[b0:b1])
                else:
                    c.jvp(t[b0:b1], out=out[b0:b1])
                continue
            for b in range(b0, b1):
                c = Chain([ops.get(b, S[b - b0])])
                if transpose:
                    c.vjp(t[b], out=out[b])
                else:
                    c.jvp(t[b], out=out[b])
        return out

    def __repr__(self) -> str:
        return f"Map({getattr(self._fn, '__name__', 'fn')})"


class _Builtin(Map):
    """A map the compiled progs know.

    A subclass says what the programme runs (``_spec``: its op code and
    parameters in a dtype); the programme knows each op's Jacobian (in one
    place, ``gradchain._program._jacobian_links``), which :meth:`jacobian`
    and ``Composition.chain`` read.  Evaluated alone, a built-in map runs
    as a one-op compiled programme.
    """

    _builtin = True
    _forward_uses_jacobian = True
    _uparams = ()

    def __init__(self) -> None:
        pass

    def _param_arrays(self) -> tuple[NDArray[Any], ...]:
        return ()

    def _with_params(self, new: Sequence[NDArray[Any]]) -> Map:
        return self

    def _spec(self, dtype: np.dtype[Any]) -> _Spec:
        raise NotImplementedError

    def _spec_is_view(self, spec: _Spec) -> bool:
        return True

    def _run(self, X: NDArray[Any], dtype: np.dtype[Any], mode: str,
             T: NDArray[Any] | None = None) -> Any:
        """This map alone as a compiled programme over the C-contiguous block X
        (B, n) in dtype (see ``gradchain._program.Program.run``)."""
        return Program([self._spec(dtype)], dtype).run(X, mode, T)

    def _link(self, i: int, x: NDArray[Any], y: NDArray[Any] | None,
              dtype: np.dtype[Any]) -> NDArray[Any] | Operator:
        """The Jacobian at x (1-D, C-contiguous, in dtype; y = f(x) unused):
        an array (Affine: W) or an operator, in dtype, from the compiled
        programme's one statement of each op's Jacobian
        (``gradchain._program``)."""
        return Program([self._spec(dtype)], dtype).jacobian(x, links=True)[0]

    def __call__(self, x: ArrayLike) -> _FloatArray:
        """f(x) for x of shape (n,), or row by row for a batch (B, n).

        Parameters
        ----------
        x : array_like, shape (n,) or (B, n)

        Returns
        -------
        ndarray, shape (m,) or (B, m)
            In the dtype of x and the map's parameters (the dtype rule of
            :mod:`gradchain.chain`).
        """
        X, single, dtype = _input(x, (self,))
        Y: _FloatArray = self._run(X, dtype, "forward")[-1]
        return Y[0] if single else Y

    def jacobian(self, x: ArrayLike) -> NDArray[Any] | Operator:
        """The Jacobian at a single x.

        Parameters
        ----------
        x : array_like, shape (n,)

        Returns
        -------
        ndarray or Operator, shape (m, n)
            ``Affine``: W itself (a converted copy where the dtype rule
            needs one); elementwise maps: a :class:`gradchain.Diagonal`;
            ``Softmax``, ``LogSoftmax``: a
            :class:`gradchain.DiagonalPlusRankOne`.
        """
        x = _as_float(x, "x")
        if x.ndim != 1:
            raise ValueError(f"chain takes a single x (n_0,), got shape {x.shape}")
        X, _, dtype = _input(x, (self,))
        return self._link(0, X[0], None, dtype)


class Affine(_Builtin):
    """x -> W x + b; its Jacobian is W, read in place.

    A batch X (B, n_in) maps to X W^T + b (a matrix-matrix product).

    Parameters
    ----------
    W : array_like, shape (n_out, n_in)
    b : array_like, shape (n_out,), optional
        Arrays are kept by reference: an in-place change is seen by later
        calls.
    """

    def __init__(self, W: ArrayLike, b: ArrayLike | None = None) -> None:
        W = _as_float(W, "W")
        if W.ndim != 2:
            raise ValueError(f"W must be 2-D (n_out, n_in), got shape {W.shape}")
        if b is not None:
            b = _as_float(b, "b")
            if b.shape != (W.shape[0],):
                raise ValueError(f"b has shape {b.shape} but W has shape "
                                 f"{W.shape}: b must have shape ({W.shape[0]},)")
        self._W, self._b = W, b

    if TYPE_CHECKING:
        @property
        def W(self) -> NDArray[Any]: ...
        @property
        def b(self) -> NDArray[Any] | None: ...
    else:
        W = property(lambda self: self._W, doc="W (n_out, n_in), read in place")
        b = property(lambda self: self._b, doc="b (n_out,) or None, read in place")

    if TYPE_CHECKING:   # a float64 x (or W) computes in float64
        @overload
        def __call__(self, x: NDArray[np.float64]) -> NDArray[np.float64]: ...
        @overload
        def __call__(self, x: ArrayLike) -> _FloatArray: ...
        def __call__(self, x: ArrayLike) -> _FloatArray: ...

    @property
    def in_dim(self) -> int:
        return self.W.shape[1]  # type: ignore[no-any-return, unused-ignore]

    @property
    def out_dim(self) -> int:
        return self.W.shape[0]  # type: ignore[no-any-return, unused-ignore]

    def _params(self) -> tuple[NDArray[Any], ...]:
        return (self.W,) if self.b is None else (self.W, self.b)

    def _param_arrays(self) -> tuple[NDArray[Any], ...]:
        return self._params()

    def _with_params(self, new: Sequence[NDArray[Any]]) -> Map:
        return Affine(*new)

    def _spec(self, dtype: np.dtype[Any]) -> _Spec:
        W = np.require(self.W, dtype, "A")
        b = None if self.b is None else np.require(self.b, dtype, "CA")  # type: ignore[arg-type, unused-ignore]  # "CA": C, A
        return (_OP_AFFINE, W, b)

    def _spec_is_view(self, spec: _Spec) -> bool:
        """Whether the programme reads W and b in place (else: converted copies,
        which would not follow the caller's in-place changes)."""
        return spec[1] is self.W and (self.b is None or spec[2] is self.b)  # type: ignore[misc]  # an affine spec

    def __repr__(self) -> str:
        return f"Affine({self.W.shape[1]} -> {self.W.shape[0]}" + (
            ", bias)" if self.b is not None else ")")


class _SameDtype(_Builtin):
    """For the type checker only: maps whose output has x's dtype (the
    elementwise maps, Softmax, LogSoftmax); nothing at run time."""

    if TYPE_CHECKING:   # x's dtype
        @overload
        def __call__(self, x: NDArray[np.float32]) -> NDArray[np.float32]: ...  # type: ignore[overload-overlap, unused-ignore]
        @overload
        def __call__(self, x: NDArray[np.float64]) -> NDArray[np.float64]: ...
        @overload
        def __call__(self, x: ArrayLike) -> _FloatArray: ...
        def __call__(self, x: ArrayLike) -> _FloatArray: ...


class _Elementwise(_SameDtype):
    _code = 0
    _param: float | NDArray[np.float64] = 0.0   # a parameter-free map's; a parameter is a 0-d array

    def _spec(self, dtype: np.dtype[Any]) -> _Spec:
        return (_OP_ELEMENTWISE, self._code, self._param)  # type: ignore[return-value]  # read as a double

    def _param_arrays(self) -> tuple[NDArray[Any], ...]:
        return (self._param,) if isinstance(self._param, np.ndarray) else ()

    def _with_params(self, new: Sequence[NDArray[Any]]) -> Map:
        m = object.__new__(type(self))
        if new:
            m._param = new[0]
        return m

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _elementwise(name: str, code: int, doc: str) -> type[_Elementwise]:
    cls = type(name, (_Elementwise,), {"_code": code, "__doc__": doc})
    return cls


Tanh = _elementwise("Tanh", _EW["tanh"], "x -> tanh(x), elementwise; J = diag(1 - y^2).")
Sigmoid = _elementwise("Sigmoid", _EW["sigmoid"],
                       "x -> 1 / (1 + exp(-x)), elementwise and stable; J = diag(y (1 - y)).")
ReLU = _elementwise("ReLU", _EW["relu"], "x -> max(x, 0), elementwise; J = diag(x > 0).")
Softplus = _elementwise("Softplus", _EW["softplus"],
                        "x -> log(1 + exp(x)), elementwise and stable; J = diag(sigmoid(x)).")
Exp = _elementwise("Exp", _EW["exp"], "x -> exp(x), elementwise; J = diag(exp(x)).")
Log = _elementwise("Log", _EW["log"],
                   "x -> log(x), elementwise (NaN/-inf for x <= 0, like NumPy); J = diag(1/x).")
Sin = _elementwise("Sin", _EW["sin"], "x -> sin(x), elementwise; J = diag(cos(x)).")
Cos = _elementwise("Cos", _EW["cos"], "x -> cos(x), elementwise; J = diag(-sin(x)).")
Square = _elementwise("Square", _EW["square"], "x -> x^2, elementwise; J = diag(2x).")


class LeakyReLU(_Elementwise):
    """x -> x for x >= 0, alpha x below; J = diag(1 or alpha).

    Parameters
    ----------
    alpha : float, default 0.01
        The slope below 0.
    """

    _code = _EW["leaky_relu"]

    def __init__(self, alpha: float = 0.01) -> None:
        # a 0-d float64 array the programmes read in place (set_params)
        self._param = np.array(_scalar(alpha, "alpha"), dtype=np.float64)

    if TYPE_CHECKING:
        @property
        def alpha(self) -> float: ...
    else:
        alpha = property(lambda self: float(self._param), doc="the slope below 0")

    def __repr__(self) -> str:
        return f"LeakyReLU({self.alpha!r})"


class Scale(_Elementwise):
    """x -> c x; J = c I.

    Parameters
    ----------
    c : float
        The factor.
    """

    _code = _EW["scale"]

    def __init__(self, c: float) -> None:
        # a 0-d float64 array the programmes read in place (set_params)
        self._param = np.array(_scalar(c, "c"), dtype=np.float64)

    if TYPE_CHECKING:
        @property
        def c(self) -> float: ...
    else:
        c = property(lambda self: float(self._param), doc="the factor")

    def __repr__(self) -> str:
        return f"Scale({self.c!r})"


class Softmax(_SameDtype):
    """x -> exp(x) / sum(exp(x)) over the last axis, stable;
    J = diag(s) - s s^T (applied in O(n))."""

    def _spec(self, dtype: np.dtype[Any]) -> _Spec:
        return (_OP_SOFTMAX,)

    def __repr__(self) -> str:
        return "Softmax()"


class LogSoftmax(_SameDtype):
    """x -> x - logsumexp(x) over the last axis, stable; J = I - 1 s^T."""

    def _spec(self, dtype: np.dtype[Any]) -> _Spec:
        return (_OP_LOG_SOFTMAX,)

    def __repr__(self) -> str:
        return "LogSoftmax()"


def __getattr__(name: str) -> Any:
    """The losses and compositions under their old address.

    They moved to :mod:`gradchain.losses` and :mod:`gradchain.composition`,
    which import this module; resolving them here on first use (PEP 562)
    keeps every import one-way -- this module imports neither -- so no
    import order can meet a partly initialised module.
    """
    home = _MOVED.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value             # later lookups are plain attributes
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MOVED))
