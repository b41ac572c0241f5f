"""mambapy's MambaBlock (and Jamba's Mamba layers) through their sequence adapter.

References: the block's own forward, with its parallel scan and with its sequential loop
(replay, float64 and float32), ``torch.func`` on the adapter's one-step function in float64
(products, eigenvalues), ``Δ_t · A`` recomputed here from the block's own sublayers
(exponents), and autograd through the block's own forward (loss gradients: the gradient of
the scan's input term ``Δ_t B_t x_t`` is ``∂L/∂h_t``, since ``h_t = a_t h_{t−1} + (that)``).
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
from gradscope.sequences.mambapy_block import ADAPTER as MAMBAPY

mamba = pytest.importorskip("mambapy.mamba")
jamba = pytest.importorskip("mambapy.jamba")

T, B, WIDTH = 11, 2, 8


def block_model(dtype: torch.dtype, *, pscan: bool = True, norms: bool = False, mup=False):
    """A two-layer mambapy Mamba, every weight perturbed (so that D, A_log and the biases are
    not float32 numbers in a float64 model, and Δ is not tiny)."""
    torch.manual_seed(0)
    cfg = mamba.MambaConfig(
        d_model=WIDTH,
        n_layers=2,
        d_state=4,
        expand_factor=2,
        d_conv=3,
        pscan=pscan,
        inner_layernorms=norms,
        mup=mup,
        bias=True,
    )
    model = mamba.Mamba(cfg).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def inputs(dtype: torch.dtype, n: int = T) -> torch.Tensor:
    return torch.randn(B, n, WIDTH, dtype=dtype, generator=torch.Generator().manual_seed(1))


def block_call(**options):
    def build(dtype):
        model = block_model(dtype, **options)
        block = model.layers[1].mixer
        seen = {}
        hook = block.register_forward_hook(lambda m, a, o: seen.update(args=a))
        with torch.no_grad():
            model(inputs(dtype))
        hook.remove()
        block.gs_call = (seen["args"], {})
        return block

    return build


CASES = [
    SequenceCase(name, block_call(**opts), lambda m, d: m.gs_call, lambda m: MAMBAPY)
    for name, opts in (
        ("pscan", {}),
        ("sequential", {"pscan": False}),
        ("norms", {"norms": True}),
        ("norms-mup-sequential", {"norms": True, "mup": True, "pscan": False}),
    )
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_replay_products_and_eigenvalues(case, dtype):
    adapter, params, u, states = replay(case, dtype)
    assert u.shape == (T, B, 3 * 16 + 2 * 4) and states.shape == (T + 1, B, 16 * 4)
    assert ("norm_eps" in params) == ("norms" in case.name)
    check_products(adapter, params, u, states)
    check_diagonal(adapter, params, u, states)


def _log_decay(block, v):
    """``Δ_t · A`` (B, T, E, N), from the block's own sublayers (its ssm() step by step)."""
    cfg = block.config
    with torch.no_grad():
        x, _ = block.in_proj(v).chunk(2, dim=-1)
        x = F.silu(block.conv1d(x.transpose(1, 2))[:, :, : v.shape[1]].transpose(1, 2))
        delta = block.x_proj(x)[..., : cfg.dt_rank]
        if block.dt_layernorm is not None:
            delta = block.dt_layernorm(delta)
        dt = F.softplus(block.dt_proj(delta))
        A = -torch.exp(block.A_log.float()).double()
    return dt[..., None] * A


@pytest.mark.parametrize("norms", [False, True], ids=["plain", "norms"])
def test_exponents_are_channel_means_of_delta_times_A(norms):
    model = block_model(torch.float64, norms=norms)
    block = model.layers[0].mixer
    v = inputs(torch.float64, 20)
    trace = gs.trace(model, v)
    layer = trace["layers.0.mixer"]
    assert layer.kind == "mambapy" and layer.meta["replay_error"] < 1e-12
    logs = _log_decay(block, model.layers[0].norm(v))  # the block reads the residual's norm
    want = np.sort(logs.mean(dim=1).flatten(1).numpy(), axis=1)[:, ::-1].mean(axis=0)
    got = gs.lyapunov(layer, k=10)
    np.testing.assert_allclose(got.exponents, want[:10], rtol=1e-12)
    curve = gs.decay(layer, of="state").norms  # exact: max over coordinates of Σ Δ A
    ref = logs.flip(1).cumsum(1).flatten(2).max(-1).values.numpy().T
    np.testing.assert_allclose(np.log(curve[1:]), ref, rtol=1e-10)


