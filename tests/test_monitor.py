"""Monitor: exact ∂L/∂s_t during training, without changing training.

References are independent of gradscope: the loss gradients are compared with a hand-unrolled
autograd computation in float64 (explicit loops over ``nn.LSTMCell`` / ``nn.GRUCell`` copies
holding the fused module's weights, ``retain_grad()`` on every state), and "training is not
changed" is checked bit for bit against the same training run without a Monitor.
"""

from __future__ import annotations

import copy
import gc
import json
import math
import os
import random
import weakref
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import gradscope as gs
from gradscope.errors import GradscopeError, MissingDataError
from gradscope.monitor import (
    SUMMARY_KEYS,
    At,
    Every,
    Logarithmic,
    Monitor,
    grad_norms,
    load_history,
)
from gradscope.traces import LayerTrace

# float64 throughout the gradient comparisons: the replay and the unrolled reference sum
# the same products in different orders, so they agree to a few ulps (~1e-15 relative) per
# step; over T <= 8 steps and D <= 16 state entries that stays far below 1e-8. The absolute
# floor covers entries that are exactly zero in one computation and ~1e-17 in the other.
RTOL = 1e-8


def _assert_grads_close(got: torch.Tensor, ref: torch.Tensor) -> None:
    assert got.shape == ref.shape
    nan_got, nan_ref = torch.isnan(got), torch.isnan(ref)
    assert torch.equal(nan_got, nan_ref), "padding (NaN) pattern differs"
    scale = float(ref[~nan_ref].abs().max())
    torch.testing.assert_close(
        got[~nan_got], ref[~nan_ref], rtol=RTOL, atol=1e-13 * max(scale, 1.0)
    )


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- references
def _cell_copy(rnn: nn.RNNBase, layer: int, reverse: bool) -> nn.Module:
    """An nn.LSTMCell / nn.GRUCell holding one layer and direction of a fused module."""
    sfx = f"_l{layer}" + ("_reverse" if reverse else "")
    cls = nn.LSTMCell if isinstance(rnn, nn.LSTM) else nn.GRUCell
    w_ih = getattr(rnn, "weight_ih" + sfx)
    cell = cls(w_ih.shape[1], rnn.hidden_size).to(w_ih.dtype)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(rnn, name + sfx))
    return cell


def _unrolled_reference(rnn: nn.RNNBase, x: torch.Tensor, lengths, loss_fn) -> dict:
    """∂L/∂s_t of every layer/direction by explicit cell loops, one sequence at a time.

    Returns ``{name: (T+1, B, D)}`` in processing order (a reverse direction's step k reads
    position L_b - 1 - k), NaN beyond each sequence's length, plus the loss under "loss".
    """
    T, B, _ = x.shape
    lstm = isinstance(rnn, nn.LSTM)
    dirs = 2 if rnn.bidirectional else 1
    H = rnn.hidden_size
    cells = {(l, d): _cell_copy(rnn, l, d == 1) for l in range(rnn.num_layers) for d in range(dirs)}
    seqs: dict[tuple[int, int, int], list[tuple[torch.Tensor, ...]]] = {}
    outs = []
    for b in range(B):
        n = int(lengths[b])
        inp = [x[t, b : b + 1] for t in range(n)]
        for l in range(rnn.num_layers):
            per_dir = []
            for d in range(dirs):
                h = torch.zeros(1, H, dtype=x.dtype, requires_grad=True)
                c = torch.zeros(1, H, dtype=x.dtype, requires_grad=True)
                seq = [(h, c) if lstm else (h,)]
                out_t: list[torch.Tensor | None] = [None] * n
                for t in range(n) if d == 0 else reversed(range(n)):
                    # s_t = (h_t, c_t) is the step's output: identity nodes after the cell,
                    # so that ∂L/∂c_t holds h_t fixed (the path c_t -> h_t inside the step
                    # belongs to J_t, not to g_t)
                    if lstm:
                        h, c = (p + 0.0 for p in cells[(l, d)](inp[t], (h, c)))
                        c.retain_grad()
                    else:
                        h = cells[(l, d)](inp[t], h) + 0.0
                    h.retain_grad()
                    seq.append((h, c) if lstm else (h,))
                    out_t[t] = h
                seqs[(l, d, b)] = seq
                per_dir.append(out_t)
            inp = [torch.cat([per_dir[d][t] for d in range(dirs)], dim=-1) for t in range(n)]
        outs.append(torch.cat([*inp, x.new_zeros(T - n, dirs * H)], dim=0))
    out = torch.stack(outs, dim=1)
    finals = [
        [
            torch.cat([seqs[(l, d, b)][-1][j] for b in range(B)])
            for l in range(rnn.num_layers)
            for d in range(dirs)
        ]
        for j in range(2 if lstm else 1)
    ]
    h_n = torch.stack(finals[0])
    c_n = torch.stack(finals[1]) if lstm else None
    loss = loss_fn(out, h_n, c_n)
    loss.backward()
    result = {"loss": loss.detach()}
    D = 2 * H if lstm else H
    for l in range(rnn.num_layers):
        for d in range(dirs):
            g = torch.full((T + 1, B, D), math.nan, dtype=x.dtype)
            for b in range(B):
                for t, parts in enumerate(seqs[(l, d, b)]):
                    g[t, b] = torch.cat(
                        [p.grad[0] if p.grad is not None else torch.zeros(H) for p in parts]
                    )
            result[f"rnn.l{l}" + ("_reverse" if d else "")] = g
    return result


