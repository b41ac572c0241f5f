r"""Where the loss's credit enters a layer: at the last state only, or at every position.

The loss gradient of a recurrent layer obeys back-propagation through time,

.. math:: g_t = J_{t+1}^\top g_{t+1} + d_t, \qquad g_t = \partial L/\partial s_t,\quad
          J_{t+1} = \partial s_{t+1}/\partial s_t,

where ``d_t`` is what reaches ``s_t`` directly: the loss reading position ``t`` (a language
model's next-token loss), or a layer above reading this layer's output there. With a loss
on the last step alone ``d_t = 0`` for ``t < T`` and ``‖g_t‖`` is the state product
applied to one direction, so its decay says how far credit travels. With a loss at every
position each ``g_t`` holds its own position's loss, and ``‖g_t‖`` stays level however
fast the state product vanishes: its "regime" then says how the injected losses are
spread over positions, not how far credit travels.

:func:`loss_injection` recovers ``d_t = g_t − J_{t+1}ᵀ g_{t+1}`` from the recorded loss
gradients with one vector-Jacobian product per step (``layer.vjp``, closed form, never
``D × D``; cost ``O(T · n · w)`` for ``n ≤`` :data:`SEQS` sequences and ``w`` the recurrent
weights) and counts the positions ``1 ≤ t < T_b`` where it is not zero to rounding:
``‖d_t‖ > tol · (‖J_{t+1}ᵀ g_{t+1}‖ + ‖d_t‖)``, ``tol = max(1e-3, 10 ε)`` of the
gradients' dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gradscope.traces import LayerTrace

#: Sequences the check uses (the first ones).
SEQS = 4
#: Steps per vector-Jacobian call.
CHUNK = 256
#: A share of injected positions at or above which the loss "reads every position".
EVERY = 0.5


@dataclass(frozen=True)
class LossInjection:
    """Where the loss gradient of one layer enters it (see the module docstring).

    Attributes:
        positions: Positions checked: ``(t, b)`` with ``1 ≤ t < T_b`` on the first
            sequences, finite gradients only.
        injected: Of them, those where credit enters directly (``d_t ≠ 0``).
        local_share: Median over the injected positions of ``‖d_t‖ / (‖d_t‖ +
            ‖J_{t+1}ᵀ g_{t+1}‖)``: how much of what reaches ``s_t`` enters there (NaN if none).
    """

    positions: int
    injected: int
    local_share: float

    @property
    def fraction(self) -> float:
        """Share of the checked positions that receive credit directly (NaN: none checked)."""
        return self.injected / self.positions if self.positions else math.nan

    @property
    def where(self) -> str:
        """``"every"`` (at least :data:`EVERY` of them), ``"last"`` (none) or ``"some"``."""
        if not self.positions:
            return "unknown"
        if self.injected == 0:
            return "last"
        return "every" if self.fraction >= EVERY else "some"

    def sentence(self) -> str:
        """Where credit enters, in words, with its numbers."""
        pct = f"{100 * self.fraction:.0f}%"
        if self.where == "every":
            return (
                f"The loss reads every position: credit enters the layer directly at {pct} of "
                f"its {self.positions} positions before the last (a median "
                f"{100 * self.local_share:.0f}% of ∂L/∂s_t enters where it is measured), so "
                "‖∂L/∂s_t‖ shows where the loss is injected, not how far credit travels."
            )
        if self.where == "some":
            return (
                f"Credit enters the layer directly at {pct} of its positions before the last "
                f"(a median {100 * self.local_share:.0f}% of ∂L/∂s_t where it does), so "
                "‖∂L/∂s_t‖ mixes locally injected loss with credit carried back."
            )
        return (
            "The loss reaches the layer only through its last state: ∂L/∂s_t = "
            "(∂s_T/∂s_t)ᵀ ∂L/∂s_T is the state product applied to one direction."
        )


def direct_cotangents(layer: LayerTrace, seqs: int = SEQS) -> tuple[torch.Tensor, torch.Tensor]:
    """``d_t`` and ``J_{t+1}ᵀ g_{t+1}`` for ``t = 1 … T−1`` on the first ``seqs`` sequences.

    Returns:
        ``(direct, carried)``, each ``(T−1, n, D)`` in the trace's dtype (NaN at padding):
        what reaches ``s_t`` directly and what back-propagation carries to it from
        ``s_{t+1}``; their sum is the recorded ``∂L/∂s_t``.

    Raises:
        MissingDataError: the layer holds no loss gradients.
    """
    if layer.grads is None:
        layer.grad_norms()  # raises the MissingDataError that says how to record them
    n = min(int(seqs), layer.B)
    batch = np.arange(n)
    with torch.no_grad():
        g = layer.grads[:, :n].to(layer.states.dtype)  # (T+1, n, D)
        parts = []
        for start in range(1, layer.T, CHUNK):  # states t = start .. stop-1 (t < T)
            steps = np.arange(start, min(start + CHUNK, layer.T))  # vjp step t: (∂s_{t+1}/∂s_t)ᵀ
            parts.append(layer.vjp(g[steps + 1, :, :, None], steps=steps, batch=batch)[..., 0])
        carried = torch.cat(parts) if parts else g[:0]
        return g[1 : layer.T] - carried, carried


def loss_injection(layer: LayerTrace, seqs: int = SEQS) -> LossInjection | None:
    """Where credit enters ``layer`` (see the module docstring); None without loss gradients.

    Args:
        layer: A recorded layer with loss gradients (``layer.grads``, ``(T+1, B, D)``).
        seqs: The first sequences to check.

    Returns:
        A :class:`LossInjection`, or None when the layer holds no loss gradients or fewer
        than two steps.
    """
    if layer.grads is None or layer.T < 2 or layer.B < 1:
        return None
    direct, carried = direct_cotangents(layer, seqs)
    dtype = layer.grads.dtype
    tol = max(1e-3, 10.0 * torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-3
    d_n = torch.linalg.vector_norm(direct.double(), dim=-1).cpu().numpy()
    c_n = torch.linalg.vector_norm(carried.double(), dim=-1).cpu().numpy()
    t = np.arange(1, layer.T)[:, None]
    real = t < layer.seq_lengths[None, : d_n.shape[1]]  # not the sequence's last state
    with np.errstate(invalid="ignore"):
        ok = real & np.isfinite(d_n) & np.isfinite(c_n) & ((d_n + c_n) > 0)
        hit = ok & (d_n > tol * (d_n + c_n))
    share = float(np.median(d_n[hit] / (d_n[hit] + c_n[hit]))) if hit.any() else math.nan
    return LossInjection(int(ok.sum()), int(hit.sum()), share)


__all__ = ["EVERY", "SEQS", "LossInjection", "direct_cotangents", "loss_injection"]
