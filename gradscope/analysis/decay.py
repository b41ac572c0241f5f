r"""How gradient norms fall with distance in time, with an exponential fit and a regime.

For a sequence of length :math:`T = T_b` (its own valid length), the gradient that flows
from the last state back to lag ``k`` is carried by the product of one-step Jacobians

.. math:: P_k = \frac{\partial s_T}{\partial s_{T-k}} = J_T J_{T-1} \cdots J_{T-k+1},
          \qquad P_0 = I, \qquad J_t = \frac{\partial s_t}{\partial s_{t-1}},

and the three curves are

* ``of="state"``: :math:`\lVert P_k\rVert_2` for ``k = 0 .. T``;
* ``of="input"``: :math:`\lVert \partial s_T/\partial x_{T-k}\rVert_2 = \lVert P_k K_{T-k}\rVert_2`
  with :math:`K_t = \partial s_t/\partial x_t`, for ``k = 0 .. T-1``;
* ``of="loss"``: :math:`\lVert \partial L/\partial s_t\rVert_2` recorded with the trace
  (``layer.grads``), reported at lag ``k = T - t``.

**Log space.** Walking backwards from ``T``, the running product is kept as
:math:`U^\top P_k = e^{\ell_k} M_k` with :math:`\lVert M_k\rVert_2 = 1` after every step:
:math:`M \leftarrow M J`, :math:`\sigma = \lVert M\rVert_2`,
:math:`\ell \leftarrow \ell + \ln\sigma`,
:math:`M \leftarrow M/\sigma`. Then :math:`\ln\lVert U^\top P_k\rVert_2 = \ell_k` *exactly*
(renormalising by the spectral norm itself), with no underflow or overflow at any lag: a
2,000-step product of ``0.5·I`` gives :math:`\ell_k = k \ln 0.5` to rounding. Spectral norms
are computed by power iteration warm-started from the previous lag (the leading left
singular vector of :math:`P_k` converges as ``k`` grows, Oseledets), iterated to machine
precision, with an SVD fallback.

**Probes.** With ``U = I`` (``probes = D``, the default for ``D <= 128``) the norms are the
exact :math:`\lVert P_k\rVert_2` at a cost of :math:`2D^3` per lag. For large states that is
too slow, so ``U`` has ``p < D`` orthonormal columns spanning the ``p`` leading *forward*
Lyapunov vectors at the final step (a QR iteration over the last 500 steps of the sequence,
as in :func:`gradscope.lyapunov`; :func:`gradscope.diagnose` reuses its Lyapunov run over the
whole sequence instead), at :math:`2pD^2` per lag. Then
:math:`\lVert U^\top P_k\rVert_2 \le \lVert P_k\rVert_2`, with equality at lag 0 and, as ``k``
grows, whenever the leading left singular vector of :math:`P_k` (which converges to the
leading forward Lyapunov vector at ``T``) lies in ``span(U)``: the long-run rate is exact.

**Fit.** ``ln norm`` is regressed on lag (:func:`scipy.stats.linregress`) for the *median*
curve over sequences (robust to one odd sequence, and it is the curve plotted), over
``fit_lags = (lo, hi)``: ``hi`` is the largest lag that at least half of the sequences
reach with a finite value, and ``lo = max(1, ceil(hi/10))`` skips the first 10% of lags,
where non-normal transients (growth before decay, e.g. ``W`` with a large singular value
but spectral radius < 1) and the short-lag structure of the loss gradient live; the
long-run rate is what decides whether a gradient survives. The curves of consecutive lags
are strongly correlated (a random walk with drift), so OLS standard errors would be far
too small. The 95% interval therefore comes from independent replicates: the OLS slopes of
the individual sequences over the same lags (Student t with ``n - 1`` degrees of freedom
around the median-curve rate) when at least two sequences reach the fit range; with one
sequence, the slopes of 10 consecutive blocks of lags (batch means). A curve that is an
exact exponential has a zero-width interval.

**Regime.** A rate :math:`r` means the gradient from ``T`` steps back arrives scaled by
:math:`e^{rT}`. Over a sequence of length :math:`T_{ref}` (the median sequence length) the
signal is said to *survive* while it stays within a factor 10 either way, i.e.
:math:`|r| \le \tau = \ln 10 / T_{ref}`; so the neutral band shrinks as sequences get longer
(``W`` with spectral radius 0.99 is neutral for 20 steps and vanishing for 2,000). The
regime is ``"vanishing"`` when :math:`r < -\tau` *and* the whole 95% interval is below 0,
``"exploding"`` when :math:`r > \tau` and the interval is above 0, else ``"neutral"``.
One-step norms never enter the decision.

**Half-life** :math:`\ln 2 / (-r)` (``inf`` when :math:`r \ge 0`). **Horizon**: the lag
where the median curve first falls ``horizon_factor`` (default ``1e-3``: the gradient
signal is below 0.1% of its lag-0 value) below its lag-0 value, linearly interpolated in
log space; if it never does within the observed lags and :math:`r < 0`, the lag where the
fitted line reaches that level (extrapolated); ``inf`` otherwise.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from scipy import stats

from gradscope._json import dataclass_dict
from gradscope._progress import analysis, progress_bar
from gradscope.analysis.lyapunov import _finite_steps, _prep_chunk, _run, auto_chunk, iter_chunks
from gradscope.errors import MissingDataError
from gradscope.traces import LayerTrace

Of = Literal["state", "input", "loss"]

#: States up to this size get exact norms (``U = I``) by default.
EXACT_MAX_D = 128
#: Number of probes for larger states.
DEFAULT_PROBES = 16
#: Steps (the last ones of each sequence) of the forward QR run that finds the probe basis.
BASIS_WINDOW = 500
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
        regime: ``"vanishing"``, ``"exploding"`` or ``"neutral"``.
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


# --------------------------------------------------------------------------- norms
def _top_sv(x: np.ndarray, w: np.ndarray | None) -> tuple[float, np.ndarray | None]:
    """Largest singular value of ``x`` ``(p, n)`` and its left singular vector.

    Power iteration on ``x xᵀ`` from ``w`` (the previous lag's vector, so one or two
    iterations usually suffice), stopped when the eigen-residual
    ``‖x xᵀ w − λ w‖ <= 1e-12 λ`` (then ``λ`` is within ``1e-12 λ`` of an eigenvalue of
    ``x xᵀ``); SVD when that takes more than 40 iterations (close singular values).
    """
    p = x.shape[0]
    if p == 1:
        return float(np.linalg.norm(x)), None
    if w is None:
        w = np.full(p, 1.0 / math.sqrt(p))
    for _ in range(40):
        y = w @ x  # xᵀ w
        lam = float(y @ y)  # Rayleigh quotient of x xᵀ
        if not (0.0 < lam < math.inf):
            break
        z = x @ y
        res = float(np.linalg.norm(z - lam * w))
        w = z / float(np.linalg.norm(z))
        if res <= 1e-12 * lam:
            return math.sqrt(lam), w
    if not np.isfinite(x).all():
        return math.nan, None
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    return float(s[0]), u[:, 0].copy()


class _Walk:
    """Backward walk of one sequence: ``Uᵀ P_k`` kept as ``e^ℓ M`` with ``‖M‖₂ = 1``."""

    __slots__ = ("M", "alive", "ell", "w_in", "w_st")

    def __init__(self, ut: np.ndarray) -> None:
        self.M = ut  # (p, D), orthonormal rows: ‖M‖₂ = 1
        self.ell = 0.0
        self.w_st: np.ndarray | None = None
        self.w_in: np.ndarray | None = None
        self.alive = True

    def input_norm(self, kin: np.ndarray) -> float:
        """``ln ‖Uᵀ P_k K‖₂`` for the input Jacobian ``K`` (D, I) at the current lag."""
        s, self.w_in = _top_sv(self.M @ kin, self.w_in)
        return self.ell + (math.log(s) if s > 0 else -math.inf)

    def state_step(self, jac: np.ndarray) -> float:
        """Multiply one more Jacobian in (one lag further back); return ``ln ‖Uᵀ P_k‖₂``."""
        m = self.M @ jac
        s, self.w_st = _top_sv(m, self.w_st)
        if not (s > 0 and math.isfinite(s)):
            self.alive = False
            return -math.inf if s == 0 else math.nan
        self.M = m / s
        self.ell += math.log(s)
        return self.ell


def _probe_basis(
    layer: LayerTrace, p: int, seed: int, chunk: int | None
) -> list[np.ndarray | None]:
    """Leading ``p`` forward Lyapunov vectors at each sequence's final step, ``(D, p)``."""
    return _run(layer, p, 0, "random", seed, chunk, 2, 10, False, window=BASIS_WINDOW)[1]


