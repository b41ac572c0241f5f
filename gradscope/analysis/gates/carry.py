r"""Carries: what the additive path alone keeps of a gradient ``k`` steps back.

A gradient that stays on the additive path (LSTM ``diag(f)`` on ``c → c``, GRU ``diag(z)``)
for the last ``k`` steps of a sequence of length ``T_b`` is scaled, per unit ``j``, by

.. math:: C_k[j] = \prod_{u=T_b−k+1}^{T_b} g_u[j], \qquad
          \ln C_k[j] = \sum_{u=T_b−k+1}^{T_b} \ln g_u[j],

kept as the sum of logs (no underflow at any ``T``). Cost ``O(T·B·H)``.
"""

from __future__ import annotations

import math

import numpy as np


def carries(log_g: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``ln C_k`` ``(K, B, H)``, ``K = max T_b + 1``: sums of each sequence's last ``k`` log gates.

    Row 0 is 0 (an empty product); rows past a sequence's length are NaN.

    Args:
        log_g: ``(T, B, H)`` log of the carried gate per step (processing order).
        lengths: ``(B,)`` sequence lengths ``T_b``.
    """
    _, b, hid = log_g.shape
    lengths = np.asarray(lengths, dtype=np.int64)
    k_max = int(lengths.max(initial=0))
    out = np.full((k_max + 1, b, hid), np.nan)
    out[0] = 0.0
    if k_max == 0:
        return out
    k = np.arange(k_max)[:, None]
    live = k < lengths[None, :]  # (K-1, B): step T_b - 1 - k exists
    src = np.where(live, lengths[None, :] - 1 - k, 0)
    rev = np.take_along_axis(log_g[:k_max], src[:, :, None], axis=0)
    rev = np.where(live[:, :, None], rev, 0.0)
    out[1:] = np.where(live[:, :, None], np.cumsum(rev, axis=0), np.nan)
    return out


def carry_horizon(median_log_carry: np.ndarray) -> float:
    """The first lag at which the median carry falls below ``1/e`` (``ln C < −1``).

    Args:
        median_log_carry: ``(K,)`` median over units and sequences of ``ln C_k``, lags
            ``0 … K−1`` (NaN where no sequence is that long).

    Returns:
        That lag, or ``inf`` when the median carry stays at or above ``1/e`` at every
        measured lag (the cell path keeps more than a third over the whole sequence), or
        NaN when no lag was measured.
    """
    m = np.asarray(median_log_carry, dtype=float)
    if m.size == 0 or not np.isfinite(m).any():
        return math.nan
    below = np.nonzero(m < -1.0)[0]
    return float(below[0]) if below.size else math.inf


__all__ = ["carries", "carry_horizon"]
