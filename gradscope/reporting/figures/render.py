r"""The static picture of a chart: :func:`render_chart` draws any :class:`Chart` with matplotlib.

A chartable panel is declared once, as a function that returns its
:class:`~gradscope.reporting.figures.chart.Chart`; the interactive figure of the HTML report
draws that chart in the page and this module draws the same chart as the PDF's (and the
static HTML's) picture, so the two never disagree. :func:`figure_of` turns a chart function
into a figure function of the same arguments (plus ``ax=``), e.g.
``decay_figure = figure_of(decay_chart)``.

How a chart becomes a picture:

* an x–y chart draws its series in order: a band is ``fill_between`` its two columns (where
  both are finite), a line is a line (a gap where a value is missing, unless the series
  ``join`` s across it), points and a line's category markers are a scatter with the marker
  and colour of their category and that category's legend text;
* the y axis of ``"ln"`` (natural logs) and ``"log"`` (the quantity) charts is in
  :math:`\log_{10}` units, :math:`\log_{10} x = \ln x / \ln 10`, labelled with the values
  themselves (:func:`~gradscope.reporting.figures.axes.set_log10_axis`), so a norm of
  :math:`e^{-800}` is drawn where float64 has long underflowed to 0;
* a heat map is an image of its cells (:math:`\log_{10}` values), cells without a finite
  value in the chart's missing colour, with a colour bar labelled with the values;
* axis labels of the form ``‖∂s_T/∂s_{T−k}‖`` are set as mathematics (subscripts), legend
  and title text is shown literally (a ``$`` or ``_`` in a model's name stays what it is);
* a chart with nothing finite to draw is the visible "no data" panel with its
  :attr:`~gradscope.reporting.figures.chart.Chart.empty` reason, never a blank axes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from functools import wraps
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gradscope.reporting.figures.axes import log10_ticks, set_log10_axis
from gradscope.reporting.figures.chart import Chart, Series
from gradscope.reporting.figures.theme import (
    FIGSIZE,
    LN10,
    new_axes,
    no_data,
    plain,
    styled,
)

#: Dash patterns (pixels, as the page draws them) that matplotlib draws by name.
NAMED_DASHES = {(): "-", (7.0, 4.0): "--", (8.0, 3.0, 2.0, 3.0): "-.", (2.0, 3.0): ":"}
#: Characters of a legend text beyond which its middle is elided (names differ at the ends).
LEGEND_CHARS = 72
#: A run of text with a subscript (``s_T``, ``∂s_{T−k}``), set as mathematics in axis labels.
_SUBSCRIPTED = re.compile(r"[^\s(),;]*_[^\s(),;]*")


def linestyle(dash: tuple[float, ...]) -> Any:
    """A chart's dash pattern (pixels) as a matplotlib line style (by name where it has one)."""
    key = tuple(float(d) for d in dash)
    if key in NAMED_DASHES:
        return NAMED_DASHES[key]
    return (0, tuple(d / 2 for d in key))  # matplotlib scales dashes by the line width (≈2)


def math_label(text: str) -> str:
    """An axis label with its subscripted terms set as mathtext (``s_T`` → ``$s_T$``)."""
    return _SUBSCRIPTED.sub(lambda m: f"${m.group()}$", text.replace("$", r"\$"))


def _coords(values: Any, scale: str) -> np.ndarray:
    """Axis coordinates of ``values``: log10 units on log axes, NaN where there is none."""
    v = np.asarray(values, dtype=float)
    if scale == "ln":
        return v / LN10
    if scale == "log":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan)
    return v


def _number(v: float) -> str:
    """A tick label of a heat map's row: an integer as an integer, else 3 digits."""
    return str(int(v)) if float(v).is_integer() else f"{v:.3g}"


# --------------------------------------------------------------------------- x–y charts
def _rows(s: Series, cols: dict[str, Any], n: int) -> np.ndarray:
    if s.where is None:
        return np.ones(n, dtype=bool)
    return np.array([str(v) == s.where[1] for v in cols[s.where[0]]], dtype=bool)


