"""Building the trace: one :class:`~gradscope.traces.LayerTrace` per recorded layer.

When a recording's block exits, :func:`build_trace` turns what the hooks captured into a
:class:`~gradscope.traces.Trace`: each fused call is replayed
(:func:`~gradscope.recording.replay.replay_fused`), checked
(:func:`~gradscope.recording.check.check_fused`) and split into one layer per layer and
direction, padding marked NaN; each chain of cell calls is checked and becomes one layer.
Layer names (``lstm.l1_reverse``, ``cell@1``) and the trace's metadata are made here.
"""

from __future__ import annotations

import warnings
from collections.abc import Container
from datetime import datetime, timezone
from typing import Any

import torch
from torch import nn

from gradscope._version import __version__
from gradscope.cells import is_registered
from gradscope.errors import GradscopeWarning, NoRecurrentModuleError
from gradscope.recording.chains import CellChain
from gradscope.recording.check import (
    FusedCheck,
    check_chain,
    check_fused,
    warn_shadow,
)
from gradscope.recording.dropout import NO_DROPOUT, NOT_REPRODUCIBLE, warn_not_reproducible
from gradscope.recording.fused import FusedCall, Replay
from gradscope.recording.fused_chain import FusedChain, join_layers
from gradscope.recording.replay import replay_fused, stacked
from gradscope.recording.sequences import SequenceCall, build_sequence
from gradscope.traces import LayerTrace, Trace

_REPR_LIMIT = 4000


def build_trace(
    entries: list[FusedChain | CellChain | SequenceCall],
    model: nn.Module,
    cells: Container[int],
    *,
    arguments: Any,
    grads: bool,
    check: bool,
    unseen: str | None = None,
) -> Trace:
    """The trace of a recording (the Recorder's ``_build``).

    Args:
        entries: The chains of fused calls and of cell calls, in the order they began.
        model: The recorded model.
        cells: ``id`` of the modules named in ``cells=[...]``.
        arguments: :func:`~gradscope.recording.arguments.argument_summary` of the model's
            arguments, for the metadata.
        grads: Loss gradients were requested.
        check: Check every replay.
        unseen: Why named cells never ran while their parents did
            (:func:`~gradscope.recording.calls.unseen_cells`), or None: the error's
            message when nothing ran, a warning otherwise.

    Raises:
        NoRecurrentModuleError: No recorded module ran.
        ReplayMismatchError: ``check`` is on and a replay did not reproduce its module.
    """
    if not entries:
        raise no_recurrent_error(model, cells, unseen)
    if unseen is not None:
        warnings.warn(unseen, GradscopeWarning, stacklevel=4)
    warned: set[str] = set()
    layers: list[LayerTrace] = []
    for entry in entries:
        if isinstance(entry, FusedChain):
            for call in entry.calls:
                _build_fused(call, grads=grads, check=check, warned=warned)
            entry.layers = join_layers(entry)
            layers.extend(entry.layers)
        elif isinstance(entry, SequenceCall):
            name = _with_call(entry.name, entry.call)
            layers.append(build_sequence(entry, check=check, layer_name=name))
        else:
            layers.append(_build_chain(entry, check=check))
    return Trace(layers, _meta(model, layers, arguments, grads))


def keep_reached(
    entries: list[FusedChain | CellChain | SequenceCall],
) -> tuple[list[FusedChain | CellChain | SequenceCall], list[str]]:
    """The entries a backward reached, numbered again per module, and the layers left out.

    A call is "reached" when a gradient hook fired on one of its outputs. The calls of each
    module that remain are numbered ``0, 1, ...`` again (their ``@n``). The names returned
    are the base names of the layers none of whose calls was reached.
    """
    kept: list[FusedChain | CellChain | SequenceCall] = []
    counts: dict[int, int] = {}
    dropped: list[str] = []
    reached: set[str] = set()
    for entry in entries:
        names = entry.layer_names() if isinstance(entry, FusedChain) else [entry.name]
        if not entry.reached:
            dropped.extend(n for n in names if n not in dropped)
            continue
        reached.update(names)
        key = id(entry.first.module if isinstance(entry, FusedChain) else entry.module)
        entry.call = counts.get(key, 0)
        counts[key] = entry.call + 1
        kept.append(entry)
    # a layer reached through another call was reached: its other calls were not the step
    return kept, [n for n in dropped if n not in reached]


