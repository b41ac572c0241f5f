r"""What ``ncps``' ``CfC`` and ``LTC`` wrappers share: their call, the mixed memory, the layout.

Both wrappers (``ncps/torch/cfc.py``, ``ncps/torch/ltc.py``) run the same loop over time::

    for t in range(L):
        if mixed_memory: h, c = lstm(x_t, (h, c))       # ncps.torch.lstm.LSTMCell
        out_t, h = rnn_cell.forward(x_t, h, ts_t)       # CfCCell / WiredCfCCell / LTCCell

with ``ts_t = 1.0`` or ``timespans[:, t].squeeze()`` (``[t]`` when not ``batch_first``) and
``h_0``, ``c_0`` zeros or the call's ``hx``. The ``LSTMCell`` is

.. math::
    (i, i_g, f_g, o_g) = W_x x + b + W_h h, \quad
    c' = c\,σ(f_g + 1) + \tanh(i)\,σ(i_g), \quad h' = \tanh(c')\,σ(o_g).

For gradscope (:mod:`gradscope.sequences.base`) the recurrence is one module call:

* **state** ``s_t = h_t`` (``D = H``, the wrapper's ``state_size``), or ``[h_t, c_t]``
  (``D = 2H``) with ``mixed_memory``;
* **drive** ``u_t = [x_t (I), τ_t (H)]``: the input and the elapsed time each unit sees,
  ``τ_t = broadcast(ts_t)`` to ``(B, H_l)`` per layer ``l`` of ``H_l`` units, exactly as the
  cell's own products broadcast ``ts_t`` (a number, or after ``squeeze`` a ``(B,)`` tensor,
  which PyTorch aligns with the *units* axis: the package's behaviour, replayed as it is).
  ``∂s_t/∂u_t`` is the state's sensitivity to the input and to the time step;
* **Jacobians**: ``J_t = J_cell(x_t, h'_t, τ_t) · J_lstm`` (the LSTM's ``h'`` feeds the cell;
  ``c'`` is carried), both in closed form. Products cost what a step costs per column:
  the weight products of the cell (``O(W · k)`` for ``W`` weights) and ``O(H² · k)`` for the
  LSTM; no ``D × D`` matrix is formed.

Refused (:class:`~gradscope.errors.UnsupportedModuleError`), before the call runs: an
unbatched call (input ``(L, C)``: pass ``(1, L, C)``), and a CfC whose backbone drops out in
training mode (``backbone_dropout > 0``: call ``model.eval()``).
"""

from __future__ import annotations

from abc import abstractmethod
from copy import copy
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from gradscope.cells.base import DENSE, Params
from gradscope.errors import UnsupportedModuleError
from gradscope.sequences.base import Drive, SequenceAdapter, scalar


class LSTMFactors(NamedTuple):
    """The mixed memory's gates at one pair: ``tanh i``, ``σ(i_g)``, ``σ(f_g + 1)``, ``σ(o_g)``."""

    a: Tensor
    i: Tensor
    f: Tensor
    o: Tensor
    c: Tensor
    tc: Tensor  # tanh(c')


def bind(args: tuple, kwargs: dict[str, Any]) -> tuple[Any, Any, Any]:
    """``(input, hx, timespans)`` of a wrapper call ``forward(input, hx=None, timespans=None)``."""
    names = ("input", "hx", "timespans")
    bound = {"hx": None, "timespans": None, **dict(zip(names, args))}
    bound.update({k: v for k, v in kwargs.items() if k in names})
    return bound.get("input"), bound["hx"], bound["timespans"]


def lstm_params(module: nn.Module) -> Params:
    """The mixed memory's weights (``lstm.*``), or none without ``mixed_memory``."""
    if not getattr(module, "use_mixed", False):
        return {}
    lstm = module.lstm
    return {
        "lstm.input_map.weight": lstm.input_map.weight,
        "lstm.input_map.bias": lstm.input_map.bias,
        "lstm.recurrent_map.weight": lstm.recurrent_map.weight,
    }


def lstm_step(params: Params, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Any]:
    """``ncps.torch.lstm.LSTMCell`` in its order of operations: ``(h', c', factors)``."""
    z = x @ params["lstm.input_map.weight"].T + params["lstm.input_map.bias"]
    z = z + h @ params["lstm.recurrent_map.weight"].T
    i, ig, fg, og = z.chunk(4, 1)
    a, gi, gf, go = torch.tanh(i), torch.sigmoid(ig), torch.sigmoid(fg + 1.0), torch.sigmoid(og)
    new_c = c * gf + a * gi
    tc = torch.tanh(new_c)
    return tc * go, new_c, LSTMFactors(a, gi, gf, go, c, tc)


