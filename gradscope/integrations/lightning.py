"""A Lightning ``Callback`` that runs a :class:`gradscope.Monitor` during ``trainer.fit``.

Usage::

    from gradscope.integrations.lightning import GradscopeCallback

    cb = GradscopeCallback(every=50, report="gradients.html", save="gradients.npz")
    trainer = lightning.Trainer(callbacks=[cb], ...)
    trainer.fit(module, loader)
    cb.monitor.history.grad_norms("rnn.l0")

What it does, hook by hook:

* ``on_train_start``: creates the Monitor on the ``LightningModule`` (after the sanity check,
  so the sanity-check validation is never recorded);
* ``on_after_backward``: ``monitor.step()``. Lightning calls it after every backward pass and
  before the optimizer step, so one Monitor step is one backward pass (with
  ``accumulate_grad_batches > 1``, one micro-batch: each forward/backward pair is recorded on
  its own);
* ``on_validation_start`` / ``on_validation_end``: the Monitor is paused, so validation
  forwards are never recorded;
* ``on_train_end``: the hooks are removed; rank 0 writes the report and the history if paths
  were given;
* ``on_exception`` and ``teardown``: the hooks are removed, nothing is analysed or written.

Under DDP each rank monitors its own batch and the Monitor gathers the summaries with tensor
collectives; only rank 0 writes files. Lightning is imported when this module is imported
(``pip install "gradscope[lightning]"``); ``import gradscope`` never imports it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from gradscope.integrations._imports import lightning
from gradscope.monitor import Monitor, Schedule

_pl = lightning()


class GradscopeCallback(_pl.Callback):
    """Monitor every recurrent layer of the ``LightningModule`` while it trains.

    Args:
        every: Sample every ``every``-th backward pass (see :class:`gradscope.Monitor`).
        schedule: A callable ``step -> bool`` instead of ``every``.
        report: Write the training report here (HTML or PDF by suffix) at the end of
            training, on rank 0. None: no report.
        save: Save the history here (``.npz``) at the end of training, on rank 0.
        tensorboard: Also log to TensorBoard: a log directory, or True to use the
            trainer's logger when it exposes a ``SummaryWriter`` as ``logger.experiment``
            (Lightning's ``TensorBoardLogger``), else TensorBoard's default directory.
        **monitor_kwargs: Passed to :class:`gradscope.Monitor` (``cells``, ``lyapunov``,
            ``analyze``, ``spectra_steps``, ...).

    Attributes:
        monitor: The :class:`gradscope.Monitor` (None before training starts); it stays
            readable after training.
        report_path: The report written at the end of training (None if none was).
    """

    def __init__(
        self,
        every: int = 50,
        *,
        schedule: Schedule | None = None,
        report: str | os.PathLike | None = None,
        save: str | os.PathLike | None = None,
        tensorboard: str | os.PathLike | bool | None = None,
        **monitor_kwargs: Any,
    ) -> None:
        super().__init__()
        self.every = every
        self.schedule = schedule
        self.report_file = None if report is None else Path(report)
        self.save_file = None if save is None else Path(save)
        self.tensorboard = tensorboard
        self.monitor_kwargs = monitor_kwargs
        self.monitor: Monitor | None = None
        self.report_path: Path | None = None
        self._tb: Any = None
        self._pause: contextlib.ExitStack | None = None

    # ----------------------------------------------------------------- helpers
    def _tensorboard(self, trainer: Any) -> Any:
        if self.tensorboard in (None, False):
            return None
        from gradscope.integrations.tensorboard import TensorBoardCallback

        if self.tensorboard is True:
            writer = getattr(getattr(trainer, "logger", None), "experiment", None)
            if callable(getattr(writer, "add_scalar", None)):
                return TensorBoardCallback(writer=writer)
            return TensorBoardCallback()
        return TensorBoardCallback(self.tensorboard)

    def _resume(self) -> None:
        pause, self._pause = self._pause, None
        if pause is not None:
            pause.close()

    def _close(self) -> None:
        if self.monitor is not None:
            self.monitor.close()  # first, so that leaving the pause re-attaches nothing
        self._resume()
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    # ----------------------------------------------------------------- hooks
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Create the Monitor on the module being trained."""
        self._close()
        kwargs = dict(self.monitor_kwargs)
        callbacks = list(kwargs.pop("callbacks", ()))
        if trainer.is_global_zero:
            self._tb = self._tensorboard(trainer)
            if self._tb is not None:
                callbacks.append(self._tb)
        self.monitor = Monitor(
            pl_module,
            self.every,
            schedule=self.schedule,
            callbacks=callbacks,
            **kwargs,
        )

    def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
        """End the Monitor's step: the backward pass has run, the optimizer has not."""
        if self.monitor is not None and not self.monitor.closed:
            self.monitor.step()

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        """Pause the Monitor so validation forwards are not recorded."""
        if self.monitor is not None and not self.monitor.closed and self._pause is None:
            stack = contextlib.ExitStack()
            stack.enter_context(self.monitor.paused())
            self._pause = stack

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        """Resume the Monitor after validation."""
        self._resume()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """Remove the hooks; on rank 0 write the report and history if paths were given."""
        self._close()
        if self.monitor is None or not trainer.is_global_zero:
            return
        if self.save_file is not None:
            self.monitor.save(self.save_file)
        if self.report_file is not None:
            self.report_path = self.monitor.report(self.report_file)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Remove every hook; nothing is analysed or written while training fails."""
        self._close()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Remove every hook (idempotent)."""
        self._close()


__all__ = ["GradscopeCallback"]
