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

from gradscope.jacobians.dense import C_MAX, COOLDOWN
from gradscope.jacobians.steps import StepOps

#: ln of the smallest positive normal float64; floor of ``ln|R_ii|`` for singular steps.
LOG_TINY = math.log(np.finfo(np.float64).tiny)
_TINY = float(np.finfo(np.float64).tiny)
#: Most steps multiplied together before one QR on operators. Twice the dense path's
#: ``M_MAX``: a block's products cost no memory here, and the QR, the range checks and the
#: per-call work of a block are then paid half as often (10,000 steps of an LSTM with
#: hidden 256, interleaved runs with the range checked every 4 steps: 6.5–6.6 s at 16,
#: 5.0–5.3 s at 32), while every block still has to pass the same conditioning test.
M_MAX = 32
#: Steps between the range checks of a block product while the rate of growth is unknown.
_RESCALE_EVERY = 4


def top_singular_log(z: Tensor) -> Tensor:
    """``ln ‖z_n‖₂`` of each ``(rows, p)`` block of ``z`` ``(n, rows, p)``, in float64.

    The largest singular value is the square root of the largest eigenvalue of the
    ``p × p`` Gram matrix (``p = 1``: the vector norm). ``-inf`` for a zero block, NaN for
    a non-finite one.
    """
    z = z.to(torch.float64)
    if z.shape[-1] == 1:
        return torch.log(torch.linalg.vector_norm(z, dim=(-2, -1)))  # (torch does not warn)
    scale = z.abs().amax(dim=(-2, -1)).clamp_min(_TINY)  # avoid overflow in the Gram matrix
    zs = z / scale[:, None, None]
    gram = zs.transpose(-1, -2) @ zs
    ok = torch.isfinite(gram).all(dim=(-2, -1))
    if bool(ok.all()):  # the common case: no masking
        lam = torch.linalg.eigvalsh(gram)[:, -1]
    else:
        lam = torch.full((z.shape[0],), math.nan, dtype=torch.float64)
        if ok.any():
            lam[ok] = torch.linalg.eigvalsh(gram[ok])[:, -1]
    return 0.5 * torch.log(lam.clamp_min(0.0)) + torch.log(scale)


#: Below this largest Gram eigenvalue a float32 Gram matrix may have lost digits to
#: underflow: the blocks are measured again in float64.
_GRAM32_FLOOR = 1e-30


def columns_top_singular_log(z: Tensor) -> Tensor:
    """:func:`top_singular_log` of the ``(D, p)`` blocks of ``z`` ``(D, n, p)`` (columns layout).

    Float32/16 blocks (the products of a float32 model) get their ``p × p`` Gram matrices
    in that precision, one batched product (~4× faster than in float64 on the CPU), whose
    rounding, ~``√D`` float32 units, is the order of the product's own that made ``z``;
    the eigenvalues are taken in float64. Where that Gram matrix is not finite (squares
    beyond float32's range) or its largest eigenvalue is below :data:`_GRAM32_FLOOR`
    (squares near underflow), every block is measured again in float64 with scaling, as
    :func:`top_singular_log` does, which float64 blocks always get.
    """
    if z.shape[-1] == 1:
        return torch.log(torch.linalg.vector_norm(z, dim=(0, 2), dtype=torch.float64))
    zp = z.permute(1, 0, 2)  # (n, D, p) view
    if z.dtype != torch.float64:
        gram = (zp.transpose(-1, -2) @ zp).to(torch.float64)
        if bool(torch.isfinite(gram).all()):
            lam = torch.linalg.eigvalsh(gram)[:, -1]
            if bool((lam >= _GRAM32_FLOOR).all()):
                return 0.5 * torch.log(lam)
    return top_singular_log(zp)