def _norms_of(g: torch.Tensor) -> np.ndarray:
    """Batch mean over the non-NaN sequences of the per-sequence norm, by explicit loops."""
    out = []
    for t in range(g.shape[0]):
        vals = [
            math.sqrt(sum(float(v) ** 2 for v in g[t, b]))
            for b in range(g.shape[1])
            if not torch.isnan(g[t, b]).any()
        ]
        out.append(sum(vals) / len(vals) if vals else math.nan)
    return np.array(out)


class FusedNet(nn.Module):
    def __init__(self, rnn: nn.RNNBase) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor, lengths=None):
        if lengths is None:
            return self.rnn(x)
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, hidden = self.rnn(packed)
        out, _ = pad_packed_sequence(out, total_length=x.shape[0])
        return out, hidden


def _loss_fn(weights: dict[str, torch.Tensor]):
    def loss_fn(out, h_n, c_n):
        loss = (torch.tanh(out) * weights["out"][: out.shape[0]]).sum()
        loss = loss + (h_n * weights["h"]).sum()
        if c_n is not None:
            loss = loss + (c_n**2 * weights["c"]).sum()
        return loss

    return loss_fn


# --------------------------------------------------------------------------- exact gradients
# One layer over unpadded sequences: the Monitor's replay is teacher-forced (all steps from
# the module's outputs in one batched call); otherwise step by step. Both must be exact.
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_fused_grads_match_unrolled_autograd(cls, packed, layers, float64):
    torch.manual_seed(1)
    I, H, B = 3, 4, 3
    rnn = cls(I, H, num_layers=layers, bidirectional=True)
    model = FusedNet(rnn)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    weights = {
        "out": torch.randn(9, B, 2 * H),
        "h": torch.randn(2 * layers, B, H),
        "c": torch.randn(2 * layers, B, H),
    }
    loss_fn = _loss_fn(weights)
    # three training steps, T varying across batches (6, 7, 8); every=2 samples steps 0 and 2
    Ts = [6, 7, 8]
    expected = {}
    with Monitor(model, every=2, analyze=False, check=True) as mon:
        for step, T in enumerate(Ts):
            x = torch.randn(T, B, I)
            lengths = [T, T - 2, 3] if packed else [T] * B
            if step % 2 == 0:
                ref_rnn = copy.deepcopy(rnn)
                expected[step] = _unrolled_reference(ref_rnn, x, lengths, loss_fn)
            out, hidden = model(x, torch.tensor(lengths) if packed else None)
            h_n, c_n = hidden if cls is nn.LSTM else (hidden, None)
            loss = loss_fn(out, h_n, c_n)
            if step % 2 == 0:  # the reference computes the same loss
                torch.testing.assert_close(loss.detach(), expected[step]["loss"])
            opt.zero_grad()
            loss.backward()
            assert mon.step() == (step % 2 == 0)
            opt.step()
            if step == 2:
                latest = mon.latest.trace
    hist = mon.history
    assert hist.steps.tolist() == [0, 2]
    names = ["rnn.l0", "rnn.l0_reverse", "rnn.l1", "rnn.l1_reverse"][: 2 * layers]
    assert hist.names == names
    for name in names:
        _assert_grads_close(latest[name].grads, expected[2][name])
        norms = hist.grad_norms(name)
        assert norms.shape == (2, Ts[2] + 1)  # NaN-padded to the longest T
        for row, step in enumerate((0, 2)):
            ref = _norms_of(expected[step][name])
            np.testing.assert_allclose(norms[row, : len(ref)], ref, rtol=RTOL)
        assert np.isnan(norms[0, Ts[0] + 1 :]).all()  # step 0 had T = 6
        assert hist.scalar(name, "T").tolist() == [6.0, 8.0]


