"""Command-line outputs: verdicts wrapped to the terminal, JSON summaries, ``--fail-on``.

The verdict table keeps its fixed width (a row per layer, never wrapped); each layer's
verdict and advice below it are wrapped to the terminal's width
(:func:`shutil.get_terminal_size`, 100 columns when stdout is not a terminal).
"""

from __future__ import annotations

import shutil
import textwrap
from typing import Any

from gradscope._cli_inputs import UsageError

#: Exit code when a layer's regime is one named by ``--fail-on`` (after the outputs are
#: written): distinct from 1 (internal error) and 2 (bad input or usage).
FAIL_ON_EXIT = 3

#: The regimes ``--fail-on`` accepts (``unknown``: could not be measured, e.g. NaN weights).
REGIMES = ("vanishing", "exploding", "neutral", "unknown")


def width() -> int:
    """Columns to wrap text to: the terminal's, at least 40 (100 when not a terminal)."""
    return max(40, shutil.get_terminal_size((100, 24)).columns)


def _wrap(text: str, cols: int, indent: str = "", rest: str = "  ") -> str:
    return textwrap.fill(
        text, cols, initial_indent=indent, subsequent_indent=indent + rest, break_on_hyphens=False
    )


def diagnosis_text(diagnosis: Any, cols: int | None = None) -> str:
    """The verdict table, then each layer's verdict and advice wrapped to ``cols`` columns.

    Args:
        diagnosis: A :class:`~gradscope.analysis.diagnosis.Diagnosis`.
        cols: Width to wrap to (default: :func:`width`).

    Returns:
        The text to print.
    """
    cols = cols or width()
    parts = [diagnosis.table(), ""]
    for d in diagnosis.layers:
        parts.append(_wrap(f"{d.name} ({d.kind}): {d.verdict}", cols))
        parts.extend(_wrap(f"- {a}", cols, "  ") for a in d.advice)
    return "\n".join(parts).rstrip()


def summary(diagnosis: Any, arrays: bool = False) -> list[dict[str, Any]]:
    """Per layer, the numbers a script reads: regime, rates, half-life, horizon, exponents.

    Args:
        diagnosis: A :class:`~gradscope.analysis.diagnosis.Diagnosis`.
        arrays: Include the spectra and per-lag curves too (large).

    Returns:
        :meth:`LayerDiagnosis.to_dict` of every layer; without ``arrays`` every value is a
        JSON scalar or a short list.
    """
    return [d.to_dict(arrays=arrays) for d in diagnosis.layers]


def parse_fail_on(values: list[str] | None) -> set[str]:
    """``--fail-on vanishing --fail-on exploding`` or ``--fail-on vanishing,exploding``.

    Raises:
        UsageError: a name that is not a regime.
    """
    out: set[str] = set()
    for value in values or []:
        for name in value.split(","):
            name = name.strip().lower()
            if not name:
                continue
            if name not in REGIMES:
                raise UsageError(
                    f"--fail-on {value!r}: {name!r} is not a regime; use one or more of "
                    f"{', '.join(REGIMES)} (repeat the flag or separate them with commas)"
                )
            out.add(name)
    return out


def failing(regimes: dict[str, str], fail_on: set[str]) -> list[str]:
    """``"name (regime)"`` of every layer whose regime is in ``fail_on``."""
    return [f"{name} ({r})" for name, r in regimes.items() if r in fail_on]


__all__ = [
    "FAIL_ON_EXIT",
    "REGIMES",
    "diagnosis_text",
    "failing",
    "parse_fail_on",
    "summary",
    "width",
]
