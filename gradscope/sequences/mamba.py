"""Mamba's selective state space layer (``MambaMixer`` of Hugging Face ``transformers``).

For every channel ``e`` of the inner width ``E`` and state index ``n < N`` (``d_state``):

    h_t[e, n] = exp(Δ_t[e] · A[e, n]) · h_{t-1}[e, n]  +  Δ_t[e] · B_t[n] · x_t[e]
    y_t[e]    = Σ_n C_t[n] · h_t[e, n]  +  D[e] · x_t[e]
    out_t     = W_out (y_t ⊙ silu(z_t)) + b_out

with ``A = −exp(A_log)`` (formed in float32, as the module does), and from the layer's input
``u_t``: ``(x̃_t, z_t) = W_in u_t``, ``x_t = silu(causal_conv1d(x̃)_t)`` (a depthwise causal
convolution over the last ``d_conv`` steps), ``(δ_t, B_t, C_t) = W_x x_t``,
``Δ_t = softplus(W_Δ δ_t + b_Δ)``. The state is ``h`` (``D = E · N`` numbers, index
``e · N + n``); everything else is computed in parallel over time and forms the drive

    u_t = [x_t (E), Δ_t (E), B_t (N), C_t (N), z_t (E)]        (I = 3E + 2N),

so the input Jacobian is the state's sensitivity to the drive (``C`` and ``z`` only reach the
output: their columns are zero). The state Jacobian is ``diag(exp(Δ_t ⊙ A))``: diagonal and
input dependent ("selective"), every eigenvalue in (0, 1).

Cost of every product per step and sequence: ``O(E · N · k)`` for ``k`` columns, the size of
the state; no ``D × D`` matrix is ever formed.

Like the module, the state update reads ``B_t`` and ``x_t`` rounded to float32 (it calls
``.float()`` on them), also in a float64 model; the replay does the same, so a float64 model
is reproduced to float64 rounding.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradscope.cells.base import DIAGONAL, Params
from gradscope.errors import UnsupportedModuleError
from gradscope.sequences import advice
from gradscope.sequences._hf_mixers import optional_biases
from gradscope.sequences.base import Drive, SequenceAdapter


class _Factors(NamedTuple):
    a: Tensor  # (N, E, Ns) exp(Δ A)
    x: Tensor  # (N, E) x rounded as in the update
    dt: Tensor  # (N, E)
    b: Tensor  # (N, Ns)
    h: Tensor  # (N, E, Ns) previous state


def _as_float32(t: Tensor) -> Tensor:
    """``t`` rounded to float32 in value, in ``t``'s dtype, with derivative 1 (not rounded)."""
    if t.dtype == torch.float32:
        return t
    return t + (t.float().to(t.dtype) - t).detach()


def mixer_weights(module: nn.Module) -> Params:
    """A Mamba-1 mixer's weights by the names both ``transformers`` and ``mambapy`` use.

    ``A = −exp(A_log)`` formed in float32, as both form it; the optional biases when present.
    Not detached.
    """
    out: Params = {
        "in_proj.weight": module.in_proj.weight,
        "conv1d.weight": module.conv1d.weight,
        "x_proj.weight": module.x_proj.weight,
        "dt_proj.weight": module.dt_proj.weight,
        "dt_proj.bias": module.dt_proj.bias,
        "A": -torch.exp(module.A_log.float()),
        "D": module.D,
        "out_proj.weight": module.out_proj.weight,
    }
    return {**out, **optional_biases(module)}


