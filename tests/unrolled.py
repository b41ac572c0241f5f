"""Reference loss-gradient norms: autograd in float64 through hand-unrolled cell loops.

Independent of gradscope: a fused module's weights are copied into ``nn.LSTMCell`` /
``nn.GRUCell`` / ``nn.RNNCell`` modules, run in an explicit Python loop with
``retain_grad()`` on every state, and the batch-mean norm of ``∂L/∂s_t`` is read from
``.grad``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

RTOL = 1e-8  # float64, T <= 50: replay and reference differ by a few ulps per step


def _cell_copy(rnn: nn.RNNBase, layer: int) -> nn.Module:
    """A cell holding one layer (forward direction) of a fused module's weights."""
    w_ih = getattr(rnn, f"weight_ih_l{layer}")
    if isinstance(rnn, nn.LSTM):
        cell = nn.LSTMCell(w_ih.shape[1], rnn.hidden_size)
    elif isinstance(rnn, nn.GRU):
        cell = nn.GRUCell(w_ih.shape[1], rnn.hidden_size)
    else:
        cell = nn.RNNCell(w_ih.shape[1], rnn.hidden_size, nonlinearity=rnn.nonlinearity)
    cell = cell.to(w_ih.dtype)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(rnn, f"{name}_l{layer}"))
    return cell


def state_grad_norms(seq: list[tuple[torch.Tensor, ...]]) -> np.ndarray:
    """Batch mean over sequences of ‖(∂L/∂h_t, ∂L/∂c_t)‖, t = 0 … T (None grads: zero)."""
    rows = []
    for parts in seq:
        g = torch.cat([p.grad if p.grad is not None else torch.zeros_like(p) for p in parts], -1)
        rows.append(float(torch.linalg.vector_norm(g, dim=-1).mean()))
    return np.array(rows)


def unrolled_norms(rnn: nn.RNNBase, x: torch.Tensor, hx, loss_of) -> dict[str, np.ndarray]:
    """Reference ``{'l0': norms, ...}`` of a unidirectional fused module by explicit loops.

    ``loss_of(output, final)`` gives the loss from the top layer's output ``(T, B, H)`` and
    the final state (``h_n`` or ``(h_n, c_n)``).
    """
    lstm = isinstance(rnn, nn.LSTM)
    T, B = x.shape[:2]
    H = rnn.hidden_size
    inp = [x[t].detach() for t in range(T)]
    seqs, finals_h, finals_c = [], [], []
    for layer in range(rnn.num_layers):
        cell = _cell_copy(rnn, layer)
        if hx is None:
            h, c = x.new_zeros(B, H), x.new_zeros(B, H)
        else:
            h = (hx[0] if lstm else hx)[layer].detach().clone()
            c = hx[1][layer].detach().clone() if lstm else None
        h.requires_grad_(True)
        if lstm:
            c.requires_grad_(True)
        seq = [(h, c) if lstm else (h,)]
        outs = []
        for t in range(T):
            # identity nodes after the cell: ∂L/∂c_t holds h_t fixed (c_t -> h_t is in J_t)
            if lstm:
                h, c = (p + 0.0 for p in cell(inp[t], (h, c)))
                c.retain_grad()
            else:
                h = cell(inp[t], h) + 0.0
            h.retain_grad()
            seq.append((h, c) if lstm else (h,))
            outs.append(h)
        seqs.append(seq)
        finals_h.append(h)
        finals_c.append(c)
        inp = outs
    final = (torch.stack(finals_h), torch.stack(finals_c)) if lstm else torch.stack(finals_h)
    loss_of(torch.stack(inp), final).backward()
    return {f"l{k}": state_grad_norms(seq) for k, seq in enumerate(seqs)}


def assert_norms_close(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-13 * max(1.0, np.abs(want).max()))
