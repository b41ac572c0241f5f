"""Sequence mixers: Mamba (transformers), and the minGRU / LRU examples a user registers.

References: the module's own forward (replay), ``torch.func`` on the adapter's one-step
function in float64 (Jacobian products), exponents recomputed in the test from the module's
parameters (theory), and autograd through a hand-unrolled float64 loop (loss gradients).
"""

from __future__ import annotations

import sys
from pathlib import Path

import native_xlstm
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sequence_cases import (
    SequenceCase,
    check_diagonal,
    check_products,
    reference_jacobians,
    relative_error,
    replay,
)

import gradscope as gs
from gradscope.sequences.mamba import ADAPTER as MAMBA

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import lru as lru_example
import mingru as mingru_example
import transformers


# --------------------------------------------------------------------------- cases
def mamba_model(dtype: torch.dtype = torch.float32, layers: int = 2):
    torch.manual_seed(0)
    cfg = transformers.MambaConfig(
        vocab_size=64,
        hidden_size=16,
        state_size=4,
        num_hidden_layers=layers,
        intermediate_size=32,
        residual_in_fp32=False,
    )
    return transformers.MambaModel(cfg).to(dtype).eval()


def mamba_mixer_call(dtype: torch.dtype, T: int = 12):
    """The second mixer of a tiny Mamba, with the arguments it received in a model forward."""
    model = mamba_model(dtype)
    mixer = model.layers[1].mixer
    seen = {}
    hook = mixer.register_forward_hook(
        lambda m, a, k, o: seen.update(call=(a, k)), with_kwargs=True
    )
    ids = torch.randint(0, 64, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(ids, use_cache=False)
    hook.remove()
    mixer.gs_call = seen["call"]
    return mixer


def mingru(dtype):
    torch.manual_seed(0)
    module = mingru_example.MinGRU(5, 7).to(dtype)
    module.gs_call = ((torch.randn(3, 9, 5, dtype=dtype),), {})
    return module


def lru(dtype):
    module = lru_example.LRU(5, 6, 4).to(dtype)
    module.gs_call = ((torch.randn(3, 9, 5, dtype=dtype, generator=torch.Generator()),), {})
    return module


CASES = [
    SequenceCase("mamba", mamba_mixer_call, lambda m, d: m.gs_call, lambda m: MAMBA),
    SequenceCase(
        "mingru", mingru, lambda m, d: m.gs_call, lambda m: mingru_example.MinGRUAdapter()
    ),
    SequenceCase("lru", lru, lambda m, d: m.gs_call, lambda m: lru_example.LRUAdapter()),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_replay_reproduces_the_module(case, dtype):
    replay(case, dtype)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_products_match_autograd(case):
    adapter, params, u, states = replay(case, torch.float64)
    check_products(adapter, params, u, states)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_diagonal_is_the_spectrum(case):
    adapter, params, u, states = replay(case, torch.float64)
    check_diagonal(adapter, params, u, states)


# --------------------------------------------------------------------------- recording
def test_mamba_found_in_a_transformers_model():
    model = mamba_model()
    trace = gs.trace(model, torch.randint(0, 64, (2, 10)), use_cache=False)
    assert [layer.name for layer in trace.layers] == ["layers.0.mixer", "layers.1.mixer"]
    layer = trace["layers.1.mixer"]
    assert layer.kind == "mamba" and layer.D == 32 * 4 and layer.I == 3 * 32 + 2 * 4
    assert layer.meta["source"] == "sequence" and layer.meta["replay_error"] < 1e-4


def test_generation_step_with_a_cached_state_is_refused():
    model = mamba_model()
    ids = torch.randint(0, 64, (1, 6))
    with torch.no_grad():
        out = model(ids, use_cache=True)
    with pytest.raises(gs.UnsupportedModuleError, match="use_cache=False"):
        gs.trace(model, ids[:, -1:], cache=out.cache, use_cache=True)


def test_saved_sequence_trace_is_analysed_the_same(tmp_path):
    model = mamba_model(torch.float64)
    trace = gs.trace(model, torch.randint(0, 64, (2, 10)), use_cache=False)
    trace.save(tmp_path / "m.npz")
    back = gs.load(tmp_path / "m.npz")
    a = gs.lyapunov(trace["layers.0.mixer"], k=5)
    b = gs.lyapunov(back["layers.0.mixer"], k=5)
    np.testing.assert_array_equal(a.exponents, b.exponents)


# --------------------------------------------------------------------------- analysis
def test_mamba_exponents_are_channel_means_of_log_decay():
    """λ = per-(channel, state) mean of Δ_t·A, with Δ from the module's own sublayers."""
    mixer = mamba_mixer_call(torch.float64, T=20)
    (hidden,), _ = mixer.gs_call
    with torch.no_grad():
        xz = mixer.in_proj(hidden).transpose(1, 2)
        x, _ = xz.chunk(2, dim=1)
        x = F.silu(mixer.conv1d(x)[..., : hidden.shape[1]])
        dt_r = mixer.x_proj(x.transpose(1, 2))[..., : mixer.time_step_rank]
        dt = F.softplus(mixer.dt_proj(dt_r))  # (B, T, E)
        A = -torch.exp(mixer.A_log.float()).double()
        logs = dt[..., None] * A  # (B, T, E, N)
    want = np.sort(logs.mean(dim=1).flatten(1).numpy(), axis=1)[:, ::-1].mean(axis=0)
    with gs.record(mixer) as rec:
        mixer(hidden)
    layer = rec.trace.layers[0]
    got = gs.lyapunov(layer, k=10)
    np.testing.assert_allclose(got.exponents, want[:10], rtol=1e-12)
    # the QR iteration on the operators converges to the same leading exponent (slowly)
    qr = gs.lyapunov(layer, k=2, method="operator")
    assert abs(qr.exponents[0] - want[0]) < 0.05
    # the state decay curve is exact: ln‖∂s_T/∂s_(T-k)‖ = max over coordinates
    curve = gs.decay(layer, of="state").norms
    ref = logs.flip(1).cumsum(1).flatten(2).max(-1).values.numpy().T  # (T, B) lags 1..T
    np.testing.assert_allclose(np.log(curve[1:]), ref, rtol=1e-10)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_input_sensitivity_matches_dense_products(case):
    """‖∂s_T/∂u_(T−1−k)‖ from the diagonal path vs products of torch.func Jacobians."""
    adapter, params, u, states = replay(case, torch.float64)
    from gradscope.layer_trace import LayerTrace

    layer = LayerTrace(
        "x", adapter.kind, states, u, None, adapter.state_names,
        tuple(adapter.state_sizes(params)), params, adapter=adapter,
    )  # fmt: skip
    got = gs.decay(layer, of="input").log_norms  # (K, B)
    T, B = u.shape[:2]
    js, ju = reference_jacobians(adapter, params, u.flatten(0, 1), states[:-1].flatten(0, 1))
    js, ju = js.unflatten(0, (T, B)), ju.unflatten(0, (T, B))
    for b in range(B):
        P = torch.eye(states.shape[-1], dtype=torch.float64)
        for k in range(T):
            t = T - 1 - k
            want = torch.log(torch.linalg.matrix_norm(P @ ju[t, b], ord=2))
            assert abs(got[k, b] - float(want)) < 1e-8, (k, b)
            P = P @ js[t, b]


def test_lru_exponents_are_log_moduli():
    model = lru_example.LRU(4, 5, 3).double()
    trace = gs.trace(model, torch.randn(2, 30, 4, dtype=torch.float64))
    got = gs.lyapunov(trace.layers[0]).exponents
    theory = -torch.exp(model.nu_log.detach()).numpy()  # ln|λ| = −exp(ν), twice each
    np.testing.assert_allclose(got, np.sort(np.repeat(theory, 2))[::-1], rtol=1e-12)
    spec = gs.spectrum(trace.layers[0], which="eig", steps=[0])
    lam = torch.exp(torch.complex(-torch.exp(model.nu_log), torch.exp(model.theta_log))).detach()
    assert np.allclose(np.sort(np.abs(spec.values[0, 0])), np.sort(np.abs(np.r_[lam, lam])))


def test_mingru_exponents_from_gates():
    model = mingru_example.MinGRU(3, 4).double()
    x = torch.randn(2, 25, 3, dtype=torch.float64)
    trace = gs.trace(model, x)
    with torch.no_grad():
        logs = torch.log(1 - torch.sigmoid(model.gate(x)))  # (B, T, H)
    want = np.sort(logs.mean(1).numpy(), axis=1)[:, ::-1].mean(0)
    np.testing.assert_allclose(gs.lyapunov(trace.layers[0]).exponents, want, rtol=1e-12)


# --------------------------------------------------------------------------- gradients
def test_mamba_loss_gradients_match_a_hand_unrolled_loop():
    mixer = mamba_mixer_call(torch.float64, T=10)
    (hidden,), _ = mixer.gs_call
    weight = torch.randn(hidden.shape[0], hidden.shape[1], 16, dtype=torch.float64)
    with gs.record(mixer, grads=True) as rec:
        loss = (mixer(hidden) * weight).sum()
    loss.backward()
    got = rec.trace.layers[0].grads  # (T+1, B, D)

    # reference: the recurrence unrolled by hand from the module's sublayers, autograd
    B, T = hidden.shape[:2]
    E, N = mixer.A_log.shape
    xz = mixer.in_proj(hidden).transpose(1, 2)
    x, z = xz.chunk(2, dim=1)
    x = F.silu(mixer.conv1d(x)[..., :T]).transpose(1, 2)  # (B, T, E)
    dt_r, b, c = torch.split(mixer.x_proj(x), [mixer.time_step_rank, N, N], dim=-1)
    dt = F.softplus(mixer.dt_proj(dt_r))
    A = -torch.exp(mixer.A_log.float()).double()
    h = torch.zeros(B, E, N, dtype=torch.float64, requires_grad=True)
    states, ys = [h], []
    for t in range(T):
        xt, bt = x[:, t].float().double(), b[:, t].float().double()
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * xt)[..., None] * bt[:, None]
        h.retain_grad()
        states.append(h)
        ys.append((h @ c[:, t, :, None])[..., 0] + x[:, t] * mixer.D)
    y = torch.stack(ys, 1) * F.silu(z.transpose(1, 2))
    (mixer.out_proj(y) * weight).sum().backward()
    want = torch.stack([s.grad.flatten(1) for s in states])
    assert relative_error(got, want) < 1e-10


def test_monitor_on_a_mamba_language_model():
    torch.manual_seed(0)
    cfg = transformers.MambaConfig(
        vocab_size=32, hidden_size=16, state_size=4, num_hidden_layers=2, intermediate_size=32
    )
    model = transformers.MambaForCausalLM(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    monitor = gs.Monitor(model, every=1, analyze=False)
    for _ in range(3):
        ids = torch.randint(0, 32, (2, 12))
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        monitor.step()
    monitor.close()
    hist = monitor.history
    assert sorted(hist.names) == ["backbone.layers.0.mixer", "backbone.layers.1.mixer"]
    norms = hist.grad_norms("backbone.layers.1.mixer")
    assert norms.shape[0] == 3 and np.isfinite(norms).all()
    # the last position predicts no label (the LM loss shifts labels): ∂L/∂h_T = 0 exactly
    assert (norms[:, :-1] > 0).all() and (norms[:, -1] == 0).all()


# --------------------------------------------------------------------------- memory view
def test_timescales_of_an_lru_are_theory():
    model = lru_example.LRU(4, 6, 3).double()
    trace = gs.trace(model, torch.randn(2, 40, 4, dtype=torch.float64))
    d = gs.diagnose(trace)[trace.layers[0].name]
    tau = 1.0 / torch.exp(model.nu_log.detach()).numpy()  # −1/ln|λ| = 1/exp(ν), per channel
    np.testing.assert_allclose(np.sort(d.memory.tau), np.sort(np.repeat(tau, 2)), rtol=1e-12)
    assert d.memory.frac_long == pytest.approx(np.mean(tau >= 40))
    assert d.memory.median_selectivity == pytest.approx(0.0, abs=1e-12)  # time invariant
    assert "Memory:" in d.verdict


def test_memory_panels_only_for_diagonal_layers(tmp_path):
    from gradscope.reporting.content.build import build_document
    from gradscope.reporting.inputs.run import Run

    lstm = torch.nn.LSTM(3, 4)
    runs = {
        "mingru": gs.diagnose(gs.trace(mingru_example.MinGRU(3, 4), torch.randn(2, 15, 3))),
        "lstm": gs.diagnose(gs.trace(lstm, torch.randn(15, 2, 3))),
    }
    for name, diag in runs.items():
        doc = build_document([Run(label=None, source="test", diagnosis=diag)], "t", "now", {})
        keys = {p.spec.key for s in doc.runs[0].layers for p in s.panels}
        assert ("memory-timescales" in keys) == (name == "mingru")
        assert ("memory-selectivity" in keys) == (name == "mingru")


def test_recording_without_transformers_modules_never_imports_it():
    import subprocess

    code = (
        "import sys, torch, gradscope as gs\n"
        "gs.diagnose(gs.trace(torch.nn.LSTM(2, 3), torch.randn(6, 1, 2)))\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# --------------------------------------------------------------------------- non-finite input
def _chunked_model(family: str):
    """A tiny model whose mixer's reference path is chunked (a NaN spreads over its chunk)."""
    torch.manual_seed(0)
    if family == "mamba2":
        cfg = transformers.Mamba2Config(
            vocab_size=64,
            hidden_size=32,
            expand=1,
            num_heads=4,
            head_dim=8,
            n_groups=1,
            state_size=8,
            num_hidden_layers=1,
            chunk_size=8,
            use_cache=False,
        )
        return transformers.Mamba2Model(cfg)
    if family == "xlstm":
        cfg = transformers.xLSTMConfig(
            vocab_size=64,
            hidden_size=32,
            num_heads=2,
            num_blocks=1,
            qk_dim_factor=1.0,
            mode="train",
            chunk_size=4,
            use_cache=False,
        )
        return native_xlstm.modeling().xLSTMModel(cfg)
    cfg = transformers.Qwen3NextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        layer_types=["linear_attention"],
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        linear_conv_kernel_dim=4,
        linear_key_head_dim=8,
        linear_value_head_dim=8,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=16,
        use_cache=False,
    )
    cfg._experts_implementation = "eager"
    return transformers.Qwen3NextModel(cfg)


@pytest.mark.parametrize("family", ["mamba2", "xlstm", "deltanet"])
def test_a_nan_input_is_reported_not_blamed_on_the_adapter(family):
    """One NaN in sequence 1 (regression: ReplayMismatchError "the module's forward differs
    from what the adapter implements"). Sequence 0 is replayed exactly as without it."""
    model = _chunked_model(family).double().eval()
    embeds = torch.randn(2, 12, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    clean = gs.trace(model, inputs_embeds=embeds, use_cache=False)[0]
    embeds[1, 5, 3] = float("nan")
    layer = gs.trace(model, inputs_embeds=embeds, use_cache=False)[0]
    bad = layer.nonfinite()  # (T+1, B): NaN/inf states
    assert bad[:, 1].any() and not bad[:, 0].any()
    assert relative_error(layer.states[:, 0], clean.states[:, 0]) < 1e-12
    d = gs.diagnose(layer, progress=False)[0]
    assert d.nonfinite["count"] > 0 and d.nonfinite["first_batch"] == 1
