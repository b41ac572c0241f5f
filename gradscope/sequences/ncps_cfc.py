r"""``ncps``' closed-form continuous-time RNN (``ncps.torch.CfC``), replayed in closed form.

Hasani et al. 2022, "Closed-form continuous-time neural networks"; the package's
``ncps/torch/cfc_cell.py`` (``CfCCell.forward``) and ``wired_cfc_cell.py``. The wrapper's loop,
the mixed memory, the state and the drive are in :mod:`gradscope.sequences._ncps`.

One ``CfCCell`` step, from its input ``a`` (the wrapper's ``x_t``, or the previous layer's new
state in a wired cell), its state ``h`` and the elapsed time ``τ``:

.. math::
    y &= \mathrm{backbone}([a, h]) \quad (J \text{ layers } y_j = φ(W_j y_{j-1} + b_j);
        \text{none: } y = [a, h]) \\
    f_1 &= (W_1 \odot M) y + b_1, \quad f_2 = (W_2 \odot M) y + b_2, \quad
    t_a = W_a y + b_a, \quad t_b = W_b y + b_b, \quad g = σ(t_a τ + t_b) \\
    h' &= \tanh f_1\,(1 - g) + g \tanh f_2 \qquad (\text{mode } \texttt{default}) \\
    h' &= \tanh f_1 + g \tanh f_2 \qquad\qquad\; (\texttt{no\_gate}) \\
    h' &= -A\, e^{-τ(|w_τ| + |f_1|)} f_1 + A \qquad (\texttt{pure}: \text{no } f_2, t_a, t_b)

with ``M`` the wiring's sparsity mask (ones without a wiring), ``φ`` the backbone activation
(``lecun_tanh`` ``1.7159 tanh(0.666 p)``, ``silu``, ``relu``, ``tanh``, ``gelu``). A wired cell
(``CfC(I, wiring)``) runs its layers in order, layer ``l`` reading layer ``l − 1``'s new
state, without backbone; the output is the last layer's state. The wrapper's output is
``fc(h_out)`` (``proj_size``) or ``h_out``.

Linearised, every mode is ``δh' = Σ_b c_b ⊙ W_b δy + c_τ ⊙ δτ`` over the branches
``(W_1, (1−g)(1−tanh² f_1))``, ``(W_2, g (1−tanh² f_2))``, ``(W_a, c τ)``, ``(W_b, c)`` with
``c = (tanh f_2 − tanh f_1) g(1−g)`` and ``c_τ = c t_a`` (``no_gate``: ``1 − tanh² f_1`` and
``c = tanh f_2 · g(1−g)``; ``pure``: one branch ``(W_1, −A E (1 − τ|f_1|))`` and
``c_τ = A E f_1 (|w_τ| + |f_1|)``, ``E = e^{−τ(|w_τ|+|f_1|)}``), and ``δy`` the backbone's
chain ``δy_j = φ'(p_j) ⊙ W_j δy_{j−1}`` from ``δy_0 = [δa, δh]``. Products apply these
weights to the ``k`` columns: ``O(k)`` weight products per layer, no ``D × D`` matrix.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradscope.cells.base import Params
from gradscope.sequences._ncps import NcpsAdapter
from gradscope.sequences.base import count

#: Backbone activations by the name of their module class, and their codes in ``params``.
_ACTS = {"LeCun": 0, "SiLU": 1, "ReLU": 2, "Tanh": 3, "GELU": 4}
_MODES = {"default": 0, "pure": 1, "no_gate": 2}
_BRANCHES = ("ff1", "ff2", "time_a", "time_b")


def _act(code: int, p: Tensor) -> tuple[Tensor, Tensor]:
    """``(φ(p), φ'(p))`` of the backbone activation ``code``, as the package computes ``φ``."""
    if code == 0:
        t = torch.tanh(0.666 * p)
        return 1.7159 * t, 1.7159 * 0.666 * (1 - t * t)
    if code == 1:
        s = torch.sigmoid(p)
        return F.silu(p), s * (1 + p * (1 - s))
    if code == 2:
        return F.relu(p), (p > 0).to(p.dtype)
    if code == 3:
        t = torch.tanh(p)
        return t, 1 - t * t
    cdf = 0.5 * (1 + torch.erf(p / math.sqrt(2)))
    return F.gelu(p), cdf + p * torch.exp(-0.5 * p * p) / math.sqrt(2 * math.pi)


class _Layer(NamedTuple):
    dact: tuple[Tensor, ...]  # φ'(p_j) per backbone layer
    coef: tuple[Tensor, ...]  # c_b per branch
    ctau: Tensor  # c_τ


class CfCAdapter(NcpsAdapter):
    """``ncps.torch.CfC`` (plain or wired, every mode, backbone, mixed memory, projection).

    See :mod:`gradscope.sequences.ncps_cfc`.
    """

    kind = "ncps-cfc"
    config = {  # noqa: RUF012 (read-only class data)
        **NcpsAdapter.config,
        "mode": "nonnegative",
        "activation": "nonnegative",
        "layers": "count",
    }

    # ------------------------------------------------------------------ recording
    def cell_params(self, module: nn.Module) -> Params:
        """Every layer's weights (masked as the cell masks them), backbone, projection, mode."""
        cell = module.rnn_cell
        wired = type(cell).__name__ == "WiredCfCCell"
        layers = [getattr(cell, f"layer_{i}") for i in range(cell.num_layers)] if wired else [cell]
        out: Params = {}
        acts = set()
        for i, layer in enumerate(layers):
            pre = f"l{i}."
            linears = [m for m in (layer.backbone or ()) if isinstance(m, nn.Linear)]
            acts.update(n for m in (layer.backbone or ()) if (n := type(m).__name__) in _ACTS)
            for j, lin in enumerate(linears):
                out[f"{pre}bb{j}.weight"], out[f"{pre}bb{j}.bias"] = lin.weight, lin.bias
            mask = layer.sparsity_mask
            names = ("ff1",) if layer.mode == "pure" else _BRANCHES
            for name in names:
                lin = getattr(layer, name)
                masked = mask is not None and name in ("ff1", "ff2")
                out[f"{pre}{name}.weight"] = lin.weight * mask if masked else lin.weight
                out[f"{pre}{name}.bias"] = lin.bias
            if layer.mode == "pure":
                out[f"{pre}w_tau"], out[f"{pre}A"] = layer.w_tau, layer.A
        if getattr(module, "proj_size", None) is not None:
            out["fc.weight"], out["fc.bias"] = module.fc.weight, module.fc.bias
        act = _ACTS[acts.pop()] if acts else 0  # one class per backbone; none without one
        out["mode"] = torch.tensor(float(_MODES[layers[0].mode]), dtype=torch.float64)
        out["activation"] = torch.tensor(float(act), dtype=torch.float64)
        out["layers"] = torch.tensor(len(layers))
        return out

    def refusal(self, module: nn.Module) -> str | None:
        """A backbone that drops out while training, or GELU's tanh approximation."""
        backbone = getattr(module.rnn_cell, "backbone", None) or ()
        if module.training and any(isinstance(m, nn.Dropout) and m.p > 0 for m in backbone):
            return (
                "its backbone has dropout (backbone_dropout > 0) and the model is in training "
                "mode, so every step draws a mask that no hook sees. Record it in eval mode "
                "(model.eval())."
            )
        if any(isinstance(m, nn.GELU) and m.approximate != "none" for m in backbone):
            return "its backbone uses GELU(approximate='tanh'); gradscope replays the exact GELU"
        return None

    # ------------------------------------------------------------------ layout
    def layer_sizes(self, params: Params) -> list[int]:
        """Units of every layer, from its ``ff1`` weight."""
        return [int(params[f"l{i}.ff1.weight"].shape[0]) for i in range(count(params, "layers"))]

    def outputs(self, params: Params, h: Tensor) -> Tensor:
        """``fc(h_out)``: the last layer's state, projected with ``proj_size``."""
        out = h[..., h.shape[-1] - self.layer_sizes(params)[-1] :]
        if "fc.weight" in params:
            out = F.linear(out, params["fc.weight"], params["fc.bias"])
        return out

    # ------------------------------------------------------------------ one layer
    def _layer_step(
        self, params: Params, i: int, a: Tensor, h: Tensor, tau: Tensor
    ) -> tuple[Tensor, _Layer]:
        pre, mode = f"l{i}.", count(params, "mode")
        y = torch.cat([a, h], 1)
        dact = []
        for j in range(len(self._bb(params, i))):
            p = F.linear(y, params[f"{pre}bb{j}.weight"], params[f"{pre}bb{j}.bias"])
            y, d = _act(count(params, "activation"), p)
            dact.append(d)
        ff1 = F.linear(y, params[f"{pre}ff1.weight"], params[f"{pre}ff1.bias"])
        if mode == 1:  # pure
            w, A = params[f"{pre}w_tau"], params[f"{pre}A"]
            rate = torch.abs(w) + torch.abs(ff1)
            E = torch.exp(-tau * rate)
            new = -A * E * ff1 + A
            coef = (-A * E * (1 - tau * torch.abs(ff1)),)
            return new, _Layer(tuple(dact), coef, A * E * ff1 * rate)
        ff2 = F.linear(y, params[f"{pre}ff2.weight"], params[f"{pre}ff2.bias"])
        a1, a2 = torch.tanh(ff1), torch.tanh(ff2)
        ta = F.linear(y, params[f"{pre}time_a.weight"], params[f"{pre}time_a.bias"])
        tb = F.linear(y, params[f"{pre}time_b.weight"], params[f"{pre}time_b.bias"])
        g = torch.sigmoid(ta * tau + tb)
        dg = g * (1 - g)
        if mode == 2:  # no_gate
            new = a1 + g * a2
            c1, c = 1 - a1 * a1, a2 * dg
        else:
            new = a1 * (1.0 - g) + g * a2
            c1, c = (1 - g) * (1 - a1 * a1), (a2 - a1) * dg
        coef = (c1, g * (1 - a2 * a2), c * tau, c)
        return new, _Layer(tuple(dact), coef, c * ta)

    def _branches(self, params: Params, i: int) -> list[Tensor]:
        names = ("ff1",) if count(params, "mode") == 1 else _BRANCHES
        return [params[f"l{i}.{n}.weight"] for n in names]

    def _bb(self, params: Params, i: int) -> list[Tensor]:
        out, j = [], 0
        while f"l{i}.bb{j}.weight" in params:
            out.append(params[f"l{i}.bb{j}.weight"])
            j += 1
        return out

    def _layer_jvp(
        self,
        params: Params,
        i: int,
        f: _Layer,
        da: Tensor | None,
        dh: Tensor | None,
        dt: Tensor | None,
        width: int,
    ) -> Tensor:
        H = self.layer_sizes(params)[i]
        ref = da if da is not None else dh
        n, k = ref.shape[0], ref.shape[-1]
        da = ref.new_zeros((n, width, k)) if da is None else da
        dh = ref.new_zeros((n, H, k)) if dh is None else dh
        dy = torch.cat([da, dh], 1)
        for W, d in zip(self._bb(params, i), f.dact):
            dy = d.unsqueeze(-1) * (W @ dy)
        out = sum(c.unsqueeze(-1) * (W @ dy) for W, c in zip(self._branches(params, i), f.coef))
        if dt is not None:
            out = out + f.ctau.unsqueeze(-1) * dt
        return out

    def _layer_vjp(
        self, params: Params, i: int, f: _Layer, g: Tensor, width: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        gy = sum(W.T @ (c.unsqueeze(-1) * g) for W, c in zip(self._branches(params, i), f.coef))
        for W, d in reversed(list(zip(self._bb(params, i), f.dact))):
            gy = W.T @ (d.unsqueeze(-1) * gy)
        return gy[:, :width], gy[:, width:], f.ctau.unsqueeze(-1) * g

    # ------------------------------------------------------------------ the cell
    def cell_step(self, params: Params, x: Tensor, h: Tensor, tau: Tensor) -> tuple[Tensor, tuple]:
        """The layers in order, layer ``l`` reading layer ``l − 1``'s new state."""
        sizes = self.layer_sizes(params)
        hs, ts = torch.split(h, sizes, -1), torch.split(tau, sizes, -1)
        new, factors, a = [], [], x
        for i in range(len(sizes)):
            a, f = self._layer_step(params, i, a, hs[i], ts[i])
            new.append(a)
            factors.append(f)
        return torch.cat(new, -1), tuple(factors)

    def cell_jvp(self, params, f, dx, dh, dt):  # noqa: D102 (see NcpsAdapter.cell_jvp)
        sizes = self.layer_sizes(params)
        dhs = [None] * len(sizes) if dh is None else torch.split(dh, sizes, 1)
        dts = [None] * len(sizes) if dt is None else torch.split(dt, sizes, 1)
        out, da = [], dx
        width = int(params["input_size"].item())
        for i in range(len(sizes)):
            da = self._layer_jvp(params, i, f[i], da, dhs[i], dts[i], width)
            out.append(da)
            width = sizes[i]
        return torch.cat(out, 1)

    def cell_vjp(self, params, f, g):  # noqa: D102 (see NcpsAdapter.cell_vjp)
        sizes = self.layer_sizes(params)
        widths = [int(params["input_size"].item()), *sizes[:-1]]
        gs_ = list(torch.split(g, sizes, 1))
        gh, gt = [None] * len(sizes), [None] * len(sizes)
        carry = None
        for i in reversed(range(len(sizes))):
            gi = gs_[i] if carry is None else gs_[i] + carry
            carry, gh[i], gt[i] = self._layer_vjp(params, i, f[i], gi, widths[i])
        return carry, torch.cat(gh, 1), torch.cat(gt, 1)

    def vanishing_advice(self, params: Params, facts: dict[str, str]) -> list[str]:
        """The weights on ``h`` (a CfC has no additive path), saturation, mixed memory.

        Parameter names as the module has them: ``rnn_cell.backbone.0``/``rnn_cell.ff1`` of a
        plain cell, ``rnn_cell.layer_<i>.ff1`` of a wired one.
        """
        layers = count(params, "layers")
        wired = layers > 1
        first = "rnn_cell.layer_0." if wired else "rnn_cell."
        reads = (
            f"{first}ff1"
            if "l0.bb0.weight" not in params
            else "the backbone rnn_cell.backbone.0 (then ff1, ff2)"
        )
        mixed = "lstm.input_map.weight" in params
        return [
            "A CfC carries its state only through its weights: h' = tanh(f₁)(1 − g) + "
            "g tanh(f₂) (default mode), with f₁, f₂ and the time gate g all read from "
            f"[x_t, h_(t−1)] by {reads}; no term copies h_(t−1) forward, so the gradient is "
            "multiplied by the h columns of those weights at every step, as a vanilla RNN's "
            f"(one-step spectral radius median now {facts['radius']}). Rescale those "
            "columns (by about 1/radius) so that the radius sits near 1"
            + (f"; each of the {layers} wired layers reads the one before it." if wired else "."),
            "Saturation takes the rest: every step multiplies by the activations' slopes "
            "(the backbone's φ′, 1 − tanh² of f₁ and f₂, g(1 − g)); units driven far into "
            "saturation pass no gradient, so scale the inputs or lower the weights' gain where "
            "they saturate. Longer timespans τ push g = σ(t_a τ + t_b) (rnn_cell.time_a, "
            "rnn_cell.time_b) to 0 or 1 the same way.",
            "The mixed memory (an LSTM cell before the CfC) already gives an additive path: "
            "check its forget gates (lstm.input_map, lstm.recurrent_map)."
            if mixed
            else "For long dependencies, CfC(..., mixed_memory=True) puts an LSTM cell before "
            "the CfC (ncps's own option): its cell state is the additive path a CfC lacks.",
        ]


ADAPTER = CfCAdapter()

#: The module this adapter replays, by qualified name (``ncps`` is not imported here).
MODULE_QUALNAME = "ncps.torch.cfc.CfC"

__all__ = ["ADAPTER", "MODULE_QUALNAME", "CfCAdapter"]