def _build_fused(
    call: FusedCall, *, grads: bool, check: bool, warned: set[str]
) -> list[LayerTrace]:
    """Replay, check and split one fused call; warn once per module (``warned``)."""
    keep = bool(grads and call.cot)  # built after the backward: grads are computed next
    rep = replay_fused(call, keep_factors=keep)
    call.tracked = rep if keep else None  # reused once for the loss gradients
    result = check_fused(call, rep) if check else FusedCheck()
    call.layers = _fused_layer_traces(call, rep, result)
    if result.shadows and "shadow:" + call.path not in warned:
        warned.add("shadow:" + call.path)
        warn_shadow(call, result)
    if call.dropout == NOT_REPRODUCIBLE and call.path not in warned:
        warned.add(call.path)
        warn_not_reproducible(
            call.name, type(call.module).__name__, call.dropout_p, call.x.device.type
        )
    return call.layers


def _fused_layer_traces(call: FusedCall, rep: Replay, check: FusedCheck) -> list[LayerTrace]:
    """One LayerTrace per layer and direction, padding marked NaN.

    ``check.errors`` holds the replay check's error per ``(layer, direction)`` (absent:
    unchecked); ``check.shadows`` the ones accepted as shadow trajectories.
    """
    valid = call.valid
    lengths = None if call.layout.lengths is None else call.layout.lengths.numpy().copy()
    out = []
    for layer in range(call.num_layers):
        for d in range(call.dirs):
            params = call.params[(layer, d)]
            states = stacked(rep.states[layer][d]).detach()
            inputs = rep.inputs[layer][d].detach()
            if valid is not None:  # written into: copies (the replay's own stay as they are)
                states, inputs = states.clone(), inputs.clone()
                states[1:][~valid] = float("nan")
                inputs[~valid] = float("nan")
            # layer 0 reads the module's input; only layers > 0 read dropped-out outputs
            dropout = NO_DROPOUT if layer == 0 else call.dropout
            meta = {
                "module": call.path,
                "module_type": type(call.module).__name__,
                "layer": layer,
                "direction": "reverse" if d else "forward",
                "call": call.call,
                "source": "fused",
                "batch_first": call.layout.batch_first,
                "packed": call.layout.packed,
                "unbatched": call.layout.unbatched,
                "dropout": dropout,
                "dropout_p": call.dropout_p,
                "replay_error": check.errors.get((layer, d)),
                **_autocast_meta(call.autocast),
            }
            shadow = check.shadows.get((layer, d))
            if shadow is not None:
                meta.update(
                    replay="shadow",
                    amplification=shadow.amplification,
                    growth_rate=shadow.growth_rate,
                    replay_budget=shadow.budget,
                    replay_horizon=shadow.horizon,
                )
            suffix = f".l{layer}" + ("_reverse" if d else "")
            out.append(
                LayerTrace(
                    name=_with_call(call.name + suffix, call.call),
                    kind=call.adapter.kind,
                    states=states,
                    inputs=inputs,
                    lengths=None if lengths is None else lengths.copy(),
                    state_names=tuple(call.adapter.state_names),
                    state_sizes=tuple(int(s) for s in call.adapter.state_sizes(params)),
                    params=params,
                    meta=meta,
                    adapter=call.adapter,
                    carried_logits=None if rep.carried is None else rep.carried[layer][d],
                )
            )
    return out


