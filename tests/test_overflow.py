"""States that overflow: every statistic rests on the finite prefix, and growth is exploding.

References: the per-step Jacobians of PyTorch's own cells (``nn.RNNCell`` / ``nn.LSTMCell``
with the recorded weights) by autograd in float64, at the recorded states of the finite
steps, multiplied back from the last finite state; and closed-form theory (``W = g·I``).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

import gradscope as gs
from gradscope.analysis.finite import finite_prefix
from gradscope.reporting.content.numbers import nonfinite_text


def _cell(module: torch.nn.Module) -> torch.nn.Module:
    """PyTorch's own one-step cell with the fused module's layer-0 weights, in float64."""
    if isinstance(module, torch.nn.LSTM):
        cell = torch.nn.LSTMCell(module.input_size, module.hidden_size)
    else:
        cell = torch.nn.RNNCell(module.input_size, module.hidden_size, nonlinearity="relu")
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(module, f"{name}_l0"))
    return cell.double().requires_grad_(False)  # derivatives by jacrev, w.r.t. the state


def _step(cell: torch.nn.Module, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    if isinstance(cell, torch.nn.LSTMCell):
        H = cell.hidden_size
        h, c = cell(x[None], (s[None, :H], s[None, H:]))
        return torch.cat([h, c], dim=-1)[0]
    return cell(x[None], s[None])[0]


def reference_log_norms(module: torch.nn.Module, layer) -> np.ndarray:
    """``(K, B)`` ln‖∂s_F/∂s_(F−k)‖₂ by autograd, F = last state before the first non-finite."""
    cell = _cell(module)
    states = layer.states.double()
    inputs = layer.inputs.double()
    finite = torch.isfinite(states).all(dim=-1)  # (T+1, B)
    first_bad = [int(torch.nonzero(~finite[:, b])[0]) for b in range(layer.B)]
    K = max(first_bad) - 1
    out = np.full((K + 1, layer.B), np.nan)
    for b, f in enumerate(first_bad):
        F = f - 1  # s_F is the last finite state; steps 0..F-1 produced s_1..s_F
        M, ell = torch.eye(layer.D, dtype=torch.float64), 0.0
        out[0, b] = 0.0
        for k in range(1, F + 1):
            t = F - k  # the step that produced s_(t+1) from s_t
            J = torch.func.jacrev(lambda s, x=inputs[t, b]: _step(cell, x, s))(states[t, b])
            M = M @ J
            sigma = float(torch.linalg.matrix_norm(M, ord=2))
            M, ell = M / sigma, ell + math.log(sigma)
            out[k, b] = ell
    return out


def reference_rate(ref: np.ndarray, lags: tuple[int, int]) -> float:
    median = np.nanmedian(ref, axis=1)
    k = np.arange(lags[0], lags[1] + 1)
    return float(stats.linregress(k, median[k]).slope)


def _relu_rnn() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    rnn = torch.nn.RNN(4, 32, nonlinearity="relu")
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(30)
    return rnn, torch.randn(100, 2, 4)


def _lstm() -> tuple[torch.nn.Module, torch.Tensor]:
    """A high-gain LSTM whose pre-activations overflow float32 from step 50 on."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(4, 32)
    with torch.no_grad():
        lstm.weight_hh_l0.mul_(12)
        lstm.weight_ih_l0.mul_(1e30)
    x = torch.randn(80, 3, 4) * 1e-30
    x[50:] *= 1e40  # W_ih x ~ 1e40: ±inf in float32, and inf − inf = NaN
    return lstm, x


@pytest.mark.parametrize("build", [_relu_rnn, _lstm], ids=["relu_rnn", "lstm"])
def test_overflow_is_exploding_with_the_finite_prefix_rate(build, one_thread) -> None:
    module, x = build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gs.ChaoticReplayWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit inside PyTorch's LSTM
        tr = gs.trace(module, x)
    layer = tr[0]
    assert not torch.isfinite(layer.states).all()  # the premise: it overflows
    diagnosis = gs.diagnose(tr, progress=False)
    d = diagnosis[0]
    assert d.regime == "exploding"
    st = d.decay["state"]
    ref = reference_rate(reference_log_norms(module, layer), st.fit_lags)
    assert ref > 0
    assert abs(st.rate - ref) <= 0.05 * abs(ref)
    first = d.nonfinite["first_step"]
    assert f"overflow to NaN/inf at step {first}" in d.verdict
    assert "rests on the finite prefix" in d.verdict
    assert d.nonfinite["finite_steps"] == first - 1
    assert "exploding (non-finite)" in str(diagnosis)
    assert "rests on the finite prefix" in nonfinite_text(d)  # what the report shows
    # the public gs.decay rests on the same steps
    assert gs.decay(layer, progress=False).regime == "exploding"


def test_no_finite_step_is_unknown_not_calm() -> None:
    module, x = _relu_rnn()
    x[0] = float("inf")
    d = gs.diagnose(gs.trace(module, x), progress=False)[0]
    assert d.regime == "unknown"
    assert "no action needed" not in " ".join(d.advice).lower()


def test_models_that_never_overflow_are_unchanged() -> None:
    """W_hh = 30·I, ReLU, 10 steps: no overflow; radius 30, λ1 = ln 30 (theory)."""
    torch.manual_seed(0)
    rnn = torch.nn.RNN(4, 16, nonlinearity="relu").double()
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(30 * torch.eye(16))
        rnn.bias_ih_l0.fill_(1.0)  # every unit active: J_t = 30·I exactly
    x = torch.rand(10, 2, 4, dtype=torch.float64)
    tr = gs.trace(rnn, x)
    assert finite_prefix(tr[0])[0] is tr[0]
    d = gs.diagnose(tr, progress=False)[0]
    assert d.regime == "exploding"
    assert d.eig["median"] == pytest.approx(30.0)
    assert d.lambda1 == pytest.approx(math.log(30.0), rel=1e-9)
    assert d.decay["state"].rate == pytest.approx(math.log(30.0), rel=1e-9)
    assert not d.nonfinite["count"] and "finite_steps" not in d.nonfinite


def test_nan_weights_are_flagged_never_calm(tmp_path) -> None:  # #14 case 3
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(2, 3)
    path = gs.trace(lstm, torch.randn(6, 2, 2)).save(tmp_path / "run.npz")
    tr = gs.load(path)
    tr[0].params["weight_hh"][0, 0] = float("nan")
    d = gs.diagnose(tr, progress=False)[0]
    assert d.regime == "unknown"
    assert d.nonfinite["params"] == ["weight_hh"]
    assert "weight_hh hold NaN/inf" in d.verdict
    text = str(gs.diagnose(tr, progress=False))
    assert "no action needed" not in text.lower() and "neutral" not in text
    assert "weight_hh hold NaN/inf" in nonfinite_text(d)
