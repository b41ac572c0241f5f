r"""Leading eigenvalues and singular values of one-step Jacobians, on the operator.

A dense eigendecomposition costs ~25 D³ flops per Jacobian (an LSTM with hidden 1024 has
D = 2048: 2·10¹¹ flops, seconds per step). The spectral radius and the spectral norm only
need the *leading* values, which ARPACK's implicitly restarted Arnoldi (eigenvalues,
:func:`scipy.sparse.linalg.eigs`) and Lanczos on :math:`J^\top J` (singular values,
:func:`scipy.sparse.linalg.eigsh`) find from products alone (Lehoucq, Sorensen & Yang
1998): each product is one closed-form ``jvp`` (and ``vjp``) of the cell,
``O(w)`` for ``w`` recurrent weights, so one step costs ``O(m · w)`` for ``m`` products
(typically tens to a few hundred) instead of ``O(D³)``. Up to :data:`FORMED_MAX_D` the
products go through the one Jacobian of the step formed by the adapter's closed form
(``O(D²)`` memory for that step only, the size of an LSTM's or GRU's recurrent weights):
the same ``O(m · D²)`` arithmetic without a dozen small tensor calls per product.

Accuracy: ARPACK stops when every Ritz pair's residual is below ``tol`` times the Ritz
value (relative), so the values it returns are eigenvalues to about ``tol``; that they are
the *leading* ones rests on the Krylov basis (:data:`NCV`) being large enough for the
clustered spectra of gated cells. The leading values agree with a dense decomposition to
about ``tol`` (default 1e-6; the tests ask for 1e-10 and check 1e-8 against dense, and
the default float32 tolerance on clustered spectra to 1e-4). Products of
float32 traces carry float32 rounding, so the default is 1e-5 there. A pair that does not
converge keeps the values ARPACK did converge and NaN for the rest.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigs, eigsh

from gradscope.jacobians.steps import StepOps

#: Default relative tolerance of ARPACK: the one-step radius and norm are summaries read to
#: three digits, and a clustered spectrum (a random LSTM's, D = 2048) needs ~500 products
#: at 1e-6 against ~950 at 1e-10. Pass ``tol`` for more (the tests use 1e-10).
TOL64 = 1e-6
TOL32 = 1e-5
#: Krylov basis size. The spectra of trained and random LSTMs/GRUs are clustered near
#: their radius (complex pairs a few 1e-3 apart in modulus), and with a small basis ARPACK
#: can converge to a pair just below the largest: with 24, 6 of 60 eigenvalue radii of
#: random LSTM (D = 512) and GRU (D = 384) Jacobians were a lower pair, up to 0.35% too
#: small, and 2 of 4 at D = 2048; with 64 none, at the same or lower cost (fewer
#: restarts: D = 2048, 564–812 products per Jacobian against 798–1954 with 24).
NCV = 64


#: Largest state whose one Jacobian is formed for ARPACK's products (a ``D × D`` matrix in
#: the products' dtype, 16 MB in float32 at this size). ARPACK asks for one product at a
#: time, a hundred to a thousand per Jacobian; on the operator each costs a dozen small
#: tensor calls (~0.2 ms of overhead at D = 512 against a 35 µs matrix-vector product),
#: on the formed matrix one NumPy matrix-vector product. Forming it costs about as much as
#: a few products for a recurrence whose weights are ``D × D`` (LSTM, GRU, vanilla) and one
#: batched product of ``D`` columns otherwise. Above it, the products stay on the operator.
FORMED_MAX_D = 2048


def _formed(lin, d: int) -> np.ndarray | None:
    """``J_t`` of one pair as a NumPy matrix (products' dtype), or None above the cap."""
    if lin is None or d > FORMED_MAX_D:
        return None
    with torch.no_grad():
        jac = lin.adapter.jacobian_state(lin.params, lin.x, lin.s)[0]
    return jac.detach().cpu().numpy()


def _operator(ops: StepOps, t: int, b: int, d: int, which: str) -> LinearOperator:
    batch = torch.tensor([b])
    lin = ops.step_linearization(t, batch)  # None: stored Jacobians (or no closed form)
    jac = _formed(lin, d)
    if jac is not None:
        jt = jac.T

        def formed_jv(v: np.ndarray) -> np.ndarray:
            return (jac @ v.astype(jac.dtype, copy=False)).astype(np.float64)

        def formed_jtjv(v: np.ndarray) -> np.ndarray:
            return (jt @ (jac @ v.astype(jac.dtype, copy=False))).astype(np.float64)

        matvec = formed_jv if which == "eig" else formed_jtjv
        return LinearOperator((d, d), matvec=matvec, dtype=np.float64)
    fwd = (lambda col: ops.jvp(t, batch, col)) if lin is None else lin.jvp_state
    bwd = (lambda col: ops.vjp(t, batch, col)) if lin is None else lin.vjp_state

    def jv(v: np.ndarray) -> np.ndarray:
        col = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(1, d, 1))
        return fwd(col.to(ops.dtype)).to(torch.float64).numpy().reshape(d)

    def jtv(v: np.ndarray) -> np.ndarray:
        col = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(1, d, 1))
        return bwd(col.to(ops.dtype)).to(torch.float64).numpy().reshape(d)

    if which == "eig":
        return LinearOperator((d, d), matvec=jv, dtype=np.float64)
    return LinearOperator((d, d), matvec=lambda v: jtv(jv(v)), dtype=np.float64)


