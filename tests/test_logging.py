"""The logging layer: TensorBoard event files, W&B offline runs, Lightning's and HF's loggers."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from gradscope.errors import ArgumentError, ArgumentTypeError
from gradscope.history import SUMMARY_KEYS, History
from gradscope.integrations import _imports
from gradscope.monitor import Every, Monitor

pytestmark = pytest.mark.usefixtures("one_thread")


class Seq(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 6)
        self.head = nn.Linear(6, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[-1])


def _train(model, monitor, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        loss = model(torch.randn(10, 4, 3, generator=gen)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        monitor.step()
        opt.step()


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


# --------------------------------------------------------------------------- pure parts
def test_every_history_field_is_logged_under_its_tag_norms_in_log10():
    from gradscope.integrations.logger import history_scalars, verdict_text

    keys = (*SUMMARY_KEYS, "forget_median")  # a field added later flows through unnamed
    hist = History(1, keys=keys)
    values = dict.fromkeys(keys, np.nan)
    values.update(grad_t0=1e-11, grad_tT=0.5, loss_rate=-0.2, loss_regime=-1.0, T=9.0, B=4.0)
    values.update(forget_median=0.8, nonfinite=0.0)
    hist.append(7, {"lstm.l0": (np.ones((1, 10)), np.array([[values[k] for k in keys]]))})
    got = history_scalars(hist, -1, "gs")
    assert got == pytest.approx(
        {
            "gs/lstm.l0/log10_grad_norm_t0": -11.0,
            "gs/lstm.l0/log10_grad_norm_tT": np.log10(0.5),
            "gs/lstm.l0/loss_rate": -0.2,
            "gs/lstm.l0/loss_regime_code": -1.0,
            "gs/lstm.l0/T": 9.0,
            "gs/lstm.l0/B": 4.0,
            "gs/lstm.l0/nonfinite": 0.0,
            "gs/lstm.l0/forget_median": 0.8,
        }
    )  # NaN (not analysed) fields are absent, not zero
    text = verdict_text(hist)
    assert "step 7" in text and "vanishing" in text and "not analysed yet" in text


def test_bad_destinations_get_clear_errors(tmp_path):
    from gradscope.integrations.logger import MonitorLogger
    from gradscope.integrations.writers import TensorBoardWriter, as_writer

    with pytest.raises(ArgumentTypeError, match=r"cannot log to a int.*SummaryWriter"):
        as_writer(42)
    with pytest.raises(ArgumentTypeError, match="SummaryWriter or a log directory"):
        TensorBoardWriter(object())
    with pytest.raises(ArgumentError, match="at least one destination"):
        MonitorLogger()
    with pytest.raises(ArgumentError, match="figures_every"):
        MonitorLogger(tmp_path, figures_every=0)


# --------------------------------------------------------------------------- tensorboard
def test_tensorboard_curves_with_default_analysis_and_current_images(tmp_path):
    """analyze="auto" (the default): every tag is a curve; figures change between steps."""
    from gradscope.integrations.tensorboard import TensorBoardCallback

    torch.manual_seed(0)
    model = Seq()
    tb = TensorBoardCallback(tmp_path / "tb", figures_every=2, scalars="all")
    with Monitor(model, every=1, callbacks=[tb]) as mon:
        _train(model, mon, 4)
    tb.close()
    acc = _events(tmp_path / "tb")
    scalars = set(acc.Tags()["scalars"])
    analysed = np.flatnonzero(np.isfinite(mon.history.scalar("rnn.l0", "rate")))
    assert {0, 1, 3} <= set(analysed.tolist())  # the floor of analyze="auto"
    for tag in ("log10_grad_norm_t0", "log10_grad_norm_tT", "loss_rate", "T"):
        assert [e.step for e in acc.Scalars(f"gradscope/rnn.l0/{tag}")] == list(range(4))
    for tag in ("rate", "regime_code", "radius_median", "sigma_max_max", "half_life"):
        assert f"gradscope/rnn.l0/{tag}" in scalars
        steps = [e.step for e in acc.Scalars(f"gradscope/rnn.l0/{tag}")]
        assert steps == analysed.tolist() and len(steps) > 1, tag
    np.testing.assert_allclose(
        [e.value for e in acc.Scalars("gradscope/rnn.l0/log10_grad_norm_t0")],
        np.log10(mon.history.scalar("rnn.l0", "grad_t0")),
        rtol=1e-6,
    )
    for what in ("heatmap", "rate"):
        images = acc.Images(f"gradscope/rnn.l0/{what}")
        assert [im.step for im in images] == [0, 2]
        pictures = [im.encoded_image_string for im in images]
        assert len(set(pictures)) == len(pictures), what  # redrawn with each step's data
    texts = acc.Tensors("gradscope/verdict/text_summary")
    assert [t.step for t in texts] == list(range(4))
    last = texts[-1].tensor_proto.string_val[0].decode()
    assert "gradscope at step 3" in last and "rnn.l0" in last


def test_a_summary_writer_is_never_taken_for_a_folder(tmp_path, monkeypatch):
    """Regression: GradscopeCallback(tensorboard=writer) made a folder named after the object."""
    from torch.utils.tensorboard import SummaryWriter

    _imports.lightning()
    from gradscope.integrations.lightning import GradscopeCallback
    from gradscope.integrations.tensorboard import TensorBoardCallback

    monkeypatch.chdir(tmp_path)
    writer = SummaryWriter(str(tmp_path / "mine"))
    cb = GradscopeCallback(every=1, tensorboard=writer, analyze=False, figures_every=None)
    trainer = SimpleNamespace(is_global_zero=True, loggers=[], global_step=0)
    model = Seq()
    cb.on_train_start(trainer, model)
    _train(model, cb.monitor, 2)
    cb.close()
    tb = TensorBoardCallback(writer)  # the first argument may be a writer too
    assert tb.writer is writer
    tb.close()
    writer.flush()
    assert sorted(os.listdir(tmp_path)) == ["mine"]  # no "<torch.utils...SummaryWriter ...>"
    acc = _events(tmp_path / "mine")
    # logged at the trainer's step, which this fake trainer leaves at 0
    assert len(acc.Scalars("gradscope/rnn.l0/log10_grad_norm_t0")) == 2
    writer.close()  # still open after cb.close(): it was the user's


# --------------------------------------------------------------------------- W&B
def _wandb_records(run_dir):
    """The records of an offline run, read by wandb's own CLI (`wandb leet inspect`)."""
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_wandb_offline_run_holds_the_curves(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from gradscope.integrations.logger import MonitorLogger
    from gradscope.integrations.wandb import WandbWriter

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    torch.manual_seed(0)
    model = Seq()
    writer = WandbWriter(project="gradscope-test", dir=str(tmp_path))
    log = MonitorLogger(writer, figures_every=2)
    with Monitor(model, every=1, callbacks=[log], analyze=Every(2)) as mon:
        _train(model, mon, 4)
    log.close()  # finishes the run the writer started
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    records = _wandb_records(run_dir)
    metrics = {r["metric"]["name"]: r["metric"] for r in records if r["type"] == "metric"}
    tag = "gradscope/rnn.l0/log10_grad_norm_t0"
    assert metrics[tag]["step_metric"] == "gradscope/step"
    rows = [r["history"]["item"] for r in records if r["type"] == "history"]
    points = [(row["gradscope/step"], row[tag]) for row in rows if tag in row]
    assert [s for s, _ in points] == [0, 1, 2, 3]
    np.testing.assert_allclose(
        [v for _, v in points], np.log10(mon.history.scalar("rnn.l0", "grad_t0")), rtol=1e-12
    )
    rates = [row["gradscope/step"] for row in rows if "gradscope/rnn.l0/rate" in row]
    assert rates == np.flatnonzero(np.isfinite(mon.history.scalar("rnn.l0", "rate"))).tolist()
    assert len(rates) > 1
    images = [row for row in rows if "gradscope/rnn.l0/heatmap.path" in row]
    # figures_every=2, and once more at the end (step 3, analysed when the Monitor closed)
    assert [row["gradscope/step"] for row in images] == [0, 2, 3]
    assert (
        images[0]["gradscope/rnn.l0/heatmap.sha256"] != images[1]["gradscope/rnn.l0/heatmap.sha256"]
    )
    assert sum("gradscope/verdict._type" in row for row in rows) == 5  # 4 steps, and the end


# --------------------------------------------------------------------------- Lightning
def _lightning_module(pl):
    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(3, 5, batch_first=True)
            self.head = nn.Linear(5, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            out, _ = self.rnn(x)
            loss = ((self.head(out[:, -1]) - y) ** 2).mean()
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Module()


def _fit(pl, tmp_path, cb, **trainer_kwargs):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(24, 7, 3), torch.randn(24, 1))
    trainer = pl.Trainer(
        max_steps=6,
        callbacks=[cb],
        accelerator="cpu",
        devices=1,
        default_root_dir=str(tmp_path),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_kwargs,
    )
    trainer.fit(_lightning_module(pl), torch.utils.data.DataLoader(data, batch_size=4))
    return trainer


def test_lightning_logs_to_the_trainers_default_logger(tmp_path):
    pl = _imports.lightning()
    from gradscope.integrations.lightning import GradscopeCallback

    cb = GradscopeCallback(every=2, figures_every=2)  # logger=True: the trainer's loggers
    trainer = _fit(pl, tmp_path, cb)  # no logger given: Lightning's default
    assert type(trainer.logger).__name__ == "TensorBoardLogger"
    acc = _events(trainer.logger.log_dir)
    scalars = set(acc.Tags()["scalars"])
    assert "train_loss" in scalars  # Lightning's own metric, in the same event file
    events = acc.Scalars("gradscope/rnn.l0/log10_grad_norm_t0")
    assert [e.step for e in events] == [0, 2, 4]  # trainer.global_step of each sampled step
    assert len(acc.Scalars("gradscope/rnn.l0/rate")) > 1
    # figures_every=2 sampled steps, and the end of training: the last sampled step, analysed
    # then, at the step it was logged at
    assert [im.step for im in acc.Images("gradscope/rnn.l0/heatmap")] == [0, 4, 4]
    assert "gradscope/verdict/text_summary" in acc.Tags()["tensors"]


def test_lightning_csv_logger_gets_the_scalars(tmp_path):
    pl = _imports.lightning()
    from gradscope.integrations.lightning import GradscopeCallback

    logger = pl.loggers.CSVLogger(str(tmp_path))
    cb = GradscopeCallback(every=2, analyze=False)
    _fit(pl, tmp_path, cb, logger=logger)
    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    tag = "gradscope/rnn.l0/log10_grad_norm_t0"
    logged = [(int(r["step"]), float(r[tag])) for r in rows if r.get(tag)]
    assert [s for s, _ in logged] == [0, 2, 4]
    np.testing.assert_allclose(
        [v for _, v in logged], np.log10(cb.monitor.history.scalar("rnn.l0", "grad_t0"))
    )


def test_lightning_logger_false_logs_nothing(tmp_path):
    pl = _imports.lightning()
    from gradscope.integrations.lightning import GradscopeCallback

    cb = GradscopeCallback(every=2, analyze=False, logger=False)
    _fit(pl, tmp_path, cb)
    assert cb.logger is None and len(cb.monitor.history) == 3


# --------------------------------------------------------------------------- Hugging Face
class _HFModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 5, batch_first=True)
        self.head = nn.Linear(5, 1)

    def forward(self, x, labels=None):
        out, _ = self.rnn(x)
        pred = self.head(out[:, -1])
        return {"loss": ((pred - labels) ** 2).mean(), "logits": pred}


