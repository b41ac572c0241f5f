"""Interactive figures of the HTML report: hover values, drag to zoom, CSV/JSON downloads.

A panel whose :class:`~gradscope.reporting.content.document.PanelSpec` is a ``chart`` (a
:class:`~gradscope.reporting.figures.chart.Chart`, e.g.
:func:`~gradscope.reporting.figures.decay.decay_chart`) is shown on screen as a canvas drawn
by a small script, :func:`script`, instead of its PNG (the same chart drawn by
:func:`~gradscope.reporting.figures.render.render_chart`). The figure's data sits in the page
as JSON next to it; the script draws it at the screen's pixel density, shows the values of
the series nearest the pointer, zooms to a dragged range (double-click resets) and offers
the same numbers as CSV and JSON (built in the page from that JSON, so a download holds
exactly what is plotted). The script is inlined once per page and loads nothing: the report
stays one file that works offline. Printed output (the PDF) keeps the static figures.

Why a hand-written script rather than a charting package from PyPI (measured on the wheels
current when this was written): ``plotly.min.js`` is 4,815,814 bytes and bokeh's
``bokeh.min.js`` 1,268,134 bytes, each alone most of the 2 MB that the demo report (then
1,841,643 bytes with PNG figures) may weigh; mpld3 ships 285,557 bytes of D3 and mpld3 and
shows matplotlib images without the values under the pointer; dygraphs' bundle
(125,464 bytes) and uPlot's in ``uplot-python`` (120,184 bytes, which also requires IPython)
draw lines only, so the heat maps would need a second renderer anyway. This script draws
lines, bands, markers and heat maps with one hover, zoom and download behaviour in 23,056
bytes (at that time; :func:`script_bytes` gives the current size), with no dependency. With
it, 67 of the demo report's 112 figures are interactive and the page weighs 1,214,761 bytes.
"""

from __future__ import annotations

from functools import cache
from html import escape
from importlib import resources

from gradscope.reporting.content.document import Panel
from gradscope.reporting.figures.chart import to_json

#: Marks a figure drawn by the script (the page includes the script only when one is present).
MARK = 'class="gs-chart"'

CSS = """
.gs-chart { position: relative; }
.gs-bar { display: flex; justify-content: space-between; align-items: baseline; gap: 8px;
  font-size: .86em; margin-bottom: 2px; }
.gs-title { font-weight: 700; }
.gs-tools { white-space: nowrap; }
.gs-tools button { font: inherit; font-size: .92em; padding: 1px 7px; margin-left: 3px;
  border: 1px solid var(--line, #d9dce1); border-radius: 4px; background: #fff; cursor: pointer; }
.gs-tools button:hover { background: var(--soft, #f5f6f8); }
.gs-plot { position: relative; }
.gs-plot canvas { display: block; width: 100%; cursor: crosshair; }
.gs-tip { position: absolute; pointer-events: none; background: rgba(255,255,255,.96);
  border: 1px solid #888; border-radius: 4px; padding: 4px 7px; font-size: 12px;
  line-height: 1.35; box-shadow: 0 1px 4px rgba(0,0,0,.18); white-space: nowrap; z-index: 2; }
.gs-tip .gs-near { font-weight: 700; }
.gs-tip .gs-more { color: var(--muted, #5f6368); font-style: italic; }
.gs-legend { font-size: .8em; color: var(--muted, #5f6368); margin-top: 2px; }
.gs-legend span { margin-right: 12px; display: inline-block; max-width: 100%;
  overflow-wrap: anywhere; }
.gs-legend i { display: inline-block; width: 14px; height: 4px; margin-right: 4px;
  vertical-align: middle; }
@media print { .gs-tools { display: none; } }
"""

#: Above this many values a figure stays a PNG: its data would weigh more than the picture
#: (about 10 bytes a value in the page; a 200-sequence × 300-lag heat map is 60,000).
MAX_VALUES = 60_000

#: How to use a figure, appended to its caption.
HINT = (
    "Hover for values; drag across the plot to zoom, double-click to reset; CSV and JSON "
    "download the plotted numbers."
)


@cache
def script() -> str:
    """The figures' script (``gradscope/reporting/static/interactive.js``).

    Raises:
        RuntimeError: When the script holds ``</script``, which would end its element early.
    """
    text = (
        resources.files("gradscope.reporting")
        .joinpath("static/interactive.js")
        .read_text(encoding="utf-8")
    )
    if "</script" in text.lower():
        raise RuntimeError("static/interactive.js must not contain '</script' (write '<\\/')")
    return text


def script_bytes() -> int:
    """Size of :func:`script` in UTF-8 bytes (what it adds to a page)."""
    return len(script().encode("utf-8"))


def head() -> str:
    """What a page with interactive figures carries once: their CSS and script."""
    return f"<style>{CSS}</style><script>{script()}</script>"


def panel_html(panel: Panel, fid: str) -> str | None:
    """The interactive figure of ``panel`` as HTML, or None when it has no chart.

    Args:
        panel: A panel with data (``panel.kwargs`` not None).
        fid: The figure's element id; also the downloads' file name (``fid.csv``).

    Returns:
        A ``<figure>`` holding the chart's JSON, its caption and a hint, or None when the
        panel's figure is no chart or a picture on screen too (``spec.live`` False), has
        nothing finite to draw, or holds more than :data:`MAX_VALUES` values (it is then
        drawn as a PNG, which says what is missing).
    """
    chart = panel.chart() if panel.spec.live else None
    if chart is None or chart.size > MAX_VALUES or not chart.drawable():
        return None
    # JSON inside <script>: a "<" (as in "</script" or "<!--") could end or upset the
    # element; "\u003c" is the same character to JSON and never markup to HTML
    data = to_json(chart).replace("<", "\\u003c")
    spec = panel.spec
    return (
        f'<figure id="{fid}" data-figure="{spec.key}" data-interactive="true">'
        f'<div {MARK} data-file="{escape(fid)}">'
        f'<script type="application/json" class="gs-data">{data}</script>'
        f"<noscript>This figure is drawn by JavaScript; the PDF report has it as a picture."
        f"</noscript></div>"
        f"<figcaption><b>How to read this.</b> {escape(panel.caption)} "
        f"<span class='note'>{HINT}</span></figcaption></figure>"
    )


__all__ = ["CSS", "HINT", "MARK", "MAX_VALUES", "head", "panel_html", "script", "script_bytes"]