def _build_chain(chain: CellChain, *, check: bool) -> LayerTrace:
    """The layer of one chain of cell calls, checked if ``check``."""
    xs = torch.stack(chain.xs)
    s_in = torch.stack(chain.s_in)
    s_out = torch.stack(chain.s_out)
    states = torch.cat([s_in[:1], s_out], dim=0)
    error = check_chain(chain, xs, s_in, s_out) if check else None
    sizes = tuple(int(s) for s in chain.adapter.state_sizes(chain.params))
    chain.layer = LayerTrace(
        name=_with_call(chain.name, chain.call),
        kind=chain.adapter.kind,
        states=states,
        inputs=xs,
        lengths=None,
        state_names=tuple(chain.adapter.state_names),
        state_sizes=sizes,
        params=chain.params,
        meta={
            "module": chain.path,
            "module_type": type(chain.module).__name__,
            "layer": 0,
            "direction": "forward",
            "call": chain.call,
            "source": "cell",
            "batch_first": False,
            "packed": False,
            "unbatched": chain.unbatched,
            "dropout": NO_DROPOUT,
            "replay_error": error,
            **_autocast_meta(chain.autocast),
        },
        adapter=chain.adapter,
    )
    return chain.layer


#: What to do with a module gradscope does not know: every way in, and the examples.
WAYS_IN = (
    "If one of them is a recurrent cell called as forward(x_t, state) -> state, name it: "
    "gs.record(model, cells=[model.my_cell]) (or register closed forms with "
    "gs.register_cell(MyCell, MyAdapter())). If it runs whole sequences per call (a parallel "
    "scan), give gradscope its package's own step function: gs.register_step(MyModule, "
    "step=MyModule.step, state=...) (examples/step.py), or write its recurrence: "
    "gs.register_sequence(MyModule, MyAdapter()) (examples/mingru.py, examples/lru.py)."
)


def no_recurrent_error(
    model: nn.Module, cells: Container[int], unseen: str | None = None
) -> NoRecurrentModuleError:
    """The error for a recording in which no recurrent module ran (says what the model holds).

    ``unseen``: why named cells did not run although their parents did (replaces the
    generic advice).
    """
    model_cls = type(model).__name__
    types = sorted({type(m).__name__ for m in model.modules()})
    present = [
        (p or model_cls.lower(), type(m).__name__)
        for p, m in model.named_modules()
        if is_registered(m) or id(m) in cells
    ]
    if present:
        listed = ", ".join(f"{p} ({t})" for p, t in present[:8])
        why = unseen or ("Run the forward inside the with-block (or pass the inputs to gs.trace).")
        return NoRecurrentModuleError(
            f"the forward of {model_cls} did not call any recorded recurrent module; it "
            f"contains {listed}, but none of them ran. {why}"
        )
    return NoRecurrentModuleError(
        f"{model_cls} contains no recurrent module gradscope knows (its module types: "
        f"{', '.join(types)}). {WAYS_IN}"
    )


def _meta(
    model: nn.Module, layers: list[LayerTrace], arguments: Any, grads: bool
) -> dict[str, Any]:
    text = repr(model)
    if len(text) > _REPR_LIMIT:
        text = text[:_REPR_LIMIT] + f"... [{len(text) - _REPR_LIMIT} more characters]"
    meta: dict[str, Any] = {
        "model": type(model).__name__,
        "model_repr": text,
        "torch_version": torch.__version__,
        "gradscope_version": __version__,
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dtypes": sorted({str(layer.dtype).replace("torch.", "") for layer in layers}),
        "devices": sorted({str(layer.states.device) for layer in layers}),
        "arguments": arguments,
        "grads": "not requested" if not grads else "no backward pass yet",
    }
    return meta


def _autocast_meta(dtype: torch.dtype | None) -> dict[str, str]:
    """``{"autocast": "bfloat16"}`` for a module that ran under ``torch.autocast``, else ``{}``."""
    return {} if dtype is None else {"autocast": str(dtype).replace("torch.", "")}


def _with_call(name: str, call: int) -> str:
    return name if call == 0 else f"{name}@{call}"