class _HFData(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 7, 3, generator=gen), torch.randn(n, 1, generator=gen)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def _hf_train(tmp_path, cb, steps=4):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=steps,
        per_device_train_batch_size=4,
        save_strategy="no",
        logging_steps=1,
        report_to=["tensorboard"],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = transformers.Trainer(
        model=_HFModel(), args=args, train_dataset=_HFData(24), callbacks=[cb]
    )
    trainer.train()
    return trainer


def test_hugging_face_report_to_tensorboard(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from gradscope.integrations.huggingface import GradscopeTrainerCallback

    tb_dir = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tb_dir))  # Trainer's own dir too
    cb = GradscopeTrainerCallback(every=1, figures_every=2, analyze=Every(2))
    _hf_train(tmp_path, cb)
    acc = _events(tb_dir)
    scalars = set(acc.Tags()["scalars"])
    assert "train/loss" in scalars  # Trainer's own TensorBoard callback, same directory
    events = acc.Scalars("gradscope/rnn.l0/log10_grad_norm_t0")
    assert [e.step for e in events] == [0, 1, 2, 3]  # state.global_step before each update
    rate = [e.step for e in acc.Scalars("gradscope/rnn.l0/rate")]
    assert rate == [0, 2, 3]  # sampled steps 0 and 2 (Every(2)), and the last one at the end
    # figures_every=2, and the end of training (at the step its row was logged at)
    assert [im.step for im in acc.Images("gradscope/rnn.l0/rate")] == [0, 2, 3]


