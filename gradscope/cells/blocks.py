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


# --------------------------------------------------------------------------- run loops
def run_steps(parts, steps, batch: Tensor | None):
    """Per step of a run, its factors as column scalings: tuples of ``(·, n, 1)`` tensors.

    ``parts`` are factors in the layout of ``run_factors`` (``(S, ·, B)``; None stays
    None; see :meth:`gradscope.cells.gated.GatedCell.run_factors`), ``steps`` indices into
    the block (consecutive ones, a ``range``, are sliced: no copy), ``batch`` the sequences
    of the columns (None: every one). Gathered once for the whole run, then unbound per
    step.
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
