"""What the command line prints and returns: JSON, --fail-on, --loss, -q, wrapping, histories.

Driven in-process through ``cli.main([...])`` (as ``test_cli_hardening.py``) on a tiny RNN;
a report's figures are most of the time.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import gradscope as gs
from gradscope import _progress, cli
from gradscope._cli_output import FAIL_ON_EXIT, REGIMES, diagnosis_text

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only spin

USER_MODULE = """
import torch

def make():
    torch.manual_seed(0)
    return torch.nn.RNN(3, 4)

def loss(output, batch):
    out, _ = output                      # nn.RNN returns (output, h_n)
    return (out - batch.mean()).pow(2).mean()

def bad_loss(output, batch):
    raise ValueError("labels are missing")

def vector_loss(output, batch):
    return output[0].pow(2).mean(-1)           # one number per step and sequence

def constant_loss(output, batch):
    return torch.tensor(1.0)                   # does not depend on the output

def nan_loss(output, batch):
    return output[0].sum() * float("nan")

def make_bf():
    torch.manual_seed(0)
    return torch.nn.RNN(3, 4, batch_first=True)

not_a_function = 3
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Iterator[Path]:
    """A working directory holding the user's module; its modules forgotten afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("GRADSCOPE_PROGRESS", raising=False)
    (tmp_path / "tiny.py").write_text(textwrap.dedent(USER_MODULE))
    yield tmp_path
    sys.modules.pop("tiny", None)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return gs.trace(torch.nn.GRU(2, 3), torch.randn(12, 2, 2)).save(
        tmp_path_factory.mktemp("run") / "run.npz"
    )


def test_profile_json_loss_and_fail_on(workdir, capsys) -> None:
    fail_on = ["--fail-on", "vanishing,exploding", "--fail-on", "neutral,unknown"]
    code, out, err = run(capsys, "-q", "profile", "tiny:make", "--input", "random:16,2,3",
                         "--loss", "tiny:loss", "--json", "-o", "p.html", *fail_on)  # fmt: skip
    doc = json.loads(out)  # stdout is the JSON alone
    assert code == FAIL_ON_EXIT  # every regime was named: every layer fails
    assert [d["name"] for d in doc["layers"]] == ["rnn.l0"]
    assert sorted(doc["fail_on"]["regimes"]) == sorted(REGIMES)
    assert doc["fail_on"]["failing"] == [f"rnn.l0 ({doc['layers'][0]['regime']})"]
    assert "rnn.l0" in err and "exit code 3" in err
    # the outputs are written before the exit code says no
    assert Path(doc["report"]).is_file() and Path(doc["trace"]).is_file()
    x = torch.randn(16, 2, 3, generator=torch.Generator().manual_seed(0))
    sys.path.append(str(workdir))
    import tiny

    with torch.no_grad():
        assert doc["loss"] == pytest.approx(float(tiny.loss(tiny.make()(x), x)), rel=1e-5)
    for layer in doc["layers"]:
        assert layer["regime"] in REGIMES
        assert set(layer["decay"]) == {"state", "input", "loss"}  # --loss: loss gradients
        assert {"rate", "rate_ci", "half_life", "horizon"} <= set(layer["decay"]["state"])
        assert len(layer["lyapunov"]["exponents"]) >= 1
    assert gs.load(doc["trace"])["rnn.l0"].grads is not None


def test_fail_on_exit_code_follows_the_regimes(saved, workdir, capsys) -> None:
    code, out, _ = run(capsys, "diagnose", str(saved), "--json")
    regime = json.loads(out)["layers"][0]["regime"]
    others = ",".join(r for r in REGIMES if r != regime)
    code, out, err = run(capsys, "-q", "diagnose", str(saved), "--fail-on", others)
    assert code == 0 and "gru.l0" in out and "fail-on" not in err
    code, _, err = run(capsys, "-q", "diagnose", str(saved), "--fail-on", regime)
    assert code == FAIL_ON_EXIT and f"gru.l0 ({regime})" in err
    code, _, err = run(capsys, "diagnose", str(saved), "--fail-on", "vanshing")
    assert code == 2 and "'vanshing' is not a regime" in err
    for empty in ("", ","):  # they failed on nothing, silently
        code, _, err = run(capsys, "diagnose", str(saved), "--fail-on", empty)
        assert code == 2 and f"--fail-on {empty!r} names no regime" in err
    code, _, err = run(capsys, "diagnose", str(saved), "--arrays")  # it was ignored
    assert code == 2 and "pass --json too" in err


def test_loss_errors_name_the_users_function(workdir, capsys) -> None:
    base = ["profile", "tiny:make", "--input", "random:6,2,3", "-o", "p.html", "--loss"]
    code, _, err = run(capsys, *base, "tiny:bad_loss")
    assert code == 2 and "--loss tiny:bad_loss raised ValueError: labels are missing" in err
    code, _, err = run(capsys, *base, "tiny:not_a_function")
    assert code == 2 and "not a function" in err
    code, _, err = run(capsys, *base, "tiny")
    assert code == 2 and "package.module:function" in err
    code, _, err = run(capsys, *base, "tiny:vector_loss")  # it said profile(loss_fn=...)
    assert code == 2 and "--loss tiny:vector_loss returned a tensor of shape (6, 2)" in err
    assert "scalar tensor" in err
    code, _, err = run(capsys, *base, "tiny:constant_loss")  # it dropped the loss silently
    assert code == 2 and "--loss tiny:constant_loss returned a tensor that needs no" in err
    assert not (workdir / "p.html").exists()


def test_quiet_hides_progress_not_results(workdir, capsys) -> None:
    argv = ["profile", "tiny:make", "--input", "random:6,2,3", "-o", "p.html", "--force"]
    code, out, err = run(capsys, "-q", *argv)
    assert code == 0 and err == ""
    assert "rnn.l0 (rnn_tanh): " in out and "regime" in out and out.strip().endswith("p.npz")
    code, out2, err = run(capsys, *argv)
    assert code == 0 and "profiling RNN" in err and "wrote p.html" in err
    assert "\r" not in err and "\x1b" not in err  # not a terminal: no bar redraws
    assert out2.splitlines()[0] == out.splitlines()[0]


def test_verdicts_wrap_to_the_terminal(saved, workdir, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "50")
    code, out, _ = run(capsys, "-q", "diagnose", str(saved))
    assert code == 0
    _, _, verdicts = out.partition("\n\n")
    assert verdicts.startswith("gru.l0 (gru): ")
    assert max(len(line) for line in verdicts.splitlines()) <= 50
    assert len(verdicts.splitlines()) > 3
    diagnosis = gs.diagnose(gs.load(saved), progress=False)
    words = " ".join(diagnosis_text(diagnosis, cols=70).partition("\n\n")[2].split())
    assert words == " ".join(str(diagnosis).partition("\n\n")[2].split())  # nothing lost


@pytest.fixture(scope="module")
def history_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = torch.nn.GRU(2, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gs.Monitor(model, every=2, analyze=True) as monitor:
        for _ in range(4):
            out, _ = model(torch.randn(10, 3, 2))
            opt.zero_grad()
            out.pow(2).mean().backward()
            monitor.step()
            opt.step()
    return monitor.save(tmp_path_factory.mktemp("hist") / "hist.npz")


def test_diagnose_reads_a_saved_history(history_file, workdir, capsys) -> None:
    history = gs.History.load(history_file)
    regime = history.entry("gru.l0")["regime"]
    assert regime in REGIMES
    code, out, _ = run(capsys, "-q", "diagnose", str(history_file))
    assert code == 0, out
    assert out.startswith("Training history: 2 sampled steps (0 … 2); the numbers of step 2:")
    assert "gru.l0" in out and "regime over training" in out and out.strip() == str(history)
    code, out, _ = run(capsys, "-q", "diagnose", str(history_file), "--json")
    doc = json.loads(out)
    assert doc["step"] == 2 and doc["sampled_steps"] == 2
    assert doc["layers"][0]["name"] == "gru.l0" and doc["layers"][0]["regime"] == regime
    assert doc["layers"][0]["rate"] == pytest.approx(history.entry("gru.l0")["rate"])
    code, _, err = run(capsys, "-q", "diagnose", str(history_file), "--fail-on", regime)
    assert code == FAIL_ON_EXIT and "gru.l0" in err


def test_report_help_has_a_description(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "Write an HTML or PDF report" in out and "comparison" in out
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "3 a layer's regime is one\nnamed by --fail-on" in out  # the exit codes
    assert any(line.rstrip().endswith("\\") for line in out.splitlines())  # shell continuation


def test_report_progress_counts_every_figure(history_file, tmp_path, capsys, monkeypatch):
    from gradscope.reporting import build_document, runs_of

    monkeypatch.setattr(_progress, "LINE_EVERY", 0.0)  # a line per figure
    monkeypatch.delenv("GRADSCOPE_PROGRESS", raising=False)
    gs.report(history_file, tmp_path / "r.html", progress=True)
    lines = re.sub(r"\d+ s\b", "N s", capsys.readouterr().err).splitlines()  # times vary
    n = len(build_document(runs_of(history_file), "t", "now", {}).figures())
    assert n == 3  # a history alone: its heatmap, its decay-rate and its gates figure
    assert lines == [
        *(f"figures of r.html: {i}/3 figures, N s" for i in (1, 2, 3)),
        "figures of r.html: done, 3 figures in N s",
    ]
    gs.report(history_file, tmp_path / "q.html", progress=False)
    assert capsys.readouterr().err == ""


def refuse(token: str) -> None:
    """``json.loads(..., parse_constant=refuse)``: strict JSON has no NaN or Infinity."""
    raise ValueError(f"not strict JSON: {token}")


def test_json_is_strict_and_non_finite_numbers_are_strings(workdir, capsys) -> None:
    import numpy as np

    np.save(workdir / "nan.npy", np.full((5, 2, 3), np.nan, dtype=np.float32))
    code, out, err = run(capsys, "-q", "profile", "tiny:make", "--input", "nan.npy", "--loss",
                         "tiny:nan_loss", "--json", "-o", "p.html")  # fmt: skip
    assert code == 0, err  # it crashed in the gates' quantiles (all NaN), rc 1
    doc = json.loads(out, parse_constant=refuse)  # it wrote `"loss": NaN`
    assert doc["loss"] == "nan"
    layer = doc["layers"][0]
    assert layer["regime"] == "unknown" and layer["nonfinite"]["count"] == 10  # 5 steps x 2
    assert layer["eig"]["median"] == "nan" and layer["eig"]["n"] == 0  # no finite step
    assert doc["warnings"] == [
        "--input 'nan.npy' holds 30 NaN/inf values of 30; the states they reach are "
        "non-finite and the analysis reports them as such",
        "--loss tiny:nan_loss returned nan: its gradients are not finite, and the "
        "loss-gradient decay cannot be measured",
    ]
    assert f"gradscope: warning: {doc['warnings'][0]}" in err  # -q keeps warnings
    code, out, _ = run(capsys, "-q", "diagnose", "p.npz", "--json", "--arrays")
    assert code == 0 and json.loads(out, parse_constant=refuse)["layers"][0]["regime"] == (
        "unknown"
    )


def test_dumps_writes_strict_json() -> None:
    from gradscope._json import dumps

    class Result:
        def to_dict(self):  # a to_dict that leaves a float as it is
            return {"rate": float("-inf")}

    text = dumps({"a": float("nan"), "b": [float("inf"), 1.5], "c": Result(), "d": None})
    assert text == '{"a": "nan", "b": ["inf", 1.5], "c": {"rate": "-inf"}, "d": null}'


@pytest.mark.parametrize(
    ("target", "flags", "read", "warning"),
    [
        ("tiny:make", [], "read as T=10, B=2 by rnn.l0", None),
        ("tiny:make_bf", ["--batch-first"], "read as T=10, B=2 by rnn.l0", None),
        ("tiny:make_bf", [], "read as T=2, B=10 by rnn.l0",  # it read this silently
         "the model (RNN) is batch_first=True but the input was given as (T, B, I) "
         "(no --batch-first): it read T=2, B=10; if you meant T=10 steps of B=2 sequences, "
         "pass --batch-first "
         "(random: input is then made (B, T, I))"),
        ("tiny:make", ["--batch-first"], "read as T=2, B=10 by rnn.l0",
         "the model (RNN) is batch_first=False but the input was given as (B, T, I) "
         "(--batch-first): it read T=2, B=10; if you meant B=2 sequences of T=10 steps, "
         "drop --batch-first"),
    ],
)  # fmt: skip
def test_profile_says_how_the_model_read_the_input(workdir, capsys, target, flags, read, warning):
    code, out, err = run(capsys, "-q", "profile", target, "--input", "random:10,2,3",
                         "-o", "p.html", *flags)  # fmt: skip
    assert code == 0, err
    given, shape = ("(B, T, I)", (2, 10, 3)) if flags else ("(T, B, I)", (10, 2, 3))
    assert out.splitlines()[0] == f"input {shape} given as {given}; {read}"
    warnings = [line for line in err.splitlines() if line.startswith("gradscope: warning:")]
    assert warnings == ([] if warning is None else [f"gradscope: warning: {warning}"])
