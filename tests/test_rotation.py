"""Rotation transitions: Mamba-3's data-dependent decaying rotation (``examples/mamba3.py``).

References: the module's own forward (its real state with rotated keys and queries, the
way the kernel runs it) for the replay of the adapter's rotating-frame state, ``torch.func``
on the adapter's step (products, eigenvalues ``α e^{∓iθ}``), and ``Δ_t A_t`` and
``θ_t = π tanh(φ_t) Δ_t`` recomputed here from the module's weights (Lyapunov exponents,
the memory timescales' phase and its spread).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sequence_cases import SequenceCase, check_diagonal, check_products, replay

import gradscope as gs
from gradscope.analysis.timescales import timescales

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import mamba3 as mamba3_example

T, B, WIDTH = 10, 2, 4


def layer_module(dtype, rope_fraction=0.5):
    """A tiny Mamba-3 (2 heads of width 4, N = 8), projections scaled up so that Δ and the
    angles are of order 1."""
    torch.manual_seed(0)
    module = mamba3_example.Mamba3(WIDTH, d_state=8, headdim=4, rope_fraction=rope_fraction)
    with torch.no_grad():
        module.in_proj.weight.mul_(3.0)
        module.dt_bias.add_(2.0)
        module.B_bias.add_(0.3 * torch.randn_like(module.B_bias))
    return module.to(dtype)


def signal(dtype, n=T):
    return torch.randn(B, n, WIDTH, dtype=dtype, generator=torch.Generator().manual_seed(1))


CASES = [
    SequenceCase(
        f"rope{frac}",
        lambda d, frac=frac: layer_module(d, frac),
        lambda m, d: ((signal(d),), {}),
        lambda m: mamba3_example.Mamba3Adapter(),
    )
    for frac in (0.5, 1.0)
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_replay_products_and_eigenvalues(case, dtype):
    adapter, params, u, states = replay(case, dtype)
    check_products(adapter, params, u, states)
    check_diagonal(adapter, params, u, states)


def _decay_and_angles(module, u):
    """``Δ_t A_t`` ``(B, T, H)`` and ``θ_t`` ``(B, T, H, S)`` from the module's weights."""
    H, S = 2, module.in_proj.weight.shape[0] - 2 * 8 - 2 * 8 - 3 * 2  # inner 8, N 8
    with torch.no_grad():
        proj = module.in_proj(u)
        dd_dt, dd_a = proj[..., 32 : 32 + H], proj[..., 32 + H : 32 + 2 * H]
        phi = proj[..., 32 + 3 * H :]
        a = np.where(dd_a >= 0, 1 + dd_a, 1 / (1 - dd_a))  # heavy-tail activation
        A = np.minimum(-a, -1e-4)
        dt = F.softplus(dd_dt + module.dt_bias).numpy()
    theta = math.pi * np.tanh(phi.numpy())[..., None, :] * dt[..., None]
    assert theta.shape[-1] == S
    return A * dt, theta


@pytest.mark.parametrize("frac", [0.5, 1.0])
def test_exponents_and_phase_are_the_decay_and_angles_of_the_weights(frac):
    module = layer_module(torch.float64, frac)
    u = signal(torch.float64, 40)
    rec = gs.trace(module, u).layers[0]
    assert rec.kind == "example:mamba3" and rec.meta["replay_error"] < 1e-12
    adt, theta = _decay_and_angles(module, u)
    P, N, S = 4, 8, theta.shape[-1]
    # exponents: each head's mean of ln α_t = Δ_t A_t, on its P · N coordinates
    per_seq = np.repeat(adt.mean(axis=1), P * N, axis=1)  # (B, D)
    want = np.sort(per_seq, axis=1)[:, ::-1].mean(axis=0)
    np.testing.assert_allclose(gs.lyapunov(rec).exponents, want, rtol=1e-12)
    # ‖∂s_T/∂s_(T−k)‖: rotations keep norms, so the largest head's product of α
    curve = gs.decay(rec, of="state").norms  # (K + 1, B)
    ref = np.flip(adt, axis=1).cumsum(axis=1).max(axis=-1).T  # (T, B), lag 1 first
    np.testing.assert_allclose(np.log(curve[1:]), ref, rtol=1e-10)
    # the phase: coordinate 2i of a rotated pair turns by −θ, 2i + 1 by +θ; the rest by 0
    mem = timescales(rec)
    ang = np.zeros((*theta.shape[:3], N))
    ang[..., 0 : 2 * S : 2], ang[..., 1 : 2 * S : 2] = -theta, theta
    ang = np.angle(np.exp(1j * ang))  # as arg λ: in (−π, π]
    rows = np.broadcast_to(ang[:, :, :, None, :], (*ang.shape[:3], P, N)).reshape(-1, 2 * P * N)
    centre = np.angle(np.exp(1j * rows).mean(axis=0))
    spread = np.sqrt((np.angle(np.exp(1j * (rows - centre))) ** 2).mean(axis=0))
    np.testing.assert_allclose(mem.phase, centre, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mem.phase_spread, spread, rtol=1e-10, atol=1e-12)
    assert int(mem.turning.sum()) == 2 * P * 2 * S  # heads × rows × rotated entries
    assert "Rotation: " in mem.sentence() and f"{2 * P * 2 * S} of {2 * P * N}" in mem.sentence()
    assert mem.to_dict(arrays=False)["turning"] == 2 * P * 2 * S


def test_a_real_diagonal_has_no_phase():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import mingru as mingru_example

    torch.manual_seed(0)
    model = mingru_example.MinGRU(4, 6)
    mem = timescales(gs.trace(model, torch.randn(2, 12, 4)).layers[0])
    assert mem.phase is None and not mem.turning.any() and "Rotation" not in mem.sentence()
