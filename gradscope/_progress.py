"""Run-time controls of long analyses: a progress bar that can be turned off, and threads.

Every long function of the analysis layer takes ``progress=`` with three settings:

* ``True``: always show progress (on stderr);
* ``False``: never;
* ``"auto"`` (default): show it only when the computation is long (its estimated work, in
  floating-point operations, is above :data:`AUTO_WORK`) *and* stderr is a terminal.

On a terminal progress is a ``tqdm`` bar. Anywhere else (a log file, a CI job, a pipe) a bar
would write a line per refresh, so progress is a plain line at most every
:data:`LINE_EVERY` seconds (``decay lstm.l0: 120/200 steps, 12 s``) and one closing line
when any was written: a computation shorter than that writes nothing.

The environment variable ``GRADSCOPE_PROGRESS=0`` (or ``false``/``no``/``off``) turns every bar
off, whatever the argument says; ``GRADSCOPE_PROGRESS=1`` turns ``"auto"`` bars on.

**Threads.** The analyses are long sequences of small and medium linear-algebra calls (a
``512 × 512`` Jacobian times a ``512 × 16`` basis, a thin QR...). Multi-threaded BLAS gains
little on such sizes and loses badly when the cores are shared: spinning worker threads on
an oversubscribed machine made one such product 40× slower than single-threaded in our
measurements (``benchmarks/analysis.py``). :func:`compute_threads` therefore runs the
analyses with one thread in the BLAS libraries NumPy/SciPy loaded (through
``threadpoolctl``), and restores the previous settings afterwards. ``GRADSCOPE_THREADS=n``
chooses another count.
"""

from __future__ import annotations

import functools
import os
import sys
import time
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

#: Seconds between the plain progress lines written when stderr is not a terminal.
LINE_EVERY = 10.0

_OFF = {"0", "false", "no", "off"}
_ON = {"1", "true", "yes", "on"}


class _NoBar:
    """The do-nothing bar used when progress is off."""

    def update(self, n: int = 1) -> None:
        """Ignore progress."""

    def set_postfix_str(self, s: str) -> None:
        """Ignore the status text."""


class _LineBar:
    """Progress as occasional plain lines, for a stderr that is not a terminal."""

    def __init__(self, total: int, desc: str, unit: str) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.n = 0
        self.start = self.last = time.monotonic()
        self.written = False
        self.postfix = ""

    def _write(self, text: str) -> None:
        print(f"{self.desc}: {text}", file=sys.stderr, flush=True)
        self.written = True

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units; write a line if :data:`LINE_EVERY` seconds have passed."""
        self.n += n
        now = time.monotonic()
        if now - self.last >= LINE_EVERY:
            self.last = now
            extra = f", {self.postfix}" if self.postfix else ""
            self._write(f"{self.n}/{self.total} {self.unit}s, {now - self.start:.0f} s{extra}")

    def set_postfix_str(self, s: str) -> None:
        """Keep a status text for the next line."""
        self.postfix = s

    def close(self) -> None:
        """Write the closing line, if any line was written."""
        if self.written:
            self._write(f"done, {self.n} {self.unit}s in {time.monotonic() - self.start:.0f} s")


def _isatty() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except ValueError:  # a closed stream
        return False


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
    return bool(work >= AUTO_WORK and _isatty())


@contextmanager
def progress_bar(
    total: int,
    desc: str,
    progress: bool | str = "auto",
    work: float = float("inf"),
    unit: str = "step",
) -> Iterator[Any]:
    """Progress over ``total`` units: a ``tqdm`` bar on a terminal, plain lines elsewhere.

    Args:
        total: Number of units (e.g. timesteps).
        desc: Label shown before the bar.
        progress: ``True``, ``False`` or ``"auto"`` (see the module docstring).
        work: Estimated floating-point operations, for ``"auto"``.
        unit: What one unit is (``"step"``, ``"figure"``, ...).

    Yields:
        An object with ``update(n)`` and ``set_postfix_str(s)``.
    """
    if not enabled(progress, work):
        yield _NoBar()
        return
    if not _isatty():
        line = _LineBar(total, desc, unit)
        yield line
        line.close()  # not reached on error: no "done" line for work that failed
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr)
    try:
        yield bar
    finally:
        bar.close()


@contextmanager
def compute_threads(n: int | None = None) -> Iterator[None]:
    """Run the block with ``n`` threads in torch and in every BLAS library loaded.

    The default (``n`` None and no ``GRADSCOPE_THREADS``) gives the BLAS libraries one
    thread, which is fastest for the many small per-sequence LAPACK calls of the dense
    paths, and leaves torch's thread count as the user set it: the operator paths are large
    GEMMs over all sequences at once, which use every core. The BLAS libraries are found and
    limited by ``threadpoolctl`` (OpenBLAS, MKL, BLIS, Accelerate... whichever NumPy, SciPy
    or torch loaded, on any platform); torch's own OpenMP pool is left to
    ``torch.set_num_threads``. The previous settings are restored on exit, also on error.

    Args:
        n: Thread count for both; None reads ``GRADSCOPE_THREADS`` (see above if unset).
    """
    from threadpoolctl import threadpool_limits

    old_torch = torch.get_num_threads()
    if n is None:
        try:
            n = max(0, int(os.environ.get("GRADSCOPE_THREADS", "0")))
        except ValueError:
            n = 0
    torch_n = n if n else old_torch
    with threadpool_limits(limits=n or 1, user_api="blas"):
        if old_torch != torch_n:
            torch.set_num_threads(torch_n)
        try:
            yield
        finally:
            if torch.get_num_threads() != old_torch:
                torch.set_num_threads(old_torch)


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
    if layer.lacks_module:
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


__all__ = [
    "AUTO_WORK",
    "LINE_EVERY",
    "analysis",
    "as_float64",
    "compute_threads",
    "enabled",
    "progress_bar",
]
