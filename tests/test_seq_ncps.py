"""ncps' CfC and LTC wrappers through their sequence adapters.

References: the wrapper's own forward (replay, float64 and float32, every option that changes
the recurrence), ``torch.func`` on the adapter's one-step function in float64 (products), the
Jacobians of the package's own cell (``rnn_cell.forward``, and the mixed memory's
``lstm``) by ``torch.func.jacrev`` (dense Jacobians; Lyapunov exponents by a QR iteration
written here), and autograd through the wrapper's own loop (loss gradients).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sequence_cases import (
    SequenceCase,
    check_products,
    monitored_training,
    relative_error,
    replay,
)

import gradscope as gs
from gradscope.sequences.ncps_cfc import ADAPTER as CFC
from gradscope.sequences.ncps_ltc import ADAPTER as LTCA

ncps = pytest.importorskip("ncps.torch")
wirings = pytest.importorskip("ncps.wirings")

T, B, I = 7, 2, 5


def build(cls, *args, **options):
    def make(dtype):
        torch.manual_seed(0)
        return cls(*args, **options).to(dtype)

    return make


def call(batch_first=True, timespans=None, hx=None, batch=B):
    """The wrapper's arguments: a signal, and optionally timespans and an initial state."""

    def make(module, dtype):
        g = torch.Generator().manual_seed(1)
        x = torch.randn(batch, T, I, dtype=dtype, generator=g)
        kwargs = {}
        if timespans is not None:
            kwargs["timespans"] = (0.5 + torch.rand(timespans, generator=g)).to(dtype)
        if hx is not None:
            parts = [torch.randn(batch, hx, dtype=dtype, generator=g) for _ in "hc"]
            kwargs["hx"] = tuple(parts) if module.use_mixed else parts[0]
        return ((x if batch_first else x.transpose(0, 1)),), kwargs

    return make


def cfc(name, inputs, *args, **options):
    return SequenceCase(
        name,
        build(ncps.CfC, I, *args, **options),
        inputs,
        CFC.for_module,
        {torch.float64: 1e-10, torch.float32: 1e-4},
        diagonal=False,
    )


def ltc(name, inputs, *args, **options):
    return SequenceCase(
        name,
        build(ncps.LTC, I, *args, **options),
        inputs,
        LTCA.for_module,
        {torch.float64: 1e-10, torch.float32: 1e-4},
        diagonal=False,
    )


