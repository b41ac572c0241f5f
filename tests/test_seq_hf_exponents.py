"""Lyapunov exponents of every variant of the served transformers mixers, recomputed in the test.

One class per variant (the way its drive differs): what the module hands its own scan or
delta-rule kernel is captured (a spy in place of the kernel, which then runs the original),
and the exponents are recomputed here from those numbers and the module's weights by the
published equations, never by the adapter: for the diagonal families (Mamba-1, Mamba-2)
the per-coordinate time means of ``Δ_t A`` (``exp(Δ A)`` are the eigenvalues), for the delta
rules a plain QR loop on the dense per-head transitions, for lightning attention the slopes
of MiniMax's formula. gradscope's exponents (from the recorded trace, closed-form products)
must agree.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hf_relatives import MIXERS, build, host, inputs, one_thread  # noqa: F401 (autouse)

import gradscope as gs

SPECS = {spec.name: spec for spec in MIXERS}


def _spy(monkeypatch, spec, mixer, name):
    """Replace the kernel ``name`` of the mixer's module by a recorder of its arguments."""
    modeling = importlib.import_module(type(mixer).__module__)
    rule, calls = getattr(modeling, name), []

    def detached(x):
        return x.detach() if isinstance(x, torch.Tensor) else x

    def spy(*args, **kwargs):
        calls.append(([detached(a) for a in args], {k: detached(v) for k, v in kwargs.items()}))
        return rule(*args, **kwargs)

    monkeypatch.setattr(modeling, name, spy)
    return calls


def _trace(spec, mixer):
    hidden, _ = inputs(spec, torch.float64, padded=False)
    (layer,) = gs.trace(type(host(spec, torch.float64))(mixer, spec.call), hidden).layers
    return layer


def _diagonal_exponents(logs: torch.Tensor) -> np.ndarray:
    """``logs`` ``(B, T, D)`` of ``ln|λ|``: per sequence the time means, sorted, mean over B."""
    per_seq = logs.mean(dim=1).numpy()
    return np.sort(per_seq, axis=1)[:, ::-1].mean(axis=0)


def _qr_exponents(mats: torch.Tensor, repeat: int) -> np.ndarray:
    """Plain QR loop on dense ``(B, T, H, d, d)`` transitions; each head's exponents ``repeat``
    times (the ``⊗ I_{d_v}``), sorted per sequence, mean over sequences."""
    mats = mats.transpose(0, 1)
    Q = torch.eye(mats.shape[-1], dtype=mats.dtype).expand(mats.shape[1:]).clone()
    sums = torch.zeros(mats.shape[1:-1], dtype=mats.dtype)
    for Mt in mats:
        Q, R = torch.linalg.qr(Mt @ Q)
        sums += torch.log(torch.diagonal(R, dim1=-2, dim2=-1).abs())
    per_seq = (sums / mats.shape[0]).flatten(1).repeat_interleave(repeat, dim=1).numpy()
    return np.sort(per_seq, axis=1)[:, ::-1].mean(axis=0)


@pytest.mark.parametrize("name", ["falcon_mamba", "jamba", "zamba"])
def test_mamba1_variants(name, monkeypatch):
    """ln λ = Δ·A with Δ = softplus(dt + b_Δ), from what the module passes its selective scan."""
    spec = SPECS[name]
    mixer = build(spec, torch.float64)
    calls = _spy(monkeypatch, spec, mixer, "mamba_selective_scan")
    layer = _trace(spec, mixer)
    logs = []
    for args, kw in calls:  # one call per SSM head (Zamba), in head order
        dt, A = args[1], args[2]  # (B, E_h, T), (E_h, N)
        delta = F.softplus(dt + kw["delta_bias"].to(dt.dtype)[..., None])
        logs.append(delta[:, :, :, None] * A.to(dt.dtype)[None, :, None, :])  # (B, E_h, T, N)
    logs = torch.cat(logs, dim=1).permute(0, 2, 1, 3).flatten(2)  # (B, T, E·N), channel-major
    want = _diagonal_exponents(logs)
    got = gs.lyapunov(layer, progress=False)
    np.testing.assert_allclose(got.exponents, want, rtol=1e-12, atol=1e-14)
    assert -5 < want[-1] < want[0] < 0


