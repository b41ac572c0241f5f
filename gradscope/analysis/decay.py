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
fitted line reaches that level (extrapolated); ``inf`` otherwise (NaN, unknown, when
no rate could be fitted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from gradscope._progress import analysis, progress_bar
from gradscope.analysis.finite import finite_prefix, with_overflow
from gradscope.analysis.fit import HORIZON_FACTOR, SURVIVE_FACTOR, Decay, fit_decay
from gradscope.analysis.lyapunov import lyapunov_window
from gradscope.errors import ArgumentError, MissingDataError, NumericalError
from gradscope.jacobians.dense import auto_chunk, finite_steps, iter_chunks, prep_chunk
from gradscope.jacobians.dense_walk import DenseWalk
from gradscope.jacobians.diagonal import input_log_norms, log_moduli, state_log_norms
from gradscope.jacobians.operator import operator_of
from gradscope.jacobians.products import BackwardSweep
from gradscope.traces import LayerTrace

Of = Literal["state", "input", "loss"]

#: States up to this size get exact norms (``U = I``) by default.
EXACT_MAX_D = 128
#: Number of probes for larger states.
DEFAULT_PROBES = 16
#: Steps (the last ones of each sequence) of the forward QR run that finds the probe basis.
BASIS_WINDOW = 500


@dataclass
class _Curves:
    """What a backward walk fills in, and the lags it has to reach."""

    p: int
    cap: int
    k_state: np.ndarray  # last state lag per sequence
    k_in: np.ndarray  # last input lag per sequence (-1: none)
    log_state: np.ndarray  # (K, B)
    log_in: np.ndarray | None  # (K', B)
    basis: np.ndarray  # (B, D, p) orthonormal probe columns U
    lo: int  # first step any walk reaches
    hi: int  # one past the last step


def _setup(layer, want_input, max_lag, probes, basis, seed) -> _Curves:
    D, B = layer.D, layer.B
    lengths = layer.seq_lengths
    p = (D if D <= EXACT_MAX_D else min(D, DEFAULT_PROBES)) if probes is None else int(probes)
    if not 1 <= p <= D:
        raise ArgumentError(f"{layer.name}: probes must be in 1..D={D}, got {p}")
    cap = int(lengths.max(initial=0)) if max_lag is None else int(max_lag)
    if cap < 0:
        raise ArgumentError(f"{layer.name}: max_lag must be >= 0, got {max_lag}")
    k_state = np.minimum(lengths, cap)
    k_in = np.minimum(lengths - 1, cap)
    log_state = np.full((int(k_state.max(initial=0)) + 1, B), np.nan)
    log_in = np.full((max(int(k_in.max(initial=-1)) + 1, 1), B), np.nan) if want_input else None
    log_state[0, lengths >= 0] = 0.0  # ‖Uᵀ P_0‖ = ‖Uᵀ‖ = 1 exactly
    u = np.empty((B, D, p))
    if p < D and basis is None:
        basis = probe_basis(layer, p, seed)
    for b in range(B):
        q = None if (p == D or basis is None) else np.asarray(basis[b])
        if p == D:
            q = np.eye(D)
        elif q is None or q.shape != (D, p) or not np.isfinite(q).all():
            q = np.linalg.qr(np.random.default_rng(seed + b).standard_normal((D, p)))[0]
        u[b] = q
    lo = int(np.maximum(lengths - 1 - cap, 0).min()) if B else 0
    return _Curves(p, cap, k_state, k_in, log_state, log_in, u, lo, int(lengths.max(initial=0)))


def probe_basis(layer: LayerTrace, p: int, seed: int) -> np.ndarray:
    """``(B, D, p)`` leading forward Lyapunov vectors at each sequence's final step.

    A QR iteration over the last :data:`BASIS_WINDOW` steps of every sequence (NaN blocks
    for sequences without a usable step).
    """
    return lyapunov_window(layer, p, seed, BASIS_WINDOW).vectors


def _dense_walk(layer: LayerTrace, c: _Curves, chunk: int | None, bar) -> dict[int, int]:
    """Walk back over dense Jacobian chunks; returns ``{sequence: step}`` of dead walks."""
    D, B = layer.D, layer.B
    lengths = layer.seq_lengths
    want_input = c.log_in is not None
    walks = [DenseWalk(np.ascontiguousarray(c.basis[b].T)) for b in range(B)]
    if chunk is None:
        chunk = auto_chunk(layer, cols=D + (layer.I if want_input else 0))
    dead_at: dict[int, int] = {}
    iters = [iter_chunks(layer, chunk, c.lo, c.hi, reverse=True)]
    if want_input:
        iters.append(iter_chunks(layer, chunk, c.lo, c.hi, wrt="input", reverse=True))
    for items in zip(*iters):
        sel = items[0][0].numpy()
        jac = prep_chunk(items[0][1], layer, D)
        ok = finite_steps(jac)
        kin = None
        if want_input:
            kin = prep_chunk(items[1][1], layer, layer.I)
            ok &= finite_steps(kin)
        for b in range(B):
            wk = walks[b]
            tb = int(lengths[b])
            for i in range(len(sel) - 1, -1, -1):
                j = int(sel[i])
                if j >= tb or not wk.alive:
                    continue
                lag_in, lag_st = tb - 1 - j, tb - j
                if lag_in > c.cap:
                    break
                if not ok[i, b]:
                    wk.alive = False
                    dead_at[b] = j
                    break
                try:
                    if kin is not None and lag_in <= c.k_in[b]:
                        c.log_in[lag_in, b] = wk.input_norm(kin[i, b])
                    if lag_st <= c.k_state[b]:
                        c.log_state[lag_st, b] = wk.state_step(jac[i, b])
                except NumericalError as exc:
                    raise NumericalError(
                        f"{layer.name}: decay at step {j} of sequence {b}: {exc}"
                    ) from None
        bar.update(len(sel))
    return dead_at


def _operator_walk(layer: LayerTrace, c: _Curves, bar) -> dict[int, int]:
    """Walk back with ``vjp`` products, all live sequences per step in one call."""
    lengths = layer.seq_lengths
    sweep = BackwardSweep(operator_of(layer).steps, torch.from_numpy(c.basis))
    alive = np.ones(layer.B, dtype=bool)
    dead_at: dict[int, int] = {}
    for j in range(c.hi - 1, c.lo - 1, -1):
        lag_in = lengths - 1 - j
        live = np.nonzero(alive & (j < lengths) & (lag_in <= c.cap))[0]
        bar.update(1)
        if not live.size:
            continue
        if c.log_in is not None:
            use = live[lag_in[live] <= c.k_in[live]]
            if use.size:
                v = sweep.input_log_norms(j, torch.from_numpy(use)).numpy()
                bad = ~np.isfinite(v) & ~(v == -np.inf)
                c.log_in[lag_in[use[~bad]], use[~bad]] = v[~bad]
                for b in use[bad]:
                    alive[b], dead_at[int(b)] = False, j
                live = live[alive[live]]
        use = live[lag_in[live] + 1 <= c.k_state[live]]
        if use.size:
            v = sweep.state_step(j, torch.from_numpy(use)).numpy()
            c.log_state[lag_in[use] + 1, use] = np.where(np.isnan(v), np.nan, v)
            for b in use[~np.isfinite(v)]:
                alive[b] = False
                if np.isnan(v[use == b][0]):
                    dead_at[int(b)] = j
    return dead_at


@analysis
def decay_curves(
    layer: LayerTrace,
    of: Sequence[str] = ("state",),
    *,
    max_lag: int | None = None,
    probes: int | None = None,
    basis: np.ndarray | None = None,
    seed: int = 0,
    chunk: int | None = None,
    method: str = "auto",
    progress: bool | str = "auto",
) -> tuple[np.ndarray, np.ndarray | None, int, list[str]]:
    """The log-norm curves of :func:`decay` for ``"state"`` and ``"input"``, in one walk.

    Args:
        layer: The recorded layer.
        of: ``("state",)`` or ``("state", "input")``.
        max_lag: Largest lag per sequence (default: the whole sequence).
        probes: Probe directions ``p`` (``D``: exact; default ``D`` for ``D <= 128``, else 16).
        basis: ``(B, D, p)`` probe columns to use (e.g. :attr:`Lyapunov.vectors` of a run over
            the whole sequences); default: :func:`probe_basis`.
        seed: Seed of the probe basis.
        chunk: Steps per chunk of dense Jacobians.
        method: ``"dense"`` (chunks of Jacobians; the default for exact norms, ``p = D``, and
            for stored Jacobians), ``"operator"`` (``vjp`` products, ``O(B·p·w)`` per step;
            the default otherwise) or ``"auto"``.
        progress: Progress bar: True, False or ``"auto"``.

    Returns:
        ``(log_state (K, B), log_input (K', B) or None, p, notes)``.
    """
    op = operator_of(layer)
    want_input = "input" in of
    if op.route("decay", method) == "diagonal":
        return _diagonal_curves(layer, want_input, max_lag, probes, basis, seed, progress)
    c = _setup(layer, want_input, max_lag, probes, basis, seed)
    operators = op.route("decay", method, probes=c.p) == "operator"  # the one place
    cols = c.p if operators else layer.D
    work = float(c.k_state.sum()) * 2 * cols * layer.D * (layer.D + want_input * layer.I)
    with progress_bar(
        total=c.hi - c.lo, desc=f"decay {layer.name}", progress=progress, work=work
    ) as bar:
        try:
            if operators:
                dead_at = _operator_walk(layer, c, bar)
            else:
                dead_at = _dense_walk(layer, c, chunk, bar)
        except (np.linalg.LinAlgError, torch.linalg.LinAlgError) as exc:
            raise NumericalError(
                f"{layer.name}: the decay walk failed ({type(exc).__name__}: {exc})"
            ) from None
    notes: list[str] = []
    if dead_at:
        first = min(dead_at.items(), key=lambda kv: -kv[1])
        notes.append(
            f"non-finite Jacobians in {len(dead_at)} sequence(s): their curves stop at the "
            f"first one met walking back (latest: step {first[1]} of sequence {first[0]})"
        )
    if c.p < layer.D:
        notes.append(
            f"norms of Uᵀ∂s_T/∂s_t with p={c.p} probe directions (leading forward Lyapunov "
            f"vectors at T) out of D={layer.D}: a lower bound, exact at lag 0 and in the "
            "long-run rate"
        )
    return c.log_state, c.log_in, c.p, notes


#: Largest diagonal state whose input curve is computed exactly (subspace iteration on every
#: lag, ``O(iterations · 4 · D)`` per lag); above it, the probe walk of the general path.
EXACT_INPUT_MAX_D = 2048


def _diagonal_curves(layer, want_input, max_lag, probes, basis, seed, progress):
    """The curves of a diagonal transition.

    The state curve exactly; the input curve exactly up to :data:`EXACT_INPUT_MAX_D`, above
    it by the probe walk with the caller's ``probes`` and ``basis``, as on the general path
    (:func:`gradscope.diagnose` passes its Lyapunov vectors, so no second basis is computed).
    """
    lengths = layer.seq_lengths
    cap = int(lengths.max(initial=0)) if max_lag is None else int(max_lag)
    if cap < 0:
        raise ArgumentError(f"{layer.name}: max_lag must be >= 0, got {max_lag}")
    logs = log_moduli(layer)
    log_state, cut = state_log_norms(logs, lengths, cap)
    notes = ["exact: ‖∂s_T/∂s_t‖ of a diagonal transition from its eigenvalues (no probes)"]
    if cut:
        notes.append(
            f"{cut} sequence(s) reset their state (every eigenvalue 0, e.g. a document start): "
            "their curves stop at the reset, which no gradient crosses"
        )
    if np.isnan(log_state[1:]).any() and (log_state.shape[0] > 1):
        reach = np.minimum(lengths, cap)
        short = [b for b in range(layer.B) if np.isnan(log_state[1 : reach[b] + 1, b]).any()]
        if short:
            notes.append(
                f"non-finite steps in {len(short)} sequence(s): their state curves stop at "
                "the first one met walking back"
            )
    log_in = None
    p = layer.D
    if want_input and layer.D <= EXACT_INPUT_MAX_D:
        log_in, change = input_log_norms(layer, logs, lengths, cap, seed)
        notes.append("input curve: ‖∂s_T/∂x_t‖ by subspace iteration on the closed-form products")
        if change:
            notes.append(
                f"input curve: the iteration stopped with σ still changing by up to {change:.1e}"
                " (relative) at some lag: there a lower bound"
            )
    elif want_input:  # large states: the probe walk (a lower bound, exact in the long run)
        c = _setup(layer, True, max_lag, probes, basis, seed)
        with progress_bar(total=c.hi - c.lo, desc=f"decay {layer.name}", progress=progress) as bar:
            _operator_walk(layer, c, bar)
        log_in, p = c.log_in, c.p
        notes.append(
            f"input curve with p={c.p} probe directions out of D={layer.D} (a lower bound, "
            "exact in the long-run rate)"
        )
    return log_state, log_in, p, notes


def loss_log_norms(layer: LayerTrace, max_lag: int | None = None) -> np.ndarray:
    """``(K, B)`` ``ln ‖∂L/∂s_t‖`` at lag ``k = T_b - t`` of each sequence (NaN beyond it).

    Raises:
        MissingDataError: the trace holds no loss gradients.
    """
    norms = layer.grad_norms()  # (T+1, B)
    lengths = layer.seq_lengths
    cap = int(lengths.max(initial=0)) if max_lag is None else int(max_lag)
    if cap < 0:
        raise ArgumentError(f"{layer.name}: max_lag must be >= 0, got {max_lag}")
    K = int(np.minimum(lengths, cap).max(initial=0)) + 1
    out = np.full((K, layer.B), np.nan)
    with np.errstate(divide="ignore"):
        for b in range(layer.B):
            tb = int(lengths[b])
            n = min(tb, cap) + 1
            out[:n, b] = np.log(norms[tb - np.arange(n), b])  # exact zero -> -inf
    return out


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
    method: str = "auto",
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
        chunk: Steps per chunk of dense Jacobians (default: what fits 64 MiB).
        method: ``"dense"``, ``"operator"`` or ``"auto"`` (see :func:`decay_curves`); both
            give the same curves up to rounding.
        progress: Progress bar: True, False or ``"auto"``.

    Returns:
        A :class:`Decay`.

    States that overflow (NaN/inf) end a sequence: ``"state"`` and ``"input"`` curves rest
    on the finite prefix of each sequence (:mod:`gradscope.analysis.finite`), the notes say
    on how many steps, and norms that grow over those steps before the overflow make the
    regime ``"exploding"``.

    Raises:
        MissingDataError: ``of="loss"`` but the trace has no loss gradients, or no
            sequence has a finite step.
        NumericalError: a numerical method failed on the data (every SVD driver, say).
        ArgumentError: an unknown ``of``, or ``probes``/``max_lag`` out of range.
    """
    t_ref = float(np.median(layer.seq_lengths)) if layer.B else 0.0
    if of == "loss":
        return fit_decay(
            layer.name,
            "loss",
            loss_log_norms(layer, max_lag),
            t_ref,
            fit_range=fit_range,
            horizon_factor=horizon_factor,
        )
    if of not in ("state", "input"):
        raise ArgumentError(f"{layer.name}: of must be 'state', 'input' or 'loss', got {of!r}")
    view, prefix = finite_prefix(layer)
    if view is None:
        raise MissingDataError(f"{layer.name}: no finite step to measure ({prefix.describe()})")
    layer = view
    t_ref = float(np.median(layer.seq_lengths)) if layer.B else 0.0
    log_state, log_in, p, notes = decay_curves(
        layer,
        ("state", of),
        max_lag=max_lag,
        probes=probes,
        seed=seed,
        chunk=chunk,
        method=method,
        progress=progress,
    )
    curve = log_in if of == "input" else log_state
    fitted = fit_decay(
        layer.name,
        of,
        curve,
        t_ref,
        fit_range=fit_range,
        horizon_factor=horizon_factor,
        probes=p,
        notes=notes,
    )
    return with_overflow(fitted, prefix)


__all__ = [
    "HORIZON_FACTOR",
    "SURVIVE_FACTOR",
    "Decay",
    "decay",
    "decay_curves",
    "fit_decay",
    "loss_log_norms",
    "probe_basis",
]
