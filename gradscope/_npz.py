"""The one on-disk container of gradscope: ``.npz`` arrays plus JSON metadata, no pickle.

Traces (:mod:`gradscope.traces`) and training histories (:mod:`gradscope.history`) are
written by :func:`write_npz` and read through :class:`NpzArchive`: the file appears complete
or not at all, holds numeric arrays only, and loading never executes code from the file.

Reading is checked before anything large is allocated: every member's ``.npy`` header
(shape, dtype) is read first and must agree with the member's size in the archive, members
the metadata does not name are never read, and the declared sizes together must fit in the
memory available. A hostile file therefore gives a :class:`TraceFormatError`, never a raw
``MemoryError`` or a multi-gigabyte allocation from a few megabytes of zeros.
"""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gradscope._files import atomic_write
from gradscope.errors import TraceFormatError

#: Largest ``__meta__`` member read (JSON text).
MAX_META_BYTES = 64 << 20
#: Largest ``.npy`` header read (NumPy's own default limit).
MAX_HEADER_BYTES = 10_000
#: What reading a member can raise on a corrupt file: zipfile raises RuntimeError for an
#: encrypted member and NotImplementedError for an unknown compression method.
_MEMBER_ERRORS = (
    ValueError,
    OSError,
    EOFError,
    RuntimeError,
    NotImplementedError,
    zipfile.BadZipFile,
    zlib.error,
)


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


