"""One-step spectra: eigenvalues in the complex plane, singular values, and both over time."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradscope.reporting.figures.axes import set_log10_axis
from gradscope.reporting.figures.theme import (
    DENSITY_CMAP,
    HEXBIN_THRESHOLD,
    REGIME_COLOURS,
    new_axes,
    no_data,
    palette,
    styled,
)


# --------------------------------------------------------------------------- spectra
@styled
def eigenvalue_figure(
    values: np.ndarray,
    *,
    of: int | None = None,
    hexbin_threshold: int = HEXBIN_THRESHOLD,
    ax: Axes | None = None,
) -> Figure:
    """Jacobian eigenvalues in the complex plane with the unit circle.

    A scatter when there are few points, a 2-D density (hexbin, log counts) when there are
    more than ``hexbin_threshold``: thousands of overlapping dots would hide where the mass is.

    Args:
        values: Complex eigenvalues of any shape (NaN entries are skipped).
        of: The state size ``D``; when ``values`` hold fewer per Jacobian (the leading ones,
            computed on the Jacobian operator), the title says so.
        hexbin_threshold: Point count above which a density is drawn.
        ax: Axes to draw into.

    Returns:
        The figure drawn on.
    """
    fig, ax = new_axes(ax, (6.0, 4.2))
    title = "Jacobian eigenvalues"
    z = np.asarray(values).ravel().astype(complex)
    z = z[np.isfinite(z.real) & np.isfinite(z.imag)]
    if z.size == 0:
        no_data(ax, "no finite Jacobian eigenvalue", title)
        return fig
    mod = np.abs(z)
    r = max(1.15, 1.06 * float(mod.max()))
    if z.size > hexbin_threshold:
        hb = ax.hexbin(
            z.real,
            z.imag,
            gridsize=55,
            bins="log",
            mincnt=1,
            cmap=DENSITY_CMAP,
            extent=(-r, r, -r, r),
            linewidths=0,
        )
        cb = fig.colorbar(hb, ax=ax, pad=0.02, shrink=0.9)
        cb.set_label("eigenvalues per cell (log)")
        how = "density"
    else:
        ax.scatter(z.real, z.imag, s=9, alpha=0.5, color=palette(1)[0], lw=0)
        how = "scatter"
    th = np.linspace(0, 2 * np.pi, 400)
    ax.plot(
        np.cos(th), np.sin(th), color="black", ls="--", lw=1.1, label=r"unit circle $|\lambda| = 1$"
    )
    ax.axhline(0, color="#aaaaaa", lw=0.6)
    ax.axvline(0, color="#aaaaaa", lw=0.6)
    ax.set_xlim(-r, r)
    ax.set_ylim(-r, r)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(r"Re $\lambda$")
    ax.set_ylabel(r"Im $\lambda$")
    outside = float((mod > 1).mean())
    k = np.shape(values)[-1] if np.ndim(values) else 0
    if of is not None and 0 < k < of:
        title = f"Leading {k} of {of} eigenvalues per Jacobian"
    ax.set_title(f"{title} ({z.size:,} values, {how})")
    ax.text(
        0.02,
        0.02,
        f"{outside:.1%} outside the unit circle",
        transform=ax.transAxes,
        fontsize=8,
        va="bottom",
        bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "#cccccc", "pad": 2},
    )
    ax.legend(loc="upper right", fontsize=7.5)
    return fig


@styled
def singular_value_figure(
    values: np.ndarray, *, of: int | None = None, ax: Axes | None = None
) -> Figure:
    r"""Distribution of the Jacobians' singular values; the largest one per Jacobian apart.

    Args:
        values: ``(..., D)`` singular values, descending along the last axis (NaN rows
            skipped). ``values[..., 0]`` is the spectral norm :math:`\lVert J\rVert_2`.
        of: The state size ``D``; when ``values`` hold fewer per Jacobian (the leading ones),
            the title and legend say so.
        ax: Axes to draw into.

    Returns:
        The figure drawn on.
    """
    fig, ax = new_axes(ax)
    title = "Singular values"
    v = np.asarray(values, dtype=float)
    if v.ndim == 0 or v.size == 0:
        no_data(ax, "no singular value", title)
        return fig
    allv = v.ravel()
    allv = allv[np.isfinite(allv)]
    zeros = int((allv <= 0).sum())
    allv = allv[allv > 0]
    top = v.reshape(-1, v.shape[-1])[:, 0]
    top = top[np.isfinite(top) & (top > 0)]
    if allv.size == 0:
        no_data(ax, "no finite non-zero singular value", title)
        return fig
    la, lt = np.log10(allv), np.log10(top)
    lo, hi = float(min(la.min(), 0.0)), float(max(la.max(), 0.0))
    if hi - lo < 0.3:
        lo, hi = lo - 0.15, hi + 0.15
    bins = np.linspace(lo, hi, 45)
    leading = of is not None and v.shape[-1] < of
    label = rf"leading {v.shape[-1]} of {of} $\sigma_i$" if leading else r"all $\sigma_i$"
    ax.hist(la, bins=bins, color=palette(1)[0], alpha=0.45, label=label, density=True)
    ax.hist(
        lt,
        bins=bins,
        histtype="step",
        lw=1.8,
        color=REGIME_COLOURS["exploding"],
        label=r"largest $\sigma_1 = \Vert J\Vert_2$",
        density=True,
    )
    ax.axvline(0.0, color="black", ls="--", lw=1.1, label="σ = 1")
    set_log10_axis(ax, np.array([lo, hi]), axis="x", pad=0.02)
    ax.set_xlabel(r"singular value $\sigma$ of $\partial s_{k+1}/\partial s_k$ (log scale)")
    ax.set_ylabel("density per decade")
    extra = f", {zeros} exact zeros not shown" if zeros else ""
    ax.set_title(f"{title} ({top.size:,} Jacobians{extra})")
    ax.legend(loc="best")
    return fig


def _median_band(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row median and 10/90th percentiles over the finite entries of ``x (T', B')``."""
    x = np.asarray(x, dtype=float)
    med = np.full(x.shape[0], np.nan)
    lo = med.copy()
    hi = med.copy()
    for i, row in enumerate(x):
        f = row[np.isfinite(row)]
        if f.size:
            lo[i], med[i], hi[i] = np.percentile(f, [10, 50, 90])
    return med, lo, hi