def _categories(ax: Axes, s: Series, x: np.ndarray, y: np.ndarray, cats: np.ndarray) -> None:
    """The points of a line coloured by category: one scatter per category, in order."""
    for cat in dict.fromkeys(cats.tolist()):
        sel = (cats == cat) & np.isfinite(y)
        if not sel.any():
            continue
        colour, marker, text = s.styles.get(str(cat), (s.color, s.marker or "o", s.label))
        ax.scatter(
            x[sel],
            y[sel],
            marker=marker,
            color=colour,
            s=36,
            zorder=3,
            label=plain(text, LEGEND_CHARS),
        )


def _series(ax: Axes, chart: Chart) -> tuple[list[np.ndarray], list[np.ndarray], bool]:
    """Draw every series; the y and x coordinates drawn, and whether any has markers."""
    cols = {c.name: c.values for c in chart.columns}
    ys: list[np.ndarray] = []
    xs: list[np.ndarray] = []
    marks = False
    for s in chart.series:
        x = np.asarray(cols[s.x], dtype=float)
        keep = _rows(s, cols, x.size)
        x = x[keep]
        label = plain(s.label, LEGEND_CHARS) if s.legend else "_nolegend_"
        if s.kind == "band":
            lo = _coords(cols[s.y[0]], chart.yscale)[keep]
            hi = _coords(cols[s.y[1]], chart.yscale)[keep]
            ok = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(x)
            if ok.any():
                ax.fill_between(
                    x, lo, hi, where=ok, color=s.color, alpha=s.opacity, lw=0, label=label
                )
                ys += [lo[ok], hi[ok]]
                xs.append(x[ok])
            continue
        y = _coords(cols[s.y], chart.yscale)[keep]
        ok = np.isfinite(y) & np.isfinite(x)
        if not ok.any():
            continue
        ys.append(y[ok])
        xs.append(x[ok])
        marks = marks or s.marker is not None or s.kind == "points"
        if s.kind == "points":
            ax.scatter(x[ok], y[ok], marker=s.marker or "o", color=s.color, s=16, label=label)
            continue
        at = np.flatnonzero(ok)  # joined: the finite rows; else gaps inside, none at the ends
        px, py = (x[ok], y[ok]) if s.join else (x[at[0] : at[-1] + 1], y[at[0] : at[-1] + 1])
        if s.by is not None:
            ax.plot(px, py, color=s.color, lw=s.width, ls=linestyle(s.dash), zorder=2)
            _categories(ax, s, x, y, np.asarray(cols[s.by], dtype=object)[keep])
            continue
        ax.plot(
            px,
            py,
            color=s.color,
            lw=s.width,
            ls=linestyle(s.dash),
            marker=s.marker,
            ms=3.5,
            label=label,
        )
    return ys, xs, marks


def _legend(ax: Axes, chart: Chart) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if not handles or chart.legend == "none":
        return
    if chart.legend == "below":
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), borderaxespad=0)
    elif chart.legend == "top":
        ax.legend(loc="upper center", ncols=min(3, len(handles)), fontsize=7.5)
    elif chart.legend == "best":
        short = len(handles) > 3 and max(len(t) for t in labels) <= 8  # λ₁, λ₂, ...
        ax.legend(loc="best", ncols=2 if short else 1)
    else:
        ax.legend(loc=chart.legend, fontsize="small")


def _xy(ax: Axes, chart: Chart) -> None:
    ys, xs, marks = _series(ax, chart)
    refs = [float(v) for v in _coords(chart.hlines, chart.yscale) if math.isfinite(v)]
    for i, h in enumerate(refs):
        label = chart.hline_label if i == 0 and chart.hline_label else "_nolegend_"
        ax.axhline(h, color="black", lw=0.9, ls=":", label=label)
    y = np.concatenate([*ys, np.asarray(refs, dtype=float)])
    lo, hi = float(y.min()), float(y.max())
    top = 0.35 if chart.legend == "top" else 0.0  # headroom for a legend over the data
    if chart.yscale != "linear":
        span = max(hi - lo, 0.2)
        set_log10_axis(ax, np.append(y, hi + top * span))
    elif top:
        span = max(hi - lo, 0.05)
        ax.set_ylim(lo - 0.05 * span, hi + top * span)
    if chart.yview is not None:
        ax.set_ylim(*(float(v) for v in _coords(chart.yview, chart.yscale)))
    x = np.concatenate(xs)
    x0, x1 = float(x.min()), float(x.max())
    x1 = x1 if x1 > x0 else x0 + 1
    pad = 0.02 * (x1 - x0) if marks else 0.0
    ax.set_xlim(x0 - pad, x1 + pad)
    ax.set_xlabel(math_label(chart.xlabel))
    ax.set_ylabel(math_label(chart.ylabel))
    _legend(ax, chart)


