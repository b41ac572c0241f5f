"""diagnose / profile: regimes from theory, verdicts with numbers, JSON, non-finite handling."""

from __future__ import annotations

import io
import json
import math
import re

import native_xlstm
import numpy as np
import pytest
import torch
from theory import linear_trace, lstm_trace, saturated_lstm_params, tanh_rnn_trace
from torch import nn

from gradscope import _progress
from gradscope.analysis.diagnosis import Diagnosis, LayerDiagnosis, diagnose
from gradscope.analysis.lyapunov import lyapunov
from gradscope.analysis.profiling import Profile, profile
from gradscope.traces import Trace


def _orthogonal(d, seed=0):
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))[0]


def test_vanilla_small_gain_is_vanishing_with_numbers_and_advice():
    tr = tanh_rnn_trace(N=16, g=0.6, T=120, B=3)
    dg = diagnose(Trace([tr]), progress=False)
    d = dg["test"]
    assert isinstance(d, LayerDiagnosis) and dg[0] is d
    assert d.regime == "vanishing" and d.kind == "rnn_tanh"
    assert (d.T, d.B, d.D) == (120, 3, 16)
    assert set(d.decay) == {"state", "input"}
    # every claim carries its number: the rate, CI, half-life and horizon appear verbatim
    st = d.decay["state"]
    assert f"{st.rate:+.4f}" in d.verdict and f"{st.rate_ci[0]:+.4f}" in d.verdict
    assert "λ1 =" in d.verdict and f"{d.lyapunov.exponents[0]:+.4f}" in d.verdict
    assert any("orthogonal" in a for a in d.advice)
    assert any("LSTM" in a or "GRU" in a for a in d.advice)
    assert d.lyapunov.k == 16 and d.spectrum_eig is not None and d.spectrum_svd is not None
    assert d.nonfinite == {"count": 0, "first_step": None, "first_batch": None}


def test_exploding_linear_cell_gets_clipping_advice():
    tr = linear_trace(1.1 * _orthogonal(5), T=200, B=2)
    d = diagnose(tr, progress=False)[0]
    assert d.regime == "exploding"
    assert d.decay["state"].rate == pytest.approx(math.log(1.1), abs=1e-12)
    assert any("clip_grad_norm_" in a for a in d.advice)


def test_lstm_with_saturated_gates_is_neutral():
    params = saturated_lstm_params(H=6, I=3)
    tr = lstm_trace(params, T=300, B=2)
    H = 6
    # c-to-c block of every step Jacobian is exactly the identity (f = σ(40) = 1.0 in float64,
    # i = σ(−40) ≈ 4e-18 makes ∂c/∂h ≈ 1e-17): an independent check on the trace itself.
    J = tr.jacobians(steps=[5, 100]).numpy()
    np.testing.assert_allclose(
        J[..., H:, H:], np.broadcast_to(np.eye(H), J[..., H:, H:].shape), atol=1e-15
    )
    np.testing.assert_allclose(J[..., H:, :H], 0.0, atol=1e-15)
    d = diagnose(tr, progress=False)[0]
    assert d.state_names == ("h", "c") and d.D == 2 * H
    assert d.regime == "neutral"
    # J = [[A, B], [0, I]] with ρ(A) < 1: ‖P_k‖ tends to a constant ⇒ rate → 0, far inside
    # the neutral band ln 10 / 300 = 0.0077.
    assert abs(d.decay["state"].rate) < 1e-3
    # the identity block gives H exponents equal to 0 (exactly: diag R = 1 on that block
    # once Q has aligned), so λ1 = 0 up to the O(1/T) alignment transient.
    assert abs(d.lambda1) < 1e-2
    # the h-only block decays: the joint (h, c) state is what keeps the gradient alive
    A = tr.jacobians().numpy()[:, 0, :H, :H]
    hh = np.eye(H)
    for t in range(299, 199, -1):
        hh = hh @ A[t]
    assert np.log(np.linalg.norm(hh, 2)) < -5