@analysis
def _walk(
    layer: LayerTrace,
    want_input: bool,
    max_lag: int | None,
    probes: int | None,
    basis: list[np.ndarray | None] | None,
    seed: int,
    chunk: int | None,
    progress: bool | str,
) -> tuple[np.ndarray, np.ndarray | None, int, list[str]]:
    """Backward pass: ``(K, B)`` log state norms and (optionally) log input norms."""
    D, B = layer.D, layer.B
    lengths = layer.seq_lengths
    p = (D if D <= EXACT_MAX_D else min(D, DEFAULT_PROBES)) if probes is None else int(probes)
    if not 1 <= p <= D:
        raise ValueError(f"{layer.name}: probes must be in 1..D={D}, got {p}")
    cap = int(lengths.max()) if max_lag is None else int(max_lag)
    if cap < 0:
        raise ValueError(f"{layer.name}: max_lag must be >= 0, got {max_lag}")
    k_state = np.minimum(lengths, cap)  # last state lag per sequence
    k_in = np.minimum(lengths - 1, cap)  # last input lag per sequence (-1: none)
    log_state = np.full((int(k_state.max(initial=0)) + 1, B), np.nan)
    log_in = np.full((max(int(k_in.max(initial=-1)) + 1, 1), B), np.nan) if want_input else None
    notes: list[str] = []

    if p < D and basis is None:
        basis = _probe_basis(layer, p, seed, chunk)
    walks: list[_Walk] = []
    for b in range(B):
        if p == D:
            ut = np.eye(D)
        else:
            q = basis[b] if basis is not None else None
            if q is None or q.shape != (D, p):
                q = np.linalg.qr(np.random.default_rng(seed + b).standard_normal((D, p)))[0]
            ut = np.ascontiguousarray(q.T)
        walks.append(_Walk(ut))
        if lengths[b] >= 0:
            log_state[0, b] = 0.0  # ‖Uᵀ P_0‖ = ‖Uᵀ‖ = 1 exactly

    lo = int(np.maximum(lengths - 1 - cap, 0).min()) if B else 0
    hi = int(lengths.max(initial=0))
    if chunk is None:
        chunk = auto_chunk(layer, cols=D + (layer.I if want_input else 0))
    dead_at: dict[int, int] = {}
    iters = [iter_chunks(layer, chunk, lo, hi, reverse=True)]
    if want_input:
        iters.append(iter_chunks(layer, chunk, lo, hi, wrt="input", reverse=True))
    work = float(k_state.sum()) * 2 * p * D * (D + (layer.I if want_input else 0))
    with progress_bar(
        total=hi - lo, desc=f"decay {layer.name}", progress=progress, work=work
    ) as bar:
        for items in zip(*iters):
            sel = items[0][0].numpy()
            jac = _prep_chunk(items[0][1], layer, D)
            ok = _finite_steps(jac)
            kin = None
            if want_input:
                kin = _prep_chunk(items[1][1], layer, layer.I)
                ok &= _finite_steps(kin)
            for b in range(B):
                wk = walks[b]
                tb = int(lengths[b])
                for i in range(len(sel) - 1, -1, -1):
                    j = int(sel[i])
                    if j >= tb or not wk.alive:
                        continue
                    lag_in = tb - 1 - j
                    lag_st = tb - j
                    if lag_in > cap:
                        break
                    if not ok[i, b]:
                        wk.alive = False
                        dead_at[b] = j
                        break
                    if kin is not None and lag_in <= k_in[b]:
                        log_in[lag_in, b] = wk.input_norm(kin[i, b])
                    if lag_st <= k_state[b]:
                        log_state[lag_st, b] = wk.state_step(jac[i, b])
            bar.update(len(sel))
    if dead_at:
        first = min(dead_at.items(), key=lambda kv: -kv[1])
        notes.append(
            f"non-finite Jacobians in {len(dead_at)} sequence(s): their curves stop at the "
            f"first one met walking back (latest: step {first[1]} of sequence {first[0]})"
        )
    if p < D:
        notes.append(
            f"norms of Uᵀ∂s_T/∂s_t with p={p} probe directions (leading forward Lyapunov "
            f"vectors at T) out of D={D}: a lower bound, exact at lag 0 and in the long-run rate"
        )
    return log_state, log_in, p, notes


