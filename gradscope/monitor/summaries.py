"""What the Monitor computes on a sampled step: gradient norms and per-layer summaries.

Pure functions on recorded traces; the Monitor only decides when to call them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from gradscope.analysis.sampling import evenly_spaced
from gradscope.errors import GradscopeError, MissingDataError
from gradscope.history import REGIME_CODES, STAT_KEYS, SUMMARY_KEYS, Entry
from gradscope.traces import LayerTrace, Trace


# --------------------------------------------------------------------------- pure core
def grad_norms(layer: LayerTrace) -> np.ndarray:
    r"""Batch mean of the per-sequence norm of the loss gradient at every state.

    .. math:: G_t = \frac{1}{|V_t|}\sum_{b \in V_t} \lVert \partial L/\partial s^{(b)}_t
              \rVert_2, \qquad V_t = \{b : t \le T_b\}, \quad t = 0, \dots, T,

    computed in float64 (no overflow of the squares for any float32 gradient). Padded
    steps are left out of the mean; a non-finite gradient of a real step propagates
    (NaN / inf) so that it is seen.

    Args:
        layer: A recorded layer whose ``grads`` hold ``∂L/∂s_t`` ``(T+1, B, D)``.

    Returns:
        ``(T+1,)`` float64.

    Raises:
        MissingDataError: ``layer.grads`` is None (no loss was back-propagated through it).
    """
    per_seq = layer.grad_norms()  # (T+1, B), NaN at padded states
    valid = layer.state_mask
    count = valid.sum(axis=1)
    total = np.where(valid, per_seq, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def trace_grad_norms(trace: Trace) -> tuple[dict[str, np.ndarray], list[str]]:
    """:func:`grad_norms` of every layer of a trace recorded around a backward pass.

    A layer whose loss gradients the recorder marks unavailable (``layer.meta["grads"]``
    starting with ``"unavailable"``, e.g. a fused module with inter-layer dropout on CUDA,
    whose mask cannot be replayed; see :mod:`gradscope.recording`) gets all-NaN norms and a
    note, so that training goes on.

    Returns:
        ``({layer name: (T+1,) norms}, notes)``.

    Raises:
        MissingDataError: a layer has no loss gradients for any other reason (no backward
            pass reached the recording).
    """
    norms: dict[str, np.ndarray] = {}
    notes: list[str] = []
    for layer in trace.layers:
        why = str(layer.meta.get("grads", ""))
        if layer.grads is not None:
            norms[layer.name] = grad_norms(layer)
        elif why.startswith("unavailable"):
            norms[layer.name] = np.full(layer.T + 1, np.nan)
            notes.append(f"{layer.name}: no loss gradients ({why}); its grad norms are NaN")
        else:
            raise MissingDataError(
                f"{layer.name} ({layer.kind}): no loss gradients ∂L/∂s_t "
                f"({trace.meta.get('grads', 'none recorded')}); call monitor.step() after "
                "loss.backward(), and run evaluation forwards (under torch.no_grad()) inside "
                "`with monitor.paused():`"
            )
    return norms, notes


def select_batch(layer: LayerTrace, batch: np.ndarray | None) -> LayerTrace:
    """The same layer restricted to the sequences ``batch`` (None: the layer itself).

    States, inputs, lengths, loss gradients, any stored Jacobians and carried-gate logits
    are indexed along the batch axis; weights, names and metadata are shared.
    """
    if batch is None or len(batch) == layer.B:
        return layer
    idx = torch.as_tensor(np.asarray(batch, dtype=np.int64))
    stored = layer.stored_jacobians
    return replace(
        layer,
        states=layer.states[:, idx.to(layer.states.device)],
        inputs=layer.inputs[:, idx.to(layer.inputs.device)],
        lengths=None if layer.lengths is None else layer.lengths[idx.numpy()],
        grads=None if layer.grads is None else layer.grads[:, idx.to(layer.grads.device)],
        carried_logits=None
        if layer.carried_logits is None
        else layer.carried_logits[:, idx.to(layer.carried_logits.device)],
        stored_jacobians=None
        if stored is None
        else {k: v[:, idx.to(v.device)] for k, v in stored.items()},
    )


def summarize(
    layer: LayerTrace,
    *,
    analyze: bool = True,
    spectra_steps: int = 2,
    spectra_batch: int = 1,
    decay_batch: int | None = 2,
    lyapunov: bool = False,
    gates: bool = True,
    norms: np.ndarray | None = None,
) -> tuple[dict[str, float], list[str]]:
    """The scalars of :data:`SUMMARY_KEYS` for one recorded layer.

    Always (cheap): ``T``, ``B``, ``nonfinite`` (real states holding NaN/inf) and, when the
    layer holds loss gradients, ``grad_t0`` / ``grad_tT`` (:func:`grad_norms` at ``t = 0``
    and ``t = T``) and ``loss_rate``, ``loss_rate_lo``/``loss_rate_hi``, ``loss_regime``:
    :func:`gradscope.decay` ``(layer, of="loss")``, the fit of the real ``‖∂L/∂s_t‖``.
    With ``analyze`` also:

    * ``rate``, ``rate_lo``/``rate_hi`` (95% CI), ``r2``, ``half_life``, ``regime``:
      :func:`gradscope.decay` ``(layer, of="state")`` on ``decay_batch`` sequences spread
      over the batch;
    * ``radius_*`` / ``norm_*``: :meth:`~gradscope.analysis.spectra.Spectrum.summary` of
      :func:`gradscope.spectrum` ``"eig"`` / ``"svd"`` on ``spectra_steps`` steps spread evenly
      over ``0 … T-1`` and ``spectra_batch`` sequences (each entry a dense ``D × D``
      decomposition, ``O(D³)``, up to ``D = 256``; above, the leading value alone by ARPACK
      on the Jacobian operator);
    * ``lyapunov``, ``lyapunov_stderr`` (only with ``lyapunov``): :func:`gradscope.lyapunov`
      ``(layer, k=1)`` on the ``decay_batch`` sequences.

    With ``gates``, LSTM, GRU and vanilla RNN layers also get the gate summaries
    (:data:`~gradscope.history.GATE_KEYS`,
    :func:`~gradscope.analysis.gates.summary.gate_summary`): gate quantiles and carries on
    every call (``O(T·B·H)`` from the pre-activations the replay kept, else
    ``O(T·B·H·(I + P))``: the carried gate's weight rows times the recorded inputs and
    states; no ``D × D`` matrix per step), the additive path's share (LSTM/GRU)
    or the repeated factor's norm (vanilla) only with ``analyze``, on the ``decay_batch``
    sequences.

    An analysis that cannot be done on this layer (e.g. a trace too short for a fit, or no
    loss gradients) leaves its entries NaN and adds a note instead of stopping training.

    Args:
        layer: The recorded layer.
        analyze: Compute the decay fits and spectra (else only the cheap entries).
        spectra_steps: Jacobian steps used for the spectral statistics.
        spectra_batch: Sequences used for the spectral statistics.
        decay_batch: Sequences used for the state-decay fit and Lyapunov (None: all).
        lyapunov: Also estimate the leading Lyapunov exponent.
        gates: Record the gate summaries of LSTM, GRU and vanilla RNN layers.
        norms: ``grad_norms(layer)`` if already computed.

    Returns:
        ``(values, notes)``: a dict over :data:`SUMMARY_KEYS` (NaN where not computed) and
        plain-language notes about what could not be computed.
    """
    from gradscope.analysis.decay import decay
    from gradscope.analysis.gates.summary import gate_summary
    from gradscope.analysis.lyapunov import lyapunov as lyapunov_fn
    from gradscope.analysis.spectra import spectrum

    out = dict.fromkeys(SUMMARY_KEYS, math.nan)
    notes: list[str] = []
    out["T"], out["B"] = float(layer.T), float(layer.B)
    out["nonfinite"] = float(layer.nonfinite().sum())
    if layer.B == 0 or layer.T == 0:
        notes.append(
            f"{layer.name}: an empty batch (T = {layer.T}, B = {layer.B}) on this sampled "
            "step: nothing to measure, no numbers invented"
        )
        return out, notes
    if layer.grads is not None:
        g = grad_norms(layer) if norms is None else norms
        out["grad_t0"], out["grad_tT"] = float(g[0]), float(g[-1])

    def attempt(what: str, fn: Callable[[], None], regime: str | None = None) -> None:
        try:
            fn()
        except GradscopeError as exc:
            notes.append(f"{layer.name}: {what} not computed ({exc})")
            if regime is not None:  # analysed, and nothing could be measured
                out[regime] = REGIME_CODES["unknown"]

    def fit(prefix: str, of: str, seqs: np.ndarray | None) -> None:
        d = decay(select_batch(layer, seqs), of=of, progress=False)
        out[f"{prefix}rate"] = float(d.rate)
        out[f"{prefix}rate_lo"], out[f"{prefix}rate_hi"] = (float(v) for v in d.rate_ci)
        out[f"{prefix}regime"] = REGIME_CODES.get(d.regime, math.nan)
        if not prefix:
            out["r2"], out["half_life"] = float(d.r2), float(d.half_life)

    if layer.grads is not None:  # a fit of T + 1 numbers per sequence: cheap, always
        attempt("the loss-gradient decay fit", lambda: fit("loss_", "loss", None), "loss_regime")
    if gates:  # cheap, always; the path share / factor norm on analysed steps only
        attempt(
            "the gate summaries",
            lambda: out.update(gate_summary(layer, paths=analyze, seqs=decay_batch)),
        )
    if not analyze:
        return out, notes
    seqs = None if decay_batch is None else evenly_spaced(layer.B, decay_batch)
    attempt("the state-gradient decay fit", lambda: fit("", "state", seqs), "regime")

    steps, batch = evenly_spaced(layer.T, spectra_steps), evenly_spaced(layer.B, spectra_batch)

    def spectra() -> None:
        for which, prefix in (("eig", "radius_"), ("svd", "norm_")):
            # only the leading value enters the summary: k=1 on the operator path (ARPACK
            # stops once that one has converged; measured 40% less time than k=4 at D=512)
            stats = spectrum(layer, which, steps=steps, batch=batch, k=1, progress=False).summary()
            for key in STAT_KEYS:
                out[prefix + key] = float(stats[key])

    attempt("the Jacobian spectra", spectra)

    def lyap() -> None:
        ly = lyapunov_fn(select_batch(layer, seqs), k=1)
        out["lyapunov"], out["lyapunov_stderr"] = float(ly.exponents[0]), float(ly.stderr[0])

    if lyapunov:
        attempt("the leading Lyapunov exponent", lyap)
    return out, notes


def trace_summaries(
    trace: Trace, *, analyze: bool, **options: Any
) -> tuple[dict[str, Entry], list[str], dict[str, tuple[str, dict[str, Any] | None]]]:
    """:func:`trace_grad_norms` and :func:`summarize` of every layer of one sampled step.

    Args:
        trace: The step's recording (loss gradients in).
        analyze: Compute the expensive summaries too (see :func:`summarize`).
        **options: For :func:`summarize` (``lyapunov``, ``gates``, ``spectra_steps``, ...).

    Returns:
        ``({name: (grad norms (T+1,), summaries (K,))}, notes, {name: (kind, gates)})``
        with ``gates`` what the family declares of its gates (``Gates.as_dict()``, None
        without gates).
    """
    from gradscope.analysis.gates.values import declared

    entries: dict[str, Entry] = {}
    families: dict[str, tuple[str, dict[str, Any] | None]] = {}
    with torch.no_grad():
        norms, notes = trace_grad_norms(trace)
        for layer in trace.layers:
            found = declared(layer)
            families[layer.name] = (layer.kind, None if found is None else found[1].as_dict())
            gn = norms[layer.name]
            values, msgs = summarize(layer, analyze=analyze, norms=gn, **options)
            entries[layer.name] = (gn, np.array([values[k] for k in SUMMARY_KEYS]))
            notes.extend(msgs)
    return entries, notes, families
