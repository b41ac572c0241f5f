"""One shared harness over every cell adapter: step and Jacobians against independent references.

References (never the adapter's own output):

* ``step`` against the PyTorch module's own forward with the same weights (``nn.RNNCell``,
  ``nn.LSTMCell``, ``nn.GRUCell``; the fused ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` run on one
  step, which is how ``proj_size`` is covered; the user's module for custom cells);
* ``jacobian_state`` / ``jacobian_input`` against ``torch.func.jacrev`` of the module's own
  forward (``functional_call`` on the nn module, one sequence at a time) in float64.

Cases are data (:class:`Case`, in ``tests/cell_cases.py``, shared with
``tests/test_cells_operators.py``); hypothesis adds random small configurations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import torch
from cell_cases import (
    CASES,
    FAMILIES,
    JAC_TOL64,
    STEP_TOL64,
    TOL32,
    Case,
    LinearAdapter,
    LinearCell,
    Setup,
    TensorCell,
    TupleCell,
    make,
    module_step,
    reference_jacobians,
    rel_err,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.func import jacrev

import gradscope as gs
from gradscope.cells import (
    adapter_for,
    adapter_for_kind,
    is_fused,
    is_registered,
    register_cell,
)
from gradscope.cells import blocks as cells_blocks
from gradscope.cells.generic import GenericAdapter
from gradscope.cells.gru import GRUAdapter
from gradscope.cells.lstm import LSTMAdapter
from gradscope.errors import CellConventionError, GradscopeError, UnsupportedModuleError

# PyTorch warns that its oneDNN kernel has no proj_size; the fallback is the reference we want.
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported:UserWarning")


def check_step(setup: Setup) -> None:
    with torch.no_grad():
        got = setup.adapter.step(setup.params, setup.x, setup.s)
        ref = module_step(setup.case, setup.module, setup.x, setup.s, setup.sizes)
    assert got.shape == ref.shape == setup.s.shape
    assert got.dtype == setup.case.dtype
    tol = STEP_TOL64 if setup.case.dtype == torch.float64 else TOL32
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)


def check_jacobians(setup: Setup) -> None:
    ref_s, ref_x = reference_jacobians(setup)
    with torch.no_grad():
        jac_s = setup.adapter.jacobian_state(setup.params, setup.x, setup.s)
        jac_x = setup.adapter.jacobian_input(setup.params, setup.x, setup.s)
    n, d, i = setup.case.batch, sum(setup.sizes), setup.case.input_size
    assert jac_s.shape == (n, d, d)
    assert jac_x.shape == (n, d, i)
    assert jac_s.dtype == jac_x.dtype == setup.case.dtype
    tol = JAC_TOL64 if setup.case.dtype == torch.float64 else TOL32
    assert rel_err(jac_s, ref_s) <= tol, (setup.case.id, rel_err(jac_s, ref_s))
    assert rel_err(jac_x, ref_x) <= tol, (setup.case.id, rel_err(jac_x, ref_x))


# --------------------------------------------------------------------------- the harness
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_step_matches_module_forward(case: Case) -> None:
    check_step(make(case))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_jacobians_match_jacrev_of_module(case: Case) -> None:
    check_jacobians(make(case))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_layout_round_trip(case: Case) -> None:
    setup = make(case)
    adapter = setup.adapter
    assert len(adapter.state_names) == len(setup.sizes)
    assert adapter.state_size(setup.params) == setup.s.shape[1]
    assert adapter.input_size(setup.params) == case.input_size
    native = adapter.unpack_state(setup.s, setup.params)
    assert torch.equal(adapter.pack_state(native), setup.s)
    assert isinstance(native, tuple) == FAMILIES[case.kind][1]


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(sorted(FAMILIES)),
    input_size=st.integers(1, 5),
    hidden=st.integers(1, 6),
    batch=st.integers(1, 3),
    bias=st.booleans(),
    fused=st.booleans(),
    proj=st.integers(0, 5),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_closed_forms_match_jacrev(
    kind: str,
    input_size: int,
    hidden: int,
    batch: int,
    bias: bool,
    fused: bool,
    proj: int,
    seed: int,
) -> None:
    builtin = kind in ("rnn_tanh", "rnn_relu", "lstm", "gru")
    case = Case(
        kind,
        input_size=input_size,
        hidden=hidden,
        batch=batch,
        bias=bias,
        fused=fused and builtin,
        proj_size=proj if kind == "lstm" and proj < hidden else 0,
    )
    setup = make(case, seed=seed)
    check_step(setup)
    check_jacobians(setup)


# --------------------------------------------------------------------------- LSTM / GRU specifics
def test_lstm_state_layout_with_projection() -> None:
    module = nn.LSTM(3, 5, proj_size=2)
    adapter = adapter_for(module)
    params = adapter.fused_params(module, 0, False)
    assert isinstance(adapter, LSTMAdapter)
    assert adapter.state_names == ("h", "c")
    assert adapter.state_sizes(params) == (2, 5)
    assert adapter.input_size(params) == 3


def test_lstm_cell_state_jacobian_block_is_forget_gate() -> None:
    """∂c_t/∂c_{t-1} = diag(f) with f = σ(a_f), computed here from the raw gate rows."""
    setup = make(Case("lstm", hidden=4))
    p, x, s = setup.params, setup.x, setup.s
    h = s[:, :4]
    a = x @ p["weight_ih"].T + p["bias_ih"] + h @ p["weight_hh"].T + p["bias_hh"]
    f = torch.sigmoid(a[:, 4:8])
    with torch.no_grad():
        block = setup.adapter.jacobian_state(p, x, s)[:, 4:, 4:]
    torch.testing.assert_close(block, torch.diag_embed(f), rtol=1e-14, atol=1e-15)


def test_gru_adapter_registered_for_both_modules() -> None:
    assert isinstance(adapter_for(nn.GRU(2, 3)), GRUAdapter)
    assert isinstance(adapter_for(nn.GRUCell(2, 3)), GRUAdapter)
    assert is_fused(nn.GRU(2, 3)) and not is_fused(nn.GRUCell(2, 3))
    assert is_fused(nn.LSTM(2, 3)) and not is_fused(nn.LSTMCell(2, 3))
    assert adapter_for_kind("lstm") is adapter_for(nn.LSTMCell(2, 3))
    assert adapter_for_kind("gru") is adapter_for(nn.GRU(2, 3))

    class MyLSTM(nn.LSTM):
        pass

    assert isinstance(adapter_for(MyLSTM(2, 3)), LSTMAdapter) and is_fused(MyLSTM(2, 3))


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_nonfinite_input_gives_nan_not_an_error(kind: str) -> None:
    setup = make(Case(kind))
    x = setup.x.clone()
    x[1] = float("nan")
    with torch.no_grad():
        jac_s = setup.adapter.jacobian_state(setup.params, x, setup.s)
        jac_x = setup.adapter.jacobian_input(setup.params, x, setup.s)
        nxt = setup.adapter.step(setup.params, x, setup.s)
    assert torch.isnan(nxt[1]).all() and torch.isfinite(nxt[[0, 2]]).all()
    assert torch.isnan(jac_s[1]).any() and torch.isfinite(jac_s[[0, 2]]).all()
    assert torch.isnan(jac_x[1]).any() and torch.isfinite(jac_x[[0, 2]]).all()


BLOCKED_CASES = [
    Case("lstm", batch=5),
    Case("lstm", proj_size=2, hidden=4, batch=5),
    Case("gru", batch=5, bias=False),
    Case("lstm", batch=4, dtype=torch.float32),
]


@pytest.mark.parametrize("case", BLOCKED_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("per_block", [1, 2])
@pytest.mark.parametrize("numpy_output", [False, True], ids=["torch-alloc", "numpy-alloc"])
def test_cache_blocked_path_matches_jacrev(
    case: Case, per_block: int, numpy_output: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tiny cache blocks force the multi-block path (1 or 2 sequences per block, with a
    ragged last block for 2) and a zero threshold forces NumPy-allocated outputs: the paths
    that only large batches take."""
    setup = make(case)
    per_item = sum(setup.sizes) ** 2 * setup.x.element_size()
    monkeypatch.setattr(cells_blocks, "CPU_BLOCK_BYTES", per_block * per_item)
    monkeypatch.setattr(cells_blocks, "HUGE_OUTPUT_BYTES", 0 if numpy_output else 2**62)
    assert cells_blocks.cache_block_size(case.batch, per_item, setup.x.device) == per_block
    check_jacobians(setup)


