"""xLSTM's mLSTM layer (transformers' ``xLSTMLayer``) through its sequence adapter.

References: the layer's own output, captured by a forward hook while the whole
``xLSTMModel`` runs (replay); ``torch.func`` on the adapter's one-step function in float64
(Jacobian products, eigenvalues); and the forget gates recomputed here from the layer's
``fgate_preact`` weights and captured input (Lyapunov exponents). transformers ships no
sLSTM, so there is nothing to test for it.
"""

from __future__ import annotations

import native_xlstm
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sequence_cases import SequenceCase, check_diagonal, check_products, replay

from gradscope.analysis.lyapunov import lyapunov
from gradscope.errors import UnsupportedModuleError
from gradscope.sequences.xlstm import ADAPTER as MLSTM
from gradscope.traces import LayerTrace

xlstm = native_xlstm.modeling()  # transformers' own classes, with or without the package
xlstm_config = pytest.importorskip("transformers.models.xlstm.configuration_xlstm")
#: With the ``xlstm`` package installed, transformers builds its blocks from
#: ``xlstm.xlstm_large``'s mLSTMLayer and defines no xLSTMLayer of its own (the lone-layer
#: cases below then have no class to build; tests/test_seq_xlstm_pkg.py covers that layer).
OWN_LAYER = getattr(xlstm, "xLSTMLayer", None)
NO_OWN_LAYER = "transformers uses the xlstm package's mLSTMLayer: no xLSTMLayer of its own"

B = 2
#: Inference mode stores the states in float32 between steps (``inference_state_dtype``
#: accepts only float32/bfloat16/float16) and, by default, the head norm reduces in float32,
#: also in a float64 model: the module itself is float32-accurate there, so the float64
#: replay agrees to float32 rounding (measured 2e-9..6e-8), not to float64 rounding.
FLOAT32_INSIDE = {torch.float64: 1e-5, torch.float32: 1e-4}


def config(**kw):
    """A toy config; ``qk_dim_factor=0.5`` gives d_k = 8, d_v = 16 (D = 272) for hidden 32."""
    base = dict(
        vocab_size=64,
        hidden_size=32,
        num_heads=2,
        num_blocks=1,
        qk_dim_factor=0.5,
        ffn_round_up_to_multiple_of=16,
        norm_reduction_force_float32=False,
    )
    base.update(kw)
    return xlstm_config.xLSTMConfig(**base)


def perturb_gates(module: torch.nn.Module) -> None:
    """Input-dependent gates: transformers initialises the gate weights to zero and the
    biases to constants (i = -10, f = 3..6), which would make every forget gate a constant.
    The input gates spread wide enough that both branches of the stabiliser's max occur."""
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "gate_preact" in name:  # igate_preact / fgate_preact / ifgate_preact (fused)
                std = 0.5 if "weight" in name else 1.0
                p.copy_(std * torch.randn(p.shape, generator=gen, dtype=p.dtype))
                if name.endswith("fgate_preact.bias"):
                    p.add_(2.0)


def hooked(layer: torch.nn.Module, run) -> tuple[tuple, dict]:
    """The (args, kwargs) of the layer's last call during ``run()``, cloned (xLSTMModel
    overwrites the cached state tensors in place after the call); checks that calling the
    layer again on them gives the output the hook saw."""
    seen = []

    def clone(a):
        if isinstance(a, torch.Tensor):
            return a.clone()
        return tuple(clone(x) for x in a) if isinstance(a, tuple | list) else a

    def hook(mod, args, kwargs, out):
        seen.append((clone(args), {k: clone(v) for k, v in kwargs.items()}, out[0].clone()))

    handle = layer.register_forward_hook(hook, with_kwargs=True)
    with torch.no_grad():
        run()
    handle.remove()
    args, kwargs, out = seen[-1]
    with torch.no_grad():
        assert torch.equal(layer(*args, **kwargs)[0], out)
    return args, kwargs


