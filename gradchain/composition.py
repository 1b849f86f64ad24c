"""Compositions: the chain rule end to end, from x to grad L.

With x^(0) = x, x^(i) = f^(i)(x^(i-1)) and L = l(x^(k)),

    grad_x L = J_1^T J_2^T ... J_k^T grad l(x^(k)),

where J_i is the Jacobian of f^(i) at x^(i-1).  This module's one job is
running maps (:mod:`gradchain.maps`) and a loss (:mod:`gradchain.losses`)
together: ``compose(*maps, loss=...)`` runs the forward pass, keeps what the
backward pass needs, and evaluates the product without forming a Jacobian
it does not have to; ``check_grad`` checks a derivative against finite
differences.

When every map is built in, forward and backward run as one compiled programme
(op codes over bound buffers, see ``gradchain._program``), reusing its workspace
across calls of the same shape.  User maps (:class:`gradchain.Map`) split the
composition into compiled segments around the Python callbacks.

Batches: x of shape (B, n_0) is B independent samples; the maps act on each
row.  Affine maps on a batch are matrix-matrix products (BLAS).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from gradchain._program import Program
from gradchain.chain import Chain
from gradchain.losses import Loss, _TargetLoss
from gradchain.maps import (Map, _as_float, _checked, _first_sized, _float_dtype,
                            _input, _readonly)
from gradchain.operators import _scalar

if TYPE_CHECKING:
    from gradchain.maps import _Builtin

__all__ = ["Composition", "compose", "check_grad"]

# (for the annotations) the value of a loss (a float; per-sample float64
# values for reduction="none" of a batch), a gradient with respect to x,
# the parameter gradients (one tuple per map), what wrt names, a reduction
_Value = float | NDArray[np.float64]
_XGrad = NDArray[np.floating[Any]]
_ParamGrads = tuple[tuple[NDArray[np.floating[Any]], ...], ...]
if TYPE_CHECKING:
    _Wrt = Literal["x", "params"] | tuple[Literal["x", "params"], ...]
    _Reduction = Literal["sum", "mean", "none"]


class _FastPath(NamedTuple):
    """What value_and_grad needs to skip its set-up: recorded after a call
    of an all-built-in composition, valid for later calls with an x of the
    same dtype and shape (C-contiguous, aligned)."""

    dtype: np.dtype[Any]    # the compute dtype (x's, as the record requires)
    shape: tuple[int, ...]  # x's shape
    program: Program    # the composition's one programme, cached for dtype
    n_k: int            # the width of the output x^(k), the loss rows
    single: bool        # x is a single sample (n_0,)


class Composition:
    """f^(k) o ... o f^(1), optionally followed by a loss; see :func:`compose`.

    Parameters
    ----------
    maps : iterable of Map
        f^(1), ..., f^(k) in application order.
    loss : Loss, optional

    Attributes
    ----------
    maps : tuple of Map
    loss : Loss or None
    """

    def __init__(self, maps: Iterable[Map], loss: Loss | None = None) -> None:
        maps = list(maps)
        cur: int | None = None          # known output size so far (None: any)
        known_from: int | None = None
        for i, m in enumerate(maps):
            if not isinstance(m, Map):
                raise TypeError(f"maps[{i}] must be a gradchain Map, got "
                                f"{type(m).__name__}")
            if m.in_dim is not None and cur is not None and m.in_dim != cur:
                raise ValueError(
                    f"maps[{i}] ({m!r}) takes {m.in_dim} inputs but "
                    f"maps[{known_from}] outputs {cur} values")
            if m.out_dim is not None:
                cur, known_from = m.out_dim, i
            elif not m._builtin:
                cur = None
        if loss is not None and not isinstance(loss, Loss):
            raise TypeError(f"loss must be a gradchain Loss, got {type(loss).__name__}")
        if (loss is not None and cur is not None and isinstance(loss, _TargetLoss)
                and loss.target.shape[-1] != cur):
            raise ValueError(
                f"loss {loss._name} has shape {loss.target.shape} but maps[{known_from}] "
                f"outputs {cur} values")
        self._maps, self._loss = tuple(maps), loss
        # consecutive built-in maps form compiled segments; _starts[j] is the
        # index in maps of segment j's first map (the name in messages)
        self._segments: list[list[_Builtin] | Map] = []
        self._starts: list[int] = []
        for i, m in enumerate(maps):
            if m._builtin and self._segments and isinstance(self._segments[-1], list):
                self._segments[-1].append(m)  # type: ignore[arg-type]  # built in
                continue
            self._starts.append(i)
            self._segments.append([m] if m._builtin else m)  # type: ignore[list-item]
        self._programs: dict[np.dtype[Any], list[Any]] = {}
        self._fast: _FastPath | None = None

    @property
    def maps(self) -> tuple[Map, ...]:
        """The maps, a tuple (a Composition is immutable)."""
        return self._maps

    @property
    def loss(self) -> Loss | None:
        """The loss, or None."""
        return self._loss

    def __len__(self) -> int:
        return len(self.maps)

    def __repr__(self) -> str:
        inner = ", ".join(repr(m) for m in self.maps)
        return f"compose({inner}" + (f", loss={self.loss!r})" if self.loss else ")")

    # -- set-up ---------------------------------------------------------

    def _program_list(self, dtype: np.dtype[Any]) -> list[Any]:
        """One Program per built-in segment (user maps stand for themselves).
        Cached per dtype when every parameter is read in place; a parameter
        converted to another dtype is converted again at each call, so that
        in-place changes to it are always seen."""
        progs = self._programs.get(dtype)
        if progs is None:
            progs, cache = [], True
            for seg in self._segments:
                if isinstance(seg, list):
                    specs = [m._spec(dtype) for m in seg]
                    cache &= all(m._spec_is_view(sp) for m, sp in zip(seg, specs))
                    progs.append(Program(specs, dtype))
                else:
                    progs.append(seg)
            if cache:
                self._programs[dtype] = progs
        return progs

    def _input(self, x: ArrayLike,
               name: str = "x") -> tuple[NDArray[Any], bool, np.dtype[Any]]:
        """(X, single, dtype): x checked and laid out (gradchain.maps._input)."""
        return _input(x, self.maps,
                      () if self.loss is None else self.loss._params(), name)

    def _user_fn(self, i: int, X: NDArray[Any], single: bool,
                 dtype: np.dtype[Any]) -> NDArray[Any]:
        """maps[i](X) for a user map, checked: (B, m) rows (B = X's rows)."""
        xin = _readonly(X[0] if single else X)
        want = (None,) if single else (X.shape[0], None)
        Y = _checked(self.maps[i].fn(xin), want, dtype, i, "fn", (X,))
        return Y.reshape(1, -1) if single else Y

    def _user_link(self, i: int, X: NDArray[Any], T: NDArray[Any], m_out: int,
                   transpose: bool, single: bool, dtype: np.dtype[Any]) -> NDArray[Any]:
        """J^T T (transpose) or J T for user map i at the batch X, checked."""
        xin = _readonly(X[0] if single else X)
        tin = _readonly(T[0] if single else T)
        R = self.maps[i]._apply(i, xin, tin, m_out, transpose, dtype)
        return R.reshape(1, -1) if single else R

    def _check_width(self, idx: int, X: NDArray[Any]) -> None:
        """X is about to enter maps[idx:]: check it against the first map
        there whose input size is known (built-in stretches only)."""
        i = _first_sized(self.maps, idx)
        if i is not None and X.shape[1] != self.maps[i].in_dim:
            src = f"maps[{idx - 1}]" if idx > 0 else "x"
            raise ValueError(
                f"maps[{i}] ({self.maps[i]!r}) takes {self.maps[i].in_dim} "
                f"inputs but {src} outputs {X.shape[1]} values")

    def _walk(self, X: NDArray[Any], single: bool, dtype: np.dtype[Any], mode: str,
              T: Any = None) -> Any:
        """The one walk over the segments, forward from x^(0) = X.

        mode "forward": returns (trail, [x^(0), ..., x^(k)]);
        mode "jvp":     returns (x^(k), J T) for tangents T (X's shape);
        mode "trail":   returns (trail, x^(k)), the trail being, per segment,
                        (index of its first map, segment, program, its input)
                        for _backward.
        """
        trail: list[tuple[int, Any, Any, NDArray[Any]]] = []
        xs = [X]
        for idx, seg, prog in zip(self._starts, self._segments,
                                  self._program_list(dtype)):
            trail.append((idx, seg, prog, X))
            if isinstance(seg, list):
                self._check_width(idx, X)
                if mode == "jvp":
                    X, T = prog.run(X, "jvp", T=T)
                elif mode == "forward":
                    xs += prog.run(X, "forward")[1:]
                    X = xs[-1]
                else:
                    X = prog.run(X, "forward")[-1]
            else:
                Y = self._user_fn(idx, X, single, dtype)
                if mode == "jvp":
                    T = self._user_link(idx, X, T, Y.shape[1], False, single,
                                        dtype)
                X = Y
                xs.append(X)
        if mode == "jvp":
            return X, T
        return trail, (xs if mode == "forward" else X)

    def _backward(self, trail: list[tuple[int, Any, Any, NDArray[Any]]],
                  G: NDArray[Any], single: bool, dtype: np.dtype[Any]) -> NDArray[Any]:
        for idx, seg, prog, Xin in reversed(trail):
            if isinstance(seg, list):
                G = prog.run(Xin, "vjp", T=G)[1]
            else:
                G = self._user_link(idx, Xin, G, G.shape[1], True, single, dtype)
        return G

    # -- public API -----------------------------------------------------

    def forward(self, x: ArrayLike) -> tuple[_XGrad, list[_XGrad]]:
        """Run the maps: returns (x^(k), [x^(0), x^(1), ..., x^(k)]), each of
        x's rank (1-D, or (B, n_i) for a batch)."""
        X, single, dtype = self._input(x)
        xs = self._walk(X, single, dtype, "forward")[1]
        if np.shares_memory(xs[0], x):
            xs[0] = xs[0].copy()            # never hand back the caller's x
        if single:
            xs = [a[0] for a in xs]
        return xs[-1], xs

    def __call__(self, x: ArrayLike) -> _XGrad:
        return self.forward(x)[0]

    # value_and_grad's result follows reduction and wrt; a wrt of the
    # other forms (positional after reduction, or not a literal) takes the
    # last, general signature
    @overload
    def value_and_grad(self, x: ArrayLike, reduction: Literal["sum", "mean"] = ...,
                       wrt: Literal["x"] = ...) -> tuple[float, _XGrad]: ...
    @overload
    def value_and_grad(self, x: ArrayLike, reduction: Literal["none"],
                       wrt: Literal["x"] = ...) -> tuple[_Value, _XGrad]: ...
    @overload
    def value_and_grad(self, x: ArrayLike, reduction: _Reduction = ...,
                       wrt: Literal["x"] = ...) -> tuple[_Value, _XGrad]: ...
    @overload
    def value_and_grad(self, x: ArrayLike, reduction: Literal["sum", "mean"] = ..., *,
                       wrt: Literal["params"]) -> tuple[float, _ParamGrads]: ...
    @overload
    def value_and_grad(self, x: ArrayLike, reduction: Literal["none"], *,
                       wrt: Literal["params"]) -> tuple[_Value, _ParamGrads]: ...
    @overload
    def value_and_grad(self, x: ArrayLike, reduction: Literal["sum", "mean"] = ..., *,
                       wrt: tuple[Literal["x"], Literal["params"]]
                       ) -> tuple[float, tuple[_XGrad, _ParamGrads]]: ...
    @overload
    def value_and_grad(self, x: ArrayLike, reduction: Literal["sum", "mean"] = ..., *,
                       wrt: tuple[Literal["params"], Literal["x"]]
                       ) -> tuple[float, tuple[_ParamGrads, _XGrad]]: ...
    @overload
    def value_and_grad(
            self, x: ArrayLike, reduction: _Reduction = ..., wrt: _Wrt = ...
    ) -> tuple[_Value, _XGrad | _ParamGrads | tuple[_XGrad, _ParamGrads]
               | tuple[_ParamGrads, _XGrad]]: ...

    def value_and_grad(self, x: ArrayLike, reduction: _Reduction = "sum",
                       wrt: _Wrt = "x") -> Any:
        """L(x) and its gradient with respect to x, the parameters, or both.

        Parameters
        ----------
        x : array_like, shape (n_0,) or (B, n_0)
            One sample, or a batch of B samples (one per row).
        reduction : {"sum", "mean", "none"}, optional
            For a batch with per-sample losses L_b: ``"sum"`` returns
            sum_b L_b, ``"mean"`` (1/B) sum_b L_b and the gradients divided
            by B, ``"none"`` the (B,) losses.
        wrt : {"x", "params"} or tuple of them, optional
            What the gradient is taken with respect to: ``"x"`` (default),
            ``"params"``, or ``("x", "params")`` (both, returned in the
            order given).

        Returns
        -------
        value : float or ndarray (B,)
        grad : ndarray, tuple, or tuple of both
            ``"x"``: shaped like x; for a batch row b is grad_x L_b (the
            gradient of the reduced loss with respect to sample b).
            ``"params"``: one tuple per map, of arrays shaped like its
            parameters (:meth:`param_arrays`): ``Affine`` (dL/dW, dL/db)
            or (dL/dW,), ``Scale`` (dL/dc,), ``LeakyReLU`` (dL/dalpha,),
            a user :class:`gradchain.Map` its ``param_vjp``'s, parameter-
            free maps ().  Summed over the batch (divided by B for
            ``"mean"``); with ``reduction="none"`` per example, each with a
            leading batch axis ``(B, *shape)``, what ``torch.func.vmap(grad)``
            gives.  In the composition's dtype (a user map's: its
            parameters' dtype).  :meth:`ravel` flattens them.

        Notes
        -----
        The parameter gradients come from the cotangents at every map's
        output, lambda_i = J_{i+1}^T ... J_k^T grad l, kept by the one
        backward pass: for an affine map x -> W x + b with inputs X (B,
        n_in) and output cotangents Lambda (B, n_out), dL/dW = Lambda^T X
        (one BLAS product over the batch) and dL/db = sum_b Lambda[b]; per
        example dW[b] = Lambda[b] X[b]^T.  Losses are data, not
        parameters: ``SquaredError(t)``'s t, ``Dot(w)``'s w and the other
        losses' targets get no gradient (for ``Dot(w)``, dL/dw = x^(k),
        the composition's output).
        """
        if reduction not in ("sum", "mean", "none"):
            raise ValueError(f"reduction must be 'sum', 'mean' or 'none', got "
                             f"{reduction!r}")
        # pmode: the parameter gradients the programme computes (0 none, 1
        # summed, 2 per example); want: the names asked for
        if type(wrt) is str and wrt == "x":
            want, pmode = ("x",), 0
        else:
            want = _parse_wrt(wrt)
            pmode = 2 if reduction == "none" else 1
        fast = self._fast
        if fast is not None and type(x) is np.ndarray:
            dtype, shape, program, n_k, single = fast       # the record's fields
            if (x.dtype == dtype and x.shape == shape and x.flags.c_contiguous
                    and x.flags.aligned):
                # same dtype and shape as an earlier call of an all-built-in
                # composition: the programme and sizes are known; one
                # compiled call
                loss: Any = self.loss       # not None: a record has a loss
                aux, labels = loss._rows(1 if single else x.shape[0], n_k, dtype)
                if not pmode:
                    vals, G = program.loss_grad(x, loss._code, aux, labels)
                    if single:
                        return float(vals[0]), G
                    return self._reduce(vals, G, reduction)
                if single:
                    pmode = 1
                vals, G, pg = program.loss_grad(x, loss._code, aux, labels, pmode,
                                                "x" in want)
                return self._assemble(vals, G, pg, single, reduction, want, wrt)
        if self.loss is None:
            raise ValueError("value_and_grad needs a loss: compose(..., loss=...)")
        X, single, dtype = self._input(x)
        if single and pmode:
            pmode = 1
        B = X.shape[0]
        progs = self._program_list(dtype)
        if len(progs) == 1 and isinstance(self._segments[0], list):
            n_k = progs[0].dims(X.shape[1])[-1]
            aux, labels = self.loss._rows(B, n_k, dtype)
            if pmode:
                vals, G, pg = progs[0].loss_grad(X, self.loss._code, aux, labels,
                                                 pmode, "x" in want)
            else:
                vals, G = progs[0].loss_grad(X, self.loss._code, aux, labels)
            if (type(x) is np.ndarray and x.dtype == dtype and x.flags.c_contiguous
                    and x.flags.aligned and self._programs.get(dtype) is progs):
                self._fast = _FastPath(dtype, x.shape, progs[0], n_k, single)
            if pmode:
                return self._assemble(vals, G if G is None or not single else G[0],
                                      pg, single, reduction, want, wrt)
        elif pmode:
            vals, G, pg = self._backward_params(X, single, dtype, pmode, "x" in want)
            return self._assemble(vals, G, pg, single, reduction, want, wrt)
        else:
            trail, Y = self._walk(X, single, dtype, "trail")
            aux, labels = self.loss._rows(B, Y.shape[1], dtype)
            vals, Gk = Program([], dtype).loss_grad(Y, self.loss._code, aux, labels)
            G = self._backward(trail, Gk, single, dtype)
        if single:
            return float(vals[0]), G[0]
        return self._reduce(vals, G, reduction)

    def _assemble(self, vals: NDArray[np.float64], G: NDArray[Any] | None,
                  pg: _ParamGrads, single: bool, reduction: str,
                  want: tuple[str, ...], wrt: object) -> Any:
        """value_and_grad's result from the per-sample values, the x
        gradient (x's shape; None when not wanted) and the per-map
        parameter gradients."""
        if single:
            value: _Value = float(vals[0])
        else:
            B = vals.shape[0]
            if reduction == "mean" and B:
                for t in pg:
                    for a in t:
                        a /= B
            value, G = self._reduce(vals, G if G is not None else np.empty((0, 0)),
                                    reduction)
            if "x" not in want:
                G = None
        if len(want) == 1:
            return value, (G if want[0] == "x" else pg)
        return value, ((G, pg) if want[0] == "x" else (pg, G))

    def _backward_params(self, X: NDArray[Any], single: bool, dtype: np.dtype[Any],
                         pmode: int, want_x: bool
                         ) -> tuple[NDArray[np.float64], NDArray[Any] | None, _ParamGrads]:
        """(values, x gradient or None, per-map parameter gradients) through
        the segments: programmes and user maps in turn."""
        B = X.shape[0]
        pgrads: list[tuple[NDArray[Any], ...]] = [()] * len(self.maps)
        trail, Y = self._walk(X, single, dtype, "trail")
        aux, labels = self.loss._rows(B, Y.shape[1], dtype)  # type: ignore[union-attr]  # checked
        vals, G = Program([], dtype).loss_grad(Y, self.loss._code, aux, labels)  # type: ignore[union-attr]
        for n, (idx, seg, prog, Xin) in enumerate(reversed(trail)):
            # the first segment's input gradient only when x's is wanted
            need = want_x or n < len(trail) - 1
            if isinstance(seg, list):
                _, Gin, pg = prog.run(Xin, "vjp", T=G, pmode=pmode, want_x=need)
                pgrads[idx:idx + len(seg)] = pg
            else:
                pgrads[idx] = self._user_params_grad(idx, Xin, G, single, pmode == 2)
                Gin = (self._user_link(idx, Xin, G, G.shape[1], True, single, dtype)
                       if need else None)
            G = Gin
        if single and G is not None:
            G = G[0]
        return vals, G, tuple(pgrads)

    def _user_params_grad(self, i: int, X: NDArray[Any], G: NDArray[Any], single: bool,
                          per_example: bool) -> tuple[NDArray[Any], ...]:
        """User map i's parameter gradient at the rows X for cotangent rows
        G: its param_vjp over the batch, or once per row (per_example:
        stacked with a leading batch axis)."""
        m = self.maps[i]
        if not m._param_arrays():
            return ()
        if single:
            return m._user_param_vjp(i, _readonly(X[0]), _readonly(G[0]), True)
        if not per_example:
            return m._user_param_vjp(i, _readonly(X), _readonly(G), False)
        rows = [m._user_param_vjp(i, _readonly(X[b]), _readonly(G[b]), True)
                for b in range(X.shape[0])]
        return tuple(np.stack([r[j] for r in rows]) if rows else
                     np.empty((0,) + p.shape, p.dtype)
                     for j, p in enumerate(m._param_arrays()))

    # -- parameters -------------------------------------------------------

    def param_arrays(self) -> tuple[tuple[NDArray[Any], ...], ...]:
        """The maps' parameters, one tuple per map, in the order of
        ``value_and_grad(..., wrt="params")``'s gradients: the arrays the
        maps read in place (an ``Affine``'s W and b, ``Scale``'s and
        ``LeakyReLU``'s 0-d arrays, a user map's ``params``)."""
        return tuple(tuple(m._param_arrays()) for m in self.maps)

    def params(self) -> NDArray[np.floating[Any]]:
        """All parameters as one flat vector (a copy), in map order, each
        array raveled in C order: what an optimiser steps; see
        :meth:`set_params` and :meth:`ravel`."""
        arrays = [p for t in self.param_arrays() for p in t]
        if not arrays:
            return np.zeros(0)
        return np.concatenate([np.ravel(p) for p in arrays]).astype(
            np.result_type(*arrays, np.float32), copy=False)

    def set_params(self, flat: ArrayLike) -> None:
        """Write a flat vector (of :meth:`params`' length and order) into
        the maps' parameter arrays, in place: the caller's own arrays where
        the maps read them in place (an ``Affine`` built from a float
        array), so every composition sharing those maps sees the new values.
        Nothing else writes parameters."""
        arrays = [p for t in self.param_arrays() for p in t]
        total = sum(p.size for p in arrays)
        v = _as_float(flat, "flat")
        if v.shape != (total,):
            raise ValueError(f"flat has shape {v.shape} but the parameters hold "
                             f"{total} values: it must have shape ({total},)")
        where = [(i, j) for i, t in enumerate(self.param_arrays()) for j in range(len(t))]
        for (i, j), p in zip(where, arrays):
            if not p.flags.writeable:
                raise ValueError(f"maps[{i}]'s parameter {j} (shape {p.shape}) is "
                                 f"read-only")
            if p.dtype.kind != "f":
                raise TypeError(f"maps[{i}]'s parameter {j} has dtype {p.dtype}: "
                                f"set_params writes in place and would truncate; "
                                f"build the map from a float array")
        o = 0
        for p in arrays:
            p[...] = v[o:o + p.size].reshape(p.shape)
            o += p.size

    def ravel(self, grads: _ParamGrads) -> NDArray[np.floating[Any]]:
        """A parameter-gradient structure (``value_and_grad(...,
        wrt="params")``) as one vector in :meth:`params`' order: (P,), or
        (B, P) for per-example gradients (``reduction="none"``)."""
        arrays = self.param_arrays()
        if not isinstance(grads, tuple) or len(grads) != len(arrays):
            raise ValueError(f"grads must be a tuple of {len(arrays)} tuples (one "
                             f"per map), as value_and_grad(..., wrt='params') "
                             f"returns")
        parts: list[NDArray[Any]] = []
        lead: tuple[int, ...] | None = None
        for i, (g, ps) in enumerate(zip(grads, arrays)):
            if not isinstance(g, tuple) or len(g) != len(ps):
                raise ValueError(f"grads[{i}] must be a tuple of {len(ps)} arrays "
                                 f"(maps[{i}]'s parameters)")
            for j, (a, p) in enumerate(zip(g, ps)):
                a = np.asarray(a)
                extra = a.shape[:a.ndim - p.ndim] if a.ndim >= p.ndim else None
                if extra is None or a.shape[len(extra):] != p.shape or len(extra) > 1 \
                        or (lead is not None and extra != lead):
                    raise ValueError(f"grads[{i}][{j}] has shape {a.shape}, expected "
                                     f"{p.shape} (or (B, *{p.shape}) per example)")
                lead = extra
                parts.append(a.reshape(extra + (p.size,)))
        if not parts:
            return np.zeros(0)
        return np.concatenate(parts, axis=-1)

    def _with_param_copies(self) -> tuple[Composition, list[NDArray[Any]]]:
        """(a composition of the same maps over copies of their parameters,
        the copies in param order): for gradient checks."""
        maps: list[Map] = []
        copies: list[NDArray[Any]] = []
        for m in self.maps:
            # float copies (an integer parameter would truncate its steps)
            cs = [np.array(p, dtype=np.result_type(p.dtype, np.float32), copy=True)
                  for p in m._param_arrays()]
            copies += cs
            maps.append(m._with_params(cs) if cs else m)
        return Composition(maps, self.loss), copies

    @staticmethod
    def _reduce(vals: NDArray[np.float64], G: Any, reduction: str) -> tuple[_Value, Any]:
        """The per-sample values (B,) and gradient rows G reduced as
        ``reduction`` says (value_and_grad has checked it)."""
        if reduction == "sum":
            return float(vals.sum()), G
        if reduction == "mean":
            B = vals.shape[0]
            G /= max(B, 1)
            return (float(vals.sum() / B) if B else float("nan")), G
        return vals, G                  # "none"

    @overload
    def value(self, x: ArrayLike, reduction: Literal["sum", "mean"] = ...) -> float: ...
    @overload
    def value(self, x: ArrayLike, reduction: _Reduction) -> _Value: ...

    def value(self, x: ArrayLike, reduction: _Reduction = "sum") -> _Value:
        """L(x) (see value_and_grad)."""
        return self.value_and_grad(x, reduction)[0]

    def grad(self, x: ArrayLike, reduction: _Reduction = "sum") -> _XGrad:
        """grad_x L (see value_and_grad)."""
        return self.value_and_grad(x, reduction)[1]

    def vjp(self, x: ArrayLike, g: ArrayLike) -> _XGrad:
        """J^T g for the maps' Jacobian J at x (the loss is not involved);
        g of shape (n_k,) or, for a batch x, (B, n_k)."""
        X, single, dtype = self._input(x)
        trail, Y = self._walk(X, single, dtype, "trail")
        G = _as_float(g, "g")
        want = (Y.shape[1],) if single else Y.shape
        if G.shape != want:
            raise ValueError(f"g has shape {G.shape} but the maps output {want}")
        G = np.require(G.reshape(Y.shape), dtype, "CA")  # type: ignore[arg-type, unused-ignore]  # "CA": C, A
        out = self._backward(trail, G, single, dtype)
        return out[0] if single else out

    def jvp(self, x: ArrayLike, v: ArrayLike) -> _XGrad:
        """J v for the maps' Jacobian J at x; v of x's shape."""
        X, single, dtype = self._input(x)
        V = _as_float(v, "v")
        if V.shape != np.shape(x):
            raise ValueError(f"v has shape {V.shape} but x has shape {np.shape(x)}")
        V = np.require(V.reshape(X.shape), dtype, "CA")  # type: ignore[arg-type, unused-ignore]  # "CA": C, A
        V = self._walk(X, single, dtype, "jvp", T=V)[1]
        return V[0] if single else V  # type: ignore[no-any-return]

    def jacobian(self, x: ArrayLike) -> _XGrad:
        """The dense Jacobian of f^(k) o ... o f^(1) at a single x.

        Parameters
        ----------
        x : array_like, shape (n_0,)

        Returns
        -------
        ndarray, shape (n_k, n_0)
            In the composition's dtype.

        Notes
        -----
        When forward mode runs on every map's Jacobian (built-in maps, and
        user maps with ``jacobian=`` and no ``jvp=``, which would take
        precedence), this is ``chain(x).jacobian()``: the product of the
        links, structure-aware and in the cheapest bracketing (see
        :meth:`gradchain.Chain.plan`).  Otherwise -- a user map is
        matrix-free, or its ``jvp=`` takes precedence -- it is built column
        by column from the forward-mode products J e_j.
        """
        x = _as_float(x, "x")
        if x.ndim != 1:
            raise ValueError(f"jacobian takes a single x (n_0,), got shape {x.shape}")
        if len(self.maps) and all(isinstance(seg, list) for seg in self._segments):
            # built-in maps only: forward pass, the ops' Jacobians and their
            # product in one compiled call
            X, _, dtype = self._input(x)
            self._check_width(0, X)
            return self._program_list(dtype)[0].jacobian(X[0])  # type: ignore[no-any-return]
        if all(m._forward_uses_jacobian for m in self.maps):
            chain, dtype = self._chain_at(x)
            if len(chain) == 0:             # no maps: the identity
                return np.eye(x.shape[0], dtype=dtype)
            J = chain.jacobian()
            # a chain of Identity operators only has no dtype (float64)
            return J if J.dtype == dtype else J.astype(dtype)  # type: ignore[no-any-return]
        _, _, dtype = self._input(x)
        n0 = x.shape[0]
        if n0 == 0:
            return np.zeros((self.forward(x)[0].shape[0], 0), dtype)
        E = np.eye(n0, dtype=dtype)
        return np.stack([self.jvp(x, E[j]) for j in range(n0)], axis=1)

    def chain(self, x: ArrayLike) -> Chain:
        """The :class:`gradchain.Chain` of the maps' Jacobians at a single x
        (Affine: W itself; elementwise: Diagonal; softmax: diagonal plus
        rank one; user maps: their ``jacobian(x)``)."""
        return self._chain_at(x)[0]

    def _chain_at(self, x: ArrayLike) -> tuple[Chain, np.dtype[Any]]:
        """(chain(x), the composition's dtype at x)."""
        x = _as_float(x, "x")
        if x.ndim != 1:
            raise ValueError(f"chain takes a single x (n_0,), got shape {x.shape}")
        X, single, dtype = self._input(x)
        links: list[Any] = []
        # each segment knows its Jacobians: a programme its ops' (W, a
        # Diagonal, ...), a user map its checked jacobian(x)
        for idx, seg, prog in zip(self._starts, self._segments,
                                  self._program_list(dtype)):
            if isinstance(seg, list):
                self._check_width(idx, X)
                links += prog.jacobian(X[0], links=True)
                X = prog.run(X, "forward")[-1]
            else:
                Y = self._user_fn(idx, X, single, dtype)
                links.append(seg._link(idx, X[0], Y[0], dtype))
                X = Y
        return Chain(links), dtype


_WRT: dict[object, tuple[str, ...]] = {"x": ("x",), "params": ("params",), ("x", "params"): ("x", "params"),
        ("params", "x"): ("params", "x")}


def _parse_wrt(wrt: object) -> tuple[str, ...]:
    """value_and_grad's wrt as a tuple of names, each once."""
    try:
        got = _WRT.get(wrt)     # what it returns is the canonical tuple
    except TypeError:           # unhashable: a list, say
        got = None
    if got is not None:
        return got
    names = (wrt,) if isinstance(wrt, str) else wrt
    if (isinstance(names, (tuple, list)) and names
            and all(isinstance(w, str) and w in ("x", "params") for w in names)
            and len(set(names)) == len(names)):
        return tuple(names)
    raise ValueError(f"wrt must be 'x', 'params' or ('x', 'params'), got {wrt!r}")


def compose(*maps: Map, loss: Loss | None = None) -> Composition:
    """Compose maps f^(1), ..., f^(k) (in application order) and a loss.

    Parameters
    ----------
    *maps : Map
        Built-in maps (:class:`gradchain.Affine`, :class:`gradchain.Tanh`,
        ...) and user maps (:class:`gradchain.Map`), in application order.
    loss : Loss, optional
        l, applied to the output x^(k); needed by ``value_and_grad``.

    Returns
    -------
    Composition
        With ``forward``, ``value_and_grad``, ``grad``, ``vjp``, ``jvp``,
        ``jacobian`` and ``chain``.  Sizes known from the maps (an Affine's
        W) are checked here; the rest at the first call.

    Raises
    ------
    TypeError
        A map that is not a :class:`gradchain.Map`, a loss that is not a
        :class:`gradchain.Loss`.
    ValueError
        Sizes that do not chain (the message names the maps and sizes).

    Examples
    --------
    >>> import numpy as np, gradchain as gc
    >>> W = np.array([[1., 2.], [3., 4.]])
    >>> f = gc.compose(gc.Affine(W), gc.Tanh(), loss=gc.SquaredError([0., 0.]))
    >>> L, g = f.value_and_grad(np.array([0.1, -0.2]))
    >>> round(L, 6)
    0.149208
    """
    return Composition(maps, loss)


def check_grad(f: Composition | Map | Callable[[NDArray[Any]], tuple[Any, ArrayLike]],
               x: ArrayLike, *, eps: float | None = None, wrt: _Wrt = "x") -> float:
    """Maximum relative error of an analytic derivative against central
    finite differences at x.

    Parameters
    ----------
    f : Composition, Map or callable
        A Composition with a loss (its gradient is checked), a Composition
        without one or a Map (its Jacobian, ``jacobian(x)``, is checked
        column by column), or a callable returning (value, gradient).
    x : array_like, shape (n,)
        The point, in its float dtype (integers: float64).
    eps : float, optional
        The relative step; defaults to cbrt(machine epsilon), giving the
        step ``eps * max(1, |x_j|)`` per coordinate.
    wrt : {"x", "params"} or ("x", "params"), optional
        For a Composition with a loss: check the gradient with respect to
        x, to every parameter of every map (one central difference per
        parameter entry, the step relative to the entry; the composition
        is evaluated over copies of the parameters, the maps' own are not
        touched), or both (the larger error).

    Returns
    -------
    float
        ``max |analytic - numeric| / max |numeric|`` (or the absolute error
        when the numeric derivative is 0).
    """
    want = _parse_wrt(wrt)
    if "params" in want:
        if not (isinstance(f, Composition) and f.loss is not None):
            raise TypeError("check_grad(..., wrt='params') takes a Composition "
                            "with a loss")
        err = _check_param_grad(f, x, eps)
        if "x" in want:
            err = max(err, check_grad(f, x, eps=eps))
        return err
    a = _as_float(x, "x")
    x = np.array(a, dtype=_float_dtype(a.dtype, "x"))     # a float copy to step in
    if x.ndim != 1:
        raise ValueError(f"check_grad takes a single x (n,), got shape {x.shape}")
    e0 = np.cbrt(np.finfo(x.dtype).eps) if eps is None else _scalar(eps, "eps")
    steps = e0 * np.maximum(1.0, np.abs(x))
    if isinstance(f, Map):
        f = Composition([f])
    if isinstance(f, Composition) and f.loss is None:
        analytic = f.jacobian(x)
        num = np.empty_like(analytic)
        for j in range(x.shape[0]):
            xp, xm = x.copy(), x.copy()
            xp[j] += steps[j]
            xm[j] -= steps[j]
            num[:, j] = (f(xp) - f(xm)) / (xp[j] - xm[j])
    else:
        value_and_grad = f.value_and_grad if isinstance(f, Composition) else f
        analytic = np.asarray(value_and_grad(x)[1])
        num = np.empty(x.shape[0])
        for j in range(x.shape[0]):
            xp, xm = x.copy(), x.copy()
            xp[j] += steps[j]
            xm[j] -= steps[j]
            num[j] = (float(value_and_grad(xp)[0]) - float(value_and_grad(xm)[0])) / (
                xp[j] - xm[j])
    scale = np.max(np.abs(num)) if num.size else 0.0
    err = np.max(np.abs(analytic - num)) if num.size else 0.0
    return float(err / scale) if scale > 0 else float(err)


def _check_param_grad(f: Composition, x: ArrayLike, eps: float | None) -> float:
    """check_grad's parameter half: value_and_grad(x, wrt="params") against
    central differences over copies of the parameters."""
    x = _as_float(x, "x")
    if x.ndim != 1:
        raise ValueError(f"check_grad takes a single x (n,), got shape {x.shape}")
    _, grads = f.value_and_grad(x, wrt="params")
    analytic = f.ravel(grads)
    g, copies = f._with_param_copies()
    # the step follows the dtype the composition computes in (a float64
    # Scale parameter of a float32 composition is evaluated in float32)
    dtype = f._input(x)[2]
    e0 = np.cbrt(np.finfo(dtype).eps) if eps is None else _scalar(eps, "eps")
    num = np.empty(analytic.shape[0])
    o = 0
    for c in copies:
        flat = c.reshape(-1)            # a view: the copy steps in place
        for j in range(flat.shape[0]):
            orig = flat[j]
            h = e0 * max(1.0, abs(float(orig)))
            flat[j] = orig + h
            hp = flat[j]
            lp = g.value(x)
            flat[j] = orig - h
            hm = flat[j]
            lm = g.value(x)
            flat[j] = orig
            num[o + j] = (lp - lm) / float(hp - hm)
        o += flat.shape[0]
    scale = np.max(np.abs(num)) if num.size else 0.0
    err = np.max(np.abs(analytic - num)) if num.size else 0.0
    return float(err / scale) if scale > 0 else float(err)
