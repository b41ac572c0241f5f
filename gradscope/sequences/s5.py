r"""S5, the simplified state space layer, as ``s5-pytorch`` runs it (``s5.s5_model.S5``).

Smith, Warrington & Linderman 2023, "Simplified State Space Layers for Sequence Modeling";
the package's ``s5/s5_model.py`` (``S5.forward``, ``S5SSM.forward``, ``get_BC_tilde``,
``discretize_zoh`` / ``discretize_bilinear``, ``apply_ssm`` / ``apply_ssm_liquid``). ``S5Block``
wraps an ``S5`` (its ``s5``), which is what is recorded.

A continuous-time diagonal system of ``P`` complex modes (``Λ`` ``(P,)``, ``B̃`` ``(P, H)``,
``C̃`` ``(H, P)``, real ``D`` ``(H,)``, log step sizes ``log Δ`` ``(P,)``), discretised with the
step ``Δ_t = σ_t · exp(log Δ)`` (``σ`` the call's ``step_scale``: a number, one per
sequence, or one per sequence and step) by zero-order hold (the default) or bilinear::

    ZOH:       λ̄ = exp(Λ Δ),                      B̄ = (1/Λ) (λ̄ − 1) B̃
    bilinear:  λ̄ = (1 − Λ Δ/2)⁻¹ (1 + Λ Δ/2),     B̄ = (1 − Λ Δ/2)⁻¹ Δ B̃

(``B̄`` raised elementwise to ``degree``), then for the input ``v_t`` ``(H,)``::

    w_t = B̄_t v_t,    x_t = λ_t ⊙ x_{t-1} + w_t,    y_t = Re(C̃ x_t) + D ⊙ v_t

with ``λ_t = λ̄_t``, or ``λ_t = λ̄_t + w_t`` for ``liquid`` (Liquid-S4's input-dependent
transition), and ``x_0`` the call's ``state`` (zeros by default). The package keeps all
``P`` modes (no conjugate-symmetric half: ``Re`` of the full sum), so the state is the
whole ``x``. ``B̃`` is ``B[..., 0] + i B[..., 1]`` cast to complex64 (``as_complex``), also
when the other parameters are complex128; ``C̃ = C``.

For gradscope (:mod:`gradscope.sequences.base`):

* **state** ``s_t = [Re x_t, Im x_t]`` (``D = 2P``), like ``examples/lru.py``;
* **drive** ``u_t = [Re w_t (P), Im w_t (P), σ_t (1), v_t (H)]`` (``I = 2P + 1 + H``): the
  input term, the step scale and the raw input that the skip ``D v_t`` reads;
* **state Jacobian**: per mode a 2 × 2 scaled rotation, ``λ_t`` acting on
  ``(Re x, Im x)``; :meth:`S5Adapter.diagonal` returns ``[λ_t, λ̄_t]`` (a complex diagonal
  in a fixed unitary basis) and structure :data:`~gradscope.cells.base.BLOCK`. For ZOH
  without ``liquid`` the exponents are ``ln|λ̄_j| = Re(Λ_j) Δ_j``, each twice;
* **input Jacobian** (the state's sensitivity to the drive at fixed ``w``):
  ``δx = c ⊙ δw + (∂λ̄/∂σ) x_{t-1} δσ`` with ``c = 1`` (``1 + x_{t-1}`` for ``liquid``),
  ``∂λ̄/∂σ = e^{log Δ} Λ λ̄`` (ZOH) or ``e^{log Δ}/2 · Λ (1 − ΛΔ/2)⁻¹ (1 + λ̄)`` (bilinear),
  and no dependence on ``v`` (it only reaches the output); the transpose multiplies by the
  conjugates. Every product costs ``O(P · k)`` for ``k`` columns; no ``D × D`` matrix.

The drive follows the module's casts: the complex dtype is that of ``Λ``, ``σ`` is float32
when ``step_scale`` is a number (``torch.ones(B) * step_scale``). Refused
(:class:`~gradscope.errors.UnsupportedModuleError`): ``bidir`` (a second scan runs
backwards in time), ``liquid`` with a given ``state`` (the package adds ``λ̄ x_0`` to the first
input term but leaves the transition ``λ̄ + w``: no one-step recurrence from ``x_0``), a
``discretize`` other than the package's two, a ``bcInit`` other than the dense ones (the
package's ``factorized`` does not construct), and, while recording, ``seq.forward_rnn``
(one step from a state no hook sees).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from gradscope.cells.base import BLOCK, Params
from gradscope.errors import ArgumentError, UnsupportedModuleError
from gradscope.sequences import advice
from gradscope.sequences.base import Drive, SequenceAdapter, count, scalar

_DISCRETE = {"discretize_zoh": 0.0, "discretize_bilinear": 1.0}
_DENSE_INITS = ("dense", "dense_columns", "complex_normal")
#: At most this many distinct step scales get their own ``B̄`` (as the module forms it);
#: beyond, ``w = coef ⊙ (B̃ v)`` (the same numbers up to rounding; ``degree`` 1 only).
_GROUPS = 64

_RNN_REFUSED = (
    "gradscope records an s5 S5 through its forward (whole sequences, from the state it is "
    "given); S5SSM.forward_rnn(signal, prev_state) steps once from a state no hook sees, so "
    "it is not recorded. Record the sequence with one call, S5(signal, state=...), and step "
    "outside gs.record / gs.trace (inside a gs.Monitor: in `with monitor.paused():`)."
)


class _Factors(NamedTuple):
    lam: Tensor  # (N, P) complex λ_t
    c: Tensor  # (N, P) complex ∂x/∂w
    g: Tensor  # (N, P) complex ∂x/∂σ


def _bind(args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    names = ("signal", "step_scale", "state", "return_state")
    bound = {"step_scale": 1.0, "state": None, **dict(zip(names, args))}
    bound.update({k: v for k, v in kwargs.items() if k in names})
    return bound


def _supported(module: nn.Module) -> nn.Module:
    """The module's ``S5SSM``, or UnsupportedModuleError for what is not replayed."""
    seq = module.seq
    why = None
    if getattr(seq, "bidir", False):
        why = "bidir=True runs a second scan backwards in time; record a unidirectional S5"
    elif getattr(seq.discretize, "__name__", None) not in _DISCRETE:
        why = f"its discretize is {seq.discretize!r}, not discretize_zoh / discretize_bilinear"
    elif seq.bcInit not in _DENSE_INITS:
        why = f"bcInit={seq.bcInit!r}; gradscope replays {', '.join(_DENSE_INITS)}"
    if why:
        raise UnsupportedModuleError(f"gradscope's S5 adapter cannot replay this S5: {why}")
    return seq


