r"""Gate statistics: every gate of a recorded LSTM, GRU or vanilla RNN layer, from its weights.

The gates are recomputed in float64 from the layer's recorded inputs ``x_t``, previous
states ``h_{t−1}`` and weights (PyTorch's layouts and gate order):

* LSTM ``a = W_ih x_t + b_ih + W_hh h_{t−1} + b_hh = [a_i, a_f, a_g, a_o]``,
  ``i, f, o = σ(a_i), σ(a_f), σ(a_o)``;
* GRU ``[r_x, z_x, n_x] = W_ih x_t + b_ih``, ``[r_h, z_h, n_h] = W_hh h_{t−1} + b_hh``,
  ``r = σ(r_x + r_h)``, ``z = σ(z_x + z_h)`` (``h_t = (1 − z) n + z h_{t−1}``);
* vanilla ``a = W_ih x_t + b_ih + W_hh h_{t−1} + b_hh``, ``φ'(a)`` (``tanh' = 1 − tanh²``,
  ``relu' = [a > 0]``).

The carried gate (LSTM ``f``, GRU ``z``) also comes as its log, ``ln σ(a) = −softplus(−a)``,
exact where ``σ(a)`` itself would round to 0 or 1. Padded steps are NaN (their inputs are).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as nnf

from gradscope._select import quantiles as exact_quantiles
from gradscope.traces import LayerTrace

#: Quantiles of every per-timestep distribution (over units and sequences).
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: The gated cells and the name of their additive path.
GATED = {"lstm": "cell", "gru": "update"}
#: The vanilla cells (no additive path; their "gate" is ``φ'(a_t)``).
VANILLA = ("rnn_tanh", "rnn_relu")
#: Rows of the carried gate's pre-activation in the stacked weights: (chunks, which chunk).
_CARRIED = {"lstm": (4, 1), "gru": (3, 1)}


def layer_f64(layer: LayerTrace) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The layer's weights, inputs ``(T, B, I)`` and states ``(T+1, B, D)``: float64, on the CPU."""
    params = {k: v.detach().to("cpu", torch.float64) for k, v in layer.params.items()}
    x = layer.inputs.detach().to("cpu", torch.float64)
    s = layer.states.detach().to("cpu", torch.float64)
    return params, x, s


