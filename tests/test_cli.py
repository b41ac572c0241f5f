"""The command line, driven end to end in a subprocess as a user would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import gradscope as gs

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, GRADSCOPE_PROGRESS="0", PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "gradscope", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture()
def user_models(tmp_path: Path) -> Path:
    """A user's module with model factories, in the working directory of the CLI."""
    (tmp_path / "usermodels.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    torch.manual_seed(0)
                    self.gru = nn.GRU(3, 6, num_layers=2)
                    self.head = nn.Linear(6, 1)

                def forward(self, x):
                    out, _ = self.gru(x)
                    return self.head(out)

            def make():
                return Net()

            model = Net()

            def broken():
                raise RuntimeError("cannot build the model today")

            not_a_model = 42
            """
        )
    )
    return tmp_path


def refuse(token: str) -> None:
    """``json.loads(..., parse_constant=refuse)``: strict JSON has no NaN or Infinity."""
    raise ValueError(f"not strict JSON: {token}")


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("gradscope:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_help_version_and_no_command(tmp_path: Path) -> None:
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for word in ("demo", "profile", "report", "diagnose", "examples:"):
        assert word in proc.stdout
    proc = run_cli("--version", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"gradscope {gs.__version__}"
    assert run_cli(cwd=tmp_path).returncode == 2


def test_profile_report_and_diagnose_end_to_end(user_models: Path) -> None:
    proc = run_cli(
        "profile", "usermodels:make", "--input", "random:30,4,3", "-o", "prof.html",
        cwd=user_models,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    html, trace_path = user_models / "prof.html", user_models / "prof.npz"
    assert html.is_file() and trace_path.is_file()
    assert "gru.l1" in proc.stdout  # the verdict table names every layer
    trace = gs.load(trace_path)
    assert trace.names == ["gru.l0", "gru.l1"]
    assert trace["gru.l0"].states.shape == (31, 4, 6)

    proc = run_cli("diagnose", "prof.npz", "--json", cwd=user_models)
    assert proc.returncode == 0, proc.stderr
    layers = json.loads(proc.stdout)["layers"]
    assert [layer["name"] for layer in layers] == ["gru.l0", "gru.l1"]
    assert all(layer["regime"] in ("vanishing", "exploding", "neutral") for layer in layers)

    proc = run_cli("report", "prof.npz", "prof.npz", "--names", "a", "b", "-o", "cmp.pdf",
                   cwd=user_models)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (user_models / "cmp.pdf").read_bytes()[:5] == b"%PDF-"


def test_profile_reads_tensor_files_safely(user_models: Path) -> None:
    x = torch.randn(4, 12, 3)  # batch first
    torch.save(x, user_models / "x.pt")
    np.save(user_models / "x.npy", x.transpose(0, 1).numpy())
    proc = run_cli("profile", "usermodels:model", "--input", "x.npy", "-o", "a.html", "-q",
                   cwd=user_models)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert gs.load(user_models / "a.npz")["gru.l0"].T == 12
    # A .pt file holding a pickled object is refused (weights_only=True): data, never code,
    # in one line that never advises weights_only=False.
    torch.save(
        {"x": x, "obj": object()}, user_models / "evil.pt", _use_new_zipfile_serialization=True
    )
    proc = run_cli("profile", "usermodels:model", "--input", "evil.pt", cwd=user_models)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "evil.pt" in line and "pickled" in line and "weights_only=False" not in line
    assert len(line) < 300


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["profile", "nosuchmodule:make", "--input", "random:5,2,3"], "cannot import module"),
        (["profile", "usermodels:nothing", "--input", "random:5,2,3"], "no attribute"),
        (["profile", "usermodels", "--input", "random:5,2,3"], "package.module:factory"),
        (["profile", "usermodels:broken", "--input", "random:5,2,3"], "cannot build the model"),
        (["profile", "usermodels:not_a_model", "--input", "random:5,2,3"], "neither"),
        (["profile", "usermodels:make", "--input", "random:5,2,7"], "shape"),
        (["profile", "usermodels:make", "--input", "random:5,2"], "random:T,B,I"),
        (["profile", "usermodels:make", "--input", "missing.npy"], "no such file"),
        (["report", "corrupt.npz", "-o", "x.html"], "corrupt.npz"),
        (["report", "missing.npz", "-o", "x.html"], "no such file"),
        (["diagnose", "corrupt.npz"], "corrupt.npz"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(
    user_models: Path, args: list[str], needle: str
) -> None:
    (user_models / "corrupt.npz").write_bytes(b"this is not a zip file")
    proc = run_cli(*args, cwd=user_models)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    line = one_error_line(proc)
    assert line.startswith("gradscope: error:")
    assert needle in line


def test_report_rejects_unknown_suffix(user_models: Path) -> None:
    proc = run_cli("profile", "usermodels:make", "--input", "random:5,2,3", "-o", "p.html", "-q",
                   cwd=user_models)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("report", "p.npz", "-o", "out.docx", cwd=user_models)
    assert proc.returncode == 2
    assert ".html" in one_error_line(proc)


def test_debug_shows_the_traceback_and_keeps_the_exit_code(user_models: Path) -> None:
    for argv in (["--debug", "diagnose", "missing.npz"], ["diagnose", "missing.npz", "--debug"]):
        proc = run_cli(*argv, cwd=user_models)
        assert proc.returncode == 2  # bad input, as without --debug (it was 1)
        assert "Traceback" in proc.stderr
        assert proc.stderr.rstrip().endswith("gradscope: error: missing.npz: no such file")


def test_demo_reduced_size(tmp_path: Path) -> None:
    proc = run_cli(
        "demo", "--out", "demo", "--steps", "6", "--seq-len", "12", "--hidden", "6",
        "--batch", "4", "-q",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "demo"
    html = (out / "report.html").read_text()
    for label in ("vanilla RNN", "LSTM", "GRU"):
        assert label in html
    assert (out / "report.pdf").read_bytes()[:5] == b"%PDF-"
    summary = json.loads((out / "summary.json").read_text(), parse_constant=refuse)
    settings = summary.pop("settings")
    assert settings["seed"] == 0 and settings["seq_len"] == 12 and settings["steps"] == 6
    assert set(summary) == {"vanilla RNN", "LSTM", "GRU"}
    assert all(np.isfinite(v["test_mse"]) for v in summary.values())
    for v in summary.values():  # the baseline predicts the test targets' mean
        assert np.isfinite(v["baseline_mse"]) and v["learned"] == (v["ratio"] <= 0.5)