def _arpack(op: LinearOperator, which: str, k: int, ncv: int, tol: float, v0: np.ndarray):
    """ARPACK's leading values of ``op`` (``J`` or ``JᵀJ``); those that converged, if not all.

    An ARPACK failure on a finite operator (it has not been seen) gives no values: NaN.
    """
    try:
        if which == "eig":
            return eigs(op, k=k, ncv=ncv, which="LM", tol=tol, v0=v0, return_eigenvectors=False)
        return eigsh(op, k=k, ncv=ncv, which="LA", tol=tol, v0=v0, return_eigenvectors=False)
    except ArpackNoConvergence as exc:
        return np.asarray(exc.eigenvalues)
    except ArpackError:
        return np.zeros(0)


def leading_values(
    ops: StepOps, t: int, b: int, which: str, k: int, tol: float | None = None
) -> np.ndarray:
    """The ``k`` leading eigenvalues (by modulus) or singular values of ``J_t`` of sequence b.

    Args:
        ops: The layer's step operators.
        t: The step (``J_{t+1} = ∂s_{t+1}/∂s_t``).
        b: The sequence.
        which: ``"eig"`` (complex, sorted by modulus, descending) or ``"svd"`` (descending).
        k: How many; at most ``D - 2``.
        tol: ARPACK's relative tolerance (default :data:`TOL64` / :data:`TOL32` by dtype).

    Returns:
        ``(k,)`` complex128 (eig) or float64 (svd); NaN where ARPACK did not converge, and
        all NaN for a Jacobian whose product with the starting vector is not finite (a
        step with non-finite states or weights: an invalid entry, as on the dense path).
    """
    d = ops.layer.D
    if tol is None:
        tol = TOL64 if ops.dtype == torch.float64 else TOL32
    op = _operator(ops, t, b, d, which)
    v0 = np.random.default_rng(1234 + 7919 * t + b).standard_normal(d)
    ncv = min(d, max(2 * k + 1, NCV))
    vals: np.ndarray = np.zeros(0)
    # One product first: ARPACK fails with an opaque error (and LAPACK prints to stderr) on
    # a non-finite operator; such a step gets NaN values instead.
    if bool(np.isfinite(op.matvec(v0)).all()):
        vals = _arpack(op, which, k, ncv, tol, v0)
    if which == "eig":
        vals = vals[np.argsort(-np.abs(vals), kind="stable")].astype(np.complex128)
        out = np.full(k, np.nan + 1j * np.nan, dtype=np.complex128)
    else:
        vals = np.sort(np.sqrt(np.clip(vals.real, 0.0, None)))[::-1]
        out = np.full(k, np.nan)
    out[: min(k, len(vals))] = vals[:k]
    return out
