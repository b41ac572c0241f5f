"""What a forward hook receives: a call's arguments, bound, described and copied.

:func:`bind` puts a hooked forward's positional and keyword arguments in signature order,
:func:`argument_summary` describes the model's own arguments (shapes and dtypes, not values)
for the trace's metadata, and :func:`clone` makes the detached copies that every recorded
tensor is.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence


def argument_summary(obj: Any) -> Any:
    """JSON-able description of an argument: shapes and dtypes, not values."""
    if isinstance(obj, PackedSequence):
        return {
            "packed": list(obj.data.shape),
            "steps": len(obj.batch_sizes),
            "batch": int(obj.batch_sizes[0]) if len(obj.batch_sizes) else 0,
            "dtype": str(obj.data.dtype).replace("torch.", ""),
        }
    if isinstance(obj, Tensor):
        return {"shape": list(obj.shape), "dtype": str(obj.dtype).replace("torch.", "")}
    if isinstance(obj, (tuple, list)):
        return [argument_summary(o) for o in obj]
    if isinstance(obj, dict):
        return {str(k): argument_summary(v) for k, v in obj.items()}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return type(obj).__name__


def clone(t: Tensor) -> Tensor:
    """A detached copy of ``t`` (what every recorded tensor is)."""
    return t.detach().clone()


def autocast_dtype(t: Tensor) -> torch.dtype | None:
    """The lower precision ``torch.autocast`` runs ``t``'s operations in now, or None.

    None when autocast is off for ``t``'s device type, or its dtype is not narrower than
    ``t``'s (a call under it then runs as without it).
    """
    device = t.device.type
    try:
        if not torch.is_autocast_enabled(device):
            return None
        dtype = torch.get_autocast_dtype(device)
    except (RuntimeError, TypeError, ValueError):  # a device type autocast does not know
        return None
    return dtype if dtype.itemsize < t.dtype.itemsize else None


@contextlib.contextmanager
def autocast_off() -> Iterator[None]:
    """Turn ``torch.autocast`` off for the block on every device type where it is on.

    Replays and loss-gradient sweeps run in the weights' dtype wherever they are called
    (e.g. ``Recorder.stop`` inside the user's ``with torch.autocast(...)``).
    """
    with contextlib.ExitStack() as stack:
        for device in ("cpu", "cuda", "xpu", "mps", "hpu"):
            try:
                on = torch.is_autocast_enabled(device)
            except (RuntimeError, TypeError, ValueError):
                continue
            if on:
                stack.enter_context(torch.autocast(device, enabled=False))
        yield


def bind(module: nn.Module, args: tuple, kwargs: dict) -> list[Any]:
    """The forward's arguments in signature order (positional and keyword alike)."""
    if not kwargs:
        return list(args)
    try:
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return [*args, *kwargs.values()]
    return list(bound.arguments.values())
