"""Shared checks for sequence adapters (Mamba, RWKV, xLSTM, minGRU, LRU, ...).

Each family's test module builds its module at toy size and hands it to these checks; the
references are the module's own forward (replay) and ``torch.func`` on the adapter's
one-step function in float64 (Jacobians), never the adapter's own products.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from gradscope.sequences.base import SequenceAdapter


@dataclass
class SequenceCase:
    """One module at toy size: how to build it and call it.

    Attributes:
        name: Test id.
        build: ``dtype -> module`` (seeded inside).
        inputs: ``(module, dtype) -> (args, kwargs)`` for one call of the module.
        adapter: ``module -> SequenceAdapter``.
        replay_tol: Relative replay tolerance per dtype (float64 default 1e-10).
        diagonal: The adapter must return :meth:`~SequenceAdapter.diagonal`.
    """

    name: str
    build: Callable[[torch.dtype], nn.Module]
    inputs: Callable[[nn.Module, torch.dtype], tuple[tuple, dict[str, Any]]]
    adapter: Callable[[nn.Module], SequenceAdapter]
    replay_tol: dict[torch.dtype, float] = field(
        default_factory=lambda: {torch.float64: 1e-10, torch.float32: 1e-4}
    )
    diagonal: bool = True


def relative_error(a: Tensor, b: Tensor) -> float:
    """``max|a - b| / max(1, max|b|)`` in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / torch.clamp(b.abs().max(), min=1.0))


def replay(case: SequenceCase, dtype: torch.dtype) -> tuple[SequenceAdapter, dict, Tensor, Tensor]:
    """Run the module, replay it through its adapter, check the output; return the pieces.

    Returns ``(adapter, params, u, states)``.
    """
    module = case.build(dtype)
    args, kwargs = case.inputs(module, dtype)
    with torch.no_grad():
        out = module(*args, **kwargs)
    adapter = case.adapter(module)
    params = adapter.module_params(module)
    drive = adapter.drive(params, args, kwargs)
    u = drive.u
    B = u.shape[1]
    D = adapter.state_size(params)
    s0 = drive.s0 if drive.s0 is not None else u.new_zeros((B, D))
    states = adapter.scan(params, u, s0)
    got = adapter.readout(params, u, states)
    want = adapter.module_output(out)
    assert got.shape == want.shape, (got.shape, want.shape)
    err = relative_error(got, want)
    assert err < case.replay_tol[dtype], f"{case.name} {dtype}: replay error {err:.3g}"
    return adapter, params, u, states


def reference_jacobians(
    adapter: SequenceAdapter, params: dict, u: Tensor, s: Tensor
) -> tuple[Tensor, Tensor]:
    """``∂s_t/∂s_{t-1}`` and ``∂s_t/∂u_t`` of :meth:`step` by ``torch.func.jacrev`` per pair."""

    def one(ui: Tensor, si: Tensor) -> Tensor:
        return adapter.step(params, ui[None], si[None])[0]

    js = torch.vmap(torch.func.jacrev(one, argnums=1))(u, s)
    ju = torch.vmap(torch.func.jacrev(one, argnums=0))(u, s)
    return js, ju


def check_products(
    adapter: SequenceAdapter, params: dict, u: Tensor, states: Tensor, k: int = 3
) -> None:
    """Closed-form products against ``torch.func`` Jacobians, float64, 1e-12 relative."""
    params = {n: p.double() if p.is_floating_point() else p for n, p in params.items()}
    x = u.double().flatten(0, 1)
    s = states[:-1].double().flatten(0, 1)
    js, ju = reference_jacobians(adapter, params, x, s)
    gen = torch.Generator().manual_seed(0)
    N, D, I = x.shape[0], s.shape[-1], x.shape[-1]
    V = torch.randn(N, D, k, generator=gen, dtype=torch.float64)
    W = torch.randn(N, I, k, generator=gen, dtype=torch.float64)
    lin = adapter.linearize(params, x, s)
    for name, (got, want) in enumerate(
        (
            (lin.jvp_state(V), js @ V),
            (lin.vjp_state(V), js.transpose(1, 2) @ V),
            (lin.jvp_input(W), ju @ W),
            (lin.vjp_input(V), ju.transpose(1, 2) @ V),
        )
    ):
        assert got.shape == want.shape
        err = relative_error(got, want)
        assert err < 1e-12, (name, err)


def check_diagonal(adapter: SequenceAdapter, params: dict, u: Tensor, states: Tensor) -> None:
    """:meth:`~SequenceAdapter.diagonal` against the eigenvalues and singular values of the
    ``torch.func`` Jacobian (float64)."""
    params = {n: p.double() if p.is_floating_point() else p for n, p in params.items()}
    x = u.double().flatten(0, 1)
    s = states[:-1].double().flatten(0, 1)
    lam = adapter.diagonal(params, x)
    assert lam is not None and lam.shape == s.shape
    js, _ = reference_jacobians(adapter, params, x, s)
    ev = torch.linalg.eigvals(js).numpy()
    lam_np = lam.to(torch.complex128).numpy()
    for a, b in zip(ev, lam_np):  # the same multiset per pair: greedy nearest matching
        left = list(b)
        for z in a:
            j = int(np.argmin([abs(z - w) for w in left]))
            assert abs(z - left.pop(j)) < 1e-10 * max(1.0, abs(z))
    sv = torch.linalg.svdvals(js)
    mags = torch.sort(lam.abs(), dim=-1, descending=True).values
    assert relative_error(sv, mags) < 1e-10


def monitored_training(
    model: nn.Module, loss: Callable[[int], Tensor], steps: int = 3, lr: float = 1e-3
) -> Any:
    """``steps`` Adam steps on ``loss(i)`` under a ``gs.Monitor(every=1, analyze=False)``.

    Returns the Monitor's :class:`~gradscope.history.History`.
    """
    import gradscope as gs

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    monitor = gs.Monitor(model, every=1, analyze=False)
    for i in range(steps):
        value = loss(i)
        opt.zero_grad()
        value.backward()
        opt.step()
        monitor.step()
    monitor.close()
    return monitor.history
