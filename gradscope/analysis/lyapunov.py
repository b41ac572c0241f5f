r"""Lyapunov exponents of the recorded dynamics by the QR method.

The Lyapunov exponents of a state sequence are the asymptotic exponential growth rates of
the product of one-step Jacobians (Oseledets 1968),

.. math:: \lambda_i = \lim_{T\to\infty} \frac1T \ln \sigma_i(J_T \cdots J_2 J_1),
          \qquad J_t = \partial s_t/\partial s_{t-1},

so the product is applied in *time order* (for steps A then B the product is B·A). They are
computed stably by the QR method of Benettin, Galgani, Giorgilli & Strelcyn (1980) and
Shimada & Nagashima (1979): start from ``k`` orthonormal columns :math:`Q_0`, and for every
step :math:`Z_t = J_t Q_{t-1}`, :math:`Q_t R_t = Z_t` (thin QR); then

.. math:: \lambda_i \approx \frac1n \sum_{t} \ln |(R_t)_{ii}|.

The sign of :math:`(R_t)_{ii}` is a convention of the QR factorisation (LAPACK may return
negative diagonals); only :math:`|(R_t)_{ii}|` enters, which is invariant under the column
sign flips of :math:`Q_t` that relate the conventions, so the result is convention-free.

Every sequence is processed on its own valid steps (``lengths``), streaming over chunks of
Jacobians, so memory does not grow with ``T``. The first ``discard`` valid steps of each
sequence still rotate :math:`Q` towards the Lyapunov vectors (that is what the transient is
for) but do not enter the sums. Jacobians that are not finite (a NaN/inf state) are skipped
and counted in :attr:`Lyapunov.notes`. An exactly singular step (:math:`R_{ii} = 0`, e.g. a
dead ReLU subspace) contributes :math:`\ln` of the smallest normal float (about −708) instead
of −∞, so averages stay finite; such exponents are "−∞ for practical purposes".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradscope._json import dataclass_dict
from gradscope._progress import analysis, progress_bar
from gradscope.analysis.qr_engines import Sums, dense_engine, diagonal_engine, operator_engine
from gradscope.errors import ArgumentError
from gradscope.jacobians.operator import DENSE_UP_TO, operator_of
from gradscope.traces import LayerTrace

#: States up to this size run the QR iteration on dense Jacobians by default.
DENSE_MAX_D = DENSE_UP_TO["lyapunov"]


@dataclass(frozen=True)
class Lyapunov:
    r"""The ``k`` leading Lyapunov exponents of one layer (natural log per step).

    Attributes:
        name: The layer's name.
        exponents: ``(k,)`` float64, descending; the mean over sequences of
            :attr:`per_sequence` (each row sorted first).
        per_sequence: ``(B, k)`` exponents of each sequence, each row descending (NaN rows
            for sequences that had no usable step).
        stderr: ``(k,)`` standard error of :attr:`exponents`: across sequences
            (``std(ddof=1) / sqrt(B)``) when at least two sequences have exponents; with a
            single sequence, by the batch-means method: the steps after ``discard`` are cut
            into ``n_blocks`` consecutive blocks, and ``std(block means, ddof=1) /
            sqrt(n_blocks)`` (valid when the per-step terms decorrelate within a block).
        history_steps: ``(n,)`` int, numbers of accumulated steps at which the running
            estimate was recorded (log-spaced).
        history: ``(n, k)`` running estimate after that many steps, averaged over the
            sequences that reached it: the convergence curve.
        kaplan_yorke: Kaplan–Yorke (Lyapunov) dimension
            :math:`D_{KY} = j + \sum_{i\le j}\lambda_i / |\lambda_{j+1}|` with ``j`` the largest
            index whose partial sum :math:`\sum_{i\le j}\lambda_i` is non-negative. Edge cases:
            0 when :math:`\lambda_1 < 0` (a stable fixed point or orbit); ``k`` when the
            partial sums of all ``k`` computed exponents are non-negative (the true dimension
            is then at least ``k``; compute more exponents to resolve it). NaN if unknown.
        steps: Steps accumulated per sequence after ``discard`` (the maximum over sequences).
        discard: Initial steps of each sequence left out of the sums (transient).
        stderr_method: ``"sequences"``, ``"blocks"`` or ``"none"`` (how :attr:`stderr` was
            computed; ``"none"``: too little data, stderr is NaN).
        notes: Plain-language remarks (sequences or steps excluded and why).
        vectors: ``(B, D, k)`` the orthonormal columns ``Q`` each sequence ended with (the
            leading forward Lyapunov vectors at its last step; NaN for unused sequences).
            Not part of :meth:`to_dict`.
    """

    name: str
    exponents: np.ndarray
    per_sequence: np.ndarray
    stderr: np.ndarray
    history_steps: np.ndarray
    history: np.ndarray
    kaplan_yorke: float
    steps: int
    discard: int
    stderr_method: str = "sequences"
    notes: list[str] = field(default_factory=list)
    vectors: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def k(self) -> int:
        """Number of exponents computed."""
        return int(self.exponents.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (NaN/inf as strings, see :func:`gradscope._json.jsonable`)."""
        out = dataclass_dict(self, skip=("vectors",))
        out["k"] = self.k
        return out


