"""Sequence adapters: recurrences that a module runs over whole sequences (parallel scans).

See :mod:`gradscope.sequences.base` for the contract. Built in: Mamba
(:mod:`~gradscope.sequences.mamba`) and the other families listed in
:data:`gradscope.cells._LAZY`, found by their class names so that ``transformers`` is never
imported by gradscope itself.
"""

from __future__ import annotations

from torch import nn

from gradscope.cells import register_cell
from gradscope.errors import GradscopeError
from gradscope.sequences.base import Drive, SequenceAdapter


def register_sequence(
    module_type: type[nn.Module], adapter: SequenceAdapter, *, overwrite: bool = False
) -> None:
    """Record every module of type ``module_type`` (and subclasses) with ``adapter``.

    The module is then found in any model like ``nn.LSTM`` is: each call is hooked, its
    recurrence replayed step by step by the adapter and checked against the module's output.

    Example (a minGRU; the full example is ``examples/mingru.py``)::

        gs.register_sequence(MinGRU, MinGRUAdapter())
        trace = gs.trace(model, x)

    Args:
        module_type: The ``nn.Module`` subclass that runs the recurrence.
        adapter: A :class:`~gradscope.sequences.base.SequenceAdapter` with a unique ``kind``.
        overwrite: Replace an existing registration instead of raising.

    Raises:
        GradscopeError: ``adapter`` is not a SequenceAdapter, or the type / kind is taken.
    """
    if not isinstance(adapter, SequenceAdapter):
        raise GradscopeError(
            f"register_sequence: adapter must be a gradscope.SequenceAdapter instance, got "
            f"{type(adapter).__name__}; for a cell called once per step use "
            "gradscope.register_cell"
        )
    register_cell(module_type, adapter, overwrite=overwrite)


__all__ = ["Drive", "SequenceAdapter", "register_sequence"]
