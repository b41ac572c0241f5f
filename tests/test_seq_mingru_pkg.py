"""minGRU and minLSTM of the ``minGRU-pytorch`` package through their sequence adapters.

References: the module's own forward, both its log-space scan (``T > 1``) and its single
step (``T = 1``), with and without ``prev_hidden`` (replay); ``torch.func`` on the adapter's
one-step function in float64 (Jacobian products, eigenvalues); the decays written out here
from the module's weights with sigmoids (Lyapunov exponents); autograd through a loop
written here from the module's weights (loss gradients).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sequence_cases import SequenceCase, check_diagonal, check_products, relative_error, replay

import gradscope as gs
from gradscope.sequences.mingru_pkg import ADAPTER as MINGRU
from gradscope.sequences.minlstm_pkg import ADAPTER as MINLSTM

mingru_mod = pytest.importorskip("minGRU_pytorch.minGRU")
minlstm_mod = pytest.importorskip("minGRU_pytorch.minLSTM")
minlm_mod = pytest.importorskip("minGRU_pytorch.minLM")

B, T, DIM = 3, 14, 6
CLASSES = {"mingru": (mingru_mod.minGRU, MINGRU), "minlstm": (minlstm_mod.minLSTM, MINLSTM)}


def build(family: str, scale: float = 1.0, **kw):
    """``dtype -> module``: the package's layer at toy size, weights scaled by ``scale``."""

    def make(dtype: torch.dtype) -> torch.nn.Module:
        torch.manual_seed(0)
        module = CLASSES[family][0](DIM, **kw).to(dtype)
        with torch.no_grad():
            for p in module.parameters():
                p.mul_(scale)
        return module

    return make


def inputs(steps: int, prev: str | None = None, returns: bool = False):
    """``(module, dtype) -> (args, kwargs)``; ``prev``: "positive" / "mixed" ``prev_hidden``."""

    def make(module: torch.nn.Module, dtype: torch.dtype):
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(B, steps, DIM, generator=gen).to(dtype)
        kwargs = {"return_next_prev_hidden": True} if returns else {}
        if prev is None:
            return (x,), kwargs
        E = module.to_out.in_features if hasattr(module.to_out, "in_features") else DIM
        h0 = torch.rand(B, 1, E, generator=gen).to(dtype) + 0.1
        if prev == "mixed":
            h0 = h0 - 0.6
        return (x, h0), kwargs

    return make


def case(name: str, family: str, steps: int = T, prev=None, returns=False, **kw):
    return SequenceCase(
        f"{family}-{name}",
        build(family, **kw),
        inputs(steps, prev, returns),
        lambda m, fam=family: CLASSES[fam][1],
    )


CASES = [
    case(f"{name}", fam, **opts)
    for fam in CLASSES
    for name, opts in {
        "scan": {},
        "scan-expanded": {"expansion_factor": 1.5},
        "scan-prev": {"prev": "positive", "returns": True, "expansion_factor": 1.5},
        "step": {"steps": 1},
        "step-prev-mixed": {"steps": 1, "prev": "mixed", "proj_out": True},
        "large-gates": {"scale": 40.0},  # pre-activations beyond softplus' threshold 20
    }.items()
] + [case("scan-prev-mixed", "minlstm", prev="mixed")]  # log_g takes any sign


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_replay(c: SequenceCase, dtype: torch.dtype) -> None:
    adapter, params, u, states = replay(c, dtype)
    E = adapter.state_size(params)
    assert u.shape[1:] == (B, adapter.blocks * E) and states.shape[1:] == (B, E)


@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_products_and_diagonal(c: SequenceCase) -> None:
    adapter, params, u, states = replay(c, torch.float64)
    check_products(adapter, params, u, states)
    check_diagonal(adapter, params, u, states)
    if "large" in c.name:  # the case reaches softplus' linear branch
        assert (u.abs() > 20).any()


def test_minlstm_scan_starts_from_g_of_prev_hidden() -> None:
    """As the package's code has it: a scan from prev_hidden starts at g(prev_hidden), a
    single step at prev_hidden itself."""
    module = build("minlstm")(torch.float64)
    (x, h0), _ = inputs(T, "positive")(module, torch.float64)
    params = MINLSTM.module_params(module)
    scan = MINLSTM.drive(params, (x, h0), {}).s0
    step = MINLSTM.drive(params, (x[:, :1], h0), {}).s0
    assert torch.equal(step, h0[:, 0]) and torch.equal(scan, h0[:, 0] + 0.5)  # g(v>0) = v + ½


def test_mingru_scan_from_a_negative_prev_hidden_is_refused() -> None:
    module = build("mingru")(torch.float64)
    (x, h0), _ = inputs(T, "mixed")(module, torch.float64)
    with pytest.raises(gs.UnsupportedModuleError, match="log\\(prev_hidden\\)"):
        gs.trace(module, x, h0)
    gs.trace(module, x[:, :1], h0)  # a single step lerps: any sign replays