def test_hugging_face_logs_into_the_trainers_own_run(tmp_path, monkeypatch):
    """transformers >= 5 names its run by the time training starts: gradscope finds it."""
    pytest.importorskip("transformers")
    from gradscope.integrations.huggingface import GradscopeTrainerCallback

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    cb = GradscopeTrainerCallback(every=1, figures_every=None)
    _hf_train(tmp_path, cb, steps=3)
    runs = {}
    for d in sorted((tmp_path / "out" / "runs").iterdir()):
        runs[d.name] = set(_events(d).Tags()["scalars"])
    (trainers,) = [name for name, tags in runs.items() if "train/loss" in tags]
    assert "gradscope/rnn.l0/log10_grad_norm_t0" in runs[trainers]  # beside the loss curve
    assert list(runs) == [trainers]  # no run of gradscope's own (runs/gradscope)
    assert cb.logger is None  # closed at the end of training


def test_missing_wandb_gives_a_helpful_error(monkeypatch):
    from gradscope.errors import OptionalDependencyError
    from gradscope.integrations.wandb import WandbWriter

    monkeypatch.setitem(sys.modules, "wandb", None)  # import of it now fails
    with pytest.raises(OptionalDependencyError, match=r"gradscope-rnn\[wandb\]"):
        WandbWriter(project="never-started")
    pytest.importorskip("transformers")
    from gradscope.integrations.huggingface import GradscopeTrainerCallback

    args = SimpleNamespace(output_dir="unused", report_to=["wandb"])
    with pytest.raises(OptionalDependencyError, match=r"report_to='wandb'.*\[wandb\]"):
        GradscopeTrainerCallback()._destinations(args)  # was a bare ModuleNotFoundError


