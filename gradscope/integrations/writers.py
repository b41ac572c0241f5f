"""Where logged numbers go: one small :class:`Writer` protocol and its adapters.

gradscope logs through five calls, whatever the destination::

    writer.log_scalars({"tag": 1.0, ...}, step)   # numbers; one point per tag at `step`
    writer.log_text("tag", "markdown text", step)
    writer.log_image("tag", image, step)          # (H, W, 3) uint8 array or PNG bytes
    writer.flush()
    writer.close()                                # closes only what the writer opened

Adapters (:func:`as_writer` picks one from what it is given, by what the object can do):

=================================  ================================================
a :class:`Writer`                  itself
a TensorBoard ``SummaryWriter``    :class:`TensorBoardWriter` (not closed by us)
(anything with ``add_scalar``)
a Lightning logger (anything with  :class:`LightningWriter`: scalars through
``log_metrics``)                   ``log_metrics``; images and text through the
                                   logger's ``log_image``/``log_text`` or its
                                   ``SummaryWriter`` if it has them, else dropped
                                   (``CSVLogger``: scalars only)
a W&B run (``log`` and             :class:`gradscope.integrations.wandb.WandbWriter`
``define_metric``)
a path (``str`` / ``PathLike``)    :class:`TensorBoardWriter` writing event files there
=================================  ================================================

None of these imports TensorBoard, Lightning or W&B until an adapter needs it.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from gradscope.errors import ArgumentTypeError, LoggingWarning, OutputError
from gradscope.integrations._images import Image, image_array, numbers


@runtime_checkable
class Writer(Protocol):
    """The one protocol every logging destination implements."""

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        """Record each ``tag -> value`` as one point at ``step``."""

    def log_text(self, tag: str, text: str, step: int) -> None:
        """Record a (markdown) text at ``step``."""

    def log_image(self, tag: str, image: Image, step: int) -> None:
        """Record an image (``(H, W, 3)`` uint8 array or PNG bytes) at ``step``."""

    def flush(self) -> None:
        """Push what was recorded to its files or service."""

    def close(self) -> None:
        """Flush, and release what the writer opened itself (never what it was given)."""


# --------------------------------------------------------------------------- TensorBoard
class TensorBoardWriter:
    """Writes to TensorBoard event files.

    Args:
        target: A ``torch.utils.tensorboard.SummaryWriter`` (or anything with its
            ``add_scalar`` / ``add_text`` / ``add_image``), written to and never closed
            here; or a log directory (``str`` / ``PathLike``) for a new ``SummaryWriter``,
            closed by :meth:`close`; None: TensorBoard's default (``runs/<date>_<host>``).

    Raises:
        ArgumentTypeError: ``target`` is neither a writer nor a path.
        OptionalDependencyError: a log directory was given and TensorBoard is not
            installed.
    """

    def __init__(self, target: Any = None) -> None:
        if callable(getattr(target, "add_scalar", None)):
            self.writer, self._owns = target, False
        elif target is None or isinstance(target, (str, os.PathLike)):
            from gradscope.integrations._imports import summary_writer

            self.writer = summary_writer()(None if target is None else os.fspath(target))
            self._owns = True
        else:
            raise ArgumentTypeError(
                "TensorBoardWriter needs a SummaryWriter or a log directory (str or "
                f"os.PathLike), got {type(target).__name__}"
            )

    @property
    def log_dir(self) -> str | None:
        """The directory the event files go to (None if the writer does not say)."""
        get = getattr(self.writer, "get_logdir", None)
        return str(get()) if callable(get) else getattr(self.writer, "log_dir", None)

    def _check_dir(self) -> None:
        """Refuse to write once a local log directory is gone.

        TensorBoard writes from a thread of its own, which dies on the first write into a
        removed directory and takes every later point with it; checked here, the call fails
        in the caller (where :class:`Writers` skips it) and the writer carries on when the
        directory is back.

        Raises:
            OutputError: the log directory no longer exists.
        """
        where = self.log_dir
        if where and "://" not in where and not os.path.isdir(where):
            raise OutputError(
                f"cannot write {where}: the log directory no longer exists (removed during "
                "the run?); nothing is written there until it is back"
            )

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        """``add_scalar`` for each tag (NaN and inf are written as they are)."""
        self._check_dir()
        for tag, value in numbers(scalars).items():
            self.writer.add_scalar(tag, value, global_step=int(step))

    def log_text(self, tag: str, text: str, step: int) -> None:
        """``add_text`` (TensorBoard renders markdown)."""
        self._check_dir()
        self.writer.add_text(tag, str(text), global_step=int(step))

    def log_image(self, tag: str, image: Image, step: int) -> None:
        """``add_image`` of an ``(H, W, 3)`` array."""
        self._check_dir()
        self.writer.add_image(tag, image_array(image), global_step=int(step), dataformats="HWC")

    def flush(self) -> None:
        """Flush the event file."""
        self._check_dir()
        self.writer.flush()

    def close(self) -> None:
        """Flush; close the ``SummaryWriter`` if this writer created it (even if flush fails)."""
        try:
            self.flush()
        finally:
            if self._owns:
                self._owns = False  # closed once, whatever happens
                self.writer.close()

    def __repr__(self) -> str:
        return f"TensorBoardWriter({self.log_dir!r})"


# --------------------------------------------------------------------------- Lightning
class LightningWriter:
    """Writes through a Lightning logger (``trainer.logger`` or one of ``trainer.loggers``).

    Scalars go through ``logger.log_metrics(metrics, step)``, so they land wherever the
    logger writes (TensorBoard, CSV, W&B, MLflow, ...). Images and text go through the
    logger's own ``log_image`` / ``log_text`` (``WandbLogger`` and others) or, for
    ``TensorBoardLogger``, its ``SummaryWriter`` (``logger.experiment``); a logger with
    neither (``CSVLogger``) gets the scalars only. The logger is Lightning's to finalise:
    :meth:`close` only flushes it.

    Args:
        logger: A Lightning logger (anything with ``log_metrics(metrics, step)``).

    Raises:
        ArgumentTypeError: ``logger`` has no ``log_metrics``.
    """

    def __init__(self, logger: Any) -> None:
        if not callable(getattr(logger, "log_metrics", None)):
            raise ArgumentTypeError(
                f"LightningWriter needs a Lightning logger (with log_metrics), got "
                f"{type(logger).__name__}"
            )
        self.logger = logger

    def _summary_writer(self) -> Any:
        experiment = getattr(self.logger, "experiment", None)
        return experiment if callable(getattr(experiment, "add_image", None)) else None

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        """``logger.log_metrics`` of every scalar at once."""
        if scalars:
            self.logger.log_metrics(numbers(scalars), step=int(step))

    def log_text(self, tag: str, text: str, step: int) -> None:
        """The logger's ``log_text`` (one cell), else its ``SummaryWriter``, else nothing."""
        if callable(getattr(self.logger, "log_text", None)):
            self.logger.log_text(key=tag, columns=["text"], data=[[str(text)]], step=int(step))
        elif (writer := self._summary_writer()) is not None:
            writer.add_text(tag, str(text), global_step=int(step))

    def log_image(self, tag: str, image: Image, step: int) -> None:
        """The logger's ``log_image``, else its ``SummaryWriter``, else nothing."""
        if callable(getattr(self.logger, "log_image", None)):
            self.logger.log_image(key=tag, images=[image_array(image)], step=int(step))
        elif (writer := self._summary_writer()) is not None:
            writer.add_image(tag, image_array(image), global_step=int(step), dataformats="HWC")

    def flush(self) -> None:
        """``logger.save()`` (CSVLogger writes its file then), if the logger has it."""
        save = getattr(self.logger, "save", None)
        if callable(save):
            save()

    def close(self) -> None:
        """Flush; Lightning finalises its own loggers."""
        self.flush()

    def __repr__(self) -> str:
        try:
            where = getattr(self.logger, "log_dir", None)
        except Exception:  # a logger may compute it, and fail
            where = None
        at = f", {str(where)!r}" if where else ""
        return f"LightningWriter({type(self.logger).__name__}{at})"


