"""Integrations: optional-import errors, TensorBoard event files, a Lightning Trainer run."""

from __future__ import annotations

import importlib
import math
import sys

import numpy as np
import pytest
import torch
from torch import nn

from gradscope.errors import OptionalDependencyError
from gradscope.integrations import _imports
from gradscope.monitor import REGIME_CODES, Monitor

pytestmark = pytest.mark.usefixtures("one_thread")


def _hook_count(model: nn.Module) -> int:
    return sum(
        len(getattr(m, attr))
        for m in model.modules()
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks")
    )


# --------------------------------------------------------------------------- optional imports
def test_require_names_the_extra_to_install():
    missing = _imports.Extra("gradscope_no_such_module", "no-such-package", "nothing")
    assert not _imports.available("gradscope_no_such_module")
    with pytest.raises(OptionalDependencyError, match=r'pip install "gradscope-rnn\[nothing\]"'):
        _imports.require(missing, "a test")


def test_importing_integrations_imports_no_framework():
    code = (
        "import sys, gradscope, gradscope.integrations, gradscope.monitor\n"
        "import gradscope.integrations.logger, gradscope.integrations.writers\n"
        "frameworks = ('lightning', 'pytorch_lightning', 'tensorboard', 'transformers', 'wandb')\n"
        "bad = [m for m in frameworks if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_lightning_gives_a_helpful_error(monkeypatch):
    monkeypatch.delitem(sys.modules, "gradscope.integrations.lightning", raising=False)
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, name, None)  # import of these now fails
    with pytest.raises(OptionalDependencyError, match="lightning"):
        importlib.import_module("gradscope.integrations.lightning")
    import gradscope.integrations as gi

    with pytest.raises(OptionalDependencyError, match="pip install"):
        gi.GradscopeCallback  # noqa: B018  (the lazy attribute triggers the import)


def test_missing_tensorboard_gives_a_helpful_error(monkeypatch, tmp_path):
    from gradscope.integrations.tensorboard import TensorBoardCallback

    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(OptionalDependencyError, match=r"gradscope-rnn\[tensorboard\]"):
        TensorBoardCallback(tmp_path)


# --------------------------------------------------------------------------- tensorboard
class Seq(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 6)
        self.head = nn.Linear(6, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[-1])


def test_tensorboard_writes_the_summaries(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gradscope.integrations.tensorboard import SCALARS, TensorBoardCallback

    torch.manual_seed(0)
    model = Seq()
    tb = TensorBoardCallback(tmp_path / "tb", figures_every=2, scalars="all")
    with Monitor(model, every=2, callbacks=[tb], analyze=True) as mon:
        for _ in range(4):
            model(torch.randn(10, 4, 3)).pow(2).mean().backward()
            mon.step()
    tb.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    entry = mon.history.summaries("rnn.l0")
    for key, tag in SCALARS.items():
        full = f"gradscope/rnn.l0/{tag}"
        absent = key.startswith("gate_") and not np.isfinite(np.asarray(entry[key], float)).any()
        if key.startswith("lyapunov") or absent:
            # not requested, or not this cell's gate (a GRU has no forget gate): NaN values
            # are not logged
            assert full not in tags
            continue
        assert full in tags, full
        events = acc.Scalars(full)
        assert [e.step for e in events] == [0, 2]
        if key in ("regime", "loss_regime"):
            want = [REGIME_CODES[r] for r in entry[key]]
        elif key in ("grad_t0", "grad_tT"):
            assert tag == f"log10_grad_norm_{key[5:]}"
            want = np.log10(entry[key])
        else:
            want = entry[key]
        # event files store float32
        np.testing.assert_allclose([e.value for e in events], want, rtol=1e-6)
    assert not math.isnan(entry["grad_t0"][0])
    images = set(acc.Tags()["images"])
    assert {"gradscope/rnn.l0/heatmap", "gradscope/rnn.l0/rate"} <= images
    assert "gradscope/verdict/text_summary" in acc.Tags()["tensors"]  # how add_text stores


# --------------------------------------------------------------------------- lightning
def test_lightning_trainer_runs_the_monitor(tmp_path):
    pl = _imports.lightning()
    from gradscope.integrations.lightning import GradscopeCallback

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(3, 5, batch_first=True)
            self.head = nn.Linear(5, 1)

        def forward(self, x):
            out, _ = self.rnn(x)
            return self.head(out[:, -1])

        def training_step(self, batch, batch_idx):
            x, y = batch
            return ((self(x) - y) ** 2).mean()

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val", ((self(x) - y) ** 2).mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(24, 7, 3), torch.randn(24, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    val = torch.utils.data.DataLoader(data, batch_size=8)
    module = Module()
    cb = GradscopeCallback(
        every=2, report=tmp_path / "train.html", save=tmp_path / "hist.npz", analyze=False
    )
    trainer = pl.Trainer(
        max_steps=6,
        callbacks=[cb],
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
        val_check_interval=3,  # validation in the middle of training: must not be recorded
        num_sanity_val_steps=1,
    )
    trainer.fit(module, loader, val)
    mon = cb.monitor
    assert mon.closed and _hook_count(module) == 0
    assert mon.history.steps.tolist() == [0, 2, 4]
    assert mon.history.names == ["rnn.l0"]  # no "@1": validation forwards were not recorded
    assert mon.history.scalar("rnn.l0", "T").tolist() == [7.0, 7.0, 7.0]
    assert np.isfinite(mon.history.grad_norms("rnn.l0")).all()
    assert (tmp_path / "hist.npz").is_file()
    assert cb.report_path == tmp_path / "train.html" and cb.report_path.stat().st_size > 0


# --------------------------------------------------------------------------- hugging face
def test_missing_transformers_gives_a_helpful_error(monkeypatch):
    monkeypatch.delitem(sys.modules, "gradscope.integrations.huggingface", raising=False)
    monkeypatch.setitem(sys.modules, "transformers", None)  # import of it now fails
    with pytest.raises(OptionalDependencyError, match=r"gradscope-rnn\[huggingface\]"):
        importlib.import_module("gradscope.integrations.huggingface")


def test_hugging_face_trainer_runs_the_monitor(tmp_path):
    transformers = pytest.importorskip("transformers")
    from gradscope.integrations.huggingface import GradscopeTrainerCallback

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(3, 5, batch_first=True)
            self.head = nn.Linear(5, 1)

        def forward(self, x, labels=None):
            out, _ = self.rnn(x)
            pred = self.head(out[:, -1])
            return {"loss": ((pred - labels) ** 2).mean(), "logits": pred}

    class Data(torch.utils.data.Dataset):
        def __init__(self, n: int) -> None:
            gen = torch.Generator().manual_seed(0)
            self.x, self.y = torch.randn(n, 7, 3, generator=gen), torch.randn(n, 1, generator=gen)

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, i):
            return {"x": self.x[i], "labels": self.y[i]}

    torch.manual_seed(0)
    model = Model()
    cb = GradscopeTrainerCallback(
        every=1, report=tmp_path / "train.html", save=tmp_path / "hist.npz", analyze=False
    )
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=3,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,  # two backward passes per optimizer step
        per_device_eval_batch_size=8,
        eval_strategy="steps",
        eval_steps=1,  # evaluation after every step: must not be recorded
        eval_on_start=True,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Data(24), eval_dataset=Data(8), callbacks=[cb]
    )
    trainer.train()
    mon = cb.monitor
    assert mon.closed and _hook_count(model) == 0
    assert mon.history.steps.tolist() == list(range(6))  # one Monitor step per backward
    assert mon.history.names == ["rnn.l0"]  # no "@1": evaluation forwards were not recorded
    assert mon.history.scalar("rnn.l0", "T").tolist() == [7.0] * 6
    assert mon.history.scalar("rnn.l0", "B").tolist() == [4.0] * 6
    assert np.isfinite(mon.history.grad_norms("rnn.l0")).all()
    assert (tmp_path / "hist.npz").is_file()
    assert cb.report_path == tmp_path / "train.html" and cb.report_path.stat().st_size > 0


