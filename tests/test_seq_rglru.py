"""Griffin's RG-LRU (transformers' RecurrentGemmaRglru) through its sequence adapter.

References: the module's own forward (replay, also of packed sequences and of a generation
step from a cached state), ``torch.func`` on the adapter's one-step function in float64
(Jacobian products, eigenvalues), and ``ln a_t`` recomputed here from the module's weights
and inputs (Lyapunov exponents).
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
    relative_error,
    replay,
)

import gradscope as gs
from gradscope.analysis.lyapunov import lyapunov
from gradscope.sequences.rglru import ADAPTER as RGLRU
from gradscope.traces import LayerTrace

transformers = pytest.importorskip("transformers")

T, B, WIDTH = 16, 2, 32


def gemma_model(dtype: torch.dtype) -> torch.nn.Module:
    """A tiny RecurrentGemma (recurrent, recurrent, attention) in eval mode; the gates'
    weights perturbed so that the biases are not all zero."""
    torch.manual_seed(0)
    cfg = transformers.RecurrentGemmaConfig(
        vocab_size=64,
        hidden_size=WIDTH,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_hidden_layers=3,
        attention_window_size=16,
    )
    model = transformers.RecurrentGemmaModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gate" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model.to(dtype)


def ids(n: int = T) -> torch.Tensor:
    return torch.randint(0, 64, (B, n), generator=torch.Generator().manual_seed(1))


def rglru_call(dtype: torch.dtype) -> torch.nn.Module:
    """The second recurrent layer's Rglru, with the arguments it got in a model forward."""
    model = gemma_model(dtype)
    lru = model.layers[1].temporal_block.rg_lru
    seen = {}
    hook = lru.register_forward_hook(lambda m, a, k, o: seen.update(call=(a, k)), with_kwargs=True)
    with torch.no_grad():
        model(ids(), use_cache=False)
    hook.remove()
    lru.gs_call = seen["call"]
    return lru


def packed_call(dtype: torch.dtype) -> torch.nn.Module:
    """The same Rglru on packed sequences: resets (position 0) mid-sequence, per row."""
    lru = rglru_call(dtype)
    (x, _), kwargs = lru.gs_call
    pos = torch.stack([torch.cat([torch.arange(6), torch.arange(T - 6)]), torch.arange(T) + 3])
    lru.gs_call = ((x, pos), kwargs)
    return lru


def direct_inputs(lru: torch.nn.Module, dtype: torch.dtype):
    # The module keeps its last state in recurrent_states (also with use_cache=False; the
    # recurrent block clears it before each call): a direct call must start from None.
    lru.recurrent_states = None
    return lru.gs_call


CASES = [
    SequenceCase("rglru", rglru_call, direct_inputs, lambda m: RGLRU),
    SequenceCase("rglru-packed", packed_call, direct_inputs, lambda m: RGLRU),
]


# --------------------------------------------------------------------------- replay, Jacobians
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_replay_products_and_eigenvalues(case, dtype):
    # float64: the module accumulates h in float32 even in a float64 model; the adapter's
    # step rounds the same way (in value only), so the default 1e-10 holds (measured: 0).
    # Without that rounding the error would be float32's, ~1e-8.
    adapter, params, u, states = replay(case, dtype)
    assert u.shape == (T, B, 3 * WIDTH + 1) and states.shape == (T + 1, B, WIDTH)
    check_products(adapter, params, u, states)
    check_diagonal(adapter, params, u, states)
    keep = u[..., -1]
    lam = adapter.diagonal(params, u.flatten(0, 1)).unflatten(0, (T, B))
    assert (lam[keep == 0] == 0).all() and (lam[keep == 1] > 0).all()
    if case.name == "rglru-packed":
        assert keep[:, 0].tolist() == [0] + [1] * 5 + [0] + [1] * (T - 7)
        assert (keep[:, 1] == 1).all()  # starts at position 3: no reset
    else:
        assert (keep[0] == 0).all() and (keep[1:] == 1).all()  # position 0 resets


def test_lyapunov_exponents_are_mean_log_gates():
    lru = rglru_call(torch.float64)
    adapter, params, u, states = replay(CASES[0], torch.float64)
    layer = LayerTrace(
        name="rg_lru",
        kind=adapter.kind,
        states=states,
        inputs=u,
        lengths=None,
        state_names=adapter.state_names,
        state_sizes=adapter.state_sizes(params),
        params=params,
        adapter=adapter,
    )
    # Independently, from the module's weights: ln a_t = −8 softplus(Λ) σ(x W_a + b_a) per
    # head, averaged over the steps after the reset at position 0 (discard=1).
    x = lru.gs_call[0][0].detach()  # (B, T, W)
    heads = lru.recurrent_gate_weight.shape[0]
    xh = x.unflatten(-1, (heads, -1))
    pre = torch.einsum("bthi,hij->bthj", xh, lru.recurrent_gate_weight.detach())
    r = torch.sigmoid((pre + lru.recurrent_gate_bias.detach()).flatten(-2))
    log_a = -8.0 * F.softplus(lru.recurrent_param.detach()) * r  # (B, T, W)
    want = np.sort(log_a[:, 1:].mean(dim=1).numpy(), axis=1)[:, ::-1]
    res = lyapunov(layer, init="identity", method="dense", discard=1, progress=False)
    assert np.abs(res.per_sequence - want).max() < 1e-10
    got = adapter.log_decay(params, u.flatten(0, 1)).unflatten(0, (T, B))
    assert torch.isneginf(got[0]).all()  # the reset: a = 0
    assert relative_error(got[1:].transpose(0, 1), log_a[:, 1:]) < 1e-12