def lstm_jvp(
    params: Params, f: LSTMFactors, dx: Tensor | None, dh: Tensor | None, dc: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``(δh', δc')`` for tangents ``(N, ·, k)`` (None: zero), ``O(H · (I + H) · k)``."""
    dz = 0
    if dx is not None:
        dz = params["lstm.input_map.weight"] @ dx
    if dh is not None:
        dz = dz + params["lstm.recurrent_map.weight"] @ dh
    g = [t.unsqueeze(-1) for t in f]
    a, i, fg, o, c, tc = g
    if isinstance(dz, Tensor):
        di, dig, dfg, dog = dz.chunk(4, 1)
        dnew = (1 - a * a) * i * di + a * i * (1 - i) * dig + c * fg * (1 - fg) * dfg
        if dc is not None:
            dnew = dnew + fg * dc
        dh_new = o * (1 - tc * tc) * dnew + tc * o * (1 - o) * dog
        return dh_new, dnew
    dnew = fg * dc
    return o * (1 - tc * tc) * dnew, dnew


def lstm_vjp(
    params: Params, f: LSTMFactors, gh: Tensor, gc: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``(ḡx, ḡh, ḡc)`` from the cotangents of ``(h', c')``: the transpose of :func:`lstm_jvp`."""
    a, i, fg, o, c, tc = (t.unsqueeze(-1) for t in f)
    gnew = gc + o * (1 - tc * tc) * gh
    gz = torch.cat(
        [
            (1 - a * a) * i * gnew,
            a * i * (1 - i) * gnew,
            c * fg * (1 - fg) * gnew,
            tc * o * (1 - o) * gh,
        ],
        dim=1,
    )
    gx = params["lstm.input_map.weight"].T @ gz
    gh_prev = params["lstm.recurrent_map.weight"].T @ gz
    return gx, gh_prev, fg * gnew


class Factors(NamedTuple):
    """One pair's linearisation: the mixed memory's factors (or None) and the cell's."""

    lstm: LSTMFactors | None
    cell: Any
    tau: Tensor


class NcpsAdapter(SequenceAdapter):
    """A ``CfC`` or ``LTC`` wrapper: the loop above, the cell's maths left to a subclass.

    A subclass gives :meth:`cell_params`, :meth:`units`, :meth:`layer_sizes`,
    :meth:`cell_step`, :meth:`cell_jvp`, :meth:`cell_vjp` and :meth:`outputs`.
    """

    structure = DENSE
    config = {  # noqa: RUF012 (read-only class data)
        "batch_first": "flag",
        "return_sequences": "flag",
        "input_size": "count",
    }
    state_names: tuple[str, ...] = ("h",)

    # ------------------------------------------------------------------ the cell
    @abstractmethod
    def cell_params(self, module: nn.Module) -> Params:
        """The cell's weights and configuration numbers (not detached)."""

    @abstractmethod
    def layer_sizes(self, params: Params) -> list[int]:
        """Units per layer of the cell, in order (one layer but for a wired CfC)."""

    @abstractmethod
    def cell_step(self, params: Params, x: Tensor, h: Tensor, tau: Tensor) -> tuple[Tensor, Any]:
        """``(h'', factors)``: the cell's step from the input, ``h'`` and ``τ``."""

    @abstractmethod
    def cell_jvp(
        self, params: Params, f: Any, dx: Tensor | None, dh: Tensor | None, dt: Tensor | None
    ) -> Tensor:
        """``δh''`` for tangents of ``(x, h', τ)`` (None: zero), each ``(N, ·, k)``."""

    @abstractmethod
    def cell_vjp(self, params: Params, f: Any, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(ḡx, ḡh', ḡτ)`` from the cotangent ``g`` of ``h''``."""

    @abstractmethod
    def outputs(self, params: Params, h: Tensor) -> Tensor:
        """The wrapper's per-step output from the cell's new state ``h`` ``(..., H)``."""

    # ------------------------------------------------------------------ layout
    def units(self, params: Params) -> int:
        """``H``, the cell's state size."""
        return int(sum(self.layer_sizes(params)))

    @staticmethod
    def mixed(params: Params) -> bool:
        """Whether the wrapper runs a mixed-memory LSTM before the cell."""
        return "lstm.input_map.weight" in params

    def state_sizes(self, params: Params) -> tuple[int, ...]:
        """``(H,)``, or ``(H, H)`` (``h``, ``c``) with mixed memory."""
        H = self.units(params)
        return (H, H) if self.mixed(params) else (H,)

    def input_size(self, params: Params) -> int:
        """``I + H``: the input and the elapsed time per unit."""
        return int(params["input_size"].item()) + self.units(params)

    def for_module(self, module: nn.Module) -> NcpsAdapter:
        """This adapter, naming the state ``(h, c)`` for a mixed-memory wrapper."""
        if not getattr(module, "use_mixed", False):
            return self
        out = copy(self)
        out.state_names = ("h", "c")
        return out

    # ------------------------------------------------------------------ recording
    def module_params(self, module: nn.Module) -> Params:
        """The cell's, the mixed memory's and the wrapper's numbers, detached."""
        out = {**self.cell_params(module), **lstm_params(module)}
        out = {k: v.detach() for k, v in out.items()}
        flags = {"batch_first": module.batch_first, "return_sequences": module.return_sequences}
        for name, value in flags.items():
            out[name] = torch.tensor(float(bool(value)), dtype=torch.float64)
        out["input_size"] = torch.tensor(int(module.input_size))
        return out

    def refusal(self, module: nn.Module) -> str | None:
        """Why this module cannot be replayed (None: it can). The default: nothing."""
        return None

    def initial_state(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """None (the drive reads ``hx``); refuses what cannot be replayed, before the call.

        Raises:
            UnsupportedModuleError: an unbatched call, or :meth:`refusal`.
        """
        x, _, _ = bind(args, kwargs)
        name = type(module).__name__
        if isinstance(x, Tensor) and x.ndim != 3:
            raise UnsupportedModuleError(
                f"gradscope records an ncps {name} called on a batch (B, L, C) (or (L, B, C)); "
                f"this call's input is {tuple(x.shape)}. Pass a batch of one, x.unsqueeze(0) "
                "(and hx.unsqueeze(0))."
            )
        why = self.refusal(module)
        if why:
            raise UnsupportedModuleError(f"gradscope cannot replay this ncps {name}: {why}")
        return None

    def drive(self, params: Params, args: tuple, kwargs: dict[str, Any]) -> Drive:
        """``[x_t, τ_t]`` time-major, and ``s_0`` from ``hx`` (zeros when None)."""
        x, hx, ts = bind(args, kwargs)
        batch_first = bool(scalar(params, "batch_first"))
        xt = x.transpose(0, 1) if batch_first else x  # (T, B, I)
        T, B = xt.shape[:2]
        sizes = self.layer_sizes(params)
        taus = []
        for t in range(T):
            step = 1.0 if ts is None else (ts[:, t] if batch_first else ts[t]).squeeze()
            step = torch.as_tensor(step, dtype=x.dtype, device=x.device)
            taus.append(torch.cat([torch.broadcast_to(step, (B, n)) for n in sizes], -1))
        tau = torch.stack(taus) if taus else xt.new_zeros((0, B, sum(sizes)))
        s0 = None
        if hx is not None:
            parts = hx if self.mixed(params) else (hx,)
            s0 = torch.cat([p.to(x.dtype) for p in parts], dim=-1)
        return Drive(torch.cat([xt, tau.to(x.dtype)], dim=-1), s0)

    def readout(self, params: Params, u: Tensor, states: Tensor) -> Tensor:
        """The wrapper's ``readout``: every step's output, or the last one's."""
        H = self.units(params)
        if not scalar(params, "return_sequences"):
            return self.outputs(params, states[-1, :, :H])
        out = self.outputs(params, states[1:, :, :H])  # (T, B, O)
        return out.transpose(0, 1) if scalar(params, "batch_first") else out

    # ------------------------------------------------------------------ maths
    def _split(self, params: Params, u: Tensor, s: Tensor) -> tuple[Tensor, ...]:
        I, H = int(params["input_size"].item()), self.units(params)
        x, tau = u[:, :I], u[:, I:]
        if self.mixed(params):
            return x, tau, s[:, :H], s[:, H:]
        return x, tau, s, None

    def step_factors(self, params: Params, x: Tensor, s: Tensor) -> tuple[Tensor, Factors]:
        """The step and its linear factors from one evaluation."""
        xi, tau, h, c = self._split(params, x, s)
        lf = None
        if c is not None:
            h, c, lf = lstm_step(params, xi, h, c)
        h2, cf = self.cell_step(params, xi, h, tau)
        new = h2 if c is None else torch.cat([h2, c], dim=-1)
        return new, Factors(lf, cf, tau)

    def step(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """``s_t = [cell(x_t, h'_t, τ_t), c'_t]`` with ``(h', c') = lstm(x_t, h, c)``."""
        return self.step_factors(params, x, s)[0]

    def linear_factors(self, params: Params, x: Tensor, s: Tensor) -> Factors:
        """The mixed memory's gates and the cell's factors at ``(u_t, s_{t−1})``."""
        return self.step_factors(params, x, s)[1]

    def product(
        self, params: Params, x: Tensor, s: Tensor, f: Factors, m: Tensor, wrt: str, rev: bool
    ) -> Tensor:
        """The four products, composed from the LSTM's and the cell's (module docstring)."""
        I, H = int(params["input_size"].item()), self.units(params)
        if not rev:
            dx, dt = (m[:, :I], m[:, I:]) if wrt == "input" else (None, None)
            dh, dc = (None, None) if wrt == "input" else (m[:, :H], m[:, H:])
            if f.lstm is not None:
                dh, dc = lstm_jvp(params, f.lstm, dx, dh, dc)
            out = self.cell_jvp(params, f.cell, dx, dh, dt)
            return out if f.lstm is None else torch.cat([out, dc], dim=1)
        gx, gh, gt = self.cell_vjp(params, f.cell, m[:, :H])
        if f.lstm is not None:
            gx_l, gh, gc = lstm_vjp(params, f.lstm, gh, m[:, H:])
            gx = gx + gx_l
            if wrt == "state":
                return torch.cat([gh, gc], dim=1)
        return gh if wrt == "state" else torch.cat([gx, gt], dim=1)


__all__ = ["Factors", "LSTMFactors", "NcpsAdapter", "bind", "lstm_jvp", "lstm_step", "lstm_vjp"]
