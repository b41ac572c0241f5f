"""Log a Monitor's per-step summaries, verdict and figures to TensorBoard.

Usage::

    from gradscope.integrations.tensorboard import TensorBoardCallback

    tb = TensorBoardCallback("runs/exp1", figures_every=10)
    with gs.Monitor(model, every=50, callbacks=[tb]) as monitor:
        ...                      # train; every sampled step is logged
    tb.close()

:class:`TensorBoardCallback` is a :class:`~gradscope.integrations.logger.MonitorLogger`
writing to one TensorBoard destination: a log directory or an existing ``SummaryWriter``
(given either way; it is never mistaken for a folder name). The tags, and at which steps
each gets a point, are listed in :mod:`gradscope.integrations.logger`: gradient norms in
``log10`` (``gradscope/{layer}/log10_grad_norm_t0``), the loss-gradient fit on every
sampled step, the analysed summaries (``rate``, ``regime_code``, ``radius_*``,
``sigma_max_*``, ...) on the analysed steps, the verdict as text, and the figures as images
redrawn at their step. By default only each layer's core tags are written
(:data:`~gradscope.integrations.logger.CORE_KEYS`); ``scalars="all"`` writes every field.

Uses ``torch.utils.tensorboard`` (needs the ``tensorboard`` package: ``pip install
"gradscope-rnn[tensorboard]"``); imported only when a writer for a log directory is made.
"""

from __future__ import annotations

import os
from typing import Any

from gradscope.integrations.logger import SCALARS, MonitorLogger, figure_images, history_scalars
from gradscope.integrations.writers import TensorBoardWriter, as_writer


def log_step(writer: Any, history: Any, index: int = -1, prefix: str = "gradscope") -> int:
    """Write one sampled step of ``history`` to ``writer`` as scalars (finite values only).

    Args:
        writer: A ``SummaryWriter``, or any destination
            :func:`~gradscope.integrations.writers.as_writer` accepts.
        history: A :class:`gradscope.monitor.History`.
        index: Which sampled step (row), -1 for the latest.
        prefix: First part of every tag.

    Returns:
        The number of scalars written.
    """
    if not len(history):
        return 0
    scalars = history_scalars(history, index, prefix)
    as_writer(writer).log_scalars(scalars, int(history.steps[index]))
    return len(scalars)


def log_figures(writer: Any, history: Any, prefix: str = "gradscope", index: int = -1) -> int:
    """Add each layer's training heatmap and decay-rate figure, drawn up to one sampled step.

    Args:
        writer: As for :func:`log_step`.
        history: A :class:`gradscope.monitor.History`.
        prefix: First part of every tag.
        index: Which sampled step (row), -1 for the latest: the figures show the history up
            to it (the rate figure with the loss-gradient rate of every step).

    Returns:
        The number of figures written.
    """
    if not len(history):
        return 0
    out = as_writer(writer)
    step = int(history.steps[index])
    images = figure_images(history, index)
    for (name, what), image in images.items():
        out.log_image(f"{prefix}/{name}/{what}", image, step)
    return len(images)


class TensorBoardCallback(MonitorLogger):
    """A Monitor callback that writes every sampled step to TensorBoard.

    Args:
        log_dir: Where to write event files (a new ``SummaryWriter``, closed by
            :meth:`close`), or an existing ``SummaryWriter``; ignored if ``writer`` is
            given. None: TensorBoard's default (``runs/...``).
        writer: An existing ``SummaryWriter`` to write to (not closed by :meth:`close`).
        prefix: First part of every tag.
        figures_every: Add the figures every this many sampled steps (None: never).
        text: Add the verdict text on every sampled step.
        scalars: Which History fields to log: ``"core"`` (default), ``"all"`` or a list
            (see :class:`~gradscope.integrations.logger.MonitorLogger`).

    Attributes:
        writer: The ``SummaryWriter`` written to.

    Raises:
        ArgumentTypeError: ``log_dir`` is neither a path nor a ``SummaryWriter``.
        OptionalDependencyError: TensorBoard is not installed.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike | Any = None,
        *,
        writer: Any = None,
        prefix: str = "gradscope",
        figures_every: int | None = None,
        text: bool = True,
        scalars: str | Any = "core",
    ) -> None:
        tensorboard = TensorBoardWriter(writer if writer is not None else log_dir)
        super().__init__(
            tensorboard, prefix=prefix, figures_every=figures_every, text=text, scalars=scalars
        )
        self.writer = tensorboard.writer


__all__ = ["SCALARS", "TensorBoardCallback", "log_figures", "log_step"]
