"""Memory of a diagonal recurrence: timescales per coordinate and the decay over time."""

from __future__ import annotations

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradscope.reporting.figures.theme import (
    HEAT_CMAP,
    MISSING_GREY,
    REGIME_COLOURS,
    new_axes,
    no_data,
    styled,
)


@styled
def timescale_figure(tau: np.ndarray, T: float, *, ax: Axes | None = None) -> Figure:
    """Histogram of per-coordinate memory timescales ``τ`` (log axis) against ``T``.

    Args:
        tau: ``(D,)`` timescales in steps (``inf``: no decay; NaN: unknown).
        T: The sequence length they are compared with (vertical line).
        ax: Axes to draw into.

    Returns:
        The figure drawn on.
    """
    fig, ax = new_axes(ax)
    title = "Memory timescales τ = −1/mean ln|λ|"
    t = np.asarray(tau, dtype=float)
    t = t[~np.isnan(t)]
    if t.size == 0:
        no_data(ax, "no finite timescale", title)
        return fig
    n_inf = int(np.isinf(t).sum())
    fin = t[np.isfinite(t)]
    long = (t >= T).mean()
    if fin.size:
        lo = max(np.log10(max(fin.min(), 1e-3)), -3)
        hi = max(np.log10(fin.max()), np.log10(max(T, 1.0))) + 0.2
        bins = np.logspace(lo - 0.05, hi, 40)
        short = fin[fin < T]
        keep = fin[fin >= T]
        ax.hist(
            short,
            bins=bins,
            color=REGIME_COLOURS["vanishing"],
            alpha=0.8,
            label=f"τ < T: forgotten within the sequence ({short.size})",
        )
        ax.hist(
            keep,
            bins=bins,
            color=REGIME_COLOURS["neutral"],
            alpha=0.8,
            label=f"τ ≥ T: carried across it ({keep.size + n_inf})",
        )
        ax.set_xscale("log")
    ax.axvline(T, color="#333333", ls="--", lw=1.2, label=f"T = {T:g} steps")
    ax.set_xlabel("timescale τ (steps to fall by e; log scale)")
    ax.set_ylabel("state coordinates")
    if n_inf:
        title += f"  ({n_inf} with no decay)"
    ax.set_title(f"{title}: {100 * long:.0f}% ≥ T")
    ax.legend(loc="upper left")
    return fig


@styled
def decay_heatmap_figure(heat: np.ndarray, *, ax: Axes | None = None) -> Figure:
    """``ln|λ_t|`` per coordinate (rows, longest memory first) and timestep (columns).

    Vertical stripes are inputs that make many channels forget (or hold) at once: the
    selectivity of the decay. A uniform picture is a time-invariant recurrence.

    Args:
        heat: ``(R, T)`` log moduli of one sequence.
        ax: Axes to draw into.

    Returns:
        The figure drawn on.
    """
    fig, ax = new_axes(ax)
    title = "Decay per step ln|λ_t| (one sequence)"
    data = np.asarray(heat, dtype=float)
    if data.ndim != 2 or data.size == 0 or not np.isfinite(data).any():
        no_data(ax, "no finite decay recorded", title)
        return fig
    cmap = mpl.colormaps[HEAT_CMAP].with_extremes(bad=MISSING_GREY)
    img = np.ma.masked_invalid(np.where(np.isneginf(data), np.nan, data))
    im = ax.imshow(img, aspect="auto", interpolation="nearest", cmap=cmap)
    cb = fig.colorbar(im, ax=ax, pad=0.02)
    cb.set_label("ln|λ_t| (0: holds, very negative: forgets)")
    ax.set_xlabel("timestep t")
    ax.set_ylabel("state coordinates (longest τ at top)")
    ax.set_yticks([])
    ax.grid(False)
    ax.set_title(title)
    return fig
