"""The data of the one-step and long-run dynamics figures, as interactive charts.

The spectral norm and radius over time, the Lyapunov running estimates and the gate carry:
each function takes the keyword arguments of the matplotlib figure of the same panel and
returns the :class:`~gradscope.reporting.figures.chart.Chart` that the HTML report draws and offers
for download (see :mod:`gradscope.reporting.chart_data` for the decay curves and heat maps).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradscope.reporting.chart_data import DASHES
from gradscope.reporting.figures.chart import Chart, Column, Series
from gradscope.reporting.figures.spectra import _median_band
from gradscope.reporting.figures.theme import REGIME_COLOURS, palette


def _on(grid: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``y`` (given at ``x``) placed on the sorted ``grid``; NaN where ``x`` has no value."""
    out = np.full(grid.size, np.nan)
    out[np.searchsorted(grid, x)] = y
    return out


def spectral_time_chart(
    radius_steps: np.ndarray | None,
    radius: np.ndarray | None,
    norm_steps: np.ndarray | None,
    norm: np.ndarray | None,
    *,
    ax: Any = None,
) -> Chart:
    r"""Spectral norm and radius per step (as :func:`~.figures.spectral_time_figure`).

    Median and 10th/90th percentiles over sequences at each step, on a log axis when the
    values span more than a factor of 30 (as the figure decides).

    Args:
        radius_steps: ``(T',)`` steps of ``radius``, or None.
        radius: ``(T', B')`` spectral radius per step and sequence, or None.
        norm_steps: ``(T'',)`` steps of ``norm``, or None.
        norm: ``(T'', B'')`` spectral norm per step and sequence, or None.
        ax: Ignored.

    Returns:
        The chart: ``step``, ``norm_median``/``_p10``/``_p90``, ``radius_median``/...
    """
    parts = []
    if norm is not None and norm_steps is not None:
        parts.append(
            ("norm", "spectral norm ‖J_k‖₂", norm_steps, norm, REGIME_COLOURS["exploding"])
        )
    if radius is not None and radius_steps is not None:
        parts.append(("radius", "spectral radius ρ(J_k)", radius_steps, radius, palette(1)[0]))
    steps = np.unique(np.concatenate([np.asarray(p[2], dtype=float) for p in parts] or [[]]))
    columns = [Column("step", "timestep k of J_k = ∂s_{k+1}/∂s_k", steps)]
    series: list[Series] = []
    shown = [np.array([1.0])]
    for i, (name, label, at, values, colour) in enumerate(parts):
        med, lo, hi = _median_band(values)
        at = np.asarray(at, dtype=float)
        columns += [
            Column(f"{name}_median", label, _on(steps, at, med)),
            Column(f"{name}_p10", label, _on(steps, at, lo)),
            Column(f"{name}_p90", label, _on(steps, at, hi)),
        ]
        series.append(
            Series(
                "band",
                "step",
                (f"{name}_p10", f"{name}_p90"),
                f"{label}, 10–90%",
                colour,
                legend=False,
                tip=f"{name} 10–90%",
            )
        )
        series.append(
            Series(
                "line",
                "step",
                f"{name}_median",
                label,
                colour,
                dash=DASHES[i],
                tip=f"{name} median",
            )
        )
        shown += [med, lo, hi]
    allv = np.concatenate(shown)
    pos = allv[np.isfinite(allv) & (allv > 0)]
    log = pos.size > 0 and pos.max() / max(pos.min(), 1e-300) > 30
    return Chart(
        title="One-step Jacobian over time (median, band 10–90%)",
        xlabel="timestep k (Jacobian J_k = ∂s_{k+1}/∂s_k)",
        ylabel="ρ(J_k) and ‖J_k‖₂" + (" (log scale)" if log else ""),
        columns=columns,
        series=series,
        yscale="log" if log else "linear",
        hlines=(1.0,),
    )


