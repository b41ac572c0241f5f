"""The RG-LRU of Griffin / RecurrentGemma (``transformers``' ``RecurrentGemmaRglru``).

For every channel of the LRU width ``W``, from the layer's input ``x_t`` (the output of the
recurrent block's short convolution) and block-diagonal gates (``H`` heads of ``W/H``
channels, weights ``(H, W/H, W/H)``):

    i_t = σ(x_t W_i + b_i)                          input gate
    r_t = σ(x_t W_a + b_a)                          recurrence gate
    a_t = exp(−c · softplus(Λ) ⊙ r_t)               c = 8
    h_t = a_t ⊙ h_{t-1} + sqrt(1 − a_t²) ⊙ (i_t ⊙ x_t)

and the module returns all ``h_t``. A *reset* (``position_ids == 0``, a document boundary)
sets ``a_t = 0`` and the multiplier ``sqrt(1 − a_t²)`` to 1: ``h_t = i_t ⊙ x_t``. Every
sequence starts with one (its first position is 0), so ``∂h_1/∂h_0 = 0``.

Why this module and not ``RecurrentGemmaRecurrentBlock``: the Rglru's forward holds the whole
recurrence, its output is the states themselves (the readout is exact), and its input is
already the convolved sequence; the block's convolution, GeLU branch and projections
(``linear_y``, ``linear_x``, ``linear_out``) are parallel computations around it, and the
block keeps a convolution cache that the Rglru does not need. Recording the Rglru puts the
input Jacobian on ``(x, r, i)``, the quantities that the recurrence reads.

State and drive. The state is ``h`` (``D = W``). The drive, computed in parallel over time
with the module's own operations, is

    u_t = [x_t (W), r_t (W), i_t (W), keep_t (1)]                  (I = 3W + 1),

``keep_t = 0`` at a reset and 1 otherwise (a switch: its Jacobian column is zero). The state
Jacobian is ``diag(a_t)`` (0 at a reset): diagonal, input dependent, eigenvalues in
``[0, 1)``; :meth:`RglruAdapter.log_decay` returns ``ln a_t = −c softplus(Λ) r_t`` without
rounding ``a_t`` first (``−inf`` at a reset). The input Jacobian is diagonal per block:
``∂h/∂x = m i``, ``∂h/∂i = m x``, ``∂h/∂r = −c softplus(Λ) (a h_{t-1} − (a²/m) i x)`` with
``m = sqrt(1 − a²)`` (``i``, ``x`` and 0 at a reset). That is the derivative of the
function the module computes; the module's own backward clips ``d sqrt(y)/dy`` at 1000
(``SqrtBoundDerivative``), which differs only where ``1 − a² < 2.5e-7``.

Cost of every product per step and sequence: ``O(W · k)`` for ``k`` columns; no ``D × D``
matrix is ever formed.

Precision. The module accumulates the state in float32 whatever its dtype
(``_rnn_scan(acc_dtype=torch.float32)``): ``h = a.float() * h + b.float()``. In a float64
model :meth:`RglruAdapter.step` rounds its result the same way, *in value only* (the
derivatives are those of the exact recurrence, the rounding is added as a detached
correction), so a float64 model is replayed to float64 rounding and its Jacobians are exact
in float64. For float16 / bfloat16 models the drive is float32 (the accumulation dtype);
their gates are then recomputed in float32, so the replay matches to half precision.

Initial state. With ``use_cache=True`` the module starts from ``recurrent_states``, an
attribute set by the recurrent block (zeros for a new sequence, the last state during
generation); :meth:`RglruAdapter.initial_state` reads it before the module runs, so
generation steps are replayed from the cached state. Note that the module leaves its final
state in that attribute after every call, also with ``use_cache=False``: calling the Rglru
directly (outside its block) a second time continues from it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradscope.cells.base import DIAGONAL, Params
from gradscope.sequences import advice
from gradscope.sequences.base import Drive, SequenceAdapter, scalar

#: The constant ``c`` of ``a = exp(−c softplus(Λ) r)`` (hard-coded in the module's forward).
GATE_SCALE = 8.0


class _Factors(NamedTuple):
    """Per-pair factors of the linearisation, each ``(N, W)``."""

    a: Tensor  # a_t (0 at a reset) = ∂h_t/∂h_{t-1}
    m_i: Tensor  # ∂h/∂x = m i
    m_x: Tensor  # ∂h/∂i = m x
    g_r: Tensor  # ∂h/∂r


def _wide(dtype: torch.dtype) -> torch.dtype:
    """The drive's dtype: the module's, or float32 (its accumulation dtype) for half types."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _arg(args: tuple, kwargs: dict[str, Any], name: str, index: int) -> Any:
    return kwargs[name] if name in kwargs else args[index]