def test_lightning_wandb_logger_gets_scalars_text_and_images(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    pl = _imports.lightning()
    from gradscope.integrations.lightning import GradscopeCallback

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = pl.loggers.WandbLogger(save_dir=str(tmp_path), offline=True, project="gs-test")
    cb = GradscopeCallback(every=2, figures_every=2, analyze=False)
    _fit(pl, tmp_path, cb, logger=logger)
    import wandb

    wandb.finish()
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    rows = [r["history"]["item"] for r in _wandb_records(run_dir) if r["type"] == "history"]
    tag = "gradscope/rnn.l0/log10_grad_norm_t0"
    assert [row["trainer/global_step"] for row in rows if tag in row] == [0, 2, 4]
    images = [row for row in rows if "gradscope/rnn.l0/heatmap._type" in row]  # log_image
    assert [row["trainer/global_step"] for row in images] == [0, 4]
    texts = [row for row in rows if "gradscope/verdict._type" in row]  # log_text: a table
    assert [row["trainer/global_step"] for row in texts] == [0, 2, 4]


def test_hugging_face_report_to_names(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    wandb = pytest.importorskip("wandb")
    from gradscope.integrations.huggingface import GradscopeTrainerCallback, tensorboard_dir
    from gradscope.integrations.wandb import WandbWriter
    from gradscope.integrations.writers import TensorBoardWriter

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    args = SimpleNamespace(output_dir=str(tmp_path / "out"), report_to=["tensorboard"])
    assert tensorboard_dir(args) == str(tmp_path / "out" / "runs" / "gradscope")
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "env"))
    assert tensorboard_dir(args) == str(tmp_path / "env")  # where transformers 5 writes too
    assert tensorboard_dir(SimpleNamespace(logging_dir="v4dir", output_dir="x")) == "v4dir"
    assert GradscopeTrainerCallback(report_to="none")._destinations(args) == []
    (dest,) = GradscopeTrainerCallback()._destinations(args)  # follows args.report_to
    assert isinstance(dest, TensorBoardWriter) and dest.log_dir == str(tmp_path / "env")
    dest.close()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    with pytest.warns(UserWarning, match="no W&B run is active"):
        assert GradscopeTrainerCallback(report_to=["wandb"])._destinations(args) == []
    run = wandb.init(project="gs-test", dir=str(tmp_path))
    try:
        with pytest.warns(UserWarning, match="'mlflow' is not supported"):
            (dest,) = GradscopeTrainerCallback(report_to=["wandb", "mlflow"])._destinations(args)
        assert isinstance(dest, WandbWriter) and dest.run is run
        assert dest.step_metric == "train/global_step"  # Trainer's own W&B x-axis
    finally:
        run.finish()


