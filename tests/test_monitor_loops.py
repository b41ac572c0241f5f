"""The Monitor in real training loops: only the training step's gradients, whatever else runs.

Evaluation forwards between ``step()`` and the next training forward (under ``no_grad``,
``inference_mode``, or with gradients on but never back-propagated), skipped batches, and
losses that do not reach the recurrent layers must neither replace nor invent numbers. Every
grad norm is compared with autograd in float64 through a hand-unrolled loop of cell copies
holding the module's weights (``retain_grad`` on every state), computed on the same batch
just before the training forward. PyTorch's ``word_language_model`` and
``time_sequence_prediction`` example loops are reproduced as written, at tiny size.
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import pytest
import torch
from torch import nn
from unrolled import assert_norms_close as _close
from unrolled import state_grad_norms as _norms
from unrolled import unrolled_norms

from gradscope.monitor import Monitor

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- case 0
def test_evaluation_forwards_never_replace_the_training_gradients():
    """The issue's minimal loop, with three kinds of evaluation forward after step()."""
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 8).double()
    refs = []
    evaluations = [
        lambda x: torch.no_grad()(lstm)(x),
        lambda x: torch.inference_mode()(lstm)(x),
        lambda x: lstm(x)[0].detach().sum(),  # gradients on, but no backward ever reaches it
    ]
    mon = Monitor(lstm, every=1, analyze=False)
    for step in range(3):
        x = torch.randn(10, 3, 4, dtype=torch.float64)
        refs.append(unrolled_norms(lstm, x, None, lambda out, _: out.sum())["l0"])
        out, _ = lstm(x)
        out.sum().backward()
        mon.step()
        evaluations[step](torch.randn(5, 2, 4, dtype=torch.float64))  # not paused
    mon.close()
    assert mon.history.names == ["lstm.l0"]  # never "lstm.l0@1"
    got = mon.history.grad_norms("lstm.l0")
    assert got.shape == (3, 11)  # the training batch's T, never the evaluation's
    for step in range(3):
        _close(got[step], refs[step])
    assert mon.history.scalar("lstm.l0", "B").tolist() == [3.0] * 3
    assert mon.history.notes == {}


class RNNModel(nn.Module):
    """``word_language_model/model.py``'s RNNModel (LSTM branch), as written."""

    def __init__(self, ntoken: int, ninp: int, nhid: int, nlayers: int, dropout: float):
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        self.nhid, self.nlayers = nhid, nlayers

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output).view(-1, self.ntoken)
        return nn.functional.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz: int):
        weight = next(self.parameters())
        shape = (self.nlayers, bsz, self.nhid)
        return (weight.new_zeros(shape), weight.new_zeros(shape))


def repackage_hidden(h):
    return h.detach() if isinstance(h, torch.Tensor) else tuple(repackage_hidden(v) for v in h)


def test_word_language_model_loop_as_written():
    """train() with truncated BPTT carrying the hidden state, evaluate() after each epoch."""
    torch.manual_seed(1)
    ntokens, bptt, batch_size, lr = 11, 5, 3, 0.5
    train_data = torch.randint(ntokens, (16, batch_size))
    val_data = torch.randint(ntokens, (11, 2))
    model = RNNModel(ntokens, 4, 5, 2, dropout=0.0).double()  # no dropout: a fixed reference
    criterion = nn.NLLLoss()
    mon = Monitor(model, every=1, analyze=False)
    refs: list[dict[str, np.ndarray]] = []

    def get_batch(source, i):
        seq_len = min(bptt, len(source) - 1 - i)
        return source[i : i + seq_len], source[i + 1 : i + 1 + seq_len].reshape(-1)

    def reference(data, targets, hidden):
        emb = model.encoder(data).detach()

        def loss_of(out, _):
            decoded = model.decoder(out).view(-1, ntokens)
            return criterion(nn.functional.log_softmax(decoded, dim=1), targets)

        return unrolled_norms(model.rnn, emb, hidden, loss_of)

    def train():
        model.train()
        hidden = model.init_hidden(batch_size)
        for i in range(0, train_data.size(0) - 1, bptt):
            data, targets = get_batch(train_data, i)
            model.zero_grad()
            hidden = repackage_hidden(hidden)
            refs.append(reference(data, targets, hidden))
            output, hidden = model(data, hidden)
            loss = criterion(output, targets)
            loss.backward()
            mon.step()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-lr)

    def evaluate(data_source):
        model.eval()
        total_loss = 0.0
        hidden = model.init_hidden(2)
        with torch.no_grad():
            for i in range(0, data_source.size(0) - 1, bptt):
                data, targets = get_batch(data_source, i)
                output, hidden = model(data, hidden)
                hidden = repackage_hidden(hidden)
                total_loss += len(data) * criterion(output, targets).item()
        return total_loss / (len(data_source) - 1)

    for _epoch in range(2):
        train()
        evaluate(val_data)
    mon.close()
    assert mon.history.names == ["rnn.l0", "rnn.l1"]
    assert len(mon.history) == len(refs) == 6
    for name in ("l0", "l1"):
        got = mon.history.grad_norms(f"rnn.{name}")
        for step, ref in enumerate(refs):
            _close(got[step, : len(ref[name])], ref[name])
    assert mon.history.notes == {}