class RglruAdapter(SequenceAdapter):
    """``transformers``' ``RecurrentGemmaRglru`` (Griffin's RG-LRU): an input-dependent diagonal."""

    kind = "rglru"
    state_names = ("h",)
    structure = DIAGONAL
    config = {"gate_scale": "positive"}  # noqa: RUF012 (a = σ(Λ)^(c r): c > 0 keeps |a| < 1)

    # ------------------------------------------------------------------ layout
    def _width(self, params: Params) -> int:
        return int(params["recurrent_param"].shape[0])

    def state_sizes(self, params: Params) -> tuple[int, ...]:
        """``(W,)``."""
        return (self._width(params),)

    def input_size(self, params: Params) -> int:
        """``3W + 1``: ``x``, ``r``, ``i``, ``keep``."""
        return 3 * self._width(params) + 1

    def _split(self, params: Params, u: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        W = self._width(params)
        return u[..., :W], u[..., W : 2 * W], u[..., 2 * W : 3 * W], u[..., 3 * W :]

    # ------------------------------------------------------------------ recording
    def module_params(self, module: nn.Module) -> Params:
        """``Λ``, the two gates' block-diagonal weights and biases, and ``c`` (0-d)."""
        out: Params = {
            name: getattr(module, name).detach()
            for name in (
                "recurrent_param",
                "input_gate_weight",
                "input_gate_bias",
                "recurrent_gate_weight",
                "recurrent_gate_bias",
            )
        }
        out["gate_scale"] = torch.tensor(GATE_SCALE, dtype=torch.float64)
        return out

    def initial_state(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
        """The module's ``recurrent_states`` ``(B, W)`` before the call, or None (zeros)."""
        h0 = getattr(module, "recurrent_states", None)
        if h0 is None:
            return None
        batch = _arg(args, kwargs, "activations", 0).shape[0]
        if h0.ndim != 2 or h0.shape[0] not in (1, batch):
            return None  # the module cannot run from it either; let its own error show
        return h0.detach().expand(batch, -1)

    def drive(self, params: Params, args: tuple, kwargs: dict[str, Any]) -> Drive:
        """``u = [x, r, i, keep]`` ``(T, B, 3W + 1)`` from ``activations``, ``position_ids``.

        The gates are computed with the module's own operations (``baddbmm`` per head).
        ``s0`` is None: a cached state is read by :meth:`initial_state`.
        """
        x = _arg(args, kwargs, "activations", 0)
        pos = _arg(args, kwargs, "position_ids", 1)
        B, T, W = x.shape
        heads, bw, _ = params["input_gate_weight"].shape
        xh = x.reshape(B * T, heads, bw).permute(1, 0, 2)

        def gate(name: str) -> Tensor:
            res = torch.baddbmm(params[name + "_bias"][:, None, :], xh, params[name + "_weight"])
            return torch.sigmoid(res.transpose(0, 1).reshape(B, T, W))

        i, r = gate("input_gate"), gate("recurrent_gate")
        keep = (pos != 0).expand(B, T)[..., None]
        dtype = _wide(x.dtype)
        u = torch.cat([x.to(dtype), r.to(dtype), i.to(dtype), keep.to(dtype)], dim=-1)
        return Drive(u.transpose(0, 1).contiguous())

    def readout(self, params: Params, u: Tensor, states: Tensor) -> Tensor:
        """All ``h_t`` ``(B, T, W)`` in the module's dtype, as the module returns them."""
        return states[1:].transpose(0, 1).to(params["input_gate_weight"].dtype)

    # ------------------------------------------------------------------ maths
    def _gates(self, params: Params, u: Tensor) -> tuple[Tensor, ...]:
        """``(x, i, keep, log a, a, m)`` per pair, in the module's order of operations."""
        x, r, i, keep = self._split(params, u)
        keep = keep > 0.5
        sp = F.softplus(params["recurrent_param"]).to(u.dtype)
        log_a = -scalar(params, "gate_scale") * r * sp
        a = torch.exp(log_a)
        m = torch.sqrt(1 - torch.exp(2 * log_a))
        a = torch.where(keep, a, torch.zeros_like(a))
        m = torch.where(keep, m, torch.ones_like(m))
        return x, i, keep, log_a, a, m

    def step(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """``h_t = a_t h_{t-1} + m_t i_t x_t`` (rounded to float32 in value, see above)."""
        xs, i, _, _, a, m = self._gates(params, x)
        b = xs * i * m
        h = a * s + b
        if h.dtype == torch.float64:  # the module's float32 accumulation, value only
            h32 = (a.float() * s.float() + b.float()).to(h.dtype)
            h = h + (h32 - h).detach()
        return h

    def diagonal(self, params: Params, u: Tensor) -> Tensor:
        """``a_t`` per pair ``(N, W)`` (0 at a reset)."""
        return self._gates(params, u)[4]

    def log_decay(self, params: Params, u: Tensor) -> Tensor:
        """``ln a_t = −c softplus(Λ) r_t`` per pair ``(N, W)``; ``−inf`` at a reset."""
        _, _, keep, log_a, _, _ = self._gates(params, u)
        return torch.where(keep, log_a, torch.full_like(log_a, float("-inf")))

    def linear_factors(self, params: Params, x: Tensor, s: Tensor) -> _Factors:
        """``a``, ``m i``, ``m x`` and ``∂h/∂r`` per pair (see the module docstring)."""
        xs, i, keep, log_a, a, m = self._gates(params, x)
        csp = scalar(params, "gate_scale") * F.softplus(params["recurrent_param"]).to(x.dtype)
        # ∂a/∂r = −c sp a,  ∂m/∂r = c sp a²/m  (a² as the module forms it: exp(2 ln a))
        g_r = csp * (torch.exp(2 * log_a) / m * i * xs - a * s)
        g_r = torch.where(keep, g_r, torch.zeros_like(g_r))
        return _Factors(a, m * i, m * xs, g_r)

    def product(
        self, params: Params, x: Tensor, s: Tensor, f: _Factors, m: Tensor, wrt: str, rev: bool
    ) -> Tensor:
        """The four products in ``O(W · k)`` per pair (see the module docstring)."""
        if wrt == "state":  # diag(a) = its transpose
            return f.a.unsqueeze(-1) * m
        W = f.a.shape[-1]
        mi, mx, gr = f.m_i.unsqueeze(-1), f.m_x.unsqueeze(-1), f.g_r.unsqueeze(-1)
        if not rev:  # m = [δx; δr; δi; δkeep] (N, 3W + 1, k)
            return mi * m[:, :W] + gr * m[:, W : 2 * W] + mx * m[:, 2 * W : 3 * W]
        return torch.cat([mi * m, gr * m, mx * m, m.new_zeros((m.shape[0], 1, m.shape[-1]))], 1)

    def vanishing_advice(self, params: Params, facts: dict[str, str]) -> list[str]:
        """Λ (``recurrent_param``) and the recurrence gate, with this layer's values."""
        return advice.rglru(params, facts)


ADAPTER = RglruAdapter()

#: The classes this module serves, by qualified name (``transformers`` is not imported here).
SERVES = {
    "transformers.models.recurrent_gemma.modeling_recurrent_gemma.RecurrentGemmaRglru": ADAPTER
}

__all__ = ["ADAPTER", "SERVES", "GATE_SCALE", "RglruAdapter"]
