"""The numbers and texts next to each layer's figures: verdict numbers, summaries, notes."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from gradscope.reporting import figures as F
from gradscope.reporting.content.document import Missing, Number
from gradscope.reporting.content.panels import decay, finite, fmt, r2


# --------------------------------------------------------------------------- numbers
def _summary_text(s: Mapping[str, Any] | None) -> str:
    if not s or not int(s.get("n", 0) or 0):
        return "n/a (no valid Jacobian)"
    frac = s.get("frac_above_1")
    frac_s = f"{float(frac):.0%} of step×sequence entries above 1" if finite(frac) else ""
    return (
        f"median {fmt(s.get('median'))} (5–95%: {fmt(s.get('p05'))}–{fmt(s.get('p95'))}); "
        f"{frac_s}; n = {int(s.get('n', 0))}"
    )


def _decay_number(layer: Any, of: str, label: str) -> Number:
    meaning = {
        "state": "slope of ln‖∂s_T/∂s_{T−k}‖ against lag k; negative: vanishing",
        "input": "slope of ln‖∂s_T/∂x_{T−k}‖ against lag k",
        "loss": "slope of ln‖∂L/∂s_t‖ against lag T − t",
    }[of]
    try:
        d = decay(layer, of)
    except Missing as exc:
        return Number(label, f"not available: {exc}", meaning)
    ci = d.rate_ci if d.rate_ci is not None else (math.nan, math.nan)
    fit = f", fit over lags {d.fit_lags[0]}–{d.fit_lags[1]}" if d.fit_lags is not None else ""
    value = (
        f"{F.fmt_rate(d.rate)} per step (95% CI {F.fmt_rate(ci[0])} to {F.fmt_rate(ci[1])}), "
        f"R² = {r2(d.r2)}{fit}; "
        f"{F.regime_label(d.regime)}"
    )
    return Number(label, value, meaning)


def nonfinite_text(layer: Any) -> str | None:
    """A warning sentence when the layer saw NaN/inf states, else None."""
    nf = getattr(layer, "nonfinite", None) or {}
    count = int(nf.get("count", 0) or 0)
    params = nf.get("params") or []
    if count <= 0 and not params:
        return None
    if params:
        return (
            f"Non-finite weights: {', '.join(map(str, params))} hold NaN/inf, so no statistic "
            "of this layer can be computed (regime unknown); training has diverged."
        )
    where = ""
    if nf.get("first_step") is not None:
        where = f", the first at step t = {nf.get('first_step')}"
        if nf.get("first_batch") is not None:
            where += f" of sequence {nf.get('first_batch')}"
    rest = (
        f"Every statistic rests on {nf['prefix']}"
        if nf.get("prefix")
        else "They are left out of the spectra and fits"
    )
    return (
        f"Non-finite values: {count} recorded state(s) hold NaN/inf{where}. {rest}; check the "
        "input, the weights and the learning rate (an exploding forward pass produces these)."
    )


def layer_numbers(layer: Any) -> list[Number]:
    """The numbers behind a layer's verdict, each with what it means."""
    out = [
        Number(
            "Recording",
            f"T = {layer.T} steps, B = {layer.B} sequences, D = {layer.D} "
            f"({' + '.join(layer.state_names)})",
            f"cell kind {layer.kind}",
        ),
        Number(
            "Regime", F.regime_label(layer.regime), "decided from the decay rate and its interval"
        ),
        _decay_number(layer, "state", "State-gradient decay rate"),
    ]
    try:
        d = decay(layer, "state")
        out.append(
            Number(
                "Half-life",
                f"{fmt(d.half_life)} steps",
                "steps back for the gradient norm to halve: ln 2 / (−rate)",
            )
        )
        factor = getattr(d, "horizon_factor", None)
        out.append(
            Number(
                "Memory horizon",
                f"{fmt(d.horizon)} steps",
                f"lag where the fitted norm has fallen to {factor:g} of its lag-0 value"
                if finite(factor)
                else "lag where the fitted norm has fallen by the horizon factor",
            )
        )
    except Missing:
        pass
    out.append(_decay_number(layer, "input", "Input-sensitivity rate"))
    out.append(_decay_number(layer, "loss", "Loss-gradient decay rate"))
    out.append(
        Number(
            "Spectral norm ‖J‖₂",
            _summary_text(getattr(layer, "svd", None)),
            "largest one-step stretch; below 1 everywhere guarantees vanishing",
        )
    )
    out.append(
        Number(
            "Spectral radius ρ(J)",
            _summary_text(getattr(layer, "eig", None)),
            "largest eigenvalue modulus of the one-step Jacobian",
        )
    )
    ly = getattr(layer, "lyapunov", None)
    if ly is not None and np.size(ly.exponents):
        err = np.asarray(ly.stderr, dtype=float)
        pm = f" ± {fmt(1.96 * err[0], 2)}" if err.size and finite(err[0]) else ""
        out.append(
            Number(
                "Largest Lyapunov exponent λ₁",
                f"{F.fmt_rate(ly.exponents[0])}{pm} per step (95%); Kaplan–Yorke dimension "
                f"{fmt(ly.kaplan_yorke)}; {ly.steps} steps used",
                "long-run log growth per step of the most expanding direction",
            )
        )
    else:
        out.append(
            Number(
                "Largest Lyapunov exponent λ₁",
                "not available: the Lyapunov exponents could not be computed",
                "long-run log growth per step of the most expanding direction",
            )
        )
    mem = getattr(layer, "memory", None)
    if mem is not None:
        out.append(
            Number(
                "Memory timescales",
                f"{100 * mem.frac_long:.0f}% of {mem.tau.size} state coordinates have τ ≥ T = "
                f"{mem.T:g} steps; median τ {fmt(mem.median_tau)} steps; selectivity "
                f"{fmt(mem.median_selectivity)}",
                "τ = −1/mean ln|λ_t| per coordinate of a diagonal transition: steps to fall by "
                "e; selectivity: std/|mean| of ln|λ_t| over time (0: time-invariant)",
            )
        )
    nf = getattr(layer, "nonfinite", None) or {}
    count = int(nf.get("count", 0) or 0)
    out.append(
        Number(
            "Non-finite values",
            "none"
            if count == 0
            else f"⚠ {count} (first at step {nf.get('first_step')}, "
            f"sequence {nf.get('first_batch')})",
            "recorded states holding NaN/inf (left out of the analysis)",
        )
    )
    return out