def test_lightning_skipped_batches_leave_no_phantom_layers():
    """training_step returning None (Lightning's skip): no backward, so no step and no zeros."""
    from unrolled import assert_norms_close, unrolled_norms

    pl = _imports.lightning()
    from gradscope.integrations.lightning import GradscopeCallback

    refs = []

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(3, 4, batch_first=True)
            self.head = nn.Linear(4, 1)

        def loss(self, out, y):
            return ((self.head(out[:, -1]) - y) ** 2).mean()

        def training_step(self, batch, batch_idx):
            x, y = batch
            if batch_idx % 2 == 1:
                self.rnn(x)  # a forward, then Lightning's skip: no backward for this batch
                return None
            refs.append(
                unrolled_norms(
                    self.rnn,
                    x.transpose(0, 1),
                    None,
                    lambda out, _: self.loss(out.transpose(0, 1), y),
                )["l0"]
            )
            return self.loss(self.rnn(x)[0], y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(
        torch.randn(24, 5, 3, dtype=torch.float64), torch.randn(24, 1, dtype=torch.float64)
    )
    module = Module().double()
    cb = GradscopeCallback(every=1, analyze=False)
    trainer = pl.Trainer(
        max_epochs=1,
        callbacks=[cb],
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    hist = cb.monitor.history
    assert len(refs) == 3 and hist.steps.tolist() == [0, 1, 2]  # one step per backward
    assert hist.names == ["rnn.l0"] and hist.notes == {}  # no "rnn.l0@1", no zero rows
    for step, ref in enumerate(refs):
        assert_norms_close(hist.grad_norms("rnn.l0")[step], ref)


def test_lightning_passes_the_precision_plugins_grad_scaler():
    from types import SimpleNamespace

    _imports.lightning()
    from gradscope.integrations.lightning import GradscopeCallback

    scaler = torch.amp.GradScaler("cpu")
    trainer = SimpleNamespace(is_global_zero=True, precision_plugin=SimpleNamespace(scaler=scaler))
    cb = GradscopeCallback(every=1)
    cb.on_train_start(trainer, nn.GRU(2, 3))
    assert cb.monitor.grad_scaler is scaler
    cb.close()
    trainer.precision_plugin = SimpleNamespace()  # 32-bit or bf16: no scaler
    cb.on_train_start(trainer, nn.GRU(2, 3))
    assert cb.monitor.grad_scaler is None
    cb.close()
