r"""Mamba's selective state space layer (``MambaMixer`` of Hugging Face ``transformers``).

For every channel ``e`` of the inner width ``E`` and state index ``n < N`` (``d_state``):

    h_t[e, n] = exp(Δ_t[e] · A[e, n]) · h_{t-1}[e, n]  +  Δ_t[e] · B_t[g(e), n] · x_t[e]
    y_t[e]    = Σ_n C_t[g(e), n] · h_t[e, n]  +  D[e] · x_t[e]
    out_t     = W_out (y_t ⊙ silu(z_t)) + b_out

with ``A = −exp(A_log)`` (formed in float32, as the module does), and from the layer's input
``u_t``: ``(x̃_t, z_t) = W_in u_t``, ``x_t = silu(causal_conv1d(x̃)_t)`` (a depthwise causal
convolution over the last ``d_conv`` steps), ``(δ_t, B_t, C_t) = W_x x_t``,
``Δ_t = softplus(W_Δ δ_t + b_Δ)``. ``g(e)`` is the SSM head of channel ``e``: a plain Mamba
has one (``G = 1``, every channel reads the same ``B_t``, ``C_t``); Zamba's mixer splits the
channels into ``G`` heads of ``E/G`` with their own ``W_x``, ``W_Δ`` (see
:mod:`gradscope.sequences.mamba_relatives`, which also has FalconMamba's and Jamba's RMS norms
on ``δ``, ``B`` and ``C``). The state is ``h`` (``D = E · N`` numbers, index ``e · N + n``);
everything else is computed in parallel over time and forms the drive

    u_t = [x_t (E), Δ_t (E), B_t (G·N), C_t (G·N), z_t (E)]        (I = 3E + 2GN),

so the input Jacobian is the state's sensitivity to the drive (``C`` and ``z`` only reach the
output: their columns are zero). The state Jacobian is ``diag(exp(Δ_t ⊙ A))``: diagonal and
input dependent ("selective"), every eigenvalue in (0, 1).

Cost of every product per step and sequence: ``O(E · N · k)`` for ``k`` columns, the size of
the state; no ``D × D`` matrix is ever formed.

Like the module, the state update reads ``B_t`` and ``x_t`` rounded to float32 (it calls
``.float()`` on them), and ``D`` and ``b_Δ`` too, also in a float64 model; the replay does
the same, so a float64 model is reproduced to float64 rounding.

Unsupported calls raise :class:`~gradscope.errors.UnsupportedModuleError`: a call that
continues from a cache holding this layer's state (record with ``use_cache=False``), packed
sequences, and a convolution activation other than SiLU.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradscope.cells.base import DIAGONAL, Params
from gradscope.errors import ArgumentError
from gradscope.sequences import advice
from gradscope.sequences._hf_mixers import (
    call_arguments,
    causal_conv_silu,
    check_silu,
    mask_padding,
    optional_biases,
    refuse_carried_state,
)
from gradscope.sequences.base import Drive, SequenceAdapter, count, scalar


class _Factors(NamedTuple):
    a: Tensor  # (N, E, Ns) exp(Δ A)
    x: Tensor  # (N, E) x rounded as in the update
    dt: Tensor  # (N, E)
    b: Tensor  # (N, E, Ns) B of each channel's head, rounded as in the update
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


def rms_norm_float32(x: Tensor, eps: float, weight: Tensor | None = None) -> Tensor:
    """``transformers``' RMSNorm: normalised in float32, cast back, then ``weight ⊙`` (if any)."""
    h = x.float()
    h = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return h if weight is None else weight * h


