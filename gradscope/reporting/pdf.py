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
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from gradscope.reporting import figures as F
from gradscope.reporting.document import Document, LayerSection, Panel, RunSection

#: Page size in inches (A4 landscape).
PAGE = (11.69, 8.27)
#: Page margin in inches.
MARGIN = 0.5
#: Figures per figure page, as (rows, columns).
GRID = (2, 2)
#: Average glyph width of DejaVu Sans as a fraction of the font size (for wrapping).
_GLYPH = 0.52
_WARN = "#9c2a00"
_MUTED = "#5f6368"


def _chars(width_in: float, size: float) -> int:
    """How many characters of a ``size``-pt font fit in ``width_in`` inches."""
    return max(8, int(width_in * 72.0 / (_GLYPH * size)))


def _wrap(text: str, width: int) -> list[str]:
    """Lines of at most ``width`` characters, broken at spaces only.

    Never inside a word or after a hyphen, so that extracted text matches the source.
    """
    return textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False) or [""]


def _cell(text: str, width: int, max_lines: int | None) -> list[str]:
    lines = [w for para in text.split("\n") for w in _wrap(para, width)] or [""]
    if max_lines is not None and len(lines) > max_lines:
        cut = len(lines) - max_lines + 1
        lines = [*lines[: max_lines - 1], f"[... {cut} more lines: see the HTML report]"]
    return lines


class _Flow:
    """Top-to-bottom text layout over as many pages as the content needs."""

    def __init__(self, pdf: PdfPages, doc: Document, counter: list[int]) -> None:
        self.pdf = pdf
        self.doc = doc
        self.counter = counter
        self.fig: Figure | None = None
        self.y = 0.0
        self.width = PAGE[0] - 2 * MARGIN

    # -- pages
    def new_page(self) -> None:
        self.close()
        self.fig = Figure(figsize=PAGE)
        self.y = MARGIN

    def close(self) -> None:
        if self.fig is not None:
            _finish_page(self.pdf, self.fig, self.doc, self.counter)
            self.fig = None

    def _room(self, h: float) -> None:
        if self.fig is None or self.y + h > PAGE[1] - MARGIN - 0.12:
            self.new_page()

    def page(self) -> Figure:
        """The current page (a new one if none is open)."""
        if self.fig is None:
            self.new_page()
        assert self.fig is not None  # set by new_page
        return self.fig

    def _put(self, x_in: float, text: str, size: float, **kw: Any) -> None:
        self.page().text(
            x_in / PAGE[0], 1 - self.y / PAGE[1], text, fontsize=size, va="top", ha="left", **kw
        )

    # -- blocks
    def space(self, h: float) -> None:
        self.y += h

    def text(
        self,
        text: str,
        size: float = 9.5,
        indent: float = 0.0,
        bullet: str = "",
        **kw: Any,
    ) -> None:
        """A wrapped paragraph (``bullet`` hangs in the margin of ``indent``)."""
        width = self.width - indent
        lines = _wrap(text, _chars(width, size))
        lh = size * 1.38 / 72
        for i, line in enumerate(lines):
            self._room(lh)
            if bullet and i == 0:
                self._put(MARGIN + indent - 0.16, bullet, size, **kw)
            self._put(MARGIN + indent, line, size, **kw)
            self.y += lh

    def heading(self, text: str, size: float = 13, **kw: Any) -> None:
        self._room(size * 3.2 / 72)
        self.y += size * 0.45 / 72
        self.text(text, size=size, weight="bold", **kw)
        self.y += size * 0.2 / 72

    def rule(self) -> None:
        yy = 1 - self.y / PAGE[1]
        self.page().add_artist(
            Line2D(
                [MARGIN / PAGE[0], 1 - MARGIN / PAGE[0]],
                [yy, yy],
                transform=self.fig.transFigure,
                color="#d0d0d0",
                lw=0.6,
            )
        )

    def table(
        self,
        rows: Sequence[Sequence[str]],
        widths: Sequence[float],
        size: float = 8.0,
        header: bool = True,
        colours: Sequence[Sequence[str | None]] | None = None,
        max_lines: int | None = None,
    ) -> None:
        """A table of wrapped cells; ``widths`` are fractions of the text width.

        Line breaks inside a cell are kept; a cell longer than ``max_lines`` lines is cut
        there with a visible note (the HTML report has the full text).
        """
        lh = size * 1.35 / 72
        xs = [MARGIN + self.width * sum(widths[:i]) for i in range(len(widths))]
        head = rows[0] if header else None

        def draw(row: Sequence[str], bold: bool, colour_row: Sequence[str | None] | None) -> None:
            wrapped = [
                _cell(str(c), _chars(self.width * w - 0.08, size), max_lines)
                for c, w in zip(row, widths)
            ]
            h = max(len(w) for w in wrapped) * lh + 0.06
            if self.fig is None or self.y + h > PAGE[1] - MARGIN - 0.12:
                self.new_page()
                if head is not None and not bold:
                    draw(head, True, None)
            y0 = self.y
            for j, (x, lines) in enumerate(zip(xs, wrapped)):
                colour = (colour_row[j] if colour_row else None) or "black"
                self.y = y0 + 0.03
                for line in lines:
                    self._put(x, line, size, weight="bold" if bold else "normal", color=colour)
                    self.y += lh
            self.y = y0 + h
            self.rule()

        for i, row in enumerate(rows):
            draw(row, header and i == 0, None if colours is None else colours[i])
        self.y += 0.08

    def panel(self, panel: Panel, height: float, width_frac: float = 1.0) -> None:
        """A figure panel of ``height`` inches with its caption underneath."""
        self._room(height + 0.5)
        w = self.width * width_frac
        left, bottom, top = 0.75, 0.6, 0.3  # room for tick labels, axis label and title
        ax = self.page().add_axes(
            (
                (MARGIN + left) / PAGE[0],
                1 - (self.y + height - bottom) / PAGE[1],
                (w - left - 0.2) / PAGE[0],
                (height - bottom - top) / PAGE[1],
            )
        )
        with F.style():
            panel.render(ax)
        self.y += height + 0.15
        self.text(_caption(panel), size=8, color=_MUTED)