def layer_native(
    layer: LayerTrace,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The layer's weights, inputs and states where they are, in at least float32.

    For cheap read-outs (the Monitor's gate summaries): no copy to the CPU and no float64
    conversion of ``(T, B, ·)`` tensors; half precision is promoted to float32. A float64
    layer stays float64.
    """
    dtype = torch.promote_types(layer.states.dtype, torch.float32)
    params = {k: v.detach().to(dtype=dtype) for k, v in layer.params.items()}
    x = layer.inputs.detach().to(device=layer.states.device, dtype=dtype)
    return params, x, layer.states.detach().to(dtype=dtype)


def preacts(
    params: dict[str, torch.Tensor], x: torch.Tensor, h: torch.Tensor, rows: slice | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_ih x + b_ih, W_hh h + b_hh)`` over any leading shape, only ``rows`` if given.

    Cost ``O(R·(I + P))`` per step and sequence for ``R`` rows (all: ``4H``, ``3H``, ``H``).
    """
    sel = slice(None) if rows is None else rows
    gi = x @ params["weight_ih"][sel].T
    gh = h @ params["weight_hh"][sel].T
    if "bias_ih" in params:  # in place: these are (T, B, R) and the analysis holds few
        gi += params["bias_ih"][sel]
    if "bias_hh" in params:
        gh += params["bias_hh"][sel]
    return gi, gh


def carried_logits(
    kind: str, params: dict[str, torch.Tensor], x: torch.Tensor, h: torch.Tensor
) -> torch.Tensor:
    """Pre-activation of the carried gate: LSTM ``a_f``, GRU ``a_z`` (any leading shape).

    Only the gate's own rows of the weights are multiplied: ``O(H·(I + P))`` per step and
    sequence, a quarter (LSTM) or a third (GRU) of the layer's own forward.
    """
    chunks, which = _CARRIED[kind]
    hid = params["weight_ih"].shape[0] // chunks
    gi, gh = preacts(params, x, h, slice(which * hid, (which + 1) * hid))
    return gi + gh


def carried_gate(kind: str, params: dict[str, torch.Tensor], x: torch.Tensor, h: torch.Tensor):
    """The carried gate itself, ``σ(a_f)`` (LSTM) or ``σ(a_z)`` (GRU)."""
    return torch.sigmoid(carried_logits(kind, params, x, h))


def previous_h(layer: LayerTrace, s: torch.Tensor) -> torch.Tensor:
    """The recurrent input ``h_{t−1}`` ``(T, B, P)`` of every step, from states ``(T+1, B, D)``."""
    return s[:-1, :, : layer.state_sizes[0]]


def gate_values(layer: LayerTrace) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every gate ``(T, B, H)`` in float64 and the log of the carried gate ``(T, B, H)``.

    LSTM ``{"i", "f", "o"}`` and ``ln f``; GRU ``{"r", "z"}`` and ``ln z``; vanilla
    ``{"φ'"}`` and an empty tensor. Padded steps are NaN (their inputs are).
    """
    params, x, s = layer_f64(layer)
    gi, gh = preacts(params, x, previous_h(layer, s))
    if layer.kind == "lstm":
        gi += gh  # in place: one (T, B, 4H) float64 tensor less at the peak
        del gh
        a_i, a_f, _, a_o = gi.chunk(4, dim=-1)
        gates = {"i": torch.sigmoid(a_i), "f": torch.sigmoid(a_f), "o": torch.sigmoid(a_o)}
        return gates, nnf.logsigmoid(a_f)
    if layer.kind == "gru":
        a_r = gi.chunk(3, dim=-1)[0] + gh.chunk(3, dim=-1)[0]
        a_z = gi.chunk(3, dim=-1)[1] + gh.chunk(3, dim=-1)[1]
        return {"r": torch.sigmoid(a_r), "z": torch.sigmoid(a_z)}, nnf.logsigmoid(a_z)
    return {"φ'": dphi(layer.kind, gi + gh)}, x.new_zeros(0)


def dphi(kind: str, a: torch.Tensor) -> torch.Tensor:
    """``φ'(a)`` of a vanilla cell: ``1 − tanh²(a)`` or ``[a > 0]`` (NaN stays NaN)."""
    if kind == "rnn_tanh":
        t = torch.tanh(a)  # (1 - t)(1 + t): no cancellation where |t| -> 1
        return (1.0 - t) * (1.0 + t)
    return torch.where(torch.isnan(a), a, (a > 0).to(a.dtype))


def step_quantiles(v: np.ndarray, quantiles: tuple[float, ...] = QUANTILES) -> np.ndarray:
    """``(T, ...)`` -> ``(T, len(quantiles))`` quantiles over everything but the first axis.

    NaN-aware (padded steps); a step with no finite value gets NaN.
    """
    flat = v.reshape(v.shape[0], -1)
    if not np.isnan(flat).any():
        if flat.shape[0] == 1:  # one large row (a Monitor's summary): bucket selection
            return exact_quantiles(flat[0], quantiles)[None, :]
        return np.quantile(flat, quantiles, axis=1).T
    out = np.full((flat.shape[0], len(quantiles)), np.nan)
    ok = ~np.isnan(flat).all(axis=1)
    if ok.any():
        out[ok] = np.nanquantile(flat[ok], quantiles, axis=1).T
    return out


__all__ = [
    "GATED",
    "QUANTILES",
    "VANILLA",
    "carried_gate",
    "carried_logits",
    "dphi",
    "gate_values",
    "layer_f64",
    "layer_native",
    "preacts",
    "previous_h",
    "step_quantiles",
]
