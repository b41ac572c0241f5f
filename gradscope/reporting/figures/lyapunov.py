"""Lyapunov exponents: the spectrum and the convergence of the QR iteration."""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gradscope.reporting.figures.theme import (
    LINESTYLES,
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


@styled
def lyapunov_convergence_figure(
    history_steps: np.ndarray,
    history: np.ndarray,
    *,
    show: int = 4,
    ax: Axes | None = None,
) -> Figure:
    """Running estimates of the leading Lyapunov exponents against steps used.

    Flat curves mean the estimate has converged; curves still drifting at the right edge
    mean the sequence was too short for a stable estimate.

    Args:
        history_steps: ``(n,)`` numbers of steps used.
        history: ``(n, k)`` running estimates.
        show: How many leading exponents to draw (the smallest one is always added).
        ax: Axes to draw into.

    Returns:
        The figure drawn on.
    """
    fig, ax = new_axes(ax)
    title = "Lyapunov convergence"
    h = np.asarray(history, dtype=float)
    s = np.asarray(history_steps, dtype=float)
    if h.ndim != 2 or h.shape[0] == 0 or s.shape[0] != h.shape[0] or not np.isfinite(h).any():
        no_data(ax, "no running estimate was recorded", title)
        return fig
    k = h.shape[1]
    which = list(range(min(show, k)))
    if k - 1 not in which:
        which.append(k - 1)
    colours = palette(len(which))
    for j, i in enumerate(which):
        ax.plot(
            s,
            h[:, i],
            color=colours[j],
            lw=1.5,
            ls=LINESTYLES[j % len(LINESTYLES)],
            label=f"$\\lambda_{{{i + 1}}}$",
        )
    ax.axhline(0.0, color="black", lw=0.9, ls=":")
    # Early estimates (a few steps) swing wildly; scale the axis to the later, converging part
    # so that the convergence itself is visible, and say so when something is cut off.
    tail = h[h.shape[0] // 4 :, which]
    tail = tail[np.isfinite(tail)]
    shown = h[:, which][np.isfinite(h[:, which])]
    if tail.size:
        lo, hi = float(min(tail.min(), 0.0)), float(max(tail.max(), 0.0))
        pad = 0.15 * max(hi - lo, 1e-3)
        lo, hi = lo - pad, hi + pad
        if shown.min() < lo or shown.max() > hi:
            ax.set_ylim(lo, hi)
            title += " (early steps off-scale)"
    ax.set_xlabel("steps used")
    ax.set_ylabel("running estimate (nats per timestep)")
    ax.set_title(title)
    ax.legend(loc="best", ncols=2 if len(which) > 3 else 1)
    return fig