class CellLoop(nn.Module):
    """A registered cell and an unregistered custom cell, each called in a Python loop."""

    def __init__(self, cell: nn.Module, H: int) -> None:
        super().__init__()
        self.cell = cell
        self.custom = TanhCell(H, H)

    def forward(self, x):
        h = x.new_zeros(x.shape[1], self.cell.hidden_size)
        state = (h, torch.zeros_like(h)) if isinstance(self.cell, nn.LSTMCell) else h
        g = torch.zeros_like(h)
        outs = []
        for t in range(x.shape[0]):
            state = self.cell(x[t], state)
            g = self.custom(state[0] if isinstance(state, tuple) else state, g)
            outs.append(g)
        return torch.stack(outs)


class TanhCell(nn.Module):
    def __init__(self, I: int, H: int) -> None:
        super().__init__()
        self.w = nn.Linear(I, H)
        self.u = nn.Linear(H, H, bias=False)

    def forward(self, x, h):
        return torch.tanh(self.w(x) + self.u(h))


@pytest.mark.parametrize("cell_cls", [nn.GRUCell, nn.LSTMCell])
def test_cell_loop_grads_match_unrolled_autograd(cell_cls, float64):
    torch.manual_seed(2)
    I, H, B, T = 3, 4, 2, 5
    model = CellLoop(cell_cls(I, H), H)
    lstm = cell_cls is nn.LSTMCell
    w = torch.randn(T, B, H)
    x = torch.randn(T, B, I)
    # reference: the same loop, by hand, on copies, with every state retained. Identity
    # nodes after each step: s_t = (h_t, c_t) is the step's output, so ∂L/∂c_t holds h_t
    # fixed (the path c_t -> h_t inside the step belongs to J_t; see _unrolled_reference)
    ref_model = copy.deepcopy(model)
    h = torch.zeros(B, H, requires_grad=True)
    c = torch.zeros(B, H, requires_grad=True)
    g = torch.zeros(B, H, requires_grad=True)
    cell_states, custom_states = [(h, c) if lstm else (h,)], [(g,)]
    outs = []
    for t in range(T):
        if lstm:
            h, c = (p + 0.0 for p in ref_model.cell(x[t], (h, c)))
            c.retain_grad()
        else:
            h = ref_model.cell(x[t], h) + 0.0
        g = ref_model.custom(h, g) + 0.0
        h.retain_grad()
        g.retain_grad()
        cell_states.append((h, c) if lstm else (h,))
        custom_states.append((g,))
        outs.append(g)
    (torch.tanh(torch.stack(outs)) * w).sum().backward()

    def stack(states):
        def grad(p):  # None: the loss does not depend on it (c_T here)
            return torch.zeros_like(p) if p.grad is None else p.grad

        return torch.stack([torch.cat([grad(p) for p in parts], dim=-1) for parts in states])

    with Monitor(model, every=1, cells=[model.custom], analyze=False, check=True) as mon:
        (torch.tanh(model(x)) * w).sum().backward()
        mon.step()
    trace = mon.latest.trace
    assert sorted(trace.names) == ["cell", "custom"]
    for name, states in (("custom", custom_states), ("cell", cell_states)):
        ref = stack(states)
        _assert_grads_close(trace[name].grads, ref)
        np.testing.assert_allclose(mon.history.grad_norms(name)[0], _norms_of(ref), rtol=RTOL)


