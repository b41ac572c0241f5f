"""One exception family for everything gradscope raises on purpose.

Every message says what was wrong (module path, cell kind, shape, timestep where they
apply) and what to do about it. Catch :class:`GradscopeError` to catch them all.
"""

from __future__ import annotations


class GradscopeError(Exception):
    """Base class of every error gradscope raises deliberately."""


class NoRecurrentModuleError(GradscopeError, ValueError):
    """The model (or the forward that ran) contains no recurrent module gradscope can record."""


class UnsupportedModuleError(GradscopeError, TypeError):
    """A module type has no cell adapter; the message shows how to register one."""


class CellConventionError(GradscopeError, TypeError):
    """A cell's forward does not follow ``forward(x_t, state) -> state``."""


class AdapterContractError(GradscopeError, TypeError):
    """An adapter (a registered cell or sequence mixer) broke its contract.

    The message names the adapter, the method and what it returned against what the
    contract (:mod:`gradscope.cells.base`, :mod:`gradscope.sequences.base`) asks for.
    """


class ShapeError(GradscopeError, ValueError):
    """Tensors of the wrong shape, dtype or size were given."""


class ReplayMismatchError(GradscopeError, RuntimeError):
    """The step-by-step replay of a fused module did not reproduce the module's own output."""


class GradscopeWarning(UserWarning):
    """Base class of every warning gradscope issues: something was left out or is doubtful.

    gradscope warns where stopping would be wrong (a diagnostic never stops the training it
    watches) and says what it did instead; filter them all with this class.
    """


class LoggingWarning(GradscopeWarning):
    """A logging destination failed; the value was skipped and training went on.

    The message names the destination (and its path), what was being logged and the error.
    Each destination warns once; its later failures are skipped silently.
    """


class ChaoticReplayWarning(GradscopeWarning):
    """A fused module's replay was accepted as a *shadow trajectory* of a chaotic network.

    The replay missed the fixed tolerance, but by no more than the rounding errors that the
    measured amplification of the dynamics explains (see :mod:`gradscope.recording`): every
    step is exact to rounding, the trajectory as a whole differs from the kernel's.
    """


class ArgumentError(GradscopeError, ValueError):
    """An argument has a value outside what the function accepts (the message says the range)."""


class ArgumentTypeError(GradscopeError, TypeError):
    """An argument has the wrong type (the message names the expected type)."""


class UnknownNameError(GradscopeError, KeyError):
    """A layer, run or quantity was asked for by a name that does not exist.

    The message lists the names that do exist.
    """

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0]) if self.args else ""


class TraceFormatError(GradscopeError, ValueError):
    """A file is not a gradscope trace/history, is corrupt, or has an unknown format version."""


class MissingDataError(GradscopeError, LookupError):
    """An analysis or report needs data the object does not hold (e.g. no loss gradients)."""


class NumericalError(GradscopeError, ArithmeticError):
    """A numerical method failed on the data (e.g. every SVD driver failed to converge).

    The message names the quantity, the step and the methods tried; the analysis reports
    such a quantity as unknown, never as a calm verdict.
    """


class OutputError(GradscopeError, OSError):
    """An output file cannot be written (``cannot write PATH: reason``).

    Also raised when the file exists and the command was not allowed to overwrite it.
    """


class OptionalDependencyError(GradscopeError, ImportError):
    """An optional extra (Lightning, TensorBoard, ...) is needed but not installed."""


class PdfEngineError(GradscopeError, RuntimeError):
    """A PDF report cannot be printed: no headless Chromium, or it failed.

    The message says what to install, or what Chromium said.
    """


__all__ = [
    "AdapterContractError",
    "ArgumentError",
    "ArgumentTypeError",
    "CellConventionError",
    "ChaoticReplayWarning",
    "GradscopeError",
    "GradscopeWarning",
    "LoggingWarning",
    "MissingDataError",
    "NoRecurrentModuleError",
    "NumericalError",
    "OptionalDependencyError",
    "OutputError",
    "PdfEngineError",
    "ReplayMismatchError",
    "ShapeError",
    "TraceFormatError",
    "UnknownNameError",
    "UnsupportedModuleError",
]
