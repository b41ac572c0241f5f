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


def read_as(trace: Any) -> list[dict[str, Any]]:
    """How the recorded layers read the input: ``[{"T", "B", "layers"}]``, one per (T, B)."""
    groups: dict[tuple[int, int], list[str]] = {}
    for layer in trace.layers:
        groups.setdefault((int(layer.T), int(layer.B)), []).append(layer.name)
    return [{"T": t, "B": b, "layers": names} for (t, b), names in groups.items()]


def read_as_text(shape: tuple[int, ...], batch_first: bool, groups: list[dict[str, Any]]) -> str:
    """``input (100, 8, 32) given as (T, B, I); read as T=100, B=8 by lstm.l0``."""
    given = "(B, T, I)" if batch_first else "(T, B, I)"
    read = "; ".join(f"T={g['T']}, B={g['B']} by {', '.join(g['layers'])}" for g in groups)
    return f"input {tuple(shape)} given as {given}; read as {read or 'no layer'}"


def layout_warnings(
    trace: Any, shape: tuple[int, ...], batch_first: bool, random: bool
) -> list[str]:
    """A warning per recorded fused module whose ``batch_first`` disagrees with the input.

    The input's layout is ``(B, T, I)`` with ``--batch-first``, else ``(T, B, I)``; an
    ``nn.RNN``/``nn.LSTM``/``nn.GRU`` reads its own, so the two disagree when it read the
    steps as sequences.

    Args:
        trace: The recording (each fused layer's ``meta`` holds its module's ``batch_first``).
        shape: The input's shape.
        batch_first: ``--batch-first`` was given.
        random: The input was ``random:T,B,I`` (else a file).

    Returns:
        The warnings, one per module.
    """
    out: list[str] = []
    seen: set[str] = set()
    for layer in trace.layers:
        meta = layer.meta
        module = str(meta.get("module", layer.name))
        bf = meta.get("batch_first")
        if meta.get("source") != "fused" or meta.get("unbatched") or module in seen:
            continue
        seen.add(module)
        if not isinstance(bf, bool) or bf == batch_first or len(shape) < 2:
            continue
        a, b = shape[0], shape[1]
        if bf:  # the module reads (B, T, ...), the input was given as (T, B, ...)
            meant, fix = (
                f"T={a} steps of B={b} sequences",
                (
                    "pass --batch-first (random: input is then made (B, T, I))"
                    if random
                    else "save the input as (B, T, I), or pass --batch-first if it already is"
                ),
            )
            given = "(T, B, I) (no --batch-first)"
        else:
            meant, fix = (
                f"B={a} sequences of T={b} steps",
                (
                    "drop --batch-first"
                    if random
                    else "save the input as (T, B, I), or drop --batch-first if it already is"
                ),
            )
            given = "(B, T, I) (--batch-first)"
        out.append(
            f"{module or 'the model'} ({meta.get('module_type', 'RNN')}) is batch_first={bf} "
            f"but the input was given as {given}: it read T={layer.T}, B={layer.B}; "
            f"if you meant {meant}, {fix}"
        )
    return out


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
    if values and not out:
        raise UsageError(
            f"--fail-on {values[-1]!r} names no regime; use one or more of {', '.join(REGIMES)}"
        )
    return out


def failing(regimes: dict[str, str], fail_on: set[str]) -> list[str]:
    """``"name (regime)"`` of every layer whose regime is in ``fail_on``."""
    return [f"{name} ({r})" for name, r in regimes.items() if r in fail_on]


__all__ = [
    "FAIL_ON_EXIT",
    "REGIMES",
    "diagnosis_text",
    "failing",
    "layout_warnings",
    "parse_fail_on",
    "read_as",
    "read_as_text",
    "summary",
    "width",
]
