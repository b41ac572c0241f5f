"""What a report contains, independent of how it is laid out (HTML or PDF).

A report is built in two steps. :func:`build_document` turns the records (diagnoses and
Monitor histories, already normalised to :class:`Run` objects) into a :class:`Document`: a
summary table, an optional comparison, and per run and layer the verdict, the numbers behind
it and a list of :class:`Panel` objects. The renderers (:mod:`gradscope.reporting.html`,
:mod:`gradscope.reporting.pdf`) only lay the document out.

Each figure a section can show is declared once, as a :class:`PanelSpec` in
:data:`LAYER_PANELS` / :data:`TRAINING_PANELS`: its title, its two-line "how to read this"
caption, the data it needs (in words) and a function that pulls that data out of the record
or raises :class:`Missing` with the reason. A panel whose data is absent is kept in the
document with that reason and shown as missing, never dropped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradscope.reporting import figures as F


class Missing(Exception):
    """Raised by a panel's data extractor: the record lacks what the panel needs."""


@dataclass
class Run:
    """One record to report on: a diagnosis and/or a training history.

    Attributes:
        label: Name in a comparison (None for a single-run report).
        source: What it came from, in words (``"Profile"``, ``"trace file run.npz"``, ...).
        diagnosis: A :class:`gradscope.analysis.diagnosis.Diagnosis`, or None (a history alone).
        history: A Monitor history (see :mod:`gradscope.reporting` for the protocol) or None.
        meta: Run metadata to show (model, shapes, dtype, versions, time, ...).
        layer_meta: Per layer name, facts about the recording (input size, dtype, lengths).
        problem: Why there is no diagnosis, when there is none.
    """

    label: str | None
    source: str
    diagnosis: Any | None = None
    history: Any | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    layer_meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    problem: str | None = None


@dataclass(frozen=True)
class PanelSpec:
    """One kind of figure: its texts, the data it needs, and how to draw it.

    Attributes:
        key: Stable identifier (``data-figure`` attribute in HTML, e.g. ``"decay-state"``).
        title: Heading of the panel.
        caption: Two sentences: what is plotted, then how to read it.
        needs: The data the panel needs, in words (shown with the reason when missing).
        extract: ``record -> kwargs`` for ``draw``; raises :class:`Missing` with the reason.
        draw: A function of :mod:`gradscope.reporting.figures`.
    """

    key: str
    title: str
    caption: str
    needs: str
    extract: Callable[[Any], dict[str, Any]]
    draw: Callable[..., Any]


@dataclass
class Panel:
    """A panel of a concrete section: either data to draw or the reason it is missing."""

    spec: PanelSpec
    kwargs: dict[str, Any] | None
    missing: str | None

    @property
    def key(self) -> str:
        """The spec's key."""
        return self.spec.key

    def render(self, ax: Any = None) -> Any:
        """Draw the figure (into ``ax`` if given); a missing panel draws its reason."""
        if self.kwargs is None:
            fig, ax = F._axes(ax)
            with F.style():
                F.no_data(ax, self.missing or "not available", self.spec.title)
            return fig
        return self.spec.draw(**self.kwargs, ax=ax)


@dataclass
class Number:
    """One line of the numbers behind a verdict."""

    label: str
    value: str
    meaning: str


@dataclass
class LayerSection:
    """Everything shown about one layer of one run."""

    run: str | None
    name: str
    anchor: str
    kind: str
    regime: str | None
    verdict: str
    advice: list[str]
    numbers: list[Number]
    notes: list[str]
    nonfinite: str | None
    panels: list[Panel]


@dataclass
class RunSection:
    """One run: its layers, its training history views, its metadata."""

    label: str | None
    anchor: str
    source: str
    layers: list[LayerSection]
    training: list[tuple[str, list[Panel]]]
    training_missing: str | None
    problem: str | None
    meta: list[tuple[str, str]]


@dataclass
class SummaryRow:
    """One row of the verdict table on the first screen."""

    run: str | None
    layer: str
    anchor: str
    kind: str
    regime: str | None
    rate: str
    half_life: str
    horizon: str
    radius: str
    norm: str
    lyap: str
    nonfinite: str | None
    verdict: str
    full_verdict: str = ""


