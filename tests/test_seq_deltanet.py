"""Gated DeltaNet (transformers ``Qwen3NextGatedDeltaNet``, torch delta rule) by its adapter.

The layer runs inside a tiny Qwen3-Next (a linear-attention layer, a full-attention layer,
a mixture of 4 experts; ``experts_implementation="eager"`` so that it also runs in float64
on the CPU). References: the module's own forward (replay), ``torch.func`` on the
adapter's one-step function in float64 (Jacobian products), and a plain QR loop on the
dense per-head transitions ``α_t (I - β_t k̂_t k̂_tᵀ)`` built from what the module passed to
its delta rule (Lyapunov exponents).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sequence_cases import SequenceCase, check_products, relative_error, replay

import gradscope as gs
from gradscope.cells.base import BLOCK
from gradscope.layer_trace import LayerTrace
from gradscope.sequences.deltanet import ADAPTER, MODULE_QUALNAME

transformers = pytest.importorskip("transformers")
modeling = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")

DK, DV, T = 8, 8, 19


def qwen3_next_model(dtype: torch.dtype, k_heads: int = 2, v_heads: int = 4):
    """A tiny Qwen3-Next: layer 0 gated DeltaNet, layer 1 full attention, 4 experts."""
    torch.manual_seed(0)
    cfg = transformers.Qwen3NextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        layer_types=["linear_attention", "full_attention"],
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        linear_conv_kernel_dim=4,
        linear_key_head_dim=DK,
        linear_value_head_dim=DV,
        linear_num_key_heads=k_heads,
        linear_num_value_heads=v_heads,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=16,
        use_cache=False,
    )
    cfg._experts_implementation = "eager"  # the grouped_mm experts refuse float64
    model = transformers.Qwen3NextModel(cfg).eval()
    gdn = model.layers[0].linear_attn
    with torch.no_grad():  # O(1) outputs, α in (0.7, 1), β around 1/2 (the init is tiny)
        for lin in (gdn.in_proj_qkvz, gdn.in_proj_ba, gdn.out_proj):
            lin.weight.normal_(0.0, 0.3)
        gdn.conv1d.weight.normal_(0.0, 0.5)
        gdn.A_log.copy_(torch.empty(v_heads).uniform_(0.02, 0.3).log())
        gdn.dt_bias.zero_()
        gdn.norm.weight.uniform_(0.5, 1.5)
    return model.to(dtype)


def layer_call(dtype: torch.dtype, k_heads: int = 2, v_heads: int = 4, padded: bool = False):
    """The DeltaNet layer with the (args, kwargs) it received in a model forward."""
    model = qwen3_next_model(dtype, k_heads, v_heads)
    gdn = model.layers[0].linear_attn
    seen = {}
    hook = gdn.register_forward_hook(lambda m, a, k, o: seen.update(call=(a, k)), with_kwargs=True)
    ids = torch.randint(0, 64, (2, T), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, T, dtype=torch.long)
    if padded:
        mask[1, :4] = 0
    with torch.no_grad():
        model(ids, attention_mask=mask, use_cache=False)
    hook.remove()
    gdn.gs_call = seen["call"]
    return gdn


# Replay tolerances. float64: the module runs the delta rule (torch_chunk_gated_delta_rule
# casts q, k, v, g, β to float32) and its gated RMSNorm in float32 even in a float64 model,
# while the adapter replays in float64: measured 1e-7 relative here.
# test_float64_replay_is_exact_without_the_float32_casts shows the remainder is exactly that
# rounding (1e-10 once the casts are removed).
TOL = {torch.float64: 1e-6, torch.float32: 1e-4}
CASES = [
    SequenceCase(
        "gqa", lambda d: layer_call(d), lambda m, d: m.gs_call, lambda m: ADAPTER, TOL, False
    ),
    SequenceCase(  # the module's **kwargs reach the chunked rule: 3 chunks, the last padded
        "gqa-chunk8",
        lambda d: layer_call(d),
        lambda m, d: (m.gs_call[0], {**m.gs_call[1], "chunk_size": 8}),
        lambda m: ADAPTER,
        TOL,
        False,
    ),
    SequenceCase(
        "mha-padded",
        lambda d: layer_call(d, 2, 2, padded=True),
        lambda m, d: m.gs_call,
        lambda m: ADAPTER,
        TOL,
        False,
    ),
]


def test_class_and_kind():
    cls = modeling.Qwen3NextGatedDeltaNet
    assert f"{cls.__module__}.{cls.__qualname__}" == MODULE_QUALNAME
    assert ADAPTER.kind == "gated_deltanet" and ADAPTER.structure == BLOCK


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_replay_reproduces_the_module(case, dtype):
    adapter, params, u, states = replay(case, dtype)
    assert u.dtype == dtype and u.shape == (T, 2, adapter.input_size(params))
    assert states.shape[-1] == params["num_v_heads"].item() * DK * DV
    assert adapter.diagonal(params, u.flatten(0, 1)) is None  # not diagonal


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_products_match_autograd(case):
    adapter, params, u, states = replay(case, torch.float64)
    check_products(adapter, params, u, states)


def test_state_jacobian_is_the_rank_one_update():
    """J_t = α (I - β k̂ k̂ᵀ) ⊗ I per value head (k̂ on the key index, the left)."""
    adapter, params, u, states = replay(CASES[0], torch.float64)
    x, s = u.flatten(0, 1)[:5], states[:-1].flatten(0, 1)[:5]
    J = adapter.jacobian_state(params, x, s)
    _, k, _, g, beta, _ = adapter._split(params, x)
    Hv = k.shape[1]
    eye = torch.eye(DK, dtype=torch.float64)
    blocks = torch.exp(g)[..., None, None] * (
        eye - beta[..., None, None] * k[..., :, None] * k[..., None, :]
    )  # (n, Hv, DK, DK)
    want = torch.zeros_like(J)
    for h in range(Hv):
        sl = slice(h * DK * DV, (h + 1) * DK * DV)
        want[:, sl, sl] = torch.kron(blocks[:, h], torch.eye(DV, dtype=torch.float64))
    assert relative_error(J, want) < 1e-14


def gated_delta_rule_float64(
    query,
    key,
    value,
    g,
    beta,
    chunk_size=64,
    initial_state=None,
    output_final_state=False,
    use_qk_l2norm_in_kernel=False,
    **kwargs,
):
    """The gated delta rule stepped one position at a time, in the inputs' own dtype.

    Yang, Kautz & Hatamizadeh (2025), eq. (10), per value head with ``S`` of shape
    ``(d_k, d_v)``: ``S_t = α_t (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ`` with ``α_t = exp(g_t)``,
    read out as ``o_t = S_tᵀ q_t / √d_k``; ``q`` and ``k`` L2-normalised (eps 1e-6) when asked.
    Key heads are shared by consecutive value heads. The signature is
    ``torch_chunk_gated_delta_rule``'s, so it stands in for the module's chunked rule; it casts
    nothing, which is the point.
    """
    b, length, k_heads, dk = key.shape
    v_heads, dv = value.shape[-2:]
    query, key = (m.repeat_interleave(v_heads // k_heads, dim=2) for m in (query, key))
    if use_qk_l2norm_in_kernel:
        query, key = (m * torch.rsqrt((m * m).sum(-1, keepdim=True) + 1e-6) for m in (query, key))
    query = query / dk**0.5
    S = initial_state if initial_state is not None else value.new_zeros(b, v_heads, dk, dv)
    outs = []
    for t in range(length):
        q, k, v = query[:, t], key[:, t], value[:, t]  # (b, h, d)
        S = torch.exp(g[:, t])[..., None, None] * S
        delta = beta[:, t, :, None] * (v - (S * k[..., None]).sum(-2))
        S = S + k[..., None] * delta[..., None, :]
        outs.append((S * q[..., None]).sum(-2))
    return torch.stack(outs, dim=1), (S if output_final_state else None)


def test_float64_replay_is_exact_without_the_float32_casts(monkeypatch):
    """With the module's float32 delta rule and norm swapped for float64 ones, replay is exact.

    The module's chunked delta rule (``torch_chunk_gated_delta_rule`` casts q, k, v, g, β to
    float32) and its gated RMSNorm compute in float32 even in a float64 model; both are replaced
    by float64 references written here from the published equations (through the module
    globals the layer calls), and the adapter's replay must then agree with the module to 1e-10
    instead of the float32 rounding ``TOL`` allows.
    """
    seen = []

    def spy(query, *args, **kwargs):
        seen.append(query.dtype)
        return gated_delta_rule_float64(query, *args, **kwargs)

    monkeypatch.setattr(modeling, "torch_chunk_gated_delta_rule", spy)

    def norm64(self, hidden_states, gate):
        v = hidden_states.pow(2).mean(-1, keepdim=True)
        h = hidden_states * torch.rsqrt(v + self.variance_epsilon)
        return self.weight * h * F.silu(gate)

    norm_class = type(layer_call(torch.float64).norm)  # named per model family and release
    monkeypatch.setattr(norm_class, "forward", norm64)
    for case in CASES:
        replay(
            SequenceCase(case.name, case.build, case.inputs, case.adapter, diagonal=False),
            torch.float64,
        )
    assert seen and set(seen) == {torch.float64}  # the module really ran the float64 rule


def _qr_exponents(mats: torch.Tensor) -> torch.Tensor:
    """Plain QR loop from Q_0 = I on dense matrices ``(T, ..., d, d)``: ``(..., d)`` exponents."""
    Q = torch.eye(mats.shape[-1], dtype=mats.dtype).expand(mats.shape[1:]).clone()
    sums = torch.zeros(mats.shape[1:-1], dtype=mats.dtype)
    for M in mats:
        Q, R = torch.linalg.qr(M @ Q)
        sums += torch.log(torch.diagonal(R, dim1=-2, dim2=-1).abs())
    return sums / mats.shape[0]


def test_top_exponent_from_dense_per_head_transitions(monkeypatch):
    """Exponents of ∏ α_t (I - β_t k̂ k̂ᵀ): a dense QR loop per head vs. the adapter's jvp."""
    seen = {}
    rule = modeling.torch_chunk_gated_delta_rule

    def spy(query, key, value, g, beta, **kwargs):  # what the module hands its delta rule
        seen.update(key=key, g=g, beta=beta)
        return rule(query, key, value, g=g, beta=beta, **kwargs)

    monkeypatch.setattr(modeling, "torch_chunk_gated_delta_rule", spy)
    gdn = layer_call(torch.float64)
    Hk, Hv = gdn.num_k_heads, gdn.num_v_heads
    with torch.no_grad():
        gdn(*gdn.gs_call[0], **gdn.gs_call[1])
    key = seen["key"].repeat_interleave(Hv // Hk, dim=2)  # (B, T, Hv, DK)
    khat = key * torch.rsqrt((key * key).sum(-1, keepdim=True) + 1e-6)  # transformers' l2norm
    alpha, beta = torch.exp(seen["g"]), seen["beta"]  # (B, T, Hv)
    eye = torch.eye(DK, dtype=torch.float64)
    mats = alpha[..., None, None] * (
        eye - beta[..., None, None] * khat[..., :, None] * khat[..., None, :]
    )
    per_head = _qr_exponents(mats.transpose(0, 1))  # (B, Hv, DK)
    # J = ⊕_h M_h ⊗ I_DV: each head's exponents DV times; sorted per sequence, mean over them
    per_seq = per_head.flatten(1).repeat_interleave(DV, dim=1).numpy()
    want = np.sort(per_seq, axis=1)[:, ::-1].mean(axis=0)

    params = ADAPTER.module_params(gdn)
    drive = ADAPTER.drive(params, *gdn.gs_call)
    D = ADAPTER.state_size(params)
    states = ADAPTER.scan(params, drive.u, drive.u.new_zeros(2, D))
    layer = LayerTrace(
        name="linear_attn",
        kind="gated_deltanet",
        states=states,
        inputs=drive.u,
        lengths=None,
        state_names=ADAPTER.state_names,
        state_sizes=ADAPTER.state_sizes(params),
        params=params,
        adapter=ADAPTER,
    )
    got = gs.lyapunov(layer, init="identity", method="operator", progress=False)
    assert abs(got.exponents[0] - want[0]) < 1e-10  # the top exponent
    np.testing.assert_allclose(got.exponents, want, rtol=1e-9, atol=1e-12)
    assert -0.5 < want[0] < 0  # contracting, but not trivially


def test_cache_prefill_replays_and_a_cached_step_is_refused():
    model = qwen3_next_model(torch.float32)
    gdn = model.layers[0].linear_attn
    calls = []
    gdn.register_forward_pre_hook(lambda m, a, k: ADAPTER.initial_state(m, a, k), with_kwargs=True)
    gdn.register_forward_hook(lambda m, a, k, o: calls.append((a, k, o)), with_kwargs=True)
    ids = torch.randint(0, 64, (1, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model(ids, use_cache=True)  # a fresh cache: starts from zeros, replayable
    args, kwargs, want = calls[0]
    assert kwargs["cache"] is not None
    params = ADAPTER.module_params(gdn)
    drive = ADAPTER.drive(params, args, kwargs)
    states = ADAPTER.scan(params, drive.u, drive.u.new_zeros(1, ADAPTER.state_size(params)))
    assert relative_error(ADAPTER.readout(params, drive.u, states), want) < 1e-4
    with pytest.raises(gs.UnsupportedModuleError, match="use_cache=False"), torch.no_grad():
        model(ids[:, -1:], cache=out.cache, use_cache=True)


def test_packed_sequences_are_refused():
    gdn = layer_call(torch.float32)
    args, kwargs = gdn.gs_call
    params = ADAPTER.module_params(gdn)
    cu = torch.tensor([0, 7, T], dtype=torch.int32)
    with pytest.raises(gs.UnsupportedModuleError, match="packed"):
        ADAPTER.drive(params, args, {**kwargs, "cu_seq_lens_q": cu})
