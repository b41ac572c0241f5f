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
from typing import Any

import torch
from torch import Tensor

from gradscope.cells.base import CellAdapter, Linearization, Params

#: Rows (steps × sequences) linearised in one call: the gates of a block of steps come from
#: one GEMM instead of one small GEMM per step.
BLOCK_ROWS = 4096


class _Linearizations:
    """The adapter's linearisations of one layer and direction, a block of steps at a time."""

    def __init__(
        self,
        adapter: CellAdapter,
        params: Params,
        x: Tensor,
        s: Tensor,
        kept: Sequence[Any] | None = None,
    ) -> None:
        self.adapter, self.params, self.x, self.s = adapter, params, x, s
        self.kept = kept if kept is not None and all(f is not None for f in kept) else None
        T, B = x.shape[:2]
        self.B = B
        self.n = max(1, min(T, BLOCK_ROWS // max(B, 1)))
        self.block: tuple[int, int, Linearization] | None = None

    def at(self, k: int) -> Linearization:
        """The linearisation at step ``k`` (kept by the replay, or its block computed)."""
        if self.kept is not None:
            return Linearization(self.adapter, self.params, self.x[k], self.s[k], self.kept[k])
        if self.block is None or not self.block[0] <= k < self.block[1]:
            lo = max(0, k - self.n + 1)  # the sweep walks backwards
            x = self.x[lo : k + 1].flatten(0, 1)
            s = self.s[lo : k + 1].flatten(0, 1)
            self.block = (lo, k + 1, self.adapter.linearize(self.params, x, s))
        lo, _, lin = self.block
        return lin.rows(slice((k - lo) * self.B, (k - lo + 1) * self.B))


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
    factors: Sequence[Sequence[Sequence[Any]]] | None = None,
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
        factors: ``[layer][dir]`` -> the adapter's linear factors of every step, kept by
            the replay (:meth:`~gradscope.cells.base.CellAdapter.step_factors`); None:
            computed here, a block of steps per call.

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
            kept = None if factors is None else factors[layer][d]
            lins = _Linearizations(adapter, pm, x, s[:-1], kept)
            g = s.new_zeros((B, D))
            if final_cot is not None:
                g = g + final_cot[layer * dirs + d].to(s.dtype)
            G = None if lins.kept is None else adapter.state_sweep(pm, kept, g, ocot, valid)
            if G is None:
                G = _generic_sweep(lins, g, ocot, valid, p)
            if layer > 0:
                xin = _input_products(lins, G, T)
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


def _generic_sweep(
    lins: _Linearizations, g: Tensor, ocot: Tensor | None, valid: Tensor | None, p: int
) -> Tensor:
    """``G_k`` ``(T+1, B, D)`` with one linearisation and one ``vjp`` per step."""
    T = lins.x.shape[0]
    G = g.new_empty((T + 1, *g.shape))
    for k in range(T - 1, -1, -1):
        if ocot is not None:
            g = g.clone()
            g[:, :p] += ocot[k]
        G[k + 1] = g
        back = lins.at(k).vjp_state(g.unsqueeze(-1)).squeeze(-1)
        g = back if valid is None else torch.where(valid[k].unsqueeze(-1), back, g)
    G[0] = g
    return G


def _cat_factors(parts: Sequence[Any]) -> Any:
    """Concatenate per-step factors (tensors, or (named) tuples of them) along the rows."""
    first = parts[0]
    if first is None:  # an absent field of the factors (e.g. no couplings)
        return None
    if isinstance(first, Tensor):
        return torch.cat(list(parts))
    fields = [_cat_factors([p[i] for p in parts]) for i in range(len(first))]
    return type(first)(*fields) if hasattr(first, "_fields") else tuple(fields)


def _input_products(lins: _Linearizations, G: Tensor, T: int) -> Tensor:
    """``K_{k+1}ᵀ G_{k+1}`` for every step, one product per block of steps: ``(T, B, I)``."""
    if lins.kept is not None:  # all steps at once from the replay's factors
        lin = Linearization(
            lins.adapter,
            lins.params,
            lins.x.flatten(0, 1),
            lins.s.flatten(0, 1),
            _cat_factors(lins.kept),
        )
        g = G[1:].flatten(0, 1).unsqueeze(-1)
        return lin.vjp_input(g).squeeze(-1).unflatten(0, (T, -1))
    out = []
    hi = T
    while hi > 0:
        lins.at(hi - 1)
        b0, _, block = lins.block  # type: ignore[misc]
        lo = b0
        rows = slice((lo - b0) * lins.B, (hi - b0) * lins.B)
        g = G[lo + 1 : hi + 1].flatten(0, 1).unsqueeze(-1)
        out.append(block.rows(rows).vjp_input(g).squeeze(-1).unflatten(0, (hi - lo, -1)))
        hi = lo
    return torch.cat(out[::-1])
