"""Every transformers recurrent mixer gradscope serves, built at toy size from a config in code.

Each :class:`Mixer` names the class (by qualified name, as gradscope serves it), builds its
model's config (tiny: hidden 16, a few heads of 4-8, state 4; no downloads) and the mixer
from it (``Class(config, layer_idx)``), and sets its parameters to seeded values that keep
states and outputs O(1) and the decays away from 0 and 1 (the initialisers are tiny or
``torch.empty``). :func:`host` wraps the mixer in a container that calls it the way its
decoder layer does (keyword arguments, a 2-D padding mask); gradscope records the container
like any model, finding the mixer by its class.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

transformers = importlib.import_module("transformers")
M = "transformers.models"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread for the module's tests, restored after (import it, it is autouse).

    At toy sizes a pool of threads only waits on itself, and on a shared machine with fewer
    free cores than threads every tiny op then takes milliseconds (measured: recording all
    the cases took 42 s with 2 threads under load, 6 s with 1).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Mixer:
    """One class at toy size.

    Attributes:
        name: Test id.
        qualname: The class, ``module.Class``.
        config: Builds the model's config.
        kind: The adapter kind gradscope must record it with.
        a_range: Range of ``exp(A_log)`` (the decay rate) the parameters are drawn in.
        layer_idx: The layer the mixer is built as.
        init: Extra keyword arguments of the class's constructor.
        setup: Extra set-up of the built mixer (e.g. a buffer its model registers).
        call: Extra keyword arguments of its decoder layer's call.
        tol: Replay tolerance per dtype (what the test asserts of the recorded error).
    """

    name: str
    qualname: str
    config: Callable[[], Any]
    kind: str
    a_range: tuple[float, float] = (0.3, 3.0)
    layer_idx: int = 0
    setup: Callable[[nn.Module, Any], None] | None = None
    init: dict[str, Any] = field(default_factory=dict)
    call: dict[str, Any] = field(default_factory=dict)
    tol: dict[torch.dtype, float] = field(
        default_factory=lambda: {torch.float64: 1e-10, torch.float32: 1e-4}
    )

    @property
    def cls(self) -> type[nn.Module]:
        module, _, name = self.qualname.rpartition(".")
        return getattr(importlib.import_module(module), name)


#: Modules that compute in float32 inside a float64 model (scans, kernels, decay tables).
F32_INSIDE = {torch.float64: 1e-6, torch.float32: 1e-4}


def _mup(mixer: nn.Module, cfg: Any) -> None:
    """FalconH1Model registers each mixer's ``mup_vector``; built alone, do the same."""
    falcon_h1 = importlib.import_module(f"{M}.falcon_h1.modeling_falcon_h1")
    mixer.register_buffer("mup_vector", falcon_h1.compute_mup_vector(cfg), persistent=False)


def _cfg(name: str, **kw: Any) -> Callable[[], Any]:
    def make() -> Any:
        cfg = getattr(transformers, name)(**kw)
        cfg._experts_implementation = "eager"
        return cfg

    return make


GDN = dict(
    hidden_size=16,
    linear_key_head_dim=4,
    linear_value_head_dim=4,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_conv_kernel_dim=4,
    num_hidden_layers=2,
)
MAMBA2 = dict(mamba_n_heads=4, mamba_d_head=4, mamba_n_groups=2, mamba_d_state=4)

