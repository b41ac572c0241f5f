"""The data of the figures a person hovers over, as :class:`~.figures.chart.Chart`.

Each function takes the same keyword arguments as the matplotlib figure of the same panel
(:mod:`gradscope.reporting.figures`; ``ax`` is accepted and ignored), so one extraction of the
record feeds the PDF's picture, the HTML report's interactive figure and its CSV/JSON
download. Gradient norms stay natural logarithms (``yscale="ln"``), the numbers the analysis
holds (:class:`gradscope.Decay`): their exponentials leave the float range long before the
logarithms do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib as mpl
import numpy as np

from gradscope.reporting.figures.chart import Chart, Column, Grid, Series
from gradscope.reporting.figures.comparison import Curve
from gradscope.reporting.figures.decay import DECAY_TITLE, band_ok
from gradscope.reporting.figures.theme import (
    HEAT_CMAP,
    MISSING_GREY,
    NEUTRAL_GREY,
    REGIME_COLOURS,
    fmt_rate,
    fmt_value,
    palette,
    regime_label,
)

#: What each kind of decay curve measures (the unit of its ln-norm columns).
NORM_OF = {
    "state": "‖∂s_T/∂s_{T−k}‖",
    "input": "‖∂s_T/∂x_{T−k}‖",
    "loss": "‖∂L/∂s_{T−k}‖",
}
#: Marker letters of the regimes, as the interactive figures draw them.
REGIME_MARKS = {"vanishing": "v", "exploding": "^", "neutral": "o"}
#: Dash patterns (pixels) cycled over the curves of a comparison, like its line styles.
DASHES: tuple[tuple[float, ...], ...] = ((), (7, 4), (8, 3, 2, 3), (2, 3), (6, 2, 2, 2, 2, 2))
_LAG = "lag k (timesteps back from the last step T)"


def heat_colors(n: int = 64) -> tuple[str, ...]:
    """``n`` colours of the heat maps' colour map (low to high), as ``#rrggbb``."""
    cmap = mpl.colormaps[HEAT_CMAP]
    return tuple(mpl.colors.to_hex(cmap(i / (n - 1))) for i in range(n))


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
    ax: Any = None,
) -> Chart:
    r"""Gradient norm against lag (as :func:`~gradscope.reporting.figures.decay_figure`).

    Columns: ``lag`` (steps), ``ln_norm_median``, ``ln_norm_p10``, ``ln_norm_p90`` (natural
    logs over sequences) and ``ln_norm_fit`` = intercept + rate·k on the fitted lags (empty
    elsewhere).

    Args:
        lags: ``(K,)`` lags.
        median: ``(K,)`` median natural-log norm.
        band: ``(2, K)`` 10th and 90th percentiles, or None.
        rate: Fitted slope (natural log per step).
        intercept: Fitted natural-log norm at lag 0.
        fit_lags: ``(lo, hi)`` of the fit, or None.
        regime: Regime name (colour).
        of: ``"state"``, ``"input"`` or ``"loss"``.
        rate_ci: 95% interval of ``rate`` (legend).
        half_life: Steps to halve (legend).
        n_sequences: Sequences behind the median (legend).
        ax: Ignored (the figure's signature).

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
    return Chart(
        title=f"{DECAY_TITLE.get(of, of + ' decay')}: {regime_label(regime)}",
        xlabel=_LAG,
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
            Series(
                "band",
                "lag",
                ("ln_norm_p10", "ln_norm_p90"),
                "10–90% of sequences",
                colour,
                tip="10–90%",
            ),
            Series("line", "lag", "ln_norm_median", who, colour, tip="median"),
            Series("line", "lag", "ln_norm_fit", fit_label, "#000000", dash=(6, 4), tip="fit"),
        ],
    )


def lag_heatmap_chart(
    log_norms: np.ndarray, lags: np.ndarray | None = None, *, of: str = "state", ax: Any = None
) -> Chart:
    """Log gradient norm per sequence and lag (as :func:`~.figures.lag_heatmap_figure`).

    Args:
        log_norms: ``(K, B)`` natural-log norms (NaN where a sequence has no value).
        lags: ``(K,)`` lags (default ``0..K-1``).
        of: ``"state"``, ``"input"`` or ``"loss"``.
        ax: Ignored.

    Returns:
        A heat-map chart: rows are sequences, columns lags, values ``ln_norm``.
    """
    data = np.asarray(log_norms, dtype=float)
    if data.ndim != 2:
        data = data.reshape(len(data), -1)
    k, b = data.shape
    lags = np.arange(k) if lags is None else _f(lags)
    name = NORM_OF.get(of, "norm")
    return Chart(
        title=f"{DECAY_TITLE.get(of, of)} per sequence",
        xlabel=_LAG,
        ylabel=name,
        grid=Grid(
            x=Column("lag", "steps", lags),
            y=Column("sequence", "index in the batch", np.arange(b)),
            z=Column("ln_norm", f"ln {name}", data.T),
            scale="ln",
            colors=heat_colors(),
            missing=MISSING_GREY,
        ),
    )


def training_heatmap_chart(norms: np.ndarray, steps: np.ndarray, *, ax: Any = None) -> Chart:
    r"""Loss-gradient norm over training step × timestep (as :func:`~.training_heatmap_figure`).

    Args:
        norms: ``(n_sampled, T+1)`` batch-mean :math:`\lVert\partial L/\partial s_t\rVert`.
        steps: ``(n_sampled,)`` training steps of the rows.
        ax: Ignored.

    Returns:
        A heat-map chart: rows are training steps (first at the bottom), columns timesteps.
    """
    data = np.asarray(norms, dtype=float)
    n, t1 = data.shape
    steps = _f(steps)
    return Chart(
        title="Loss gradient over training",
        xlabel="timestep t (state s_t; t = 0 is the initial state)",
        ylabel="‖∂L/∂s_t‖, batch mean",
        grid=Grid(
            x=Column("t", "timestep", np.arange(t1)),
            y=Column("training_step", "step", steps if steps.size == n else np.arange(n)),
            z=Column("norm", "‖∂L/∂s_t‖, batch mean", data),
            scale="log",
            colors=heat_colors(),
            missing=MISSING_GREY,
            y_up=True,
        ),
    )


def training_rate_chart(
    steps: np.ndarray,
    rates: np.ndarray,
    regimes: Sequence[str] | None = None,
    *,
    rate_ci: np.ndarray | None = None,
    loss_rates: np.ndarray | None = None,
    ax: Any = None,
) -> Chart:
    """Fitted decay rates at each sampled training step (as :func:`~.training_rate_figure`).

    Args:
        steps: ``(n,)`` training steps.
        rates: ``(n,)`` state decay rates (NaN where not fitted).
        regimes: ``n`` regime names, or None.
        rate_ci: ``(n, 2)`` 95% intervals of ``rates``, or None.
        loss_rates: ``(n,)`` loss-gradient decay rates, or None.
        ax: Ignored.

    Returns:
        The chart: columns ``training_step``, ``state_rate``, ``state_rate_ci_low``/``high``,
        ``regime``, ``loss_rate``.
    """
    steps = _f(steps)
    n = steps.size
    rates = _f(rates)[:n]
    ci = np.asarray(rate_ci, dtype=float) if rate_ci is not None else None
    if ci is None or ci.shape != (n, 2):
        ci = np.full((n, 2), np.nan)
    loss = _f(loss_rates)[:n] if loss_rates is not None else np.full(n, np.nan)
    if loss.size != n:
        loss = np.full(n, np.nan)
    regs = [str(r) for r in regimes][:n] if regimes is not None else [""] * n
    per = "nats per timestep"
    styles = {r: (REGIME_COLOURS[r], REGIME_MARKS[r]) for r in REGIME_COLOURS}
    series = [
        Series(
            "band",
            "training_step",
            ("state_rate_ci_low", "state_rate_ci_high"),
            "95% CI",
            "#999999",
        ),
        Series(
            "line",
            "training_step",
            "state_rate",
            "state rate",
            "#555555",
            marker="o",
            by="regime",
            styles=styles,
        ),
    ]
    if np.isfinite(loss).any():
        series.append(
            Series(
                "line",
                "training_step",
                "loss_rate",
                "loss gradient ∂L/∂s_t",
                palette(5)[4],
                dash=(6, 4),
                marker="s",
            )
        )
    return Chart(
        title="Decay rate over training",
        xlabel="training step",
        ylabel="decay rate (nats per timestep)",
        columns=[
            Column("training_step", "step", steps),
            Column("state_rate", per, rates),
            Column("state_rate_ci_low", per, ci[:, 0]),
            Column("state_rate_ci_high", per, ci[:, 1]),
            Column("regime", "regime at that step", np.array(regs, dtype=object)),
            Column("loss_rate", per, loss),
        ],
        series=series,
        hlines=(0.0,),
    )


def comparison_chart(curves: Mapping[str, Curve], *, ax: Any = None) -> Chart:
    """State-gradient decay of several models on one axes (as :func:`~.comparison_figure`).

    Args:
        curves: ``{label: Curve}`` in display order.
        ax: Ignored.

    Returns:
        The chart, one long table: ``model``, ``lag``, ``ln_norm_median``, ``ln_norm_p10``,
        ``ln_norm_p90`` (one row per model and lag).
    """
    colours = palette(len(curves))
    model: list[str] = []
    cols: list[list[float]] = [[], [], [], []]
    series: list[Series] = []
    unit = f"ln {NORM_OF['state']}"
    for i, (label, c) in enumerate(curves.items()):
        lags, med = _f(c.lags), _f(c.median)
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
                colours[i],
                where=where,
                legend=False,
            )
        )
        series.append(
            Series(
                "line",
                "lag",
                "ln_norm_median",
                f"{label}: {regime_label(c.regime)}, {fmt_rate(c.rate)}/step",
                colours[i],
                dash=DASHES[i % len(DASHES)],
                where=where,
            )
        )
    return Chart(
        title="State-gradient decay, all models (median, band 10–90%)",
        xlabel=_LAG,
        ylabel=f"{NORM_OF['state']} (log scale)",
        yscale="ln",
        columns=[
            Column("model", "model and layer", np.array(model, dtype=object)),
            Column("lag", "steps", np.array(cols[0])),
            Column("ln_norm_median", unit, np.array(cols[1])),
            Column("ln_norm_p10", unit, np.array(cols[2])),
            Column("ln_norm_p90", unit, np.array(cols[3])),
        ],
        series=series,
    )


__all__ = [
    "comparison_chart",
    "decay_chart",
    "heat_colors",
    "lag_heatmap_chart",
    "training_heatmap_chart",
    "training_rate_chart",
]
