r"""Exact loss gradients of a fused recurrent stack by closed-form VJP sweeps (BPTT).

Given what the real backward pass delivered to a fused module (``nn.RNN`` / ``nn.LSTM`` /
``nn.GRU``: the cotangents of its output sequence and of its final states) and the states
of its step-by-step replay, :func:`stack_state_grads` returns :math:`\partial L/\partial s_t`
for every layer, direction and step, with the cell adapters' ``vjp`` and no autograd graph:

.. math:: G_T = \bar h_n \oplus \bar c_n + \bar o_{T}, \qquad
          G_{k} = \bar o_{k} + J_{k+1}^\top G_{k+1}\ \ (\text{valid step}), \qquad
          G_{k} = G_{k+1}\ \ (\text{padding: } s_{k+1} = s_k),

where :math:`\bar o_k` is the output cotangent of step ``k`` on the state's ``h`` part (the
output of a layer is the ``h`` of each step). The layer below receives
:math:`\bar x_k = K_{k+1}^\top G_{k+1}` on its outputs (times the inter-layer dropout mask),
computed for all steps at once after the sweep, as one product over ``T · B`` pairs. A
reverse direction reads its input at position ``L_b - 1 - k``; its cotangents are
scattered back to those positions. Cost: ``T`` vjp's with one column per sequence plus one
input product per layer and direction, ``O(T · B · w)`` for ``w`` weights, the same order as
the model's own backward pass, and memory ``O(T · B · D)`` for the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from gradscope.cells.base import CellAdapter, Params


def _vjp(adapter: CellAdapter, params: Params, x: Tensor, s: Tensor, g: Tensor, wrt: str):
    lin = adapter.linearize(params, x, s)
    col = g.unsqueeze(-1)
    out = lin.vjp_state(col) if wrt == "state" else lin.vjp_input(col)
    return out.squeeze(-1)


@torch.no_grad()
def stack_state_grads(
    adapter: CellAdapter,
    params: dict[tuple[int, int], Params],
    states: Sequence[Sequence[Tensor]],
    inputs: Sequence[Sequence[Tensor]],
    *,
    out_cot: Tensor | None,
    final_cot: Tensor | None,
    valid: Tensor | None,
    positions: Callable[[bool], Tensor],
    masks: Sequence[Tensor] | None = None,
) -> list[list[Tensor]]:
    """``∂L/∂s_t`` ``(T+1, B, D)`` for every layer and direction of a fused stack.

    Args:
        adapter: The cell adapter of the stack.
        params: Weights per ``(layer, direction)``.
        states: ``[layer][dir]`` -> ``(T+1, B, D)`` replayed states, processing order
            (padded steps repeat the last valid state).
        inputs: ``[layer][dir]`` -> ``(T, B, I)`` the inputs each direction read.
        out_cot: ``(T, B, dirs·P)`` cotangent of the top layer's output, position order
            (zeros at padding), or None.
        final_cot: ``(layers·dirs, B, D)`` cotangent of the final states (``h_n`` and, for
            an LSTM, ``c_n`` concatenated like the state), or None.
        valid: ``(T, B)`` bool, True at real steps (None: all).
        positions: ``reverse -> (T, B)`` input position read at processing step ``k``.
        masks: Inter-layer dropout masks, ``masks[l]`` multiplies layer ``l``'s output.

    Returns:
        ``[layer][dir]`` -> ``(T+1, B, D)`` exact loss gradients (NaN at padded steps).
    """
    layers, dirs = len(states), len(states[0])
    T, B = inputs[0][0].shape[:2]
    result: list[list[Tensor]] = [[None] * dirs for _ in range(layers)]  # type: ignore[list-item]
    cot = out_cot
    for layer in range(layers - 1, -1, -1):
        below = None
        for d in range(dirs):
            s = states[layer][d]
            x = inputs[layer][d]
            pm = params[(layer, d)]
            D = s.shape[-1]
            p = adapter.state_sizes(pm)[0]
            ocot = None
            if cot is not None:
                ocot = cot[..., d * p : (d + 1) * p]
                if d == 1:
                    pos = positions(True)
                    ocot = ocot.gather(0, pos.unsqueeze(-1).expand(-1, -1, p))
                if valid is not None:
                    ocot = torch.where(valid.unsqueeze(-1), ocot, torch.zeros_like(ocot))
            G = s.new_zeros((T + 1, B, D))
            g = s.new_zeros((B, D))
            if final_cot is not None:
                g = g + final_cot[layer * dirs + d].to(s.dtype)
            for k in range(T - 1, -1, -1):
                if ocot is not None:
                    g = g.clone()
                    g[:, :p] += ocot[k]
                G[k + 1] = g
                back = _vjp(adapter, pm, x[k], s[k], g, "state")
                g = back if valid is None else torch.where(valid[k].unsqueeze(-1), back, g)
            G[0] = g
            if layer > 0:
                xin = _vjp(
                    adapter,
                    pm,
                    x.reshape(T * B, -1),
                    s[:-1].reshape(T * B, -1),
                    G[1:].reshape(T * B, -1),
                    "input",
                ).reshape(T, B, -1)
                if valid is not None:
                    xin = torch.where(valid.unsqueeze(-1), xin, torch.zeros_like(xin))
                if d == 1:
                    pos = positions(True).unsqueeze(-1).expand(-1, -1, xin.shape[-1])
                    xin = torch.zeros_like(xin).scatter_add_(0, pos, xin)
                below = xin if below is None else below + xin
            if valid is not None:
                G[1:][~valid] = float("nan")
            result[layer][d] = G
        if layer > 0:
            cot = below if masks is None else below * masks[layer - 1]
    return result