def _loss_log_norms(layer: LayerTrace, max_lag: int | None) -> np.ndarray:
    if layer.grads is None:
        raise MissingDataError(
            f"{layer.name} ({layer.kind}): no loss gradients in this trace, so "
            "decay(of='loss') has nothing to read. Record them with "
            "`with gradscope.record(model, grads=True) as rec:` around the forward and "
            "loss.backward(), use gradscope.profile(model, x, loss_fn=...), or a "
            "gradscope.Monitor in training"
        )
    g = layer.grads.detach().to(device="cpu", dtype=torch.float64)
    norms = torch.linalg.vector_norm(g, dim=-1).numpy()  # (T+1, B)
    lengths = layer.seq_lengths
    cap = int(lengths.max(initial=0)) if max_lag is None else int(max_lag)
    if cap < 0:
        raise ValueError(f"{layer.name}: max_lag must be >= 0, got {max_lag}")
    K = int(np.minimum(lengths, cap).max(initial=0)) + 1
    out = np.full((K, layer.B), np.nan)
    with np.errstate(divide="ignore"):
        for b in range(layer.B):
            tb = int(lengths[b])
            n = min(tb, cap) + 1
            t = tb - np.arange(n)
            out[:n, b] = np.log(norms[t, b])  # exact zero -> -inf (a true zero)
    return out


