"""Numbers as a sentence or a table cell shows them."""

from __future__ import annotations

import math


def fmt_num(x: float, digits: int = 3) -> str:
    """A number for a sentence: ``n/a`` for NaN, ``∞``, scientific when tiny or huge."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 10 ** (-digits)):
        return f"{x:.{max(digits - 1, 1)}e}"
    return f"{x:.{digits}g}" if abs(x) >= 1 else f"{x:.{digits}f}"


def fmt_steps(x: float) -> str:
    """A number of steps for a sentence (``n/a``, ``∞``, one decimal below 100)."""
    if x is None or math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "∞"
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"
