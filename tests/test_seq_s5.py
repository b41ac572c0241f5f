"""s5-pytorch's S5 (and S5Block, which wraps one) through its sequence adapter.

References: the layer's own forward (replay, float64 and float32, every option that changes
the recurrence), ``torch.func`` on the adapter's one-step function in float64 (products,
eigenvalues), ``ln|λ̄|`` written out here from the layer's own ``Λ`` and ``log_step`` by the
discretisation formulas (exponents), and autograd through the layer's own forward (loss
gradients: its ``state`` argument's gradient is ``∂L/∂s_0``, its signal's gradient carries
``Re(B̄ᴴ ∂L/∂x_t) + D ⊙ ∂L/∂y_t``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sequence_cases import (
    SequenceCase,
    check_diagonal,
    check_products,
    monitored_training,
    relative_error,
    replay,
)

import gradscope as gs
from gradscope.sequences.s5 import ADAPTER as S5A

s5_model = pytest.importorskip("s5.s5_model")

T, B, H = 9, 2, 4


def to_dtype(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """The layer in float64 (complex parameters complex128). ``.double()`` leaves the complex
    ones complex64 (the forward then fails) and ``.to(float64)`` drops their imaginary parts."""
    if dtype == torch.float64:
        for p in module.parameters():
            p.data = p.data.to(torch.complex128 if p.is_complex() else torch.float64)
    return module


def layer(dtype=torch.float32, P=6, bilinear=False, log_step=None, **options):
    """A tiny S5 with B̃, C̃, D and Im Λ perturbed (outputs of order 1)."""
    torch.manual_seed(0)
    module = s5_model.S5(H, P, **options)
    seq = module.seq
    with torch.no_grad():
        seq.B.mul_(3.0).add_(0.2 * torch.randn_like(seq.B))
        seq.C.add_(0.5 * torch.randn_like(seq.C))
        seq.D.copy_(torch.randn_like(seq.D))
        seq.Lambda.add_(0.3j * torch.randn(P))
        seq.log_step.copy_(torch.empty(P).uniform_(-2.5, 0.0) if log_step is None else log_step)
    if bilinear:
        seq.discretize = s5_model.discretize_bilinear
    return to_dtype(module, dtype)


def signal(dtype, n=T, width=H):
    return torch.randn(B, n, width, dtype=dtype, generator=torch.Generator().manual_seed(1))


def case(name, call=None, width=H, **options):
    def build(dtype):
        module = layer(dtype, **options)
        kwargs = call(dtype) if call else {}
        module.gs_call = ((signal(dtype, width=width),), kwargs)
        return module

    return SequenceCase(name, build, lambda m, d: m.gs_call, lambda m: S5A)


def _state(dtype):
    cd = torch.complex128 if dtype == torch.float64 else torch.complex64
    return {"state": torch.randn(B, 6, dtype=cd, generator=torch.Generator().manual_seed(2))}


CASES = [
    case("zoh"),
    case("bilinear", bilinear=True),
    case("liquid", liquid=True, log_step=torch.full((6,), -3.0)),
    case("degree2", P=H, degree=2),
    case("blocks", block_count=2),
    case("complex_normal", bcInit="complex_normal"),
    case("scale-per-sequence", lambda d: {"step_scale": torch.tensor([0.5, 2.0], dtype=d)}),
    case("scale-per-step", lambda d: {"step_scale": 0.5 + torch.rand(B, T, dtype=d)}),
    case("scale-number", lambda d: {"step_scale": 0.3}, bilinear=True),
    case("state", lambda d: {**_state(d), "return_state": True}),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_replay_products_and_eigenvalues(case, dtype):
    adapter, params, u, states = replay(case, dtype)
    P = states.shape[-1] // 2
    assert u.shape == (T, B, 2 * P + 1 + H)
    check_products(adapter, params, u, states)
    check_diagonal(adapter, params, u, states)


def _theory(module, scale=1.0, bilinear=False):
    """``ln|λ̄_j|`` from the layer's own Λ and log_step, by the discretisation formulas."""
    lam = module.seq.Lambda.detach().numpy().astype(np.complex128)
    delta = scale * np.exp(module.seq.log_step.detach().numpy())
    if bilinear:
        return np.log(np.abs((1 + delta / 2 * lam) / (1 - delta / 2 * lam)))
    return lam.real * delta  # |exp(Λ Δ)| = exp(Re Λ · Δ)


