"""Calls hooks do not see, and the messages that name the way out.

* ``cell.forward(x, h)`` called directly (as ``ncps``' wrappers run their ``rnn_cell``) is
  recorded like ``cell(x, h)``: the states are the cell's own outputs, every hook sees each
  call once, the instance's ``forward`` is restored afterwards, also when the block raises;
* a named cell that never ran while its parent did says why it may not have, and what to do;
* an unknown module, an empty recording and a cell called the wrong way name every way in
  (``register_step``, ``register_sequence``, the examples) and show the shapes they saw;
* ``torch.func`` Jacobians of a user's cell are plain detached tensors, also for a cell that
  keeps its parameters in a dict (which gets a warning: ``functional_call`` cannot swap them).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import gradscope as gs
from gradscope.cells import adapter_for

T, B, I, H = 6, 2, 3, 4


class Loop(nn.Module):
    """Runs ``cell`` over time the way ``ncps`` does: ``cell.forward(x_t, h)``, or by ``how``."""

    def __init__(self, cell: nn.Module, how: str = "forward"):
        super().__init__()
        self.cell, self.how = cell, how

    def forward(self, x):
        h = torch.zeros(x.shape[0], H, dtype=x.dtype)
        outs = []
        for t in range(x.shape[1]):
            if self.how == "forward":
                h = self.cell.forward(x[:, t], h)
            elif self.how == "unbound":
                h = type(self.cell).forward(self.cell, x[:, t], h)
            else:
                h = self.cell(x[:, t], h)
            outs.append(h)
        return torch.stack(outs, 1)


class Tanh(nn.Module):
    """A user's cell, no adapter registered."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w = nn.Parameter(torch.randn(H, H) / 2)
        self.u = nn.Parameter(torch.randn(H, I))

    def forward(self, x, h):
        return torch.tanh(h @ self.w.T + x @ self.u.T)


