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

from gradscope.cells.base import Params
from gradscope.cells.gated import GatedCell, GatedFactors, GatedForm
from gradscope.cells.gates import Gates, preacts
from gradscope.errors import ArgumentError


class VanillaAdapter(GatedCell):
    """Adapter for ``nn.RNN`` / ``nn.RNNCell`` with ``nonlinearity`` tanh or relu.

    Its :class:`~gradscope.cells.gated.GatedForm`: one block (``W_hh``) feeding ``h``,
    scaled by ``φ'(a_t)``; no additive path.
    """

    state_names = ("h",)
    takes_xp = True
    form = GatedForm(parts=("h",), blocks=("a",), terms=(("h", "a"),), order=("h",))
    gates = Gates(shown=("φ'",), carried=None, word="dphi")

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
    ) -> tuple[Tensor, GatedFactors]:
        """:meth:`step` and ``φ'(a_t)`` from one pre-activation."""
        a = self._preactivation(params, x, s, xp)
        return self._phi(a), GatedFactors(self._dphi(a).unsqueeze(1))

    def step_carried(
        self, params: Params, x: Tensor, s: Tensor
    ) -> tuple[Tensor, GatedFactors, Tensor]:
        """:meth:`step_factors` and ``a_t`` (whose ``φ'`` is the vanilla cell's gate)."""
        a = self._preactivation(params, x, s)
        return self._phi(a), GatedFactors(self._dphi(a).unsqueeze(1)), a

    def linear_factors(self, params: Params, x: Tensor, s: Tensor) -> GatedFactors:
        """``φ'(a_t)`` ``(N, 1, H)``, the scaling of the one block."""
        return GatedFactors(self._dphi(self._preactivation(params, x, s)).unsqueeze(1))

    def vanishing_advice(self, params: Params, facts: dict[str, str]) -> list[str]:
        """Orthogonal / identity initialisation, then a gated cell (the architecture)."""
        return [
            "Initialise weight_hh orthogonally (torch.nn.init.orthogonal_) or, with ReLU, "
            "as the identity (IRNN, Le et al. 2015): its singular values then all start at 1, "
            "so the products of the step Jacobians start near norm 1 (one-step spectral "
            f"radius median now {facts['radius']}, σ_max {facts['smax']}).",
            "Switch to a gated cell (nn.LSTM / nn.GRU): its additive state path carries "
            "gradients across long lags whatever W_hh does.",
        ]

    def gate_values(self, params: Params, x: Tensor, s: Tensor) -> tuple[dict, None]:
        """``{"φ'": φ'(a_t)}``; no carried gate."""
        return {"φ'": self._dphi(self.carried_logits(params, x, s))}, None

    def carried_logits(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """The whole pre-activation ``a_t`` (its ``φ'`` is the vanilla cell's gate)."""
        gi, gh = preacts(params, x, s)
        return gi + gh

    def carried_from_logits(self, a: Tensor) -> tuple[Tensor, None]:
        """``φ'(a)``; no log (no additive path to carry)."""
        return self._dphi(a), None


_ADAPTERS = {name: VanillaAdapter(name) for name in ("tanh", "relu")}


def register() -> None:
    """Register the vanilla adapters for ``nn.RNN`` (fused) and ``nn.RNNCell``."""
    from gradscope.cells import _BY_KIND, register_cell

    register_cell(nn.RNN, _ADAPTERS["tanh"], fused=True, overwrite=True)
    register_cell(nn.RNNCell, _ADAPTERS["tanh"], overwrite=True)
    _BY_KIND["rnn_relu"] = _ADAPTERS["relu"]
