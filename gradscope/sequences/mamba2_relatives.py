r"""Mamba-2 relatives in ``transformers``: Bamba, Nemotron-H, Zamba2, Granite-MoE-Hybrid, FalconH1.

``BambaMixer``, ``NemotronHMamba2Mixer``, ``Zamba2MambaMixer`` and
``GraniteMoeHybridMambaLayer`` run exactly ``Mamba2Mixer``'s forward (the same projection
split, causal convolution, ``mamba2_scan_forward`` / ``mamba2_chunk_scan`` and gated
RMSNorm; only their constructors read other configuration names, e.g. Zamba2's
``time_step_limit = (time_step_min, inf)`` and norm ``eps = 1e-5``), so
:class:`~gradscope.sequences.mamba2.Mamba2Adapter` serves them unchanged: it reads the numbers
from the module, not from a config.

``FalconH1Mixer`` adds µP multipliers and makes the norm optional:

    [z; xBC; dt] = m_vec ⊙ (W_in (m_in h_t) + b_in)        m_in = ssm_in_multiplier,
                                                           m_vec = mup_vector (per output)
    out_t = W_out (w ⊙ RMSNorm_groups(y_t ⊙ silu(z_t)))    mamba_norm_before_gate = False
    out_t = W_out (w ⊙ RMSNorm_groups(y_t) ⊙ silu(z_t))    mamba_norm_before_gate = True
    out_t = W_out (y_t ⊙ silu(z_t))                         mamba_rms_norm = False

(the decoder layer's ``ssm_out_multiplier`` acts outside the mixer). The recurrence, the
drive's layout, the state ``S`` ``(H, P, N)`` and the Jacobian ``diag(a_{t,h} I)`` are
Mamba-2's; :class:`FalconH1Adapter` only reads these numbers into ``ssm_in_multiplier``,
``mup_vector``, ``rms_norm`` and ``norm_before_gate``, which the Mamba-2 drive and readout
follow. Like Mamba-2, the module scans and normalises in float32 inside a float64 model
(replayed to float32 rounding).
"""

from __future__ import annotations

import torch
from torch import nn

from gradscope.cells.base import Params
from gradscope.sequences._hf_mixers import check_silu
from gradscope.sequences.mamba2 import ADAPTER, Mamba2Adapter

_MODELS = "transformers.models"


class OnesInitAdapter(Mamba2Adapter):
    """Bamba's and GraniteMoeHybrid's mixers: Mamba-2 exactly, ``dt_bias`` initialised at 1.

    Only the advice differs (their configs have no ``time_step_min``).
    """

    step_min = None


class FalconH1Adapter(OnesInitAdapter):
    """``FalconH1Mixer``: Mamba-2 with µP multipliers and an optional norm (see the module)."""

    def module_params(self, module: nn.Module) -> Params:
        """Mamba-2's weights and numbers, the multipliers, and how the output is normalised."""
        check_silu(module, self.kind)
        lo, hi = (float(v) for v in module.time_step_limit)
        rms = bool(module.mamba_rms_norm)
        params: Params = {
            "in_proj.weight": module.in_proj.weight,
            "conv1d.weight": module.conv1d.weight,
            "dt_bias": module.dt_bias,
            "A": -torch.exp(module.A_log.float()),
            "D": module.D,
            "out_proj.weight": module.out_proj.weight,
            "mup_vector": module.mup_vector.reshape(-1),
        }
        if rms:
            params["norm.weight"] = module.norm.weight
        for name, p in (
            ("in_proj.bias", module.in_proj.bias),
            ("conv1d.bias", module.conv1d.bias),
            ("out_proj.bias", module.out_proj.bias),
        ):
            if p is not None:
                params[name] = p
        params = {k: v.detach() for k, v in params.items()}
        E = int(module.intermediate_size)
        groups = int(module.norm.n_groups) if rms else 1
        eps = float(module.norm.variance_epsilon) if rms else float(module.layer_norm_epsilon)
        params.update(
            num_heads=torch.tensor(int(module.num_heads)),
            head_dim=torch.tensor(int(module.head_dim)),
            n_groups=torch.tensor(int(module.n_groups)),
            state_size=torch.tensor(int(module.ssm_state_size)),
            norm_group_size=torch.tensor(E // groups),
            norm_eps=torch.tensor(eps, dtype=torch.float64),
            dt_min=torch.tensor(lo, dtype=torch.float64),
            dt_max=torch.tensor(hi, dtype=torch.float64),
            ssm_in_multiplier=torch.tensor(float(module.ssm_in_multiplier), dtype=torch.float64),
            rms_norm=torch.tensor(int(rms)),
            norm_before_gate=torch.tensor(int(bool(rms and module.norm.norm_before_gate))),
        )
        return params


FALCON_H1 = FalconH1Adapter()
ONES_INIT = OnesInitAdapter()

#: The classes this module serves, by qualified name (``transformers`` is not imported here).
SERVES = {
    f"{_MODELS}.bamba.modeling_bamba.BambaMixer": ONES_INIT,
    f"{_MODELS}.nemotron_h.modeling_nemotron_h.NemotronHMamba2Mixer": ADAPTER,
    f"{_MODELS}.zamba2.modeling_zamba2.Zamba2MambaMixer": ADAPTER,
    f"{_MODELS}.granitemoehybrid.modeling_granitemoehybrid.GraniteMoeHybridMambaLayer": ONES_INIT,
    f"{_MODELS}.falcon_h1.modeling_falcon_h1.FalconH1Mixer": FALCON_H1,
}

__all__ = ["ADAPTER", "FALCON_H1", "ONES_INIT", "SERVES", "FalconH1Adapter", "OnesInitAdapter"]