# --------------------------------------------------------------------------- helpers
def kaplan_yorke(exponents: np.ndarray) -> float:
    r"""Kaplan–Yorke dimension of a Lyapunov spectrum (Kaplan & Yorke 1979).

    .. math:: D_{KY} = j + \frac{\sum_{i=1}^{j} \lambda_i}{|\lambda_{j+1}|},

    ``j`` the largest index with :math:`\sum_{i\le j}\lambda_i \ge 0`. Returns 0 when
    :math:`\lambda_1 < 0`, ``len(exponents)`` when every partial sum is non-negative, and NaN
    when any exponent is NaN.

    Args:
        exponents: Lyapunov exponents (any order; sorted descending here).
    """
    lam = np.sort(np.asarray(exponents, dtype=np.float64))[::-1]
    if lam.size == 0 or np.isnan(lam).any():
        return float("nan")
    csum = np.cumsum(lam)
    nonneg = np.nonzero(csum >= 0)[0]
    if nonneg.size == 0:
        return 0.0
    j = int(nonneg[-1]) + 1  # number of exponents in the non-negative partial sum
    if j == lam.size:
        return float(lam.size)
    return float(j + csum[j - 1] / abs(lam[j]))


def use_operators(layer: LayerTrace, k: int, method: str) -> bool:
    """Whether the QR iteration runs on operators (else on dense Jacobians).

    ``"auto"``: operators unless the state is small (``D <= DENSE_MAX_D``), the full
    spectrum is asked for (``k = D``: the dense iteration never forms ``Q``), or the trace
    only has stored Jacobians.
    """
    return operator_of(layer).route("lyapunov", method, k=k) == "operator"


