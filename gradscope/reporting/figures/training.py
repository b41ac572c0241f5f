"""The Monitor's views over training: the gradient heatmap and the decay rate per step."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradscope.reporting.figures.axes import log10_ticks
from gradscope.reporting.figures.theme import (
    HEAT_CMAP,
    MISSING_GREY,
    NEUTRAL_GREY,
    REGIME_COLOURS,
    REGIME_MARKERS,
    new_axes,
    no_data,
    palette,
    regime_label,
    styled,
)


@styled
def training_heatmap_figure(
    norms: np.ndarray,
    steps: np.ndarray,
    *,
    ax: Axes | None = None,
) -> Figure:
    r"""Log loss-gradient norm over (training step × timestep), from a Monitor's history.

    Args:
        norms: ``(n_sampled, T+1)`` batch-mean :math:`\lVert\partial L/\partial s_t\rVert`
            (columns ``t = 0..T``; NaN where a sampled batch was shorter).
        steps: ``(n_sampled,)`` training-step numbers of the rows.
        ax: Axes to draw into.

    Returns:
        The figure drawn on.
    """
    fig, ax = new_axes(ax)
    title = "Loss gradient over training"
    data = np.asarray(norms, dtype=float)
    steps = np.asarray(steps)
    if data.ndim != 2 or data.size == 0:
        no_data(ax, "the history holds no sampled step", title)
        return fig
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(data > 0, np.log10(np.where(data > 0, data, 1.0)), np.nan)
    if not np.isfinite(logs).any():
        no_data(ax, "every recorded gradient norm is zero or non-finite", title)
        return fig
    n, t1 = logs.shape
    cmap = mpl.colormaps[HEAT_CMAP].with_extremes(bad=MISSING_GREY)
    img = np.ma.masked_invalid(logs)
    im = ax.imshow(
        img,
        aspect="auto",
        interpolation="nearest",
        cmap=cmap,
        origin="lower",
        extent=(-0.5, t1 - 0.5, -0.5, n - 0.5),
    )
    cb = fig.colorbar(im, ax=ax, pad=0.02)
    pos, labels = log10_ticks(float(img.min()), float(img.max()), max_ticks=6)
    cb.set_ticks(pos, labels=labels)
    cb.set_label(r"$\Vert\partial L/\partial s_t\Vert$, batch mean")
    rows = np.arange(0, n, max(1, math.ceil(n / 8)))
    ax.set_yticks(rows, [str(int(steps[r])) for r in rows] if steps.size == n else rows)
    ax.set_xlabel(r"timestep t (state $s_t$; t = 0 is the initial state)")
    ax.set_ylabel("training step")
    ax.grid(False)
    ax.set_title(title + ("  (grey: no data)" if np.isnan(logs).any() else ""))
    return fig


@styled
def training_rate_figure(
    steps: np.ndarray,
    rates: np.ndarray,
    regimes: Sequence[str] | None = None,
    *,
    rate_ci: np.ndarray | None = None,
    loss_rates: np.ndarray | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Fitted decay rates at each sampled training step.

    The state-gradient rate (markers by regime, with its 95% interval) where it was fitted,
    and the real loss-gradient rate (a line) where the history holds it.

    Args:
        steps: ``(n,)`` training-step numbers.
        rates: ``(n,)`` state decay rates (natural log per step; NaN where not fitted).
        regimes: ``n`` regime names (markers and colours), or None.
        rate_ci: ``(n, 2)`` 95% intervals of ``rates``, or None.
        loss_rates: ``(n,)`` loss-gradient decay rates, or None.
        ax: Axes to draw into.

    Returns:
        The figure drawn on.
    """
    fig, ax = new_axes(ax)
    title = "Decay rate over training"
    steps = np.asarray(steps, dtype=float)
    rates = np.asarray(rates, dtype=float)
    loss = None if loss_rates is None else np.asarray(loss_rates, dtype=float)
    has_loss = loss is not None and loss.shape == steps.shape and np.isfinite(loss).any()
    if steps.size == 0 or not (np.isfinite(rates).any() or has_loss):
        no_data(ax, "no sampled step has a finite decay rate", title)
        return fig
    ok = np.isfinite(rates)
    if rate_ci is not None and np.shape(rate_ci) == (steps.size, 2):
        ci = np.asarray(rate_ci, dtype=float)
        cok = ok & np.isfinite(ci).all(axis=1)
        ax.fill_between(
            steps, ci[:, 0], ci[:, 1], where=cok, color="#999999", alpha=0.25, lw=0, label="95% CI"
        )
    ax.plot(steps[ok], rates[ok], color="#555555", lw=1.2, zorder=2)
    regimes = list(regimes) if regimes is not None else [""] * steps.size
    for reg in dict.fromkeys(regimes):
        sel = np.array([r == reg for r in regimes]) & ok
        if not sel.any():
            continue
        ax.scatter(
            steps[sel],
            rates[sel],
            marker=REGIME_MARKERS.get(reg, "o"),
            color=REGIME_COLOURS.get(reg, NEUTRAL_GREY),
            s=36,
            zorder=3,
            label=f"state: {regime_label(reg)}" if reg else "state rate",
        )
    if has_loss:
        lok = np.isfinite(loss)
        ax.plot(
            steps[lok],
            loss[lok],
            color=palette(5)[4],
            ls="--",
            lw=1.4,
            marker="s",
            ms=3.5,
            label="loss gradient ∂L/∂s_t",
        )
    ax.axhline(0.0, color="black", lw=0.8, ls=":")
    ax.set_xlabel("training step")
    ax.set_ylabel("decay rate (nats per timestep)")
    ax.set_title(title)
    ax.legend(loc="best")
    return fig