MIXERS = [
    # Mamba-1: kind "mamba"
    Mixer(
        "mamba",
        f"{M}.mamba.modeling_mamba.MambaMixer",
        _cfg(
            "MambaConfig", hidden_size=16, state_size=4, intermediate_size=32, num_hidden_layers=1
        ),
        "mamba",
    ),
    Mixer(
        "falcon_mamba",
        f"{M}.falcon_mamba.modeling_falcon_mamba.FalconMambaMixer",
        _cfg(
            "FalconMambaConfig",
            hidden_size=16,
            state_size=4,
            intermediate_size=32,
            time_step_rank=4,
            num_hidden_layers=1,
        ),
        "mamba",
        # FalconMambaMixer's own init reaches its norms before it builds them; its model
        # builds it without (and initialises the weights afterwards)
        init={"initialize_mixer_weights": False},
    ),
    Mixer(
        "jamba",
        f"{M}.jamba.modeling_jamba.JambaMambaMixer",
        _cfg(
            "JambaConfig",
            hidden_size=16,
            mamba_d_state=4,
            mamba_dt_rank=4,
            mamba_expand=2,
            num_hidden_layers=2,
            attn_layer_period=2,
            attn_layer_offset=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        ),
        "mamba",
    ),
    Mixer(
        "zamba",
        f"{M}.zamba.modeling_zamba.ZambaMambaMixer",
        _cfg(
            "ZambaConfig",
            hidden_size=16,
            mamba_d_state=4,
            mamba_dt_rank=4,
            mamba_expand=2,
            n_mamba_heads=2,
            num_attention_heads=2,
            attention_head_dim=8,
        ),
        "mamba",
    ),
    # Mamba-2: kind "mamba2"
    Mixer(
        "mamba2",
        f"{M}.mamba2.modeling_mamba2.Mamba2Mixer",
        _cfg(
            "Mamba2Config",
            hidden_size=16,
            expand=1,
            num_heads=4,
            head_dim=4,
            n_groups=2,
            state_size=4,
            chunk_size=5,
            num_hidden_layers=1,
        ),
        "mamba2",
        tol=F32_INSIDE,
    ),
    Mixer(
        "bamba",
        f"{M}.bamba.modeling_bamba.BambaMixer",
        _cfg("BambaConfig", hidden_size=16, mamba_expand=1, mamba_chunk_size=5, **MAMBA2),
        "mamba2",
        tol=F32_INSIDE,
    ),
    Mixer(
        "nemotron_h",
        f"{M}.nemotron_h.modeling_nemotron_h.NemotronHMamba2Mixer",
        _cfg(
            "NemotronHConfig",
            hidden_size=16,
            mamba_num_heads=4,
            mamba_head_dim=4,
            n_groups=2,
            ssm_state_size=4,
            chunk_size=5,
        ),
        "mamba2",
        tol=F32_INSIDE,
    ),
    Mixer(
        "zamba2",
        f"{M}.zamba2.modeling_zamba2.Zamba2MambaMixer",
        _cfg(
            "Zamba2Config",
            hidden_size=8,
            mamba_expand=2,
            n_mamba_heads=4,
            mamba_headdim=4,
            mamba_ngroups=2,
            mamba_d_state=4,
            chunk_size=5,
            num_attention_heads=2,
        ),
        "mamba2",
        tol=F32_INSIDE,
    ),
    Mixer(
        "granitemoehybrid",
        f"{M}.granitemoehybrid.modeling_granitemoehybrid.GraniteMoeHybridMambaLayer",
        _cfg(
            "GraniteMoeHybridConfig",
            hidden_size=16,
            mamba_expand=1,
            mamba_chunk_size=5,
            num_hidden_layers=1,
            **MAMBA2,
        ),
        "mamba2",
        tol=F32_INSIDE,
    ),
    *[
        Mixer(
            f"falcon_h1-{label}",
            f"{M}.falcon_h1.modeling_falcon_h1.FalconH1Mixer",
            _cfg(
                "FalconH1Config",
                hidden_size=16,
                mamba_d_ssm=16,
                mamba_chunk_size=5,
                num_hidden_layers=1,
                mamba_rms_norm=rms,
                mamba_norm_before_gate=before,
                ssm_in_multiplier=0.7,
                ssm_multipliers=[1.3, 0.8, 1.1, 0.9, 1.2],
                **MAMBA2,
            ),
            "mamba2",
            setup=_mup,
            tol=F32_INSIDE,
        )
        for label, rms, before in (
            ("norm-before-gate", True, True),
            ("gate-before-norm", True, False),
            ("no-norm", False, True),
        )
    ],
    # gated DeltaNet: kind "gated_deltanet"
    Mixer(
        "qwen3_next",
        f"{M}.qwen3_next.modeling_qwen3_next.Qwen3NextGatedDeltaNet",
        _cfg("Qwen3NextConfig", **GDN),
        "gated_deltanet",
        a_range=(0.02, 0.3),
        tol=F32_INSIDE,
    ),
    Mixer(
        "qwen3_5",
        f"{M}.qwen3_5.modeling_qwen3_5.Qwen3_5GatedDeltaNet",
        _cfg("Qwen3_5TextConfig", **GDN),
        "gated_deltanet",
        a_range=(0.02, 0.3),
        tol=F32_INSIDE,
    ),
    Mixer(
        "qwen3_5_moe",
        f"{M}.qwen3_5_moe.modeling_qwen3_5_moe.Qwen3_5MoeGatedDeltaNet",
        _cfg("Qwen3_5MoeTextConfig", **GDN),
        "gated_deltanet",
        a_range=(0.02, 0.3),
        tol=F32_INSIDE,
    ),
    *[
        Mixer(
            f"qwen4_exp-{gate}",
            f"{M}.qwen4_exp.modeling_qwen4_exp.Qwen4ExpTextGatedDeltaNet",
            _cfg("Qwen4ExpTextConfig", output_gate_type=gate, **GDN),
            "gated_deltanet",
            a_range=(0.02, 0.3),
            tol=F32_INSIDE,
        )
        for gate in ("sigmoid", "silu")
    ],
    Mixer(
        "lara_mini",
        f"{M}.lara_mini.modeling_lara_mini.LaraMiniGatedDeltaNet",
        _cfg("LaraMiniConfig", **GDN),
        "gated_deltanet",
        a_range=(0.02, 0.3),
        tol=F32_INSIDE,
    ),
    *[
        Mixer(
            f"olmo_hybrid-{label}",
            f"{M}.olmo_hybrid.modeling_olmo_hybrid.OlmoHybridGatedDeltaNet",
            _cfg("OlmoHybridConfig", linear_allow_neg_eigval=neg, num_attention_heads=2, **GDN),
            "gated_deltanet",
            a_range=(0.02, 0.3),
            tol=F32_INSIDE,
        )
        for label, neg in (("neg-eigval", True), ("pos-eigval", False))
    ],
    # Kimi delta attention: kind "kimi_delta"
    Mixer(
        "kimi_linear",
        f"{M}.kimi_linear.modeling_kimi_linear.KimiLinearDeltaAttention",
        _cfg("KimiLinearConfig", hidden_size=16, linear_head_dim=4, linear_num_heads=3),
        "kimi_delta",
        a_range=(0.02, 0.3),
        tol=F32_INSIDE,
    ),
    *[
        Mixer(
            f"glm5_next-{label}",
            f"{M}.glm5_next.modeling_glm5_next.Glm5NextTextLinearAttention",
            _cfg(
                "Glm5NextTextConfig",
                hidden_size=16,
                linear_head_dim=4,
                linear_num_heads=3,
                linear_lower_bound=bound,
            ),
            "kimi_delta",
            a_range=(0.02, 0.3),
            tol=F32_INSIDE,
        )
        for label, bound in (("lower-bound", -2.0), ("softplus", None))
    ],
    *[
        Mixer(
            f"bailing_hybrid-{label}",
            f"{M}.bailing_hybrid.modeling_bailing_hybrid.BailingHybridDeltaAttention",
            _cfg(
                "BailingHybridConfig",
                hidden_size=16,
                head_dim=4,
                num_attention_heads=3,
                kda_safe_gate=safe,
                kda_lower_bound=-2.0,
            ),
            "kimi_delta",
            a_range=(0.02, 0.3),
            tol=F32_INSIDE,
        )
        for label, safe in (("safe-gate", True), ("softplus", False))
    ],
    # lightning attention: kind "lightning"
    Mixer(
        "minimax",
        f"{M}.minimax.modeling_minimax.MiniMaxLightningAttention",
        _cfg(
            "MiniMaxConfig",
            hidden_size=16,
            num_attention_heads=2,
            head_dim=4,
            block_size=5,
            num_hidden_layers=3,
        ),
        "lightning",
        layer_idx=1,
        call={"position_embeddings": None},
        tol=F32_INSIDE,
    ),
]