@analysis
def _run(
    layer: LayerTrace,
    k: int | None,
    discard: int,
    init: str,
    seed: int,
    chunk: int | None,
    history: int,
    n_blocks: int,
    progress: bool | str,
    window: int | None = None,
    method: str = "auto",
) -> Lyapunov:
    """Lyapunov exponents; :attr:`Lyapunov.vectors` holds each sequence's final ``Q``.

    ``window``: use only the last ``window`` valid steps of each sequence.
    """
    D, B = layer.D, layer.B
    k = D if k is None else int(k)
    if not 1 <= k <= D:
        raise ArgumentError(f"{layer.name}: k must be in 1..D={D}, got {k}")
    if discard < 0:
        raise ArgumentError(f"{layer.name}: discard must be >= 0, got {discard}")
    if init not in ("random", "identity"):
        raise ArgumentError(f"{layer.name}: init must be 'random' or 'identity', got {init!r}")
    route = operator_of(layer).route("lyapunov", method, k=k)  # the one place that decides
    diagonal, operators = route == "diagonal", route == "operator"
    rng = np.random.default_rng(seed)
    lengths = layer.seq_lengths
    starts = np.zeros(B, dtype=np.int64) if window is None else np.maximum(lengths - window, 0)
    planned = np.maximum(lengths - starts - discard, 0)  # accumulated steps per sequence
    n_max = int(planned.max()) if B else 0
    # Convergence history at log-spaced counts; batch-means blocks (only needed for B == 1).
    hist_steps = (
        np.unique(np.geomspace(1, n_max, num=max(2, history)).astype(np.int64))
        if n_max >= 1
        else np.zeros(0, dtype=np.int64)
    )
    use_blocks = B == 1 and n_max >= 2 * n_blocks
    edges = (
        np.linspace(0, n_max, n_blocks + 1).round().astype(np.int64)
        if use_blocks
        else np.zeros(0, dtype=np.int64)
    )
    acc = Sums(B, k, hist_steps, edges)
    last = int(lengths.max()) if B else 0
    first = int(starts.min()) if B else 0
    flops = 4 * D if diagonal else 2 * D * D * k + 4 * D * k * k
    bar_ctx = progress_bar(
        total=last - first,
        desc=f"lyapunov {layer.name}",
        progress=progress,
        work=float(lengths.sum()) * flops,
    )
    bounds = np.unique(np.concatenate([[discard], discard + hist_steps, discard + edges]))
    with bar_ctx as bar:
        extra: list[str] = []
        if diagonal:
            finals, bad, extra = diagonal_engine(layer, k, discard, starts, lengths, acc)
            bar.update(last - first)
        elif operators:
            finals, bad = operator_engine(
                layer, k, discard, rng, init, bounds, starts, lengths, acc, bar
            )
        else:
            finals, bad = dense_engine(
                layer, k, discard, rng, init, bounds, starts, lengths, chunk, acc, bar
            )
    return _result(layer, k, discard, acc, finals, bad, use_blocks, n_blocks, extra)


def _result(layer, k, discard, acc, finals, bad, use_blocks, n_blocks, notes) -> Lyapunov:
    B = layer.B
    counts = acc.counts
    per_seq = np.full((B, k), np.nan)
    good = counts > 0
    per_seq[good] = np.sort(acc.sums[good] / counts[good, None], axis=1)[:, ::-1]
    notes = list(notes)
    if bad:
        skipped = sum(n for _, n, _ in bad)
        first_step, first_b = min((t, b) for b, _, t in bad)
        notes.append(
            f"{skipped} non-finite Jacobian step(s) skipped in {len({b for b, _, _ in bad})} "
            f"sequence(s); first at step {first_step} of sequence {first_b}"
        )
    if (~good).any():
        notes.append(
            f"{int((~good).sum())} sequence(s) had no step left after discard={discard} "
            "and are excluded"
        )
    nan_k = np.full(k, np.nan)
    exponents = per_seq[good].mean(axis=0) if good.any() else nan_k.copy()
    if good.sum() >= 2:
        stderr = per_seq[good].std(axis=0, ddof=1) / math.sqrt(int(good.sum()))
        method = "sequences"
    elif use_blocks and (acc.block_counts > 0).sum() >= 2:
        used = acc.block_counts > 0
        means = acc.block_sums[used] / acc.block_counts[used, None]
        # Block means are per-column (QR column i tracks exponent i after convergence).
        means = np.sort(means, axis=1)[:, ::-1]
        stderr = means.std(axis=0, ddof=1) / math.sqrt(int(used.sum()))
        method = "blocks"
    else:
        stderr = nan_k.copy()
        method = "none"
    hist = acc.hist
    with np.errstate(invalid="ignore"):
        reached = ~np.isnan(hist[..., 0])
        n_reached = reached.sum(axis=1)
        history_mean = np.where(
            n_reached[:, None] > 0,
            np.nansum(np.where(reached[..., None], hist, 0.0), axis=1)
            / np.maximum(n_reached, 1)[:, None],
            np.nan,
        )
    vectors = np.full((B, layer.D, k), np.nan)
    for b, q in enumerate(finals):
        if q is not None:
            vectors[b] = q
    return Lyapunov(
        name=layer.name,
        exponents=exponents,
        per_sequence=per_seq,
        stderr=stderr,
        history_steps=acc.hist_steps,
        history=history_mean,
        kaplan_yorke=kaplan_yorke(exponents),
        steps=int(counts.max()) if B else 0,
        discard=int(discard),
        stderr_method=method,
        notes=notes,
        vectors=vectors,
    )


