"""The QR iterations behind :func:`gradscope.lyapunov`: three engines and their accumulator.

* :func:`dense_engine`: blocked Householder QR on dense Jacobian chunks
  (:class:`~gradscope.jacobians.dense.DenseQR`), ``O(D² k)`` per step;
* :func:`operator_engine`: the same iteration on closed-form ``jvp`` operators, all live
  sequences per step at once, several steps per QR
  (:class:`~gradscope.jacobians.products.ForwardQR`), ``O(k · w)`` per step for ``w``
  recurrent weights;
* :func:`diagonal_engine`: exact exponents of a diagonal transition, ``O(D)`` per step.

Each feeds the per-step (or per-block) ``ln|R_ii|`` to :class:`Sums`, which keeps the
per-sequence sums, the convergence history and the batch-means blocks.
"""

from __future__ import annotations

import bisect

import numpy as np
import torch

from gradscope.jacobians.dense import (
    DenseQR,
    auto_chunk,
    finite_steps,
    iter_chunks,
    orthonormal,
    prep_chunk,
)
from gradscope.jacobians.diagonal import log_moduli, resets
from gradscope.jacobians.operator import operator_of
from gradscope.jacobians.products import ForwardQR


class Sums:
    """Per-sequence sums of ``ln|R_ii|``, the convergence history and batch-means blocks."""

    def __init__(self, B: int, k: int, hist_steps: np.ndarray, edges: np.ndarray) -> None:
        self.sums = np.zeros((B, k))
        self.counts = np.zeros(B, dtype=np.int64)
        self.hist_steps = hist_steps
        self.hist = np.full((len(hist_steps), B, k), np.nan)
        self.hist_pos = np.zeros(B, dtype=np.int64)
        self.edges = edges
        nb = max(1, len(edges) - 1)
        self.block_sums = np.zeros((nb, k))
        self.block_counts = np.zeros(nb, dtype=np.int64)
        self._edges = [int(e) for e in edges]  # for bisect in the one-sequence path

    def add(self, bs: np.ndarray, logs: np.ndarray, n: int = 1) -> None:
        """Add ``logs`` ``(len(bs), k)`` (sums over ``n`` steps each) to the sequences ``bs``."""
        if len(bs) == 1:  # the dense engine's case: one sequence per block, no fancy indexing
            self._add_one(int(bs[0]), logs[0], n)
            return
        self.sums[bs] += logs
        self.counts[bs] += n
        counts = self.counts[bs]
        if len(self.edges):
            blk = np.clip(np.searchsorted(self.edges, counts - 1, side="right") - 1, 0, None)
            blk = np.minimum(blk, len(self.block_counts) - 1)
            np.add.at(self.block_sums, blk, logs)
            np.add.at(self.block_counts, blk, n)
        pos = self.hist_pos[bs]
        inside = pos < len(self.hist_steps)
        hit = np.zeros(len(bs), dtype=bool)
        hit[inside] = counts[inside] == self.hist_steps[pos[inside]]
        for b, hp in zip(bs[hit], pos[hit]):
            self.hist[hp, b] = np.sort(self.sums[b] / self.counts[b])[::-1]
            self.hist_pos[b] = hp + 1

    def _add_one(self, b: int, row: np.ndarray, n: int) -> None:
        """:meth:`add` for one sequence, with scalar bookkeeping (a call per QR block)."""
        self.sums[b] += row
        self.counts[b] += n
        count = int(self.counts[b])
        if len(self.edges):
            blk = bisect.bisect_right(self._edges, count - 1) - 1
            blk = min(max(blk, 0), len(self.block_counts) - 1)
            self.block_sums[blk] += row
            self.block_counts[blk] += n
        pos = int(self.hist_pos[b])
        if pos < len(self.hist_steps) and count == self.hist_steps[pos]:
            self.hist[pos, b] = np.sort(self.sums[b] / count)[::-1]
            self.hist_pos[b] = pos + 1


def dense_engine(layer, k, discard, rng, init, bounds, starts, lengths, chunk, acc, bar):
    """The QR iteration on dense Jacobian chunks; yields skipped-step records."""
    seqs = [DenseQR(orthonormal(layer.D, k, init, rng), discard, bounds) for _ in range(layer.B)]
    last = int(lengths.max()) if layer.B else 0
    first = int(starts.min()) if layer.B else 0
    if chunk is None:
        chunk = auto_chunk(layer)
    bad_steps: list[tuple[int, int, int]] = []
    for sel, jac in iter_chunks(layer, chunk, first, last):
        arr = prep_chunk(jac, layer, layer.D)
        steps = sel.numpy()
        live = (steps[:, None] < lengths[None, :]) & (steps[:, None] >= starts[None, :])
        ok = finite_steps(arr) & live
        for b in range(layer.B):
            bad = np.nonzero(live[:, b] & ~ok[:, b])[0]
            if bad.size:
                bad_steps.append((b, int(bad.size), int(steps[bad[0]])))
            use = np.nonzero(ok[:, b])[0]
            if use.size:
                for _count, logs, n in seqs[b].feed([arr[i, b] for i in use]):
                    acc.add(np.array([b]), logs[None, :], n)
        bar.update(len(steps))
    return [s.q() if s.count > 0 else None for s in seqs], bad_steps


