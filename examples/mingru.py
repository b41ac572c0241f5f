"""Your own parallel-scan recurrence in gradscope: a minGRU.

Feng et al. 2024, "Were RNNs All We Needed?".

The module runs the whole sequence in one call, by a log-space parallel scan; the adapter
tells gradscope the recurrence it computes, step by step:

    z_t = σ(W_z x_t + b_z),   h̃_t = g(W_h x_t + b_h),   h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ h̃_t

with ``g(v) = v + 0.5`` for ``v ≥ 0`` and ``σ(v)`` below (positive, so the scan can run in log
space). The state Jacobian is ``diag(1 − z_t)``: diagonal, input dependent.

Run it: ``python examples/mingru.py`` prints the diagnosis of an untrained minGRU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

import gradscope as gs
from gradscope.cells.base import DIAGONAL


def positive(v: Tensor) -> Tensor:
    """The ``g`` of minGRU: ``v + 0.5`` for ``v >= 0``, ``sigmoid(v)`` below; always > 0."""
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


class MinGRU(nn.Module):
    """A minGRU layer: ``forward(x (B, T, I), h0 (B, H) or None) -> h (B, T, H)``."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.gate = nn.Linear(input_size, hidden_size)
        self.candidate = nn.Linear(input_size, hidden_size)

    def forward(self, x: Tensor, h0: Tensor | None = None) -> Tensor:
        """All states, by a log-space parallel scan (``h0 > 0`` if given)."""
        z = torch.sigmoid(self.gate(x))
        log_a = -nn.functional.softplus(self.gate(x))  # log(1 - z), computed stably
        log_b = torch.log(z) + torch.log(positive(self.candidate(x)))
        if h0 is not None:  # h0 > 0 enters as a first term of the scan
            log_a = torch.cat([torch.zeros_like(log_a[:, :1]), log_a], dim=1)
            log_b = torch.cat([torch.log(h0)[:, None], log_b], dim=1)
        a_star = torch.cumsum(log_a, dim=1)  # log of the products of decays
        h = torch.exp(a_star + torch.logcumsumexp(log_b - a_star, dim=1))
        return h if h0 is None else h[:, 1:]


class MinGRUAdapter(gs.SequenceAdapter):
    """gradscope's view of :class:`MinGRU`: drive ``u_t = [z_t, h̃_t]`` (``I = 2H``).

    Products cost ``O(H · k)`` per step (all elementwise).
    """

    kind = "example:mingru"
    state_names = ("h",)
    structure = DIAGONAL

    def module_params(self, module: nn.Module) -> dict[str, Tensor]:
        """The two projections, detached."""
        return {n: p.detach() for n, p in module.named_parameters()}

    def state_sizes(self, params: dict[str, Tensor]) -> tuple[int, ...]:
        """``(H,)``."""
        return (int(params["gate.weight"].shape[0]),)

    def input_size(self, params: dict[str, Tensor]) -> int:
        """``2H``: the gate and the candidate."""
        return 2 * int(params["gate.weight"].shape[0])

    def drive(self, params: dict[str, Tensor], args: tuple, kwargs: dict[str, Any]) -> gs.Drive:
        """Gates and candidates of all steps at once, time-major."""
        x = args[0] if args else kwargs["x"]
        h0 = args[1] if len(args) > 1 else kwargs.get("h0")
        z = torch.sigmoid(x @ params["gate.weight"].T + params["gate.bias"])
        cand = positive(x @ params["candidate.weight"].T + params["candidate.bias"])
        return gs.Drive(torch.cat([z, cand], dim=-1).transpose(0, 1), h0)

    def step(self, params: dict[str, Tensor], x: Tensor, s: Tensor) -> Tensor:
        """``h_t = (1 − z_t) h_{t−1} + z_t h̃_t``."""
        z, cand = x.chunk(2, dim=-1)
        return (1 - z) * s + z * cand

    def readout(self, params: dict[str, Tensor], u: Tensor, states: Tensor) -> Tensor:
        """The module returns the states themselves, batch-first."""
        return states[1:].transpose(0, 1)

    def diagonal(self, params: dict[str, Tensor], u: Tensor) -> Tensor:
        """``1 − z_t``."""
        return 1 - u.chunk(2, dim=-1)[0]

    def linear_factors(self, params: dict[str, Tensor], x: Tensor, s: Tensor) -> Any:
        """``(1 − z, z, h̃ − h_{t−1})``: the step's derivatives."""
        z, cand = x.chunk(2, dim=-1)
        return (1 - z, z, cand - s)

    def product(self, params, x, s, factors, m, wrt, rev):
        """The four products, elementwise."""
        keep, z, diff = (f[..., None] for f in factors)
        if wrt == "state":
            return keep * m
        if rev:  # ∂h/∂z = h̃ − h_{t−1}, ∂h/∂h̃ = z
            return torch.cat([diff * m, z * m], dim=1)
        vz, vc = m.chunk(2, dim=1)
        return diff * vz + z * vc


gs.register_sequence(MinGRU, MinGRUAdapter(), overwrite=True)


if __name__ == "__main__":
    torch.manual_seed(0)
    model = MinGRU(8, 32)
    print(gs.diagnose(gs.trace(model, torch.randn(4, 200, 8))))