def test_loss_gradients_are_autograd_through_the_block(monkeypatch):
    """``layer.grads`` against the block's own backward (its pscan's autograd Function)."""
    model = block_model(torch.float64)
    seen = []

    def spy(deltaA, BX):
        BX.retain_grad()
        seen.append(BX)
        return real(deltaA, BX)

    real = mamba.pscan
    monkeypatch.setattr(mamba, "pscan", spy)
    v = inputs(torch.float64).requires_grad_(True)
    weight = torch.randn(B, T, WIDTH, dtype=torch.float64, generator=torch.Generator())
    with gs.record(model, grads=True) as rec:
        loss = (model(v) * weight).sum()
    loss.backward()
    got = rec.trace["layers.1.mixer"].grads  # (T+1, B, D)
    want = seen[1].grad.transpose(0, 1).flatten(2)  # ∂L/∂(Δ B x)_t = ∂L/∂h_t, t = 1..T
    assert relative_error(got[1:], want) < 1e-10
    assert torch.count_nonzero(got[0]) > 0  # ∂L/∂h_0 = a_1 ∂L/∂h_1


def test_generation_step_is_refused_and_restored():
    model = block_model(torch.float32)
    cache = [(None, torch.zeros(1, 16, 2)) for _ in model.layers]
    with pytest.raises(gs.UnsupportedModuleError, match=r"MambaBlock\.step"), gs.record(model):
        model.step(torch.randn(1, WIDTH), cache)
    assert "step" not in vars(model.layers[0].mixer)  # the guard is gone
    y, _ = model.step(torch.randn(1, WIDTH), cache)  # and the method works again
    assert y.shape == (1, WIDTH)


def test_use_cuda_is_refused_before_the_block_runs():
    model = block_model(torch.float32)
    model.config.use_cuda = True  # (mamba_ssm is absent: the constructor turned it off)
    with pytest.raises(gs.UnsupportedModuleError, match="use_cuda"):
        gs.trace(model, inputs(torch.float32))


# --------------------------------------------------------------------------- as a user
def jamba_lm():
    torch.manual_seed(0)
    cfg = jamba.JambaLMConfig(
        d_model=8,
        n_layers=3,
        mlp_size=16,
        d_state=4,
        vocab_size=32,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_experts=2,
        num_experts_per_tok=1,
        attn_layer_offset=1,
        attn_layer_period=3,
    )
    return jamba.JambaLM(cfg)


def test_jamba_profile_save_load_and_its_step_path(tmp_path):
    model = jamba_lm()
    ids = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(0))
    prof = gs.profile(model, ids, analysis={"progress": False})
    names = [layer.name for layer in prof.trace.layers]
    assert names == ["jamba.layers.0.mamba", "jamba.layers.2.mamba"]  # layer 1 is attention
    text = str(prof.diagnosis)
    assert "mambapy" in text and "vanishing" in text  # Δ ≈ softplus(0): decays 0.5 … 0.02
    back = gs.load(prof.trace.save(tmp_path / "jamba.npz"))
    again = gs.diagnose(back, progress=False)
    for name in names:
        assert again[name].regime == prof.diagnosis[name].regime
        np.testing.assert_array_equal(
            again[name].lyapunov.exponents, prof.diagnosis[name].lyapunov.exponents
        )
    caches = [layer.get_empty_cache(1, "cpu") for layer in model.jamba.layers]
    with pytest.raises(gs.UnsupportedModuleError, match="step"):
        gs.trace(_Stepper(model, caches), ids[:1, :1])


class _Stepper(torch.nn.Module):
    """A model whose forward generates one token with JambaLM.step (the cached path)."""

    def __init__(self, lm, caches):
        super().__init__()
        self.lm, self.caches = lm, caches

    def forward(self, ids):
        return self.lm.step(ids, self.caches)[0]


def test_monitor_over_a_few_training_steps():
    torch.manual_seed(0)
    backbone = block_model(torch.float32)
    head = torch.nn.Linear(WIDTH, 5)
    model = torch.nn.Sequential(backbone, head)

    def loss(i):
        v = torch.randn(2, 9, WIDTH, generator=torch.Generator().manual_seed(i))
        return F.cross_entropy(model(v).flatten(0, 1), torch.arange(18) % 5)

    hist = monitored_training(model, loss)
    assert sorted(hist.names) == ["0.layers.0.mixer", "0.layers.1.mixer"]
    norms = hist.grad_norms("0.layers.1.mixer")
    assert norms.shape[0] == 3 and np.isfinite(norms).all() and (norms > 0).all()