def lyapunov_convergence_chart(
    history_steps: np.ndarray, history: np.ndarray, *, show: int = 4, ax: Any = None
) -> Chart:
    """Running Lyapunov estimates (as :func:`~.figures.lyapunov_convergence_figure`).

    The same exponents as the figure: the ``show`` leading ones and the smallest.

    Args:
        history_steps: ``(n,)`` numbers of steps used.
        history: ``(n, k)`` running estimates.
        show: How many leading exponents.
        ax: Ignored.

    Returns:
        The chart: ``steps_used`` and one ``lambda_i`` column per exponent shown.
    """
    h = np.asarray(history, dtype=float)
    k = h.shape[1] if h.ndim == 2 else 0
    which = list(range(min(show, k)))
    if k and k - 1 not in which:
        which.append(k - 1)
    colours = palette(len(which))
    unit = "nats per timestep"
    columns = [Column("steps_used", "steps", np.asarray(history_steps, dtype=float))]
    columns += [Column(f"lambda_{i + 1}", unit, h[:, i]) for i in which]
    series = [
        Series(
            "line",
            "steps_used",
            f"lambda_{i + 1}",
            f"λ{_sub(i + 1)}",
            colours[j],
            dash=DASHES[j % len(DASHES)],
        )
        for j, i in enumerate(which)
    ]
    # as the figure: early estimates swing wildly, so the first view is the later part
    yview = None
    tail = h[h.shape[0] // 4 :, which] if k else np.empty(0)
    tail = tail[np.isfinite(tail)]
    shown = h[:, which][np.isfinite(h[:, which])] if k else np.empty(0)
    title = "Lyapunov convergence"
    if tail.size:
        lo, hi = float(min(tail.min(), 0.0)), float(max(tail.max(), 0.0))
        pad = 0.15 * max(hi - lo, 1e-3)
        if shown.min() < lo - pad or shown.max() > hi + pad:
            yview = (lo - pad, hi + pad)
            title += " (early steps off-scale: drag over them to zoom)"
    return Chart(
        title=title,
        xlabel="steps used",
        ylabel="running estimate (nats per timestep)",
        columns=columns,
        series=series,
        hlines=(0.0,),
        yview=yview,
    )


def _sub(n: int) -> str:
    return "".join("₀₁₂₃₄₅₆₇₈₉"[int(c)] for c in str(n))


def carry_chart(
    lags: np.ndarray,
    carry: np.ndarray,
    carry_max: np.ndarray,
    decay_lags: np.ndarray | None,
    decay_median: np.ndarray | None,
    gate: str,
    *,
    ax: Any = None,
) -> Chart:
    """The carry ∏gate beside the full gradient (as :func:`~.figures.carry_figure`).

    Args:
        lags: ``(K,)`` lags.
        carry: ``(K, 5)`` quantiles over units and sequences of the log carry (the 25th,
            50th and 75th are plotted).
        carry_max: ``(K,)`` log carry of the best unit.
        decay_lags: Lags of the state decay, or None.
        decay_median: Its median natural-log norm, or None.
        gate: ``"f"`` or ``"z"``.
        ax: Ignored.

    Returns:
        The chart (natural logs): ``lag``, ``ln_carry_p25``/``median``/``p75``,
        ``ln_carry_best``, ``ln_norm_median``.
    """
    lags = np.asarray(lags, dtype=float)
    c = np.asarray(carry, dtype=float)
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
            ),
            Series(
                "line",
                "lag",
                "ln_carry_median",
                f"∏{gate}, median unit (band 25–75%)",
                green,
                tip=f"∏{gate} median unit",
            ),
            Series(
                "line",
                "lag",
                "ln_carry_best",
                f"∏{gate}, best unit",
                green,
                dash=(6, 4),
                tip=f"∏{gate} best unit",
            ),
            Series("line", "lag", "ln_norm_median", "‖∂s_T/∂s_{T−k}‖₂", blue),
        ],
    )


__all__ = ["carry_chart", "lyapunov_convergence_chart", "spectral_time_chart"]
