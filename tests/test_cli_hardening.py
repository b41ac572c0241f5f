"""The command line and reports under hostile conditions (#14 cases 8-10, data loss, crashes).

Unwritable or existing outputs are refused before any work, a user's module that fails to
import or exits is the user's error, a closed pipe is a normal end, names with ``$`` render,
and a stray module in the working directory never replaces gradscope's dependencies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import gradscope as gs
from gradscope import cli
from gradscope.errors import OutputError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return gs.trace(torch.nn.GRU(2, 3), torch.randn(6, 2, 2)).save(
        tmp_path_factory.mktemp("run") / "run.npz"
    )


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Iterator[Path]:
    """An empty working directory; sys.path restored and its modules forgotten afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    for name, mod in list(sys.modules.items()):
        if str(getattr(mod, "__file__", "") or "").startswith(str(tmp_path)):
            del sys.modules[name]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["-q", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_unwritable_output_is_refused_before_the_work(saved, workdir, capsys) -> None:
    (workdir / "afile").write_text("")  # case 8
    # profile: the output is checked before the target is even imported
    code, _, err = run(capsys, "profile", "nosuchmodule:make", "--input", "random:4,2,3",
                       "-o", "afile/x.html")  # fmt: skip
    assert code == 2
    assert "cannot write afile/x.html: afile is a file, not a folder" in err
    assert "nosuchmodule" not in err and "internal error" not in err
    code, _, err = run(capsys, "report", str(saved), "-o", "/proc/x.html")
    assert code == 2 and "cannot write /proc/x.html" in err and ".tmp" not in err
    with pytest.raises(OutputError, match=r"cannot write afile/x\.html"):
        gs.report(saved, Path("afile/x.html"))


def test_existing_files_are_never_overwritten_without_force(saved, workdir, capsys) -> None:
    (workdir / "x.npz").write_text("someone else's data")  # data loss
    code, _, err = run(capsys, "profile", "nosuchmodule:make", "--input", "random:4,2,3",
                       "-o", "x.html")  # fmt: skip
    assert code == 2 and "x.npz exists" in err and "--force" in err
    assert (workdir / "x.npz").read_text() == "someone else's data"
    (workdir / "r.html").write_text("mine")
    code, _, err = run(capsys, "report", str(saved), "-o", "r.html")
    assert code == 2 and "--force" in err and (workdir / "r.html").read_text() == "mine"
    code, _, err = run(capsys, "report", str(saved), "-o", "r.html", "--force")
    assert code == 0, err
    assert "<html" in (workdir / "r.html").read_text().lower()


def test_trace_path_is_printed_as_written(workdir, capsys) -> None:
    (workdir / "tinymodels.py").write_text(
        "import torch\ndef make():\n    torch.manual_seed(0)\n    return torch.nn.GRU(3, 4)\n"
    )
    code, out, err = run(capsys, "profile", "tinymodels:make", "--input", "random:5,2,3",
                         "-o", "p.html", "--trace", "t.json")  # fmt: skip
    assert code == 0, err
    assert out.split()[-1] == "t.json.npz" and (workdir / "t.json.npz").is_file()


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("raise ImportError('libfoo.so: cannot open shared object file')",
         "importing 'usermod' failed: ImportError: libfoo.so"),
        ("import no_such_dependency_xyz", "importing 'usermod' failed: ModuleNotFoundError"),
        ("import sys\nsys.exit(0)", "called sys.exit(0)"),
        ("import sys\ndef make():\n    sys.exit(3)", "usermod:make() called sys.exit(3)"),
    ],
)  # fmt: skip
def test_a_failing_user_module_is_the_users_error(workdir, capsys, source, needle) -> None:
    (workdir / "usermod.py").write_text(source + "\n")  # case 9, sys.exit
    code, out, err = run(capsys, "profile", "usermod:make", "--input", "random:4,2,3")
    assert code == 2, (out, err)
    assert needle in err and "internal error" not in err