def _factor(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Householder QR of ``z`` ``(n, D, k)`` in float64.

    Returns:
        ``Q``, ``ln|diag R|`` ``(n, k)`` (floored at :data:`LOG_TINY`) and the conditioning
        ``c = ln‖Z‖_F − min_i ln|R_ii|`` ``(n,)`` that decides whether a block is accepted.
    """
    z = z.to(torch.float64)
    z2 = z.square().sum(dim=(-2, -1))
    q, r = torch.linalg.qr(z)
    logs = torch.log(torch.diagonal(r, dim1=-2, dim2=-1).abs().clamp_min(_TINY))
    return q, logs, 0.5 * torch.log(z2) - logs.amin(dim=-1)


class ForwardQR:
    """The QR iteration of every sequence of a layer at once, on operators.

    Blocking, as in :class:`~gradscope.jacobians.dense.DenseQR`: up to ``m`` consecutive
    steps are multiplied into ``Z = J_{t+m-1} ⋯ J_t Q`` (``m`` products in the trace's
    dtype) before one Householder QR in float64. In exact arithmetic nothing changes (the
    ``R`` factor of the product is the product of the per-step ``R`` factors, and so are
    their diagonals). In floating point each product step perturbs ``Z`` by about
    ``u ‖Z‖`` (``u`` the product dtype's rounding unit), so ``ln|R_ii|`` moves by about
    ``u ‖Z‖/|R_ii| = u e^c`` with ``c = ln‖Z‖_F − min_i ln|R_ii|``. A block is accepted
    only when ``c ≤ c_max``, chosen so that ``u e^{c_max} ≤ 1e-5`` (float32 products:
    ``c_max = ln 168``; float32 products already carry ~1e-7 relative rounding per step)
    and never above the dense path's ``ln 1e6`` (float64: error per block below
    ``2e-10``); otherwise the block is recomputed one step at a time (single steps are
    always accepted: that is the plain method). ``m`` adapts as in ``DenseQR``: it grows by
    one while the last block's conditioning leaves room, up to ``M_MAX``, and falls back to
    1 after a rejection for ``COOLDOWN`` blocks. Within a block, the columns are rescaled
    by powers of two when they approach under- or overflow (the scale goes into the logs
    exactly), checked as often as the last block's growth or decay rate (``|ln‖Z‖_F| / m``,
    the largest of the sequences) requires to keep them in range: once per block for a
    trained LSTM, every step for a contraction of ``1e-30`` per step. A block whose product
    left the range anyway (zero, subnormal or not finite) fails the acceptance test and is
    redone step by step. Cost per step: one ``jvp`` with ``k`` columns, ``O(n · k · w)``; one
    ``O(n · D · k²)`` QR per block.

    Args:
        ops: The layer's step operators.
        q0: ``(B, D, k)`` float64 orthonormal starting columns, one block per sequence.
    """

    def __init__(self, ops: StepOps, q0: Tensor) -> None:
        self.ops = ops
        self.Q = q0.to(torch.float64).clone()
        eps = float(torch.finfo(ops.dtype).eps) / 2
        self.c_max = min(C_MAX, math.log(1e-5 / eps))
        self.m = 1
        self.cool = 0
        self.rate = math.inf  # largest |ln‖Z‖_F| per step of the last block: unknown yet

    def _rows(self, batch: Tensor) -> Tensor | slice:
        """``batch`` as a slice when it is every sequence (views instead of copies)."""
        return slice(None) if len(batch) == self.Q.shape[0] else batch

    def step(self, t: int, batch: Tensor) -> tuple[Tensor, Tensor]:
        """Apply ``J_t`` to the sequences ``batch``.

        Returns:
            ``ok`` ``(n,)`` bool (``J_t Q`` finite: the step is applied; otherwise it is
            skipped and ``Q`` unchanged) and ``ln|diag R|`` ``(n_ok, k)`` float64 of the
            applied ones (floored at :data:`LOG_TINY` for an exactly singular step).
        """
        rows = self._rows(batch)
        q, logs, cond = _factor(self.ops.jvp(t, batch, self.Q[rows]))
        self._note_rate(logs, cond, 1)
        # A non-finite J_t Q puts NaN/inf on the diagonal of R (Householder propagates it),
        # so checking the k logs is enough and cheaper than scanning Z.
        ok = torch.isfinite(logs).all(dim=-1)
        if bool(ok.all()):
            self.Q[rows] = q
            self._adapt(1, float(cond.max()))
            return ok, logs
        self.Q[batch[ok]] = q[ok]
        return ok, logs[ok]

    def block(self, t: int, m: int, batch: Tensor) -> Tensor | None:
        """Apply ``J_{t+m-1} ⋯ J_t`` to ``batch`` with one QR (``m >= 2``).

        Returns:
            ``sum ln|diag R|`` over the block, ``(n, k)`` float64, or None when the block
            is rejected (ill-conditioned or not finite for some sequence): then nothing
            changed and ``m`` is set back to 1; the caller applies the steps one at a time.
        """
        rows = self._rows(batch)
        # columns layout (D, n, k) through the block when the adapter has its own run loop
        cols = self.ops.runs
        z = self.Q[rows].to(self.ops.dtype)
        if cols:
            z = z.permute(1, 0, 2).contiguous()
        one = (None, slice(None), None) if cols else (slice(None), None, None)
        shift = torch.zeros(len(batch), dtype=torch.float64)
        info = torch.finfo(self.ops.dtype)
        lo, hi = math.sqrt(info.tiny), math.sqrt(info.max)  # one more step cannot leave range
        # Keep the columns away from under- and overflow, checked every `every` steps (a
        # miss cannot pass silently: a block that left the range fails the conditioning or
        # finiteness test below, and is redone step by step).
        every = self._check_every(m, 0.5 * math.log(hi))
        for tt in range(t, t + m, every):
            run = min(every, t + m - tt)
            z = self.ops.jvp_run(tt, run, batch, z, columns=cols)
            if tt + run < t + m:  # more products follow (the QR takes any finite scale)
                # per sequence; in the columns layout reduced over rows first (contiguous)
                big = z.abs().amax(dim=0).amax(dim=-1) if cols else z.abs().amax(dim=(-2, -1))
                far = (big < lo) | (big > hi)
                if bool(far.any()):
                    e = torch.where(far, -torch.round(torch.log2(big)), torch.zeros_like(big))
                    e = torch.nan_to_num(e, nan=0.0, posinf=0.0, neginf=0.0)
                    z = z * torch.exp2(e)[one]
                    shift -= e.to(torch.float64) * math.log(2.0)
        q, logs, cond = _factor(z.permute(1, 0, 2) if cols else z)
        worst = float(cond.max()) if cond.numel() else 0.0
        # A block that underflowed to zero has cond = -inf: redone step by step too, where
        # a step that is singular (not merely tiny) gets its floored logs.
        if not worst <= self.c_max or not bool(
            torch.isfinite(logs).all() & torch.isfinite(cond).all()
        ):
            self.m, self.cool = 1, COOLDOWN  # back off: no blocking for a while
            self.rate = math.inf  # and check the range every few steps again
            return None
        self._note_rate(logs + shift[:, None], cond, m)
        self.Q[rows] = q
        self._adapt(m, worst)
        return logs + shift[:, None]

    def _check_every(self, m: int, headroom: float) -> int:
        """Steps between two range checks in a block of ``m``, at least 1.

        :data:`_RESCALE_EVERY` while the rate is unknown, else as many as move
        ``ln max|Z|`` by at most ``headroom`` (half the distance from the checked range to
        the dtype's limits) at the last block's rate.
        """
        if not math.isfinite(self.rate):
            return min(m, _RESCALE_EVERY)
        return max(1, min(m, int(headroom / max(self.rate, 1e-9))))

    def _note_rate(self, logs: Tensor, cond: Tensor, m: int) -> None:
        """Keep the largest ``|ln‖Z‖_F| / m`` of a block (``ln‖Z‖_F = c + min ln|R_ii|``).

        Non-finite values (a skipped step) leave the checks at every few steps.
        """
        if not cond.numel():
            return
        rate = float(((cond + logs.amin(dim=-1)).abs() / m).max())
        self.rate = rate if math.isfinite(rate) else math.inf

    def _adapt(self, m: int, cond: float) -> None:
        """Grow the block length after an accepted block of ``m`` steps with room left."""
        if self.cool > 0:
            self.cool -= 1
        elif m == self.m and cond * (m + 1) / m <= self.c_max:
            self.m = min(m + 1, M_MAX)


class BackwardSweep:
    """Walk every sequence back from its own last step, ``Z ← J_tᵀ Z`` renormalised.

    When the adapter has a ``vjp`` loop of its own (:attr:`StepOps.vjp_runs`), ``Z`` is
    kept in its columns layout ``(D, B, p)`` and the products' dtype, renormalised in
    place each step (``ln σ`` from a float64 Gram matrix): the same numbers as the float64
    ``(B, D, p)`` blocks otherwise kept, whose products run in that dtype too, without a
    gather, a cast and a scatter of ``Z`` per step.

    Args:
        ops: The layer's step operators.
        u: ``(B, D, p)`` probe columns ``U`` with orthonormal columns (``U = I`` gives the
            exact norms of the products).
    """

    def __init__(self, ops: StepOps, u: Tensor) -> None:
        self.ops = ops
        self.cols = ops.vjp_runs
        if self.cols:
            self.Zc = u.permute(1, 0, 2).to(ops.dtype).contiguous()  # (D, B, p)
        else:
            self.Z = u.to(torch.float64).clone()
        self.ell = torch.zeros(u.shape[0], dtype=torch.float64)

    def _blocks(self, batch: Tensor) -> Tensor:
        """``Z`` of the sequences ``batch`` as ``(n, D, p)``."""
        if self.cols:
            return self.Zc[:, batch].permute(1, 0, 2)
        return self.Z[batch]

    def input_log_norms(self, t: int, batch: Tensor) -> Tensor:
        """``ln ‖Uᵀ P_k K_t‖₂`` for the sequences ``batch`` at the current lag, ``(n,)``."""
        y = self.ops.vjp_input(t, batch, self._blocks(batch))
        return self.ell[batch] + top_singular_log(y)

    def state_step(self, t: int, batch: Tensor) -> Tensor:
        """Multiply ``J_t`` in for ``batch`` (one lag further back); ``ln ‖Uᵀ P_k‖₂`` ``(n,)``.

        A zero product gives ``-inf`` and a non-finite one NaN; the caller stops walking
        those sequences (their ``Z`` is left as it was).
        """
        if self.cols:
            return self._state_step_columns(t, batch)
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

    def _state_step_columns(self, t: int, batch: Tensor) -> Tensor:
        full = len(batch) == self.Zc.shape[1]
        z = self.ops.vjp_columns(t, batch, self.Zc if full else self.Zc[:, batch])
        logs = columns_top_singular_log(z)
        ok = torch.isfinite(logs)
        if bool(ok.all()):
            z.mul_(torch.exp(-logs).to(z.dtype)[None, :, None])
            if full:
                self.Zc = z
                self.ell += logs
                return self.ell.clone()
            self.Zc[:, batch] = z
            self.ell[batch] += logs
            return self.ell[batch].clone()
        if bool(ok.any()):
            keep = batch[ok]
            self.Zc[:, keep] = z[:, ok] * torch.exp(-logs[ok]).to(z.dtype)[None, :, None]
            self.ell[keep] += logs[ok]
        out = self.ell[batch].clone()
        out[~ok] = logs[~ok]
        return out
