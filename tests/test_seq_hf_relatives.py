"""Every served transformers mixer, recorded at toy size without user code, against references.

For each class of ``hf_relatives.MIXERS`` (the Mamba-1, Mamba-2, gated-DeltaNet, Kimi-delta
and lightning relatives, and the classes gradscope served before): ``gs.trace`` finds the
mixer by its class and replays it; the replay error the recorder measured against the
module's own output must be below the case's tolerance in float64 and float32, and to
float64 rounding (1e-10) once the module's float32 internals are swapped for float64 ones
(``hf_references``). The Jacobian products must match ``torch.func`` of the adapter's step
(1e-12), ``diagonal`` the eigen/singular values where the transition is diagonal. Controls:
the numbers a relative declares matter (without them the replay fails), calls gradscope
cannot replay are refused, saved traces load with their family's adapter, and whole tiny
models record their mixers. Exponents: ``test_seq_hf_exponents.py``.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from hf_references import float64_inside
from hf_relatives import MIXERS, build, host, inputs, one_thread  # noqa: F401 (autouse)
from sequence_cases import SequenceCase, check_diagonal, check_products, replay

import gradscope as gs
from gradscope import cells
from gradscope.cells.base import DIAGONAL, SCALAR_IDENTITY
from gradscope.sequences.mamba import ADAPTER as MAMBA

transformers = pytest.importorskip("transformers")
SPECS = {spec.name: spec for spec in MIXERS}
DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
CASE = pytest.mark.parametrize("spec", MIXERS, ids=lambda s: s.name)


_RECORDED: dict = {}


def record(spec, dtype):
    """``gs.trace`` of the hosted mixer (left-padded batch): the trace, once per case and dtype."""
    key = (spec.name, dtype)
    if key not in _RECORDED:
        hidden, mask = inputs(spec, dtype)
        _RECORDED[key] = gs.trace(host(spec, dtype), hidden, mask)
    return _RECORDED[key]


@CASE
@DTYPES
def test_recorded_by_class_and_replayed(spec, dtype):
    (layer,) = record(spec, dtype).layers
    assert layer.kind == spec.kind and layer.meta["module_type"] == spec.cls.__name__
    assert layer.name == "mixer" and layer.states.dtype == dtype
    assert layer.meta["replay_error"] < spec.tol[dtype], layer.meta["replay_error"]
    assert torch.isfinite(layer.states).all() and layer.states[1:].abs().max() > 1e-3


@CASE
def test_products_match_torch_func(spec):
    (layer,) = record(spec, torch.float64).layers
    check_products(layer.adapter, layer.params, layer.inputs[:5], layer.states[:6])
    if layer.adapter.structure in (DIAGONAL, SCALAR_IDENTITY):
        check_diagonal(layer.adapter, layer.params, layer.inputs[:2], layer.states[:3])
    else:
        assert layer.adapter.diagonal(layer.params, layer.inputs[0]) is None


@CASE
def test_loss_gradients_are_autograd_of_the_replayed_recurrence(spec):
    """``layer.grads`` (closed-form sweep) against autograd of the adapter's own steps.

    The reference steps the recurrence with the family's ``step`` from the recorded drive,
    keeps every state in the graph and differentiates the same loss through ``readout``
    (which the replay test holds to the module's own output): no product is involved.
    Lightning attention's decay is one number per head, not per row: a sweep that slices
    it with the rows fails from the second step on.
    """
    host = host_of(spec)
    hidden, mask = inputs(spec, torch.float64)
    weight = torch.randn(hidden.shape, dtype=torch.float64, generator=torch.Generator())
    with gs.record(host, grads=True) as rec:
        loss = (host(hidden, mask) * weight).sum()
    loss.backward()
    (layer,) = rec.trace.layers
    ad, params, u = layer.adapter, layer.params, layer.inputs
    s = layer.states[0].clone().requires_grad_(True)
    states = [s]
    for t in range(u.shape[0]):
        s = ad.step(params, u[t], s)
        s.retain_grad()
        states.append(s)
    out = ad.readout(params, u, torch.stack(states))  # the module's output, (B, T, hidden)
    (out * weight).sum().backward()
    want = torch.stack([st.grad for st in states])
    scale = want.abs().max()
    assert scale > 0
    assert (layer.grads - want).abs().max() / scale < 1e-10, spec.name


def host_of(spec):
    """The hosted mixer in float64 (a fresh one: recording with grads needs its own graph)."""
    return host(spec, torch.float64)


#: An identifier in the advice's text: snake_case, possibly dotted (``forget_gate.dt_bias``).
_IDENT = re.compile(r"\b[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)+(?:\.[A-Za-z_0-9]+)*")
#: A symbol with a one-letter index (``A_h``, ``A_log_h``, ``s_h``, ``A_n``): maths, not a name.
_SYMBOL = re.compile(r".*_[a-z]$")
_FACTS = {
    "T": "50", "severity": "strong", "factor": "1e-5", "rate": "-0.2", "lambda1": "-0.2",
    "horizon": "12.0", "smax": "0.9", "radius": "0.8", "tau": "5.0", "frac_long": "0%",
}  # fmt: skip


@CASE
def test_the_advice_names_this_classs_own_parameters(spec):
    """Every name the advice gives is one of this module's parameters, buffers, attributes or
    config keys.

    (Zamba's Δ bias is ``dt_proj_bias``, Qwen3.5's β projection ``in_proj_b``; the advice
    written for Mamba or Qwen3-Next would name a parameter the user cannot find.)
    """
    (layer,) = record(spec, torch.float64).layers
    mixer = build(spec, torch.float64)
    levers = layer.adapter.vanishing_advice(layer.params, dict(_FACTS))
    assert levers and len(levers) >= 2, f"{spec.name}: no advice of its own"
    text = " ".join(levers)
    assert "orthogonal" not in text and "W_hh" not in text, text
    tensors = [n for n, _ in (*mixer.named_parameters(), *mixer.named_buffers())]
    known = set(spec.config().to_dict()) | set(vars(mixer))  # its config, its attributes
    for n in tensors:
        parts = n.split(".")
        known.update(parts)
        known.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    said = {t.removeprefix("config.") for t in _IDENT.findall(text)}
    unknown = sorted(t for t in said if t not in known and not _SYMBOL.match(t))
    assert not unknown, f"{spec.name}: the advice names {unknown}, not in {sorted(tensors)}"
    own = {n.removesuffix(".weight").removesuffix(".bias") for n in tensors}
    assert own & said, f"{spec.name}: no parameter or buffer of {sorted(own)} named in {text!r}"


@pytest.mark.parametrize(
    "spec", [s for s in MIXERS if s.tol[torch.float64] > 1e-10], ids=lambda s: s.name
)
def test_float64_replay_is_exact_with_float64_internals(spec, monkeypatch):
    """The float64 replay error is the module's float32 internals and nothing else."""
    mixer = build(spec, torch.float64)
    calls = float64_inside(monkeypatch, mixer, spec.kind)
    hidden, mask = inputs(spec, torch.float64)
    layer = gs.trace(type(host(spec, torch.float64))(mixer, spec.call), hidden, mask).layers[0]
    assert calls, "the module did not run the float64 stand-in"
    assert layer.meta["replay_error"] < 1e-10, layer.meta["replay_error"]


# --------------------------------------------------------------------------- controls
def _case(spec, adapter, edit=None):
    def make(module):
        return adapter if edit is None else _Edited(adapter, edit)

    def call(module, dtype):
        hidden, mask = inputs(spec, dtype)
        return (), {"hidden_states": hidden, "attention_mask": mask, **spec.call}

    return SequenceCase(spec.name, lambda d: build(spec, d), call, make)


class _Edited:
    """An adapter whose ``module_params`` drop or change one declared number."""

    def __init__(self, adapter, edit):
        self._adapter, self._edit = adapter, edit

    def __getattr__(self, name):
        return getattr(self._adapter, name)

    def module_params(self, module):
        params = self._adapter.module_params(module)
        self._edit(params)
        return params


@pytest.mark.parametrize(
    ("name", "edit"),
    [
        ("falcon_mamba", lambda p: p.pop("bcdt_norm_eps")),  # FalconMamba's norms
        ("jamba", lambda p: p.pop("dt_layernorm.weight")),  # Jamba's norm weights
        ("zamba", lambda p: p.update(in_proj_interleaved=torch.tensor(0))),
        ("falcon_h1-norm-before-gate", lambda p: p.update(norm_before_gate=torch.tensor(0))),
        ("falcon_h1-no-norm", lambda p: p.update(rms_norm=torch.tensor(1))),
        ("falcon_h1-gate-before-norm", lambda p: p.pop("mup_vector")),
        ("falcon_h1-gate-before-norm", lambda p: p.pop("ssm_in_multiplier")),
        ("qwen4_exp-sigmoid", lambda p: p.update(gate_sigmoid=torch.tensor(0))),
        ("olmo_hybrid-neg-eigval", lambda p: p.pop("beta_scale")),
        ("glm5_next-lower-bound", lambda p: p.pop("gate_lower_bound")),
        ("bailing_hybrid-safe-gate", lambda p: p.pop("gate_lower_bound")),
    ],
)
def test_each_declared_difference_matters(name, edit):
    """Without the number a relative declares, its replay is off by far more than rounding."""
    spec = SPECS[name]
    if name == "falcon_h1-no-norm":  # the norm weight is absent when there is no norm
        edit_ = edit

        def edit(p):
            edit_(p)
            p["norm.weight"] = torch.ones(p["out_proj.weight"].shape[1], dtype=p["A"].dtype)

    adapter = build(spec, torch.float64)
    adapter = cells.adapter_for(adapter)
    with pytest.raises(AssertionError, match="replay error"):
        replay(_case(spec, adapter, edit), torch.float64)


def test_the_plain_mamba_adapter_does_not_fit_its_relatives():
    for name in ("falcon_mamba", "jamba"):
        with pytest.raises(AssertionError, match="replay error"):
            replay(_case(SPECS[name], MAMBA), torch.float64)


class _CarriedCache:
    """A cache that says it holds every layer's state (a generation step)."""

    def has_previous_state(self, layer_idx):
        return True

    def get_linear_cache(self, layer_idx):
        return torch.zeros(1)


@pytest.mark.parametrize(
    "name", ["jamba", "falcon_h1-no-norm", "olmo_hybrid-neg-eigval", "kimi_linear", "minimax"]
)
def test_a_call_continuing_a_cache_is_refused(name):
    spec = SPECS[name]
    mixer = build(spec, torch.float32)
    adapter = cells.adapter_for(mixer)
    hidden, _ = inputs(spec, torch.float32)
    with pytest.raises(gs.UnsupportedModuleError, match="use_cache=False"):
        adapter.initial_state(mixer, (), {"hidden_states": hidden, "cache": _CarriedCache()})
    assert adapter.initial_state(mixer, (), {"hidden_states": hidden, "cache": None}) is None


@pytest.mark.parametrize("name", ["zamba", "bamba", "qwen3_5", "bailing_hybrid-softplus"])
def test_packed_sequences_are_refused(name):
    spec = SPECS[name]
    mixer = build(spec, torch.float32)
    adapter = cells.adapter_for(mixer)
    hidden, _ = inputs(spec, torch.float32)
    params = adapter.module_params(mixer)
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    with pytest.raises(gs.UnsupportedModuleError, match="packed"):
        adapter.drive(params, (hidden,), {"cu_seq_lens_q": cu})


def test_another_activation_is_refused():
    for name, attr in (("falcon_mamba", "hidden_act"), ("minimax", "hidden_act")):
        spec = SPECS[name]
        cfg = spec.config()
        setattr(cfg, attr, "gelu")
        mixer = spec.cls(cfg, spec.layer_idx, **spec.init)
        with pytest.raises(gs.UnsupportedModuleError, match=r"(?i)silu"):
            cells.adapter_for(mixer).module_params(mixer)


@pytest.mark.parametrize(
    "name",
    [
        "zamba",
        "falcon_h1-norm-before-gate",
        "olmo_hybrid-neg-eigval",
        "bailing_hybrid-safe-gate",
        "minimax",
    ],
)
def test_a_saved_trace_loads_with_its_family(name, tmp_path, monkeypatch):
    """Loaded in a process that never met the class: found by kind among the adapter modules."""
    spec = SPECS[name]
    live = record(spec, torch.float64)
    monkeypatch.delitem(cells._BY_KIND, spec.kind)
    back = gs.load(live.save(tmp_path / "run.npz"))
    assert back[0].adapter is None and back[0].cell_adapter().kind == spec.kind
    d_live, d_back = gs.diagnose(live, progress=False), gs.diagnose(back, progress=False)
    assert d_back.to_dict() == d_live.to_dict()


def test_recording_a_model_without_them_never_imports_their_adapters():
    """A torch model never reaches the adapter modules (nor transformers)."""
    code = (
        "import sys, torch, gradscope as gs\n"
        "from gradscope import cells\n"
        "gs.trace(torch.nn.Sequential(torch.nn.LSTM(3, 4)), torch.randn(5, 2, 3))\n"
        "print(sorted(m for m in sys.modules if m in cells._HOMES or m.startswith('transformers')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- whole models
def _model(config, model, **kw):
    cfg = getattr(transformers, config)(vocab_size=64, hidden_size=16, **kw)
    cfg._experts_implementation = "eager"
    return getattr(transformers, model)(cfg).eval()


LINEAR_FULL = {"num_hidden_layers": 2, "layer_types": ["linear_attention", "full_attention"]}
MODELS = {
    "FalconMambaModel": lambda: _model(
        "FalconMambaConfig",
        "FalconMambaModel",
        state_size=4,
        intermediate_size=32,
        num_hidden_layers=1,
    ),
    "Qwen3_5TextModel": lambda: _model(
        "Qwen3_5TextConfig",
        "Qwen3_5TextModel",
        intermediate_size=32,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        linear_key_head_dim=4,
        linear_value_head_dim=4,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        **LINEAR_FULL,
    ),
    "FalconH1Model": lambda: _model(
        "FalconH1Config",
        "FalconH1Model",
        intermediate_size=32,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        num_hidden_layers=1,
        mamba_d_ssm=16,
        mamba_n_heads=4,
        mamba_d_head=4,
        mamba_n_groups=2,
        mamba_d_state=4,
        mamba_chunk_size=4,
        mamba_rms_norm=True,
    ),
    "NemotronHModel": lambda: _model(
        "NemotronHConfig",
        "NemotronHModel",
        intermediate_size=32,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        layers_block_type=["mamba", "attention"],
        mamba_num_heads=4,
        mamba_head_dim=4,
        n_groups=2,
        ssm_state_size=4,
        chunk_size=4,
    ),
    "MiniMaxModel": lambda: _model(
        "MiniMaxConfig",
        "MiniMaxModel",
        intermediate_size=32,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        num_local_experts=2,
        block_size=4,
        **LINEAR_FULL,
    ),
}
KINDS = {
    "FalconMambaModel": "mamba",
    "Qwen3_5TextModel": "gated_deltanet",
    "FalconH1Model": "mamba2",
    "NemotronHModel": "mamba2",
    "MiniMaxModel": "lightning",
}


@pytest.mark.parametrize("name", list(MODELS))
def test_a_whole_model_records_its_mixers(name):
    torch.manual_seed(0)
    model = MODELS[name]()
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :2] = 0
    trace = gs.trace(model, ids, attention_mask=mask, use_cache=False)
    assert [layer.kind for layer in trace.layers] == [KINDS[name]]
    assert trace.layers[0].meta["replay_error"] < 1e-4


def test_mamba_reads_d_and_the_step_bias_in_float32_and_a_positional_mask():
    """The scan gets ``D.float()`` and ``dt_proj.bias.float()`` also in a float64 model, and
    the mixer's signature is ``(hidden_states, cache, attention_mask)``. Before: a float64
    ``D`` off the float32 grid replayed 2e-8 off (over the 1e-10 allowed), and a mask passed
    by position was not read (0.8 off)."""
    spec = SPECS["mamba"]
    mixer = build(spec, torch.float64)
    hidden, mask = inputs(spec, torch.float64)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in (mixer.D, mixer.dt_proj.bias):
            p.add_(1e-3 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
        want = mixer(hidden, None, mask)
    adapter = cells.adapter_for(mixer)
    params = adapter.module_params(mixer)
    drive = adapter.drive(params, (hidden, None, mask), {})
    states = adapter.scan(params, drive.u, drive.u.new_zeros(2, adapter.state_size(params)))
    got = adapter.readout(params, drive.u, states)
    assert (got - want).abs().max() / want.abs().max().clamp(min=1) < 1e-12
