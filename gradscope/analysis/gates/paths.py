r"""The one-step Jacobian split ``J_t = A_t + R_t`` and how the long-run gradient travels.

``A_t`` is the additive path (LSTM ``diag(f_t)`` on the ``c → c`` block, GRU ``diag(z_t)``,
vanilla 0) and ``R_t = J_t − A_t`` the rest. Expanding ``P_k = ∂s_T/∂s_{T−k} = ∏ (A_u + R_u)``
into paths, ``P_k = Π^A_k + E_k``: the pure-path product and every path that leaves the
additive path at least once. :func:`walk` measures ``‖Uᵀ Π^A_k‖₂``, ``‖Uᵀ E_k‖₂`` and
``‖Uᵀ P_k‖₂`` with vector-Jacobian products, ``E_{k+1} = E_k J + Π^A_k R =
P_k J − Π^A_k A`` (one product per step, on ``P_kᵀ U``; ``A`` is diagonal), both terms on
one common log scale so that nothing underflows; ``U = I`` (exact) for ``D ≤``
:data:`EXACT_MAX_D`, else random orthonormal probe columns (an estimate).

A vanilla RNN has no additive path: its repeated factor is ``diag(φ'(a_t)) W_hh``, whose
norms :func:`factor_norms` measures against ``‖W_hh‖₂``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from gradscope.analysis.gates.values import QUANTILES, declared
from gradscope.errors import MissingDataError
from gradscope.jacobians.operator import operator_of
from gradscope.jacobians.products import top_singular_log
from gradscope.jacobians.steps import product_dtype
from gradscope.traces import LayerTrace

#: States up to this size get exact norms in the path walk (``U = I``).
EXACT_MAX_D = 128
#: Probe columns for larger states.
PROBES = 16
#: Sequences the path walk and the vanilla factor norms use (the first ones).
WALK_SEQS = 8
#: Lags at which the walk measures its norms (evenly spaced, the last one included).
WALK_LAGS = 64
#: Lags whose linearisations the walk computes in one call.
LAG_BLOCK = 32
#: Steps sampled for the vanilla factor norms.
FACTOR_STEPS = 256


#: Flops of one walk step above which its products use every torch thread (below, one:
#: thread start-up costs more than it gains on the many small products).
THREADED_STEP_FLOPS = 5e7


def walk_threads(layer: LayerTrace, seqs: int = WALK_SEQS) -> int | None:
    """Threads for :func:`walk` (a ``compute_threads`` argument): 1 for small products.

    One step multiplies ``n · p`` columns by the recurrent weights (``2 · n · p · w``
    flops, ``w`` the weights); above :data:`THREADED_STEP_FLOPS` that is a GEMM worth
    every core (an LSTM with hidden 1024: 2 · 8 · 16 · 4M, 1 GFLOP per step), below it the
    walk runs on one thread.
    """
    D = layer.D
    p = D if D <= EXACT_MAX_D else min(D, PROBES)
    weights = sum(int(v.numel()) for k, v in layer.params.items() if k.startswith("weight_hh"))
    flops = 2.0 * min(layer.B, seqs) * p * max(weights, D)
    return None if flops > THREADED_STEP_FLOPS else 1


def norm2(m: torch.Tensor) -> np.ndarray:
    """Spectral norms of a batch of matrices, by NumPy's LAPACK.

    torch's threaded batched SVD of small matrices was measured 100× slower on a busy
    2-core machine. In float64 whatever the products' dtype.
    """
    return np.linalg.svd(m.double().numpy(), compute_uv=False)[..., 0]


def walk(
    layer: LayerTrace,
    seed: int,
    max_lag: int | None,
    *,
    seqs: int = WALK_SEQS,
    lags: int = WALK_LAGS,
) -> tuple:
    """The path walk on the first ``seqs`` sequences, measured at ``lags`` lags.

    Cost ``O(K·n·p·D·(4H))`` for ``K`` steps back, ``n`` sequences and ``p`` probe columns
    (one vector-Jacobian product with ``p`` columns per step, on ``P_kᵀ U = (Π^A_k + E_k)ᵀ U``,
    in the model's own precision, at least float32, like every product of the analysis
    layer; renormalised every step, the norms and their logs in float64), plus one
    ``D × p`` SVD per sequence at each of the ``lags`` measured lags.

    Returns:
        ``(lags (L,), ln ‖Uᵀ Π^A_k‖₂, ln ‖Uᵀ E_k‖₂, ln ‖Uᵀ P_k‖₂ (each (L, n)), p, notes)``.
    """
    # the products in the model's own precision (a float32 model's trace, cast to float64
    # for the analysis, is multiplied in float32 again), at least float32
    dtype = torch.promote_types(product_dtype(layer), torch.float32)
    params = {k: v.detach().to("cpu", dtype) for k, v in layer.params.items()}
    x, s = (t.detach().to("cpu", dtype) for t in (layer.inputs, layer.states))
    adapter = operator_of(layer).adapter  # the layer's one operator's adapter
    n = min(layer.B, seqs)
    lengths = layer.seq_lengths[:n]
    D = layer.D
    notes = []
    p = D if D <= EXACT_MAX_D else min(D, PROBES)
    rng = np.random.default_rng(seed)
    if p == D:
        u = torch.eye(D, dtype=dtype).expand(n, D, D).clone()
    else:
        q = np.linalg.qr(rng.standard_normal((n, D, p)))[0]
        u = torch.from_numpy(np.ascontiguousarray(q)).to(dtype)
        notes.append(f"path shares on {p} random probe directions of D = {D} (an estimate)")
    if n < layer.B:
        notes.append(f"path shares on the first {n} of {layer.B} sequences")
    k_max = int(lengths.max(initial=0))
    if max_lag is not None and max_lag < k_max:
        k_max = max(int(max_lag), 0)
        notes.append(f"path shares up to lag {k_max}")
    keep = np.unique(np.linspace(0, k_max, min(lags, k_max + 1)).round().astype(int))
    lag_rows = {int(k): i for i, k in enumerate(keep)}
    path = np.full((len(keep), n), np.nan)
    rest = np.full((len(keep), n), np.nan)
    total = np.full((len(keep), n), np.nan)
    # The linearisations and carried gates of LAG_BLOCK lags at once (one GEMM over their
    # rows), then the rows each lag needs: few calls, memory bounded by the block.
    T = x.shape[0]
    xs_all, ss_all = x[:, :n].reshape(T * n, -1), s[:-1, :n].reshape(T * n, -1)
    block_end, starts, lin_blk = 0, [0], None  # lags [k0, block_end)
    y = u.clone()  # (Π^A_k)ᵀ U with Π^A_0 = I, on the common scale
    e = torch.zeros_like(u)  # E_kᵀ U, E_0 = 0
    scale = np.zeros(n)
    for k in range(k_max + 1):
        if k in lag_rows:
            live = lengths >= k
            # ln ‖·‖₂ from the p × p Gram matrices in float64 (relative rounding for the
            # largest singular value; a D × p SVD each cost 10 ms at D = 2048, p = 16)
            ly, le, lt = (top_singular_log(z).numpy() for z in (y, e, y + e))
            path[lag_rows[k], live] = (ly + scale)[live]
            rest[lag_rows[k], live] = (le + scale)[live]
            total[lag_rows[k], live] = (lt + scale)[live]
        if k == k_max:
            break
        live = np.nonzero(lengths > k)[0]
        bl = torch.from_numpy(live)
        if k >= block_end:
            k0, block_end = k, min(k + LAG_BLOCK, k_max)
            per = [np.nonzero(lengths > kk)[0] for kk in range(k0, block_end)]
            rows = torch.from_numpy(
                np.concatenate([(lengths[lv] - 1 - k0 - i) * n + lv for i, lv in enumerate(per)])
            )
            xs, ss = xs_all[rows], ss_all[rows]
            starts = np.concatenate([[0], np.cumsum([len(lv) for lv in per])]).tolist()
            lin_blk = adapter.linearize(params, xs, ss)
        sel = slice(starts[k - k0], starts[k - k0 + 1])
        lin = lin_blk.rows(sel)
        every = len(live) == n  # every sequence still walks: no gather and scatter
        yl, el = (y, e) if every else (y[bl], e[bl])
        # E_{k+1}ᵀU = Jᵀ E_kᵀU + Rᵀ Π_kᵀU = Jᵀ (E_k + Π_k)ᵀU − A Π_kᵀU: one product on
        # P_kᵀU, p columns (A is diagonal: no product)
        ay = torch.zeros_like(yl)
        for part, diag in adapter.additive(params, lin.factors):  # A: the gates' diagonals
            torch.mul(diag.unsqueeze(-1), yl[:, part], out=ay[:, part])
        e_new = lin.vjp_state(yl + el).sub_(ay)
        big = torch.maximum(
            torch.linalg.matrix_norm(ay), torch.linalg.matrix_norm(e_new)
        ).clamp_min(torch.finfo(dtype).tiny)
        big3 = big[:, None, None]
        if every:
            y, e = ay.div_(big3), e_new.div_(big3)
        else:
            y[bl], e[bl] = ay / big3, e_new / big3
        scale[live] += np.log(big.double().numpy())
    return keep, path, rest, total, p, notes


def path_share(path_log: np.ndarray, rest_log: np.ndarray) -> np.ndarray:
    """``‖Π^A‖ / (‖Π^A‖ + ‖E‖)`` from both norms' logs (no underflow); NaN where unmeasured."""
    with np.errstate(all="ignore"):
        share = 1.0 / (1.0 + np.exp(np.clip(rest_log - path_log, -700, 700)))
        return np.where(np.isnan(rest_log) | np.isnan(path_log), np.nan, share)