def test_not_a_trace_says_what_it_is(workdir, capsys) -> None:
    (workdir / "r.html").write_text("<!DOCTYPE html><html><body>report</body></html>")
    (workdir / "folder.npz").mkdir()
    code, _, err = run(capsys, "diagnose", "r.html")
    assert code == 2 and "an HTML file" in err and "pickled" not in err
    code, _, err = run(capsys, "diagnose", "folder.npz")
    assert code == 2 and "a directory" in err
    code, _, err = run(capsys, "report", "folder.npz", "-o", "x.html")
    assert code == 2 and "a folder" in err


def test_corrupt_history_gives_the_real_reason(workdir, capsys) -> None:
    meta = {"format": "gradscope.history", "version": 1, "layers": ["a"]}  # no "keys"
    np.savez(workdir / "h.npz", __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    code, _, err = run(capsys, "report", "h.npz", "-o", "h.html")
    assert code == 2 and "inconsistent history" in err and "not a gradscope trace" not in err


def test_dollar_signs_in_names_render(tmp_path) -> None:
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.add_module("a$\\oops$b", torch.nn.GRU(2, 3))

        def forward(self, x):
            return getattr(self, "a$\\oops$b")(x)

    torch.manual_seed(0)
    prof = gs.profile(Net(), torch.randn(5, 2, 2))
    gs.report(prof, tmp_path / "one.pdf")
    gs.report({"run $\\x$": prof, "b$^$": prof}, tmp_path / "cmp.html")
    assert (tmp_path / "one.pdf").stat().st_size and (tmp_path / "cmp.html").stat().st_size


def _cli(*args: str, cwd: Path, **kw) -> subprocess.Popen:
    env = dict(os.environ, GRADSCOPE_PROGRESS="0", PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "gradscope", *args], cwd=cwd, env=env, **kw)


def test_closed_pipe_is_a_normal_end(saved, tmp_path) -> None:  # case 10
    proc = _cli("diagnose", "--json", str(saved), cwd=tmp_path, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdout.readline()  # like `| head -1`: read a line, then leave
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=600) in (0, 141)
    assert "internal error" not in err and "Traceback" not in err and "Exception" not in err


def test_stray_modules_in_the_working_directory_never_run(tmp_path) -> None:
    (tmp_path / "seaborn.py").write_text("open('SHADOWED', 'w').close()\nraise SystemExit(7)\n")
    (tmp_path / "tinymodels.py").write_text(
        textwrap.dedent(
            """
            import torch
            def make():
                torch.manual_seed(0)
                return torch.nn.GRU(3, 4)
            """
        )
    )
    proc = _cli("profile", "tinymodels:make", "--input", "random:5,2,3", "-o", "p.html",
                "-q", cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()
    assert not (tmp_path / "SHADOWED").exists()
    assert (tmp_path / "p.html").is_file()


def test_compiled_and_parametrised_modules_keep_the_users_names() -> None:
    from torch.nn.utils import parametrize

    class Compiled(torch.nn.Module):
        """What torch.compile returns, as far as names go: the model under ``_orig_mod``."""

        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self._orig_mod = model

        def forward(self, x):
            return self._orig_mod(x)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = torch.nn.LSTM(2, 3)

        def forward(self, x):
            return self.enc(x)[0]

    class Same(torch.nn.Module):
        def forward(self, w):
            return w

    torch.manual_seed(0)
    x = torch.randn(4, 2, 2)
    assert gs.trace(Compiled(Net()), x).names == ["enc.l0"]
    assert gs.trace(Compiled(torch.nn.GRU(2, 3)), x).names == ["gru.l0"]
    rnn = torch.nn.RNN(2, 3)
    parametrize.register_parametrization(rnn, "weight_hh_l0", Same())
    assert gs.trace(rnn, x).names == ["rnn.l0"]
