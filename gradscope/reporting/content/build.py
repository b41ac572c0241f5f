"""Records in, a :class:`~.document.Document` out (:func:`build_document`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gradscope.reporting import figures as F
from gradscope.reporting.content.document import (
    Document,
    Ids,
    LayerSection,
    Missing,
    Number,
    Panel,
    PanelSpec,
    RunSection,
    SummaryRow,
)
from gradscope.reporting.content.entries import Entry, left_out_note, repeats
from gradscope.reporting.content.gate_panels import GATE_PANELS, gate_note
from gradscope.reporting.content.headline import sentence
from gradscope.reporting.content.numbers import layer_numbers, nonfinite_text
from gradscope.reporting.content.panels import (
    COMPARISON_PANEL,
    LAYER_PANELS,
    TRAINING_PANELS,
    headline,
    history_names,
    make_panel,
    slug,
)
from gradscope.reporting.content.shared import SHARED_KEYS, mechanism_panel, shared_panels
from gradscope.reporting.content.tables import comparison_table, summary_row
from gradscope.reporting.inputs.run import Run

#: The ids the page itself uses (:mod:`gradscope.reporting.writers.html`); runs start with ``run``.
PAGE_IDS = ("top", "summary", "comparison", "mechanism", "shared", "metadata")


# --------------------------------------------------------------------------- document
def _unique(label: str, used: set[str]) -> str:
    """``label``, or ``label (2)``, ``label (3)``, ... the first not in ``used`` (now added)."""
    out, n = label, 2
    while out in used:
        out, n = f"{label} ({n})", n + 1
    used.add(out)
    return out


def _flatten_meta(meta: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for k, v in meta.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v and len(v) <= 30:
            out.extend(_flatten_meta(v, key + "."))
        elif isinstance(v, (list, tuple)) and len(v) > 20:
            out.append((key, f"{len(v)} items: {', '.join(map(str, v[:8]))}, ..."))
        else:
            out.append((key, str(v)))
    return out


def _layer_section(run: Run, layer: Any, anchor: str, shared: bool) -> LayerSection:
    """One layer's section; with ``shared``, the figures drawn once for all layers are left out.

    The gate carry is always left out: it is part of the mechanism picture on the first screen.
    ``anchor`` is the section's id, unique in the page.
    """
    name = str(layer.name)
    specs = [*LAYER_PANELS[:1], *GATE_PANELS, *LAYER_PANELS[1:]]  # the why after the what
    specs = [s for s in specs if s.key != "gate-carry" and not (shared and s.key in SHARED_KEYS)]
    return LayerSection(
        run=run.label,
        name=name,
        anchor=anchor,
        kind=str(layer.kind),
        regime=getattr(layer, "regime", None),
        verdict=str(getattr(layer, "verdict", "") or ""),
        advice=[str(a) for a in getattr(layer, "advice", []) or []],
        numbers=layer_numbers(layer),
        notes=[str(n) for n in getattr(layer, "notes", []) or []],
        nonfinite=nonfinite_text(layer),
        panels=[make_panel(spec, layer) for spec in specs if spec.applies(layer)],
        gate_note=gate_note(layer),
    )


def _training(run: Run) -> tuple[list[tuple[str, list[Panel]]], str | None]:
    if run.history is None:
        return [], (
            "Training history: not available. A gs.Monitor(model) attached to the training "
            "loop records the loss gradient and the decay rate over training steps."
        )
    names = history_names(run.history)
    if not names:
        return [], "Training history: the history names no layer (nothing was sampled yet)."
    return [
        (name, [make_panel(spec, (run.history, name)) for spec in TRAINING_PANELS])
        for name in names
    ], None


def _curve(layer: Any, look: tuple[str, tuple[float, ...]]) -> F.Curve | None:
    d = (getattr(layer, "decay", None) or {}).get("state")
    if d is None:
        return None
    return F.Curve(d.lags, d.median, d.band, float(d.rate), d.regime, *look)


def _entries(runs: Sequence[Run], ids: Ids) -> tuple[list[Entry], list[str]]:
    """Every analysed layer as an entry (unique labels, unique anchors); the runs' anchors."""
    entries: list[Entry] = []
    anchors: list[str] = []
    labels: set[str] = set()
    for run in runs:
        anchor = ids.take(slug(f"run-{run.label}") if run.label is not None else "run")
        ids.take(f"{anchor}--training")  # the run's training section (writers.sections)
        anchors.append(anchor)
        layers = [] if run.diagnosis is None else list(run.diagnosis.layers)
        for layer in layers:
            name = str(layer.name)
            label = name if run.label is None else f"{run.label} · {name}"
            if len(layers) == 1 and run.label is not None:
                label = run.label
            label = _unique(label, labels)  # the figures' legends are keyed by it
            entries.append(Entry(label, run, layer, ids.take(f"{anchor}--{slug(name)}")))
    return entries, anchors