def factor_samples(
    layer: LayerTrace, *, steps: int = FACTOR_STEPS, seqs: int = WALK_SEQS
) -> tuple[np.ndarray, np.ndarray, float]:
    """A cell without an additive path: ``‖J_t‖₂`` at sampled steps of the first sequences.

    For a vanilla RNN ``J_t = diag(φ'(a_t)) W_hh``, the repeated factor; it is measured
    against ``‖W``‖₂ of the recurrent weight the family's form declares. One ``H × H``
    Jacobian and SVD per sampled (step, sequence): ``O(S·n·H³)`` for ``S ≤ steps`` steps
    spread over ``0 … T−1`` and the first ``n ≤ seqs`` sequences.

    Returns:
        ``(norms (S, n), NaN at padded and non-finite steps; steps (S,); ‖W‖₂)``.
    """
    adapter, _ = declared(layer)
    w = layer.params[adapter.form.recurrent].detach().to("cpu", torch.float64)
    n = min(layer.B, seqs)
    at = np.unique(np.linspace(0, layer.T - 1, min(steps, layer.T)).astype(int))
    if not bool(torch.isfinite(w).all()) or n == 0:  # diverged weights: LAPACK fails on NaN
        return np.full((len(at), n), np.nan), at, math.nan
    jac = layer.jacobians(steps=at, batch=slice(0, n)).to("cpu", torch.float64)  # (S, n, D, D)
    real = layer.mask[at, :n] & torch.isfinite(jac).flatten(2).all(-1).numpy()
    norms = norm2(torch.nan_to_num(jac, nan=0.0, posinf=0.0, neginf=0.0))
    return np.where(real, norms, np.nan), at, float(norm2(w))


