r"""minGRU of the ``minGRU-pytorch`` package (``minGRU_pytorch.minGRU.minGRU``).

Feng et al. 2024, "Were RNNs All We Needed?" (arXiv:2410.01201), appendix B.3, as
``minGRU_pytorch/minGRU.py`` (version 0.2.1) computes it. For the layer's input ``x_t``
(width ``dim``) and the inner width ``E = int(dim · expansion_factor)``::

    (h̃ᵖ_t, zᵖ_t) = W x_t                       (to_hidden_and_gate, no bias; E each)
    z_t = σ(zᵖ_t),   h̃_t = g(h̃ᵖ_t),   g(v) = v + ½ (v ≥ 0), σ(v) (v < 0)      (g > 0)
    h_t = (1 − z_t) ⊙ h_{t-1} + z_t ⊙ h̃_t
    y_t = W_out h_t                              (to_out; the identity without proj_out)

The module runs it as Heinsen's log-space scan when ``T > 1``:
``log(1 − z) = −softplus(zᵖ)``, ``log z = −softplus(−zᵖ)``, ``log h̃ = log_g(h̃ᵖ)`` and
``h_t = exp(a*_t + logcumsumexp(log z + log h̃ − a*)_t)``, ``a*`` the cumulative sum of
``log(1 − z)``; for ``T = 1`` it steps once, ``h_1 = lerp(h_0, h̃_1, z_1)``. Both compute
the recurrence above (to rounding).

Initial state. Without ``prev_hidden`` the scan starts from ``h_0 = 0`` (``h_1 = z_1 h̃_1``).
With ``prev_hidden`` ``(B, 1, E)`` (as ``return_next_prev_hidden=True`` hands it back, and
``minLM`` passes it on while decoding) the call continues from ``h_0 = prev_hidden``: the
scan prepends ``log h_0`` with a decay of 1, the single step lerps from it. The scan takes
``log h_0``, so a negative entry makes the module's output NaN; such a call (``T > 1``) is
refused. The module's own states are always positive (``g > 0``).

State and drive. The state is ``h`` (``D = E``, ``state_names = ("h",)``). The drive is
the projection itself, time-major, in the module's order::

    u_t = [h̃ᵖ_t (E) | zᵖ_t (E)]                 (I = 2E)

State Jacobian ``diag(1 − z_t)``: diagonal, input dependent, eigenvalues in ``(0, 1)``;
:meth:`MinGRUAdapter.log_decay` is ``−softplus(zᵖ_t)``, the module's own ``log_coeffs``.
Input Jacobian, elementwise::

    ∂h_t/∂h̃ᵖ_t = z_t g'(h̃ᵖ_t)          g' = 1 (v ≥ 0), σ(v)(1 − σ(v)) (v < 0)
    ∂h_t/∂zᵖ_t = z_t (1 − z_t) (h̃_t − h_{t-1})

Cost of every product per step and sequence: ``O(E · k)`` for ``k`` columns (all
elementwise); no ``D × D`` matrix is ever formed. ``softplus`` is differentiated as PyTorch
does (slope exactly 1 above its threshold 20), so the closed forms are the derivatives of
the function the replay computes.

The minLSTM of the same package (:mod:`gradscope.sequences.minlstm_pkg`) shares the
elementwise machinery here (:class:`ElementwiseAdapter`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradscope.cells.base import DIAGONAL, Params
from gradscope.errors import ShapeError, UnsupportedModuleError
from gradscope.sequences import advice
from gradscope.sequences.base import Drive, SequenceAdapter

#: ``F.softplus``'s default threshold: above it the function is ``x`` and its slope 1.
SOFTPLUS_THRESHOLD = 20.0


def g(v: Tensor) -> Tensor:
    """The package's ``g``: ``v + ½`` for ``v ≥ 0``, ``σ(v)`` below (always positive)."""
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


def g_prime(v: Tensor) -> Tensor:
    """``g'(v)``: 1 for ``v ≥ 0``, ``σ(v)(1 − σ(v))`` below."""
    s = torch.sigmoid(v)
    return torch.where(v >= 0, torch.ones_like(v), s * (1 - s))


def softplus_prime(v: Tensor) -> Tensor:
    """The slope of ``F.softplus`` as autograd takes it: ``σ(v)``, exactly 1 above 20."""
    return torch.where(v > SOFTPLUS_THRESHOLD, torch.ones_like(v), torch.sigmoid(v))


