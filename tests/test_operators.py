"""The analysis layer on Jacobian operators against the dense path and against theory.

References, never the operator code's own output:

* ``layer.jvp`` / ``layer.vjp`` against products with the dense closed-form Jacobians
  (``layer.jacobians()``, themselves checked against ``torch.func.jacrev`` of the modules'
  own forward in ``tests/test_cells.py``), float64, 1e-12 relative;
* Lyapunov exponents, decay curves and leading eigen/singular values computed on operators
  against the dense path on the same layer (same starting bases, so the same numbers up to
  rounding);
* theory cases through the operator path: a linear cell's exponents are ``ln|eig(W)|``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from theory import linear_trace, lstm_trace, run_cell, stored_trace, tanh_rnn_trace

import gradscope as gs
from gradscope.analysis.decay import decay_curves
from gradscope.analysis.lyapunov import lyapunov, use_operators
from gradscope.analysis.spectra import spectrum
from gradscope.cells.base import CellAdapter, Params
from gradscope.cells.gru import GRUAdapter
from gradscope.errors import ArgumentError, ShapeError
from gradscope.jacobians.products import LOG_TINY


def _lstm_params(H: int, I: int, seed: int = 0, proj: int = 0) -> Params:
    torch.manual_seed(seed)
    m = torch.nn.LSTM(I, H, proj_size=proj).double()
    return {k[: -len("_l0")]: v.detach() for k, v in m.named_parameters()}


def _gru_trace(H: int = 24, I: int = 5, T: int = 30, B: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    m = torch.nn.GRU(I, H).double()
    params = {k[: -len("_l0")]: v.detach() for k, v in m.named_parameters()}
    x = torch.randn(T, B, I, dtype=torch.float64)
    return run_cell(GRUAdapter(), params, x, torch.zeros(B, H, dtype=torch.float64), kind="gru")


def _traces():
    lstm = lstm_trace(_lstm_params(20, 4, seed=1), T=30, B=3)
    proj = _lstm_proj_trace()
    return {"lstm": lstm, "lstm_proj": proj, "gru": _gru_trace(), "rnn_tanh": _tanh(40, 1.5)}


def _lstm_proj_trace():
    from gradscope.cells.lstm import LSTMAdapter

    params = _lstm_params(12, 4, seed=2, proj=7)
    x = torch.randn(25, 2, 4, dtype=torch.float64)
    s0 = torch.zeros(2, 7 + 12, dtype=torch.float64)
    return run_cell(LSTMAdapter(), params, x, s0, kind="lstm")


def _tanh(N: int, g: float, T: int = 60, B: int = 2):
    return tanh_rnn_trace(N=N, g=g, T=T, B=B, seed=3)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


# --------------------------------------------------------------------------- layer products
@pytest.mark.parametrize("kind", ["lstm", "lstm_proj", "gru", "rnn_tanh"])
@pytest.mark.parametrize("wrt", ["state", "input"])
def test_layer_products_equal_dense_products(kind, wrt):
    tr = _traces()[kind]
    steps, batch = [0, 5, 17], [2, 0] if tr.B > 2 else [1, 0]
    J = tr.jacobians(steps=steps, batch=batch, wrt=wrt)  # (T', B', D, C)
    g = torch.Generator().manual_seed(0)
    V = torch.randn(*J.shape[:2], J.shape[-1], 4, dtype=torch.float64, generator=g)
    U = torch.randn(*J.shape[:2], J.shape[-2], 3, dtype=torch.float64, generator=g)
    assert rel(tr.jvp(V, steps=steps, batch=batch, wrt=wrt), J @ V) <= 1e-12
    assert rel(tr.vjp(U, steps=steps, batch=batch, wrt=wrt), J.transpose(-1, -2) @ U) <= 1e-12


def test_layer_products_check_shapes():
    tr = _traces()["gru"]
    with pytest.raises(ShapeError, match=r"jvp\(wrt='state'\) takes \(T', B', 24, k\)"):
        tr.jvp(torch.zeros(tr.T, tr.B, 5, 1, dtype=torch.float64))
    with pytest.raises(ShapeError):
        tr.vjp(torch.zeros(tr.T, tr.B, 24, dtype=torch.float64))
    with pytest.raises(ArgumentError):
        tr.jvp(torch.zeros(tr.T, tr.B, 24, 1, dtype=torch.float64), wrt="output")


# --------------------------------------------------------------------------- lyapunov
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_lyapunov_operator_path_equals_dense_path(kind):
    tr = _traces()[kind]
    dense = lyapunov(tr, k=5, discard=3, method="dense", history=8)
    op = lyapunov(tr, k=5, discard=3, method="operator", history=8)
    # Same Q0 and the same QR factorisations up to rounding (the dense path also blocks
    # several steps per QR, accepted only within 1e6 u): agreement ~1e-12, asserted 1e-9.
    np.testing.assert_allclose(op.per_sequence, dense.per_sequence, rtol=0, atol=1e-9)
    np.testing.assert_allclose(op.history, dense.history, rtol=0, atol=1e-9)
    assert op.steps == dense.steps and op.stderr_method == dense.stderr_method
    assert op.vectors.shape == (tr.B, tr.D, 5)
    qtq = np.einsum("bdk,bdl->bkl", op.vectors, op.vectors)
    np.testing.assert_allclose(qtq, np.broadcast_to(np.eye(5), qtq.shape), atol=1e-12)


class _Linear(CellAdapter):
    """``h_t = W h_{t-1} + U x_t`` with *no* closed-form products: the base class's default
    ``torch.func`` jvp/vjp is what the operator path uses."""

    kind = "test_linear_ops"

    def state_sizes(self, params):
        return (int(params["weight_hh"].shape[0]),)

    def step(self, params, x, s):
        return s @ params["weight_hh"].T + x @ params["weight_ih"].T

    def jacobian_state(self, params, x, s):
        return params["weight_hh"].expand(x.shape[0], -1, -1).clone()

    def jacobian_input(self, params, x, s):
        return params["weight_ih"].expand(x.shape[0], -1, -1).clone()


def test_linear_cell_exponents_through_operators_are_log_abs_eigenvalues():
    rng = np.random.default_rng(4)
    D = 90
    moduli = np.exp(np.linspace(-0.05, -2.0, D))
    V = np.eye(D) + 0.3 * rng.standard_normal((D, D)) / math.sqrt(D)
    W = V @ np.diag(moduli) @ np.linalg.inv(V)
    params = {
        "weight_hh": torch.as_tensor(W),
        "weight_ih": torch.as_tensor(rng.standard_normal((D, 2))),
    }
    x = torch.as_tensor(rng.standard_normal((400, 2, 2)) * 0.1)
    tr = run_cell(_Linear(), params, x, torch.zeros(2, D, dtype=torch.float64))
    assert use_operators(tr, 6, "auto")
    ly = lyapunov(tr, k=6, discard=100)
    # Oseledets: (1/n) ln σ_i(W^n) -> ln|μ_i| with an O(ln cond(V) / n) transient; the
    # discarded 100 steps align Q, so 300 steps leave an error ~ ln(cond V)/300 < 1e-2.
    np.testing.assert_allclose(ly.exponents, np.log(moduli[:6]), atol=1e-2)


@pytest.mark.slow
def test_mean_field_case_runs_on_operators():
    tr = tanh_rnn_trace(N=500, g=2.0, T=250, B=1, seed=1)
    assert use_operators(tr, 1, "auto")  # so test_lyapunov's mean-field check covers it


# --------------------------------------------------------------------------- decay
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_decay_walk_on_operators_equals_dense_walk(kind):
    tr = _traces()[kind]
    rng = np.random.default_rng(0)
    basis = np.stack([np.linalg.qr(rng.standard_normal((tr.D, 4)))[0] for _ in range(tr.B)])
    a = decay_curves(tr, ("state", "input"), probes=4, basis=basis, method="dense")
    b = decay_curves(tr, ("state", "input"), probes=4, basis=basis, method="operator")
    np.testing.assert_allclose(b[0], a[0], rtol=0, atol=1e-9)
    np.testing.assert_allclose(b[1], a[1], rtol=0, atol=1e-9)
    assert a[2] == b[2] == 4


def test_exact_decay_on_operators_equals_dense():
    tr = _traces()["gru"]
    a = decay_curves(tr, ("state", "input"), method="dense")  # p = D: exact norms
    b = decay_curves(tr, ("state", "input"), method="operator")
    np.testing.assert_allclose(b[0], a[0], rtol=0, atol=1e-9)
    np.testing.assert_allclose(b[1], a[1], rtol=0, atol=1e-9)


def test_operator_walk_has_no_underflow_at_long_lags():
    # h_t = 0.5 h_{t-1}: ln‖P_k‖ = k ln 0.5 exactly, far below float64's range at k = 2000.
    D = 3
    params = {
        "weight_hh": torch.eye(D, dtype=torch.float64) * 0.5,
        "weight_ih": torch.ones(D, 1, dtype=torch.float64),
    }
    tr = run_cell(
        _Linear(),
        params,
        torch.zeros(2000, 1, 1, dtype=torch.float64),
        torch.ones(1, D, dtype=torch.float64),
    )
    ls, _, _, _ = decay_curves(tr, ("state",), probes=2, method="operator")
    np.testing.assert_allclose(ls[:, 0], np.arange(2001) * math.log(0.5), rtol=1e-12)


# --------------------------------------------------------------------------- spectra
@pytest.mark.parametrize("formed", [True, False], ids=["formed", "products"])
@pytest.mark.parametrize("kind", ["lstm", "rnn_tanh"])
def test_leading_values_on_operators_equal_dense(kind, formed, monkeypatch):
    """ARPACK on the one Jacobian formed per pair (D <= FORMED_MAX_D) and on the closed-form
    products (above it; forced here with a cap of 0) against dense decompositions."""
    from gradscope.jacobians import krylov

    if not formed:
        monkeypatch.setattr(krylov, "FORMED_MAX_D", 0)
    tr = _traces()[kind]
    steps, batch = [1, 10, 20], [0, 1]
    for which in ("eig", "svd"):
        d = spectrum(tr, which, steps=steps, batch=batch, method="dense")
        o = spectrum(tr, which, steps=steps, batch=batch, method="operator", k=3, tol=1e-10)
        assert o.method == "operator" and o.values.shape == (3, 2, 3)
        if which == "eig":
            np.testing.assert_allclose(o.radius, d.radius, rtol=1e-8)
            np.testing.assert_allclose(np.abs(o.values), np.abs(d.values[..., :3]), rtol=1e-7)
        else:
            np.testing.assert_allclose(o.norm, d.norm, rtol=1e-8)
            np.testing.assert_allclose(o.values, d.values[..., :3], rtol=1e-8)


@pytest.mark.parametrize("formed", [True, False], ids=["formed", "products"])
def test_operator_spectrum_of_non_finite_steps_is_invalid_not_an_error(formed, monkeypatch):
    """A sequence whose states turn NaN: its later steps are invalid entries (NaN), as on
    the dense path, instead of ARPACK's "could not build an Arnoldi factorization"."""
    from gradscope.jacobians import krylov

    if not formed:
        monkeypatch.setattr(krylov, "FORMED_MAX_D", 0)
    torch.manual_seed(0)
    layer = gs.trace(torch.nn.LSTM(8, 20), torch.randn(20, 2, 8))[0]
    layer.states[10:, 0] = float("nan")
    kw = {"steps": [5, 12], "batch": [0, 1], "progress": False}
    o = spectrum(layer, "eig", method="operator", k=1, **kw)
    d = spectrum(layer, "eig", method="dense", **kw)
    np.testing.assert_array_equal(o.valid, [[True, True], [False, True]])
    np.testing.assert_array_equal(o.valid, d.valid)
    assert np.isnan(o.radius[1, 0])
    ok = o.valid
    np.testing.assert_allclose(o.radius[ok], d.radius[ok], rtol=1e-5)