def factor_norms(
    layer: LayerTrace, *, steps: int = FACTOR_STEPS, seqs: int = WALK_SEQS
) -> tuple[np.ndarray, np.ndarray, float]:
    """Vanilla: quantiles (:data:`QUANTILES`) over sequences of :func:`factor_samples`.

    Returns:
        ``(quantiles (S, 5), steps (S,), ‖W_hh‖₂)``.
    """
    norms, at, w_norm = factor_samples(layer, steps=steps, seqs=seqs)
    q = np.full((len(at), len(QUANTILES)), np.nan)
    ok = ~np.isnan(norms).all(axis=1) if norms.shape[1] else np.zeros(len(at), dtype=bool)
    if ok.any():
        q[ok] = np.nanquantile(norms[ok], QUANTILES, axis=1).T
    return q, at, w_norm


def split_jacobian(layer: LayerTrace, steps=None, batch=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The one-step Jacobians split as ``J = A + R`` (dense, float64, ``(T', B', D, D)``).

    ``A``: the additive path, the form's couplings of a part with its own previous value
    (LSTM ``diag(f_t)`` on the ``c → c`` block, GRU ``diag(z_t)``, vanilla 0), from the
    adapter's linear factors; ``R = J − A``: the rest, with ``J`` the adapter's closed form.

    Raises:
        MissingDataError: the layer's family declares no gates.
    """
    found = declared(layer)
    if found is None:
        raise MissingDataError(f"{layer.name} ({layer.kind}) has no gates to split by")
    adapter, _ = found
    lay64 = layer.to(torch.float64)
    j = lay64.jacobians(steps=steps, batch=batch).to("cpu")
    a = torch.zeros_like(j)
    t_idx = torch.arange(layer.T) if steps is None else torch.as_tensor(steps).reshape(-1)
    b_idx = torch.arange(layer.B) if batch is None else torch.as_tensor(batch).reshape(-1)
    x = lay64.inputs[t_idx][:, b_idx].cpu()
    s = lay64.states[t_idx][:, b_idx].cpu()
    params = {k: v.detach().to("cpu") for k, v in lay64.params.items()}
    lin = adapter.linearize(params, x.flatten(0, 1), s.flatten(0, 1))
    for part, diag in adapter.additive(params, lin.factors):
        a[..., part, part] = torch.diag_embed(diag.unflatten(0, x.shape[:2]))
    return a, j - a


__all__ = [
    "EXACT_MAX_D",
    "FACTOR_STEPS",
    "PROBES",
    "WALK_LAGS",
    "WALK_SEQS",
    "factor_norms",
    "factor_samples",
    "norm2",
    "path_share",
    "split_jacobian",
    "walk",
]
