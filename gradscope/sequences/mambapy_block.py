"""Mamba's selective scan as the ``mambapy`` package runs it (``mambapy.mamba.MambaBlock``).

Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces"; the
package's ``mambapy/mamba.py`` (``MambaBlock.forward``, ``ssm``, ``selective_scan`` /
``selective_scan_seq``, ``_apply_layernorms``). Its ``Jamba`` (``mambapy/jamba.py``) runs the
same ``MambaBlock`` in its Mamba layers (with the inner norms on), so it is recorded too.

For every channel ``e`` of the inner width ``E = expand_factor · d_model`` and state index
``n < N`` (``d_state``), from the block's input ``v_t`` ``(d_model,)``:

    (x̃_t, z_t) = W_in v_t (+ b_in)                   the two branches, E each
    x_t        = silu(causal_conv1d(x̃)_t)              depthwise, the last d_conv steps
    (δ_t, B_t, C_t) = W_x x_t                          dt_rank, N, N
    δ_t, B_t, C_t ← RMSNorm(δ_t), RMSNorm(B_t), RMSNorm(C_t)     only with inner_layernorms
    Δ_t        = softplus(W_Δ δ_t + b_Δ)
    h_t[e, n]  = exp(Δ_t[e] A[e, n]) h_{t-1}[e, n] + Δ_t[e] B_t[n] x_t[e]
    y_t[e]     = Σ_n C_t[n] h_t[e, n] + D[e] x_t[e]
    out_t      = W_out (y_t ⊙ silu(z_t)) (+ b_out)

with ``A = −exp(A_log)`` and ``D`` both rounded to float32 (the block calls ``.float()`` on
``A_log`` and ``D``, also in a float64 model; everything else runs in the model's dtype, the
state update included), and ``RMSNorm(a) = a · rsqrt(mean(a²) + eps) · w`` (no gain ``w``
with ``mup``). ``h_0 = 0``: the forward takes no state. The parallel scan (``pscan``, the
default) and the sequential loop (``pscan=False``) compute the same states in another order.

The equations, the state ``h`` (``D = E · N``, index ``e · N + n``), the drive
``u_t = [x_t, Δ_t, B_t, C_t, z_t]`` (``I = 3E + 2N``), the readout and the Jacobian
products are those of ``transformers``' Mamba (:mod:`gradscope.sequences.mamba`), whose
adapter this one extends: the state Jacobian is ``diag(exp(Δ_t ⊙ A))``, every product costs
``O(E · N · k)`` for ``k`` columns, no ``D × D`` matrix is formed. What differs is the drive
(this package's order of operations and its inner norms, ``b_Δ`` not rounded) and that
``x_t`` and ``B_t`` enter the update unrounded.

Refused (:class:`~gradscope.errors.UnsupportedModuleError`): a block with
``config.use_cuda`` (its forward runs ``mamba_ssm``'s fused CUDA scan, which gradscope does
not replay) and, while recording, ``MambaBlock.step(x, cache)`` (the generation path, called
directly by ``Mamba.step`` / ``JambaLM.step``: it continues from a cached ``h`` and
convolution inputs that no hook sees, so it is guarded, see
:meth:`~gradscope.sequences.base.SequenceAdapter.refused_methods`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradscope.cells.base import Params
from gradscope.errors import UnsupportedModuleError
from gradscope.sequences._hf_mixers import causal_conv_silu
from gradscope.sequences.base import Drive, scalar
from gradscope.sequences.mamba import MambaAdapter, mixer_weights

#: The inner norms' gains, in the order ``_apply_layernorms`` applies them.
_NORMS = (("dt_layernorm", "dt_norm"), ("B_layernorm", "B_norm"), ("C_layernorm", "C_norm"))

_STEP_REFUSED = (
    "gradscope records a mambapy MambaBlock through its forward (whole sequences from h = 0); "
    "MambaBlock.step(x, cache) continues from a cached state and convolution inputs that "
    "gradscope cannot see, so it is not recorded. Record the sequence in one forward call "
    "(gs.trace(model, x) with x of shape (B, L, d_model)), and run step-by-step generation "
    "outside gs.record / gs.trace (inside a gs.Monitor: in `with monitor.paused():`)."
)


def _refuse_cuda(module: nn.Module) -> None:
    if getattr(module.config, "use_cuda", False):
        raise UnsupportedModuleError(
            "this mambapy MambaBlock has config.use_cuda = True: its forward runs mamba_ssm's "
            "fused CUDA selective scan, which gradscope does not replay. Record it with the "
            "package's PyTorch scan: set block.config.use_cuda = False for the recording (the "
            "weights are the same)."
        )


def _rms(a: Tensor, weight: Tensor, eps: float) -> Tensor:
    """``mambapy.mamba.RMSNorm`` (gain ``weight``; ones stand for ``mup``'s missing gain)."""
    return a * torch.rsqrt(a.pow(2).mean(-1, keepdim=True) + eps) * weight


class MambapyBlockAdapter(MambaAdapter):
    """``mambapy.mamba.MambaBlock``: the diagonal selective scan of :class:`MambaAdapter`.

    State ``h`` ``(E · N)``; drive ``[x, Δ, B, C, z]``. See
    :mod:`gradscope.sequences.mambapy_block`.
    """

    kind = "mambapy"
    step_range = ("dt_min", "dt_max")  # mambapy's MambaConfig
    rounds_update_inputs = False
    config = {"norm_eps?": "nonnegative"}  # noqa: RUF012 (present with inner_layernorms)

    def module_params(self, module: nn.Module) -> Params:
        """The block's weights, ``A = −exp(A_log)`` and ``D`` rounded to float32 as it does.

        With ``inner_layernorms`` also the three norms' gains (ones for a ``mup`` norm,
        which has none: multiplying by 1 is exact) and their ``eps`` (0-d).

        Raises:
            UnsupportedModuleError: ``config.use_cuda`` (see the module docstring).
        """
        _refuse_cuda(module)
        out = mixer_weights(module)
        out["D"] = module.D.float()  # ssm(): D = self.D.float()
        if getattr(module, "dt_layernorm", None) is not None:
            sizes = {"dt_norm": module.dt_proj.weight.shape[1], "B_norm": module.A_log.shape[1]}
            sizes["C_norm"] = sizes["B_norm"]
            norms = [getattr(module, attr) for attr, _ in _NORMS]
            for norm, (_, key) in zip(norms, _NORMS):
                w = getattr(norm, "weight", None)
                if w is None:  # mup: RMSNorm without a gain
                    w = module.in_proj.weight.new_ones(sizes[key])
                out[f"{key}.weight"] = w
            eps = {float(norm.eps) for norm in norms}
            if len(eps) != 1:
                raise UnsupportedModuleError(
                    f"mambapy MambaBlock: its inner norms have different eps {sorted(eps)}; "
                    "gradscope replays the one config.rms_norm_eps that MambaConfig gives them"
                )
        out = {k: v.detach() for k, v in out.items()}
        if "dt_norm.weight" in out:
            out["norm_eps"] = torch.tensor(eps.pop(), dtype=torch.float64)
        return out

    def refused_methods(self, module: nn.Module) -> dict[str, str]:
        """``step`` (the generation path; see the module docstring)."""
        return {"step": _STEP_REFUSED}

    def initial_state(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """None (``h_0 = 0``, the forward takes no state); refuses ``use_cuda`` before it runs.

        Raises:
            UnsupportedModuleError: ``config.use_cuda``.
        """
        _refuse_cuda(module)
        return None

    def drive(self, params: Params, args: tuple, kwargs: dict[str, Any]) -> Drive:
        """``[x, Δ, B, C, z]`` of every step from the block's input, in its order of operations.

        Raises:
            UnsupportedModuleError: the input is not ``(B, L, d_model)``.
        """
        v = kwargs["x"] if "x" in kwargs else args[0] if args else None
        if not isinstance(v, Tensor) or v.ndim != 3:
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise UnsupportedModuleError(
                f"mambapy MambaBlock: expected the input x of shape (B, L, d_model), got {got}"
            )
        _, Ns = self._dims(params)
        xs, z = F.linear(v, params["in_proj.weight"], params.get("in_proj.bias")).chunk(2, -1)
        x = causal_conv_silu(xs, params["conv1d.weight"], params.get("conv1d.bias"))
        rank = params["dt_proj.weight"].shape[1]
        dt_r, b, c = torch.split(F.linear(x, params["x_proj.weight"]), [rank, Ns, Ns], dim=-1)
        if "dt_norm.weight" in params:
            eps = scalar(params, "norm_eps")
            dt_r = _rms(dt_r, params["dt_norm.weight"], eps)
            b = _rms(b, params["B_norm.weight"], eps)
            c = _rms(c, params["C_norm.weight"], eps)
        dt = (params["dt_proj.weight"] @ dt_r.transpose(1, 2)).transpose(1, 2)  # (B, L, E)
        dt = F.softplus(dt + params["dt_proj.bias"])
        u = torch.cat([x, dt, b, c, z], dim=-1)
        return Drive(u.transpose(0, 1).contiguous())


ADAPTER = MambapyBlockAdapter()

#: The module this adapter replays, by qualified name (``mambapy`` is not imported here).
MODULE_QUALNAME = "mambapy.mamba.MambaBlock"

__all__ = ["ADAPTER", "MODULE_QUALNAME", "MambapyBlockAdapter"]
