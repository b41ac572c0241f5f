"""Records in, a :class:`~.document.Document` out (:func:`build_document`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

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
from gradscope.reporting.content.gate_panels import GATE_PANELS, gate_note
from gradscope.reporting.content.numbers import layer_numbers, nonfinite_text
from gradscope.reporting.content.panels import (
    COMPARISON_PANEL,
    LAYER_PANELS,
    TRAINING_PANELS,
    fmt,
    headline,
    history_names,
    make_panel,
    slug,
)
from gradscope.reporting.content.shared import SHARED_KEYS, mechanism_panel, shared_panels
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


def _summary_row(section: LayerSection, layer: Any) -> SummaryRow:
    decays = getattr(layer, "decay", None) or {}
    d = decays.get("state")
    ly = getattr(layer, "lyapunov", None)
    eig = getattr(layer, "eig", None) or {}
    svd = getattr(layer, "svd", None) or {}
    nf = getattr(layer, "nonfinite", None) or {}
    count = int(nf.get("count", 0) or 0)
    return SummaryRow(
        run=section.run,
        layer=section.name,
        anchor=section.anchor,
        kind=section.kind,
        regime=section.regime,
        rate="n/a" if d is None else F.fmt_rate(d.rate),
        half_life="n/a" if d is None else fmt(d.half_life),
        horizon="n/a" if d is None else fmt(d.horizon),
        radius=fmt(eig.get("median")),
        norm=fmt(svd.get("median")),
        lyap="n/a" if ly is None or not np.size(ly.exponents) else F.fmt_rate(ly.exponents[0]),
        nonfinite=None if count == 0 else f"{count} (step {nf.get('first_step')})",
        verdict=headline(section.verdict),
        full_verdict=section.verdict,
        short=_short(layer, d),
    )


def _short(layer: Any, d: Any) -> str:
    """A few words for the verdict cell: the gate view's, else the regime and half-life."""
    view = getattr(layer, "gates", None)
    if view is not None:
        return view.short()
    if d is None:
        return "no state decay"
    return f"{F.regime_label(d.regime)}, half-life {fmt(d.half_life)} steps"


def _outcome(run: Run) -> str:
    """Test MSE ÷ baseline and whether that is at most one half (from ``meta["outcome"]``)."""
    out = run.meta.get("outcome")
    if not isinstance(out, dict) or "test_mse" not in out or "baseline_mse" not in out:
        return "n/a"
    ratio = float(out["test_mse"]) / float(out["baseline_mse"])
    return f"{'yes' if ratio <= 0.5 else 'no'} ({ratio:.2g})"


def _horizon_vs_t(layer: Any, d: Any) -> str:
    if d is None:
        return "n/a"
    t = getattr(layer, "T", None)
    return f"{fmt(d.horizon)} / {t}" if t else fmt(d.horizon)


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


def build_document(
    runs: Sequence[Run], title: str, generated: str, meta: Mapping[str, Any]
) -> Document:
    """Turn normalised runs into the report's content.

    Args:
        runs: One run (single report) or several (comparison), in display order.
        title: Report title.
        generated: Time stamp of the report.
        meta: Report-wide metadata (versions, platform).

    Returns:
        The :class:`Document` the renderers lay out.
    """
    sections: list[RunSection] = []
    summary: list[SummaryRow] = []
    alerts: list[str] = []
    curves: dict[str, F.Curve] = {}
    labels: set[str] = set()
    extra: dict[str, tuple[Run, Any]] = {}
    entries: list[tuple[str, Any]] = []
    n_layers = sum(len(r.diagnosis.layers) for r in runs if r.diagnosis is not None)
    # names that slug alike (``x-y``, ``x y``) or repeat still get ids of their own
    ids = Ids(PAGE_IDS)
    for run in runs:
        anchor = ids.take(slug(f"run-{run.label}") if run.label is not None else "run")
        ids.take(f"{anchor}--training")  # the run's training section (html_sections)
        layers = [] if run.diagnosis is None else list(run.diagnosis.layers)
        lsecs = []
        for layer in layers:
            lid = ids.take(f"{anchor}--{slug(str(layer.name))}")
            sec = _layer_section(run, layer, lid, shared=n_layers > 1)
            lsecs.append(sec)
            summary.append(_summary_row(sec, layer))
            extra[sec.anchor] = (run, layer)
            if sec.nonfinite:
                who = f"{run.label} / {sec.name}" if run.label else sec.name
                alerts.append(f"{who}: {sec.nonfinite}")
            label = sec.name if run.label is None else f"{run.label} · {sec.name}"
            if len(layers) == 1 and run.label is not None:
                label = run.label
            label = _unique(label, labels)  # the figures' legends are keyed by it
            entries.append((label, layer))
            d = (getattr(layer, "decay", None) or {}).get("state")
            if d is not None:
                curves[label] = F.Curve(d.lags, d.median, d.band, float(d.rate), d.regime)
        training, training_missing = _training(run)
        problem = run.problem
        if run.diagnosis is None and problem is None:
            problem = "no diagnosis"
        meta_rows = _flatten_meta(run.meta)
        for lname, lm in run.layer_meta.items():
            meta_rows.extend((f"layer {lname}: {k}", str(v)) for k, v in lm.items())
        sections.append(
            RunSection(
                label=run.label,
                anchor=anchor,
                source=run.source,
                layers=lsecs,
                training=training,
                training_missing=training_missing,
                problem=problem if run.diagnosis is None else None,
                meta=meta_rows,
            )
        )
    comparison = None
    table: list[list[str]] = []
    if len(runs) > 1 or n_layers > 1:
        if len(curves) >= 2:
            comparison = Panel(COMPARISON_PANEL, dict(curves=curves), None)
        else:
            comparison = Panel(
                COMPARISON_PANEL,
                None,
                f"only {len(curves)} of the {len(entries)} layers has a state decay curve",
            )
        learned = any(isinstance(r.meta.get("outcome"), dict) for r in runs)
        table = [
            ["model / layer", "regime", "rate per step", "half-life (steps)", "horizon / T"]
            + (["learned? (test MSE ÷ baseline)"] if learned else [])
            + ["λ₁", "‖J‖₂"]
        ]
        for row in summary:
            who = row.run if row.run is not None else row.layer
            if row.run is not None and sum(r.run == row.run for r in summary) > 1:
                who = f"{row.run} · {row.layer}"
            run, layer = extra[row.anchor]
            d = (getattr(layer, "decay", None) or {}).get("state")
            table.append(
                [who, F.regime_label(row.regime), row.rate, row.half_life, _horizon_vs_t(layer, d)]
                + ([_outcome(run)] if learned else [])
                + [row.lyap, row.norm]
            )
    common: list[tuple[str, str]] = []
    if len(sections) > 1:
        # rows every run shares (versions, settings) are shown once, not once per run
        shared = set(sections[0].meta).intersection(*(set(r.meta) for r in sections[1:]))
        common = [row for row in sections[0].meta if row in shared]
        for sec in sections:
            sec.meta = [row for row in sec.meta if row not in shared]
    return Document(
        title=title,
        generated=generated,
        runs=sections,
        common_meta=common,
        summary=summary,
        alerts=alerts,
        comparison=comparison,
        comparison_table=table,
        meta=_flatten_meta(meta),
        mechanism=mechanism_panel(entries),
        shared=shared_panels(entries) if n_layers > 1 else [],
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