def lyapunov(
    layer: LayerTrace,
    k: int | None = None,
    discard: int = 0,
    *,
    init: str = "random",
    seed: int = 0,
    chunk: int | None = None,
    history: int = 128,
    n_blocks: int = 10,
    progress: bool | str = "auto",
    method: str = "auto",
) -> Lyapunov:
    r"""The ``k`` leading Lyapunov exponents of a layer by the QR method.

    For each sequence, :math:`Q_0` is ``D × k`` orthonormal and for every valid step ``t`` in
    time order :math:`Q_t R_t = J_t Q_{t-1}`; after ``discard`` steps the sums
    :math:`\sum_t \ln|(R_t)_{ii}|` are accumulated, and divided by the number of accumulated
    steps. Each sequence's exponents are sorted descending, then averaged over sequences.
    Memory: one chunk of Jacobians plus ``B`` matrices ``D × k``; nothing grows with ``T``.

    Args:
        layer: The recorded layer.
        k: Number of leading exponents (default: all ``D``).
        discard: Initial valid steps of each sequence that only align ``Q`` (transient).
        init: ``"random"`` (a random orthonormal ``Q_0``, the safe default: first columns of
            the identity can lie in an invariant subspace and miss the leading directions) or
            ``"identity"`` (the first ``k`` columns of ``I``).
        seed: Seed of the random ``Q_0``.
        chunk: Steps per chunk of Jacobians (default: what fits 64 MiB).
        history: Number of (log-spaced) points of the convergence history.
        n_blocks: Blocks of the batch-means standard error when ``B == 1``.
        progress: Progress bar: True, False or ``"auto"``.
        method: ``"diagonal"`` (exact for a diagonal transition, the default where the
            adapter gives one: per-coordinate means of ``ln|λ_t|``, ``O(T·B·D)``, see
            :mod:`gradscope.jacobians.diagonal`), ``"operator"`` (``J_t Q`` by closed-form
            Jacobian-vector products,
            ``O(B·k·w)`` per step for ``w`` recurrent weights, sequences batched),
            ``"dense"`` (form each ``J_t`` and run blocked LAPACK QR; fastest for small
            ``D`` and for the full spectrum) or ``"auto"`` (see :func:`use_operators`). Both
            compute the same exponents up to rounding.

    Returns:
        A :class:`Lyapunov`.

    Raises:
        ArgumentError: ``k`` outside ``1..D``, negative ``discard`` or an unknown ``init``
            or ``method``.
    """
    return _run(layer, k, discard, init, seed, chunk, history, n_blocks, progress, None, method)


def lyapunov_window(layer: LayerTrace, k: int, seed: int, window: int) -> Lyapunov:
    """The QR iteration over only the last ``window`` valid steps of every sequence.

    Used for its :attr:`Lyapunov.vectors`: the leading forward Lyapunov vectors at each
    sequence's final step (the probe basis of :func:`gradscope.decay` for large states).
    """
    return _run(layer, k, 0, "random", seed, None, 2, 10, False, window)


__all__ = [
    "DENSE_MAX_D",
    "Lyapunov",
    "kaplan_yorke",
    "lyapunov",
    "lyapunov_window",
    "use_operators",
]
