"""What the framework callbacks share: options, pausing, logging and the files written at the end.

A framework callback (Lightning, Hugging Face) mixes :class:`MonitorSession` in and maps the
framework's events onto it: :meth:`_new_monitor` when training starts (with the logging
destinations the framework has, see :mod:`gradscope.integrations.logger`), :meth:`_step`
after each backward pass, :meth:`_pause_monitor` / :meth:`_resume` around evaluation, and
:meth:`_finish` when training ends.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gradscope.monitor import Monitor, Schedule


class MonitorSession:
    """The Monitor of one training run, with the report and history to write at its end.

    Args:
        every: Sample every ``every``-th backward pass (see :class:`gradscope.Monitor`).
        schedule: A callable ``step -> bool`` instead of ``every``.
        report: Write the training report here (HTML or PDF by suffix) at the end of
            training, in the main process. None: no report.
        save: Save the history here (``.npz``) at the end of training, in the main process.
        writers: More destinations to log to, besides the framework's own (anything
            :func:`~gradscope.integrations.writers.as_writer` accepts: a TensorBoard log
            directory or ``SummaryWriter``, a W&B run, a Lightning logger, a Writer).
        figures_every: Log the heatmap and rate figures every this many sampled steps
            (None: never); see :class:`~gradscope.integrations.logger.MonitorLogger`.
        scalars: Which History fields to log: ``"core"`` (default), ``"all"`` or a list
            (see :class:`~gradscope.integrations.logger.MonitorLogger`).
        **monitor_kwargs: Passed to :class:`gradscope.Monitor`.

    Attributes:
        monitor: The :class:`gradscope.Monitor` (None before training starts); it stays
            readable after training.
        logger: The :class:`~gradscope.integrations.logger.MonitorLogger` of this run (None
            when there is nowhere to log, or on other processes than the main one).
        report_path: The report written at the end of training (None if none was).
    """

    def __init__(
        self,
        every: int = 50,
        *,
        schedule: Schedule | None = None,
        report: str | os.PathLike | None = None,
        save: str | os.PathLike | None = None,
        writers: Sequence[Any] = (),
        figures_every: int | None = 10,
        scalars: Any = "core",
        **monitor_kwargs: Any,
    ) -> None:
        super().__init__()  # the framework's callback base class, next in the MRO
        self.every = every
        self.schedule = schedule
        self.report_file = None if report is None else Path(report)
        self.save_file = None if save is None else Path(save)
        self.writers = list(writers)
        self.figures_every = figures_every
        from gradscope.history import SUMMARY_KEYS
        from gradscope.integrations.logger import scalar_keys

        scalar_keys(scalars, SUMMARY_KEYS)  # a wrong name fails here, not when training starts
        self.scalars = scalars
        self.monitor_kwargs = monitor_kwargs
        self.monitor: Monitor | None = None
        self.logger: Any = None
        self.report_path: Path | None = None
        self._pause: contextlib.ExitStack | None = None

    def _live(self) -> bool:
        return self.monitor is not None and not self.monitor.closed

    def _new_monitor(
        self,
        model: Any,
        destinations: Sequence[Any] | None = (),
        step: Callable[[int], int] | None = None,
        **kwargs: Any,
    ) -> Monitor:
        """A Monitor on ``model`` logging to ``destinations`` plus :attr:`writers`.

        Args:
            model: The model being trained.
            destinations: The framework's logging destinations; None on processes other
                than the main one, which log nothing.
            step: Maps the Monitor's step to the framework's, for the logged points.
            **kwargs: For :class:`gradscope.Monitor` (``callbacks`` are kept, the logger
                runs after them).
        """
        from gradscope.integrations.logger import MonitorLogger

        callbacks = list(kwargs.pop("callbacks", ()))
        targets = [*destinations, *self.writers] if destinations is not None else []
        if targets:
            self.logger = MonitorLogger(
                *targets, figures_every=self.figures_every, step=step, scalars=self.scalars
            )
            callbacks.append(self.logger)
        return Monitor(model, self.every, schedule=self.schedule, callbacks=callbacks, **kwargs)

    def _step(self) -> None:
        """``monitor.step()``, if a Monitor is running."""
        if self._live():
            self.monitor.step()  # type: ignore[union-attr]

    def _pause_monitor(self) -> None:
        """Detach the Monitor's hooks until :meth:`_resume` (no-op if paused or not running)."""
        if self._live() and self._pause is None:
            stack = contextlib.ExitStack()
            stack.enter_context(self.monitor.paused())  # type: ignore[union-attr]
            self._pause = stack

    def _resume(self) -> None:
        """Leave the pause of :meth:`_pause_monitor`, if any."""
        pause, self._pause = self._pause, None
        if pause is not None:
            pause.close()

    def close(self) -> None:
        """Remove every hook and close the logger's destinations (idempotent).

        Nothing is analysed (a run that failed); :meth:`_finish` ends a run that did not.
        """
        if self.monitor is not None:
            self.monitor.close(analyze=False)  # first: leaving the pause re-attaches nothing
        self._resume()
        logger, self.logger = self.logger, None
        if logger is not None:
            logger.close()

    def _finish(self, main_process: bool) -> None:
        """End the run: the latest sampled step analysed and logged, hooks removed, files.

        In the main process the Monitor analyses its latest sampled step if it was not
        (:meth:`gradscope.Monitor.analyze_latest`; the logger then logs it, before its
        destinations close), and writes the history and the report if asked.
        """
        if self.monitor is not None and main_process:
            self.monitor.close()  # analyses the latest sampled step; callbacks log it
        self.close()
        if self.monitor is None or not main_process:
            return
        if self.save_file is not None:
            self.monitor.save(self.save_file)
        if self.report_file is not None:
            self.report_path = self.monitor.report(self.report_file)


__all__ = ["MonitorSession"]
