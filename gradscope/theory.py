r"""Closed-form predictions that gradscope's estimates are checked against.

These are references, not estimators: each is a formula from the literature, evaluated
numerically (quadrature, fixed-point iteration), with no use of recorded Jacobians.

* :func:`mean_field_q`, :func:`mean_field_lambda1`: the random tanh network
  :math:`h_{t+1} = \tanh(g W h_t)`, :math:`W_{ij} \sim N(0, 1/N)`, at large N. The squared
  length per unit settles at :math:`q^* = g^2\,E[\tanh^2(\sqrt{q^*} z)]` (non-zero only for
  g > 1) and the leading Lyapunov exponent is
  :math:`\lambda_1 = \tfrac12 \ln\!\big(g^2\,E[\operatorname{sech}^4(\sqrt{q^*} z)]\big)`
  (Molgedey, Schuchhardt & Schuster 1992; Sompolinsky, Crisanti & Sommers 1988): ordered
  (:math:`\lambda_1 = \ln g < 0`) for g < 1, chaotic for g > 1.
* :func:`newman_spectrum`: products of i.i.d. Gaussian matrices (Newman 1986).
* :func:`pascanu_gain`: the gain below which Pascanu, Mikolov & Bengio (2013)'s sufficient
  condition for vanishing gradients holds for a tanh RNN.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from scipy import special

from gradscope.errors import ArgumentError


@lru_cache(maxsize=8)
def _hermgauss(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Hermite nodes and weights (an eigenvalue problem: computed once per ``n``)."""
    return np.polynomial.hermite.hermgauss(n)


def gauss_expect(f: Callable[[np.ndarray], np.ndarray], q: float, n: int = 120) -> float:
    """``E[f(√q z)]`` for ``z ~ N(0, 1)`` by Gauss–Hermite quadrature with ``n`` nodes."""
    x, w = _hermgauss(n)
    return float((w * f(math.sqrt(2.0 * q) * x)).sum() / math.sqrt(math.pi))


def mean_field_q(g: float, tol: float = 1e-15, max_iter: int = 10_000) -> float:
    """The fixed point ``q* = g² E[tanh²(√q* z)]``, by iteration from ``q = 1``.

    For ``g <= 1`` the only fixed point is 0 (the iteration approaches it, slowly at
    ``g = 1``); for ``g > 1`` it converges to the non-zero one.
    """
    q = 1.0
    for _ in range(max_iter):
        new = g * g * gauss_expect(lambda a: np.tanh(a) ** 2, q)
        if abs(new - q) < tol:
            return new
        q = new
    return q


def mean_field_lambda1(g: float) -> float:
    """Mean-field leading Lyapunov exponent ``½ ln(g² E[sech⁴(√q* z)])`` of the tanh RNN."""
    q = mean_field_q(g)
    return 0.5 * math.log(g * g * gauss_expect(lambda a: 1.0 / np.cosh(a) ** 4, q))


def newman_spectrum(n: int) -> np.ndarray:
    """Exponents of products of ``n×n`` matrices with i.i.d. ``N(0, 1/n)`` entries.

    Newman (1986): ``λ_i = ½ [ln(2/n) + ψ((n − i + 1)/2)]``, ``i = 1..n``, descending.
    """
    i = np.arange(1, n + 1)
    return 0.5 * (math.log(2.0 / n) + special.digamma((n - i + 1) / 2.0))


def newman_step_variance(n: int) -> np.ndarray:
    """Per-step variance of the ``i``-th QR increment ``½ ln(χ²_{n−i+1}/n)``: ``ψ'(k/2)/4``."""
    i = np.arange(1, n + 1)
    return special.polygamma(1, (n - i + 1) / 2.0) / 4.0


def pascanu_gain(init: str) -> float:
    """The gain ``g`` below which ``σ_max(g W) < 1``, Pascanu et al.'s sufficient condition.

    For tanh (``|tanh'| <= 1``), ``σ_max(W_hh) < 1`` guarantees that ``‖∂h_T/∂h_t‖`` vanishes
    exponentially (Pascanu, Mikolov & Bengio 2013, eq. 7 with γ = 1).

    Args:
        init: ``"orthogonal"`` (``σ_max(W) = 1``, so ``g < 1``) or ``"gaussian"``
            (``W_ij ~ N(0, 1/n)``: ``σ_max(W) → 2`` as ``n → ∞``, the edge of the
            Marchenko–Pastur law, so ``g < 1/2``; finite ``n`` fluctuates around it by
            ``O(n^{-2/3})``).
    """
    if init == "orthogonal":
        return 1.0
    if init == "gaussian":
        return 0.5
    raise ArgumentError(f"init must be 'orthogonal' or 'gaussian', got {init!r}")
