"""The Monitor's views over training: the gradient heatmap, the decay rate, the gates per step.

The heat map and the decay rate are charts (drawn by
:func:`~gradscope.reporting.figures.render.render_chart`); the gates over training stay
hand-drawn: two y axes (the gate on 0–1, the carry on a log scale) are not one chart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradscope.reporting.figures.axes import set_log10_axis
from gradscope.reporting.figures.chart import Chart, Column, Grid, Series
from gradscope.reporting.figures.render import figure_of
from gradscope.reporting.figures.theme import (
    FIGSIZE,
    MISSING_GREY,
    NEUTRAL_GREY,
    REGIME_COLOURS,
    REGIME_MARKERS,
    heat_colors,
    new_axes,
    no_data,
    palette,
    regime_label,
    styled,
)


def training_heatmap_chart(norms: np.ndarray, steps: np.ndarray) -> Chart:
    r"""Loss-gradient norm over (training step × timestep), from a Monitor's history.

    Args:
        norms: ``(n_sampled, T+1)`` batch-mean :math:`\lVert\partial L/\partial s_t\rVert`
            (columns ``t = 0..T``; NaN where a sampled batch was shorter).
        steps: ``(n_sampled,)`` training-step numbers of the rows.

    Returns:
        A heat-map chart: rows are training steps (the first at the bottom), columns
        timesteps, values the norms on a log colour scale (0 and NaN: no value).
    """
    data = np.asarray(norms, dtype=float)
    if data.ndim != 2:
        data = np.zeros((0, 0))
    n, t1 = data.shape
    steps = np.asarray(steps, dtype=float).ravel()
    if n and not t1:
        empty = "the sampled steps hold no timestep"
    elif not n:
        empty = "the history holds no sampled step"
    else:
        empty = "every recorded gradient norm is zero or non-finite"
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
        empty=empty,
    )


def training_rate_chart(
    steps: np.ndarray,
    rates: np.ndarray,
    regimes: Sequence[str] | None = None,
    *,
    rate_ci: np.ndarray | None = None,
    loss_rates: np.ndarray | None = None,
) -> Chart:
    """Fitted decay rates at each sampled training step.

    The state-gradient rate (markers by regime, with its 95% interval) where it was fitted,
    joined across the steps the Monitor did not analyse, and the real loss-gradient rate (a
    dashed line) where the history holds it.

    Args:
        steps: ``(n,)`` training-step numbers.
        rates: ``(n,)`` state decay rates (natural log per step; NaN where not fitted).
        regimes: ``n`` regime names (markers and colours), or None.
        rate_ci: ``(n, 2)`` 95% intervals of ``rates``, or None.
        loss_rates: ``(n,)`` loss-gradient decay rates, or None.

    Returns:
        The chart: columns ``training_step``, ``state_rate``, ``state_rate_ci_low``/``high``,
        ``regime``, ``loss_rate``.
    """
    steps = np.asarray(steps, dtype=float).ravel()
    n = steps.size
    rates = _fit(rates, n)
    ci = np.asarray(rate_ci, dtype=float) if rate_ci is not None else None
    if ci is None or ci.shape != (n, 2):
        ci = np.full((n, 2), np.nan)
    loss = _fit(loss_rates, n)
    regs = [str(r) for r in regimes][:n] if regimes is not None else []
    regs += [""] * (n - len(regs))
    per = "nats per timestep"
    styles = {
        r: (REGIME_COLOURS[r], REGIME_MARKERS[r], f"state: {regime_label(r)}")
        for r in REGIME_COLOURS
    }
    series = [
        Series(
            "band",
            "training_step",
            ("state_rate_ci_low", "state_rate_ci_high"),
            "95% CI",
            "#999999",
            opacity=0.25,
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
            width=1.2,
            join=True,
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
                width=1.4,
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
        empty="no sampled step has a finite decay rate",
    )


def _fit(values: np.ndarray | None, n: int) -> np.ndarray:
    """``values`` as ``n`` floats (NaN when absent or of another length)."""
    v = np.full(n, np.nan) if values is None else np.asarray(values, dtype=float).ravel()
    return v[:n] if v.size >= n else np.full(n, np.nan)


#: The pictures of the two charts (same arguments, plus ``ax=``).
training_heatmap_figure = figure_of(training_heatmap_chart)
training_rate_figure = figure_of(training_rate_chart)


#: What the gate of each family is called on the axes.
TRAINING_GATE_NAMES = {
    "f": "forget gate f",
    "z": "update gate z",
    "φ'": "φ′(a_t) (tanh′)",
}


@styled
def training_gates_figure(
    steps: np.ndarray,
    median: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    gate: str,
    log_carry: Mapping[int, np.ndarray] | None = None,
    share: np.ndarray | None = None,
    factor: np.ndarray | None = None,
    weight_norm: np.ndarray | None = None,
    ax: Axes | None = None,
) -> Figure:
    """A layer's gates over training, from the gate summaries of a Monitor's history.

    Left axis (0 to 1): the carried gate's median (LSTM ``f``, GRU ``z``; vanilla ``φ′``)
    over units, timesteps and sequences at each sampled step, with its 10–90% band, and
    (LSTM/GRU, on analysed steps) the additive path's share of ``‖∂s_T/∂s_0‖``. Right axis:
    LSTM/GRU the median carry ``∏ g`` over the last ``k`` steps (log scale, one line per
    lag); vanilla ``‖diag(φ′) W_hh‖₂`` (analysed steps) and ``‖W_hh‖₂``.

    Args:
        steps: ``(n,)`` training-step numbers.
        median: ``(n,)`` the gate's median.
        lo: ``(n,)`` its 10% quantile.
        hi: ``(n,)`` its 90% quantile.
        gate: ``"f"``, ``"z"`` or ``"φ'"``.
        log_carry: Lag -> ``(n,)`` natural log of the median carry (LSTM/GRU), or None.
        share: ``(n,)`` path share at the longest lag (NaN where not analysed), or None.
        factor: ``(n,)`` vanilla median ``‖diag(φ′) W_hh‖₂`` (NaN where not analysed).
        weight_norm: ``(n,)`` vanilla ``‖W_hh‖₂``.
        ax: Axes to draw into.

    Returns:
        The figure drawn on.
    """
    own = ax is None
    if own:  # constrained: it keeps room for a legend outside the axes
        fig = Figure(figsize=(FIGSIZE[0], FIGSIZE[1] + 0.6), layout="constrained")
        ax = fig.add_subplot()
    fig, ax = new_axes(ax)
    name = TRAINING_GATE_NAMES.get(gate, gate)
    title = f"{'The ' if gate in TRAINING_GATE_NAMES else ''}{name} over training"
    x = np.asarray(steps, dtype=float)
    med = np.asarray(median, dtype=float)
    if x.size == 0 or med.shape != x.shape or not np.isfinite(med).any():
        no_data(ax, "no sampled step has gate summaries", title)
        return fig
    blue, green, grey = REGIME_COLOURS["vanishing"], REGIME_COLOURS["neutral"], NEUTRAL_GREY
    ok = np.isfinite(med)
    band = ok & np.isfinite(lo) & np.isfinite(hi)
    ax.fill_between(x, lo, hi, where=band, color=blue, alpha=0.2, lw=0, label=f"{gate}: 10–90%")
    ax.plot(x[ok], med[ok], color=blue, lw=1.8, marker="o", ms=3, label=f"{gate}: median")
    if share is not None and np.isfinite(share).any():
        sok = np.isfinite(share)
        ax.plot(
            x[sok], np.asarray(share)[sok], ls="none", marker="D", ms=5, color=green,
            label="additive path's share of ‖∂s_T/∂s_0‖",
        )  # fmt: skip
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("training step")
    ax.set_ylabel("gate value / share")
    right = ax.twinx()
    right.grid(False)
    if log_carry:
        shown = []
        for (lag, vals), ls in zip(sorted(log_carry.items()), ("--", "-.", ":")):
            v = np.asarray(vals, dtype=float) / math.log(10.0)
            if not np.isfinite(v).any():
                continue
            vok = np.isfinite(v)
            right.plot(
                x[vok], v[vok], color=grey, ls=ls, lw=1.6, label=f"carry ∏{gate} over {lag} steps"
            )
            shown.append(v)
        if shown:
            set_log10_axis(right, np.concatenate(shown))
            right.set_ylabel(f"median carry ∏{gate} (log scale)")
        else:
            right.set_yticks([])
    elif factor is not None or weight_norm is not None:
        f = np.full(x.shape, np.nan) if factor is None else np.asarray(factor, dtype=float)
        w = np.full(x.shape, np.nan) if weight_norm is None else np.asarray(weight_norm, float)
        if np.isfinite(f).any():
            fok = np.isfinite(f)
            right.plot(x[fok], f[fok], ls="none", marker="s", ms=5, color=grey,
                       label="‖diag(φ′) W_hh‖₂ (median)")  # fmt: skip
        if np.isfinite(w).any():
            wok = np.isfinite(w)
            right.plot(x[wok], w[wok], color=grey, ls="--", lw=1.2, marker="_", ms=10,
                       label="‖W_hh‖₂")  # fmt: skip
        right.axhline(1.0, color="#333333", ls=":", lw=1.0)
        top = np.nanmax(np.concatenate([f, w, [1.0]]))
        right.set_ylim(0, 1.1 * top)
        right.set_ylabel("one-step norm (dotted: 1)")
    handles = [h for a in (ax, right) for h in a.get_legend_handles_labels()[0]]
    # below the axes: "best" on the twin axes sees only its own lines, and put the box over
    # the gate's median (near 1 for a trained LSTM). On a figure of its own the legend is the
    # figure's, under everything, with room kept for it (it used to cover the x label)
    if own:
        fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize="small")
    else:
        right.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2,
                     fontsize="small", borderaxespad=0)  # fmt: skip
    ax.set_title(title)
    return fig
