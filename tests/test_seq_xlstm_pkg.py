"""The ``xlstm`` package's mLSTM layers through their sequence adapters.

Two layers: the paper's ``xlstm.blocks.mlstm.layer.mLSTMLayer`` (kind ``mlstm_block``) and
xLSTM-7B's ``xlstm.xlstm_large.model.mLSTMLayer`` (kind ``mlstm``, also what transformers'
xLSTM is built from when the package is installed). References: the layer's own output,
captured by a forward hook while the whole model runs (replay); ``torch.func`` on the
adapter's one-step function in float64 (Jacobian products, eigenvalues); the forget gates
recomputed here from the layer's own submodules (Lyapunov exponents); autograd through a
loop written here from the layer's submodules (loss gradients).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sequence_cases import SequenceCase, check_diagonal, check_products, relative_error, replay

import gradscope as gs
from gradscope.sequences.xlstm import ADAPTER as MLSTM
from gradscope.sequences.xlstm_pkg import ADAPTER as BLOCK

xlstm = pytest.importorskip("xlstm")
large = pytest.importorskip("xlstm.xlstm_large.model")

B, DIM = 3, 8
NATIVE = dict(
    chunkwise_kernel="chunkwise--native_autograd",
    sequence_kernel="native_sequence__native",
    step_kernel="native",
)


def perturb(model: torch.nn.Module, ibias: float = 0.0) -> None:
    """Input-dependent gates and non-zero biases (the package initialises the gate weights
    to zero and the forget biases to 3..6, which would make every forget gate a constant)."""
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if "gate" in name:
                p.copy_((0.3 if name.endswith("weight") else 1.0) * noise)
                if "fgate" in name and name.endswith("bias"):
                    p.add_(2.0)
                if "igate" in name and name.endswith("bias"):
                    p.add_(ibias)
            elif name.endswith("bias") or "outnorm" in name or "learnable_skip" in name:
                p.add_(0.2 * noise)


def hooked(layer: torch.nn.Module, run) -> None:
    """Keep the (cloned) arguments of the layer's last call during ``run()`` on the layer."""
    seen = []

    def clone(a):
        if isinstance(a, torch.Tensor):
            return a.clone()
        return tuple(clone(x) for x in a) if isinstance(a, tuple | list) else a

    def hook(mod, args, kwargs, out):
        seen.append((clone(args), {k: clone(v) for k, v in kwargs.items()}))

    handle = layer.register_forward_hook(hook, with_kwargs=True)
    with torch.no_grad():
        run()
    handle.remove()
    layer.__dict__["gs_call"] = seen[-1]


# --------------------------------------------------------------------------- blocks mLSTM
def stack_config(context: int = 16, **kw):
    layer = xlstm.mLSTMLayerConfig(
        conv1d_kernel_size=3, qkv_proj_blocksize=4, num_heads=2, round_proj_up_to_multiple_of=8
    )
    base = dict(context_length=context, num_blocks=2, embedding_dim=DIM)
    base.update(kw)
    return xlstm.xLSTMBlockStackConfig(mlstm_block=xlstm.mLSTMBlockConfig(mlstm=layer), **base)


def block_layer(T: int, context: int = 16, ibias: float = 0.0, **kw):
    """``build``: the second block's mLSTMLayer (E = 16, H = 2, d = 8: D = 144) of an
    xLSTMBlockStack, with the arguments it got in the stack's forward."""

    def build(dtype: torch.dtype) -> torch.nn.Module:
        torch.manual_seed(0)
        stack = xlstm.xLSTMBlockStack(stack_config(context, **kw))
        perturb(stack, ibias)
        stack = stack.to(dtype).eval()
        x = torch.randn(B, T, DIM, generator=torch.Generator().manual_seed(1)).to(dtype)
        layer = stack.blocks[1].xlstm
        hooked(layer, lambda: stack(x))
        return layer

    return build


def case(name: str, build, adapter) -> SequenceCase:
    return SequenceCase(name, build, lambda m, d: m.gs_call, lambda m: adapter)