def model_layer(T: int, cached: bool = False, **kw):
    """``build`` for a whole xLSTMModel: returns the first block's xLSTMLayer, with the
    arguments it got in a model forward kept in ``layer.__dict__["gs_call"]``.

    ``cached``: a first forward fills the cache, the captured call is the second one, which
    continues from a non-zero ``(C, n, m)``.
    """

    def build(dtype: torch.dtype) -> torch.nn.Module:
        torch.manual_seed(0)
        model = xlstm.xLSTMModel(config(**kw))
        perturb_gates(model)
        model = model.to(dtype).eval()
        layer = model.blocks[0].mlstm_layer
        gen = torch.Generator().manual_seed(1)
        ids = torch.randint(0, 64, (B, 2 * T), generator=gen)

        def run():
            if cached:
                out = model(ids[:, :T], use_cache=True)
                model(ids[:, T:], use_cache=True, cache=out.cache)
            else:
                model(ids[:, :T], use_cache=False)

        layer.__dict__["gs_call"] = hooked(layer, run)  # no submodule registration
        return layer

    return build


def fused_layer(dtype: torch.dtype) -> torch.nn.Module:
    """A lone fused-weight layer with biases (``xLSTMModel`` cannot be built with
    ``weight_mode="fused"``: its ``_init_weights`` adds tensors of H and 2H elements)."""
    if OWN_LAYER is None:
        pytest.skip(NO_OWN_LAYER)
    torch.manual_seed(0)
    layer = OWN_LAYER(config(weight_mode="fused", use_bias=True, mode="train", chunk_size=4))
    perturb_gates(layer)
    with torch.no_grad():
        layer.multihead_norm.bias.normal_()
    layer = layer.to(dtype).eval()
    x = torch.randn(B, 8, 32, generator=torch.Generator().manual_seed(1)).to(dtype)
    layer.__dict__["gs_call"] = hooked(layer, lambda: layer(x))
    return layer


def case(name: str, build, tol=None) -> SequenceCase:
    extra = {} if tol is None else {"replay_tol": tol}
    return SequenceCase(name, build, lambda m, d: m.gs_call, lambda m: MLSTM, **extra)


