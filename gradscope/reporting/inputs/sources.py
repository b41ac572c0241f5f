"""What a report is made of: any supported object turned into :class:`Run` s.

:func:`runs_of` accepts a :class:`~gradscope.Profile`, a :class:`~gradscope.Diagnosis`, a
recorded :class:`~gradscope.Trace`, a :class:`~gradscope.Monitor` or its
:class:`~gradscope.History`, a path to a saved trace, profile or history, or a mapping
``{label: any of these}`` for a comparison, and normalises it to a list of runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gradscope.errors import GradscopeError
from gradscope.reporting.inputs.run import Run


def _shape(t: Any) -> str:
    return "×".join(str(int(s)) for s in getattr(t, "shape", ()))


def _trace_meta(trace: Any) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Run-level and per-layer metadata of a recorded trace."""
    meta = dict(getattr(trace, "meta", {}) or {})
    per_layer: dict[str, dict[str, Any]] = {}
    for layer in getattr(trace, "layers", []):
        lengths = getattr(layer, "lengths", None)
        lens = (
            f"all {layer.T}"
            if lengths is None
            else f"{int(min(lengths))}–{int(max(lengths))} (padded to {layer.T})"
        )
        params = ", ".join(f"{k} {_shape(v)}" for k, v in sorted(layer.params.items()))
        per_layer[str(layer.name)] = {
            "kind": layer.kind,
            "states (T+1×B×D)": _shape(layer.states),
            "inputs (T×B×I)": _shape(layer.inputs),
            "state parts": " + ".join(
                f"{n} ({s})" for n, s in zip(layer.state_names, layer.state_sizes)
            ),
            "dtype": str(layer.dtype).replace("torch.", ""),
            "sequence lengths": lens,
            "loss gradients": "recorded" if getattr(layer, "grads", None) is not None else "no",
            "parameters": params,
        }
    return meta, per_layer


def _from_profile(label: str | None, obj: Any, progress: bool | str = False) -> Run:
    meta, per_layer = _trace_meta(obj.trace)
    meta.update(dict(getattr(obj.diagnosis, "meta", {}) or {}))
    if getattr(obj, "loss", None) is not None:
        meta["loss"] = obj.loss
    return Run(label, "Profile", obj.diagnosis, None, meta, per_layer)


def _from_diagnosis(label: str | None, obj: Any, progress: bool | str = False) -> Run:
    return Run(label, "Diagnosis", obj, None, dict(getattr(obj, "meta", {}) or {}))


def _from_path(label: str | None, obj: Any, progress: bool | str = False) -> Run:
    from gradscope.analysis.diagnosis import diagnose
    from gradscope.errors import TraceFormatError
    from gradscope.traces import load

    path = Path(obj)
    if _format_of(path) == "gradscope.history":  # its own loader says what is wrong with it
        from gradscope.history import load_history

        run = _from_history(label, load_history(path))
        run.source = f"training history file {path.name}"
        return run
    try:
        trace = load(path)
    except TraceFormatError as exc:
        history = _load_history(path)
        if history is None:
            raise exc from None
        run = _from_history(label, history)
        run.source = f"training history file {path.name}"
        return run
    run = _from_profile(label, _Loaded(trace, diagnose(trace, progress=progress)))
    run.source = f"trace file {path.name}"
    run.meta["trace file"] = path.name
    run.environment["trace file"] = str(path.resolve())  # shown with environment=True only
    return run


def _format_of(path: Path) -> Any:
    """The ``format`` a gradscope ``.npz`` declares (None when it cannot be read)."""
    from gradscope._npz import NpzArchive
    from gradscope.errors import TraceFormatError

    try:
        with NpzArchive(path, "a gradscope file", "gradscope") as npz:
            return npz.meta.get("format")
    except TraceFormatError:
        return None


def _load_history(path: Path) -> Any | None:
    """A Monitor history saved at ``path``, or None if the file is not one."""
    try:
        from gradscope.history import load_history
    except ImportError:
        return None
    from gradscope.errors import TraceFormatError

    try:
        return load_history(path)
    except TraceFormatError:
        return None


class _Loaded:
    """A (trace, diagnosis) pair with the attributes of a Profile."""

    def __init__(self, trace: Any, diagnosis: Any) -> None:
        self.trace = trace
        self.diagnosis = diagnosis
        self.loss = None


