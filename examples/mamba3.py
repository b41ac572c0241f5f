r"""A data-dependent decaying rotation in gradscope: a Mamba-3 layer (SISO) and its adapter.

Lahoti et al. 2026, "Mamba-3: Improved Sequence Modeling using State Space Principles"; the
equations as ``state-spaces/mamba`` writes them (``mamba_ssm/modules/mamba3.py`` and the
reference ``mamba3_siso_step_ref`` of its tests), whose kernels are GPU-only. For every head
``h`` (headdim ``P``, state size ``N``), from the projections of the layer's input:

.. math::
    A_t &= \min(-\mathrm{ht}(a_t), -A_{floor}), \quad Δ_t = \mathrm{softplus}(δ_t + b_Δ),
    \quad α_t = e^{Δ_t A_t}, \quad λ_t = σ(\mathrm{trap}_t) \\
    θ_t &= π \tanh(φ_t)\, Δ_t \ \text{(one angle per rotated pair)}, \quad
    Φ_t = \textstyle\sum_{u\le t} θ_u \\
    k_t &= \mathrm{RMSNorm}(B_t) + b_B, \quad q_t = \mathrm{RMSNorm}(C_t) + b_C, \quad
    \tilde k_t = R(Φ_t) k_t, \quad \tilde q_t = R(Φ_t) q_t \\
    S_t &= α_t S_{t-1} + (1-λ_t) Δ_t α_t\, v_{t-1} \tilde k_{t-1}^\top
        + λ_t Δ_t\, v_t \tilde k_t^\top, \qquad y_t = S_t \tilde q_t + D v_t

(``ht`` the heavy-tail activation ``1 + x`` for ``x ≥ 0``, ``1/(1 − x)`` below; ``R(Φ)`` rotates
the pairs ``(2i, 2i+1)`` of the first ``2S`` state entries; the trapezoidal rule's first term
reads the previous step's ``v`` and ``k̃``), then ``out = W_out (y ⊙ silu(z))``. The module
below runs it as the kernel does: a real state ``S`` and rotated keys and queries.

gradscope follows the state in its rotating frame, :math:`H_t = S_t R(Φ_t)` (so that
:math:`y_t = H_t q_t`):

.. math:: H_t = α_t\, H_{t-1} R(θ_t) + w_t, \quad
    w_t = (1-λ_t)Δ_t α_t\, v_{t-1} k_{t-1}^\top R(θ_t) + λ_t Δ_t\, v_t k_t^\top,

a transition that is, per rotated pair of each row, the scaled rotation ``α_t R(−θ_t)``, with
eigenvalues ``α_t e^{∓iθ_t}`` (``α_t`` on the unrotated entries): a complex diagonal in a fixed
unitary basis, so :meth:`Mamba3Adapter.diagonal` returns it and the analysis is exact. The
Lyapunov exponents are the means of ``ln α_t = Δ_t A_t`` per head, and the memory timescales
report the phase ``∓θ_t`` of every pair (its circular mean and spread). Products cost
``O(H · P · N · k)``; no ``D × D`` matrix is formed.

Run it: ``python examples/mamba3.py`` prints the diagnosis of a layer at initialisation.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import gradscope as gs
from gradscope.cells.base import BLOCK


def heavy_tail(x: Tensor) -> Tensor:
    """``1 + x`` for ``x ≥ 0``, ``1/(1 − x)`` below (Mamba-3's activation for ``A``)."""
    return x.clamp_min(0) + torch.reciprocal(1 - x.clamp_max(0))


def sizes(p: dict[str, Tensor]) -> tuple[int, int, int, int]:
    """``(H, P, N, S)``: heads, head width, state size, rotated pairs (from the weights)."""
    H, N = p["B_bias"].shape
    inner = p["out_proj.weight"].shape[1]
    S = p["in_proj.weight"].shape[0] - 2 * inner - 2 * N - 3 * H
    return int(H), int(inner // H), int(N), int(S)


def project(p: dict[str, Tensor], u: Tensor) -> dict[str, Tensor]:
    """Everything the recurrence reads, from the input ``u`` ``(B, L, d_model)``, per head."""
    H, P, N, S = sizes(p)
    z, x, b, c, dd_dt, dd_a, trap, phi = torch.split(
        u @ p["in_proj.weight"].T, [H * P, H * P, N, N, H, H, H, S], dim=-1
    )
    A = torch.clamp(-heavy_tail(dd_a), max=-float(p["A_floor"]))
    dt = F.softplus(dd_dt + p["dt_bias"])
    eps = float(p["eps"])

    def rms(a: Tensor, w: Tensor) -> Tensor:
        return a * torch.rsqrt(a.pow(2).mean(-1, keepdim=True) + eps) * w

    return {
        "z": z.unflatten(-1, (H, P)),
        "v": x.unflatten(-1, (H, P)),
        "k": rms(b, p["B_norm"])[..., None, :] + p["B_bias"],  # (B, L, H, N)
        "q": rms(c, p["C_norm"])[..., None, :] + p["C_bias"],
        "adt": A * dt,  # ln α
        "dt": dt,
        "lam": torch.sigmoid(trap),
        "theta": math.pi * torch.tanh(phi)[..., None, :] * dt[..., None],  # (B, L, H, S)
    }


def rotate(a: Tensor, angle: Tensor, row: bool = False) -> Tensor:
    """``R(angle)`` on the pairs ``(2i, 2i+1)`` of the last axis, ``i < S`` (the rest kept).

    ``row=False``: the column vector ``a`` rotated, ``(a₀ cos − a₁ sin, a₀ sin + a₁ cos)``;
    ``row=True``: the row vector times ``R``, ``(a₀ cos + a₁ sin, −a₀ sin + a₁ cos)``.
    ``angle`` broadcasts against ``a[..., :S]``.
    """
    S = angle.shape[-1]
    c, s = torch.cos(angle), torch.sin(angle)
    a0, a1 = a[..., 0 : 2 * S : 2], a[..., 1 : 2 * S : 2]
    if row:
        s = -s
    pairs = torch.stack([a0 * c - a1 * s, a0 * s + a1 * c], dim=-1).flatten(-2)
    return torch.cat([pairs, a[..., 2 * S :]], dim=-1)


class Mamba3(nn.Module):
    """``forward(u (B, L, d_model)) -> (B, L, d_model)``, SISO, one group of ``B``/``C``."""

    def __init__(self, d_model: int, d_state: int = 8, headdim: int = 4, rope_fraction=0.5):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        inner = 2 * d_model
        H, N = inner // headdim, d_state
        S = (int(N * rope_fraction) // 2 * 2) // 2
        self.in_proj = nn.Linear(d_model, 2 * inner + 2 * N + 3 * H + S, bias=False)
        nn.init.normal_(self.in_proj.weight, std=d_model**-0.5, generator=g)
        dt = torch.exp(
            torch.rand(H, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)
        )
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.B_bias = nn.Parameter(torch.ones(H, N))
        self.C_bias = nn.Parameter(torch.ones(H, N))
        self.B_norm = nn.Parameter(torch.ones(N))
        self.C_norm = nn.Parameter(torch.ones(N))
        self.D = nn.Parameter(torch.ones(H))
        self.out_proj = nn.Linear(inner, d_model, bias=False)
        self.register_buffer("A_floor", torch.tensor(1e-4))
        self.register_buffer("eps", torch.tensor(1e-5))

    def forward(self, u: Tensor) -> Tensor:
        """The kernel's way: a real state, keys and queries rotated by the summed angles."""
        p = dict(self.named_parameters()) | dict(self.named_buffers())
        f = project(p, u)
        phi = torch.cumsum(f["theta"], dim=1)
        k, q = rotate(f["k"], phi), rotate(f["q"], phi)
        alpha = torch.exp(f["adt"])
        beta, gamma = (1 - f["lam"]) * f["dt"] * alpha, f["lam"] * f["dt"]
        state = u.new_zeros(u.shape[0], *f["v"].shape[2:], k.shape[-1])  # (B, H, P, N)
        v_prev, k_prev, ys = torch.zeros_like(f["v"][:, 0]), torch.zeros_like(k[:, 0]), []
        for t in range(u.shape[1]):
            v = f["v"][:, t]
            state = alpha[:, t, :, None, None] * state
            state = state + beta[:, t, :, None, None] * (v_prev[..., None] * k_prev[..., None, :])
            state = state + gamma[:, t, :, None, None] * (v[..., None] * k[:, t, :, None, :])
            ys.append(torch.einsum("bhpn,bhn->bhp", state, q[:, t]) + self.D[:, None] * v)
            v_prev, k_prev = v, k[:, t]
        y = torch.stack(ys, 1) * f["z"] * torch.sigmoid(f["z"])
        return self.out_proj(y.flatten(-2))


class _Factors(NamedTuple):
    alpha: Tensor  # (n, H)
    theta: Tensor  # (n, H, S)
    turned: Tensor  # (n, H, P, N): H_{t-1} R(θ_t)


class Mamba3Adapter(gs.SequenceAdapter):
    """gradscope's view of :class:`Mamba3`: the rotating-frame state ``H_t`` (see above).

    State ``H`` ``(H · P · N)``; drive ``[w (H·P·N), ln α (H), θ (H·S), q (H·N), v (H·P),
    z (H·P)]``.
    """

    kind = "example:mamba3"
    structure = BLOCK

    def module_params(self, module: nn.Module) -> dict[str, Tensor]:
        """Parameters and buffers, detached."""
        out = {n: t.detach() for n, t in module.named_parameters()}
        return out | {n: t.detach() for n, t in module.named_buffers()}

    def state_sizes(self, params: dict[str, Tensor]) -> tuple[int, ...]:
        """``(H · P · N,)``."""
        H, P, N, _ = sizes(params)
        return (H * P * N,)

    def input_size(self, params: dict[str, Tensor]) -> int:
        """``H (P N + 1 + S + N + 2P)``."""
        H, P, N, S = sizes(params)
        return H * (P * N + 1 + S + N + 2 * P)

    def _split(self, params: dict[str, Tensor], u: Tensor) -> list[Tensor]:
        H, P, N, S = sizes(params)
        parts = torch.split(u, [H * P * N, H, H * S, H * N, H * P, H * P], dim=-1)
        shapes = [(H, P, N), (H,), (H, S), (H, N), (H, P), (H, P)]
        return [t.unflatten(-1, s) for t, s in zip(parts, shapes)]

    def drive(self, params: dict[str, Tensor], args: tuple, kwargs: dict[str, Any]) -> gs.Drive:
        """``w_t`` (the trapezoid's two input terms in the rotating frame) and the rest."""
        f = project(params, args[0] if args else kwargs["u"])
        alpha = torch.exp(f["adt"])
        beta, gamma = (1 - f["lam"]) * f["dt"] * alpha, f["lam"] * f["dt"]
        v_prev = torch.cat([torch.zeros_like(f["v"][:, :1]), f["v"][:, :-1]], dim=1)
        k_prev = torch.cat([torch.zeros_like(f["k"][:, :1]), f["k"][:, :-1]], dim=1)
        prev = rotate(v_prev[..., None] * k_prev[..., None, :], f["theta"][..., None, :], row=True)
        w = beta[..., None, None] * prev + gamma[..., None, None] * (
            f["v"][..., None] * f["k"][..., None, :]
        )
        parts = [w, f["adt"], f["theta"], f["q"], f["v"], f["z"]]
        u = torch.cat([t.flatten(2) for t in parts], dim=-1)
        return gs.Drive(u.transpose(0, 1))

    def step(self, params: dict[str, Tensor], x: Tensor, s: Tensor) -> Tensor:
        """``H_t = α_t H_{t−1} R(θ_t) + w_t``."""
        w, adt, theta = self._split(params, x)[:3]
        turned = rotate(s.reshape(w.shape), theta[:, :, None, :], row=True)
        return (torch.exp(adt)[:, :, None, None] * turned + w).flatten(1)

    def readout(self, params: dict[str, Tensor], u: Tensor, states: Tensor) -> Tensor:
        """``W_out((H_t q_t + D v_t) ⊙ silu(z_t))``, batch first."""
        H, P, N, _ = sizes(params)
        _, _, _, q, v, z = self._split(params, u)
        h = states[1:].unflatten(-1, (H, P, N))
        y = torch.einsum("tbhpn,tbhn->tbhp", h, q) + params["D"][:, None] * v
        y = y * z * torch.sigmoid(z)
        return (y.flatten(-2) @ params["out_proj.weight"].T).transpose(0, 1)

    def diagonal(self, params: dict[str, Tensor], u: Tensor) -> Tensor:
        """``α e^{−iθ}``, ``α e^{+iθ}`` on each rotated pair, ``α`` elsewhere."""
        _, P, N, S = sizes(params)
        _, adt, theta = self._split(params, u)[:3]
        alpha = torch.exp(adt)[:, :, None].to(torch.complex128)
        turn = torch.exp(1j * theta.to(torch.float64))
        pairs = torch.stack([alpha * turn.conj(), alpha * turn], dim=-1).flatten(-2)
        rest = alpha.expand(-1, -1, N - 2 * S)
        lam = torch.cat([pairs, rest], dim=-1)  # (n, H, N)
        return lam[:, :, None, :].expand(-1, -1, P, -1).flatten(1)

    def log_decay(self, params: dict[str, Tensor], u: Tensor) -> Tensor:
        """``ln α_t = Δ_t A_t`` on every coordinate of its head (exact)."""
        _, P, N, _ = sizes(params)
        adt = self._split(params, u)[1]
        return adt[:, :, None].expand(-1, -1, P * N).flatten(1)

    def linear_factors(self, params, x, s):
        """``α``, ``θ`` and ``H_{t−1} R(θ_t)``."""
        w, adt, theta = self._split(params, x)[:3]
        turned = rotate(s.reshape(w.shape), theta[:, :, None, :], row=True)
        return _Factors(torch.exp(adt), theta, turned)

    def product(self, params, x, s, f, m, wrt, rev):
        """State: ``α R(∓θ)`` per pair; input: ``w``, ``ln α`` and ``θ`` (see the module)."""
        H, P, N, S = sizes(params)
        n, k = m.shape[0], m.shape[-1]
        a = f.alpha[:, :, None, None, None]
        angle = f.theta[:, :, None, :, None]  # against (n, H, P, S, k) pairs
        if wrt == "state":
            cols = m.reshape(n, H, P, N, k).movedim(-1, -2)  # pairs on the last axis
            out = rotate(cols, angle.movedim(-1, -2), row=not rev)
            return (a * out.movedim(-2, -1)).reshape(n, H * P * N, k)
        t0, t1 = f.turned[..., 0 : 2 * S : 2, None], f.turned[..., 1 : 2 * S : 2, None]
        alpha = f.alpha[:, :, None, None, None]
        if not rev:
            dw, dadt, dth = self._split(params, m.movedim(-1, 1))[:3]  # (n, k, ...)
            dw, dadt, dth = dw.movedim(1, -1), dadt.movedim(1, -1), dth.movedim(1, -1)
            out = dw + alpha * f.turned[..., None] * dadt[:, :, None, None, :]
            d0 = alpha * t1 * dth[:, :, None, :, :]
            d1 = -alpha * t0 * dth[:, :, None, :, :]
            pairs = torch.stack([d0, d1], dim=-2).flatten(-3, -2)  # (n, H, P, 2S, k)
            out = out + torch.cat([pairs, out.new_zeros((n, H, P, N - 2 * S, k))], dim=3)
            return out.reshape(n, H * P * N, k)
        g = m.reshape(n, H, P, N, k)
        gadt = (alpha * f.turned[..., None] * g).sum(dim=(2, 3))  # (n, H, k)
        g0, g1 = g[..., 0 : 2 * S : 2, :], g[..., 1 : 2 * S : 2, :]
        gth = (alpha * (t1 * g0 - t0 * g1)).sum(dim=2)  # (n, H, S, k)
        zeros = m.new_zeros((n, H * (N + 2 * P), k))
        return torch.cat([m, gadt, gth.reshape(n, H * S, k), zeros], dim=1)


gs.register_sequence(Mamba3, Mamba3Adapter(), overwrite=True)


if __name__ == "__main__":
    torch.manual_seed(0)
    model = Mamba3(16)
    print(gs.diagnose(gs.trace(model, torch.randn(4, 300, 16))))
