r"""minLSTM of the ``minGRU-pytorch`` package (``minGRU_pytorch.minLSTM.minLSTM``).

Feng et al. 2024, "Were RNNs All We Needed?" (arXiv:2410.01201), appendix B.3, as
``minGRU_pytorch/minLSTM.py`` (version 0.2.1) computes it. For the layer's input ``x_t``
and the inner width ``E = int(dim · expansion_factor)``::

    (h̃ᵖ_t, fᵖ_t, iᵖ_t) = W x_t                   (to_hidden_and_f_i_gate, no bias; E each)
    f_t = σ(fᵖ_t),  i_t = σ(iᵖ_t)
    f'_t = f_t / (f_t + i_t),   i'_t = i_t / (f_t + i_t)              (normalised gates)
    h_t = f'_t ⊙ h_{t-1} + i'_t ⊙ g(h̃ᵖ_t)                             (g as for minGRU)
    y_t = W_out h_t                                (to_out; the identity without proj_out)

The module computes the normalised gates in log space when ``T > 1``: with
``δ_t = softplus(−fᵖ_t) − softplus(−iᵖ_t)`` (``= log i_t − log f_t``),
``log f'_t = −softplus(δ_t)`` and ``log i'_t = −softplus(−δ_t)``, then Heinsen's scan;
for ``T = 1`` it steps once with the sigmoids and divisions above. Both are the recurrence
above to rounding; the replay takes the log-space forms.

Initial state, exactly as the code has it (the two paths differ). Without ``prev_hidden``
``h_0 = 0``. With ``prev_hidden`` ``(B, 1, E)``: a single step (``T = 1``, what ``minLM``
does while decoding) continues from ``h_0 = prev_hidden``; a scan (``T > 1``) prepends
``log_g(prev_hidden)``, i.e. starts from ``h_0 = g(prev_hidden)`` (for a positive state,
``prev_hidden + ½``), not from ``prev_hidden`` itself.

State and drive. The state is ``h`` (``D = E``). The drive is the projection, time-major,
in the module's order::

    u_t = [h̃ᵖ_t (E) | fᵖ_t (E) | iᵖ_t (E)]        (I = 3E)

State Jacobian ``diag(f'_t)``: diagonal, input dependent, eigenvalues in ``(0, 1)``;
:meth:`MinLSTMAdapter.log_decay` is ``−softplus(δ_t)``, the module's own ``log_f``. Input
Jacobian, elementwise, with ``c_t = ∂h_t/∂δ_t = i'_t s'(−δ_t) g(h̃ᵖ_t) − f'_t s'(δ_t) h_{t-1}``
(``s' = softplus'`` = σ)::

    ∂h_t/∂h̃ᵖ_t = i'_t g'(h̃ᵖ_t)     ∂h_t/∂fᵖ_t = −s'(−fᵖ_t) c_t     ∂h_t/∂iᵖ_t = s'(−iᵖ_t) c_t

Cost of every product per step and sequence: ``O(E · k)`` (elementwise); no ``D × D``
matrix is formed. The layout, drive, readout and products are shared with minGRU
(:class:`~gradscope.sequences.mingru_pkg.ElementwiseAdapter`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gradscope.cells.base import Params
from gradscope.sequences import advice
from gradscope.sequences.mingru_pkg import (
    Elementwise,
    ElementwiseAdapter,
    g,
    g_prime,
    softplus_prime,
)


class MinLSTMAdapter(ElementwiseAdapter):
    """``minGRU_pytorch``'s ``minLSTM``: ``h_t = f'_t h_{t-1} + i'_t g(h̃ᵖ_t)``."""

    kind = "minlstm"
    projection = "to_hidden_and_f_i_gate"
    blocks = 3

    def start(self, prev: Tensor, T: int) -> Tensor:
        """``prev_hidden`` for a single step, ``g(prev_hidden)`` for a scan (``T > 1``)."""
        return prev if T == 1 else g(prev)

    def _delta(self, params: Params, u: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        E = self._width(params)
        hp, fp, ip = u[..., :E], u[..., E : 2 * E], u[..., 2 * E :]
        return hp, fp, ip, F.softplus(-fp) - F.softplus(-ip)

    def log_decay(self, params: Params, u: Tensor) -> Tensor:
        """``ln f'_t = −softplus(δ_t)`` (the module's ``log_f``) ``(N, E)``."""
        return -F.softplus(self._delta(params, u)[3])

    def factors(self, params: Params, u: Tensor, s: Tensor) -> tuple[Elementwise, Tensor]:
        """``f' = e^{−softplus(δ)}``, ``i' = e^{−softplus(−δ)}``; ``h = f' h_{t-1} + i' g``."""
        hp, fp, ip, delta = self._delta(params, u)
        fn = torch.exp(-F.softplus(delta))
        inn = torch.exp(-F.softplus(-delta))
        cand = g(hp)
        nxt = fn * s + inn * cand
        c = inn * softplus_prime(-delta) * cand - fn * softplus_prime(delta) * s
        coeffs = (inn * g_prime(hp), -softplus_prime(-fp) * c, softplus_prime(-ip) * c)
        return Elementwise(fn, coeffs), nxt

    def vanishing_advice(self, params: Params, facts: dict[str, str]) -> list[str]:
        """The forget half above the input half, with this layer's values."""
        return advice.minlstm(params, facts)


ADAPTER = MinLSTMAdapter()

__all__ = ["ADAPTER", "MinLSTMAdapter"]
