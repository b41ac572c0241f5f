"""The Monitor's views over training: the gradient heatmap, the decay rate, the gates per step."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradscope.reporting.figures.axes import log10_ticks, set_log10_axis
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
        empty = data.ndim == 2 and data.shape[0] > 0  # steps, but no timestep in them
        why = "the sampled steps hold no timestep" if empty else "the history holds no sampled step"
        no_data(ax, why, title)
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
    # the gate's median (near 1 for a trained LSTM); the top axes', so above both
    right.legend(
        handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2,
        fontsize="small", borderaxespad=0,
    )  # fmt: skip
    ax.set_title(title)
    return fig
