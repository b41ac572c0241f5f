r"""Kimi delta attention (KDA): a gated delta rule whose decay is per key channel.

``transformers``' ``KimiLinearDeltaAttention`` (Kimi Linear), ``Glm5NextTextLinearAttention``
(GLM-5 Next) and ``BailingHybridDeltaAttention`` (Bailing hybrid) share the torch kernels
``chunk_kimi_delta_attention`` / ``recurrent_kimi_delta_attention``. With ``H`` heads of key
size ``d_k`` and value size ``d_v`` (both ``linear_head_dim``), per sequence::

    [q; k; v] = silu(causal depthwise conv1d([W_q h; W_k h; W_v h]))_t
    q̂ = q / sqrt(|q|² + 1e-6),  k̂ = k / sqrt(|k|² + 1e-6)          (per head, the kernel's l2norm)
    β_{t,h} = sigmoid(W_b h_t)_h,   g_t ∈ R^{H × d_k} (the forget gate, below),  α_t = exp(g_t)
    S'      = diag(α_t[h]) S_{t-1}[h]                              S[h]: (d_k, d_v)
    S_t[h]  = S' + β k̂ (v - S'ᵀ k̂)ᵀ = (I - β k̂ k̂ᵀ) diag(α_t[h]) S_{t-1}[h] + β k̂ vᵀ
    o_t[h]  = S_t[h]ᵀ q̂ / sqrt(d_k)
    out_t   = W_out (w ⊙ RMSNorm_{d_v}(o_t[h]) ⊙ sigmoid(z_t[h]))_h

(Gated DeltaNet, :mod:`gradscope.sequences.deltanet`, is the case of ``α`` equal over the key
channels.) The forget gate, with ``x = f(h_t) + dt_bias`` ``(H, d_k)`` and ``A = exp(A_log)``
per head: Kimi ``f = W_fb W_fa``, ``g = -A · softplus₂₀(x)`` with ``softplus₂₀(x) = x`` for
``x > 20``, else ``log(1 + exp(x))``; GLM-5 Next the same, or with a ``linear_lower_bound``
``ℓ``, ``g = ℓ · sigmoid(A x)``; Bailing ``f = W_f``, ``g = -A · softplus(x)`` or, with
``kda_safe_gate``, ``ℓ · sigmoid(A x)``. The output gate is ``z = W_gb W_ga h`` (Kimi, GLM) or
``W_g h`` (Bailing). A padding ``attention_mask`` zeroes ``h`` first.

Split for gradscope (:mod:`gradscope.sequences.base`):

* **drive** ``u_t`` ``(I,)``, ``I = 3 H d_k + 2 H d_v + H``:
  ``[q̂ (H·d_k) | k̂ (H·d_k) | v (H·d_v) | g (H·d_k) | β (H) | z (H·d_v)]``, in parallel;
* **state** ``S_t`` ``(H, d_k, d_v)`` flattened, ``D = H·d_k·d_v`` (the cached
  ``recurrent_state`` layout);
* **step** the update above, ``O(H·d_k·d_v)``; **readout** the gated norm and ``W_out``.

Jacobians. Per head ``J_t = (I - β k̂ k̂ᵀ) diag(α) ⊗ I_{d_v}``: block diagonal over heads, not
symmetric (``Jᵀ = diag(α)(I - β k̂ k̂ᵀ) ⊗ I``), not diagonal (structure
:data:`~gradscope.cells.base.BLOCK`). Products never form it: ``J V = W - β k̂ (k̂ᵀ W)`` with
``W = α ⊙ V`` (rows), ``Jᵀ U = α ⊙ (U - β k̂ (k̂ᵀ U))``. With ``S' = diag(α) S_{t-1}``,
``r = v - S'ᵀ k̂`` the input Jacobian and its transpose::

    δS = (I - β k̂ k̂ᵀ)(δg ⊙ S') + k̂ rᵀ δβ + β k̂ δvᵀ + β δk̂ rᵀ - β k̂ (δk̂ᵀ S')
    ḡv = β Ūᵀ k̂    ḡβ = k̂ᵀ Ū r    ḡk̂ = β Ū r - β S' Ūᵀ k̂    ḡg = rowsum(((I - β k̂ k̂ᵀ) Ū) ⊙ S')

(``q̂`` and ``z`` reach only the output), ``O(d_k·d_v·k)`` per head for ``k`` columns.

Precision. The kernels cast ``q, k, v, g, β`` to float32 and normalise in float32 whatever the
model's dtype, and the forget gates compute in float32; the replay runs in the module's dtype,
so a float64 module is reproduced to float32 rounding (:meth:`KdaAdapter.replay_tolerance`).
Refused (:class:`~gradscope.errors.UnsupportedModuleError`): a call continuing a cached state
(record with ``use_cache=False``), packed sequences, a convolution activation other than SiLU.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradscope.cells.base import BLOCK, Params
from gradscope.sequences import advice
from gradscope.sequences._hf_mixers import (
    call_arguments,
    causal_conv_silu,
    check_silu,
    mask_padding,
    refuse_carried_state,
)
from gradscope.sequences.base import Drive, SequenceAdapter, count, scalar

#: ``eps`` of the kernels' ``l2norm`` (a constant of the code).
L2NORM_EPS = 1e-6
_MODELS = "transformers.models"


class _Factors(NamedTuple):
    alpha: Tensor  # (N, H, d_k)
    beta: Tensor  # (N, H)
    k: Tensor  # (N, H, d_k)
    r: Tensor  # (N, H, d_v) v - S'ᵀ k
    decayed: Tensor  # (N, H, d_k, d_v) S' = diag(α) S


def _linear(params: Params, name: str, h: Tensor) -> Tensor:
    return F.linear(h, params[f"{name}.weight"], params.get(f"{name}.bias"))


class KdaAdapter(SequenceAdapter):
    """Kimi delta attention (Kimi Linear, GLM-5 Next); Bailing's in :class:`BailingKdaAdapter`.

    State ``S`` ``(H, d_k, d_v)`` flattened; drive ``[q̂ | k̂ | v | g | β | z]``.
    See :mod:`gradscope.sequences.kda`.
    """

    kind = "kimi_delta"
    state_names = ("S",)
    structure = BLOCK
    config = {  # noqa: RUF012
        "num_heads": "count",
        "head_k_dim": "count",
        "head_v_dim": "count",
        "norm_eps": "nonnegative",
        "l2_eps": "nonnegative",
        "gate_lower_bound?": "finite",  # the forget gate ℓ · sigmoid(A x) (drive only)
    }

    def replay_tolerance(self, params: Params, dtype: torch.dtype) -> float | None:
        """1e-5 for a float64 model: the kernels compute in float32 inside."""
        return 1e-5 if dtype == torch.float64 else None

    # ------------------------------------------------------------------ recording
    def module_params(self, module: nn.Module) -> Params:
        """Projections, forget gate, ``β``, output gate, norm and ``W_out``, numbers as 0-d.

        Kimi's ``A_log`` and ``dt_bias`` are read in float32 (the gate calls ``.float()``).
        """
        check_silu(module, self.kind)
        fg = module.forget_gate
        params: Params = self._weights(
            module, ("q_proj", "k_proj", "v_proj", "b_proj", "g_a_proj", "g_b_proj", "o_proj")
        )
        params.update(
            {
                "conv1d.weight": module.conv1d.weight,
                "f_a_proj.weight": fg.f_a_proj.weight,
                "f_b_proj.weight": fg.f_b_proj.weight,
                "f_dt_bias": fg.dt_bias.float().reshape(-1),
                "f_A": torch.exp(fg.A_log.float()).reshape(-1),
                "norm.weight": module.o_norm.weight,
            }
        )
        bound = getattr(fg, "safe_gate_lower_bound", None)  # GLM-5 Next
        return self._finish(module, params, bound)

    @staticmethod
    def _weights(module: nn.Module, names: tuple[str, ...]) -> Params:
        out: Params = {}
        for n in names:
            sub = getattr(module, n)
            out[f"{'out_proj' if n == 'o_proj' else n}.weight"] = sub.weight
            if getattr(sub, "bias", None) is not None:
                out[f"{'out_proj' if n == 'o_proj' else n}.bias"] = sub.bias
        return out

    def _finish(self, module: nn.Module, params: Params, bound: float | None) -> Params:
        if getattr(module.conv1d, "bias", None) is not None:
            params["conv1d.bias"] = module.conv1d.bias
        params = {k: v.detach() for k, v in params.items()}
        params.update(
            num_heads=torch.tensor(int(module.num_heads)),
            head_k_dim=torch.tensor(int(module.head_dim)),
            head_v_dim=torch.tensor(int(module.head_dim)),
            norm_eps=torch.tensor(float(module.o_norm.variance_epsilon), dtype=torch.float64),
            l2_eps=torch.tensor(L2NORM_EPS, dtype=torch.float64),
        )
        if bound is not None:
            params["gate_lower_bound"] = torch.tensor(float(bound), dtype=torch.float64)
        return params

    def initial_state(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """None (zeros); a call continuing a cached state is refused."""
        refuse_carried_state(module, args, kwargs, self.kind)
        return None

    @staticmethod
    def _dims(params: Params) -> tuple[int, int, int]:
        """``(H, d_k, d_v)``."""
        return count(params, "num_heads"), count(params, "head_k_dim"), count(params, "head_v_dim")

    def state_sizes(self, params: Params) -> tuple[int, ...]:
        """``(H·d_k·d_v,)``."""
        H, dk, dv = self._dims(params)
        return (H * dk * dv,)

    def input_size(self, params: Params) -> int:
        """``I = 3 H d_k + 2 H d_v + H``."""
        H, dk, dv = self._dims(params)
        return 3 * H * dk + 2 * H * dv + H

    def _split(self, params: Params, u: Tensor) -> tuple[Tensor, ...]:
        """``q̂, k̂, g (…, H, d_k)``, ``v, z (…, H, d_v)``, ``β (…, H)``."""
        H, dk, dv = self._dims(params)
        q, k, v, g, beta, z = torch.split(u, [H * dk, H * dk, H * dv, H * dk, H, H * dv], -1)
        lead = u.shape[:-1]
        hk, hv = (*lead, H, dk), (*lead, H, dv)
        return q.reshape(hk), k.reshape(hk), v.reshape(hv), g.reshape(hk), beta, z.reshape(hv)

    def forget(self, params: Params, h: Tensor) -> Tensor:
        """Kimi's / GLM-5 Next's forget gate ``g`` ``(B, T, H·d_k)``, in float32 as the module."""
        x = _linear(params, "f_b_proj", _linear(params, "f_a_proj", h)).float()
        x = x + params["f_dt_bias"].float()
        A = params["f_A"].float().repeat_interleave(count(params, "head_k_dim"))
        if "gate_lower_bound" in params:
            return scalar(params, "gate_lower_bound") * torch.sigmoid(A * x)
        return -A * torch.where(x > 20.0, x, torch.log(1.0 + torch.exp(x)))

    def gate(self, params: Params, h: Tensor) -> Tensor:
        """The output gate's pre-activation ``z`` ``(B, T, H·d_v)``."""
        return _linear(params, "g_b_proj", _linear(params, "g_a_proj", h))

    def drive(self, params: Params, args: tuple, kwargs: dict[str, Any]) -> Drive:
        """``u`` ``(T, B, I)`` from ``hidden_states`` and ``attention_mask``, in parallel.

        Raises:
            UnsupportedModuleError: packed sequences, or no ``(B, T, hidden)`` input.
        """
        hidden, mask = call_arguments(args, kwargs, self.kind)
        H, dk, dv = self._dims(params)
        h = mask_padding(hidden, mask)
        B, T = h.shape[:2]
        qkv = torch.cat([_linear(params, n, h) for n in ("q_proj", "k_proj", "v_proj")], dim=-1)
        qkv = causal_conv_silu(qkv, params["conv1d.weight"], params.get("conv1d.bias"))
        q, k, v = torch.split(qkv, [H * dk, H * dk, H * dv], dim=-1)
        eps = scalar(params, "l2_eps")
        q, k = (
            (m / torch.sqrt((m * m).sum(-1, keepdim=True) + eps)).reshape(B, T, -1)
            for m in (q.reshape(B, T, H, dk), k.reshape(B, T, H, dk))
        )
        g = self.forget(params, h).to(h.dtype)
        beta = torch.sigmoid(_linear(params, "b_proj", h))
        u = torch.cat([q, k, v, g, beta, self.gate(params, h)], dim=-1)
        return Drive(u.transpose(0, 1).contiguous())

    def readout(self, params: Params, u: Tensor, states: Tensor) -> Tensor:
        """``W_out (w ⊙ RMSNorm(Sᵀ q̂ / sqrt(d_k)) ⊙ sigmoid(z))``, ``(B, T, hidden)``."""
        H, dk, dv = self._dims(params)
        q, _, _, _, _, z = self._split(params, u)
        S = states[1:].reshape(states.shape[0] - 1, states.shape[1], H, dk, dv)
        o = torch.einsum("tbhij,tbhi->tbhj", S, q) * dk**-0.5
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + scalar(params, "norm_eps"))
        o = params["norm.weight"] * o * torch.sigmoid(z)
        out = F.linear(o.flatten(-2), params["out_proj.weight"], params.get("out_proj.bias"))
        return out.transpose(0, 1)

    # ------------------------------------------------------------------ maths
    def _update(self, params: Params, x: Tensor, s: Tensor) -> tuple[Tensor, _Factors]:
        H, dk, dv = self._dims(params)
        _, k, v, g, beta, _ = self._split(params, x)
        alpha = torch.exp(g)
        Sp = alpha[..., None] * s.reshape(-1, H, dk, dv)
        r = v - torch.einsum("nhi,nhij->nhj", k, Sp)
        new = Sp + (beta[..., None] * k)[..., None] * r[:, :, None]
        return new, _Factors(alpha, beta, k, r, Sp)

    def step(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """``S_t = S' + β k̂ (v - S'ᵀ k̂)ᵀ``, ``S' = diag(α) S_{t-1}``, per head."""
        return self._update(params, x, s)[0].reshape(s.shape)

    def step_factors(self, params: Params, x: Tensor, s: Tensor) -> tuple[Tensor, _Factors]:
        """:meth:`step` and :meth:`linear_factors` from one evaluation."""
        new, f = self._update(params, x, s)
        return new.reshape(s.shape), f

    def linear_factors(self, params: Params, x: Tensor, s: Tensor) -> _Factors:
        """``α, β, k̂, r = v - S'ᵀ k̂, S'`` per pair and head."""
        return self._update(params, x, s)[1]

    def product(self, params, x, s, factors, m, wrt, rev):  # noqa: D102 (see the module docstring)
        H, dk, dv = self._dims(params)
        n, kk = m.shape[0], m.shape[-1]
        f = factors
        al, be, kv = f.alpha[..., None], f.beta[:, :, None, None], f.k[..., None]

        def project_out(W: Tensor) -> Tensor:  # (I - β k kᵀ) W on the key index
            return W - be * kv * (kv * W).sum(dim=2, keepdim=True)

        if wrt == "state":
            V = m.reshape(n, H, dk, dv * kk)
            out = project_out(al * V) if not rev else al * project_out(V)
            return out.reshape(n, H * dk * dv, kk)
        if not rev:
            _, dkey, dval, dg, db, _ = torch.split(
                m, [H * dk, H * dk, H * dv, H * dk, H, H * dv], dim=1
            )
            dkey, dg = dkey.reshape(n, H, dk, kk), dg.reshape(n, H, dk, kk)
            dval = dval.reshape(n, H, dv, kk)
            Sp = f.decayed[..., None]  # (n, H, d_k, d_v, 1)
            out = project_out((dg[:, :, :, None, :] * Sp).flatten(3)).unflatten(3, (dv, kk))
            out = out + (f.k[..., None] * f.r[:, :, None, :])[..., None] * db[:, :, None, None]
            inner = dval - torch.einsum("nhik,nhij->nhjk", dkey, f.decayed)  # δv - S'ᵀ δk̂
            out = out + (f.beta[..., None] * f.k)[:, :, :, None, None] * inner[:, :, None]
            out = (
                out
                + f.beta[:, :, None, None, None] * dkey[:, :, :, None] * f.r[:, :, None, :, None]
            )
            return out.reshape(n, H * dk * dv, kk)
        U = m.reshape(n, H, dk, dv, kk)
        Uk = torch.einsum("nhijk,nhi->nhjk", U, f.k)  # Ūᵀ k̂, (n, H, d_v, k)
        gv = f.beta[:, :, None, None] * Uk
        gb = torch.einsum("nhjk,nhj->nhk", Uk, f.r)
        gk = f.beta[:, :, None, None] * torch.einsum("nhijk,nhj->nhik", U, f.r)
        gk = gk - f.beta[:, :, None, None] * torch.einsum("nhij,nhjk->nhik", f.decayed, Uk)
        PU = project_out(U.flatten(3)).unflatten(3, (dv, kk))
        gg = torch.einsum("nhijk,nhij->nhik", PU, f.decayed)
        return torch.cat(
            [
                m.new_zeros((n, H * dk, kk)),
                gk.reshape(n, H * dk, kk),
                gv.reshape(n, H * dv, kk),
                gg.reshape(n, H * dk, kk),
                gb,
                m.new_zeros((n, H * dv, kk)),
            ],
            dim=1,
        )

    def vanishing_advice(self, params: Params, facts: dict[str, str]) -> list[str]:
        """The forget gate (``forget_gate.A_log``, ``forget_gate.dt_bias``) and β (``b_proj``).

        The forget gate's input map is named from the parameters (a loaded trace has no class).
        """
        one = "f_proj.weight" in params  # Bailing
        f = "forget_gate.f_proj" if one else "forget_gate.f_b_proj ∘ forget_gate.f_a_proj"
        return advice.kda(params, facts, f)


class BailingKdaAdapter(KdaAdapter):
    """``BailingHybridDeltaAttention``: KDA with one-matrix forget and output gates."""

    def module_params(self, module: nn.Module) -> Params:
        """Like Kimi's, with ``f_proj``, ``g_proj`` and the gate's optional lower bound."""
        check_silu(module, self.kind)
        fg = module.forget_gate
        params = self._weights(module, ("q_proj", "k_proj", "v_proj", "b_proj", "g_proj", "o_proj"))
        params.update(
            {
                "conv1d.weight": module.conv1d.weight,
                "f_proj.weight": fg.f_proj.weight,
                "f_dt_bias": fg.dt_bias.reshape(-1),
                "f_A_log": fg.A_log.reshape(-1),
                "norm.weight": module.o_norm.weight,
            }
        )
        return self._finish(module, params, fg.lower_bound if fg.safe_gate else None)

    def forget(self, params: Params, h: Tensor) -> Tensor:
        """``-A softplus(x)`` or ``ℓ sigmoid(A x)``, ``x = W_f h`` (float32) ``+ dt_bias``."""
        x = _linear(params, "f_proj", h).float() + params["f_dt_bias"]
        A = params["f_A_log"].exp().repeat_interleave(count(params, "head_k_dim"))
        if "gate_lower_bound" in params:
            return scalar(params, "gate_lower_bound") * torch.sigmoid(A * x)
        return -A * F.softplus(x)

    def gate(self, params: Params, h: Tensor) -> Tensor:
        """``z = W_g h``."""
        return _linear(params, "g_proj", h)


ADAPTER = KdaAdapter()
BAILING = BailingKdaAdapter()

#: The classes this module serves, by qualified name (``transformers`` is not imported here).
SERVES = {
    f"{_MODELS}.kimi_linear.modeling_kimi_linear.KimiLinearDeltaAttention": ADAPTER,
    f"{_MODELS}.glm5_next.modeling_glm5_next.Glm5NextTextLinearAttention": ADAPTER,
    f"{_MODELS}.bailing_hybrid.modeling_bailing_hybrid.BailingHybridDeltaAttention": BAILING,
}

__all__ = ["ADAPTER", "BAILING", "SERVES", "BailingKdaAdapter", "KdaAdapter"]
