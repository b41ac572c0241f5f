"""Several models or layers side by side: their decay curves on one axes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradscope.reporting.figures.axes import set_log10_axis
from gradscope.reporting.figures.decay import DECAY_TITLE, DECAY_YLABEL, band_ok
from gradscope.reporting.figures.theme import (
    LINESTYLES,
    LN10,
    fmt_rate,
    new_axes,
    no_data,
    palette,
    plain,
    regime_label,
    styled,
)


# --------------------------------------------------------------------------- comparison
class Curve(NamedTuple):
    """One decay curve of a comparison (fields as in :class:`gradscope.analysis.decay.Decay`)."""

    lags: np.ndarray
    median: np.ndarray
    band: np.ndarray | None
    rate: float
    regime: str | None


@styled
def comparison_figure(
    curves: Mapping[str, Curve], *, of: str = "state", ax: Axes | None = None
) -> Figure:
    """Decay curves of several models on one axes: the classic vanilla vs LSTM vs GRU view.

    Each model gets its own colour *and* line style; the legend names its regime and rate.

    Args:
        curves: ``{label: Curve}`` in display order.
        of: ``"state"``, ``"input"`` or ``"loss"``: which decay (title and axis label).
        ax: Axes to draw into.

    Returns:
        The figure drawn on.
    """
    # many curves: a taller figure, the legend below the axes instead of over the curves
    n = len(curves)
    fig, ax = new_axes(ax, (7.2, 4.2) if n <= 4 else (5.4, 3.4 + 0.2 * n))
    title = f"{DECAY_TITLE.get(of, of)}, all models"
    shown = []
    colours = palette(len(curves))
    for i, (label, c) in enumerate(curves.items()):
        med = np.asarray(c.median, dtype=float) / LN10
        lags = np.asarray(c.lags, dtype=float)
        if not np.isfinite(med).any():
            continue
        ls = LINESTYLES[i % len(LINESTYLES)]
        if band_ok(c.band, lags.size):
            b = np.asarray(c.band, dtype=float) / LN10
            ok = np.isfinite(b).all(axis=0)
            ax.fill_between(lags, b[0], b[1], where=ok, color=colours[i], alpha=0.12, lw=0)
            shown.append(b[:, ok].ravel())
        ax.plot(
            lags,
            med,
            color=colours[i],
            ls=ls,
            lw=2,
            label=f"{plain(label, 44)}: {regime_label(c.regime)}, {fmt_rate(c.rate)}/step",
        )
        shown.append(med)
    if not shown:
        no_data(ax, "no model has a finite decay curve", title)
        return fig
    ax.set_xlabel("lag k (timesteps back from the last step T)")
    ax.set_ylabel(DECAY_YLABEL.get(of, DECAY_YLABEL["state"]))
    set_log10_axis(ax, np.concatenate([np.ravel(s) for s in shown]))
    ax.set_title(plain(title) + " (median, band 10–90%)")
    if n > 4:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), borderaxespad=0)
    else:
        ax.legend(loc="best")
    return fig