# --------------------------------------------------------------------------- heat maps
def _grid(fig: Figure, ax: Axes, chart: Chart) -> None:
    g = chart.grid
    img = np.ma.masked_invalid(_coords(g.z.values, g.scale))
    x = np.asarray(g.x.values, dtype=float)
    y = np.asarray(g.y.values, dtype=float)
    ny = y.size
    steps = np.diff(x)
    d = float(steps[0]) if steps.size and np.allclose(steps, steps[0]) and steps[0] > 0 else 1.0
    x0, x1 = (x[0] - d / 2, x[-1] + d / 2) if steps.size or x.size else (-0.5, 0.5)
    rows = (-0.5, ny - 0.5) if g.y_up else (ny - 0.5, -0.5)
    cmap = LinearSegmentedColormap.from_list("chart", list(g.colors)).with_extremes(bad=g.missing)
    im = ax.imshow(
        img,
        aspect="auto",
        interpolation="nearest",
        cmap=cmap,
        origin="lower" if g.y_up else "upper",
        extent=(x0, x1, *rows),
    )
    cb = fig.colorbar(im, ax=ax, pad=0.02)
    pos, labels = log10_ticks(float(img.min()), float(img.max()), max_ticks=6)
    cb.set_ticks(pos, labels=labels)
    cb.set_label(math_label(chart.ylabel))
    if np.array_equal(y, np.arange(ny)):  # rows are indices: label them as such
        ax.yaxis.set_major_locator(MaxNLocator(nbins=min(ny, 8), integer=True))
    else:  # rows stand for values (training steps): label every few rows with its value
        at = np.arange(0, ny, max(1, math.ceil(ny / 8)))
        ax.set_yticks(at, [_number(y[r]) for r in at])
    ax.set_xlabel(math_label(chart.xlabel))
    ax.set_ylabel(g.y.name.replace("_", " "))
    ax.grid(False)


# --------------------------------------------------------------------------- the figure
@styled
def render_chart(chart: Chart, ax: Axes | None = None) -> Figure:
    """Draw ``chart`` as a matplotlib figure (into ``ax`` when given).

    Args:
        chart: The chart (an x–y plot or a heat map).
        ax: Axes to draw into (default: a new figure of the chart's ``figsize``).

    Returns:
        The figure drawn on.
    """
    fig, ax = new_axes(ax, chart.figsize or FIGSIZE)
    title = plain(chart.title)
    if not chart.drawable():
        no_data(ax, chart.empty, title)
        return fig
    if chart.grid is not None:
        _grid(fig, ax, chart)
        if not np.isfinite(_coords(chart.grid.z.values, chart.grid.scale)).all():
            title += "  (grey: no data)"
    else:
        _xy(ax, chart)
    ax.set_title(title, **({"color": chart.accent} if chart.accent else {}))
    return fig


def figure_of(build: Callable[..., Chart]) -> Callable[..., Figure]:
    """The figure function of a chart function: the same arguments plus ``ax=``.

    Args:
        build: A function returning a :class:`Chart` (``decay_chart``, ...).

    Returns:
        ``draw(*args, ax=None, **kwargs) -> Figure``: :func:`render_chart` of ``build``'s
        chart.
    """

    @wraps(build)
    def draw(*args: Any, ax: Axes | None = None, **kwargs: Any) -> Figure:
        return render_chart(build(*args, **kwargs), ax)

    draw.__name__ = draw.__qualname__ = build.__name__.replace("_chart", "_figure")
    draw.__doc__ = f"The picture of :func:`{build.__name__}` (:func:`render_chart`)."
    return draw


__all__ = ["figure_of", "linestyle", "math_label", "render_chart"]
