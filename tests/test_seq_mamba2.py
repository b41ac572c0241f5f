"""Mamba-2 (transformers ``Mamba2Mixer``, torch chunked-SSD path) replayed by its adapter.

References: the module's own forward (replay), ``torch.func`` on the adapter's one-step
function in float64 (Jacobian products and eigenvalues), and the per-head log decays
``Δ_t·A_h`` recomputed here from the module's weights (Lyapunov exponents).
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
from gradscope.cells.base import SCALAR_IDENTITY
from gradscope.layer_trace import LayerTrace
from gradscope.sequences.mamba2 import ADAPTER, MODULE_QUALNAME

transformers = pytest.importorskip("transformers")
modeling = pytest.importorskip("transformers.models.mamba2.modeling_mamba2")

H, P, N, CHUNK, T = 4, 8, 8, 8, 19  # T is not a multiple of chunk_size: a padded last chunk


def mamba2_model(dtype: torch.dtype, groups: int = 1):
    """A tiny Mamba-2 (2 layers, hidden 32, 4 heads of 8, state 8), the same weights per dtype."""
    torch.manual_seed(0)
    cfg = transformers.Mamba2Config(
        vocab_size=64,
        hidden_size=32,
        expand=1,
        num_heads=H,
        head_dim=P,
        n_groups=groups,
        state_size=N,
        num_hidden_layers=2,
        chunk_size=CHUNK,
        conv_kernel=4,
        use_cache=False,
    )
    model = transformers.Mamba2Model(cfg).eval()
    with torch.no_grad():  # larger weights and steps than the init: O(1) states and outputs
        for layer in model.layers:
            mixer = layer.mixer
            mixer.in_proj.weight.normal_(0.0, 0.3)
            mixer.conv1d.weight.normal_(0.0, 0.5)
            mixer.dt_bias.uniform_(-2.0, 0.5)
            mixer.norm.weight.uniform_(0.5, 1.5)
    return model.to(dtype)


def mixer_call(dtype: torch.dtype, groups: int = 1, padded: bool = False):
    """The second mixer, with the (args, kwargs) and output it got in a model forward."""
    model = mamba2_model(dtype, groups)
    mixer = model.layers[1].mixer
    seen = {}
    hook = mixer.register_forward_hook(
        lambda m, a, k, o: seen.update(call=(a, k), out=o), with_kwargs=True
    )
    ids = torch.randint(0, 64, (2, T), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, T, dtype=torch.long)
    if padded:
        mask[0, :5] = 0  # left padding: the model passes the 2-D mask to the mixer
    with torch.no_grad():
        model(ids, attention_mask=mask, use_cache=False)
    hook.remove()
    mixer.gs_call, mixer.gs_out = seen["call"], seen["out"]
    return mixer


# Replay tolerances. float64: the module computes its scan and gated RMSNorm in float32 even
# in a float64 model (mamba2_chunk_scan calls .float() on x, B, C and Δ; MambaRMSNormGated
# normalises in float32), while the adapter replays in float64: measured 1e-7 relative here.
# test_float64_replay_is_exact_without_the_float32_casts shows the remainder is exactly that
# rounding (1e-10 once the casts are removed).
TOL = {torch.float64: 1e-6, torch.float32: 1e-4}
CASES = [
    SequenceCase(
        "groups1", lambda d: mixer_call(d), lambda m, d: m.gs_call, lambda m: ADAPTER, TOL
    ),
    SequenceCase(
        "groups2-padded",
        lambda d: mixer_call(d, groups=2, padded=True),
        lambda m, d: m.gs_call,
        lambda m: ADAPTER,
        TOL,
    ),
]


def test_class_and_kind():
    assert f"{modeling.Mamba2Mixer.__module__}.{modeling.Mamba2Mixer.__qualname__}" == (
        MODULE_QUALNAME
    )
    assert ADAPTER.kind == "mamba2" and ADAPTER.structure == SCALAR_IDENTITY


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_replay_reproduces_the_module(case, dtype):
    adapter, params, u, states = replay(case, dtype)
    assert u.dtype == dtype and u.shape == (T, 2, adapter.input_size(params))
    assert states.shape == (T + 1, 2, H * P * N)
    for name in ("num_heads", "head_dim", "n_groups", "state_size", "norm_eps", "dt_min"):
        assert params[name].ndim == 0


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_products_and_eigenvalues_match_autograd(case):
    adapter, params, u, states = replay(case, torch.float64)
    check_products(adapter, params, u, states)
    # eigenvalues and singular values on the first steps (the matching check is O(D²) each)
    check_diagonal(adapter, params, u[:3], states[:4])


def ssd_scan_float64(
    x,
    dt,
    A,
    B,
    C,
    chunk_size,
    D=None,
    dt_bias=None,
    initial_states=None,
    dt_softplus=False,
    dt_limit=(0.0, float("inf")),
    return_final_states=False,
    **kwargs,
):
    """Mamba-2's SSD recurrence stepped one position at a time, in the inputs' own dtype.

    Dao & Gu (2024), eq. (1) with a scalar-times-identity ``A`` per head: with
    ``Δ_t = clamp(softplus(dt_t + dt_bias))``, ``h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t B_tᵀ``
    (``h`` of shape ``(P, N)`` per head) and ``y_t = h_t C_t + D x_t``. The signature is
    ``mamba2_chunk_scan``'s, so it stands in for the module's chunked scan; it casts
    nothing, which is the point.
    """
    b, length, heads, _ = x.shape
    per_group = heads // B.shape[2]
    B, C = (m.repeat_interleave(per_group, dim=2) for m in (B, C))  # (b, l, h, n)
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = F.softplus(dt)
    dt = torch.clamp(dt, dt_limit[0], dt_limit[1])
    h = (
        initial_states.to(x.dtype)
        if initial_states is not None
        else x.new_zeros(b, heads, x.shape[-1], B.shape[-1])
    )
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, t] * A)[..., None, None]  # (b, h, 1, 1)
        h = decay * h + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        y = (h * C[:, t, :, None, :]).sum(-1)
        ys.append(y if D is None else y + D[:, None] * x[:, t])
    out = torch.stack(ys, dim=1)
    return (out, h) if return_final_states else out


def test_float64_replay_is_exact_without_the_float32_casts(monkeypatch):
    """With the module's float32 scan and norm swapped for float64 ones, the replay is exact.

    The module's chunked scan (``mamba2_chunk_scan``) and gated RMSNorm compute in float32 even
    in a float64 model; both are replaced by float64 references written here from the published
    equations (through the module globals the mixer calls), and the adapter's replay must then
    agree with the module to 1e-10 instead of the float32 rounding ``TOL`` allows.
    """

    def norm64(self, hidden_states, gate=None):
        h = hidden_states * F.silu(gate)
        g = h.unflatten(-1, (-1, self.group_size))
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * g.flatten(-2)

    norm_class = type(mamba2_model(torch.float64).layers[0].mixer.norm)  # renamed across releases
    monkeypatch.setattr(norm_class, "forward", norm64)
    seen = []

    def spy(x, *args, **kwargs):
        seen.append(x.dtype)
        return ssd_scan_float64(x, *args, **kwargs)

    monkeypatch.setattr(modeling, "mamba2_chunk_scan", spy)
    for case in CASES:
        exact = SequenceCase(case.name, case.build, case.inputs, case.adapter)  # 1e-10
        replay(exact, torch.float64)
    assert seen and set(seen) == {torch.float64}  # the module really ran the float64 scan


def test_exponents_are_head_means_of_delta_times_a():
    """Lyapunov exponents = per-head means of Δ_t·A_h, Δ recomputed from the module."""
    mixer = mixer_call(torch.float64)
    (hidden,), _ = mixer.gs_call
    with torch.no_grad():
        dt = mixer.in_proj(hidden)[..., -H:]  # the projection's last H outputs
        delta = torch.clamp(F.softplus(dt + mixer.dt_bias), *mixer.time_step_limit)
        A = -torch.exp(mixer.A_log.float()).double()
        logs = delta * A  # (B, T, H)
    per_seq = logs.mean(dim=1).repeat_interleave(P * N, dim=-1).numpy()  # (B, D)
    want = np.sort(per_seq, axis=1)[:, ::-1].mean(axis=0)

    params = ADAPTER.module_params(mixer)
    drive = ADAPTER.drive(params, *mixer.gs_call)
    states = ADAPTER.scan(params, drive.u, drive.u.new_zeros(2, H * P * N))
    layer = LayerTrace(
        name="mixer",
        kind="mamba2",
        states=states,
        inputs=drive.u,
        lengths=None,
        state_names=ADAPTER.state_names,
        state_sizes=ADAPTER.state_sizes(params),
        params=params,
        adapter=ADAPTER,
    )
    np.testing.assert_allclose(
        ADAPTER.log_decay(params, drive.u[:, 0]).numpy(),
        np.repeat(logs[0].numpy(), P * N, axis=-1),
        rtol=1e-13,
    )
    exact = gs.lyapunov(layer, k=16, progress=False)  # the diagonal path (ln|λ| means)
    np.testing.assert_allclose(exact.exponents, want[:16], rtol=1e-12)
    # the QR iteration on the closed-form jvp products, from the identity: exact for J = diag
    qr = gs.lyapunov(layer, init="identity", method="operator", progress=False)
    np.testing.assert_allclose(qr.exponents, want, rtol=1e-10)


def test_cache_prefill_replays_and_a_cached_step_is_refused():
    model = mamba2_model(torch.float32)
    mixer = model.layers[0].mixer
    calls = []

    def pre(module, args, kwargs):
        ADAPTER.initial_state(module, args, kwargs)  # raises for a carried state

    def post(module, args, kwargs, out):
        calls.append((args, kwargs, out))

    mixer.register_forward_pre_hook(pre, with_kwargs=True)
    mixer.register_forward_hook(post, with_kwargs=True)
    ids = torch.randint(0, 64, (1, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model(ids, use_cache=True)  # a fresh cache: starts from zeros, replayable
    args, kwargs, want = calls[0]
    assert kwargs["cache"] is not None
    params = ADAPTER.module_params(mixer)
    drive = ADAPTER.drive(params, args, kwargs)
    states = ADAPTER.scan(params, drive.u, drive.u.new_zeros(1, H * P * N))
    assert relative_error(ADAPTER.readout(params, drive.u, states), want) < 1e-4
    with pytest.raises(gs.UnsupportedModuleError, match="use_cache=False"), torch.no_grad():
        model(ids[:, -1:], cache=out.cache, use_cache=True)


def test_packed_sequences_are_refused():
    mixer = mixer_call(torch.float32)
    (hidden,), kwargs = mixer.gs_call
    params = ADAPTER.module_params(mixer)
    with pytest.raises(gs.UnsupportedModuleError, match="packed"):
        ADAPTER.drive(
            params, (hidden,), {**kwargs, "seq_idx": torch.zeros(2, T, dtype=torch.int32)}
        )


def test_an_unlimited_time_step_is_a_setting_not_a_broken_weight():
    """Mamba-2's default time_step_limit is (0, inf): dt_max = inf must not read as NaN weights."""
    model = mamba2_model(torch.float32)
    trace = gs.trace(model, torch.randint(0, 64, (2, 10)), use_cache=False)
    layer = trace.layers[0]
    assert float(layer.params["dt_max"]) == float("inf")
    d = gs.diagnose(trace, progress=False)[layer.name]
    assert d.regime != "unknown" and not d.nonfinite.get("params")
