"""A fused module called step by step with its state carried on is one layer, like a cell loop.

References: the modules' own forwards (the states), autograd in float64 through hand-unrolled
cell loops (the loss gradients, :mod:`unrolled`), and the ``nn.LSTMCell`` version of the same
decoder loop (the same states, gradients and verdict).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from unrolled import assert_norms_close, unrolled_norms

import gradscope as gs
from gradscope.monitor import Monitor

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


class Decoder(nn.Module):
    """A seq2seq decoder loop: each step's prediction is the next step's input."""

    def __init__(self, fused: bool) -> None:
        super().__init__()
        self.fused = fused
        self.rnn = nn.LSTM(3, 5) if fused else nn.LSTMCell(3, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x, state, steps: int):
        outs, states = [], []
        for _ in range(steps):
            if self.fused:
                o, state = self.rnn(x.unsqueeze(0), state)  # T = 1 per call
                h = o[0]
                states.append(torch.cat([state[0][0], state[1][0]], -1))
            else:
                state = self.rnn(x, state)
                h = state[0]
                states.append(torch.cat(state, -1))
            x = torch.tanh(self.out(h))
            outs.append(x)
        return torch.stack(outs), torch.stack(states)


def _decoders() -> tuple[Decoder, Decoder]:
    fused, cell = Decoder(True).double(), Decoder(False).double()
    with torch.no_grad():
        for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell.rnn, n).copy_(getattr(fused.rnn, n + "_l0"))
        cell.out.load_state_dict(fused.out.state_dict())
    return fused, cell


def test_lstm_called_one_step_at_a_time_is_one_layer_like_lstm_cell():
    torch.manual_seed(0)
    fused, cell = _decoders()
    T, B = 40, 2
    x0, h0, c0 = (torch.randn(B, d, dtype=F64) for d in (3, 5, 5))
    traces, own = {}, {}
    for name, model, state in (("fused", fused, (h0[None], c0[None])), ("cell", cell, (h0, c0))):
        with gs.record(model, grads=True) as rec:
            y, states = model(x0, state, T)
        (y[-1] ** 2).sum().backward()
        traces[name], own[name] = rec.trace, states.detach()
    fl, cl = traces["fused"]["rnn.l0"], traces["cell"]["rnn"]
    assert traces["fused"].names == ["rnn.l0"]  # one layer, not 40 layers of T = 1
    assert fl.T == cl.T == T and fl.meta["calls"] == T
    # the states are the modules' own outputs, and the same in both loops
    torch.testing.assert_close(fl.states[1:], own["fused"], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fl.states[0], torch.cat([h0, c0], -1), rtol=0, atol=0)
    torch.testing.assert_close(fl.states, cl.states, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fl.grads, cl.grads, rtol=1e-10, atol=1e-14)
    # and the same diagnosis
    df = gs.diagnose(traces["fused"], progress=False).layers[0]
    dc = gs.diagnose(traces["cell"], progress=False).layers[0]
    assert df.regime == dc.regime == "vanishing"
    for of in ("state", "loss"):
        assert df.decay[of].rate == pytest.approx(dc.decay[of].rate, rel=1e-9)
    assert df.verdict.replace("rnn.l0", "rnn") == dc.verdict


def test_chained_calls_give_the_gradients_of_one_long_sequence():
    """A 2-layer GRU called 4 times on T = 2 chunks, state carried on: one sequence of 8."""
    torch.manual_seed(1)
    gru = nn.GRU(3, 4, num_layers=2).double()
    xs = [torch.randn(2, 2, 3, dtype=F64) for _ in range(4)]

    def loss_of(out, _):
        return (out**2).sum() + out[:, 0].sum()

    ref = unrolled_norms(gru, torch.cat(xs), None, loss_of)
    with torch.no_grad():
        whole, _ = gru(torch.cat(xs))
    mon = Monitor(gru, every=1, analyze=False)
    h, outs = None, []
    for x in xs:
        out, h = gru(x, h)
        outs.append(out)
    loss_of(torch.cat(outs), h).backward()
    mon.step()
    mon.close()
    assert mon.history.names == ["gru.l0", "gru.l1"]
    for k in ("l0", "l1"):
        assert_norms_close(mon.history.grad_norms(f"gru.{k}")[0], ref[k])
    layer = mon.latest.trace["gru.l1"]
    assert layer.T == 8 and layer.meta["steps_per_call"] == [2, 2, 2, 2]
    torch.testing.assert_close(layer.states[1:], whole, rtol=1e-12, atol=1e-14)


def test_detached_state_chains_a_fresh_state_does_not():
    torch.manual_seed(2)
    lstm = nn.LSTM(2, 3).double()

    def run(carry: bool) -> None:
        h = None
        for _ in range(3):
            _, h = lstm(torch.randn(2, 1, 2, dtype=F64), h)
            h = tuple(t.detach() for t in h) if carry else None

    with gs.record(lstm) as rec:
        run(carry=True)  # truncated BPTT: the state's values carried on
    assert rec.trace.names == ["lstm.l0"] and rec.trace["lstm.l0"].T == 6
    with gs.record(lstm) as rec:
        run(carry=False)  # each call starts from zeros: three sequences
    assert rec.trace.names == ["lstm.l0", "lstm.l0@1", "lstm.l0@2"]


def test_bidirectional_calls_never_chain():
    torch.manual_seed(3)
    lstm = nn.LSTM(2, 3, bidirectional=True).double()
    with gs.record(lstm) as rec:
        _, h = lstm(torch.randn(2, 1, 2, dtype=F64))
        lstm(torch.randn(2, 1, 2, dtype=F64), h)
    assert rec.trace.names == [
        "lstm.l0",
        "lstm.l0_reverse",
        "lstm.l0@1",
        "lstm.l0_reverse@1",
    ]
    assert np.all([layer.T == 2 for layer in rec.trace.layers])
