"""Lyapunov exponents against closed-form theory (references: gradscope.theory)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from theory import linear_trace, qr_loop, stored_trace, tanh_rnn_trace

import gradscope as gs
from gradscope.analysis.lyapunov import kaplan_yorke, lyapunov
from gradscope.theory import mean_field_lambda1, newman_spectrum, newman_step_variance
from gradscope.traces import LayerTrace


def _matrix_with_moduli(moduli, seed=0, rotation=None):
    """W = V diag(μ) V⁻¹ with a well-conditioned V; optionally one 2×2 rotation block."""
    rng = np.random.default_rng(seed)
    d = len(moduli) + (2 if rotation else 0)
    core = np.zeros((d, d))
    core[: len(moduli), : len(moduli)] = np.diag(moduli)
    if rotation:
        r, th = rotation
        core[-2:, -2:] = r * np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    V = np.eye(d) + 0.3 * rng.standard_normal((d, d)) / math.sqrt(d)
    return V @ core @ np.linalg.inv(V)


def test_linear_cell_exponents_are_log_abs_eigenvalues():
    W = _matrix_with_moduli([1.05, 0.9, 0.6, -0.4, 0.2], rotation=(0.75, 0.9))
    tr = linear_trace(W, T=2000, B=2)
    ly = lyapunov(tr)
    expected = np.sort(np.log(np.abs(np.linalg.eigvals(W))))[::-1]
    # For a constant W the QR estimate after T steps is λ_i + c_i/T, c_i = O(ln κ(V)) from
    # the initial alignment of Q_0 with the Oseledets vectors (κ(V) < 3 here) and, for the
    # rotation pair, from its bounded oscillation: |c_i| ≲ 5 ⇒ error ≤ 5/2000 = 2.5e-3.
    assert np.max(np.abs(ly.exponents - expected)) < 5e-3
    assert ly.exponents.shape == (7,)
    assert np.all(np.diff(ly.exponents) <= 0)
    assert ly.per_sequence.shape == (2, 7)
    assert ly.steps == 2000 and ly.discard == 0


def test_periodic_sequence_gives_exponents_of_the_period_product():
    rng = np.random.default_rng(3)
    A, B, C = (rng.standard_normal((4, 4)) / 2 for _ in range(3))
    expected = np.sort(np.log(np.abs(np.linalg.eigvals(C @ B @ A))) / 3)[::-1]
    wrong = np.sort(np.log(np.abs(np.linalg.eigvals(A @ B @ C))) / 3)[::-1]
    # The test can tell the time order from its reverse (and from transposed Jacobians,
    # whose period product has the eigenvalues of A·B·C too).
    assert np.max(np.abs(expected - wrong)) > 0.05
    J = np.stack([A, B, C] * 700)[:, None]  # steps A, B, C, A, ... for one sequence
    ly = lyapunov(stored_trace(J))
    # Constant period product: error O(ln κ / T) as above, |c_i| ≲ 5 ⇒ ≤ 2.4e-3.
    assert np.max(np.abs(ly.exponents - expected)) < 5e-3
    assert np.max(np.abs(ly.exponents - wrong)) > 0.04


def test_products_of_gaussian_matrices_follow_newman():
    N, T, B = 6, 3000, 2
    rng = np.random.default_rng(7)
    J = rng.standard_normal((T, B, N, N)) / math.sqrt(N)
    ly = lyapunov(stored_trace(J), init="identity")
    expected = newman_spectrum(N)
    # Each QR increment of exponent i is ½ln(χ²_{N−i+1}/N) in law, independent over steps:
    # the estimate over T·B steps has standard deviation sqrt(ψ'((N−i+1)/2)/4/(T·B)).
    # Allow 4 of them (two-sided tail 6e-5 per exponent).
    sd = np.sqrt(newman_step_variance(N) / (T * B))
    assert np.all(np.abs(ly.exponents - expected) < 4 * sd)


def test_single_sequence_stderr_from_batch_means_matches_theory():
    N, T = 5, 4000
    rng = np.random.default_rng(11)
    J = rng.standard_normal((T, 1, N, N)) / math.sqrt(N)
    ly = lyapunov(stored_trace(J), init="identity", n_blocks=10)
    assert ly.stderr_method == "blocks"
    sd = np.sqrt(newman_step_variance(N) / T)
    # 10 blocks: (stderr/sd)² ~ χ²_9/9, so the ratio lies in (1/3, 3) except with
    # probability < 1e-3 per exponent.
    ratio = ly.stderr / sd
    assert np.all((ratio > 1 / 3) & (ratio < 3)), ratio


@pytest.mark.parametrize("g", [0.5, 0.9])
def test_random_tanh_network_is_ordered_below_g_1(g):
    tr = tanh_rnn_trace(N=60, g=g, T=300, B=2)
    ly = lyapunov(tr, k=3, discard=50)
    # |tanh'| ≤ 1 ⇒ λ1 ≤ ln ‖gW‖₂ and the mean field gives λ1 = ln g < 0 at q* = 0.
    assert ly.exponents[0] < 0


def test_random_tanh_network_is_chaotic_above_g_1():
    tr = tanh_rnn_trace(N=100, g=2.0, T=300, B=2)
    ly = lyapunov(tr, k=3, discard=50)
    assert ly.exponents[0] > 0.05  # mean field: +0.155


@pytest.mark.slow
@pytest.mark.parametrize("g", [2.0, 3.0])
def test_random_tanh_network_matches_mean_field_at_n_500(g):
    tr = tanh_rnn_trace(N=500, g=g, T=250, B=1, seed=1)
    ly = lyapunov(tr, k=1, discard=50)
    # Mean field (q* from q = g² E[tanh²(√q z)], Gauss–Hermite) is exact as N → ∞; finite-N
    # corrections are O(1/N) (≈ 0.005 observed at N = 500) and the statistical error of 200
    # steps with per-step fluctuations of ln‖J q‖ below 0.1 is ≤ 4·0.1/√200 ≈ 0.03 in the
    # worst case, ~0.005 in practice (sequences differ by that much). Tolerance 0.02.
    assert abs(ly.exponents[0] - mean_field_lambda1(g)) < 0.02


def test_sum_of_exponents_equals_mean_log_det():
    tr = tanh_rnn_trace(N=12, g=1.5, T=400, B=2)
    ly = lyapunov(tr)
    J = tr.jacobians().numpy()
    # Σ_i ln|R_ii| = ln|det(J Q)| = ln|det J| at every step (Q orthogonal), so the identity
    # is exact up to rounding: ~D·u·cond per step, far below 1e-9.
    for b in range(2):
        logdet = np.linalg.slogdet(J[:, b])[1].mean()
        assert abs(ly.per_sequence[b].sum() - logdet) < 1e-9


def test_agrees_with_plain_numpy_qr_loop():
    tr = tanh_rnn_trace(N=24, g=1.8, T=600, B=1)
    J = tr.jacobians().numpy()[:, 0]
    ly = lyapunov(tr, init="identity")
    # Blocked QR is accepted only when cond proxy ≤ 1e6: per-block error ≤ 1e6·u·D ≈ 5e-9,
    # averaged over ≥ 1 step per block; a plain loop agrees to that, in practice ~1e-13.
    assert np.max(np.abs(ly.exponents - qr_loop(J))) < 5e-9
    ly5 = lyapunov(tr, k=5, init="identity")
    assert np.max(np.abs(ly5.exponents - qr_loop(J, 5))) < 5e-9


def test_kaplan_yorke_edge_cases():
    assert kaplan_yorke(np.array([-0.1, -0.5])) == 0.0
    assert kaplan_yorke(np.array([0.3, 0.1, -0.2])) == 3.0  # partial sums all ≥ 0 → k
    assert kaplan_yorke(np.array([0.5, 0.0, -1.0])) == pytest.approx(2.5)
    assert kaplan_yorke(np.array([0.2, -0.1, -0.4])) == pytest.approx(2 + 0.1 / 0.4)
    assert math.isnan(kaplan_yorke(np.array([np.nan, 0.1])))


def test_lengths_each_sequence_uses_its_own_valid_steps():
    T, D = 400, 3
    rng = np.random.default_rng(0)
    Q = np.linalg.qr(rng.standard_normal((D, D)))[0]
    J = np.empty((T, 2, D, D))
    J[:, 0] = 0.5 * Q
    J[:, 1] = 0.8 * Q
    J[150:, 1] = 1e3 * np.eye(D)  # padding garbage that must never enter
    tr = stored_trace(J, lengths=np.array([T, 150]))
    ly = lyapunov(tr)
    # a·Q with Q orthogonal: every exponent is exactly ln a (rounding only).
    np.testing.assert_allclose(ly.per_sequence[0], math.log(0.5), atol=1e-12)
    np.testing.assert_allclose(ly.per_sequence[1], math.log(0.8), atol=1e-12)
    np.testing.assert_allclose(ly.exponents, (math.log(0.5) + math.log(0.8)) / 2, atol=1e-12)


def test_nonfinite_steps_are_skipped_and_reported():
    T, D = 100, 3
    J = np.broadcast_to(0.5 * np.eye(D), (T, 2, D, D)).copy()
    J[60:, 1] = np.nan
    ly = lyapunov(stored_trace(J))
    assert np.all(np.isfinite(ly.exponents))
    np.testing.assert_allclose(ly.per_sequence, math.log(0.5), atol=1e-12)
    assert any("non-finite" in n and "step 60" in n for n in ly.notes)


def test_discard_and_history():
    W = _matrix_with_moduli([0.9, 0.5, 0.3])
    ly = lyapunov(linear_trace(W, T=500), discard=100, history=30)
    assert ly.steps == 400 and ly.discard == 100
    assert ly.history.shape == (len(ly.history_steps), 3)
    assert ly.history_steps[-1] == 400
    np.testing.assert_allclose(ly.history[-1], ly.exponents, atol=1e-12)
    assert np.all(np.diff(ly.history_steps) > 0)


def test_streams_over_chunks(monkeypatch):
    calls = []
    orig = LayerTrace._jac

    def spy(self, wrt, steps, batch):
        calls.append(len(steps))
        return orig(self, wrt, steps, batch)

    monkeypatch.setattr(LayerTrace, "_jac", spy)
    tr = tanh_rnn_trace(N=8, g=1.2, T=200)
    lyapunov(tr, chunk=16)
    assert max(calls) <= 16 and sum(calls) == 200


def test_bad_arguments_raise():
    tr = linear_trace(np.eye(3) * 0.5, T=10)
    with pytest.raises(ValueError, match="k must be"):
        lyapunov(tr, k=4)
    with pytest.raises(ValueError, match="discard"):
        lyapunov(tr, discard=-1)
    with pytest.raises(ValueError, match="init"):
        lyapunov(tr, init="nope")


def test_public_name_and_json():
    ly = lyapunov(linear_trace(np.eye(3) * 0.5, T=20), k=2)
    assert isinstance(ly, gs.Lyapunov)
    text = json.dumps(ly.to_dict(), allow_nan=False)
    assert '"kaplan_yorke": 0.0' in text


def test_float32_trace_is_analysed_in_float64():
    tr = tanh_rnn_trace(N=10, g=1.5, T=200).to(dtype=torch.float32)
    ly = lyapunov(tr)
    # documented: a closed-form cell's Jacobians are evaluated in float64 at the recorded
    # (float32) states, so the float64 trace's Jacobians are the exact reference here.
    J = tr.to(dtype=torch.float64).jacobians().numpy()
    for b in range(2):
        assert abs(ly.per_sequence[b].sum() - np.linalg.slogdet(J[:, b])[1].mean()) < 1e-9
