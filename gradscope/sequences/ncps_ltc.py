r"""``ncps``' liquid time-constant network (``ncps.torch.LTC``), its fused ODE solver unfolded.

Hasani et al. 2021, "Liquid Time-constant Networks"; the package's ``ncps/torch/ltc_cell.py``
(``LTCCell._ode_solver``, ``_map_inputs``, ``_map_outputs``). The wrapper's loop, the mixed
memory, the state and the drive are in :mod:`gradscope.sequences._ncps`.

One step from the state ``v`` (``N`` neurons) and the input ``x``: the input is mapped,
``x̃ = w_in ⊙ x + b_in`` (``affine``; ``linear``: no ``b_in``; otherwise ``x̃ = x``), the
sensory synapses are summed once,

.. math::
    a^s_{ji} = w^s_{ji} M^s_{ji}\, σ(σ^s_{ji}(x̃_j − μ^s_{ji})), \quad
    n^s_i = \sum_j a^s_{ji} E^s_{ji}, \quad d^s_i = \sum_j a^s_{ji},

and the semi-implicit Euler step of the ODE is unfolded ``U`` times (``ode_unfolds``) with
``c_i = c^m_i U / τ_i``:

.. math::
    a_{ji} = w_{ji} M_{ji}\, σ(σ_{ji}(v_j − μ_{ji})), \quad
    v_i \leftarrow \frac{c_i v_i + g_i v^{leak}_i + \sum_j a_{ji} E_{ji} + n^s_i}
                      {c_i + g_i + \sum_j a_{ji} + d^s_i + ε},

with ``w``, ``w^s``, ``c^m``, ``g`` through softplus when ``implicit_param_constraints``
(identity otherwise), ``M``, ``M^s`` the wiring's masks and ``E``, ``E^s`` its reversal
potentials. The output is ``w_out ⊙ v_{:motor} + b_out`` (the motor neurons, mapped).

Jacobian: with ``Δ_i`` the denominator and ``v'`` the unfold's result, one unfold is

.. math:: \frac{∂v'_i}{∂v_j} = \frac{c_i δ_{ij} + a'_{ji}(E_{ji} − v'_i)}{Δ_i}, \quad
    a'_{ji} = w_{ji} M_{ji} σ_{ji}\, σ(1 − σ),

and ``∂v'/∂n^s = 1/Δ``, ``∂v'/∂d^s = −v'/Δ``, ``∂v'/∂c = (v − v')/Δ``; the step is the
product of the ``U`` unfolds (kept as their states ``v^{(0)} … v^{(U)}`` and denominators),
``∂c/∂τ = −c/τ``. The synapses couple every pair of neurons, so the state Jacobian is dense:
a product costs ``O(U · N² · k)`` for ``k`` columns, what ``k`` steps cost; the ``N × N``
matrices of one unfold are rebuilt from its state in blocks of pairs, never kept.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from gradscope.cells.base import Params
from gradscope.sequences._ncps import NcpsAdapter
from gradscope.sequences.advice import spread
from gradscope.sequences.base import count, scalar

#: Pairs per block when the unfolds' ``N × N`` matrices are rebuilt (bounds memory).
PAIR_BLOCK = 256
_POSITIVE = ("w", "sensory_w", "cm", "gleak")
_PLAIN = ("vleak", "sigma", "mu", "erev", "sensory_sigma", "sensory_mu", "sensory_erev")
_MASKS = ("sparsity_mask", "sensory_sparsity_mask")
_MAPS = ("input_w", "input_b", "output_w", "output_b")


class _Factors(NamedTuple):
    xm: Tensor  # (N, I) the mapped input
    v: Tensor  # (N, U + 1, n) the unfolds' states, v^(0) = v_{t-1}
    den: Tensor  # (N, U, n) their denominators Δ (ε included)
    cm: Tensor  # (N, n) c = c^m U / τ
    tau: Tensor  # (N, n)


def _synapses(v: Tensor, w: Tensor, mask: Tensor, sigma: Tensor, mu: Tensor) -> Tensor:
    """``w ⊙ σ(σ(v_j − μ)) ⊙ M`` ``(N, J, n)`` in the package's order of operations."""
    return w * torch.sigmoid(sigma * (v.unsqueeze(-1) - mu)) * mask


def _slopes(v: Tensor, w: Tensor, mask: Tensor, sigma: Tensor, mu: Tensor) -> Tensor:
    """``∂a_{ji}/∂v_j = w M σ_{ji} s(1 − s)`` ``(N, J, n)``."""
    s = torch.sigmoid(sigma * (v.unsqueeze(-1) - mu))
    return w * mask * sigma * s * (1 - s)


