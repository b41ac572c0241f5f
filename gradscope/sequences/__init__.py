"""Sequence adapters: recurrences that a module runs over whole sequences (parallel scans).

See :mod:`gradscope.sequences.base` for the contract. Built in, one module per family (and
one per family's relatives): Mamba (:mod:`~gradscope.sequences.mamba`, FalconMamba, Jamba and
Zamba in :mod:`~gradscope.sequences.mamba_relatives`), Mamba-2 (Bamba, Nemotron-H, Zamba2,
Granite-MoE-Hybrid, FalconH1), RWKV, xLSTM's mLSTM, RG-LRU, gated DeltaNet (Qwen3-Next,
Qwen3.5, Qwen4-Exp, LARA, OLMo-Hybrid), Kimi delta attention (:mod:`~gradscope.sequences.kda`:
Kimi Linear, GLM-5 Next, Bailing) and lightning attention
(:mod:`~gradscope.sequences.lightning`: MiniMax). Each module declares the classes it serves
in ``SERVES`` (qualified class name -> adapter); :data:`gradscope.cells._HOMES` lists the
modules, so ``transformers`` is never imported by gradscope itself.
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