def test_single_block_numpy_output_is_zeroed(monkeypatch: pytest.MonkeyPatch) -> None:
    """One block writes straight into a NumPy-allocated (uninitialised) output; the
    structural zeros of the c columns must still be exact zeros."""
    monkeypatch.setattr(cells_blocks, "HUGE_OUTPUT_BYTES", 0)
    setup = make(Case("lstm", batch=3, hidden=4))
    check_jacobians(setup)
    jac = setup.adapter.jacobian_state(setup.params, setup.x, setup.s)
    off_diagonal = ~torch.eye(4, dtype=torch.bool)
    assert (jac[:, :, 4:][:, :4][:, off_diagonal] == 0).all()
    assert (jac[:, 4:, 4:][:, off_diagonal] == 0).all()


def test_closed_forms_accept_inputs_that_require_grad() -> None:
    """Recorded tensors that still require grad give the same (untracked) Jacobians."""
    for kind in ("lstm", "gru"):
        setup = make(Case(kind))
        x, s = setup.x.clone().requires_grad_(), setup.s.clone().requires_grad_()
        params = {k: v.clone().requires_grad_() for k, v in setup.params.items()}
        ref_s, ref_x = reference_jacobians(setup)
        jac_s = setup.adapter.jacobian_state(params, x, s)
        jac_x = setup.adapter.jacobian_input(params, x, s)
        assert rel_err(jac_s, ref_s) <= JAC_TOL64 and rel_err(jac_x, ref_x) <= JAC_TOL64
        assert not jac_s.requires_grad


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "custom_tuple"])
def test_empty_batch_gives_empty_jacobians(kind: str) -> None:
    """Selecting no steps (N = 0) is not an error: shapes (0, D, D) and (0, D, I)."""
    setup = make(Case(kind))
    d, i = sum(setup.sizes), setup.case.input_size
    x, s = setup.x[:0], setup.s[:0]
    assert setup.adapter.jacobian_state(setup.params, x, s).shape == (0, d, d)
    assert setup.adapter.jacobian_input(setup.params, x, s).shape == (0, d, i)


