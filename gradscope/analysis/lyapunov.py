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
import torch
from scipy.linalg import lapack

from gradscope._json import dataclass_dict
from gradscope._progress import analysis, progress_bar
from gradscope.errors import ShapeError
from gradscope.traces import LayerTrace

#: ln of the smallest positive normal float64; floor of ``ln|R_ii|`` for singular steps.
LOG_TINY = math.log(np.finfo(np.float64).tiny)
#: Memory budget of one chunk of Jacobians (bytes) when ``chunk`` is not given.
CHUNK_BYTES = 64 * 2**20
#: Largest accepted conditioning proxy of a blocked QR (see :class:`_QRSeq`).
C_MAX = math.log(1e6)
#: Most Jacobians multiplied together before one QR.
M_MAX = 16
#: Accepted blocks without growing ``m`` after a rejected block.
COOLDOWN = 64
_TINY = np.finfo(np.float64).tiny


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

    @property
    def k(self) -> int:
        """Number of exponents computed."""
        return int(self.exponents.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (NaN/inf as strings, see :func:`gradscope._json.jsonable`)."""
        out = dataclass_dict(self)
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


def auto_chunk(layer: LayerTrace, batch: int | None = None, cols: int | None = None) -> int:
    """Steps per chunk so that one chunk of ``(B, D, cols)`` float64 Jacobians fits 64 MiB."""
    b = layer.B if batch is None else batch
    per_step = max(1, b * layer.D * (layer.D if cols is None else cols) * 8)
    return int(max(1, min(256, CHUNK_BYTES // per_step)))


def _orthonormal(d: int, k: int, init: str, rng: np.random.Generator) -> np.ndarray:
    if init == "identity":
        return np.eye(d, k)
    q, r = np.linalg.qr(rng.standard_normal((d, k)))
    return q * np.sign(np.diag(r))


class _QRSeq:
    """QR iteration state of one sequence.

    Two layouts, chosen for speed (both are the same Householder QR as a plain
    ``numpy.linalg.qr`` loop):

    * ``k < D``: ``Q`` is kept explicitly and transposed, ``(k, D)`` C-order, so that
      ``Q^T J^T`` lands directly in the Fortran layout LAPACK factorises in place;
    * ``k == D``: ``Q`` is never formed. The Householder reflectors of the last
      factorisation are applied to the next Jacobian from the right with ``dormqr``
      (``Z = J Q`` in 2D³ flops instead of 2D³ + 4D³/3 for forming ``Q`` first).

    Blocking: up to ``m`` consecutive Jacobians are multiplied into ``Z`` before one QR.
    In exact arithmetic this changes nothing (the product of the per-step ``R`` factors is
    the ``R`` factor of the product, and the diagonal of a product of triangular matrices
    is the product of their diagonals). In floating point, Householder QR is backward
    stable, ``Z + E = QR`` with ``‖E‖ ≲ D u ‖Z‖``, so ``ln|R_ii|`` is perturbed by about
    ``u ‖Z‖/|R_ii|``. A block is accepted only when ``c = ln‖Z‖_F − min_i ln|R_ii| ≤
    C_MAX = ln 1e6``; otherwise it is recomputed one step at a time (single steps are
    always accepted: that is the plain method). ``m`` adapts: it grows by one while the
    conditioning of the last block leaves room, and falls back to 1 after a rejection (and
    stays there for ``COOLDOWN`` blocks, so that hopeless attempts are not repeated).
    The accepted error per block is thus below ``1e6 u ≈ 2e-10`` (typically ~1e-12), far
    below the statistical error of any exponent estimate.
    """

    __slots__ = (
        "QT",
        "applied",
        "bounds",
        "bpos",
        "cool",
        "count",
        "discard",
        "lwork",
        "m",
        "qr",
        "square",
        "sums",
        "tau",
    )

    def __init__(self, q0: np.ndarray, discard: int, bounds: np.ndarray) -> None:
        d, k = q0.shape
        self.square = k == d
        self.QT = np.ascontiguousarray(q0.T)
        self.qr: np.ndarray | None = None
        self.tau: np.ndarray | None = None
        self.sums = np.zeros(k)
        self.count = 0  # steps accumulated (after discard)
        self.applied = 0  # steps applied (including discard)
        self.discard = discard
        self.bounds = bounds  # applied-step counts where a block must end
        self.bpos = 0
        self.lwork = max(1, 32 * k)
        self.m = 1
        self.cool = 0

    def q(self) -> np.ndarray:
        """The current orthonormal basis ``(D, k)``."""
        if self.square and self.qr is not None:
            q, _, _ = lapack.dorgqr(self.qr, self.tau, lwork=self.lwork)
            return np.asarray(q)
        return self.QT.T.copy()

    def _factor(self, jacs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """QR of ``J_m ⋯ J_1 Q``: returns (qr, tau, ln|diag R|, conditioning proxy c)."""
        if self.square:
            if self.qr is None:
                z = jacs[0] @ self.QT.T
            else:
                z, _, _ = lapack.dormqr(
                    b"R",
                    b"N",
                    self.qr,
                    self.tau,
                    np.array(jacs[0], order="F"),
                    self.lwork,
                    overwrite_c=1,
                )
            for jac in jacs[1:]:
                z = jac @ z
            z = np.asfortranarray(z)
        else:
            zt = self.QT @ jacs[0].T  # (k, D) C-order == Z (D, k) Fortran-order
            for jac in jacs[1:]:
                zt = zt @ jac.T
            z = zt.T
        flat = z.ravel(order="K")
        with np.errstate(over="ignore", invalid="ignore"):
            z2 = float(flat @ flat)  # ‖Z‖_F², computed before LAPACK overwrites z
        qr, tau, _, _ = lapack.dgeqrf(z, lwork=self.lwork, overwrite_a=1)
        logs = np.log(np.maximum(np.abs(np.diagonal(qr)), _TINY))
        cond = 0.5 * math.log(z2) - float(logs.min()) if 0 < z2 < math.inf else math.inf
        return qr, tau, logs, cond

    def _commit(self, qr: np.ndarray, tau: np.ndarray) -> None:
        if self.square:
            self.qr, self.tau = qr, tau
        else:
            q, _, _ = lapack.dorgqr(qr, tau, lwork=self.lwork, overwrite_a=1)
            self.QT = q.T

    def _block(self, jacs: list[np.ndarray]) -> tuple[np.ndarray, int] | None:
        qr, tau, logs, cond = self._factor(jacs)
        if len(jacs) > 1 and not cond <= C_MAX:
            self.m, self.cool = 1, COOLDOWN  # back off: no blocking for a while
            return None
        self._commit(qr, tau)
        m = len(jacs)
        if self.cool > 0:
            self.cool -= 1
        elif m == self.m and cond * (m + 1) / m <= C_MAX:
            self.m = min(m + 1, M_MAX)
        return logs, m

    def feed(self, jacs: list[np.ndarray]) -> list[tuple[int, np.ndarray, int]]:
        """Apply Jacobians in time order.

        Returns:
            ``(count, logs, n)`` per accumulated block: the accumulated-step count after the
            block, ``sum ln|R_ii|`` over it and its number of steps.
        """
        out = []
        i, n = 0, len(jacs)
        while i < n:
            while self.bpos < len(self.bounds) and self.bounds[self.bpos] <= self.applied:
                self.bpos += 1
            room = int(self.bounds[self.bpos]) - self.applied if self.bpos < len(self.bounds) else n
            m = max(1, min(self.m, n - i, room))
            res = self._block(jacs[i : i + m])
            # rejected: redo this block one step at a time (single steps are always accepted)
            parts = (
                [res]
                if res is not None
                else [self._block(jacs[j : j + 1]) for j in range(i, i + m)]
            )
            for logs, steps in parts:  # type: ignore[misc]
                if self.applied >= self.discard:
                    self.sums += logs
                    self.count += steps
                    out.append((self.count, logs, steps))
                self.applied += steps
            i += m
        return out


def iter_chunks(
    layer: LayerTrace, chunk: int, lo: int, hi: int, wrt: str = "state", reverse: bool = False
):
    """``layer.iter_jacobians`` over steps ``lo..hi-1``; stored Jacobians as views, no copies."""
    stored = layer.stored_jacobians
    if stored is not None and wrt in stored:
        arr = stored[wrt]
        starts = range(lo, hi, chunk)
        for a in reversed(starts) if reverse else starts:
            b = min(a + chunk, hi)
            yield torch.arange(a, b), arr[a:b]
        return
    yield from layer.iter_jacobians(chunk=chunk, steps=slice(lo, hi), wrt=wrt, reverse=reverse)


def _prep_chunk(jac: torch.Tensor, layer: LayerTrace, cols: int) -> np.ndarray:
    jac = jac.detach().to(device="cpu", dtype=torch.float64).contiguous()
    if tuple(jac.shape[-2:]) != (layer.D, cols):
        raise ShapeError(
            f"{layer.name} ({layer.kind}): Jacobians must be (D, {cols}) = ({layer.D}, {cols}),"
            f" got {tuple(jac.shape[-2:])}"
        )
    return jac.numpy()


def _finite_steps(chunk: np.ndarray) -> np.ndarray:
    """``(n, B)`` bool: Jacobian entirely finite (cheap: a NaN/inf makes the sum non-finite)."""
    with np.errstate(invalid="ignore", over="ignore"):
        s = chunk.sum(axis=(-1, -2))
    ok = np.isfinite(s)
    if not ok.all():  # an overflowing sum of finite entries must not be mistaken for inf
        bad = np.nonzero(~ok)
        ok[bad] = np.isfinite(chunk[bad]).all(axis=(-1, -2))
    return ok


# --------------------------------------------------------------------------- main
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
) -> tuple[Lyapunov, list[np.ndarray | None]]:
    """Lyapunov exponents plus each sequence's final ``Q`` ``(D, k)`` (None if unused).

    ``window``: use only the last ``window`` valid steps of each sequence.
    """
    D, B = layer.D, layer.B
    k = D if k is None else int(k)
    if not 1 <= k <= D:
        raise ValueError(f"{layer.name}: k must be in 1..D={D}, got {k}")
    if discard < 0:
        raise ValueError(f"{layer.name}: discard must be >= 0, got {discard}")
    if init not in ("random", "identity"):
        raise ValueError(f"{layer.name}: init must be 'random' or 'identity', got {init!r}")
    rng = np.random.default_rng(seed)
    lengths = layer.seq_lengths
    starts = np.zeros(B, dtype=np.int64) if window is None else np.maximum(lengths - window, 0)
    planned = np.maximum(
        lengths - starts - discard, 0
    )  # accumulated steps per sequence (if finite)
    n_max = int(planned.max()) if B else 0
    # Convergence history at log-spaced counts; batch-means blocks (only needed for B == 1).
    hist_steps = (
        np.unique(np.geomspace(1, n_max, num=max(2, history)).astype(np.int64))
        if n_max >= 1
        else np.zeros(0, dtype=np.int64)
    )
    hist = np.full((len(hist_steps), B, k), np.nan)
    hist_pos = np.zeros(B, dtype=np.int64)
    use_blocks = B == 1 and n_max >= 2 * n_blocks
    edges = (
        np.linspace(0, n_max, n_blocks + 1).round().astype(np.int64)
        if use_blocks
        else np.zeros(0, dtype=np.int64)
    )
    block_sums = np.zeros((max(1, len(edges) - 1), k))
    block_counts = np.zeros(max(1, len(edges) - 1), dtype=np.int64)
    bounds = np.unique(np.concatenate([[discard], discard + hist_steps, discard + edges]))
    seqs = [_QRSeq(_orthonormal(D, k, init, rng), discard, bounds) for _ in range(B)]
    skipped = np.zeros(B, dtype=np.int64)
    first_bad: tuple[int, int] | None = None

    if chunk is None:
        chunk = auto_chunk(layer)
    last = int(lengths.max()) if B else 0
    first = int(starts.min()) if B else 0
    work = float(lengths.sum()) * (2 * D * D * k + 4 * D * k * k)
    bar_ctx = progress_bar(
        total=last - first, desc=f"lyapunov {layer.name}", progress=progress, work=work
    )
    with bar_ctx as bar:
        for sel, jac in iter_chunks(layer, chunk, first, last):
            arr = _prep_chunk(jac, layer, D)
            steps = sel.numpy()
            live = (steps[:, None] < lengths[None, :]) & (steps[:, None] >= starts[None, :])
            ok = _finite_steps(arr) & live
            for b in range(B):
                bad = np.nonzero(live[:, b] & ~ok[:, b])[0]
                if bad.size:
                    skipped[b] += bad.size
                    if first_bad is None or steps[bad[0]] < first_bad[0]:
                        first_bad = (int(steps[bad[0]]), b)
                use = np.nonzero(ok[:, b])[0]
                if not use.size:
                    continue
                for count, logs, n in seqs[b].feed([arr[i, b] for i in use]):
                    if use_blocks:
                        blk = int(np.searchsorted(edges, count - 1, side="right")) - 1
                        blk = min(max(blk, 0), n_blocks - 1)
                        block_sums[blk] += logs
                        block_counts[blk] += n
                    hp = hist_pos[b]
                    if hp < len(hist_steps) and count == hist_steps[hp]:
                        hist[hp, b] = np.sort(seqs[b].sums / count)[::-1]
                        hist_pos[b] = hp + 1
            bar.update(len(steps))

    counts = np.array([s.count for s in seqs], dtype=np.int64)
    per_seq = np.full((B, k), np.nan)
    for b, s in enumerate(seqs):
        if s.count > 0:
            per_seq[b] = np.sort(s.sums / s.count)[::-1]
    good = counts > 0
    notes: list[str] = []
    if skipped.any():
        notes.append(
            f"{int(skipped.sum())} non-finite Jacobian step(s) skipped in "
            f"{int((skipped > 0).sum())} sequence(s); first at step {first_bad[0]} of "
            f"sequence {first_bad[1]}"
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
    elif use_blocks and (block_counts > 0).sum() >= 2:
        used = block_counts > 0
        means = block_sums[used] / block_counts[used, None]
        # Block means are per-column (QR column i tracks exponent i after convergence).
        means = np.sort(means, axis=1)[:, ::-1]
        stderr = means.std(axis=0, ddof=1) / math.sqrt(int(used.sum()))
        method = "blocks"
    else:
        stderr = nan_k.copy()
        method = "none"
    with np.errstate(invalid="ignore"):
        reached = ~np.isnan(hist[..., 0])
        n_reached = reached.sum(axis=1)
        history_mean = np.where(
            n_reached[:, None] > 0,
            np.nansum(np.where(reached[..., None], hist, 0.0), axis=1)
            / np.maximum(n_reached, 1)[:, None],
            np.nan,
        )
    result = Lyapunov(
        name=layer.name,
        exponents=exponents,
        per_sequence=per_seq,
        stderr=stderr,
        history_steps=hist_steps,
        history=history_mean,
        kaplan_yorke=kaplan_yorke(exponents),
        steps=int(counts.max()) if B else 0,
        discard=int(discard),
        stderr_method=method,
        notes=notes,
    )
    finals = [s.q() if s.count > 0 else None for s in seqs]
    return result, finals


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

    Returns:
        A :class:`Lyapunov`.

    Raises:
        ValueError: ``k`` outside ``1..D``, negative ``discard`` or an unknown ``init``.
    """
    return _run(layer, k, discard, init, seed, chunk, history, n_blocks, progress)[0]


__all__ = ["Lyapunov", "kaplan_yorke", "lyapunov"]
