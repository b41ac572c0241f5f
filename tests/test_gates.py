"""Gate views: statistics against gates computed here from the module's weights (float64),
the additive-path split against autograd, carries in log space, path shares against dense
products of autograd Jacobians."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from cell_cases import TensorCell
from torch import nn

import gradscope as gs
from gradscope.analysis.gates import QUANTILES, gate_view, split_jacobian


def _lstm_gates(mod: nn.LSTM, x: torch.Tensor) -> dict[str, np.ndarray]:
    """i, f, o (T, B, H) from the module's own outputs and weights."""
    out, _ = mod(x)
    h_prev = torch.cat([torch.zeros_like(out[:1]), out[:-1]])
    a = x @ mod.weight_ih_l0.T + mod.bias_ih_l0 + h_prev @ mod.weight_hh_l0.T + mod.bias_hh_l0
    H = mod.hidden_size
    sig = torch.sigmoid
    return {
        "i": sig(a[..., :H]).detach().numpy(),
        "f": sig(a[..., H : 2 * H]).detach().numpy(),
        "o": sig(a[..., 3 * H :]).detach().numpy(),
    }


def _jac(adapter, params, xt, s_prev):
    """∂s_t/∂s_{t-1} by autograd through the adapter's step (checked against the module's own
    forward in test_cells)."""
    return torch.func.jacrev(lambda s: adapter.step(params, xt[None], s[None])[0])(s_prev)


def _quantiles(v: np.ndarray) -> np.ndarray:
    return np.quantile(v.reshape(v.shape[0], -1), QUANTILES, axis=1).T


def test_lstm_gate_statistics_match_the_modules_gates(float64, seeded):
    mod = nn.LSTM(3, 5)
    x = torch.randn(12, 4, 3)
    view = gate_view(gs.trace(mod, x)["lstm.l0"])
    ref = _lstm_gates(mod, x)
    for g in ("i", "f", "o"):
        np.testing.assert_allclose(view.gates[g], _quantiles(ref[g]), rtol=0, atol=1e-12)
        assert view.medians[g] == pytest.approx(np.median(ref[g]), abs=1e-12)
    # the carry: ∏ f over the last k steps, per unit and sequence, then quantiles
    logf = np.log(ref["f"])
    carry = np.concatenate([np.zeros((1, 4, 5)), np.cumsum(logf[::-1], axis=0)])
    np.testing.assert_allclose(view.carry, _quantiles(carry), atol=1e-12)
    np.testing.assert_allclose(view.carry_max, np.median(carry.max(axis=2), axis=1), atol=1e-12)


def test_gru_cell_loop_gates_follow_pytorchs_convention(float64, seeded):
    cell = nn.GRUCell(2, 4)
    x = torch.randn(9, 3, 2)
    with gs.record(cell) as rec:
        h = torch.zeros(3, 4)
        hs = [h]
        for t in range(9):
            h = cell(x[t], h)
            hs.append(h)
    view = gate_view(rec.trace.layers[0])
    hp = torch.stack(hs[:-1])
    gi = x @ cell.weight_ih.T + cell.bias_ih
    gh = hp @ cell.weight_hh.T + cell.bias_hh
    r = torch.sigmoid(gi[..., :4] + gh[..., :4])
    z = torch.sigmoid(gi[..., 4:8] + gh[..., 4:8])
    n = torch.tanh(gi[..., 8:] + r * gh[..., 8:])
    # PyTorch: h' = (1 - z) n + z h, so z is the carried gate
    torch.testing.assert_close(torch.stack(hs[1:]), (1 - z) * n + z * hp, rtol=0, atol=1e-12)
    np.testing.assert_allclose(view.gates["z"], _quantiles(z.detach().numpy()), atol=1e-12)
    np.testing.assert_allclose(view.gates["r"], _quantiles(r.detach().numpy()), atol=1e-12)
    assert view.path == "update" and set(view.gates) == {"r", "z"}


