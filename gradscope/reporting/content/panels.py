"""The figures a report can show, each declared once as a ``PanelSpec``.

Every panel names the data it needs and pulls it out of a record (a layer diagnosis or a
Monitor history) or raises :class:`~gradscope.reporting.content.document.Missing` with the reason;
the panel is then shown as missing with that reason, never dropped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from gradscope.reporting import figures as F
from gradscope.reporting.content.document import Missing, Panel, PanelSpec
from gradscope.reporting.content.gate_panels import TRAINING_GATE_PANEL
from gradscope.reporting.figures.comparison import comparison_chart
from gradscope.reporting.figures.decay import decay_chart, lag_heatmap_chart
from gradscope.reporting.figures.lyapunov import lyapunov_convergence_chart
from gradscope.reporting.figures.spectra import spectral_time_chart
from gradscope.reporting.figures.training import training_heatmap_chart, training_rate_chart


# --------------------------------------------------------------------------- helpers
def slug(text: str) -> str:
    """An HTML-id-safe version of ``text`` (letters, digits, single ``-``; never ``--``).

    Different names can share a slug (``x-y``, ``x y``, ``X_Y``):
    :class:`~gradscope.reporting.content.document.Ids` makes the ids of one page unique.
    """
    s = re.sub(r"[^A-Za-z0-9]+", "-", str(text)).strip("-").lower()
    return s or "x"


def fmt(v: Any, digits: int = 3) -> str:
    """A value for a table cell (``n/a`` when missing or not a number)."""
    try:
        return F.fmt_value(float(v), digits)
    except (TypeError, ValueError):
        return "n/a"


def r2(v: Any) -> str:
    """A coefficient of determination to three decimals, or ``n/a``."""
    return f"{float(v):.3f}" if finite(v) else "n/a"


def finite(v: Any) -> bool:
    """Whether ``v`` is a finite number."""
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def headline(text: str) -> str:
    """The opening of a verdict, at least one sentence (what the summary table shows)."""
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z])", text.strip())
    out = ""
    for part in parts:  # a short first sentence (e.g. a NaN notice) takes the next one along
        out = f"{out} {part}".strip()
        if len(out) >= 120:
            break
    return out


def _notes_reason(layer: Any) -> str:
    notes = [str(n) for n in getattr(layer, "notes", []) or []]
    return f" Analysis notes: {' '.join(notes)}" if notes else ""


def decay(layer: Any, of: str) -> Any:
    """The layer's :class:`~gradscope.Decay` ``of``, or :class:`Missing` with the reason."""
    d = (getattr(layer, "decay", None) or {}).get(of)
    if d is None:
        if of == "loss":
            raise Missing(
                "this run holds no loss gradients; profile(..., loss_fn=...) or a Monitor "
                "records ∂L/∂s_t"
            )
        raise Missing(f"the analysis produced no {of} decay for this layer." + _notes_reason(layer))
    return d


def _decay_kwargs(layer: Any, of: str) -> dict[str, Any]:
    d = decay(layer, of)
    if np.size(d.median) == 0 or not np.isfinite(np.asarray(d.median, dtype=float)).any():
        raise Missing(f"every {of} gradient norm is non-finite or missing." + _notes_reason(layer))
    return dict(
        lags=d.lags,
        median=d.median,
        band=d.band,
        rate=float(d.rate),
        intercept=float(d.intercept),
        fit_lags=tuple(d.fit_lags) if d.fit_lags is not None else None,
        regime=d.regime,
        of=of,
        rate_ci=tuple(d.rate_ci) if d.rate_ci is not None else None,
        half_life=float(d.half_life),
        n_sequences=int(np.shape(d.log_norms)[1]) if np.ndim(d.log_norms) == 2 else None,
    )


def _heatmap_kwargs(layer: Any) -> dict[str, Any]:
    decays = getattr(layer, "decay", None) or {}
    of = "loss" if decays.get("loss") is not None else "state"
    d = decay(layer, of)
    return dict(log_norms=d.log_norms, lags=d.lags, of=of)


