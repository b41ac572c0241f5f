"""Plain-language lines of a gate view: :class:`GateView`, its sentence and its table cell.

The numbers come from :mod:`~gradscope.analysis.gates.values` (gate distributions),
:mod:`~gradscope.analysis.gates.carry` (carries) and :mod:`~gradscope.analysis.gates.paths`
(the Jacobian split); this module only holds them and says what they mean.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradscope._json import jsonable
from gradscope.analysis.gates.values import QUANTILES

#: Lag of the plain-language sentence (or the longest lag, if shorter).
SENTENCE_LAG = 100
#: An additive-path share below this (above 1 minus this): the gradient travels through the
#: recurrent weights (through the gate).
THROUGH_WEIGHTS = 0.1

#: The sentence of a gate view with no finite gate value (diverged or empty layers).
NOT_MEASURED = (
    "No gate numbers: no recorded step has finite gates (the layer's states or weights are "
    "NaN/inf, or it recorded no sequence)."
)


def _median(a: np.ndarray) -> float:
    """``nanmedian`` of ``a``; NaN, without a warning, when it holds no finite value."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN or empty
        return float(np.nanmedian(a)) if a.size else math.nan


@dataclass
class GateView:
    """Gate statistics of one LSTM, GRU or vanilla RNN layer (see the module docstring).

    Attributes:
        name: The layer's name.
        kind: The cell family (its adapter's kind).
        T: Median sequence length.
        path: The additive path in one word, as the family declares it: ``"cell"`` (LSTM
            ``diag(f)`` on ``c → c``), ``"update"`` (GRU ``diag(z)``) or ``"none"``
            (vanilla: no additive path).
        gates: Gate name -> ``(T, 5)`` quantiles per timestep over units and sequences.
        medians: Gate name -> median over every unit, step and sequence.
        lags: ``(K,)`` lags ``0 .. K-1`` of :attr:`carry` (empty for vanilla).
        carry: ``(K, 5)`` quantiles over units and sequences of ``ln C_k`` (natural log).
        carry_max: ``(K,)`` median over sequences of ``max_j ln C_k[j] = ln ‖Π^A_k‖₂``.
        walk_lags: ``(L,)`` lags where the walk measured its norms.
        path_log: ``(L,)`` median over sequences of ``ln ‖Uᵀ Π^A_k‖₂``.
        rest_log: ``(L,)`` median over sequences of ``ln ‖Uᵀ E_k‖₂``.
        share: ``(L,)`` median over sequences of the share of the additive path.
        total_log: ``(L,)`` median over sequences of ``ln ‖Uᵀ P_k‖₂`` (``P_k = Π^A_k + E_k``;
            with ``U = I`` the state decay ``‖∂s_T/∂s_{T−k}‖₂`` of :func:`gradscope.decay`).
        probes: Probe columns of the walk (``D``: exact).
        factor: ``(S, 5)`` vanilla only: quantiles over sequences of
            ``‖diag(φ'(a_t)) W_hh‖₂`` at the steps :attr:`factor_steps`.
        factor_steps: ``(S,)`` those steps (0-based).
        weight_norm: ``‖W_hh‖₂`` (vanilla; NaN otherwise).
        notes: What was sampled or left out.
        gate: The family's carried gate (``"f"``, ``"z"``), None without an additive path.
        word: The carried gate in a word (``"forget"``, ``"update"``, ``"dphi"``).
        path_text: The additive path in a sentence (``"cell path (diag f on c)"``).
        short_text: The additive path in a table cell (``"cell path"``).
        rate: The fitted state-decay rate of the layer (:func:`gradscope.decay`), when the
            diagnosis set it; else (NaN) the sentences take the slope of
            :attr:`total_log` against :attr:`walk_lags`.
        lambda1: The layer's leading Lyapunov exponent, when the diagnosis set it (NaN).
    """

    name: str
    kind: str
    T: float
    path: str
    gates: dict[str, np.ndarray]
    medians: dict[str, float]
    lags: np.ndarray
    carry: np.ndarray
    carry_max: np.ndarray
    walk_lags: np.ndarray
    path_log: np.ndarray
    rest_log: np.ndarray
    share: np.ndarray
    total_log: np.ndarray = field(default_factory=lambda: np.zeros(0))
    probes: int = 0
    factor: np.ndarray = field(default_factory=lambda: np.zeros((0, len(QUANTILES))))
    factor_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    weight_norm: float = math.nan
    notes: list[str] = field(default_factory=list)
    gate: str | None = None
    word: str = ""
    path_text: str = ""
    short_text: str = ""
    rate: float = math.nan
    lambda1: float = math.nan

    def long_run_rate(self) -> float:
        """The rate that decides (natural log per step): :attr:`rate`, else the walk's slope.

        The slope is the least-squares fit of :attr:`total_log` (``ln ‖∂s_T/∂s_{T−k}‖₂``,
        median over sequences) against the lag, over the finite lags past the first tenth.
        """
        if math.isfinite(self.rate):
            return self.rate
        lags, logs = np.asarray(self.walk_lags, float), np.asarray(self.total_log, float)
        if lags.size != logs.size:
            return math.nan
        ok = np.isfinite(logs) & (lags >= lags.max(initial=0) / 10)
        if ok.sum() < 3 or np.ptp(lags[ok]) == 0:
            return math.nan
        return float(np.polyfit(lags[ok], logs[ok], 1)[0])

    def _through(self, share: float) -> str:
        """Which path the gradient takes, from the additive path's share (empty: both)."""
        if not math.isfinite(share):
            return ""
        if share < THROUGH_WEIGHTS:
            return "it travels through the recurrent weights, not the gate"
        if share > 1 - THROUGH_WEIGHTS:
            return "the gate carries it"
        return ""

    def share_at(self, lag: int) -> tuple[int, float]:
        """``(lag actually used, share)``: the measured lag closest to ``lag``."""
        if self.walk_lags.size == 0:
            return lag, math.nan
        i = int(np.argmin(np.abs(self.walk_lags - lag)))
        return int(self.walk_lags[i]), float(self.share[i])

    def sentence(self) -> str:
        """One plain-language line: which path carries the gradient, how far, the gates."""
        if not any(math.isfinite(v) for v in self.medians.values()):
            return NOT_MEASURED
        if self.gate is None:
            med = _median(self.factor[:, 2])
            d = self.medians.get("φ'", math.nan)
            if self.weight_norm == 0:
                return (
                    "No recurrent path at all: W_hh = 0, so ∂s_t/∂s_(t−1) = 0 and no gradient "
                    "reaches back further than one step (the state forgets its past at once)."
                )
            ratio = med / self.weight_norm
            out = (
                f"No additive path: every step back multiplies by diag(φ′) W_hh, median norm "
                f"{med:.2f} per step (‖W_hh‖₂ = {self.weight_norm:.2f}, φ′ median {d:.2f}, so "
                f"saturation shrinks it ×{ratio:.2f})."
            )
            rate = self.long_run_rate()
            if med > 1 and rate < 0:
                lam = f", λ1 {self.lambda1:+.3f}" if math.isfinite(self.lambda1) else ""
                out += (
                    f" That norm only bounds one step: the product of the factors falls at "
                    f"{rate:+.3f}/step{lam} (×{math.exp(rate):.2f} per step), so the factors "
                    "are non-normal."
                )
            return out
        gate, g, what = self.word, self.gate, self.path_text
        want = min(SENTENCE_LAG, int(self.lags[-1]) if self.lags.size else 0)
        lag, share = self.share_at(want)
        i = int(np.argmin(np.abs(self.walk_lags - lag))) if self.walk_lags.size else 0
        total = math.exp(self.total_log[i]) if self.total_log.size else math.nan
        best = math.exp(self.carry_max[lag]) if lag < len(self.carry_max) else math.nan
        through = self._through(share)
        return (
            f"{lag} steps back ‖∂s_T/∂s_T−{lag}‖ = {total:.2g} and the {what} carries "
            f"{100 * share:.0f}% of it{': ' + through if through else ''} (its best unit "
            f"keeps ∏{g} = {best:.2g}); {gate} gates median "
            f"{self.medians.get(g, math.nan):.2f}."
        )

    def short(self) -> str:
        """A few words for a table cell: the path's share and the median carried gate."""
        if not any(math.isfinite(v) for v in self.medians.values()):
            return "no finite gate values"
        if self.gate is None:
            if self.weight_norm == 0:
                return "no recurrent path (W_hh = 0)"
            med, rate = _median(self.factor[:, 2]), self.long_run_rate()
            out = f"no gate path; ‖diag(φ′)W_hh‖₂ ≈ {med:.2f} per step"
            if med > 1 and rate < 0:
                out += f", yet the product falls at {rate:+.3f}/step (non-normal)"
            return out
        g, what = self.gate, self.short_text
        want = min(SENTENCE_LAG, int(self.lags[-1]) if self.lags.size else 0)
        lag, share = self.share_at(want)
        through = (
            ": through the weights" if math.isfinite(share) and share < THROUGH_WEIGHTS else ""
        )
        return (
            f"{what} carries {100 * share:.0f}% at lag {lag}{through}; {g} median "
            f"{self.medians.get(g, math.nan):.2f}"
        )

    def to_dict(self, arrays: bool = True) -> dict[str, Any]:
        """JSON-serialisable form (summaries; per-step arrays when ``arrays``)."""
        out: dict[str, Any] = dict(
            name=self.name,
            kind=self.kind,
            T=self.T,
            path=self.path,
            gate=self.gate,
            word=self.word,
            medians=self.medians,
            probes=self.probes,
            weight_norm=self.weight_norm,
            sentence=self.sentence(),
            notes=list(self.notes),
        )
        if arrays:
            out.update(
                quantiles=list(QUANTILES),
                gates=self.gates,
                carry=self.carry,
                carry_max=self.carry_max,
                walk_lags=self.walk_lags,
                path_log=self.path_log,
                rest_log=self.rest_log,
                total_log=self.total_log,
                share=self.share,
                factor=self.factor,
                factor_steps=self.factor_steps,
            )
        return jsonable(out)


__all__ = ["NOT_MEASURED", "SENTENCE_LAG", "THROUGH_WEIGHTS", "GateView"]
