"""What to do about one diagnosed layer's regime: advice scaled to its grade, in its family's terms.

The numbers come from :mod:`gradscope.analysis.diagnosis`, the verdict's words from
:mod:`gradscope.analysis.verdict`. The advice is scaled to the grade of the regime
(:mod:`gradscope.analysis.severity`): a *mild* vanishing gradient may need nothing for
dependencies shorter than the sequence; a *strong* one gets the family's levers; a
*severe* one is beyond what initialisation alone moves, and the advice says that the
recurrence itself (the architecture) decides. The levers are the family's own
(:meth:`~gradscope.cells.base.CellAdapter.vanishing_advice`: the forget-gate bias of an
LSTM, ``A_log`` and the Δ bias of a Mamba, ``time_decay`` of an RWKV, ...); a family that
says nothing gets the general advice for its kind of transition (dense, or diagonal with
memory timescales). References: Pascanu, Mikolov & Bengio (2013) for clipping; Saxe et
al. (2014) / Le, Jaitly & Hinton (2015) for orthogonal and identity initialisation; Orvieto
et al. (2023) for the LRU's decay parametrisation.
"""

from __future__ import annotations

import math

import numpy as np

from gradscope.analysis.formatting import fmt_num, fmt_steps
from gradscope.analysis.results import LayerDiagnosis
from gradscope.analysis.severity import fmt_factor, log10_factor
from gradscope.layer_trace import LayerTrace


def _facts(d: LayerDiagnosis, layer: LayerTrace) -> dict[str, str]:
    """This layer's numbers as text, for the family's advice (``vanishing_advice``)."""
    st = d.decay.get("state")
    t_ref = float(np.median(layer.seq_lengths)) if layer.B else 0.0
    rate = st.rate if st is not None else math.nan
    facts = {
        "horizon": fmt_steps(st.horizon) if st is not None else "n/a",
        "smax": fmt_num(d.svd.get("median", math.nan)),
        "radius": fmt_num(d.eig.get("median", math.nan)),
        "severity": d.severity,
        "factor": fmt_factor(log10_factor(rate, t_ref)),
        "T": f"{t_ref:g}",
        "rate": f"{rate:+.4f}",
        "lambda1": "n/a" if math.isnan(d.lambda1) else f"{d.lambda1:+.4f}",
    }
    if d.memory is not None:
        facts["tau"] = fmt_steps(d.memory.median_tau)
        facts["frac_long"] = f"{100 * d.memory.frac_long:.0f}%"
    return facts


def _general(d: LayerDiagnosis, facts: dict[str, str]) -> list[str]:
    """Levers for a family that names none: by the kind of transition the analysis saw."""
    if d.memory is not None:  # diagonal in a fixed basis: each coordinate its own decay
        return [
            "Move some coordinates' decay |λ| towards 1: each forgets at its own rate "
            f"(median timescale τ = {facts['tau']} steps; {facts['frac_long']} reach T = "
            f"{facts['T']}). Parametrise |λ| = exp(−exp(ν)) and initialise ν so that the "
            "timescales spread from 1 to the longest dependency (as the LRU does, Orvieto "
            "et al. 2023).",
            "If the decay depends on the input, check that the input can drive it to 1 "
            "(hold) on the steps that must be remembered; beyond what any decay keeps, "
            "attention over past states is the structural fix.",
        ]
    return [
        "Initialise the recurrent weights orthogonally (torch.nn.init.orthogonal_), so "
        "that the products of the state Jacobians start near norm 1 (one-step spectral "
        f"radius median now {facts['radius']}, σ_max {facts['smax']}).",
        "Give the cell an additive or gated state path (as in LSTM/GRU): a state that is "
        "copied forward carries its gradient back unchanged.",
    ]


def _vanishing(d: LayerDiagnosis, layer: LayerTrace) -> list[str]:
    """The family's levers, scaled to the grade."""
    facts = _facts(d, layer)
    adapter = layer.computing_adapter()
    own = None if adapter is None else adapter.vanishing_advice(layer.params, facts)
    levers = list(own or _general(d, facts))
    reach = (
        f"Dependencies longer than ~{facts['horizon']} steps are out of reach at present; "
        "truncated BPTT over that many steps loses nothing and costs less."
    )
    if d.severity == "mild":
        return [
            f"Mild: over a whole sequence (T = {facts['T']}) the first step's gradient still "
            f"arrives at {facts['factor']} of the last step's, so a dependency anywhere "
            "within the sequence keeps at least that share of its gradient: there may be "
            f"nothing to do. Only if the task needs dependencies of ~{facts['T']} steps or "
            "longer, the cheapest lever:",
            levers[0],
        ]
    if d.severity == "severe":
        return [
            f"Severe: a factor {facts['factor']} over T = {facts['T']} is far beyond what "
            "a learning rate, clipping or a schedule recovers; the recurrence itself "
            "decides. Try the levers below in order; if they leave the factor below 1e-8, "
            "change the architecture (the last item).",
            *levers,
            reach,
        ]
    return [*levers, reach]


def advice(d: LayerDiagnosis, layer: LayerTrace) -> list[str]:
    """What to do about the regime, one sentence per item, scaled to its grade.

    What to try against vanishing gradients is the family's own
    (:meth:`~gradscope.cells.base.CellAdapter.vanishing_advice`, with this layer's numbers);
    a family that says nothing gets the general advice.
    """
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
    if nf.get("count") and not nf.get("params"):  # NaN weights: said above, not the inputs
        out.append(
            f"Non-finite states start at step {nf['first_step']} (sequence "
            f"{nf['first_batch']}): check the inputs there, lower the learning rate, clip "
            "gradients, and run torch.autograd.set_detect_anomaly(True) to find the first "
            "operation that produced NaN/inf."
        )
    radius = d.eig.get("median", math.nan)
    if d.regime == "vanishing":
        out += _vanishing(d, layer)
    elif d.regime == "exploding":
        out.append(
            "Clip gradients: torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0) "
            "(Pascanu et al. 2013)."
            + (
                " At this grade (mild: within a factor 100 over the sequence) that may be all "
                "it needs."
                if d.severity == "mild"
                else ""
            )
        )
        if d.severity != "mild":
            out += [
                "Lower the recurrent gain: scale the recurrent weights so that the spectral "
                f"radius of the step Jacobian stays below 1 (median now {fmt_num(radius)}), "
                "or reduce the initialisation gain.",
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
