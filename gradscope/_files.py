"""Atomic file writing shared by traces, Monitor histories and reports.

Every failure to write is an :class:`~gradscope.errors.OutputError` that reads
``cannot write PATH: reason`` and names the destination, never the temporary file.
:func:`check_writable` tells before any expensive work whether a destination can be
written at all.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from gradscope.errors import OutputError

#: Errors that mean "the destination cannot take this file", whichever file they name.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM}


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _make_parent(path: Path) -> None:
    """Create ``path``'s folder (and its parents), or say why it cannot be."""
    parent = path.parent
    for above in (parent, *parent.parents):
        if above.exists():
            if not above.is_dir():
                raise OutputError(f"cannot write {path}: {above} is a file, not a folder")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {_reason(exc)}") from None


def check_writable(path: Path) -> None:
    """Raise :class:`OutputError` unless a file can be written at ``path``.

    The folder is created if missing; a probe file is created there and removed.
    """
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder")
    _make_parent(path)
    try:
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".probe")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {_reason(exc)}") from None
    os.close(fd)
    os.unlink(probe)


def check_outputs(paths: Sequence[Path], overwrite: bool, hint: str) -> None:
    """Before any work: every output can be written, and none overwrites a file unasked.

    Args:
        paths: The files about to be written.
        overwrite: Existing files may be replaced.
        hint: What to do instead (e.g. ``"pass --force to overwrite it"``).

    Raises:
        OutputError: a path exists (and not ``overwrite``) or cannot be written.
    """
    for path in paths:
        if path.exists() and not path.is_dir() and not overwrite:
            raise OutputError(
                f"{path} exists and gradscope did not write it in this run; {hint}, or choose "
                "another path"
            )
        check_writable(path)


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` for a temporary file next to ``path``, then move it into place.

    The file appears complete or not at all, with the permissions of an ordinary new file
    (``0666`` less the umask; ``mkstemp`` alone would leave ``0600``). Returns ``path``.

    Raises:
        OutputError: the folder cannot be created or written, or the write failed (disk
            full, ...); ``path`` is left as it was.
    """
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder")
    _make_parent(path)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {_reason(exc)}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        ours = exc.filename in (None, str(tmp), str(path)) or exc.errno in _WRITE_ERRNOS
        if isinstance(exc, OutputError) or not ours:
            raise
        raise OutputError(f"cannot write {path}: {_reason(exc)}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
