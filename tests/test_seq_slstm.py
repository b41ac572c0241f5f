"""sLSTM (the official xlstm package's cell, vanilla backend) through its gated adapter.

References: the sLSTM equations of Beck et al. (2024, eqs. 8-17, with the package's
per-head recurrent kernel and stabiliser) stepped by hand here in float64, written from the
paper and independent of the adapter; ``torch.func.jacrev`` of that hand-written step (the
Jacobians); the module's own forward (the replay, float64 and float32); autograd through
the module itself (the loss gradients).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sequence_cases import SequenceCase, check_products, relative_error, replay
from torch.nn.functional import logsigmoid

import gradscope as gs
from gradscope.sequences.slstm import ADAPTER

cell_mod = pytest.importorskip("xlstm.blocks.slstm.cell")

H, K, T, B = 8, 2, 11, 3


def make_cell(dtype: torch.dtype, output_shape: str = "BNSH"):
    """A vanilla-backend sLSTM cell with random recurrent weights and biases (seed 0)."""
    torch.manual_seed(0)
    cfg = cell_mod.sLSTMCellConfig(
        hidden_size=H,
        num_heads=K,
        backend="vanilla",
        recurrent_weight_init="standard",
        bias_init="standard",
        output_shape=output_shape,
        dtype="float32",
    )
    cell = cell_mod.sLSTMCell(cfg)
    with torch.no_grad():
        cell._recurrent_kernel_.mul_(6.0)  # O(1) recurrent effects (the init is 1/√H)
        cell._bias_.normal_(0.0, 1.0)
    return cell.to(dtype)


def inputs(dtype: torch.dtype, state: bool = False):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, 4 * H, generator=gen, dtype=torch.float64).to(dtype)
    if not state:
        return (x,), {}
    s0 = torch.randn(4, B, H, generator=gen, dtype=torch.float64)
    s0[2] = s0[2].abs() + 0.5  # a normaliser is positive
    return (x,), {"state": s0.to(dtype)}


CASES = [
    SequenceCase(
        "zero-state", make_cell, lambda m, d: inputs(d), lambda m: ADAPTER, diagonal=False
    ),
    SequenceCase(
        "given-state", make_cell, lambda m, d: inputs(d, True), lambda m: ADAPTER, diagonal=False
    ),
    SequenceCase(
        "layout-BSH",
        lambda d: make_cell(d, "BSH"),
        lambda m, d: inputs(d),
        lambda m: ADAPTER,
        diagonal=False,
    ),
]


def reference_step(R: torch.Tensor, b: torch.Tensor, u: torch.Tensor, state: torch.Tensor):
    """One sLSTM step by hand (float64): ``u`` ``(B, 4H)``, ``state`` ``(B, 4H)``.

    The paper's equations with the package's two choices (``xlstm/blocks/slstm/src/vanilla/
    slstm.py``): a sigmoid forget gate in log space, ``m_t = ĩ`` on a fresh state
    (``n = 0``), and both exponential gates capped at 1.

    ``R`` ``(K, 4d, d)`` the heads' recurrent kernels (rows gate-major), ``b`` ``(4H,)``.
    The recurrent input of gate ``g`` for head ``k`` is ``R_k[g·d:(g+1)·d] y_k``.
    """
    y, c, n, m = state.split(H, dim=-1)
    d = H // K
    rec = []
    for g in range(4):
        rec.append(
            torch.cat(
                [y[:, k * d : (k + 1) * d] @ R[k, g * d : (g + 1) * d].T for k in range(K)], -1
            )
        )
    pre = u + torch.cat(rec, -1) + b
    i_t, f_t, z_t, o_t = pre.split(H, dim=-1)
    log_f = logsigmoid(f_t)  # the package's sigmoid forget gate, in log space
    fresh = (n == 0).all(dim=-1, keepdim=True)
    m_new = torch.where(fresh, i_t, torch.maximum(i_t, log_f + m))
    one = torch.ones_like(i_t)  # the package's cap at 1 (it binds where a fresh state
    i_gate = torch.minimum(torch.exp(i_t - m_new), one)  # forces m_t = ĩ below m + ln σ(f̃))
    f_gate = torch.minimum(torch.exp(log_f + m - m_new), one)
    c_new = f_gate * c + i_gate * torch.tanh(z_t)
    n_new = f_gate * n + i_gate
    y_new = torch.sigmoid(o_t) * c_new / n_new
    return torch.cat([y_new, c_new, n_new, m_new], dim=-1)


def _reference_run(cell, x, s0=None):
    R = cell._recurrent_kernel.detach().double()
    b = cell._bias.detach().double()
    u = x.double().transpose(0, 1)
    s = torch.zeros(B, 4 * H, dtype=torch.float64) if s0 is None else s0
    out = [s]
    for t in range(T):
        s = reference_step(R, b, u[t], s)
        out.append(s)
    return torch.stack(out), R, b, u


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_replay_reproduces_the_cell(case, dtype):
    _, _, u, states = replay(case, dtype)
    assert states.shape == (T + 1, B, 4 * H) and u.shape == (T, B, 4 * H)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_states_equal_the_hand_written_equations(case):
    """The adapter's states (its scan) against the sLSTM stepped by hand, float64."""
    cell = case.build(torch.float64)
    args, kwargs = case.inputs(cell, torch.float64)
    s0 = kwargs.get("state")
    s0 = None if s0 is None else s0.permute(1, 0, 2).reshape(B, -1)
    want, _, _, _ = _reference_run(cell, args[0], s0)
    _, _, _, states = replay(case, torch.float64)
    assert relative_error(states, want) < 1e-12


