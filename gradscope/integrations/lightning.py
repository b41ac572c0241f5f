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
  gradients are those of the unscaled loss;
* ``on_after_backward``: ``monitor.step()``. Lightning calls it after every backward pass and
  before the optimizer step, so one Monitor step is one backward pass (with
  ``accumulate_grad_batches > 1``, one micro-batch: each forward/backward pair is recorded on
  its own). A batch whose ``training_step`` returns None has no backward pass: its forward
  is not part of any step and is left out (the Monitor keeps only what a backward reached);
* ``on_validation_start`` / ``on_validation_end``: the Monitor is paused, so validation
  forwards are never recorded;
* ``on_train_end``: the hooks are removed; rank 0 writes the report and the history if paths
  were given;
* ``on_exception`` and ``teardown``: the hooks are removed, nothing is analysed or written.

Under DDP each rank monitors its own batch and the Monitor gathers the summaries with tensor
collectives; only rank 0 writes files. Lightning is imported when this module is imported
(``pip install "gradscope-rnn[lightning]"``); ``import gradscope`` never imports it.
"""

from __future__ import annotations

import os
from typing import Any

from gradscope.integrations._imports import lightning
from gradscope.integrations._session import MonitorSession
from gradscope.monitor import Schedule

_pl = lightning()


class GradscopeCallback(MonitorSession, _pl.Callback):
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
        super().__init__(every, schedule=schedule, report=report, save=save, **monitor_kwargs)
        self.tensorboard = tensorboard
        self._tb: Any = None

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

    def close(self) -> None:
        """Remove every hook and close the TensorBoard writer (idempotent)."""
        super().close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    # ----------------------------------------------------------------- hooks
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Create the Monitor on the module being trained."""
        self.close()
        kwargs = dict(self.monitor_kwargs)
        callbacks = list(kwargs.pop("callbacks", ()))
        if kwargs.get("grad_scaler") is None:  # precision="16-mixed": the loss is scaled
            scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
            kwargs["grad_scaler"] = scaler if callable(getattr(scaler, "get_scale", None)) else None
        if trainer.is_global_zero:
            self._tb = self._tensorboard(trainer)
            if self._tb is not None:
                callbacks.append(self._tb)
        self.monitor = self._new_monitor(pl_module, callbacks=callbacks, **kwargs)

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
        """Remove the hooks; on rank 0 write the report and history if paths were given."""
        self._finish(trainer.is_global_zero)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Remove every hook; nothing is analysed or written while training fails."""
        self.close()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Remove every hook (idempotent)."""
        self.close()


__all__ = ["GradscopeCallback"]