@styled
def spectral_time_figure(
    radius_steps: np.ndarray | None,
    radius: np.ndarray | None,
    norm_steps: np.ndarray | None,
    norm: np.ndarray | None,
    *,
    ax: Axes | None = None,
) -> Figure:
    r"""Spectral radius :math:`\rho(J_k)` and spectral norm :math:`\lVert J_k\rVert_2` over time.

    Median and 10–90% band over sequences at each step, with the line at 1 (above it the
    one-step map can stretch some direction, below it every direction shrinks).

    Args:
        radius_steps: ``(T',)`` steps of ``radius`` (or None).
        radius: ``(T', B')`` spectral radius per step and sequence (or None).
        norm_steps: ``(T'',)`` steps of ``norm`` (or None).
        norm: ``(T'', B'')`` spectral norm per step and sequence (or None).
        ax: Axes to draw into.

    Returns:
        The figure drawn on.
    """
    fig, ax = new_axes(ax)
    title = "One-step Jacobian over time"
    series = []
    if norm is not None and norm_steps is not None:
        series.append(
            (
                r"spectral norm $\Vert J_k\Vert_2$",
                norm_steps,
                norm,
                REGIME_COLOURS["exploding"],
                "-",
            )
        )
    if radius is not None and radius_steps is not None:
        series.append((r"spectral radius $\rho(J_k)$", radius_steps, radius, palette(1)[0], "--"))
    drawn = []
    for label, steps, x, colour, ls in series:
        med, lo, hi = _median_band(x)
        if not np.isfinite(med).any():
            continue
        steps = np.asarray(steps, dtype=float)
        ax.fill_between(steps, lo, hi, color=colour, alpha=0.18, lw=0)
        ax.plot(steps, med, color=colour, lw=1.6, ls=ls, label=label)
        drawn.extend([lo, hi, med])
    if not drawn:
        no_data(ax, "no valid Jacobian (all steps padded or non-finite)", title)
        return fig
    ax.axhline(1.0, color="black", lw=1.0, ls=":", label="1")
    allv = np.concatenate([d[np.isfinite(d)] for d in drawn] + [np.array([1.0])])
    pos = allv[allv > 0]
    lo, hi = float(allv.min()), float(allv.max())
    if pos.size and pos.max() / max(pos.min(), 1e-300) > 30:
        ax.set_yscale("log")
        lo, hi = float(pos.min()), float(pos.max())
        span = math.log10(hi / lo)
        ax.set_ylim(lo / 10 ** (0.05 * span), hi * 10 ** (0.35 * span))
    else:
        span = max(hi - lo, 0.05)
        ax.set_ylim(lo - 0.05 * span, hi + 0.35 * span)  # headroom for the legend
    ax.set_xlabel(r"timestep k (Jacobian $J_k = \partial s_{k+1}/\partial s_k$)")
    ax.set_ylabel(r"$\rho(J_k)$ and $\Vert J_k\Vert_2$")
    ax.set_title(title + " (median, band 10–90%)")
    ax.legend(loc="upper center", ncols=3, fontsize=7.5)
    return fig