def _caption(panel: Panel) -> str:
    if panel.kwargs is None:
        return f"{panel.spec.title}: not available: {panel.missing} Needs: {panel.spec.needs}."
    return f"How to read this: {panel.spec.caption}"


def _finish_page(pdf: PdfPages, fig: Figure, doc: Document, counter: list[int]) -> None:
    counter[0] += 1
    fig.text(
        MARGIN / PAGE[0],
        0.3 / PAGE[1],
        f"{doc.title}  ·  {doc.generated}",
        fontsize=7,
        color=_MUTED,
        va="bottom",
    )
    fig.text(
        1 - MARGIN / PAGE[0],
        0.3 / PAGE[1],
        f"page {counter[0]}",
        fontsize=7,
        color=_MUTED,
        va="bottom",
        ha="right",
    )
    pdf.savefig(fig)
    fig.clear()


def _figure_pages(
    pdf: PdfPages, doc: Document, counter: list[int], heading: str, panels: Sequence[Panel]
) -> None:
    """Panels four to a page (:data:`GRID`), each with its caption below it.

    Axes are placed at fixed positions (no layout engine): a constrained layout of four
    panels costs more than drawing them, and every figure function leaves its legends and
    colour bars inside the axes box it is given.
    """
    rows, cols = GRID
    per = rows * cols
    n_pages = math.ceil(len(panels) / per)
    head, foot = 0.75, 0.45  # inches reserved for the page heading and the footer
    slot_w = (PAGE[0] - 2 * MARGIN) / cols
    slot_h = (PAGE[1] - head - foot) / rows
    cap_h, title_h, xlab_h, ylab_w = 0.62, 0.32, 0.5, 0.8
    for p in range(n_pages):
        chunk = panels[p * per : (p + 1) * per]
        with F.style():
            page = Figure(figsize=PAGE)
            more = f" ({p + 1}/{n_pages})" if n_pages > 1 else ""
            page.text(
                MARGIN / PAGE[0],
                1 - 0.45 / PAGE[1],
                heading + more,
                fontsize=12,
                fontweight="bold",
                va="baseline",
            )
            for i, panel in enumerate(chunk):
                r, c = divmod(i, cols)
                x0, y0 = MARGIN + c * slot_w, head + r * slot_h  # slot's top-left, from top
                top, bottom = y0 + title_h, y0 + slot_h - cap_h - xlab_h
                ax = page.add_axes(
                    (
                        (x0 + ylab_w) / PAGE[0],
                        1 - bottom / PAGE[1],
                        (slot_w - ylab_w - 0.3) / PAGE[0],
                        (bottom - top) / PAGE[1],
                    )
                )
                panel.render(ax)
                page.text(
                    (x0 + 0.05) / PAGE[0],
                    1 - (y0 + slot_h - cap_h + 0.04) / PAGE[1],
                    "\n".join(_wrap(_caption(panel), _chars(slot_w - 0.25, 7.2))),
                    fontsize=7.2,
                    va="top",
                    ha="left",
                    color=_MUTED,
                    linespacing=1.3,
                )
            _finish_page(pdf, page, doc, counter)


