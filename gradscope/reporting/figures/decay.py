"""Gradient-norm decay against lag: curves per layer and the lag heatmap."""

from __future__ import annotations

import math

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gradscope.reporting.figures.axes import log10_ticks, set_log10_axis
from gradscope.reporting.figures.theme import (
    HEAT_CMAP,
    LN10,
    MISSING_GREY,
    NEUTRAL_GREY,
    REGIME_COLOURS,
    fmt_rate,
    fmt_value,
    new_axes,
    no_data,
    regime_label,
    styled,
)

# --------------------------------------------------------------------------- decay
#: Axis labels of the three kinds of decay curve.
DECAY_YLABEL = {
    "state": r"$\Vert\partial s_T/\partial s_{T-k}\Vert$ (log scale)",
    "input": r"$\Vert\partial s_T/\partial x_{T-k}\Vert$ (log scale)",
    "loss": r"$\Vert\partial L/\partial s_{T-k}\Vert$ (log scale)",
}
#: Titles of the three kinds of decay curve.
DECAY_TITLE = {
    "state": "State-gradient decay",
    "input": "Input sensitivity",
    "loss": "Loss-gradient decay",
}


def band_ok(band: np.ndarray | None, n: int) -> bool:
    """Whether ``band`` is a usable ``(2, n)`` percentile band."""
    return band is not None and np.shape(band) == (2, n)


@styled
def decay_figure(
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
    ax: Axes | None = None,
) -> Figure:
    r"""Gradient norm against lag: median and 10–90% band over sequences, with the fit.

    The fit is the line :math:`\ln\lVert\cdot\rVert \approx \text{intercept} + \text{rate}\cdot k`
    over ``fit_lags``; its slope is the decay rate in nats per step.

    Args:
        lags: ``(K,)`` lags ``k`` (steps back from the last step).
        median: ``(K,)`` median over sequences of the natural-log norm.
        band: ``(2, K)`` 10th and 90th percentiles of the natural-log norm, or None.
        rate: Fitted slope (natural log per step).
        intercept: Fitted natural-log norm at lag 0.
        fit_lags: ``(lo, hi)`` lag range of the fit (None: no fit drawn).
        regime: ``"vanishing"``, ``"exploding"``, ``"neutral"`` (or None).
        of: ``"state"``, ``"input"`` or ``"loss"``: picks the axis label.
        rate_ci: 95% interval of ``rate``.
        half_life: Steps for the norm to halve (shown in the legend when finite).
        n_sequences: Number of sequences behind the median (legend).
        ax: Axes to draw into (default: a new figure).

    Returns:
        The figure drawn on.
    """
    fig, ax = new_axes(ax)
    title = DECAY_TITLE.get(of, f"{of} decay")
    lags = np.asarray(lags, dtype=float)
    med = np.asarray(median, dtype=float) / LN10
    if lags.size == 0 or not np.isfinite(med).any():
        no_data(ax, "no finite gradient norm at any lag", title)
        return fig
    colour = REGIME_COLOURS.get(regime or "", NEUTRAL_GREY)
    shown = [med]
    if band_ok(band, lags.size):
        b = np.asarray(band, dtype=float) / LN10
        ok = np.isfinite(b).all(axis=0)
        ax.fill_between(
            lags, b[0], b[1], where=ok, color=colour, alpha=0.22, lw=0, label="10–90% of sequences"
        )
        shown.append(b[:, ok].ravel())
    who = f"median of {n_sequences} sequences" if n_sequences else "median over sequences"
    ax.plot(lags, med, color=colour, lw=2, label=who)
    if fit_lags is not None and math.isfinite(rate) and math.isfinite(intercept):
        lo, hi = fit_lags
        xs = np.linspace(lo, hi, 50)
        ys = (intercept + rate * xs) / LN10
        ci = ""
        if rate_ci is not None and all(math.isfinite(c) for c in rate_ci):
            ci = f" [{fmt_rate(rate_ci[0])}, {fmt_rate(rate_ci[1])}]"
        hl = ""
        if half_life is not None and math.isfinite(half_life):
            hl = f", half-life {fmt_value(half_life)} steps"
        ax.plot(xs, ys, color="black", ls="--", lw=1.3, label=f"fit: {fmt_rate(rate)}/step{ci}{hl}")
        shown.append(ys)
    ax.set_title(f"{title}: {regime_label(regime)}", color=colour if regime else None)
    ax.set_xlabel("lag k (timesteps back from the last step T)")
    ax.set_ylabel(DECAY_YLABEL.get(of, "norm (log scale)"))
    set_log10_axis(ax, np.concatenate([np.ravel(s) for s in shown]))
    ax.set_xlim(lags.min(), max(lags.max(), lags.min() + 1))
    ax.legend(loc="best")
    return fig


@styled
def lag_heatmap_figure(
    log_norms: np.ndarray,
    lags: np.ndarray | None = None,
    *,
    of: str = "state",
    ax: Axes | None = None,
) -> Figure:
    """Log gradient norm over (lag × sequence): one row per sequence.

    Args:
        log_norms: ``(K, B)`` natural-log norms (NaN where a sequence is too short).
        lags: ``(K,)`` lags (default ``0..K-1``).
        of: ``"state"``, ``"input"`` or ``"loss"`` (colour-bar label).
        ax: Axes to draw into.

    Returns:
        The figure drawn on.
    """
    fig, ax = new_axes(ax)
    data = np.asarray(log_norms, dtype=float)
    title = f"{DECAY_TITLE.get(of, of)} per sequence"
    if data.ndim != 2 or data.size == 0 or not np.isfinite(data).any():
        no_data(ax, "no finite gradient norm in any sequence", title)
        return fig
    k, b = data.shape
    lags = np.arange(k) if lags is None else np.asarray(lags)
    img = np.ma.masked_invalid(data.T / LN10)
    cmap = mpl.colormaps[HEAT_CMAP].with_extremes(bad=MISSING_GREY)
    im = ax.imshow(
        img,
        aspect="auto",
        interpolation="nearest",
        cmap=cmap,
        extent=(lags[0] - 0.5, lags[-1] + 0.5, b - 0.5, -0.5),
    )
    cb = fig.colorbar(im, ax=ax, pad=0.02)
    pos, labels = log10_ticks(float(img.min()), float(img.max()), max_ticks=6)
    cb.set_ticks(pos, labels=labels)
    cb.set_label(DECAY_YLABEL.get(of, "norm").replace(" (log scale)", ""))
    ax.set_xlabel("lag k (timesteps back from the last step T)")
    ax.set_ylabel("sequence")
    ax.yaxis.set_major_locator(MaxNLocator(nbins=min(b, 8), integer=True))
    ax.grid(False)
    if np.isnan(data).any():
        title += "  (grey: no data)"
    ax.set_title(title)
    return fig
