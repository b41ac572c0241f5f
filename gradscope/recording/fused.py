"""Fused modules (``nn.RNN``, ``nn.LSTM``, ``nn.GRU``): one call's layout, capture and replay.

:class:`Layout` maps a module's native tensors (``batch_first``, unbatched, packed) to
time-major ``(T, B, ·)``; :func:`capture_fused` keeps what a forward hook saw of one call as a
:class:`FusedCall` (input, initial state, weights per layer and direction, outputs); and
:func:`replay_fused` runs the module step by step from its weights with the adapter's step
function, layer by layer and direction by direction, applying the inter-layer dropout masks
the kernel drew (:mod:`gradscope.recording.dropout`). See "Fused modules" in
:mod:`gradscope.recording` for the conventions.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from gradscope.cells import adapter_for
from gradscope.cells.base import CellAdapter, Params, _take_rows
from gradscope.errors import ShapeError
from gradscope.recording.arguments import autocast_dtype, bind, clone
from gradscope.recording.dropout import MASK_REPRODUCED, draw_masks, dropout_mode
from gradscope.traces import LayerTrace


@dataclass
class Layout:
    """How a fused module's native tensors map to time-major ``(T, B, ·)``, original order.

    Attributes:
        T: Steps (the longest sequence).
        B: Sequences.
        batch_first: The module's ``batch_first``.
        unbatched: The input was 2-D ``(T, I)`` (B = 1).
        lengths: ``(B,)`` int64 lengths (original batch order) for packed input, else None.
        packed_t: For packed input, the time index of each row of the packed data.
        packed_b: ... and its sequence index in the original batch order.
    """

    T: int
    B: int
    batch_first: bool
    unbatched: bool
    lengths: Tensor | None = None
    packed_t: Tensor | None = None
    packed_b: Tensor | None = None

    @property
    def packed(self) -> bool:
        """Whether the input was a PackedSequence."""
        return self.lengths is not None

    def to_time_major(self, seq: Tensor | PackedSequence) -> Tensor:
        """A sequence tensor (input-, output- or cotangent-like) as ``(T, B, F)``."""
        if isinstance(seq, PackedSequence):
            seq = seq.data
        if self.packed:
            out = seq.new_zeros((self.T, self.B, seq.shape[-1]))
            out[self.packed_t, self.packed_b] = seq
            return out
        if self.unbatched:
            return seq.unsqueeze(1)
        return seq.transpose(0, 1) if self.batch_first else seq

    def hidden(self, h: Tensor) -> Tensor:
        """A native ``h_0``/``h_n``-like tensor as ``(layers·dirs, B, ·)``."""
        return h.unsqueeze(1) if self.unbatched else h

    @classmethod
    def of(cls, module: nn.Module, seq: Tensor | PackedSequence) -> Layout:
        """The layout of ``module``'s call on the input sequence ``seq``."""
        batch_first = bool(getattr(module, "batch_first", False))
        if isinstance(seq, PackedSequence):
            bs = seq.batch_sizes.to(torch.long)
            steps = int(bs.numel())
            batch = int(bs[0]) if steps else 0
            device = seq.data.device
            order = (
                seq.sorted_indices
                if seq.sorted_indices is not None
                else torch.arange(batch, device=device)
            )
            packed_t = torch.repeat_interleave(torch.arange(steps), bs)
            offsets = torch.cumsum(bs, 0) - bs
            packed_j = torch.arange(int(bs.sum())) - offsets[packed_t]
            packed_t = packed_t.to(device)
            packed_b = order[packed_j.to(device)]
            sorted_len = (bs.unsqueeze(0) > torch.arange(batch).unsqueeze(1)).sum(1)
            lengths = torch.empty(batch, dtype=torch.long)
            lengths[order.cpu()] = sorted_len
            return cls(steps, batch, batch_first, False, lengths, packed_t, packed_b)
        if seq.ndim == 2:
            return cls(int(seq.shape[0]), 1, batch_first, True)
        if seq.ndim != 3:
            raise ShapeError(f"expected a 2-D or 3-D input, got {tuple(seq.shape)}")
        t, b = (seq.shape[1], seq.shape[0]) if batch_first else (seq.shape[0], seq.shape[1])
        return cls(int(t), int(b), batch_first, False)


@dataclass
class Replay:
    """What one replay of a fused call produced (per layer, per direction)."""

    states: list[list[list[Tensor]]]  # [layer][dir] -> [s_0, ..., s_T], each (B, D)
    inputs: list[list[Tensor]]  # [layer][dir] -> (T, B, I) processing order
    outputs: list[Tensor]  # [layer] -> (T, B, dirs·P), position order, before dropout
    #: [layer][dir] -> per-step linear factors of the adapter (kept for the loss gradients)
    factors: list[list[list[Any]]] | None = None