def test_grad_norms_masks_padding_by_hand():
    # a hand-made layer: B=2, T=3, D=2, the second sequence has length 1
    grads = torch.tensor(
        [
            [[3.0, 4.0], [0.0, 1.0]],
            [[1.0, 0.0], [6.0, 8.0]],
            [[0.0, 2.0], [math.nan, math.nan]],
            [[2.0, 0.0], [math.nan, math.nan]],
        ],
        dtype=torch.float64,
    )
    states = torch.zeros(4, 2, 2, dtype=torch.float64)
    layer = LayerTrace(
        "x",
        "rnn_tanh",
        states,
        torch.zeros(3, 2, 1),
        np.array([3, 1]),
        ("h",),
        (2,),
        {},
        grads=grads,
    )
    # t=0: (5 + 1)/2, t=1: (1 + 10)/2, t=2 and t=3: only sequence 0
    np.testing.assert_allclose(grad_norms(layer), [3.0, 5.5, 2.0, 2.0], rtol=1e-15)
    grads[1, 0, 0] = math.inf  # a non-finite gradient of a real step is reported
    assert math.isinf(grad_norms(layer)[1])
    layer.grads = None
    with pytest.raises(MissingDataError, match=r"loss\.backward"):
        grad_norms(layer)


# --------------------------------------------------------------------------- never changes training
class DropNet(nn.Module):
    """Fused layers with training-mode dropout between and inside them."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(3, 5)
        self.lstm = nn.LSTM(5, 6, num_layers=2, dropout=0.5, bidirectional=True)
        self.drop = nn.Dropout(0.3)
        self.gru = nn.GRU(12, 4, num_layers=2, dropout=0.4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        out, _ = self.lstm(torch.relu(self.inp(x)))
        out, _ = self.gru(self.drop(out))
        return self.head(out[-1])


def _train(monitor_kwargs: dict | None, opt_name: str, steps: int = 5):
    torch.manual_seed(3)
    np.random.seed(3)  # noqa: NPY002 (the legacy global RNG must stay untouched)
    random.seed(3)
    model = DropNet().train()
    opts = {
        "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        "adam": lambda p: torch.optim.Adam(p, lr=0.01),
    }
    opt = opts[opt_name](model.parameters())
    mon = Monitor(model, **monitor_kwargs) if monitor_kwargs is not None else None
    for step in range(steps):
        x = torch.randn(4 + step, 3, 3)  # batches drawn from the global RNG
        y = torch.randn(3, 2)
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        if mon is not None:
            mon.step()
        opt.step()
    if mon is not None:
        mon.close()
    return model, opt, mon


def _np_state() -> np.ndarray:
    return np.random.get_state()[1].copy()  # noqa: NPY002 (the legacy global RNG)


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_training_is_bit_identical(opt_name):
    base_model, base_opt, _ = _train(None, opt_name)
    base_rng = (torch.get_rng_state(), _np_state(), random.getstate())
    kwargs = dict(every=2, analyze=True, lyapunov=True, spectra_batch=2, check=True)
    model, opt, mon = _train(kwargs, opt_name)
    rng = (torch.get_rng_state(), _np_state(), random.getstate())
    assert mon.history.steps.tolist() == [0, 2, 4]
    # the dropout masks inside the LSTM were replayed (exact grads for its layer 1)
    assert mon.latest.trace["lstm.l1"].meta["dropout"] == "mask reproduced"
    assert np.isfinite(mon.history.grad_norms("lstm.l1")[-1]).all()  # last: the longest T
    for (n1, p1), (n2, p2) in zip(base_model.named_parameters(), model.named_parameters()):
        assert n1 == n2
        assert torch.equal(p1, p2), n1
        assert torch.equal(p1.grad, p2.grad), n1
    s1, s2 = base_opt.state_dict(), opt.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for key in s1["state"]:
        for field_name, v1 in s1["state"][key].items():
            v2 = s2["state"][key][field_name]
            assert torch.equal(torch.as_tensor(v1), torch.as_tensor(v2)), (key, field_name)
    assert torch.equal(base_rng[0], rng[0])
    assert np.array_equal(base_rng[1], rng[1])
    assert base_rng[2] == rng[2]


def test_step_before_or_after_optimizer_step_is_the_same():
    def run(after: bool):
        torch.manual_seed(4)
        model = FusedNet(nn.GRU(3, 5, num_layers=2))
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        with Monitor(model, every=1, analyze=False) as mon:
            for _ in range(3):
                out, h_n = model(torch.randn(6, 2, 3))
                loss = (out**2).sum() + h_n.sum()
                opt.zero_grad()
                loss.backward()
                if after:
                    opt.step()
                    mon.step()
                else:
                    mon.step()
                    opt.step()
        return mon.history

    before, after = run(False), run(True)
    for name in before.names:
        np.testing.assert_array_equal(before.grad_norms(name), after.grad_norms(name))


# --------------------------------------------------------------------------- hooks
def _hook_count(model: nn.Module) -> int:
    n = 0
    for m in model.modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        ):
            n += len(getattr(m, attr))
    return n


def test_hooks_only_on_sampled_steps_and_removed_on_close():
    torch.manual_seed(5)
    model = FusedNet(nn.LSTM(3, 4))
    assert _hook_count(model) == 0
    mon = Monitor(model, schedule=At([1]), analyze=False)
    assert not mon.armed and _hook_count(model) == 0  # step 0 is not sampled: no hook at all
    out, _ = model(torch.randn(5, 2, 3))
    out.sum().backward()
    assert mon.step() is False
    assert mon.armed and _hook_count(model) > 0  # step 1 is sampled
    out, _ = model(torch.randn(5, 2, 3))
    assert len(out._backward_hooks or {}) > 0  # cotangent capture on the output
    mon.close()  # closed mid-step: everything goes, the step is not analysed
    assert _hook_count(model) == 0
    assert not (out._backward_hooks or {})
    assert len(mon.history) == 0 and mon.closed
    with pytest.raises(GradscopeError, match="closed"):
        mon.step()


def test_hooks_removed_after_an_exception_and_nothing_analysed():
    torch.manual_seed(6)
    model = FusedNet(nn.GRU(3, 4))
    with pytest.raises(RuntimeError, match="boom"), Monitor(model, every=1) as mon:
        out, _ = model(torch.randn(5, 2, 3))
        out.sum().backward()
        raise RuntimeError("boom")
    assert _hook_count(model) == 0
    assert len(mon.history) == 0 and mon.latest is None and mon.closed


def test_paused_keeps_evaluation_out_of_the_recording():
    torch.manual_seed(7)
    model = FusedNet(nn.GRU(3, 4))
    with Monitor(model, every=1, analyze=False) as mon:
        with mon.paused(), torch.no_grad():
            model(torch.randn(4, 2, 3))  # an evaluation forward
            assert _hook_count(model) == 0
        out, _ = model(torch.randn(5, 2, 3))
        out.sum().backward()
        mon.step()
    assert mon.history.names == ["rnn.l0"]  # not "rnn.l0@1": only the training forward
    assert mon.history.scalar("rnn.l0", "T").tolist() == [5.0]


def test_sampled_step_without_backward_is_noted_not_an_error():
    torch.manual_seed(8)
    model = FusedNet(nn.GRU(3, 4))
    with Monitor(model, every=1, analyze=False) as mon:
        model(torch.randn(5, 2, 3))
        assert mon.step()  # no backward reached the GRU: a note, training goes on
        assert mon.global_step == 1 and mon.armed  # still usable for the next step
        out, _ = model(torch.randn(5, 2, 3))
        out.sum().backward()
        assert mon.step()
    assert mon.history.steps.tolist() == [0, 1]
    assert np.isnan(mon.history.grad_norms("rnn.l0")[0]).all()  # nothing measured, no zeros
    assert np.isfinite(mon.history.grad_norms("rnn.l0")[1]).all()
    assert [n.split(":")[0] for n in mon.history.notes] == ["rnn.l0"]


def test_monitor_of_a_model_without_recurrent_modules_is_an_error():
    from gradscope.errors import NoRecurrentModuleError

    with pytest.raises(NoRecurrentModuleError, match="no recurrent module"):
        Monitor(nn.Linear(2, 2))


# --------------------------------------------------------------------------- memory and history
def test_memory_is_flat_beyond_the_compact_history():
    torch.manual_seed(9)
    model = FusedNet(nn.LSTM(3, 4, bidirectional=True))
    T, B = 6, 2
    refs = []
    with Monitor(model, every=1, analyze=False) as mon:
        for _ in range(8):
            out, _ = model(torch.randn(T, B, 3))
            out.sum().backward()
            mon.step()
            refs.append(weakref.ref(mon.latest.trace.layers[0].states))
    gc.collect()
    # only the latest step's trace is alive; every earlier one was released
    assert [r() is not None for r in refs] == [False] * 7 + [True]
    # the history holds (T+1) grad norms and K scalars per layer and step, nothing else
    per_step = 2 * (T + 1 + len(SUMMARY_KEYS)) * 8
    assert mon.history.nbytes == 8 * per_step
    assert len(mon.history) == 8


def test_schedules():
    assert [s for s in range(12) if Every(5)(s)] == [0, 5, 10]
    assert [s for s in range(12) if Every(4, start=3)(s)] == [3, 7, 11]
    assert [s for s in range(12) if At([2, 7, 50])(s)] == [2, 7]
    log = [s for s in range(1001) if Logarithmic(0, 1000, 4)(s)]
    assert log == [0, 9, 99, 1000]  # geomspace(1, 1001, 4) - 1, rounded
    with pytest.raises(ValueError):
        Every(0)


def test_analyze_schedule_and_summaries():
    torch.manual_seed(10)
    model = FusedNet(nn.GRU(3, 4))
    with Monitor(model, every=1, analyze=Every(2), lyapunov=True) as mon:
        for _ in range(3):
            out, _ = model(torch.randn(12, 4, 3))
            ((out - 0.5) ** 2).sum().backward()
            mon.step()
    s = mon.history.summaries("rnn.l0")
    analysed = np.array([True, False, True])
    for key in ("rate", "radius_median", "norm_max", "lyapunov"):
        assert np.isfinite(s[key][analysed]).all(), key
        assert np.isnan(s[key][~analysed]).all(), key
    assert s["regime"][1] == "" and s["regime"][0] in ("vanishing", "neutral", "exploding")
    # the loss-gradient fit needs only the grad norms: it comes with every sampled step
    assert np.isfinite(s["loss_rate"]).all()
    assert all(r in ("vanishing", "neutral", "exploding") for r in s["loss_regime"])
    # grad norms come with every sampled step
    assert np.isfinite(s["grad_t0"]).all() and np.isfinite(s["grad_tT"]).all()
    np.testing.assert_array_equal(s["grad_tT"], mon.history.grad_norms("rnn.l0")[:, -1])
    assert s["rate_ci"].shape == (3, 2)
    assert (s["rate_ci"][analysed, 0] <= s["rate"][analysed]).all()
    # the spectral summaries are those of gs.spectrum on the subsampled Jacobians
    layer = mon.latest.trace.layers[0]
    steps = np.unique(np.round(np.linspace(0, layer.T - 1, 2)).astype(int))
    radius = gs.spectrum(layer, "eig", steps=steps, batch=[0], progress=False).radius
    assert s["radius_max"][2] == pytest.approx(float(np.nanmax(radius)), rel=1e-12)


def test_history_save_load_round_trip(tmp_path):
    torch.manual_seed(11)
    model = FusedNet(nn.LSTM(3, 4, bidirectional=True))
    with Monitor(model, every=1, analyze=At([0])) as mon:
        for T in (5, 7):
            out, _ = model(torch.randn(T, 2, 3))
            out.sum().backward()
            mon.step()
    hist = mon.history
    hist.note(1, "a remark")
    path = mon.save(tmp_path / "hist")
    assert path.name == "hist.npz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hist.npz"]  # no temporary left
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # an ordinary file, not mkstemp's 0600
    with np.load(path, allow_pickle=False) as npz:  # plain arrays only
        meta = json.loads(npz["__meta__"].tobytes().decode())
    assert meta["format"] == "gradscope.history" and meta["version"] == 1
    back = load_history(path)
    assert back.names == hist.names and back.steps.tolist() == hist.steps.tolist()
    assert back.notes == hist.notes and back.meta == hist.meta
    for name in hist.names:
        np.testing.assert_array_equal(back.grad_norms(name), hist.grad_norms(name))
        a, b = back.summaries(name), hist.summaries(name)
        for key in SUMMARY_KEYS:
            if key in ("regime", "loss_regime"):
                assert a[key] == b[key]
            else:
                np.testing.assert_array_equal(a[key], b[key])
    assert json.loads(json.dumps(back.to_dict()))["steps"] == [0, 1]


def _fake_run(monkeypatch, *, analysis_s, recording_s, budget, steps=31):
    """A Monitor(every=1) over ``steps`` training steps of 1 s each on a fake clock, whose
    analyses take ``analysis_s`` and whose recordings take ``recording_s``; the indices of
    the sampled steps analysed during training, and those analysed at the end."""
    import gradscope.monitor.budget as budget_mod
    import gradscope.monitor.monitor as monitor_mod
    import gradscope.monitor.summaries as summaries_mod

    clock = {"t": 0.0}
    fake = SimpleNamespace(perf_counter=lambda: clock["t"])
    monkeypatch.setattr(monitor_mod, "time", fake)
    monkeypatch.setattr(budget_mod, "time", fake)
    real = summaries_mod.summarize

    def costly(layer, *, analyze, **kw):
        clock["t"] += analysis_s if analyze else 0.0
        return real(layer, analyze=analyze, **kw)

    monkeypatch.setattr(summaries_mod, "summarize", costly)
    disarm = Monitor._disarm

    def slow_recording(self, harvest=False):
        clock["t"] += recording_s if harvest else 0.0
        return disarm(self, harvest)

    monkeypatch.setattr(Monitor, "_disarm", slow_recording)
    torch.manual_seed(12)
    model = FusedNet(nn.GRU(2, 3))
    mon = Monitor(model, every=1, budget=budget)
    for _ in range(steps):
        clock["t"] += 1.0  # each training step "takes" 1 s
        out, _ = model(torch.randn(4, 2, 2))
        out.sum().backward()
        mon.step()
    during = np.flatnonzero(np.isfinite(mon.history.scalar("rnn.l0", "radius_max")))
    mon.close()  # analyses the latest sampled step if it was not
    after = np.flatnonzero(np.isfinite(mon.history.scalar("rnn.l0", "radius_max")))
    assert np.isfinite(mon.history.scalar("rnn.l0", "grad_t0")).all()  # every sampled step
    return during.tolist(), after.tolist()


def test_auto_analysis_keeps_the_analyses_within_the_time_budget(monkeypatch):
    """analyze="auto": analyse while (analyses so far + the last one's cost) <= budget x
    training time, and at least once per doubling of the sampled steps."""
    during, after = _fake_run(monkeypatch, analysis_s=1.0, recording_s=0.0, budget=0.5)
    # step 0: the first; 1, 3, 7: the floor (n >= 2m + 1, m the latest analysed); then the
    # budget, (analyses so far + 1) s <= 0.5 · (n + 1) training seconds: 4 + 1 <= 5 at step
    # 9, and every other step from there (so the floor is never needed again)
    assert during == [0, 1, 3, 7, *range(9, 31, 2)]
    assert after == [*during, 30]  # close(): the latest sampled step too


def test_cheap_analyses_give_curves_whatever_the_recording_costs(monkeypatch):
    # the recording (0.5 s) alone is 50x the budget of a 1 s step; the analysis (1 ms) is a
    # tenth of it: every sampled step is analysed (the recording is the schedule's cost)
    during, after = _fake_run(monkeypatch, analysis_s=0.001, recording_s=0.5, budget=0.01)
    assert during == after == list(range(31))
    # an analysis costing 10 training steps at a budget of 1%: the doubling floor only
    during, after = _fake_run(monkeypatch, analysis_s=10.0, recording_s=0.0, budget=0.01)
    assert during == [0, 1, 3, 7, 15] and after == [0, 1, 3, 7, 15, 30]


def test_a_layer_without_loss_gradients_is_reported_not_fatal():
    from gradscope.monitor import trace_grad_norms
    from gradscope.traces import Trace

    def layer(name, grads, meta=None):
        return LayerTrace(
            name,
            "rnn_tanh",
            torch.zeros(3, 1, 2),
            torch.zeros(2, 1, 1),
            None,
            ("h",),
            (2,),
            {},
            meta=meta or {},
            grads=grads,
        )

    ok = layer("a", torch.tensor([[[3.0, 4.0]], [[0.0, 1.0]], [[1.0, 0.0]]]))
    # e.g. a layer above CUDA inter-layer dropout: record.py leaves its grads empty
    missing = layer("b", None, {"grads": "unavailable: dropout mask not reproducible"})
    norms, notes = trace_grad_norms(Trace([ok, missing]))
    np.testing.assert_array_equal(norms["a"], [5.0, 1.0, 1.0])
    assert np.isnan(norms["b"]).all() and norms["b"].shape == (3,)
    assert len(notes) == 1 and "dropout mask not reproducible" in notes[0]
    norms, notes = trace_grad_norms(Trace([missing]))  # every layer unavailable: still fine
    assert np.isnan(norms["b"]).all() and len(notes) == 1
    no_backward = layer("c", None)
    with pytest.raises(MissingDataError, match="no backward pass yet"):
        trace_grad_norms(Trace([ok, no_backward], {"grads": "no backward pass yet"}))


@pytest.mark.parametrize(("cls", "gain"), [(nn.RNN, 3.0), (nn.LSTM, 8.0)])
def test_monitor_replays_a_chaotic_single_layer_on_its_own_trajectory(cls, gain, float64):
    # Chaotic recurrent weights: a step-by-step replay separates from the module's trajectory
    # (gs.trace accepts it as a shadow and warns); the Monitor's teacher-forced replay takes
    # every previous output from the module, so its states are the module's own.
    torch.manual_seed(0)
    H, T, B = 32, 60, 4
    rnn = cls(8, H)
    with torch.no_grad():
        rnn.weight_hh_l0.normal_(0.0, gain / H**0.5)
    x = torch.randn(T, B, 8)
    with pytest.warns(gs.ChaoticReplayWarning):
        shadow = gs.trace(rnn, x).layers[0]
    with Monitor(rnn, every=1, analyze=False) as mon:
        out, _ = rnn(x)
        out.square().mean().backward()
        mon.step()
    layer = mon.latest.trace.layers[0]
    assert "replay" not in layer.meta  # no shadow
    ref = out.detach().numpy()
    forced_err = np.abs(layer.states[1:, :, :H].numpy() - ref).max()
    shadow_err = np.abs(shadow.states[1:, :, :H].numpy() - ref).max()
    assert forced_err < 1e-13 < 1e-11 < shadow_err  # float64: the shadow drifts ~1e-9
