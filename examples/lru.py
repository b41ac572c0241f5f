"""Your own parallel-scan recurrence in gradscope: a Linear Recurrent Unit.

Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks for Long Sequences".

The LRU has a complex diagonal transition, the same at every step:

    x_t = λ ⊙ x_{t−1} + γ ⊙ (B u_t),   λ = exp(−exp(ν) + i·exp(θ)),   γ = exp(γ_log)
    y_t = Re(C x_t) + D ⊙ u_t

The module below runs it as a parallel (Hillis–Steele) scan. gradscope holds the complex
state as real numbers, ``[Re x, Im x]`` (``D = 2n``), so the Jacobian is a scaled rotation
per channel with eigenvalues ``λ_j`` and ``λ̄_j``: ``diagonal()`` returns them and the
analysis is exact (the Lyapunov exponents are ``ln|λ_j| = −exp(ν_j)``, each twice).

Run it: ``python examples/lru.py`` prints the diagnosis of an LRU at initialisation.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

import gradscope as gs
from gradscope.cells.base import BLOCK


def parallel_scan(a: Tensor, b: Tensor) -> Tensor:
    """``x_t = a_t x_{t−1} + b_t`` from ``x_{−1} = 0`` along dim 1, in ``log2 T`` rounds."""
    a, b = a.clone(), b.clone()
    shift = 1
    while shift < a.shape[1]:
        b = torch.cat([b[:, :shift], a[:, shift:] * b[:, :-shift] + b[:, shift:]], dim=1)
        a = torch.cat([a[:, :shift], a[:, shift:] * a[:, :-shift]], dim=1)
        shift *= 2
    return b


class LRU(nn.Module):
    """``forward(u (B, T, I)) -> y (B, T, O)`` with ``n`` complex channels."""

    def __init__(self, input_size: int, channels: int, output_size: int, r_min=0.9, r_max=0.999):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        r = torch.rand(channels, generator=g) * (r_max**2 - r_min**2) + r_min**2
        self.nu_log = nn.Parameter(torch.log(-0.5 * torch.log(r)))
        theta = torch.rand(channels, generator=g) * 2 * math.pi / 10
        self.theta_log = nn.Parameter(torch.log(theta))
        mod = torch.exp(-torch.exp(self.nu_log.detach()))
        self.gamma_log = nn.Parameter(torch.log(torch.sqrt(1 - mod**2)))
        scale = 1 / math.sqrt(2 * input_size)
        self.B_re = nn.Parameter(torch.randn(channels, input_size, generator=g) * scale)
        self.B_im = nn.Parameter(torch.randn(channels, input_size, generator=g) * scale)
        self.C_re = nn.Parameter(torch.randn(output_size, channels, generator=g) / channels**0.5)
        self.C_im = nn.Parameter(torch.randn(output_size, channels, generator=g) / channels**0.5)
        self.D = nn.Parameter(torch.randn(output_size, input_size, generator=g) * scale)

    def forward(self, u: Tensor) -> Tensor:
        """The outputs of all steps, by a parallel scan over the complex states."""
        lam = torch.exp(torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log)))
        Bc = torch.complex(self.B_re, self.B_im) * torch.exp(self.gamma_log)[:, None]
        bu = u.to(Bc.dtype) @ Bc.T  # (B, T, n)
        x = parallel_scan(lam.expand_as(bu), bu)
        Cc = torch.complex(self.C_re, self.C_im)
        return (x @ Cc.T).real + u @ self.D.T


class LRUAdapter(gs.SequenceAdapter):
    """gradscope's view of :class:`LRU`.

    State ``[Re x, Im x]`` (``2n``); drive ``u_t = [Re(γ B u_t), Im(γ B u_t), u_t]``
    (``2n + I``: the input term and the raw input that the skip ``D u_t`` reads). Products
    cost ``O(n · k)`` per step.
    """

    kind = "example:lru"
    state_names = ("re", "im")
    structure = BLOCK

    def module_params(self, module: nn.Module) -> dict[str, Tensor]:
        """All parameters, detached."""
        return {n: p.detach() for n, p in module.named_parameters()}

    def state_sizes(self, params: dict[str, Tensor]) -> tuple[int, ...]:
        """``(n, n)``: real and imaginary parts."""
        n = int(params["nu_log"].shape[0])
        return (n, n)

    def input_size(self, params: dict[str, Tensor]) -> int:
        """``2n + I``."""
        return 2 * int(params["nu_log"].shape[0]) + int(params["B_re"].shape[1])

    def _lam(self, params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        mod = torch.exp(-torch.exp(params["nu_log"]))
        theta = torch.exp(params["theta_log"])
        return mod * torch.cos(theta), mod * torch.sin(theta)

    def drive(self, params: dict[str, Tensor], args: tuple, kwargs: dict[str, Any]) -> gs.Drive:
        """``γ B u_t`` split in real and imaginary parts, and ``u_t``, time-major."""
        u = args[0] if args else kwargs["u"]
        gamma = torch.exp(params["gamma_log"])
        re = u @ (params["B_re"] * gamma[:, None]).T
        im = u @ (params["B_im"] * gamma[:, None]).T
        return gs.Drive(torch.cat([re, im, u], dim=-1).transpose(0, 1))

    def step(self, params: dict[str, Tensor], x: Tensor, s: Tensor) -> Tensor:
        """``x_t = λ x_{t−1} + γ B u_t`` in real arithmetic."""
        a, b = self._lam(params)
        n = a.shape[0]
        re, im = s[:, :n], s[:, n:]
        return torch.cat([a * re - b * im + x[:, :n], b * re + a * im + x[:, n : 2 * n]], -1)

    def readout(self, params: dict[str, Tensor], u: Tensor, states: Tensor) -> Tensor:
        """``Re(C x_t) + D u_t``, batch-first."""
        n = params["nu_log"].shape[0]
        re, im = states[1:, :, :n], states[1:, :, n:]
        raw = u[..., 2 * n :]
        y = re @ params["C_re"].T - im @ params["C_im"].T + raw @ params["D"].T
        return y.transpose(0, 1)

    def diagonal(self, params: dict[str, Tensor], u: Tensor) -> Tensor:
        """``[λ, λ̄]`` per pair: the eigenvalues of the rotation-scaling blocks."""
        a, b = self._lam(params)
        lam = torch.complex(a, b)
        return torch.cat([lam, lam.conj()]).expand(u.shape[0], -1)

    def product(self, params, x, s, factors, m, wrt, rev):
        """State: the rotation-scaling (transposed for ``rev``); input: a selection."""
        n = params["nu_log"].shape[0]
        if wrt == "input":
            if rev:  # Kᵀ: the state rows go to the first 2n drive entries
                return torch.cat([m, m.new_zeros((m.shape[0], x.shape[-1] - 2 * n, m.shape[2]))], 1)
            return m[:, : 2 * n]
        a, b = (v[:, None] for v in self._lam(params))
        if rev:
            b = -b
        re, im = m[:, :n], m[:, n:]
        return torch.cat([a * re - b * im, b * re + a * im], dim=1)


gs.register_sequence(LRU, LRUAdapter(), overwrite=True)


if __name__ == "__main__":
    torch.manual_seed(0)
    model = LRU(8, 32, 8)
    print(gs.diagnose(gs.trace(model, torch.randn(4, 300, 8))))
