"""The mechanism on one picture: the measured gradient beside the gates' carry, per model.

One small axes per model (or layer), all with the same log axis: the measured state-gradient
decay ``‖∂s_T/∂s_{T−k}‖₂`` (blue) and what the gates alone let through, the carry ``∏ f`` of
an LSTM cell state or ``∏ z`` of a GRU update gate (green, median unit with its 25–75% band).
A vanilla RNN has no additive path; its panel shows the median one-step factor
``‖diag(φ′) W_hh‖₂`` raised to the power k (grey), the rate its gradient is multiplied by.
Where the green line stays up while the blue one follows it, the gates are the gradient
highway; where there is no green line, nothing carries the gradient past the weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from gradscope.reporting.figures.axes import set_log10_axis
from gradscope.reporting.figures.theme import (
    LN10,
    NEUTRAL_GREY,
    REGIME_COLOURS,
    no_data,
    plain,
    regime_label,
    styled,
)

_BLUE = REGIME_COLOURS["vanishing"]
_GREEN = REGIME_COLOURS["neutral"]


class Mechanism(NamedTuple):
    """One panel of :func:`mechanism_figure` (natural logs, as in the analysis results).

    Attributes:
        lags: ``(K,)`` lags of the measured decay (empty: none measured).
        median: ``(K,)`` median log ``‖∂s_T/∂s_{T−k}‖₂``.
        regime: The layer's regime (title colour and text).
        gate: The carried gate's symbol (``"f"``: LSTM, sLSTM; ``"z"``: GRU) or None (no gate
            view / no additive path).
        carry_lags: ``(C,)`` lags of the carry.
        carry: ``(C, 5)`` quantiles over units and sequences of the log carry.
        factor: Median log one-step factor of a vanilla RNN (NaN: none).
    """

    lags: np.ndarray
    median: np.ndarray
    regime: str | None
    gate: str | None = None
    carry_lags: np.ndarray = np.zeros(0)
    carry: np.ndarray = np.zeros((0, 5))
    factor: float = math.nan


def _panel(ax, m: Mechanism, label: str) -> list[np.ndarray]:
    lags = np.asarray(m.lags, dtype=float)
    med = np.asarray(m.median, dtype=float) / LN10
    shown: list[np.ndarray] = []
    c = np.asarray(m.carry, dtype=float) / LN10
    if m.gate is not None and c.size and np.isfinite(c).any():
        x = np.asarray(m.carry_lags, dtype=float)
        ax.fill_between(x, c[:, 1], c[:, 3], color=_GREEN, alpha=0.2, lw=0)
        ax.plot(x, c[:, 2], color=_GREEN, lw=2)
        ax.text(
            0.98,
            0.95,
            f"∏{m.gate}",
            transform=ax.transAxes,
            ha="right",
            va="top",
            color=_GREEN,
            fontsize=10,
            fontweight="bold",
        )
        shown.append(c[:, 1:4].ravel())
    elif math.isfinite(m.factor) and lags.size:
        ax.plot(lags, lags * m.factor / LN10, color=NEUTRAL_GREY, lw=1.5, ls="--")
        shown.append(lags * m.factor / LN10)
    if lags.size and np.isfinite(med).any():
        ax.plot(lags, med, color=_BLUE, lw=2)
        shown.append(med)
    colour = REGIME_COLOURS.get(m.regime or "", NEUTRAL_GREY)  # no verdict (all-NaN): grey
    name, regime = plain(label, 40), regime_label(m.regime)
    # a panel is about 40 characters wide: a longer title puts the regime on a second line
    sep = ": " if len(name) + len(regime) <= 40 else "\n"
    ax.set_title(f"{name}{sep}{regime}", color=colour, fontsize=10)
    return shown


def _legend(fig: Figure, kinds: set[str], cols: int, gates: list[str]) -> None:
    """One legend for all axes, above them: only the lines some axes draw.

    In one row over three columns of axes; stacked over fewer, where one row of three
    entries is wider than the figure and would be cut at both sides.
    """
    handles = [Line2D([], [], color=_BLUE, lw=2, label="measured ‖∂s_T/∂s_{T−k}‖₂")]
    carries = " or ".join(f"∏{g}" for g in gates)
    # one axes is ~3.3 inches: over fewer than three the band's words go on a second line
    band = " (median unit, 25–75%)" if cols >= 3 else "\n(median unit, 25–75%)"
    if "gate" in kinds:
        handles.append(
            Line2D(
                [],
                [],
                color=_GREEN,
                lw=2,
                label=f"gates alone: {carries}{band}",
            )
        )
    if "factor" in kinds:
        handles.append(
            Line2D(
                [],
                [],
                color=NEUTRAL_GREY,
                lw=1.5,
                ls="--",
                label="no gate: median ‖diag(φ′)W_hh‖₂ᵏ",
            )
        )
    fig.legend(
        handles=handles,
        loc="outside upper center",
        ncol=len(handles) if cols >= 3 else 1,
        fontsize=10,
        frameon=False,
    )


@styled
def mechanism_figure(entries: Mapping[str, Mechanism], *, cols: int = 3) -> Figure:
    """Small multiples: per entry the measured decay beside the gates' carry (shared axes).

    Args:
        entries: ``{label: Mechanism}`` in display order.
        cols: Axes per row (fewer when there are fewer entries).

    Returns:
        The figure.
    """
    n = max(len(entries), 1)
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.3 * cols, 2.05 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
    if not entries:
        no_data(axes[0, 0], "no layer has a state decay or a gate view", "The gradient highway")
        return fig
    shown: list[np.ndarray] = []
    kinds: set[str] = set()
    for i, (label, m) in enumerate(entries.items()):
        shown += _panel(axes[i // cols, i % cols], m, label)
        kinds.add("gate" if m.gate is not None else ("factor" if math.isfinite(m.factor) else ""))
    for j in range(len(entries), rows * cols):
        axes[j // cols, j % cols].set_visible(False)
    data = np.concatenate([np.ravel(s) for s in shown]) if shown else np.zeros(1)
    set_log10_axis(axes[0, 0], data)
    for ax in axes[-1, :]:
        ax.set_xlabel("lag k (steps back)")
    for ax in axes[:, 0]:
        ax.set_ylabel("factor after k steps")
    gates = sorted({m.gate for m in entries.values() if m.gate is not None})
    _legend(fig, kinds, cols, gates)
    return fig


__all__ = ["Mechanism", "mechanism_figure"]
