r"""The plain-language verdict of one diagnosed layer: every claim with its number.

The numbers come from :mod:`gradscope.analysis.diagnosis`; this module only words them, in
the order a practitioner asks: how bad (the regime, graded by the factor ``e^{rate·T}``
over a whole sequence, :mod:`gradscope.analysis.severity`), how fast (rate, half-life,
horizon), what decides it (the Lyapunov exponent of the products, against the one-step
norms, which only bound a single step), and what the real loss gradient says, with where
the loss's credit enters the layer (:mod:`gradscope.analysis.credit`) and, when the state
and loss regimes disagree, why.

Why one-step norms do not decide: ``‖∂s_T/∂s_{T−k}‖₂ = ‖J_T ⋯ J_{T−k+1}‖₂ ≤ ∏ ‖J_u‖₂``
bounds the growth, and the long-run rate is ``lim (1/k) ln ‖J_T ⋯ J_{T−k+1}‖₂ = λ1``, the
leading Lyapunov exponent (for a fixed ``J``: ``ln ρ(J)``, the spectral radius). A
non-normal ``J`` has ``‖J‖₂ > ρ(J)``: it stretches some directions for a few steps (a
transient) while the product still shrinks at ``ρ`` per step.
"""

from __future__ import annotations

import math

import numpy as np

from gradscope.analysis.credit import LossInjection
from gradscope.analysis.formatting import fmt_num, fmt_steps
from gradscope.analysis.results import LayerDiagnosis
from gradscope.analysis.severity import GRADES, fmt_factor, log10_factor
from gradscope.jacobians.diagonal import LOG_ZERO
from gradscope.layer_trace import LayerTrace

#: What each grade means, as the verdict says it (see :mod:`gradscope.analysis.severity`).
MEANING = {
    ("vanishing", "mild"): "mild: the first step still arrives within a factor 100 of the last",
    ("vanishing", "strong"): (
        "strong: between 1e-2 and 1e-8, too little for dependencies across the sequence to "
        "be learnt beside short ones"
    ),
    ("vanishing", "severe"): (
        "severe: below 1e-8, under float32 rounding of the last step's gradient: what "
        "the start of a sequence contributes is lost in the sum"
    ),
    ("exploding", "mild"): "mild: within a factor 100",
    ("exploding", "strong"): "strong: 1e2 to 1e8, long spans dominate the gradient",
    ("exploding", "severe"): "severe: beyond 1e8, one long span can swamp every update",
}


def _nonfinite(d: LayerDiagnosis) -> list[str]:
    nf = d.nonfinite
    bits = []
    if nf.get("params"):
        bits.append(
            f"The weights {', '.join(nf['params'])} hold NaN/inf: every Jacobian is "
            "non-finite, so nothing about the gradient flow can be measured."
        )
    if nf.get("count"):
        rest = (
            f"every statistic below rests on {nf['prefix']}"
            if nf.get("prefix")
            else "they are left out of every statistic"
        )
        bits.append(
            f"{nf['count']} recorded state(s) are NaN/inf, the first at step {nf['first_step']}"
            f" of sequence {nf['first_batch']}; {rest}."
        )
    return bits


