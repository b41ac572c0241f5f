"""RWKV-4's time mixing (``transformers``' ``RwkvSelfAttention``): the WKV recurrence.

For every channel ``c`` of the attention width ``A``, with the per-channel decay
``w = −exp(time_decay)`` (so ``λ = e^{w} = exp(−exp(time_decay)) ∈ (0, 1)``) and bonus
``μ = time_first``:

    num_t = λ ⊙ num_{t-1} + e^{k_t} ⊙ v_t
    den_t = λ ⊙ den_{t-1} + e^{k_t}
    wkv_t = (num_{t-1} + e^{μ + k_t} ⊙ v_t) / (den_{t-1} + e^{μ + k_t})
    out_t = W_o (r_t ⊙ wkv_t)

where the key, value and receptance come from the layer's input ``x_t`` mixed with the
previous token's (the *time shift*, ``x_{-1} = 0``): ``k_t = W_k (m_k ⊙ x_t + (1 − m_k) ⊙
x_{t-1})``, likewise ``v_t`` with ``m_v``, and ``r_t = σ(W_r (m_r ⊙ x_t + (1 − m_r) ⊙
x_{t-1}))``. The time shift only reads inputs, so all of it is computed in parallel and
forms the drive

    u_t = [k_t (A), v_t (A), r_t (A)]                              (I = 3A),

and the state is the *unstabilised* pair

    s_t = [num_t (A), den_t (A)]                                   (D = 2A).

The module runs the log-stabilised form of the same recurrence (it keeps ``num``, ``den``
scaled by ``e^{−max}`` with a running maximum ``max`` of the exponents), which is the same
function of the inputs; the stabiliser is no part of the dynamics, so it is left out here.
Then the state Jacobian is the same diagonal at every step, ``∂s_t/∂s_{t-1} =
diag(λ, λ)``, independent of the input: the Lyapunov exponents are exactly ``w = −exp(
time_decay)`` per channel, each twice. The input Jacobian is ``∂num_t/∂k_t = e^{k_t} v_t``,
``∂num_t/∂v_t = e^{k_t}``, ``∂den_t/∂k_t = e^{k_t}`` (diagonal blocks); the receptance only
reaches the output (its columns are zero).

Cost of every product per step and sequence: ``O(A · k)`` for ``k`` columns, the size of the
state; no ``D × D`` matrix is ever formed.

Range. Without the stabiliser the state holds ``e^{k}`` itself, so :meth:`RwkvAdapter.drive`
checks that the largest key (plus ``ln T``, the bonus and the values' magnitude) stays
inside the dtype's range and that ``e^{μ + k}`` does not underflow (which would make a
``0/0`` at the readout), and raises :class:`~gradscope.errors.UnsupportedModuleError`
asking for a float64 recording otherwise (float32 holds keys up to about 80, float64 up to
about 700).

Like the module's CPU path (``rwkv_linear_attention_cpu``), the recurrence reads the keys
rounded to float32 (it calls ``.float()`` on them), also in a float64 model: the drive holds
them rounded, so a float64 model is replayed to float64 rounding. For a float16 / bfloat16
model the drive is float32, the precision the module's WKV runs in.

Calls with a recurrent state (``state``, which ``RwkvModel`` passes to every layer whenever
``use_cache`` is on, its default in eval mode): the module overwrites that state in place
(the previous token of the time shift as well as ``num``, ``den``, ``max``), so after the
call its arguments no longer say where the call started. A *fresh* state (the zeros
``RwkvModel`` creates for a new sequence) gives the same computation as no state, and is
replayed; :meth:`RwkvAdapter.initial_state`, called before the module runs, raises
:class:`~gradscope.errors.UnsupportedModuleError` for any other state (a continued
generation), asking for ``use_cache=False``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradscope.cells.base import DIAGONAL, Params
from gradscope.errors import UnsupportedModuleError
from gradscope.sequences import advice
from gradscope.sequences.base import Drive, SequenceAdapter

#: Margin (in e-folds) kept below the dtype's largest / above its smallest normal number.
_RANGE_MARGIN = 2.0

_CONTINUED = (
    "gradscope replays an RwkvSelfAttention from the start of a sequence; this call "
    "continues from a recurrent state carried over from an earlier call (a generation "
    "step). The module overwrites that state in place, so the call cannot be replayed from "
    "its arguments. Record whole sequences in one call with use_cache=False, e.g. "
    "gs.trace(model, input_ids, use_cache=False) (or set model.config.use_cache = False)."
)


class _Factors(NamedTuple):
    """Per-pair factors of the linearisation, each ``(N, A)``."""

    lam: Tensor  # decay λ = exp(−exp(time_decay)), broadcast over the pairs
    ek: Tensor  # e^{k_t}
    ekv: Tensor  # e^{k_t} v_t


def _hidden(args: tuple, kwargs: dict[str, Any]) -> Tensor:
    return kwargs["hidden"] if "hidden" in kwargs else args[0]


def _state_arg(args: tuple, kwargs: dict[str, Any]) -> Any:
    return kwargs.get("state", args[1] if len(args) > 1 else None)


def _wkv_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the module's WKV recurrence runs in: float32 for half types."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


class RwkvAdapter(SequenceAdapter):
    """``transformers``' ``RwkvSelfAttention`` (RWKV-4 time mixing): a constant diagonal."""

    kind = "rwkv"
    state_names = ("num", "den")
    structure = DIAGONAL

    # ------------------------------------------------------------------ layout
    def _width(self, params: Params) -> int:
        return int(params["time_decay"].shape[0])

    def state_sizes(self, params: Params) -> tuple[int, ...]:
        """``(A, A)``: ``num`` then ``den``."""
        a = self._width(params)
        return (a, a)

    def input_size(self, params: Params) -> int:
        """``3A``: ``k``, ``v``, ``r``."""
        return 3 * self._width(params)

    # ------------------------------------------------------------------ recording
    def module_params(self, module: nn.Module) -> Params:
        """Decay, bonus, time-mix coefficients and the four projections, detached."""
        out: Params = {"time_decay": module.time_decay, "time_first": module.time_first}
        for name in ("time_mix_key", "time_mix_value", "time_mix_receptance"):
            out[name] = getattr(module, name)
        for name in ("key", "value", "receptance", "output"):
            lin = getattr(module, name)
            if getattr(lin, "bias", None) is not None:
                raise UnsupportedModuleError(
                    f"gradscope's RWKV adapter replays bias-free projections (as "
                    f"transformers builds them); this RwkvSelfAttention's {name} has a bias"
                )
            out[f"{name}.weight"] = lin.weight
        return {k: v.detach() for k, v in out.items()}

    def initial_state(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """None (a zero state); raises for a call that continues a carried-over state.

        A fresh state (the zeros ``RwkvModel`` creates with ``use_cache=True``) is the same
        computation as none and is accepted.

        Raises:
            UnsupportedModuleError: ``state`` holds a non-zero previous token or WKV state.
        """
        state = _state_arg(args, kwargs)
        if state is None:
            return None
        lid = int(module.layer_id)
        try:
            parts = [state[i][:, :, lid] for i in (1, 2, 3)]
        except (IndexError, TypeError) as exc:
            raise UnsupportedModuleError(
                "gradscope's RWKV adapter does not understand this state argument "
                f"({type(state).__name__}); " + _CONTINUED
            ) from exc
        if any(bool((p != 0).any()) for p in parts):
            raise UnsupportedModuleError(_CONTINUED)
        return None

    def drive(self, params: Params, args: tuple, kwargs: dict[str, Any]) -> Drive:
        """``u = [k, v, r]`` ``(T, B, 3A)`` from the layer's input ``hidden`` ``(B, T, H)``.

        A ``state`` argument is taken to be the fresh one of a new sequence (see the module
        docstring; :meth:`initial_state` rejects any other before the module runs).

        Raises:
            UnsupportedModuleError: keys outside the range the unstabilised state can hold
                in this dtype (the message says to record in float64).
        """
        hidden = _hidden(args, kwargs)
        shifted = F.pad(hidden, (0, 0, 1, -1))  # the module's ZeroPad2d((0, 0, 1, -1))
        mk, mv, mr = (params[n] for n in ("time_mix_key", "time_mix_value", "time_mix_receptance"))
        key = F.linear(hidden * mk + shifted * (1 - mk), params["key.weight"])
        value = F.linear(hidden * mv + shifted * (1 - mv), params["value.weight"])
        rec = torch.sigmoid(F.linear(hidden * mr + shifted * (1 - mr), params["receptance.weight"]))
        dtype = _wkv_dtype(hidden.dtype)
        k = key.float().to(dtype)  # the CPU kernel's key.float()
        u = torch.cat([k, value.to(dtype), rec.to(dtype)], dim=-1).transpose(0, 1)
        self._check_range(params, k.detach(), value.detach())
        return Drive(u.contiguous())

    def _check_range(self, params: Params, k: Tensor, v: Tensor) -> None:
        """Raise if ``e^{k}`` (summed over time, times ``v``) leaves the dtype's range."""
        if k.numel() == 0:
            return
        info = torch.finfo(k.dtype)
        mu = params["time_first"].to(k.dtype)
        vmax = float(v.abs().max())
        top = (
            float(k.max())
            + max(float(mu.max()), 0.0)
            + math.log(k.shape[1])
            + math.log(max(vmax, 1.0))
        )
        bottom = float((k + mu).min())
        if top > math.log(info.max) - _RANGE_MARGIN or bottom < math.log(info.tiny) + _RANGE_MARGIN:
            raise UnsupportedModuleError(
                f"gradscope's RWKV adapter holds the WKV state without the module's max "
                f"stabiliser (so that its Jacobian is an exact constant diagonal); keys "
                f"between {float(k.min()):.4g} and {float(k.max()):.4g} (bonus up to "
                f"{float(mu.max()):.4g}, T = {k.shape[1]}) leave the range of {k.dtype}. "
                f"Record the model in float64 (model.double())."
            )

    def readout(self, params: Params, u: Tensor, states: Tensor) -> Tensor:
        """``W_o (r_t ⊙ wkv_t)`` ``(B, T, H)``, as the module returns it (first element)."""
        k, v, r = self._split(params, u)
        prev = states[:-1]
        A = self._width(params)
        num, den = prev[..., :A], prev[..., A:]
        e = torch.exp(params["time_first"].to(u.dtype) + k)
        wkv = (num + e * v) / (den + e)
        w_out = params["output.weight"]
        y = r.to(w_out.dtype) * wkv.to(w_out.dtype)
        return F.linear(y, w_out).transpose(0, 1)

    # ------------------------------------------------------------------ maths
    def _split(self, params: Params, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        A = self._width(params)
        return u[..., :A], u[..., A : 2 * A], u[..., 2 * A :]

    def _decay(self, params: Params, u: Tensor) -> Tensor:
        """``ln λ = −exp(time_decay)`` ``(A,)`` in ``u``'s dtype (the module's order)."""
        return (-torch.exp(params["time_decay"])).to(u.dtype)

    def step(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """``s_t = [λ num + e^{k} v, λ den + e^{k}]`` from ``x = u_t`` and ``s = s_{t-1}``."""
        k, v, _ = self._split(params, x)
        lam = torch.exp(self._decay(params, x))
        ek = torch.exp(k)
        return lam.repeat(2) * s + torch.cat([ek * v, ek], dim=-1)

    def step_factors(self, params: Params, x: Tensor, s: Tensor) -> tuple[Tensor, _Factors]:
        """:meth:`step` and its linear factors from one evaluation of ``e^{k}``."""
        f = self.linear_factors(params, x, s)
        return torch.cat([f.lam, f.lam], dim=-1) * s + torch.cat([f.ekv, f.ek], dim=-1), f

    def diagonal(self, params: Params, u: Tensor) -> Tensor:
        """``[λ, λ]`` per pair ``(N, 2A)``: the same at every step."""
        lam = torch.exp(self._decay(params, u)).repeat(2)
        return lam.expand(u.shape[0], -1)

    def log_decay(self, params: Params, u: Tensor) -> Tensor:
        """``[w, w]`` with ``w = −exp(time_decay)`` per pair ``(N, 2A)`` (no ``log`` of ``λ``)."""
        return self._decay(params, u).repeat(2).expand(u.shape[0], -1)

    def linear_factors(self, params: Params, x: Tensor, s: Tensor) -> _Factors:
        """``λ``, ``e^{k}``, ``e^{k} v`` per pair (see the module docstring)."""
        k, v, _ = self._split(params, x)
        lam = torch.exp(self._decay(params, x)).expand(x.shape[0], -1)
        ek = torch.exp(k)
        return _Factors(lam, ek, ek * v)

    def product(
        self, params: Params, x: Tensor, s: Tensor, f: _Factors, m: Tensor, wrt: str, rev: bool
    ) -> Tensor:
        """The four products in ``O(A · k)`` per pair (see the module docstring)."""
        A = f.lam.shape[-1]
        if wrt == "state":  # diag(λ, λ) = its transpose
            return f.lam.repeat(1, 2).unsqueeze(-1) * m
        ek, ekv = f.ek.unsqueeze(-1), f.ekv.unsqueeze(-1)
        if not rev:  # m = [δk; δv; δr] (N, 3A, k)
            dk, dv = m[:, :A], m[:, A : 2 * A]
            return torch.cat([ekv * dk + ek * dv, ek * dk], dim=1)
        un, ud = m[:, :A], m[:, A:]  # m = [ū_num; ū_den] (N, 2A, k)
        return torch.cat([ekv * un + ek * ud, ek * un, torch.zeros_like(un)], dim=1)

    def vanishing_advice(self, params: Params, facts: dict[str, str]) -> list[str]:
        """``time_decay``, with this layer's values."""
        return advice.rwkv(params, facts)


ADAPTER = RwkvAdapter()

#: The classes this module serves, by qualified name (``transformers`` is not imported here).
SERVES = {"transformers.models.rwkv.modeling_rwkv.RwkvSelfAttention": ADAPTER}

__all__ = ["ADAPTER", "SERVES", "RwkvAdapter"]