@dataclass
class Document:
    """The whole report, ready to be laid out."""

    title: str
    generated: str
    runs: list[RunSection]
    summary: list[SummaryRow]
    alerts: list[str]
    comparison: Panel | None
    comparison_table: list[list[str]]
    meta: list[tuple[str, str]]
    common_meta: list[tuple[str, str]] = field(default_factory=list)


# --------------------------------------------------------------------------- helpers
def slug(text: str) -> str:
    """An HTML-id-safe version of ``text`` (letters, digits, ``-``)."""
    s = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return s or "x"


def _f(v: Any, digits: int = 3) -> str:
    try:
        return F.fmt_value(float(v), digits)
    except (TypeError, ValueError):
        return "n/a"


def _r2(v: Any) -> str:
    return f"{float(v):.3f}" if _finite(v) else "n/a"


def _finite(v: Any) -> bool:
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


def _decay(layer: Any, of: str) -> Any:
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
    d = _decay(layer, of)
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
    d = _decay(layer, of)
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
        F.decay_figure,
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
        F.lag_heatmap_figure,
    ),
    PanelSpec(
        "decay-input",
        "Input sensitivity",
        "Sensitivity of the final state to the input k steps earlier, ‖∂s_T/∂x_{T−k}‖. "
        "Where it has fallen far below its value at lag 0, earlier inputs no longer move the "
        "final state: the layer's effective memory ends there.",
        "input-to-state decay (gs.decay(layer, of='input'))",
        lambda layer: _decay_kwargs(layer, "input"),
        F.decay_figure,
    ),
    PanelSpec(
        "decay-loss",
        "Loss-gradient decay",
        "The real training signal ‖∂L/∂s_t‖ for each state, plotted at its distance T − t from "
        "the last step. Read it like the state decay; it also includes the loss's own "
        "gradients injected along the sequence.",
        "loss gradients ∂L/∂s_t (profile(..., loss_fn=...) or a Monitor)",
        lambda layer: _decay_kwargs(layer, "loss"),
        F.decay_figure,
    ),
    PanelSpec(
        "spectral-time",
        "One-step Jacobian over time",
        "Spectral norm ‖J_k‖₂ (the largest stretch of one step) and spectral radius ρ(J_k) at "
        "each timestep, median and 10–90% over sequences. A norm below 1 at every step "
        "guarantees vanishing (Pascanu et al. 2013); exploding needs it above 1.",
        "eigenvalue and singular-value spectra (gs.spectrum)",
        _spectral_time_kwargs,
        F.spectral_time_figure,
    ),
    PanelSpec(
        "eigenvalues",
        "Jacobian eigenvalues",
        "Eigenvalues of every one-step Jacobian in the complex plane; dashed: the unit circle. "
        "Mass inside the circle is directions that shrink each step, points outside grow; "
        "the long-run regime is decided by the Lyapunov exponents.",
        "eigenvalue spectrum (gs.spectrum(layer, which='eig'))",
        lambda layer: dict(values=_spectrum(layer, "eig").values),
        F.eigenvalue_figure,
    ),
    PanelSpec(
        "singular-values",
        "Singular values",
        "Distribution of all singular values of the one-step Jacobians (filled) and of the "
        "largest per Jacobian (outline). The mass left of σ = 1 shrinks the gradient at every "
        "step; a right tail beyond 1 can amplify it.",
        "singular-value spectrum (gs.spectrum(layer, which='svd'))",
        lambda layer: dict(values=_spectrum(layer, "svd").values),
        F.singular_value_figure,
    ),
    PanelSpec(
        "lyapunov-spectrum",
        "Lyapunov spectrum",
        "Lyapunov exponents λ_i: the average log growth per step of the i-th direction over "
        "the sequence (bars: ±95% over sequences). λ₁ < 0: every gradient decays at least like "
        "e^(λ₁k); λ₁ > 0: some direction grows (chaotic or exploding dynamics).",
        "Lyapunov exponents (gs.lyapunov)",
        _lyap_kwargs,
        F.lyapunov_spectrum_figure,
    ),
    PanelSpec(
        "lyapunov-convergence",
        "Lyapunov convergence",
        "Running estimate of the leading exponents after each number of steps (QR method). "
        "Curves that have flattened are trustworthy; curves still drifting at the right edge "
        "mean the sequences are too short for a stable estimate.",
        "the Lyapunov running estimate (gs.lyapunov(...).history)",
        _lyap_conv_kwargs,
        F.lyapunov_convergence_figure,
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
        F.training_heatmap_figure,
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
        F.training_rate_figure,
    ),
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
    F.comparison_figure,
)