class Elementwise(NamedTuple):
    """Linear factors of ``h_t = a_t ⊙ h_{t-1} + b_t``.

    The decay ``a`` and one coefficient ``∂h_t/∂u_block`` per drive block, each ``(N, E)``.
    """

    a: Tensor
    coeffs: tuple[Tensor, ...]


def _arg(args: tuple, kwargs: dict[str, Any], name: str, index: int, default: Any = None) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


class ElementwiseAdapter(SequenceAdapter):
    """An elementwise recurrence ``h_t = a(u_t) ⊙ h_{t-1} + b(u_t)`` read out by ``to_out``.

    Its drive is one bias-free projection of the layer's input, split in ``blocks`` of
    ``E``; its output is ``to_out(h_t)`` (minGRU, minLSTM of ``minGRU-pytorch``).

    Subclasses set :attr:`projection` (the projection's attribute name), :attr:`blocks`,
    and implement :meth:`factors` (decay, per-block derivatives and the next state),
    :meth:`log_decay` and :meth:`start` (``h_0`` from ``prev_hidden``).
    """

    structure = DIAGONAL
    state_names = ("h",)
    projection = ""
    blocks = 1

    # ------------------------------------------------------------------ layout
    def _width(self, params: Params) -> int:
        return int(params[f"{self.projection}.weight"].shape[0]) // self.blocks

    def state_sizes(self, params: Params) -> tuple[int, ...]:
        """``(E,)``: the inner width."""
        return (self._width(params),)

    def input_size(self, params: Params) -> int:
        """``blocks · E``: the projection's output."""
        return self.blocks * self._width(params)

    # ------------------------------------------------------------------ recording
    def module_params(self, module: nn.Module) -> Params:
        """The projection's weight and, with ``proj_out``, ``to_out.weight``; detached."""
        out: Params = {}
        for name in (self.projection, "to_out"):
            sub = getattr(module, name)
            if getattr(sub, "bias", None) is not None:
                raise UnsupportedModuleError(
                    f"gradscope's {self.kind} adapter: {name} has a bias, which the package's "
                    f"{type(module).__name__} never creates (a modified module?)"
                )
            weight = getattr(sub, "weight", None)
            if weight is not None:
                out[f"{name}.weight"] = weight.detach()
            elif not isinstance(sub, nn.Identity):
                raise UnsupportedModuleError(
                    f"gradscope's {self.kind} adapter: {name} is a {type(sub).__name__}, "
                    "expected nn.Linear or nn.Identity"
                )
        return out

    def start(self, prev: Tensor, T: int) -> Tensor:
        """``h_0`` ``(B, E)`` from ``prev_hidden[:, 0]`` for a call of ``T`` steps."""
        return prev

    def drive(self, params: Params, args: tuple, kwargs: dict[str, Any]) -> Drive:
        """``u = W x`` time-major ``(T, B, blocks · E)``; ``s0`` from ``prev_hidden``.

        ``forward(x, prev_hidden=None, return_next_prev_hidden=False)``. Cost: the module's
        projection, ``O(B T dim E)``.

        Raises:
            ShapeError: ``x`` is not ``(B, T, dim)`` with ``T ≥ 1``, or ``prev_hidden`` is
                not ``(B, 1, E)``.
        """
        x = _arg(args, kwargs, "x", 0)
        prev = _arg(args, kwargs, "prev_hidden", 1)
        if x.ndim != 3 or x.shape[1] == 0:
            raise ShapeError(
                f"{self.kind}: the layer's input must be (B, T, dim) with T >= 1, got "
                f"{tuple(x.shape)}"
            )
        B, T = x.shape[:2]
        E = self._width(params)
        u = F.linear(x, params[f"{self.projection}.weight"]).transpose(0, 1).contiguous()
        s0 = None
        if prev is not None:
            if tuple(prev.shape) != (B, 1, E):
                raise ShapeError(
                    f"{self.kind}: prev_hidden must be (B, 1, E) = ({B}, 1, {E}) as "
                    f"return_next_prev_hidden gives it, got {tuple(prev.shape)}"
                )
            s0 = self.start(prev[:, 0].to(u.dtype), T)
        return Drive(u, s0)

    def readout(self, params: Params, u: Tensor, states: Tensor) -> Tensor:
        """``to_out(h_t)`` batch-first ``(B, T, dim)`` (the states without ``proj_out``)."""
        h = states[1:].transpose(0, 1)
        w = params.get("to_out.weight")
        return h if w is None else F.linear(h, w)

    # ------------------------------------------------------------------ maths
    def factors(self, params: Params, u: Tensor, s: Tensor) -> tuple[Elementwise, Tensor]:
        """The linear factors at ``(u, s)`` and the next state."""
        raise NotImplementedError

    def step(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """One step of the recurrence (see the module docstring)."""
        return self.factors(params, x, s)[1]

    def step_factors(self, params: Params, x: Tensor, s: Tensor) -> tuple[Tensor, Elementwise]:
        """:meth:`step` and its linear factors from one evaluation of the gates."""
        fac, nxt = self.factors(params, x, s)
        return nxt, fac

    def linear_factors(self, params: Params, x: Tensor, s: Tensor) -> Elementwise:
        """The decay ``a_t`` and ``∂h_t/∂u_block`` per drive block."""
        return self.factors(params, x, s)[0]

    def diagonal(self, params: Params, u: Tensor) -> Tensor:
        """``a_t = exp(log_decay)`` per pair ``(N, E)``."""
        return torch.exp(self.log_decay(params, u))

    def product(
        self, params: Params, x: Tensor, s: Tensor, f: Elementwise, m: Tensor, wrt: str, rev: bool
    ) -> Tensor:
        """``diag(a) m``; input: ``Σ_j c_j ⊙ m_j`` (jvp), ``[c_j ⊙ m]_j`` (vjp). ``O(E k)``."""
        if wrt == "state":
            return f.a.unsqueeze(-1) * m
        cs = [c.unsqueeze(-1) for c in f.coeffs]
        if rev:
            return torch.cat([c * m for c in cs], dim=1)
        E = f.a.shape[-1]
        return sum(c * m[:, j * E : (j + 1) * E] for j, c in enumerate(cs))


class MinGRUAdapter(ElementwiseAdapter):
    """``minGRU_pytorch``'s ``minGRU``: ``h_t = (1 − z_t) h_{t-1} + z_t g(h̃ᵖ_t)``."""

    kind = "mingru"
    projection = "to_hidden_and_gate"
    blocks = 2

    def initial_state(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
        """None (the drive reads ``prev_hidden``); refuses a scan from a negative one.

        Raises:
            UnsupportedModuleError: ``T > 1`` and ``prev_hidden`` has a negative entry: the
                module's scan takes its logarithm, so its output is NaN.
        """
        x = _arg(args, kwargs, "x", 0)
        prev = _arg(args, kwargs, "prev_hidden", 1)
        if prev is not None and x.ndim == 3 and x.shape[1] > 1 and bool((prev < 0).any()):
            raise UnsupportedModuleError(
                "gradscope's minGRU adapter: this call scans T > 1 steps from a prev_hidden "
                "with negative entries; minGRU's log-space scan takes log(prev_hidden), so "
                "its output is NaN there. Pass a non-negative prev_hidden (the layer's own "
                "states are positive), or feed the sequence one step at a time"
            )
        return None

    def log_decay(self, params: Params, u: Tensor) -> Tensor:
        """``ln(1 − z_t) = −softplus(zᵖ_t)`` (the module's ``log_coeffs``) ``(N, E)``."""
        E = self._width(params)
        return -F.softplus(u[..., E:])

    def factors(self, params: Params, u: Tensor, s: Tensor) -> tuple[Elementwise, Tensor]:
        """``a = e^{−softplus(zᵖ)}``, ``z = σ(zᵖ)``; ``h = a h_{t-1} + z g(h̃ᵖ)``."""
        E = self._width(params)
        hp, zp = u[..., :E], u[..., E:]
        a = torch.exp(-F.softplus(zp))
        z = torch.sigmoid(zp)
        cand = g(hp)
        nxt = a * s + z * cand
        # ∂a/∂zᵖ = −softplus'(zᵖ) a,  ∂z/∂zᵖ = z (1 − z)
        dz = z * (1 - z) * cand - softplus_prime(zp) * a * s
        return Elementwise(a, (z * g_prime(hp), dz)), nxt

    def vanishing_advice(self, params: Params, facts: dict[str, str]) -> list[str]:
        """A gate bias towards keeping, with this layer's values."""
        return advice.mingru(params, facts)


ADAPTER = MinGRUAdapter()

__all__ = [
    "ADAPTER",
    "Elementwise",
    "ElementwiseAdapter",
    "MinGRUAdapter",
    "g",
    "g_prime",
    "softplus_prime",
]
