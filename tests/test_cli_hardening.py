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
    assert code == 2 and "a folder" in err
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


# --------------------------------------------------------------------------- issue 28 (cli)
USER_MODELS = """
import torch
from torch import nn

SEEN = []                                  # the dtype and values each model was given


class Net(nn.Module):
    def __init__(self, batch_first=False):
        super().__init__()
        torch.manual_seed(0)
        self.lstm = nn.LSTM(4, 3, batch_first=batch_first)

    def forward(self, x):
        return self.lstm(x)[0]


class Ids(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 4)
        self.gru = nn.GRU(4, 3)

    def forward(self, ids):
        SEEN.append(ids.clone())
        return self.gru(self.emb(ids))[0]


class Picky(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(4, 3)

    def forward(self, x):
        raise ValueError("Picky wants 7 features")


def make():
    return Net()

def make_bf():
    return Net(batch_first=True)

def ids():
    return Ids()

def picky():
    return Picky()

def needs(hidden, layers=1):
    return Net()
"""


@pytest.fixture
def models(workdir: Path) -> Path:
    (workdir / "hmods.py").write_text(USER_MODELS)
    return workdir


def test_a_huge_input_is_refused_before_it_is_made(models, capsys) -> None:
    code, _, err = run(capsys, "profile", "hmods:make", "--input",
                       "random:100000000,100000,100000", "-o", "p.html")  # fmt: skip
    assert code == 2 and "internal error" not in err
    # 1e18 float32 numbers: 4e18 bytes = 4e18 / 2**60 EiB
    assert f"takes {4e18 / 2**60:.3g} EiB, over the input limit of 1 GiB" in err
    assert "--max-input-gb" in err
    # the limit is the user's: 1000*10*4 float32 = 160,000 B = 156 KiB > 0.0001 GiB = 105 KiB
    code, _, err = run(capsys, "profile", "hmods:make", "--input", "random:1000,10,4",
                       "-o", "p.html", "--max-input-gb", "0.0001")  # fmt: skip
    assert code == 2 and "takes 156 KiB, over the input limit of 105 KiB" in err
    code, _, err = run(capsys, "profile", "hmods:make", "--input", "random:5,2,4",
                       "-o", "p.html", "--max-input-gb", "-1")  # fmt: skip
    assert code == 2 and "--max-input-gb -1.0: give a positive number" in err


def test_a_huge_npy_file_is_refused_from_its_header(models, capsys) -> None:
    with open(models / "big.npy", "wb") as f:  # a header that promises 4 TB, and no data
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**4, 100)}
        )
    code, _, err = run(capsys, "profile", "hmods:make", "--input", "big.npy", "-o", "p.html")
    assert code == 2
    assert f"a 1000000x10000x100 tensor of float32 takes {4e12 / 2**40:.3g} TiB" in err


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
def test_integer_token_ids_reach_an_embedding_as_int64(models, capsys, dtype) -> None:
    ids = np.array([[1, 2], [3, 4], [9, 0], [5, 5]], dtype=dtype)  # (T=4, B=2)
    np.save(models / "ids.npy", ids)
    code, out, err = run(capsys, "profile", "hmods:ids", "--input", "ids.npy", "-o", "p.html")
    assert code == 0, err
    import hmods

    seen = hmods.SEEN[-1]
    assert seen.dtype == torch.int64 and seen.tolist() == ids.astype(np.int64).tolist()
    assert "read as T=4, B=2 by gru.l0" in out
    assert gs.load(models / "p.npz")["gru.l0"].states.shape == (5, 2, 3)


def test_integer_features_for_a_float_model_say_so(models, capsys) -> None:
    np.save(models / "feat.npy", np.ones((5, 2, 4), dtype=np.int64))
    code, _, err = run(capsys, "profile", "hmods:make", "--input", "feat.npy", "-o", "p.html")
    assert code == 2 and "internal error" not in err
    assert "the model from hmods:make failed on --input feat.npy (shape (5, 2, 4), int64)" in err
    assert "save the array as float32" in err


def test_complex_input_for_a_real_model_is_refused(models, capsys) -> None:
    np.save(models / "c.npy", np.ones((5, 2, 4), dtype=np.complex64))
    code, _, err = run(capsys, "profile", "hmods:make", "--input", "c.npy", "-o", "p.html")
    assert code == 2 and "internal error" not in err
    assert "holds complex numbers (complex64)" in err and "parameters are real" in err