def test_log_all_replays_a_saved_history(tmp_path):
    from gradscope.history import load_history
    from gradscope.integrations.logger import log_all

    torch.manual_seed(0)
    model = Seq()
    with Monitor(model, every=1, analyze=Every(2)) as mon:
        _train(model, mon, 3)
    saved = load_history(mon.save(tmp_path / "hist.npz"))
    totals = log_all(saved, tmp_path / "tb", figures_every=None, scalars="all")
    acc = _events(tmp_path / "tb")
    assert [e.step for e in acc.Scalars("gradscope/rnn.l0/log10_grad_norm_tT")] == [0, 1, 2]
    assert [e.step for e in acc.Scalars("gradscope/rnn.l0/radius_max")] == [0, 2]
    n_scalars = sum(len(acc.Scalars(tag)) for tag in acc.Tags()["scalars"])
    assert totals == {"scalars": n_scalars, "texts": 3, "images": 0}


# --------------------------------------------------------------------------- failures
class _Recorder:
    """A Writer that keeps what it was given."""

    def __init__(self):
        self.scalars, self.texts = [], []

    def log_scalars(self, scalars, step):
        self.scalars.append((step, dict(scalars)))

    def log_text(self, tag, text, step):
        self.texts.append((step, text))

    def log_image(self, tag, image, step):
        pass

    def flush(self):
        pass

    def close(self):
        pass


def _logging_warnings(record):
    from gradscope.errors import GradscopeWarning, LoggingWarning

    out = [w for w in record if issubclass(w.category, LoggingWarning)]
    assert all(issubclass(w.category, GradscopeWarning) for w in out)
    return [str(w.message) for w in out]


def test_a_removed_log_dir_is_warned_once_and_training_goes_on(tmp_path):
    """Regression: deleting the TensorBoard log dir mid-run raised FileNotFoundError out of
    monitor.step() (and killed TensorBoard's writer thread for good)."""
    import shutil
    import warnings

    from gradscope.integrations.tensorboard import TensorBoardCallback

    torch.manual_seed(0)
    model = Seq()
    log_dir = tmp_path / "tb"
    tb = TensorBoardCallback(log_dir, figures_every=1)
    with Monitor(model, every=1, analyze=False, callbacks=[tb]) as mon:
        _train(model, mon, 2, seed=0)
        shutil.rmtree(log_dir)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            _train(model, mon, 2, seed=1)  # raised FileNotFoundError before
        (message,) = _logging_warnings(record)  # once, for two failing steps
        assert "TensorBoardWriter" in message and str(log_dir) in message
        assert "no longer exists" in message and "training goes on" in message
        assert not log_dir.exists()  # skipped, not recreated behind the user's back
        log_dir.mkdir()  # back: the writer carries on in it
        _train(model, mon, 1, seed=2)
    tb.close()
    assert len(mon.history) == 5
    acc = _events(log_dir)
    got = acc.Scalars("gradscope/rnn.l0/log10_grad_norm_t0")
    assert [e.step for e in got] == [4]
    np.testing.assert_allclose(
        got[0].value, np.log10(mon.history.scalar("rnn.l0", "grad_t0")[4]), rtol=1e-6
    )


