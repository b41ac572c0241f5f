r"""Eigenvalue and singular-value spectra of the per-timestep state Jacobians.

For every selected step ``k`` and sequence ``b`` the one-step Jacobian

.. math:: J_{k+1} = \partial s_{k+1} / \partial s_k \in \mathbb{R}^{D \times D}

is decomposed either into its eigenvalues (complex, sorted by modulus, descending) or its
singular values (descending). The *spectral radius* :math:`\rho(J) = \max_i |\mu_i|` governs
the long-run growth of a product of *identical* Jacobians (Gelfand:
:math:`\lVert J^n\rVert^{1/n} \to \rho(J)`), while the *spectral norm*
:math:`\sigma_{\max}(J) = \lVert J\rVert_2` bounds a single step: Pascanu, Mikolov & Bengio
(2013), "On the difficulty of training recurrent neural networks", show that
:math:`\sigma_{\max}(W_{hh}) < 1` is sufficient for vanishing gradients in a tanh RNN (since
:math:`|\tanh'| \le 1`), and that :math:`\sigma_{\max} > 1` is necessary for exploding ones.
Neither one-step number decides what a *long product of different* Jacobians does: that is
the job of :mod:`gradscope.analysis.lyapunov` and :mod:`gradscope.analysis.decay`.

Padded steps (``layer.mask`` False) and steps whose Jacobian is not finite never enter a
spectrum: their rows are all-NaN and ``valid`` is False there.

JSON convention (every ``to_dict`` of the analysis layer, see :func:`jsonable`): arrays become
nested lists; finite floats stay floats; the non-finite floats become the *strings*
``"nan"``, ``"inf"`` and ``"-inf"``; complex numbers become ``[real, imag]`` pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.linalg
import torch

from gradscope._json import dataclass_dict, jsonable
from gradscope._progress import analysis, progress_bar
from gradscope.errors import ArgumentError, ShapeError
from gradscope.jacobians.diagonal import eigenvalues
from gradscope.jacobians.krylov import leading_values
from gradscope.jacobians.operator import DENSE_UP_TO, operator_of
from gradscope.layer_trace import LayerTrace, StepSelect, select_index

Which = Literal["eig", "svd"]


def _summary(x: np.ndarray) -> dict[str, float]:
    """Distribution summary of the finite entries of ``x`` (NaN statistics when empty)."""
    v = x[np.isfinite(x)]
    n = int(v.size)
    if n == 0:
        nan = float("nan")
        return dict(median=nan, mean=nan, p05=nan, p95=nan, min=nan, max=nan, frac_above_1=nan, n=0)
    p05, med, p95 = np.percentile(v, [5, 50, 95])
    return dict(
        median=float(med),
        mean=float(v.mean()),
        p05=float(p05),
        p95=float(p95),
        min=float(v.min()),
        max=float(v.max()),
        frac_above_1=float((v > 1.0).mean()),
        n=n,
    )


# --------------------------------------------------------------------------- result
@dataclass(frozen=True)
class Spectrum:
    r"""Eigenvalues or singular values of every selected one-step Jacobian.

    Attributes:
        name: The layer's name.
        which: ``"eig"`` (eigenvalues) or ``"svd"`` (singular values).
        steps: ``(T',)`` int, the Jacobian step indices ``k`` (entry ``k`` is
            :math:`\partial s_{k+1}/\partial s_k`).
        batch: ``(B',)`` int, the sequence indices.
        values: ``(T', B', D)``. ``eig``: complex128 sorted by modulus, descending; ``svd``:
            float64, descending. All-NaN rows where the entry is invalid (padded step or a
            non-finite Jacobian).
        valid: ``(T', B')`` bool, True where ``values`` holds a real decomposition.
        method: ``"dense"`` (all ``D`` values of each Jacobian), ``"operator"`` (only the
            leading ``values.shape[-1]`` values, by ARPACK on the Jacobian operator) or
            ``"diagonal"`` (all ``D`` values of a diagonal transition, exact).
    """

    name: str
    which: str
    steps: np.ndarray
    batch: np.ndarray
    values: np.ndarray
    valid: np.ndarray
    method: str = "dense"

    @property
    def radius(self) -> np.ndarray:
        r"""``(T', B')`` spectral radius :math:`\max_i|\mu_i|` (NaN where invalid); eig only."""
        if self.which != "eig":
            raise AttributeError(
                f"{self.name}: radius needs eigenvalues; this spectrum is which='svd' "
                "(use .norm, or gs.spectrum(layer, which='eig'))"
            )
        r = np.abs(self.values[..., 0]) if self.values.shape[-1] else np.zeros(self.valid.shape)
        return np.where(self.valid, r, np.nan)

    @property
    def norm(self) -> np.ndarray:
        r"""``(T', B')`` spectral norm :math:`\sigma_{\max}` (NaN where invalid); svd only."""
        if self.which != "svd":
            raise AttributeError(
                f"{self.name}: norm needs singular values; this spectrum is which='eig' "
                "(use .radius, or gs.spectrum(layer, which='svd'))"
            )
        r = self.values[..., 0].real if self.values.shape[-1] else np.zeros(self.valid.shape)
        return np.where(self.valid, r, np.nan)

    def summary(self) -> dict[str, float]:
        """Statistics of :attr:`radius` (eig) or :attr:`norm` (svd) over valid entries.

        Returns:
            ``dict(median, mean, p05, p95, min, max, frac_above_1, n)``; ``frac_above_1`` is
            the fraction of (step, sequence) entries above 1 and ``n`` their count. All NaN
            (and ``n = 0``) when nothing is valid.
        """
        return _summary(self.radius if self.which == "eig" else self.norm)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (see the module docstring for the NaN/inf convention)."""
        out = dataclass_dict(self)
        out["summary"] = jsonable(self.summary())
        return out


# --------------------------------------------------------------------------- compute
#: Largest state decomposed densely by ``method="auto"``.
DENSE_MAX_D = DENSE_UP_TO["spectrum"]
#: Leading values per Jacobian on the operator path.
OPERATOR_VALUES = 4


def _operator_spectrum(layer, which, step_idx, b_idx, k, tol, progress) -> Spectrum:
    D = layer.D
    kk = min(OPERATOR_VALUES if k is None else int(k), D - 2)
    if kk < 1:
        raise ArgumentError(
            f"{layer.name}: the operator path needs D >= 3 (D = {D}); use method='dense'"
        )
    T_, B_ = len(step_idx), len(b_idx)
    values = np.full((T_, B_, kk), np.nan, dtype=np.complex128 if which == "eig" else np.float64)
    valid = np.zeros((T_, B_), dtype=bool)
    if T_ and B_:
        mask = layer.mask[np.ix_(step_idx.numpy(), b_idx.numpy())]
        ops = operator_of(layer).steps
        with progress_bar(
            total=T_, desc=f"{which} {layer.name}", progress=progress, work=T_ * B_ * 400 * D * D
        ) as bar:
            for i, t in enumerate(step_idx.tolist()):
                for j, b in enumerate(b_idx.tolist()):
                    if mask[i, j]:
                        values[i, j] = leading_values(ops, t, b, which, kk, tol)
                        valid[i, j] = bool(np.isfinite(values[i, j][0]))
                bar.update(1)
    return Spectrum(
        layer.name, which, step_idx.numpy(), b_idx.numpy(), values, valid, method="operator"
    )


def _diagonal_spectrum(layer, which, step_idx, b_idx) -> Spectrum:
    """All ``D`` values of every Jacobian of a diagonal transition, exactly, ``O(D)`` each."""
    steps, batch = step_idx.numpy(), b_idx.numpy()
    lam = eigenvalues(layer, steps, batch)  # NaN rows at padding
    valid = np.isfinite(lam).all(axis=-1) if lam.shape[-1] else np.ones(lam.shape[:2], bool)
    if which == "svd":
        values = -np.sort(-np.abs(lam), axis=-1)
    else:
        order = np.argsort(-np.abs(lam), axis=-1, kind="stable")
        values = np.take_along_axis(lam, order, axis=-1)
    values[~valid] = np.nan
    return Spectrum(layer.name, which, steps, batch, values, valid, method="diagonal")


def _one(a: np.ndarray, which: str) -> np.ndarray:
    """Values of one matrix by SciPy's other LAPACK drivers; NaN when they fail too."""
    try:
        if which == "svd":
            return scipy.linalg.svd(a, compute_uv=False, lapack_driver="gesvd")
        return scipy.linalg.eigvals(a)
    except (np.linalg.LinAlgError, ValueError):
        return np.full(a.shape[-1], np.nan)


def _decompose(jac: torch.Tensor, which: str) -> np.ndarray:
    """Eigen/singular values of a ``(..., D, D)`` float64 batch with finite entries.

    A batch LAPACK call that fails to converge is redone matrix by matrix with SciPy's
    drivers (``gesvd`` for singular values); a matrix on which they fail too gets NaN
    values (an invalid entry, left out of every statistic), never an exception.
    """
    try:
        vals = torch.linalg.svdvals(jac) if which == "svd" else torch.linalg.eigvals(jac)
        ev = vals.numpy()
    except torch.linalg.LinAlgError:
        flat = jac.reshape(-1, *jac.shape[-2:]).numpy()
        ev = np.stack([_one(a, which) for a in flat]).reshape(*jac.shape[:-1])
    if which == "svd":
        return ev
    order = np.argsort(-np.abs(ev), axis=-1, kind="stable")
    return np.take_along_axis(ev, order, axis=-1)


@analysis
def spectrum(
    layer: LayerTrace,
    which: Which = "eig",
    steps: StepSelect = None,
    batch: StepSelect = None,
    *,
    chunk: int = 64,
    method: str = "auto",
    k: int | None = None,
    tol: float | None = None,
    progress: bool | str = "auto",
) -> Spectrum:
    """Eigenvalues (``which="eig"``) or singular values (``"svd"``) of each one-step Jacobian.

    Streams over time with :meth:`LayerTrace.iter_jacobians`, so memory is one chunk of
    Jacobians plus the ``(T', B', D)`` result. Computed in float64.

    Args:
        layer: The recorded layer.
        which: ``"eig"`` for eigenvalues (complex, sorted by modulus) or ``"svd"``.
        steps: Jacobian steps ``k`` to use (int, slice, index list, or None for all).
        batch: Sequences to use (same forms).
        chunk: Steps per chunk of Jacobians.
        method: ``"diagonal"`` (a diagonal transition's eigenvalues from its adapter: all
            ``D`` values exactly, ``O(D)`` per Jacobian; the default where available),
            ``"dense"`` (decompose each ``D × D`` Jacobian: all ``D`` values, ~25 D³
            flops per eig), ``"operator"`` (only the ``k`` leading values, by ARPACK on the
            closed-form Jacobian products: ``O(m · w)`` for ``m`` products and ``w``
            recurrent weights) or ``"auto"``: dense up to ``D = DENSE_MAX_D`` (and for
            traces with stored Jacobians), operator above.
        k: Leading values per Jacobian on the operator path (default
            :data:`OPERATOR_VALUES`); ignored by the dense path.
        tol: ARPACK's relative tolerance on the operator path (default 1e-6, see
            :mod:`gradscope.jacobians.krylov`).
        progress: Progress bar: True, False, or ``"auto"`` (only for long computations on a
            terminal; ``GRADSCOPE_PROGRESS=0`` turns it off everywhere).

    Returns:
        A :class:`Spectrum`; padded steps and non-finite Jacobians are invalid (NaN rows).

    Raises:
        ArgumentError: ``which`` is not ``"eig"`` or ``"svd"``, or an unknown ``method``.
        ShapeError: a step or batch index is out of range.
    """
    if which not in ("eig", "svd"):
        raise ArgumentError(f"{layer.name}: which must be 'eig' or 'svd', got {which!r}")
    route = operator_of(layer).route("spectrum", method)  # the one place that decides
    step_idx = select_index(steps, layer.T, "step")
    b_idx = select_index(batch, layer.B, "batch")
    if route == "diagonal":
        return _diagonal_spectrum(layer, which, step_idx, b_idx)
    if route == "operator":
        return _operator_spectrum(layer, which, step_idx, b_idx, k, tol, progress)
    T_, B_, D = len(step_idx), len(b_idx), layer.D
    dtype = np.complex128 if which == "eig" else np.float64
    values = np.full((T_, B_, D), np.nan, dtype=dtype)
    if which == "eig":
        values.imag[:] = np.nan
    valid = np.zeros((T_, B_), dtype=bool)
    if T_ == 0 or B_ == 0:
        return Spectrum(layer.name, which, step_idx.numpy(), b_idx.numpy(), values, valid)
    mask = layer.mask[np.ix_(step_idx.numpy(), b_idx.numpy())]
    pos = 0
    work = T_ * B_ * D**3
    with progress_bar(total=T_, desc=f"{which} {layer.name}", progress=progress, work=work) as bar:
        for sel, jac in layer.iter_jacobians(chunk=chunk, steps=step_idx, batch=b_idx):
            n = len(sel)
            jac = jac.detach().to(device="cpu", dtype=torch.float64)
            if jac.shape[-2:] != (D, D):
                raise ShapeError(
                    f"{layer.name} ({layer.kind}): state Jacobians must be (D, D) = ({D}, {D}),"
                    f" got {tuple(jac.shape[-2:])}"
                )
            ok = torch.isfinite(jac).flatten(-2).all(-1).numpy() & mask[pos : pos + n]
            if ok.any():
                vals = _decompose(jac[torch.from_numpy(ok)], which)
                values[pos : pos + n][ok] = vals
                ok[ok] = np.isfinite(vals[:, 0])
                valid[pos : pos + n] = ok
            pos += n
            bar.update(n)
    return Spectrum(layer.name, which, step_idx.numpy(), b_idx.numpy(), values, valid)


__all__ = ["DENSE_MAX_D", "OPERATOR_VALUES", "Spectrum", "spectrum"]