def test_exponents_are_mean_log_decays_from_the_weights() -> None:
    """λ = per-channel means over time of ln(1 − σ(zᵖ)) (minGRU), ln(σ(fᵖ)/(σ(fᵖ)+σ(iᵖ)))
    (minLSTM), the pre-activations recomputed here from the module's weights."""
    x = torch.randn(4, 40, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for family in CLASSES:
        module = build(family, expansion_factor=1.5)(torch.float64)
        layer = gs.trace(module, x).layers[0]
        with torch.no_grad():
            W = next(module.parameters())  # the input projection, (blocks · E, dim)
            parts = (x @ W.T).chunk(3 if family == "minlstm" else 2, dim=-1)
            if family == "mingru":
                logs = torch.log(1 - torch.sigmoid(parts[1]))
            else:
                f, i = torch.sigmoid(parts[1]), torch.sigmoid(parts[2])
                logs = torch.log(f / (f + i))
        want = np.sort(logs.mean(1).numpy(), axis=1)[:, ::-1].mean(0)
        assert layer.D == 9 and layer.kind == family
        np.testing.assert_allclose(gs.lyapunov(layer).exponents, want, rtol=0, atol=1e-12)
        # the QR iteration on the closed-form products: a diagonal J_t keeps Q = I from
        # the identity, so with k = D its finite-time values are exact too
        qr = gs.lyapunov(layer, k=9, init="identity", method="operator", progress=False)
        np.testing.assert_allclose(qr.exponents, want, rtol=0, atol=1e-12)


def g_ref(v: torch.Tensor) -> torch.Tensor:
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


@pytest.mark.parametrize("family", list(CLASSES))
def test_loss_gradients_match_a_hand_written_loop(family: str) -> None:
    module = build(family, expansion_factor=1.5)(torch.float64)
    (x, h0), _ = inputs(T, "positive")(module, torch.float64)
    weight = torch.randn(B, T, DIM, dtype=torch.float64)
    with gs.record(module, grads=True) as rec:
        loss = (module(x, h0) * weight).sum()
    loss.backward()
    got = rec.trace.layers[0].grads  # (T+1, B, E)

    W = next(module.parameters()).detach()
    parts = (x @ W.T).chunk(3 if family == "minlstm" else 2, dim=-1)
    h = (h0[:, 0] if family == "mingru" else g_ref(h0[:, 0])).clone().requires_grad_(True)
    states, ys = [h], []
    for t in range(T):
        if family == "mingru":
            z = torch.sigmoid(parts[1][:, t])
            h = (1 - z) * h + z * g_ref(parts[0][:, t])
        else:
            f, i = torch.sigmoid(parts[1][:, t]), torch.sigmoid(parts[2][:, t])
            h = f / (f + i) * h + i / (f + i) * g_ref(parts[0][:, t])
        h.retain_grad()
        states.append(h)
        ys.append(h @ module.to_out.weight.detach().T)
    (torch.stack(ys, 1) * weight).sum().backward()
    want = torch.stack([s.grad for s in states])
    assert relative_error(got, want) < 1e-10

    # and autograd through the module itself, one call per step (its sequential path); the
    # state it hands back is a view of its output, so the total ∂L/∂h_t is its base's grad
    h = (h0 if family == "mingru" else g_ref(h0)).clone().requires_grad_(True)
    bases, outs = [h], []
    for t in range(T):
        out, h = module(x[:, t : t + 1], h, return_next_prev_hidden=True)
        h._base.retain_grad()
        bases.append(h._base)
        outs.append(out)
    (torch.cat(outs, dim=1) * weight).sum().backward()
    through = torch.stack([b.grad[:, -1] for b in bases])
    assert relative_error(got, through) < 1e-10


# --------------------------------------------------------------------------- minLM
def lm(use_lstm: bool, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return minlm_mod.minLM(num_tokens=32, dim=8, depth=2, use_lstm=use_lstm, **kw)


@pytest.mark.parametrize("use_lstm", [False, True], ids=["mingru", "minlstm"])
def test_profile_finds_every_layer_of_minlm(use_lstm: bool, tmp_path) -> None:
    model = lm(use_lstm, enable_conv=True)
    ids = torch.randint(0, 32, (4, 24), generator=torch.Generator().manual_seed(0))
    prof = gs.profile(model, ids, analysis={"progress": False})
    kind = "minlstm" if use_lstm else "mingru"
    assert [(l.name, l.kind, l.D) for l in prof.trace.layers] == [
        ("layers.0.2", kind, 12),
        ("layers.1.2", kind, 12),
    ]
    text = str(prof.diagnosis)
    assert kind in text and "layers.1.2" in text
    back = gs.load(prof.trace.save(tmp_path / "lm.npz"))
    assert str(gs.diagnose(back, progress=False)) == text


def test_minlm_decoding_step_continues_from_prev_hiddens() -> None:
    """minLM's recurrent decoding: the second call feeds one token and the layers'
    prev_hidden; each layer is replayed from that state."""
    model = lm(False).double()
    ids = torch.randint(0, 32, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, prev = model(ids[:, :-1], return_prev_hiddens=True)
    trace = gs.trace(model, ids, prev_hiddens=prev)
    for layer, h0 in zip(trace.layers, prev):
        assert layer.T == 1 and torch.equal(layer.states[0], h0[:, 0])
        assert layer.meta["replay_error"] < 1e-12


def test_monitor_over_training_steps_of_minlm() -> None:
    model = lm(True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    monitor = gs.Monitor(model, every=1, analyze=False)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        loss = model(torch.randint(0, 32, (2, 13), generator=gen), return_loss=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
        monitor.step()
    monitor.close()
    hist = monitor.history
    assert sorted(hist.names) == ["layers.0.2", "layers.1.2"]
    norms = hist.grad_norms("layers.1.2")
    assert norms.shape == (3, 13) and np.isfinite(norms).all() and (norms[:, 1:] > 0).all()


def test_recording_never_imports_the_packages() -> None:
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, torch, gradscope as gs\n"
        "gs.diagnose(gs.trace(torch.nn.LSTM(2, 3), torch.randn(6, 1, 2)), progress=False)\n"
        "bad = {'minGRU_pytorch', 'xlstm', 'mlstm_kernels'} & set(sys.modules)\n"
        "assert not bad, f'imported {bad}'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