def test_operator_radius_is_the_largest_of_a_clustered_spectrum():
    """A random LSTM's one-step spectrum is clustered at its radius (complex pairs ~1e-3
    apart in modulus). With the default tolerance and k=1, ARPACK on a 24-vector basis
    returned a pair below the largest at steps 21 and 33 of this trace (0.3% too small);
    the radius must be the dense one (NumPy's eigvals in float64) to the tolerance."""
    torch.manual_seed(2)
    model = torch.nn.LSTM(32, 256)
    layer = gs.trace(model, torch.randn(60, 2, 32))[0]
    steps = [21, 33]
    J = np.asarray(layer.jacobians(steps=steps, batch=[0]), dtype=np.float64)
    dense = [np.abs(np.linalg.eigvals(j)).max() for j in J.reshape(2, layer.D, layer.D)]
    o = spectrum(layer, "eig", steps=steps, batch=[0], method="operator", k=1, progress=False)
    np.testing.assert_allclose(o.radius.ravel(), dense, rtol=1e-4)


def test_bad_method_names_the_choices():
    tr = _traces()["gru"]
    for fn in (
        lambda: lyapunov(tr, k=2, method="fast"),
        lambda: spectrum(tr, method="fast"),
        lambda: gs.decay(tr, method="fast"),
    ):
        with pytest.raises(ArgumentError, match="'auto', 'dense', 'operator' or 'diagonal'"):
            fn()