@pytest.mark.parametrize("kind", ["lstm", "lstm_proj", "gru", "rnn"])
def test_split_sums_to_the_autograd_jacobian(float64, seeded, kind):
    mods = {
        "lstm": lambda: nn.LSTM(2, 4),
        "lstm_proj": lambda: nn.LSTM(2, 4, proj_size=3),
        "gru": lambda: nn.GRU(2, 4),
        "rnn": lambda: nn.RNN(2, 4),
    }
    mod = mods[kind]()
    x = torch.randn(5, 2, 2)
    layer = gs.trace(mod, x).layers[0]
    a, r = split_jacobian(layer)
    adapter = layer.cell_adapter()
    for t in range(5):
        for b in range(2):
            s_prev, xt = layer.states[t, b], layer.inputs[t, b]
            ref = _jac(adapter, layer.params, xt, s_prev)
            torch.testing.assert_close(a[t, b] + r[t, b], ref, rtol=1e-12, atol=1e-13)
            if kind == "rnn":
                assert not a[t, b].any()
                continue
            if kind == "gru":  # A = diag(z), z from the module's weights here
                p = layer.params
                a_z = (xt @ p["weight_ih"].T + p["bias_ih"] + s_prev @ p["weight_hh"].T)[4:8]
                z = torch.sigmoid(a_z + p["bias_hh"][4:8])
                torch.testing.assert_close(a[t, b], torch.diag(z), rtol=1e-12, atol=1e-15)
                continue
            # the additive path is the c → c block of autograd's Jacobian, the rest has none
            c = layer.part("c")
            torch.testing.assert_close(a[t, b][c, c], ref[c, c], rtol=1e-12, atol=1e-13)
            assert r[t, b][c, c].abs().max() < 1e-15


def test_carry_survives_two_thousand_steps_in_log_space(float64, seeded):
    mod = nn.LSTM(1, 3)
    with torch.no_grad():
        mod.bias_ih_l0[3:6] = -2.0  # f ≈ 0.12: ∏ f over 2000 steps is e^-4000, far below 1e-308
    x = torch.randn(2000, 2, 1)
    view = gate_view(gs.trace(mod, x)["lstm.l0"], max_lag=20)
    assert np.isfinite(view.carry).all() and np.isfinite(view.carry_max).all()
    f = _lstm_gates(mod, x)["f"]
    ref = np.log(f).sum(axis=0)  # ln C_T per sequence and unit
    assert ref.max() < -1000
    assert view.carry[-1, 2] == pytest.approx(np.median(ref), rel=1e-10)
    assert view.walk_lags.max() == 20 and np.isfinite(view.share).all()


def test_path_share_against_dense_autograd_products(float64, seeded):
    mod = nn.LSTM(2, 3)
    with torch.no_grad():
        mod.bias_ih_l0[3:6] = 2.0
    x = torch.randn(6, 3, 2)
    layer = gs.trace(mod, x)["lstm.l0"]
    view = gate_view(layer)
    adapter, c = layer.cell_adapter(), layer.part("c")
    shares, totals = [], []
    for b in range(3):
        P, Pi = torch.eye(6), torch.eye(6)
        row_s, row_t = [1.0], [0.0]
        for t in range(5, -1, -1):  # P_k = J_T ⋯ J_{T-k+1}
            s_prev, xt = layer.states[t, b], layer.inputs[t, b]
            J = _jac(adapter, layer.params, xt, s_prev)
            A = torch.zeros(6, 6)
            A[c, c] = torch.diag(J[c, c].diagonal())
            P, Pi = P @ J, Pi @ A
            n_pi = torch.linalg.matrix_norm(Pi, 2)
            n_e = torch.linalg.matrix_norm(P - Pi, 2)
            row_s.append(float(n_pi / (n_pi + n_e)))
            row_t.append(math.log(torch.linalg.matrix_norm(P, 2)))
        shares.append(row_s)
        totals.append(row_t)
    np.testing.assert_array_equal(view.walk_lags, np.arange(7))
    np.testing.assert_allclose(view.share, np.median(shares, axis=0), rtol=1e-9)
    np.testing.assert_allclose(view.total_log, np.median(totals, axis=0), rtol=1e-9, atol=1e-12)
    # and P_k is what gs.decay measures
    np.testing.assert_allclose(view.total_log, gs.decay(layer).median, rtol=1e-9, atol=1e-12)
    assert "cell path" in view.sentence() and "forget gates median" in view.sentence()