def make_panel(spec: PanelSpec, record: Any) -> Panel:
    """Resolve ``spec`` against ``record``: data to draw, or the reason it is missing."""
    try:
        return Panel(spec, spec.extract(record), None)
    except Missing as exc:
        return Panel(spec, None, str(exc))


# --------------------------------------------------------------------------- numbers
def _summary_text(s: Mapping[str, Any] | None) -> str:
    if not s or not int(s.get("n", 0) or 0):
        return "n/a (no valid Jacobian)"
    frac = s.get("frac_above_1")
    frac_s = f"{float(frac):.0%} of step×sequence entries above 1" if _finite(frac) else ""
    return (
        f"median {_f(s.get('median'))} (5–95%: {_f(s.get('p05'))}–{_f(s.get('p95'))}); "
        f"{frac_s}; n = {int(s.get('n', 0))}"
    )


def _decay_number(layer: Any, of: str, label: str) -> Number:
    meaning = {
        "state": "slope of ln‖∂s_T/∂s_{T−k}‖ against lag k; negative: vanishing",
        "input": "slope of ln‖∂s_T/∂x_{T−k}‖ against lag k",
        "loss": "slope of ln‖∂L/∂s_t‖ against lag T − t",
    }[of]
    try:
        d = _decay(layer, of)
    except Missing as exc:
        return Number(label, f"not available: {exc}", meaning)
    ci = d.rate_ci if d.rate_ci is not None else (math.nan, math.nan)
    fit = f", fit over lags {d.fit_lags[0]}–{d.fit_lags[1]}" if d.fit_lags is not None else ""
    value = (
        f"{F.fmt_rate(d.rate)} per step (95% CI {F.fmt_rate(ci[0])} to {F.fmt_rate(ci[1])}), "
        f"R² = {_r2(d.r2)}{fit}; "
        f"{F.regime_label(d.regime)}"
    )
    return Number(label, value, meaning)


def nonfinite_text(layer: Any) -> str | None:
    """A warning sentence when the layer saw NaN/inf states, else None."""
    nf = getattr(layer, "nonfinite", None) or {}
    count = int(nf.get("count", 0) or 0)
    if count <= 0:
        return None
    where = ""
    if nf.get("first_step") is not None:
        where = f", the first at step t = {nf.get('first_step')}"
        if nf.get("first_batch") is not None:
            where += f" of sequence {nf.get('first_batch')}"
    return (
        f"Non-finite values: {count} recorded state(s) hold NaN/inf{where}. They are left out "
        "of the spectra and fits; check the input, the weights and the learning rate (an "
        "exploding forward pass produces these)."
    )


