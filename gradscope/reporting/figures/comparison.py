"""Several models or layers side by side: their decay curves on one axes.

A curve's look follows its entry, the same in every figure and table of a report
(:func:`entry_styles`): the colour names the model, the dash pattern its stage. Labels of a
comparison read ``model · stage`` (``"LSTM · init"``, ``"LSTM · trained"``) or
``run · layer``; entries sharing what comes before the first `` · `` share a colour and
entries sharing what follows share a dash, so ``LSTM · init`` and ``GRU · init`` are both
dashed, in their models' colours. When no two entries share a model, each entry gets its own
colour *and* dash, so curves still differ in more than hue.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from gradscope.reporting.figures.chart import Chart, Column, Series
from gradscope.reporting.figures.decay import DECAY_TITLE, LAG, NORM_OF, band_ok
from gradscope.reporting.figures.render import figure_of
from gradscope.reporting.figures.theme import DASHES, fmt_rate, palette, regime_label

#: What separates a label's model from its stage (or a run from its layer).
SEPARATOR = " · "


class Curve(NamedTuple):
    """One decay curve of a comparison (fields as in :class:`gradscope.analysis.decay.Decay`).

    ``color`` and ``dash`` are the entry's look (:func:`entry_styles`); None: by position.
    """

    lags: np.ndarray
    median: np.ndarray
    band: np.ndarray | None
    rate: float
    regime: str | None
    color: str | None = None
    dash: tuple[float, ...] | None = None


def entry_styles(labels: Sequence[str]) -> dict[str, tuple[str, tuple[float, ...]]]:
    """``{label: (colour, dash)}``: colour by model, dash by stage (see the module docstring).

    Args:
        labels: The entries of a report, in display order (unique).

    Returns:
        Each label's colour (``#rrggbb``) and dash pattern (pixels; empty: solid).
    """
    labels = list(labels)
    parts = [lab.partition(SEPARATOR)[::2] for lab in labels]
    models = list(dict.fromkeys(m for m, _ in parts))
    if len(models) == len(labels):  # nothing is grouped: one colour and dash per entry
        colours = palette(len(labels))
        return {lab: (colours[i], DASHES[i % len(DASHES)]) for i, lab in enumerate(labels)}
    stages = list(dict.fromkeys(s for _, s in parts))
    colours = palette(len(models))
    return {
        lab: (colours[models.index(m)], DASHES[stages.index(s) % len(DASHES)])
        for lab, (m, s) in zip(labels, parts)
    }


def comparison_chart(curves: Mapping[str, Curve], *, of: str = "state") -> Chart:
    """Decay curves of several models on one axes: the classic vanilla vs LSTM vs GRU view.

    Each model is drawn in its own colour and dash (the curve's, else by position); the
    legend names its regime and rate.

    Args:
        curves: ``{label: Curve}`` in display order.
        of: ``"state"``, ``"input"`` or ``"loss"``: which decay (title and axis label).

    Returns:
        The chart, one long table: ``model``, ``lag``, ``ln_norm_median``, ``ln_norm_p10``,
        ``ln_norm_p90`` (one row per model and lag).
    """
    looks = entry_styles(list(curves))
    model: list[str] = []
    cols: list[list[float]] = [[], [], [], []]
    series: list[Series] = []
    unit = f"ln {NORM_OF.get(of, 'norm')}"
    for label, c in curves.items():
        colour = c.color or looks[label][0]
        dash = looks[label][1] if c.dash is None else c.dash
        lags, med = np.asarray(c.lags, dtype=float).ravel(), np.asarray(c.median, float).ravel()
        b = np.asarray(c.band, dtype=float) if band_ok(c.band, lags.size) else None
        b = np.full((2, lags.size), np.nan) if b is None else b
        model += [label] * lags.size
        for col, vals in zip(cols, (lags, med, b[0], b[1])):
            col.extend(vals.tolist())
        where = ("model", label)
        series.append(
            Series(
                "band",
                "lag",
                ("ln_norm_p10", "ln_norm_p90"),
                f"{label} 10–90%",
                colour,
                where=where,
                legend=False,
                opacity=0.12,
            )
        )
        series.append(
            Series(
                "line",
                "lag",
                "ln_norm_median",
                f"{label}: {regime_label(c.regime)}, {fmt_rate(c.rate)}/step",
                colour,
                dash=dash,
                where=where,
            )
        )
    n = len(curves)
    # many curves: a taller picture, the legend below the axes instead of over the curves
    return Chart(
        title=f"{DECAY_TITLE.get(of, of)}, all models (median, band 10–90%)",
        xlabel=LAG,
        ylabel=f"{NORM_OF.get(of, 'norm')} (log scale)",
        yscale="ln",
        columns=[
            Column("model", "model and layer", np.array(model, dtype=object)),
            Column("lag", "steps", np.array(cols[0])),
            Column("ln_norm_median", unit, np.array(cols[1])),
            Column("ln_norm_p10", unit, np.array(cols[2])),
            Column("ln_norm_p90", unit, np.array(cols[3])),
        ],
        series=series,
        legend="below" if n > 4 else "best",
        figsize=(7.2, 4.2) if n <= 4 else (5.4, 3.4 + 0.2 * n),
        empty="no model has a finite decay curve",
    )


#: The picture of :func:`comparison_chart` (same arguments, plus ``ax=``).
comparison_figure = figure_of(comparison_chart)

__all__ = ["SEPARATOR", "Curve", "comparison_chart", "comparison_figure", "entry_styles"]