def test_a_failing_writer_is_skipped_and_the_others_still_log(tmp_path):
    import warnings

    from gradscope.integrations.logger import MonitorLogger

    class Broken:  # a SummaryWriter whose add_scalar raises
        def add_scalar(self, *args, **kwargs):
            raise OSError(28, "No space left on device", "/data/tb/events.out")

        def add_text(self, *args, **kwargs):
            pass

        def add_image(self, *args, **kwargs):
            pass

        def flush(self):
            pass

    good = _Recorder()
    log = MonitorLogger(Broken(), good, figures_every=None)
    torch.manual_seed(0)
    model = Seq()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with Monitor(model, every=1, analyze=False, callbacks=[log]) as mon:
            _train(model, mon, 3)
        log.close()
    (message,) = _logging_warnings(record)
    assert "TensorBoardWriter" in message and "No space left on device" in message
    assert "/data/tb/events.out" in message and "scalars at step 0" in message
    assert log.writers.failures == {0: 3}  # every step tried, warned once
    assert [step for step, _ in good.scalars] == [0, 1, 2]
    np.testing.assert_allclose(
        [s["gradscope/rnn.l0/log10_grad_norm_t0"] for _, s in good.scalars],
        np.log10(mon.history.scalar("rnn.l0", "grad_t0")),
        rtol=1e-6,
    )
    assert len(good.texts) == 3


def test_a_step_that_cannot_be_logged_is_skipped(monkeypatch):
    import warnings

    from gradscope.integrations import logger as L

    def no_figures(history, index=-1):
        raise ValueError("cannot draw")

    monkeypatch.setattr(L, "figure_images", no_figures)
    log = L.MonitorLogger(_Recorder(), figures_every=1)
    torch.manual_seed(0)
    model = Seq()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with Monitor(model, every=1, analyze=False, callbacks=[log]) as mon:
            _train(model, mon, 2)
    (message,) = _logging_warnings(record)
    assert "MonitorLogger" in message and "ValueError: cannot draw" in message
    assert log.failures == 2 and len(mon.history) == 2


