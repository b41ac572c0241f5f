r"""Memory timescales of a diagonal recurrence: how many channels carry information across T.

For a transition that is diagonal in a fixed basis (Mamba, Mamba-2, minGRU, RG-LRU, RWKV, an
LRU; see :mod:`gradscope.jacobians.diagonal`), coordinate ``d`` of the state forgets at its own
rate: after ``k`` steps a perturbation is scaled by :math:`\prod_t |λ_{t,d}|`, on average
:math:`e^{k\bar\ell_d}` with :math:`\bar\ell_d` the mean of :math:`\ln|λ_{t,d}|` over the
recorded steps (the coordinate's Lyapunov exponent). Its **memory timescale** is

.. math:: τ_d = -1/\bar\ell_d \quad (\text{steps to fall by } e;\ ∞ \text{ when } \bar\ell_d \ge 0),

so a channel with :math:`τ_d \ge T` still holds a third (``1/e``) of what it saw ``T`` steps
ago. The **selectivity** of the decay, what distinguishes a selective SSM from a
time-invariant one, is the spread of :math:`\ln|λ_{t,d}|` over time relative to its mean:
:math:`\mathrm{std}_t / |\mathrm{mean}_t|` per coordinate (0 for an LTI recurrence such as the
LRU or RWKV's constant decay; order 1 when the input switches a channel between holding and
forgetting).

A complex diagonal held as 2 × 2 scaled rotations (the LRU, S5, Mamba-3's data-dependent
rotation) also *turns* its pairs: coordinate ``d`` by the **phase** :math:`θ_{t,d} = \arg λ_{t,d}`
per step (its partner by :math:`−θ_{t,d}`). Per coordinate the analysis keeps the circular
mean of the angle, :math:`\bar θ_d = \arg \overline{e^{iθ_{t,d}}}`, and its spread, the
root-mean-square of the deviations :math:`\arg e^{i(θ_{t,d} − \bar θ_d)}` (0 for a fixed
rotation; both equal the arithmetic mean and standard deviation of angles that stay away
from ±π).
A pair turning by :math:`\bar θ` per step has a period of :math:`2π/|\bar θ|` steps.

Cost: one pass over ``ln|λ_t|`` and, for a complex diagonal, one over ``λ_t``
(``O(T · B · D)``), no Jacobian products.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradscope._json import jsonable
from gradscope._progress import analysis
from gradscope.jacobians.diagonal import has_diagonal, log_moduli, phases, resets
from gradscope.traces import LayerTrace

#: Coordinates shown in the heatmap of ``ln|λ_t|`` (evenly spaced in the order of their τ).
HEATMAP_ROWS = 64


@dataclass(frozen=True)
class Timescales:
    """Per-coordinate memory timescales of one layer with a diagonal transition.

    Attributes:
        name: The layer's name.
        T: Median sequence length (the horizon the timescales are compared with).
        rates: ``(D,)`` mean ``ln|λ_t|`` per coordinate over all real steps and sequences.
        tau: ``(D,)`` ``−1/rate`` in steps (``inf`` for a rate ``>= 0``; NaN if unknown).
        selectivity: ``(D,)`` ``std_t / |mean_t|`` of ``ln|λ_t|`` per coordinate.
        heat: ``(R, T)`` ``ln|λ_t|`` of the first sequence for ``R`` coordinates, from the
            longest memory (row 0) to the shortest: the channel × time picture.
        heat_rows: ``(R,)`` the coordinates shown.
        resets: Steps left out because they erase the whole state (every ``λ_t = 0``, e.g.
            RG-LRU at a document start): a reset is not a channel's rate of forgetting.
        phase: ``(D,)`` circular mean of the rotation angle ``arg λ_t`` per coordinate, in
            radians per step (None: the eigenvalues are real, nothing turns).
        phase_spread: ``(D,)`` the root-mean-square deviation of the angle from that mean,
            over the steps (None likewise).
    """

    name: str
    T: float
    rates: np.ndarray
    tau: np.ndarray
    selectivity: np.ndarray
    heat: np.ndarray
    heat_rows: np.ndarray
    resets: int = 0
    phase: np.ndarray | None = None
    phase_spread: np.ndarray | None = None

    #: Angles below this (radians) are rounding, not rotation.
    TURN_TOL = 1e-12

    @property
    def turning(self) -> np.ndarray:
        """``(D,)`` bool: the coordinates that rotate (a mean angle or a spread above rounding)."""
        if self.phase is None or self.phase_spread is None:
            return np.zeros(self.tau.shape, dtype=bool)
        with np.errstate(invalid="ignore"):
            return (np.abs(self.phase) > self.TURN_TOL) | (self.phase_spread > self.TURN_TOL)

    @property
    def median_rotation(self) -> float:
        """Median ``|mean angle|`` per step over the coordinates that rotate (NaN: none)."""
        turn = self.turning
        return float(np.median(np.abs(self.phase[turn]))) if turn.any() else math.nan

    @property
    def frac_long(self) -> float:
        """Fraction of coordinates with ``τ >= T``: they carry information across the sequence."""
        ok = ~np.isnan(self.tau)
        return float((self.tau[ok] >= self.T).mean()) if ok.any() else math.nan

    @property
    def median_tau(self) -> float:
        """Median timescale over coordinates, in steps."""
        ok = ~np.isnan(self.tau)
        return float(np.median(self.tau[ok])) if ok.any() else math.nan

    @property
    def median_selectivity(self) -> float:
        """Median selectivity over coordinates."""
        ok = np.isfinite(self.selectivity)
        return float(np.median(self.selectivity[ok])) if ok.any() else math.nan

    def sentence(self) -> str:
        """One line for the verdict: how many channels keep memory across T, and how selective."""
        if math.isnan(self.frac_long):
            return "Memory timescales: no finite step to measure them on."
        sel = self.median_selectivity
        how = (
            "time-invariant decay"
            if not sel > 1e-6
            else f"decay selectivity {sel:.2f} (std/|mean| of ln|λ_t| over time)"
        )
        reset = (
            f" ({self.resets} reset step(s) that erase the state left out)" if self.resets else ""
        )
        return (
            f"Memory{reset}: {100 * self.frac_long:.0f}% of {self.tau.size} state coordinates "
            f"have a timescale τ = −1/mean ln|λ_t| of at least T = {self.T:g} steps (median τ "
            f"{_steps(self.median_tau)}); {how}.{self._turn_sentence()}"
        )

    def _turn_sentence(self) -> str:
        turn = self.turning
        if not turn.any():
            return ""
        rot = self.median_rotation
        period = f"a period of {2 * math.pi / rot:.3g} steps" if rot > 0 else "no mean turn"
        spread = float(np.median(self.phase_spread[turn]))
        return (
            f" Rotation: {int(turn.sum())} of {turn.size} coordinates turn, by a median "
            f"|mean angle| of {rot:.3g} rad/step ({period}; median spread {spread:.3g} rad)."
        )

    def to_dict(self, arrays: bool = True) -> dict[str, Any]:
        """JSON-serialisable summary, and the per-coordinate arrays unless ``arrays=False``."""
        out: dict[str, Any] = dict(
            name=self.name,
            T=self.T,
            frac_long=self.frac_long,
            median_tau=self.median_tau,
            median_selectivity=self.median_selectivity,
        )
        if self.phase is not None:
            out.update(turning=int(self.turning.sum()), median_rotation=self.median_rotation)
        if arrays:
            out.update(rates=self.rates, tau=self.tau, selectivity=self.selectivity)
            if self.phase is not None:
                out.update(phase=self.phase, phase_spread=self.phase_spread)
        return jsonable(out)


def _steps(v: float) -> str:
    if math.isinf(v):
        return "∞"
    return f"{v:.3g} steps"


@analysis
def timescales(layer: LayerTrace) -> Timescales | None:
    """The memory timescales of ``layer``, or None when its transition is not diagonal."""
    if not has_diagonal(layer):
        return None
    logs = log_moduli(layer)  # (T, B, D), NaN at padding and bad steps
    T = float(np.median(layer.seq_lengths)) if layer.B else 0.0
    flat = logs.reshape(-1, layer.D)
    ok = ~np.isnan(flat[:, 0]) if layer.D else np.zeros(0, bool)
    reset = resets(logs).reshape(-1)
    ok &= ~reset
    with np.errstate(invalid="ignore", divide="ignore"):
        rows = flat[ok]
        rates = rows.mean(axis=0) if rows.shape[0] else np.full(layer.D, np.nan)
        spread = rows.std(axis=0) if rows.shape[0] > 1 else np.full(layer.D, np.nan)
        tau = np.where(rates < 0, -1.0 / rates, np.inf)
        tau = np.where(np.isnan(rates), np.nan, tau)
        select = np.where(np.abs(rates) > 0, spread / np.abs(rates), np.nan)
    order = np.argsort(-np.nan_to_num(tau, nan=-np.inf), kind="stable")
    pick = order[np.unique(np.linspace(0, layer.D - 1, min(HEATMAP_ROWS, layer.D)).astype(int))]
    first = logs[: int(layer.seq_lengths[0]), 0] if layer.B else np.zeros((0, layer.D))
    turn, spread = _turns(phases(layer), ok, layer.D)
    return Timescales(
        name=layer.name,
        T=T,
        rates=rates,
        tau=tau,
        selectivity=select,
        heat=first[:, pick].T.copy(),
        heat_rows=pick,
        resets=int(reset.sum()),
        phase=turn,
        phase_spread=spread,
    )


def _turns(
    angles: np.ndarray | None, ok: np.ndarray, D: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Circular mean and spread per coordinate of ``angles`` ``(T, B, D)`` at rows ``ok``."""
    if angles is None:
        return None, None
    rows = angles.reshape(-1, D)[ok]
    if rows.shape[0] == 0:
        return np.full(D, np.nan), np.full(D, np.nan)
    centre = np.angle(np.exp(1j * rows).mean(axis=0))
    deviation = np.angle(np.exp(1j * (rows - centre)))  # wrapped into (−π, π]
    return centre, np.sqrt((deviation**2).mean(axis=0))


__all__ = ["Timescales", "timescales"]