def test_float32_trace_operator_path_matches_dense_to_float32_rounding():
    tr = _traces()["lstm"].to(dtype=torch.float32)
    dense = lyapunov(tr, k=4, method="dense")
    op = lyapunov(tr, k=4, method="operator")
    np.testing.assert_allclose(op.exponents, dense.exponents, atol=1e-5)


def test_operator_paths_skip_and_report_nonfinite_steps():
    tr = _tanh(80, 1.2, T=60, B=2)
    tr.states[30, 1] = float("nan")  # J_30 of sequence 1 (from s_30) is NaN
    ly = lyapunov(tr, k=3, method="operator")
    dense = lyapunov(tr, k=3, method="dense")
    assert ly.notes == dense.notes and "first at step 30 of sequence 1" in ly.notes[0]
    np.testing.assert_allclose(ly.per_sequence, dense.per_sequence, atol=1e-9)
    a = decay_curves(tr, ("state",), probes=3, method="operator", basis=ly.vectors)
    b = decay_curves(tr, ("state",), probes=3, method="dense", basis=ly.vectors)
    np.testing.assert_allclose(a[0], b[0], atol=1e-9)  # the walk of sequence 1 stops at 30
    assert np.isnan(a[0][31:, 1]).all() and np.isfinite(a[0][:29, 1]).all()
    assert any("non-finite" in n for n in a[3])


