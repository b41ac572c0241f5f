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
  evaluation;
* ``on_substep_end`` and ``on_pre_optimizer_step``: ``monitor.step()``, after a backward
  pass and before the optimizer step (with ``gradient_accumulation_steps > 1`` each
  micro-batch is recorded on its own);
* ``on_step_end`` / ``on_epoch_end``: when ``Trainer`` is about to evaluate
  (``control.should_evaluate``), the Monitor is paused until the next training step, so
  evaluation forwards are never recorded;
* ``on_train_end``: the hooks are removed; the main process writes the report and the
  history if paths were given.

Under ``torch.distributed`` each rank monitors its own batch and rank 0 gathers the
summaries (see :class:`gradscope.Monitor`). ``transformers`` is imported when this module is
imported (``pip install "gradscope-rnn[huggingface]"``); ``import gradscope`` never imports it.
"""

from __future__ import annotations

from typing import Any

from gradscope.integrations._imports import TRANSFORMERS, require
from gradscope.integrations._session import MonitorSession

_transformers = require(TRANSFORMERS, "gradscope.integrations.huggingface")


class GradscopeTrainerCallback(MonitorSession, _transformers.TrainerCallback):
    """Monitor every recurrent layer of the model that a ``transformers.Trainer`` trains.

    Args:
        every: Sample every ``every``-th backward pass (see :class:`gradscope.Monitor`).
        schedule: A callable ``step -> bool`` instead of ``every``.
        report: Write the training report here (HTML or PDF by suffix) at the end of
            training, in the main process. None: no report.
        save: Save the history here (``.npz``) at the end of training, in the main process.
        **monitor_kwargs: Passed to :class:`gradscope.Monitor` (``cells``, ``lyapunov``,
            ``analyze``, ``callbacks``, ...).

    Attributes:
        monitor: The :class:`gradscope.Monitor` (None before the first training step); it
            stays readable after training.
        report_path: The report written at the end of training (None if none was).

    ``Trainer`` has no event for a failed run: call :meth:`close` in a ``finally`` if
    ``trainer.train()`` may raise.
    """

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Forget a Monitor left from an earlier ``train()`` call (a new one starts lazily)."""
        self.close()
        self.monitor = None
        self.report_path = None

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Create the Monitor at the first training step; resume it after an evaluation."""
        self._resume()
        if self.monitor is None:
            model = kwargs.get("model")
            if model is None:
                raise RuntimeError(
                    "GradscopeTrainerCallback: Trainer passed no model to the callback; "
                    "create gradscope.Monitor(model) yourself and call monitor.step() after "
                    "each backward pass"
                )
            self.monitor = self._new_monitor(model, **self.monitor_kwargs)

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


__all__ = ["GradscopeTrainerCallback"]
