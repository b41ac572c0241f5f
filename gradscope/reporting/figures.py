r"""One function per figure: arrays in, a matplotlib figure out.

Every function here is pure: it takes plain numpy arrays and numbers (the fields of the
analysis results, never a model or a trace), draws one axes, and returns the figure it drew
on. Pass ``ax=`` to draw into an existing axes (the PDF layout does, to put several figures
on a page); without it a new :class:`~matplotlib.figure.Figure` of :data:`FIGSIZE` is made
(no pyplot state is touched, so figures are garbage-collected like any object).

Conventions shared by all figures:

* one style (:func:`style`: seaborn ``whitegrid``, the ``colorblind`` palette, which is the
  Okabe–Ito set) and fixed regime colours *and* markers (:data:`REGIME_COLOURS`,
  :data:`REGIME_MARKERS`), so a regime is never told by colour alone;
* gradient norms are plotted as :math:`\log_{10}` values on a linear axis whose ticks are
  labelled with the norms themselves (``10^{-8}``, ``0.5``, ...): products of Jacobians
  routinely leave the float range (``e^{-800}``) yet their logarithm is exact, so the axis
  never clips to 0 or inf;
* natural logarithms come in (every ``log_norms``/``median``/``band`` of
  :class:`gradscope.Decay`), base-10 goes on the axis: :math:`\log_{10} x = \ln x/\ln 10`;
* a panel without data is never left blank: it says why (:func:`no_data`).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import wraps
from typing import Any, NamedTuple, TypeVar

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

#: Size (inches) of a stand-alone figure; two fit side by side in the HTML report.
FIGSIZE = (6.0, 3.7)
#: Colour-blind-safe colours (Okabe–Ito) of the three regimes.
REGIME_COLOURS = {"vanishing": "#0072B2", "exploding": "#D55E00", "neutral": "#009E73"}
#: Marker shapes of the three regimes, so that colour is never the only cue.
REGIME_MARKERS = {"vanishing": "v", "exploding": "^", "neutral": "o"}
#: Symbols used next to regime names in titles, legends and tables.
REGIME_SYMBOLS = {"vanishing": "▼", "exploding": "▲", "neutral": "●"}
#: Colour for anything without a regime (unknown / missing).
NEUTRAL_GREY = "#6b6b6b"
#: Heat-map cells without a finite value.
MISSING_GREY = "#d9d9d9"
#: Sequential colour maps: gradient magnitude, point density.
HEAT_CMAP = "viridis"
DENSITY_CMAP = "mako_r"
#: Above this many eigenvalues the complex plane is a 2-D density (hexbin), not a scatter.
HEXBIN_THRESHOLD = 1500
_LN10 = math.log(10.0)

_F = TypeVar("_F", bound=Callable[..., Any])


def palette(n: int) -> list[str]:
    """``n`` colour-blind-safe colours (seaborn ``colorblind``, cycled when ``n > 10``)."""
    import seaborn as sns

    base = sns.color_palette("colorblind").as_hex()
    return [base[i % len(base)] for i in range(n)]


#: Line styles cycled with the colours, so curves of a comparison differ in more than hue.
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 1)))


def _rc() -> dict[str, Any]:
    import seaborn as sns

    rc: dict[str, Any] = {}
    rc.update(sns.axes_style("whitegrid"))
    rc.update(sns.plotting_context("notebook", font_scale=0.82))
    rc.update(
        {
            "axes.prop_cycle": mpl.cycler(color=palette(10)),
            "axes.titlesize": 10.5,
            "axes.titleweight": "bold",
            "axes.labelsize": 9.5,
            "xtick.labelsize": 8.5,
            "ytick.labelsize": 8.5,
            "legend.fontsize": 8,
            "legend.framealpha": 0.85,
            "legend.edgecolor": "#cccccc",
            "font.family": "DejaVu Sans",
            "mathtext.fontset": "dejavusans",
            "axes.edgecolor": "#888888",
            "grid.color": "#e3e3e3",
            "image.cmap": HEAT_CMAP,
            "figure.facecolor": "white",
            "savefig.facecolor": "white",
            "pdf.fonttype": 42,
            "ps.fonttype": 42,
            "svg.fonttype": "none",
        }
    )
    return rc


@contextmanager
def style() -> Iterator[None]:
    """The report's visual style, active only inside the ``with`` block (no global change)."""
    with mpl.rc_context(_rc()):
        yield


