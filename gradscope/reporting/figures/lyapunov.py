"""Lyapunov exponents: the spectrum and the convergence of the QR iteration.

The convergence is a chart (:func:`lyapunov_convergence_chart`); the spectrum stays
hand-drawn: its ±1.96 stderr error bars and the two marker kinds (growing, shrinking) by
index are not a chart's lines, bands or points.
"""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gradscope.reporting.figures.chart import Chart, Column, Series
from gradscope.reporting.figures.render import figure_of
from gradscope.reporting.figures.theme import (
    DASHES,
    REGIME_COLOURS,
    REGIME_MARKERS,
    fmt_rate,
    fmt_value,
    new_axes,
    no_data,
    palette,
    styled,
)


# --------------------------------------------------------------------------- Lyapunov
@styled
def lyapunov_spectrum_figure(
    exponents: np.ndarray,
    stderr: np.ndarray | None = None,
    *,
    kaplan_yorke: float | None = None,
    ax: Axes | None = None,
) -> Figure:
    """The Lyapunov spectrum: exponent against index, with the zero line.

    Args:
        exponents: ``(k,)`` exponents, descending (natural log per step).
        stderr: ``(k,)`` standard errors (error bars of ±1.96 stderr), or None.
        kaplan_yorke: Kaplan–Yorke dimension (title), or None.
        ax: Axes to draw into.

    Returns:
        The figure drawn on.
    """
    fig, ax = new_axes(ax)
    title = "Lyapunov spectrum"
    ex = np.asarray(exponents, dtype=float)
    if ex.size == 0 or not np.isfinite(ex).any():
        no_data(ax, "no finite Lyapunov exponent", title)
        return fig
    idx = np.arange(1, ex.size + 1)
    pos = ex > 0
    err = None
    if stderr is not None and np.shape(stderr) == ex.shape:
        err = 1.96 * np.asarray(stderr, dtype=float)
        err = np.where(np.isfinite(err), err, 0.0)
    for sel, reg, lab in (
        (pos, "exploding", r"$\lambda_i > 0$: directions that grow"),
        (~pos, "vanishing", r"$\lambda_i \leq 0$: directions that shrink"),
    ):
        if sel.any():
            ax.errorbar(
                idx[sel],
                ex[sel],
                yerr=None if err is None else err[sel],
                fmt=REGIME_MARKERS[reg],
                color=REGIME_COLOURS[reg],
                ms=5,
                lw=1,
                capsize=2,
                label=lab,
            )
    ax.axhline(0.0, color="black", lw=1.0, ls="--")
    ax.set_xlabel("index i")
    ax.set_ylabel(r"$\lambda_i$ (nats per timestep)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    extra = f", D_KY = {fmt_value(kaplan_yorke)}" if kaplan_yorke is not None else ""
    ax.set_title(f"{title}: λ₁ = {fmt_rate(ex[0])}/step{extra}")
    ax.legend(loc="best")
    return fig


def lyapunov_convergence_chart(
    history_steps: np.ndarray, history: np.ndarray, *, show: int = 4
) -> Chart:
    """Running estimates of the leading Lyapunov exponents against steps used.

    Flat curves mean the estimate has converged; curves still drifting at the right edge
    mean the sequence was too short for a stable estimate. Early estimates (a few steps)
    swing wildly, so the first view is the later, converging part (and the title says so
    when something is left out of it).

    Args:
        history_steps: ``(n,)`` numbers of steps used.
        history: ``(n, k)`` running estimates.
        show: How many leading exponents to draw (the smallest one is always added).

    Returns:
        The chart: ``steps_used`` and one ``lambda_i`` column per exponent shown.
    """
    h = np.asarray(history, dtype=float)
    s = np.asarray(history_steps, dtype=float).ravel()
    if h.ndim != 2 or h.shape[0] != s.size:
        h = np.zeros((s.size, 0))
    k = h.shape[1]
    which = list(range(min(show, k)))
    if k and k - 1 not in which:
        which.append(k - 1)
    colours = palette(len(which))
    unit = "nats per timestep"
    columns = [Column("steps_used", "steps", s)]
    columns += [Column(f"lambda_{i + 1}", unit, h[:, i]) for i in which]
    series = [
        Series(
            "line",
            "steps_used",
            f"lambda_{i + 1}",
            f"λ{_sub(i + 1)}",
            colours[j],
            dash=DASHES[j % len(DASHES)],
            width=1.5,
        )
        for j, i in enumerate(which)
    ]
    yview = None
    title = "Lyapunov convergence"
    tail = h[h.shape[0] // 4 :, which] if k else np.empty(0)
    tail = tail[np.isfinite(tail)]
    shown = h[:, which][np.isfinite(h[:, which])] if k else np.empty(0)
    if tail.size:
        lo, hi = float(min(tail.min(), 0.0)), float(max(tail.max(), 0.0))
        pad = 0.15 * max(hi - lo, 1e-3)
        if shown.min() < lo - pad or shown.max() > hi + pad:
            yview = (lo - pad, hi + pad)
            title += " (early steps off-scale)"
    return Chart(
        title=title,
        xlabel="steps used",
        ylabel="running estimate (nats per timestep)",
        columns=columns,
        series=series,
        hlines=(0.0,),
        yview=yview,
        empty="no running estimate was recorded",
    )


def _sub(n: int) -> str:
    return "".join("₀₁₂₃₄₅₆₇₈₉"[int(c)] for c in str(n))


#: The picture of :func:`lyapunov_convergence_chart` (same arguments, plus ``ax=``).
lyapunov_convergence_figure = figure_of(lyapunov_convergence_chart)

__all__ = [
    "lyapunov_convergence_chart",
    "lyapunov_convergence_figure",
    "lyapunov_spectrum_figure",
]
