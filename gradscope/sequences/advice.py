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


def mamba(
    params: Params,
    facts: dict[str, str],
    step_min: str | None,
    step_max: str | None,
    bias_name: str = "dt_proj.bias",
) -> list[str]:
    """Mamba-1 (``transformers``' ``MambaMixer`` and its relatives, ``mambapy``'s ``MambaBlock``).

    Decay ``exp(Δ_t A)`` per channel and state, ``A = −exp(A_log)``, ``Δ_t =
    softplus(dt_proj(δ_t) + b_Δ)``; ``step_min``/``step_max``: the config's names of the
    range the Δ bias is initialised in (None: the config has none, as Jamba's);
    ``bias_name``: the module's name for ``b_Δ`` (``dt_proj.bias``; Zamba's ``dt_proj_bias``),
    its values always under ``params["dt_proj.bias"]``.
    """
    bias = params.get("dt_proj.bias")
    delta = None if bias is None else F.softplus(bias.double())
    A = params["A"].double().abs()
    slow = (
        1.0 / float(delta.min() * A.min())
        if delta is not None and float(delta.min() * A.min()) > 0
        else math.inf
    )
    if step_min is None or step_max is None:
        init = (
            "with Δ₀ log-uniform in [0.001, 0.1] (Mamba's default; this config has no such "
            "range, so set it after building the model), and lower the minimum"
        )
    else:
        init = (
            f"with Δ₀ log-uniform in [{step_min}, {step_max}] of the config, and lower {step_min}"
        )
    return [
        f"Lower Δ in some channels: Δ_t = softplus(W_Δ δ_t + {bias_name}) sets each "
        f"channel's decay exp(−Δ_t |A|) per step (softplus({bias_name}) now "
        f"{spread(delta)}). Initialise {bias_name} = softplus⁻¹(Δ₀) {init} until some "
        f"channels have Δ|A| ≈ 1/T (T = {facts['T']}).",
        "Or lower |A| = exp(A_log) for the slowest states: the S4D-real initialisation "
        "A_n = −(n + 1) makes state n forget n + 1 times as fast as state 0 (|A| now "
        f"{spread(A)}); with Δ at softplus({bias_name}) the slowest coordinate remembers "
        f"for ~{_steps(slow)} steps.",
        "Δ depends on the input: the model holds (Δ → 0) only where its input asks it to. "
        "If no channel holds across the dependencies the task needs (see the memory "
        "timescales), interleave attention layers for exact long-range recall, as Jamba "
        "does.",
    ]


