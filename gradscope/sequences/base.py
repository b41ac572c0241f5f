"""The sequence adapter contract: a recurrence that a module runs over whole sequences at once.

Modern recurrences (Mamba, Mamba-2, RWKV, xLSTM, RG-LRU, gated DeltaNet, minGRU, LRU) are
run as parallel scans or fused kernels: one call of the module processes a whole sequence,
like cuDNN's LSTM. Their state still obeys a step recurrence; what differs from a classic cell
is that everything *around* the recurrence (projections, short convolutions, gates computed
from the input) is computed for all timesteps at once. A :class:`SequenceAdapter` therefore
splits a module's forward in three:

1. :meth:`~SequenceAdapter.drive`: from the module's own arguments, all per-step quantities
   the recurrence reads, ``u`` of shape ``(T, B, I)`` (time-major), computed in parallel from
   the module's parameters (for Mamba: the convolved input ``x_t``, the step ``Δ_t`` and the
   selective ``B_t``, ``C_t``, and the output gate ``z_t``), and the initial state;
2. :meth:`~SequenceAdapter.step`: the recurrence ``s_t = f(u_t, s_{t-1})`` on ``(N, ·)``
   batches, exactly the :class:`~gradscope.cells.base.CellAdapter` contract with the drive
   as the cell's input;
3. :meth:`~SequenceAdapter.readout`: the module's output from the drive and all states,
   again in parallel; recording compares it with what the module returned (the replay check).

So a recorded sequence layer is an ordinary :class:`~gradscope.layer_trace.LayerTrace` whose
inputs are the drive: every analysis (Jacobian products, Lyapunov exponents, decay, the
Monitor's loss gradients) works on it unchanged, and the input Jacobian ``∂s_t/∂x_t`` is the
sensitivity of the state to the drive ``u_t``.

Structured Jacobians. Most of these recurrences are linear in the state with an input-
dependent diagonal (Mamba, minGRU, RG-LRU, RWKV) or per-head scalar (Mamba-2, mLSTM)
transition. An adapter declares it by returning the transition's eigenvalues from
:meth:`~SequenceAdapter.diagonal`: ``J_t = P diag(λ_t) P⁻¹`` with the same unitary ``P``
at every step (``P = I`` for a real diagonal; 2 × 2 rotation blocks for a complex diagonal
held as real and imaginary parts). Then products over time stay diagonal, and the analysis
uses it: the finite-time Lyapunov exponents are exactly the per-coordinate means of
``ln|λ_t|``, the singular values of ``J_t`` are ``|λ_t|``, and ``‖∂s_T/∂s_t‖`` is the
largest ``|∏ λ|``, all in ``O(T · D)``, no QR.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from gradscope.cells.base import DIAGONAL, CellAdapter, Params


class Drive(NamedTuple):
    """What :meth:`SequenceAdapter.drive` returns.

    Attributes:
        u: ``(T, B, I)`` per-step inputs of the recurrence, time-major.
        s0: ``(B, D)`` initial state, or None for zeros.
        lengths: ``(B,)`` int64 valid steps per sequence, or None when all are ``T``
            (e.g. from a padding mask; padded steps are then NaN in the trace).
    """

    u: Tensor
    s0: Tensor | None = None
    lengths: Tensor | None = None


class SequenceAdapter(CellAdapter):
    """A recurrence that one module call runs over a whole sequence (a parallel scan).

    Subclass it, set :attr:`kind`, :attr:`state_names` and :attr:`structure`, implement
    :meth:`module_params`, :meth:`drive`, :meth:`readout`, :meth:`state_sizes`,
    :meth:`input_size` and :meth:`step`, and register it with
    :func:`gradscope.register_sequence`. For closed-form Jacobian products override
    :meth:`~gradscope.cells.base.CellAdapter.linear_factors` and
    :meth:`~gradscope.cells.base.CellAdapter.product` (otherwise ``torch.func`` differentiates
    :meth:`step`, ``k`` evaluations per product); for a diagonal transition implement
    :meth:`diagonal`. See :mod:`gradscope.sequences.base` and the minGRU / LRU examples in
    ``examples/``.

    The dense :meth:`jacobian_state` / :meth:`jacobian_input` default to products with the
    identity (``O(D)`` products: meant for tests and small states).
    """

    _contract = True
    structure: str = DIAGONAL
    #: Marks the adapter for the recorder: the module runs whole sequences per call.
    runs_sequences = True

    # ------------------------------------------------------------------ recording
    @abstractmethod
    def module_params(self, module: nn.Module) -> Params:
        """The tensors the recurrence, drive and readout need, detached (saved in traces).

        Configuration numbers (a head count, an epsilon) go in as 0-d tensors, so that a
        saved trace can be analysed without the module.
        """

    @abstractmethod
    def drive(self, params: Params, args: tuple, kwargs: dict[str, Any]) -> Drive:
        """The per-step inputs ``u`` ``(T, B, I)`` and initial state from the module's arguments.

        Computed in parallel over time (no step loop), in the dtype the module computes in.

        Raises:
            UnsupportedModuleError: a call the adapter cannot replay (e.g. a cache carried
                over from earlier generation steps); the message says what to do.
        """

    @abstractmethod
    def readout(self, params: Params, u: Tensor, states: Tensor) -> Tensor:
        """The module's output from the drive ``(T, B, I)`` and states ``(T+1, B, D)``.

        In the layout of :meth:`module_output`; parallel over time. Differentiable in
        ``states`` (the Monitor back-propagates the captured output cotangent through it).
        """

    def initial_state(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
        """Called just before the module runs: the state the call starts from, or None.

        None means :meth:`drive`'s ``s0`` (zeros unless it says otherwise). Raise
        :class:`~gradscope.errors.UnsupportedModuleError` for a call that cannot be replayed
        from its arguments alone (e.g. one that continues a cached generation state).
        """
        return None

    def refused_methods(self, module: nn.Module) -> dict[str, str]:
        """Methods of ``module`` besides ``forward`` that run its recurrence, with why refused.

        Forward hooks see only calls of ``forward``; a method that a model calls directly
        (a generation ``step(x, cache)`` continuing a state the hooks never see) would run
        unseen, and the trace would silently lack it. While a recording is open, each name
        given here is shadowed on the instance by a function that raises
        :class:`~gradscope.errors.UnsupportedModuleError` with its message; the method is
        restored when the hooks are removed. A dotted name is a submodule's method
        (``"seq.forward_rnn"``). The default is none.
        """
        return {}

    def replay_tolerance(self, params: Params, dtype: torch.dtype) -> float | None:
        """The replay check's relative tolerance for this module, or None for the default.

        The default (float64: 1e-10, float32: 1e-4) assumes the module computes in its own
        dtype; a module that rounds to float32 inside a float64 model (many fused kernels'
        reference paths do) is reproduced to float32 rounding only, and says so here.
        """
        return None

    def module_output(self, output: Any) -> Tensor:
        """The tensor of the module's return value that :meth:`readout` reproduces."""
        if isinstance(output, Tensor):
            return output
        return output[0]

    def scan(self, params: Params, u: Tensor, s0: Tensor) -> Tensor:
        """All states ``(T+1, B, D)``, ``s0`` first, by :meth:`step` one step at a time.

        ``O(T)`` sequential steps of ``O(B · D)`` work each for an elementwise recurrence.
        """
        out = u.new_empty((u.shape[0] + 1, *s0.shape))
        out[0] = s0
        s = s0
        with torch.no_grad():
            for t in range(u.shape[0]):
                s = self.step(params, u[t], s)
                out[t + 1] = s
        return out

    # ------------------------------------------------------------------ structure
    def diagonal(self, params: Params, u: Tensor) -> Tensor | None:
        """Eigenvalues ``λ_t`` of ``J_t = P diag(λ_t) P⁻¹`` per pair, ``(N, D)``, or None.

        Return them only when ``P`` is unitary, the same at every step, and block diagonal in
        the state's coordinates with eigenvalues of equal modulus within a block (a real
        diagonal, a per-head scalar times the identity, or a complex diagonal held as real
        and imaginary parts, whose 2 × 2 blocks are a scaled rotation: then both coordinates
        of a pair carry ``λ`` and ``λ̄``): then ``|λ_t|`` per state coordinate is also how
        much ``J_t`` scales that coordinate, which the exact analysis relies on. May be
        complex. Must not depend on the state.
        """
        return None


def scalar(params: Params, name: str) -> float:
    """A configuration number stored in ``params`` as a 0-d tensor."""
    return float(params[name].item())


def count(params: Params, name: str) -> int:
    """An integer configuration number stored in ``params`` as a 0-d tensor."""
    return int(params[name].item())


__all__ = ["Drive", "SequenceAdapter", "count", "scalar"]
