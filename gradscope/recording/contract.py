"""What a sequence adapter returns, checked against its contract before gradscope uses it.

A :class:`~gradscope.sequences.base.SequenceAdapter` may be the user's own
(:func:`gradscope.register_sequence`). Whatever it gets wrong must be named where it goes
wrong, not surface as an ``IndexError`` deep inside a replay or an analysis: each check here
says which method returned what, and what the contract asks for
(:class:`~gradscope.errors.AdapterContractError`). The checks cost one step and a few
products at a handful of pairs, never a pass over the whole sequence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from gradscope.cells.base import Params
from gradscope.errors import AdapterContractError, GradscopeError
from gradscope.sequences.base import Drive, SequenceAdapter

#: Pairs and random directions of the diagonal check (:func:`check_diagonal`).
DIAGONAL_PAIRS = 8
DIAGONAL_PROBES = 3
#: Its relative tolerance per dtype (``‖J v‖²`` against ``Σ |λ|² v²``).
DIAGONAL_TOL = {torch.float64: 1e-8, torch.float32: 1e-3}


def _name(adapter: SequenceAdapter) -> str:
    return f"{type(adapter).__name__} (kind {adapter.kind!r})"


def _shape(x: Any) -> str:
    return str(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__


def called(adapter: SequenceAdapter, method: str, fn: Callable[[], Any], where: str) -> Any:
    """``fn()``, with an exception from the adapter's own code named as that method's."""
    try:
        return fn()
    except GradscopeError:
        raise
    except Exception as exc:
        text = " ".join(str(exc).split())[:300]
        raise AdapterContractError(
            f"{where}: {_name(adapter)}.{method} raised {type(exc).__name__}: {text}"
        ) from exc


def checked_params(adapter: SequenceAdapter, params: Any, where: str) -> Params:
    """``module_params``' result: a dict of names to tensors."""
    if not isinstance(params, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in params.items()
    ):
        bad = (
            type(params).__name__
            if not isinstance(params, dict)
            else ", ".join(
                f"{k!r}: {type(v).__name__}" for k, v in params.items() if not isinstance(v, Tensor)
            )
        )
        raise AdapterContractError(
            f"{where}: {_name(adapter)}.module_params must return a dict of names to tensors "
            f"(configuration numbers as 0-d tensors), got {bad}"
        )
    return params


def checked_drive(adapter: SequenceAdapter, params: Params, drive: Any, where: str) -> Drive:
    """``drive``'s result: a :class:`Drive` whose pieces have the contract's shapes."""
    if isinstance(drive, tuple) and not isinstance(drive, Drive) and 1 <= len(drive) <= 3:
        drive = Drive(*drive)
    if not isinstance(drive, Drive):
        raise AdapterContractError(
            f"{where}: {_name(adapter)}.drive must return a gradscope Drive(u, s0, lengths), "
            f"got {type(drive).__name__}"
        )
    u = drive.u
    if not isinstance(u, Tensor) or u.ndim != 3 or not u.is_floating_point():
        raise AdapterContractError(
            f"{where}: {_name(adapter)}.drive must give u as a floating (T, B, I) tensor "
            f"(time-major), got {_shape(u)}" + (f" of {u.dtype}" if isinstance(u, Tensor) else "")
        )
    T, B, width = u.shape
    want_i = called(adapter, "input_size", lambda: adapter.input_size(params), where)
    if width != want_i:
        raise AdapterContractError(
            f"{where}: {_name(adapter)}.drive gives u of shape {tuple(u.shape)}, but "
            f"input_size(params) says I = {want_i}"
        )
    D = called(adapter, "state_size", lambda: adapter.state_size(params), where)
    if drive.s0 is not None and (
        not isinstance(drive.s0, Tensor) or tuple(drive.s0.shape) != (B, D)
    ):
        raise AdapterContractError(
            f"{where}: {_name(adapter)}.drive gives s0 of shape {_shape(drive.s0)}; the "
            f"contract is (B, D) = ({B}, {D}) or None"
        )
    n = drive.lengths
    if n is not None and (
        not isinstance(n, Tensor)
        or tuple(n.shape) != (B,)
        or n.is_floating_point()
        or (B and (int(n.min()) < 1 or int(n.max()) > T))
    ):
        raise AdapterContractError(
            f"{where}: {_name(adapter)}.drive gives lengths {_shape(n)}; the contract is "
            f"None or {B} integers in 1..T = 1..{T}"
        )
    return drive


