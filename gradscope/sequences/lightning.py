r"""Lightning attention: linear attention with a fixed decay per head (MiniMax's mixer).

MiniMax-01's linear-attention layer (``transformers.models.minimax``). With ``H`` heads of
size ``d`` and the per-head slope ``s_h`` (the module's ``slope_rate`` buffer,
``s_h = 2^{-8(h+1)/H} · (1 - ℓ/(L-1+10⁻⁵) + 10⁻⁵)`` for layer ``ℓ`` of ``L``), its forward
computes, per sequence::

    [q; k; v] = silu(W_qkv h_t)  (then zeroed at padded steps), split per head (H, 3d)
    S_t[h] = λ_h S_{t-1}[h] + k_t[h] v_t[h]ᵀ,   λ_h = exp(-s_h)          S[h]: (d, d)
    o_t[h] = S_t[h]ᵀ q_t[h]
    out_t  = W_out (sigmoid(W_g h_t) ⊙ w ⊙ RMSNorm_{H·d}(o_t))        (RMSNorm eps 1e-6)

The module evaluates it in blocks of ``block_size`` steps (intra-block ``(Q Kᵀ ⊙ decay) V``
plus the carried ``S`` decayed by ``exp(-s_h i)``): the same states, in another order.

Split for gradscope: **drive** ``u_t = [q (H·d) | k (H·d) | v (H·d) | z (H·d)]`` (``z`` the
output gate's pre-activation); **state** ``S_t`` ``(H, d, d)`` flattened, ``D = H d²`` (the
cached ``attn_weights_inter`` layout); **step** the update, ``O(H d²)``.

Jacobians. ``J_t = λ_h I`` per head: constant, a scalar per head times the identity (structure
:data:`~gradscope.cells.base.SCALAR_IDENTITY`; :meth:`LightningAdapter.diagonal` returns
``λ_h`` over each head's ``d²`` coordinates), so every Lyapunov exponent is ``-s_h``
(``d²`` times per head) whatever the input. The input Jacobian ``δS = δk vᵀ + k δvᵀ``,
transposed ``ḡk = Ū v``, ``ḡv = Ūᵀ k``; products cost ``O(H d² k)``.

Precision. The module's decay tables (``query_decay``, ``key_decay``, ``diagonal_decay``) are
buffers computed in float32 when it is built; a float64 model keeps those float32 values,
so its output is reproduced to float32 rounding of the decays (measured below ``1e-6``
relative), a float32 model to float32 rounding. Refused: a call continuing a cached state
(``cache.get_linear_cache(layer_idx)`` holds one: record with ``use_cache=False``) and an
activation other than SiLU.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradscope.cells.base import SCALAR_IDENTITY, Params
from gradscope.errors import UnsupportedModuleError
from gradscope.sequences import advice
from gradscope.sequences._hf_mixers import mask_padding
from gradscope.sequences.base import Drive, SequenceAdapter, count, scalar

_NAMES = ("hidden_states", "position_embeddings", "attention_mask", "cache")


class _Factors(NamedTuple):
    lam: Tensor  # (N, H) the decays, per row (a view: one number per head)
    k: Tensor  # (N, H, d)
    v: Tensor  # (N, H, d)


def _bind(args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    bound = dict(zip(_NAMES, args))
    bound.update({n: kwargs[n] for n in _NAMES if n in kwargs})
    if bound.get("cache") is None and kwargs.get("past_key_values") is not None:
        bound["cache"] = kwargs["past_key_values"]
    return bound


class LightningAdapter(SequenceAdapter):
    """``MiniMaxLightningAttention``: ``S_t = λ_h S_{t-1} + k vᵀ`` per head (see the module)."""

    kind = "lightning"
    state_names = ("S",)
    structure = SCALAR_IDENTITY
    config = {"num_heads": "count", "head_dim": "count", "norm_eps": "nonnegative"}  # noqa: RUF012

    def replay_tolerance(self, params: Params, dtype: torch.dtype) -> float | None:
        """1e-5 for a float64 model: its decay tables hold float32 values."""
        return 1e-5 if dtype == torch.float64 else None

    # ------------------------------------------------------------------ recording
    def module_params(self, module: nn.Module) -> Params:
        """Weights, the slopes ``s_h`` (its ``slope_rate`` buffer) and the numbers.

        Raises:
            UnsupportedModuleError: the activation of ``W_qkv`` is not SiLU.
        """
        probe = torch.linspace(-4.0, 4.0, 17, dtype=torch.float64)
        if not torch.allclose(module.act_fn(probe), F.silu(probe), rtol=0, atol=1e-15):
            raise UnsupportedModuleError(
                f"gradscope's {self.kind} adapter replays silu(W_qkv h); this "
                f"{type(module).__name__}'s activation {type(module.act_fn).__name__} is not SiLU"
            )
        params = {
            "qkv_proj.weight": module.qkv_proj.weight,
            "output_gate.weight": module.output_gate.weight,
            "norm.weight": module.norm.weight,
            "out_proj.weight": module.out_proj.weight,
            "slope": module.slope_rate.reshape(-1),
        }
        params = {k: v.detach() for k, v in params.items()}
        params.update(
            num_heads=torch.tensor(int(module.num_attention_heads)),
            head_dim=torch.tensor(int(module.head_dim)),
            norm_eps=torch.tensor(float(module.norm.variance_epsilon), dtype=torch.float64),
        )
        return params

    def initial_state(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """Zeros; a call whose cache holds this layer's ``S`` (a generation step) is refused."""
        cache = _bind(args, kwargs).get("cache")
        if cache is None:
            return None
        try:
            carried = cache.get_linear_cache(module.layer_idx)
        except (AttributeError, IndexError):
            carried = None
        if isinstance(carried, Tensor):
            raise UnsupportedModuleError(
                f"gradscope's {self.kind} adapter replays a {type(module).__name__} from a zero "
                "state; this call continues from the cached linear-attention state (a "
                "generation step). Record whole sequences in one call with use_cache=False."
            )
        return None

    @staticmethod
    def _dims(params: Params) -> tuple[int, int]:
        return count(params, "num_heads"), count(params, "head_dim")

    def state_sizes(self, params: Params) -> tuple[int, ...]:
        """``(H d²,)``."""
        H, d = self._dims(params)
        return (H * d * d,)

    def input_size(self, params: Params) -> int:
        """``4 H d``: ``[q | k | v | z]``."""
        H, d = self._dims(params)
        return 4 * H * d

    def _split(self, params: Params, u: Tensor) -> tuple[Tensor, ...]:
        H, d = self._dims(params)
        return tuple(p.unflatten(-1, (H, d)) for p in torch.split(u, H * d, dim=-1))

    def _decay(self, params: Params, dtype: torch.dtype) -> Tensor:
        return torch.exp(-params["slope"].to(dtype))

    def drive(self, params: Params, args: tuple, kwargs: dict[str, Any]) -> Drive:
        """``[q | k | v | z]`` ``(T, B, 4Hd)`` from ``hidden_states`` and the 2-D padding mask."""
        bound = _bind(args, kwargs)
        hidden, mask = bound.get("hidden_states"), bound.get("attention_mask")
        if not isinstance(hidden, Tensor) or hidden.ndim != 3:
            raise UnsupportedModuleError(
                f"{self.kind}: expected hidden_states (B, T, hidden), got {type(hidden).__name__}"
            )
        if mask is not None and (not isinstance(mask, Tensor) or mask.ndim != 2):
            raise UnsupportedModuleError(
                f"{self.kind}: expected a 2-D (B, T) padding attention_mask (or None)"
            )
        H, d = self._dims(params)
        B, T = hidden.shape[:2]
        qkv = mask_padding(F.silu(F.linear(hidden, params["qkv_proj.weight"])), mask)
        q, k, v = torch.split(qkv.reshape(B, T, H, 3 * d), d, dim=-1)
        z = F.linear(hidden, params["output_gate.weight"])
        u = torch.cat([m.reshape(B, T, H * d) for m in (q, k, v)] + [z], dim=-1)
        return Drive(u.transpose(0, 1).contiguous())

    def readout(self, params: Params, u: Tensor, states: Tensor) -> Tensor:
        """``W_out (sigmoid(z) ⊙ w ⊙ RMSNorm(Sᵀ q))`` ``(B, T, hidden)``: the module's output."""
        H, d = self._dims(params)
        q, _, _, z = self._split(params, u)
        S = states[1:].reshape(states.shape[0] - 1, states.shape[1], H, d, d)
        o = torch.einsum("tbhij,tbhi->tbhj", S, q).flatten(-2)
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + scalar(params, "norm_eps"))
        o = torch.sigmoid(z.flatten(-2)) * (params["norm.weight"] * o)
        return F.linear(o, params["out_proj.weight"]).transpose(0, 1)

    # ------------------------------------------------------------------ maths
    def step(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """``S_t[h] = λ_h S_{t-1}[h] + k vᵀ``; ``O(H d²)``."""
        H, d = self._dims(params)
        _, k, v, _ = self._split(params, x)
        lam = self._decay(params, s.dtype)[:, None, None]
        new = lam * s.reshape(-1, H, d, d) + k[..., :, None] * v[..., None, :]
        return new.reshape(s.shape)

    def diagonal(self, params: Params, u: Tensor) -> Tensor:
        """``λ_h`` over each head's ``d²`` coordinates, the same at every step."""
        _, d = self._dims(params)
        lam = self._decay(params, u.dtype).repeat_interleave(d * d)
        return lam.repeat(u.shape[0], 1)

    def log_decay(self, params: Params, u: Tensor) -> Tensor:
        """``-s_h`` over each head's coordinates (no ``log(exp)``)."""
        _, d = self._dims(params)
        return (-params["slope"].to(u.dtype)).repeat_interleave(d * d).repeat(u.shape[0], 1)

    def linear_factors(self, params: Params, x: Tensor, s: Tensor) -> _Factors:
        """``λ``, ``k``, ``v`` per pair (``λ`` expanded over the rows, so rows slice it)."""
        _, k, v, _ = self._split(params, x)
        return _Factors(self._decay(params, s.dtype).expand(x.shape[0], -1), k, v)

    def product(self, params, x, s, factors, m, wrt, rev):  # noqa: D102 (see the module docstring)
        H, d = self._dims(params)
        n, kk = m.shape[0], m.shape[-1]
        lam, k, v = factors
        if wrt == "state":  # λ_h I = its transpose
            return (lam[:, :, None, None] * m.reshape(n, H, d * d, kk)).reshape(n, -1, kk)
        if not rev:
            _, dk, dv, _ = (p.reshape(n, H, d, kk) for p in torch.split(m, H * d, dim=1))
            out = (
                dk[:, :, :, None] * v[:, :, None, :, None] + k[:, :, :, None, None] * dv[:, :, None]
            )
            return out.reshape(n, H * d * d, kk)
        U = m.reshape(n, H, d, d, kk)
        gk = torch.einsum("nhijk,nhj->nhik", U, v)
        gv = torch.einsum("nhijk,nhi->nhjk", U, k)
        zeros = m.new_zeros((n, H * d, kk))
        return torch.cat([zeros, gk.reshape(n, H * d, kk), gv.reshape(n, H * d, kk), zeros], 1)

    def vanishing_advice(self, params: Params, facts: dict[str, str]) -> list[str]:
        """The fixed slopes (``slope_rate``): heads and layer position, not training, set them."""
        return advice.lightning(params, facts)


ADAPTER = LightningAdapter()

#: The classes this module serves, by qualified name (``transformers`` is not imported here).
SERVES = {"transformers.models.minimax.modeling_minimax.MiniMaxLightningAttention": ADAPTER}

__all__ = ["ADAPTER", "SERVES", "LightningAdapter"]
