"""Gradient-norm decay against closed forms: matrix powers, bounds, and exact identities."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import special
from theory import linear_trace, stored_trace, tanh_rnn_trace

import gradscope as gs
from gradscope.analysis.decay import Decay, decay
from gradscope.errors import MissingDataError


def _orthogonal(d, seed=0):
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))[0]


def test_half_identity_over_2000_steps_gives_exactly_ln_half():
    T, D = 2000, 4
    J = np.broadcast_to(0.5 * np.eye(D), (T, 2, D, D)).copy()
    d = decay(stored_trace(J))
    # ‖0.5^k I‖ = 0.5^k: the log-space walk multiplies by 0.5 and renormalises by exactly
    # 0.5 each step, so ln‖P_k‖ = k ln 0.5 up to k rounding errors of u·|ln 0.5|.
    k = np.arange(T + 1)
    np.testing.assert_allclose(d.log_norms[:, 0], k * math.log(0.5), rtol=1e-13, atol=1e-13)
    assert np.all(np.isfinite(d.log_norms))  # 0.5^2000 = 1e-602 underflows; its log must not
    assert d.rate == pytest.approx(math.log(0.5), abs=1e-12)
    assert d.regime == "vanishing"
    assert d.half_life == pytest.approx(1.0, abs=1e-10)
    # horizon: 0.5^k = 1e-3 at k = ln 1e-3 / ln 0.5 (linear interpolation of a straight line)
    assert d.horizon == pytest.approx(math.log(1e-3) / math.log(0.5), abs=1e-9)
    assert d.lags.shape == (T + 1,) and d.norms.shape == (T + 1, 2)


@pytest.mark.parametrize(
    ("a", "regime"), [(0.9, "vanishing"), (1.0, "neutral"), (1.1, "exploding")]
)
def test_scaled_orthogonal_rate_is_ln_a(a, regime):
    W = a * _orthogonal(6)
    tr = linear_trace(W, T=300, B=3)
    d = decay(tr)
    # ‖(aQ)^k‖ = a^k exactly, so every point lies on the line: rate = ln a to rounding.
    assert d.rate == pytest.approx(math.log(a), abs=1e-12)
    assert d.regime == regime
    assert d.rate_ci[1] - d.rate_ci[0] < 1e-12  # an exact exponential: zero-width interval
    if a < 1:
        assert d.half_life == pytest.approx(math.log(2) / -math.log(a), rel=1e-9)
    elif a > 1:
        assert d.half_life == math.inf and d.horizon == math.inf
    else:  # rate 0 up to rounding (±1e-16): half-life and horizon beyond any sequence
        assert d.half_life > 1e12 and d.horizon > 1e12


def test_matches_exact_matrix_powers_for_a_non_normal_matrix():
    # σ_max(W) = 5.9 > 1 but spectral radius 0.9 < 1: norms grow for ~50 steps, then vanish.
    W = np.array([[0.9, 5.0], [0.0, 0.9]])
    T = 2000
    d = decay(linear_trace(W, T=T, B=1))
    ref = np.array(
        [math.log(np.linalg.norm(np.linalg.matrix_power(W, k), 2)) for k in range(T + 1)]
    )
    # Independent reference: numpy matrix powers (no underflow here: 0.9^2000·2000·5 ~ 1e-88).
    np.testing.assert_allclose(d.log_norms[:, 0], ref, rtol=1e-10, atol=1e-10)
    assert d.median[1] > 1.5  # the first steps grow: one-step norms say "exploding"
    assert d.regime == "vanishing"  # ... the long run says otherwise
    # W^k = [[0.9^k, 5k·0.9^(k−1)], [0, 0.9^k]], so ln‖W^k‖ = k ln 0.9 + ln k + c + O(1/k²).
    # Over the fit lags (k ≥ 200) the ln k term adds its OLS slope, computed here, to ln 0.9;
    # the O(1/k²) ≈ 1e-6 terms change the slope by < 1e-8.
    lo, hi = d.fit_lags
    x = np.arange(lo, hi + 1)
    bias = np.polyfit(x, np.log(x), 1)[0]
    assert d.rate == pytest.approx(math.log(0.9) + bias, abs=1e-7)


def test_same_matrix_over_a_short_sequence_is_not_called_vanishing():
    W = np.array([[0.9, 5.0], [0.0, 0.9]])
    d = decay(linear_trace(W, T=20, B=1))
    assert d.regime != "vanishing"  # over 20 steps the gradient has grown, not vanished


def test_pascanu_tanh_with_sigma_max_below_one_vanishes():
    N, T = 30, 300
    rng = np.random.default_rng(2)
    W = rng.standard_normal((N, N))
    W *= 0.95 / np.linalg.norm(W, 2)
    tr = tanh_rnn_trace(N=N, g=1.0, T=T, B=3)
    tr.params["weight_hh"] = torch.as_tensor(W)
    tr.params["weight_ih"] = torch.as_tensor(rng.standard_normal((N, 1)))
    x = torch.as_tensor(rng.standard_normal((T, 3, 1)))
    states = [tr.states[0]]
    for t in range(T):
        states.append(tr.adapter.step(tr.params, x[t], states[-1]))
    tr.states, tr.inputs = torch.stack(states), x
    d = decay(tr)
    assert d.regime == "vanishing"
    # Pascanu et al. (2013): |tanh'| ≤ 1 ⇒ ‖P_k‖ ≤ σ_max(W)^k. Rounding: ~k·u relative.
    k = np.arange(T + 1)[:, None]
    assert np.all(d.log_norms <= k * math.log(0.95) + 1e-9)


def test_input_decay_is_norm_of_power_times_u():
    W = 0.8 * _orthogonal(5, seed=1) @ np.diag([1.0, 0.9, 0.8, 0.7, 0.6])
    tr = linear_trace(W, T=60, B=2, I=3)
    U = tr.params["weight_ih"].numpy()
    d = decay(tr, of="input")
    # ∂s_T/∂x_{T−k} = W^k U exactly for a linear cell.
    ref = [math.log(np.linalg.norm(np.linalg.matrix_power(W, k) @ U, 2)) for k in range(60)]
    np.testing.assert_allclose(d.log_norms[:, 0], ref, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(d.log_norms[:, 1], ref, rtol=1e-11, atol=1e-11)
    assert d.lags.shape == (60,)  # x_1 .. x_T: lags 0 .. T−1


def test_each_sequence_uses_its_own_length():
    D = 3
    Q = _orthogonal(D)
    T = 50
    J = np.broadcast_to(0.7 * Q, (T, 2, D, D)).copy()
    J[30:, 1] = 1e6 * np.eye(D)  # padding garbage: must never enter
    d = decay(stored_trace(J, lengths=np.array([T, 30])))
    np.testing.assert_allclose(d.log_norms[:, 0], np.arange(T + 1) * math.log(0.7), atol=1e-12)
    np.testing.assert_allclose(d.log_norms[:31, 1], np.arange(31) * math.log(0.7), atol=1e-12)
    assert np.all(np.isnan(d.log_norms[31:, 1]))


def test_product_order_is_backwards_in_time():
    # Two steps A (first) then B: ∂s_2/∂s_0 = B·A, whose norm differs from A·B's.
    rng = np.random.default_rng(5)
    A, B = rng.standard_normal((2, 3, 3))
    J = np.stack([A, B])[:, None]
    d = decay(stored_trace(J))
    assert d.log_norms[1, 0] == pytest.approx(math.log(np.linalg.norm(B, 2)), abs=1e-12)
    assert d.log_norms[2, 0] == pytest.approx(math.log(np.linalg.norm(B @ A, 2)), abs=1e-12)
    assert abs(np.linalg.norm(B @ A, 2) - np.linalg.norm(A @ B, 2)) > 1e-3


def test_probes_give_a_lower_bound_exact_in_the_long_run():
    D = 40
    rng = np.random.default_rng(4)
    W = rng.standard_normal((D, D)) / math.sqrt(D)
    W *= 0.97 / np.max(np.abs(np.linalg.eigvals(W)))
    tr = linear_trace(W, T=400, B=1)
    exact = decay(tr)
    probed = decay(tr, probes=4)
    assert exact.probes == D and probed.probes == 4
    # ‖Uᵀ P_k‖ ≤ ‖P_k‖ (U orthonormal), equal at lag 0.
    assert np.all(probed.log_norms <= exact.log_norms + 1e-10)
    assert probed.log_norms[0, 0] == 0.0
    # W^k ≈ ρ^k v wᵀ: the leading left singular vector of W^k converges to the dominant
    # eigenvector v, which the forward QR basis U contains, so the norms agree at long lags.
    # The gap to the next eigenvalue modulus makes the difference decay geometrically.
    assert abs(probed.log_norms[-1, 0] - exact.log_norms[-1, 0]) < 1e-6
    assert probed.rate == pytest.approx(exact.rate, abs=1e-3)


def test_neutral_band_depends_on_sequence_length():
    # rate ln 0.999 ≈ −0.001: over 100 steps the gradient keeps e^−0.1 = 90% (survives:
    # neutral); over 5,000 steps it keeps e^−5 = 0.7% (vanishing).
    Q = _orthogonal(3)
    short = decay(stored_trace(np.broadcast_to(0.999 * Q, (100, 2, 3, 3)).copy()))
    long = decay(stored_trace(np.broadcast_to(0.999 * Q, (5000, 1, 3, 3)).copy()), max_lag=5000)
    assert short.regime == "neutral" and short.threshold == pytest.approx(math.log(10) / 100)
    assert long.regime == "vanishing"


def test_gaussian_products_rate_ci_covers_newman_lambda1():
    N, T, B = 4, 400, 8
    J = np.random.default_rng(9).standard_normal((T, B, N, N)) / math.sqrt(N)
    d = decay(stored_trace(J))
    lam1 = 0.5 * (math.log(2 / N) + special.digamma(N / 2))
    # ln‖P_k‖ grows at λ1 (Newman 1986) plus O(1) fluctuations; the interval is a t-interval
    # over 8 independent sequences. Check the truth lies within 2 half-widths (the 95%
    # interval has ~99.9% coverage at twice its width for 7 degrees of freedom).
    mid, half = d.rate, (d.rate_ci[1] - d.rate_ci[0]) / 2
    assert abs(mid - lam1) < 2 * half
    assert d.ci_method == "sequences"


def test_loss_decay_reads_recorded_gradients():
    T, B, D = 30, 2, 3
    grads = np.zeros((T + 1, B, D))
    for t in range(T + 1):
        grads[t, :, 0] = 0.8 ** (T - t)  # ‖∂L/∂s_t‖ = 0.8^(T−t)
    tr = stored_trace(np.broadcast_to(np.eye(D), (T, B, D, D)).copy(), grads=grads)
    d = decay(tr, of="loss")
    np.testing.assert_allclose(d.log_norms[:, 0], np.arange(T + 1) * math.log(0.8), atol=1e-12)
    assert d.rate == pytest.approx(math.log(0.8), abs=1e-12)
    assert d.of == "loss"


def test_loss_decay_without_gradients_says_how_to_get_them():
    tr = stored_trace(np.broadcast_to(np.eye(2), (5, 1, 2, 2)).copy())
    with pytest.raises(MissingDataError, match="grads=True"):
        decay(tr, of="loss")


def test_nonfinite_jacobians_stop_the_curve_and_are_noted():
    T, D = 40, 2
    J = np.broadcast_to(0.5 * np.eye(D), (T, 2, D, D)).copy()
    J[10, 1] = np.nan
    d = decay(stored_trace(J))
    np.testing.assert_allclose(d.log_norms[:, 0], np.arange(T + 1) * math.log(0.5), atol=1e-12)
    # sequence 1 walks back from T=40 and meets the NaN at step 10 (lag 30): lags ≥ 30 unknown
    assert np.all(np.isfinite(d.log_norms[:30, 1])) and np.all(np.isnan(d.log_norms[30:, 1]))
    assert any("non-finite" in n for n in d.notes)


def test_max_lag_caps_the_walk():
    J = np.broadcast_to(0.5 * np.eye(2), (100, 1, 2, 2)).copy()
    d = decay(stored_trace(J), max_lag=20)
    assert d.log_norms.shape == (21, 1)
    assert d.rate == pytest.approx(math.log(0.5), abs=1e-12)


def test_too_short_to_fit_is_neutral_with_a_note():
    d = decay(stored_trace(np.broadcast_to(0.5 * np.eye(2), (2, 1, 2, 2)).copy()))
    assert math.isnan(d.rate) and d.regime == "neutral"
    assert any("too few lags" in n for n in d.notes)


def test_single_sequence_interval_from_blocks():
    tr = tanh_rnn_trace(N=20, g=0.8, T=300, B=1)
    d = decay(tr)
    assert d.ci_method == "blocks"
    assert d.rate_ci[0] < d.rate < d.rate_ci[1]


def test_to_dict_is_strict_json():
    d = decay(stored_trace(np.broadcast_to(np.eye(2), (10, 1, 2, 2)).copy()))
    assert isinstance(d, Decay)
    text = json.dumps(d.to_dict(), allow_nan=False)
    assert '"half_life": "inf"' in text


def test_bad_arguments():
    tr = stored_trace(np.broadcast_to(np.eye(2), (10, 1, 2, 2)).copy())
    with pytest.raises(ValueError, match="of must be"):
        decay(tr, of="nope")
    with pytest.raises(ValueError, match="probes"):
        decay(tr, probes=3)
    with pytest.raises(ValueError, match="horizon_factor"):
        decay(tr, horizon_factor=2.0)


def test_max_lag_fetches_only_the_steps_it_needs(monkeypatch):
    from gradscope.traces import LayerTrace

    seen = []
    orig = LayerTrace._jac

    def spy(self, wrt, steps, batch):
        seen.extend(steps.tolist())
        return orig(self, wrt, steps, batch)

    monkeypatch.setattr(LayerTrace, "_jac", spy)
    tr = linear_trace(0.5 * _orthogonal(3), T=200, B=1)
    d = decay(tr, max_lag=10, chunk=4)
    assert min(seen) >= 200 - 11  # lags 0..10 need the last 11 steps (input: x_{T−10})
    assert d.log_norms.shape == (11, 1)


def test_per_sequence_slopes_equal_scipy_linregress_with_gaps():
    from scipy import stats

    from gradscope.analysis.fit import _slopes

    rng = np.random.default_rng(0)
    x = np.arange(40.0)
    y = rng.normal(size=(40, 6)) * 0.3 - 0.05 * x[:, None]
    y[5:9, 1] = np.nan  # a gap
    y[:, 2] = np.nan  # no data
    y[:38, 3] = np.nan  # two points: too few
    y[10, 4] = -np.inf  # an exact zero norm is left out
    got = _slopes(x, y)
    for b in range(y.shape[1]):
        ok = np.isfinite(y[:, b])
        if ok.sum() < 3:
            assert np.isnan(got[b])
        else:
            ref = stats.linregress(x[ok], y[ok, b]).slope
            assert got[b] == pytest.approx(ref, rel=1e-12, abs=1e-15)
    assert np.isnan(_slopes(np.ones(5), rng.normal(size=(5, 1))))[0]  # constant x


def test_median_and_band_without_nan_equal_numpy_nan_functions():
    from gradscope.analysis.fit import _nanstats

    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 9))
    x[3, 2] = -np.inf  # an exact zero norm
    med, band = _nanstats(x)
    np.testing.assert_array_equal(med, np.nanmedian(x, axis=1))
    with np.errstate(invalid="ignore"):  # -inf - -inf in NumPy's interpolation
        np.testing.assert_array_equal(band, np.nanpercentile(x, [10, 90], axis=1))
    x[4, :] = np.nan
    x[5, :4] = np.nan
    med, band = _nanstats(x)
    assert np.isnan(med[4]) and np.isnan(band[:, 4]).all()
    assert med[5] == np.median(x[5, 4:])


def test_ols_equals_scipy_linregress():
    """The fit's least squares against SciPy's own linregress (the reference it replaces)."""
    from scipy import stats

    from gradscope.analysis.fit import _ols

    rng = np.random.default_rng(4)
    cases = [
        (np.arange(n, dtype=float), rng.standard_normal(n) - 0.3 * np.arange(n))
        for n in (3, 4, 17, 51)
    ]
    cases.append((np.arange(6.0), np.full(6, 2.5)))  # constant y: r undefined (NaN)
    cases.append((np.arange(8.0), 1.0 - 0.25 * np.arange(8.0)))  # an exact line: r = -1
    for x, y in cases:
        ref = stats.linregress(x, y)
        got = _ols(x, y)
        np.testing.assert_allclose(
            got, (ref.slope, ref.intercept, ref.rvalue, ref.stderr), rtol=1e-12, atol=1e-14
        )


def test_t_quantile_equals_scipy_stats_and_gradscope_does_not_import_it():
    """The confidence intervals' t quantile is SciPy's ``t.ppf`` (the reference), and a
    cold ``import gradscope`` plus a decay fit does not load ``scipy.stats`` (~0.7 s)."""
    import subprocess
    import sys

    from scipy import stats

    from gradscope.analysis.fit import _t975

    for df in (1, 2, 3, 7, 30, 198, 10_000):
        assert _t975(df) == stats.t.ppf(0.975, df)
    code = (
        "import sys, numpy as np, gradscope as gs\n"
        "from gradscope.analysis.fit import fit_decay\n"
        "gs.lyapunov, gs.decay, gs.profile\n"
        "print('scipy.stats' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- degenerate curves
def test_no_finite_norm_at_all_is_unknown_not_neutral():
    """Every norm NaN (e.g. every loss gradient NaN): nothing measured, regime unknown."""
    from gradscope.analysis.fit import fit_decay

    d = fit_decay("x", "loss", np.full((10, 3), np.nan), 10.0)
    assert d.regime == "unknown" and math.isnan(d.rate)
    assert any("no finite norm" in n for n in d.notes)


def test_an_exactly_zero_jacobian_is_vanishing():
    """Theory: J_t = 0 (a tanh RNN with W_hh = 0) gives ‖∂s_T/∂s_(T−k)‖ = 0 for k >= 1."""
    torch.manual_seed(0)
    rnn = torch.nn.RNN(3, 4).double()
    with torch.no_grad():
        rnn.weight_hh_l0.zero_()
    layer = gs.trace(rnn, torch.randn(12, 2, 3, dtype=torch.float64))[0]
    d = decay(layer, progress=False)
    assert d.median[0] == 0.0 and np.isneginf(d.median[1])
    assert d.regime == "vanishing" and d.half_life < 1e-3  # ln 2 / 708: the float64 floor
    assert any("exactly 0 from lag 1" in n for n in d.notes)