def operator_engine(layer, k, discard, rng, init, bounds, starts, lengths, acc, bar):
    """The QR iteration on ``jvp`` operators, all live sequences per step at once.

    Steps go in blocks (:meth:`ForwardQR.block`) over runs where the set of live sequences
    does not change; a block never crosses an applied-step count in ``bounds`` (the
    discard, the history points and the batch-means edges), so every count that the
    accumulator records is reached exactly. Rejected blocks, and steps whose product is
    not finite, go one step at a time (a non-finite step is skipped and reported).
    """
    B, D = layer.B, layer.D
    q0 = torch.from_numpy(np.stack([orthonormal(D, k, init, rng) for _ in range(B)]))
    engine = ForwardQR(operator_of(layer).steps, q0)
    applied = np.zeros(B, dtype=np.int64)
    bad_steps: list[tuple[int, int, int]] = []
    first = int(starts.min()) if B else 0
    last = int(lengths.max()) if B else 0
    # Steps at which the set of live sequences changes.
    changes = np.unique(np.concatenate([starts, lengths, [last]]))

    def record(done: np.ndarray, logs: np.ndarray, n: int) -> None:
        keep = applied[done] >= discard
        applied[done] += n
        if keep.any():
            acc.add(done[keep], logs[keep], n)

    t = first
    while t < last:
        live = np.nonzero((t < lengths) & (t >= starts))[0]
        if not live.size:
            t += 1
            continue
        nxt = np.searchsorted(bounds, applied[live], side="right")
        room = np.where(nxt < len(bounds), bounds[np.minimum(nxt, len(bounds) - 1)], last)
        m = max(
            1, min(engine.m, int(changes[changes > t][0]) - t, int((room - applied[live]).min()))
        )
        batch = torch.from_numpy(live)
        logs = engine.block(t, m, batch) if m > 1 else None
        if logs is not None:
            record(live, logs.numpy(), m)
        else:
            for tt in range(t, t + m):
                ok, one = engine.step(tt, batch)
                ok = ok.numpy()
                bad_steps += [(int(b), 1, tt) for b in live[~ok]]
                record(live[ok], one.numpy(), 1)
        t += m
        bar.update(m)
    finals = [engine.Q[b].numpy().copy() if acc.counts[b] > 0 else None for b in range(B)]
    return finals, bad_steps


def diagonal_engine(layer, k, discard, starts, lengths, acc):
    """Exact exponents of a diagonal transition: per-coordinate means of ``ln|λ_t|``.

    Each sequence's ``k`` coordinates with the largest means over its accumulated steps are
    fed to ``acc`` step by step (so the history and batch means are those of the final
    leading exponents); the "Lyapunov vectors" are those coordinates' unit vectors. Resets
    (:func:`~gradscope.jacobians.diagonal.resets`: every eigenvalue exactly 0, e.g. RG-LRU
    at a document start) are left out like non-finite steps: the dynamics between them is
    what the exponents describe (a reset's ``ln 0`` would swamp every mean it enters).

    Returns:
        ``(final vectors, bad steps, notes)``.
    """
    logs = log_moduli(layer)  # (T, B, D)
    erased = resets(logs)
    B, D = layer.B, layer.D
    steps = np.arange(layer.T)
    bad_steps: list[tuple[int, int, int]] = []
    use = np.zeros((layer.T, B), dtype=bool)
    n_reset = 0
    for b in range(B):
        live = (steps >= starts[b]) & (steps < lengths[b])
        n_reset += int((live & erased[:, b]).sum())
        live &= ~erased[:, b]
        ok = live & ~np.isnan(logs[:, b, 0]) if D else live
        bad = np.nonzero(live & ~ok)[0]
        if bad.size:
            bad_steps.append((b, int(bad.size), int(bad[0])))
        good = np.nonzero(ok)[0][discard:]
        use[good, b] = True
    with np.errstate(invalid="ignore", divide="ignore"):
        sums = np.where(use[..., None], logs, 0.0).sum(axis=0)  # (B, D)
        means = sums / np.maximum(use.sum(axis=0), 1)[:, None]
    top = np.argsort(-means, axis=1, kind="stable")[:, :k]  # (B, k)
    for t in np.nonzero(use.any(axis=1))[0]:
        bs = np.nonzero(use[t])[0]
        acc.add(bs, np.take_along_axis(logs[t, bs], top[bs], axis=1))
    finals = []
    for b in range(B):
        if acc.counts[b] == 0:
            finals.append(None)
            continue
        q = np.zeros((D, k))
        q[top[b], np.arange(k)] = 1.0
        finals.append(q)
    notes = []
    if n_reset:
        notes.append(
            f"{n_reset} reset step(s) (every eigenvalue 0, e.g. a document start: the state is "
            "erased) left out of the exponents"
        )
    return finals, bad_steps, notes