def _regime(d: LayerDiagnosis, t_ref: float) -> str:
    """The regime sentence: the grade and the factor over T first, then the rate."""
    st, nf = d.decay.get("state"), d.nonfinite
    if d.regime == "unknown":
        return f"Regime unknown: the gradient decay could not be measured ({d.reason})."
    if st is not None and st.regime == "exploding" and math.isnan(st.rate):
        return (
            "Exploding gradients: the norms grow over the finite steps until the states "
            f"overflow at step {nf.get('first_step')}; too few finite steps to fit a rate."
        )
    if st is None or math.isnan(st.rate):
        return (
            "The gradient decay could not be measured (too few steps"
            f": T = {d.T}); regime unknown, reported as neutral."
        )
    lo, hi = st.rate_ci
    ci = f"95% CI [{lo:+.4f}, {hi:+.4f}]" if math.isfinite(lo) else "no CI"
    rate_txt = (
        f"‖∂s_T/∂s_(T−k)‖ changes by a factor {fmt_num(math.exp(st.rate), 4)} per step back "
        f"(rate {st.rate:+.4f}/step, {ci}, fitted over lags {st.fit_lags[0]}–{st.fit_lags[1]})"
    )
    over = fmt_factor(log10_factor(st.rate, t_ref))
    band = f"the neutral band is |rate| ≤ {st.threshold:.4f}, a factor 10 over T"
    graded = d.severity in GRADES
    lead = f"{d.severity.capitalize()} {st.regime}" if graded else st.regime.capitalize()
    lead += " gradients"
    meaning = MEANING.get((st.regime, d.severity), "")
    if st.regime == "vanishing" and st.rate <= LOG_ZERO * (1 - 1e-9):
        return (
            "Severe vanishing gradients: the one-step Jacobian is exactly zero (every "
            "eigenvalue 0: a decay, gate or recurrent weight of exactly 0), so no gradient "
            "reaches back even one step; its log is counted as ln(smallest float64) = "
            f"{LOG_ZERO:.1f} per step."
        )
    if st.regime == "vanishing":
        return (
            f"{lead}: over a whole sequence (T = {t_ref:g}) the gradient shrinks by a factor "
            f"{over} (e^(rate·T); {meaning}). {rate_txt}: it halves "
            f"every {fmt_steps(st.half_life)} steps and falls below {st.horizon_factor:g} of "
            f"its value after {fmt_steps(st.horizon)} steps ({band})."
        )
    if st.regime == "exploding":
        if nf.get("count"):
            return (
                f"{lead}: {rate_txt} over the finite steps, and the states overflow to NaN/inf "
                f"at step {nf['first_step']} (sequence {nf['first_batch']})."
            )
        return (
            f"{lead}: over a whole sequence (T = {t_ref:g}) the gradient grows by a factor "
            f"{over} (e^(rate·T); {meaning}). {rate_txt} ({band})."
        )
    return (
        f"Neutral: {rate_txt}; over a whole sequence (T = {t_ref:g}) the gradient changes by "
        f"a factor {over}, within the band |rate| ≤ {st.threshold:.4f} where the first step "
        "arrives within a factor 10 (or not significantly outside it)."
    )


def _lyapunov(d: LayerDiagnosis) -> str | None:
    if d.lyapunov is None or not d.lyapunov.k or math.isnan(d.lambda1):
        return None
    l1, se = d.lambda1, float(d.lyapunov.stderr[0])
    margin = 2 * se if math.isfinite(se) else 0.0
    kind = (
        "chaotic: nearby states diverge"
        if l1 - margin > 0
        else "ordered: nearby states converge"
        if l1 + margin < 0
        else "marginal"
    )
    if l1 <= LOG_ZERO * (1 - 1e-9):
        return (
            f"Leading Lyapunov exponent λ1 = −∞ (every step exactly singular; counted as "
            f"{LOG_ZERO:.1f}/step; {d.lyapunov.steps} steps)."
        )
    se_txt = f" ± {se:.4f}" if math.isfinite(se) else ""
    return (
        f"Leading Lyapunov exponent λ1 = {l1:+.4f}{se_txt}/step ({kind}; {d.lyapunov.steps} steps)."
    )


def _one_step(d: LayerDiagnosis) -> str | None:
    """The one-step numbers, and what decides instead of them where they seem to disagree."""
    if not (d.eig.get("n") and d.svd.get("n")):
        return None
    radius, smax = d.eig["median"], d.svd["median"]
    base = (
        f"One step: spectral radius median {fmt_num(radius)} "
        f"({100 * d.eig['frac_above_1']:.0f}% of steps above 1), spectral norm σ_max median "
        f"{fmt_num(smax)} ({100 * d.svd['frac_above_1']:.0f}% above 1)"
    )
    st = d.decay.get("state")
    rate = st.rate if st is not None else math.nan
    decides = (
        f"λ1 = {d.lambda1:+.4f}/step, beside the fitted {rate:+.4f}"
        if math.isfinite(d.lambda1) and math.isfinite(rate)
        else f"the fitted {rate:+.4f}/step"
        if math.isfinite(rate)
        else "λ1"
    )
    if d.regime == "vanishing" and smax > 1:
        return (
            f"{base}. A one-step norm above 1 does not contradict the vanishing: it bounds "
            "one step's stretch, not the rate. The rate is that of the products of the "
            "Jacobians: their leading Lyapunov exponent, the log per step of the products' "
            f"spectral radius ({decides}). One-step norms above 1 "
            "with a vanishing gradient mean non-normal Jacobians, each stretching some "
            "direction by up to σ_max in a transient that the following steps do not keep up."
        )
    if d.regime == "exploding" and radius < 1:
        return (
            f"{base}. Every one-step spectral radius below 1 does not rule out the growth: the "
            "Jacobians change from step to step (or are non-normal), and the long-run rate is "
            f"that of their products ({decides})."
        )
    return f"{base}; one-step numbers bound a single step only, the rate above decides."


