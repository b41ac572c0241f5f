"""Float64 stand-ins for the float32 parts of transformers' mixers, written from the equations.

The torch paths of the Mamba-2, gated DeltaNet and Kimi-delta mixers cast to float32 inside a
float64 model (their scans, their gated norms); MiniMax's lightning attention keeps float32
decay tables. With these swapped for float64 versions (through the module globals and
classes the mixers call), the adapters' replay must agree with the module to float64
rounding: what remains of the float64 replay error is then exactly the modules' float32.
Each stand-in has the signature of what it replaces and casts nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from test_seq_deltanet import gated_delta_rule_float64
from test_seq_mamba2 import ssd_scan_float64


def kda_float64(
    query,
    key,
    value,
    g,
    beta,
    chunk_size=64,
    initial_state=None,
    output_final_state=False,
    use_qk_l2norm_in_kernel=False,
    **kwargs,
):
    """Kimi delta attention stepped one position at a time, in the inputs' dtype.

    Per head, ``S`` ``(d_k, d_v)``: ``S' = diag(exp g_t) S``, ``S_t = S' + k (β (v - S'ᵀ k))ᵀ``,
    ``o_t = S_tᵀ q / √d_k``; ``q``, ``k`` l2-normalised as ``x / sqrt(|x|² + 1e-6)`` when asked.
    The signature is ``chunk_kimi_delta_attention``'s. The forget gates hand ``g`` over in
    float32 (they compute it so); it is read in the values' dtype, as the adapter reads it.
    """
    g = g.to(value.dtype)
    b, length, heads, dk = key.shape
    dv = value.shape[-1]
    if use_qk_l2norm_in_kernel:
        query, key = (m / torch.sqrt((m * m).sum(-1, keepdim=True) + 1e-6) for m in (query, key))
    query = query * dk**-0.5
    S = initial_state if initial_state is not None else value.new_zeros(b, heads, dk, dv)
    outs = []
    for t in range(length):
        q, k, v = query[:, t], key[:, t], value[:, t]
        S = torch.exp(g[:, t])[..., None] * S
        delta = beta[:, t, :, None] * (v - (S * k[..., None]).sum(-2))
        S = S + k[..., None] * delta[..., None, :]
        outs.append((S * q[..., None]).sum(-2))
    return torch.stack(outs, dim=1), (S if output_final_state else None)


def _gated_norm64(self, hidden_states, gate=None):
    """``w ⊙ RMSNorm(h) ⊙ act(gate)`` (gated DeltaNet, KDA), in float64."""
    h = hidden_states * torch.rsqrt(
        hidden_states.pow(2).mean(-1, keepdim=True) + self.variance_epsilon
    )
    act = torch.sigmoid if self.activation == "sigmoid" else F.silu
    return self.weight * h * act(gate)


def _group_norm64(self, hidden_states, gate=None):
    """Mamba-2's ``w ⊙ RMSNorm_groups(h ⊙ silu(gate))`` in float64."""
    h = hidden_states * F.silu(gate)
    g = h.unflatten(-1, (-1, self.group_size))
    g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
    return self.weight * g.flatten(-2)


def _falcon_norm64(self, hidden_states, gate=None):
    """FalconH1's norm: groups of ``dim / n_groups``, the gate before or after, in float64."""
    h = hidden_states if self.norm_before_gate else hidden_states * F.silu(gate)
    g = h.unflatten(-1, (self.n_groups, -1))
    g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
    h = self.weight.view(self.n_groups, -1) * g
    h = h.flatten(-2)
    return h * F.silu(gate) if self.norm_before_gate else h


def _rms_norm64(self, hidden_states):
    """``w ⊙ RMSNorm(h)`` in float64 (MiniMax's output norm)."""
    v = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(v + self.variance_epsilon))


def _minimax_tables64(mixer) -> None:
    """MiniMax's decay tables recomputed in float64 from its (float64) slopes."""
    q, k, d = mixer.decay_factors(mixer.slope_rate)
    mixer.query_decay, mixer.key_decay, mixer.diagonal_decay = q, k, d


def float64_inside(monkeypatch: pytest.MonkeyPatch, mixer: torch.nn.Module, kind: str) -> Callable:
    """Swap the float32 parts ``mixer`` calls for float64 ones; returns a spy's call count."""
    modeling = importlib.import_module(type(mixer).__module__)
    calls = []

    def spy(rule):
        def run(*args, **kwargs):
            calls.append(1)
            return rule(*args, **kwargs)

        return run

    if kind == "mamba2":
        monkeypatch.setattr(modeling, "mamba2_chunk_scan", spy(ssd_scan_float64))
        norm = mixer.norm
        if hasattr(norm, "norm_before_gate"):
            monkeypatch.setattr(type(norm), "forward", _falcon_norm64)
        elif hasattr(norm, "group_size"):
            monkeypatch.setattr(type(norm), "forward", _group_norm64)
    elif kind == "gated_deltanet":
        monkeypatch.setattr(modeling, "torch_chunk_gated_delta_rule", spy(gated_delta_rule_float64))
        norm = getattr(mixer, "norm", None) or mixer.o_norm
        monkeypatch.setattr(type(norm), "forward", _gated_norm64)
    elif kind == "kimi_delta":
        monkeypatch.setattr(modeling, "chunk_kimi_delta_attention", spy(kda_float64))
        monkeypatch.setattr(type(mixer.o_norm), "forward", _gated_norm64)
    elif kind == "lightning":
        _minimax_tables64(mixer)
        monkeypatch.setattr(type(mixer.norm), "forward", _rms_norm64)
        calls.append(1)
    return calls


__all__ = ["float64_inside", "kda_float64"]
