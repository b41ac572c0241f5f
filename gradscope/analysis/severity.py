r"""How far a vanishing or exploding gradient gets across a sequence: its grade.

The regime (:mod:`gradscope.analysis.fit`) says which way ``‖∂s_T/∂s_{T−k}‖`` goes; the
grade says how far. Over a sequence of ``T`` steps the fitted rate ``r`` (natural log per
step) changes the gradient of the first step relative to the last by

.. math:: F = e^{r T},

the number a practitioner needs: a dependency spanning the sequence gets ``F`` times the
signal of a dependency of one step. The neutral band is ``|r| ≤ ln 10 / T``, i.e.
``0.1 ≤ F ≤ 10`` (:data:`~gradscope.analysis.fit.SURVIVE_FACTOR`); beyond it, for a
vanishing gradient (an exploding one by ``1/F`` likewise):

========  ====================  ==========================================================
grade     F                     what it means
========  ====================  ==========================================================
mild      ``1e-2 ≤ F < 1e-1``   the first step still arrives within a factor 100 of the
                                last: a dependency across the whole sequence gets a weak
                                but usable signal; shorter ones are barely touched
strong    ``1e-8 ≤ F < 1e-2``   long dependencies get too little to learn from next to the
                                short ones; only those within the memory horizon are learnt
severe    ``F < 1e-8``          the first step's share is below float32 rounding of the
                                last's (``ε = 1.2e-7``): summed with it in a float32
                                gradient it is lost, whatever the optimiser
========  ====================  ==========================================================

``F`` is kept as ``log10 F`` (``r T / ln 10``): a collapse to ``1e-400`` underflows float64
but not its logarithm.
"""

from __future__ import annotations

import math

from gradscope.analysis.fit import SURVIVE_FACTOR, Decay

#: ``log10 F`` bounds of the grades of a vanishing gradient: mild above -2, severe below -8
#: (an exploding gradient: the same bounds on ``-log10 F``).
MILD_LOG10 = -2.0
SEVERE_LOG10 = -8.0

#: The grades, from the least to the worst.
GRADES = ("mild", "strong", "severe")


def log10_factor(rate: float, T: float) -> float:
    """``log10 e^{rate · T}``: the gradient of the first of ``T`` steps relative to the last."""
    return rate * T / math.log(10.0)


def reference_length(d: Decay) -> float:
    """The sequence length ``T`` a decay's neutral band was set for (``ln 10 / threshold``)."""
    return math.log(SURVIVE_FACTOR) / d.threshold if d.threshold > 0 else math.nan


def grade(regime: str, rate: float, T: float) -> str:
    """The grade of a regime over ``T`` steps (see the module docstring).

    Args:
        regime: ``"vanishing"``, ``"exploding"``, ``"neutral"`` or ``"unknown"``.
        rate: The fitted rate (natural log per step).
        T: The sequence length it is judged over.

    Returns:
        ``"mild"``, ``"strong"`` or ``"severe"`` for a vanishing or exploding gradient;
        ``"none"`` for a neutral one; ``"unknown"`` when the regime or the rate is unknown.
    """
    if regime == "neutral" and math.isfinite(rate):
        return "none"
    if regime not in ("vanishing", "exploding") or math.isnan(rate) or not T > 0:
        return "unknown"
    x = log10_factor(rate, T)
    x = x if regime == "vanishing" else -x
    if x >= MILD_LOG10:
        return "mild"
    return "strong" if x >= SEVERE_LOG10 else "severe"


def fmt_factor(log10: float) -> str:
    """``F`` from ``log10 F`` as a sentence shows it: ``0.082``, ``4.8e-20``, ``3e+412``."""
    if math.isnan(log10):
        return "n/a"
    if math.isinf(log10):
        return "0" if log10 < 0 else "∞"
    if -3 < log10 < 4:
        return f"{10.0**log10:.2g}"
    e = math.floor(log10)
    m = 10.0 ** (log10 - e)
    if round(m, 1) >= 10.0:
        m, e = m / 10.0, e + 1
    return f"{m:.2g}e{e:+d}"


__all__ = [
    "GRADES",
    "MILD_LOG10",
    "SEVERE_LOG10",
    "fmt_factor",
    "grade",
    "log10_factor",
    "reference_length",
]
