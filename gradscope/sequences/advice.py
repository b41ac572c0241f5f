r"""What to try against vanishing gradients in each sequence family, in its own parameters.

Each function returns the levers of one family, cheapest first and the structural one last,
with the values this layer's parameters hold now; the adapters' ``vanishing_advice``
methods call them (:meth:`~gradscope.cells.base.CellAdapter.vanishing_advice`, where
``facts`` is described). A diagonal recurrence forgets coordinate ``d`` at ``|λ_d|`` per
step, so it remembers for ``τ_d = −1/ln|λ_d|`` steps: every lever below moves some ``|λ_d|``
towards 1 (``τ_d`` towards the dependencies the task needs), and says which parameter does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from gradscope.cells.base import Params


def spread(values: Tensor | None, digits: int = 3) -> str:
    """``median m (min a, max b)`` of a tensor's finite entries, or ``n/a``."""
    if values is None:
        return "n/a"
    v = values.detach().double().flatten()
    v = v[torch.isfinite(v)]
    if not v.numel():
        return "n/a"
    med, lo, hi = (float(x) for x in (v.median(), v.min(), v.max()))
    return f"median {med:.{digits}g} (min {lo:.{digits}g}, max {hi:.{digits}g})"


def _steps(x: float) -> str:
    if not math.isfinite(x):
        return "∞"
    return f"{x:.3g}"


def mamba(params: Params, facts: dict[str, str], step_min: str, step_max: str) -> list[str]:
    """Mamba-1 (``transformers``' ``MambaMixer``, ``mambapy``'s ``MambaBlock``).

    Decay ``exp(Δ_t A)`` per channel and state, ``A = −exp(A_log)``, ``Δ_t =
    softplus(dt_proj(δ_t) + dt_proj.bias)``; ``step_min``/``step_max``: the config's names
    of the range the Δ bias is initialised in.
    """
    bias = params.get("dt_proj.bias")
    delta = None if bias is None else F.softplus(bias.double())
    A = params["A"].double().abs()
    slow = (
        1.0 / float(delta.min() * A.min())
        if delta is not None and float(delta.min() * A.min()) > 0
        else math.inf
    )
    return [
        "Lower Δ in some channels: Δ_t = softplus(dt_proj(δ_t) + dt_proj.bias) sets each "
        "channel's decay exp(−Δ_t |A|) per step (softplus(dt_proj.bias) now "
        f"{spread(delta)}). Initialise dt_proj.bias = softplus⁻¹(Δ₀) with Δ₀ log-uniform in "
        f"[{step_min}, {step_max}] of the config, and lower {step_min} until some channels "
        f"have Δ|A| ≈ 1/T (T = {facts['T']}).",
        "Or lower |A| = exp(A_log) for the slowest states: the S4D-real initialisation "
        "A_n = −(n + 1) makes state n forget n + 1 times as fast as state 0 (|A| now "
        f"{spread(A)}); with Δ at softplus(dt_proj.bias) the slowest coordinate remembers "
        f"for ~{_steps(slow)} steps.",
        "Δ depends on the input: the model holds (Δ → 0) only where its input asks it to. "
        "If no channel holds across the dependencies the task needs (see the memory "
        "timescales), interleave attention layers for exact long-range recall, as Jamba "
        "does.",
    ]


def mamba2(params: Params, facts: dict[str, str]) -> list[str]:
    """Mamba-2: a scalar decay per head ``exp(Δ_h A_h)``, ``Δ = clamp(softplus(dt + dt_bias))``."""
    delta = F.softplus(params["dt_bias"].double())
    A = params["A"].double().abs()
    lo, hi = float(params["dt_min"]), float(params["dt_max"])
    return [
        "Lower Δ in some heads: Δ_h = softplus(dt + dt_bias_h) sets head h's decay "
        f"exp(−Δ_h |A_h|) per step (softplus(dt_bias) now {spread(delta)}); initialise "
        "dt_bias from a smaller time_step_min (Mamba2Config) so that some heads have "
        f"Δ|A| ≈ 1/T (T = {facts['T']}).",
        "Or lower |A_h| = exp(A_log_h) for some heads (now "
        f"{spread(A)}): a head with Δ|A| ≪ 1/T keeps its state across the sequence.",
        f"time_step_limit clamps Δ to [{lo:g}, {hi:g}]: a floor above 1/(|A| T) stops "
        "every head from holding across T. For exact recall beyond what the decay keeps, "
        "interleave attention layers (a hybrid model).",
    ]


