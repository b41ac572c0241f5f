"""The gate views of a layer section (any family declaring its gates): why gradients survive.

Each panel applies only to the cells it explains (:attr:`PanelSpec.applies`); a layer of any
other cell gets one visible line (:func:`gate_note`) instead of the panels. The training
section's gate panel (:data:`TRAINING_GATE_PANEL`) reads a Monitor history's gate summaries
and, for a layer without them, is shown as missing with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from gradscope.reporting import figures as F
from gradscope.reporting.content.document import Missing, PanelSpec
from gradscope.reporting.figures.gates import carry_chart


def _view(layer: Any) -> Any:
    view = getattr(layer, "gates", None)
    if view is None:
        notes = " ".join(str(n) for n in getattr(layer, "notes", []) or [])
        raise Missing("the gate view was not computed." + (f" Notes: {notes}" if notes else ""))
    return view


def _spec(layer: Any) -> dict[str, Any] | None:
    """What the layer's family declares of its gates (the diagnosis's record), or None."""
    spec = getattr(layer, "gate_spec", None)
    view = getattr(layer, "gates", None)
    if spec is None and view is not None:  # a record made before gate_spec existed
        return {"carried": view.gate}
    return spec


def _gated(layer: Any) -> bool:
    """The family declares a carried gate on an additive path (LSTM f, GRU z)."""
    spec = _spec(layer)
    return spec is not None and spec.get("carried") is not None


def no_additive_path(layer: Any) -> bool:
    """The family declares gates but no additive path (a vanilla cell's φ′)."""
    spec = _spec(layer)
    return spec is not None and spec.get("carried") is None


def _finite(values: Any, what: str) -> Any:
    """``values``, unless none of them is finite (then :class:`Missing`, saying so)."""
    arrays = values.values() if isinstance(values, Mapping) else [values]
    if not any(np.isfinite(np.asarray(v, dtype=float)).any() for v in arrays):
        raise Missing(f"no finite {what}: the layer's weights or states are NaN/inf")
    return values


def _share(layer: Any) -> Any:
    """The path share, unless it is finite at lag 0 only (where it is 1 by definition)."""
    view = _view(layer)
    _finite(np.asarray(view.share, dtype=float)[np.asarray(view.walk_lags) > 0], "path share")
    return view.share


def _carry_kwargs(layer: Any) -> dict[str, Any]:
    view = _view(layer)
    d = (getattr(layer, "decay", None) or {}).get("state")
    return dict(
        lags=view.lags,
        carry=view.carry,
        carry_max=view.carry_max,
        decay_lags=None if d is None else d.lags,
        decay_median=None if d is None else d.median,
        gate=view.gate,
    )


def declared_gate(layer: Any) -> tuple[str, str, str, list[str]] | None:
    """``(carried gate, its word, the path in a sentence, shown gates)`` of a gated family."""
    spec = _spec(layer)
    if not isinstance(spec, Mapping) or not spec.get("carried"):
        return None
    g, word = str(spec["carried"]), str(spec.get("word") or spec["carried"])
    path = str(spec.get("path_text") or "additive path")
    return g, word, path, [str(s) for s in spec.get("shown") or [g]]


def _carry_words(layer: Any) -> str | None:
    found = declared_gate(layer)
    if found is None:
        return None
    g, word, path, _ = found
    return (
        f"Green: the carry ∏{g} of the {word} gate on the {path} over the last k steps, which "
        "a gradient on that path is scaled by, whatever the weights; blue: the full "
        f"‖∂s_T/∂s_{{T−k}}‖. {word.capitalize()} gates near 1 keep the green line flat: that "
        "is the highway a vanilla RNN lacks; blue above green means the gradient travels "
        "through the recurrent weights instead."
    )


def _share_words(layer: Any) -> str | None:
    found = declared_gate(layer)
    if found is None:
        return None
    g, _, path, _ = found
    return (
        "The part of ‖∂s_T/∂s_{T−k}‖ made of paths that stay on the "
        f"{path} at every one of the k steps (green), against paths through the recurrent "
        "weights (blue). Share = ‖Π^A‖/(‖Π^A‖ + ‖rest‖): near 1 the gate "
        f"{g} carries the gradient that far back, near 0 the weights do."
    )


def _distribution_words(layer: Any) -> str | None:
    found = declared_gate(layer)
    if found is None:
        return None  # a vanilla cell: the static caption says tanh′
    g, word, path, shown = found
    return (
        f"Each gate's distribution ({', '.join(shown)}) over units and sequences at every "
        f"timestep. The {word} gate {g} near 1 holds the state on the {path} and its "
        "gradient; near 0 it lets both go."
    )


def gate_note(layer: Any) -> str | None:
    """The line shown instead of the gate views for a cell they do not explain."""
    kind = str(getattr(layer, "kind", ""))
    if _spec(layer) is not None:
        return None
    if getattr(layer, "memory", None) is not None:
        return (
            f"Gate views: not shown for a {kind} layer; its transition is diagonal, so the "
            "memory timescales below play their part."
        )
    return (
        f"Gate views: not shown for a {kind} layer (they explain the cells whose family "
        "declares its gates: LSTM, GRU, vanilla RNN, sLSTM)."
    )


#: The gate views, shown after the state-gradient decay of the layers they apply to.
GATE_PANELS: list[PanelSpec] = [
    PanelSpec(
        "gate-carry",
        "The gradient highway",
        "Green: the carry ∏f (LSTM cell state) or ∏z (GRU update gate) over the last k steps, "
        "which a gradient on the additive path is scaled by, whatever the weights; blue: the "
        "full ‖∂s_T/∂s_{T−k}‖. Gates near 1 keep the green line flat: that is the highway "
        "the vanilla RNN lacks.",
        "a gate view of a layer whose family declares a carried gate (gradscope.analysis.gates)",
        _carry_kwargs,
        chart=carry_chart,
        applies=_gated,
        words=_carry_words,
    ),
    PanelSpec(
        "gate-share",
        "Which path carries the gradient",
        "The part of ‖∂s_T/∂s_{T−k}‖ made of paths that stay on the additive path at every "
        "one of the k steps (green), against paths through the recurrent weights (blue). "
        "Share = ‖Π^A‖/(‖Π^A‖ + ‖rest‖): near 1 the gates carry the gradient that far back, "
        "near 0 the weights do.",
        "a gate view of a layer whose family declares a carried gate (gradscope.analysis.gates)",
        lambda layer: dict(
            lags=_view(layer).walk_lags, share=_share(layer), path=_view(layer).path
        ),
        draw=F.path_share_figure,
        applies=_gated,
        words=_share_words,
    ),
    PanelSpec(
        "gate-distributions",
        "Gates over time",
        "Each gate's distribution over units and sequences at every timestep. A forget (LSTM) "
        "or update (GRU) gate near 1 holds the state and its gradient; for a vanilla RNN the "
        "curve is tanh′, which falls towards 0 as units saturate.",
        "a gate view (gradscope.analysis.gates)",
        lambda layer: dict(gates=_finite(_view(layer).gates, "gate value")),
        draw=F.gate_distribution_figure,
        applies=lambda layer: _gated(layer) or no_additive_path(layer),
        words=_distribution_words,
    ),
    PanelSpec(
        "repeated-factor",
        "The repeated factor",
        "A vanilla RNN multiplies ‖diag(φ′_t) W_hh‖₂ into the gradient at every step back. "
        "Below 1 (dotted) at every step, the gradient must vanish; the gap to ‖W_hh‖₂ (dashed) "
        "is what tanh′ saturation takes away.",
        "a vanilla RNN layer's gate view (gradscope.analysis.gates)",
        lambda layer: dict(
            steps=_view(layer).factor_steps,
            factor=_finite(_view(layer).factor, "one-step factor"),
            weight_norm=float(_view(layer).weight_norm),
        ),
        draw=F.repeated_factor_figure,
        applies=no_additive_path,
    ),
]


# --------------------------------------------------------------------------- training
#: Gate words in a history's keys -> the gate's symbol, for histories saved before the
#: Monitor recorded what each family declares (``history.meta["gate_families"]``).
_FAMILIES = (("forget", "f"), ("update", "z"), ("dphi", "φ'"))


def _training_gate_kwargs(rec: tuple[Any, str]) -> dict[str, Any]:
    history, name = rec
    getter = getattr(history, "summaries", None)
    if getter is None:
        raise Missing("the history keeps no per-step summaries (no .summaries(name))")
    try:
        summ = getter(name)
    except (KeyError, LookupError) as exc:
        raise Missing(f"the history has no summaries for {name} ({exc})") from None

    def recorded(family: str) -> bool:
        median = summ.get(f"gate_{family}_median") if isinstance(summ, Mapping) else None
        return median is not None and np.isfinite(np.asarray(median, dtype=float)).any()

    meta = getattr(history, "meta", None) or {}
    families_meta = meta.get("gate_families")
    declared = families_meta if isinstance(families_meta, Mapping) else None
    spec = declared.get(name, "?") if declared is not None else "?"  # "?": an older file
    families = _FAMILIES
    if isinstance(spec, Mapping) and spec.get("word"):  # the family's own words first
        families = ((spec["word"], spec.get("carried") or spec["shown"][0]), *_FAMILIES)
    found = [(family, gate) for family, gate in dict(families).items() if recorded(family)]
    if not found:
        kinds = meta.get("kinds")
        kind = kinds.get(name) if isinstance(kinds, Mapping) else None
        if spec is None:
            raise Missing(
                f"gates over training: not recorded for a {kind or 'this'} layer (the Monitor "
                "keeps gate summaries of the cells whose family declares its gates: LSTM, "
                "GRU, vanilla RNN, sLSTM)"
            )
        if not isinstance(summ, Mapping) or "gate_forget_median" not in summ:
            raise Missing(
                "this history holds no gate summaries (it was saved by a gradscope that did "
                "not record them); a Monitor records them on every sampled step"
            )
        raise Missing(
            "no sampled step has gate summaries (Monitor(gates=False), or they could not be "
            "computed: see the history's notes)"
        )
    family, gate = found[0]

    def arr(key: str) -> np.ndarray | None:
        v = summ.get(key)
        return None if v is None else np.asarray(v, dtype=float)

    steps = np.asarray(summ.get("steps", history.steps))
    lags = sorted(int(k.rsplit("lag", 1)[1]) for k in summ if k.startswith("gate_log_carry_lag"))
    # an additive path: what the family declares (older histories: what their keys say)
    gated = spec.get("carried") is not None if isinstance(spec, Mapping) else family != "dphi"
    return dict(
        steps=steps,
        median=arr(f"gate_{family}_median"),
        lo=arr(f"gate_{family}_p10"),
        hi=arr(f"gate_{family}_p90"),
        gate=gate,
        log_carry={k: arr(f"gate_log_carry_lag{k}") for k in lags} if gated else None,
        share=arr("gate_path_share") if gated else None,
        factor=None if gated else arr("gate_factor_norm"),
        weight_norm=None if gated else arr("gate_weight_norm"),
    )


def _training_words(rec: tuple[Any, str]) -> str | None:
    """The training gate panel's caption in the family's words (from the history's meta)."""
    history, name = rec
    declared = (getattr(history, "meta", None) or {}).get("gate_families")
    spec = declared.get(name) if isinstance(declared, Mapping) else None
    if not isinstance(spec, Mapping) or not spec.get("word"):
        return None  # an older history: the static caption
    if not spec.get("carried"):
        g = (spec.get("shown") or ["φ′"])[0]
        return (
            f"Left: the median {g} at each sampled step (band 10–90%). Right: the repeated "
            f"factor ‖diag({g}) W_hh‖₂ and ‖W_hh‖₂ on analysed steps; below 1 the gradient "
            "must vanish, and the gap between them is what saturation takes away."
        )
    g, word = spec["carried"], spec["word"]
    path = spec.get("short_text") or spec.get("path_text") or "additive path"
    return (
        f"Left: the median {word} gate {g} at each sampled step (band 10–90%), and the "
        f"{path}'s share of ‖∂s_T/∂s_0‖ on analysed steps. Right: the median carry ∏{g} "
        "over 10 and 100 steps; a rising carry means training is opening the gradient "
        "highway."
    )


#: The training section's gate panel: the carried gate and its carry over training steps.
TRAINING_GATE_PANEL = PanelSpec(
    "training-gates",
    "Gates over training",
    "Left: the median forget gate f (LSTM), update gate z (GRU) or tanh′ (vanilla) at each "
    "sampled step (band 10–90%), and the additive path's share of ‖∂s_T/∂s_0‖ on analysed "
    "steps. Right: the median carry ∏f (∏z) over 10 and 100 steps, or ‖diag(tanh′) W_hh‖₂ "
    "and ‖W_hh‖₂; a rising carry means training is opening the gradient highway.",
    "gate summaries of a Monitor history (history.summaries(name): 'gate_*')",
    _training_gate_kwargs,
    draw=F.training_gates_figure,
    words=_training_words,
)

__all__ = [
    "GATE_PANELS",
    "TRAINING_GATE_PANEL",
    "declared_gate",
    "gate_note",
    "no_additive_path",
]
