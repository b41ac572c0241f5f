"""Sequence adapters: recurrences that a module runs over whole sequences (parallel scans).

See :mod:`gradscope.sequences.base` for the contract.
"""

from gradscope.sequences.base import Drive, SequenceAdapter

__all__ = ["Drive", "SequenceAdapter"]