class LTCAdapter(NcpsAdapter):
    """``ncps.torch.LTC`` (any wiring, input/output mappings, mixed memory, timespans).

    See :mod:`gradscope.sequences.ncps_ltc`.
    """

    kind = "ncps-ltc"
    config = {  # noqa: RUF012 (read-only class data)
        **NcpsAdapter.config,
        "unfolds": "count",
        "epsilon": "nonnegative",
        "motor": "count",
    }

    # ------------------------------------------------------------------ recording
    def cell_params(self, module: nn.Module) -> Params:
        """The cell's parameters, the positive ones through its ``make_positive_fn``."""
        cell = module.rnn_cell
        positive = cell.make_positive_fn
        out: Params = {name: positive(getattr(cell, name)) for name in _POSITIVE}
        out.update({name: getattr(cell, name) for name in _PLAIN + _MASKS})
        out.update({name: getattr(cell, name) for name in _MAPS if hasattr(cell, name)})
        out["unfolds"] = torch.tensor(int(cell._ode_unfolds))
        out["epsilon"] = torch.tensor(float(cell._epsilon), dtype=torch.float64)
        out["motor"] = torch.tensor(int(cell.motor_size))
        return out

    # ------------------------------------------------------------------ layout
    def layer_sizes(self, params: Params) -> list[int]:
        """``[N]``: one layer of neurons."""
        return [int(params["gleak"].shape[0])]

    def outputs(self, params: Params, h: Tensor) -> Tensor:
        """``_map_outputs``: the motor neurons, times ``w_out``, plus ``b_out``."""
        out = h[..., : count(params, "motor")]
        if "output_w" in params:
            out = out * params["output_w"]
        if "output_b" in params:
            out = out + params["output_b"]
        return out

    # ------------------------------------------------------------------ the cell
    def _mapped(self, params: Params, x: Tensor) -> Tensor:
        if "input_w" in params:
            x = x * params["input_w"]
        if "input_b" in params:
            x = x + params["input_b"]
        return x

    def cell_step(
        self, params: Params, x: Tensor, h: Tensor, tau: Tensor
    ) -> tuple[Tensor, _Factors]:
        """``_ode_solver`` on the mapped input, every unfold's state kept."""
        p = params
        xm = self._mapped(p, x)
        sens = _synapses(
            xm, p["sensory_w"], p["sensory_sparsity_mask"], p["sensory_sigma"], p["sensory_mu"]
        )
        num_s = torch.sum(sens * p["sensory_erev"], dim=1)
        den_s = torch.sum(sens, dim=1)
        U = count(p, "unfolds")
        cm = p["cm"] / (tau / U)
        vs, dens = [h], []
        v = h
        for _ in range(U):
            act = _synapses(v, p["w"], p["sparsity_mask"], p["sigma"], p["mu"])
            numerator = cm * v + p["gleak"] * p["vleak"] + (torch.sum(act * p["erev"], 1) + num_s)
            denominator = cm + p["gleak"] + (torch.sum(act, 1) + den_s) + scalar(p, "epsilon")
            v = numerator / denominator
            vs.append(v)
            dens.append(denominator)
        return v, _Factors(xm, torch.stack(vs, 1), torch.stack(dens, 1), cm, tau)

    def _blocks(self, n: int):
        return [slice(lo, min(n, lo + PAIR_BLOCK)) for lo in range(0, n, PAIR_BLOCK)]

    def cell_jvp(self, params, f, dx, dh, dt):  # noqa: D102 (see NcpsAdapter.cell_jvp)
        p = params
        ref = dx if dx is not None else dh
        out = []
        for b in self._blocks(ref.shape[0]):
            n_b, k = f.cm[b].shape[0], ref.shape[-1]
            dv = f.cm.new_zeros((n_b, f.cm.shape[1], k)) if dh is None else dh[b]
            dnum = dden = dcm = None
            if dx is not None:
                dxm = dx[b] * p["input_w"].unsqueeze(-1) if "input_w" in p else dx[b]
                sa = _slopes(
                    f.xm[b],
                    p["sensory_w"],
                    p["sensory_sparsity_mask"],
                    p["sensory_sigma"],
                    p["sensory_mu"],
                )
                dnum = torch.einsum("nji,njk->nik", sa * p["sensory_erev"], dxm)
                dden = torch.einsum("nji,njk->nik", sa, dxm)
            if dt is not None:
                dcm = (-f.cm[b] / f.tau[b]).unsqueeze(-1) * dt[b]
            cm = f.cm[b].unsqueeze(-1)
            for k in range(count(p, "unfolds")):
                v0, v1 = f.v[b, k], f.v[b, k + 1].unsqueeze(-1)
                a = _slopes(v0, p["w"], p["sparsity_mask"], p["sigma"], p["mu"])
                new = cm * dv + torch.einsum("nji,njk->nik", a * p["erev"], dv)
                new = new - v1 * torch.einsum("nji,njk->nik", a, dv)
                if dnum is not None:
                    new = new + dnum - v1 * dden
                if dcm is not None:
                    new = new + (v0.unsqueeze(-1) - v1) * dcm
                dv = new / f.den[b, k].unsqueeze(-1)
            out.append(dv)
        return torch.cat(out)

    def cell_vjp(self, params, f, g):  # noqa: D102 (see NcpsAdapter.cell_vjp)
        p = params
        gxs, ghs, gts = [], [], []
        U = count(p, "unfolds")
        for b in self._blocks(g.shape[0]):
            gv = g[b]
            gnum = gden = gcm = 0
            cm = f.cm[b].unsqueeze(-1)
            for k in reversed(range(U)):
                v0, v1 = f.v[b, k], f.v[b, k + 1].unsqueeze(-1)
                q = gv / f.den[b, k].unsqueeze(-1)
                gnum, gden = gnum + q, gden - v1 * q
                gcm = gcm + (v0.unsqueeze(-1) - v1) * q
                a = _slopes(v0, p["w"], p["sparsity_mask"], p["sigma"], p["mu"])
                gv = cm * q + torch.einsum("nji,nik->njk", a * p["erev"], q)
                gv = gv - torch.einsum("nji,nik->njk", a, v1 * q)
            sa = _slopes(
                f.xm[b],
                p["sensory_w"],
                p["sensory_sparsity_mask"],
                p["sensory_sigma"],
                p["sensory_mu"],
            )
            gxm = torch.einsum("nji,nik->njk", sa * p["sensory_erev"], gnum)
            gxm = gxm + torch.einsum("nji,nik->njk", sa, gden)
            gxs.append(gxm * p["input_w"].unsqueeze(-1) if "input_w" in p else gxm)
            ghs.append(gv)
            gts.append((-f.cm[b] / f.tau[b]).unsqueeze(-1) * gcm)
        return torch.cat(gxs), torch.cat(ghs), torch.cat(gts)

    def vanishing_advice(self, params: Params, facts: dict[str, str]) -> list[str]:
        """The membrane capacitance ``cm`` against the leak ``gleak`` and the synapses.

        With no synaptic current a neuron keeps ``r_i = (c_i / (c_i + g_i))^U`` of its
        voltage per step (``c_i = c^m_i U / τ``, ``τ = 1`` per step unless the call gives
        timespans): a memory of ``−1/ln r_i`` steps, shortened by every open synapse, whose
        conductance adds to the denominator.
        """
        U = count(params, "unfolds")
        c = params["cm"].double() * U
        g = params["gleak"].double()
        keep = (c / (c + g)) ** U
        tau = -1.0 / torch.log(keep.clamp(1e-300, 1 - 1e-16))
        mixed = "lstm.input_map.weight" in params
        return [
            "Raise the membrane capacitance rnn_cell.cm or lower the leak rnn_cell.gleak in "
            "some neurons: without synaptic current a neuron keeps (c/(c + g))^U of its "
            f"voltage per step (c = cm·U/τ, U = {U} unfolds; now {spread(keep, 4)}, a memory "
            f"of {spread(tau)} steps; ncps draws cm in [0.4, 0.6] and gleak in [0.001, 1]). "
            f"A neuron holds across T = {facts['T']} only if g/c ≲ 1/(U T).",
            "Every open synapse adds its conductance to the denominator and shortens the "
            "memory: large rnn_cell.w or rnn_cell.sensory_w (ncps draws both in "
            "[0.001, 1]) or inputs that keep the sensory synapses open (scale them through "
            "rnn_cell.input_w) make neurons forget faster. Longer timespans τ do the same.",
            "The mixed memory (an LSTM cell beside the neurons) already gives an additive "
            "path: check its forget gates (lstm.input_map, lstm.recurrent_map)."
            if mixed
            else "For dependencies beyond the neurons' reach, LTC(..., mixed_memory=True) "
            "adds an LSTM cell beside them (ncps's own option): an additive path the "
            "ODE's leaky voltages lack.",
        ]


ADAPTER = LTCAdapter()

#: The module this adapter replays, by qualified name (``ncps`` is not imported here).
MODULE_QUALNAME = "ncps.torch.ltc.LTC"

__all__ = ["ADAPTER", "MODULE_QUALNAME", "LTCAdapter"]
