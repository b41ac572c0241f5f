"""Successive calls of one fused module that carry the state on: one sequence, one layer.

A seq2seq decoder often calls an ``nn.LSTM`` one step at a time, passing the ``(h_n, c_n)``
of each call as the next call's ``hx``. Those calls are one recurrence, exactly like the
calls of an ``nn.LSTMCell`` in a loop (:mod:`gradscope.recording.chains`), so they are
recorded as one :class:`FusedChain` and become one layer per layer of the module: a call
continues the chain when its initial state is the previous call's final state (the same,
unmodified tensors, or equal values), with the same weights, batch and layout. Only
unidirectional modules on unpacked input chain (a reverse direction restarts every call).

Each call is still replayed and checked on its own (:mod:`gradscope.recording.build`); the
layers are then joined (:func:`join_layers`): states ``s_0 … s_T`` of the first call, then
``s_1 … s_T`` of each later call (its ``s_0`` is the previous call's ``s_T``). Loss gradients
are joined the same way (:func:`join_grads`): each call's ``∂L/∂s_t`` comes from the
cotangents its own outputs received, and the cotangent of ``h_n``/``c_n`` is the *total*
gradient of that tensor, which includes what flowed back through the next call, so the
joined gradients are the exact ``∂L/∂s_t`` of the whole sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from gradscope.recording.dropout import NOT_REPRODUCIBLE
from gradscope.recording.fused import FusedCall
from gradscope.traces import LayerTrace


def _version(t: Any) -> int | None:
    try:
        return int(t._version)
    except (AttributeError, RuntimeError):  # inference tensors have no version counter
        return None


def weight_versions(module: nn.Module) -> tuple[Any, ...]:
    """Identity and in-place version of every weight of a fused module."""
    weights = getattr(module, "_flat_weights", None) or list(module.parameters())
    return tuple((id(w), _version(w)) for w in weights)


@dataclass
class FusedChain:
    """Calls of one fused module whose states follow on from each other (see module doc).

    Attributes:
        calls: The calls, in order.
        refs: The final-state tensors the last call returned (``h_n`` or ``(h_n, c_n)``).
        versions: Their in-place versions when they were returned.
        weights: :func:`weight_versions` of the module at the first call.
        layers: The joined layers, once built.
        reached: A gradient hook fired on one of the calls' outputs (a backward reached it).
    """

    calls: list[FusedCall]
    refs: tuple[Tensor, ...] = ()
    versions: tuple[int | None, ...] = ()
    weights: tuple[Any, ...] = ()
    layers: list[LayerTrace] = field(default_factory=list)
    reached: bool = False

    @property
    def first(self) -> FusedCall:
        """The chain's first call (its name, module and call number)."""
        return self.calls[0]

    @property
    def call(self) -> int:
        """The chain's call number (``@n`` in its layers' names)."""
        return self.calls[0].call

    @call.setter
    def call(self, value: int) -> None:
        for c in self.calls:
            c.call = value

    def layer_names(self) -> list[str]:
        """The base names (without ``@n``) of the layers this chain becomes."""
        c = self.first
        return [
            f"{c.name}.l{k}" + ("_reverse" if d else "")
            for k in range(c.num_layers)
            for d in range(c.dirs)
        ]

    def remember(self, output: Any) -> None:
        """Keep the final state the last call returned, to recognise the next call."""
        _, hidden = output
        refs = tuple(hidden) if isinstance(hidden, (tuple, list)) else (hidden,)
        self.refs = refs
        self.versions = tuple(_version(t) for t in refs)

    def continued_by(self, call: FusedCall, hx: Any, weights: tuple[Any, ...]) -> bool:
        """Whether ``call`` (its ``hx`` as passed) carries this chain's state on."""
        last = self.calls[-1]
        if hx is None or call.module is not last.module or weights != self.weights:
            return False
        if call.dirs != 1 or call.layout.packed or last.layout.packed:
            return False
        if call.dropout == NOT_REPRODUCIBLE or last.dropout == NOT_REPRODUCIBLE:
            return False
        same_layout = (call.layout.batch_first, call.layout.unbatched, call.layout.B) == (
            last.layout.batch_first,
            last.layout.unbatched,
            last.layout.B,
        )
        if not same_layout or call.x.dtype != last.x.dtype or call.x.device != last.x.device:
            return False
        parts = tuple(hx) if isinstance(hx, (tuple, list)) else (hx,)
        same = len(parts) == len(self.refs) and all(
            a is b and v is not None and _version(a) == v
            for a, b, v in zip(parts, self.refs, self.versions)
        )
        if same:
            return True
        final = last.h_n if last.c_n is None else torch.cat([last.h_n, last.c_n], dim=-1)
        return final.shape == call.s0.shape and bool(torch.equal(final, call.s0))

    def append(self, call: FusedCall) -> None:
        """Add a call that continues the chain (it shares the first call's weights)."""
        call.params = self.first.params  # the same weights (checked): one copy
        call.call = self.call
        self.calls.append(call)


def join_layers(chain: FusedChain) -> list[LayerTrace]:
    """One layer per layer of the module, joined over the chain's calls (already built)."""
    per_call = [c.layers for c in chain.calls]
    if len(per_call) == 1:
        return list(per_call[0])
    out = []
    for i, first in enumerate(per_call[0]):
        parts = [layers[i] for layers in per_call]
        states = torch.cat([first.states, *(p.states[1:] for p in parts[1:])], dim=0)
        inputs = torch.cat([p.inputs for p in parts], dim=0)
        errors = [p.meta.get("replay_error") for p in parts]
        meta = dict(first.meta)
        meta["calls"] = len(parts)
        meta["steps_per_call"] = [int(p.T) for p in parts]
        meta["replay_error"] = None if None in errors else max(errors)
        shadows = [p.meta for p in parts if p.meta.get("replay") == "shadow"]
        if shadows:
            meta["replay"] = "shadow"
            for key in ("amplification", "growth_rate", "replay_budget"):
                meta[key] = max(m[key] for m in shadows)
            horizons = [m["replay_horizon"] for m in shadows if m["replay_horizon"] is not None]
            meta["replay_horizon"] = min(horizons) if horizons else None
        logits = [p.carried_logits for p in parts]
        carried = None if any(a is None for a in logits) else torch.cat(logits)
        out.append(
            replace(
                first, states=states, inputs=inputs, meta=meta, grads=None, carried_logits=carried
            )
        )
    return out


def join_grads(per_call: list[list[Tensor]]) -> list[Tensor]:
    """``∂L/∂s_t`` per layer over the whole chain from each call's ``(T_k + 1, B, D)``."""
    if len(per_call) == 1:
        return per_call[0]
    return [
        torch.cat([per_call[0][i], *(g[i][1:] for g in per_call[1:])], dim=0)
        for i in range(len(per_call[0]))
    ]
