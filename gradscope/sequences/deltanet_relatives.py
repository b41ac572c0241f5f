r"""Gated DeltaNet relatives in ``transformers``: Qwen3.5 (and MoE), Qwen4-Exp, LARA, OLMo-Hybrid.

Their recurrence is Qwen3-Next's gated delta rule (:mod:`gradscope.sequences.deltanet`), run
by the same torch ``torch_chunk_gated_delta_rule``::

    S_t[h] = α (I - β k̂ k̂ᵀ) S_{t-1}[h] + β k̂ vᵀ,   α = exp(g)
    g = -exp(A_log) softplus(a + dt_bias)
    o_t[h] = S_t[h]ᵀ q̂ / sqrt(d_k),   out_t = W_out (w ⊙ RMSNorm_{d_v}(o_t[h]) ⊙ act(z_t[h]))_h

with ``q̂, k̂`` the l2-normalised outputs of the causal convolution (SiLU) of ``[q; k; v]``,
``β = sigmoid(b)``. What differs is only where ``q, k, v, z, b, a`` come from and two numbers:

* ``Qwen3_5GatedDeltaNet``, ``Qwen3_5MoeGatedDeltaNet``, ``LaraMiniGatedDeltaNet``,
  ``Qwen4ExpTextGatedDeltaNet``: four projections, ``[q; k; v] = W_qkv h`` in the flat layout
  (all query heads, then all keys, then the values; value head ``h`` reads key head
  ``h // (H_v/H_k)``), ``z = W_z h``, ``b = W_b h``, ``a = W_a h``. Qwen4-Exp's output gate
  ``act`` is its norm's activation (``output_gate_type``: SiLU or sigmoid); LARA-mini's norm
  multiplies by its weight in float32 (a float32 rounding, nothing else).
* ``OlmoHybridGatedDeltaNet``: separate ``q_proj``, ``k_proj``, ``v_proj``, ``a_proj``,
  ``b_proj``, the gate ``z = g_proj h``, the norm ``o_norm`` (``eps`` 1e-5) and ``o_proj``; with
  ``linear_allow_neg_eigval`` ``β = 2 sigmoid(b)``, so the transition's eigenvalue along ``k̂``,
  ``α (1 - β |k̂|²)``, may be negative.

The adapters here only read those layouts (:meth:`module_params`, :meth:`project`); ``params``
use the family's names (``norm.weight``, ``out_proj.weight`` also for OLMo's ``o_norm``,
``o_proj``) and the numbers ``beta_scale``, ``gate_sigmoid``. State ``(H_v, d_k, d_v)``,
Jacobian ``α (I - β k̂ k̂ᵀ) ⊗ I`` per head and every product are the family's, ``O(d_k·d_v·k)``
per head. Like Qwen3-Next, the modules run the rule and the norm in float32 inside a float64
model (replayed to float32 rounding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradscope.cells.base import Params
from gradscope.errors import UnsupportedModuleError
from gradscope.sequences._hf_mixers import check_silu
from gradscope.sequences.deltanet import ADAPTER, DeltaNetAdapter, config_numbers

_MODELS = "transformers.models"


def _gate_flag(module: nn.Module, norm: nn.Module, kind: str) -> Tensor:
    act = str(getattr(norm, "activation", "silu"))
    if act not in ("silu", "swish", "sigmoid"):
        raise UnsupportedModuleError(
            f"gradscope's {kind} adapter replays a SiLU or sigmoid output gate; this "
            f"{type(module).__name__}'s norm gates with {act!r}"
        )
    return torch.tensor(int(act == "sigmoid"))


def _linear(params: Params, name: str, h: Tensor) -> Tensor:
    return F.linear(h, params[f"{name}.weight"], params.get(f"{name}.bias"))


def _weights(module: nn.Module, names: dict[str, str]) -> Params:
    """``{our name: the module's submodule}`` -> weights and biases (detached)."""
    out: Params = {}
    for ours, theirs in names.items():
        sub = module.get_submodule(theirs)
        out[f"{ours}.weight"] = sub.weight
        if getattr(sub, "bias", None) is not None:
            out[f"{ours}.bias"] = sub.bias
    return out


class Qwen35DeltaNetAdapter(DeltaNetAdapter):
    """Qwen3.5-style gated DeltaNet: projections ``W_qkv``, ``W_z``, ``W_b``, ``W_a``."""

    def module_params(self, module: nn.Module) -> Params:
        """The four projections, the convolution, ``A``, ``dt_bias``, the norm and ``W_out``."""
        check_silu(module, self.kind)
        params = _weights(
            module,
            {
                "in_proj_qkv": "in_proj_qkv",
                "in_proj_z": "in_proj_z",
                "in_proj_b": "in_proj_b",
                "in_proj_a": "in_proj_a",
                "conv1d": "conv1d",
                "norm": "norm",
                "out_proj": "out_proj",
            },
        )
        params.update(dt_bias=module.dt_bias, A=torch.exp(module.A_log.float()))
        params = {k: v.detach() for k, v in params.items()}
        params.update(config_numbers(module, module.norm))
        params["gate_sigmoid"] = _gate_flag(module, module.norm, self.kind)
        return params

    def project(self, params: Params, h: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``W_qkv h`` (flat layout), ``W_z h``, ``W_b h``, ``W_a h``."""
        return tuple(
            _linear(params, n, h) for n in ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a")
        )


class OlmoHybridDeltaNetAdapter(DeltaNetAdapter):
    """``OlmoHybridGatedDeltaNet``: separate projections, ``β = 2 sigmoid(b)`` if allowed."""

    def module_params(self, module: nn.Module) -> Params:
        """The projections under the family's names, and ``beta_scale`` (2 or 1)."""
        check_silu(module, self.kind)
        params = _weights(
            module,
            {
                "q_proj": "q_proj",
                "k_proj": "k_proj",
                "v_proj": "v_proj",
                "g_proj": "g_proj",
                "b_proj": "b_proj",
                "a_proj": "a_proj",
                "conv1d": "conv1d",
                "norm": "o_norm",
                "out_proj": "o_proj",
            },
        )
        params.update(dt_bias=module.dt_bias, A=torch.exp(module.A_log.float()))
        params = {k: v.detach() for k, v in params.items()}
        params.update(config_numbers(module, module.o_norm))
        params["gate_sigmoid"] = _gate_flag(module, module.o_norm, self.kind)
        scale = 2.0 if module.allow_neg_eigval else 1.0
        params["beta_scale"] = torch.tensor(scale, dtype=torch.float64)
        return params

    def project(self, params: Params, h: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``[W_q h; W_k h; W_v h]``, ``W_g h``, ``W_b h``, ``W_a h``."""
        qkv = torch.cat([_linear(params, n, h) for n in ("q_proj", "k_proj", "v_proj")], dim=-1)
        return (
            qkv,
            _linear(params, "g_proj", h),
            _linear(params, "b_proj", h),
            _linear(params, "a_proj", h),
        )


QWEN35 = Qwen35DeltaNetAdapter()
OLMO_HYBRID = OlmoHybridDeltaNetAdapter()

#: The classes this module serves, by qualified name (``transformers`` is not imported here).
SERVES = {
    f"{_MODELS}.qwen3_5.modeling_qwen3_5.Qwen3_5GatedDeltaNet": QWEN35,
    f"{_MODELS}.qwen3_5_moe.modeling_qwen3_5_moe.Qwen3_5MoeGatedDeltaNet": QWEN35,
    f"{_MODELS}.qwen4_exp.modeling_qwen4_exp.Qwen4ExpTextGatedDeltaNet": QWEN35,
    f"{_MODELS}.lara_mini.modeling_lara_mini.LaraMiniGatedDeltaNet": QWEN35,
    f"{_MODELS}.olmo_hybrid.modeling_olmo_hybrid.OlmoHybridGatedDeltaNet": OLMO_HYBRID,
}

__all__ = [
    "ADAPTER",
    "OLMO_HYBRID",
    "QWEN35",
    "SERVES",
    "OlmoHybridDeltaNetAdapter",
    "Qwen35DeltaNetAdapter",
]
