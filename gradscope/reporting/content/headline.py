"""The report's headline: how far back each entry's gradient reaches, in one sentence.

Each compared entry (:mod:`.entries`) is put in one of five groups from its state decay
(:class:`gradscope.Decay`) and its sequence length ``T``:

* *keeps*: the regime is neutral;
* *fades*: vanishing, but the memory horizon (the lag where the median ``‖∂s_T/∂s_{T−k}‖``
  falls below ``horizon_factor``, 0.1% by default, of its value at lag 0) is at least ``T``:
  the gradient still reaches the first step, shrinking at the rate given;
* *loses it after h steps*: vanishing, with a horizon ``h < T``;
* *grows*: exploding (the rate per step is given);
* *no verdict*: no state decay, or no horizon, was measured.

For example: "LSTM · trained and GRU · trained keep their gradient over all 50 steps;
vanilla RNN · trained loses it after 22 steps, GRU · init after 18."
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from gradscope.reporting.figures.theme import fmt_rate, fmt_value


def _group(layer: Any) -> tuple[str, Any]:
    d = (getattr(layer, "decay", None) or {}).get("state")
    t = getattr(layer, "T", None)
    if d is None or d.regime not in ("vanishing", "exploding", "neutral"):
        return "unknown", None
    if d.regime == "exploding":
        return "grows", d.rate
    horizon = float(d.horizon)
    if d.regime == "neutral":
        return "keeps", t
    if t and horizon >= t:
        return "fades", (t, d.rate)
    return ("loses", horizon) if math.isfinite(horizon) else ("unknown", None)


def _names(labels: list[str]) -> str:
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def sentence(entries: Sequence[tuple[str, Any]]) -> str:
    """One sentence on every entry: keeps its gradient, loses it after h steps, or grows.

    Args:
        entries: ``(label, layer)`` pairs in display order (the layer a
            :class:`~gradscope.analysis.results.LayerDiagnosis`).

    Returns:
        The sentence, or "" when there is no entry.
    """
    keeps: dict[Any, list[str]] = {}
    loses: list[tuple[str, float]] = []
    grows: list[tuple[str, float]] = []
    fades: list[tuple[str, tuple[int, float]]] = []
    unknown: list[str] = []
    for label, layer in entries:
        group, value = _group(layer)
        if group == "keeps":
            keeps.setdefault(value, []).append(label)
        elif group == "loses":
            loses.append((label, value))
        elif group == "grows":
            grows.append((label, value))
        elif group == "fades":
            fades.append((label, value))
        else:
            unknown.append(label)
    parts = []
    for t, labels in keeps.items():
        verb = "keeps its" if len(labels) == 1 else "keep their"
        over = f"over all {t} steps" if t else "over the whole sequence"
        parts.append(f"{_names(labels)} {verb} gradient {over}")
    for label, (t, rate) in fades:
        parts.append(f"{label} reaches all {t}, fading at {fmt_rate(rate)} per step")
    if loses:
        it = "it" if parts else "its gradient"
        (label, h), *rest = loses
        first = f"{label} loses {it} after {fmt_value(h, 2)} steps"
        parts.append(", ".join([first, *(f"{lab} after {fmt_value(v, 2)}" for lab, v in rest)]))
    for label, rate in grows:
        parts.append(f"{label}'s gradient grows going back ({fmt_rate(rate)} per step)")
    if unknown:
        parts.append(f"{_names(unknown)}: no verdict")
    if not parts:
        return ""
    return "; ".join(parts) + "."


__all__ = ["sentence"]