def _styled(fn: _F) -> _F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with style():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _axes(ax: Axes | None, figsize: tuple[float, float] = FIGSIZE) -> tuple[Any, Axes]:
    if ax is not None:
        return ax.figure, ax
    # "tight" rather than "constrained": one layout pass, ~2.5x faster to render, and a
    # single axes (plus colour bar or outside legend) needs nothing more.
    fig = Figure(figsize=figsize, layout="tight")
    return fig, fig.add_subplot()


def no_data(ax: Axes, reason: str, title: str | None = None) -> None:
    """Turn ``ax`` into a visible "no data" panel that says ``reason`` (never a blank panel)."""
    if title:
        ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_color("#cccccc")
        spine.set_linestyle("--")
    ax.text(
        0.5,
        0.5,
        textwrap.fill(f"No data: {reason}", 48, break_on_hyphens=False),
        transform=ax.transAxes,
        ha="center",
        va="center",
        color=NEUTRAL_GREY,
        fontsize=9,
    )


def regime_label(regime: str | None) -> str:
    """``"▼ vanishing"`` etc.: the regime with its symbol (plain text for unknown regimes)."""
    if not regime:
        return "no verdict"
    sym = REGIME_SYMBOLS.get(regime)
    return f"{sym} {regime}" if sym else regime


