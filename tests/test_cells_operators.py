"""Matrix-free Jacobian products of every cell adapter against independent references.

``jvp_state`` / ``vjp_state`` / ``jvp_input`` / ``vjp_input`` (``J v``, ``Jᵀ u``, ``K v``,
``Kᵀ u`` with ``J = ∂s_t/∂s_{t-1}``, ``K = ∂s_t/∂x_t``) are compared with products of the
Jacobians from ``torch.func.jacrev`` of the *module's own forward* in float64
(``cell_cases.reference_jacobians``), never with the adapter's ``jacobian_state``. Every case
of ``cell_cases.CASES`` (all kinds, ``proj_size``, custom cells, float32) runs through one
harness; hypothesis adds random small configurations. The base class's ``torch.func``
default is checked against the closed forms by running a built-in cell's step through it.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from cell_cases import CASES, FAMILIES, TOL32, Case, Setup, make, reference_jacobians, rel_err
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import Tensor

import gradscope.cells.generic as generic_module
from gradscope.cells.base import BLOCK, DENSE, STRUCTURES, CellAdapter, Params
from gradscope.cells.generic import GenericAdapter
from gradscope.cells.gru import GRUAdapter
from gradscope.cells.lstm import LSTMAdapter
from gradscope.cells.vanilla import VanillaAdapter
from gradscope.errors import GradscopeError, ShapeError

# PyTorch warns that its oneDNN kernel has no proj_size; the fallback is the reference we want.
# torch.func.jvp's first call loads forward-AD decompositions through torch.jit.script, which
# torch itself deprecates (torch/_decomp/decompositions_for_jvp.py): torch's warning, not ours.
pytestmark = [
    pytest.mark.filterwarnings("ignore:LSTM with projections is not supported:UserWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
]

# float64: both sides are sums of O(D + I) well-scaled products evaluated in different orders
# (observed <= ~1e-15); 1e-12 still catches any wrong term. float32: TOL32 (see cell_cases).
OP_TOL64 = 1e-12

OPS = ("jvp_state", "vjp_state", "jvp_input", "vjp_input")
BUILTIN_KINDS = ("rnn_tanh", "rnn_relu", "lstm", "gru")


def block_rows(setup: Setup, op: str) -> int:
    """Rows of the block ``op`` takes: ``I`` for ``jvp_input``, else ``D``."""
    return setup.case.input_size if op == "jvp_input" else sum(setup.sizes)


def out_rows(setup: Setup, op: str) -> int:
    """Rows of what ``op`` returns: ``I`` for ``vjp_input``, else ``D``."""
    return setup.case.input_size if op == "vjp_input" else sum(setup.sizes)


def reference_product(op: str, ref_s: Tensor, ref_x: Tensor, m: Tensor) -> Tensor:
    """The product ``op`` with the dense float64 reference Jacobians."""
    jac = ref_s if op.endswith("state") else ref_x
    jac = jac.transpose(-1, -2) if op.startswith("vjp") else jac
    return torch.matmul(jac, m.double())


@functools.cache
def setup_and_reference(case: Case, seed: int = 0) -> tuple[Setup, Tensor, Tensor]:
    """The case instantiated and its jacrev Jacobians, built once per case (read-only)."""
    setup = make(case, seed=seed)
    return (setup, *reference_jacobians(setup))


def check_products(setup: Setup, ref_s: Tensor, ref_x: Tensor, k: int, seed: int = 1) -> dict:
    """Run the four products with ``k`` random columns; return the relative error of each."""
    gen = torch.Generator().manual_seed(seed)
    n, dtype = setup.case.batch, setup.case.dtype
    tol = OP_TOL64 if dtype == torch.float64 else TOL32
    errors = {}
    for op in OPS:
        m = torch.randn(n, block_rows(setup, op), k, dtype=dtype, generator=gen)
        got = getattr(setup.adapter, op)(setup.params, setup.x, setup.s, m)
        assert got.shape == (n, out_rows(setup, op), k), (setup.case.id, op)
        assert got.dtype == dtype and not got.requires_grad
        errors[op] = rel_err(got, reference_product(op, ref_s, ref_x, m))
        assert errors[op] <= tol, (setup.case.id, op, k, errors[op])
    return errors


# --------------------------------------------------------------------------- the harness
@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_products_match_jacrev_of_module(case: Case, k: int) -> None:
    check_products(*setup_and_reference(case), k=k)


@settings(max_examples=30, deadline=None)
# found by hypothesis: a tanh unit at a ≈ 8.4, where 1 - tanh² computed as 1 - t·t lost 2e-10
@example(
    kind="rnn_tanh", input_size=2, hidden=1, batch=1, bias=True, fused=False, proj=0, k=1, seed=5
)
@given(
    kind=st.sampled_from(sorted(FAMILIES)),
    input_size=st.integers(1, 5),
    hidden=st.integers(1, 6),
    batch=st.integers(1, 3),
    bias=st.booleans(),
    fused=st.booleans(),
    proj=st.integers(0, 5),
    k=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_products_match_jacrev(
    kind: str,
    input_size: int,
    hidden: int,
    batch: int,
    bias: bool,
    fused: bool,
    proj: int,
    k: int,
    seed: int,
) -> None:
    builtin = kind in BUILTIN_KINDS
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
    check_products(setup, *reference_jacobians(setup), k=k, seed=seed)


def _autograd_derivatives_exactly_rounded() -> bool:
    """Whether autograd's float64 tanh and sigmoid backward are exactly rounded at saturation.

    ``1 - t²`` and ``σ(1 - σ)`` of the rounded outputs, in exact rational arithmetic, at
    ``|a|`` from 5 to 15: true where the CPU kernels contract to FMA (AVX2, AVX-512, NEON).
    """
    from fractions import Fraction

    a = torch.linspace(5.0, 15.0, 101, dtype=torch.float64, requires_grad=True)
    for fn, exact in (
        (torch.tanh, lambda y: 1 - Fraction(y) ** 2),
        (torch.sigmoid, lambda y: Fraction(y) * (1 - Fraction(y))),
    ):
        y = fn(a)
        (g,) = torch.autograd.grad(y.sum(), a)
        if g.tolist() != [float(exact(v)) for v in y.detach().tolist()]:
            return False
    return True


@pytest.mark.parametrize("kind", BUILTIN_KINDS)
def test_products_of_saturated_units_match_jacrev(kind: str) -> None:
    """Weights 6× larger drive units into saturation (|a| > 8: φ', σ' below 1e-6), where
    derivatives of the form ``1 - t²`` and ``σ(1 - σ)`` must not cancel: ``1 - t·t`` with
    ``t·t`` rounded lost up to 4e-9 relative at |a| = 8 against autograd's exactly rounded
    one. Checked row by row (a saturated unit's row of ``J v`` is scaled by its tiny
    derivative, so a whole-product norm would not see its error)."""
    if not _autograd_derivatives_exactly_rounded():
        pytest.skip(
            "the reference is not exact here: this CPU's kernels (no FMA) round t·t before "
            "1 - t·t in autograd's own tanh (or sigmoid) backward"
        )
    setup = make(Case(kind, input_size=3, hidden=8, batch=4, bias=True), seed=3)
    with torch.no_grad():
        for p in setup.module.parameters():
            p.mul_(6.0)
    setup = dataclasses.replace(setup, params=setup.adapter.cell_params(setup.module))
    hid = setup.params["weight_hh"].shape[1]
    a = setup.x @ setup.params["weight_ih"].T + setup.s[:, :hid] @ setup.params["weight_hh"].T
    assert (a.abs() > 8).sum() >= 4  # saturated units present
    ref_s, ref_x = reference_jacobians(setup)
    gen = torch.Generator().manual_seed(0)
    for op in OPS:
        m = torch.randn(
            setup.case.batch, block_rows(setup, op), 3, dtype=torch.float64, generator=gen
        )
        got = getattr(setup.adapter, op)(setup.params, setup.x, setup.s, m)
        ref = reference_product(op, ref_s, ref_x, m)
        rows = (got - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-300)
        assert float(rows.max()) <= OP_TOL64, (kind, op, float(rows.max()))


# --------------------------------------------------------------------------- torch.func default
class StepOnly(CellAdapter):
    """A built-in adapter's step with none of its closed forms: the base class's defaults."""

    closed_form = False

    def __init__(self, inner: CellAdapter) -> None:
        self.inner = inner
        self.kind = "step_only:" + inner.kind

    def state_sizes(self, params: Params) -> tuple[int, ...]:
        return self.inner.state_sizes(params)

    def step(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        return self.inner.step(params, x, s)

    def jacobian_state(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        raise AssertionError("the products must not form the Jacobian")

    jacobian_input = jacobian_state


DEFAULT_CASES = [c for c in CASES if c.kind in BUILTIN_KINDS]


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=lambda c: c.id)
def test_base_class_default_equals_closed_form(case: Case) -> None:
    setup, ref_s, ref_x = setup_and_reference(case)
    default = StepOnly(setup.adapter)
    assert type(default).product is CellAdapter.product  # the torch.func path
    gen = torch.Generator().manual_seed(2)
    tol = OP_TOL64 if case.dtype == torch.float64 else TOL32
    for op in OPS:
        m = torch.randn(case.batch, block_rows(setup, op), 3, dtype=case.dtype, generator=gen)
        closed = getattr(setup.adapter, op)(setup.params, setup.x, setup.s, m)
        func = getattr(default, op)(setup.params, setup.x, setup.s, m)
        assert func.shape == closed.shape and func.dtype == closed.dtype
        assert not func.requires_grad
        assert rel_err(func, closed) <= tol, (case.id, op, rel_err(func, closed))
    # and the default on its own against the module's jacrev
    check_products(dataclasses.replace(setup, adapter=default), ref_s, ref_x, k=2)


def test_default_calls_the_users_cell_batched_without_vmap_or_jacrev(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TupleCell rejects anything but 2-D inputs (as under vmap); jacrev is not allowed."""

    def forbidden(*args, **kwargs):
        raise AssertionError("products must not use jacrev")

    monkeypatch.setattr(generic_module, "jacrev", forbidden)
    monkeypatch.setattr(torch.func, "jacrev", forbidden)
    monkeypatch.setattr(torch.func, "vmap", forbidden)
    setup, ref_s, ref_x = setup_and_reference(Case("custom_tuple", batch=2))
    assert isinstance(setup.adapter, GenericAdapter)
    check_products(setup, ref_s, ref_x, k=3)