# --------------------------------------------------------------------------- fan-out
def caller_level() -> int:
    """The ``stacklevel`` of the first frame outside gradscope, for a warning issued here.

    A logging warning then points at the line of the training loop (``monitor.step()``, or
    the framework's) whatever the path through gradscope.
    """
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("gradscope."):
        frame, level = frame.f_back, level + 1
    return level


class Writers:
    """Several writers as one: every call goes to each of them, in order.

    Logging never stops training: a call that raises in one writer (a log directory removed
    during the run, a full disk, a network error) is skipped for that writer, the others
    still get it, and the first failure of each writer is reported as a
    :class:`~gradscope.errors.LoggingWarning` naming the writer (and its path), the call
    and the error; its later failures are counted in :attr:`failures`, not warned again.

    Args:
        writers: The destinations (each passed through :func:`as_writer`).

    Attributes:
        writers: The destinations.
        failures: How many calls failed, per writer (by its position in :attr:`writers`).
    """

    def __init__(self, writers: Sequence[Any] = ()) -> None:
        self.writers: list[Writer] = [as_writer(w) for w in writers]
        self.failures: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.writers)

    def _each(self, what: str, call: Callable[[Writer], None]) -> None:
        for i, w in enumerate(self.writers):
            try:
                call(w)
            except Exception as exc:  # logging must never stop training
                self.failures[i] = self.failures.get(i, 0) + 1
                if self.failures[i] == 1:
                    warnings.warn(
                        f"gradscope: logging to {w!r} failed ({what}): "
                        f"{type(exc).__name__}: {exc}. Skipped; training goes on, and later "
                        "failures of this destination are skipped without a warning",
                        LoggingWarning,
                        stacklevel=caller_level(),
                    )

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        """:meth:`Writer.log_scalars` on each writer."""
        self._each(f"{len(scalars)} scalars at step {step}", lambda w: w.log_scalars(scalars, step))

    def log_text(self, tag: str, text: str, step: int) -> None:
        """:meth:`Writer.log_text` on each writer."""
        self._each(f"text {tag!r} at step {step}", lambda w: w.log_text(tag, text, step))

    def log_image(self, tag: str, image: Image, step: int) -> None:
        """:meth:`Writer.log_image` on each writer."""
        self._each(f"image {tag!r} at step {step}", lambda w: w.log_image(tag, image, step))

    def flush(self) -> None:
        """:meth:`Writer.flush` on each writer."""
        self._each("flush", lambda w: w.flush())

    def close(self) -> None:
        """:meth:`Writer.close` on each writer."""
        self._each("close", lambda w: w.close())

    def __repr__(self) -> str:
        return f"Writers({self.writers!r})"


