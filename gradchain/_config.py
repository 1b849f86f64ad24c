"""Runtime introspection: :func:`show_config` and gradchain's controller for
threadpoolctl (issue 13).

One room for "what is this build and what does it run on": versions, the
SIMD kernels the dispatcher chose, the OpenMP runtime and thread count, and
the BLAS behind ``scipy.linalg.cython_blas``.
"""
from __future__ import annotations

import os
import platform
import sys
from typing import Any, Literal, overload

from gradchain import _kernels

__all__ = ["show_config"]


def _version(name: str) -> str | None:
    import importlib.metadata
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _loaded_libraries(*prefixes: str) -> list[str]:
    """Paths of the shared libraries of this process whose file name starts
    with one of prefixes (Linux: /proc/self/maps; elsewhere: none)."""
    found: list[str] = []
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                path = line.split(maxsplit=5)[-1].strip()
                if (path.startswith("/") and os.path.basename(path).startswith(prefixes)
                        and path not in found):
                    found.append(path)
    except OSError:
        pass
    return found


def _pools() -> list[dict[str, Any]] | None:
    """threadpoolctl's view of the process's thread pools, or None when
    threadpoolctl is not installed."""
    try:
        import threadpoolctl  # type: ignore[import-untyped]
    except ImportError:
        return None
    return [dict(d) for d in threadpoolctl.threadpool_info()]