def test_vanilla_repeated_factor_and_saturation(float64, seeded):
    mod = nn.RNN(2, 6)
    x = 3 * torch.randn(10, 3, 2)
    view = gate_view(gs.trace(mod, x)["rnn.l0"])
    out, _ = mod(x)
    h_prev = torch.cat([torch.zeros_like(out[:1]), out[:-1]])
    a = x @ mod.weight_ih_l0.T + mod.bias_ih_l0 + h_prev @ mod.weight_hh_l0.T + mod.bias_hh_l0
    d = (1 - torch.tanh(a) ** 2).detach()
    norms = torch.linalg.matrix_norm(d.unsqueeze(-1) * mod.weight_hh_l0.detach(), 2).numpy()
    np.testing.assert_allclose(view.factor, np.quantile(norms, QUANTILES, axis=1).T, rtol=1e-12)
    np.testing.assert_allclose(view.gates["φ'"], _quantiles(d.numpy()), atol=1e-12)
    w_norm = float(torch.linalg.matrix_norm(mod.weight_hh_l0.detach(), 2))
    assert view.weight_norm == pytest.approx(w_norm)
    assert view.path == "none" and "diag(φ′) W_hh" in view.sentence()


def test_cells_without_gates_have_no_gate_view(float64, seeded):
    cell = TensorCell(2, 3)
    with gs.record(cell, cells=[cell]) as rec:
        h = torch.zeros(2, 3)
        for _ in range(4):
            h = cell(torch.randn(2, 2), h)
    layer = rec.trace.layers[0]
    assert gate_view(layer) is None
    with pytest.raises(gs.errors.MissingDataError):
        split_jacobian(layer)