def test_nonfinite_states_are_reported_not_crashed_on():
    tr = tanh_rnn_trace(N=8, g=1.2, T=60, B=3)
    tr.states[25:, 1] = float("nan")
    d = diagnose(tr, progress=False)[0]
    assert d.nonfinite["count"] == (61 - 25)
    assert d.nonfinite["first_step"] == 25 and d.nonfinite["first_batch"] == 1
    assert "first at step 25 of sequence 1" in d.verdict
    assert any("step 25" in a for a in d.advice)
    assert np.isfinite(d.lyapunov.exponents).all()
    assert np.isfinite(d.decay["state"].rate)
    assert "(non-finite)" in str(Diagnosis([d]))
    json.dumps(d.to_dict(), allow_nan=False)


def test_lengths_are_respected():
    tr = tanh_rnn_trace(N=6, g=0.7, T=80, B=3)
    lengths = np.array([80, 50, 20])
    for b, n in enumerate(lengths):
        tr.states[n + 1 :, b] = float("nan")
        tr.inputs[n:, b] = float("nan")
    tr.lengths = lengths
    d = diagnose(tr, progress=False)[0]
    assert d.nonfinite["count"] == 0  # padding is not "non-finite"
    assert d.eig["n"] == int(tr.mask[d.spectrum_eig.steps][:, d.spectrum_eig.batch].sum())
    st = d.decay["state"]
    assert np.isnan(st.log_norms[21:, 2]).all() and np.isfinite(st.log_norms[:21, 2]).all()
    ref = lyapunov(tr, k=6, discard=5)
    np.testing.assert_allclose(d.lyapunov.per_sequence, ref.per_sequence, atol=1e-12)


def test_table_and_json():
    trace = Trace([tanh_rnn_trace(N=5, g=0.5, T=40, B=2), linear_trace(1.2 * _orthogonal(4), T=40)])
    trace.layers[1].name = "lin"
    dg = diagnose(trace, progress=False)
    text = str(dg)
    header = text.splitlines()[0]
    for col in (
        "layer",
        "kind",
        "T×B",
        "radius med",
        "σmax med",
        "λ1",
        "rate/step",
        "half-life",
        "horizon",
        "regime",
    ):
        assert col in header
    rows = text.splitlines()[2:4]
    assert rows[0].startswith("test") and "40×2" in rows[0] and "vanishing" in rows[0]
    assert rows[1].startswith("lin") and "exploding" in rows[1]
    # fixed width: the regime column starts at the same offset in every row
    pos = header.index("regime")
    assert all(re.match(r"(vanishing|exploding|neutral)", r[pos:]) for r in rows)
    full = json.loads(json.dumps(dg.to_dict(), allow_nan=False))
    small = json.loads(json.dumps(dg.to_dict(arrays=False), allow_nan=False))
    assert full["layers"][0]["decay"]["state"]["regime"] == "vanishing"
    assert "spectrum_eig" not in small["layers"][0]
    assert small["layers"][1]["decay"]["state"]["half_life"] == "inf"
    with pytest.raises(KeyError, match="lin"):
        dg["nope"]


def test_short_trace_does_not_crash():
    d = diagnose(tanh_rnn_trace(N=3, g=0.5, T=2, B=1), progress=False)[0]
    assert d.regime == "neutral" and "could not be measured" in d.verdict


def test_profile_without_loss():
    torch.manual_seed(0)
    rnn = nn.RNN(3, 8, num_layers=2)
    x = torch.randn(30, 2, 3)
    prof = profile(rnn, x, analysis={"progress": False})
    assert isinstance(prof, Profile) and prof.loss is None
    assert prof.diagnosis.names == ["rnn.l0", "rnn.l1"]
    out, _ = prof.output
    torch.testing.assert_close(out, rnn(x)[0])
    assert "loss" not in prof.diagnosis[0].decay


def test_profile_with_loss_restores_grads_exactly():
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 5)
    params = list(lstm.parameters())
    params[0].grad = torch.full_like(params[0], 7.0)  # an existing grad: same object, same values
    keep = params[0].grad
    x = torch.randn(25, 2, 3, requires_grad=True)  # a leaf input: its .grad must stay None
    prof = profile(lstm, x, loss_fn=lambda out: out[0].pow(2).sum(), analysis={"progress": False})
    assert params[0].grad is keep and torch.all(keep == 7.0)
    assert all(p.grad is None for p in params[1:])
    assert x.grad is None
    d = prof.diagnosis[0]
    assert "loss" in d.decay and d.decay["loss"].of == "loss"
    with torch.no_grad():
        assert prof.loss == pytest.approx(float(lstm(x)[0].pow(2).sum()), rel=1e-6)
    assert "loss gradient" in d.verdict


