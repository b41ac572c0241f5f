"""The names of what a :class:`~gradscope.history.History` keeps per step and layer.

The summary keys (:data:`SUMMARY_KEYS`), the gate keys among them (:data:`GATE_KEYS`), the
spectral statistics (:data:`STAT_KEYS`), the carry lags (:data:`CARRY_LAGS`) and how a
regime is stored as a float (:data:`REGIME_CODES`). Importable without the History (the
Monitor's summaries and the reports use them); :mod:`gradscope.history` re-exports them.
"""

from __future__ import annotations

#: The statistics kept of the one-step spectral radius and norm (``radius_*``, ``norm_*``).
STAT_KEYS = ("median", "mean", "p05", "p95", "max", "frac_above_1")

#: The lags of the recorded cell-path carries (``gate_log_carry_lag{k}``).
CARRY_LAGS = (10, 100)

#: The gate summaries (:func:`gradscope.analysis.gates.summary.gate_summary`), NaN where the
#: layer's cell does not have them. LSTM ``gate_forget_*`` and GRU ``gate_update_*``: the
#: median and 10/90% quantiles of the forget gate ``f`` / update gate ``z`` over every unit,
#: step and sequence; vanilla ``gate_dphi_*``: the same of ``φ'(a_t)`` (``tanh'``). LSTM and
#: GRU: ``gate_log_carry_lag{k}``: natural log of the median over units and sequences of the
#: carry ``∏ f`` (``∏ z``) over the last ``k`` steps (:data:`CARRY_LAGS`); ``gate_carry_horizon``:
#: the first lag where that median carry falls below ``1/e`` (inf: not within the sequence);
#: on analysed steps only, ``gate_path_share``: the additive path's share of
#: ``‖∂s_T/∂s_{T−k}‖`` at the longest lag ``k = gate_path_share_lag``. Vanilla, analysed steps
#: only: ``gate_factor_norm``, the median of ``‖diag(φ'(a_t)) W_hh‖₂`` over sampled steps and
#: sequences, and ``gate_weight_norm`` ``‖W_hh‖₂``.
GATE_KEYS: tuple[str, ...] = (
    *(f"gate_{g}_{q}" for g in ("forget", "update", "dphi") for q in ("median", "p10", "p90")),
    *(f"gate_log_carry_lag{k}" for k in CARRY_LAGS),
    *("gate_carry_horizon", "gate_path_share", "gate_path_share_lag"),
    *("gate_factor_norm", "gate_weight_norm"),
)

#: The per-step, per-layer scalars a :class:`History` keeps, in storage order. ``T``/``B``:
#: steps and sequences recorded; ``nonfinite``: real states holding NaN/inf; ``grad_t0`` /
#: ``grad_tT``: the grad norm at ``t = 0`` and ``t = T``; ``rate*``, ``r2``, ``half_life``,
#: ``regime`` (coded, see :data:`REGIME_CODES`): the state-gradient decay
#: (:func:`gradscope.decay` ``of="state"``); ``loss_rate*`` and ``loss_regime``: the same fit
#: of the real loss gradient (``of="loss"``); ``radius_*``: spectral radius statistics and
#: ``norm_*``: spectral norm (σ_max) statistics of the one-step Jacobians
#: (:meth:`gradscope.analysis.spectra.Spectrum.summary` on a subsample); ``lyapunov`` and
#: ``lyapunov_stderr``: the leading Lyapunov exponent (NaN unless ``lyapunov=True``);
#: ``gate_*``: :data:`GATE_KEYS`. A history keeps the keys it was written with: files saved
#: before a key existed load without it (``scalar`` raises ``KeyError`` for it, ``summaries``
#: leaves it out).
SUMMARY_KEYS: tuple[str, ...] = (
    *("T", "B", "nonfinite", "grad_t0", "grad_tT"),
    *("rate", "rate_lo", "rate_hi", "r2", "half_life", "regime"),
    *("loss_rate", "loss_rate_lo", "loss_rate_hi", "loss_regime"),
    *(f"radius_{stat}" for stat in STAT_KEYS),
    *(f"norm_{stat}" for stat in STAT_KEYS),
    *("lyapunov", "lyapunov_stderr"),
    *GATE_KEYS,
)

#: How a regime is stored among the float summaries (NaN: not analysed; ``unknown``:
#: analysed, and nothing could be measured, e.g. every loss gradient NaN).
REGIME_CODES: dict[str, float] = {
    "vanishing": -1.0,
    "neutral": 0.0,
    "exploding": 1.0,
    "unknown": 2.0,
}

__all__ = ["CARRY_LAGS", "GATE_KEYS", "REGIME_CODES", "STAT_KEYS", "SUMMARY_KEYS"]
