"""Log-scale axes: ticks labelled with the values themselves, never clipped at 0 or inf."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator


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


def set_log10_axis(ax: Axes, data: np.ndarray, axis: str = "y", pad: float = 0.05) -> None:
    """Label ``axis`` with the values of ``10**data`` (ticks from :func:`log10_ticks`)."""
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
