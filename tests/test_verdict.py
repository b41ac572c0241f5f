"""The verdict's words: the grade over T against closed forms, advice in the family's own
parameters, and where the loss's credit enters a layer against the loss's own derivative."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from theory import linear_trace

import gradscope as gs
from gradscope.analysis.credit import direct_cotangents, loss_injection
from gradscope.analysis.results import Diagnosis
from gradscope.analysis.severity import fmt_factor, grade


def _orthogonal(d, seed=0):
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))[0]


# --------------------------------------------------------------------------- severity
@pytest.mark.parametrize(
    "rate, regime, expected",
    [
        (-0.025, "vanishing", "mild"),  # e^-2.5 = 0.082: within a factor 100
        (-0.1, "vanishing", "strong"),  # e^-10 = 4.5e-5
        (math.log(0.6), "vanishing", "severe"),  # 0.6^100 = 6.5e-23
        (0.03, "exploding", "mild"),  # e^3 = 20
        (0.1, "exploding", "strong"),  # e^10 = 2.2e4
    ],
)
def test_the_grade_is_that_of_the_closed_form_factor_over_T(rate, regime, expected):
    # a·Q with Q orthogonal: every product has norm a^k exactly, so the rate is ln a and the
    # factor over T = 100 steps is a^100 (closed form, not the fit)
    T, a = 100, math.exp(rate)
    d = gs.diagnose(linear_trace(a * _orthogonal(5), T=T, B=2), progress=False)[0]
    factor = a**T
    assert d.regime == regime and d.severity == expected
    assert grade(regime, rate, T) == expected
    shown = fmt_factor(math.log10(factor))
    assert float(shown) == pytest.approx(factor, rel=0.05)
    # the verdict opens with the grade and the factor (what the report's headline shows)
    word = "shrinks" if regime == "vanishing" else "grows"
    assert d.verdict.startswith(
        f"{expected.capitalize()} {regime} gradients: over a whole sequence (T = {T}) the "
        f"gradient {word} by a factor {shown} (e^(rate·T); {expected}:"
    )
    row = str(Diagnosis([d])).splitlines()[2]
    assert re.split(r"\s{2,}", row)[-2:] == [shown, f"{regime} ({expected})"]
    assert json.loads(json.dumps(d.to_dict(arrays=False)))["severity"] == expected


def test_the_advice_is_scaled_to_the_grade():
    Q = _orthogonal(5)
    mild, strong, severe = (
        gs.diagnose(linear_trace(a * Q, T=100, B=2), progress=False)[0]
        for a in (math.exp(-0.025), math.exp(-0.1), 0.6)
    )
    # mild: maybe nothing to do, then only the cheapest lever
    assert mild.advice[0].startswith("Mild:") and "there may be nothing to do" in mild.advice[0]
    assert len(mild.advice) == 2 and "orthogonal" in mild.advice[1]
    assert not any("out of reach" in a for a in mild.advice)
    # strong: every lever and the horizon, no grade preamble
    assert "orthogonal" in strong.advice[0] and "out of reach" in strong.advice[-1]
    assert not any(a.startswith(("Mild", "Severe")) for a in strong.advice)
    # severe: the architecture decides
    assert severe.advice[0].startswith("Severe: a factor 6.5e-23 over T = 100")
    assert "change the architecture" in severe.advice[0]
    assert any("additive or gated state path" in a for a in severe.advice)
    assert len(severe.advice) == len(strong.advice) + 1


def test_a_neutral_or_unmeasured_regime_has_no_grade():
    d = gs.diagnose(linear_trace(_orthogonal(4), T=80, B=2), progress=False)[0]
    assert d.regime == "neutral" and d.severity == "none"
    assert grade("vanishing", math.nan, 100) == "unknown"
    assert grade("unknown", -1.0, 100) == "unknown"


# --------------------------------------------------------------------------- family advice
def _mamba(shift: float):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.MambaConfig(
        vocab_size=64,
        hidden_size=16,
        state_size=4,
        num_hidden_layers=1,
        intermediate_size=32,
        residual_in_fp32=False,
    )
    model = transformers.MambaModel(cfg).eval()
    with torch.no_grad():
        model.layers[0].mixer.A_log += math.log(shift)  # |A| × shift: every state forgets fast
    return model, model.layers[0].mixer


def test_a_vanishing_mamba_is_told_its_own_levers_with_its_own_values():
    model, mixer = _mamba(1000.0)
    ids = torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(1))
    d = gs.diagnose(gs.trace(model, ids, use_cache=False), progress=False)[0]
    assert d.kind == "mamba" and d.regime == "vanishing"
    text = " ".join(d.advice)
    assert "dt_proj.bias" in text and "A_log" in text and "time_step_min" in text
    assert "orthogonal" not in text and "W_hh" not in text
    # the values quoted are the module's own parameters, recomputed here
    delta = F.softplus(mixer.dt_proj.bias.detach().double())
    assert f"softplus(dt_proj.bias) now median {float(delta.median()):.3g}" in text
    A = torch.exp(mixer.A_log.detach().double())
    assert f"|A| now median {float(A.median()):.3g} (min {float(A.min()):.3g}" in text


def test_a_vanishing_gated_deltanet_is_told_its_own_levers_with_its_own_values():
    from test_seq_deltanet import qwen3_next_model

    model = qwen3_next_model(torch.float64)
    gdn = model.layers[0].linear_attn
    with torch.no_grad():
        gdn.A_log.copy_(torch.full_like(gdn.A_log, math.log(30.0)))  # α = e^{−30 softplus}
    ids = torch.randint(0, 64, (2, 30), generator=torch.Generator().manual_seed(1))
    d = gs.diagnose(gs.trace(model, ids, use_cache=False), progress=False)[0]
    assert d.kind == "gated_deltanet" and d.regime == "vanishing"
    text = " ".join(d.advice)
    assert "A_log" in text and "dt_bias" in text and "in_proj_ba" in text and "β" in text
    assert "orthogonal" not in text
    alpha = torch.exp(-30.0 * F.softplus(gdn.dt_bias.detach().double()))
    assert f"keep α median {float(alpha.median()):.4g}" in text


# --------------------------------------------------------------------------- credit
def _lstm_profiles():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 8).double()
    x = torch.randn(60, 3, 3, dtype=torch.float64)
    every = gs.profile(lstm, x, loss_fn=lambda o: o[0].pow(2).sum())
    last = gs.profile(lstm, x, loss_fn=lambda o: o[0][-1].pow(2).sum())
    with torch.no_grad():
        out = lstm(x)[0]
    return every, last, out


def test_credit_entering_at_every_position_is_the_losss_own_derivative():
    every, last, out = _lstm_profiles()
    H = 8
    # L = Σ_t ‖h_t‖²: what reaches h_t directly is ∂ℓ_t/∂h_t = 2 h_t, and nothing reaches c_t
    direct, _ = direct_cotangents(every.trace.layers[0], seqs=3)
    np.testing.assert_allclose(direct[..., :H].numpy(), 2 * out[:-1].numpy(), atol=1e-10)
    np.testing.assert_allclose(direct[..., H:].numpy(), 0.0, atol=1e-10)
    # L = ‖h_T‖²: nothing reaches any state before the last directly
    direct, carried = direct_cotangents(last.trace.layers[0], seqs=3)
    assert float(direct.abs().max()) <= 1e-12 * float(carried.abs().max())
    assert loss_injection(every.trace.layers[0]).where == "every"
    assert loss_injection(every.trace.layers[0]).fraction == 1.0
    assert loss_injection(last.trace.layers[0]).where == "last"


def test_the_verdict_says_where_the_loss_enters_and_reconciles_the_regimes():
    every, last, _ = _lstm_profiles()
    de, dl = every.diagnosis[0], last.diagnosis[0]
    # preconditions of this model: the state product vanishes, the per-position loss
    # gradient stays level, the last-step loss gradient falls with the state product
    assert de.regime == dl.regime == "vanishing"
    assert de.decay["loss"].regime == "neutral" and dl.decay["loss"].regime == "vanishing"
    assert "credit enters this layer directly at 100% of its positions" in de.verdict
    assert "not how far credit travels" in de.verdict
    assert "So the state regime (vanishing) and the loss regime (neutral) answer two" in (
        de.verdict
    )
    assert "The loss reaches this layer only through its last state" in dl.verdict
    assert "answer two questions" not in dl.verdict  # the regimes agree: nothing to reconcile


def test_credit_from_a_layer_above_counts_as_entering_every_position():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 6, num_layers=2).double()
    x = torch.randn(30, 2, 3, dtype=torch.float64)
    p = gs.profile(lstm, x, loss_fn=lambda o: o[0][-1].pow(2).sum())
    lower, upper = (loss_injection(layer) for layer in p.trace.layers)
    assert upper.where == "last"  # the loss reads the top layer's last output only
    assert lower.where == "every"  # the top layer reads every output of the lower one


FACTS = {
    "horizon": "12.0",
    "smax": "0.9",
    "radius": "0.8",
    "severity": "strong",
    "factor": "1e-5",
    "T": "50",
    "rate": "-0.2",
    "lambda1": "-0.2",
    "tau": "5.0",
    "frac_long": "0%",
}

FAMILIES = [
    ("test_sequences", 0),  # transformers' Mamba
    ("test_seq_mambapy", 0),
    ("test_seq_mamba2", 0),
    ("test_seq_rwkv", 0),
    ("test_seq_xlstm", 0),
    ("test_seq_xlstm_pkg", "BLOCK_CASES"),
    ("test_seq_rglru", 0),
    ("test_seq_deltanet", 0),
    ("test_seq_mingru_pkg", 0),
    ("test_seq_mingru_pkg", -1),  # minLSTM
    ("test_seq_s5", 0),
    ("test_seq_slstm", 0),
    ("test_seq_ncps", 0),  # CfC with a backbone
    ("test_seq_ncps", 5),  # CfC on an NCP wiring
    ("test_seq_ncps", 9),  # LTC
]


@pytest.mark.parametrize("module, which", FAMILIES)
def test_every_sequence_family_names_its_own_parameters(module, which):
    import importlib

    tests = importlib.import_module(module)
    case = getattr(tests, which)[0] if isinstance(which, str) else tests.CASES[which]
    mod = case.build(torch.float64)
    adapter = case.adapter(mod)
    params = adapter.module_params(mod)
    levers = adapter.vanishing_advice(params, dict(FACTS))
    text = " ".join(levers)
    assert len(levers) >= 2 and "orthogonal" not in text and "W_hh" not in text
    # a lever names a parameter (or the submodule holding it) of this very module
    names = {part for n, _ in mod.named_parameters() for part in n.split(".") if len(part) > 3}
    named = sorted(n for n in names if n in text)
    assert named, f"{adapter.kind}: no parameter of {sorted(names)} named in {text!r}"