def check_version(
    path: Path, meta: Mapping[str, Any], fmt: str, version: int, what: str = "trace"
) -> None:
    """The format name and a supported integer version (``what``: the file's kind, in words).

    Raises:
        TraceFormatError: another format, or a version that is not an integer in
            ``1..version`` (a newer one: "upgrade gradscope").
    """
    if meta.get("format") != fmt:
        raise TraceFormatError(f"{path}: format {meta.get('format')!r:.60} is not {fmt!r}")
    v = meta.get("version")
    whole = isinstance(v, int) and not isinstance(v, bool)
    if not whole or not 1 <= v <= version:
        newer = " (upgrade gradscope)" if whole and v > version else ""
        raise TraceFormatError(
            f"{path}: {what} format version {v!r:.40}; this gradscope reads versions "
            f"1..{version}{newer}"
        )


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _sniff(path: Path) -> str:
    """What a file that is not a zip archive looks like, for the error message."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512).lstrip().lower()
    except OSError:
        return ""
    if head.startswith((b"<!doctype html", b"<html")):
        return " (it is an HTML file: a report, not a trace)"
    if head.startswith(b"%pdf"):
        return " (it is a PDF file: a report, not a trace)"
    if head.startswith(b"\x93numpy"):
        return " (it is a single .npy array)"
    if head[:1] == b"\x80":
        return " (it is a Python pickle, which gradscope never loads)"
    return ""


class Header:
    """Shape and dtype a member declares, and the bytes its data takes."""

    __slots__ = ("dtype", "nbytes", "shape")

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.shape, self.dtype = shape, dtype
        self.nbytes = math.prod(shape) * dtype.itemsize


class NpzArchive:
    """A file written by :func:`write_npz`, opened for checked reading.

    ``meta`` is read on opening; :meth:`header` reads one member's ``.npy`` header (a few
    hundred bytes) and checks it against the member's size in the archive; :meth:`read`
    reads the members asked for, after checking that they fit in memory.

    Raises:
        TraceFormatError: a missing file, a directory, not a zip archive, no or corrupt
            metadata.
    """

    def __init__(self, path: Path, what: str, writer: str) -> None:
        self.path, self.what, self.writer = path, what, writer
        try:
            kind = "dir" if path.is_dir() else "file" if path.is_file() else path.exists()
        except OSError as exc:  # e.g. a name too long for the file system
            raise TraceFormatError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        if kind == "dir":
            raise TraceFormatError(f"{path}: a directory, not {what} file")
        if kind is False:
            raise TraceFormatError(f"{path}: no such file")
        if kind is True:
            raise TraceFormatError(
                f"{path}: not a regular file (a pipe or device?), not {what} file"
            )
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise TraceFormatError(
                f"{path}: not a readable .npz file ({exc}){_sniff(path)}; was it written by "
                f"{writer}?"
            ) from None
        self.members = {
            (i.filename[:-4] if i.filename.endswith(".npy") else i.filename): i
            for i in self._zip.infolist()
        }
        self._headers: dict[str, Header] = {}
        try:
            self.meta = self._read_meta()
        except BaseException:
            self._zip.close()
            raise

    def __enter__(self) -> NpzArchive:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the archive."""
        self._zip.close()

    def _fail(self, msg: str) -> TraceFormatError:
        return TraceFormatError(f"{self.path}: {msg}")

    def _read_meta(self) -> dict[str, Any]:
        if "__meta__" not in self.members:
            raise self._fail(f"an .npz file but not {self.what} (no __meta__)")
        head = self.header("__meta__")
        if head.dtype != np.uint8 or len(head.shape) != 1 or head.nbytes > MAX_META_BYTES:
            raise self._fail(
                f"corrupt metadata (__meta__ is {head.dtype} {head.shape}, expected "
                f"UTF-8 bytes up to {MAX_META_BYTES >> 20} MiB)"
            )
        raw = self.read(["__meta__"])["__meta__"]
        try:
            meta = json.loads(raw.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise self._fail(f"corrupt metadata ({exc})") from None
        if not isinstance(meta, dict):
            raise self._fail("corrupt metadata (not a JSON object)")
        return meta

    def header(self, name: str) -> Header:
        """The shape and dtype member ``name`` declares, checked against its stored size.

        Raises:
            TraceFormatError: no such member, an unreadable or pickled header, or a declared
                shape that does not match the bytes the member holds.
        """
        if name in self._headers:
            return self._headers[name]
        info = self.members.get(name)
        if info is None:
            raise self._fail(f"no array {name!r} in the file: an incomplete file, not {self.what}")
        try:
            with self._zip.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                reader = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = reader(fh, max_header_size=MAX_HEADER_BYTES)
                offset = fh.tell()
        except _MEMBER_ERRORS as exc:
            raise self._fail(f"array {name!r} is not a readable .npy member ({exc})") from None
        if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
            raise self._fail(f"array {name!r} holds {dtype} data, not numbers")
        if any(not isinstance(s, int) or s < 0 for s in shape):
            raise self._fail(f"array {name!r} declares an invalid shape {shape}")
        head = Header(tuple(int(s) for s in shape), dtype)
        if offset + head.nbytes != info.file_size:
            raise self._fail(
                f"array {name!r} declares shape {head.shape} of {dtype} ({head.nbytes:,} "
                f"bytes) but holds {max(info.file_size - offset, 0):,} bytes"
            )
        self._headers[name] = head
        return head

    def read(self, names: Iterable[str]) -> dict[str, np.ndarray]:
        """Read the members ``names`` (headers checked, total size checked against memory).

        Arrays come back in the machine's byte order (a big-endian file is converted).

        Raises:
            TraceFormatError: a member is missing, inconsistent or corrupt, or the arrays
                together would not fit in the memory available.
        """
        names = list(dict.fromkeys(names))
        total = sum(self.header(n).nbytes for n in names)
        free = available_memory()
        if free is not None and total > free:
            raise self._fail(
                f"its arrays declare {total / 2**30:.1f} GiB, more than the "
                f"{free / 2**30:.1f} GiB of memory available; not loaded"
            )
        out = {}
        for name in names:
            try:
                with self._zip.open(self.members[name]) as fh:
                    out[name] = np.lib.format.read_array(
                        fh, allow_pickle=False, max_header_size=MAX_HEADER_BYTES
                    )
            except MemoryError:
                raise self._fail(
                    f"array {name!r} ({self.header(name).nbytes:,} bytes) does not fit in memory"
                ) from None
            except _MEMBER_ERRORS as exc:
                raise self._fail(f"array {name!r} is corrupt ({exc})") from None
            if not out[name].dtype.isnative:  # big-endian data on a little-endian machine
                out[name] = out[name].astype(out[name].dtype.newbyteorder("="))
        return out


def read_npz(path: Path, what: str, writer: str) -> tuple[dict[str, np.ndarray], dict]:
    """Read every member of a file written by :func:`write_npz`, and its metadata (a dict).

    Never unpickles anything; headers and sizes are checked before reading (see
    :class:`NpzArchive`). ``what`` names the expected content and ``writer`` the method
    that writes it, for the error messages.

    Raises:
        TraceFormatError: the file is missing, not a readable ``.npz``, inconsistent, too
            large for memory, or has no readable metadata object.
    """
    with NpzArchive(path, what, writer) as npz:
        names = [n for n in npz.members if n != "__meta__"]
        return npz.read(names), npz.meta