CASES = [
    cfc("cfc", call(), 6, backbone_units=8),
    cfc(
        "cfc-pure-2bb-tanh",
        call(),
        6,
        mode="pure",
        backbone_layers=2,
        backbone_units=8,
        activation="tanh",
    ),
    cfc(
        "cfc-nogate-timemajor-proj",
        call(False),
        6,
        mode="no_gate",
        backbone_layers=0,
        batch_first=False,
        proj_size=3,
    ),
    cfc("cfc-mixed-silu-hx", call(hx=6), 6, mixed_memory=True, activation="silu", backbone_units=8),
    cfc("cfc-gelu-last", call(), 6, activation="gelu", backbone_units=8, return_sequences=False),
    cfc("cfc-wired", call(), wirings.AutoNCP(10, 3)),
    cfc("cfc-wired-pure", call(), wirings.AutoNCP(8, 2), mode="pure"),
    cfc("cfc-timespans-one", call(timespans=(1, T, 1), batch=1), 6, backbone_units=8),
    # after squeeze, timespans[:, t] is (B,): PyTorch aligns it with the units (B == H here)
    cfc("cfc-timespans-broadcast", call(timespans=(2, T)), 2, mode="pure", backbone_units=4),
    ltc("ltc", call(), 6),
    ltc("ltc-ncp-mixed-hx", call(hx=9), wirings.AutoNCP(9, 2), mixed_memory=True),
    ltc(
        "ltc-linear-none-explicit",
        call(False),
        5,
        input_mapping="linear",
        output_mapping="none",
        implicit_param_constraints=False,
        ode_unfolds=3,
        batch_first=False,
    ),
    ltc("ltc-timespans", call(timespans=(1, T), batch=1), 4, return_sequences=False),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_replay_and_products(case, dtype):
    adapter, params, u, states = replay(case, dtype)
    assert u.shape[-1] == I + adapter.units(params)
    check_products(adapter, params, u, states)


def _package_jacobians(module, x, hx, ts=1.0):
    """``∂s_t/∂s_{t−1}`` of the wrapper's own step (its lstm, then rnn_cell.forward)."""

    def step(s, xt):
        h = s[: module.state_size]
        if module.use_mixed:
            h, c = module.lstm(xt[None], (h[None], s[None, module.state_size :]))
            return torch.cat([module.rnn_cell.forward(xt[None], h, ts)[1][0], c[0]])
        return module.rnn_cell.forward(xt[None], h[None], ts)[1][0]

    return torch.vmap(torch.func.jacrev(step))(hx, x)


@pytest.mark.parametrize(
    "make",
    [
        build(ncps.CfC, I, 6, backbone_units=8, mixed_memory=True),
        build(ncps.CfC, I, wirings.AutoNCP(10, 3)),
        build(ncps.LTC, I, wirings.AutoNCP(9, 2)),
    ],
    ids=["cfc-mixed", "cfc-wired", "ltc-ncp"],
)
def test_jacobians_and_exponents_are_the_package_cells(make):
    module = make(torch.float64)
    x = torch.randn(B, T, I, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    D = module.state_size * (2 if module.use_mixed else 1)
    hx0 = torch.zeros(B, module.state_size, dtype=torch.float64)
    hx = (hx0, hx0.clone()) if module.use_mixed else hx0
    layer = gs.trace(module, x, hx).layers[0]
    assert layer.kind in ("ncps-cfc", "ncps-ltc") and layer.D == D
    assert layer.meta["replay_error"] < 1e-12
    want = torch.stack(
        [_package_jacobians(module, x[:, t], layer.states[t]) for t in range(T)]
    ).detach()
    got = layer.jacobians()
    assert not got.requires_grad and relative_error(got, want) < 1e-12
    # the whole spectrum by a QR iteration from the identity, on the package's Jacobians
    ref = np.zeros((B, D))
    for b in range(B):
        q = np.eye(D)
        for t in range(T):
            q, r = np.linalg.qr(want[t, b].numpy() @ q)
            ref[b] += np.log(np.abs(np.diag(r)))
    ref = np.sort(ref / T, axis=1)[:, ::-1].mean(axis=0)
    exps = gs.lyapunov(layer, init="identity", progress=False).exponents
    np.testing.assert_allclose(exps, ref, rtol=1e-9, atol=1e-12)
    assert np.all(np.isfinite(exps))


def test_loss_gradients_are_autograd_through_the_wrapper(monkeypatch):
    """``layer.grads`` against the gradients of the states the wrapper's loop carries."""
    module = build(ncps.CfC, I, 6, backbone_units=8)(torch.float64)
    seen = []
    own = module.rnn_cell.forward

    def spy(x, h, ts):
        h.retain_grad()
        seen.append(h)
        out, new = own(x, h, ts)
        return out, new

    monkeypatch.setattr(module.rnn_cell, "forward", spy)
    x = torch.randn(B, T, I, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    h0 = torch.zeros(B, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(B, T, 6, dtype=torch.float64, generator=torch.Generator())
    with gs.record(module, grads=True) as rec:
        out, _ = module(x, h0)
        loss = (out * weight).sum()
    loss.backward()
    got = rec.trace.layers[0].grads  # (T+1, B, D): ∂L/∂h_t
    want = torch.stack([h.grad for h in seen[:T]])  # the state each step read: h_0 … h_{T−1}
    assert relative_error(got[:T], want) < 1e-10
    assert relative_error(got[T], weight[:, -1]) < 1e-12  # h_T only reaches the loss as out_T


def test_model_with_cfc_and_ltc_is_recorded_out_of_the_box(tmp_path):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.cfc = ncps.CfC(I, 6, backbone_units=8)
            self.ltc = ncps.LTC(6, 4)

        def forward(self, x):
            return self.ltc(self.cfc(x)[0])[0]

    model = Net()
    x = torch.randn(B, 12, I)
    prof = gs.profile(model, x, analysis={"progress": False})
    assert [(rec.name, rec.kind) for rec in prof.trace.layers] == [
        ("cfc", "ncps-cfc"),
        ("ltc", "ncps-ltc"),
    ]
    assert "forward" not in vars(model.cfc.rnn_cell) and "forward" not in vars(model.cfc)
    back = gs.diagnose(gs.load(prof.trace.save(tmp_path / "ncps.npz")), progress=False)
    for name in ("cfc", "ltc"):
        np.testing.assert_allclose(
            back[name].lyapunov.exponents, prof.diagnosis[name].lyapunov.exponents, rtol=1e-6
        )
    model.train()
    history = monitored_training(model, lambda i: (model(x + i) ** 2).mean(), lr=1e-2)
    assert sorted(history.names) == ["cfc", "ltc"]
    for name in ("cfc", "ltc"):
        norms = history.grad_norms(name)
        assert norms.shape[0] == 3 and np.isfinite(norms).all() and (norms > 0).all()


def test_refused_calls_say_what_to_do():
    with pytest.raises(gs.UnsupportedModuleError, match=r"x.unsqueeze\(0\)"):
        gs.trace(ncps.CfC(I, 4), torch.randn(T, I))
    module = ncps.CfC(I, 4, backbone_layers=2, backbone_dropout=0.3)
    with pytest.raises(gs.UnsupportedModuleError, match=r"model.eval\(\)"):
        gs.trace(module, torch.randn(B, T, I))
    module.eval()
    assert gs.trace(module, torch.randn(B, T, I)).layers[0].kind == "ncps-cfc"


def test_ltc_products_in_blocks_of_pairs(monkeypatch):
    """The unfolds' N × N matrices rebuilt in blocks of 5 pairs give the same products."""
    import gradscope.sequences.ncps_ltc as ltc_module

    monkeypatch.setattr(ltc_module, "PAIR_BLOCK", 5)
    case = next(c for c in CASES if c.name == "ltc-ncp-mixed-hx")
    adapter, params, u, states = replay(case, torch.float64)
    check_products(adapter, params, u, states)
