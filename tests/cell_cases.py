"""The cases and references every cell-adapter test file shares (imported as ``cell_cases``).

Cases are data (:class:`Case`, :data:`CASES`); :func:`make` instantiates one (module, adapter,
params, a random ``(x, s)`` batch); the references never use the adapter under test:

* :func:`module_step` runs the PyTorch module's own forward (the fused ``nn.RNN`` /
  ``nn.LSTM`` / ``nn.GRU`` on a sequence of one step, which is how ``proj_size`` is covered;
  the user's module for custom cells);
* :func:`reference_jacobians` is ``torch.func.jacrev`` of that forward in float64, one sequence
  at a time.

Used by ``tests/test_cells.py`` (step, dense Jacobians, registry) and
``tests/test_cells_operators.py`` (matrix-free Jacobian products).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from gradscope.cells import adapter_for
from gradscope.cells.base import CellAdapter, Params
from gradscope.cells.generic import GenericAdapter

# Tolerances.
# float64, step: adapter and module evaluate the same O(I + H) sums in a different order, so they
# differ by a few units of roundoff (2.2e-16) times the sum's length; 1e-12 leaves >100x margin
# at the sizes used here while still catching any wrong term (errors of O(1)).
STEP_TOL64 = 1e-12
# float64, Jacobians: relative Frobenius error; both sides are O(10) roundoffs of well-scaled
# products (observed ~1e-16); DESIGN.md's contract is 1e-10.
JAC_TOL64 = 1e-10
# float32: unit roundoff 6e-8; sums of <= 16 terms and a few activations give errors ~1e-6 of
# the values, so 2e-5 absolute/relative on O(1) states and Jacobians.
TOL32 = 2e-5


def rel_err(a: Tensor, ref: Tensor) -> float:
    """Relative Frobenius error ``‖a - ref‖ / ‖ref‖`` in float64."""
    a, ref = a.double(), ref.double()
    return float((a - ref).norm() / ref.norm().clamp_min(1e-300))


# --------------------------------------------------------------------------- user cells
class TupleCell(nn.Module):
    """An MLP-ish cell with a tuple state ``(h, m)`` and a buffer; batched inputs only."""

    def __init__(self, input_size: int, hidden: int, memory: int) -> None:
        super().__init__()
        self.mix = nn.Linear(input_size + hidden + memory, hidden)
        self.out = nn.Linear(hidden, memory)
        self.register_buffer("leak", torch.linspace(0.2, 0.9, memory))

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        if x.ndim != 2:
            raise ValueError(f"TupleCell only accepts batched (B, I) inputs, got {x.ndim}-D")
        h, m = state
        h_new = torch.tanh(self.mix(torch.cat([x, h, m], dim=-1)))
        m_new = self.leak * m + (1 - self.leak) * torch.sigmoid(self.out(h_new)) * h_new.mean(
            -1, True
        )
        return h_new, m_new


class TensorCell(nn.Module):
    """A two-layer MLP cell with a Tensor state; batched inputs only."""

    def __init__(self, input_size: int, hidden: int) -> None:
        super().__init__()
        self.inp = nn.Linear(input_size, 2 * hidden)
        self.rec = nn.Linear(hidden, 2 * hidden, bias=False)
        self.back = nn.Linear(2 * hidden, hidden)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        if x.ndim != 2 or h.ndim != 2:
            raise ValueError("TensorCell only accepts batched (B, ·) inputs")
        return torch.tanh(self.back(nn.functional.softplus(self.inp(x) + self.rec(h)))) + 0.5 * h


class LinearCell(nn.Module):
    """``h_t = W h_{t-1} + U x_t``: Jacobians ``W`` and ``U`` (DESIGN.md's reference cell)."""

    def __init__(self, input_size: int, hidden: int) -> None:
        super().__init__()
        self.weight_hh = nn.Parameter(torch.randn(hidden, hidden) / hidden**0.5)
        self.weight_ih = nn.Parameter(torch.randn(hidden, input_size))

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        return h @ self.weight_hh.T + x @ self.weight_ih.T


class LinearAdapter(CellAdapter):
    """A user adapter with closed forms, registered through ``register_cell``."""

    kind = "test_linear"
    state_names = ("h",)

    def state_sizes(self, params: Params) -> tuple[int, ...]:
        return (int(params["weight_hh"].shape[0]),)

    def step(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        return s @ params["weight_hh"].T + x @ params["weight_ih"].T

    def jacobian_state(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        return params["weight_hh"].expand(x.shape[0], -1, -1)

    def jacobian_input(self, params: Params, x: Tensor, s: Tensor) -> Tensor:
        return params["weight_ih"].expand(x.shape[0], -1, -1)


# --------------------------------------------------------------------------- cases as data
@dataclass(frozen=True)
class Case:
    """One configuration of one cell family."""

    kind: str  # rnn_tanh | rnn_relu | lstm | gru | custom_tuple | custom_tensor | linear
    input_size: int = 3
    hidden: int = 4
    batch: int = 3
    bias: bool = True
    fused: bool = False  # build nn.RNN/LSTM/GRU and run one step, instead of the *Cell
    proj_size: int = 0  # LSTM only (implies fused)
    dtype: torch.dtype = torch.float64

    @property
    def id(self) -> str:
        parts = [self.kind, f"I{self.input_size}H{self.hidden}B{self.batch}"]
        parts += ["fused"] if self.fused else []
        parts += [f"P{self.proj_size}"] if self.proj_size else []
        parts += [] if self.bias else ["nobias"]
        parts += [] if self.dtype == torch.float64 else [str(self.dtype).split(".")[-1]]
        return "-".join(parts)


def _rnn(case: Case, nonlinearity: str) -> nn.Module:
    args = (case.input_size, case.hidden)
    if case.fused:
        return nn.RNN(*args, nonlinearity=nonlinearity, bias=case.bias)
    return nn.RNNCell(*args, nonlinearity=nonlinearity, bias=case.bias)


def _lstm(case: Case) -> nn.Module:
    args = (case.input_size, case.hidden)
    if case.fused or case.proj_size:
        return nn.LSTM(*args, bias=case.bias, proj_size=case.proj_size)
    return nn.LSTMCell(*args, bias=case.bias)


def _gru(case: Case) -> nn.Module:
    args = (case.input_size, case.hidden)
    return nn.GRU(*args, bias=case.bias) if case.fused else nn.GRUCell(*args, bias=case.bias)


#: kind -> (module builder, native state is a tuple)
FAMILIES: dict[str, tuple[Callable[[Case], nn.Module], bool]] = {
    "rnn_tanh": (lambda c: _rnn(c, "tanh"), False),
    "rnn_relu": (lambda c: _rnn(c, "relu"), False),
    "lstm": (_lstm, True),
    "gru": (_gru, False),
    "custom_tuple": (lambda c: TupleCell(c.input_size, c.hidden, max(1, c.hidden - 1)), True),
    "custom_tensor": (lambda c: TensorCell(c.input_size, c.hidden), False),
    "linear": (lambda c: LinearCell(c.input_size, c.hidden), False),
}

CASES = [
    Case("rnn_tanh"),
    Case("rnn_tanh", fused=True),
    Case("rnn_tanh", bias=False, input_size=1, hidden=5),
    Case("rnn_relu"),
    Case("rnn_relu", fused=True, bias=False),
    Case("lstm"),
    Case("lstm", bias=False),
    Case("lstm", fused=True, input_size=5, hidden=2),
    Case("lstm", proj_size=2, hidden=5),
    Case("lstm", proj_size=1, hidden=3, bias=False),
    Case("lstm", hidden=1, input_size=1, batch=1),
    Case("gru"),
    Case("gru", bias=False),
    Case("gru", fused=True, hidden=6),
    Case("gru", fused=True, bias=False, input_size=1, batch=1),
    Case("custom_tuple"),
    Case("custom_tensor", hidden=5),
    Case("custom_tensor", batch=1, hidden=1, input_size=1),
    Case("linear"),
    Case("lstm", dtype=torch.float32),
    Case("lstm", proj_size=2, dtype=torch.float32),
    Case("gru", dtype=torch.float32),
    Case("rnn_tanh", dtype=torch.float32),
    Case("custom_tuple", dtype=torch.float32),
]


@dataclass
class Setup:
    """A case instantiated: the module, its adapter and params, and an input batch."""

    case: Case
    module: nn.Module
    adapter: CellAdapter
    params: Params
    x: Tensor
    s: Tensor
    sizes: tuple[int, ...]


def _native(s: Tensor, sizes: tuple[int, ...], as_tuple: bool) -> Any:
    parts = torch.split(s, list(sizes), dim=-1)
    return tuple(parts) if as_tuple else parts[0]


def module_step(case: Case, fwd: Callable[..., Any], x: Tensor, s: Tensor, sizes: tuple[int, ...]):
    """Run the module's own forward on a batch: flat ``s (N, D)`` in, flat ``(N, D)`` out.

    Fused modules are run on a sequence of length one (time dimension added and removed);
    their final state is the one-step state.
    """
    as_tuple = FAMILIES[case.kind][1]
    native = _native(s, sizes, as_tuple)
    if case.fused or case.proj_size:
        native = tuple(p.unsqueeze(0) for p in native) if as_tuple else native.unsqueeze(0)
        _, out = fwd(x.unsqueeze(0), native)
        out = tuple(p[0] for p in out) if as_tuple else out[0]
    else:
        out = fwd(x, native)
    return torch.cat(out, dim=-1) if as_tuple else out


def make(case: Case, seed: int = 0) -> Setup:
    """Build the module and its adapter for ``case``, with a random input batch."""
    torch.manual_seed(seed)
    module = FAMILIES[case.kind][0](case).to(case.dtype)
    with torch.no_grad():  # larger weights than the default init: saturating, non-trivial gates
        for p in module.parameters():
            p.mul_(2.0)
    if case.kind == "linear":
        adapter: CellAdapter = LinearAdapter()
    elif case.kind.startswith("custom"):
        adapter = None  # type: ignore[assignment]
    else:
        adapter = adapter_for(module)
    if adapter is None:
        probe_sizes = (
            (case.hidden, max(1, case.hidden - 1))
            if case.kind == "custom_tuple"
            else (case.hidden,)
        )
        s0 = torch.randn(case.batch, sum(probe_sizes), dtype=case.dtype)
        x0 = torch.randn(case.batch, case.input_size, dtype=case.dtype)
        native = _native(s0, probe_sizes, FAMILIES[case.kind][1])
        adapter = GenericAdapter.from_call(module, x0, native, module(x0, native))
        params = adapter.cell_params(module)
    elif case.fused or case.proj_size:
        params = adapter.fused_params(module, 0, False)
    else:
        params = adapter.cell_params(module)
    sizes = tuple(adapter.state_sizes(params))
    x = torch.randn(case.batch, case.input_size, dtype=case.dtype)
    s = torch.randn(case.batch, sum(sizes), dtype=case.dtype)
    return Setup(case, module, adapter, params, x, s, sizes)


def reference_jacobians(setup: Setup) -> tuple[Tensor, Tensor]:
    """``(N, D, D)`` and ``(N, D, I)`` by ``jacrev`` of the module's own forward, float64.

    The module (a float64 copy) is called through ``functional_call`` with its own
    parameters, one sequence at a time as a batch of one (so batched-only cells work).
    """
    module = copy.deepcopy(setup.module).double()
    live = {**dict(module.named_parameters()), **dict(module.named_buffers())}

    def fwd(*args: Any) -> Any:
        return functional_call(module, live, args)

    def one(x1: Tensor, s1: Tensor) -> Tensor:
        return module_step(setup.case, fwd, x1[None], s1[None], setup.sizes)[0]

    jac_s, jac_x = [], []
    for x1, s1 in zip(setup.x.double(), setup.s.double()):
        dx, ds = jacrev(one, argnums=(0, 1))(x1, s1)
        jac_s.append(ds)
        jac_x.append(dx)
    return torch.stack(jac_s).detach(), torch.stack(jac_x).detach()
