r"""The exponential fit of gradient-norm curves, its confidence interval and the regime.

:func:`fit_decay` turns log-norm curves ``(K, B)`` (lags × sequences) into a :class:`Decay`.
The definitions (fit range, replicate confidence interval, neutral band, half-life, horizon)
are in :mod:`gradscope.analysis.decay`'s docstring, where the curves come from.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import special

from gradscope._json import dataclass_dict
from gradscope.errors import ArgumentError
from gradscope.jacobians.diagonal import LOG_ZERO

#: Default fall factor defining the horizon.
HORIZON_FACTOR = 1e-3
#: The neutral band is ``|rate| <= ln(SURVIVE_FACTOR) / T_ref``.
SURVIVE_FACTOR = 10.0


@dataclass(frozen=True)
class Decay:
    r"""Gradient-norm decay against lag, with an exponential fit and a regime.

    Attributes:
        name: The layer's name.
        of: ``"state"`` (:math:`\lVert\partial s_T/\partial s_{T-k}\rVert_2`), ``"input"``
            (:math:`\lVert\partial s_T/\partial x_{T-k}\rVert_2`) or ``"loss"``
            (:math:`\lVert\partial L/\partial s_t\rVert_2`, reported at lag ``T_b - t``).
        lags: ``(K,)`` int, ``0 .. K-1``: distance back in time from each sequence's final step.
        norms: ``(K, B)`` float64 norms (NaN where a sequence is too short, or non-finite);
            may underflow to 0 / overflow to inf for extreme lags: use :attr:`log_norms`.
        log_norms: ``(K, B)`` natural log of the norms, accumulated in log space (never
            ``-inf`` from underflow; ``-inf`` only for an exactly zero gradient).
        median: ``(K,)`` median over sequences of :attr:`log_norms` (NaN where none is finite).
        band: ``(2, K)`` 10th and 90th percentiles over sequences of :attr:`log_norms`.
        rate: Fitted slope of the median log norm against lag (natural log per step);
            negative: the gradient shrinks going back in time. NaN if too few lags.
        rate_ci: ``(lo, hi)`` 95% confidence interval of :attr:`rate`.
        intercept: Fitted log norm at lag 0.
        r2: Coefficient of determination of the fit.
        fit_lags: ``(lo, hi)`` inclusive lag range used for the fit.
        half_life: Steps for the norm to halve, ``ln 2 / (-rate)``; ``inf`` if ``rate >= 0``.
        horizon: Memory horizon: the lag at which the norm has fallen to
            :attr:`horizon_factor` times its lag-0 value; ``inf`` if it never does.
        regime: ``"vanishing"``, ``"exploding"`` or ``"neutral"``; ``"unknown"`` when no
            norm at any lag is finite (nothing was measured, e.g. every loss gradient NaN).
            A norm that is exactly 0 from some lag on is ``"vanishing"`` (a rate too soon
            to fit is then ``ln`` of the smallest float64 per step, as for a singular step).
        horizon_factor: The fall factor defining :attr:`horizon` (default ``1e-3``).
        threshold: Half-width :math:`\tau` of the neutral band of rates.
        n_fit: Number of lags in the fit.
        ci_method: ``"sequences"``, ``"blocks"``, ``"ols"`` or ``"none"``.
        probes: Number of probe directions ``p`` (``p == D``: exact norms; ``0`` for loss).
        notes: Plain-language remarks (excluded sequences, short traces, ...).
    """

    name: str
    of: str
    lags: np.ndarray
    norms: np.ndarray
    log_norms: np.ndarray
    median: np.ndarray
    band: np.ndarray
    rate: float
    rate_ci: tuple[float, float]
    intercept: float
    r2: float
    fit_lags: tuple[int, int]
    half_life: float
    horizon: float
    regime: str
    horizon_factor: float = HORIZON_FACTOR
    threshold: float = float("nan")
    n_fit: int = 0
    ci_method: str = "none"
    probes: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (NaN/inf as strings, see :func:`gradscope._json.jsonable`)."""
        return dataclass_dict(self)


def _nanstats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and (10th, 90th) percentiles over axis 1, NaN where no entry is finite."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if not x.shape[1]:
            return np.full(x.shape[0], np.nan), np.full((2, x.shape[0]), np.nan)
        if not np.isnan(x).any():  # the common case; NumPy's nan* variants loop per row
            return np.median(x, axis=1), np.percentile(x, [10, 90], axis=1)
        return np.nanmedian(x, axis=1), np.nanpercentile(x, [10, 90], axis=1)