class MambaAdapter(SequenceAdapter):
    """``transformers``' ``MambaMixer`` (Mamba-1): a diagonal selective scan."""

    #: The config's names of the range the Δ bias is initialised in (``MambaConfig``).
    step_range = ("time_step_min", "time_step_max")
    kind = "mamba"
    state_names = ("h",)
    structure = DIAGONAL
    #: The state update reads ``x_t`` and ``B_t`` rounded to float32 (``transformers`` calls
    #: ``.float()`` on them); a subclass for a module that does not round sets it False.
    rounds_update_inputs = True

    # ------------------------------------------------------------------ layout
    def _dims(self, params: Params) -> tuple[int, int]:
        E, Ns = params["A"].shape
        return int(E), int(Ns)

    def state_sizes(self, params: Params) -> tuple[int, ...]:
        """``(E · N,)``: the state ``h`` flattened, channel-major."""
        E, Ns = self._dims(params)
        return (E * Ns,)

    def input_size(self, params: Params) -> int:
        """``3E + 2N``: the drive ``[x, Δ, B, C, z]``."""
        E, Ns = self._dims(params)
        return 3 * E + 2 * Ns

    def _split(self, params: Params, u: Tensor) -> tuple[Tensor, ...]:
        E, Ns = self._dims(params)
        return torch.split(u, [E, E, Ns, Ns, E], dim=-1)

    # ------------------------------------------------------------------ recording
    def module_params(self, module: nn.Module) -> Params:
        """The mixer's weights, ``A = −exp(A_log)`` formed in float32 as the module does."""
        if getattr(module, "activation", "silu") != "silu":
            raise UnsupportedModuleError(
                f"gradscope's Mamba adapter replays the silu activation; this MambaMixer uses "
                f"{module.activation!r}"
            )
        return {k: v.detach() for k, v in mixer_weights(module).items()}

    def initial_state(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """Zeros; a call that continues a cached state is refused (see the message)."""
        cache = kwargs.get("cache", args[1] if len(args) > 1 else None)
        if cache is not None and cache.has_previous_state(module.layer_idx):
            raise UnsupportedModuleError(
                "gradscope replays a MambaMixer from a zero state; this call continues from a "
                "cached state (a generation step). Record a whole sequence in one call with "
                "use_cache=False, e.g. gs.trace(model, input_ids, use_cache=False)."
            )
        return None

    def drive(self, params: Params, args: tuple, kwargs: dict[str, Any]) -> Drive:
        """``[x, Δ, B, C, z]`` of every step, time-major, as the module computes them."""
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        mask = kwargs.get("attention_mask", args[3] if len(args) > 3 else None)
        E, Ns = self._dims(params)
        if mask is not None:
            hidden = (hidden * mask[:, :, None]).to(hidden.dtype)
        proj = F.linear(hidden, params["in_proj.weight"], params.get("in_proj.bias"))
        proj = proj.transpose(1, 2)  # (B, 2E, T)
        xs, z = proj.chunk(2, dim=1)
        w = params["conv1d.weight"]
        T = xs.shape[-1]
        x = F.conv1d(
            xs.to(w.dtype), w, params.get("conv1d.bias"), padding=w.shape[-1] - 1, groups=E
        )[..., :T]
        x = F.silu(x).to(xs.dtype).transpose(1, 2)  # (B, T, E)
        if mask is not None:
            x = (x * mask[:, :, None]).to(x.dtype)
        rank = params["dt_proj.weight"].shape[1]
        dt_r, b, c = torch.split(F.linear(x, params["x_proj.weight"]), [rank, Ns, Ns], dim=-1)
        dt = params["dt_proj.weight"] @ dt_r.transpose(1, 2)  # (B, E, T)
        dt = F.softplus(dt + params["dt_proj.bias"].float().to(dt.dtype)[:, None])
        u = torch.cat([x, dt.transpose(1, 2), b, c, z.transpose(1, 2)], dim=-1)
        return Drive(u.transpose(0, 1).contiguous())

    def readout(self, params: Params, u: Tensor, states: Tensor) -> Tensor:
        """``W_out((C_t·h_t + D ⊙ x_t) ⊙ silu(z_t))``, batch-first like the module."""
        x, _, _, c, z = self._split(params, u)
        E, Ns = self._dims(params)
        h = states[1:].unflatten(-1, (E, Ns))
        y = torch.einsum("tben,tbn->tbe", h, c) + x * params["D"].to(x.dtype)
        y = y * F.silu(z)
        out = F.linear(y, params["out_proj.weight"], params.get("out_proj.bias"))
        return out.transpose(0, 1)  # (B, T, hidden), as the module returns it

    # ------------------------------------------------------------------ maths
    def _pieces(self, params: Params, u: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x, dt, b, _, _ = self._split(params, u)
        A = params["A"].to(u.dtype)
        a = torch.exp(dt[:, :, None] * A)
        if self.rounds_update_inputs:
            x, b = _as_float32(x), _as_float32(b)  # the module's .float() on x and B
        return a, x, dt, b

    def step(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """``h_t = exp(Δ_t A) ⊙ h_{t−1} + (Δ_t x_t) ⊗ B_t``."""
        a, xr, dt, br = self._pieces(params, x)
        h = s.unflatten(-1, a.shape[1:])
        return (a * h + (dt * xr)[:, :, None] * br[:, None, :]).flatten(1)

    def step_factors(self, params: Params, x: Tensor, s: Tensor) -> tuple[Tensor, Any]:
        """The step and its linear factors from one evaluation."""
        f = self.linear_factors(params, x, s)
        return (f.a * f.h + (f.dt * f.x)[:, :, None] * f.b[:, None, :]).flatten(1), f

    def diagonal(self, params: Params, u: Tensor) -> Tensor:
        """``exp(Δ_t A)`` per (channel, state) coordinate."""
        a, _, _, _ = self._pieces(params, u)
        return a.flatten(1)

    def log_decay(self, params: Params, u: Tensor) -> Tensor:
        """``Δ_t A`` (exact, no exp/log round trip)."""
        _, dt, _, _, _ = self._split(params, u)
        return (dt[:, :, None] * params["A"].to(u.dtype)).flatten(1)

    def linear_factors(self, params: Params, x: Tensor, s: Tensor) -> _Factors:
        """``exp(Δ A)``, the rounded ``x`` and ``B``, ``Δ`` and the previous state."""
        a, xr, dt, br = self._pieces(params, x)
        return _Factors(a, xr, dt, br, s.unflatten(-1, a.shape[1:]))

    def product(
        self, params: Params, x: Tensor, s: Tensor, f: _Factors, m: Tensor, wrt: str, rev: bool
    ) -> Tensor:
        """The four products, ``O(E · N · k)`` each (see the module docstring)."""
        n, E, Ns = f.a.shape
        k = m.shape[-1]
        if wrt == "state":  # diagonal: J = Jᵀ
            return f.a.reshape(n, E * Ns, 1) * m
        # ∂h'/∂x_e = Δ_e B_n,  ∂h'/∂Δ_e = A a h + x_e B_n,  ∂h'/∂B_n = Δ_e x_e
        g_dt = params["A"].to(m.dtype) * f.a * f.h + f.x[:, :, None] * f.b[:, None, :]  # (n, E, Ns)
        dtb = f.dt[:, :, None] * f.b[:, None, :]
        dtx = f.dt * f.x
        if not rev:
            vx, vdt, vb, _, _ = torch.split(m, [E, E, Ns, Ns, E], dim=1)
            out = (
                dtb[..., None] * vx[:, :, None, :]
                + g_dt[..., None] * vdt[:, :, None, :]
                + dtx[:, :, None, None] * vb[:, None, :, :]
            )
            return out.reshape(n, E * Ns, k)
        U = m.reshape(n, E, Ns, k)
        gx = torch.einsum("nes,nesk->nek", dtb, U)
        gdt = torch.einsum("nes,nesk->nek", g_dt, U)
        gb = torch.einsum("ne,nesk->nsk", dtx, U)
        zeros_c = m.new_zeros((n, Ns, k))
        zeros_z = m.new_zeros((n, E, k))
        return torch.cat([gx, gdt, gb, zeros_c, zeros_z], dim=1)

    def vanishing_advice(self, params: Params, facts: dict[str, str]) -> list[str]:
        """Δ (``dt_proj.bias``) and ``A_log``, with this layer's values."""
        return advice.mamba(params, facts, *self.step_range)


ADAPTER = MambaAdapter()

__all__ = ["ADAPTER", "MambaAdapter", "mixer_weights"]