@pytest.mark.parametrize("bilinear", [False, True], ids=["zoh", "bilinear"])
def test_exponents_are_log_moduli_of_the_discretised_lambda(bilinear):
    module = layer(torch.float64, bilinear=bilinear)
    trace = gs.trace(module, signal(torch.float64, n=30), step_scale=0.7)
    rec = trace.layers[0]
    assert rec.kind == "s5" and rec.D == 12 and rec.meta["replay_error"] < 1e-12
    # S5.forward makes a number step_scale float32 (torch.ones(B) * 0.7), also in float64
    scale = float(np.float32(0.7))
    theory = np.sort(np.repeat(_theory(module, scale, bilinear), 2))[::-1]  # λ and λ̄
    np.testing.assert_allclose(gs.lyapunov(rec).exponents, theory, rtol=1e-12)
    spec = gs.spectrum(rec, which="eig", steps=[0])
    assert np.allclose(np.sort(np.log(np.abs(spec.values[0, 0]))), np.sort(theory))


def test_loss_gradients_are_autograd_through_the_layer():
    module = layer(torch.float64, P=4)
    v = signal(torch.float64, width=H).requires_grad_(True)
    x0 = _state(torch.float64)["state"][:, :4].clone().requires_grad_(True)
    weight = torch.randn(B, T, H, dtype=torch.float64, generator=torch.Generator())
    with gs.record(module, grads=True) as rec:
        loss = (module(v, state=x0) * weight).sum()
    loss.backward()
    G = rec.trace.layers[0].grads  # (T+1, B, 2P)
    g = torch.complex(G[..., :4], G[..., 4:])  # ∂L/∂Re x + i ∂L/∂Im x, torch's convention
    assert relative_error(torch.view_as_real(g[0]), torch.view_as_real(x0.grad)) < 1e-10
    seq = module.seq
    b_tilde, _ = seq.get_BC_tilde()
    _, b_bar = s5_model.discretize_zoh(seq.Lambda, b_tilde, torch.exp(seq.log_step))
    # the signal enters w_t = B̄ v_t and the skip D v_t: ∂L/∂v_t = Re(B̄ᴴ g_t) + D ∂L/∂y_t
    want = v.grad - seq.D.detach() * weight
    got = torch.einsum("ph,tbp->bth", b_bar.detach().conj(), g[1:]).real
    assert relative_error(got, want) < 1e-10


def test_refused_options_say_why():
    x = signal(torch.float32)
    with pytest.raises(gs.UnsupportedModuleError, match="bidir"):
        gs.trace(s5_model.S5(H, 6, bidir=True), x)
    with pytest.raises(gs.UnsupportedModuleError, match="liquid"):
        gs.trace(layer(liquid=True), x, state=torch.zeros(B, 6, dtype=torch.complex64))
    module = layer()
    module.seq.discretize = lambda lam, b, d: (lam, b)
    with pytest.raises(gs.UnsupportedModuleError, match="discretize"):
        gs.trace(module, x)


def test_forward_rnn_is_refused_while_recording_and_restored():
    module = layer()
    x = signal(torch.float32)
    state = torch.zeros(6, dtype=torch.complex64)
    with pytest.raises(gs.UnsupportedModuleError, match="forward_rnn"), gs.record(module):
        module(x)
        module.seq.forward_rnn(x[0, 0], state)
    assert "forward_rnn" not in vars(module.seq)
    y, _ = module.seq.forward_rnn(x[0, 0], state)
    assert y.shape == (H,)


# --------------------------------------------------------------------------- as a user
class Tagger(torch.nn.Module):
    """Two S5Blocks and a classifier head (the package's block, as a user stacks it)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = torch.nn.Sequential(*(s5_model.S5Block(H, 6, bidir=False) for _ in "ab"))
        self.head = torch.nn.Linear(H, 3)

    def forward(self, x):
        return self.head(self.blocks(x))


def test_profile_save_load_and_monitor(tmp_path):
    model = Tagger()
    x = signal(torch.float32, n=12)
    prof = gs.profile(model, x, analysis={"progress": False})
    names = [rec.name for rec in prof.trace.layers]
    assert names == ["blocks.0.s5", "blocks.1.s5"]
    # HiPPO-N init: Re Λ = −1/2 and Δ ≤ 0.1, so |λ̄| ≥ e^−0.05: a long memory, not vanishing
    assert "s5" in str(prof.diagnosis)
    for name in names:
        d = prof.diagnosis[name]
        assert d.regime == "neutral" and -0.06 < d.lyapunov.exponents.min() < 0
    back = gs.diagnose(gs.load(prof.trace.save(tmp_path / "s5.npz")), progress=False)
    for name in names:
        assert back[name].regime == prof.diagnosis[name].regime
        np.testing.assert_array_equal(
            back[name].lyapunov.exponents, prof.diagnosis[name].lyapunov.exponents
        )

    def loss(i):
        x = signal(torch.float32, n=10) + i
        return F.cross_entropy(model(x).flatten(0, 1), torch.arange(B * 10) % 3)

    history = monitored_training(model, loss, lr=1e-2)
    norms = history.grad_norms("blocks.0.s5")
    assert sorted(history.names) == names
    assert norms.shape[0] == 3 and np.isfinite(norms).all() and (norms > 0).all()
