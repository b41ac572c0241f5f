r"""The finite prefix of a recording: every statistic rests on the steps before an overflow.

When a network's states overflow (float32 holds at most ~3.4e38) or turn NaN, every
Jacobian after that point is meaningless, and so is any average that includes them. The
analysis therefore runs on the *finite prefix* of each sequence: the steps ``k = 0 .. F_b-1``
whose input state ``s_k``, input ``x_k`` and output state ``s_{k+1}`` are all finite, where
``s_{F_b+1}`` is the first non-finite state of sequence ``b`` (or ``F_b = T_b`` when there is
none). :func:`finite_prefix` returns a view of the layer with ``lengths = F`` (sequences with
no finite step left out), and the facts a verdict needs: how many steps the statistics rest
on, and the step where the first overflow happened.

A layer that never leaves the finite range is returned unchanged (the same object), so its
analysis is exactly what it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from gradscope.analysis.fit import Decay
from gradscope.layer_trace import LayerTrace


@dataclass(frozen=True)
class Prefix:
    """Where each sequence stops being finite.

    Attributes:
        steps: ``(B,)`` finite steps ``F_b`` per sequence of the original layer.
        lengths: ``(B,)`` the original valid lengths ``T_b``.
        kept: ``(B,)`` bool, sequences with at least one finite step (those in the view).
        first_step: Index ``t`` of the earliest non-finite state ``s_t`` over sequences
            (None when every sequence is finite to its end).
        first_batch: Its sequence.
    """

    steps: np.ndarray
    lengths: np.ndarray
    kept: np.ndarray
    first_step: int | None
    first_batch: int | None

    @property
    def cut(self) -> bool:
        """Some sequence stops before its end."""
        return bool((self.steps < self.lengths).any())

    def describe(self) -> str:
        """``"the finite prefix: 38 of 100 steps (median over 2 sequences)"``."""
        kept = self.steps[self.kept]
        if not kept.size:
            return "no finite step in any sequence"
        lo, hi, med = int(kept.min()), int(kept.max()), float(np.median(kept))
        span = f"{lo}" if lo == hi else f"{lo}–{hi} (median {med:g})"
        left = int((~self.kept).sum())
        out = f"the finite prefix of each sequence: {span} of {int(self.lengths.max())} steps"
        if left:
            out += f"; {left} sequence(s) without a finite step left out"
        return out


def _first_bad(bad: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """Per column, the first True row (``limit`` where there is none)."""
    any_bad = bad.any(axis=0)
    return np.where(any_bad, bad.argmax(axis=0), limit)


def prefix_of(layer: LayerTrace) -> Prefix:
    """Where each sequence of ``layer`` stops being finite (see the module docstring)."""
    lengths = layer.seq_lengths
    bad_state = layer.nonfinite()  # (T+1, B), real states only
    f_state = _first_bad(bad_state, lengths + 1)  # first non-finite state index
    bad_in = ~torch.isfinite(layer.inputs).all(dim=-1).cpu().numpy() & layer.mask
    f_in = _first_bad(bad_in, lengths)  # first non-finite input step
    steps = np.minimum(np.minimum(f_state - 1, f_in), lengths).clip(min=0)
    first_step = first_batch = None
    if bad_state.any():
        t, b = np.nonzero(bad_state)
        i = int(np.lexsort((b, t))[0])
        first_step, first_batch = int(t[i]), int(b[i])
    return Prefix(steps.astype(np.int64), lengths, steps >= 1, first_step, first_batch)


def finite_prefix(layer: LayerTrace) -> tuple[LayerTrace | None, Prefix]:
    """The layer restricted to the finite prefix of each sequence, and where it stops.

    Returns ``(layer, prefix)`` unchanged when nothing is cut; ``(None, prefix)`` when no
    sequence has a finite step. The view holds copies of the kept sequences' states and
    inputs (NaN beyond ``F_b``, like padding), with ``lengths = F``.
    """
    pre = prefix_of(layer)
    if not pre.cut:
        return layer, pre
    keep = np.nonzero(pre.kept)[0]
    if not keep.size:
        return None, pre
    steps = pre.steps[keep]
    T = int(steps.max())
    idx = torch.from_numpy(keep)
    real = torch.from_numpy(np.arange(T)[:, None] < steps[None, :])  # (T, B')
    real_s = torch.cat([torch.ones(1, len(keep), dtype=torch.bool), real])

    def cut(x: torch.Tensor, n: int, mask: torch.Tensor) -> torch.Tensor:
        x = x[:n][:, idx.to(x.device)]
        return torch.where(mask.to(x.device)[..., None], x, torch.full_like(x, float("nan")))

    stored = layer.stored_jacobians
    view = LayerTrace(
        name=layer.name,
        kind=layer.kind,
        states=cut(layer.states, T + 1, real_s),
        inputs=cut(layer.inputs, T, real),
        lengths=steps,
        state_names=layer.state_names,
        state_sizes=layer.state_sizes,
        params=layer.params,
        meta={**layer.meta, "finite_prefix": steps.tolist()},
        adapter=layer.adapter,
        stored_jacobians=None
        if stored is None
        else {k: v[:T][:, idx.to(v.device)] for k, v in stored.items()},
        grads=None if layer.grads is None else cut(layer.grads, T + 1, real_s),
    )
    return view, pre


def with_overflow(d: Decay, prefix: Prefix) -> Decay:
    """``d`` (fitted on the finite prefix) with a note of it, and the overflow rule.

    When some sequence overflows and the norms grow over its finite steps (a rate whose
    95% interval is above 0, or, with too few steps for a rate, a last finite norm above
    the first), the regime is ``"exploding"``, whatever the neutral band says: the growth
    did not stop, the number format did.
    """
    if not prefix.cut:
        return d
    where = (
        ""
        if prefix.first_step is None
        else f"; the first non-finite state is s_{prefix.first_step} of sequence "
        f"{prefix.first_batch}"
    )
    notes = [*d.notes, f"rests on {prefix.describe()}{where}"]
    if math.isfinite(d.rate):
        grows = d.rate > 0 and d.rate_ci[0] > 0
    else:
        seen = d.median[np.isfinite(d.median)]
        grows = seen.size >= 2 and seen[-1] > seen[0]
    if grows and d.regime != "exploding":
        notes.append("the norms grow over the finite steps until the states overflow: exploding")
        return replace(d, regime="exploding", notes=notes)
    return replace(d, notes=notes)


__all__ = ["Prefix", "finite_prefix", "prefix_of", "with_overflow"]
