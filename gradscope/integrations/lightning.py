"""A Lightning ``Callback`` that runs a :class:`gradscope.Monitor` during ``trainer.fit``.

Usage::

    from gradscope.integrations.lightning import GradscopeCallback

    cb = GradscopeCallback(every=50, report="gradients.html", save="gradients.npz")
    trainer = lightning.Trainer(callbacks=[cb], ...)
    trainer.fit(module, loader)
    cb.monitor.history.grad_norms("rnn.l0")

What it does, hook by hook:

* ``on_train_start``: creates the Monitor on the ``LightningModule`` (after the sanity check,
  so the sanity-check validation is never recorded), with the precision plugin's
  ``GradScaler`` (``precision="16-mixed"``) as its ``grad_scaler``, so the recorded
  gradients are those of the unscaled loss; on rank 0 it logs every sampled step to the
  trainer's loggers (``trainer.loggers``: ``TensorBoardLogger``, ``CSVLogger``,
  ``WandbLogger``, ... ; ``logger=False`` turns this off) at ``trainer.global_step``, the
  step of Lightning's own metrics (with ``accumulate_grad_batches > 1`` the sampled
  backward passes of one optimizer step share that step). Scalars go through each
  logger's ``log_metrics``; the verdict text and the figures through
  ``log_text``/``log_image`` or the logger's
  ``SummaryWriter`` (a ``CSVLogger`` gets the scalars only). The tags and their cadence
  are listed in :mod:`gradscope.integrations.logger`;
* ``on_after_backward``: ``monitor.step()``. Lightning calls it after every backward pass and
  before the optimizer step, so one Monitor step is one backward pass (with
  ``accumulate_grad_batches > 1``, one micro-batch: each forward/backward pair is recorded on
  its own). A batch whose ``training_step`` returns None has no backward pass: its forward
  is not part of any step and is left out (the Monitor keeps only what a backward reached);
* ``on_validation_start`` / ``on_validation_end``: the Monitor is paused, so validation
  forwards are never recorded;
* ``on_train_end``: rank 0 analyses the latest sampled step if it was not and logs it
  (:meth:`gradscope.Monitor.analyze_latest`), the hooks are removed, and rank 0 writes the
  report and the history if paths were given;
* ``on_exception`` and ``teardown``: the hooks are removed, nothing is analysed or written.

Under DDP each rank monitors its own batch and the Monitor gathers the summaries with tensor
collectives; only rank 0 writes files. Lightning is imported when this module is imported
(``pip install "gradscope-rnn[lightning]"``); ``import gradscope`` never imports it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from gradscope.integrations._imports import lightning
from gradscope.integrations._session import MonitorSession
from gradscope.integrations.writers import TensorBoardWriter
from gradscope.monitor import Schedule

_pl = lightning()


def _summary_writer(logger: Any) -> Any:
    """The ``SummaryWriter`` of a Lightning ``TensorBoardLogger`` (None for other loggers)."""
    experiment = getattr(logger, "experiment", None)
    return experiment if callable(getattr(experiment, "add_scalar", None)) else None


class GradscopeCallback(MonitorSession, _pl.Callback):
    """Monitor every recurrent layer of the ``LightningModule`` while it trains.

    Args:
        every: Sample every ``every``-th backward pass (see :class:`gradscope.Monitor`).
        schedule: A callable ``step -> bool`` instead of ``every``.
        report: Write the training report here (HTML or PDF by suffix) at the end of
            training, on rank 0. None: no report.
        save: Save the history here (``.npz``) at the end of training, on rank 0.
        logger: Where to log the summaries: True (default) every logger of the trainer
            (``trainer.loggers``, none with ``Trainer(logger=False)``); False: none; or a
            logger or list of loggers.
        tensorboard: Also log to TensorBoard: a log directory or a ``SummaryWriter``; True:
            the trainer's ``TensorBoardLogger`` (already used with ``logger=True``), else
            TensorBoard's default directory (``runs/...``).
        writers: More destinations (see :class:`gradscope.integrations.logger.MonitorLogger`).
        figures_every: Log the figures every this many sampled steps (None: never).
        scalars: Which History fields to log: ``"core"`` (default), ``"all"`` or a list
            (see :class:`~gradscope.integrations.logger.MonitorLogger`).
        **monitor_kwargs: Passed to :class:`gradscope.Monitor` (``cells``, ``lyapunov``,
            ``analyze``, ``spectra_steps``, ...).

    Attributes:
        monitor: The :class:`gradscope.Monitor` (None before training starts); it stays
            readable after training.
        logger: The :class:`~gradscope.integrations.logger.MonitorLogger` (None when there
            is nowhere to log).
        report_path: The report written at the end of training (None if none was).
    """

    def __init__(
        self,
        every: int = 50,
        *,
        schedule: Schedule | None = None,
        report: str | os.PathLike | None = None,
        save: str | os.PathLike | None = None,
        logger: Any = True,
        tensorboard: Any = None,
        writers: Sequence[Any] = (),
        figures_every: int | None = 10,
        scalars: Any = "core",
        **monitor_kwargs: Any,
    ) -> None:
        super().__init__(
            every,
            schedule=schedule,
            report=report,
            save=save,
            writers=writers,
            figures_every=figures_every,
            scalars=scalars,
            **monitor_kwargs,
        )
        self.use_loggers = logger
        self.tensorboard = tensorboard

    # ----------------------------------------------------------------- helpers
    def _destinations(self, trainer: Any) -> list[Any]:
        """The trainer's loggers (``logger``) and the TensorBoard destination asked for."""
        trainer_loggers = list(getattr(trainer, "loggers", None) or ())
        if self.use_loggers is True:
            out = list(trainer_loggers)
        elif self.use_loggers in (None, False):
            out = []
        elif isinstance(self.use_loggers, (list, tuple)):
            out = list(self.use_loggers)
        else:
            out = [self.use_loggers]
        if self.tensorboard is True:
            tb = [lg for lg in trainer_loggers if _summary_writer(lg) is not None]
            if not any(lg in out for lg in tb):  # not logged to already
                out.append(_summary_writer(tb[0]) if tb else TensorBoardWriter(None))
        elif self.tensorboard not in (None, False):
            out.append(TensorBoardWriter(self.tensorboard))  # a log dir or a SummaryWriter
        return out

    # ----------------------------------------------------------------- hooks
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Create the Monitor on the module being trained (and its logger on rank 0)."""
        self.close()
        kwargs = dict(self.monitor_kwargs)
        if kwargs.get("grad_scaler") is None:  # precision="16-mixed": the loss is scaled
            scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
            kwargs["grad_scaler"] = scaler if callable(getattr(scaler, "get_scale", None)) else None
        main = trainer.is_global_zero
        self.monitor = self._new_monitor(
            pl_module,
            self._destinations(trainer) if main else None,
            step=lambda _: int(trainer.global_step),
            **kwargs,
        )

    def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
        """End the Monitor's step: the backward pass has run, the optimizer has not."""
        self._step()

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        """Pause the Monitor so validation forwards are not recorded."""
        self._pause_monitor()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        """Resume the Monitor after validation."""
        self._resume()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """Analyse and log the latest sampled step, remove the hooks; write the files (rank 0)."""
        self._finish(trainer.is_global_zero)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Remove every hook; nothing is analysed or written while training fails."""
        self.close()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Remove every hook (idempotent)."""
        self.close()


__all__ = ["GradscopeCallback"]
