"""Configuration numbers of a cell family: their declared ranges, checked in one place.

A family stores the numbers that shape its recurrence (head counts, epsilons, flags) among
its parameters as 0-d tensors, so that a saved trace can be analysed without the module,
and declares what each must be (:attr:`gradscope.cells.base.CellAdapter.config`:
``{name: rule}``, a name ending in ``?`` optional). :func:`check_config` refuses a trace
whose numbers no module of the family could have (made or edited by hand).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import Tensor

from gradscope.errors import ArgumentError

#: Ranges of configuration numbers (:attr:`CellAdapter.config`), and their words.
CONFIG_RULES = {
    "count": lambda x: x >= 1 and float(x).is_integer(),
    "positive": lambda x: math.isfinite(x) and x > 0,
    "nonnegative": lambda x: math.isfinite(x) and x >= 0,
    "limit": lambda x: not math.isnan(x) and x >= 0,  # may be +inf (no limit)
    "flag": lambda x: x in (0.0, 1.0),
    "finite": math.isfinite,
}
CONFIG_TEXT = {
    "count": "a whole number >= 1",
    "positive": "a finite number > 0",
    "nonnegative": "a finite number >= 0",
    "limit": "a number >= 0 (or inf)",
    "flag": "0 or 1",
    "finite": "finite",
}


def check_config(kind: str, config: Mapping[str, str], params: Mapping[str, Tensor]) -> None:
    """Raise :class:`ArgumentError` unless every number of ``config`` fits its rule.

    Args:
        kind: The family's kind (named in the message).
        config: ``{name: rule}`` with rules from :data:`CONFIG_RULES`; ``name?``: optional.
        params: The layer's parameters.
    """
    for key, rule in config.items():
        name = key.rstrip("?")
        if name not in params:
            if key.endswith("?"):
                continue
            raise ArgumentError(f"{kind}: params lack the configuration number {name!r}")
        v = params[name]
        if not isinstance(v, Tensor) or v.ndim != 0:
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ArgumentError(f"{kind}: params[{name!r}] must be a 0-d tensor, got {got}")
        x = float(v)
        if not CONFIG_RULES[rule](x):
            raise ArgumentError(
                f"{kind}: params[{name!r}] = {x:g} is not {CONFIG_TEXT[rule]}; this is not a "
                "configuration the family has (a trace made or edited by hand?)"
            )


__all__ = ["CONFIG_RULES", "CONFIG_TEXT", "check_config"]