@pytest.mark.parametrize("name", ["falcon_h1-norm-before-gate", "bamba"])
def test_mamba2_variants(name, monkeypatch):
    """ln a_h = clamp(softplus(dt + dt_bias))·A_h, from what the module passes its SSD scan."""
    spec = SPECS[name]
    mixer = build(spec, torch.float64)
    calls = _spy(monkeypatch, spec, mixer, "mamba2_chunk_scan")
    layer = _trace(spec, mixer)
    ((args, kw),) = calls
    dt, A = args[1], args[2]  # (B, T, H), (H,)
    delta = torch.clamp(F.softplus(dt + kw["dt_bias"]), *kw["dt_limit"])
    P, N = mixer.head_dim, mixer.ssm_state_size
    want = _diagonal_exponents((delta * A.double()).repeat_interleave(P * N, dim=-1))
    got = gs.lyapunov(layer, progress=False)
    np.testing.assert_allclose(got.exponents, want, rtol=1e-12, atol=1e-14)
    qr = gs.lyapunov(layer, init="identity", method="operator", progress=False)
    np.testing.assert_allclose(qr.exponents, want, rtol=1e-10)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + 1e-6)


@pytest.mark.parametrize("name", ["qwen3_5", "olmo_hybrid-neg-eigval"])
def test_gated_deltanet_variants(name, monkeypatch):
    """∏ α_t (I - β_t k̂ k̂ᵀ) per value head, from the module's key, g and β."""
    spec = SPECS[name]
    mixer = build(spec, torch.float64)
    calls = _spy(monkeypatch, spec, mixer, "torch_chunk_gated_delta_rule")
    layer = _trace(spec, mixer)
    ((args, kw),) = calls
    key, g, beta = args[1], kw["g"], kw["beta"]  # (B, T, H_k, d_k), (B, T, H_v)
    khat = _unit(key.repeat_interleave(g.shape[-1] // key.shape[2], dim=2))
    eye = torch.eye(khat.shape[-1], dtype=torch.float64)
    mats = torch.exp(g)[..., None, None] * (
        eye - beta[..., None, None] * khat[..., :, None] * khat[..., None, :]
    )
    want = _qr_exponents(mats, repeat=mixer.head_v_dim)
    got = gs.lyapunov(layer, init="identity", method="operator", progress=False)
    np.testing.assert_allclose(got.exponents, want, rtol=1e-9, atol=1e-12)
    if name.startswith("olmo"):  # β up to 2: some transitions flip a direction
        assert bool((beta > 1).any())


@pytest.mark.parametrize(
    "name", ["kimi_linear", "glm5_next-lower-bound", "bailing_hybrid-safe-gate"]
)
def test_kimi_delta_variants(name, monkeypatch):
    """∏ (I - β_t k̂ k̂ᵀ) diag(exp g_t) per head, from the module's key, g and β."""
    spec = SPECS[name]
    mixer = build(spec, torch.float64)
    calls = _spy(monkeypatch, spec, mixer, "chunk_kimi_delta_attention")
    layer = _trace(spec, mixer)
    ((args, kw),) = calls
    key, g, beta = args[1], kw["g"].double(), kw["beta"]  # (B, T, H, d), (B, T, H, d), (B, T, H)
    khat = key / torch.sqrt((key * key).sum(-1, keepdim=True) + 1e-6)
    eye = torch.eye(khat.shape[-1], dtype=torch.float64)
    mats = (eye - beta[..., None, None] * khat[..., :, None] * khat[..., None, :]) * torch.exp(g)[
        ..., None, :
    ]
    want = _qr_exponents(mats, repeat=mixer.head_dim)
    got = gs.lyapunov(layer, init="identity", method="operator", progress=False)
    np.testing.assert_allclose(got.exponents, want, rtol=1e-9, atol=1e-12)
    assert want[0] < 0


def test_lightning_exponents_are_minus_the_slopes():
    """λ_h = exp(-s_h), s_h = 2^{-8(h+1)/H} (1 - ℓ/(L - 1 + 1e-5) + 1e-5): every exponent -s_h."""
    spec = SPECS["minimax"]
    mixer = build(spec, torch.float64)
    layer = _trace(spec, mixer)
    H, L, layer_idx = mixer.num_attention_heads, mixer.num_hidden_layers, mixer.layer_idx
    rate = (1 / 2 ** (8 / H)) ** np.arange(1, H + 1) * (1 - layer_idx / (L - 1 + 1e-5) + 1e-5)
    d2 = mixer.head_dim**2
    want = np.sort(np.repeat(-rate, d2))[::-1]
    got = gs.lyapunov(layer, progress=False)
    # the module keeps its slopes as a float32 buffer: the formula to float32 rounding
    np.testing.assert_allclose(got.exponents, want, rtol=1e-7)
    np.testing.assert_allclose(
        got.exponents, np.sort(np.repeat(-mixer.slope_rate.flatten().numpy(), d2))[::-1], rtol=1e-14
    )
