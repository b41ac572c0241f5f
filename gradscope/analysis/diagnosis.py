r"""Per-layer diagnosis: spectra, Lyapunov exponents, decay, regime, verdict and advice.

:func:`diagnose` runs the whole analysis layer on every recorded layer of a trace:

* one-step spectra (:func:`gradscope.spectrum`, eigenvalues and singular values) on a
  subsample of steps (the cost of a ``D × D`` eigendecomposition is ~25 D³ flops, so the
  number of (step, sequence) pairs is chosen to stay within a fixed budget);
* the leading Lyapunov exponents (:func:`gradscope.lyapunov`, ``k = min(D, 16)``);
* the decay of ``‖∂s_T/∂s_{T-k}‖`` (state), ``‖∂s_T/∂x_{T-k}‖`` (input) and, when the trace
  holds loss gradients, ``‖∂L/∂s_t‖`` (loss) (:func:`gradscope.decay`), computed in one
  backward walk; for large states the walk's probe directions are the Lyapunov vectors
  the QR iteration ended with, so nothing is computed twice.

**Regime.** The layer's regime is the regime of the *state* decay: a property of the
recurrent dynamics alone. The loss gradient is reported next to it but does not decide:
``∂L/∂s_t`` receives a direct contribution from every step where the loss reads the state,
so with a per-step loss it stays large at every lag even when the state-to-state product
vanishes, and with a last-step loss it equals the state decay projected on one direction.

The words of the verdict live in :mod:`gradscope.analysis.verdict`, the advice in
:mod:`gradscope.analysis.advice`, the grade in :mod:`gradscope.analysis.severity` and where
the loss's credit enters a layer in :mod:`gradscope.analysis.credit`;
:func:`gradscope.profile` (:mod:`gradscope.analysis.profiling`) records and diagnoses in
one call.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from gradscope._progress import analysis, progress_bar
from gradscope.analysis.advice import advice
from gradscope.analysis.credit import loss_injection
from gradscope.analysis.decay import Decay, decay_curves, fit_decay, loss_log_norms
from gradscope.analysis.finite import Prefix, finite_prefix, prefix_of, with_overflow
from gradscope.analysis.gates import gate_view
from gradscope.analysis.gates.values import declared
from gradscope.analysis.lyapunov import lyapunov
from gradscope.analysis.results import Diagnosis, LayerDiagnosis
from gradscope.analysis.sampling import evenly_spaced
from gradscope.analysis.severity import grade
from gradscope.analysis.spectra import spectrum
from gradscope.analysis.timescales import timescales
from gradscope.analysis.verdict import verdict
from gradscope.errors import ArgumentTypeError, GradscopeError, ShapeError
from gradscope.jacobians.operator import DENSE_UP_TO, operator_of
from gradscope.traces import LayerTrace, Trace

#: Flop budget of the one-step spectra of one layer (eig ~25 D³, svd ~10 D³ per matrix).
SPECTRUM_FLOPS = 2e10
#: Products budgeted per Jacobian for ARPACK's leading eigen- and singular values.
OPERATOR_PRODUCTS = 1200
#: Default number of Lyapunov exponents (and of decay probes for D > 128).
DEFAULT_K = 16


def _nonfinite(layer: LayerTrace, prefix: Prefix, bad_params: list[str]) -> dict[str, Any]:
    """Non-finite states and weights, and the finite steps the statistics rest on."""
    out: dict[str, Any] = {
        "count": int(layer.nonfinite().sum()),
        "first_step": prefix.first_step,
        "first_batch": prefix.first_batch,
    }
    if prefix.cut:
        kept = prefix.steps[prefix.kept]
        out["finite_steps"] = float(np.median(kept)) if kept.size else 0.0
        out["prefix"] = prefix.describe()
    if bad_params:
        out["params"] = bad_params
    return out


def _bad_params(layer: LayerTrace) -> list[str]:
    """Names of the weights holding NaN/inf.

    0-d entries are configuration numbers, not weights (a sequence adapter's ``dt_max = inf``
    means "no limit"), and are left alone.
    """
    return sorted(
        k for k, v in layer.params.items() if v.ndim and not bool(torch.isfinite(v).all())
    )


def _spectrum_selection(layer: LayerTrace, steps: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Evenly spaced steps and the first sequences whose one-step spectra fit the budget.

    Dense decompositions cost ~35 D³ flops per Jacobian (eig + svd); on the operator path
    (``D > DENSE_MAX_D``) ARPACK needs a few hundred products of ~2 D² flops each, budgeted
    as ``OPERATOR_PRODUCTS`` per Jacobian.
    """
    D, B = layer.D, layer.B
    dense = DENSE_UP_TO["spectrum"] >= D or operator_of(layer).stored
    batch = np.arange(min(B, 4 if dense else 1))
    valid_steps = np.nonzero(layer.mask[:, batch].any(axis=1))[0] if layer.T else np.zeros(0)
    if steps is None:
        cost = 35.0 * max(D, 1) ** 3 if dense else OPERATOR_PRODUCTS * 2.0 * max(D, 1) ** 2
        pairs = int(SPECTRUM_FLOPS // cost)
        steps = int(np.clip(pairs // max(len(batch), 1), 4 if dense else 2, 256))
    picked = evenly_spaced(len(valid_steps), steps)
    return valid_steps[picked].astype(np.int64), batch


@analysis
def _diagnose_layer(
    layer: LayerTrace,
    *,
    k: int | None,
    discard: int | None,
    max_lag: int | None,
    probes: int | None,
    spectrum_steps: int | None,
    seed: int,
    progress: bool | str,
) -> LayerDiagnosis:
    notes: list[str] = []
    operator_of(layer)  # built once for every analysis below; a bad trace's params raise here
    bad_params = _bad_params(layer)
    if bad_params:
        view, prefix = None, prefix_of(layer)
        reason = f"the weights {', '.join(bad_params)} hold NaN/inf, and so does every Jacobian"
    else:
        view, prefix = finite_prefix(layer)
        reason = "" if view is not None else prefix.describe()
    nonfinite = _nonfinite(layer, prefix, bad_params)
    if view is not None and view is not layer:
        notes.append(f"every statistic rests on {prefix.describe()}")
    full, layer = layer, (view if view is not None else layer)
    D = layer.D
    empty = {
        "median": math.nan,
        "mean": math.nan,
        "p05": math.nan,
        "p95": math.nan,
        "min": math.nan,
        "max": math.nan,
        "frac_above_1": math.nan,
        "n": 0,
    }
    spec_eig = spec_svd = None
    eig_sum, svd_sum = dict(empty), dict(empty)
    steps, batch = _spectrum_selection(layer, spectrum_steps)
    try:
        if len(steps) and len(batch) and not reason:
            spec_eig = spectrum(layer, "eig", steps=steps, batch=batch, progress=progress)
            spec_svd = spectrum(layer, "svd", steps=steps, batch=batch, progress=progress)
            eig_sum, svd_sum = spec_eig.summary(), spec_svd.summary()
            mask_n = int(layer.mask[np.ix_(steps, batch)].sum())
            if len(steps) < layer.T or len(batch) < layer.B:
                notes.append(
                    f"one-step spectra on {len(steps)} of {layer.T} steps × {len(batch)} of "
                    f"{layer.B} sequences ({mask_n} valid pairs)"
                )
    except (GradscopeError, np.linalg.LinAlgError) as exc:
        notes.append(f"spectra not computed: {exc}")

    kk = min(D, DEFAULT_K) if k is None else min(int(k), D)
    t_med = float(np.median(layer.seq_lengths)) if layer.B else 0.0
    disc = int(min(100, t_med // 10)) if discard is None else int(discard)
    ly = None
    basis = None
    try:
        if layer.T and layer.B and not reason:
            ly = lyapunov(layer, kk, disc, seed=seed, progress=progress)
            basis = ly.vectors
            notes.extend(ly.notes)
    except (GradscopeError, np.linalg.LinAlgError) as exc:
        notes.append(f"Lyapunov exponents not computed: {exc}")

    decays: dict[str, Decay] = {}
    p = (D if D <= 128 else min(D, kk)) if probes is None else int(probes)
    want_input = layer.I > 0
    try:
        if layer.T and layer.B and not reason:
            use_basis = basis if (p < D and ly is not None and ly.k == p) else None
            try:
                ls, li, p_used, wnotes = decay_curves(
                    layer,
                    ("state", "input"),
                    max_lag=max_lag,
                    probes=p,
                    basis=use_basis,
                    seed=seed,
                    progress=progress,
                )
            except GradscopeError as exc:  # e.g. no input Jacobians for a saved custom cell
                if not want_input:
                    raise
                notes.append(f"input decay not computed: {exc}")
                ls, li, p_used, wnotes = decay_curves(
                    layer,
                    ("state",),
                    max_lag=max_lag,
                    probes=p,
                    basis=use_basis,
                    seed=seed,
                    progress=progress,
                )
            st = fit_decay(layer.name, "state", ls, t_med, probes=p_used, notes=wnotes)
            decays["state"] = with_overflow(st, prefix)
            if li is not None:
                fi = fit_decay(layer.name, "input", li, t_med, probes=p_used, notes=list(wnotes))
                decays["input"] = with_overflow(fi, prefix)
    except (GradscopeError, np.linalg.LinAlgError) as exc:
        notes.append(f"decay not computed: {exc}")
        reason = reason or f"{type(exc).__name__}: {exc}"
    if layer.grads is not None and not reason:
        decays["loss"] = fit_decay(layer.name, "loss", loss_log_norms(layer, max_lag), t_med)
    st = decays.get("state")
    if not reason and st is not None and math.isnan(st.rate) and prefix.cut:
        reason = f"too few finite steps to fit a rate ({prefix.describe()})"
    regime = "unknown" if reason else st.regime if st is not None else "neutral"
    if st is not None and st.regime != regime:
        decays["state"] = replace(st, regime=regime)
    d = LayerDiagnosis(
        name=layer.name,
        kind=layer.kind,
        T=full.T,
        B=full.B,
        D=D,
        state_names=tuple(layer.state_names),
        eig=eig_sum,
        svd=svd_sum,
        spectrum_eig=spec_eig,
        spectrum_svd=spec_svd,
        lyapunov=ly,
        decay=decays,
        regime=regime,
        verdict="",
        advice=[],
        nonfinite=nonfinite,
        notes=notes,
        reason=reason,
    )
    try:
        d.memory = timescales(layer)
    except (GradscopeError, np.linalg.LinAlgError) as exc:
        notes.append(f"memory timescales not computed: {exc}")
    found = declared(layer)
    d.gate_spec = None if found is None else found[1].as_dict()
    try:
        d.gates = gate_view(layer, max_lag=max_lag, seed=seed)
    except (GradscopeError, np.linalg.LinAlgError, RuntimeError) as exc:
        notes.append(f"gate view not computed: {exc}")
    _assemble(d, layer, notes)
    return d


def _assemble(d: LayerDiagnosis, layer: LayerTrace, notes: list[str]) -> None:
    """The grade, where the loss's credit enters, the verdict and the advice of ``d``.

    The gate view gets the rates that decide (the fitted state rate and λ1), so that its
    sentence can say when a one-step norm and the long-run rate seem to disagree.
    """
    st = d.decay.get("state")
    t_ref = float(np.median(layer.seq_lengths)) if layer.B else 0.0
    rate = st.rate if st is not None else math.nan
    d.severity = grade(d.regime, rate, t_ref)
    where = None
    if "loss" in d.decay:
        try:
            where = loss_injection(layer)
        except (GradscopeError, RuntimeError) as exc:
            notes.append(f"where the loss enters not computed: {exc}")
    if d.gates is not None:
        d.gates = replace(d.gates, rate=rate, lambda1=d.lambda1)
    d.verdict = verdict(d, layer, where)
    if d.memory is not None:
        d.verdict = f"{d.verdict} {d.memory.sentence()}"
    if d.gates is not None:
        d.verdict = f"{d.verdict} {d.gates.sentence()}"
    d.advice = advice(d, layer)


def _layers_of(trace: Any) -> tuple[list[LayerTrace], dict[str, Any]]:
    """The layers :func:`diagnose` was given, and the trace's metadata.

    Raises:
        ArgumentTypeError: not a Trace, a LayerTrace or a sequence of LayerTraces (the
            message names what was given).
        ShapeError: a layer holds no step or no sequence.
    """
    if isinstance(trace, LayerTrace):
        return _nonempty([trace]), {}
    if isinstance(trace, Trace):
        return _nonempty(list(trace.layers)), dict(trace.meta)
    path = isinstance(trace, str | bytes | os.PathLike)
    layers: list[Any] | None = None
    if not path and not isinstance(trace, dict):
        try:
            layers = list(trace)
        except TypeError:
            layers = None
    wrong = [x for x in layers or [] if not isinstance(x, LayerTrace)]
    if layers is None or wrong:
        if path:
            given = f"the path {os.fsdecode(trace)!r}"
            hint = "; to analyse a saved trace: gs.diagnose(gs.load(path))"
        else:
            given = "None" if trace is None else type(trace).__name__
            if wrong:
                given += f" of {type(wrong[0]).__name__}"
            hint = "; record one with gs.trace(model, x) or load one with gs.load(path)"
        raise ArgumentTypeError(
            "gs.diagnose needs a gradscope Trace, a LayerTrace or a list of LayerTraces; got "
            f"{given}{hint}"
        )
    return _nonempty(layers), {}


def _nonempty(layers: list[LayerTrace]) -> list[LayerTrace]:
    for layer in layers:
        if layer.T < 1 or layer.B < 1:
            raise ShapeError(
                f"gs.diagnose: layer {layer.name!r} holds T = {layer.T} steps of B = {layer.B} "
                "sequences, nothing to analyse; record at least one step of one sequence"
            )
    return layers


def diagnose(
    trace: Trace | LayerTrace | Sequence[LayerTrace],
    *,
    k: int | None = None,
    discard: int | None = None,
    max_lag: int | None = None,
    probes: int | None = None,
    spectrum_steps: int | None = None,
    seed: int = 0,
    progress: bool | str = "auto",
) -> Diagnosis:
    """Diagnose every layer of a trace: spectra, Lyapunov exponents, decay, regime, advice.

    Args:
        trace: A :class:`~gradscope.traces.Trace`, one :class:`~gradscope.traces.LayerTrace`,
            or a list of them.
        k: Lyapunov exponents per layer (default ``min(D, 16)``).
        discard: Transient steps left out of the Lyapunov sums (default: 10% of the median
            sequence length, at most 100).
        max_lag: Largest lag of the decay curves (default: whole sequences).
        probes: Probe directions of the decay walk (default: exact for ``D <= 128``, else
            ``k``; see :mod:`gradscope.analysis.decay`).
        spectrum_steps: Steps whose one-step spectra are computed (default: as many as a
            fixed flop budget allows, evenly spaced, on up to 4 sequences).
        seed: Seed of the random starting bases.
        progress: Progress bars: True (also a count of layers), False or ``"auto"`` (long
            computations on a terminal).

    Returns:
        A :class:`Diagnosis`.
    """
    layers, meta = _layers_of(trace)
    opts = dict(
        k=k,
        discard=discard,
        max_lag=max_lag,
        probes=probes,
        spectrum_steps=spectrum_steps,
        seed=seed,
    )
    out = []
    # a count of layers only when asked for (True): "auto" keeps to the long computations
    with progress_bar(len(layers), "diagnose", progress is True, unit="layer") as bar:
        for layer in layers:
            bar.set_postfix_str(str(layer.name))
            out.append(_diagnose_layer(layer, progress=progress, **opts))
            bar.update()
    meta = {**meta, "analysis": {key: v for key, v in opts.items()}}
    return Diagnosis(out, meta)


__all__ = ["Diagnosis", "LayerDiagnosis", "diagnose"]
