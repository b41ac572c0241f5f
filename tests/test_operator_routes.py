"""One Jacobian operator per layer, and the one place that decides dense vs matrix-free.

References: the thresholds the analyses document (gradscope.jacobians.operator), and
counting how often the per-step products are built during a whole diagnosis.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import gradscope as gs
from gradscope.errors import ArgumentError
from gradscope.jacobians import steps as steps_module
from gradscope.jacobians.operator import DENSE_UP_TO, operator_of

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import mingru as mingru_example


def _lstm(hidden: int, T: int = 6):
    torch.manual_seed(0)
    return gs.trace(nn.LSTM(3, hidden), torch.randn(T, 2, 3))[0]


def test_the_operator_is_built_once_per_layer_object():
    layer = _lstm(4)
    op = operator_of(layer)
    assert operator_of(layer) is op and op.source == "closed form"
    assert op.steps is op.steps


@pytest.mark.parametrize(
    ("hidden", "analysis", "kw", "want"),
    [
        (4, "lyapunov", {"k": 2}, "dense"),  # D = 8 <= 64
        (40, "lyapunov", {"k": 4}, "operator"),  # D = 80 > 64
        (40, "lyapunov", {"k": 80}, "dense"),  # the full spectrum
        (40, "spectrum", {}, "dense"),  # D = 80 <= 256
        (130, "spectrum", {}, "operator"),  # D = 260 > 256
        (40, "decay", {"probes": 80}, "dense"),  # exact probes
        (40, "decay", {"probes": 16}, "operator"),
    ],
)
def test_auto_routes_follow_the_one_table(hidden, analysis, kw, want):
    assert DENSE_UP_TO == {"lyapunov": 64, "spectrum": 256}
    assert operator_of(_lstm(hidden, T=2)).route(analysis, "auto", **kw) == want


def test_explicit_methods_pass_and_diagonal_needs_a_diagonal(clean_registry):
    layer = _lstm(4)
    op = operator_of(layer)
    assert op.route("spectrum", "operator") == "operator"
    assert op.route("lyapunov", "dense", k=2) == "dense"
    with pytest.raises(ArgumentError, match="method='diagonal' needs a diagonal"):
        op.route("spectrum", "diagonal")
    with pytest.raises(ArgumentError, match="analysis must be one of"):
        op.route("nothing")
    gs.register_sequence(mingru_example.MinGRU, mingru_example.MinGRUAdapter(), overwrite=True)
    torch.manual_seed(0)
    mg = gs.trace(mingru_example.MinGRU(4, 5), torch.randn(2, 6, 4))[0]
    assert operator_of(mg).source == "diagonal"
    assert operator_of(mg).route("decay", "auto", probes=1) == "diagonal"


def test_stored_jacobians_route_dense():
    torch.manual_seed(0)
    cell = nn.GRUCell(2, 3)

    class Loop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = cell

        def forward(self, x):
            h = torch.zeros(x.shape[1], 3)
            for t in range(x.shape[0]):
                h = self.cell(x[t], h)
            return h

    layer = gs.trace(Loop(), torch.randn(4, 2, 2))[0]
    stored = type(layer)(
        layer.name,
        "custom:test",
        layer.states,
        layer.inputs,
        None,
        layer.state_names,
        layer.state_sizes,
        {},
        stored_jacobians={"state": layer.jacobians(), "input": layer.jacobians(wrt="input")},
    )
    op = operator_of(stored)
    assert op.source == "stored" and op.adapter is None
    assert op.route("lyapunov", "auto", k=1) == "dense"


def test_a_diagnosis_builds_the_per_step_products_once_per_layer(monkeypatch):
    """Spectra, Lyapunov and decay of one layer share one StepOps (hidden 40: operators)."""
    built = []
    init = steps_module.StepOps.__init__

    def counting(self, layer):
        built.append(layer.name)
        init(self, layer)

    monkeypatch.setattr(steps_module.StepOps, "__init__", counting)
    torch.manual_seed(0)
    tr = gs.trace(nn.LSTM(3, 140), torch.randn(12, 2, 3))  # D = 280: operator spectra too
    gs.diagnose(tr, progress=False, probes=4)
    assert built == ["lstm.l0"]