class Sequence(nn.Module):
    """``time_sequence_prediction/train.py``'s Sequence, as written (51 units -> 6)."""

    def __init__(self, hidden: int = 6):
        super().__init__()
        self.hidden = hidden
        self.lstm1 = nn.LSTMCell(1, hidden)
        self.lstm2 = nn.LSTMCell(hidden, hidden)
        self.linear = nn.Linear(hidden, 1)

    def forward(self, input, future=0):
        outputs = []
        h_t = torch.zeros(input.size(0), self.hidden, dtype=torch.double)
        c_t = torch.zeros(input.size(0), self.hidden, dtype=torch.double)
        h_t2 = torch.zeros(input.size(0), self.hidden, dtype=torch.double)
        c_t2 = torch.zeros(input.size(0), self.hidden, dtype=torch.double)
        for input_t in input.split(1, dim=1):
            h_t, c_t = self.lstm1(input_t, (h_t, c_t))
            h_t2, c_t2 = self.lstm2(h_t, (h_t2, c_t2))
            output = self.linear(h_t2)
            outputs += [output]
        for _ in range(future):  # if we should predict the future
            h_t, c_t = self.lstm1(output, (h_t, c_t))
            h_t2, c_t2 = self.lstm2(h_t, (h_t2, c_t2))
            output = self.linear(h_t2)
            outputs += [output]
        return torch.cat(outputs, dim=1)


def _sequence_reference(seq: Sequence, input, target, criterion) -> dict[str, np.ndarray]:
    """Sequence.forward unrolled by hand on copies, with every state's gradient retained."""
    ref = copy.deepcopy(seq)
    B, H = input.size(0), seq.hidden
    states = {"lstm1": [], "lstm2": []}
    parts = {}
    for name in states:
        h, c = (torch.zeros(B, H, dtype=torch.double, requires_grad=True) for _ in range(2))
        parts[name] = (h, c)
        states[name].append((h, c))
    outputs = []
    for input_t in input.split(1, dim=1):
        for name, x in (("lstm1", input_t), ("lstm2", None)):
            x = parts["lstm1"][0] if x is None else x
            h, c = (p + 0.0 for p in getattr(ref, name)(x, parts[name]))
            h.retain_grad()
            c.retain_grad()
            parts[name] = (h, c)
            states[name].append((h, c))
        outputs.append(ref.linear(parts["lstm2"][0]))
    criterion(torch.cat(outputs, dim=1), target).backward()
    return {name: _norms(seq) for name, seq in states.items()}


def test_time_sequence_prediction_loop_as_written():
    """LBFGS closures on LSTMCells, then a no_grad prediction of the future after each step."""
    torch.manual_seed(2)
    T, L = 8, 4
    x = np.arange(L * 2 * T).reshape(2 * L, T) / 3.0
    data = torch.from_numpy(np.sin(x / 1.0 / 2))
    input, target = data[3:, :-1], data[3:, 1:]
    test_input, test_target = data[:3, :-1], data[:3, 1:]
    seq = Sequence().double()
    criterion = nn.MSELoss()
    optimizer = torch.optim.LBFGS(seq.parameters(), lr=0.8, max_iter=3)
    mon = Monitor(seq, every=1, analyze=False)
    refs: list[dict[str, np.ndarray]] = []
    for _i in range(2):

        def closure():
            optimizer.zero_grad()
            refs.append(_sequence_reference(seq, input, target, criterion))
            out = seq(input)
            loss = criterion(out, target)
            loss.backward()
            mon.step()
            return loss

        optimizer.step(closure)
        # begin to predict, no need to track gradient here
        with torch.no_grad():
            future = 5
            pred = seq(test_input, future=future)
            criterion(pred[:, :-future], test_target)
    mon.close()
    assert mon.history.names == ["lstm1", "lstm2"]  # never "lstm1@1": predictions are left out
    assert len(mon.history) == len(refs) >= 2
    for name in ("lstm1", "lstm2"):
        got = mon.history.grad_norms(name)
        assert got.shape == (len(refs), T)  # T - 1 inputs: T states, never the prediction's
        for step, ref in enumerate(refs):
            _close(got[step], ref[name])
    assert mon.history.notes == {}


# --------------------------------------------------------------------------- case 6
class TwoTasks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 4)
        self.aux = nn.Linear(3, 1)

    def forward(self, x):
        return self.lstm(x)[0], self.aux(x)