def _superscript(n: int) -> str:
    return str(n).translate(str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"))


def fmt_value(v: float, digits: int = 3) -> str:
    """A compact human number: ``0.25``, ``2254``, ``−3.07×10⁻⁴``, ``∞``, ``n/a`` for NaN."""
    if v is None:
        return "n/a"
    v = float(v)
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    if v == 0:
        return "0"
    a = abs(v)
    if 100 <= a < 1e5:
        out = f"{v:.0f}"
    elif 1e-3 <= a < 100:
        out = f"{v:.{digits}g}"
    else:
        e = math.floor(math.log10(a))
        m = v / 10.0**e
        if abs(round(m, digits - 1)) >= 10:
            m, e = m / 10, e + 1
        out = f"{m:.{digits - 1}f}×10{_superscript(e)}"
    return out.replace("-", "−")


def fmt_rate(v: float, digits: int = 3) -> str:
    """A rate with its sign always shown (``+0.248``, ``−0.5``): the sign is the verdict."""
    out = fmt_value(v, digits)
    return f"+{out}" if v is not None and not math.isnan(float(v)) and float(v) > 0 else out


# --------------------------------------------------------------------------- log axes
def _tick_label(v: float) -> str:
    if v <= 0 or not math.isfinite(v):
        return ""
    if 1e-3 <= v < 1e4:
        return f"{v:g}"
    e = math.floor(math.log10(v) + 1e-9)
    m = v / 10.0**e
    if abs(m - 1) < 1e-6:
        return f"$10^{{{e}}}$"
    return f"${m:g}\\times10^{{{e}}}$"


def log10_ticks(lo: float, hi: float, max_ticks: int = 7) -> tuple[np.ndarray, list[str]]:
    r"""Tick positions (in :math:`\log_{10}` units) and labels (the values) for ``[lo, hi]``.

    Whole decades when the range spans several, ``1-2-5`` steps over one or two decades, and
    evenly spaced values inside a fraction of a decade, so that a nearly flat curve still
    gets readable ticks. Positions are exact logarithms; labels are the values they stand for.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        c = lo if math.isfinite(lo) else 0.0
        lo, hi = c - 0.5, c + 0.5
    span = hi - lo
    if span >= 2.5 or lo < -300 or hi > 300:
        raw = max(1.0, span / max_ticks)
        e = 10 ** math.floor(math.log10(raw))
        step = next(int(m * e) for m in (1, 2, 5, 10) if m * e >= raw)  # 1-2-5 decades
        ks = np.arange(math.ceil(lo / step) * step, math.floor(hi) + 1, step)
        return ks.astype(float), [f"$10^{{{int(k)}}}$" for k in ks]
    if span >= 0.7:
        cands = sorted(
            math.log10(m) + e
            for e in range(math.floor(lo) - 1, math.ceil(hi) + 1)
            for m in (1, 2, 5)
        )
        pos = np.array([c for c in cands if lo <= c <= hi])
        if len(pos) >= 2:
            return pos, [_tick_label(10.0**p) for p in pos]
    vals = MaxNLocator(nbins=4).tick_values(10.0**lo, 10.0**hi)
    vals = vals[(vals > 0) & (np.log10(np.maximum(vals, 1e-300)) >= lo - 1e-12)]
    vals = vals[np.log10(vals) <= hi + 1e-12]
    return np.log10(vals), [_tick_label(v) for v in vals]


def _set_log10_axis(ax: Axes, data: np.ndarray, axis: str = "y", pad: float = 0.05) -> None:
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return
    lo, hi = float(finite.min()), float(finite.max())
    span = max(hi - lo, 0.2)
    mid = 0.5 * (lo + hi)
    lo, hi = min(lo, mid - span / 2) - pad * span, max(hi, mid + span / 2) + pad * span
    pos, labels = log10_ticks(lo, hi)
    if axis == "y":
        ax.set_ylim(lo, hi)
        ax.set_yticks(pos, labels)
    else:
        ax.set_xlim(lo, hi)
        ax.set_xticks(pos, labels)


# --------------------------------------------------------------------------- decay
#: Axis labels of the three kinds of decay curve.
DECAY_YLABEL = {
    "state": r"$\Vert\partial s_T/\partial s_{T-k}\Vert$ (log scale)",
    "input": r"$\Vert\partial s_T/\partial x_{T-k}\Vert$ (log scale)",
    "loss": r"$\Vert\partial L/\partial s_{T-k}\Vert$ (log scale)",
}
#: Titles of the three kinds of decay curve.
DECAY_TITLE = {
    "state": "State-gradient decay",
    "input": "Input sensitivity",
    "loss": "Loss-gradient decay",
}


def _band_ok(band: np.ndarray | None, n: int) -> bool:
    return band is not None and np.shape(band) == (2, n)


@_styled
def decay_figure(
    lags: np.ndarray,
    median: np.ndarray,
    band: np.ndarray | None,
    *,
    rate: float,
    intercept: float,
    fit_lags: tuple[int, int] | None,
    regime: str | None,
    of: str = "state",
    rate_ci: tuple[float, float] | None = None,
    half_life: float | None = None,
    n_sequences: int | None = None,
    ax: Axes | None = None,
) -> Figure:
    r"""Gradient norm against lag: median and 10–90% band over sequences, with the fit.

    The fit is the line :math:`\ln\lVert\cdot\rVert \approx \text{intercept} + \text{rate}\cdot k`
    over ``fit_lags``; its slope is the decay rate in nats per step.

    Args:
        lags: ``(K,)`` lags ``k`` (steps back from the last step).
        median: ``(K,)`` median over sequences of the natural-log norm.
        band: ``(2, K)`` 10th and 90th percentiles of the natural-log norm, or None.
        rate: Fitted slope (natural log per step).
        intercept: Fitted natural-log norm at lag 0.
        fit_lags: ``(lo, hi)`` lag range of the fit (None: no fit drawn).
        regime: ``"vanishing"``, ``"exploding"``, ``"neutral"`` (or None).
        of: ``"state"``, ``"input"`` or ``"loss"``: picks the axis label.
        rate_ci: 95% interval of ``rate``.
        half_life: Steps for the norm to halve (shown in the legend when finite).
        n_sequences: Number of sequences behind the median (legend).
        ax: Axes to draw into (default: a new figure).

    Returns:
        The figure drawn on.
    """
    fig, ax = _axes(ax)
    title = DECAY_TITLE.get(of, f"{of} decay")
    lags = np.asarray(lags, dtype=float)
    med = np.asarray(median, dtype=float) / _LN10
    if lags.size == 0 or not np.isfinite(med).any():
        no_data(ax, "no finite gradient norm at any lag", title)
        return fig
    colour = REGIME_COLOURS.get(regime or "", NEUTRAL_GREY)
    shown = [med]
    if _band_ok(band, lags.size):
        b = np.asarray(band, dtype=float) / _LN10
        ok = np.isfinite(b).all(axis=0)
        ax.fill_between(
            lags, b[0], b[1], where=ok, color=colour, alpha=0.22, lw=0, label="10–90% of sequences"
        )
        shown.append(b[:, ok].ravel())
    who = f"median of {n_sequences} sequences" if n_sequences else "median over sequences"
    ax.plot(lags, med, color=colour, lw=2, label=who)
    if fit_lags is not None and math.isfinite(rate) and math.isfinite(intercept):
        lo, hi = fit_lags
        xs = np.linspace(lo, hi, 50)
        ys = (intercept + rate * xs) / _LN10
        ci = ""
        if rate_ci is not None and all(math.isfinite(c) for c in rate_ci):
            ci = f" [{fmt_rate(rate_ci[0])}, {fmt_rate(rate_ci[1])}]"
        hl = ""
        if half_life is not None and math.isfinite(half_life):
            hl = f", half-life {fmt_value(half_life)} steps"
        ax.plot(xs, ys, color="black", ls="--", lw=1.3, label=f"fit: {fmt_rate(rate)}/step{ci}{hl}")
        shown.append(ys)
    ax.set_title(f"{title}: {regime_label(regime)}", color=colour if regime else None)
    ax.set_xlabel("lag k (timesteps back from the last step T)")
    ax.set_ylabel(DECAY_YLABEL.get(of, "norm (log scale)"))
    _set_log10_axis(ax, np.concatenate([np.ravel(s) for s in shown]))
    ax.set_xlim(lags.min(), max(lags.max(), lags.min() + 1))
    ax.legend(loc="best")
    return fig


@_styled
def lag_heatmap_figure(
    log_norms: np.ndarray,
    lags: np.ndarray | None = None,
    *,
    of: str = "state",
    ax: Axes | None = None,
) -> Figure:
    """Log gradient norm over (lag × sequence): one row per sequence.

    Args:
        log_norms: ``(K, B)`` natural-log norms (NaN where a sequence is too short).
        lags: ``(K,)`` lags (default ``0..K-1``).
        of: ``"state"``, ``"input"`` or ``"loss"`` (colour-bar label).
        ax: Axes to draw into.

    Returns:
        The figure drawn on.
    """
    fig, ax = _axes(ax)
    data = np.asarray(log_norms, dtype=float)
    title = f"{DECAY_TITLE.get(of, of)} per sequence"
    if data.ndim != 2 or data.size == 0 or not np.isfinite(data).any():
        no_data(ax, "no finite gradient norm in any sequence", title)
        return fig
    k, b = data.shape
    lags = np.arange(k) if lags is None else np.asarray(lags)
    img = np.ma.masked_invalid(data.T / _LN10)
    cmap = mpl.colormaps[HEAT_CMAP].with_extremes(bad=MISSING_GREY)
    im = ax.imshow(
        img,
        aspect="auto",
        interpolation="nearest",
        cmap=cmap,
        extent=(lags[0] - 0.5, lags[-1] + 0.5, b - 0.5, -0.5),
    )
    cb = fig.colorbar(im, ax=ax, pad=0.02)
    pos, labels = log10_ticks(float(img.min()), float(img.max()), max_ticks=6)
    cb.set_ticks(pos, labels=labels)
    cb.set_label(DECAY_YLABEL.get(of, "norm").replace(" (log scale)", ""))
    ax.set_xlabel("lag k (timesteps back from the last step T)")
    ax.set_ylabel("sequence")
    ax.yaxis.set_major_locator(MaxNLocator(nbins=min(b, 8), integer=True))
    ax.grid(False)
    if np.isnan(data).any():
        title += "  (grey: no data)"
    ax.set_title(title)
    return fig


@_styled
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
    fig, ax = _axes(ax)
    title = "Loss gradient over training"
    data = np.asarray(norms, dtype=float)
    steps = np.asarray(steps)
    if data.ndim != 2 or data.size == 0:
        no_data(ax, "the history holds no sampled step", title)
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


@_styled
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
    fig, ax = _axes(ax)
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


# --------------------------------------------------------------------------- spectra
@_styled
def eigenvalue_figure(
    values: np.ndarray,
    *,
    hexbin_threshold: int = HEXBIN_THRESHOLD,
    ax: Axes | None = None,
) -> Figure:
    """Jacobian eigenvalues in the complex plane with the unit circle.

    A scatter when there are few points, a 2-D density (hexbin, log counts) when there are
    more than ``hexbin_threshold``: thousands of overlapping dots would hide where the mass is.

    Args:
        values: Complex eigenvalues of any shape (NaN entries are skipped).
        hexbin_threshold: Point count above which a density is drawn.
        ax: Axes to draw into.

    Returns:
        The figure drawn on.
    """
    fig, ax = _axes(ax, (6.0, 4.2))
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


@_styled
def singular_value_figure(values: np.ndarray, *, ax: Axes | None = None) -> Figure:
    r"""Distribution of the Jacobians' singular values; the largest one per Jacobian apart.

    Args:
        values: ``(..., D)`` singular values, descending along the last axis (NaN rows
            skipped). ``values[..., 0]`` is the spectral norm :math:`\lVert J\rVert_2`.
        ax: Axes to draw into.

    Returns:
        The figure drawn on.
    """
    fig, ax = _axes(ax)
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
    ax.hist(la, bins=bins, color=palette(1)[0], alpha=0.45, label=r"all $\sigma_i$", density=True)
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
    _set_log10_axis(ax, np.array([lo, hi]), axis="x", pad=0.02)
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


@_styled
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
    fig, ax = _axes(ax)
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


# --------------------------------------------------------------------------- Lyapunov
@_styled
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
    fig, ax = _axes(ax)
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


@_styled
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
    fig, ax = _axes(ax)
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


# --------------------------------------------------------------------------- comparison
class Curve(NamedTuple):
    """One decay curve of a comparison (fields as in :class:`gradscope.analysis.decay.Decay`)."""

    lags: np.ndarray
    median: np.ndarray
    band: np.ndarray | None
    rate: float
    regime: str | None


@_styled
def comparison_figure(curves: Mapping[str, Curve], *, ax: Axes | None = None) -> Figure:
    """Decay curves of several models on one axes: the classic vanilla vs LSTM vs GRU view.

    Each model gets its own colour *and* line style; the legend names its regime and rate.

    Args:
        curves: ``{label: Curve}`` in display order.
        ax: Axes to draw into.

    Returns:
        The figure drawn on.
    """
    # many curves: a wider figure, the legend beside the axes instead of over the curves
    fig, ax = _axes(ax, (7.2, 4.2) if len(curves) <= 4 else (11.0, 4.6))
    title = "State-gradient decay, all models"
    shown = []
    colours = palette(len(curves))
    for i, (label, c) in enumerate(curves.items()):
        med = np.asarray(c.median, dtype=float) / _LN10
        lags = np.asarray(c.lags, dtype=float)
        if not np.isfinite(med).any():
            continue
        ls = LINESTYLES[i % len(LINESTYLES)]
        if _band_ok(c.band, lags.size):
            b = np.asarray(c.band, dtype=float) / _LN10
            ok = np.isfinite(b).all(axis=0)
            ax.fill_between(lags, b[0], b[1], where=ok, color=colours[i], alpha=0.12, lw=0)
            shown.append(b[:, ok].ravel())
        ax.plot(
            lags,
            med,
            color=colours[i],
            ls=ls,
            lw=2,
            label=f"{label}: {regime_label(c.regime)}, {fmt_rate(c.rate)}/step",
        )
        shown.append(med)
    if not shown:
        no_data(ax, "no model has a finite decay curve", title)
        return fig
    ax.set_xlabel("lag k (timesteps back from the last step T)")
    ax.set_ylabel(DECAY_YLABEL["state"])
    _set_log10_axis(ax, np.concatenate([np.ravel(s) for s in shown]))
    ax.set_title(title + " (median, band 10–90%)")
    n = len(curves)
    if n > 4:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(loc="best")
    return fig


__all__ = [
    "FIGSIZE",
    "REGIME_COLOURS",
    "REGIME_MARKERS",
    "REGIME_SYMBOLS",
    "Curve",
    "comparison_figure",
    "decay_figure",
    "eigenvalue_figure",
    "fmt_rate",
    "fmt_value",
    "lag_heatmap_figure",
    "log10_ticks",
    "lyapunov_convergence_figure",
    "lyapunov_spectrum_figure",
    "no_data",
    "palette",
    "regime_label",
    "singular_value_figure",
    "spectral_time_figure",
    "style",
    "training_heatmap_figure",
    "training_rate_figure",
]
