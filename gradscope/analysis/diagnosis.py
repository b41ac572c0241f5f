r"""Per-layer diagnosis: spectra, Lyapunov exponents, decay, regime, verdict and advice.

:func:`diagnose` runs the whole analysis layer on every recorded layer of a trace:

* one-step spectra (:func:`gradscope.spectrum`, eigenvalues and singular values) on a
  subsample of steps (the cost of a ``D × D`` eigendecomposition is ~25 D³ flops, so the
  number of (step, sequence) pairs is chosen to stay within a fixed budget);
* the leading Lyapunov exponents (:func:`gradscope.lyapunov`, ``k = min(D, 16)``);
* the decay of ``‖∂s_T/∂s_{T-k}‖`` (state), ``‖∂s_T/∂x_{T-k}‖`` (input) and, when the trace
  holds loss gradients, ``‖∂L/∂s_t‖`` (loss) (:func:`gradscope.decay`), computed in one
  backward walk; for large states the walk's probe directions are the Lyapunov vectors
  the QR iteration ended with, so nothing is computed twice.

**Regime.** The layer's regime is the regime of the *state* decay: a property of the
recurrent dynamics alone. The loss gradient is reported next to it but does not decide:
``∂L/∂s_t`` receives a direct contribution from every step where the loss reads the state,
so with a per-step loss it stays large at every lag even when the state-to-state product
vanishes, and with a last-step loss it equals the state decay projected on one direction.

The verdict is plain language where every claim carries its number, and the advice is
keyed to the cell family and the regime: Pascanu, Mikolov & Bengio (2013) for clipping and
the ``σ_max(W_hh) < 1`` criterion; Saxe et al. (2014) / Le, Jaitly & Hinton (2015) for
orthogonal and identity initialisation; Gers, Schmidhuber & Cummins (2000) and Jozefowicz,
Zaremba & Sutskever (2015) for the forget-gate bias; Tallec & Ollivier (2018) for chrono
initialisation.

:func:`profile` records a model and diagnoses it in one call, optionally with a loss so the
exact loss gradients are part of the picture (the user's ``.grad`` are restored exactly).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gradscope._json import jsonable
from gradscope._progress import analysis
from gradscope.analysis.decay import Decay, _loss_log_norms, _walk, fit_decay
from gradscope.analysis.lyapunov import Lyapunov, _run
from gradscope.analysis.spectra import Spectrum, spectrum
from gradscope.errors import GradscopeError
from gradscope.traces import LayerTrace, Trace

#: Flop budget of the one-step spectra of one layer (eig ~25 D³, svd ~10 D³ per matrix).
SPECTRUM_FLOPS = 2e10
#: Default number of Lyapunov exponents (and of decay probes for D > 128).
DEFAULT_K = 16


# =========================================================================== results
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
        regime: ``"vanishing"``, ``"exploding"`` or ``"neutral"`` (of the state decay).
        verdict: Plain-language summary; every claim carries its number.
        advice: What to try, keyed to the cell kind and the regime.
        nonfinite: ``dict(count, first_step, first_batch)``: real (unpadded) states holding
            NaN/inf; ``first_step`` is the state index ``t`` of ``s_t`` (0 = initial state),
            ``first_batch`` its sequence; both None when there are none.
        notes: Remarks (steps subsampled, exclusions, ...).
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

    @property
    def lambda1(self) -> float:
        """The leading Lyapunov exponent (NaN if not computed)."""
        if self.lyapunov is None or not self.lyapunov.k:
            return float("nan")
        return float(self.lyapunov.exponents[0])

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
            "verdict": self.verdict,
            "advice": list(self.advice),
            "nonfinite": jsonable(self.nonfinite),
            "notes": list(self.notes),
        }
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
        raise KeyError(f"no layer named {key!r} in this diagnosis; layers: {self.names}")

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
                    f"{st.rate:+.4f} ±{_num(half, 4)}"
                    if math.isfinite(half)
                    else (f"{st.rate:+.4f}")
                )
            rows.append(
                [
                    d.name,
                    d.kind,
                    f"{d.T}×{d.B}",
                    _num(d.eig.get("median", math.nan), 3),
                    _num(d.svd.get("median", math.nan), 3),
                    "n/a" if math.isnan(d.lambda1) else f"{d.lambda1:+.4f}",
                    rate,
                    "n/a" if st is None else _steps(st.half_life),
                    "n/a" if st is None else _steps(st.horizon),
                    d.regime + (" (non-finite)" if d.nonfinite.get("count") else ""),
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

    def to_dict(self, arrays: bool = True) -> dict[str, Any]:
        """JSON-serialisable form (NaN/inf as strings, see :func:`gradscope._json.jsonable`).

        Args:
            arrays: Include spectra and per-lag arrays (False: summaries and scalars only).
        """
        return {
            "meta": jsonable(self.meta),
            "layers": [d.to_dict(arrays=arrays) for d in self.layers],
        }


@dataclass
class Profile:
    """What :func:`profile` returns: the trace, its diagnosis and the model's output.

    Attributes:
        trace: The recording.
        diagnosis: Its diagnosis.
        output: What ``model(*args, **kwargs)`` returned.
        loss: The loss value (a float) when ``loss_fn`` was given, else None.
    """

    trace: Trace
    diagnosis: Diagnosis
    output: Any = None
    loss: float | None = None

    def report(self, path: str | Path) -> Path:
        """Write an HTML or PDF report (by suffix) with :func:`gradscope.reporting.report`."""
        from gradscope.reporting import report

        return report(self, path)

    def __str__(self) -> str:
        return str(self.diagnosis)


# =========================================================================== formatting
def _num(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 10 ** (-digits)):
        return f"{x:.{max(digits - 1, 1)}e}"
    return f"{x:.{digits}g}" if abs(x) >= 1 else f"{x:.{digits}f}"


def _steps(x: float) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "∞"
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


def _family(kind: str) -> str:
    if kind.startswith("rnn_"):
        return "vanilla"
    if kind in ("lstm", "gru"):
        return kind
    return "other"


# =========================================================================== verdict
def _verdict(d: LayerDiagnosis, layer: LayerTrace) -> str:
    st = d.decay.get("state")
    t_ref = float(np.median(layer.seq_lengths)) if layer.B else 0.0
    bits: list[str] = []
    nf = d.nonfinite
    if nf.get("count"):
        bits.append(
            f"{nf['count']} recorded state(s) are NaN/inf, the first at step {nf['first_step']}"
            f" of sequence {nf['first_batch']}; they are left out of every statistic."
        )
    if st is None or math.isnan(st.rate):
        bits.append(
            "The gradient decay could not be measured (too few steps"
            f": T = {d.T}); regime unknown, reported as neutral."
        )
    else:
        lo, hi = st.rate_ci
        ci = f"95% CI [{lo:+.4f}, {hi:+.4f}]" if math.isfinite(lo) else "no CI"
        per = math.exp(st.rate)
        rate_txt = (
            f"‖∂s_T/∂s_(T−k)‖ changes by a factor {per:.4f} per step back (rate {st.rate:+.4f}"
            f"/step, {ci}, fitted over lags {st.fit_lags[0]}–{st.fit_lags[1]})"
        )
        if st.regime == "vanishing":
            keep = math.exp(st.rate * t_ref)
            bits.append(
                f"Vanishing gradients: {rate_txt}. It halves every {_steps(st.half_life)} "
                f"steps and falls below {st.horizon_factor:g} of its value after "
                f"{_steps(st.horizon)} steps; across a whole sequence (T = {t_ref:g}) it "
                f"shrinks by {_num(keep, 3)}, beyond the neutral band |rate| ≤ "
                f"{st.threshold:.4f} (a factor 10 over T)."
            )
        elif st.regime == "exploding":
            grow = math.exp(st.rate * t_ref)
            bits.append(
                f"Exploding gradients: {rate_txt}; over a whole sequence (T = {t_ref:g}) it "
                f"grows by {_num(grow, 3)}, beyond the neutral band |rate| ≤ "
                f"{st.threshold:.4f} (a factor 10 over T)."
            )
        else:
            bits.append(
                f"Neutral: {rate_txt}, within the band |rate| ≤ {st.threshold:.4f} where the "
                f"gradient from the first step of a T = {t_ref:g} sequence arrives within a "
                "factor 10 (or not significantly outside it)."
            )
    if d.lyapunov is not None and d.lyapunov.k and not math.isnan(d.lambda1):
        l1, se = d.lambda1, float(d.lyapunov.stderr[0])
        se_txt = f" ± {se:.4f}" if math.isfinite(se) else ""
        kind = (
            "chaotic: nearby states diverge"
            if l1 - 2 * (se if math.isfinite(se) else 0) > 0
            else "ordered: nearby states converge"
            if l1 + 2 * (se if math.isfinite(se) else 0) < 0
            else "marginal"
        )
        bits.append(
            f"Leading Lyapunov exponent λ1 = {l1:+.4f}{se_txt}/step ({kind}; "
            f"{d.lyapunov.steps} steps)."
        )
    if d.eig.get("n") and d.svd.get("n"):
        bits.append(
            f"One step: spectral radius median {_num(d.eig['median'])} "
            f"({100 * d.eig['frac_above_1']:.0f}% of steps above 1), spectral norm "
            f"σ_max median {_num(d.svd['median'])} ({100 * d.svd['frac_above_1']:.0f}% "
            "above 1); one-step numbers bound a single step only, the rate above decides."
        )
    loss = d.decay.get("loss")
    if loss is not None and not math.isnan(loss.rate):
        bits.append(
            f"The loss gradient ‖∂L/∂s_t‖ changes at {loss.rate:+.4f}/step going back "
            f"(half-life {_steps(loss.half_life)} steps, {loss.regime})."
        )
    inp = d.decay.get("input")
    if inp is not None and not math.isnan(inp.rate):
        bits.append(
            f"Input sensitivity ‖∂s_T/∂x_(T−k)‖ rate {inp.rate:+.4f}/step (horizon "
            f"{_steps(inp.horizon)} steps)."
        )
    return " ".join(bits)


def _lstm_forget_bias(layer: LayerTrace) -> float | None:
    p = layer.params
    if "bias_ih" not in p and "bias_hh" not in p:
        return None
    hidden = int(p["weight_hh"].shape[0]) // 4
    b = sum(
        p[k].detach().double().cpu()[hidden : 2 * hidden] for k in ("bias_ih", "bias_hh") if k in p
    )
    return float(b.mean())


def _advice(d: LayerDiagnosis, layer: LayerTrace) -> list[str]:
    fam = _family(d.kind)
    st = d.decay.get("state")
    horizon = _steps(st.horizon) if st is not None else "n/a"
    out: list[str] = []
    nf = d.nonfinite
    if nf.get("count"):
        out.append(
            f"Non-finite states start at step {nf['first_step']} (sequence "
            f"{nf['first_batch']}): check the inputs there, lower the learning rate, clip "
            "gradients, and run torch.autograd.set_detect_anomaly(True) to find the first "
            "operation that produced NaN/inf."
        )
    radius = d.eig.get("median", math.nan)
    smax = d.svd.get("median", math.nan)
    if d.regime == "vanishing":
        if fam == "vanilla":
            out += [
                "Initialise weight_hh orthogonally (torch.nn.init.orthogonal_) or, with ReLU, "
                f"as the identity (IRNN, Le et al. 2015): its singular values then start at 1 "
                f"(one-step σ_max median now {_num(smax)}).",
                "Switch to a gated cell (nn.LSTM / nn.GRU): the additive cell-state path "
                "carries gradients across long lags.",
                f"Dependencies longer than ~{horizon} steps are out of reach; truncated BPTT "
                "over that many steps loses nothing and is cheaper.",
            ]
        elif fam == "lstm":
            fb = _lstm_forget_bias(layer)
            fb_txt = "" if fb is None else f" (mean forget-gate bias now {fb:+.2f})"
            out += [
                "Raise the forget-gate bias (rows H:2H of bias_ih + bias_hh) to 1–3 so that "
                f"f = σ(b) ≈ 0.73–0.95 at initialisation{fb_txt} (Gers et al. 2000; Jozefowicz "
                "et al. 2015).",
                "Or use chrono initialisation (Tallec & Ollivier 2018): b_f ~ log U(1, T_max − "
                "1), b_i = −b_f, for dependencies up to T_max steps.",
                f"Dependencies longer than ~{horizon} steps are out of reach at present.",
            ]
        elif fam == "gru":
            out += [
                "Bias the update gate towards keeping the state (rows H:2H of bias_hh, the z "
                "gate; h_t = (1 − z) n + z h_(t−1)) to 1–3, so z ≈ 0.73–0.95 at "
                "initialisation; the chrono idea of Tallec & Ollivier (2018) applies to z.",
                "Initialise the recurrent weights orthogonally (torch.nn.init.orthogonal_).",
                f"Dependencies longer than ~{horizon} steps are out of reach at present.",
            ]
        else:
            out += [
                "Give the cell an additive or gated state path (as in LSTM/GRU) or initialise "
                "its recurrent weights orthogonally, so that the state Jacobian has singular "
                f"values near 1 (one-step σ_max median now {_num(smax)}).",
                f"Dependencies longer than ~{horizon} steps are out of reach at present.",
            ]
    elif d.regime == "exploding":
        out += [
            "Clip gradients: torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0) "
            "(Pascanu et al. 2013).",
            "Lower the recurrent gain: scale weight_hh so that the spectral radius of the "
            f"step Jacobian stays below 1 (median now {_num(radius)}), or reduce the "
            "initialisation gain.",
            "Lower the learning rate if the loss spikes.",
        ]
    if d.lyapunov is not None and not math.isnan(d.lambda1) and d.lambda1 > 0.0:
        out.append(
            f"λ1 = {d.lambda1:+.4f} > 0: the dynamics are chaotic, so gradients through long "
            "spans are erratic; clipping and a smaller recurrent gain tame it."
        )
    if not out:
        out.append("No action needed for gradient flow over the recorded lengths (neutral regime).")
    return out


# =========================================================================== main
def _nonfinite(layer: LayerTrace) -> dict[str, Any]:
    bad = layer.nonfinite()
    count = int(bad.sum())
    if not count:
        return {"count": 0, "first_step": None, "first_batch": None}
    t, b = np.nonzero(bad)
    i = int(np.lexsort((b, t))[0])
    return {"count": count, "first_step": int(t[i]), "first_batch": int(b[i])}


def _spectrum_selection(layer: LayerTrace, steps: int | None) -> tuple[np.ndarray, np.ndarray]:
    D, B = layer.D, layer.B
    batch = np.arange(min(B, 4))
    valid_steps = np.nonzero(layer.mask[:, batch].any(axis=1))[0] if layer.T else np.zeros(0)
    if steps is None:
        pairs = int(SPECTRUM_FLOPS // (35.0 * max(D, 1) ** 3))
        steps = int(np.clip(pairs // max(len(batch), 1), 4, 256))
    if len(valid_steps) > steps:
        pick = np.unique(np.linspace(0, len(valid_steps) - 1, steps).round().astype(np.int64))
        valid_steps = valid_steps[pick]
    return valid_steps.astype(np.int64), batch


@analysis
def _diagnose_layer(
    layer: LayerTrace,
    *,
    k: int | None,
    discard: int | None,
    max_lag: int | None,
    probes: int | None,
    spectrum_steps: int | None,
    seed: int,
    progress: bool | str,
) -> LayerDiagnosis:
    notes: list[str] = []
    nonfinite = _nonfinite(layer)
    D = layer.D
    empty = {
        "median": math.nan,
        "mean": math.nan,
        "p05": math.nan,
        "p95": math.nan,
        "min": math.nan,
        "max": math.nan,
        "frac_above_1": math.nan,
        "n": 0,
    }
    spec_eig = spec_svd = None
    eig_sum, svd_sum = dict(empty), dict(empty)
    steps, batch = _spectrum_selection(layer, spectrum_steps)
    try:
        if len(steps) and len(batch):
            spec_eig = spectrum(layer, "eig", steps=steps, batch=batch, progress=progress)
            spec_svd = spectrum(layer, "svd", steps=steps, batch=batch, progress=progress)
            eig_sum, svd_sum = spec_eig.summary(), spec_svd.summary()
            mask_n = int(layer.mask[np.ix_(steps, batch)].sum())
            if len(steps) < layer.T or len(batch) < layer.B:
                notes.append(
                    f"one-step spectra on {len(steps)} of {layer.T} steps × {len(batch)} of "
                    f"{layer.B} sequences ({mask_n} valid pairs)"
                )
    except (GradscopeError, np.linalg.LinAlgError) as exc:
        notes.append(f"spectra not computed: {exc}")

    kk = min(D, DEFAULT_K) if k is None else min(int(k), D)
    t_med = float(np.median(layer.seq_lengths)) if layer.B else 0.0
    disc = int(min(100, t_med // 10)) if discard is None else int(discard)
    ly = None
    basis = None
    try:
        if layer.T and layer.B:
            ly, basis = _run(layer, kk, disc, "random", seed, None, 128, 10, progress)
            notes.extend(ly.notes)
    except (GradscopeError, np.linalg.LinAlgError) as exc:
        notes.append(f"Lyapunov exponents not computed: {exc}")

    decays: dict[str, Decay] = {}
    p = (D if D <= 128 else min(D, kk)) if probes is None else int(probes)
    want_input = layer.I > 0
    try:
        if layer.T and layer.B:
            use_basis = basis if (p < D and ly is not None and ly.k == p) else None
            try:
                ls, li, p_used, wnotes = _walk(
                    layer, want_input, max_lag, p, use_basis, seed, None, progress
                )
            except GradscopeError as exc:  # e.g. no input Jacobians for a saved custom cell
                if not want_input:
                    raise
                notes.append(f"input decay not computed: {exc}")
                ls, li, p_used, wnotes = _walk(
                    layer, False, max_lag, p, use_basis, seed, None, progress
                )
            decays["state"] = fit_decay(layer.name, "state", ls, t_med, probes=p_used, notes=wnotes)
            if li is not None:
                decays["input"] = fit_decay(
                    layer.name, "input", li, t_med, probes=p_used, notes=list(wnotes)
                )
    except (GradscopeError, np.linalg.LinAlgError) as exc:
        notes.append(f"decay not computed: {exc}")
    if layer.grads is not None:
        decays["loss"] = fit_decay(layer.name, "loss", _loss_log_norms(layer, max_lag), t_med)
    st = decays.get("state")
    regime = st.regime if st is not None else "neutral"
    d = LayerDiagnosis(
        name=layer.name,
        kind=layer.kind,
        T=layer.T,
        B=layer.B,
        D=D,
        state_names=tuple(layer.state_names),
        eig=eig_sum,
        svd=svd_sum,
        spectrum_eig=spec_eig,
        spectrum_svd=spec_svd,
        lyapunov=ly,
        decay=decays,
        regime=regime,
        verdict="",
        advice=[],
        nonfinite=nonfinite,
        notes=notes,
    )
    d.verdict = _verdict(d, layer)
    d.advice = _advice(d, layer)
    return d


def diagnose(
    trace: Trace | LayerTrace | Sequence[LayerTrace],
    *,
    k: int | None = None,
    discard: int | None = None,
    max_lag: int | None = None,
    probes: int | None = None,
    spectrum_steps: int | None = None,
    seed: int = 0,
    progress: bool | str = "auto",
) -> Diagnosis:
    """Diagnose every layer of a trace: spectra, Lyapunov exponents, decay, regime, advice.

    Args:
        trace: A :class:`~gradscope.traces.Trace`, one :class:`~gradscope.traces.LayerTrace`,
            or a list of them.
        k: Lyapunov exponents per layer (default ``min(D, 16)``).
        discard: Transient steps left out of the Lyapunov sums (default: 10% of the median
            sequence length, at most 100).
        max_lag: Largest lag of the decay curves (default: whole sequences).
        probes: Probe directions of the decay walk (default: exact for ``D <= 128``, else
            ``k``; see :mod:`gradscope.analysis.decay`).
        spectrum_steps: Steps whose one-step spectra are computed (default: as many as a
            fixed flop budget allows, evenly spaced, on up to 4 sequences).
        seed: Seed of the random starting bases.
        progress: Progress bars: True, False or ``"auto"`` (long layers on a terminal).

    Returns:
        A :class:`Diagnosis`.
    """
    if isinstance(trace, LayerTrace):
        layers, meta = [trace], {}
    elif isinstance(trace, Trace):
        layers, meta = list(trace.layers), dict(trace.meta)
    else:
        layers, meta = list(trace), {}
    if not all(isinstance(layer, LayerTrace) for layer in layers):
        raise GradscopeError(
            "diagnose() needs a gradscope Trace, a LayerTrace or a list of LayerTraces; got "
            f"{type(trace).__name__}. Record one with gs.trace(model, x)."
        )
    opts = dict(
        k=k,
        discard=discard,
        max_lag=max_lag,
        probes=probes,
        spectrum_steps=spectrum_steps,
        seed=seed,
    )
    out = [_diagnose_layer(layer, progress=progress, **opts) for layer in layers]
    meta = {**meta, "analysis": {key: v for key, v in opts.items()}}
    return Diagnosis(out, meta)


# =========================================================================== profile
def _leaf_tensors(obj: Any, out: list[torch.Tensor]) -> None:
    if isinstance(obj, torch.Tensor):
        if obj.requires_grad and obj.is_leaf:
            out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _leaf_tensors(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _leaf_tensors(v, out)


def profile(
    model: nn.Module,
    *args: Any,
    loss_fn: Callable[[Any], torch.Tensor] | None = None,
    cells: Iterable[nn.Module] | nn.Module | None = None,
    check: bool = True,
    analysis: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Profile:
    """Record ``model(*args, **kwargs)`` and diagnose it in one call.

    Without ``loss_fn`` only the forward runs. With ``loss_fn``, the forward runs under
    :func:`gradscope.recording.record` with ``grads=True``, then ``loss = loss_fn(output)`` and
    ``loss.backward()`` so the exact loss gradients ``∂L/∂s_t`` join the diagnosis (a
    ``"loss"`` decay per layer). Profiling leaves no trace on the model: the ``.grad`` of
    every parameter (and of every leaf tensor argument that requires grad) is restored
    exactly afterwards, the same tensor object holding the same values, or None.

    Args:
        model: The model.
        *args: Positional arguments of its forward.
        loss_fn: ``output -> scalar loss`` (e.g. ``lambda out: crit(out[0], y)``), optional.
        cells: Extra modules to record call by call (see :func:`gradscope.recording.record`).
        check: Check that replays reproduce the modules' outputs.
        analysis: Keyword arguments for :func:`diagnose` (``k``, ``max_lag``, ``progress``...).
        **kwargs: Keyword arguments of the model's forward.

    Returns:
        A :class:`Profile` with ``trace``, ``diagnosis``, ``output`` and ``loss``.

    Raises:
        GradscopeError: ``loss_fn`` did not return a scalar tensor, or any recording error.
    """
    from gradscope.recording import record

    opts = {"progress": "auto", **(analysis or {})}
    if loss_fn is None:
        with record(model, cells, check=check) as rec:
            output = model(*args, **kwargs)
        tr = rec.trace
        return Profile(tr, diagnose(tr, **opts), output, None)

    leaves: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
    _leaf_tensors((args, kwargs), leaves)
    seen: set[int] = set()
    leaves = [t for t in leaves if not (id(t) in seen or seen.add(id(t)))]
    saved = [(t, t.grad, None if t.grad is None else t.grad.detach().clone()) for t in leaves]
    try:
        with torch.enable_grad():
            with record(model, cells, grads=True, check=check) as rec:
                output = model(*args, **kwargs)
            loss = loss_fn(output)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise GradscopeError(
                    "profile(loss_fn=...): loss_fn must return a scalar tensor, got "
                    f"{type(loss).__name__}"
                    + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else "")
                )
            if loss.requires_grad:
                loss.backward()
        tr = rec.trace
    finally:
        with torch.no_grad():
            for t, obj, values in saved:
                if obj is None:
                    t.grad = None
                else:
                    obj.copy_(values)
                    t.grad = obj
    return Profile(tr, diagnose(tr, **opts), output, float(loss.detach()))


__all__ = ["Diagnosis", "LayerDiagnosis", "Profile", "diagnose", "profile"]
