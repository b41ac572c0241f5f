"""A Hugging Face ``TrainerCallback`` that runs a :class:`gradscope.Monitor` in ``Trainer``.

Usage::

    from gradscope.integrations.huggingface import GradscopeTrainerCallback

    cb = GradscopeTrainerCallback(every=50, report="gradients.html", save="gradients.npz")
    trainer = transformers.Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb])
    trainer.train()
    cb.monitor.history.grad_norms("encoder.lstm.l0")

One Monitor step is one backward pass, as with a hand-written loop. What it does, event by
event (``Trainer``'s order: ``on_step_begin``, then per micro-batch a forward and backward
followed by ``on_substep_end``, except the last, which is followed by
``on_pre_optimizer_step`` before the optimizer step):

* ``on_step_begin``: creates the Monitor on the model at the first training step (so an
  evaluation before training, ``eval_on_start``, is never recorded) and resumes it after an
  evaluation. In the main process the Monitor logs every sampled step where
  ``args.report_to`` says (or the callback's ``report_to``): ``"tensorboard"`` to event
  files in the ``Trainer``'s own TensorBoard run, beside its loss curves (the directory of
  its ``TensorBoardCallback``'s writer, :func:`trainers_tensorboard_dir`), else
  ``args.logging_dir`` (transformers < 5), else ``$TENSORBOARD_LOGGING_DIR``, else
  ``<output_dir>/runs/gradscope``;
  ``"wandb"`` to the active W&B run (``Trainer``'s W&B callback starts it), on its x-axis
  ``train/global_step``. Points are logged at ``state.global_step``, the optimizer steps
  completed before this backward pass. Other integrations are skipped with a warning. The
  tags and their cadence are listed in :mod:`gradscope.integrations.logger`;
* ``on_substep_end`` and ``on_pre_optimizer_step``: ``monitor.step()``, after a backward
  pass and before the optimizer step (with ``gradient_accumulation_steps > 1`` each
  micro-batch is recorded on its own);
* ``on_step_end`` / ``on_epoch_end``: when ``Trainer`` is about to evaluate
  (``control.should_evaluate``), the Monitor is paused until the next training step, so
  evaluation forwards are never recorded;
* ``on_train_end``: the main process analyses the latest sampled step if it was not and
  logs it (:meth:`gradscope.Monitor.analyze_latest`), the hooks are removed, and the main
  process writes the report and the history if paths were given.

Under ``torch.distributed`` each rank monitors its own batch and rank 0 gathers the
summaries (see :class:`gradscope.Monitor`). ``transformers`` is imported when this module is
imported (``pip install "gradscope-rnn[huggingface]"``); ``import gradscope`` never imports it.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from gradscope.errors import LoggingWarning
from gradscope.integrations._imports import TRANSFORMERS, WANDB, require
from gradscope.integrations._session import MonitorSession
from gradscope.monitor import Schedule

_transformers = require(TRANSFORMERS, "gradscope.integrations.huggingface")


def trainers_tensorboard_dir(callback: Any, depth: int = 16) -> str | None:
    """The log directory of the ``Trainer``'s own TensorBoard callback, or None.

    ``Trainer`` hands its callbacks no reference to each other, so this looks up the call
    stack for the ``CallbackHandler`` running ``callback`` (the caller whose ``callbacks``
    list holds it) and takes, from the callback there that owns a TensorBoard writer
    (``tb_writer``, as ``transformers``' ``TensorBoardCallback``), the writer's
    ``log_dir``, else its ``logging_dir``. Called from an event after ``on_train_begin``
    (the TensorBoard callback opens its writer then), so gradscope's event files go into
    the very run of the ``Trainer``'s loss curves, whatever directory it chose (in
    transformers >= 5 one named by the time training started).

    Args:
        callback: The gradscope callback being run.
        depth: How many frames to look up.
    """
    frame = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return None
        callbacks = getattr(frame.f_locals.get("self"), "callbacks", None)
        if isinstance(callbacks, list) and any(cb is callback for cb in callbacks):
            for cb in callbacks:
                if cb is callback or not hasattr(cb, "tb_writer"):
                    continue
                found = getattr(cb.tb_writer, "log_dir", None) or getattr(cb, "logging_dir", None)
                if found:
                    return str(found)
            return None
        frame = frame.f_back
    return None


def tensorboard_dir(args: Any, trainers: str | None = None) -> str:
    """Where gradscope's TensorBoard event files go in a ``Trainer`` run.

    ``trainers``: the directory of the ``Trainer``'s own TensorBoard callback
    (:func:`trainers_tensorboard_dir`), the same run as its loss curves; else
    ``args.logging_dir`` (transformers < 5, where ``Trainer`` writes its own), else
    ``$TENSORBOARD_LOGGING_DIR`` (transformers >= 5 writes there when it is set), else
    ``<output_dir>/runs/gradscope`` (a run of its own: no ``Trainer`` TensorBoard callback
    was found).
    """
    if trainers:
        return trainers
    logging_dir = getattr(args, "logging_dir", None)
    if logging_dir:
        return str(logging_dir)
    env = os.environ.get("TENSORBOARD_LOGGING_DIR")
    if env:
        return os.path.expanduser(env)
    return os.path.join(str(args.output_dir), "runs", "gradscope")


class GradscopeTrainerCallback(MonitorSession, _transformers.TrainerCallback):
    """Monitor every recurrent layer of the model that a ``transformers.Trainer`` trains.

    Args:
        every: Sample every ``every``-th backward pass (see :class:`gradscope.Monitor`).
        schedule: A callable ``step -> bool`` instead of ``every``.
        report: Write the training report here (HTML or PDF by suffix) at the end of
            training, in the main process. None: no report.
        save: Save the history here (``.npz``) at the end of training, in the main process.
        report_to: Where to log: None (default) follows ``args.report_to``; else a name or
            list of names of the same kind (``"tensorboard"``, ``"wandb"``; ``"none"`` or
            ``[]``: nowhere).
        writers: More destinations (see :class:`gradscope.integrations.logger.MonitorLogger`).
        figures_every: Log the figures every this many sampled steps (None: never).
        scalars: Which History fields to log: ``"core"`` (default), ``"all"`` or a list
            (see :class:`~gradscope.integrations.logger.MonitorLogger`).
        **monitor_kwargs: Passed to :class:`gradscope.Monitor` (``cells``, ``lyapunov``,
            ``analyze``, ``callbacks``, ...).

    Attributes:
        monitor: The :class:`gradscope.Monitor` (None before the first training step); it
            stays readable after training.
        logger: The :class:`~gradscope.integrations.logger.MonitorLogger` (None when there
            is nowhere to log).
        report_path: The report written at the end of training (None if none was).

    ``Trainer`` has no event for a failed run: call :meth:`close` in a ``finally`` if
    ``trainer.train()`` may raise.
    """

    def __init__(
        self,
        every: int = 50,
        *,
        schedule: Schedule | None = None,
        report: str | os.PathLike | None = None,
        save: str | os.PathLike | None = None,
        report_to: str | Sequence[str] | None = None,
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
        self.report_to = report_to
        self._state: Any = None

    def _destinations(self, args: Any, trainers_dir: str | None = None) -> list[Any]:
        """Writers for the integrations named in ``report_to`` (or ``args.report_to``).

        ``trainers_dir``: the ``Trainer``'s own TensorBoard directory, if found.
        """
        from gradscope.integrations.writers import TensorBoardWriter

        names = self.report_to if self.report_to is not None else getattr(args, "report_to", [])
        if isinstance(names, str):
            names = [names]
        names = [str(n) for n in names or () if n not in ("none", None)]
        if "all" in names:  # TrainingArguments expands it; a callback's own "all" likewise
            from transformers.integrations import get_available_reporting_integrations

            names = list(get_available_reporting_integrations())
        out: list[Any] = []
        for name in dict.fromkeys(names):
            if name == "tensorboard":
                out.append(TensorBoardWriter(tensorboard_dir(args, trainers_dir)))
            elif name == "wandb":
                wandb = require(WANDB, "GradscopeTrainerCallback(report_to='wandb')")
                if wandb.run is None:
                    warnings.warn(
                        "GradscopeTrainerCallback: report_to includes 'wandb' but no W&B run "
                        "is active; nothing is logged to W&B",
                        LoggingWarning,
                        stacklevel=2,
                    )
                    continue
                from gradscope.integrations.wandb import WandbWriter

                out.append(WandbWriter(wandb.run, step_metric="train/global_step"))
            else:
                warnings.warn(
                    f"GradscopeTrainerCallback: report_to {name!r} is not supported; gradscope "
                    "logs to 'tensorboard' and 'wandb' (or any writers=...)",
                    LoggingWarning,
                    stacklevel=2,
                )
        return out

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Forget a Monitor left from an earlier ``train()`` call (a new one starts lazily)."""
        self.close()
        self.monitor = None
        self.report_path = None

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Create the Monitor at the first training step; resume it after an evaluation."""
        self._resume()
        self._state = state
        if self.monitor is None:
            model = kwargs.get("model")
            if model is None:
                raise RuntimeError(
                    "GradscopeTrainerCallback: Trainer passed no model to the callback; "
                    "create gradscope.Monitor(model) yourself and call monitor.step() after "
                    "each backward pass"
                )
            main = getattr(state, "is_world_process_zero", True)
            trainers_dir = trainers_tensorboard_dir(self) if main else None
            self.monitor = self._new_monitor(
                model,
                self._destinations(args, trainers_dir) if main else None,
                step=lambda _: int(self._state.global_step),
                **self.monitor_kwargs,
            )

    def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """A micro-batch's backward pass ended without an optimizer step: end the step."""
        self._step()

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """The last micro-batch's backward pass ended; the optimizer has not stepped."""
        self._step()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Pause the Monitor if ``Trainer`` evaluates now."""
        if getattr(control, "should_evaluate", False):
            self._pause_monitor()

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Pause the Monitor if ``Trainer`` evaluates at the end of the epoch."""
        if getattr(control, "should_evaluate", False):
            self._pause_monitor()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Remove the hooks; in the main process write the report and history if asked."""
        self._finish(getattr(state, "is_world_process_zero", True))


__all__ = ["GradscopeTrainerCallback", "tensorboard_dir", "trainers_tensorboard_dir"]
