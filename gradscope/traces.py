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
format version; loading never executes code from the file. A saved trace loads back as it
was: states, inputs, loss gradients and stored Jacobians in the states' dtype, weights
(floating arrays) in the states' dtype, and every other parameter (a sequence adapter's
0-d configuration numbers, integer or float64; complex or integer arrays) in the dtype it
was saved in. Torch dtypes NumPy lacks (``bfloat16``, the ``float8`` types) are stored
widened, exactly, and restored (:data:`gradscope.trace_checks.WIDENED`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradscope._files import as_path
from gradscope._npz import NpzArchive, read_npz, to_numpy, write_npz
from gradscope.errors import ShapeError, TraceFormatError, UnknownNameError
from gradscope.layer_trace import LayerTrace, StepSelect, select_index
from gradscope.trace_checks import (
    WIDENED,
    check_cell,
    check_lengths,
    check_meta,
    check_version,
    plan_layer,
)

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
    if path.suffix.lower() == ".npz":
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

    Raises:
        ArgumentTypeError: ``path`` is not a path.
        ShapeError: a layer holds no step or no sequence (no file could load it), or a
            tensor of a dtype no file can hold.
        OutputError: the file cannot be written (read-only, a folder, ...).
    """
    path = npz_path(as_path(path, "Trace.save", "the .npz file to write"))
    arrays: dict[str, np.ndarray] = {}
    layers_meta = []
    for i, layer in enumerate(trace.layers):
        key = f"l{i}"
        if layer.T < 1 or layer.B < 1:
            raise ShapeError(
                f"Trace.save: layer {layer.name!r} holds T = {layer.T} steps of B = {layer.B} "
                "sequences; a trace needs at least one step of one sequence (gs.load refuses "
                "an empty one): record a non-empty batch"
            )
        dtypes: dict[str, str] = {}

        def put(member: str, t: torch.Tensor, key: str = key, dtypes: dict = dtypes) -> None:
            arrays[f"{key}/{member}"] = _array(t, member, dtypes)

        put("states", layer.states)
        put("inputs", layer.inputs)
        if layer.grads is not None:
            put("grads", layer.grads)
        if layer.lengths is not None:
            arrays[f"{key}/lengths"] = np.asarray(layer.lengths, dtype=np.int64)
        for pname, p in layer.params.items():
            put(f"param/{pname}", p)
        stored = _custom_jacobians(layer, path, jacobians)
        for wrt, jac in stored.items():
            put(f"jac/{wrt}", jac)
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
                **({"dtypes": dtypes} if dtypes else {}),
            }
        )
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "layers": layers_meta,
        "trace": trace.meta,
    }
    return write_npz(path, arrays, meta)


def _array(t: torch.Tensor, member: str, dtypes: dict[str, str]) -> np.ndarray:
    """``t`` as NumPy; a dtype NumPy lacks is widened exactly and noted in ``dtypes``."""
    name = str(t.dtype).removeprefix("torch.")
    if name in WIDENED:
        dtypes[member] = name
        t = t.to(getattr(torch, WIDENED[name]))
    try:
        return to_numpy(t)
    except (TypeError, RuntimeError) as exc:
        raise ShapeError(
            f"Trace.save: {member} is a {t.dtype} tensor, which a trace file cannot hold "
            f"({exc}); cast the layer first (layer.to(torch.float32))"
        ) from None


def _tensor(where: str, member: str, a: np.ndarray, lm: dict[str, Any]) -> torch.Tensor:
    """A member read from the file as a tensor, in the dtype it was saved from."""
    try:
        t = torch.from_numpy(a)
    except TypeError as exc:  # a dtype the header checks let through: never expected
        raise TraceFormatError(f"{where}: {member} cannot be read ({exc})") from None
    original = lm["dtypes"].get(member)  # saved widened from a dtype NumPy lacks
    return t if original is None else t.to(getattr(torch, original))


def load(path: str | os.PathLike) -> Trace:
    """Load a trace written by :meth:`Trace.save`. Never unpickles anything.

    Nothing in the file is trusted before it is checked (:mod:`gradscope.trace_checks`):
    the metadata's types, then every array's dtype and shape against the metadata (before
    any array is read, so a small file cannot declare gigabytes), then the sequence lengths
    (``1..T``) and the cell's weights.

    Raises:
        ArgumentTypeError: ``path`` is not a path.
        TraceFormatError: The file is missing, not an ``.npz``, not a gradscope trace, from
            a newer format version, incomplete, or inconsistent (the message names the
            layer and the field).
    """
    path = as_path(path, "gs.load", "a trace file (.npz) written by Trace.save")
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

        def get(member: str, where: str = where, key: str = key, lm: dict = lm) -> torch.Tensor:
            return _tensor(where, member, data[f"{key}/{member}"], lm)

        states = get("states")

        def same(member: str, dtype: torch.dtype = states.dtype) -> torch.Tensor:
            return get(member).to(dtype)

        def param(member: str, dtype: torch.dtype = states.dtype) -> torch.Tensor:
            """Weights (floating arrays) in the states' dtype; anything else as saved."""
            t = get(member)
            return t.to(dtype) if t.is_floating_point() and t.ndim else t

        inputs = same("inputs")
        lengths = data[f"{key}/lengths"].astype(np.int64) if lm["has_lengths"] else None
        if lengths is not None:
            check_lengths(where, lengths, int(inputs.shape[0]))
        params = {p: param(f"param/{p}") for p in lm["params"]}
        stored = {w: same(f"jac/{w}") for w in lm["jacobians"]}
        check_cell(where, lm, params, int(inputs.shape[2]))
        grads = same("grads") if lm["has_grads"] else None
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
