"""The public ways to record: :func:`record` (a context manager) and :func:`trace` (one call).

Both make a :class:`~gradscope.recording.recorder.Recorder`, which owns the hooks; see
:mod:`gradscope.recording` for what is recorded and how.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from gradscope.errors import GradscopeError
from gradscope.recording.recorder import Recorder
from gradscope.traces import Trace


def record(
    model: nn.Module,
    cells: Iterable[nn.Module] | nn.Module | None = None,
    *,
    grads: bool = False,
    check: bool = True,
) -> Recorder:
    """Record the recurrent modules of ``model`` during a ``with`` block.

    Example::

        with gs.record(model, cells=[model.cell], grads=True) as rec:
            loss = criterion(model(x), y)
        loss.backward()
        rec.trace["cell"].grads        # (T+1, B, D) ∂L/∂s_t

    Args:
        model: The model; every submodule with a registered cell adapter is recorded.
        cells: Extra modules of ``model`` to record call by call (``forward(x_t, state) ->
            state``, state a Tensor or tuple of Tensors); unregistered types use
            :class:`~gradscope.cells.generic.GenericAdapter`.
        grads: Capture exact loss gradients ``∂L/∂s_t`` from the next backward pass(es).
        check: Raise :class:`~gradscope.errors.ReplayMismatchError` if a replay does not
            reproduce its module's outputs (float64: 1e-12, float32: 1e-5 relative, per step;
            in a chaotic network amplified along the trajectory, see the module docstring).

    Returns:
        A :class:`Recorder`; its :attr:`~Recorder.trace` is ready after the block.

    Raises:
        GradscopeError: A module in ``cells`` is not part of ``model``.
        NoRecurrentModuleError: (on exit) no recorded module ran.
        ReplayMismatchError: (on exit) a replay did not match.
        CellConventionError: A cell's call does not follow ``forward(x_t, state) -> state``.

    Warns:
        ChaoticReplayWarning: (on exit) a fused module's replay was accepted as a shadow
            trajectory of chaotic dynamics (see the module docstring).
    """
    return Recorder(model, cells, grads=grads, check=check)


def trace(
    model: nn.Module,
    *args: Any,
    cells: Iterable[nn.Module] | nn.Module | None = None,
    grads: bool = False,
    check: bool = True,
    **kwargs: Any,
) -> Trace:
    """Run ``model(*args, **kwargs)`` under :func:`record` and return the :class:`Trace`.

    Args:
        model: The model.
        *args: Positional arguments of the forward.
        cells: As in :func:`record`.
        grads: Must be False: ``trace`` runs no backward pass, so it cannot see loss
            gradients; use ``record(model, grads=True)`` around a forward and backward.
        check: As in :func:`record`.
        **kwargs: Keyword arguments of the forward.

    Returns:
        The recorded trace.

    Raises:
        GradscopeError: ``grads=True`` (see above), or any error of :func:`record`.
    """
    if grads:
        raise GradscopeError(
            "gs.trace() runs only the forward pass, so it cannot capture loss gradients. Use "
            "`with gs.record(model, grads=True) as rec: loss = loss_fn(model(x))`, then "
            "`loss.backward()`; rec.trace then holds LayerTrace.grads."
        )
    with record(model, cells, grads=False, check=check) as rec:
        model(*args, **kwargs)
    return rec.trace


__all__ = ["record", "trace"]
