"""What :func:`gradscope.load` checks before a saved trace becomes a :class:`Trace`.

A file is read in three passes, so that nothing the file claims is trusted before it is
checked: the JSON metadata (types of every field: a list of layers, each with a string name
and kind, positive integer state sizes, ...), then the ``.npy`` headers of the members the
metadata names (states, inputs, loss gradients and Jacobians are real floating point; a
parameter is floating point, integer, boolean or complex, since sequence adapters keep
configuration numbers as 0-d integer tensors; shapes agree with ``state_sizes`` and with
each other: states ``(T+1, B, D)`` with ``T, B >= 1``, inputs ``(T, B, I)``, lengths
``(B,)``, loss gradients like the states, stored Jacobians ``(T, B, D, D)`` /
``(T, B, D, I)``; a built-in cell's weights have PyTorch's shapes), and only then the
arrays, whose values are checked last (lengths in ``1..T``; a built-in cell's weights fit its
state and input sizes, tried on one step). Every failure is a :class:`TraceFormatError`
that names the layer and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradscope._npz import NpzArchive, check_version
from gradscope.cells import adapter_for_kind
from gradscope.errors import GradscopeError, TraceFormatError

#: Jacobians a trace may store (``jacobians`` in a layer's metadata).
STORED_WRT = ("state", "input")
#: Torch dtypes NumPy has no type for: saved widened (to the second), their names noted
#: under a layer's ``dtypes`` (``{member: name}``) and restored on loading.
WIDENED = {
    "bfloat16": "float32",
    "float8_e4m3fn": "float32",
    "float8_e5m2": "float32",
    "float8_e4m3fnuz": "float32",
    "float8_e5m2fnuz": "float32",
    "complex32": "complex64",
}
#: Array dtypes a trace holds (every one ``torch.from_numpy`` takes), by kind.
_REAL = frozenset(np.dtype(t) for t in ("f2", "f4", "f8"))
_PARAM = _REAL | frozenset(
    np.dtype(t) for t in ("c8", "c16", "b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8")
)
#: The gate count of each built-in fused cell kind (rows of ``weight_hh`` per unit).
_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "gru": 3, "lstm": 4}


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


def check_meta(path: Path, meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The layers' metadata, every field of the right type (normalised copies).

    Raises:
        TraceFormatError: naming the layer and field.
    """
    layers = meta.get("layers")
    if not isinstance(layers, list):
        raise TraceFormatError(f"{path}: metadata 'layers' must be a list, got {layers!r:.60}")
    trace_meta = meta.get("trace", {})
    if not isinstance(trace_meta, dict):
        raise TraceFormatError(
            f"{path}: metadata 'trace' must be an object, got {trace_meta!r:.60}"
        )
    out = []
    for i, lm in enumerate(layers):
        where = f"{path}: layer {i}"
        if not isinstance(lm, dict):
            raise TraceFormatError(f"{where}: metadata must be an object, got {lm!r:.60}")

        def bad(field: str, want: str, where: str = where, lm: dict = lm) -> TraceFormatError:
            got = f"{lm[field]!r:.60}" if field in lm else "nothing (the field is missing)"
            return TraceFormatError(f"{where}: {field!r} must be {want}, got {got}")

        for field in ("name", "kind"):
            if not isinstance(lm.get(field), str) or not lm[field]:
                raise bad(field, "a non-empty string")
        where = f"{path}: layer {i} ({lm['name']!r})"
        sizes = lm.get("state_sizes")
        if not isinstance(sizes, list) or not sizes or not all(_is_int(s) and s > 0 for s in sizes):
            raise bad("state_sizes", "a list of positive integers", where)
        names = lm.get("state_names")
        if not _str_list(names) or len(names) != len(sizes) or len(set(names)) != len(names):
            raise bad(
                "state_names",
                f"a list of {len(sizes)} distinct strings (one per state size)",
                where,
            )
        if not _str_list(lm.get("params")):
            raise bad("params", "a list of parameter names", where)
        jac = lm.get("jacobians", [])
        if not _str_list(jac) or not set(jac) <= set(STORED_WRT):
            raise bad("jacobians", f"a list drawn from {list(STORED_WRT)}", where)
        # has_lengths is written since the first format; has_grads came later (default false)
        if not isinstance(lm.get("has_lengths"), bool):
            raise bad("has_lengths", "true or false", where)
        if not isinstance(lm.get("has_grads", False), bool):
            raise bad("has_grads", "true or false", where)
        if not isinstance(lm.get("meta", {}), dict):
            raise bad("meta", "an object", where)
        dtypes = lm.get("dtypes", {})
        members = {"states", "inputs", "grads"}
        members |= {f"param/{p}" for p in lm["params"]} | {f"jac/{w}" for w in jac}
        if (
            not isinstance(dtypes, dict)
            or not set(dtypes) <= members
            or not all(v in WIDENED for v in dtypes.values())
        ):
            raise bad("dtypes", f"an object from member names to one of {sorted(WIDENED)}", where)
        out.append(
            {
                **lm,
                "jacobians": list(jac),
                "has_grads": lm.get("has_grads", False),
                "meta": dict(lm.get("meta", {})),
                "dtypes": dict(dtypes),
            }
        )
    return out