def _run_section(run: Run, anchor: str, layers: list[LayerSection]) -> RunSection:
    training, training_missing = _training(run)
    problem = run.problem
    if run.diagnosis is None and problem is None:
        problem = "no diagnosis"
    meta_rows = _flatten_meta(run.meta)
    for lname, lm in run.layer_meta.items():
        meta_rows.extend((f"layer {lname}: {k}", str(v)) for k, v in lm.items())
    return RunSection(
        label=run.label,
        anchor=anchor,
        source=run.source,
        layers=layers,
        training=training,
        training_missing=training_missing,
        problem=problem if run.diagnosis is None else None,
        meta=meta_rows,
    )


def build_document(
    runs: Sequence[Run], title: str, generated: str, meta: Mapping[str, Any]
) -> Document:
    """Turn normalised runs into the report's content.

    Every analysed layer is an entry (:mod:`.entries`); the first screen (headline, tables,
    the decay comparison, the mechanism) and the shared figures show each analysis once
    (:func:`~.entries.repeats`), every entry in the same colour and dash
    (:func:`~gradscope.reporting.figures.comparison.entry_styles`).

    Args:
        runs: One run (single report) or several (comparison), in display order.
        title: Report title.
        generated: Time stamp of the report.
        meta: Report-wide metadata (versions, platform).

    Returns:
        The :class:`Document` the renderers lay out.
    """
    # names that slug alike (``x-y``, ``x y``) or repeat still get ids of their own
    entries, anchors = _entries(runs, Ids(PAGE_IDS))
    left = repeats(entries)
    shown = [e for e in entries if e.anchor not in left]
    several = len(shown) > 1
    looks = F.entry_styles([e.label for e in shown]) if several else {}
    sections: dict[str, LayerSection] = {}
    alerts: list[str] = []
    for e in entries:
        # the figures every compared entry has are drawn once for all, not in each section
        sec = _layer_section(e.run, e.layer, e.anchor, shared=several and e.anchor not in left)
        sections[e.anchor] = sec
        if sec.nonfinite:
            who = f"{e.run.label} / {sec.name}" if e.run.label else sec.name
            alerts.append(f"{who}: {sec.nonfinite}")
    summary = []
    for e in shown:
        row = summary_row(sections[e.anchor], e.layer)
        row.color, row.dash = looks.get(e.label, (None, None))
        summary.append(row)
    runs_out = [
        _run_section(run, anchor, [sections[e.anchor] for e in entries if e.run is run])
        for run, anchor in zip(runs, anchors)
    ]
    comparison = None
    table: list[list[str]] = []
    if len(runs) > 1 or len(entries) > 1:
        curves = {
            e.label: c
            for e in shown
            if (c := _curve(e.layer, looks.get(e.label, (None, None)))) is not None
        }
        if len(curves) >= 2:
            comparison = Panel(COMPARISON_PANEL, dict(curves=curves), None)
        else:
            why = f"only {len(curves)} of the {len(shown)} layers has a state decay curve"
            comparison = Panel(COMPARISON_PANEL, None, why)
        table = comparison_table(summary, shown)
    common: list[tuple[str, str]] = []
    if len(runs_out) > 1:
        # rows every run shares (versions, settings) are shown once, not once per run
        same = set(runs_out[0].meta).intersection(*(set(r.meta) for r in runs_out[1:]))
        common = [row for row in runs_out[0].meta if row in same]
        for sec in runs_out:
            sec.meta = [row for row in sec.meta if row not in same]
    pairs = [(e.label, e.layer) for e in shown]
    return Document(
        title=title,
        generated=generated,
        runs=runs_out,
        common_meta=common,
        summary=summary,
        alerts=alerts,
        comparison=comparison,
        comparison_table=table,
        meta=_flatten_meta(meta),
        mechanism=mechanism_panel(pairs),
        shared=shared_panels(pairs, looks) if several else [],
        headline=sentence(pairs),
        shown_once=left_out_note(entries, left),
    )


__all__ = [
    "COMPARISON_PANEL",
    "LAYER_PANELS",
    "TRAINING_PANELS",
    "Document",
    "LayerSection",
    "Missing",
    "Number",
    "Panel",
    "PanelSpec",
    "Run",
    "RunSection",
    "SummaryRow",
    "build_document",
    "headline",
    "history_names",
    "layer_numbers",
    "make_panel",
    "nonfinite_text",
    "slug",
]
