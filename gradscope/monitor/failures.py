"""What the Monitor does when something goes wrong on a sampled step: note it, warn once, go on.

A diagnostic never stops the training it watches. Three things can fail on a sampled step,
and each is noted in the history at that step and warned about once per run
(:class:`~gradscope.errors.GradscopeWarning`), after which training continues:

* the loss reached no recorded call of a layer (``step()`` before ``loss.backward()``, or a
  loss that leaves the layer out): :meth:`Failures.unreached`;
* reading the step's recording failed (a replay, the loss gradients of a layer that
  diverged in a way no check foresaw, a bug in gradscope): :meth:`Failures.recording`;
  the step then has no numbers, and the note says what to report;
* a user's callback raised: :meth:`Failures.callback`, once per callback.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from gradscope.errors import GradscopeWarning


class Failures:
    """The warned-once state of one Monitor, and the messages."""

    def __init__(self) -> None:
        self._callbacks: set[int] = set()
        self._unreached = False
        self._recording = False

    def unreached(self, step: int, names: list[str]) -> None:
        """The loss reached no recorded call of ``names`` on this step (warned once)."""
        if not names or self._unreached:
            return
        self._unreached = True
        warnings.warn(
            f"Monitor.step() at training step {step}: the loss reached no recorded call of "
            f"{', '.join(names)} since the previous step(), so nothing was recorded for "
            "it (the history notes it each time). Call monitor.step() after "
            "loss.backward(); if that layer is left out of some losses on purpose, ignore "
            "this.",
            GradscopeWarning,
            stacklevel=4,
        )

    def recording(self, step: int, exc: BaseException) -> str:
        """Reading this step's recording raised ``exc``: the history's note (warned once)."""
        note = (
            f"this step's recording could not be read ({type(exc).__name__}: {exc}); the "
            "step has no numbers and training goes on. If the model's weights or inputs "
            "are finite, this is a gradscope bug: please report it with this message"
        )
        if not self._recording:
            self._recording = True
            warnings.warn(
                f"Monitor.step() at training step {step}: {note} (later failures are noted "
                "in the history, not warned about again)",
                GradscopeWarning,
                stacklevel=4,
            )
        return note

    def callback(
        self, history: Any, callback: Callable[..., Any], step: int, exc: BaseException
    ) -> None:
        """``callback`` raised ``exc``: noted in ``history`` and warned about the first time."""
        if id(callback) in self._callbacks:
            return
        self._callbacks.add(id(callback))
        history.note(step, f"callback {callback!r} raised {type(exc).__name__}: {exc}")
        warnings.warn(
            f"Monitor callback {callback!r} raised {type(exc).__name__}: {exc} (training "
            f"step {step}); training goes on, and later failures of this callback are not "
            "warned about again (the history notes this one)",
            GradscopeWarning,
            stacklevel=5,
        )


__all__ = ["Failures"]
