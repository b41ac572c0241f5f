"""One JSON convention for every result gradscope writes (summaries, reports, histories).

Everything gradscope writes is strict JSON (RFC 8259): a reader that refuses the bare
``NaN``/``Infinity`` tokens Python's :mod:`json` would otherwise emit reads it. A value that
is not finite is written as one of the strings ``"nan"``, ``"inf"`` or ``"-inf"``: the three
stay apart (an infinite half-life, a gradient that never halves, is not an unknown one),
where ``null`` would merge them with "absent". :func:`dumps` is the one writer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

import numpy as np


def json_float(x: float) -> float | str:
    """``x`` as a float, with NaN and ±inf as the strings ``"nan"``, ``"inf"``, ``"-inf"``."""
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return float(x)


def jsonable(obj: Any) -> Any:
    """Convert analysis results to JSON-serialisable data (``json.dumps`` works on it).

    Convention: NaN, +inf and -inf become the strings ``"nan"``, ``"inf"``, ``"-inf"``;
    numpy arrays and torch tensors become nested lists; complex numbers become
    ``[real, imag]``; objects with a ``to_dict`` method are converted by it; tuples become
    lists.

    Args:
        obj: Nested dicts / lists / numpy arrays / scalars / analysis dataclasses.

    Returns:
        The same structure made of dict, list, str, int, float, bool and None only.

    Raises:
        ArgumentTypeError: Something in ``obj`` has no JSON form.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return json_float(float(obj))
    if isinstance(obj, (complex, np.complexfloating)):
        return [json_float(float(obj.real)), json_float(float(obj.imag))]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()] if obj.ndim else jsonable(obj.item())
    if type(obj).__module__.startswith("torch") and hasattr(obj, "detach"):
        return jsonable(obj.detach().cpu().numpy())
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return jsonable(obj.to_dict())
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, Sequence):
        return [jsonable(v) for v in obj]
    from gradscope.errors import ArgumentTypeError

    raise ArgumentTypeError(f"cannot convert {type(obj).__name__} to JSON")


def dataclass_dict(obj: Any, skip: Sequence[str] = ()) -> dict[str, Any]:
    """The fields of a dataclass instance as JSON-serialisable data (see :func:`jsonable`)."""
    return {f.name: jsonable(getattr(obj, f.name)) for f in fields(obj) if f.name not in skip}


def dumps(obj: Any, **kwargs: Any) -> str:
    """``obj`` as strict JSON text, non-finite numbers as strings (see :func:`jsonable`).

    Args:
        obj: Anything :func:`jsonable` converts.
        **kwargs: Passed to :func:`json.dumps` (``indent``, ...).

    Returns:
        The JSON text; it never holds ``NaN``, ``Infinity`` or ``-Infinity``.

    Raises:
        ArgumentTypeError: Something in ``obj`` has no JSON form.
    """
    return json.dumps(jsonable(obj), allow_nan=False, **kwargs)