class S5Adapter(SequenceAdapter):
    """``s5-pytorch``'s ``S5``: a discretised complex diagonal held as ``[Re x, Im x]``.

    See :mod:`gradscope.sequences.s5`.
    """

    kind = "s5"
    state_names = ("re", "im")
    structure = BLOCK
    config = {"liquid": "flag", "bilinear": "flag", "degree": "count"}  # noqa: RUF012

    def check_params(self, params: Params) -> None:
        """:attr:`config`, and ``degree > 1`` only for a square ``B̃`` (as the package asks)."""
        super().check_params(params)
        P, H = params["B_tilde.re"].shape
        if count(params, "degree") != 1 and P != H:
            raise ArgumentError(f"s5: degree > 1 needs a square B̃, got ({P}, {H})")

    # ------------------------------------------------------------------ layout
    def _P(self, params: Params) -> int:
        return int(params["Lambda.re"].shape[0])

    def state_sizes(self, params: Params) -> tuple[int, ...]:
        """``(P, P)``: real and imaginary parts."""
        return (self._P(params), self._P(params))

    def input_size(self, params: Params) -> int:
        """``2P + 1 + H``: ``w`` (real, imaginary), ``σ``, ``v``."""
        return 2 * self._P(params) + 1 + int(params["D"].shape[0])

    # ------------------------------------------------------------------ recording
    def module_params(self, module: nn.Module) -> Params:
        """``Λ``, ``log Δ``, ``B̃``, ``C̃`` (real and imaginary parts), ``D``, the options."""
        seq = _supported(module)
        b_tilde = torch.complex(seq.B[..., 0], seq.B[..., 1]).to(torch.complex64)
        out = {
            "Lambda.re": seq.Lambda.real,
            "Lambda.im": seq.Lambda.imag,
            "log_step": seq.log_step,
            "B_tilde.re": b_tilde.real,
            "B_tilde.im": b_tilde.imag,
            "C_tilde.re": seq.C.real,
            "C_tilde.im": seq.C.imag,
            "D": seq.D,
        }
        out = {k: v.detach().clone() for k, v in out.items()}
        out.update(
            liquid=torch.tensor(float(bool(seq.liquid)), dtype=torch.float64),
            bilinear=torch.tensor(_DISCRETE[seq.discretize.__name__], dtype=torch.float64),
            degree=torch.tensor(int(seq.degree)),
        )
        return out

    def refused_methods(self, module: nn.Module) -> dict[str, str]:
        """``seq.forward_rnn`` (one step from a given state; see the module docstring)."""
        return {"seq.forward_rnn": _RNN_REFUSED}

    def initial_state(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """None (the drive reads ``state``); refuses what cannot be replayed, before the call.

        Raises:
            UnsupportedModuleError: see the module docstring.
        """
        seq = _supported(module)
        if seq.liquid and _bind(args, kwargs)["state"] is not None:
            raise UnsupportedModuleError(
                "gradscope's S5 adapter cannot replay a liquid S5 started from a given state: "
                "the package adds λ̄·state to the first input term but keeps the transition "
                "λ̄ + w there, which no one-step recurrence from that state reproduces. Record "
                "it from zeros (state=None)."
            )
        return None

    def _complex(self, params: Params, name: str) -> Tensor:
        return torch.complex(params[name + ".re"], params[name + ".im"])

    def _discretize(self, params: Params, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``λ̄``, the factor ``coef`` of ``B̄ = coef B̃`` and ``∂λ̄/∂σ``, each ``(…, P)``.

        ``sigma`` ``(…, 1)``; the package's order of operations (its float32 ``Identity``).
        """
        lam = self._complex(params, "Lambda")
        ls = torch.exp(params["log_step"])
        delta = sigma * ls
        one = torch.ones(lam.shape[0], device=lam.device)
        if scalar(params, "bilinear"):
            bl = 1 / (one - (delta / 2.0) * lam)
            bar = bl * (one + (delta / 2.0) * lam)
            return bar, bl * delta, ls / 2.0 * lam * bl * (1 + bar)
        bar = torch.exp(lam * delta)
        return bar, 1 / lam * (bar - one), ls * lam * bar

    def drive(self, params: Params, args: tuple, kwargs: dict[str, Any]) -> Drive:
        """``[Re w, Im w, σ, v]`` ``(T, B, I)`` and ``s0 = [Re state, Im state]``.

        Raises:
            UnsupportedModuleError: the signal is not ``(B, L, H)``.
        """
        bound = _bind(args, kwargs)
        v = bound.get("signal")
        if not isinstance(v, Tensor) or v.ndim != 3:
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise UnsupportedModuleError(f"s5: expected the signal (B, L, H), got {got}")
        Bn, L, _ = v.shape
        ss = bound["step_scale"]
        if not torch.is_tensor(ss):
            ss = torch.ones(Bn, device=v.device) * ss  # as S5.forward does
        sigma = (ss[:, None] if ss.ndim == 1 else ss).expand(Bn, L)[..., None]  # (B, L, 1)
        bar, coef, _ = self._discretize(params, sigma)
        bt = self._complex(params, "B_tilde").to(bar.dtype)
        cv = v.type(bar.dtype)
        keys, inverse = torch.unique(sigma.flatten(), return_inverse=True)
        degree = count(params, "degree")
        if len(keys) > _GROUPS and degree == 1:
            w = coef * (cv @ bt.T)
        else:
            w = torch.empty_like(coef)
            inverse = inverse.reshape(Bn, L)
            for i in range(len(keys)):
                at = inverse == i
                b_bar = coef[at][0][:, None] * bt
                if degree != 1:
                    b_bar = b_bar**degree
                w[at] = cv[at] @ b_bar.T
        real = bar.real.dtype
        u = torch.cat([w.real, w.imag, sigma.to(real), v.to(real)], dim=-1)
        state = bound["state"]
        s0 = None
        if state is not None:
            state = state.type(bar.dtype)
            s0 = torch.cat([state.real, state.imag], dim=-1).to(real)
        return Drive(u.transpose(0, 1).contiguous(), s0)

    def readout(self, params: Params, u: Tensor, states: Tensor) -> Tensor:
        """``Re(C̃ x_t) + D ⊙ v_t``, batch-first ``(B, T, H)``."""
        P = self._P(params)
        x = torch.complex(states[1:, :, :P], states[1:, :, P:])
        c = self._complex(params, "C_tilde").to(x.dtype)
        y = (x @ c.T).real + params["D"] * u[..., 2 * P + 1 :]
        return y.transpose(0, 1)

    # ------------------------------------------------------------------ maths
    def _lam(self, params: Params, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``λ_t``, ``w_t`` (complex) and ``∂λ̄/∂σ`` per pair ``(N, P)``."""
        P = self._P(params)
        bar, _, dbar = self._discretize(params, x[:, 2 * P : 2 * P + 1])
        w = torch.complex(x[:, :P], x[:, P : 2 * P]).to(bar.dtype)
        lam = bar + w if scalar(params, "liquid") else bar
        return lam, w, dbar

    def step(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """``x_t = λ_t x_{t−1} + w_t`` in real arithmetic, ``O(P)`` per pair."""
        lam, w, _ = self._lam(params, x)
        P = self._P(params)
        a, b, re, im = lam.real, lam.imag, s[:, :P], s[:, P:]
        return torch.cat([a * re - b * im + w.real, b * re + a * im + w.imag], dim=-1)

    def diagonal(self, params: Params, u: Tensor) -> Tensor:
        """``[λ_t, λ̄_t]`` per pair: the eigenvalues of the scaled rotations."""
        lam = self._lam(params, u)[0]
        return torch.cat([lam, lam.conj()], dim=-1)

    def log_decay(self, params: Params, u: Tensor) -> Tensor:
        """``ln|λ_t|`` twice; ``Re(Λ) Δ_t`` for ZOH without ``liquid`` (no exp/log round trip)."""
        if scalar(params, "bilinear") or scalar(params, "liquid"):
            return super().log_decay(params, u)
        P = self._P(params)
        delta = u[:, 2 * P : 2 * P + 1] * torch.exp(params["log_step"])
        logs = params["Lambda.re"].to(delta.dtype) * delta
        return torch.cat([logs, logs], dim=-1)

    def linear_factors(self, params: Params, x: Tensor, s: Tensor) -> _Factors:
        """``λ_t``, ``c = ∂x/∂w`` and ``g = (∂λ̄/∂σ) x_{t−1}`` (complex, ``(N, P)``)."""
        lam, _, dbar = self._lam(params, x)
        P = self._P(params)
        prev = torch.complex(s[:, :P], s[:, P:]).to(lam.dtype)
        c = (1 + prev) if scalar(params, "liquid") else torch.ones_like(lam)
        return _Factors(lam, c, dbar * prev)

    def product(self, params, x, s, f, m, wrt, rev):  # noqa: D102 (see the module docstring)
        P = self._P(params)
        if wrt == "state":
            return _cmul(f.lam, m, rev)
        if not rev:  # m: (N, I, k) -> (N, 2P, k)
            out = _cmul(f.c, m[:, : 2 * P], False)
            sig = m[:, 2 * P : 2 * P + 1]
            return out + torch.cat([f.g.real[..., None], f.g.imag[..., None]], 1) * sig
        back = _cmul(f.c, m, True)  # (N, 2P, k) -> (N, I, k)
        g = (f.g.real[..., None] * m[:, :P] + f.g.imag[..., None] * m[:, P:]).sum(1, True)
        zeros = m.new_zeros((m.shape[0], x.shape[-1] - 2 * P - 1, m.shape[-1]))
        return torch.cat([back, g, zeros], dim=1)

    def vanishing_advice(self, params: Params, facts: dict[str, str]) -> list[str]:
        """``log_step`` and ``Λ``, with this layer's values."""
        return advice.s5(params, facts)


def _cmul(c: Tensor, m: Tensor, conj: bool) -> Tensor:
    """Multiplication by ``c`` (or ``c̄``) on ``m = [Re; Im]`` ``(N, 2P, k)``, ``c`` ``(N, P)``."""
    P = c.shape[1]
    a, b = c.real[..., None], c.imag[..., None]
    if conj:
        b = -b
    re, im = m[:, :P], m[:, P:]
    return torch.cat([a * re - b * im, b * re + a * im], dim=1)


ADAPTER = S5Adapter()

#: The module this adapter replays, by qualified name (``s5`` is not imported here).
MODULE_QUALNAME = "s5.s5_model.S5"

__all__ = ["ADAPTER", "MODULE_QUALNAME", "S5Adapter"]
