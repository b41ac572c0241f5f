r"""The backward walk of :mod:`gradscope.analysis.decay` on dense Jacobians.

For small states with exact norms (``U = I``) the product ``Uᵀ P_k`` is a ``D × D`` matrix
anyway, and multiplying dense chunks of Jacobians with warm-started power iteration for the
spectral norm is the fastest way to walk back. Larger states walk on operators
(:class:`gradscope.jacobians.products.BackwardSweep`).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg

from gradscope.errors import NumericalError


def top_sv(x: np.ndarray, w: np.ndarray | None) -> tuple[float, np.ndarray | None]:
    """Largest singular value of ``x`` ``(p, n)`` and its left singular vector.

    Power iteration on ``x xᵀ`` from ``w`` (the previous lag's vector, so one or two
    iterations usually suffice), stopped when the eigen-residual
    ``‖x xᵀ w − λ w‖ <= 1e-12 λ`` (then ``λ`` is within ``1e-12 λ`` of an eigenvalue of
    ``x xᵀ``); SVD when that takes more than 40 iterations (close singular values), see
    :func:`robust_top_sv`.
    """
    p = x.shape[0]
    if p == 1:
        return float(np.linalg.norm(x)), None
    if w is None:
        w = np.full(p, 1.0 / math.sqrt(p))
    for _ in range(40):
        y = w @ x  # xᵀ w
        lam = float(y @ y)  # Rayleigh quotient of x xᵀ
        if not (0.0 < lam < math.inf):
            break
        z = x @ y
        res = float(np.linalg.norm(z - lam * w))
        w = z / float(np.linalg.norm(z))
        if res <= 1e-12 * lam:
            return math.sqrt(lam), w
    if not np.isfinite(x).all():
        return math.nan, None
    return robust_top_sv(x)


def robust_top_sv(x: np.ndarray) -> tuple[float, np.ndarray]:
    """Largest singular value of a finite ``x`` and its left singular vector, by SVD.

    LAPACK's divide-and-conquer driver (``gesdd``, NumPy's) first; when it does not
    converge (it can fail on matrices it should handle), the QR-iteration driver
    ``gesvd``; then the symmetric eigenproblem of ``x xᵀ`` (the top eigenvalue is
    ``σ₁²`` to relative rounding, enough for the leading value).

    Raises:
        NumericalError: every method failed; the message names them and their errors.
    """
    errors = []
    try:
        u, s, _ = np.linalg.svd(x, full_matrices=False)
        return float(s[0]), u[:, 0].copy()
    except np.linalg.LinAlgError as exc:
        errors.append(f"gesdd: {exc}")
    try:
        u, s, _ = scipy.linalg.svd(x, full_matrices=False, lapack_driver="gesvd")
        return float(s[0]), u[:, 0].copy()
    except (np.linalg.LinAlgError, ValueError) as exc:
        errors.append(f"gesvd: {exc}")
    try:
        w, v = np.linalg.eigh(x @ x.T)
        return math.sqrt(max(float(w[-1]), 0.0)), v[:, -1].copy()
    except np.linalg.LinAlgError as exc:
        errors.append(f"eigh of x xᵀ: {exc}")
    raise NumericalError(
        f"the largest singular value of a {x.shape[0]}×{x.shape[1]} product could not be "
        f"computed ({'; '.join(errors)})"
    )


class DenseWalk:
    """Backward walk of one sequence: ``Uᵀ P_k`` kept as ``e^ℓ M`` with ``‖M‖₂ = 1``."""

    __slots__ = ("M", "alive", "ell", "w_in", "w_st")

    def __init__(self, ut: np.ndarray) -> None:
        self.M = ut  # (p, D), orthonormal rows: ‖M‖₂ = 1
        self.ell = 0.0
        self.w_st: np.ndarray | None = None
        self.w_in: np.ndarray | None = None
        self.alive = True

    def input_norm(self, kin: np.ndarray) -> float:
        """``ln ‖Uᵀ P_k K‖₂`` for the input Jacobian ``K`` (D, I) at the current lag."""
        s, self.w_in = top_sv(self.M @ kin, self.w_in)
        return self.ell + (math.log(s) if s > 0 else -math.inf)

    def state_step(self, jac: np.ndarray) -> float:
        """Multiply one more Jacobian in (one lag further back); return ``ln ‖Uᵀ P_k‖₂``."""
        m = self.M @ jac
        s, self.w_st = top_sv(m, self.w_st)
        if not (s > 0 and math.isfinite(s)):
            self.alive = False
            return -math.inf if s == 0 else math.nan
        self.M = m / s
        self.ell += math.log(s)
        return self.ell
