"""Run-time controls of long analyses: a progress bar that can be turned off, and threads.

Every long function of the analysis layer takes ``progress=`` with three settings:

* ``True``: always show a bar (on stderr);
* ``False``: never;
* ``"auto"`` (default): show one only when the computation is long (its estimated work, in
  floating-point operations, is above :data:`AUTO_WORK`) *and* stderr is a terminal.

The environment variable ``GRADSCOPE_PROGRESS=0`` (or ``false``/``no``/``off``) turns every bar
off, whatever the argument says; ``GRADSCOPE_PROGRESS=1`` turns ``"auto"`` bars on.

**Threads.** The analyses are long sequences of small and medium linear-algebra calls (a
``512 × 512`` Jacobian times a ``512 × 16`` basis, a thin QR...). Multi-threaded BLAS gains
little on such sizes and loses badly when the cores are shared: spinning worker threads on
an oversubscribed machine made one such product 40× slower than single-threaded in our
measurements (``benchmarks/analysis.py``). :func:`compute_threads` therefore runs the
analyses with one thread in torch and in the OpenBLAS libraries NumPy/SciPy loaded, and
restores the previous settings afterwards. ``GRADSCOPE_THREADS=n`` chooses another count.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from gradscope.errors import ArgumentError

if TYPE_CHECKING:
    from gradscope.traces import LayerTrace

#: Estimated floating-point work above which ``progress="auto"`` shows a bar (about a
#: second or more of dense linear algebra on one core).
AUTO_WORK = 2e9

_OFF = {"0", "false", "no", "off"}
_ON = {"1", "true", "yes", "on"}


class _NoBar:
    """The do-nothing bar used when progress is off."""

    def update(self, n: int = 1) -> None:
        """Ignore progress."""

    def set_postfix_str(self, s: str) -> None:
        """Ignore the status text."""


def enabled(progress: bool | str = "auto", work: float = float("inf")) -> bool:
    """Whether a bar should be shown.

    Args:
        progress: ``True``, ``False`` or ``"auto"``.
        work: Estimated floating-point operations of the computation (used by ``"auto"``).

    Raises:
        ValueError: ``progress`` is not one of the three settings.
    """
    if progress not in (True, False, "auto"):
        raise ArgumentError(f"progress must be True, False or 'auto', got {progress!r}")
    env = os.environ.get("GRADSCOPE_PROGRESS", "").strip().lower()
    if env in _OFF or progress is False:
        return False
    if progress is True or env in _ON:
        return True
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(work >= AUTO_WORK and isatty is not None and isatty())


@contextmanager
def progress_bar(
    total: int, desc: str, progress: bool | str = "auto", work: float = float("inf")
) -> Iterator[Any]:
    """A ``tqdm`` bar over ``total`` units, or a do-nothing bar when progress is off.

    Args:
        total: Number of units (e.g. timesteps).
        desc: Label shown before the bar.
        progress: ``True``, ``False`` or ``"auto"`` (see the module docstring).
        work: Estimated floating-point operations, for ``"auto"``.

    Yields:
        An object with ``update(n)`` and ``set_postfix_str(s)``.
    """
    if not enabled(progress, work):
        yield _NoBar()
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", leave=False, file=sys.stderr)
    try:
        yield bar
    finally:
        bar.close()


def _openblas() -> list[tuple[Any, Any]]:
    """``(set, get)`` num-threads functions of every OpenBLAS loaded in this process."""
    out: list[tuple[Any, Any]] = []
    try:
        with open("/proc/self/maps") as fh:  # Linux; elsewhere BLAS threads are left alone
            paths = sorted({ln.split()[-1] for ln in fh if "openblas" in ln.lower()})
    except OSError:
        return out
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for stem in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                setter = getattr(lib, f"{stem}_set_num_threads{suffix}", None)
                getter = getattr(lib, f"{stem}_get_num_threads{suffix}", None)
                if setter is not None and getter is not None:
                    out.append((setter, getter))
                    break
            else:
                continue
            break
    return out


@contextmanager
def compute_threads(n: int | None = None) -> Iterator[None]:
    """Run the block with ``n`` threads in torch and OpenBLAS.

    The default (``n`` None and no ``GRADSCOPE_THREADS``) gives OpenBLAS one thread, which
    is fastest for the many small per-sequence LAPACK calls of the dense paths, and leaves
    torch's thread count as the user set it: the operator paths are large GEMMs over all
    sequences at once, which use every core. The previous settings are restored on exit,
    also on error.

    Args:
        n: Thread count for both; None reads ``GRADSCOPE_THREADS`` (see above if unset).
    """
    old_torch = torch.get_num_threads()
    if n is None:
        try:
            n = max(0, int(os.environ.get("GRADSCOPE_THREADS", "0")))
        except ValueError:
            n = 0
    torch_n = n if n else old_torch
    n = n or 1
    blas = []
    try:
        for setter, getter in _openblas():
            blas.append((setter, int(getter())))
            setter(ctypes.c_int(n))
    except Exception:
        pass
    if old_torch != torch_n:
        torch.set_num_threads(torch_n)
    try:
        yield
    finally:
        if torch.get_num_threads() != old_torch:
            torch.set_num_threads(old_torch)
        for setter, old in blas:
            with contextlib.suppress(Exception):
                setter(ctypes.c_int(old))


F = TypeVar("F", bound=Callable[..., Any])


def as_float64(layer: LayerTrace) -> LayerTrace:
    """The layer in float64 when its Jacobians come from a closed-form adapter.

    Computing the Jacobians in float64 from the (small) recorded states is cheaper than
    casting each chunk of ``D × D`` float32 Jacobians, and more accurate. Layers with stored
    Jacobians or ``torch.func`` adapters (whose module has its own dtype) are left as they
    are; their chunks are cast one at a time.
    """
    if layer.dtype == torch.float64 or layer.stored_jacobians is not None:
        return layer
    if layer.adapter is not None and not layer.adapter.closed_form:
        return layer
    if layer.adapter is None and layer.kind.startswith("custom:"):
        return layer
    out = layer.to(dtype=torch.float64)
    out.meta = {**out.meta, "recorded_dtype": str(layer.dtype).removeprefix("torch.")}
    return out


def analysis(fn: F) -> F:
    """Run an analysis entry point in float64 with single-threaded BLAS (see _progress)."""

    @functools.wraps(fn)
    def wrapper(layer: LayerTrace, *args: Any, **kwargs: Any) -> Any:
        with compute_threads():
            return fn(as_float64(layer), *args, **kwargs)

    return wrapper  # type: ignore[return-value]


__all__ = ["AUTO_WORK", "analysis", "as_float64", "compute_threads", "enabled", "progress_bar"]
