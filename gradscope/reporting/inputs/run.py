"""One record a report is made of: a :class:`Run` (a diagnosis and/or a training history)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Run:
    """One record to report on: a diagnosis and/or a training history.

    Attributes:
        label: Name in a comparison (None for a single-run report).
        source: What it came from, in words (``"Profile"``, ``"trace file run.npz"``, ...).
        diagnosis: A :class:`gradscope.analysis.diagnosis.Diagnosis`, or None (a history alone).
        history: A Monitor history (see :mod:`gradscope.reporting` for the protocol) or None.
        meta: Run metadata to show (model, shapes, dtype, versions, time, ...).
        layer_meta: Per layer name, facts about the recording (input size, dtype, lengths).
        problem: Why there is no diagnosis, when there is none.
        environment: Facts about the machine the record came from (the absolute path of
            a saved trace), added to ``meta`` only when a report is asked for them
            (``gs.report(..., environment=True)``).
    """

    label: str | None
    source: str
    diagnosis: Any | None = None
    history: Any | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    layer_meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    problem: str | None = None
    environment: dict[str, Any] = field(default_factory=dict)


__all__ = ["Run"]
