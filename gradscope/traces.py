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
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradscope._npz import NpzArchive, read_npz, to_numpy, write_npz
from gradscope.errors import ShapeError, TraceFormatError, UnknownNameError
from gradscope.layer_trace import LayerTrace, StepSelect, select_index
from gradscope.trace_checks import check_cell, check_lengths, check_meta, check_version, plan_layer

FORMAT = "gradscope.trace"
FORMAT_VERSION = 1
#: A custom cell's dense Jacobians are saved up to this size (or 4x its states and inputs).
JACOBIAN_SAVE_BYTES = 16 << 20


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

    def save(self, path: str | os.PathLike, *, jacobians: bool | None = None) -> Path:
        """Write the trace to ``path`` (``.npz``), atomically; returns the path written.

        ``jacobians``: store a custom cell's dense Jacobians (None: when small, see
        :func:`save`).
        """
        return save(self, path, jacobians=jacobians)


# --------------------------------------------------------------------------- I/O
def npz_path(path: Path) -> Path:
    """Where :func:`save` writes ``path``: ``.npz`` appended unless it ends in ``.npz``."""
    if path.suffix == ".npz":
        return path
    return path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")


def _custom_jacobians(layer: LayerTrace, path: Path, jacobians: bool | None) -> dict:
    """The dense Jacobians of a custom cell to store, by the size rule of :func:`save`."""
    stored = dict(layer.stored_jacobians or {})
    missing = [w for w in ("state", "input") if w not in stored]
    if layer.adapter is None or layer.adapter.closed_form or not missing or jacobians is False:
        return stored
    item = layer.states.element_size()
    need = layer.T * layer.B * layer.D * (layer.D + layer.I) * item
    data = (layer.states.numel() + layer.inputs.numel()) * item
    if jacobians is None and need > max(JACOBIAN_SAVE_BYTES, 4 * data):
        warnings.warn(
            f"{path}: {layer.name} ({layer.kind}): its dense Jacobians ({need / 2**20:.0f} MiB "
            f"for {data / 2**20:.1f} MiB of states and inputs, D = {layer.D}) are not stored. "
            "Analysing the saved trace needs them: diagnose the live recording, or save with "
            "trace.save(path, jacobians=True)",
            stacklevel=3,
        )
        return stored
    for wrt in missing:
        stored[wrt] = layer.jacobians(wrt=wrt)
    return stored


def save(trace: Trace, path: str | os.PathLike, *, jacobians: bool | None = None) -> Path:
    """Save ``trace`` as ``.npz`` + JSON metadata; no pickle. Returns the path written.

    Custom cells whose Jacobians come from ``torch.func`` cannot be rebuilt without their
    module, so their dense Jacobians (state and input, ``T·B·D·(D+I)`` numbers, ``D`` times
    the states) are stored in the file as well, when they take at most
    :data:`JACOBIAN_SAVE_BYTES` or 4 times the states and inputs; larger ones are left out
    with a warning (the loaded trace then says what it lacks when analysed).

    Args:
        trace: The trace.
        path: Destination; ``.npz`` is appended unless it ends in ``.npz`` (:func:`npz_path`).
        jacobians: Store custom cells' Jacobians: None (by the size rule), True (always),
            False (never).
    """
    path = npz_path(Path(path))
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
        stored = _custom_jacobians(layer, path, jacobians)
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

    Nothing in the file is trusted before it is checked (:mod:`gradscope.trace_checks`):
    the metadata's types, then every array's dtype and shape against the metadata (before
    any array is read, so a small file cannot declare gigabytes), then the sequence lengths
    (``1..T``) and the cell's weights.

    Raises:
        TraceFormatError: The file is missing, not an ``.npz``, not a gradscope trace, from
            a newer format version, incomplete, or inconsistent (the message names the
            layer and the field).
    """
    path = Path(path)
    with NpzArchive(path, "a gradscope trace", "Trace.save") as npz:
        meta = npz.meta
        check_version(path, meta, FORMAT, FORMAT_VERSION)
        layers_meta = check_meta(path, meta)
        plans = [plan_layer(npz, i, lm) for i, lm in enumerate(layers_meta)]
        data = npz.read(name for plan in plans for name in plan)
    layers = []
    for i, lm in enumerate(layers_meta):
        key = f"l{i}"
        where = f"{path}: layer {i} ({lm['name']!r})"
        states = torch.from_numpy(data[f"{key}/states"])

        def same(a: np.ndarray, dtype: torch.dtype = states.dtype) -> torch.Tensor:
            return torch.from_numpy(a).to(dtype)

        inputs = same(data[f"{key}/inputs"])
        lengths = data[f"{key}/lengths"].astype(np.int64) if lm["has_lengths"] else None
        if lengths is not None:
            check_lengths(where, lengths, int(inputs.shape[0]))
        params = {p: same(data[f"{key}/param/{p}"]) for p in lm["params"]}
        stored = {w: same(data[f"{key}/jac/{w}"]) for w in lm["jacobians"]}
        check_cell(where, lm, params, int(inputs.shape[2]))
        grads = same(data[f"{key}/grads"]) if lm["has_grads"] else None
        try:
            layers.append(
                LayerTrace(
                    name=lm["name"],
                    kind=lm["kind"],
                    states=states,
                    inputs=inputs,
                    lengths=lengths,
                    state_names=tuple(lm["state_names"]),
                    state_sizes=tuple(lm["state_sizes"]),
                    params=params,
                    meta=lm["meta"],
                    stored_jacobians=stored or None,
                    grads=grads,
                )
            )
        except ShapeError as exc:
            raise TraceFormatError(f"{where}: inconsistent trace ({exc})") from None
    return Trace(layers, meta.get("trace", {}))


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LayerTrace",
    "StepSelect",
    "Trace",
    "load",
    "npz_path",
    "read_npz",
    "save",
    "select_index",
    "write_npz",
]