def _spectrum(layer: Any, which: str) -> Any:
    s = getattr(layer, f"spectrum_{which}", None)
    if s is None:
        raise Missing(
            f"no {'eigenvalue' if which == 'eig' else 'singular-value'} spectrum was kept for "
            "this layer." + _notes_reason(layer)
        )
    return s


def _spectral_time_kwargs(layer: Any) -> dict[str, Any]:
    eig = getattr(layer, "spectrum_eig", None)
    svd = getattr(layer, "spectrum_svd", None)
    if eig is None and svd is None:
        raise Missing("no spectrum was kept for this layer." + _notes_reason(layer))
    return dict(
        radius_steps=None if eig is None else eig.steps,
        radius=None if eig is None else eig.radius,
        norm_steps=None if svd is None else svd.steps,
        norm=None if svd is None else svd.norm,
    )


def _lyapunov(layer: Any) -> Any:
    ly = getattr(layer, "lyapunov", None)
    if ly is None:
        raise Missing("the Lyapunov exponents could not be computed." + _notes_reason(layer))
    return ly


def _lyap_kwargs(layer: Any) -> dict[str, Any]:
    ly = _lyapunov(layer)
    return dict(exponents=ly.exponents, stderr=ly.stderr, kaplan_yorke=float(ly.kaplan_yorke))


def _lyap_conv_kwargs(layer: Any) -> dict[str, Any]:
    ly = _lyapunov(layer)
    if np.size(ly.history) == 0:
        raise Missing("the running estimate was not recorded (too few steps)")
    return dict(history_steps=ly.history_steps, history=ly.history)


def _memory(layer: Any) -> Any:
    mem = getattr(layer, "memory", None)
    if mem is None:
        raise Missing("the memory timescales could not be computed." + _notes_reason(layer))
    return mem


def _is_diagonal(layer: Any) -> bool:
    return getattr(layer, "memory", None) is not None


