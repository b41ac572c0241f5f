"""Atomic file writing shared by traces, Monitor histories and reports.

Every failure to write is an :class:`~gradscope.errors.OutputError` that reads
``cannot write PATH: reason`` and names the destination, never the temporary file.
:func:`check_writable` tells before any expensive work whether a destination can be
written at all; :func:`as_path` turns a path argument into a :class:`~pathlib.Path` or says
what was given instead.

What a write does to an existing file: a read-only file (no write permission bit, or one
this process may not write) is refused, never replaced behind the user's back; a writable
one is replaced atomically and keeps its permission bits; a symbolic link is followed (the
file it points to is replaced, the link stays). The temporary file next to the destination
has a name that fits the folder's name limit (255 bytes on common file systems) whatever
the length of the destination's name.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gradscope.errors import ArgumentError, ArgumentTypeError, OutputError

#: Errors that mean "the destination cannot take this file", whichever file they name.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM}


#: Longest file name (bytes) assumed where the file system does not say (``NAME_MAX``).
NAME_MAX = 255
#: Bytes a temporary name adds to its prefix: ``mkstemp``'s 8 random characters + suffix.
_TMP_EXTRA = 8 + len(".probe")


def as_path(path: Any, what: str, expected: str = "a file path") -> Path:
    """``path`` as a :class:`~pathlib.Path`, or an error naming what was given.

    Args:
        path: A ``str`` or ``os.PathLike``.
        what: Who asks, for the message (e.g. ``"gs.load"``).
        expected: What the path should name (e.g. ``"a .npz trace file"``).

    Raises:
        ArgumentTypeError: ``path`` is not a string or path-like object (bytes included).
        ArgumentError: ``path`` is the empty string.
    """
    if isinstance(path, str | os.PathLike):
        out = os.fspath(path)
        if isinstance(out, str):
            if not out:
                raise ArgumentError(f"{what}: needs the path of {expected}; got an empty string")
            return Path(out)
    shown = repr(path)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise ArgumentTypeError(
        f"{what}: needs the path of {expected} (a str or pathlib.Path); got "
        f"{type(path).__name__} {shown}"
    )


def _name_max(folder: Path) -> int:
    """The longest file name (bytes) in ``folder``, or its nearest existing parent."""
    for above in (folder, *folder.parents):
        try:
            return int(os.pathconf(above, "PC_NAME_MAX"))
        except FileNotFoundError:
            continue
        except (OSError, ValueError, AttributeError):
            break
    return NAME_MAX


def _tmp_prefix(path: Path) -> str:
    """``.NAME.`` for a temporary file beside ``path``, cut to fit the folder's name limit.

    The cut is made on whole characters of the UTF-8 encoded name.
    """
    room = _name_max(path.parent) - _TMP_EXTRA - 2  # the two dots
    name = path.name.encode("utf-8", "surrogateescape")[: max(room, 1)]
    return "." + name.decode("utf-8", "ignore") + "."


def _target(path: Path) -> Path:
    """The file a write to ``path`` replaces: a symbolic link's target, else ``path``."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _refuse_read_only(path: Path, target: Path) -> None:
    """Raise unless ``target`` is missing or may be written (read-only files are kept)."""
    try:
        mode = target.stat().st_mode
    except OSError:
        return  # missing (or unreadable: the write itself will say)
    if not stat.S_ISREG(mode):
        return
    if not mode & 0o222 or not os.access(target, os.W_OK):
        shown = f"{path} (a link to {target})" if target != path else f"{path}"
        raise OutputError(
            f"cannot write {shown}: the file exists and is read-only; make it writable "
            f"(chmod u+w {target}) or choose another path"
        )


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _make_parent(path: Path) -> None:
    """Create ``path``'s folder (and its parents), or say why it cannot be."""
    parent = path.parent
    try:
        for above in (parent, *parent.parents):
            if above.exists():
                if not above.is_dir():
                    raise OutputError(f"cannot write {path}: {above} is a file, not a folder")
                break
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"cannot write {path}: {_reason(exc)}") from None


def _destination(path: Path) -> Path:
    """The file a write to ``path`` replaces, once it is known that it may be written.

    Follows a symbolic link, refuses a folder, a read-only file and a name longer than the
    folder's limit, and creates the folder.

    Raises:
        OutputError: naming ``path`` and the reason.
    """
    size, limit = len(path.name.encode("utf-8", "surrogateescape")), _name_max(path.parent)
    if size > limit:
        raise OutputError(
            f"cannot write {path}: its file name is {size} bytes long, more than the {limit} "
            "bytes a file name may have in that folder; choose a shorter name"
        )
    try:
        if path.is_dir():
            raise OutputError(f"cannot write {path}: it is a folder")
        target = _target(path)
    except OSError as exc:  # e.g. a folder name too long for the file system
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"cannot write {path}: {_reason(exc)}") from None
    _refuse_read_only(path, target)
    _make_parent(target)
    return target


def check_writable(path: Path) -> None:
    """Raise :class:`OutputError` unless a file can be written at ``path``.

    The folder is created if missing; a probe file is created there and removed.
    """
    target = _destination(path)
    try:
        fd, probe = tempfile.mkstemp(dir=target.parent, prefix=_tmp_prefix(target), suffix=".probe")
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
        try:
            exists = path.exists() and not path.is_dir()
        except OSError:  # e.g. a name too long: check_writable says so
            exists = False
        if exists and not overwrite:
            raise OutputError(
                f"{path} exists and gradscope did not write it in this run; {hint}, or choose "
                "another path"
            )
        check_writable(path)


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` for a temporary file next to ``path``, then move it into place.

    The file appears complete or not at all. A new file gets the permissions of an ordinary
    new file (``0666`` less the umask; ``mkstemp`` alone would leave ``0600``); a replaced
    file keeps its own. A symbolic link is followed. Returns ``path``.

    Raises:
        OutputError: the folder cannot be created or written, the file exists and is
            read-only, or the write failed (disk full, ...); ``path`` is left as it was.
    """
    target = _destination(path)
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except OSError:
        mode = 0o666 & ~_umask()
    try:
        fd, tmp_name = tempfile.mkstemp(
            dir=target.parent, prefix=_tmp_prefix(target), suffix=".tmp"
        )
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {_reason(exc)}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        ours = exc.filename in (None, str(tmp), str(path), str(target))
        ours = ours or exc.errno in _WRITE_ERRNOS
        if isinstance(exc, OutputError) or not ours:
            raise
        raise OutputError(f"cannot write {path}: {_reason(exc)}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
