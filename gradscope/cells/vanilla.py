r"""Vanilla (Elman) RNN cells: ``nn.RNN`` and ``nn.RNNCell`` with tanh or relu.

Equations (PyTorch's, state ``s = h`` of size H)::

    a_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh
    h_t = φ(a_t),              φ = tanh or relu

Jacobians::

    ∂h_t/∂h_{t-1} = diag(φ'(a_t)) W_hh          (H, H)
    ∂h_t/∂x_t     = diag(φ'(a_t)) W_ih          (H, I)

with ``tanh'(a) = 1 - tanh(a)²`` and ``relu'(a) = 1[a > 0]`` (PyTorch's convention at 0).
Products with ``k`` columns, never forming the ``(H, H)`` matrix (one GEMM with the weights
for all ``N · k`` columns, ``O(N k H (H + I))``)::

    J v = φ'(a) ⊙ (W_hh v)        Jᵀ u = W_hhᵀ (φ'(a) ⊙ u)
    K v = φ'(a) ⊙ (W_ih v)        Kᵀ u = W_ihᵀ (φ'(a) ⊙ u)

Every step multiplies the same ``W_hh`` into the backward pass, which is why these cells
vanish (or explode) exponentially: Pascanu, Mikolov & Bengio (2013).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gradscope.cells.base import CellAdapter, Params
from gradscope.cells.blocks import (
    scaled_jvp_run,
    scaled_run_factors,
    scaled_sweep,
    scaled_vjp_run,
    weight_t_times,
    weight_times,
)
from gradscope.errors import ArgumentError


class VanillaAdapter(CellAdapter):
    """Adapter for ``nn.RNN`` / ``nn.RNNCell`` with ``nonlinearity`` tanh or relu."""

    state_names = ("h",)

    def __init__(self, nonlinearity: str = "tanh") -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ArgumentError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        self.kind = f"rnn_{nonlinearity}"

    def for_module(self, module: nn.Module) -> VanillaAdapter:
        """The adapter matching the module's ``nonlinearity``."""
        return _ADAPTERS[getattr(module, "nonlinearity", "tanh")]

    def state_sizes(self, params: Params) -> tuple[int, ...]:  # noqa: D102
        return (int(params["weight_hh"].shape[0]),)

    def project_input(self, params: Params, x: Tensor) -> Tensor:
        """``W_ih x + b_ih + b_hh`` (see :meth:`CellAdapter.project_input`)."""
        a = x @ params["weight_ih"].T
        if "bias_ih" in params:
            a = a + params["bias_ih"] + params["bias_hh"]
        return a

    def _preactivation(
        self, params: Params, x: Tensor, s: Tensor, xp: Tensor | None = None
    ) -> Tensor:
        return (self.project_input(params, x) if xp is None else xp) + s @ params["weight_hh"].T

    def _phi(self, a: Tensor) -> Tensor:
        return torch.tanh(a) if self.nonlinearity == "tanh" else torch.relu(a)

    def _dphi(self, a: Tensor) -> Tensor:
        if self.nonlinearity == "tanh":
            # (1 - t)(1 + t), not 1 - t²: where |t| -> 1 the rounded t² cancels against 1
            # (1e-9 relative at |a| = 8 in float64); 1 ∓ t is exact there (Sterbenz)
            t = torch.tanh(a)
            return (1.0 - t) * (1.0 + t)
        # 1[a > 0], but NaN where a is NaN (like the step), not a silent 0
        return torch.where(torch.isnan(a), a, (a > 0).to(a.dtype))

    def step(self, params: Params, x: Tensor, s: Tensor, xp: Tensor | None = None) -> Tensor:  # noqa: D102
        return self._phi(self._preactivation(params, x, s, xp))

    def jacobian_state(self, params: Params, x: Tensor, s: Tensor) -> Tensor:  # noqa: D102
        d = self._dphi(self._preactivation(params, x, s))
        return d.unsqueeze(-1) * params["weight_hh"]

    def jacobian_input(self, params: Params, x: Tensor, s: Tensor) -> Tensor:  # noqa: D102
        d = self._dphi(self._preactivation(params, x, s))
        return d.unsqueeze(-1) * params["weight_ih"]

    def step_factors(
        self, params: Params, x: Tensor, s: Tensor, xp: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """:meth:`step` and ``φ'(a_t)`` from one pre-activation."""
        a = self._preactivation(params, x, s, xp)
        return self._phi(a), self._dphi(a).unsqueeze(-1)

    def step_carried(self, params: Params, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`step_factors` and ``a_t`` (whose ``φ'`` is the vanilla cell's gate).

        A subclass that overrides :meth:`step` or :meth:`step_factors` gets the default.
        """
        cls = type(self)
        if (
            cls.step is not VanillaAdapter.step
            or cls.step_factors is not VanillaAdapter.step_factors
        ):
            return super().step_carried(params, x, s)
        a = self._preactivation(params, x, s)
        return self._phi(a), self._dphi(a).unsqueeze(-1), a

    def linear_factors(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """``φ'(a_t)`` ``(N, H, 1)``."""
        return self._dphi(self._preactivation(params, x, s)).unsqueeze(-1)

    def state_sweep(self, params, factors, g_last, out_cot, valid):
        """The backward sweep (:meth:`CellAdapter.state_sweep`), one GEMM per step.

        By :func:`~gradscope.cells.blocks.scaled_sweep`: ``G_k = W_hhᵀ (φ' ⊙ G_{k+1})``, one
        ``(B, H) × (H, H)`` GEMM per step. None for a subclass that overrides :meth:`product`.
        """
        if type(self).product is not VanillaAdapter.product:
            return None
        scalings = [f.squeeze(-1) for f in factors]
        return scaled_sweep(params["weight_hh"], scalings, None, g_last, out_cot, valid)

    def run_factors(self, factors, per_step):
        """``φ'`` laid out for the run loops (:func:`scaled_run_factors`)."""
        return scaled_run_factors(factors, None, per_step)

    def state_jvp_run(self, params, factors, steps, batch, v):
        """``J v = φ' ⊙ (W_hh v)`` over a run by :func:`scaled_jvp_run` (one GEMM per step).

        None for a subclass that overrides :meth:`product`.
        """
        if type(self).product is not VanillaAdapter.product:
            return None
        return scaled_jvp_run(params["weight_hh"], factors, steps, batch, v)

    def state_vjp_run(self, params, factors, steps, batch, u):
        """``Jᵀ u = W_hhᵀ (φ' ⊙ u)`` over a run by :func:`scaled_vjp_run`."""
        if type(self).product is not VanillaAdapter.product:
            return None
        return scaled_vjp_run(params["weight_hh"], factors, steps, batch, u)

    def product(self, params, x, s, factors, m, wrt, rev):  # noqa: D102 (see the module docstring)
        w = params["weight_hh" if wrt == "state" else "weight_ih"]
        if rev:
            return weight_t_times(w, factors * m)
        return factors * weight_times(w, m)


_ADAPTERS = {name: VanillaAdapter(name) for name in ("tanh", "relu")}


def register() -> None:
    """Register the vanilla adapters for ``nn.RNN`` (fused) and ``nn.RNNCell``."""
    from gradscope.cells import _BY_KIND, register_cell

    register_cell(nn.RNN, _ADAPTERS["tanh"], fused=True, overwrite=True)
    register_cell(nn.RNNCell, _ADAPTERS["tanh"], overwrite=True)
    _BY_KIND["rnn_relu"] = _ADAPTERS["relu"]
