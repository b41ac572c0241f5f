"""What :func:`gradscope.diagnose` returns, per layer and for the whole trace.

One :class:`LayerDiagnosis` per recorded layer, and the :class:`Diagnosis` that holds them
(its ``str()`` is the verdict table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gradscope._json import jsonable
from gradscope._views import render
from gradscope.analysis.decay import Decay
from gradscope.analysis.formatting import fmt_num, fmt_steps
from gradscope.analysis.gates import GateView
from gradscope.analysis.layer_text import layer_repr
from gradscope.analysis.lyapunov import Lyapunov
from gradscope.analysis.severity import GRADES, fmt_factor, log10_factor, reference_length
from gradscope.analysis.spectra import Spectrum
from gradscope.analysis.timescales import Timescales
from gradscope.errors import UnknownNameError


@dataclass
class LayerDiagnosis:
    """Everything the analysis found about one recurrent layer (and direction).

    Attributes:
        name: The layer's name.
        kind: The cell kind (``"lstm"``, ``"rnn_tanh"``, ...).
        T: Steps recorded.
        B: Sequences.
        D: State size.
        state_names: Names of the state's parts.
        eig: :meth:`Spectrum.summary` of the spectral radius of the one-step Jacobians.
        svd: :meth:`Spectrum.summary` of their spectral norm.
        spectrum_eig: The eigenvalue spectrum (possibly on a subsample of steps), for figures.
        spectrum_svd: The singular-value spectrum (same steps), for figures.
        lyapunov: The leading Lyapunov exponents, or None if they could not be computed.
        decay: ``{"state": Decay, "input": Decay, "loss": Decay}`` (``"loss"`` only when the
            trace holds loss gradients).
        regime: ``"vanishing"``, ``"exploding"`` or ``"neutral"`` (of the state decay), or
            ``"unknown"`` when it could not be measured (:attr:`reason` says why: NaN
            weights, no finite step, a numerical failure, missing Jacobians).
        verdict: Plain-language summary; every claim carries its number.
        advice: What to try, keyed to the cell kind and the regime.
        nonfinite: ``dict(count, first_step, first_batch)``: real (unpadded) states holding
            NaN/inf; ``first_step`` is the state index ``t`` of ``s_t`` (0 = initial state),
            ``first_batch`` its sequence; both None when there are none. When a sequence
            stops being finite, also ``finite_steps`` (median over sequences of the finite
            steps every statistic rests on) and ``prefix`` (the same in words); ``params``:
            names of weights holding NaN/inf.
        notes: Remarks (steps subsampled, exclusions, ...).
        memory: Per-coordinate memory timescales of a diagonal recurrence (Mamba, minGRU,
            LRU, ...), None for other cells.
        reason: Why the regime is ``"unknown"`` ("" otherwise).
        gates: Gate view of a layer whose family declares gates (LSTM, GRU, vanilla RNN:
            gate distributions, carries, the additive path's share of the gradient;
            :mod:`gradscope.analysis.gates`), None for other cells or when it failed.
        gate_spec: What the family declares of its gates (``Gates.as_dict()``: ``shown``,
            ``carried``, ``word``, ``path``...), None for a family without gates: the record
            reports read, also where the view itself could not be computed.
        severity: The grade of the regime over a whole sequence, from the factor
            ``e^{rate·T}`` (:func:`gradscope.analysis.severity.grade`): ``"mild"``,
            ``"strong"`` or ``"severe"`` for a vanishing or exploding gradient (vanishing:
            ``F ≥ 1e-2``, ``1e-8 ≤ F < 1e-2``, ``F < 1e-8``; exploding by ``1/F``),
            ``"none"`` when neutral, ``"unknown"`` when it could not be measured.
    """

    name: str
    kind: str
    T: int
    B: int
    D: int
    state_names: tuple[str, ...]
    eig: dict[str, float]
    svd: dict[str, float]
    spectrum_eig: Spectrum | None
    spectrum_svd: Spectrum | None
    lyapunov: Lyapunov | None
    decay: dict[str, Decay]
    regime: str
    verdict: str
    advice: list[str]
    nonfinite: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    memory: Timescales | None = None
    reason: str = ""
    gates: GateView | None = None
    gate_spec: dict[str, Any] | None = None
    severity: str = "unknown"

    @property
    def lambda1(self) -> float:
        """The leading Lyapunov exponent (NaN if not computed)."""
        if self.lyapunov is None or not self.lyapunov.k:
            return float("nan")
        return float(self.lyapunov.exponents[0])

    def __repr__(self) -> str:
        """One line: name, kind, shape, regime, rate, λ₁ and the verdict's first sentence."""
        return layer_repr(self)

    def _repr_html_(self) -> str:
        """The layer's verdict, advice and the numbers behind it, for a notebook."""
        return render("layer_html", self)

    def to_dict(self, arrays: bool = True) -> dict[str, Any]:
        """JSON-serialisable form (NaN/inf as strings, see :func:`gradscope._json.jsonable`).

        Args:
            arrays: Include the spectra and per-lag/per-sequence arrays; False keeps only
                summaries and scalars (small).
        """
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "T": self.T,
            "B": self.B,
            "D": self.D,
            "state_names": list(self.state_names),
            "eig": jsonable(self.eig),
            "svd": jsonable(self.svd),
            "regime": self.regime,
            "severity": self.severity,
            "verdict": self.verdict,
            "advice": list(self.advice),
            "nonfinite": jsonable(self.nonfinite),
            "notes": list(self.notes),
            "reason": self.reason,
        }
        if self.memory is not None:
            out["memory"] = self.memory.to_dict(arrays)
        if self.gates is not None:
            out["gates"] = self.gates.to_dict(arrays=arrays)
        if self.gate_spec is not None:
            out["gate_spec"] = dict(self.gate_spec)
        if arrays:
            out["spectrum_eig"] = jsonable(self.spectrum_eig)
            out["spectrum_svd"] = jsonable(self.spectrum_svd)
            out["lyapunov"] = jsonable(self.lyapunov)
            out["decay"] = {k: v.to_dict() for k, v in self.decay.items()}
        else:
            ly = self.lyapunov
            out["lyapunov"] = (
                None
                if ly is None
                else jsonable(
                    dict(
                        exponents=ly.exponents,
                        stderr=ly.stderr,
                        kaplan_yorke=ly.kaplan_yorke,
                        steps=ly.steps,
                        discard=ly.discard,
                    )
                )
            )
            keys = ("rate", "rate_ci", "intercept", "r2", "fit_lags", "half_life", "horizon")
            out["decay"] = {
                k: jsonable({"regime": v.regime, **{a: getattr(v, a) for a in keys}})
                for k, v in self.decay.items()
            }
        return out