def test_progress_switches(monkeypatch):
    monkeypatch.delenv("GRADSCOPE_PROGRESS", raising=False)
    assert _progress.enabled(True) and not _progress.enabled(False)
    monkeypatch.setenv("GRADSCOPE_PROGRESS", "0")
    assert not _progress.enabled(True)
    monkeypatch.setenv("GRADSCOPE_PROGRESS", "1")
    assert _progress.enabled("auto", work=1.0)
    monkeypatch.delenv("GRADSCOPE_PROGRESS")
    monkeypatch.setattr(_progress.sys, "stderr", io.StringIO())  # not a TTY
    assert not _progress.enabled("auto", work=1e12)
    with pytest.raises(ValueError, match="progress"):
        _progress.enabled("sometimes")


def test_progress_bar_writes_only_when_on(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(_progress.sys, "stderr", buf)
    monkeypatch.setattr(_progress, "_isatty", lambda: True)  # a terminal: a tqdm bar
    monkeypatch.delenv("GRADSCOPE_PROGRESS", raising=False)
    lyapunov(tanh_rnn_trace(N=4, g=1.0, T=50, B=1), progress=True)
    assert "lyapunov" in buf.getvalue()
    buf.seek(0)
    buf.truncate()
    monkeypatch.setenv("GRADSCOPE_PROGRESS", "0")
    lyapunov(tanh_rnn_trace(N=4, g=1.0, T=50, B=1), progress=True)
    assert buf.getvalue() == ""


def test_progress_off_a_terminal_is_occasional_plain_lines(monkeypatch):
    buf = io.StringIO()  # not a terminal: no bar redraws
    monkeypatch.setattr(_progress.sys, "stderr", buf)
    monkeypatch.delenv("GRADSCOPE_PROGRESS", raising=False)
    with _progress.progress_bar(5, "work", progress=True, unit="figure") as bar:
        for _ in range(5):
            bar.update()
    assert buf.getvalue() == ""  # shorter than LINE_EVERY: nothing at all
    monkeypatch.setattr(_progress, "LINE_EVERY", 0.0)
    with _progress.progress_bar(3, "work", progress=True, unit="figure") as bar:
        for _ in range(3):
            bar.update()
    lines = re.sub(r"\d+ s\b", "N s", buf.getvalue()).splitlines()  # times vary
    assert lines[:3] == [f"work: {i}/3 figures, N s" for i in (1, 2, 3)]
    assert lines[3] == "work: done, 3 figures in N s" and len(lines) == 4
    assert "\r" not in buf.getvalue() and "\x1b" not in buf.getvalue()


def test_compute_threads_limits_blas_and_restores(monkeypatch):
    import scipy.linalg  # noqa: F401  (loads SciPy's BLAS too)
    from threadpoolctl import threadpool_info

    def blas():
        return {
            i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"
        }

    monkeypatch.delenv("GRADSCOPE_THREADS", raising=False)
    before, torch_before = blas(), torch.get_num_threads()
    assert before, "NumPy loads a BLAS library that threadpoolctl can see"
    with _progress.compute_threads():
        assert set(blas().values()) == {1}
        assert torch.get_num_threads() == torch_before  # torch left as the user set it
    assert blas() == before
    with pytest.raises(RuntimeError, match="boom"), _progress.compute_threads(2):
        assert set(blas().values()) == {2} and torch.get_num_threads() == 2
        raise RuntimeError("boom")
    assert blas() == before and torch.get_num_threads() == torch_before


# --------------------------------------------------------------------------- degenerate input
@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_profile_of_a_diverged_model_reports_it(cls, tmp_path):
    """NaN weights: regime unknown with the reason, a report (regression: ValueError)."""
    torch.manual_seed(0)
    mod = cls(3, 5)
    with torch.no_grad():
        mod.weight_hh_l0.fill_(float("nan"))
    prof = profile(mod, torch.randn(8, 2, 3), analysis={"progress": False})
    d = prof.diagnosis[0]
    assert d.regime == "unknown" and "NaN/inf" in d.reason
    assert "No gate numbers" in d.verdict and "nan%" not in d.verdict
    # the advice names the weights, not the inputs, as the cause
    said = " ".join(d.advice)
    assert "weights weight_hh are NaN/inf" in said and "check the inputs" not in said
    assert prof.report(tmp_path / "r.html").stat().st_size > 0


def test_an_empty_batch_is_refused_not_a_calm_verdict():
    """B = 0: nothing recorded (regression: an IndexError, then "neutral, no action")."""
    from gradscope.errors import ShapeError
    from gradscope.recording import trace as record_trace

    layer = record_trace(nn.LSTM(3, 4), torch.randn(6, 0, 3))[0]
    with pytest.raises(ShapeError, match="B = 0 sequences, nothing to analyse"):
        diagnose(layer, progress=False)


def test_a_loss_of_nans_gives_an_unknown_loss_regime():
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 4)
    prof = profile(
        lstm,
        torch.randn(8, 2, 3),
        loss_fn=lambda out: out[0].sum() * float("nan"),
        analysis={"progress": False},
    )
    loss = prof.diagnosis[0].decay["loss"]
    assert loss.regime == "unknown" and np.isnan(loss.norms).all()
    assert "Every loss gradient" in prof.diagnosis[0].verdict


