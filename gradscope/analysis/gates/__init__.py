r"""Why gates keep gradients alive: gate views of LSTM, GRU and vanilla RNN layers.

A vanilla RNN multiplies the same kind of factor into the gradient at every step back,
``J_t = diag(φ'(a_t)) W_hh``; over ``k`` steps the product shrinks like
``∏ ‖diag(φ'_u) W_hh‖₂`` at most, and a saturated ``tanh`` (``φ' → 0``) shrinks it further.
A gated cell adds a second, *additive* path to its one-step Jacobian,

.. math:: J_t = A_t + R_t, \qquad
          A_t = \begin{cases} \mathrm{diag}(f_t) \text{ on the } c \to c \text{ block, 0 elsewhere}
                 & \text{LSTM (the cell path)} \\
                 \mathrm{diag}(z_t) & \text{GRU } (h_t = (1-z_t) n_t + z_t h_{t-1})
                 \end{cases}

and ``R_t = J_t − A_t`` is everything else (the gate derivatives times the recurrent weights,
and for the LSTM every block that reads or writes ``h``). ``A_t`` carries no weight matrix: a
gradient that stays on it for ``k`` steps is scaled, per unit ``j``, by the **carry**
``C_k[j] = ∏_{u=T−k+1..T} f_u[j]`` (GRU: ``z_u[j]``), which is 1 when the gates are 1,
whatever the weights.

What :func:`gate_view` measures on a recorded layer:

* **gate distributions**: per timestep, quantiles (:data:`QUANTILES`) over units and
  sequences of every gate (LSTM ``i, f, o``; GRU ``r, z``; vanilla ``φ'(a_t)``);
* **carry** against lag ``k`` in log space, ``ln C_k[j] = Σ ln f_u[j]`` with
  ``ln f = −softplus(−a_f)`` (no underflow at any ``T``): quantiles over units and sequences,
  and ``ln ‖Π^A_k‖₂ = max_j ln C_k[j]``, the norm of the pure-path product
  ``Π^A_k = A_T ⋯ A_{T−k+1}``;
* **how the long-run gradient travels**: expanding ``P_k = ∂s_T/∂s_{T−k} = ∏ (A_u + R_u)``
  into paths, ``P_k = Π^A_k + E_k`` where ``E_k`` sums every path that leaves the additive path
  at least once. The **share of the additive path** at lag ``k`` is

  .. math:: \mathrm{share}_k = \frac{\lVert U^\top Π^A_k\rVert_2}
                                    {\lVert U^\top Π^A_k\rVert_2 + \lVert U^\top E_k\rVert_2}
            \in [0, 1]

  (``U = I``, exact, for ``D ≤`` :data:`EXACT_MAX_D`; otherwise ``p`` random orthonormal
  probe columns, a probe estimate, named in the notes), per sequence, then the median over
  sequences. ``E_k`` is walked backwards with ``E_{k+1} = E_k J + Π^A_k R`` (vector-Jacobian
  products in float64, ``Rᵀ y = Jᵀ y − A y``), both terms kept on one common log scale, so
  nothing underflows. Share 1: the gradient ``k`` steps back is what the gates let through;
  share 0: it travels through the weights;
* **vanilla**: the repeated factor's norm ``‖diag(φ'(a_t)) W_hh‖₂`` per step (quantiles over
  sequences) against ``‖W_hh‖₂``: their ratio is how much ``tanh'`` saturation shrinks it.

Cost: gates ``O(T·B·H·(H+I))``; the walk ``O(K·n·p·D·(4H))`` for ``n ≤`` :data:`WALK_SEQS`
sequences; the vanilla norms one ``H × H`` SVD per sampled (step, sequence).

Modules, one concept each: :mod:`.values` (the gates from the weights, quantiles),
:mod:`.carry` (carries in log space), :mod:`.paths` (the split ``J = A + R``, the path walk,
the vanilla factor), :mod:`.view` (:class:`GateView` and its plain-language lines),
:mod:`.summary` (the few numbers a :class:`~gradscope.Monitor` keeps per training step).
"""

