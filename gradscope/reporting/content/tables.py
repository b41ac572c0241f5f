"""The first screen's tables: a row of numbers per compared entry, and the comparison table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gradscope.reporting import figures as F
from gradscope.reporting.content.document import LayerSection, SummaryRow
from gradscope.reporting.content.entries import Entry
from gradscope.reporting.content.panels import fmt, headline
from gradscope.reporting.inputs.run import Run


def summary_row(section: LayerSection, layer: Any) -> SummaryRow:
    """The verdict table's row of one layer (its section's texts, its diagnosis's numbers)."""
    d = (getattr(layer, "decay", None) or {}).get("state")
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


def comparison_table(rows: Sequence[SummaryRow], entries: Sequence[Entry]) -> list[list[str]]:
    """The comparison table: a header, then one row per summary row (in the same order).

    Args:
        rows: The summary rows of the compared entries.
        entries: Those entries (found by their anchors).

    Returns:
        ``[header, *rows]``, each a list of cell texts.
    """
    by_anchor = {e.anchor: e for e in entries}
    learned = any(isinstance(e.run.meta.get("outcome"), dict) for e in entries)
    table = [
        ["model / layer", "regime", "rate per step", "half-life (steps)", "horizon / T"]
        + (["learned? (test MSE ÷ baseline)"] if learned else [])
        + ["λ₁", "‖J‖₂"]
    ]
    for row in rows:
        who = row.run if row.run is not None else row.layer
        if row.run is not None and sum(r.run == row.run for r in rows) > 1:
            who = f"{row.run} · {row.layer}"
        e = by_anchor[row.anchor]
        d = (getattr(e.layer, "decay", None) or {}).get("state")
        table.append(
            [who, F.regime_label(row.regime), row.rate, row.half_life, _horizon_vs_t(e.layer, d)]
            + ([_outcome(e.run)] if learned else [])
            + [row.lyap, row.norm]
        )
    return table


__all__ = ["comparison_table", "summary_row"]