def layer_numbers(layer: Any) -> list[Number]:
    """The numbers behind a layer's verdict, each with what it means."""
    out = [
        Number(
            "Recording",
            f"T = {layer.T} steps, B = {layer.B} sequences, D = {layer.D} "
            f"({' + '.join(layer.state_names)})",
            f"cell kind {layer.kind}",
        ),
        Number(
            "Regime", F.regime_label(layer.regime), "decided from the decay rate and its interval"
        ),
        _decay_number(layer, "state", "State-gradient decay rate"),
    ]
    try:
        d = _decay(layer, "state")
        out.append(
            Number(
                "Half-life",
                f"{_f(d.half_life)} steps",
                "steps back for the gradient norm to halve: ln 2 / (−rate)",
            )
        )
        factor = getattr(d, "horizon_factor", None)
        out.append(
            Number(
                "Memory horizon",
                f"{_f(d.horizon)} steps",
                f"lag where the fitted norm has fallen to {factor:g} of its lag-0 value"
                if _finite(factor)
                else "lag where the fitted norm has fallen by the horizon factor",
            )
        )
    except Missing:
        pass
    out.append(_decay_number(layer, "input", "Input-sensitivity rate"))
    out.append(_decay_number(layer, "loss", "Loss-gradient decay rate"))
    out.append(
        Number(
            "Spectral norm ‖J‖₂",
            _summary_text(getattr(layer, "svd", None)),
            "largest one-step stretch; below 1 everywhere guarantees vanishing",
        )
    )
    out.append(
        Number(
            "Spectral radius ρ(J)",
            _summary_text(getattr(layer, "eig", None)),
            "largest eigenvalue modulus of the one-step Jacobian",
        )
    )
    ly = getattr(layer, "lyapunov", None)
    if ly is not None and np.size(ly.exponents):
        err = np.asarray(ly.stderr, dtype=float)
        pm = f" ± {_f(1.96 * err[0], 2)}" if err.size and _finite(err[0]) else ""
        out.append(
            Number(
                "Largest Lyapunov exponent λ₁",
                f"{F.fmt_rate(ly.exponents[0])}{pm} per step (95%); Kaplan–Yorke dimension "
                f"{_f(ly.kaplan_yorke)}; {ly.steps} steps used",
                "long-run log growth per step of the most expanding direction",
            )
        )
    else:
        out.append(
            Number(
                "Largest Lyapunov exponent λ₁",
                "not available: the Lyapunov exponents could not be computed",
                "long-run log growth per step of the most expanding direction",
            )
        )
    nf = getattr(layer, "nonfinite", None) or {}
    count = int(nf.get("count", 0) or 0)
    out.append(
        Number(
            "Non-finite values",
            "none"
            if count == 0
            else f"⚠ {count} (first at step {nf.get('first_step')}, "
            f"sequence {nf.get('first_batch')})",
            "recorded states holding NaN/inf (left out of the analysis)",
        )
    )
    return out