def _float(npz: NpzArchive, name: str, where: str) -> tuple[int, ...]:
    head = npz.header(name)
    if head.dtype.newbyteorder("=") not in _REAL:
        raise TraceFormatError(
            f"{where}: {name} holds {head.dtype} numbers; gradscope stores real floating point "
            "(float16, float32 or float64)"
        )
    return head.shape


def _param(npz: NpzArchive, name: str, where: str, kind: str) -> None:
    """A parameter's dtype: a number type torch has (a built-in cell's: real floating)."""
    head = npz.header(name)
    dtype = head.dtype.newbyteorder("=")
    if kind in _GATES and dtype not in _REAL:
        raise TraceFormatError(
            f"{where}: {name} holds {head.dtype} numbers; the weights of a {kind} cell are real "
            "floating point"
        )
    if dtype not in _PARAM:
        raise TraceFormatError(
            f"{where}: {name} holds {head.dtype} numbers; a parameter is floating point, "
            "integer, boolean or complex (of the sizes torch has)"
        )


def plan_layer(npz: NpzArchive, i: int, lm: dict[str, Any]) -> list[str]:
    """Check layer ``i``'s array headers against its metadata; the member names to read.

    Raises:
        TraceFormatError: a missing array, a wrong dtype, or a shape that disagrees with
            ``state_sizes`` or the other arrays.
    """
    where = f"{npz.path}: layer {i} ({lm['name']!r})"
    key = f"l{i}"
    D = sum(lm["state_sizes"])
    states = _float(npz, f"{key}/states", where)
    if len(states) != 3 or states[2] != D:
        raise TraceFormatError(
            f"{where}: states have shape {states}; expected (T+1, B, {D}) with D = "
            f"sum(state_sizes {lm['state_sizes']})"
        )
    if states[0] < 2 or states[1] < 1:
        raise TraceFormatError(
            f"{where}: states have shape {states}, so T = {states[0] - 1} steps of B = "
            f"{states[1]} sequences; a trace needs at least one step (T >= 1) of one sequence "
            "(B >= 1): record a non-empty batch"
        )
    T, B = states[0] - 1, states[1]
    inputs = _float(npz, f"{key}/inputs", where)
    if len(inputs) != 3 or inputs[:2] != (T, B):
        raise TraceFormatError(
            f"{where}: inputs have shape {inputs}; expected ({T}, {B}, I) for states {states}"
        )
    I = inputs[2]
    names = [f"{key}/states", f"{key}/inputs"]
    if lm["has_lengths"]:
        head = npz.header(f"{key}/lengths")
        if head.dtype.kind not in "iu" or head.shape != (B,):
            raise TraceFormatError(
                f"{where}: lengths are {head.dtype} {head.shape}; expected {B} integers"
            )
        names.append(f"{key}/lengths")
    if lm["has_grads"]:
        if _float(npz, f"{key}/grads", where) != states:
            raise TraceFormatError(f"{where}: loss gradients must have the states' shape {states}")
        names.append(f"{key}/grads")
    for wrt in lm["jacobians"]:
        want = (T, B, D, D if wrt == "state" else I)
        if _float(npz, f"{key}/jac/{wrt}", where) != want:
            raise TraceFormatError(f"{where}: stored {wrt} Jacobians must have shape {want}")
        names.append(f"{key}/jac/{wrt}")
    for p in lm["params"]:
        _param(npz, f"{key}/param/{p}", where, lm["kind"])
        names.append(f"{key}/param/{p}")
    if lm["kind"] in _GATES:
        shapes = {p: npz.header(f"{key}/param/{p}").shape for p in lm["params"]}
        _builtin_shapes(where, lm["kind"], shapes, I, key)
    return names