def test_jacobians_equal_jacrev_of_the_hand_written_step():
    """Closed-form J_t and K_t against torch.func.jacrev of :func:`reference_step` (1e-12)."""
    case = CASES[1]
    cell = case.build(torch.float64)
    args, kwargs = case.inputs(cell, torch.float64)
    s0 = kwargs["state"].permute(1, 0, 2).reshape(B, -1)
    states, R, b, u = _reference_run(cell, args[0], s0)
    params = ADAPTER.module_params(cell)
    x, s = u.flatten(0, 1), states[:-1].flatten(0, 1)

    def one(ui, si):
        return reference_step(R, b, ui[None], si[None])[0]

    js = torch.vmap(torch.func.jacrev(one, argnums=1))(x, s)
    ju = torch.vmap(torch.func.jacrev(one, argnums=0))(x, s)
    assert relative_error(ADAPTER.jacobian_state(params, x, s), js) < 1e-12
    assert relative_error(ADAPTER.jacobian_input(params, x, s), ju) < 1e-12


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_products_match_autograd(case):
    adapter, params, u, states = replay(case, torch.float64)
    check_products(adapter, params, u, states)


def test_the_stabiliser_took_both_branches():
    """The cases exercise m_t = ĩ and m_t = m_(t−1) + ln σ(f̃) (else half the maths is untested)."""
    _, params, u, states = replay(CASES[1], torch.float64)
    x, s = u.flatten(0, 1), states[:-1].flatten(0, 1)
    from gradscope.sequences.slstm import _Step

    st = _Step(params, x, s)
    frac = float(st.take_i.double().mean())
    assert 0.05 < frac < 0.95, frac


def test_loss_gradients_match_autograd_through_the_cell():
    cell = make_cell(torch.float64)
    (x,), _ = inputs(torch.float64)
    x = x.requires_grad_(False)
    states = {}
    with gs.record(cell, grads=True) as rec:
        out, _ = cell(x)
        out.pow(2).sum().backward()
    layer = rec.trace[0]
    # autograd reference: the hand-written step unrolled with retain_grad on every state
    R = cell._recurrent_kernel.detach().double()
    b = cell._bias.detach().double()
    u = x.transpose(0, 1)
    s = torch.zeros(B, 4 * H, dtype=torch.float64, requires_grad=True)
    seq = [s]
    for t in range(T):
        s = reference_step(R, b, u[t], s)
        s.retain_grad()
        seq.append(s)
    ys = torch.stack([st[:, :H] for st in seq[1:]])  # (T, B, H)
    ys.pow(2).sum().backward()
    want = torch.stack([st.grad for st in seq])
    states["n"] = len(seq)
    assert relative_error(layer.grads, want) < 1e-12


def test_gate_views_come_from_the_declaration(tmp_path):
    """The sLSTM declares its gates: the diagnosis has a gate view with the cell path
    (∏f on c and n), the sentence names it, and the report draws the gate panels."""
    cell = make_cell(torch.float32)
    (x,), _ = inputs(torch.float32)
    prof = gs.profile(cell, x, analysis={"progress": False})
    d = prof.diagnosis[0]
    assert d.kind == "slstm" and d.gates is not None
    assert d.gates.gate == "f" and set(d.gates.gates) == {"i", "f", "o"}
    assert "cell path (diag f on c and n)" in d.verdict
    assert np.isfinite(d.gates.carry).any() and np.isfinite(d.gates.share).any()
    html = prof.report(tmp_path / "slstm.html").read_text()
    for key in ("mechanism", "gate-share", "gate-distributions"):
        assert f'data-figure="{key}"' in html
