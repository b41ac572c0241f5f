"""The entries a report compares: one per analysed layer, each analysis shown once.

An entry is one layer of one run, under the label the comparison figures and tables use (the
run's name, or ``run · layer`` when a run has several layers). A comparison's first screen
(the headline, the tables, the decay comparison, the mechanism picture) and its shared
figures show every entry once. One kind of entry would repeat another: a Monitor run (a
training history *and* the analysis of its latest sampled step) compared with other runs of
the same model, as in ``{"LSTM · init": p0, "LSTM · trained": p1, "LSTM · training":
monitor}``. Its training views are its own, but its latest step is the trained model again;
it is left out of the comparison (:func:`repeats`), with a line saying so, and its section
keeps its whole analysis. Runs are of the same model when their names agree up to the first
`` · `` (:data:`~gradscope.reporting.figures.comparison.SEPARATOR`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gradscope.reporting.figures.comparison import SEPARATOR
from gradscope.reporting.inputs.run import Run


@dataclass
class Entry:
    """One analysed layer of one run.

    Attributes:
        label: Its name in the comparison (unique in the report).
        run: The run it belongs to.
        layer: Its :class:`~gradscope.analysis.results.LayerDiagnosis`.
        anchor: The id of its section in the page.
    """

    label: str
    run: Run
    layer: Any
    anchor: str


def model_of(run: Run) -> str | None:
    """The model a run is of: its name up to the first `` · `` (None: an unnamed run)."""
    return None if run.label is None else run.label.partition(SEPARATOR)[0]


def _monitored(run: Run) -> bool:
    """A Monitor's run: a training history with the analysis of its latest sampled step."""
    return run.history is not None and run.diagnosis is not None


def repeats(entries: Sequence[Entry]) -> dict[str, list[str]]:
    """The entries a comparison leaves out because another run of their model is in it.

    Args:
        entries: Every entry of the report, in display order.

    Returns:
        ``{anchor: labels of the other entries of its model}`` for each entry of a Monitor
        run whose model also has an entry of a run without a history (a Profile or a
        Diagnosis); those other entries stay in the comparison.
    """
    out: dict[str, list[str]] = {}
    for e in entries:
        if not _monitored(e.run) or model_of(e.run) is None:
            continue
        others = [
            o.label
            for o in entries
            if o.run is not e.run and o.run.history is None and model_of(o.run) == model_of(e.run)
        ]
        if others:
            out[e.anchor] = others
    return out


def left_out_note(entries: Sequence[Entry], left: dict[str, list[str]]) -> str | None:
    """The line that says which entries the comparison shows once, and where they are."""
    names = [e.label for e in entries if e.anchor in left]
    if not names:
        return None
    if len(names) == 1:
        (name,) = names
        (e,) = [e for e in entries if e.anchor in left]
        return (
            f"Shown once: {name} (a Monitor's latest sampled step, beside "
            f"{' and '.join(left[e.anchor])}) is left out of the comparison; its section "
            "below holds its analysis and the training history."
        )
    listed = ", ".join(names[:-1]) + " and " + names[-1]
    return (
        f"Shown once: {listed} (each a Monitor's latest sampled step, beside the other "
        "entries of its model) are left out of the comparison; their sections below hold "
        "their analysis and the training history."
    )


__all__ = ["Entry", "left_out_note", "model_of", "repeats"]
