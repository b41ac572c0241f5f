r"""Gate statistics: the gates a layer's family declares, read out from its weights.

A gated family (:attr:`~gradscope.cells.base.CellAdapter.gates`, a
:class:`~gradscope.cells.gates.Gates`) says which gates it shows and which one carries its
additive path, and computes them (:meth:`~gradscope.cells.gated.GatedCell.gate_values`):
here they are read out in float64 from the layer's recorded inputs ``x_t``, previous
states and weights (PyTorch's layouts for the built-in LSTM, GRU and vanilla cells). The
carried gate (LSTM ``f``, GRU ``z``) also comes as its log, ``ln σ(a) = −softplus(−a)``,
exact where ``σ(a)`` itself would round to 0 or 1. Padded steps are NaN (their inputs are).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gradscope._select import quantiles as exact_quantiles
from gradscope.cells import adapter_for_kind
from gradscope.cells.gates import Gates, preacts
from gradscope.traces import LayerTrace

#: Quantiles of every per-timestep distribution (over units and sequences).
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def declared(layer: LayerTrace) -> tuple[Any, Gates] | None:
    """``(adapter, its gates)`` when the layer's family declares gates, else None.

    A custom cell without its module (a loaded ``custom:`` trace) or with stored Jacobians
    only has no adapter to ask: None.
    """
    adapter = layer.computing_adapter()
    return None if adapter is None or adapter.gates is None else (adapter, adapter.gates)


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


def carried_logits(kind: str, params: dict[str, torch.Tensor], x: torch.Tensor, h: torch.Tensor):
    """The carried gate's pre-activations (any leading shape) of the family ``kind``.

    :meth:`~gradscope.cells.gated.GatedCell.carried_logits` of the adapter registered
    under ``kind``: only the gate's own rows of the weights are multiplied.
    """
    return adapter_for_kind(kind).carried_logits(params, x, h)


def previous_h(layer: LayerTrace, s: torch.Tensor) -> torch.Tensor:
    """The recurrent input ``h_{t−1}`` ``(T, B, P)`` of every step, from states ``(T+1, B, D)``."""
    return s[:-1, :, : layer.state_sizes[0]]


def gate_values(layer: LayerTrace) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every gate ``(T, B, H)`` in float64 and the log of the carried gate ``(T, B, H)``.

    The gates the layer's family declares (:attr:`~gradscope.cells.gates.Gates.shown`:
    LSTM ``{"i", "f", "o"}`` and ``ln f``; GRU ``{"r", "z"}`` and ``ln z``; vanilla
    ``{"φ'"}``), from its weights; the log is empty where there is no carried gate. Padded
    steps are NaN (their inputs are).
    """
    adapter, _ = declared(layer)
    params, x, s = layer_f64(layer)
    gates, log_g = adapter.gate_values(params, x, s[:-1])
    return gates, x.new_zeros(0) if log_g is None else log_g


def step_quantiles(v: np.ndarray, quantiles: tuple[float, ...] = QUANTILES) -> np.ndarray:
    """``(T, ...)`` -> ``(T, len(quantiles))`` quantiles over everything but the first axis.

    NaN-aware (padded steps); a step with no finite value (or no value: an empty batch)
    gets NaN.
    """
    flat = v.reshape(v.shape[0], -1)
    if flat.shape[1] and not np.isnan(flat).any():
        if flat.shape[0] == 1:  # one large row (a Monitor's summary): bucket selection
            return exact_quantiles(flat[0], quantiles)[None, :]
        return np.quantile(flat, quantiles, axis=1).T
    out = np.full((flat.shape[0], len(quantiles)), np.nan)
    ok = ~np.isnan(flat).all(axis=1)
    if ok.any():  # a diverged layer may have no finite step at all
        out[ok] = np.nanquantile(flat[ok], quantiles, axis=1).T
    return out


__all__ = [
    "QUANTILES",
    "carried_logits",
    "declared",
    "gate_values",
    "layer_f64",
    "layer_native",
    "preacts",
    "previous_h",
    "step_quantiles",
]
