r"""sLSTM (Beck et al. 2024, xLSTM §2.2): exponential gating with a stabiliser, gated views.

The official ``xlstm`` package's cell (``xlstm/blocks/slstm/cell.py``, ``sLSTMCell`` with
``backend="vanilla"``, i.e. ``sLSTMCell_vanilla``; its step is
``xlstm/blocks/slstm/src/vanilla/slstm.py``) reads the gates' input part ``u_t = W x_t``
(``4H`` wide, gate-major: ``i, f, z, o``) and runs, per step, with ``R`` block-diagonal
over the heads and the state ``(y, c, n, m)``::

    [ĩ, f̃, z̃, õ] = u_t + R y_{t−1} + b
    m_t = max(ĩ, m_{t−1} + ln σ(f̃))          (m_t = ĩ when n_{t−1} = 0: a fresh state)
    i_t = exp(ĩ − m_t)    f_t = exp(m_{t−1} + ln σ(f̃) − m_t)      (each at most 1)
    c_t = f_t c_{t−1} + i_t tanh(z̃)     n_t = f_t n_{t−1} + i_t     y_t = σ(õ) c_t / n_t

``m`` keeps the exponentials finite; ``c / n`` is what it normalises away. (The package
decides "fresh" for the whole batch, ``torch.all(n == 0)``; the replay decides it per
sequence, which is the same for a batch started together; a mixed batch would fail the
replay check.)

The Jacobian is a :class:`~gradscope.cells.gated.GatedForm` whose blocks feed several parts
(the input and forget rows move ``m``, ``c`` and ``n``), computed in the order ``m, c, n, y``.
With ``s_i = 1[m_t = ĩ]``, ``s_f = 1 − s_i``, ``σ_f = σ(−f̃) = ∂ ln σ(f̃)/∂f̃`` and ``φ = f_t``
where the clamp at 1 is inactive (0 where it is)::

    δm = s_i δĩ + s_f σ_f δf̃ + s_f δm_{t−1}
    δc = φ c σ_f δf̃ + i tanh z̃ δĩ + i (1 − tanh² z̃) δz̃ + φ c δm_{t−1} + f δc_{t−1} − c_t δm_t
    δn = φ n σ_f δf̃ + i δĩ + φ n δm_{t−1} + f δn_{t−1} − n_t δm_t
    δy = σ'(õ) c_t/n_t δõ + (σ(õ)/n_t) δc_t − (σ(õ) c_t/n_t²) δn_t

(``δ[ĩ f̃ z̃ õ] = R δy_{t−1}`` for the state, ``= δu`` for the input). The additive paths:
``m ← m`` by ``s_f``, ``c ← c`` and ``n ← n`` by the forget gate ``f_t`` (the cell path).
Every product costs one GEMM with the dense ``(4H, H)`` recurrent weight (the heads'
blocks, zeros between them: ``O(k · 4H²)`` per pair) and ``O(k · H)`` elementwise.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from gradscope.cells.base import DENSE, Params
from gradscope.cells.gated import GatedCell, GatedFactors, GatedForm
from gradscope.cells.gates import Gates
from gradscope.errors import UnsupportedModuleError
from gradscope.sequences.base import Drive, SequenceAdapter, count

#: The module output layouts (``sLSTMCellConfig.output_shape``), by their code in params.
OUTPUTS = ("SBH", "BSH", "BNSH", "SBNH")


class _Step:
    """One step's intermediate values (shared by the step, its factors and its gates)."""

    def __init__(self, params: Params, x: Tensor, s: Tensor) -> None:
        H = params["weight_hh"].shape[1]
        y, c, n, m = s.split(H, dim=-1)
        raw = x + y @ params["weight_hh"].T + params["bias"]
        self.i_, self.f_, self.z_, self.o_ = raw.chunk(4, dim=-1)
        self.lfm = m + nnf.logsigmoid(self.f_)  # m_{t−1} + ln σ(f̃)
        fresh = (n == 0).all(dim=-1, keepdim=True)
        self.take_i = fresh | (self.i_ >= self.lfm)
        self.m = torch.where(self.take_i, self.i_, self.lfm)
        self.ig = torch.minimum(torch.exp(self.i_ - self.m), torch.ones_like(self.i_))
        self.log_f = torch.clamp(self.lfm - self.m, max=0.0)
        self.fg = torch.exp(self.log_f)  # min(exp(·), 1), with its log exact
        self.clamped = self.lfm > self.m  # only when fresh: then f is 1, its derivative 0
        self.tz = torch.tanh(self.z_)
        self.og = torch.sigmoid(self.o_)
        self.c = self.fg * c + self.ig * self.tz
        self.n = self.fg * n + self.ig
        self.y = self.og * self.c / self.n
        self.prev = (c, n)