class MambaAdapter(SequenceAdapter):
    """``transformers``' ``MambaMixer`` (Mamba-1): a diagonal selective scan.

    Also the base of its relatives (:mod:`gradscope.sequences.mamba_relatives`): they read
    other module layouts in :meth:`module_params`; the optional configuration numbers below
    say what their drive adds (a relative never changes :meth:`step` or the products).
    """

    #: The config's names of the range the Δ bias is initialised in (``MambaConfig``).
    step_range: tuple[str, str] | None = ("time_step_min", "time_step_max")
    kind = "mamba"
    state_names = ("h",)
    structure = DIAGONAL
    #: The state update reads ``x_t`` and ``B_t`` rounded to float32 (``transformers`` calls
    #: ``.float()`` on them); a subclass for a module that does not round sets it False.
    rounds_update_inputs = True
    config = {  # noqa: RUF012
        "ssm_heads?": "count",  # G: heads with their own B, C (Zamba); 1 if absent
        "in_proj_interleaved?": "flag",  # W_in rows alternate x, z per channel (Zamba)
        "bcdt_norm_eps?": "nonnegative",  # RMS norms on δ, B, C (FalconMamba, Jamba)
    }

    def check_params(self, params: Params) -> None:
        """:attr:`config`, and the heads dividing the width."""
        super().check_params(params)
        E, _ = self._dims(params)
        G = self._heads(params)
        if E % G:
            raise ArgumentError(f"mamba: ssm_heads = {G} must divide the width E = {E}")

    # ------------------------------------------------------------------ layout
    def _dims(self, params: Params) -> tuple[int, int]:
        E, Ns = params["A"].shape
        return int(E), int(Ns)

    @staticmethod
    def _heads(params: Params) -> int:
        return count(params, "ssm_heads") if "ssm_heads" in params else 1

    def state_sizes(self, params: Params) -> tuple[int, ...]:
        """``(E · N,)``: the state ``h`` flattened, channel-major."""
        E, Ns = self._dims(params)
        return (E * Ns,)

    def input_size(self, params: Params) -> int:
        """``3E + 2GN``: the drive ``[x, Δ, B, C, z]``."""
        E, Ns = self._dims(params)
        return 3 * E + 2 * self._heads(params) * Ns

    def _split(self, params: Params, u: Tensor) -> tuple[Tensor, ...]:
        E, Ns = self._dims(params)
        GN = self._heads(params) * Ns
        return torch.split(u, [E, E, GN, GN, E], dim=-1)

    def _per_channel(self, params: Params, g: Tensor) -> Tensor:
        """``(…, G·N)`` per head -> ``(…, E, N)`` per channel (each channel its head's)."""
        E, Ns = self._dims(params)
        G = self._heads(params)
        return g.unflatten(-1, (G, Ns)).repeat_interleave(E // G, dim=-2)

    # ------------------------------------------------------------------ recording
    def module_params(self, module: nn.Module) -> Params:
        """The mixer's weights; ``A = −exp(A_log)``, ``D`` and ``b_Δ`` in float32 as the module."""
        check_silu(module, self.kind)
        out = mixer_weights(module)
        out["dt_proj.bias"] = module.dt_proj.bias.float()
        out["D"] = module.D.float()
        return {k: v.detach() for k, v in out.items()}

    @staticmethod
    def _with_biases(module: nn.Module, out: Params) -> Params:
        """``out`` with the optional biases that are present, detached (for the relatives)."""
        return {k: v.detach() for k, v in {**out, **optional_biases(module)}.items()}

    def initial_state(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """Zeros; a call that continues a cached state is refused (see the message)."""
        refuse_carried_state(module, args, kwargs, self.kind)
        return None

    def _selective(self, params: Params, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(Δ before the softplus (B, T, E), B (B, T, G·N), C (B, T, G·N))`` from ``x``."""
        E, Ns = self._dims(params)
        G = self._heads(params)
        W = params["x_proj.weight"]
        if W.ndim == 2:  # one head: (R + 2N, E), dt_proj (E, R)
            rank = params["dt_proj.weight"].shape[-1]
            dt_r, b, c = torch.split(F.linear(x, W), [rank, Ns, Ns], dim=-1)
            dt_r, b, c = self._norms(params, dt_r, b, c)
            dt = (params["dt_proj.weight"] @ dt_r.transpose(1, 2)).transpose(1, 2)
            return dt, b, c
        # per head (Zamba): W (G, R + 2N, E/G), dt_proj (G, E/G, R)
        rank = params["dt_proj.weight"].shape[-1]
        xh = x.unflatten(-1, (G, E // G)).permute(2, 0, 3, 1)  # (G, B, E/G, T)
        ssm = (W[:, None] @ xh).transpose(-1, -2)  # (G, B, T, R + 2N)
        dt_r, b, c = torch.split(ssm, [rank, Ns, Ns], dim=-1)
        dt_r, b, c = self._norms(params, dt_r, b, c)
        dt = params["dt_proj.weight"][:, None] @ dt_r.transpose(-1, -2)  # (G, B, E/G, T)
        dt = dt.permute(1, 3, 0, 2).flatten(2)  # (B, T, E)
        b, c = (m.permute(1, 2, 0, 3).flatten(2) for m in (b, c))  # (B, T, G·N)
        return dt, b, c

    def _norms(self, params: Params, dt_r: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, ...]:
        """FalconMamba's / Jamba's RMS norms on ``δ``, ``B``, ``C`` (if the params have them)."""
        if "bcdt_norm_eps" not in params:
            return dt_r, b, c
        eps = scalar(params, "bcdt_norm_eps")
        return tuple(
            rms_norm_float32(m, eps, params.get(f"{name}_layernorm.weight"))
            for m, name in ((dt_r, "dt"), (b, "b"), (c, "c"))
        )

    def drive(self, params: Params, args: tuple, kwargs: dict[str, Any]) -> Drive:
        """``[x, Δ, B, C, z]`` of every step, time-major, as the module computes them.

        Raises:
            UnsupportedModuleError: packed sequences, or no ``(B, T, hidden)`` input.
        """
        hidden, mask = call_arguments(args, kwargs, self.kind)
        E, _ = self._dims(params)
        h = mask_padding(hidden, mask)
        proj = F.linear(h, params["in_proj.weight"], params.get("in_proj.bias"))  # (B, T, 2E)
        if "in_proj_interleaved" in params and scalar(params, "in_proj_interleaved"):
            xs, z = proj[..., 0::2], proj[..., 1::2]
        else:
            xs, z = proj[..., :E], proj[..., E:]
        x = causal_conv_silu(xs, params["conv1d.weight"], params.get("conv1d.bias"))
        x = mask_padding(x, mask)
        dt, b, c = self._selective(params, x)
        dt = F.softplus(dt + params["dt_proj.bias"].reshape(-1).to(dt.dtype))
        u = torch.cat([x, dt, b, c, z], dim=-1)
        return Drive(u.transpose(0, 1).contiguous())

    def readout(self, params: Params, u: Tensor, states: Tensor) -> Tensor:
        """``W_out((C_t·h_t + D ⊙ x_t) ⊙ silu(z_t))``, batch-first like the module."""
        x, _, _, c, z = self._split(params, u)
        E, Ns = self._dims(params)
        h = states[1:].unflatten(-1, (E, Ns))
        y = torch.einsum("tben,tben->tbe", h, self._per_channel(params, c))
        y = y + x * params["D"].to(x.dtype)
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
        return a, x, dt, self._per_channel(params, b)

    def step(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """``h_t = exp(Δ_t A) ⊙ h_{t−1} + (Δ_t x_t) ⊗ B_t``."""
        a, xr, dt, br = self._pieces(params, x)
        h = s.unflatten(-1, a.shape[1:])
        return (a * h + (dt * xr)[:, :, None] * br).flatten(1)

    def step_factors(self, params: Params, x: Tensor, s: Tensor) -> tuple[Tensor, Any]:
        """The step and its linear factors from one evaluation."""
        f = self.linear_factors(params, x, s)
        return (f.a * f.h + (f.dt * f.x)[:, :, None] * f.b).flatten(1), f

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
        G = self._heads(params)
        k = m.shape[-1]
        if wrt == "state":  # diagonal: J = Jᵀ
            return f.a.reshape(n, E * Ns, 1) * m
        # ∂h'/∂x_e = Δ_e B_n,  ∂h'/∂Δ_e = A a h + x_e B_n,  ∂h'/∂B_{g(e), n} = Δ_e x_e
        g_dt = params["A"].to(m.dtype) * f.a * f.h + f.x[:, :, None] * f.b  # (n, E, Ns)
        dtb = f.dt[:, :, None] * f.b
        dtx = f.dt * f.x
        if not rev:
            vx, vdt, vb, _, _ = torch.split(m, [E, E, G * Ns, G * Ns, E], dim=1)
            vb = vb.reshape(n, G, Ns, k).repeat_interleave(E // G, dim=1)  # (n, E, Ns, k)
            out = (
                dtb[..., None] * vx[:, :, None, :]
                + g_dt[..., None] * vdt[:, :, None, :]
                + dtx[:, :, None, None] * vb
            )
            return out.reshape(n, E * Ns, k)
        U = m.reshape(n, E, Ns, k)
        gx = torch.einsum("nes,nesk->nek", dtb, U)
        gdt = torch.einsum("nes,nesk->nek", g_dt, U)
        gb = (dtx[:, :, None, None] * U).reshape(n, G, E // G, Ns, k).sum(dim=2)
        zeros_c = m.new_zeros((n, G * Ns, k))
        zeros_z = m.new_zeros((n, E, k))
        return torch.cat([gx, gdt, gb.reshape(n, G * Ns, k), zeros_c, zeros_z], dim=1)

    def vanishing_advice(self, params: Params, facts: dict[str, str]) -> list[str]:
        """Δ (``dt_proj.bias``) and ``A_log``, with this layer's values."""
        step_min, step_max = self.step_range or (None, None)
        per_head = params["dt_proj.weight"].ndim == 3  # Zamba's (G, E/G, R): dt_proj_bias
        name = "dt_proj_bias" if per_head else "dt_proj.bias"
        return advice.mamba(params, facts, step_min, step_max, name)


ADAPTER = MambaAdapter()

#: The classes this module serves, by qualified name (``transformers`` is not imported here).
SERVES = {"transformers.models.mamba.modeling_mamba.MambaMixer": ADAPTER}

__all__ = ["ADAPTER", "SERVES", "MambaAdapter", "mixer_weights", "rms_norm_float32"]