@dataclass
class FusedCall:
    """One call of a fused module: what the hooks saw, plus the derived trace entries."""

    path: str
    name: str
    call: int
    module: nn.Module
    adapter: CellAdapter
    layout: Layout
    x: Tensor  # (T, B, I) time-major, original order, zeros at padding
    s0: Tensor  # (layers·dirs, B, D)
    params: dict[tuple[int, int], Params]
    out: Tensor  # (T, B, dirs·P) the module's own output, zeros at padding
    h_n: Tensor  # (layers·dirs, B, P)
    c_n: Tensor | None  # (layers·dirs, B, H) for LSTM
    num_layers: int
    dirs: int
    dropout_p: float
    dropout: str  # MASK_REPRODUCED | NOT_REPRODUCIBLE | NO_DROPOUT
    rng_state: Tensor | None
    masks: list[Tensor] | None = None
    cot: dict[str, Tensor] = field(default_factory=dict)
    layers: list[LayerTrace] = field(default_factory=list)
    #: The replay made when the trace was built after the backward; reused once for grads.
    tracked: Any = None
    #: The lower precision ``torch.autocast`` ran the call in (None: its own dtype).
    autocast: torch.dtype | None = None
    #: Replay teacher-forced where possible (:func:`_forceable`): set by the Monitor.
    forced: bool = False

    @property
    def valid(self) -> Tensor | None:
        """``(T, B)`` bool validity of processing step k for sequence b (None: all valid)."""
        if self.layout.lengths is None:
            return None
        lengths = self.layout.lengths.to(self.x.device)
        return torch.arange(self.layout.T, device=self.x.device).unsqueeze(1) < lengths

    def positions(self, reverse: bool) -> Tensor:
        """``(T, B)`` position read at processing step k (reverse: ``L_b - 1 - k``)."""
        steps, batch = self.layout.T, self.layout.B
        k = torch.arange(steps, device=self.x.device).unsqueeze(1).expand(steps, batch)
        if not reverse:
            return k
        if self.layout.lengths is None:
            return steps - 1 - k
        lengths = self.layout.lengths.to(self.x.device)
        return torch.clamp(lengths.unsqueeze(0) - 1 - k, min=0)


def _dropout_masks(call: FusedCall, widths: list[int]) -> list[Tensor]:
    """The inter-layer dropout multipliers PyTorch's CPU kernel drew, ``(T, B, F)`` each.

    Drawn (:func:`~gradscope.recording.dropout.draw_masks`) on the time-major ``(T, B, F)``
    output, or on the packed data ``(ΣL_b, F)`` for packed input, like the kernel.
    """
    lay = call.layout
    rows = (int(lay.packed_t.numel()),) if lay.packed else (lay.T, lay.B)
    masks = draw_masks(call.rng_state, call.dropout_p, rows, widths, call.x)
    return [lay.to_time_major(m) for m in masks] if lay.packed else masks


def _takes_xp(adapter: Any, keep_factors: bool) -> bool:
    """Whether the step method the replay calls accepts a precomputed input part ``xp``.

    A subclass of a built-in adapter may override ``step`` with the plain signature; then
    the replay calls it as it is.
    """
    fn = adapter.step_factors if keep_factors else adapter.step
    return "xp" in inspect.signature(fn).parameters