BLOCK_T12 = case("block-T12", block_layer(12), BLOCK)
BLOCK_CASES = [
    BLOCK_T12,
    case("block-T=context", block_layer(16), BLOCK),  # the cell's causal-mask buffer
    case("block-bias-negative-i", block_layer(10, ibias=-4.0, bias=True), BLOCK),
    case("block-one-step", block_layer(1), BLOCK),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("c", BLOCK_CASES, ids=[c.name for c in BLOCK_CASES])
def test_block_replay(c: SequenceCase, dtype: torch.dtype) -> None:
    _, _, u, states = replay(c, dtype)
    assert states.shape[1:] == (B, 2 * 8 * 8 + 2 * 8) and u.shape[-1] == 5 * 16 + 4 * 2


def some_steps(u: torch.Tensor, states: torch.Tensor, steps: list[int]):
    idx = torch.tensor(steps)
    return u[idx], torch.cat([states[idx], states[-1:]])


@pytest.mark.parametrize("c", BLOCK_CASES[:3], ids=[c.name for c in BLOCK_CASES[:3]])
def test_block_products_and_diagonal(c: SequenceCase) -> None:
    adapter, params, u, states = replay(c, torch.float64)
    check_products(adapter, params, *some_steps(u, states, [0, 4, 9]))
    check_diagonal(adapter, params, *some_steps(u, states, [6]))


def test_block_stabiliser_has_no_floor() -> None:
    """The cell's parallel form takes m_t = max_s(...) without the m_0 = 0 of the chunkwise
    kernels: with negative input gates m_t < 0, and a drive floored at 0 would miss the
    module's output by far more than the replay tolerance (through ε e^{m_t})."""
    c = BLOCK_CASES[2]
    adapter, params, u, states = replay(c, torch.float64)
    layer = c.build(torch.float64)
    with torch.no_grad():
        want = layer(*layer.gs_call[0])
    core = adapter._core(params)
    i_rel, mu, r = (adapter._split(params, u[..., :core])[j] for j in (3, 6, 7))
    input_wins = torch.isclose(mu[1:], i_rel[1:], rtol=0, atol=1e-12)
    assert (mu + r < 0).any() and input_wins.any() and not input_wins.all()
    floored = u.clone()
    at = sum(adapter._sizes(params)[:6])  # the m - r block
    floored[..., at : at + 2] = torch.clamp(mu + r, min=0) - r
    assert relative_error(adapter.readout(params, u, states), want) < 1e-12
    assert relative_error(adapter.readout(params, floored, states), want) > 1e-9


def test_block_lyapunov_is_mean_log_forget_gate() -> None:
    layer = BLOCK_T12.build(torch.float64)
    replay(BLOCK_T12, torch.float64)
    (x,), _ = layer.gs_call
    T = x.shape[1]
    with torch.no_grad():  # the forget gates from the layer's own submodules
        xm, _ = layer.proj_up(x).split(16, dim=-1)
        c = F.silu(layer.conv1d(xm))
        gin = torch.cat([layer.q_proj(c), layer.k_proj(c), layer.v_proj(xm)], dim=-1)
        per_head = F.logsigmoid(layer.mlstm_cell.fgate(gin)).mean(dim=1)  # (B, H)
    want = np.sort(per_head.repeat_interleave(72, dim=1).numpy(), axis=1)[:, ::-1].mean(0)
    trace = gs.trace(layer, x)
    lay = trace.layers[0]
    assert lay.kind == "mlstm_block" and lay.T == T and lay.D == 144
    np.testing.assert_allclose(gs.lyapunov(lay).exponents, want, rtol=0, atol=1e-12)


def test_block_loss_gradients_match_a_hand_written_loop() -> None:
    """In training mode with output dropout: the recorded call's mask is the one the
    reference draws again from the same seed (recording leaves the RNG alone)."""
    layer = block_layer(10, ibias=-4.0, bias=True, dropout=0.25)(torch.float64).train()
    (x,), _ = layer.gs_call
    T = x.shape[1]
    weight = torch.randn(B, T, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(7)
    with gs.record(layer, grads=True) as rec:
        loss = (layer(x) * weight).sum()
    loss.backward()
    got = rec.trace.layers[0].grads  # (T+1, B, D)
    assert rec.trace.layers[0].meta["replay_error"] < 1e-12

    # reference: the layer's submodules, the recurrence in the recorded representation
    # (C̄ = e^{-r} C̃, r = max_t ĩ_t), the stabiliser by its recurrence from m_0 = -inf
    cell = layer.mlstm_cell
    with torch.no_grad():
        xm, z = layer.proj_up(x).split(16, dim=-1)
        c = F.silu(layer.conv1d(xm))
        q, k, v = layer.q_proj(c), layer.k_proj(c), layer.v_proj(xm)
        gin = torch.cat([q, k, v], dim=-1)
        ig, fg = cell.igate(gin), cell.fgate(gin)  # (B, T, H)
    heads = lambda a: a.unflatten(-1, (2, 8))  # noqa: E731
    q, k, v = heads(q), heads(k), heads(v)
    r = ig.amax(dim=1)
    C = torch.zeros(B, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    n = torch.zeros(B, 2, 8, dtype=torch.float64, requires_grad=True)
    m = torch.full((B, 2), float("-inf"), dtype=torch.float64)
    states, hs = [(C, n)], []
    for t in range(T):
        f, a = torch.sigmoid(fg[:, t]), torch.exp(ig[:, t] - r)
        m = torch.maximum(F.logsigmoid(fg[:, t]) + m, ig[:, t])
        C = f[..., None, None] * C + a[..., None, None] * k[:, t, :, :, None] * v[:, t, :, None]
        n = f[..., None] * n + a[..., None] * k[:, t]
        C.retain_grad()
        n.retain_grad()
        states.append((C, n))
        num = torch.einsum("bhk,bhkv->bhv", q[:, t], C) / 8**0.5
        den = torch.maximum((q[:, t] * n).sum(-1).abs() / 8**0.5, torch.exp(-r))
        hs.append(num / (den + 1e-6 * torch.exp(m - r))[..., None])
    h = cell.outnorm(torch.stack(hs, dim=2))  # (B, H, T, d)
    h = h.transpose(1, 2).reshape(B, T, 16)
    torch.manual_seed(7)  # the same dropout mask
    y = layer.dropout(layer.proj_down((h + layer.learnable_skip * c) * F.silu(z)))
    assert (y == 0).any()
    (y * weight).sum().backward()
    want = torch.stack([torch.cat([C.grad.flatten(1), n.grad.flatten(1)], 1) for C, n in states])
    assert relative_error(got, want) < 1e-10


def test_block_refusals() -> None:
    layer = block_layer(6, dropout=0.1)(torch.float64).train()
    x = layer.gs_call[0][0]
    assert gs.trace(layer, x).layers[0].meta["replay_error"] < 1e-12  # the mask replayed
    with pytest.raises(gs.UnsupportedModuleError, match="no mask"):
        BLOCK.module_params(layer)  # outside a recording, in training mode
    layer.eval()
    BLOCK.module_params(layer)  # dropout is the identity in eval mode
    layer.mlstm_cell.backend_fn = lambda **kw: None
    with pytest.raises(gs.UnsupportedModuleError, match="parallel_stabilized_simple"):
        BLOCK.module_params(layer)


def lm_model(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = stack_config(context=24, **kw)
    model = xlstm.xLSTMLMModel(xlstm.xLSTMLMModelConfig(vocab_size=32, **vars(cfg)))
    perturb(model)
    return model


def test_block_profile_and_saved_trace(tmp_path) -> None:
    model = lm_model().eval()
    ids = torch.randint(0, 32, (4, 16), generator=torch.Generator().manual_seed(0))
    # max_lag: the input-sensitivity curve's subspace iteration converges slowly on this
    # layer (the input Jacobian's leading singular values are nearly degenerate: ∂C̄/∂v is
    # e^{ĩ-r} k ⊗ I per head), ~1 s per lag block even at toy size
    opts = {"progress": False, "max_lag": 4}
    prof = gs.profile(model, ids, analysis=opts)
    names = [(lay.name, lay.kind) for lay in prof.trace.layers]
    assert names == [(f"xlstm_block_stack.blocks.{i}.xlstm", "mlstm_block") for i in (0, 1)]
    text = str(prof.diagnosis)
    assert "mlstm_block" in text and "Leading Lyapunov exponent" in text
    back = gs.load(prof.trace.save(tmp_path / "x.npz"))
    name = names[1][0]  # one layer diagnosed again (each costs ~1 s, see above)
    again = gs.diagnose([back[name]], **opts)[name]
    assert again.verdict == prof.diagnosis[name].verdict


def test_block_monitor_over_training_steps() -> None:
    model = lm_model(dropout=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    monitor = gs.Monitor(model, every=1, analyze=False)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        ids = torch.randint(0, 32, (2, 11), generator=gen)
        loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        monitor.step()
    monitor.close()
    hist = monitor.history
    name = "xlstm_block_stack.blocks.1.xlstm"
    assert sorted(hist.names) == ["xlstm_block_stack.blocks.0.xlstm", name]
    norms = hist.grad_norms(name)
    assert norms.shape == (3, 11) and np.isfinite(norms).all() and (norms > 0).all()


# --------------------------------------------------------------------------- xlstm_large
def large_config(**kw):
    base = dict(
        embedding_dim=32,
        num_heads=2,
        num_blocks=2,
        vocab_size=64,
        return_last_states=True,
        chunk_size=4,
        norm_reduction_force_float32=False,
        ffn_round_up_to_multiple_of=16,
        **NATIVE,
    )
    base.update(kw)
    return large.xLSTMLargeConfig(**base)


def large_layer(T: int, cached: bool = False, **kw):
    """``build``: xLSTMLarge's second mLSTMLayer (d_k = 8, d_v = 16: D = 272) with the
    arguments it got in the model's forward (``cached``: the second of two calls)."""

    def build(dtype: torch.dtype) -> torch.nn.Module:
        torch.manual_seed(0)
        model = large.xLSTMLarge(large_config(**kw))
        perturb(model)
        model = model.to(dtype).eval()
        ids = torch.randint(0, 64, (B, 2 * T), generator=torch.Generator().manual_seed(1))
        layer = model.backbone.blocks[1].mlstm_layer

        def run():
            if cached:
                _, state = model(ids[:, :T])
                model(ids[:, T:], state)
            else:
                model(ids[:, :T])

        hooked(layer, run)
        return layer

    return build


F32_INSIDE = {torch.float64: 1e-5, torch.float32: 1e-4}  # see MLSTMAdapter.replay_tolerance
LARGE_TRAIN = case("large-train", large_layer(12, mode="train"), MLSTM)
LARGE_CASES = [
    LARGE_TRAIN,
    case(
        "large-train-custbw-cached",
        large_layer(8, True, chunkwise_kernel="chunkwise--native_custbw"),
        MLSTM,
    ),
    case("large-fused-bias", large_layer(8, weight_mode="fused", use_bias=True), MLSTM),
    SequenceCase(
        "large-inference-chunks+steps",
        large_layer(20, mode="inference", chunk_size=16),
        lambda m, d: m.gs_call,
        lambda m: MLSTM,
        replay_tol=F32_INSIDE,
    ),
    SequenceCase(
        "large-inference-one-step-cached",
        large_layer(1, True, mode="inference"),
        lambda m, d: m.gs_call,
        lambda m: MLSTM,
        replay_tol=F32_INSIDE,
    ),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("c", LARGE_CASES, ids=[c.name for c in LARGE_CASES])
def test_large_replay(c: SequenceCase, dtype: torch.dtype) -> None:
    _, _, _, states = replay(c, dtype)
    assert states.shape[1:] == (B, 2 * 8 * 16 + 2 * 8)
    if "cached" in c.name:
        assert states[0].abs().max() > 0  # the call continued from the model's state


@pytest.mark.parametrize("c", LARGE_CASES[1:3], ids=[c.name for c in LARGE_CASES[1:3]])
def test_large_products_and_diagonal(c: SequenceCase) -> None:
    adapter, params, u, states = replay(c, torch.float64)
    check_products(adapter, params, *some_steps(u, states, [0, 3, 7]))
    check_diagonal(adapter, params, *some_steps(u, states, [5]))


def test_large_lyapunov_and_profile(tmp_path) -> None:
    torch.manual_seed(0)
    model = large.xLSTMLarge(large_config(mode="train")).double().eval()
    perturb(model)
    ids = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(0))
    prof = gs.profile(model, ids, analysis={"progress": False})
    names = [(lay.name, lay.kind) for lay in prof.trace.layers]
    assert names == [(f"backbone.blocks.{i}.mlstm_layer", "mlstm") for i in (0, 1)]
    block = model.backbone.blocks[0]
    with torch.no_grad():  # ln σ(cap(W_f x + b_f)), x the block's normed input
        x = block.norm_mlstm(model.embedding(ids))
        cap = model.config.gate_soft_cap
        per_head = F.logsigmoid(cap * torch.tanh(block.mlstm_layer.fgate_preact(x) / cap))
    per_coord = per_head.mean(dim=1).repeat_interleave(8 * 16 + 8, dim=1).numpy()
    want = np.sort(per_coord, axis=1)[:, ::-1].mean(0)
    layer = prof.trace.layers[0]
    np.testing.assert_allclose(gs.lyapunov(layer).exponents, want, rtol=0, atol=1e-12)
    back = gs.load(prof.trace.save(tmp_path / "l.npz"))
    assert str(gs.diagnose(back, progress=False)) == str(prof.diagnosis)


def test_transformers_xlstm_is_recorded_through_the_package_layer() -> None:
    modeling = pytest.importorskip("transformers.models.xlstm.modeling_xlstm")
    configuration = pytest.importorskip("transformers.models.xlstm.configuration_xlstm")
    cfg = configuration.xLSTMConfig(
        vocab_size=64, hidden_size=32, num_heads=2, num_blocks=2, qk_dim_factor=0.5,
        ffn_round_up_to_multiple_of=16,
    )  # fmt: skip
    model = modeling.xLSTMModel(cfg)
    if not isinstance(model.blocks[0].mlstm_layer, large.mLSTMLayer):
        pytest.skip("transformers built its own xLSTMLayer (tests/test_seq_xlstm.py)")
    trace = gs.trace(model, torch.randint(0, 64, (2, 8)), use_cache=False)
    assert [(lay.name, lay.kind) for lay in trace.layers] == [
        (f"blocks.{i}.mlstm_layer", "mlstm") for i in (0, 1)
    ]


def test_large_non_native_kernels_are_refused() -> None:
    """Triton kernels exist only where Triton is installed (a GPU machine), so the layer is
    built native here and its bound kernel swapped for one of another name, as
    mLSTMBackend binds it when built with chunkwise_kernel='chunkwise--triton_limit_chunk'."""
    torch.manual_seed(0)
    model = large.xLSTMLarge(large_config(mode="train"))
    backend = model.backbone.blocks[0].mlstm_layer.mlstm_backend

    def mlstm_chunkwise__triton_limit_chunk(**kw):  # never called: refused before the run
        raise AssertionError("the layer ran")

    backend.chunkwise_kernel_fn = mlstm_chunkwise__triton_limit_chunk
    backend.config.chunkwise_kernel = "chunkwise--triton_limit_chunk"
    ids = torch.randint(0, 64, (2, 8))
    with pytest.raises(gs.UnsupportedModuleError, match="chunkwise--native_autograd"):
        gs.trace(model, ids)
    # in training mode only the chunkwise kernel runs: other step kernels are no matter
    model = large.xLSTMLarge(large_config(mode="train"))
    model.backbone.blocks[0].mlstm_layer.mlstm_backend.step_kernel_fn = lambda **kw: None
    gs.trace(model, ids)
    model.backbone.blocks[0].mlstm_layer.mlstm_backend.config.mode = "inference"
    with pytest.raises(gs.UnsupportedModuleError, match="step_kernel"):
        gs.trace(model, ids)


def test_large_padding_mode_is_refused() -> None:
    model = large.xLSTMLarge(large_config(mode="train_with_padding", return_last_states=False))
    with pytest.raises(gs.UnsupportedModuleError, match="train_with_padding"):
        MLSTM.module_params(model.backbone.blocks[0].mlstm_layer)