# --------------------------------------------------------------------------- document
def _flatten_meta(meta: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for k, v in meta.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v and len(v) <= 30:
            out.extend(_flatten_meta(v, key + "."))
        elif isinstance(v, (list, tuple)) and len(v) > 20:
            out.append((key, f"{len(v)} items: {', '.join(map(str, v[:8]))}, ..."))
        else:
            out.append((key, str(v)))
    return out


def _layer_section(run: Run, layer: Any, run_anchor: str) -> LayerSection:
    name = str(layer.name)
    return LayerSection(
        run=run.label,
        name=name,
        anchor=f"{run_anchor}--{slug(name)}",
        kind=str(layer.kind),
        regime=getattr(layer, "regime", None),
        verdict=str(getattr(layer, "verdict", "") or ""),
        advice=[str(a) for a in getattr(layer, "advice", []) or []],
        numbers=layer_numbers(layer),
        notes=[str(n) for n in getattr(layer, "notes", []) or []],
        nonfinite=nonfinite_text(layer),
        panels=[make_panel(spec, layer) for spec in LAYER_PANELS],
    )


def _summary_row(section: LayerSection, layer: Any) -> SummaryRow:
    decays = getattr(layer, "decay", None) or {}
    d = decays.get("state")
    ly = getattr(layer, "lyapunov", None)
    eig = getattr(layer, "eig", None) or {}
    svd = getattr(layer, "svd", None) or {}
    nf = getattr(layer, "nonfinite", None) or {}
    count = int(nf.get("count", 0) or 0)
    return SummaryRow(
        run=section.run,
        layer=section.name,
        anchor=section.anchor,
        kind=section.kind,
        regime=section.regime,
        rate="n/a" if d is None else F.fmt_rate(d.rate),
        half_life="n/a" if d is None else _f(d.half_life),
        horizon="n/a" if d is None else _f(d.horizon),
        radius=_f(eig.get("median")),
        norm=_f(svd.get("median")),
        lyap="n/a" if ly is None or not np.size(ly.exponents) else F.fmt_rate(ly.exponents[0]),
        nonfinite=None if count == 0 else f"{count} (step {nf.get('first_step')})",
        verdict=headline(section.verdict),
        full_verdict=section.verdict,
    )


def _training(run: Run) -> tuple[list[tuple[str, list[Panel]]], str | None]:
    if run.history is None:
        return [], (
            "Training history: not available. A gs.Monitor(model) attached to the training "
            "loop records the loss gradient and the decay rate over training steps."
        )
    names = history_names(run.history)
    if not names:
        return [], "Training history: the history names no layer (nothing was sampled yet)."
    return [
        (name, [make_panel(spec, (run.history, name)) for spec in TRAINING_PANELS])
        for name in names
    ], None


def build_document(
    runs: Sequence[Run], title: str, generated: str, meta: Mapping[str, Any]
) -> Document:
    """Turn normalised runs into the report's content.

    Args:
        runs: One run (single report) or several (comparison), in display order.
        title: Report title.
        generated: Time stamp of the report.
        meta: Report-wide metadata (versions, platform).

    Returns:
        The :class:`Document` the renderers lay out.
    """
    sections: list[RunSection] = []
    summary: list[SummaryRow] = []
    alerts: list[str] = []
    curves: dict[str, F.Curve] = {}
    used: set[str] = set()
    for i, run in enumerate(runs):
        anchor = slug(f"run-{run.label}") if run.label is not None else "run"
        if anchor in used:
            anchor = f"{anchor}-{i}"
        used.add(anchor)
        layers = [] if run.diagnosis is None else list(run.diagnosis.layers)
        lsecs = []
        for layer in layers:
            sec = _layer_section(run, layer, anchor)
            lsecs.append(sec)
            summary.append(_summary_row(sec, layer))
            if sec.nonfinite:
                who = f"{run.label} / {sec.name}" if run.label else sec.name
                alerts.append(f"{who}: {sec.nonfinite}")
            d = (getattr(layer, "decay", None) or {}).get("state")
            if d is not None:
                label = sec.name if run.label is None else f"{run.label} · {sec.name}"
                if len(layers) == 1 and run.label is not None:
                    label = run.label
                curves[label] = F.Curve(d.lags, d.median, d.band, float(d.rate), d.regime)
        training, training_missing = _training(run)
        problem = run.problem
        if run.diagnosis is None and problem is None:
            problem = "no diagnosis"
        meta_rows = _flatten_meta(run.meta)
        for lname, lm in run.layer_meta.items():
            meta_rows.extend((f"layer {lname}: {k}", str(v)) for k, v in lm.items())
        sections.append(
            RunSection(
                label=run.label,
                anchor=anchor,
                source=run.source,
                layers=lsecs,
                training=training,
                training_missing=training_missing,
                problem=problem if run.diagnosis is None else None,
                meta=meta_rows,
            )
        )
    comparison = None
    table: list[list[str]] = []
    if len(runs) > 1:
        if len(curves) >= 2:
            comparison = Panel(COMPARISON_PANEL, dict(curves=curves), None)
        else:
            comparison = Panel(
                COMPARISON_PANEL,
                None,
                f"only {len(curves)} of the {len(runs)} runs has a state decay curve",
            )
        table = [["model / layer", "regime", "rate per step", "half-life (steps)", "λ₁", "‖J‖₂"]]
        for row in summary:
            who = row.run if row.run is not None else row.layer
            if row.run is not None and sum(r.run == row.run for r in summary) > 1:
                who = f"{row.run} · {row.layer}"
            table.append(
                [who, F.regime_label(row.regime), row.rate, row.half_life, row.lyap, row.norm]
            )
    common: list[tuple[str, str]] = []
    if len(sections) > 1:
        # rows every run shares (versions, settings) are shown once, not once per run
        shared = set(sections[0].meta).intersection(*(set(r.meta) for r in sections[1:]))
        common = [row for row in sections[0].meta if row in shared]
        for sec in sections:
            sec.meta = [row for row in sec.meta if row not in shared]
    return Document(
        title=title,
        generated=generated,
        runs=sections,
        common_meta=common,
        summary=summary,
        alerts=alerts,
        comparison=comparison,
        comparison_table=table,
        meta=_flatten_meta(meta),
    )


__all__ = [
    "COMPARISON_PANEL",
    "LAYER_PANELS",
    "TRAINING_PANELS",
    "Document",
    "LayerSection",
    "Missing",
    "Number",
    "Panel",
    "PanelSpec",
    "Run",
    "RunSection",
    "SummaryRow",
    "build_document",
    "headline",
    "history_names",
    "layer_numbers",
    "make_panel",
    "nonfinite_text",
    "slug",
]