def mamba2(params: Params, facts: dict[str, str], step_min: str | None) -> list[str]:
    """Mamba-2: a scalar decay per head ``exp(Δ_h A_h)``, ``Δ = clamp(softplus(dt + dt_bias))``.

    ``step_min``: the config's name of the lower end of the range ``dt_bias`` is initialised
    in (``time_step_min``), or None where the model initialises ``dt_bias`` at 1 (Bamba,
    FalconH1, GraniteMoeHybrid).
    """
    delta = F.softplus(params["dt_bias"].double())
    if step_min is None:
        init = (
            "this model initialises dt_bias at 1 (Δ ≈ 1.31 in every head): set it after "
            "building the model to softplus⁻¹(Δ₀) with Δ₀ log-uniform in [0.001, 0.1], "
            "Mamba-2's default,"
        )
    else:
        init = (
            "initialise dt_bias = softplus⁻¹(Δ₀) with Δ₀ log-uniform from a smaller "
            f"{step_min} of the config"
        )
    A = params["A"].double().abs()
    lo, hi = float(params["dt_min"]), float(params["dt_max"])
    return [
        "Lower Δ in some heads: Δ_h = softplus(dt + dt_bias_h) sets head h's decay "
        f"exp(−Δ_h |A_h|) per step (softplus(dt_bias) now {spread(delta)}); {init} so that "
        f"some heads have Δ|A| ≈ 1/T (T = {facts['T']}).",
        "Or lower |A_h| = exp(A_log_h) for some heads (now "
        f"{spread(A)}; these models initialise A_h = h, 1 to the number of heads): a head "
        "with Δ|A| ≪ 1/T keeps its state across the sequence.",
        f"The mixer's time_step_limit clamps Δ to [{lo:g}, {hi:g}]: a floor above 1/(|A| T) stops "
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


def deltanet(
    params: Params, facts: dict[str, str], beta_from: str = "the b rows of in_proj_ba"
) -> list[str]:
    """Gated DeltaNet: ``S_t = α (I − β k̂ k̂ᵀ) S_{t−1} + β k̂ vᵀ`` per value head.

    ``beta_from``: the module's projection giving ``b`` (Qwen3-Next's ``in_proj_ba``, Qwen3.5's
    ``in_proj_b``, OLMo hybrid's ``b_proj``).
    """
    A = params["A"].double()
    alpha0 = torch.exp(-A * F.softplus(params["dt_bias"].double()))  # α at a = 0
    if float(params.get("beta_scale", 1.0)) == 2.0:  # OLMo hybrid's negative eigenvalues
        beta_text = (
            f"β = 2σ(b) (b from {beta_from}) lies in (0, 2): (I − β k̂ k̂ᵀ) scales the state "
            "along the written key by α(1 − β) ∈ (−α, α), which flips its sign for β > 1; "
            "|1 − β| near 1 (β near 0 or 2) keeps that direction, β near 1 erases it. Move "
            "b away from 0 for tokens that should not erase."
        )
    else:
        beta_text = (
            f"β = σ(b) (b from {beta_from}) erases what the written key held: "
            "(I − β k̂ k̂ᵀ) removes a fraction β of the state along k̂ at every step, the "
            "Jacobian's fastest direction α(1 − β). Writes with β near 1 overwrite; lower "
            "b for tokens that should not erase."
        )
    return [
        "Raise the gate α = exp(−A softplus(a + dt_bias)) towards 1 in some heads: lower "
        f"A = exp(A_log) (now {spread(A)}; the initialisation draws A uniform in [0.01, 16]) or "
        f"dt_bias (now {spread(params['dt_bias'])}); at a = 0 the heads keep α "
        f"{spread(alpha0, 4)} per step, and a head holds across T = {facts['T']} only if "
        "1 − α ≲ 1/T.",
        beta_text,
        "For exact recall beyond what the gate keeps, the models that ship this layer "
        "(Qwen3-Next, Qwen3.5, OLMo hybrid) interleave full attention layers with it.",
    ]


def kda(params: Params, facts: dict[str, str], gate_input: str) -> list[str]:
    """Kimi delta attention: ``S_t = (I − β k̂ k̂ᵀ) diag(α_t) S_{t−1} + β k̂ vᵀ`` per head.

    ``α_t = exp(g_t)`` per key channel, ``g = −A softplus(x)`` or, with a lower bound ``ℓ``,
    ``g = ℓ σ(A x)``, ``x = f(h_t) + dt_bias``, ``A = exp(A_log)`` per head; ``gate_input``: the
    module's name for ``f`` (Kimi's and GLM-5 Next's ``forget_gate.f_b_proj ∘ f_a_proj``,
    Bailing's ``forget_gate.f_proj``).
    """
    A = params["f_A"] if "f_A" in params else torch.exp(params["f_A_log"])
    A = A.double()
    dt = params["f_dt_bias"].double()
    dk = int(params["head_k_dim"])
    a_ch = A.repeat_interleave(dk)[: dt.numel()]
    bound = params.get("gate_lower_bound")
    if bound is None:
        g0 = -a_ch * F.softplus(dt)
        form = (
            "α = exp(−A softplus(x)) per key channel, x = f(h) + forget_gate.dt_bias, "
            f"A = exp(forget_gate.A_log) per head (now {spread(A)}; Kimi Linear draws A "
            "uniform in [1, 16])"
        )
        how = "Lower forget_gate.dt_bias or forget_gate.A_log for some channels"
        floor = ""
    else:
        lb = float(bound)
        g0 = lb * torch.sigmoid(a_ch * dt)
        form = (
            f"α = exp(ℓ σ(A x)) per key channel (ℓ = {lb:g}), x = f(h) + forget_gate.dt_bias, "
            f"A = exp(forget_gate.A_log) per head (now {spread(A)})"
        )
        how = (
            "Lower forget_gate.dt_bias for some channels, so that σ(A x) → 0 (where x < 0, a "
            "larger A, forget_gate.A_log, keeps more)"
        )
        floor = (
            f" The lower bound caps the forgetting: α ≥ e^ℓ = {math.exp(lb):.3g} per step "
            "whatever the input."
        )
    alpha0 = torch.exp(g0)
    return [
        f"Raise α towards 1 in some key channels: {form}; forget_gate.dt_bias now "
        f"{spread(dt)} (Kimi Linear initialises it at softplus⁻¹ of Δ log-uniform in "
        f"[1e-3, 0.1]). {how}: at f(h) = 0 the channels keep α {spread(alpha0, 4)} per "
        f"step, and one holds across T = {facts['T']} only if 1 − α ≲ 1/T.{floor}",
        f"The decay depends on the input through {gate_input}: a channel is held only "
        "where its input drives x down. β = σ(b_proj h) erases the state along the written "
        "key (the Jacobian's fastest direction is α(1 − β)); lower b for tokens that "
        "should not overwrite.",
        "For exact recall beyond what the decay keeps, the models that ship this layer "
        "(Kimi Linear, GLM-5 Next, Bailing hybrid) interleave full attention layers with "
        "it; more of them shortens the longest path through the delta layers.",
    ]


def lightning(params: Params, facts: dict[str, str]) -> list[str]:
    """Lightning attention: a fixed decay ``λ_h = exp(−s_h)`` per head, nothing learned.

    ``s_h = 2^{−8(h+1)/H} · (1 − ℓ/(L−1) + 10⁻⁵)`` (the ``slope_rate`` buffer) for layer ``ℓ``
    of ``L``.
    """
    slope = params["slope"].double()
    tau = 1.0 / slope.clamp_min(1e-300)
    T = max(float(facts["T"]), 1.0)
    held = int((slope * T < 1.0).sum())
    return [
        "No parameter sets this layer's memory: head h forgets at λ_h = exp(−s_h) per "
        "step with the slope s_h = 2^(−8(h+1)/H)·(1 − ℓ/(L−1)) fixed by its place ℓ in a "
        f"stack of L layers (the slope_rate buffer; now {spread(slope)}, memories "
        f"1/s_h {spread(tau)} steps). {held} of {slope.numel()} heads hold across T = "
        f"{facts['T']} (s_h < 1/T); training cannot change that.",
        "What can: more heads (num_attention_heads) add heads with smaller slopes, and a "
        "layer later in the stack has smaller slopes for every head (the last one ≈ 10⁻⁵: "
        "nothing is forgotten there). A gradient that vanishes here vanishes by the "
        "slopes of the early layers.",
        "For exact recall beyond the slopes' reach, MiniMax interleaves softmax-attention "
        "layers (config.layer_types) with the lightning layers; more of them, or placing "
        "them early, is the structural fix.",
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
    "kda",
    "lightning",
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
