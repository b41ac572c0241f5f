"""Why gates keep gradients alive: gate distributions, carries, path shares, vanilla factors.

Inputs are the arrays of :class:`gradscope.analysis.gates.GateView` (quantiles in the order
5, 25, 50, 75, 95%; logs natural).
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradscope.reporting.figures.axes import set_log10_axis
from gradscope.reporting.figures.theme import (
    NEUTRAL_GREY,
    REGIME_COLOURS,
    new_axes,
    no_data,
    palette,
    styled,
)

LN10 = math.log(10.0)
GATE_NAMES = {
    "i": "input gate i",
    "f": "forget gate f",
    "o": "output gate o",
    "r": "reset gate r",
    "z": "update gate z",
    "φ'": "φ′(a_t) (tanh′: 1 unsaturated, 0 saturated)",
}


def _band(ax: Axes, x: np.ndarray, q: np.ndarray, colour: str, label: str) -> None:
    ax.fill_between(x, q[:, 1], q[:, 3], color=colour, alpha=0.25, lw=0)
    ax.plot(x, q[:, 0], color=colour, lw=0.6, alpha=0.6, ls=":")
    ax.plot(x, q[:, 4], color=colour, lw=0.6, alpha=0.6, ls=":")
    ax.plot(x, q[:, 2], color=colour, lw=1.8, label=label)


@styled
def gate_distribution_figure(gates: dict[str, np.ndarray], *, ax: Axes | None = None) -> Figure:
    """Per-timestep distribution of every gate over units and sequences.

    Args:
        gates: Gate name -> ``(T, 5)`` quantiles per step.
        ax: Axes to draw into.
    """
    fig, ax = new_axes(ax)
    title = "Gates over time (median, 25–75% band, 5–95% dotted)"
    if not gates:
        no_data(ax, "no gate recorded", title)
        return fig
    for (name, q), colour in zip(gates.items(), palette(len(gates))):
        q = np.asarray(q, dtype=float)
        _band(ax, np.arange(1, q.shape[0] + 1), q, colour, GATE_NAMES.get(name, name))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("timestep t")
    ax.set_ylabel("gate value (over units × sequences)")
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    return fig


@styled
def carry_figure(
    lags: np.ndarray,
    carry: np.ndarray,
    carry_max: np.ndarray,
    decay_lags: np.ndarray | None,
    decay_median: np.ndarray | None,
    gate: str,
    *,
    ax: Axes | None = None,
) -> Figure:
    """The carry ``∏ gate`` against lag beside the full ``‖∂s_T/∂s_{T−k}‖`` (log axis).

    Args:
        lags: ``(K,)`` lags.
        carry: ``(K, 5)`` quantiles over units and sequences of the log carry.
        carry_max: ``(K,)`` log carry of the best unit (median over sequences).
        decay_lags: Lags of the state decay curve, or None.
        decay_median: Its median log norm (natural log), or None.
        gate: ``"f"`` or ``"z"``.
        ax: Axes to draw into.
    """
    fig, ax = new_axes(ax)
    title = f"The gradient highway: carry ∏{gate} vs the full gradient"
    c = np.asarray(carry, dtype=float) / LN10
    if c.size == 0 or not np.isfinite(c).any():
        no_data(ax, "no carry recorded", title)
        return fig
    lags = np.asarray(lags)
    green = REGIME_COLOURS["neutral"]
    ax.fill_between(lags, c[:, 1], c[:, 3], color=green, alpha=0.2, lw=0)
    ax.plot(lags, c[:, 2], color=green, lw=1.8, label=f"∏{gate}, median unit (band 25–75%)")
    best = np.asarray(carry_max, dtype=float) / LN10
    ax.plot(lags, best, color=green, lw=1.2, ls="--", label=f"∏{gate}, best unit")
    shown = [c[:, 1:4].ravel(), best]
    if decay_median is not None and np.size(decay_median):
        d = np.asarray(decay_median, dtype=float) / LN10
        ax.plot(decay_lags, d, color=REGIME_COLOURS["vanishing"], lw=1.8, label="‖∂s_T/∂s_{T−k}‖₂")
        shown.append(d)
    set_log10_axis(ax, np.concatenate(shown))
    ax.set_xlabel("lag k (steps back from the last step)")
    ax.set_ylabel("factor after k steps (log scale)")
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize="small")
    return fig


@styled
def path_share_figure(
    lags: np.ndarray, share: np.ndarray, path: str, *, ax: Axes | None = None
) -> Figure:
    """Share of ``‖∂s_T/∂s_{T−k}‖`` carried by the additive path, against lag.

    Args:
        lags: ``(L,)`` lags.
        share: ``(L,)`` shares in ``[0, 1]``.
        path: ``"cell"`` or ``"update"``.
        ax: Axes to draw into.
    """
    fig, ax = new_axes(ax)
    what = "cell path diag(f) on c" if path == "cell" else "update path diag(z)"
    title = f"Share of the {what}"
    s = np.asarray(share, dtype=float)
    if s.size == 0 or not np.isfinite(s).any():
        no_data(ax, "no path share measured", title)
        return fig
    green, blue = REGIME_COLOURS["neutral"], REGIME_COLOURS["vanishing"]
    ax.fill_between(lags, 0, s, color=green, alpha=0.35, lw=0, label="additive path, every step")
    ax.fill_between(lags, s, 1, color=blue, alpha=0.2, lw=0, label="paths through the weights")
    ax.plot(lags, s, color=green, lw=1.8)
    ax.set_ylim(0, 1)
    ax.set_xlim(lags[0], lags[-1] if len(lags) > 1 else lags[0] + 1)
    ax.set_xlabel("lag k (steps back from the last step)")
    ax.set_ylabel("share of ‖∂s_T/∂s_{T−k}‖")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize="small")
    return fig


@styled
def repeated_factor_figure(
    steps: np.ndarray, factor: np.ndarray, weight_norm: float, *, ax: Axes | None = None
) -> Figure:
    """Vanilla RNN: ``‖diag(φ′(a_t)) W_hh‖₂`` per step against ``‖W_hh‖₂`` and 1.

    Args:
        steps: ``(S,)`` 0-based steps.
        factor: ``(S, 5)`` quantiles over sequences of the factor's norm.
        weight_norm: ``‖W_hh‖₂``.
        ax: Axes to draw into.
    """
    fig, ax = new_axes(ax)
    title = "The repeated factor diag(φ′) W_hh"
    q = np.asarray(factor, dtype=float)
    if q.size == 0 or not np.isfinite(q).any():
        no_data(ax, "no factor norm measured", title)
        return fig
    x = np.asarray(steps) + 1
    _band(ax, x, q, REGIME_COLOURS["vanishing"], "‖diag(φ′_t) W_hh‖₂ (over sequences)")
    ax.axhline(
        weight_norm, color=NEUTRAL_GREY, ls="--", lw=1.2, label=f"‖W_hh‖₂ = {weight_norm:.2f}"
    )
    ax.axhline(1.0, color="#333333", ls=":", lw=1.0, label="1: neither shrinks nor grows")
    top = max(float(np.nanmax(q)), weight_norm, 1.0)
    ax.set_ylim(0, 1.1 * top)
    ax.set_xlabel("timestep t")
    ax.set_ylabel("one-step norm")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    return fig


__all__ = [
    "carry_figure",
    "gate_distribution_figure",
    "path_share_figure",
    "repeated_factor_figure",
]
