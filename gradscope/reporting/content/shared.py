"""Figures every entry of a report shares, drawn once, and the picture of the mechanism.

A report of several models (or layers) would otherwise repeat the same kinds of figure
(decay curves, spectra, Lyapunov exponents) once per layer. Here each such kind becomes one
comparison figure: decay curves overlaid on one axes, the others as small multiples in one
figure (:func:`shared_panels`); the layer sections then keep only what is specific to them
(the per-sequence heatmap, the gate views, the memory timescales). The gradient highway, the
measured decay beside the gates' carry for every entry, is :func:`mechanism_panel`.

Entries are ``(label, layer)`` pairs (the label as in the comparison: the run's name, or
``run · layer`` when a run has several layers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gradscope.reporting import figures as F
from gradscope.reporting.content.document import Missing, Panel, PanelSpec
from gradscope.reporting.content.gate_panels import declared_gate, no_additive_path
from gradscope.reporting.content.panels import LAYER_PANELS, decay, make_panel
from gradscope.reporting.figures.comparison import comparison_chart

#: Keys of the layer figures drawn once for all entries when a report has several layers.
SHARED_KEYS = (
    "decay-state",
    "decay-input",
    "decay-loss",
    "spectral-time",
    "singular-values",
    "eigenvalues",
    "lyapunov-spectrum",
    "lyapunov-convergence",
)
#: Of those, the decay curves: overlaid on one axes (the rest are small multiples).
_OVERLAID = {"decay-input": "input", "decay-loss": "loss"}

Entries = Sequence[tuple[str, Any]]
Looks = Mapping[str, tuple[str, tuple[float, ...]]]


def _multiples(spec: PanelSpec, title: str) -> Any:
    def draw_all(
        entries: dict[str, dict[str, Any]], colours: dict[str, str] | None = None, ax: Any = None
    ) -> Any:
        def draw(ax: Any = None, **kw: Any) -> Any:
            return spec.figure(kw, ax)

        return F.small_multiples(draw, entries, title=title, colours=colours)

    return draw_all


def _shared_spec(spec: PanelSpec) -> PanelSpec:
    """The comparison version of ``spec``: decay curves overlaid, the rest small multiples.

    Both stay pictures on screen (``live=False``), as each entry's own figure would be one
    of several.
    """
    texts = (spec.key, spec.title)
    if spec.key in _OVERLAID:
        how = "Every model on one axes, median and band 10–90% over sequences. "
        return PanelSpec(
            *texts,
            how + spec.caption,
            spec.needs,
            lambda rec: rec,
            chart=comparison_chart,
            applies=spec.applies,
            live=False,
        )
    how = "One axes per model, in the order of the table. "
    draw = _multiples(spec, spec.title + ", all models")
    return PanelSpec(
        *texts, how + spec.caption, spec.needs, lambda rec: rec, draw=draw, applies=spec.applies
    )


def _missing_note(missing: dict[str, str]) -> str | None:
    if not missing:
        return None
    return "Not shown for " + "; ".join(f"{k}: {v}" for k, v in missing.items())


def shared_panels(entries: Entries, looks: Looks | None = None) -> list[Panel]:
    """One comparison panel per shared figure kind (all but the state decay, see build).

    An entry without the data is listed in the panel's note with the reason; a kind that no
    entry has is a missing panel with the first reason.

    Args:
        entries: ``(label, layer)`` pairs in display order.
        looks: ``{label: (colour, dash)}`` of the entries, as in the comparison
            (:func:`~gradscope.reporting.figures.comparison.entry_styles`); the overlaid
            curves are drawn in them and each small multiple's title in its colour.
    """
    looks = looks or {}
    out = []
    for spec in LAYER_PANELS:
        if spec.key not in SHARED_KEYS or spec.key == "decay-state":
            continue
        data: dict[str, Any] = {}
        missing: dict[str, str] = {}
        for label, layer in entries:
            if not spec.applies(layer):
                continue
            panel = make_panel(spec, layer)
            if panel.kwargs is None:
                missing[label] = panel.missing or "not available"
            elif spec.key in _OVERLAID:
                d = decay(layer, _OVERLAID[spec.key])
                look = looks.get(label, (None, None))
                data[label] = F.Curve(d.lags, d.median, d.band, float(d.rate), d.regime, *look)
            else:
                data[label] = panel.kwargs
        shared = _shared_spec(spec)
        if not data:
            reason = next(iter(missing.values()), "no entry has this figure")
            out.append(Panel(shared, None, reason))
            continue
        if spec.key in _OVERLAID:
            kwargs: dict[str, Any] = dict(curves=data, of=_OVERLAID[spec.key])
        else:
            kwargs = dict(entries=data, colours={k: looks[k][0] for k in data if k in looks})
        out.append(Panel(shared, kwargs, None, note=_missing_note(missing)))
    return out


def _finite(values: Any) -> bool:
    return bool(np.isfinite(np.asarray(values, dtype=float)).any())


def carried(m: F.Mechanism) -> np.ndarray:
    """The carry beyond lag 0 (where it is 1 by definition, whatever the gates)."""
    return np.asarray(m.carry, dtype=float)[np.asarray(m.carry_lags) > 0]


def _mechanism(layer: Any) -> F.Mechanism:
    try:
        d = decay(layer, "state")
        lags, median, regime = d.lags, d.median, d.regime
    except Missing:
        lags, median, regime = np.zeros(0), np.zeros(0), getattr(layer, "regime", None)
    view = getattr(layer, "gates", None)
    if view is not None and view.gate is not None and np.size(view.carry):
        return F.Mechanism(lags, median, regime, view.gate, view.lags, view.carry)
    factor = math.nan
    if view is not None and np.size(view.factor):
        med = np.asarray(view.factor, dtype=float)[:, 2]
        med = med[np.isfinite(med) & (med > 0)]
        factor = math.log(float(np.median(med))) if med.size else math.nan
    return F.Mechanism(lags, median, regime, factor=factor)


_GREY = (
    "A vanilla RNN has no such path: its grey line is the bound its one-step norm sets, the "
    "median ‖diag(φ′)W_hh‖₂ to the power k; it bounds, it does not predict: blue falling "
    "while grey rises (one-step norms above 1) means non-normal Jacobians, and the rate that "
    "decides is blue's slope, the leading Lyapunov exponent."
)
_READING = (
    "Green staying high is a highway the gradient can travel. Blue far below green: the "
    "gradient leaves the gate path and vanishes through the weights. Blue above green: the "
    "gate carries almost nothing (its share at lag k near 0%) and the gradient travels "
    "through the recurrent weights instead."
)

#: The picture of the mechanism (first screen).
MECHANISM_PANEL = PanelSpec(
    "mechanism",
    "The gradient highway",
    "For each model, the measured ‖∂s_T/∂s_{T−k}‖₂ (blue) beside what the gates alone let "
    "through: the carry of the gate on the family's additive path over the last k steps "
    "(∏f of an LSTM's cell state, ∏z of a GRU's update gate; green, median unit, band "
    f"25–75%). {_GREY} {_READING}",
    "a state decay and, for a family declaring its gates, a gate view (gradscope.analysis.gates)",
    lambda rec: rec,
    draw=lambda entries, ax=None: F.mechanism_figure(entries),
)


def _mechanism_words(layers: Sequence[Any]) -> str:
    """The mechanism caption naming the carried gates of the layers shown, and only those."""
    carried: list[str] = []
    for layer in layers:
        found = declared_gate(layer)
        if found is not None:
            g, word, path, _ = found
            said = f"∏{g} of the {word} gate on the {path}"
            if said not in carried:
                carried.append(said)
    vanilla = any(no_additive_path(layer) for layer in layers)
    head = "For each model, the measured ‖∂s_T/∂s_{T−k}‖₂ (blue)"
    parts = []
    if carried:
        parts.append(
            f"{head} beside what the gates alone let through over the last k steps: "
            f"{'; '.join(carried)} (green, median unit, band 25–75%)."
        )
        parts.append(_GREY if vanilla else "")
        parts.append(_READING)
    elif vanilla:
        parts.append(f"{head}. {_GREY}")
        parts.append("A blue line far below grey is the gradient vanishing through the weights.")
    else:
        return MECHANISM_PANEL.caption
    return " ".join(p for p in parts if p)


def mechanism_panel(entries: Entries) -> Panel | None:
    """The gradient-highway picture of every entry that has a state decay or a gate view."""
    if not entries:
        return None
    data = {}
    missing = {}
    for label, layer in entries:
        m = _mechanism(layer)
        if np.size(m.lags) == 0 and m.gate is None:
            missing[label] = "no state decay"
        elif not _finite(m.median) and not _finite(carried(m)) and not math.isfinite(m.factor):
            missing[label] = "no finite value (non-finite weights or states)"
        else:
            data[label] = m
    if not data:
        reasons = set(missing.values())
        why = reasons.pop() if len(reasons) == 1 else "no layer has a state decay or a gate view"
        return Panel(MECHANISM_PANEL, None, why)
    shown = [layer for label, layer in entries if label in data]
    return Panel(
        MECHANISM_PANEL,
        dict(entries=data),
        None,
        note=_missing_note(missing),
        words=_mechanism_words(shown),
    )


__all__ = ["MECHANISM_PANEL", "SHARED_KEYS", "mechanism_panel", "shared_panels"]