def _slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """OLS slope of each column of ``y`` ``(n, B)`` on ``x`` ``(n,)`` over its finite entries.

    The same numbers as :func:`scipy.stats.linregress` per column (centred sums), in one
    vectorised pass; NaN where a column has fewer than 3 finite entries or constant ``x``.
    """
    ok = np.isfinite(y)
    n = ok.sum(axis=0)
    w = ok.astype(float)
    yz = np.where(ok, y, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        xm = (w * x[:, None]).sum(axis=0) / n
        ym = yz.sum(axis=0) / n
        dx = (x[:, None] - xm) * w
        sxx = (dx * dx).sum(axis=0)
        slope = (dx * (yz - ym)).sum(axis=0) / sxx
    bad = (n < 3) | ~(sxx > 0)
    slope[bad] = np.nan
    return slope


@lru_cache(maxsize=256)
def _t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom.

    ``scipy.special.stdtrit``, the function behind ``scipy.stats.t.ppf`` (equal to it
    bitwise), without importing ``scipy.stats`` (0.5–0.9 s of a cold ``gs.profile`` here).
    Cached: a Monitor fits curves of the same length on every sampled step, and the
    quantile costs ~0.1 ms.
    """
    return float(special.stdtrit(df, 0.975))


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """``(slope, intercept, r, slope stderr)`` of ``y`` on ``x``.

    :func:`scipy.stats.linregress`'s formulas (population moments, ``r`` clipped to
    [-1, 1], NaN for a constant ``y``) without its per-call overhead.
    """
    n = x.size
    xm, ym = x.mean(), y.mean()
    dx, dy = x - xm, y - ym
    ssxm, ssym, ssxym = float(dx @ dx) / n, float(dy @ dy) / n, float(dx @ dy) / n
    if ssxm == 0.0 or ssym == 0.0:
        r = math.nan  # as SciPy: no correlation is defined (the fit then reports r² = 1)
    else:
        r = min(1.0, max(-1.0, ssxym / math.sqrt(ssxm * ssym)))
    slope = ssxym / ssxm
    se = math.sqrt((1.0 - r * r) * ssym / ssxm / (n - 2)) if n > 2 else math.nan
    return slope, float(ym - slope * xm), r, se


def _replicate_interval(rate: float, slopes: np.ndarray) -> tuple[float, float]:
    """95% Student-t interval around ``rate`` from independent replicate slopes (n >= 2)."""
    se = float(slopes.std(ddof=1) / math.sqrt(slopes.size))
    tq = _t975(slopes.size - 1)
    return (rate - tq * se, rate + tq * se)


def fit_decay(
    name: str,
    of: str,
    log_norms: np.ndarray,
    t_ref: float,
    *,
    fit_range: tuple[int, int] | None = None,
    horizon_factor: float = HORIZON_FACTOR,
    probes: int = 0,
    notes: list[str] | None = None,
) -> Decay:
    """Fit an exponential to log-norm curves and decide the regime (see the module docstring).

    Args:
        name: Layer name.
        of: ``"state"``, ``"input"`` or ``"loss"``.
        log_norms: ``(K, B)`` natural-log norms against lag (NaN: no data).
        t_ref: Reference sequence length for the neutral band ``ln 10 / t_ref``.
        fit_range: ``(lo, hi)`` inclusive lags to fit instead of the default range.
        horizon_factor: Fall factor that defines the horizon (0 < factor < 1).
        probes: Probe count to record in the result.
        notes: Remarks to carry over.

    Returns:
        A :class:`Decay`.
    """
    if not 0 < horizon_factor < 1:
        raise ArgumentError(f"{name}: horizon_factor must be in (0, 1), got {horizon_factor}")
    notes = list(notes or [])
    K = log_norms.shape[0]
    lags = np.arange(K)
    median, band = _nanstats(log_norms)
    finite = np.isfinite(log_norms)
    has_data = finite.any(axis=0)
    n_seq = int(has_data.sum())
    cover = finite.sum(axis=1) >= max(1, math.ceil(n_seq / 2))
    nan = float("nan")
    tau = math.log(SURVIVE_FACTOR) / max(float(t_ref), 1.0)
    if fit_range is not None:
        lo, hi = int(fit_range[0]), int(min(fit_range[1], K - 1))
    else:
        hi = int(np.nonzero(cover)[0].max()) if cover.any() else 0
        lo = max(1, math.ceil(hi / 10)) if of != "loss" else math.ceil(hi / 10)
    sel = (lags >= lo) & (lags <= hi) & np.isfinite(median)
    n_fit = int(sel.sum())
    rate = intercept = r2 = nan
    ci = (nan, nan)
    method = "none"
    if n_fit >= 3 and np.ptp(lags[sel]) > 0:
        rate, intercept, rvalue, stderr = _ols(lags[sel].astype(float), median[sel])
        r2 = rvalue**2 if math.isfinite(rvalue) else 1.0
        x = lags[lo : hi + 1].astype(float)
        seq_slopes = _slopes(x, log_norms[lo : hi + 1])
        seq_slopes = seq_slopes[np.isfinite(seq_slopes)]
        if seq_slopes.size >= 2:
            ci, method = _replicate_interval(rate, seq_slopes), "sequences"
        else:
            xs, ys = lags[sel].astype(float), median[sel]
            nb = min(10, n_fit // 3)
            if nb >= 2:
                parts = np.array_split(np.arange(n_fit), nb)
                bs = np.array([_slopes(xs[ix], ys[ix, None])[0] for ix in parts])
                bs = bs[np.isfinite(bs)]
            else:
                bs = np.zeros(0)
            if bs.size >= 2:
                ci, method = _replicate_interval(rate, bs), "blocks"
            else:
                tq = _t975(max(n_fit - 2, 1))
                ci = (rate - tq * stderr, rate + tq * stderr)
                method = "ols"
                notes.append("rate interval from OLS (too few lags for replicates): optimistic")
    else:
        notes.append(
            f"too few lags to fit ({n_fit} in {lo}..{hi}; need 3): rate unknown, regime "
            "reported as neutral"
        )
    zero = np.nonzero(np.isneginf(median[1:]))[0]
    dead = int(zero[0]) + 1 if zero.size else None  # exactly 0 from this lag on
    if dead is not None:
        notes.append(
            f"the norm is exactly 0 from lag {dead} on (in at least half the sequences): no "
            "gradient reaches further back"
        )
        if math.isnan(rate):  # the zero comes too soon to fit: ln 0 counted as LOG_ZERO
            rate, ci, method = LOG_ZERO, (LOG_ZERO, LOG_ZERO), "exact zero"
            notes[:] = [n for n in notes if not n.startswith("too few lags to fit")]
    if not finite.any() and log_norms.size:
        regime = "unknown"
        notes.append(
            "no finite norm at any lag (every one is NaN/inf): nothing was measured, so the "
            "regime is unknown"
        )
    elif dead is not None:
        regime = "vanishing"
    elif math.isnan(rate):
        regime = "neutral"
    elif rate < -tau and ci[1] < 0:
        regime = "vanishing"
    elif rate > tau and ci[0] > 0:
        regime = "exploding"
    else:
        regime = "neutral"
    half_life = nan if math.isnan(rate) else (math.log(2) / -rate if rate < 0 else math.inf)
    horizon = _horizon(median, rate, intercept, horizon_factor)
    with np.errstate(over="ignore", under="ignore"):
        norms = np.exp(log_norms)
    return Decay(
        name=name,
        of=of,
        lags=lags,
        norms=norms,
        log_norms=log_norms,
        median=median,
        band=band,
        rate=rate,
        rate_ci=(float(ci[0]), float(ci[1])),
        intercept=intercept,
        r2=r2,
        fit_lags=(int(lo), int(hi)),
        half_life=float(half_life),
        horizon=float(horizon),
        regime=regime,
        horizon_factor=float(horizon_factor),
        threshold=float(tau),
        n_fit=n_fit,
        ci_method=method,
        probes=int(probes),
        notes=notes,
    )


def _horizon(median: np.ndarray, rate: float, intercept: float, factor: float) -> float:
    if median.size == 0 or not np.isfinite(median[0]):
        return float("nan")
    target = float(median[0]) + math.log(factor)
    below = np.nonzero(median <= target)[0]
    below = below[below >= 1]
    if below.size:
        k = int(below[0])
        a, b = float(median[k - 1]), float(median[k])
        if np.isfinite(a) and np.isfinite(b) and a > b:
            return float(k - 1 + (a - target) / (a - b))
        return float(k)
    if np.isfinite(rate) and rate < 0:
        observed = np.nonzero(np.isfinite(median))[0]
        last = float(observed.max()) if observed.size else 0.0
        return max(last, (target - intercept) / rate)
    return math.inf if np.isfinite(rate) else float("nan")  # no fall seen, no rate: unknown


# --------------------------------------------------------------------------- public

__all__ = ["HORIZON_FACTOR", "SURVIVE_FACTOR", "Decay", "fit_decay"]
