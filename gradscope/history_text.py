"""A :class:`~gradscope.history.History` in words: the table of its latest sampled step.

A history keeps per sampled step and layer a row of summaries (no traces, no Jacobians), so
what can be said about it is the state-gradient decay fit, the loss-gradient decay fit, the
one-step spectra and the gradient norms at both ends, at one sampled step, and how the
regime moved over training. ``str(history)`` and ``gradscope diagnose hist.npz`` print this.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gradscope.analysis.formatting import fmt_num, fmt_steps
from gradscope.analysis.severity import GRADES
from gradscope.analysis.severity import grade as severity_grade

# ``History`` is not imported, not even for type checking: history.py imports this module.
History = Any


def _rate(e: dict[str, Any], prefix: str = "") -> str:
    rate = e.get(f"{prefix}rate", math.nan)
    if not math.isfinite(rate):
        return "n/a"
    lo, hi = e.get(f"{prefix}rate_lo", math.nan), e.get(f"{prefix}rate_hi", math.nan)
    half = (hi - lo) / 2
    return f"{rate:+.4f} ±{fmt_num(half, 4)}" if math.isfinite(half) else f"{rate:+.4f}"


def _trend(regimes: list[str]) -> str:
    """``"vanishing → neutral"``: the regimes in the order training went through them."""
    seen = [r for r in regimes if r]
    if not seen:
        return "not analysed"
    path = [seen[0]]
    for r in seen[1:]:
        if r != path[-1]:
            path.append(r)
    return " → ".join(path) if len(path) <= 4 else f"{path[0]} → … → {path[-1]}"


def latest_analysed(history: History, name: str, index: int = -1) -> int | None:
    """The latest row up to ``index`` whose state regime was analysed, or None."""
    stop = index % len(history) + 1
    done = [i for i, r in enumerate(history.regime(name)[:stop]) if r]
    return done[-1] if done else None


def regime_cell(history: History, name: str, index: int = -1) -> str:
    """The state regime at row ``index`` with its grade, else the latest analysed one's.

    ``vanishing (severe)``; when row ``index`` was not analysed, ``vanishing (severe; step
    255)``: the latest analysed regime and its training step; ``not analysed`` when none
    was. The grade is :func:`gradscope.analysis.severity.grade` of that row's rate over its
    ``T``.
    """
    at = latest_analysed(history, name, index)
    if at is None:
        return "not analysed"
    e = history.entry(name, at)
    notes = []
    grade = severity_grade(e["regime"], e["rate"], e["T"])
    if grade in GRADES:
        notes.append(grade)
    if at != index % len(history):
        notes.append(f"step {e['step']}")
    return e["regime"] + (f" ({'; '.join(notes)})" if notes else "")


def diverged(history: History, name: str) -> tuple[int, int] | None:
    """``(first training step, sampled steps)`` with NaN/inf states in ``name``, or None."""
    if "nonfinite" not in history.keys:
        return None
    with np.errstate(invalid="ignore"):
        bad = np.nan_to_num(history.scalar(name, "nonfinite"), nan=0.0) > 0
    if not bad.any():
        return None
    return int(history.steps[int(np.argmax(bad))]), int(bad.sum())


def _diverged_line(history: History, name: str) -> str | None:
    seen = diverged(history, name)
    if seen is None:
        return None
    step, n = seen
    return (
        f"{name}: NaN/inf states from training step {step} on ({n} of {len(history)} sampled "
        "steps): training diverged there; the numbers of those steps rest on what stayed finite"
    )


def history_summary(history: History, index: int = -1) -> dict[str, Any]:
    """The numbers of one sampled step of every layer, JSON-able.

    Args:
        history: The history.
        index: Which sampled step (row), -1 for the latest.

    Returns:
        ``{"step", "sampled_steps", "first_step", "layers": [{"name", "regime",
        "latest_analysed_regime", "latest_analysed_step", "severity", "loss_regime", "rate",
        "rate_ci", "half_life", "loss_rate", "radius_median", "norm_median", "lyapunov",
        "grad_t0", "grad_tT", "T", "B", "regimes_over_training", "diverged_at_step"}]}``
        (``diverged_at_step``: the first sampled step with NaN/inf states, or None;
        ``regime`` is that of row ``index``, ``not analysed`` if it was not;
        ``latest_analysed_*`` and ``severity`` are of the latest analysed row up to it).
    """
    from gradscope._json import jsonable

    if not len(history):
        return {"sampled_steps": 0, "layers": []}
    layers = []
    for name in history.names:
        e = history.entry(name, index)
        at = latest_analysed(history, name, index)
        a = history.entry(name, at) if at is not None else e
        layers.append(
            {
                "name": name,
                "regime": e["regime"] or "not analysed",
                "latest_analysed_regime": a["regime"] or "not analysed",
                "latest_analysed_step": None if at is None else a["step"],
                "severity": severity_grade(a["regime"], a["rate"], a["T"])
                if at is not None
                else "unknown",
                "loss_regime": e["loss_regime"] or "not analysed",
                "rate": e["rate"],
                "rate_ci": [e["rate_lo"], e["rate_hi"]],
                "half_life": e["half_life"],
                "loss_rate": e["loss_rate"],
                "radius_median": e["radius_median"],
                "norm_median": e["norm_median"],
                "lyapunov": e["lyapunov"],
                "grad_t0": e["grad_t0"],
                "grad_tT": e["grad_tT"],
                "T": e["T"],
                "B": e["B"],
                "regimes_over_training": _trend(history.regime(name)),
                "diverged_at_step": (diverged(history, name) or (None,))[0],
            }
        )
    steps = history.steps
    return jsonable(
        {
            "step": int(steps[index]),
            "sampled_steps": len(history),
            "first_step": int(steps[0]),
            "layers": layers,
        }
    )


def history_table(history: History, index: int = -1) -> str:
    """A fixed-width table of one sampled step (default the latest), one row per layer.

    Args:
        history: The history.
        index: Which sampled step (row), -1 for the latest.

    Returns:
        A heading line, the table, and per layer how its regime moved over training.
    """
    if not len(history):
        return "History: no sampled step yet (call monitor.step() after loss.backward())."
    steps = history.steps
    head = ["layer", "T×B", "radius med", "σmax med", "λ1", "rate/step ±95%", "half-life"]
    head += ["loss rate/step", "regime", "loss regime"]
    rows = []
    for name in history.names:
        e = history.entry(name, index)
        tb = f"{e['T']:.0f}×{e['B']:.0f}" if math.isfinite(e["T"]) else "n/a"
        lam = e["lyapunov"]
        rows.append(
            [
                name,
                tb,
                fmt_num(e["radius_median"], 3),
                fmt_num(e["norm_median"], 3),
                f"{lam:+.4f}" if math.isfinite(lam) else "n/a",
                _rate(e),
                fmt_steps(e["half_life"]) if math.isfinite(e["rate"]) else "n/a",
                _rate(e, "loss_"),
                regime_cell(history, name, index),
                e["loss_regime"] or "not analysed",
            ]
        )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        f"Training history: {len(history)} sampled steps ({int(steps[0])} … {int(steps[-1])}); "
        f"the numbers of step {int(steps[index])}:",
        "",
        "  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines.extend("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    lines.append("")
    here = index % len(history)
    for name in history.names:
        at = latest_analysed(history, name, index)
        if at is not None and at != here:
            lines.append(
                f"{name}: step {int(steps[index])} was not analysed; its radius, σmax, λ1, rate "
                f"and half-life are n/a, and its regime is that of step {int(steps[at])}, the "
                "latest analysed"
            )
        lines.append(f"{name}: regime over training {_trend(history.regime(name))}")
        line = _diverged_line(history, name)
        if line:
            lines.append(line)
    return "\n".join(lines)


__all__ = ["diverged", "history_summary", "history_table", "latest_analysed", "regime_cell"]