# --------------------------------------------------------------------------- generic adapter
def test_generic_adapter_identity() -> None:
    setup = make(Case("custom_tuple", hidden=4))
    adapter = setup.adapter
    assert isinstance(adapter, GenericAdapter)
    assert adapter.kind == f"custom:{TupleCell.__module__}.TupleCell"
    assert adapter.closed_form is False
    assert adapter.state_names == ("s0", "s1")
    assert adapter.state_sizes(setup.params) == (4, 3)
    assert set(setup.params) == {"mix.weight", "mix.bias", "out.weight", "out.bias", "leak"}
    assert not any(p.requires_grad for p in setup.params.values())
    tensor = make(Case("custom_tensor")).adapter
    assert tensor.state_names == ("h",)


def test_generic_step_uses_given_params_and_buffers() -> None:
    """The step runs on the params dict (recorded weights), not the live module's tensors."""
    setup = make(Case("custom_tuple"))
    recorded = {k: v.clone() for k, v in setup.params.items()}
    with torch.no_grad():
        before = setup.adapter.step(recorded, setup.x, setup.s)
        for p in setup.module.parameters():
            p.add_(1.0)  # training moves on ...
        setup.module.leak.fill_(0.0)
        after = setup.adapter.step(recorded, setup.x, setup.s)  # ... the recording does not
        live = setup.adapter.step(setup.adapter.cell_params(setup.module), setup.x, setup.s)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert not torch.allclose(live, before)