def _is_writer(obj: Any) -> bool:
    return all(
        callable(getattr(obj, m, None))
        for m in ("log_scalars", "log_text", "log_image", "flush", "close")
    )


def _wandb_writer(run: Any) -> Writer:
    from gradscope.integrations.wandb import WandbWriter

    return WandbWriter(run)


#: How :func:`as_writer` recognises a destination: the first test that passes wins.
ADAPTERS: list[tuple[str, Callable[[Any], bool], Callable[[Any], Writer]]] = [
    ("a gradscope Writer", _is_writer, lambda obj: obj),
    (
        "a TensorBoard SummaryWriter",
        lambda o: callable(getattr(o, "add_scalar", None)),
        TensorBoardWriter,
    ),
    ("a Lightning logger", lambda o: callable(getattr(o, "log_metrics", None)), LightningWriter),
    (
        "a W&B run",
        lambda o: callable(getattr(o, "log", None)) and callable(getattr(o, "define_metric", None)),
        _wandb_writer,
    ),
    ("a TensorBoard log directory", lambda o: isinstance(o, (str, os.PathLike)), TensorBoardWriter),
]


def as_writer(target: Any) -> Writer:
    """The :class:`Writer` for ``target`` (see the module's table).

    Args:
        target: A Writer, a ``SummaryWriter``, a Lightning logger, a W&B run, or a
            TensorBoard log directory.

    Raises:
        ArgumentTypeError: ``target`` is none of these.
    """
    for _, test, adapter in ADAPTERS:
        if test(target):
            return adapter(target)
    kinds = ", ".join(name for name, _, _ in ADAPTERS)
    raise ArgumentTypeError(
        f"cannot log to a {type(target).__name__}: give {kinds} (for W&B by project name use "
        "gradscope.integrations.wandb.WandbWriter(project=...))"
    )


__all__ = [
    "ADAPTERS",
    "LightningWriter",
    "TensorBoardWriter",
    "Writer",
    "Writers",
    "as_writer",
    "image_array",
]
