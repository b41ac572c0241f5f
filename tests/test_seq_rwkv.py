"""RWKV-4 time mixing (transformers' RwkvSelfAttention) through its sequence adapter.

References: the module's own forward (replay), ``torch.func`` on the adapter's one-step
function in float64 (Jacobian products, eigenvalues), and the decays recomputed here from
the module's ``time_decay`` (Lyapunov exponents).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sequence_cases import SequenceCase, check_diagonal, check_products, replay

import gradscope as gs
from gradscope.analysis.lyapunov import lyapunov
from gradscope.errors import UnsupportedModuleError
from gradscope.sequences.rwkv import ADAPTER as RWKV
from gradscope.traces import LayerTrace

transformers = pytest.importorskip("transformers")

T, B, HIDDEN = 14, 2, 32


def rwkv_model(dtype: torch.dtype) -> torch.nn.Module:
    """A tiny RWKV in eval mode; every parameter perturbed so that none is a constant
    (transformers initialises ``time_first`` to ones)."""
    torch.manual_seed(0)
    cfg = transformers.RwkvConfig(
        vocab_size=64, context_length=32, hidden_size=HIDDEN, num_hidden_layers=2
    )
    model = transformers.RwkvModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.to(dtype)


def ids() -> torch.Tensor:
    return torch.randint(0, 64, (B, T), generator=torch.Generator().manual_seed(1))


def attention_call(dtype: torch.dtype, use_cache: bool = False) -> torch.nn.Module:
    """The second layer's RwkvSelfAttention, with the arguments it got in a model forward."""
    model = rwkv_model(dtype)
    att = model.blocks[1].attention
    seen = {}
    hook = att.register_forward_hook(lambda m, a, k, o: seen.update(call=(a, k)), with_kwargs=True)
    with torch.no_grad():
        model(ids(), use_cache=use_cache)
    hook.remove()
    att.gs_call = seen["call"]
    return att


def fresh_state_inputs(att: torch.nn.Module, dtype: torch.dtype):
    """The call's arguments with a fresh state, as RwkvModel builds it for use_cache=True
    (the captured one was overwritten in place by the call)."""
    args, kwargs = att.gs_call
    assert kwargs["state"] is not None
    cfg = att.config
    state = [torch.zeros(B, HIDDEN, cfg.num_hidden_layers, dtype=torch.float32) for _ in range(5)]
    state[0], state[1] = state[0].to(dtype), state[1].to(dtype)
    state[4] -= 1e30
    return args, {**kwargs, "state": state}


CASES = [
    SequenceCase("rwkv", attention_call, lambda m, d: m.gs_call, lambda m: RWKV),
    SequenceCase(
        "rwkv-fresh-cache",
        lambda d: attention_call(d, use_cache=True),
        fresh_state_inputs,
        lambda m: RWKV,
    ),
]


# --------------------------------------------------------------------------- replay, Jacobians
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_replay_products_and_eigenvalues(case, dtype):
    # float64: the module's CPU kernel rounds the keys to float32 (key.float()); the drive
    # rounds them the same way, so the unstabilised replay meets float64 rounding.
    adapter, params, u, states = replay(case, dtype)
    assert u.shape == (T, B, 3 * HIDDEN) and states.shape == (T + 1, B, 2 * HIDDEN)
    assert u.dtype == dtype
    check_products(adapter, params, u, states)
    check_diagonal(adapter, params, u, states)


def test_lyapunov_exponents_are_the_decays():
    adapter, params, u, states = replay(CASES[0], torch.float64)
    layer = LayerTrace(
        name="att",
        kind=adapter.kind,
        states=states,
        inputs=u,
        lengths=None,
        state_names=adapter.state_names,
        state_sizes=adapter.state_sizes(params),
        params=params,
        adapter=adapter,
    )
    # Independently: ln λ = −exp(time_decay) per channel, for num and for den.
    w = -np.exp(attention_call(torch.float64).time_decay.detach().numpy())
    want = np.sort(np.concatenate([w, w]))[::-1]
    res = lyapunov(layer, init="identity", method="dense", progress=False)
    assert np.abs(res.per_sequence - want[None]).max() < 1e-10
    np.testing.assert_allclose(adapter.log_decay(params, u[0]).numpy()[0], np.r_[w, w], rtol=1e-15)


# --------------------------------------------------------------------------- state, range
def test_fresh_state_accepted_carried_state_refused():
    """A use_cache=True forward starts from a fresh state (accepted before the module runs);
    a call continuing from the returned state is refused with the fix in the message."""
    model = rwkv_model(torch.float64)
    att = model.blocks[1].attention
    hook = att.register_forward_pre_hook(
        lambda m, a, k: RWKV.initial_state(m, a, k), with_kwargs=True
    )
    with torch.no_grad():
        out = model(ids(), use_cache=True)
        with pytest.raises(UnsupportedModuleError, match="use_cache=False"):
            model(ids()[:, :1], state=out.state, use_cache=True)
    hook.remove()


def test_keys_outside_the_float32_range_are_refused():
    att = attention_call(torch.float32)
    params = RWKV.module_params(att)
    params["key.weight"] = params["key.weight"] * 100.0
    args, kwargs = att.gs_call
    with pytest.raises(UnsupportedModuleError, match="float64"):
        RWKV.drive(params, args, kwargs)
    params64 = {n: p.double() for n, p in params.items()}
    RWKV.drive(params64, (args[0].double(),), kwargs)  # float64 holds them


def test_a_decay_of_exactly_zero_is_vanishing_not_neutral():
    """time_decay = 10: λ = exp(−e^10) = 0 exactly, every step erases the state (theory:
    ∂s_t/∂s_{t−1} = 0). Regression: every step read as a document reset, the curve stopped at
    lag 0, and the verdict was "neutral … no action needed"."""
    model = rwkv_model(torch.float64)
    with torch.no_grad():
        for block in model.blocks:
            block.attention.time_decay.fill_(10.0)
    prof = gs.profile(model, ids(), use_cache=False, analysis={"progress": False})
    for d in prof.diagnosis:
        assert d.regime == "vanishing"
        assert "the one-step Jacobian is exactly zero" in d.verdict
        assert "λ1 = −∞" in d.verdict
        assert not any("No action needed" in a for a in d.advice)