def check_first_step(
    adapter: SequenceAdapter, params: Params, u: Tensor, s0: Tensor, where: str
) -> None:
    """One :meth:`step` from ``s0``: a ``(B, D)`` tensor, ``D`` the declared state size."""
    if u.shape[0] == 0 or u.shape[1] == 0:
        return
    with torch.no_grad():
        out = called(adapter, "step", lambda: adapter.step(params, u[0], s0), where)
    if not isinstance(out, Tensor) or tuple(out.shape) != tuple(s0.shape):
        raise AdapterContractError(
            f"{where}: {_name(adapter)}.step(params, u_t {tuple(u[0].shape)}, s {tuple(s0.shape)})"
            f" returned {_shape(out)}; the contract is the next state, shaped like s (state_sizes"
            f" = {tuple(adapter.state_sizes(params))})"
        )


def check_diagonal(
    adapter: SequenceAdapter, params: Params, u: Tensor, states: Tensor, where: str
) -> None:
    r"""What :meth:`diagonal` says agrees with what :meth:`step` does, at a few pairs.

    The exact analysis needs ``J_tᵀ J_t = diag(|λ_t|²)`` in the state's coordinates (a real
    diagonal, a scalar per head, or 2 × 2 scaled rotations all have it), that is
    :math:`\lVert J_t v\rVert^2 = \sum_d |λ_{t,d}|^2 v_d^2` for every ``v``; it is checked
    for :data:`DIAGONAL_PROBES` random ``v`` at up to :data:`DIAGONAL_PAIRS` pairs with the
    adapter's products (closed form, or ``torch.func`` of :meth:`step`). ``O(pairs · D)``.

    Raises:
        AdapterContractError: ``diagonal`` has the wrong shape, or contradicts ``step``.
    """
    T, B = u.shape[:2]
    if T == 0 or B == 0:
        return
    x = u.flatten(0, 1)
    s = states[:-1].flatten(0, 1)
    ok = torch.isfinite(x).all(-1) & torch.isfinite(s).all(-1)
    idx = torch.nonzero(ok).flatten()
    if idx.numel() == 0:
        return
    idx = idx[torch.linspace(0, idx.numel() - 1, min(DIAGONAL_PAIRS, idx.numel())).long()]
    x, s = x[idx], s[idx]
    lam = called(adapter, "diagonal", lambda: adapter.diagonal(params, x), where)
    if lam is None:
        return
    D = s.shape[-1]
    if not isinstance(lam, Tensor) or tuple(lam.shape) != (len(idx), D):
        raise AdapterContractError(
            f"{where}: {_name(adapter)}.diagonal(params, u of {tuple(x.shape)}) returned "
            f"{_shape(lam)}; the contract is the eigenvalues per pair, ({len(idx)}, {D}), or None"
        )
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(len(idx), D, DIAGONAL_PROBES, generator=gen, dtype=torch.float64)
    v = v.to(device=s.device, dtype=s.dtype)
    with torch.no_grad():
        jv = called(
            adapter, "linearize", lambda: adapter.linearize(params, x, s).jvp_state(v), where
        )
    got = (jv.double() ** 2).sum(1)  # (n, probes)
    want = ((lam.abs().double() ** 2).unsqueeze(-1) * v.double() ** 2).sum(1)
    err = float(((got - want).abs() / want.abs().clamp_min(1e-300)).max())
    tol = DIAGONAL_TOL.get(s.dtype, 1e-2)
    if not err <= tol:
        raise AdapterContractError(
            f"{where}: {_name(adapter)}.diagonal contradicts its step: with J_t the Jacobian of "
            f"step, ‖J_t v‖² differs from Σ|λ_t|² v² by {err:.2g} (relative) at some of "
            f"{len(idx)} pairs (allowed {tol:g}). diagonal must return the eigenvalues of a "
            "transition that is diagonal (or 2 × 2 scaled rotations) in the state's own "
            "coordinates at every step; return None from diagonal if it is not."
        )


__all__ = [
    "called",
    "check_diagonal",
    "check_first_step",
    "checked_drive",
    "checked_params",
]