def _sequential_direction(
    call: FusedCall, params: Params, x: Tensor, s: Tensor, keep_factors: bool
) -> tuple[list[Tensor], list[Any]]:
    """States ``s_0 … s_T`` (and factors) of one direction by ``T`` steps of the cell."""
    valid = call.valid
    seq, seq_factors = [s], []
    # the input part of every step in one GEMM (cells that have one)
    proj = (
        call.adapter.project_input(params, x.flatten(0, 1))
        if _takes_xp(call.adapter, keep_factors)
        else None
    )
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
    return seq, seq_factors


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
) -> tuple[list[Tensor], list[Any]] | None:
    """States of one direction with every step's previous output taken from the module.

    The module returned ``h_1 … h_T``; a cell whose state is its output (RNN, GRU) then
    has every ``(x_t, s_{t-1})`` pair at once, so all ``T`` steps are one batched call of
    the cell (one GEMM over ``T · B`` rows instead of ``T`` small ones); an LSTM computes
    its gates the same way and its cell state by the linear recursion
    ``c_t = f_t c_{t-1} + i_t g_t`` (:meth:`~gradscope.cells.lstm.LSTMAdapter.forced_states`).
    The states are the module's own trajectory to rounding, so even chaotic dynamics
    replay exactly (no shadow trajectory); the replay is checked against the module's
    outputs as usual. None: the adapter has no such path.
    """
    T, B = x.shape[:2]
    p = call.adapter.state_sizes(params)[0]
    out = call.out[..., d * p : (d + 1) * p]
    if d == 1:
        out = out.gather(0, call.positions(reverse=True).unsqueeze(-1).expand(-1, -1, p))
    h_prev = torch.cat([s0[None, :, :p], out[:-1]])  # (T, B, P) processing order
    forced = call.adapter.forced_states(params, x, h_prev, s0, keep_factors)
    if forced is None:
        return None
    states, factors = forced
    every = states.new_empty((T + 1, *states.shape[1:]))  # s_0 … s_T in one buffer
    every[0], every[1:] = s0, states
    seq = list(every.unbind(0))  # consecutive views: stacked() gives the buffer back
    if not keep_factors:
        return seq, []
    return seq, [_take_rows(factors, slice(t * B, (t + 1) * B)) for t in range(T)]


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
    layer_in = call.x
    use_masks = call.dropout == MASK_REPRODUCED
    with torch.no_grad():
        for layer in range(call.num_layers):
            layer_states, layer_inputs, outs, layer_factors = [], [], [], []
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
                seq, seq_factors = forced or _sequential_direction(
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
                layer_inputs.append(x)
                outs.append(h)
            out = torch.cat(outs, dim=-1)
            states.append(layer_states)
            factors.append(layer_factors)
            inputs.append(layer_inputs)
            outputs.append(out)
            if use_masks and layer < call.num_layers - 1:
                if call.masks is None:
                    call.masks = _dropout_masks(call, [out.shape[-1]] * (call.num_layers - 1))
                out = out * call.masks[layer]
            layer_in = out
    return Replay(states, inputs, outputs, factors if keep_factors else None)


def capture_fused(
    path: str,
    name: str,
    count: int,
    module: nn.Module,
    args: tuple,
    kwargs: dict,
    output: Any,
    rng: Tensor | None,
) -> FusedCall:
    """What a forward hook saw of one call of a fused module, as detached copies.

    Args:
        path: The module's path in the model.
        name: The name of its layers (the path, or the class name for the model itself).
        count: How many calls of this module were recorded before this one.
        module: The module.
        args: The forward's positional arguments.
        kwargs: ... and its keyword arguments.
        output: What the forward returned: ``(output, h_n)`` or ``(output, (h_n, c_n))``.
        rng: The CPU generator's state just before the call, if it drew dropout masks.

    Raises:
        ShapeError: The input is neither a Tensor nor a PackedSequence, or not 2-D or 3-D.
    """
    bound = bind(module, args, kwargs)
    seq = bound[0] if bound else None
    hx = bound[1] if len(bound) > 1 else None
    if not isinstance(seq, (Tensor, PackedSequence)):
        raise ShapeError(
            f"{name} ({type(module).__name__}): expected a Tensor or PackedSequence input, "
            f"got {type(seq).__name__}"
        )
    adapter = adapter_for(module)
    layout = Layout.of(module, seq)
    x = clone(layout.to_time_major(seq))
    num_layers = int(module.num_layers)
    dirs = 2 if module.bidirectional else 1
    params = {
        (layer, d): {k: clone(v) for k, v in adapter.fused_params(module, layer, d == 1).items()}
        for layer in range(num_layers)
        for d in range(dirs)
    }
    sizes = adapter.state_sizes(params[(0, 0)])
    out_native, hidden = output
    if isinstance(hidden, (tuple, list)):
        h_n, c_n = hidden
    else:
        h_n, c_n = hidden, None
    h_n = clone(layout.hidden(h_n))
    c_n = None if c_n is None else clone(layout.hidden(c_n))
    n_states = num_layers * dirs
    if hx is None:
        s0 = x.new_zeros((n_states, layout.B, sum(sizes)))
    else:
        parts = hx if isinstance(hx, (tuple, list)) else (hx,)
        s0 = clone(torch.cat([layout.hidden(p) for p in parts], dim=-1))
    out = clone(layout.to_time_major(out_native))
    p = float(getattr(module, "dropout", 0.0))
    dropout = dropout_mode(module, x.device, rng)
    return FusedCall(
        path=path,
        name=name,
        call=count,
        module=module,
        adapter=adapter,
        layout=layout,
        x=x,
        s0=s0,
        params=params,
        out=out,
        h_n=h_n,
        c_n=c_n,
        num_layers=num_layers,
        dirs=dirs,
        dropout_p=p,
        dropout=dropout,
        rng_state=rng if dropout == MASK_REPRODUCED else None,
        autocast=autocast_dtype(x),
    )
