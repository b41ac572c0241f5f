"""Log a Monitor's per-step summaries (and optionally its figures) to TensorBoard.

Usage::

    from gradscope.integrations.tensorboard import TensorBoardCallback

    tb = TensorBoardCallback("runs/exp1", figures_every=10)
    with gs.Monitor(model, every=50, callbacks=[tb]) as monitor:
        ...                      # train; every sampled step is logged
    tb.close()

After each sampled training step, for every recorded layer (``/`` in tags separates the
parts; dots in layer names are kept), the scalars ``{prefix}/{layer}/{key}`` for ``key`` in
:data:`SCALARS` are written at ``global_step`` = the training step (NaN values, i.e. not
analysed at that step, are skipped). ``grad_norm_t0`` and ``grad_norm_tT`` are the batch-mean
``‖∂L/∂s_t‖`` at the initial state and at the last state; ``regime_code`` is -1 / 0 / +1 for
vanishing / neutral / exploding. Every ``figures_every``-th sampled step it also adds the
training heatmap and the decay-rate figure of each layer (drawn by
:mod:`gradscope.reporting.figures`, the same figures as in the reports).

Uses ``torch.utils.tensorboard`` (needs the ``tensorboard`` package: ``pip install
"gradscope-rnn[tensorboard]"``); imported only when a :class:`TensorBoardCallback` is made.
"""

from __future__ import annotations

import math
import os
from typing import Any

from gradscope.errors import ArgumentError
from gradscope.integrations._imports import summary_writer

#: History keys written as scalars, and the tag each gets.
SCALARS: dict[str, str] = {
    "grad_t0": "grad_norm_t0",
    "grad_tT": "grad_norm_tT",
    "rate": "rate",
    "regime": "regime_code",
    "loss_rate": "loss_rate",
    "radius_median": "radius_median",
    "radius_max": "radius_max",
    "norm_median": "sigma_max_median",
    "norm_max": "sigma_max_max",
    "lyapunov": "lyapunov",
}


def log_step(writer: Any, history: Any, index: int = -1, prefix: str = "gradscope") -> int:
    """Write one sampled step of ``history`` to ``writer`` as scalars.

    Args:
        writer: A ``torch.utils.tensorboard.SummaryWriter`` (anything with ``add_scalar``).
        history: A :class:`gradscope.monitor.History`.
        index: Which sampled step (row), -1 for the latest.
        prefix: First part of every tag.

    Returns:
        The number of scalars written.
    """
    from gradscope.history import REGIME_CODES

    written = 0
    for name in history.names:
        entry = history.entry(name, index)
        step = int(entry["step"])
        for key, tag in SCALARS.items():
            value = entry[key]
            if key == "regime":
                value = REGIME_CODES.get(value, math.nan)
            if math.isnan(value):
                continue
            writer.add_scalar(f"{prefix}/{name}/{tag}", value, global_step=step)
            written += 1
    return written


def log_figures(writer: Any, history: Any, prefix: str = "gradscope") -> int:
    """Add each layer's training heatmap and decay-rate figure at the latest sampled step.

    Returns:
        The number of figures written.
    """
    from gradscope.reporting.figures import training_heatmap_figure, training_rate_figure

    if not len(history):
        return 0
    step = int(history.steps[-1])
    written = 0
    for name in history.names:
        summ = history.summaries(name)
        figures = {
            "heatmap": training_heatmap_figure(history.grad_norms(name), history.steps),
            "rate": training_rate_figure(
                summ["steps"], summ["rate"], summ["regime"], rate_ci=summ["rate_ci"]
            ),
        }
        for what, fig in figures.items():
            writer.add_figure(f"{prefix}/{name}/{what}", fig, global_step=step, close=True)
            written += 1
    return written


class TensorBoardCallback:
    """A Monitor callback that writes every sampled step to TensorBoard.

    Args:
        log_dir: Where to write event files (a new ``SummaryWriter``); ignored if ``writer``
            is given. None: TensorBoard's default (``runs/...``).
        writer: An existing ``SummaryWriter`` to write to (not closed by :meth:`close`).
        prefix: First part of every tag.
        figures_every: Add the figures every this many sampled steps (None: never).

    Raises:
        OptionalDependencyError: TensorBoard is not installed.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike | None = None,
        *,
        writer: Any = None,
        prefix: str = "gradscope",
        figures_every: int | None = None,
    ) -> None:
        if figures_every is not None and figures_every < 1:
            raise ArgumentError(f"figures_every must be >= 1 or None, got {figures_every}")
        self._owns = writer is None
        self.writer = (
            writer
            if writer is not None
            else summary_writer()(None if log_dir is None else str(log_dir))
        )
        self.prefix = prefix
        self.figures_every = figures_every

    def __call__(self, monitor: Any) -> None:
        """Log the monitor's latest sampled step (called by the Monitor)."""
        history = monitor.history
        log_step(self.writer, history, -1, self.prefix)
        if self.figures_every is not None and (len(history) - 1) % self.figures_every == 0:
            log_figures(self.writer, history, self.prefix)
        self.writer.flush()

    def close(self) -> None:
        """Flush, and close the writer if this callback created it."""
        self.writer.flush()
        if self._owns:
            self.writer.close()


__all__ = ["SCALARS", "TensorBoardCallback", "log_figures", "log_step"]