def test_a_loss_that_does_not_reach_the_layer_is_noted_not_fatal():
    """Alternating losses: the step whose loss skips the LSTM gets a note and NaN, no zeros."""
    torch.manual_seed(3)
    model = TwoTasks().double()
    mon = Monitor(model, every=1, analyze=False)
    refs = {}
    for step in range(4):
        x = torch.randn(6, 2, 3, dtype=torch.float64)
        if step % 2 == 0:
            refs[step] = unrolled_norms(model.lstm, x, None, lambda out, _: (out**2).sum())["l0"]
        out, aux = model(x)
        loss = (out**2).sum() if step % 2 == 0 else aux.sum()
        loss.backward()
        assert mon.step() is True  # never raises out of the training loop
    model(torch.randn(6, 2, 3, dtype=torch.float64))  # a forward, and step() without backward
    mon.step()
    mon.close()
    hist = mon.history
    assert hist.steps.tolist() == [0, 1, 2, 3, 4] and hist.names == ["lstm.l0"]
    got = hist.grad_norms("lstm.l0")
    for step, ref in refs.items():
        _close(got[step], ref)
    assert np.isnan(got[[1, 3, 4]]).all()  # not measured: NaN, never zeros
    assert np.isnan(hist.scalar("lstm.l0", "T")[[1, 3, 4]]).all()
    (note,) = hist.notes
    assert note.startswith("lstm.l0: the loss did not reach it")
    assert hist.notes[note] == {"first_step": 1, "count": 3}
    assert mon.latest.step == 2  # the latest step with a trace


def test_a_step_without_any_recurrent_forward_is_noted():
    torch.manual_seed(4)
    model = TwoTasks().double()
    with Monitor(model, every=1, analyze=False) as mon:
        model.aux(torch.randn(2, 3, dtype=torch.float64)).sum().backward()  # the other branch
        mon.step()
        with torch.no_grad():
            model(torch.randn(6, 2, 3, dtype=torch.float64))  # only an evaluation forward
        mon.step()
    assert mon.history.steps.tolist() == [0, 1] and mon.history.names == []
    (note,) = mon.history.notes
    assert note.startswith("no recurrent module ran") and mon.history.notes[note]["count"] == 2


# --------------------------------------------------------------------------- hook lifetime
def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_do_not_outlive_a_monitor_deleted_without_close():
    """A training loop dies without close(); once the Monitor is gone, nothing is recorded."""
    import gc
    import weakref

    from gradscope.recording.recorder import Recorder

    torch.manual_seed(5)
    lstm = nn.LSTM(3, 4)
    refs = {}

    def train_and_fail():
        mon = Monitor(lstm, every=1, analyze=False)
        refs["monitor"], refs["recorder"] = weakref.ref(mon), weakref.ref(mon._recorder)
        refs["out"] = lstm(torch.randn(5, 2, 3))[0]  # recorded, with gradient hooks on it
        raise RuntimeError("the loop dies before step() and close()")

    with contextlib.suppress(RuntimeError):
        train_and_fail()
    assert refs["monitor"]() is None  # the Monitor is gone ...
    gc.collect()
    assert refs["recorder"]() is None  # ... and so is its recorder, with every hook
    assert _hook_count(lstm) == 0 and not refs["out"]._backward_hooks
    alive = sum(type(o) is Recorder for o in gc.get_objects())
    for _ in range(20):  # later forwards record nothing: no recorder, no hook, no copy
        lstm(torch.randn(5, 2, 3))[0].sum().backward()
    assert sum(type(o) is Recorder for o in gc.get_objects()) == alive == 0
    assert _hook_count(lstm) == 0

    mon = Monitor(lstm, every=1, analyze=False)  # the same with an explicit del
    lstm(torch.randn(5, 2, 3))
    del mon
    gc.collect()
    assert _hook_count(lstm) == 0


# --------------------------------------------------------------------------- GradScaler
def test_grad_scaler_gradients_are_recorded_unscaled():
    """scaler.scale(loss).backward(): the history holds the loss's own gradients, noted."""
    from gradscope.monitor.monitor import UNSCALED

    torch.manual_seed(6)
    lstm = nn.LSTM(3, 4)
    opt = torch.optim.SGD(lstm.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=1)
    mon = Monitor(lstm, every=1, analyze=False, grad_scaler=scaler)
    refs, scales = [], []
    for _ in range(3):
        x = torch.randn(6, 2, 3)
        ref = copy.deepcopy(lstm).double()
        refs.append(unrolled_norms(ref, x.double(), None, lambda out, _: (out**2).sum())["l0"])
        opt.zero_grad()
        out, _ = lstm(x)
        scales.append(scaler.get_scale())
        scaler.scale((out**2).sum()).backward()
        scaler.step(opt)
        scaler.update()  # doubles the scale (growth_interval=1) before step() reads anything
        mon.step()
    mon.close()
    assert scales == [2.0**16, 2.0**17, 2.0**18]
    got = mon.history.grad_norms("lstm.l0")
    for step, ref in enumerate(refs):  # float32 model against the float64 reference
        np.testing.assert_allclose(got[step], ref, rtol=2e-5)
    assert mon.history.notes[UNSCALED]["count"] == 3
    assert mon.latest.trace.meta["loss_scale"] == 2.0**18