@pytest.mark.parametrize("how", ["inference_mode", "untouched"])
def test_a_loss_that_reaches_no_layer_is_said(how):
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 4)

    def loss_fn(out):
        if how == "inference_mode":
            with torch.inference_mode():
                return out[0].sum()
        return torch.ones((), requires_grad=True) * 2.0

    with pytest.warns(gs_warning(), match="no loss gradient reached lstm.l0"):
        prof = profile(lstm, torch.randn(8, 2, 3), loss_fn=loss_fn, analysis={"progress": False})
    d = prof.diagnosis[0]
    assert "loss" not in d.decay
    want = "does not require grad" if how == "inference_mode" else "does not depend"
    assert any(want in n for n in d.notes)


def gs_warning():
    from gradscope.errors import GradscopeWarning

    return GradscopeWarning


@pytest.mark.parametrize(
    ("kind", "key", "value", "match"),
    [
        ("rglru", "gate_scale", -8.0, "gate_scale.*finite number > 0"),
        ("mlstm", "num_heads", 0, "num_heads.*whole number >= 1"),
        ("mlstm", "num_heads", 3, "must divide"),
    ],
)
def test_hand_made_mixer_traces_with_impossible_configs_are_refused(kind, key, value, match):
    """A LayerTrace built by hand with a config no module has (regression: crashes inside)."""
    from gradscope.errors import ArgumentError
    from gradscope.layer_trace import LayerTrace

    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "rglru":
        cfg = transformers.RecurrentGemmaConfig(
            vocab_size=32,
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_key_value_heads=1,
            num_hidden_layers=1,
            attention_window_size=8,
            block_types=["recurrent"],
        )
        model = transformers.RecurrentGemmaModel(cfg).eval()
    else:
        cfg = transformers.xLSTMConfig(
            vocab_size=32, hidden_size=16, num_heads=2, num_blocks=1, qk_dim_factor=1.0
        )
        model = native_xlstm.modeling().xLSTMModel(cfg).eval()
    from gradscope.recording import trace as record_trace

    real = record_trace(model, torch.randint(0, 32, (1, 6)), use_cache=False)[0]
    assert real.kind == kind
    params = dict(real.params)
    params[key] = torch.tensor(value, dtype=params[key].dtype)
    fake = LayerTrace(
        real.name, kind, real.states, real.inputs, None, real.state_names, real.state_sizes, params
    )
    with pytest.raises(ArgumentError, match=match):
        diagnose(fake, progress=False)


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        (None, "got None; record one"),
        (5, "got int; record one"),
        ("run.npz", r"got the path 'run\.npz'; to analyse a saved trace: gs\.diagnose\(gs\.load"),
        ([torch.zeros(2)], "got list of Tensor"),
        ({"a": 1}, "got dict"),
    ],
)
def test_diagnose_names_what_it_was_given(given, shown):
    from gradscope.errors import ArgumentTypeError

    # None and 5 were raw TypeErrors ("'NoneType' object is not iterable")
    with pytest.raises(ArgumentTypeError, match=rf"needs a gradscope Trace.*{shown}"):
        diagnose(given, progress=False)
