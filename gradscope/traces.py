"""What a recording holds: per recurrent layer and direction, every state at every step.

A :class:`LayerTrace` is time-major and in processing order (a reverse direction's step 0 is
the last valid input position of each sequence)::

    states  (T+1, B, D)   s_0 (initial state) ... s_T
    inputs  (T,   B, I)   x_1 ... x_T   (inputs[k] produced states[k+1])
    lengths (B,) or None  valid steps per sequence; steps k >= lengths[b] are padding

Padding is *marked*, not filled with plausible numbers: padded states and inputs are NaN
and :attr:`LayerTrace.mask` says which steps are real. Jacobian ``k`` is
``J_{k+1} = ∂s_{k+1}/∂s_k``, computed from ``inputs[k]`` and ``states[k]``.

Saved as one ``.npz`` (``allow_pickle=False``) whose ``__meta__`` entry is UTF-8 JSON with a
format version; loading never executes code from the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradscope._npz import read_npz, to_numpy, write_npz
from gradscope.errors import ShapeError, TraceFormatError, UnknownNameError
from gradscope.layer_trace import LayerTrace, StepSelect, select_index

FORMAT = "gradscope.trace"
FORMAT_VERSION = 1


class Trace:
    """Everything one recording saw: a list of :class:`LayerTrace` plus run metadata."""

    def __init__(self, layers: Sequence[LayerTrace], meta: dict[str, Any] | None = None):
        self.layers: list[LayerTrace] = list(layers)
        self.meta: dict[str, Any] = dict(meta or {})

    @property
    def names(self) -> list[str]:
        """Layer names in recording order."""
        return [layer.name for layer in self.layers]

    def __getitem__(self, key: str | int) -> LayerTrace:
        if isinstance(key, int):
            return self.layers[key]
        for layer in self.layers:
            if layer.name == key:
                return layer
        raise UnknownNameError(f"no layer named {key!r}; this trace has {self.names}")

    def __iter__(self) -> Iterator[LayerTrace]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Trace([\n  {inner}\n])"

    def save(self, path: str | os.PathLike) -> Path:
        """Write the trace to ``path`` (``.npz``), atomically; returns the path written."""
        return save(self, path)


# --------------------------------------------------------------------------- I/O
def save(trace: Trace, path: str | os.PathLike) -> Path:
    """Save ``trace`` as ``.npz`` + JSON metadata; no pickle. Returns the path written.

    Custom cells whose Jacobians come from ``torch.func`` cannot be rebuilt without their
    module, so their Jacobians (state and input) are stored in the file as well.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
    arrays: dict[str, np.ndarray] = {}
    layers_meta = []
    for i, layer in enumerate(trace.layers):
        key = f"l{i}"
        arrays[f"{key}/states"] = to_numpy(layer.states)
        arrays[f"{key}/inputs"] = to_numpy(layer.inputs)
        if layer.grads is not None:
            arrays[f"{key}/grads"] = to_numpy(layer.grads)
        if layer.lengths is not None:
            arrays[f"{key}/lengths"] = np.asarray(layer.lengths, dtype=np.int64)
        for pname, p in layer.params.items():
            arrays[f"{key}/param/{pname}"] = to_numpy(p)
        stored = dict(layer.stored_jacobians or {})
        if layer.adapter is not None and not layer.adapter.closed_form:
            for wrt in ("state", "input"):
                if wrt not in stored:
                    stored[wrt] = layer.jacobians(wrt=wrt)
        for wrt, jac in stored.items():
            arrays[f"{key}/jac/{wrt}"] = to_numpy(jac)
        layers_meta.append(
            {
                "name": layer.name,
                "kind": layer.kind,
                "state_names": list(layer.state_names),
                "state_sizes": list(layer.state_sizes),
                "params": sorted(layer.params),
                "jacobians": sorted(stored),
                "has_lengths": layer.lengths is not None,
                "has_grads": layer.grads is not None,
                "meta": layer.meta,
            }
        )
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "layers": layers_meta,
        "trace": trace.meta,
    }
    return write_npz(path, arrays, meta)


def load(path: str | os.PathLike) -> Trace:
    """Load a trace written by :meth:`Trace.save`. Never unpickles anything.

    Raises:
        TraceFormatError: The file is missing, not an ``.npz``, not a gradscope trace, from
            a newer format version, or incomplete.
    """
    path = Path(path)
    data, meta = read_npz(path, "a gradscope trace", "Trace.save")
    if meta.get("format") != FORMAT:
        raise TraceFormatError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}")
    if not isinstance(meta.get("version"), int) or meta["version"] > FORMAT_VERSION:
        raise TraceFormatError(
            f"{path}: trace format version {meta.get('version')!r}; this gradscope reads "
            f"versions <= {FORMAT_VERSION} (upgrade gradscope)"
        )
    layers = []
    try:
        for i, lm in enumerate(meta["layers"]):
            key = f"l{i}"
            states = torch.from_numpy(data[f"{key}/states"])
            inputs = torch.from_numpy(data[f"{key}/inputs"])
            lengths = data[f"{key}/lengths"] if lm["has_lengths"] else None
            params = {p: torch.from_numpy(data[f"{key}/param/{p}"]) for p in lm["params"]}
            stored = {w: torch.from_numpy(data[f"{key}/jac/{w}"]) for w in lm["jacobians"]}
            grads = torch.from_numpy(data[f"{key}/grads"]) if lm.get("has_grads") else None
            layers.append(
                LayerTrace(
                    name=str(lm["name"]),
                    kind=str(lm["kind"]),
                    states=states,
                    inputs=inputs,
                    lengths=lengths,
                    state_names=tuple(lm["state_names"]),
                    state_sizes=tuple(int(s) for s in lm["state_sizes"]),
                    params=params,
                    meta=dict(lm.get("meta", {})),
                    stored_jacobians=stored or None,
                    grads=grads,
                )
            )
    except (KeyError, TypeError, ShapeError) as exc:
        raise TraceFormatError(f"{path}: incomplete or inconsistent trace ({exc})") from None
    return Trace(layers, meta.get("trace", {}))


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LayerTrace",
    "StepSelect",
    "Trace",
    "load",
    "read_npz",
    "save",
    "select_index",
    "write_npz",
]