class SLSTMAdapter(GatedCell, SequenceAdapter):
    """The xlstm package's sLSTM cell (vanilla backend) as a gated sequence recurrence.

    State ``(h, c, n, m)`` = ``(y, c, n, m)``, ``D = 4H``; drive: the cell's own input
    ``W x_t`` (``I = 4H``), time-major.
    """

    kind = "slstm"
    state_names = ("h", "c", "n", "m")
    structure = DENSE
    config = {"num_heads": "count", "output_layout": "count", "batch_first": "flag"}  # noqa: RUF012
    form = GatedForm(
        parts=("h", "c", "n", "m"),
        blocks=("i", "f", "z", "o"),
        terms=(
            ("m", "i"),
            ("m", "f"),
            ("c", "f"),
            ("c", "i"),
            ("c", "z"),
            ("n", "f"),
            ("n", "i"),
            ("h", "o"),
        ),
        order=("m", "c", "n", "h"),
        diagonal=(("m", "m"), ("c", "m"), ("c", "c"), ("n", "m"), ("n", "n")),
        chained=(("c", "m"), ("n", "m"), ("h", "c"), ("h", "n")),
        inputs=None,
    )
    gates = Gates(
        shown=("i", "f", "o"),
        carried="f",
        word="forget",
        path="cell",
        path_text="cell path (diag f on c and n)",
        short_text="cell path",
    )

    # ------------------------------------------------------------------ recording
    def module_params(self, module: nn.Module) -> Params:
        """The dense recurrent weight ``(4H, H)`` from the heads' kernels, the bias, layout.

        ``W[g·H + k·d + a, k·d + b] = R_k[g·d + a, b]`` for head ``k`` of width ``d``.
        """
        cfg = module.config
        if cfg.function != "slstm":
            raise UnsupportedModuleError(
                f"sLSTM cell with function={cfg.function!r}: gradscope replays the sLSTM "
                "pointwise function only (function='slstm')"
            )
        if cfg.output_shape not in OUTPUTS or cfg.input_shape not in ("BSGNH", "SBGNH"):
            raise UnsupportedModuleError(
                f"sLSTM cell with input_shape={cfg.input_shape!r}, output_shape="
                f"{cfg.output_shape!r}: not a layout gradscope replays"
            )
        R = module._recurrent_kernel.detach()  # (K, 4 d, d), gate-major rows per head
        K, _, d = R.shape
        H = K * d
        W = R.new_zeros((4, H, H))
        for k in range(K):
            W[:, k * d : (k + 1) * d, k * d : (k + 1) * d] = R[k].reshape(4, d, d)
        return {
            "weight_hh": W.reshape(4 * H, H),
            "bias": module._bias.detach().to(R.dtype),
            "num_heads": torch.tensor(K),
            "output_layout": torch.tensor(OUTPUTS.index(cfg.output_shape) + 1),
            "batch_first": torch.tensor(int(cfg.input_shape == "BSGNH")),
        }

    def state_sizes(self, params: Params) -> tuple[int, ...]:
        """``(H, H, H, H)``."""
        H = int(params["weight_hh"].shape[1])
        return (H, H, H, H)

    def input_size(self, params: Params) -> int:
        """``4H``: the gates' input part."""
        return int(params["weight_hh"].shape[0])

    def drive(self, params: Params, args: tuple, kwargs: dict[str, Any]) -> Drive:
        """``u = W x`` time-major as given, and ``s0`` from the ``(4, B, H)`` state."""
        x = args[0] if args else kwargs["input"]
        state = args[1] if len(args) > 1 else kwargs.get("state")
        u = x.transpose(0, 1) if count(params, "batch_first") else x
        s0 = None if state is None else state.permute(1, 0, 2).reshape(u.shape[1], -1)
        return Drive(u, None if s0 is None else s0.to(u.dtype))

    def readout(self, params: Params, u: Tensor, states: Tensor) -> Tensor:
        """The cell's output ``y`` in its configured layout (``output_shape``)."""
        H = int(params["weight_hh"].shape[1])
        K = count(params, "num_heads")
        y = states[1:, :, :H]  # (S, B, H)
        layout = OUTPUTS[count(params, "output_layout") - 1]
        if layout == "SBH":
            return y
        if layout == "BSH":
            return y.transpose(0, 1)
        heads = y.unflatten(-1, (K, H // K))  # (S, B, K, d)
        return heads if layout == "SBNH" else heads.permute(1, 2, 0, 3)

    # ------------------------------------------------------------------ the recurrence
    def step(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """``(y, c, n, m)_t`` from ``u_t`` and the previous state (see the module doc)."""
        st = _Step(params, x, s)
        return torch.cat([st.y, st.c, st.n, st.m], dim=-1)

    def linear_factors(self, params: Params, x: Tensor, s: Tensor) -> GatedFactors:
        """The scalings of the eight terms and the couplings of the module docstring."""
        st = _Step(params, x, s)
        c, n = st.prev
        s_i = st.take_i.to(x.dtype)
        s_f = 1.0 - s_i
        sig_f = torch.sigmoid(-st.f_)
        phi = torch.where(st.clamped, torch.zeros_like(st.fg), st.fg)
        scale = torch.stack(
            [
                s_i,
                s_f * sig_f,
                phi * c * sig_f,
                st.ig * st.tz,
                st.ig * (1.0 - st.tz) * (1.0 + st.tz),
                phi * n * sig_f,
                st.ig,
                st.og * (1.0 - st.og) * st.c / st.n,
            ],
            dim=1,
        )
        diag = (s_f, phi * c, st.fg, phi * n, st.fg)
        chain = (-st.c, -st.n, st.og / st.n, -st.og * st.c / (st.n * st.n))
        return GatedFactors(scale, diag, chain)

    # ------------------------------------------------------------------ gates
    def gate_values(self, params: Params, x: Tensor, s: Tensor) -> tuple[dict, Tensor]:
        """``{"i", "f", "o"}`` (the stabilised gates) and ``ln f`` (exact, no exp/log)."""
        st = _Step(params, x, s)
        return {"i": st.ig, "f": st.fg, "o": st.og}, st.log_f

    def carried_logits(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        """``ln f_t``, standing in for a pre-activation (the gate depends on the stabiliser).

        :meth:`carried_from_logits` maps it back to the gate.
        """
        return _Step(params, x, s).log_f

    def carried_from_logits(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """``(f, ln f)`` from ``ln f``."""
        return torch.exp(a), a

    def vanishing_advice(self, params: Params, facts: dict[str, str]) -> list[str]:
        """A forget gate nearer 1 (its bias), and what the stabiliser does not change."""
        H = int(params["weight_hh"].shape[1])
        fb = float(params["bias"][H : 2 * H].double().mean())
        return [
            "Raise the cell's forget-gate bias (the f rows H:2H of the sLSTM cell's _bias_, "
            f"now mean {fb:+.2f}; the package's 'powerlaw_blockdependent' init spreads it over "
            "units) so that σ(f̃) "
            "stays near 1: f_t = σ(f̃) e^(m_(t−1) − m_t) carries c and n, and the "
            "stabiliser m only rescales them.",
            "A large input gate resets the stabiliser (m_t = ĩ) and with it the carry: look "
            "at the input-gate distribution before raising the learning rate.",
            "For the longest dependencies xLSTM interleaves mLSTM blocks, whose memory path "
            "carries no recurrent weight matrix (f_t · I only).",
        ]


ADAPTER = SLSTMAdapter()

__all__ = ["ADAPTER", "OUTPUTS", "SLSTMAdapter"]