# ε = 1e-2 makes the stabiliser's share of the output (ε e^{m - r}) about 1e-4 of it.
TRAIN = case("train-chunkwise", model_layer(12, mode="train", chunk_size=4, eps=1e-2))
CASES = [
    TRAIN,
    case("inference-steps", model_layer(12, norm_reduction_force_float32=True), FLOAT32_INSIDE),
    case("inference-chunks+steps", model_layer(20, chunk_size=8), FLOAT32_INSIDE),
    case("inference-one-step", model_layer(1), FLOAT32_INSIDE),
    case(
        "train-cached",
        model_layer(8, cached=True, hidden_size=64, qk_dim_factor=1.0, mode="train", chunk_size=4),
    ),
    case("fused-bias", fused_layer),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_replay(c: SequenceCase, dtype: torch.dtype) -> None:
    adapter, params, u, states = replay(c, dtype)
    assert u.dtype == dtype and states.shape == (u.shape[0] + 1, B, adapter.state_size(params))
    assert u.shape[-1] == adapter.input_size(params)
    relaxed = adapter.replay_tolerance(params, dtype)
    assert (relaxed is not None) == (c.replay_tol[torch.float64] > 1e-10 and dtype == torch.float64)
    if c.name == "train-cached":
        assert states[0].abs().max() > 0  # the call started from the cached state


def some_steps(u: torch.Tensor, states: torch.Tensor, steps: list[int]):
    """The pairs ``(u_t, s_{t-1})`` of a few steps, in the layout the checks take."""
    idx = torch.tensor(steps)
    return u[idx], torch.cat([states[idx], states[-1:]])


@pytest.mark.parametrize("c", [TRAIN, CASES[-1]], ids=["model", "fused-bias"])
def test_products_and_diagonal(c: SequenceCase) -> None:
    adapter, params, u, states = replay(c, torch.float64)
    check_products(adapter, params, *some_steps(u, states, [0, 3, 7]))
    check_diagonal(adapter, params, *some_steps(u, states, [5]))


def test_stabiliser_exercised() -> None:
    """Both branches of m_t = max(ln f_t + m_{t-1}, ĩ_t) occur after the first step, and the
    stabiliser changes the output (through ε) by far more than the replay tolerance."""
    adapter, params, u, states = replay(TRAIN, torch.float64)
    _, _, _, i_rel, _, _, mu, _ = adapter._split(params, u)
    input_wins = (mu[1:] == i_rel[1:]).double().mean()
    assert 0.0 < input_wins < 1.0
    shifted = adapter.readout(
        params, torch.cat([u[..., :-4], u[..., -4:-2] - 1, u[..., -2:]], -1), states
    )
    assert (shifted - adapter.readout(params, u, states)).abs().max() > 1e-6


def test_lyapunov_is_mean_log_forget_gate() -> None:
    """Exponents = per-head means of ln σ(f̃_t) over time, f̃ recomputed from the weights."""
    layer_module = TRAIN.build(torch.float64)
    adapter, params, u, states = replay(TRAIN, torch.float64)
    x = layer_module.gs_call[0][0]  # (B, T, hidden): the layer's input in the model
    fg = layer_module.fgate_preact
    cap = layer_module.config.gate_soft_cap
    with torch.no_grad():
        f_pre = cap * torch.tanh((x @ fg.weight.T + fg.bias) / cap)  # (B, T, H)
        per_head = F.logsigmoid(f_pre).mean(dim=1)  # (B, H)
    dk, dv = 8, 16  # 2 heads
    per_coord = per_head.repeat_interleave(dk * dv + dk, dim=1).numpy()
    want = np.sort(per_coord, axis=1)[:, ::-1].mean(axis=0)
    trace = LayerTrace(
        name="mlstm",
        kind=adapter.kind,
        states=states,
        inputs=u,
        lengths=None,
        state_names=adapter.state_names,
        state_sizes=adapter.state_sizes(params),
        params=params,
        adapter=adapter,
    )
    assert trace.D == 272  # H (d_k d_v + d_k)
    exact = lyapunov(trace, progress=False)  # the diagonal path (log_decay)
    np.testing.assert_allclose(exact.exponents, want, rtol=0, atol=1e-12)
    # The QR iteration on the closed-form products agrees; from the identity, J_t = f_t I
    # per head keeps Q = I, so the finite-time values are exact (from a random Q_0 they
    # only converge as T grows).
    qr = lyapunov(trace, k=16, init="identity", method="operator", progress=False)
    np.testing.assert_allclose(qr.exponents, want[:16], rtol=0, atol=1e-12)


@pytest.mark.skipif(OWN_LAYER is None, reason=NO_OWN_LAYER)
def test_unsupported_padding_mode() -> None:
    layer = OWN_LAYER(config(mode="train_with_padding", return_last_states=False))
    with pytest.raises(UnsupportedModuleError, match="train_with_padding"):
        MLSTM.module_params(layer)


def test_initial_state_matches_drive() -> None:
    """What the recorder takes before the call (initial_state) is the drive's s0: the
    cached (C_0, n_0, m_0) rescaled by e^{m_0 - r}, with r >= m_0."""
    layer = CASES[4].build(torch.float64)
    args, kwargs = layer.gs_call
    params = MLSTM.module_params(layer)
    drive = MLSTM.drive(params, args, kwargs)
    assert torch.equal(MLSTM.initial_state(layer, args, kwargs), drive.s0)
    c0, _, m0 = args[1]
    assert c0.abs().max() > 0 and m0.abs().max() > 0
    r = drive.u[0, :, -2:]  # (B, H)
    assert (r >= m0.reshape(B, 2)).all()
    assert MLSTM.initial_state(layer, (args[0],), {}) is None
