"""Building blocks of the closed-form Jacobians: weight products and output memory.

Every closed-form adapter multiplies blocks of ``k`` columns per ``(x, s)`` pair by its
weights (:func:`weight_times`, :func:`weight_t_times`) and writes full Jacobian batches into
outputs sized for the cache (:func:`cache_block_size`) and allocated where the first touch
is cheap (:func:`new_output`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def weight_times(w: Tensor, v: Tensor) -> Tensor:
    """``W @ v_n`` for every ``n``: ``w`` ``(R, C)``, ``v`` ``(N, C, k)`` -> ``(N, R, k)``.

    One contraction over all ``N · k`` columns (``torch.einsum`` lays it out as a single
    GEMM), measured 1.4-2x faster on the CPU than ``N`` batched products or an explicit
    permute-reshape for ``N = 8``, ``k = 16``, ``W`` ``2048 × 512``.
    """
    if v.shape[-1] == 1:  # one column per pair (a gradient sweep): one plain GEMM
        return (v.squeeze(-1) @ w.T).unsqueeze(-1)
    return torch.einsum("rc,nck->nrk", w, v)


def weight_t_times(w: Tensor, u: Tensor) -> Tensor:
    """``Wᵀ @ u_n`` for every ``n``: ``w`` ``(R, C)``, ``u`` ``(N, R, k)`` -> ``(N, C, k)``."""
    return weight_times(w.T, u)


# --------------------------------------------------------------------------- output memory
#: Bytes of output computed per block on the CPU: large enough to amortise the per-block
#: Python overhead, small enough to stay in the last-level cache while the five
#: multiply-add passes run over it (measured best at 4-16 MiB on a 32 MiB L3).
CPU_BLOCK_BYTES = 8 * 2**20


def cache_block_size(n: int, bytes_per_item: int, device: torch.device) -> int:
    """How many of ``n`` per-sequence Jacobians to compute per block.

    On the CPU the elementwise passes are memory bound, so blocks are sized to stay in
    cache (:data:`CPU_BLOCK_BYTES`); on accelerators one block covers everything.
    """
    if device.type != "cpu":
        return max(n, 1)
    return max(1, min(n, CPU_BLOCK_BYTES // max(bytes_per_item, 1)))


#: Outputs at least this large are allocated through NumPy on the CPU (see :func:`new_output`).
HUGE_OUTPUT_BYTES = 4 * 2**20


def new_output(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An uninitialised tensor of ``shape`` with ``like``'s dtype and device, for a result.

    A full Jacobian batch is large (2048 LSTM Jacobians of 256 x 256 are 512 MiB) and
    written once, so on the CPU most of the time of producing it goes into the kernel's
    first-touch page faults on fresh memory. NumPy's allocator marks large blocks for
    transparent huge pages (``madvise(MADV_HUGEPAGE)`` on Linux), which cuts those faults by
    a factor of up to 512; PyTorch's CPU allocator does so only when the environment sets
    ``THP_MEM_ALLOC_ENABLE=1``. Large float32/float64 CPU outputs therefore come from NumPy
    (wrapped with ``torch.from_numpy``, no copy); everything else from ``like.new_empty``.
    """
    nbytes = like.element_size()
    for size in shape:
        nbytes *= size
    np_dtype = _NUMPY_DTYPES.get(like.dtype)
    if like.device.type == "cpu" and np_dtype is not None and nbytes >= HUGE_OUTPUT_BYTES:
        return torch.from_numpy(np.empty(shape, dtype=np_dtype))
    return like.new_empty(shape)


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


