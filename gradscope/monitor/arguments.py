"""The Monitor's arguments, checked before training starts (never at a sampled step)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gradscope.errors import ArgumentError, ArgumentTypeError


def positive_count(name: str, value: Any) -> int:
    """``value`` as a positive integer, or an error naming the Monitor argument."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ArgumentTypeError(
            f"Monitor: {name} must be a positive integer, got {type(value).__name__} {value!r}"
        )
    if value < 1:
        raise ArgumentError(
            f"Monitor: {name} must be >= 1, got {value} (it counts steps or sequences the "
            "analyses use; with none every such summary would be NaN)"
        )
    return int(value)


def callback_list(callbacks: Any) -> list[Callable[[Any], Any]]:
    """The callbacks as a list, each checked to be callable (before training starts)."""
    if callable(callbacks):
        callbacks = [callbacks]
    try:
        out = list(callbacks)
    except TypeError:
        raise ArgumentTypeError(
            f"Monitor: callbacks must be a list of callables, got {type(callbacks).__name__}"
        ) from None
    for i, cb in enumerate(out):
        if not callable(cb):
            raise ArgumentTypeError(
                f"Monitor: callbacks[{i}] is a {type(cb).__name__} ({cb!r:.60}), not callable; "
                "pass functions or objects called as callback(monitor) after each sampled step"
            )
    return out


__all__ = ["callback_list", "positive_count"]