def rwkv(params: Params, facts: dict[str, str]) -> list[str]:
    """RWKV-4: a constant decay per channel ``λ = exp(−exp(time_decay))``."""
    td = params["time_decay"].double()
    tau = torch.exp(-td)  # −1/ln λ = 1/exp(time_decay)
    return [
        "Lower time_decay in some channels: each forgets at λ = exp(−exp(time_decay)) per "
        f"step and remembers for 1/exp(time_decay) steps (now {spread(tau)} steps; "
        f"time_decay {spread(td)}). A channel holds across T = {facts['T']} only with "
        f"time_decay < −ln T = {-math.log(max(float(facts['T']), 1.0)):.2f}; RWKV's "
        "initialisation spreads time_decay from −5 to 3 over the channels for that reason.",
        "The decay does not depend on the input: nothing the model reads makes a channel "
        "hold longer, only time_decay does (time_first weights the current token, not the "
        "memory).",
        "For input-dependent memory, RWKV-5/6 make the decay a function of the token "
        "(data-dependent decay): the input then chooses what to hold.",
    ]


def mlstm(
    params: Params, facts: dict[str, str], forget_bias: str, bias: Tensor | None
) -> list[str]:
    """The mLSTM (xLSTM-7B's layer, the paper's block): ``f_t = σ(f̃_t)`` per head.

    ``forget_bias``: the name of the forget-gate bias, ``bias`` its values.
    """
    cap = params.get("gate_soft_cap")
    capped = (
        f" The gate_soft_cap {float(cap):g} bounds f̃, so 1 − f ≥ 1 − σ({float(cap):g}) = "
        f"{1 / (1 + math.exp(float(cap))):.2g}."
        if cap is not None
        else ""
    )
    return [
        f"Raise the forget-gate bias ({forget_bias}, now {spread(bias)}): a head keeps its "
        "matrix memory for ~1/(1 − f) steps with f = σ(f̃_t); the xLSTM paper's block "
        "initialises it evenly in [3, 6] (f ≈ 0.95–0.998), and a head holds across T = "
        f"{facts['T']} only if 1 − f ≲ 1/T.{capped}",
        "The input gate is exponential and the stabiliser rescales, but neither enters "
        "the memory's Jacobian (f_t · I per head): it is the forget gates' distribution "
        "over the sequence that decides.",
        "If the forget gates stay low because the input drives f̃ down, the memory "
        "cannot hold whatever the bias: an sLSTM block (scalar memory with recurrent "
        "gates) or attention for the longest dependencies is the structural fix.",
    ]


def rglru(params: Params, facts: dict[str, str]) -> list[str]:
    """RG-LRU: ``a_t = exp(−c softplus(Λ) r_t)``, ``c = 8``."""
    lam = params["recurrent_param"].double()
    rate = 8.0 * F.softplus(lam)  # −ln a at r_t = 1
    tau = 1.0 / rate
    return [
        "Lower Λ (recurrent_param) in some channels: a_t = exp(−8 softplus(Λ) r_t), so "
        "at a closed recurrence gate (r_t = 1) a channel remembers for 1/(8 softplus(Λ)) "
        f"steps (now {spread(tau)}); Griffin initialises a^8 ∈ [0.9⁸, 0.999⁸] and a channel "
        f"holds across T = {facts['T']} only if 8 softplus(Λ) r_t ≲ 1/T.",
        "Or lower r_t = σ(x W_a + b_a) through recurrent_gate_bias (now "
        f"{spread(params.get('recurrent_gate_bias'))}): r_t → 0 makes a_t → 1, the "
        "input's way to hold a channel.",
        "Every position 0 (a document start) resets the state by design (a_t = 0): "
        "dependencies across documents are not carried. Beyond the decay's reach Griffin "
        "relies on its local-attention layers.",
    ]


