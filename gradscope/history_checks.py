"""What :meth:`gradscope.History.load` checks before a saved history becomes a History.

As for traces (:mod:`gradscope.trace_checks`), nothing the file claims is trusted before it
is checked, in three passes: the JSON metadata (the summary ``keys``: unique strings among
which ``T`` and ``B``; the ``layers``: unique strings; ``world_size``: a positive integer;
``meta``: an object; ``notes``: ``{message: {"first_step": int, "count": int >= 1}}``),
then the ``.npy`` headers of the members the metadata names (``steps`` ``(n,)`` integers;
per layer ``i``: ``l{i}/grad_norms`` ``(n, W, Tmax+1)`` and ``l{i}/summaries`` ``(n, W, K)``
real floating point, ``l{i}/present`` ``(n,)`` booleans, with ``W`` the world size and ``K``
the number of keys), and only then the values (a present row's ``T`` is a whole number of
steps that its grad norms hold). Every failure is a :class:`TraceFormatError` that names
the field (and the layer).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gradscope._npz import NpzArchive
from gradscope.errors import TraceFormatError

#: How every message starts after the file's name (and layer).
_BAD = "incomplete or inconsistent history"


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _unique_strings(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) for s in v) and len(set(v)) == len(v)


def _note_ok(entry: Any) -> bool:
    """One note: ``{"first_step": int, "count": int >= 1}``."""
    return (
        isinstance(entry, dict)
        and set(entry) == {"first_step", "count"}
        and _is_int(entry["first_step"])
        and _is_int(entry["count"])
        and entry["count"] >= 1
    )


def check_history_meta(path: Path, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The history's metadata, every field of the right type (a normalised copy).

    Returns:
        ``{"keys": tuple, "layers": list, "world_size": int, "meta": dict, "notes": dict}``.

    Raises:
        TraceFormatError: naming the field.
    """

    def bad(field: str, want: str) -> TraceFormatError:
        got = f"{meta[field]!r:.60}" if field in meta else "nothing (the field is missing)"
        return TraceFormatError(f"{path}: {_BAD}: metadata {field!r} must be {want}, got {got}")

    keys = meta.get("keys")
    if not _unique_strings(keys) or not {"T", "B"} <= set(keys):
        raise bad("keys", "a list of distinct summary names, among them 'T' and 'B'")
    layers = meta.get("layers")
    if not _unique_strings(layers):
        raise bad("layers", "a list of distinct layer names")
    world = meta.get("world_size")
    if not _is_int(world) or world < 1:
        raise bad("world_size", "a positive integer (the number of ranks)")
    run_meta = meta.get("meta", {})
    if not isinstance(run_meta, dict):
        raise bad("meta", "an object")
    notes = meta.get("notes", {})
    if not isinstance(notes, dict) or not all(_note_ok(e) for e in notes.values()):
        raise bad(
            "notes",
            'an object {message: {"first_step": step, "count": n >= 1}}',
        )
    return {
        "keys": tuple(keys),
        "layers": list(layers),
        "world_size": world,
        "meta": dict(run_meta),
        "notes": {k: dict(v) for k, v in notes.items()},
    }


def plan_history(npz: NpzArchive, fields: dict[str, Any]) -> list[str]:
    """Check the arrays' headers against the metadata; the member names to read.

    Raises:
        TraceFormatError: a missing array, a wrong dtype, or a shape that disagrees with
            the number of steps, the world size or the number of keys.
    """
    head = npz.header("steps")
    if head.dtype.kind not in "iu" or len(head.shape) != 1:
        raise TraceFormatError(
            f"{npz.path}: {_BAD}: steps are {head.dtype} {head.shape}; expected one integer "
            "training step per sampled row"
        )
    n, W, K = head.shape[0], fields["world_size"], len(fields["keys"])
    names = ["steps"]
    for i, name in enumerate(fields["layers"]):
        where = f"{npz.path}: layer {i} ({name!r})"
        gn, sc, pr = (npz.header(f"l{i}/{m}") for m in ("grad_norms", "summaries", "present"))
        if gn.dtype.kind != "f" or len(gn.shape) != 3 or gn.shape[:2] != (n, W) or not gn.shape[2]:
            raise TraceFormatError(
                f"{where}: {_BAD}: grad_norms are {gn.dtype} {gn.shape}; expected floats of shape "
                f"({n}, {W}, Tmax+1): {n} sampled steps, world size {W}"
            )
        if sc.dtype.kind != "f" or sc.shape != (n, W, K):
            raise TraceFormatError(
                f"{where}: {_BAD}: summaries are {sc.dtype} {sc.shape}; expected floats of shape "
                f"({n}, {W}, {K}): {n} sampled steps, world size {W}, one column per key "
                f"({K} keys in the metadata)"
            )
        if pr.dtype.kind != "b" or pr.shape != (n,):
            raise TraceFormatError(
                f"{where}: {_BAD}: present is {pr.dtype} {pr.shape}; expected {n} booleans"
            )
        names += [f"l{i}/grad_norms", f"l{i}/summaries", f"l{i}/present"]
    return names


def row_widths(
    where: str,
    steps: np.ndarray,
    summaries: np.ndarray,
    present: np.ndarray,
    t_col: int,
    width: int,
) -> np.ndarray:
    """``T + 1`` of each present row (the grad norms it holds); 0 where absent.

    A row's ``T`` is the largest over ranks (ranks that did not report it are NaN).

    Raises:
        TraceFormatError: a present row with no ``T``, or one that is not a whole number in
            ``0..Tmax`` (the grad norms hold ``Tmax + 1`` columns).
    """
    t = summaries[:, :, t_col]
    out = np.zeros(len(steps), dtype=np.int64)
    for j in np.flatnonzero(present):
        row = t[j][~np.isnan(t[j])]
        if not row.size or not np.all((row >= 0) & (row < width) & (row == np.round(row))):
            raise TraceFormatError(
                f"{where}: {_BAD}: at step {int(steps[j])} the number of steps T is "
                f"{t[j].tolist()}; expected whole numbers in 0..{width - 1} (the grad norms "
                f"hold {width} columns)"
            )
        out[j] = int(row.max()) + 1
    return out