def test_diagonal_method_needs_a_diagonal_transition():
    tr = _traces()["gru"]
    with pytest.raises(ArgumentError, match="needs a diagonal transition"):
        lyapunov(tr, k=2, method="diagonal")


def _count_blocks(monkeypatch):
    """Spy on ForwardQR.block: the lengths of the accepted and rejected blocks."""
    from gradscope.jacobians.products import ForwardQR

    seen = {"accepted": [], "rejected": []}
    orig = ForwardQR.block

    def spy(self, t, m, batch):
        out = orig(self, t, m, batch)
        seen["accepted" if out is not None else "rejected"].append(m)
        return out

    monkeypatch.setattr(ForwardQR, "block", spy)
    return seen


def test_operator_qr_blocks_steps_and_matches_the_one_step_iteration(monkeypatch):
    # A contracting LSTM whose leading exponents are close: blocks grow, one QR per block.
    tr = lstm_trace(_lstm_params(20, 4, seed=1), T=400, B=2)
    dense = lyapunov(tr, k=4, method="dense", discard=7, history=12)
    seen = _count_blocks(monkeypatch)
    op = lyapunov(tr, k=4, method="operator", discard=7, history=12)
    assert sum(seen["accepted"]) > 300 and max(seen["accepted"]) > 4
    # float64: each accepted block perturbs ln|R_ii| by at most 1e6 u ≈ 2e-10
    np.testing.assert_allclose(op.per_sequence, dense.per_sequence, rtol=0, atol=1e-9)
    np.testing.assert_allclose(op.history, dense.history, rtol=0, atol=1e-9)


def test_operator_qr_rejects_ill_conditioned_blocks(monkeypatch):
    # 200 steps of diag(1, e^-0.3, 0.8) let the blocks grow; then diag(1, e^-8, 0.5): the next
    # block has c ≈ 8m > ln 1e6, is rejected and redone one step at a time (and blocking
    # stays off there). The exponents are still the exact per-step means.
    T = 400
    first, second = np.diag([1.0, math.exp(-0.3), 0.8]), np.diag([1.0, math.exp(-8.0), 0.5])
    J = np.stack([first] * 200 + [second] * 200)[:, None]
    seen = _count_blocks(monkeypatch)
    ly = lyapunov(stored_trace(J, K=np.ones((T, 1, 3, 1))), k=3, init="identity", method="operator")
    assert seen["accepted"] and seen["rejected"] and max(seen["accepted"]) > 4
    expected = np.sort([0.0, (-0.3 - 8.0) / 2, (math.log(0.8) + math.log(0.5)) / 2])[::-1]
    np.testing.assert_allclose(ly.exponents, expected, atol=1e-12)
    assert ly.steps == T


def test_float32_operator_blocks_rescale_instead_of_underflowing(monkeypatch):
    # 1e-3 per step: 16 float32 steps would be 1e-48, below float32's range; blocks rescale.
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    tr = linear_trace(1e-3 * q, T=500, B=2).to(dtype=torch.float32)
    seen = _count_blocks(monkeypatch)
    ly = lyapunov(tr, k=3, method="operator")
    assert max(seen["accepted"]) >= 16
    np.testing.assert_allclose(ly.per_sequence, math.log(1e-3), rtol=0, atol=1e-6)


