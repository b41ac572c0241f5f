"""``gs.register_step``: a module recorded through its package's own step function.

References: mambapy's ``MambaBlock`` recorded through ``MambaBlock.step`` against the same
block through gradscope's closed-form adapter (the states ``h`` and the products of the
``h → h`` block, 1e-12, float64), and ``examples/step.py``'s layer against its recurrence
written out here from its weights (states; the ``h → h`` block of ``J_t`` is ``diag(a_t)``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from sequence_cases import relative_error

import gradscope as gs
from gradscope.sequences.step import StepAdapter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import step as step_example

T, B = 9, 2


def _mamba():
    mamba = pytest.importorskip("mambapy.mamba")
    torch.manual_seed(0)
    cfg = mamba.MambaConfig(d_model=8, n_layers=1, d_state=4, expand_factor=2, d_conv=3)
    model = mamba.Mamba(cfg).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return mamba, model


def test_mambapy_block_through_its_step_equals_the_closed_form_adapter():
    mamba, model = _mamba()
    v = torch.randn(B, T, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    built_in = gs.trace(model, v)["layers.0.mixer"]

    class StepBlock(mamba.MambaBlock):
        """The package's block, by another name: registered through its own step."""

    def shapes(block):
        c = block.config
        return {"h": (c.d_inner, c.d_state), "conv": (c.d_inner, c.d_conv - 1)}

    gs.register_step(StepBlock, step=mamba.MambaBlock.step, state=shapes)
    block = model.layers[0].mixer
    block.__class__ = StepBlock
    try:
        layer = gs.trace(model, v)["layers.0.mixer"]
    finally:
        block.__class__ = mamba.MambaBlock
    E, N, K = 16, 4, 3
    assert layer.kind.startswith("step:") and layer.state_names == ("h", "conv")
    assert layer.D == E * N + E * (K - 1) and layer.meta["replay_error"] < 1e-12
    hd = E * N
    assert relative_error(layer.states[..., :hd], built_in.states) < 1e-12
    gen = torch.Generator().manual_seed(2)
    V = torch.randn(T, B, layer.D, 3, dtype=torch.float64, generator=gen)
    V[:, :, hd:] = 0  # h directions only: ∂h'/∂h is the built-in's diag(exp(Δ A))
    jv = layer.jvp(V)
    assert relative_error(jv[:, :, :hd], built_in.jvp(V[:, :, :hd])) < 1e-12
    assert jv[:, :, hd:].abs().max() == 0  # the convolution inputs do not read h
    vj = layer.vjp(V)
    assert relative_error(vj[:, :, :hd], built_in.vjp(V[:, :, :hd])) < 1e-12
    assert not layer.jacobians(steps=[0]).requires_grad


def _example_states(model, x):
    """The example's recurrence from its weights: ``h`` and the convolution window."""
    K = model.kernel
    pad = F.pad(x.transpose(1, 2), (K - 1, 0))  # (B, I, T + K − 1)
    hs, a_s = [torch.zeros(x.shape[0], model.width, dtype=x.dtype)], []
    for t in range(x.shape[1]):
        c = (pad[:, :, t : t + K] * model.conv).sum(-1)
        a = torch.sigmoid(c @ model.w_a.T)
        hs.append(a * hs[-1] + (1 - a) * (c @ model.w_v.T))
        a_s.append(a)
    return torch.stack(hs), torch.stack(a_s), pad


def test_the_example_layer_is_its_recurrence():
    model = step_example.ShortConvSSM(3, 5, 2).double()
    x = torch.randn(B, T, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    layer = gs.trace(model, x).layers[0]
    assert layer.kind == "step:step.ShortConvSSM" and layer.meta["replay_error"] < 1e-12
    with torch.no_grad():
        h, a, pad = _example_states(model, x)
    assert relative_error(layer.states[..., :5], h) < 1e-12
    window = torch.stack([pad[:, :, t + 1 : t + 3].flatten(1) for t in range(T)])
    assert relative_error(layer.states[1:, :, 5:], window) < 1e-12
    J = layer.jacobians()  # (T, B, D, D)
    assert relative_error(J[:, :, :5, :5], torch.diag_embed(a)) < 1e-12


def test_step_is_refused_while_recording_and_bad_declarations_are_named():
    model = step_example.ShortConvSSM(3, 5, 2)
    x = torch.randn(B, T, 3)
    state = (torch.zeros(B, 5), torch.zeros(B, 3, 2))
    refused = pytest.raises(gs.UnsupportedModuleError, match=r"step\(\) continues a state")
    with refused, gs.record(model):
        model(x)
        model.step(x[:, 0], state)
    assert "step" not in vars(model)

    class Other(step_example.ShortConvSSM):
        pass

    def forgets_the_window(module, x, s):  # returns h alone as the next state
        y, (h, _) = Other.step(module, x, s)
        return y, h

    gs.register_step(Other, step=forgets_the_window, state=Other.state_shapes)
    with pytest.raises(gs.GradscopeError, match=r"gave the state Tensor\(2, 5\).*declares h"):
        gs.trace(Other(3, 5, 2), x)
    with pytest.raises(gs.GradscopeError, match="must be a function"):
        gs.register_step(Other, step=Other.step, state=(5,), overwrite=True)
    with pytest.raises(gs.GradscopeError, match="already has the adapter"):
        gs.register_step(Other, step=Other.step, state=Other.state_shapes)
    assert isinstance(
        gs.register_step, type(test_step_is_refused_while_recording_and_bad_declarations_are_named)
    )
    assert StepAdapter.closed_form is False
