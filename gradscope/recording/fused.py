"""Fused modules (``nn.RNN``, ``nn.LSTM``, ``nn.GRU``): one call's layout, capture and replay.

:class:`Layout` maps a module's native tensors (``batch_first``, unbatched, packed) to
time-major ``(T, B, ·)``; :func:`capture_fused` keeps what a forward hook saw of one call as a
:class:`FusedCall` (input, initial state, weights per layer and direction, outputs), which
:mod:`gradscope.recording.replay` replays. See "Fused modules" in :mod:`gradscope.recording`
for the conventions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from gradscope.cells import adapter_for
from gradscope.cells.base import CellAdapter, Params
from gradscope.errors import ShapeError
from gradscope.recording.arguments import autocast_dtype, bind, clone
from gradscope.recording.dropout import MASK_REPRODUCED, dropout_mode
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
    #: [layer][dir] -> the carried gate's pre-activations ``(T, B, H)`` or None
    #: (:attr:`~gradscope.cells.base.Forced.carried`)
    carried: list[list[Tensor | None]] | None = None


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
