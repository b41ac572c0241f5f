r"""GRU cells: ``nn.GRU`` (fused) and ``nn.GRUCell``.

Equations (PyTorch's; gate rows of ``weight_ih`` / ``weight_hh`` in the order r, z, n;
Cho et al. 2014, with the reset gate applied *after* the recurrent matrix product as in
cuDNN and PyTorch)::

    r   = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
    z   = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
    q   = W_hn h_{t-1} + b_hn
    n   = tanh(W_in x_t + b_in + r ⊙ q)
    h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}

Biases are absent (zero) for ``bias=False``. With ``v = (1 - z)(1 - n²)``, the Jacobians are
sums of row-scaled gate blocks of ``W_hh`` and ``W_ih``::

    ∂h_t/∂h_{t-1} = diag(v q r(1-r)) W_hr + diag((h_{t-1} - n) z(1-z)) W_hz
                    + diag(v r) W_hn + diag(z)
    ∂h_t/∂x_t     = diag(v q r(1-r)) W_ir + diag((h_{t-1} - n) z(1-z)) W_iz + diag(v) W_in

The ``diag(z)`` term is the GRU's leaky-integrator path: an update gate near 1 copies the
state (and the gradient) through unchanged.

Products with ``k`` columns never form the ``(H, H)`` matrix: with ``c_r, c_z, c_n`` the row
scalings above and ``[·; ·; ·]`` the stacked gate blocks (one GEMM for all columns,
``O(N k H (H + I))``)::

    J v = c_r ⊙ (W_hr v) + c_z ⊙ (W_hz v) + c_n ⊙ (W_hn v) + z ⊙ v
    Jᵀ u = W_hhᵀ [c_r ⊙ u; c_z ⊙ u; c_n ⊙ u] + z ⊙ u

and likewise for ``K = ∂h_t/∂x_t`` with ``W_ih`` and ``c_n = v`` (no ``z`` term).
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from gradscope.cells.base import Params
from gradscope.cells.blocks import cache_block_size, new_output
from gradscope.cells.gated import GatedCell, GatedFactors, GatedForm
from gradscope.cells.gates import Gates, gate_rows, preacts


class GRUAdapter(GatedCell):
    """Adapter for ``nn.GRU`` / ``nn.GRUCell`` (with or without biases); state ``h``.

    Its :class:`~gradscope.cells.gated.GatedForm`: the r, z, n blocks of ``W_hh`` feeding
    ``h``, and the additive path ``h ← h`` by ``z``.
    """

    kind = "gru"
    state_names = ("h",)
    takes_xp = True
    form = GatedForm(
        parts=("h",),
        blocks=("r", "z", "n"),
        terms=(("h", "r"), ("h", "z"), ("h", "n")),
        order=("h",),
        diagonal=(("h", "h"),),
    )
    gates = Gates(
        shown=("r", "z"),
        carried="z",
        word="update",
        path="update",
        path_text="update-gate path (diag z)",
        short_text="z path",
    )

    def state_sizes(self, params: Params) -> tuple[int, ...]:  # noqa: D102
        return (int(params["weight_hh"].shape[1]),)

    @staticmethod
    def _project(params: Params, x: Tensor) -> Tensor:
        """``W_ih x + b_ih`` ``(N, 3H)``."""
        gi = x @ params["weight_ih"].T
        if "bias_ih" in params:
            gi = gi + params["bias_ih"]
        return gi

    @staticmethod
    def _gates(
        params: Params, x: Tensor, h: Tensor, xp: Tensor | None = None, keep_z: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``r, z, n, q`` (each ``(N, H)``) with ``q = W_hn h + b_hn`` (``xp``: W_ih x + b_ih).

        ``keep_z``: an ``(N, H)`` buffer that receives the update gate's pre-activations.
        """
        gi = GRUAdapter._project(params, x) if xp is None else xp
        gh = h @ params["weight_hh"].T
        if "bias_hh" in params:
            gh = gh + params["bias_hh"]
        i_r, i_z, i_n = gi.chunk(3, dim=-1)
        h_r, h_z, q = gh.chunk(3, dim=-1)
        r = torch.sigmoid(i_r + h_r)
        if keep_z is None:
            z = torch.sigmoid(i_z + h_z)
        else:
            z = torch.sigmoid(torch.add(i_z, h_z, out=keep_z))
        n = torch.tanh(i_n + r * q)
        return r, z, n, q

    def step(self, params: Params, x: Tensor, s: Tensor, xp: Tensor | None = None) -> Tensor:
        """``h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}``."""
        _, z, n, _ = self._gates(params, x, s, xp)
        return n + z * (s - n)

    def _coefficients(
        self, params: Params, x: Tensor, s: Tensor, wrt: str
    ) -> tuple[Tensor, Tensor]:
        """Row scalings ``coef (N, 3, H)`` of the r, z, n gate blocks, and ``z (N, H)``.

        The n block is scaled by ``v r`` for ``wrt="state"`` (the reset gate multiplies
        ``W_hn h``) and by ``v`` for ``wrt="input"``.
        """
        r, z, n, q = self._gates(params, x, s)
        v = (1.0 - z) * ((1.0 - n) * (1.0 + n))  # 1 - n² without cancellation
        coef = x.new_empty((x.shape[0], 3, z.shape[-1]))
        torch.mul(v * q, r * (1.0 - r), out=coef[:, 0])
        torch.mul(s - n, z * (1.0 - z), out=coef[:, 1])
        if wrt == "state":
            torch.mul(v, r, out=coef[:, 2])
        else:
            coef[:, 2] = v
        return coef, z

    @staticmethod
    def _combine(coef: Tensor, weight: Tensor, diag: Tensor | None = None) -> Tensor:
        """``Σ_k diag(coef[:, k]) W_k (+ diag(diag))`` for the gate blocks of ``weight (3H, K)``.

        Written in place, in cache-sized blocks of sequences on the CPU, as three
        broadcast multiply-adds per element; no diagonal matrix is built.
        """
        n, _, hidden = coef.shape
        w3 = weight.reshape(3, hidden, -1)
        out = new_output((n, hidden, w3.shape[-1]), coef)
        c = coef.unsqueeze(-1)
        rows = cache_block_size(n, hidden * w3.shape[-1] * out.element_size(), out.device)
        for start in range(0, n, rows):
            sl = slice(start, start + rows)
            blk = out[sl]
            torch.mul(c[sl, 0], w3[0], out=blk)
            blk.addcmul_(c[sl, 1], w3[1])
            blk.addcmul_(c[sl, 2], w3[2])
            if diag is not None:
                blk.diagonal(dim1=-2, dim2=-1).add_(diag[sl])
        return out

    @torch.no_grad()
    def jacobian_state(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """``∂h_t/∂h_{t-1}``, shape ``(N, H, H)`` (computed in place, not tracking gradients)."""
        coef, z = self._coefficients(params, x, s, "state")
        return self._combine(coef, params["weight_hh"], diag=z)

    @torch.no_grad()
    def jacobian_input(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """``∂h_t/∂x_t``, shape ``(N, H, I)`` (not tracking gradients)."""
        coef, _ = self._coefficients(params, x, s, "input")
        return self._combine(coef, params["weight_ih"])

    def project_input(self, params: Params, x: Tensor) -> Tensor:
        """``W_ih x + b_ih`` (see :meth:`CellAdapter.project_input`)."""
        return self._project(params, x)

    def step_factors(
        self, params: Params, x: Tensor, s: Tensor, xp: Tensor | None = None
    ) -> tuple[Tensor, GatedFactors]:
        """:meth:`step` and its linear factors from one gate evaluation."""
        r, z, n, q = self._gates(params, x, s, xp)
        return n + z * (s - n), self._factors(s, r, z, n, q)

    def step_carried(
        self, params: Params, x: Tensor, s: Tensor
    ) -> tuple[Tensor, GatedFactors, Tensor]:
        """:meth:`step_factors` and ``a_z``, written by the gate evaluation itself."""
        a_z = s.new_empty(s.shape)
        r, z, n, q = self._gates(params, x, s, keep_z=a_z)
        return n + z * (s - n), self._factors(s, r, z, n, q), a_z

    def linear_factors(self, params: Params, x: Tensor, s: Tensor) -> GatedFactors:
        """Row scalings ``(N, 3, H)`` for state and input, and ``z`` ``(N, H)``."""
        return self._factors(s, *self._gates(params, x, s))

    def vanishing_advice(self, params: Params, facts: dict[str, str]) -> list[str]:
        """An update-gate bias towards keeping, orthogonal weights, then an LSTM."""
        H = int(params["weight_hh"].shape[1])
        rows = [params[k][H : 2 * H].double() for k in ("bias_ih", "bias_hh") if k in params]
        now = f", now mean {float(sum(rows).mean()):+.2f}" if rows else ""
        return [
            "Bias the update gate towards keeping the state (the z rows H:2H of bias_ih + "
            f"bias_hh{now}; h_t = (1 − z) n + z h_(t−1)) to 1–3, so z ≈ 0.73–0.95 at "
            "initialisation; the chrono idea of Tallec & Ollivier (2018) applies to z.",
            "Initialise the recurrent weights orthogonally (torch.nn.init.orthogonal_).",
            "If z cannot stay near 1 because writing needs it low: a GRU ties keeping (z) "
            "to writing (1 − z), an LSTM separates them (f keeps, i writes), so an LSTM "
            "with a forget-gate bias of 1–3 can keep and write at once.",
        ]

    def gate_values(self, params: Params, x: Tensor, s: Tensor) -> tuple[dict, Tensor]:
        """``{"r", "z"}`` and ``ln z = −softplus(−a_z)`` (exact where ``z`` rounds to 0)."""
        gi, gh = preacts(params, x, s)
        a_r = gi.chunk(3, dim=-1)[0] + gh.chunk(3, dim=-1)[0]
        a_z = gi.chunk(3, dim=-1)[1] + gh.chunk(3, dim=-1)[1]
        return {"r": torch.sigmoid(a_r), "z": torch.sigmoid(a_z)}, nnf.logsigmoid(a_z)

    def carried_logits(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """``a_z`` from the z rows of the weights alone (a third of the forward)."""
        gi, gh = preacts(params, x, s, gate_rows(params, 3, 1))
        return gi + gh

    def carried_from_logits(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """``z = σ(a_z)`` and ``ln z``."""
        return torch.sigmoid(a), nnf.logsigmoid(a)

    @staticmethod
    def _factors(s: Tensor, r: Tensor, z: Tensor, n: Tensor, q: Tensor) -> GatedFactors:
        v = (1.0 - z) * ((1.0 - n) * (1.0 + n))  # 1 - n² without cancellation
        c_r, c_z = v * q * r * (1.0 - r), (s - n) * z * (1.0 - z)
        state = torch.stack([c_r, c_z, v * r], dim=1)
        inp = torch.stack([c_r, c_z, v], dim=1)
        return GatedFactors(state, (z,), (), inp)


GRU_ADAPTER = GRUAdapter()


def register() -> None:
    """Register :data:`GRU_ADAPTER` for ``nn.GRU`` (fused) and ``nn.GRUCell``."""
    from gradscope.cells import register_cell

    register_cell(nn.GRU, GRU_ADAPTER, fused=True, overwrite=True)
    register_cell(nn.GRUCell, GRU_ADAPTER, overwrite=True)
