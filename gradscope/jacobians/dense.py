r"""Dense one-step Jacobians: streamed in chunks, and the blocked QR iteration on them.

For small states forming ``J_t`` (``D × D``) and multiplying it is as cheap as the
operator products and lets LAPACK work on whole matrices: the QR iteration of
:class:`DenseQR` multiplies up to ``M_MAX`` Jacobians before one factorisation and, for the
full spectrum (``k = D``), never forms ``Q``. Memory is one chunk of Jacobians
(:func:`auto_chunk`: 64 MiB), never ``T · B · D²``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.linalg import lapack

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


def auto_chunk(layer: LayerTrace, batch: int | None = None, cols: int | None = None) -> int:
    """Steps per chunk so that one chunk of ``(B, D, cols)`` float64 Jacobians fits 64 MiB."""
    b = layer.B if batch is None else batch
    per_step = max(1, b * layer.D * (layer.D if cols is None else cols) * 8)
    return int(max(1, min(256, CHUNK_BYTES // per_step)))


def orthonormal(d: int, k: int, init: str, rng: np.random.Generator) -> np.ndarray:
    """``d × k`` orthonormal columns: the identity's first ``k`` or a random (Haar) basis."""
    if init == "identity":
        return np.eye(d, k)
    q, r = np.linalg.qr(rng.standard_normal((d, k)))
    return q * np.sign(np.diag(r))


class DenseQR:
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


def prep_chunk(jac: torch.Tensor, layer: LayerTrace, cols: int) -> np.ndarray:
    """A chunk of Jacobians as a C-contiguous float64 NumPy array, its shape checked.

    Raises:
        ShapeError: The Jacobians are not ``(..., D, cols)``.
    """
    jac = jac.detach().to(device="cpu", dtype=torch.float64).contiguous()
    if tuple(jac.shape[-2:]) != (layer.D, cols):
        raise ShapeError(
            f"{layer.name} ({layer.kind}): Jacobians must be (D, {cols}) = ({layer.D}, {cols}),"
            f" got {tuple(jac.shape[-2:])}"
        )
    return jac.numpy()


def finite_steps(chunk: np.ndarray) -> np.ndarray:
    """``(n, B)`` bool: Jacobian entirely finite (cheap: a NaN/inf makes the sum non-finite)."""
    with np.errstate(invalid="ignore", over="ignore"):
        s = chunk.sum(axis=(-1, -2))
    ok = np.isfinite(s)
    if not ok.all():  # an overflowing sum of finite entries must not be mistaken for inf
        bad = np.nonzero(~ok)
        ok[bad] = np.isfinite(chunk[bad]).all(axis=(-1, -2))
    return ok
