r"""Gated DeltaNet: ``transformers``' ``Qwen3NextGatedDeltaNet`` (torch gated delta rule).

The linear-attention layer of Qwen3-Next (Yang, Kautz & Hatamizadeh 2025, "Gated Delta
Networks"). With ``H_k`` key heads and ``H_v`` value heads (``r = H_v / H_k`` value heads
share one key head: value head ``h`` reads key head ``h // r``), key size ``d_k`` and value
size ``d_v``, the module's torch path (``torch_chunk_gated_delta_rule``, or
``torch_recurrent_gated_delta_rule`` for one cached token) computes, per sequence::

    [q; k; v; z] = W_qkvz h_t,   [b; a] = W_ba h_t             (regrouped per key head)
    [q; k; v]    = silu(causal depthwise conv1d([q; k; v]))_t    (no bias)
    q̂ = q / sqrt(|q|² + 1e-6),   k̂ = k / sqrt(|k|² + 1e-6)      (l2norm, per head)
    β_{t,h} = sigmoid(b_{t,h}),   g_{t,h} = -exp(A_log_h) softplus(a_{t,h} + dt_bias_h)
    α_{t,h} = exp(g_{t,h})
    S_t[h] = α S_{t-1}[h] + β k̂ (v - α S_{t-1}[h]ᵀ k̂)ᵀ
           = α (I - β k̂ k̂ᵀ) S_{t-1}[h] + β k̂ vᵀ                 S[h]: (d_k, d_v)
    o_t[h] = S_t[h]ᵀ q̂ / sqrt(d_k)
    out_t  = W_out (w ⊙ RMSNorm_{d_v}(o_t[h]) ⊙ silu(z_t[h]))_h  (norm before the gate)

``k̂`` multiplies the state from the left: the state is ``(d_k, d_v)`` per value head, and
``(I - β k̂ k̂ᵀ)`` acts on its key index (``transformers``' layout; the DeltaNet papers write
the transpose ``S (I - β k kᵀ)`` with ``S`` of shape ``(d_v, d_k)``). A padding
``attention_mask`` zeroes ``h`` first, as the module does.

Split for gradscope (:mod:`gradscope.sequences.base`):

* **drive** ``u_t`` ``(I,)``, ``I = 2 H_k d_k + 2 H_v d_v + 2 H_v``, in this order:
  ``[q̂ (H_k·d_k) | k̂ (H_k·d_k) | v (H_v·d_v) | g (H_v) | β (H_v) | z (H_v·d_v)]``, all
  computed in parallel over time (``q̂``, ``k̂`` normalised, not yet scaled; ``g = ln α``).
* **state** ``s_t`` ``(D,)``, ``D = H_v·d_k·d_v``: ``S_t`` laid out ``(H_v, d_k, d_v)`` and
  flattened, the layout of ``transformers``' cached ``recurrent_state``.
* **step**: the update above, ``O(H_v·d_k·d_v)`` per step (a rank-one correction).
* **readout**: ``o_t``, the gated RMSNorm and ``W_out``; parallel over time.

Jacobians. Per value head the state Jacobian is ``J_t = α (I - β k̂ k̂ᵀ) ⊗ I_{d_v}``: block
diagonal over heads, symmetric (``Jᵀ = J``), not diagonal (structure
:data:`~gradscope.cells.base.BLOCK`; :meth:`~DeltaNetAdapter.diagonal` is None). Its
eigenvalues are ``α`` (multiplicity ``d_k - 1``) and ``α (1 - β |k̂|²)`` per head and value
channel. Products never form it: ``J V = α (V - β k̂ (k̂ᵀ V))``, ``O(d_k·d_v·k)`` per head for
``k`` columns. With ``δ = v - α Sᵀ k̂`` and ``P = α (I - β k̂ k̂ᵀ) S`` (``S = S_{t-1}``) the
input Jacobian ``K_t = ∂s_t/∂u_t`` and its transpose are::

    δS = P δg + k̂ δᵀ δβ + β k̂ δvᵀ + β δk̂ δᵀ - α β k̂ (δk̂ᵀ S)
    ḡv = β Ūᵀ k̂     ḡg = ⟨Ū, P⟩     ḡβ = k̂ᵀ Ū δ     ḡk̂ = Σ_{h→key head} β Ū δ - α β S Ūᵀ k̂

(``q̂`` and ``z`` only reach the output: their columns are zero), again ``O(d_k·d_v·k)`` per
head.

Precision. The module forms ``exp(A_log)`` in float32 and rounds ``a`` to float32 before
the softplus; the drive does the same, so ``g`` is the module's to the last bit. But the
module also runs the delta rule in float32 whatever its dtype (it casts ``q``, ``k``, ``v``,
``g`` and ``β`` with ``.to(torch.float32)``) and normalises in its gated RMSNorm in float32,
while the replay runs in the module's dtype: a float64 module is replayed to float32
rounding (measured about ``1e-7`` relative at toy sizes), not to float64 rounding
(:attr:`DeltaNetAdapter.replay_tolerance`).

Relatives (:mod:`gradscope.sequences.deltanet_relatives`: Qwen3.5, Qwen4-Exp, LARA,
OLMo-Hybrid) read ``q, k, v, z, b, a`` from other projections (:meth:`DeltaNetAdapter.project`)
and may set ``beta_scale`` (``β = scale · sigmoid(b)``) and ``gate_sigmoid`` (an output gate
``sigmoid(z)``); the rest is this module's.

Unsupported calls raise :class:`~gradscope.errors.UnsupportedModuleError`: a call that
continues from a cache holding this layer's state (a generation step; refused by
:meth:`~DeltaNetAdapter.initial_state` before the module runs: record with
``use_cache=False``; a fresh cache, as in a prefill, is fine), packed sequences
(``cu_seq_lens_*``, which the torch path ignores) and an activation other than SiLU.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradscope.cells.base import BLOCK, Params
from gradscope.errors import ArgumentError
from gradscope.sequences import advice
from gradscope.sequences._hf_mixers import (
    call_arguments,
    causal_conv_silu,
    check_silu,
    mask_padding,
    refuse_carried_state,
)
from gradscope.sequences.base import Drive, SequenceAdapter, count, scalar

#: ``eps`` of ``transformers``' ``l2norm`` (a constant of the code, not of the config).
L2NORM_EPS = 1e-6


class _Factors(NamedTuple):
    """Per-pair factors of the gated delta rule's Jacobians (value heads ``H``)."""

    alpha: Tensor  # (N, H) α = exp(g)
    beta: Tensor  # (N, H)
    k: Tensor  # (N, H, d_k) normalised key of each value head
    delta: Tensor  # (N, H, d_v) v - α Sᵀ k
    decayed: Tensor  # (N, H, d_k, d_v) P = α (I - β k kᵀ) S


