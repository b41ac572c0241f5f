"""One-step spectra: eigenvalues in the complex plane, singular values, and both over time.

The spectral norm and radius over time are a chart (:func:`spectral_time_chart`, drawn by
:func:`~gradscope.reporting.figures.render.render_chart`). The eigenvalue plane and the
singular-value histograms stay hand-drawn: a chart has no complex plane with its unit circle
and hexbin density (up to tens of thousands of points), and no histogram.
"""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradscope.reporting.figures.axes import set_log10_axis
from gradscope.reporting.figures.chart import Chart, Column, Series
from gradscope.reporting.figures.render import figure_of
from gradscope.reporting.figures.theme import (
    DASHES,
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
) -> Chart:
    r"""Spectral radius :math:`\rho(J_k)` and spectral norm :math:`\lVert J_k\rVert_2` over time.

    Median and 10–90% band over sequences at each step, with the line at 1 (above it the
    one-step map can stretch some direction, below it every direction shrinks); on a log
    axis when the values span more than a factor of 30.

    Args:
        radius_steps: ``(T',)`` steps of ``radius``, or None.
        radius: ``(T', B')`` spectral radius per step and sequence, or None.
        norm_steps: ``(T'',)`` steps of ``norm``, or None.
        norm: ``(T'', B'')`` spectral norm per step and sequence, or None.

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
                opacity=0.18,
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
                width=1.6,
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
        hline_label="1",
        legend="top",
        empty="no valid Jacobian (all steps padded or non-finite)",
    )


#: The picture of :func:`spectral_time_chart` (same arguments, plus ``ax=``).
spectral_time_figure = figure_of(spectral_time_chart)

__all__ = [
    "eigenvalue_figure",
    "singular_value_figure",
    "spectral_time_chart",
    "spectral_time_figure",
]
