"""The data behind a figure, declared once: named columns with units, and how to draw them.

A :class:`Chart` *is* the figure of a chartable panel: the HTML report's interactive figure
draws it (``static/interactive.js``), its CSV and JSON downloads carry its columns, and the
static picture of the PDF (and of the HTML without script) is drawn from it by
:func:`~gradscope.reporting.figures.render.render_chart`. A panel declares one function that
returns its chart (:attr:`~gradscope.reporting.content.document.PanelSpec.chart`); the
picture, the interactive figure and the download then come from one extraction of the record.

A chart is either an x–y plot (:attr:`Chart.series` over :attr:`Chart.columns`) or a heat map
(:attr:`Chart.grid`). The y axis of an x–y plot is one of

* ``"linear"``: the values as they are;
* ``"ln"``: the columns hold natural logarithms of a positive quantity (gradient norms, whose
  products leave the float range long before their logarithms do) and the axis is labelled
  with the quantity on a log scale;
* ``"log"``: the columns hold the quantity itself, drawn on a log scale (values ≤ 0 are gaps).

Numbers are written to :data:`DIGITS` significant digits; NaN and ±inf become ``null`` (no
finite value: a gap in the picture, an empty CSV cell).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Significant digits of every number written into the page (float32 carries about 7).
DIGITS = 7

_SCALES = ("linear", "ln", "log")
_KINDS = ("line", "band", "points")
#: Where a picture's legend may go (matplotlib's corner names, and three of our own).
LEGENDS = ("best", "below", "top", "none", "upper left", "upper right", "lower left", "lower right")


class ChartError(ValueError):
    """A chart refers to a column it does not hold, or its columns do not line up."""


@dataclass(frozen=True)
class Column:
    """One named column of a figure's data.

    Attributes:
        name: Column header (``"lag"``, ``"ln_norm_median"``, ...).
        unit: What the numbers are, in words (``"steps"``, ``"ln ‖∂s_T/∂s_{T−k}‖"``).
        values: 1-D numbers, or strings (a category such as the regime).
    """

    name: str
    unit: str
    values: Any

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class Series:
    """How one part of an x–y chart is drawn from its columns.

    Attributes:
        kind: ``"line"``, ``"band"`` (filled between two columns) or ``"points"``.
        x: Name of the x column.
        y: Name of the y column; a band names two, ``(low, high)``.
        label: Legend and hover label.
        color: CSS colour.
        dash: Dash pattern in pixels (empty: solid).
        marker: ``"o"``, ``"s"``, ``"v"`` or ``"^"`` at each point, or None.
        where: ``(column, value)``: draw only the rows where that column equals ``value``
            (several curves in one long table).
        by: A category column whose value picks each point's colour and marker ...
        styles: ... from ``{category: (colour, marker, legend text)}`` (a point whose
            category has no style is drawn like the series).
        legend: Whether the legend lists it (the hover text always does).
        tip: Its name in the hover text (default: ``label``).
        width: Line width (points in the picture, pixels on screen).
        opacity: Opacity of a band's fill.
        join: Connect a line across rows without a finite value (steps where it was not
            measured) instead of leaving a gap.
    """

    kind: str
    x: str
    y: str | tuple[str, str]
    label: str
    color: str
    dash: tuple[float, ...] = ()
    marker: str | None = None
    where: tuple[str, str] | None = None
    by: str | None = None
    styles: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    legend: bool = True
    tip: str | None = None
    width: float = 2.0
    opacity: float = 0.22
    join: bool = False


@dataclass(frozen=True)
class Grid:
    """A heat map: ``z`` over rows ``y`` and columns ``x``.

    Attributes:
        x: The column coordinates (``K`` values).
        y: The row coordinates (``B`` values), first row at the top unless ``y_up``.
        z: ``(B, K)`` values; ``unit`` and ``name`` say what they are.
        scale: ``"ln"`` (natural logs of a positive quantity) or ``"log"`` (the quantity).
        colors: The colour map, low to high, as CSS colours.
        missing: Colour of a cell without a finite value.
        y_up: Whether the first row is drawn at the bottom.
    """

    x: Column
    y: Column
    z: Column
    scale: str
    colors: tuple[str, ...]
    missing: str
    y_up: bool = False


@dataclass(frozen=True)
class Chart:
    """The data of one figure and how to draw it.

    Attributes:
        title: Figure title.
        xlabel: x-axis label.
        ylabel: y-axis label (for a grid: the colour bar's).
        columns: The x–y data (empty for a heat map).
        series: What to draw from ``columns``, in drawing order.
        yscale: ``"linear"``, ``"ln"`` or ``"log"`` (see the module docstring).
        hlines: Reference lines across the plot at these y values (in the data's units).
        grid: The heat map, or None.
        yview: The y range (data units) shown first, when not all of the data (e.g. early
            estimates that swing far off); zooming and resetting show the rest.
        accent: Colour of the title (e.g. the regime's), or None.
        legend: Where the picture's legend goes: ``"best"``, ``"below"`` (under the axes),
            ``"top"`` (a row at the top, with headroom above the data), or a corner
            (``"lower left"``, ``"upper right"``, ...); ``"none"``: no legend.
        figsize: Size of the picture (inches), or None for the default.
        empty: What the picture says when there is nothing finite to draw.
        hline_label: Legend text of the reference lines, or None.

    Raises:
        ChartError: When a series names a column the chart lacks, or columns differ in length.
    """

    title: str
    xlabel: str
    ylabel: str
    columns: Sequence[Column] = ()
    series: Sequence[Series] = ()
    yscale: str = "linear"
    hlines: tuple[float, ...] = ()
    grid: Grid | None = None
    yview: tuple[float, float] | None = None
    accent: str | None = None
    legend: str = "best"
    figsize: tuple[float, float] | None = None
    empty: str = "no finite value to draw"
    hline_label: str | None = None

    def __post_init__(self) -> None:
        if self.yscale not in _SCALES:
            raise ChartError(f"yscale must be one of {_SCALES}, got {self.yscale!r}")
        if self.legend not in LEGENDS:
            raise ChartError(f"legend must be one of {LEGENDS}, got {self.legend!r}")
        names = {c.name for c in self.columns}
        lengths = {c.name: len(c) for c in self.columns}
        if len(set(lengths.values())) > 1:
            raise ChartError(f"chart {self.title!r}: columns differ in length: {lengths}")
        for s in self.series:
            if s.kind not in _KINDS:
                raise ChartError(f"series {s.label!r}: kind must be one of {_KINDS}")
            wanted = [s.x, *([s.y] if isinstance(s.y, str) else s.y)]
            wanted += [s.where[0]] if s.where else []
            wanted += [s.by] if s.by else []
            lost = [w for w in wanted if w not in names]
            if lost:
                raise ChartError(
                    f"series {s.label!r} of chart {self.title!r} names columns {lost}, but "
                    f"the chart holds {sorted(names)}"
                )
        if self.grid is not None:
            g = self.grid
            if g.scale not in ("ln", "log"):
                raise ChartError(f"grid scale must be 'ln' or 'log', got {g.scale!r}")
            if np.shape(g.z.values) != (len(g.y), len(g.x)):
                raise ChartError(
                    f"chart {self.title!r}: grid z has shape {np.shape(g.z.values)}, expected "
                    f"(len(y), len(x)) = ({len(g.y)}, {len(g.x)})"
                )

    @property
    def size(self) -> int:
        """How many values the chart holds (what its JSON grows with)."""
        n = sum(np.size(c.values) for c in self.columns)
        if self.grid is not None:
            n += np.size(self.grid.z.values) + len(self.grid.x) + len(self.grid.y)
        return int(n)

    def drawable(self) -> bool:
        """Whether there is a finite value to draw (on a log axis: a positive one)."""
        if self.grid is not None:
            z = np.asarray(self.grid.z.values, dtype=float)
            return bool(np.any(np.isfinite(z) & ((z > 0) | (self.grid.scale == "ln"))))
        cols = {c.name: c.values for c in self.columns}
        for s in self.series:
            for name in [s.y] if isinstance(s.y, str) else s.y:
                y = np.asarray(cols[name], dtype=float)
                if np.any(np.isfinite(y) & ((y > 0) | (self.yscale != "log"))):
                    return True
        return False


def _num(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return json.dumps(str(v), ensure_ascii=False)
    if not math.isfinite(f):
        return "null"
    if f == int(f) and abs(f) < 1e15:
        return str(int(f))
    return format(f, f".{DIGITS}g")


def _values(values: Any) -> str:
    arr = np.asarray(values)
    if arr.ndim == 2:
        return "[" + ",".join(_values(row) for row in arr) + "]"
    if arr.dtype.kind in "USO":
        return json.dumps([None if v is None else str(v) for v in arr.tolist()], ensure_ascii=False)
    return "[" + ",".join(_num(v) for v in arr.ravel()) + "]"


def _column(c: Column) -> str:
    head = json.dumps({"name": c.name, "unit": c.unit}, ensure_ascii=False)[:-1]
    return f'{head},"values":{_values(c.values)}}}'


def to_json(chart: Chart) -> str:
    """The chart as compact JSON (numbers to :data:`DIGITS` significant digits, NaN → null)."""
    series = [
        {
            "kind": s.kind,
            "x": s.x,
            "y": s.y if isinstance(s.y, str) else list(s.y),
            "label": s.label,
            "color": s.color,
            "dash": list(s.dash),
            "marker": s.marker,
            "where": list(s.where) if s.where else None,
            "by": s.by,
            "styles": {k: list(v) for k, v in s.styles.items()},
            "legend": s.legend,
            "tip": s.tip or s.label,
            "width": s.width,
            "opacity": s.opacity,
            "join": s.join,
        }
        for s in chart.series
    ]
    head = {
        "title": chart.title,
        "xlabel": chart.xlabel,
        "ylabel": chart.ylabel,
        "yscale": chart.yscale,
        "hlines": [float(h) for h in chart.hlines],
        "yview": None if chart.yview is None else [float(v) for v in chart.yview],
        "accent": chart.accent,
        "series": series,
    }
    parts = [json.dumps(head, ensure_ascii=False)[:-1]]
    parts.append(',"columns":[' + ",".join(_column(c) for c in chart.columns) + "]")
    if chart.grid is not None:
        g = chart.grid
        grid = json.dumps(
            {"scale": g.scale, "colors": list(g.colors), "missing": g.missing, "y_up": g.y_up},
            ensure_ascii=False,
        )[:-1]
        parts.append(f',"grid":{grid},"x":{_column(g.x)},"y":{_column(g.y)},"z":{_column(g.z)}}}')
    return "".join(parts) + "}"


__all__ = ["DIGITS", "LEGENDS", "Chart", "ChartError", "Column", "Grid", "Series", "to_json"]