#: The figures of one layer's section, in display order.
LAYER_PANELS: list[PanelSpec] = [
    PanelSpec(
        "decay-state",
        "State-gradient decay",
        "How much of a gradient at the last step survives k steps back: ‖∂s_T/∂s_{T−k}‖, "
        "median and 10–90% of sequences, dashed: the exponential fit. "
        "A straight falling line is exponential vanishing (slope = rate per step), a rising "
        "one is exploding, a flat one means the gradient survives.",
        "state-to-state decay (gs.decay(layer, of='state'))",
        lambda layer: _decay_kwargs(layer, "state"),
        chart=decay_chart,
    ),
    PanelSpec(
        "heatmap",
        "Gradient norm per sequence",
        "Log gradient norm for each sequence (rows) at each lag (columns); the loss gradient "
        "when the run has one, else the state gradient; grey cells have no finite norm (a step "
        "the sequence lacks, or a gradient that underflowed to 0). "
        "Smooth vertical colour bands mean all sequences decay alike; one odd row points at "
        "an unusual input.",
        "per-sequence decay norms (gs.decay)",
        _heatmap_kwargs,
        chart=lag_heatmap_chart,
    ),
    PanelSpec(
        "decay-input",
        "Input sensitivity",
        "Sensitivity of the final state to the input k steps earlier, ‖∂s_T/∂x_{T−k}‖. "
        "Where it has fallen far below its value at lag 0, earlier inputs no longer move the "
        "final state: the layer's effective memory ends there.",
        "input-to-state decay (gs.decay(layer, of='input'))",
        lambda layer: _decay_kwargs(layer, "input"),
        chart=decay_chart,
    ),
    PanelSpec(
        "decay-loss",
        "Loss-gradient decay",
        "The real training signal ‖∂L/∂s_t‖ for each state, plotted at its distance T − t from "
        "the last step. Read it like the state decay; it also includes the loss's own "
        "gradients injected along the sequence.",
        "loss gradients ∂L/∂s_t (profile(..., loss_fn=...) or a Monitor)",
        lambda layer: _decay_kwargs(layer, "loss"),
        chart=decay_chart,
    ),
    PanelSpec(
        "spectral-time",
        "One-step Jacobian over time",
        "Spectral norm ‖J_k‖₂ (the largest stretch of one step) and spectral radius ρ(J_k) at "
        "each timestep, median and 10–90% over sequences. A norm below 1 at every step "
        "guarantees vanishing (Pascanu et al. 2013); exploding needs it above 1.",
        "eigenvalue and singular-value spectra (gs.spectrum)",
        _spectral_time_kwargs,
        chart=spectral_time_chart,
    ),
    PanelSpec(
        "eigenvalues",
        "Jacobian eigenvalues",
        "Eigenvalues of every one-step Jacobian in the complex plane (for states over 256, "
        "the leading few of each, by ARPACK); dashed: the unit circle. "
        "Mass inside the circle is directions that shrink each step, points outside grow; "
        "the long-run regime is decided by the Lyapunov exponents.",
        "eigenvalue spectrum (gs.spectrum(layer, which='eig'))",
        lambda layer: dict(values=_spectrum(layer, "eig").values, of=getattr(layer, "D", None)),
        draw=F.eigenvalue_figure,
    ),
    PanelSpec(
        "singular-values",
        "Singular values",
        "Distribution of the singular values of the one-step Jacobians (filled; all of them up "
        "to D = 256, the leading few above) and of the "
        "largest per Jacobian (outline). The mass left of σ = 1 shrinks the gradient at every "
        "step; a right tail beyond 1 can amplify it.",
        "singular-value spectrum (gs.spectrum(layer, which='svd'))",
        lambda layer: dict(values=_spectrum(layer, "svd").values, of=getattr(layer, "D", None)),
        draw=F.singular_value_figure,
    ),
    PanelSpec(
        "lyapunov-spectrum",
        "Lyapunov spectrum",
        "Lyapunov exponents λ_i: the average log growth per step of the i-th direction over "
        "the sequence (bars: ±95% over sequences). λ₁ < 0: every gradient decays at least like "
        "e^(λ₁k); λ₁ > 0: some direction grows (chaotic or exploding dynamics).",
        "Lyapunov exponents (gs.lyapunov)",
        _lyap_kwargs,
        draw=F.lyapunov_spectrum_figure,
    ),
    PanelSpec(
        "lyapunov-convergence",
        "Lyapunov convergence",
        "Running estimate of the leading exponents after each number of steps (QR method). "
        "Curves that have flattened are trustworthy; curves still drifting at the right edge "
        "mean the sequences are too short for a stable estimate.",
        "the Lyapunov running estimate (gs.lyapunov(...).history)",
        _lyap_conv_kwargs,
        chart=lyapunov_convergence_chart,
    ),
    PanelSpec(
        "memory-timescales",
        "Memory timescales",
        "For a diagonal recurrence (Mamba, minGRU, LRU, ...) every state coordinate forgets at "
        "its own rate; τ = −1/mean ln|λ_t| is the number of steps it takes to fall by e. "
        "Coordinates right of the dashed line T still hold a third of what they saw at the "
        "start of the sequence: they are the layer's long memory.",
        "a diagonal transition (a sequence adapter with diagonal())",
        lambda layer: dict(tau=_memory(layer).tau, T=_memory(layer).T),
        draw=F.timescale_figure,
        applies=_is_diagonal,
    ),
    PanelSpec(
        "memory-selectivity",
        "Selective decay",
        "ln|λ_t| for a sample of state coordinates (rows, longest memory at the top) at every "
        "step of the first sequence. Vertical stripes are inputs that make channels forget or "
        "hold at once, the selectivity of a Mamba-style SSM; a uniform picture is a "
        "time-invariant recurrence.",
        "a diagonal transition (a sequence adapter with diagonal())",
        lambda layer: dict(heat=_memory(layer).heat),
        draw=F.decay_heatmap_figure,
        applies=_is_diagonal,
    ),
]


# --------------------------------------------------------------------------- training
def history_names(history: Any) -> list[str]:
    """Layer names a history holds (``history.names``, or ``history.layers`` as names)."""
    for attr in ("names", "layers", "layer_names"):
        v = getattr(history, attr, None)
        if callable(v):
            v = v()
        if v is not None:
            return [getattr(x, "name", x) for x in v]
    return []


