"""The adapters' own loops against autograd through the PyTorch cells themselves, float64:

* backward sweeps (``CellAdapter.state_sweep``): ``∂L/∂s_t`` for every step of
  ``L = Σ_t ⟨ō_t, h_t⟩ + ⟨ḡ, s_T⟩``, with padded steps (the state held) and without;
* runs of Jacobian products (``state_jvp_run`` / ``state_vjp_run``, the QR iteration's and
  the decay walk's): products of the cells' autograd Jacobians over several steps, for
  every sequence and for a shuffled subset.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradscope.cells import adapter_for

CELLS = {
    "lstm": lambda: nn.LSTMCell(3, 5),
    "gru": lambda: nn.GRUCell(3, 5),
    "rnn_tanh": lambda: nn.RNNCell(3, 5),
    "rnn_relu": lambda: nn.RNNCell(3, 5, nonlinearity="relu"),
}


def _reference(cell, x, s0, valid, ocot, g_last):
    """States and ∂L/∂s_t by autograd through the module's own forward."""
    H = cell.hidden_size
    states = [s0.clone().requires_grad_(True)]
    for t in range(x.shape[0]):
        prev = states[-1]
        if isinstance(cell, nn.LSTMCell):
            h, c = cell(x[t], (prev[:, :H], prev[:, H:]))
            new = torch.cat([h, c], dim=-1)
        else:
            new = cell(x[t], prev)
        s = torch.where(valid[t].unsqueeze(-1), new, prev) if valid is not None else new
        s.retain_grad()
        states.append(s)
    loss = (g_last * states[-1]).sum()
    for t in range(x.shape[0]):
        loss = loss + (ocot[t] * states[t + 1][:, :H]).sum()
    loss.backward()
    return [s.detach() for s in states], torch.stack([s.grad for s in states])


def _cell_case(kind: str, seed: int, T: int, B: int):
    """A float64 PyTorch cell of ``kind`` (seeded), its adapter and weights, inputs
    ``(T, B, 3)`` and the state size ``D``."""
    torch.manual_seed(seed)
    cell = CELLS[kind]().double()
    adapter = adapter_for(cell)
    params = adapter.cell_params(cell)
    H = cell.hidden_size
    x = torch.randn(T, B, 3, dtype=torch.float64)
    return cell, adapter, params, x, 2 * H if kind == "lstm" else H


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("kind", list(CELLS))
def test_state_sweep_equals_autograd(kind: str, padded: bool) -> None:
    T, B = 9, 4
    cell, adapter, params, x, D = _cell_case(kind, 0, T, B)
    H = cell.hidden_size
    s0 = torch.randn(B, D, dtype=torch.float64) * 0.5
    lengths = torch.tensor([9, 6, 1, 9]) if padded else torch.full((B,), T)
    valid = (torch.arange(T)[:, None] < lengths[None, :]) if padded else None
    ocot = torch.randn(T, B, H, dtype=torch.float64)
    if valid is not None:
        ocot = ocot * valid.unsqueeze(-1)  # no cotangent at padding, as recorded
    g_last = torch.randn(B, D, dtype=torch.float64)
    states, expected = _reference(cell, x, s0, valid, ocot, g_last)
    factors = [adapter.step_factors(params, x[t], states[t])[1] for t in range(T)]
    got = adapter.state_sweep(params, factors, g_last, ocot, valid)
    assert got is not None, f"{kind}: no fast sweep"
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # without output cotangents too
    _, expected0 = _reference(cell, x, s0, valid, torch.zeros_like(ocot), g_last)
    got0 = adapter.state_sweep(params, factors, g_last, None, valid)
    torch.testing.assert_close(got0, expected0, rtol=1e-12, atol=1e-12)


def _cell_jacobians(cell, x, states):
    """``∂s_t/∂s_{t-1}`` ``(T, B, D, D)`` by autograd through the PyTorch cell itself."""
    H = cell.hidden_size

    def jac(xt, s):
        def step(s):
            if isinstance(cell, nn.LSTMCell):
                h, c = cell(xt[None], (s[None, :H], s[None, H:]))
                return torch.cat([h, c], dim=-1)[0]
            return cell(xt[None], s[None])[0]

        return torch.autograd.functional.jacobian(step, s)

    return torch.stack(
        [
            torch.stack([jac(x[t, b], states[t][b]) for b in range(x.shape[1])])
            for t in range(x.shape[0])
        ]
    )


def _run_case(kind: str, seed: int, subset: bool):
    """A cell over 6 steps and 4 sequences: the autograd Jacobians of every step and the
    adapter's run factors of all of them in one block, step-major, as StepOps keeps them;
    the sequences to apply them to (all, or a shuffled subset)."""
    T, B = 6, 4
    cell, adapter, params, x, D = _cell_case(kind, seed, T, B)
    states = [torch.randn(B, D, dtype=torch.float64) * 0.5]
    for t in range(T):
        states.append(adapter.step(params, x[t], states[-1]))
    jac = _cell_jacobians(cell, x, states)
    lin = adapter.linearize(params, x.reshape(T * B, 3), torch.cat(states[:-1]))
    batch = torch.tensor([3, 1]) if subset else torch.arange(B)
    return adapter, params, adapter.run_factors(lin.factors, B), jac, batch


@pytest.mark.parametrize("subset", [False, True], ids=["every", "subset"])
@pytest.mark.parametrize("direction", ["jvp", "vjp"])
@pytest.mark.parametrize("kind", list(CELLS))
def test_state_runs_equal_autograd_products(kind: str, direction: str, subset: bool) -> None:
    """``state_jvp_run`` over several steps = the product of the autograd Jacobians;
    ``state_vjp_run`` walking back (the last step first) = the transposed products."""
    adapter, params, factors, jac, batch = _run_case(kind, 1, subset)
    T, D = jac.shape[0], jac.shape[-1]
    v = torch.randn(len(batch), D, 3, dtype=torch.float64)
    run = adapter.state_jvp_run if direction == "jvp" else adapter.state_vjp_run
    steps = list(range(T)) if direction == "jvp" else list(range(T - 1, -1, -1))
    # in the columns layout (D, n, k)
    got = run(params, factors, steps, batch if subset else None, v.permute(1, 0, 2))
    assert got is not None, f"{kind}: no run loop"
    expected = v
    for t in steps:
        j = jac[t, batch]
        expected = (j if direction == "jvp" else j.transpose(-1, -2)) @ expected
    torch.testing.assert_close(got.permute(1, 0, 2), expected, rtol=1e-12, atol=1e-12)


def test_split_steps_gives_the_per_step_row_slices():
    """split_steps against the per-step slicing it replaces (_take_rows of each step's
    rows): the same values and views of the same memory, for named tuples with None and
    nested tuples, and no steps at all."""
    from typing import NamedTuple

    from gradscope.cells.base import _take_rows, split_steps

    class F(NamedTuple):
        a: torch.Tensor
        b: torch.Tensor | None
        c: tuple

    T, B = 5, 3
    f = F(torch.randn(T * B, 4), None, (torch.randn(T * B, 2, 2), torch.randn(T * B)))
    got = split_steps(f, T)
    assert len(got) == T
    for t, row in enumerate(got):
        ref = _take_rows(f, slice(t * B, (t + 1) * B))
        assert type(row) is F and row.b is None
        for x, y in ((row.a, ref.a), (row.c[0], ref.c[0]), (row.c[1], ref.c[1])):
            assert torch.equal(x, y) and x.data_ptr() == y.data_ptr()
    assert split_steps(f, 0) == [] and split_steps(None, 2) == [None, None]