def deltanet(params: Params, facts: dict[str, str]) -> list[str]:
    """Gated DeltaNet: ``S_t = α (I − β k̂ k̂ᵀ) S_{t−1} + β k̂ vᵀ`` per value head."""
    A = params["A"].double()
    alpha0 = torch.exp(-A * F.softplus(params["dt_bias"].double()))  # α at a = 0
    return [
        "Raise the gate α = exp(−A softplus(a + dt_bias)) towards 1 in some heads: lower "
        f"A = exp(A_log) (now {spread(A)}; the initialisation draws A uniform in [0.01, 16]) or "
        f"dt_bias (now {spread(params['dt_bias'])}); at a = 0 the heads keep α "
        f"{spread(alpha0, 4)} per step, and a head holds across T = {facts['T']} only if "
        "1 − α ≲ 1/T.",
        "β = σ(b) (the b rows of in_proj_ba) erases what the written key held: "
        "(I − β k̂ k̂ᵀ) removes a fraction β of the state along k̂ at every step, the "
        "Jacobian's fastest direction α(1 − β). Writes with β near 1 overwrite; lower "
        "the b rows' output for tokens that should not erase.",
        "For exact recall beyond what the gate keeps, Qwen3-Next interleaves full "
        "attention layers with its DeltaNet layers.",
    ]


def mingru(params: Params, facts: dict[str, str]) -> list[str]:
    """minGRU: ``h_t = (1 − z_t) h_{t−1} + z_t h̃_t``, decay ``1 − z_t = σ(−zᵖ_t)``."""
    return [
        "Bias the gate towards keeping: the decay is 1 − z_t = σ(−zᵖ_t) with zᵖ_t the gate "
        "half of to_hidden_and_gate(x_t), which the package builds without a bias; add "
        "one (negative, e.g. −3: z ≈ 0.05, 1 − z ≈ 0.95 at zero input) so that channels "
        f"hold for ~1/z steps, T = {facts['T']} for z ≈ 1/T.",
        "The decay depends on the input alone: scale or normalise the layer's input so "
        "that the gate half of to_hidden_and_gate is not driven to large values.",
        "minGRU has no recurrent weights, so stacking layers does not lengthen its memory; "
        "for dependencies beyond its decay's reach, a decay parametrised near 1 (an LRU) "
        "or attention is the structural fix.",
    ]


def minlstm(params: Params, facts: dict[str, str]) -> list[str]:
    """minLSTM: decay ``f'_t = f_t / (f_t + i_t)``, ``f = σ(fᵖ)``, ``i = σ(iᵖ)``."""
    return [
        "Bias the forget half above the input half: the decay is f'_t = f_t / (f_t + i_t) "
        "with f = σ(fᵖ), i = σ(iᵖ) from to_hidden_and_f_i_gate(x_t), which the package "
        "builds without a bias; a bias of +3 on the f rows and −3 on the i rows gives "
        f"f' ≈ 0.95 at zero input (a channel holds for ~1/(1 − f') steps; T = {facts['T']}).",
        "The decay depends on the input alone: scale or normalise the layer's input so "
        "that iᵖ does not outweigh fᵖ where the state must be kept.",
        "minLSTM has no recurrent weights; for dependencies beyond its decay's reach, a "
        "decay parametrised near 1 (an LRU) or attention is the structural fix.",
    ]


def s5(params: Params, facts: dict[str, str]) -> list[str]:
    """S5: ``|λ̄| = exp(Re(Λ) Δ)`` per mode (ZOH), ``Δ = step_scale · exp(log_step)``."""
    re = params["Lambda.re"].double()
    step = torch.exp(params["log_step"].double())
    rate = (re * step).abs()
    tau = 1.0 / rate
    return [
        "Shrink Δ = step_scale · exp(log_step) in some modes: a mode keeps |λ̄| = "
        f"exp(Re(Λ) Δ) per step and remembers for 1/(|Re Λ| Δ) steps (now {spread(tau)} "
        f"at step_scale 1; exp(log_step) {spread(step)}). S5 draws Δ log-uniform in "
        f"[dt_min, dt_max]; lower dt_min so that some modes reach T = {facts['T']}.",
        f"Or bring Re(Λ) (Lambda, now {spread(re)}) nearer 0 for the slowest modes; a "
        "smaller step_scale at call time lengthens every timescale at once.",
        "For exact recall beyond the slowest mode's reach, interleave attention layers.",
    ]


__all__ = [
    "deltanet",
    "mamba",
    "mamba2",
    "minlstm",
    "mingru",
    "mlstm",
    "rglru",
    "rwkv",
    "s5",
    "spread",
]
