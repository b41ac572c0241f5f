"""Recording under ``torch.autocast`` and with users' forward hooks.

Under autocast a module runs in a lower precision than its weights: the replay runs in the
weights' dtype and must match the module to the autocast dtype's tolerance; a real
discrepancy there names autocast. A fused module's own output is recorded before a user's
forward hook can change it (the hook is downstream of the recurrence); a cell's next call
reads what the hook returned, so a changing hook on a cell is named in the error.
References: the modules' own forwards, and autograd in float64 through unrolled loops.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from unrolled import assert_norms_close, unrolled_norms

import gradscope as gs
from gradscope.errors import ReplayMismatchError
from gradscope.monitor import Monitor

pytestmark = pytest.mark.usefixtures("one_thread")
BF16 = torch.bfloat16


def _autocast():
    return torch.autocast("cpu", dtype=BF16)


@pytest.mark.parametrize("cls", [nn.GRU, nn.RNN])
def test_fused_module_under_autocast_is_recorded_in_its_weights_dtype(cls):
    torch.manual_seed(0)
    rnn = cls(4, 8)
    x = torch.randn(20, 3, 4)
    with torch.no_grad():
        own, _ = rnn(x)  # float32, outside autocast: the recurrence the weights define
        with _autocast():
            low, _ = rnn(x)
    with _autocast():
        tr = gs.trace(rnn, x)
    layer = tr.layers[0]
    assert layer.meta["autocast"] == "bfloat16" and layer.states.dtype == torch.float32
    torch.testing.assert_close(layer.states[1:], own, rtol=0, atol=1e-5)
    err = float((layer.states[1:] - low.float()).abs().max())
    assert 1e-4 < err < 1e-2  # the module really ran in bfloat16; within its precision


def test_monitor_under_autocast_matches_the_float64_gradients_to_bfloat16_precision():
    torch.manual_seed(1)
    gru = nn.GRU(3, 5)
    x = torch.randn(12, 2, 3)
    ref = unrolled_norms(gru.double(), x.double(), None, lambda out, _: (out**2).sum())["l0"]
    gru.float()
    with Monitor(gru, every=1, analyze=False) as mon:
        with _autocast():
            out, _ = gru(x)
            (out.float() ** 2).sum().backward()
        mon.step()
    got = mon.history.grad_norms("gru.l0")[0]
    np.testing.assert_allclose(got, ref, rtol=3e-2)  # bfloat16 has 8 significant bits
    assert mon.latest.trace["gru.l0"].meta["autocast"] == "bfloat16"


def test_rnn_cell_under_autocast_returns_bfloat16_and_is_recorded():
    torch.manual_seed(2)
    cell = nn.RNNCell(3, 4)

    class Loop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = cell

        def forward(self, x):
            h = torch.zeros(x.shape[1], 4)
            for t in range(x.shape[0]):
                h = self.cell(x[t], h)
            return h

    x = torch.randn(10, 2, 3)
    with _autocast():
        assert cell(x[0]).dtype == BF16
        tr = gs.trace(Loop(), x)
    layer = tr["cell"]
    assert layer.states.dtype == torch.float32 and layer.meta["autocast"] == "bfloat16"
    with torch.no_grad():  # the float32 recurrence, step by step from the recorded states
        own = torch.stack([cell(layer.inputs[t], layer.states[t]) for t in range(10)])
    torch.testing.assert_close(layer.states[1:], own, rtol=0, atol=2e-2)


class Shifted(nn.RNN):
    """Not PyTorch's equations: the output is moved after the recurrence."""

    def forward(self, x, h=None):
        out, h = super().forward(x, h)
        return out + 0.5, h + 0.5


def test_a_real_mismatch_under_autocast_names_autocast():
    torch.manual_seed(3)
    with _autocast(), pytest.raises(ReplayMismatchError, match=r"torch\.autocast in bfloat16"):
        gs.trace(Shifted(2, 3), torch.randn(5, 1, 2))


def test_a_forward_hook_that_changes_a_fused_output_is_downstream():
    """The LSTM's own output is recorded; the hook's doubling is part of the loss."""
    torch.manual_seed(4)
    lstm = nn.LSTM(3, 4).double()
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        own, _ = lstm(x)
    ref = unrolled_norms(lstm, x, None, lambda out, _: ((2 * out) ** 2).sum())["l0"]
    handle = lstm.register_forward_hook(lambda m, args, out: (2 * out[0], out[1]))
    try:
        with gs.record(lstm, grads=True) as rec:
            out, _ = lstm(x)
        (out**2).sum().backward()
    finally:
        handle.remove()
    layer = rec.trace["lstm.l0"]
    torch.testing.assert_close(layer.states[1:, :, :4], own, rtol=1e-12, atol=1e-14)
    assert_norms_close(layer.grad_norms().mean(axis=1), ref)


def test_a_forward_hook_that_changes_a_cell_output_is_named():
    torch.manual_seed(5)
    cell = nn.LSTMCell(3, 4)

    def halve_h(module, args, out):
        return 0.5 * out[0], out[1]

    class Loop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = cell

        def forward(self, x):
            state = None
            for t in range(x.shape[0]):
                state = self.cell(x[t], state)
            return state

    cell.register_forward_hook(halve_h)
    with pytest.raises(
        ReplayMismatchError, match=r"forward hooks that are not gradscope's \(.*halve_h"
    ):
        gs.trace(Loop(), torch.randn(5, 2, 3))


def test_a_global_forward_hook_that_changes_a_fused_output_is_named():
    torch.manual_seed(6)
    gru = nn.GRU(2, 3)

    def shift_gru(module, args, out):
        return (out[0] + 1.0, out[1] + 1.0) if module is gru else None

    handle = nn.modules.module.register_module_forward_hook(shift_gru)
    try:
        with pytest.raises(ReplayMismatchError, match=r"not gradscope's \(.*shift_gru"):
            gs.trace(gru, torch.randn(4, 1, 2))
    finally:
        handle.remove()