# --------------------------------------------------------------------------- fit
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


def _replicate_interval(rate: float, slopes: np.ndarray) -> tuple[float, float]:
    """95% Student-t interval around ``rate`` from independent replicate slopes (n >= 2)."""
    se = float(slopes.std(ddof=1) / math.sqrt(slopes.size))
    tq = float(stats.t.ppf(0.975, slopes.size - 1))
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
        raise ValueError(f"{name}: horizon_factor must be in (0, 1), got {horizon_factor}")
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
        res = stats.linregress(lags[sel].astype(float), median[sel])
        rate, intercept = float(res.slope), float(res.intercept)
        r2 = float(res.rvalue**2) if np.isfinite(res.rvalue) else 1.0
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
                tq = float(stats.t.ppf(0.975, max(n_fit - 2, 1)))
                ci = (rate - tq * float(res.stderr), rate + tq * float(res.stderr))
                method = "ols"
                notes.append("rate interval from OLS (too few lags for replicates): optimistic")
    else:
        notes.append(
            f"too few lags to fit ({n_fit} in {lo}..{hi}; need 3): rate unknown, regime "
            "reported as neutral"
        )
    if math.isnan(rate):
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
    return math.inf


# --------------------------------------------------------------------------- public
def decay(
    layer: LayerTrace,
    of: Of = "state",
    *,
    max_lag: int | None = None,
    probes: int | None = None,
    fit_range: tuple[int, int] | None = None,
    horizon_factor: float = HORIZON_FACTOR,
    seed: int = 0,
    chunk: int | None = None,
    progress: bool | str = "auto",
) -> Decay:
    r"""Gradient norms against distance in time, their exponential rate and the regime.

    See the module docstring for the definitions, the log-space accumulation, the fit, the
    confidence interval and the regime thresholds.

    Args:
        layer: The recorded layer.
        of: ``"state"`` (:math:`\lVert\partial s_T/\partial s_{T-k}\rVert`), ``"input"``
            (:math:`\lVert\partial s_T/\partial x_{T-k}\rVert`) or ``"loss"``
            (:math:`\lVert\partial L/\partial s_t\rVert`, needs ``layer.grads``).
        max_lag: Largest lag computed per sequence (default: the whole sequence).
        probes: Probe directions ``p`` (``D``: exact norms; default ``D`` when
            ``D <= 128``, else 16). Ignored for ``"loss"``.
        fit_range: ``(lo, hi)`` lags to fit, overriding the default range.
        horizon_factor: The horizon is where the norm has fallen by this factor.
        seed: Seed of the probe basis (when ``p < D``).
        chunk: Steps per chunk of Jacobians (default: what fits 64 MiB).
        progress: Progress bar: True, False or ``"auto"``.

    Returns:
        A :class:`Decay`.

    Raises:
        MissingDataError: ``of="loss"`` but the trace has no loss gradients.
        ValueError: an unknown ``of``, or ``probes``/``max_lag`` out of range.
    """
    t_ref = float(np.median(layer.seq_lengths)) if layer.B else 0.0
    if of == "loss":
        return fit_decay(
            layer.name,
            "loss",
            _loss_log_norms(layer, max_lag),
            t_ref,
            fit_range=fit_range,
            horizon_factor=horizon_factor,
        )
    if of not in ("state", "input"):
        raise ValueError(f"{layer.name}: of must be 'state', 'input' or 'loss', got {of!r}")
    log_state, log_in, p, notes = _walk(
        layer, of == "input", max_lag, probes, None, seed, chunk, progress
    )
    curve = log_in if of == "input" else log_state
    return fit_decay(
        layer.name,
        of,
        curve,
        t_ref,
        fit_range=fit_range,
        horizon_factor=horizon_factor,
        probes=p,
        notes=notes,
    )


__all__ = ["Decay", "decay", "fit_decay"]
