"""One figure of a report as HTML: an inline PNG, an interactive chart, or a missing box.

Every figure of the HTML report and of the print rendering the PDF comes from goes through
:func:`panel_html` (``media`` says which rendering: interactive charts on screen, static PNGs
otherwise). Shared by :mod:`gradscope.reporting.writers.html` (the page and its first screen) and
:mod:`gradscope.reporting.writers.sections` (the detail sections).
"""

from __future__ import annotations

import base64
import io
from html import escape
from typing import Any

from gradscope.reporting.content.document import Panel
from gradscope.reporting.figures import REGIME_SYMBOLS, regime_label
from gradscope.reporting.writers import interactive as I

#: Resolution of the inline PNG figures (pixels per inch of figure size).
DPI = 110


def figure_png(fig: Any, dpi: int = DPI) -> bytes:
    """PNG bytes of a matplotlib figure: white background, 256-colour palette.

    Quantising to an adaptive 256-colour palette (no dithering) makes the PNGs about 3×
    smaller with no visible change: a figure is a few flat colours plus anti-aliasing.
    """
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    buf.seek(0)
    with Image.open(buf) as im:
        pal = im.convert("RGB").quantize(
            colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE
        )
    out = io.BytesIO()
    pal.save(out, format="PNG")
    return out.getvalue()


def img(png: bytes, alt: str) -> str:
    """An inline ``data:`` PNG image."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def regime_badge(regime: str | None) -> str:
    """The coloured regime label (vanishing / exploding / neutral / none)."""
    cls = regime if regime in REGIME_SYMBOLS else "none"
    return f'<span class="regime regime-{cls}">{escape(regime_label(regime))}</span>'


def panel_html(panel: Panel, anchor: str, media: str = "screen", wide: bool = False) -> str:
    """One figure as HTML: the rendered image with its caption, or a box saying what is missing.

    Every figure of the report goes through here (``media`` says which rendering it is for;
    the print rendering must stay static images).

    Args:
        panel: The panel to show.
        anchor: The id prefix (the figure's id is ``anchor--key``).
        media: ``"screen"`` (panels that declare a chart are interactive), ``"static"``
            (the screen page with PNG figures only) or ``"print"``.
        wide: Span the whole width of a figure grid.
    """
    spec = panel.spec
    fid = f"{anchor}--{spec.key}"
    cls = " wide" if wide else ""
    if panel.kwargs is None:
        return (
            f'<figure class="missing{cls}" id="{fid}" data-figure="{spec.key}" '
            f'data-missing="true"><div class="nodata"><strong>{escape(spec.title)}: not '
            f"available</strong>{escape(panel.missing or '')}<br><span class='note'>Needs: "
            f"{escape(spec.needs)}.</span></div></figure>"
        )
    live = I.panel_html(panel, fid) if media == "screen" else None  # "static": PNGs only
    if live is not None:
        if panel.observer is not None:  # drawn in the page: counts as drawn for progress
            panel.observer.update(1)
        return live
    fig = panel.render()
    png = figure_png(fig)
    fig.clear()
    note = f" <span class='note'>{escape(panel.note)}.</span>" if panel.note else ""
    return (
        f'<figure class="{cls.strip()}" id="{fid}" data-figure="{spec.key}">'
        f"{img(png, spec.title)}<figcaption><b>How to read this.</b> "
        f"{escape(panel.caption)}{note}</figcaption></figure>"
    )


__all__ = ["DPI", "figure_png", "img", "panel_html", "regime_badge"]