def l2normalize(x: Tensor, eps: float) -> Tensor:
    """``x / sqrt(|x|² + eps)`` over the last dimension (``transformers``' ``l2norm``)."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def config_numbers(module: nn.Module, norm: nn.Module) -> Params:
    """Head counts, head sizes and epsilons as 0-d tensors (``norm``: the layer's gated norm)."""
    return {
        "num_k_heads": torch.tensor(int(module.num_k_heads)),
        "num_v_heads": torch.tensor(int(module.num_v_heads)),
        "head_k_dim": torch.tensor(int(module.head_k_dim)),
        "head_v_dim": torch.tensor(int(module.head_v_dim)),
        "norm_eps": torch.tensor(float(norm.variance_epsilon), dtype=torch.float64),
        "l2_eps": torch.tensor(L2NORM_EPS, dtype=torch.float64),
    }


class DeltaNetAdapter(SequenceAdapter):
    """Adapter for ``transformers``' ``Qwen3NextGatedDeltaNet`` (torch gated delta rule).

    State ``S`` ``(H_v, d_k, d_v)`` flattened; drive
    ``[q̂ | k̂ | v | g | β | z]``. See :mod:`gradscope.sequences.deltanet`.
    """

    kind = "gated_deltanet"
    state_names = ("S",)
    structure = BLOCK
    config = {  # noqa: RUF012
        "num_k_heads": "count",
        "num_v_heads": "count",
        "head_k_dim": "count",
        "head_v_dim": "count",
        "norm_eps": "nonnegative",
        "l2_eps": "nonnegative",
        # relatives (gradscope.sequences.deltanet_relatives); absent: Qwen3-Next's values
        "beta_scale?": "positive",  # β = scale · sigmoid(b) (1)
        "gate_sigmoid?": "flag",  # the output gate is sigmoid(z), not silu(z) (0)
    }

    def check_params(self, params: Params) -> None:
        """:attr:`config`, and key heads dividing the value heads."""
        super().check_params(params)
        hk, hv, _, _ = self._dims(params)
        if hv % hk:
            raise ArgumentError(
                f"gated_deltanet: num_k_heads = {hk} must divide num_v_heads = {hv} (each key "
                "head serves consecutive value heads)"
            )

    #: Relative replay tolerance per dtype of the module's output: float64 modules run the
    #: delta rule and the gated norm in float32 (see the module docstring).
    def replay_tolerance(self, params: Params, dtype: torch.dtype) -> float | None:
        """1e-5 for a float64 model: the module scans and normalises in float32 inside."""
        return 1e-5 if dtype == torch.float64 else None

    # ------------------------------------------------------------------ recording
    def module_params(self, module: nn.Module) -> Params:
        """The layer's weights (detached) and its configuration numbers as 0-d tensors.

        ``A = exp(A_log)`` (the decay rate, positive) is formed in float32, as the module
        forms it; ``g = -A softplus(a + dt_bias)``.

        Raises:
            UnsupportedModuleError: an activation other than SiLU.
        """
        check_silu(module, "gated_deltanet")
        params: Params = {
            "in_proj_qkvz.weight": module.in_proj_qkvz.weight,
            "in_proj_ba.weight": module.in_proj_ba.weight,
            "conv1d.weight": module.conv1d.weight,
            "dt_bias": module.dt_bias,
            "A": torch.exp(module.A_log.float()),
            "norm.weight": module.norm.weight,
            "out_proj.weight": module.out_proj.weight,
        }
        for name, p in (
            ("in_proj_qkvz.bias", getattr(module.in_proj_qkvz, "bias", None)),
            ("in_proj_ba.bias", getattr(module.in_proj_ba, "bias", None)),
            ("conv1d.bias", getattr(module.conv1d, "bias", None)),
            ("out_proj.bias", getattr(module.out_proj, "bias", None)),
        ):
            if p is not None:
                params[name] = p
        params = {k: v.detach() for k, v in params.items()}
        params.update(config_numbers(module, module.norm))
        return params

    def initial_state(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """None (zeros); refuses a call that continues a cached state (see the module doc).

        Raises:
            UnsupportedModuleError: the cache passed in already holds this layer's state.
        """
        refuse_carried_state(module, args, kwargs, "gated_deltanet")
        return None

    @staticmethod
    def _dims(params: Params) -> tuple[int, int, int, int]:
        """``(H_k, H_v, d_k, d_v)``."""
        return (
            count(params, "num_k_heads"),
            count(params, "num_v_heads"),
            count(params, "head_k_dim"),
            count(params, "head_v_dim"),
        )

    def state_sizes(self, params: Params) -> tuple[int, ...]:
        """``(H_v·d_k·d_v,)``."""
        _, Hv, dk, dv = self._dims(params)
        return (Hv * dk * dv,)

    def input_size(self, params: Params) -> int:
        """``I = 2 H_k d_k + 2 H_v d_v + 2 H_v``."""
        Hk, Hv, dk, dv = self._dims(params)
        return 2 * Hk * dk + 2 * Hv * dv + 2 * Hv

    def _split(self, params: Params, u: Tensor) -> tuple[Tensor, ...]:
        """The drive's parts, key heads expanded to the value heads.

        ``q̂, k̂ (…, H_v, d_k)``, ``v (…, H_v, d_v)``, ``g, β (…, H_v)``, ``z (…, H_v, d_v)``.
        """
        Hk, Hv, dk, dv = self._dims(params)
        q, k, v, g, beta, z = torch.split(u, [Hk * dk, Hk * dk, Hv * dv, Hv, Hv, Hv * dv], -1)
        lead, r = u.shape[:-1], Hv // Hk
        q = q.reshape(*lead, Hk, dk).repeat_interleave(r, dim=-2)
        k = k.reshape(*lead, Hk, dk).repeat_interleave(r, dim=-2)
        return q, k, v.reshape(*lead, Hv, dv), g, beta, z.reshape(*lead, Hv, dv)

    def drive(self, params: Params, args: tuple, kwargs: dict[str, Any]) -> Drive:
        """``u`` ``(T, B, I)`` from the layer's ``hidden_states`` and ``attention_mask``.

        Projections, the causal convolution (with SiLU), the l2 normalisation of ``q`` and
        ``k``, ``g`` and ``β``: in parallel over time, in the module's dtype. The initial
        state is zero. A cache in the arguments is not read (see
        :meth:`~gradscope.sequences.mamba2.Mamba2Adapter.drive`). Other keyword arguments
        (``chunk_size`` of the chunked rule, ``use_cache``) do not change the recurrence.

        Raises:
            UnsupportedModuleError: packed sequences (see the module docstring).
        """
        hidden, mask = call_arguments(args, kwargs, self.kind)
        Hk, Hv, dk, dv = self._dims(params)
        h = mask_padding(hidden, mask)
        B, T = h.shape[:2]
        qkv, z, b, a = self.project(params, h)
        qkv = causal_conv_silu(qkv, params["conv1d.weight"], params.get("conv1d.bias"))
        q, k, v = torch.split(qkv, [Hk * dk, Hk * dk, Hv * dv], dim=-1)
        eps = scalar(params, "l2_eps")
        q = l2normalize(q.reshape(B, T, Hk, dk), eps).reshape(B, T, -1)
        k = l2normalize(k.reshape(B, T, Hk, dk), eps).reshape(B, T, -1)
        beta = torch.sigmoid(b)
        if "beta_scale" in params:  # OLMo-Hybrid's allow_neg_eigval: β in (0, 2)
            beta = beta * scalar(params, "beta_scale")
        # The module rounds a to float32 (a.float()) before adding dt_bias; so does the drive
        # (values only: nothing is differentiated through the drive).
        a = a.float().to(a.dtype)
        g = -params["A"].to(a.dtype) * F.softplus(a + params["dt_bias"].to(a.dtype))
        u = torch.cat([q, k, v, g, beta, z], dim=-1)
        return Drive(u.transpose(0, 1).contiguous())

    def project(self, params: Params, h: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``[q; k; v]`` before the convolution, ``z``, ``b``, ``a`` from the masked input.

        Flat layouts ``(B, T, ·)``: ``[q (H_k·d_k) | k (H_k·d_k) | v (H_v·d_v)]``, ``z``
        ``(H_v·d_v)``, ``b`` and ``a`` ``(H_v)``. Qwen3-Next fuses them into two projections
        grouped per key head: ``[q (d_k), k (d_k), v (r d_v), z (r d_v)]`` and ``[b (r), a (r)]``.
        Relatives with other projections override this (``deltanet_relatives``).
        """
        Hk, Hv, dk, dv = self._dims(params)
        r = Hv // Hk
        B, T = h.shape[:2]
        qkvz = F.linear(h, params["in_proj_qkvz.weight"], params.get("in_proj_qkvz.bias"))
        ba = F.linear(h, params["in_proj_ba.weight"], params.get("in_proj_ba.bias"))
        q, k, v, z = torch.split(qkvz.view(B, T, Hk, -1), [dk, dk, r * dv, r * dv], dim=-1)
        b, a = torch.split(ba.view(B, T, Hk, 2 * r), [r, r], dim=-1)
        qkv = torch.cat([q.reshape(B, T, -1), k.reshape(B, T, -1), v.reshape(B, T, -1)], -1)
        return qkv, z.reshape(B, T, -1), b.reshape(B, T, Hv), a.reshape(B, T, Hv)

    def readout(self, params: Params, u: Tensor, states: Tensor) -> Tensor:
        """The layer's output ``(B, T, hidden)`` from ``u`` and the states ``S_1 … S_T``.

        ``o = Sᵀ q̂ / sqrt(d_k)``, RMSNorm over ``d_v`` per head, ``⊙ w ⊙ silu(z)``, ``W_out``.
        """
        _, Hv, dk, dv = self._dims(params)
        q, _, _, _, _, z = self._split(params, u)
        S = states[1:].reshape(states.shape[0] - 1, states.shape[1], Hv, dk, dv)
        o = torch.einsum("tbhij,tbhi->tbhj", S, q) * dk**-0.5
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + scalar(params, "norm_eps"))
        gate = (
            torch.sigmoid(z)
            if "gate_sigmoid" in params and scalar(params, "gate_sigmoid")
            else F.silu(z)
        )
        o = params["norm.weight"] * o * gate
        out = F.linear(o.flatten(-2), params["out_proj.weight"], params.get("out_proj.bias"))
        return out.transpose(0, 1)

    # ------------------------------------------------------------------ maths
    def _update(self, params: Params, x: Tensor, s: Tensor) -> tuple[Tensor, _Factors]:
        """``S_t`` ``(N, H_v, d_k, d_v)`` and the factors of the linearisation."""
        _, Hv, dk, dv = self._dims(params)
        _, k, v, g, beta, _ = self._split(params, x)
        S = s.reshape(-1, Hv, dk, dv)
        alpha = torch.exp(g)
        kS = torch.einsum("nhi,nhij->nhj", k, S)  # Sᵀ k, (N, H, d_v)
        delta = v - alpha[..., None] * kS
        decayed = alpha[..., None, None] * (S - (beta[..., None] * k)[..., None] * kS[:, :, None])
        new = alpha[..., None, None] * S + (beta[..., None] * k)[..., None] * delta[:, :, None]
        return new, _Factors(alpha, beta, k, delta, decayed)

    def step(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """``S_t = α S + β k̂ (v - α Sᵀ k̂)ᵀ`` per value head; ``O(H_v·d_k·d_v)``."""
        _, Hv, dk, dv = self._dims(params)
        _, k, v, g, beta, _ = self._split(params, x)
        S = s.reshape(-1, Hv, dk, dv)
        alpha = torch.exp(g)
        kS = torch.einsum("nhi,nhij->nhj", k, S)
        delta = v - alpha[..., None] * kS
        new = alpha[..., None, None] * S + (beta[..., None] * k)[..., None] * delta[:, :, None]
        return new.reshape(s.shape)

    def step_factors(self, params: Params, x: Tensor, s: Tensor) -> tuple[Tensor, _Factors]:
        """:meth:`step` and :meth:`linear_factors` from one evaluation."""
        new, f = self._update(params, x, s)
        return new.reshape(s.shape), f

    def linear_factors(self, params: Params, x: Tensor, s: Tensor) -> _Factors:
        """``α, β, k̂, δ = v - α Sᵀ k̂, P = α (I - β k̂ k̂ᵀ) S`` per pair and value head."""
        return self._update(params, x, s)[1]

    def product(self, params, x, s, factors, m, wrt, rev):  # noqa: D102 (see the module docstring)
        Hk, Hv, dk, dv = self._dims(params)
        n, k = m.shape[0], m.shape[-1]
        r = Hv // Hk
        f = factors
        al, be = f.alpha[:, :, None, None], f.beta[:, :, None, None]
        kk = f.k[..., None]  # (n, H, d_k, 1)
        if wrt == "state":  # J = Jᵀ = α (I - β k kᵀ) ⊗ I per head
            V = m.reshape(n, Hv, dk, dv * k)
            kV = (kk * V).sum(dim=2, keepdim=True)  # (n, H, 1, d_v k)
            return (al * (V - be * kk * kV)).reshape(n, Hv * dk * dv, k)
        S = s.reshape(n, Hv, dk, dv)
        if not rev:
            _, dkey, dval, dg, db, _ = torch.split(
                m, [Hk * dk, Hk * dk, Hv * dv, Hv, Hv, Hv * dv], dim=1
            )
            dkey = dkey.reshape(n, Hk, dk, k).repeat_interleave(r, dim=1)  # (n, H, d_k, k)
            dval = dval.reshape(n, Hv, dv, k)
            dkS = torch.einsum("nhik,nhij->nhjk", dkey, S)  # (δk̂ᵀ S), (n, H, d_v, k)
            out = f.decayed[..., None] * dg[:, :, None, None, :]
            out = out + (f.k[..., None] * f.delta[:, :, None, :])[..., None] * db[:, :, None, None]
            inner = dval - f.alpha[:, :, None, None] * dkS  # β k̂ (δv - α δk̂ᵀ S)
            out = out + (f.beta[..., None] * f.k)[:, :, :, None, None] * inner[:, :, None]
            out = (
                out
                + f.beta[:, :, None, None, None]
                * dkey[:, :, :, None, :]
                * (f.delta[:, :, None, :, None])
            )
            return out.reshape(n, Hv * dk * dv, k)
        U = m.reshape(n, Hv, dk, dv, k)
        Uk = torch.einsum("nhijk,nhi->nhjk", U, f.k)  # Ūᵀ k̂, (n, H, d_v, k)
        gv = f.beta[:, :, None, None] * Uk
        gg = torch.einsum("nhijk,nhij->nhk", U, f.decayed)
        gb = torch.einsum("nhjk,nhj->nhk", Uk, f.delta)
        gk = f.beta[:, :, None, None] * torch.einsum("nhijk,nhj->nhik", U, f.delta)
        gk = gk - (f.alpha * f.beta)[:, :, None, None] * torch.einsum("nhij,nhjk->nhik", S, Uk)
        gk = gk.reshape(n, Hk, r, dk, k).sum(dim=2)
        return torch.cat(
            [
                m.new_zeros((n, Hk * dk, k)),
                gk.reshape(n, Hk * dk, k),
                gv.reshape(n, Hv * dv, k),
                gg,
                gb,
                m.new_zeros((n, Hv * dv, k)),
            ],
            dim=1,
        )

    def vanishing_advice(self, params: Params, facts: dict[str, str]) -> list[str]:
        """The gate (``A_log``, ``dt_bias``) and β, with this layer's values."""
        names = {"in_proj_b.weight": "in_proj_b", "b_proj.weight": "b_proj"}  # Qwen3.5, OLMo
        beta_from = next((v for k, v in names.items() if k in params), "the b rows of in_proj_ba")
        return advice.deltanet(params, facts, beta_from)


ADAPTER = DeltaNetAdapter()

#: The module this adapter was written for, by qualified name.
MODULE_QUALNAME = "transformers.models.qwen3_next.modeling_qwen3_next.Qwen3NextGatedDeltaNet"

#: The classes this module serves, by qualified name (``transformers`` is not imported here).
SERVES = {MODULE_QUALNAME: ADAPTER}

__all__ = [
    "ADAPTER",
    "MODULE_QUALNAME",
    "SERVES",
    "DeltaNetAdapter",
    "config_numbers",
    "l2normalize",
]