def test_resets_are_left_out_of_the_exact_exponents_at_any_discard():
    """The diagonal path with discard=0 includes position 0, a reset (a = 0): its ln 0 must
    not swamp the means (regression: λ1 = −100 "(ordered)" once a NaN input shortened the
    finite prefix, so that the diagnosis's discard became 0)."""
    lru = rglru_call(torch.float64)
    adapter, params, u, states = replay(CASES[0], torch.float64)
    layer = LayerTrace(
        name="rg_lru",
        kind=adapter.kind,
        states=states,
        inputs=u,
        lengths=None,
        state_names=adapter.state_names,
        state_sizes=adapter.state_sizes(params),
        params=params,
        adapter=adapter,
    )
    x = lru.gs_call[0][0].detach()  # the module's weights, as in the test above
    heads = lru.recurrent_gate_weight.shape[0]
    pre = torch.einsum(
        "bthi,hij->bthj", x.unflatten(-1, (heads, -1)), lru.recurrent_gate_weight.detach()
    )
    r = torch.sigmoid((pre + lru.recurrent_gate_bias.detach()).flatten(-2))
    log_a = -8.0 * F.softplus(lru.recurrent_param.detach()) * r
    want = np.sort(log_a[:, 1:].mean(dim=1).numpy(), axis=1)[:, ::-1]  # the reset left out
    res = lyapunov(layer, discard=0, progress=False)
    assert np.abs(res.per_sequence - want).max() < 1e-10
    assert any("2 reset step(s)" in n for n in res.notes)


def test_a_nan_input_leaves_the_exponents_of_the_finite_steps():
    model = gemma_model(torch.float32)
    embeds = model.embed_tokens(ids()).detach()
    embeds[1, 5, 3] = float("nan")
    prof = gs.profile(model, inputs_embeds=embeds, use_cache=False, analysis={"progress": False})
    d = prof.diagnosis[0]
    assert d.nonfinite["count"] > 0 and d.nonfinite["first_batch"] == 1
    lam = d.lyapunov.per_sequence
    layer = prof.trace[0]
    from gradscope.jacobians.diagonal import log_moduli, resets

    logs = log_moduli(layer)
    finite = logs[~resets(logs) & ~np.isnan(logs).any(-1)]
    # a mean of per-step ln|a| cannot lie below the smallest of them (it was −100 before)
    assert np.nanmin(lam) >= finite.min() - 1e-6 and np.nanmax(lam) <= 0


# --------------------------------------------------------------------------- cached state
def test_generation_step_replayed_from_the_cached_state():
    """use_cache=True: a prefill, then one decoding step that continues from the state the
    module keeps; initial_state (read before each call) + drive + step reproduce both."""
    model = gemma_model(torch.float64)
    lru = model.layers[0].temporal_block.rg_lru
    calls = []
    pre = lru.register_forward_pre_hook(
        lambda m, a, k: calls.append([RGLRU.initial_state(m, a, k)]), with_kwargs=True
    )
    post = lru.register_forward_hook(
        lambda m, a, k, o: calls[-1].extend([a, k, o]), with_kwargs=True
    )
    cache = transformers.DynamicCache(config=model.config)
    tokens = ids(T + 1)
    with torch.no_grad():
        model(tokens[:, :T], use_cache=True, cache=cache)
        model(tokens[:, T:], position_ids=torch.tensor([[T]]), use_cache=True, cache=cache)
    pre.remove()
    post.remove()
    params = RGLRU.module_params(lru)
    (s0_prefill, *_), (s0_step, args, kwargs, out) = calls
    assert not s0_prefill.any()  # zeros: the cache set up for a new sequence
    assert s0_step.abs().min() > 0 and args[0].shape[1] == 1
    for s0, args, kwargs, out in (calls[0], calls[1]):
        u = RGLRU.drive(params, args, kwargs).u
        states = RGLRU.scan(params, u, s0.to(u.dtype))
        assert relative_error(RGLRU.readout(params, u, states), out) < 1e-12
    # the step's cached state is the prefill's last state
    prefill_u = RGLRU.drive(params, *calls[0][1:3]).u
    last = RGLRU.scan(params, prefill_u, calls[0][0].to(prefill_u.dtype))[-1]
    assert relative_error(last, s0_step) < 1e-12
