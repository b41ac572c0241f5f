r"""The few gate numbers a :class:`~gradscope.Monitor` keeps per sampled training step.

:func:`gate_summary` reduces a recorded LSTM, GRU or vanilla RNN layer to the scalars of
:data:`gradscope.history.GATE_KEYS`, from the same functions as the full gate view
(:func:`~gradscope.analysis.gates.gate_view`): the carried gate from its own weight rows
(:func:`~gradscope.analysis.gates.values.carried_logits`), the carries
(:func:`~gradscope.analysis.gates.carry.carries`), the path walk
(:func:`~gradscope.analysis.gates.paths.walk`) and the vanilla factor
(:func:`~gradscope.analysis.gates.paths.factor_samples`).

Cost of one call:

* always: the carried gate's pre-activations, from the replay when it kept them
  (``layer.carried_logits``: a Monitor's teacher-forced replay of a single-layer LSTM, GRU
  or vanilla RNN, no product at all), else one batched product of the inputs and previous
  states with the carried gate's weight rows, ``O(T·B·H·(I + P))`` (a quarter of the LSTM's own
  forward, a third of the GRU's; the whole ``H`` rows, i.e. one forward, for a vanilla
  cell); then ``O(T·B·H)`` for the quantiles and the carries. No ``D × D`` matrix,
  decomposition or Jacobian is formed at any step. The product runs where the layer was
  recorded (the GPU for a CUDA model) in its own precision (half precision promoted to
  float32; a float64 model's exactly); only its ``(T, B, H)`` result goes to the CPU, in
  float64, for the statistics;
* with ``paths`` only (the Monitor's analysed steps, within its time budget): LSTM/GRU the
  path walk on ``n`` sequences, ``O(T·n·p·D·4H)`` (``p = D`` up to
  :data:`~gradscope.analysis.gates.paths.EXACT_MAX_D`, else 16 probes) plus two ``D × p``
  SVDs per sequence; vanilla one ``H × H`` SVD per sampled (step, sequence),
  ``O(FACTOR_SAMPLES·n·H³)``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from gradscope._progress import compute_threads
from gradscope.analysis.gates.carry import carries, carry_horizon, median_log_carry
from gradscope.analysis.gates.paths import factor_samples, path_share, walk, walk_threads
from gradscope.analysis.gates.values import declared, layer_native, step_quantiles
from gradscope.history_keys import CARRY_LAGS, GATE_KEYS
from gradscope.traces import LayerTrace

#: The quantiles kept of the carried gate (``p10``, ``median``, ``p90``).
SUMMARY_QUANTILES = (0.1, 0.5, 0.9)
#: Steps sampled (spread over the sequence) for the vanilla factor norm.
FACTOR_SAMPLES = 8


def _quantiles(out: dict[str, float], name: str, values: torch.Tensor) -> None:
    """``gate_{name}_p10/median/p90`` over every unit, step and sequence (NaN-aware).

    In the values' own precision (float32 halves the partition's memory traffic).
    """
    q = step_quantiles(values.numpy().reshape(1, -1), SUMMARY_QUANTILES)[0]
    out[f"gate_{name}_p10"], out[f"gate_{name}_median"], out[f"gate_{name}_p90"] = map(float, q)


def gate_summary(
    layer: LayerTrace, *, paths: bool = False, seqs: int | None = 2, seed: int = 0
) -> dict[str, float]:
    r"""The gate scalars of one recorded layer (keys :data:`gradscope.history.GATE_KEYS`).

    LSTM (``g = f``) and GRU (``g = z``):

    * ``gate_{forget|update}_{p10,median,p90}``: quantiles of ``g`` over every unit, real
      step and sequence;
    * ``gate_log_carry_lag{k}``: :math:`\operatorname{median}_{b,j} \ln C_k[j]` with
      :math:`C_k[j] = \prod_{u=T_b−k+1}^{T_b} g_u[j]` (over the sequences at least ``k``
      long; NaN if none is), for ``k`` in :data:`~gradscope.history.CARRY_LAGS`;
    * ``gate_carry_horizon``: the first lag where that median carry falls below ``1/e``
      (:func:`~gradscope.analysis.gates.carry.carry_horizon`; inf: never within the sequence);
    * with ``paths``: ``gate_path_share``, the median over sequences of
      ``‖Π^A_k‖₂ / (‖Π^A_k‖₂ + ‖E_k‖₂)`` at the longest lag ``k`` (``gate_path_share_lag``),
      as in :func:`~gradscope.analysis.gates.gate_view`.

    Vanilla: ``gate_dphi_{p10,median,p90}`` of ``φ'(a_t)``, and with ``paths``
    ``gate_factor_norm`` (median of ``‖diag(φ'(a_t)) W_hh‖₂`` over :data:`FACTOR_SAMPLES`
    steps spread over the sequence and the sampled sequences) and ``gate_weight_norm``
    (``‖W_hh‖₂``). Every key the layer's cell does not have is NaN; any other cell gets all
    NaN. See the module docstring for the cost.

    Args:
        layer: The recorded layer.
        paths: Also measure the path share (LSTM/GRU) or the factor norm (vanilla).
        seqs: Sequences (the first ones) for the path walk and the factor norms; None: all.
        seed: Seed of the walk's probe directions (states over ``EXACT_MAX_D``).

    Returns:
        ``{key: float}`` for every key of ``GATE_KEYS``.
    """
    out = dict.fromkeys(GATE_KEYS, math.nan)
    found = declared(layer)
    if found is None:
        return out
    adapter, spec = found
    n = layer.B if seqs is None else max(1, int(seqs))
    params, x, s = layer_native(layer)  # the product where the layer lives, its own precision
    kept = layer.carried_logits  # the replay's own pre-activations (T, B, H), if it kept them
    if kept is not None and kept.dtype != x.dtype:
        kept = None
    a = adapter.carried_logits(params, x, s[:-1]) if kept is None else kept
    gate, log_gate = adapter.carried_from_logits(a)
    _quantiles(out, spec.word, gate.cpu())
    if spec.carried is None:  # no additive path: the repeated factor's norm instead
        if paths:
            with compute_threads():  # small LAPACK calls: one BLAS thread (see _progress)
                norms, _, w_norm = factor_samples(layer, steps=FACTOR_SAMPLES, seqs=n)
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: a diverged layer
                out["gate_factor_norm"] = float(np.nanmedian(norms)) if norms.size else math.nan
            out["gate_weight_norm"] = w_norm
        return out
    log_g = log_gate.to("cpu", torch.float64).numpy()
    log_c = carries(log_g, layer.seq_lengths)  # (K, B, H), summed in float64
    for k, v in zip(CARRY_LAGS, median_log_carry(log_c, list(CARRY_LAGS))):
        out[f"gate_log_carry_lag{k}"] = float(v)
    out["gate_carry_horizon"] = carry_horizon(log_c)
    if paths and layer.B:
        with compute_threads(walk_threads(layer, n)):  # one thread for small products
            lags, path, rest, _, _, _ = walk(layer, seed, None, seqs=n, lags=2)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: a diverged layer
            out["gate_path_share"] = float(np.nanmedian(path_share(path[-1], rest[-1])))
        out["gate_path_share_lag"] = float(lags[-1])
    return out


__all__ = ["FACTOR_SAMPLES", "SUMMARY_QUANTILES", "gate_summary"]
