"""Why gates keep gradients alive: gate distributions, carries, path shares, vanilla factors.

Inputs are the arrays of :class:`gradscope.analysis.gates.GateView` (quantiles in the order
5, 25, 50, 75, 95%; logs natural). The carry is a chart (:func:`carry_chart`, drawn by
:func:`~gradscope.reporting.figures.render.render_chart`). The path share, the distributions
and the repeated factor have no chart: they are pictures on screen and on paper alike, drawn
by hand here (the share fills between its curve and 0 and 1; the others draw a 25–75% band
with dotted 5–95% lines per gate). Making one interactive means writing its chart in place
of its figure function, as for the carry.
"""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradscope.reporting.figures.chart import Chart, Column, Series
from gradscope.reporting.figures.render import figure_of
from gradscope.reporting.figures.theme import (
    NEUTRAL_GREY,
    REGIME_COLOURS,
    new_axes,
    no_data,
    palette,
    styled,
)

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


def _on(grid: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``y`` (given at ``x``) placed on the sorted ``grid``; NaN where ``x`` has no value."""
    out = np.full(grid.size, np.nan)
    out[np.searchsorted(grid, x)] = y
    return out


def carry_chart(
    lags: np.ndarray,
    carry: np.ndarray,
    carry_max: np.ndarray,
    decay_lags: np.ndarray | None,
    decay_median: np.ndarray | None,
    gate: str,
) -> Chart:
    """The carry ``∏ gate`` against lag beside the full ``‖∂s_T/∂s_{T−k}‖`` (log axis).

    Args:
        lags: ``(K,)`` lags.
        carry: ``(K, 5)`` quantiles over units and sequences of the log carry (the 25th,
            50th and 75th are plotted).
        carry_max: ``(K,)`` log carry of the best unit (median over sequences).
        decay_lags: Lags of the state decay curve, or None.
        decay_median: Its median log norm (natural log), or None.
        gate: ``"f"`` or ``"z"``.

    Returns:
        The chart (natural logs): ``lag``, ``ln_carry_p25``/``median``/``p75``,
        ``ln_carry_best``, ``ln_norm_median``.
    """
    lags = np.asarray(lags, dtype=float)
    c = np.asarray(carry, dtype=float).reshape(lags.size, -1)
    if c.shape[1] < 5:
        c = np.full((lags.size, 5), np.nan)
    grid = lags
    full = np.full(lags.size, np.nan)
    if decay_median is not None and decay_lags is not None and np.size(decay_median):
        dl = np.asarray(decay_lags, dtype=float)
        grid = np.unique(np.concatenate([lags, dl]))
        full = _on(grid, dl, np.asarray(decay_median, dtype=float))
    unit = f"ln ∏{gate}"
    green, blue = REGIME_COLOURS["neutral"], REGIME_COLOURS["vanishing"]
    return Chart(
        title=f"The gradient highway: carry ∏{gate} vs the full gradient",
        xlabel="lag k (steps back from the last step)",
        ylabel="factor after k steps (log scale)",
        yscale="ln",
        columns=[
            Column("lag", "steps", grid),
            Column("ln_carry_p25", unit, _on(grid, lags, c[:, 1])),
            Column("ln_carry_median", unit, _on(grid, lags, c[:, 2])),
            Column("ln_carry_p75", unit, _on(grid, lags, c[:, 3])),
            Column("ln_carry_best", unit, _on(grid, lags, np.asarray(carry_max, dtype=float))),
            Column("ln_norm_median", "ln ‖∂s_T/∂s_{T−k}‖", full),
        ],
        series=[
            Series(
                "band",
                "lag",
                ("ln_carry_p25", "ln_carry_p75"),
                "25–75%",
                green,
                legend=False,
                tip=f"∏{gate} 25–75%",
                opacity=0.2,
            ),
            Series(
                "line",
                "lag",
                "ln_carry_median",
                f"∏{gate}, median unit (band 25–75%)",
                green,
                tip=f"∏{gate} median unit",
                width=1.8,
            ),
            Series(
                "line",
                "lag",
                "ln_carry_best",
                f"∏{gate}, best unit",
                green,
                dash=(6, 4),
                tip=f"∏{gate} best unit",
                width=1.2,
            ),
            Series("line", "lag", "ln_norm_median", "‖∂s_T/∂s_{T−k}‖₂", blue, width=1.8),
        ],
        legend="lower left",
        empty="no carry recorded",
    )


#: The picture of :func:`carry_chart` (same arguments, plus ``ax=``).
carry_figure = figure_of(carry_chart)


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
