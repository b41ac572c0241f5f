"""The page layout of the PDF report: text flowing over pages, and figures four to a page.

Geometry (A4 landscape :data:`PAGE`, :data:`MARGIN`, the figure :data:`GRID`), the text
flow (:class:`Flow`: wrapped paragraphs, headings, rules, tables with wrapped cells, a single
figure panel with its caption, continued on new pages as needed), :func:`figure_pages`
(panels at fixed positions, four to a page) and the footer every page gets. What goes on
which page is decided in :mod:`gradscope.reporting.pdf`.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import Any

from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from gradscope.reporting import figures as F
from gradscope.reporting.document import Document, Panel

#: Page size in inches (A4 landscape).
PAGE = (11.69, 8.27)
#: Page margin in inches.
MARGIN = 0.5
#: Figures per figure page, as (rows, columns).
GRID = (2, 2)
#: Average glyph width of DejaVu Sans as a fraction of the font size (for wrapping).
_GLYPH = 0.52
#: Text colours: warnings, secondary text.
WARN = "#9c2a00"
MUTED = "#5f6368"


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


class Flow:
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
        """Finish the open page (if any) and start a new one at the top margin."""
        self.close()
        self.fig = Figure(figsize=PAGE)
        self.y = MARGIN

    def close(self) -> None:
        """Finish the open page (footer, written to the PDF); a no-op when none is open."""
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
            x_in / PAGE[0],
            1 - self.y / PAGE[1],
            text,
            fontsize=size,
            va="top",
            ha="left",
            parse_math=False,  # names and verdicts are text: a "$" is a dollar sign
            **kw,
        )

    # -- blocks
    def space(self, h: float) -> None:
        """Move down ``h`` inches."""
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
        """A bold heading, moved to a new page when too little room is left under it."""
        self._room(size * 3.2 / 72)
        self.y += size * 0.45 / 72
        self.text(text, size=size, weight="bold", **kw)
        self.y += size * 0.2 / 72

    def rule(self) -> None:
        """A thin horizontal line across the text width at the current position."""
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
        self.text(caption(panel), size=8, color=MUTED)


def caption(panel: Panel) -> str:
    """The text under a panel: how to read it, or why it is missing and what it needs."""
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
        color=MUTED,
        va="bottom",
        parse_math=False,
    )
    fig.text(
        1 - MARGIN / PAGE[0],
        0.3 / PAGE[1],
        f"page {counter[0]}",
        fontsize=7,
        color=MUTED,
        va="bottom",
        ha="right",
        parse_math=False,
    )
    pdf.savefig(fig)
    fig.clear()


def figure_pages(
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
                parse_math=False,
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
                    "\n".join(_wrap(caption(panel), _chars(slot_w - 0.25, 7.2))),
                    fontsize=7.2,
                    va="top",
                    ha="left",
                    color=MUTED,
                    linespacing=1.3,
                    parse_math=False,
                )
            _finish_page(pdf, page, doc, counter)


__all__ = ["GRID", "MARGIN", "MUTED", "PAGE", "WARN", "Flow", "caption", "figure_pages"]