def _latest(obj: Any) -> Any:
    for attr in ("diagnosis", "latest"):
        if hasattr(obj, attr):
            value = getattr(obj, attr)
            return value() if callable(value) else value
    return None


def _from_monitor(label: str | None, obj: Any, progress: bool | str = False) -> Run:
    latest = _latest(obj)
    if latest is not None and hasattr(latest, "trace") and hasattr(latest, "diagnosis"):
        run = _from_profile(label, latest)
    elif latest is not None:
        run = _from_diagnosis(label, latest)
    else:
        run = Run(
            label,
            "",
            None,
            problem="the Monitor has not analysed a training step yet (call monitor.step() "
            "after loss.backward(); the first sampled step is analysed)",
        )
    step = getattr(latest, "step", None)
    at = f" {step}" if step is not None else ""
    run.source = (
        f"{type(obj).__name__} (training history + analysis of the latest sampled step{at})"
    )
    run.history = obj.history
    hmeta = getattr(obj.history, "meta", None)
    if isinstance(hmeta, Mapping):
        run.meta.update({f"history.{k}": v for k, v in hmeta.items()})
    return run


def _from_history(label: str | None, obj: Any, progress: bool | str = False) -> Run:
    hmeta = getattr(obj, "meta", None)
    return Run(
        label,
        f"{type(obj).__name__} (training history only)",
        None,
        obj,
        dict(hmeta) if isinstance(hmeta, Mapping) else {},
        problem="a training history holds per-step summaries only; report the Monitor itself "
        "(or a Profile of the trained model) for the full per-layer analysis",
    )


def _is_profile(obj: Any) -> bool:
    return hasattr(obj, "trace") and hasattr(obj, "diagnosis") and not hasattr(obj, "history")


def _is_diagnosis(obj: Any) -> bool:
    from gradscope.analysis.diagnosis import Diagnosis

    return isinstance(obj, Diagnosis)


def _is_trace(obj: Any) -> bool:
    from gradscope.traces import Trace

    return isinstance(obj, Trace)


def _from_trace(label: str | None, obj: Any, progress: bool | str = False) -> Run:
    from gradscope.analysis.diagnosis import diagnose

    run = _from_profile(label, _Loaded(obj, diagnose(obj, progress=progress)))
    run.source = "Trace"
    return run


#: How each kind of input becomes a Run, tried in order (first match wins).
_SOURCES: list[tuple[Callable[[Any], bool], Callable[[str | None, Any, bool | str], Run]]] = [
    (lambda o: isinstance(o, (str, os.PathLike)), _from_path),
    (_is_trace, _from_trace),
    (_is_diagnosis, _from_diagnosis),
    (_is_profile, _from_profile),
    (lambda o: hasattr(o, "history"), _from_monitor),
    (lambda o: hasattr(o, "grad_norms") and hasattr(o, "steps"), _from_history),
]


def _run(label: str | None, obj: Any, progress: bool | str = False) -> Run:
    for test, convert in _SOURCES:
        if test(obj):
            return convert(label, obj, progress)
    where = f" (entry {label!r})" if label is not None else ""
    raise GradscopeError(
        f"gs.report cannot report a {type(obj).__name__}{where}: pass a Diagnosis, a Profile, "
        "a Trace, a Monitor (or its history), the path of a saved trace (.npz), or a "
        "{name: one of these} mapping for a comparison"
    )


def runs_of(obj: Any, progress: bool | str = False) -> list[Run]:
    """Normalise what :func:`report` accepts into a list of :class:`Run` (a mapping: several).

    Args:
        obj: What :func:`report` accepts.
        progress: Progress of the analysis of saved traces: True, False or ``"auto"``.

    Returns:
        The runs, in order; a mapping's keys are their labels (``str(key)``; an empty or
        blank one reads ``(unnamed)``).
    """
    if isinstance(obj, Mapping):
        if not obj:
            raise GradscopeError("gs.report got an empty mapping: nothing to compare")
        out = []
        for name, value in obj.items():
            if isinstance(value, Mapping):
                raise GradscopeError(
                    f"gs.report: entry {name!r} is itself a mapping; a comparison takes "
                    "{name: Diagnosis | Profile | Monitor | trace path}"
                )
            label = str(name) if str(name).strip() else "(unnamed)"  # a link needs a text
            out.append(_run(label, value, progress))
        return out
    return [_run(None, obj, progress)]