def test_generic_one_element_tuple_state_stays_a_tuple() -> None:
    class OneTuple(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(5, 3, dtype=torch.float64)

        def forward(self, x: Tensor, state: tuple[Tensor]) -> tuple[Tensor]:
            return (torch.tanh(self.lin(torch.cat([x, state[0]], -1))),)

    cell = OneTuple()
    x, h = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    adapter = GenericAdapter.from_call(cell, x, (h,), cell(x, (h,)))
    assert adapter.state_names == ("s0",)
    assert isinstance(adapter.unpack_state(h), tuple)
    params = adapter.cell_params(cell)
    jac = adapter.jacobian_state(params, x, h)
    w = cell.lin.weight.detach()[:, 2:]
    ref = (1 - adapter.step(params, x, h) ** 2).unsqueeze(-1) * w  # tanh' · W_h
    torch.testing.assert_close(jac, ref, rtol=1e-13, atol=1e-14)


def _bad_calls() -> list[tuple[str, Callable[[Tensor, Tensor], Any], str]]:
    """(id, forward(x, h), a fragment the error message must contain)."""
    return [
        ("returns-output-and-state", lambda x, h: (h @ torch.ones(3, 3), h), "Tensor(4, 3)"),
        ("returns-dict", lambda x, h: {"h": h}, "dict"),
        ("returns-wrong-width", lambda x, h: h[:, :2], "Tensor(4, 2)"),
        ("returns-none", lambda x, h: None, "NoneType"),
    ]


@pytest.mark.parametrize("bad", _bad_calls(), ids=lambda b: b[0])
def test_generic_convention_errors_name_the_class_and_convention(bad) -> None:
    _, forward, fragment = bad

    class BadCell(nn.Module):
        def forward(self, x: Tensor, h: Tensor) -> Any:
            return forward(x, h)

    cell = BadCell()
    x, h = torch.randn(4, 2), torch.randn(4, 3)
    with pytest.raises(CellConventionError) as err:
        GenericAdapter.from_call(cell, x, h, cell(x, h))
    msg = str(err.value)
    assert "BadCell" in msg and fragment in msg and "forward(x_t, state) -> state" in msg
    assert isinstance(err.value, GradscopeError)


@pytest.mark.parametrize(
    ("x", "state", "fragment"),
    [
        (torch.randn(2, 4, 3), torch.randn(2, 3), "2-D Tensor (B, I)"),
        (torch.randn(4, 3), None, "initial state explicitly"),
        (torch.randn(4, 3), torch.randn(5, 3), "state part 0"),
        (torch.randint(0, 5, (4, 3)), torch.randn(4, 3), "floating point"),
        (torch.randn(4, 3), [torch.randn(4, 3), "c"], "state part 1"),
    ],
)
def test_generic_bad_arguments(x: Any, state: Any, fragment: str) -> None:
    cell = TensorCell(3, 3)
    with pytest.raises(CellConventionError, match="TensorCell") as err:
        GenericAdapter.from_call(cell, x, state, state)
    assert fragment in str(err.value)


def test_generic_step_validates_later_calls() -> None:
    """A cell whose return changes shape after the first call is caught at step time."""

    class Shrinking(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def forward(self, x: Tensor, h: Tensor) -> Tensor:
            self.calls += 1
            return h if self.calls == 1 else h[:, :1]

    cell = Shrinking()
    x, h = torch.randn(2, 1), torch.randn(2, 3)
    adapter = GenericAdapter.from_call(cell, x, h, cell(x, h))
    with pytest.raises(CellConventionError, match=r"Shrinking.*Tensor\(2, 1\).*Tensor\(2, 3\)"):
        adapter.step({}, x, h)


def test_generic_adapter_is_not_fused() -> None:
    setup = make(Case("custom_tensor"))
    with pytest.raises(GradscopeError, match="one-step cell"):
        setup.adapter.fused_params(setup.module, 0, False)


# --------------------------------------------------------------------------- registry
@pytest.mark.usefixtures("clean_registry")
def test_register_user_adapter_with_closed_forms() -> None:
    register_cell(LinearCell, LinearAdapter())
    cell = LinearCell(2, 3).double()
    adapter = adapter_for(cell)
    assert isinstance(adapter, LinearAdapter) and is_registered(cell) and not is_fused(cell)
    assert adapter_for_kind("test_linear") is adapter
    # Jacobian of h = W h + U x is W (DESIGN.md correctness reference), whatever x and h are.
    params = adapter.cell_params(cell)
    x, h = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    jac = jacrev(lambda h_: cell(x, h_).sum(0))(h).permute(1, 0, 2)
    torch.testing.assert_close(adapter.jacobian_state(params, x, h), jac, rtol=1e-14, atol=0)
    torch.testing.assert_close(jac[0], cell.weight_hh.detach(), rtol=1e-14, atol=0)
    # the public name is the same function
    assert gs.register_cell is register_cell


@pytest.mark.usefixtures("clean_registry")
def test_register_duplicate_needs_overwrite() -> None:
    register_cell(LinearCell, LinearAdapter())
    with pytest.raises(GradscopeError, match=r"LinearCell already has the adapter.*overwrite=True"):
        register_cell(LinearCell, LinearAdapter())
    replacement = LinearAdapter()
    register_cell(LinearCell, replacement, overwrite=True)
    assert adapter_for(LinearCell(1, 1)) is replacement

    class Other(LinearAdapter):
        kind = "test_linear"  # same kind, different type, no overwrite -> kind clash

    with pytest.raises(GradscopeError, match="kind 'test_linear' is taken"):
        register_cell(TensorCell, Other())


@pytest.mark.usefixtures("clean_registry")
@pytest.mark.parametrize(
    ("module_type", "adapter", "fragment"),
    [
        (LinearCell, object(), "must be a gradscope.CellAdapter instance"),
        (LinearCell, LinearAdapter, "must be a gradscope.CellAdapter instance"),
        ("LinearCell", LinearAdapter(), "must be an nn.Module subclass"),
        (int, LinearAdapter(), "must be an nn.Module subclass"),
    ],
)
def test_register_rejects_bad_arguments(module_type: Any, adapter: Any, fragment: str) -> None:
    with pytest.raises(GradscopeError, match=fragment):
        register_cell(module_type, adapter)


def test_unknown_module_type_message_names_class_and_register_cell() -> None:
    cell = TensorCell(2, 2)
    assert not is_registered(cell)
    with pytest.raises(UnsupportedModuleError) as err:
        adapter_for(cell)
    msg = str(err.value)
    assert "TensorCell" in msg and "register_cell(TensorCell" in msg and "cells=[" in msg


def test_unknown_kind_message() -> None:
    with pytest.raises(UnsupportedModuleError, match=r"'no_such_kind'.*register_cell"):
        adapter_for_kind("no_such_kind")


def test_builtin_case_table_covers_every_builtin_kind() -> None:
    """The harness must not silently skip a registered built-in family."""
    covered = {replace(c, dtype=torch.float64).kind for c in CASES}
    for module in (
        nn.RNNCell(1, 1),
        nn.RNNCell(1, 1, nonlinearity="relu"),
        nn.LSTM(1, 1),
        nn.GRU(1, 1),
    ):
        assert adapter_for(module).kind in covered
