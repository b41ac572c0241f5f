"""A numerical failure (LAPACK's SVD not converging) never reads as a calm verdict (#14 case 4).

The cell is a ReLU RNN whose every unit is active and whose recurrent matrix is
``diag(g, g(1−1e-6), 0.5, ...)``: the step Jacobian is that matrix exactly, so
``‖∂s_T/∂s_(T−k)‖₂ = g^k`` (theory), and the two close leading singular values make the power
iteration of the decay walk hand over to an SVD at every lag.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

import gradscope as gs
from gradscope.errors import GradscopeError, NumericalError

G = 1.5


@pytest.fixture
def layer():
    torch.manual_seed(0)
    rnn = torch.nn.RNN(2, 6, nonlinearity="relu").double()
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(torch.diag(torch.tensor([G, G * (1 - 1e-6), 0.5, 0.5, 0.5, 0.5])))
        rnn.bias_ih_l0.fill_(10.0)  # every pre-activation positive: J_t = W_hh
    return gs.trace(rnn, torch.rand(30, 2, 2, dtype=torch.float64))[0]


def _failing(calls: list[str], name: str):
    def fail(*args, **kwargs):
        calls.append(name)
        raise np.linalg.LinAlgError("SVD did not converge")

    return fail


def test_svd_failure_falls_back_to_another_driver(layer, monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(np.linalg, "svd", _failing(calls, "gesdd"))
    d = gs.decay(layer, progress=False)
    assert "gesdd" in calls  # the SVD path was taken, and failed
    assert d.rate == pytest.approx(math.log(G), rel=1e-6)
    assert d.regime == "exploding"


def test_when_every_method_fails_the_regime_is_unknown(layer, monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(np.linalg, "svd", _failing(calls, "gesdd"))
    monkeypatch.setattr(scipy.linalg, "svd", _failing(calls, "gesvd"))
    monkeypatch.setattr(np.linalg, "eigh", _failing(calls, "eigh"))
    with pytest.raises(NumericalError, match="could not be computed") as info:
        gs.decay(layer, progress=False)
    assert isinstance(info.value, GradscopeError)
    assert not isinstance(info.value, np.linalg.LinAlgError)
    d = gs.diagnose(layer, progress=False)[0]
    assert d.regime == "unknown"
    assert "SVD did not converge" in d.reason
    text = str(gs.diagnose(layer, progress=False))
    assert "Regime unknown" in text and "too few steps" not in text
    assert "no action needed" not in text.lower()


def test_eig_failure_in_the_spectra_is_not_an_exception(layer, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise torch.linalg.LinAlgError("The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "eigvals", fail)
    spec = gs.spectrum(layer, "eig", progress=False)
    np.testing.assert_allclose(spec.radius[spec.valid], G)  # SciPy's geev, by theory