def _markdown_table(text):
    """The cells of the table in ``text`` as TensorBoard's own markdown renderer shows them."""
    from html.parser import HTMLParser

    plugin_util = pytest.importorskip("tensorboard.plugin_util")

    class Cells(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.rows, self.cell = [], None

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                self.rows.append([])
            elif tag in ("td", "th"):
                self.cell = ""
            elif tag == "br" and self.cell is not None:
                self.cell += "\n"
            elif self.cell is not None:  # markup a name must not turn into
                self.cell += f"<{tag}>"

        def handle_endtag(self, tag):
            if tag in ("td", "th"):
                self.rows[-1].append(self.cell)
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

    cells = Cells()
    cells.feed(plugin_util.markdown_to_safe_html(text))
    return cells.rows


NAMES = [
    "a|b",
    "enc\nlstm",
    "l1_reverse",
    "__init__",
    "<script>alert(1)</script>",
    "*x* [y](http://z) `c`",
    "back\\slash |",
    "tab\there",
    "ünïcode 层 ✓",
    "&amp; &lt;",
]


def test_verdict_table_keeps_one_row_per_layer_whatever_the_names():
    """Regression: a "|" or a newline in a layer name broke the markdown verdict table."""
    from gradscope.integrations.logger import verdict_text

    hist = History(1)
    row = np.array([[np.nan] * len(hist.keys)])
    hist.append(3, {name: (np.ones((1, 5)), row) for name in NAMES})
    rows = _markdown_table(verdict_text(hist))
    assert len(rows) == 1 + len(NAMES) and all(len(r) == 3 for r in rows)
    assert [r[0].strip() for r in rows[1:]] == NAMES


# --------------------------------------------------------------------------- odd values
def test_images_and_scalars_of_odd_values():
    from gradscope.integrations._images import image_array
    from gradscope.integrations.writers import TensorBoardWriter

    img = np.array([[[np.nan, 0.5, 1.0], [np.inf, -np.inf, 0.0]]])  # floats in [0, 1] + NaN
    np.testing.assert_array_equal(image_array(img), [[[0, 128, 255], [255, 0, 0]]])  # no cast
    for bad, match in [
        (b"not a png", "9 bytes that are no image"),
        (np.ones((2, 2, 3), complex), "real pixel values"),
        (np.zeros((0, 0, 3)), "non-empty"),
        (np.zeros((2, 2)), r"shape \(2, 2\)"),
    ]:
        with pytest.raises(ArgumentTypeError, match=match):
            image_array(bad)

    class Sink:
        def __init__(self):
            self.got = []

        def add_scalar(self, tag, value, global_step):
            self.got.append((tag, value, global_step))

        def add_text(self, tag, text, global_step):
            self.got.append((tag, text, global_step))

    sink = Sink()
    tb = TensorBoardWriter(sink)
    tb.log_scalars({"a": np.float32(0.5), "b": float("nan")}, 3)
    tb.log_text("t", 12, 4)  # text is text
    assert sink.got[0] == ("a", 0.5, 3) and np.isnan(sink.got[1][1])
    assert sink.got[2] == ("t", "12", 4)
    with pytest.raises(ArgumentTypeError, match="value of 'gradscope/x/rate' must be a number"):
        tb.log_scalars({"gradscope/x/rate": None}, 5)


def test_wandb_keys_with_a_star_keep_gradscopes_step(tmp_path, monkeypatch):
    """Regression: a layer named "a*b" made W&B's define_metric raise (a glob), dropping
    every scalar of the step."""
    pytest.importorskip("wandb")
    from gradscope.integrations.wandb import WandbWriter
    from gradscope.integrations.writers import Writers

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    writers = Writers([WandbWriter(project="gradscope-test", dir=str(tmp_path))])
    writers.log_scalars({"gradscope/a*b/rate": -0.5, "gradscope/c/rate": math.nan}, 7)
    writers.close()
    assert writers.failures == {}
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    records = _wandb_records(run_dir)
    metrics = {r["metric"]["name"]: r["metric"] for r in records if r["type"] == "metric"}
    assert metrics["gradscope/a\u2217b/rate"]["step_metric"] == "gradscope/step"
    (row,) = [r["history"]["item"] for r in records if r["type"] == "history"]
    assert row["gradscope/a\u2217b/rate"] == -0.5 and row["gradscope/step"] == 7
    assert row["gradscope/c/rate"] == "NaN"  # a NaN is a NaN point, not a failure


# --------------------------------------------------------------------------- to the end
def test_a_300_step_run_is_analysed_and_logged_to_its_last_sampled_step():
    from gradscope.history_text import history_table
    from gradscope.integrations.logger import MonitorLogger

    torch.manual_seed(0)
    model = Seq()
    rec = _Recorder()
    log = MonitorLogger(rec, figures_every=None)
    # analyze: every 16th sampled step (0, 80, 160, 240), so the last one (295) is not
    mon = Monitor(model, every=5, analyze=Every(16), callbacks=[log])
    _train(model, mon, 300)
    hist = mon.history
    assert hist.steps[-1] == 295 and hist.regime("rnn.l0")[-1] == ""
    table = history_table(hist)  # before the end: says whose regime it shows
    regime = hist.regime("rnn.l0")[48]  # row 48 = step 240, the latest analysed
    assert f"{regime} (" in table and "step 240)" in table
    assert "step 295 was not analysed" in table and "that of step 240" in table
    mon.close()
    # closed: the latest sampled step is analysed, and logged at its own step
    analysed = [int(s) for s, r in zip(hist.steps, hist.regime("rnn.l0")) if r]
    assert analysed == [0, 80, 160, 240, 295]
    rate_steps = [step for step, vals in rec.scalars if "gradscope/rnn.l0/rate" in vals]
    assert rate_steps == analysed
    again = [vals for step, vals in rec.scalars if step == 295]
    assert len(again) == 2 and "gradscope/rnn.l0/log10_grad_norm_t0" in again[0]
    assert "gradscope/rnn.l0/log10_grad_norm_t0" not in again[1]  # only what it lacked
    # a reference for the value logged: the decay fit of the very trace kept for that step
    import gradscope as gs
    from gradscope.analysis.sampling import evenly_spaced
    from gradscope.monitor import select_batch

    layer = mon.latest.trace["rnn.l0"]
    ref = gs.decay(select_batch(layer, evenly_spaced(layer.B, 2)), of="state", progress=False)
    assert again[1]["gradscope/rnn.l0/rate"] == pytest.approx(ref.rate, rel=1e-12)
    table = history_table(hist)
    assert "was not analysed" not in table and "step 240)" not in table
    assert not mon.analyze_latest()  # nothing left to analyse


def test_a_failed_run_analyses_nothing_more():
    torch.manual_seed(0)
    model = Seq()
    with pytest.raises(RuntimeError, match="boom"), Monitor(model, analyze=Every(16)) as mon:
        _train(model, mon, 51)  # sampled steps 0 (analysed) and 50 (not)
        raise RuntimeError("boom")
    assert mon.closed and mon.history.regime("rnn.l0")[1] == ""  # left as it was
    mon = Monitor(model, every=1, analyze=False)  # analyze=False: not even at the end
    _train(model, mon, 2)
    mon.close()
    assert mon.history.regime("rnn.l0") == ["", ""]


def test_core_tags_by_default_every_field_on_request():
    from gradscope.integrations.logger import CORE_KEYS, SCALARS, MonitorLogger

    torch.manual_seed(0)
    model = Seq()
    core, every = _Recorder(), _Recorder()
    loggers = [MonitorLogger(core, figures_every=None), MonitorLogger(every, scalars="all")]
    with Monitor(model, every=1, analyze=True, callbacks=loggers) as mon:
        _train(model, mon, 2)
    tags = set(core.scalars[0][1])
    want = {"rate", "regime_code", "half_life", "log10_grad_norm_t0", "log10_grad_norm_tT"}
    want |= {"loss_rate", "gate_update_median"}  # a GRU: its carried gate is z
    assert tags == {f"gradscope/rnn.l0/{t}" for t in want}
    assert len(CORE_KEYS) == 10  # λ1 (lyapunov=True) and the other families' gates
    entry = mon.history.entry("rnn.l0", 0)
    finite = [k for k in mon.history.keys if np.isfinite(_as_number(entry[k]))]
    assert set(every.scalars[0][1]) == {f"gradscope/rnn.l0/{SCALARS[k]}" for k in finite}
    assert len(every.scalars[0][1]) > 3 * len(tags)
    picked = _Recorder()
    MonitorLogger(picked, scalars=["T", "radius_median"]).log(mon.history)
    assert set(picked.scalars[0][1]) == {"gradscope/rnn.l0/T", "gradscope/rnn.l0/radius_median"}
    with pytest.raises(ArgumentError, match="no History field \\['radius'\\]"):
        MonitorLogger(picked, scalars=["radius"])
    with pytest.raises(ArgumentError, match="'core', 'all'"):
        MonitorLogger(picked, scalars="some")


def _as_number(v):
    from gradscope.history import REGIME_CODES

    if isinstance(v, str):
        return REGIME_CODES.get(v, math.nan)
    return float(v) if np.ndim(v) == 0 else math.nan


def test_image_titles_name_their_layer():
    from gradscope.integrations.logger import layer_figures

    torch.manual_seed(0)
    model = Seq()
    with Monitor(model, every=1, analyze=True) as mon:
        _train(model, mon, 2)
    figures = layer_figures(mon.history, "rnn.l0")
    assert figures["heatmap"].axes[0].get_title().startswith("rnn.l0: Loss gradient over")
    assert figures["rate"].axes[0].get_title() == "rnn.l0: Decay rate over training"
