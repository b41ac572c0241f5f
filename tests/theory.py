"""Shared helpers for the analysis tests: test traces with known answers, and the theory.

Everything here is an *independent reference*: closed forms (Newman's spectrum of Gaussian
products, the mean-field exponent of random tanh networks) evaluated with SciPy, and traces
built by running the recurrences directly, never with the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from gradscope.cells.base import CellAdapter, Params
from gradscope.cells.lstm import LSTMAdapter
from gradscope.cells.vanilla import VanillaAdapter
from gradscope.traces import LayerTrace


# --------------------------------------------------------------------------- adapters
class LinearAdapter(CellAdapter):
    """``h_t = W h_{t-1} + U x_t``: Jacobians ``W`` and ``U`` at every step."""

    kind = "test_linear"
    state_names = ("h",)

    def state_sizes(self, params: Params) -> tuple[int, ...]:
        return (int(params["weight_hh"].shape[0]),)

    def step(self, params: Params, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return s @ params["weight_hh"].T + x @ params["weight_ih"].T

    def jacobian_state(self, params: Params, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return params["weight_hh"].expand(x.shape[0], -1, -1).clone()

    def jacobian_input(self, params: Params, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return params["weight_ih"].expand(x.shape[0], -1, -1).clone()


def run_cell(
    adapter: CellAdapter,
    params: Params,
    x: torch.Tensor,
    s0: torch.Tensor,
    *,
    name: str = "test",
    lengths: np.ndarray | None = None,
    kind: str | None = None,
    sizes: tuple[int, ...] | None = None,
) -> LayerTrace:
    """Run ``s_t = step(x_t, s_{t-1})`` for ``x`` ``(T, B, I)`` and wrap it in a LayerTrace."""
    T = x.shape[0]
    states = [s0]
    for t in range(T):
        states.append(adapter.step(params, x[t], states[-1]))
    st = torch.stack(states)
    xs = x.clone()
    if lengths is not None:
        for b, n in enumerate(lengths):
            st[n + 1 :, b] = float("nan")
            xs[n:, b] = float("nan")
    return LayerTrace(
        name=name,
        kind=kind or adapter.kind,
        states=st,
        inputs=xs,
        lengths=lengths,
        state_names=adapter.state_names,
        state_sizes=sizes or tuple(adapter.state_sizes(params)),
        params=params,
        adapter=adapter,
    )


def linear_trace(
    W: np.ndarray, T: int, B: int = 2, I: int = 3, seed: int = 0, lengths=None
) -> LayerTrace:
    """A linear cell with weight ``W`` driven by random inputs (``U`` random, float64)."""
    rng = np.random.default_rng(seed)
    D = W.shape[0]
    params = {
        "weight_hh": torch.as_tensor(W, dtype=torch.float64),
        "weight_ih": torch.as_tensor(rng.standard_normal((D, I)), dtype=torch.float64),
    }
    x = torch.as_tensor(rng.standard_normal((T, B, I)) * 0.1, dtype=torch.float64)
    s0 = torch.zeros(B, D, dtype=torch.float64)
    return run_cell(LinearAdapter(), params, x, s0, lengths=lengths)


def stored_trace(
    J: np.ndarray,
    K: np.ndarray | None = None,
    lengths: np.ndarray | None = None,
    grads: np.ndarray | None = None,
    name: str = "stored",
) -> LayerTrace:
    """A LayerTrace whose Jacobians are given: ``J`` ``(T, B, D, D)``, ``K`` ``(T, B, D, I)``."""
    T, B, D, _ = J.shape
    stored = {"state": torch.as_tensor(J, dtype=torch.float64)}
    I = 1
    if K is not None:
        stored["input"] = torch.as_tensor(K, dtype=torch.float64)
        I = K.shape[-1]
    states = torch.zeros(T + 1, B, D, dtype=torch.float64)
    inputs = torch.zeros(T, B, I, dtype=torch.float64)
    if lengths is not None:
        for b, n in enumerate(lengths):
            states[n + 1 :, b] = float("nan")
            inputs[n:, b] = float("nan")
    return LayerTrace(
        name=name,
        kind="test_stored",
        states=states,
        inputs=inputs,
        lengths=lengths,
        state_names=("h",),
        state_sizes=(D,),
        params={},
        stored_jacobians=stored,
        grads=None if grads is None else torch.as_tensor(grads, dtype=torch.float64),
    )


def tanh_rnn_trace(
    N: int, g: float, T: int, B: int = 2, seed: int = 0, h_scale: float = 1.0
) -> LayerTrace:
    """The autonomous random network ``h_{t+1} = tanh(g W h_t)``, ``W_ij ~ N(0, 1/N)``.

    Uses the built-in vanilla adapter (kind ``"rnn_tanh"``) with ``weight_ih = 0`` and no bias.
    """
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((N, N)) / math.sqrt(N)
    params = {
        "weight_hh": torch.as_tensor(g * W, dtype=torch.float64),
        "weight_ih": torch.zeros(N, 1, dtype=torch.float64),
    }
    x = torch.zeros(T, B, 1, dtype=torch.float64)
    s0 = torch.as_tensor(rng.standard_normal((B, N)) * h_scale, dtype=torch.float64)
    return run_cell(VanillaAdapter("tanh"), params, x, s0, kind="rnn_tanh")


def saturated_lstm_params(H: int, I: int, seed: int = 0, gate: float = 40.0) -> Params:
    """LSTM weights with the forget gate saturated open and the input gate shut.

    Biases ``+gate`` on ``f`` and ``-gate`` on ``i``: ``f = σ(40) = 1 - 4e-18`` (exactly 1.0 in
    float64) and ``i = σ(-40) ≈ 4e-18``, so ``c_t = c_{t-1}`` and the c-to-c Jacobian block is
    the identity, whatever ``W`` is.
    """
    rng = np.random.default_rng(seed)
    w_ih = rng.standard_normal((4 * H, I)) / math.sqrt(I)
    w_hh = rng.standard_normal((4 * H, H)) * 0.5 / math.sqrt(H)
    b = np.zeros(4 * H)
    b[0:H] = -gate  # input gate shut
    b[H : 2 * H] = gate  # forget gate open
    return {
        "weight_ih": torch.as_tensor(w_ih, dtype=torch.float64),
        "weight_hh": torch.as_tensor(w_hh, dtype=torch.float64),
        "bias_ih": torch.as_tensor(b, dtype=torch.float64),
        "bias_hh": torch.zeros(4 * H, dtype=torch.float64),
    }


def lstm_trace(params: Params, T: int, B: int = 2, seed: int = 0) -> LayerTrace:
    """Run the LSTM adapter's step (state ``(h, c)``) on random inputs."""
    rng = np.random.default_rng(seed)
    H = int(params["weight_hh"].shape[1])
    I = int(params["weight_ih"].shape[1])
    x = torch.as_tensor(rng.standard_normal((T, B, I)), dtype=torch.float64)
    s0 = torch.as_tensor(rng.standard_normal((B, 2 * H)) * 0.5, dtype=torch.float64)
    return run_cell(LSTMAdapter(), params, x, s0, kind="lstm")


# --------------------------------------------------------------------------- theory
# Closed forms (Newman 1986, mean-field tanh RNN) live in gradscope.theory.


def qr_loop(J: np.ndarray, k: int | None = None) -> np.ndarray:
    """A plain NumPy QR loop over ``J`` ``(T, D, D)`` from ``Q_0 = I[:, :k]``; sorted exponents."""
    T, D, _ = J.shape
    k = D if k is None else k
    Q = np.eye(D)[:, :k]
    s = np.zeros(k)
    for t in range(T):
        Q, R = np.linalg.qr(J[t] @ Q)
        s += np.log(np.abs(np.diag(R)))
    return np.sort(s / T)[::-1]
