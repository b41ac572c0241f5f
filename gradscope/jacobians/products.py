r"""Products of one-step Jacobians over time, on operators, in log space.

Two directions, both batched over sequences (one adapter call per step for all sequences
that are live at that step) and both ``O(B · k · w)`` per step, ``w`` the weights of the
recurrence (``O(B · k · D)`` for diagonal ones), with memory flat in ``T``:

* :class:`ForwardQR` — the QR iteration of Benettin et al. (1980) for Lyapunov exponents:
  :math:`Z = J_t Q_{t-1}`, :math:`Q_t R_t = Z` (Householder, float64), and
  :math:`\ln|(R_t)_{ii}|` accumulated. ``J_t Q`` is one ``jvp`` with ``k`` columns.
* :class:`BackwardSweep` — the walk from the end of each sequence back in time that
  measures :math:`\lVert U^\top \partial s_T/\partial s_{T-k}\rVert_2` for every lag ``k``.
  The running product is kept as cotangent columns :math:`Z = e^{-\ell}\,P_k^\top U`
  (``D × p``) with :math:`\lVert Z\rVert_2 = 1`; one step further back is one ``vjp``:
  :math:`Z \leftarrow J^\top Z`, :math:`\sigma = \lVert Z\rVert_2`,
  :math:`\ell \leftarrow \ell + \ln\sigma`, :math:`Z \leftarrow Z/\sigma`.
  :math:`\sigma` is the square root of the largest eigenvalue of the ``p × p`` Gram
  matrix :math:`Z^\top Z` (accurate to relative rounding for the largest one),
  so nothing underflows or overflows at any lag:
  a 2,000-step product of ``0.5 I``
  gives :math:`\ell_k = k \ln 0.5` to rounding.

Products run in the trace's dtype (float32 traces: float32 products, whose relative error
of ~1e-7 per step is far below the statistical error of any rate); factorisations and the
log sums run in float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from gradscope.jacobians.steps import StepOps

#: ln of the smallest positive normal float64; floor of ``ln|R_ii|`` for singular steps.
LOG_TINY = math.log(np.finfo(np.float64).tiny)
_TINY = float(np.finfo(np.float64).tiny)


def top_singular_log(z: Tensor) -> Tensor:
    """``ln ‖z_n‖₂`` of each ``(rows, p)`` block of ``z`` ``(n, rows, p)``, in float64.

    The largest singular value is the square root of the largest eigenvalue of the
    ``p × p`` Gram matrix (``p = 1``: the vector norm). ``-inf`` for a zero block, NaN for
    a non-finite one.
    """
    z = z.to(torch.float64)
    if z.shape[-1] == 1:
        with np.errstate(divide="ignore"):
            return torch.log(torch.linalg.vector_norm(z, dim=(-2, -1)))
    scale = z.abs().amax(dim=(-2, -1)).clamp_min(_TINY)  # avoid overflow in the Gram matrix
    zs = z / scale[:, None, None]
    gram = zs.transpose(-1, -2) @ zs
    ok = torch.isfinite(gram).all(dim=(-2, -1))
    lam = torch.full((z.shape[0],), math.nan, dtype=torch.float64)
    if ok.any():
        lam[ok] = torch.linalg.eigvalsh(gram[ok])[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return 0.5 * torch.log(lam.clamp_min(0.0)) + torch.log(scale)


class ForwardQR:
    """The QR iteration of every sequence of a layer at once, on operators.

    Args:
        ops: The layer's step operators.
        q0: ``(B, D, k)`` float64 orthonormal starting columns, one block per sequence.
    """

    def __init__(self, ops: StepOps, q0: Tensor) -> None:
        self.ops = ops
        self.Q = q0.to(torch.float64).clone()

    def step(self, t: int, batch: Tensor) -> tuple[Tensor, Tensor]:
        """Apply ``J_t`` to the sequences ``batch``.

        Returns:
            ``ok`` ``(n,)`` bool (``J_t Q`` finite: the step is applied; otherwise it is
            skipped and ``Q`` unchanged) and ``ln|diag R|`` ``(n_ok, k)`` float64 of the
            applied ones (floored at :data:`LOG_TINY` for an exactly singular step).
        """
        z = self.ops.jvp(t, batch, self.Q[batch]).to(torch.float64)
        # A non-finite J_t Q puts NaN/inf on the diagonal of R (Householder propagates it),
        # so checking the k logs is enough and cheaper than scanning Z.
        q, r = torch.linalg.qr(z)
        logs = torch.log(torch.diagonal(r, dim1=-2, dim2=-1).abs().clamp_min(_TINY))
        ok = torch.isfinite(logs).all(dim=-1)
        if bool(ok.all()):
            self.Q[batch] = q
            return ok, logs
        self.Q[batch[ok]] = q[ok]
        return ok, logs[ok]


class BackwardSweep:
    """Walk every sequence back from its own last step, ``Z ← J_tᵀ Z`` renormalised.

    Args:
        ops: The layer's step operators.
        u: ``(B, D, p)`` probe columns ``U`` with orthonormal columns (``U = I`` gives the
            exact norms of the products).
    """

    def __init__(self, ops: StepOps, u: Tensor) -> None:
        self.ops = ops
        self.Z = u.to(torch.float64).clone()
        self.ell = torch.zeros(u.shape[0], dtype=torch.float64)

    def input_log_norms(self, t: int, batch: Tensor) -> Tensor:
        """``ln ‖Uᵀ P_k K_t‖₂`` for the sequences ``batch`` at the current lag, ``(n,)``."""
        y = self.ops.vjp_input(t, batch, self.Z[batch])
        return self.ell[batch] + top_singular_log(y)

    def state_step(self, t: int, batch: Tensor) -> Tensor:
        """Multiply ``J_t`` in for ``batch`` (one lag further back); ``ln ‖Uᵀ P_k‖₂`` ``(n,)``.

        A zero product gives ``-inf`` and a non-finite one NaN; the caller stops walking
        those sequences (their ``Z`` is left as it was).
        """
        z = self.ops.vjp(t, batch, self.Z[batch]).to(torch.float64)
        logs = top_singular_log(z)
        ok = torch.isfinite(logs)
        if bool(ok.any()):
            keep = batch[ok]
            self.Z[keep] = z[ok] / torch.exp(logs[ok])[:, None, None]
            self.ell[keep] += logs[ok]
        out = self.ell[batch].clone()
        out[~ok] = logs[~ok]
        return out