@pytest.mark.parametrize("cls", [VanillaAdapter, LSTMAdapter, GRUAdapter])
def test_closed_forms_never_form_the_jacobian(cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("products must not form the dense Jacobian")

    monkeypatch.setattr(cls, "jacobian_state", forbidden)
    monkeypatch.setattr(cls, "jacobian_input", forbidden)
    kind = {VanillaAdapter: "rnn_tanh", LSTMAdapter: "lstm", GRUAdapter: "gru"}[cls]
    setup, ref_s, ref_x = setup_and_reference(Case(kind))
    check_products(setup, ref_s, ref_x, k=2)


# --------------------------------------------------------------------------- structure
def test_structures_are_declared() -> None:
    assert STRUCTURES == ("dense", "block", "diagonal", "scalar_identity")
    expected = {"rnn_tanh": DENSE, "rnn_relu": DENSE, "lstm": BLOCK, "gru": DENSE}
    for kind, structure in expected.items():
        assert make(Case(kind)).adapter.structure == structure
    for kind in ("custom_tuple", "custom_tensor", "linear"):
        assert make(Case(kind)).adapter.structure == DENSE
    assert CellAdapter.structure == DENSE


# --------------------------------------------------------------------------- arguments
SHAPE_KINDS = ("rnn_tanh", "lstm", "gru", "custom_tuple")


def _bad_blocks(n: int, rows: int) -> dict[str, Tensor]:
    return {
        "wrong-rows": torch.zeros(n, rows + 1, 2, dtype=torch.float64),
        "no-k-axis": torch.zeros(n, rows, dtype=torch.float64),
        "extra-axis": torch.zeros(n, rows, 2, 1, dtype=torch.float64),
        "wrong-n": torch.zeros(n + 1, rows, 2, dtype=torch.float64),
    }


@pytest.mark.parametrize("bad", ["wrong-rows", "no-k-axis", "extra-axis", "wrong-n"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("kind", SHAPE_KINDS)
def test_bad_block_raises_shape_error_naming_kind_and_shapes(kind: str, op: str, bad: str) -> None:
    setup = make(Case(kind))
    n, rows = setup.case.batch, block_rows(setup, op)
    block = _bad_blocks(n, rows)[bad]
    with pytest.raises(ShapeError) as err:
        getattr(setup.adapter, op)(setup.params, setup.x, setup.s, block)
    msg = str(err.value)
    assert setup.adapter.kind in msg and op in msg
    assert f"({n}, {rows}, k)" in msg and str(tuple(block.shape)) in msg
    assert isinstance(err.value, GradscopeError)


def test_block_that_is_not_a_tensor_raises_shape_error() -> None:
    setup = make(Case("lstm"))
    with pytest.raises(ShapeError, match=r"lstm: jvp_state .* got list"):
        setup.adapter.jvp_state(setup.params, setup.x, setup.s, [[1.0]])


ALL_KINDS = sorted(FAMILIES)


@pytest.mark.parametrize(("n", "k"), [(0, 3), (3, 0), (0, 0)])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_empty_batch_or_no_columns_gives_empty_products(kind: str, n: int, k: int) -> None:
    """N = 0 pairs or k = 0 columns is not an error (and never calls a user's cell)."""
    setup = make(Case(kind))
    x, s = setup.x[:n], setup.s[:n]
    for op in OPS:
        m = torch.randn(n, block_rows(setup, op), k, dtype=torch.float64)
        out = getattr(setup.adapter, op)(setup.params, x, s, m)
        assert out.shape == (n, out_rows(setup, op), k) and out.dtype == torch.float64


@pytest.mark.parametrize("where", ["x", "s"])
@pytest.mark.parametrize("kind", ["rnn_tanh", "rnn_relu", "lstm", "gru", "custom_tuple"])
def test_nonfinite_pair_gives_nan_not_an_error(kind: str, where: str) -> None:
    """A NaN input or state poisons its own pair's products only, like the Jacobians."""
    setup = make(Case(kind))
    x, s = setup.x.clone(), setup.s.clone()
    (x if where == "x" else s)[1] = float("nan")
    for op in OPS:
        m = torch.randn(3, block_rows(setup, op), 2, dtype=torch.float64)
        out = getattr(setup.adapter, op)(setup.params, x, s, m)
        assert torch.isnan(out[1]).any(), (op, out[1])
        assert torch.isfinite(out[[0, 2]]).all(), op


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "custom_tensor"])
def test_products_do_not_track_gradients(kind: str) -> None:
    """Inputs, weights and blocks that require grad give the same, untracked products."""
    setup, ref_s, ref_x = setup_and_reference(Case(kind))
    tracked = dataclasses.replace(
        setup,
        x=setup.x.clone().requires_grad_(),
        s=setup.s.clone().requires_grad_(),
        params={k: v.clone().requires_grad_() for k, v in setup.params.items()},
    )
    for op in OPS:
        m = torch.randn(3, block_rows(setup, op), 2, dtype=torch.float64, requires_grad=True)
        out = getattr(tracked.adapter, op)(tracked.params, tracked.x, tracked.s, m)
        assert not out.requires_grad
        assert rel_err(out, reference_product(op, ref_s, ref_x, m.detach())) <= OP_TOL64
    with torch.no_grad():  # the torch.func default still differentiates under no_grad
        check_products(setup, ref_s, ref_x, k=1)


@pytest.mark.parametrize("kind", ["lstm", "custom_tuple"])
def test_block_is_cast_to_the_pairs_dtype(kind: str) -> None:
    setup, ref_s, ref_x = setup_and_reference(Case(kind))
    m = torch.randn(3, sum(setup.sizes), 2, dtype=torch.float32)
    out = setup.adapter.jvp_state(setup.params, setup.x, setup.s, m)
    assert out.dtype == torch.float64
    assert rel_err(out, reference_product("jvp_state", ref_s, ref_x, m)) <= OP_TOL64