from __future__ import annotations

import warnings

import numpy as np

from gradscope._progress import analysis, compute_threads
from gradscope.analysis.gates.carry import carries, carry_horizon
from gradscope.analysis.gates.paths import (
    EXACT_MAX_D,
    FACTOR_STEPS,
    PROBES,
    WALK_LAGS,
    WALK_SEQS,
    factor_norms,
    path_share,
    split_jacobian,
    walk,
    walk_threads,
)
from gradscope.analysis.gates.values import QUANTILES, declared, gate_values, step_quantiles
from gradscope.analysis.gates.view import SENTENCE_LAG, GateView
from gradscope.traces import LayerTrace


@analysis
def gate_view(layer: LayerTrace, *, max_lag: int | None = None, seed: int = 0) -> GateView | None:
    """The gate view of a layer whose family declares gates (LSTM, GRU, vanilla RNN, ...).

    None for a family that declares none (:attr:`~gradscope.cells.base.CellAdapter.gates`).

    Args:
        layer: The recorded layer.
        max_lag: Largest lag of the path walk (default: whole sequences); the carries and
            gate distributions always cover every step.
        seed: Seed of the probe directions (states over :data:`EXACT_MAX_D`).
    """
    found = declared(layer)
    if found is None:
        return None
    _, spec = found
    gates_t, log_g = gate_values(layer)
    gates = {name: step_quantiles(v.numpy()) for name, v in gates_t.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no finite gate: a NaN median
        medians = {name: float(np.nanmedian(v.numpy())) for name, v in gates_t.items()}
    T = float(np.median(layer.seq_lengths)) if layer.B else 0.0
    empty = np.zeros(0)
    view = GateView(
        name=layer.name,
        kind=layer.kind,
        T=T,
        path=spec.path,
        gates=gates,
        medians=medians,
        lags=empty.astype(np.int64),
        carry=np.zeros((0, len(QUANTILES))),
        carry_max=empty,
        walk_lags=empty.astype(np.int64),
        path_log=empty,
        rest_log=empty,
        share=empty,
        gate=spec.carried,
        word=spec.word,
        path_text=spec.path_text,
        short_text=spec.short_text,
    )
    finite = any(np.isfinite(m) for m in medians.values())
    if spec.carried is None:  # no additive path: the repeated factor's norm instead
        if layer.B:
            view.factor, view.factor_steps, view.weight_norm = factor_norms(layer)
        return view
    carry = carries(log_g.numpy(), layer.seq_lengths)
    view.lags = np.arange(carry.shape[0])
    view.carry = step_quantiles(carry)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: lags past a sequence's end
        view.carry_max = np.nanmedian(np.nanmax(carry, axis=2), axis=1)
    if not finite:
        return view  # no finite gate anywhere (diverged): carries of NaN, nothing to walk
    with compute_threads(walk_threads(layer)):  # one thread for small products
        keep, path, rest, total, p, notes = walk(layer, seed, max_lag)
    view.walk_lags, view.probes, view.notes = keep, p, notes
    share = path_share(path, rest)  # 1 / (1 + ‖E‖/‖Π‖), from the logs (no underflow)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: a diverged layer
        view.path_log = np.nanmedian(path, axis=1)
        view.rest_log = np.nanmedian(rest, axis=1)
        view.total_log = np.nanmedian(total, axis=1)
        view.share = np.nanmedian(share, axis=1)
    return view


__all__ = [
    "EXACT_MAX_D",
    "FACTOR_STEPS",
    "PROBES",
    "QUANTILES",
    "SENTENCE_LAG",
    "WALK_LAGS",
    "WALK_SEQS",
    "GateView",
    "carries",
    "carry_horizon",
    "gate_values",
    "gate_view",
    "split_jacobian",
]