def _training_heatmap_kwargs(rec: tuple[Any, str]) -> dict[str, Any]:
    history, name = rec
    try:
        norms = np.asarray(history.grad_norms(name), dtype=float)
    except (KeyError, LookupError) as exc:
        raise Missing(f"the history has no loss gradients for {name} ({exc})") from None
    steps = np.asarray(history.steps)
    if norms.ndim != 2 or norms.shape[0] == 0:
        raise Missing("no training step was sampled yet")
    return dict(norms=norms, steps=steps[: norms.shape[0]])


def _training_rate_kwargs(rec: tuple[Any, str]) -> dict[str, Any]:
    history, name = rec
    getter = getattr(history, "summaries", None)
    if getter is None:
        raise Missing("the history keeps no per-step decay rates (no .summaries(name))")
    try:
        summ = getter(name)
    except (KeyError, LookupError) as exc:
        raise Missing(f"the history has no summaries for {name} ({exc})") from None
    if not isinstance(summ, Mapping) or "rate" not in summ:
        raise Missing("the history's summaries hold no decay rate")
    rates = np.asarray(summ["rate"], dtype=float)
    loss = summ.get("loss_rate")
    loss = None if loss is None else np.asarray(loss, dtype=float)
    if not np.isfinite(rates).any() and (loss is None or not np.isfinite(loss).any()):
        raise Missing(
            "no sampled step has a decay rate: the Monitor fits the state decay only on the "
            "steps it analyses (its analyze= setting) and the loss decay only when it "
            "recorded loss gradients"
        )
    steps = np.asarray(summ.get("steps", history.steps))
    regimes = summ.get("regime")
    ci = summ.get("rate_ci")
    return dict(
        steps=steps[: rates.size],
        rates=rates,
        regimes=None if regimes is None else [str(r) for r in regimes],
        rate_ci=None if ci is None else np.asarray(ci, dtype=float),
        loss_rates=loss,
    )


#: The training-time figures of one layer (from a Monitor's history).
TRAINING_PANELS: list[PanelSpec] = [
    PanelSpec(
        "training-heatmap",
        "Loss gradient over training",
        "Batch-mean ‖∂L/∂s_t‖ at each timestep t (columns) for each sampled training step "
        "(rows), recorded by the Monitor. Colour fading towards t = 0 means early steps get "
        "little gradient; watch whether training widens the bright region.",
        "a Monitor history (monitor.history.grad_norms(name))",
        _training_heatmap_kwargs,
        chart=training_heatmap_chart,
    ),
    PanelSpec(
        "training-rate",
        "Decay rate over training",
        "Fitted decay rates at each sampled training step: the state gradient (markers by "
        "regime, on the steps the Monitor analysed) and the real loss gradient (dashed). "
        "Below zero the gradient vanishes with distance (more negative: faster); an upward "
        "drift over training means the layer is learning to keep memory.",
        "per-step summaries of a Monitor history (history.summaries(name): 'rate', 'loss_rate')",
        _training_rate_kwargs,
        chart=training_rate_chart,
    ),
    TRAINING_GATE_PANEL,
]

#: The comparison panel (several runs).
COMPARISON_PANEL = PanelSpec(
    "comparison",
    "All models compared",
    "State-gradient decay of every model and layer on one axes (median, band 10–90% over "
    "sequences). The flatter the curve, the further back a gradient reaches; the legend gives "
    "each regime and rate per step.",
    "a state decay for at least one layer of two or more runs",
    lambda curves: dict(curves=curves),
    chart=comparison_chart,
)


def make_panel(spec: PanelSpec, record: Any) -> Panel:
    """Resolve ``spec`` against ``record``: data to draw, or the reason it is missing."""
    try:
        kwargs = spec.extract(record)
    except Missing as exc:
        return Panel(spec, None, str(exc))
    return Panel(spec, kwargs, None, words=None if spec.words is None else spec.words(record))