def _builtin_shapes(
    where: str, kind: str, shapes: dict[str, tuple[int, ...]], I: int, key: str
) -> None:
    """PyTorch's weight shapes for a built-in cell (a bias that broadcasts is still wrong).

    ``weight_hh`` is ``(G·H, P)`` (``G`` gates, ``P = H`` unless an LSTM projects), so
    ``weight_ih`` is ``(G·H, I)``, each bias ``(G·H,)`` and an LSTM's ``weight_hr``
    ``(P, H)``.
    """
    G = _GATES[kind]
    hh = shapes.get("weight_hh")
    if hh is None or len(hh) != 2 or hh[0] == 0 or hh[0] % G:
        raise TraceFormatError(
            f"{where}: {key}/param/weight_hh has shape {hh}; a {kind} cell needs weight_hh of "
            f"shape ({G}·H, H), {G} gate(s) of H units"
        )
    H, P = hh[0] // G, hh[1]
    want = {"weight_ih": (G * H, I), "bias_ih": (G * H,), "bias_hh": (G * H,)}
    if kind == "lstm" and ("weight_hr" in shapes or P != H):
        want["weight_hr"] = (P, H)  # proj_size: h has P numbers
    elif P != H:
        raise TraceFormatError(
            f"{where}: {key}/param/weight_hh has shape {hh}; a {kind} cell needs weight_hh of "
            f"shape ({G}·H, H) = ({G * H}, {H})"
        )
    if "weight_ih" not in shapes:
        raise TraceFormatError(f"{where}: no {key}/param/weight_ih; a {kind} cell needs one")
    if "weight_hr" in want and "weight_hr" not in shapes:
        raise TraceFormatError(
            f"{where}: {key}/param/weight_hh has shape {hh}, (4·H, P) with P = {P} != H = {H}, "
            f"which needs a projection {key}/param/weight_hr of shape {(P, H)} (proj_size); "
            "the file has none"
        )
    for name, shape in want.items():
        if name in shapes and shapes[name] != shape:
            raise TraceFormatError(
                f"{where}: {key}/param/{name} has shape {shapes[name]}; a {kind} cell with "
                f"weight_hh {hh} and input size {I} needs {name} of shape {shape}"
            )


def check_lengths(where: str, lengths: np.ndarray, T: int) -> None:
    """Every sequence length in ``1..T``."""
    if lengths.size and (lengths.min() < 1 or lengths.max() > T):
        bad = lengths[(lengths < 1) | (lengths > T)]
        raise TraceFormatError(
            f"{where}: sequence lengths must be in 1..T = 1..{T}, got {bad[:8].tolist()}"
        )


def check_cell(where: str, lm: dict[str, Any], params: dict[str, torch.Tensor], I: int) -> None:
    """The cell kind is known (or its Jacobians are stored) and its weights fit the sizes.

    A built-in (closed-form) cell's weights are tried on one step from a zero state and a
    zero input in float64: they must give a state of ``sum(state_sizes)`` numbers and
    Jacobians of the right shapes. Custom cells (``custom:...``) need their module or stored
    Jacobians and are checked when analysed.
    """
    kind = lm["kind"]
    if kind.startswith("custom:"):
        return
    try:
        adapter = adapter_for_kind(kind)
    except GradscopeError:
        if "state" in lm["jacobians"]:
            return
        raise TraceFormatError(
            f"{where}: unknown cell kind {kind!r} and no stored Jacobians; gradscope knows "
            "rnn_tanh, rnn_relu, lstm, gru and the kinds registered with "
            "gradscope.register_cell (register yours before loading)"
        ) from None
    if not adapter.closed_form:
        return
    D = sum(lm["state_sizes"])
    p64 = {k: _to64(v) for k, v in params.items()}
    x = torch.zeros(1, I, dtype=torch.float64)
    s = torch.zeros(1, D, dtype=torch.float64)
    try:
        sizes = tuple(int(n) for n in adapter.state_sizes(p64))
        out = adapter.step(p64, x, s)
        js = adapter.jacobian_state(p64, x, s)
        ji = adapter.jacobian_input(p64, x, s)
    except (RuntimeError, KeyError, IndexError, ValueError, TypeError, GradscopeError) as exc:
        text = " ".join(str(exc).split())[:200]
        raise TraceFormatError(
            f"{where}: the {kind} weights {_shapes(params)} do not fit a cell with state "
            f"sizes {lm['state_sizes']} and input size {I} ({type(exc).__name__}: {text})"
        ) from None
    if (
        sizes != tuple(lm["state_sizes"])
        or tuple(out.shape) != (1, D)
        or tuple(js.shape) != (1, D, D)
        or tuple(ji.shape) != (1, D, I)
    ):
        raise TraceFormatError(
            f"{where}: the {kind} weights {_shapes(params)} describe a cell with state sizes "
            f"{list(sizes)}, but the trace has state sizes {lm['state_sizes']} and input "
            f"size {I}"
        )


def _to64(t: torch.Tensor) -> torch.Tensor:
    """Floats to float64, complex to complex128; integers and booleans as they are."""
    if t.is_complex():
        return t.to(torch.complex128)
    return t.to(torch.float64) if t.is_floating_point() else t


def _shapes(params: dict[str, torch.Tensor]) -> str:
    return "{" + ", ".join(f"{k}: {tuple(v.shape)}" for k, v in sorted(params.items())) + "}"


__all__ = ["WIDENED", "check_cell", "check_lengths", "check_meta", "check_version", "plan_layer"]