def test_report_shows_gate_views_where_they_apply_and_a_note_elsewhere(tmp_path):
    """LSTM and vanilla sections get their gate panels; a minGRU section gets the note."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from mingru import MinGRU

    torch.manual_seed(0)
    runs = {
        "lstm": gs.diagnose(gs.trace(torch.nn.LSTM(3, 4), torch.randn(20, 2, 3))),
        "rnn": gs.diagnose(gs.trace(torch.nn.RNN(3, 4), torch.randn(20, 2, 3))),
        "mingru": gs.diagnose(gs.trace(MinGRU(3, 4), torch.randn(2, 20, 3))),
    }
    gs.report(runs, tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    for key in ("gate-share", "gate-distributions", "repeated-factor"):
        assert f'data-figure="{key}"' in html
    # the carry is drawn once for all layers, in the mechanism picture on the first screen
    assert html.count('data-figure="mechanism"') == 1 and 'data-figure="gate-carry"' not in html
    assert "data-missing='gates'" in html and "Gate views: not shown for a example:mingru" in html
    assert 'data-figure="memory-timescales"' in html


def test_vanilla_factor_of_packed_sequences_leaves_padding_out(float64, seeded):
    """Padded steps (NaN φ′) are left out of the factor quantiles instead of failing LAPACK."""
    from torch.nn.utils.rnn import pack_padded_sequence

    mod = nn.RNN(2, 4)
    x = torch.randn(6, 3, 2)
    lengths = [6, 4, 2]
    view = gate_view(gs.trace(mod, pack_padded_sequence(x, torch.tensor(lengths)))["rnn.l0"])
    w = mod.weight_hh_l0.detach()
    out, _ = mod(x)  # the unpacked run: the same states on each sequence's real steps
    h_prev = torch.cat([torch.zeros_like(out[:1]), out[:-1]])
    a = x @ mod.weight_ih_l0.T + mod.bias_ih_l0 + h_prev @ w.T + mod.bias_hh_l0
    d = (1 - torch.tanh(a) ** 2).detach()
    norms = torch.linalg.matrix_norm(d.unsqueeze(-1) * w, 2).numpy()  # (T, B)
    for t in range(6):
        real = [norms[t, b] for b in range(3) if t < lengths[b]]
        np.testing.assert_allclose(view.factor[t], np.quantile(real, QUANTILES), rtol=1e-12)


def test_carries_and_the_1_over_e_lag_against_brute_force():
    """Varied lengths (the gather) and equal lengths (the plain cumsum); the 1/e lag's
    count prefilter never skips the first lag whose NaN-aware median is below −1."""
    from gradscope.analysis.gates import carries, carry_horizon

    rng = np.random.default_rng(0)
    for trial in range(40):
        T, B, H = (int(v) for v in rng.integers(1, 25, 3))
        log_g = np.log(rng.uniform(0.3 if trial % 2 else 0.9, 1.0, (T, B, min(H, 4))))
        lengths = np.full(B, T) if trial % 3 == 0 else rng.integers(0, T + 1, B)
        lengths[0] = T
        ref = np.full((T + 1, B, log_g.shape[2]), np.nan)
        for b, n in enumerate(lengths):
            ref[0, b] = 0.0
            ref[1 : n + 1, b] = np.cumsum(log_g[:n, b][::-1], axis=0)
        log_c = carries(log_g, lengths)
        np.testing.assert_allclose(log_c, ref, rtol=1e-13, atol=0)
        med = [np.median(r[~np.isnan(r)]) for r in ref.reshape(T + 1, -1)]
        first = [k for k, m in enumerate(med) if m < -1]
        assert carry_horizon(log_c) == (first[0] if first else math.inf)
    # an even count with only half below −1, whose median is below: lag 1 (−5 and −0.1)
    two = np.array([-5.0, -0.1])[None, None, :].repeat(3, axis=0)
    assert carry_horizon(carries(two, np.array([3]))) == 1


def test_vanilla_factor_leaves_non_finite_steps_out(float64, seeded):
    """A sequence whose inputs turn NaN: its steps from there are left out, not counted 0."""
    mod = nn.RNN(2, 4)
    x = torch.randn(5, 3, 2)
    x[2:, 1] = float("nan")
    view = gate_view(gs.trace(mod, x)["rnn.l0"])
    w = mod.weight_hh_l0.detach()
    out, _ = mod(x)
    h_prev = torch.cat([torch.zeros_like(out[:1]), out[:-1]])
    a = x @ mod.weight_ih_l0.T + mod.bias_ih_l0 + h_prev @ w.T + mod.bias_hh_l0
    d = (1 - torch.tanh(a) ** 2).detach()
    norms = torch.linalg.matrix_norm(torch.nan_to_num(d).unsqueeze(-1) * w, 2).numpy()
    for t in range(5):
        real = [norms[t, b] for b in range(3) if t < 2 or b != 1]
        np.testing.assert_allclose(view.factor[t], np.quantile(real, QUANTILES), rtol=1e-12)


def test_path_walk_of_a_float32_model_runs_in_float32_to_its_precision(seeded):
    """A float32 model's walk runs in float32 (the analysis layer's product dtype) and
    agrees with the float64 walk of the same weights and states to float32 rounding, with
    D > EXACT_MAX_D (random probes, the Monitor's case) and 60 steps back."""
    from gradscope.analysis.gates.paths import EXACT_MAX_D, walk

    mod = nn.LSTM(4, EXACT_MAX_D // 2 + 8)  # D = 2H > EXACT_MAX_D
    x = torch.randn(60, 3, 4)
    layer32 = gs.trace(mod, x)["lstm.l0"]
    layer64 = gs.trace(mod.double(), x.double())["lstm.l0"]
    assert layer32.dtype == torch.float32
    lags32, path32, rest32, total32, p, _ = walk(layer32, 0, None, seqs=3, lags=8)
    lags64, path64, rest64, total64, _, _ = walk(layer64, 0, None, seqs=3, lags=8)
    assert p < layer32.D
    np.testing.assert_array_equal(lags32, lags64)
    assert np.isfinite(rest32[1:]).all() and np.isneginf(rest32[0]).all()  # E_0 = 0
    for a, b in ((path32, path64), (rest32, rest64), (total32, total64)):
        assert np.isfinite(a[1:]).all()
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)  # measured: 3e-7


def test_path_walk_of_packed_sequences_equals_each_sequence_walked_alone(float64, seeded):
    """Varied lengths (sequences leave the walk one by one: the gathered branch) against
    each sequence traced and walked on its own (every sequence live: the in-place branch),
    exact probes (D = 6): the same path, rest and total logs at every lag."""
    from torch.nn.utils.rnn import pack_padded_sequence

    from gradscope.analysis.gates.paths import walk

    mod = nn.LSTM(2, 3)
    x = torch.randn(7, 3, 2)
    lengths = [7, 5, 2]
    layer = gs.trace(mod, pack_padded_sequence(x, torch.tensor(lengths)))["lstm.l0"]
    lags, path, rest, total, p, _ = walk(layer, 0, None, seqs=3, lags=64)
    assert p == 6 and list(lags) == list(range(8))
    for b, n in enumerate(lengths):
        alone = gs.trace(mod, x[:n, b : b + 1])["lstm.l0"]
        lags_b, path_b, rest_b, total_b, _, _ = walk(alone, 0, None, seqs=1, lags=64)
        assert list(lags_b) == list(range(n + 1))
        for got, ref in ((path, path_b), (rest, rest_b), (total, total_b)):
            np.testing.assert_allclose(got[: n + 1, b], ref[:, 0], rtol=1e-9, atol=1e-12)
            assert np.isnan(got[n + 1 :, b]).all()  # past its length: not measured


# --------------------------------------------------------------------------- degenerate layers
@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_a_diverged_layer_gets_a_gate_view_that_says_so(cls, seeded):
    """Every weight NaN: no finite gate at any step (regression: a raw broadcast ValueError)."""
    mod = cls(3, 5)
    with torch.no_grad():
        for p in mod.parameters():
            p.fill_(float("nan"))
    layer = gs.trace(mod, torch.randn(6, 2, 3))[0]
    view = gate_view(layer)
    assert all(np.isnan(q).all() for q in view.gates.values())
    assert view.sentence().startswith("No gate numbers") and "nan" not in view.sentence()
    assert "nan" not in view.short()


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_an_empty_batch_gets_a_gate_view_of_nans(cls, seeded):
    """B = 0 (regression: a raw IndexError from np.quantile on an empty axis)."""
    layer = gs.trace(cls(3, 5), torch.randn(6, 0, 3))[0]
    view = gate_view(layer)
    assert all(q.shape == (6, len(QUANTILES)) and np.isnan(q).all() for q in view.gates.values())
    assert view.sentence().startswith("No gate numbers")


def test_vanilla_without_recurrent_weights_has_no_path_at_all(seeded):
    """``W_hh = 0``: J_t = 0 (regression: ZeroDivisionError from the saturation ratio)."""
    rnn = nn.RNN(3, 5)
    with torch.no_grad():
        rnn.weight_hh_l0.zero_()
    view = gate_view(gs.trace(rnn, torch.randn(6, 2, 3))[0])
    assert view.weight_norm == 0.0
    assert "W_hh = 0" in view.sentence() and "no recurrent path" in view.short()


def test_a_one_step_norm_above_1_with_a_vanishing_product_is_called_non_normal(float64, seeded):
    # W = 0.75 G/√N, G Gaussian: spectral radius ≈ 0.75, spectral norm ≈ 1.5 (non-normal)
    mod = nn.RNN(4, 32)
    with torch.no_grad():
        mod.weight_hh_l0.copy_(torch.randn(32, 32) * 0.75 / 32**0.5)
    x = torch.randn(100, 4, 4)
    layer = gs.trace(mod, x)["rnn.l0"]
    d = gs.diagnose(layer, progress=False)[0]
    # preconditions, from autograd Jacobians: one-step norms above 1, a falling product
    J = torch.stack(
        [
            _jac(layer.cell_adapter(), layer.params, layer.inputs[t, 0], layer.states[t, 0])
            for t in range(0, 100, 10)
        ]
    )
    assert float(torch.linalg.matrix_norm(J, 2).median()) > 1
    rate = gs.decay(layer).rate
    assert d.regime == "vanishing" and rate < 0
    text = d.gates.sentence()
    assert "That norm only bounds one step" in text and f"falls at {rate:+.3f}/step" in text
    assert "non-normal" in text and "non-normal" in d.gates.short()
    assert "A one-step norm above 1 does not contradict the vanishing" in d.verdict
    # on its own a vanilla view has no walk to fit a rate on: it claims nothing about it
    alone = gate_view(layer)
    assert math.isnan(alone.long_run_rate()) and "bounds one step" not in alone.sentence()


def test_a_gated_view_on_its_own_fits_the_rate_of_its_walk(float64, seeded):
    mod = nn.LSTM(3, 6)
    layer = gs.trace(mod, torch.randn(120, 3, 3))["lstm.l0"]
    ref = gs.decay(layer)  # the same ‖∂s_T/∂s_T−k‖₂, fitted by the decay module
    assert gate_view(layer).long_run_rate() == pytest.approx(ref.rate, abs=0.01)


@pytest.mark.parametrize(
    "bias, words",
    [(-8.0, "it travels through the recurrent weights"), (8.0, "the gate carries it")],
)
def test_which_path_carries_the_gradient_is_said(float64, seeded, bias, words):
    # z = σ(bias + …): near 0 the diag(z) path is shut and the gradient can only go through
    # W_hh; near 1 the state is copied forward along diag(z)
    mod = nn.GRU(2, 6)
    with torch.no_grad():
        mod.weight_hh_l0.mul_(4.0)
        mod.bias_ih_l0[6:12] = bias
        mod.bias_hh_l0[6:12] = 0.0
    view = gate_view(gs.trace(mod, torch.randn(30, 3, 2))["gru.l0"])
    _, share = view.share_at(100)
    assert (share < 0.1) if bias < 0 else (share > 0.9)
    assert f"carries {100 * share:.0f}% of it: {words}" in view.sentence()
    assert (": through the weights" in view.short()) == (bias < 0)