@torch.no_grad()
def scaled_sweep(
    w: Tensor,
    scalings: list[Tensor],
    diagonals: list[Tensor] | None,
    g_last: Tensor,
    out_cot: Tensor | None,
    valid: Tensor | None,
) -> Tensor:
    """The backward sweep of a cell whose ``J_kᵀ g = Wᵀ (C_k ⊙ [g; …; g]) + d_k ⊙ g``.

    GRU (``C_k`` the three gate blocks' row scalings, ``d_k = z``) and vanilla
    (``C_k = φ'(a_k)``, no ``d_k``) cells: ``G_T = g_last + ō_T`` and
    ``G_k = ō_k + J_{k+1}ᵀ G_{k+1}``, a padded step passing ``G`` on unchanged (see
    :meth:`~gradscope.cells.base.CellAdapter.state_sweep`). Per step one
    ``(B, mH) × (mH, H)`` GEMM into ``G_k`` and two fused elementwise calls, no allocation.

    Args:
        w: ``W_hh`` ``(mH, H)``.
        scalings: ``T`` tensors ``(B, m, H)`` (or ``(B, H)`` for ``m = 1``).
        diagonals: ``T`` tensors ``(B, H)``, or None.
        g_last: ``(B, H)`` cotangent of the final state.
        out_cot: ``(T, B, H)`` output cotangents, or None.
        valid: ``(T, B)`` bool, or None (every step real).

    Returns:
        ``(T+1, B, H)``.
    """
    T = len(scalings)
    B, H = g_last.shape
    w = w.to(g_last.dtype)
    G = g_last.new_empty((T + 1, B, H))
    G[T] = g_last
    if out_cot is not None and T:
        G[T] += out_cot[T - 1]
    rows = w.shape[0]
    ga = g_last.new_empty((B, rows // H, H))
    ga2 = ga.view(B, rows)
    for k in range(T - 1, -1, -1):
        g = G[k + 1]
        torch.mul(scalings[k].view(B, -1, H), g.unsqueeze(1), out=ga)
        new = torch.mm(ga2, w, out=G[k]) if valid is None else ga2 @ w
        if diagonals is not None:
            new.addcmul_(diagonals[k], g)
        if valid is not None:
            torch.where(valid[k].unsqueeze(-1), new, g, out=G[k])
        if out_cot is not None and k > 0:
            G[k] += out_cot[k - 1]
    return G


# --------------------------------------------------------------------------- run loops
def scaled_run_factors(
    scalings: Tensor, diagonal: Tensor | None, per_step: int
) -> tuple[Tensor, Tensor | None]:
    """The factors of a scaled cell (see :func:`scaled_sweep`) laid out for the run loops.

    ``scalings`` ``(N, m, H, ·)`` or ``(N, H, ·)`` and ``diagonal`` ``(N, H, ·)`` over ``S``
    steps of ``per_step`` pairs become ``(S, mH, B)`` and ``(S, H, B)``: the pairs of a
    step side by side, as the columns of :func:`scaled_jvp_run` are.
    """
    n = scalings.shape[0]

    def lay(t: Tensor) -> Tensor:
        return t.reshape(n // per_step, per_step, -1).transpose(1, 2).contiguous()

    return lay(scalings), None if diagonal is None else lay(diagonal)


def run_steps(parts, steps, batch: Tensor | None):
    """Per step of a run, its factors as column scalings: tuples of ``(·, n, 1)`` tensors.

    ``parts`` are factors in the layout of ``run_factors`` (``(S, ·, B)``; None stays
    None), ``steps`` indices into the block (consecutive ones, a ``range``, are sliced: no
    copy), ``batch`` the sequences of the columns (None: every one). Gathered once for
    the whole run, then unbound per step.
    """
    consecutive = isinstance(steps, range) and steps.step == 1
    sel = (
        slice(steps.start, steps.stop)
        if consecutive
        else torch.as_tensor(list(steps), dtype=torch.long)
    )
    m = len(steps)
    per_part = [
        [None] * m
        if p is None
        else (p[sel] if batch is None else p[sel][..., batch]).unsqueeze(-1).unbind(0)
        for p in parts
    ]
    return zip(*per_part)


@torch.no_grad()
def scaled_jvp_run(w: Tensor, factors, steps, batch: Tensor | None, v: Tensor) -> Tensor:
    """``J v`` over ``steps`` for ``J v = Σ_b C_b ⊙ (W_b v) + d ⊙ v`` (columns layout).

    ``v`` ``(H, n, k)``; per step one ``(mH, H) × (H, n k)`` GEMM, the row scaling, the
    sum over the ``m`` gate blocks and ``d ⊙ v``: ``O(n k · mH · H)``.
    """
    H, n, k = v.shape
    rows = w.shape[0]
    m = rows // H
    cur = v.contiguous()
    da = v.new_empty((rows, n, k))
    da2, dam = da.view(rows, n * k), da.view(m, H, n, k)
    for c, d in run_steps(factors, steps, batch):
        torch.mm(w, cur.view(H, n * k), out=da2)
        da.mul_(c)
        new = dam.sum(0) if m > 1 else da.clone()
        if d is not None:
            new.addcmul_(d, cur)
        cur = new
    return cur


@torch.no_grad()
def scaled_vjp_run(w: Tensor, factors, steps, batch: Tensor | None, u: Tensor) -> Tensor:
    """``Jᵀ u`` over ``steps`` for ``Jᵀ u = Wᵀ (C ⊙ [u; …; u]) + d ⊙ u`` (columns layout).

    ``u`` ``(H, n, p)``; per step the scaled copies into one ``(mH, n, p)`` buffer, one
    ``(H, mH) × (mH, n p)`` GEMM and ``d ⊙ u``: ``O(n p · mH · H)``.
    """
    H, n, p = u.shape
    rows = w.shape[0]
    m = rows // H
    wt = w.T
    cur = u.contiguous()
    ga = u.new_empty((m, H, n, p))
    ga2 = ga.view(rows, n * p)
    for c, d in run_steps(factors, steps, batch):
        torch.mul(c.view(m, H, -1, 1), cur, out=ga)
        new = torch.mm(wt, ga2).view(H, n, p)
        if d is not None:
            new.addcmul_(d, cur)
        cur = new
    return cur