def _over(st: Decay | None) -> str:
    """The factor ``e^{rate·T}`` over a whole sequence, for the table."""
    if st is None or math.isnan(st.rate):
        return "n/a"
    return fmt_factor(log10_factor(st.rate, reference_length(st)))


def _regime_cell(d: LayerDiagnosis) -> str:
    """``vanishing (severe)``, ``neutral``; ``exploding (non-finite)``: beyond any grade."""
    if d.nonfinite.get("count"):
        return f"{d.regime} (non-finite)"
    return d.regime + (f" ({d.severity})" if d.severity in GRADES else "")


@dataclass
class Diagnosis:
    """The diagnosis of every layer of a trace.

    ``str(diagnosis)`` is a fixed-width table (one row per layer) followed by each layer's
    verdict and advice; ``diagnosis["lstm.l0"]`` (or ``diagnosis[0]``) is one
    :class:`LayerDiagnosis`.

    Attributes:
        layers: One :class:`LayerDiagnosis` per recorded layer, in recording order.
        meta: Run metadata (the trace's meta plus the analysis settings).
    """

    layers: list[LayerDiagnosis]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """Layer names in order."""
        return [d.name for d in self.layers]

    def __getitem__(self, key: str | int) -> LayerDiagnosis:
        if isinstance(key, int):
            return self.layers[key]
        for d in self.layers:
            if d.name == key:
                return d
        raise UnknownNameError(f"no layer named {key!r} in this diagnosis; layers: {self.names}")

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def table(self) -> str:
        """The fixed-width summary table (one row per layer)."""
        head = [
            "layer",
            "kind",
            "T×B",
            "radius med",
            "σmax med",
            "λ1",
            "rate/step ±95%",
            "half-life",
            "horizon",
            "over T",
            "regime",
        ]
        rows = []
        for d in self.layers:
            st = d.decay.get("state")
            if st is None or math.isnan(st.rate):
                rate = "n/a"
            else:
                half = (st.rate_ci[1] - st.rate_ci[0]) / 2
                rate = (
                    f"{st.rate:+.4f} ±{fmt_num(half, 4)}"
                    if math.isfinite(half)
                    else (f"{st.rate:+.4f}")
                )
            rows.append(
                [
                    d.name,
                    d.kind,
                    f"{d.T}×{d.B}",
                    fmt_num(d.eig.get("median", math.nan), 3),
                    fmt_num(d.svd.get("median", math.nan), 3),
                    "n/a" if math.isnan(d.lambda1) else f"{d.lambda1:+.4f}",
                    rate,
                    "n/a" if st is None else fmt_steps(st.half_life),
                    "n/a" if st is None or math.isnan(st.rate) else fmt_steps(st.horizon),
                    _over(st),
                    _regime_cell(d),
                ]
            )
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
        lines.append("  ".join("-" * w for w in widths))
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        return "\n".join(lines)

    def __str__(self) -> str:
        parts = [self.table(), ""]
        for d in self.layers:
            parts.append(f"{d.name} ({d.kind}): {d.verdict}")
            parts.extend(f"  - {a}" for a in d.advice)
        return "\n".join(parts).rstrip()

    def __repr__(self) -> str:
        return f"Diagnosis({len(self.layers)} layers: {', '.join(self.names)})"

    def _repr_html_(self) -> str:
        """In a notebook: the verdict table, as on the report's first screen."""
        return render("notebook_html", self)

    def to_dict(self, arrays: bool = True) -> dict[str, Any]:
        """JSON-serialisable form (NaN/inf as strings, see :func:`gradscope._json.jsonable`).

        Args:
            arrays: Include spectra and per-lag arrays (False: summaries and scalars only).
        """
        return {
            "meta": jsonable(self.meta),
            "layers": [d.to_dict(arrays=arrays) for d in self.layers],
        }


# =========================================================================== main
