r"""Gradient-norm decay against lag: the curve of one layer and the per-sequence heat map.

Each figure is declared once, as the :class:`~gradscope.reporting.figures.chart.Chart` of its
data; its picture is :func:`~gradscope.reporting.figures.render.render_chart` of that chart
(``decay_figure``, ``lag_heatmap_figure``). Gradient norms stay natural logarithms
(``yscale="ln"``), the numbers :class:`gradscope.Decay` holds: their exponentials leave the
float range long before the logarithms do.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gradscope.reporting.figures.chart import Chart, Column, Grid, Series
from gradscope.reporting.figures.render import figure_of
from gradscope.reporting.figures.theme import (
    MISSING_GREY,
    NEUTRAL_GREY,
    REGIME_COLOURS,
    fmt_rate,
    fmt_value,
    heat_colors,
    regime_label,
)

#: What each kind of decay curve measures (its axis label and the unit of its ln columns).
NORM_OF = {
    "state": "‖∂s_T/∂s_{T−k}‖",
    "input": "‖∂s_T/∂x_{T−k}‖",
    "loss": "‖∂L/∂s_{T−k}‖",
}
#: Titles of the three kinds of decay curve.
DECAY_TITLE = {
    "state": "State-gradient decay",
    "input": "Input sensitivity",
    "loss": "Loss-gradient decay",
}
#: The x axis of every decay figure.
LAG = "lag k (timesteps back from the last step T)"


def band_ok(band: np.ndarray | None, n: int) -> bool:
    """Whether ``band`` is a usable ``(2, n)`` percentile band."""
    return band is not None and np.shape(band) == (2, n)


def _f(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=float).ravel()


def decay_chart(
    lags: np.ndarray,
    median: np.ndarray,
    band: np.ndarray | None,
    *,
    rate: float,
    intercept: float,
    fit_lags: tuple[int, int] | None,
    regime: str | None,
    of: str = "state",
    rate_ci: tuple[float, float] | None = None,
    half_life: float | None = None,
    n_sequences: int | None = None,
) -> Chart:
    r"""Gradient norm against lag: median and 10–90% band over sequences, with the fit.

    The fit is the line :math:`\ln\lVert\cdot\rVert \approx \text{intercept} + \text{rate}\cdot k`
    over ``fit_lags``; its slope is the decay rate in nats per step. Columns: ``lag``
    (steps), ``ln_norm_median``, ``ln_norm_p10``, ``ln_norm_p90`` (natural logs over
    sequences) and ``ln_norm_fit`` (on the fitted lags, empty elsewhere).

    Args:
        lags: ``(K,)`` lags ``k`` (steps back from the last step).
        median: ``(K,)`` median over sequences of the natural-log norm.
        band: ``(2, K)`` 10th and 90th percentiles of the natural-log norm, or None.
        rate: Fitted slope (natural log per step).
        intercept: Fitted natural-log norm at lag 0.
        fit_lags: ``(lo, hi)`` lag range of the fit (None: no fit drawn).
        regime: ``"vanishing"``, ``"exploding"``, ``"neutral"`` (or None): the colour.
        of: ``"state"``, ``"input"`` or ``"loss"``: title and axis label.
        rate_ci: 95% interval of ``rate`` (legend).
        half_life: Steps for the norm to halve (legend, when finite).
        n_sequences: Number of sequences behind the median (legend).

    Returns:
        The chart.
    """
    lags = _f(lags)
    k = lags.size
    unit = f"ln {NORM_OF.get(of, 'norm')}"
    b = np.asarray(band, dtype=float) if band_ok(band, k) else np.full((2, k), np.nan)
    fit = np.full(k, np.nan)
    if fit_lags is not None and math.isfinite(rate) and math.isfinite(intercept):
        on = (lags >= fit_lags[0]) & (lags <= fit_lags[1])
        fit[on] = intercept + rate * lags[on]
    colour = REGIME_COLOURS.get(regime or "", NEUTRAL_GREY)
    who = f"median of {n_sequences} sequences" if n_sequences else "median over sequences"
    fit_label = f"fit: {fmt_rate(rate)}/step" if math.isfinite(rate) else "fit"
    if rate_ci is not None and all(math.isfinite(c) for c in rate_ci):
        fit_label += f" [{fmt_rate(rate_ci[0])}, {fmt_rate(rate_ci[1])}]"
    if half_life is not None and math.isfinite(half_life):
        fit_label += f", half-life {fmt_value(half_life)} steps"
    band_label = "10–90% of sequences"
    return Chart(
        title=f"{DECAY_TITLE.get(of, of + ' decay')}: {regime_label(regime)}",
        xlabel=LAG,
        ylabel=f"{NORM_OF.get(of, 'norm')} (log scale)",
        yscale="ln",
        columns=[
            Column("lag", "steps", lags),
            Column("ln_norm_median", unit, _f(median)),
            Column("ln_norm_p10", unit, b[0]),
            Column("ln_norm_p90", unit, b[1]),
            Column("ln_norm_fit", unit, fit),
        ],
        series=[
            Series("band", "lag", ("ln_norm_p10", "ln_norm_p90"), band_label, colour, tip="10–90%"),
            Series("line", "lag", "ln_norm_median", who, colour, tip="median"),
            Series(
                "line",
                "lag",
                "ln_norm_fit",
                fit_label,
                "#000000",
                dash=(6, 4),
                tip="fit",
                width=1.3,
            ),
        ],
        accent=REGIME_COLOURS.get(regime or ""),
        empty="no finite gradient norm at any lag",
    )


def lag_heatmap_chart(
    log_norms: np.ndarray, lags: np.ndarray | None = None, *, of: str = "state"
) -> Chart:
    """Log gradient norm over (sequence × lag): one row per sequence.

    Args:
        log_norms: ``(K, B)`` natural-log norms (NaN where a sequence has no value).
        lags: ``(K,)`` lags (default ``0..K-1``).
        of: ``"state"``, ``"input"`` or ``"loss"`` (title and colour-bar label).

    Returns:
        A heat-map chart: rows are sequences (the first at the top), columns lags, values
        ``ln_norm``.
    """
    data = np.asarray(log_norms, dtype=float)
    if data.ndim != 2:
        data = data.reshape(len(data), -1) if data.ndim else np.zeros((0, 0))
    k, b = data.shape
    lags = np.arange(k) if lags is None else _f(lags)
    name = NORM_OF.get(of, "norm")
    return Chart(
        title=f"{DECAY_TITLE.get(of, of)} per sequence",
        xlabel=LAG,
        ylabel=name,
        grid=Grid(
            x=Column("lag", "steps", lags),
            y=Column("sequence", "index in the batch", np.arange(b)),
            z=Column("ln_norm", f"ln {name}", data.T),
            scale="ln",
            colors=heat_colors(),
            missing=MISSING_GREY,
        ),
        empty="no finite gradient norm in any sequence",
    )


#: The pictures of the two charts (same arguments, plus ``ax=``).
decay_figure = figure_of(decay_chart)
lag_heatmap_figure = figure_of(lag_heatmap_chart)

__all__ = [
    "DECAY_TITLE",
    "LAG",
    "NORM_OF",
    "band_ok",
    "decay_chart",
    "decay_figure",
    "lag_heatmap_chart",
    "lag_heatmap_figure",
]
