"""Lay a report :class:`~gradscope.reporting.document.Document` out as a multi-page PDF.

Same content as the HTML report, on A4 landscape pages written with matplotlib's
:class:`~matplotlib.backends.backend_pdf.PdfPages`. All text, on text pages and inside
figures, is real text in embedded TrueType fonts (``pdf.fonttype = 42``), so it can be
selected, searched and extracted (``pdftotext``).

Pages, in order:

1. summary: title, non-finite alerts, the verdict table, then every verdict in full (flows
   onto further pages if long);
2. comparison (several runs only): the side-by-side decay figure and its table;
3. per run and layer: a text page (verdict, advice, the numbers behind the verdict, notes),
   then the figures four to a page (2 × 2), each with its "how to read this" caption; a
   figure without data is listed on the text page with the reason and what it needs;
4. per run with a training history: its training figures, four to a page;
5. metadata.

The page layout (text flow, figure grid, footer) lives in :mod:`gradscope.reporting.pdf_layout`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib as mpl
from matplotlib.backends.backend_pdf import PdfPages

from gradscope.reporting import figures as F
from gradscope.reporting.document import Document, LayerSection, RunSection
from gradscope.reporting.pdf_layout import (
    GRID,
    MUTED,
    PAGE,
    WARN,
    Flow,
    caption,
    figure_pages,
)


def _summary(flow: Flow, doc: Document) -> None:
    several = len(doc.runs) > 1
    flow.new_page()
    flow.text(doc.title, size=17, weight="bold")
    flow.text(
        f"generated {doc.generated} by gradscope {dict(doc.meta).get('gradscope', '')}",
        size=8.5,
        color=MUTED,
    )
    flow.heading("Does the gradient survive?", size=13.5)
    for alert in doc.alerts:
        flow.text(f"⚠ {alert}", size=9.5, color=WARN, weight="bold")
        flow.space(0.04)
    if not doc.summary:
        why = (
            "this report holds training histories only: see the training pages"
            if any(r.training for r in doc.runs)
            else "see the pages that follow"
        )
        flow.text(f"No layer was analysed: {why}.", color=MUTED)
    else:
        head = (["model"] if several else []) + [
            "layer",
            "cell",
            "regime",
            "rate / step",
            "half-life",
            "horizon",
            "‖J‖₂ med.",
            "ρ(J) med.",
            "λ₁ / step",
            "non-finite",
        ]
        widths = ([0.14] if several else []) + [
            0.14,
            0.08,
            0.11,
            0.08,
            0.08,
            0.08,
            0.08,
            0.08,
            0.08,
            0.1,
        ]
        total = sum(widths)
        widths = [w / total for w in widths]
        rows = [head]
        colours: list[list[str | None]] = [[None] * len(head)]
        for r in doc.summary:
            row = ([r.run or ""] if several else []) + [
                r.layer,
                r.kind,
                F.regime_label(r.regime),
                r.rate,
                r.half_life,
                r.horizon,
                r.norm,
                r.radius,
                r.lyap,
                ("⚠ " + r.nonfinite) if r.nonfinite else "none",
            ]
            rows.append(row)
            c: list[str | None] = [None] * len(row)
            c[head.index("regime")] = F.REGIME_COLOURS.get(r.regime or "")
            if r.nonfinite:
                c[-1] = WARN
            colours.append(c)
        flow.table(rows, widths, size=8.5, colours=colours)
        flow.text(
            "rate: slope of ln‖∂s_T/∂s_{T−k}‖ per step back in time (−0.1: the gradient shrinks "
            "by e^−0.1 ≈ 0.90 each step); half-life: steps for it to halve; horizon: lag where "
            "it has fallen by the horizon factor; ‖J‖₂, ρ(J): spectral norm and radius of the "
            "one-step Jacobian; λ₁: largest Lyapunov exponent. ▼ vanishing, ▲ exploding, "
            "● neutral.",
            size=7.5,
            color=MUTED,
        )
        flow.heading("Verdicts", size=12)
        for r in doc.summary:
            who = f"{r.run} · {r.layer}" if several and r.run else r.layer
            flow.text(
                f"{who} ({F.regime_label(r.regime)})",
                size=9.5,
                weight="bold",
                color=F.REGIME_COLOURS.get(r.regime or "", "black"),
            )
            flow.text(r.full_verdict or "no verdict was produced", size=9.5, indent=0.2)
            flow.space(0.06)
    flow.close()


def _comparison(flow: Flow, doc: Document) -> None:
    if doc.comparison is None:
        return
    flow.new_page()
    flow.heading("Side by side", size=13.5)
    wide_legend = doc.comparison.kwargs is not None and len(doc.comparison.kwargs["curves"]) > 4
    flow.panel(doc.comparison, height=4.3, width_frac=0.6 if wide_legend else 0.82)
    n = len(doc.comparison_table[0])
    widths = [0.3] + [0.7 / (n - 1)] * (n - 1)
    colours: list[list[str | None]] = [[None] * n]
    for row in doc.comparison_table[1:]:
        regime = row[1].split(" ")[-1]
        colours.append([None, F.REGIME_COLOURS.get(regime)] + [None] * (n - 2))
    flow.table(doc.comparison_table, widths, size=8.5, colours=colours)
    flow.close()


def _run_header(flow: Flow, run: RunSection, several: bool) -> None:
    flow.heading(run.label if several and run.label else "Per-layer analysis", size=14)
    flow.text(f"Source: {run.source}", size=8.5, color=MUTED)
    if run.problem:
        flow.text(f"Full analysis: not available: {run.problem}.", size=9.5, color=WARN)
    if run.training_missing:
        flow.text(run.training_missing, size=8.5, color=MUTED)
    for name, panels in run.training:
        for p in panels:
            if p.kwargs is None:
                flow.text(f"Training, {name}: " + caption(p), size=8.5, color=WARN)


def _layer_text(flow: Flow, sec: LayerSection) -> None:
    colour = F.REGIME_COLOURS.get(sec.regime or "", "black")
    flow.heading(f"{sec.name} ({sec.kind}): {F.regime_label(sec.regime)}", size=12.5, color=colour)
    if sec.nonfinite:
        flow.text(f"⚠ {sec.nonfinite}", size=9.5, color=WARN, weight="bold")
    flow.text("Verdict. " + (sec.verdict or "no verdict was produced"), size=9.5)
    if sec.advice:
        flow.heading("What to try", size=10.5)
        for a in sec.advice:
            flow.text(a, size=9, indent=0.25, bullet="•")
    flow.heading("The numbers behind the verdict", size=10.5)
    rows = [["quantity", "value", "what it means"]]
    rows += [[n.label, n.value, n.meaning] for n in sec.numbers]
    flow.table(rows, [0.18, 0.5, 0.32], size=7.8)
    if sec.notes:
        flow.text("Analysis notes: " + " ".join(sec.notes), size=8.5, color=MUTED)
    if sec.gate_note:
        flow.text(sec.gate_note, size=8.5, color=MUTED)
    missing = [p for p in sec.panels if p.kwargs is None]
    if missing:
        flow.heading("Not available in this run", size=10.5)
        for p in missing:
            flow.text(caption(p), size=9, indent=0.25, bullet="•", color=WARN)


def _pairs(rows: Sequence[tuple[str, str]]) -> list[list[str]]:
    """Key/value rows laid out two pairs per line (four columns)."""
    half = math.ceil(len(rows) / 2)
    left, right = rows[:half], rows[half:]
    out = [["key", "value", "key", "value"]]
    for i, (k, v) in enumerate(left):
        k2, v2 = right[i] if i < len(right) else ("", "")
        out.append([k, v, k2, v2])
    return out


_META_WIDTHS = (0.15, 0.35, 0.15, 0.35)


def _meta(flow: Flow, doc: Document) -> None:
    flow.new_page()
    flow.heading("Run metadata", size=13.5)
    blocks: list[tuple[str, list[tuple[str, str]]]] = []
    if doc.common_meta:
        blocks.append(("Common to all runs", doc.common_meta))
    for run in doc.runs:
        none = "nothing beyond what all runs share" if doc.common_meta else "no metadata"
        blocks.append(
            (run.label if run.label is not None else "Run", run.meta or [("(none)", none)])
        )
    blocks.append(("This report", [("generated", doc.generated), *doc.meta]))
    for heading, rows in blocks:
        flow.heading(heading, size=11)
        flow.table(_pairs(rows), _META_WIDTHS, size=7.4, max_lines=8)
    flow.close()


def write(doc: Document, path: Path) -> None:
    """Write the PDF report of ``doc`` to ``path``."""
    counter = [0]
    several = len(doc.runs) > 1
    with (
        mpl.rc_context({"pdf.fonttype": 42, "pdf.compression": 6}),
        PdfPages(path, metadata={"Title": doc.title, "Creator": "gradscope"}) as pdf,
    ):
        flow = Flow(pdf, doc, counter)
        _summary(flow, doc)
        _comparison(flow, doc)
        for run in doc.runs:
            flow.new_page()
            _run_header(flow, run, several)
            for i, sec in enumerate(run.layers):
                if i:
                    flow.new_page()
                _layer_text(flow, sec)
                flow.close()
                who = f"{run.label} · {sec.name}" if several and run.label else sec.name
                drawn = [p for p in sec.panels if p.kwargs is not None]
                figure_pages(pdf, doc, counter, f"{who}: figures", drawn)
            flow.close()
            panels = [p for _, ps in run.training for p in ps if p.kwargs is not None]
            if panels:
                who = f"{run.label}: " if several and run.label else ""
                figure_pages(pdf, doc, counter, f"{who}training history", panels)
        _meta(flow, doc)


__all__ = ["GRID", "PAGE", "write"]