def _jump_trace(first: float, then: float, dtype, T1: int = 300, T2: int = 300):
    """Stored Jacobians ``first · Q`` for ``T1`` steps, then ``then · Q`` (``Q`` orthogonal):
    every exponent is the mean of the per-step logs (theory)."""
    rng = np.random.default_rng(6)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    J = np.stack([first * q] * T1 + [then * q] * T2)[:, None]
    tr = stored_trace(J, K=np.ones((T1 + T2, 1, 6, 1))).to(dtype=dtype)
    return tr, (T1 * math.log(first) + T2 * math.log(then)) / (T1 + T2)


def test_float32_range_checks_follow_the_rate_and_survive_a_sudden_contraction(monkeypatch):
    """Slow decay: one range check per block, not one every 4 steps. When the rate jumps to
    1e-6 per step, the first block checked that sparsely leaves float32's range, is
    rejected and redone step by step; then the checks come every few steps."""
    from gradscope.jacobians.steps import StepOps

    tr, expected = _jump_trace(0.9, 1e-6, torch.float32)
    runs = []
    orig = StepOps.jvp_run

    def spy(self, t, m, *a, **kw):
        runs.append((t, m))
        return orig(self, t, m, *a, **kw)

    monkeypatch.setattr(StepOps, "jvp_run", spy)
    seen = _count_blocks(monkeypatch)
    ly = lyapunov(tr, k=3, method="operator", discard=0)
    assert max(m for t, m in runs if t < 300) > 8  # one range check for a long block
    assert seen["rejected"]  # the first sparse block after the jump left the range
    assert max(m for t, m in runs if t >= 380) <= 4  # then checked every few steps
    np.testing.assert_allclose(ly.exponents, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blocks_that_underflow_to_zero_are_not_accepted(dtype):
    """1e-30 per step: a few products underflow to exactly zero (cond = -inf), which used to
    pass the acceptance test with floored logs (-29.9 instead of -34.6). Now such blocks
    are redone step by step and the range is checked every step at this rate: theory to
    1e-6 (float32 products) or 1e-12."""
    tr, expected = _jump_trace(0.9, 1e-30, dtype)
    ly = lyapunov(tr, k=3, method="operator", discard=0)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(ly.exponents, expected, rtol=0, atol=tol)
    if dtype == torch.float32:  # 1e-100 is 0 in float32: singular steps, floored as dense
        tr0, _ = _jump_trace(0.9, 1e-100, dtype)
        dense = lyapunov(tr0, k=3, method="dense", discard=0)
        op = lyapunov(tr0, k=3, method="operator", discard=0)
        floored = (300 * math.log(0.9) + 300 * LOG_TINY) / 600
        np.testing.assert_allclose([op.exponents, dense.exponents], floored, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_columns_top_singular_log_equals_numpy_spectral_norms(dtype):
    """ln ‖Z_n‖₂ of the columns layout against NumPy's 2-norm; a zero block gives -inf and a
    non-finite one NaN, without touching the other blocks; blocks whose squares leave the
    dtype's range."""
    from gradscope.jacobians.products import columns_top_singular_log

    rng = np.random.default_rng(7)
    D, n, p = 40, 5, 6
    z = rng.standard_normal((D, n, p))
    z[:, 1] *= 1e-30  # float32 squares underflow: measured again in float64
    z[:, 3] *= 1e300 if dtype == torch.float64 else 1e25  # squares overflow: scaled
    z[:, 2] = 0.0
    z[5, 4, 1] = np.nan
    zt = torch.from_numpy(z).to(dtype)
    got = columns_top_singular_log(zt).numpy()
    ref = zt.double().numpy()
    for b in (0, 1, 3):
        np.testing.assert_allclose(got[b], np.log(np.linalg.norm(ref[:, b], 2)), rtol=1e-12)
    assert got[2] == -np.inf and np.isnan(got[4])
    one = columns_top_singular_log(zt[:, :, :1]).numpy()  # p = 1: the vector norms
    np.testing.assert_allclose(one[0], np.log(np.linalg.norm(ref[:, 0, 0])), rtol=1e-12)


def test_columns_top_singular_log_float32_gram_to_float32_rounding():
    """Ordinary float32 blocks take the float32 Gram path: equal to float32 rounding."""
    from gradscope.jacobians.products import columns_top_singular_log

    rng = np.random.default_rng(8)
    zt = torch.from_numpy(rng.standard_normal((512, 4, 16))).to(torch.float32)
    got = columns_top_singular_log(zt).numpy()
    ref = zt.double().numpy()
    want = [np.log(np.linalg.norm(ref[:, b], 2)) for b in range(4)]
    np.testing.assert_allclose(got, want, rtol=0, atol=5e-6)