def _x(dtype=torch.float64):
    return torch.randn(B, T, I, dtype=dtype, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("registered", [True, False], ids=["GRUCell", "custom"])
def test_direct_forward_calls_are_recorded_once_each_and_restored(registered):
    torch.manual_seed(0)
    cell = nn.GRUCell(I, H).double() if registered else Tanh().double()
    model = Loop(cell)
    calls = []
    handle = cell.register_forward_hook(lambda m, a, o: calls.append(1))
    x = _x()
    with torch.no_grad():
        want = model(x)
    calls.clear()
    with gs.record(model, cells=None if registered else [cell]) as rec:
        model(x)
        assert len(calls) == T  # the user's hook saw each direct call once
    handle.remove()
    layer = rec.trace.layers[0]
    assert layer.name == "cell" and layer.T == T and layer.meta["replay_error"] < 1e-12
    torch.testing.assert_close(layer.states[1:].transpose(0, 1), want, rtol=0, atol=1e-15)
    assert "forward" not in vars(cell) and not cell._forward_pre_hooks


def test_forward_is_restored_when_the_block_raises():
    cell = Tanh()
    model = Loop(cell)
    with pytest.raises(RuntimeError, match="boom"), gs.record(model, cells=[cell]):
        model(_x(torch.float32))
        raise RuntimeError("boom")
    assert "forward" not in vars(cell) and not cell._forward_pre_hooks
    assert not cell._forward_hooks


def test_a_named_cell_that_never_ran_while_its_parent_did_says_why():
    cell = Tanh()
    with pytest.raises(gs.NoRecurrentModuleError) as err:
        gs.trace(Loop(cell, "unbound"), _x(torch.float32), cells=[cell])
    text = str(err.value)
    assert "cell (Tanh) never ran while its parent the model (Loop) did" in text
    assert "cell.forward(x, state) are both seen" in text
    assert "type(cell).forward(cell, ...)" in text and "gs.register_step" in text

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = Loop(Tanh(), "call"), Loop(Tanh(), "unbound")

        def forward(self, x):
            return self.a(x) + self.b(x)

    model = Two()
    with pytest.warns(gs.GradscopeWarning, match=r"b.cell \(Tanh\) never ran while its parent b"):
        trace = gs.trace(model, _x(torch.float32), cells=[model.a.cell, model.b.cell])
    assert [rec.name for rec in trace.layers] == ["a.cell"]


class Sequence(nn.Module):
    """A whole-sequence module gradscope does not know (a cumulative sum of a projection)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 16)

    def forward(self, x, h=None):
        return torch.tanh(self.lin(x)).cumsum(1)


class Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.seq = Sequence()

    def forward(self, x):
        return self.seq(x)


WAYS = ("register_step", "register_sequence", "examples/mingru.py", "examples/lru.py")


def test_unknown_modules_name_every_way_in():
    with pytest.raises(gs.UnsupportedModuleError) as err:
        adapter_for(Sequence())
    assert all(w in str(err.value) for w in (*WAYS, "cells=[...]", "register_cell"))
    with pytest.raises(gs.NoRecurrentModuleError) as err:
        gs.trace(Holder(), torch.randn(2, 10, 8))
    assert all(w in str(err.value) for w in (*WAYS, "cells=[model.my_cell]", "register_cell"))


def test_convention_errors_show_the_shapes_they_saw():
    model = Holder()
    with pytest.raises(gs.CellConventionError) as err:
        gs.trace(model, torch.randn(2, 10, 8), cells=[model.seq])
    text = str(err.value)
    assert "x (B, T, I) = (2, 10, 8), state None" in text
    assert all(w in text for w in WAYS)

    class TimedCell(nn.Module):  # forward(x, h, dt): one argument too many
        def forward(self, x, h, dt):
            return torch.tanh(h + dt)

    class Timed(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = TimedCell()

        def forward(self, x):
            h = torch.zeros(2, H)
            for t in range(x.shape[1]):
                h = self.cell.forward(x[:, t], h, 0.5)
            return h

    model = Timed()
    with pytest.raises(gs.CellConventionError) as err:
        gs.trace(model, torch.randn(2, 5, I), cells=[model.cell])
    assert "3 arguments: x_t (B, I) = (2, 3), state (B, D) = (2, 4), float" in str(err.value)


def test_a_cell_inside_a_module_recorded_whole_is_refused():
    ncps = pytest.importorskip("ncps.torch")
    model = nn.Sequential(ncps.CfC(I, H))
    with pytest.raises(gs.GradscopeError, match=r"rnn_cell \(CfCCell\), which runs inside 0"):
        gs.record(model, cells=[model[0].rnn_cell])
    assert "forward" not in vars(model[0].rnn_cell)


class DictCell(nn.Module):
    """Keeps its parameters in a dict too, as ncps' LTCCell does (``self._params``)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w = nn.Parameter(torch.randn(H, H) / 2)
        self.u = nn.Parameter(torch.randn(H, I))
        self._params = {"w": self.w, "u": self.u}

    def forward(self, x, h):
        return torch.tanh(h @ self._params["w"].T + x @ self._params["u"].T)


def test_torch_func_jacobians_are_plain_detached_tensors():
    cell = DictCell().double()
    model = Loop(cell, "call")
    x = _x()
    with pytest.warns(gs.GradscopeWarning, match=r"_params\['w'\].*live weights"):
        layer = gs.trace(model, x, cells=[cell]).layers[0]
    for wrt in ("state", "input"):
        jac = layer.jacobians(wrt=wrt)
        assert not jac.requires_grad and jac.grad_fn is None
        np.asarray(jac)  # what the report and the analysis do with it
    s, u = layer.states[:-1].flatten(0, 1), layer.inputs.flatten(0, 1)

    def step(si, ui):
        return torch.tanh(si @ cell.w.detach().T + ui @ cell.u.detach().T)

    want = torch.vmap(torch.func.jacrev(step))(s, u).unflatten(0, (T, B))
    torch.testing.assert_close(layer.jacobians(), want, rtol=1e-12, atol=1e-14)
    plain = Loop(Tanh(), "call")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a cell with its parameters in place: no warning
        assert gs.trace(plain, _x(torch.float32), cells=[plain.cell]).layers