def test_a_model_that_raises_on_its_input_is_the_users_error(models, capsys) -> None:
    code, _, err = run(capsys, "profile", "hmods:picky", "--input", "random:5,2,4", "-o", "p.html")
    assert code == 2, err  # was 1, an "internal error"
    assert "the model from hmods:picky failed on --input random:5,2,4 (shape (5, 2, 4), " in err
    assert "ValueError: Picky wants 7 features" in err and "internal error" not in err
    assert not (models / "p.html").exists()


def test_a_gradscope_failure_inside_the_forward_stays_internal(models, capsys, monkeypatch):
    from gradscope.recording.recorder import Recorder

    def broken(*args, **kwargs):
        raise ValueError("a bug in gradscope's hook")

    monkeypatch.setattr(Recorder, "_capture_fused", broken)
    code, _, err = run(capsys, "profile", "hmods:make", "--input", "random:5,2,4", "-o", "p.html")
    assert code == 1 and "internal error: ValueError: a bug in gradscope's hook" in err
    assert "the model from" not in err


def test_debug_keeps_the_internal_exit_code(models, capsys, monkeypatch) -> None:
    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "cmd_diagnose", broken)
    assert cli.main(["--debug", "diagnose", "x.npz"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: a bug" in err


@pytest.mark.parametrize(
    ("target", "needle"),
    [
        ("hmods:needs", "hmods:needs needs arguments (hidden), and TARGET is called with none"),
        ("hmods.py:make", "'hmods.py' is a file path; TARGET names the module the way Python "
         "imports it: run gradscope from the folder that holds the file and give 'hmods:make'"),
        ("./hmods:make", "'./hmods' is a file path"),
        ("os:getcwd", "os:getcwd gave a str, expected a torch.nn.Module"),
    ],
)  # fmt: skip
def test_bad_factories_say_what_to_give(models, capsys, target, needle) -> None:
    code, _, err = run(capsys, "profile", target, "--input", "random:5,2,4", "-o", "p.html")
    assert code == 2 and needle in err, err


@pytest.mark.parametrize("command", ["profile", "report"])
def test_a_pdf_needs_chromium_before_any_work(saved, workdir, capsys, monkeypatch, command):
    monkeypatch.setenv("GRADSCOPE_CHROMIUM", str(workdir / "no-such-chromium"))
    if command == "profile":  # the engine is checked before the target is imported
        argv = ["profile", "nosuchmodule:make", "--input", "random:4,2,3", "-o", "x.pdf"]
    else:  # ... and before a saved trace is analysed
        argv = ["report", str(saved), "-o", "x.pdf"]

        def analysed(*args, **kwargs):
            raise AssertionError("the trace was analysed before the engine was checked")

        monkeypatch.setattr(gs, "report", analysed)
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert f"GRADSCOPE_CHROMIUM='{workdir / 'no-such-chromium'}' is not an executable" in err
    assert "nosuchmodule" not in err and not (workdir / "x.pdf").exists()


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--steps", "-1"], "steps (--steps) must be at least 1, got -1"),
        (["--steps", "0"], "steps (--steps) must be at least 1, got 0"),
        (["--hidden", "0"], "hidden (--hidden) must be at least 1, got 0"),
        (["--batch", "0"], "batch (--batch) must be at least 1, got 0"),
        (["--seq-len", "1"], "seq_len (--seq-len) must be at least 2, got 1"),
        (["--hidden", "100000"], "40,000,000,000 numbers, over the demo's limit"),
        (["--seed", str(2**70)], "seed (--seed) must be an integer in [-2**63, 2**64)"),
        (["--out", "afile"], "cannot write into afile: it is a file, not a folder (--out)"),
        (["--out", "afile/demo"], "cannot write afile/demo/report.html: afile is a file"),
    ],
)
def test_demo_refuses_bad_settings_before_any_work(workdir, capsys, flags, needle) -> None:
    (workdir / "afile").write_text("mine")
    code, _, err = run(capsys, "demo", "--no-pdf", "--out", "demo", *flags)
    assert code == 2, err
    assert needle in err and "internal error" not in err
    assert not (workdir / "demo").exists() and (workdir / "afile").read_text() == "mine"


def test_saved_run_paths_that_are_not_files(workdir, capsys) -> None:
    code, _, err = run(capsys, "diagnose", "")
    assert code == 2 and "diagnose: an empty path" in err
    code, _, err = run(capsys, "report", "/dev/null", "-o", "x.html")
    assert code == 2 and "/dev/null: not a regular file" in err
