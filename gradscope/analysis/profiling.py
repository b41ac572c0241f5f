"""Record a model and diagnose it in one call: :func:`profile` and its :class:`Profile`."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradscope._views import render
from gradscope.analysis.diagnosis import Diagnosis, diagnose
from gradscope.errors import GradscopeError, GradscopeWarning
from gradscope.traces import Trace


@dataclass
class Profile:
    """What :func:`profile` returns: the trace, its diagnosis and the model's output.

    Attributes:
        trace: The recording.
        diagnosis: Its diagnosis.
        output: What ``model(*args, **kwargs)`` returned.
        loss: The loss value (a float) when ``loss_fn`` was given, else None.
    """

    trace: Trace
    diagnosis: Diagnosis
    output: Any = None
    loss: float | None = None

    def report(self, path: str | Path, *, environment: bool = False) -> Path:
        """Write an HTML or PDF report (by suffix) with :func:`gradscope.reporting.report`.

        ``environment=True`` adds the platform string (see there); off by default.
        """
        return render("report", self, path, environment=environment)

    def __str__(self) -> str:
        return str(self.diagnosis)

    def _repr_html_(self) -> str:
        """In a notebook: the verdict table, as on the report's first screen."""
        return render("notebook_html", self)


def _leaf_tensors(obj: Any, out: list[torch.Tensor]) -> None:
    if isinstance(obj, torch.Tensor):
        if obj.requires_grad and obj.is_leaf:
            out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _leaf_tensors(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _leaf_tensors(v, out)


def profile(
    model: nn.Module,
    *args: Any,
    loss_fn: Callable[[Any], torch.Tensor] | None = None,
    cells: Iterable[nn.Module] | nn.Module | None = None,
    check: bool = True,
    analysis: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Profile:
    """Record ``model(*args, **kwargs)`` and diagnose it in one call.

    Without ``loss_fn`` only the forward runs. With ``loss_fn``, the forward runs under
    :func:`gradscope.recording.record` with ``grads=True``, then ``loss = loss_fn(output)`` and
    ``loss.backward()`` so the exact loss gradients ``∂L/∂s_t`` join the diagnosis (a
    ``"loss"`` decay per layer). Profiling leaves no trace on the model: the ``.grad`` of
    every parameter (and of every leaf tensor argument that requires grad) is restored
    exactly afterwards, the same tensor object holding the same values, or None.

    Args:
        model: The model.
        *args: Positional arguments of its forward.
        loss_fn: ``output -> scalar loss`` (e.g. ``lambda out: crit(out[0], y)``), optional.
        cells: Extra modules to record call by call (see :func:`gradscope.recording.record`).
        check: Check that replays reproduce the modules' outputs.
        analysis: Keyword arguments for :func:`diagnose` (``k``, ``max_lag``, ``progress``...).
        **kwargs: Keyword arguments of the model's forward.

    Returns:
        A :class:`Profile` with ``trace``, ``diagnosis``, ``output`` and ``loss``.

    Raises:
        GradscopeError: ``loss_fn`` did not return a scalar tensor, or any recording error.
    """
    from gradscope.recording import record

    opts = {"progress": "auto", **(analysis or {})}
    if loss_fn is None:
        with record(model, cells, check=check) as rec:
            output = model(*args, **kwargs)
        tr = rec.trace
        return Profile(tr, diagnose(tr, **opts), output, None)

    leaves: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
    _leaf_tensors((args, kwargs), leaves)
    seen: set[int] = set()
    leaves = [t for t in leaves if not (id(t) in seen or seen.add(id(t)))]
    saved = [(t, t.grad, None if t.grad is None else t.grad.detach().clone()) for t in leaves]
    try:
        with torch.enable_grad():
            with record(model, cells, grads=True, check=check) as rec:
                output = model(*args, **kwargs)
            loss = loss_fn(output)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise GradscopeError(
                    "profile(loss_fn=...): loss_fn must return a scalar tensor, got "
                    f"{type(loss).__name__}"
                    + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else "")
                )
            if loss.requires_grad:
                loss.backward()
        tr = rec.trace
    finally:
        with torch.no_grad():
            for t, obj, values in saved:
                if obj is None:
                    t.grad = None
                else:
                    obj.copy_(values)
                    t.grad = obj
    diagnosis = diagnose(tr, **opts)
    _note_unreached(diagnosis, tr, loss)
    return Profile(tr, diagnosis, output, float(loss.detach()))


def _note_unreached(diagnosis: Diagnosis, tr: Trace, loss: torch.Tensor) -> None:
    """Say, with a warning and a note per layer, where ``loss_fn``'s loss reached no layer.

    A loss computed under ``torch.no_grad()`` / ``torch.inference_mode()`` (or detached)
    has no graph to back-propagate; one that does not depend on a layer's outputs sends it
    no gradient. Either way the layer gets no ``"loss"`` decay, which without a word would
    look like a loss that was never asked for.
    """
    if not loss.requires_grad:
        why = (
            "loss_fn returned a loss that does not require grad (computed under "
            "torch.no_grad() or torch.inference_mode(), or detached), so nothing was "
            "back-propagated"
        )
    else:
        why = "loss_fn's loss does not depend on this layer's outputs (no gradient reached them)"
    missed = [layer.name for layer in tr.layers if layer.grads is None]
    if not missed:
        return
    for d in diagnosis.layers:
        if d.name in missed:
            d.notes.append(f"no loss gradients: {why}; the 'loss' decay is left out")
    warnings.warn(
        f"profile(loss_fn=...): no loss gradient reached {', '.join(missed)}: {why}. Return "
        "a loss computed from the model's output with gradients enabled.",
        GradscopeWarning,
        stacklevel=3,
    )


__all__ = ["Profile", "profile"]
