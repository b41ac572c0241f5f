"""The Monitor never stops the training it watches, and says what it could not measure.

A model that diverges halfway, a callback that raises, misuse of ``step()`` and bad
arguments: each is reported (a note, a warning once, a clear error before training starts),
and training goes on exactly as it would without the Monitor.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import gradscope as gs
from gradscope.errors import ArgumentError, ArgumentTypeError, GradscopeWarning


def _train(steps: int, monitor_kw: dict | None, diverge_at: int | None):
    """A small LSTM regression; at ``diverge_at`` a NaN enters the recurrent weights."""
    torch.manual_seed(0)
    lstm, head = nn.LSTM(3, 6), nn.Linear(6, 1)
    opt = torch.optim.SGD([*lstm.parameters(), *head.parameters()], lr=0.1)
    data = [(torch.randn(12, 2, 3), torch.randn(2, 1)) for _ in range(steps)]
    monitor = gs.Monitor(lstm, **monitor_kw) if monitor_kw is not None else None
    for i, (x, y) in enumerate(data):
        if i == diverge_at:
            with torch.no_grad():
                lstm.weight_hh_l0[0, 0] = float("nan")
        out, _ = lstm(x)
        loss = nn.functional.mse_loss(head(out[-1]), y)
        opt.zero_grad()
        loss.backward()
        if monitor is not None:
            monitor.step()
        opt.step()
    if monitor is not None:
        monitor.close()
    return [p.detach().clone() for p in lstm.parameters()], monitor


def test_a_model_that_diverges_halfway_is_reported_and_trained_on():
    """Regression: a raw ValueError out of monitor.step() at the first NaN step."""
    want, _ = _train(8, None, diverge_at=4)
    got, monitor = _train(8, {"every": 1, "analyze": True}, diverge_at=4)
    for a, b in zip(got, want):  # training is what it would be without the Monitor
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    hist = monitor.history
    assert len(hist) == 8
    nonfinite = hist.scalar("lstm.l0", "nonfinite")
    assert (nonfinite[:4] == 0).all() and (nonfinite[4:] > 0).all()
    regimes = hist.regime("lstm.l0")
    assert all(r in ("vanishing", "neutral", "exploding") for r in regimes[:4])
    assert regimes[4:] == ["unknown"] * 4  # analysed, and nothing could be measured
    text = str(hist)
    assert "NaN/inf states from training step 4 on (4 of 8 sampled steps)" in text
    assert "→ unknown" in text


def test_callbacks_must_be_callable_before_training_starts():
    with pytest.raises(ArgumentTypeError, match=r"callbacks\[1\] is a int \(42\), not callable"):
        gs.Monitor(nn.LSTM(3, 4), callbacks=[print, 42])


def test_a_raising_callback_is_warned_about_once_and_training_goes_on():
    calls = []

    def flaky(monitor):
        calls.append(monitor.global_step)
        raise OSError("disk full")

    with pytest.warns(GradscopeWarning, match="raised OSError: disk full") as caught:
        _, monitor = _train(4, {"every": 1, "analyze": False, "callbacks": [flaky]}, None)
    assert calls == [0, 1, 2, 3]  # called at every sampled step, failing each time
    assert len([w for w in caught if "disk full" in str(w.message)]) == 1
    assert any("disk full" in note for note in monitor.history.notes)


def test_a_recording_that_cannot_be_read_is_noted_and_training_goes_on(monkeypatch):
    """Regression: lightning attention's loss gradients raised out of monitor.step().

    Whatever fails while a sampled step's recording is read (here: the loss gradients),
    the step gets no numbers, a note and one warning, and training is what it would be.
    """
    from gradscope.recording import recorder

    calls = []

    def broken(entries):
        calls.append(len(entries))
        raise RuntimeError("shape mismatch in a product")

    want, _ = _train(4, None, None)
    monkeypatch.setattr(recorder, "assign_grads", broken)
    with pytest.warns(GradscopeWarning, match="could not be read .*RuntimeError") as caught:
        got, monitor = _train(4, {"every": 1, "analyze": True}, None)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert len(calls) == 4 and len(monitor.history) == 4  # every step tried, none stopped
    assert len([w for w in caught if "could not be read" in str(w.message)]) == 1
    assert any("shape mismatch in a product" in n for n in monitor.history.notes)


@pytest.mark.parametrize(
    "kw",
    [{"spectra_steps": 0}, {"spectra_batch": 0}, {"decay_batch": 0}, {"decay_batch": -2}],
)
def test_counts_below_one_are_refused(kw):
    """Regression: NaN summaries with no note."""
    (name,) = kw
    with pytest.raises(ArgumentError, match=f"{name} must be >= 1"):
        gs.Monitor(nn.LSTM(3, 4), **kw)


def test_a_count_of_the_wrong_type_is_refused():
    with pytest.raises(ArgumentTypeError, match="spectra_steps must be a positive integer"):
        gs.Monitor(nn.LSTM(3, 4), spectra_steps=2.5)


def test_step_before_backward_warns_once():
    """Misuse: monitor.step() between the forward and loss.backward() records nothing."""
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 4)
    with (
        gs.Monitor(lstm, every=1, analyze=False) as monitor,
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        for _ in range(3):
            out, _ = lstm(torch.randn(5, 2, 3))
            monitor.step()  # too early
            out.sum().backward()
    mine = [w for w in caught if issubclass(w.category, GradscopeWarning)]
    assert len(mine) == 1
    assert "Call monitor.step() after loss.backward()" in str(mine[0].message)


def test_an_empty_batch_gives_no_numbers_and_a_note():
    """B = 0 on a sampled step (regression: read as "neutral" for both regimes)."""
    lstm = nn.LSTM(3, 4)
    with gs.Monitor(lstm, every=1, analyze=True) as monitor:
        out, _ = lstm(torch.randn(5, 0, 3))
        out.sum().backward()
        monitor.step()
    e = monitor.history.entry("lstm.l0")
    assert e["regime"] == "" and e["loss_regime"] == "" and e["B"] == 0
    assert any("empty batch" in note for note in monitor.history.notes)