def _config() -> dict[str, Any]:
    import numpy
    import scipy  # type: ignore[import-untyped]
    from gradchain import __version__
    pools = _pools()
    if pools is not None:
        blas = [{k: d.get(k) for k in ("internal_api", "version", "num_threads",
                                        "threading_layer", "architecture", "filepath")}
                for d in pools if d["user_api"] == "blas"]
        # NumPy and SciPy may each bring a BLAS; cython_blas is SciPy's
        for d in blas:
            path = d["filepath"] or ""
            d["of"] = ("scipy" if f"{os.sep}scipy" in path
                       else "numpy" if f"{os.sep}numpy" in path else None)
        omp = [{k: d.get(k) for k in ("internal_api", "version", "num_threads", "filepath")}
               for d in pools if d["user_api"] == "openmp" and d["internal_api"] != "gradchain"]
    else:
        blas = [{"filepath": p} for p in _loaded_libraries(
            "libopenblas", "libscipy_openblas", "libmkl_rt", "libblis", "libflexiblas")]
        omp = [{"filepath": p} for p in _loaded_libraries("libgomp", "libomp", "libiomp")]
    try:
        b = scipy.show_config(mode="dicts")["Build Dependencies"]["blas"]
        built_blas = {k: b.get(k) for k in ("name", "version", "openblas configuration")}
    except Exception:           # an older or unusual SciPy: leave it out
        built_blas = None
    return {
        "gradchain": {
            "version": __version__,
            "location": os.path.dirname(os.path.abspath(_kernels.__file__)),
            "simd kernels": _kernels.simd_target(),
            "openmp": _kernels.openmp_enabled(),
            "threads": _kernels.get_num_threads(),
        },
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "platform": {
            "system": platform.system(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
        "dependencies": {
            "numpy": numpy.__version__,
            "scipy": scipy.__version__,
            "threadpoolctl": _version("threadpoolctl"),
        },
        "openmp runtime": omp,
        "blas (scipy.linalg.cython_blas)": {"loaded": blas, "scipy built with": built_blas},
    }


@overload
def show_config(mode: Literal["stdout"] = ...) -> None: ...
@overload
def show_config(mode: Literal["dicts"]) -> dict[str, Any]: ...


def show_config(mode: str = "stdout") -> dict[str, Any] | None:
    """Show what this build of gradchain is and what it runs on.

    In the style of :func:`numpy.show_config` and
    ``sklearn.show_versions``: gradchain's version and location, the SIMD
    instruction set its dense kernels dispatched to (:func:`simd_target`),
    whether it was built with OpenMP and how many threads its next call may
    use (:func:`get_num_threads`), the Python and platform, the versions of
    NumPy, SciPy and threadpoolctl, the OpenMP runtime loaded, and the BLAS
    behind ``scipy.linalg.cython_blas`` (what gradchain's many-vector
    products call).  The runtime libraries come from threadpoolctl when it
    is installed (with their thread counts), else from the process's loaded
    libraries (Linux).

    Parameters
    ----------
    mode : {"stdout", "dicts"}, optional
        ``"stdout"`` (the default) prints the report; ``"dicts"`` returns it
        as nested dicts instead.

    Returns
    -------
    dict or None
        The report for ``mode="dicts"``; None otherwise.

    Raises
    ------
    ValueError
        If `mode` is neither ``"stdout"`` nor ``"dicts"``.

    Examples
    --------
    >>> import gradchain
    >>> cfg = gradchain.show_config(mode="dicts")
    >>> cfg["gradchain"]["simd kernels"] == gradchain.simd_target()
    True
    """
    if mode not in ("stdout", "dicts"):
        raise ValueError(f"mode must be 'stdout' or 'dicts', got {mode!r}")
    cfg = _config()
    if mode == "dicts":
        return cfg
    for section, body in cfg.items():
        print(f"{section}:")
        if isinstance(body, list):
            body = {f"[{i}]": d for i, d in enumerate(body)} or {"": "(none found)"}
        for key, value in body.items():
            if isinstance(value, list):
                value = "; ".join(", ".join(f"{k}={v}" for k, v in d.items() if v is not None)
                                  for d in value) or "(none found)"
            elif isinstance(value, dict):
                value = ", ".join(f"{k}={v}" for k, v in value.items() if v is not None)
            print(f"  {key}: {value}" if key else f"  {value}")
    return None


# the methods of gradchain's threadpoolctl controller (built by
# _register_threadpoolctl: its base class exists only with threadpoolctl)
def _tp_get_num_threads(self: Any) -> int:
    return int(_kernels.get_num_threads())


def _tp_set_num_threads(self: Any, num_threads: int) -> None:
    _kernels.set_num_threads(num_threads)


def _tp_get_version(self: Any) -> str:
    from gradchain import __version__
    return __version__


def _tp_set_additional_attributes(self: Any) -> None:
    self.simd_kernels = _kernels.simd_target()


def _register_threadpoolctl() -> None:
    """Make threadpoolctl see gradchain's own thread setting: a controller
    for the _kernels extension, user_api "openmp" (so that
    ``threadpool_limits(n, user_api="openmp")`` limits gradchain too),
    internal_api "gradchain".  Its thread count is :func:`get_num_threads`;
    setting it is :func:`set_num_threads` (so after a ``threadpool_limits``
    block gradchain keeps the count threadpoolctl restores, rather than
    following ``omp_set_num_threads`` again).  Nothing when threadpoolctl is
    not installed."""
    try:
        import threadpoolctl  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return
    base = getattr(threadpoolctl, "LibController", None)
    if base is None or not hasattr(threadpoolctl, "register"):
        return              # threadpoolctl < 3.0: no custom controllers

    controller = type("GradchainController", (base,), {
        "__doc__": "threadpoolctl's view of gradchain's thread setting.",
        "user_api": "openmp",
        "internal_api": "gradchain",
        "filename_prefixes": ("_kernels",),
        # only gradchain's _kernels extension exports these
        "check_symbols": ("gc_dot_rows_d", "gc_axpy_rows_d"),
        "get_num_threads": _tp_get_num_threads,
        "set_num_threads": _tp_set_num_threads,
        "get_version": _tp_get_version,
        "set_additional_attributes": _tp_set_additional_attributes,
    })
    if not any(getattr(c, "internal_api", None) == "gradchain"
               for c in getattr(threadpoolctl, "_ALL_CONTROLLERS", ())):
        threadpoolctl.register(controller)
