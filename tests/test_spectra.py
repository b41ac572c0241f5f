"""One-step spectra against independent references (autograd Jacobians, numpy.linalg)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from theory import stored_trace, tanh_rnn_trace
from torch.func import jacrev

from gradscope._json import jsonable
from gradscope.analysis.spectra import Spectrum, spectrum


def _autograd_jacobians(tr):
    """∂s_{k+1}/∂s_k from torch.func.jacrev of tanh(W_hh h + W_ih x), float64."""
    W, U = tr.params["weight_hh"], tr.params["weight_ih"]
    out = np.empty((tr.T, tr.B, tr.D, tr.D))
    for k in range(tr.T):
        for b in range(tr.B):
            f = lambda h, x=tr.inputs[k, b]: torch.tanh(W @ h + U @ x)  # noqa: E731
            out[k, b] = jacrev(f)(tr.states[k, b]).numpy()
    return out


def test_eigenvalues_match_numpy_on_autograd_jacobians():
    tr = tanh_rnn_trace(N=7, g=1.7, T=12, B=2)
    sp = spectrum(tr, "eig")
    ref = _autograd_jacobians(tr)
    for k in range(tr.T):
        for b in range(tr.B):
            ev = np.linalg.eigvals(ref[k, b])
            ev = ev[np.argsort(-np.abs(ev), kind="stable")]
            # closed-form vs autograd Jacobians agree to ~1e-15; eigenvalues of a
            # well-conditioned 7×7 matrix move by at most ~1e-13 under such perturbations.
            np.testing.assert_allclose(np.abs(sp.values[k, b]), np.abs(ev), atol=1e-12)
            np.testing.assert_allclose(
                np.sort_complex(sp.values[k, b]), np.sort_complex(ev), atol=1e-10
            )
    assert sp.values.dtype == np.complex128
    assert np.all(np.diff(np.abs(sp.values), axis=-1) <= 1e-15)  # sorted by modulus
    np.testing.assert_allclose(sp.radius, np.abs(sp.values[..., 0]))


def test_singular_values_and_norm():
    tr = tanh_rnn_trace(N=6, g=1.3, T=10, B=3)
    sp = spectrum(tr, "svd", steps=[1, 4, 9], batch=[0, 2])
    ref = _autograd_jacobians(tr)
    np.testing.assert_array_equal(sp.steps, [1, 4, 9])
    np.testing.assert_array_equal(sp.batch, [0, 2])
    for i, k in enumerate([1, 4, 9]):
        for j, b in enumerate([0, 2]):
            # singular values are perfectly conditioned (Weyl): error ≤ ‖ΔJ‖ ≈ 1e-15.
            np.testing.assert_allclose(
                sp.values[i, j], np.linalg.svd(ref[k, b], compute_uv=False), atol=1e-12
            )
            assert sp.norm[i, j] == pytest.approx(np.linalg.norm(ref[k, b], 2), abs=1e-12)
    assert np.all(np.diff(sp.values, axis=-1) <= 0)


def test_padded_and_nonfinite_entries_are_invalid():
    T, D = 6, 3
    J = np.broadcast_to(np.diag([2.0, 0.5, 0.1]), (T, 2, D, D)).copy()
    J[1, 0, 0, 0] = np.inf
    sp = spectrum(stored_trace(J, lengths=np.array([T, 4])), "eig")
    expected_valid = np.ones((T, 2), bool)
    expected_valid[4:, 1] = False  # padding
    expected_valid[1, 0] = False  # non-finite
    np.testing.assert_array_equal(sp.valid, expected_valid)
    assert np.all(np.isnan(sp.values[~expected_valid]))
    assert np.all(np.isnan(sp.radius[~expected_valid]))
    np.testing.assert_allclose(sp.radius[expected_valid], 2.0)
    s = sp.summary()
    assert s["n"] == expected_valid.sum()
    assert s["median"] == pytest.approx(2.0) and s["frac_above_1"] == 1.0


def test_summary_statistics():
    T = 5
    J = np.stack([np.diag([r, 0.1]) for r in [0.5, 0.9, 1.1, 1.3, 2.0]])[:, None]
    s = spectrum(stored_trace(J), "eig").summary()
    assert s["median"] == pytest.approx(1.1)
    assert s["mean"] == pytest.approx(np.mean([0.5, 0.9, 1.1, 1.3, 2.0]))
    assert s["min"] == 0.5 and s["max"] == 2.0
    assert s["frac_above_1"] == pytest.approx(3 / 5)
    assert s["n"] == T
    assert s["p05"] == pytest.approx(np.percentile([0.5, 0.9, 1.1, 1.3, 2.0], 5))


def test_empty_summary_is_nan():
    J = np.full((3, 1, 2, 2), np.nan)
    s = spectrum(stored_trace(J), "svd").summary()
    assert s["n"] == 0 and np.isnan(s["median"])


def test_wrong_property_and_argument_errors():
    tr = tanh_rnn_trace(N=3, g=1.0, T=4, B=1)
    with pytest.raises(AttributeError, match="which='svd'"):
        _ = spectrum(tr, "svd").radius
    with pytest.raises(AttributeError, match="which='eig'"):
        _ = spectrum(tr, "eig").norm
    with pytest.raises(ValueError, match="which"):
        spectrum(tr, "qr")


def test_chunking_does_not_change_the_result():
    tr = tanh_rnn_trace(N=5, g=1.5, T=30, B=2)
    a, b = spectrum(tr, "svd", chunk=7), spectrum(tr, "svd", chunk=64)
    # to rounding, not bitwise: a chunk's pre-activations are one GEMM over its rows, and MKL's
    # AVX-512 kernels round a product of 1-4 rows (the last chunk of 7 steps here) differently
    # from the same rows inside a taller one (measured: 5 ulp at most)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-14, atol=0)


def test_to_dict_is_strict_json_with_documented_convention():
    J = np.broadcast_to(np.array([[0.0, -1.0], [1.0, 0.0]]), (2, 1, 2, 2)).copy()
    J[1] = np.nan
    sp = spectrum(stored_trace(J), "eig")
    assert isinstance(sp, Spectrum)
    d = json.loads(json.dumps(sp.to_dict(), allow_nan=False))
    assert d["values"][0][0][0] in ([0.0, 1.0], [0.0, -1.0])  # complex → [re, im]
    assert d["values"][1][0][0] == ["nan", "nan"]  # NaN → "nan"
    assert jsonable(float("inf")) == "inf" and jsonable(-float("inf")) == "-inf"
    assert jsonable(np.array([1, 2])) == [1, 2]
