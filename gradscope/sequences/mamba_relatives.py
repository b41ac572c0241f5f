r"""Mamba-1 relatives in ``transformers``: FalconMamba, Jamba and Zamba mixers.

Their recurrence is Mamba's (:mod:`gradscope.sequences.mamba`: ``h_t = exp(Δ_t A) ⊙ h_{t-1} +
Δ_t x_t ⊗ B_t``, ``y_t = C_t·h_t + D x_t``, ``out = W_out(y ⊙ silu(z))``), run by the same torch
selective scan (``mamba_selective_scan``); what differs is how ``Δ``, ``B``, ``C`` come from the
convolved input ``x_t``:

* ``FalconMambaMixer``: ``(δ, B, C) = W_x x`` are each RMS-normalised *without* a weight
  before ``Δ = softplus(W_Δ δ̂ + b_Δ)``: ``v̂ = v / sqrt(mean(v²) + ε)`` with
  ``ε = mixer_rms_eps``, computed in float32 and cast back
  (``FalconMambaWeightlessRMSNorm``; its ``weight`` buffer is never read);
* ``JambaMambaMixer``: the same three norms *with* weights,
  ``v̂ = w ⊙ (v / sqrt(mean(v²) + ε))`` (``JambaRMSNorm``: normalised in float32, cast back to
  the input's dtype, then times ``w``), ``ε = rms_norm_eps``;
* ``ZambaMambaMixer``: ``G = n_mamba_heads`` SSM heads of ``E/G`` channels, each with its own
  ``W_x`` (``x_proj_weight`` ``(G, R + 2N, E/G)``), ``W_Δ`` (``dt_proj_weight``
  ``(G, E/G, R)``) and ``b_Δ``, so ``B_t``, ``C_t`` are per head (``G·N`` numbers each in the
  drive); its ``W_in`` rows alternate per channel (row ``2e`` is channel ``e``'s input, row
  ``2e + 1`` its gate ``z``). ``A_log`` ``(G, E/G, N)`` and ``D`` ``(G, E/G)`` are the plain
  layout per head, flattened channel-major.

Each adapter here only reads its module's layout (:meth:`module_params`); the drive, step,
products and readout are :class:`~gradscope.sequences.mamba.MambaAdapter`'s, driven by the
configuration numbers ``bcdt_norm_eps``, ``ssm_heads`` and ``in_proj_interleaved``. The state
Jacobian stays ``diag(exp(Δ_t A))``; products cost ``O(E·N·k)``.

A module computing something else (FalconMamba's quantised ``dt_proj`` path of a model with
``_is_quantized``, an activation other than SiLU) is refused with
:class:`~gradscope.errors.UnsupportedModuleError`.
"""

from __future__ import annotations

import torch
from torch import nn

from gradscope.cells.base import Params
from gradscope.errors import UnsupportedModuleError
from gradscope.sequences._hf_mixers import check_silu
from gradscope.sequences.mamba import ADAPTER, MambaAdapter

_MODELS = "transformers.models"


def _refuse_quantized(module: nn.Module, kind: str) -> None:
    if hasattr(getattr(module, "config", None), "_is_quantized"):
        raise UnsupportedModuleError(
            f"gradscope's {kind} adapter replays full-precision weights; this "
            f"{type(module).__name__} belongs to a quantised model (its dt_proj runs through a "
            "quantised nn.Linear). Record the unquantised model."
        )


class FalconMambaAdapter(MambaAdapter):
    """``FalconMambaMixer``: Mamba with weightless float32 RMS norms on ``δ``, ``B``, ``C``."""

    def module_params(self, module: nn.Module) -> Params:
        """Mamba's weights and ``bcdt_norm_eps`` (the mixer's ``rms_eps``)."""
        _refuse_quantized(module, self.kind)
        params = super().module_params(module)
        params["bcdt_norm_eps"] = torch.tensor(float(module.rms_eps), dtype=torch.float64)
        return params


class JambaMambaAdapter(MambaAdapter):
    """``JambaMambaMixer``: Mamba with weighted RMS norms on ``δ``, ``B``, ``C``."""

    step_range = None  # JambaConfig has no time_step_min/max

    def module_params(self, module: nn.Module) -> Params:
        """Mamba's weights, the three norms' weights and their ``eps``."""
        _refuse_quantized(module, self.kind)
        params = super().module_params(module)
        eps = {float(getattr(module, f"{n}_layernorm").variance_epsilon) for n in ("dt", "b", "c")}
        if len(eps) != 1:
            raise UnsupportedModuleError(
                f"gradscope's {self.kind} adapter replays one epsilon for the dt, B and C norms; "
                f"this {type(module).__name__} has {sorted(eps)}"
            )
        for n in ("dt", "b", "c"):
            params[f"{n}_layernorm.weight"] = getattr(module, f"{n}_layernorm").weight.detach()
        params["bcdt_norm_eps"] = torch.tensor(eps.pop(), dtype=torch.float64)
        return params


class ZambaMambaAdapter(MambaAdapter):
    """``ZambaMambaMixer``: ``G`` SSM heads with their own ``W_x`` and ``W_Δ``; ``W_in`` paired."""

    def module_params(self, module: nn.Module) -> Params:
        """The per-head weights as the module holds them, ``A``, ``D``, ``b_Δ`` flattened."""
        check_silu(module, self.kind)
        G = int(module.n_mamba_heads)
        params: Params = {
            "in_proj.weight": module.in_proj.weight,
            "conv1d.weight": module.conv1d.weight,
            "x_proj.weight": module.x_proj_weight,
            "dt_proj.weight": module.dt_proj_weight,
            "dt_proj.bias": module.dt_proj_bias.float().reshape(-1),
            "A": -torch.exp(module.A_log.float()).flatten(0, 1),
            "D": module.D.float().reshape(-1),
            "out_proj.weight": module.out_proj.weight,
        }
        params = self._with_biases(module, params)
        params["ssm_heads"] = torch.tensor(G)
        params["in_proj_interleaved"] = torch.tensor(1)
        return params


FALCON_MAMBA = FalconMambaAdapter()
JAMBA = JambaMambaAdapter()
ZAMBA = ZambaMambaAdapter()

#: The classes this module serves, by qualified name (``transformers`` is not imported here).
SERVES = {
    f"{_MODELS}.falcon_mamba.modeling_falcon_mamba.FalconMambaMixer": FALCON_MAMBA,
    f"{_MODELS}.jamba.modeling_jamba.JambaMambaMixer": JAMBA,
    f"{_MODELS}.zamba.modeling_zamba.ZambaMambaMixer": ZAMBA,
}

__all__ = [
    "ADAPTER",
    "FALCON_MAMBA",
    "JAMBA",
    "SERVES",
    "ZAMBA",
    "FalconMambaAdapter",
    "JambaMambaAdapter",
    "ZambaMambaAdapter",
]
