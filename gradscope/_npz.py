"""The one on-disk container of gradscope: ``.npz`` arrays plus JSON metadata, no pickle.

Traces (:mod:`gradscope.traces`) and training histories (:mod:`gradscope.history`) are
written by :func:`write_npz` and read by :func:`read_npz`: the file appears complete or not
at all, holds numeric arrays only, and loading never executes code from the file.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from gradscope._files import atomic_write
from gradscope.errors import TraceFormatError


def to_numpy(t: Any) -> np.ndarray:
    """A detached CPU NumPy copy of a tensor."""
    return t.detach().cpu().numpy()


def write_npz(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write ``arrays`` plus ``meta`` (as UTF-8 JSON under ``__meta__``) atomically.

    The file appears complete or not at all: it is written to a temporary file in the same
    folder and renamed. No pickle: only numeric arrays are stored.
    """
    arrays = {**arrays, "__meta__": np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: savez would append ".npz" to a name
            np.savez_compressed(fh, **arrays)

    return atomic_write(path, write)


def read_npz(path: Path, what: str, writer: str) -> tuple[dict[str, np.ndarray], dict]:
    """Read a file written by :func:`write_npz`: its arrays and its JSON metadata (a dict).

    Never unpickles anything. ``what`` names the expected content and ``writer`` the method
    that writes it, for the error messages.

    Raises:
        TraceFormatError: the file is missing, not a readable ``.npz``, or has no readable
            metadata object.
    """
    if not path.is_file():
        raise TraceFormatError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise TraceFormatError(
            f"{path}: not a readable .npz file ({exc}); was it written by {writer}?"
        ) from None
    if "__meta__" not in data:
        raise TraceFormatError(f"{path}: an .npz file but not {what} (no __meta__)")
    try:
        meta = json.loads(data["__meta__"].tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TraceFormatError(f"{path}: corrupt metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise TraceFormatError(f"{path}: corrupt metadata (not a JSON object)")
    return data, meta