def _summary(flow: _Flow, doc: Document) -> None:
    several = len(doc.runs) > 1
    flow.new_page()
    flow.text(doc.title, size=17, weight="bold")
    flow.text(
        f"generated {doc.generated} by gradscope {dict(doc.meta).get('gradscope', '')}",
        size=8.5,
        color=_MUTED,
    )
    flow.heading("Does the gradient survive?", size=13.5)
    for alert in doc.alerts:
        flow.text(f"⚠ {alert}", size=9.5, color=_WARN, weight="bold")
        flow.space(0.04)
    if not doc.summary:
        why = (
            "this report holds training histories only: see the training pages"
            if any(r.training for r in doc.runs)
            else "see the pages that follow"
        )
        flow.text(f"No layer was analysed: {why}.", color=_MUTED)
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
                c[-1] = _WARN
            colours.append(c)
        flow.table(rows, widths, size=8.5, colours=colours)
        flow.text(
            "rate: slope of ln‖∂s_T/∂s_{T−k}‖ per step back in time (−0.1: the gradient shrinks "
            "by e^−0.1 ≈ 0.90 each step); half-life: steps for it to halve; horizon: lag where "
            "it has fallen by the horizon factor; ‖J‖₂, ρ(J): spectral norm and radius of the "
            "one-step Jacobian; λ₁: largest Lyapunov exponent. ▼ vanishing, ▲ exploding, "
            "● neutral.",
            size=7.5,
            color=_MUTED,
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


def _comparison(flow: _Flow, doc: Document) -> None:
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


def _run_header(flow: _Flow, run: RunSection, several: bool) -> None:
    flow.heading(run.label if several and run.label else "Per-layer analysis", size=14)
    flow.text(f"Source: {run.source}", size=8.5, color=_MUTED)
    if run.problem:
        flow.text(f"Full analysis: not available: {run.problem}.", size=9.5, color=_WARN)
    if run.training_missing:
        flow.text(run.training_missing, size=8.5, color=_MUTED)
    for name, panels in run.training:
        for p in panels:
            if p.kwargs is None:
                flow.text(f"Training, {name}: " + _caption(p), size=8.5, color=_WARN)


def _layer_text(flow: _Flow, sec: LayerSection) -> None:
    colour = F.REGIME_COLOURS.get(sec.regime or "", "black")
    flow.heading(f"{sec.name} ({sec.kind}): {F.regime_label(sec.regime)}", size=12.5, color=colour)
    if sec.nonfinite:
        flow.text(f"⚠ {sec.nonfinite}", size=9.5, color=_WARN, weight="bold")
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
        flow.text("Analysis notes: " + " ".join(sec.notes), size=8.5, color=_MUTED)
    missing = [p for p in sec.panels if p.kwargs is None]
    if missing:
        flow.heading("Not available in this run", size=10.5)
        for p in missing:
            flow.text(_caption(p), size=9, indent=0.25, bullet="•", color=_WARN)


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


def _meta(flow: _Flow, doc: Document) -> None:
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
        flow = _Flow(pdf, doc, counter)
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
                _figure_pages(pdf, doc, counter, f"{who}: figures", drawn)
            flow.close()
            panels = [p for _, ps in run.training for p in ps if p.kwargs is not None]
            if panels:
                who = f"{run.label}: " if several and run.label else ""
                _figure_pages(pdf, doc, counter, f"{who}training history", panels)
        _meta(flow, doc)


__all__ = ["GRID", "PAGE", "write"]