def initialise(mixer: nn.Module, a_range: tuple[float, float], seed: int = 3) -> None:
    """Seeded O(1) parameters: weights ~ N(0, 1/fan_in), norms in (0.5, 1.5), decays in range."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(shape, lo, hi):
        return torch.empty(shape).uniform_(lo, hi, generator=gen)

    lo, hi = (math.log(a) for a in a_range)
    with torch.no_grad():
        for name, p in mixer.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "A_log":
                p.copy_(uniform(p.shape, lo, hi))
            elif leaf == "D":
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
            elif "dt" in name and ("bias" in leaf or p.ndim == 1):
                p.copy_(uniform(p.shape, -2.0, 0.5))
            elif "conv" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1 and "norm" in name:
                p.copy_(uniform(p.shape, 0.5, 1.5))
            elif p.ndim == 1:  # other biases
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            else:  # projections (Zamba's per-head ones are 3-D: fan-in last)
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)


def build(spec: Mixer, dtype: torch.dtype) -> nn.Module:
    """The mixer at toy size, the same parameters in every dtype, in eval mode."""
    torch.manual_seed(0)
    cfg = spec.config()
    mixer = spec.cls(cfg, spec.layer_idx, **spec.init)
    if spec.setup is not None:
        spec.setup(mixer, cfg)
    initialise(mixer, spec.a_range)
    return mixer.to(dtype).eval()


class Host(nn.Module):
    """Calls the mixer as its decoder layer does: keyword arguments, a 2-D padding mask."""

    def __init__(self, mixer: nn.Module, call: dict[str, Any]):
        super().__init__()
        self.mixer = mixer
        self.call = call

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.mixer(hidden_states=hidden, attention_mask=mask, **self.call)
        return out[0] if isinstance(out, tuple) else out


def host(spec: Mixer, dtype: torch.dtype) -> Host:
    return Host(build(spec, dtype), spec.call)


def inputs(
    spec: Mixer, dtype: torch.dtype, T: int = 12, padded: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Hidden states ``(2, T, hidden)`` and a left-padding mask (sequence 1 starts at step 3)."""
    gen = torch.Generator().manual_seed(1)
    hidden_size = spec.config().hidden_size
    hidden = torch.randn(2, T, hidden_size, generator=gen).to(dtype)
    if not padded:
        return hidden, None
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, :3] = 0
    return hidden, mask