def _loss(d: LayerDiagnosis, t_ref: float, where: LossInjection | None) -> list[str]:
    """The loss-gradient sentence, where its credit enters, and the two regimes reconciled."""
    loss = d.decay.get("loss")
    if loss is None:
        return []
    if loss.regime == "unknown":
        return [
            "Every loss gradient ‖∂L/∂s_t‖ is NaN/inf: the loss is not finite or its backward "
            "overflowed, so how far the loss's credit travels is unknown."
        ]
    if math.isnan(loss.rate):
        return []
    at = where.where if where is not None else "unknown"
    curve = (
        f"the loss gradient ‖∂L/∂s_t‖ changes at {loss.rate:+.4f}/step going back "
        f"(half-life {fmt_steps(loss.half_life)} steps, {loss.regime})"
    )
    out = [f"{curve[0].upper()}{curve[1:]}."]
    if at in ("every", "some"):
        pct = f"{100 * where.fraction:.0f}%"
        share = f"{100 * where.local_share:.0f}%"
        if at == "every":
            out = [
                f"{curve[0].upper()}{curve[1:]}, but credit enters this layer directly at "
                f"{pct} of its positions before the last (the loss, or a layer above, reads "
                f"every output; a median {share} of ∂L/∂s_t enters where it is measured): "
                "that curve shows where the loss is injected, not how far credit travels."
            ]
        else:
            out = [
                f"{curve[0].upper()}{curve[1:]}; credit enters this layer directly at {pct} "
                f"of its positions before the last (a median {share} of ∂L/∂s_t where it "
                "does), so that curve mixes injected loss with credit carried back."
            ]
    elif at == "last":
        out = [
            f"The loss reaches this layer only through its last state, and {curve}: the "
            "state product applied to the loss's one direction."
        ]
    st = d.decay.get("state")
    if st is None or math.isnan(st.rate) or d.regime in ("unknown", loss.regime):
        return out
    if at in ("every", "some"):
        out.append(
            f"So the state regime ({d.regime}) and the loss regime ({loss.regime}) answer two "
            "questions: the loss regime is how the injected losses are spread over positions; "
            "how far credit travels is the state regime's answer, since a dependency k steps "
            f"back reaches the loss through ∂s_(t+k)/∂s_t, which changes by e^(rate·k), "
            f"{fmt_factor(log10_factor(st.rate, t_ref))} over the whole sequence."
        )
    else:
        out.append(
            f"The state regime ({d.regime}) and the loss regime ({loss.regime}) differ: "
            "‖∂s_T/∂s_t‖₂ is the largest gain over every direction, and the loss's own "
            "direction fares differently. The state regime bounds what any loss on the last "
            "state can get back; the loss regime is what this loss gets."
        )
    return out


def verdict(d: LayerDiagnosis, layer: LayerTrace, where: LossInjection | None = None) -> str:
    """The layer's verdict: grade, rate, Lyapunov exponent, one-step norms, loss, in words.

    Args:
        d: The layer's diagnosis (its numbers; ``severity`` set).
        layer: The recorded layer (its sequence lengths).
        where: Where the loss's credit enters the layer (:func:`~gradscope.analysis.credit.
            loss_injection`), None when unknown.
    """
    t_ref = float(np.median(layer.seq_lengths)) if layer.B else 0.0
    bits = _nonfinite(d)
    bits.append(_regime(d, t_ref))
    bits += [s for s in (_lyapunov(d), _one_step(d)) if s]
    bits += _loss(d, t_ref, where)
    inp = d.decay.get("input")
    if inp is not None and not math.isnan(inp.rate):
        bits.append(
            f"Input sensitivity ‖∂s_T/∂x_(T−k)‖ rate {inp.rate:+.4f}/step (horizon "
            f"{fmt_steps(inp.horizon)} steps)."
        )
    return " ".join(bits)


__all__ = ["MEANING", "verdict"]
