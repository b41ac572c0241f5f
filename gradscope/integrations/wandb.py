"""Log to Weights & Biases: :class:`WandbWriter`, a :class:`~gradscope.integrations.writers.Writer`.

Usage::

    import wandb
    from gradscope.integrations.logger import MonitorLogger

    run = wandb.init(project="my-rnn")                 # or WandbWriter(project="my-rnn")
    with gs.Monitor(model, every=50, callbacks=[MonitorLogger(run)]) as monitor:
        ...

Points are placed on W&B's x-axis by a *step metric* rather than by ``run.log(step=)``:
every logged dict carries ``{step_metric: step}`` and each gradscope key is declared with
``run.define_metric(key, step_metric=step_metric)``. So gradscope's points never fight
W&B's own step counter, which other loggers in the same run advance (Lightning,
``transformers.Trainer``, your own ``wandb.log`` calls). Text is logged as ``wandb.Html``
(the markdown in a ``<pre>`` block), images as ``wandb.Image``.

A ``*`` in a key (a layer named ``a*b``) is logged as ``∗`` (U+2217): W&B reads ``*`` in a
metric name as a glob and refuses to declare it. An empty key is logged without a step
metric (W&B cannot declare it).

Offline runs (``WANDB_MODE=offline``) work the same; their ``.wandb`` file reads back with
``wandb leet inspect --json <run dir>``. ``wandb`` is imported when a :class:`WandbWriter`
is made (``pip install "gradscope-rnn[wandb]"``).
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from gradscope.errors import ArgumentError, ArgumentTypeError
from gradscope.integrations._images import Image, image_array, numbers
from gradscope.integrations._imports import WANDB, require

#: What a ``*`` in a key is logged as (W&B's ``define_metric`` takes ``*`` as a glob).
GLOB_FREE = "\u2217"


class WandbWriter:
    """Writes to a W&B run.

    Args:
        run: A W&B run (``wandb.init()``'s result; anything with ``log`` and
            ``define_metric``), written to and never finished here. None: the active run
            (``wandb.run``), or a new one when ``project`` is given.
        project: Start a new run in this project (``wandb.init(project=...,
            **init_kwargs)``), finished by :meth:`close`.
        step_metric: The key that carries gradscope's step in every logged dict, declared
            as the x-axis of every key logged (``"train/global_step"`` to share the axis of
            ``transformers.Trainer``'s W&B logs).
        **init_kwargs: More arguments of ``wandb.init`` (with ``project``).

    Raises:
        ArgumentError: no run given, none active, and no project to start one in.
        ArgumentTypeError: ``run`` is not a W&B run.
        OptionalDependencyError: ``wandb`` is not installed.
    """

    def __init__(
        self,
        run: Any = None,
        *,
        project: str | None = None,
        step_metric: str = "gradscope/step",
        **init_kwargs: Any,
    ) -> None:
        self._wandb = require(WANDB, "gradscope.integrations.wandb")
        self._owns = False
        if run is None and project is not None:
            run, self._owns = self._wandb.init(project=project, **init_kwargs), True
        elif run is None:
            run = self._wandb.run
            if run is None:
                raise ArgumentError(
                    "WandbWriter: no W&B run is active; call wandb.init(...) first, pass the "
                    "run, or give project='...' to start one"
                )
        if not all(callable(getattr(run, m, None)) for m in ("log", "define_metric")):
            raise ArgumentTypeError(
                f"WandbWriter needs a W&B run (wandb.init()'s result), got {type(run).__name__}"
            )
        self.run = run
        self.step_metric = str(step_metric)
        self._defined: set[str] = set()

    def _log(self, data: dict[str, Any], step: int) -> None:
        # W&B reads "*" in a metric name as a glob and refuses it inside a name: a layer
        # named "a*b" is logged as "a∗b" (U+2217), on gradscope's step like every key
        data = {key.replace("*", GLOB_FREE): value for key, value in data.items()}
        new = [key for key in data if key and key not in self._defined]
        if new:
            if self.step_metric not in self._defined:
                self.run.define_metric(self.step_metric)
                self._defined.add(self.step_metric)
            for key in new:
                self.run.define_metric(key, step_metric=self.step_metric)
                self._defined.add(key)
        self.run.log({**data, self.step_metric: int(step)})

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        """One ``run.log`` of every scalar, with the step metric."""
        if scalars:
            self._log(numbers(scalars), step)

    def log_text(self, tag: str, text: str, step: int) -> None:
        """``wandb.Html`` of the text in a ``<pre>`` block."""
        self._log({tag: self._wandb.Html(f"<pre>{html.escape(str(text))}</pre>")}, step)

    def log_image(self, tag: str, image: Image, step: int) -> None:
        """``wandb.Image`` of an ``(H, W, 3)`` array or PNG bytes."""
        self._log({tag: self._wandb.Image(image_array(image))}, step)

    def flush(self) -> None:
        """Nothing to do: W&B sends (or, offline, writes) in the background."""

    def close(self) -> None:
        """Finish the run if this writer started it."""
        if self._owns:
            self.run.finish()
            self._owns = False

    def __repr__(self) -> str:
        return f"WandbWriter({getattr(self.run, 'id', '?')!r}, step_metric={self.step_metric!r})"


__all__ = ["GLOB_FREE", "WandbWriter"]
