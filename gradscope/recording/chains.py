"""Cells called in a Python loop: capturing each call and chaining calls into sequences.

A forward hook on a cell (``nn.RNNCell``, ``nn.LSTMCell``, ``nn.GRUCell``, a registered or a
named custom cell) hands every call to :meth:`CellCapture.capture`, which checks the
``forward(x_t, state) -> state`` convention, packs the state parts into one state vector and
appends the call to its :class:`CellChain`: consecutive calls whose input state is the
previous call's output form one sequence (see "Cells called in a Python loop" in
:mod:`gradscope.recording`). :func:`internal_edges` finds the within-step autograd edges
whose share of a part's gradient the loss gradients must not count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gradscope.cells import adapter_for, is_registered
from gradscope.cells.base import CellAdapter, Params
from gradscope.cells.generic import WHOLE_SEQUENCE, GenericAdapter, describe, seen
from gradscope.errors import CellConventionError, ShapeError
from gradscope.recording.arguments import autocast_dtype, bind, clone
from gradscope.traces import LayerTrace


@dataclass
class CellChain:
    """Consecutive calls of one cell that form one sequence."""

    path: str
    name: str
    call: int
    module: nn.Module
    adapter: CellAdapter
    params: Params
    unbatched: bool
    xs: list[Tensor] = field(default_factory=list)  # (B, I) per call
    s_in: list[Tensor] = field(default_factory=list)  # (B, D) per call
    s_out: list[Tensor] = field(default_factory=list)  # (B, D) per call
    last_refs: tuple[Tensor, ...] = ()
    last_versions: tuple[int | None, ...] = ()
    #: (step, part) -> total autograd gradient of that output tensor (tensor hook)
    grads_out: dict[tuple[int, int], Tensor] = field(default_factory=dict)
    #: (step, part) -> the share of it that came from the same step's other parts
    internal: dict[tuple[int, int], Tensor] = field(default_factory=dict)
    layer: LayerTrace | None = None
    #: A gradient hook fired on one of its outputs (a backward pass reached the chain).
    reached: bool = False
    #: The lower precision ``torch.autocast`` ran calls in (None: the weights' dtype).
    autocast: torch.dtype | None = None

    def continues(self, parts: tuple[Tensor, ...] | None, packed: Tensor | None) -> bool:
        """Whether a call with input state ``parts`` continues this chain."""
        if parts is None or packed is None or not self.s_out:
            return False
        last = self.s_out[-1]
        if packed.shape != last.shape:
            return False
        same = len(parts) == len(self.last_refs) and all(
            a is b and v is not None and _version(a) == v
            for a, b, v in zip(parts, self.last_refs, self.last_versions)
        )
        return same or bool(torch.equal(packed, last))


#: How many autograd nodes :func:`internal_edges` visits at most per cell call. A cell
#: step's own graph has tens of nodes; the limit only stops a walk that escapes into the
#: history of a tensor the cell closes over.
_MAX_STEP_NODES = 4096


def internal_edges(outputs: tuple[Tensor, ...], inputs: tuple[Tensor, ...]) -> list:
    """Edges ``(node, i, j)`` where a node of this step consumes output part ``j``.

    The gradient a tensor hook sees on an output part is its *total* autograd gradient. If
    the cell computes one part from another inside the same step (PyTorch's CPU
    ``LSTMCell`` computes ``h_t = o ⊙ tanh(c_t)`` from the ``c_t`` it returns), that total
    includes the within-step path, which is not part of ``∂L/∂s_t`` (the state is
    ``s_t = (h_t, c_t)``; ``h_t``'s dependence on ``c_t`` is inside ``J_t``). A node hook on
    each such consumer edge measures that share so that it can be subtracted. The walk
    starts at the output parts' autograd nodes and stops at the step's inputs.
    """
    targets: dict[tuple[Any, int], int] = {}
    for j, part in enumerate(outputs):
        if part.grad_fn is not None:
            targets[(part.grad_fn, part.output_nr)] = j
    if len(targets) < 2:
        return []
    target_nodes = {node for node, _ in targets}
    stop = {t.grad_fn for t in inputs if isinstance(t, Tensor) and t.grad_fn is not None}
    queue = list(target_nodes)
    seen = set(queue)
    edges = []
    head = 0
    while head < len(queue) and head < _MAX_STEP_NODES:
        node = queue[head]
        head += 1
        for i, (nxt, nr) in enumerate(node.next_functions):
            if nxt is None:
                continue
            j = targets.get((nxt, nr))
            if j is not None and nxt is not node:
                edges.append((node, i, j))
            if nxt in seen or nxt in stop or nxt in target_nodes:
                continue
            seen.add(nxt)
            queue.append(nxt)
    return edges


def _version(t: Tensor) -> int | None:
    """The in-place version counter (None for inference-mode tensors, which have none)."""
    try:
        return t._version
    except RuntimeError:
        return None


def _cell_state_parts(state: Any) -> tuple[Tensor, ...] | None:
    if state is None:
        return None
    if isinstance(state, Tensor):
        return (state,)
    if isinstance(state, (tuple, list)) and all(isinstance(s, Tensor) for s in state):
        return tuple(state)
    return ()


@dataclass
class CellCall:
    """One captured call of a cell: its chain, and the tensors its gradient hooks need.

    Attributes:
        chain: The chain the call was appended to.
        new: The call began that chain.
        step: The index of the call's output state in the chain's states (1 for its first).
        outputs: The output state's parts, as the cell returned them.
        inputs: ``x_t`` and the input state's parts, as the cell received them.
    """

    chain: CellChain
    new: bool
    step: int
    outputs: tuple[Tensor, ...]
    inputs: tuple[Tensor, ...]


class CellCapture:
    """The cell calls of one recording, chained per module (see the module docstring)."""

    def __init__(self) -> None:
        self._chains: dict[int, CellChain] = {}
        self._counts: dict[int, int] = {}
        self._generic: dict[int, GenericAdapter] = {}

    def _adapter(self, module: nn.Module, x: Tensor, state: Any, output: Any) -> CellAdapter:
        if is_registered(module):
            return adapter_for(module)
        adapter = self._generic.get(id(module))
        if adapter is None:
            adapter = GenericAdapter.from_call(module, x, state, output)
            self._generic[id(module)] = adapter
        return adapter

    def capture(
        self, path: str, name: str, module: nn.Module, args: tuple, kwargs: dict, output: Any
    ) -> CellCall:
        """Record one call of the cell ``module`` (its forward hook's arguments).

        Args:
            path: The module's path in the model.
            name: The name of its layer (the path, or the class name for the model itself).
            module: The cell.
            args: The forward's positional arguments.
            kwargs: ... and its keyword arguments.
            output: What the forward returned.

        Raises:
            CellConventionError: The call does not follow ``forward(x_t, state) -> state``.
            ShapeError: The state's parts do not have the adapter's shapes.
        """
        cls = type(module).__name__
        bound = bind(module, args, kwargs)
        convention = (
            f"{name} ({cls}): gradscope records a cell called as forward(x_t, state) -> state "
            "(x_t a Tensor (B, I); state a Tensor (B, D), a tuple of Tensors, or None for "
            "zeros)"
        )
        if len(bound) > 2 and any(b is not None for b in bound[2:]):
            raise CellConventionError(
                f"{convention}, but it was called with {len(bound)} arguments: "
                f"{seen(bound)}. Wrap it in a module with that signature, e.g. "
                "forward(self, x, h): return self.cell(x, h, <the other arguments>) (keeping "
                "only the next state if it returns more)."
            )
        if not bound or not isinstance(bound[0], Tensor):
            raise CellConventionError(
                f"{convention}, but its first argument is "
                f"{describe(bound[0]) if bound else 'missing'}"
            )
        x = bound[0]
        state = bound[1] if len(bound) > 1 else None
        unbatched = x.ndim == 1 and is_registered(module)
        adapter = self._adapter(module, x, state, output)
        with torch.no_grad():
            xb = x.unsqueeze(0) if unbatched else x
            if xb.ndim != 2:
                raise CellConventionError(
                    f"{convention}, but it was called with {seen(bound)}; a cell step takes "
                    "one timestep (B, I)." + (f" {WHOLE_SEQUENCE}." if xb.ndim == 3 else "")
                )
            batch = xb.shape[0]
            in_parts = _cell_state_parts(state)
            out_parts = _cell_state_parts(output)
            if in_parts is None and isinstance(adapter, GenericAdapter):
                raise CellConventionError(
                    f"{convention}, but it was called with state=None; a custom cell's "
                    "initial state must be passed explicitly (e.g. zeros) so that it can be "
                    "recorded and replayed"
                )
            if in_parts == () or not out_parts:
                bad, what = (state, "state") if in_parts == () else (output, "output")
                raise CellConventionError(
                    f"{convention}, but its {what} is {describe(bad)}; it must be a Tensor "
                    "or a tuple of Tensors"
                )
            params = None
            chain = self._chains.get(id(module))
            new = False
            if chain is None or chain.adapter is not adapter:
                params = {k: clone(v) for k, v in adapter.cell_params(module).items()}
            current = params if params is not None else chain.params
            sizes = tuple(adapter.state_sizes(current))
            s_out = self._pack(adapter, out_parts, batch, sizes, unbatched, name, cls, "output")
            if in_parts is None:
                s_in = s_out.new_zeros((batch, sum(sizes)))
            else:
                s_in = self._pack(adapter, in_parts, batch, sizes, unbatched, name, cls, "state")
            weight = next(
                (v for v in current.values() if isinstance(v, Tensor) and v.is_floating_point()),
                None,
            )
            lowp = None if weight is None else autocast_dtype(weight)
            if lowp is not None:  # recorded in the weights' dtype, the replay's
                xb, s_in, s_out = (t.to(weight.dtype) for t in (xb, s_in, s_out))
            if chain is None or chain.unbatched != unbatched or not chain.continues(in_parts, s_in):
                count = self._counts.get(id(module), 0)
                self._counts[id(module)] = count + 1
                if params is None:
                    params = {k: clone(v) for k, v in adapter.cell_params(module).items()}
                chain = CellChain(
                    path=path,
                    name=name,
                    call=count,
                    module=module,
                    adapter=adapter,
                    params=params,
                    unbatched=unbatched,
                )
                self._chains[id(module)] = chain
                new = True
            chain.autocast = chain.autocast or lowp
            chain.xs.append(clone(xb))
            chain.s_in.append(s_in)
            chain.s_out.append(s_out)
            chain.last_refs = tuple(out_parts)
            chain.last_versions = tuple(_version(t) for t in out_parts)
        return CellCall(chain, new, len(chain.s_out), out_parts, (x, *(in_parts or ())))

    @staticmethod
    def _pack(
        adapter: CellAdapter,
        parts: tuple[Tensor, ...],
        batch: int,
        sizes: tuple[int, ...],
        unbatched: bool,
        name: str,
        cls: str,
        what: str,
    ) -> Tensor:
        if unbatched:
            parts = tuple(p.unsqueeze(0) for p in parts)
        shapes = [tuple(p.shape) for p in parts]
        if len(parts) != len(sizes) or any(s != (batch, d) for s, d in zip(shapes, sizes)):
            expected = ", ".join(f"({batch}, {d})" for d in sizes)
            raise ShapeError(
                f"{name} ({cls}, kind {adapter.kind!r}): the {what} has parts of shapes "
                f"{shapes} but this cell's state is {len(sizes)} part(s) of shapes {expected} "
                f"(state parts {tuple(adapter.state_names)}); the batch must match x_t's "
                f"({batch}). Check the state passed to the cell, or the adapter registered for "
                f"{cls}."
            )
        return clone(adapter.pack_state(parts))
