"""Plain-language verdict and advice for one diagnosed layer.

The numbers come from :mod:`gradscope.analysis.diagnosis`; this module only words them.
The verdict states every claim with its number; the advice is keyed to the cell family
and the regime: Pascanu, Mikolov & Bengio (2013) for clipping and the ``σ_max(W_hh) < 1``
criterion; Saxe et al. (2014) / Le, Jaitly & Hinton (2015) for orthogonal and identity
initialisation; Gers, Schmidhuber & Cummins (2000) and Jozefowicz, Zaremba & Sutskever
(2015) for the forget-gate bias; Tallec & Ollivier (2018) for chrono initialisation.
"""

from __future__ import annotations

import math

import numpy as np

from gradscope.analysis.formatting import fmt_num, fmt_steps
from gradscope.analysis.results import LayerDiagnosis
from gradscope.jacobians.diagonal import LOG_ZERO
from gradscope.layer_trace import LayerTrace


def verdict(d: LayerDiagnosis, layer: LayerTrace) -> str:
    """The layer's verdict: regime, rate, Lyapunov exponent and one-step norms, in words."""
    st = d.decay.get("state")
    t_ref = float(np.median(layer.seq_lengths)) if layer.B else 0.0
    bits: list[str] = []
    nf = d.nonfinite
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
    if d.regime == "unknown":
        bits.append(f"Regime unknown: the gradient decay could not be measured ({d.reason}).")
    elif st is not None and st.regime == "exploding" and math.isnan(st.rate):
        bits.append(
            "Exploding gradients: the norms grow over the finite steps until the states "
            f"overflow at step {nf.get('first_step')}; too few finite steps to fit a rate."
        )
    elif st is None or math.isnan(st.rate):
        bits.append(
            "The gradient decay could not be measured (too few steps"
            f": T = {d.T}); regime unknown, reported as neutral."
        )
    else:
        lo, hi = st.rate_ci
        ci = f"95% CI [{lo:+.4f}, {hi:+.4f}]" if math.isfinite(lo) else "no CI"
        per = math.exp(st.rate)
        rate_txt = (
            f"‖∂s_T/∂s_(T−k)‖ changes by a factor {fmt_num(per, 4)} per step back (rate "
            f"{st.rate:+.4f}"
            f"/step, {ci}, fitted over lags {st.fit_lags[0]}–{st.fit_lags[1]})"
        )
        if st.regime == "vanishing" and st.rate <= LOG_ZERO * (1 - 1e-9):
            bits.append(
                "Vanishing gradients: the one-step Jacobian is exactly zero (every eigenvalue "
                "0: a decay, gate or recurrent weight of exactly 0), so no gradient reaches back "
                f"even one step; its log is counted as ln(smallest float64) = {LOG_ZERO:.1f} "
                "per step."
            )
        elif st.regime == "vanishing":
            keep = math.exp(st.rate * t_ref)
            bits.append(
                f"Vanishing gradients: {rate_txt}. It halves every {fmt_steps(st.half_life)} "
                f"steps and falls below {st.horizon_factor:g} of its value after "
                f"{fmt_steps(st.horizon)} steps; across a whole sequence (T = {t_ref:g}) it "
                f"shrinks by {fmt_num(keep, 3)}, beyond the neutral band |rate| ≤ "
                f"{st.threshold:.4f} (a factor 10 over T)."
            )
        elif st.regime == "exploding":
            grow = math.exp(st.rate * t_ref)
            if nf.get("count"):
                bits.append(
                    f"Exploding gradients: {rate_txt} over the finite steps, and the states "
                    f"overflow to NaN/inf at step {nf['first_step']} (sequence "
                    f"{nf['first_batch']})."
                )
            else:
                bits.append(
                    f"Exploding gradients: {rate_txt}; over a whole sequence (T = {t_ref:g}) "
                    f"it grows by {fmt_num(grow, 3)}, beyond the neutral band |rate| ≤ "
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
        if l1 <= LOG_ZERO * (1 - 1e-9):
            bits.append(
                f"Leading Lyapunov exponent λ1 = −∞ (every step exactly singular; counted as "
                f"{LOG_ZERO:.1f}/step; {d.lyapunov.steps} steps)."
            )
        else:
            bits.append(
                f"Leading Lyapunov exponent λ1 = {l1:+.4f}{se_txt}/step ({kind}; "
                f"{d.lyapunov.steps} steps)."
            )
    if d.eig.get("n") and d.svd.get("n"):
        bits.append(
            f"One step: spectral radius median {fmt_num(d.eig['median'])} "
            f"({100 * d.eig['frac_above_1']:.0f}% of steps above 1), spectral norm "
            f"σ_max median {fmt_num(d.svd['median'])} ({100 * d.svd['frac_above_1']:.0f}% "
            "above 1); one-step numbers bound a single step only, the rate above decides."
        )
    loss = d.decay.get("loss")
    if loss is not None and loss.regime == "unknown":
        bits.append(
            "Every loss gradient ‖∂L/∂s_t‖ is NaN/inf: the loss is not finite or its backward "
            "overflowed, so how far the loss's credit travels is unknown."
        )
    elif loss is not None and not math.isnan(loss.rate):
        bits.append(
            f"The loss gradient ‖∂L/∂s_t‖ changes at {loss.rate:+.4f}/step going back "
            f"(half-life {fmt_steps(loss.half_life)} steps, {loss.regime})."
        )
    inp = d.decay.get("input")
    if inp is not None and not math.isnan(inp.rate):
        bits.append(
            f"Input sensitivity ‖∂s_T/∂x_(T−k)‖ rate {inp.rate:+.4f}/step (horizon "
            f"{fmt_steps(inp.horizon)} steps)."
        )
    return " ".join(bits)


def advice(d: LayerDiagnosis, layer: LayerTrace) -> list[str]:
    """What to do about the regime, one sentence per item.

    What to try against vanishing gradients is the family's own
    (:meth:`~gradscope.cells.base.CellAdapter.vanishing_advice`, with this layer's numbers);
    a family that says nothing gets the general advice.
    """
    st = d.decay.get("state")
    horizon = fmt_steps(st.horizon) if st is not None else "n/a"
    out: list[str] = []
    nf = d.nonfinite
    if nf.get("params"):
        out.append(
            f"The weights {', '.join(nf['params'])} are NaN/inf: training has diverged. "
            "Restore a checkpoint from before the divergence, lower the learning rate and "
            "clip gradients (torch.nn.utils.clip_grad_norm_)."
        )
    elif d.regime == "unknown":
        out.append(
            f"The regime could not be measured ({d.reason}); nothing here says the gradient "
            "flow is healthy."
        )
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
        facts = {"horizon": horizon, "smax": fmt_num(smax), "radius": fmt_num(radius)}
        adapter = layer.computing_adapter()
        own = None if adapter is None else adapter.vanishing_advice(layer.params, facts)
        out += own or [
            "Give the cell an additive or gated state path (as in LSTM/GRU) or initialise "
            "its recurrent weights orthogonally, so that the state Jacobian has singular "
            f"values near 1 (one-step σ_max median now {fmt_num(smax)}).",
            f"Dependencies longer than ~{horizon} steps are out of reach at present.",
        ]
    elif d.regime == "exploding":
        out += [
            "Clip gradients: torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0) "
            "(Pascanu et al. 2013).",
            "Lower the recurrent gain: scale weight_hh so that the spectral radius of the "
            f"step Jacobian stays below 1 (median now {fmt_num(radius)}), or reduce the "
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
