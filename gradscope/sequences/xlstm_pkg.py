r"""The xLSTM paper's mLSTM layer: ``mLSTMLayer`` of the ``xlstm`` package's ``blocks``.

Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory" (arXiv:2405.04517), the mLSTM
block with pre up-projection, as ``xlstm/blocks/mlstm/layer.py``, ``cell.py`` and
``backends.py`` (package ``xlstm`` 2.0.6) compute it. ``mLSTMBlock`` (and the
``xLSTMBlockStack`` / ``xLSTMLMModel`` around it) wraps the layer in a LayerNorm and a
residual; recording the layer finds it in all of them. (xLSTM-7B's ``xlstm_large`` layer is
another one: :mod:`gradscope.sequences.xlstm`.)

The layer. For the input ``x_t`` (the block's normed residual stream) with the inner width
``E = proj_factor · embedding_dim`` (rounded as the config does), ``H`` heads of
``d = E / H``::

    (x̂_t, z_t) = W_up x_t (+ b_up)                            E each
    c_t = silu(conv_t(x̂))          (causal depthwise conv over the last K steps, + bias)
    q_t = Q c_t,  k_t = K c_t,  v_t = V x̂_t      (block-diagonal "headwise" maps, + biases)
    ĩ_t = W_i [q_t; k_t; v_t] + b_i,   f̃_t = W_f [q_t; k_t; v_t] + b_f          (H,) each

and per head the mLSTM (exponential input gate, sigmoid forget gate), which the cell runs
in its parallel form ``parallel_stabilized_simple``: with ``D_ts = exp(Σ_{s<r≤t} ln σ(f̃_r)
+ ĩ_s − m_t)`` (``s ≤ t``) and the row maximum ``m_t = max_{s≤t}(Σ_{s<r≤t} ln σ(f̃_r) + ĩ_s)``,
``h̃_t = Σ_s (q_t·k_s/√d) D_ts v_s / (max(|Σ_s (q_t·k_s/√d) D_ts|, e^{−m_t}) + ε)``,
``ε = 1e-6``. That is the recurrence of :mod:`gradscope.sequences.xlstm` started from
``C̃_0 = 0``, ``ñ_0 = 0`` with no floor on the stabiliser (``m_0 = −∞``, where the
``xlstm_large`` kernels start from ``m_0 = 0``)::

    C̃_t = f_t C̃_{t-1} + i_t k_t v_tᵀ,   ñ_t = f_t ñ_{t-1} + i_t k_t,   f = σ(f̃), i = e^{ĩ}
    h̃_t = (q_tᵀ C̃_t / √d) / (max(|q_tᵀ ñ_t| / √d, 1) + ε e^{m_t})

Then ``y_t = W_down (silu(z_t) ⊙ (GN(h̃_t) + s ⊙ c_t)) (+ b_down)``, ``GN`` the cell's
``MultiHeadLayerNorm`` (a group norm per head, weight ``1 + w``, ``eps = 1e-5``) and ``s``
the ``learnable_skip``. The output dropout is the identity in eval mode; in training mode
its mask, read off the dropout's output while the layer runs, is replayed too
(``dropout_scale``, ``keep / (1 − p)``; an output entry that is exactly 0 counts as
dropped).

State, Jacobians, products: those of :class:`~gradscope.sequences.xlstm.MLSTMAdapter`
(imported, not copied): the state ``s = [C̄ (H, d, d) | n̄ (H, d)]`` rescaled by ``e^{−r}``,
``r = max_t ĩ_t`` per sequence and head (``D = H d² + H d``), Jacobian ``f_t · I`` per head
(structure ``SCALAR_IDENTITY``), products ``O(H d² k) = O(D k)`` per step and sequence
for ``k`` columns, no ``D × D`` matrix. The drive is that layout with ``o = z`` (the output
gate's pre-activation) plus the convolved input for the skip::

    u_t = [q | k | v | ĩ − r | f̃ | z | m − r | r | c_t]          (I = 5E + 4H)

``z``, ``m − r``, ``r`` and ``c`` only reach the output (zero input-Jacobian columns).

Not recorded: ``mLSTMLayer.step`` (generation with a conv and mLSTM state) is not a forward
call, so no hook sees it. Refused: a convolution with stride, dilation or padding other
than the package's causal one; a cell whose ``backend_fn`` is not
``parallel_stabilized_simple``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradscope.cells.base import Params
from gradscope.errors import ArgumentError, ShapeError, UnsupportedModuleError
from gradscope.sequences import advice
from gradscope.sequences.base import Drive, count, scalar
from gradscope.sequences.xlstm import MLSTMAdapter

#: ``parallel_stabilized_simple``'s default ε (``mLSTMCell.forward`` passes none).
CELL_EPS = 1e-6
#: Where :meth:`MLSTMBlockAdapter.initial_state` leaves a training call's dropout mask.
_MASK = "_gradscope_dropout_scale"


def _headwise(params: Params, name: str, x: Tensor) -> Tensor:
    """``LinearHeadwiseExpand``: per head ``x_h Wₕᵀ`` (weights ``(heads, out, in)``) + bias."""
    w = params[f"{name}.weight"]
    y = torch.einsum("...hd,hod->...ho", x.unflatten(-1, (w.shape[0], -1)), w).flatten(-2)
    bias = params.get(f"{name}.bias")
    return y if bias is None else y + bias


def _weights(out: Params, prefix: str, sub: nn.Module, *names: str) -> None:
    for n in names or ("weight", "bias"):
        p = getattr(sub, n, None)
        if p is not None:
            out[f"{prefix}.{n}"] = p.detach()


class MLSTMBlockAdapter(MLSTMAdapter):
    """``xlstm.blocks.mlstm.layer.mLSTMLayer``: the paper's mLSTM up-projection block."""

    kind = "mlstm_block"
    config = {  # noqa: RUF012
        "num_heads": "count",
        "qk_dim": "count",
        "v_dim": "count",
        "eps": "nonnegative",
        "norm_eps": "nonnegative",
        "conv_groups": "count",
    }

    def check_params(self, params: Params) -> None:
        """:attr:`config`, heads dividing ``E = qk_dim = v_dim``, groups dividing ``E``."""
        super().check_params(params)
        E, groups = count(params, "qk_dim"), count(params, "conv_groups")
        if count(params, "v_dim") != E or E % groups:
            raise ArgumentError(f"mlstm_block: qk_dim = v_dim = E with conv_groups | E, got {E}")

    # ------------------------------------------------------------------ layout
    def _core(self, params: Params) -> int:
        return super().input_size(params)

    def input_size(self, params: Params) -> int:
        """``5E + 4H``: the mLSTM drive (with ``o = z``) and the convolved input ``c``."""
        return self._core(params) + count(params, "qk_dim")

    # ------------------------------------------------------------------ recording
    def initial_state(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
        """None (the layer always starts from zeros).

        In training mode with output dropout ``p > 0`` it also arms a one-shot hook on the
        layer's ``dropout`` that keeps this call's mask, ``keep / (1 - p)`` as
        ``F.dropout`` multiplies by it, for :meth:`module_params` (called after the layer
        ran); so a Monitor's training steps are replayed and back-propagated exactly.
        """
        drop = module.dropout
        module.__dict__.pop(_MASK, None)
        if module.training and drop.p > 0:

            def keep(mod: nn.Module, inputs: tuple, out: Tensor) -> None:
                handle.remove()
                scale = torch.full((), 1.0 / (1.0 - mod.p), dtype=out.dtype, device=out.device)
                module.__dict__[_MASK] = torch.where(out != 0, scale, 0.0).detach()

            handle = drop.register_forward_hook(keep)
        return None

    def module_params(self, module: nn.Module) -> Params:
        """The layer's weights (``outnorm.weight`` as ``1 + w``) and configuration numbers.

        In training mode with output dropout, also this call's ``dropout_scale``
        ``(B, T, dim)`` (kept by :meth:`initial_state`).

        Raises:
            UnsupportedModuleError: a convolution other than the causal one, another cell
                backend (module docstring), or output dropout in training mode without the
                mask of the call (module_params called outside a recording).
        """
        conv = module.conv1d.conv
        K = int(conv.kernel_size[0])
        if (
            conv.stride != (1,)
            or conv.dilation != (1,)
            or conv.padding != (K - 1,)
            or conv.padding_mode != "zeros"
        ):
            raise UnsupportedModuleError(
                "gradscope's mLSTM block adapter replays the package's causal convolution "
                f"(stride 1, dilation 1, zero padding K - 1 = {K - 1}); this one has stride "
                f"{conv.stride}, dilation {conv.dilation}, padding {conv.padding} "
                f"({conv.padding_mode})"
            )
        cell = module.mlstm_cell
        backend = getattr(cell.backend_fn, "__name__", type(cell.backend_fn).__name__)
        if backend != "parallel_stabilized_simple":
            raise UnsupportedModuleError(
                f"gradscope's mLSTM block adapter replays parallel_stabilized_simple; this "
                f"mLSTMCell runs {backend}"
            )
        out: Params = {}
        for name in ("proj_up", "q_proj", "k_proj", "v_proj", "proj_down"):
            _weights(out, name, getattr(module, name))
        _weights(out, "conv1d", conv)
        _weights(out, "igate", cell.igate)
        _weights(out, "fgate", cell.fgate)
        out["outnorm.weight"] = cell.outnorm.weight_proxy.detach()
        _weights(out, "outnorm", cell.outnorm, "bias")
        out["learnable_skip"] = module.learnable_skip.detach()
        dtype = module.learnable_skip.dtype
        E = int(module.config._inner_embedding_dim)
        out["num_heads"] = torch.tensor(int(cell.config.num_heads))
        out["qk_dim"] = torch.tensor(E)
        out["v_dim"] = torch.tensor(E)
        out["eps"] = torch.tensor(CELL_EPS, dtype=dtype)
        out["norm_eps"] = torch.tensor(float(cell.outnorm.eps), dtype=dtype)
        out["conv_groups"] = torch.tensor(int(conv.groups))
        if module.training and module.dropout.p > 0:
            mask = module.__dict__.pop(_MASK, None)
            if mask is None:
                raise UnsupportedModuleError(
                    f"gradscope's mLSTM block adapter: this mLSTMLayer is in training mode "
                    f"with output dropout p={module.dropout.p:g}, and no mask of this call "
                    "was kept (the recorder keeps it); record it with gs.trace / gs.record / "
                    "gs.Monitor, or in eval() mode"
                )
            out["dropout_scale"] = mask
        return out

    def replay_tolerance(self, params: Params, dtype: torch.dtype) -> float | None:
        """None: the layer computes in its own dtype."""
        return None

    def drive(self, params: Params, args: tuple, kwargs: dict[str, Any]) -> Drive:
        """The drive from ``mLSTMLayer.forward(x)`` (module docstring); ``s0`` None (zeros).

        Cost: the layer's projections and convolution, ``O(B T)`` for the stabiliser.
        """
        x = kwargs["x"] if "x" in kwargs else args[0]
        if x.ndim != 3:
            raise ShapeError(f"mlstm_block: the layer's input must be (B, T, dim), got {x.shape}")
        B, T = x.shape[:2]
        E, h = count(params, "qk_dim"), count(params, "num_heads")
        xm, z = F.linear(x, params["proj_up.weight"], params.get("proj_up.bias")).split(E, -1)
        w = params["conv1d.weight"]
        conv = F.conv1d(
            xm.transpose(1, 2),
            w,
            params.get("conv1d.bias"),
            padding=w.shape[-1] - 1,
            groups=count(params, "conv_groups"),
        )
        c = F.silu(conv[..., :T].transpose(1, 2))
        q, k = _headwise(params, "q_proj", c), _headwise(params, "k_proj", c)
        v = _headwise(params, "v_proj", xm)
        gates = torch.cat([q, k, v], dim=-1)
        i_pre = F.linear(gates, params["igate.weight"], params["igate.bias"])
        f_pre = F.linear(gates, params["fgate.weight"], params["fgate.bias"])
        m0 = i_pre.new_full((B, h), float("-inf"), dtype=torch.float64)
        u, _ = self.assemble(q, k, v, z, i_pre, f_pre, m0)
        return Drive(torch.cat([u, c], dim=-1).transpose(0, 1).contiguous())

    def readout(self, params: Params, u: Tensor, states: Tensor) -> Tensor:
        """``y`` ``(B, T, dim)`` as ``mLSTMLayer`` returns it (module docstring)."""
        core, h = self._core(params), count(params, "num_heads")
        hh = self.retrieve(params, u[..., :core], states)  # (B, T, H, d)
        B, T = hh.shape[:2]
        norm = F.group_norm(
            hh.reshape(B * T, -1),
            h,
            params["outnorm.weight"],
            params.get("outnorm.bias"),
            scalar(params, "norm_eps"),
        ).reshape(B, T, -1)
        z = self._split(params, u[..., :core])[5].transpose(0, 1)
        c = u[..., core:].transpose(0, 1)
        y = (norm + params["learnable_skip"] * c) * F.silu(z)
        y = F.linear(y, params["proj_down.weight"], params.get("proj_down.bias"))
        return y if "dropout_scale" not in params else y * params["dropout_scale"]

    # ------------------------------------------------------------------ maths
    def linear_factors(self, params: Params, x: Tensor, s: Tensor) -> Any:
        """:class:`MLSTMAdapter`'s, from the mLSTM part of the drive."""
        return super().linear_factors(params, x[..., : self._core(params)], s)

    def diagonal(self, params: Params, u: Tensor) -> Tensor:
        """``f_t`` per head over its ``d² + d`` state numbers ``(N, D)``."""
        return super().diagonal(params, u[..., : self._core(params)])

    def log_decay(self, params: Params, u: Tensor) -> Tensor:
        """``ln f_t = logsigmoid(f̃_t)`` per state number (as the cell's ``log_fgates``)."""
        return super().log_decay(params, u[..., : self._core(params)])

    def product(
        self, params: Params, x: Tensor, s: Tensor, f: Any, m: Tensor, wrt: str, rev: bool
    ) -> Tensor:
        """:class:`MLSTMAdapter`'s products; ``c``'s input-Jacobian columns are zero."""
        core = self._core(params)
        if wrt == "state":
            return super().product(params, x, s, f, m, wrt, rev)
        if not rev:
            return super().product(params, x[:, :core], s, f, m[:, :core], wrt, rev)
        out = super().product(params, x[:, :core], s, f, m, wrt, rev)
        zeros = m.new_zeros((m.shape[0], x.shape[-1] - core, m.shape[-1]))
        return torch.cat([out, zeros], dim=1)

    def vanishing_advice(self, params: Params, facts: dict[str, str]) -> list[str]:
        """The cell's forget-gate bias (``fgate.bias``), with this layer's values."""
        return advice.mlstm(params, facts, "fgate.bias", params.get("fgate.bias"))


ADAPTER = MLSTMBlockAdapter()

__all__ = ["ADAPTER", "CELL_EPS", "MLSTMBlockAdapter"]
