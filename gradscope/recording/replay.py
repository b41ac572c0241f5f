"""Replaying a captured fused call (:class:`~gradscope.recording.fused.FusedCall`).

:func:`replay_fused` runs the module from its weights with the adapter's step function,
layer by layer and direction by direction, applying the inter-layer dropout masks the
kernel drew (:mod:`gradscope.recording.dropout`): step by step, or, for the Monitor's
single-layer calls over unpadded sequences, teacher-forced from the module's own outputs
(all steps in one batched call, :meth:`~gradscope.cells.base.CellAdapter.forced_states`).
:func:`stacked` hands the replayed states on without copying them again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from gradscope.cells.base import Params, split_steps
from gradscope.recording.dropout import MASK_REPRODUCED, draw_masks
from gradscope.recording.fused import FusedCall, Replay


def _dropout_masks(call: FusedCall, widths: list[int]) -> list[Tensor]:
    """The inter-layer dropout multipliers PyTorch's CPU kernel drew, ``(T, B, F)`` each.

    Drawn (:func:`~gradscope.recording.dropout.draw_masks`) on the time-major ``(T, B, F)``
    output, or on the packed data ``(ΣL_b, F)`` for packed input, like the kernel.
    """
    lay = call.layout
    rows = (int(lay.packed_t.numel()),) if lay.packed else (lay.T, lay.B)
    masks = draw_masks(call.rng_state, call.dropout_p, rows, widths, call.x)
    return [lay.to_time_major(m) for m in masks] if lay.packed else masks


def _sequential_direction(
    call: FusedCall, params: Params, x: Tensor, s: Tensor, keep_factors: bool
) -> tuple[list[Tensor], list[Any], None]:
    """States ``s_0 … s_T`` (and factors) of one direction by ``T`` steps of the cell."""
    valid = call.valid
    seq, seq_factors = [s], []
    # the input part of every step in one GEMM (cells that have one)
    proj = call.adapter.project_input(params, x.flatten(0, 1)) if call.adapter.takes_xp else None
    kw: list[dict[str, Tensor]] = (
        [{}] * len(x) if proj is None else [{"xp": p} for p in proj.unflatten(0, x.shape[:2])]
    )
    for k in range(len(x)):
        if keep_factors:
            new, fac = call.adapter.step_factors(params, x[k], s, **kw[k])
            seq_factors.append(fac)
        else:
            new = call.adapter.step(params, x[k], s, **kw[k])
        if valid is not None:
            new = torch.where(valid[k].unsqueeze(-1), new, s)
        s = new
        seq.append(s)
    return seq, seq_factors, None


def stacked(seq: Sequence[Tensor]) -> Tensor:
    """``torch.stack(seq)``, as a view when the tensors are consecutive views of one buffer.

    A teacher-forced replay keeps its states ``s_0 … s_T`` in one buffer and hands them on
    as a list of per-step views; stacking them again would copy ``(T+1) · B · D`` numbers
    each time the sweep, the trace or the outputs need them. The result may share memory
    with ``seq`` (clone it before writing into it).
    """
    first = seq[0]
    n = len(seq)
    if n > 1:
        ptr, shape, strides = first.untyped_storage().data_ptr(), first.shape, first.stride()
        step = seq[1].storage_offset() - first.storage_offset()
        if step > 0 and all(
            t.shape == shape
            and t.stride() == strides
            and t.dtype == first.dtype
            and t.untyped_storage().data_ptr() == ptr
            and t.storage_offset() == first.storage_offset() + i * step
            for i, t in enumerate(seq)
        ):
            return first.as_strided((n, *shape), (step, *strides), first.storage_offset())
    return torch.stack(list(seq))


def _forceable(call: FusedCall) -> bool:
    """Whether the call can be replayed teacher-forced (:func:`_forced_direction`).

    Only when asked (``call.forced``, the Monitor's recordings), for a single-layer call
    (whose input is the module's own, not a replayed lower layer's output) over unpadded
    sequences run in the module's own precision.
    """
    return call.forced and call.num_layers == 1 and call.valid is None and call.autocast is None


def _forced_direction(
    call: FusedCall, params: Params, x: Tensor, s0: Tensor, d: int, keep_factors: bool
) -> tuple[list[Tensor], list[Any], Tensor | None] | None:
    """States of one direction with every step's previous output taken from the module.

    The module returned ``h_1 … h_T``; a cell whose state is its output (RNN, GRU) then
    has every ``(x_t, s_{t-1})`` pair at once, so all ``T`` steps are one batched call of
    the cell (one GEMM over ``T · B`` rows instead of ``T`` small ones); an LSTM computes
    its gates the same way and its cell state by the linear recursion
    ``c_t = f_t c_{t-1} + i_t g_t`` (:meth:`~gradscope.cells.lstm.LSTMAdapter.forced_states`).
    The states are the module's own trajectory to rounding, so even chaotic dynamics
    replay exactly (no shadow trajectory); the replay is checked against the module's
    outputs as usual. Also returns the carried gate's pre-activations when the adapter
    kept them (:class:`~gradscope.cells.base.Forced`). None: the adapter has no such path.
    """
    T = x.shape[0]
    p = call.adapter.state_sizes(params)[0]
    out = call.out[..., d * p : (d + 1) * p]
    if d == 1:
        out = out.gather(0, call.positions(reverse=True).unsqueeze(-1).expand(-1, -1, p))
    h_prev = torch.cat([s0[None, :, :p], out[:-1]])  # (T, B, P) processing order
    forced = call.adapter.forced_states(params, x, h_prev, s0, keep_factors)
    if forced is None:
        return None
    states, factors, carried = forced
    seq = list(states.unbind(0))  # s_0 … s_T, consecutive views: stacked() gives them back
    if not keep_factors:
        return seq, [], None
    return seq, split_steps(factors, T), carried


def replay_fused(call: FusedCall, *, keep_factors: bool = False) -> Replay:
    """Run the fused module step by step from its weights (under ``torch.no_grad``).

    Args:
        call: The recorded call.
        keep_factors: Keep each step's linear factors (gates and their derivatives, from
            :meth:`~gradscope.cells.base.CellAdapter.step_factors`), so that the loss
            gradients' sweep does not evaluate the gates again.
    """
    valid = call.valid
    states: list[list[list[Tensor]]] = []
    inputs: list[list[Tensor]] = []
    outputs: list[Tensor] = []
    factors: list[list[list[Any]]] = []
    carried: list[list[Tensor | None]] = []
    layer_in = call.x
    use_masks = call.dropout == MASK_REPRODUCED
    with torch.no_grad():
        for layer in range(call.num_layers):
            layer_states, layer_inputs, outs, layer_factors, layer_carried = [], [], [], [], []
            for d in range(call.dirs):
                params = call.params[(layer, d)]
                pos = call.positions(reverse=d == 1)
                x = (
                    layer_in
                    if d == 0
                    else layer_in.gather(0, pos.unsqueeze(-1).expand(-1, -1, layer_in.shape[-1]))
                )
                s0 = call.s0[layer * call.dirs + d]
                forced = (
                    _forced_direction(call, params, x, s0, d, keep_factors)
                    if _forceable(call)
                    else None
                )
                seq, seq_factors, logits = forced or _sequential_direction(
                    call, params, x, s0, keep_factors
                )
                p = call.adapter.state_sizes(params)[0]
                h = stacked(seq[1:])[..., :p]
                if d == 1:
                    h = h.gather(0, pos.unsqueeze(-1).expand(-1, -1, p))
                if valid is not None:
                    h = torch.where(valid.unsqueeze(-1), h, torch.zeros_like(h))
                layer_states.append(seq)
                layer_factors.append(seq_factors)
                layer_carried.append(logits)
                layer_inputs.append(x)
                outs.append(h)
            out = torch.cat(outs, dim=-1)
            states.append(layer_states)
            factors.append(layer_factors)
            carried.append(layer_carried)
            inputs.append(layer_inputs)
            outputs.append(out)
            if use_masks and layer < call.num_layers - 1:
                if call.masks is None:
                    call.masks = _dropout_masks(call, [out.shape[-1]] * (call.num_layers - 1))
                out = out * call.masks[layer]
            layer_in = out
    return Replay(states, inputs, outputs, factors if keep_factors else None, carried)
