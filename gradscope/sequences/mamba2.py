r"""Mamba-2 (SSD) mixers: ``transformers``' ``Mamba2Mixer``, replayed as a per-head scalar decay.

The module (Dao & Gu 2024, "Transformers are SSMs"; ``transformers.models.mamba2``) maps
hidden states ``h`` ``(B, T, d_model)`` to outputs of the same shape. With ``H`` heads of
``P`` channels (``head_dim``), ``G`` groups (``n_groups``) of ``N`` state channels
(``state_size``), the intermediate size ``E = H·P`` and the head ``h`` reading group
``g(h) = h // (H/G)``, its torch path computes, for every sequence::

    [z; xBC; dt] = W_in h_t (+ b_in)                       z: E, xBC: E + 2GN, dt: H
    [x; B; C]    = silu(causal depthwise conv1d(xBC))_t      x: (H, P), B, C: (G, N)
    Δ_{t,h}      = clamp(softplus(dt_{t,h} + dt_bias_h), dt_min, dt_max)
    a_{t,h}      = exp(Δ_{t,h} A_h),   A_h = -exp(A_log_h)
    S_t[h]       = a_{t,h} S_{t-1}[h] + Δ_{t,h} x_t[h] ⊗ B_t[g(h)]         (P, N) per head
    y_t[h]       = S_t[h] C_t[g(h)] + D_h x_t[h]
    out_t        = W_out (w ⊙ RMSNorm_groups(y_t ⊙ silu(z_t))) (+ b_out)

(the chunked "SSD" scan computes the same states in blocks of ``chunk_size`` steps). A
padding ``attention_mask`` zeroes ``h`` before ``W_in`` and the convolved ``xBC``, exactly as
the module does (padded steps then decay the state and add nothing).

Split for gradscope (:mod:`gradscope.sequences.base`):

* **drive** ``u_t`` ``(I,)``, ``I = 2E + H + 2GN``, in this order:
  ``[x_t (H·P, head-major) | Δ_t (H) | B_t (G·N) | C_t (G·N) | z_t (E)]``: the projection,
  the causal convolution and the softplus are all parallel over time.
* **state** ``s_t`` ``(D,)``, ``D = H·P·N``: ``S_t`` laid out ``(H, P, N)`` and flattened,
  the layout of ``transformers``' cached ``recurrent_state`` ``(B, H, P, N)``.
* **step**: the recurrence above, ``O(H·P·N)`` per step.
* **readout**: ``y_t``, the gated RMSNorm and ``W_out``; parallel over time.

Jacobians. The state Jacobian is ``J_t = diag(a_{t,h} I_{P·N})``: one scalar per head times
the identity (structure :data:`~gradscope.cells.base.SCALAR_IDENTITY`), so
:meth:`~Mamba2Adapter.diagonal` returns ``a_{t,h}`` repeated over the head's ``P·N``
coordinates and products cost ``O(D·k)`` for ``k`` columns. The input Jacobian
``K_t = ∂s_t/∂u_t`` (``∂a/∂Δ = A a``)::

    δS[h] = (A_h a_h S_{t-1}[h] + x[h] ⊗ B[g]) δΔ_h + Δ_h δx[h] ⊗ B[g] + Δ_h x[h] ⊗ δB[g]

with no dependence on ``C`` and ``z`` (those columns are zero); its transpose::

    ḡx[h] = Δ_h Ū[h] B[g]     ḡΔ_h = ⟨Ū[h], A_h a_h S_{t-1}[h] + x[h] ⊗ B[g]⟩
    ḡB[g] = Σ_{h ∈ g} Δ_h Ū[h]ᵀ x[h]

each ``O(H·P·N·k)`` per pair; no ``D × D`` or ``D × I`` matrix is ever formed.

Precision. ``A = -exp(A_log)`` is formed in float32, as the module forms it. In float64 the
module still runs its scan and its gated RMSNorm in float32 (``mamba2_chunk_scan`` casts
``x``, ``B``, ``C`` and ``Δ`` with ``.float()``, its gated RMSNorm normalises in
float32); the replay runs everything in the module's dtype, so a float64 module is replayed
to float32 rounding (measured below ``1e-6`` relative at toy sizes), not to float64 rounding:
:attr:`Mamba2Adapter.replay_tolerance` says so.

Relatives (:mod:`gradscope.sequences.mamba2_relatives`): Bamba's, Nemotron-H's, Zamba2's and
Granite-MoE-Hybrid's mixers run this same forward and are served by this adapter; FalconH1's
adds multipliers ``m_in`` (on ``h``) and ``m_vec`` (on ``W_in h``) and a norm that may come
after the gate or not at all: the optional numbers ``ssm_in_multiplier``, ``rms_norm`` and
``norm_before_gate`` (and the tensor ``mup_vector``) in ``params`` say so, and the drive and
readout here follow them.

Unsupported calls raise :class:`~gradscope.errors.UnsupportedModuleError`: a call that
continues from a cache holding this layer's state (a generation step;
:meth:`~Mamba2Adapter.initial_state`, called before the module runs, refuses it: record
with ``use_cache=False``; a fresh cache, as in a prefill, is fine), packed sequences
(``seq_idx``, ``cu_seq_lens_*``) and a convolution activation other than SiLU.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradscope.cells.base import SCALAR_IDENTITY, Params
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
    """Per-pair factors of the Mamba-2 Jacobians."""

    a: Tensor  # (N, H) decay exp(Δ A)
    delta: Tensor  # (N, H) Δ
    x: Tensor  # (N, H, P)
    b: Tensor  # (N, H, S) B_t of each head's group


def _flag(params: Params, name: str, default: bool) -> bool:
    """An optional 0/1 configuration number, ``default`` when absent."""
    return bool(scalar(params, name)) if name in params else default


class Mamba2Adapter(SequenceAdapter):
    """Adapter for ``transformers``' ``Mamba2Mixer`` (torch / chunked SSD path).

    State ``S`` ``(H, P, N)`` flattened (``D = H·P·N``); drive
    ``[x (H·P) | Δ (H) | B (G·N) | C (G·N) | z (H·P)]``. See :mod:`gradscope.sequences.mamba2`.
    """

    #: The config's name of the lower end of ``dt_bias``'s initial range (None: set at 1).
    step_min: str | None = "time_step_min"
    kind = "mamba2"
    state_names = ("ssm",)
    structure = SCALAR_IDENTITY
    config = {  # noqa: RUF012
        "num_heads": "count",
        "head_dim": "count",
        "n_groups": "count",
        "state_size": "count",
        "norm_group_size": "count",
        "norm_eps": "nonnegative",
        "dt_min": "nonnegative",
        "dt_max": "limit",
        # FalconH1 (gradscope.sequences.mamba2_relatives); absent: Mamba-2's values
        "ssm_in_multiplier?": "finite",  # h ← m h before W_in (1)
        "rms_norm?": "flag",  # the gated RMSNorm is there (1)
        "norm_before_gate?": "flag",  # RMSNorm(y) ⊙ silu(z) instead of RMSNorm(y ⊙ silu(z)) (0)
    }

    def check_params(self, params: Params) -> None:
        """:attr:`config`, groups dividing the heads, norm groups the width, Δ's limits."""
        super().check_params(params)
        H, P, G, _ = self._dims(params)
        if H % G or (H * P) % count(params, "norm_group_size"):
            raise ArgumentError(
                f"mamba2: n_groups = {G} must divide num_heads = {H} and norm_group_size = "
                f"{count(params, 'norm_group_size')} the width {H * P}"
            )
        if scalar(params, "dt_min") > scalar(params, "dt_max"):
            raise ArgumentError("mamba2: dt_min must not exceed dt_max")

    #: Relative replay tolerance per dtype of the module's output: float64 modules compute
    #: their scan and gated norm in float32 (see the module docstring).
    def replay_tolerance(self, params: Params, dtype: torch.dtype) -> float | None:
        """1e-5 for a float64 model: the module scans and normalises in float32 inside."""
        return 1e-5 if dtype == torch.float64 else None

    # ------------------------------------------------------------------ recording
    def module_params(self, module: nn.Module) -> Params:
        """The mixer's weights (detached) and its configuration numbers as 0-d tensors.

        ``A = -exp(A_log)`` is formed in float32, as the module forms it.

        Raises:
            UnsupportedModuleError: a convolution activation other than SiLU.
        """
        check_silu(module, "mamba2")
        lo, hi = (float(v) for v in module.time_step_limit)
        params: Params = {
            "in_proj.weight": module.in_proj.weight,
            "conv1d.weight": module.conv1d.weight,
            "dt_bias": module.dt_bias,
            "A": -torch.exp(module.A_log.float()),
            "D": module.D,
            "norm.weight": module.norm.weight,
            "out_proj.weight": module.out_proj.weight,
        }
        params.update(optional_biases(module))
        params = {k: v.detach() for k, v in params.items()}
        params.update(
            num_heads=torch.tensor(int(module.num_heads)),
            head_dim=torch.tensor(int(module.head_dim)),
            n_groups=torch.tensor(int(module.n_groups)),
            state_size=torch.tensor(int(module.ssm_state_size)),
            norm_group_size=torch.tensor(int(module.norm.group_size)),
            norm_eps=torch.tensor(float(module.norm.variance_epsilon), dtype=torch.float64),
            dt_min=torch.tensor(lo, dtype=torch.float64),
            dt_max=torch.tensor(hi, dtype=torch.float64),
        )
        return params

    def initial_state(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """None (zeros); refuses a call that continues a cached state (see the module doc).

        Raises:
            UnsupportedModuleError: the cache passed in already holds this layer's state.
        """
        refuse_carried_state(module, args, kwargs, "mamba2")
        return None

    @staticmethod
    def _dims(params: Params) -> tuple[int, int, int, int]:
        """``(H, P, G, N)``."""
        return (
            count(params, "num_heads"),
            count(params, "head_dim"),
            count(params, "n_groups"),
            count(params, "state_size"),
        )

    def state_sizes(self, params: Params) -> tuple[int, ...]:
        """``(H·P·N,)``."""
        H, P, _, N = self._dims(params)
        return (H * P * N,)

    def input_size(self, params: Params) -> int:
        """``I = 2·H·P + H + 2·G·N``."""
        H, P, G, N = self._dims(params)
        return 2 * H * P + H + 2 * G * N

    def _split(self, params: Params, u: Tensor) -> tuple[Tensor, ...]:
        """``x (…, H, P), Δ (…, H), B (…, G, N), C (…, G, N), z (…, H·P)`` from a drive."""
        H, P, G, N = self._dims(params)
        x, dt, b, c, z = torch.split(u, [H * P, H, G * N, G * N, H * P], dim=-1)
        lead = u.shape[:-1]
        return x.reshape(*lead, H, P), dt, b.reshape(*lead, G, N), c.reshape(*lead, G, N), z

    def _heads(self, params: Params, g: Tensor) -> Tensor:
        """Per-group tensors ``(…, G, N)`` expanded to the heads ``(…, H, N)``."""
        H, _, G, _ = self._dims(params)
        return g.repeat_interleave(H // G, dim=-2)

    def drive(self, params: Params, args: tuple, kwargs: dict[str, Any]) -> Drive:
        """``u`` ``(T, B, I)`` from the mixer's ``hidden_states`` and ``attention_mask``.

        The input projection, causal convolution (with SiLU) and the step size
        ``Δ = clamp(softplus(dt + dt_bias))``, in parallel over time in the module's dtype.
        The initial state is zero.

        A cache in the arguments is not read: the hook sees it after the call updated it. A
        fresh one (a prefill) changes nothing; one that carried a state was refused by
        :meth:`initial_state` before the call.

        Raises:
            UnsupportedModuleError: packed sequences (see the module docstring).
        """
        hidden, mask = call_arguments(args, kwargs, "mamba2")
        H, P, G, N = self._dims(params)
        E = H * P
        h = mask_padding(hidden, mask)
        if "ssm_in_multiplier" in params:
            h = h * scalar(params, "ssm_in_multiplier")
        proj = F.linear(h, params["in_proj.weight"], params.get("in_proj.bias"))
        if "mup_vector" in params:  # FalconH1's per-output multipliers of W_in
            proj = proj * params["mup_vector"]
        z, xbc, dt = torch.split(proj, [E, E + 2 * G * N, H], dim=-1)
        xbc = causal_conv_silu(xbc, params["conv1d.weight"], params.get("conv1d.bias"))
        xbc = mask_padding(xbc, mask)
        delta = F.softplus(dt + params["dt_bias"].to(dt.dtype))
        delta = torch.clamp(delta, min=scalar(params, "dt_min"), max=scalar(params, "dt_max"))
        x, bc = xbc[..., :E], xbc[..., E:]
        u = torch.cat([x, delta, bc, z], dim=-1)
        return Drive(u.transpose(0, 1).contiguous())

    def readout(self, params: Params, u: Tensor, states: Tensor) -> Tensor:
        """The mixer's output ``(B, T, d_model)`` from ``u`` and the states ``S_1 … S_T``.

        ``y = S C + D x``, then ``W_out (w ⊙ RMSNorm_groups(y ⊙ silu(z)))`` (FalconH1:
        ``W_out (w ⊙ RMSNorm_groups(y) ⊙ silu(z))`` or ``W_out (y ⊙ silu(z))``, see ``config``).
        """
        H, P, _, N = self._dims(params)
        x, _, _, c, z = self._split(params, u)
        S = states[1:].reshape(states.shape[0] - 1, states.shape[1], H, P, N)
        y = torch.einsum("tbhpn,tbhn->tbhp", S, self._heads(params, c))
        y = y + params["D"][:, None] * x
        y = y.flatten(-2)
        if not _flag(params, "rms_norm", True):  # FalconH1 without its norm
            y = y * F.silu(z)
        else:
            before = _flag(params, "norm_before_gate", False)
            if not before:
                y = y * F.silu(z)
            yg = y.unflatten(-1, (-1, count(params, "norm_group_size")))
            yg = yg * torch.rsqrt(yg.pow(2).mean(-1, keepdim=True) + scalar(params, "norm_eps"))
            y = params["norm.weight"] * yg.flatten(-2)
            if before:
                y = y * F.silu(z)
        out = F.linear(y, params["out_proj.weight"], params.get("out_proj.bias"))
        return out.transpose(0, 1)

    # ------------------------------------------------------------------ maths
    def _decay(self, params: Params, delta: Tensor) -> Tensor:
        """``a = exp(Δ A)`` ``(…, H)``."""
        return torch.exp(delta * params["A"].to(delta.dtype))

    def step(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """``S_t[h] = a_h S_{t-1}[h] + Δ_h x[h] ⊗ B[g(h)]`` on ``(N, ·)`` pairs; ``O(H·P·N)``."""
        H, P, _, N = self._dims(params)
        xs, delta, b, _, _ = self._split(params, x)
        a = self._decay(params, delta)
        S = s.reshape(-1, H, P, N)
        bh = self._heads(params, b)
        new = a[:, :, None, None] * S + (delta[:, :, None] * xs)[..., None] * bh[:, :, None, :]
        return new.reshape(s.shape)

    def diagonal(self, params: Params, u: Tensor) -> Tensor:
        """``a_{t,h} = exp(Δ_{t,h} A_h)``, repeated over each head's ``P·N`` coordinates."""
        _, P, _, N = self._dims(params)
        _, delta, _, _, _ = self._split(params, u)
        return self._decay(params, delta).repeat_interleave(P * N, dim=-1)

    def log_decay(self, params: Params, u: Tensor) -> Tensor:
        """``ln a_{t,h} = Δ_{t,h} A_h`` repeated over the head's coordinates (no ``log(exp)``)."""
        _, P, _, N = self._dims(params)
        _, delta, _, _, _ = self._split(params, u)
        return (delta * params["A"].to(delta.dtype)).repeat_interleave(P * N, dim=-1)

    def linear_factors(self, params: Params, x: Tensor, s: Tensor) -> _Factors:
        """``a, Δ, x, B`` per pair (``B`` expanded to the heads)."""
        xs, delta, b, _, _ = self._split(params, x)
        return _Factors(self._decay(params, delta), delta, xs, self._heads(params, b))

    def product(self, params, x, s, factors, m, wrt, rev):  # noqa: D102 (see the module docstring)
        H, P, G, N = self._dims(params)
        n, k = m.shape[0], m.shape[-1]
        a, delta, xs, bh = factors
        if wrt == "state":  # J = Jᵀ = diag(a_h) per head
            out = a[:, :, None, None] * m.reshape(n, H, P * N, k)
            return out.reshape(n, H * P * N, k)
        S = s.reshape(n, H, P, N)
        A = params["A"].to(s.dtype)
        # ∂S/∂Δ: A a S_{t-1} + x ⊗ B, (n, H, P, N)
        coef = (A * a)[:, :, None, None] * S + xs[..., None] * bh[:, :, None, :]
        if not rev:
            dx, dd, db, _, _ = torch.split(m, [H * P, H, G * N, G * N, H * P], dim=1)
            dx = dx.reshape(n, H, P, k)
            dbh = db.reshape(n, G, N, k).repeat_interleave(H // G, dim=1)
            out = coef[..., None] * dd[:, :, None, None, :]
            out = out + (delta[:, :, None, None] * bh[:, :, None, :])[..., None] * dx[:, :, :, None]
            out = out + (delta[:, :, None] * xs)[:, :, :, None, None] * dbh[:, :, None]
            return out.reshape(n, H * P * N, k)
        U = m.reshape(n, H, P, N, k)
        gx = delta[:, :, None, None] * torch.einsum("mhpsk,mhs->mhpk", U, bh)
        gd = torch.einsum("mhpsk,mhps->mhk", U, coef)
        gb = torch.einsum("mhpsk,mhp->mhsk", U, delta[:, :, None] * xs)
        gb = gb.reshape(n, G, H // G, N, k).sum(dim=2)
        zeros = m.new_zeros((n, G * N + H * P, k))
        return torch.cat([gx.reshape(n, H * P, k), gd, gb.reshape(n, G * N, k), zeros], dim=1)

    def vanishing_advice(self, params: Params, facts: dict[str, str]) -> list[str]:
        """``dt_bias``, ``A_log`` and ``time_step_limit``, with this layer's values."""
        return advice.mamba2(params, facts, self.step_min)


ADAPTER = Mamba2Adapter()

#: The module this adapter was written for, by qualified name.
MODULE_QUALNAME = "transformers.models.mamba2.modeling_mamba2.Mamba2Mixer"

#: The classes this module serves, by qualified name (``transformers`` is not imported here).
SERVES = {MODULE_QUALNAME: ADAPTER}

__all__ = ["ADAPTER", "MODULE_QUALNAME", "SERVES", "Mamba2Adapter"]
