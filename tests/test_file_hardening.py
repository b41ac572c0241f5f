"""Writing files (``gradscope._files``): names at the length limit, read-only files, links.

Every writer (``Trace.save``, ``History.save``, ``gs.report``) goes through
:func:`gradscope._files.atomic_write`; the cases run against each of them. The references
are the file system's own facts: what is on disk afterwards, and its permission bits.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import gradscope as gs
from gradscope._files import as_path, atomic_write, check_outputs, check_writable
from gradscope.errors import ArgumentError, ArgumentTypeError, OutputError


@pytest.fixture(scope="module")
def trace() -> gs.Trace:
    torch.manual_seed(0)
    return gs.trace(torch.nn.GRU(3, 4), torch.randn(5, 2, 3))


def _writers(trace: gs.Trace) -> dict[str, tuple[str, Callable[[Path], Path]]]:
    """Name -> (suffix, write(path)) for every kind of file gradscope writes."""
    return {
        "trace": (".npz", trace.save),
        "history": (".npz", gs.History().save),
        "report": (".html", lambda p: gs.report(gs.Diagnosis([]), p)),
    }


WRITERS = ["trace", "history", "report"]


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("writer", WRITERS)
def test_a_250_character_name_is_written(trace, tmp_path: Path, writer: str) -> None:
    suffix, write = _writers(trace)[writer]
    # 250 characters, and 250 bytes of two-byte characters: the temporary name used to
    # be ".NAME.XXXXXXXX.tmp", 14 bytes over the limit of 255
    for name in ("a" * (250 - len(suffix)) + suffix, "é" * 125 + suffix):
        path = tmp_path / name
        assert write(path) == path
        assert path.is_file() and path.stat().st_size > 0
    assert _listing(tmp_path) == sorted(["a" * (250 - len(suffix)) + suffix, "é" * 125 + suffix])


def test_a_name_over_the_limit_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / ("n" * 252 + ".npz")  # 256 bytes
    with pytest.raises(OutputError, match=r"file name is 256 bytes long, more than the 255"):
        atomic_write(path, lambda tmp: tmp.write_bytes(b"x"))
    with pytest.raises(OutputError, match=r"cannot write .*nnnn\.npz"):
        check_outputs([path], False, "pass --force")
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("writer", WRITERS)
def test_a_read_only_file_is_not_replaced(trace, tmp_path: Path, writer: str) -> None:
    suffix, write = _writers(trace)[writer]
    path = tmp_path / f"kept{suffix}"
    path.write_bytes(b"the user's file")
    path.chmod(0o444)
    with pytest.raises(OutputError, match=r"kept.* exists and is read-only.*chmod u\+w"):
        write(path)
    assert path.read_bytes() == b"the user's file"
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert _listing(tmp_path) == [path.name]


def test_check_writable_refuses_a_read_only_file_before_any_work(tmp_path: Path) -> None:
    path = tmp_path / "r.html"
    path.write_text("x")
    path.chmod(0o400)
    with pytest.raises(OutputError, match="read-only"):
        check_writable(path)
    with pytest.raises(OutputError, match="read-only"):  # --force does not override it
        check_outputs([path], True, "pass --force")


def test_a_replaced_file_keeps_its_permissions(tmp_path: Path) -> None:
    path = tmp_path / "private.npz"
    path.write_bytes(b"old")
    path.chmod(0o600)
    atomic_write(path, lambda tmp: tmp.write_bytes(b"new"))
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # was 0o666 & ~umask: 0o644


def test_a_symbolic_link_is_followed(tmp_path: Path) -> None:
    target = tmp_path / "runs" / "today.html"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "latest.html"
    link.symlink_to(target)
    atomic_write(link, lambda tmp: tmp.write_text("new"))
    assert link.is_symlink() and target.read_text() == "new"
    target.chmod(0o444)  # a link to a read-only file is refused like the file
    with pytest.raises(OutputError, match=r"latest\.html \(a link to .*today\.html\).*read-only"):
        atomic_write(link, lambda tmp: tmp.write_text("newer"))
    assert target.read_text() == "new"


@pytest.mark.parametrize(
    ("given", "error", "match"),
    [
        (123, ArgumentTypeError, r"gs\.load: needs the path of .* got int 123"),
        (None, ArgumentTypeError, r"got NoneType None"),
        (b"run.npz", ArgumentTypeError, r"got bytes b'run\.npz'"),
        ("", ArgumentError, r"got an empty string"),
    ],
)
def test_a_path_argument_that_is_not_a_path(given, error, match) -> None:
    with pytest.raises(error, match=match):
        as_path(given, "gs.load", "a trace file")
    assert as_path(Path("a.npz"), "gs.load") == Path("a.npz")
